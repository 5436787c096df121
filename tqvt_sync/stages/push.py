"""The push stage: deliver queued writes from the outbox to ThreatQ.

Delivery is at least once and idempotent. A row is marked ``started`` in a
committed transaction before anything is sent. A row that is found
``started`` later, or whose last attempt ended with an unknown outcome, is
delivered by reading the indicator's attributes back first and then changing
only what differs, so a repeated delivery cannot duplicate an attribute.

Rows for indicators that carried none of tqvt's attribute names when pulled,
and that tqvt never wrote to, go out in batches through ``/api/indicators/consume``;
every other row is read back and written attribute by attribute.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, text
from sqlalchemy.orm import Session, aliased

from tqvt_sync.db.engine import is_sqlite
from tqvt_sync.db.models import Indicator, OutboxEntry, VerdictHistory, WrittenState
from tqvt_sync.errors import (
    AuthenticationError,
    OutcomeUnknownError,
    PermanentApiError,
    RetriableApiError,
    ServiceUnavailableError,
    TemporaryStop,
)
from tqvt_sync.http import backoff_delay
from tqvt_sync.logs import escape, log_event
from tqvt_sync.stages.common import StageContext, recorded_run, stage_lock
from tqvt_sync.virustotal.attributes import ATTRIBUTE_NAMES

logger = logging.getLogger(__name__)

SOURCE = "VirusTotal"
OWNED_NAMES = frozenset(ATTRIBUTE_NAMES)
BATCH_SIZE = 100
MAX_ATTEMPTS = 8
HISTORY_KEPT = 10
# Switches off the read-back of rows whose outcome is unknown. It exists only so
# the crash tests can show that they detect the duplicates this protection prevents.
DISABLE_RECONCILE_ENV = "TQVT_TEST_DISABLE_RECONCILE"


@dataclass(frozen=True)
class Change:
    """One attribute request: create, update or delete."""

    action: str
    name: str
    value: str | None = None
    attribute_id: int | None = None


def _is_ours(attribute: dict[str, Any], known_ids: set[int]) -> bool:
    if attribute.get("name") not in OWNED_NAMES:
        return False
    if attribute.get("id") in known_ids:
        return True
    sources = attribute.get("sources") or []
    return any(isinstance(s, dict) and s.get("name") == SOURCE for s in sources)


def plan_changes(
    existing: list[dict[str, Any]], desired: dict[str, str], known_ids: set[int] | None = None
) -> list[Change]:
    """Return the requests that turn ``existing`` into exactly one instance per desired name.

    Only attributes with a name tqvt owns and the source VirusTotal (or an
    instance id tqvt created) are considered; everything else is left alone.
    Names absent from ``desired`` lose every instance tqvt owns.
    """
    ours = [a for a in existing if _is_ours(a, known_ids or set())]
    changes: list[Change] = []
    for name in sorted(OWNED_NAMES):
        have = [a for a in ours if a.get("name") == name]
        want = desired.get(name)
        if want is None:
            changes.extend(Change("delete", name, attribute_id=a["id"]) for a in have)
            continue
        keep = next((a for a in have if str(a.get("value")) == want), None)
        if keep is None and have:
            keep = have[0]
            changes.append(Change("update", name, want, keep["id"]))
        elif keep is None:
            changes.append(Change("create", name, want))
        changes.extend(Change("delete", name, attribute_id=a["id"]) for a in have if a is not keep)
    return changes


class Push:
    """One run of the push stage."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.client = ctx.threatq()
        self.counts = {"delivered": 0, "consumed": 0, "reconciled": 0, "failed": 0, "dead": 0,
                       "requests_saved": 0}
        self.reconcile = os.environ.get(DISABLE_RECONCILE_ENV) != "1"
        self._lock_connection: Any = None

    # -- claiming ------------------------------------------------------------

    def _claim(self, session: Session, now: datetime) -> list[OutboxEntry]:
        """Mark the next due rows ``started`` and return them (committed by the caller).

        A row waits while an older row of the same indicator is started, so
        the writes of one indicator reach ThreatQ in the order they were queued.
        """
        earlier = aliased(OutboxEntry)
        blocked = exists().where(
            earlier.indicator_id == OutboxEntry.indicator_id,
            earlier.status == "started",
            earlier.id != OutboxEntry.id,
        )
        query = (
            select(OutboxEntry)
            .where(OutboxEntry.status.in_(("new", "failed")), OutboxEntry.next_attempt_at <= now,
                   ~blocked)
            .order_by(OutboxEntry.id)
            .limit(BATCH_SIZE)
        )
        if not is_sqlite(self.ctx.engine):
            query = query.with_for_update(skip_locked=True, of=OutboxEntry)
        rows = list(session.execute(query).scalars())
        for row in rows:
            row.status, row.claimed_by, row.updated_at = "started", self.ctx.worker_id, now
            row.attempts += 1
        return rows

    def _orphans(self, session: Session) -> list[OutboxEntry]:
        """Return started rows whose worker is gone (crashed or killed)."""
        rows = list(session.execute(
            select(OutboxEntry).where(OutboxEntry.status == "started").order_by(OutboxEntry.id)
        ).scalars())
        if is_sqlite(self.ctx.engine):
            return rows
        return [row for row in rows if row.claimed_by != self.ctx.worker_id
                and self._worker_gone(session, row.claimed_by)]

    def _worker_gone(self, session: Session, worker_id: str | None) -> bool:
        if worker_id is None:
            return True
        key = _worker_key(worker_id)
        free = session.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if free:
            session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return bool(free)

    def _hold_worker_lock(self) -> None:
        if is_sqlite(self.ctx.engine):
            return
        self._lock_connection = self.ctx.engine.connect()
        self._lock_connection.execute(
            text("SELECT pg_advisory_lock(:k)"), {"k": _worker_key(self.ctx.worker_id)})
        self._lock_connection.commit()

    def _release_worker_lock(self) -> None:
        if self._lock_connection is not None:
            self._lock_connection.close()
            self._lock_connection = None

    # -- delivery ------------------------------------------------------------

    def run(self) -> dict[str, int]:
        self._hold_worker_lock()
        try:
            self._reconcile_orphans()
            while not self.ctx.stop.is_set():
                now = self.ctx.clock.now()
                with self.ctx.sessions.begin() as session:
                    rows = self._claim(session, now)
                    fresh = {row.id: self._is_fresh(session, row) for row in rows}
                if not rows:
                    return self.counts
                self._deliver_batch(rows, fresh)
            return self.counts
        finally:
            self._release_worker_lock()

    def _reconcile_orphans(self) -> None:
        with self.ctx.sessions.begin() as session:
            orphans = self._orphans(session)
            for row in orphans:
                row.claimed_by = self.ctx.worker_id
        for row in orphans:
            if self.ctx.stop.is_set():
                return
            log_event(logger, logging.INFO, "reconciling a write of unknown outcome",
                      indicator_id=row.indicator_id, outbox_id=row.id)
            self.counts["reconciled"] += 1
            if self.reconcile:
                self._deliver_one(row)
            else:
                self._deliver_consume([row])

    def _is_fresh(self, session: Session, row: OutboxEntry) -> bool:
        if row.attempts > 1 or session.get(WrittenState, row.indicator_id) is not None:
            return False
        indicator = session.get(Indicator, row.indicator_id)
        return indicator is not None and not indicator.carries_vt_names

    def _deliver_batch(self, rows: list[OutboxEntry], fresh: dict[int, bool]) -> None:
        batch = [row for row in rows if fresh[row.id]]
        if batch:
            self._deliver_consume(batch)
        for row in rows:
            if self.ctx.stop.is_set():
                self._release_unsent([r for r in rows if not fresh[r.id]])
                return
            if not fresh[row.id]:
                self._deliver_one(row)

    def _release_unsent(self, rows: list[OutboxEntry]) -> None:
        """Put rows claimed but never sent back in the queue (on a stop request)."""
        with self.ctx.sessions.begin() as session:
            for row in rows:
                current = session.get(OutboxEntry, row.id)
                if current is not None and current.status == "started":
                    current.status = "failed" if current.attempts > 1 else "new"
                    current.attempts -= 1

    def _deliver_consume(self, rows: list[OutboxEntry]) -> None:
        payload = [{
            "value": row.indicator_value,
            "type": {"name": row.indicator_type},
            "attributes": [{"name": name, "value": value, "sources": [{"name": SOURCE}]}
                           for name, value in sorted(row.desired["attributes"].items())],
        } for row in rows]
        try:
            results = self.client.consume(payload)
        except AuthenticationError:
            raise
        except PermanentApiError as exc:
            # The batch as a whole was rejected; each row then goes the
            # read-back path, which isolates the indicator at fault.
            for row in rows:
                self._fail(row, exc, retry_at=self.ctx.clock.now())
            return
        except (RetriableApiError, TemporaryStop) as exc:
            for row in rows:
                self._fail(row, exc)
            if isinstance(exc, ServiceUnavailableError):
                raise
            return
        by_key = {(str(r.get("value")), r.get("id")) for r in results if isinstance(r, dict)}
        for row in rows:
            if (row.indicator_value, row.indicator_id) not in by_key:
                self._fail(row, PermanentApiError("consume did not return this indicator's id"),
                           retry_at=self.ctx.clock.now())
                continue
            if row.desired.get("score") is not None:
                self._deliver_one(row)
                continue
            attributes = {n: {"id": None, "value": v} for n, v in row.desired["attributes"].items()}
            self._complete(row, attributes)
            self.counts["consumed"] += 1

    def _deliver_one(self, row: OutboxEntry) -> None:
        try:
            attributes = self._write_attributes(row)
            self._write_score(row)
        except AuthenticationError:
            raise
        except PermanentApiError as exc:
            self._dead(row, exc)
            return
        except ServiceUnavailableError as exc:
            self._fail(row, exc)
            raise
        except (RetriableApiError, TemporaryStop) as exc:
            self._fail(row, exc)
            return
        self._complete(row, attributes)

    def _write_attributes(self, row: OutboxEntry) -> dict[str, dict[str, Any]]:
        with self.ctx.sessions() as session:
            state = session.get(WrittenState, row.indicator_id)
            known = {v.get("id") for v in (state.attributes if state else {}).values()
                     if isinstance(v, dict) and v.get("id") is not None}
        existing = self.client.fetch_attributes(row.indicator_id)
        desired: dict[str, str] = row.desired["attributes"]
        written = {a["name"]: {"id": a.get("id"), "value": str(a.get("value"))}
                   for a in existing if _is_ours(a, known) and a.get("name") in desired}
        for change in plan_changes(existing, desired, known):
            if change.action == "create":
                created = self.client.create_attribute(row.indicator_id, change.name, change.value)
                written[change.name] = {"id": created.get("id"), "value": change.value}
            elif change.action == "update":
                self.client.update_attribute(row.indicator_id, change.attribute_id, change.value)
                written[change.name] = {"id": change.attribute_id, "value": change.value}
            else:
                self.client.delete_attribute(row.indicator_id, change.attribute_id)
        return written

    def _write_score(self, row: OutboxEntry) -> None:
        score = row.desired.get("score")
        if score is None:
            return
        indicator = self.client.fetch_indicator(row.indicator_id) or {}
        current = indicator.get("score")
        if isinstance(current, dict):
            current = current.get("manual_score") if current.get("manual_score") is not None \
                else current.get("generated_score")
        if isinstance(current, int | float) and not isinstance(current, bool) and current >= score:
            return
        self.client.update_score(row.indicator_id, int(score))

    # -- outcomes ------------------------------------------------------------

    def _complete(self, row: OutboxEntry, attributes: dict[str, dict[str, Any]]) -> None:
        now = self.ctx.clock.now()
        with self.ctx.sessions.begin() as session:
            current = session.get(OutboxEntry, row.id)
            if current is None:
                return
            current.status, current.last_error, current.updated_at = "completed", None, now
            state = session.get(WrittenState, row.indicator_id)
            if state is None:
                state = WrittenState(indicator_id=row.indicator_id, attributes={})
                session.add(state)
            state.fingerprint, state.verdict, state.written_at = row.fingerprint, row.verdict, now
            state.attributes = attributes
            session.add(VerdictHistory(indicator_id=row.indicator_id, verdict=row.verdict,
                                       fingerprint=row.fingerprint, written_at=now))
            _cap_history(session, row.indicator_id)
        self.counts["delivered"] += 1

    def _fail(self, row: OutboxEntry, exc: Exception, retry_at: datetime | None = None) -> None:
        now = self.ctx.clock.now()
        with self.ctx.sessions.begin() as session:
            current = session.get(OutboxEntry, row.id)
            if current is None:
                return
            current.last_error = _describe(exc)
            current.updated_at = now
            if current.attempts >= MAX_ATTEMPTS:
                current.status = "dead"
                self.counts["dead"] += 1
            else:
                current.status = "failed"
                delay = getattr(exc, "retry_after", None) or backoff_delay(
                    current.attempts, base=30.0, cap=3600.0)
                current.next_attempt_at = retry_at or now + timedelta(seconds=delay)
                self.counts["failed"] += 1
        log_event(logger, logging.WARNING, "write failed", indicator_id=row.indicator_id,
                  outbox_id=row.id, attempts=row.attempts, error=escape(_describe(exc)),
                  outcome_unknown=isinstance(exc, OutcomeUnknownError))

    def _dead(self, row: OutboxEntry, exc: Exception) -> None:
        now = self.ctx.clock.now()
        with self.ctx.sessions.begin() as session:
            current = session.get(OutboxEntry, row.id)
            if current is not None:
                current.status, current.last_error, current.updated_at = "dead", _describe(exc), now
        self.counts["dead"] += 1
        log_event(logger, logging.ERROR, "write rejected; row is dead",
                  indicator_id=row.indicator_id, outbox_id=row.id, error=escape(_describe(exc)))


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def _cap_history(session: Session, indicator_id: int) -> None:
    session.flush()
    ids = list(session.execute(
        select(VerdictHistory.id).where(VerdictHistory.indicator_id == indicator_id)
        .order_by(VerdictHistory.id.desc()).offset(HISTORY_KEPT)
    ).scalars())
    for history_id in ids:
        session.delete(session.get(VerdictHistory, history_id))


def _worker_key(worker_id: str) -> int:
    return int(worker_id.replace("-", "")[:15], 16)


def push(ctx: StageContext) -> dict[str, int]:
    """Run the push stage; return its counts."""
    with stage_lock(ctx, "push", exclusive_on_postgres=False):
        stage = Push(ctx)
        with recorded_run(ctx, "push", stage.counts):
            return stage.run()
