"""Keep secrets (the platform API key, secret env values) out of everything rgt prints or returns.

The vastai SDK puts the key in an `Authorization` header, prints that header in its `explain`
mode, renders it into curl commands, and its exceptions carry request objects. rgt therefore
treats every text that came near the SDK as tainted: messages, captured stdout/stderr, log
records and returned dictionaries all pass through `Redactor` before anyone sees them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import re
import sys
import threading
import zlib
from collections.abc import Collection, Iterable, Iterator
from typing import Any

MASK = "***"

# Shapes a credential takes in HTTP debugging output, whatever its value: a bearer header
# (`Authorization: Bearer x`, or JSON-dumped headers `"Authorization": "Bearer x"`) and
# key-like query parameters. These catch keys rgt was not told about (a key file of another
# account, a token in a result URL).
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|token|secret)=)[^\s&\"',;]+"),
    re.compile(r"(?i)(\"(?:api_key|instance_api_key|jupyter_token)\"\s*:\s*\")[^\"]*"),
)

# Secrets shorter than this are not masked by value: masking "ab" everywhere would shred
# ordinary text while protecting nothing (real API keys are 64 hex characters).
_MIN_SECRET_LENGTH = 6

# How rendered scripts carry text that is not written out literally: a job file as one base64
# word, a boot hook over the platform's size limit as one gzip+base64 word (which holds more
# base64 words). A secret is looked for inside those too, this many layers deep.
_BASE64_WORD = re.compile(rb"[A-Za-z0-9+/]{8,}={0,2}")
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_LAYERS = 3
_MAX_UNPACKED_BYTES = 64 * 1024 * 1024  # a boot hook is kilobytes: refuse to inflate a bomb


class Redactor:
    """Masks known secret values and credential-shaped substrings in text and data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._names: dict[str, str] = {}  # secret value -> what it is, for refusals
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None, *, name: str = "a secret value") -> None:
        """Remember one more secret value to mask (ignored when empty or too short); `name`
        says what it is (never the value) when `secret_in` finds it."""
        if secret and len(secret) >= _MIN_SECRET_LENGTH:
            with self._lock:
                self._secrets.add(secret)
                self._names.setdefault(secret, name)

    def secret_in(self, text: str, *, except_names: Collection[str] = ()) -> str | None:
        """The name of a known secret whose value `text` holds, else None.

        Found as is, inside a base64 word, or inside a gzip+base64 payload (the forms in which
        rendered scripts carry job files and packed boot hooks), so a key pasted into a job
        file is caught after rendering too. Secrets named in `except_names` are not looked for
        (a secret passed as its own env var); a value added under two names keeps the first."""
        with self._lock:
            wanted = [
                (secret.encode(), name)
                for secret, name in self._names.items()
                if name not in except_names
            ]
        if not wanted:
            return None
        for layer in _layers(text.encode(), depth=0):
            for value, name in wanted:
                if value in layer:
                    return name
        return None

    def text(self, value: str) -> str:
        """`value` with every known secret and credential-shaped substring replaced by ***."""
        with self._lock:
            # Longest first, so a secret that contains another is masked whole.
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            value = value.replace(secret, MASK)
        for pattern in _PATTERNS:
            value = pattern.sub(lambda m: m.group(1) + MASK, value)
        return value

    def data(self, value: Any) -> Any:
        """A deep copy of JSON-like `value` with every string passed through `text`."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value

    def one_line(self, value: object, *, limit: int = 300) -> str:
        """A redacted, single-line, length-bounded rendering of `value` for error messages."""
        flat = " ".join(str(value).split())
        flat = self.text(flat)
        return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _layers(data: bytes, *, depth: int) -> Iterator[bytes]:
    """`data`, then what every base64 word in it decodes to (gunzipped when it is gzip), and
    so on down to _MAX_LAYERS."""
    yield data
    if depth >= _MAX_LAYERS:
        return
    for match in _BASE64_WORD.finditer(data):
        word = match.group()
        if len(word) % 4:
            continue  # not a whole base64 word (rgt's encoders always pad)
        try:
            decoded = base64.b64decode(word, validate=True)
        except (binascii.Error, ValueError):
            continue
        if decoded.startswith(_GZIP_MAGIC):
            inflater = zlib.decompressobj(wbits=31)
            try:
                decoded = inflater.decompress(decoded, _MAX_UNPACKED_BYTES)
            except zlib.error:
                continue
        yield from _layers(decoded, depth=depth + 1)


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message through a `Redactor`.

    The message is formatted first (msg % args) and the args dropped, so a secret hidden in an
    argument cannot reappear when a handler formats the record later.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not break logging
            message = str(record.msg)
        record.msg = self.redactor.text(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # A traceback would print the exception text unredacted; keep only a masked line.
            record.msg += " | " + self.redactor.one_line(record.exc_info[1])
            record.exc_info = None
            record.exc_text = None
        return True


# Loggers whose records can carry request details when a user turns on debug logging.
_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests", "vastai")


def install_log_filter(redactor: Redactor, *logger_names: str) -> RedactingFilter:
    """Attach one redacting filter to rgt's provider loggers and the HTTP stack's loggers."""
    flt = RedactingFilter(redactor)
    for name in (*logger_names, *_HTTP_LOGGERS):
        logger = logging.getLogger(name)
        if not any(
            isinstance(f, RedactingFilter) and f.redactor is redactor for f in logger.filters
        ):
            logger.addFilter(flt)
    return flt


class _Routed:
    """sys.stdout or sys.stderr while some thread captures: a capturing thread's writes go to
    its own buffer, every other thread's to the stream this one replaced. Swapping the stream
    itself (contextlib.redirect_stdout) is process-wide: another thread's line printed during an
    SDK call vanished into that call's capture, and captures had to take turns."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def _target(self) -> Any:
        buffer = getattr(_capturing, "buffer", None)
        return self.original if buffer is None else buffer

    def write(self, text: str) -> int:
        target = self._target()
        return len(text) if target is None else int(target.write(text))  # None: no stream

    def flush(self) -> None:
        target = self._target()
        if target is not None:
            target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno...: the real stream's
        return getattr(self.original, name)


_capturing = threading.local()  # .buffer: this thread's capture, if any
_ROUTING_LOCK = threading.Lock()  # guards installing and removing the routed streams
_routing_depth = 0  # captures open, all threads together


@contextlib.contextmanager
def captured_output(redactor: Redactor, logger: logging.Logger) -> Iterator[None]:
    """Run a block with this thread's stdout/stderr captured; log what it printed, redacted,
    at DEBUG. Other threads print as before, and capture at the same time.

    The vastai SDK prints request details (with the Authorization header) in its explain mode
    and a few warnings elsewhere. Nothing it prints may reach the terminal, an MCP stdio stream
    or a test's captured output unredacted.
    """
    global _routing_depth
    buffer = io.StringIO()
    with _ROUTING_LOCK:
        if _routing_depth == 0:
            sys.stdout, sys.stderr = _Routed(sys.stdout), _Routed(sys.stderr)
        _routing_depth += 1
    outer = getattr(_capturing, "buffer", None)
    _capturing.buffer = buffer
    try:
        yield
    finally:
        _capturing.buffer = outer
        with _ROUTING_LOCK:
            _routing_depth -= 1
            if _routing_depth == 0:
                # Put back what was replaced, unless someone replaced the routed stream since.
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if isinstance(stream, _Routed):
                        setattr(sys, name, stream.original)
        printed = buffer.getvalue()
        if printed.strip():
            logger.debug("vastai SDK output: %s", redactor.text(printed.strip()))
