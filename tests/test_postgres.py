"""The state database on PostgreSQL: migrations, the pipeline and several lookup workers.

Every test runs against the server of TQVT_TEST_POSTGRES_URL in a database of its
own (see postgres_support) and is skipped when that variable is unset.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from delivery_support import expected_state, is_owned, tally
from postgres_support import (
    LONG_AGO,
    UNLIMITED,
    fresh_database,
    max_in_window,
    pg_engine,  # noqa: F401 (fixture)
    pg_url,  # noqa: F401 (fixture)
    requires_postgres,
    run_cli,
    start_cli,
    wait_for,
)
from sqlalchemy import func, inspect, select, text
from support import sim_env, sim_settings, stage_context, tq_writes, vt_object_calls

from tqvt_sync.db import migrate
from tqvt_sync.db.engine import LOOKUP_IDENTIFIER_LOCK, make_engine
from tqvt_sync.db.models import Base, Indicator, VtObject
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, running_simulators
from tqvt_sync.sandbox.seed import seed_demo
from tqvt_sync.stages.common import stage_lock
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull

pytestmark = requires_postgres

# The sample file "chocolatey clist shim": VirusTotal resolves both hashes to one object.
SAMPLE_MD5 = "24599e1a44d180a90b892f310be34cf0"
SAMPLE_SHA256 = "4eae23e60e21119933e885f14c6af7bffd146169124449ac0dae4163fae9310a"
WORKER_MINUTE_LIMIT = 20
# The ledger frees the first slot 61 s after the first call was booked. The workers
# run 2 s beyond that, about 65 s in all with their start-up.
WORKER_RUN_AFTER_FIRST_CALL = 63.0


def _model_diff(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


# -- migrations --------------------------------------------------------------


def test_postgres_migrations_match_models(pg_engine):
    assert _model_diff(pg_engine) == []


def test_postgres_downgrade_to_empty(pg_engine):
    migrate.downgrade(pg_engine, "base")
    assert set(inspect(pg_engine).get_table_names()) <= {"alembic_version"}


def test_postgres_upgrade_after_downgrade(pg_engine):
    migrate.downgrade(pg_engine, "base")
    migrate.upgrade(pg_engine)
    assert _model_diff(pg_engine) == []


# -- the pipeline --------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline():
    """Run ``tqvt sync run`` twice on the demo data, with the state in PostgreSQL."""
    with fresh_database() as url, running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        seed_demo(tq, vt)
        env = sim_env(tq, vt, url)
        first = run_cli(env, "sync", "run", "--since", "3650d")
        after_first = (vt_object_calls(vt), tq_writes(tq))
        second = run_cli(env, "sync", "run")
        after_second = (vt_object_calls(vt), tq_writes(tq))
        ids = [item["id"] for item in tq.indicators()]
        yield {"first": first, "second": second, "after_first": after_first,
               "after_second": after_second,
               "tally": tally(tq, expected_state(tq, vt, ids)), "tq": tq}


def test_postgres_pipeline_first_run_exits_zero(pipeline):
    assert pipeline["first"].returncode == 0, pipeline["first"].stderr


def test_postgres_pipeline_writes_every_attribute_once(pipeline):
    result = pipeline["tally"]
    assert (result.lost, result.duplicated, result.stale) == (0, 0, 0), result.details


def test_postgres_pipeline_enriches_indicators(pipeline):
    tq = pipeline["tq"]
    enriched = [item for item in tq.indicators()
                if any(is_owned(a) for a in tq.attributes_of(item["id"]))]
    assert len(enriched) >= 30


def test_postgres_pipeline_second_run_exits_zero(pipeline):
    assert pipeline["second"].returncode == 0, pipeline["second"].stderr


def test_postgres_pipeline_second_run_sends_nothing(pipeline):
    assert pipeline["after_second"] == pipeline["after_first"]


# -- pull is exclusive -----------------------------------------------------------


def test_postgres_pull_busy_exits_75(pg_url, tmp_path):
    with running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        settings = sim_settings(tq, vt, pg_url, str(tmp_path))
        ctx = stage_context(settings, tq.clock)
        env = sim_env(tq, vt, pg_url)
        with stage_lock(ctx, "pull", exclusive_on_postgres=True):
            busy = run_cli(env, "sync", "pull")
        free = run_cli(env, "sync", "pull")
        ctx.engine.dispose()
    assert busy.returncode == 75, busy.stderr
    assert "Another tqvt process is running 'sync pull'" in busy.stderr
    assert free.returncode == 0, free.stderr


# -- one identifier, one call -------------------------------------------------------


def _lookup_in_thread(ctx, results, name):
    def run():
        try:
            results[name] = lookup(ctx)
        except Exception as exc:  # the assertion on results shows it
            results[name] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_postgres_lookup_identifier_pulled_during_call(pg_url, tmp_path, clock):
    """A second worker skips an identifier whose call is in flight, even for a new indicator."""
    with running_simulators(clock=clock, vt_plan=UNLIMITED) as (tq, vt):
        tq.add_indicator(SAMPLE_MD5, "MD5", updated_at=clock.now() - timedelta(hours=1))
        settings = sim_settings(tq, vt, pg_url, str(tmp_path), minute_limit=1000)
        first, second = stage_context(settings, clock), stage_context(settings, clock)
        pull(first, PullOptions(since=LONG_AGO))
        vt.faults.inject("latency", path=SAMPLE_MD5, seconds=1.5, times=1)
        results = {}
        thread = _lookup_in_thread(first, results, "first")
        # The call is sent inside the claim's transaction, so the claim is held now.
        wait_for(lambda: vt.faults.fired["latency"], 10, "the first worker's call")
        with first.sessions.begin() as session:
            # The same file, pulled in upper case while the first call is in flight.
            session.add(Indicator(id=10_000, value=SAMPLE_MD5.upper(), type_name="MD5",
                                  kind="file", identifier=SAMPLE_MD5, status="pending",
                                  pulled_at=clock.now(), carries_vt_names=False))
        results["second"] = lookup(second)
        thread.join(timeout=30)
        calls = sum(1 for r in vt.requests if r.path.endswith(SAMPLE_MD5))
        with first.sessions() as session:
            pending = session.scalar(select(func.count()).where(Indicator.status == "pending"))
        first.engine.dispose()
        second.engine.dispose()
    assert not isinstance(results["first"], Exception), results["first"]
    assert calls == 1
    assert pending == 0


def _identifier_locks(engine) -> int:
    """Count the lookup identifier locks held in the database of ``engine``."""
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
            "AND classid = :namespace AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ), {"namespace": LOOKUP_IDENTIFIER_LOCK}).scalar()


def test_postgres_lookup_two_hashes_of_one_file(pg_url, tmp_path, clock):
    """Two workers that look up the MD5 and the SHA-256 of one file at once share one cache row."""
    with running_simulators(clock=clock, vt_plan=UNLIMITED) as (tq, vt):
        for value, type_name in ((SAMPLE_MD5, "MD5"), (SAMPLE_SHA256, "SHA-256")):
            tq.add_indicator(value, type_name, updated_at=clock.now() - timedelta(hours=1))
        settings = sim_settings(tq, vt, pg_url, str(tmp_path), minute_limit=1000)
        first, second = stage_context(settings, clock), stage_context(settings, clock)
        pull(first, PullOptions(since=LONG_AGO))
        vt.faults.inject("latency", path="/files/", seconds=1.0)
        results = {}
        threads = [_lookup_in_thread(first, results, "first"),
                   _lookup_in_thread(second, results, "second")]
        for thread in threads:
            thread.join(timeout=30)
        with first.sessions() as session:
            objects = session.scalar(select(func.count()).select_from(VtObject))
        first.engine.dispose()
        second.engine.dispose()
    assert not isinstance(results["first"], Exception), results["first"]
    assert not isinstance(results["second"], Exception), results["second"]
    assert objects == 1


# -- several lookup processes ----------------------------------------------------------


def _seed_hashes(tq, count: int, *, upper_every: int) -> None:
    """Add ``count`` MD5 indicators, and every ``upper_every``-th value again in upper case."""
    for index in range(count):
        value = hashlib.md5(f"postgres worker {index}".encode()).hexdigest()
        tq.add_indicator(value, "MD5", score=index % 7, updated_at="2025-01-01 00:00:00")
        if index % upper_every == 0:
            tq.add_indicator(value.upper(), "MD5", score=(index + 3) % 7,
                             updated_at="2025-01-01 00:00:00")


def test_postgres_killed_lookup_releases_claim(pg_url):
    with running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        _seed_hashes(tq, 6, upper_every=2)
        env = sim_env(tq, vt, pg_url, TQVT_MINUTE_LIMIT="1000")
        assert run_cli(env, "sync", "pull", "--since", "3650d").returncode == 0
        # The first call of the worker to be killed hangs for 30 s.
        vt.faults.inject("latency", path="/files/", seconds=30.0, times=1)
        victim = start_cli(env, "sync", "lookup")
        engine = make_engine(pg_url)
        # The call is sent inside the claim's transaction, so the claim is held now.
        wait_for(lambda: vt.faults.fired["latency"], 20, "the worker's first call")
        assert _identifier_locks(engine) == 1
        victim.kill()
        victim.wait(timeout=10)
        survivor = run_cli(env, "sync", "lookup")
        with engine.connect() as connection:
            pending = connection.scalar(
                select(func.count()).select_from(Indicator).where(Indicator.status == "pending"))
        engine.dispose()
    assert survivor.returncode == 0, survivor.stderr
    assert pending == 0


@pytest.fixture(scope="module")
def lookup_workers():
    """Run four ``tqvt sync lookup`` processes on one key into a second minute window."""
    plan = QuotaPlan(minute=1000, hourly=None, daily=None, monthly=None)
    with fresh_database() as url, running_simulators(vt_plan=plan) as (tq, vt):
        _seed_hashes(tq, 120, upper_every=3)
        env = sim_env(tq, vt, url, TQVT_MINUTE_LIMIT=str(WORKER_MINUTE_LIMIT),
                      TQVT_VT_CONCURRENCY="2")
        assert run_cli(env, "sync", "pull", "--since", "3650d").returncode == 0
        workers = [start_cli(env, "sync", "lookup") for _ in range(4)]
        wait_for(lambda: vt.accepted_calls(DEFAULT_API_KEY), 60, "the first call")
        time.sleep(WORKER_RUN_AFTER_FIRST_CALL)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=30) for worker in workers]
        yield {
            "returncodes": [worker.returncode for worker in workers],
            "stderr": [err for _, err in outputs],
            "accepted": vt.accepted_calls(DEFAULT_API_KEY),
            "rejections": vt.rejections[DEFAULT_API_KEY],
            "paths": Counter(r.path for r in vt.requests if "/users/" not in r.path),
        }


@pytest.mark.slow
def test_postgres_lookup_workers_stop_cleanly(lookup_workers):
    # 75: stopped by SIGTERM while waiting for the next minute window.
    assert set(lookup_workers["returncodes"]) <= {0, 75}, lookup_workers["stderr"]


@pytest.mark.slow
def test_postgres_lookup_workers_keep_minute_limit(lookup_workers):
    assert max_in_window(lookup_workers["accepted"]) <= WORKER_MINUTE_LIMIT


@pytest.mark.slow
def test_postgres_lookup_workers_use_second_window(lookup_workers):
    assert len(lookup_workers["accepted"]) > WORKER_MINUTE_LIMIT


@pytest.mark.slow
def test_postgres_lookup_workers_get_no_429(lookup_workers):
    assert sum(lookup_workers["rejections"].values()) == 0


@pytest.mark.slow
def test_postgres_lookup_workers_call_each_identifier_once(lookup_workers):
    repeated = {path: count for path, count in lookup_workers["paths"].items() if count > 1}
    assert repeated == {}
