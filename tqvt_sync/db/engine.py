"""Engine and session set-up for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tqvt_sync.errors import ConfigError, ServiceUnavailableError, StateError

BUSY_TIMEOUT_MS = 30_000
# First key of the two-integer PostgreSQL advisory locks tqvt takes per transaction.
# PostgreSQL keeps two-integer keys apart from single bigint keys (pg_locks shows
# objsubid 2 and 1, PostgreSQL 15 documentation), so these cannot collide with the
# stage and push-worker locks, which use bigint keys.
LOOKUP_IDENTIFIER_LOCK = 0x74717601
CACHE_OBJECT_LOCK = 0x74717602


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(url: str) -> str | None:
    """Return the file path of a SQLite URL, or None for memory or other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.abspath(parsed.database)


def _create_private_file(path: str) -> None:
    """Create the database file and its WAL companions with mode 0600, whatever the umask."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    for name in (path, path + "-wal", path + "-shm"):
        if name != path and not os.path.exists(path):
            continue
        fd = os.open(name, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(name, 0o600)


def _install_sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is switched off so that the
        # "begin" hook below decides how every transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock at the start, so two writers
        # queue on busy_timeout instead of failing mid-transaction with
        # "database is locked" when a read lock cannot be upgraded.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create an engine for ``url``; SQLite files are created private (mode 0600).

    An in-memory SQLite database is rejected: its state would vanish with the
    process, and every run would pull and spend VirusTotal calls again.
    """
    if url.strip() in ("sqlite://", "sqlite:///:memory:") or url.strip().startswith(
            "sqlite:///:memory:?"):
        raise ConfigError(
            f"TQVT_DB={url} is an in-memory database, which keeps nothing between runs; "
            "set it to a file path such as ~/.local/state/tqvt/tqvt.db."
        )
    path = sqlite_path(url)
    if path is not None:
        _create_private_file(path)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _install_sqlite_events(engine)
        return engine
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)
        _install_sqlite_events(engine)
        return engine
    # The claim queries rely on READ COMMITTED: each statement sees what other
    # workers committed before it started, whatever the server's default is.
    try:
        return create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                             isolation_level="READ COMMITTED")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"The database driver '{exc.name}' for {display_url(url)} is not installed; "
            "for PostgreSQL run: pip install 'tqvt[postgres]'."
        ) from None


def tighten_sqlite_files(engine: Engine) -> None:
    """Set mode 0600 on the database, -wal and -shm files that exist."""
    path = sqlite_path(str(engine.url))
    if path is None:
        return
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o600)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _lock_keys(namespace: int, name: str) -> dict[str, int]:
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    return {"namespace": namespace, "key": int.from_bytes(digest, "big", signed=True)}


def try_transaction_lock(session: Session | Connection, namespace: int, name: str) -> bool:
    """Take the PostgreSQL advisory lock of ``name`` until the transaction ends, if it is free.

    Returns False when another transaction holds it. Two names can share a
    32-bit key, in which case they exclude each other needlessly but safely.
    """
    statement = text("SELECT pg_try_advisory_xact_lock(:namespace, :key)")
    return bool(session.execute(statement, _lock_keys(namespace, name)).scalar())


def wait_for_transaction_lock(session: Session | Connection, namespace: int, name: str) -> None:
    """Take the PostgreSQL advisory lock of ``name`` until the transaction ends, waiting for it."""
    statement = text("SELECT pg_advisory_xact_lock(:namespace, :key)")
    session.execute(statement, _lock_keys(namespace, name))


@contextmanager
def translate_db_errors(display_name: str) -> Iterator[None]:
    """Turn driver errors that mean a broken database into StateError."""
    try:
        yield
    except OSError as exc:
        raise StateError(
            f"Cannot create the state database {display_name}: {exc.strerror}. Check the "
            "path in TQVT_DB and the permissions of its directory."
        ) from None
    except OperationalError as exc:
        text = str(exc.orig)
        if "locked" in text:
            raise
        if any(word in text.lower() for word in ("connection refused", "could not connect",
                                                  "connection failed", "timeout expired")):
            raise ServiceUnavailableError(
                f"The state database server {display_name} is unreachable ({text.strip()}); "
                "nothing is lost, rerun when it is back."
            ) from None
        raise StateError(
            f"Cannot use the state database {display_name}: {text}. Check the path or URL "
            "in TQVT_DB and that the server or file is reachable."
        ) from None
    except DatabaseError as exc:
        text = str(exc.orig)
        raise StateError(
            f"The state database {display_name} is unreadable ({text}). Move the file aside "
            "and run 'tqvt db upgrade' to start a new one, or restore a backup."
        ) from None


def display_url(url: str) -> str:
    """Return ``url`` with any password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)
