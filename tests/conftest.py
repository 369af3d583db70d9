"""Shared fixtures. Every test runs with its own HOME, state and config directories, and with a
canary API key planted in the environment: any output that contains it is a leaked secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
