"""Where rgt keeps its state on the user's machine.

The ledger and the approval passphrase hash live in per-user directories (platformdirs), which
environment variables can move (tests, several accounts, a shared disk).
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "RGT_STATE_DIR"
CONFIG_DIR_ENV = "RGT_CONFIG_DIR"


def state_dir() -> Path:
    """The directory holding the ledger (`$RGT_STATE_DIR`, else the platform's user state dir)."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_state_dir("rgt"))


def config_dir() -> Path:
    """The directory holding user config such as the approval hash (`$RGT_CONFIG_DIR` overrides)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("rgt"))
