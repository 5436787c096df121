"""Run the tqvt benchmarks and print each figure with its baseline, ratio and target.

    python -m benchmarks.run [--quick] [--only NAME[,NAME...]] [--json FILE]

Every scenario runs the real stages (in this process or through the CLI) against
the sandbox simulators on 127.0.0.1, and measures its baseline in the same run.
``--quick`` uses smaller sizes for a smoke run; its figures are not the recorded
ones. docs/benchmarks.md describes the scenarios and records the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sqlite3
import sys
import time
from types import ModuleType

import sqlalchemy

from benchmarks import (
    scenario_memory,
    scenario_overhead,
    scenario_premium,
    scenario_pull,
    scenario_requests,
    scenario_startup,
    scenario_storage,
)
from benchmarks.harness import Figure, format_number, load_average

SCENARIOS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (scenario_startup, scenario_storage, scenario_requests, scenario_overhead,
                   scenario_pull, scenario_memory, scenario_premium)
}


def machine() -> dict[str, str]:
    """Describe the machine and the software versions the figures depend on."""
    cpu = ram = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
        with open("/proc/meminfo", encoding="utf-8") as handle:
            kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
            ram = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpus": str(os.cpu_count()), "cpu": cpu, "ram": ram,
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__, "platform": platform.platform(),
    }


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(unknown)}; choose from "
                         f"{', '.join(SCENARIOS)}")
    return names


def summary(figures: list[Figure]) -> str:
    """Return the figures that have a target or a baseline as a Markdown table."""
    lines = ["| scenario | figure | value | baseline | ratio | target | result |",
             "|---|---|---|---|---|---|---|"]
    for figure in figures:
        if figure.baseline is None and not figure.target:
            continue
        baseline = ratio = result = ""
        if figure.baseline is not None:
            baseline = f"{format_number(figure.baseline)} ({figure.baseline_name})"
        if figure.ratio is not None:
            ratio = f"{figure.ratio:.3f}"
        if figure.met is not None:
            result = "met" if figure.met else "missed"
        lines.append(f"| {figure.scenario} | {figure.name} | {format_number(figure.value)} "
                     f"{figure.unit} | {baseline} | {ratio} | {figure.target} | {result} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", metavar="NAME", help=f"comma-separated scenarios: "
                        f"{', '.join(SCENARIOS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    names = _selected(args.only)

    info = machine()
    print(f"tqvt benchmarks: {' '.join(sys.argv)}")
    for key, value in info.items():
        print(f"  {key}: {value}")
    figures: list[Figure] = []
    loads: dict[str, tuple[str, str]] = {}
    started = time.perf_counter()
    for name in names:
        before = load_average()
        print(f"\n== {name} (load average {before})", flush=True)
        scenario_started = time.perf_counter()
        SCENARIOS[name].run(args.quick, figures)
        loads[name] = (before, load_average())
        print(f"== {name} took {time.perf_counter() - scenario_started:.0f} s "
              f"(load average {loads[name][1]})", flush=True)
    total = time.perf_counter() - started

    print(f"\nAll scenarios took {total:.0f} s.\n")
    print(summary(figures))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": info, "quick": args.quick, "seconds": round(total, 1),
                       "load_average": loads,
                       "figures": [dataclasses.asdict(f) for f in figures]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
