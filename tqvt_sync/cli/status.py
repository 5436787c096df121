"""``tqvt status``: cursors, queue counts, quota and outbox."""

from __future__ import annotations

import json

import click

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.logs import escape


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.pass_obj
def status(runtime: Runtime, as_json: bool) -> None:
    """Show cursors, indicator and outbox counts, and the VirusTotal quota."""
    from tqvt_sync.reports import status_report

    settings = runtime.settings
    with runtime.stage_context().sessions() as session:
        report = status_report(session, api_key=settings.vt_api_key,
                               reserve=settings.daily_reserve, now=runtime.clock.now())
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(format_status(report))


def format_status(report: dict) -> str:
    lines = []
    ind = report["indicators"]
    lines.append(
        f"indicators  total {ind['total']}: pending {ind['pending']}, looked up {ind['looked_up']}, "
        f"not found {ind['not_found']}, unsupported {ind['unsupported']}, invalid {ind['invalid']}, "
        f"skipped {ind['skipped']}"
    )
    out = report["outbox"]
    lines.append(f"outbox      pending {out['pending']}, failed {out['failed']}, dead {out['dead']}, "
                 f"delivered {out['delivered']}")
    quota = report["quota"]
    limits = (f"{quota['minute_limit']}/min, {quota['daily_limit']}/day"
              if quota["daily_limit"] is not None else "not read yet")
    blocked = f", blocked until {quota['blocked_until']}" if quota["blocked_until"] else ""
    lines.append(f"quota       {limits}; used today {quota['used_today']}, "
                 f"reserve {quota['reserve']}{blocked}")
    if not report["cursors"]:
        lines.append("cursors     none yet")
    for cursor in report["cursors"]:
        value = json.dumps(cursor["value"], sort_keys=True) if cursor["value"] else "-"
        pending = f", resumes at {cursor['page_token']}" if cursor.get("page_token") else ""
        lines.append(f"cursor      {cursor['name']}: {value} (updated {cursor['updated_at']}{pending})")
    rejected = report.get("rejected") or []
    if rejected:
        lines.append("not looked up (first 10; 'tqvt indicators rejected' lists all):")
    for row in rejected:
        lines.append(f"  {row['id']:>8} {escape(row['type'])}: {escape(row['value'], limit=60)}: "
                     f"{row['status']}, {escape(row['reason'] or '')}")
    return "\n".join(lines)
