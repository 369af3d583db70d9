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
    """(provider, profile) for a platform name; the API key is read by the provider itself."""
    import importlib

    # Looked up by name: the provider registry and the profile loader live in other modules.
    providers = importlib.import_module("rgt.providers")
    profiles = importlib.import_module("rgt.profile")
    return providers.get_provider(name), profiles.load_profile(name)
