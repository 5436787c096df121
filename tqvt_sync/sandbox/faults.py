"""Fault injection shared by the ThreatQ and VirusTotal simulators.

A test arms a fault with ``sim.faults.inject(kind, ...)``. Each incoming request is
matched against the armed faults in the order they were injected. Every matching
"latency" fault adds its delay, and the first matching fault of any other kind
decides the response. Fault kinds:

- ``status``: send ``status`` (default 503) and the API's own JSON error body, without
  processing the request.
- ``html``: send ``status`` (default 502) and an HTML error page, as a proxy does,
  without processing the request.
- ``truncated``: process the request, then send a 200 whose uncompressed JSON body is
  cut in half, with a Content-Length that matches the cut body.
- ``malformed``: send a 200 whose body is not JSON, without processing the request.
- ``reset_before``: shut the connection down without processing or responding.
- ``reset_after_commit``: process the request (its write is applied), then shut the
  connection down without responding.
- ``status_after_commit``: process the request (its write is applied), then send
  ``status`` (default 502) and the API's own JSON error body instead of the response, as
  a proxy does when the backend responds too late.
- ``stall_after_commit``: process the request, then sleep ``seconds`` real seconds
  before responding, to exceed a client's timeout.
- ``latency``: sleep ``seconds`` real seconds, then process the request normally.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from dataclasses import dataclass

FAULT_KINDS = frozenset(
    {
        "status",
        "html",
        "truncated",
        "malformed",
        "reset_before",
        "reset_after_commit",
        "status_after_commit",
        "stall_after_commit",
        "latency",
    }
)
DEFAULT_STATUS = {"status": 503, "html": 502, "status_after_commit": 502}
_KINDS_NEEDING_SECONDS = frozenset({"latency", "stall_after_commit"})


@dataclass
class Fault:
    """One armed fault and how often it has fired."""

    kind: str
    method: str | None = None
    path: re.Pattern[str] | None = None
    times: int | None = None
    rate: float | None = None
    status: int | None = None
    seconds: float = 0.0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        return self.path is None or self.path.search(path) is not None

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass(frozen=True)
class FaultSelection:
    """The faults that apply to one request: the total latency and at most one other fault."""

    delay: float = 0.0
    fault: Fault | None = None


class FaultInjector:
    """Thread-safe list of armed faults with a counter of firings per kind.

    ``rate`` draws from a ``random.Random`` seeded with ``seed``, so a run with the
    same requests in the same order fires the same faults.
    """

    def __init__(self, seed: int = 0) -> None:
        self.fired: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def inject(
        self,
        kind: str,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        status: int | None = None,
        seconds: float | None = None,
    ) -> Fault:
        """Arm a fault and return it; ``path`` is a regular expression searched in the URL path.

        Without ``times`` or ``rate`` the fault fires on every matching request.
        ``times`` limits the number of firings, and ``rate`` is the probability of
        firing on each matching request.

        Raises:
            ValueError: on an unknown kind or an out-of-range argument.
        """
        _validate(kind, times, rate, seconds)
        fault = Fault(
            kind=kind,
            method=method.upper() if method else None,
            path=re.compile(path) if path is not None else None,
            times=times,
            rate=rate,
            status=status if status is not None else DEFAULT_STATUS.get(kind),
            seconds=seconds or 0.0,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Disarm every fault; the ``fired`` counters keep their history."""
        with self._lock:
            self._faults.clear()

    @property
    def armed(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def select(self, method: str, path: str) -> FaultSelection:
        """Pick the faults for one request and count them as fired."""
        delay = 0.0
        chosen: Fault | None = None
        with self._lock:
            for fault in self._faults:
                if fault.kind != "latency" and chosen is not None:
                    continue
                if not fault.matches(method, path) or not self._roll(fault):
                    continue
                fault.fired += 1
                self.fired[fault.kind] += 1
                if fault.kind == "latency":
                    delay += fault.seconds
                else:
                    chosen = fault
            self._faults = [fault for fault in self._faults if not fault.exhausted]
        return FaultSelection(delay=delay, fault=chosen)

    def _roll(self, fault: Fault) -> bool:
        return fault.rate is None or self._random.random() < fault.rate


def _validate(kind: str, times: int | None, rate: float | None, seconds: float | None) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
    if times is not None and times < 1:
        raise ValueError(f"times must be at least 1, got {times}")
    if rate is not None and not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, got {rate}")
    if kind in _KINDS_NEEDING_SECONDS and (seconds is None or seconds < 0):
        raise ValueError(f"fault kind {kind!r} needs seconds >= 0")
