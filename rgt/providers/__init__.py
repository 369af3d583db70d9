"""Providers: one module per platform behind the small interface in `rgt.providers.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rgt.providers.base import Provider

# Platform name (the profile name) -> the module that implements it. Imported lazily: a
# provider pulls in its platform SDK, which commands like `rgt lint` must not pay for.
PLATFORMS = ("vastai",)


def get_provider(platform: str) -> Provider:
    """The provider for `platform` (a profile name such as "vastai"), configured from the
    environment (API URL and key); raises UsageError for an unknown platform."""
    from rgt.errors import UsageError

    if platform == "vastai":
        from rgt.providers.vastai import VastProvider

        return VastProvider()
    raise UsageError(f"platform {platform!r} has no provider; supported: {', '.join(PLATFORMS)}")
