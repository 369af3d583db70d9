"""Providers: one module per platform behind the small interface in `rgt.providers.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rgt.profile import Profile
    from rgt.providers.base import Provider

# Platform name (the profile name) -> the module that implements it. Imported lazily: a
# provider pulls in its platform SDK, which commands like `rgt lint` must not pay for.
# API providers: rgt rents and ends the box itself.
PLATFORMS = ("vastai",)
# Every other bundled profile's boxes are attached (`rgt attach`) and reached over ssh
# (rgt.providers.ssh); their meter stop is a human's action, confirmed after the gate.
SSH_PROVIDER = "ssh"


def get_provider(platform: str, profile: Profile | None = None) -> Provider:
    """The provider for `platform` (a profile name such as "vastai"), configured from the
    environment (API URL and key): the vast.ai API, or for any other profile the ssh provider of
    its attached boxes (`profile` when given: a variant or a profile file). Raises UsageError for
    an unknown platform."""
    from rgt.errors import UsageError

    if platform == "vastai":
        from rgt.providers.vastai import VastProvider

        return VastProvider()
    from rgt.profile import load_profile
    from rgt.providers.ssh import SshProvider

    try:
        chosen = profile if profile is not None else load_profile(platform)
    except UsageError as exc:
        raise UsageError(
            f"platform {platform!r} has no provider: {exc.message}; API providers: "
            f"{', '.join(PLATFORMS)}; any other profile's boxes are attached over ssh"
        ) from None
    return SshProvider(chosen)
