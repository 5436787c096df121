"""Tables for the verdict, severity, score and detection ratio rules."""

from __future__ import annotations

import pytest

from tqvt_sync.virustotal.verdict import (
    DEFAULT_SCORES,
    Verdict,
    compute_verdict,
    detection_ratio,
    stat_count,
)


def stats(malicious: int = 0, suspicious: int = 0, harmless: int = 0, undetected: int = 0) -> dict:
    return {
        "malicious": malicious,
        "suspicious": suspicious,
        "harmless": harmless,
        "undetected": undetected,
        "timeout": 0,
    }


# (stats, verdict, severity, score with the default table)
VERDICT_CASES = [
    pytest.param(stats(malicious=5), "malicious", "high", 9, id="malicious-5-high"),
    pytest.param(
        stats(malicious=47, undetected=18), "malicious", "high", 9, id="malicious-47-high"
    ),
    pytest.param(stats(malicious=4), "malicious", "medium", 7, id="malicious-4-medium"),
    pytest.param(
        stats(malicious=1, harmless=90), "malicious", "medium", 7, id="malicious-1-beats-harmless"
    ),
    pytest.param(
        stats(malicious=1, suspicious=9), "malicious", "medium", 7, id="malicious-beats-suspicious"
    ),
    pytest.param(stats(suspicious=1), "suspicious", "low", 3, id="suspicious-1-low"),
    pytest.param(stats(suspicious=2, harmless=70), "suspicious", "low", 3, id="suspicious-2-low"),
    pytest.param(stats(suspicious=3), "suspicious", "medium", 5, id="suspicious-3-medium"),
    pytest.param(stats(suspicious=30), "suspicious", "medium", 5, id="suspicious-30-medium"),
    pytest.param(stats(harmless=1), "harmless", "low", 0, id="harmless-1"),
    pytest.param(
        stats(harmless=84, undetected=10), "harmless", "low", 0, id="harmless-beats-undetected"
    ),
    pytest.param(stats(undetected=68), "undetected", "low", 1, id="undetected-only"),
    pytest.param(stats(), "undetected", "low", 1, id="all-zero"),
    pytest.param({}, "undetected", "low", 1, id="empty-stats"),
    pytest.param(None, "undetected", "low", 1, id="no-stats"),
    pytest.param({"malicious": 6}, "malicious", "high", 9, id="only-malicious-key"),
    pytest.param({"harmless": 2}, "harmless", "low", 0, id="only-harmless-key"),
    pytest.param(
        {"type-unsupported": 11, "timeout": 3, "confirmed-timeout": 1, "failure": 2},
        "undetected",
        "low",
        1,
        id="only-no-answer-keys",
    ),
    pytest.param(
        {"malicious": 0, "engines-on-strike": 40}, "undetected", "low", 1, id="unknown-key-ignored"
    ),
    pytest.param(
        {"malicious": "7", "harmless": 3}, "harmless", "low", 0, id="string-count-is-zero"
    ),
    pytest.param(
        {"malicious": 2.0, "undetected": 3}, "undetected", "low", 1, id="float-count-is-zero"
    ),
    pytest.param({"malicious": True, "harmless": 1}, "harmless", "low", 0, id="bool-count-is-zero"),
    pytest.param(
        {"malicious": None, "suspicious": 4}, "suspicious", "medium", 5, id="null-count-is-zero"
    ),
    pytest.param(
        {"malicious": -3, "harmless": 1}, "harmless", "low", 0, id="negative-count-is-zero"
    ),
]


@pytest.mark.parametrize(("stats_value", "verdict", "severity", "score"), VERDICT_CASES)
def test_compute_verdict(stats_value: dict | None, verdict: str, severity: str, score: int) -> None:
    result = compute_verdict(stats_value)
    assert result.verdict == verdict
    assert result.severity == severity
    assert result.score == score


@pytest.mark.parametrize(
    "stats_value",
    [
        pytest.param(stats(malicious=50), id="malicious-stats"),
        pytest.param(None, id="no-stats"),
    ],
)
def test_not_found_has_no_severity_or_score(stats_value: dict | None) -> None:
    assert compute_verdict(stats_value, found=False) == Verdict("not found", None, None)


def test_harmless_and_undetected_have_distinct_scores() -> None:
    harmless = compute_verdict(stats(harmless=1))
    undetected = compute_verdict(stats(undetected=1))
    assert harmless.verdict != undetected.verdict
    assert harmless.score != undetected.score


CUSTOM_SCORES = {
    "malicious/high": 10,
    "malicious/medium": 8,
    "suspicious/medium": 6,
    "suspicious/low": 4,
    "undetected": 2,
    "harmless": 1,
}


@pytest.mark.parametrize(
    ("stats_value", "scores", "score"),
    [
        pytest.param(stats(malicious=5), CUSTOM_SCORES, 10, id="custom-malicious-high"),
        pytest.param(stats(malicious=1), CUSTOM_SCORES, 8, id="custom-malicious-medium"),
        pytest.param(stats(suspicious=3), CUSTOM_SCORES, 6, id="custom-suspicious-medium"),
        pytest.param(stats(suspicious=1), CUSTOM_SCORES, 4, id="custom-suspicious-low"),
        pytest.param(stats(undetected=9), CUSTOM_SCORES, 2, id="custom-undetected"),
        pytest.param(stats(harmless=9), CUSTOM_SCORES, 1, id="custom-harmless"),
        pytest.param(stats(malicious=9), {"malicious/high": 8}, 8, id="partial-table-overrides"),
        pytest.param(
            stats(harmless=9), {"malicious/high": 8}, 0, id="partial-table-keeps-defaults"
        ),
        pytest.param(
            stats(undetected=9), {"undetected/low": 2}, 2, id="severity-key-beats-verdict-key"
        ),
        pytest.param(stats(harmless=1), {"harmless": 4}, 4, id="verdict-key"),
        pytest.param(stats(malicious=1), {}, 7, id="empty-table-uses-defaults"),
    ],
)
def test_compute_verdict_custom_scores(stats_value: dict, scores: dict, score: int) -> None:
    assert compute_verdict(stats_value, scores=scores).score == score


def test_custom_scores_do_not_change_defaults() -> None:
    compute_verdict(stats(malicious=9), scores={"malicious/high": 2})
    assert DEFAULT_SCORES["malicious/high"] == 9


@pytest.mark.parametrize(
    ("stats_value", "ratio"),
    [
        pytest.param(
            {
                "harmless": 0,
                "type-unsupported": 6,
                "suspicious": 0,
                "confirmed-timeout": 1,
                "timeout": 2,
                "failure": 0,
                "malicious": 47,
                "undetected": 18,
            },
            "47/65",
            id="dllhijacker-sample",
        ),
        pytest.param(stats(malicious=11, harmless=73, undetected=9), "11/93", id="url-sample"),
        pytest.param(
            stats(malicious=1, suspicious=2, harmless=3, undetected=4),
            "1/10",
            id="all-four-counted",
        ),
        pytest.param(stats(), "0/0", id="all-zero"),
        pytest.param({}, "0/0", id="empty"),
        pytest.param(None, "0/0", id="none"),
        pytest.param({"timeout": 5, "failure": 2}, "0/0", id="only-no-answer-keys"),
        pytest.param({"malicious": "3", "harmless": 2}, "0/2", id="string-count-is-zero"),
    ],
)
def test_detection_ratio(stats_value: dict | None, ratio: str) -> None:
    assert detection_ratio(stats_value) == ratio


@pytest.mark.parametrize(
    ("stats_value", "count"),
    [
        pytest.param({"malicious": 3}, 3, id="present"),
        pytest.param({}, 0, id="missing"),
        pytest.param({"malicious": None}, 0, id="null"),
        pytest.param({"malicious": "3"}, 0, id="string"),
        pytest.param({"malicious": False}, 0, id="bool"),
        pytest.param({"malicious": -1}, 0, id="negative"),
    ],
)
def test_stat_count(stats_value: dict, count: int) -> None:
    assert stat_count(stats_value, "malicious") == count
