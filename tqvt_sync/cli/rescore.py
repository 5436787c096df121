"""``tqvt rescore``: recompute verdicts from cached responses."""

from __future__ import annotations

import click

from tqvt_sync.cli.runtime import Runtime


@click.command()
@click.pass_obj
def rescore(runtime: Runtime) -> None:
    """Recompute verdicts from the cache with the current tables and queue what changed.

    Makes no VirusTotal call; run 'tqvt sync push' afterwards to deliver.
    """
    from tqvt_sync.stages.rescore import rescore as run_rescore

    ctx = runtime.stage_context()
    counts = run_rescore(ctx)
    if not runtime.quiet:
        click.echo(f"rescore: {counts['indicators']} indicators checked, {counts['changed']} "
                   f"writes queued, {counts['no_cache']} without a cached answer")
