"""Iron Law end-to-end helpers: a finished run on an instance of the vast.ai emulator (rgt.sim),
driven through the real VastProvider (vastai SDK -> the emulator's HTTP API; rsync and cat over
the instance's real sshd).

The box's job writes results and builds PULL_MANIFEST.json ON the box with the shipped builder
(rgt/manifest.py travels gzip+base64 inside the onstart: the field is size-limited), naming the
instance from the variable the profile says carries its id.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rgt.errors import Refused
from rgt.gate import destroy_with_gate
from rgt.ledger import Ledger
from rgt.pull import MANIFEST_NAME, pull_instance
from tests.ironlaw_fixtures import vast_profile, verify_and_record

REMOTE_ROOT = "/workspace/results"
RUN_ID = "run-e2e"
ROSTER = ("ckpt", "metrics")
REPO = Path(__file__).resolve().parent.parent

ONSTART = r"""set -euo pipefail
R="${{RGT_BOX_ROOT:-}}/workspace/results"
# Idempotent like a real job's boot hook: a restart must not rewrite finished results.
if [ -f "$R/PULL_MANIFEST.json" ]; then exit 0; fi
mkdir -p "$R/ckpt" "$R/metrics" "${{RGT_BOX_ROOT:-}}/workspace/rgt"
python3 - "$R" <<'PY'
import json, os, struct, sys
root = sys.argv[1]
payload = os.urandom(64)
header = json.dumps({{"w": {{"dtype": "U8", "shape": [64], "data_offsets": [0, 64]}}}}).encode()
header += b" " * (-len(header) % 8)
with open(os.path.join(root, "ckpt", "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + payload)
with open(os.path.join(root, "ckpt", "blob.bin"), "wb") as f:
    f.write(os.urandom({blob_bytes}))
with open(os.path.join(root, "metrics", "metrics.json"), "w") as f:
    json.dump({{"loss": 0.25}}, f)
PY
printf 'ckpt\nmetrics\n' > "${{RGT_BOX_ROOT:-}}/workspace/roster.txt"
printf '%s' '{manifest_b64}' | base64 -d | gunzip > "${{RGT_BOX_ROOT:-}}/workspace/rgt/manifest.py"
python3 "${{RGT_BOX_ROOT:-}}/workspace/rgt/manifest.py" "$R" --run-id {run_id} \
  --roster "${{RGT_BOX_ROOT:-}}/workspace/roster.txt" --instance-id "${{{id_env}}}"
"""


def onstart(blob_bytes: int = 200_000, run_id: str = RUN_ID) -> str:
    """The box's boot hook: write results of `run_id`, then build the manifest on the box."""
    from rgt.render import manifest_source

    # The builder as rgt's own boot hook ships it (docstrings and comments stripped): the whole
    # module source would leave this hook only a few hundred bytes under vast.ai's 16 KiB.
    source = manifest_source().encode()
    return ONSTART.format(
        blob_bytes=blob_bytes,
        run_id=run_id,
        manifest_b64=base64.b64encode(gzip.compress(source, mtime=0)).decode(),
        id_env=vast_profile().instance_id_env,
    )


def create_instance(
    provider: Any, run_id: str, *, blob_bytes: int = 200_000, manifest_run_id: str | None = None
) -> str:
    """Rent the cheapest offer for `run_id` (label rgt:<run_id>) with the finished-job onstart;
    returns the instance id without waiting for it."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import run_label

    offer = provider.search_offers(OfferQuery(limit=5))[0]
    instance = provider.create(
        offer.id,
        image="pytorch/pytorch:latest",
        disk_gb=10,
        onstart=onstart(blob_bytes, manifest_run_id or run_id),
        label=run_label(run_id),  # as `rgt launch` labels it
    )
    return str(instance.id)


class Rental:
    """One emulated instance, rented for `run_id`, whose job finished and left a manifest."""

    def __init__(
        self,
        emulator: Any,
        tmp_path: Path,
        *,
        instance_id: str | None = None,
        run_id: str = RUN_ID,
        blob_bytes: int = 200_000,
        manifest_run_id: str | None = None,
    ) -> None:
        from rgt.providers.vastai import VastProvider, run_label

        self.emulator = emulator
        self.provider = VastProvider()
        self.run_id = run_id
        self.id = instance_id or create_instance(
            self.provider, run_id, blob_bytes=blob_bytes, manifest_run_id=manifest_run_id
        )
        self.local = tmp_path / "local"
        self.ledger = Ledger.open()
        # As `rgt launch` records it: the job's results root and roster bind the pull.
        self.ledger.record_instance(
            "vastai",
            self.id,
            label=run_label(run_id),
            state="created",
            results_root=REMOTE_ROOT,
            roster=list(ROSTER),
        )
        self.disk = Path(emulator.instance_disk(self.id))
        self._wait_for_manifest()

    def _wait_for_manifest(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        manifest = self.results / MANIFEST_NAME
        while time.monotonic() < deadline:
            if manifest.is_file() and self.provider.show(self.id).state == "running":
                return
            time.sleep(0.1)
        raise AssertionError(f"instance {self.id}: no manifest on the box after {timeout}s")

    @property
    def results(self) -> Path:
        """The result root on the instance's disk (the emulator's directory for it)."""
        return self.disk / REMOTE_ROOT.lstrip("/")

    def pull(self) -> Any:
        return pull_instance(
            self.id, REMOTE_ROOT, self.local, provider=self.provider, ledger=self.ledger
        )

    def verify(self) -> None:
        verify_and_record(self.ledger, self.local)

    def approve(self, instance_id: str | None = None, ttl: float = 900, now: float | None = None):
        return self.ledger.record_approval(instance_id or self.id, "tty", ttl, now=now)

    def refused(self, code: str) -> str:
        """Destroy is refused naming `code`; the instance and its disk still exist and no
        destroy request reached the emulator. Returns the refusal message."""
        with pytest.raises(Refused, match=re.escape(f"[{code}]")) as refusal:
            destroy_with_gate(
                self.id, provider=self.provider, ledger=self.ledger, profile=vast_profile()
            )
        self.assert_alive()
        return str(refusal.value)

    def assert_alive(self) -> None:
        """The instance is still there (provider show), so is its disk, and no DELETE came."""
        assert self.provider.show(self.id).state != "gone"
        assert self.disk.is_dir() and (self.results / MANIFEST_NAME).is_file()
        assert self.destroy_requests() == 0

    def destroy_requests(self) -> int:
        return int(self.emulator.request_count("DELETE", f"/api/v0/instances/{self.id}/"))

    def close(self) -> None:
        self.ledger.close()


def rgt(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the real `rgt` CLI headless (no terminal: stdin from /dev/null, a new session)."""
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        timeout=120,
        cwd=REPO,
        **kwargs,
    )


class RentalPool:
    """Instances rented up front on one emulator (their boots overlap), handed out one per
    test: the refusal corpus needs a fresh box per case, not a fresh emulator."""

    def __init__(self, emulator: Any, kinds: dict[str, int]) -> None:
        from rgt.providers.vastai import VastProvider

        self.emulator = emulator
        provider = VastProvider()
        self._free: dict[str, list[tuple[str, str]]] = {}
        for kind, count in kinds.items():
            for n in range(count):
                run_id = f"{RUN_ID}-{kind}-{n}"
                other = "some-other-run" if kind == "other-run" else None
                instance_id = create_instance(provider, run_id, manifest_run_id=other)
                self._free.setdefault(kind, []).append((instance_id, run_id))

    def take(self, tmp_path: Path, kind: str = "normal") -> Rental:
        """A fresh finished rental of `kind` (fails when the pool ran dry: raise its count)."""
        if not self._free.get(kind):
            raise AssertionError(f"the rental pool has no {kind!r} instance left")
        instance_id, run_id = self._free[kind].pop(0)
        return Rental(self.emulator, tmp_path, instance_id=instance_id, run_id=run_id)


@contextlib.contextmanager
def emulator_pool(
    tmp_path_factory: pytest.TempPathFactory, kinds: dict[str, int]
) -> Iterator[RentalPool]:
    """One emulator for a test module, with its rentals made up front (their boots overlap):
    the body of a module-scoped `pool` fixture."""
    from rgt.sim import Emulator
    from tests.conftest import CANARY_API_KEY

    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("pool-home")
        patch.setenv("RGT_STATE_DIR", str(home / "state"))
        patch.setenv("VAST_API_KEY", CANARY_API_KEY)
        sim = Emulator(state_dir=tmp_path_factory.mktemp("sim"), api_key=CANARY_API_KEY)
        sim.start()
        try:
            patch.setenv("VAST_URL", sim.url)
            yield RentalPool(sim, kinds)
        finally:
            sim.stop()


def use_pool(pool: RentalPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this test (its own HOME/state, from conftest's isolated_user) at the pool's
    emulator and its ssh key."""
    monkeypatch.setenv("VAST_URL", pool.emulator.url)
    if pool.emulator.client_key_path is not None:
        monkeypatch.setenv("RGT_SSH_KEY", str(pool.emulator.client_key_path))
