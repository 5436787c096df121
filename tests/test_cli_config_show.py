"""`tqvt config show` and start-up validation, run through the CLI in a controlled directory.

Every source takes part: a TOML file named by --config, .env in the working directory,
environment variables and the --db and --log-level options. The expected output is
exact, with the temporary directory written as {tmp}.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from cli_invoke import CliResult, run_main

PASSWORD = "dotenv-secret-pw-51c2"
API_KEY = "env-secret-vt-key-9e07"

TOML = """\
threatq_url = "https://threatq.example.com"
threatq_client_id = "from-toml"
cache_ttl = "14d"
page_size = 200

[types]
"SHA256 Hash" = "file"
"IPv6 Address" = ""

[scores]
"malicious/high" = 10
"""

DOTENV = f"""\
THREATQ_CLIENT_ID=from-dotenv
THREATQ_EMAIL=analyst@example.com
THREATQ_PASSWORD={PASSWORD}
TQVT_DAILY_RESERVE=25
"""

ENVIRONMENT = {
    "THREATQ_CLIENT_ID": "from-env",
    "VT_API_KEY": API_KEY,
    "TQVT_DB": "/elsewhere/env.db",
    "TQVT_HTTP_TIMEOUT": "12.5",
}

OPTIONS = ["--config", "tqvt.toml", "--db", "state.db", "--log-level", "warning"]

EXPECTED_TEXT = """\
threatq_url                = https://threatq.example.com        (file:{tmp}/tqvt.toml)
threatq_client_id          = from-env                           (env:THREATQ_CLIENT_ID)
threatq_email              = analyst@example.com                (.env)
threatq_password           = *** (set)                          (.env)
threatq_client_secret      = (not set)                          (default)
threatq_ca_bundle          = (not set)                          (default)
threatq_verify_tls         = true                               (default)
vt_api_key                 = *** (set)                          (env:VT_API_KEY)
vt_private_key             = false                              (default)
vt_api_url                 = https://www.virustotal.com/api/v3  (default)
db                         = {tmp}/state.db{pad}(option)
minute_limit               = (not set)                          (default)
daily_limit                = (not set)                          (default)
daily_reserve              = 25                                 (.env)
cache_ttl                  = 14d                                (file:{tmp}/tqvt.toml)
not_found_ttl              = 1d                                 (default)
lookup_private_ips         = false                              (default)
write_score                = false                              (default)
page_size                  = 200                                (file:{tmp}/tqvt.toml)
vt_concurrency             = 1                                  (default)
http_timeout               = 12.5                               (env:TQVT_HTTP_TIMEOUT)
log_level                  = WARNING                            (option)
log_format                 = text                               (default)
types."MD5"                = file                               (default)
types."SHA-1"              = file                               (default)
types."SHA-256"            = file                               (default)
types."URL"                = url                                (default)
types."FQDN"               = domain                             (default)
types."IP Address"         = ip_address                         (default)
types."IPv6 Address"       = "" (unsupported)                   (file:{tmp}/tqvt.toml)
types."SHA256 Hash"        = file                               (file:{tmp}/tqvt.toml)
scores."malicious/high"    = 10                                 (file:{tmp}/tqvt.toml)
scores."malicious/medium"  = 7                                  (default)
scores."suspicious/medium" = 5                                  (default)
scores."suspicious/low"    = 3                                  (default)
scores."undetected"        = 1                                  (default)
scores."harmless"          = 0                                  (default)
"""


def expected_json(tmp: str) -> dict:
    origin_file = f"file:{tmp}/tqvt.toml"

    def entry(env: str, origin: str, value: object) -> dict:
        return {"env": env, "origin": origin, "value": value}

    return {
        "settings": {
            "threatq_url": entry("THREATQ_URL", origin_file, "https://threatq.example.com"),
            "threatq_client_id": entry("THREATQ_CLIENT_ID", "env:THREATQ_CLIENT_ID",
                                       "from-env"),
            "threatq_email": entry("THREATQ_EMAIL", ".env", "analyst@example.com"),
            "threatq_password": {**entry("THREATQ_PASSWORD", ".env", "***"), "set": True},
            "threatq_client_secret": {**entry("THREATQ_CLIENT_SECRET", "default", None),
                                      "set": False},
            "threatq_ca_bundle": entry("THREATQ_CA_BUNDLE", "default", None),
            "threatq_verify_tls": entry("THREATQ_VERIFY_TLS", "default", True),
            "vt_api_key": {**entry("VT_API_KEY", "env:VT_API_KEY", "***"), "set": True},
            "vt_private_key": entry("VT_PRIVATE_KEY", "default", False),
            "vt_api_url": entry("VT_API_URL", "default", "https://www.virustotal.com/api/v3"),
            "db": entry("TQVT_DB", "option", f"{tmp}/state.db"),
            "minute_limit": entry("TQVT_MINUTE_LIMIT", "default", None),
            "daily_limit": entry("TQVT_DAILY_LIMIT", "default", None),
            "daily_reserve": entry("TQVT_DAILY_RESERVE", ".env", 25),
            "cache_ttl": entry("TQVT_CACHE_TTL", origin_file, 1209600),
            "not_found_ttl": entry("TQVT_NOT_FOUND_TTL", "default", 86400),
            "lookup_private_ips": entry("TQVT_LOOKUP_PRIVATE_IPS", "default", False),
            "write_score": entry("TQVT_WRITE_SCORE", "default", False),
            "page_size": entry("TQVT_PAGE_SIZE", origin_file, 200),
            "vt_concurrency": entry("TQVT_VT_CONCURRENCY", "default", 1),
            "http_timeout": entry("TQVT_HTTP_TIMEOUT", "env:TQVT_HTTP_TIMEOUT", 12.5),
            "log_level": entry("TQVT_LOG_LEVEL", "option", "WARNING"),
            "log_format": entry("TQVT_LOG_FORMAT", "default", "text"),
        },
        "types": {
            "MD5": {"value": "file", "origin": "default"},
            "SHA-1": {"value": "file", "origin": "default"},
            "SHA-256": {"value": "file", "origin": "default"},
            "URL": {"value": "url", "origin": "default"},
            "FQDN": {"value": "domain", "origin": "default"},
            "IP Address": {"value": "ip_address", "origin": "default"},
            "IPv6 Address": {"value": "", "origin": origin_file},
            "SHA256 Hash": {"value": "file", "origin": origin_file},
        },
        "scores": {
            "malicious/high": {"value": 10, "origin": origin_file},
            "malicious/medium": {"value": 7, "origin": "default"},
            "suspicious/medium": {"value": 5, "origin": "default"},
            "suspicious/low": {"value": 3, "origin": "default"},
            "undetected": {"value": 1, "origin": "default"},
            "harmless": {"value": 0, "origin": "default"},
        },
    }


@pytest.fixture
def workdir(monkeypatch) -> Path:
    """A working directory with tqvt.toml and a private .env, and no tqvt variables set.

    The directory has a short path, so the database path stays narrower than the widest
    value and the text columns do not move.
    """
    tmp_path = Path(tempfile.mkdtemp(prefix="tqvt-", dir="/tmp"))
    for name in list(os.environ):
        if name.startswith(("THREATQ_", "VT_", "TQVT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "tqvt.toml").write_text(TOML, encoding="utf-8")
    dotenv = tmp_path / ".env"
    dotenv.write_text(DOTENV, encoding="utf-8")
    dotenv.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    shutil.rmtree(tmp_path)


def invoke(*args: str, env: dict[str, str] | None = None) -> CliResult:
    return run_main(list(args), env=env if env is not None else ENVIRONMENT)


def test_config_show_text_exact(workdir):
    result = invoke(*OPTIONS, "config", "show")

    tmp = str(workdir)
    db_value = f"{tmp}/state.db"
    pad = " " * (len("https://www.virustotal.com/api/v3  ") - len(db_value))
    expected = EXPECTED_TEXT.format(tmp=tmp, pad=pad)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout == expected


def test_config_show_json_exact(workdir):
    result = invoke(*OPTIONS, "config", "show", "--json")

    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == expected_json(str(workdir))


def test_config_show_json_sorted_and_indented(workdir):
    result = invoke(*OPTIONS, "config", "show", "--json")

    document = json.loads(result.stdout)
    assert result.stdout == json.dumps(document, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_config_show_hides_secrets(workdir, json_flag):
    result = invoke(*OPTIONS, "config", "show", *json_flag)

    assert PASSWORD not in result.stdout + result.stderr
    assert API_KEY not in result.stdout + result.stderr


def test_config_show_writes_no_log_line(workdir):
    result = invoke(*OPTIONS, "config", "show")

    assert result.stderr == ""


def test_config_show_warns_about_readable_dotenv(workdir):
    (workdir / ".env").chmod(0o644)

    result = invoke(*OPTIONS, "config", "show")

    assert result.exit_code == 0
    assert (f"WARNING tqvt_sync.cli.runtime: {workdir}/.env contains secrets and other users "
            f"can read it (mode 0644); run: chmod 600 {workdir}/.env") in result.stderr


# --- validation at start: the key, the bad value and a valid example ----------------------


def test_invalid_toml_value_rejected(workdir):
    (workdir / "tqvt.toml").write_text(TOML.replace("page_size = 200", 'vt_private_key = "maybe"'),
                                       encoding="utf-8")

    result = invoke(*OPTIONS, "config", "show")

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: Invalid value for vt_private_key in {workdir}/tqvt.toml: 'maybe' (expected "
        "true or false (also accepted: 1/0, yes/no, on/off)). Example: vt_private_key = false.\n")


def test_invalid_dotenv_value_rejected(workdir):
    (workdir / ".env").write_text(DOTENV + "TQVT_CACHE_TTL=7 days\n", encoding="utf-8")

    result = invoke(*OPTIONS, "config", "show")

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: Invalid value for TQVT_CACHE_TTL in {workdir}/.env: '7 days' (expected a "
        "duration: whole seconds, or a number followed by s, m, h, d or w). "
        "Example: TQVT_CACHE_TTL=7d.\n")


def test_plain_http_url_rejected(workdir):
    result = invoke(*OPTIONS, "config", "show",
                    env={**ENVIRONMENT, "THREATQ_URL": "http://threatq.example.com"})

    assert result.exit_code == 1
    assert result.stderr == (
        "Error: Invalid value for THREATQ_URL (environment variable): "
        "'http://threatq.example.com' (https is required, and http:// is accepted only for a "
        "loopback host: 127.0.0.0/8, ::1 or localhost). "
        "Example: THREATQ_URL=https://threatq.example.com.\n")


def test_invalid_db_option_rejected(workdir):
    result = invoke("--db", "mysql://db.example.com/tqvt", "config", "show")

    assert result.exit_code == 1
    assert result.stderr == (
        "Error: Invalid value for --db: 'mysql://db.example.com/tqvt' (expected a sqlite:// or "
        "postgresql:// URL, or a file path). Example: --db /var/lib/tqvt/tqvt.db.\n")


def test_invalid_secret_value_not_echoed(workdir):
    result = invoke(*OPTIONS, "config", "show",
                    env={**ENVIRONMENT, "VT_API_KEY": f"{API_KEY}\nInjected"})

    assert result.exit_code == 1
    assert result.stderr == (
        "Error: Invalid value for VT_API_KEY (environment variable): *** (contains a line "
        "break or another control character). Example: VT_API_KEY=<64-character API key>.\n")


def test_ca_bundle_directory_rejected(workdir):
    (workdir / "certs").mkdir()

    result = invoke(*OPTIONS, "config", "show",
                    env={**ENVIRONMENT, "THREATQ_CA_BUNDLE": "certs"})

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: Invalid value for THREATQ_CA_BUNDLE (environment variable): 'certs' "
        f"({workdir}/certs is not a file). Example: "
        "THREATQ_CA_BUNDLE=/etc/ssl/certs/threatq-ca.pem.\n")
