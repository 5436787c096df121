"""Queries behind ``tqvt status`` and ``tqvt cache report``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tqvt_sync.db.models import (
    INDICATOR_STATUSES,
    OUTBOX_STATUSES,
    VT_KINDS,
    Counter,
    Cursor,
    Indicator,
    OutboxEntry,
    QuotaLedger,
    Run,
    VtObject,
)
from tqvt_sync.quota import key_hash, next_midnight
from tqvt_sync.stages.cache import unpack_summary
from tqvt_sync.virustotal.verdict import compute_verdict

AGE_BUCKETS = ((3600, "< 1 h"), (86400, "< 1 d"), (7 * 86400, "< 7 d"), (30 * 86400, "< 30 d"))


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _counts(session: Session, column: Any, keys: tuple[str, ...]) -> dict[str, int]:
    found = dict(session.execute(select(column, func.count()).group_by(column)).all())
    return {key: int(found.get(key, 0)) for key in keys}


def status_report(session: Session, *, api_key: str | None, reserve: int, now: datetime) -> dict[str, Any]:
    """Return the ``tqvt status --json`` document."""
    indicators = _counts(session, Indicator.status, INDICATOR_STATUSES)
    indicators = {"total": sum(indicators.values()), **indicators}
    outbox_all = _counts(session, OutboxEntry.status, OUTBOX_STATUSES)
    outbox = {
        "pending": outbox_all["new"] + outbox_all["started"],
        "failed": outbox_all["failed"],
        "dead": outbox_all["dead"],
        "delivered": outbox_all["completed"],
    }
    cursors = [
        {"name": c.name, "value": c.value, "page_token": c.page_token,
         "updated_at": iso(c.updated_at)}
        for c in session.execute(select(Cursor).order_by(Cursor.name)).scalars()
    ]
    runs = [
        {"stage": r.stage, "started_at": iso(r.started_at), "ended_at": iso(r.ended_at),
         "outcome": r.outcome, "counts": r.counts}
        for r in session.execute(select(Run).order_by(Run.started_at.desc()).limit(5)).scalars()
    ]
    return {
        "indicators": indicators,
        "outbox": outbox,
        "quota": quota_report(session, api_key=api_key, reserve=reserve, now=now),
        "cursors": cursors,
        "recent_runs": runs,
        "rejected": rejected_indicators(session, limit=10),
    }


def quota_report(session: Session, *, api_key: str | None, reserve: int, now: datetime) -> dict[str, Any]:
    row = None
    if api_key:
        row = session.get(QuotaLedger, key_hash(api_key))
    if row is None:
        return {"minute_limit": None, "daily_limit": None, "used_today": 0, "reserve": reserve,
                "blocked_until": None, "resets_at": iso(next_midnight(now))}
    used_today = row.used_today if row.day == now.date().isoformat() else 0
    blocked = row.blocked_until if row.blocked_until and row.blocked_until > now else None
    return {
        "minute_limit": row.minute_limit,
        "daily_limit": row.daily_limit,
        "used_today": used_today,
        "reserve": reserve,
        "blocked_until": iso(blocked),
        "resets_at": iso(next_midnight(now)),
        "limits_source": row.limits_source,
    }


def rejected_indicators(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """Return invalid, unsupported and skipped indicators with their reasons."""
    rows = session.execute(
        select(Indicator)
        .where(Indicator.status.in_(("invalid", "unsupported", "skipped")))
        .order_by(Indicator.id).limit(limit)
    ).scalars()
    return [{"id": r.id, "type": r.type_name, "value": r.value, "status": r.status,
             "reason": r.reason} for r in rows]


def cache_report(session: Session, *, now: datetime) -> dict[str, Any]:
    """Return the ``tqvt cache report --json`` document."""
    entries = session.scalar(select(func.count()).select_from(VtObject)) or 0
    fresh = session.scalar(
        select(func.count()).select_from(VtObject).where(VtObject.expires_at > now)) or 0
    not_found = session.scalar(
        select(func.count()).select_from(VtObject).where(VtObject.found.is_(False))) or 0
    by_kind = _counts(session, VtObject.kind, VT_KINDS)
    counters = dict(session.execute(select(Counter.name, Counter.value)).all())
    hits, misses = int(counters.get("cache_hits", 0)), int(counters.get("cache_misses", 0))
    return {
        "entries": int(entries),
        "fresh": int(fresh),
        "expired": int(entries - fresh),
        "not_found": int(not_found),
        "by_kind": by_kind,
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        "vt_calls_saved": int(counters.get("vt_calls_saved", 0)),
        "age_histogram": _age_histogram(session, now),
        "verdict_histogram": _verdict_histogram(session),
    }


def _age_histogram(session: Session, now: datetime) -> dict[str, int]:
    buckets = {label: 0 for _, label in AGE_BUCKETS}
    buckets[">= 30 d"] = 0
    for (fetched_at,) in session.execute(select(VtObject.fetched_at)):
        age = (now - fetched_at).total_seconds()
        label = next((lbl for limit, lbl in AGE_BUCKETS if age < limit), ">= 30 d")
        buckets[label] += 1
    return buckets


def _verdict_histogram(session: Session) -> dict[str, int]:
    counts = {name: 0 for name in ("malicious", "suspicious", "harmless", "undetected", "not found")}
    for found, blob in session.execute(select(VtObject.found, VtObject.summary)):
        summary = unpack_summary(blob) if found else None
        verdict = compute_verdict(summary.get("stats") if summary else None, found=bool(found))
        counts[verdict.verdict] = counts.get(verdict.verdict, 0) + 1
    return counts


def bar(count: int, largest: int, width: int = 30) -> str:
    """Return a text bar of ``count`` scaled so ``largest`` fills ``width`` characters."""
    if largest <= 0:
        return ""
    return "#" * max(1 if count else 0, round(width * count / largest))
