"""Tests of log formats, levels, secret redaction and escaping."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime

import pytest

from tqvt_sync.logs import (
    JsonFormatter,
    SecretFilter,
    TextFormatter,
    clear_secrets,
    escape,
    escape_controls,
    log_event,
    redact,
    register_secret,
    setup_logging,
)

NOON = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC).timestamp()
SECRET = "s3cr3t-canary-value"


@pytest.fixture(autouse=True)
def isolated_logging():
    logger = logging.getLogger("tqvt_sync")
    level, handlers = logger.level, list(logger.handlers)
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
    logger.setLevel(level)
    clear_secrets()


def make_record(message: str, *args: object, level: int = logging.INFO,
                fields: dict[str, object] | None = None,
                name: str = "tqvt_sync.stages.pull") -> logging.LogRecord:
    record = logging.makeLogRecord({
        "name": name, "msg": message, "args": args or None, "levelno": level,
        "levelname": logging.getLevelName(level), "created": NOON,
    })
    if fields is not None:
        record.fields = fields
    return record


def captured(fmt: str = "text", level: str = "DEBUG", quiet: bool = False) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, quiet=quiet, stream=stream)
    return stream


# --- text format ------------------------------------------------------------------------

def test_text_format_exact():
    record = make_record("page pulled", fields={"stage": "pull", "run_id": "r-1", "items": 500})
    assert TextFormatter().format(record) == (
        "2026-01-05T12:00:00Z INFO tqvt_sync.stages.pull: page pulled stage=pull run_id=r-1 "
        "items=500")


def test_text_format_without_fields():
    record = make_record("indicator %s rejected", 42, level=logging.WARNING)
    assert TextFormatter().format(record) == (
        "2026-01-05T12:00:00Z WARNING tqvt_sync.stages.pull: indicator 42 rejected")


@pytest.mark.parametrize(("value", "written"), [
    ("two words", 'v="two words"'),
    ('say "hi" now', 'v="say \\"hi\\" now"'),
    ("", 'v=""'),
    (None, "v=null"),
    (True, "v=true"),
    (2.5, "v=2.5"),
    ({"looked_up": 3, "invalid": 1}, 'v={"looked_up":3,"invalid":1}'),
    ([1, 2], "v=[1,2]"),
    ("line\nbreak", "v=line\\x0abreak"),
])
def test_text_field_values(value, written):
    line = TextFormatter().format(make_record("m", fields={"v": value}))
    assert line.endswith(" " + written)


def test_text_message_line_break_escaped():
    forged = "ok\r\n2026-01-05T12:00:00Z INFO tqvt_sync: forged"
    line = TextFormatter().format(make_record("value %s", forged))
    assert "\n" not in line
    assert "\r" not in line
    assert line.endswith("value ok\\x0d\\x0a2026-01-05T12:00:00Z INFO tqvt_sync: forged")


def test_text_message_bidi_and_nul_escaped():
    line = TextFormatter().format(make_record("name \u202eexe.txt\x00"))
    assert line.endswith("name \\u202eexe.txt\\x00")


def test_text_traceback_indented():
    try:
        raise RuntimeError("bad\nthing")
    except RuntimeError:
        record = make_record("failed")
        record.exc_info = sys.exc_info()
    lines = TextFormatter().format(record).split("\n")
    assert lines[0] == "2026-01-05T12:00:00Z INFO tqvt_sync.stages.pull: failed"
    assert lines[1] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in lines[1:])
    assert lines[-2:] == ["  RuntimeError: bad", "  thing"]


# --- JSON format ------------------------------------------------------------------------

def test_json_format_exact():
    record = make_record("pull finished", fields={"stage": "pull", "counts": {"pulled": 3},
                                                  "indicator_ids": [1, 2], "duration_s": 1.25})
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-01-05T12:00:00Z", "level": "INFO", "logger": "tqvt_sync.stages.pull",
        "event": "pull finished", "stage": "pull", "counts": {"pulled": 3},
        "indicator_ids": [1, 2], "duration_s": 1.25,
    }


def test_json_fields_cannot_replace_core_keys():
    line = JsonFormatter().format(make_record("real", fields={"event": "fake", "level": "X"}))
    document = json.loads(line)
    assert document["event"] == "real"
    assert document["level"] == "INFO"
    assert document["event_"] == "fake"
    assert document["level_"] == "X"


def test_json_non_ascii_escaped():
    line = JsonFormatter().format(make_record("name \u202eexe.txt\nnext"))
    assert "\u202e" not in line
    assert "\\u202e" in line
    assert json.loads(line)["event"] == "name \u202eexe.txt\nnext"


def test_json_unserialisable_field_as_text():
    line = JsonFormatter().format(make_record("m", fields={"when": datetime(2026, 1, 5)}))
    assert json.loads(line)["when"] == "2026-01-05 00:00:00"


def test_json_exception_key():
    try:
        raise ValueError("broken")
    except ValueError:
        record = make_record("failed")
        record.exc_info = sys.exc_info()
    document = json.loads(JsonFormatter().format(record))
    assert document["exception"].endswith("ValueError: broken")


# --- setup_logging and log_event --------------------------------------------------------

def test_log_event_text_line():
    stream = captured("text")
    log_event(logging.getLogger("tqvt_sync.stages.lookup"), logging.INFO, "lookup started",
              stage="lookup", run_id="r-9")
    line = stream.getvalue()
    assert line.endswith(" INFO tqvt_sync.stages.lookup: lookup started stage=lookup "
                         "run_id=r-9\n")
    assert datetime.strptime(line[:20], "%Y-%m-%dT%H:%M:%SZ")


def test_log_event_json_line():
    stream = captured("json")
    log_event(logging.getLogger("tqvt_sync.stages.push"), "warning", "write failed",
              indicator_id=7)
    document = json.loads(stream.getvalue())
    assert set(document) == {"time", "level", "logger", "event", "indicator_id"}
    assert document["level"] == "WARNING"
    assert document["time"].endswith("Z")
    assert document["indicator_id"] == 7


def test_log_event_percent_sign_kept():
    stream = captured("text")
    log_event(logging.getLogger("tqvt_sync"), logging.INFO, "hit rate 50%")
    assert stream.getvalue().rstrip().endswith("tqvt_sync: hit rate 50%")


def test_level_filters_debug():
    stream = captured("text", level="INFO")
    logger = logging.getLogger("tqvt_sync.x")
    logger.debug("hidden")
    logger.info("shown")
    assert "hidden" not in stream.getvalue()
    assert "shown" in stream.getvalue()


def test_quiet_keeps_warnings_and_errors():
    stream = captured("text", level="DEBUG", quiet=True)
    logger = logging.getLogger("tqvt_sync.x")
    logger.info("progress")
    logger.warning("careful")
    logger.error("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "careful" in lines[0]
    assert "failed" in lines[1]


def test_second_setup_replaces_handler():
    first = captured("text")
    second = captured("json")
    logging.getLogger("tqvt_sync.x").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_setup_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("INFO", "xml")


def test_setup_rejects_unknown_level():
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("LOUD", "text")


# --- secret redaction -------------------------------------------------------------------

def test_secret_redacted_from_message_args_and_fields():
    stream = captured("text")
    register_secret(SECRET)
    logger = logging.getLogger("tqvt_sync.threatq.client")
    logger.info("token %s", SECRET)
    log_event(logger, logging.INFO, f"key {SECRET}", header=f"Bearer {SECRET}",
              nested={"key": SECRET})
    output = stream.getvalue()
    assert SECRET not in output
    assert "token ***" in output
    assert 'header="Bearer ***"' in output
    assert 'nested={"key":"***"}' in output


def test_secret_redacted_from_json_and_traceback():
    stream = captured("json")
    register_secret(SECRET)
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        logging.getLogger("tqvt_sync.x").exception("call failed", extra={"fields": {"k": SECRET}})
    output = stream.getvalue()
    assert SECRET not in output
    document = json.loads(output)
    assert document["k"] == "***"
    assert document["exception"].endswith("RuntimeError: auth failed for ***")


def test_secret_with_special_characters_redacted_in_json():
    secret = 'pa"ss\\wörd\u202e'
    stream = captured("json")
    register_secret(secret)
    logging.getLogger("tqvt_sync.x").info("login with %s", secret)
    assert json.loads(stream.getvalue())["event"] == "login with ***"


def test_secret_redacted_after_escape():
    secret = "back\\slash-secret"
    stream = captured("text")
    register_secret(secret)
    logging.getLogger("tqvt_sync.x").info("value %s", escape(secret))
    assert "slash-secret" not in stream.getvalue()


def test_secret_redacted_for_other_handlers(caplog):
    captured("text")
    register_secret(SECRET)
    with caplog.at_level(logging.INFO, logger="tqvt_sync"):
        logging.getLogger("tqvt_sync.x").info("key=%s", SECRET)
    assert SECRET not in caplog.text
    assert "key=***" in caplog.text


def test_filter_survives_mismatched_arguments():
    register_secret(SECRET)
    record = make_record("one %s two %s", SECRET)
    assert SecretFilter().filter(record) is True
    assert record.getMessage() == "one %s two %s (log arguments did not match the format)"


def test_short_secret_not_registered():
    register_secret("abc")
    register_secret(None)
    register_secret("")
    assert redact("abc abc") == "abc abc"


def test_longest_secret_wins():
    register_secret("token-1234")
    register_secret("token-1234-extended")
    assert redact("x token-1234-extended y") == "x *** y"


def test_clear_secrets():
    register_secret(SECRET)
    clear_secrets()
    assert redact(SECRET) == SECRET


# --- escaping ---------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "escaped"), [
    ("evil\r\nINFO forged", "evil\\x0d\\x0aINFO forged"),
    ("\u202eexe.txt", "\\u202eexe.txt"),
    ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
    ("nul\x00byte", "nul\\x00byte"),
    ("tab\there", "tab\\x09here"),
    ("line\u2028sep", "line\\u2028sep"),
    ("C:\\temp", "C:\\\\temp"),
    ("plain ünïcode", "plain ünïcode"),
    (42, "42"),
])
def test_escape(value, escaped):
    assert escape(value) == escaped


def test_escape_truncates_long_values():
    assert escape("x" * 250) == "x" * 200 + "...[250 chars]"


def test_escape_controls_idempotent():
    once = escape_controls("a\nb\u202ec\\d")
    assert once == "a\\x0ab\\u202ec\\d"
    assert escape_controls(once) == once
