"""Shared fixtures. Every test runs with its own HOME, state and config directories, and with a
canary API key planted in the environment: any output that contains it is a leaked secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Distinctive enough that finding it anywhere can only mean a leak.
CANARY_API_KEY = "rgt-canary-3f9c2d7e1b5a4c8f9e0d6b2a7c1e5f3d9b8a"


def assert_no_canary(*texts: str | bytes) -> None:
    """Fail if any given text (output, file content, tool result) contains the canary key."""
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        assert CANARY_API_KEY.encode() not in data, "the canary API key leaked into an output"


@pytest.fixture(autouse=True)
def isolated_user(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh HOME with rgt's state/config dirs inside, and the canary key as VAST_API_KEY."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("RGT_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("RGT_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("VASTAI_NO_UPDATE_CHECK", "1")
    monkeypatch.setenv("VAST_API_KEY", CANARY_API_KEY)
    monkeypatch.delenv("VAST_URL", raising=False)
    yield home


@pytest.fixture
def emulator(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A running rgt.sim.Emulator that accepts the canary key; VAST_URL points the vastai
    SDK/CLI at it, RGT_SSH_KEY (and RGT_SSH_COMMAND where sshd cannot run) point rsync at its
    instances. Stopped afterwards (instance processes and sshds killed)."""
    from rgt.sim import Emulator

    sim = Emulator(state_dir=tmp_path_factory.mktemp("sim"), api_key=CANARY_API_KEY).start()
    try:
        monkeypatch.setenv("VAST_URL", sim.url)
        for name, value in sim.client_environment().items():
            monkeypatch.setenv(name, value)
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def alone_in_process() -> None:
    """Wait until this test process runs one thread: rgt.manifest and rgt.verify fork their
    hashing workers only then, and an earlier test's server may leave rgt.children's forker
    thread for a moment after it stopped (it ends once its servers have exited)."""
    import threading
    import time

    deadline = time.monotonic() + 10
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (the MCP client ones) run on asyncio, the backend the mcp SDK targets."""
    return "asyncio"


def spy_big_file_hashing(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(pid, thread name) of every big file rgt.manifest hashes from here to the end of the
    test: which process and thread did the work (forked workers leave big files to the
    parent's hashing threads)."""
    import os
    import threading

    from rgt import manifest

    calls: list[tuple[int, str]] = []
    real = manifest._hash_big

    def spy(path: str, want_stat: bool) -> Any:
        calls.append((os.getpid(), threading.current_thread().name))
        return real(path, want_stat)

    monkeypatch.setattr(manifest, "_hash_big", spy)
    return calls


# The run's order (tools/test.sh: `--dist loadfile --no-loadscope-reorder`, so xdist keeps it):
# the files of SLOW_FIRST first, longest first, then the rest in their own order, then LAST. A
# file is one unit of work (one worker runs it whole, so a module's emulator or sshd starts
# once), except the files of SPREAD, whose tests go one by one to whichever worker is free: a
# file that takes minutes and shares nothing costly between its tests would otherwise bound the
# whole run (on 2 cores, test_run_supervisor.py alone took 467 s of a 743 s run). Sums of test
# durations per file, mean of two whole runs (-n 4, load 3-6 from other work);
# test_run_supervisor.py comes where its longest test (~45 s) would.
SLOW_FIRST = (
    "test_platform_flows.py",  # 107 s
    "test_durable.py",  # 104 s
    "test_cli_errors.py",  # 102 s
    "test_mcp_refusals.py",  # 97 s
    "test_vastai_cli.py",  # 94 s
    "test_ironlaw_crash.py",  # 93 s
    "test_provider_ssh.py",  # 90 s
    "test_demo.py",  # 90 s
    "test_ironlaw_e2e.py",  # 81 s
    "test_ironlaw_refusals.py",  # 79 s
    "test_gate_box_changed.py",  # 78 s
    "test_discard.py",  # 72 s
    "test_evidence_chain.py",  # 54 s
    "test_provider_vastai.py",  # 52 s
    "test_mcp_lifecycle.py",  # 51 s
    "test_launchers.py",  # 50 s
    "test_mcp_meter_stop.py",  # 49 s
    "test_run_supervisor.py",  # 474 s, 32 tests of 10-50 s (SPREAD)
    "test_launch_intent.py",  # 45 s
    "test_mcp_tools.py",  # 43 s
    "test_lifecycle.py",  # 42 s
    "test_keeper.py",  # 42 s
    "test_poll_job.py",  # 41 s
    "test_start.py",  # 41 s
    "test_approval.py",  # 40 s
    "test_mcp_passphrase.py",  # 37 s
    "test_box_health.py",  # 37 s
    "test_sweep_all.py",  # 36 s
)
# After every other file: 142 tests of about a second (152 s), which fill the gaps at the end.
LAST = ("test_render.py",)
# Their tests share no module- or class-scoped fixture that costs much (test_run_supervisor's
# module emulator starts in a second), and none relies on another having run first.
SPREAD = ("test_render.py", "test_run_supervisor.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of SLOW_FIRST first and those of LAST last (a stable sort: tests within a
    file keep their order)."""
    rank = {name: place for place, name in enumerate(SLOW_FIRST)}
    rank.update((name, len(SLOW_FIRST) + 1) for name in LAST)
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `--dist loadfile`: whole files to a worker, but each test of a SPREAD file on its
    own (xdist's loadgroup would do it with marks, but it tags the node id in a way pytest 9
    ignores: every test became its own unit)."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own choice
    from xdist.scheduler import LoadFileScheduling

    class FileOrSpreadTestScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).name in SPREAD else path

    return FileOrSpreadTestScheduling(config, log)
