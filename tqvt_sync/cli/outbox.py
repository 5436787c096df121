"""``tqvt outbox``: inspect failed and dead writes, and queue dead ones again."""

from __future__ import annotations

import json

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.db.models import OUTBOX_STATUSES, OutboxEntry


@click.group()
def outbox() -> None:
    """Inspect and retry queued writes."""


@outbox.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(OUTBOX_STATUSES),
              help="Rows with this status (repeatable; default failed and dead).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Maximum rows shown.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array for scripts.")
@click.pass_obj
def list_rows(runtime: Runtime, statuses: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List failed and dead writes with their last error."""
    from tqvt_sync.logs import escape
    from tqvt_sync.reports import iso

    wanted = statuses or ("failed", "dead")
    with runtime.stage_context().sessions() as session:
        rows = session.execute(select(OutboxEntry).where(OutboxEntry.status.in_(wanted))
                               .order_by(OutboxEntry.id).limit(limit)).scalars().all()
    items = [{"id": r.id, "indicator_id": r.indicator_id, "status": r.status,
              "attempts": r.attempts, "verdict": r.verdict,
              "next_attempt_at": iso(r.next_attempt_at), "last_error": r.last_error}
             for r in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"No outbox rows with status {', '.join(wanted)}.")
        return
    for item in items:
        click.echo(f"{item['id']:>6}  indicator {item['indicator_id']}  {item['status']:<7} "
                   f"attempts {item['attempts']}  {escape(item['last_error'] or '-')}")


@outbox.command("retry")
@click.argument("row_id", required=False, type=int)
@click.option("--all-dead", is_flag=True, help="Queue every dead row again.")
@click.pass_obj
def retry(runtime: Runtime, row_id: int | None, all_dead: bool) -> None:
    """Put one dead or failed row (by id), or every dead row, back in the queue."""
    if (row_id is None) == (not all_dead):
        raise click.UsageError("Give one outbox row id or --all-dead.")
    ctx = runtime.stage_context()
    now = runtime.clock.now()
    with ctx.sessions.begin() as session:
        query = select(OutboxEntry)
        if row_id is not None:
            query = query.where(OutboxEntry.id == row_id, OutboxEntry.status.in_(("dead", "failed")))
        else:
            query = query.where(OutboxEntry.status == "dead")
        rows = session.execute(query.order_by(OutboxEntry.id)).scalars().all()
        for row in rows:
            row.status, row.attempts, row.next_attempt_at, row.updated_at = "failed", 1, now, now
        session.flush()
        _keep_one_waiting_row(session, {row.indicator_id for row in rows})
    if row_id is not None and not rows:
        raise click.ClickException(f"Outbox row {row_id} does not exist or is not dead or failed; "
                                   "see 'tqvt outbox list'.")
    click.echo(f"Queued {len(rows)} row{'s' if len(rows) != 1 else ''} again; run 'tqvt sync push'.")


def _keep_one_waiting_row(session: Session, indicator_ids: set[int]) -> None:
    """Leave one waiting row per indicator: the oldest, carrying the newest desired state.

    A retried dead row can meet a newer waiting row of the same indicator. The
    oldest row keeps its id, so the indicator's writes stay in order, and it
    takes the newest row's content because every row contains the complete state.
    """
    for indicator_id in indicator_ids:
        waiting = session.execute(
            select(OutboxEntry)
            .where(OutboxEntry.indicator_id == indicator_id,
                   OutboxEntry.status.in_(("new", "failed")))
            .order_by(OutboxEntry.id)
        ).scalars().all()
        if len(waiting) < 2:
            continue
        keep, newest = waiting[0], waiting[-1]
        keep.desired, keep.fingerprint, keep.verdict = newest.desired, newest.fingerprint, newest.verdict
        keep.indicator_value, keep.indicator_type = newest.indicator_value, newest.indicator_type
        keep.status = "failed"
        for extra in waiting[1:]:
            session.delete(extra)
