"""Several ``tqvt sync push`` processes on one PostgreSQL database.

Each test fills the outbox in-process against the simulators, runs the push
workers as subprocesses and then compares ThreatQ's VirusTotal attributes with
the expected ones: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from delivery_support import expected_state, foreign_attributes, seed_library, tally
from forkserver_client import ForkServer
from postgres_support import (
    UNLIMITED,
    outbox_statuses,
    pg_url,  # noqa: F401 (fixture)
    push_counts,
    queue_fresh_writes,
    queue_score_updates,
    requires_postgres,
    start_cli,
    wait_for,
)
from sqlalchemy import func, select, text
from support import sim_env

from tqvt_sync.clock import SystemClock
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import OutboxEntry, Run
from tqvt_sync.sandbox import running_simulators

pytestmark = requires_postgres

KILLS = 20


def _run_workers(engine, env: dict[str, str], count: int
                 ) -> tuple[list[int], list[str], list[int]]:
    """Run ``count`` push processes that start together; return exit codes, stderr and pids.

    The workers wait on a lock of the outbox table until all of them have started,
    so their first claims meet, and none gets a head start from starting faster.
    """
    with engine.connect() as gate:
        gate.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
        workers = [start_cli(env, "sync", "push") for _ in range(count)]
        wait_for(lambda: _waiting_on_outbox(engine) == count, 60, "the workers at the lock")
        gate.commit()
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    return [worker.returncode for worker in workers], errors, [worker.pid for worker in workers]


@pytest.fixture
def engine_of(pg_url):
    engine = None

    def build():
        nonlocal engine
        engine = make_engine(pg_url)
        return engine

    yield build
    if engine is not None:
        engine.dispose()


def test_postgres_push_workers_deliver_large_outbox(pg_url, tmp_path, engine_of):
    with running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        # Every eighth indicator carries stale VirusTotal attributes and takes the
        # read-back path. The others go out through consume in batches.
        library = seed_library(tq, vt, 400, carry_every=8, updated_at="2025-01-01 00:00:00")
        queue_fresh_writes(tq, vt, pg_url, str(tmp_path), SystemClock())
        engine = engine_of()
        queued = sum(outbox_statuses(engine).values())
        tq.latency = 0.01
        codes, errors, pids = _run_workers(engine, sim_env(tq, vt, pg_url), 3)
        result = tally(tq, expected_state(tq, vt, library.ids))
        foreign = foreign_attributes(tq, library.ids)
    assert codes == [0, 0, 0], errors
    assert outbox_statuses(engine) == {"completed": queued}
    assert sum(counts["delivered"] for counts in push_counts(engine, pids)) == queued
    assert (result.lost, result.duplicated, result.stale) == (0, 0, 0), result.details[:10]
    assert foreign == library.foreign


def test_postgres_push_workers_share_read_back_rows(pg_url, tmp_path, engine_of):
    with running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        library = seed_library(tq, vt, 120, updated_at="2025-01-01 00:00:00")
        settings = queue_fresh_writes(tq, vt, pg_url, str(tmp_path), SystemClock())
        scores = queue_score_updates(settings, SystemClock())
        engine = engine_of()
        queued = outbox_statuses(engine)["new"]
        tq.latency = 0.02
        codes, errors, pids = _run_workers(engine, sim_env(tq, vt, pg_url), 2)
        result = tally(tq, expected_state(tq, vt, library.ids, scores=scores))
    assert codes == [0, 0], errors
    delivered = [counts["delivered"] for counts in push_counts(engine, pids)]
    assert sum(delivered) == queued
    # Claiming 100 read-back rows at once gave one worker the whole queue.
    assert min(delivered) >= 0.3 * queued, delivered
    assert (result.lost, result.duplicated, result.stale) == (0, 0, 0), result.details[:10]


def _waiting_on_outbox(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE relation = 'outbox'::regclass AND NOT granted"))


def _started_by(engine) -> set[str]:
    """Return the worker ids that hold started rows."""
    with engine.connect() as connection:
        return set(connection.scalars(
            select(OutboxEntry.claimed_by).where(OutboxEntry.status == "started").distinct()))


@pytest.mark.slow
def test_postgres_push_survives_killed_worker(pg_url, tmp_path, engine_of):
    """One push worker runs throughout while another is killed mid-delivery KILLS times."""
    rng = random.Random(7)
    with running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        library = seed_library(tq, vt, 180, updated_at="2025-01-01 00:00:00")
        settings = queue_fresh_writes(tq, vt, pg_url, str(tmp_path), SystemClock())
        scores = queue_score_updates(settings, SystemClock())
        engine = engine_of()
        rows = sum(outbox_statuses(engine).values())
        tq.latency = 0.05
        env = sim_env(tq, vt, pg_url)

        survivor = start_cli(env, "sync", "push")
        known = wait_for(lambda: _started_by(engine), 30, "the first worker's claim")
        # Victims are forked from a process that has imported tqvt, so each one
        # starts in a fraction of a second and the queue outlasts the 20 kills.
        server = ForkServer(tmp_path / "forkserver.log")
        kills = kills_with_orphans = 0
        survivor_ran_throughout = True
        try:
            for _ in range(KILLS):
                victim = server.start(("sync", "push"), env, tmp_path / "victims.log")
                # Rows started under a new worker id belong to the victim: new rows it
                # claimed, or orphans of an earlier victim that it took over.
                claimed = wait_for(lambda: _started_by(engine) - known, 30, "the victim's claim")
                time.sleep(rng.uniform(0.0, 0.3))
                victim.kill()
                assert victim.wait() == -signal.SIGKILL
                kills += 1
                known |= claimed
                # A victim may finish its batch before the kill; count the kills that
                # left started rows behind.
                orphaned = _started_by(engine) & claimed
                kills_with_orphans += bool(orphaned)
                survivor_ran_throughout = survivor_ran_throughout and survivor.poll() is None
        finally:
            server.close()
        _, survivor_err = survivor.communicate(timeout=120)
        result = tally(tq, expected_state(tq, vt, library.ids, scores=scores))

    [survivor_counts] = push_counts(engine, [survivor.pid])
    with engine.connect() as connection:
        unfinished_runs = connection.scalar(
            select(func.count()).select_from(Run).where(Run.ended_at.is_(None)))
    assert survivor.returncode == 0, survivor_err
    assert survivor_ran_throughout
    assert unfinished_runs == kills
    assert outbox_statuses(engine) == {"completed": rows}
    assert (result.lost, result.duplicated, result.stale) == (0, 0, 0), result.details[:10]
    assert kills_with_orphans >= 1
    if orphaned:
        # The last victim died holding rows that only the survivor was left to reconcile.
        assert survivor_counts["reconciled"] >= 1
