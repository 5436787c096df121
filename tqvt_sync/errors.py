"""The exception tree of tqvt.

Every error the product raises on purpose derives from ``TqvtError``. The CLI
catches ``TqvtError`` once, prints its message as one sentence and exits with
``exit_code``::

    TqvtError                          exit 1
    ├── ConfigError                    exit 1   invalid or missing setting
    ├── StateError                     exit 1   corrupt or unusable database
    ├── ApiError                       exit 1   a ThreatQ or VirusTotal call failed
    │   ├── AuthenticationError        exit 1   credentials or API key rejected
    │   ├── PermanentApiError          exit 1   400/403/404-style answer; retrying cannot help
    │   ├── ResponseFormatError        exit 1   a body that is not the JSON the API documents
    │   └── RetriableApiError          exit 75  429 without quota meaning, 5xx, connection error
    │       ├── OutcomeUnknownError    exit 75  a write was sent but its answer was lost
    │       └── NotSentError           exit 75  no byte of the request reached the server
    └── TemporaryStop                  exit 75  stop now, rerun later and nothing is lost
        ├── QuotaExhaustedError        exit 75  VirusTotal hourly, daily or monthly quota spent
        ├── ServiceUnavailableError    exit 75  retries exhausted against a service
        └── StageBusyError             exit 75  another process runs this stage on this database

Messages name the service, the HTTP status and the URL path, never a full URL
with its query string, a header, a token or a key.
"""

from __future__ import annotations

from datetime import datetime

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_TEMPORARY = 75


class TqvtError(Exception):
    """Root of every error that tqvt raises on purpose."""

    exit_code = EXIT_USER_ERROR


class ConfigError(TqvtError):
    """A setting is missing or invalid; the message names the key and a valid example."""


class StateError(TqvtError):
    """The state database is corrupt, unreadable or from an unknown schema version."""


class ApiError(TqvtError):
    """A call to ThreatQ or VirusTotal failed.

    Attributes:
        service: ``"ThreatQ"`` or ``"VirusTotal"``.
        status: the HTTP status, or ``None`` when no response arrived.
        path: the URL path of the request, without host or query string.
        code: the API's own error code (VirusTotal ``error.code``), when sent.
        retry_after: seconds from a ``Retry-After`` header, when sent.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        path: str = "",
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.path = path
        self.code = code
        self.retry_after = retry_after


class AuthenticationError(ApiError):
    """The service rejected the credentials or the API key."""


class PermanentApiError(ApiError):
    """The service rejected this one request for good (bad input, forbidden, gone)."""


class ResponseFormatError(ApiError):
    """The response body is not the JSON document the API describes."""


class RetriableApiError(ApiError):
    """A temporary failure: a later attempt may succeed."""

    exit_code = EXIT_TEMPORARY


class OutcomeUnknownError(RetriableApiError):
    """A write request was sent, but no answer arrived, so it may or may not have happened."""


class NotSentError(RetriableApiError):
    """The request failed before any byte could reach the server.

    The connection was refused, the host name did not resolve or the connection
    timed out, so the server cannot have acted on the request or counted it.
    """


class TemporaryStop(TqvtError):
    """The stage stopped early for a temporary reason; a later run carries on.

    ``counts`` contains the stage's counts up to the stop, when the stage set them.
    """

    exit_code = EXIT_TEMPORARY
    counts: dict[str, int] | None = None


class QuotaExhaustedError(TemporaryStop):
    """The VirusTotal hourly, daily or monthly quota is spent until ``blocked_until``."""

    def __init__(self, message: str, *, blocked_until: datetime, scope: str = "daily") -> None:
        super().__init__(message)
        self.blocked_until = blocked_until
        self.scope = scope


class ServiceUnavailableError(TemporaryStop):
    """A service kept failing after every retry."""


class StageBusyError(TemporaryStop):
    """Another process holds the lock of this stage on this database."""
