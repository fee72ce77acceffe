"""What the training of every model of a run shares: the prepared data and its windows, where the
run is written, how progress is reported, and the checkpoint a trained model is saved as.

Below :mod:`~trafficcast.app.pipeline.train` (DCRNN) and :mod:`~trafficcast.app.pipeline.baselines`
(the models trained beside it), which both train through :class:`Training`.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trafficcast.app.pipeline.data import PreparedData, WindowSource, data_fingerprint
from trafficcast.app.pipeline.runs import CHECKPOINT_FILES
from trafficcast.models.checkpoint import save_checkpoint
from trafficcast.models.config import RunConfig, TrainConfig
from trafficcast.models.distributed import DistContext
from trafficcast.models.trainer import Trainer, TrainerCallback, TrainResult


def log_stderr(message: str) -> None:
    """The default log of the jobs: a line to stderr, flushed (it may be a pipe)."""
    print(message, file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    try:
        own = version("trafficcast")
    except PackageNotFoundError:
        own = "unknown"
    return {
        "trafficcast": own,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "pandas": str(pd.__version__),
    }


def checkpoint_payload(
    name: str,
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    config: RunConfig,
    prepared: PreparedData,
    data_path: str,
    graph_source: str | None,
    result: Any,
    timestamps: bool = True,
) -> dict[str, Any]:
    """The checkpoint of a trained model: weights, config, scaler, sensors, data, training."""
    speeds = prepared.speeds
    return {
        "model_name": name,
        "model_kwargs": kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "scaler": prepared.scaler.state_dict(),
        "sensor_ids": list(speeds.sensor_ids),
        "features": {
            "time_in_day": config.data.add_time_in_day,
            "day_in_week": config.data.add_day_in_week,
        },
        "freq_minutes": int(speeds.freq_minutes),
        # What is forecast, in which unit, and what counted as missing (config.data).
        "quantity": config.data.quantity,
        "unit": config.data.unit,
        "missing": config.data.missing_rule,
        "seq_len": prepared.seq_len,
        "horizon": prepared.horizon,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "path": str(Path(data_path).resolve()),
            "start": str(speeds.index[0]),
            "end": str(speeds.index[-1]),
            # False: the file had none, its times came from --start and --freq.
            "timestamps": timestamps,
            # The days the data covers (trafficcast.data.calendar): no window spans the others.
            "calendar": speeds.calendar,
            "steps": int(speeds.num_steps),
            "fingerprint": data_fingerprint(speeds),
            "graph": graph_source,
        },
        "training": {
            "best_epoch": result.best_epoch,
            "best_val_mae": result.best_val_mae,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "recoveries": result.recoveries,
            "wall_time_s": round(result.wall_time_s, 2),
        },
        "versions": _versions(),
    }


@dataclass
class Training:
    """What every model's training shares: the prepared data and its windows, where the run is
    written, and how progress is reported."""

    config: RunConfig
    prepared: PreparedData
    source: WindowSource
    run_dir: Path
    data_path: str
    graph_source: str
    timestamps: bool
    device: torch.device
    dist: DistContext | None
    resume: bool
    progress: bool
    callbacks: tuple[TrainerCallback, ...]

    @property
    def main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled predictions to data units."""
        return self.prepared.scaler.inverse_transform(x)

    def fit(
        self,
        name: str,
        model: torch.nn.Module,
        kwargs: dict[str, Any],
        settings: TrainConfig,
        log: Callable[[str], None],
    ) -> TrainResult:
        """Train ``model`` (resuming from ``state_<name>.pt`` if asked) and, on rank 0, save
        its checkpoint. The trainer (and its DDP wrapper) is closed before this returns."""
        m = self.config.model
        trainer = Trainer(
            model,
            self.source,
            settings,
            self.inverse,
            state_path=self.run_dir / f"state_{name}.pt",
            log=log,
            progress=self.progress,
            name=name,
            dist=self.dist,
            callbacks=self.callbacks,
            teacher_forcing_decay_steps=m.cl_decay_steps if m.use_curriculum_learning else None,
        )
        result = trainer.fit(resume=self.resume)
        trainer.close()
        if self.main:
            payload = checkpoint_payload(
                name,
                model,
                kwargs,
                self.config,
                self.prepared,
                self.data_path,
                self.graph_source,
                result,
                self.timestamps,
            )
            save_checkpoint(self.run_dir / CHECKPOINT_FILES[name], payload)
        return result
