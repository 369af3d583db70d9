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


# Files that take minutes, started first: with workers taking whole files (tools/test.sh), a
# long file collected last would run alone at the end while the other workers idle. Order is
# longest first (per-file sums of test durations, -n 2 --dist loadfile, load 8-10); the rest
# keep their order.
SLOW_FIRST = (
    "test_platform_flows.py",
    "test_run_supervisor.py",
    "test_mcp_refusals.py",
    "test_gate_box_changed.py",
    "test_ironlaw_e2e.py",
    "test_provider_ssh.py",
    "test_demo.py",
    "test_evidence_chain.py",
    "test_durable.py",
    "test_ironlaw_refusals.py",
    "test_discard.py",
    "test_mcp_tools.py",
    "test_ironlaw_crash.py",
    "test_mcp_meter_stop.py",
    "test_poll_job.py",
    "test_keeper.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of SLOW_FIRST first (a stable sort: tests within a file keep their order)."""
    rank = {name: place for place, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
