"""Bad input on the `rgt` sub-commands, as a careless user types it (QA regressions).

Each case runs the real CLI in a subprocess and asserts the README's rule: one line on stderr
naming the flag/file/value and what is allowed, the documented exit code, never a traceback —
and, where money is at stake, that nothing was rented (the emulator holds no instance)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_no_canary

EXAMPLE_JOB = Path(__file__).parents[1] / "schemas" / "job.example.yaml"


def _rgt(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=timeout
    )


def _assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *words: str
) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert_no_canary(result.stdout, result.stderr)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--max-price", "nan"], "max_price_per_hour nan"),
        (["--max-price", "inf"], "max_price_per_hour inf"),
        (["--max-price", "1", "--interruptible", "--bid", "nan"], "bid nan"),
    ],
)
def test_launch_with_a_nan_price_cap_or_bid_rents_nothing(
    emulator, tmp_path: Path, flags: list[str], named: str
) -> None:
    # NaN compares false both ways: `price > nan` is False, so an unchecked NaN cap let
    # `rgt launch --max-price nan` rent at any price.
    found = _rgt("search", "--gpu", "RTX_4090", "--disk", "40", "--json")
    assert found.returncode == 0, found.stderr
    offer = json.loads(found.stdout)[0]["offer_id"]
    result = _rgt("launch", offer, "--job", str(EXAMPLE_JOB), *flags)
    _assert_one_line_error(result, 2, named)
    assert emulator.instance_ids() == []


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--max-price", "nan"], "--max-price: nan"),
        (["--disk", "-5"], "--disk: -5"),
        (["--disk", "nan"], "--disk: nan"),
    ],
)
def test_search_rejects_non_numbers_before_asking_the_api(flags: list[str], named: str) -> None:
    # VAST_URL unset and no emulator: a check that reached the API would fail with exit 3.
    _assert_one_line_error(_rgt("search", *flags), 2, named)


@pytest.mark.parametrize(
    "command",
    [
        ["poll", "abc"],
        ["poll", "--", "-1"],
        ["poll", ""],
        ["stop", "1 2"],
        ["cost", "../../etc"],
        ["pull", "abc", "/workspace/results", "out"],
        ["destroy", "abc"],
        ["destroy", "--check", "--json", "--", "-1"],
    ],
)
def test_a_malformed_instance_id_is_a_usage_error_before_any_request(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Was exit 3 "unexpected answer from the API: invalid literal for int()" (or, for -1,
    # "gone", exit 0) after a request. Nothing listens on port 9: a request would be exit 3.
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    result = _rgt(*command)
    _assert_one_line_error(result, 2, "instance id", "positive whole numbers")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("output", "said"),
    [("{tmp}", "is a directory"), ("{tmp}/no-such-dir/m.json", "does not exist")],
)
def test_manifest_output_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path, output: str, said: str
) -> None:
    # Was exit 70 "internal error: FileNotFoundError / IsADirectoryError" (QA).
    (tmp_path / "root" / "cell-a").mkdir(parents=True)
    (tmp_path / "root" / "cell-a" / "f.txt").write_text("x\n")
    (tmp_path / "roster.txt").write_text("cell-a\n")
    target = output.format(tmp=tmp_path)
    result = _rgt(
        "manifest", str(tmp_path / "root"), "--run-id", "r1",
        "--roster", str(tmp_path / "roster.txt"), "--output", target,
    )  # fmt: skip
    _assert_one_line_error(result, 2, f"--output {target}", said)


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_stdio_mcp_server_while_its_client_keeps_stdin_open() -> None:
    # Was: SIGINT cancelled the event loop, which then waited forever for the transport's
    # blocking stdin read (on a terminal, or a client's pipe left open): Ctrl-C hung.
    import signal

    server = subprocess.Popen(
        [sys.executable, "-m", "rgt", "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "qa", "version": "0"},
            },
        }
        server.stdin.write(json.dumps(hello).encode() + b"\n")
        server.stdin.flush()
        assert json.loads(server.stdout.readline())["id"] == 1  # serving, blocked on stdin
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=10) == 130
        assert server.stderr is not None
        # The start-up warning (no approval passphrase set in this fresh HOME), then one line.
        assert server.stderr.read().decode().splitlines()[-1:] == ["rgt mcp: interrupted"]
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--time-scale", "nan"], "--time-scale"),
        (["--time-scale", "inf"], "--time-scale"),
        (["--balance", "nan"], "--balance"),
        (["--state", "/proc/rgt-no-such/x"], "--state: cannot create /proc/rgt-no-such/x"),
    ],
)
def test_sim_serve_rejects_non_numbers_and_an_uncreatable_state_dir(
    flags: list[str], named: str
) -> None:
    # Was: a NaN time scale or balance started an emulator with a NaN meter; an uncreatable
    # --state was exit 70 "internal error: FileNotFoundError" (QA).
    result = _rgt("sim", "serve", "--port", "0", "--no-ssh", *flags, timeout=20)
    _assert_one_line_error(result, 2, named)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("body", "gone"),
    [(b"", False), (b"<html>Not Found</html>", False), (b'{"success": false, "msg": "x"}', True)],
)
def test_a_404_without_the_apis_json_is_not_an_instance_gone(
    monkeypatch: pytest.MonkeyPatch, body: bytes, gone: bool
) -> None:
    # Was: any 404 meant "gone", so a VAST_URL pointing at another web server (a typo, the
    # website instead of the API) made `rgt poll` say "nothing to do: bills nothing", exit 0.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # The list endpoint answers (no instance): rgt confirms a show's 404 with it.
            listing = self.path.startswith("/api/v1/instances/")
            answer = b'{"instances": [], "next_token": null}' if listing else body
            self.send_response(200 if listing else 404)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("VAST_URL", f"http://127.0.0.1:{server.server_address[1]}")
        result = _rgt("poll", "4504940")
    finally:
        server.shutdown()
        server.server_close()
    if gone:
        assert result.returncode == 0 and "gone" in result.stdout, result.stderr
    else:
        _assert_one_line_error(result, 3, "answered 404 without an API body", "NOT assumed gone")


@pytest.mark.parametrize("env", ["RGT_STATE_DIR", "RGT_CONFIG_DIR"])
@pytest.mark.parametrize(
    ("where", "reason"),
    [("a-file", "a file is in the way"), ("a-file/sub", "Not a directory")],
)
def test_a_state_or_config_dir_that_cannot_be_a_directory_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str, where: str, reason: str
) -> None:
    # Was exit 70 "internal error: FileExistsError" from whichever command touched it first.
    (tmp_path / "a-file").write_text("x\n")
    monkeypatch.setenv(env, str(tmp_path / where))
    command = ["ledger"] if env == "RGT_STATE_DIR" else ["approval", "status"]
    _assert_one_line_error(_rgt(*command), 2, str(tmp_path / where), reason, env)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["VAST_API_KEY", "MY_ALIAS"])
def test_launch_refuses_to_send_the_accounts_api_key_to_the_box(
    emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Was: `secret_env: [VAST_API_KEY]` (or any variable holding the key) rented a box with the
    # account's key in its environment, readable by the job and the host.
    from tests.conftest import CANARY_API_KEY

    monkeypatch.setenv("MY_ALIAS", CANARY_API_KEY)
    job = tmp_path / "job.yaml"
    job.write_text(EXAMPLE_JOB.read_text().replace("secret_env: []", f"secret_env: [{name}]", 1))
    assert f"secret_env: [{name}]" in job.read_text()
    found = _rgt("search", "--gpu", "RTX_4090", "--disk", "40", "--json")
    offer = json.loads(found.stdout)[0]["offer_id"]
    result = _rgt("launch", offer, "--job", str(job), "--max-price", "5")
    _assert_one_line_error(result, 2, f"env {name}: holds this account's vast.ai API key")
    assert emulator.instance_ids() == []


@pytest.mark.timeout(60)
def test_ctrl_c_during_launch_says_a_box_may_bill_and_how_to_find_it(emulator) -> None:
    # Was a bare "rgt launch: interrupted" while the create request had reached the platform:
    # a rented box the ledger never heard of, and a user who thinks nothing was rented.
    import signal
    import time

    found = _rgt("search", "--gpu", "RTX_4090", "--disk", "40", "--json")
    offer = json.loads(found.stdout)[0]["offer_id"]
    emulator.add_latency(3.0)
    command = ["launch", offer, "--job", str(EXAMPLE_JOB), "--max-price", "5"]
    # Ctrl-C as a terminal delivers it, even when this test runs as a background job (whose
    # children inherit SIGINT ignored, and Python then keeps ignoring it): the child puts
    # Python's own handler back before running `rgt`.
    ctrl_c_able = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'rgt'; runpy.run_module('rgt', run_name='__main__')"
    )
    launch = subprocess.Popen(
        [sys.executable, "-c", ctrl_c_able, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 40
    while emulator.request_count("PUT", "/api/v0/asks/*") == 0:  # the create has arrived
        assert time.monotonic() < deadline and launch.poll() is None
        time.sleep(0.05)
    launch.send_signal(signal.SIGINT)
    _, stderr = launch.communicate(timeout=30)
    assert launch.returncode == 130
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "a box labelled rgt:example-run may have been rented" in stderr
    assert "rgt sweep" in stderr
    emulator.add_latency(0)
    deadline = time.monotonic() + 20
    while len(emulator.instance_ids()) != 1:  # the platform did rent it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    swept = _rgt("sweep")
    # The launch wrote its intent before the create: the sweep finds the box by its label.
    assert "recorded-by-sweep" in swept.stdout and "unknown-to-ledger" not in swept.stdout


def test_an_ssh_key_variable_naming_a_directory_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Was "RGT_SSH_KEY=/some/dir: no such file" (it exists: a directory).
    from rgt.errors import UsageError
    from rgt.providers.rsync import identity_from_environment

    monkeypatch.setenv("RGT_SSH_KEY", str(tmp_path))
    with pytest.raises(UsageError, match=f"RGT_SSH_KEY={tmp_path}: a directory; set it to"):
        identity_from_environment()
    monkeypatch.setenv("RGT_SSH_KEY", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="missing: no such file; set it to"):
        identity_from_environment()


def test_a_binary_vastai_key_file_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, isolated_user: Path
) -> None:
    # Was exit 70 "internal error: UnicodeDecodeError" (QA).
    monkeypatch.delenv("VAST_API_KEY")
    key_file = isolated_user / ".config" / "vastai" / "vast_api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"\xff\xfe" + b"k" * 20)
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    _assert_one_line_error(_rgt("poll", "4504940"), 2, f"key file {key_file}: not text")


def test_mcp_http_on_a_taken_port_is_one_rgt_line_and_exit_2() -> None:
    # Was the HTTP server's own "ERROR: [Errno 98] ..." log line and its exit code 3.
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _rgt("mcp", "--http", "--port", str(port), timeout=30)
    _assert_one_line_error(result, 2, f"--port {port}: cannot listen on 127.0.0.1")


@pytest.mark.timeout(60)
def test_approve_refuses_a_malformed_id_before_the_prompt_and_records_nothing() -> None:
    # On a real terminal with a passphrase configured, `rgt approve abc` used to prompt and
    # record an approval for an id no vast.ai box can have.
    from rgt import approval
    from rgt.ledger import Ledger
    from tests.ptyrun import PtyProcess

    approval.store_passphrase("correct horse battery staple", n=2**14)
    child = PtyProcess("approve", "abc")
    assert child.wait() == 2, child.text
    assert "instance id 'abc'" in child.text and "positive whole numbers" in child.text
    assert "Type the instance id" not in child.text and "Traceback" not in child.text
    with Ledger.open() as ledger:
        assert ledger.approvals("abc") == []
