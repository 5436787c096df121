"""``tqvt doctor``: one line per health check, exit 1 when any check failed."""

from __future__ import annotations

import click

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.doctor import format_result, run_checks


@click.command()
@click.pass_obj
def doctor(runtime: Runtime) -> None:
    """Check configuration, ThreatQ, TLS, credentials, types, VirusTotal quota and database.

    Prints one line per check: ok, warning or failed with what to do, or skipped
    when a check that it depends on failed. No check uses VirusTotal quota.

    \b
    configuration        every setting that ThreatQ and VirusTotal need is set
    threatq reachable    THREATQ_URL accepts connections
    threatq tls          the certificate verifies (https only)
    threatq credentials  ThreatQ issues an access token
    indicator types      the type map matches the instance's indicator types
    virustotal key       the key is accepted; its quota, from the free quotas endpoint
    database             writable, integrity ok, schema revision current
    daily volume         a public key's backlog fits in one day's calls

    Exits 0 when no check failed, 1 otherwise.
    """
    results = run_checks(runtime)
    for result in results:
        click.echo(format_result(result))
    failed = sum(1 for result in results if result.state == "failed")
    if failed:
        click.echo(f"{failed} check{'s' if failed > 1 else ''} failed.", err=True)
        raise click.exceptions.Exit(1)
