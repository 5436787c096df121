"""ThreatQ OAuth credentials and the access token cache.

ThreatQ issues tokens from ``POST /api/token`` with one of two grants:

- password grant: ``grant_type=password``, ``client_id``, ``email`` and
  ``password`` in a JSON body;
- client-credentials grant: ``POST /api/token?grant_type=client_credentials``
  with HTTP Basic authentication as ``client_id:client_secret``.

The token response carries ``expires_in`` in seconds. The cache refreshes the
token ahead of that expiry, so that a long page walk does not hit a 401.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from requests.auth import HTTPBasicAuth

from tqvt_sync.errors import ConfigError, ResponseFormatError

TOKEN_PATH = "/api/token"
# Used when a token response has no usable expires_in.
# NOTE: ThreatQ does not document a default token lifetime; 30 minutes is an assumption.
DEFAULT_TOKEN_LIFETIME = 1800.0
MAX_REFRESH_MARGIN = 60.0


@dataclass(frozen=True)
class TokenRequest:
    """The parts of a ``POST /api/token`` request for one grant."""

    params: dict[str, str]
    json_body: dict[str, str] | None = field(repr=False)
    auth: HTTPBasicAuth | None = field(repr=False)


@dataclass(frozen=True)
class Credentials:
    """ThreatQ credentials for one of the two grants. The secrets are left out of ``repr``."""

    client_id: str
    email: str | None = None
    password: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)

    @property
    def grant_type(self) -> str:
        """``client_credentials`` when a client secret is set, else ``password``."""
        return "client_credentials" if self.client_secret else "password"

    @property
    def settings_hint(self) -> str:
        """The settings a user should check when ThreatQ rejects these credentials."""
        if self.grant_type == "client_credentials":
            return "THREATQ_CLIENT_ID and THREATQ_CLIENT_SECRET"
        return "THREATQ_CLIENT_ID, THREATQ_EMAIL and THREATQ_PASSWORD"

    def secrets(self) -> list[str]:
        """Return the secret values, to redact them from any text shown to users."""
        return [value for value in (self.password, self.client_secret) if value]

    def token_request(self) -> TokenRequest:
        """Return the query parameters, body and auth of a token request."""
        if self.grant_type == "client_credentials":
            auth = HTTPBasicAuth(self.client_id, self.client_secret or "")
            return TokenRequest({"grant_type": "client_credentials"}, None, auth)
        body = {
            "grant_type": "password",
            "client_id": self.client_id,
            "email": self.email or "",
            "password": self.password or "",
        }
        return TokenRequest({}, body, None)


def make_credentials(
    *,
    client_id: str | None,
    email: str | None = None,
    password: str | None = None,
    client_secret: str | None = None,
) -> Credentials:
    """Validate the credential settings and return Credentials.

    A client secret selects the client-credentials grant, and email and password
    are then ignored. Raises ConfigError naming the missing setting.
    """
    if not client_id:
        raise ConfigError(
            "THREATQ_CLIENT_ID is missing; find the OAuth client id under "
            "Settings > OAuth Management in ThreatQ"
        )
    if client_secret:
        return Credentials(client_id=client_id, client_secret=client_secret)
    if not email and not password:
        raise ConfigError(
            "ThreatQ credentials are missing; set THREATQ_EMAIL and THREATQ_PASSWORD, "
            "or THREATQ_CLIENT_SECRET for the client-credentials grant"
        )
    if not email:
        raise ConfigError("THREATQ_EMAIL is missing; it is needed with THREATQ_PASSWORD")
    if not password:
        raise ConfigError("THREATQ_PASSWORD is missing; it is needed with THREATQ_EMAIL")
    return Credentials(client_id=client_id, email=email, password=password)


@dataclass(frozen=True)
class Token:
    """An access token with the times at which it expires and should be replaced."""

    access_token: str = field(repr=False)
    expires_at: datetime
    refresh_at: datetime


def refresh_margin(lifetime: float) -> float:
    """Return how many seconds before expiry a token is replaced.

    60 s, or half the lifetime when the token lives less than two minutes.
    """
    return min(MAX_REFRESH_MARGIN, lifetime / 2)


def parse_token(body: dict[str, Any], received_at: datetime) -> Token:
    """Build a Token from a ``/api/token`` response body received at ``received_at``.

    Raises ResponseFormatError when ``access_token`` is missing or could not be
    sent in a header. A missing or invalid ``expires_in`` falls back to
    DEFAULT_TOKEN_LIFETIME.
    """
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not _is_header_safe(access_token):
        raise ResponseFormatError(
            f"ThreatQ returned a token response without a usable access_token for {TOKEN_PATH}",
            service="ThreatQ",
            path=TOKEN_PATH,
        )
    lifetime = _lifetime(body.get("expires_in"))
    expires_at = received_at + timedelta(seconds=lifetime)
    refresh_at = expires_at - timedelta(seconds=refresh_margin(lifetime))
    return Token(access_token=access_token, expires_at=expires_at, refresh_at=refresh_at)


def _lifetime(value: object) -> float:
    """Return ``expires_in`` as seconds. ThreatQ may send a number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return DEFAULT_TOKEN_LIFETIME
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_TOKEN_LIFETIME
    return seconds if seconds > 0 else DEFAULT_TOKEN_LIFETIME


def _is_header_safe(token: str) -> bool:
    """Return whether ``token`` is non-empty visible ASCII, as a Bearer header needs."""
    return bool(token) and all(33 <= ord(char) <= 126 for char in token)


class TokenCache:
    """The current access token, shared by the threads of one client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: Token | None = None
        # Held while a new token is fetched, so that concurrent callers wait for one fetch.
        self.refresh_lock = threading.Lock()

    def valid_token(self, now: datetime) -> str | None:
        """Return the access token unless it is missing or due for refresh at ``now``."""
        with self._lock:
            token = self._token
        if token is None or now >= token.refresh_at:
            return None
        return token.access_token

    def store(self, token: Token) -> None:
        """Keep ``token`` as the current one."""
        with self._lock:
            self._token = token

    def discard(self, access_token: str) -> None:
        """Forget ``access_token`` if it is still current, after ThreatQ rejected it."""
        with self._lock:
            if self._token is not None and self._token.access_token == access_token:
                self._token = None

    @property
    def expires_at(self) -> datetime | None:
        """Expiry of the current token, or None when there is none."""
        with self._lock:
            return self._token.expires_at if self._token else None
