"""Sending requests to ThreatQ: tokens, retries, and mapping of statuses to errors.

Two retry policies apply:

- Reads (the token request, ``POST /api/indicators/query``, every GET) are
  retried on connection errors, timeouts, cut-off bodies, 429 and 5xx. The
  delay is capped exponential backoff with full jitter, or ``Retry-After``
  when sent. After ``max_attempts`` attempts ServiceUnavailableError is raised.
- Writes (POST, PUT and DELETE of attributes and scores, ``consume``) are sent
  once. When the outcome cannot be known (timeout or reset after sending, 5xx
  other than 503, a 2xx body that cannot be read), OutcomeUnknownError tells
  the caller to read the indicator back before sending again. A connection
  that failed before the request went out raises RetriableApiError.

Both send a request once more after a 401, with a new token, because a 401
means ThreatQ did nothing with the request.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from tqvt_sync import __version__
from tqvt_sync.clock import Clock, SystemClock
from tqvt_sync.errors import (
    AuthenticationError,
    ConfigError,
    OutcomeUnknownError,
    PermanentApiError,
    ResponseFormatError,
    RetriableApiError,
    ServiceUnavailableError,
    TqvtError,
)
from tqvt_sync.http import (
    BodyReadError,
    RandomSource,
    TransportFailure,
    backoff_delay,
    build_session,
    check_url,
    decode_json,
    describe_transport_error,
    read_body,
    retry_after_seconds,
)
from tqvt_sync.logs import escape
from tqvt_sync.threatq.auth import TOKEN_PATH, Credentials, Token, TokenCache, parse_token

logger = logging.getLogger(__name__)

SERVICE = "ThreatQ"
USER_AGENT = f"tqvt/{__version__}"
# A Retry-After longer than this ends the retries at once instead of blocking a stage.
MAX_RETRY_AFTER = 300.0
_MAX_ERROR_TEXT = 300

# A send returns the response and its body, or None as body when the body was cut off.
Exchange = tuple[requests.Response, bytes | None]


class _NoResponse(Exception):
    def __init__(self, failure: TransportFailure) -> None:
        super().__init__(failure.description)
        self.failure = failure


class Transport:
    """Authenticated requests to one ThreatQ instance with the read and write policies.

    ``clock`` is used for token expiry and for retry sleeps. When ``session`` is
    given, it is used as is, and ``verify`` is still passed with every request.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        max_attempts: int = 5,
        rng: RandomSource = random,
        pool_size: int = 10,
    ) -> None:
        self.base_url = check_url(base_url, "THREATQ_URL")
        self._host = urlsplit(self.base_url).netloc
        self._credentials = credentials
        if isinstance(verify, str) and not os.path.isfile(verify):
            raise ConfigError(
                f"THREATQ_CA_BUNDLE {escape(verify)} is not a file; set it to a PEM file "
                "of CA certificates, for example /etc/ssl/certs/threatq-ca.pem"
            )
        self._verify = verify
        self._timeout = timeout
        self._clock = clock or SystemClock()
        self._max_attempts = max(1, max_attempts)
        self._rng = rng
        self._session = session or build_session(
            verify=verify, pool_size=pool_size, user_agent=USER_AGENT
        )
        self._tokens = TokenCache()

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self._session.close()

    def fetch_token(self) -> Token:
        """Fetch and keep a new access token. The returned Token hides it from ``repr``.

        Raises AuthenticationError naming the credential settings when ThreatQ
        rejects them (HTTP 400, 401 or 403 on ``/api/token``).
        """
        request = self._credentials.token_request()
        response, body = self._send_with_retries(
            "POST", TOKEN_PATH, params=request.params, json_body=request.json_body,
            auth=request.auth,
        )
        status = response.status_code
        if status in (400, 401, 403):
            text = self._error_text(body)
            detail = f": {text}" if text else ""
            raise AuthenticationError(
                f"ThreatQ rejected the credentials (HTTP {status} for {TOKEN_PATH}{detail}); "
                f"check {self._credentials.settings_hint}",
                service=SERVICE, status=status, path=TOKEN_PATH,
            )
        if not 200 <= status < 300:
            raise self._error_for_status("POST", TOKEN_PATH, response, body)
        token = parse_token(decode_json(response, SERVICE, body=body), self._clock.now())
        self._tokens.store(token)
        logger.info("ThreatQ token fetched with the %s grant, expires at %s",
                    self._credentials.grant_type, token.expires_at.isoformat())
        return token

    def _access_token(self) -> str:
        token = self._tokens.valid_token(self._clock.now())
        if token is not None:
            return token
        with self._tokens.refresh_lock:
            token = self._tokens.valid_token(self._clock.now())
            if token is None:
                token = self.fetch_token().access_token
        return token

    # Sending

    def read(self, method: str, path: str, *, params: dict | None = None,
             json_body: Any = None) -> dict:
        """Send a read with retries and return the decoded JSON object of its 2xx response."""
        response, body = self._authorized(method, path, params, json_body, self._send_with_retries)
        if 200 <= response.status_code < 300 and body is not None:
            return decode_json(response, SERVICE, body=body)
        raise self._error_for_status(method, path, response, body)

    def write(self, method: str, path: str, *, json_body: Any = None) -> dict | None:
        """Send a write once and return its decoded JSON object, or None for an empty 2xx."""
        response, body = self._authorized(method, path, None, json_body, self._send_once)
        status = response.status_code
        if 200 <= status < 300:
            return self._write_result(method, path, response, body)
        if status in (429, 503):
            raise RetriableApiError(
                f"ThreatQ declined {method} {path} with HTTP {status} before processing it; "
                "send it again later",
                service=SERVICE, status=status, path=path,
                retry_after=retry_after_seconds(response),
            )
        if status >= 500:
            raise self._outcome_unknown(method, path, f"HTTP {status}", status)
        raise self._error_for_status(method, path, response, body)

    def _write_result(self, method: str, path: str, response: requests.Response,
                      body: bytes | None) -> dict | None:
        if body is None:
            raise self._outcome_unknown(method, path, "the response body was cut off",
                                        response.status_code)
        if response.status_code == 204 or not body.strip():
            return None
        try:
            return decode_json(response, SERVICE, body=body)
        except ResponseFormatError as exc:
            raise self._outcome_unknown(method, path, str(exc), response.status_code) from None

    def _authorized(self, method: str, path: str, params: dict | None, json_body: Any,
                    sender: Callable[..., Exchange]) -> Exchange:
        """Send with a bearer token, and once more with a new token after a 401."""
        for attempt in (1, 2):
            token = self._access_token()
            response, body = sender(method, path, params=params, json_body=json_body, bearer=token)
            if response.status_code != 401:
                return response, body
            self._tokens.discard(token)
            if attempt == 1:
                logger.info("ThreatQ returned 401 for %s %s; sending again with a new token",
                            method, escape(path))
        raise AuthenticationError(
            f"ThreatQ rejected a fresh access token for {method} {path} (HTTP 401); "
            f"check {self._credentials.settings_hint} and the permissions of that account",
            service=SERVICE, status=401, path=path,
        )

    def _send_with_retries(self, method: str, path: str, **options: Any) -> Exchange:
        """Send a read, retrying connection errors, timeouts, cut-off bodies, 429 and 5xx."""
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            status: int | None = None
            try:
                response, body = self._send(method, path, **options)
            except _NoResponse as exc:
                if exc.failure.certificate_error:
                    raise self._certificate_error(exc.failure) from None
                reason = exc.failure.description
            else:
                status = response.status_code
                if body is not None and not _is_retriable_read_status(status):
                    return response, body
                reason = f"HTTP {status}" + (" with a body cut off" if body is None else "")
                retry_after = retry_after_seconds(response)
            if attempt >= self._max_attempts:
                raise self._unavailable(method, path, status, reason, attempt)
            delay = self._retry_delay(method, path, attempt, retry_after)
            logger.warning("ThreatQ %s %s failed (%s), attempt %d of %d; retrying in %.1f s",
                           method, escape(path), reason, attempt, self._max_attempts, delay)
            self._clock.sleep(delay)

    def _send_once(self, method: str, path: str, **options: Any) -> Exchange:
        """Send a write without retrying, raising OutcomeUnknownError or RetriableApiError
        when no response arrived."""
        try:
            return self._send(method, path, **options)
        except _NoResponse as exc:
            failure = exc.failure
        if failure.certificate_error:
            raise self._certificate_error(failure)
        if failure.maybe_sent:
            raise self._outcome_unknown(method, path, failure.description, None)
        raise RetriableApiError(
            f"ThreatQ {method} {path} was not sent: {failure.description}",
            service=SERVICE, path=path,
        )

    def _send(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
              auth: Any = None, bearer: str | None = None) -> Exchange:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            response = self._session.request(
                method, self.base_url + path, params=params, json=json_body, auth=auth,
                headers=headers, timeout=self._timeout, verify=self._verify,
                stream=True, allow_redirects=False,
            )
        except requests.RequestException as exc:
            # The text of a requests exception contains the full URL, so it is not chained.
            raise _NoResponse(describe_transport_error(exc)) from None
        try:
            return response, read_body(response, SERVICE)
        except BodyReadError:
            return response, None

    # Errors

    def _retry_delay(self, method: str, path: str, attempt: int,
                     retry_after: float | None) -> float:
        if retry_after is None:
            return backoff_delay(attempt, rng=self._rng)
        if retry_after > MAX_RETRY_AFTER:
            raise ServiceUnavailableError(
                f"ThreatQ asked to wait {retry_after:.0f} s before retrying {method} {path}; "
                "rerun later"
            )
        return retry_after

    def _unavailable(self, method: str, path: str, status: int | None, reason: str,
                     attempts: int) -> ServiceUnavailableError:
        if status is None:
            return ServiceUnavailableError(
                f"ThreatQ at {self._host} could not be reached for {method} {path} after "
                f"{attempts} attempts ({reason}); check THREATQ_URL and the network, then "
                "rerun (nothing is lost)"
            )
        return ServiceUnavailableError(
            f"ThreatQ kept failing for {method} {path} after {attempts} attempts "
            f"(last: {reason}); nothing is lost, rerun later"
        )

    def _outcome_unknown(self, method: str, path: str, reason: str,
                         status: int | None) -> OutcomeUnknownError:
        return OutcomeUnknownError(
            f"ThreatQ {method} {path} was sent but its outcome is unknown ({reason}); "
            "read the indicator back before sending it again",
            service=SERVICE, status=status, path=path,
        )

    def _certificate_error(self, failure: TransportFailure) -> ConfigError:
        return ConfigError(
            f"ThreatQ at {self._host}: {failure.description}; set THREATQ_CA_BUNDLE to the CA "
            "bundle that signed its certificate, for example /etc/ssl/certs/threatq-ca.pem"
        )

    def _error_for_status(self, method: str, path: str, response: requests.Response,
                          body: bytes | None) -> TqvtError:
        status = response.status_code
        text = self._error_text(body)
        detail = f": {text}" if text else ""
        options: dict[str, Any] = {"service": SERVICE, "status": status, "path": path}
        if 300 <= status < 400:
            return ConfigError(
                f"ThreatQ redirected {method} {path} (HTTP {status}); set THREATQ_URL to the "
                "address that serves the API, for example https://threatq.example.com"
            )
        if status == 403:
            return PermanentApiError(
                f"ThreatQ denied {method} {path} (HTTP 403){detail}; check the permissions "
                f"of the account in {self._credentials.settings_hint}", **options)
        if status == 404:
            return PermanentApiError(f"ThreatQ found nothing at {method} {path} (HTTP 404){detail}",
                                     **options)
        if status == 429 or status >= 500:
            return RetriableApiError(f"ThreatQ returned HTTP {status} for {method} {path}{detail}",
                                     **options)
        if 200 <= status < 300:
            return ResponseFormatError(
                f"ThreatQ returned HTTP {status} for {method} {path} with a body cut off",
                **options,
            )
        return PermanentApiError(f"ThreatQ rejected {method} {path} with HTTP {status}{detail}",
                                 **options)

    def _error_text(self, body: bytes | None) -> str:
        """Return the error messages of a ThreatQ error body, escaped and without secrets."""
        messages = _error_messages(body or b"")
        text = "; ".join(messages)
        for secret in self._credentials.secrets():
            text = text.replace(secret, "***")
        return escape(text, limit=_MAX_ERROR_TEXT) if text else ""


def _error_messages(body: bytes) -> list[str]:
    """Collect messages from both ThreatQ error shapes and from OAuth error fields.

    The shapes are ``{"errors": ["msg", ["part", "part"]]}`` and
    ``{"data": {"errors": {"field": ["msg"]}}}``.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    messages: list[str] = []
    data = document.get("data")
    for errors in (document.get("errors"), data.get("errors") if isinstance(data, dict) else None):
        _flatten(errors, "", messages)
    for key in ("error_description", "message", "error"):
        if isinstance(document.get(key), str) and not messages:
            messages.append(document[key])
    return messages


def _flatten(value: object, prefix: str, messages: list[str]) -> None:
    if isinstance(value, str):
        messages.append(f"{prefix}{value}")
    elif isinstance(value, list):
        for item in value:
            _flatten(item, prefix, messages)
    elif isinstance(value, dict):
        for field_name, item in value.items():
            _flatten(item, f"{field_name}: ", messages)


def _is_retriable_read_status(status: int) -> bool:
    return status == 429 or status >= 500
