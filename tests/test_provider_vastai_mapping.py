"""VastProvider's pure parts: state mapping, ssh endpoint choice, offer filters, key lookup,
and the create checks that refuse before any request is sent (no server needed: a request
would fail to connect to the closed port these tests point at)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.errors import UsageError
from rgt.providers import get_provider
from rgt.providers.base import OfferQuery
from rgt.providers.vastai import (
    DEFAULT_API_URL,
    VastProvider,
    _offer,
    _offer_filters,
    _offer_matches,
    _safe_row,
    _ssh_endpoint,
    api_key_from_environment,
    instance_state,
    run_label,
)

CLOSED_URL = "http://127.0.0.1:9"  # discard port: nothing listens, any request would fail


def row(actual: Any, intended: Any = "running", cur: Any = "running", **extra: Any) -> dict:
    return {"actual_status": actual, "intended_status": intended, "cur_state": cur, **extra}


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        (None, "gone"),
        (row(None), "provisioning"),
        (row("created"), "provisioning"),
        (row("loading", status_msg="Pulling image"), "loading"),
        (row("running"), "running"),
        (row("stopped", "stopped", "stopped"), "stopped"),
        (row("exited", "stopped", "stopped"), "stopped"),
        (row("stopped", "running"), "scheduling"),  # VAST3: waiting for its GPU
        (row("scheduling"), "scheduling"),
        (row("stopped", "running", is_bid=True), "paused"),  # outbid interruptible
        (row("stopped", "running", status_msg="outbid by a higher bid"), "paused"),
        (row("frozen"), "paused"),
        (row("exited", "running"), "exited"),  # the container died on its own
        (row("offline"), "offline"),  # VAST7
        (row("running", cur="unloaded"), "gone"),
        (row("destroyed"), "gone"),
        (row("weird-new-status"), "unknown"),
    ],
)
def test_instance_state(fields: dict | None, state: str) -> None:
    assert instance_state(fields) == state


def test_ssh_endpoint_prefers_the_direct_port() -> None:
    direct = {
        "public_ipaddr": "203.0.113.7",
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40001"}]},
        "ssh_host": "ssh5.vast.ai",
        "ssh_port": 30014,
    }
    assert _ssh_endpoint(direct) == ("203.0.113.7", 40001)
    assert _ssh_endpoint({"ssh_host": "127.0.0.1", "ssh_port": 2222, "ports": {}}) == (
        "127.0.0.1",
        2222,
    )
    assert _ssh_endpoint({"ports": None}) == (None, None)


def test_rows_lose_secret_fields_and_env_values() -> None:
    safe = _safe_row(
        {"id": 1, "instance_api_key": "k" * 10, "onstart": "x", "extra_env": {"HF_TOKEN": "v"}}
    )
    assert safe == {"id": 1, "extra_env": {"HF_TOKEN": "***"}}


def test_offer_filters_have_safe_defaults() -> None:
    filters = _offer_filters(OfferQuery(gpu_name="RTX_4090", max_price_per_hour=0.5))
    assert filters["verified"] == {"eq": True}
    assert filters["rentable"] == {"eq": True}
    assert filters["direct_port_count"] == {"gte": 1}
    assert filters["reliability"] == {"gte": 0.98}
    assert filters["gpu_name"] == {"eq": "RTX 4090"}
    assert filters["dph_total"] == {"lte": 0.5}
    bid = _offer_filters(OfferQuery(interruptible=True, max_price_per_hour=0.2))
    assert bid["min_bid"] == {"lte": 0.2} and "dph_total" not in bid


def test_offers_failing_a_filter_are_dropped_even_if_the_api_returned_them() -> None:
    base = {
        "id": 1,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "dph_total": 0.4,
        "reliability": 0.995,
        "verified": True,
        "direct_port_count": 2,
        "rentable": True,
    }
    query = OfferQuery()
    assert _offer_matches(_offer(base), query)
    for bad in (
        {"verified": False},
        {"direct_port_count": 0},
        {"reliability": 0.9},
        {"num_gpus": 2},
        {"rentable": False},
    ):
        assert not _offer_matches(_offer({**base, **bad}), query), bad
    assert not _offer_matches(_offer(base), OfferQuery(max_price_per_hour=0.3))
    assert not _offer_matches(_offer(base), OfferQuery(gpu_name="A100"))


def test_api_key_comes_from_env_then_xdg_file_then_legacy_file(
    monkeypatch: pytest.MonkeyPatch, isolated_user: Path
) -> None:
    assert api_key_from_environment() == CANARY_API_KEY
    monkeypatch.delenv("VAST_API_KEY")
    with pytest.raises(UsageError, match="VAST_API_KEY"):
        api_key_from_environment()
    legacy = isolated_user / ".vast_api_key"
    legacy.write_text("legacy-key-123456\n")
    assert api_key_from_environment() == "legacy-key-123456"
    xdg = isolated_user / ".config" / "vastai" / "vast_api_key"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("xdg-key-123456")
    assert api_key_from_environment() == "xdg-key-123456"


def test_url_from_argument_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert VastProvider().api_url == DEFAULT_API_URL
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:5000/")
    assert VastProvider().api_url == "http://127.0.0.1:5000"  # no `//api/v0` requests
    assert VastProvider("http://h:1").api_url == "http://h:1"
    assert get_provider("vastai").platform == "vastai"
    # Every other profile's boxes are attached and reached over ssh (rgt.providers.ssh).
    assert type(get_provider("lambda")).__name__ == "SshProvider"
    with pytest.raises(UsageError, match=r"has no provider.*API providers: vastai"):
        get_provider("no-such-platform")


def test_provider_repr_and_state_hold_no_key() -> None:
    provider = VastProvider(CLOSED_URL)
    assert_no_canary(repr(provider), str(vars(provider).keys()))


def _create(provider: VastProvider, **overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "image": "pytorch/pytorch",
        "disk_gb": 20,
        "onstart": "echo hi",
        "label": run_label("r1"),
    }
    arguments.update(overrides)
    provider.create("77", **arguments)


def test_interruptible_without_a_bid_is_refused_before_any_request() -> None:
    provider = VastProvider(CLOSED_URL)
    with pytest.raises(UsageError, match="bid"):
        _create(provider, interruptible=True)
    with pytest.raises(UsageError, match="bid"):
        _create(provider, interruptible=True, bid_per_hour=0)
    with pytest.raises(UsageError, match="only for interruptible"):
        _create(provider, bid_per_hour=0.2)


def test_create_needs_an_rgt_label_and_every_named_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = VastProvider(CLOSED_URL)
    with pytest.raises(UsageError, match="rgt:<run_id>"):
        _create(provider, label="my-box")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UsageError, match="HF_TOKEN") as caught:
        _create(provider, secret_env=["HF_TOKEN"])
    assert "\n" not in str(caught.value)
