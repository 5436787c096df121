"""Verdict, severity and ThreatQ score from VirusTotal ``last_analysis_stats``.

Verdict, first match wins: not found (VirusTotal returned 404), malicious (malicious
>= 1), suspicious (suspicious >= 1), harmless (harmless >= 1), otherwise undetected.
Severity, first match wins: high (malicious >= 5), medium (malicious >= 1 or
suspicious >= 3), otherwise low. The score comes from a table keyed by
"verdict/severity" or by the verdict alone. A "not found" verdict has no severity
and no score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NOT_FOUND = "not found"
MALICIOUS = "malicious"
SUSPICIOUS = "suspicious"
HARMLESS = "harmless"
UNDETECTED = "undetected"

HIGH = "high"
MEDIUM = "medium"
LOW = "low"

DEFAULT_SCORES: dict[str, int] = {
    "malicious/high": 9,
    "malicious/medium": 7,
    "suspicious/medium": 5,
    "suspicious/low": 3,
    "undetected": 1,
    "harmless": 0,
}

HIGH_SEVERITY_MALICIOUS = 5
MEDIUM_SEVERITY_SUSPICIOUS = 3

# Engine categories that count towards the detection ratio's denominator. Timeouts,
# failures and unsupported file types are engines that returned no result.
RATIO_CATEGORIES = ("harmless", "malicious", "suspicious", "undetected")


@dataclass(frozen=True)
class Verdict:
    """Verdict of one VirusTotal object, with its severity and ThreatQ score."""

    verdict: str
    severity: str | None
    score: int | None


def stat_count(stats: Mapping[str, object] | None, key: str) -> int:
    """Return one count from ``last_analysis_stats``.

    A missing key, a value that is not an integer (booleans included) and a negative
    value all count as 0, so a malformed response cannot raise or invert a verdict.
    """
    if not stats:
        return 0
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)


def compute_verdict(
    stats: Mapping[str, int] | None,
    *,
    found: bool = True,
    scores: Mapping[str, int] | None = None,
) -> Verdict:
    """Classify ``last_analysis_stats`` into a verdict, a severity and a score.

    ``stats`` None or empty counts as all zeros, which gives "undetected".
    ``scores`` overrides entries of ``DEFAULT_SCORES``. A bucket found in neither
    table gets no score (None).
    """
    if not found:
        return Verdict(NOT_FOUND, None, None)

    malicious = stat_count(stats, "malicious")
    suspicious = stat_count(stats, "suspicious")
    harmless = stat_count(stats, "harmless")

    if malicious >= 1:
        verdict = MALICIOUS
    elif suspicious >= 1:
        verdict = SUSPICIOUS
    elif harmless >= 1:
        verdict = HARMLESS
    else:
        verdict = UNDETECTED

    if malicious >= HIGH_SEVERITY_MALICIOUS:
        severity = HIGH
    elif malicious >= 1 or suspicious >= MEDIUM_SEVERITY_SUSPICIOUS:
        severity = MEDIUM
    else:
        severity = LOW

    return Verdict(verdict, severity, _score(verdict, severity, scores))


def _score(verdict: str, severity: str, scores: Mapping[str, int] | None) -> int | None:
    table = {**DEFAULT_SCORES, **(scores or {})}
    for key in (f"{verdict}/{severity}", verdict):
        if key in table:
            return table[key]
    return None


def detection_ratio(stats: Mapping[str, int] | None) -> str:
    """Return "M/N": M malicious engines out of N engines that returned a result.

    N is harmless + malicious + suspicious + undetected. All-zero stats give "0/0".
    """
    malicious = stat_count(stats, "malicious")
    answered = sum(stat_count(stats, key) for key in RATIO_CATEGORIES)
    return f"{malicious}/{answered}"
