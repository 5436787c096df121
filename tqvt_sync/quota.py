"""The persistent VirusTotal quota ledger and the local pacing rule.

VirusTotal sends no rate-limit headers, so every process that shares a state
database books each call in the ``quota_ledger`` row of its API key before the
call is sent. Booking happens in a short transaction that holds the row's write
lock (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL),
so no 60-second window ever contains more booked calls than the minute limit,
however many processes or threads book at once.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tqvt_sync.clock import Clock
from tqvt_sync.db.models import QuotaLedger
from tqvt_sync.errors import QuotaExhaustedError

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
# Booked calls leave the window this much later than 60 s, so latency between
# booking and arrival at VirusTotal cannot squeeze two windows into one.
WINDOW_MARGIN_SECONDS = 1.0
FALLBACK_MINUTE_LIMIT = 4
FALLBACK_DAILY_LIMIT = 500


@dataclass(frozen=True)
class QuotaLimits:
    """Limits of one API key and where they came from."""

    minute: int
    daily: int
    monthly: int | None
    source: str
    used_today: int | None = None
    used_month: int | None = None
    hourly: int | None = None
    used_hour: int | None = None


@dataclass(frozen=True)
class QuotaSnapshot:
    """The ledger row of one key as ``tqvt status`` shows it."""

    minute_limit: int
    daily_limit: int
    used_today: int
    reserve: int
    blocked_until: datetime | None
    calls_in_window: int


def key_hash(api_key: str) -> str:
    """Return the SHA-256 hex digest that identifies ``api_key`` in the ledger."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def next_midnight(moment: datetime) -> datetime:
    """Return the next 00:00 UTC after ``moment``."""
    day = moment.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def next_month_start(moment: datetime) -> datetime:
    """Return 00:00 UTC on the first day of the month after ``moment``."""
    moment = moment.astimezone(UTC)
    if moment.month == 12:
        return datetime(moment.year + 1, 1, 1, tzinfo=UTC)
    return datetime(moment.year, moment.month + 1, 1, tzinfo=UTC)


def limits_from_overall_quotas(data: dict[str, Any]) -> QuotaLimits:
    """Derive limits from the ``data`` of ``GET /users/{key}/overall_quotas``.

    VirusTotal reports hourly, daily and monthly allowances but no per-minute
    one, so the minute limit is the hourly allowance divided by 60 (240 an hour
    on a free key gives 4 a minute). When the key belongs to a group, the
    smaller of the user's and the group's remaining allowance applies.
    """

    def entry(name: str) -> tuple[int | None, int | None]:
        block = data.get(name) or {}
        user = block.get("user") or {}
        allowed, used = _as_int(user.get("allowed")), _as_int(user.get("used"))
        group = block.get("group") or {}
        group_allowed, group_used = _as_int(group.get("allowed")), _as_int(group.get("used"))
        if allowed is not None and group_allowed is not None and group_used is not None:
            spare = group_allowed - group_used
            if used is not None and spare < allowed - used:
                allowed = used + max(spare, 0)
        return allowed, used

    hourly, used_hour = entry("api_requests_hourly")
    daily, used_today = entry("api_requests_daily")
    monthly, used_month = entry("api_requests_monthly")
    minute = max(1, hourly // 60) if hourly is not None else FALLBACK_MINUTE_LIMIT
    return QuotaLimits(
        minute=minute,
        daily=daily if daily is not None else FALLBACK_DAILY_LIMIT,
        monthly=monthly,
        source="virustotal",
        used_today=used_today,
        used_month=used_month,
        hourly=hourly,
        used_hour=used_hour,
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


class _LedgerRow:
    """The columns of one ``quota_ledger`` row as attributes, with the changes made to them."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._loaded = dict(values)

    key_hash: str
    minute_limit: int
    daily_limit: int
    monthly_limit: int | None
    limits_source: str
    limits_read_at: datetime | None
    recent_calls: list[str]
    day: str
    used_today: int
    month: str
    used_month: int
    blocked_until: datetime | None
    blocked_scope: str | None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, value in self._loaded.items()
                if getattr(self, name) != value}


_LEDGER = QuotaLedger.__table__
_LOCK_ROW = select(_LEDGER).where(_LEDGER.c.key_hash == bindparam("key")).with_for_update()
# The SET clause names the columns of the parameters given at execution.
_UPDATE_ROW = update(_LEDGER).where(_LEDGER.c.key_hash == bindparam("key"))


class Ledger:
    """Books VirusTotal calls for one API key in the shared database."""

    def __init__(
        self, sessions: sessionmaker[Session], api_key: str, clock: Clock, *, reserve: int = 0
    ) -> None:
        self._sessions = sessions
        self._key_hash = key_hash(api_key)
        self._clock = clock
        self.reserve = reserve
        # The last reading of the ledger row, for the progress line.
        self.calls_left_today: int | None = None
        self.next_call_at: datetime | None = None

    def _select_for_update(self, connection: Connection) -> _LedgerRow | None:
        found = connection.execute(_LOCK_ROW, {"key": self._key_hash}).first()
        return _LedgerRow(found._asdict()) if found is not None else None

    @contextmanager
    def _locked_row(
        self, connection: Connection | None = None
    ) -> Iterator[tuple[_LedgerRow, datetime]]:
        """Lock this key's row, yield it with the time, and write back what changed.

        The row is locked in ``connection``'s transaction when one is given, else in
        a transaction of its own that commits on exit. The time is read once the
        lock is held, so a booking that waited for another process's transaction
        is stamped when it happens. A call is booked in every such transaction, so
        the statements are built once, at import, and run without the ORM.
        """
        if connection is None:
            with self._sessions.begin() as session:
                with self._locked_row(session.connection()) as locked:
                    yield locked
            return
        row = self._select_for_update(connection)
        now = self._clock.now()
        if row is None:
            row = self._insert(connection, now)
        self._roll_over(row, now)
        yield row, now
        changes = row.changes()
        if changes:
            connection.execute(_UPDATE_ROW, {"key": self._key_hash, **changes})

    def _insert(self, connection: Connection, now: datetime) -> _LedgerRow:
        """Create the row of this key, or lock the one another process inserted meanwhile.

        On PostgreSQL two workers that start together can both find no row. The
        second INSERT then waits for the first to commit and fails on the primary
        key, so that worker reads the committed row instead.
        """
        values = {
            "key_hash": self._key_hash,
            "minute_limit": FALLBACK_MINUTE_LIMIT,
            "daily_limit": FALLBACK_DAILY_LIMIT,
            "monthly_limit": None,
            "limits_source": "fallback",
            "limits_read_at": None,
            "recent_calls": [],
            "day": now.date().isoformat(),
            "used_today": 0,
            "month": now.strftime("%Y-%m"),
            "used_month": 0,
            "blocked_until": None,
            "blocked_scope": None,
        }
        try:
            with connection.begin_nested():
                connection.execute(insert(_LEDGER), values)
        except IntegrityError:
            existing = self._select_for_update(connection)
            if existing is None:
                raise
            return existing
        return _LedgerRow(values)

    @staticmethod
    def _roll_over(row: _LedgerRow, now: datetime) -> None:
        today, month = now.date().isoformat(), now.strftime("%Y-%m")
        if row.day != today:
            row.day, row.used_today = today, 0
        if row.month != month:
            row.month, row.used_month = month, 0
        if row.blocked_until is not None and now >= row.blocked_until:
            row.blocked_until, row.blocked_scope = None, None
        cutoff = _stamp(now - timedelta(seconds=WINDOW_SECONDS + WINDOW_MARGIN_SECONDS))
        recent = [stamp for stamp in row.recent_calls if stamp > cutoff]
        if recent != row.recent_calls:
            row.recent_calls = recent

    @staticmethod
    def _next_slot(row: _LedgerRow, now: datetime) -> datetime:
        """Return when the minute window has room for one more call (``now`` if it has)."""
        excess = len(row.recent_calls) - row.minute_limit
        if excess < 0:
            return now
        freeing = heapq.nsmallest(excess + 1, row.recent_calls)[-1]
        return datetime.fromisoformat(freeing) + timedelta(
            seconds=WINDOW_SECONDS + WINDOW_MARGIN_SECONDS)

    def _remember(self, row: _LedgerRow, now: datetime) -> None:
        self.calls_left_today = max(row.daily_limit - self.reserve - row.used_today, 0)
        self.next_call_at = row.blocked_until or self._next_slot(row, now)

    def apply_limits(self, limits: QuotaLimits) -> None:
        """Store ``limits``; counts VirusTotal reports as used raise the local counts."""
        with self._locked_row() as (row, now):
            row.minute_limit, row.daily_limit = limits.minute, limits.daily
            row.monthly_limit, row.limits_source = limits.monthly, limits.source
            row.limits_read_at = now
            if limits.used_today is not None and limits.used_today > row.used_today:
                row.used_today = limits.used_today
            if limits.used_month is not None and limits.used_month > row.used_month:
                row.used_month = limits.used_month
            self._remember(row, now)

    def check_blocked(self) -> None:
        """Raise QuotaExhaustedError when no call may be booked before a reset."""
        with self._locked_row() as (row, now):
            self._remember(row, now)
            self._raise_if_exhausted(row, now)

    def check_persisted_block(self) -> None:
        """Raise QuotaExhaustedError while a spent quota that VirusTotal reported blocks calls.

        Reads only the ledger, so a rerun before ``blocked_until`` sends nothing to VirusTotal.
        """
        with self._locked_row() as (row, now):
            if row.blocked_until is not None:
                raise _exhausted(row.blocked_scope or "daily", row.blocked_until)

    def _raise_if_exhausted(self, row: _LedgerRow, now: datetime) -> None:
        if row.blocked_until is not None:
            raise _exhausted(row.blocked_scope or "daily", row.blocked_until)
        if row.used_today >= max(row.daily_limit - self.reserve, 0):
            raise _exhausted("daily", next_midnight(now), reserve=self.reserve)
        if row.monthly_limit is not None and row.used_month >= row.monthly_limit:
            raise _exhausted("monthly", next_month_start(now))

    def try_book(self) -> float:
        """Book one call now and return 0, or return the seconds to wait for a free slot.

        Raises QuotaExhaustedError when the daily (minus the reserve) or monthly
        allowance is spent or VirusTotal reported it spent.
        """
        delay, _ = self._book_once(None)
        return delay

    def book_if_free(self, connection: Connection) -> str | None:
        """Book one call in ``connection``'s transaction if the minute window has room now.

        Returns the booking's stamp, which ``release`` takes, or None when the
        window is full. Raises QuotaExhaustedError as ``try_book`` does.
        """
        _, stamp = self._book_once(connection)
        return stamp

    def _book_once(self, connection: Connection | None) -> tuple[float, str | None]:
        """Return (0, stamp) after booking a call, or (seconds to wait, None)."""
        with self._locked_row(connection) as (row, now):
            self._remember(row, now)
            self._raise_if_exhausted(row, now)
            slot = self._next_slot(row, now)
            if slot > now:
                return max((slot - now).total_seconds(), 0.001), None
            stamp = _stamp(now)
            row.recent_calls = [*row.recent_calls, stamp]
            row.used_today += 1
            row.used_month += 1
            self._remember(row, now)
            return 0.0, stamp

    def release(self, stamp: str) -> None:
        """Take back the booking made at ``stamp`` for a call that was never sent.

        The caller releases each stamp at most once; the ledger cannot tell a repeated
        release apart. A booking older than the minute window still comes off the
        counts of its day and month.
        """
        with self._locked_row() as (row, now):
            if stamp in row.recent_calls:
                remaining = list(row.recent_calls)
                remaining.remove(stamp)
                row.recent_calls = remaining
            if stamp[:10] == row.day and row.used_today > 0:
                row.used_today -= 1
            if stamp[:7] == row.month and row.used_month > 0:
                row.used_month -= 1
            self._remember(row, now)

    def book(self, *, on_wait: Any = None, should_stop: Any = None) -> str | None:
        """Book one call, sleeping on the clock until the minute window has room.

        Sleeps in steps of at most one second and returns None without booking
        as soon as ``should_stop()`` is true; returns the booking's stamp, which
        ``release`` takes, once a call is booked.
        """
        while True:
            if should_stop is not None and should_stop():
                return None
            delay, stamp = self._book_once(None)
            if stamp is not None:
                return stamp
            if on_wait is not None:
                on_wait(delay)
            while delay > 0:
                if should_stop is not None and should_stop():
                    return None
                step = min(delay, 1.0)
                self._clock.sleep(step)
                delay -= step

    def block(self, scope: str, until: datetime) -> None:
        """Persist that VirusTotal reported the ``scope`` quota spent until ``until``."""
        with self._locked_row() as (row, now):
            row.blocked_until, row.blocked_scope = until, scope
            if scope == "daily":
                row.used_today = max(row.used_today, row.daily_limit)
        logger.warning("VirusTotal %s quota spent; no call before %s", scope, until.isoformat())

    def snapshot(self) -> QuotaSnapshot:
        with self._locked_row() as (row, now):
            return QuotaSnapshot(
                minute_limit=row.minute_limit,
                daily_limit=row.daily_limit,
                used_today=row.used_today,
                reserve=self.reserve,
                blocked_until=row.blocked_until,
                calls_in_window=len(row.recent_calls),
            )

    def remaining_today(self) -> int:
        snap = self.snapshot()
        return max(snap.daily_limit - snap.reserve - snap.used_today, 0)


def _stamp(moment: datetime) -> str:
    """Return the text form of a booking time in ``recent_calls``: UTC, with microseconds.

    Every stamp is UTC, so text order is time order (a stamp from an older version,
    written without microseconds, sorts just before the same time with them). The
    window is therefore pruned and searched by comparing text, not by parsing every
    stamp on every booking.
    """
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _exhausted(scope: str, until: datetime, *, reserve: int = 0) -> QuotaExhaustedError:
    local = until.astimezone().strftime("%Y-%m-%d %H:%M %Z")
    detail = f" (keeping a reserve of {reserve} calls)" if reserve else ""
    message = (
        f"The VirusTotal {scope} quota is spent{detail}; nothing is lost, and a rerun after "
        f"{until.strftime('%Y-%m-%d %H:%M')} UTC ({local} local time) carries on."
    )
    return QuotaExhaustedError(message, blocked_until=until, scope=scope)
