"""Stage context, stage lock and run record, shared by every stage."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tqvt_sync.clock import Clock, SystemClock
from tqvt_sync.db.engine import is_sqlite, session_factory, sqlite_path
from tqvt_sync.db.models import Counter, Run
from tqvt_sync.errors import StageBusyError
from tqvt_sync.logs import escape, log_event, run_context

logger = logging.getLogger(__name__)


class StopRequested:
    """A flag that SIGINT and SIGTERM set; stages check it between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "") -> None:
        """Request a stop; ``reason`` (such as ``SIGTERM``) is kept for messages."""
        self.reason = self.reason or reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = ""


@dataclass
class StageContext:
    """Everything a stage needs: settings, database, clock and client factories."""

    settings: Any
    engine: Engine
    clock: Clock = field(default_factory=SystemClock)
    threatq_factory: Callable[[], Any] | None = None
    virustotal_factory: Callable[[], Any] | None = None
    stop: StopRequested = field(default_factory=StopRequested)
    progress: Callable[[dict[str, Any]], None] | None = None
    worker_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        self.sessions: sessionmaker[Session] = session_factory(self.engine)

    def threatq(self) -> Any:
        assert self.threatq_factory is not None, "no ThreatQ client factory configured"
        return self.threatq_factory()

    def virustotal(self) -> Any:
        assert self.virustotal_factory is not None, "no VirusTotal client factory configured"
        return self.virustotal_factory()


@contextmanager
def stage_lock(ctx: StageContext, stage: str, *, exclusive_on_postgres: bool) -> Iterator[None]:
    """Hold the lock of ``stage`` on this database for the duration of the block.

    On SQLite an ``flock`` on a file beside the database admits one process per
    stage; the kernel releases it when the process dies, even by SIGKILL. On
    PostgreSQL, stages that claim rows with SKIP LOCKED run in parallel, and the
    others take a session-level advisory lock that a dropped connection frees.
    Raises StageBusyError when another process holds the lock.
    """
    path = sqlite_path(str(ctx.engine.url))
    if is_sqlite(ctx.engine):
        if path is None:
            yield
            return
        with _file_lock(f"{path}.{stage}.lock", stage):
            yield
        return
    if not exclusive_on_postgres:
        yield
        return
    with ctx.engine.connect() as connection:
        key = _advisory_key(stage)
        acquired = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        connection.commit()
        if not acquired:
            raise _busy(stage)
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            connection.commit()


@contextmanager
def _file_lock(lock_path: str, stage: str) -> Iterator[None]:
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(stage) from None
        yield
    finally:
        os.close(fd)


def _busy(stage: str) -> StageBusyError:
    return StageBusyError(
        f"Another tqvt process is running 'sync {stage}' on this database; "
        "rerun when it has finished (nothing is lost)."
    )


def _advisory_key(stage: str) -> int:
    # A stable 63-bit key per stage name, in a range unlikely to meet other users.
    return 0x7471_7674_0000 + sum(ord(char) for char in stage)


@contextmanager
def recorded_run(ctx: StageContext, stage: str, counts: dict[str, int]) -> Iterator[str]:
    """Record a run of ``stage`` with its counts and outcome; log its start and end.

    Every record logged inside the block carries ``stage`` and ``run_id``. The end
    event carries ``outcome``, ``duration_s`` (monotonic seconds), ``counts`` and, when
    the stage raised, ``error``; it is a warning unless the outcome is ``ok``.
    """
    run_id = str(uuid.uuid4())
    started = ctx.clock.now()
    monotonic_start = time.monotonic()
    with ctx.sessions.begin() as session:
        session.add(Run(
            id=run_id, stage=stage, started_at=started, counts={}, pid=os.getpid(),
            host=socket.gethostname(),
        ))
    log_event(logger, logging.INFO, f"{stage} started", stage=stage, run_id=run_id)
    outcome = "failed"
    error: dict[str, str] = {}
    try:
        with run_context(stage=stage, run_id=run_id):
            yield run_id
        # A stage stopped by a signal returns normally, and the CLI then exits with 75.
        outcome = "stopped" if ctx.stop.is_set() else "ok"
    except BaseException as exc:
        outcome = "stopped" if getattr(exc, "exit_code", 1) == 75 else "failed"
        error["error"] = escape(exc) if str(exc) else type(exc).__name__
        raise
    finally:
        with ctx.sessions.begin() as session:
            run = session.get(Run, run_id)
            if run is not None:
                run.ended_at, run.outcome, run.counts = ctx.clock.now(), outcome, dict(counts)
        log_event(
            logger, logging.INFO if outcome == "ok" else logging.WARNING, f"{stage} finished",
            stage=stage, run_id=run_id, outcome=outcome,
            duration_s=round(time.monotonic() - monotonic_start, 3), counts=dict(counts),
            **error,
        )


_COUNTERS = Counter.__table__
_INCREMENT_COUNTER = update(_COUNTERS).where(_COUNTERS.c.name == bindparam("counter")).values(
    value=_COUNTERS.c.value + bindparam("delta"))


def add_to_counters(connection: Connection, deltas: dict[str, int]) -> None:
    """Add ``deltas`` to the named counters in the current transaction.

    The UPDATE adds in the database, so lookup workers that share PostgreSQL
    do not overwrite each other's counts. A counter's first row is inserted in
    a savepoint; when another worker inserted it meanwhile, the UPDATE is repeated.
    """
    for name, delta in deltas.items():
        if not delta:
            continue
        if _increment_counter(connection, name, delta):
            continue
        try:
            with connection.begin_nested():
                connection.execute(insert(_COUNTERS), {"name": name, "value": delta})
        except IntegrityError:
            _increment_counter(connection, name, delta)


def _increment_counter(connection: Connection, name: str, delta: int) -> bool:
    result = connection.execute(_INCREMENT_COUNTER, {"counter": name, "delta": delta})
    return result.rowcount > 0


@contextmanager
def stop_on_signals(stop: StopRequested) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM while the block runs (main thread only).

    A second signal raises KeyboardInterrupt at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            # A second signal abandons the current request; every transaction
            # either committed or rolls back, so nothing is half-written.
            raise KeyboardInterrupt(name)
        logger.warning("received %s; stopping after the current step", name)
        stop.set(name)

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
