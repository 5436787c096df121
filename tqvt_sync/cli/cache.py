"""``tqvt cache``: report on and purge the VirusTotal response cache."""

from __future__ import annotations

import json

import click

from tqvt_sync.cli.runtime import Runtime


@click.group()
def cache() -> None:
    """Inspect and purge the VirusTotal response cache."""


@cache.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.pass_obj
def report(runtime: Runtime, as_json: bool) -> None:
    """Show cache size, freshness, hit rate and VirusTotal calls saved."""
    from tqvt_sync.reports import cache_report

    with runtime.stage_context().sessions() as session:
        data = cache_report(session, now=runtime.clock.now())
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(format_cache_report(data))


def format_cache_report(data: dict) -> str:
    from tqvt_sync.reports import bar

    kinds = ", ".join(f"{kind} {count}" for kind, count in data["by_kind"].items())
    lines = [
        f"entries     {data['entries']} ({kinds})",
        f"fresh       {data['fresh']}, expired {data['expired']}, not found {data['not_found']}",
        f"hits        {data['hits']}, misses {data['misses']}, hit rate {data['hit_rate']:.1%}",
        f"calls saved {data['vt_calls_saved']}",
        "",
        "age of entries",
    ]
    for title in ("age_histogram", "verdict_histogram"):
        if title == "verdict_histogram":
            lines += ["", "verdicts"]
        histogram = data[title]
        largest = max(histogram.values(), default=0)
        for label, count in histogram.items():
            lines.append(f"  {label:<10} {count:>7} {bar(count, largest)}")
    return "\n".join(lines)


@cache.command("purge")
@click.option("--all", "everything", is_flag=True, help="Delete every entry, not only expired ones.")
@click.pass_obj
def purge(runtime: Runtime, everything: bool) -> None:
    """Delete expired cache entries (or every entry with --all)."""
    from tqvt_sync.stages.cache import purge as purge_rows

    ctx = runtime.stage_context()
    with ctx.sessions.begin() as session:
        removed = purge_rows(session, runtime.clock.now(), everything=everything)
    click.echo(f"Deleted {removed} cache entr{'y' if removed == 1 else 'ies'}.")
