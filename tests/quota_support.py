"""Helpers for the quota, lookup and cache tests: a backlog builder and a lookup bench."""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from support import sim_settings, stage_context
from tqvt_sync.clock import Clock, FakeClock
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, running_simulators
from tqvt_sync.stages.common import StageContext, StopRequested
from tqvt_sync.stages.pull import upsert_indicator
from tqvt_sync.virustotal.identifiers import normalize

OBJECT_COLLECTIONS = ("files", "urls", "domains", "ip_addresses")


class DeadlineClock(FakeClock):
    """A FakeClock that sets ``stop`` once sleeping carries it to ``deadline``."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.deadline: datetime | None = None
        self.stop: StopRequested | None = None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.deadline is not None and self.stop is not None and self.now() >= self.deadline:
            self.stop.set()


def sha256_value(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def item(indicator_id: int, value: str, type_name: str = "SHA-256",
         score: float | None = 0) -> dict[str, Any]:
    """Return an indicator as ThreatQ's query endpoint lists it."""
    return {"id": indicator_id, "value": value, "type": {"name": type_name}, "score": score}


def identifier_of(type_name: str, value: str) -> str:
    result = normalize(type_name, value)
    assert result.identifier is not None, result.reason
    return result.identifier


def max_in_window(times: Iterable[datetime], seconds: float = 60.0) -> int:
    """Return the largest number of ``times`` inside any half-open window of ``seconds``."""
    ordered = sorted(times)
    width = timedelta(seconds=seconds)
    return max((bisect_left(ordered, start + width) - i for i, start in enumerate(ordered)),
               default=0)


@dataclass
class LookupBench:
    """Both simulators, a migrated database and a stage context on one clock."""

    tq: Any
    vt: Any
    ctx: StageContext
    clock: Clock

    def queue(self, items: Iterable[dict[str, Any]]) -> None:
        """Store indicators as the pull stage does, without a ThreatQ round trip."""
        now = self.clock.now()
        with self.ctx.sessions.begin() as session:
            for entry in items:
                assert upsert_indicator(session, self.ctx, entry, now) is None

    def object_requests(self) -> list[tuple[str, str]]:
        """Return (collection, identifier) of every request to a quota-counted endpoint."""
        found = []
        for record in self.vt.requests:
            parts = record.path.split("/")
            if len(parts) == 5 and parts[3] in OBJECT_COLLECTIONS:
                found.append((parts[3], unquote(parts[4])))
        return found

    def quota_requests(self) -> int:
        return sum(1 for r in self.vt.requests if r.path.endswith("/overall_quotas"))

    def accepted(self) -> list[datetime]:
        return self.vt.accepted_calls(DEFAULT_API_KEY)

    def rejections(self) -> dict[str, int]:
        return self.vt.rejections[DEFAULT_API_KEY]


@contextmanager
def lookup_bench(tmp_path: Any, clock: Clock, plan: QuotaPlan | None = None,
                 db_url: str | None = None, **settings: Any) -> Iterator[LookupBench]:
    """Start the simulators on ``clock`` and yield a bench whose settings include ``settings``.

    The database is ``state.db`` in ``tmp_path`` unless ``db_url`` names another.
    """
    with running_simulators(clock=clock, vt_plan=plan or QuotaPlan()) as (tq, vt):
        db_url = db_url or f"sqlite:///{tmp_path / 'state.db'}"
        ctx = stage_context(sim_settings(tq, vt, db_url, str(tmp_path), **settings), clock)
        try:
            yield LookupBench(tq, vt, ctx, clock)
        finally:
            ctx.engine.dispose()
