"""The training loop: learning at all, beating persistence, resuming exactly, recovering from NaN."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from trafficcast.data import (
    SpeedData,
    StandardScaler,
    gather,
    make_synthetic,
    split_windows,
    time_features,
)
from trafficcast.graph import build_adjacency, compute_supports
from trafficcast.graph.tensors import to_torch_sparse_csr
from trafficcast.models import DCRNN, TrainingError
from trafficcast.models.baselines import persistence_forecast
from trafficcast.models.config import TrainConfig
from trafficcast.models.metrics import MaskedMetrics, masked_mae_loss
from trafficcast.models.trainer import (
    Batch,
    EpochRecord,
    Trainer,
    TrainerCallback,
    learning_rate,
    teacher_forcing_probability,
)


class SyntheticSource:
    """A :class:`trafficcast.models.trainer.BatchSource` over synthetic speeds: scaled speed + time of day.

    Shapes: ``features (T, N, 2)``; batches as :class:`trafficcast.models.trainer.Batch`.
    """

    def __init__(self, speeds: SpeedData, seq_len: int, horizon: int, batch_size: int) -> None:
        self.speeds, self.seq_len, self.horizon, self.batch_size = (
            speeds,
            seq_len,
            horizon,
            batch_size,
        )
        self.splits = split_windows(speeds.num_steps, seq_len, horizon)
        train_rows = int(self.splits["train"][-1]) + seq_len + horizon
        self.scaler = StandardScaler().fit(speeds.values[:train_rows], speeds.mask[:train_rows])
        values = torch.from_numpy(speeds.values)
        self.mask = torch.from_numpy(speeds.mask)
        self.targets = values
        scaled = torch.where(self.mask, self.scaler.transform(values), torch.zeros(()))
        tod = torch.from_numpy(time_features(speeds.index)).expand(-1, speeds.num_sensors)
        self.features = torch.stack([scaled, tod], dim=-1).float()  # (T, N, 2)

    def num_batches(self, split: str) -> int:
        return math.ceil(len(self.splits[split]) / self.batch_size)

    def batches(self, split: str, generator: torch.Generator | None = None) -> Iterator[Batch]:
        starts = self.splits[split]
        if split == "train" and generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator).numpy()]
        for i in range(0, len(starts), self.batch_size):
            yield self.batch(starts[i : i + self.batch_size])

    def batch(self, starts: np.ndarray) -> Batch:
        s, h = self.seq_len, self.horizon
        return Batch(
            x=gather(self.features, starts, 0, s),
            y=gather(self.features[..., :1], starts, s, h),
            y_raw=gather(self.targets, starts, s, h),
            y_mask=gather(self.mask, starts, s, h),
        )

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaler.inverse_transform(x)

    def supports(self, adj: np.ndarray) -> list[torch.Tensor]:
        return [to_torch_sparse_csr(p) for p in compute_supports(adj, "dual_random_walk")]


def _small(num_sensors=4, num_days=1, freq_minutes=15, seq_len=4, horizon=3, batch_size=16):
    data = make_synthetic(
        num_sensors=num_sensors, num_days=num_days, seed=5, freq_minutes=freq_minutes
    )
    source = SyntheticSource(data.speeds, seq_len, horizon, batch_size)
    adj = build_adjacency(data.distances, data.sensor_ids)
    return source, source.supports(adj)


def _dcrnn(source: SyntheticSource, supports, seed: int = 0, cls=DCRNN, **extra) -> DCRNN:
    torch.manual_seed(seed)
    return cls(
        num_nodes=source.speeds.num_sensors,
        input_dim=2,
        supports=supports,
        hidden_dim=extra.pop("hidden_dim", 8),
        num_layers=extra.pop("num_layers", 1),
        max_diffusion_step=2,
        seq_len=source.seq_len,
        horizon=source.horizon,
        **extra,
    )


def _quiet_trainer(model, source, settings, **kwargs) -> tuple[Trainer, list[str]]:
    lines: list[str] = []
    trainer = Trainer(
        model, source, settings, source.inverse, log=lines.append, progress=False, **kwargs
    )
    return trainer, lines


# ---- schedules -------------------------------------------------------------------------------
def test_teacher_forcing_schedule_is_the_inverse_sigmoid():
    assert teacher_forcing_probability(0, 2000) == pytest.approx(2000 / 2001)
    # k / (k + e^(step/k)) at step = k ln k is exactly 1/2.
    assert teacher_forcing_probability(round(2000 * math.log(2000)), 2000) == pytest.approx(
        0.5, abs=1e-4
    )
    assert teacher_forcing_probability(10**9, 2000) == 0.0  # no overflow


def test_learning_rate_follows_the_milestones_and_floor():
    s = TrainConfig(base_lr=0.01, steps=[2, 4], lr_decay_ratio=0.1, min_learning_rate=2e-4)
    assert [learning_rate(s, e) for e in range(5)] == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 2e-4])
    assert learning_rate(s, 0, recovery_factor=0.5) == pytest.approx(0.005)


# ---- learning --------------------------------------------------------------------------------
def test_overfits_one_batch():
    source, supports = _small(num_sensors=5)
    model = _dcrnn(source, supports, hidden_dim=16)
    batch = source.batch(source.splits["train"][:8])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = masked_mae_loss(model(batch.x)[..., 0], batch.y[..., 0], batch.y_mask)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.3  # scaled units: the untrained model is far off
    assert min(losses[-10:]) < losses[0] / 10


def test_tiny_training_falls_and_beats_persistence():
    # 15-minute data: an hour ahead is 4 steps and 3 hours is 12, where the rush-hour shape the
    # model learns from the time of day matters more than the last reading.
    data = make_synthetic(num_sensors=8, num_days=7, seed=1, freq_minutes=15)
    source = SyntheticSource(data.speeds, seq_len=12, horizon=12, batch_size=32)
    supports = source.supports(build_adjacency(data.distances, data.sensor_ids))
    model = _dcrnn(source, supports, hidden_dim=16)
    settings = TrainConfig(epochs=6, base_lr=0.01, steps=[100])
    trainer, _ = _quiet_trainer(model, source, settings)  # no teacher forcing
    result = trainer.fit()
    train_mae = [h["train_mae"] for h in result.history]
    assert result.epochs_run == 6 and len(train_mae) == 6
    assert train_mae[-1] < 0.85 * train_mae[0]

    model_mae = trainer.evaluate("test").mae_by_step()
    persistence = MaskedMetrics(12)
    for starts in np.array_split(source.splits["test"], 4):
        rows = starts[:, None] + np.arange(12)
        pred = persistence_forecast(
            data.speeds.values[rows], data.speeds.mask[rows], 12, source.scaler.mean
        )
        batch = source.batch(starts)
        persistence.update(torch.from_numpy(pred), batch.y_raw, batch.y_mask)
    persistence_mae = persistence.mae_by_step()
    assert all(math.isfinite(v) for v in model_mae)
    assert np.mean(model_mae) < 0.85 * np.mean(persistence_mae)
    assert model_mae[-1] < persistence_mae[-1]


# ---- resume ----------------------------------------------------------------------------------
def test_resume_equals_uninterrupted(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source, supports = _small()
        # Curriculum on (the generator draws coins) and a decay milestone after the interruption.
        settings = dict(base_lr=0.01, steps=[3])
        forcing = dict(teacher_forcing_decay_steps=5)

        straight = _dcrnn(source, supports)
        trainer, _ = _quiet_trainer(
            straight,
            source,
            TrainConfig(epochs=4, **settings),
            state_path=tmp_path / "full.pt",
            **forcing,
        )
        full = trainer.fit()

        first = _dcrnn(source, supports)
        part, _ = _quiet_trainer(
            first,
            source,
            TrainConfig(epochs=2, **settings),
            state_path=tmp_path / "state.pt",
            **forcing,
        )
        part.fit()
        # A fresh process would build the model anew: different initial weights on purpose.
        second = _dcrnn(source, supports, seed=123)
        resumed_trainer, lines = _quiet_trainer(
            second,
            source,
            TrainConfig(epochs=4, **settings),
            state_path=tmp_path / "state.pt",
            **forcing,
        )
        resumed = resumed_trainer.fit(resume=True)
    finally:
        torch.set_num_threads(before)

    assert lines[0].startswith("model: resumed after epoch 2")
    assert resumed.epochs_run == full.epochs_run == 4
    assert resumed_trainer.global_step == trainer.global_step
    assert [h["train_mae"] for h in resumed.history] == [h["train_mae"] for h in full.history]
    assert [h["lr"] for h in resumed.history] == [0.01, 0.01, 0.01, 0.001]
    assert resumed.best_epoch == full.best_epoch
    for key, value in straight.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    # The last epoch's weights and Adam moments (in the state files) agree too, not only the best.
    state_full = torch.load(tmp_path / "full.pt", weights_only=True)
    state_resumed = torch.load(tmp_path / "state.pt", weights_only=True)
    for key, value in state_full["model"].items():
        assert torch.equal(value, state_resumed["model"][key]), key
    for i, moments in state_full["optimizer"]["state"].items():
        assert torch.equal(
            moments["exp_avg_sq"], state_resumed["optimizer"]["state"][i]["exp_avg_sq"]
        )
    assert torch.equal(state_full["generator"], state_resumed["generator"])
    # The run did change the weights: equality is not that of two untouched models.
    initial = _dcrnn(source, supports).state_dict()["projection.weight"]
    assert not torch.equal(state_full["model"]["projection.weight"], initial)


# ---- progress callbacks ----------------------------------------------------------------------
class Recorder(TrainerCallback):
    """Keeps every event, and the epoch the state file on disk had when each epoch ended."""

    def __init__(self, state_path=None) -> None:
        self.state_path = state_path
        self.events: list[tuple] = []
        self.saved_epoch_at_end: list[int | None] = []

    def on_resumed(self, model: str, epoch: int, step: int) -> None:
        self.events.append(("resumed", model, epoch, step))

    def on_epoch_end(self, model: str, record: EpochRecord) -> None:
        self.events.append(("epoch_end", model, dict(record)))
        saved = None
        if self.state_path is not None and self.state_path.exists():
            saved = torch.load(self.state_path, weights_only=True)["epoch"]
        self.saved_epoch_at_end.append(saved)

    def on_recovered(self, model: str, epoch: int, reason: str, recoveries: int) -> None:
        self.events.append(("recovered", model, epoch, reason, recoveries))


def test_callbacks_report_epochs_before_their_state_is_saved_and_the_resumption(tmp_path):
    source, supports = _small()
    state = tmp_path / "state.pt"
    settings = dict(base_lr=0.01, steps=[100])
    first, second = Recorder(state), Recorder(state)
    trainer, _ = _quiet_trainer(
        _dcrnn(source, supports), source, TrainConfig(epochs=2, **settings),
        state_path=state, name="dcrnn", callbacks=[first],
    )  # fmt: skip
    result = trainer.fit()
    # Once per epoch, with the epoch's record (the history entry), before its state is written:
    # a process killed in the hook loses that epoch.
    assert first.events == [("epoch_end", "dcrnn", h) for h in result.history]
    assert [e[2]["epoch"] for e in first.events] == [1, 2]
    assert first.saved_epoch_at_end == [None, 1]

    resumed, _ = _quiet_trainer(
        _dcrnn(source, supports), source, TrainConfig(epochs=3, **settings),
        state_path=state, name="dcrnn", callbacks=[second],
    )  # fmt: skip
    more = resumed.fit(resume=True)
    steps_per_epoch = source.num_batches("train")
    assert second.events[0] == ("resumed", "dcrnn", 2, 2 * steps_per_epoch)
    assert second.events[1:] == [("epoch_end", "dcrnn", more.history[2])]
    assert more.history[2]["epoch"] == 3 and second.saved_epoch_at_end == [2]


def test_callbacks_without_resume_or_state_report_no_resumption(tmp_path):
    source, supports = _small()
    recorder = Recorder()
    trainer, _ = _quiet_trainer(
        _dcrnn(source, supports), source, TrainConfig(epochs=1, steps=[100]),
        callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(resume=True)  # nothing on disk to resume from
    assert [e[0] for e in recorder.events] == ["epoch_end"]


# ---- divergence ------------------------------------------------------------------------------
class NaNDCRNN(DCRNN):
    """A DCRNN whose training forward returns NaN on chosen calls (1-based), or on all of them."""

    def __init__(self, *args, nan_calls: set[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_calls = nan_calls
        self.training_calls = 0

    def forward(self, x, targets=None, teacher_forcing_prob=0.0, generator=None):
        out = super().forward(x, targets, teacher_forcing_prob, generator)
        if self.training:
            self.training_calls += 1
            if self.nan_calls is None or self.training_calls in self.nan_calls:
                return out * float("nan")
        return out


def test_planted_nan_loss_is_recovered():
    source, supports = _small()
    batches_per_epoch = source.num_batches("train")
    assert batches_per_epoch >= 3
    model = _dcrnn(source, supports, cls=NaNDCRNN, nan_calls={3})
    settings = TrainConfig(epochs=2, base_lr=0.01, steps=[100], max_recoveries=3)
    recorder = Recorder()
    trainer, lines = _quiet_trainer(
        model, source, settings, callbacks=[recorder], teacher_forcing_decay_steps=2000
    )
    result = trainer.fit()

    recoveries = [line for line in lines if "restored" in line]
    assert len(recoveries) == 1
    assert "non-finite loss at step 2" in recoveries[0]
    assert "halved the learning rate" in recoveries[0]
    assert result.recoveries == 1 and trainer.recovery_factor == 0.5
    assert recorder.events[0] == ("recovered", "model", 1, "non-finite loss at step 2", 1)
    assert [e[0] for e in recorder.events] == ["recovered", "epoch_end", "epoch_end"]
    assert [h["lr"] for h in result.history] == [0.005, 0.005]
    assert result.epochs_run == 2
    # The two steps taken before the NaN were undone: the epoch re-ran from its start.
    assert trainer.global_step == 2 * batches_per_epoch
    assert model.training_calls == 2 * batches_per_epoch + 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(result.best_val_mae)


def test_nan_every_time_stops_with_training_error():
    source, supports = _small()
    model = _dcrnn(source, supports, cls=NaNDCRNN, nan_calls=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainConfig(epochs=3, base_lr=0.01, max_recoveries=2)
    trainer, lines = _quiet_trainer(model, source, settings, teacher_forcing_decay_steps=2000)
    with pytest.raises(TrainingError, match=r"diverged \(non-finite loss at step 0\) 3 times"):
        trainer.fit()
    assert len([line for line in lines if "restored" in line]) == 2
    assert "recovery 2/2" in lines[-1]
    # NaN never reached the weights.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_sharded_loss_without_a_distributed_context_is_a_training_error():
    # The sharded loss all-reduces over ranks; a single-process trainer has none to reduce
    # over, and says so (a typed error, which `python -O` keeps, unlike an assert).
    source, supports = _small()
    trainer, _ = _quiet_trainer(_dcrnn(source, supports), source, TrainConfig(epochs=1))
    batch = source.batch(source.splits["train"][:2])
    with pytest.raises(TrainingError, match="model: the sharded loss needs a distributed context"):
        trainer._sharded_loss(batch.y, batch)


def test_a_closed_trainer_has_no_optimizer():
    source, supports = _small()
    trainer, _ = _quiet_trainer(_dcrnn(source, supports), source, TrainConfig(epochs=1))
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    trainer.close()
    with pytest.raises(TrainingError, match="model: the trainer is closed"):
        trainer.optimizer  # noqa: B018 (the attribute access is what is tested)
