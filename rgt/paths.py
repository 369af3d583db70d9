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
    """The directory holding the ledger (`$RGT_STATE_DIR`, else the platform's user state dir),
    created if missing."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return _usable_dir(Path(override), STATE_DIR_ENV)
    import platformdirs

    return _usable_dir(Path(platformdirs.user_state_dir("rgt")), STATE_DIR_ENV)


def run_dir(run_id: str) -> Path:
    """The run's local directory, `<state dir>/runs/<run_id>/` (not created here): `rgt poll`
    copies the box's state directory of the run (`<data_dir>/.rgt/<run_id>/`: status record,
    onstart.log, job.log) into it when the job failed."""
    return state_dir() / "runs" / run_id


def config_dir() -> Path:
    """The directory holding user config such as the approval hash (`$RGT_CONFIG_DIR` overrides)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return _usable_dir(Path(override), CONFIG_DIR_ENV)
    import platformdirs

    return _usable_dir(Path(platformdirs.user_config_dir("rgt")), CONFIG_DIR_ENV)


def _usable_dir(path: Path, env: str) -> Path:
    """`path`, created if missing; a file in the way or an uncreatable path is the user's to fix
    (exit 2 naming the variable), not an internal error in whichever command touched it first."""
    from rgt.errors import UsageError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
        raise UsageError(
            f"{path}: cannot use it as rgt's directory ({reason}); set {env} to a directory"
        ) from None
    return path
