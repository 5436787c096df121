"""The ``tqvt`` command: global options, error handling and exit codes."""

from __future__ import annotations

import logging
import sys

import click

from tqvt_sync import __version__
from tqvt_sync.errors import EXIT_TEMPORARY, EXIT_USAGE, EXIT_USER_ERROR, TqvtError

logger = logging.getLogger("tqvt_sync.cli")


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used, so ``--version`` stays fast."""

    SUBCOMMANDS = {
        "cache": ("tqvt_sync.cli.cache", "cache"),
        "config": ("tqvt_sync.cli.config_cmd", "config"),
        "db": ("tqvt_sync.cli.db_cmd", "db"),
        "demo": ("tqvt_sync.cli.demo", "demo"),
        "doctor": ("tqvt_sync.cli.doctor", "doctor"),
        "indicators": ("tqvt_sync.cli.indicators", "indicators"),
        "outbox": ("tqvt_sync.cli.outbox", "outbox"),
        "rescore": ("tqvt_sync.cli.rescore", "rescore"),
        "status": ("tqvt_sync.cli.status", "status"),
        "sync": ("tqvt_sync.cli.sync", "sync"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        import importlib

        module = importlib.import_module(target[0])
        return getattr(module, target[1])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tqvt")
@click.option("--db", "db", envvar=None, metavar="URL_OR_PATH",
              help="State database: a SQLAlchemy URL or a SQLite file path (env TQVT_DB).")
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="TOML configuration file (env TQVT_CONFIG).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
              case_sensitive=False), help="Minimum level of log lines (default INFO).")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines as text or as one JSON object per line (default text).")
@click.option("--quiet", "-q", is_flag=True, help="Log only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, db: str | None, config_file: str | None, log_level: str | None,
        log_format: str | None, quiet: bool) -> None:
    """Enrich ThreatQ indicators with VirusTotal verdicts.

    Stages run separately and resume from the state database: `tqvt sync pull`,
    `tqvt sync lookup`, `tqvt sync push`, or all three with `tqvt sync run`.
    """
    from tqvt_sync.cli.runtime import Runtime
    from tqvt_sync.logs import setup_logging

    options = {"db": db, "log_level": log_level.upper() if log_level else None,
               "log_format": log_format}
    runtime = Runtime(options={k: v for k, v in options.items() if v is not None},
                      config_file=config_file, quiet=quiet)
    ctx.obj = runtime
    ctx.call_on_close(runtime.close)
    setup_logging(level=log_level or "INFO", fmt=log_format or "text", quiet=quiet)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with the code from the exit-code table."""
    try:
        code = cli.main(args=argv, prog_name="tqvt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except TqvtError as exc:
        click.echo(f"Error: {_redacted(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing is lost, rerun to carry on.", err=True)
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one sentence, no traceback with secrets
        logger.debug("unexpected error", exc_info=True)
        if _sqlite_locked(exc):
            click.echo("Error: the state database stayed locked by another process for "
                       "30 s; nothing is lost, rerun when that process has finished.", err=True)
            sys.exit(EXIT_TEMPORARY)
        click.echo(f"Error: unexpected {type(exc).__name__}: {_redacted(str(exc))}. "
                   "Rerun with --log-level DEBUG for details.", err=True)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


def _sqlite_locked(exc: Exception) -> bool:
    """Return True for SQLite's 'database is locked' after its busy timeout ran out."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def _redacted(text: str) -> str:
    from tqvt_sync.logs import escape, redact

    return escape(redact(text), limit=2000)
