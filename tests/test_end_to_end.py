"""The CLI, run as a subprocess, against both simulators over real HTTP."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from support import owned_attributes, sim_env, source_names, tq_writes, vt_object_calls
from tqvt_sync.sandbox import DEFAULT_API_KEY, QuotaPlan, running_simulators
from tqvt_sync.sandbox.seed import seed_demo
from tqvt_sync.virustotal.attributes import build_attributes, summarize
from tqvt_sync.virustotal.identifiers import normalize
from tqvt_sync.virustotal.verdict import compute_verdict

PLAN = QuotaPlan(minute=1000, hourly=60_000, daily=100_000, monthly=None)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tqvt_sync", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


ENDPOINTS = {"file": "files", "url": "urls", "domain": "domains", "ip_address": "ip_addresses"}


def expected_attributes(vt, item: dict) -> dict[str, str] | None:
    """Compute what tqvt should write for ``item`` from the simulator's answer."""
    result = normalize(item["type"]["name"], item["value"])
    if result.status != "ok":
        return None
    response = requests.get(f"{vt.url}/{ENDPOINTS[result.kind]}/{result.identifier}",
                            headers={"x-apikey": DEFAULT_API_KEY}, timeout=10)
    assert response.status_code in (200, 404)
    document = response.json() if response.status_code == 200 else None
    summary = summarize(result.kind, document["data"]) if document else None
    stats = summary["stats"] if summary else None
    verdict = compute_verdict(stats, found=summary is not None)
    return build_attributes(result.kind, summary, verdict)


@pytest.fixture(scope="module")
def enriched(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    with running_simulators(vt_plan=PLAN) as (tq, vt):
        seeded = seed_demo(tq, vt)
        before = {item["id"]: item for item in tq.indicators()}
        env = sim_env(tq, vt, str(workdir / "state.db"))
        first = run_cli(env, "sync", "run", "--since", "3650d")
        after_first = (vt_object_calls(vt), tq_writes(tq))
        second = run_cli(env, "sync", "run")
        after_second = (vt_object_calls(vt), tq_writes(tq))
        status = run_cli(env, "status", "--json")
        expected = {item["id"]: expected_attributes(vt, item) for item in tq.indicators()}
        yield {"expected": expected,
            "tq": tq, "vt": vt, "seeded": seeded, "before": before, "first": first,
            "second": second, "after_first": after_first, "after_second": after_second,
            "status": status,
        }


def test_first_run_exits_zero(enriched):
    assert enriched["first"].returncode == 0, enriched["first"].stderr


def test_every_expected_attribute_written_once(enriched):
    tq = enriched["tq"]
    checked = 0
    for item in tq.indicators():
        expected = enriched["expected"][item["id"]]
        owned = owned_attributes(tq.attributes_of(item["id"]))
        if expected is None:
            assert owned == [], f"indicator {item['id']} should not be enriched"
            continue
        names = [a["name"] for a in owned]
        assert sorted(names) == sorted(expected), f"indicator {item['id']}"
        assert {a["name"]: a["value"] for a in owned} == expected, f"indicator {item['id']}"
        checked += 1
    assert checked >= 30


def test_written_attributes_have_virustotal_source(enriched):
    tq = enriched["tq"]
    for item in tq.indicators():
        for attribute in owned_attributes(tq.attributes_of(item["id"])):
            assert source_names(attribute) == ["VirusTotal"]


def test_other_sources_untouched(enriched):
    tq, before = enriched["tq"], enriched["before"]
    for indicator_id, item in before.items():
        theirs_before = [(a["id"], a["name"], a["value"]) for a in tq_attributes(item)
                         if "VirusTotal" not in source_names(a)]
        theirs_after = [(a["id"], a["name"], a["value"]) for a in tq.attributes_of(indicator_id)
                        if "VirusTotal" not in source_names(a)]
        assert theirs_after == theirs_before


def tq_attributes(item: dict) -> list[dict]:
    return item.get("attributes") or []


def test_known_sample_values(enriched):
    tq = enriched["tq"]
    by_value = {item["value"]: item["id"] for item in tq.indicators()}
    attributes = {a["name"]: a["value"] for a in tq.attributes_of(by_value["tawuhoju.com"])}
    assert attributes["VirusTotal Verdict"] == "malicious"
    assert attributes["VirusTotal Detection Ratio"] == "6/93"
    assert attributes["VirusTotal Link"] == "https://www.virustotal.com/gui/domain/tawuhoju.com"


def test_no_indicator_created(enriched):
    assert len(enriched["tq"].indicators()) == len(enriched["before"])


def test_second_run_exits_zero(enriched):
    assert enriched["second"].returncode == 0, enriched["second"].stderr


def test_second_run_makes_no_virustotal_call(enriched):
    assert enriched["after_second"][0] == enriched["after_first"][0]


def test_second_run_makes_no_threatq_write(enriched):
    assert enriched["after_second"][1] == enriched["after_first"][1]


def test_status_json_counts(enriched):
    import json

    report = json.loads(enriched["status"].stdout)
    assert report["outbox"]["pending"] == 0
    assert report["indicators"]["total"] == len(enriched["before"])
