"""Peak memory of the tqvt process with a small and a ten times larger library.

For each size the simulators run in their own subprocess, seeded with that many
indicators, and each stage runs as a fresh ``python -m tqvt_sync`` subprocess.
Its peak resident set size (``ru_maxrss``) is read by ``benchmarks.peak_rss``, a
small process that starts the command and waits for it. Pull reads
the whole library. Lookup and push work on the same number of indicators at
both sizes (``--max-calls``), so their figures show whether memory grows with
the size of the state database rather than with the work done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

from benchmarks.harness import REPOSITORY, Figure, external_simulators, report, sim_env

NAME = "memory"
TARGET_RATIO = 1.3


def _run_stage(env: dict[str, str], workdir: str, *args: str) -> tuple[int, float]:
    """Run one CLI command; return its peak RSS in KiB and its wall time in seconds."""
    errors_path = os.path.join(workdir, "stderr.txt")
    command = [sys.executable, "-m", "benchmarks.peak_rss",
               sys.executable, "-m", "tqvt_sync", "--quiet", *args]
    with open(errors_path, "w", encoding="utf-8") as errors:
        started = time.perf_counter()
        finished = subprocess.run(command, env=env, cwd=REPOSITORY, stdout=subprocess.PIPE,
                                  stderr=errors, text=True, check=True)
        elapsed = time.perf_counter() - started
    result = json.loads(finished.stdout)
    if result["returncode"] != 0:
        with open(errors_path, encoding="utf-8") as errors:
            raise RuntimeError(f"tqvt {' '.join(args)} exited with {result['returncode']}: "
                               f"{errors.read()[-2000:]}")
    return result["maxrss_kib"], elapsed


def _measure(size: int, calls: int) -> dict[str, tuple[int, float]]:
    start = datetime.now(UTC) - timedelta(seconds=size // 3 + 3600)
    since = (start - timedelta(minutes=1)).isoformat()
    with external_simulators(size, start) as urls, tempfile.TemporaryDirectory() as workdir:
        env = sim_env(urls, os.path.join(workdir, "state.db"))
        return {
            "pull": _run_stage(env, workdir, "sync", "pull", "--since", since),
            "lookup": _run_stage(env, workdir, "sync", "lookup", "--max-calls", str(calls)),
            "push": _run_stage(env, workdir, "sync", "push"),
        }


def run(quick: bool, figures: list[Figure]) -> None:
    small, large = (2_000, 20_000) if quick else (10_000, 100_000)
    calls = 200 if quick else 1000
    measured = {size: _measure(size, calls) for size in (small, large)}

    peak = {size: max(rss for rss, _ in measured[size].values()) for size in (small, large)}
    ratio = peak[large] / peak[small]
    report(Figure(NAME, f"peak RSS of any stage at {large:,} indicators", peak[large] / 1024,
                  "MiB", baseline=peak[small] / 1024, baseline_name=f"at {small:,}, MiB",
                  ratio=ratio, target=f"ratio <= {TARGET_RATIO}", met=ratio <= TARGET_RATIO),
           figures)
    for stage in ("pull", "lookup", "push"):
        (rss_small, seconds_small), (rss_large, seconds_large) = (measured[small][stage],
                                                                  measured[large][stage])
        work = f"{calls} calls" if stage == "lookup" else "the whole library" \
            if stage == "pull" else "the writes of those calls"
        report(Figure(NAME, f"{stage} peak RSS at {large:,}", rss_large / 1024, "MiB",
                      baseline=rss_small / 1024, baseline_name=f"at {small:,}, MiB",
                      ratio=rss_large / rss_small,
                      note=f"{stage} handles {work}; {seconds_small:.1f} s and "
                           f"{seconds_large:.1f} s"), figures)
