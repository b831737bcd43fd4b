"""Gateway configuration: a YAML file (``ward gateway --config FILE``) overridden by ``WARD_*`` env vars.

Precedence, highest first: keyword arguments, environment (``WARD_PORT``, nested with ``__`` such as
``WARD_ROUTING__POLL_INTERVAL_S``), the YAML file, the defaults below. The sections ``auth``, ``quota``
and ``audit`` belong to their layers; this module only composes them.
"""

from __future__ import annotations

import contextvars
import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from gateway.audit.settings import AuditSettings
from gateway.auth.settings import AuthSettings
from gateway.console.settings import ConsoleSettings
from gateway.identifiers import TEAM_NAME_RULE, is_team_name
from gateway.quota.settings import QuotaSettings

# The YAML file of the settings being built; a context variable keeps concurrent loads apart.
_CONFIG_FILE: contextvars.ContextVar[pathlib.Path | None] = contextvars.ContextVar("ward_gateway_config", default=None)


class ConfigFileError(ValueError):
    """The configuration file is missing or is not a YAML mapping."""


class ModelRoute(BaseModel):
    """Where a served model name lives: worker addresses (``host:port``), and/or DNS names whose
    every A/AAAA record is a worker (``host:port``, e.g. a Kubernetes headless Service), re-resolved
    every ``routing.dns_refresh_s`` (gateway.workers.discovery)."""

    model_config = ConfigDict(extra="forbid")

    workers: list[str] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)

    @field_validator("workers", "dns")
    @classmethod
    def _addresses_look_like_host_port(cls, workers: list[str]) -> list[str]:
        for address in workers:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"worker address {address!r} is not host:port")
        if len(set(workers)) != len(workers):
            raise ValueError("a worker address is listed twice")
        return workers

    @model_validator(mode="after")
    def _has_workers(self) -> ModelRoute:
        if not self.workers and not self.dns:
            raise ValueError("a model needs `workers` (host:port list) or `dns` (names to resolve)")
        return self


class RoutingSettings(BaseModel):
    """How the gateway watches workers and spreads requests across them."""

    model_config = ConfigDict(extra="forbid")

    poll_interval_s: float = Field(0.5, gt=0, le=30)  # Health + LoadStats period per worker
    poll_timeout_s: float = Field(1.0, gt=0, le=30)  # a poll slower than this counts as missed
    # A worker failing its polls this long is dead: its in-flight streams are cut with an error.
    dead_after_s: float = Field(3.0, gt=0, le=300)
    max_attempts: int = Field(3, ge=1, le=16)  # workers tried before the first token is sent
    dns_refresh_s: float = Field(5.0, gt=0, le=300)  # how often `dns` names of models are re-resolved
    # Generations to a worker share one long-lived Multiplex call (far less CPU per request on both
    # sides than a Generate call each); off: a Generate call per generation. Workers that predate
    # Multiplex are served by Generate calls either way.
    multiplex: bool = True


class ShutdownSettings(BaseModel):
    """What SIGTERM does: drain, then end what is left (see gateway.serving.shutdown)."""

    model_config = ConfigDict(extra="forbid")

    # How long requests in flight may run on after SIGTERM before they are ended with a 503
    # `server_shutdown`. The default matches Kubernetes' terminationGracePeriodSeconds (30 s); give
    # the pod a few seconds more than this, for the ended requests' last bytes and the audit flush.
    grace_s: float = Field(30.0, ge=0, le=3600)


class GatewaySettings(BaseSettings):
    """Everything ``ward gateway`` needs; load with :meth:`load`."""

    model_config = SettingsConfigDict(
        env_prefix="WARD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    host: str = "127.0.0.1"  # localhost unless told otherwise
    port: int = Field(8000, ge=0, le=65535)
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    # The minimal identity check: API key -> team. Replaced by the identity layer's authenticator.
    api_keys: dict[SecretStr, str] = Field(default_factory=dict)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)  # larger bodies get 413
    access_log: bool = False  # uvicorn's per-request log lines (paths and statuses only)
    # uvicorn's event loop and HTTP parser (WARD_LOOP, WARD_HTTP). "auto" HTTP takes httptools (a
    # dependency: less CPU per request than h11, see docs/performance.md); the loop stays asyncio, as
    # uvloop measured no gain here beside grpc.aio. "h11" forces the pure-Python parser; HTTPS always uses h11.
    loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"
    http: Literal["auto", "h11", "httptools"] = "auto"
    openapi: bool = True  # serve the API's schema at /openapi.json
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    # The gateway database (teams, API keys): WARD_DATABASE_URL, else SQLite in the data directory
    # (WARD_DATA_DIR, else the user's data directory; see ward.paths).
    database_url: str | None = None
    data_dir: pathlib.Path | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    @field_validator("api_keys")
    @classmethod
    def _keys_and_teams_are_not_empty(cls, keys: dict[SecretStr, str]) -> dict[SecretStr, str]:
        for key, team in keys.items():
            if len(key.get_secret_value()) < 8:
                raise ValueError("an API key is shorter than 8 characters")
            if not is_team_name(team):
                raise ValueError(f"an API key maps to the team name {team!r}: use {TEAM_NAME_RULE}")
        return keys

    def resolved_database_url(self) -> str:
        """The database URL to use: ``database_url``, else SQLite in the data directory (created)."""
        from gateway.db import database_url

        return database_url(self.data_dir, self.database_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | pathlib.Path | None = None, **overrides: Any) -> GatewaySettings:
        """Settings from ``config_file`` (optional), the environment and ``overrides``.

        Raises ConfigFileError when the file is missing or not a mapping, and pydantic's
        ValidationError when a value is invalid.
        """
        path = None
        if config_file is not None:
            path = pathlib.Path(config_file)
            if not path.is_file():
                raise ConfigFileError(f"config file not found: {path}")
            _check_is_mapping(path)
        token = _CONFIG_FILE.set(path)
        try:
            return cls(**overrides)
        finally:
            _CONFIG_FILE.reset(token)


def _check_is_mapping(path: pathlib.Path) -> None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a mapping at the top level")
