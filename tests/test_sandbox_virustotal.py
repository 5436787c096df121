"""The VirusTotal simulator over real HTTP: lookups, generation, quotas, gzip, faults."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests

from tqvt_sync.clock import FakeClock
from tqvt_sync.sandbox import QuotaPlan, VirusTotalSimulator, running_simulators
from tqvt_sync.sandbox.seed import seed_demo

KEY = "demo-vt-key"
UNLIMITED = QuotaPlan(minute=None, hourly=None, daily=None, monthly=None)
DLL_SHA256 = "4bc00f7d638e042da764e8648c03c0db46700599dd4f08d117e3e9e8b538519b"
DLL_MD5 = "546bb6ef89bebfb053999777f6930d7e"
DLL_SHA1 = "44392b16e2db656104579e83d603b363bf91ccb2"
C2_URL = "http://soclosebutyetqq.com/69.exe"
C2_URL_SHA256 = "7d83e9f686ff0122ded311f27aababf6922800a45a23a4dacc860b56ccada4cb"


def _url_id(url: str) -> str:
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


@pytest.fixture
def vt(clock: FakeClock) -> Iterator[VirusTotalSimulator]:
    with VirusTotalSimulator(clock, keys={KEY: UNLIMITED}) as simulator:
        yield simulator


@pytest.fixture
def free_vt(clock: FakeClock) -> Iterator[VirusTotalSimulator]:
    with VirusTotalSimulator(clock) as simulator:
        yield simulator


@pytest.fixture
def api() -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["x-apikey"] = KEY
    yield session
    session.close()


# ---- lookups of the samples ------------------------------------------------------------


@pytest.mark.parametrize("key", [DLL_MD5, DLL_SHA1, DLL_SHA256, DLL_SHA256.upper()])
def test_file_sample_by_any_hash(vt, api, key):
    response = api.get(f"{vt.url}/files/{key}")
    assert response.status_code == 200
    assert response.json()["data"]["id"] == DLL_SHA256


@pytest.mark.parametrize("identifier", [_url_id(C2_URL), C2_URL_SHA256])
def test_url_sample_by_either_id(vt, api, identifier):
    data = api.get(f"{vt.url}/urls/{identifier}").json()["data"]
    assert data["id"] == C2_URL_SHA256
    assert data["attributes"]["url"] == C2_URL


@pytest.mark.parametrize(
    ("path", "data_id"),
    [("domains/tawuhoju.com", "tawuhoju.com"), ("ip_addresses/8.8.8.8", "8.8.8.8")],
)
def test_domain_and_ip_samples(vt, api, path, data_id):
    assert api.get(f"{vt.url}/{path}").json()["data"]["id"] == data_id


def test_auth_missing_and_wrong_key(vt):
    missing = requests.get(f"{vt.url}/files/{DLL_MD5}")
    wrong = requests.get(f"{vt.url}/files/{DLL_MD5}", headers={"x-apikey": "nope"})
    mixed_case = requests.get(f"{vt.url}/files/{DLL_MD5}", headers={"X-Apikey": KEY})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "AuthenticationRequiredError"
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "WrongCredentialsError"
    assert mixed_case.status_code == 200


def test_not_found_without_synthesis(clock, api):
    unknown = "0" * 64
    with VirusTotalSimulator(clock, keys={KEY: UNLIMITED}, synthesize=False) as vt:
        response = api.get(f"{vt.url}/files/{unknown}")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "NotFoundError", "message": f'File "{unknown}" not found'}
    }


@pytest.mark.parametrize(
    "path", ["urls/!!notbase64", "files/abc", "ip_addresses/999.1.1.1", "domains/bad..name"]
)
def test_invalid_identifier(vt, api, path):
    response = api.get(f"{vt.url}/{path}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidArgumentError"


def test_add_object_and_mark_not_found(vt, api):
    document = {"data": {"id": "a.example", "type": "domain", "attributes": {"reputation": 5}}}
    vt.add_object("domain", "a.example", document)
    vt.mark_not_found("file", DLL_MD5)
    assert api.get(f"{vt.url}/domains/a.example").json() == document
    assert api.get(f"{vt.url}/files/{DLL_MD5}").status_code == 404
    assert api.get(f"{vt.url}/files/{DLL_SHA256}").status_code == 200


def test_add_generated_counts(vt, api):
    vt.add_generated("url", "https://x.example/a", suspicious=2, harmless=50)
    data = api.get(f"{vt.url}/urls/{_url_id('https://x.example/a')}").json()["data"]
    stats = data["attributes"]["last_analysis_stats"]
    assert stats["suspicious"] == 2
    assert stats["harmless"] == 50
    assert stats["malicious"] == 0
    assert data["id"] == hashlib.sha256(b"https://x.example/a").hexdigest()


# ---- generated objects -----------------------------------------------------------------


def _bucket(attributes: dict) -> str:
    stats = attributes["last_analysis_stats"]
    if not attributes["last_analysis_results"]:
        return "no engines"
    if stats["malicious"] >= 5:
        return "malicious many"
    if stats["malicious"]:
        return "malicious few"
    if stats["suspicious"]:
        return "suspicious"
    return "harmless" if stats["harmless"] else "undetected"


def test_generated_files_are_consistent(vt, api):
    buckets = set()
    for index in range(200):
        sha256 = hashlib.sha256(str(index).encode()).hexdigest()
        response = api.get(f"{vt.url}/files/{sha256}")
        if response.status_code == 404:
            buckets.add("not found")
            continue
        attributes = response.json()["data"]["attributes"]
        counted = {}
        for result in attributes["last_analysis_results"].values():
            counted[result["category"]] = counted.get(result["category"], 0) + 1
        nonzero = {name: n for name, n in attributes["last_analysis_stats"].items() if n}
        assert counted == nonzero
        assert attributes["sha256"] == sha256
        buckets.add(_bucket(attributes))
    expected = {"not found", "no engines", "malicious many", "malicious few", "suspicious"}
    assert buckets >= expected | {"harmless", "undetected"}


def test_generated_is_deterministic(clock, api):
    md5 = hashlib.md5(b"sample").hexdigest()
    with VirusTotalSimulator(clock, keys={KEY: UNLIMITED}, not_found_rate=0.0) as vt:
        first = api.get(f"{vt.url}/files/{md5}")
        second = api.get(f"{vt.url}/files/{md5}")
    assert first.content == second.content
    assert first.json()["data"]["attributes"]["md5"] == md5
    assert len(first.json()["data"]["id"]) == 64


def test_generated_url_fields(clock, api):
    url = "https://login-portal.example/a.php"
    with VirusTotalSimulator(clock, keys={KEY: UNLIMITED}, not_found_rate=0.0) as vt:
        data = api.get(f"{vt.url}/urls/{_url_id(url)}").json()["data"]
    assert data["id"] == hashlib.sha256(url.encode()).hexdigest()
    assert data["attributes"]["url"] == url
    assert data["type"] == "url"


def test_not_found_rate_one(clock, api):
    with VirusTotalSimulator(clock, keys={KEY: UNLIMITED}, not_found_rate=1.0) as vt:
        statuses = {api.get(f"{vt.url}/domains/d{i}.example").status_code for i in range(10)}
    assert statuses == {404}


# ---- quotas --------------------------------------------------------------------------------


def test_quota_minute_window(free_vt, api, clock):
    statuses = [api.get(f"{free_vt.url}/files/{DLL_MD5}").status_code for _ in range(5)]
    clock.advance(59)
    still_blocked = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    clock.advance(1)
    reopened = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    assert statuses == [200, 200, 200, 200, 429]
    assert still_blocked.status_code == 429
    assert reopened.status_code == 200
    assert free_vt.rejections[KEY]["minute"] == 2
    assert len(free_vt.accepted_calls(KEY)) == 5


def test_quota_429_body_and_not_counted(free_vt, api):
    for _ in range(6):
        response = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    assert response.json() == {"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}}
    assert free_vt.quota_used(KEY)["minute"] == 4
    assert free_vt.quota_used(KEY)["daily"] == 4


def test_quota_hourly_window(clock, api):
    plan = QuotaPlan(minute=None, hourly=3, daily=None, monthly=None)
    with VirusTotalSimulator(clock, keys={KEY: plan}) as vt:
        statuses = [api.get(f"{vt.url}/domains/tawuhoju.com").status_code for _ in range(4)]
        clock.advance(3600)
        after_hour = api.get(f"{vt.url}/domains/tawuhoju.com").status_code
        rejected = vt.rejections[KEY]["hourly"]
    assert statuses == [200, 200, 200, 429]
    assert after_hour == 200
    assert rejected == 1


def test_quota_daily_resets_at_midnight(free_vt, api, clock):
    free_vt.set_used(KEY, daily=500)
    blocked = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    clock.set(datetime(2026, 1, 5, 23, 59, 59, tzinfo=UTC))
    last_second = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    clock.set(datetime(2026, 1, 6, 0, 0, 0, tzinfo=UTC))
    midnight = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    assert blocked.status_code == 429
    assert last_second.status_code == 429
    assert midnight.status_code == 200
    assert free_vt.rejections[KEY]["daily"] == 2
    assert free_vt.quota_used(KEY)["daily"] == 1


def test_quota_monthly_resets_on_first(free_vt, api, clock):
    free_vt.set_used(KEY, monthly=15500)
    clock.set(datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC))
    next_day = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    clock.set(datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC))
    new_month = api.get(f"{free_vt.url}/files/{DLL_MD5}")
    assert next_day.status_code == 429
    assert new_month.status_code == 200
    assert free_vt.rejections[KEY]["monthly"] == 1


def test_overall_quotas_shape_and_cost(free_vt, api):
    for _ in range(5):
        api.get(f"{free_vt.url}/files/{DLL_MD5}")
    response = api.get(f"{free_vt.url}/users/{KEY}/overall_quotas")
    data = response.json()["data"]
    assert response.status_code == 200
    assert data["api_requests_daily"] == {"user": {"allowed": 500, "used": 4}}
    assert data["api_requests_hourly"] == {"user": {"allowed": 240, "used": 4}}
    assert data["api_requests_monthly"] == {"user": {"allowed": 15500, "used": 4}}
    assert "api_requests_minute" not in data
    assert "attributes" not in data
    assert free_vt.quota_used(KEY)["daily"] == 4


def test_overall_quotas_other_key_forbidden(free_vt, api):
    response = api.get(f"{free_vt.url}/users/someone-else/overall_quotas")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ForbiddenError"


# ---- gzip ----------------------------------------------------------------------------------


def _raw_get(url: str, encoding: str) -> requests.Response:
    """GET without letting requests decode the body, so the sent encoding is visible."""
    headers = {"x-apikey": KEY, "Accept-Encoding": encoding}
    return requests.get(url, headers=headers, stream=True)


def test_gzip_for_found_and_not_found(clock):
    with VirusTotalSimulator(clock, keys={KEY: UNLIMITED}, synthesize=False) as vt:
        found = _raw_get(f"{vt.url}/files/{DLL_MD5}", "gzip, deflate")
        missing = _raw_get(f"{vt.url}/files/{'0' * 64}", "gzip")
        plain = _raw_get(f"{vt.url}/files/{DLL_MD5}", "identity")
        found_body = found.raw.read(decode_content=False)
    assert found.headers["Content-Encoding"] == "gzip"
    assert found_body[:2] == b"\x1f\x8b"
    assert missing.headers["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in plain.headers


def test_gzip_never_for_429(free_vt):
    for _ in range(4):
        _raw_get(f"{free_vt.url}/files/{DLL_MD5}", "gzip").close()
    response = _raw_get(f"{free_vt.url}/files/{DLL_MD5}", "gzip")
    body = response.raw.read(decode_content=False)
    assert response.status_code == 429
    assert "Content-Encoding" not in response.headers
    assert json.loads(body)["error"]["code"] == "QuotaExceededError"


# ---- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "TransientError"), (504, "DeadlineExceededError"), (403, "ForbiddenError")],
)
def test_fault_status_codes(vt, api, status, code):
    vt.faults.inject("status", status=status, path=r"^/api/v3/files/")
    response = api.get(f"{vt.url}/files/{DLL_MD5}")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_fault_status_costs_no_quota(free_vt, api):
    free_vt.faults.inject("status", status=503, times=1)
    api.get(f"{free_vt.url}/files/{DLL_MD5}")
    assert free_vt.quota_used(KEY)["minute"] == 0


def test_fault_reset_after_commit_costs_quota(free_vt, api):
    free_vt.faults.inject("reset_after_commit", times=1)
    with pytest.raises(requests.ConnectionError):
        api.get(f"{free_vt.url}/files/{DLL_MD5}")
    assert free_vt.quota_used(KEY)["minute"] == 1
    assert free_vt.faults.fired["reset_after_commit"] == 1


def test_fault_truncated_is_plain(vt):
    vt.faults.inject("truncated")
    response = _raw_get(f"{vt.url}/files/{DLL_MD5}", "gzip")
    body = response.raw.read(decode_content=False)
    assert "Content-Encoding" not in response.headers
    assert body.startswith(b'{"data": {')
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


# ---- running_simulators and the demo seed ----------------------------------------------------


def test_running_simulators_with_demo_seed(clock):
    with running_simulators(clock) as (tq, vt):
        summary = seed_demo(tq, vt)
        stale = tq.indicator(summary["stale_verdict"])
        indicator_count = len(tq.indicators())
        not_found = requests.get(
            f"{vt.url}/files/01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b",
            headers={"x-apikey": KEY},
        )
    assert 45 <= summary["total"] <= 55
    assert summary["total"] == indicator_count
    kinds = {"file", "url", "domain", "ip_address", "skipped", "invalid", "unsupported"}
    verdicts = [a["value"] for a in stale["attributes"] if a["name"] == "VirusTotal Verdict"]
    assert set(summary["ids"]) == kinds
    assert verdicts == ["harmless"]
    assert not_found.status_code == 404
