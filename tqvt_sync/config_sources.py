"""Readers of the configuration sources: the TOML file, ``.env``, the environment, options.

``config.load_settings`` calls these in order. Each value is parsed where it is read,
so an error names the key exactly as its source spells it.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from tqvt_sync.errors import ConfigError
from tqvt_sync.logs import escape
from tqvt_sync.settings_spec import (
    DEFAULT_SCORES,
    DEFAULT_TYPES,
    SCORE_RANGE,
    SECRET_NAMES,
    SETTINGS,
    SETTINGS_BY_NAME,
    VT_KINDS,
    SettingSpec,
    parse_value,
)

CONFIG_FILE_ENV = "TQVT_CONFIG"
_TABLE_KEYS = ("types", "scores")
_ENV_PREFIXES = ("THREATQ_", "VT_", "TQVT_")
Layers = list[tuple["Source", Mapping[str, object]]]


def default_db_path(environ: Mapping[str, str] | None = None) -> str:
    """Return ``$XDG_STATE_HOME/tqvt/tqvt.db``; ``XDG_STATE_HOME`` defaults to ``~/.local/state``.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG Base Directory specification
    requires. The directory is not created here.
    """
    environ = os.environ if environ is None else environ
    state_home = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state_home):
        state_home = str(_home(environ) / ".local" / "state")
    return str(Path(state_home) / "tqvt" / "tqvt.db")


@dataclass(frozen=True)
class Source:
    """One place a value came from, with what an error message needs to point at it."""

    kind: str  # "file", "dotenv", "env" or "option"
    path: str = ""

    def origin(self, spec: SettingSpec) -> str:
        """Return the origin recorded for a value of ``spec`` read from this source."""
        return {"file": f"file:{self.path}", "dotenv": ".env", "env": f"env:{spec.env}",
                "option": "option"}[self.kind]

    def label(self, spec: SettingSpec) -> str:
        """Return how this source spells ``spec``, for error messages."""
        if self.kind == "file":
            return f"{spec.toml_key} in {self.path}"
        if self.kind == "dotenv":
            return f"{spec.env} in {self.path}"
        if self.kind == "env":
            return f"{spec.env} (environment variable)"
        return spec.option

    def example(self, spec: SettingSpec) -> str:
        """Return a valid line for ``spec`` in this source's own syntax."""
        if self.kind == "file":
            literal = spec.example if spec.kind in ("bool", "int", "seconds") else \
                f'"{spec.example}"'
            return f"{spec.toml_key} = {literal}"
        if self.kind == "option":
            return f"{spec.option} {spec.example}"
        return f"{spec.env}={spec.example}"


def checked_options(options: Mapping[str, object]) -> dict[str, object]:
    """Drop options that are ``None`` (not given) and raise ConfigError for a secret or
    an unknown name among the rest."""
    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        if name in SECRET_NAMES:
            env = SETTINGS_BY_NAME[name].env
            raise ConfigError(f"{name} is a secret and is not accepted as a command-line "
                              f"option; set {env} in the environment or in .env instead.")
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"Unknown setting '{escape(name)}' passed as an option.")
    return given


def read_dotenv(path: Path) -> dict[str, str]:
    """Read ``path`` as a .env file without changing ``os.environ``; a missing file reads
    as empty. Values are literal because ``${VAR}`` expansion is off."""
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as stream:
            _check_dotenv_lines(stream, path)
        values = dotenv_values(path, interpolate=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"The .env file {path} is not UTF-8 text; save it as UTF-8.") from None
    return {key: value for key, value in values.items() if value is not None}


def _check_dotenv_lines(stream: TextIO, path: Path) -> None:
    """Raise ConfigError for the first line of a .env file that sets nothing readable.

    python-dotenv skips such lines, and a secret on one of them would then be
    reported as missing. The message gives the line number and never the line's
    text: a line without '=' may be a secret pasted on its own.
    """
    for binding in parse_stream(stream):
        line = binding.original.line
        if binding.error:
            raise ConfigError(
                f"Line {line} of the .env file {path} cannot be read; write it as NAME=value "
                "(quote a value that contains spaces or #)."
            )
        if binding.key is not None and binding.value is None:
            raise ConfigError(
                f"Line {line} of the .env file {path} has no '='; write it as NAME=value."
            )


def config_file_path(config_file: str | None, environ: Mapping[str, str],
                     dotenv: Mapping[str, str], base: Path) -> Path | None:
    """Return the TOML file named by ``--config``, else by ``TQVT_CONFIG`` in the
    environment, else in .env; ``None`` when none is named."""
    named = config_file or environ.get(CONFIG_FILE_ENV) or dotenv.get(CONFIG_FILE_ENV)
    if not named:
        return None
    path = _expand_home(named, environ)
    return path if path.is_absolute() else base / path


def read_toml(path: Path) -> dict[str, object]:
    """Parse the TOML file at ``path``, raising ConfigError when it is missing or invalid."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} not found; check --config or "
                          f"{CONFIG_FILE_ENV}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Invalid TOML in config file {path}: {exc}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None


def toml_values(document: Mapping[str, object], path: Path | None) -> dict[str, object]:
    """Return the settings of a TOML document keyed by setting name, without the tables.

    Raises:
        ConfigError: naming the first unknown key, with the closest known key.
    """
    known = [spec.toml_key for spec in SETTINGS] + list(_TABLE_KEYS)
    for key in document:
        if key not in known:
            raise ConfigError(_unknown_key_message(key, known, str(path)))
    by_key = {spec.toml_key: spec.name for spec in SETTINGS}
    return {by_key[key]: value for key, value in document.items() if key in by_key}


def _unknown_key_message(key: str, known: list[str], where: str) -> str:
    probe = key.lower().removeprefix("tqvt_")
    matches = difflib.get_close_matches(probe, known, n=1)
    hint = f" Did you mean '{matches[0]}'?" if matches else \
        " `tqvt config show` lists every setting."
    return f"Unknown key '{escape(key)}' in {where}.{hint}"


def env_values(environ: Mapping[str, str]) -> dict[str, object]:
    """Return the values of the known variables in ``environ``, keyed by setting name."""
    return {spec.name: environ[spec.env] for spec in SETTINGS if spec.env in environ}


def merge_layers(layers: Layers, environ: Mapping[str, str],
                 base: Path) -> tuple[dict[str, object], dict[str, str]]:
    """Parse every given value, let the last layer win, and record each value's origin.

    Relative paths resolve against ``base`` and ``~`` against ``HOME`` in ``environ``.
    """
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for spec in SETTINGS:
        values[spec.name] = spec.default
        origins[spec.name] = "default"
        for source, given in layers:
            raw = given.get(spec.name)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            values[spec.name] = _parse(spec, source, raw, environ, base)
            origins[spec.name] = source.origin(spec)
    if values["db"] is None:
        values["db"] = default_db_path(environ)
    return values, origins


def _parse(spec: SettingSpec, source: Source, raw: object,
           environ: Mapping[str, str], base: Path) -> object:
    try:
        value = parse_value(spec, raw)
        if spec.kind == "path" or (spec.kind == "database" and "://" not in str(value)):
            value = _resolve_path(spec, str(value), environ, base)
    except ValueError as exc:
        shown = "***" if spec.secret else f"'{escape(mask_url_password(str(raw)))}'"
        raise ConfigError(f"Invalid value for {source.label(spec)}: {shown} ({exc}). "
                          f"Example: {source.example(spec)}.") from None
    return value


def _resolve_path(spec: SettingSpec, text: str, environ: Mapping[str, str],
                  base: Path) -> str:
    path = _expand_home(text, environ)
    if not path.is_absolute():
        path = base / path
    if spec.kind == "path" and not path.is_file():
        raise ValueError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    return str(path)


def _expand_home(text: str, environ: Mapping[str, str]) -> Path:
    if text == "~" or text.startswith("~/"):
        return _home(environ) / text[2:]
    return Path(text)


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def check_reserve(values: Mapping[str, object], origins: Mapping[str, str]) -> None:
    """Raise ConfigError when the daily reserve would leave no call of the daily limit."""
    limit, reserve = values["daily_limit"], values["daily_reserve"]
    if isinstance(limit, int) and isinstance(reserve, int) and reserve >= limit:
        raise ConfigError(
            f"TQVT_DAILY_RESERVE ({reserve}, from {origins['daily_reserve']}) must be lower "
            f"than TQVT_DAILY_LIMIT ({limit}, from {origins['daily_limit']}), or no "
            f"VirusTotal call is left. Example: TQVT_DAILY_LIMIT=500 TQVT_DAILY_RESERVE=50.")


def read_tables(document: Mapping[str, object], path: str,
                origins: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """Merge the TOML ``[types]`` and ``[scores]`` tables over their defaults.

    Records the origin of every entry in ``origins`` as ``types.<name>`` or
    ``scores.<key>``. Raises ConfigError for an unknown kind, score key or score.
    """
    types: dict[str, str] = dict(DEFAULT_TYPES)
    scores: dict[str, int] = dict(DEFAULT_SCORES)
    for name in types:
        origins[f"types.{name}"] = "default"
    for key in scores:
        origins[f"scores.{key}"] = "default"
    for name, kind in _table(document, "types", path).items():
        types[name] = _type_kind(name, kind, path)
        origins[f"types.{name}"] = f"file:{path}"
    for key, score in _table(document, "scores", path).items():
        scores[key] = _score(key, score, path)
        origins[f"scores.{key}"] = f"file:{path}"
    return types, scores


def _table(document: Mapping[str, object], name: str, path: str) -> dict[str, object]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"Invalid '{name}' in {path}: expected a table such as "
                          f"[{name}] on its own line.")
    return table


def _type_kind(name: str, kind: object, path: str) -> str:
    if isinstance(kind, str) and kind in (*VT_KINDS, ""):
        return kind
    raise ConfigError(
        f'Invalid value for types."{escape(name)}" in {path}: \'{escape(kind)}\' (expected '
        f'one of {", ".join(VT_KINDS)}, or "" for unsupported). Example: "SHA256 Hash" = "file".')


def _score(key: str, score: object, path: str) -> int:
    if key not in DEFAULT_SCORES:
        raise ConfigError(_unknown_key_message(key, list(DEFAULT_SCORES), f"[scores] of {path}"))
    low, high = SCORE_RANGE
    if isinstance(score, int) and not isinstance(score, bool) and low <= score <= high:
        return score
    raise ConfigError(f'Invalid value for scores."{key}" in {path}: \'{escape(score)}\' '
                      f'(expected a whole number from {low} to {high}). '
                      f'Example: "{key}" = {DEFAULT_SCORES[key]}.')


def unknown_dotenv_keys(dotenv: Mapping[str, str], path: Path) -> list[str]:
    """Return a warning for each THREATQ_, VT_ or TQVT_ variable in .env that no setting uses."""
    known = [spec.env for spec in SETTINGS] + [CONFIG_FILE_ENV]
    warnings = []
    for key in dotenv:
        if key.upper().startswith(_ENV_PREFIXES) and key not in known:
            matches = difflib.get_close_matches(key.upper(), known, n=1)
            hint = f"; did you mean {matches[0]}?" if matches else "."
            warnings.append(f"Unknown variable {escape(key)} in {path} is ignored{hint}")
    return warnings


def loose_permissions(layers: Layers) -> list[str]:
    """Return a warning for each file that gave a secret and that group or others can access."""
    warnings = []
    for source, given in layers:
        if source.kind not in ("file", "dotenv") or not (SECRET_NAMES & given.keys()):
            continue
        try:
            mode = os.stat(source.path).st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"{source.path} contains secrets and other users can read it "
                            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {source.path}")
    return warnings


def mask_url_password(text: str) -> str:
    """Return ``text`` with the password of a ``scheme://user:password@host`` URL as ``***``."""
    parts = _split_userinfo(text)
    if parts is None:
        return text
    scheme, userinfo, rest = parts
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{rest}"


def url_password(text: str) -> str | None:
    """Return the password inside a ``scheme://user:password@host`` URL, if there is one."""
    parts = _split_userinfo(text)
    if parts is None:
        return None
    return parts[1].split(":", 1)[1] or None


def _split_userinfo(text: str) -> tuple[str, str, str] | None:
    # Returns (scheme, "user:password", everything after "@") when the URL carries a password.
    scheme, separator, rest = text.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not separator or not at or ":" not in userinfo:
        return None
    return scheme, userinfo, host + slash + path
