"""Turn a cached VirusTotal answer into verdicts and queued writes for indicators."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tqvt_sync.db.models import Indicator, OutboxEntry, VtObject, WrittenState
from tqvt_sync.stages.cache import unpack_summary
from tqvt_sync.virustotal.attributes import build_attributes, fingerprint
from tqvt_sync.virustotal.verdict import compute_verdict


def desired_write(settings: Any, kind: str, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Return the attribute set, score, verdict and fingerprint for one VirusTotal answer."""
    stats = summary.get("stats") if summary is not None else None
    verdict = compute_verdict(stats, found=summary is not None, scores=settings.scores)
    attributes = build_attributes(kind, summary, verdict, premium=settings.vt_private_key)
    score = verdict.score if settings.write_score else None
    return {
        "attributes": attributes,
        "score": score,
        "verdict": verdict.verdict,
        "fingerprint": fingerprint(attributes, score),
    }


def apply_answer(
    session: Session, settings: Any, indicators: list[Indicator], cached: VtObject, now: datetime
) -> int:
    """Record the verdict of ``cached`` on each indicator and queue the writes that changed.

    Returns the number of outbox rows created or updated.
    """
    summary = unpack_summary(cached.summary) if cached.found else None
    write = desired_write(settings, cached.kind, summary)
    queued = 0
    for indicator in indicators:
        indicator.status = "looked_up" if cached.found else "not_found"
        indicator.reason = None
        indicator.looked_up_at = now
        indicator.next_lookup_at = cached.expires_at
        if queue_write(session, indicator, write, now):
            queued += 1
    return queued


def queue_write(session: Session, indicator: Indicator, write: dict[str, Any], now: datetime) -> bool:
    """Queue ``write`` for ``indicator`` unless it equals what is written or already queued.

    A waiting row (new or failed) is rewritten in place, so an indicator never
    has two waiting rows. A started row is left alone: the new row waits behind
    it and push delivers rows of one indicator in id order.
    """
    fingerprint_value = write["fingerprint"]
    waiting = session.execute(
        select(OutboxEntry)
        .where(OutboxEntry.indicator_id == indicator.id, OutboxEntry.status.in_(("new", "failed")))
        .order_by(OutboxEntry.id)
    ).scalars().first()
    state = session.get(WrittenState, indicator.id)
    if waiting is None:
        started = session.execute(
            select(OutboxEntry.fingerprint).where(
                OutboxEntry.indicator_id == indicator.id, OutboxEntry.status == "started")
        ).scalars().first()
        latest = started or (state.fingerprint if state is not None else None)
        if latest == fingerprint_value:
            return False
        session.add(OutboxEntry(
            indicator_id=indicator.id,
            indicator_value=indicator.value,
            indicator_type=indicator.type_name,
            desired={"attributes": write["attributes"], "score": write["score"]},
            fingerprint=fingerprint_value,
            verdict=write["verdict"],
            status="new",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        ))
        return True
    if waiting.fingerprint == fingerprint_value:
        return False
    waiting.desired = {"attributes": write["attributes"], "score": write["score"]}
    waiting.fingerprint, waiting.verdict = fingerprint_value, write["verdict"]
    waiting.updated_at = now
    return True
