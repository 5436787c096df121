"""Database bytes per cached VirusTotal object, over the bundled sample documents.

Every sample object is looked up through the real pull and lookup stages: files
by SHA-256 and by MD5 (two aliases of one object), URLs by URL, domains and
addresses by name. After VACUUM, SQLite's ``dbstat`` table gives, for
``vt_objects``, ``vt_aliases`` and their indexes, the bytes that their pages
hold (page size minus unused bytes), which is the figure divided by the number
of cached objects. Whole pages are reported too; with a few objects they are
mostly empty. The naive script stores each response body as it came.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta

from benchmarks.harness import (
    UNLIMITED_PLAN,
    Figure,
    report,
    settings_for,
    stage_context,
    urls_of,
)
from tqvt_sync.clock import SystemClock
from tqvt_sync.sandbox import running_simulators
from tqvt_sync.sandbox.virustotal_objects import DATA_DIR, KINDS
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull

NAME = "storage"
TARGET_BYTES = 4096
_TYPES = {"domain": "FQDN", "ip_address": "IP Address"}


def _sample_indicators() -> tuple[list[tuple[str, str]], list[int]]:
    """Return the (value, type) of an indicator per sample identifier, and the body sizes."""
    indicators, sizes = [], []
    for path in sorted(DATA_DIR.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        data = document.get("data")
        if not isinstance(data, dict) or data.get("type") not in KINDS:
            continue
        sizes.append(len(json.dumps(document).encode()))
        attributes = data.get("attributes", {})
        if data["type"] == "file":
            indicators.append((attributes["sha256"], "SHA-256"))
            indicators.append((attributes["md5"], "MD5"))
        elif data["type"] == "url":
            indicators.append((attributes["url"], "URL"))
        else:
            indicators.append((data["id"], _TYPES[data["type"]]))
    return indicators, sizes


def _cache_bytes(path: str) -> tuple[int, int, int]:
    """Return (objects, bytes held in pages, whole pages in bytes) of the cache tables."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("VACUUM")
        names = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE tbl_name IN ('vt_objects', 'vt_aliases')")]
        marks = ",".join("?" * len(names))
        used, pages = connection.execute(
            f"SELECT SUM(pgsize - unused), SUM(pgsize) FROM dbstat WHERE name IN ({marks})",
            names).fetchone()
        objects = connection.execute("SELECT COUNT(*) FROM vt_objects").fetchone()[0]
    finally:
        connection.close()
    return objects, used, pages


def run(quick: bool, figures: list[Figure]) -> None:
    indicators, sizes = _sample_indicators()
    start = datetime.now(UTC) - timedelta(hours=1)
    with running_simulators(vt_plan=UNLIMITED_PLAN) as (tq, vt), \
            tempfile.TemporaryDirectory() as workdir:
        for offset, (value, type_name) in enumerate(indicators):
            tq.add_indicator(value, type_name, updated_at=start + timedelta(seconds=offset))
        path = f"{workdir}/state.db"
        context = stage_context(settings_for(urls_of(tq, vt), f"sqlite:///{path}", workdir),
                                SystemClock())
        pull(context, PullOptions(since=start - timedelta(minutes=1)))
        counts = lookup(context)
        context.engine.dispose()
        objects, used, pages = _cache_bytes(path)

    per_object = used / objects
    raw = sum(sizes) / len(sizes)
    report(Figure(NAME, "cache bytes per VirusTotal object", per_object, "bytes",
                  baseline=raw, baseline_name="naive script: the response body, bytes",
                  ratio=per_object / raw, target=f"<= {TARGET_BYTES} bytes",
                  met=per_object <= TARGET_BYTES,
                  note=f"{objects} objects from {counts['calls']} calls, vt_objects + vt_aliases "
                       "and their indexes, dbstat bytes in use after VACUUM"), figures)
    report(Figure(NAME, "whole pages per VirusTotal object", pages / objects, "bytes",
                  note="4 KiB pages, mostly empty at this count"), figures)
