"""Start-up time: ``tqvt --version`` against ``python -c "import sqlalchemy"``.

Both commands run as fresh processes, alternately, after one unmeasured run of
each; the medians are compared. The ``tqvt`` entry point is the one installed
beside this interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.harness import Figure, median, report

NAME = "startup"
TARGET_RATIO = 3.0


def _seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def run(quick: bool, figures: list[Figure]) -> None:
    tqvt = [os.path.join(os.path.dirname(sys.executable), "tqvt"), "--version"]
    importing = [sys.executable, "-c", "import sqlalchemy"]
    runs = 5 if quick else 11
    _seconds(tqvt)
    _seconds(importing)
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(_seconds(tqvt))
        theirs.append(_seconds(importing))
    ratio = median(ours) / median(theirs)
    report(Figure(NAME, "tqvt --version", median(ours) * 1000, "ms",
                  baseline=median(theirs) * 1000, baseline_name='python -c "import sqlalchemy", ms',
                  ratio=ratio, target=f"ratio <= {TARGET_RATIO}", met=ratio <= TARGET_RATIO,
                  note=f"median of {runs} runs each"), figures)
