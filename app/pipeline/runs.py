"""A finished run directory loaded for scoring or calibrating: its checkpoints, the data they
were trained on, prepared with the run's scaler, and the windows of every split.

Below both :mod:`~trafficcast.app.pipeline.evaluate` and :mod:`trafficcast.app.pipeline.calibrate`,
which score what this loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trafficcast.app.pipeline.data import (
    PreparedData,
    WindowSource,
    checkpoint_speeds,
    prepare_data,
)
from trafficcast.data import SpeedData, StandardScaler
from trafficcast.models.baselines import HistoricalAverage
from trafficcast.models.checkpoint import build_model, load_checkpoint
from trafficcast.models.config import RunConfig
from trafficcast.models.errors import CheckpointError
from trafficcast.models.names import DCRNN_NAME, TRAINED_BASELINES


def _config_from_payload(payload: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict(payload["config"], source="checkpoint config")


# The checkpoint file of each model a run trains, in its run directory.
CHECKPOINT_FILES = {DCRNN_NAME: "model.pt", **{name: f"{name}.pt" for name in TRAINED_BASELINES}}


@dataclass
class LoadedRun:
    """A trained run ready to score: its checkpoint, the data prepared with the run's scaler,
    windows of every split, and its models (DCRNN and the baselines it trained) in eval mode.

    ``payload`` is the DCRNN's checkpoint; ``checkpoints`` holds every model's, keyed as
    ``models`` (so ``checkpoints["dcrnn"] is payload``).
    """

    payload: dict[str, Any]
    config: RunConfig
    speeds: SpeedData
    scaler: StandardScaler
    prepared: PreparedData
    source: WindowSource
    models: dict[str, torch.nn.Module]
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    speeds: SpeedData | None = None,
    device: torch.device | None = None,
    start: str | None = None,
    freq_minutes: int | None = None,
    calendar: str | None = None,
) -> LoadedRun:
    """Load a run directory's checkpoints and the data they are scored on (see
    :func:`trafficcast.app.pipeline.data.checkpoint_speeds`, which ``start``/``freq_minutes``/``calendar`` go to); one-line
    :class:`CheckpointError` when the run is not there."""
    run_dir = Path(run_dir)
    model_path = run_dir / CHECKPOINT_FILES[DCRNN_NAME]
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not model_path.exists():
        raise CheckpointError(
            f"{run_dir}: no model.pt in the run directory (was training finished?)"
        )
    payload = load_checkpoint(model_path)
    config = _config_from_payload(payload)
    device = device or torch.device("cpu")
    speeds = checkpoint_speeds(payload, data, speeds, start, freq_minutes, calendar)
    scaler = StandardScaler.from_state_dict(payload["scaler"])
    prepared = prepare_data(speeds, config, scaler=scaler)
    source = WindowSource(
        prepared, {"train": 64, "val": 64, "test": config.data.test_batch_size}, device
    )
    checkpoints = {DCRNN_NAME: payload}
    for name, file in CHECKPOINT_FILES.items():
        if name != DCRNN_NAME and (run_dir / file).exists():
            checkpoints[name] = load_checkpoint(run_dir / file)
    models = {name: build_model(p).to(device) for name, p in checkpoints.items()}
    return LoadedRun(payload, config, speeds, scaler, prepared, source, models, checkpoints)


def fit_historical_average(run: LoadedRun) -> HistoricalAverage:
    """The historical-average baseline of the run, fitted on its training rows."""
    speeds, prepared = run.speeds, run.prepared
    train_rows = prepared.train_rows()
    # Rounded up: with a step that does not divide the day the last slot is a short one.
    return HistoricalAverage(num_slots=-(-24 * 60 // speeds.freq_minutes)).fit(
        speeds.values[:train_rows], speeds.mask[:train_rows], prepared.slots[:train_rows]
    )
