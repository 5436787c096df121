"""SIGKILL at hundreds of points of ``tqvt sync pull``, ``lookup`` and ``push``.

Each command runs in its own process against simulators in this process. Those
processes are forked by tests/cli_forkserver.py, which calls the same ``main``
as ``python -m tqvt_sync`` but pays the imports once; the tests at the end of
this file start ``python -m tqvt_sync`` itself. A run is killed once the
simulator has recorded 2 to 4 of its requests, sometimes after a further few
milliseconds, and the next run resumes the work. The simulator records a
request after applying it and before responding, so most kills land between
ThreatQ applying a write and tqvt recording it. After every kill the database
must pass ``PRAGMA integrity_check``.

Three rounds change what must be written: the first enrichment (consume batches,
read-back of indicators that already carry VirusTotal attributes), new VirusTotal
responses for half of the indicators (updates, creates and deletes), and a new
score table applied by ``tqvt rescore`` (updates of the score attribute and the
manual score). Each round also adds indicators, so each has a consume batch.
At the end of every round ThreatQ must hold every expected attribute exactly
once, the attributes of other sources unchanged, and no new indicator.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from delivery_support import (
    CHANGED_PLANS,
    change_answers,
    expected_attributes,
    expected_state,
    foreign_attributes,
    indicator_value,
    seed_library,
    set_answer,
    tally,
)
from forkserver_client import RUN_TIMEOUT, ForkServer
from sqlalchemy import update
from support import sim_env

from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import Indicator, OutboxEntry, VtObject
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.virustotal.verdict import DEFAULT_SCORES

pytestmark = pytest.mark.slow

SEED = 20260105
INDICATORS = 54
ADDED_PER_ROUND = 6
PAGE_SIZE = "1"
COLLECTION = "crash-watchlist"
NEW_SCORES = {"malicious/high": 10, "malicious/medium": 8, "suspicious/medium": 6,
              "suspicious/low": 4, "undetected": 2, "harmless": 1}
# Requests a killed run may make before the kill, per stage: (min, max).
KILL_AFTER = {"pull": (2, 4), "lookup": (2, 4), "push": (2, 4)}
# Kills per stage and round; a run after the last kill finishes the work.
PULL_KILLS = {1: 22, 2: 10, 3: 5}
LOOKUP_KILLS = {1: 30, 2: 24, 3: 4}
PUSH_KILLS = {1: 100, 2: 100, 3: 60}
EXTRA_DELAYS = (0.0, 0.0, 0.0, 0.002, 0.005, 0.01, 0.02)
PLAN = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)


@dataclass(frozen=True)
class KillPoint:
    """Where one SIGKILL landed: after the simulator's request number ``index``."""

    stage: str
    round: int
    index: int
    request: str
    delay: float


def request_kind(record: Any) -> str:
    """Name the kind of a recorded request, e.g. "PUT attribute" or "consume"."""
    path = record.path
    if path == "/api/indicators/consume":
        return "consume"
    if path.endswith("/scores"):
        return f"{record.method} score"
    if "/attributes/" in path:
        return f"{record.method} attribute"
    if path.endswith("/attributes"):
        return "POST attribute" if record.method == "POST" else "GET attributes"
    if path.startswith("/api/v3/users/"):
        return "VT quotas"
    if path.startswith("/api/v3/"):
        return "VT object"
    if path.startswith("/api/indicators/query/hash/"):
        return "collection page"
    if path == "/api/indicators/query":
        return "query"
    return f"{record.method} {path.split('/')[2] if path.count('/') > 1 else path}"


@dataclass
class Harness:
    """Runs CLI stages as subprocesses and kills them at varying points."""

    tq: Any
    vt: Any
    env: dict[str, str]
    db_path: Path
    log_path: Path
    server: ForkServer | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    kills: list[KillPoint] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)

    def start(self, args: tuple[str, ...], extra_env: dict[str, str]) -> Any:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"--- tqvt {' '.join(args)}\n")
        env = {**self.env, **extra_env}
        if self.server is not None:
            return self.server.start(args, env, self.log_path)
        return subprocess.Popen(
            [sys.executable, "-m", "tqvt_sync", *args], env=env,
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "a", encoding="utf-8"),
        )

    def run_once(self, stage: str, round_: int, args: tuple[str, ...], sim: Any,
                 kill_after: int | str | None, extra_env: dict[str, str]) -> int | None:
        """Run one stage; kill it after ``kill_after`` new requests at ``sim``, or after
        the first new request of the kind ``kill_after`` names.

        Returns the exit code, or None when the run was killed.
        """
        self.tq.latency = self.vt.latency = self.rng.uniform(0.005, 0.015)
        delay = self.rng.choice(EXTRA_DELAYS) if isinstance(kill_after, int) else 0.0
        base = seen = len(sim.requests)
        process = self.start(args, extra_env)
        deadline = time.monotonic() + RUN_TIMEOUT
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError(f"tqvt {' '.join(args)} did not finish; see {self.log_path}")
            count = len(sim.requests)
            if isinstance(kill_after, int):
                due = count >= base + kill_after
            else:
                due = any(request_kind(sim.requests[i]) == kill_after for i in range(seen, count))
                seen = count
            if kill_after is not None and due:
                if delay:
                    time.sleep(delay)
                index = len(sim.requests)
                process.send_signal(signal.SIGKILL)
                if process.wait() != -signal.SIGKILL:
                    return process.returncode
                last = sim.requests[index - 1]
                self.kills.append(KillPoint(stage, round_, index, request_kind(last), delay))
                self.integrity.append(integrity_check(self.db_path))
                return None
            time.sleep(0.001)
        return process.returncode

    def crash(self, stage: str, round_: int, args: tuple[str, ...], sim: Any, kills: int, *,
              first: str | None = None, extra_env: dict[str, str] | None = None) -> int:
        """Kill up to ``kills`` runs of ``args`` at varying points, each resuming the last,
        then run it to the end; return the number of runs killed.

        ``first`` names a request kind after which the first run is killed.
        """
        least, most = KILL_AFTER[stage]
        for killed in range(kills + 1):
            kill_after: int | str | None = self.rng.randint(least, most)
            if killed == 0 and first is not None:
                kill_after = first
            if killed == kills:
                kill_after = None
            code = self.run_once(stage, round_, args, sim, kill_after, extra_env or {})
            if code is not None:
                assert code == 0, f"tqvt {' '.join(args)} exited {code}; see {self.log_path}"
                return killed
        raise AssertionError("unreachable")


def integrity_check(db_path: Path) -> str:
    connection = sqlite3.connect(db_path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def add_indicators(tq, vt, first: int, count: int, stamp: datetime) -> list[int]:
    """Add fresh indicators (no VirusTotal attribute) with positions first.. first+count-1."""
    ids = []
    for index in range(first, first + count):
        type_name = ("FQDN", "SHA-256", "IP Address")[index % 3]
        value = indicator_value(type_name, index)
        ids.append(tq.add_indicator(value, type_name, updated_at=stamp, source="Delivery Feed"))
        set_answer(vt, type_name, value, CHANGED_PLANS[index % len(CHANGED_PLANS)])
    return ids


def make_due(db_path: Path, ids: list[int]) -> None:
    """Expire the cached answers of ``ids`` as the passing of the cache TTL would."""
    past = datetime(2000, 1, 1, tzinfo=UTC)
    engine = make_engine(f"sqlite:///{db_path}")
    try:
        with engine.begin() as connection:
            connection.execute(update(Indicator).where(Indicator.id.in_(ids))
                               .values(next_lookup_at=past))
            connection.execute(update(VtObject).values(expires_at=past))
    finally:
        engine.dispose()


def outbox_statuses(db_path: Path) -> Counter:
    connection = sqlite3.connect(db_path)
    try:
        return Counter(dict(connection.execute(
            f"SELECT status, count(*) FROM {OutboxEntry.__tablename__} GROUP BY status")))
    finally:
        connection.close()


def desired_score(vt, item: dict, scores: dict[str, int]) -> int | None:
    attributes = expected_attributes(vt, item, scores=scores) or {}
    value = attributes.get("VirusTotal Score")
    return int(value) if value is not None else None


@dataclass
class RoundCheck:
    """The comparison of ThreatQ with the expected state after one round."""

    lost: int
    duplicated: int
    stale: int
    wrong_scores: list[int]
    foreign_changed: bool
    indicators_added: int
    outbox: Counter
    details: list[str]


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("crash")
    db_path = workdir / "state.db"
    config = workdir / "scores.toml"
    config.write_text("[scores]\n" + "".join(f'"{k}" = {v}\n' for k, v in NEW_SCORES.items()))
    with running_simulators(vt_plan=PLAN) as (tq, vt):
        now = datetime.now(UTC)
        library = seed_library(tq, vt, INDICATORS, carry_every=4,
                               updated_at=now - timedelta(hours=1))
        tq.add_collection(COLLECTION, library.ids)
        values_file = workdir / "watchlist.txt"
        values_file.write_text("# watchlist\n" + "".join(
            f"{tq.indicator(i)['value']}\n" for i in library.ids) + "not-in-threatq.example\n")
        env = sim_env(tq, vt, str(db_path), TQVT_PAGE_SIZE=PAGE_SIZE, TQVT_WRITE_SCORE="true",
                      TQVT_MINUTE_LIMIT="100000", TQVT_DAILY_LIMIT="100000")
        server = ForkServer(workdir / "tqvt.log")
        harness = Harness(tq, vt, env, db_path, workdir / "tqvt.log", server)
        known = list(library.ids)
        seeded = {(i["value"], i["type"]["name"]) for i in tq.indicators()}
        scores: dict[str, int] = dict(DEFAULT_SCORES)
        best_score: dict[int, int] = {}
        checks: list[RoundCheck] = []

        for round_ in (1, 2, 3):
            stamp = datetime.now(UTC) - timedelta(seconds=2)
            if round_ > 1:
                added = add_indicators(tq, vt, 1000 * round_, ADDED_PER_ROUND, stamp)
                known += added
                seeded |= {(tq.indicator(i)["value"], tq.indicator(i)["type"]["name"])
                           for i in added}
            if round_ == 2:
                changed = library.ids[::2]
                change_answers(tq, vt, changed, CHANGED_PLANS)
                for indicator_id in library.ids[1::5]:
                    tq.update_indicator(indicator_id, description="touched", updated_at=stamp)
            time.sleep(1.0 if round_ > 1 else 0.0)  # leave the stamp's second behind the signpost

            extra = {"TQVT_CONFIG": str(config)} if round_ == 3 else {}
            pull_args = ("--quiet", "sync", "pull") + (("--since", "2d") if round_ == 1 else ())
            harness.crash("pull", round_, pull_args, tq, PULL_KILLS[round_], extra_env=extra)
            if round_ == 1:
                harness.crash("pull", round_, ("--quiet", "sync", "pull", "--collection",
                                               COLLECTION), tq, PULL_KILLS[round_])
                harness.crash("pull", round_, ("--quiet", "sync", "pull", "--values-file",
                                               str(values_file)), tq, 6)
            if round_ == 2:
                make_due(db_path, changed)
            if round_ == 3:
                scores = {**DEFAULT_SCORES, **NEW_SCORES}
                rescored = subprocess.run(
                    [sys.executable, "-m", "tqvt_sync", "--quiet", "rescore"],
                    env={**env, **extra}, capture_output=True, text=True, timeout=RUN_TIMEOUT)
                assert rescored.returncode == 0, rescored.stderr
            harness.crash("lookup", round_, ("--quiet", "sync", "lookup"), vt,
                          LOOKUP_KILLS[round_], extra_env=extra)
            harness.crash("push", round_, ("--quiet", "sync", "push"), tq, PUSH_KILLS[round_],
                          first="consume", extra_env=extra)

            expected = expected_state(tq, vt, known, scores=scores)
            for indicator_id in known:
                score = desired_score(vt, tq.indicator(indicator_id), scores)
                if score is not None and score > 0:
                    best_score[indicator_id] = max(best_score.get(indicator_id, 0), score)
            result = tally(tq, expected)
            checks.append(RoundCheck(
                lost=result.lost, duplicated=result.duplicated, stale=result.stale,
                wrong_scores=[i for i in known
                              if tq.indicator(i).get("manual_score") != best_score.get(i)],
                foreign_changed=foreign_attributes(tq, library.ids) != library.foreign,
                indicators_added=len({(i["value"], i["type"]["name"])
                                      for i in tq.indicators()} - seeded),
                outbox=outbox_statuses(db_path), details=result.details[:20],
            ))
        server.close()
        yield {"harness": harness, "checks": checks, "tq": tq, "known": known, "db": db_path}


def kills_of(crashed, stage: str) -> list[KillPoint]:
    return [k for k in crashed["harness"].kills if k.stage == stage]


def test_crash_push_kill_points(crashed):
    points = kills_of(crashed, "push")
    print(f"push kill points: {len(points)}, "
          f"per round {dict(Counter(k.round for k in points))}, "
          f"after {dict(Counter(k.request for k in points))}")
    assert len(set(points)) >= 200


def test_crash_pull_kill_points(crashed):
    points = kills_of(crashed, "pull")
    print(f"pull kill points: {len(points)}")
    assert len(set(points)) >= 50


def test_crash_lookup_kill_points(crashed):
    points = kills_of(crashed, "lookup")
    print(f"lookup kill points: {len(points)}")
    assert len(set(points)) >= 50


@pytest.mark.parametrize("kind", ["consume", "POST attribute", "PUT attribute",
                                  "DELETE attribute", "PUT score"])
def test_crash_kills_after_each_write_kind(crashed, kind):
    assert sum(1 for k in kills_of(crashed, "push") if k.request == kind) >= 3


def test_crash_kills_in_every_round(crashed):
    rounds = {(k.stage, k.round) for k in crashed["harness"].kills}
    assert {("push", 1), ("push", 2), ("push", 3), ("lookup", 1), ("lookup", 2),
            ("pull", 1), ("pull", 2)} <= rounds


def test_crash_integrity_after_every_kill(crashed):
    harness = crashed["harness"]
    assert harness.integrity == ["ok"] * len(harness.kills)


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_nothing_lost(crashed, round_):
    check = crashed["checks"][round_ - 1]
    assert check.lost == 0, check.details


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_nothing_duplicated(crashed, round_):
    check = crashed["checks"][round_ - 1]
    assert check.duplicated == 0, check.details


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_no_stale_attribute(crashed, round_):
    check = crashed["checks"][round_ - 1]
    assert check.stale == 0, check.details


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_manual_scores(crashed, round_):
    assert crashed["checks"][round_ - 1].wrong_scores == []


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_other_sources_untouched(crashed, round_):
    assert not crashed["checks"][round_ - 1].foreign_changed


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_no_indicator_created(crashed, round_):
    assert crashed["checks"][round_ - 1].indicators_added == 0


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_crash_outbox_all_completed(crashed, round_):
    outbox = crashed["checks"][round_ - 1].outbox
    assert set(outbox) == {"completed"}


def test_crash_pull_stored_every_indicator(crashed):
    connection = sqlite3.connect(crashed["db"])
    try:
        stored = dict(connection.execute("SELECT id, tq_updated_at FROM indicators"))
    finally:
        connection.close()
    tq = crashed["tq"]
    assert {i: tq.indicator(i)["updated_at"] for i in crashed["known"]} == {
        i: stored.get(i, "")[:19] for i in crashed["known"]}


# -- the detector is live ------------------------------------------------------


def duplicates_after_consume_kill(tmp_path, *, reconcile: bool) -> int:
    """Kill push while ThreatQ holds a consumed batch whose answer has not arrived,
    resume it, and return the number of duplicated attributes."""
    db_path = tmp_path / "state.db"
    with running_simulators(vt_plan=PLAN) as (tq, vt):
        library = seed_library(tq, vt, 6, updated_at=datetime.now(UTC) - timedelta(hours=1))
        env = sim_env(tq, vt, str(db_path), TQVT_MINUTE_LIMIT="100000",
                      TQVT_DAILY_LIMIT="100000")
        harness = Harness(tq, vt, env, db_path, tmp_path / "tqvt.log")
        for args in (("sync", "pull", "--since", "2d"), ("sync", "lookup")):
            assert harness.run_once("setup", 0, args, tq, None, {}) == 0
        # ThreatQ applies the consume and then holds its answer, so the kill always lands
        # after the write and before tqvt records it.
        tq.faults.inject("stall_after_commit", method="POST", path="/consume$", seconds=5,
                         times=1)
        consumed = tq.requests.count("POST", "/api/indicators/consume")
        process = harness.start(("--quiet", "sync", "push"), {})
        deadline = time.monotonic() + RUN_TIMEOUT
        while tq.requests.count("POST", "/api/indicators/consume") == consumed:
            assert time.monotonic() < deadline, "push never sent its consume batch"
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait()
        resume_env = {} if reconcile else {"TQVT_TEST_DISABLE_RECONCILE": "1"}
        assert harness.run_once("push", 1, ("--quiet", "sync", "push"), tq, None,
                                resume_env) == 0
        return tally(tq, expected_state(tq, vt, library.ids)).duplicated


def test_crash_detector_finds_duplicates_without_reconcile(tmp_path):
    duplicated = duplicates_after_consume_kill(tmp_path, reconcile=False)
    print(f"duplicated attributes with reconciliation off: {duplicated}")
    assert duplicated > 0


def test_crash_consume_kill_reconciled(tmp_path):
    assert duplicates_after_consume_kill(tmp_path, reconcile=True) == 0
