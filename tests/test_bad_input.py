"""Hostile values and broken responses: each is rejected or handled with a reason.

In-process, the stages run against the simulators on a FakeClock while the log goes to a
buffer in text or JSON. Hostile indicator values (NUL, 1 MB, CR/LF with a forged log line,
bidi overrides, SQL metacharacters) must be stored with a reason and cost no lookup, and
the good indicators of the same batch must be enriched. Broken responses from either API
(malformed JSON, an HTML page instead of JSON, a truncated body) must end in a clean
TqvtError or a failed outbox row, never a crash, and lose nothing. As subprocesses, the CLI
must turn an unreachable service, rejected credentials and a corrupt database into exit
code 1 or 75 with one message that names the problem and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from security_support import clean_env, error_line, run_cli
from support import owned_attributes, sim_env, sim_settings, source_names, stage_context
from tqvt_sync.clock import FakeClock
from tqvt_sync.db.models import Indicator, OutboxEntry
from tqvt_sync.errors import ServiceUnavailableError, TqvtError
from tqvt_sync.logs import setup_logging
from tqvt_sync.sandbox import QuotaPlan, running_simulators
from tqvt_sync.sandbox.seed import seed_demo
from tqvt_sync.stages.common import StageContext
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import push

UNLIMITED = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
FORGED = "2026-01-05T12:00:00Z ERROR tqvt_sync.stages.push: forged entry"
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
SQL_URL = "http://sql.example.com/item?id=1'OR'1'='1';DROP/**/TABLE/**/outbox;--"
HOSTILE = {
    "nul": ("evil\x00.example.com", "FQDN"),
    "huge": ("a" * 1_000_000 + ".example.com", "FQDN"),
    "huge_url": ("http://example.com/" + "b" * 1_000_000, "URL"),
    "crlf": ("bad.example.com\r\n" + FORGED, "FQDN"),
    "lf_address": ("8.8.8.8\n" + FORGED, "IP Address"),
    "bidi": ("evil\u202egnp.example.com", "FQDN"),
    "bidi_url": ("http://example.com/\u202eexe.pdf", "URL"),
    "sql": ("x'; DROP TABLE indicators; --", "FQDN"),
}
GOOD = (("good.example.com", "FQDN"), ("fine.example.org", "FQDN"), ("9.9.9.9", "IP Address"),
        (SQL_URL, "URL"))
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
LONG_AGO = "3650d"


@dataclass
class World:
    """Simulators, stage context and the captured log of one in-process test."""

    tq: Any
    vt: Any
    ctx: StageContext
    clock: FakeClock
    log: io.StringIO
    log_format: str

    def pull(self) -> dict[str, int]:
        self.clock.advance(2)
        return pull(self.ctx, PullOptions(since=self.clock.now() - timedelta(days=3650)))

    def lookup(self) -> dict[str, int]:
        self.clock.advance(2)
        return lookup(self.ctx)

    def push(self) -> dict[str, int]:
        self.clock.advance(2)
        return push(self.ctx)

    def indicator(self, indicator_id: int) -> Indicator:
        with self.ctx.sessions() as session:
            row = session.get(Indicator, indicator_id)
            assert row is not None, indicator_id
            return row

    def outbox(self, *statuses: str) -> int:
        with self.ctx.sessions() as session:
            return session.scalar(select(func.count()).select_from(OutboxEntry)
                                  .where(OutboxEntry.status.in_(statuses))) or 0


def make_world(tmp_path: Path, clock: FakeClock, log_format: str) -> Iterator[World]:
    with running_simulators(clock, vt_plan=UNLIMITED) as (tq, vt):
        settings = sim_settings(tq, vt, f"sqlite:///{tmp_path / 'state.db'}", str(tmp_path),
                                log_level="DEBUG", log_format=log_format)
        ctx = stage_context(settings, clock)
        log = io.StringIO()
        handler = setup_logging(level="DEBUG", fmt=log_format, stream=log)
        try:
            yield World(tq, vt, ctx, clock, log, log_format)
        finally:
            logging.getLogger("tqvt_sync").removeHandler(handler)
            ctx.engine.dispose()


@pytest.fixture(params=["text", "json"])
def world(request, tmp_path, clock) -> Iterator[World]:
    yield from make_world(tmp_path, clock, request.param)


@pytest.fixture
def text_world(tmp_path, clock) -> Iterator[World]:
    yield from make_world(tmp_path, clock, "text")


def check_log(log: str, log_format: str) -> None:
    """Assert that every record is one line, with no forged line and no raw bidi control."""
    assert "\r" not in log
    assert "\x00" not in log
    assert [char for char in BIDI if char in log] == []
    lines = log.splitlines()
    assert lines, "nothing was logged"
    assert [line for line in lines if line.startswith(FORGED)] == []
    for line in lines:
        if log_format == "json":
            assert isinstance(json.loads(line), dict), line
        else:
            assert TEXT_LINE.match(line) or line.startswith("  "), line[:200]


def add_batch(tq) -> tuple[dict[str, int], list[int]]:
    hostile = {name: tq.add_indicator(value, type_name) for name, (value, type_name)
               in HOSTILE.items()}
    good = [tq.add_indicator(value, type_name) for value, type_name in GOOD]
    return hostile, good


# Hostile indicator values


def test_hostile_values_rejected_with_reason(world: World) -> None:
    hostile, good = add_batch(world.tq)
    counts = world.pull()
    assert counts["indicators"] == len(hostile) + len(good)
    for name, indicator_id in hostile.items():
        row = world.indicator(indicator_id)
        assert row.status == "invalid", name
        assert row.reason, name


def test_hostile_values_stored_unchanged(world: World) -> None:
    hostile, _ = add_batch(world.tq)
    world.pull()
    for name, indicator_id in hostile.items():
        assert world.indicator(indicator_id).value == HOSTILE[name][0], name


def test_hostile_values_cost_no_lookup(world: World) -> None:
    add_batch(world.tq)
    world.pull()
    counts = world.lookup()
    assert counts["identifiers"] == len(GOOD)
    assert sum(1 for r in world.vt.requests if not r.path.startswith("/api/v3/users/")) == len(GOOD)


def test_good_indicators_of_batch_enriched(world: World) -> None:
    hostile, good = add_batch(world.tq)
    world.pull()
    world.lookup()
    world.push()
    for indicator_id in good:
        names = [a["name"] for a in owned_attributes(world.tq.attributes_of(indicator_id))]
        assert "VirusTotal Verdict" in names, indicator_id
    for indicator_id in hostile.values():
        assert owned_attributes(world.tq.attributes_of(indicator_id)) == []


def test_sql_metacharacters_inert(world: World) -> None:
    _, good = add_batch(world.tq)
    world.pull()
    world.lookup()
    world.push()
    with world.ctx.sessions() as session:
        stored = session.scalar(select(func.count()).select_from(Indicator))
        delivered = session.scalar(select(func.count()).select_from(OutboxEntry))
    assert stored == len(HOSTILE) + len(GOOD)
    assert delivered == len(GOOD)
    assert world.indicator(good[-1]).value == SQL_URL


def test_hostile_values_keep_log_lines_whole(world: World, tmp_path) -> None:
    add_batch(world.tq)
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text("\n".join(["watch\u202egnp.example.net", "x\x00y.example.com",
                                    "q'; DROP TABLE cursors; --", "c" * 5000]), "utf-8")
    world.pull()
    world.clock.advance(2)
    counts = pull(world.ctx, PullOptions(values_file=str(watchlist)))
    world.lookup()
    world.push()
    assert counts["not_in_threatq"] == 4
    check_log(world.log.getvalue(), world.log_format)


def test_hostile_virustotal_text_keeps_logs_whole(world: World) -> None:
    indicator_id = world.tq.add_indicator("label.example.com", "FQDN")
    document = world.vt.add_generated("domain", "label.example.com", malicious=7)
    attributes = document["data"]["attributes"]
    attributes["popular_threat_classification"] = {
        "suggested_threat_label": f"trojan\r\n{FORGED}\u202e\x00"}
    attributes["categories"] = {"Vendor\r\nX": f"phishing\u202e\r\n{FORGED}"}
    world.vt.add_object("domain", "label.example.com", document)
    world.vt.faults.inject("status", path=r"^/api/v3/domains/", status=503, times=1)
    world.pull()
    world.lookup()
    world.push()
    owned = owned_attributes(world.tq.attributes_of(indicator_id))
    written = {attribute["name"]: attribute["value"] for attribute in owned}
    assert written["VirusTotal Verdict"] == "malicious"
    check_log(world.log.getvalue(), world.log_format)


def test_rejected_listing_escapes_values(text_world: World, tmp_path) -> None:
    add_batch(text_world.tq)
    text_world.pull()
    env = clean_env(sim_env(text_world.tq, text_world.vt, str(tmp_path / "state.db")))
    result = run_cli(env, "indicators", "rejected", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout
    assert [char for char in BIDI if char in result.stdout] == []
    assert [line for line in result.stdout.splitlines() if line.startswith(FORGED)] == []
    assert len(result.stdout.splitlines()) == len(HOSTILE)


# Broken responses from ThreatQ and VirusTotal

ATTRIBUTES = r"^/api/indicators/\d+/attributes$"
QUERY = r"^/api/indicators/query$"
CONSUME = r"^/api/indicators/consume$"
OBJECTS = r"^/api/v3/(files|urls|domains|ip_addresses)/"
QUOTAS = r"^/api/v3/users/"
BROKEN = ("malformed", "html", "truncated")


def run_stages(world: World) -> list[TqvtError]:
    """Run pull, lookup and push; return the TqvtErrors they stopped with."""
    errors = []
    for stage in (world.pull, world.lookup, world.push):
        try:
            stage()
        except TqvtError as exc:
            errors.append(exc)
    return errors


def settle(world: World) -> None:
    """Clear the faults and run the stages until the outbox is drained."""
    world.tq.faults.clear()
    world.vt.faults.clear()
    for _ in range(3):
        world.clock.advance(7200)
        assert run_stages(world) == []
        if world.outbox("new", "failed", "started") == 0:
            return


def enrich_demo(world: World) -> None:
    """Seed the demo data; every indicator then carries a tqvt name, so push reads back."""
    seed_demo(world.tq, world.vt)
    for item in world.tq.indicators():
        if not owned_attributes(item["attributes"]):
            library = world.tq.library
            with library.lock:
                library.add_attribute(library.get(item["id"]), "VirusTotal Verdict", "stale",
                                      ["VirusTotal"], None, library.now())


def check_enriched_once(world: World) -> None:
    for item in world.tq.indicators():
        vt_names = [a["name"] for a in item["attributes"] if "VirusTotal" in source_names(a)]
        assert len(vt_names) == len(set(vt_names)), item["id"]
    assert world.outbox("dead") == 0


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize(("service", "path", "method"), [
    ("threatq", QUERY, "POST"), ("threatq", ATTRIBUTES, "GET"), ("threatq", CONSUME, "POST"),
    ("virustotal", OBJECTS, "GET"), ("virustotal", QUOTAS, "GET"),
])
def test_broken_response_handled(text_world: World, kind: str, service: str, path: str,
                                 method: str) -> None:
    world = text_world
    if path == CONSUME:
        seed_demo(world.tq, world.vt)
    else:
        enrich_demo(world)
    simulator = world.tq if service == "threatq" else world.vt
    simulator.faults.inject(kind, path=path, method=method)
    errors = run_stages(world)
    for error in errors:
        assert str(error), type(error).__name__
        assert ("ThreatQ" if service == "threatq" else "VirusTotal") in str(error)
    settle(world)
    check_enriched_once(world)
    check_log(world.log.getvalue(), "text")


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_attributes_isolated(text_world: World, kind: str) -> None:
    world = text_world
    enrich_demo(world)
    world.pull()
    world.lookup()
    victim = min(item["id"] for item in world.tq.indicators())
    world.tq.faults.inject(kind, path=rf"^/api/indicators/{victim}/attributes$", method="GET")
    try:
        world.push()
    except ServiceUnavailableError:
        # ThreatQ kept returning 502, so the run stops and the row waits out its backoff.
        world.push()
    with world.ctx.sessions() as session:
        waiting = session.execute(select(OutboxEntry).where(
            OutboxEntry.status != "completed")).scalars().all()
    assert [(row.indicator_id, row.status) for row in waiting] == [(victim, "failed")]
    assert "ThreatQ" in (waiting[0].last_error or "")


def test_virustotal_garbage_stops_lookup_cleanly(text_world: World) -> None:
    world = text_world
    enrich_demo(world)
    world.pull()
    world.vt.faults.inject("malformed", path=OBJECTS)
    with pytest.raises(ServiceUnavailableError) as caught:
        world.lookup()
    assert "VirusTotal" in str(caught.value)
    assert "rerun later" in str(caught.value)
    assert world.outbox("new") == 0


# The CLI on an unreachable service, rejected credentials and a corrupt database


@pytest.fixture(scope="module")
def queued(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Simulators and a state database with writes queued by pull and lookup."""
    folder = tmp_path_factory.mktemp("queued")
    with running_simulators(vt_plan=UNLIMITED) as (tq, vt):
        seed_demo(tq, vt)
        env = clean_env(sim_env(tq, vt, str(folder / "template.db")))
        for command in (("sync", "pull", "--since", LONG_AGO), ("sync", "lookup")):
            result = run_cli(env, *command, cwd=folder)
            assert result.returncode == 0, result.stderr
        yield {"tq": tq, "vt": vt, "template": folder / "template.db"}


def copy_database(queued: dict[str, Any], folder: Path) -> Path:
    target = folder / "state.db"
    source = sqlite3.connect(queued["template"])
    with sqlite3.connect(target) as copy:
        source.backup(copy)
    source.close()
    return target


def outbox_rows(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT id, indicator_id, fingerprint FROM outbox "
                                  "WHERE status IN ('new', 'failed', 'started') ORDER BY id"
                                  ).fetchall()


CLI_FAILURES = [
    ("wrong_password", {"THREATQ_PASSWORD": "not-the-password"}, ("sync", "push"), 1,
     ("ThreatQ rejected the credentials", "THREATQ_PASSWORD")),
    ("wrong_vt_key", {"VT_API_KEY": "not-the-key"}, ("sync", "run"), 1,
     ("VirusTotal rejected the API key", "VT_API_KEY")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "changes", "command", "code", "phrases"), CLI_FAILURES)
def test_cli_failure_keeps_outbox(queued, tmp_path, name: str, changes: dict[str, str],
                                  command: tuple[str, ...], code: int,
                                  phrases: tuple[str, ...]) -> None:
    database = copy_database(queued, tmp_path)
    before = outbox_rows(database)
    env = clean_env(sim_env(queued["tq"], queued["vt"], str(database)))
    env.update(changes)
    result = run_cli(env, *command, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    message = error_line(result)
    for phrase in phrases:
        assert phrase in message, message
    assert message.count("\n") == 0
    assert outbox_rows(database) == before
    assert len(before) > 30


def random_bytes_file(folder: Path) -> Path:
    path = folder / "state.db"
    path.write_bytes(hashlib.sha256(b"not a database").digest() * 2048)
    return path


def truncated_database(queued: dict[str, Any], folder: Path) -> Path:
    path = copy_database(queued, folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make", [random_bytes_file, truncated_database])
@pytest.mark.parametrize("command", [("status",), ("sync", "push"), ("db", "upgrade")])
def test_corrupt_database_rejected(queued, tmp_path, make, command: tuple[str, ...]) -> None:
    database = make(queued, tmp_path) if make is truncated_database else make(tmp_path)
    before = database.read_bytes()
    env = clean_env(sim_env(queued["tq"], queued["vt"], str(database)))
    result = run_cli(env, *command, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    message = error_line(result)
    assert "state database" in message
    assert "unreadable" in message
    assert "restore a backup" in message
    assert "Traceback" not in result.stderr
    assert database.read_bytes() == before


def test_unreachable_threatq_keeps_outbox(text_world: World) -> None:
    """The in-process twin of the CLI cases: retries sleep on the FakeClock, not for real."""
    world = text_world
    seed_demo(world.tq, world.vt)
    world.pull()
    world.lookup()
    waiting = world.outbox("new")
    world.tq.stop()
    with pytest.raises(ServiceUnavailableError) as caught:
        world.push()
    message = str(caught.value)
    assert caught.value.exit_code == 75
    assert "could not be reached" in message
    assert "check THREATQ_URL" in message
    assert "nothing is lost" in message
    assert world.outbox("new", "failed", "started") == waiting
    assert waiting > 30


def test_unreachable_virustotal_is_temporary(text_world: World) -> None:
    world = text_world
    seed_demo(world.tq, world.vt)
    world.pull()
    world.vt.stop()
    with pytest.raises(ServiceUnavailableError) as caught:
        world.lookup()
    assert caught.value.exit_code == 75
    assert "check VT_API_URL and the network, then rerun" in str(caught.value)
    with world.ctx.sessions() as session:
        pending = session.scalar(select(func.count()).select_from(Indicator)
                                 .where(Indicator.status == "pending"))
    assert pending > 30
