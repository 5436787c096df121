"""1,000 writes to a ThreatQ that commits one write in ten and then fails to answer.

A write is one indicator's VirusTotal attribute set reaching its desired state,
that is one outbox row delivered. The scenario delivers 600 first enrichments
(mostly in consume batches, every 30th through the read-back path because the
indicator already carries VirusTotal attributes) and then 400 changes of the
"VirusTotal Score" attribute after a change of the score table.

The ThreatQ simulator applies 10% of write requests (consume, attribute POST,
PUT and DELETE) and then resets the connection, answers 502, or stalls past the
client timeout. Push runs in-process on a fake clock, so backoff takes no real
time; the stalls cost real time only up to TQVT_HTTP_TIMEOUT each.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import pytest
from delivery_support import expected_state, foreign_attributes, seed_library, tally
from sqlalchemy import func, select
from support import sim_settings, stage_context

from tqvt_sync.clock import FakeClock
from tqvt_sync.db.models import OutboxEntry
from tqvt_sync.errors import TemporaryStop
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import push
from tqvt_sync.stages.rescore import rescore

pytestmark = pytest.mark.slow

INDICATORS = 600
CARRY_EVERY = 30
# Every bucket but harmless and not found gets a new score: 4 of the 6 plans, 400 writes.
NEW_SCORES = {"malicious/high": 10, "malicious/medium": 8, "suspicious/medium": 6,
              "suspicious/low": 4, "undetected": 2, "harmless": 0}
EXPECTED_WRITES = 1000
FAULT_RATE = 0.10
FAULT_KINDS = ("reset_after_commit", "status_after_commit", "stall_after_commit")
TIMEOUT = 0.2
STALL = 0.35
WRITE_PATHS = r"^/api/(indicators/(consume|\d+/attributes(/\d+)?)|indicator/\d+/scores)$"
MAX_REQUESTS_PER_WRITE = 1.3


def arm_write_faults(tq) -> None:
    """Fire one of FAULT_KINDS on FAULT_RATE of write requests, each kind equally often.

    The first two consume batches also fail after commit, so that at least two
    batches of 100 first enrichments, not only single attribute writes, are
    delivered again after an unknown outcome.
    """
    tq.faults.inject("reset_after_commit", method="POST", path="/consume$", times=1)
    tq.faults.inject("status_after_commit", method="POST", path="/consume$", times=1)
    for method in ("POST", "PUT", "DELETE"):
        for position, kind in enumerate(FAULT_KINDS):
            # Faults are tried in order, so later ones roll only when earlier ones did not fire.
            share = FAULT_RATE / len(FAULT_KINDS)
            rate = share / (1 - share * position)
            seconds = STALL if kind == "stall_after_commit" else None
            tq.faults.inject(kind, method=method, path=WRITE_PATHS, rate=rate, seconds=seconds)


def deliver(ctx, clock, max_runs=40) -> int:
    """Run push until every row is completed or dead, moving the fake clock past each
    backoff; return the number of runs."""
    for runs in range(1, max_runs + 1):
        try:
            push(ctx)
        except TemporaryStop:
            pass
        with ctx.sessions() as session:
            waiting = session.scalar(select(func.count()).select_from(OutboxEntry).where(
                OutboxEntry.status.in_(("new", "failed", "started"))))
        if waiting == 0:
            return runs
        clock.advance(3600)
    raise AssertionError(f"outbox not settled after {max_runs} push runs")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    clock = FakeClock()
    plan = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
    with running_simulators(clock=clock, vt_plan=plan) as (tq, vt):
        library = seed_library(tq, vt, INDICATORS, carry_every=CARRY_EVERY,
                               updated_at=clock.now() - timedelta(hours=1))
        before = tq.indicators()
        settings = sim_settings(tq, vt, f"sqlite:///{workdir / 'state.db'}", str(workdir),
                                http_timeout=TIMEOUT)
        ctx = stage_context(settings, clock)
        pull(ctx, PullOptions())
        lookup(ctx)

        arm_write_faults(tq)
        start = len(tq.requests)
        started, fake_started = time.monotonic(), clock.now()
        runs = deliver(ctx, clock)
        rescored = stage_context(dataclasses.replace(settings, scores=NEW_SCORES), clock)
        rescore(rescored)
        runs += deliver(rescored, clock)
        elapsed = time.monotonic() - started
        requests = tq.requests.snapshot()[start:]

        with ctx.sessions() as session:
            outbox = list(session.execute(select(OutboxEntry)).scalars())
        yield {
            "tq": tq, "library": library, "before": before, "outbox": outbox,
            "requests": requests, "fired": dict(tq.faults.fired), "runs": runs,
            "elapsed": elapsed, "fake_elapsed": (clock.now() - fake_started).total_seconds(),
            "expected": expected_state(tq, vt, library.ids, scores=NEW_SCORES),
        }


def test_faults_write_count(faulty):
    assert len(faulty["outbox"]) == EXPECTED_WRITES


def test_faults_every_write_completed(faulty):
    assert {row.status for row in faulty["outbox"]} == {"completed"}


def test_faults_fired_each_kind(faulty):
    for kind in FAULT_KINDS:
        assert faulty["fired"].get(kind, 0) >= 5, faulty["fired"]


def test_faults_consume_batches_retried(faulty):
    # Rows 1..INDICATORS are the first enrichments; two consume batches of about a
    # hundred fresh rows each failed after commit.
    retried = [row for row in faulty["outbox"] if row.attempts > 1 and row.id <= INDICATORS]
    assert len(retried) >= 150


def test_faults_rows_retried(faulty):
    retried = [row for row in faulty["outbox"] if row.attempts > 1]
    assert len(retried) >= 50


def test_faults_nothing_lost(faulty):
    result = tally(faulty["tq"], faulty["expected"])
    assert result.lost == 0, result.details[:20]


def test_faults_nothing_duplicated(faulty):
    result = tally(faulty["tq"], faulty["expected"])
    assert result.duplicated == 0, result.details[:20]


def test_faults_no_stale_attribute(faulty):
    result = tally(faulty["tq"], faulty["expected"])
    assert result.stale == 0, result.details[:20]


def test_faults_other_sources_untouched(faulty):
    library = faulty["library"]
    assert foreign_attributes(faulty["tq"], library.ids) == library.foreign


def test_faults_no_indicator_created(faulty):
    values = [(i["value"], i["type"]["name"]) for i in faulty["tq"].indicators()]
    assert values == [(i["value"], i["type"]["name"]) for i in faulty["before"]]


def test_faults_requests_per_write(faulty):
    per_write = len(faulty["requests"]) / EXPECTED_WRITES
    print(f"ThreatQ requests per write: {per_write:.3f} "
          f"({len(faulty['requests'])} requests, faults {faulty['fired']})")
    assert per_write <= MAX_REQUESTS_PER_WRITE


def test_faults_retries_wait_on_fake_clock(faulty):
    # Each push run after the first waited an hour of backoff on the fake clock.
    assert faulty["fake_elapsed"] >= 3600 * (faulty["runs"] - 2)
    assert faulty["elapsed"] < faulty["fake_elapsed"] / 60
