"""``tqvt sync``: the pull, lookup and push stages."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.errors import EXIT_TEMPORARY, TemporaryStop, TqvtError
from tqvt_sync.logs import escape, log_event
from tqvt_sync.stages.common import StageContext, stop_on_signals

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> datetime:
    """Parse ``--since``: an ISO date or time (UTC when no zone is given) or an age like ``7d``."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        try:
            return datetime.now(UTC) - timedelta(seconds=seconds)
        except OverflowError:
            raise click.BadParameter(
                f"{text!r} reaches back before the year 1; give a shorter age like 30d.",
                param_hint="'--since'",
            ) from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a date like 2026-01-31 or 2026-01-31T08:00 nor an age like 7d.",
            param_hint="'--since'",
        ) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment > datetime.now(UTC):
        raise click.BadParameter(
            f"{text!r} is in the future; give a past date or an age like 7d.",
            param_hint="'--since'",
        )
    return moment


def parse_interval(text: str) -> float:
    """Parse ``--loop``: whole seconds, or a number followed by s, m, h, d or w; at least 1 s."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(int(match.group(1)) * _UNITS[match.group(2)])
    elif text.strip().isdigit():
        seconds = float(text.strip())
    else:
        raise click.BadParameter(f"{text!r} is not an interval; use seconds or a form like "
                                 "15m or 1h", param_hint="'--loop'")
    if seconds < 1:
        raise click.BadParameter(f"{text!r} is shorter than 1 second; use for example 15m",
                                 param_hint="'--loop'")
    return seconds


def _types(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


class Progress:
    """A one-line progress display on a terminal; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total: int | None = None
        self._drawn = False

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        sys.stderr.write("\r" + format_progress(event, self.total) + "\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            self._drawn = False


def format_progress(event: dict[str, Any], total: int | None) -> str:
    """Format one lookup progress event: done of total, calls, calls left today, next call."""
    done = event.get("indicators", 0)
    parts = [f"lookup: {done}" + (f"/{total}" if total else "") + " indicators",
             f"{event.get('calls', 0)} calls"]
    left = event.get("calls_left_today")
    if left is not None:
        parts.append(f"{left} calls left today")
    next_call_at = event.get("next_call_at")
    if event.get("event") == "quota_wait" and next_call_at is not None:
        parts.append(f"quota spent, next call at {next_call_at.astimezone():%Y-%m-%d %H:%M:%S %Z}")
    elif next_call_at is not None:
        parts.append(f"next call at {next_call_at.astimezone():%H:%M:%S %Z}")
    return ", ".join(parts)


def _summary(stage: str, counts: dict[str, int]) -> str:
    shown = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items())
    return f"{stage}: {shown}"


def _pull_options(since: str | None, collection: str | None, values_file: str | None,
                  types: str | None) -> Any:
    from tqvt_sync.stages.pull import PullOptions

    if collection is not None and values_file is not None:
        raise click.UsageError("Use either --collection or --values-file, not both.")
    if collection is not None and not collection.strip():
        raise click.BadParameter("give the id of a ThreatQ Data Collection, not an empty "
                                 "value.", param_hint="'--collection'")
    return PullOptions(
        since=parse_since(since) if since else None,
        collection=collection,
        values_file=values_file,
        types=_types(types),
    )


def pull_options(func: Any) -> Any:
    func = click.option("--types", metavar="LIST",
                        help="Comma-separated ThreatQ type names to pull, e.g. 'MD5,FQDN'.")(func)
    func = click.option("--values-file", type=click.Path(dir_okay=False), metavar="FILE",
                        help="Watchlist file: one indicator value per line, # for comments.")(func)
    func = click.option("--collection", metavar="ID",
                        help="Pull a ThreatQ Data Collection (saved search) completely.")(func)
    func = click.option("--since", metavar="WHEN",
                        help="First run only: start at this UTC time or age (default 24h).")(func)
    return func


@click.group()
def sync() -> None:
    """Run the pull, lookup and push stages."""


@sync.command("pull")
@pull_options
@click.option("--restart", is_flag=True,
              help="Ignore the stored cursor and start again at --since (default 24h); "
                   "the first stored page replaces the cursor. Indicators already queued "
                   "keep their state.")
@click.pass_obj
def pull_command(runtime: Runtime, since: str | None, collection: str | None,
                 values_file: str | None, types: str | None, restart: bool) -> None:
    """Read indicators from ThreatQ into the local queue and advance the cursor."""
    import dataclasses

    from tqvt_sync.stages.pull import pull

    if restart and (collection is not None or values_file is not None):
        raise click.UsageError("--restart applies to the updated-since pull, not to "
                               "--collection or --values-file.")
    options = dataclasses.replace(_pull_options(since, collection, values_file, types),
                                  restart=restart)
    ctx = runtime.stage_context()
    with stop_on_signals(runtime.stop):
        counts = pull(ctx, options)
    _report(runtime, "pull", counts)
    _raise_if_stopped(runtime)


@sync.command("lookup")
@click.option("--wait", is_flag=True,
              help="Sleep until the VirusTotal quota resets instead of exiting with code 75.")
@click.option("--max-calls", type=click.IntRange(min=0), metavar="N",
              help="Stop after N VirusTotal calls in this run.")
@click.pass_obj
def lookup_command(runtime: Runtime, wait: bool, max_calls: int | None) -> None:
    """Look up due indicators in VirusTotal (cache first) and queue writes."""
    with stop_on_signals(runtime.stop):
        counts = _run_lookup(runtime, wait=wait, max_calls=max_calls)
    _report(runtime, "lookup", counts)
    _raise_if_stopped(runtime)


def _run_lookup(runtime: Runtime, *, wait: bool, max_calls: int | None = None) -> dict[str, int]:
    from tqvt_sync.stages.lookup import lookup

    progress = Progress(enabled=not runtime.quiet)
    ctx = runtime.stage_context(progress=progress)
    _prime_progress(ctx, progress)
    try:
        try:
            return lookup(ctx, wait=wait, max_calls=max_calls)
        finally:
            progress.finish()
    except TemporaryStop as exc:
        # A run stopped by the quota still reports what it did before the stop.
        if exc.counts is not None:
            _report(runtime, "lookup", exc.counts)
        raise


def _prime_progress(ctx: StageContext, progress: Progress) -> None:
    if not progress.enabled:
        return
    from sqlalchemy import func, select

    from tqvt_sync.db.models import Indicator
    from tqvt_sync.stages.lookup import due_condition

    with ctx.sessions() as session:
        progress.total = session.scalar(
            select(func.count()).select_from(Indicator).where(due_condition(ctx.clock.now())))


@sync.command("push")
@click.pass_obj
def push_command(runtime: Runtime) -> None:
    """Deliver queued writes to ThreatQ."""
    from tqvt_sync.stages.push import push

    ctx = runtime.stage_context()
    with stop_on_signals(runtime.stop):
        counts = push(ctx)
    _report(runtime, "push", counts)
    _raise_if_stopped(runtime)


@sync.command("run")
@pull_options
@click.option("--wait", is_flag=True,
              help="Sleep through VirusTotal quota resets instead of exiting with code 75.")
@click.option("--loop", "interval", metavar="INTERVAL",
              help="Run as a service: repeat the three stages, sleeping INTERVAL (seconds, "
                   "or a form like 15m or 1h) after each cycle, until SIGTERM or SIGINT. "
                   "Implies --wait.")
@click.pass_obj
def run_command(runtime: Runtime, since: str | None, collection: str | None,
                values_file: str | None, types: str | None, wait: bool,
                interval: str | None) -> None:
    """Run pull, lookup and push in order.

    With --loop, the stages run again after each interval and sleep through
    VirusTotal quota resets. A cycle that stops early for a temporary reason
    (exit code 75 on its own) is logged and retried at the next cycle. SIGTERM
    or SIGINT stops the loop after the current step, and the command then exits
    with code 0, because a stopped service loop ended normally. An error to fix
    (exit code 1) ends the loop at once.
    """
    options = _pull_options(since, collection, values_file, types)
    seconds = parse_interval(interval) if interval is not None else None
    with stop_on_signals(runtime.stop):
        if seconds is None:
            _run_once(runtime, options, wait=wait)
        else:
            _run_loop(runtime, options, seconds)
            return
    _raise_if_stopped(runtime)


def _run_once(runtime: Runtime, options: Any, *, wait: bool) -> None:
    """Run pull, lookup and push; push still runs when lookup stops early."""
    from tqvt_sync.stages.pull import pull
    from tqvt_sync.stages.push import push

    ctx = runtime.stage_context()
    _report(runtime, "pull", pull(ctx, options))
    if runtime.stop.is_set():
        return
    stopped: TemporaryStop | None = None
    try:
        _report(runtime, "lookup", _run_lookup(runtime, wait=wait))
    except TemporaryStop as exc:
        stopped = exc
    if not runtime.stop.is_set():
        _report(runtime, "push", push(ctx))
    if stopped is not None:
        raise stopped


def _run_loop(runtime: Runtime, options: Any, interval: float) -> None:
    """Repeat the stages, sleeping ``interval`` seconds after each cycle, until a signal.

    Quota resets are slept through. An error with exit code 75 ends its cycle only.
    """
    cycle = 0
    while not runtime.stop.is_set():
        cycle += 1
        log_event(logger, logging.INFO, "loop cycle started", cycle=cycle)
        try:
            _run_once(runtime, options, wait=True)
        except TqvtError as exc:
            if exc.exit_code != EXIT_TEMPORARY:
                raise
            log_event(logger, logging.WARNING, "loop cycle stopped early; the next cycle "
                      "carries on", cycle=cycle, error=escape(exc))
        if runtime.stop.is_set():
            break
        log_event(logger, logging.INFO, "loop sleeping", cycle=cycle, seconds=interval)
        slept = 0.0
        # Short steps, so a signal during the sleep ends the loop within a second.
        while slept < interval and not runtime.stop.is_set():
            step = min(1.0, interval - slept)
            runtime.clock.sleep(step)
            slept += step
    log_event(logger, logging.INFO, f"loop stopped by {runtime.stop.reason or 'a signal'}; "
              "nothing is lost", cycles=cycle)


def _raise_if_stopped(runtime: Runtime) -> None:
    if runtime.stop.is_set():
        raise TemporaryStop("Stopped by a signal after a committed step; nothing is lost, "
                            "rerun to carry on.")


def _report(runtime: Runtime, stage: str, counts: dict[str, int]) -> None:
    if not runtime.quiet:
        click.echo(_summary(stage, counts))
