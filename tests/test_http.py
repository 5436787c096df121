"""Tests of the shared HTTP plumbing against a scripted server on 127.0.0.1."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from loopback_http import LoopbackServer, Reply, refused_url
from tqvt_sync import http
from tqvt_sync.errors import ConfigError, ResponseFormatError

CANARY = "canary-secret-5f1d"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def session() -> Iterator[requests.Session]:
    built = http.build_session(verify=True, user_agent="tqvt-test/1")
    yield built
    built.close()


def fetch(session: requests.Session, server: LoopbackServer, path: str,
          timeout: float = 5.0) -> requests.Response:
    return session.get(f"{server.url}{path}?token={CANARY}", stream=True,
                       allow_redirects=False, timeout=timeout)


# check_url

@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://threatq.example.com/", "https://threatq.example.com"),
        ("https://www.virustotal.com/api/v3", "https://www.virustotal.com/api/v3"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.200.1.9", "http://127.200.1.9"),
        ("http://[::1]:9000/api/v3/", "http://[::1]:9000/api/v3"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("http://LOCALHOST", "http://LOCALHOST"),
    ],
)
def test_check_url_accepts(url: str, expected: str) -> None:
    assert http.check_url(url, "THREATQ_URL") == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://10.0.0.1",
        "http://[::2]",
        "http://localhost.example.com",
        "ftp://127.0.0.1",
        "https://",
        "threatq.example.com",
        "",
        "https://threatq.example.com:99999",
        "https://threatq.example.com/?page=1",
    ],
)
def test_check_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        http.check_url(url, "THREATQ_URL")
    assert "THREATQ_URL" in str(caught.value)
    assert "https://threatq.example.com" in str(caught.value)


def test_check_url_hides_userinfo_password() -> None:
    with pytest.raises(ConfigError) as caught:
        http.check_url(f"https://analyst:{CANARY}@threatq.example.com", "THREATQ_URL")
    assert CANARY not in str(caught.value)


def test_check_url_names_vt_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        http.check_url("http://www.virustotal.com/api/v3", "VT_API_URL")
    assert "VT_API_URL" in str(caught.value)
    assert "https://www.virustotal.com/api/v3" in str(caught.value)


# backoff_delay and retry_after_seconds

class _Extreme:
    """A random source that always returns the low or the high end of the range."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (5000, 60.0)]
)
def test_backoff_ceiling_doubles_then_caps(attempt: int, ceiling: float) -> None:
    assert http.backoff_delay(attempt, rng=_Extreme(high=True)) == ceiling


def test_backoff_full_jitter_reaches_zero() -> None:
    assert http.backoff_delay(4, rng=_Extreme(high=False)) == 0.0


def test_backoff_draws_within_ceiling() -> None:
    rng = random.Random(3)
    delays = [http.backoff_delay(3, base=0.5, cap=10.0, rng=rng) for _ in range(200)]
    assert min(delays) >= 0.0
    assert max(delays) <= 2.0
    assert len(set(delays)) > 100


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        http.backoff_delay(0)


def response_with(headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = 503
    response.headers.update(headers)
    return response


def test_retry_after_seconds_form() -> None:
    assert http.retry_after_seconds(response_with({"Retry-After": "7"})) == 7.0


def test_retry_after_date_header_reference() -> None:
    sent = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    headers = {
        "Date": format_datetime(sent, usegmt=True),
        "Retry-After": format_datetime(sent + timedelta(seconds=30), usegmt=True),
    }
    assert http.retry_after_seconds(response_with(headers)) == 30.0


def test_retry_after_date_without_header() -> None:
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    headers = {"Retry-After": format_datetime(now + timedelta(seconds=90), usegmt=True)}
    assert http.retry_after_seconds(response_with(headers), now=now) == 90.0


def test_retry_after_past_date_is_zero() -> None:
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    headers = {"Retry-After": format_datetime(now - timedelta(hours=1), usegmt=True)}
    assert http.retry_after_seconds(response_with(headers), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "Mon, 99 Foo 2026"])
def test_retry_after_invalid_is_none(value: str | None) -> None:
    headers = {} if value is None else {"Retry-After": value}
    assert http.retry_after_seconds(response_with(headers)) is None


# safe_path

@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"https://www.virustotal.com/api/v3/users/{CANARY}/overall_quotas?x=1",
         "/api/v3/users/***/overall_quotas"),
        (f"/users/{CANARY}", "/users/***"),
        ("https://tq.example.com/api/users/current", "/api/users/current"),
        (f"https://tq.example.com/api/indicators/query?token={CANARY}", "/api/indicators/query"),
        ("https://tq.example.com", "/"),
    ],
)
def test_safe_path(url: str, expected: str) -> None:
    assert http.safe_path(url) == expected


# build_session

def test_session_ignores_environment(server: LoopbackServer, session: requests.Session,
                                     monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login analyst password {CANARY}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", refused_url())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.script("GET", "/ping", Reply(200, {"ok": True}))

    response = fetch(session, server, "/ping")

    assert response.status_code == 200
    assert "authorization" not in server.requests[0].headers


def test_session_sends_user_agent_and_gzip(server: LoopbackServer,
                                           session: requests.Session) -> None:
    server.script("GET", "/ping", Reply(200, {"ok": True}))
    http.read_body(fetch(session, server, "/ping"), "Test")
    assert server.requests[0].headers["user-agent"] == "tqvt-test/1"
    assert server.requests[0].headers["accept-encoding"] == "gzip"


def test_session_pool_size_and_no_retries() -> None:
    built = http.build_session(verify=True, pool_size=7, user_agent="t")
    adapter = built.get_adapter("https://threatq.example.com")
    assert built.trust_env is False
    assert adapter._pool_maxsize == 7
    assert adapter.max_retries.total == 0


def test_session_no_resend_after_drop(server: LoopbackServer,
                                            session: requests.Session) -> None:
    server.script("POST", "/write", Reply(action="close"))
    with pytest.raises(requests.ConnectionError):
        session.post(f"{server.url}/write", json={"a": 1}, stream=True, allow_redirects=False)
    assert len(server.requests) == 1


def test_session_keeps_connection_alive(server: LoopbackServer,
                                        session: requests.Session) -> None:
    server.script("GET", "/ping", Reply(200, {"ok": True}))
    first = fetch(session, server, "/ping")
    http.read_body(first, "Test")
    second = fetch(session, server, "/ping")
    http.read_body(second, "Test")
    assert server.requests[0].client_port == server.requests[1].client_port


# read_body and decode_json

def test_decode_plain_json(server: LoopbackServer, session: requests.Session) -> None:
    server.script("GET", "/doc", Reply(200, {"data": {"id": "x"}}))
    assert http.decode_json(fetch(session, server, "/doc"), "Test") == {"data": {"id": "x"}}


def test_decode_gzip_json(server: LoopbackServer, session: requests.Session) -> None:
    server.script("GET", "/doc", Reply(200, {"data": [1, 2]}, gzip=True))
    assert http.decode_json(fetch(session, server, "/doc"), "Test") == {"data": [1, 2]}


def test_decode_claimed_gzip_but_plain(server: LoopbackServer,
                                       session: requests.Session) -> None:
    server.script("GET", "/doc", Reply(200, {"data": 1}, headers={"Content-Encoding": "gzip"}))
    assert http.decode_json(fetch(session, server, "/doc"), "Test") == {"data": 1}


def test_decode_gzip_without_header(server: LoopbackServer, session: requests.Session) -> None:
    server.script("GET", "/doc", Reply(200, gzip.compress(b'{"data": 2}')))
    assert http.decode_json(fetch(session, server, "/doc"), "Test") == {"data": 2}


@pytest.mark.parametrize(
    ("reply", "phrase"),
    [
        (Reply(502, "<html><body>Bad gateway</body></html>",
               headers={"Content-Type": "text/html"}), "HTML page"),
        (Reply(200, "<!DOCTYPE html><p>login</p>"), "HTML page"),
        (Reply(200, '{"data": {"id": "abc", "attri'), "not valid JSON"),
        (Reply(200, "not json at all"), "not valid JSON"),
        (Reply(200, b"\xff\xfe\x00garbage"), "JSON"),
        (Reply(200, b""), "empty body"),
        (Reply(200, [1, 2, 3]), "JSON list instead of an object"),
    ],
)
def test_decode_rejects_bad_body(server: LoopbackServer, session: requests.Session,
                                 reply: Reply, phrase: str) -> None:
    server.script("GET", "/api/v3/files/abc", reply)
    with pytest.raises(ResponseFormatError) as caught:
        http.decode_json(fetch(session, server, "/api/v3/files/abc"), "VirusTotal")
    message = str(caught.value)
    assert phrase in message
    assert "VirusTotal" in message
    assert f"HTTP {reply.status}" in message
    assert "/api/v3/files/abc" in message
    assert CANARY not in message
    assert caught.value.__cause__ is None


def test_decode_body_cut_off(server: LoopbackServer, session: requests.Session) -> None:
    server.script("GET", "/doc", Reply(200, '{"data": {"id": "abc"', action="truncate"))
    with pytest.raises(http.BodyReadError) as caught:
        http.decode_json(fetch(session, server, "/doc"), "ThreatQ")
    assert "cut off" in str(caught.value)
    assert caught.value.status == 200


def test_decode_gzip_cut_off(server: LoopbackServer, session: requests.Session) -> None:
    partial = gzip.compress(b'{"data": "' + b"x" * 2000 + b'"}')[:40]
    server.script("GET", "/doc", Reply(200, partial, headers={"Content-Encoding": "gzip"}))
    with pytest.raises(http.BodyReadError) as caught:
        http.decode_json(fetch(session, server, "/doc"), "ThreatQ")
    assert "gzip" in str(caught.value)


# describe_transport_error

def capture_error(call) -> requests.RequestException:
    with pytest.raises(requests.RequestException) as caught:
        call()
    return caught.value


def test_transport_refused_not_sent(session: requests.Session) -> None:
    error = capture_error(lambda: session.get(f"{refused_url()}/users/{CANARY}", timeout=2))
    failure = http.describe_transport_error(error)
    assert failure.maybe_sent is False
    assert "Connection refused" in failure.description
    assert CANARY not in failure.description


def test_transport_timeout_maybe_sent(server: LoopbackServer,
                                      session: requests.Session) -> None:
    server.script("GET", "/slow", Reply(action="hang"))
    error = capture_error(lambda: fetch(session, server, "/slow", timeout=0.2))
    failure = http.describe_transport_error(error)
    assert failure.maybe_sent is True
    assert "timed out" in failure.description
    assert CANARY not in failure.description


def test_transport_drop_maybe_sent(server: LoopbackServer, session: requests.Session) -> None:
    server.script("GET", "/drop", Reply(action="close"))
    error = capture_error(lambda: fetch(session, server, "/drop"))
    failure = http.describe_transport_error(error)
    assert failure.maybe_sent is True
    assert "connection closed" in failure.description
    assert CANARY not in failure.description
