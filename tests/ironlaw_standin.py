"""STAND-IN provider for the Iron Law unit tests: a "box" is a local directory.

Not a mock of vast.ai: it implements rgt's Provider interface over real directories and copies
with the real local `rsync --partial`, so pull/gate/destroy run their real code paths. The
end-to-end tests (tests/test_ironlaw_e2e.py) use the vast.ai emulator with VastProvider instead.
State lives in files, so several processes (concurrent destroys) see the same boxes, and every
destroy request is appended to `destroy_requests.log` to be counted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from rgt.providers.base import CopyResult, Instance, ProgressCallback
from tests.ironlaw_fixtures import REMOTE_ROOT, RUN_ID, build_manifest_on_box, write_results


class LocalBoxProvider:
    """Boxes under `root/<id>/disk`; absolute box paths map into the disk directory."""

    platform = "vastai"

    def __init__(self, root: Path, *, bwlimit_kbps: int | None = None) -> None:
        self.root = Path(root)
        self.bwlimit_kbps = bwlimit_kbps  # slows copies down so a test can kill one midway

    # -- test helpers ----------------------------------------------------------------------
    def add_box(self, instance_id: str, state: str = "running") -> Path:
        """Create a box; returns its disk directory."""
        disk = self.disk(instance_id)
        disk.mkdir(parents=True, exist_ok=True)
        self._set_state(instance_id, state)
        return disk

    def disk(self, instance_id: str) -> Path:
        return self.root / instance_id / "disk"

    def box_path(self, instance_id: str, remote_path: str) -> Path:
        return self.disk(instance_id) / remote_path.lstrip("/")

    def destroy_requests(self) -> list[str]:
        log = self.root / "destroy_requests.log"
        return log.read_text().split() if log.exists() else []

    def _set_state(self, instance_id: str, state: str) -> None:
        (self.root / instance_id).mkdir(parents=True, exist_ok=True)
        (self.root / instance_id / "state.json").write_text(json.dumps({"state": state}))

    def _state(self, instance_id: str) -> str:
        try:
            return str(json.loads((self.root / instance_id / "state.json").read_text())["state"])
        except FileNotFoundError:
            return "gone"

    # -- Provider --------------------------------------------------------------------------
    def show(self, instance_id: str) -> Instance:
        return Instance(id=instance_id, state=self._state(instance_id), dph_total=0.5)  # type: ignore[arg-type]

    def list_instances(self) -> list[Instance]:
        return [
            self.show(p.name)
            for p in sorted(self.root.iterdir())
            if p.is_dir() and self._state(p.name) != "gone"
        ]

    def stop(self, instance_id: str) -> None:
        self._set_state(instance_id, "stopped")

    def start(self, instance_id: str) -> None:
        self._set_state(instance_id, "running")

    def destroy(self, instance_id: str) -> None:
        with open(self.root / "destroy_requests.log", "a") as log:
            log.write(instance_id + "\n")
        shutil.rmtree(self.root / instance_id, ignore_errors=True)

    def read_remote_file(self, instance_id: str, remote_path: str) -> bytes:
        if self._state(instance_id) != "running":
            raise RuntimeError(f"instance {instance_id} is not running (ssh refused)")
        return self.box_path(instance_id, remote_path).read_bytes()

    def run_remote_command(
        self, instance_id: str, argv: list[str], *, max_bytes: int, timeout: float = 120.0
    ) -> bytes:
        # As the emulator's ssh wrapper does: absolute paths map into the box's disk.
        if self._state(instance_id) != "running":
            raise RuntimeError(f"instance {instance_id} is not running (ssh refused)")
        mapped = [
            str(self.box_path(instance_id, word)) if word.startswith("/") else word for word in argv
        ]
        done = subprocess.run(mapped, capture_output=True, timeout=timeout, check=True)
        if len(done.stdout) > max_bytes:
            raise RuntimeError(f"{argv[0]} printed more than {max_bytes} bytes")
        return done.stdout

    def copy_from(
        self,
        instance_id: str,
        remote_path: str,
        local_dir: Path,
        *,
        progress: ProgressCallback | None = None,
    ) -> CopyResult:
        if self._state(instance_id) != "running":
            raise RuntimeError(f"instance {instance_id} is not running (ssh refused)")
        source = self.box_path(instance_id, remote_path)
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        limit = [f"--bwlimit={self.bwlimit_kbps}"] if self.bwlimit_kbps else []
        done = subprocess.run(
            # --no-whole-file: use the delta algorithm as rsync over ssh does (local rsync
            # would otherwise always copy whole files).
            [
                "rsync",
                "-a",
                "--partial-dir=.rsync-partial",  # as rgt.providers.rsync copies
                "--no-whole-file",
                "--timeout=30",
                "--stats",
                *limit,
                str(source),
                str(local_dir),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        sent = 0
        for line in done.stdout.splitlines():
            if line.startswith("Literal data:"):  # bytes actually sent, not matched
                sent = int(line.split(":")[1].split()[0].replace(",", ""))
        return CopyResult(
            bytes_transferred=sent, files=0, attempts=1, transport="rsync-local (stand-in)"
        )

    # Not used by the Iron Law code paths.
    def search_offers(self, query: object) -> list[object]:
        return []

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        return ""


def finished_box(
    root: Path,
    instance_id: str,
    files: dict[str, bytes],
    *,
    run_id: str = RUN_ID,
    roster: tuple[str, ...] = ("ckpt", "metrics"),
) -> tuple[LocalBoxProvider, Path, Path, bytes]:
    """A running box under `root` whose job wrote `files` and built its manifest: (provider,
    disk, results dir, manifest bytes)."""
    provider = LocalBoxProvider(root)
    disk = provider.add_box(instance_id)
    results = provider.box_path(instance_id, REMOTE_ROOT)
    write_results(results, files)
    manifest = build_manifest_on_box(
        results, run_id=run_id, roster=list(roster), instance_id=instance_id
    )
    return provider, disk, results, manifest


def assert_box_alive(provider: LocalBoxProvider, instance_id: str) -> None:
    """The box still runs, its results and manifest are on its disk, and no destroy was sent."""
    assert provider.show(instance_id).state == "running"
    assert (provider.box_path(instance_id, REMOTE_ROOT) / "PULL_MANIFEST.json").is_file()
    assert provider.destroy_requests() == []
