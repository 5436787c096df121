"""``tqvt indicators rejected``: values that were not looked up, with the reason."""

from __future__ import annotations

import json

import click

from tqvt_sync.cli.runtime import Runtime


@click.group()
def indicators() -> None:
    """Inspect indicators in the local queue."""


@indicators.command("rejected")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Maximum rows shown.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array for scripts.")
@click.pass_obj
def rejected(runtime: Runtime, limit: int, as_json: bool) -> None:
    """List invalid, unsupported and skipped indicators with the reason for each."""
    from tqvt_sync.logs import escape
    from tqvt_sync.reports import rejected_indicators

    with runtime.stage_context().sessions() as session:
        rows = rejected_indicators(session, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No rejected indicators.")
    for row in rows:
        click.echo(f"{row['id']:>8}  {row['status']:<11} {escape(row['type']):<14} "
                   f"{escape(row['value'], limit=60)}  {escape(row['reason'] or '')}")
