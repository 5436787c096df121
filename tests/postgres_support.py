"""Helpers for the PostgreSQL tests: a database per test and workers as subprocesses.

The server comes from TQVT_TEST_POSTGRES_URL. Each test gets a database of its
own, named ``tqvt_test_<random>``, created through that URL and dropped at the
end, so tests on one server never share state.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from support import sim_settings, stage_context

from tqvt_sync.clock import Clock
from tqvt_sync.config import Settings
from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import OutboxEntry, Run
from tqvt_sync.sandbox import QuotaPlan
from tqvt_sync.sandbox.postgres import scratch_database
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import push
from tqvt_sync.stages.rescore import rescore

ADMIN_URL_ENV = "TQVT_TEST_POSTGRES_URL"
UNLIMITED = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

requires_postgres = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(ADMIN_URL_ENV), reason=f"{ADMIN_URL_ENV} is not set"),
]


def fresh_database() -> AbstractContextManager[str]:
    """Create an empty database on the server of TQVT_TEST_POSTGRES_URL and drop it on exit."""
    return scratch_database(os.environ[ADMIN_URL_ENV], "tqvt_test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def pg_engine(pg_url):
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tqvt_sync", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tqvt_sync", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` every 20 ms until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def queue_fresh_writes(tq: Any, vt: Any, url: str, workdir: str, clock: Clock) -> Settings:
    """Pull and look up everything in ThreatQ in-process, and return the settings used.

    The outbox then contains one row per indicator, found in VirusTotal or not.
    """
    settings = sim_settings(tq, vt, url, workdir, minute_limit=100_000)
    ctx = stage_context(settings, clock)
    try:
        pull(ctx, PullOptions(since=LONG_AGO))
        lookup(ctx)
    finally:
        ctx.engine.dispose()
    return settings


def queue_score_updates(settings: Settings, clock: Clock) -> dict[str, int]:
    """Deliver the queued writes, then queue a new score for every scored indicator.

    The new rows take the read-back path (tqvt wrote to these indicators before)
    and change one attribute, "VirusTotal Score": one GET and one PUT each.
    Returns the score table the new rows were computed with.
    """
    ctx = stage_context(settings, clock)
    try:
        push(ctx)
    finally:
        ctx.engine.dispose()
    shifted = {key: min(score + 1, 10) for key, score in settings.scores.items()}
    ctx = stage_context(dataclasses.replace(settings, scores=shifted), clock)
    try:
        rescore(ctx)
    finally:
        ctx.engine.dispose()
    return shifted


def outbox_statuses(engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(OutboxEntry.status, func.count()).group_by(OutboxEntry.status)).all()
    return {status: count for status, count in rows}


def push_counts(engine, pids: list[int]) -> list[dict[str, int]]:
    """Return the counts of the push runs of the processes ``pids``, in that order."""
    with engine.connect() as connection:
        rows = dict(connection.execute(
            select(Run.pid, Run.counts).where(Run.stage == "push", Run.pid.in_(pids))).all())
    return [rows[pid] for pid in pids]


def max_in_window(times: list[datetime], seconds: float = 60.0) -> int:
    """Return the largest number of ``times`` that fall within any window of ``seconds``."""
    ordered = sorted(times)
    width = timedelta(seconds=seconds)
    best = 0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best
