"""Recompute verdicts from the cache with the current settings; no VirusTotal call."""

from __future__ import annotations

import logging

from sqlalchemy import select

from tqvt_sync.db.models import Indicator
from tqvt_sync.stages.cache import find_object, unpack_summary
from tqvt_sync.stages.common import StageContext, recorded_run, stage_lock
from tqvt_sync.stages.verdicts import desired_write, queue_write

logger = logging.getLogger(__name__)

BATCH = 500


def rescore(ctx: StageContext) -> dict[str, int]:
    """Queue a write for every indicator whose verdict or attributes changed under the
    current verdict table, score table and premium setting. Returns the counts."""
    counts = {"indicators": 0, "changed": 0, "no_cache": 0}
    with stage_lock(ctx, "rescore", exclusive_on_postgres=True), \
            recorded_run(ctx, "rescore", counts):
        last_id = -1
        while not ctx.stop.is_set():
            with ctx.sessions.begin() as session:
                rows = list(session.execute(
                    select(Indicator)
                    .where(Indicator.status.in_(("looked_up", "not_found")), Indicator.id > last_id)
                    .order_by(Indicator.id).limit(BATCH)
                ).scalars())
                if not rows:
                    break
                for indicator in rows:
                    _rescore_one(ctx, session, indicator, counts)
                last_id = rows[-1].id
    return counts


def _rescore_one(ctx: StageContext, session, indicator: Indicator, counts: dict[str, int]) -> None:
    counts["indicators"] += 1
    cached = find_object(session, indicator.kind, indicator.identifier)
    if cached is None:
        counts["no_cache"] += 1
        return
    summary = unpack_summary(cached.summary) if cached.found else None
    write = desired_write(ctx.settings, cached.kind, summary)
    if queue_write(session.connection(), indicator, write, ctx.clock.now()):
        counts["changed"] += 1
