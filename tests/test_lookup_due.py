"""Which indicators one lookup run selects, in-process on a fake clock."""

from __future__ import annotations

import threading
from datetime import timedelta

from delivery_support import seed_library
from support import sim_settings, stage_context, vt_object_calls

from tqvt_sync.clock import FakeClock
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull

PLAN = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)


class TickingClock(FakeClock):
    """A fake clock that moves on by one millisecond each time it is read."""

    def now(self):
        self.advance(0.001)
        return super().now()


def test_lookup_zero_ttl_one_call_each(db_url, tmp_path):
    clock = TickingClock()
    with running_simulators(clock=clock, vt_plan=PLAN) as (tq, vt):
        seed_library(tq, vt, 3, updated_at=clock.now() - timedelta(hours=1))
        settings = sim_settings(tq, vt, db_url, str(tmp_path), cache_ttl=timedelta(0),
                                not_found_ttl=timedelta(0), daily_limit=100)
        ctx = stage_context(settings, clock)
        pull(ctx, PullOptions())
        # A run that fetched the same identifiers again would spend the daily limit;
        # the thread and its timeout keep such a run from hanging the test.
        worker = threading.Thread(target=lookup, args=(ctx,), daemon=True)
        worker.start()
        worker.join(20)
        ctx.stop.set()
        worker.join(5)
        assert vt_object_calls(vt) == 3
