"""The lookup stage against the VirusTotal simulator's quotas, on one FakeClock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from quota_support import (
    DeadlineClock,
    identifier_of,
    item,
    lookup_bench,
    sha256_value,
)
from tqvt_sync.clock import FakeClock
from tqvt_sync.db.models import Indicator, QuotaLedger
from tqvt_sync.errors import EXIT_TEMPORARY, QuotaExhaustedError
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan
from tqvt_sync.stages.cache import store_answer
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.virustotal.client import VirusTotalClient

START = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
NEXT_MIDNIGHT = datetime(2026, 1, 6, tzinfo=UTC)
FREE = QuotaPlan(minute=4, hourly=240, daily=500, monthly=None)


def ledger_row(bench) -> QuotaLedger:
    with bench.ctx.sessions() as session:
        return session.execute(select(QuotaLedger)).scalar_one()


def statuses(bench) -> dict[str, int]:
    with bench.ctx.sessions() as session:
        rows = session.execute(select(Indicator.status, func.count()).group_by(Indicator.status))
        return dict(rows.all())


def file_items(count: int, prefix: str, *, first_id: int = 1) -> list[dict]:
    return [item(first_id + i, sha256_value(f"{prefix}-{i}")) for i in range(count)]


# -- limits read at the start of a run ----------------------------------------------------


def limits_after_run(tmp_path, clock, plan: QuotaPlan, **settings) -> tuple:
    with lookup_bench(tmp_path, clock, plan, **settings) as bench:
        lookup(bench.ctx)
        row = ledger_row(bench)
    return row.minute_limit, row.daily_limit, row.limits_source


def test_limits_read_from_virustotal(tmp_path, clock):
    plan = QuotaPlan(minute=None, hourly=600, daily=900, monthly=None)
    assert limits_after_run(tmp_path, clock, plan) == (10, 900, "virustotal")


def test_limits_overridden_by_settings(tmp_path, clock):
    plan = QuotaPlan(minute=None, hourly=600, daily=900, monthly=None)
    limits = limits_after_run(tmp_path, clock, plan, minute_limit=7, daily_limit=42)
    assert limits == (7, 42, "settings")


def test_limits_fall_back_without_endpoint(tmp_path, clock):
    with lookup_bench(tmp_path, clock, FREE) as bench:
        bench.vt.faults.inject("status", status=500, path="/overall_quotas")
        lookup(bench.ctx)
        row = ledger_row(bench)
    assert (row.minute_limit, row.daily_limit, row.limits_source) == (4, 500, "fallback")


# -- VirusTotal reports today's quota spent before the run ------------------------------


@pytest.fixture(scope="module")
def spent_before_run(tmp_path_factory):
    clock = FakeClock(START)
    plan = QuotaPlan(minute=4, hourly=240, daily=1, monthly=None)
    with lookup_bench(tmp_path_factory.mktemp("spent"), clock, plan) as bench:
        bench.vt.set_used(DEFAULT_API_KEY, daily=1)
        bench.queue(file_items(3, "spent"))
        with pytest.raises(QuotaExhaustedError) as raised:
            lookup(bench.ctx)
        yield {"error": raised.value, "bench": bench, "clock": clock}


def test_spent_quota_stops_until_midnight(spent_before_run):
    assert spent_before_run["error"].blocked_until == NEXT_MIDNIGHT


def test_spent_quota_message_names_reset(spent_before_run):
    assert "2026-01-06 00:00 UTC" in str(spent_before_run["error"])


def test_spent_quota_exits_75(spent_before_run):
    assert spent_before_run["error"].exit_code == EXIT_TEMPORARY


def test_spent_quota_makes_no_object_call(spent_before_run):
    assert spent_before_run["bench"].object_requests() == []


def test_spent_quota_reads_quotas_once(spent_before_run):
    assert spent_before_run["bench"].quota_requests() == 1


def test_spent_quota_books_nothing(spent_before_run):
    assert ledger_row(spent_before_run["bench"]).recent_calls == []


def test_spent_quota_stops_at_once(spent_before_run):
    assert spent_before_run["clock"].now() == START


def test_spent_quota_leaves_backlog_pending(spent_before_run):
    assert statuses(spent_before_run["bench"]) == {"pending": 3}


# -- a key with one call a day -------------------------------------------------------


@pytest.fixture(scope="module")
def one_call_a_day(tmp_path_factory):
    clock = DeadlineClock(START)
    plan = QuotaPlan(minute=4, hourly=240, daily=1, monthly=None)
    with lookup_bench(tmp_path_factory.mktemp("daily1"), clock, plan) as bench:
        bench.queue(file_items(6, "daily1"))
        clock.deadline, clock.stop = START + timedelta(days=3), bench.ctx.stop
        with pytest.raises(QuotaExhaustedError):
            lookup(bench.ctx, wait=True)
        yield bench


def test_daily_limit_one_calls_once_a_day(one_call_a_day):
    days = [moment.date().isoformat() for moment in one_call_a_day.accepted()]
    assert days == ["2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08"]


def test_daily_limit_one_gets_no_429(one_call_a_day):
    assert sum(one_call_a_day.rejections().values()) == 0


def test_daily_limit_one_leaves_rest_pending(one_call_a_day):
    assert statuses(one_call_a_day)["pending"] == 2


# -- a backlog larger than a day's quota, starting with none left -------------------------

RESERVE = 440
PER_DAY = 500 - RESERVE


def backlog_items(count: int) -> list[dict]:
    # Scores repeat, so the id breaks ties within one score.
    return [item(i, sha256_value(f"backlog-{i}"), score=(i * 37) % 11) for i in range(1, count + 1)]


def backlog_order(items: list[dict]) -> list[str]:
    ranked = sorted(items, key=lambda entry: (-entry["score"], entry["id"]))
    return [entry["value"] for entry in ranked]


@pytest.fixture(scope="module")
def backlog_days(tmp_path_factory):
    clock = FakeClock(START)
    items = backlog_items(1200)
    with lookup_bench(tmp_path_factory.mktemp("backlog"), clock, FREE,
                      daily_reserve=RESERVE) as bench:
        bench.queue(items)
        bench.vt.set_used(DEFAULT_API_KEY, daily=500)
        result = {"order": backlog_order(items)}
        with pytest.raises(QuotaExhaustedError):
            lookup(bench.ctx)
        result["day1"] = [ident for _, ident in bench.object_requests()]
        clock.set(NEXT_MIDNIGHT)
        with pytest.raises(QuotaExhaustedError) as raised:
            lookup(bench.ctx)
        result["day2_error"] = raised.value
        result["day2"] = [ident for _, ident in bench.object_requests()]
        result["day2_statuses"] = statuses(bench)
        clock.set(NEXT_MIDNIGHT + timedelta(days=1))
        with pytest.raises(QuotaExhaustedError):
            lookup(bench.ctx)
        result["day3"] = [ident for _, ident in bench.object_requests()][len(result["day2"]):]
        yield result


def test_backlog_no_call_while_spent(backlog_days):
    assert backlog_days["day1"] == []


def test_backlog_after_reset_takes_allowance(backlog_days):
    assert len(backlog_days["day2"]) == PER_DAY


def test_backlog_after_reset_in_order(backlog_days):
    assert backlog_days["day2"] == backlog_days["order"][:PER_DAY]


def test_backlog_rest_stays_pending(backlog_days):
    assert backlog_days["day2_statuses"]["pending"] == 1200 - PER_DAY


def test_backlog_rest_not_skipped(backlog_days):
    assert "skipped" not in backlog_days["day2_statuses"]


def test_backlog_stop_names_reserve(backlog_days):
    assert f"reserve of {RESERVE} calls" in str(backlog_days["day2_error"])


def test_backlog_next_day_continues(backlog_days):
    assert backlog_days["day3"] == backlog_days["order"][PER_DAY:2 * PER_DAY]


# -- 24 simulated hours of a free key -----------------------------------------------------


def allowed_calls(start: datetime, end: datetime, minute: int, daily: int) -> int:
    """Return the calls a key's quota allows between ``start`` and ``end``, day by day."""
    total, moment = 0, start
    while moment < end:
        day_end = min(datetime.combine(moment.date() + timedelta(days=1), datetime.min.time(),
                                       tzinfo=UTC), end)
        minutes = int((day_end - moment).total_seconds() // 60)
        total += min(daily, minutes * minute)
        moment = day_end
    return total


def day_items() -> tuple[list[dict], dict[str, list[dict]]]:
    """Return 2,000 distinct identifiers of four kinds and indicators that must cost no call."""
    distinct = []
    for i in range(2000):
        kind = i % 4
        if kind == 0:
            distinct.append(item(i + 1, sha256_value(f"day-{i}"), score=i % 7))
        elif kind == 1:
            distinct.append(item(i + 1, f"http://site{i}.example.net/page", "URL", score=i % 7))
        elif kind == 2:
            distinct.append(item(i + 1, f"host{i}.example.org", "FQDN", score=i % 7))
        else:
            distinct.append(item(i + 1, f"8.{i // 250}.{i % 250}.9", "IP Address", score=i % 7))
    extras = {
        # Other spellings of identifiers above, ranked first so they meet their twins early.
        "duplicate": [item(10_001 + i, entry["value"].upper() if entry["type"]["name"] != "URL"
                           else entry["value"].replace("http://", "hxxp://"),
                           entry["type"]["name"], score=10)
                      for i, entry in enumerate(distinct[:100])],
        "cached": [item(20_001 + i, sha256_value(f"cached-{i}"), score=10) for i in range(100)],
        "invalid": [item(30_001 + i, "abc123", "MD5", score=10) for i in range(20)],
        "unsupported": [item(40_001 + i, f"user{i}@example.com", "Email Address", score=10)
                        for i in range(20)],
        "skipped": [item(50_001 + i, f"10.0.0.{i}", "IP Address", score=10) for i in range(20)],
    }
    return distinct, extras


def seed_cache(bench, entries: list[dict]) -> None:
    with bench.ctx.sessions.begin() as session:
        for entry in entries:
            ident = identifier_of("SHA-256", entry["value"])
            summary = {"id": ident, "stats": {"harmless": 0, "malicious": 0, "suspicious": 0,
                                              "undetected": 60}}
            store_answer(session.connection(), kind="file", identifier=ident, summary=summary,
                         now=bench.clock.now(), ttl=timedelta(days=7))


def extras_pending(bench) -> int:
    with bench.ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(Indicator).where(
            Indicator.id.between(10_001, 29_999), Indicator.status == "pending"))


@pytest.fixture(scope="module")
def full_day(tmp_path_factory):
    clock = DeadlineClock(START)
    distinct, extras = day_items()
    with lookup_bench(tmp_path_factory.mktemp("day"), clock, FREE) as bench:
        bench.queue(distinct)
        for entries in extras.values():
            bench.queue(entries)
        seed_cache(bench, extras["cached"])
        clock.deadline, clock.stop = START + timedelta(hours=24), bench.ctx.stop
        with pytest.raises(QuotaExhaustedError):
            lookup(bench.ctx, wait=True)
        requested = [ident for _, ident in bench.object_requests()]
        no_call = {identifier_of("SHA-256", entry["value"]) for entry in extras["cached"]}
        no_call |= {entry["value"] for name in ("invalid", "unsupported", "skipped")
                    for entry in extras[name]}
        figures = {
            "made": len(bench.accepted()),
            "allowed": allowed_calls(START, clock.deadline, minute=4, daily=500),
            "pacing_429": bench.rejections()["minute"] + bench.rejections()["hourly"],
            "daily_429": bench.rejections()["daily"],
            "repeated": len(requested) - len(set(requested)),
            "no_call_requested": sum(1 for ident in requested if ident in no_call),
            "statuses": statuses(bench),
            "extras_pending": extras_pending(bench),
        }
        figures["ratio"] = figures["made"] / figures["allowed"]
        print("\n24 h on a free key:", {k: v for k, v in figures.items() if k != "statuses"})
        yield figures


def test_full_day_uses_quota(full_day):
    assert full_day["ratio"] >= 0.98


def test_full_day_no_pacing_429(full_day):
    assert full_day["pacing_429"] == 0


def test_full_day_no_daily_429(full_day):
    assert full_day["daily_429"] == 0


def test_full_day_no_identifier_twice(full_day):
    assert full_day["repeated"] == 0


def test_full_day_no_call_for_cached_or_rejected(full_day):
    assert full_day["no_call_requested"] == 0


def test_full_day_invalid_and_unsupported_kept(full_day):
    counts = full_day["statuses"]
    assert (counts["invalid"], counts["unsupported"], counts["skipped"]) == (20, 20, 20)


def test_full_day_serves_duplicates_and_cached(full_day):
    # They are ranked first, so all of them are reached on the first day.
    assert full_day["extras_pending"] == 0


# -- 429 during a run ----------------------------------------------------------------------


def spend_minute_elsewhere(vt) -> None:
    """Spend the key's minute window as another client on the same key would."""
    with VirusTotalClient(vt.url, DEFAULT_API_KEY) as other:
        for i in range(4):
            other.fetch_object("domain", f"other-client-{i}.example.com")


def test_minute_429_waits_and_goes_on(tmp_path, clock):
    with lookup_bench(tmp_path, clock, FREE) as bench:
        bench.queue(file_items(4, "minute"))
        spend_minute_elsewhere(bench.vt)
        counts = lookup(bench.ctx)
        assert counts["identifiers"] == 4
        assert bench.rejections()["minute"] == 1
        assert clock.now() - START >= timedelta(seconds=61)


def test_injected_429_waits_and_goes_on(tmp_path, clock):
    with lookup_bench(tmp_path, clock, FREE) as bench:
        bench.queue(file_items(3, "fault"))
        bench.vt.faults.inject("status", status=429, path="/files/", times=1)
        counts = lookup(bench.ctx)
        assert counts["identifiers"] == 3
        assert ledger_row(bench).used_today == len(bench.object_requests()) == 4


def test_retry_after_503_is_booked(tmp_path, clock):
    with lookup_bench(tmp_path, clock, FREE) as bench:
        bench.queue(file_items(3, "retry"))
        bench.vt.faults.inject("status", status=503, path="/files/", times=2)
        lookup(bench.ctx)
        assert ledger_row(bench).used_today == len(bench.object_requests()) == 5


@contextmanager
def stopped_by_quota(tmp_path, clock, plan: QuotaPlan, files: int, prefix: str,
                     **limits: int) -> Iterator[tuple[Any, QuotaExhaustedError]]:
    """Yield a bench whose lookup of ``files`` files stopped on a spent quota, and its error."""
    with lookup_bench(tmp_path, clock, plan, **limits) as bench:
        bench.queue(file_items(files, prefix))
        with pytest.raises(QuotaExhaustedError) as raised:
            lookup(bench.ctx)
        yield bench, raised.value


@pytest.fixture
def hourly_429(tmp_path, clock):
    """A run that meets VirusTotal's hourly 429 after 3 calls, as on a key shared with others.

    The hourly allowance of 3 gives a local minute limit of 1, so pacing alone lets the
    fourth call out after three minutes.
    """
    plan = QuotaPlan(minute=4, hourly=3, daily=500, monthly=None)
    with stopped_by_quota(tmp_path, clock, plan, 5, "hourly429") as stopped:
        yield stopped


def test_hourly_429_blocks_for_an_hour(hourly_429):
    bench, error = hourly_429
    assert bench.rejections()["hourly"] == 1
    assert error.scope == "hourly"
    assert ledger_row(bench).blocked_until == error.blocked_until == bench.clock.now() + timedelta(
        hours=1)
    assert "The VirusTotal hourly quota is spent" in str(error)


def test_hourly_block_rerun_with_wait_carries_on(hourly_429):
    bench, _ = hourly_429
    counts = lookup(bench.ctx, wait=True)
    assert counts["identifiers"] == 2
    assert ledger_row(bench).blocked_until is None


@pytest.fixture
def daily_429(tmp_path, clock):
    """A run that meets VirusTotal's daily 429 after 5 calls (the override claims 1,000)."""
    plan = QuotaPlan(minute=4, hourly=240, daily=5, monthly=None)
    with stopped_by_quota(tmp_path, clock, plan, 8, "daily429", daily_limit=1000) as stopped:
        yield stopped


def test_daily_429_persists_block(daily_429):
    bench, _ = daily_429
    assert ledger_row(bench).blocked_until == NEXT_MIDNIGHT


def test_daily_429_stops_until_midnight(daily_429):
    _, error = daily_429
    assert error.blocked_until == NEXT_MIDNIGHT


def test_daily_429_rejected_once(daily_429):
    bench, _ = daily_429
    assert bench.rejections()["daily"] == 1


@pytest.mark.parametrize("stopped", ["daily_429", "hourly_429"])
def test_blocked_rerun_sends_nothing(stopped, request):
    bench, _ = request.getfixturevalue(stopped)
    before = len(bench.vt.requests.snapshot())
    with pytest.raises(QuotaExhaustedError):
        lookup(bench.ctx)
    assert len(bench.vt.requests.snapshot()) == before


def test_blocked_rerun_stops_at_once(daily_429):
    bench, _ = daily_429
    before = bench.clock.now()
    with pytest.raises(QuotaExhaustedError):
        lookup(bench.ctx)
    assert bench.clock.now() == before


def test_blocked_rerun_with_wait_carries_on(daily_429):
    bench, _ = daily_429
    counts = lookup(bench.ctx, wait=True)
    assert counts["identifiers"] == 3
    assert bench.accepted()[-1] >= NEXT_MIDNIGHT


# -- backlog order ----------------------------------------------------------------------------


@pytest.fixture
def backlog_mix(tmp_path, clock):
    """Indicators of all three backlog tiers, due together at START + 10 days."""
    with lookup_bench(tmp_path, clock, FREE) as bench:
        values = {name: sha256_value(f"order-{name}") for name in "ABCDEFGH"}
        bench.queue([item(4, values["D"], score=2)])
        lookup(bench.ctx)
        clock.set(START + timedelta(days=1))
        bench.queue([item(5, values["E"], score=8), item(6, values["F"], score=9),
                     item(7, values["G"], score=10)])
        bench.vt.faults.inject("status", status=400, path=values["G"], times=1)
        lookup(bench.ctx)
        # Half a day later, before G's retry time. H's not-found result expires first.
        clock.set(START + timedelta(days=1, hours=12))
        bench.vt.mark_not_found("file", values["H"])
        bench.queue([item(8, values["H"], score=10)])
        lookup(bench.ctx)
        clock.set(START + timedelta(days=10))
        bench.queue([item(1, values["A"], score=5), item(2, values["B"], score=9),
                     item(3, values["C"], score=1)])
        done = len(bench.object_requests())
        lookup(bench.ctx)
        by_identifier = {ident: name for name, ident in values.items()}
        yield [by_identifier[ident] for _, ident in bench.object_requests()[done:]]


def test_backlog_order_by_tier_age_and_score(backlog_mix):
    # Never looked up, by score (B, A, C). Then the oldest verdicts: D from day 0, F and E
    # from day 1 by score, H from day 1.5, although its 1-day not-found TTL ran out first.
    # Last G, whose only lookup VirusTotal rejected.
    assert backlog_mix == ["B", "A", "C", "D", "F", "E", "H", "G"]
