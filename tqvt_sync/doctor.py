"""The checks behind ``tqvt doctor``.

Each check returns one ``CheckResult``: ``ok``, ``warning`` or ``failed`` with what to
do, or ``skipped`` when a check it depends on failed. Every check makes at most one
attempt per request and never calls a quota-counted VirusTotal endpoint, so the doctor
ends within a few timeouts and costs no quota. It creates the schema of an empty
database, as every other command does on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from tqvt_sync.errors import ConfigError, TqvtError

# A key whose daily allowance is at most this is a public (free) key: VirusTotal gives
# free keys 500 calls a day, 4 a minute, and no commercial use.
PUBLIC_DAILY_ALLOWANCE = 500
# Instance types that are not looked up are listed up to this many in the types line.
_LISTED_TYPES = 10

CHECK_NAMES = (
    "configuration",
    "threatq reachable",
    "threatq tls",
    "threatq credentials",
    "indicator types",
    "virustotal key",
    "database",
    "daily volume",
)
NAME_WIDTH = max(len(name) for name in CHECK_NAMES)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``ok``, ``warning``, ``failed`` or ``skipped``, with detail."""

    name: str
    state: str
    detail: str


def format_result(result: CheckResult) -> str:
    """Return the doctor's line for ``result``: state, check name and detail in columns."""
    return f"{result.state:<7}  {result.name:<{NAME_WIDTH}}  {result.detail}"


def run_checks(runtime: Any) -> list[CheckResult]:
    """Run every check in ``CHECK_NAMES`` order and return their results, secrets redacted.

    Settings that cannot be loaded give a single failed ``configuration`` result.
    """
    from tqvt_sync.logs import redact

    try:
        runtime.settings  # noqa: B018  # loading the settings raises ConfigError when invalid
    except TqvtError as exc:
        return [CheckResult("configuration", "failed", redact(str(exc)))]
    results = _Doctor(runtime).run()
    return [CheckResult(r.name, r.state, redact(r.detail)) for r in results]


@dataclass
class _Doctor:
    runtime: Any
    results: dict[str, CheckResult] = field(default_factory=dict)
    threatq_client: Any = None
    probe_failure: Any = None  # a tqvt_sync.http.TransportFailure, or None
    quota_limits: Any = None
    missing: set[str] = field(default_factory=set)
    causes: dict[str, str] = field(default_factory=dict)

    def run(self) -> list[CheckResult]:
        # (check name, the checks it needs, the settings group it needs, the check)
        steps: tuple[tuple[str, tuple[str, ...], str, Callable[[], tuple[str, str]]], ...] = (
            ("configuration", (), "", self.configuration),
            ("threatq reachable", (), "threatq", self.threatq_reachable),
            ("threatq tls", ("threatq reachable",), "threatq", self.threatq_tls),
            ("threatq credentials", ("threatq tls",), "threatq", self.threatq_credentials),
            ("indicator types", ("threatq credentials",), "threatq", self.indicator_types),
            ("virustotal key", (), "virustotal", self.virustotal_key),
            ("database", (), "", self.database),
            ("daily volume", ("virustotal key", "database"), "virustotal", self.daily_volume),
        )
        for name, needs, group, check in steps:
            if group in self.missing:
                needs = ("configuration",)
            blocker = next((need for need in needs if self._blocked(need)), None)
            if blocker is not None:
                # A skipped check names the failed check at the root of the chain.
                root = self.causes.get(blocker, blocker)
                self.causes[name] = root
                self.results[name] = CheckResult(name, "skipped",
                                                 f"not checked because '{root}' failed")
                continue
            self.results[name] = _attempt(name, check)
        if self.threatq_client is not None:
            self.threatq_client.close()
        return list(self.results.values())

    def _blocked(self, name: str) -> bool:
        return self.results[name].state in ("failed", "skipped")

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    # -- configuration ----------------------------------------------------------------

    def configuration(self) -> tuple[str, str]:
        from tqvt_sync.config import require_threatq, require_virustotal

        problems = []
        for service, require in (("threatq", require_threatq),
                                 ("virustotal", require_virustotal)):
            try:
                require(self.settings)
            except ConfigError as exc:
                self.missing.add(service)
                problems.append(str(exc))
        if problems:
            return "failed", " ".join(problems)
        if self.settings.load_warnings:
            return "warning", " ".join(self.settings.load_warnings)
        return "ok", "every setting that ThreatQ and VirusTotal need is set"

    # -- ThreatQ ----------------------------------------------------------------------

    def threatq_reachable(self) -> tuple[str, str]:
        url = self.settings.threatq_url
        failure = _probe(url, self.runtime.threatq_verify(), self.settings.http_timeout)
        self.probe_failure = failure
        address = _address(url)
        # A TLS failure needs an open connection, so the host is reachable.
        if failure is not None and not failure.description.startswith("TLS"):
            return "failed", (f"cannot connect to {address}: {failure.description}; check "
                              "THREATQ_URL, that ThreatQ is running, and the firewalls and "
                              "proxies in between")
        return "ok", f"{address} accepts connections"

    def threatq_tls(self) -> tuple[str, str]:
        settings = self.settings
        parts = urlsplit(settings.threatq_url)
        failure = self.probe_failure
        if parts.scheme == "http":
            return "ok", (f"not used: plain http is accepted for the loopback host "
                          f"{parts.hostname}")
        if failure is not None:
            advice = ("set THREATQ_CA_BUNDLE to the PEM file of the CA that signed it" if
                      failure.certificate_error else "check that THREATQ_URL is the https "
                      "address of ThreatQ")
            return "failed", f"{failure.description}; {advice}"
        if not settings.threatq_verify_tls:
            return "warning", ("certificate not verified because THREATQ_VERIFY_TLS=false; "
                               "set THREATQ_CA_BUNDLE instead and remove THREATQ_VERIFY_TLS")
        if settings.threatq_ca_bundle:
            return "ok", f"certificate verified with THREATQ_CA_BUNDLE {settings.threatq_ca_bundle}"
        return "ok", "certificate verified with the default CA bundle of requests"

    def threatq_credentials(self) -> tuple[str, str]:
        self.threatq_client = self.runtime.threatq_client(max_attempts=1)
        self.threatq_client.fetch_token()
        settings = self.settings
        if settings.threatq_client_secret:
            grant = f"client-credentials grant of client {settings.threatq_client_id}"
        else:
            grant = f"password grant of {settings.threatq_email}"
        return "ok", f"access token issued with the {grant}"

    def indicator_types(self) -> tuple[str, str]:
        instance = sorted(str(item["name"]) for item in
                          self.threatq_client.fetch_indicator_types() if item.get("name"))
        mapping = self.settings.types
        looked_up = [name for name in instance if mapping.get(name)]
        absent = [name for name, kind in mapping.items() if kind and name not in instance]
        if not looked_up:
            return "failed", ("none of this ThreatQ's indicator types maps to a VirusTotal kind; "
                              "add its type names to the [types] table of the config file")
        if absent:
            return "warning", (f"the type map names types that this ThreatQ does not define: "
                               f"{', '.join(absent)}; correct or remove them in the [types] "
                               "table of the config file")
        others = [name for name in instance if not mapping.get(name)]
        shown = ", ".join(others[:_LISTED_TYPES])
        if len(others) > _LISTED_TYPES:
            shown += f" (+{len(others) - _LISTED_TYPES} more)"
        detail = f"{len(looked_up)} of {len(instance)} types are looked up"
        return "ok", detail + (f"; not looked up: {shown}" if others else "")

    # -- VirusTotal -------------------------------------------------------------------

    def virustotal_key(self) -> tuple[str, str]:
        from tqvt_sync.quota import limits_from_overall_quotas

        client = self.runtime.virustotal_client()
        try:
            limits = limits_from_overall_quotas(client.fetch_overall_quotas())
        finally:
            client.close()
        self.quota_limits = limits
        public = limits.daily <= PUBLIC_DAILY_ALLOWANCE
        used = limits.used_today or 0
        detail = (f"key accepted ({'public' if public else 'premium'}); {used} of "
                  f"{limits.daily} calls used today, {limits.minute} per minute")
        if limits.used_today is not None and used >= limits.daily:
            return "warning", (f"{detail}; today's quota is spent, so lookups wait until "
                               "00:00 UTC")
        if public and self.settings.vt_private_key:
            return "warning", (f"{detail}; VT_PRIVATE_KEY=true but the key has the daily "
                               "allowance of a public key; set VT_PRIVATE_KEY=false or use "
                               "the premium key")
        return "ok", detail

    def daily_volume(self) -> tuple[str, str]:
        from tqvt_sync.db.models import Indicator
        from tqvt_sync.stages.lookup import due_condition

        limits = self.quota_limits
        settings = self.settings
        # Indicators that share a VirusTotal identifier cost one call, so count identifiers.
        due = (select(Indicator.kind, Indicator.identifier)
               .where(due_condition(self.runtime.clock.now()), Indicator.identifier.is_not(None))
               .distinct().subquery())
        with self.runtime.engine().connect() as connection:
            backlog = connection.scalar(select(func.count()).select_from(due)) or 0
        capacity = max((settings.daily_limit or limits.daily) - settings.daily_reserve, 1)
        if limits.daily > PUBLIC_DAILY_ALLOWANCE:
            return "ok", f"{backlog} lookups due; the premium key allows {capacity} calls a day"
        if backlog > capacity:
            days = math.ceil(backlog / capacity)
            return "warning", (f"a public key with {backlog} lookups due at {capacity} calls a "
                               f"day needs {days} days; the public API is not for commercial "
                               "use, so use a premium key for this volume")
        return "ok", f"{backlog} lookups due, within the public key's {capacity} calls a day"

    # -- database ---------------------------------------------------------------------

    def database(self) -> tuple[str, str]:
        from tqvt_sync.db import migrate

        engine = self.runtime.engine()
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                verdict = connection.execute(text("PRAGMA integrity_check")).scalar()
            if verdict != "ok":
                return "failed", (f"integrity check reports {verdict!r}; restore a backup, "
                                  "or move the file aside and run 'tqvt db upgrade'")
        try:
            # A table created and dropped in a transaction that is rolled back proves
            # that the database accepts writes, and leaves nothing behind.
            with engine.connect() as connection:
                transaction = connection.begin()
                connection.execute(text("CREATE TABLE tqvt_doctor_probe (x INTEGER)"))
                connection.execute(text("DROP TABLE tqvt_doctor_probe"))
                transaction.rollback()
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            return "failed", (f"{self.runtime.db_display} does not accept writes ({reason}); "
                              "check the permissions of the file and its directory, or TQVT_DB")
        head = migrate.head_revision()
        integrity = "integrity ok, " if engine.dialect.name == "sqlite" else ""
        return "ok", f"{self.runtime.db_display} is writable, {integrity}schema at {head} (current)"


def _probe(url: str, verify: bool | str, timeout: float) -> Any:
    """Send one GET to ``url``; return its TransportFailure, or None when any response arrived."""
    from tqvt_sync.http import build_session, describe_transport_error

    session = build_session(verify=verify, pool_size=1, user_agent="tqvt doctor")
    try:
        session.get(url + "/", timeout=timeout, verify=verify, allow_redirects=False,
                    stream=True).close()
    except requests.RequestException as exc:
        return describe_transport_error(exc)
    finally:
        session.close()
    return None


def _address(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _attempt(name: str, check: Callable[[], tuple[str, str]]) -> CheckResult:
    try:
        state, detail = check()
    except TqvtError as exc:
        return CheckResult(name, "failed", str(exc))
    except Exception as exc:  # a check reports its failure and never ends the doctor
        return CheckResult(name, "failed", f"unexpected {type(exc).__name__}: {exc}")
    return CheckResult(name, state, detail)
