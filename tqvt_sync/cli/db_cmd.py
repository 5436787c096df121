"""``tqvt db``: create or migrate the state database."""

from __future__ import annotations

import click

from tqvt_sync.cli.runtime import Runtime


@click.group()
def db() -> None:
    """Manage the state database."""


@db.command("upgrade")
@click.pass_obj
def upgrade(runtime: Runtime) -> None:
    """Create or migrate the state database to the newest schema (Alembic upgrade head)."""
    from tqvt_sync.db import migrate
    from tqvt_sync.db.engine import translate_db_errors

    engine = runtime.engine(migrate_empty=False)
    with translate_db_errors(runtime.db_display):
        before = migrate.current_revision(engine)
        migrate.upgrade(engine)
        after = migrate.current_revision(engine)
    if before == after:
        click.echo(f"{runtime.db_display} is at the newest schema revision {after}.")
    else:
        click.echo(f"{runtime.db_display} migrated from {before or 'empty'} to {after}.")
