"""A VirusTotal API v3 simulator for the tests, the benchmarks and ``tqvt demo``.

It serves the four object lookups (``/files``, ``/urls``, ``/domains``,
``/ip_addresses``) and ``/users/{key}/overall_quotas`` under ``/api/v3``:

- The API key goes in the ``x-apikey`` header. A missing key gets 401
  ``AuthenticationRequiredError`` and an unknown one 401 ``WrongCredentialsError``.
- Each accepted lookup costs one unit of every quota of its key. A lookup over a
  quota gets 429 ``QuotaExceededError``, and ``overall_quotas`` costs nothing.
- Errors are ``{"error": {"code", "message"}}``. A lookup of an unknown object gets 404
  ``NotFoundError``, and an identifier that is invalid for its kind gets 400
  ``InvalidArgumentError``.
- With ``Accept-Encoding: gzip``, 200 and 404 bodies are gzipped. A 429 body is
  always plain JSON, as VirusTotal sends it.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from urllib.parse import unquote

from tqvt_sync.clock import Clock
from tqvt_sync.sandbox.httpserver import Request, Response, SimulatorServer
from tqvt_sync.sandbox.virustotal_objects import (
    COLLECTION_KINDS,
    DATA_DIR,
    NOT_FOUND_LABELS,
    InvalidIdentifier,
    ObjectStore,
    Verdict,
    render_verdict,
    target_for,
)
from tqvt_sync.sandbox.virustotal_quota import KeyQuota, QuotaPlan

JSON_UTF8 = "application/json; charset=utf-8"
DEFAULT_API_KEY = "demo-vt-key"
_API_PREFIX = "/api/v3"

# error.code for each HTTP status, from VirusTotal's list of API errors.
# NOTE: that list names no code for 500 and 502; TransientError is this simulator's choice.
ERROR_CODES = {
    400: "BadRequestError",
    401: "AuthenticationRequiredError",
    403: "ForbiddenError",
    404: "NotFoundError",
    409: "AlreadyExistsError",
    424: "FailedDependencyError",
    429: "QuotaExceededError",
    500: "TransientError",
    502: "TransientError",
    503: "TransientError",
    504: "DeadlineExceededError",
}


def _quota_exceeded_body() -> bytes:
    document = json.loads((DATA_DIR / "error-429-quota-exceeded.json").read_text("utf-8"))
    return json.dumps(document).encode()


_QUOTA_EXCEEDED_BODY = _quota_exceeded_body()


class VirusTotalSimulator(SimulatorServer):
    """VirusTotal v3 served over HTTP on 127.0.0.1; ``url`` is "http://127.0.0.1:PORT/api/v3".

    ``keys`` maps each accepted API key to its ``QuotaPlan``. ``synthesize`` and
    ``not_found_rate`` control the responses for objects that no sample or test added
    (see ``virustotal_objects``).
    """

    url_suffix = _API_PREFIX

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        keys: dict[str, QuotaPlan] | None = None,
        synthesize: bool = True,
        not_found_rate: float = 0.15,
    ) -> None:
        super().__init__(clock)
        plans = keys if keys is not None else {DEFAULT_API_KEY: QuotaPlan()}
        self._quota_lock = threading.Lock()
        self._quotas = {key: KeyQuota(plan) for key, plan in plans.items()}
        self.objects = ObjectStore(synthesize=synthesize, not_found_rate=not_found_rate)

    # ---- Python helpers for tests and the demo -------------------------------------

    @property
    def rejections(self) -> dict[str, dict[str, int]]:
        """429 counts per key and quota name: ``sim.rejections[key]["minute"]``."""
        with self._quota_lock:
            return {key: dict(quota.rejections) for key, quota in self._quotas.items()}

    def accepted_calls(self, key: str) -> list[datetime]:
        """Return the clock times of every lookup accepted for the key."""
        with self._quota_lock:
            return list(self._quotas[key].accepted)

    def quota_used(self, key: str) -> dict[str, int]:
        """Return the calls counted now in the key's minute, hourly, daily and monthly quota."""
        with self._quota_lock:
            return self._quotas[key].used(self.clock.now())

    def set_used(self, key: str, *, daily: int | None = None, monthly: int | None = None) -> None:
        """Pre-spend quota: set the calls counted today and this month for the key."""
        with self._quota_lock:
            self._quotas[key].set_used(self.clock.now(), daily=daily, monthly=monthly)

    def add_object(self, kind: str, key: str, document: dict) -> None:
        """Serve ``document`` for lookups of ``key``; for URLs the key is the URL or its id."""
        self.objects.add(target_for(kind, key), json.dumps(document).encode())

    def add_generated(
        self,
        kind: str,
        key: str,
        *,
        malicious: int = 0,
        suspicious: int = 0,
        harmless: int = 0,
        undetected: int | None = None,
    ) -> dict:
        """Serve a sample-based document with these engine counts, and return it.

        ``undetected=None`` makes every other engine of the template undetected.
        """
        target = target_for(kind, key)
        verdict = Verdict(malicious, suspicious, harmless, undetected)
        body = render_verdict(target, verdict)
        self.objects.add(target, body)
        return json.loads(body)

    def mark_not_found(self, kind: str, key: str) -> None:
        """Respond 404 to lookups of ``key``, even where a sample or generation has a document."""
        self.objects.mark_not_found(target_for(kind, key))

    # ---- HTTP dispatch -------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if not request.path.startswith(_API_PREFIX + "/"):
            return self.error_response(404, f"Resource {request.path} not found")
        parts = [unquote(part) for part in request.path[len(_API_PREFIX) + 1 :].split("/")]
        key = (request.header("x-apikey") or "").strip()
        if not key:
            return _error(401, "AuthenticationRequiredError", "X-Apikey header is missing")
        if key not in self._quotas:
            return _error(401, "WrongCredentialsError", "Wrong API key")
        if request.method == "GET" and len(parts) == 2 and parts[0] in COLLECTION_KINDS:
            return self._lookup(key, COLLECTION_KINDS[parts[0]], parts[1])
        if (
            request.method == "GET"
            and len(parts) == 3
            and parts[::2] == ["users", "overall_quotas"]
        ):
            return self._overall_quotas(key, parts[1])
        return self.error_response(404, f"Resource {request.method} {request.path} not found")

    def error_response(self, status: int, message: str) -> Response:
        return _error(status, ERROR_CODES.get(status, "TransientError"), message)

    def _lookup(self, key: str, kind: str, identifier: str) -> Response:
        with self._quota_lock:
            exceeded = self._quotas[key].admit(self.clock.now())
        if exceeded is not None:
            return Response(429, _QUOTA_EXCEEDED_BODY, content_type=JSON_UTF8)
        try:
            target = target_for(kind, identifier)
        except InvalidIdentifier as error:
            return _error(400, "InvalidArgumentError", str(error))
        body = self.objects.lookup(target)
        if body is None:
            # NOTE: the "File ... not found" wording is from a recorded response; the
            # wording for URLs, domains and IP addresses is assumed to match it.
            message = f'{NOT_FOUND_LABELS[kind]} "{identifier}" not found'
            return _error(404, "NotFoundError", message, compressible=True)
        return Response(200, body, content_type=JSON_UTF8, compressible=True)

    def _overall_quotas(self, key: str, path_key: str) -> Response:
        if path_key != key:
            message = "You are not allowed to perform the requested operation"
            return _error(403, "ForbiddenError", message)
        with self._quota_lock:
            data = self._quotas[key].overall_quotas(self.clock.now())
        body = json.dumps({"data": data}).encode()
        return Response(200, body, content_type=JSON_UTF8, compressible=True)


def _error(status: int, code: str, message: str, *, compressible: bool = False) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return Response(status, body, content_type=JSON_UTF8, compressible=compressible)
