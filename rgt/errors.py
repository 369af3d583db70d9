"""Errors a user can cause, and the exit codes they map to.

Every `rgt` command turns these into one line on stderr and a documented exit code; anything
else escaping a command is a bug in rgt (and still gets a one-line message, not a traceback).

Exit codes (documented in the README):
    0  success
    1  a check failed: lint findings, a verification mismatch
    2  usage error: bad arguments, a bad input file
    3  provider or network error (vast.ai API, ssh, rsync)
    4  refused by the Teardown Iron Law: evidence missing, approval absent or wrong
    5  `rgt poll --until done`: the timeout passed before the job finished
    6  `rgt run` stopped relaunching: the budget is spent, or no offer fits the constraints

A full local disk is a usage error (2), like a LOCAL_DIR that cannot hold the copy: the user's
environment, not a bug in rgt and not the provider's failure.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rgt.nextstep import Steps

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_PROVIDER = 3
EXIT_REFUSED = 4
EXIT_NOT_DONE = 5
EXIT_RUN_STOPPED = 6


class RgtError(Exception):
    """Base class: a user-facing error with a one-line message and an exit code."""

    exit_code: int = EXIT_USAGE

    def __init__(
        self, message: str, *, exit_code: int | None = None, step: Steps | None = None
    ) -> None:
        # `step`: the next step the message names at its `{next}` (or the steps it names at
        # `{<name>}`, rgt.nextstep): the CLI shows each as a command, the MCP server as a tool
        # call (`for_tool`).
        if step is not None:
            from rgt.nextstep import render

            self.for_tool = render(message, step, tool=True)
            message = render(message, step)
        else:
            self.for_tool = message
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        """The one-line message shown to the user."""
        return str(self)


class UsageError(RgtError):
    """Bad arguments or a bad input file (names the file, field, value and what is allowed)."""

    exit_code = EXIT_USAGE


class CheckFailed(RgtError):
    """A check ran and found a problem (lint findings, verification mismatch)."""

    exit_code = EXIT_CHECK_FAILED


class ProviderError(RgtError):
    """The platform API, ssh or rsync failed after bounded retries."""

    exit_code = EXIT_PROVIDER


class Refused(RgtError):
    """The Iron Law refused an irreversible action; the message lists the missing evidence."""

    exit_code = EXIT_REFUSED


class Declined(Refused):
    """A human asked to approve a discard said no (nothing was approved; not a wrong answer)."""


class RunStopped(RgtError):
    """`rgt run` will not open another attempt: the budget is spent, or no offer satisfies the
    job's constraints and the price cap (the lost machines excluded). `status`: the run's
    status it leaves (rgt.runs.RUN_STATUSES: "budget-exhausted" or "no-offer")."""

    exit_code = EXIT_RUN_STOPPED

    def __init__(self, message: str, *, status: str = "budget-exhausted") -> None:
        super().__init__(message)
        self.status = status


class LocalDiskFull(UsageError):
    """A local disk or quota is full (ENOSPC, EDQUOT): the message names the path, says "no space
    left" and what to do. Retrying cannot help, so nothing retries it."""


# "No space left on device" and "Disk quota exceeded": one remedy, make room.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError saying the disk or the user's quota is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS
