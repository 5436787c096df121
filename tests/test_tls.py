"""Transport security of the CLI: https rule, TLS verification, CA bundle, no secrets on argv.

The ThreatQ simulator serves https on 127.0.0.1 with a self-signed certificate that the
``openssl`` command makes for each test module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from security_support import clean_env, error_line, run_cli, server_tls_context
from support import sim_env
from tqvt_sync.cli.main import cli
from tqvt_sync.sandbox import running_simulators
from tqvt_sync.sandbox.seed import seed_demo

VERIFY_OFF_WARNING = "THREATQ_VERIFY_TLS=false: the TLS certificate of ThreatQ is not verified"
SECRET_WORDS = ("password", "secret", "api-key", "api_key", "apikey", "token", "vt-key")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, object]:
    """A server context and certificate for the simulator, and an unrelated second certificate."""
    made = server_tls_context(tmp_path_factory.mktemp("tls"))
    other = server_tls_context(tmp_path_factory.mktemp("tls-other"))
    if made is None or other is None:
        pytest.skip("the openssl command is not installed")
    return {"context": made[0], "certificate": made[1], "other_certificate": other[1]}


@pytest.fixture(scope="module")
def tls_simulators(certificates) -> Iterator[tuple[object, object]]:
    """A ThreatQ simulator serving https, and a VirusTotal simulator serving http."""
    with running_simulators() as (tq, vt):
        tq.stop()
        tq.tls_context = certificates["context"]
        tq.start()
        seed_demo(tq, vt)
        yield tq, vt


def tls_env(tq, vt, workdir: Path, **extra: str) -> dict[str, str]:
    env = clean_env(sim_env(tq, vt, str(workdir / "state.db")))
    env.update(extra)
    return env


# https is required except on loopback hosts


# The hosts are under .invalid, which never resolves, so a broken check sends nothing.
@pytest.mark.parametrize(("setting", "url", "command"), [
    ("THREATQ_URL", "http://threatq.invalid", ("sync", "pull")),
    ("THREATQ_URL", "http://127.0.0.1.invalid", ("sync", "pull")),
    ("VT_API_URL", "http://virustotal.invalid/api/v3", ("sync", "lookup")),
])
def test_plain_http_remote_rejected(tls_simulators, tmp_path, setting: str, url: str,
                                    command: tuple[str, ...]) -> None:
    tq, vt = tls_simulators
    result = run_cli(tls_env(tq, vt, tmp_path, **{setting: url}), *command, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert setting in error_line(result)
    assert "https" in error_line(result)
    assert "loopback host" in error_line(result)


def test_plain_http_loopback_accepted(tmp_path) -> None:
    with running_simulators() as (tq, vt):
        seed_demo(tq, vt)
        url = tq.url
        result = run_cli(clean_env(sim_env(tq, vt, str(tmp_path / "state.db"))),
                         "sync", "pull", "--since", "3650d", cwd=tmp_path)
    assert url.startswith("http://127.0.0.1:")
    assert result.returncode == 0, result.stderr


# TLS verification


def test_verification_on_by_default(tls_simulators, tmp_path) -> None:
    tq, vt = tls_simulators
    before = len(tq.requests)
    result = run_cli(tls_env(tq, vt, tmp_path), "sync", "pull", "--since", "3650d", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "certificate verification failed" in error_line(result)
    assert "set THREATQ_CA_BUNDLE" in error_line(result)
    assert len(tq.requests) == before


def test_ca_bundle_trusts_certificate(tls_simulators, certificates, tmp_path) -> None:
    tq, vt = tls_simulators
    env = tls_env(tq, vt, tmp_path, THREATQ_CA_BUNDLE=str(certificates["certificate"]))
    result = run_cli(env, "sync", "pull", "--since", "3650d", cwd=tmp_path)
    assert tq.url.startswith("https://127.0.0.1:")
    assert result.returncode == 0, result.stderr
    assert "indicators 0" not in result.stdout


@pytest.mark.parametrize("bundle", [None, "other_certificate"])
def test_environment_bundle_ignored(tls_simulators, certificates, tmp_path,
                                    bundle: str | None) -> None:
    tq, vt = tls_simulators
    right = str(certificates["certificate"])
    extra = {"REQUESTS_CA_BUNDLE": right, "CURL_CA_BUNDLE": right}
    if bundle is not None:
        extra["THREATQ_CA_BUNDLE"] = str(certificates[bundle])
    result = run_cli(tls_env(tq, vt, tmp_path, **extra), "sync", "pull", "--since", "3650d",
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "certificate verification failed" in error_line(result)


def test_virustotal_verified_by_default(certificates, tmp_path) -> None:
    right = str(certificates["certificate"])
    with running_simulators() as (tq, vt):
        seed_demo(tq, vt)
        vt.stop()
        vt.tls_context = certificates["context"]
        vt.start()
        env = tls_env(tq, vt, tmp_path, REQUESTS_CA_BUNDLE=right, CURL_CA_BUNDLE=right)
        pulled = run_cli(env, "sync", "pull", "--since", "3650d", cwd=tmp_path)
        looked_up = run_cli(env, "sync", "lookup", "--max-calls", "1", cwd=tmp_path)
        calls = len(vt.requests)
    assert pulled.returncode == 0, pulled.stderr
    assert looked_up.returncode == 1, looked_up.stderr
    assert "VirusTotal: TLS certificate verification failed" in error_line(looked_up)
    assert calls == 0


def test_verify_off_warns_every_run(tls_simulators, tmp_path) -> None:
    tq, vt = tls_simulators
    env = tls_env(tq, vt, tmp_path, THREATQ_VERIFY_TLS="false")
    runs = [run_cli(env, "sync", "pull", "--since", "3650d", cwd=tmp_path),
            run_cli(env, "status", cwd=tmp_path)]
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert VERIFY_OFF_WARNING in result.stderr


# Secrets never travel on the command line


def _commands(group: click.Group, ctx: click.Context) -> Iterator[click.Command]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield command
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, parent=ctx))


def test_no_option_takes_secret() -> None:
    ctx = click.Context(cli)
    commands = [cli, *_commands(cli, ctx)]
    for command in commands:
        for parameter in command.params:
            spelled = " ".join([parameter.name or "", *parameter.opts]).lower()
            leaked = [word for word in SECRET_WORDS if word in spelled]
            assert leaked == [], f"{command.name}: {spelled}"
    assert len(commands) > 15


def test_help_lists_no_secret_option(tmp_path) -> None:
    env = clean_env(sim_env_for_help(tmp_path))
    outputs = [run_cli(env, *args, "--help", cwd=tmp_path)
               for args in ((), ("sync", "run"))]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        options = re.findall(r"(?<![\w-])--?[a-z][a-z-]*", result.stdout.lower())
        assert "--help" in options
        assert [o for o in options if any(word in o for word in SECRET_WORDS)] == []


@pytest.mark.parametrize("option", ["--vt-api-key", "--threatq-password",
                                    "--threatq-client-secret"])
def test_secret_option_is_usage_error(tmp_path, option: str) -> None:
    env = clean_env(sim_env_for_help(tmp_path))
    result = run_cli(env, "sync", "pull", option, "x-secret-value", cwd=tmp_path)
    assert result.returncode == 2
    assert f"No such option '{option}'" in result.stderr
    assert "x-secret-value" not in result.stderr


def sim_env_for_help(workdir: Path) -> dict[str, str]:
    import os

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("THREATQ_", "VT_", "TQVT_"))}
    env["TQVT_DB"] = str(workdir / "state.db")
    return env
