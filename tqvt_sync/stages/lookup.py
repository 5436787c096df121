"""The lookup stage: VirusTotal verdicts for due indicators, cache first, within quota.

Indicators are grouped by VirusTotal identifier, so any number of indicators
with one identifier cost at most one call. A group is served from the cache
when a fresh entry exists; otherwise one call is booked in the quota ledger,
sent, and its answer, the verdicts and the queued writes are committed in one
transaction. A sequential run on SQLite books the next group's call in that same
transaction when the next group has no cache row, so each call costs one commit.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from tqvt_sync.db.engine import LOOKUP_IDENTIFIER_LOCK, is_sqlite, try_transaction_lock
from tqvt_sync.db.models import Indicator
from tqvt_sync.db.types import UTCDateTime
from tqvt_sync.errors import (
    AuthenticationError,
    ConfigError,
    NotSentError,
    PermanentApiError,
    QuotaExhaustedError,
    ResponseFormatError,
    RetriableApiError,
    ServiceUnavailableError,
    TemporaryStop,
)
from tqvt_sync.http import backoff_delay
from tqvt_sync.logs import bind_run_context, current_run_context, escape, log_event
from tqvt_sync.quota import (
    FALLBACK_DAILY_LIMIT,
    FALLBACK_MINUTE_LIMIT,
    Ledger,
    QuotaLimits,
    limits_from_overall_quotas,
    next_midnight,
    next_month_start,
)
from tqvt_sync.stages.cache import find_fresh, store_answer, uncached_pairs, unpack_summary
from tqvt_sync.stages.common import StageContext, add_to_counters, recorded_run, stage_lock
from tqvt_sync.stages.verdicts import apply_answer
from tqvt_sync.virustotal.attributes import file_hashes, summarize
from tqvt_sync.virustotal.client import VtQuotaError

logger = logging.getLogger(__name__)

BATCH_IDENTIFIERS = 200
MAX_ATTEMPTS = 5
MINUTE_RETRY_SECONDS = 61.0
# A 429 that the quotas endpoint cannot explain is retried this often before
# the run stops, so a misreported quota cannot turn into a loop of calls.
MAX_UNEXPLAINED_429 = 3
PERMANENT_ERROR_RETRY = timedelta(days=1)


@dataclass(frozen=True)
class Group:
    """Due indicators that share one VirusTotal identifier."""

    kind: str
    identifier: str
    indicator_ids: tuple[int, ...]


def due_condition(now: datetime) -> Any:
    return (Indicator.status.in_(("pending", "looked_up", "not_found"))) & or_(
        Indicator.next_lookup_at.is_(None), Indicator.next_lookup_at <= now
    )


def _claim_statement(ids: Any, *, skip_locked: bool) -> Any:
    """Return the query for the due indicators of one group, locking them on PostgreSQL."""
    statement = (
        select(Indicator.id, Indicator.value, Indicator.type_name)
        .where(ids, due_condition(bindparam("now", type_=UTCDateTime)),
               Indicator.kind == bindparam("kind"),
               Indicator.identifier == bindparam("identifier"))
        .order_by(Indicator.id)
    )
    return statement.with_for_update(skip_locked=True) if skip_locked else statement


# Lookup claims a group before every answer it stores, so the four variants are
# built once, at import, keyed by (one indicator, PostgreSQL). Most groups hold one
# indicator, and its statement needs no expansion of an IN list at every execution.
_CLAIMS = {
    (single, skip_locked): _claim_statement(
        Indicator.id == bindparam("indicator_ids") if single
        else Indicator.id.in_(bindparam("indicator_ids", expanding=True)),
        skip_locked=skip_locked)
    for single in (True, False) for skip_locked in (True, False)
}


def backlog_tier() -> Any:
    """Return the backlog tier of an indicator: 0 never looked up, 1 stale, 2 the rest.

    The rest are indicators that VirusTotal rejected on every lookup so far.
    They wait for their retry time and then come after every stale verdict.
    """
    return case(
        (Indicator.next_lookup_at.is_(None), 0),
        (Indicator.looked_up_at.is_not(None), 1),
        else_=2,
    )


def due_groups(session: Session, now: datetime, limit: int) -> list[Group]:
    """Return up to ``limit`` groups in backlog order.

    Order: never looked up first, then the stalest (the oldest verdict), then
    the rest. A higher ThreatQ score comes first within the first and the last
    tier, and among stale indicators whose verdicts are equally old.
    """
    rows = session.execute(
        select(Indicator.id, Indicator.kind, Indicator.identifier)
        .where(due_condition(now), Indicator.identifier.is_not(None))
        .order_by(
            backlog_tier(),
            # Age of the verdict, for stale indicators only.
            case((Indicator.next_lookup_at.is_not(None), Indicator.looked_up_at), else_=None),
            Indicator.tq_score.desc().nulls_last(),
            Indicator.next_lookup_at,
            Indicator.id,
        )
        .limit(limit * 4)
    ).all()
    groups: dict[tuple[str, str], list[int]] = {}
    for indicator_id, kind, identifier in rows:
        key = (kind, identifier)
        if key not in groups and len(groups) >= limit:
            continue
        groups.setdefault(key, []).append(indicator_id)
    return [Group(kind, ident, tuple(ids)) for (kind, ident), ids in groups.items()]


class Lookup:
    """One run of the lookup stage."""

    def __init__(self, ctx: StageContext, *, wait: bool = False, max_calls: int | None = None):
        self.ctx = ctx
        self.wait = wait
        self.max_calls = max_calls
        self.client = ctx.virustotal()
        settings = ctx.settings
        self.ledger = Ledger(ctx.sessions, settings.vt_api_key, ctx.clock,
                             reserve=settings.daily_reserve)
        self.counts = {"identifiers": 0, "indicators": 0, "calls": 0, "cache_hits": 0,
                       "not_found": 0, "queued_writes": 0, "errors": 0}
        self._unexplained_429 = 0
        self._rng = random.Random()
        # (kind, identifier) pairs of the current batch that have no cache row at all.
        # It is filled on SQLite only, where no other lookup process stores responses.
        self._uncached: set[tuple[str, str]] = set()
        # The group that runs after the current one in a sequential SQLite run, and
        # the booking made for it in the transaction that stored the current answer.
        self._next_group: Group | None = None
        self._booked_for: tuple[Group, str] | None = None
        # The connection of a sequential run on SQLite, which stores the answers.
        self._connection: Connection | None = None

    # -- quota ------------------------------------------------------------

    def read_limits(self) -> None:
        """Read limits from VirusTotal (free of quota); settings override, fallback 4 and 500."""
        settings = self.ctx.settings
        try:
            limits = limits_from_overall_quotas(self.client.fetch_overall_quotas())
        except AuthenticationError:
            raise
        except Exception as exc:  # any failure of this free endpoint falls back to defaults
            log_event(logger, logging.WARNING, "quota limits unavailable; using fallback",
                      error=escape(exc))
            limits = QuotaLimits(FALLBACK_MINUTE_LIMIT, FALLBACK_DAILY_LIMIT, None, "fallback")
        if settings.minute_limit is not None or settings.daily_limit is not None:
            limits = QuotaLimits(
                minute=settings.minute_limit or limits.minute,
                daily=settings.daily_limit or limits.daily,
                monthly=limits.monthly,
                source="settings",
                used_today=limits.used_today,
                used_month=limits.used_month,
            )
        if settings.daily_reserve >= limits.daily:
            raise ConfigError(
                f"TQVT_DAILY_RESERVE={settings.daily_reserve} leaves no call of the daily limit "
                f"of {limits.daily}; set it below {limits.daily}."
            )
        self.ledger.apply_limits(limits)

    def _wait_or_raise(self, exc: QuotaExhaustedError) -> None:
        if not self.wait:
            raise exc
        log_event(logger, logging.INFO, "sleeping until the quota resets",
                  until=exc.blocked_until.isoformat())
        self._emit("quota_wait", next_call_at=exc.blocked_until)
        remaining = (exc.blocked_until - self.ctx.clock.now()).total_seconds()
        if not self._sleep(remaining):
            raise exc
        self.read_limits()

    def _sleep(self, seconds: float) -> bool:
        """Sleep on the clock in steps of at most one second; False when a stop was requested."""
        while seconds > 0:
            if self.ctx.stop.is_set():
                return False
            step = min(seconds, 1.0)
            self.ctx.clock.sleep(step)
            seconds -= step
        return not self.ctx.stop.is_set()

    def _explain_429(self) -> bool:
        """Ask the quotas endpoint which quota a 429 QuotaExceededError refers to.

        Raises QuotaExhaustedError for a spent hourly, daily or monthly allowance.
        For the minute limit it waits, and returns False when a stop was requested
        during the wait, True when the call may be sent again.
        """
        now = self.ctx.clock.now()
        try:
            data = self.client.fetch_overall_quotas()
        except Exception as exc:  # the free endpoint failing leaves the 429 unexplained
            log_event(logger, logging.WARNING, "quota endpoint failed after 429", error=escape(exc))
            data = {}
        limits = limits_from_overall_quotas(data) if data else None
        if limits is not None and limits.monthly is not None and limits.used_month is not None \
                and limits.used_month >= limits.monthly:
            self.ledger.block("monthly", next_month_start(now))
        elif data and limits is not None and limits.used_today is not None \
                and limits.used_today >= limits.daily:
            self.ledger.block("daily", next_midnight(now))
        elif limits is not None and limits.hourly is not None and limits.used_hour is not None \
                and limits.used_hour >= limits.hourly:
            # NOTE: no public source documents whether the hourly allowance counts the
            # last 60 minutes or the clock hour. An hour from now is past the reset in both.
            self.ledger.block("hourly", now + timedelta(hours=1))
        else:
            self._unexplained_429 += 1
            if self._unexplained_429 > MAX_UNEXPLAINED_429:
                raise ServiceUnavailableError(
                    "VirusTotal keeps responding 429 QuotaExceededError although the quotas "
                    "endpoint shows calls left; rerun later."
                )
            log_event(logger, logging.WARNING, "per-minute quota hit; waiting",
                      seconds=MINUTE_RETRY_SECONDS)
            return self._sleep(MINUTE_RETRY_SECONDS + self._rng.uniform(0, 5))
        self.ledger.check_blocked()
        return True

    # -- one identifier ----------------------------------------------------

    def fetch(self, group: Group) -> Any:
        """Book and send the call for ``group``; retry temporary failures with backoff.

        A request that cannot have reached VirusTotal (connection refused, host
        not resolved, connect timeout) gives its booking back before the retry.
        """
        attempt = 0
        while True:
            if self.ctx.stop.is_set():
                return None
            if self._booked_for is not None and self._booked_for[0] == group:
                # The call was booked when the previous answer was stored.
                stamp = self._booked_for[1]
                self._booked_for = None
            else:
                if self.max_calls is not None and self.counts["calls"] >= self.max_calls:
                    # No call goes past --max-calls, retries included; the group waits
                    # for the next run.
                    return None
                stamp = self.ledger.book(on_wait=self._report_wait,
                                         should_stop=self.ctx.stop.is_set)
                if stamp is None:
                    return None
            self.counts["calls"] += 1
            try:
                answer = self.client.fetch_object(group.kind, group.identifier)
                self._unexplained_429 = 0
                return answer
            except VtQuotaError:
                if not self._explain_429():
                    return None
            except (RetriableApiError, ResponseFormatError) as exc:
                if isinstance(exc, NotSentError):
                    self.ledger.release(stamp)
                    self.counts["calls"] -= 1
                attempt += 1
                log_event(logger, logging.WARNING, "VirusTotal call failed; retrying",
                          identifier=escape(group.identifier),
                          indicator_ids=list(group.indicator_ids), status=exc.status,
                          attempt=attempt, error=escape(exc))
                if attempt >= MAX_ATTEMPTS and isinstance(exc, NotSentError):
                    raise ServiceUnavailableError(
                        f"VirusTotal could not be reached {attempt} times in a row ({exc}); "
                        "check VT_API_URL and the network, then rerun."
                    ) from None
                if attempt >= MAX_ATTEMPTS:
                    raise ServiceUnavailableError(
                        f"VirusTotal failed {attempt} times in a row ({exc}); rerun later."
                    ) from None
                delay = exc.retry_after or backoff_delay(attempt, base=2.0, cap=120.0)
                if not self._sleep(delay):
                    return None

    def _report_wait(self, delay: float) -> None:
        self._emit("pacing", wait_seconds=delay)

    def _emit(self, event: str, **fields: Any) -> None:
        """Send a progress event with the counts and the ledger's last reading."""
        if self.ctx.progress is None:
            return
        next_call_at = self.ledger.next_call_at
        if next_call_at is not None and next_call_at <= self.ctx.clock.now():
            next_call_at = None
        self.ctx.progress({"event": event, **self.counts,
                           "calls_left_today": self.ledger.calls_left_today,
                           "next_call_at": next_call_at, **fields})

    def serve_from_cache(self, session: Session, group: Group, now: datetime) -> bool:
        cached = find_fresh(session, group.kind, group.identifier, now)
        if cached is None:
            return False
        connection = session.connection()
        indicators = self._claim(connection, group, now)
        if not indicators:
            return True
        cached.hits += len(indicators)
        summary = unpack_summary(cached.summary) if cached.found else None
        self.counts["queued_writes"] += apply_answer(
            connection, self.ctx.settings, indicators, kind=cached.kind, summary=summary,
            expires_at=cached.expires_at, now=now)
        # A hit and a miss are both counted per identifier, so the hit rate compares
        # like with like. The calls saved are counted per indicator.
        add_to_counters(connection, {"cache_hits": 1, "vt_calls_saved": len(indicators)})
        self.counts["cache_hits"] += len(indicators)
        self.counts["indicators"] += len(indicators)
        return True

    def _claim(self, connection: Connection, group: Group, now: datetime) -> list[Any]:
        """Return the due indicators of ``group`` (id, value, type name), locked on PostgreSQL."""
        single = len(group.indicator_ids) == 1
        statement = _CLAIMS[single, not is_sqlite(self.ctx.engine)]
        return list(connection.execute(statement, {
            "indicator_ids": group.indicator_ids[0] if single else group.indicator_ids,
            "now": now,
            "kind": group.kind, "identifier": group.identifier,
        }))

    def process(self, group: Group) -> bool:
        """Serve or look up one group, and return False if another worker had locked it.

        Returns False at once after a stop request: the thread pool may hold many
        more groups, and none of them starts.
        """
        if self.ctx.stop.is_set():
            return False
        if self._connection is not None and (group.kind, group.identifier) in self._uncached:
            return self._look_up_uncached(group, self._connection)
        with self._group_session() as session:
            if not self._lock_identifier(session, group):
                return False
            now = self.ctx.clock.now()
            uncached = (group.kind, group.identifier) in self._uncached
            if not uncached and self.serve_from_cache(session, group, now):
                return True
            if is_sqlite(self.ctx.engine):
                # Release SQLite's write lock before the network call.
                session.commit()
            elif not self._claim(session.connection(), group, now):
                return True
            try:
                answer = self.fetch(group)
            except PermanentApiError as exc:
                self._record_permanent_error(session.connection(), group, exc)
                return True
            if answer is None:
                return True
            self._store(session.connection(), group, answer)
            return True

    def _look_up_uncached(self, group: Group, connection: Connection) -> bool:
        """Look up a group that has no cache row, in a sequential run on SQLite.

        Nothing is read before the call, and the answer is stored in one
        transaction on the run's connection.
        """
        try:
            answer = self.fetch(group)
        except PermanentApiError as exc:
            with connection.begin():
                self._record_permanent_error(connection, group, exc)
            return True
        if answer is not None:
            with connection.begin():
                self._store(connection, group, answer)
        return True

    def _lock_identifier(self, session: Session, group: Group) -> bool:
        """Keep other workers off this identifier until the transaction ends (PostgreSQL).

        The row locks of ``_claim`` cover only the indicators in this worker's
        group. Another worker's group for the same identifier can hold more
        (an indicator pulled meanwhile), and without this lock it would claim
        those and send a second call for the identifier. The lock is taken
        before the cache is read, so the cache read finds the answer that a
        worker holding the lock before this one stored.
        """
        if is_sqlite(self.ctx.engine):
            return True
        name = f"{group.kind}:{group.identifier}"
        return try_transaction_lock(session, LOOKUP_IDENTIFIER_LOCK, name)

    @contextmanager
    def _group_session(self) -> Iterator[Session]:
        """A session for one group.

        PostgreSQL keeps the transaction open across the call, so the advisory
        lock on the identifier and the row locks taken with SKIP LOCKED keep
        other workers off it. A worker that dies drops its connection, and the
        locks go with it. SQLite runs one lookup process at a time (the stage
        lock), so it reads without a write lock and writes the answer in a short
        transaction afterwards.
        """
        session = self.ctx.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _store(self, connection: Connection, group: Group, answer: Any) -> None:
        now = self.ctx.clock.now()
        settings = self.ctx.settings
        summary = summarize(group.kind, answer.data) if answer.found else None
        ttl = settings.cache_ttl if answer.found else settings.not_found_ttl
        other_identifiers = []
        if answer.found and group.kind == "file":
            other_identifiers = file_hashes(answer.data)
        cached = store_answer(connection, kind=group.kind, identifier=group.identifier,
                              summary=summary, now=now, ttl=ttl,
                              other_identifiers=other_identifiers)
        # Every alias of the new row can now answer later groups of the batch.
        for alias in cached.aliases:
            self._uncached.discard((group.kind, alias))
        indicators = self._claim(connection, group, now)
        self.counts["queued_writes"] += apply_answer(
            connection, settings, indicators, kind=group.kind, summary=summary,
            expires_at=cached.expires_at, now=now)
        saved = max(len(indicators) - 1, 0)
        add_to_counters(connection, {"cache_misses": 1, "vt_calls_saved": saved})
        self._book_next_call(connection)
        self.counts["identifiers"] += 1
        self.counts["indicators"] += len(indicators)
        if not answer.found:
            self.counts["not_found"] += 1

    def _book_next_call(self, connection: Connection) -> None:
        """Book the call of the next group in ``connection``'s transaction when it will need one.

        A sequential run on SQLite finds in ``_uncached`` which groups have no
        cache row. Booking the next group's call with the answer just stored
        saves a transaction per call. When the minute window is full, the
        allowance is spent or a call limit is near, nothing is booked here and
        ``fetch`` books as usual.
        """
        group = self._next_group
        if group is None or (group.kind, group.identifier) not in self._uncached:
            return
        if self.ctx.stop.is_set():
            return
        if self.max_calls is not None and self.counts["calls"] + 1 >= self.max_calls:
            return
        try:
            stamp = self.ledger.book_if_free(connection)
        except QuotaExhaustedError:
            return
        if stamp is not None:
            self._booked_for = (group, stamp)

    def _release_unused_booking(self) -> None:
        """Take back a call booked for a group that the run did not reach."""
        if self._booked_for is not None:
            _, stamp = self._booked_for
            self._booked_for = None
            self.ledger.release(stamp)

    def _record_permanent_error(
        self, connection: Connection, group: Group, exc: PermanentApiError
    ) -> None:
        now = self.ctx.clock.now()
        ids = [indicator.id for indicator in self._claim(connection, group, now)]
        if ids:
            table = Indicator.__table__
            connection.execute(update(table).where(table.c.id.in_(ids)).values(
                reason=f"VirusTotal rejected the lookup: {exc}",
                next_lookup_at=now + PERMANENT_ERROR_RETRY))
        self.counts["errors"] += 1
        log_event(logger, logging.WARNING, "VirusTotal rejected a lookup",
                  identifier=escape(group.identifier), indicator_ids=list(group.indicator_ids),
                  status=exc.status, error=escape(exc))

    # -- the run -----------------------------------------------------------

    def run(self) -> dict[str, int]:
        try:
            # A quota that VirusTotal reported spent stops the run before any request.
            self.ledger.check_persisted_block()
        except QuotaExhaustedError as exc:
            self._wait_or_raise(exc)
        else:
            self.read_limits()
        concurrency = max(1, int(self.ctx.settings.vt_concurrency))
        executor = ThreadPoolExecutor(
            concurrency, initializer=bind_run_context, initargs=(current_run_context(),),
        ) if concurrency > 1 else None
        # Only indicators due when the run started, or when it last waited for a quota
        # reset, are selected, so a response whose TTL ends during the run is not
        # fetched again by the same run.
        due_at = self.ctx.clock.now()
        try:
            while not self.ctx.stop.is_set():
                try:
                    self.ledger.check_blocked()
                except QuotaExhaustedError as exc:
                    self._wait_or_raise(exc)
                    due_at = self.ctx.clock.now()
                    continue
                with self.ctx.sessions() as session:
                    groups = due_groups(session, due_at, BATCH_IDENTIFIERS)
                    if is_sqlite(self.ctx.engine):
                        # One query for the batch replaces a cache read per identifier
                        # that was never cached.
                        self._uncached = uncached_pairs(
                            session, {(group.kind, group.identifier) for group in groups})
                if not groups:
                    return self.counts
                if self.max_calls is not None and self.counts["calls"] >= self.max_calls:
                    return self.counts
                try:
                    processed = self._run_batch(groups, executor)
                except QuotaExhaustedError as exc:
                    self._wait_or_raise(exc)
                    due_at = self.ctx.clock.now()
                    continue
                if processed == 0:
                    # Other workers hold every due identifier. Querying again at
                    # once would spin until they finish, so this run ends here.
                    return self.counts
            return self.counts
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _run_batch(self, groups: list[Group], executor: ThreadPoolExecutor | None) -> int:
        """Process ``groups`` and return how many of them no other worker had locked."""
        processed = 0
        if executor is None:
            sequential_sqlite = is_sqlite(self.ctx.engine)
            if sequential_sqlite and self._connection is None:
                self._connection = self.ctx.engine.connect()
            try:
                for position, group in enumerate(groups):
                    if self.ctx.stop.is_set():
                        return processed
                    if self.max_calls is not None and self.counts["calls"] >= self.max_calls:
                        return processed
                    following = position + 1 < len(groups) and sequential_sqlite
                    self._next_group = groups[position + 1] if following else None
                    processed += self.process(group)
                    self._report_progress()
                return processed
            finally:
                self._next_group = None
                self._release_unused_booking()
        for done in executor.map(self.process, groups):
            processed += done
            self._report_progress()
        return processed

    def _report_progress(self) -> None:
        self._emit("progress")


def lookup(ctx: StageContext, *, wait: bool = False, max_calls: int | None = None) -> dict[str, int]:
    """Run the lookup stage; return its counts.

    Raises QuotaExhaustedError (exit 75) when the hourly, daily or monthly quota is
    spent, unless ``wait`` is set, in which case it sleeps until the reset.
    """
    with stage_lock(ctx, "lookup", exclusive_on_postgres=False):
        stage = Lookup(ctx, wait=wait, max_calls=max_calls)
        with recorded_run(ctx, "lookup", stage.counts):
            try:
                return stage.run()
            except TemporaryStop as exc:
                exc.counts = dict(stage.counts)
                raise
