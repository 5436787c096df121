"""The quota ledger on a FakeClock and a SQLite file built by the migrations."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text

from postgres_support import ADMIN_URL_ENV, fresh_database
from quota_support import max_in_window
from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine, session_factory
from tqvt_sync.db.models import QuotaLedger
from tqvt_sync.errors import EXIT_TEMPORARY, QuotaExhaustedError
from tqvt_sync.quota import (
    Ledger,
    QuotaLimits,
    key_hash,
    limits_from_overall_quotas,
    next_midnight,
    next_month_start,
)
from tqvt_sync.sandbox.virustotal_objects import DATA_DIR

API_KEY = "ledger-test-key-0123456789"


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "template.db"
    template = make_engine(f"sqlite:///{path}")
    migrate.upgrade(template)
    template.dispose()
    return path


@pytest.fixture
def engine(db_url, migrated_template) -> Iterator[Engine]:
    """A copy of a database migrated once for this module, so each test starts empty."""
    shutil.copyfile(migrated_template, db_url.removeprefix("sqlite:///"))
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def make_ledger(engine, clock, *, minute=4, daily=500, monthly=None, reserve=0) -> Ledger:
    ledger = Ledger(session_factory(engine), API_KEY, clock, reserve=reserve)
    ledger.apply_limits(QuotaLimits(minute, daily, monthly, "settings"))
    return ledger


def book_times(ledger: Ledger, clock, count: int) -> list[datetime]:
    times = []
    for _ in range(count):
        assert ledger.book()
        times.append(clock.now())
    return times


def ledger_row(engine) -> QuotaLedger:
    with session_factory(engine)() as session:
        return session.execute(select(QuotaLedger)).scalar_one()


# -- limits read from VirusTotal --------------------------------------------------


@pytest.fixture(scope="module")
def sample_limits() -> QuotaLimits:
    document = json.loads((DATA_DIR / "overall_quotas-premium-user-and-group.json").read_text())
    return limits_from_overall_quotas(document["data"])


def test_sample_minute_limit_from_group_hourly(sample_limits):
    # The group has 1,800,000 - 8,712 hourly calls left, fewer than the user's allowance,
    # so the user may make 12 + 1,791,288 calls this hour, a sixtieth of them a minute.
    assert sample_limits.minute == (12 + 1_800_000 - 8_712) // 60


def test_sample_daily_limit_is_user_allowance(sample_limits):
    assert sample_limits.daily == 1000


def test_sample_used_today(sample_limits):
    assert sample_limits.used_today == 74


def test_sample_monthly_limit_capped_by_group(sample_limits):
    assert sample_limits.monthly == 2564 + 1_000_000_000 - 13_551_234


def test_sample_used_month(sample_limits):
    assert sample_limits.used_month == 2564


def test_sample_source_is_virustotal(sample_limits):
    assert sample_limits.source == "virustotal"


def test_free_key_document_gives_four_a_minute():
    data = {"api_requests_hourly": {"user": {"allowed": 240, "used": 0}},
            "api_requests_daily": {"user": {"allowed": 500, "used": 3}}}
    limits = limits_from_overall_quotas(data)
    assert (limits.minute, limits.daily, limits.used_today) == (4, 500, 3)


def test_empty_document_falls_back_to_free_key():
    limits = limits_from_overall_quotas({})
    assert (limits.minute, limits.daily, limits.monthly) == (4, 500, None)


# -- pacing -------------------------------------------------------------------------


def test_window_full_returns_wait(engine, clock):
    ledger = make_ledger(engine, clock, minute=4)
    assert [ledger.try_book() for _ in range(4)] == [0.0] * 4
    assert ledger.try_book() == pytest.approx(61.0)


def test_window_frees_after_margin(engine, clock):
    ledger = make_ledger(engine, clock, minute=4)
    book_times(ledger, clock, 4)
    clock.advance(61.0)
    assert ledger.try_book() == 0.0


def test_book_never_exceeds_minute_limit(engine, clock):
    ledger = make_ledger(engine, clock, minute=4)
    times = []
    for step in range(40):
        times += book_times(ledger, clock, 1)
        clock.advance(7.0 if step % 3 else 0.5)
    assert max_in_window(times) == 4


def test_book_keeps_pace_with_limit(engine, clock):
    ledger = make_ledger(engine, clock, minute=4)
    times = book_times(ledger, clock, 40)
    # 40 calls at 4 per 61 s take 9 waits of 61 s.
    assert times[-1] - times[0] == timedelta(seconds=9 * 61)


def test_lowered_limit_waits_for_enough_room(engine, clock):
    ledger = make_ledger(engine, clock, minute=10)
    for _ in range(10):
        ledger.try_book()
        clock.advance(1.0)
    ledger.apply_limits(QuotaLimits(4, 500, None, "settings"))
    # 10 calls were booked at 0..9 s; the 7th of them leaves the window at 6 + 61 s.
    assert ledger.try_book() == pytest.approx(6 + 61 - 10)


def test_two_ledgers_share_one_window(engine, clock, db_url):
    other_engine = make_engine(db_url)
    try:
        first = make_ledger(engine, clock, minute=4)
        second = make_ledger(other_engine, clock, minute=4)
        booked = [first.try_book(), second.try_book(), first.try_book(), second.try_book()]
        assert booked == [0.0] * 4
        assert second.try_book() > 0
    finally:
        other_engine.dispose()


# -- days, months, reserve ---------------------------------------------------------


def test_daily_limit_stops_until_midnight(engine, clock):
    ledger = make_ledger(engine, clock, minute=100, daily=3)
    book_times(ledger, clock, 3)
    with pytest.raises(QuotaExhaustedError) as raised:
        ledger.try_book()
    assert raised.value.blocked_until == datetime(2026, 1, 6, tzinfo=UTC)


def test_day_rollover_resets_daily_count(engine, clock):
    ledger = make_ledger(engine, clock, minute=100, daily=3)
    book_times(ledger, clock, 3)
    clock.set(datetime(2026, 1, 6, 0, 0, 0, tzinfo=UTC))
    assert ledger.try_book() == 0.0


def test_day_rollover_keeps_month_count(engine, clock):
    ledger = make_ledger(engine, clock, minute=100, daily=3)
    book_times(ledger, clock, 3)
    clock.set(datetime(2026, 1, 6, 0, 0, 1, tzinfo=UTC))
    book_times(ledger, clock, 1)
    row = ledger_row(engine)
    assert (row.used_today, row.used_month) == (1, 4)


def test_monthly_limit_stops_until_first_of_month(engine, clock):
    clock.set(datetime(2026, 1, 31, 23, 0, tzinfo=UTC))
    ledger = make_ledger(engine, clock, minute=100, daily=500, monthly=2)
    book_times(ledger, clock, 2)
    with pytest.raises(QuotaExhaustedError) as raised:
        ledger.try_book()
    assert (raised.value.scope, raised.value.blocked_until) == (
        "monthly", datetime(2026, 2, 1, tzinfo=UTC))


def test_month_rollover_resets_monthly_count(engine, clock):
    clock.set(datetime(2026, 1, 31, 23, 0, tzinfo=UTC))
    ledger = make_ledger(engine, clock, minute=100, daily=500, monthly=2)
    book_times(ledger, clock, 2)
    clock.set(datetime(2026, 2, 1, 0, 0, tzinfo=UTC))
    assert ledger.try_book() == 0.0


def test_reserve_leaves_calls_for_analysts(engine, clock):
    ledger = make_ledger(engine, clock, minute=100, daily=10, reserve=3)
    book_times(ledger, clock, 7)
    with pytest.raises(QuotaExhaustedError, match="reserve of 3 calls"):
        ledger.try_book()


def test_reserve_counts_left_today(engine, clock):
    ledger = make_ledger(engine, clock, minute=100, daily=10, reserve=3)
    book_times(ledger, clock, 2)
    assert ledger.calls_left_today == 5


def test_used_today_from_virustotal_raises_count(engine, clock):
    ledger = make_ledger(engine, clock)
    ledger.apply_limits(QuotaLimits(4, 500, None, "virustotal", used_today=499))
    book_times(ledger, clock, 1)
    with pytest.raises(QuotaExhaustedError):
        ledger.try_book()


# -- blocks reported by VirusTotal ---------------------------------------------------


def test_block_persists_for_new_ledger(engine, clock, db_url):
    make_ledger(engine, clock).block("daily", next_midnight(clock.now()))
    other_engine = make_engine(db_url)
    try:
        rerun = Ledger(session_factory(other_engine), API_KEY, clock)
        with pytest.raises(QuotaExhaustedError) as raised:
            rerun.check_persisted_block()
    finally:
        other_engine.dispose()
    assert raised.value.blocked_until == datetime(2026, 1, 6, tzinfo=UTC)


def test_block_refuses_booking(engine, clock):
    ledger = make_ledger(engine, clock)
    ledger.block("daily", next_midnight(clock.now()))
    with pytest.raises(QuotaExhaustedError):
        ledger.try_book()


def test_block_lifts_at_reset(engine, clock):
    ledger = make_ledger(engine, clock)
    ledger.block("daily", next_midnight(clock.now()))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    ledger.check_persisted_block()
    assert ledger_row(engine).blocked_until is None


def test_monthly_block_until_next_month(engine, clock):
    clock.set(datetime(2026, 12, 15, 9, 30, tzinfo=UTC))
    ledger = make_ledger(engine, clock)
    ledger.block("monthly", next_month_start(clock.now()))
    with pytest.raises(QuotaExhaustedError) as raised:
        ledger.check_persisted_block()
    assert raised.value.blocked_until == datetime(2027, 1, 1, tzinfo=UTC)


def test_exhausted_is_exit_75(engine, clock):
    ledger = make_ledger(engine, clock)
    ledger.block("daily", next_midnight(clock.now()))
    with pytest.raises(QuotaExhaustedError) as raised:
        ledger.check_persisted_block()
    assert raised.value.exit_code == EXIT_TEMPORARY


def test_exhausted_message_gives_utc_and_local_time(engine, clock):
    ledger = make_ledger(engine, clock)
    ledger.block("daily", next_midnight(clock.now()))
    with pytest.raises(QuotaExhaustedError) as raised:
        ledger.check_persisted_block()
    local = datetime(2026, 1, 6, tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    assert "2026-01-06 00:00 UTC" in str(raised.value)
    assert f"({local} " in str(raised.value)


# -- storage --------------------------------------------------------------------------


def test_row_keyed_by_key_hash(engine, clock):
    make_ledger(engine, clock)
    assert ledger_row(engine).key_hash == key_hash(API_KEY)


def test_key_never_stored(engine, clock, db_url):
    ledger = make_ledger(engine, clock)
    book_times(ledger, clock, 3)
    engine.dispose()
    path = db_url.removeprefix("sqlite:///")
    stored = b"".join(open(name, "rb").read() for name in (path, path + "-wal")
                      if os.path.exists(name))
    assert API_KEY.encode() not in stored


@pytest.mark.postgres
def test_concurrent_first_booking_creates_one_row(clock):
    """A worker that finds no row while another inserts it waits and then uses that row."""
    if not os.environ.get(ADMIN_URL_ENV):
        pytest.skip(f"{ADMIN_URL_ENV} is not set")
    with fresh_database() as url:
        engine = make_engine(url)
        migrate.upgrade(engine)
        errors: list[Exception] = []

        def second_worker() -> None:
            try:
                make_ledger(engine, clock, minute=7)
            except Exception as exc:  # reported by the assert below
                errors.append(exc)

        try:
            with engine.connect() as first:
                first.execute(insert(QuotaLedger).values(
                    key_hash=key_hash(API_KEY), minute_limit=4, daily_limit=500,
                    limits_source="fallback", recent_calls=[], day="2026-01-05", used_today=0,
                    month="2026-01", used_month=0))
                thread = threading.Thread(target=second_worker)
                thread.start()
                wait_for_lock_wait(engine)
                first.commit()
            thread.join(timeout=30)
            row = ledger_row(engine)
        finally:
            engine.dispose()
    assert errors == []
    assert row.minute_limit == 7


def wait_for_lock_wait(engine, timeout: float = 10.0) -> None:
    """Return once some session of this database waits for a lock."""
    deadline = time.monotonic() + timeout
    with engine.connect() as watcher:
        while time.monotonic() < deadline:
            if watcher.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                return
            time.sleep(0.05)
    raise AssertionError("the second worker never waited for the first one's insert")


# -- release and the time of a booking ------------------------------------------------


def test_release_after_window_still_counts_down(engine, clock):
    ledger = make_ledger(engine, clock)
    stamp = ledger.book()
    clock.advance(120)
    ledger.release(stamp)
    row = ledger_row(engine)
    assert (row.used_today, row.used_month, row.recent_calls) == (0, 0, [])


def test_booking_stamped_after_lock_wait(engine, clock):
    """A booking that waits for another writer is stamped when it gets the lock."""
    ledger = make_ledger(engine, clock)
    booked: list[str | None] = []
    with engine.connect() as blocker:
        blocker.begin()  # BEGIN IMMEDIATE: the booking below waits for it
        booker = threading.Thread(target=lambda: booked.append(ledger.book()))
        booker.start()
        time.sleep(0.3)
        clock.advance(25)
        blocker.commit()
        booker.join(timeout=10)
    assert booked == [clock.now().isoformat(timespec="microseconds")]
