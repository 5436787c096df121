"""Limits on settings and options that would otherwise fail late or stall pulls."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tqvt_sync.cli.main import cli
from tqvt_sync.config import load_settings
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
