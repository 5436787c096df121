"""Local overhead per indicator through pull, lookup and push, against the naive script.

Both run against in-process simulators with no added latency, on the same
seeded library, several times in alternation; the median run counts. Overhead
is measured in two ways, and the targets are judged on the first:

- A: wall time of the three stages minus the time spent inside the HTTP methods
  of the ThreatQ and VirusTotal clients (for the naive script: inside
  ``requests.Session.request``). Building and parsing requests counts as HTTP.
- B: wall time minus the time the simulators spend handling requests, from the
  request body to the response. Here the client libraries' work counts as local.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks import naive
from benchmarks.harness import (
    UNLIMITED_PLAN,
    Figure,
    Stopwatch,
    client_http_timer,
    median,
    report,
    seed_threatq,
    settings_for,
    simulator_timer,
    stage_context,
    urls_of,
)
from tqvt_sync.clock import SystemClock
from tqvt_sync.db.engine import make_engine
from tqvt_sync.sandbox import running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, format_tq_time, pull
from tqvt_sync.stages.push import push

NAME = "overhead"
TARGET_MS = 2.0
TARGET_FACTOR = 10.0


def _start(size: int) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=size // 3 + 3600)


def _tqvt_once(size: int) -> dict[str, Any]:
    """Run the three stages once on a fresh library and database; return the timings."""
    start = _start(size)
    with running_simulators(vt_plan=UNLIMITED_PLAN) as (tq, vt), \
            tempfile.TemporaryDirectory() as workdir:
        seed_threatq(tq, size, start=start)
        settings = settings_for(urls_of(tq, vt), f"sqlite:///{workdir}/state.db", workdir,
                                vt_concurrency=1)
        # Building the context creates the schema, which is not per-indicator work.
        context = stage_context(settings, SystemClock())
        stages = {
            "pull": lambda: pull(context, PullOptions(since=start - timedelta(minutes=1))),
            "lookup": lambda: lookup(context),
            "push": lambda: push(context),
        }
        result: dict[str, Any] = {"indicators": 0, "wall": 0.0, "http": 0.0, "served": 0.0}
        with client_http_timer() as http, simulator_timer() as served:
            for stage, function in stages.items():
                http.reset()
                served.reset()
                started = time.perf_counter()
                counts = function()
                wall = time.perf_counter() - started
                result[stage] = (wall - http.seconds) / size * 1000
                result["wall"] += wall
                result["http"] += http.seconds
                result["served"] += served.seconds
                if stage == "pull":
                    result["indicators"] = counts["indicators"]
        context.engine.dispose()
    return result


def _naive_once(size: int) -> dict[str, Any]:
    """Run the naive script once on a fresh library and SQLite file; return the timings."""
    start = _start(size)
    with running_simulators(vt_plan=UNLIMITED_PLAN) as (tq, vt), \
            tempfile.TemporaryDirectory() as workdir:
        seed_threatq(tq, size, start=start)
        urls = urls_of(tq, vt)
        http = Stopwatch()
        target = naive.NaiveTarget(
            threatq_url=urls["threatq_url"], client_id=urls["client_id"], email=urls["email"],
            password=urls["password"], vt_url=urls["vt_url"], vt_key=urls["vt_key"],
            db_path=f"{workdir}/naive.db", since=format_tq_time(start - timedelta(minutes=1)),
        )
        for session in (target.threatq_session, target.vt_session):
            session.request = http.wrap(session.request)  # type: ignore[method-assign]
        with simulator_timer() as served:
            started = time.perf_counter()
            counts = naive.run(target)
            wall = time.perf_counter() - started
    return {"indicators": counts["pulled"], "wall": wall, "http": http.seconds,
            "served": served.seconds, "requests": http.calls}


def _commit_seconds(workdir: str, count: int = 200) -> tuple[float, float]:
    """Return the median time of a one-row UPDATE transaction with tqvt's SQLite settings
    (WAL, synchronous=FULL) and with sqlite3's defaults (rollback journal), as the naive
    script uses it."""
    engine = make_engine(f"sqlite:///{workdir}/commit.db")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)")
        connection.exec_driver_sql("INSERT INTO counter VALUES (1, 0)")
    ours = []
    for _ in range(count):
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE counter SET n = n + 1 WHERE id = 1")
        ours.append(time.perf_counter() - started)
    engine.dispose()

    plain = sqlite3.connect(f"{workdir}/naive-commit.db")
    plain.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)")
    plain.execute("INSERT INTO counter VALUES (1, 0)")
    plain.commit()
    theirs = []
    for _ in range(count):
        started = time.perf_counter()
        plain.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        plain.commit()
        theirs.append(time.perf_counter() - started)
    plain.close()
    return median(ours), median(theirs)


def _per_indicator(run: dict[str, Any], spent: str) -> float:
    return (run["wall"] - run[spent]) / run["indicators"] * 1000


def run(quick: bool, figures: list[Figure]) -> None:
    size = 300 if quick else 1000
    repeats = 3 if quick else 5
    tqvt_runs, naive_runs = [], []
    for _ in range(repeats):
        tqvt_runs.append(_tqvt_once(size))
        naive_runs.append(_naive_once(size))

    for label, spent, judged in (("A", "http", True), ("B", "served", False)):
        ours = median([_per_indicator(r, spent) for r in tqvt_runs])
        theirs = median([_per_indicator(r, spent) for r in naive_runs])
        factor = theirs / ours
        suffix = "" if judged else " (informative)"
        report(Figure(NAME, f"tqvt overhead per indicator, definition {label}", ours, "ms",
                      target=f"<= {TARGET_MS} ms{suffix}",
                      met=ours <= TARGET_MS if judged else None,
                      note=f"median of {repeats} runs of {size:,} indicators"), figures)
        report(Figure(NAME, f"naive overhead ÷ tqvt overhead, definition {label}", factor, "x",
                      baseline=theirs, baseline_name="naive script, ms per indicator",
                      target=f">= {TARGET_FACTOR:.0f}x{suffix}",
                      met=factor >= TARGET_FACTOR if judged else None), figures)

    for stage in ("pull", "lookup", "push"):
        value = median([r[stage] for r in tqvt_runs])
        report(Figure(NAME, f"tqvt {stage} overhead per indicator, definition A", value, "ms"),
               figures)
    walls = (median([r["wall"] for r in tqvt_runs]), median([r["wall"] for r in naive_runs]))
    report(Figure(NAME, "wall time of one run, tqvt", walls[0], "s", baseline=walls[1],
                  baseline_name="naive script, s", ratio=walls[1] / walls[0]), figures)
    requests = median([r["requests"] for r in naive_runs]) / size
    report(Figure(NAME, "naive script HTTP requests per indicator", requests, ""), figures)
    with tempfile.TemporaryDirectory() as workdir:
        ours, theirs = _commit_seconds(workdir)
    report(Figure(NAME, "one committed one-row transaction, tqvt's SQLite settings",
                  ours * 1000, "ms", baseline=theirs * 1000,
                  baseline_name="sqlite3 defaults as the naive script uses them, ms",
                  note="a sequential lookup on SQLite commits once per VirusTotal call"), figures)
