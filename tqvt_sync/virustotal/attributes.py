"""ThreatQ attribute values built from a VirusTotal object.

``summarize`` reduces a VirusTotal object document to the few fields the attributes
need, and the cache stores that summary. ``build_attributes`` turns a summary and its
verdict into the attribute name -> string map written to ThreatQ, and
``fingerprint`` hashes that map so that an unchanged verdict causes no write.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from tqvt_sync.virustotal.identifiers import gui_link
from tqvt_sync.virustotal.verdict import NOT_FOUND, Verdict, detection_ratio

VERDICT = "VirusTotal Verdict"
SEVERITY = "VirusTotal Severity"
SCORE = "VirusTotal Score"
DETECTION_RATIO = "VirusTotal Detection Ratio"
MALICIOUS_ENGINES = "VirusTotal Malicious Engines"
THREAT_LABEL = "VirusTotal Threat Label"
LAST_ANALYSIS = "VirusTotal Last Analysis"
REPUTATION = "VirusTotal Reputation"
CATEGORIES = "VirusTotal Categories"
LINK = "VirusTotal Link"
FIRST_SUBMISSION = "VirusTotal First Submission"
TIMES_SUBMITTED = "VirusTotal Times Submitted"
SANDBOX_VERDICTS = "VirusTotal Sandbox Verdicts"
YARA_RULES = "VirusTotal YARA Rules"

PREMIUM_ATTRIBUTE_NAMES: tuple[str, ...] = (
    FIRST_SUBMISSION,
    TIMES_SUBMITTED,
    SANDBOX_VERDICTS,
    YARA_RULES,
)
ATTRIBUTE_NAMES: tuple[str, ...] = (
    VERDICT,
    SEVERITY,
    SCORE,
    DETECTION_RATIO,
    MALICIOUS_ENGINES,
    THREAT_LABEL,
    LAST_ANALYSIS,
    REPUTATION,
    CATEGORIES,
    LINK,
    *PREMIUM_ATTRIBUTE_NAMES,
)

MAX_LISTED_ENGINES = 10
# Longer texts from VirusTotal (labels, categories, rule names) are cut to this many
# characters, which keeps the cached summary small.
MAX_TEXT_LENGTH = 200
LIST_SEPARATOR = "; "
FLAGGING_SANDBOX_CATEGORIES = ("malicious", "suspicious")


def summarize(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce a VirusTotal object's ``data`` member to what the attributes need.

    ``malicious`` maps each of the first ``MAX_LISTED_ENGINES`` malicious engines,
    sorted by name ignoring case, to its label or None. ``malicious_total`` counts
    every malicious engine. Missing or malformed fields become None or
    empty. ``kind`` is accepted for symmetry with ``build_attributes``: every kind
    is summarised the same way.
    """
    attributes = _mapping(data.get("attributes"))
    malicious = _malicious_engines(attributes.get("last_analysis_results"))
    return {
        "id": str(data.get("id") or ""),
        "type": str(data.get("type") or kind),
        "stats": _int_values(attributes.get("last_analysis_stats")),
        "malicious": dict(malicious[:MAX_LISTED_ENGINES]),
        "malicious_total": len(malicious),
        "threat_label": _threat_label(attributes.get("popular_threat_classification")),
        "last_analysis_date": _integer(attributes.get("last_analysis_date")),
        "reputation": _integer(attributes.get("reputation")),
        "categories": _categories(attributes.get("categories")),
        "first_submission_date": _integer(attributes.get("first_submission_date")),
        "times_submitted": _integer(attributes.get("times_submitted")),
        "sandbox_verdicts": _flagging_sandboxes(attributes.get("sandbox_verdicts")),
        "yara_rules": _yara_rules(attributes.get("crowdsourced_yara_results")),
    }


_HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}


def file_hashes(data: Mapping[str, Any]) -> list[str]:
    """Return the MD5, SHA-1 and SHA-256 that a VirusTotal file object lists for itself.

    Each is lowercase hexadecimal of the right length; any other value is left out.
    A lookup of any of the three identifies the same file object.
    """
    attributes = _mapping(data.get("attributes"))
    hashes = []
    for name, length in _HASH_LENGTHS.items():
        value = attributes.get(name)
        if isinstance(value, str) and len(value) == length and \
                all(char in "0123456789abcdef" for char in value):
            hashes.append(value)
    return hashes


def build_attributes(
    kind: str,
    summary: Mapping[str, Any] | None,
    verdict: Verdict,
    *,
    premium: bool = False,
) -> dict[str, str]:
    """Build the ThreatQ attribute values, name to string, for one VirusTotal object.

    A None summary or a "not found" verdict gives only the verdict attribute. An
    attribute whose value would be empty is left out, so the caller removes any
    earlier value of it. ``premium`` adds the attributes of private API keys.
    """
    if summary is None or verdict.verdict == NOT_FOUND:
        return {VERDICT: NOT_FOUND}

    values: dict[str, str | None] = {
        VERDICT: verdict.verdict,
        SEVERITY: verdict.severity,
        SCORE: None if verdict.score is None else str(verdict.score),
        DETECTION_RATIO: detection_ratio(summary.get("stats")),
        MALICIOUS_ENGINES: _engine_list(summary.get("malicious"), summary.get("malicious_total")),
        THREAT_LABEL: summary.get("threat_label"),
        LAST_ANALYSIS: _format_date(summary.get("last_analysis_date")),
        REPUTATION: _format_integer(summary.get("reputation")),
        CATEGORIES: _join(summary.get("categories")),
        LINK: gui_link(kind, summary["id"]) if summary.get("id") else None,
    }
    if premium:
        values[FIRST_SUBMISSION] = _format_date(summary.get("first_submission_date"))
        values[TIMES_SUBMITTED] = _format_integer(summary.get("times_submitted"))
        values[SANDBOX_VERDICTS] = _sandbox_list(summary.get("sandbox_verdicts"))
        values[YARA_RULES] = _join(summary.get("yara_rules"))
    return {name: value for name, value in values.items() if value}


def fingerprint(attributes: Mapping[str, str], score: int | None = None) -> str:
    """Return a SHA-256 hex digest of the attribute values and the score.

    The digest does not depend on the order of ``attributes``.
    """
    canonical = json.dumps(
        {"attributes": sorted(attributes.items()), "score": score},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _ignoring_case(text: str) -> tuple[str, str]:
    # The second element breaks ties between spellings that differ only in case.
    return (text.casefold(), text)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _integer(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _text(value: object) -> str | None:
    """Return a one-line, trimmed, length-capped text, or None when nothing is left."""
    if value is None or isinstance(value, (Mapping, list)):
        return None
    cleaned = str(value)
    # A printable string has no character of the categories replaced below, and
    # the check runs in C, so most engine names and labels skip the loop.
    if not cleaned.isprintable():
        cleaned = "".join(
            " " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char
            for char in cleaned
        )
    cleaned = " ".join(cleaned.split())[:MAX_TEXT_LENGTH]
    return cleaned or None


def _int_values(stats: object) -> dict[str, int]:
    counts = {}
    for key, value in _mapping(stats).items():
        count = _integer(value)
        if count is not None:
            counts[str(key)] = count
    return counts


def _malicious_engines(results: object) -> list[tuple[str, str | None]]:
    """Return (engine, label) pairs of every engine whose category is malicious, sorted."""
    engines = []
    for engine, result in _mapping(results).items():
        result = _mapping(result)
        if result.get("category") != "malicious":
            continue
        name = _text(engine)
        if name is not None:
            engines.append((name, _text(result.get("result"))))
    return sorted(engines, key=lambda pair: _ignoring_case(pair[0]))


def _threat_label(classification: object) -> str | None:
    return _text(_mapping(classification).get("suggested_threat_label"))


def _sorted_distinct(texts: Iterable[object]) -> list[str]:
    distinct = {cleaned for text in texts if (cleaned := _text(text)) is not None}
    return sorted(distinct, key=_ignoring_case)


def _categories(categories: object) -> list[str]:
    # URLs and domains carry a dict of vendor -> category; files carry none.
    return _sorted_distinct(_mapping(categories).values())


def _flagging_sandboxes(verdicts: object) -> dict[str, str]:
    """Return sandbox name -> category for sandboxes that call the file malicious or suspicious."""
    flagged = {}
    for sandbox, verdict in _mapping(verdicts).items():
        category = _mapping(verdict).get("category")
        name = _text(sandbox)
        if name is not None and category in FLAGGING_SANDBOX_CATEGORIES:
            flagged[name] = category
    return {name: flagged[name] for name in sorted(flagged, key=_ignoring_case)}


def _yara_rules(results: object) -> list[str]:
    if not isinstance(results, list):
        return []
    return _sorted_distinct(_mapping(result).get("rule_name") for result in results)


def _engine_list(engines: object, total: object) -> str | None:
    """Format up to ``MAX_LISTED_ENGINES`` "engine: label" pairs and " (+K more)"."""
    pairs = sorted(_mapping(engines).items(), key=lambda pair: _ignoring_case(pair[0]))
    listed = pairs[:MAX_LISTED_ENGINES]
    if not listed:
        return None
    # An engine that flags an object without naming a threat has a null label.
    text = LIST_SEPARATOR.join(f"{engine}: {label or 'malicious'}" for engine, label in listed)
    malicious_total = _integer(total)
    hidden = max(malicious_total or 0, len(pairs)) - len(listed)
    if hidden > 0:
        text += f" (+{hidden} more)"
    return text


def _sandbox_list(verdicts: object) -> str | None:
    pairs = sorted(_mapping(verdicts).items(), key=lambda pair: _ignoring_case(pair[0]))
    return LIST_SEPARATOR.join(f"{name}: {category}" for name, category in pairs) or None


def _join(texts: object) -> str | None:
    if not isinstance(texts, list):
        return None
    return LIST_SEPARATOR.join(_sorted_distinct(texts)) or None


def _format_date(epoch: object) -> str | None:
    """Format epoch seconds as "YYYY-MM-DD HH:MM:SS" in UTC, or None when unusable."""
    seconds = _integer(epoch)
    if seconds is None:
        return None
    try:
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _format_integer(value: object) -> str | None:
    number = _integer(value)
    return None if number is None else str(number)
