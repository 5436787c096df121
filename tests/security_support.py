"""Helpers for the security tests: the CLI as a subprocess, TLS simulators, log checks."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

from loopback_http import make_self_signed_certificate

CLI_TIMEOUT = 120
# Variables that would let requests replace the configured CA bundle or reach a proxy.
TRUST_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                   "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY")


def run_cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tqvt_sync ARGS`` in ``cwd`` with exactly ``env`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "tqvt_sync", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """Return ``env`` without the CA bundle and proxy variables of the calling environment."""
    return {key: value for key, value in env.items() if key not in TRUST_VARIABLES}


def server_tls_context(folder: Path) -> tuple[ssl.SSLContext, Path] | None:
    """Make a self-signed certificate for 127.0.0.1 with openssl; return a server context and
    the certificate path, or None when openssl is not installed."""
    files = make_self_signed_certificate(folder)
    if files is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    return context, files[0]


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the ``Error:`` line the CLI printed, or an empty string."""
    lines = [line for line in stderr_lines(result) if line.startswith("Error:")]
    return lines[-1] if lines else ""
