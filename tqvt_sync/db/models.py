"""SQLAlchemy models of the state database.

The Alembic revisions in ``tqvt_sync.migrations`` build this schema; a test
compares the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tqvt_sync.db.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INDICATOR_STATUSES = ("pending", "looked_up", "not_found", "unsupported", "invalid", "skipped")
OUTBOX_STATUSES = ("new", "started", "completed", "failed", "dead")
VT_KINDS = ("file", "url", "domain", "ip_address")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Cursor(Base):
    """The position of one pull source."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(
        String(200), primary_key=True,
        comment="pull source: 'updated_since', 'collection:<id>' or 'values:<digest>'",
    )
    value: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, comment="committed cursor: {'updated_at', 'id'} of the last indicator taken",
    )
    page_token: Mapped[str | None] = mapped_column(
        Text, comment="pending paging position of an unfinished walk (offset or cursorMark)",
    )
    signpost: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="start of the run that owns page_token; the cursor never passes it",
    )
    run_id: Mapped[str | None] = mapped_column(String(36), comment="run that last moved the cursor")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="when the row last changed")


class Indicator(Base):
    """A ThreatQ indicator queued for enrichment."""

    __tablename__ = "indicators"
    __table_args__ = (
        CheckConstraint(_in("status", INDICATOR_STATUSES), name="status"),
        CheckConstraint(f"kind IS NULL OR {_in('kind', VT_KINDS)}", name="kind"),
        Index("ix_indicators_due", "status", "next_lookup_at"),
        Index("ix_indicators_identifier", "kind", "identifier"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False, comment="ThreatQ indicator id",
    )
    value: Mapped[str] = mapped_column(Text, comment="indicator value as ThreatQ stores it")
    type_name: Mapped[str] = mapped_column(String(100), comment="ThreatQ indicator type name")
    kind: Mapped[str | None] = mapped_column(String(20), comment="VirusTotal kind, when supported")
    identifier: Mapped[str | None] = mapped_column(
        Text, comment="VirusTotal path identifier after normalisation",
    )
    status: Mapped[str] = mapped_column(String(20), comment="one of INDICATOR_STATUSES")
    reason: Mapped[str | None] = mapped_column(
        Text, comment="why the value is invalid, unsupported or skipped",
    )
    tq_score: Mapped[float | None] = mapped_column(
        Float, comment="ThreatQ score at pull time; orders the lookup backlog",
    )
    tq_updated_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="ThreatQ updated_at at pull time",
    )
    pulled_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="last time a pull saw it")
    looked_up_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="last time a verdict was computed for it",
    )
    next_lookup_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="when the indicator is due for lookup; NULL means never looked up",
    )
    carries_vt_names: Mapped[bool] = mapped_column(
        Boolean, default=False,
        comment="true when the pulled indicator already had an attribute name tqvt writes",
    )


class VtObject(Base):
    """A cached VirusTotal answer: a found object's summary or a not-found result."""

    __tablename__ = "vt_objects"
    __table_args__ = (
        UniqueConstraint("kind", "object_key", name="uq_vt_objects_kind_key"),
        CheckConstraint(_in("kind", VT_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="surrogate key")
    kind: Mapped[str] = mapped_column(String(20), comment="VirusTotal kind")
    object_key: Mapped[str] = mapped_column(
        Text, comment="data.id for found objects, the requested identifier for not-found ones",
    )
    found: Mapped[bool] = mapped_column(Boolean, comment="false when VirusTotal answered 404")
    summary: Mapped[bytes | None] = mapped_column(
        LargeBinary, comment="zlib-compressed JSON of the fields verdicts and attributes need",
    )
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="when VirusTotal answered")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="end of the cache TTL")
    hits: Mapped[int] = mapped_column(Integer, default=0, comment="lookups served from this row")


class VtAlias(Base):
    """Maps every identifier a lookup used to the cached object it resolved to."""

    __tablename__ = "vt_aliases"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True, comment="VirusTotal kind")
    identifier: Mapped[str] = mapped_column(
        Text, primary_key=True, comment="identifier as sent (MD5, URL id, ...)",
    )
    object_id: Mapped[int] = mapped_column(
        ForeignKey("vt_objects.id", ondelete="CASCADE"), index=True,
        comment="cached object this identifier resolves to",
    )


class Counter(Base):
    """A named running total (cache hits, misses, calls saved)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(50), primary_key=True, comment="counter name")
    value: Mapped[int] = mapped_column(BigInteger, default=0, comment="running total")


class WrittenState(Base):
    """The last attribute set tqvt wrote onto one indicator, with the instances it owns."""

    __tablename__ = "written_state"

    indicator_id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False, comment="ThreatQ indicator id",
    )
    fingerprint: Mapped[str | None] = mapped_column(
        String(64), comment="fingerprint of the last delivered attribute set",
    )
    attributes: Mapped[dict[str, Any]] = mapped_column(
        JSON, comment="attribute name -> {'id': instance id, 'value': value} as last written",
    )
    verdict: Mapped[str | None] = mapped_column(String(20), comment="last delivered verdict")
    written_at: Mapped[datetime | None] = mapped_column(UTCDateTime, comment="last delivery")


class VerdictHistory(Base):
    """Delivered verdicts per indicator, capped to the most recent few."""

    __tablename__ = "verdict_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="surrogate key")
    indicator_id: Mapped[int] = mapped_column(BigInteger, index=True, comment="ThreatQ id")
    verdict: Mapped[str] = mapped_column(String(20), comment="delivered verdict")
    fingerprint: Mapped[str] = mapped_column(String(64), comment="delivered fingerprint")
    written_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="delivery time")


class OutboxEntry(Base):
    """A pending write of attribute values onto one indicator."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("status", OUTBOX_STATUSES), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_outbox_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="surrogate key")
    indicator_id: Mapped[int] = mapped_column(BigInteger, index=True, comment="ThreatQ id")
    indicator_value: Mapped[str] = mapped_column(Text, comment="value, for the consume endpoint")
    indicator_type: Mapped[str] = mapped_column(String(100), comment="ThreatQ type name")
    desired: Mapped[dict[str, Any]] = mapped_column(
        JSON, comment="{'attributes': {name: value}, 'score': int or null} to reach",
    )
    fingerprint: Mapped[str] = mapped_column(String(64), comment="fingerprint of desired")
    verdict: Mapped[str] = mapped_column(String(20), comment="verdict behind desired")
    status: Mapped[str] = mapped_column(String(20), comment="one of OUTBOX_STATUSES")
    attempts: Mapped[int] = mapped_column(Integer, default=0, comment="delivery attempts so far")
    next_attempt_at: Mapped[datetime] = mapped_column(
        UTCDateTime, comment="earliest time of the next attempt",
    )
    last_error: Mapped[str | None] = mapped_column(Text, comment="reason of the last failure")
    claimed_by: Mapped[str | None] = mapped_column(
        String(36), comment="run id of the worker that set status 'started'",
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="when lookup queued it")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="last status change")


class QuotaLedger(Base):
    """VirusTotal calls booked per API key, shared by every process on this database."""

    __tablename__ = "quota_ledger"

    key_hash: Mapped[str] = mapped_column(
        String(64), primary_key=True, comment="SHA-256 of the API key; the key is never stored",
    )
    minute_limit: Mapped[int] = mapped_column(Integer, comment="calls allowed in any 60 s window")
    daily_limit: Mapped[int] = mapped_column(Integer, comment="calls allowed per UTC day")
    monthly_limit: Mapped[int | None] = mapped_column(Integer, comment="calls per UTC month")
    limits_source: Mapped[str] = mapped_column(
        String(20), comment="'virustotal', 'settings' or 'fallback'",
    )
    limits_read_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="when the limits were last read",
    )
    recent_calls: Mapped[list[str]] = mapped_column(
        JSON, comment="ISO times of the calls booked in the last 60 seconds",
    )
    day: Mapped[str] = mapped_column(String(10), comment="UTC date that used_today counts")
    used_today: Mapped[int] = mapped_column(Integer, default=0, comment="calls booked on day")
    month: Mapped[str] = mapped_column(String(7), comment="UTC month that used_month counts")
    used_month: Mapped[int] = mapped_column(Integer, default=0, comment="calls booked in month")
    blocked_until: Mapped[datetime | None] = mapped_column(
        UTCDateTime,
        comment="no call is booked before this time (hourly, daily or monthly quota spent)",
    )
    blocked_scope: Mapped[str | None] = mapped_column(
        String(10), comment="'hourly', 'daily' or 'monthly' while blocked",
    )


class Run(Base):
    """One run of one stage."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, comment="run id (UUID)")
    stage: Mapped[str] = mapped_column(String(20), comment="pull, lookup, push or rescore")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="start time")
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, comment="end time")
    outcome: Mapped[str | None] = mapped_column(
        String(20), comment="'ok', 'stopped' (exit 75), 'failed' or NULL while running",
    )
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, comment="per-stage counters")
    pid: Mapped[int] = mapped_column(Integer, comment="process id")
    host: Mapped[str] = mapped_column(String(255), comment="host name")
