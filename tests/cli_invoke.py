"""Run the ``tqvt`` entry point in-process, with its exit code and error handling."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from click.testing import CliRunner

from tqvt_sync.cli.main import main


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_main(args: list[str], env: Mapping[str, str | None] | None = None) -> CliResult:
    """Call ``tqvt_sync.cli.main.main`` as the ``tqvt`` script does and capture its output.

    ``env`` overrides ``os.environ`` for the call (``None`` deletes a variable). Unlike
    ``CliRunner.invoke``, this goes through ``main``, so a TqvtError becomes an
    ``Error:`` line and its exit code.
    """
    runner = CliRunner()
    with runner.isolation(env=env) as (stdout, stderr, _output):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            drop_cli_log_handler()
        return CliResult(code, stdout.getvalue().decode(), stderr.getvalue().decode())


def drop_cli_log_handler() -> None:
    """Remove the handler the CLI installed, because it writes to a stream closed after the run."""
    logger = logging.getLogger("tqvt_sync")
    for handler in [h for h in logger.handlers if getattr(h, "tqvt", False)]:
        logger.removeHandler(handler)
