"""The Alembic revisions and the models describe the same schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import Base
from tqvt_sync.errors import StateError


def _diff(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_migrations_match_models(engine):
    assert _diff(engine) == []


def test_migrations_downgrade_to_empty(engine):
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_migrations_upgrade_after_downgrade(engine):
    migrate.downgrade(engine, "base")
    migrate.upgrade(engine)
    assert _diff(engine) == []


def test_ensure_schema_creates_empty_database(db_url):
    engine = make_engine(db_url)
    migrate.ensure_schema(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_ensure_schema_rejects_foreign_tables(db_url):
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(StateError, match="no tqvt schema version"):
        migrate.ensure_schema(engine)


def test_ensure_schema_rejects_unknown_revision(engine):
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    with pytest.raises(StateError, match="does not know"):
        migrate.ensure_schema(engine)
