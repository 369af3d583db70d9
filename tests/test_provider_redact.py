"""Secret redaction: known values, credential-shaped text, log records and captured SDK output."""

from __future__ import annotations

import logging
import sys

import pytest
import requests
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.providers.redact import (
    MASK,
    RedactingFilter,
    Redactor,
    captured_output,
    install_log_filter,
)


def test_masks_known_secret_values_everywhere_in_text_and_data() -> None:
    redactor = Redactor([CANARY_API_KEY, "hf_supersecrettoken"])
    text = f"key={CANARY_API_KEY} token hf_supersecrettoken end"
    assert_no_canary(redactor.text(text))
    assert "hf_supersecrettoken" not in redactor.text(text)
    data = {"a": [CANARY_API_KEY, {"b": f"x{CANARY_API_KEY}y"}], CANARY_API_KEY: 1, "n": 3}
    cleaned = redactor.data(data)
    assert_no_canary(repr(cleaned))
    assert cleaned["n"] == 3


def test_masks_credential_shapes_it_was_not_told_about() -> None:
    redactor = Redactor()
    assert redactor.text("Authorization: Bearer abc123def456") == f"Authorization: Bearer {MASK}"
    assert redactor.text('{"Authorization": "Bearer abc123def456"}') == (
        '{"Authorization": "Bearer ' + MASK + '"}'
    )
    assert redactor.text("GET /x?api_key=abcdef&b=1") == f"GET /x?api_key={MASK}&b=1"
    assert redactor.text('{"instance_api_key": "zzzzzz"}') == '{"instance_api_key": "' + MASK + '"}'


def test_short_values_are_not_masked_by_value() -> None:
    # Masking a two-letter "secret" everywhere would shred every message.
    assert Redactor(["ab"]).text("abc cab") == "abc cab"


def test_secret_in_finds_a_value_as_is_in_base64_and_in_gzip_base64_by_name() -> None:
    import base64
    import gzip

    redactor = Redactor()
    redactor.add(CANARY_API_KEY, name="the API key")
    redactor.add("hf_supersecrettoken", name="HF_TOKEN")
    assert redactor.secret_in("nothing here") is None
    assert redactor.secret_in(f"curl -H 'X: {CANARY_API_KEY}'") == "the API key"
    # A job file as rgt's templates ship one, at each of base64's three alignments.
    for prefix in ("", "a", "ab"):
        word = base64.b64encode(f"{prefix}token = hf_supersecrettoken\n".encode()).decode()
        assert redactor.secret_in(f"printf '%s' '{word}' | base64 -d >f") == "HF_TOKEN"
    # A boot hook over the size limit: gzip+base64 around a script that holds a base64 file.
    inner = "x=1\nprintf '%s' '" + base64.b64encode(CANARY_API_KEY.encode()).decode() + "'\n"
    packed = base64.b64encode(gzip.compress(inner.encode(), mtime=0)).decode()
    assert redactor.secret_in(f"printf '%s' '{packed}' | base64 -d | gunzip") == "the API key"
    # A secret's own env var may hold it; the API key is never excepted.
    assert redactor.secret_in("hf_supersecrettoken", except_names=["HF_TOKEN"]) is None
    assert redactor.secret_in(CANARY_API_KEY, except_names=["HF_TOKEN"]) == "the API key"
    # A value added under a second name keeps its first.
    redactor.add(CANARY_API_KEY, name="HF_TOKEN")
    assert redactor.secret_in(CANARY_API_KEY, except_names=["HF_TOKEN"]) == "the API key"


def test_one_line_flattens_and_bounds() -> None:
    line = Redactor([CANARY_API_KEY]).one_line(f"a\n  b {CANARY_API_KEY}\n" + "x" * 500, limit=50)
    assert "\n" not in line and len(line) <= 50
    assert_no_canary(line)


def test_log_filter_redacts_message_args_and_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor([CANARY_API_KEY])
    logger = logging.getLogger("rgt.test.redact")
    logger.addFilter(RedactingFilter(redactor))
    with caplog.at_level(logging.DEBUG, logger="rgt.test.redact"):
        logger.info("sending %s", {"Authorization": f"Bearer {CANARY_API_KEY}"})
        try:
            raise RuntimeError(f"failed with key {CANARY_API_KEY}")
        except RuntimeError:
            logger.exception("boom")
    assert len(caplog.records) == 2
    assert_no_canary(caplog.text, *(r.getMessage() for r in caplog.records))


def test_installed_filter_covers_the_http_stack(caplog: pytest.LogCaptureFixture) -> None:
    install_log_filter(Redactor([CANARY_API_KEY]), "rgt.test.installed")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("urllib3.connectionpool").debug("GET /?k=%s", CANARY_API_KEY)
        logging.getLogger("rgt.test.installed").warning(CANARY_API_KEY)
    assert len(caplog.records) == 2
    assert_no_canary(caplog.text)


def test_captured_output_keeps_sdk_prints_off_stdout_and_logs_them_redacted(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from vastai.api.client import as_curl_command

    redactor = Redactor([CANARY_API_KEY])
    logger = logging.getLogger("rgt.test.capture")
    prepared = requests.Request(
        "GET",
        "http://127.0.0.1:1/api/v0/users/current",
        headers={"Authorization": f"Bearer {CANARY_API_KEY}"},
    ).prepare()
    with (
        caplog.at_level(logging.DEBUG, logger="rgt.test.capture"),
        captured_output(redactor, logger),
    ):
        # What the SDK's explain and curl modes print, headers and all.
        print(as_curl_command(prepared))
        print(f"Headers: {{'Authorization': 'Bearer {CANARY_API_KEY}'}}", file=sys.stderr)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "curl" in caplog.text
    assert_no_canary(caplog.text)


def test_a_capture_takes_only_its_own_threads_prints(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An SDK call in one thread (the supervisor's sync) must neither swallow what another
    thread prints meanwhile (its status lines vanished into the capture) nor make a second
    thread's SDK call wait for the first to end."""
    import threading

    redactor = Redactor([CANARY_API_KEY])
    logger = logging.getLogger("rgt.test.capture.threads")
    inside, release = threading.Event(), threading.Event()
    second_done = threading.Event()

    def long_sdk_call() -> None:
        with captured_output(redactor, logger):
            print(f"Bearer {CANARY_API_KEY} from the first call")
            inside.set()
            release.wait(30)

    def second_sdk_call() -> None:
        with captured_output(redactor, logger):
            print("from the second call", file=sys.stderr)
        second_done.set()

    with caplog.at_level(logging.DEBUG, logger="rgt.test.capture.threads"):
        first = threading.Thread(target=long_sdk_call)
        first.start()
        assert inside.wait(30)
        print("rgt run: a status line from another thread", file=sys.stderr)
        second = threading.Thread(target=second_sdk_call)
        second.start()
        # The second call runs to its end while the first is still inside its capture.
        assert second_done.wait(10), "a capture in one thread blocked another thread's"
        release.set()
        first.join(30)
        second.join(30)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "rgt run: a status line from another thread\n"
    assert "from the first call" in caplog.text and "from the second call" in caplog.text
    assert_no_canary(caplog.text)
    assert sys.stdout is not None and type(sys.stdout).__name__ != "_Routed"
