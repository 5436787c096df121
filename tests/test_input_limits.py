"""Limits on settings and options that would otherwise fail late or stall pulls."""

from __future__ import annotations

import sqlite3

import pytest
from cli_invoke import run_main
from click.testing import CliRunner

from tqvt_sync.cli.main import cli
from tqvt_sync.config import load_settings
from tqvt_sync.db import engine as engine_module
from tqvt_sync.db.engine import make_engine
from tqvt_sync.errors import ConfigError


@pytest.mark.parametrize("value", ["999999999d", "99999999999999999999d", "3651d"])
def test_cache_ttl_above_ten_years_rejected(tmp_path, value):
    with pytest.raises(ConfigError, match="TQVT_CACHE_TTL"):
        load_settings(environ={"TQVT_CACHE_TTL": value}, cwd=str(tmp_path))


def test_cache_ttl_ten_years_accepted(tmp_path):
    settings = load_settings(environ={"TQVT_CACHE_TTL": "3650d"}, cwd=str(tmp_path))
    assert settings.cache_ttl.days == 3650


def test_config_file_not_utf8_rejected(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe threatq_url = 1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(config_file=str(path), environ={}, cwd=str(tmp_path))


def test_dotenv_not_utf8_rejected(tmp_path):
    (tmp_path / ".env").write_bytes(b"\xff\xfeTHREATQ_URL=x\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(environ={}, cwd=str(tmp_path))


def test_since_in_future_is_usage_error(tmp_path):
    result = CliRunner().invoke(
        cli, ["--db", str(tmp_path / "s.db"), "sync", "pull", "--since", "2099-01-01"])
    assert result.exit_code == 2
    assert "--since" in result.output
    assert "future" in result.output


def test_since_unparsable_names_option(tmp_path):
    result = CliRunner().invoke(
        cli, ["--db", str(tmp_path / "s.db"), "sync", "pull", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "--since" in result.output


@pytest.mark.parametrize("value", ["800000d", "99999999999999999999999s"])
def test_since_too_far_back_is_usage_error(tmp_path, value):
    result = run_main(["--db", str(tmp_path / "s.db"), "sync", "pull", "--since", value])
    assert result.exit_code == 2
    assert "before the year 1" in result.stderr


def test_empty_collection_is_usage_error(tmp_path):
    result = run_main(["--db", str(tmp_path / "s.db"), "sync", "pull", "--collection", " "])
    assert result.exit_code == 2
    assert "'--collection'" in result.stderr


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_database_rejected(url):
    with pytest.raises(ConfigError, match="in-memory database, which keeps nothing"):
        make_engine(url)


def test_missing_database_driver_named():
    with pytest.raises(ConfigError, match=r"'psycopg2' .* pip install 'tqvt\[postgres\]'"):
        make_engine("postgresql+psycopg2://tqvt@127.0.0.1/tqvt")


def test_locked_database_is_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "s.db"
    assert run_main(["--db", str(path), "db", "upgrade"]).exit_code == 0
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        result = run_main(["--db", str(path), "status"])
    finally:
        blocker.rollback()
        blocker.close()
    assert result.exit_code == 75
    assert result.stderr.startswith("Error: the state database stayed locked by another")
