"""Shared by the Iron Law commands: the provider and profile for a --platform flag."""

from __future__ import annotations

import argparse
from typing import Any


def add_platform_argument(parser: argparse.ArgumentParser) -> None:
    """--platform NAME (default vastai): which provider and profile to use."""
    parser.add_argument(
        "--platform",
        default="vastai",
        help="the platform profile and provider to use (default: vastai)",
    )


def open_platform(name: str) -> tuple[Any, Any]:
    """(provider, profile) for a platform name; the API key is read by the provider itself.

    Imported here, not at module level: `rgt --help` must not load the provider SDKs."""
    from rgt.profile import load_profile
    from rgt.providers import get_provider

    return get_provider(name), load_profile(name)
