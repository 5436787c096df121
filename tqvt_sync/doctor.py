"""The checks behind ``tqvt doctor``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text

from tqvt_sync.errors import ApiError, ConfigError, TqvtError

# A key whose daily allowance is at most this is treated as a public (free) key.
PUBLIC_DAILY_ALLOWANCE = 500
# A public key facing more than this many days of backlog is flagged.
BACKLOG_DAYS_FLAGGED = 7


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``ok``, ``warning`` or ``failed``, with what to do."""

    name: str
    state: str
    detail: str


def _check(name: str, func_: Callable[[], tuple[str, str]]) -> CheckResult:
    try:
        state, detail = func_()
    except TqvtError as exc:
        return CheckResult(name, "failed", str(exc))
    except Exception as exc:  # a check must report, never crash the doctor
        return CheckResult(name, "failed", f"unexpected {type(exc).__name__}: {exc}")
    return CheckResult(name, state, detail)


def run_checks(runtime: Any) -> list[CheckResult]:
    """Run every check in order; later checks are skipped when what they need failed."""
    from tqvt_sync.logs import redact

    try:
        runtime.settings
    except TqvtError as exc:
        return [CheckResult("configuration", "failed", redact(str(exc)))]
    results = [_check("configuration", lambda: _configuration(runtime))]
    results.append(_check("database", lambda: _database(runtime)))
    client_result = _check("threatq", lambda: _threatq(runtime))
    results.append(client_result)
    if client_result.state != "failed":
        results.append(_check("indicator types", lambda: _types(runtime)))
    results.append(_check("virustotal", lambda: _virustotal(runtime)))
    for warning in _setting_warnings(runtime):
        results.append(CheckResult("settings", "warning", warning))
    return [CheckResult(r.name, r.state, redact(r.detail)) for r in results]


def _configuration(runtime: Any) -> tuple[str, str]:
    from tqvt_sync.config import require_threatq, require_virustotal

    settings = runtime.settings
    problems = []
    for require in (require_threatq, require_virustotal):
        try:
            require(settings)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        return "failed", " ".join(problems)
    return "ok", "every setting needed for ThreatQ and VirusTotal is present"


def _setting_warnings(runtime: Any) -> list[str]:
    from tqvt_sync.config import warnings_for

    try:
        return list(warnings_for(runtime.settings))
    except TqvtError:
        return []


def _database(runtime: Any) -> tuple[str, str]:
    from tqvt_sync.db import migrate

    engine = runtime.engine()
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            verdict = connection.execute(text("PRAGMA integrity_check")).scalar()
            if verdict != "ok":
                return "failed", (f"integrity check says {verdict!r}; restore a backup or move the "
                                  "file aside and run 'tqvt db upgrade'")
        connection.execute(text("CREATE TEMPORARY TABLE tqvt_doctor_probe (x INTEGER)"))
        connection.execute(text("DROP TABLE tqvt_doctor_probe"))
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current != head:
        return "failed", f"schema revision {current}, newest is {head}; run 'tqvt db upgrade'"
    return "ok", f"{runtime.db_display} is writable, integrity ok, schema at {head}"


def _threatq(runtime: Any) -> tuple[str, str]:
    client = runtime.threatq_client()
    client.fetch_token()
    settings = runtime.settings
    tls = "TLS verification off (THREATQ_VERIFY_TLS=false)" if not settings.threatq_verify_tls \
        else ("TLS verified" if settings.threatq_url.startswith("https") else "loopback HTTP")
    return ("warning" if not settings.threatq_verify_tls else "ok",
            f"reachable, credentials accepted, {tls}")


def _types(runtime: Any) -> tuple[str, str]:
    client = runtime.threatq_client()
    names = sorted(str(t.get("name")) for t in client.fetch_indicator_types() if t.get("name"))
    mapping = runtime.settings.types
    mapped = [name for name in names if mapping.get(name)]
    missing = [name for name, kind in mapping.items() if kind and name not in names]
    if missing:
        return "warning", (f"type names in the map but not in ThreatQ: {', '.join(missing)}; "
                           "fix them in the [types] table")
    if not mapped:
        return "failed", ("no ThreatQ type maps to a VirusTotal kind; add the instance's type "
                          "names to the [types] table")
    return "ok", f"{len(mapped)} of {len(names)} types are looked up ({', '.join(mapped)})"


def _virustotal(runtime: Any) -> tuple[str, str]:
    from tqvt_sync.db.models import Indicator
    from tqvt_sync.quota import limits_from_overall_quotas
    from tqvt_sync.stages.lookup import due_condition

    client = runtime.virustotal_client()
    try:
        limits = limits_from_overall_quotas(client.fetch_overall_quotas())
    except ApiError as exc:
        return "failed", f"{exc}"
    detail = (f"key accepted; {limits.used_today or 0} of {limits.daily} daily calls used, "
              f"{limits.minute} per minute")
    if limits.daily <= PUBLIC_DAILY_ALLOWANCE:
        ctx = runtime.stage_context()
        with ctx.sessions() as session:
            backlog = session.scalar(select(func.count()).select_from(Indicator)
                                     .where(due_condition(runtime.clock.now()))) or 0
        if backlog > limits.daily * BACKLOG_DAYS_FLAGGED:
            return "warning", (f"{detail}; a public key with {backlog} indicators due needs "
                               f"{backlog // max(limits.daily, 1)} days; consider a premium key")
    return "ok", detail
