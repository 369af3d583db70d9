"""Shared by the Iron Law commands: the provider and profile for a --platform flag."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_PLATFORM = "vastai"


def add_platform_argument(parser: argparse.ArgumentParser) -> None:
    """--platform NAME (default vastai, or the profile an attached box was attached with)."""
    parser.add_argument(
        "--platform",
        default=None,
        help=(
            "the platform profile and provider to use (default: vastai; for a box attached with "
            "`rgt attach`, the profile it was attached with)"
        ),
    )


def check_instance_id(platform: str | None, instance: str) -> None:
    """A typo in a vast.ai id is a usage error (exit 2) before any request, not a gate refusal;
    an attached box's local id (`ssh-1`) is checked against the ledger by `open_platform`."""
    from rgt.providers.ssh import is_attached_id

    if platform in (None, DEFAULT_PLATFORM) and not is_attached_id(instance):
        from rgt.providers.vastai import vast_id

        vast_id(instance)


def open_platform(name: str | None, instance: str | None = None, **provider_options: Any) -> Any:
    """(provider, profile) for a platform name; the API key is read by the provider itself.

    With `instance`, an attached box's local id (`ssh-1`) selects the profile it was attached
    with (a --platform that names another platform is a usage error). `provider_options` go to
    the ssh provider (e.g. confirm_meter_stop). Imported here, not at module level: `rgt --help`
    must not load the provider SDKs."""
    from rgt.profile import load_profile
    from rgt.providers import get_provider
    from rgt.providers.ssh import SshProvider, is_attached_id

    if instance is not None and is_attached_id(instance):
        from rgt.errors import UsageError
        from rgt.ledger import Ledger

        with Ledger.open() as ledger:
            box = ledger.attached_box(instance)
        if box is None:
            raise UsageError(
                f"instance {instance}: no box is attached under this id (see `rgt ledger`); "
                "attach one with `rgt attach PROFILE user@host[:port]`"
            )
        profile = load_profile(box.profile)
        if name is not None and name not in (box.profile, profile.platform, profile.name):
            raise UsageError(
                f"instance {instance} was attached with profile {box.profile}, not --platform "
                f"{name}; leave --platform out"
            )
        return SshProvider(profile, **provider_options), profile
    platform = name or DEFAULT_PLATFORM
    profile = load_profile(platform)
    if platform == DEFAULT_PLATFORM:
        return get_provider(platform), profile
    return SshProvider(profile, **provider_options), profile
