"""Service settings: pydantic-settings with the ``TRAFFICCAST_`` environment prefix.

Settings are built per app (``create_app(Settings(...))``), never read at import time, so tests and
the CLI each make an app with their own values. Every field can come from the environment, e.g.
``TRAFFICCAST_RUN_DIR=runs/la TRAFFICCAST_API_KEYS=k1,k2 trafficcast serve``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trafficcast.app.db import describe, is_url, to_url
from trafficcast.data.errors import DataInputError
from trafficcast.models.errors import ConfigError

# The bundled run: a checkpoint trained by `trafficcast train` on the bundled METR-LA week, with
# its report. When it is absent, the service trains it on first start from the bundled config.
BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_RUN_DIR = BUNDLED_DIR / "metr-la-week"
BUNDLED_CONFIG = BUNDLED_DIR / "metr-la-week.yaml"

MIB = 1024 * 1024

# Where a process may be told to crash itself (TRAFFICCAST_FAULT_POINT; app/registry.py).
FaultPoint = Literal["training", "checkpoint-write", "promotion", "after-promotion"]


class Settings(BaseSettings):
    """Everything the service can be told; defaults serve the bundled METR-LA week."""

    model_config = SettingsConfigDict(
        env_prefix="TRAFFICCAST_",
        extra="forbid",
        env_parse_none_str="none",
        validate_default=True,
    )

    run_dir: Path = Field(
        BUNDLED_RUN_DIR,
        description="run directory with model.pt (and report.json); the bundled run by default",
    )
    host: str = "127.0.0.1"
    fault_point: FaultPoint | None = Field(
        None,
        description="crash-safety tests: the process SIGKILLs itself on reaching this point",
    )
    port: int = Field(8000, ge=0, le=65535)
    # NoDecode: the environment gives "k1,k2" rather than a JSON list (split below).
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="keys accepted in X-API-Key; none configured means writes are disabled",
    )
    observations_db: Path = Field(
        Path("trafficcast-observations.sqlite3"),
        description="the SQLite file of the observations and the forecast record, when "
        "database_url is not set",
    )
    database_url: str | None = Field(
        None,
        description="the database of the observations and the forecast record, e.g. "
        "postgresql://user:password@host:5432/trafficcast, shared by every replica; unset: "
        "database_url_file's, else SQLite at observations_db",
    )
    database_url_file: Path | None = Field(
        None,
        description="a file holding database_url (a Docker or Kubernetes secret), so that the "
        "URL and its password are in neither a command line nor the environment",
    )
    db_pool_size: int = Field(5, ge=1, description="connections kept open per process")
    db_max_overflow: int = Field(5, ge=0, description="connections opened beyond the pool")
    db_connect_timeout_s: float = Field(
        5.0,
        gt=0.0,
        le=300.0,
        description="how long a connection (or a free one from the pool) is waited for; past "
        "it a write answers 503 and /readyz is not ready",
    )
    db_migrate_on_start: bool = Field(
        True,
        description="apply the schema migrations at start-up (replicas take turns); off: refuse "
        "to start on a schema that `trafficcast db upgrade` has not brought to this version",
    )
    torch_threads: int | None = Field(None, ge=1)
    max_body_bytes: int = Field(MIB, ge=1024)
    max_sensors_per_request: int = Field(5000, ge=1)
    max_timestamps_per_request: int = Field(2016, ge=1)
    # Forecasts arriving within this many milliseconds share one forward pass; 0 turns it off.
    microbatch_window_ms: float = Field(3.0, ge=0.0, le=1000.0)
    microbatch_max_size: int = Field(64, ge=1)
    inference_workers: int = Field(1, ge=1)
    locations_path: Path | None = Field(
        None, description="sensor coordinates CSV; default: the bundled METR-LA locations"
    )
    # "auto": the bundled week when serving the bundled model; a path: that speed file; None: off.
    seed_observations: Path | Literal["auto"] | None = "auto"
    seed_days: float = Field(1.0, gt=0.0)
    # Naive timestamps may be local time anywhere (UTC-12..UTC+14): allow a day of slack.
    max_future_minutes: int = Field(24 * 60, ge=0)
    # GET /v1/forecast needs at least this fraction of the window's readings to be present.
    min_window_coverage: float = Field(0.5, ge=0.0, le=1.0)
    max_history_steps: int = Field(2016, ge=1)
    # A model registry (`trafficcast retrain` writes it): serve its current version and swap to
    # each newly promoted one. Takes precedence over run_dir.
    registry: Path | None = Field(
        None, description="model registry directory; its current version is served"
    )
    registry_fallback: bool = Field(
        True,
        description="while the registry has no promoted version, serve run_dir's model (the "
        "bundled one by default) so the service is ready at once; the first promoted version "
        "replaces it",
    )
    registry_poll_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="how often the registry pointer is checked"
    )
    train_if_missing: bool = Field(
        True, description="train the bundled run on first start when its model.pt is absent"
    )
    accuracy_enabled: bool = Field(
        True,
        description="record a forecast from each new latest observed step, in the background, "
        "and score it as the readings for its times arrive (GET /v1/accuracy)",
    )
    accuracy_retention_hours: float = Field(
        48.0,
        gt=0.0,
        description="keep recorded forecasts made this long before the newest one; a window "
        "longer than this reports only what is kept",
    )
    accuracy_interval_level: float = Field(
        0.8,
        ge=0.5,
        lt=1.0,
        description="central coverage of the bounds recorded with each forecast (where the "
        "model gives bounds), scored as interval coverage",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _no_empty_keys(cls, value: list[str]) -> list[str]:
        if any(not k for k in value):
            raise ValueError("an API key must not be empty")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        to_url(value)  # raises naming the scheme for anything but postgresql:// and sqlite://
        return value.strip()

    @model_validator(mode="after")
    def _url_from_file(self) -> Settings:
        if self.database_url_file is None:
            return self
        if self.database_url is not None:
            raise ValueError(
                "database_url (TRAFFICCAST_DATABASE_URL) and database_url_file "
                "(TRAFFICCAST_DATABASE_URL_FILE) are both set: give one"
            )
        try:
            self.database_url = read_database_url(self.database_url_file)
        except ConfigError as exc:
            raise ValueError(f"database_url_file (TRAFFICCAST_DATABASE_URL_FILE): {exc}") from None
        return self

    @property
    def database(self) -> str | Path:
        """Where the service keeps its tables: ``database_url``, else the SQLite file."""
        return self.database_url or self.observations_db

    @property
    def serves_bundled_run(self) -> bool:
        return self.registry is None and self.run_dir.resolve() == BUNDLED_RUN_DIR.resolve()


def read_database_url(path: Path) -> str:
    """The database URL held in the file ``path`` (a Docker or Kubernetes secret), without the
    whitespace around it. Raises :class:`ConfigError` naming the file, never its content, when
    it can't be read or holds no postgresql:// or sqlite:// URL."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read {path}: {why}") from None
    if not is_url(text):
        raise ConfigError(f"{path} holds no database URL (postgresql://... or sqlite:///...)")
    try:
        to_url(text)
    except DataInputError:
        raise ConfigError(
            f"{path}: {describe(text)}: only postgresql:// and sqlite:/// are supported"
        ) from None
    return text


def load_settings(flags: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment and ``overrides``; an invalid one raises
    ``trafficcast.models.errors.ConfigError`` with one line naming the setting, its environment variable
    (and its command-line flag, from ``flags``) and the value, a database URL without its
    password."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across settings: its message names them
            raise ConfigError(f"settings: {first['msg'].removeprefix('Value error, ')}") from None
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        env = f"TRAFFICCAST_{where.upper()}"
        names = f"{flags[where]} or {env}" if flags and where in flags else env
        value = first.get("input")
        if where == "database_url":  # its password stays out of terminals and logs
            value = describe(str(value))
        raise ConfigError(
            f"setting {where} ({names}): {first['msg'].removeprefix('Value error, ')} "
            f"(got {value!r})"
        ) from None
