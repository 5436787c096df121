"""``tqvt demo``: the whole pipeline against the built-in simulators."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from tqvt_sync.cli.runtime import Runtime

@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary state database and print its path.")
@click.pass_obj
def demo(runtime: Runtime, keep: bool) -> None:
    """Run pull, lookup and push against local ThreatQ and VirusTotal simulators.

    The simulators listen on 127.0.0.1 only and hold bundled sample data; no
    real service is contacted. The state goes to a temporary database unless
    --db is given.
    """
    from tqvt_sync.config import load_settings
    from tqvt_sync.sandbox import running_simulators
    from tqvt_sync.sandbox.seed import seed_demo
    from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan

    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="tqvt-demo-")
    plan = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)
    with running_simulators(vt_plan=plan) as (tq, vt):
        seeded = seed_demo(tq, vt)
        base = load_settings(environ={}, cwd=workdir)
        settings = dataclasses.replace(
            base,
            threatq_url=tq.url,
            threatq_client_id=tq.credentials.client_id,
            threatq_email=tq.credentials.email,
            threatq_password=tq.credentials.password,
            vt_api_key=DEFAULT_API_KEY,
            vt_api_url=vt.url,
            db=runtime.options.get("db") or f"{workdir}/demo.db",
            log_level=runtime.options.get("log_level") or "WARNING",
        )
        demo_runtime = Runtime(options={}, settings_override=settings, quiet=runtime.quiet)
        try:
            _run_stages(demo_runtime)
            _show_indicators(demo_runtime, tq, seeded)
            _show_second_run(demo_runtime, tq, vt)
        finally:
            demo_runtime.close()
    click.echo(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
    if keep or runtime.options.get("db"):
        click.echo(f"State database: {settings.db}")


def _run_stages(runtime: Runtime) -> None:
    from tqvt_sync.stages.lookup import lookup
    from tqvt_sync.stages.pull import PullOptions, pull
    from tqvt_sync.stages.push import push

    ctx = runtime.stage_context()
    since = datetime.now(UTC) - timedelta(days=3650)
    counts = pull(ctx, PullOptions(since=since))
    click.echo(f"pull:   {counts['indicators']} indicators stored from {counts['pages']} page(s)")
    counts = lookup(ctx)
    click.echo(f"lookup: {counts['calls']} VirusTotal calls for {counts['indicators']} indicators, "
               f"{counts['cache_hits']} from the cache, {counts['not_found']} not found, "
               f"{counts['queued_writes']} writes queued")
    counts = push(ctx)
    click.echo(f"push:   {counts['delivered']} indicators written "
               f"({counts['consumed']} in batches), {counts['failed']} failed, {counts['dead']} dead")
    with ctx.sessions() as session:
        from tqvt_sync.reports import rejected_indicators

        rejected = rejected_indicators(session, 20)
    if rejected:
        click.echo("\nNot looked up:")
        for row in rejected:
            click.echo(f"  {row['type']:<14} {row['value'][:48]:<48} {row['status']}: {row['reason']}")


def _show_indicators(runtime: Runtime, tq: Any, seeded: dict[str, Any]) -> None:
    """Print the attributes now on one indicator of each kind, as ThreatQ stores them."""
    client = runtime.threatq_client()
    shown: set[str] = set()
    click.echo("\nAttributes now in ThreatQ (one indicator per type):")
    for item in tq.indicators():
        type_name = item["type"]["name"]
        if type_name in shown:
            continue
        attributes = client.fetch_attributes(item["id"])
        ours = [a for a in attributes if str(a.get("name", "")).startswith("VirusTotal ")]
        if not ours:
            continue
        shown.add(type_name)
        click.echo(f"\n  [{item['id']}] {type_name} {item['value'][:70]}")
        for attribute in sorted(attributes, key=lambda a: a["name"]):
            sources = ", ".join(s.get("name", "") for s in attribute.get("sources") or [])
            click.echo(f"    {attribute['name']:<30} {str(attribute['value'])[:70]}  ({sources})")


def _show_second_run(runtime: Runtime, tq: Any, vt: Any) -> None:
    """Run the stages again to show that nothing changed costs nothing."""
    from tqvt_sync.stages.lookup import lookup
    from tqvt_sync.stages.pull import PullOptions, pull
    from tqvt_sync.stages.push import push

    vt_before, tq_before = len(vt.requests), _tq_writes(tq)
    ctx = runtime.stage_context()
    pull(ctx, PullOptions())
    lookup(ctx)
    push(ctx)
    vt_calls = sum(1 for r in vt.requests[vt_before:] if "/users/" not in r.path)
    click.echo(f"\nSecond run: {vt_calls} VirusTotal lookups, {_tq_writes(tq) - tq_before} "
               "ThreatQ writes.")


def _tq_writes(tq: Any) -> int:
    return sum(1 for r in tq.requests if r.method in ("POST", "PUT", "DELETE")
               and not r.path.startswith("/api/token") and "/query" not in r.path)
