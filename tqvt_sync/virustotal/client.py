"""VirusTotal API v3 client: one HTTP request per object lookup, no retries inside.

Errors are classified by HTTP status first and by ``error.code`` second, so a
renamed or unknown code still lands in the class of its status:

    status  code                       result
    200     -                          VtResponse(found=True), or ResponseFormatError
    400     NotAvailableYet            RetriableApiError
    400     any other                  PermanentApiError
    401     any                        AuthenticationError (check VT_API_KEY)
    403     any                        PermanentApiError (this object only)
    404     any                        VtResponse(found=False) from fetch_object
    408     any                        RetriableApiError
    424     any                        RetriableApiError
    429     QuotaExceededError         VtQuotaError
    429     any other                  RetriableApiError
    5xx     any                        RetriableApiError
    3xx     any                        ConfigError (check VT_API_URL)
    other   any                        PermanentApiError

Connection errors and timeouts raise RetriableApiError, or its subclass
NotSentError when the request cannot have reached VirusTotal. The caller decides
when to try again; VirusTotal sends no rate-limit headers, so pacing is local.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

import requests

from tqvt_sync import __version__
from tqvt_sync.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    NotSentError,
    PermanentApiError,
    ResponseFormatError,
    RetriableApiError,
    TqvtError,
)
from tqvt_sync.http import (
    BodyReadError,
    build_session,
    check_url,
    decode_json,
    describe_transport_error,
    read_body,
    response_path,
    retry_after_seconds,
    safe_path,
)
from tqvt_sync.logs import escape

SERVICE = "VirusTotal"
USER_AGENT = f"tqvt/{__version__}; gzip"
QUOTA_EXCEEDED = "QuotaExceededError"
# VirusTotal sent "NotAvailableYetError" instead of "NotAvailableYet" by mistake in
# August 2024, so both codes mean "retry later".
NOT_AVAILABLE_YET = frozenset({"NotAvailableYet", "NotAvailableYetError"})
COLLECTIONS = {"file": "files", "url": "urls", "domain": "domains", "ip_address": "ip_addresses"}
_MAX_ERROR_TEXT = 300


class VtQuotaError(RetriableApiError):
    """HTTP 429 ``QuotaExceededError``: a minute, hourly, daily or monthly quota is spent.

    VirusTotal sends the same code for all three, so ``fetch_overall_quotas`` must be
    read to find out which one is spent.
    """

    def __init__(self, message: str, *, path: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, service=SERVICE, status=429, path=path, code=QUOTA_EXCEEDED,
                         retry_after=retry_after)


@dataclass(frozen=True)
class VtResponse:
    """The result of one object lookup.

    Attributes:
        found: False when VirusTotal returned 404, which is a valid result.
        data: the ``data`` object (``id``, ``type``, ``attributes``) when found.
    """

    found: bool
    data: dict | None


class VirusTotalClient:
    """A VirusTotal API v3 client for one API key.

    Each call makes exactly one HTTP request. ``session`` is used as is when
    given; the API key and the other headers are sent with every request.
    Raises ConfigError for an invalid base URL or API key.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        verify: bool | str = True,
        pool_size: int = 10,
    ) -> None:
        self.base_url = check_url(base_url, "VT_API_URL")
        key = (api_key or "").strip()
        if not key:
            raise ConfigError(
                "VT_API_KEY is missing; copy the API key from your VirusTotal profile"
            )
        if not all(33 <= ord(char) <= 126 for char in key):
            raise ConfigError(
                "VT_API_KEY contains spaces or characters that cannot be sent in a header; "
                "copy the key again from your VirusTotal profile"
            )
        self._api_key = key
        self._timeout = timeout
        self._verify = verify
        self._session = session or build_session(
            verify=verify, pool_size=pool_size, user_agent=USER_AGENT
        )
        self._headers = {
            "x-apikey": key,
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "User-Agent": USER_AGENT,
            "x-tool": "tqvt",
        }

    def __repr__(self) -> str:
        return f"VirusTotalClient(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self._session.close()

    def __enter__(self) -> VirusTotalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch_object(self, kind: str, identifier: str) -> VtResponse:
        """Fetch one file, URL, domain or IP address object with one HTTP request.

        ``kind`` is ``file``, ``url``, ``domain`` or ``ip_address``; ``identifier``
        is the normalised path identifier. A 404 returns ``VtResponse(found=False)``.
        Other failures raise as in the module table.
        """
        collection = COLLECTIONS.get(kind)
        if collection is None:
            expected = ", ".join(sorted(COLLECTIONS))
            raise ValueError(f"unknown VirusTotal kind {kind!r}; expected one of {expected}")
        response, body = self._get(f"/{collection}/{quote(identifier, safe=':')}")
        status = response.status_code
        if status == 404:
            return VtResponse(found=False, data=None)
        if status != 200:
            raise self._error(response, body)
        data = decode_json(response, SERVICE, body=body).get("data")
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("id"), str)
            or not isinstance(data.get("attributes"), dict)
        ):
            path = response_path(response)
            raise ResponseFormatError(
                f"VirusTotal returned HTTP 200 for {path} without data.id and data.attributes",
                service=SERVICE, status=status, path=path,
            )
        return VtResponse(found=True, data=data)

    def fetch_overall_quotas(self) -> dict:
        """Fetch ``/users/{key}/overall_quotas`` (free of quota) and return its ``data`` object.

        Each entry is ``{name: {"user": {"allowed", "used"}, "group": {...}}}``.
        """
        response, body = self._get(f"/users/{quote(self._api_key, safe='')}/overall_quotas")
        if response.status_code != 200:
            raise self._error(response, body)
        data = decode_json(response, SERVICE, body=body).get("data")
        if not isinstance(data, dict):
            path = response_path(response)
            raise ResponseFormatError(
                f"VirusTotal returned HTTP 200 for {path} without a data object",
                service=SERVICE, status=200, path=path,
            )
        return data

    def _get(self, path: str) -> tuple[requests.Response, bytes]:
        """Send one GET and read its body. A missing response raises RetriableApiError."""
        failure = None
        try:
            response = self._session.get(
                self.base_url + path, headers=self._headers, timeout=self._timeout,
                verify=self._verify, stream=True, allow_redirects=False,
            )
        except requests.RequestException as exc:
            failure = describe_transport_error(exc)
        if failure is not None:
            # The text of a requests exception contains the URL, and the quota URL
            # contains the API key, so the error is raised outside the except block:
            # neither __cause__ nor __context__ refers to the requests exception.
            if failure.certificate_error:
                raise ConfigError(
                    f"VirusTotal: {failure.description}; check the system CA certificates "
                    "and VT_API_URL"
                )
            error = RetriableApiError if failure.maybe_sent else NotSentError
            raise error(
                f"VirusTotal GET {safe_path(path)} failed: {failure.description}",
                service=SERVICE, path=safe_path(path),
            )
        try:
            return response, read_body(response, SERVICE)
        except BodyReadError:
            if response.status_code == 200:
                raise
            # An error status is classified by status alone when its body was cut off.
            return response, b""

    def _error(self, response: requests.Response, body: bytes) -> TqvtError:
        code, message = _error_fields(body)
        message = message.replace(self._api_key, "***")
        return error_for_status(
            response.status_code,
            code,
            path=response_path(response),
            message=escape(message, limit=_MAX_ERROR_TEXT) if message else "",
            retry_after=retry_after_seconds(response),
        )


def error_for_status(
    status: int,
    code: str | None,
    *,
    path: str,
    message: str = "",
    retry_after: float | None = None,
) -> TqvtError:
    """Return the error for a non-200 VirusTotal response: status first, code second.

    ``message`` must already be escaped and free of the API key. A 404 maps to
    PermanentApiError here, because ``fetch_object`` handles it as "not found" before.
    """
    label = f"HTTP {status} {code}" if code else f"HTTP {status}"
    detail = f": {message}" if message else ""
    text = f"VirusTotal returned {label} for {path}{detail}"

    def api_error(error_class: type[ApiError], summary: str = text) -> ApiError:
        return error_class(summary, service=SERVICE, status=status, path=path, code=code,
                           retry_after=retry_after)

    if 300 <= status < 400:
        return ConfigError(
            f"VirusTotal redirected {path} ({label}); set VT_API_URL to the API base URL, "
            "for example https://www.virustotal.com/api/v3"
        )
    if status == 401:
        return api_error(AuthenticationError,
                         f"VirusTotal rejected the API key ({label}); check VT_API_KEY")
    if status == 429 and code == QUOTA_EXCEEDED:
        return VtQuotaError(f"VirusTotal quota exceeded ({label}) for {path}", path=path,
                            retry_after=retry_after)
    if status == 400 and code in NOT_AVAILABLE_YET:
        return api_error(RetriableApiError)
    if status in (408, 424, 429) or status >= 500:
        return api_error(RetriableApiError)
    return api_error(PermanentApiError)


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """Return ``error.code`` and ``error.message`` of an error body, tolerating any body."""
    try:
        document = json.loads(body)
    except ValueError:
        return None, ""
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    message = error.get("message")
    return (code if isinstance(code, str) and code else None,
            message if isinstance(message, str) else "")
