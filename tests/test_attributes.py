"""Attribute values for every sample VirusTotal document and for edge cases.

Expected values were worked out by reading the sample JSON files: counts from
``last_analysis_stats``, engines from ``last_analysis_results`` entries whose
category is malicious, and dates converted with ``date -u -d @EPOCH``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tqvt_sync.virustotal.attributes import (
    ATTRIBUTE_NAMES,
    build_attributes,
    fingerprint,
    summarize,
)
from tqvt_sync.virustotal.verdict import Verdict, compute_verdict

DATA_DIR = Path(__file__).resolve().parents[1] / "tqvt_sync" / "sandbox" / "data"
GUI = "https://www.virustotal.com/gui"
NOT_FOUND = Verdict("not found", None, None)


def load_data(name: str) -> dict[str, Any]:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))["data"]


def attributes_for(name: str, *, premium: bool = False) -> dict[str, str]:
    data = load_data(name)
    summary = summarize(data["type"], data)
    verdict = compute_verdict(summary["stats"])
    return build_attributes(data["type"], summary, verdict, premium=premium)


DLLHIJACKER_ENGINES = (
    "Ad-Aware: Trojan.GenericKD.46601653; AhnLab-V3: Malware/Win32.Generic.C2748405; "
    "Alibaba: TrojanDownloader:Win32/Dllhijacker.57e0b1fd; ALYac: Trojan.Agent.KerrDown; "
    "Antiy-AVL: Trojan/Generic.ASSuf.26AD4; Arcabit: Trojan.Generic.D2C715B5; "
    "Avast: Win32:TrojanX-gen [Trj]; AVG: Win32:TrojanX-gen [Trj]; Avira: HEUR/AGEN.1122008; "
    "BitDefender: Trojan.GenericKD.46601653 (+37 more)"
)
ORCUSRAT_ENGINES = (
    "AhnLab-V3: Win-Trojan/OrcusRAT.Exp; ALYac: Generic.OrcusRAT.A.2DC79B36; "
    "Antiy-AVL: Trojan[Spy]/Win32.Agent.foqx; APEX: Malicious; "
    "Arcabit: Generic.OrcusRAT.A.2DC79B36; Avast: Win32:CrypterX-gen [Trj]; "
    "AVG: Win32:CrypterX-gen [Trj]; Avira: HEUR/AGEN.1365687; "
    "BitDefender: Generic.OrcusRAT.A.2DC79B36; BitDefenderTheta: Gen:NN.ZemsilF.36810.!o0@ayYFNOl "
    "(+44 more)"
)
C2_URL_ENGINES = (
    "ADMINUSLabs: malicious; BitDefender: malware; Comodo Valkyrie Verdict: malware; "
    "CRDF: malicious; Dr.Web: malicious; Forcepoint ThreatSeeker: malicious; G-Data: malware; "
    "Kaspersky: malware; Sangfor: malware; Sophos: malicious (+1 more)"
)

# Every VirusTotal object sample and its attributes without premium ones.
SAMPLE_ATTRIBUTES = {
    "file-dllhijacker-cometer.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "high",
        "VirusTotal Score": "9",
        "VirusTotal Detection Ratio": "47/65",
        "VirusTotal Malicious Engines": DLLHIJACKER_ENGINES,
        "VirusTotal Threat Label": "trojan.dllhijacker/cometer",
        "VirusTotal Last Analysis": "2021-11-09 06:48:26",
        "VirusTotal Reputation": "-7",
        "VirusTotal Link": (
            f"{GUI}/file/4bc00f7d638e042da764e8648c03c0db46700599dd4f08d117e3e9e8b538519b"
        ),
    },
    "file-orcusrat-stub.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "high",
        "VirusTotal Score": "9",
        "VirusTotal Detection Ratio": "54/75",
        "VirusTotal Malicious Engines": ORCUSRAT_ENGINES,
        "VirusTotal Threat Label": "trojan.orcusrat/msil",
        "VirusTotal Last Analysis": "2024-07-29 04:22:49",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/6b60666d6ace3a450d54fe7b915c46632172ca0d4127d87873f0c111560e66cb"
        ),
    },
    "file-chocolatey-clist-shim.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "medium",
        "VirusTotal Score": "7",
        "VirusTotal Detection Ratio": "4/69",
        "VirusTotal Malicious Engines": (
            "Bkav: W32.AIDetectNet.01; Gridinsoft: Ransom.Win32.Sabsik.dd!n; "
            "MaxSecure: Trojan.Malware.300983.susgen; Trapmine: malicious.moderate.ml.score"
        ),
        "VirusTotal Last Analysis": "2023-02-06 17:28:14",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/4eae23e60e21119933e885f14c6af7bffd146169124449ac0dae4163fae9310a"
        ),
    },
    "file-setuptools-cli32.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "medium",
        "VirusTotal Score": "7",
        "VirusTotal Detection Ratio": "1/75",
        "VirusTotal Malicious Engines": "MaxSecure: Trojan.Malware.300983.susgen",
        "VirusTotal Last Analysis": "2024-07-31 06:39:26",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/32acc1bc543116cbe2cff10cb867772df2f254ff2634c870aef0b46c4b696fdb"
        ),
    },
    "file-elf-object-clean.json": {
        "VirusTotal Verdict": "undetected",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "1",
        "VirusTotal Detection Ratio": "0/68",
        "VirusTotal Last Analysis": "2024-07-29 03:19:36",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/f36005f6b20ffcd42bcff696c2917a15865b49b8c7dfdacb5a214c9bc536b6f4"
        ),
    },
    "file-macho-dylib-clean.json": {
        "VirusTotal Verdict": "undetected",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "1",
        "VirusTotal Detection Ratio": "0/66",
        "VirusTotal Last Analysis": "2024-07-31 04:44:21",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/0bebc92d6e228beb4abe1352e22a6348b01c03caefae268c72914fbe991cc7f9"
        ),
    },
    "file-android-apk-albamon.json": {
        "VirusTotal Verdict": "undetected",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "1",
        "VirusTotal Detection Ratio": "0/67",
        "VirusTotal Last Analysis": "2024-07-29 00:34:51",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/c99dba3ba7a50f2c04b182ba871c3f7c6ca4061542990d6e191e506404393908"
        ),
    },
    "file-signed-nsis-system-dll.json": {
        "VirusTotal Verdict": "undetected",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "1",
        "VirusTotal Detection Ratio": "0/74",
        "VirusTotal Last Analysis": "2024-05-26 20:21:11",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/29bd5781eb25da10c05b9e4074c08b5c0d5127abd4e278066973a725463884c3"
        ),
    },
    "file-word-document-clean.json": {
        "VirusTotal Verdict": "undetected",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "1",
        "VirusTotal Detection Ratio": "0/62",
        "VirusTotal Last Analysis": "2024-07-28 23:34:28",
        "VirusTotal Reputation": "0",
        "VirusTotal Link": (
            f"{GUI}/file/213a543b5be7cb5ff6fe326ddbc5296df9c8762549f4bc0a7f588999bd50a708"
        ),
    },
    "url-c2-exe-download.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "high",
        "VirusTotal Score": "9",
        "VirusTotal Detection Ratio": "11/93",
        "VirusTotal Malicious Engines": C2_URL_ENGINES,
        "VirusTotal Last Analysis": "2022-03-04 15:19:31",
        "VirusTotal Reputation": "-154",
        "VirusTotal Categories": (
            "bot networks; command and control; known infection source; media sharing; "
            "Spyware and Adware"
        ),
        "VirusTotal Link": (
            f"{GUI}/url/7d83e9f686ff0122ded311f27aababf6922800a45a23a4dacc860b56ccada4cb"
        ),
    },
    "url-example-com.json": {
        "VirusTotal Verdict": "harmless",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "0",
        "VirusTotal Detection Ratio": "0/71",
        "VirusTotal Last Analysis": "2019-10-19 22:56:52",
        "VirusTotal Reputation": "-58",
        "VirusTotal Link": (
            f"{GUI}/url/2a1b402420ef46577471cdc7409b0fa2c6a204db316e59ade2d805435489a067"
        ),
    },
    "domain-tawuhoju-com.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "high",
        "VirusTotal Score": "9",
        "VirusTotal Detection Ratio": "6/93",
        "VirusTotal Malicious Engines": (
            "Avira: malware; CRDF: malicious; Forcepoint ThreatSeeker: malicious; "
            "Fortinet: malware; Kaspersky: malware; Webroot: malicious"
        ),
        "VirusTotal Reputation": "-37",
        "VirusTotal Categories": (
            "Malicious; malicious web sites; Malware Sites; mobile communications"
        ),
        "VirusTotal Link": f"{GUI}/domain/tawuhoju.com",
    },
    "domain-virustotal-com.json": {
        "VirusTotal Verdict": "harmless",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "0",
        "VirusTotal Detection Ratio": "0/94",
        "VirusTotal Reputation": "133",
        "VirusTotal Categories": (
            "computer security; computersandsoftware; information technology; mobile communications"
        ),
        "VirusTotal Link": f"{GUI}/domain/virustotal.com",
    },
    "ip_address-138-128-150-133.json": {
        "VirusTotal Verdict": "malicious",
        "VirusTotal Severity": "medium",
        "VirusTotal Score": "7",
        "VirusTotal Detection Ratio": "4/93",
        "VirusTotal Malicious Engines": (
            "BitDefender: malware; ESET: malware; G-Data: malware; Webroot: malicious"
        ),
        "VirusTotal Reputation": "1",
        "VirusTotal Link": f"{GUI}/ip-address/138.128.150.133",
    },
    "ip_address-8-8-8-8.json": {
        "VirusTotal Verdict": "harmless",
        "VirusTotal Severity": "low",
        "VirusTotal Score": "0",
        "VirusTotal Detection Ratio": "0/94",
        "VirusTotal Reputation": "264",
        "VirusTotal Link": f"{GUI}/ip-address/8.8.8.8",
    },
}

# The attributes that premium=True adds for each sample.
SAMPLE_PREMIUM_ATTRIBUTES: dict[str, dict[str, str]] = {
    "file-dllhijacker-cometer.json": {
        "VirusTotal First Submission": "2018-08-22 19:53:49",
        "VirusTotal Times Submitted": "2",
        "VirusTotal YARA Rules": "win_kerrdown_auto",
    },
    "file-orcusrat-stub.json": {
        "VirusTotal First Submission": "2024-07-29 04:22:49",
        "VirusTotal Times Submitted": "2",
        "VirusTotal Sandbox Verdicts": "CAPE Sandbox: malicious; Zenbox: malicious",
        "VirusTotal YARA Rules": (
            "Agenttesla_type2; INDICATOR_EXE_Packed_Fody; INDICATOR_SUSPICIOUS_GENInfoStealer; "
            "MALWARE_Win_DLInjector07; Multifamily_RAT_Detection; "
            "SUSP_NET_Msil_Suspicious_Use_StrReverse"
        ),
    },
    # Zenbox rates this file harmless, which is not a flagging sandbox verdict.
    "file-chocolatey-clist-shim.json": {
        "VirusTotal First Submission": "2017-08-15 23:51:29",
        "VirusTotal Times Submitted": "16",
    },
    "file-setuptools-cli32.json": {
        "VirusTotal First Submission": "2023-06-19 20:12:22",
        "VirusTotal Times Submitted": "68",
    },
    "file-elf-object-clean.json": {
        "VirusTotal First Submission": "2024-07-29 03:19:36",
        "VirusTotal Times Submitted": "1",
    },
    "file-macho-dylib-clean.json": {
        "VirusTotal First Submission": "2024-07-31 04:44:21",
        "VirusTotal Times Submitted": "1",
    },
    "file-android-apk-albamon.json": {
        "VirusTotal First Submission": "2024-01-25 05:31:23",
        "VirusTotal Times Submitted": "1710",
        "VirusTotal YARA Rules": "Adobe_XMP_Identifier",
    },
    "file-signed-nsis-system-dll.json": {
        "VirusTotal First Submission": "2022-09-12 23:35:08",
        "VirusTotal Times Submitted": "48",
    },
    "file-word-document-clean.json": {
        "VirusTotal First Submission": "2014-11-05 09:26:46",
        "VirusTotal Times Submitted": "337",
    },
    "url-c2-exe-download.json": {
        "VirusTotal First Submission": "2016-03-01 23:31:59",
        "VirusTotal Times Submitted": "456",
    },
    "url-example-com.json": {
        "VirusTotal First Submission": "2010-10-16 07:00:30",
        "VirusTotal Times Submitted": "24768",
    },
    "domain-tawuhoju-com.json": {},
    "domain-virustotal-com.json": {},
    "ip_address-138-128-150-133.json": {},
    "ip_address-8-8-8-8.json": {},
}

SAMPLE_NAMES = sorted(SAMPLE_ATTRIBUTES)


def test_every_object_sample_is_covered() -> None:
    object_samples = sorted(
        path.name
        for path in DATA_DIR.glob("*.json")
        if path.name.split("-")[0] in ("file", "url", "domain", "ip_address")
    )
    assert object_samples == SAMPLE_NAMES


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_attributes(name: str) -> None:
    assert attributes_for(name) == SAMPLE_ATTRIBUTES[name]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_premium_attributes(name: str) -> None:
    expected = {**SAMPLE_ATTRIBUTES[name], **SAMPLE_PREMIUM_ATTRIBUTES[name]}
    assert attributes_for(name, premium=True) == expected


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_summary_under_4_kib(name: str) -> None:
    data = load_data(name)
    encoded = json.dumps(summarize(data["type"], data)).encode("utf-8")
    assert len(encoded) < 4096


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_summary_survives_json(name: str) -> None:
    data = load_data(name)
    summary = summarize(data["type"], data)
    reloaded = json.loads(json.dumps(summary))
    verdict = compute_verdict(reloaded["stats"])
    assert build_attributes(data["type"], reloaded, verdict, premium=True) == build_attributes(
        data["type"], summary, verdict, premium=True
    )


def test_dllhijacker_summary() -> None:
    summary = summarize("file", load_data("file-dllhijacker-cometer.json"))
    assert summary["malicious_total"] == 47
    assert len(summary["malicious"]) == 10
    assert summary["threat_label"] == "trojan.dllhijacker/cometer"
    assert summary["last_analysis_date"] == 1636440506
    assert summary["yara_rules"] == ["win_kerrdown_auto"]
    assert summary["sandbox_verdicts"] == {}


def test_not_found_sample_gives_only_verdict() -> None:
    body = json.loads((DATA_DIR / "error-404-notfound-file.json").read_text(encoding="utf-8"))
    assert body["error"]["code"] == "NotFoundError"
    verdict = compute_verdict(None, found=False)
    assert build_attributes("file", None, verdict, premium=True) == {
        "VirusTotal Verdict": "not found"
    }


def test_not_found_verdict_ignores_summary() -> None:
    summary = summarize("file", load_data("file-dllhijacker-cometer.json"))
    assert build_attributes("file", summary, NOT_FOUND) == {"VirusTotal Verdict": "not found"}


def document(results: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
    """Build a minimal VirusTotal ``data`` member for a file."""
    return {
        "id": "f" * 64,
        "type": "file",
        "attributes": {"last_analysis_results": results or {}, **attributes},
    }


def malicious_results(names: list[str], label: str | None = "Trojan.X") -> dict[str, Any]:
    return {name: {"category": "malicious", "engine_name": name, "result": label} for name in names}


def engines_attribute(data: dict[str, Any]) -> str | None:
    summary = summarize("file", data)
    verdict = compute_verdict({"malicious": summary["malicious_total"]})
    return build_attributes("file", summary, verdict).get("VirusTotal Malicious Engines")


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param(["b", "A"], "A: Trojan.X; b: Trojan.X", id="two-sorted-ignoring-case"),
        pytest.param(
            [f"E{index:02d}" for index in range(10)],
            "; ".join(f"E{index:02d}: Trojan.X" for index in range(10)),
            id="exactly-ten-no-suffix",
        ),
        pytest.param(
            [f"E{index:02d}" for index in range(11)],
            "; ".join(f"E{index:02d}: Trojan.X" for index in range(10)) + " (+1 more)",
            id="eleven-one-more",
        ),
        pytest.param(
            [f"e{index:02d}" if index % 2 else f"E{index:02d}" for index in range(25)],
            "; ".join(f"{'e' if index % 2 else 'E'}{index:02d}: Trojan.X" for index in range(10))
            + " (+15 more)",
            id="twenty-five-mixed-case",
        ),
    ],
)
def test_malicious_engines_truncation(names: list[str], expected: str) -> None:
    assert engines_attribute(document(malicious_results(names))) == expected


@pytest.mark.parametrize(
    ("label", "written"),
    [
        pytest.param(None, "malicious", id="null-label"),
        pytest.param("", "malicious", id="empty-label"),
        pytest.param("  ", "malicious", id="blank-label"),
        pytest.param("Evil\nLabel", "Evil Label", id="line-break-in-label"),
    ],
)
def test_malicious_engine_label(label: str | None, written: str) -> None:
    data = document(malicious_results(["Engine"], label=label))
    assert engines_attribute(data) == f"Engine: {written}"


def test_only_malicious_engines_listed() -> None:
    results = {
        "A": {"category": "suspicious", "result": "Suspicious.X"},
        "B": {"category": "malicious", "result": "Trojan.B"},
        "C": {"category": "harmless", "result": "clean"},
        "D": {"category": "undetected", "result": None},
        "E": "not a result object",
    }
    assert engines_attribute(document(results)) == "B: Trojan.B"


@pytest.mark.parametrize(
    ("kind", "data_id", "link"),
    [
        pytest.param("file", "a" * 64, f"{GUI}/file/{'a' * 64}", id="file"),
        pytest.param("url", "b" * 64, f"{GUI}/url/{'b' * 64}", id="url"),
        pytest.param("domain", "example.com", f"{GUI}/domain/example.com", id="domain"),
        pytest.param("ip_address", "8.8.8.8", f"{GUI}/ip-address/8.8.8.8", id="ip"),
    ],
)
def test_link_path_per_kind(kind: str, data_id: str, link: str) -> None:
    data = {"id": data_id, "type": kind, "attributes": {}}
    attributes = build_attributes(kind, summarize(kind, data), compute_verdict({}))
    assert attributes["VirusTotal Link"] == link


PREMIUM_DATA = document(
    first_submission_date=0,
    times_submitted=3,
    sandbox_verdicts={
        "zenbox": {"category": "suspicious"},
        "CAPE": {"category": "malicious"},
        "Other": {"category": "harmless"},
        "Broken": "not a verdict object",
    },
    crowdsourced_yara_results=[
        {"rule_name": "rule_b"},
        {"rule_name": "Rule_A"},
        {"rule_name": "rule_b"},
        {"ruleset_name": "no rule name"},
    ],
)


def test_premium_attributes_off() -> None:
    summary = summarize("file", PREMIUM_DATA)
    attributes = build_attributes("file", summary, compute_verdict({}))
    assert "VirusTotal First Submission" not in attributes
    assert "VirusTotal Times Submitted" not in attributes
    assert "VirusTotal Sandbox Verdicts" not in attributes
    assert "VirusTotal YARA Rules" not in attributes


def test_premium_attributes_on() -> None:
    summary = summarize("file", PREMIUM_DATA)
    attributes = build_attributes("file", summary, compute_verdict({}), premium=True)
    assert attributes["VirusTotal First Submission"] == "1970-01-01 00:00:00"
    assert attributes["VirusTotal Times Submitted"] == "3"
    assert attributes["VirusTotal Sandbox Verdicts"] == "CAPE: malicious; zenbox: suspicious"
    assert attributes["VirusTotal YARA Rules"] == "Rule_A; rule_b"


def test_empty_values_are_absent() -> None:
    data = document(
        categories={},
        popular_threat_classification={"suggested_threat_label": ""},
        last_analysis_date=None,
        reputation="high",
    )
    attributes = build_attributes(
        "file", summarize("file", data), compute_verdict({}), premium=True
    )
    assert set(attributes) == {
        "VirusTotal Verdict",
        "VirusTotal Severity",
        "VirusTotal Score",
        "VirusTotal Detection Ratio",
        "VirusTotal Link",
    }


def test_categories_distinct_and_sorted() -> None:
    data = document(categories={"v1": "phishing", "v2": "Malware", "v3": "phishing", "v4": "ads"})
    attributes = build_attributes("file", summarize("file", data), compute_verdict({}))
    assert attributes["VirusTotal Categories"] == "ads; Malware; phishing"


def test_all_zero_stats_attributes() -> None:
    data = document(last_analysis_stats={})
    attributes = build_attributes("file", summarize("file", data), compute_verdict({}))
    assert attributes["VirusTotal Verdict"] == "undetected"
    assert attributes["VirusTotal Detection Ratio"] == "0/0"
    assert attributes["VirusTotal Score"] == "1"


def test_missing_score_bucket_omits_score() -> None:
    verdict = Verdict("undetected", "low", None)
    attributes = build_attributes("file", summarize("file", document()), verdict)
    assert "VirusTotal Score" not in attributes


def test_unusable_date_is_absent() -> None:
    data = document(last_analysis_date=10**20)
    attributes = build_attributes("file", summarize("file", data), compute_verdict({}))
    assert "VirusTotal Last Analysis" not in attributes


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty"),
        pytest.param({"id": "x", "attributes": None}, id="null-attributes"),
        pytest.param({"id": "x", "attributes": []}, id="list-attributes"),
        pytest.param(
            {
                "id": "x",
                "attributes": {
                    "last_analysis_results": [],
                    "last_analysis_stats": "none",
                    "categories": ["a"],
                    "crowdsourced_yara_results": {"rule_name": "x"},
                    "popular_threat_classification": "trojan",
                },
            },
            id="wrong-field-types",
        ),
    ],
)
def test_summarize_malformed_document(data: dict[str, Any]) -> None:
    summary = summarize("file", data)
    assert summary["malicious"] == {}
    assert summary["stats"] == {}
    assert summary["categories"] == []
    assert summary["yara_rules"] == []
    assert summary["threat_label"] is None


def test_attribute_names_cover_every_output() -> None:
    attributes = attributes_for("file-orcusrat-stub.json", premium=True)
    attributes.update(attributes_for("url-c2-exe-download.json", premium=True))
    assert set(attributes) <= set(ATTRIBUTE_NAMES)
    assert len(ATTRIBUTE_NAMES) == 14


def test_fingerprint_known_value() -> None:
    # sha256 of '{"attributes":[["VirusTotal Verdict","not found"]],"score":null}'
    expected = "c85799149a8aefd99f8aa72316d7235ab5d30b242552c171e0f850ae7a064437"
    assert fingerprint({"VirusTotal Verdict": "not found"}) == expected


def test_fingerprint_ignores_order() -> None:
    forward = {"VirusTotal Verdict": "malicious", "VirusTotal Score": "9"}
    backward = {"VirusTotal Score": "9", "VirusTotal Verdict": "malicious"}
    assert fingerprint(forward, 9) == fingerprint(backward, 9)


@pytest.mark.parametrize(
    ("attributes", "score"),
    [
        pytest.param({"VirusTotal Verdict": "harmless"}, 9, id="value-changed"),
        pytest.param(
            {"VirusTotal Verdict": "malicious", "VirusTotal Reputation": "0"}, 9, id="name-added"
        ),
        pytest.param({"VirusTotal Verdict": "malicious"}, 7, id="score-changed"),
        pytest.param({"VirusTotal Verdict": "malicious"}, None, id="score-removed"),
    ],
)
def test_fingerprint_changes(attributes: dict[str, str], score: int | None) -> None:
    assert fingerprint(attributes, score) != fingerprint({"VirusTotal Verdict": "malicious"}, 9)
