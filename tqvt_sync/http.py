"""HTTP plumbing shared by the ThreatQ and VirusTotal clients.

Everything here keeps secrets out of messages: errors name the service, the HTTP
status and the URL path (with the VirusTotal API key in ``/users/{key}/...``
masked), never a full URL with its query string, a header or a body.

Callers send every request with ``stream=True`` and ``allow_redirects=False``,
then read the body with ``read_body``. Reading the raw bytes ourselves lets a
body that claims gzip but is plain (or the reverse) still be decoded, where
requests would raise ``ContentDecodingError`` before the caller sees the status.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import random
import ssl
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.exceptions as urllib3_errors
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tqvt_sync.errors import ConfigError, ResponseFormatError

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_EXPONENT = 62
_URL_EXAMPLES = {
    "THREATQ_URL": "https://threatq.example.com",
    "VT_API_URL": "https://www.virustotal.com/api/v3",
}
# A path segment that follows "users" is a user id or, for VirusTotal, the API key.
_USER_SEGMENT_KEEP = {"current"}


class RandomSource(Protocol):
    """A source of random numbers, such as the ``random`` module or a ``random.Random``."""

    def uniform(self, a: float, b: float) -> float: ...


def build_session(*, verify: bool | str, pool_size: int = 10, user_agent: str) -> requests.Session:
    """Build a ``requests.Session`` for one service.

    The connection pool keeps up to ``pool_size`` keep-alive connections, so that
    many threads can share the session. urllib3 retries nothing, because the
    clients decide what to retry and a write must not be resent without them.

    ``trust_env`` is off. Otherwise requests would let ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` replace the configured CA bundle, route traffic through a
    proxy named in the environment, and send credentials from ``~/.netrc`` to
    the service. NOTE: proxy variables such as ``HTTPS_PROXY`` are therefore
    ignored as well.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    session.headers["User-Agent"] = user_agent
    session.headers["Accept-Encoding"] = "gzip"
    # read=False makes urllib3 raise read errors as they are instead of wrapping them,
    # so a reset after the request went out stays distinguishable from a refused connect.
    retries = Retry(total=0, read=False, redirect=False)
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def check_url(url: str, setting_name: str) -> str:
    """Validate a service base URL and return it without a trailing slash.

    ``https`` is required unless the host is loopback (127.0.0.0/8, ::1 or
    ``localhost``), where plain ``http`` is accepted for local simulators.
    Raises ConfigError naming ``setting_name`` and an example value.
    """
    example = _URL_EXAMPLES.get(setting_name, "https://host.example.com")
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
        _ = parts.port  # urlsplit validates the port only when it is read
    except ValueError:
        raise ConfigError(f"{setting_name} is not a valid URL; for example {example}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{setting_name} must be an https URL with a host, for example {example}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{setting_name} must not contain a user name or password; "
            f"put credentials in their own settings, for example {example}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"{setting_name} must not contain a query or fragment; for example {example}"
        )
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"{setting_name} must use https (for example {example}); plain http is accepted "
            f"only for loopback hosts (127.0.0.0/8, ::1, localhost), not {host}"
        )
    return text.rstrip("/")


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` is ``localhost``, an address in 127.0.0.0/8 or ``::1``."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: RandomSource = random
) -> float:
    """Return seconds to wait after failed attempt number ``attempt`` (1 for the first).

    Capped exponential backoff with full jitter: a uniform draw between 0 and
    ``min(cap, base * 2 ** (attempt - 1))``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap, base * 2 ** min(attempt - 1, _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def retry_after_seconds(
    response: requests.Response, *, now: datetime | None = None
) -> float | None:
    """Return the delay requested by a ``Retry-After`` header, in seconds, or None.

    The header contains either a number of seconds or an HTTP date. A date is
    measured from the response's own ``Date`` header when it has one, which
    avoids clock skew, else from ``now`` (default: the system clock). A date in
    the past gives 0. A malformed header gives None.
    """
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return seconds if seconds >= 0 else None
    retry_at = _parse_http_date(value)
    if retry_at is None:
        return None
    reference = _parse_http_date(response.headers.get("Date") or "") or now or datetime.now(UTC)
    return max(0.0, (retry_at - reference).total_seconds())


def _parse_http_date(value: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def safe_path(url_or_path: str) -> str:
    """Return the path of a URL for use in messages and logs.

    Host, query string and fragment are dropped. A segment after ``users`` is
    replaced by ``***`` (``current`` excepted), because the VirusTotal quota path
    ``/users/{key}/overall_quotas`` carries the API key.
    """
    path = urlsplit(url_or_path).path or "/"
    segments = path.split("/")
    for index in range(1, len(segments)):
        previous = segments[index - 1]
        if previous == "users" and segments[index] and segments[index] not in _USER_SEGMENT_KEEP:
            segments[index] = "***"
    return "/".join(segments)


def response_path(response: requests.Response) -> str:
    """Return the masked path of the request that produced ``response``."""
    request = response.request
    return safe_path((request.url if request is not None else None) or response.url or "")


class BodyReadError(ResponseFormatError):
    """The connection broke or timed out while the response body was read."""


def read_body(response: requests.Response, service: str) -> bytes:
    """Read the whole body of a ``stream=True`` response and decompress it.

    The gzip magic number decides, not ``Content-Encoding`` alone: a body that
    claims gzip but is plain is returned as is, and a gzip body without the
    header is still decompressed. Raises BodyReadError when the connection
    breaks or times out before the body ends.
    """
    path = response_path(response)
    try:
        raw = response.raw.read(decode_content=False)
    except (urllib3_errors.HTTPError, OSError) as exc:
        response.close()
        failure = describe_transport_error(exc)
        raise BodyReadError(
            f"{service} returned HTTP {response.status_code} for {path}, but the body "
            f"was cut off: {failure.description}",
            service=service,
            status=response.status_code,
            path=path,
        ) from None
    return _decompress(raw, response, service, path)


def _decompress(raw: bytes, response: requests.Response, service: str, path: str) -> bytes:
    encoding = (response.headers.get("Content-Encoding") or "").strip().lower()
    if raw.startswith(_GZIP_MAGIC):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise BodyReadError(
                f"{service} returned HTTP {response.status_code} for {path} with a gzip "
                "body that is truncated or corrupt",
                service=service,
                status=response.status_code,
                path=path,
            ) from None
    if encoding == "deflate":
        for window in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
            try:
                return zlib.decompress(raw, window)
            except zlib.error:
                continue
    return raw


def decode_json(response: requests.Response, service: str, *, body: bytes | None = None) -> dict:
    """Decode a response body into a JSON object.

    ``body`` is the output of ``read_body``; it is read here when omitted.
    Raises ResponseFormatError naming the service, status and path when the
    body is an HTML page, empty, truncated, malformed, or not a JSON object.
    """
    if body is None:
        body = read_body(response, service)
    path = response_path(response)
    status = response.status_code
    content_type = (response.headers.get("Content-Type") or "").lower()

    def fail(what: str) -> ResponseFormatError:
        message = f"{service} returned HTTP {status} for {path} with {what}"
        return ResponseFormatError(message, service=service, status=status, path=path)

    stripped = body.strip()
    if "html" in content_type or stripped.startswith(b"<"):
        raise fail("an HTML page instead of JSON")
    if not stripped:
        raise fail("an empty body instead of JSON")
    try:
        document: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise fail(f"a body that is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except (UnicodeDecodeError, ValueError):
        raise fail("a body that is not valid UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise fail(f"a JSON {type(document).__name__} instead of an object")
    return document


@dataclass(frozen=True)
class TransportFailure:
    """A request that got no HTTP response, described without its URL.

    Attributes:
        description: a short scrubbed reason, such as ``connection failed (Connection refused)``.
        maybe_sent: False only when the failure happened before any byte of the
            request could reach the server (refused, unresolved, connect timeout,
            certificate rejected), so the server cannot have acted on it.
        certificate_error: the server's TLS certificate failed verification.
    """

    description: str
    maybe_sent: bool
    certificate_error: bool = False


def describe_transport_error(exc: BaseException) -> TransportFailure:
    """Classify an exception from requests or urllib3 without quoting its text.

    The text of these exceptions contains the full URL, query string included,
    so the description is rebuilt from the exception types and the OS error.
    """
    chain = list(_exception_chain(exc))
    strerror = next((e.strerror for e in chain if isinstance(e, OSError) and e.strerror), None)
    detail = f" ({strerror})" if strerror else ""

    for error in chain:
        if isinstance(error, ssl.SSLCertVerificationError):
            reason = error.verify_message or "certificate rejected"
            return TransportFailure(f"TLS certificate verification failed ({reason})", False, True)
    if _any_of(chain, urllib3_errors.NameResolutionError):
        return TransportFailure("the host name could not be resolved", False)
    if _any_of(chain, urllib3_errors.NewConnectionError):
        return TransportFailure(f"connection failed{detail}", False)
    if _any_of(chain, urllib3_errors.ConnectTimeoutError, requests.ConnectTimeout):
        return TransportFailure("timed out while connecting", False)
    if _any_of(chain, urllib3_errors.ReadTimeoutError, requests.ReadTimeout, TimeoutError):
        return TransportFailure("timed out waiting for the response", True)
    if _any_of(chain, urllib3_errors.SSLError, ssl.SSLError):
        return TransportFailure(f"TLS error{detail}", True)
    if _any_of(chain, urllib3_errors.ProtocolError, OSError, requests.ConnectionError):
        return TransportFailure(f"connection closed before a complete response{detail}", True)
    return TransportFailure(f"request failed ({type(exc).__name__})", True)


def _any_of(chain: list[BaseException], *types: type[BaseException]) -> bool:
    return any(isinstance(error, types) for error in chain)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and every exception reachable through causes, args and ``reason``."""
    pending = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(current.args)
        pending.extend(item for item in linked if isinstance(item, BaseException))
