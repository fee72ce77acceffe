"""The TCN baseline: shapes, what its receptive field sees, hand-set weights computing a known
function, the masked loss through the trainer, and its checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.test_models_training import _small
from trafficcast.models.checkpoint import build_model
from trafficcast.models.config import TrainConfig
from trafficcast.models.metrics import masked_mae_loss
from trafficcast.models.tcn import TCN
from trafficcast.models.trainer import Trainer


def _inputs(batch=3, seq_len=12, nodes=5, features=2, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq_len, nodes, features, generator=g)  # (B, T, N, F)


def test_shapes_and_every_horizon_step_differs():
    torch.manual_seed(0)
    model = TCN(num_nodes=5, input_dim=2, channels=8, num_layers=4, kernel_size=2, horizon=7)
    out = model(_inputs())
    assert out.shape == (3, 7, 5, 1)
    assert out.std() > 1e-3
    assert not torch.allclose(out[:, 0], out[:, -1])


@pytest.mark.parametrize(("layers", "kernel", "field"), [(4, 2, 16), (2, 3, 9), (1, 2, 2)])
def test_receptive_field_is_what_the_output_depends_on(layers, kernel, field):
    torch.manual_seed(0)
    model = TCN(num_nodes=2, input_dim=1, channels=4, num_layers=layers, kernel_size=kernel)
    assert model.receptive_field == field == kernel**layers
    x = _inputs(batch=1, seq_len=20, nodes=2, features=1).requires_grad_(True)
    model(x).sum().backward()
    seen = (x.grad[0, :, :, 0].abs().sum(dim=1) > 0).nonzero().flatten()  # steps with influence
    assert seen.tolist() == list(range(20 - field, 20))


def test_the_default_stack_sees_the_whole_window():
    model = TCN(num_nodes=3, input_dim=2)
    x = _inputs(batch=2, seq_len=12, nodes=3)
    changed = x.clone()
    changed[:, 0] += 1.0  # only the oldest step
    with torch.no_grad():
        assert not torch.allclose(model(x), model(changed))


def test_sensors_do_not_see_each_other():
    model = TCN(num_nodes=4, input_dim=2, channels=8)
    x = _inputs(nodes=4)
    changed = x.clone()
    changed[:, :, 2] += 5.0
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :, [0, 1, 3]], b[:, :, [0, 1, 3]], rtol=0, atol=0)
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def _hand_set(model: TCN) -> None:
    """Channel 0 carries the speed (feature 0); everything else is zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.input_projection.weight[0, 0, 0] = 1.0
        model.head.weight[:, 0] = 1.0


def test_zero_convolutions_forecast_the_last_value():
    model = TCN(num_nodes=3, input_dim=2, channels=4, num_layers=3, kernel_size=2, horizon=4)
    _hand_set(model)
    x = _inputs(nodes=3, seq_len=8)
    with torch.no_grad():
        out = model(x)
    expected = x[:, -1:, :, :1].expand(-1, 4, -1, -1)  # persistence
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_one_dilated_tap_adds_the_value_two_steps_back():
    model = TCN(num_nodes=2, input_dim=1, channels=2, num_layers=2, kernel_size=2, horizon=1)
    _hand_set(model)
    with torch.no_grad():
        # Layer 1 (dilation 2) reads channel 0 two steps back into channel 1; its residual
        # adds channel 1 to channel 0. Positive speeds pass the ReLU unchanged.
        model.dilated[1].weight[1, 0, 0] = 1.0
        model.residual[1].weight[0, 1, 0] = 1.0
    x = torch.arange(1.0, 1.0 + 2 * 6).view(1, 6, 2, 1)  # (B, T, N, F), all positive
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out[0, 0, :, 0], x[0, -1, :, 0] + x[0, -3, :, 0])


class _Poisoned:
    """The windows of ``source`` with every target the mask drops set to a huge value."""

    def __init__(self, source) -> None:
        self.source = source

    def num_batches(self, split: str) -> int:
        return self.source.num_batches(split)

    def batches(self, split, generator=None, shard=None):
        for batch in self.source.batches(split, generator):
            dropped = ~batch.y_mask
            y, y_raw = batch.y.clone(), batch.y_raw.clone()
            y[..., 0][dropped] = 1e4
            y_raw[dropped] = 1e4
            yield dataclasses.replace(batch, y=y, y_raw=y_raw)


def test_masked_targets_do_not_move_the_weights():
    """Targets the mask drops change nothing in training: the trainer's masked loss gives the
    same weights whatever values they hold."""
    source, _ = _small()

    def trained(windows) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = TCN(num_nodes=source.speeds.num_sensors, input_dim=2, channels=4, horizon=3)
        settings = TrainConfig(epochs=2, base_lr=0.01, seed=0)
        Trainer(model, windows, settings, source.inverse, log=lambda m: None, progress=False).fit()
        return {k: v.clone() for k, v in model.state_dict().items()}

    assert any((~b.y_mask).any() for b in source.batches("train"))
    clean, poisoned = trained(source), trained(_Poisoned(source))
    moved = trained(source)  # a second clean run: training itself is deterministic
    for key in clean:
        torch.testing.assert_close(clean[key], poisoned[key], rtol=0, atol=0)
        torch.testing.assert_close(clean[key], moved[key], rtol=0, atol=0)
    assert any(not torch.equal(clean[k], v) for k, v in _initial(source).items())


def _initial(source) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TCN(num_nodes=source.speeds.num_sensors, input_dim=2, channels=4, horizon=3).state_dict()


def test_overfits_one_batch():
    source, _ = _small()
    torch.manual_seed(0)
    model = TCN(num_nodes=source.speeds.num_sensors, input_dim=2, channels=16, horizon=3)
    batch = next(source.batches("train"))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(300):
        loss = masked_mae_loss(model(batch.x)[..., 0], batch.y[..., 0], batch.y_mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_checkpoint_payload_rebuilds_the_same_model():
    torch.manual_seed(0)
    kwargs = {"num_nodes": 3, "input_dim": 2, "output_dim": 1, "channels": 4, "num_layers": 3,
              "kernel_size": 2, "horizon": 5}  # fmt: skip
    model = TCN(**kwargs)
    payload = {"model_name": "tcn", "model_kwargs": kwargs, "state_dict": model.state_dict()}
    rebuilt = build_model(payload)
    x = _inputs(nodes=3, seq_len=8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_kernel_size_one_is_refused():
    with pytest.raises(ValueError, match="kernel_size = 1"):
        TCN(num_nodes=2, input_dim=1, kernel_size=1)
