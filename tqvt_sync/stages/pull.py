"""The pull stage: read indicators from ThreatQ into the local queue.

Each page of indicators is stored in the same transaction as the cursor that
follows it, so a crash repeats at most one page and never skips one.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from tqvt_sync.db.models import Cursor, Indicator
from tqvt_sync.errors import ConfigError, PermanentApiError
from tqvt_sync.logs import escape, log_event
from tqvt_sync.stages.common import StageContext, recorded_run, stage_lock
from tqvt_sync.virustotal.attributes import ATTRIBUTE_NAMES
from tqvt_sync.virustotal.identifiers import normalize

logger = logging.getLogger(__name__)

TQ_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# The zero-padded form of TQ_TIME_FORMAT, which datetime.fromisoformat parses
# to the same value as strptime, several times faster.
_PADDED_TQ_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
VALUES_BATCH = 100
# The largest page requested from ThreatQ; TQVT_PAGE_SIZE accepts at most this.
MAX_PAGE_SIZE = 500
# Ids per query when the stored rows of a page are read; well below SQLite's
# limit of bound parameters.
LOAD_CHUNK = 500
UPDATED_SINCE = "updated_since"
OWNED_NAMES = frozenset(ATTRIBUTE_NAMES)


@dataclass
class PullOptions:
    """Pull source selection: the updated-since scan (default), a collection or a values file."""

    since: datetime | None = None
    collection: str | None = None
    values_file: str | None = None
    types: tuple[str, ...] = ()
    # Ignore the stored updated-since cursor and start at ``since``; the first
    # committed page replaces the cursor.
    restart: bool = False


def parse_tq_time(value: Any) -> datetime | None:
    """Parse a ThreatQ ``YYYY-MM-DD HH:MM:SS`` timestamp, read as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        text = value[:19]
        if _PADDED_TQ_TIME.fullmatch(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        return datetime.strptime(text, TQ_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def format_tq_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TQ_TIME_FORMAT)


def _type_name(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if isinstance(kind, dict):
        return str(kind.get("name") or "")
    return str(kind or item.get("type_name") or "")


def _score(item: dict[str, Any]) -> float | None:
    score = item.get("score")
    if isinstance(score, dict):
        manual, generated = score.get("manual_score"), score.get("generated_score")
        score = manual if manual is not None else generated
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    return float(score)


def _carries_vt_names(item: dict[str, Any]) -> bool:
    attributes = item.get("attributes") or []
    return any(isinstance(a, dict) and a.get("name") in OWNED_NAMES for a in attributes)


class _NewIndicator(SimpleNamespace):
    """The columns of an indicator row that ``_store_page`` inserts with its page in bulk."""


def upsert_indicator(
    session: Session, ctx: StageContext, item: dict[str, Any], now: datetime,
    known: dict[int, Indicator | _NewIndicator] | None = None,
) -> str | None:
    """Store one indicator from ThreatQ; return None when it was stored, else why not.

    ``known`` maps ids to their stored rows, as ``load_stored`` returns them for a
    whole page. A new indicator then goes into ``known`` as a _NewIndicator, which
    the caller inserts. Without ``known``, the row is read with one query and a new
    row is added to the session.
    """
    indicator_id, value = item.get("id"), item.get("value")
    if isinstance(indicator_id, bool) or not isinstance(indicator_id, int):
        return f"missing or non-integer id {escape(indicator_id)}"
    if not isinstance(value, str):
        return f"indicator {indicator_id} has no string value"
    type_name = _type_name(item)
    settings = ctx.settings
    result = normalize(
        type_name, value, type_map=settings.types, lookup_private_ips=settings.lookup_private_ips,
    )
    row: Indicator | _NewIndicator | None
    row = session.get(Indicator, indicator_id) if known is None else known.get(indicator_id)
    if row is None and known is None:
        row = Indicator(id=indicator_id, next_lookup_at=None)
        session.add(row)
    elif row is None:
        row = _NewIndicator(id=indicator_id, next_lookup_at=None, looked_up_at=None)
        known[indicator_id] = row  # type: ignore[index]
    elif row.kind == result.kind and row.identifier == result.identifier and (
        row.status not in ("invalid", "unsupported", "skipped") or row.status == result.status
    ):
        _refresh(row, item, type_name, value, now)
        return None
    row.kind, row.identifier = result.kind, result.identifier
    row.status = "pending" if result.status == "ok" else result.status
    row.reason = result.reason
    row.next_lookup_at = None
    _refresh(row, item, type_name, value, now)
    return None


def _refresh(
    row: Indicator | _NewIndicator, item: dict[str, Any], type_name: str, value: str,
    now: datetime,
) -> None:
    row.value, row.type_name = value, type_name
    row.tq_score = _score(item)
    row.tq_updated_at = parse_tq_time(item.get("updated_at"))
    row.pulled_at = now
    row.carries_vt_names = _carries_vt_names(item)


def _load_cursor(session: Session, name: str, now: datetime) -> Cursor:
    cursor = session.get(Cursor, name)
    if cursor is None:
        cursor = Cursor(name=name, value=None, updated_at=now)
        session.add(cursor)
        session.flush()
    return cursor


def _type_criteria(types: tuple[str, ...]) -> dict[str, Any] | None:
    if not types:
        return None
    return {"+or": [{"type_name": name} for name in types]}


def pull(ctx: StageContext, options: PullOptions) -> dict[str, int]:
    """Run the pull stage with ``options``; return its counts."""
    if sum(x is not None for x in (options.collection, options.values_file)) > 1:
        raise ConfigError("Use either --collection or --values-file, not both.")
    if options.restart and (options.collection is not None or options.values_file is not None):
        raise ConfigError("--restart applies to the updated-since pull, not to --collection "
                          "or --values-file, which are walked completely on every run.")
    counts = {"pages": 0, "indicators": 0, "rejected": 0, "not_in_threatq": 0}
    with stage_lock(ctx, "pull", exclusive_on_postgres=True), recorded_run(ctx, "pull", counts) as run_id:
        client = ctx.threatq()
        if options.collection is not None:
            _pull_collection(ctx, client, options, counts, run_id)
        elif options.values_file is not None:
            _pull_values(ctx, client, options, counts, run_id)
        else:
            _pull_updated_since(ctx, client, options, counts, run_id)
    return counts


def load_stored(
    session: Session, items: list[dict[str, Any]]
) -> dict[int, Indicator | _NewIndicator]:
    """Return the stored rows of the indicators in ``items`` by id, read with few queries.

    One query per page replaces one per indicator, and no query runs between the
    rows that a page adds, so the session inserts them in one batch.
    """
    ids = sorted({_id(item) for item in items} - {-1})
    known: dict[int, Indicator | _NewIndicator] = {}
    for start in range(0, len(ids), LOAD_CHUNK):
        chunk = ids[start:start + LOAD_CHUNK]
        rows = session.execute(select(Indicator).where(Indicator.id.in_(chunk))).scalars()
        known.update((row.id, row) for row in rows)
    return known


def _store_page(
    ctx: StageContext, session: Session, items: list[dict[str, Any]], counts: dict[str, int]
) -> None:
    now = ctx.clock.now()
    known = load_stored(session, items)
    for item in items:
        problem = upsert_indicator(session, ctx, item, now, known)
        if problem is None:
            counts["indicators"] += 1
        else:
            counts["rejected"] += 1
            log_event(logger, logging.WARNING, "indicator rejected", reason=problem)
    # One executemany for the new rows costs a fraction of the session's unit of work.
    added = [vars(row) for row in known.values() if isinstance(row, _NewIndicator)]
    if added:
        session.execute(insert(Indicator), added)
    counts["pages"] += 1


def _cursor_name(base: str, types: tuple[str, ...]) -> str:
    return base if not types else f"{base}:{','.join(sorted(types))}"


def _pull_updated_since(
    ctx: StageContext, client: Any, options: PullOptions, counts: dict[str, int], run_id: str
) -> None:
    """Walk indicators by (updated_at, id) from the cursor up to the run's signpost.

    The cursor contains the (updated_at, id) of the last indicator stored and how
    many stored indicators share that updated_at (``ties``). The next query
    asks for updated_at >= the cursor time, sorted by (updated_at, id), with an
    offset of ties - 1, so its first item must be the cursor's own indicator.
    When it is not, an indicator of that second changed since the cursor was
    stored and the offset is no longer exact; the rest of that second is then
    read by id (``id > cursor id``), which neither repeats nor drops one.
    """
    name = _cursor_name(UPDATED_SINCE, options.types)
    signpost = ctx.clock.now()
    with ctx.sessions.begin() as session:
        stored = dict(_load_cursor(session, name, signpost).value or {})
    # --restart ignores the stored cursor. The first committed page replaces it, so
    # a run that fails before then leaves it as it was.
    position = {} if options.restart else stored
    if options.restart and stored:
        log_event(logger, logging.WARNING, "stored cursor ignored because of --restart",
                  cursor=name, updated_at=stored.get("updated_at"))
    if not position:
        start = options.since or signpost - timedelta(hours=24)
        position = {"updated_at": format_tq_time(start), "id": 0, "ties": 0}
    elif options.since is not None:
        log_event(logger, logging.WARNING, "--since ignored: the cursor already exists",
                  cursor=name, updated_at=position.get("updated_at"))
    criteria = _type_criteria(options.types)
    # The next page is fetched in another thread while the current one is
    # committed, so the network wait and the database work overlap. The cursor
    # still moves only with a committed page.
    prefetched: _Prefetch | None = None
    while not ctx.stop.is_set():
        try:
            if prefetched is not None:
                page, items = prefetched.result()
            else:
                page, items = _next_page(ctx, client, criteria, position)
        except PermanentApiError as exc:
            if counts["pages"] == 0 and exc.status == 400:
                log_event(logger, logging.WARNING,
                          "updated_at filter rejected; scanning by sort", status=exc.status)
                _pull_descending(ctx, client, options, counts, run_id, name, signpost)
                return
            raise
        prefetched = None
        if page is None:
            _drain_boundary_second(ctx, client, criteria, position, counts, run_id, name,
                                   signpost)
            continue
        taken = _take_until_signpost(items, position, signpost)
        last = len(page.items) < _page_limit(ctx, position) or len(taken) < len(items)
        if not last:
            following = dict(position)
            for item in taken:
                _advance(following, item)
            prefetched = _Prefetch(_next_page, ctx, client, criteria, following)
        _commit_page(ctx, taken, position, counts, run_id, name, signpost)
        if last:
            return
    if prefetched is not None:
        # A stop request ends the run after the request in flight, whose page is dropped.
        prefetched.wait()


class _Prefetch:
    """One call of ``function`` in a daemon thread, so an interrupted process need not wait.

    The call runs in a copy of the caller's context, so its log lines carry the
    run's fields.
    """

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self._outcome: tuple[Any, BaseException | None] = (None, None)
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._run, args=(function, args),
                                        name="tqvt-pull-fetch", daemon=True)
        self._thread.start()

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._outcome = (self._context.run(function, *args), None)
        except BaseException as exc:  # handed to the caller of result()
            self._outcome = (None, exc)

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        """Return what the call returned, or raise what it raised."""
        self._thread.join()
        value, error = self._outcome
        if error is not None:
            raise error
        return value


def _page_limit(ctx: StageContext, position: dict[str, Any]) -> int:
    """Return the number of indicators to request for the page after ``position``.

    A page after a stored indicator starts with that indicator again for the
    boundary check, so one more is requested to leave room for page_size new
    ones. Without it a page size of 1 would never get past the boundary.
    """
    size = int(ctx.settings.page_size)
    return size + 1 if position.get("ties", 0) and size < MAX_PAGE_SIZE else size


def _next_page(
    ctx: StageContext, client: Any, criteria: dict[str, Any] | None, position: dict[str, Any]
) -> tuple[Any, list[dict[str, Any]]]:
    """Fetch the page after ``position``; return (None, []) when the boundary check fails."""
    ties = int(position.get("ties", 0))
    page = client.fetch_indicator_page(
        criteria, {"updated_at": {"+gte": position["updated_at"]}}, sort="updated_at,id",
        limit=_page_limit(ctx, position), offset=max(ties - 1, 0),
    )
    if ties == 0:
        return page, list(page.items)
    first = page.items[0] if page.items else None
    if first is not None and _id(first) == position["id"] \
            and str(first.get("updated_at"))[:19] == position["updated_at"]:
        return page, list(page.items[1:])
    return None, []


def _drain_boundary_second(
    ctx: StageContext, client: Any, criteria: dict[str, Any] | None, position: dict[str, Any],
    counts: dict[str, int], run_id: str, name: str, signpost: datetime,
) -> None:
    """Read the rest of the cursor's second by id, then move the cursor past that second."""
    stamp = position["updated_at"]
    log_event(logger, logging.INFO, "cursor second changed; reading it by id", updated_at=stamp)
    while not ctx.stop.is_set():
        filters = {"updated_at": {"+gte": stamp, "+lte": stamp}, "id": {"+gt": position["id"]}}
        page = client.fetch_indicator_page(criteria, filters, sort="id",
                                           limit=ctx.settings.page_size, offset=0)
        taken = _take_until_signpost(page.items, position, signpost)
        _commit_page(ctx, taken, position, counts, run_id, name, signpost)
        if len(page.items) < ctx.settings.page_size:
            break
    # Every indicator of that second is stored now; the next query starts after it.
    position["ties"] = 0
    position["updated_at"] = format_tq_time(parse_tq_time(stamp) + timedelta(seconds=1))
    position["id"] = 0
    _commit_page(ctx, [], position, counts, run_id, name, signpost)


def _commit_page(
    ctx: StageContext, items: list[dict[str, Any]], position: dict[str, Any],
    counts: dict[str, int], run_id: str, name: str, signpost: datetime,
) -> None:
    """Store ``items`` and the cursor after them in one transaction."""
    with ctx.sessions.begin() as session:
        if items:
            _store_page(ctx, session, items, counts)
        for item in items:
            _advance(position, item)
        cursor = _load_cursor(session, name, signpost)
        cursor.value, cursor.signpost = dict(position), signpost
        cursor.run_id, cursor.updated_at = run_id, ctx.clock.now()


def _take_until_signpost(
    items: list[dict[str, Any]], position: dict[str, Any], signpost: datetime
) -> list[dict[str, Any]]:
    """Return the leading items older than the signpost's second.

    Indicators stamped in the signpost's own second may still be changing, so
    they are left for the next run; every earlier second is then complete and
    the tie count in the cursor stays exact.
    """
    taken = []
    limit = format_tq_time(signpost)
    for item in items:
        stamp = item.get("updated_at")
        if not isinstance(stamp, str) or parse_tq_time(stamp) is None:
            continue
        if stamp[:19] >= limit:
            break
        taken.append(item)
    return taken


def _id(item: dict[str, Any]) -> int:
    value = item.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _advance(position: dict[str, Any], item: dict[str, Any]) -> None:
    stamp = str(item.get("updated_at"))[:19]
    if stamp == position["updated_at"]:
        position["ties"] += 1
    else:
        position["updated_at"], position["ties"] = stamp, 1
    position["id"] = _id(item)


def _pull_descending(
    ctx: StageContext, client: Any, options: PullOptions, counts: dict[str, int], run_id: str,
    name: str, signpost: datetime,
) -> None:
    """Fallback scan sorted by -updated_at, for instances that reject the updated_at filter.

    Pages are stored as they arrive with the offset as the page token; the
    cursor moves to the newest time seen only when the scan reaches it.
    """
    with ctx.sessions.begin() as session:
        cursor = _load_cursor(session, name, signpost)
        stored = {} if options.restart else (cursor.value or {})
        floor = stored.get("updated_at") or format_tq_time(
            options.since or signpost - timedelta(hours=24))
        offset = 0 if options.restart else int(cursor.page_token or 0)
        newest = stored.get("scan_newest") or floor
    limit = format_tq_time(signpost)
    criteria = _type_criteria(options.types)
    while not ctx.stop.is_set():
        page = client.fetch_indicator_page(
            criteria, None, sort="-updated_at,-id", limit=ctx.settings.page_size, offset=offset,
        )
        items = [i for i in page.items if str(i.get("updated_at"))[:19] <= limit]
        fresh = [i for i in items if str(i.get("updated_at"))[:19] >= floor]
        done = len(page.items) < ctx.settings.page_size or len(fresh) < len(items)
        offset += len(page.items)
        with ctx.sessions.begin() as session:
            _store_page(ctx, session, fresh, counts)
            for item in fresh:
                newest = max(newest, str(item.get("updated_at"))[:19])
            cursor = _load_cursor(session, name, signpost)
            cursor.run_id, cursor.updated_at = run_id, ctx.clock.now()
            if done:
                cursor.value = {"updated_at": newest, "id": 0, "ties": 0}
                cursor.page_token = None
            else:
                cursor.value = {"updated_at": floor, "id": 0, "ties": 0, "scan_newest": newest}
                cursor.page_token = str(offset)
        if done:
            return


def _pull_collection(
    ctx: StageContext, client: Any, options: PullOptions, counts: dict[str, int], run_id: str
) -> None:
    """Walk a Data Collection to its end with cursorMark paging, resumable mid-walk."""
    assert options.collection is not None
    name = _cursor_name(f"collection:{options.collection}", options.types)
    now = ctx.clock.now()
    with ctx.sessions.begin() as session:
        cursor = _load_cursor(session, name, now)
        mark = cursor.page_token or "*"
    wanted = set(options.types)
    while not ctx.stop.is_set():
        page = client.fetch_collection_page(options.collection, mark, limit=ctx.settings.page_size)
        items = [i for i in page.items if not wanted or _type_name(i) in wanted]
        next_mark = page.next_cursor_mark
        finished = not page.items or not next_mark or next_mark == mark
        with ctx.sessions.begin() as session:
            _store_page(ctx, session, items, counts)
            cursor = _load_cursor(session, name, now)
            cursor.run_id, cursor.updated_at = run_id, ctx.clock.now()
            cursor.page_token = None if finished else next_mark
            if finished:
                cursor.value = {"completed_at": ctx.clock.now().isoformat()}
        if finished:
            return
        mark = next_mark


def read_values_file(path: str) -> list[str]:
    """Read a watchlist: one value per line, blank lines and ``#`` comments ignored."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"Values file {path!r} does not exist; check --values-file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Values file {path!r} is not UTF-8 text; save it as UTF-8.") from None
    values = []
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            values.append(stripped)
    return list(dict.fromkeys(values))


def _pull_values(
    ctx: StageContext, client: Any, options: PullOptions, counts: dict[str, int], run_id: str
) -> None:
    """Resolve watchlist values in batches of one ``+or`` query each; never create indicators."""
    assert options.values_file is not None
    values = read_values_file(options.values_file)
    digest = hashlib.sha256(os.path.abspath(options.values_file).encode()).hexdigest()[:16]
    name = _cursor_name(f"values:{digest}", options.types)
    now = ctx.clock.now()
    with ctx.sessions.begin() as session:
        cursor = _load_cursor(session, name, now)
        start = int(cursor.page_token or 0)
    type_filter = _type_criteria(options.types)
    for index in range(start, len(values), VALUES_BATCH):
        if ctx.stop.is_set():
            return
        batch = values[index:index + VALUES_BATCH]
        criteria: dict[str, Any] = {"+or": [{"value": value} for value in batch]}
        if type_filter:
            criteria = {"+and": [criteria, type_filter]}
        items = _all_pages(ctx, client, criteria)
        found = {str(item.get("value")) for item in items}
        missing = [value for value in batch if value not in found]
        counts["not_in_threatq"] += len(missing)
        for value in missing[:20]:
            log_event(logger, logging.WARNING, "value not in ThreatQ", value=escape(value))
        with ctx.sessions.begin() as session:
            _store_page(ctx, session, items, counts)
            cursor = _load_cursor(session, name, now)
            finished = index + VALUES_BATCH >= len(values)
            cursor.page_token = None if finished else str(index + VALUES_BATCH)
            cursor.run_id, cursor.updated_at = run_id, ctx.clock.now()
            if finished:
                cursor.value = {"completed_at": ctx.clock.now().isoformat(), "values": len(values)}


def _all_pages(ctx: StageContext, client: Any, criteria: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    offset, size = 0, ctx.settings.page_size
    while True:
        page = client.fetch_indicator_page(criteria, None, sort="id", limit=size, offset=offset)
        items.extend(page.items)
        if len(page.items) < size:
            return items
        offset += size


def stored_cursors(session: Session) -> list[Cursor]:
    return list(session.execute(select(Cursor).order_by(Cursor.name)).scalars())
