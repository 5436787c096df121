"""Three processes on one database and one API key stay within the minute limit together.

The processes run on the real clock for a little over one minute, so the
simulator receives calls from two minute windows. Local pacing is the only
limit here: the simulator's own plan allows far more than ``MINUTE_LIMIT``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from postgres_support import ADMIN_URL_ENV, fresh_database
from quota_support import item, lookup_bench, max_in_window, sha256_value
from support import sim_env
from tqvt_sync.clock import SystemClock
from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import Counter, Run
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, running_simulators

MINUTE_LIMIT = 20
# Seconds after the first accepted call: the second minute window opens at 61 s
# and has time to fill.
RUN_SECONDS = 63.0
PROCESSES = 3
GENEROUS = QuotaPlan(minute=1000, hourly=None, daily=None, monthly=None)
BOOKER = Path(__file__).with_name("quota_booker.py")


@pytest.fixture
def postgres_database():
    if not os.environ.get(ADMIN_URL_ENV):
        pytest.skip(f"{ADMIN_URL_ENV} is not set")
    with fresh_database() as url:
        yield url


def stop_after_first_call(vt, processes: list[subprocess.Popen], seconds: float) -> None:
    """Send SIGTERM ``seconds`` after the simulator accepted the first call, then reap."""
    deadline = time.monotonic() + 60
    while not vt.accepted_calls(DEFAULT_API_KEY) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(seconds)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.postgres
def test_lookup_processes_share_minute_limit(tmp_path, postgres_database):
    with lookup_bench(tmp_path, SystemClock(), GENEROUS, db_url=postgres_database) as bench:
        bench.queue(item(i, sha256_value(f"processes-{i}")) for i in range(1, 401))
        env = sim_env(bench.tq, bench.vt, postgres_database,
                      TQVT_MINUTE_LIMIT=str(MINUTE_LIMIT))
        processes = [
            subprocess.Popen([sys.executable, "-m", "tqvt_sync", "sync", "lookup"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(PROCESSES)
        ]
        stop_after_first_call(bench.vt, processes, RUN_SECONDS)
        outputs = [process.communicate()[1] for process in processes]
        accepted = bench.accepted()
        requested = [ident for _, ident in bench.object_requests()]
        with bench.ctx.sessions() as session:
            runs = session.execute(select(Run).where(Run.stage == "lookup")).scalars().all()
            calls_per_run = sorted(run.counts.get("calls", 0) for run in runs)
            misses = session.scalar(select(Counter.value).where(Counter.name == "cache_misses"))

    print(f"\n{len(accepted)} calls from {PROCESSES} lookup processes on PostgreSQL, "
          f"max {max_in_window(accepted)} in any 60 s window, per process {calls_per_run}")
    assert [process.returncode for process in processes] == [75] * PROCESSES, outputs
    assert len(accepted) > 2 * MINUTE_LIMIT - PROCESSES
    assert len(calls_per_run) == PROCESSES
    assert min(calls_per_run) > 0
    assert max_in_window(accepted) <= MINUTE_LIMIT
    assert len(requested) == len(set(requested))
    # Each completed call adds one cache miss, and concurrent workers must not lose any.
    assert misses == len(accepted)


@pytest.mark.slow
def test_ledger_processes_share_minute_limit_sqlite(tmp_path):
    if os.environ.get(ADMIN_URL_ENV):
        pytest.skip("PostgreSQL is available, so the lookup-process test covers this")
    db_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    engine.dispose()
    with running_simulators(vt_plan=GENEROUS) as (_, vt):
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("VT_", "TQVT_"))}
        processes = [
            subprocess.Popen([sys.executable, str(BOOKER), db_url, vt.url, DEFAULT_API_KEY,
                              str(MINUTE_LIMIT), str(RUN_SECONDS), f"booker{n}"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(PROCESSES)
        ]
        outputs = [process.communicate(timeout=RUN_SECONDS + 60) for process in processes]
        accepted = vt.accepted_calls(DEFAULT_API_KEY)

    sent = [int(stdout.strip() or 0) for stdout, _ in outputs]
    print(f"\n{len(accepted)} calls from {PROCESSES} ledger processes on SQLite, "
          f"max {max_in_window(accepted)} in any 60 s window, per process {sent}")
    assert [process.returncode for process in processes] == [0] * PROCESSES, outputs
    assert len(accepted) > 2 * MINUTE_LIMIT - PROCESSES
    # SQLite's busy handler lets the process that just committed book again first, so
    # one process may get no slot at all. Two processes that book suffice to share the ledger.
    assert sum(1 for count in sent if count > 0) >= 2
    assert max_in_window(accepted) <= MINUTE_LIMIT
