"""Helpers for stage and CLI tests: settings that point at the simulators."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.clock import Clock
from tqvt_sync.config import Settings, load_settings
from tqvt_sync.sandbox import DEFAULT_API_KEY
from tqvt_sync.stages.common import StageContext

OWNED_PREFIX = "VirusTotal "


def sim_settings(tq: Any, vt: Any, db_url: str, workdir: str, **overrides: Any) -> Settings:
    """Return settings for the simulators ``tq`` and ``vt`` and the database ``db_url``."""
    base = load_settings(environ={}, cwd=workdir)
    values = {
        "threatq_url": tq.url,
        "threatq_client_id": tq.credentials.client_id,
        "threatq_email": tq.credentials.email,
        "threatq_password": tq.credentials.password,
        "vt_api_key": DEFAULT_API_KEY,
        "vt_api_url": vt.url,
        "db": db_url,
    }
    values.update(overrides)
    return dataclasses.replace(base, **values)


def sim_env(tq: Any, vt: Any, db_path: str, **extra: str) -> dict[str, str]:
    """Return an environment for running the ``tqvt`` CLI against the simulators."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("THREATQ_", "VT_", "TQVT_"))}
    env.update({
        "THREATQ_URL": tq.url,
        "THREATQ_CLIENT_ID": tq.credentials.client_id,
        "THREATQ_EMAIL": tq.credentials.email,
        "THREATQ_PASSWORD": tq.credentials.password,
        "VT_API_KEY": DEFAULT_API_KEY,
        "VT_API_URL": vt.url,
        "TQVT_DB": db_path,
    })
    env.update(extra)
    return env


def stage_context(settings: Settings, clock: Clock) -> StageContext:
    runtime = Runtime(options={}, settings_override=settings, clock=clock)
    return runtime.stage_context()


def owned_attributes(attributes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in attributes if str(a.get("name", "")).startswith(OWNED_PREFIX)]


def source_names(attribute: dict[str, Any]) -> list[str]:
    return [s.get("name") for s in attribute.get("sources") or []]


def vt_object_calls(vt: Any) -> int:
    """Count requests to the four quota-counted object endpoints."""
    return sum(1 for r in vt.requests if not r.path.startswith("/api/v3/users/"))


def tq_writes(tq: Any) -> int:
    return sum(1 for r in tq.requests if r.method in ("POST", "PUT", "DELETE")
               and r.path != "/api/token" and not r.path.startswith("/api/indicators/query"))
