"""One missing-value rule: the loss, the metrics and the trainer's MAE count the same targets.

The rule is the data's (``data.missing``), applied when the mask is made; here a target counts
where the mask says observed and it is not NaN, so a 0 the mask calls observed (a real flow of 0)
counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from trafficcast.models.config import TrainConfig
from trafficcast.models.metrics import MaskedMetrics, masked_mae_loss, observed
from trafficcast.models.trainer import Batch, Trainer

B, H, N = 2, 3, 4


def _batch_with_gaps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pred``, ``target``, ``mask`` ``(B, H, N)`` and which targets count, listed by hand.

    Spoilt targets: a 0 marked observed (a real reading, it counts), a NaN marked observed, real
    speeds marked missing, and a 0 and a NaN marked missing. Everything else is an ordinary
    observed reading.
    """
    gen = torch.Generator().manual_seed(0)
    target = 40.0 + 30.0 * torch.rand(B, H, N, generator=gen)
    pred = target + torch.randn(B, H, N, generator=gen) * 5.0
    mask = torch.ones(B, H, N, dtype=torch.bool)
    counts = torch.ones(B, H, N, dtype=torch.bool)
    target[0, 0, 1] = 0.0  # a 0 reading the mask calls observed: a real 0, e.g. a flow
    target[1, 2, 3] = math.nan  # a NaN the mask calls observed
    for b, h, n in [(0, 1, 2), (1, 0, 0), (1, 2, 1)]:
        mask[b, h, n] = False  # real speeds marked missing
    target[0, 2, 0], mask[0, 2, 0] = 0.0, False
    target[1, 1, 2], mask[1, 1, 2] = math.nan, False
    for b, h, n in [(1, 2, 3), (0, 1, 2), (1, 0, 0), (1, 2, 1), (0, 2, 0), (1, 1, 2)]:
        counts[b, h, n] = False
    return pred, target, mask, counts


def test_observed_is_the_mask_without_nans() -> None:
    y_raw = torch.tensor([55.0, 0.0, math.nan, 61.0, 0.0, math.nan])
    y_mask = torch.tensor([True, True, True, False, False, False])
    assert observed(y_raw, y_mask).tolist() == [True, True, False, False, False, False]


def test_loss_and_metrics_count_the_same_targets() -> None:
    pred, target, mask, counts = _batch_with_gaps()
    err = (pred - target).abs()
    expected = float(err[counts].mean())
    assert counts.sum() == B * H * N - 6

    loss = masked_mae_loss(pred, target, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-6)

    metrics = MaskedMetrics(H)
    metrics.update(pred, target, mask)
    assert metrics.count.tolist() == counts.sum(dim=(0, 2)).tolist()
    assert float(metrics.abs_sum.sum() / metrics.count.sum()) == pytest.approx(expected, rel=1e-6)
    for step in range(1, H + 1):
        by_hand = err[:, step - 1][counts[:, step - 1]]
        assert metrics.at(step)["mae"] == pytest.approx(float(by_hand.mean()), rel=1e-6)
        assert metrics.at(step)["rmse"] == pytest.approx(
            math.sqrt(float((by_hand**2).mean())), rel=1e-6
        )


def test_loss_gradient_reaches_only_the_targets_that_count() -> None:
    pred, target, mask, counts = _batch_with_gaps()
    pred.requires_grad_(True)
    masked_mae_loss(pred, target, mask).backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~counts] == 0).all()
    assert (pred.grad[counts] != 0).all()


def test_loss_still_shows_a_nan_prediction_where_the_target_does_not_count() -> None:
    # The training loop detects a diverged model by a non-finite loss.
    pred, target, mask, _ = _batch_with_gaps()
    pred[0, 1, 2] = math.nan  # its target is masked
    assert math.isnan(float(masked_mae_loss(pred, target, mask)))


class _FixedForecast(nn.Module):
    """A model whose forecast is given: the test is about which targets count, not the model."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = nn.Parameter(pred[..., None].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred


class _OneBatch:
    def __init__(self, target: torch.Tensor, mask: torch.Tensor) -> None:
        self.batch = Batch(
            x=torch.zeros(B, 1, N, 1), y=torch.zeros(B, H, N, 1), y_raw=target, y_mask=mask
        )

    def num_batches(self, split: str) -> int:
        return 1

    def batches(self, split: str, generator=None, shard=None) -> Iterator[Batch]:
        yield self.batch


def test_trainer_mae_counts_the_same_targets_as_loss_and_metrics() -> None:
    pred, target, mask, counts = _batch_with_gaps()
    trainer = Trainer(
        _FixedForecast(pred), _OneBatch(target, mask), TrainConfig(), lambda t: t, log=print
    )
    expected = float((pred - target).abs()[counts].mean())
    assert trainer.evaluate_mae("test") == pytest.approx(expected, rel=1e-6)
    metrics = trainer.evaluate("test")
    assert float(metrics.abs_sum.sum() / metrics.count.sum()) == pytest.approx(expected, rel=1e-6)
    assert float(masked_mae_loss(pred, target, mask)) == pytest.approx(expected, rel=1e-6)


def test_average_pools_every_step_by_hand() -> None:
    """Two steps of three sensors: step 1 errors 2, 3, 0 on targets 10, 20, 50; step 2 a real 0
    target (error 1, no percentage), a target marked missing (error 59, counts nowhere) and an
    error of 5 on 25. Pooled: MAE 11/5, RMSE sqrt(39/5), MAPE (0.2 + 0.15 + 0 + 0.2)/4. The mean
    of the per-step figures would be MAE (5/3 + 6/2)/2 = 2.33 and RMSE 2.84: not these."""
    target = torch.tensor([[[10.0, 20.0, 50.0], [0.0, 40.0, 25.0]]])
    pred = torch.tensor([[[12.0, 17.0, 50.0], [1.0, 99.0, 20.0]]])
    mask = torch.tensor([[[True, True, True], [True, False, True]]])
    metrics = MaskedMetrics(2)
    # Two updates, as evaluation goes batch by batch: the sums carry over.
    metrics.update(pred[:, :, :2], target[:, :, :2], mask[:, :, :2])
    metrics.update(pred[:, :, 2:], target[:, :, 2:], mask[:, :, 2:])
    average = metrics.average()
    assert average["mae"] == pytest.approx(2.2)
    assert average["rmse"] == pytest.approx(math.sqrt(7.8))
    assert average["mape_pct"] == pytest.approx(13.75)
    assert metrics.at(1)["mae"] == pytest.approx(5 / 3) and metrics.at(2)["mae"] == 3.0


def test_average_of_nothing_counted_is_nan() -> None:
    metrics = MaskedMetrics(3)
    metrics.update(torch.ones(1, 3, 2), torch.ones(1, 3, 2), torch.zeros(1, 3, 2, dtype=torch.bool))
    assert all(math.isnan(v) for v in metrics.average().values())
