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

from sqlalchemy import Select, exists, func, select, text
from sqlalchemy.orm import Session, aliased

from tqvt_sync.db.engine import is_sqlite
from tqvt_sync.db.models import Indicator, OutboxEntry, VerdictHistory, WrittenState
from tqvt_sync.errors import (
    ApiError,
    AuthenticationError,
    OutcomeUnknownError,
    PermanentApiError,
    ResponseFormatError,
    RetriableApiError,
    ServiceUnavailableError,
    TemporaryStop,
)
from tqvt_sync.http import backoff_delay
from tqvt_sync.logs import escape, log_event
from tqvt_sync.stages.common import StageContext, recorded_run, stage_lock
from tqvt_sync.stages.verdicts import merge_newer_waiting
from tqvt_sync.virustotal.attributes import ATTRIBUTE_NAMES

logger = logging.getLogger(__name__)

SOURCE = "VirusTotal"
OWNED_NAMES = frozenset(ATTRIBUTE_NAMES)
BATCH_SIZE = 100
# Rows on the read-back path cost two or more requests each, so one claim takes
# few of them. A claim of 100 would leave one worker with up to 100 rows to send
# while the other push workers on the database sit idle at the end of the queue.
READ_BACK_BATCH_SIZE = 10
# Wait before claiming again when every due row is locked by another worker's claim.
CLAIM_RETRY_SECONDS = 0.1
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
        self.counts = {"delivered": 0, "consumed": 0, "reconciled": 0, "failed": 0, "dead": 0}
        self.reconcile = os.environ.get(DISABLE_RECONCILE_ENV) != "1"
        self._lock_connection: Any = None

    # -- claiming ------------------------------------------------------------

    def _claim(self, session: Session, now: datetime) -> tuple[list[OutboxEntry], dict[int, bool]]:
        """Mark the next due rows ``started``, and return them and which of them are fresh.

        The caller commits. Fresh rows go out together in one consume request. The
        claim stops before the first row beyond READ_BACK_BATCH_SIZE that is not fresh.

        A row waits while another row of the same indicator is started, or an
        older one is still waiting (new, or failed and not yet due), so the
        writes of one indicator reach ThreatQ in the order they were queued.
        """
        query = _due_rows(now).limit(BATCH_SIZE)
        if not is_sqlite(self.ctx.engine):
            query = query.with_for_update(skip_locked=True, of=OutboxEntry)
        claimed: list[OutboxEntry] = []
        fresh: dict[int, bool] = {}
        read_back = 0
        rows = list(session.execute(query).scalars())
        # attempts still counts the earlier claims only, hence == 0 here.
        fresh_ids = self._fresh_ids(session, [row for row in rows if row.attempts == 0])
        for row in rows:
            is_fresh = row.id in fresh_ids
            if not is_fresh:
                if read_back == READ_BACK_BATCH_SIZE:
                    break
                read_back += 1
            fresh[row.id] = is_fresh
            claimed.append(row)
        for row in claimed:
            row.status, row.claimed_by, row.updated_at = "started", self.ctx.worker_id, now
            row.attempts += 1
        return claimed, fresh

    def _orphans(self, session: Session) -> list[OutboxEntry]:
        """Return started rows whose worker is gone (crashed or killed).

        On PostgreSQL the rows stay locked until the caller commits, so two
        surviving workers never take the same orphan and write it concurrently.
        NOTE: a request that the dead worker sent just before it died can still be
        in progress at ThreatQ during the read-back, and land after it. No grace
        period covers that case.
        """
        query = select(OutboxEntry).where(OutboxEntry.status == "started").order_by(OutboxEntry.id)
        if is_sqlite(self.ctx.engine):
            return list(session.execute(query).scalars())
        rows = list(session.execute(query.with_for_update(skip_locked=True)).scalars())
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
                    rows, fresh = self._claim(session, now)
                if rows:
                    self._deliver_batch(rows, fresh)
                    continue
                # A push worker that died while this one ran left its rows started.
                # They, and the rows queued behind them, are delivered before the end.
                if self._reconcile_orphans():
                    continue
                if not self._locked_by_other_claims(now):
                    return self.counts
                self.ctx.clock.sleep(CLAIM_RETRY_SECONDS)
            return self.counts
        finally:
            self._release_worker_lock()

    def _locked_by_other_claims(self, now: datetime) -> bool:
        """Return True when due rows exist that SKIP LOCKED passed over (PostgreSQL).

        A claim locks up to BATCH_SIZE rows while it decides which to keep, so
        a claim that finds nothing may only have met another worker's claim.
        The rows that claim does not keep are free again a moment later.
        """
        if is_sqlite(self.ctx.engine):
            return False
        with self.ctx.sessions() as session:
            return session.execute(_due_rows(now).limit(1)).first() is not None

    def _reconcile_orphans(self) -> int:
        """Deliver the orphaned rows by reading back first, and return how many were found."""
        with self.ctx.sessions.begin() as session:
            orphans = self._orphans(session)
            for row in orphans:
                row.claimed_by = self.ctx.worker_id
        for row in orphans:
            if self.ctx.stop.is_set():
                break
            log_event(logger, logging.INFO, "reconciling a write of unknown outcome",
                      indicator_id=row.indicator_id, outbox_id=row.id)
            self.counts["reconciled"] += 1
            if self.reconcile:
                self._deliver_one(row)
            else:
                self._deliver_consume([row])
        return len(orphans)

    def _fresh_ids(self, session: Session, rows: list[OutboxEntry]) -> set[int]:
        """Return the ids of ``rows`` that may go out through consume, with three queries.

        A row is fresh when tqvt never wrote to its indicator, no other row of the
        indicator was attempted (a dead one may have written some attributes), and
        the indicator carried none of tqvt's attribute names when it was pulled.
        """
        if not rows:
            return set()
        indicator_ids = sorted({row.indicator_id for row in rows})
        written = set(session.execute(select(WrittenState.indicator_id).where(
            WrittenState.indicator_id.in_(indicator_ids))).scalars())
        attempted: dict[int, set[int]] = {}
        for indicator_id, outbox_id in session.execute(
                select(OutboxEntry.indicator_id, OutboxEntry.id).where(
                    OutboxEntry.indicator_id.in_(indicator_ids), OutboxEntry.attempts > 0)):
            attempted.setdefault(indicator_id, set()).add(outbox_id)
        clean = set(session.execute(select(Indicator.id).where(
            Indicator.id.in_(indicator_ids), Indicator.carries_vt_names.is_(False))).scalars())
        return {row.id for row in rows
                if row.indicator_id not in written and row.indicator_id in clean
                and not attempted.get(row.indicator_id, set()) - {row.id}}

    def _deliver_batch(self, rows: list[OutboxEntry], fresh: dict[int, bool]) -> None:
        batch = [row for row in rows if fresh[row.id]]
        if batch:
            unchanged = self._unchanged_in_threatq(batch)
            for row in batch:
                fresh[row.id] = row.id in unchanged
            batch = [row for row in batch if fresh[row.id]]
        if batch:
            self._deliver_consume(batch)
        for row in rows:
            if self.ctx.stop.is_set():
                self._release_unsent([r for r in rows if not fresh[r.id]])
                return
            if not fresh[row.id]:
                self._deliver_one(row)

    def _unchanged_in_threatq(self, rows: list[OutboxEntry]) -> set[int]:
        """Return the ids of the rows whose indicator still has the row's value and type in ThreatQ.

        consume matches by value and type and creates any indicator it does not find, so a
        row whose indicator was renamed or retyped since it was pulled, or whose value and
        type now belong to another indicator, must take the read-back path, which addresses
        the indicator by id. When the query fails, no row is consumed.
        NOTE: an edit in ThreatQ between this query and the consume request is not caught.
        """
        values = sorted({row.indicator_value for row in rows})
        criteria = {"+or": [{"value": value} for value in values]}
        current_keys: set[tuple[int, str, str]] = set()
        try:
            for page in self.client.iter_indicator_pages(criteria, None, sort="id",
                                                         relations=("type",)):
                for item in page.items:
                    kind = item.get("type")
                    type_name = kind.get("name") if isinstance(kind, dict) else None
                    current_keys.add((item.get("id"), str(item.get("value")), str(type_name)))
        except AuthenticationError:
            raise
        except (ApiError, TemporaryStop) as exc:
            log_event(logger, logging.WARNING, "could not check indicators before consume; "
                      "writing them one by one", error=escape(_describe(exc)))
            return set()
        return {row.id for row in rows
                if (row.indicator_id, row.indicator_value, row.indicator_type) in current_keys}

    def _release_unsent(self, rows: list[OutboxEntry]) -> None:
        """Put rows claimed but never sent back in the queue (on a stop request)."""
        with self.ctx.sessions.begin() as session:
            for row in rows:
                current = session.get(OutboxEntry, row.id)
                if current is not None and current.status == "started":
                    current.status = "failed" if current.attempts > 1 else "new"
                    current.attempts -= 1
                    merge_newer_waiting(session, current)

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
        consumed: list[tuple[OutboxEntry, dict[str, dict[str, Any]]]] = []
        for row in rows:
            if (row.indicator_value, row.indicator_id) not in by_key:
                self._fail(row, PermanentApiError("consume did not return this indicator's id"),
                           retry_at=self.ctx.clock.now())
                continue
            if row.desired.get("score") is not None:
                self._deliver_one(row)
                continue
            attributes = {n: {"id": None, "value": v} for n, v in row.desired["attributes"].items()}
            consumed.append((row, attributes))
        # One transaction records the whole batch; until it commits, the rows stay
        # started and a rerun reads them back, as after any crash.
        self._complete_many(consumed)
        self.counts["consumed"] += len(consumed)

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
        except (RetriableApiError, ResponseFormatError, TemporaryStop) as exc:
            # A broken body for one indicator fails only its row, which is retried with
            # backoff, so the other rows of the batch are still delivered.
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
        self._complete_many([(row, attributes)])

    def _complete_many(
        self, delivered: list[tuple[OutboxEntry, dict[str, dict[str, Any]]]]
    ) -> None:
        """Mark delivered rows completed, with their written_state and verdict_history, at once.

        ``delivered`` pairs each row with the attributes now on its indicator.
        The rows of one claim belong to different indicators.
        """
        if not delivered:
            return
        now = self.ctx.clock.now()
        outbox_ids = [row.id for row, _ in delivered]
        indicator_ids = [row.indicator_id for row, _ in delivered]
        recorded: list[int] = []
        with self.ctx.sessions.begin() as session:
            found = session.execute(select(OutboxEntry).where(OutboxEntry.id.in_(outbox_ids)))
            entries = {entry.id: entry for entry in found.scalars()}
            found = session.execute(
                select(WrittenState).where(WrittenState.indicator_id.in_(indicator_ids)))
            states = {state.indicator_id: state for state in found.scalars()}
            for row, attributes in delivered:
                current = entries.get(row.id)
                if current is None:
                    continue
                current.status, current.last_error, current.updated_at = "completed", None, now
                state = states.get(row.indicator_id)
                if state is None:
                    state = WrittenState(indicator_id=row.indicator_id, attributes={})
                    session.add(state)
                    states[row.indicator_id] = state
                state.fingerprint, state.verdict = row.fingerprint, row.verdict
                state.written_at, state.attributes = now, attributes
                session.add(VerdictHistory(indicator_id=row.indicator_id, verdict=row.verdict,
                                           fingerprint=row.fingerprint, written_at=now))
                recorded.append(row.indicator_id)
            _cap_histories(session, recorded)
        self.counts["delivered"] += len(recorded)

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
                merge_newer_waiting(session, current)
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


def _cap_histories(session: Session, indicator_ids: list[int]) -> None:
    """Keep the newest HISTORY_KEPT verdict_history rows of each of ``indicator_ids``."""
    if not indicator_ids:
        return
    session.flush()
    crowded = session.execute(
        select(VerdictHistory.indicator_id).where(VerdictHistory.indicator_id.in_(indicator_ids))
        .group_by(VerdictHistory.indicator_id).having(func.count() > HISTORY_KEPT)
    ).scalars().all()
    for indicator_id in crowded:
        _cap_history(session, indicator_id)


def _cap_history(session: Session, indicator_id: int) -> None:
    session.flush()
    ids = list(session.execute(
        select(VerdictHistory.id).where(VerdictHistory.indicator_id == indicator_id)
        .order_by(VerdictHistory.id.desc()).offset(HISTORY_KEPT)
    ).scalars())
    for history_id in ids:
        session.delete(session.get(VerdictHistory, history_id))


def _due_rows(now: datetime) -> Select[tuple[OutboxEntry]]:
    """Select the rows due for delivery at ``now``, oldest first (see Push._claim)."""
    earlier = aliased(OutboxEntry)
    blocked = exists().where(
        earlier.indicator_id == OutboxEntry.indicator_id,
        earlier.id != OutboxEntry.id,
        (earlier.status == "started")
        | (earlier.status.in_(("new", "failed")) & (earlier.id < OutboxEntry.id)),
    )
    return (
        select(OutboxEntry)
        .where(OutboxEntry.status.in_(("new", "failed")), OutboxEntry.next_attempt_at <= now,
               ~blocked)
        .order_by(OutboxEntry.id)
    )


def _worker_key(worker_id: str) -> int:
    return int(worker_id.replace("-", "")[:15], 16)


def push(ctx: StageContext) -> dict[str, int]:
    """Run the push stage; return its counts."""
    with stage_lock(ctx, "push", exclusive_on_postgres=False):
        stage = Push(ctx)
        with recorded_run(ctx, "push", stage.counts):
            return stage.run()
