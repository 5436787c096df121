"""`tqvt doctor` against the simulators: the exact line of every check, passing and failing.

The doctor runs in-process through the CLI entry point. Ports, paths and the schema
revision are put into the expected text; everything else is fixed.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from alembic.config import Config
from cli_invoke import CliResult, run_main
from support import sim_env

from tqvt_sync.db import migrate
from tqvt_sync.db.engine import make_engine, session_factory
from tqvt_sync.db.models import Indicator
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, ThreatQSimulator, VirusTotalSimulator

PREMIUM_KEY = "doctor-premium-key"
# The revision that the copied migrations of a "newer tqvt" add on top of the real head.
NEWER_HEAD = "9000"
PREMIUM = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)

CONFIGURATION_OK = ("ok       configuration        every setting that ThreatQ and VirusTotal "
                    "need is set")
REACHABLE_OK = "ok       threatq reachable    127.0.0.1:{tq_port} accepts connections"
TLS_LOOPBACK = ("ok       threatq tls          not used: plain http is accepted for the "
                "loopback host 127.0.0.1")
CREDENTIALS_OK = ("ok       threatq credentials  access token issued with the password grant "
                  "of analyst@example.com")
TYPES_OK = ("ok       indicator types      7 of 12 types are looked up; not looked up: CVE, "
            "Email Address, Filename, SHA-384, SHA-512")
VT_PUBLIC_OK = ("ok       virustotal key       key accepted (public); 0 of 500 calls used today, "
                "4 per minute")
DATABASE_OK = ("ok       database             sqlite:///{db} is writable, integrity ok, schema "
               "at {head} (current)")
VOLUME_PUBLIC_OK = ("ok       daily volume         0 lookups due, within the public key's 500 "
                    "calls a day")


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[ThreatQSimulator, VirusTotalSimulator]]:
    keys = {DEFAULT_API_KEY: QuotaPlan(), PREMIUM_KEY: PREMIUM}
    with ThreatQSimulator() as threatq, VirusTotalSimulator(keys=keys) as virustotal:
        yield threatq, virustotal


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def doctor(sims, workdir: Path, *options: str, **env: str | None) -> CliResult:
    tq, vt = sims
    environment = sim_env(tq, vt, str(workdir / "state.db"), **env)
    return run_main([*options, "doctor"], env=environment)


def expected(sims, workdir: Path, *lines: str) -> str:
    tq_port = urlsplit(sims[0].url).port
    values = {"tq_port": tq_port, "db": workdir / "state.db", "head": migrate.head_revision()}
    return "".join(line.format(**values) + "\n" for line in lines)


# --- every check passing ---------------------------------------------------------------


def test_doctor_all_checks_pass(sims, workdir):
    result = doctor(sims, workdir)

    assert result.stdout == expected(sims, workdir, CONFIGURATION_OK, REACHABLE_OK, TLS_LOOPBACK,
                                     CREDENTIALS_OK, TYPES_OK, VT_PUBLIC_OK, DATABASE_OK,
                                     VOLUME_PUBLIC_OK)
    assert result.exit_code == 0


def test_doctor_premium_key(sims, workdir):
    result = doctor(sims, workdir, VT_API_KEY=PREMIUM_KEY)

    assert result.stdout.splitlines()[5:] == [
        "ok       virustotal key       key accepted (premium); 0 of 100000 calls used today, "
        "1000 per minute",
        expected(sims, workdir, DATABASE_OK).rstrip("\n"),
        "ok       daily volume         0 lookups due; the premium key allows 100000 calls a day",
    ]
    assert result.exit_code == 0


def test_doctor_uses_no_quota(sims, workdir):
    vt = sims[1]
    before = vt.quota_used(DEFAULT_API_KEY)["daily"]

    doctor(sims, workdir)

    assert vt.quota_used(DEFAULT_API_KEY)["daily"] == before


# --- failing and warning checks ----------------------------------------------------------


def test_doctor_wrong_password(sims, workdir):
    result = doctor(sims, workdir, THREATQ_PASSWORD="wrong-password")

    assert result.stdout == expected(
        sims, workdir, CONFIGURATION_OK, REACHABLE_OK, TLS_LOOPBACK,
        "failed   threatq credentials  ThreatQ rejected the credentials (HTTP 400 for /api/token: "
        "The client id, email or password is invalid.); check THREATQ_CLIENT_ID, THREATQ_EMAIL "
        "and THREATQ_PASSWORD",
        "skipped  indicator types      not checked because 'threatq credentials' failed",
        VT_PUBLIC_OK, DATABASE_OK, VOLUME_PUBLIC_OK)
    assert result.exit_code == 1
    assert result.stderr.endswith("1 check failed.\n")


def test_doctor_wrong_vt_key(sims, workdir):
    result = doctor(sims, workdir, VT_API_KEY="wrong-vt-key")

    assert result.stdout == expected(
        sims, workdir, CONFIGURATION_OK, REACHABLE_OK, TLS_LOOPBACK, CREDENTIALS_OK, TYPES_OK,
        "failed   virustotal key       VirusTotal rejected the API key (HTTP 401 "
        "WrongCredentialsError); check VT_API_KEY",
        DATABASE_OK,
        "skipped  daily volume         not checked because 'virustotal key' failed")
    assert result.exit_code == 1


def test_doctor_threatq_refused(sims, workdir):
    port = refused_port()

    result = doctor(sims, workdir, THREATQ_URL=f"http://127.0.0.1:{port}")

    assert result.stdout == expected(
        sims, workdir, CONFIGURATION_OK,
        f"failed   threatq reachable    cannot connect to 127.0.0.1:{port}: connection failed "
        "(Connection refused); check THREATQ_URL, that ThreatQ is running, and the firewalls "
        "and proxies in between",
        "skipped  threatq tls          not checked because 'threatq reachable' failed",
        "skipped  threatq credentials  not checked because 'threatq reachable' failed",
        "skipped  indicator types      not checked because 'threatq reachable' failed",
        VT_PUBLIC_OK, DATABASE_OK, VOLUME_PUBLIC_OK)
    assert result.exit_code == 1


def test_doctor_missing_settings(sims, workdir):
    result = doctor(sims, workdir, VT_API_KEY=None, THREATQ_PASSWORD=None)

    assert result.stdout == expected(
        sims, workdir,
        "failed   configuration        Missing ThreatQ settings: THREATQ_PASSWORD. Set them in "
        "the environment, in .env or in the config file, for example: "
        "THREATQ_PASSWORD=<password>. Missing VirusTotal settings: VT_API_KEY. Set them in the "
        "environment, in .env or in the config file, for example: "
        "VT_API_KEY=<64-character API key>.",
        "skipped  threatq reachable    not checked because 'configuration' failed",
        "skipped  threatq tls          not checked because 'configuration' failed",
        "skipped  threatq credentials  not checked because 'configuration' failed",
        "skipped  indicator types      not checked because 'configuration' failed",
        "skipped  virustotal key       not checked because 'configuration' failed",
        DATABASE_OK,
        "skipped  daily volume         not checked because 'configuration' failed")
    assert result.exit_code == 1


def test_doctor_invalid_setting(sims, workdir):
    result = doctor(sims, workdir, TQVT_DAILY_RESERVE="many")

    assert result.stdout == (
        "failed   configuration        Invalid value for TQVT_DAILY_RESERVE (environment "
        "variable): 'many' (expected a whole number). Example: TQVT_DAILY_RESERVE=50.\n")
    assert result.exit_code == 1


def test_doctor_type_missing_in_instance(sims, workdir):
    (workdir / "tqvt.toml").write_text('[types]\n"SHA256 Hash" = "file"\n', encoding="utf-8")

    result = doctor(sims, workdir, "--config", "tqvt.toml")

    assert result.stdout == expected(
        sims, workdir, CONFIGURATION_OK, REACHABLE_OK, TLS_LOOPBACK, CREDENTIALS_OK,
        "warning  indicator types      the type map names types that this ThreatQ does not "
        "define: SHA256 Hash; correct or remove them in the [types] table of the config file",
        VT_PUBLIC_OK, DATABASE_OK, VOLUME_PUBLIC_OK)
    assert result.exit_code == 0


def test_doctor_no_type_mapped(sims, workdir):
    toml = "[types]\n" + "".join(f'"{name}" = ""\n' for name in
                                 ("MD5", "SHA-1", "SHA-256", "URL", "FQDN", "IP Address",
                                  "IPv6 Address"))
    (workdir / "tqvt.toml").write_text(toml, encoding="utf-8")

    result = doctor(sims, workdir, "--config", "tqvt.toml")

    assert result.stdout.splitlines()[4] == (
        "failed   indicator types      none of this ThreatQ's indicator types maps to a "
        "VirusTotal kind; add its type names to the [types] table of the config file")
    assert result.exit_code == 1


def test_doctor_quota_spent(sims, workdir):
    vt = sims[1]
    vt.set_used(DEFAULT_API_KEY, daily=500)
    try:
        result = doctor(sims, workdir)
    finally:
        vt.set_used(DEFAULT_API_KEY, daily=0)

    assert result.stdout.splitlines()[5] == (
        "warning  virustotal key       key accepted (public); 500 of 500 calls used today, "
        "4 per minute; today's quota is spent, so lookups wait until 00:00 UTC")
    assert result.exit_code == 0


def test_doctor_private_flag_on_public_key(sims, workdir):
    result = doctor(sims, workdir, VT_PRIVATE_KEY="true")

    assert result.stdout.splitlines()[5] == (
        "warning  virustotal key       key accepted (public); 0 of 500 calls used today, "
        "4 per minute; VT_PRIVATE_KEY=true but the key has the daily allowance of a public "
        "key; set VT_PRIVATE_KEY=false or use the premium key")


def test_doctor_public_key_large_backlog(sims, workdir):
    add_due_indicators(workdir / "state.db", 501, shared=3)

    result = doctor(sims, workdir)

    assert result.stdout.splitlines()[7] == (
        "warning  daily volume         a public key with 501 lookups due at 500 calls a day "
        "needs 2 days; the public API is not for commercial use, so use a premium key for "
        "this volume")
    assert result.exit_code == 0


def test_doctor_backlog_within_public_allowance(sims, workdir):
    add_due_indicators(workdir / "state.db", 500, shared=3)

    result = doctor(sims, workdir)

    assert result.stdout.splitlines()[7] == (
        "ok       daily volume         500 lookups due, within the public key's 500 calls a day")


def test_doctor_reserve_lowers_capacity(sims, workdir):
    add_due_indicators(workdir / "state.db", 450, shared=0)

    result = doctor(sims, workdir, TQVT_DAILY_RESERVE="100")

    assert result.stdout.splitlines()[7] == (
        "warning  daily volume         a public key with 450 lookups due at 400 calls a day "
        "needs 2 days; the public API is not for commercial use, so use a premium key for "
        "this volume")


def test_doctor_outdated_schema(sims, workdir, monkeypatch):
    current = migrate.head_revision()
    use_migrations_with_newer_head(workdir / "migrations", monkeypatch)
    engine = make_engine(f"sqlite:///{workdir / 'state.db'}")
    migrate.upgrade(engine, current)
    engine.dispose()

    result = doctor(sims, workdir)

    lines = result.stdout.splitlines()
    assert lines[6:] == [
        f"failed   database             The state database is at schema revision {current}, "
        f"older than {NEWER_HEAD}; run 'tqvt db upgrade'.",
        "skipped  daily volume         not checked because 'database' failed",
    ]
    assert result.exit_code == 1


def test_doctor_unknown_schema_revision(sims, workdir):
    engine = make_engine(f"sqlite:///{workdir / 'state.db'}")
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()

    result = doctor(sims, workdir)

    assert result.stdout.splitlines()[6] == (
        "failed   database             The state database is at schema revision 9999, which "
        "this version of tqvt does not know; upgrade tqvt or use another database.")
    assert result.exit_code == 1


def test_doctor_corrupt_database(sims, workdir):
    path = workdir / "state.db"
    add_due_indicators(path, 1, shared=0)
    break_index(path)

    result = doctor(sims, workdir)

    assert result.stdout.splitlines()[6] == (
        "failed   database             integrity check reports 'row 1 missing from index "
        "ix_indicators_due'; restore a backup, or move the file aside and run 'tqvt db upgrade'")
    assert result.exit_code == 1


# --- TLS ---------------------------------------------------------------------------------


def test_doctor_tls_untrusted_certificate(sims, workdir, tls_server):
    url, _cert = tls_server

    result = doctor(sims, workdir, THREATQ_URL=url)

    lines = result.stdout.splitlines()
    assert lines[1] == f"ok       threatq reachable    {urlsplit(url).netloc} accepts connections"
    assert lines[2] == (
        "failed   threatq tls          TLS certificate verification failed (self-signed "
        "certificate); set THREATQ_CA_BUNDLE to the PEM file of the CA that signed it")
    assert lines[3] == "skipped  threatq credentials  not checked because 'threatq tls' failed"
    assert result.exit_code == 1


def test_doctor_tls_verified_with_bundle(sims, workdir, tls_server):
    url, cert = tls_server

    result = doctor(sims, workdir, THREATQ_URL=url, THREATQ_CA_BUNDLE=str(cert))

    assert result.stdout.splitlines()[2] == (
        f"ok       threatq tls          certificate verified with THREATQ_CA_BUNDLE {cert}")


def test_doctor_tls_verification_off(sims, workdir, tls_server):
    url, _cert = tls_server

    result = doctor(sims, workdir, THREATQ_URL=url, THREATQ_VERIFY_TLS="false")

    assert result.stdout.splitlines()[2] == (
        "warning  threatq tls          certificate not verified because "
        "THREATQ_VERIFY_TLS=false; set THREATQ_CA_BUNDLE instead and remove THREATQ_VERIFY_TLS")


def test_doctor_https_to_plain_http_server(sims, workdir):
    port = urlsplit(sims[0].url).port

    result = doctor(sims, workdir, THREATQ_URL=f"https://127.0.0.1:{port}")

    line = result.stdout.splitlines()[2]
    assert line.startswith("failed   threatq tls          TLS error (")
    assert line.endswith("); check that THREATQ_URL is the https address of ThreatQ")


# --- helpers -----------------------------------------------------------------------------


def refused_port() -> int:
    """Return a 127.0.0.1 port that was just free, so a connection to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_due_indicators(path: Path, identifiers: int, *, shared: int) -> None:
    """Store never-looked-up FQDN indicators: ``identifiers`` distinct names, plus ``shared``
    more indicators that repeat names already stored."""
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    now = datetime.now(UTC)
    names = [f"host{number}.example.com" for number in range(identifiers)]
    names += names[:shared]
    with session_factory(engine).begin() as session:
        for number, name in enumerate(names, start=1):
            session.add(Indicator(id=number, value=name, type_name="FQDN", kind="domain",
                                  identifier=name, status="pending", pulled_at=now))
    engine.dispose()


def use_migrations_with_newer_head(directory: Path, monkeypatch) -> None:
    """Point tqvt at a copy of its migrations with one more revision, as a newer tqvt has."""
    source = resources.files("tqvt_sync.migrations")
    shutil.copytree(str(source), directory, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "versions" / f"{NEWER_HEAD}_doctor_newer_head.py").write_text(
        f'revision = "{NEWER_HEAD}"\n'
        f'down_revision = "{migrate.head_revision()}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        "    pass\n\n\n"
        "def downgrade() -> None:\n"
        "    pass\n",
        encoding="utf-8",
    )

    def alembic_config() -> Config:
        config = Config()
        config.set_main_option("script_location", str(directory))
        return config

    monkeypatch.setattr(migrate, "alembic_config", alembic_config)


def break_index(path: Path) -> None:
    """Change the definition of an index so that its stored entries no longer match the rows."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA writable_schema=ON")
        connection.execute("UPDATE sqlite_schema SET sql = replace(sql, "
                           "'(status, next_lookup_at)', '(value, next_lookup_at)') "
                           "WHERE name = 'ix_indicators_due'")
        connection.commit()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; yields its URL and cert."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
