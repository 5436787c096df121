"""Shared parts of the benchmark scenarios: seeding, settings, timers and the result table."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tqvt_sync.cli.runtime import Runtime
from tqvt_sync.clock import Clock
from tqvt_sync.config import Settings, load_settings
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan
from tqvt_sync.sandbox import httpserver
from tqvt_sync.stages.common import StageContext
from tqvt_sync.threatq.client import ThreatQClient
from tqvt_sync.virustotal.client import VirusTotalClient

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A key without limits, so that only the premium scenario is paced.
UNLIMITED_PLAN = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
PREMIUM_PLAN = QuotaPlan(minute=1000, hourly=60_000, daily=1_000_000, monthly=None)

THREATQ_METHODS = (
    "fetch_indicator_page", "fetch_collection_page", "fetch_attributes", "fetch_indicator",
    "fetch_indicator_types", "create_attribute", "update_attribute", "delete_attribute",
    "update_score", "consume", "fetch_token",
)
VIRUSTOTAL_METHODS = ("fetch_object", "fetch_overall_quotas")

# Globally routable first octets, so that no seeded address is skipped as private.
_PUBLIC_OCTETS = (23, 45, 51, 62, 77, 81, 89, 91, 93, 104, 141, 151, 185, 193, 195, 212)
# One cycle of seeded types; the last two slots cost no VirusTotal call.
_TYPE_CYCLE = (
    "SHA-256", "FQDN", "URL", "IP Address", "SHA-256", "MD5", "FQDN", "URL", "SHA-1", "IP Address",
    "SHA-256", "FQDN", "URL", "MD5", "SHA-256", "FQDN", "URL", "IP Address", "CVE", "Email Address",
)


def indicator_value(index: int) -> tuple[str, str]:
    """Return the (value, ThreatQ type) of seeded indicator ``index``; distinct per index."""
    type_name = _TYPE_CYCLE[index % len(_TYPE_CYCLE)]
    digest = hashlib.sha256(f"tqvt benchmark {index}".encode()).hexdigest()
    if type_name == "SHA-256":
        return digest, type_name
    if type_name == "SHA-1":
        return digest[:40], type_name
    if type_name == "MD5":
        return digest[:32], type_name
    if type_name == "FQDN":
        return f"host{index}.bench-{digest[:6]}.example", type_name
    if type_name == "URL":
        return f"http://site{index}.example.com/{digest[:10]}/payload.exe", type_name
    if type_name == "IP Address":
        octet = _PUBLIC_OCTETS[(index >> 16) % len(_PUBLIC_OCTETS)]
        return f"{octet}.{(index >> 8) & 255}.{index & 255}.{index % 250 + 1}", type_name
    if type_name == "CVE":
        return f"CVE-2024-{10000 + index}", type_name
    return f"user{index}@mail.example", type_name


def seed_threatq(tq: Any, count: int, *, start: datetime, first: int = 0) -> list[int]:
    """Add ``count`` indicators, three per second from ``start``; return their ids.

    Every fourth indicator carries an attribute of another source, as pulled
    indicators often do.
    """
    ids = []
    for index in range(first, first + count):
        value, type_name = indicator_value(index)
        attributes = (("Description", f"campaign {index % 97}", "Partner Feed"),) \
            if index % 4 == 0 else ()
        ids.append(tq.add_indicator(value, type_name, attributes=attributes,
                                    updated_at=start + timedelta(seconds=index // 3),
                                    source="Benchmark Feed"))
    return ids


def urls_of(tq: Any, vt: Any) -> dict[str, str]:
    """Describe in-process simulators the way ``serve_sims`` describes its own."""
    return {
        "threatq_url": tq.url, "client_id": tq.credentials.client_id,
        "email": tq.credentials.email, "password": tq.credentials.password,
        "vt_url": vt.url, "vt_key": DEFAULT_API_KEY,
    }


def settings_for(urls: dict[str, str], db_url: str, workdir: str, **overrides: Any) -> Settings:
    """Return settings for the simulators at ``urls`` and the database ``db_url``.

    Stages log warnings and errors only, so the benchmark output stays readable.
    """
    base = load_settings(environ={}, cwd=workdir)
    values = {
        "threatq_url": urls["threatq_url"], "threatq_client_id": urls["client_id"],
        "threatq_email": urls["email"], "threatq_password": urls["password"],
        "vt_api_key": urls["vt_key"], "vt_api_url": urls["vt_url"], "db": db_url,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return dataclasses.replace(base, **values)


def sim_env(urls: dict[str, str], db_path: str, **extra: str) -> dict[str, str]:
    """Return an environment for the ``tqvt`` CLI against simulators described by ``urls``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("THREATQ_", "VT_", "TQVT_"))}
    env.update({
        "THREATQ_URL": urls["threatq_url"], "THREATQ_CLIENT_ID": urls["client_id"],
        "THREATQ_EMAIL": urls["email"], "THREATQ_PASSWORD": urls["password"],
        "VT_API_KEY": urls["vt_key"], "VT_API_URL": urls["vt_url"], "TQVT_DB": db_path,
    })
    env.update(extra)
    return env


@contextmanager
def external_simulators(indicators: int, start: datetime, *, premium: bool = False,
                        vt_latency: float = 0.0) -> Iterator[dict[str, str]]:
    """Run ``benchmarks.serve_sims`` in a subprocess and yield its URLs and credentials."""
    command = [sys.executable, "-m", "benchmarks.serve_sims", "--indicators", str(indicators),
               "--start", start.isoformat(), "--vt-latency", str(vt_latency)]
    if premium:
        command.append("--premium")
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=REPOSITORY)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmarks.serve_sims exited with code {process.wait()}")
        yield json.loads(line)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stage_context(settings: Settings, clock: Clock) -> StageContext:
    return Runtime(options={}, settings_override=settings, clock=clock).stage_context()


class Stopwatch:
    """Seconds spent inside wrapped calls, summed over threads; nested calls count once."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def reset(self) -> None:
        with self._lock:
            self.seconds, self.calls = 0.0, 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._local.depth = depth
                if depth == 0:
                    elapsed = time.perf_counter() - started
                    with self._lock:
                        self.seconds += elapsed
                        self.calls += 1
        return timed


@contextmanager
def patched(targets: list[tuple[Any, str]], stopwatch: Stopwatch) -> Iterator[Stopwatch]:
    """Wrap each ``(owner, attribute)`` with ``stopwatch`` while the block runs."""
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name, original in originals:
        setattr(owner, name, stopwatch.wrap(original))
    try:
        yield stopwatch
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def client_http_timer() -> Any:
    """Time spent inside the ThreatQ and VirusTotal clients' HTTP methods (definition A)."""
    targets = [(ThreatQClient, name) for name in THREATQ_METHODS]
    targets += [(VirusTotalClient, name) for name in VIRUSTOTAL_METHODS]
    return patched(targets, Stopwatch())


def simulator_timer() -> Any:
    """Time the simulators spend on each request, from its body to the response (definition B).

    The request line and headers are parsed before this time starts, so their
    parsing counts as the client's.
    """
    handler = httpserver._Handler
    names = ("do_GET", "do_POST", "do_PUT", "do_DELETE", "do_PATCH")
    return patched([(handler, name) for name in names], Stopwatch())


@dataclass
class Figure:
    """One measured figure, with its baseline and target where it has them."""

    scenario: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def line(self) -> str:
        parts = [f"[{self.scenario}] {self.name}: {format_number(self.value)} {self.unit}"]
        if self.baseline is not None:
            parts.append(f"baseline ({self.baseline_name}) {format_number(self.baseline)}")
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:.3f}")
        if self.target:
            verdict = "" if self.met is None else (" MET" if self.met else " MISSED")
            parts.append(f"target {self.target}{verdict}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def format_number(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    last_minute, last_five, last_fifteen = os.getloadavg()
    return f"{last_minute:.2f} {last_five:.2f} {last_fifteen:.2f}"


def report(figure: Figure, sink: list[Figure]) -> Figure:
    """Print ``figure`` at once and keep it for the summary."""
    sink.append(figure)
    print(figure.line(), flush=True)
    return figure
