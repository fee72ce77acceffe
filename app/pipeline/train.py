"""``trafficcast train``: DCRNN and the baselines (:mod:`trafficcast.app.pipeline.baselines`)
trained on a data file, written to a run directory (its files: :mod:`trafficcast.app.pipeline`),
calibrated (:mod:`trafficcast.app.pipeline.calibrate`) and scored."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from trafficcast.app.fsutil import atomic_write_text
from trafficcast.app.pipeline.baselines import BASELINE_TRAINERS, check_addition
from trafficcast.app.pipeline.calibrate import calibrate_run
from trafficcast.app.pipeline.data import (
    WindowSource,
    check_data_fits,
    load_graph_for,
    prepare_data,
    torch_supports,
)
from trafficcast.app.pipeline.evaluate import evaluate_run
from trafficcast.app.pipeline.fitting import Training, log_stderr
from trafficcast.app.pipeline.runs import CHECKPOINT_FILES
from trafficcast.data import read_speeds
from trafficcast.graph.io import read_sensor_ids
from trafficcast.models.checkpoint import load_checkpoint
from trafficcast.models.config import RunConfig
from trafficcast.models.dcrnn import DCRNN
from trafficcast.models.distributed import (
    DistContext,
    distributed_session,
    process_device,
    shard_bounds,
)
from trafficcast.models.errors import ConfigError
from trafficcast.models.names import DCRNN_NAME
from trafficcast.models.trainer import EpochRecord, TrainerCallback, no_log


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


def load_config(path: str | Path | None, epochs: int | None = None) -> RunConfig:
    config = RunConfig.from_yaml(path) if path is not None else RunConfig()
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs = {epochs} must be >= 1")
        config.train.epochs = epochs
    return config


@dataclass(frozen=True)
class TrainOptions:
    """One training job of :func:`train_run`.

    ``data``: the speeds file; ``output``: the run directory to write. The graph: ``distances``
    (thresholded at ``threshold``) or ``adjacency``; ``sensor_ids``: a sensor-id file giving the
    order of a dense ``.csv`` adjacency without a header (:func:`trafficcast.app.pipeline.read_graph`).
    ``start``, ``freq_minutes``: the times of a data file without timestamps, ``calendar`` the
    days the data covers (see :func:`trafficcast.data.read_speeds`); the data is read with ``config.data``'s missing-value
    rule. ``init_from``: a DCRNN checkpoint whose weights start the training (a warm start); a
    resumed run's own state takes precedence over it. ``callbacks``: progress hooks of every
    trainer (after the one that writes ``train_log.jsonl``). ``only``: baselines to add to the
    existing run in ``output`` (same data and config sections ``data``, ``model``, ``train``,
    else ConfigError); its other checkpoints are left as they are, and only the new ones are
    calibrated before the run is scored again.

    ``output`` holding a finished run (``model.pt`` or ``report.json``) is refused unless
    ``resume`` (continue it), ``overwrite`` (train a new run over it) or ``only`` is given.
    ``progress``: tqdm bars per epoch; ``log``: where the lines go (one per epoch, among others).
    """

    data: str | Path
    output: str | Path
    distances: str | Path | None = None
    adjacency: str | Path | None = None
    config: RunConfig = field(default_factory=RunConfig)
    threshold: float = 0.1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    log: Callable[[str], None] = log_stderr
    init_from: str | Path | None = None
    callbacks: tuple[TrainerCallback, ...] = ()
    start: str | None = None
    freq_minutes: int | None = None
    calendar: str | None = None
    sensor_ids: str | Path | None = None
    only: tuple[str, ...] | None = None


def train_run(options: TrainOptions) -> dict[str, Any]:
    """Train DCRNN and the baselines the config switches on (:data:`BASELINE_TRAINERS`) as
    ``options`` say (:class:`TrainOptions`), write the run directory, return the report.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this: the ranks train one model
    together (see :mod:`trafficcast.models.distributed`), rank 0 alone logs, calls the hooks and
    writes RUN_DIR, and every rank returns the same report (rank 0's, sent to the others). A
    caller that acts on the report, such as promoting the model, must do so on rank 0 only
    (:func:`trafficcast.models.distributed.is_main_process`).
    """
    config = options.config
    check_output(options)
    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    with distributed_session(process_device(device)) as dist:
        if dist is None:
            return _train(options, device, None)
        if config.train.threads is None and "OMP_NUM_THREADS" not in os.environ:
            # Several ranks share the machine's cores: torch's default (all cores per process)
            # would oversubscribe them. torchrun normally sets OMP_NUM_THREADS=1 already.
            torch.set_num_threads(1)
        if not dist.is_main:
            options = replace(options, progress=False, log=no_log)
        report = _train(options, process_device(device), dist)
        # Rank 0 wrote and scored the run; the others wait here for its report.
        return dist.broadcast_json(report)  # type: ignore[return-value]


def check_output(options: TrainOptions) -> None:
    """ConfigError when ``options.output`` holds a finished run that the job would train over
    without being asked to (``resume``, ``overwrite`` or ``only``)."""
    run_dir = Path(options.output)
    if options.resume or options.overwrite or options.only is not None:
        return
    finished = [
        name for name in (CHECKPOINT_FILES[DCRNN_NAME], "report.json") if (run_dir / name).exists()
    ]
    if finished:
        raise ConfigError(
            f"--output {run_dir} already holds a finished run ({', '.join(finished)}): "
            "pass --resume to continue it or --overwrite to train a new one over it"
        )


def _train(options: TrainOptions, device: torch.device, dist: DistContext | None) -> dict[str, Any]:
    """The body of :func:`train_run`. Distributed, it returns rank 0's report on rank 0 and an
    empty dict elsewhere; its trainers (and their DDP wrappers) are closed before it returns,
    so that the process group can be torn down cleanly after."""
    o, config, log = options, options.config, options.log
    torch.manual_seed(config.train.seed)
    speeds = read_speeds(
        o.data,
        start=o.start,
        freq_minutes=o.freq_minutes,
        missing=config.data.missing_rule,
        calendar=o.calendar,
    )
    order = read_sensor_ids(o.sensor_ids) if o.sensor_ids is not None else None
    speeds, adj, graph_source = load_graph_for(speeds, o.distances, o.adjacency, o.threshold, order)
    check_data_fits(speeds, config, str(o.data))
    prepared = prepare_data(speeds, config)
    if config.model.input_dim is not None and config.model.input_dim != prepared.input_dim:
        raise ConfigError(
            f"model.input_dim = {config.model.input_dim} but the data gives {prepared.input_dim} "
            f"features (speed{' + time of day' if config.data.add_time_in_day else ''}"
            f"{' + 7 day-of-week' if config.data.add_day_in_week else ''})"
        )
    run_dir = Path(o.output)
    if o.only is not None:
        check_addition(run_dir, config, o.only, prepared)
    d = config.data
    training = Training(
        config=config,
        prepared=prepared,
        source=WindowSource(
            prepared,
            {"train": d.batch_size, "val": d.val_batch_size, "test": d.test_batch_size},
            device,
        ),
        run_dir=run_dir,
        data_path=str(o.data),
        graph_source=graph_source,
        timestamps=o.start is None,
        device=device,
        dist=dist,
        resume=o.resume,
        progress=o.progress,
        callbacks=(TrainLog(run_dir / "train_log.jsonl"), *o.callbacks),
    )
    if training.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", _yaml(config.to_dict()))
    _log_setup(training, adj, log)
    if o.only is None:
        _train_dcrnn(training, adj, o.init_from, log)
    for name, train in BASELINE_TRAINERS.items():
        if o.only is not None and name not in o.only:
            continue  # another run's model: left as it is
        if getattr(config.baselines, name):
            train(training, log)
        elif training.main and (run_dir / CHECKPOINT_FILES[name]).exists():
            # Left by an earlier run in this directory, it would be scored as this run's.
            (run_dir / CHECKPOINT_FILES[name]).unlink()
    if not training.main:
        return {}
    # Every trained model ships with its prediction intervals, fitted on the validation split.
    calibrate_run(run_dir, log=log, speeds=speeds, device=device, only=o.only)
    return evaluate_run(run_dir, speeds=speeds, device=device)


def _log_setup(training: Training, adj: np.ndarray, log: Callable[[str], None]) -> None:
    speeds, dist = training.prepared.speeds, training.dist
    counts = {k: len(v) for k, v in training.prepared.splits.items()}
    log(
        f"data: {speeds.num_sensors} sensors x {speeds.num_steps} steps ({speeds.freq_minutes} min); "
        f"windows train/val/test {counts['train']}/{counts['val']}/{counts['test']}; "
        f"graph {int(np.count_nonzero(adj))} nonzero weights"
    )
    if dist is not None:
        batch_size = training.config.data.batch_size
        per_rank = ", ".join(
            str(b - a)
            for a, b in (
                shard_bounds(batch_size, r, dist.world_size) for r in range(dist.world_size)
            )
        )
        log(
            f"distributed: {dist.world_size} processes ("
            f"{'nccl' if training.device.type == 'cuda' else 'gloo'}), global batch {batch_size} "
            f"split {per_rank}"
        )


def _train_dcrnn(
    training: Training, adj: np.ndarray, init_from: str | Path | None, log: Callable[[str], None]
) -> None:
    config, prepared = training.config, training.prepared
    supports = (
        torch_supports(adj, config.model.filter_type) if config.model.max_diffusion_step > 0 else []
    )
    model, kwargs = build_dcrnn(config, prepared.speeds.num_sensors, prepared.input_dim, supports)
    if init_from is not None:
        warm_start(model, init_from)
    model.to(training.device)
    started = time.perf_counter()
    result = training.fit(DCRNN_NAME, model, kwargs, config.train, log)
    log(
        f"{DCRNN_NAME}: best val MAE {result.best_val_mae:.4f} at epoch {result.best_epoch} of "
        f"{result.epochs_run} ({time.perf_counter() - started:.0f} s)"
    )


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


class TrainLog(TrainerCallback):
    """Appends the trainers' progress to ``train_log.jsonl``, one JSON object a line, each with
    the time, the model's name and the ``event``: ``"epoch"`` with the finished epoch's
    :class:`trafficcast.models.trainer.EpochRecord` (one line per epoch), ``"resumed"`` and ``"recovered"``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, model: str, record: EpochRecord) -> None:
        self._append(model, "epoch", **record)

    def on_resumed(self, model: str, epoch: int, step: int) -> None:
        self._append(model, "resumed", epoch=epoch, global_step=step)

    def on_recovered(self, model: str, epoch: int, reason: str, recoveries: int) -> None:
        self._append(model, "recovered", epoch=epoch, reason=reason, recoveries=recoveries)

    def _append(self, model: str, event: str, **fields: Any) -> None:
        line = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model,
            "event": event,
            **fields,
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def _yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False)
