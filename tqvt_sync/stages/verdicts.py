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

    A waiting row (new or failed) is rewritten in place. A started row is left
    alone: the new row waits behind it and push delivers rows of one indicator
    in id order. When that started row fails, the indicator has two waiting
    rows, and the newest one is rewritten, because push delivers it last.
    """
    fingerprint_value = write["fingerprint"]
    # One query reads the waiting and the started rows, newest first.
    unfinished = session.execute(
        select(OutboxEntry)
        .where(OutboxEntry.indicator_id == indicator.id,
               OutboxEntry.status.in_(("new", "failed", "started")))
        .order_by(OutboxEntry.id.desc())
    ).scalars().all()
    waiting = next((row for row in unfinished if row.status != "started"), None)
    if waiting is None:
        started = next((row.fingerprint for row in unfinished), None)
        if started is None:
            state = session.get(WrittenState, indicator.id)
            latest = state.fingerprint if state is not None else None
        else:
            latest = started
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


def merge_newer_waiting(session: Session, row: OutboxEntry) -> None:
    """Fold a newer waiting row of ``row``'s indicator into ``row``, which is about to wait again.

    A row that was ``started`` while lookup queued a newer one for the same indicator would
    otherwise wait beside it. Each row contains the complete desired state, so the newer row
    supersedes ``row``. ``row`` keeps its id, attempts and last error, so the writes of one
    indicator stay in id order and a write of unknown outcome is still read back before the
    next send. The newer row is deleted, which keeps one waiting row per indicator.
    """
    newer = session.execute(
        select(OutboxEntry)
        .where(OutboxEntry.indicator_id == row.indicator_id, OutboxEntry.id > row.id,
               OutboxEntry.status.in_(("new", "failed")))
        .order_by(OutboxEntry.id.desc())
    ).scalars().first()
    if newer is None:
        return
    row.desired, row.fingerprint, row.verdict = newer.desired, newer.fingerprint, newer.verdict
    row.indicator_value, row.indicator_type = newer.indicator_value, newer.indicator_type
    session.delete(newer)
