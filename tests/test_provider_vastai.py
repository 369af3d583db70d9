"""VastProvider end to end: the real `vastai` SDK against the rgt.sim emulator (real HTTP, real
instance processes, real sshd + rsync for copies). Faults are injected by the emulator."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.errors import ProviderError, UsageError
from rgt.providers.base import CopyProgress, Instance, OfferQuery
from rgt.providers.retry import RetryPolicy
from rgt.providers.rsync import CopySettings
from rgt.providers.vastai import VastProvider, run_label
from tests.copy_helpers import bytes_on_disk, make_result_tree, wait_for_cut_file
from tests.procs import rsync_processes

# Fast, still bounded: the emulator answers in milliseconds.
FAST_RETRY = RetryPolicy(attempts=5, total_seconds=20, first_backoff=0.05, max_backoff=0.2)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def provider(emulator: Any) -> VastProvider:
    return VastProvider(retry=FAST_RETRY)


def wait_for(
    provider: VastProvider, instance_id: str, states: set[str], timeout: float = 30
) -> Instance:
    """Poll show() until the instance is in one of `states`."""
    deadline = time.monotonic() + timeout
    while True:
        instance = provider.show(instance_id)
        if instance.state in states:
            return instance
        if time.monotonic() > deadline:
            raise AssertionError(f"instance {instance_id} stuck in {instance.state}")
        time.sleep(0.1)


def rent(provider: VastProvider, run_id: str, **overrides: Any) -> Instance:
    offer = provider.search_offers(OfferQuery())[0]
    arguments: dict[str, Any] = {
        "image": "pytorch/pytorch",
        "disk_gb": 10,
        "onstart": "echo started-$CONTAINER_ID\nsleep 600\n",
        "label": run_label(run_id),
    }
    arguments.update(overrides)
    return provider.create(offer.id, **arguments)


def labelled(provider: VastProvider, run_id: str) -> list[Instance]:
    return [i for i in provider.list_instances() if i.label == run_label(run_id)]


# -- search ------------------------------------------------------------------------------------


def test_search_defaults_keep_only_verified_reachable_reliable_offers_cheapest_first(
    provider: VastProvider,
) -> None:
    everything = provider._sdk.search_offers(query={}, no_default=True, limit=1000)
    offers = provider.search_offers(OfferQuery(limit=1000))
    assert offers, "the emulated marketplace has no offer passing the defaults"
    # The marketplace holds offers the defaults must exclude, so the filter is exercised.
    assert len(offers) < len(everything)
    assert all(o.verified and o.direct_port_count >= 1 and o.reliability >= 0.98 for o in offers)
    assert all(o.num_gpus == 1 for o in offers)
    prices = [o.dph_total for o in offers]
    assert prices == sorted(prices)


def test_search_filters_by_gpu_and_price_and_interruptible_sorts_by_bid(
    provider: VastProvider,
) -> None:
    some = provider.search_offers(OfferQuery(limit=1000))
    gpu = some[0].gpu_name
    by_gpu = provider.search_offers(OfferQuery(gpu_name=gpu.replace(" ", "_"), limit=1000))
    assert by_gpu and {o.gpu_name for o in by_gpu} == {gpu}
    ceiling = sorted(o.dph_total for o in some)[len(some) // 2]
    cheap = provider.search_offers(OfferQuery(max_price_per_hour=ceiling, limit=1000))
    assert cheap and all(o.dph_total <= ceiling for o in cheap)
    bids = provider.search_offers(OfferQuery(interruptible=True, limit=1000))
    assert [o.min_bid for o in bids] == sorted(o.min_bid for o in bids)
    assert len(provider.search_offers(OfferQuery(limit=3))) <= 3


# -- lifecycle ---------------------------------------------------------------------------------


def test_create_show_stop_start_destroy(provider: VastProvider) -> None:
    created = rent(provider, "life")
    assert created.state in {"provisioning", "loading", "running"}
    assert created.label == run_label("life")
    running = wait_for(provider, created.id, {"running"})
    assert running.ssh_host and running.ssh_port
    assert any(i.id == created.id for i in provider.list_instances())

    provider.stop(created.id)
    stopped = wait_for(provider, created.id, {"stopped"})
    assert stopped.intended_status == "stopped"

    provider.start(created.id)
    wait_for(provider, created.id, {"running"})

    provider.destroy(created.id)
    assert wait_for(provider, created.id, {"gone"}).state == "gone"
    assert all(i.id != created.id for i in provider.list_instances())
    with pytest.raises(ProviderError) as caught:
        provider.stop(created.id)
    assert "\n" not in str(caught.value)


def test_interruptible_create_with_a_bid_and_refusal_without(provider: VastProvider) -> None:
    with pytest.raises(UsageError, match="bid"):
        rent(provider, "spot", interruptible=True)
    assert labelled(provider, "spot") == []
    offer = provider.search_offers(OfferQuery(interruptible=True))[0]
    created = provider.create(
        offer.id,
        image="pytorch/pytorch",
        disk_gb=10,
        onstart="sleep 600",
        label=run_label("spot"),
        interruptible=True,
        bid_per_hour=max(offer.min_bid, 0.01) * 1.5,
    )
    assert created.interruptible is True


def test_logs_return_the_onstart_output(provider: VastProvider) -> None:
    created = rent(provider, "logs")
    wait_for(provider, created.id, {"running"})
    deadline = time.monotonic() + 20
    while f"started-{created.id}" not in provider.logs(created.id, tail=50):
        assert time.monotonic() < deadline, "onstart output never reached the logs"
        time.sleep(0.2)


def test_secret_env_values_reach_the_box_but_no_returned_value(
    provider: VastProvider, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    monkeypatch.setenv("RGT_TEST_SECRET", "s3cr3t-value-for-the-box")
    created = rent(
        provider,
        "secret",
        onstart='printf %s "$RGT_TEST_SECRET" > "${RGT_BOX_ROOT:-}/secret.txt"\nsleep 600\n',
        secret_env=["RGT_TEST_SECRET"],
        env={"PLAIN": "1"},
    )
    wait_for(provider, created.id, {"running"})
    secret_file = Path(emulator.instance_disk(created.id)) / "secret.txt"
    deadline = time.monotonic() + 20
    while not secret_file.exists() or not secret_file.read_text():
        assert time.monotonic() < deadline, "onstart never wrote the secret"
        time.sleep(0.1)
    assert secret_file.read_text() == "s3cr3t-value-for-the-box"
    shown = provider.show(created.id)
    assert "s3cr3t-value-for-the-box" not in repr(shown) + repr(shown.raw)


# -- faults and idempotency --------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_are_retried_and_create_rents_exactly_one(
    provider: VastProvider, emulator: Any, status: int
) -> None:
    offer = provider.search_offers(OfferQuery())[0]
    puts_before = emulator.request_count("PUT", "/api/v0/asks/*")
    # Let the label lookup through; then the create and the look-ups that precede each re-send
    # (for a 429 too: vast.ai can rate-limit a create it carried out) meet three failures.
    emulator.fail_next(3, status=status, retry_after=0.1 if status == 429 else None, skip=1)
    created = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("retry")
    )
    puts = emulator.request_count("PUT", "/api/v0/asks/*") - puts_before
    assert puts >= 2
    assert [i.id for i in labelled(provider, "retry")] == [created.id]
    # A second create with the same label (a retried tool call) returns the same instance.
    again = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("retry")
    )
    assert again.id == created.id
    assert len(labelled(provider, "retry")) == 1


def test_concurrent_creates_of_one_label_rent_one_instance(provider: VastProvider) -> None:
    offer = provider.search_offers(OfferQuery())[0]
    ids: list[str] = []

    def launch() -> None:
        created = VastProvider(retry=FAST_RETRY).create(
            offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("twice")
        )
        ids.append(created.id)

    threads = [threading.Thread(target=launch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 3 and len(set(ids)) == 1
    assert len(labelled(provider, "twice")) == 1


def test_create_whose_answer_was_lost_does_not_rent_twice(
    provider: VastProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create request reaches the emulator and rents the box, but the client never sees
    the answer (a dropped connection). The provider must find the box by its label."""
    original: Callable[..., Any] = provider._sdk.create_instance
    sent = []

    def create_then_lose_the_answer(**kwargs: Any) -> Any:
        sent.append(original(**kwargs))  # the real request, really served
        raise requests.ConnectionError("connection reset by peer (answer lost)")

    monkeypatch.setattr(provider._sdk, "create_instance", create_then_lose_the_answer)
    created = rent(provider, "lost")
    assert len(sent) == 1
    assert [i.id for i in labelled(provider, "lost")] == [created.id]


def test_server_side_commit_with_5xx_answer_does_not_rent_twice(
    provider: VastProvider, emulator: Any
) -> None:
    offer = provider.search_offers(OfferQuery())[0]
    provider.list_instances()
    # Let the label lookup through, then commit the create but answer 502.
    puts_before = emulator.request_count("PUT", "/api/v0/asks/*")
    lists_before = emulator.request_count("GET", "/api/v1/instances/")
    emulator.fail_next(1, status=502, after_commit=True, skip=1)
    created = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("commit")
    )
    # One create sent; the 502 made rgt look again (a second list) and find the box.
    assert emulator.request_count("PUT", "/api/v0/asks/*") - puts_before == 1
    assert emulator.request_count("GET", "/api/v1/instances/") - lists_before == 2
    assert [i.id for i in labelled(provider, "commit")] == [created.id]


def test_a_429_answered_after_the_create_was_done_does_not_rent_a_second_box(
    provider: VastProvider, emulator: Any
) -> None:
    """vast.ai rate-limits after doing the work: a 429 is no proof that nothing was rented, so
    the label is looked up before the create is sent again."""
    offer = provider.search_offers(OfferQuery())[0]
    puts_before = emulator.request_count("PUT", "/api/v0/asks/*")
    emulator.fail_next(
        1, status=429, retry_after=0.05, after_commit=True, method="PUT", path="/api/v0/asks/*"
    )
    created = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("late429")
    )
    assert [i.id for i in labelled(provider, "late429")] == [created.id]
    assert emulator.request_count("PUT", "/api/v0/asks/*") - puts_before == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 0.05},
        {"status": 503},
        {"status": 400},  # not retried: no second create, so no second look-up either
        {"cut": "connection"},
        {"cut": "body"},
    ],
    ids=["429", "503", "400", "cut-connection", "cut-body"],
)
def test_the_label_is_looked_up_before_every_create_retry(
    provider: VastProvider, emulator: Any, fault: dict[str, Any]
) -> None:
    offer = provider.search_offers(OfferQuery())[0]
    puts_before = emulator.request_count("PUT", "/api/v0/asks/*")
    lists_before = emulator.request_count("GET", "/api/v1/instances/")
    if fault.get("status") == 400:
        # The emulator injects only statuses a flaky API sends; a 400 is the real refusal of
        # an offer id that does not exist.
        with pytest.raises(ProviderError, match="no_such_ask"):
            provider.create(
                "999999999", image="img", disk_gb=10, onstart="true", label=run_label("every")
            )
        assert emulator.request_count("PUT", "/api/v0/asks/*") - puts_before == 1
        assert emulator.request_count("GET", "/api/v1/instances/") - lists_before == 1
        assert labelled(provider, "every") == []
        return
    cut = fault.get("cut")
    # A cut answer is one whose work was done: the first create rents the box.
    emulator.fail_next(2 if cut is None else 1, **fault, method="PUT", path="/api/v0/asks/*")
    created = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("every")
    )
    puts = emulator.request_count("PUT", "/api/v0/asks/*") - puts_before
    lists = emulator.request_count("GET", "/api/v1/instances/") - lists_before
    assert [i.id for i in labelled(provider, "every")] == [created.id]
    if cut is None:
        # Two failed creates, the third rents: one look-up before the first create and one
        # before each of the two re-sends.
        assert (puts, lists) == (3, 3)
    else:
        # The look-up after the cut answer finds the box: nothing is sent again.
        assert (puts, lists) == (1, 2)


def test_retries_are_bounded_and_the_error_is_one_clean_line(
    provider: VastProvider, emulator: Any
) -> None:
    emulator.fail_next(50, status=503)
    before = emulator.request_count()
    with pytest.raises(ProviderError) as caught:
        provider.list_instances()
    # Bounded by count, not by this machine's speed: exactly the policy's attempts were made.
    assert emulator.request_count() - before == FAST_RETRY.attempts
    message = str(caught.value)
    assert "after 5 attempts" in message and "503" in message and "\n" not in message
    emulator.fail_next(0)


def test_a_long_retry_after_fails_fast_with_the_wait_named(
    provider: VastProvider, emulator: Any
) -> None:
    emulator.fail_next(1, status=429, retry_after=3600)
    before = emulator.request_count()
    with pytest.raises(ProviderError, match="3600"):
        provider.list_instances()
    assert emulator.request_count() - before == 1  # gave up at once: no wait, no second try


@pytest.mark.parametrize("cut", ["connection", "body"])
def test_a_cut_off_answer_on_a_safe_read_is_retried(
    provider: VastProvider, emulator: Any, cut: str
) -> None:
    """show, list, search and logs change nothing: an answer cut off mid-body (or a 200 whose
    JSON is cut short) is retried like a 5xx, not reported as a failure."""
    created = rent(provider, f"cut-{cut}")
    wait_for(provider, created.id, {"running"})
    calls: list[tuple[str, str, Callable[[], Any]]] = [
        ("GET", f"/api/v0/instances/{created.id}/", lambda: provider.show(created.id)),
        ("GET", "/api/v1/instances/", provider.list_instances),
        ("POST", "/api/v0/bundles/", lambda: provider.search_offers(OfferQuery())),
        (
            "PUT",
            f"/api/v0/instances/request_logs/{created.id}/",
            lambda: provider.logs(created.id),
        ),
    ]
    for method, path, call in calls:
        before = emulator.request_count(method, path)
        emulator.fail_next(2, cut=cut, method=method, path=path)
        answer = call()
        assert answer is not None
        assert emulator.request_count(method, path) - before == 3, path
    assert provider.show(created.id).state == "running"


def test_one_404_on_show_does_not_make_a_running_box_gone(
    provider: VastProvider, emulator: Any
) -> None:
    """A transient 404 (with the API's JSON body) on show of a box that runs: the list
    endpoint and a second show are asked before anything says "gone"."""
    created = rent(provider, "flaky404")
    wait_for(provider, created.id, {"running"})
    show_path = f"/api/v0/instances/{created.id}/"
    lists_before = emulator.request_count("GET", "/api/v1/instances/")
    emulator.fail_next(1, status=404, method="GET", path=show_path)
    seen = provider.show(created.id)
    assert seen.state == "running" and seen.id == created.id
    assert emulator.request_count("GET", "/api/v1/instances/") == lists_before + 1
    assert emulator.instance_disk(created.id).is_dir()
    # A box that really is destroyed is still reported gone (and the list was asked).
    provider.destroy(created.id)
    lists_before = emulator.request_count("GET", "/api/v1/instances/")
    assert wait_for(provider, created.id, {"gone"}).state == "gone"
    assert emulator.request_count("GET", "/api/v1/instances/") > lists_before


def test_list_follows_every_page(provider: VastProvider, emulator: Any) -> None:
    count = 30  # more than the SDK's page size of 25
    for index in range(count):
        # A rental takes its GPU: search again each time, as offers get used up.
        offer = provider.search_offers(OfferQuery(min_reliability=0, verified_only=False))[0]
        provider.create(
            offer.id, image="img", disk_gb=1, onstart="true", label=run_label(f"page{index}")
        )
    labels = {i.label for i in provider.list_instances()}
    assert {run_label(f"page{index}") for index in range(count)} <= labels


# -- copy --------------------------------------------------------------------------------------


def test_copy_off_an_instance_resumes_after_a_kill_without_resending(
    emulator: Any, tmp_path: Path
) -> None:
    provider = VastProvider(
        retry=FAST_RETRY, copy=CopySettings(bwlimit_kbps=6000, first_backoff=0.1)
    )
    created = rent(provider, "copy")
    wait_for(provider, created.id, {"running"})
    workspace = Path(emulator.instance_disk(created.id)) / "workspace"
    size, files = 1_500_000, 6
    contents = make_result_tree(workspace, files, size)
    results = workspace / "results"
    (results / "PULL_MANIFEST.json").write_text('{"run_id": "copy"}')
    assert provider.read_remote_file(created.id, "/workspace/results/PULL_MANIFEST.json") == (
        b'{"run_id": "copy"}'
    )

    local = tmp_path / "pulled"
    total = size * files
    present_at_kill: list[int] = []

    def kill_midway(tick: CopyProgress) -> None:
        # Once ~40% arrived and the next file is under way, SIGKILL the local rsync.
        if present_at_kill or tick.bytes_done < 0.4 * total:
            return
        wait_for_cut_file(local)
        present_at_kill.append(bytes_on_disk(local))
        for pid in rsync_processes():
            os.kill(pid, signal.SIGKILL)

    result = provider.copy_from(created.id, "/workspace/results", local, progress=kill_midway)
    assert present_at_kill and present_at_kill[0] >= 2 * size
    assert result.attempts == 2
    assert result.transport in ("rsync+ssh", "rsync over RGT_SSH_COMMAND")
    # Content bytes over both attempts: the killed attempt's (counted to its last progress
    # tick, so at most what was present) plus the resumed one's. Had the resume re-sent what
    # was present, this would exceed the total by that much.
    assert result.bytes_transferred <= total + 64 * 1024
    for relative, data in contents.items():
        assert (local / relative).read_bytes() == data
    # The bytes that left the box through its sshd were billed as bandwidth out.
    deadline = time.monotonic() + 10
    while emulator.meter(created.id)["bytes_out"] < result.bytes_transferred:
        assert time.monotonic() < deadline, emulator.meter(created.id)
        time.sleep(0.2)
    assert emulator.meter(created.id)["bandwidth"] > 0


def test_copy_from_a_stopped_instance_is_refused_clearly(provider: VastProvider) -> None:
    created = rent(provider, "stopped-copy")
    wait_for(provider, created.id, {"running"})
    provider.stop(created.id)
    wait_for(provider, created.id, {"stopped"})
    with pytest.raises(ProviderError, match="stopped"):
        provider.copy_from(created.id, "/workspace", Path("/tmp/never"))


# -- the canary key ------------------------------------------------------------------------------


def test_the_api_key_never_leaks(
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert os.environ["VAST_API_KEY"] == CANARY_API_KEY
    monkeypatch.setenv("RGT_VAST_DEBUG", "1")  # the SDK prints every request with its header
    caplog.set_level(logging.DEBUG)
    provider = VastProvider(retry=FAST_RETRY)
    seen: list[str] = [repr(provider)]
    created = rent(provider, "canary")
    seen += [repr(created), repr(created.raw)]
    running = wait_for(provider, created.id, {"running"})
    seen += [repr(running.raw), repr(provider.list_instances())]
    seen += [repr(provider.search_offers(OfferQuery()))]
    seen.append(provider.logs(created.id))
    emulator.fail_next(50, status=500)
    for action in (lambda: provider.show(created.id), lambda: provider.stop(created.id)):
        with pytest.raises(ProviderError) as caught:
            action()
        seen += [str(caught.value), repr(caught.value.__context__), repr(caught.value.__cause__)]
    emulator.fail_next(0)
    with pytest.raises(ProviderError) as refused:
        provider.stop("999999")
    seen.append(str(refused.value))
    # A wrong key: the 401 path must not echo it either.
    monkeypatch.setenv("VAST_API_KEY", CANARY_API_KEY[::-1])
    with pytest.raises(ProviderError, match="401") as unauthorised:
        VastProvider(retry=FAST_RETRY).list_instances()
    seen.append(str(unauthorised.value))
    out, err = capfd.readouterr()
    assert "Authorization" in caplog.text or "Bearer" in caplog.text  # debug output was logged
    assert_no_canary(out, err, caplog.text, *seen, *(r.getMessage() for r in caplog.records))
    assert CANARY_API_KEY[::-1] not in caplog.text + out + err + "".join(seen)


def _packed(script: str) -> str:
    """`script` as rgt ships a boot hook over the size limit: gzip+base64 in a tiny wrapper."""
    import base64
    import gzip

    payload = base64.b64encode(gzip.compress(script.encode(), mtime=0)).decode()
    return f"printf '%s' '{payload}' | base64 -d | gunzip | bash\n"


def _b64_file(content: str) -> str:
    """A job file shipped as rgt's templates ship one that does not end in a newline."""
    import base64

    word = base64.b64encode(content.encode()).decode()
    return f"printf '%s' '{word}' | base64 -d >/workspace/job/conf.txt\nsleep 600\n"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("command", "onstart"),
        ("b64-file", "onstart"),
        ("packed-onstart", "onstart"),
        ("image", "image"),
        ("env-substring", "env PLAIN"),
        ("secret-in-command", "onstart"),
        ("secret-in-env", "env OTHER"),
    ],
)
def test_a_secret_value_inside_the_job_text_is_refused_and_nothing_is_rented(
    provider: VastProvider,
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    where: str,
    field: str,
) -> None:
    """The API key's value (or a secret_env value) pasted into the job's command, a file, the
    image or an env value would reach the box inside the create: refused, by field name."""
    secret = "wandb-7c1d9e3f5a2b4c6d8e0f"
    monkeypatch.setenv("RGT_TEST_SECRET", secret)
    caplog.set_level(logging.DEBUG)
    key = CANARY_API_KEY
    arguments: dict[str, Any] = {
        "command": {"onstart": f"export K={key}\nsleep 600\n"},
        "b64-file": {"onstart": _b64_file(f"key = {key}")},
        "packed-onstart": {"onstart": _packed(f"echo start\ncurl -H 'X: {key}' x\n")},
        "image": {"image": f"registry.example/{key}:latest"},
        "env-substring": {"env": {"PLAIN": f"Bearer {key}"}},
        "secret-in-command": {
            "onstart": f"login {secret}\nsleep 600\n",
            "secret_env": ["RGT_TEST_SECRET"],
        },
        "secret-in-env": {
            "env": {"OTHER": f"token={secret}"},
            "secret_env": ["RGT_TEST_SECRET"],
        },
    }[where]
    puts_before = emulator.request_count("PUT", "/api/v0/asks/*")
    with pytest.raises(UsageError) as caught:
        rent(provider, f"leak-{where}", **arguments)
    message = str(caught.value)
    assert message.startswith(field + ":") and "nothing was rented" in message
    assert emulator.request_count("PUT", "/api/v0/asks/*") == puts_before
    assert labelled(provider, f"leak-{where}") == [] and emulator.instance_ids() == []
    out, err = capfd.readouterr()
    assert_no_canary(message, out, err, caplog.text)
    assert secret not in message + out + err + caplog.text


def test_a_secret_env_value_is_still_sent_as_its_own_env_var(
    provider: VastProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal looks for secrets OUTSIDE their own env var: passing a secret by name is
    how it is meant to reach the box, and the onstart may name the variable."""
    monkeypatch.setenv("RGT_TEST_SECRET", "wandb-7c1d9e3f5a2b4c6d8e0f")
    created = rent(
        provider,
        "by-name",
        onstart='test -n "$RGT_TEST_SECRET"\nsleep 600\n',
        secret_env=["RGT_TEST_SECRET"],
    )
    assert [i.id for i in labelled(provider, "by-name")] == [created.id]


# -- interplay with the stock vastai CLI -----------------------------------------------------------


def run_vastai(*args: str) -> subprocess.CompletedProcess[str]:
    """The stock `vastai` CLI from this venv, at the emulator (VAST_URL), with the isolated
    HOME and the canary key the autouse fixture planted."""
    vastai = Path(sys.executable).parent / "vastai"
    return subprocess.run(
        [str(vastai), *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_an_instance_rented_with_the_stock_cli_is_found_by_label_not_rented_again(
    provider: VastProvider,
) -> None:
    offer = provider.search_offers(OfferQuery())[0]
    rented = run_vastai(
        "create",
        "instance",
        offer.id,
        "--image",
        "img",
        "--disk",
        "10",
        "--ssh",
        "--direct",
        "--onstart-cmd",
        "sleep 600",
        "--label",
        run_label("cli"),
        "--raw",
    )
    assert rented.returncode == 0, rented.stderr
    cli_id = str(json.loads(rented.stdout)["new_contract"])
    assert_no_canary(rented.stdout, rented.stderr)
    created = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("cli")
    )
    assert created.id == cli_id
    wait_for(provider, cli_id, {"running"})
    shown = run_vastai("show", "instance", cli_id, "--raw")
    assert json.loads(shown.stdout)["label"] == run_label("cli")
    # What rgt reports and what the stock CLI reports agree.
    assert provider.show(cli_id).actual_status == json.loads(shown.stdout)["actual_status"]


# -- every state the platform reports, read through the provider ---------------------------------


def test_the_provider_reads_vast3_preemption_and_vast7_as_the_right_states(
    provider: VastProvider, emulator: Any
) -> None:
    """The emulator reports states as vast.ai does (actual/intended/status_msg); rgt must read
    each as the neutral state the lifecycle acts on. The onstart process is the witness: a
    preempted or offline box has lost it, a resumed one runs it again."""
    # VAST3: stopped, its GPU rented by someone else, asked to start -> waits in scheduling.
    first = rent(provider, "vast3")
    wait_for(provider, first.id, {"running"})
    machine = first.raw.get("machine_id")
    provider.stop(first.id)
    assert wait_for(provider, first.id, {"stopped"}).intended_status == "stopped"
    same_machine = [
        o
        for o in provider.search_offers(
            OfferQuery(limit=1000, min_reliability=0, verified_only=False)
        )
        if o.machine_id == str(machine)
    ]
    assert same_machine, "the stopped instance's GPU should be rentable again (VAST3)"
    taken = 0
    with pytest.raises(ProviderError, match="no_such_ask"):
        for index in range(16):  # a machine has at most 8 GPUs
            provider.create(
                same_machine[0].id,
                image="img",
                disk_gb=1,
                onstart="sleep 600",
                label=run_label(f"squatter{index}"),
            )
            taken += 1
    assert taken >= 1
    provider.start(first.id)
    stuck = wait_for(provider, first.id, {"scheduling"})
    assert stuck.intended_status == "running" and stuck.actual_status != "running"
    assert emulator.process_id(first.id) is None

    # Preemption: an interruptible box outbid is paused abruptly, and resumes with onstart.
    offer = provider.search_offers(OfferQuery(interruptible=True))[0]
    spot = provider.create(
        offer.id,
        image="img",
        disk_gb=1,
        onstart="sleep 600",
        label=run_label("spot-states"),
        interruptible=True,
        bid_per_hour=max(offer.min_bid, 0.01) * 1.2,
    )
    wait_for(provider, spot.id, {"running"})
    before = emulator.process_id(spot.id)
    assert before is not None
    emulator.preempt(spot.id)
    assert wait_for(provider, spot.id, {"paused"}).interruptible is True
    assert emulator.process_id(spot.id) is None
    emulator.win_bid(spot.id)
    wait_for(provider, spot.id, {"running"})
    assert emulator.process_id(spot.id) not in (None, before)

    # VAST7: the host goes offline, then comes back.
    emulator.take_host_offline(spot.id)
    assert wait_for(provider, spot.id, {"offline"}).actual_status == "offline"
    with pytest.raises(ProviderError, match="offline"):
        provider.read_remote_file(spot.id, "/workspace/anything")
    emulator.bring_host_online(spot.id)
    wait_for(provider, spot.id, {"running"})


def test_the_provider_loads_the_sdk_without_the_parts_rgt_never_uses(tmp_path: Path) -> None:
    # `import vastai` loaded the serverless workers and the sync/async clients (aiohttp and
    # more): 0.3 s of CPU more for every `rgt` command that talks to vast.ai. The provider
    # still drives the SDK's VastAI, and the skipped parts still import when asked for.
    script = (
        "import sys\n"
        "from rgt.providers.vastai import VastProvider\n"
        "provider = VastProvider('http://127.0.0.1:9')\n"
        "print(type(provider._sdk).__module__, 'aiohttp' in sys.modules,"
        " 'vastai.serverless' in sys.modules)\n"
        "import vastai.serverless.client.client\n"
        "print('aiohttp' in sys.modules)\n"
    )
    done = _fresh_python(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["vastai.sdk", "False", "False", "True"], done.stdout


def _fresh_python(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`script` in a new interpreter (a first SDK import), importing this checkout's rgt."""
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(repo)},
        timeout=60,
    )


def test_providers_built_in_several_threads_at_once_all_get_the_whole_sdk(tmp_path: Path) -> None:
    # The recover demo builds providers in several threads: a thread that took the package from
    # sys.modules while another was still importing it got no VastAI ("partially initialized").
    script = (
        "import threading\n"
        "from rgt.providers.vastai import VastProvider\n"
        "start, failures = threading.Barrier(8), []\n"
        "def build():\n"
        "    start.wait()\n"
        "    try:\n"
        "        VastProvider('http://127.0.0.1:9')\n"
        "    except Exception as exc:\n"
        "        failures.append(repr(exc))\n"
        "threads = [threading.Thread(target=build) for _ in range(8)]\n"
        "for thread in threads: thread.start()\n"
        "for thread in threads: thread.join()\n"
        "print(failures)\n"
    )
    for _ in range(3):  # a race: each try a fresh process (a first import)
        done = _fresh_python(script, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]", done.stdout
