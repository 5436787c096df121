"""Measure push throughput with one and with two workers on one PostgreSQL database.

    python -m benchmarks.postgres_workers [--url URL] [--indicators N] [--rounds R]
                                          [--latency SECONDS]

The script creates a database ``tqvt_bench_<random>`` on the server of ``--url``
(default: TQVT_TEST_POSTGRES_URL, else the local server) and drops it at the end.
It seeds ThreatQ with N SHA-256 indicators, runs pull, lookup and a first push
in-process, so tqvt has written to every indicator. Each round then queues a new
"VirusTotal Score" for every scored indicator (a rescore with the score table
shifted by one), and ``tqvt sync push`` delivers the rows with one worker, then,
after the next rescore, with two. These rows take the read-back path: one GET of
the indicator's attributes and one PUT each, both delayed by ``--latency`` in the
ThreatQ simulator. Fresh rows would go out 100 to a consume request, which
measures batching rather than worker scaling.

The workers wait on a lock of the outbox table until all of them have started,
so the timing starts at the same moment for each and excludes Python start-up.
The figure is the median throughput of the rounds, and the ratio is two workers
over one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.clock import SystemClock
from tqvt_sync.config import Settings, load_settings
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import OutboxEntry, Run
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, running_simulators
from tqvt_sync.sandbox.postgres import scratch_database
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import push
from tqvt_sync.stages.rescore import rescore

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UNLIMITED = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)


def settings_for(tq, vt, url: str, workdir: str) -> Settings:
    base = load_settings(environ={}, cwd=workdir)
    return dataclasses.replace(
        base, threatq_url=tq.url, threatq_client_id=tq.credentials.client_id,
        threatq_email=tq.credentials.email, threatq_password=tq.credentials.password,
        vt_api_key=DEFAULT_API_KEY, vt_api_url=vt.url, db=url, minute_limit=100_000,
    )


def worker_env(tq, vt, url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("THREATQ_", "VT_", "TQVT_"))}
    env.update({
        "THREATQ_URL": tq.url, "THREATQ_CLIENT_ID": tq.credentials.client_id,
        "THREATQ_EMAIL": tq.credentials.email, "THREATQ_PASSWORD": tq.credentials.password,
        "VT_API_KEY": DEFAULT_API_KEY, "VT_API_URL": vt.url, "TQVT_DB": url,
        "TQVT_LOG_LEVEL": "WARNING",
    })
    return env


def run_stage(settings: Settings, stage, *args) -> None:
    ctx = Runtime(options={}, settings_override=settings, clock=SystemClock()).stage_context()
    try:
        stage(ctx, *args)
    finally:
        ctx.engine.dispose()


def seed(tq, vt, count: int) -> None:
    """Add ``count`` SHA-256 indicators, each with a VirusTotal object of its own."""
    for index in range(count):
        value = hashlib.sha256(f"postgres workers benchmark {index}".encode()).hexdigest()
        tq.add_indicator(value, "SHA-256", updated_at="2025-01-01 00:00:00")
        vt.add_generated("file", value, malicious=index % 9, harmless=60)


def waiting_on_outbox(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE relation = 'outbox'::regclass AND NOT granted"))


def queued_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(
            select(func.count()).select_from(OutboxEntry).where(OutboxEntry.status == "new"))


def timed_push(engine: Engine, env: dict[str, str], workers: int) -> tuple[float, list[int]]:
    """Run ``workers`` push processes that start together; return seconds and rows per worker."""
    with engine.connect() as gate:
        gate.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
        processes = [subprocess.Popen([sys.executable, "-m", "tqvt_sync", "sync", "push"],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                     for _ in range(workers)]
        deadline = time.monotonic() + 120
        while waiting_on_outbox(engine) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("the push workers did not reach the outbox within 120 s")
            time.sleep(0.02)
        started = time.monotonic()
        gate.commit()
    errors = [process.communicate(timeout=600)[1] for process in processes]
    elapsed = time.monotonic() - started
    for process, error in zip(processes, errors, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"a push worker exited with {process.returncode}: {error[-2000:]}")
    pids = [process.pid for process in processes]
    with engine.connect() as connection:
        counts = dict(connection.execute(
            select(Run.pid, Run.counts).where(Run.stage == "push", Run.pid.in_(pids))).all())
    return elapsed, [counts[pid]["delivered"] for pid in pids]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TQVT_TEST_POSTGRES_URL", DEFAULT_URL),
                        help="PostgreSQL URL whose server gets the scratch database")
    parser.add_argument("--indicators", type=int, default=240,
                        help="indicators seeded in ThreatQ (default 240)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per worker count (default 3)")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="seconds the ThreatQ simulator waits before each response "
                        "(default 0.05)")
    args = parser.parse_args(argv)

    with scratch_database(args.url, "tqvt_bench") as url, running_simulators(vt_plan=UNLIMITED) as (tq, vt), \
            tempfile.TemporaryDirectory() as workdir:
        seed(tq, vt, args.indicators)
        settings = settings_for(tq, vt, url, workdir)
        run_stage(settings, pull, PullOptions(since=datetime(2000, 1, 1, tzinfo=UTC)))
        run_stage(settings, lookup)
        run_stage(settings, push)
        tq.latency = args.latency
        engine = make_engine(url)
        env = worker_env(tq, vt, url)
        throughput: dict[int, list[float]] = {1: [], 2: []}
        shift = 0
        for round_number in range(1, args.rounds + 1):
            for workers in (1, 2):
                shift = 1 - shift
                scores = {key: min(score + shift, 10) for key, score in settings.scores.items()}
                run_stage(dataclasses.replace(settings, scores=scores), rescore)
                rows = queued_rows(engine)
                elapsed, shares = timed_push(engine, env, workers)
                throughput[workers].append(rows / elapsed)
                print(f"round {round_number}: {workers} worker(s), {rows} rows in "
                      f"{elapsed:.2f} s = {rows / elapsed:.1f} rows/s, rows per worker {shares}, "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)
        engine.dispose()

    one, two = statistics.median(throughput[1]), statistics.median(throughput[2])
    print(f"median: 1 worker {one:.1f} rows/s, 2 workers {two:.1f} rows/s, "
          f"ratio {two / one:.2f} (target >= 1.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
