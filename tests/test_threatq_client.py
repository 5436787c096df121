"""Tests of the ThreatQ client against a scripted server on 127.0.0.1, time on a FakeClock."""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Iterator

import pytest

from loopback_http import LoopbackServer, Reply, make_self_signed_certificate, refused_url
from tqvt_sync.clock import FakeClock
from tqvt_sync.errors import (
    AuthenticationError,
    ConfigError,
    OutcomeUnknownError,
    PermanentApiError,
    ResponseFormatError,
    RetriableApiError,
    ServiceUnavailableError,
)
from tqvt_sync.threatq import Page, ThreatQClient

PASSWORD = "canary-password-8e2a"
SECRET = "canary-secret-77c0"
QUERY = "/api/indicators/query"
ATTRIBUTES = "/api/indicators/42/attributes"
TYPES = "/api/indicator/types"


def token_reply(access_token: str = "tok-1", expires_in: int = 1800) -> Reply:
    return Reply(200, {"access_token": access_token, "token_type": "bearer",
                       "expires_in": expires_in, "refresh_token": "refresh-1"})


def page_reply(ids: list[int], total: int | None = None) -> Reply:
    items = [{"id": i, "value": f"10.0.0.{i}", "type": {"name": "IP Address"}} for i in ids]
    return Reply(200, {"total": total if total is not None else len(ids), "data": items})


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        running.script("POST", "/api/token", token_reply())
        yield running


@pytest.fixture
def client(server: LoopbackServer, clock: FakeClock) -> Iterator[ThreatQClient]:
    with make_client(server.url, clock) as built:
        yield built


def make_client(url: str, clock: FakeClock, **options) -> ThreatQClient:
    credentials = {"client_id": "tqvt-client", "email": "analyst@example.com",
                   "password": PASSWORD}
    credentials.update(options.pop("credentials", {}))
    return ThreatQClient(url, clock=clock, timeout=0.3, rng=random.Random(7),
                         **credentials, **options)


def bearer_tokens(server: LoopbackServer, path: str) -> list[str]:
    return [seen.headers.get("authorization", "") for seen in server.seen(path=path)]


# Authentication

def test_password_grant_body(server: LoopbackServer, client: ThreatQClient) -> None:
    client.fetch_token()
    request = server.seen("POST", "/api/token")[0]
    assert request.json() == {"grant_type": "password", "client_id": "tqvt-client",
                              "email": "analyst@example.com", "password": PASSWORD}
    assert "authorization" not in request.headers


def test_client_credentials_basic_header(server: LoopbackServer, clock: FakeClock) -> None:
    with make_client(server.url, clock, credentials={"client_secret": SECRET}) as client:
        client.fetch_token()
    request = server.seen("POST", "/api/token")[0]
    expected = base64.b64encode(f"tqvt-client:{SECRET}".encode()).decode()
    assert request.query == {"grant_type": ["client_credentials"]}
    assert request.headers["authorization"] == f"Basic {expected}"
    assert PASSWORD.encode() not in request.body


def test_token_sent_as_bearer(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", TYPES, Reply(200, {"data": [{"id": 1, "name": "MD5"}]}))
    assert client.fetch_indicator_types() == [{"id": 1, "name": "MD5"}]
    assert bearer_tokens(server, TYPES) == ["Bearer tok-1"]


def test_token_refreshed_before_expiry(server: LoopbackServer, client: ThreatQClient,
                                       clock: FakeClock) -> None:
    server.script("POST", "/api/token", token_reply("tok-1"), token_reply("tok-2"))
    server.script("GET", TYPES, Reply(200, {"data": []}))
    client.fetch_indicator_types()
    clock.advance(1800 - 61)
    client.fetch_indicator_types()
    clock.advance(1)
    client.fetch_indicator_types()
    assert len(server.seen("POST", "/api/token")) == 2
    assert bearer_tokens(server, TYPES) == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


def test_short_token_refreshed_at_half_life(server: LoopbackServer, client: ThreatQClient,
                                            clock: FakeClock) -> None:
    server.script("POST", "/api/token", token_reply("tok-1", 60), token_reply("tok-2", 60))
    server.script("GET", TYPES, Reply(200, {"data": []}))
    client.fetch_indicator_types()
    clock.advance(29)
    client.fetch_indicator_types()
    clock.advance(1)
    client.fetch_indicator_types()
    assert bearer_tokens(server, TYPES) == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


def test_token_expiry_read_on_clock(client: ThreatQClient, clock: FakeClock) -> None:
    token = client.fetch_token()
    assert (token.expires_at - clock.now()).total_seconds() == 1800
    assert "tok-1" not in repr(token)


def test_one_refresh_after_401(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("POST", "/api/token", token_reply("tok-1"), token_reply("tok-2"))
    server.script("GET", TYPES, Reply(401, {"errors": ["expired"]}), Reply(200, {"data": []}))
    assert client.fetch_indicator_types() == []
    assert bearer_tokens(server, TYPES) == ["Bearer tok-1", "Bearer tok-2"]


def test_second_401_raises(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", TYPES, Reply(401, {"errors": ["denied"]}))
    with pytest.raises(AuthenticationError) as caught:
        client.fetch_indicator_types()
    assert caught.value.status == 401
    assert len(server.seen("GET", TYPES)) == 2
    assert len(server.seen("POST", "/api/token")) == 2


def test_write_resent_once_after_401(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("POST", "/api/token", token_reply("tok-1"), token_reply("tok-2"))
    server.script("PUT", f"{ATTRIBUTES}/7", Reply(401),
                  Reply(200, {"data": {"id": 7, "value": "9/70"}}))
    assert client.update_attribute(42, 7, "9/70") == {"id": 7, "value": "9/70"}
    assert bearer_tokens(server, f"{ATTRIBUTES}/7") == ["Bearer tok-1", "Bearer tok-2"]


@pytest.mark.parametrize("status", [400, 401])
def test_bad_password_names_settings(server: LoopbackServer, client: ThreatQClient,
                                     status: int) -> None:
    server.script("POST", "/api/token",
                  Reply(status, {"errors": [f"Invalid credentials for {PASSWORD}"]}))
    with pytest.raises(AuthenticationError) as caught:
        client.fetch_token()
    message = str(caught.value)
    assert "THREATQ_EMAIL" in message
    assert "THREATQ_PASSWORD" in message
    assert "Invalid credentials" in message
    assert PASSWORD not in message
    assert len(server.seen("POST", "/api/token")) == 1


def test_bad_client_secret_names_settings(server: LoopbackServer, clock: FakeClock) -> None:
    server.script("POST", "/api/token", Reply(401, {"error": "invalid_client"}))
    with make_client(server.url, clock, credentials={"client_secret": SECRET}) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.fetch_indicator_types()
    assert "THREATQ_CLIENT_ID and THREATQ_CLIENT_SECRET" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_token_without_access_token(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("POST", "/api/token", Reply(200, {"token_type": "bearer"}))
    with pytest.raises(ResponseFormatError):
        client.fetch_token()


@pytest.mark.parametrize(
    ("credentials", "setting"),
    [
        ({"client_id": None}, "THREATQ_CLIENT_ID"),
        ({"email": None, "password": None}, "THREATQ_EMAIL"),
        ({"password": None}, "THREATQ_PASSWORD"),
        ({"email": None}, "THREATQ_EMAIL"),
    ],
)
def test_missing_credentials(clock: FakeClock, credentials: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_client("http://127.0.0.1:1", clock, credentials=credentials)
    assert setting in str(caught.value)


def test_plain_http_rejected_without_traffic(clock: FakeClock) -> None:
    with pytest.raises(ConfigError) as caught:
        make_client("http://threatq.example.com", clock)
    assert "THREATQ_URL" in str(caught.value)


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[LoopbackServer, str]]:
    files = make_self_signed_certificate(tmp_path)
    if files is None:
        pytest.skip("the openssl command is not installed")
    with LoopbackServer(tls=files) as running:
        running.script("POST", "/api/token", token_reply())
        running.script("GET", TYPES, Reply(200, {"data": []}))
        yield running, str(files[0])


def test_untrusted_certificate_names_bundle(tls_server: tuple[LoopbackServer, str],
                                            clock: FakeClock) -> None:
    server, _ = tls_server
    with make_client(server.url, clock) as client:
        with pytest.raises(ConfigError) as caught:
            client.fetch_indicator_types()
    assert "certificate verification failed" in str(caught.value)
    assert "THREATQ_CA_BUNDLE" in str(caught.value)
    assert server.requests == []
    assert clock.slept == 0


def test_ca_bundle_trusts_certificate(tls_server: tuple[LoopbackServer, str],
                                      clock: FakeClock) -> None:
    server, bundle = tls_server
    with make_client(server.url, clock, verify=bundle) as client:
        assert client.fetch_indicator_types() == []
    assert len(server.seen("GET", TYPES)) == 1


def test_missing_ca_bundle(clock: FakeClock, tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_client("http://127.0.0.1:1", clock, verify=str(tmp_path / "missing.pem"))
    assert "THREATQ_CA_BUNDLE" in str(caught.value)


# Read retries

def test_read_honours_retry_after(server: LoopbackServer, client: ThreatQClient,
                                  clock: FakeClock) -> None:
    server.script("POST", QUERY, Reply(503, headers={"Retry-After": "7"}),
                  Reply(429, headers={"Retry-After": "3"}), page_reply([1, 2]))
    page = client.fetch_indicator_page(limit=500)
    assert [item["id"] for item in page.items] == [1, 2]
    assert clock.slept == 10
    assert len(server.seen("POST", QUERY)) == 3


def test_read_backoff_without_retry_after(server: LoopbackServer, client: ThreatQClient,
                                          clock: FakeClock) -> None:
    server.script("GET", TYPES, Reply(500), Reply(502, "<html>gateway</html>"),
                  Reply(200, {"data": []}))
    assert client.fetch_indicator_types() == []
    assert 0 < clock.slept <= 1 + 2


def test_read_retries_cut_off_body(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", TYPES, Reply(200, '{"data": [', action="truncate"),
                  Reply(200, {"data": [{"id": 3}]}))
    assert client.fetch_indicator_types() == [{"id": 3}]


def test_read_retries_timeout(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", TYPES, Reply(action="hang"), Reply(200, {"data": []}))
    assert client.fetch_indicator_types() == []
    assert len(server.seen("GET", TYPES)) == 2


def test_read_gives_up_after_max_attempts(server: LoopbackServer, client: ThreatQClient,
                                          clock: FakeClock) -> None:
    server.script("POST", QUERY, Reply(503))
    with pytest.raises(ServiceUnavailableError) as caught:
        client.fetch_indicator_page()
    message = str(caught.value)
    assert QUERY in message
    assert "HTTP 503" in message
    assert len(server.seen("POST", QUERY)) == 5
    assert clock.slept <= 1 + 2 + 4 + 8


def test_read_long_retry_after_stops(server: LoopbackServer, client: ThreatQClient,
                                     clock: FakeClock) -> None:
    server.script("GET", TYPES, Reply(429, headers={"Retry-After": "3600"}))
    with pytest.raises(ServiceUnavailableError) as caught:
        client.fetch_indicator_types()
    assert "3600" in str(caught.value)
    assert len(server.seen("GET", TYPES)) == 1
    assert clock.slept == 0


def test_read_retry_logged_without_secrets(server: LoopbackServer, client: ThreatQClient,
                                           caplog: pytest.LogCaptureFixture) -> None:
    server.script("GET", TYPES, Reply(503), Reply(200, {"data": []}))
    with caplog.at_level(logging.DEBUG, logger="tqvt_sync"):
        client.fetch_indicator_types()
    messages = [record.getMessage() for record in caplog.records]
    retries = [message for message in messages if "retrying" in message]
    assert len(retries) == 1
    assert TYPES in retries[0]
    assert "HTTP 503" in retries[0]
    assert "attempt 1 of 5" in retries[0]
    assert all(PASSWORD not in message for message in messages)
    assert all("tok-1" not in message for message in messages)


def test_unreachable_host_names_setting(clock: FakeClock) -> None:
    url = refused_url()
    with make_client(url, clock) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            client.fetch_indicator_types()
    message = str(caught.value)
    assert url.removeprefix("http://") in message
    assert "THREATQ_URL" in message
    assert "Connection refused" in message
    assert PASSWORD not in message
    assert clock.slept > 0


def test_read_html_page_is_format_error(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", TYPES, Reply(200, "<html>login</html>",
                                      headers={"Content-Type": "text/html"}))
    with pytest.raises(ResponseFormatError) as caught:
        client.fetch_indicator_types()
    assert "ThreatQ" in str(caught.value)
    assert TYPES in str(caught.value)


def test_redirect_not_followed(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", TYPES, Reply(302, headers={"Location": "https://elsewhere.example/"}))
    with pytest.raises(ConfigError) as caught:
        client.fetch_indicator_types()
    assert "THREATQ_URL" in str(caught.value)
    assert len(server.seen("GET", TYPES)) == 1


# Writes

@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(400, {"errors": ["value is required"]}), PermanentApiError),
        (Reply(404, {"errors": ["No indicator found"]}), PermanentApiError),
        (Reply(422, {"data": {"errors": {"name": ["must be a string"]}}}), PermanentApiError),
        (Reply(403), PermanentApiError),
        (Reply(429, headers={"Retry-After": "12"}), RetriableApiError),
        (Reply(503), RetriableApiError),
        (Reply(500), OutcomeUnknownError),
        (Reply(502), OutcomeUnknownError),
        (Reply(504), OutcomeUnknownError),
        (Reply(201, "<html>ok</html>", headers={"Content-Type": "text/html"}),
         OutcomeUnknownError),
        (Reply(201, '{"data": [{"id": 9', action="truncate"), OutcomeUnknownError),
        (Reply(action="hang"), OutcomeUnknownError),
        (Reply(action="close"), OutcomeUnknownError),
    ],
)
def test_write_sent_once(server: LoopbackServer, client: ThreatQClient, clock: FakeClock,
                         reply: Reply, expected: type) -> None:
    server.script("POST", ATTRIBUTES, reply)
    with pytest.raises(expected) as caught:
        client.create_attribute(42, "VirusTotal Verdict", "malicious")
    assert type(caught.value) is expected
    assert caught.value.__cause__ is None
    assert PASSWORD not in str(caught.value)
    assert len(server.seen("POST", ATTRIBUTES)) == 1
    assert clock.slept == 0


def test_write_429_keeps_retry_after(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("PUT", f"{ATTRIBUTES}/7", Reply(429, headers={"Retry-After": "12"}))
    with pytest.raises(RetriableApiError) as caught:
        client.update_attribute(42, 7, "x")
    assert caught.value.retry_after == 12.0


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"errors": ["Value is invalid", ["too", "long"]]}, "Value is invalid; too; long"),
        ({"data": {"errors": {"name": ["has already been taken"]}}},
         "name: has already been taken"),
        ({"errors": ["line one\nforged line"]}, "line one\\x0aforged line"),
    ],
)
def test_write_error_text_from_body(server: LoopbackServer, client: ThreatQClient,
                                    body: dict, text: str) -> None:
    server.script("POST", ATTRIBUTES, Reply(400, body))
    with pytest.raises(PermanentApiError) as caught:
        client.create_attribute(42, "VirusTotal Verdict", "malicious")
    assert text in str(caught.value)
    assert caught.value.status == 400
    assert caught.value.path == ATTRIBUTES


def test_write_refused_is_retriable(server: LoopbackServer, clock: FakeClock) -> None:
    server.script("POST", "/api/token", Reply(200, {"access_token": "tok-1", "expires_in": 900},
                                              headers={"Connection": "close"}))
    client = make_client(server.url, clock)
    client.fetch_token()
    server.stop()
    with pytest.raises(RetriableApiError) as caught:
        client.create_attribute(42, "VirusTotal Verdict", "malicious")
    assert type(caught.value) is RetriableApiError
    assert "not sent" in str(caught.value)
    client.close()


def test_create_attribute_payload(server: LoopbackServer, client: ThreatQClient) -> None:
    created = {"id": 99001, "attribute_id": 57, "name": "VirusTotal Verdict",
               "value": "malicious"}
    server.script("POST", ATTRIBUTES, Reply(201, {"total": 1, "data": [created]}))
    assert client.create_attribute(42, "VirusTotal Verdict", "malicious") == created
    assert server.seen("POST", ATTRIBUTES)[0].json() == {
        "name": "VirusTotal Verdict", "value": "malicious", "sources": [{"name": "VirusTotal"}]}


def test_create_attribute_without_id_reads_back(server: LoopbackServer,
                                                client: ThreatQClient) -> None:
    server.script("POST", ATTRIBUTES, Reply(201, {"total": 1, "data": [{"attribute_id": 57}]}))
    existing = [
        {"id": 5, "name": "VirusTotal Verdict", "value": "malicious",
         "sources": [{"name": "Analyst"}]},
        {"id": 8, "name": "VirusTotal Verdict", "value": "malicious",
         "sources": [{"name": "VirusTotal"}]},
        {"id": 9, "name": "VirusTotal Score", "value": "7", "sources": [{"name": "VirusTotal"}]},
    ]
    server.script("GET", ATTRIBUTES, Reply(200, {"total": 3, "data": existing}))
    assert client.create_attribute(42, "VirusTotal Verdict", "malicious")["id"] == 8
    assert len(server.seen("POST", ATTRIBUTES)) == 1


def test_create_attribute_missing_after_read_back(server: LoopbackServer,
                                                  client: ThreatQClient) -> None:
    server.script("POST", ATTRIBUTES, Reply(201, {"total": 1, "data": [{"attribute_id": 57}]}))
    server.script("GET", ATTRIBUTES, Reply(200, {"total": 0, "data": []}))
    with pytest.raises(OutcomeUnknownError):
        client.create_attribute(42, "VirusTotal Verdict", "malicious")


def test_delete_attribute_204(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("DELETE", f"{ATTRIBUTES}/7", Reply(204))
    assert client.delete_attribute(42, 7) is None
    assert len(server.seen("DELETE", f"{ATTRIBUTES}/7")) == 1


def test_delete_attribute_already_gone(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("DELETE", f"{ATTRIBUTES}/7", Reply(404, {"errors": ["not found"]}))
    assert client.delete_attribute(42, 7) is None


def test_update_score_payload(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("PUT", "/api/indicator/42/scores", Reply(200, {"data": {"manual_score": 7}}))
    assert client.update_score(42, 7) == {"manual_score": 7}
    assert server.seen("PUT", "/api/indicator/42/scores")[0].json() == {"manual_score": 7}


def test_update_score_range_checked(client: ThreatQClient) -> None:
    with pytest.raises(ValueError):
        client.update_score(42, 11)


def test_consume_returns_data(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("POST", "/api/indicators/consume", Reply(200, {"data": [{"id": 42}]}))
    indicators = [{"value": "10.0.0.1", "type": {"name": "IP Address"}, "attributes": []}]
    assert client.consume(indicators) == [{"id": 42}]
    assert server.seen("POST", "/api/indicators/consume")[0].json() == indicators


def test_object_id_must_be_integer(client: ThreatQClient) -> None:
    with pytest.raises(ValueError):
        client.fetch_attributes("42/../../users")  # type: ignore[arg-type]


# Paging and reads

def test_iter_indicator_pages_by_offset(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("POST", QUERY, page_reply([1, 2], 5), page_reply([3, 4], 5), page_reply([5], 5))
    criteria = {"type_name": "FQDN"}
    filters = {"updated_at": {"+gte": "2026-01-01 00:00:00"}}
    pages = list(client.iter_indicator_pages(criteria, filters, page_size=2))
    assert [len(page.items) for page in pages] == [2, 2, 1]
    requests = server.seen("POST", QUERY)
    assert [r.query["offset"] for r in requests] == [["0"], ["2"], ["4"]]
    assert requests[0].query["limit"] == ["2"]
    assert requests[0].query["sort"] == ["updated_at"]
    assert requests[0].json() == {"criteria": criteria, "filters": filters}
    assert pages[0].total == 5


def test_iter_indicator_pages_stops_on_empty(server: LoopbackServer,
                                             client: ThreatQClient) -> None:
    server.script("POST", QUERY, page_reply([1, 2]), page_reply([]))
    assert len(list(client.iter_indicator_pages(page_size=2))) == 2


def test_collection_page_cursor_mark(server: LoopbackServer, client: ThreatQClient) -> None:
    path = "/api/indicators/query/hash/abc123"
    server.script("GET", path, Reply(200, {"total": 3, "nextCursorMark": "m2",
                                           "data": [{"id": 1}]}))
    page = client.fetch_collection_page("abc123", limit=1)
    assert page == Page(items=[{"id": 1}], total=3, next_cursor_mark="m2")
    assert server.seen("GET", path)[0].query["cursorMark"] == ["*"]


def test_iter_collection_until_mark_repeats(server: LoopbackServer,
                                            client: ThreatQClient) -> None:
    path = "/api/indicators/query/hash/abc123"
    server.script("GET", path,
                  Reply(200, {"nextCursorMark": "m2", "data": [{"id": 1}]}),
                  Reply(200, {"nextCursorMark": "m3", "data": [{"id": 2}]}),
                  Reply(200, {"nextCursorMark": "m3", "data": [{"id": 3}]}))
    pages = list(client.iter_collection_pages("abc123", limit=1))
    assert [page.items[0]["id"] for page in pages] == [1, 2, 3]
    marks = [seen.query["cursorMark"][0] for seen in server.seen("GET", path)]
    assert marks == ["*", "m2", "m3"]


def test_fetch_indicator_missing(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("GET", "/api/indicators/42", Reply(404, {"errors": ["not found"]}))
    assert client.fetch_indicator(42) is None
    assert server.seen("GET", "/api/indicators/42")[0].query["with"] == ["score,attributes"]


def test_fetch_attributes_list(server: LoopbackServer, client: ThreatQClient) -> None:
    items = [{"id": 8, "name": "VirusTotal Verdict", "value": "harmless"}]
    server.script("GET", ATTRIBUTES, Reply(200, {"total": 1, "data": items}, gzip=True))
    assert client.fetch_attributes(42) == items


def test_page_without_data_list(server: LoopbackServer, client: ThreatQClient) -> None:
    server.script("POST", QUERY, Reply(200, {"total": 0}))
    with pytest.raises(ResponseFormatError):
        client.fetch_indicator_page()
