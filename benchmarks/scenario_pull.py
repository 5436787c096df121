"""Pull of a large library against the floor of fetching the same pages with no database.

The simulators run in a subprocess. The pull stage runs in this process, and
every page request it sends is recorded. The floor is a loop that sends the
same requests with a fresh ThreatQClient, which parses each page's JSON, and
stores nothing. It runs twice after the pull and the faster run counts, so the
ratio errs against tqvt.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.harness import (
    Figure,
    external_simulators,
    report,
    settings_for,
    stage_context,
)
from tqvt_sync.clock import SystemClock
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.threatq.client import ThreatQClient

NAME = "pull"
TARGET_RATIO = 1.5


class _Recorder:
    """Records the arguments of every ``fetch_indicator_page`` call."""

    def __init__(self) -> None:
        self.requests: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def wrap(self, function: Any) -> Any:
        def recorded(client: Any, *args: Any, **kwargs: Any) -> Any:
            self.requests.append((args, kwargs))
            return function(client, *args, **kwargs)
        return recorded


def _floor(urls: dict[str, str], requests: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> float:
    """Send the recorded page requests again, parsing each page and storing nothing."""
    started = time.perf_counter()
    with ThreatQClient(urls["threatq_url"], client_id=urls["client_id"], email=urls["email"],
                       password=urls["password"]) as client:
        items = 0
        for args, kwargs in requests:
            items += len(client.fetch_indicator_page(*args, **kwargs).items)
    return time.perf_counter() - started


def run(quick: bool, figures: list[Figure]) -> None:
    size = 10_000 if quick else 100_000
    # Three indicators a second, all older than the run's signpost.
    start = datetime.now(UTC) - timedelta(seconds=size // 3 + 3600)
    with external_simulators(size, start) as urls, tempfile.TemporaryDirectory() as workdir:
        settings = settings_for(urls, f"sqlite:///{workdir}/state.db", workdir, page_size=500)
        context = stage_context(settings, SystemClock())
        recorder = _Recorder()
        original = ThreatQClient.fetch_indicator_page
        ThreatQClient.fetch_indicator_page = recorder.wrap(original)  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            counts = pull(context, PullOptions(since=start - timedelta(minutes=1)))
            wall = time.perf_counter() - started
        finally:
            ThreatQClient.fetch_indicator_page = original  # type: ignore[method-assign]
        context.engine.dispose()
        floor = min(_floor(urls, recorder.requests), _floor(urls, recorder.requests))

    ratio = wall / floor
    note = (f"{counts['indicators']:,} indicators in {counts['pages']} pages of 500; "
            f"{len(recorder.requests)} page requests replayed for the floor")
    report(Figure(NAME, f"pull of {size:,} indicators", wall, "s", baseline=floor,
                  baseline_name="fetch and parse the same pages, no database", ratio=ratio,
                  target=f"ratio <= {TARGET_RATIO}", met=ratio <= TARGET_RATIO, note=note), figures)
    per_indicator = (wall - floor) / max(counts["indicators"], 1) * 1000
    report(Figure(NAME, "pull time above the floor per indicator", per_indicator, "ms"), figures)
