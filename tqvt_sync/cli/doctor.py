"""``tqvt doctor``: one line per health check, exit 1 when any check failed."""

from __future__ import annotations

import click

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.doctor import run_checks


@click.command()
@click.pass_obj
def doctor(runtime: Runtime) -> None:
    """Check configuration, database, ThreatQ, TLS, credentials, types and VirusTotal quota.

    Prints one line per check with ok, warning or failed and what to do. Exits 0
    when no check failed, 1 otherwise.
    """
    results = run_checks(runtime)
    width = max(len(result.name) for result in results)
    for result in results:
        click.echo(f"{result.state:<7}  {result.name:<{width}}  {result.detail}")
    failed = sum(1 for result in results if result.state == "failed")
    if failed:
        click.echo(f"\n{failed} check{'s' if failed > 1 else ''} failed.", err=True)
        raise click.exceptions.Exit(1)
