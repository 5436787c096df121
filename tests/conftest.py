"""Shared fixtures: migrated databases, simulators, an injected clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from tqvt_sync.clock import FakeClock
from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def engine(db_url) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def postgres_url() -> str | None:
    return os.environ.get("TQVT_TEST_POSTGRES_URL")
