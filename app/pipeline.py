"""Train, evaluate and predict: the jobs behind ``trafficcast train|evaluate|predict``.

This is where the packages meet: ``data`` reads and windows the speeds, ``graph`` turns
distances into supports, ``models`` trains and scores. Everything here works from a run
directory that holds what a run produced:

``RUN_DIR/model.pt``      the DCRNN checkpoint (self-describing; serves forecasts)
``RUN_DIR/fc_lstm.pt``    the FC-LSTM baseline's checkpoint
``RUN_DIR/config.yaml``   the resolved configuration
``RUN_DIR/report.json``   metrics on the test split (interface.md), plus ``report.md`` and plots
``RUN_DIR/train_log.jsonl`` one line per epoch; ``RUN_DIR/state_*.pt`` resumable training state
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.forecaster import model_inputs
from app.fsutil import atomic_write_json, atomic_write_text
from data import (
    SpeedData,
    StandardScaler,
    gather,
    read_speeds,
    split_windows,
)
from data.errors import DataInputError
from models.baselines import HistoricalAverage, persistence_forecast
from models.checkpoint import build_model, load_checkpoint, save_checkpoint
from models.config import RunConfig
from models.dcrnn import DCRNN
from models.distributed import DistContext, distributed_session, process_device, shard_bounds
from models.errors import CheckpointError, ConfigError
from models.fc_lstm import FCLSTM
from models.metrics import MaskedMetrics
from models.trainer import Batch, Trainer, TrainSettings

REPORT_MINUTES = {"15min": 15, "30min": 30, "60min": 60}


def horizon_steps(freq_minutes: int, horizon: int) -> dict[str, int | None]:
    """The horizon step of each report key (``15min`` is step 3 of 5-minute data); None where
    the time is not a whole number of steps or lies beyond the model's horizon."""
    steps: dict[str, int | None] = {}
    for key, minutes in REPORT_MINUTES.items():
        step, rest = divmod(minutes, freq_minutes)
        steps[key] = step if rest == 0 and 1 <= step <= horizon else None
    return steps


def trace_steps(horizon: int) -> tuple[int, int]:
    """The two horizon steps drawn in the forecast-vs-actual plot: about 15 minutes and the last."""
    return min(3, horizon), horizon


MODEL_ORDER = ("dcrnn", "persistence", "historical_average", "fc_lstm")


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Speeds turned into model inputs, once, as whole-series arrays (windows are gathered later).

    Shapes: ``features (T, N, F)`` scaled speed (missing = 0, i.e. the mean) then time features;
    ``targets (T, N)`` raw speeds (missing = 0); ``mask (T, N)`` True where observed;
    ``slots (T,)`` time-of-day slot of each step.
    """

    speeds: SpeedData
    features: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    scaler: StandardScaler
    splits: dict[str, np.ndarray]
    slots: np.ndarray
    seq_len: int
    horizon: int

    @property
    def input_dim(self) -> int:
        return int(self.features.shape[-1])

    def train_rows(self) -> int:
        """Rows covered by the training windows (inputs and targets)."""
        return int(self.splits["train"][-1]) + self.seq_len + self.horizon


def prepare_data(
    speeds: SpeedData,
    config: RunConfig,
    scaler: StandardScaler | None = None,
) -> PreparedData:
    """Scale, add time features and split. The scaler is fit on observed training values only."""
    m, d = config.model, config.data
    splits = split_windows(
        speeds.num_steps,
        seq_len=m.seq_len,
        horizon=m.horizon,
        train_frac=d.train_fraction,
        test_frac=d.test_fraction,
    )
    values = torch.from_numpy(np.ascontiguousarray(speeds.values, dtype=np.float32))
    mask = torch.from_numpy(np.ascontiguousarray(speeds.mask))
    if scaler is None:
        train_rows = int(splits["train"][-1]) + m.seq_len + m.horizon
        scaler = StandardScaler().fit(speeds.values[:train_rows], speeds.mask[:train_rows])
    features = torch.from_numpy(
        model_inputs(
            speeds.values, speeds.mask, speeds.index, scaler, d.add_time_in_day, d.add_day_in_week
        )
    )  # (T, N, F)
    minutes = speeds.index.hour * 60 + speeds.index.minute
    slots = (np.asarray(minutes) // speeds.freq_minutes).astype(np.int64)
    return PreparedData(
        speeds=speeds,
        features=features,
        targets=values,
        mask=mask,
        scaler=scaler,
        splits=splits,
        slots=slots,
        seq_len=m.seq_len,
        horizon=m.horizon,
    )


class WindowSource:
    """Batches of windows gathered on the fly from the whole-series arrays (no materialised copies)."""

    def __init__(
        self, prepared: PreparedData, batch_sizes: dict[str, int], device: torch.device
    ) -> None:
        self.prepared = prepared
        self.batch_sizes = batch_sizes
        self.device = device

    def num_batches(self, split: str) -> int:
        n = len(self.prepared.splits[split])
        return math.ceil(n / self.batch_sizes[split])

    def batch_at(self, starts: np.ndarray) -> Batch:
        p = self.prepared
        starts_t = torch.from_numpy(np.asarray(starts, dtype=np.int64))
        x = gather(p.features, starts_t, 0, p.seq_len)  # (B, T, N, F)
        y = gather(p.features[..., :1], starts_t, p.seq_len, p.horizon)  # (B, H, N, 1)
        y_raw = gather(p.targets, starts_t, p.seq_len, p.horizon)  # (B, H, N)
        y_mask = gather(p.mask, starts_t, p.seq_len, p.horizon)  # (B, H, N)
        dev = self.device
        return Batch(x=x.to(dev), y=y.to(dev), y_raw=y_raw.to(dev), y_mask=y_mask.to(dev))

    def starts_batches(
        self, split: str, generator: torch.Generator | None = None
    ) -> Iterator[np.ndarray]:
        starts = self.prepared.splits[split]
        size = self.batch_sizes[split]
        if split == "train" and generator is not None:
            order = torch.randperm(len(starts), generator=generator).numpy()
            starts = starts[order]
        for i in range(0, len(starts), size):
            yield starts[i : i + size]

    def batches(
        self,
        split: str,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """See :class:`models.trainer.BatchSource`: with ``shard = (rank, world_size)`` each
        global batch (the batch size is global) is cut into contiguous shares differing by at
        most one window, and a rank with an empty share gets the batch's first window as
        padding. Every rank draws the same permutation, so the shares partition the epoch."""
        for starts in self.starts_batches(split, generator):
            if shard is None:
                yield self.batch_at(starts)
                continue
            lo, hi = shard_bounds(len(starts), *shard)
            if hi > lo:
                yield self.batch_at(starts[lo:hi])
            else:
                batch = self.batch_at(starts[:1])
                batch.padding = True
                yield batch


# --------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------
def load_graph_for(
    speeds: SpeedData,
    distances: str | Path | None,
    adjacency: str | Path | None,
    threshold: float = 0.1,
) -> tuple[SpeedData, np.ndarray, str]:
    """The adjacency in the data's sensor order (the data reordered to the graph's if needed)."""
    from graph import build_adjacency, load_adjacency, read_distances

    if distances is not None:
        adj = build_adjacency(read_distances(distances), speeds.sensor_ids, threshold=threshold)
        return speeds, np.asarray(adj, dtype=np.float32), str(distances)
    if adjacency is None:
        raise ConfigError("give the graph with --distances D.csv or --adjacency ADJ")
    ids, adj = load_adjacency(adjacency)
    data_ids = set(speeds.sensor_ids)
    graph_ids = set(ids)
    if data_ids != graph_ids:
        only_data = [s for s in speeds.sensor_ids if s not in graph_ids]
        only_graph = [s for s in ids if s not in data_ids]
        example = (only_data or only_graph)[:3]
        raise DataInputError(
            f"{adjacency}: the graph's sensors don't match the data's: {len(only_data)} of "
            f"{speeds.num_sensors} data sensors are not in the graph and {len(only_graph)} of "
            f"{len(ids)} graph sensors are not in the data (e.g. {', '.join(example)})"
        )
    if list(ids) != list(speeds.sensor_ids):
        speeds = speeds.select_sensors(ids)
    return speeds, np.asarray(adj, dtype=np.float32), str(adjacency)


def torch_supports(adj: np.ndarray, filter_type: str) -> list[torch.Tensor]:
    from graph import compute_supports, to_torch_sparse_csr

    return [to_torch_sparse_csr(s) for s in compute_supports(adj, filter_type)]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device = {name!r} is not a device torch knows") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available on this machine")
    return device


def _settings(config: RunConfig, epochs: int, base_lr: float, curriculum: bool) -> TrainSettings:
    t, m = config.train, config.model
    return TrainSettings(
        epochs=epochs,
        base_lr=base_lr,
        epsilon=t.epsilon,
        weight_decay=t.weight_decay,
        steps=list(t.steps),
        lr_decay_ratio=t.lr_decay_ratio,
        min_learning_rate=t.min_learning_rate,
        max_grad_norm=t.max_grad_norm,
        patience=t.patience,
        use_curriculum_learning=curriculum,
        cl_decay_steps=m.cl_decay_steps,
        max_recoveries=t.max_recoveries,
        seed=t.seed,
    )


def data_fingerprint(speeds: SpeedData) -> str:
    h = hashlib.sha256()
    h.update(",".join(speeds.sensor_ids).encode())
    h.update(np.ascontiguousarray(speeds.index.asi8).tobytes())
    h.update(np.ascontiguousarray(speeds.values).tobytes())
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

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


def _payload(
    name: str,
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    config: RunConfig,
    prepared: PreparedData,
    data_path: str,
    graph_source: str | None,
    result: Any,
) -> dict[str, Any]:
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
        "seq_len": prepared.seq_len,
        "horizon": prepared.horizon,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "path": str(Path(data_path).resolve()),
            "start": str(speeds.index[0]),
            "end": str(speeds.index[-1]),
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


def build_dcrnn(
    config: RunConfig, num_nodes: int, input_dim: int, supports: list[torch.Tensor]
) -> tuple[DCRNN, dict]:
    m = config.model
    kwargs = {
        "num_nodes": num_nodes,
        "input_dim": input_dim,
        "output_dim": m.output_dim,
        "hidden_dim": m.rnn_units,
        "num_layers": m.num_rnn_layers,
        "max_diffusion_step": m.max_diffusion_step,
        "seq_len": m.seq_len,
        "horizon": m.horizon,
    }
    if m.node_embedding_dim:  # absent from the kwargs when off: older readers still load them
        kwargs["node_embedding_dim"] = m.node_embedding_dim
    return DCRNN(supports=supports, **kwargs), kwargs


def build_fc_lstm(config: RunConfig, num_nodes: int, input_dim: int) -> tuple[FCLSTM, dict]:
    b, m = config.baselines, config.model
    kwargs = {
        "num_nodes": num_nodes,
        "input_dim": input_dim,
        "output_dim": m.output_dim,
        "hidden_dim": b.fc_lstm_units,
        "num_layers": b.fc_lstm_layers,
        "horizon": m.horizon,
    }
    return FCLSTM(**kwargs), kwargs


def load_config(path: str | Path | None, epochs: int | None = None) -> RunConfig:
    config = RunConfig.from_yaml(path) if path is not None else RunConfig()
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs = {epochs} must be >= 1")
        config.train.epochs = epochs
    return config


def check_data_fits(speeds: SpeedData, config: RunConfig, source: str) -> None:
    m = config.model
    if m.num_nodes is not None and m.num_nodes != speeds.num_sensors:
        raise ConfigError(
            f"model.num_nodes = {m.num_nodes} but {source} has {speeds.num_sensors} sensors"
        )


def train_run(
    data: str | Path,
    output: str | Path,
    distances: str | Path | None = None,
    adjacency: str | Path | None = None,
    config: RunConfig | None = None,
    threshold: float = 0.1,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = log_stderr,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train DCRNN (and FC-LSTM) on ``data``, write the run directory, return the report.

    ``init_from``: a DCRNN checkpoint whose weights start the training (a warm start); a resumed
    run's own state takes precedence over it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this: the ranks train one model
    together (see :mod:`models.distributed`), rank 0 alone logs and writes RUN_DIR, and every
    rank returns the same report (rank 0's, sent to the others). A caller that acts on the
    report, such as promoting the model, must do so on rank 0 only
    (:func:`models.distributed.is_main_process`).
    """
    config = config or RunConfig()
    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    job = {"data": data, "output": output, "distances": distances, "adjacency": adjacency,
           "config": config, "threshold": threshold, "resume": resume,
           "init_from": init_from}  # fmt: skip
    with distributed_session(process_device(device)) as dist:
        if dist is None:
            return _train(**job, progress=progress, log=log, device=device, dist=None)
        if config.train.threads is None and "OMP_NUM_THREADS" not in os.environ:
            # Several ranks share the machine's cores: torch's default (all cores per process)
            # would oversubscribe them. torchrun normally sets OMP_NUM_THREADS=1 already.
            torch.set_num_threads(1)
        report = _train(
            **job,
            progress=progress and dist.is_main,
            log=log if dist.is_main else _silent,
            device=process_device(device),
            dist=dist,
        )
        # Rank 0 wrote and scored the run; the others wait here for its report.
        return dist.broadcast_json(report)  # type: ignore[return-value]


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _train(
    data: str | Path,
    output: str | Path,
    distances: str | Path | None,
    adjacency: str | Path | None,
    config: RunConfig,
    threshold: float,
    resume: bool,
    init_from: str | Path | None,
    progress: bool,
    log: Callable[[str], None],
    device: torch.device,
    dist: DistContext | None,
) -> dict[str, Any]:
    """The body of :func:`train_run`. Distributed, it returns rank 0's report on rank 0 and an
    empty dict elsewhere; its trainers (and their DDP wrappers) are closed before it returns,
    so that the process group can be torn down cleanly after."""
    main = dist is None or dist.is_main
    torch.manual_seed(config.train.seed)
    speeds = read_speeds(data)
    speeds, adj, graph_source = load_graph_for(speeds, distances, adjacency, threshold)
    check_data_fits(speeds, config, str(data))
    prepared = prepare_data(speeds, config)
    if config.model.input_dim is not None and config.model.input_dim != prepared.input_dim:
        raise ConfigError(
            f"model.input_dim = {config.model.input_dim} but the data gives {prepared.input_dim} "
            f"features (speed{' + time of day' if config.data.add_time_in_day else ''}"
            f"{' + 7 day-of-week' if config.data.add_day_in_week else ''})"
        )
    run_dir = Path(output)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", _yaml(config.to_dict()))
    d = config.data
    source = WindowSource(
        prepared,
        {"train": d.batch_size, "val": d.val_batch_size, "test": d.test_batch_size},
        device,
    )
    counts = {k: len(v) for k, v in prepared.splits.items()}
    log(
        f"data: {speeds.num_sensors} sensors x {speeds.num_steps} steps ({speeds.freq_minutes} min); "
        f"windows train/val/test {counts['train']}/{counts['val']}/{counts['test']}; "
        f"graph {int(np.count_nonzero(adj))} nonzero weights"
    )
    if dist is not None:
        per_rank = ", ".join(
            str(b - a)
            for a, b in (
                shard_bounds(d.batch_size, r, dist.world_size) for r in range(dist.world_size)
            )
        )
        log(
            f"distributed: {dist.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}"
            f"), global batch {d.batch_size} split {per_rank}"
        )
    mean, std = prepared.scaler.mean, prepared.scaler.std

    def inverse(x: torch.Tensor) -> torch.Tensor:
        return x * std + mean

    supports = (
        torch_supports(adj, config.model.filter_type) if config.model.max_diffusion_step > 0 else []
    )
    model, kwargs = build_dcrnn(config, speeds.num_sensors, prepared.input_dim, supports)
    if init_from is not None:
        warm_start(model, init_from)
    model.to(device)
    epoch_log = _EpochLog(run_dir / "train_log.jsonl", log) if main else _silent
    trainer = Trainer(
        model,
        source,
        _settings(
            config, config.train.epochs, config.train.base_lr, config.model.use_curriculum_learning
        ),
        inverse,
        state_path=run_dir / "state_dcrnn.pt",
        log=epoch_log,
        progress=progress,
        name="dcrnn",
        dist=dist,
    )
    started = time.perf_counter()
    result = trainer.fit(resume=resume)
    trainer.close()
    if main:
        save_checkpoint(
            run_dir / "model.pt",
            _payload("dcrnn", model, kwargs, config, prepared, str(data), graph_source, result),
        )
    log(
        f"dcrnn: best val MAE {result.best_val_mae:.4f} at epoch {result.best_epoch} of "
        f"{result.epochs_run} ({time.perf_counter() - started:.0f} s)"
    )

    if config.baselines.fc_lstm:
        torch.manual_seed(config.train.seed)
        fc, fc_kwargs = build_fc_lstm(config, speeds.num_sensors, prepared.input_dim)
        fc.to(device)
        fc_epochs = config.baselines.fc_lstm_epochs or config.train.epochs
        fc_trainer = Trainer(
            fc,
            source,
            _settings(
                config, fc_epochs, config.baselines.fc_lstm_lr, config.model.use_curriculum_learning
            ),
            inverse,
            state_path=run_dir / "state_fc_lstm.pt",
            log=epoch_log,
            progress=progress,
            name="fc_lstm",
            dist=dist,
        )
        fc_result = fc_trainer.fit(resume=resume)
        fc_trainer.close()
        if main:
            save_checkpoint(
                run_dir / "fc_lstm.pt",
                _payload(
                    "fc_lstm", fc, fc_kwargs, config, prepared, str(data), graph_source, fc_result
                ),
            )
    elif main and (run_dir / "fc_lstm.pt").exists():
        (run_dir / "fc_lstm.pt").unlink()

    if not main:
        return {}
    return evaluate_run(run_dir, speeds=speeds, device=device)


def warm_start(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Copy a checkpoint's learned weights into ``model``; its graph supports are left alone,
    since the new model's graph may be newer."""
    state = load_checkpoint(checkpoint)["state_dict"]
    own = dict(model.named_parameters())
    missing = [k for k in own if k not in state]
    misfit = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or misfit:
        raise ConfigError(
            f"{checkpoint}: cannot warm-start from it: "
            + (f"it lacks {missing[0]}" if missing else f"{misfit[0]} has another shape")
            + " (the model's size or sensors changed; retrain without the warm start)"
        )
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(state[name])


class _EpochLog:
    """Logs a line and appends the epoch records to ``train_log.jsonl``."""

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        self.path = path
        self.log = log

    def __call__(self, message: str) -> None:
        self.log(message)
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "message": message,
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _yaml(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def _config_from_payload(payload: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict(payload["config"], source="checkpoint config")


def _checkpoint_speeds(
    payload: dict[str, Any], data: str | Path | None, speeds: SpeedData | None
) -> SpeedData:
    if speeds is None:
        path = data if data is not None else payload["data"]["path"]
        if data is None and not Path(path).exists():
            raise DataInputError(
                f"the run was trained on {path}, which is not there any more: give --data"
            )
        speeds = read_speeds(path)
    ids = payload["sensor_ids"]
    missing = [s for s in ids if s not in set(speeds.sensor_ids)]
    if missing:
        raise DataInputError(
            f"{speeds.source}: {len(missing)} of the model's {len(ids)} sensors are not in the data "
            f"(e.g. {', '.join(missing[:3])})"
        )
    if list(speeds.sensor_ids) != list(ids):
        speeds = speeds.select_sensors(ids)
    if int(speeds.freq_minutes) != int(payload["freq_minutes"]):
        raise DataInputError(
            f"{speeds.source}: data every {speeds.freq_minutes} min, the model was trained on "
            f"{payload['freq_minutes']}-minute data"
        )
    return speeds


@dataclass
class LoadedRun:
    """A trained run ready to score: its checkpoint, the data prepared with the run's scaler,
    windows of every split, and its models (DCRNN, FC-LSTM when trained) in eval mode."""

    payload: dict[str, Any]
    config: RunConfig
    speeds: SpeedData
    scaler: StandardScaler
    prepared: PreparedData
    source: WindowSource
    models: dict[str, torch.nn.Module]


def load_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    speeds: SpeedData | None = None,
    device: torch.device | None = None,
) -> LoadedRun:
    """Load a run directory's checkpoints and the data they are scored on (see
    :func:`_checkpoint_speeds`); one-line :class:`CheckpointError` when the run is not there."""
    run_dir = Path(run_dir)
    model_path = run_dir / "model.pt"
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not model_path.exists():
        raise CheckpointError(
            f"{run_dir}: no model.pt in the run directory (was training finished?)"
        )
    payload = load_checkpoint(model_path)
    config = _config_from_payload(payload)
    device = device or torch.device("cpu")
    speeds = _checkpoint_speeds(payload, data, speeds)
    scaler = StandardScaler.from_state_dict(payload["scaler"])
    prepared = prepare_data(speeds, config, scaler=scaler)
    source = WindowSource(
        prepared, {"train": 64, "val": 64, "test": config.data.test_batch_size}, device
    )
    models: dict[str, torch.nn.Module] = {"dcrnn": build_model(payload).to(device)}
    if (run_dir / "fc_lstm.pt").exists():
        models["fc_lstm"] = build_model(load_checkpoint(run_dir / "fc_lstm.pt")).to(device)
    return LoadedRun(payload, config, speeds, scaler, prepared, source, models)


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    output: str | Path | None = None,
    speeds: SpeedData | None = None,
    device: torch.device | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Score the run's models and the baselines on the test split; write the report files."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, data, speeds, device)
    payload, config, speeds, prepared = run.payload, run.config, run.speeds, run.prepared
    source, models = run.source, run.models
    mean, std = run.scaler.mean, run.scaler.std

    horizon = prepared.horizon
    metrics = {
        name: MaskedMetrics(horizon) for name in (*models, "persistence", "historical_average")
    }
    train_rows = prepared.train_rows()
    ha = HistoricalAverage(num_slots=(24 * 60) // speeds.freq_minutes).fit(
        speeds.values[:train_rows], speeds.mask[:train_rows], prepared.slots[:train_rows]
    )
    fallback = np.float32(mean)
    plot_sensors = _plot_sensors(speeds, train_rows)
    short_step, long_step = trace_steps(horizon)
    traces: dict[str, dict[int, list[np.ndarray]]] = {
        name: {short_step: [], long_step: []} for name in metrics
    }
    trace_starts: list[np.ndarray] = []
    with torch.inference_mode():
        for starts in source.starts_batches("test"):
            batch = source.batch_at(starts)
            preds: dict[str, torch.Tensor] = {}
            for name, model in models.items():
                preds[name] = (model(batch.x)[..., 0] * std + mean).cpu()
            x_rows = starts[:, None] + np.arange(prepared.seq_len)
            preds["persistence"] = torch.from_numpy(
                persistence_forecast(speeds.values[x_rows], speeds.mask[x_rows], horizon, fallback)
            )
            y_rows = starts[:, None] + prepared.seq_len + np.arange(horizon)
            preds["historical_average"] = torch.from_numpy(ha.predict(prepared.slots[y_rows]))
            y_raw, y_mask = batch.y_raw.cpu(), batch.y_mask.cpu()
            for name, pred in preds.items():
                metrics[name].update(pred, y_raw, y_mask)
                for step in traces[name]:
                    traces[name][step].append(pred[:, step - 1, plot_sensors].numpy())
            trace_starts.append(starts)

    counts = {k: int(len(v)) for k, v in prepared.splits.items()}
    report: dict[str, Any] = {
        "dataset": {
            "sensors": speeds.num_sensors,
            "steps": speeds.num_steps,
            "freq_minutes": int(speeds.freq_minutes),
        },
        "split": counts,
        "metrics": {},
        "model": {
            "name": "dcrnn",
            "trained_at": payload.get("trained_at"),
            "config": {
                "rnn_units": config.model.rnn_units,
                "num_rnn_layers": config.model.num_rnn_layers,
                "max_diffusion_step": config.model.max_diffusion_step,
                "filter_type": config.model.filter_type,
                "batch_size": config.data.batch_size,
                "base_lr": config.train.base_lr,
            },
            "training": payload.get("training"),
        },
        "data": {
            "source": str(speeds.source),
            "start": str(speeds.index[0]),
            "end": str(speeds.index[-1]),
        },
    }
    for name in MODEL_ORDER:
        if name in metrics:
            report["metrics"][name] = {
                key: _clean(metrics[name].at(step)) if step is not None else _NO_METRICS
                for key, step in horizon_steps(speeds.freq_minutes, horizon).items()
            }
    report["mae_by_step"] = {
        name: _clean_list(metrics[name].mae_by_step()) for name in report["metrics"]
    }

    out_path = Path(output) if output is not None else run_dir / "report.json"
    atomic_write_json(out_path, report)
    atomic_write_text(out_path.with_suffix(".md"), report_markdown(report))
    if plots:
        _write_plots(out_path.parent, report, speeds, prepared, traces, trace_starts, plot_sensors)
    return report


_NO_METRICS: dict[str, float | None] = {"mae": None, "rmse": None, "mape_pct": None}


def _clean(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if not math.isfinite(v) else round(v, 4)) for k, v in d.items()}


def _clean_list(values: list[float]) -> list[float | None]:
    return [None if not math.isfinite(v) else round(v, 4) for v in values]


def _plot_sensors(speeds: SpeedData, train_rows: int, count: int = 3) -> np.ndarray:
    """The sensors with the most variable speed in training: where forecasts are interesting."""
    values = np.where(speeds.mask[:train_rows], speeds.values[:train_rows], np.nan)
    with np.errstate(all="ignore"):
        spread = np.nan_to_num(np.nanstd(values, axis=0), nan=-1.0)
    return np.sort(np.argsort(-spread)[: min(count, speeds.num_sensors)])


def report_markdown(report: dict[str, Any]) -> str:
    ds, split = report["dataset"], report["split"]
    lines = [
        "# trafficcast evaluation",
        "",
        f"Test split: {split['test']} windows ({split['train']} train / {split['val']} validation), "
        f"{ds['sensors']} sensors, {ds['freq_minutes']}-minute data. Masked metrics in data units "
        "(a target that is 0 or missing counts nowhere).",
        "",
        "| model | MAE 15 min | MAE 30 min | MAE 60 min | RMSE 15 | RMSE 30 | RMSE 60 | MAPE % 15 | MAPE % 30 | MAPE % 60 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    for name, by_h in report["metrics"].items():
        row = [name]
        for metric in ("mae", "rmse", "mape_pct"):
            row += [fmt(by_h[h][metric]) for h in REPORT_MINUTES]
        lines.append("| " + " | ".join(row) + " |")
    training = (report.get("model") or {}).get("training")
    if training:
        lines += [
            "",
            f"DCRNN: best validation MAE {training['best_val_mae']:.3f} at epoch {training['best_epoch']} "
            f"of {training['epochs_run']}; training time {training['wall_time_s']:.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def _write_plots(
    directory: Path,
    report: dict[str, Any],
    speeds: SpeedData,
    prepared: PreparedData,
    traces: dict[str, dict[int, list[np.ndarray]]],
    trace_starts: list[np.ndarray],
    sensors: np.ndarray,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from app.fsutil import atomic_write_bytes

    def save(fig, name: str) -> None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(directory / name, buf.getvalue())

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, maes in report["mae_by_step"].items():
        steps = np.arange(1, len(maes) + 1) * speeds.freq_minutes
        ax.plot(steps, [np.nan if v is None else v for v in maes], marker="o", label=name)
    ax.set_xlabel("horizon (minutes)")
    ax.set_ylabel("masked MAE")
    ax.set_title("Test MAE by horizon")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "mae_by_horizon.png")

    # Forecast against actual over the last test day, at 15 and 60 minutes ahead.
    starts = np.concatenate(trace_starts)
    per_day = (24 * 60) // speeds.freq_minutes
    keep = slice(max(0, len(starts) - per_day), len(starts))
    fig, axes = plt.subplots(
        len(sensors), 1, figsize=(9, 2.6 * len(sensors)), sharex=True, squeeze=False
    )
    for row, sensor_pos in enumerate(sensors):
        ax = axes[row, 0]
        short_step, long_step = trace_steps(prepared.horizon)
        for step, style in ((short_step, "-"), (long_step, "--")):
            target_rows = starts[keep] + prepared.seq_len + step - 1
            times = speeds.index[target_rows]
            if step == short_step:
                actual = np.where(
                    speeds.mask[target_rows, sensor_pos],
                    speeds.values[target_rows, sensor_pos],
                    np.nan,
                )
                ax.plot(times, actual, color="black", lw=1.2, label="actual")
            pred = np.concatenate(traces["dcrnn"][step])[keep, row]
            ax.plot(times, pred, style, lw=1, label=f"dcrnn {step * speeds.freq_minutes} min ahead")
        ax.set_ylabel("speed")
        ax.set_title(f"sensor {speeds.sensor_ids[sensor_pos]}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.autofmt_xdate()
    save(fig, "forecast_vs_actual.png")


# --------------------------------------------------------------------------------------------
# Predict
# --------------------------------------------------------------------------------------------
def predict_run(run_dir: str | Path, data: str | Path, at: str, output: str | Path) -> pd.DataFrame:
    """Forecast the ``horizon`` steps after ``at`` from the ``seq_len`` steps ending at ``at``."""
    from app.forecaster import Forecaster

    run_dir = Path(run_dir)
    forecaster = Forecaster.from_run(run_dir)
    speeds = read_speeds(data)
    speeds = _checkpoint_speeds(forecaster.payload, data, speeds)
    try:
        when = pd.Timestamp(at)
    except (ValueError, TypeError) as exc:
        raise DataInputError(f"--at {at!r} is not a timestamp") from exc
    if when.tzinfo is not None:
        when = when.tz_convert("UTC").tz_localize(None)
    positions = speeds.index.get_indexer([when])
    if positions[0] < 0:
        raise DataInputError(
            f"--at {at}: not a time step of {speeds.source} (it runs from {speeds.index[0]} to "
            f"{speeds.index[-1]} every {speeds.freq_minutes} min)"
        )
    end = int(positions[0]) + 1
    start = end - forecaster.seq_len
    if start < 0:
        raise DataInputError(
            f"--at {at}: needs {forecaster.seq_len} steps of history, but {speeds.source} starts at "
            f"{speeds.index[0]} (earliest --at is {speeds.index[forecaster.seq_len - 1]})"
        )
    window = np.where(speeds.mask[start:end], speeds.values[start:end], np.nan)
    forecast, future = forecaster.forecast(speeds.index[start:end], window)
    frame = pd.DataFrame(
        forecast, index=pd.DatetimeIndex(future, name="timestamp"), columns=forecaster.sensor_ids
    )
    atomic_write_text(output, frame.to_csv(float_format="%.4f"))
    return frame
