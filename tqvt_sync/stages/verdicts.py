"""Turn a cached VirusTotal answer into verdicts and queued writes for indicators."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal, null, select, union_all, update
from sqlalchemy.orm import Session

from tqvt_sync.db.models import Indicator, OutboxEntry, WrittenState
from tqvt_sync.virustotal.attributes import build_attributes, fingerprint
from tqvt_sync.virustotal.verdict import compute_verdict

_INDICATORS = Indicator.__table__
_OUTBOX = OutboxEntry.__table__
_WRITTEN = WrittenState.__table__
# Built once, at import: lookup runs them for every answer. The SET clause of an
# UPDATE names the columns of the parameters given at execution.
_SET_VERDICT = update(_INDICATORS).where(
    _INDICATORS.c.id.in_(bindparam("indicator_ids", expanding=True)))
_SET_ONE_VERDICT = update(_INDICATORS).where(_INDICATORS.c.id == bindparam("indicator_id"))
# The unfinished outbox rows of one indicator and its written state, in one query.
# The written state comes with a NULL id and the status 'written'.
_LATEST_STATES = union_all(
    select(_OUTBOX.c.id, _OUTBOX.c.status, _OUTBOX.c.fingerprint)
    .where(_OUTBOX.c.indicator_id == bindparam("owner"),
           _OUTBOX.c.status.in_(("new", "failed", "started"))),
    select(null().label("id"), literal("written").label("status"), _WRITTEN.c.fingerprint)
    .where(_WRITTEN.c.indicator_id == bindparam("owner")),
)
_INSERT_OUTBOX = insert(_OUTBOX)
_REWRITE_OUTBOX = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id"))


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
    connection: Connection,
    settings: Any,
    indicators: Sequence[Any],
    *,
    kind: str,
    summary: dict[str, Any] | None,
    expires_at: datetime,
    now: datetime,
) -> int:
    """Record the verdict of one answer on each indicator and queue the writes that changed.

    ``summary`` is None for a not-found answer, and ``expires_at`` is the end of
    its cache TTL, when the indicators are due again. Each indicator needs
    ``id``, ``value`` and ``type_name``. Returns the number of outbox rows
    created or updated.
    """
    if not indicators:
        return 0
    write = desired_write(settings, kind, summary)
    verdict = {"status": "looked_up" if summary is not None else "not_found", "reason": None,
               "looked_up_at": now, "next_lookup_at": expires_at}
    if len(indicators) == 1:
        connection.execute(_SET_ONE_VERDICT, {"indicator_id": indicators[0].id, **verdict})
    else:
        connection.execute(
            _SET_VERDICT, {"indicator_ids": [indicator.id for indicator in indicators], **verdict})
    return sum(queue_write(connection, indicator, write, now) for indicator in indicators)


def queue_write(
    connection: Connection, indicator: Any, write: dict[str, Any], now: datetime
) -> bool:
    """Queue ``write`` for ``indicator`` unless it equals what is written or already queued.

    ``indicator`` needs ``id``, ``value`` and ``type_name``. A waiting row (new or
    failed) is rewritten in place. A started row is left alone: the new row waits
    behind it and push delivers rows of one indicator in id order. When that
    started row fails, the indicator has two waiting rows, and the newest one is
    rewritten, because push delivers it last. The statements run on ``connection``
    without the ORM, so no outbox row is loaded into a session.
    """
    fingerprint_value = write["fingerprint"]
    desired = {"attributes": write["attributes"], "score": write["score"]}
    states = connection.execute(_LATEST_STATES, {"owner": indicator.id}).all()
    written = next((row.fingerprint for row in states if row.id is None), None)
    # The waiting and the started rows, newest first.
    unfinished = sorted((row for row in states if row.id is not None),
                        key=lambda row: row.id, reverse=True)
    waiting = next((row for row in unfinished if row.status != "started"), None)
    if waiting is None:
        latest = next((row.fingerprint for row in unfinished), written)
        if latest == fingerprint_value:
            return False
        connection.execute(_INSERT_OUTBOX, {
            "indicator_id": indicator.id,
            "indicator_value": indicator.value,
            "indicator_type": indicator.type_name,
            "desired": desired,
            "fingerprint": fingerprint_value,
            "verdict": write["verdict"],
            "status": "new",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        })
        return True
    if waiting.fingerprint == fingerprint_value:
        return False
    connection.execute(_REWRITE_OUTBOX, {"row_id": waiting.id, "desired": desired,
                                         "fingerprint": fingerprint_value,
                                         "verdict": write["verdict"], "updated_at": now})
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
