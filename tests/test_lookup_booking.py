"""How a sequential lookup on SQLite books its calls, and how it stores answers.

A sequential run books the next group's call in the transaction that stores the
current answer. These tests check that the ledger then counts exactly the calls
sent: also when the run stops or reaches its call limit with a booking unused, and
when a request could not reach VirusTotal at all.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import select
from loopback_http import refused_url
from support import sim_settings, stage_context, vt_object_calls

from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import Counter, QuotaLedger, VtAlias, VtObject
from tqvt_sync.errors import ServiceUnavailableError
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.stages import cache
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull

PLAN = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)
HASHES = [f"{digit}" * 64 for digit in "0123456789"]


@pytest.fixture
def library(clock, db_url, tmp_path):
    """Ten distinct hashes in ThreatQ and VirusTotal, pulled into a fresh database."""
    with running_simulators(clock=clock, vt_plan=PLAN) as (tq, vt):
        for position, value in enumerate(HASHES):
            vt.add_generated("file", value, malicious=position)
            tq.add_indicator(value, "SHA-256")
        clock.advance(5)
        ctx = stage_context(sim_settings(tq, vt, db_url, str(tmp_path)), clock)
        pull(ctx, PullOptions(since=clock.now() - timedelta(days=1)))
        yield ctx, vt, tq


def ledger_counts(ctx) -> tuple[int, int]:
    """Return the calls booked today and the calls in the minute window."""
    with ctx.sessions() as session:
        row = session.execute(select(QuotaLedger)).scalar_one()
        return row.used_today, len(row.recent_calls)


def test_full_run_books_each_call(library):
    ctx, vt, _ = library
    counts = lookup(ctx)
    assert counts["calls"] == vt_object_calls(vt) == len(HASHES)
    assert ledger_counts(ctx) == (len(HASHES), len(HASHES))


def test_stop_releases_unused_booking(library):
    ctx, vt, _ = library
    seen = []

    def stop_after_three(event):
        if event["event"] == "progress":
            seen.append(event)
            if len(seen) == 3:
                ctx.stop.set("test")

    ctx.progress = stop_after_three
    counts = lookup(ctx)
    assert counts["calls"] == vt_object_calls(vt) == 3
    assert ledger_counts(ctx) == (3, 3)


def test_call_limit_books_no_extra(library):
    ctx, vt, _ = library
    counts = lookup(ctx, max_calls=4)
    assert counts["calls"] == vt_object_calls(vt) == 4
    assert ledger_counts(ctx) == (4, 4)


def test_refused_connection_releases_booking(library, clock):
    ctx, vt, _ = library
    ctx = stage_context(dataclasses.replace(ctx.settings, vt_api_url=refused_url()), clock)
    with pytest.raises(ServiceUnavailableError, match="could not be reached 5 times in a row"):
        lookup(ctx)
    # Five attempts, none of which reached VirusTotal, leave nothing booked.
    assert vt_object_calls(vt) == 0
    assert ledger_counts(ctx) == (0, 0)


def test_reset_connection_keeps_booking(library):
    ctx, vt, _ = library
    # The simulator reads the request and then drops the connection: VirusTotal may
    # have counted the call, so the ledger keeps it.
    vt.faults.inject("reset_before", path="/files/", times=2)
    counts = lookup(ctx)
    assert counts["calls"] == vt_object_calls(vt) == len(HASHES) + 2
    assert ledger_counts(ctx) == (len(HASHES) + 2, len(HASHES) + 2)


def test_cache_hit_counts_identifier_once(library, clock):
    ctx, vt, tq = library
    lookup(ctx)
    # Two more spellings of one hash: one group, answered from the cache.
    tq.add_indicator(f"{HASHES[0]}\n", "SHA-256")
    tq.add_indicator(f" {HASHES[0]}", "SHA-256")
    clock.advance(5)
    pull(ctx, PullOptions())
    counts = lookup(ctx)
    assert (counts["calls"], counts["cache_hits"]) == (0, 2)
    with ctx.sessions() as session:
        totals = dict(session.execute(select(Counter.name, Counter.value)).all())
    assert totals == {"cache_hits": 1, "cache_misses": len(HASHES), "vt_calls_saved": 2}


def cache_rows(engine) -> tuple[list[tuple], list[tuple]]:
    with engine.connect() as connection:
        objects = connection.execute(select(
            VtObject.kind, VtObject.object_key, VtObject.found, VtObject.expires_at,
            VtObject.hits).order_by(VtObject.id)).all()
        aliases = connection.execute(select(
            VtAlias.kind, VtAlias.identifier, VtObject.object_key)
            .join(VtObject, VtObject.id == VtAlias.object_id)
            .order_by(VtAlias.identifier)).all()
    return objects, aliases


def store_sequence(engine, start) -> None:
    """Store a not-found answer, then the object under its MD5, then again under its SHA-256."""
    sha = "e" * 64
    md5 = "f" * 32
    steps = [
        (md5, None),
        (md5, {"id": sha, "stats": {"malicious": 1}}),
        (sha, {"id": sha, "stats": {"malicious": 2}}),
    ]
    for minutes, (identifier, summary) in enumerate(steps):
        with engine.begin() as connection:
            cache.store_answer(connection, kind="file", identifier=identifier, summary=summary,
                               now=start + timedelta(minutes=minutes), ttl=timedelta(days=1))


def test_upsert_matches_fallback(engine, clock, tmp_path, monkeypatch):
    store_sequence(engine, clock.now())
    with_upsert = cache_rows(engine)

    other = make_engine(f"sqlite:///{tmp_path / 'fallback.db'}")
    migrate.upgrade(other)
    monkeypatch.setattr(cache, "_upserts", lambda dialect_name: None)
    store_sequence(other, clock.now())
    with_fallback = cache_rows(other)
    other.dispose()

    assert with_upsert == with_fallback
    objects, aliases = with_upsert
    # The not-found row keyed by the MD5 stays; the MD5 alias moves to the found object.
    assert [row.object_key for row in objects] == ["f" * 32, "e" * 64]
    assert [(row.identifier, row.object_key) for row in aliases] == [
        ("e" * 64, "e" * 64), ("f" * 32, "e" * 64)]


def test_retry_stays_within_call_limit(library):
    ctx, vt, _ = library
    vt.faults.inject("status", path="/files/", status=503, times=1)
    counts = lookup(ctx, max_calls=1)
    assert counts["calls"] == vt_object_calls(vt) == 1
    assert ledger_counts(ctx) == (1, 1)


def test_stop_during_minute_wait_sends_nothing(library, clock, monkeypatch):
    ctx, vt, _ = library
    vt.faults.inject("status", path="/files/", status=429, times=1)
    sleep = clock.sleep

    def stop_then_sleep(seconds):
        ctx.stop.set("test")
        sleep(seconds)

    monkeypatch.setattr(clock, "sleep", stop_then_sleep)
    counts = lookup(ctx)
    assert counts["calls"] == vt_object_calls(vt) == 1


def test_stop_with_threads_starts_no_more(clock, db_url, tmp_path):
    """With four connections, a stop lets the calls in flight finish and starts no other."""
    with running_simulators(clock=clock, vt_plan=PLAN) as (tq, vt):
        for position in range(40):
            value = f"{position:064x}"
            vt.add_generated("file", value, malicious=1)
            tq.add_indicator(value, "SHA-256")
        clock.advance(5)
        settings = sim_settings(tq, vt, db_url, str(tmp_path), vt_concurrency=4)
        ctx = stage_context(settings, clock)
        pull(ctx, PullOptions(since=clock.now() - timedelta(days=1)))
        vt.latency = 0.05

        def stop_at_first(event):
            if event["event"] == "progress":
                ctx.stop.set("test")

        ctx.progress = stop_at_first
        counts = lookup(ctx)
        assert counts["calls"] == vt_object_calls(vt) <= 8
        assert ledger_counts(ctx)[0] == counts["calls"]
