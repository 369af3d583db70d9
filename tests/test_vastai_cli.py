"""The STOCK `vastai` 1.9.1 CLI (as a subprocess) and SDK (`vastai.VastAI`) against rgt.sim.

Nothing here is rgt client code: these tests show that the emulator answers the real client the
way vast.ai does, through the whole lifecycle (search, create, poll, ssh-url, stop, start,
destroy, with `--raw` JSON checked), that the faults it injects are the ones the client
retries, and that the canary API key never shows up in anything the client prints or writes.
The CLI runs with the isolated HOME of tests/conftest.py, VAST_URL at the emulator and
VASTAI_NO_UPDATE_CHECK=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.providers.rsync import ssh_program
from tests.copy_helpers import raw_ssh

pytestmark = pytest.mark.timeout(60)

VASTAI = str(Path(sys.executable).parent / "vastai")
KEY_FILE_PARTS = (".config", "vastai", "vast_api_key")


class Cli:
    """Runs the stock CLI and keeps every output, for the canary check at the end."""

    def __init__(self) -> None:
        self.outputs: list[str] = []
        self.seconds: list[float] = []

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(
            [VASTAI, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env if env is not None else dict(os.environ),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        self.seconds.append(time.monotonic() - started)
        self.outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, f"vastai {' '.join(args)} crashed:\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        done = self(*args, "--raw")
        assert done.returncode == 0, done.stderr
        try:
            return json.loads(done.stdout)
        except ValueError as exc:
            raise AssertionError(
                f"vastai {' '.join(args)} --raw printed no JSON: {done.stdout!r}"
            ) from exc


@pytest.fixture
def cli(emulator: Any, isolated_user: Path) -> Any:
    runner = Cli()
    yield runner
    # Nothing the CLI printed, nothing it wrote under HOME except the key file the user put
    # there, and nothing the emulator keeps (its state, instance logs and disks) holds the key.
    written = [
        p.read_bytes()
        for root in (isolated_user, Path(emulator.state_dir))
        for p in root.rglob("*")
        if p.is_file() and p.parts[-3:] != KEY_FILE_PARTS
    ]
    assert_no_canary(*runner.outputs, *written)


def _sdk(emulator: Any) -> Any:
    import vastai

    return vastai.VastAI(api_key=CANARY_API_KEY, server_url=emulator.url, retry=1)


def poll(
    fetch: Callable[[], dict[str, Any] | None],
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 30,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = fetch()
        if row is not None and done(row):
            return row
        assert time.monotonic() < deadline, f"gave up waiting; last row: {row}"
        time.sleep(0.2)


GOOD_OFFERS = "num_gpus=1 verified=true direct_port_count>=1 rentable=true reliability>=0.98"


# -- the CLI lifecycle -----------------------------------------------------------------------------


@pytest.mark.timeout(120)  # a dozen CLI starts; slow only on a loaded machine
def test_cli_lifecycle_search_create_poll_ssh_stop_start_destroy(
    cli: Cli, emulator: Any, tmp_path: Path
) -> None:
    offers = cli.json("search", "offers", GOOD_OFFERS, "-o", "dph_total")
    assert isinstance(offers, list) and offers
    for offer in offers:
        assert offer["verified"] is True or offer.get("verification") == "verified"
        assert offer["num_gpus"] == 1 and offer["direct_port_count"] >= 1
        assert offer["rentable"] is True and offer["reliability"] >= 0.98
    prices = [offer["dph_total"] for offer in offers]
    assert prices == sorted(prices)
    offer = offers[0]
    # Waiting is done in-process (the SDK, no process start per look); every state the test
    # checks is then read once more through the CLI.
    sdk = _sdk(emulator)

    onstart = (
        'mkdir -p "$RGT_BOX_ROOT/workspace"; '
        'echo "box $CONTAINER_ID" > "$RGT_BOX_ROOT/workspace/hello"; '
        "echo onstart-ran; sleep 600"
    )
    created = cli.json(
        "create",
        "instance",
        str(offer["id"]),
        "--image",
        "pytorch/pytorch",
        "--disk",
        "10",
        "--ssh",
        "--direct",
        "--onstart-cmd",
        onstart,
        "--label",
        "rgt:cli-life",
    )
    assert created["success"] is True
    instance_id = str(created["new_contract"])

    def show() -> dict[str, Any] | None:
        row = cli.json("show", "instance", instance_id)
        return row if isinstance(row, dict) and "id" in row else None

    poll(lambda: sdk.show_instance(int(instance_id)), lambda r: r["actual_status"] == "running")
    running = show()
    assert running is not None and running["actual_status"] == "running"
    assert str(running["id"]) == instance_id
    assert running["label"] == "rgt:cli-life"
    assert running["intended_status"] == "running"
    assert running["gpu_name"] == offer["gpu_name"]
    assert "ssh_direc" in running["image_runtype"]
    listed = cli.json("show", "instances")
    assert [str(r["id"]) for r in listed].count(instance_id) == 1

    # ssh-url names the direct endpoint, and it is a real sshd into this instance's disk.
    url = cli("ssh-url", instance_id).stdout.strip()
    assert url == f"ssh://root@127.0.0.1:{running['ports']['22/tcp'][0]['HostPort']}"
    port = url.rsplit(":", 1)[1]
    poll(
        lambda: {
            "ok": (Path(emulator.instance_disk(instance_id)) / "workspace" / "hello").exists()
        },
        lambda r: r["ok"],
    )
    # ssh_program(): plain `ssh`, or the emulator's local stand-in where no sshd can run.
    over_ssh = raw_ssh(
        port,
        emulator.client_key_path,
        tmp_path / "known_hosts",
        "cat /workspace/hello",
        program=ssh_program(),
    )
    assert over_ssh.returncode == 0, over_ssh.stderr
    assert over_ssh.stdout == f"box {instance_id}\n"
    poll(lambda: {"log": cli("logs", instance_id).stdout}, lambda r: "onstart-ran" in r["log"])

    stopping = cli("stop", "instance", instance_id, "--raw")
    assert stopping.returncode == 0 and f"stopping instance {instance_id}" in stopping.stdout
    poll(lambda: sdk.show_instance(int(instance_id)), lambda r: r["actual_status"] == "stopped")
    stopped = show()
    assert stopped is not None and stopped["actual_status"] == "stopped"
    assert stopped["intended_status"] == "stopped"
    # VAST1: the stopped box still exists, with its disk.
    assert Path(emulator.instance_disk(instance_id)).joinpath("workspace", "hello").exists()

    starting = cli("start", "instance", instance_id, "--raw")
    assert starting.returncode == 0 and f"starting instance {instance_id}" in starting.stdout
    poll(lambda: sdk.show_instance(int(instance_id)), lambda r: r["actual_status"] == "running")

    destroyed = cli("destroy", "instance", instance_id, "-y", "--raw")
    assert destroyed.returncode == 0 and destroyed.stdout == ""
    gone = cli("show", "instance", instance_id, "--raw")
    assert json.loads(gone.stdout) == {"instances": None}
    assert instance_id not in [str(r["id"]) for r in cli.json("show", "instances")]
    assert not Path(emulator.instance_disk(instance_id)).exists()


def test_cli_without_confirmation_does_not_destroy(cli: Cli, emulator: Any) -> None:
    sdk = _sdk(emulator)
    offer = sdk.search_offers(query=GOOD_OFFERS)[0]
    instance_id = sdk.create_instance(
        id=offer["id"], image="img", ssh=True, direct=True, label="rgt:keep"
    )["new_contract"]
    refused = cli("destroy", "instance", str(instance_id))  # stdin is /dev/null: no "y"
    assert "Aborted" in refused.stdout
    assert emulator.request_count("DELETE", f"/api/v0/instances/{instance_id}/") == 0
    assert sdk.show_instance(instance_id)["id"] == instance_id
    assert Path(emulator.instance_disk(instance_id)).is_dir()


def test_cli_reads_the_key_file_and_a_wrong_key_gets_a_clear_401(
    cli: Cli, isolated_user: Path
) -> None:
    env = dict(os.environ)
    env.pop("VAST_API_KEY")
    no_key = cli("show", "user", "--raw", env=env)
    assert '"status_code": 401' in no_key.stderr
    key_file = isolated_user.joinpath(*KEY_FILE_PARTS)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(CANARY_API_KEY)
    key_file.chmod(0o600)
    with_file = cli("show", "user", "--raw", env=env)
    assert with_file.returncode == 0 and "balance" in json.loads(with_file.stdout)
    env["VAST_API_KEY"] = "wrong-" + CANARY_API_KEY[::-1]
    wrong = cli("show", "user", "--raw", env=env)
    error = json.loads(wrong.stderr.strip().splitlines()[-1])
    assert error["status_code"] == 401 and error["msg"]
    assert CANARY_API_KEY[::-1] not in wrong.stdout + wrong.stderr


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_cli_retries_a_transient_failure_and_a_retried_create_rents_once(
    cli: Cli, emulator: Any, status: int
) -> None:
    offer = cli.json("search", "offers", GOOD_OFFERS)[0]  # also warms the CLI's caches
    retry_after = 0.2 if status == 429 else None
    emulator.fail_next(2, status=status, retry_after=retry_after)
    lists_before = emulator.request_count("GET", "/api/v1/instances/")
    started = time.monotonic()
    listed = cli.json("show", "instances")
    assert listed == []
    # Two refused attempts, then the one that worked: the CLI retried exactly twice.
    assert emulator.request_count("GET", "/api/v1/instances/") - lists_before == 3
    if retry_after is not None:
        assert time.monotonic() - started >= 2 * retry_after  # Retry-After was honoured
    emulator.fail_next(2, status=status, retry_after=retry_after)
    creates_before = emulator.request_count("PUT", "/api/v0/asks/*")
    created = cli.json(
        "create",
        "instance",
        str(offer["id"]),
        "--image",
        "img",
        "--ssh",
        "--direct",
        "--label",
        f"rgt:retry{status}",
    )
    assert created["success"] is True
    assert emulator.request_count("PUT", "/api/v0/asks/*") - creates_before == 3
    labels = [r["label"] for r in cli.json("show", "instances")]
    assert labels.count(f"rgt:retry{status}") == 1


def test_cli_gives_up_after_its_attempts_and_says_why(cli: Cli, emulator: Any) -> None:
    cli.json("show", "user")  # warm the CLI's caches: only the command's own request follows
    emulator.fail_next(10, status=503)
    before = emulator.request_count("GET", "/api/v1/instances/")
    done = cli("show", "instances", "--raw")
    assert emulator.request_count("GET", "/api/v1/instances/") - before == 3  # --retry default
    assert done.returncode == 0 and done.stdout == ""  # the CLI exits 0 after an HTTP error
    assert json.loads(done.stderr.strip().splitlines()[-1])["status_code"] == 503
    emulator.fail_next(0)


def test_stock_cli_rents_twice_after_a_committed_503_but_rgt_does_not(
    cli: Cli, emulator: Any
) -> None:
    """Why rgt does its own idempotent create: the stock CLI retries a create that the server
    committed before answering 503, and so rents a second box. rgt's provider looks first."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.retry import RetryPolicy
    from rgt.providers.vastai import VastProvider, run_label

    offers = cli.json("search", "offers", GOOD_OFFERS)  # also warms the CLI's caches
    emulator.fail_next(1, status=503, after_commit=True)
    cli.json(
        "create",
        "instance",
        str(offers[0]["id"]),
        "--image",
        "img",
        "--ssh",
        "--direct",
        "--label",
        "rgt:stock",
    )
    stock = [r for r in cli.json("show", "instances") if r["label"] == "rgt:stock"]
    assert len(stock) == 2, "expected the stock CLI's blind retry to rent twice"

    provider = VastProvider(
        retry=RetryPolicy(attempts=5, total_seconds=20, first_backoff=0.05, max_backoff=0.2)
    )
    offer = provider.search_offers(OfferQuery())[0]
    provider.list_instances()
    emulator.fail_next(1, status=503, after_commit=True, skip=1)  # let the label lookup through
    created = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("ours")
    )
    ours = [r for r in cli.json("show", "instances") if r["label"] == run_label("ours")]
    assert [str(r["id"]) for r in ours] == [created.id]


# -- the SDK ---------------------------------------------------------------------------------------


def test_sdk_lifecycle_with_retries(emulator: Any, capfd: pytest.CaptureFixture[str]) -> None:
    import vastai

    sdk = vastai.VastAI(api_key=CANARY_API_KEY, server_url=emulator.url, retry=4)
    offers = sdk.search_offers(query=GOOD_OFFERS, order="dph_total")
    assert offers and [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers)
    emulator.fail_next(2, status=429, retry_after=0.1)
    creates_before = emulator.request_count("PUT", "/api/v0/asks/*")
    created = sdk.create_instance(
        id=offers[0]["id"],
        image="img",
        disk=10,
        onstart_cmd="sleep 600",
        label="rgt:sdk",
        ssh=True,
        direct=True,
    )
    assert created["success"] is True
    assert emulator.request_count("PUT", "/api/v0/asks/*") - creates_before == 3
    instance_id = int(created["new_contract"])
    assert [r["label"] for r in sdk.show_instances()].count("rgt:sdk") == 1
    poll(lambda: sdk.show_instance(instance_id), lambda r: r["actual_status"] == "running")
    url = sdk.ssh_url(instance_id)
    assert url.startswith("ssh://root@127.0.0.1:")
    emulator.fail_next(2, status=503)
    puts_before = emulator.request_count("PUT", f"/api/v0/instances/{instance_id}/")
    sdk.stop_instance(instance_id)
    assert emulator.request_count("PUT", f"/api/v0/instances/{instance_id}/") - puts_before == 3
    stopped = poll(
        lambda: sdk.show_instance(instance_id),
        lambda r: r["actual_status"] in ("stopped", "exited"),
    )
    assert stopped["intended_status"] == "stopped"
    sdk.start_instance(instance_id)
    poll(lambda: sdk.show_instance(instance_id), lambda r: r["actual_status"] == "running")
    sdk.destroy_instance(instance_id)
    assert sdk.show_instance(instance_id) is None
    assert all(r["id"] != instance_id for r in sdk.show_instances())
    out, err = capfd.readouterr()
    assert_no_canary(out, err)
