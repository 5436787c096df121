"""SQLite settings, file modes, stage locks and signal handling of the CLI.

The subprocess tests run ``python -m tqvt_sync`` against simulators in this
process, slowed by simulator latency so that a stage is still running when the
test acts on it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from delivery_support import expected_state, seed_library, tally
from sqlalchemy import text
from support import sim_env

from tqvt_sync.db.engine import BUSY_TIMEOUT_MS
from tqvt_sync.sandbox import QuotaPlan, running_simulators

PLAN = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
EXIT_TEMPORARY = 75
STOP_WITHIN = 5.0
LIMITS = {"TQVT_MINUTE_LIMIT": "100000", "TQVT_DAILY_LIMIT": "100000"}


# -- connection settings ---------------------------------------------------------


def test_sqlite_journal_mode_wal(engine):
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_sqlite_synchronous_full(engine):
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_sqlite_busy_timeout(engine):
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS


def test_sqlite_transaction_takes_write_lock_at_begin(engine, db_url):
    path = db_url.removeprefix("sqlite:///")
    with engine.begin() as connection:
        connection.execute(text("SELECT 1"))
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


# -- subprocess helpers ----------------------------------------------------------


@pytest.fixture
def sims():
    with running_simulators(vt_plan=PLAN) as pair:
        yield pair


def start(env: dict[str, str], *args: str, umask: int = -1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tqvt_sync", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            umask=umask)


def run(env: dict[str, str], *args: str, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tqvt_sync", *args], env=env,
                          capture_output=True, text=True, timeout=120, umask=umask)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def queued(sims, db_path: Path, count: int, **library) -> tuple[dict[str, str], object]:
    """Seed ``count`` indicators, pull and look them up; return the environment and library."""
    tq, vt = sims
    seeded = seed_library(tq, vt, count, updated_at=datetime.now(UTC) - timedelta(hours=1),
                          **library)
    env = sim_env(tq, vt, str(db_path), **LIMITS)
    for args in (("sync", "pull", "--since", "2d"), ("sync", "lookup")):
        result = run(env, *args)
        assert result.returncode == 0, result.stderr
    return env, seeded


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def integrity(db_path: Path) -> str:
    connection = sqlite3.connect(db_path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def count_rows(db_path: Path, query: str) -> list[tuple]:
    connection = sqlite3.connect(db_path)
    try:
        return list(connection.execute(query))
    finally:
        connection.close()


# -- file modes ------------------------------------------------------------------


def test_files_private_under_umask_zero(sims, tmp_path):
    tq, vt = sims
    seed_library(tq, vt, 8, updated_at=datetime.now(UTC) - timedelta(hours=1))
    db_path = tmp_path / "new-dir" / "state.db"
    env = sim_env(tq, vt, str(db_path), **LIMITS)
    assert run(env, "sync", "pull", "--since", "2d", umask=0).returncode == 0
    vt.latency = 0.2
    process = start(env, "sync", "lookup", umask=0)
    try:
        wait_for(lambda: len(vt.requests) >= 2 and Path(f"{db_path}-wal").exists())
        modes = {name: mode(Path(f"{db_path}{name}")) for name in ("", "-wal", "-shm")}
        lock_mode = mode(Path(f"{db_path}.lookup.lock"))
    finally:
        process.kill()
        process.communicate()
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert lock_mode == 0o600
    assert mode(db_path.parent) == 0o700


def test_new_database_private_under_umask_zero(tmp_path):
    db_path = tmp_path / "fresh.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQVT_", "THREATQ_", "VT_"))}
    env["TQVT_DB"] = str(db_path)
    result = run(env, "db", "upgrade", umask=0)
    assert result.returncode == 0, result.stderr
    assert mode(db_path) == 0o600


# -- one process per stage -------------------------------------------------------


STAGES = {
    "pull": ("tq", ("sync", "pull", "--collection", "watch")),
    "lookup": ("vt", ("sync", "lookup")),
    "push": ("tq", ("sync", "push")),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_second_process_same_stage_exits_75(sims, tmp_path, stage):
    tq, vt = sims
    db_path = tmp_path / "state.db"
    env, library = queued(sims, db_path, 6, carry_every=1)
    env["TQVT_PAGE_SIZE"] = "1"
    tq.add_collection("watch", library.ids)
    if stage == "lookup":
        with sqlite3.connect(db_path) as connection:
            connection.execute("UPDATE indicators SET next_lookup_at = NULL")
            connection.execute("UPDATE vt_objects SET expires_at = '2000-01-01 00:00:00'")
    simulator_name, args = STAGES[stage]
    simulator = tq if simulator_name == "tq" else vt
    simulator.latency = 0.3
    before = len(simulator.requests)
    first = start(env, *args)
    try:
        wait_for(lambda: len(simulator.requests) > before + 1)
        started = time.monotonic()
        second = run(env, *args)
        elapsed = time.monotonic() - started
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
        simulator.latency = 0.0
    assert second.returncode == EXIT_TEMPORARY
    assert f"Another tqvt process is running 'sync {stage}' on this database" in second.stderr
    assert "database is locked" not in second.stderr + err
    assert elapsed < 5
    assert first.returncode == EXIT_TEMPORARY, err


def test_pull_and_push_together_succeed(sims, tmp_path):
    tq, vt = sims
    db_path = tmp_path / "state.db"
    env, library = queued(sims, db_path, 12, carry_every=2)
    seed_library(tq, vt, 0)
    for index in range(12):
        tq.add_indicator(f"extra{index}.example.net", "FQDN")
    time.sleep(1.0)  # leave the new indicators' second behind the pull's signpost
    env = dict(env, TQVT_PAGE_SIZE="1")
    tq.latency = 0.01
    pulling = start(env, "sync", "pull")
    pushing = start(env, "sync", "push")
    pull_out, pull_err = pulling.communicate(timeout=120)
    push_out, push_err = pushing.communicate(timeout=120)
    assert (pulling.returncode, pushing.returncode) == (0, 0), pull_err + push_err
    assert "database is locked" not in pull_err + push_err
    assert count_rows(db_path, "SELECT count(*) FROM indicators") == [(24,)]
    assert count_rows(db_path, "SELECT status, count(*) FROM outbox GROUP BY status") == [
        ("completed", 12)]
    result = tally(tq, expected_state(tq, vt, library.ids))
    assert (result.lost, result.duplicated) == (0, 0)


# -- SIGINT and SIGTERM ----------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_push_cleanly(sims, tmp_path, signum):
    tq, vt = sims
    db_path = tmp_path / "state.db"
    env, library = queued(sims, db_path, 10, carry_every=1)
    tq.latency = 0.05
    before = len(tq.requests)
    process = start(env, "sync", "push")
    wait_for(lambda: len(tq.requests) >= before + 6)
    signalled = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    stopped_in = time.monotonic() - signalled
    tq.latency = 0.0
    assert process.returncode == EXIT_TEMPORARY, err
    assert stopped_in < STOP_WITHIN
    assert "Stopped by a signal" in err
    assert integrity(db_path) == "ok"
    statuses = dict(count_rows(db_path, "SELECT status, count(*) FROM outbox GROUP BY status"))
    assert "started" not in statuses
    assert statuses.get("new", 0) >= 3
    completed = [i for (i,) in count_rows(
        db_path, "SELECT indicator_id FROM outbox WHERE status = 'completed'")]
    done = tally(tq, {i: e for i, e in expected_state(tq, vt, library.ids).items()
                      if i in completed})
    assert (done.lost, done.duplicated) == (0, 0)


def test_push_after_signal_finishes_the_rest(sims, tmp_path):
    tq, vt = sims
    db_path = tmp_path / "state.db"
    env, library = queued(sims, db_path, 10, carry_every=1)
    tq.latency = 0.05
    before = len(tq.requests)
    process = start(env, "sync", "push")
    wait_for(lambda: len(tq.requests) >= before + 6)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    tq.latency = 0.0
    assert run(env, "sync", "push").returncode == 0
    result = tally(tq, expected_state(tq, vt, library.ids))
    assert (result.lost, result.duplicated, result.stale) == (0, 0, 0)


def test_sigterm_stops_lookup_cleanly(sims, tmp_path):
    tq, vt = sims
    db_path = tmp_path / "state.db"
    seed_library(tq, vt, 30, updated_at=datetime.now(UTC) - timedelta(hours=1))
    env = sim_env(tq, vt, str(db_path), **LIMITS)
    assert run(env, "sync", "pull", "--since", "2d").returncode == 0
    vt.latency = 0.1
    before = len(vt.requests)
    process = start(env, "sync", "lookup")
    wait_for(lambda: len(vt.requests) >= before + 4)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    stopped_in = time.monotonic() - signalled
    vt.latency = 0.0
    assert process.returncode == EXIT_TEMPORARY, err
    assert stopped_in < STOP_WITHIN
    assert integrity(db_path) == "ok"
    rows = count_rows(db_path, "SELECT i.status, count(o.id) FROM indicators i "
                               "LEFT JOIN outbox o ON o.indicator_id = i.id GROUP BY i.id")
    looked_up = [queued for status, queued in rows if status in ("looked_up", "not_found")]
    pending = [queued for status, queued in rows if status == "pending"]
    assert looked_up and pending
    assert set(looked_up) == {1}
    assert set(pending) == {0}
    runs = count_rows(db_path, "SELECT outcome FROM runs WHERE stage = 'lookup' "
                               "ORDER BY started_at DESC LIMIT 1")
    assert runs == [("stopped",)]
