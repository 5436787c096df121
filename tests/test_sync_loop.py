"""`tqvt sync run --loop` as a service: cycles, quota waits and a clean stop on SIGTERM.

The command runs as a subprocess against the simulators with JSON logs, which a reader
thread collects line by line while the test waits for the events it needs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cli_invoke import run_main
from support import sim_env, vt_object_calls

from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, running_simulators
from tqvt_sync.sandbox.seed import seed_demo

PLAN = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)
STOP_DEADLINE_SECONDS = 5.0


class LoopProcess:
    """A running ``tqvt --log-format json sync run --loop ...`` with its parsed log events."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tqvt_sync", "--log-format", "json", "sync", "run", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.events: list[dict] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.stderr_lines.append(line)
                self.events.append(json.loads(line))
                self._changed.notify_all()

    def wait_for(self, condition: Callable[[list[dict]], bool], timeout: float) -> bool:
        """Wait until ``condition(events)`` holds; False when ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: condition(self.events) or self.process.poll() is not None, timeout
            ) and condition(self.events)

    def stop(self) -> tuple[int, float, str]:
        """Send SIGTERM and return the exit code, the seconds it took to exit and stdout."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        seconds = time.monotonic() - started
        # stderr belongs to the reader thread; stdout holds only a few summary lines.
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self._reader.join(timeout=5)
        return self.process.returncode, seconds, stdout

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def events_named(events: list[dict], name: str) -> list[dict]:
    return [event for event in events if event["event"] == name]


def cycles_slept(count: int) -> Callable[[list[dict]], bool]:
    return lambda events: len(events_named(events, "loop sleeping")) >= count


@pytest.fixture(scope="module")
def simulators():
    with running_simulators(vt_plan=PLAN) as (tq, vt):
        seed_demo(tq, vt)
        yield tq, vt


@pytest.fixture(scope="module")
def two_cycles(simulators, tmp_path_factory) -> Iterator[dict]:
    tq, vt = simulators
    env = sim_env(tq, vt, str(tmp_path_factory.mktemp("loop") / "state.db"))
    loop = LoopProcess(env, "--since", "3650d", "--types", "FQDN", "--loop", "1s")
    try:
        reached = loop.wait_for(cycles_slept(2), timeout=40)
        calls_after_two = vt_object_calls(vt)
        code, seconds, stdout = loop.stop()
    finally:
        loop.kill()
    yield {"reached": reached, "code": code, "seconds": seconds, "stdout": stdout,
           "events": loop.events, "calls_after_two": calls_after_two, "calls": vt_object_calls(vt)}


def test_loop_runs_two_cycles(two_cycles):
    assert two_cycles["reached"], [e["event"] for e in two_cycles["events"]]


def test_loop_runs_each_stage_per_cycle(two_cycles):
    events = two_cycles["events"]
    for stage in ("pull", "lookup", "push"):
        assert len(events_named(events, f"{stage} finished")) >= 2, stage


def test_loop_second_cycle_makes_no_call(two_cycles):
    lookups = events_named(two_cycles["events"], "lookup finished")
    assert lookups[1]["counts"]["calls"] == 0


def test_loop_sigterm_exits_zero(two_cycles):
    assert two_cycles["code"] == 0


def test_loop_sigterm_exits_quickly(two_cycles):
    assert two_cycles["seconds"] < STOP_DEADLINE_SECONDS


def test_loop_sigterm_message(two_cycles):
    last = two_cycles["events"][-1]
    assert last["event"] == "loop stopped by SIGTERM; nothing is lost"
    assert last["level"] == "INFO"
    assert last["cycles"] >= 2


def test_loop_sigterm_logged_once(two_cycles):
    received = events_named(two_cycles["events"],
                            "received SIGTERM; stopping after the current step")
    assert len(received) == 1


def test_loop_no_error_on_stop(two_cycles):
    assert [e for e in two_cycles["events"] if e["level"] == "ERROR"] == []


def test_loop_prints_summaries(two_cycles):
    lines = two_cycles["stdout"].splitlines()
    assert len([line for line in lines if line.startswith("lookup: ")]) >= 2


def test_loop_sleeps_through_spent_quota(simulators, tmp_path):
    tq, vt = simulators
    vt.set_used(DEFAULT_API_KEY, daily=PLAN.daily)
    env = sim_env(tq, vt, str(tmp_path / "state.db"))
    loop = LoopProcess(env, "--since", "3650d", "--types", "FQDN", "--loop", "1s")
    try:
        waiting = loop.wait_for(
            lambda events: bool(events_named(events, "sleeping until the quota resets")),
            timeout=40)
        code, seconds, _stdout = loop.stop()
    finally:
        loop.kill()
        vt.set_used(DEFAULT_API_KEY, daily=0)

    assert waiting, [e["event"] for e in loop.events]
    assert code == 0
    assert seconds < STOP_DEADLINE_SECONDS
    assert loop.events[-1]["event"] == "loop stopped by SIGTERM; nothing is lost"


def test_loop_interval_below_one_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = run_main(["sync", "run", "--loop", "0"])

    assert result.exit_code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '--loop': '0' is shorter than 1 second; use for example 15m\n")


def test_loop_interval_not_a_duration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = run_main(["sync", "run", "--loop", "soon"])

    assert result.exit_code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '--loop': 'soon' is not an interval; use seconds or a form "
        "like 15m or 1h\n")


def test_loop_help_documents_exit_code():
    result = run_main(["sync", "run", "--help"])

    text = " ".join(result.stdout.split())
    assert ("SIGTERM or SIGINT stops the loop after the current step, and the command then "
            "exits with code 0, because a stopped service loop ended normally.") in text
