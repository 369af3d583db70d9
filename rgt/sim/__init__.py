"""rgt.sim: a local emulator of the vast.ai REST API for rehearsing without money or internet.

`from rgt.sim import Emulator` (see rgt.sim.emulator); `rgt sim serve` runs it standalone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rgt.sim.emulator import Emulator

__all__ = ["Emulator"]


def __getattr__(name: str) -> Any:
    # Lazy: `import rgt.sim.ssh` (or filters) must not pull in the HTTP server.
    if name == "Emulator":
        from rgt.sim.emulator import Emulator

        return Emulator
    raise AttributeError(name)
