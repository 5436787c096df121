"""The outbox state machine of the push stage, in-process on a fake clock.

Rows are queued by the real pull and lookup stages against the simulators, then
push runs against the ThreatQ simulator (or a scripted server where a reply
needs a header the simulator does not send).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import timedelta

import pytest
from delivery_support import expected_state, seed_library, tally
from loopback_http import LoopbackServer, Reply
from sqlalchemy import select
from support import sim_settings, stage_context

from tqvt_sync.cli.main import main
from tqvt_sync.db.models import Indicator, OutboxEntry, WrittenState
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import MAX_ATTEMPTS, push
from tqvt_sync.stages.verdicts import queue_write

PLAN = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
FIRST_BACKOFF = 30.0
MAX_BACKOFF = 3600.0


@pytest.fixture
def sims(clock):
    with running_simulators(clock=clock, vt_plan=PLAN) as (tq, vt):
        yield tq, vt


@pytest.fixture
def queue(sims, db_url, tmp_path, clock):
    """Return a function that seeds indicators, pulls and looks them up, and returns
    (context, library)."""
    tq, vt = sims

    def build(count, *, carry_every=0, **overrides):
        library = seed_library(tq, vt, count, carry_every=carry_every,
                               updated_at=clock.now() - timedelta(hours=1))
        settings = sim_settings(tq, vt, db_url, str(tmp_path), **overrides)
        ctx = stage_context(settings, clock)
        pull(ctx, PullOptions())
        lookup(ctx)
        return ctx, library

    return build


def rows(ctx):
    with ctx.sessions() as session:
        return list(session.execute(select(OutboxEntry).order_by(OutboxEntry.id)).scalars())


def statuses(ctx):
    return [row.status for row in rows(ctx)]


def push_until_settled(ctx, clock, runs=20):
    """Run push, moving the clock past every backoff, until no row is waiting."""
    for _ in range(runs):
        push(ctx)
        if not any(r.status in ("new", "failed", "started") for r in rows(ctx)):
            return
        clock.advance(MAX_BACKOFF)
    raise AssertionError(f"outbox not settled after {runs} runs: {statuses(ctx)}")


# -- new -> started -> completed ------------------------------------------------


def test_push_completes_new_rows(sims, queue):
    tq, vt = sims
    ctx, library = queue(6)
    push(ctx)
    assert statuses(ctx) == ["completed"] * 6
    assert [r.attempts for r in rows(ctx)] == [1] * 6
    assert tq.requests.count("POST", "/api/indicators/consume") == 1
    assert tally(tq, expected_state(tq, vt, library.ids)).lost == 0


def test_push_records_written_state(sims, queue):
    tq, vt = sims
    ctx, library = queue(3)
    push(ctx)
    with ctx.sessions() as session:
        states = {s.indicator_id: s.fingerprint for s in session.execute(
            select(WrittenState)).scalars()}
    assert states == {r.indicator_id: r.fingerprint for r in rows(ctx)}


def test_claim_commits_started_before_sending(sims, queue):
    tq, vt = sims
    ctx, _ = queue(3)
    tq.faults.inject("latency", method="POST", path="/consume$", seconds=0.4, times=1)
    worker = threading.Thread(target=push, args=(ctx,))
    worker.start()
    seen: list[tuple[str, int, bool]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not seen:
        seen = [(r.status, r.attempts, r.claimed_by is not None) for r in rows(ctx)
                if r.status == "started"]
        consumed_then = tq.requests.count("POST", "/api/indicators/consume")
        time.sleep(0.005)
    worker.join(10)
    assert seen == [("started", 1, True)] * 3
    assert consumed_then == 0
    assert statuses(ctx) == ["completed"] * 3


# -- failed, backoff, Retry-After ----------------------------------------------


def test_retriable_error_marks_failed(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(2)
    tq.faults.inject("status", method="POST", path="/consume$", status=503, times=1)
    push(ctx)
    row = rows(ctx)[0]
    assert row.status == "failed"
    assert row.attempts == 1
    assert "HTTP 503" in row.last_error
    assert clock.now() <= row.next_attempt_at <= clock.now() + timedelta(seconds=FIRST_BACKOFF)


def test_failed_row_retried_when_due(sims, queue, clock):
    tq, vt = sims
    ctx, library = queue(2)
    tq.faults.inject("status", method="POST", path="/consume$", status=503, times=1)
    push(ctx)
    clock.advance(FIRST_BACKOFF)
    push(ctx)
    assert statuses(ctx) == ["completed", "completed"]
    assert [r.attempts for r in rows(ctx)] == [2, 2]
    assert [r.last_error for r in rows(ctx)] == [None, None]
    assert tally(tq, expected_state(tq, vt, library.ids)).lost == 0


def test_failed_row_waits_until_due(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(1)
    tq.faults.inject("status", method="POST", path="/consume$", status=503, times=1)
    push(ctx)
    due = rows(ctx)[0].next_attempt_at
    clock.set(due - timedelta(seconds=1))
    writes_before = tq.requests.count("POST")
    push(ctx)
    assert statuses(ctx) == ["failed"]
    assert tq.requests.count("POST") == writes_before


def test_backoff_is_capped_exponential_with_full_jitter(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(8)
    tq.faults.inject("status", method="POST", path="/(consume|attributes)$", status=503)
    ratios = []
    for attempt in range(1, MAX_ATTEMPTS):
        push(ctx)
        ceiling = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1))
        for row in rows(ctx):
            assert row.status == "failed", f"attempt {attempt}"
            assert row.attempts == attempt
            delay = (row.next_attempt_at - clock.now()).total_seconds()
            assert 0 <= delay <= ceiling, f"attempt {attempt}: {delay} > {ceiling}"
            ratios.append(delay / ceiling)
        clock.set(max(r.next_attempt_at for r in rows(ctx)))
    # Full jitter draws from the whole range [0, ceiling], not from its upper half.
    assert min(ratios) < 0.25
    assert max(ratios) > 0.75


def test_attempt_cap_sends_row_to_dead(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(1)
    tq.faults.inject("status", method="POST", path="/(consume|attributes)$", status=503)
    for _ in range(MAX_ATTEMPTS):
        push(ctx)
        clock.advance(MAX_BACKOFF)
    row = rows(ctx)[0]
    assert row.status == "dead"
    assert row.attempts == MAX_ATTEMPTS
    assert "HTTP 503" in row.last_error


def test_dead_row_is_not_claimed(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(1)
    tq.faults.inject("status", method="GET", path="/attributes$", status=404)
    tq.faults.inject("status", method="POST", path="/consume$", status=503, times=1)
    push(ctx)
    clock.advance(MAX_BACKOFF)
    push(ctx)
    requests_before = len(tq.requests)
    clock.advance(MAX_BACKOFF)
    push(ctx)
    assert statuses(ctx) == ["dead"]
    assert len(tq.requests) == requests_before


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_sets_next_attempt(queue, clock, status):
    ctx, _ = queue(1)
    with LoopbackServer() as server:
        server.script("POST", "/api/token", Reply(200, {
            "access_token": "t", "token_type": "bearer", "expires_in": 1800}))
        server.script("POST", "/api/indicators/query", Reply(200, {
            "total": 1, "data": [{"id": rows(ctx)[0].indicator_id,
                                  "value": rows(ctx)[0].indicator_value,
                                  "type": {"name": rows(ctx)[0].indicator_type}}]}))
        server.script("POST", "/api/indicators/consume",
                      Reply(status, {"errors": ["busy"]}, headers={"Retry-After": "120"}))
        settings = dataclasses.replace(ctx.settings, threatq_url=server.url)
        push(stage_context(settings, clock))
    row = rows(ctx)[0]
    assert row.status == "failed"
    assert row.next_attempt_at == clock.now() + timedelta(seconds=120)


# -- dead at once ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "status"), [("POST", 400), ("GET", 404)])
def test_rejected_write_goes_dead_at_once(sims, queue, method, status):
    tq, _ = sims
    ctx, _ = queue(2, carry_every=2)
    tq.faults.inject("status", method=method, path="/attributes$", status=status)
    push(ctx)
    carried = [r for r in rows(ctx) if r.status != "completed"]
    assert [r.status for r in carried] == ["dead"]
    assert carried[0].attempts == 1
    assert f"HTTP {status}" in carried[0].last_error


def test_rejected_consume_isolated_by_read_back(sims, queue, clock):
    tq, vt = sims
    ctx, library = queue(3)
    tq.faults.inject("status", method="POST", path="/consume$", status=400, times=1)
    push(ctx)
    assert statuses(ctx) == ["completed"] * 3
    assert [r.attempts for r in rows(ctx)] == [2] * 3
    assert tq.requests.count("POST", "/api/indicators/consume") == 1
    assert tally(tq, expected_state(tq, vt, library.ids)).lost == 0


# -- unknown outcome --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["reset_after_commit", "status_after_commit",
                                  "stall_after_commit"])
def test_unknown_outcome_read_back_no_duplicate(sims, queue, clock, kind):
    tq, vt = sims
    ctx, library = queue(4, http_timeout=0.2)
    tq.faults.inject(kind, method="POST", path="/consume$", times=1,
                     seconds=0.4 if kind == "stall_after_commit" else None)
    push(ctx)
    assert statuses(ctx) == ["failed"] * 4
    assert "outcome is unknown" in rows(ctx)[0].last_error
    push_until_settled(ctx, clock)
    result = tally(tq, expected_state(tq, vt, library.ids))
    assert result.duplicated == 0
    assert result.lost == 0
    assert tq.requests.count("POST", "/api/indicators/consume") == 1


def test_unknown_outcome_attribute_create_no_duplicate(sims, queue, clock):
    tq, vt = sims
    ctx, library = queue(2, carry_every=2)
    tq.faults.inject("reset_after_commit", method="POST", path="/attributes$", times=1)
    push_until_settled(ctx, clock)
    result = tally(tq, expected_state(tq, vt, library.ids))
    assert result.duplicated == 0
    assert result.lost == 0


# -- stop request ---------------------------------------------------------------


def test_stop_request_releases_unsent_rows(sims, queue):
    tq, _ = sims
    ctx, _ = queue(8, carry_every=1)
    tq.latency = 0.05
    worker = threading.Thread(target=push, args=(ctx,))
    worker.start()
    deadline = time.monotonic() + 5
    while tq.requests.count("GET") == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    ctx.stop.set()
    worker.join(10)
    released = [r for r in rows(ctx) if r.status == "new"]
    assert len(released) >= 5
    assert {r.attempts for r in released} == {0}
    assert "started" not in statuses(ctx)


# -- order of rows of one indicator ---------------------------------------------


def add_row(ctx, source, *, status, attempts, due, verdict, values):
    """Insert an outbox row for the indicator of ``source`` with ``values`` as attributes."""
    with ctx.sessions.begin() as session:
        row = OutboxEntry(
            indicator_id=source.indicator_id, indicator_value=source.indicator_value,
            indicator_type=source.indicator_type,
            desired={"attributes": values, "score": None}, fingerprint=verdict * 8,
            verdict=verdict, status=status, attempts=attempts, next_attempt_at=due,
            created_at=due, updated_at=due)
        session.add(row)
    return row


def test_claim_waits_for_earlier_failed_row(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(1)
    first = rows(ctx)[0]
    with ctx.sessions.begin() as session:
        row = session.get(OutboxEntry, first.id)
        row.status, row.attempts = "failed", 1
        row.next_attempt_at = clock.now() + timedelta(seconds=600)
    add_row(ctx, first, status="new", attempts=0, due=clock.now(), verdict="newer",
            values={"VirusTotal Verdict": "newer"})
    push(ctx)
    assert statuses(ctx) == ["failed", "new"]
    push_until_settled(ctx, clock)
    verdicts = [a["value"] for a in tq.attributes_of(first.indicator_id)
                if a["name"] == "VirusTotal Verdict"]
    assert verdicts == ["newer"]


def test_queue_rewrites_newest_waiting_row(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(1)
    first = rows(ctx)[0]
    with ctx.sessions.begin() as session:
        row = session.get(OutboxEntry, first.id)
        row.status, row.attempts = "failed", 1
    add_row(ctx, first, status="new", attempts=0, due=clock.now(), verdict="middle",
            values={"VirusTotal Verdict": "middle"})
    newest = {"attributes": {"VirusTotal Verdict": "newest"}, "score": None,
              "verdict": "newest", "fingerprint": "f" * 64}
    with ctx.sessions.begin() as session:
        queue_write(session.connection(), session.get(Indicator, first.indicator_id), newest,
                    clock.now())
    push_until_settled(ctx, clock)
    verdicts = [a["value"] for a in tq.attributes_of(first.indicator_id)
                if a["name"] == "VirusTotal Verdict"]
    assert verdicts == ["newest"]


def test_row_after_dead_row_reads_back(sims, queue, clock):
    tq, _ = sims
    ctx, _ = queue(1)
    tq.faults.inject("reset_after_commit", method="POST", path="/consume$", times=1)
    tq.faults.inject("status", method="GET", path="/attributes$", status=404, times=1)
    push(ctx)
    clock.advance(MAX_BACKOFF)
    push(ctx)
    first = rows(ctx)[0]
    assert first.status == "dead"
    add_row(ctx, first, status="new", attempts=0, due=clock.now(), verdict="later",
            values=dict(first.desired["attributes"], **{"VirusTotal Verdict": "later"}))
    push_until_settled(ctx, clock)
    names = [a["name"] for a in tq.attributes_of(first.indicator_id)]
    assert len(names) == len(set(names))


def test_retried_dead_row_delivered_by_read_back(sims, queue, clock, db_url, tmp_path,
                                                 monkeypatch):
    tq, vt = sims
    ctx, library = queue(1, carry_every=1)
    tq.faults.inject("status", method="GET", path="/attributes$", status=404, times=1)
    push(ctx)
    assert statuses(ctx) == ["dead"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQVT_DB", db_url)
    with pytest.raises(SystemExit):
        main(["--quiet", "outbox", "retry", "--all-dead"])
    clock.set(rows(ctx)[0].next_attempt_at)
    push(ctx)
    row = rows(ctx)[0]
    assert (row.status, row.attempts) == ("completed", 2)
    assert tally(tq, expected_state(tq, vt, library.ids)).lost == 0
