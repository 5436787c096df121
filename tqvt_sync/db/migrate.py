"""Run the Alembic revisions shipped in ``tqvt_sync.migrations``."""

from __future__ import annotations

import logging
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from tqvt_sync.errors import StateError

logger = logging.getLogger(__name__)


def alembic_config() -> Config:
    """Return an Alembic configuration that points at the packaged revisions."""
    config = Config()
    location = resources.files("tqvt_sync.migrations")
    config.set_main_option("script_location", str(location))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None, "the packaged migrations have no head revision"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (Alembic ``upgrade``)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def ensure_schema(engine: Engine) -> None:
    """Create the schema in an empty database; reject a database at another revision.

    An empty database is migrated to head. A database whose revision is older
    than head, or unknown to this version of tqvt, raises StateError that says
    which command fixes it.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if tables - {"alembic_version"}:
            raise StateError(
                "The state database has tables but no tqvt schema version; point TQVT_DB "
                "at a database used only by tqvt."
            )
        logger.info("creating the state database schema")
        upgrade(engine)
        return
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise StateError(
            f"The state database is at schema revision {current}, which this version of tqvt "
            "does not know; upgrade tqvt or use another database."
        )
    raise StateError(
        f"The state database is at schema revision {current}, older than {head}; "
        "run 'tqvt db upgrade'."
    )
