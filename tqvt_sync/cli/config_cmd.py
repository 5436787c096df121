"""``tqvt config show``: the effective configuration with origins."""

from __future__ import annotations

import json

import click

from tqvt_sync.cli.runtime import Runtime


@click.group()
def config() -> None:
    """Show the effective configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.pass_obj
def show(runtime: Runtime, as_json: bool) -> None:
    """Print every setting with its value and origin; secrets are redacted."""
    from tqvt_sync.config import config_show_json, format_config_show

    settings = runtime.settings
    if as_json:
        click.echo(json.dumps(config_show_json(settings), indent=2, sort_keys=True))
        return
    click.echo(format_config_show(settings))
