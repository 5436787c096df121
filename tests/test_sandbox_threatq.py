"""The ThreatQ simulator over real HTTP: tokens, queries, attribute writes, consume, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tqvt_sync.clock import FakeClock
from tqvt_sync.sandbox import ThreatQSimulator

PASSWORD_GRANT = {
    "grant_type": "password",
    "client_id": "tqvt-demo-client",
    "email": "analyst@example.com",
    "password": "demo-password",
}


@pytest.fixture
def tq(clock: FakeClock) -> Iterator[ThreatQSimulator]:
    with ThreatQSimulator(clock) as simulator:
        yield simulator


@pytest.fixture
def api(tq: ThreatQSimulator) -> Iterator[requests.Session]:
    session = requests.Session()
    token = session.post(f"{tq.url}/api/token", json=PASSWORD_GRANT).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    yield session
    session.close()


def _query(tq, api, body=None, **params) -> requests.Response:
    return api.post(f"{tq.url}/api/indicators/query", params=params, json=body or {})


def _ids(response: requests.Response) -> list[int]:
    return [item["id"] for item in response.json()["data"]]


# ---- tokens ---------------------------------------------------------------------------


def test_token_password_grant_json(tq):
    response = requests.post(f"{tq.url}/api/token", json=PASSWORD_GRANT)
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 1800
    assert body["access_token"]
    assert body["refresh_token"]


def test_token_password_grant_query_and_form(tq):
    params = {"grant_type": "password", "client_id": "tqvt-demo-client"}
    form = {"email": "analyst@example.com", "password": "demo-password"}
    response = requests.post(f"{tq.url}/api/token", params=params, data=form)
    assert response.status_code == 200


def test_token_bad_password(tq):
    response = requests.post(f"{tq.url}/api/token", json={**PASSWORD_GRANT, "password": "x"})
    assert response.status_code == 400
    assert isinstance(response.json()["errors"], list)


def test_token_client_credentials_basic(tq):
    url = f"{tq.url}/api/token?grant_type=client_credentials"
    good = requests.post(url, auth=("tqvt-demo-client", "demo-secret"))
    bad = requests.post(url, auth=("tqvt-demo-client", "wrong"))
    assert good.status_code == 200
    assert bad.status_code == 400


def test_token_refresh_is_single_use(tq):
    first = requests.post(f"{tq.url}/api/token", json=PASSWORD_GRANT).json()
    grant = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    second = requests.post(f"{tq.url}/api/token", params=grant)
    again = requests.post(f"{tq.url}/api/token", params=grant)
    old_token = {"Authorization": f"Bearer {first['access_token']}"}
    new_token = {"Authorization": f"Bearer {second.json()['access_token']}"}
    assert second.status_code == 200
    assert again.status_code == 400
    assert requests.get(f"{tq.url}/api/indicator/types", headers=old_token).status_code == 401
    assert requests.get(f"{tq.url}/api/indicator/types", headers=new_token).status_code == 200


def test_token_expires_on_clock(tq, api, clock):
    clock.advance(1799)
    before = api.get(f"{tq.url}/api/indicator/types")
    clock.advance(1)
    after = api.get(f"{tq.url}/api/indicator/types")
    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json() == {"errors": ["Unauthenticated."]}


def test_token_missing_or_revoked(tq, api):
    assert requests.get(f"{tq.url}/api/indicator/types").status_code == 401
    tq.revoke_tokens()
    assert api.get(f"{tq.url}/api/indicator/types").status_code == 401


# ---- queries --------------------------------------------------------------------------


def test_query_offset_paging(tq, api):
    created = [tq.add_indicator(f"host{i}.example", "FQDN") for i in range(7)]
    pages = [_query(tq, api, limit=3, offset=offset, sort="id") for offset in (0, 3, 6)]
    assert [page.json()["total"] for page in pages] == [7, 7, 7]
    assert sum((_ids(page) for page in pages), []) == created
    assert pages[1].json()["offset"] == 3


def test_query_limit_clamped(clock):
    with ThreatQSimulator(clock, max_page_size=5) as tq:
        for i in range(8):
            tq.add_indicator(f"10.0.0.{i}", "IP Address")
        token = requests.post(f"{tq.url}/api/token", json=PASSWORD_GRANT).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        response = requests.post(
            f"{tq.url}/api/indicators/query", params={"limit": 100}, json={}, headers=headers
        )
    assert response.json()["limit"] == 5
    assert len(response.json()["data"]) == 5


def test_query_equality_and_groups(tq, api):
    fqdn = tq.add_indicator("a.example", "FQDN")
    ip = tq.add_indicator("8.8.8.8", "IP Address", status="Review")
    tq.add_indicator("b.example", "FQDN", status="Expired")
    either = {"criteria": {"+or": [{"value": "a.example"}, {"type_name": "IP Address"}]}}
    nested = {
        "filters": {
            "+or": [{"+and": [{"type_name": "FQDN"}, {"status_name": "Active"}]}, {"id": ip}]
        }
    }
    assert _ids(_query(tq, api, either)) == [fqdn, ip]
    assert _ids(_query(tq, api, nested)) == [fqdn, ip]
    assert _ids(_query(tq, api, {"criteria": {"status_name": "Review"}})) == [ip]


def test_query_comparisons(tq, api, clock):
    old = tq.add_indicator("old.example", "FQDN", score=2, updated_at="2026-01-01 00:00:00")
    new = tq.add_indicator("new.example", "FQDN", score=8)
    since = {"filters": {"updated_at": {"+gte": "2026-01-05 00:00:00"}}}
    scored = {"filters": {"score": {"+gte": 5, "+lte": 10}}}
    after_id = {"filters": {"id": {"+gt": old}}}
    assert _ids(_query(tq, api, since)) == [new]
    assert _ids(_query(tq, api, scored)) == [new]
    assert _ids(_query(tq, api, after_id)) == [new]


def test_query_unknown_field_rejected(tq, api):
    response = _query(tq, api, {"criteria": {"colour": "red"}})
    assert response.status_code == 400
    assert "errors" in response.json()


def test_query_updated_at_filter_rejected(clock):
    with ThreatQSimulator(clock, reject_updated_at_filter=True) as tq:
        token = requests.post(f"{tq.url}/api/token", json=PASSWORD_GRANT).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        body = {"filters": {"updated_at": {"+gte": "2026-01-01 00:00:00"}}}
        rejected = requests.post(f"{tq.url}/api/indicators/query", json=body, headers=headers)
        sorted_only = requests.post(
            f"{tq.url}/api/indicators/query",
            params={"sort": "updated_at"},
            json={},
            headers=headers,
        )
    assert rejected.status_code == 400
    assert rejected.json()["errors"]
    assert sorted_only.status_code == 200


def test_query_sort_descending_then_id(tq, api):
    first = tq.add_indicator("a.example", "FQDN", updated_at="2026-01-02 00:00:00")
    second = tq.add_indicator("b.example", "FQDN", updated_at="2026-01-03 00:00:00")
    third = tq.add_indicator("c.example", "FQDN", updated_at="2026-01-03 00:00:00")
    assert _ids(_query(tq, api, sort="-updated_at,id")) == [second, third, first]
    assert _ids(_query(tq, api, sort="updated_at,-id")) == [first, third, second]


def test_query_with_relations(tq, api):
    tq.add_indicator("a.example", "FQDN", attributes=[("Description", "x", "Analyst")])
    plain = _query(tq, api).json()["data"][0]
    full = _query(tq, api, **{"with": "attributes,sources"}).json()["data"][0]
    assert "attributes" not in plain
    assert plain["type"] == {"id": 7, "name": "FQDN", "class": "network"}
    assert plain["status"]["name"] == "Active"
    assert full["attributes"][0]["name"] == "Description"
    assert full["sources"][0]["name"] == "tqvt sandbox"


def test_collection_cursor_walk(tq, api):
    members = [tq.add_indicator(f"10.1.0.{i}", "IP Address") for i in range(5)]
    tq.add_indicator("10.9.9.9", "IP Address")
    tq.add_collection("watch", members)
    seen, mark, calls = [], "*", 0
    while True:
        params = {"limit": 2, "sort": "updated_at", "cursorMark": mark}
        body = api.get(f"{tq.url}/api/indicators/query/hash/watch", params=params).json()
        calls += 1
        seen += [item["id"] for item in body["data"]]
        if body["nextCursorMark"] == mark:
            break
        mark = body["nextCursorMark"]
    assert seen == members
    assert calls == 4
    assert body["data"] == []


def test_collection_items_carry_attributes(tq, api):
    member = tq.add_indicator("a.example", "FQDN", attributes=[("Description", "x")])
    tq.add_collection("watch", [member])
    params = {"cursorMark": "*"}
    item = api.get(f"{tq.url}/api/indicators/query/hash/watch", params=params).json()["data"][0]
    assert item["attributes"][0]["value"] == "x"


def test_collection_unknown(tq, api):
    response = api.get(f"{tq.url}/api/indicators/query/hash/nope", params={"cursorMark": "*"})
    assert response.status_code == 404
    assert "errors" in response.json()


def test_get_indicator_with_score(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address", score=3)
    found = api.get(f"{tq.url}/api/indicators/{indicator_id}", params={"with": "score"})
    missing = api.get(f"{tq.url}/api/indicators/999")
    assert found.json()["data"]["score"]["generated_score"] == 3.0
    assert found.json()["data"]["score"]["manual_score"] is None
    assert missing.status_code == 404


def test_types_list_and_filter(tq, api):
    everything = api.get(f"{tq.url}/api/indicator/types").json()
    ip_only = api.get(f"{tq.url}/api/indicator/types", params={"name": "IP Address"}).json()
    assert everything["total"] == 12
    assert ip_only["data"][0]["id"] == 15


# ---- attribute and score writes --------------------------------------------------------


def test_attribute_duplicates_are_kept(tq, api, clock):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    body = {"name": "VirusTotal Verdict", "value": "harmless", "sources": [{"name": "VirusTotal"}]}
    url = f"{tq.url}/api/indicators/{indicator_id}/attributes"
    first = api.post(url, json=body)
    second = api.post(url, json=body)
    created = first.json()["data"][0]
    assert first.status_code == 201
    assert first.json()["total"] == 1
    assert created["sources"][0]["name"] == "VirusTotal"
    assert created["id"] != second.json()["data"][0]["id"]
    assert created["attribute_id"] == second.json()["data"][0]["attribute_id"]
    assert len(tq.attributes_of(indicator_id)) == 2
    assert api.get(url).json()["total"] == 2


def test_attribute_array_body(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    body = [{"name": "A", "value": "1"}, {"name": "B", "value": 2}]
    response = api.post(f"{tq.url}/api/indicators/{indicator_id}/attributes", json=body)
    assert response.json()["total"] == 2
    assert [a["value"] for a in tq.attributes_of(indicator_id)] == ["1", "2"]
    assert tq.attributes_of(indicator_id)[0]["sources"][0]["name"] == "analyst@example.com"


def test_attribute_update_and_delete(tq, api):
    first = tq.add_indicator("8.8.8.8", "IP Address", attributes=[("Verdict", "old")])
    other = tq.add_indicator("1.1.1.1", "IP Address")
    attribute_id = tq.attributes_of(first)[0]["id"]
    url = f"{tq.url}/api/indicators/{first}/attributes/{attribute_id}"
    updated = api.put(url, json={"value": "new"})
    wrong_owner = api.put(
        f"{tq.url}/api/indicators/{other}/attributes/{attribute_id}", json={"value": "x"}
    )
    deleted = api.delete(url)
    assert updated.json()["data"]["value"] == "new"
    assert wrong_owner.status_code == 404
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert tq.attributes_of(first) == []
    assert api.delete(url).status_code == 404


def test_attribute_write_bumps_touched_only(tq, api, clock):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    clock.advance(60)
    api.post(f"{tq.url}/api/indicators/{indicator_id}/attributes", json={"name": "A", "value": "1"})
    indicator = tq.indicator(indicator_id)
    assert indicator["updated_at"] == "2026-01-05 12:00:00"
    assert indicator["touched_at"] == "2026-01-05 12:01:00"


def test_attribute_invalid_body(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    url = f"{tq.url}/api/indicators/{indicator_id}/attributes"
    assert api.post(url, json={"name": "A"}).status_code == 400
    assert (
        api.post(url, data="{not json", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    assert tq.attributes_of(indicator_id) == []


def test_score_manual_update(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address", score=2)
    url = f"{tq.url}/api/indicator/{indicator_id}/scores"
    response = api.put(url, json={"manual_score": 9})
    assert response.json()["data"]["manual_score"] == 9
    assert response.json()["data"]["indicator_id"] == indicator_id
    assert tq.indicator(indicator_id)["score"] == 9
    assert api.put(url, json={"manual_score": 11}).status_code == 400


def test_update_indicator_bumps_updated_at(tq, clock):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    clock.advance(30)
    tq.update_indicator(indicator_id, status="Expired")
    indicator = tq.indicator(indicator_id)
    assert indicator["updated_at"] == "2026-01-05 12:00:30"
    assert indicator["status"]["name"] == "Expired"


# ---- consume ----------------------------------------------------------------------------


def test_consume_appends_and_creates(tq, api):
    existing = tq.add_indicator("8.8.8.8", "IP Address", attributes=[("Verdict", "harmless")])
    body = [
        {"value": "new.example", "type": {"name": "FQDN"}, "status": {"name": "Active"}},
        {
            "value": "8.8.8.8",
            "type": {"name": "IP Address"},
            "sources": [{"name": "VirusTotal"}],
            "attributes": [
                {"name": "Verdict", "value": "harmless", "sources": [{"name": "VirusTotal"}]}
            ],
        },
        {"value": "8.8.8.8", "type_id": 7},
    ]
    response = api.post(f"{tq.url}/api/indicators/consume", json=body)
    data = response.json()["data"]
    assert response.status_code == 200
    assert [item["value"] for item in data] == ["new.example", "8.8.8.8", "8.8.8.8"]
    assert data[1]["id"] == existing
    assert data[2]["id"] not in (existing, data[0]["id"])
    assert [a["value"] for a in tq.attributes_of(existing)] == ["harmless", "harmless"]
    assert len(tq.indicators()) == 3


def test_consume_unknown_type_writes_nothing(tq, api):
    body = [
        {"value": "a.example", "type": {"name": "FQDN"}},
        {"value": "x", "type": {"name": "Nope"}},
    ]
    response = api.post(f"{tq.url}/api/indicators/consume", json=body)
    assert response.status_code == 400
    assert tq.indicators() == []


# ---- request record ---------------------------------------------------------------------


def test_requests_record(tq, api, clock):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    clock.advance(5)
    api.post(f"{tq.url}/api/indicators/{indicator_id}/attributes", json={"name": "A", "value": "1"})
    record = tq.requests[-1]
    assert tq.requests.count() == 2
    assert tq.requests.count("POST", "/api/indicators/") == 1
    assert tq.requests.count("POST", "/api/token") == 1
    assert record.status == 201
    assert record.body_size > 0
    assert record.time == clock.now()


def test_keep_alive_reuses_connection(tq, api):
    for _ in range(3):
        api.get(f"{tq.url}/api/indicator/types")
    assert len(tq._connections) == 1


# ---- faults -------------------------------------------------------------------------------


def test_fault_status(tq, api):
    tq.faults.inject("status", status=503, path=r"^/api/indicator/types$", times=1)
    failed = api.get(f"{tq.url}/api/indicator/types")
    recovered = api.get(f"{tq.url}/api/indicator/types")
    assert failed.status_code == 503
    assert isinstance(failed.json()["errors"], list)
    assert recovered.status_code == 200
    assert tq.faults.fired["status"] == 1


def test_fault_html(tq, api):
    tq.faults.inject("html")
    response = api.get(f"{tq.url}/api/indicator/types")
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert "<html>" in response.text


def test_fault_truncated(tq, api):
    tq.faults.inject("truncated", times=1)
    cut = api.get(f"{tq.url}/api/indicator/types")
    whole = api.get(f"{tq.url}/api/indicator/types")
    assert cut.status_code == 200
    assert int(cut.headers["Content-Length"]) == len(cut.content)
    assert len(cut.content) == len(whole.content) // 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)


def test_fault_malformed_skips_write(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    tq.faults.inject("malformed", method="POST")
    response = api.post(
        f"{tq.url}/api/indicators/{indicator_id}/attributes", json={"name": "A", "value": "1"}
    )
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert tq.attributes_of(indicator_id) == []


def test_fault_reset_before_skips_write(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    tq.faults.inject("reset_before", method="POST", times=1)
    with pytest.raises(requests.ConnectionError):
        api.post(
            f"{tq.url}/api/indicators/{indicator_id}/attributes", json={"name": "A", "value": "1"}
        )
    assert tq.attributes_of(indicator_id) == []
    assert tq.requests[-1].status is None


def test_fault_reset_after_commit_applies_write(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    tq.faults.inject("reset_after_commit", method="POST", path="/attributes$", times=1)
    with pytest.raises(requests.ConnectionError):
        api.post(
            f"{tq.url}/api/indicators/{indicator_id}/attributes", json={"name": "A", "value": "1"}
        )
    assert [a["value"] for a in tq.attributes_of(indicator_id)] == ["1"]
    assert api.get(f"{tq.url}/api/indicators/{indicator_id}/attributes").json()["total"] == 1


def test_fault_stall_after_commit(tq, api):
    indicator_id = tq.add_indicator("8.8.8.8", "IP Address")
    tq.faults.inject("stall_after_commit", method="PUT", seconds=0.5, times=1)
    url = f"{tq.url}/api/indicator/{indicator_id}/scores"
    with pytest.raises(requests.Timeout):
        api.put(url, json={"manual_score": 5}, timeout=0.1)
    assert tq.indicator(indicator_id)["manual_score"] == 5


def test_fault_latency(tq, api):
    tq.faults.inject("latency", seconds=0.2, times=1)
    tq.faults.inject("status", status=500, times=1)
    started = time.monotonic()
    response = api.get(f"{tq.url}/api/indicator/types")
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 500
    assert tq.faults.fired["latency"] == 1


def test_fault_rate_is_seeded(clock):
    outcomes = []
    for _ in range(2):
        with ThreatQSimulator(clock) as tq:
            tq.faults.inject("status", status=503, rate=0.5)
            statuses = [
                requests.get(f"{tq.url}/api/indicator/types").status_code for _ in range(20)
            ]
        outcomes.append(statuses)
    assert outcomes[0] == outcomes[1]
    assert 503 in outcomes[0]
    assert 401 in outcomes[0]


def test_fault_clear(tq, api):
    tq.faults.inject("status", status=503)
    tq.faults.clear()
    assert api.get(f"{tq.url}/api/indicator/types").status_code == 200


def test_fault_unknown_kind(tq):
    with pytest.raises(ValueError):
        tq.faults.inject("explode")


def test_simulator_latency(tq, api):
    tq.latency = 0.1
    started = time.monotonic()
    api.get(f"{tq.url}/api/indicator/types")
    assert time.monotonic() - started >= 0.1
