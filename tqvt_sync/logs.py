"""Logging set-up and escaping of outside values before they reach a log line."""

from __future__ import annotations

import unicodedata

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
