"""The VirusTotal response cache: one row per object, aliases for every identifier used."""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, true, update
from sqlalchemy.orm import Session

from tqvt_sync.db.engine import CACHE_OBJECT_LOCK, wait_for_transaction_lock
from tqvt_sync.db.models import VtAlias, VtObject

_OBJECTS = VtObject.__table__
_ALIASES = VtAlias.__table__
_OBJECT_ID = select(_OBJECTS.c.id).where(
    _OBJECTS.c.kind == bindparam("kind"), _OBJECTS.c.object_key == bindparam("key"))
_INSERT_OBJECT = insert(_OBJECTS)
# The SET clause names the columns of the parameters given at execution.
_UPDATE_OBJECT = update(_OBJECTS).where(_OBJECTS.c.id == bindparam("row_id"))
_ALIAS_TARGET = select(_ALIASES.c.object_id).where(
    _ALIASES.c.kind == bindparam("kind"), _ALIASES.c.identifier == bindparam("identifier"))
_INSERT_ALIAS = insert(_ALIASES)
_UPDATE_ALIAS = update(_ALIASES).where(
    _ALIASES.c.kind == bindparam("alias_kind"),
    _ALIASES.c.identifier == bindparam("alias_identifier"))


def pack_summary(summary: dict[str, Any] | None) -> bytes | None:
    if summary is None:
        return None
    text = json.dumps(summary, separators=(",", ":"), sort_keys=True)
    return zlib.compress(text.encode("utf-8"), 9)


def unpack_summary(blob: bytes | None) -> dict[str, Any] | None:
    if blob is None:
        return None
    return json.loads(zlib.decompress(blob).decode("utf-8"))


def find_object(session: Session, kind: str, identifier: str) -> VtObject | None:
    """Return the cached object that ``identifier`` resolves to, fresh or not."""
    alias = session.get(VtAlias, (kind, identifier))
    if alias is not None:
        return session.get(VtObject, alias.object_id)
    return session.execute(
        select(VtObject).where(VtObject.kind == kind, VtObject.object_key == identifier)
    ).scalar_one_or_none()


def uncached_pairs(session: Session, pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Return the (kind, identifier) pairs that ``find_object`` would find no row for.

    Reads the aliases and the object keys of all ``pairs`` with two queries per
    500 identifiers.
    """
    identifiers = sorted({identifier for _, identifier in pairs})
    present: set[tuple[str, str]] = set()
    for start in range(0, len(identifiers), 500):
        chunk = identifiers[start:start + 500]
        aliases = session.execute(
            select(VtAlias.kind, VtAlias.identifier).where(VtAlias.identifier.in_(chunk)))
        present.update((kind, identifier) for kind, identifier in aliases)
        objects = session.execute(
            select(VtObject.kind, VtObject.object_key).where(VtObject.object_key.in_(chunk)))
        present.update((kind, key) for kind, key in objects)
    return pairs - present


def find_fresh(session: Session, kind: str, identifier: str, now: datetime) -> VtObject | None:
    """Return the cached object for ``identifier`` when its TTL has not run out."""
    row = find_object(session, kind, identifier)
    if row is not None and row.expires_at > now:
        return row
    return None


@functools.cache
def _upserts(dialect_name: str) -> tuple[Any, Any] | None:
    """Return the INSERT ... ON CONFLICT statements for a cache object and an alias.

    The object statement returns the row's id whether it inserted or updated.
    Dialects without ON CONFLICT get None, and ``store_answer`` reads before it writes.
    """
    if dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        return None
    upsert_object = dialect_insert(_OBJECTS)
    upsert_object = upsert_object.on_conflict_do_update(
        index_elements=[_OBJECTS.c.kind, _OBJECTS.c.object_key],
        set_={name: upsert_object.excluded[name]
              for name in ("found", "summary", "fetched_at", "expires_at")},
    ).returning(_OBJECTS.c.id)
    upsert_alias = dialect_insert(_ALIASES)
    upsert_alias = upsert_alias.on_conflict_do_update(
        index_elements=[_ALIASES.c.kind, _ALIASES.c.identifier],
        set_={"object_id": upsert_alias.excluded.object_id},
    )
    return upsert_object, upsert_alias


@dataclass(frozen=True)
class StoredAnswer:
    """The cache row that ``store_answer`` wrote."""

    id: int
    kind: str
    object_key: str
    found: bool
    expires_at: datetime
    # Every identifier that now resolves to the row.
    aliases: tuple[str, ...] = ()


def store_answer(
    connection: Connection,
    *,
    kind: str,
    identifier: str,
    summary: dict[str, Any] | None,
    now: datetime,
    ttl: timedelta,
    other_identifiers: Iterable[str] = (),
) -> StoredAnswer:
    """Store a VirusTotal answer (``summary`` None for not found) and alias ``identifier`` to it.

    A found object is keyed by its ``data.id``, so two identifiers that
    VirusTotal resolves to one object (an MD5 and a SHA-256, two spellings of a
    URL) share one row. ``other_identifiers`` (a file's other hashes) become
    aliases too, so a later lookup by any of them is served from the cache. A lookup stores one answer per VirusTotal call, so the
    statements are built once and run on ``connection`` without the ORM: an upsert
    for the object and one for its aliases where the database supports ON CONFLICT
    with RETURNING, a read and a write for each otherwise.
    """
    key = str(summary["id"]) if summary is not None and summary.get("id") else identifier
    if connection.dialect.name != "sqlite":
        # Two workers can look up different identifiers of one object at once. The
        # second waits here until the first commits, then updates the first one's row
        # instead of inserting a duplicate key.
        wait_for_transaction_lock(connection, CACHE_OBJECT_LOCK, f"{kind}:{key}")
    values = {"found": summary is not None, "summary": pack_summary(summary),
              "fetched_at": now, "expires_at": now + ttl}
    keys = sorted({identifier, key, *other_identifiers})
    aliases = [{"kind": kind, "identifier": alias_key} for alias_key in keys]
    upserts = _upserts(connection.dialect.name) if connection.dialect.insert_returning else None
    if upserts is not None:
        upsert_object, upsert_alias = upserts
        object_id = connection.execute(
            upsert_object, {"kind": kind, "object_key": key, "hits": 0, **values}).scalar_one()
        connection.execute(upsert_alias, [{**alias, "object_id": object_id} for alias in aliases])
        return StoredAnswer(object_id, kind, key, summary is not None, values["expires_at"],
                            tuple(keys))
    object_id = connection.execute(_OBJECT_ID, {"kind": kind, "key": key}).scalar_one_or_none()
    if object_id is None:
        object_id = connection.execute(
            _INSERT_OBJECT, {"kind": kind, "object_key": key, "hits": 0, **values}
        ).inserted_primary_key[0]
    else:
        connection.execute(_UPDATE_OBJECT, {"row_id": object_id, **values})
    for alias in aliases:
        params = {**alias, "object_id": object_id}
        current = connection.execute(_ALIAS_TARGET, params).scalar_one_or_none()
        if current is None:
            connection.execute(_INSERT_ALIAS, params)
        elif current != object_id:
            connection.execute(_UPDATE_ALIAS, {"alias_kind": kind,
                                               "alias_identifier": alias["identifier"],
                                               "object_id": object_id})
    return StoredAnswer(object_id, kind, key, summary is not None, values["expires_at"],
                        tuple(keys))


def purge(session: Session, now: datetime, *, everything: bool = False) -> int:
    """Delete expired cache rows (every row with ``everything``); return how many."""
    condition = true() if everything else VtObject.expires_at <= now
    ids = list(session.execute(select(VtObject.id).where(condition)).scalars())
    if not ids:
        return 0
    session.execute(delete(VtAlias).where(VtAlias.object_id.in_(ids)))
    session.execute(delete(VtObject).where(VtObject.id.in_(ids)))
    return len(ids)
