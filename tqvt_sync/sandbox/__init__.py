"""Local ThreatQ and VirusTotal simulators: real HTTP servers on 127.0.0.1.

``tqvt demo``, the tests and the benchmarks run the product against these servers
instead of the real services. Each simulator binds an ephemeral port, keeps its state
in memory, takes time from an injectable clock, records every request and can inject
faults (see ``faults``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqvt_sync.clock import Clock
from tqvt_sync.sandbox.faults import FAULT_KINDS, Fault, FaultInjector
from tqvt_sync.sandbox.httpserver import RequestLog, RequestRecord
from tqvt_sync.sandbox.threatq import ThreatQSimulator
from tqvt_sync.sandbox.virustotal import DEFAULT_API_KEY, VirusTotalSimulator
from tqvt_sync.sandbox.virustotal_quota import QuotaPlan

__all__ = [
    "DEFAULT_API_KEY",
    "FAULT_KINDS",
    "Fault",
    "FaultInjector",
    "QuotaPlan",
    "RequestLog",
    "RequestRecord",
    "ThreatQSimulator",
    "VirusTotalSimulator",
    "running_simulators",
]


@contextmanager
def running_simulators(
    clock: Clock | None = None, vt_plan: QuotaPlan | None = None
) -> Iterator[tuple[ThreatQSimulator, VirusTotalSimulator]]:
    """Start a ThreatQ and a VirusTotal simulator, yield them, and stop both on exit.

    The VirusTotal simulator accepts ``DEFAULT_API_KEY`` with ``vt_plan`` (a free
    key's quota by default). Neither simulator is seeded; see ``seed.seed_demo``.
    """
    keys = {DEFAULT_API_KEY: vt_plan or QuotaPlan()}
    with ThreatQSimulator(clock) as threatq, VirusTotalSimulator(clock, keys=keys) as virustotal:
        yield threatq, virustotal
