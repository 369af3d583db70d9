"""The emulator's HTTP face: the vast.ai REST routes the `vastai` CLI/SDK use, plus /_sim/.

Paths, bodies and headers follow what `vastai` 1.9.1 sends and reads (see
/work/shared/research/vastai_api.md): JSON answers carry `Content-Type: application/json`
exactly (the CLI refuses anything else for search), repeated slashes are collapsed (a trailing
`/` on VAST_URL yields `//api/...`), an API path without its trailing slash is the same route
(vast.ai serves both), query values are JSON text. The key arrives as `Authorization: Bearer`
or, from older clients, as `?api_key=` (masked in every log line); an instance's
CONTAINER_API_KEY is accepted for that instance's own routes only. Everything but the gpu-names
call and log result URLs (which the clients fetch without a key) needs one.

Why `http.server` and not Starlette: every route is one branch of `_route`, slash handling is
one normalisation in `_serve` and every error is built by `_error`; the fault injection needs to
cut an answer off mid-body on the socket (`_send_cut`), which an ASGI server hides."""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rgt.providers.redact import Redactor
from rgt.sim.faults import Fault, Faults
from rgt.sim.world import ApiError, World

log = logging.getLogger(__name__)

JSON = "application/json"
_INSTANCE = re.compile(r"^/api/v0/instances/(\d+)/$")
_ASK = re.compile(r"^/api/v0/asks/(\d+)/$")
_REBOOT = re.compile(r"^/api/v0/instances/reboot/(\d+)/$")
_LOGS = re.compile(r"^/api/v0/instances/request_logs/(\d+)/$")
_ATTACH_SSH = re.compile(r"^/api/v0/instances/(\d+)/ssh/$")
# The routes an instance's own CONTAINER_API_KEY may call: those naming that instance.
_INSTANCE_SCOPED = re.compile(r"^/api/v0/instances/(?:reboot/|request_logs/)?(\d+)/(?:ssh/)?$")
# vast.ai's 401 body, exactly (the CLI compares `msg` with "Invalid user key"; research notes
# §2.2 and vastai/cli/main.py); the emulator's hint travels in a header of its own.
_AUTH_FAILED = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
HINT_HEADER = "X-Rgt-Sim-Hint"
_RESULT = re.compile(r"^/_sim/logs/([A-Za-z0-9_-]+)$")
_CONTROL = re.compile(r"^/_sim/(preempt|win_bid|host_offline|host_online)/(\d+)/?$")
_METER = re.compile(r"^/_sim/meter(?:/(\d+))?/?$")


class Reply:
    """An HTTP answer: status, JSON (or text) body, extra headers."""

    def __init__(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = JSON,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type

    def payload(self) -> bytes:
        """The body bytes."""
        if self.content_type == JSON:
            return json.dumps(self.body).encode()
        return str(self.body).encode()


def _error(status: int, error: str, msg: str) -> Reply:
    return Reply(status, {"success": False, "error": error, "msg": msg})


def _unauthorised(hint: str) -> Reply:
    return Reply(401, dict(_AUTH_FAILED), {HINT_HEADER: hint})


class SimHttpServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one World."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], world: World, api_key: str, faults: Faults):
        super().__init__(address, _Handler)
        self.world = world
        self.api_key = api_key
        self.faults = faults
        self.log_requests: dict[str, tuple[int, Any, Any]] = {}
        self._tokens_lock = threading.Lock()
        # Request lines carry `?api_key=` from older clients: every log line is masked.
        self.redactor = Redactor([api_key])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (killed, timed out) is routine, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
        else:
            log.warning("error serving %s", client_address, exc_info=True)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def new_log_token(self, instance_id: int, tail: Any, grep: Any) -> str:
        """A one-off, unguessable result-URL token for a logs request."""
        token = secrets.token_urlsafe(16)
        with self._tokens_lock:
            self.log_requests[token] = (instance_id, tail, grep)
        return token

    def log_request_for(self, token: str) -> tuple[int, Any, Any] | None:
        """The logs request behind a token."""
        with self._tokens_lock:
            return self.log_requests.get(token)


class _Handler(BaseHTTPRequestHandler):
    server: SimHttpServer
    server_version = "rgt-sim"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), self.server.redactor.text(format % args))

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- plumbing -----------------------------------------------------------------------
    def _serve(self) -> None:
        split = urlsplit(self.path)
        path = re.sub("/{2,}", "/", split.path) or "/"
        if path.startswith("/api/") and not path.endswith("/"):
            path += "/"  # vast.ai answers `/api/v0/instances/1` as `/api/v0/instances/1/`
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        faults = self.server.faults
        faults.count(self.command, path)
        try:
            body = self._body()
        except ValueError as exc:
            self._send(_error(400, "invalid_json", f"request body is not JSON: {exc}"))
            return
        if faults.latency > 0 and not path.startswith("/_sim/"):
            time.sleep(faults.latency)
        public = self._public(path)
        if public is not None:
            self._send(public)
            return
        denied = self._check_key(query.get("api_key"), path)
        if denied is not None:
            self._send(denied)
            return
        fault = faults.take(self.command, path) if path.startswith("/api/") else None
        if fault is not None and not fault.after_commit:
            self._send(self._fault_reply(fault))
            return
        try:
            reply = self._route(self.command, path, query, body)
        except ApiError as exc:
            reply = _error(exc.status, exc.error, exc.msg)
        except Exception as exc:  # a bug here must answer, not hang the client
            log.exception("emulator error on %s %s", self.command, path)
            reply = _error(500, "internal", f"emulator error: {type(exc).__name__}")
        if fault is not None and fault.cut is not None:
            self._send_cut(reply, fault.cut)
            return
        if fault is not None:
            reply = self._fault_reply(fault)
        self._send(reply)

    def _fault_reply(self, fault: Fault) -> Reply:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        return Reply(fault.status, fault.body(), headers)

    def _send_cut(self, reply: Reply, cut: str) -> None:
        """The real answer, cut off (see rgt.sim.faults): half the body after a Content-Length
        promising all of it, then the connection closes (`connection`); or half the body,
        announced as such (`body`)."""
        data = reply.payload()
        half = data[: len(data) // 2]
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data) if cut == "connection" else len(half)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(half)
        self.wfile.flush()
        self.close_connection = True

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return {}
        raw = self.rfile.read(length)
        return json.loads(raw) if raw.strip() else {}

    def _check_key(self, query_key: str | None, path: str) -> Reply | None:
        """None when the request may proceed: the account key (Bearer header or `?api_key=`),
        or an instance's CONTAINER_API_KEY on a route naming that instance."""
        header = self.headers.get("Authorization") or ""
        scheme, _, key = header.partition(" ")
        if header and scheme.lower() == "bearer":
            key = key.strip()
        elif not header and query_key:
            key = query_key
        else:
            return _unauthorised(
                "no API key: send `Authorization: Bearer <key>` or ?api_key=<key> "
                "(`rgt sim serve` prints the key this emulator accepts)"
            )
        if hmac.compare_digest(key.encode(), self.server.api_key.encode()):
            return None
        instance_id = self.server.world.instance_for_key(key)
        if instance_id is None:
            return _unauthorised(
                "this emulator accepts the key `rgt sim serve` printed (or the one given "
                "with --api-key), or an instance's CONTAINER_API_KEY for that instance"
            )
        match = _INSTANCE_SCOPED.match(path)
        if match is None or int(match.group(1)) != instance_id:
            return _unauthorised(
                f"an instance key (CONTAINER_API_KEY) is good for instance {instance_id}'s "
                "own routes only"
            )
        return None

    def _send(self, reply: Reply) -> None:
        data = reply.payload()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- routes ---------------------------------------------------------------------------
    def _public(self, path: str) -> Reply | None:
        world = self.server.world
        if self.command == "GET" and path == "/api/v0/gpu_names/unique/":
            return Reply(200, {"gpu_names": world.gpu_names()})
        match = _RESULT.match(path)
        if self.command == "GET" and match:
            request = self.server.log_request_for(match.group(1))
            if request is None:
                return Reply(404, "no such log result\n", content_type="text/plain")
            try:
                text = world.logs(*request)
            except ApiError as exc:
                return Reply(404, exc.msg + "\n", content_type="text/plain")
            return Reply(200, text, content_type="text/plain")
        if self.command == "GET" and path in ("/", "/_sim/health"):
            return Reply(200, {"emulator": "rgt.sim", "ok": True})
        return None

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        world = self.server.world
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_args", "the request body must be a JSON object")
        ok = Reply(200, {"success": True})
        if path.startswith("/_sim/"):
            return self._control(method, path, body)
        if method == "POST" and path == "/api/v0/bundles/":
            return Reply(200, {"offers": world.search(body)})
        if method == "GET" and path == "/api/v0/bundles/":
            # Older vast.py: `GET /api/v0/bundles?q=<filter JSON>`.
            search = _json_arg(query.get("q"), "q") or {}
            if not isinstance(search, dict):
                raise ApiError(400, "invalid_args", "q must be a JSON filter object")
            return Reply(200, {"offers": world.search(search)})
        if method == "PUT" and path == "/api/v0/search/asks/":
            search = body.get("q")
            if not isinstance(search, dict):
                raise ApiError(400, "invalid_args", "expected the filter object in q")
            return Reply(200, {"offers": world.search(search)})
        if method in ("GET", "PUT") and path in ("/api/v0/users/current", "/api/v0/users/current/"):
            return Reply(200, world.user())
        if method == "GET" and path == "/api/v0/instances/filters/":
            return Reply(200, {"filters": []})
        if method == "GET" and path == "/api/v1/instances/":
            page = world.list_page(
                _json_arg(query.get("select_filters"), "select_filters"),
                _json_arg(query.get("order_by"), "order_by"),
                _json_arg(query.get("limit"), "limit"),
                query.get("after_token"),
            )
            return Reply(200, page)
        if method == "GET" and path == "/api/v0/instances/":
            rows = world.rows()
            return Reply(200, {"instances": rows, "instances_found": len(rows)})
        if path == "/api/v0/volumes/":
            return self._volumes(method, query, body)
        if method == "GET" and path in ("/api/v1/invoices/", "/api/v0/charges/"):
            rows = world.charges()
            key = "invoices" if "invoices" in path else "charges"
            return Reply(200, {"success": True, key: rows, "results": rows, "next_token": None})
        if method == "GET" and path == "/api/v0/users/cloud_integrations/":
            return Reply(200, world.list_cloud_connections())
        if method == "POST" and path == "/api/v0/commands/rclone/":
            return Reply(200, {"success": True, "msg": world.cloud_copy(body)})
        match = _ATTACH_SSH.match(path)
        if method == "POST" and match:
            world.attach_ssh(int(match.group(1)), body.get("ssh_key"))
            return Reply(200, {"success": True, "msg": "SSH key attached to the instance."})
        if method == "PUT" and path == "/api/v0/instances/":
            for instance_id in _ids(body.get("ids")):
                _change(world, instance_id, body)
            return ok
        if method == "DELETE" and path == "/api/v0/instances/":
            for instance_id in _ids(body.get("instance_ids")):
                world.destroy(instance_id)
            return ok
        if method == "PUT" and path == "/api/v0/launch_instance/":
            new_id = _launch(world, body)
            answer = {"new_contract": new_id, "instance_api_key": world.instance_key(new_id)}
            return Reply(200, {"success": True, **answer})
        match = _ASK.match(path)
        if method == "PUT" and match:
            new_id = world.create(int(match.group(1)), body)
            return Reply(
                200,
                {
                    "success": True,
                    "new_contract": new_id,
                    # vastai/data/instance.py CreateInstanceResponse: the CONTAINER_API_KEY
                    "instance_api_key": world.instance_key(new_id),
                },
            )
        match = _REBOOT.match(path)
        if method == "PUT" and match:
            world.reboot(int(match.group(1)))
            return ok
        match = _LOGS.match(path)
        if method == "PUT" and match:
            instance_id = int(match.group(1))
            world.logs(instance_id, None, None)  # 404 for an unknown instance
            token = self.server.new_log_token(instance_id, body.get("tail"), body.get("filter"))
            return Reply(
                200,
                {
                    "success": True,
                    "result_url": f"{self.server.base_url}/_sim/logs/{token}",
                    "msg": "Logs are being prepared; fetch result_url.",
                },
            )
        match = _INSTANCE.match(path)
        if match:
            instance_id = int(match.group(1))
            if method == "GET":
                return Reply(200, {"instances": world.show(instance_id)})
            if method == "PUT":
                _change(world, instance_id, body)
                return ok
            if method == "DELETE":
                world.destroy(instance_id)
                return ok
        return _error(404, "not_found", f"the emulator has no route {method} {path}")

    def _volumes(self, method: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """/api/v0/volumes/ (vastai/api/storage.py): GET list, PUT create, DELETE ?id=N."""
        world = self.server.world
        if method == "GET":
            # type: local_volume, network_volume or all_volume; every emulated volume is local.
            kind = str(query.get("type") or "all_volume").strip('"')
            rows = world.volume_rows() if kind != "network_volume" else []
            return Reply(200, {"success": True, "volumes": rows})
        if method == "PUT":
            volume_id = world.create_volume(body)
            return Reply(200, {"success": True, "volume_id": volume_id, "id": volume_id})
        if method == "DELETE":
            raw = query.get("id", body.get("id"))
            try:
                volume_id = int(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ApiError(400, "invalid_args", f"id={raw!r}: expected a volume id") from None
            world.delete_volume(volume_id)
            return Reply(200, {"success": True})
        return _error(404, "not_found", f"the emulator has no route {method} /api/v0/volumes/")

    def _control(self, method: str, path: str, body: dict[str, Any]) -> Reply:
        """/_sim/: fault injection and meters for `rgt sim serve` users (same key)."""
        world = self.server.world
        faults = self.server.faults
        match = _CONTROL.match(path)
        if method == "POST" and match:
            action = {
                "preempt": world.preempt,
                "win_bid": world.win_bid,
                "host_offline": world.take_host_offline,
                "host_online": world.bring_host_online,
            }[match.group(1)]
            action(int(match.group(2)))
            return Reply(200, {"success": True})
        match = _METER.match(path)
        if method == "GET" and match:
            if match.group(1):
                try:
                    return Reply(200, world.meter(int(match.group(1))))
                except KeyError as exc:
                    raise ApiError(404, "no_such_instance", str(exc)) from exc
            return Reply(200, world.account_meter())
        try:
            if method == "POST" and path.rstrip("/") == "/_sim/fail_next":
                faults.fail_next(
                    int(body.get("n", 1)),
                    status=int(body.get("status", 503)),
                    retry_after=body.get("retry_after"),
                    after_commit=bool(body.get("after_commit", False)),
                    skip=int(body.get("skip", 0)),
                    cut=_optional_text(body.get("cut")),
                    method=_optional_text(body.get("method")),
                    path=_optional_text(body.get("path")),
                )
                return Reply(200, {"success": True})
            stall = re.match(r"^/_sim/stall_loading/(\d+)/?$", path)
            if method == "POST" and stall:
                seconds = body.get("seconds")
                world.stall_loading(
                    int(stall.group(1)), None if seconds is None else float(seconds)
                )
                return Reply(200, {"success": True})
            if method == "POST" and path.rstrip("/") == "/_sim/latency":
                faults.latency = max(float(body.get("seconds", 0.0)), 0.0)
                return Reply(200, {"success": True, "latency": faults.latency})
            if method == "POST" and path.rstrip("/") == "/_sim/advance":
                world.clock.advance(float(body.get("seconds", 0.0)))
                return Reply(200, {"success": True, "now": world.clock.now()})
            if method == "POST" and path.rstrip("/") == "/_sim/balance":
                world.set_balance(float(body["dollars"]))
                return Reply(200, {"success": True, "balance": world.user()["balance"]})
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, "invalid_args", f"{path}: {exc}") from exc
        if method == "GET" and path.rstrip("/") == "/_sim/requests":
            counts = [
                {"method": m, "path": p, "count": c}
                for (m, p), c in sorted(faults.requests.items())
            ]
            return Reply(200, {"requests": counts})
        return _error(404, "not_found", f"the emulator has no control route {method} {path}")


def _launch(world: World, body: dict[str, Any]) -> int:
    """`vastai launch instance`: search with the body's `q`, rent the first rentable offer."""
    query = body.get("q")
    if not isinstance(query, dict):
        raise ApiError(400, "invalid_args", "launch_instance needs the search filter object in q")
    query = {**query, "rentable": {"eq": True}}
    for offer in world.search(query):
        try:
            return world.create(int(offer["id"]), body)
        except ApiError as exc:
            if exc.error != "no_such_ask":
                raise
    raise ApiError(404, "no_offers", "no rentable offer matches the launch query")


def _change(world: World, instance_id: int, body: dict[str, Any]) -> None:
    if "state" not in body and "label" not in body:
        raise ApiError(400, "invalid_args", "expected state and/or label in the body")
    if "label" in body:
        label = body["label"]
        world.set_label(instance_id, None if label is None else str(label))
    if "state" in body:
        world.set_state(instance_id, str(body["state"]))


def _optional_text(value: Any) -> str | None:
    """A control argument that is a string or absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise ApiError(400, "invalid_args", "expected a list of instance ids")
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "invalid_args", f"instance ids must be numbers: {value!r}") from exc


def _json_arg(text: str | None, name: str) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        if name == "limit" and text.isdigit():
            return int(text)
        raise ApiError(400, "invalid_args", f"query {name}={text!r} is not JSON") from None
