"""The table of tqvt settings and the parsers for their value kinds.

``SETTINGS`` is the single description of every setting: its environment variable,
its TOML key, its kind, default, whether it is a secret, its help text and an example.
Loading, validation, ``tqvt config show`` and the generated configuration page all
read it, so a setting is added in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from tqvt_sync.http import is_loopback_host

# ThreatQ indicator type name -> VirusTotal kind; "" marks a type as unsupported.
DEFAULT_TYPES: dict[str, str] = {
    "MD5": "file",
    "SHA-1": "file",
    "SHA-256": "file",
    "URL": "url",
    "FQDN": "domain",
    "IP Address": "ip_address",
    "IPv6 Address": "ip_address",
}
VT_KINDS: tuple[str, ...] = ("file", "url", "domain", "ip_address")

# Verdict/severity bucket -> ThreatQ score (0-10).
DEFAULT_SCORES: dict[str, int] = {
    "malicious/high": 9,
    "malicious/medium": 7,
    "suspicious/medium": 5,
    "suspicious/low": 3,
    "undetected": 1,
    "harmless": 0,
}
SCORE_RANGE = (0, 10)

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: tuple[str, ...] = ("text", "json")

_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PATTERN = re.compile(r"(\d+)\s*([smhdw]?)")
_DB_SCHEMES = ("sqlite", "postgresql")
_CHOICE_ALIASES = {"warn": "warning"}  # the spelling that Python's logging also accepts


@dataclass(frozen=True)
class SettingSpec:
    """One setting: where it is read from, how it is parsed and how it is documented.

    ``kind`` selects the parser: ``string``, ``secret``, ``url``, ``path``,
    ``database``, ``bool``, ``int``, ``seconds`` (a float above 0), ``duration``
    or ``choice``. ``minimum`` and ``maximum`` bound ``int`` values (``maximum``
    also bounds ``seconds``), and ``choices`` lists the values of a ``choice``,
    matched ignoring case. ``default_text`` documents a
    default that is computed at load time (``default`` is then ``None``).
    """

    name: str
    env: str
    toml_key: str
    kind: str
    default: object
    secret: bool
    help: str
    example: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default_text: str = ""

    @property
    def option(self) -> str:
        """The command-line spelling of the setting name, such as ``--log-level``."""
        return "--" + self.name.replace("_", "-")


def _setting(name: str, env: str, kind: str, default: object, help: str, example: str,
             **extra: object) -> SettingSpec:
    return SettingSpec(name=name, env=env, toml_key=name, kind=kind, default=default,
                       secret=(kind == "secret"), help=help, example=example,
                       **extra)  # type: ignore[arg-type]  # extra contains only optional fields


SETTINGS: tuple[SettingSpec, ...] = (
    _setting("threatq_url", "THREATQ_URL", "url", None,
             "Base URL of the ThreatQ server. https is required except for loopback hosts.",
             "https://threatq.example.com"),
    _setting("threatq_client_id", "THREATQ_CLIENT_ID", "string", None,
             "OAuth client id of the ThreatQ API client.", "tqvt-client"),
    _setting("threatq_email", "THREATQ_EMAIL", "string", None,
             "ThreatQ user for the password grant; used together with THREATQ_PASSWORD.",
             "analyst@example.com"),
    _setting("threatq_password", "THREATQ_PASSWORD", "secret", None,
             "Password of THREATQ_EMAIL for the password grant.", "<password>"),
    _setting("threatq_client_secret", "THREATQ_CLIENT_SECRET", "secret", None,
             "OAuth client secret; replaces email and password with the client-credentials "
             "grant.", "<client secret>"),
    _setting("threatq_ca_bundle", "THREATQ_CA_BUNDLE", "path", None,
             "PEM file of the CA certificates that sign ThreatQ's TLS certificate.",
             "/etc/ssl/certs/threatq-ca.pem"),
    _setting("threatq_verify_tls", "THREATQ_VERIFY_TLS", "bool", True,
             "Verify ThreatQ's TLS certificate. false is allowed but warns on every run.",
             "true"),
    _setting("vt_api_key", "VT_API_KEY", "secret", None,
             "VirusTotal API key.", "<64-character API key>"),
    _setting("vt_private_key", "VT_PRIVATE_KEY", "bool", False,
             "true for a premium (private) VirusTotal key: also writes the premium attributes.",
             "false"),
    _setting("vt_api_url", "VT_API_URL", "url", "https://www.virustotal.com/api/v3",
             "Base URL of the VirusTotal API v3. https is required except for loopback hosts.",
             "https://www.virustotal.com/api/v3"),
    _setting("db", "TQVT_DB", "database", None,
             "State database: a SQLAlchemy URL (sqlite:///..., postgresql+psycopg://...) "
             "or the path of a SQLite file.", "/var/lib/tqvt/tqvt.db",
             default_text="$XDG_STATE_HOME/tqvt/tqvt.db (XDG_STATE_HOME defaults to "
                          "~/.local/state)"),
    _setting("minute_limit", "TQVT_MINUTE_LIMIT", "int", None,
             "VirusTotal calls allowed per 60 seconds; overrides the quota read from "
             "VirusTotal (else 4).", "4", minimum=1),
    _setting("daily_limit", "TQVT_DAILY_LIMIT", "int", None,
             "VirusTotal calls allowed per UTC day; overrides the quota read from VirusTotal "
             "(else 500).", "500", minimum=1),
    _setting("daily_reserve", "TQVT_DAILY_RESERVE", "int", 0,
             "Daily VirusTotal calls left unused for analysts.", "50", minimum=0),
    _setting("cache_ttl", "TQVT_CACHE_TTL", "duration", timedelta(days=7),
             "How long a VirusTotal response for a found object stays fresh in the cache.", "7d"),
    _setting("not_found_ttl", "TQVT_NOT_FOUND_TTL", "duration", timedelta(days=1),
             "How long a VirusTotal 'not found' response stays fresh in the cache.", "1d"),
    _setting("lookup_private_ips", "TQVT_LOOKUP_PRIVATE_IPS", "bool", False,
             "Also look up addresses that are not globally routable.", "false"),
    _setting("write_score", "TQVT_WRITE_SCORE", "bool", False,
             "Also set the ThreatQ manual score from the verdict; a higher existing score "
             "is kept.", "true"),
    _setting("page_size", "TQVT_PAGE_SIZE", "int", 500,
             "Indicators requested from ThreatQ per page.", "500", minimum=1, maximum=500),
    _setting("vt_concurrency", "TQVT_VT_CONCURRENCY", "int", 1,
             "VirusTotal requests in flight at once; the minute limit still applies. Above 1, "
             "two hashes or URL spellings of one object may both be sent before either answer "
             "is cached, so keep 1 on a free key.", "4",
             minimum=1, maximum=64),
    _setting("http_timeout", "TQVT_HTTP_TIMEOUT", "seconds", 30.0,
             "Timeout in seconds for connecting to and reading from ThreatQ and VirusTotal.",
             "30", maximum=3600),
    _setting("log_level", "TQVT_LOG_LEVEL", "choice", "INFO",
             "Lowest level of log messages written to stderr.", "INFO", choices=LOG_LEVELS),
    _setting("log_format", "TQVT_LOG_FORMAT", "choice", "text",
             "Log line format: text, or json for one JSON object per line.", "json",
             choices=LOG_FORMATS),
)

SETTINGS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in SETTINGS}
SECRET_NAMES: frozenset[str] = frozenset(spec.name for spec in SETTINGS if spec.secret)


# Ten years; longer TTLs would overflow datetime arithmetic and serve no purpose.
MAX_DURATION_SECONDS = 3650 * 86400


def parse_duration(raw: object) -> timedelta:
    """Parse ``90s``, ``15m``, ``12h``, ``7d``, ``1w`` or a plain number of seconds.

    Raises:
        ValueError: when ``raw`` is not a non-negative whole number with an optional unit.
    """
    if isinstance(raw, timedelta):
        seconds = raw.total_seconds()
    elif isinstance(raw, int) and not isinstance(raw, bool):
        seconds = raw
    elif isinstance(raw, str) and (match := _DURATION_PATTERN.fullmatch(raw.strip().lower())):
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError("expected a duration: whole seconds, or a number followed by "
                         "s, m, h, d or w")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError("a duration cannot exceed 3650d (ten years)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Write ``value`` in the largest of d, h, m or s that divides it exactly, such as ``7d``."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_bool(raw: object) -> bool:
    """Parse true/false, 1/0, yes/no or on/off, ignoring case.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("expected true or false (also accepted: 1/0, yes/no, on/off)")


def parse_value(spec: SettingSpec, raw: object) -> object:
    """Convert ``raw`` (a string from the environment, or a TOML or option value) for ``spec``.

    Raises:
        ValueError: with the reason, without the value, when ``raw`` is invalid.
    """
    if spec.kind == "bool":
        return parse_bool(raw)
    if spec.kind == "duration":
        return parse_duration(raw)
    if spec.kind in ("int", "seconds"):
        return _parse_number(spec, raw)
    if spec.kind == "choice":
        return _parse_choice(spec, raw)
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    if spec.kind == "secret":
        return _parse_secret(raw)
    text = raw.strip()
    if spec.kind == "url":
        return parse_service_url(text)
    if spec.kind == "database":
        return _parse_database(text)
    return text


def parse_service_url(text: str) -> str:
    """Check that ``text`` is an http(s) URL with a host and return it without a trailing ``/``.

    Raises:
        ValueError: when the scheme or host is missing, the scheme is http for a host that
            is not loopback, or the URL carries a user name, a password, a query string or
            a fragment.
    """
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018  # reading .port raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("the URL must start with https:// (or http:// for a loopback host)")
    if not host:
        raise ValueError("the URL has no host name")
    if parts.scheme.lower() == "http" and not is_loopback_host(host):
        raise ValueError("https is required, and http:// is accepted only for a loopback host: "
                         "127.0.0.0/8, ::1 or localhost")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL must not contain a user name or password")
    if parts.query or parts.fragment:
        raise ValueError("the URL must not contain a query string or fragment")
    return text.rstrip("/")


def _parse_number(spec: SettingSpec, raw: object) -> int | float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    try:
        if spec.kind == "int":
            value: int | float = raw if isinstance(raw, int) else int(str(raw).strip())
        else:
            value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
    except ValueError:
        noun = "a whole number" if spec.kind == "int" else "a number of seconds"
        raise ValueError(f"expected {noun}") from None
    if value != value:  # NaN compares unequal to itself and passes every range check
        raise ValueError("expected a number of seconds")
    _check_range(spec, value)
    return value


def _check_range(spec: SettingSpec, value: float) -> None:
    low, high = spec.minimum, spec.maximum
    if spec.kind == "seconds" and not 0 < value <= (high or float("inf")):
        raise ValueError(f"must be greater than 0 and at most {_number(high)}")
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"must be between {_number(low)} and {_number(high)}")
    if low is not None and value < low:
        raise ValueError(f"must be at least {_number(low)}")


def _number(value: float | None) -> str:
    return f"{value:g}"


def _parse_choice(spec: SettingSpec, raw: object) -> str:
    word = str(raw).strip().lower()
    word = _CHOICE_ALIASES.get(word, word)
    for choice in spec.choices:
        if choice.lower() == word:
            return choice
    raise ValueError("expected one of " + ", ".join(spec.choices))


def _parse_secret(raw: str) -> str:
    # A line break or NUL in a key or password would break the HTTP header or form it goes into.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        raise ValueError("contains a line break or another control character")
    return raw


def _parse_database(text: str) -> str:
    if "://" not in text:
        return text
    scheme = text.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] not in _DB_SCHEMES:
        raise ValueError("expected a sqlite:// or postgresql:// URL, or a file path")
    return text
