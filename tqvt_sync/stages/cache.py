"""The VirusTotal response cache: one row per object, aliases for every identifier used."""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, true
from sqlalchemy.orm import Session

from tqvt_sync.db.engine import CACHE_OBJECT_LOCK, wait_for_transaction_lock
from tqvt_sync.db.models import VtAlias, VtObject


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


def store_answer(
    session: Session,
    *,
    kind: str,
    identifier: str,
    summary: dict[str, Any] | None,
    now: datetime,
    ttl: timedelta,
) -> VtObject:
    """Store a VirusTotal answer (``summary`` None for not found) and alias ``identifier`` to it.

    A found object is keyed by its ``data.id``, so two identifiers that
    VirusTotal resolves to one object (an MD5 and a SHA-256, two spellings of a
    URL) share one row.
    """
    key = str(summary["id"]) if summary is not None and summary.get("id") else identifier
    if session.get_bind().dialect.name != "sqlite":
        # Two workers can look up different identifiers of one object at once. The
        # second waits here until the first commits, then updates the first one's row
        # instead of inserting a duplicate key.
        wait_for_transaction_lock(session, CACHE_OBJECT_LOCK, f"{kind}:{key}")
    row = session.execute(
        select(VtObject).where(VtObject.kind == kind, VtObject.object_key == key)
    ).scalar_one_or_none()
    if row is None:
        row = VtObject(kind=kind, object_key=key, hits=0)
        session.add(row)
    row.found = summary is not None
    row.summary = pack_summary(summary)
    row.fetched_at, row.expires_at = now, now + ttl
    session.flush()
    for alias_key in {identifier, key}:
        alias = session.get(VtAlias, (kind, alias_key))
        if alias is None:
            session.add(VtAlias(kind=kind, identifier=alias_key, object_id=row.id))
        else:
            alias.object_id = row.id
    return row


def purge(session: Session, now: datetime, *, everything: bool = False) -> int:
    """Delete expired cache rows (every row with ``everything``); return how many."""
    condition = true() if everything else VtObject.expires_at <= now
    ids = list(session.execute(select(VtObject.id).where(condition)).scalars())
    if not ids:
        return 0
    session.execute(delete(VtAlias).where(VtAlias.object_id.in_(ids)))
    session.execute(delete(VtObject).where(VtObject.id.in_(ids)))
    return len(ids)
