"""vast.ai through the official `vastai` SDK (`vastai.VastAI`), behind rgt's Provider interface.

Why `VastAI` and not the SDK's `SyncClient`: `VastAI` returns the API's own JSON (every field,
nothing dropped by a dataclass), raises `requests.HTTPError` with the response attached (status,
Retry-After, the body's `msg`), and has a per-request timeout; `SyncClient` has no timeout and
no retry control. `VastAI`'s own retry loop is switched off (`retry=1` is one attempt): rgt
retries here, once, with a bound on attempts and total time, so retries never multiply.

Safety properties this module owns:
* The API key comes from `VAST_API_KEY` or the vastai key file, never from an argument, and
  never appears in a message, log record, captured SDK output or returned value (`Redactor`).
* `create` is idempotent by label: it looks for an instance with the label before renting,
  after any answer that leaves the outcome unknown (a 5xx, a lost or cut-off answer) and before
  every re-send whatever the failure (vast.ai can rate-limit a create it carried out), so a
  retried create never rents a second box.
* `create` refuses, before any request, a boot hook, image or env value that holds the API
  key's value or a secret_env value (also base64- or gzip-packed): secrets reach a box only as
  their own env var.
* `show` says "gone" only when the list endpoint and a second show agree: one 404 is not proof.
* Interruptible rentals need an explicit bid; rgt never falls back to on-demand silently.
* Secret env vars are passed by NAME and resolved from the local environment at create time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rgt.errors import ProviderError, UsageError
from rgt.providers.base import (
    LABEL_PREFIX,
    CopyResult,
    CreateRefused,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
    ProgressCallback,
    run_label,
)

__all__ = ["LABEL_PREFIX", "VastProvider", "api_key_from_environment", "run_label", "vast_id"]
from rgt.providers.redact import Redactor, captured_output, install_log_filter
from rgt.providers.retry import RETRYABLE_STATUS, RetryClock, RetryPolicy, parse_retry_after
from rgt.providers.rsync import (
    CopySettings,
    SshEndpoint,
    SshSettings,
    low_priority_copy,
    read_remote_file,
    rsync_pull,
)

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://console.vast.ai"
URL_ENV = "VAST_URL"  # the variable the vastai CLI and SDK honour
KEY_ENV = "VAST_API_KEY"
# What the key is called in a refusal (never its value).
KEY_NAME = "this account's vast.ai API key"
DEBUG_ENV = "RGT_VAST_DEBUG"  # 1: log the SDK's request dumps (redacted) at DEBUG
# Per-request timeout handed to the SDK (its default is 120 s).
REQUEST_TIMEOUT_SECONDS = 60.0
# How a cloud copy shows in the instance's status bar (status_msg): `vastai cloud copy` tells
# the user to wait for the "finished" text there.
CLOUD_COPY_FINISHED = "Cloud Copy Operation Finished"
CLOUD_COPY_FAILED = "Cloud Copy Operation Failed"

T = TypeVar("T")


# The SDK's parts rgt never uses (serverless workers, the sync/async clients: aiohttp and more):
# `import vastai` loads them by default, 0.44 s of CPU of its 0.58 s here, paid by every `rgt`
# command and `rgt mcp` that talks to vast.ai.
_UNUSED_SDK_PARTS = ("vastai.serverless", "vastai.sync", "vastai.async_")


_SDK_IMPORT = threading.Lock()


def import_sdk() -> Any:
    """The `vastai` package without the parts rgt never uses: its __init__ falls back to None
    for them, as it does where their dependencies are not installed (0.14 s of CPU instead of
    0.44). Afterwards they import normally again. Thread-safe: the demo builds providers in
    several threads at once, and a thread must never get the package half-initialized."""
    import sys

    with _SDK_IMPORT:
        if "vastai" not in sys.modules:
            blocked = [name for name in _UNUSED_SDK_PARTS if name not in sys.modules]
            for name in blocked:
                sys.modules[name] = None  # type: ignore[assignment]  # None: "import fails"
            try:
                import vastai
            finally:
                for name in blocked:
                    if sys.modules.get(name, False) is None:
                        del sys.modules[name]
    # An import statement, not sys.modules: it waits for an import another thread has begun.
    import vastai

    return vastai


def api_key_from_environment() -> str:
    """The vast.ai API key: $VAST_API_KEY, else the vastai CLI's key file.

    Key files, in the vastai CLI's order: $XDG_CONFIG_HOME/vastai/vast_api_key (default
    ~/.config), then the legacy ~/.vast_api_key. Raises UsageError when none is set."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return _printable_key(key, f"${KEY_ENV}")
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidates = [Path(config_home) / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"]
    for path in candidates:
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        except UnicodeDecodeError:  # never echo the bytes: they may be a mangled key
            raise UsageError(
                f"vast.ai key file {path}: not text; write the key on one line (`vastai set "
                f"api-key`) or set {KEY_ENV}"
            ) from None
        if key:
            return _printable_key(key, f"vast.ai key file {path}")
    raise UsageError(
        f"no vast.ai API key: set {KEY_ENV} or run `vastai set api-key` "
        f"(which writes {candidates[0]})"
    )


def _printable_key(key: str, source: str) -> str:
    """`key` if it can travel in an HTTP header; else a UsageError naming where it came from,
    never showing it (a mangled key is still mostly a key). Non-UTF-8 bytes in the environment
    arrive as surrogates, which no encoder takes."""
    if key.isascii() and key.isprintable():
        return key
    raise UsageError(
        f"{source}: the API key holds characters that are not printable ASCII (value not "
        "shown); set it again to the key from your vast.ai account page"
    )


@dataclass
class _CallError:
    """A failed SDK call, reduced to what decides the next step (no request objects kept:
    they carry the Authorization header)."""

    description: str
    status: int | None = None
    retry_after: float | None = None
    retryable: bool = False
    ambiguous: bool = True  # the request may have reached the server and taken effect


class VastProvider:
    """vast.ai behind rgt's Provider interface."""

    platform = "vastai"

    def __init__(
        self,
        api_url: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        copy: CopySettings | None = None,
    ) -> None:
        url = api_url or os.environ.get(URL_ENV) or DEFAULT_API_URL
        # The SDK does not strip a trailing slash and would request `//api/v0/...`.
        self.api_url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.copy_settings = copy or CopySettings()
        key = api_key_from_environment()
        # The redactor masks the key everywhere and lets create refuse to send it to a box.
        self._redactor = Redactor()
        self._redactor.add(key, name=KEY_NAME)
        install_log_filter(self._redactor, __name__, "rgt.providers.rsync")
        vastai = import_sdk()  # imported here: `rgt lint` and friends must not pay for the SDK

        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        with captured_output(self._redactor, log):
            self._sdk = vastai.VastAI(api_key=key, server_url=self.api_url, retry=1, explain=debug)
        self._sdk.client.timeout = REQUEST_TIMEOUT_SECONDS

    def __repr__(self) -> str:  # the default repr would walk into the SDK client and its key
        return f"VastProvider(api_url={self.api_url!r})"

    # -- the API call wrapper ------------------------------------------------------------
    def _attempt(self, call: Callable[[], T]) -> tuple[T | None, _CallError | None]:
        """One SDK call with output captured; an exception becomes a `_CallError`."""
        import requests

        try:
            with captured_output(self._redactor, log):
                return call(), None
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else None
            detail = _error_detail(response) if response is not None else ""
            text = f"HTTP {status}" + (f": {detail}" if detail else "")
            retry_after = (
                parse_retry_after(response.headers.get("Retry-After"))
                if response is not None
                else None
            )
            quota = "search_quota_exceeded" in detail
            return None, _CallError(
                self._redactor.one_line(text),
                status=status,
                retry_after=retry_after,
                retryable=status in RETRYABLE_STATUS and not quota,
                # A 4xx was refused before anything happened; a 5xx may have half-happened, and
                # vast.ai can rate-limit (429) a request it carried out.
                ambiguous=status is None or status >= 500 or status == 429,
            )
        except requests.Timeout:
            return None, _CallError(
                f"no answer within {REQUEST_TIMEOUT_SECONDS:.0f}s", retryable=True
            )
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            requests.exceptions.JSONDecodeError,
        ) as exc:
            # The server took the request and its answer was cut off or garbled on the way
            # back: what was asked may well be done. A read is safe to send again; a create
            # looks for its label first (_create_once). Before the ValueError branch below:
            # a JSONDecodeError is a ValueError too.
            return None, _CallError(
                f"the answer was cut off ({type(exc).__name__}); the request may have been "
                "carried out",
                retryable=True,
            )
        except requests.ConnectionError:
            return None, _CallError(f"cannot connect to {self.api_url}", retryable=True)
        except (KeyError, TypeError, ValueError) as exc:
            # The SDK post-processes rows (start_date, extra_env); a malformed answer lands here.
            return None, _CallError(
                "unexpected answer from the API: " + self._redactor.one_line(exc, limit=120),
                ambiguous=True,
            )
        except requests.RequestException as exc:  # a bad URL, too many redirects, ...
            return None, _CallError(
                type(exc).__name__ + ": " + self._redactor.one_line(exc, limit=160),
                ambiguous=False,
            )
        except TimeoutError as exc:  # logs: the result URL never became ready
            return None, _CallError(self._redactor.one_line(exc, limit=160), retryable=True)

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """Run an idempotent SDK call with bounded retries; raise one clean ProviderError."""
        clock = RetryClock(self.retry)
        while True:
            attempt = clock.start_attempt()
            result, error = self._attempt(call)
            if error is None:
                return result  # type: ignore[return-value]
            if error.retryable:
                waited = clock.wait_before_retry(error.retry_after)
                if waited is not None:
                    log.info(
                        "vast.ai %s: %s; retry %d in %.1fs",
                        what,
                        error.description,
                        attempt,
                        waited,
                    )
                    continue
            raise self._failure(what, error, attempt)

    def _failure(self, what: str, error: _CallError, attempts: int) -> ProviderError:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        hint = ""
        if error.status == 401:
            hint = f" (check {KEY_ENV} or the vastai key file)"
        elif error.status == 429 and error.retry_after is not None:
            hint = f" (vast.ai asked to wait {error.retry_after:.0f}s)"
        return ProviderError(
            self._redactor.one_line(f"vast.ai {what} failed{tries}: {error.description}{hint}")
        )

    # -- Provider -------------------------------------------------------------------------
    def search_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers matching `query`, cheapest first (by the price the rental would pay)."""
        filters = _offer_filters(query)
        order = "min_bid" if query.interruptible else "dph_total"
        if query.order == "dlperf_per_dollar":
            order = "dlperf_per_dphtotal-"  # the API's own ratio, best first
        rows = self._call(
            "search offers",
            lambda: self._sdk.search_offers(
                query=filters,
                type="bid" if query.interruptible else "on-demand",
                order=order,
                limit=max(query.limit * 4, query.limit),
                storage=float(query.disk_gb or 5.0),
                no_default=True,  # rgt's filters are explicit, not the SDK's defaults
            ),
        )
        # Re-check every filter here: an API that ignores one must not let an unverified or
        # unreachable host through.
        offers = [_offer(row) for row in rows if isinstance(row, dict)]
        offers = [offer for offer in offers if _offer_matches(offer, query)]
        offers.sort(key=lambda o: (_offer_price(o, query.interruptible), o.id))
        if query.order == "dlperf_per_dollar":
            offers.sort(key=lambda o: -dlperf_per_dollar(o, query.interruptible))
        return offers[: query.limit]

    def create(
        self,
        offer_id: str,
        *,
        image: str,
        disk_gb: float,
        onstart: str,
        label: str,
        env: dict[str, str] | None = None,
        interruptible: bool = False,
        bid_per_hour: float | None = None,
        secret_env: Sequence[str] = (),
    ) -> Instance:
        """Rent `offer_id` with ssh + direct access; idempotent by `label`.

        `secret_env` names environment variables whose values are read from the local
        environment now and passed to the box; values never pass through arguments. Raises
        UsageError for a bad request (no bid for interruptible, missing secret), ProviderError
        when vast.ai refuses or stays unreachable."""
        if not label.startswith(LABEL_PREFIX) or len(label) == len(LABEL_PREFIX):
            raise UsageError(
                f"label {label!r} must be {LABEL_PREFIX}<run_id>: the label is how rgt finds "
                "its instances again (use rgt.providers.base.run_label)"
            )
        if interruptible:
            if bid_per_hour is None or bid_per_hour <= 0:
                raise UsageError(
                    "interruptible rental needs an explicit bid_per_hour > 0 "
                    "(rgt never rents on-demand when interruptible was asked)"
                )
        elif bid_per_hour is not None:
            raise UsageError("bid_per_hour is only for interruptible rentals")
        if disk_gb <= 0:
            raise UsageError(f"disk_gb {disk_gb} must be > 0")
        box_env = dict(env or {})
        missing = []
        for name in secret_env:
            value = os.environ.get(name)
            if not value:
                missing.append(name)
                continue
            box_env[name] = value
            self._redactor.add(value, name=secret_name(name))
        if missing:
            raise UsageError(
                "secret env var(s) not set in this environment: "
                + ", ".join(missing)
                + " (rgt passes secrets by name and reads their values locally at create)"
            )
        self._refuse_secrets_in_job_text(image, onstart, box_env, secret_env)

        # One create per label at a time on this machine: two processes retrying the same
        # launch must not both find "no instance yet" and both rent.
        with _label_lock(self.platform, label):
            return self._create_once(
                offer_id,
                {
                    "image": image,
                    "disk": float(disk_gb),
                    "env": box_env,
                    "label": label,
                    "onstart_cmd": onstart,
                    "bid_price": bid_per_hour if interruptible else None,
                    "ssh": True,
                    "direct": True,  # rsync/ssh straight to the host, not through a proxy
                },
            )

    def _refuse_secrets_in_job_text(
        self,
        image: str,
        onstart: str,
        box_env: dict[str, str],
        secret_env: Sequence[str],
    ) -> None:
        """UsageError (nothing rented) when what the create would send holds the API key's
        value or a secret_env value anywhere but in that secret's own env var.

        The boot hook carries the job's command, setup and files (a file as base64, the whole
        hook gzip+base64 when over the size limit: both are looked into). The refusal names
        the field and the secret, never the value."""
        fields: list[tuple[str, str, list[str]]] = [
            ("onstart", onstart, []),
            ("image", image, []),
            *(
                # A secret's own variable carries its own value; never the API key (a value
                # that is also the key keeps the key's name, so it is not excepted).
                (f"env {name}", value, [secret_name(name)] if name in secret_env else [])
                for name, value in box_env.items()
            ),
        ]
        for field_name, text, except_names in fields:
            found = self._redactor.secret_in(text, except_names=except_names)
            if found is None:
                continue
            where = (
                " (the boot hook, rendered from the job's command, setup and files)"
                if field_name == "onstart"
                else ""
            )
            why = (
                "the job and the host could rent, or destroy, on your account"
                if found == KEY_NAME
                else "a secret reaches the box only by name, in secret_env, as its own env var"
            )
            raise UsageError(
                f"{field_name}: holds {found}{where}; rgt never sends it to a box "
                f"({why}); remove it from the job; nothing was rented"
            )

    def _create_once(self, offer_id: str, create: dict[str, Any]) -> Instance:
        """Find the label's instance, else rent one, with bounded retries that look for the
        label after every failure whose effect is unknown and before every re-send."""
        label = str(create["label"])
        offer_number = vast_id(offer_id, what="offer id")
        existing = self._find_by_label(label)
        if existing is not None:
            log.info(
                "instance %s already carries label %s; not renting another", existing.id, label
            )
            return existing
        clock = RetryClock(self.retry)
        while True:
            attempt = clock.start_attempt()
            answer, error = self._attempt(
                lambda: self._sdk.create_instance(id=offer_number, **create)
            )
            if error is None:
                new_id = answer.get("new_contract") if isinstance(answer, dict) else None
                if isinstance(answer, dict) and answer.get("success") and new_id:
                    return self._created(str(new_id), label)
                detail = _body_detail(answer) if isinstance(answer, dict) else str(answer)
                error = _CallError(
                    self._redactor.one_line(f"offer {offer_id} refused: {detail}"),
                    ambiguous=False,
                )
            waited = clock.wait_before_retry(error.retry_after) if error.retryable else None
            if error.ambiguous or waited is not None:
                # Look before anything else: after an unknown outcome the box may have been
                # rented although the answer was lost, and before a re-send even a 429 is no
                # proof (vast.ai can rate-limit a create it carried out). Looking after the
                # backoff lets a create the server was still finishing show up in the list.
                existing = self._look_for_label(label, error)
                if existing is not None:
                    log.info(
                        "create %s: %s, but instance %s carries the label; using it",
                        label,
                        error.description,
                        existing.id,
                    )
                    return existing
            if waited is None:
                failure = self._failure(f"create {label}", error, attempt)
                if not error.ambiguous:  # refused outright: nothing was rented
                    raise CreateRefused(failure.message)
                raise failure
            log.info(
                "vast.ai create %s: %s; retry %d after %.1fs",
                label,
                error.description,
                attempt,
                waited,
            )

    def _look_for_label(self, label: str, error: _CallError) -> Instance | None:
        """The label's instance after a failed create; when the look-up fails too, nothing may
        be sent again: a ProviderError saying the outcome is unknown."""
        try:
            return self._find_by_label(label)
        except ProviderError as lookup:
            raise ProviderError(
                self._redactor.one_line(
                    f"vast.ai create {label}: {error.description}; whether it rented a box is "
                    f"unknown: looking for the label failed too ({lookup})"
                )
            ) from None

    def _created(self, instance_id: str, label: str) -> Instance:
        """The instance a create answered with; its id alone when show cannot be read (the box
        is rented: the caller must record it, not fail)."""
        try:
            return self.show(instance_id)
        except ProviderError as exc:
            log.warning("instance %s was rented but show failed: %s", instance_id, exc)
            return Instance(id=instance_id, state="unknown", label=label)

    def show(self, instance_id: str) -> Instance:
        """The instance now; `state == "gone"` once destroyed: a null row or a 404 from show,
        confirmed by the list endpoint (the id absent) and a second show."""
        import requests

        number = vast_id(instance_id)

        def fetch() -> dict[str, Any] | None:
            try:
                return self._sdk.show_instance(number)
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    if _has_json_body(exc.response):
                        return None
                    # A bare 404 (HTML, empty) is not the API saying "no such instance": a
                    # VAST_URL pointing at some other web server would make every box "gone".
                    raise ProviderError(
                        f"vast.ai show instance {instance_id}: {self.api_url} answered 404 "
                        f"without an API body; is {URL_ENV} the vast.ai API (unset: "
                        f"{DEFAULT_API_URL})? The instance is NOT assumed gone"
                    ) from None
                raise

        row = self._call(f"show instance {instance_id}", fetch)
        if row is not None:
            return self._instance(row)
        # One "no such instance" is not proof: vast.ai has answered 404 for a box that runs.
        # Ask the list endpoint, then show again; "gone" only when all three agree.
        listed = [i for i in self.list_instances() if i.id == str(number)]
        if listed:
            log.info("show %s said gone, but the list has it: %s", number, listed[0].state)
            return listed[0]
        row = self._call(f"show instance {instance_id}", fetch)
        if row is not None:
            log.info("show %s said gone, then answered with the instance", number)
            return self._instance(row)
        return Instance(id=str(instance_id), state="gone")

    def list_instances(self) -> list[Instance]:
        """Every instance the API key can see, all pages."""
        rows = self._call("list instances", self._sdk.show_instances)
        return [self._instance(row) for row in rows if isinstance(row, dict)]

    def stop(self, instance_id: str) -> None:
        """Stop the container; on vast.ai its disk keeps billing until destroy."""
        number = vast_id(instance_id)
        self._change(instance_id, "stop", lambda: self._sdk.stop_instance(number))

    def start(self, instance_id: str) -> None:
        """Start a stopped instance; it may wait in `scheduling` until its GPU is free."""
        number = vast_id(instance_id)
        self._change(instance_id, "start", lambda: self._sdk.start_instance(number))

    def destroy(self, instance_id: str) -> None:
        """Destroy the instance and its disk. Irreversible: only rgt.gate calls this."""
        import requests

        number = vast_id(instance_id)
        tried = []

        def send() -> Any:
            tried.append(1)
            try:
                return self._sdk.destroy_instance(number)
            except requests.HTTPError as exc:
                # A 404 after an attempt whose answer was lost means that attempt worked.
                if len(tried) > 1 and exc.response is not None and exc.response.status_code == 404:
                    return {"success": True}
                raise

        self._change(instance_id, "destroy", send)

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        """The container's last `tail` log lines (vast.ai prepares them behind a result URL)."""
        number = vast_id(instance_id)
        text = self._call(
            f"logs of instance {instance_id}",
            lambda: self._sdk.logs(number, tail=str(int(tail))),
        )
        if isinstance(text, dict):  # no result_url: the API answered with a message instead
            raise ProviderError(
                self._redactor.one_line(f"vast.ai logs of {instance_id}: {_body_detail(text)}")
            )
        return self._redactor.text(str(text))

    def read_remote_file(self, instance_id: str, remote_path: str) -> bytes:
        """One small file off the box, over its direct ssh endpoint."""
        endpoint = self._endpoint(instance_id)
        return read_remote_file(endpoint, remote_path, self._ssh_settings(instance_id))

    def run_remote_command(
        self, instance_id: str, argv: Sequence[str], *, max_bytes: int, timeout: float = 120.0
    ) -> bytes:
        """Run `argv` on the box over its direct ssh endpoint; output bounded by `max_bytes`."""
        from rgt.providers.sshexec import run_remote_command

        endpoint = self._endpoint(instance_id)
        return run_remote_command(
            endpoint,
            argv,
            self._ssh_settings(instance_id),
            max_bytes=max_bytes,
            timeout=timeout,
        )

    def copy_from(
        self,
        instance_id: str,
        remote_path: str,
        local_dir: Path,
        *,
        progress: ProgressCallback | None = None,
        files: Sequence[str] | None = None,
        low_priority: bool = False,
    ) -> CopyResult:
        """Copy `remote_path` into `local_dir` with rsync over ssh, resumably, bounded."""
        endpoint = self._endpoint(instance_id)
        report = rsync_pull(
            endpoint,
            remote_path,
            Path(local_dir),
            self._ssh_settings(instance_id),
            copy=low_priority_copy(self.copy_settings) if low_priority else self.copy_settings,
            progress=progress,
            files=files,
        )
        return report.copy_result()

    def copy_to(self, instance_id: str, local_file: Path, remote_dir: str) -> CopyResult:
        """Upload one file into `remote_dir` on the box with rsync over ssh, resumably."""
        from rgt.providers.rsync import rsync_push

        endpoint = self._endpoint(instance_id)
        report = rsync_push(
            endpoint,
            Path(local_file),
            remote_dir,
            self._ssh_settings(instance_id),
            copy=self.copy_settings,
        )
        return report.copy_result()

    def cloud_copy_out(
        self,
        instance_id: str,
        src: str,
        connection_name: str,
        dst: str,
        *,
        wait_seconds: float = 900.0,
        poll_seconds: float = 2.0,
    ) -> None:
        """Copy box path `src` to `dst` in the account's cloud connection named
        `connection_name` with vast.ai's own route (`vastai cloud copy`, "Instance to Cloud"):
        the host copies, so it works while the instance is stopped (its upload bandwidth is
        billed). Waits, bounded, until the instance's status message says it finished."""
        rows = self._call("list cloud connections", lambda: self._sdk.show_connections())
        found = [
            row
            for row in (rows if isinstance(rows, list) else [])
            if isinstance(row, dict) and row.get("name") == connection_name
        ]
        if not found:
            raise ProviderError(
                f"vast.ai has no cloud connection named {connection_name!r} (`vastai show "
                "connections`); add one for the bucket in the console, named like the job's "
                "rclone remote"
            )
        answer = self._call(
            f"cloud copy of {src} from instance {instance_id}",
            lambda: self._sdk.cloud_copy(
                src=src,
                dst=dst,
                instance=str(instance_id),
                connection=str(found[0].get("id")),
                transfer="Instance to Cloud",
            ),
        )
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ProviderError(
                self._redactor.one_line(f"vast.ai cloud copy refused: {_body_detail(answer)}")
            )
        deadline = time.monotonic() + wait_seconds
        while True:
            message = self.show(instance_id).status_msg or ""
            if CLOUD_COPY_FAILED in message:
                raise ProviderError(f"vast.ai cloud copy of {src}: {message}")
            if CLOUD_COPY_FINISHED in message:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"vast.ai cloud copy of {src} not finished after {wait_seconds:.0f}s "
                    f"(status: {message or 'none'})"
                )
            time.sleep(poll_seconds)

    # -- helpers ---------------------------------------------------------------------------
    def _change(self, instance_id: str, verb: str, call: Callable[[], Any]) -> None:
        answer = self._call(f"{verb} instance {instance_id}", call)
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ProviderError(
                self._redactor.one_line(
                    f"vast.ai {verb} instance {instance_id} refused: {_body_detail(answer)}"
                )
            )

    def _find_by_label(self, label: str) -> Instance | None:
        matches = [i for i in self.list_instances() if i.label == label]
        if len(matches) > 1:
            log.warning(
                "%d instances carry label %s: %s",
                len(matches),
                label,
                ", ".join(i.id for i in matches),
            )
        return min(matches, key=lambda i: int(i.id) if i.id.isdigit() else 0, default=None)

    def _endpoint(self, instance_id: str) -> SshEndpoint:
        instance = self.show(instance_id)
        if instance.state != "running" or not instance.ssh_host or not instance.ssh_port:
            raise ProviderError(
                f"instance {instance_id} is {instance.state}"
                + ("" if instance.ssh_host else ", with no ssh endpoint")
                + "; it must be running to copy from it"
            )
        return SshEndpoint(instance.ssh_host, instance.ssh_port)

    def _ssh_settings(self, instance_id: str) -> SshSettings:
        from rgt.paths import state_dir

        # One known_hosts per box: vast.ai reuses host:port pairs across rentals, so a shared
        # file would either refuse a new box or have to trust every key change.
        known = state_dir() / "known_hosts.d" / f"{self.platform}-{instance_id}"
        return SshSettings.from_environment(known)

    def _instance(self, row: dict[str, Any]) -> Instance:
        host, port = _ssh_endpoint(row)
        disk = row.get("disk_space")
        return Instance(
            id=str(row.get("id")),
            state=instance_state(row),
            label=row.get("label"),
            status_msg=_text(row.get("status_msg")),
            actual_status=_text(row.get("actual_status")),
            intended_status=_text(row.get("intended_status")),
            cur_state=_text(row.get("cur_state")),
            ssh_host=host,
            ssh_port=port,
            dph_total=_float(row.get("dph_total")),
            disk_gb=float(disk) if isinstance(disk, (int, float)) else None,
            interruptible=bool(row["is_bid"]) if row.get("is_bid") is not None else None,
            gpu_name=_text(row.get("gpu_name")),
            raw=self._redactor.data(_safe_row(row)),
        )


@contextlib.contextmanager
def _label_lock(platform: str, label: str) -> Iterator[None]:
    """An exclusive per-label file lock under rgt's state dir (released if the process dies)."""
    from rgt.paths import state_dir

    locks = state_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(label.encode()).hexdigest()[:24]
    with open(locks / f"{platform}-create-{name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- pure mapping functions (no I/O) -----------------------------------------------------------


def instance_state(row: dict[str, Any] | None) -> InstanceState:
    """vast.ai's actual/intended/cur_state/status_msg read as one provider-neutral state.

    vast.ai reports what the container is doing (`actual_status`) and what was asked for
    (`intended_status`) separately; the combination says whether a non-running box was
    stopped on request, is waiting for its GPU (VAST3) or was outbid (interruptible)."""
    if row is None:
        return "gone"
    actual = (_text(row.get("actual_status")) or "").lower()
    intended = (_text(row.get("intended_status")) or "").lower()
    cur = (_text(row.get("cur_state")) or "").lower()
    message = (_text(row.get("status_msg")) or "").lower()
    if actual in ("destroyed", "terminated", "deleted") or cur == "unloaded":
        return "gone"
    if actual == "offline":
        return "offline"
    if actual == "running":
        return "running"
    if actual in ("loading", "rebooting", "starting"):
        return "loading"
    if actual == "scheduling" or "schedul" in message:
        return "scheduling"
    if actual == "frozen" or "outbid" in message or "preempt" in message:
        return "paused"
    if actual in ("", "created", "none", "null"):
        return "stopped" if intended == "stopped" else "provisioning"
    if actual in ("stopped", "exited"):
        if intended == "stopped":
            return "stopped"
        if intended == "running":
            # Wants to run but is not: an outbid bid waits for its price, an on-demand box
            # waits for its GPU; an exited container crashed on its own.
            if row.get("is_bid"):
                return "paused"
            return "exited" if actual == "exited" else "scheduling"
        return "stopped" if actual == "stopped" else "exited"
    return "unknown"


def _ssh_endpoint(row: dict[str, Any]) -> tuple[str | None, int | None]:
    """The direct endpoint (public_ipaddr + the host port mapped to 22/tcp) if there is one,
    else the ssh_host/ssh_port pair vast.ai reports (its proxy on the real service)."""
    ports = row.get("ports")
    if isinstance(ports, dict) and row.get("public_ipaddr"):
        mapped = ports.get("22/tcp")
        if isinstance(mapped, list) and mapped and isinstance(mapped[0], dict):
            port = _int(mapped[0].get("HostPort"))
            if port:
                return str(row["public_ipaddr"]).strip(), port
    host, port = row.get("ssh_host"), _int(row.get("ssh_port"))
    if host and port:
        return str(host).strip(), port
    return None, None


# Fields that hold credentials or secret values on an instance row.
_SECRET_FIELDS = frozenset({"api_key", "instance_api_key", "jupyter_token", "onstart"})


def _safe_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row without credential fields, and env values masked (they may be secrets)."""
    safe = {k: v for k, v in row.items() if k not in _SECRET_FIELDS}
    env = safe.get("extra_env")
    if isinstance(env, dict):
        safe["extra_env"] = {str(k): "***" for k in env}
    elif isinstance(env, list):
        safe["extra_env"] = [[pair[0], "***"] for pair in env if isinstance(pair, list) and pair]
    return safe


def _offer_filters(query: OfferQuery) -> dict[str, Any]:
    filters: dict[str, Any] = {
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "num_gpus": {"eq": query.num_gpus},
        "direct_port_count": {"gte": query.min_direct_ports},
        "reliability": {"gte": query.min_reliability},
    }
    if query.verified_only:
        filters["verified"] = {"eq": True}
    if query.gpu_name:
        filters["gpu_name"] = {"eq": _gpu_name(query.gpu_name)}
    if query.max_price_per_hour is not None:
        price_field = "min_bid" if query.interruptible else "dph_total"
        filters[price_field] = {"lte": query.max_price_per_hour}
    if query.disk_gb is not None:
        filters["disk_space"] = {"gte": query.disk_gb}
    # The API's units: GPU and CPU RAM in MB, disk bandwidth in MB/s, inet in Mb/s.
    for field_name, value, scale in _minimums(query):
        if value is not None:
            filters[field_name] = {"gte": value * scale}
    return filters


def _minimums(query: OfferQuery) -> list[tuple[str, float | None, float]]:
    """(API field, the query's minimum, its unit scale) of each minimum a user may ask for."""
    return [
        ("gpu_ram", query.min_gpu_ram_gb, 1000.0),
        ("cuda_max_good", query.min_cuda, 1.0),
        ("cpu_ram", query.min_ram_gb, 1000.0),
        ("disk_bw", query.min_disk_mb_per_s, 1.0),
        ("inet_down", query.min_inet_down_mbps, 1.0),
        ("inet_up", query.min_inet_up_mbps, 1.0),
    ]


def dlperf_per_dollar(offer: Offer, interruptible: bool) -> float:
    """DLPerf (vast.ai's deep-learning throughput score) per $/hour the rental would pay."""
    price = _offer_price(offer, interruptible)
    return (offer.dlperf or 0.0) / price if price > 0 else 0.0


def _in_regions(location: str | None, regions: tuple[str, ...]) -> bool:
    """vast.ai's geolocation ends with the country code ("Texas, US", "SE")."""
    if not regions:
        return True
    code = (location or "").rsplit(",", 1)[-1].strip().casefold()
    return code in {region.strip().casefold() for region in regions}


def _offer_matches(offer: Offer, query: OfferQuery) -> bool:
    raw = offer.raw
    if query.verified_only and not offer.verified:
        return False
    if raw.get("rentable") is False or raw.get("rented") is True:
        return False
    if offer.direct_port_count < query.min_direct_ports:
        return False
    if offer.reliability < query.min_reliability:
        return False
    if offer.num_gpus != query.num_gpus:
        return False
    if query.gpu_name and offer.gpu_name.casefold() != _gpu_name(query.gpu_name).casefold():
        return False
    price = _offer_price(offer, query.interruptible)
    if query.max_price_per_hour is not None and price > query.max_price_per_hour:
        return False
    disk = _float(raw.get("disk_space"))
    if query.disk_gb is not None and disk is not None and disk < query.disk_gb:
        return False
    for field_name, value, scale in _minimums(query):
        actual = _float(raw.get(field_name))
        # An offer that does not state a value asked for cannot be shown to meet it.
        if value is not None and (actual is None or actual < value * scale):
            return False
    return _in_regions(offer.region, query.regions)


def _offer_price(offer: Offer, interruptible: bool) -> float:
    return offer.min_bid if interruptible and offer.min_bid > 0 else offer.dph_total


def _offer(row: dict[str, Any]) -> Offer:
    verification = row.get("verification")
    verified = row.get("verified")
    return Offer(
        id=str(row.get("id")),
        gpu_name=str(row.get("gpu_name") or ""),
        num_gpus=_int(row.get("num_gpus")) or 0,
        dph_total=_float(row.get("dph_total")) or 0.0,
        min_bid=_float(row.get("min_bid")) or 0.0,
        storage_cost_per_gb_month=_float(row.get("storage_cost")) or 0.0,
        inet_up_cost_per_gb=_float(row.get("inet_up_cost")) or 0.0,
        inet_down_cost_per_gb=_float(row.get("inet_down_cost")) or 0.0,
        reliability=_float(row.get("reliability", row.get("reliability2"))) or 0.0,
        verified=bool(verified) if verified is not None else verification == "verified",
        direct_port_count=_int(row.get("direct_port_count")) or 0,
        machine_id=str(row.get("machine_id", "")),
        host_id=str(row.get("host_id", "")),
        raw=row,
        gpu_ram_gb=_per_thousand(row.get("gpu_ram")),
        cuda_max_good=_float(row.get("cuda_max_good")),
        region=str(row["geolocation"]) if row.get("geolocation") else None,
        ram_gb=_per_thousand(row.get("cpu_ram")),
        disk_mb_per_s=_float(row.get("disk_bw")),
        inet_down_mbps=_float(row.get("inet_down")),
        inet_up_mbps=_float(row.get("inet_up")),
        dlperf=_float(row.get("dlperf")),
    )


def _per_thousand(value: Any) -> float | None:
    """MB as the API reports RAM -> GB (vast.ai's MB are 1000-based in its own GB display)."""
    number = _float(value)
    return None if number is None else round(number / 1000.0, 1)


def _gpu_name(name: str) -> str:
    # vast.ai names GPUs with spaces ("RTX 4090"); job files use RTX_4090 like the CLI does.
    return name.replace("_", " ").strip()


def _has_json_body(response: Any) -> bool:
    """True when an error answer carries the API's JSON object (vast.ai's `{"msg": ...}`)."""
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


def _error_detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.reason or "").strip()
    return _body_detail(body) if isinstance(body, dict) else ""


def _body_detail(body: dict[str, Any]) -> str:
    parts = [str(body[k]) for k in ("error", "msg", "detail") if body.get(k)]
    return ": ".join(parts) or "no detail given"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def secret_name(variable: str) -> str:
    """What a secret_env value is called in a refusal (never the value)."""
    return f"the value of the secret_env variable {variable}"


def vast_id(value: str, *, what: str = "instance id") -> int:
    """A vast.ai instance or offer id as the API takes it; a user's typo is a UsageError (exit 2)
    here, before any request, not an SDK `int()` failure reported as an API error. Exactly one
    form is accepted (no spaces, newlines or leading zeros): `" 42"` or `"042"` would otherwise
    name instance 42 in the API and another string in the ledger and the locks."""
    text = str(value)
    if not text.isascii() or not text.isdigit() or text.startswith("0"):
        raise UsageError(f"{what} {value!r}: vast.ai ids are positive whole numbers, e.g. 4504940")
    return int(text)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
