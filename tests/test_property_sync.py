"""Stateful property test: source changes, stage runs, crashes and clock moves, mixed at random.

A hypothesis state machine drives both simulators and the four stages in-process on one
shared FakeClock. After every step it checks what must always be true. tqvt created no
indicator and touched no attribute of another source. VirusTotal rejected no call for
pacing. No indicator has two waiting outbox rows or two instances of one tqvt attribute.
A step ends with a complete push cycle when no outbox row is left to deliver. After such
a step it also checks each indicator with a verdict in the database. The indicator must
have each expected attribute exactly once, with the source VirusTotal and the expected
value.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from support import sim_settings, source_names, stage_context
from tqvt_sync.clock import FakeClock
from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine
from tqvt_sync.db.models import Indicator, OutboxEntry, WrittenState
from tqvt_sync.errors import QuotaExhaustedError, TemporaryStop
from tqvt_sync.quota import next_midnight
from tqvt_sync.sandbox import DEFAULT_API_KEY, running_simulators
from tqvt_sync.stages.cache import find_object, unpack_summary
from tqvt_sync.stages.common import StageContext
from tqvt_sync.stages.lookup import due_condition, lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import DISABLE_RECONCILE_ENV, OWNED_NAMES, Push, push
from tqvt_sync.stages.rescore import rescore
from tqvt_sync.stages.verdicts import desired_write

START = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
DOMAINS = ("alpha.example.com", "beta.example.net", "gamma.example.org", "delta.example.io")
ADDRESSES = ("45.33.32.156", "8.8.4.4", "9.9.9.9")
VALUES = DOMAINS + ADDRESSES
# "Email Address" is unsupported, and a value of the other kind is invalid for its type.
TYPES = ("FQDN", "IP Address", "Email Address")
ANALYST = "Analyst"
ANALYST_NAMES = ("Analyst Note", "VirusTotal Verdict", "VirusTotal Score", "Malware Family")
ANALYST_VALUES = ("benign", "malicious", "9", "see ticket 12")
CLOCK_STEPS = (1, 61, 3600, 86_400, 3 * 86_400, 8 * 86_400)
# A short cache lifetime lets clock moves expire cached responses, so lookups and rewrites recur.
CACHE_TTL = timedelta(hours=1)
# Engine counts (malicious, suspicious, harmless) of VirusTotal responses. None is "not found".
VERDICTS = ((0, 0, 0), (0, 0, 5), (0, 3, 0), (1, 0, 5), (6, 0, 0), None)
# The client timeout is short, so a stalled response costs little wall time.
HTTP_TIMEOUT = 0.5
STALL_SECONDS = 0.6
WRITE_PATHS = r"^/api/(indicators/\d+/attributes|indicators/consume|indicator/\d+/scores)"
WRITE_METHODS = ("consume", "create_attribute", "update_attribute", "delete_attribute",
                 "update_score")
SETTLE_ROUNDS = 12
QUOTA_DAILY = 500  # the daily allowance of the simulator's default (free) key

_template_dir = tempfile.TemporaryDirectory(prefix="tqvt-property-")


def _template_database() -> Path:
    """Return a SQLite file migrated to head, built once and copied for every example."""
    path = Path(_template_dir.name) / "template.db"
    if not path.exists():
        engine = make_engine(f"sqlite:///{path}")
        migrate.upgrade(engine)
        engine.dispose()
    return path


class SimulatedCrash(Exception):
    """Raised by CrashingClient to abandon a push run in the middle of its writes."""


class CrashingClient:
    """A ThreatQ client that raises SimulatedCrash at its ``crash_at``-th write.

    With ``after_write`` the write is sent first, so it lands in ThreatQ and only the
    response is lost, as when the process dies between sending and recording.
    """

    def __init__(self, client: Any, crash_at: int, after_write: bool) -> None:
        self._client = client
        self._crash_at = crash_at
        self._after_write = after_write
        self._writes = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if name not in WRITE_METHODS:
            return target

        def write(*args: Any, **kwargs: Any) -> Any:
            self._writes += 1
            if self._writes < self._crash_at:
                return target(*args, **kwargs)
            if self._after_write:
                target(*args, **kwargs)
            raise SimulatedCrash(f"crash at write {self._writes}")

        return write


def _indicator_kind(value: str) -> str:
    return "domain" if value in DOMAINS else "ip_address"


class SyncMachine(RuleBasedStateMachine):
    """Random interleavings of ThreatQ and VirusTotal changes with the tqvt stages."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.clock = FakeClock(START)
        self.tq, self.vt = self.stack.enter_context(running_simulators(self.clock))
        self.workdir = Path(tempfile.mkdtemp(prefix="tqvt-example-"))
        database = self.workdir / "state.db"
        shutil.copyfile(_template_database(), database)
        self.settings = sim_settings(self.tq, self.vt, f"sqlite:///{database}",
                                     str(self.workdir), http_timeout=HTTP_TIMEOUT,
                                     cache_ttl=CACHE_TTL, not_found_ttl=CACHE_TTL)
        self.ctx = stage_context(self.settings, self.clock)
        self.stack.callback(self.ctx.engine.dispose)
        self.indicator_ids: set[int] = set()
        # Attribute instance id -> (indicator id, name, value) of every non-VirusTotal attribute.
        self.others: dict[int, tuple[int, str, str]] = {}
        # (indicator id, name) of tqvt attributes an analyst deleted -> written_at at that time.
        self.deleted_by_analyst: dict[tuple[int, str], datetime | None] = {}
        self.quota_blocked_until: datetime | None = None

    def teardown(self) -> None:
        self.stack.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------

    def _pick(self, index: int) -> int:
        ordered = sorted(self.indicator_ids)
        return ordered[index % len(ordered)]

    def _add(self, value: str, type_name: str) -> int | None:
        try:
            indicator_id = self.tq.add_indicator(
                value, type_name, attributes=[("Analyst Note", f"seen {value}", ANALYST)])
        except ValueError:
            return None  # this value and type exist already
        self.indicator_ids.add(indicator_id)
        for attribute in self.tq.attributes_of(indicator_id):
            self.others[attribute["id"]] = (indicator_id, attribute["name"], attribute["value"])
        return indicator_id

    def _tick(self) -> None:
        """Move past the current second, so pull takes indicators changed up to now."""
        self.clock.advance(2)

    def _pull(self) -> None:
        self._tick()
        try:
            pull(self.ctx, PullOptions(since=START - timedelta(days=1)))
        except TemporaryStop:
            pass

    def _lookup(self) -> None:
        self._tick()
        try:
            lookup(self.ctx)
        except QuotaExhaustedError as exc:
            self.quota_blocked_until = exc.blocked_until
        except TemporaryStop:
            pass

    def _push(self) -> None:
        self._tick()
        try:
            push(self.ctx)
        except TemporaryStop:
            pass

    def _outbox_count(self, *statuses: str) -> int:
        with self.ctx.sessions() as session:
            return session.scalar(select(func.count()).select_from(OutboxEntry)
                                  .where(OutboxEntry.status.in_(statuses))) or 0

    def _cycle_complete(self) -> bool:
        return self._outbox_count("new", "failed", "started") == 0

    def _written_at(self, indicator_id: int) -> datetime | None:
        with self.ctx.sessions() as session:
            state = session.get(WrittenState, indicator_id)
            return state.written_at if state is not None else None

    # -- ThreatQ and VirusTotal change ------------------------------------------

    @initialize(values=st.lists(st.sampled_from(VALUES), min_size=2, max_size=5, unique=True))
    def seed(self, values: list[str]) -> None:
        for value in values:
            self._add(value, "FQDN" if value in DOMAINS else "IP Address")

    @rule(value=st.sampled_from(VALUES), type_name=st.sampled_from(TYPES))
    def add_indicator(self, value: str, type_name: str) -> None:
        self._add(value, type_name)

    @rule(index=st.integers(0, 50), value=st.sampled_from(VALUES))
    def change_value(self, index: int, value: str) -> None:
        try:
            self.tq.update_indicator(self._pick(index), value=value)
        except ValueError:
            pass  # another indicator has this value and type

    @rule(index=st.integers(0, 50), edit=st.sampled_from(VALUES + TYPES))
    def edit_while_first_write_queued(self, index: int, edit: str) -> None:
        """Add an indicator and queue its first write, then change its value or type."""
        present = {item["value"] for item in self.tq.indicators()}
        unused = [value for value in VALUES if value not in present]
        if not unused:
            return
        value = unused[index % len(unused)]
        indicator_id = self._add(value, "FQDN" if value in DOMAINS else "IP Address")
        if indicator_id is None:
            return
        self._pull()
        self._lookup()
        field = "type" if edit in TYPES else "value"
        try:
            self.tq.update_indicator(indicator_id, **{field: edit})
        except ValueError:
            pass

    @rule(index=st.integers(0, 50), type_name=st.sampled_from(TYPES))
    def change_type(self, index: int, type_name: str) -> None:
        try:
            self.tq.update_indicator(self._pick(index), type=type_name)
        except ValueError:
            pass

    @rule(value=st.sampled_from(VALUES), verdict=st.sampled_from(VERDICTS))
    def virustotal_changes(self, value: str, verdict: tuple[int, int, int] | None) -> None:
        self._set_response(value, verdict)

    def _set_response(self, value: str, verdict: tuple[int, int, int] | None) -> None:
        kind = _indicator_kind(value)
        if verdict is None:
            self.vt.mark_not_found(kind, value)
            return
        malicious, suspicious, harmless = verdict
        self.vt.add_generated(kind, value, malicious=malicious, suspicious=suspicious,
                              harmless=harmless)

    def _queue_rewrites(self, verdict: tuple[int, int, int] | None) -> None:
        """Give every value a new VirusTotal response and expire the cache, so stages write."""
        for value in VALUES:
            self._set_response(value, verdict)
        self.clock.advance(CACHE_TTL.total_seconds() + 1)
        self._pull()
        self._lookup()

    # -- analysts ----------------------------------------------------------------

    @rule(index=st.integers(0, 50), name=st.sampled_from(ANALYST_NAMES),
          value=st.sampled_from(ANALYST_VALUES))
    def analyst_adds_attribute(self, index: int, name: str, value: str) -> None:
        indicator_id = self._pick(index)
        library = self.tq.library
        with library.lock:
            attribute = library.add_attribute(library.get(indicator_id), name, value, [ANALYST],
                                              None, library.now())
        self.others[attribute["id"]] = (indicator_id, name, value)

    @rule(index=st.integers(0, 50))
    def analyst_deletes_other_attribute(self, index: int) -> None:
        if not self.others:
            return
        attribute_id = sorted(self.others)[index % len(self.others)]
        self._delete_attribute(self.others.pop(attribute_id)[0], attribute_id)

    @rule(index=st.integers(0, 50))
    def analyst_deletes_tqvt_attribute(self, index: int) -> None:
        owned = [(indicator_id, a) for indicator_id in sorted(self.indicator_ids)
                 for a in self.tq.attributes_of(indicator_id)
                 if "VirusTotal" in source_names(a)]
        if not owned:
            return
        indicator_id, attribute = owned[index % len(owned)]
        self._delete_attribute(indicator_id, attribute["id"])
        key = (indicator_id, attribute["name"])
        self.deleted_by_analyst[key] = self._written_at(indicator_id)

    def _delete_attribute(self, indicator_id: int, attribute_id: int) -> None:
        library = self.tq.library
        with library.lock:
            indicator = library.get(indicator_id)
            indicator["attributes"].remove(library.find_attribute(indicator, attribute_id))
            library.touch(indicator, library.now())

    # -- time and quota ----------------------------------------------------------

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def clock_moves(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def daily_quota_spent(self) -> None:
        self.vt.set_used(DEFAULT_API_KEY, daily=QUOTA_DAILY)

    @rule()
    def past_midnight(self) -> None:
        self.clock.set(next_midnight(self.clock.now()) + timedelta(seconds=1))

    # -- stages ------------------------------------------------------------------

    @rule()
    def run_pull(self) -> None:
        self._pull()

    @rule()
    def run_lookup(self) -> None:
        self._lookup()

    @rule()
    def run_rescore(self) -> None:
        self._tick()
        rescore(self.ctx)

    @rule()
    def run_push(self) -> None:
        self._push()
        if self._cycle_complete():
            self.check_complete_cycle()

    # -- faults and crashes ------------------------------------------------------

    @rule(kind=st.sampled_from(("reset_after_commit", "reset_after_commit", "stall_after_commit",
                                "status")),
          method=st.sampled_from(("POST", "PUT", "DELETE")), verdict=st.sampled_from(VERDICTS))
    def push_meets_write_fault(self, kind: str, method: str,
                               verdict: tuple[int, int, int] | None) -> None:
        """Queue rewrites, then push while one ThreatQ write fails once."""
        self._queue_rewrites(verdict)
        seconds = STALL_SECONDS if kind == "stall_after_commit" else None
        self.tq.faults.inject(kind, method=method, path=WRITE_PATHS, times=1, seconds=seconds)
        self._push()
        self.tq.faults.clear()

    @rule(verdict=st.sampled_from(VERDICTS))
    def push_abandoned_after_claim(self, verdict: tuple[int, int, int] | None) -> None:
        """Queue rewrites, then claim rows like a push run that dies before it sends anything."""
        self._queue_rewrites(verdict)
        self._abandon_claim()

    @rule(verdict=st.sampled_from(VERDICTS), newer=st.sampled_from(VERDICTS))
    def orphan_fails_behind_newer_row(self, verdict: tuple[int, int, int] | None,
                                      newer: tuple[int, int, int] | None) -> None:
        """Leave rows started, queue newer rows behind them, then fail the first resend."""
        self._queue_rewrites(verdict)
        self._abandon_claim()
        self._queue_rewrites(newer)
        for method in ("POST", "PUT", "DELETE"):
            self.tq.faults.inject("reset_after_commit", method=method, path=WRITE_PATHS, times=1)
        self._push()
        self.tq.faults.clear()

    def _abandon_claim(self) -> None:
        stage = Push(self.ctx)
        with self.ctx.sessions.begin() as session:
            stage._claim(session, self.clock.now())
        stage.client.close()

    @rule(crash_at=st.integers(1, 8), after_write=st.booleans(),
          verdict=st.sampled_from(VERDICTS))
    def push_crashes_midway(self, crash_at: int, after_write: bool,
                            verdict: tuple[int, int, int] | None) -> None:
        """Queue rewrites, then push in a process that dies at one of its writes."""
        runtime_client = self.ctx.threatq_factory
        assert runtime_client is not None
        crashing = StageContext(
            settings=self.settings, engine=self.ctx.engine, clock=self.clock,
            threatq_factory=lambda: CrashingClient(runtime_client(), crash_at, after_write),
            virustotal_factory=self.ctx.virustotal_factory,
        )
        self._queue_rewrites(verdict)
        self._tick()
        try:
            push(crashing)
        except (SimulatedCrash, TemporaryStop):
            pass

    # -- the complete cycle ------------------------------------------------------

    @rule()
    def complete_cycle(self) -> None:
        """Run every stage until the outbox is drained, without faults, then check."""
        self.tq.faults.clear()
        self._pull()
        for _ in range(SETTLE_ROUNDS):
            self.quota_blocked_until = None
            self._lookup()
            if self.quota_blocked_until is not None:
                self.clock.set(self.quota_blocked_until + timedelta(seconds=1))
                continue
            self._skip_backoff()
            self._push()
            if self._cycle_complete() and not self._due_indicators():
                break
        assert self._cycle_complete(), "the outbox was not drained after the settle rounds"
        self.check_complete_cycle()

    def _skip_backoff(self) -> None:
        with self.ctx.sessions() as session:
            latest = session.scalar(select(func.max(OutboxEntry.next_attempt_at))
                                    .where(OutboxEntry.status == "failed"))
        if latest is not None and latest.replace(tzinfo=UTC) > self.clock.now():
            self.clock.set(latest.replace(tzinfo=UTC) + timedelta(seconds=1))

    def _due_indicators(self) -> int:
        with self.ctx.sessions() as session:
            return session.scalar(select(func.count()).select_from(Indicator)
                                  .where(due_condition(self.clock.now()))) or 0

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def no_indicator_created(self) -> None:
        created = {item["id"] for item in self.tq.indicators()} - self.indicator_ids
        assert created == set(), "tqvt created an indicator"
        assert {item["id"] for item in self.tq.indicators()} == self.indicator_ids

    @invariant()
    def other_sources_untouched(self) -> None:
        actual = {a["id"]: (item["id"], a["name"], a["value"])
                  for item in self.tq.indicators() for a in item["attributes"]
                  if "VirusTotal" not in source_names(a)}
        assert actual == self.others, "an attribute of another source changed"

    @invariant()
    def no_pacing_rejection(self) -> None:
        rejections = self.vt.rejections[DEFAULT_API_KEY]
        assert rejections["minute"] == 0, "VirusTotal rejected a call for pacing"
        assert rejections["hourly"] == 0, "VirusTotal rejected a call for pacing"

    @invariant()
    def one_waiting_row_per_indicator(self) -> None:
        with self.ctx.sessions() as session:
            crowded = session.execute(
                select(OutboxEntry.indicator_id)
                .where(OutboxEntry.status.in_(("new", "failed")))
                .group_by(OutboxEntry.indicator_id).having(func.count() > 1)
            ).scalars().all()
        assert crowded == [], "an indicator has two waiting outbox rows"

    @invariant()
    def tqvt_attributes_never_duplicated(self) -> None:
        for item in self.tq.indicators():
            names = Counter(a["name"] for a in item["attributes"]
                            if "VirusTotal" in source_names(a))
            duplicated = {name: count for name, count in names.items() if count > 1}
            assert duplicated == {}, f"indicator {item['id']}"

    def check_complete_cycle(self) -> None:
        assert self._outbox_count("dead") == 0
        for indicator_id, expected in self._expected_attributes().items():
            written_at = self._written_at(indicator_id)
            actual: dict[str, list[str]] = {}
            for attribute in self.tq.attributes_of(indicator_id):
                if "VirusTotal" in source_names(attribute) and attribute["name"] in OWNED_NAMES:
                    actual.setdefault(attribute["name"], []).append(attribute["value"])
            for name, value in expected.items():
                deleted_at = self.deleted_by_analyst.get((indicator_id, name), "never")
                if deleted_at != "never" and deleted_at == written_at:
                    # An analyst deleted it and tqvt has written nothing since.
                    assert actual.get(name, [value]) == [value], f"{indicator_id} {name}"
                    continue
                assert actual.get(name) == [value], f"indicator {indicator_id} {name}"
            assert set(actual) <= set(expected), f"indicator {indicator_id}"

    def _expected_attributes(self) -> dict[int, dict[str, str]]:
        """Return, per indicator with a verdict, the attributes built from its cached response."""
        expected = {}
        with self.ctx.sessions() as session:
            rows = session.execute(select(Indicator).where(
                Indicator.status.in_(("looked_up", "not_found")))).scalars().all()
            for indicator in rows:
                cached = find_object(session, indicator.kind, indicator.identifier)
                assert cached is not None, f"indicator {indicator.id} has no cached response"
                summary = unpack_summary(cached.summary) if cached.found else None
                write = desired_write(self.settings, cached.kind, summary)
                expected[indicator.id] = write["attributes"]
        return expected


def _machine_settings(**overrides: Any) -> settings:
    options: dict[str, Any] = {
        "max_examples": 15,
        "stateful_step_count": 20,
        "deadline": None,
        "database": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    }
    options.update(overrides)
    return settings(**options)


@pytest.mark.slow
def test_sync_invariants_hold() -> None:
    run_state_machine_as_test(SyncMachine, settings=_machine_settings())


@pytest.mark.slow
def test_property_detects_disabled_reconcile(monkeypatch) -> None:
    monkeypatch.setenv(DISABLE_RECONCILE_ENV, "1")
    quick = _machine_settings(max_examples=60, derandomize=True, report_multiple_bugs=False,
                              phases=[Phase.explicit, Phase.generate])
    # Without the read-back, an orphaned write is sent again as a consume, which appends
    # attributes, or creates an indicator whose value or type changed since the pull.
    with pytest.raises(AssertionError, match=r"^(indicator \d+|tqvt created an indicator)"):
        run_state_machine_as_test(SyncMachine, settings=quick)
