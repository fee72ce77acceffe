"""What ``trafficcast retrain`` is asked to do, and the exit status of each outcome."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from trafficcast.app.exit_status import EXIT_USER_ERROR
from trafficcast.models.errors import ConfigError

EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = EXIT_USER_ERROR
EXIT_KEPT = 3
EXIT_BUSY = 4
EXIT_CODES = {
    "promoted": EXIT_PROMOTED,
    "failed": EXIT_FAILED,
    "bad_input": EXIT_BAD_INPUT,
    "kept": EXIT_KEPT,
    "busy": EXIT_BUSY,
}


@dataclass
class RetrainOptions:
    registry: Path
    data: Path
    # The times of a --data file without timestamps (--start, --freq), the days it covers.
    start: str | None = None
    freq_minutes: int | None = None
    calendar: str | None = None
    # The service's database: its SQLite file or its URL.
    observations: str | Path | None = None
    config: Path | None = None
    epochs: int | None = None
    distances: Path | None = None
    adjacency: Path | None = None
    threshold: float = 0.1
    margin: float = 0.01
    force: bool = False
    warm_start: bool = False
    keep: int = 5
    progress: bool = False
    # Train only when the champion's live MAE (the service's forecast record, read from
    # ``observations``) is above this; None trains whatever it is.
    when_live_mae_above: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.margin < 1.0) or not math.isfinite(self.margin):
            raise ConfigError(f"--margin = {self.margin} must be a fraction in [0, 1)")
        if self.keep < 1:
            raise ConfigError(f"--keep = {self.keep} must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs = {self.epochs} must be >= 1")
        limit = self.when_live_mae_above
        if limit is not None:
            if not math.isfinite(limit) or limit < 0:
                raise ConfigError(f"--when-live-mae-above = {limit} must be a number >= 0")
            if self.observations is None:
                raise ConfigError(
                    "--when-live-mae-above needs --observations DB: the service's database, "
                    "where its forecast record is"
                )
