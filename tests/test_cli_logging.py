"""Logs of `tqvt sync run`, run as a subprocess against the simulators.

One run uses --log-format json with four lookup threads and one injected VirusTotal 503,
and its stderr is parsed line by line. A second run, of the FQDN indicators only, uses
--quiet with another injected 503. The in-process tests
cover how the stage context reaches records from worker threads.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import sim_env, vt_object_calls

from tqvt_sync.logs import (
    bind_run_context,
    current_run_context,
    log_event,
    run_context,
    setup_logging,
)
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.sandbox.seed import seed_demo

PLAN = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)
STAGES = ("pull", "lookup", "push")
CORE_KEYS = ("time", "level", "logger", "event")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tqvt_sync", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("logging")
    with running_simulators(vt_plan=PLAN) as (tq, vt):
        seeded = seed_demo(tq, vt)
        vt.faults.inject("status", method="GET", path=r"^/api/v3/(files|urls|domains)/",
                         status=503, times=1)
        env = sim_env(tq, vt, str(workdir / "json.db"), TQVT_VT_CONCURRENCY="4")
        json_run = run_cli(env, "--log-format", "json", "sync", "run", "--since", "3650d")
        vt_calls = vt_object_calls(vt)
        vt.faults.inject("status", method="GET", path=r"^/api/v3/(files|urls|domains)/",
                         status=503, times=1)
        env = sim_env(tq, vt, str(workdir / "quiet.db"))
        quiet_run = run_cli(env, "--quiet", "sync", "run", "--since", "3650d", "--types", "FQDN")
    events = [json.loads(line) for line in json_run.stderr.splitlines()]
    yield {"json": json_run, "events": events, "vt_calls": vt_calls, "quiet": quiet_run,
           "seeded": seeded}


def stage_event(events: list[dict], stage: str, suffix: str) -> dict:
    matches = [e for e in events if e["event"] == f"{stage} {suffix}"]
    assert len(matches) == 1, f"{stage} {suffix}: {matches}"
    return matches[0]


# --- JSON lines --------------------------------------------------------------------------


def test_json_run_exits_zero(runs):
    assert runs["json"].returncode == 0, runs["json"].stderr


def test_json_every_line_is_an_object(runs):
    lines = runs["json"].stderr.splitlines()
    assert lines, "no log line written"
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_json_every_line_has_core_keys(runs):
    for event in runs["events"]:
        assert all(key in event for key in CORE_KEYS), event


@pytest.mark.parametrize("stage", STAGES)
def test_json_stage_start_event(runs, stage):
    started = stage_event(runs["events"], stage, "started")
    assert started["level"] == "INFO"
    assert started["stage"] == stage
    assert len(started["run_id"]) == 36


@pytest.mark.parametrize("stage", STAGES)
def test_json_stage_end_event(runs, stage):
    started = stage_event(runs["events"], stage, "started")
    finished = stage_event(runs["events"], stage, "finished")
    assert finished["stage"] == stage
    assert finished["run_id"] == started["run_id"]
    assert finished["outcome"] == "ok"
    assert isinstance(finished["duration_s"], float)
    assert finished["duration_s"] >= 0
    assert isinstance(finished["counts"], dict)
    assert all(isinstance(value, int) for value in finished["counts"].values())


def test_json_run_ids_differ_per_stage(runs):
    run_ids = {stage_event(runs["events"], stage, "started")["run_id"] for stage in STAGES}
    assert len(run_ids) == 3


def test_json_pull_counts(runs):
    counts = stage_event(runs["events"], "pull", "finished")["counts"]
    assert counts["indicators"] == runs["seeded"]["total"]


def test_json_lookup_counts_calls(runs):
    counts = stage_event(runs["events"], "lookup", "finished")["counts"]
    assert counts["calls"] == runs["vt_calls"]


def test_json_push_counts_match_stdout(runs):
    counts = stage_event(runs["events"], "push", "finished")["counts"]
    summary = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items())
    assert f"push: {summary}" in runs["json"].stdout.splitlines()


def test_json_lines_inside_stage_carry_run_id(runs):
    events = runs["events"]
    for stage in STAGES:
        started = stage_event(events, stage, "started")
        first, last = events.index(started), events.index(stage_event(events, stage, "finished"))
        for event in events[first:last + 1]:
            assert event.get("stage") == stage, event
            assert event.get("run_id") == started["run_id"], event


def test_json_retry_event(runs):
    retries = [e for e in runs["events"] if e["event"] == "VirusTotal call failed; retrying"]
    lookup_run = stage_event(runs["events"], "lookup", "started")["run_id"]
    assert len(retries) == 1
    retry = retries[0]
    assert retry["level"] == "WARNING"
    assert retry["stage"] == "lookup"
    assert retry["run_id"] == lookup_run
    assert retry["status"] == 503
    assert retry["attempt"] == 1
    assert retry["indicator_ids"]
    assert all(isinstance(item, int) for item in retry["indicator_ids"])


# --- --quiet -----------------------------------------------------------------------------


def test_quiet_run_exits_zero(runs):
    assert runs["quiet"].returncode == 0, runs["quiet"].stderr


def test_quiet_has_no_info_line(runs):
    lines = runs["quiet"].stderr.splitlines()
    assert [line for line in lines if " INFO " in line] == []


def test_quiet_keeps_warnings(runs):
    lines = runs["quiet"].stderr.splitlines()
    assert any(" WARNING tqvt_sync.stages.lookup: VirusTotal call failed; retrying " in line
               for line in lines), lines


def test_quiet_prints_no_summary(runs):
    assert runs["quiet"].stdout == ""


# --- the stage context in-process --------------------------------------------------------


@pytest.fixture
def json_stream():
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    yield stream
    logger = logging.getLogger("tqvt_sync")
    for handler in [h for h in logger.handlers if getattr(h, "tqvt", False)]:
        logger.removeHandler(handler)


def logged(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_added_to_records(json_stream):
    logger = logging.getLogger("tqvt_sync.test")
    with run_context(stage="pull", run_id="r-1"):
        logger.info("inside")
    logger.info("outside")

    inside, outside = logged(json_stream)
    assert (inside["stage"], inside["run_id"]) == ("pull", "r-1")
    assert "stage" not in outside


def test_record_field_wins_over_context(json_stream):
    with run_context(stage="pull"):
        log_event(logging.getLogger("tqvt_sync.test"), logging.INFO, "own", stage="lookup")

    assert logged(json_stream)[0]["stage"] == "lookup"


def test_context_reaches_bound_worker_threads(json_stream):
    logger = logging.getLogger("tqvt_sync.test")
    with run_context(stage="lookup", run_id="r-2"):
        pool = ThreadPoolExecutor(2, initializer=bind_run_context,
                                  initargs=(current_run_context(),))
        with pool:
            list(pool.map(lambda n: logger.info("worker %d", n), range(2)))

    records = logged(json_stream)
    assert len(records) == 2
    assert all(r["run_id"] == "r-2" for r in records)


def test_context_absent_in_unbound_thread(json_stream):
    logger = logging.getLogger("tqvt_sync.test")
    with run_context(stage="lookup"):
        thread = threading.Thread(target=logger.info, args=("plain thread",))
        thread.start()
        thread.join()

    assert "stage" not in logged(json_stream)[0]
