"""Cursor semantics of the pull stage, in-process against the ThreatQ simulator.

Time is a fake clock shared by the simulator and the stage, so "now" and the
``updated_at`` stamps are chosen by each test. An interruption mid-walk is a
wrapper around the real client that raises ServiceUnavailableError before a
chosen page request, which is what pull gets after its retries are spent.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from cli_invoke import run_main
from support import sim_settings, stage_context

from tqvt_sync.db.models import Cursor, Indicator
from tqvt_sync.errors import ConfigError, ServiceUnavailableError
from tqvt_sync.sandbox import QuotaPlan, ThreatQSimulator, VirusTotalSimulator
from tqvt_sync.stages.pull import UPDATED_SINCE, VALUES_BATCH, PullOptions, format_tq_time, pull

PAGE = 2


class InterruptedClient:
    """The real ThreatQ client, with a hook called before each page request.

    ``hooks`` maps a page request number (from 1, counted over indicator and
    collection pages) to a function; a hook may change the simulator or raise.
    """

    def __init__(self, client: Any, hooks: dict[int, Any]) -> None:
        self.client = client
        self.hooks = hooks
        self.pages = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def _before_page(self) -> None:
        self.pages += 1
        hook = self.hooks.get(self.pages)
        if hook is not None:
            hook()

    def fetch_indicator_page(self, *args: Any, **kwargs: Any) -> Any:
        self._before_page()
        return self.client.fetch_indicator_page(*args, **kwargs)

    def fetch_collection_page(self, *args: Any, **kwargs: Any) -> Any:
        self._before_page()
        return self.client.fetch_collection_page(*args, **kwargs)


def outage() -> None:
    raise ServiceUnavailableError("ThreatQ kept failing (simulated); rerun later")


@pytest.fixture
def tq(clock):
    with ThreatQSimulator(clock) as simulator:
        yield simulator


@pytest.fixture
def vt(clock):
    with VirusTotalSimulator(clock, keys={"unused": QuotaPlan()}) as simulator:
        yield simulator


@pytest.fixture
def make_ctx(tq, vt, db_url, tmp_path, clock):
    def build(hooks: dict[int, Any] | None = None, threatq=None, page_size: int = PAGE):
        server = threatq or tq
        settings = sim_settings(server, vt, db_url, str(tmp_path), page_size=page_size)
        ctx = stage_context(settings, clock)
        if hooks:
            real = ctx.threatq_factory
            ctx.threatq_factory = lambda: InterruptedClient(real(), hooks)
        return ctx

    return build


def add_domains(tq, clock, count: int, *, seconds_ago: float, start: int = 0) -> list[int]:
    stamp = clock.now() - timedelta(seconds=seconds_ago)
    return [tq.add_indicator(f"host{i}.example.net", "FQDN", updated_at=stamp)
            for i in range(start, start + count)]


def stored(ctx) -> dict[int, str]:
    """Return indicator id -> stored ThreatQ updated_at."""
    with ctx.sessions() as session:
        return {row.id: format_tq_time(row.tq_updated_at)
                for row in session.execute(select(Indicator)).scalars()}


def cursor(ctx, name: str = UPDATED_SINCE) -> Cursor | None:
    with ctx.sessions() as session:
        return session.get(Cursor, name)


def tq_stamps(tq, ids) -> dict[int, str]:
    return {i: tq.indicator(i)["updated_at"] for i in ids}


def since(clock, hours: float = 1) -> PullOptions:
    return PullOptions(since=clock.now() - timedelta(hours=hours))


# -- the >= boundary ------------------------------------------------------------


def test_ties_in_one_second_stored_once(tq, make_ctx, clock):
    ids = add_domains(tq, clock, 7, seconds_ago=60)
    ctx = make_ctx()
    counts = pull(ctx, since(clock))
    assert counts["indicators"] == 7
    assert set(stored(ctx)) == set(ids)


def test_cursor_records_last_second_and_ties(tq, make_ctx, clock):
    ids = add_domains(tq, clock, 3, seconds_ago=60)
    ctx = make_ctx()
    pull(ctx, since(clock))
    assert cursor(ctx).value == {"updated_at": tq.indicator(ids[0])["updated_at"],
                                 "id": ids[-1], "ties": 3}


def test_boundary_second_not_stored_again(tq, make_ctx, clock):
    add_domains(tq, clock, 5, seconds_ago=60)
    ctx = make_ctx()
    pull(ctx, since(clock))
    later = add_domains(tq, clock, 3, seconds_ago=30, start=5)
    counts = pull(ctx, since(clock))
    assert counts["indicators"] == 3
    assert set(later) <= set(stored(ctx))


def test_boundary_second_gains_indicator(tq, make_ctx, clock):
    first = add_domains(tq, clock, 4, seconds_ago=60)
    ctx = make_ctx()
    pull(ctx, since(clock))
    # A late writer stamps a new indicator with the cursor's own second.
    late = tq.add_indicator("late.example.net", "FQDN",
                            updated_at=tq.indicator(first[0])["updated_at"])
    counts = pull(ctx, since(clock))
    assert counts["indicators"] == 1
    assert late in stored(ctx)


def test_page_size_one_advances(tq, make_ctx, clock):
    ids = add_domains(tq, clock, 3, seconds_ago=60) + add_domains(tq, clock, 2, seconds_ago=30,
                                                                    start=3)
    # The outage ends a walk that stops advancing instead of letting it loop.
    ctx = make_ctx(page_size=1, hooks={50: outage})
    counts = pull(ctx, since(clock))
    assert counts["indicators"] == 5
    assert set(stored(ctx)) == set(ids)


def test_page_after_boundary_holds_page_size_new(tq, make_ctx, clock):
    add_domains(tq, clock, 7, seconds_ago=60)
    ctx = make_ctx()
    counts = pull(ctx, since(clock))
    # Pages of 2, 2, 2 and 1 new indicators; the last is short, so the walk ends.
    assert counts["pages"] == 4


def test_second_run_without_change_stores_nothing(tq, make_ctx, clock):
    add_domains(tq, clock, 5, seconds_ago=60)
    ctx = make_ctx()
    pull(ctx, since(clock))
    assert pull(ctx, since(clock))["indicators"] == 0


# -- the signpost ---------------------------------------------------------------


def test_signpost_defers_current_second(tq, make_ctx, clock):
    older = add_domains(tq, clock, 2, seconds_ago=10)
    current = add_domains(tq, clock, 2, seconds_ago=0, start=2)
    ctx = make_ctx()
    pull(ctx, since(clock))
    assert set(stored(ctx)) == set(older)
    clock.advance(1)
    pull(ctx, since(clock))
    assert set(stored(ctx)) == set(older + current)


def test_signpost_recorded_on_cursor(tq, make_ctx, clock):
    add_domains(tq, clock, 2, seconds_ago=10)
    ctx = make_ctx()
    pull(ctx, since(clock))
    assert cursor(ctx).signpost == clock.now()
    assert cursor(ctx).value["updated_at"] < format_tq_time(clock.now())


def test_since_used_only_for_first_run(tq, make_ctx, clock):
    add_domains(tq, clock, 2, seconds_ago=7200)
    ctx = make_ctx()
    pull(ctx, since(clock, hours=1))
    assert stored(ctx) == {}
    recent = add_domains(tq, clock, 1, seconds_ago=30, start=2)
    pull(ctx, since(clock, hours=24))
    assert set(stored(ctx)) == set(recent)


def test_restart_starts_at_since(tq, make_ctx, clock):
    old = add_domains(tq, clock, 2, seconds_ago=7200)
    ctx = make_ctx()
    pull(ctx, since(clock, hours=1))
    assert stored(ctx) == {}
    recent = add_domains(tq, clock, 1, seconds_ago=30, start=2)
    clock.advance(5)
    counts = pull(ctx, PullOptions(since=clock.now() - timedelta(hours=3), restart=True))
    assert set(stored(ctx)) == set(old) | set(recent)
    assert counts["indicators"] == 3
    assert cursor(ctx).value["updated_at"] == tq_stamps(tq, recent)[recent[0]]


def test_restart_rejected_for_collection(tq, make_ctx, clock):
    ctx = make_ctx()
    with pytest.raises(ConfigError, match="--restart applies to the updated-since pull"):
        pull(ctx, PullOptions(collection="7", restart=True))


def test_failed_restart_keeps_cursor(tq, make_ctx, clock):
    add_domains(tq, clock, 2, seconds_ago=600)
    pull(make_ctx(), since(clock))
    before = cursor(make_ctx()).value
    ctx = make_ctx(hooks={1: outage})
    with pytest.raises(ServiceUnavailableError):
        pull(ctx, PullOptions(since=clock.now() - timedelta(hours=3), restart=True))
    assert cursor(ctx).value == before


def test_restart_with_collection_is_usage_error(tmp_path):
    result = run_main(["--db", str(tmp_path / "state.db"), "sync", "pull", "--restart",
                       "--collection", "7"])
    assert result.exit_code == 2
    assert "--restart applies to the updated-since pull" in result.stderr


# -- pages and their cursor -----------------------------------------------------


def test_each_page_committed_with_cursor(tq, make_ctx, clock):
    ids = [tq.add_indicator(f"page{i}.example.net", "FQDN",
                            updated_at=clock.now() - timedelta(seconds=100 - i))
           for i in range(6)]
    ctx = make_ctx(hooks={3: outage})
    with pytest.raises(ServiceUnavailableError):
        pull(ctx, since(clock))
    assert set(stored(ctx)) == set(ids[:4])
    assert cursor(ctx).value == {"updated_at": tq.indicator(ids[3])["updated_at"],
                                 "id": ids[3], "ties": 1}


def test_interrupted_walk_resumes_without_repeat(tq, make_ctx, clock):
    ids = [tq.add_indicator(f"page{i}.example.net", "FQDN",
                            updated_at=clock.now() - timedelta(seconds=100 - i))
           for i in range(7)]
    with pytest.raises(ServiceUnavailableError):
        pull(make_ctx(hooks={3: outage}), since(clock))
    counts = pull(make_ctx(), since(clock))
    assert counts["indicators"] == 3
    assert set(stored(make_ctx())) == set(ids)


def test_change_during_scan_picked_up_next_run(tq, make_ctx, clock):
    ids = add_domains(tq, clock, 6, seconds_ago=60)

    def edit_and_add() -> None:
        clock.advance(0.2)
        tq.update_indicator(ids[0], description="edited during the scan")
        edit_and_add.added = tq.add_indicator("new.example.net", "FQDN")

    ctx = make_ctx(hooks={2: edit_and_add})
    pull(ctx, since(clock))
    assert edit_and_add.added not in stored(ctx)
    assert stored(ctx)[ids[0]] != tq.indicator(ids[0])["updated_at"]
    clock.advance(1)
    pull(make_ctx(), since(clock))
    assert stored(ctx) == tq_stamps(tq, ids + [edit_and_add.added])


def test_second_changed_between_runs(tq, make_ctx, clock):
    ids = add_domains(tq, clock, 5, seconds_ago=60)
    # The first run stops after one page, inside the second all five share.
    with pytest.raises(ServiceUnavailableError):
        pull(make_ctx(hooks={2: outage}), since(clock))
    ctx = make_ctx()
    assert set(stored(ctx)) == set(ids[:2])
    # One stored indicator of that second moves to a later second, so the stored
    # tie count no longer gives the offset of the next unstored one.
    tq.update_indicator(ids[0], description="edited", updated_at=clock.now() - timedelta(seconds=5))
    counts = pull(ctx, since(clock))
    assert stored(ctx) == tq_stamps(tq, ids)
    assert counts["indicators"] == 4


def test_cursor_second_indicator_moved(tq, make_ctx, clock):
    ids = add_domains(tq, clock, 5, seconds_ago=60)
    with pytest.raises(ServiceUnavailableError):
        pull(make_ctx(hooks={2: outage}), since(clock))
    # The cursor's own indicator (the last stored) leaves the second.
    tq.update_indicator(ids[1], description="edited", updated_at=clock.now() - timedelta(seconds=5))
    ctx = make_ctx()
    pull(ctx, since(clock))
    assert stored(ctx) == tq_stamps(tq, ids)


def test_types_restriction_has_own_cursor(tq, make_ctx, clock):
    domains = add_domains(tq, clock, 2, seconds_ago=60)
    address = tq.add_indicator("8.8.8.8", "IP Address",
                               updated_at=clock.now() - timedelta(seconds=60))
    ctx = make_ctx()
    pull(ctx, PullOptions(since=clock.now() - timedelta(hours=1), types=("IP Address",)))
    assert set(stored(ctx)) == {address}
    assert cursor(ctx, f"{UPDATED_SINCE}:IP Address") is not None
    assert cursor(ctx) is None
    pull(ctx, since(clock))
    assert set(stored(ctx)) == set(domains) | {address}


# -- collections ----------------------------------------------------------------


def collection(tq, clock, count: int) -> list[int]:
    ids = add_domains(tq, clock, count, seconds_ago=60)
    add_domains(tq, clock, 2, seconds_ago=60, start=100)  # not in the collection
    tq.add_collection("watch", ids)
    return ids


def test_collection_walked_completely(tq, make_ctx, clock):
    ids = collection(tq, clock, 7)
    ctx = make_ctx()
    counts = pull(ctx, PullOptions(collection="watch"))
    assert set(stored(ctx)) == set(ids)
    # Four pages hold the seven, and a fifth, empty one returns the mark unchanged.
    assert counts["pages"] == 5
    assert tq.requests.count("GET", "/api/indicators/query/hash/watch") == 5


def test_collection_cursor_after_walk(tq, make_ctx, clock):
    collection(tq, clock, 3)
    ctx = make_ctx()
    pull(ctx, PullOptions(collection="watch"))
    row = cursor(ctx, "collection:watch")
    assert row.page_token is None
    assert set(row.value) == {"completed_at"}


def test_collection_resumes_mid_walk(tq, make_ctx, clock):
    ids = collection(tq, clock, 7)
    with pytest.raises(ServiceUnavailableError):
        pull(make_ctx(hooks={3: outage}), PullOptions(collection="watch"))
    ctx = make_ctx()
    token = cursor(ctx, "collection:watch").page_token
    assert token not in (None, "*")
    assert set(stored(ctx)) == set(ids[:4])
    before = len(tq.requests)
    counts = pull(ctx, PullOptions(collection="watch"))
    marks = [r.query.get("cursorMark") for r in tq.requests.snapshot()[before:]
             if r.path.startswith("/api/indicators/query/hash/")]
    assert marks[0] == token
    assert counts["indicators"] == 3
    assert set(stored(ctx)) == set(ids)


def test_collection_walked_again_next_run(tq, make_ctx, clock):
    ids = collection(tq, clock, 3)
    ctx = make_ctx()
    pull(ctx, PullOptions(collection="watch"))
    assert pull(ctx, PullOptions(collection="watch"))["indicators"] == len(ids)


# -- values files ---------------------------------------------------------------


def watchlist(tmp_path, values: list[str]) -> str:
    path = tmp_path / "watchlist.txt"
    path.write_text("# SOC watchlist\n\n" + "\n".join(values) + "\n" + values[0] + "\n")
    return str(path)


def values_setup(tq, clock, tmp_path, held: int, missing: int) -> tuple[list[int], str]:
    ids = add_domains(tq, clock, held, seconds_ago=60)
    values = [f"host{i}.example.net" for i in range(held)]
    values += [f"absent{i}.example.org" for i in range(missing)]
    return ids, watchlist(tmp_path, values)


def query_requests(tq) -> int:
    return tq.requests.count("POST", "/api/indicators/query")


def test_values_file_one_query_per_batch(tq, make_ctx, clock, tmp_path):
    ids, path = values_setup(tq, clock, tmp_path, held=120, missing=130)
    ctx = make_ctx(page_size=500)
    counts = pull(ctx, PullOptions(values_file=path))
    assert query_requests(tq) == 3
    assert set(stored(ctx)) == set(ids)
    assert counts["indicators"] == 120


def test_values_file_counts_missing(tq, make_ctx, clock, tmp_path):
    _, path = values_setup(tq, clock, tmp_path, held=120, missing=130)
    counts = pull(make_ctx(page_size=500), PullOptions(values_file=path))
    assert counts["not_in_threatq"] == 130


def test_values_file_creates_no_indicator(tq, make_ctx, clock, tmp_path):
    _, path = values_setup(tq, clock, tmp_path, held=5, missing=5)
    before = [(i["id"], i["value"]) for i in tq.indicators()]
    pull(make_ctx(), PullOptions(values_file=path))
    assert [(i["id"], i["value"]) for i in tq.indicators()] == before
    assert tq.requests.count("POST", "/api/indicators/consume") == 0


def test_values_file_batch_is_one_or_query(tq, make_ctx, clock, tmp_path):
    _, path = values_setup(tq, clock, tmp_path, held=3, missing=2)
    captured: list[Any] = []
    ctx = make_ctx(page_size=500)
    real = ctx.threatq_factory

    class Recording(InterruptedClient):
        def fetch_indicator_page(self, criteria, *args, **kwargs):
            captured.append(criteria)
            return self.client.fetch_indicator_page(criteria, *args, **kwargs)

    ctx.threatq_factory = lambda: Recording(real(), {})
    pull(ctx, PullOptions(values_file=path))
    assert captured == [{"+or": [{"value": f"host{i}.example.net"} for i in range(3)]
                         + [{"value": f"absent{i}.example.org"} for i in range(2)]}]


def test_values_file_resumes_at_batch(tq, make_ctx, clock, tmp_path):
    ids, path = values_setup(tq, clock, tmp_path, held=250, missing=0)
    with pytest.raises(ServiceUnavailableError):
        pull(make_ctx(hooks={2: outage}, page_size=500), PullOptions(values_file=path))
    ctx = make_ctx(page_size=500)
    assert len(stored(ctx)) == VALUES_BATCH
    before = query_requests(tq)
    pull(ctx, PullOptions(values_file=path))
    assert query_requests(tq) - before == 2
    assert set(stored(ctx)) == set(ids)


def test_values_file_cursor_when_done(tq, make_ctx, clock, tmp_path):
    _, path = values_setup(tq, clock, tmp_path, held=3, missing=1)
    ctx = make_ctx()
    pull(ctx, PullOptions(values_file=path))
    with ctx.sessions() as session:
        rows = [r for r in session.execute(select(Cursor)).scalars()
                if r.name.startswith("values:")]
    assert [(r.page_token, r.value["values"]) for r in rows] == [(None, 4)]


# -- instances that reject the updated_at filter ----------------------------------


@pytest.fixture
def strict_tq(clock):
    with ThreatQSimulator(clock, reject_updated_at_filter=True) as simulator:
        yield simulator


def test_fallback_scan_stores_window(strict_tq, make_ctx, clock):
    old = add_domains(strict_tq, clock, 2, seconds_ago=7200)
    recent = add_domains(strict_tq, clock, 5, seconds_ago=60, start=2)
    current = add_domains(strict_tq, clock, 1, seconds_ago=0, start=7)
    ctx = make_ctx(threatq=strict_tq)
    pull(ctx, since(clock))
    assert set(recent) <= set(stored(ctx))
    assert not set(old) & set(stored(ctx))
    clock.advance(1)
    pull(ctx, since(clock))
    assert set(stored(ctx)) == set(recent + current)


def test_fallback_cursor_moves_to_newest(strict_tq, make_ctx, clock):
    recent = add_domains(strict_tq, clock, 3, seconds_ago=60)
    ctx = make_ctx(threatq=strict_tq)
    pull(ctx, since(clock))
    row = cursor(ctx)
    assert row.value["updated_at"] == strict_tq.indicator(recent[0])["updated_at"]
    assert row.page_token is None


def test_fallback_next_run_reads_new_only(strict_tq, make_ctx, clock):
    add_domains(strict_tq, clock, 3, seconds_ago=60)
    ctx = make_ctx(threatq=strict_tq)
    pull(ctx, since(clock))
    clock.advance(10)
    newer = add_domains(strict_tq, clock, 2, seconds_ago=5, start=3)
    counts = pull(ctx, since(clock))
    assert set(newer) <= set(stored(ctx))
    # The cursor's own second is read again (>=), so its indicators count once more.
    assert counts["indicators"] == 2 + 3


def test_fallback_interrupted_scan_resumes(strict_tq, make_ctx, clock):
    ids = [strict_tq.add_indicator(f"scan{i}.example.net", "FQDN",
                                   updated_at=clock.now() - timedelta(seconds=100 - i))
           for i in range(7)]
    # Page request 1 is the rejected filtered query; the scan pages follow.
    with pytest.raises(ServiceUnavailableError):
        pull(make_ctx(hooks={4: outage}, threatq=strict_tq), since(clock))
    ctx = make_ctx(threatq=strict_tq)
    assert cursor(ctx).page_token == "4"
    pull(ctx, since(clock))
    assert set(stored(ctx)) == set(ids)
    assert cursor(ctx).value["updated_at"] == strict_tq.indicator(ids[-1])["updated_at"]


def test_fallback_used_after_rejection(strict_tq, make_ctx, clock):
    add_domains(strict_tq, clock, 1, seconds_ago=60)
    pull(make_ctx(threatq=strict_tq), since(clock))
    statuses = [r.status for r in strict_tq.requests if r.path == "/api/indicators/query"]
    assert statuses == [400, 200]


def test_cursor_value_is_json(tq, make_ctx, clock):
    add_domains(tq, clock, 2, seconds_ago=60)
    ctx = make_ctx()
    pull(ctx, since(clock))
    assert json.loads(json.dumps(cursor(ctx).value)) == cursor(ctx).value
