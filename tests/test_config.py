"""Tests of settings loading: precedence, validation messages, tables, secrets, display."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from tqvt_sync.config import (
    Settings,
    config_show_json,
    database_url,
    default_db_path,
    format_config_show,
    load_settings,
    redacted,
    require_threatq,
    require_virustotal,
    secret_values,
    warnings_for,
)
from tqvt_sync.errors import ConfigError
from tqvt_sync.settings_spec import (
    DEFAULT_SCORES,
    DEFAULT_TYPES,
    SECRET_NAMES,
    SETTINGS,
    format_duration,
    parse_bool,
    parse_duration,
)

CANARY = "canary-7f3a9c-secret"


def load(tmp_path: Path, env: dict[str, str] | None = None, *, toml: str | None = None,
         dotenv: str | None = None, options: dict[str, object] | None = None) -> Settings:
    """Load settings from a private environment, with optional TOML and .env files in tmp_path."""
    environ = {"HOME": str(tmp_path / "home"), **(env or {})}
    config_file = None
    if toml is not None:
        config_file = str(tmp_path / "tqvt.toml")
        Path(config_file).write_text(toml, encoding="utf-8")
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv, encoding="utf-8")
    return load_settings(options=options, config_file=config_file, environ=environ,
                         cwd=str(tmp_path))


def load_error(tmp_path: Path, env: dict[str, str] | None = None, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# --- precedence -------------------------------------------------------------------------

PRECEDENCE = [
    # name, env var, default, then the value given by file, .env, environment, option
    ("page_size", "TQVT_PAGE_SIZE", 500, (100, 200, 300, 400)),
    ("cache_ttl", "TQVT_CACHE_TTL", timedelta(days=7),
     (timedelta(hours=1), timedelta(hours=2), timedelta(hours=3), timedelta(hours=4))),
    ("log_format", "TQVT_LOG_FORMAT", "text", ("json", "text", "json", "text")),
    ("vt_concurrency", "TQVT_VT_CONCURRENCY", 1, (2, 3, 4, 5)),
]
RAW = {
    "page_size": ("100", "200", "300", "400"),
    "cache_ttl": ("1h", "2h", "3h", "4h"),
    "log_format": ("json", "text", "json", "text"),
    "vt_concurrency": ("2", "3", "4", "5"),
}


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("name", "env", "default", "values"), PRECEDENCE)
def test_precedence_later_source_wins(tmp_path, layers, name, env, default, values):
    raw = RAW[name]
    toml = f'{name} = "{raw[0]}"\n' if layers >= 1 else None
    dotenv = f"{env}={raw[1]}\n" if layers >= 2 else None
    environ = {env: raw[2]} if layers >= 3 else {}
    options = {name: raw[3]} if layers >= 4 else None

    settings = load(tmp_path, environ, toml=toml, dotenv=dotenv, options=options)

    expected_origins = ["default", f"file:{tmp_path / 'tqvt.toml'}", ".env", f"env:{env}",
                        "option"]
    expected_value = default if layers == 0 else values[layers - 1]
    assert getattr(settings, name) == expected_value
    assert settings.origins[name] == expected_origins[layers]


def test_precedence_db_path_origins(tmp_path):
    settings = load(tmp_path, {"TQVT_DB": "/env/state.db"}, toml='db = "/file/state.db"',
                    dotenv="TQVT_DB=/dotenv/state.db")
    assert settings.db == "/env/state.db"
    assert settings.origins["db"] == "env:TQVT_DB"


def test_none_option_not_given(tmp_path):
    settings = load(tmp_path, {"TQVT_LOG_LEVEL": "DEBUG"}, options={"log_level": None})
    assert settings.log_level == "DEBUG"
    assert settings.origins["log_level"] == "env:TQVT_LOG_LEVEL"


def test_empty_value_counts_as_not_given(tmp_path):
    settings = load(tmp_path, {"TQVT_PAGE_SIZE": "  "}, toml="page_size = 50")
    assert settings.page_size == 50


def test_real_environ_and_cwd_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQVT_PAGE_SIZE", "42")
    monkeypatch.delenv("VT_API_KEY", raising=False)
    (tmp_path / ".env").write_text("VT_API_KEY=from-dotenv-file\n", encoding="utf-8")

    settings = load_settings()

    assert settings.page_size == 42
    assert settings.vt_api_key == "from-dotenv-file"
    assert "VT_API_KEY" not in os.environ


def test_dotenv_values_are_literal(tmp_path):
    settings = load(tmp_path, dotenv="THREATQ_PASSWORD=pa$HOME${HOME}word\n")
    assert settings.threatq_password == "pa$HOME${HOME}word"


def test_config_file_from_environment(tmp_path):
    (tmp_path / "conf.toml").write_text("page_size = 7\n", encoding="utf-8")
    settings = load(tmp_path, {"TQVT_CONFIG": "conf.toml"})
    assert settings.page_size == 7
    assert settings.origins["page_size"] == f"file:{tmp_path / 'conf.toml'}"


def test_config_file_from_dotenv(tmp_path):
    (tmp_path / "conf.toml").write_text("page_size = 8\n", encoding="utf-8")
    settings = load(tmp_path, dotenv=f"TQVT_CONFIG={tmp_path / 'conf.toml'}\n")
    assert settings.page_size == 8


def test_config_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(config_file=str(tmp_path / "absent.toml"), environ={}, cwd=str(tmp_path))


def test_config_file_invalid_toml(tmp_path):
    message = load_error(tmp_path, toml="page_size = = 3\n")
    assert "Invalid TOML" in message
    assert "line 1" in message


# --- validation messages ----------------------------------------------------------------

ENV_ERRORS = [
    # variable, bad value, fragments the message must contain
    ("TQVT_CACHE_TTL", "3x", ["expected a duration", "Example: TQVT_CACHE_TTL=7d."]),
    ("TQVT_NOT_FOUND_TTL", "-1d", ["expected a duration", "TQVT_NOT_FOUND_TTL=1d"]),
    ("THREATQ_VERIFY_TLS", "maybe", ["expected true or false", "THREATQ_VERIFY_TLS=true"]),
    ("TQVT_PAGE_SIZE", "501", ["must be between 1 and 500", "TQVT_PAGE_SIZE=500"]),
    ("TQVT_PAGE_SIZE", "0", ["must be between 1 and 500"]),
    ("TQVT_VT_CONCURRENCY", "many", ["expected a whole number", "TQVT_VT_CONCURRENCY=4"]),
    ("TQVT_VT_CONCURRENCY", "65", ["must be between 1 and 64"]),
    ("TQVT_MINUTE_LIMIT", "0", ["must be at least 1", "TQVT_MINUTE_LIMIT=4"]),
    ("TQVT_DAILY_RESERVE", "-1", ["must be at least 0"]),
    ("TQVT_HTTP_TIMEOUT", "0", ["greater than 0", "TQVT_HTTP_TIMEOUT=30"]),
    ("TQVT_HTTP_TIMEOUT", "nan", ["expected a number of seconds"]),
    ("TQVT_HTTP_TIMEOUT", "3601", ["at most 3600"]),
    ("TQVT_LOG_FORMAT", "xml", ["expected one of text, json", "TQVT_LOG_FORMAT=json"]),
    ("TQVT_LOG_LEVEL", "loud", ["expected one of DEBUG, INFO, WARNING, ERROR"]),
    ("THREATQ_URL", "ftp://tq.example.com", ["must start with https://",
                                             "THREATQ_URL=https://threatq.example.com"]),
    ("THREATQ_URL", "threatq.example.com", ["must start with https://"]),
    ("THREATQ_URL", "https://", ["no host name"]),
    ("THREATQ_URL", "https://tq.example.com:99999", ["not a valid URL"]),
    ("VT_API_URL", "https://vt.example.com/api/v3?x=1", ["query string"]),
    ("TQVT_DB", "mysql://db.example.com/tqvt", ["sqlite:// or postgresql://",
                                                "TQVT_DB=/var/lib/tqvt/tqvt.db"]),
    ("THREATQ_CA_BUNDLE", "/no/such/ca.pem", ["does not exist"]),
]


@pytest.mark.parametrize(("variable", "bad", "fragments"), ENV_ERRORS)
def test_invalid_environment_value_message(tmp_path, variable, bad, fragments):
    message = load_error(tmp_path, {variable: bad})
    assert message.startswith(f"Invalid value for {variable} (environment variable): ")
    assert f"'{bad}'" in message
    for fragment in fragments:
        assert fragment in message


def test_url_with_password_rejected(tmp_path):
    message = load_error(tmp_path, {"THREATQ_URL": f"https://user:{CANARY}@tq.example.com"})
    assert "user name or password" in message
    assert CANARY not in message


def test_invalid_secret_value_is_hidden(tmp_path):
    message = load_error(tmp_path, {"VT_API_KEY": f"{CANARY}\nX-Injected: 1"})
    assert "VT_API_KEY (environment variable): *** (contains a line break" in message
    assert CANARY not in message


def test_invalid_toml_value_names_toml_key(tmp_path):
    message = load_error(tmp_path, toml='cache_ttl = "3x"\n')
    path = tmp_path / "tqvt.toml"
    assert message.startswith(f"Invalid value for cache_ttl in {path}: '3x' ")
    assert 'Example: cache_ttl = "7d".' in message


@pytest.mark.parametrize(("line", "fragments"), [
    ('page_size = "big"', ["page_size in", "expected a whole number", "page_size = 500"]),
    ("page_size = 5.0", ["expected a whole number"]),
    ("page_size = true", ["expected a number"]),
    ('vt_private_key = "perhaps"', ["expected true or false", "vt_private_key = false"]),
    ("threatq_url = 5", ["expected a string", 'threatq_url = "https://threatq.example.com"']),
    ("cache_ttl = 1.5", ["expected a duration"]),
])
def test_invalid_toml_value_message(tmp_path, line, fragments):
    message = load_error(tmp_path, toml=line + "\n")
    for fragment in fragments:
        assert fragment in message


def test_invalid_dotenv_value_names_file(tmp_path):
    message = load_error(tmp_path, dotenv="TQVT_PAGE_SIZE=zero\n")
    assert message.startswith(f"Invalid value for TQVT_PAGE_SIZE in {tmp_path / '.env'}: 'zero'")
    assert "Example: TQVT_PAGE_SIZE=500." in message


def test_unreadable_dotenv_line_is_an_error(tmp_path):
    message = load_error(tmp_path, dotenv=f"TQVT_PAGE_SIZE=100\nVT_API_KEY {CANARY}\n")
    assert message == (f"Line 2 of the .env file {tmp_path / '.env'} cannot be read; write it "
                       "as NAME=value (quote a value that contains spaces or #).")


def test_dotenv_line_without_equals_is_an_error(tmp_path):
    # A secret pasted on a line of its own must not appear in the message.
    message = load_error(tmp_path, dotenv=f"# comment\n{CANARY}\n")
    assert message == (f"Line 2 of the .env file {tmp_path / '.env'} has no '='; write it "
                       "as NAME=value.")


def test_dotenv_comments_blank_lines_and_export_are_accepted(tmp_path):
    settings = load(tmp_path, dotenv="# comment\n\nexport TQVT_PAGE_SIZE=100\n"
                                     "TQVT_LOG_LEVEL='DEBUG'  # inline comment\n")
    assert settings.page_size == 100


def test_invalid_option_names_flag(tmp_path):
    message = load_error(tmp_path, options={"log_format": "yaml"})
    assert message.startswith("Invalid value for --log-format: 'yaml' ")
    assert "Example: --log-format json." in message


def test_overridden_invalid_value_still_rejected(tmp_path):
    message = load_error(tmp_path, {"TQVT_PAGE_SIZE": "10"}, toml="page_size = 0\n")
    assert "page_size in" in message


def test_reserve_below_daily_limit(tmp_path):
    message = load_error(tmp_path, {"TQVT_DAILY_LIMIT": "100", "TQVT_DAILY_RESERVE": "100"})
    assert "TQVT_DAILY_RESERVE (100, from env:TQVT_DAILY_RESERVE)" in message
    assert "TQVT_DAILY_LIMIT (100, from env:TQVT_DAILY_LIMIT)" in message
    assert "Example: TQVT_DAILY_LIMIT=500 TQVT_DAILY_RESERVE=50." in message


# --- value kinds ------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "seconds"), [
    ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("1w", 604800),
    ("3600", 3600), ("0", 0), (" 2H ", 7200), (120, 120),
])
def test_parse_duration_valid(raw, seconds):
    assert parse_duration(raw) == timedelta(seconds=seconds)


@pytest.mark.parametrize("raw", ["1.5h", "h", "-1", "1y", "", "7 days", "1h30m", True, 2.5])
def test_parse_duration_invalid(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)


@pytest.mark.parametrize(("value", "text"), [
    (timedelta(days=7), "7d"), (timedelta(days=14), "14d"), (timedelta(hours=36), "36h"),
    (timedelta(seconds=90), "90s"), (timedelta(minutes=15), "15m"), (timedelta(0), "0s"),
])
def test_format_duration(value, text):
    assert format_duration(value) == text


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
    (True, True), (False, False),
])
def test_parse_bool_valid(raw, expected):
    assert parse_bool(raw) is expected


@pytest.mark.parametrize("raw", ["", "2", "y", "enabled", "truee"])
def test_parse_bool_invalid(raw):
    with pytest.raises(ValueError):
        parse_bool(raw)


def test_log_level_normalised(tmp_path):
    assert load(tmp_path, {"TQVT_LOG_LEVEL": "warn"}).log_level == "WARNING"
    assert load(tmp_path, {"TQVT_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_url_trailing_slash_removed(tmp_path):
    settings = load(tmp_path, {"THREATQ_URL": "https://tq.example.com/"})
    assert settings.threatq_url == "https://tq.example.com"


def test_http_loopback_url_accepted(tmp_path):
    settings = load(tmp_path, {"VT_API_URL": "http://127.0.0.1:8080/api/v3"})
    assert settings.vt_api_url == "http://127.0.0.1:8080/api/v3"


def test_ca_bundle_resolved_against_cwd(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    settings = load(tmp_path, {"THREATQ_CA_BUNDLE": "ca.pem"})
    assert settings.threatq_ca_bundle == str(tmp_path / "ca.pem")


# --- unknown keys and tables ------------------------------------------------------------

@pytest.mark.parametrize(("key", "suggestion"), [
    ("cache_tll", "cache_ttl"),
    ("VT_API_KEY", "vt_api_key"),
    ("tqvt_page_size", "page_size"),
    ("threatq_ulr", "threatq_url"),
    ("score", "scores"),
])
def test_unknown_toml_key_suggests(tmp_path, key, suggestion):
    message = load_error(tmp_path, toml=f'{key} = "x"\n')
    assert f"Unknown key '{key}' in {tmp_path / 'tqvt.toml'}." in message
    assert f"Did you mean '{suggestion}'?" in message


def test_unknown_toml_key_without_match(tmp_path):
    message = load_error(tmp_path, toml='zzzz = "x"\n')
    assert "Unknown key 'zzzz'" in message
    assert "tqvt config show" in message


def test_types_table_merges_over_defaults(tmp_path):
    toml = '[types]\n"SHA256 Hash" = "file"\n"FQDN" = ""\n'
    settings = load(tmp_path, toml=toml)
    assert settings.types["SHA256 Hash"] == "file"
    assert settings.types["FQDN"] == ""
    assert settings.types["MD5"] == "file"
    assert settings.origins["types.SHA256 Hash"] == f"file:{tmp_path / 'tqvt.toml'}"
    assert settings.origins["types.MD5"] == "default"


def test_types_table_rejects_unknown_kind(tmp_path):
    message = load_error(tmp_path, toml='[types]\n"Hash X" = "files"\n')
    assert 'types."Hash X"' in message
    assert "'files'" in message
    assert "file, url, domain, ip_address" in message
    assert 'Example: "SHA256 Hash" = "file".' in message


def test_types_must_be_a_table(tmp_path):
    message = load_error(tmp_path, toml='types = "file"\n')
    assert "expected a table such as [types]" in message


def test_scores_table_merges_over_defaults(tmp_path):
    settings = load(tmp_path, toml='[scores]\n"malicious/high" = 10\n"harmless" = 1\n')
    assert settings.scores == {**DEFAULT_SCORES, "malicious/high": 10, "harmless": 1}
    assert settings.origins["scores.harmless"] == f"file:{tmp_path / 'tqvt.toml'}"
    assert settings.origins["scores.undetected"] == "default"


@pytest.mark.parametrize(("line", "fragment"), [
    ('"malicious/high" = 11', "expected a whole number from 0 to 10"),
    ('"harmless" = -1', "expected a whole number from 0 to 10"),
    ('"harmless" = true', "expected a whole number from 0 to 10"),
    ('"harmless" = "0"', "'0'"),
    ('"malicious/hihg" = 9', "Did you mean 'malicious/high'?"),
])
def test_scores_table_rejects(tmp_path, line, fragment):
    message = load_error(tmp_path, toml=f"[scores]\n{line}\n")
    assert fragment in message


def test_defaults_match_virustotal_modules():
    identifiers = pytest.importorskip("tqvt_sync.virustotal.identifiers")
    verdict = pytest.importorskip("tqvt_sync.virustotal.verdict")
    assert identifiers.DEFAULT_TYPE_MAP == DEFAULT_TYPES
    assert verdict.DEFAULT_SCORES == DEFAULT_SCORES


def test_settings_defaults_match_table():
    settings = Settings()
    for spec in SETTINGS:
        if spec.default is not None:
            assert getattr(settings, spec.name) == spec.default, spec.name
    names = {item.name for item in dataclasses.fields(Settings)}
    assert names == {spec.name for spec in SETTINGS} | {
        "types", "scores", "origins", "load_warnings"}


def test_settings_table_fields():
    for spec in SETTINGS:
        assert spec.toml_key == spec.name
        assert spec.help.endswith(".")
        assert spec.example
        assert spec.secret == (spec.name in SECRET_NAMES)
    assert SECRET_NAMES == {"threatq_password", "threatq_client_secret", "vt_api_key"}


# --- secrets ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SECRET_NAMES))
def test_secret_option_rejected(tmp_path, name):
    message = load_error(tmp_path, options={name: CANARY})
    assert "not accepted as a command-line option" in message
    assert CANARY not in message


def test_unknown_option_rejected(tmp_path):
    assert "Unknown setting 'colour'" in load_error(tmp_path, options={"colour": "red"})


def secret_settings(tmp_path: Path) -> Settings:
    return load(tmp_path, {
        "THREATQ_PASSWORD": CANARY + "-pw",
        "THREATQ_CLIENT_SECRET": CANARY + "-cs",
        "VT_API_KEY": CANARY + "-vt",
        "TQVT_DB": f"postgresql+psycopg://tqvt:{CANARY}-db@db.example.com/tqvt",
    })


def test_secrets_absent_from_repr(tmp_path):
    settings = secret_settings(tmp_path)
    assert CANARY not in repr(settings)
    assert CANARY not in str(settings)


def test_secrets_absent_from_show_output(tmp_path):
    settings = secret_settings(tmp_path)
    assert CANARY not in repr(redacted(settings))
    assert CANARY not in format_config_show(settings)
    assert CANARY not in json.dumps(config_show_json(settings))
    assert CANARY not in " ".join(warnings_for(settings))


def test_secret_values_for_log_filter(tmp_path):
    values = secret_values(secret_settings(tmp_path))
    assert sorted(values) == sorted(f"{CANARY}-{end}" for end in ("pw", "cs", "vt", "db"))


def test_redacted_rows(tmp_path):
    settings = secret_settings(tmp_path)
    rows = {name: (value, origin) for name, value, origin in redacted(settings)}
    assert rows["vt_api_key"] == ("*** (set)", "env:VT_API_KEY")
    assert rows["threatq_email"] == ("(not set)", "default")
    assert rows["db"] == ("postgresql+psycopg://tqvt:***@db.example.com/tqvt", "env:TQVT_DB")
    assert rows["cache_ttl"] == ("7d", "default")
    assert rows['types."IP Address"'] == ("ip_address", "default")
    assert rows['scores."malicious/high"'] == ("9", "default")


def test_format_config_show_aligned(tmp_path):
    settings = load(tmp_path, {"TQVT_PAGE_SIZE": "50"}, options={"log_level": "DEBUG"})
    lines = format_config_show(settings).splitlines()
    assert len(lines) == len(redacted(settings))
    assert len({line.index(" = ") for line in lines}) == 1
    assert len({line.rindex("  (") for line in lines}) == 1
    assert any(re.fullmatch(r"page_size +  = 50 +\(env:TQVT_PAGE_SIZE\)", line) for line in lines)
    assert any(re.fullmatch(r"log_level +  = DEBUG +\(option\)", line) for line in lines)


def test_config_show_json_shapes(tmp_path):
    settings = secret_settings(tmp_path)
    document = config_show_json(settings)
    entries = document["settings"]
    assert entries["vt_api_key"] == {"env": "VT_API_KEY", "origin": "env:VT_API_KEY",
                                     "value": "***", "set": True}
    assert entries["threatq_email"]["value"] is None
    assert entries["threatq_password"]["set"] is True
    assert entries["cache_ttl"]["value"] == 604800
    assert entries["threatq_verify_tls"]["value"] is True
    assert document["types"]["MD5"] == {"value": "file", "origin": "default"}
    assert document["scores"]["harmless"] == {"value": 0, "origin": "default"}
    json.dumps(document)


# --- database location ------------------------------------------------------------------

def test_default_db_under_xdg_state_home(tmp_path):
    settings = load(tmp_path, {"XDG_STATE_HOME": str(tmp_path / "state")})
    assert settings.db == str(tmp_path / "state" / "tqvt" / "tqvt.db")
    assert settings.origins["db"] == "default"


def test_default_db_without_xdg_state_home(tmp_path):
    settings = load(tmp_path)
    assert settings.db == str(tmp_path / "home" / ".local" / "state" / "tqvt" / "tqvt.db")


def test_default_db_ignores_relative_xdg():
    path = default_db_path({"XDG_STATE_HOME": "relative/state", "HOME": "/home/u"})
    assert path == "/home/u/.local/state/tqvt/tqvt.db"


def test_database_url_from_path(tmp_path):
    settings = load(tmp_path, {"TQVT_DB": "data/state.db"})
    assert settings.db == str(tmp_path / "data" / "state.db")
    assert database_url(settings) == f"sqlite:///{tmp_path}/data/state.db"


def test_database_url_home_expanded(tmp_path):
    settings = load(tmp_path, {"TQVT_DB": "~/tqvt.db"})
    assert database_url(settings) == f"sqlite:///{tmp_path}/home/tqvt.db"


@pytest.mark.parametrize("url", ["sqlite:///relative.db", "sqlite:////abs/state.db",
                                 "postgresql+psycopg://tqvt@localhost/tqvt"])
def test_database_url_passes_urls(tmp_path, url):
    assert database_url(load(tmp_path, {"TQVT_DB": url})) == url


# --- required settings and warnings -----------------------------------------------------

THREATQ_BASE = {"THREATQ_URL": "https://tq.example.com", "THREATQ_CLIENT_ID": "client"}


def test_require_threatq_lists_everything(tmp_path):
    with pytest.raises(ConfigError) as caught:
        require_threatq(load(tmp_path))
    message = str(caught.value)
    assert message.startswith("Missing ThreatQ settings: THREATQ_URL, THREATQ_CLIENT_ID, "
                              "THREATQ_EMAIL, THREATQ_PASSWORD (or THREATQ_CLIENT_SECRET")
    assert "THREATQ_URL=https://threatq.example.com THREATQ_CLIENT_ID=tqvt-client" in message


@pytest.mark.parametrize(("env", "missing"), [
    ({**THREATQ_BASE, "THREATQ_EMAIL": "a@example.com"}, "THREATQ_PASSWORD."),
    ({**THREATQ_BASE, "THREATQ_PASSWORD": "pw-value"}, "THREATQ_EMAIL."),
    ({"THREATQ_URL": "https://tq.example.com", "THREATQ_CLIENT_SECRET": "cs-value"},
     "THREATQ_CLIENT_ID."),
])
def test_require_threatq_lists_missing(tmp_path, env, missing):
    with pytest.raises(ConfigError) as caught:
        require_threatq(load(tmp_path, env))
    assert f"Missing ThreatQ settings: {missing}" in str(caught.value)


@pytest.mark.parametrize("extra", [
    {"THREATQ_EMAIL": "a@example.com", "THREATQ_PASSWORD": "pw-value"},
    {"THREATQ_CLIENT_SECRET": "cs-value"},
])
def test_require_threatq_complete(tmp_path, extra):
    require_threatq(load(tmp_path, {**THREATQ_BASE, **extra}))


def test_require_virustotal(tmp_path):
    with pytest.raises(ConfigError) as caught:
        require_virustotal(load(tmp_path))
    assert str(caught.value).startswith("Missing VirusTotal settings: VT_API_KEY.")
    assert "VT_API_KEY=<64-character API key>" in str(caught.value)
    require_virustotal(load(tmp_path, {"VT_API_KEY": "key-value"}))


def test_warning_when_tls_verification_off(tmp_path):
    warnings = warnings_for(load(tmp_path, {"THREATQ_VERIFY_TLS": "off"}))
    assert len(warnings) == 1
    assert warnings[0].startswith("THREATQ_VERIFY_TLS=false: the TLS certificate of ThreatQ")


def test_no_warnings_by_default(tmp_path):
    assert warnings_for(load(tmp_path)) == []


def test_warning_for_unknown_dotenv_variable(tmp_path):
    warnings = warnings_for(load(tmp_path, dotenv="TQVT_CACHE_TLL=1d\nOTHER=1\n"))
    assert warnings == [f"Unknown variable TQVT_CACHE_TLL in {tmp_path / '.env'} is ignored; "
                        "did you mean TQVT_CACHE_TTL?"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_warning_for_readable_secret_file(tmp_path):
    (tmp_path / ".env").write_text("VT_API_KEY=key-value\n", encoding="utf-8")
    (tmp_path / ".env").chmod(0o644)
    warnings = warnings_for(load(tmp_path))
    assert warnings == [f"{tmp_path / '.env'} contains secrets and other users can read it "
                        f"(mode 0644); run: chmod 600 {tmp_path / '.env'}"]
    (tmp_path / ".env").chmod(0o600)
    assert warnings_for(load(tmp_path)) == []
