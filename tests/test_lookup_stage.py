"""The lookup and rescore stages in-process against the simulators on a fake clock."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from support import sim_settings, stage_context, vt_object_calls

from tqvt_sync.db.models import Indicator, OutboxEntry
from tqvt_sync.errors import AuthenticationError, ServiceUnavailableError
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.rescore import rescore

PLAN = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)
HASH_A = "a" * 64
HASH_B = "b" * 64
HASH_C = "c" * 64


@pytest.fixture
def sims(clock):
    with running_simulators(clock=clock, vt_plan=PLAN) as (tq, vt):
        yield tq, vt


@pytest.fixture
def make_ctx(sims, db_url, tmp_path, clock):
    tq, vt = sims

    def build(**overrides):
        settings = sim_settings(tq, vt, db_url, str(tmp_path), **overrides)
        return stage_context(settings, clock)

    return build


def pulled(ctx, clock):
    pull(ctx, PullOptions(since=clock.now() - timedelta(days=1)))


def seed_hashes(tq, vt, clock):
    vt.add_generated("file", HASH_A, malicious=12)
    vt.add_generated("file", HASH_B, harmless=3, undetected=60)
    vt.add_generated("file", HASH_C, suspicious=4)
    ids = [tq.add_indicator(value, "SHA-256") for value in (HASH_A, HASH_B, HASH_C)]
    clock.advance(5)
    return ids


def outbox_rows(ctx):
    with ctx.sessions() as session:
        return list(session.execute(select(OutboxEntry).order_by(OutboxEntry.id)).scalars())


def test_lookup_forbidden_object_continues(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    vt.faults.inject("status", path=HASH_A, status=403)
    ctx = make_ctx()
    pulled(ctx, clock)
    counts = lookup(ctx)
    assert counts["errors"] == 1
    assert counts["identifiers"] == 2
    with ctx.sessions() as session:
        row = session.execute(select(Indicator).where(Indicator.identifier == HASH_A)).scalar_one()
    assert "403" in (row.reason or "") or "Forbidden" in (row.reason or "")
    assert row.next_lookup_at > clock.now()


def test_lookup_retries_transient_errors(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    vt.faults.inject("status", path=HASH_B, status=503, times=2)
    ctx = make_ctx()
    pulled(ctx, clock)
    counts = lookup(ctx)
    assert counts["identifiers"] == 3
    assert counts["calls"] == 5


def test_lookup_gives_up_after_repeated_failures(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    vt.faults.inject("html", path="/files/", status=502)
    ctx = make_ctx()
    pulled(ctx, clock)
    with pytest.raises(ServiceUnavailableError):
        lookup(ctx)
    assert len(outbox_rows(ctx)) == 0


def test_lookup_wrong_key_is_authentication_error(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx(vt_api_key="not-a-valid-key")
    pulled(ctx, clock)
    with pytest.raises(AuthenticationError, match="VT_API_KEY"):
        lookup(ctx)


def test_lookup_duplicate_identifiers_cost_one_call(sims, make_ctx, clock):
    tq, vt = sims
    vt.add_generated("file", HASH_A, malicious=2)
    tq.add_indicator(HASH_A.upper(), "SHA-256")
    tq.add_indicator(f" {HASH_A}\n", "SHA-256")
    tq.add_indicator(HASH_A, "SHA-256")
    clock.advance(5)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    assert vt_object_calls(vt) == 1
    assert len(outbox_rows(ctx)) == 3


def test_lookup_other_hashes_of_file_cost_nothing(sims, make_ctx, clock):
    tq, vt = sims
    document = vt.add_generated("file", HASH_A, malicious=2)
    hashes = document["data"]["attributes"]
    # The SHA-256 has the highest score, so it is looked up first.
    tq.add_indicator(HASH_A, "SHA-256", score=9)
    tq.add_indicator(hashes["md5"], "MD5", score=5)
    tq.add_indicator(hashes["sha1"], "SHA-1", score=1)
    clock.advance(5)
    ctx = make_ctx()
    pulled(ctx, clock)
    counts = lookup(ctx)
    assert vt_object_calls(vt) == 1
    assert counts["cache_hits"] == 2
    assert len(outbox_rows(ctx)) == 3


def test_lookup_unsupported_and_invalid_cost_nothing(sims, make_ctx, clock):
    tq, vt = sims
    tq.add_indicator("0" * 128, "SHA-512")
    tq.add_indicator("abc", "MD5")
    tq.add_indicator("192.168.1.1", "IP Address")
    clock.advance(5)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    assert vt_object_calls(vt) == 0


def test_lookup_second_run_uses_cache(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    before = vt_object_calls(vt)
    tq.add_indicator(HASH_A.upper(), "SHA-256")
    clock.advance(5)
    pulled(ctx, clock)
    counts = lookup(ctx)
    assert vt_object_calls(vt) == before
    assert counts["cache_hits"] == 1


def test_lookup_expired_cache_calls_again(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    before = vt_object_calls(vt)
    clock.advance(timedelta(days=8).total_seconds())
    lookup(ctx)
    assert vt_object_calls(vt) == before + 3


def test_lookup_unchanged_verdict_queues_nothing(sims, make_ctx, clock):
    from tqvt_sync.stages.push import push

    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    push(ctx)
    clock.advance(timedelta(days=8).total_seconds())
    lookup(ctx)
    waiting = [row for row in outbox_rows(ctx) if row.status in ("new", "failed")]
    assert waiting == []


def test_rescore_queues_only_changes(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    calls = vt_object_calls(vt)
    scores = dict(ctx.settings.scores, **{"malicious/high": 8})
    rescored = make_ctx(scores=scores)
    counts = rescore(rescored)
    assert counts["changed"] == 1
    assert vt_object_calls(vt) == calls


def test_rescore_rewrites_waiting_row(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    scores = dict(ctx.settings.scores, **{"malicious/high": 8})
    rescore(make_ctx(scores=scores))
    rows = outbox_rows(ctx)
    assert len(rows) == 3
    scored = [row.desired["attributes"].get("VirusTotal Score") for row in rows]
    assert "8" in scored


def test_rescore_premium_adds_attributes(sims, make_ctx, clock):
    tq, vt = sims
    tq.add_indicator("4bc00f7d638e042da764e8648c03c0db46f2e7ba9b6f1f26a1a4b4ab93aa519b", "SHA-256")
    clock.advance(5)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    counts = rescore(make_ctx(vt_private_key=True))
    assert counts["changed"] == 1
    desired = outbox_rows(ctx)[0].desired["attributes"]
    assert "VirusTotal YARA Rules" in desired


def test_lookup_indicator_counts(sims, make_ctx, clock):
    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx()
    pulled(ctx, clock)
    lookup(ctx)
    with ctx.sessions() as session:
        looked_up = session.scalar(select(func.count()).select_from(Indicator)
                                   .where(Indicator.status == "looked_up"))
    assert looked_up == 3


def test_settings_replace_keeps_types(make_ctx):
    ctx = make_ctx()
    copy = dataclasses.replace(ctx.settings, write_score=True)
    assert copy.types == ctx.settings.types


def test_lookup_reserve_not_below_daily_limit(sims, make_ctx, clock):
    from tqvt_sync.errors import ConfigError

    tq, vt = sims
    seed_hashes(tq, vt, clock)
    ctx = make_ctx(daily_reserve=PLAN.daily)
    pulled(ctx, clock)
    with pytest.raises(ConfigError, match="TQVT_DAILY_RESERVE"):
        lookup(ctx)
    assert vt_object_calls(vt) == 0
