"""Canary test: no secret reaches output, logs, the state database or an exception.

Every secret is set to a value that contains CANARY. The CLI runs as a subprocess with
``--log-level DEBUG`` in both log formats, on success and failure paths, against
simulators that accept the canary credentials. Its stdout, its stderr and every file in
its working directory (the SQLite database with its -wal and -shm files, and the lock
files) are searched for the canary as bytes. In-process, the errors of both clients are
searched together with every exception chained to them.
"""

from __future__ import annotations

import base64
import os
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from loopback_http import refused_url
from security_support import clean_env, run_cli
from tqvt_sync.clock import FakeClock
from tqvt_sync.errors import TqvtError
from tqvt_sync.sandbox import QuotaPlan, ThreatQSimulator, VirusTotalSimulator
from tqvt_sync.sandbox.seed import seed_demo
from tqvt_sync.threatq.client import ThreatQClient
from tqvt_sync.virustotal.client import VirusTotalClient

CANARY = "Kanarie7Q2x"
PASSWORD = f"{CANARY}-password"
CLIENT_SECRET = f"{CANARY}-client-secret"
VT_KEY = f"{CANARY}-vt-key"
CLIENT_ID = "tqvt-canary-client"
EMAIL = "canary@example.com"
PLAN = QuotaPlan(minute=None, hourly=None, daily=1000, monthly=None)
FORMATS = ("text", "json")
OBJECT_PATHS = r"^/api/v3/(files|urls|domains|ip_addresses)/"
QUOTA_PATH = r"^/api/v3/users/"
# Parallel CLI runs; most of a run's time is interpreter start-up or retry sleeps.
WORKERS = 4


def forbidden_bytes() -> list[bytes]:
    """Return the spellings of the secrets that must never be written anywhere."""
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode())
    return [CANARY.encode(), basic, CANARY.encode("utf-16-le")]


def leaks(data: bytes) -> list[bytes]:
    return [spelling for spelling in forbidden_bytes() if spelling in data]


@dataclass
class Scenario:
    """A CLI path: the settings it changes, a simulator set-up and commands with exit codes."""

    name: str
    commands: list[tuple[tuple[str, ...], int]]
    env: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    prepare: Callable[[ThreatQSimulator, VirusTotalSimulator], None] | None = None


def _spend_daily_quota_unseen(tq: ThreatQSimulator, vt: VirusTotalSimulator) -> None:
    # The quota endpoint fails once, so tqvt books calls and meets a real 429.
    vt.set_used(VT_KEY, daily=PLAN.daily)
    vt.faults.inject("status", path=QUOTA_PATH, status=500, times=1)


SCENARIOS = [
    Scenario("success", [
        (("sync", "run", "--since", "3650d"), 0),
        (("status",), 0),
        (("config", "show", "--json"), 0),
        (("doctor",), 0),
    ]),
    Scenario("client_secret_grant", [(("sync", "pull", "--since", "3650d"), 0)],
             env={"THREATQ_CLIENT_SECRET": CLIENT_SECRET},
             drop=("THREATQ_EMAIL", "THREATQ_PASSWORD")),
    Scenario("wrong_password", [(("sync", "pull", "--since", "3650d"), 1), (("doctor",), 1)],
             env={"THREATQ_PASSWORD": f"{PASSWORD}-wrong"}),
    Scenario("wrong_vt_key", [(("sync", "run", "--since", "3650d"), 1), (("doctor",), 1)],
             env={"VT_API_KEY": f"{VT_KEY}-wrong"}),
    Scenario("threatq_unreachable", [(("sync", "pull", "--since", "3650d"), 75)],
             env={"THREATQ_URL": "refused"}),
    Scenario("virustotal_429", [(("sync", "run", "--since", "3650d"), 75)],
             prepare=_spend_daily_quota_unseen),
    Scenario("virustotal_5xx", [(("sync", "run", "--since", "3650d"), 0)],
             prepare=lambda tq, vt: vt.faults.inject("status", path=OBJECT_PATHS, status=503,
                                                     times=1)),
    Scenario("threatq_token_400", [(("sync", "pull", "--since", "3650d"), 1)],
             env={"THREATQ_CLIENT_SECRET": CLIENT_SECRET},
             drop=("THREATQ_EMAIL", "THREATQ_PASSWORD"),
             prepare=lambda tq, vt: tq.faults.inject("status", path="^/api/token", status=400)),
]


@dataclass
class Outcome:
    """What one CLI command left behind."""

    command: tuple[str, ...]
    expected: int
    returncode: int
    stdout: bytes
    stderr: bytes
    files: dict[str, bytes]


def canary_simulators(stack: ExitStack) -> tuple[ThreatQSimulator, VirusTotalSimulator]:
    tq = stack.enter_context(ThreatQSimulator(client_id=CLIENT_ID, email=EMAIL, password=PASSWORD,
                                              client_secret=CLIENT_SECRET))
    vt = stack.enter_context(VirusTotalSimulator(keys={VT_KEY: PLAN}))
    seed_demo(tq, vt)
    return tq, vt


def base_env(tq: ThreatQSimulator, vt: VirusTotalSimulator, db: str) -> dict[str, str]:
    env = clean_env({key: value for key, value in os.environ.items()
                     if not key.startswith(("THREATQ_", "VT_", "TQVT_"))})
    env.update({
        "THREATQ_URL": tq.url,
        "THREATQ_CLIENT_ID": CLIENT_ID,
        "THREATQ_EMAIL": EMAIL,
        "THREATQ_PASSWORD": PASSWORD,
        "VT_API_KEY": VT_KEY,
        "VT_API_URL": vt.url,
        "TQVT_DB": db,
    })
    return env


def read_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def run_scenario(scenario: Scenario, log_format: str, workdir: Path) -> list[Outcome]:
    workdir.mkdir(parents=True)
    outcomes = []
    with ExitStack() as stack:
        tq, vt = canary_simulators(stack)
        if scenario.prepare is not None:
            scenario.prepare(tq, vt)
        env = base_env(tq, vt, str(workdir / "state.db"))
        env.update(scenario.env)
        if env["THREATQ_URL"] == "refused":
            env["THREATQ_URL"] = refused_url()
        for name in scenario.drop:
            env.pop(name)
        for command, expected in scenario.commands:
            result = run_cli(env, "--log-level", "DEBUG", "--log-format", log_format, *command,
                             cwd=workdir)
            outcomes.append(Outcome(command, expected, result.returncode,
                                    result.stdout.encode(), result.stderr.encode(),
                                    read_files(workdir)))
    return outcomes


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[tuple[str, str], list[Outcome]]:
    root = tmp_path_factory.mktemp("canary")
    jobs = [(scenario, log_format) for scenario in SCENARIOS for log_format in FORMATS]
    # The unreachable scenario sleeps between its retries, so it starts first and its
    # sleeps overlap the other runs.
    jobs.sort(key=lambda job: job[0].name != "threatq_unreachable")
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {(scenario.name, log_format): pool.submit(
            run_scenario, scenario, log_format, root / f"{scenario.name}-{log_format}")
            for scenario, log_format in jobs}
        return {key: future.result() for key, future in futures.items()}


CASES = [(scenario.name, log_format) for scenario in SCENARIOS for log_format in FORMATS]


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "log_format"), CASES)
def test_cli_exit_codes(outcomes, scenario: str, log_format: str) -> None:
    for outcome in outcomes[(scenario, log_format)]:
        assert outcome.returncode == outcome.expected, (outcome.command, outcome.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "log_format"), CASES)
def test_canary_absent_from_stdout(outcomes, scenario: str, log_format: str) -> None:
    for outcome in outcomes[(scenario, log_format)]:
        assert leaks(outcome.stdout) == [], outcome.command


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "log_format"), CASES)
def test_canary_absent_from_stderr(outcomes, scenario: str, log_format: str) -> None:
    for outcome in outcomes[(scenario, log_format)]:
        assert leaks(outcome.stderr) == [], outcome.command


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "log_format"), CASES)
def test_canary_absent_from_files(outcomes, scenario: str, log_format: str) -> None:
    for outcome in outcomes[(scenario, log_format)]:
        leaked = {name: leaks(data) for name, data in outcome.files.items() if leaks(data)}
        assert leaked == {}, outcome.command


@pytest.mark.slow
@pytest.mark.parametrize("log_format", FORMATS)
def test_success_run_was_searched(outcomes, log_format: str) -> None:
    first = outcomes[("success", log_format)][0]
    assert b"sync_run" in first.stderr or b"pull started" in first.stderr
    assert "state.db" in first.files


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TQVT_TEST_POSTGRES_URL"),
                    reason="TQVT_TEST_POSTGRES_URL is not set")
def test_database_password_hidden(tmp_path) -> None:
    from postgres_support import fresh_database

    with fresh_database() as url, ExitStack() as stack:
        tq, vt = canary_simulators(stack)
        secret_url = make_url(url).set(password=f"{CANARY}-db-password")
        unreachable = secret_url.set(port=int(refused_url().rsplit(":", 1)[1]))
        runs = []
        for database, commands in (
            (secret_url, [(("sync", "run", "--since", "3650d"), 0), (("config", "show"), 0),
                          (("doctor",), 0)]),
            (unreachable, [(("status",), 75)]),
        ):
            env = base_env(tq, vt, database.render_as_string(hide_password=False))
            for log_format in FORMATS:
                for command, expected in commands:
                    result = run_cli(env, "--log-level", "DEBUG", "--log-format", log_format,
                                     *command, cwd=tmp_path)
                    runs.append((expected, result))
    assert len(runs) == 8
    for expected, result in runs:
        assert result.returncode == expected, (result.args, result.stderr[-2000:])
        assert leaks(result.stdout.encode()) == [], result.args
        assert leaks(result.stderr.encode()) == [], result.args


# Exceptions raised by the clients, with everything chained to them


def chain_text(error: BaseException) -> str:
    """Return the text of ``error`` and of every exception reachable from it."""
    parts: list[str] = []
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current),
                  "".join(traceback.format_exception(current, chain=False))]
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None),
                  *current.args]
        pending += [item for item in linked if isinstance(item, BaseException)]
    return "\n".join(parts)


@pytest.fixture
def simulators() -> Iterator[tuple[ThreatQSimulator, VirusTotalSimulator]]:
    with ExitStack() as stack:
        yield canary_simulators(stack)


def tq_client(url: str, **credentials: str) -> ThreatQClient:
    options = {"email": EMAIL, "password": PASSWORD, **credentials}
    return ThreatQClient(url, client_id=CLIENT_ID, clock=FakeClock(), max_attempts=2, timeout=5,
                         **options)


def raised_by(call: Callable[[], object]) -> BaseException:
    with pytest.raises(TqvtError) as caught:
        call()
    return caught.value


THREATQ_FAULTS = [
    ("reset_before", None, "^/api/token"),
    ("truncated", None, "^/api/token"),
    ("html", None, "^/api/token"),
    ("malformed", None, "^/api/token"),
    ("status", 400, "^/api/token"),
    ("reset_after_commit", None, "^/api/indicators/query"),
    ("malformed", None, "^/api/indicators/query"),
]


@pytest.mark.parametrize(("kind", "status", "path"), THREATQ_FAULTS)
@pytest.mark.parametrize("grant", ["password", "client_secret"])
def test_threatq_error_chain_clean(simulators, kind: str, status: int | None, path: str,
                                   grant: str) -> None:
    tq, _ = simulators
    tq.faults.inject(kind, path=path, status=status)
    credentials = {"client_secret": CLIENT_SECRET} if grant == "client_secret" else {}
    with tq_client(tq.url, **credentials) as client:
        error = raised_by(lambda: client.fetch_indicator_page(limit=5))
    assert CANARY not in chain_text(error)


@pytest.mark.parametrize("credentials", [{"password": f"{PASSWORD}-wrong"},
                                         {"client_secret": f"{CLIENT_SECRET}-wrong"}])
def test_threatq_rejected_credentials_clean(simulators, credentials: dict[str, str]) -> None:
    tq, _ = simulators
    with tq_client(tq.url, **credentials) as client:
        error = raised_by(client.fetch_token)
    assert CANARY not in chain_text(error)


def test_threatq_unreachable_clean() -> None:
    with tq_client(refused_url(), client_secret=CLIENT_SECRET) as client:
        error = raised_by(client.fetch_token)
    assert CANARY not in chain_text(error)


VIRUSTOTAL_FAULTS = [
    ("reset_before", None), ("truncated", None), ("html", None), ("malformed", None),
    ("status", 429), ("status", 503), ("status", 401),
]


@pytest.mark.parametrize(("kind", "status"), VIRUSTOTAL_FAULTS)
@pytest.mark.parametrize("call", ["quotas", "object"])
def test_virustotal_error_chain_clean(simulators, kind: str, status: int | None,
                                      call: str) -> None:
    _, vt = simulators
    vt.faults.inject(kind, status=status)
    with VirusTotalClient(vt.url, VT_KEY, timeout=5) as client:
        request = client.fetch_overall_quotas if call == "quotas" else \
            (lambda: client.fetch_object("domain", "example.com"))
        error = raised_by(request)
    assert CANARY not in chain_text(error)


@pytest.mark.parametrize("call", ["quotas", "object"])
def test_virustotal_unreachable_clean(call: str) -> None:
    with VirusTotalClient(refused_url() + "/api/v3", VT_KEY, timeout=5) as client:
        request = client.fetch_overall_quotas if call == "quotas" else \
            (lambda: client.fetch_object("domain", "example.com"))
        error = raised_by(request)
    assert CANARY not in chain_text(error)


def test_virustotal_wrong_key_clean(simulators) -> None:
    _, vt = simulators
    with VirusTotalClient(vt.url, f"{VT_KEY}-wrong", timeout=5) as client:
        error = raised_by(client.fetch_overall_quotas)
    assert CANARY not in chain_text(error)
