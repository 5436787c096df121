"""The objects a command needs, built once from the global options."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from tqvt_sync import __version__
from tqvt_sync.clock import Clock, SystemClock
from tqvt_sync.config import (
    Settings,
    database_url,
    load_settings,
    require_threatq,
    require_virustotal,
    secret_values,
    warnings_for,
)
from tqvt_sync.db import migrate
from tqvt_sync.db.engine import display_url, make_engine, tighten_sqlite_files, translate_db_errors
from tqvt_sync.http import check_url
from tqvt_sync.logs import register_secret, setup_logging
from tqvt_sync.stages.common import StageContext, StopRequested

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Settings, database and clients for one invocation of the CLI."""

    options: dict[str, Any]
    config_file: str | None = None
    quiet: bool = False
    clock: Clock = field(default_factory=SystemClock)
    settings_override: Settings | None = None
    stop: StopRequested = field(default_factory=StopRequested)
    _settings: Settings | None = None
    _engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            if self.settings_override is not None:
                self._settings = self.settings_override
            else:
                self._settings = load_settings(options=self.options, config_file=self.config_file)
            for secret in secret_values(self._settings):
                register_secret(secret)
            setup_logging(level=self._settings.log_level, fmt=self._settings.log_format,
                          quiet=self.quiet)
            for warning in warnings_for(self._settings):
                logger.warning("%s", warning)
        return self._settings

    @property
    def db_display(self) -> str:
        return display_url(database_url(self.settings))

    def engine(self, *, migrate_empty: bool = True) -> Engine:
        """Return the engine, creating the schema in an empty database."""
        if self._engine is None:
            url = database_url(self.settings)
            with translate_db_errors(display_url(url)):
                engine = make_engine(url, pool_size=max(5, self.settings.vt_concurrency + 2))
                if migrate_empty:
                    migrate.ensure_schema(engine)
                tighten_sqlite_files(engine)
            self._engine = engine
        return self._engine

    def threatq_verify(self) -> bool | str:
        """Return the ``verify`` argument for requests to ThreatQ: the CA bundle, True or False."""
        settings = self.settings
        if not settings.threatq_verify_tls:
            return False
        return settings.threatq_ca_bundle or True

    def threatq_client(self, *, max_attempts: int = 5) -> Any:
        """Return a ThreatQ client; ``max_attempts`` bounds the attempts of each read."""
        from tqvt_sync.threatq.client import ThreatQClient

        settings = self.settings
        require_threatq(settings)
        base = check_url(settings.threatq_url, "THREATQ_URL")
        return ThreatQClient(
            base,
            client_id=settings.threatq_client_id,
            email=settings.threatq_email,
            password=settings.threatq_password,
            client_secret=settings.threatq_client_secret,
            verify=self.threatq_verify(),
            timeout=settings.http_timeout,
            clock=self.clock,
            max_attempts=max_attempts,
        )

    def virustotal_client(self) -> Any:
        from tqvt_sync.virustotal.client import VirusTotalClient

        settings = self.settings
        require_virustotal(settings)
        base = check_url(settings.vt_api_url, "VT_API_URL")
        return VirusTotalClient(
            base, settings.vt_api_key, timeout=settings.http_timeout,
            pool_size=max(10, settings.vt_concurrency),
        )

    def stage_context(self, *, progress: Any = None) -> StageContext:
        return StageContext(
            settings=self.settings,
            engine=self.engine(),
            clock=self.clock,
            threatq_factory=self.threatq_client,
            virustotal_factory=self.virustotal_client,
            stop=self.stop,
            progress=progress,
        )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def user_agent() -> str:
    return f"tqvt/{__version__} (python {sys.version_info.major}.{sys.version_info.minor})"
