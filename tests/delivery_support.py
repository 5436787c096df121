"""Helpers for the delivery tests: a seeded threat library, the attributes tqvt
should write, and a comparison of ThreatQ's attributes with them."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tqvt_sync.sandbox.virustotal_objects import target_for
from tqvt_sync.virustotal.attributes import ATTRIBUTE_NAMES, build_attributes, summarize
from tqvt_sync.virustotal.identifiers import normalize
from tqvt_sync.virustotal.verdict import compute_verdict

VT_SOURCE = "VirusTotal"
OWNED_NAMES = frozenset(ATTRIBUTE_NAMES)

# Engine counts that give each verdict of the verdict table, cycled over the library.
VERDICT_PLANS: tuple[dict[str, int] | None, ...] = (
    {"malicious": 8, "harmless": 50},
    {"malicious": 2, "harmless": 60},
    {"suspicious": 3, "harmless": 60},
    {"harmless": 70},
    {},
    None,
)
# The same plans shifted by two, so a second round changes every found verdict.
CHANGED_PLANS = VERDICT_PLANS[2:] + VERDICT_PLANS[:2]
TYPES = ("SHA-256", "FQDN", "IP Address", "URL", "MD5", "SHA-1")


def indicator_value(type_name: str, index: int) -> str:
    """Return a distinct valid value of ``type_name`` for position ``index``."""
    digest = hashlib.sha256(f"delivery test {index}".encode())
    if type_name == "SHA-256":
        return digest.hexdigest()
    if type_name == "MD5":
        return digest.hexdigest()[:32]
    if type_name == "SHA-1":
        return digest.hexdigest()[:40]
    if type_name == "FQDN":
        return f"host{index}.example.net"
    if type_name == "IP Address":
        return f"8.{index // 250 % 250}.{index % 250 + 1}.7"
    return f"http://site{index}.example.org/page{index}"


@dataclass
class Library:
    """The indicators a test seeded, and their non-VirusTotal attributes at the start."""

    ids: list[int] = field(default_factory=list)
    foreign: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)


def seed_library(tq: Any, vt: Any, count: int, *, carry_every: int = 0, updated_at: Any = None,
                 plans: tuple[dict[str, int] | None, ...] = VERDICT_PLANS) -> Library:
    """Add ``count`` indicators to ThreatQ and a VirusTotal response for each.

    Every third indicator carries an analyst attribute. With ``carry_every`` N,
    every Nth indicator also carries a VirusTotal-sourced verdict twice (a stale
    value and a duplicate) and a "VirusTotal Verdict" of another source, so its
    first delivery goes the read-back path and must update, delete and keep.
    """
    library = Library()
    for index in range(count):
        type_name = TYPES[index % len(TYPES)]
        value = indicator_value(type_name, index)
        attributes: list[tuple[str, ...]] = []
        if index % 3 == 0:
            attributes.append(("Description", f"analyst note {index}", "Analyst"))
        if carry_every and index % carry_every == carry_every - 1:
            attributes += [("VirusTotal Verdict", "harmless", VT_SOURCE),
                           ("VirusTotal Verdict", "harmless", VT_SOURCE),
                           ("VirusTotal Verdict", "analyst says clean", "Analyst")]
        indicator_id = tq.add_indicator(value, type_name, attributes=attributes,
                                        updated_at=updated_at, source="Delivery Feed")
        library.ids.append(indicator_id)
        set_answer(vt, type_name, value, plans[index % len(plans)])
    library.foreign = foreign_attributes(tq, library.ids)
    return library


def set_answer(vt: Any, type_name: str, value: str, plan: dict[str, int] | None) -> None:
    """Make VirusTotal respond with ``plan`` engine counts for the value, or 404 for None."""
    result = normalize(type_name, value)
    key = value if result.kind == "url" else result.identifier
    if plan is None:
        vt.mark_not_found(result.kind, key)
    else:
        vt.add_generated(result.kind, key, **plan)


def change_answers(tq: Any, vt: Any, ids: list[int], plans: tuple[dict[str, int] | None, ...]
                   ) -> None:
    """Give the indicators ``ids`` the VirusTotal responses of ``plans`` (cycled by position)."""
    for position, indicator_id in enumerate(ids):
        item = tq.indicator(indicator_id)
        set_answer(vt, item["type"]["name"], item["value"], plans[position % len(plans)])


def expected_attributes(vt: Any, item: dict[str, Any], *, scores: dict[str, int] | None = None,
                        premium: bool = False) -> dict[str, str] | None:
    """Return what tqvt should write on ``item`` from VirusTotal's current response.

    The response is read from the simulator's object store, so computing it costs
    no request and no quota.
    """
    result = normalize(item["type"]["name"], item["value"])
    if result.status != "ok":
        return None
    body = vt.objects.lookup(target_for(result.kind, result.identifier))
    summary = summarize(result.kind, json.loads(body)["data"]) if body is not None else None
    verdict = compute_verdict(summary["stats"] if summary else None, found=summary is not None,
                              scores=scores)
    return build_attributes(result.kind, summary, verdict, premium=premium)


def expected_state(tq: Any, vt: Any, ids: list[int], **options: Any) -> dict[int, dict[str, str]]:
    return {i: expected_attributes(vt, tq.indicator(i), **options) or {} for i in ids}


def is_owned(attribute: dict[str, Any]) -> bool:
    sources = [s.get("name") for s in attribute.get("sources") or []]
    return attribute.get("name") in OWNED_NAMES and VT_SOURCE in sources


def foreign_attributes(tq: Any, ids: list[int]) -> dict[int, list[tuple[Any, ...]]]:
    """Return every attribute that tqvt does not own, per indicator, as comparable tuples."""
    return {
        i: [(a["id"], a["name"], a["value"], tuple(s["name"] for s in a.get("sources") or []))
            for a in tq.attributes_of(i) if not is_owned(a)]
        for i in ids
    }


@dataclass
class Tally:
    """How ThreatQ's VirusTotal attributes compare with the expected ones."""

    lost: int = 0
    duplicated: int = 0
    stale: int = 0
    details: list[str] = field(default_factory=list)


def tally(tq: Any, expected: dict[int, dict[str, str]]) -> Tally:
    """Count expected values missing (lost), extra instances of a name (duplicated)
    and owned names that should be gone (stale)."""
    result = Tally()
    for indicator_id, wanted in expected.items():
        owned = [a for a in tq.attributes_of(indicator_id) if is_owned(a)]
        per_name = Counter(a["name"] for a in owned)
        values = {(a["name"], str(a["value"])) for a in owned}
        for name, value in wanted.items():
            if (name, value) not in values:
                result.lost += 1
                result.details.append(f"{indicator_id}: {name}={value!r} missing")
        for name, count in per_name.items():
            if count > 1:
                result.duplicated += count - 1
                result.details.append(f"{indicator_id}: {name} x{count}")
            if name not in wanted:
                result.stale += count
                result.details.append(f"{indicator_id}: {name} should be gone")
    return result

