"""Logging set-up, secret redaction, and escaping of outside values before they reach a log line.

``setup_logging`` installs one handler on the ``tqvt_sync`` logger, in text or JSON
lines. Structured fields travel in ``extra={"fields": {...}}``, most easily through
``log_event``. Inside a ``run_context`` block, every record also carries the block's
fields (a stage's ``stage`` and ``run_id``). Every value registered with
``register_secret`` is replaced by ``***`` before a line is written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

_MAX_LOGGED_CHARS = 200


def escape(value: object, limit: int = _MAX_LOGGED_CHARS) -> str:
    """Return ``value`` as one printable line safe to log.

    CR, LF, other control characters and bidirectional overrides are written as
    ``\\xNN`` or ``\\uNNNN`` escapes, so a value from ThreatQ or VirusTotal cannot
    forge a log line or reorder the text a reader sees. Long values are cut to
    ``limit`` characters and marked with their full length.
    """
    text = str(value)
    parts: list[str] = []
    for char in text[:limit]:
        category = unicodedata.category(char)
        if char == "\\":
            parts.append("\\\\")
        elif category in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            parts.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            parts.append(char)
    if len(text) > limit:
        parts.append(f"...[{len(text)} chars]")
    return "".join(parts)


_LOGGER_NAME = "tqvt_sync"
_CORE_KEYS = ("time", "level", "logger", "event")
# Secrets shorter than this are not redacted: replacing every "abc" would garble all lines.
_MIN_SECRET_CHARS = 4
_REDACTED = "***"

# Fields added to every record logged in the current context, such as stage and run_id.
_run_fields: contextvars.ContextVar[Mapping[str, object] | None] = contextvars.ContextVar(
    "tqvt_run_fields", default=None)

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None


def escape_controls(text: str) -> str:
    """Return ``text`` with control, format (bidi) and line-separator characters escaped.

    Unlike ``escape`` it keeps backslashes and length as they are, so applying it to an
    already escaped value changes nothing. The formatters use it on every message and field.
    """
    parts: list[str] = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            parts.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            parts.append(char)
    return "".join(parts)


def register_secret(value: str | None) -> None:
    """Add ``value`` to the strings that the log filter replaces with ``***``.

    The escaped and JSON-encoded spellings of the value are registered as well. ``None``,
    empty values and values shorter than 4 characters are ignored.
    """
    if not value or len(value) < _MIN_SECRET_CHARS:
        return
    spellings = {value, escape(value, limit=len(value)), escape_controls(value),
                 json.dumps(value)[1:-1]}
    global _secrets_pattern
    with _secrets_lock:
        _secrets.update(spellings)
        # Longer secrets come first, so a secret that contains another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(secret) for secret in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (for tests, and before settings are loaded again)."""
    global _secrets_pattern
    with _secrets_lock:
        _secrets.clear()
        _secrets_pattern = None


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    pattern = _secrets_pattern
    return pattern.sub(_REDACTED, text) if pattern is not None else text


@contextmanager
def run_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every record logged in this thread (and context) inside the block.

    A field that the record itself carries wins over the context's field of the same name.
    Worker threads do not inherit the context; start them with ``bind_run_context``.
    """
    token = _run_fields.set({**(_run_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _run_fields.reset(token)


def current_run_context() -> dict[str, object]:
    """Return the fields that ``run_context`` adds in the calling thread."""
    return dict(_run_fields.get() or {})


def bind_run_context(fields: Mapping[str, object]) -> None:
    """Set the context fields of the calling thread, as a thread pool initializer."""
    _run_fields.set(dict(fields))


class RunContextFilter(logging.Filter):
    """Merge the ``run_context`` fields of the emitting thread into ``record.fields``."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _run_fields.get()
        if context:
            own = getattr(record, "fields", None)
            record.fields = {**context, **own} if isinstance(own, dict) else dict(context)
        return True


class SecretFilter(logging.Filter):
    """Replace registered secrets in a record's message, arguments, fields and traceback.

    The filter renders the message and the traceback itself, so the formatter receives
    only redacted text. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets_pattern is None:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = f"{record.msg} (log arguments did not match the format)"
        record.msg, record.args = redact(message), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = _redact_value(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def format_time(record: logging.LogRecord) -> str:
    """Return the record's creation time in ISO 8601 UTC to the second: ``2026-01-05T12:00:00Z``."""
    return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TextFormatter(logging.Formatter):
    """Format ``<time> <LEVEL> <logger>: <message> key=value ...`` on one line.

    Control and bidi characters in the message and the fields are escaped, so one
    record is one line. A traceback follows on lines indented by two spaces.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        line = f"{format_time(record)} {record.levelname} {record.name}: {message}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += "".join(f" {escape_controls(str(key))}={_text_value(value)}"
                            for key, value in fields.items())
        for extra in (_traceback_text(self, record), record.stack_info):
            if extra:
                line += "".join(f"\n  {escape_controls(part)}" for part in extra.splitlines())
        return redact(line)


def _text_value(value: object) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    else:
        text = str(value)
    text = escape_controls(text)
    if not text or any(char.isspace() for char in text):
        text = '"' + text.replace('"', '\\"') + '"'
    return text


def _traceback_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


class JsonFormatter(logging.Formatter):
    """Format one JSON object per line: ``time``, ``level``, ``logger``, ``event`` and the fields.

    A field named like one of those four keys is written with a trailing underscore.
    Non-ASCII characters are written as ``\\uXXXX`` escapes, so no bidi control reaches
    the line. A traceback goes into ``exception``.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": format_time(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                document[f"{key}_" if key in _CORE_KEYS else str(key)] = value
        traceback_text = _traceback_text(self, record)
        if traceback_text:
            document["exception"] = traceback_text
        if record.stack_info:
            document["stack"] = record.stack_info
        return redact(json.dumps(document, default=str))


def setup_logging(level: str | int = "INFO", fmt: str = "text", quiet: bool = False,
                  stream: TextIO | None = None) -> logging.Handler:
    """Send the ``tqvt_sync`` loggers to ``stream`` (default stderr) in ``fmt`` (text or json).

    ``quiet`` keeps only warnings and errors, whatever ``level`` is. The handler
    carries a ``RunContextFilter`` and a ``SecretFilter``. A second call replaces the
    handler of the first, and records still propagate to the root logger. Returns the
    new handler.

    Raises:
        ValueError: for an unknown level or format.
    """
    formatters = {"text": TextFormatter, "json": JsonFormatter}
    if fmt not in formatters:
        raise ValueError(f"unknown log format {fmt!r}; expected text or json")
    number = _level_number(level)
    if quiet:
        number = max(number, logging.WARNING)

    logger = logging.getLogger(_LOGGER_NAME)
    for old in [handler for handler in logger.handlers if getattr(handler, "tqvt", False)]:
        logger.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.tqvt = True  # type: ignore[attr-defined]  # marks the handler a later call replaces
    handler.setFormatter(formatters[fmt]())
    handler.addFilter(RunContextFilter())
    handler.addFilter(SecretFilter())
    logger.addHandler(handler)
    logger.setLevel(number)
    return handler


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}; expected DEBUG, INFO, WARNING or ERROR")
    return number


def log_event(logger: logging.Logger, level: int | str, event: str, *,
              exc_info: bool | BaseException | None = None, **fields: object) -> None:
    """Log ``event`` with structured ``fields`` (stage, run_id, counts, indicator ids...).

    The text format appends the fields as ``key=value`` and the JSON format merges them
    into the object. Field values are written with control characters escaped, so a
    value from ThreatQ or VirusTotal cannot break the line.
    """
    logger.log(_level_number(level), event, exc_info=exc_info,
               extra={"fields": fields}, stacklevel=2)
