"""``tqvt outbox list`` and ``tqvt outbox retry``: exact output and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tqvt_sync.cli.main import main
from tqvt_sync.db.models import OutboxEntry

CREATED = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
RETRIABLE = "RetriableApiError: ThreatQ returned HTTP 503 for POST /api/indicators/102/attributes"
REJECTED = ("PermanentApiError: ThreatQ rejected POST /api/indicators/103/attributes with "
            "HTTP 400: The value field is required.")
# (id, status, attempts, minutes until next_attempt_at, last_error); indicator id = 100 + id
ROWS = (
    (1, "completed", 1, 0, None),
    (2, "failed", 3, 5, RETRIABLE),
    (3, "dead", 8, 0, REJECTED),
    (4, "new", 0, 0, None),
    (5, "dead", 1, 0, "PermanentApiError: ThreatQ found nothing at GET /api/indicators/105/"
                      "attributes (HTTP 404): Not Found\nsecond line"),
)


@pytest.fixture
def outbox_db(engine, db_url, tmp_path, monkeypatch):
    """A migrated database with the rows of ROWS, named by TQVT_DB."""
    with Session(engine) as session, session.begin():
        for row_id, status, attempts, minutes, error in ROWS:
            session.add(OutboxEntry(
                id=row_id, indicator_id=100 + row_id, indicator_value=f"host{row_id}.example.net",
                indicator_type="FQDN", desired={"attributes": {"VirusTotal Verdict": "harmless"},
                                                "score": None},
                fingerprint="0" * 64, verdict="harmless", status=status, attempts=attempts,
                next_attempt_at=CREATED + timedelta(minutes=minutes), last_error=error,
                created_at=CREATED, updated_at=CREATED))
    monkeypatch.chdir(tmp_path)
    for name in ("TQVT_CONFIG", "TQVT_LOG_LEVEL", "TQVT_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TQVT_DB", db_url)
    return engine


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main(["--quiet", *args])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def stored(engine) -> dict[int, tuple[str, int, datetime]]:
    with Session(engine) as session:
        return {r.id: (r.status, r.attempts, r.next_attempt_at)
                for r in session.execute(select(OutboxEntry)).scalars()}


def test_list_failed_and_dead(outbox_db, capsys):
    assert run(capsys, "outbox", "list") == (0, (
        f"     2  indicator 102  failed  attempts 3  {RETRIABLE}\n"
        f"     3  indicator 103  dead    attempts 8  {REJECTED}\n"
        "     5  indicator 105  dead    attempts 1  PermanentApiError: ThreatQ found nothing at "
        "GET /api/indicators/105/attributes (HTTP 404): Not Found\\x0asecond line\n"
    ), "")


def test_list_status_filter(outbox_db, capsys):
    assert run(capsys, "outbox", "list", "--status", "new", "--status", "completed") == (0, (
        "     1  indicator 101  completed attempts 1  -\n"
        "     4  indicator 104  new     attempts 0  -\n"
    ), "")


def test_list_limit(outbox_db, capsys):
    _, out, _ = run(capsys, "outbox", "list", "--limit", "1")
    assert out == f"     2  indicator 102  failed  attempts 3  {RETRIABLE}\n"


def test_list_empty(outbox_db, capsys):
    assert run(capsys, "outbox", "list", "--status", "started") == (
        0, "No outbox rows with status started.\n", "")


def test_list_json(outbox_db, capsys):
    code, out, _ = run(capsys, "outbox", "list", "--json", "--status", "failed")
    assert code == 0
    assert json.loads(out) == [{
        "id": 2, "indicator_id": 102, "status": "failed", "attempts": 3, "verdict": "harmless",
        "next_attempt_at": "2026-01-05T12:05:00Z", "last_error": RETRIABLE,
    }]


def test_retry_one_dead_row(outbox_db, capsys):
    before = datetime.now(UTC)
    assert run(capsys, "outbox", "retry", "3") == (
        0, "Queued 1 row again; run 'tqvt sync push'.\n", "")
    status, attempts, due = stored(outbox_db)[3]
    assert (status, attempts) == ("failed", 1)
    assert before <= due <= datetime.now(UTC)


def test_retry_one_failed_row_due_now(outbox_db, capsys):
    before = datetime.now(UTC)
    assert run(capsys, "outbox", "retry", "2")[0] == 0
    status, attempts, due = stored(outbox_db)[2]
    assert (status, attempts) == ("failed", 1)
    assert due >= before


def test_retry_leaves_other_rows(outbox_db, capsys):
    before = stored(outbox_db)
    run(capsys, "outbox", "retry", "3")
    after = stored(outbox_db)
    assert {k: v for k, v in after.items() if k != 3} == {k: v for k, v in before.items()
                                                          if k != 3}


def test_retry_all_dead(outbox_db, capsys):
    assert run(capsys, "outbox", "retry", "--all-dead") == (
        0, "Queued 2 rows again; run 'tqvt sync push'.\n", "")
    rows = stored(outbox_db)
    assert [rows[i][:2] for i in (1, 2, 3, 4, 5)] == [
        ("completed", 1), ("failed", 3), ("failed", 1), ("new", 0), ("failed", 1)]


def test_retry_all_dead_when_none(outbox_db, capsys):
    run(capsys, "outbox", "retry", "--all-dead")
    assert run(capsys, "outbox", "retry", "--all-dead") == (
        0, "Queued 0 rows again; run 'tqvt sync push'.\n", "")


@pytest.mark.parametrize("row_id", ["1", "4", "99"])
def test_retry_rejects_row_not_dead_or_failed(outbox_db, capsys, row_id):
    assert run(capsys, "outbox", "retry", row_id) == (1, "", (
        f"Error: Outbox row {row_id} does not exist or is not dead or failed; "
        "see 'tqvt outbox list'.\n"))


@pytest.mark.parametrize("args", [(), ("3", "--all-dead")])
def test_retry_needs_exactly_one_target(outbox_db, capsys, args):
    assert run(capsys, "outbox", "retry", *args) == (2, "", (
        "Usage: tqvt outbox retry [OPTIONS] [ROW_ID]\n"
        "Try 'tqvt outbox retry --help' for help.\n\n"
        "Error: Give one outbox row id or --all-dead.\n"))


def test_retry_dead_row_merges_newer_waiting_row(tmp_path):
    """A retried dead row and a newer waiting row of one indicator become one waiting row."""
    from datetime import UTC, datetime

    from click.testing import CliRunner
    from sqlalchemy import select

    from tqvt_sync.cli.main import cli
    from tqvt_sync.db import migrate
    from tqvt_sync.db.engine import make_engine, session_factory
    from tqvt_sync.db.models import OutboxEntry

    db_path = tmp_path / "merge.db"
    engine = make_engine(f"sqlite:///{db_path}")
    migrate.upgrade(engine)
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        for status, verdict in (("dead", "harmless"), ("new", "malicious")):
            session.add(OutboxEntry(
                indicator_id=7, indicator_value="example.com", indicator_type="FQDN",
                desired={"attributes": {"VirusTotal Verdict": verdict}, "score": None},
                fingerprint=verdict.ljust(64, "0"), verdict=verdict, status=status,
                attempts=8 if status == "dead" else 0, next_attempt_at=now,
                created_at=now, updated_at=now,
            ))
    result = CliRunner().invoke(cli, ["--db", str(db_path), "outbox", "retry", "--all-dead"])
    assert result.exit_code == 0, result.output
    with sessions() as session:
        rows = session.execute(select(OutboxEntry).order_by(OutboxEntry.id)).scalars().all()
    assert len(rows) == 1
    assert rows[0].status == "failed"
    assert rows[0].verdict == "malicious"
    engine.dispose()
