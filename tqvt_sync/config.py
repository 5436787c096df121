"""Settings of tqvt, read from defaults, a TOML file, ``.env``, the environment and options.

Sources are applied in this order, and a later source wins:

1. the defaults in ``settings_spec.SETTINGS``;
2. the TOML file named by ``--config``, else by ``TQVT_CONFIG`` (environment, then ``.env``);
3. ``.env`` in the working directory, read with python-dotenv without touching
   ``os.environ`` and without ``${VAR}`` expansion, so a ``$`` in a password stays literal;
4. environment variables;
5. command-line options, which never carry a secret.

Every given value is validated, including one that a later source overrides, and an
error names the key as it was written in its source. An empty value counts as not given.
Each value remembers its origin: ``default``, ``file:<path>``, ``.env``, ``env:<VAR>``
or ``option``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path

from tqvt_sync.config_sources import (
    CONFIG_FILE_ENV,
    Source,
    check_reserve,
    checked_options,
    config_file_path,
    default_db_path,
    env_values,
    loose_permissions,
    mask_url_password,
    merge_layers,
    read_dotenv,
    read_tables,
    read_toml,
    toml_values,
    unknown_dotenv_keys,
    url_password,
)
from tqvt_sync.errors import ConfigError
from tqvt_sync.logs import escape
from tqvt_sync.settings_spec import (
    DEFAULT_SCORES,
    DEFAULT_TYPES,
    SETTINGS,
    SETTINGS_BY_NAME,
    SettingSpec,
    format_duration,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "SETTINGS",
    "Settings",
    "SettingSpec",
    "config_show_json",
    "database_url",
    "default_db_path",
    "format_config_show",
    "load_settings",
    "redacted",
    "require_threatq",
    "require_virustotal",
    "secret_values",
    "warnings_for",
]

_NOT_SET = "(not set)"


@dataclass(frozen=True, repr=False)
class Settings:
    """The effective configuration; ``load_settings`` builds it, and every field has a default.

    ``origins`` maps each setting name, and each ``types.<name>`` and ``scores.<key>``
    entry, to where its value came from. ``load_warnings`` contains problems found while
    loading that do not stop a run. ``repr()`` shows no secret.
    """

    threatq_url: str | None = None
    threatq_client_id: str | None = None
    threatq_email: str | None = None
    threatq_password: str | None = field(default=None, repr=False)
    threatq_client_secret: str | None = field(default=None, repr=False)
    threatq_ca_bundle: str | None = None
    threatq_verify_tls: bool = True
    vt_api_key: str | None = field(default=None, repr=False)
    vt_private_key: bool = False
    vt_api_url: str = "https://www.virustotal.com/api/v3"
    db: str = field(default_factory=default_db_path)
    minute_limit: int | None = None
    daily_limit: int | None = None
    daily_reserve: int = 0
    cache_ttl: timedelta = timedelta(days=7)
    not_found_ttl: timedelta = timedelta(days=1)
    lookup_private_ips: bool = False
    write_score: bool = False
    types: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    scores: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SCORES))
    page_size: int = 500
    vt_concurrency: int = 1
    http_timeout: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    origins: dict[str, str] = field(default_factory=dict, repr=False)
    load_warnings: tuple[str, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        # Written by hand so that a password inside a database URL is masked as well.
        shown = []
        for item in fields(self):
            if not item.repr:
                continue
            value = getattr(self, item.name)
            if item.name == "db":
                value = mask_url_password(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def load_settings(
    *,
    options: Mapping[str, object] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Settings:
    """Read, merge and validate every source into a ``Settings``.

    Args:
        options: command-line values keyed by setting name; ``None`` values are skipped.
        config_file: the TOML file from ``--config``; else ``TQVT_CONFIG`` is used.
        environ: the environment to read; defaults to ``os.environ``.
        cwd: the directory holding ``.env`` and against which relative paths resolve;
            defaults to the current directory.

    Raises:
        ConfigError: for a secret among ``options``, an unknown option or TOML key, a
            missing or unreadable config file, or any invalid value.
    """
    environ = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    options = checked_options(options or {})
    dotenv_path = base / ".env"
    dotenv = read_dotenv(dotenv_path)
    file_path = config_file_path(config_file, environ, dotenv, base)
    document = read_toml(file_path) if file_path else {}

    layers: list[tuple[Source, Mapping[str, object]]] = [
        (Source("file", str(file_path)), toml_values(document, file_path)),
        (Source("dotenv", str(dotenv_path)), env_values(dotenv)),
        (Source("env"), env_values(environ)),
        (Source("option"), options),
    ]
    values, origins = merge_layers(layers, environ, base)
    check_reserve(values, origins)
    types, scores = read_tables(document, str(file_path), origins)
    warnings = unknown_dotenv_keys(dotenv, dotenv_path) + loose_permissions(layers)
    return Settings(**values, types=types, scores=scores,  # type: ignore[arg-type]
                    origins=origins, load_warnings=tuple(warnings))


def database_url(settings: Settings) -> str:
    """Return the SQLAlchemy URL of the state database.

    That is ``TQVT_DB`` itself when it is a URL, else ``sqlite:///`` followed by the
    absolute path of the file (so four slashes in total on POSIX).
    """
    if "://" in settings.db:
        return settings.db
    return f"sqlite:///{Path(settings.db).absolute()}"


def require_threatq(settings: Settings) -> None:
    """Raise ConfigError listing every setting missing to talk to ThreatQ.

    ThreatQ needs its URL, the client id, and either an email with a password or a
    client secret.
    """
    missing = [name for name in ("threatq_url", "threatq_client_id")
               if not getattr(settings, name)]
    has_password_grant = settings.threatq_email and settings.threatq_password
    if not has_password_grant and not settings.threatq_client_secret:
        if settings.threatq_email:
            missing.append("threatq_password")
        elif settings.threatq_password:
            missing.append("threatq_email")
        else:
            missing += ["threatq_email", "threatq_password"]
    if missing:
        either = not settings.threatq_email and not settings.threatq_password and \
            "threatq_email" in missing
        _raise_missing("ThreatQ", missing, either_secret=either)


def require_virustotal(settings: Settings) -> None:
    """Raise ConfigError when the VirusTotal API key is missing."""
    if not settings.vt_api_key:
        _raise_missing("VirusTotal", ["vt_api_key"], either_secret=False)


def _raise_missing(service: str, names: list[str], *, either_secret: bool) -> None:
    envs = [SETTINGS_BY_NAME[name].env for name in names]
    listed = ", ".join(envs)
    if either_secret:
        listed += " (or THREATQ_CLIENT_SECRET in place of THREATQ_EMAIL and THREATQ_PASSWORD)"
    example = " ".join(f"{SETTINGS_BY_NAME[name].env}={SETTINGS_BY_NAME[name].example}"
                       for name in names)
    raise ConfigError(f"Missing {service} settings: {listed}. Set them in the environment, "
                      f"in .env or in the config file, for example: {example}.")


def warnings_for(settings: Settings) -> list[str]:
    """Return the warnings the CLI prints on every run for these settings.

    They cover disabled TLS verification of ThreatQ, unknown variables in .env, and
    files holding secrets that other users can read.
    """
    warnings = list(settings.load_warnings)
    if not settings.threatq_verify_tls:
        text = ("THREATQ_VERIFY_TLS=false: the TLS certificate of ThreatQ is not verified, "
                "so anyone on the network path can read or change the traffic, including "
                "the credentials")
        if settings.threatq_ca_bundle:
            text += "; THREATQ_CA_BUNDLE is ignored while verification is off"
        warnings.append(text + ".")
    return warnings


def secret_values(settings: Settings) -> list[str]:
    """Return every secret value that is set, for the log redaction filter.

    Besides the secret settings this includes the password of a database URL.
    """
    values = [getattr(settings, spec.name) for spec in SETTINGS if spec.secret]
    values.append(url_password(settings.db))
    return [value for value in values if value]


def redacted(settings: Settings) -> list[tuple[str, str, str]]:
    """Return ``(name, display value, origin)`` rows for ``tqvt config show``.

    A secret shows only whether it is set (``*** (set)`` or ``(not set)``), and the
    password of a database URL shows as ``***``. The ``[types]`` and ``[scores]``
    entries follow as ``types."<name>"`` and ``scores."<key>"`` rows.
    """
    rows = [(spec.name, _display(spec, getattr(settings, spec.name)),
             settings.origins.get(spec.name, "default")) for spec in SETTINGS]
    for name, kind in settings.types.items():
        shown = kind or '"" (unsupported)'
        rows.append((f'types."{escape(name)}"', shown,
                     settings.origins.get(f"types.{name}", "default")))
    for key, score in settings.scores.items():
        rows.append((f'scores."{key}"', str(score),
                     settings.origins.get(f"scores.{key}", "default")))
    return rows


def _display(spec: SettingSpec, value: object) -> str:
    if spec.secret:
        return "*** (set)" if value else _NOT_SET
    if value is None:
        return _NOT_SET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, float):
        return f"{value:g}"
    if spec.kind == "database":
        value = mask_url_password(str(value))
    return escape(value, limit=1000)


def format_config_show(settings: Settings) -> str:
    """Return the ``tqvt config show`` text: one aligned ``name = value  (origin)`` line each."""
    rows = redacted(settings)
    name_width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [f"{name:<{name_width}} = {value:<{value_width}}  ({origin})"
             for name, value, origin in rows]
    return "\n".join(lines)


def config_show_json(settings: Settings) -> dict[str, object]:
    """Return ``tqvt config show --json``: settings, types and scores, each with its origin.

    Durations are given in seconds. A secret's ``value`` is ``"***"`` when it is set and
    ``null`` otherwise, and its ``set`` key is a boolean.
    """
    entries: dict[str, dict[str, object]] = {}
    for spec in SETTINGS:
        value = getattr(settings, spec.name)
        entry: dict[str, object] = {"env": spec.env,
                                    "origin": settings.origins.get(spec.name, "default")}
        if spec.secret:
            entry.update(value="***" if value else None, set=bool(value))
        elif isinstance(value, timedelta):
            entry["value"] = int(value.total_seconds())
        elif spec.kind == "database":
            entry["value"] = mask_url_password(value)
        else:
            entry["value"] = value
        entries[spec.name] = entry
    return {
        "settings": entries,
        "types": {name: {"value": kind, "origin": settings.origins.get(f"types.{name}",
                                                                        "default")}
                  for name, kind in settings.types.items()},
        "scores": {key: {"value": score, "origin": settings.origins.get(f"scores.{key}",
                                                                          "default")}
                   for key, score in settings.scores.items()},
    }
