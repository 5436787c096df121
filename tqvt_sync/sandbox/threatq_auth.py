"""OAuth grants and bearer tokens of the ThreatQ simulator.

``POST /api/token`` takes its fields from the query string, a JSON body or a form
body, because public ThreatQ clients use all three. Grants:

- ``password``: ``client_id``, ``email`` and ``password``;
- ``client_credentials``: HTTP Basic authentication with ``client_id:client_secret``;
- ``refresh_token``: a ``refresh_token`` issued earlier, which is used up, and the access
  token issued with it is revoked.

Bad credentials get 400 with an ``errors`` list. An expired or unknown access token
gets 401 on every other endpoint.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

from tqvt_sync.clock import Clock
from tqvt_sync.sandbox.httpserver import Request
from tqvt_sync.sandbox.threatq_query import ApiFailure


@dataclass(frozen=True)
class Credentials:
    """The one OAuth client and user that the simulator accepts."""

    client_id: str
    email: str
    password: str
    client_secret: str


@dataclass
class _AccessToken:
    identity: str
    expires_at: datetime


class TokenStore:
    """Access and refresh tokens with their grant checks; callers serialise access with a lock.

    ``identity`` is the name of the source that writes with the token: the email for
    the password grant and the client id for the client-credentials grant.
    """

    def __init__(self, clock: Clock, credentials: Credentials, lifetime: int) -> None:
        self.clock = clock
        self.credentials = credentials
        self.lifetime = lifetime
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, tuple[str, str]] = {}

    def issue(self, request: Request) -> dict:
        """Check the grant of a token request and return the token response body."""
        fields = _token_fields(request)
        grant = fields.get("grant_type")
        if grant == "password":
            identity = self._check_password(fields)
        elif grant == "client_credentials":
            identity = self._check_client_secret(request)
        elif grant == "refresh_token":
            identity = self._use_refresh_token(fields.get("refresh_token") or "")
        else:
            raise ApiFailure(400, f"Unsupported grant_type {grant!r}.")
        return self._new_token(identity)

    def authenticate(self, request: Request) -> str:
        """Return the identity behind the request's bearer token, or raise 401."""
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        entry = self._access.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or self.clock.now() >= entry.expires_at:
            raise ApiFailure(401, "Unauthenticated.")
        return entry.identity

    def revoke_all(self) -> None:
        self._access.clear()
        self._refresh.clear()

    def _check_password(self, fields: dict[str, str]) -> str:
        expected = self.credentials
        received = (fields.get("client_id"), fields.get("email"), fields.get("password"))
        if received != (expected.client_id, expected.email, expected.password):
            raise ApiFailure(400, "The client id, email or password is invalid.")
        return expected.email

    def _check_client_secret(self, request: Request) -> str:
        scheme, _, encoded = (request.header("Authorization") or "").partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        client_id, _, secret = decoded.partition(":")
        expected = (self.credentials.client_id, self.credentials.client_secret)
        if scheme.lower() != "basic" or (client_id, secret) != expected:
            raise ApiFailure(400, "Client authentication failed: invalid client id or secret.")
        return client_id

    def _use_refresh_token(self, refresh_token: str) -> str:
        entry = self._refresh.pop(refresh_token, None)
        if entry is None:
            raise ApiFailure(400, "The refresh token is invalid or was already used.")
        identity, access_token = entry
        self._access.pop(access_token, None)
        return identity

    def _new_token(self, identity: str) -> dict:
        now = self.clock.now()
        self._access = {key: token for key, token in self._access.items() if token.expires_at > now}
        access_token = secrets.token_urlsafe(32)
        refresh_token = secrets.token_urlsafe(32)
        self._access[access_token] = _AccessToken(identity, now + timedelta(seconds=self.lifetime))
        self._refresh[refresh_token] = (identity, access_token)
        return {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.lifetime,
            "refresh_token": refresh_token,
        }


def _token_fields(request: Request) -> dict[str, str]:
    """Merge the fields of a token request from the query string and a JSON or form body."""
    fields = dict(request.query)
    text = request.body.decode("utf-8", errors="replace").strip()
    if not text:
        return fields
    try:
        body = json.loads(text)
    except ValueError:
        body = dict(parse_qsl(text, keep_blank_values=True))
    if isinstance(body, dict):
        fields.update({key: str(value) for key, value in body.items() if value is not None})
    return fields
