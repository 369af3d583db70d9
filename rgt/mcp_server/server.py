"""rgt's MCP server: the rental lifecycle as tools for a coding agent, the Iron Law included.

Tools run their blocking work (vast.ai API, ssh, rsync, SQLite) on worker threads, so the
server keeps answering (a `poll` is never stuck behind a long `copy`). The only destroy path is
`rgt.gate.destroy_with_gate`; the human's approval comes from an elicitation answered in the
client's user interface (the model never sees the question's answer field as an argument).
"""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import FileResource, Resource
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from rgt import __version__
from rgt.errors import RgtError, UsageError

# The poll tool returns the lifecycle's report itself (its output schema is built from it), so
# the CLI and MCP cannot drift apart on what a poll says.
from rgt.lifecycle import LaunchResult, PollReport
from rgt.mcp_server.results import (
    SYNC_LISTED,
    CopyResult,
    CostReport,
    LogLines,
    OfferList,
    ProfileEntry,
    ProfileList,
    ProfileSummary,
    RunStarted,
    StartResult,
    StopResult,
    SweepResult,
    SyncResult,
)
from rgt.mcp_server.strict import strict_tool
from rgt.runs import MOVE_MARGIN

T = TypeVar("T")

# Tool arguments several tools take, described once.
InstanceIdArg = Annotated[str, Field(description="the instance id")]
PollIdArg = Annotated[
    str, Field(description="the instance id, or the run id of a run the run tool supervises")
]
ProfileArg = Annotated[str, Field(description="platform profile")]

APPROVAL_CHANNEL = "mcp-elicitation"
# An approval typed in the client is used at once; the TTL only bounds a destroy that fails
# after the approval was recorded.
APPROVAL_TTL_SECONDS = 300.0
PROGRESS_INTERVAL_SECONDS = 0.25
DEFAULT_PROFILE = "vastai"
# poll answers within about this long even while the API fails (then it says so).
PROMPT_ATTEMPTS = 2
PROMPT_SECONDS = 4.0
# poll's wait_seconds: one call waits at most this long (MCP clients time out long calls).
WAIT_LIMIT_SECONDS = 600
WAIT_INTERVAL_SECONDS = 10.0

INSTRUCTIONS = """\
rgt runs long GPU jobs on rented machines without losing results or leaving a meter running.
Lifecycle: get_profile (tell the user the danger clocks first) → search_offers (filters, an
estimate) → launch (job inline: resource rgt://schemas/job.schema.json; refuses above
max_price_per_hour) → poll (reads the job's status record on the box: follow next_action;
wait_seconds waits for the job in one call) → when the job succeeded: copy → verify → destroy.
A failed job's logs are copied for you. Teardown Iron Law: destroy runs only when the results
were pulled, verified byte-for-byte against the manifest built on the box, and a human approved
by typing the instance id back in the client's prompt. You cannot approve for them; no tool
argument can. A refusal lists exactly what is missing. stop is not a meter stop on every
platform (get_profile says what keeps billing); sweep and cost show what still bills; logs
shows the box's own output. run supervises a whole run in the background (relaunches a lost
box from durable checkpoints; poll(RUN_ID) follows it); sync makes them durable without it.
"""


class _Providers(threading.local):
    """One provider per worker thread and platform (the SDK session is not shared)."""

    def __init__(self) -> None:
        self.by_platform: dict[str, Any] = {}


_PROVIDERS = _Providers()


def _provider(platform: str, *, prompt: bool = False) -> Any:
    """The platform's provider for this thread. `prompt`: retries bounded to a few seconds, for
    tools that must answer promptly (poll) rather than wait out a long outage."""
    key = f"{platform}:prompt" if prompt else platform
    cached = _PROVIDERS.by_platform.get(key)
    if cached is None:
        from rgt.providers import get_provider

        cached = get_provider(platform)
        if prompt and hasattr(cached, "retry"):
            from rgt.providers.retry import RetryPolicy

            cached.retry = RetryPolicy(
                attempts=PROMPT_ATTEMPTS, total_seconds=PROMPT_SECONDS, max_retry_after=2.0
            )
        _PROVIDERS.by_platform[key] = cached
    return cached


_PROFILES: dict[tuple[str, int], Any] = {}
# Profiles whose danger clocks a launch of this server process (one client session) has told.
_CLOCKS_TOLD: set[str] = set()
# The cost basis poll last told per instance in this server process: a fixed sentence that an
# agent polling in a loop would otherwise be sent again on every call.
_BASIS_TOLD: dict[str, str] = {}


def _profile(name: str) -> Any:
    """The profile, re-read only when its file changed (poll calls this every time)."""
    from rgt.profile import load_profile, resolve_profile_path

    path, _ = resolve_profile_path(name)
    key = (name, path.stat().st_mtime_ns)
    profile = _PROFILES.get(key)
    if profile is None:
        profile = _PROFILES[key] = load_profile(name)
    return profile


def _ledger() -> Any:
    from rgt.ledger import Ledger

    return Ledger.open()


def _instance_profile(ledger: Any, instance_id: str) -> Any:
    """The profile the instance was launched with (the ledger knows), else the default."""
    for record in ledger.instances():
        if record.instance_id == str(instance_id) and record.profile:
            return _profile(record.profile)
    return _profile(DEFAULT_PROFILE)


@contextlib.contextmanager
def _for_instance(instance_id: str, *, prompt: bool = False) -> Iterator[tuple[Any, Any, Any]]:
    """(ledger, profile, provider) for a tool acting on one instance: the profile it was
    launched with and that platform's provider (`prompt`: see `_provider`)."""
    with _ledger() as ledger:
        profile = _instance_profile(ledger, instance_id)
        _check_instance_id(profile.platform, instance_id)
        yield ledger, profile, _instance_provider(instance_id, profile, prompt=prompt)


def _instance_provider(instance_id: str, profile: Any, **options: Any) -> Any:
    """The provider of one instance: an attached box's (`ssh-1`) is the ssh provider of the
    very profile it was attached with (a variant's scheduler, say), with `options` (e.g. the
    human's meter-stop confirmation); any other, the platform's shared provider."""
    from rgt.providers.ssh import SshProvider, is_attached_id

    if is_attached_id(instance_id):
        options.pop("prompt", None)
        return SshProvider(profile, **options)
    return _provider(profile.platform, prompt=bool(options.get("prompt")))


def _human_meter_stop(instance_id: str) -> str | None:
    """The action a human does to stop the meter of an attached box rgt cannot stop itself
    (its profile's meter stop, e.g. "terminate: RunPod console ..."), else None."""
    from rgt.providers.ssh import is_attached_id

    if not is_attached_id(instance_id):
        return None
    with _for_instance(instance_id) as (_, profile, provider):
        if provider.sends_meter_stop or not profile.meter_stop_verb:
            return None
        return str(profile.meter_stop_action)


def _check_instance_id(platform: str, instance_id: str) -> None:
    """A malformed id is an invalid argument (a tool error naming it and what is allowed),
    before any provider request, never a gate refusal. The CLI's check (`vast_id`) is the one
    source of truth; vast.ai is the only platform with a provider (rgt.providers)."""
    if platform == "vastai":
        from rgt.providers.vastai import vast_id

        vast_id(instance_id, what="invalid argument: instance_id")


async def _blocking(fn: Callable[[], T]) -> T:
    """Run `fn` on a worker thread; an rgt error (or a local file or ledger problem) becomes a
    tool error with its one-line text; anything else is a bug and its text is withheld."""
    from rgt.ledger import LedgerError

    try:
        return await anyio.to_thread.run_sync(fn)
    except RgtError as exc:
        raise ToolError(exc.for_tool) from None
    except (LedgerError, OSError) as exc:
        # A user-side problem (unwritable local_dir, full disk, unusable ledger): say it.
        raise ToolError(f"{type(exc).__name__}: {exc}") from None


def _progress_reporter(ctx: Context, label: str) -> Callable[[int, int | None, str | None], None]:
    """A thread-side callback that forwards progress to the client, at most 4 times a second."""
    last = [0.0]

    def report(done: int, total: int | None, note: str | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - last[0] < PROGRESS_INTERVAL_SECONDS:
            return
        last[0] = now
        message = f"{label}: {done}/{total} bytes" if total else f"{label}: {done} bytes"
        if note:
            message += f" ({note})"
        # Progress is best effort: the copy itself must not fail over a notification.
        with contextlib.suppress(Exception):
            anyio.from_thread.run(ctx.report_progress, float(done), total and float(total), message)

    return report


# -- results -----------------------------------------------------------------------------------


class MissingEvidence(BaseModel):
    """One piece of evidence the gate did not find."""

    code: str
    message: str


class DestroyResult(BaseModel):
    """What `destroy` did: destroyed, or refused with the reason and what is missing."""

    instance_id: str
    destroyed: bool
    outcome: Literal[
        "destroyed",
        "missing-evidence",
        "no-passphrase",
        "declined",
        "cancelled",
        "mismatch",
        "no-elicitation",
        "refused",
    ]
    message: str
    missing: list[MissingEvidence] = Field(default_factory=list)
    approval_channel: str | None = None


class ConfirmDestroy(BaseModel):
    """The form the human fills in (flat: elicitation schemas allow primitives only)."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(
        title="Instance id",
        description="Type the instance id exactly to confirm it may be destroyed",
    )


class ConfirmDestroyWithPassphrase(ConfirmDestroy):
    """The form when the user has set an approval passphrase (`rgt approval init`): the id and
    the passphrase, so a client that answers prompts by itself cannot approve alone."""

    passphrase: str = Field(
        title="Approval passphrase",
        description="Your rgt approval passphrase (set with `rgt approval init`)",
    )


# The human's word that they stopped an attached box's meter themselves (in the platform's
# console), asked in the same form as their passphrase by destroy and discard alike.
MeterStopped = Annotated[
    str,
    Field(
        title="Meter stopped",
        description="Once you did the meter stop named above, type: stopped <instance id>",
    ),
]


class ConfirmDestroyAndMeterStop(ConfirmDestroyWithPassphrase):
    """The form for a box rgt reaches over ssh whose meter stop is the human's action (in the
    platform's console): the id, the passphrase, and their word that they did it, all in the
    one approval a client cannot fill in without the human's passphrase."""

    meter_stopped: MeterStopped


def meter_stop_phrase(instance_id: str) -> str:
    """What the human types to say they stopped the box's meter themselves."""
    return f"stopped {instance_id}"


def _meter_stop_request(instance_id: str, action: str) -> str:
    """The prompt's sentence asking the human to stop the meter of a box rgt cannot stop
    (the gate allowed ending it) and to say so in the form's meter_stopped field."""
    return (
        f" rgt cannot stop this box's meter: the gate allows it, so do it yourself now: "
        f"{action}. Then type '{meter_stop_phrase(instance_id)}' to confirm you did (leave "
        "it empty and nothing is recorded as ended)."
    )


def _ending_provider(
    instance_id: str, profile: Any, provider: Any, answer: Any, again: Any
) -> tuple[Any, bool]:
    """The provider to end `instance_id` with, and whether its meter stop is the human's (then
    confirmed by the phrase they typed in the approval form `answer`: a mismatch refuses,
    naming the tool call `again` to retry with). Destroy and discard share it."""
    from rgt.errors import Refused

    if not getattr(provider, "meter_stop_is_human", False) or provider.sends_meter_stop:
        return provider, False
    # The human's word came in the same form as their passphrase; the provider asks for it
    # only after the gate allowed the end.
    typed = str(getattr(answer, "meter_stopped", "")).strip()

    def confirmed(box_id: str, action: str) -> bool:
        if hmac.compare_digest(typed.encode(), meter_stop_phrase(box_id).encode()):
            return True
        raise Refused(
            f"instance {box_id}: the meter stop was not confirmed (the form's meter_stopped was "
            f"not '{meter_stop_phrase(box_id)}'); nothing is recorded as ended, and the box may "
            f"still bill. Do it ({action}), then call {again.call()} again"
        )

    return _instance_provider(instance_id, profile, confirm_meter_stop=confirmed), True


# -- destroy: precheck + elicitation (the resolver runs before the tool body) -----------------


def _precheck(instance_id: str, can_ask: bool, answered: bool = False) -> DestroyResult | None:
    """None = ask the human; else the refusal to return without asking.

    Approvals already in the ledger are not used here: through MCP only the approval this
    call obtains from the human counts (a row slipped into the ledger cannot be).

    `answered`: the round that carries the human's answer (2026-07-28 runs the resolver again).
    A box whose meter stop the human was asked to do themselves is silent by then because they
    did it: the gate read it when they were asked, so its silence is not held against it here
    (the end re-checks everything else: rgt.gate.destroy_after_human_meter_stop)."""
    silent_ok = answered and _human_meter_stop(instance_id) is not None
    with _for_instance(instance_id) as (ledger, profile, provider):
        from rgt.gate import may_destroy

        decision = may_destroy(
            instance_id, provider=provider, ledger=ledger, require_approval=False, profile=profile
        )
        missing = [m for m in decision.missing if not (silent_ok and m.code == "box-unreachable")]
        if missing:
            from rgt.gate import spend_approvals

            # A refused attempt spends any approval given for it (a TTY approval, say).
            spend_approvals(ledger, instance_id, decision)
            return DestroyResult(
                instance_id=instance_id,
                destroyed=False,
                outcome="missing-evidence",
                message=(
                    f"destroy REFUSED, nothing was destroyed: {len(missing)} piece(s) of evidence "
                    "missing; after these, a human approves in the client prompt"
                ),
                missing=[MissingEvidence(code=m.code, message=m.for_tool()) for m in missing],
            )
        from rgt import approval

        if not approval.is_configured():
            return DestroyResult(
                instance_id=instance_id,
                destroyed=False,
                outcome="no-passphrase",
                message=(
                    "destroy REFUSED, nothing was destroyed: all evidence is present, but no "
                    "approval passphrase is set, and without one the prompt's answer could come "
                    "from the agent's own client. The human runs `rgt approval init` in a "
                    "terminal, then calls destroy again (or approves on the terminal: "
                    f"`rgt destroy {instance_id}`)"
                ),
                missing=[
                    MissingEvidence(
                        code="no-passphrase",
                        message="a human must set the approval passphrase: `rgt approval init`",
                    )
                ],
            )
        if not can_ask:
            return DestroyResult(
                instance_id=instance_id,
                destroyed=False,
                outcome="no-elicitation",
                message=(
                    "destroy REFUSED, nothing was destroyed: all evidence is present but this "
                    "MCP client cannot ask the human (no elicitation support). The human "
                    f"approves out of band on a terminal: `rgt approve {instance_id}` (with the "
                    f"approval passphrase), then `rgt destroy {instance_id}`"
                ),
                missing=[
                    MissingEvidence(
                        code="no-approval",
                        message=f"a human must run `rgt approve {instance_id}` on a terminal",
                    )
                ],
            )
    return None


def _client_can_elicit(ctx: Context) -> bool:
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    # A bare `elicitation: {}` (before modes existed) means form support; url-only does not.
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


async def ask_human_to_confirm(
    instance_id: str, ctx: Context
) -> Elicit[ConfirmDestroy] | DestroyResult:
    """Resolver for destroy: refuse early when evidence is missing, else ask the human."""
    answered = getattr(ctx, "request_state", None) is not None
    found = await _blocking(lambda: _precheck(instance_id, _client_can_elicit(ctx), answered))
    if found is not None:
        return found
    action = await _blocking(lambda: _human_meter_stop(instance_id))
    message = (
        f"PERMANENTLY destroy instance {instance_id}? Its results were pulled and verified "
        "against the manifest built on the box; destroy deletes the box and its disk and stops "
        f"the meter. Type the instance id ({instance_id}) to confirm"
    )
    # Always with the passphrase: the precheck refused when none is configured (typing the id
    # back alone is an answer the agent's own client could give), and the answer is checked
    # against it, which refuses again should it have been removed meanwhile.
    message += ", and your approval passphrase."
    # The form's schema is the one asked at run time; the annotation names the base form.
    form: type[ConfirmDestroy] = ConfirmDestroyWithPassphrase
    if action is not None:
        # rgt cannot stop this box's meter: the human does it first, then says so in the same
        # form as their passphrase (rgt records the end only once the box stops answering).
        message += _meter_stop_request(instance_id, action)
        form = ConfirmDestroyAndMeterStop
    return Elicit(message, form)


def _refused(
    instance_id: str, exc: RgtError, *, approval_channel: str | None = None
) -> DestroyResult:
    """The result of a destroy the approval check or the gate refused: nothing was destroyed,
    and why."""
    return DestroyResult(
        instance_id=instance_id,
        destroyed=False,
        outcome="refused",
        message=f"destroy REFUSED, nothing was destroyed: {exc.message}",
        approval_channel=approval_channel,
    )


def _destroy_now(instance_id: str, answer: ConfirmDestroy) -> DestroyResult:
    """Record the human's approval just given and destroy through the gate with exactly it."""
    from rgt import approval
    from rgt.errors import Refused
    from rgt.gate import destroy_after_human_meter_stop, destroy_with_gate
    from rgt.nextstep import Step

    with _for_instance(instance_id) as (ledger, profile, provider):
        again = Step.of("destroy", instance_id=instance_id)
        provider, human = _ending_provider(instance_id, profile, provider, answer, again)
        end: Callable[..., Any] = destroy_after_human_meter_stop if human else destroy_with_gate
        try:
            # Checks the id and passphrase (required: a refusal when none is set), rate-limits,
            # records failures.
            approval_id = approval.approve_with_passphrase(
                ledger,
                instance_id,
                typed_instance_id=answer.instance_id,
                passphrase=getattr(answer, "passphrase", ""),
                channel=APPROVAL_CHANNEL,
                ttl_seconds=APPROVAL_TTL_SECONDS,
            )
        except Refused as exc:
            return _refused(instance_id, exc)
        try:
            outcome = end(
                instance_id,
                provider=provider,
                ledger=ledger,
                profile=profile,
                approval_id=approval_id,
            )
        except Refused as exc:
            return _refused(instance_id, exc, approval_channel=APPROVAL_CHANNEL)
    message = (
        f"instance {instance_id}: {outcome.verb} confirmed ({outcome.confirmed_state}); "
        "billing stopped and its disk is deleted"
    )
    if getattr(provider, "sends_meter_stop", False):
        message = (
            f"instance {instance_id}: rgt sent {outcome.verb} over ssh and its job has ended "
            "(the allocation is free; its files stay); recorded as ended"
        )
    elif getattr(provider, "meter_stop_is_human", False):
        message = (
            f"instance {instance_id}: the human confirmed {outcome.verb} and the box no longer "
            "answers over ssh; recorded as ended"
        )
    return DestroyResult(
        instance_id=instance_id,
        destroyed=True,
        outcome="destroyed",
        message=message,
        approval_channel=APPROVAL_CHANNEL,
    )


def _record_failure(instance_id: str, reason: str) -> None:
    with _ledger() as ledger:
        ledger.record_approval_failure(instance_id, APPROVAL_CHANNEL, reason)


async def destroy(
    instance_id: Annotated[str, Field(description="The instance id to destroy")],
    ctx: Context,
    # Filled by the resolver, never by the model: not in the input schema. A refusal found
    # before asking arrives as an accepted outcome whose data is the DestroyResult.
    confirmation: Annotated[ElicitationResult[ConfirmDestroy], Resolve(ask_human_to_confirm)],
) -> DestroyResult:
    """Destroy an instance (irreversible: deletes the box and its disk, stops the meter).

    Runs the Teardown Iron Law gate. Missing evidence: nothing is destroyed and the result lists
    exactly what is missing. All evidence present: the human is asked, in the client, to type
    the instance id back and their approval passphrase; only an exact match destroys. Until the
    human has set a passphrase (`rgt approval init` on a terminal) destroy always refuses."""
    instance_id = str(instance_id)
    if not isinstance(confirmation, AcceptedElicitation):
        action: Literal["declined", "cancelled"] = (
            "declined" if confirmation.action == "decline" else "cancelled"
        )
        await _blocking(lambda: _record_failure(instance_id, f"elicitation {action}"))
        return DestroyResult(
            instance_id=instance_id,
            destroyed=False,
            outcome=action,
            message=f"the human {action} the destroy of instance {instance_id}; nothing destroyed",
        )
    data: Any = confirmation.data
    if isinstance(data, DestroyResult):
        return data
    typed = data.instance_id.strip() if isinstance(data, ConfirmDestroy) else ""
    if typed != instance_id:
        await _blocking(lambda: _record_failure(instance_id, "typed id did not match"))
        return DestroyResult(
            instance_id=instance_id,
            destroyed=False,
            outcome="mismatch",
            message=(
                f"the id typed back ({typed!r}) is not {instance_id!r}; nothing destroyed "
                "(call destroy again to ask once more)"
            ),
        )
    return await _blocking(lambda: _destroy_now(instance_id, data))


# -- discard: a rental with nothing to save, proven and approved by a human ------------------

DiscardReason = Literal["failed-job", "host-lost", "superseded", "nothing-to-keep"]
DISCARD_CHANNEL = "mcp-elicitation"


class DiscardResult(BaseModel):
    """What `discard` did: discarded (meter stopped, results NOT saved), or refused and why."""

    instance_id: str
    reason: str
    discarded: bool
    outcome: Literal[
        "discarded",
        "missing-evidence",
        "no-passphrase",
        "no-elicitation",
        "declined",
        "cancelled",
        "refused",
    ]
    message: str
    missing: list[MissingEvidence] = Field(default_factory=list)
    lost: dict[str, Any] | None = None


class ConfirmDiscard(BaseModel):
    """The discard form: the phrase `discard <id>` typed back and the approval passphrase."""

    model_config = ConfigDict(extra="forbid")

    confirm: str = Field(
        title="Confirmation",
        description="Type 'discard <instance id>' to confirm its results are NOT saved",
    )
    passphrase: str = Field(
        title="Approval passphrase",
        description="Your rgt approval passphrase (set with `rgt approval init`)",
    )


class ConfirmDiscardAndMeterStop(ConfirmDiscard):
    """The discard form for a box rgt reaches over ssh whose meter stop is the human's action:
    the phrase, the passphrase, and their word that they stopped its meter (as for destroy)."""

    meter_stopped: MeterStopped


def _discard_precheck(
    instance_id: str, reason: str, can_ask: bool, answered: bool = False
) -> DiscardResult | str:
    """The refusal to return without asking, or the loss summary to show the human.
    `answered`: as in `_precheck` (a box the human was asked to stop is silent by then)."""
    from rgt import approval
    from rgt.discard import loss_summary, may_discard

    silent_ok = answered and _human_meter_stop(instance_id) is not None
    with _for_instance(instance_id) as (ledger, profile, provider):
        decision = may_discard(
            instance_id,
            reason,
            provider=provider,
            ledger=ledger,
            profile=profile,
            require_approval=False,
        )
    if silent_ok:
        decision.missing = [m for m in decision.missing if m.code != "box-unreachable"]
    lost = decision.evidence.get("lost")
    if decision.missing:
        return DiscardResult(
            instance_id=instance_id,
            reason=reason,
            discarded=False,
            outcome="missing-evidence",
            message=(
                f"discard REFUSED, nothing was done: the reason {reason!r} is not proven "
                f"({len(decision.missing)} item(s) below)"
            ),
            missing=[MissingEvidence(code=m.code, message=m.for_tool()) for m in decision.missing],
            lost=lost,
        )
    if not approval.is_configured():
        return DiscardResult(
            instance_id=instance_id,
            reason=reason,
            discarded=False,
            outcome="no-passphrase",
            message=(
                "discard REFUSED, nothing was done: a discard needs the human's approval "
                "passphrase and none is set; the human runs `rgt approval init` in a terminal"
            ),
            lost=lost,
        )
    if not can_ask:
        return DiscardResult(
            instance_id=instance_id,
            reason=reason,
            discarded=False,
            outcome="no-elicitation",
            message=(
                "discard REFUSED, nothing was done: this MCP client cannot ask the human; the "
                f"human runs `rgt discard {instance_id} --reason {reason}` in a terminal"
            ),
            lost=lost,
        )
    return loss_summary(decision)


async def ask_human_to_discard(
    instance_id: str, reason: str, ctx: Context
) -> Elicit[ConfirmDiscard] | DiscardResult:
    """Resolver for discard: refuse early when the reason is not proven, else ask the human,
    showing what is lost."""
    answered = getattr(ctx, "request_state", None) is not None
    found = await _blocking(
        lambda: _discard_precheck(instance_id, reason, _client_can_elicit(ctx), answered)
    )
    if isinstance(found, DiscardResult):
        return found
    message = (
        f"{found}\nType 'discard {instance_id}' and your approval passphrase to end this rental "
        "WITHOUT saving its results."
    )
    form: type[ConfirmDiscard] = ConfirmDiscard
    action = await _blocking(lambda: _human_meter_stop(instance_id))
    if action is not None:
        message += _meter_stop_request(instance_id, action)
        form = ConfirmDiscardAndMeterStop
    return Elicit(message, form)


def _discard_now(instance_id: str, reason: str, answer: ConfirmDiscard) -> DiscardResult:
    from rgt import approval
    from rgt.approval import DISCARD_TTL_SECONDS
    from rgt.errors import Refused
    from rgt.gate import discard_after_human_meter_stop, discard_with_gate
    from rgt.nextstep import Step

    with _for_instance(instance_id) as (ledger, profile, provider):
        again = Step.of("discard", instance_id=instance_id, reason=reason)
        provider, human = _ending_provider(instance_id, profile, provider, answer, again)
        end: Callable[..., Any] = discard_after_human_meter_stop if human else discard_with_gate
        try:
            approval_id = approval.approve_with_passphrase(
                ledger,
                instance_id,
                typed_instance_id=answer.confirm,
                passphrase=answer.passphrase,
                channel=DISCARD_CHANNEL,
                ttl_seconds=DISCARD_TTL_SECONDS,
                purpose="discard",
            )
            outcome = end(
                instance_id,
                reason,
                provider=provider,
                ledger=ledger,
                profile=profile,
                approval_id=approval_id,
            )
        except Refused as exc:
            return DiscardResult(
                instance_id=instance_id,
                reason=reason,
                discarded=False,
                outcome="refused",
                message=f"discard REFUSED, nothing was done: {exc.message}",
            )
    return DiscardResult(
        instance_id=instance_id,
        reason=reason,
        discarded=True,
        outcome="discarded",
        message=(
            f"instance {instance_id}: discarded ({reason}); the human confirmed {outcome.verb} "
            "and the box no longer answers over ssh: recorded as ended, its results were NOT saved"
            if human
            else f"instance {instance_id}: discarded ({reason}); {outcome.verb} confirmed "
            f"({outcome.confirmed_state}): billing stopped, its results were NOT saved"
        ),
        lost=outcome.decision.evidence.get("lost"),
    )


async def discard(
    instance_id: Annotated[str, Field(description="The instance id to discard")],
    reason: Annotated[
        DiscardReason,
        Field(description="Why nothing will be saved; rgt checks it from evidence"),
    ],
    ctx: Context,
    confirmation: Annotated[ElicitationResult[ConfirmDiscard], Resolve(ask_human_to_discard)],
) -> DiscardResult:
    """End a rental whose results will NOT be saved (irreversible: deletes the box and its
    disk), only for a reason rgt proves from evidence: failed-job (the job failed and its logs
    were copied off: poll first), host-lost (Offline / stuck past the profile's grace),
    superseded (a later attempt of the run was verified), nothing-to-keep. The human is shown
    what is lost and must type `discard ID` and the approval passphrase; no argument, default or
    timeout can approve it. A box attached over ssh whose meter stop is the human's: the same
    form asks them to stop it in the platform's console and type `stopped ID`. For a job that
    finished, use copy → verify → destroy instead."""
    instance_id = str(instance_id)
    if not isinstance(confirmation, AcceptedElicitation):
        action: Literal["declined", "cancelled"] = (
            "declined" if confirmation.action == "decline" else "cancelled"
        )
        await _blocking(lambda: _record_failure(instance_id, f"discard elicitation {action}"))
        return DiscardResult(
            instance_id=instance_id,
            reason=reason,
            discarded=False,
            outcome=action,
            message=f"the human {action} the discard of instance {instance_id}; nothing done",
        )
    data: Any = confirmation.data
    if isinstance(data, DiscardResult):
        return data
    return await _blocking(lambda: _discard_now(instance_id, reason, data))


# -- the other tools ---------------------------------------------------------------------------


async def list_profiles() -> ProfileList:
    """Every bundled platform profile: name, title, kind, variants. get_profile has a profile's
    facts and the danger clocks to tell the user before renting."""

    def work() -> ProfileList:
        from rgt.nextstep import Step
        from rgt.profile import list_profiles as all_profiles

        entries = [
            ProfileEntry(name=p.name, title=p.title, kind=p.kind, variants=sorted(p.variants))
            for p in all_profiles()
        ]
        return ProfileList(
            profiles=entries, next=Step.of("get_profile", name=DEFAULT_PROFILE).call()
        )

    return await _blocking(work)


async def get_profile(
    name: Annotated[str, Field(description="Profile name, e.g. vastai or family:variant")],
) -> ProfileSummary:
    """One profile's machine facts, danger clocks first (what keeps billing, what is lost)."""
    from rgt.lifecycle import profile_summary

    return await _blocking(lambda: ProfileSummary.model_validate(profile_summary(_profile(name))))


async def search_offers(
    gpu: Annotated[str | None, Field(description="GPU model, e.g. RTX_4090")] = None,
    count: Annotated[int, Field(ge=1, le=16, description="GPUs per machine")] = 1,
    max_price_per_hour: Annotated[float | None, Field(gt=0, description="$/hour cap")] = None,
    interruptible: Annotated[bool, Field(description="bid (spot) prices instead")] = False,
    disk_gb: Annotated[float | None, Field(gt=0, description="disk the job needs")] = None,
    min_reliability: Annotated[float, Field(ge=0.9, le=1.0)] = 0.98,
    min_gpu_ram_gb: Annotated[float | None, Field(gt=0, description="GPU RAM per GPU")] = None,
    min_cuda: Annotated[
        float | None,
        Field(gt=0, description="highest CUDA the host driver must support (the image's)"),
    ] = None,
    regions: Annotated[
        list[str] | None, Field(description='country codes, e.g. ["US", "CA"]')
    ] = None,
    min_ram_gb: Annotated[float | None, Field(gt=0, description="CPU RAM")] = None,
    min_disk_mb_per_s: Annotated[float | None, Field(gt=0, description="disk bandwidth")] = None,
    min_inet_down_mbps: Annotated[float | None, Field(gt=0)] = None,
    min_inet_up_mbps: Annotated[float | None, Field(gt=0)] = None,
    order: Annotated[
        Literal["price", "dlperf_per_dollar"],
        Field(description="cheapest first, or most DLPerf (throughput score) per $/h first"),
    ] = "price",
    hours: Annotated[
        float | None, Field(gt=0, description="estimate the cost of renting this long")
    ] = None,
    results_gb: Annotated[
        float, Field(ge=0, description="with hours: the results to pull off the box")
    ] = 0.0,
    limit: Annotated[int, Field(ge=1, le=100)] = 10,
    profile: ProfileArg = DEFAULT_PROFILE,
) -> OfferList:
    """Rentable offers: verified, direct-port, reliable hosts only, cheapest first or by DLPerf
    per dollar, filtered by what the job needs; with `hours`, each offer's estimate (rental at
    its $/h, pulling results_gb at its upload price) before renting anything."""
    from rgt.lifecycle import ESTIMATE_BASIS, Estimate, search
    from rgt.providers.base import OfferQuery

    query = OfferQuery(
        gpu_name=gpu,
        num_gpus=count,
        max_price_per_hour=max_price_per_hour,
        interruptible=interruptible,
        min_reliability=min_reliability,
        disk_gb=disk_gb,
        limit=limit,
        min_gpu_ram_gb=min_gpu_ram_gb,
        min_cuda=min_cuda,
        regions=tuple(regions or ()),
        min_ram_gb=min_ram_gb,
        min_disk_mb_per_s=min_disk_mb_per_s,
        min_inet_down_mbps=min_inet_down_mbps,
        min_inet_up_mbps=min_inet_up_mbps,
        order=order,
    )
    estimate = Estimate(hours, results_gb) if hours is not None else None

    def work() -> OfferList:
        offers = search(_provider(_profile(profile).platform), query, estimate=estimate)
        return OfferList.model_validate(
            {
                "offers": offers,
                "filters": {
                    "verified_only": True,
                    "min_direct_ports": query.min_direct_ports,
                    "min_reliability": min_reliability,
                },
                "estimate_basis": ESTIMATE_BASIS if estimate is not None else None,
                "next": "launch(profile, offer_id, job, max_price_per_hour) with an offer_id above",
            }
        )

    return await _blocking(work)


async def launch(
    profile: Annotated[str, Field(description="platform profile, e.g. vastai")],
    offer_id: Annotated[str, Field(description="an offer id from search_offers")],
    job: Annotated[
        str | dict[str, Any],
        Field(
            description=(
                "the job request: a path to its YAML file on the server, or the request itself "
                "as an object (schema: resource rgt://schemas/job.schema.json; example: "
                "rgt://examples/job.yaml)"
            )
        ),
    ],
    max_price_per_hour: Annotated[float, Field(gt=0, description="refuse above this $/hour")],
    interruptible: bool = False,
    bid: Annotated[float | None, Field(gt=0, description="$/hour bid (interruptible)")] = None,
) -> LaunchResult:
    """Rent an offer for a job: renders the boot hook from the profile and job, creates the
    instance, records it in the ledger. Refuses above max_price_per_hour."""
    from rgt.job import JobRequest, load_job
    from rgt.lifecycle import launch as launch_instance

    def work() -> LaunchResult:
        from dataclasses import replace

        from rgt.lifecycle import danger_clocks

        chosen = _profile(profile)
        # Inline: validated by the same schema as a file (a finding names `job.<field>`).
        request = (
            JobRequest.from_dict(job, source="job") if isinstance(job, dict) else load_job(job)
        )
        with _ledger() as ledger:
            result = launch_instance(
                provider=_provider(chosen.platform),
                ledger=ledger,
                profile=chosen,
                job=request,
                offer_id=offer_id,
                max_price_per_hour=max_price_per_hour,
                interruptible=interruptible,
                bid_per_hour=bid,
            )
        # The danger clocks are told once a session (and by get_profile), not on every launch.
        if chosen.name in _CLOCKS_TOLD:
            clocks = set(danger_clocks(chosen))
            result = replace(result, warnings=[w for w in result.warnings if w not in clocks])
        _CLOCKS_TOLD.add(chosen.name)
        return result

    return await _blocking(work)


async def poll(
    instance_id: PollIdArg,
    ctx: Context,
    wait_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=WAIT_LIMIT_SECONDS,
            description=(
                "wait up to this long for the job to succeed or fail (or the instance to be "
                "gone), with progress notifications; 0: one look"
            ),
        ),
    ] = 0,
    interval_seconds: Annotated[
        float, Field(ge=1, le=60, description="seconds between looks while waiting")
    ] = WAIT_INTERVAL_SECONDS,
) -> PollReport:
    """The instance and its job now: state, classification, the job's outcome from the status
    record on the box (running, succeeded, failed with exit code and last log lines, stale...),
    next action, cost so far. A failed job's logs are copied to the run's local dir first.
    With wait_seconds, one call waits for the job instead of a polling loop. cost_basis (how the
    cost is estimated) comes with the first poll of an instance and when it changes; null:
    as last told. Given a run id (the run tool), the report is of the run's current instance,
    with `run`: the run's status, attempts and spend."""
    from dataclasses import replace

    from rgt.errors import ProviderError
    from rgt.lifecycle import is_done
    from rgt.lifecycle import poll as poll_instance

    def look() -> PollReport | ProviderError:
        try:
            target, run = _run_of_poll(instance_id)
            with _for_instance(target, prompt=True) as (ledger, profile, provider):
                found = poll_instance(
                    target,
                    provider=provider,
                    ledger=ledger,
                    profile=profile,
                    read_job=True,
                    for_tool=True,
                )
            if run is None:
                return found
            if run["status"] in RUN_LEADS:
                # The supervisor copies and verifies by itself: the instance's own next step
                # (copy → verify → destroy) would race it or repeat what it did.
                found = replace(found, next_action=run["next_action"])
            return replace(found, run=run)
        except ProviderError as exc:  # while waiting, the next look may get through
            return exc

    began = time.monotonic()
    while True:
        found = await _blocking(look)
        elapsed = time.monotonic() - began
        if isinstance(found, ProviderError):
            if elapsed >= wait_seconds:
                raise ToolError(found.message)
        elif is_done(found) or elapsed >= wait_seconds:
            if _BASIS_TOLD.get(found.instance_id) == found.cost_basis:
                found = replace(found, cost_basis=None)  # told already: unchanged
            elif found.cost_basis is not None:
                _BASIS_TOLD[found.instance_id] = found.cost_basis
            return replace(found, waited_seconds=round(elapsed, 1)) if wait_seconds else found
        else:
            job = found.job.summary if found.job is not None else found.classification
            # Progress is best effort: the wait must not fail over a notification.
            with contextlib.suppress(Exception):
                await ctx.report_progress(elapsed, wait_seconds, f"job {job}")
        await anyio.sleep(min(interval_seconds, max(0.0, wait_seconds - elapsed)))


# Run statuses in which the run's next action, not its instance's, is the step to take.
RUN_LEADS = frozenset({"running", "awaiting-approval", "unsupervised"})


def _run_of_poll(name: str) -> tuple[str, dict[str, Any] | None]:
    """(the instance to poll, the run's report) for poll's id: a run the run tool supervises
    (by its run id, when no instance has that id) is polled through its current instance."""
    from rgt.supervisor import run_report

    with _ledger() as ledger:
        if any(r.instance_id == name for r in ledger.instances()):
            return name, None
        report = run_report(ledger, name, for_tool=True)
    if report is None:
        return name, None
    if report["instance_id"] is None:
        raise UsageError(
            f"run {name} has rented no instance yet ({report['status']}): poll it again in a moment"
        )
    return str(report["instance_id"]), report


async def run(
    job: Annotated[
        str | dict[str, Any],
        Field(
            description=(
                "the job request: a path to its YAML file on the server, or the request itself "
                "as an object (schema: resource rgt://schemas/job.schema.json)"
            )
        ),
    ],
    max_price_per_hour: Annotated[float, Field(gt=0, description="no attempt rents above this")],
    budget: Annotated[
        float | None,
        Field(gt=0, description="dollars all attempts together may cost; then it stops"),
    ] = None,
    interruptible: bool = False,
    bid: Annotated[float | None, Field(gt=0, description="$/hour bid (interruptible)")] = None,
    interval_seconds: Annotated[
        float, Field(ge=1, le=300, description="seconds between the supervisor's looks")
    ] = 10.0,
    profile: ProfileArg = DEFAULT_PROFILE,
    move_if_cheaper: Annotated[
        float | None,
        Field(
            ge=0,
            lt=1,
            description=(
                "interruptible with a durable target: move to an offer cheaper by this fraction "
                f"when that pays for the restart (default {MOVE_MARGIN:g}; 0: never)"
            ),
        ),
    ] = None,
) -> RunStarted:
    """Supervise a whole run in the background (rents money, possibly several boxes): rent the
    cheapest fitting offer under the cap, watch the job, and when the box is lost (preempted,
    stuck or offline past the profile's grace) rent another offer, never the lost machine,
    resuming from the newest durable checkpoint (an interruptible run also moves to a much
    cheaper offer); a failed job is reported, not relaunched. When
    the job succeeds it pulls and verifies; destroy then needs a human's approval (destroy
    tool). Follow it with poll(instance_id=RUN_ID)."""
    from rgt.job import JobRequest, load_job
    from rgt.nextstep import Step
    from rgt.supervisor import start_detached

    def work() -> RunStarted:
        import yaml

        from rgt.atomic import atomic_write_text
        from rgt.paths import run_dir

        chosen = _profile(profile)
        if interruptible and not chosen.spot_available:
            raise UsageError(f"profile {chosen.name}: interruptible rentals are not available")
        if bid is not None and not interruptible:
            raise UsageError("bid goes with interruptible")
        if move_if_cheaper is not None and not interruptible:
            raise UsageError("move_if_cheaper goes with interruptible (only a spot run moves)")
        request = (
            JobRequest.from_dict(job, source="job") if isinstance(job, dict) else load_job(job)
        )
        job_file = str(job) if isinstance(job, str) else ""
        if not job_file:
            # The background process reads the job from a file: the validated request, kept
            # in the run's local dir (no secret values: a job names env vars only).
            target = run_dir(request.run_id) / "job.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, yaml.safe_dump(request.as_dict(), sort_keys=False))
            job_file = str(target)
        started = start_detached(
            job_file,
            request.run_id,
            max_price_per_hour=max_price_per_hour,
            budget=budget,
            interruptible=interruptible,
            bid_per_hour=bid,
            interval=interval_seconds,
            platform=None if chosen.name == DEFAULT_PROFILE else chosen.name,
            move_margin=move_if_cheaper,
        )
        follow = Step.of("poll", instance_id=request.run_id, wait=True).call()
        return RunStarted(
            run_id=request.run_id,
            pid=int(started["pid"]),
            log=str(started["log"]),
            job_file=job_file,
            next=f"{follow}: the run's current instance, its job, the attempts and the spend",
        )

    return await _blocking(work)


async def copy(
    instance_id: InstanceIdArg,
    remote_root: Annotated[str, Field(description="absolute results root on the box")],
    local_dir: Annotated[
        str,
        Field(
            description="local directory to copy into: new, empty, or an earlier pull of this run"
        ),
    ],
    ctx: Context,
) -> CopyResult:
    """Pull the results: the manifest built on the box first, then the files (resumable),
    with progress notifications. Records the pull in the ledger."""
    from rgt.pull import pull_instance

    report = _progress_reporter(ctx, f"copy {instance_id}")

    def work() -> CopyResult:
        from rgt.nextstep import Step

        with _for_instance(instance_id) as (ledger, profile, provider):
            result = pull_instance(
                instance_id,
                remote_root,
                local_dir,  # as given: an empty one is refused, not taken for "."
                provider=provider,
                ledger=ledger,
                profile=profile,
                progress=report,
            )
        return CopyResult(
            instance_id=result.instance_id,
            local_dir=str(result.local_dir),
            manifest_sha256=result.manifest_sha256,
            run_id=result.run_id,
            files=result.files,
            bytes_total=result.bytes_total,
            bytes_transferred=result.bytes_transferred,
            next=Step.of("verify", local_dir=str(result.local_dir)).call(),
        )

    return await _blocking(work)


async def sync(
    instance_id: InstanceIdArg,
    ctx: Context,
    job: Annotated[
        str | dict[str, Any] | None,
        Field(
            description=(
                "the run's job request (a path on the server, or the request as an object), "
                "only when rgt does not remember its `durable:` target (it does for its launches)"
            )
        ),
    ] = None,
) -> SyncResult:
    """Make a running job's new checkpoints durable (its job's `durable:` target: copied here,
    or the bucket the box pushes to) and verify each against the SHA-256 the box computed; one
    round, safe to repeat (nothing is copied or hashed twice). A mismatch is refused (listed in
    `refused`), never made durable; `newest` is what a relaunch resumes from. Sends progress
    notifications (bytes copied). The run tool does this by itself; call sync when you watch a
    job without it."""
    from rgt.durable import order_key, sync_once
    from rgt.job import JobRequest, load_job

    report = _progress_reporter(ctx, f"sync {instance_id}")

    def work() -> SyncResult:
        request = None
        if isinstance(job, dict):
            request = JobRequest.from_dict(job, source="job")
        elif job is not None:
            request = load_job(job)
        with _for_instance(instance_id) as (ledger, profile, provider):
            found = sync_once(
                ledger,
                instance_id,
                progress=report,
                provider=provider,
                profile=profile,
                job=request,
            )
        verified = sorted(found.verified, key=order_key)
        return SyncResult.model_validate(
            {
                **found.to_json(),
                "verified": [entry.to_json() for entry in verified[-SYNC_LISTED:]],
                "verified_count": len(verified),
                "next": _sync_next(found),
            }
        )

    return await _blocking(work)


def _sync_next(report: Any) -> str:
    """After a round: follow the job and sync again for its next checkpoints; a refused one
    is named first, so nobody resumes from it."""
    from rgt.nextstep import Step

    instance_id = report.instance_id
    follow = (
        f"{Step.of('poll', instance_id=instance_id).call()} to follow the job; "
        f"{Step.of('sync', instance_id=instance_id).call()} again for its next checkpoints"
    )
    if not report.refused:
        return follow
    names = ", ".join(refusal.name for refusal in report.refused)
    return f"NOT durable (its bytes off the box do not match the box's SHA-256): {names}; {follow}"


class VerifyResult(BaseModel):
    """What `verify` found: ok with the totals, or the problems; the per-file rows are in the
    `record` file (PULL_VERIFIED.json), not here. `next` is the tool call to make next."""

    ok: bool
    problems: list[str] = Field(default_factory=list)
    local_dir: str
    run_id: str | None = None
    instance_id: str | None = None
    manifest_sha256: str | None = None
    totals: dict[str, int] | None = None
    checkpoints: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float | None = None
    record: str | None = None
    next: str


def _verify_next(local_dir: Path, ok: bool, instance_id: str | None) -> str:
    """The step after a verification: destroy (the human approves in the client), or pull
    again into the same directory (the ledger's latest pull of the instance knows the root)."""
    from rgt.nextstep import Step

    if instance_id is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            import json

            manifest = json.loads((local_dir / "PULL_MANIFEST.json").read_bytes())
            instance_id = str(manifest["instance_id"]) if manifest.get("instance_id") else None
    if ok:
        return Step.of("destroy", instance_id=instance_id).call()
    root = None
    if instance_id:
        with _ledger() as ledger:
            pull = ledger.latest_pull(instance_id)
        root = pull.remote_root if pull is not None else None
    again = Step.of("copy", instance_id=instance_id, remote_root=root, local_dir=str(local_dir))
    return f"do NOT destroy: {again.call()} (it resumes), then verify again"


def _verify_in_subprocess(
    local_dir: str,
    instance_id: str | None,
    report: Callable[[int, int | None, str | None], None] | None = None,
) -> VerifyResult:
    """`rgt verify --json` in a child process, as the CLI runs: its hashing forks worker
    processes (a worker thread of this server cannot) and loading checkpoints imports torch,
    which stays out of the server's process. Its progress lines (--progress-lines) go to
    `report` as they come."""
    import json
    import subprocess
    import sys
    import threading

    from rgt.commands.verify import PROGRESS_PREFIX
    from rgt.errors import UsageError

    argv = [sys.executable, "-m", "rgt", "verify", "--json", "--progress-lines", local_dir]
    if instance_id is not None:
        argv += ["--instance-id", instance_id]
    child = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
    )
    stdout_pipe, stderr_pipe = child.stdout, child.stderr
    assert stdout_pipe is not None and stderr_pipe is not None
    out: list[str] = []
    # stdout is read beside stderr: a child blocked on a full pipe would never finish.
    reader = threading.Thread(target=lambda: out.append(stdout_pipe.read()), daemon=True)
    reader.start()
    lines = []
    for line in stderr_pipe:
        if not line.startswith(PROGRESS_PREFIX):
            if line.strip():
                lines.append(line.rstrip("\n"))
            continue
        done, _, total = line[len(PROGRESS_PREFIX) :].strip().partition(" ")
        if report is not None and done.isdigit() and total.isdigit():
            report(int(done), int(total), None)
    returncode = child.wait()
    reader.join()
    stdout = "".join(out)
    if returncode not in (0, 1) or not stdout.strip():
        # A usage error (not a directory, no manifest...): its one line, without "rgt verify: ".
        text = lines[-1] if lines else f"rgt verify exited with status {returncode}"
        raise UsageError(text.removeprefix("rgt verify: ").removeprefix("error: "))
    data = json.loads(stdout)
    where = Path(local_dir).resolve()
    found = data.get("instance_id") or instance_id
    return VerifyResult(
        ok=bool(data.get("ok")),
        problems=list(data.get("problems") or []),
        local_dir=str(data.get("local_dir") or where),
        run_id=data.get("run_id"),
        instance_id=found,
        manifest_sha256=data.get("manifest_sha256"),
        totals=data.get("totals"),
        checkpoints=list(data.get("checkpoints") or []),
        seconds=data.get("seconds"),
        record=data.get("record"),
        next=_verify_next(where, bool(data.get("ok")), found),
    )


async def verify(
    local_dir: Annotated[str, Field(description="the directory copy wrote into")],
    ctx: Context,
    instance_id: Annotated[
        str | None, Field(description="refuse unless the manifest is of this instance")
    ] = None,
) -> VerifyResult:
    """Verify a pull byte-for-byte against the manifest built on the box; records the
    verification in the ledger. A mismatch is a result with ok false and its problems (not an
    error). Checkpoints are loaded safely only: a pickle that needs a full unpickle is refused
    here (a human decides that with `rgt verify --allow-pickle` on a terminal). Sends progress
    notifications (bytes hashed) when the client asked for progress."""
    if instance_id is not None:
        _check_instance_id(DEFAULT_PROFILE, instance_id)
    report = _progress_reporter(ctx, f"verify {local_dir}")
    return await _blocking(lambda: _verify_in_subprocess(local_dir, instance_id, report))


async def logs(
    instance_id: InstanceIdArg,
    tail: Annotated[int, Field(ge=1, le=2000, description="how many last lines")] = 200,
) -> LogLines:
    """The container's last log lines: the first stop for a box stuck loading or a failing
    boot hook (the platform prepares them; secrets are redacted). `reference` names the
    reference entry a known pattern in them points at (an OOM, an NCCL timeout, a NaN loss;
    read it as the MCP resource rgt://references/<file>), else null."""
    from rgt.diagnose import diagnose

    def work() -> LogLines:
        with _for_instance(instance_id) as (_, _, provider):
            text = provider.logs(instance_id, tail=tail)
        lines = text.splitlines()[-tail:]
        diagnosis = diagnose(lines)
        reference = diagnosis.text() if diagnosis is not None else None
        return LogLines(instance_id=instance_id, lines=lines, reference=reference)

    return await _blocking(work)


async def stop(
    instance_id: InstanceIdArg,
) -> StopResult:
    """Stop an instance (reversible). The result says what keeps billing on this platform."""
    from rgt.lifecycle import stop as stop_instance

    def work() -> StopResult:
        with _for_instance(instance_id) as (ledger, profile, provider):
            return StopResult.model_validate(
                stop_instance(
                    instance_id, provider=provider, ledger=ledger, profile=profile, for_tool=True
                )
            )

    return await _blocking(work)


async def start(
    instance_id: InstanceIdArg,
    wait_seconds: Annotated[
        float, Field(ge=0, le=600, description="wait up to this long until it runs (0: no wait)")
    ] = 0.0,
) -> StartResult:
    """Start a stopped instance again: it bills COMPUTE again from now. Needed before copy (and
    the destroy gate, which reads the box) can reach a stopped box. Offline, preempted or
    scheduling boxes cannot be started; the error says what helps."""
    from rgt.lifecycle import start as start_instance

    def work() -> StartResult:
        with _for_instance(instance_id) as (ledger, profile, provider):
            return StartResult.model_validate(
                start_instance(
                    instance_id,
                    provider=provider,
                    ledger=ledger,
                    profile=profile,
                    wait_seconds=wait_seconds,
                    for_tool=True,
                )
            )

    return await _blocking(work)


async def cost(
    instance_id: Annotated[str | None, Field(description="one instance, or all")] = None,
    profile: ProfileArg = DEFAULT_PROFILE,
) -> CostReport:
    """Spend so far and the hourly burn of the instances rgt rented (estimates)."""
    from rgt.lifecycle import cost_report

    def work() -> CostReport:
        chosen = _profile(profile)
        if instance_id is not None:
            _check_instance_id(chosen.platform, instance_id)
        with _ledger() as ledger:
            return CostReport.model_validate(
                cost_report(
                    provider=_provider(chosen.platform),
                    ledger=ledger,
                    profile=chosen,
                    instance_id=instance_id,
                )
            )

    return await _blocking(work)


async def sweep(
    profile: Annotated[
        str | None,
        Field(description="one platform profile; default: every platform, as `platforms` lists"),
    ] = None,
) -> SweepResult:
    """Every instance the API key can see and every box attached over ssh, what it costs per
    hour and what keeps billing, including instances the ledger does not know. Without a
    profile, every platform: vast.ai (when a key is set) and each platform with attached boxes;
    `skipped` names a platform it could not sweep, and why."""
    from rgt.sweep import sweep as run_sweep
    from rgt.sweep import sweep_every_platform

    def work() -> SweepResult:
        with _ledger() as ledger:
            if profile is None:
                report = sweep_every_platform(ledger)
            else:
                chosen = _profile(profile)
                report = run_sweep(
                    provider=_provider(chosen.platform), ledger=ledger, profile=chosen
                )
        return SweepResult.model_validate(report.to_json())

    return await _blocking(work)


def build_server() -> MCPServer:
    """The rgt MCP server with every tool registered (strict arguments, annotations)."""
    idempotent_read = ToolAnnotations(
        read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True
    )
    tools = [
        strict_tool(list_profiles, annotations=idempotent_read),
        strict_tool(get_profile, annotations=idempotent_read),
        strict_tool(search_offers, annotations=idempotent_read),
        strict_tool(
            launch,
            title="Launch an instance (rents it: costs money)",
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True
            ),
        ),
        strict_tool(
            run,
            title="Supervise a run in the background (rents: costs money)",
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=False
            ),
        ),
        strict_tool(poll, annotations=idempotent_read),
        strict_tool(
            copy,
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True
            ),
        ),
        strict_tool(
            sync,
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True
            ),
        ),
        strict_tool(
            verify,
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=False,
                idempotent_hint=True,
                open_world_hint=False,
            ),
        ),
        strict_tool(
            destroy,
            title="Destroy an instance (Iron Law gate + human confirmation)",
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=True,
                idempotent_hint=True,
                open_world_hint=True,
            ),
        ),
        strict_tool(
            discard,
            title="Discard an instance with nothing to save (proven reason + human approval)",
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=True,
                idempotent_hint=True,
                open_world_hint=True,
            ),
        ),
        strict_tool(logs, annotations=idempotent_read),
        strict_tool(
            stop,
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True
            ),
        ),
        strict_tool(
            start,
            title="Start a stopped instance (bills compute again)",
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True
            ),
        ),
        strict_tool(cost, annotations=idempotent_read),
        strict_tool(sweep, annotations=idempotent_read),
    ]
    from rgt.mcp_server.resources import register_prompts, register_resources

    server = MCPServer(
        "rgt",
        title="remote-gpu-trainer",
        instructions=INSTRUCTIONS,
        version=__version__,
        tools=tools,
        resources=reference_resources(),
        log_level="WARNING",
    )
    register_resources(server)
    register_prompts(server)
    return server


REFERENCE_URI = "rgt://references/{name}"


def reference_resources() -> list[Resource]:
    """The bundled references (references/*.md) as read-only resources, one per file, so an
    agent can read the entry that SKILL.md, poll's next_action or logs names."""
    from rgt.references import load_catalog, references_dir

    entries, _ = load_catalog()
    resources: list[Resource] = []
    for path in sorted(references_dir().glob("*.md")):
        ids = [e.id for e in entries.values() if e.file == f"references/{path.name}"]
        title = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        listed = f" Entries: {ids[0]}…{ids[-1]}." if ids else ""
        resources.append(
            FileResource(
                uri=REFERENCE_URI.format(name=path.name),
                name=path.stem,
                title=title,
                description=f"rgt reference: {title}.{listed}",
                mime_type="text/markdown",
                path=path,
            )
        )
    return resources


def serve(*, http: bool = False, port: int = 8765) -> None:
    """Run the server: stdio (default) or streamable HTTP bound to 127.0.0.1 only, where
    every request must carry the bearer token (rgt.mcp_server.httpauth)."""
    server = build_server()
    if not http:
        server.run()
        return
    import sys

    import uvicorn

    from rgt.mcp_server.httpauth import BearerTokenMiddleware, load_or_create_token, token_path

    token, created = load_or_create_token()
    if created:
        # Shown this once, for the human's client configuration; kept owner-only on disk.
        sys.stderr.write(
            "rgt mcp --http: every request needs this bearer token (Authorization: Bearer "
            f"<token>); it is shown once and kept in {token_path()} (mode 0600):\n{token}\n"
        )
        sys.stderr.flush()
    app = BearerTokenMiddleware(server.streamable_http_app(host="127.0.0.1"), token)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
