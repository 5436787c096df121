"""Tests of the VirusTotal client against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopback_http import LoopbackServer, Reply, make_self_signed_certificate, refused_url
from tqvt_sync import __version__
from tqvt_sync.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    PermanentApiError,
    ResponseFormatError,
    RetriableApiError,
)
from tqvt_sync.virustotal.client import VirusTotalClient, VtQuotaError, VtResponse

API_KEY = "canarykey0123456789abcdef0123456789abcdef0123456789abcdef01234567"
SHA256 = "01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b"
FILE_PATH = f"/api/v3/files/{SHA256}"
QUOTA_PATH = f"/api/v3/users/{API_KEY}/overall_quotas"
SAMPLES = Path(__file__).resolve().parent.parent / "tqvt_sync" / "sandbox" / "data"
NOT_FOUND = "not found"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def error_body(code: str | None) -> dict | str:
    if code is None:
        return "<html><body>upstream error</body></html>"
    return {"error": {"code": code, "message": f"{code} happened"}}


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def client(server: LoopbackServer) -> Iterator[VirusTotalClient]:
    with VirusTotalClient(f"{server.url}/api/v3", API_KEY, timeout=0.3) as built:
        yield built


def test_fetch_object_found(server: LoopbackServer, client: VirusTotalClient) -> None:
    document = sample("file-dllhijacker-cometer.json")
    server.script("GET", FILE_PATH, Reply(200, document, gzip=True))
    response = client.fetch_object("file", SHA256)
    assert response == VtResponse(found=True, data=document["data"])


def test_request_headers(server: LoopbackServer, client: VirusTotalClient) -> None:
    server.script("GET", FILE_PATH, Reply(404, error_body("NotFoundError")))
    client.fetch_object("file", SHA256)
    headers = server.seen("GET", FILE_PATH)[0].headers
    assert headers["x-apikey"] == API_KEY
    assert headers["accept-encoding"] == "gzip"
    assert f"tqvt/{__version__}; gzip" in headers["user-agent"]
    assert headers["x-tool"] == "tqvt"


@pytest.mark.parametrize(
    ("kind", "identifier", "path"),
    [
        ("url", "aHR0cDovL2V4YW1wbGUuY29tLw", "/api/v3/urls/aHR0cDovL2V4YW1wbGUuY29tLw"),
        ("domain", "xn--bcher-kva.example", "/api/v3/domains/xn--bcher-kva.example"),
        ("ip_address", "2001:db8::1", "/api/v3/ip_addresses/2001:db8::1"),
        ("ip_address", "8.8.8.8", "/api/v3/ip_addresses/8.8.8.8"),
    ],
)
def test_object_paths(server: LoopbackServer, client: VirusTotalClient, kind: str,
                      identifier: str, path: str) -> None:
    server.script("GET", path, Reply(404, error_body("NotFoundError")))
    assert client.fetch_object(kind, identifier).found is False
    assert len(server.seen("GET", path)) == 1


def test_unknown_kind(client: VirusTotalClient) -> None:
    with pytest.raises(ValueError):
        client.fetch_object("email", "a@example.com")


# Status decides first and error.code second, so an unknown code falls back to its status class.
CLASSIFICATION = [
    (400, "BadRequestError", PermanentApiError),
    (400, "InvalidArgumentError", PermanentApiError),
    (400, "NotAvailableYet", RetriableApiError),
    (400, "NotAvailableYetError", RetriableApiError),
    (400, "BrandNewError", PermanentApiError),
    (400, None, PermanentApiError),
    (401, "AuthenticationRequiredError", AuthenticationError),
    (401, "WrongCredentialsError", AuthenticationError),
    (401, "UserNotActiveError", AuthenticationError),
    (401, None, AuthenticationError),
    (403, "ForbiddenError", PermanentApiError),
    (403, None, PermanentApiError),
    (404, "NotFoundError", NOT_FOUND),
    (404, "BrandNewError", NOT_FOUND),
    (404, None, NOT_FOUND),
    (408, None, RetriableApiError),
    (409, "AlreadyExistsError", PermanentApiError),
    (413, None, PermanentApiError),
    (424, "FailedDependencyError", RetriableApiError),
    (429, "QuotaExceededError", VtQuotaError),
    (429, "TooManyRequestsError", RetriableApiError),
    (429, "BrandNewError", RetriableApiError),
    (429, None, RetriableApiError),
    (500, None, RetriableApiError),
    (500, "InternalError", RetriableApiError),
    (502, None, RetriableApiError),
    (503, "TransientError", RetriableApiError),
    (504, "DeadlineExceededError", RetriableApiError),
    (403, "QuotaExceededError", PermanentApiError),
    (302, None, ConfigError),
]


@pytest.mark.parametrize(("status", "code", "expected"), CLASSIFICATION)
def test_classification(server: LoopbackServer, client: VirusTotalClient, status: int,
                        code: str | None, expected: object) -> None:
    server.script("GET", FILE_PATH, Reply(status, error_body(code)))
    if expected == NOT_FOUND:
        assert client.fetch_object("file", SHA256) == VtResponse(found=False, data=None)
    else:
        with pytest.raises(Exception) as caught:
            client.fetch_object("file", SHA256)
        assert type(caught.value) is expected
        assert API_KEY not in str(caught.value)
        if isinstance(caught.value, ApiError):
            assert caught.value.status == status
            assert caught.value.code == code
            assert caught.value.path == FILE_PATH
    assert len(server.seen("GET", FILE_PATH)) == 1


def test_quota_error_is_retriable(server: LoopbackServer, client: VirusTotalClient) -> None:
    server.script("GET", FILE_PATH, Reply(429, sample("error-429-quota-exceeded.json")))
    with pytest.raises(RetriableApiError) as caught:
        client.fetch_object("file", SHA256)
    assert isinstance(caught.value, VtQuotaError)
    assert caught.value.code == "QuotaExceededError"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(429, {"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}}),
        Reply(429, {"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}},
              headers={"Content-Encoding": "gzip"}),
        Reply(429, {"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}},
              gzip=True),
    ],
)
def test_quota_body_any_encoding(server: LoopbackServer, client: VirusTotalClient,
                                 reply: Reply) -> None:
    server.script("GET", FILE_PATH, reply)
    with pytest.raises(VtQuotaError):
        client.fetch_object("file", SHA256)


def test_error_message_escaped(server: LoopbackServer, client: VirusTotalClient) -> None:
    body = {"error": {"code": "ForbiddenError", "message": "denied\nFORGED log line"}}
    server.script("GET", FILE_PATH, Reply(403, body))
    with pytest.raises(PermanentApiError) as caught:
        client.fetch_object("file", SHA256)
    assert "\n" not in str(caught.value)
    assert "ForbiddenError" in str(caught.value)


def test_error_message_hides_echoed_key(server: LoopbackServer,
                                        client: VirusTotalClient) -> None:
    body = {"error": {"code": "ForbiddenError", "message": f"key {API_KEY} may not do this"}}
    server.script("GET", FILE_PATH, Reply(403, body))
    with pytest.raises(PermanentApiError) as caught:
        client.fetch_object("file", SHA256)
    assert API_KEY not in str(caught.value)
    assert "***" in str(caught.value)


def test_auth_error_names_setting(server: LoopbackServer, client: VirusTotalClient) -> None:
    server.script("GET", FILE_PATH, Reply(401, error_body("WrongCredentialsError")))
    with pytest.raises(AuthenticationError) as caught:
        client.fetch_object("file", SHA256)
    assert "VT_API_KEY" in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "phrase"),
    [
        (Reply(200, "<html><body>Sign in</body></html>", headers={"Content-Type": "text/html"}),
         "HTML page"),
        (Reply(200, '{"data": {"id": "abc", "type": "file", "attributes": {"md5'),
         "not valid JSON"),
        (Reply(200, '{"data": {"id": "abc", "type": "file"', action="truncate"), "cut off"),
        (Reply(200, {"data": {"type": "file", "attributes": {}}}), "data.id"),
        (Reply(200, {"data": {"id": "abc", "type": "file"}}), "data.attributes"),
        (Reply(200, {"error": {"code": "NotFoundError"}}), "data.id"),
    ],
)
def test_bad_success_body(server: LoopbackServer, client: VirusTotalClient, reply: Reply,
                          phrase: str) -> None:
    server.script("GET", FILE_PATH, reply)
    with pytest.raises(ResponseFormatError) as caught:
        client.fetch_object("file", SHA256)
    assert phrase in str(caught.value)
    assert FILE_PATH in str(caught.value)


def test_truncated_error_body_uses_status(server: LoopbackServer,
                                          client: VirusTotalClient) -> None:
    server.script("GET", FILE_PATH, Reply(503, '{"error": {"code": "Trans', action="truncate"))
    with pytest.raises(RetriableApiError) as caught:
        client.fetch_object("file", SHA256)
    assert type(caught.value) is RetriableApiError


@pytest.mark.parametrize("action", ["hang", "close"])
def test_no_response_is_retriable(server: LoopbackServer, client: VirusTotalClient,
                                  action: str) -> None:
    server.script("GET", FILE_PATH, Reply(action=action))
    with pytest.raises(RetriableApiError) as caught:
        client.fetch_object("file", SHA256)
    assert type(caught.value) is RetriableApiError
    assert caught.value.__cause__ is None
    assert len(server.seen("GET", FILE_PATH)) == 1


def test_connection_refused_is_retriable() -> None:
    with VirusTotalClient(f"{refused_url()}/api/v3", API_KEY, timeout=1) as client:
        with pytest.raises(RetriableApiError) as caught:
            client.fetch_object("file", SHA256)
    assert "Connection refused" in str(caught.value)


def test_untrusted_certificate_is_config_error(tmp_path) -> None:
    files = make_self_signed_certificate(tmp_path)
    if files is None:
        pytest.skip("the openssl command is not installed")
    with LoopbackServer(tls=files) as server:
        with VirusTotalClient(f"{server.url}/api/v3", API_KEY, timeout=1) as client:
            with pytest.raises(ConfigError) as caught:
                client.fetch_overall_quotas()
    assert "certificate verification failed" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert server.requests == []


# overall_quotas

def test_overall_quotas_data(server: LoopbackServer, client: VirusTotalClient) -> None:
    document = sample("overall_quotas-premium-user-and-group.json")
    server.script("GET", QUOTA_PATH, Reply(200, document))
    assert client.fetch_overall_quotas() == document["data"]
    assert server.seen("GET", QUOTA_PATH)[0].headers["x-apikey"] == API_KEY


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(401, error_body("WrongCredentialsError")), AuthenticationError),
        (Reply(500, error_body(None)), RetriableApiError),
        (Reply(404, error_body("NotFoundError")), PermanentApiError),
        (Reply(200, {"quotas": {}}), ResponseFormatError),
        (Reply(200, "<html>proxy</html>"), ResponseFormatError),
        (Reply(action="close"), RetriableApiError),
    ],
)
def test_overall_quotas_errors_hide_key(server: LoopbackServer, client: VirusTotalClient,
                                        reply: Reply, expected: type) -> None:
    server.script("GET", QUOTA_PATH, reply)
    with pytest.raises(expected) as caught:
        client.fetch_overall_quotas()
    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(caught.value.args)
    assert API_KEY not in getattr(caught.value, "path", "")
    assert caught.value.__cause__ is None


def test_overall_quotas_refused_hides_key() -> None:
    with VirusTotalClient(f"{refused_url()}/api/v3", API_KEY, timeout=1) as client:
        with pytest.raises(RetriableApiError) as caught:
            client.fetch_overall_quotas()
    assert API_KEY not in str(caught.value)
    assert "/users/***/overall_quotas" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


# Configuration

@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key(key: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        VirusTotalClient("http://127.0.0.1:1/api/v3", key)
    assert "VT_API_KEY" in str(caught.value)


def test_key_with_space_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        VirusTotalClient("http://127.0.0.1:1/api/v3", "canary key")
    assert "canary" not in str(caught.value)


def test_plain_http_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        VirusTotalClient("http://www.virustotal.com/api/v3", API_KEY)
    assert "VT_API_URL" in str(caught.value)


def test_repr_hides_key(client: VirusTotalClient) -> None:
    assert API_KEY not in repr(client)
