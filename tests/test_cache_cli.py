"""The VirusTotal response cache: TTLs, shared entries, `tqvt cache report` and `purge`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from quota_support import identifier_of, item, lookup_bench, sha256_value
from tqvt_sync.cli.cache import cache
from tqvt_sync.cli.main import cli
from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.clock import FakeClock
from tqvt_sync.db.models import VtAlias, VtObject
from tqvt_sync.sandbox import QuotaPlan
from tqvt_sync.stages.cache import find_object
from tqvt_sync.stages.lookup import lookup

START = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
PLAN = QuotaPlan(minute=100, hourly=6000, daily=10_000, monthly=None)
FOUND = sha256_value("cache-found")
MISSING = sha256_value("cache-missing")
URL_SLASH = "http://example.com/b/"
URL_BARE = "http://example.com/b"
HELP_OPTION_NAMES = cli.context_settings["help_option_names"]


def invoke_cache(bench, *args: str):
    runtime = Runtime(options={}, settings_override=bench.ctx.settings, clock=bench.clock)
    try:
        # The top-level group's help names are passed on, because click caches each
        # command's help option the first time it builds one.
        return CliRunner().invoke(cache, list(args), obj=runtime, catch_exceptions=False,
                                  help_option_names=HELP_OPTION_NAMES)
    finally:
        runtime.close()


def count_rows(bench, model) -> int:
    with bench.ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def expires_at(bench, type_name: str, value: str, kind: str = "file") -> datetime:
    with bench.ctx.sessions() as session:
        return find_object(session, kind, identifier_of(type_name, value)).expires_at


# -- TTLs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ttl_steps(tmp_path_factory):
    """Look up one found and one not-found hash, then rerun at points around both TTLs."""
    clock = FakeClock(START)
    with lookup_bench(tmp_path_factory.mktemp("ttl"), clock, PLAN) as bench:
        bench.vt.mark_not_found("file", MISSING)
        bench.queue([item(1, FOUND), item(2, MISSING)])
        result = {"calls": [], "requested": []}
        offsets = [timedelta(0), timedelta(days=1, seconds=-1), timedelta(days=1, seconds=1),
                   timedelta(days=7, seconds=1)]
        for offset in offsets:
            clock.set(START + offset)
            done = len(bench.object_requests())
            lookup(bench.ctx)
            requested = [ident for _, ident in bench.object_requests()[done:]]
            result["calls"].append(len(requested))
            result["requested"].append(requested)
            if offset == timedelta(0):
                result["found_expiry"] = expires_at(bench, "SHA-256", FOUND)
                result["missing_expiry"] = expires_at(bench, "SHA-256", MISSING)
        result["entries"] = count_rows(bench, VtObject)
        yield result


def test_found_entry_lives_seven_days(ttl_steps):
    assert ttl_steps["found_expiry"] == START + timedelta(days=7)


def test_not_found_entry_lives_one_day(ttl_steps):
    assert ttl_steps["missing_expiry"] == START + timedelta(days=1)


def test_fresh_entries_cost_no_call(ttl_steps):
    assert ttl_steps["calls"][1] == 0


def test_expired_not_found_looked_up_again(ttl_steps):
    assert ttl_steps["requested"][2] == [MISSING]


def test_expired_found_looked_up_again(ttl_steps):
    assert sorted(ttl_steps["requested"][3]) == sorted([FOUND, MISSING])


def test_relookup_refreshes_same_entry(ttl_steps):
    assert ttl_steps["entries"] == 2


def test_ttl_settings_apply(tmp_path, clock):
    with lookup_bench(tmp_path, clock, PLAN, cache_ttl=timedelta(hours=12),
                      not_found_ttl=timedelta(hours=2)) as bench:
        bench.vt.mark_not_found("file", MISSING)
        bench.queue([item(1, FOUND), item(2, MISSING)])
        lookup(bench.ctx)
        expiries = (expires_at(bench, "SHA-256", FOUND), expires_at(bench, "SHA-256", MISSING))
    assert expiries == (START + timedelta(hours=12), START + timedelta(hours=2))


# -- shared entries, counters and the report ------------------------------------------------


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Five objects, two duplicate spellings, a second URL spelling and two cache hits."""
    clock = FakeClock(START)
    with lookup_bench(tmp_path_factory.mktemp("report"), clock, PLAN) as bench:
        vt = bench.vt
        vt.add_generated("file", FOUND, malicious=6)
        vt.mark_not_found("file", MISSING)
        # VirusTotal resolves both spellings of the URL to one object.
        document = vt.add_generated("url", URL_SLASH, harmless=50, undetected=10)
        vt.add_object("url", URL_BARE, document)
        vt.add_generated("domain", "suspicious.example.org", suspicious=2, harmless=0)
        vt.add_generated("ip_address", "8.8.4.4", malicious=0, harmless=0)
        bench.queue([
            item(1, FOUND), item(2, FOUND.upper()), item(3, MISSING),
            item(4, URL_SLASH, "URL"), item(5, "hxxp://EXAMPLE[.]com/b/", "URL"),
            item(6, "suspicious.example.org", "FQDN"), item(7, "8.8.4.4", "IP Address"),
        ])
        lookup(bench.ctx)
        result = {"first_run_calls": len(bench.object_requests())}
        clock.advance(3600)
        bench.queue([item(8, URL_BARE, "URL")])
        lookup(bench.ctx)
        result["second_spelling_calls"] = len(bench.object_requests()) - 5
        clock.advance(3600)
        bench.queue([item(9, "HTTP://example.com/b", "URL"), item(10, FOUND.upper())])
        lookup(bench.ctx)
        result["hit_run_calls"] = len(bench.object_requests()) - 6
        result["aliases"] = count_rows(bench, VtAlias)
        result["json"] = json.loads(invoke_cache(bench, "report", "--json").output)
        result["text"] = invoke_cache(bench, "report").output
        clock.set(START + timedelta(days=1, seconds=1))
        result["json_later"] = json.loads(invoke_cache(bench, "report", "--json").output)
        result["purge"] = invoke_cache(bench, "purge").output
        result["after_purge"] = json.loads(invoke_cache(bench, "report", "--json").output)
        result["purge_all"] = invoke_cache(bench, "purge", "--all").output
        result["after_purge_all"] = json.loads(invoke_cache(bench, "report", "--json").output)
        result["aliases_after_purge_all"] = count_rows(bench, VtAlias)
        yield result


def test_duplicate_spellings_cost_one_call(reported):
    assert reported["first_run_calls"] == 5


def test_second_url_spelling_costs_one_call(reported):
    assert reported["second_spelling_calls"] == 1


def test_second_url_spelling_shares_entry(reported):
    assert reported["json"]["by_kind"]["url"] == 1


def test_known_spellings_served_from_cache(reported):
    assert reported["hit_run_calls"] == 0


def test_report_counts_entries(reported):
    report = reported["json"]
    assert (report["entries"], report["fresh"], report["expired"], report["not_found"]) == (
        5, 5, 0, 1)


def test_report_counts_by_kind(reported):
    assert reported["json"]["by_kind"] == {"file": 2, "url": 1, "domain": 1, "ip_address": 1}


def test_report_counts_hits_and_misses(reported):
    assert (reported["json"]["hits"], reported["json"]["misses"]) == (2, 6)


def test_report_hit_rate(reported):
    assert reported["json"]["hit_rate"] == 0.25


def test_report_calls_saved(reported):
    # Two duplicate spellings in the first run and two cache hits in the third.
    assert reported["json"]["vt_calls_saved"] == 4


def test_report_json_has_spec_keys(reported):
    keys = {"entries", "fresh", "expired", "not_found", "by_kind", "hits", "misses",
            "hit_rate", "vt_calls_saved"}
    assert keys <= set(reported["json"])


def test_report_verdict_histogram(reported):
    assert reported["json"]["verdict_histogram"] == {
        "malicious": 1, "suspicious": 1, "harmless": 1, "undetected": 1, "not found": 1}


def test_report_age_histogram(reported):
    assert reported["json"]["age_histogram"] == {
        "< 1 h": 0, "< 1 d": 5, "< 7 d": 0, "< 30 d": 0, ">= 30 d": 0}


def test_report_text_summary(reported):
    assert "hits        2, misses 6, hit rate 25.0%" in reported["text"]


def test_report_text_histogram_bars(reported):
    assert re.search(r"^  not found\s+1 #+$", reported["text"], re.MULTILINE)


def test_report_marks_expired(reported):
    later = reported["json_later"]
    assert (later["fresh"], later["expired"]) == (4, 1)


def test_purge_removes_expired(reported):
    assert reported["purge"].strip() == "Deleted 1 cache entry."


def test_purge_keeps_fresh(reported):
    assert (reported["after_purge"]["entries"], reported["after_purge"]["not_found"]) == (4, 0)


def test_purge_all_removes_every_entry(reported):
    assert reported["after_purge_all"]["entries"] == 0


def test_purge_all_removes_aliases(reported):
    assert reported["aliases_after_purge_all"] == 0
