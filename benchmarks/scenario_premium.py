"""Lookup throughput of a premium key with 100 ms of simulated VirusTotal latency.

The key allows 60,000 calls an hour, which tqvt reads from ``overall_quotas`` as
1,000 a minute (no minute limit is set in the settings). The expected throughput
is min(quota rate, connections ÷ latency), with ``vt_concurrency`` connections:

- one connection: bounded by latency at 10 calls/s, below the quota rate;
  throughput is calls ÷ wall time of the lookup run;
- four connections: bounded by the quota at 16.7 calls/s. A run starts with an
  empty minute window, so its first 1,000 calls go out at once. The sustained
  rate is therefore 1,000 ÷ the mean time between a call and the call 1,000
  later, read from the arrival times at the simulator. The ledger keeps each
  call in its window for 61 s instead of 60, so the best possible ratio is
  60/61 = 0.984.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.harness import (
    PREMIUM_PLAN,
    Figure,
    client_http_timer,
    report,
    seed_threatq,
    settings_for,
    simulator_timer,
    stage_context,
    urls_of,
)
from tqvt_sync.clock import SystemClock
from tqvt_sync.sandbox import DEFAULT_API_KEY, running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull

NAME = "premium"
LATENCY = 0.1
MINUTE_LIMIT = 1000
TARGET_SHARE = 0.9
# Share of seeded indicators that cost a call (the CVE and Email Address slots do not).
_CALLS_PER_INDICATOR = 0.9


def _lookup_run(calls: int, connections: int) -> tuple[float, list[datetime], dict[str, Any]]:
    """Seed enough indicators for ``calls`` calls, pull them, and time one lookup run.

    The counts returned also give the seconds spent inside the VirusTotal client
    (``client_seconds``) and inside the simulator (``served_seconds``) during lookup.
    """
    size = math.ceil(calls / _CALLS_PER_INDICATOR)
    start = datetime.now(UTC) - timedelta(seconds=size // 3 + 3600)
    with running_simulators(vt_plan=PREMIUM_PLAN) as (tq, vt), \
            tempfile.TemporaryDirectory() as workdir:
        seed_threatq(tq, size, start=start)
        settings = settings_for(urls_of(tq, vt), f"sqlite:///{workdir}/state.db", workdir,
                                vt_concurrency=connections)
        context = stage_context(settings, SystemClock())
        pull(context, PullOptions(since=start - timedelta(minutes=1)))
        vt.latency = LATENCY
        with client_http_timer() as client, simulator_timer() as served:
            started = time.perf_counter()
            counts: dict[str, Any] = dict(lookup(context))
            wall = time.perf_counter() - started
        counts["client_seconds"], counts["served_seconds"] = client.seconds, served.seconds
        context.engine.dispose()
        arrivals = vt.accepted_calls(DEFAULT_API_KEY)
        counts["rejected_429"] = sum(vt.rejections[DEFAULT_API_KEY].values())
    return wall, arrivals, counts


def run(quick: bool, figures: list[Figure]) -> None:
    quota_rate = MINUTE_LIMIT / 60

    wall, arrivals, counts = _lookup_run(100 if quick else 200, 1)
    expected = min(quota_rate, 1 / LATENCY)
    rate = len(arrivals) / wall
    report(Figure(NAME, "lookup throughput, 1 connection", rate, "calls/s", baseline=expected,
                  baseline_name="min(quota rate, connections ÷ latency)", ratio=rate / expected,
                  target=f"ratio >= {TARGET_SHARE}", met=rate / expected >= TARGET_SHARE,
                  note=f"{len(arrivals)} calls in {wall:.1f} s; "
                       f"{counts['rejected_429']} answered 429"), figures)
    per_call = 1000 / len(arrivals)
    served, inside = counts["served_seconds"] * per_call, counts["client_seconds"] * per_call
    outside = (wall - counts["client_seconds"]) * per_call
    report(Figure(NAME, "time per call, 1 connection", wall * per_call, "ms",
                  note=f"inside the simulator {served:.1f} ms (with the {LATENCY * 1000:.0f} ms "
                       f"latency), inside the client {inside:.1f} ms, tqvt outside the client "
                       f"{outside:.1f} ms"), figures)

    later = 100 if quick else 250
    wall, arrivals, counts = _lookup_run(MINUTE_LIMIT + later, 4)
    expected = min(quota_rate, 4 / LATENCY)
    gaps = [(arrivals[k + MINUTE_LIMIT] - arrivals[k]).total_seconds()
            for k in range(len(arrivals) - MINUTE_LIMIT)]
    sustained = MINUTE_LIMIT / statistics.mean(gaps)
    report(Figure(NAME, "sustained lookup throughput, 4 connections", sustained, "calls/s",
                  baseline=expected, baseline_name="min(quota rate, connections ÷ latency)",
                  ratio=sustained / expected, target=f"ratio >= {TARGET_SHARE}",
                  met=sustained / expected >= TARGET_SHARE,
                  note=f"{len(gaps)} gaps of 1,000 calls, {min(gaps):.2f} to {max(gaps):.2f} s; "
                       f"{counts['rejected_429']} answered 429"), figures)
    burst = MINUTE_LIMIT / (arrivals[MINUTE_LIMIT - 1] - arrivals[0]).total_seconds()
    report(Figure(NAME, "rate of the first 1,000 calls, 4 connections", burst, "calls/s",
                  baseline=4 / LATENCY, baseline_name="connections ÷ latency",
                  ratio=burst * LATENCY / 4), figures)
    report(Figure(NAME, "whole run, 4 connections", len(arrivals) / wall, "calls/s",
                  note=f"{len(arrivals)} calls in {wall:.1f} s, starting with an empty window"),
           figures)
