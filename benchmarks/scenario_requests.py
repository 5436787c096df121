"""ThreatQ requests per enriched indicator, counted at the simulator.

The simulators and the stages share a fake clock. A first pull, lookup and push
enriches a fresh library: the push requests divided by the indicators delivered
give the figure for new indicators. Then the VirusTotal response changes for
every third indicator, the clock moves past the cache TTL, and lookup and push
run again. Each indicator's own requests (its attribute reads and writes) are
compared with 1 + the number of its VirusTotal attributes that changed, read
from the simulator before and after. Requests that serve a whole batch (token,
query, consume) are reported apart.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta

from benchmarks.harness import (
    UNLIMITED_PLAN,
    Figure,
    indicator_value,
    report,
    seed_threatq,
    settings_for,
    stage_context,
    urls_of,
)
from tqvt_sync.clock import FakeClock
from tqvt_sync.sandbox import running_simulators
from tqvt_sync.stages.lookup import lookup
from tqvt_sync.stages.pull import PullOptions, pull
from tqvt_sync.stages.push import push
from tqvt_sync.virustotal.identifiers import normalize

NAME = "requests"
TARGET_NEW = 1.05
_PER_INDICATOR = re.compile(r"/api/indicators?/(\d+)(?:/|$)")


def _owned(tq, indicator_id: int) -> dict[str, str]:
    """Return the VirusTotal attributes of an indicator, name to value."""
    return {a["name"]: a["value"] for a in tq.attributes_of(indicator_id)
            if a["name"].startswith("VirusTotal ")
            and any(s.get("name") == "VirusTotal" for s in a.get("sources") or [])}


def _split(records) -> tuple[Counter[int], int]:
    """Count requests per indicator id, and the requests that name no indicator."""
    per_indicator: Counter[int] = Counter()
    shared = 0
    for record in records:
        match = _PER_INDICATOR.match(record.path)
        if match and record.path != "/api/indicators/query" and "consume" not in record.path:
            per_indicator[int(match.group(1))] += 1
        else:
            shared += 1
    return per_indicator, shared


def _change_responses(vt, tq, ids: list[int]) -> None:
    """Give every third looked-up indicator a different VirusTotal verdict."""
    for index, indicator_id in enumerate(ids):
        value, type_name = indicator_value(index)
        result = normalize(type_name, value)
        if result.status != "ok" or index % 3:
            continue
        verdict = _owned(tq, indicator_id).get("VirusTotal Verdict")
        if verdict in ("malicious", "suspicious"):
            vt.add_generated(result.kind, result.identifier, harmless=3, undetected=10)
        else:
            vt.add_generated(result.kind, result.identifier, malicious=7)


def run(quick: bool, figures: list[Figure]) -> None:
    size = 100 if quick else 300
    clock = FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    start = clock.now() - timedelta(seconds=size // 3 + 60)
    with running_simulators(clock, vt_plan=UNLIMITED_PLAN) as (tq, vt), \
            tempfile.TemporaryDirectory() as workdir:
        ids = seed_threatq(tq, size, start=start)
        context = stage_context(settings_for(urls_of(tq, vt), f"sqlite:///{workdir}/state.db",
                                             workdir), clock)
        pull(context, PullOptions(since=start - timedelta(minutes=1)))
        lookup(context)
        first = len(tq.requests)
        counts = push(context)
        new_requests = tq.requests.snapshot()[first:]

        before = {indicator_id: _owned(tq, indicator_id) for indicator_id in ids}
        _change_responses(vt, tq, ids)
        clock.advance(timedelta(days=8).total_seconds())
        lookup(context)
        second = len(tq.requests)
        push(context)
        update_requests = tq.requests.snapshot()[second:]
        after = {indicator_id: _owned(tq, indicator_id) for indicator_id in ids}
        context.engine.dispose()

    per_new = len(new_requests) / counts["delivered"]
    report(Figure(NAME, "ThreatQ requests per newly enriched indicator", per_new, "",
                  target=f"<= {TARGET_NEW}", met=per_new <= TARGET_NEW,
                  note=f"{len(new_requests)} requests for {counts['delivered']} indicators"),
           figures)

    per_indicator, shared = _split(update_requests)
    changed = {i: len({n for n in before[i].keys() | after[i].keys()
                       if before[i].get(n) != after[i].get(n)}) for i in ids}
    updated = [i for i in ids if changed[i]]
    excess = [per_indicator[i] - (1 + changed[i]) for i in updated]
    untouched = sum(per_indicator[i] for i in ids if not changed[i])
    spent = sum(per_indicator[i] for i in updated)
    allowed = sum(1 + changed[i] for i in updated)
    report(Figure(NAME, "ThreatQ requests per updated indicator", spent / len(updated), "",
                  baseline=allowed / len(updated), baseline_name="mean of 1 + changed attributes",
                  ratio=spent / allowed, target="each <= 1 + its changed attributes",
                  met=max(excess) <= 0,
                  note=f"{len(updated)} updated; largest excess {max(excess)}; "
                       f"{shared} batch requests (token, query, consume); "
                       f"{untouched} requests for the {len(ids) - len(updated)} unchanged"),
           figures)
