"""Start both simulators in this process, seed ThreatQ, print their URLs, and serve.

The benchmarks start this as a subprocess, so that the simulators' CPU time and
memory are not counted in the measured tqvt process. It prints one JSON line
with the URLs and credentials once both servers listen, and serves until its
standard input is closed:

    python -m benchmarks.serve_sims --indicators 100000 --start 2026-01-05T00:00:00+00:00
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from benchmarks.harness import PREMIUM_PLAN, UNLIMITED_PLAN, seed_threatq
from tqvt_sync.sandbox import DEFAULT_API_KEY, running_simulators


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indicators", type=int, default=0,
                        help="number of indicators to seed in ThreatQ")
    parser.add_argument("--start", type=datetime.fromisoformat, default=None,
                        help="updated_at of the first indicator (ISO 8601; default 12 hours ago)")
    parser.add_argument("--vt-latency", type=float, default=0.0,
                        help="seconds the VirusTotal simulator waits before each answer")
    parser.add_argument("--premium", action="store_true",
                        help="give the key 1,000 calls a minute instead of no limit")
    args = parser.parse_args(argv)

    start = args.start or datetime.now(UTC) - timedelta(hours=12)
    plan = PREMIUM_PLAN if args.premium else UNLIMITED_PLAN
    with running_simulators(vt_plan=plan) as (tq, vt):
        seed_threatq(tq, args.indicators, start=start)
        vt.latency = args.vt_latency
        print(json.dumps({
            "threatq_url": tq.url, "client_id": tq.credentials.client_id,
            "email": tq.credentials.email, "password": tq.credentials.password,
            "vt_url": vt.url, "vt_key": DEFAULT_API_KEY, "start": start.isoformat(),
        }), flush=True)
        # Serve until the parent closes the pipe (or exits).
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
