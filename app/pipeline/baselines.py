"""The graph-free baselines trained beside DCRNN: the GRU (DCRNN's encoder-decoder with no
graph, the ablation) and the TCN (dilated causal convolutions per sensor). Each is built from the
run's config, trained by the same trainer on the same windows, and written to its checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trafficcast.app.pipeline.data import PreparedData, data_fingerprint
from trafficcast.app.pipeline.fitting import Training
from trafficcast.app.pipeline.runs import CHECKPOINT_FILES
from trafficcast.models.checkpoint import load_checkpoint
from trafficcast.models.config import RunConfig, TrainConfig
from trafficcast.models.dcrnn import DCRNN
from trafficcast.models.errors import ConfigError
from trafficcast.models.fc_lstm import FCLSTM
from trafficcast.models.names import (
    DCRNN_NAME,
    FC_LSTM_NAME,
    GRU_NAME,
    TCN_NAME,
    TRAINED_BASELINES,
)
from trafficcast.models.tcn import TCN


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


def build_gru(config: RunConfig, num_nodes: int, input_dim: int) -> tuple[DCRNN, dict]:
    """DCRNN with ``max_diffusion_step`` 0 and no supports: a GRU encoder-decoder applied to
    every sensor with one set of weights. Everything else (per-sensor vectors included) is
    DCRNN's, so that the road graph is the only difference."""
    b, m = config.baselines, config.model
    kwargs = {
        "num_nodes": num_nodes,
        "input_dim": input_dim,
        "output_dim": m.output_dim,
        "hidden_dim": b.gru_units or m.rnn_units,
        "num_layers": b.gru_layers or m.num_rnn_layers,
        "max_diffusion_step": 0,
        "seq_len": m.seq_len,
        "horizon": m.horizon,
    }
    if m.node_embedding_dim:
        kwargs["node_embedding_dim"] = m.node_embedding_dim
    return DCRNN(supports=[], **kwargs), kwargs


def build_tcn(config: RunConfig, num_nodes: int, input_dim: int) -> tuple[TCN, dict]:
    """The TCN of ``config.baselines``; ConfigError when its receptive field is shorter than the
    input window (it would ignore the window's oldest steps)."""
    b, m = config.baselines, config.model
    field = b.tcn_kernel_size**b.tcn_layers
    if field < m.seq_len:
        raise ConfigError(
            f"baselines.tcn_layers = {b.tcn_layers} with tcn_kernel_size = {b.tcn_kernel_size} "
            f"sees {field} steps, fewer than model.seq_len = {m.seq_len}"
        )
    kwargs = {
        "num_nodes": num_nodes,
        "input_dim": input_dim,
        "output_dim": m.output_dim,
        "channels": b.tcn_channels,
        "num_layers": b.tcn_layers,
        "kernel_size": b.tcn_kernel_size,
        "horizon": m.horizon,
    }
    return TCN(**kwargs), kwargs


def gru_settings(config: RunConfig) -> TrainConfig:
    """DCRNN's training settings for the GRU; with fewer (or more) epochs, DCRNN's
    learning-rate steps are moved in proportion, so that the schedule keeps its shape."""
    train, epochs = config.train, config.baselines.gru_epochs
    if epochs is None or epochs == train.epochs:
        return train.model_copy()
    steps = [max(1, round(s * epochs / train.epochs)) for s in train.steps]
    return train.model_copy(update={"epochs": epochs, "steps": steps})


def _seeded_model(training: Training, build: Callable) -> tuple[torch.nn.Module, dict]:
    """A baseline built by ``build`` from the run's seed, on the training device."""
    config, prepared = training.config, training.prepared
    torch.manual_seed(config.train.seed)
    model, kwargs = build(config, prepared.speeds.num_sensors, prepared.input_dim)
    return model.to(training.device), kwargs


def train_fc_lstm(training: Training, log: Callable[[str], None]) -> None:
    config = training.config
    model, kwargs = _seeded_model(training, build_fc_lstm)
    b = config.baselines
    # The baseline trains as DCRNN does but for its own rate and, when given, epoch count.
    settings = config.train.model_copy(
        update={"epochs": b.fc_lstm_epochs or config.train.epochs, "base_lr": b.fc_lstm_lr}
    )
    training.fit(FC_LSTM_NAME, model, kwargs, settings, log)


def train_gru(training: Training, log: Callable[[str], None]) -> None:
    model, kwargs = _seeded_model(training, build_gru)
    _fit_and_log(training, GRU_NAME, model, kwargs, gru_settings(training.config), log)


def train_tcn(training: Training, log: Callable[[str], None]) -> None:
    config = training.config
    model, kwargs = _seeded_model(training, build_tcn)
    b = config.baselines
    settings = config.train.model_copy(
        update={"epochs": b.tcn_epochs or config.train.epochs, "base_lr": b.tcn_lr}
    )
    _fit_and_log(training, TCN_NAME, model, kwargs, settings, log)


def _fit_and_log(
    training: Training,
    name: str,
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    settings: TrainConfig,
    log: Callable[[str], None],
) -> None:
    result = training.fit(name, model, kwargs, settings, log)
    log(
        f"{name}: best val MAE {result.best_val_mae:.4f} at epoch {result.best_epoch} of "
        f"{result.epochs_run} ({result.wall_time_s:.0f} s)"
    )


# The baselines in training order; each is on where ``config.baselines.<name>`` is true.
BASELINE_TRAINERS: dict[str, Callable[[Training, Callable[[str], None]], None]] = dict(
    zip(TRAINED_BASELINES, (train_fc_lstm, train_gru, train_tcn), strict=True)
)


def check_addition(
    run_dir: Path, config: RunConfig, only: tuple[str, ...], prepared: PreparedData
) -> None:
    """ConfigError unless ``only`` names baselines switched on in ``config`` and ``run_dir``
    holds a DCRNN trained on the same data with the same ``data``/``model``/``train`` config,
    so that the added baselines see the windows and split the run's models saw."""
    unknown = [name for name in only if name not in BASELINE_TRAINERS]
    if unknown or not only:
        raise ConfigError(
            f"--only {','.join(only)}: name baselines among {', '.join(BASELINE_TRAINERS)}"
        )
    off = [name for name in only if not getattr(config.baselines, name)]
    if off:
        raise ConfigError(f"--only {off[0]} but the config sets baselines.{off[0]}: false")
    if not (run_dir / CHECKPOINT_FILES[DCRNN_NAME]).exists():
        raise ConfigError(f"--only: {run_dir} holds no model.pt to add baselines to")
    payload = load_checkpoint(run_dir / CHECKPOINT_FILES[DCRNN_NAME])
    trained = RunConfig.from_dict(payload["config"], source=f"{run_dir}/model.pt").to_dict()
    wanted = config.to_dict()
    for section in ("data", "model", "train"):
        if trained[section] != wanted[section]:
            key = next(k for k in wanted[section] if trained[section].get(k) != wanted[section][k])
            raise ConfigError(
                f"--only: {section}.{key} = {wanted[section][key]!r} but the run in {run_dir} "
                f"was trained with {trained[section].get(key)!r}"
            )
    if payload["data"]["fingerprint"] != data_fingerprint(prepared.speeds):
        raise ConfigError(f"--only: the data is not the data the run in {run_dir} was trained on")
