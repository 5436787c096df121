"""`tqvt sync lookup` and `sync run` on a spent quota, with --wait, and the progress line."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from quota_support import item, lookup_bench, sha256_value
from support import sim_env
from tqvt_sync.cli.main import cli
from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.cli.sync import format_progress, sync
from tqvt_sync.clock import FakeClock, SystemClock
from tqvt_sync.errors import EXIT_TEMPORARY, QuotaExhaustedError
from tqvt_sync.quota import next_midnight
from tqvt_sync.reports import status_report
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan

START = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
GENEROUS = QuotaPlan(minute=1000, hourly=None, daily=None, monthly=None)


def tqvt(*args: str) -> list[str]:
    return [sys.executable, "-m", "tqvt_sync", *args]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tqvt(*args), env=env, capture_output=True, text=True, timeout=60)


def queue_files(bench, count: int, prefix: str) -> None:
    bench.queue(item(i + 1, sha256_value(f"{prefix}-{i}")) for i in range(count))


# -- exit 75 on a daily 429, and a rerun before the reset ------------------------------------


@pytest.fixture(scope="module")
def daily_spent_cli(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli75")
    plan = QuotaPlan(minute=1000, hourly=None, daily=5, monthly=None)
    with lookup_bench(workdir, SystemClock(), plan) as bench:
        queue_files(bench, 8, "cli75")
        env = sim_env(bench.tq, bench.vt, str(workdir / "state.db"),
                      TQVT_DAILY_LIMIT="1000", TQVT_MINUTE_LIMIT="1000")
        reset = next_midnight(datetime.now(UTC))
        first = run_cli(env, "sync", "lookup")
        requests_before = len(bench.vt.requests.snapshot())
        rerun = run_cli(env, "sync", "lookup")
        with bench.ctx.sessions() as session:
            status = status_report(session, api_key=DEFAULT_API_KEY, reserve=0,
                                   now=datetime.now(UTC))
        yield {
            "reset": reset, "first": first, "rerun": rerun,
            "rerun_requests": len(bench.vt.requests.snapshot()) - requests_before,
            "status": status,
        }


def test_daily_429_exits_75(daily_spent_cli):
    assert daily_spent_cli["first"].returncode == EXIT_TEMPORARY, daily_spent_cli["first"].stderr


def test_daily_429_message_gives_utc_reset(daily_spent_cli):
    reset = daily_spent_cli["reset"].strftime("%Y-%m-%d %H:%M")
    assert f"rerun after {reset} UTC" in daily_spent_cli["first"].stderr


def test_daily_429_message_gives_local_reset(daily_spent_cli):
    local = daily_spent_cli["reset"].astimezone().strftime("%Y-%m-%d %H:%M")
    assert f"({local} " in daily_spent_cli["first"].stderr


def test_daily_429_prints_counts(daily_spent_cli):
    assert daily_spent_cli["first"].stdout.startswith("lookup: identifiers 5, indicators 5, "
                                                      "calls 6,")


def test_blocked_rerun_exits_75(daily_spent_cli):
    assert daily_spent_cli["rerun"].returncode == EXIT_TEMPORARY


def test_blocked_rerun_sends_no_request(daily_spent_cli):
    assert daily_spent_cli["rerun_requests"] == 0


def test_status_shows_blocked_until(daily_spent_cli):
    expected = daily_spent_cli["reset"].isoformat().replace("+00:00", "Z")
    assert daily_spent_cli["status"]["quota"]["blocked_until"] == expected


# -- --wait, in process on a FakeClock ---------------------------------------------------------


def invoke_sync(bench, *args: str):
    runtime = Runtime(options={}, settings_override=bench.ctx.settings, clock=bench.clock)
    try:
        # The top-level group's help names are passed on, because click caches each
        # command's help option the first time it builds one.
        return CliRunner().invoke(sync, list(args), obj=runtime,
                                  help_option_names=cli.context_settings["help_option_names"])
    finally:
        runtime.close()


def test_lookup_without_wait_stops(tmp_path):
    plan = QuotaPlan(minute=4, hourly=240, daily=3, monthly=None)
    with lookup_bench(tmp_path, FakeClock(START), plan) as bench:
        queue_files(bench, 5, "nowait")
        result = invoke_sync(bench, "lookup")
    assert isinstance(result.exception, QuotaExhaustedError)


def test_lookup_wait_sleeps_through_reset(tmp_path):
    plan = QuotaPlan(minute=4, hourly=240, daily=3, monthly=None)
    with lookup_bench(tmp_path, FakeClock(START), plan) as bench:
        queue_files(bench, 5, "wait")
        result = invoke_sync(bench, "lookup", "--wait")
        days = [moment.date().isoformat() for moment in bench.accepted()]
    assert result.exit_code == 0, result.output
    assert days == ["2026-01-05"] * 3 + ["2026-01-06"] * 2


def test_run_wait_sleeps_through_reset(tmp_path):
    plan = QuotaPlan(minute=4, hourly=240, daily=3, monthly=None)
    with lookup_bench(tmp_path, FakeClock(START), plan) as bench:
        ids = [bench.tq.add_indicator(sha256_value(f"run-{i}"), "SHA-256",
                                      updated_at=START - timedelta(hours=1)) for i in range(5)]
        result = invoke_sync(bench, "run", "--wait", "--since", "2026-01-04")
        enriched = [any(a["name"] == "VirusTotal Verdict" for a in bench.tq.attributes_of(i))
                    for i in ids]
        days = [moment.date().isoformat() for moment in bench.accepted()]
    assert result.exit_code == 0, result.output
    assert enriched == [True] * 5
    assert days == ["2026-01-05"] * 3 + ["2026-01-06"] * 2


# -- the progress line -------------------------------------------------------------------------


@pytest.fixture
def paced_env(tmp_path):
    """Five due indicators and a minute limit of 2, so the third call waits for the window."""
    with lookup_bench(tmp_path, SystemClock(), GENEROUS) as bench:
        queue_files(bench, 5, "progress")
        env = sim_env(bench.tq, bench.vt, str(tmp_path / "state.db"),
                      TQVT_MINUTE_LIMIT="2", TQVT_DAILY_LIMIT="500")
        yield bench, env


def read_pty_until(fd: int, marker: bytes, timeout: float) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    return output


def test_progress_line_on_terminal(paced_env):
    _, env = paced_env
    master, slave = pty.openpty()
    process = subprocess.Popen(tqvt("sync", "lookup"), env=env, stdin=slave, stdout=slave,
                               stderr=slave, close_fds=True)
    os.close(slave)
    try:
        output = read_pty_until(master, b"next call at", timeout=30)
        process.send_signal(signal.SIGTERM)
        output += read_pty_until(master, b"\x00", timeout=10)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert "\rlookup: 2/5 indicators, 2 calls, 498 calls left today, next call at " in text


def test_no_progress_line_without_terminal(paced_env):
    bench, env = paced_env
    process = subprocess.Popen(tqvt("sync", "lookup"), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(bench.vt.accepted_calls(DEFAULT_API_KEY)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the third call is now waiting for the minute window
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert len(bench.vt.accepted_calls(DEFAULT_API_KEY)) == 2
    assert "calls left today" not in stderr
    assert "\r" not in stderr


def test_progress_format_during_quota_wait():
    reset = datetime(2026, 1, 6, tzinfo=UTC)
    event = {"event": "quota_wait", "indicators": 3, "calls": 3, "calls_left_today": 0,
             "next_call_at": reset}
    local = reset.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    assert format_progress(event, 10) == (
        f"lookup: 3/10 indicators, 3 calls, 0 calls left today, quota spent, next call at {local}")
