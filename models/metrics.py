"""Masked losses and metrics, as DCRNN computes them: a target that is 0 or missing counts nowhere.

The mask is renormalised to mean 1 over the batch (DCRNN's ``mask /= mask.mean()``) so that the
loss is the mean absolute error over observed targets only, whatever fraction is missing.
"""

from __future__ import annotations

import math

import torch


def observed(y_raw: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """Where a target counts: marked observed by ``y_mask``, not 0 and not NaN.

    The one rule for the loss, the metrics and the training loop's MAE. METR-LA stores a
    missing reading as 0, so a 0 target counts nowhere even where ``y_mask`` says observed
    (DCRNN masks ``labels != 0``); a NaN target is missing whatever the mask says.

    Shapes: ``y_raw`` and ``y_mask`` broadcastable to one shape; returns a bool tensor of it.
    """
    return y_mask.bool() & (y_raw != 0) & ~torch.isnan(y_raw)


def masked_mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the targets that count (:func:`observed`); 0 if none does.

    ``target`` is in data units, where a 0 means a missing reading: on scaled targets a 0 would
    be a real value and would wrongly not count.

    Shapes: ``pred``, ``target``, ``mask`` broadcastable to one shape; returns a scalar.
    """
    counts = observed(target, mask)
    weight = counts.to(pred.dtype)
    count = weight.sum()
    if count == 0:
        return (pred * 0).sum()
    # A target that does not count is replaced, since a NaN target times 0 is still NaN; the
    # error is multiplied by the weight, not selected, so that a NaN prediction anywhere still
    # makes the loss NaN: that is how the training loop notices a diverged model.
    target = torch.where(counts, target, 0.0)
    return (torch.abs(pred - target) * weight).sum() / count


class MaskedMetrics:
    """Accumulates masked MAE, RMSE and MAPE per horizon step over batches (chunked evaluation).

    Shapes: ``update(pred, target, mask)`` with ``(B, H, N)``; sums are kept per horizon step.
    """

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.abs_sum = torch.zeros(horizon, dtype=torch.float64)
        self.sq_sum = torch.zeros(horizon, dtype=torch.float64)
        self.pct_sum = torch.zeros(horizon, dtype=torch.float64)
        self.count = torch.zeros(horizon, dtype=torch.float64)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        pred = pred.detach().to("cpu", torch.float64)
        target = target.detach().to("cpu", torch.float64)
        mask = observed(target, mask.detach().to("cpu"))
        err = (pred - target).masked_fill(~mask, 0.0)
        safe_target = target.masked_fill(~mask, 1.0)
        self.abs_sum += err.abs().sum(dim=(0, 2))
        self.sq_sum += (err**2).sum(dim=(0, 2))
        self.pct_sum += (err.abs() / safe_target.abs()).masked_fill(~mask, 0.0).sum(dim=(0, 2))
        self.count += mask.sum(dim=(0, 2)).to(torch.float64)

    def at(self, step: int) -> dict[str, float]:
        """Metrics at horizon ``step`` (1-based, e.g. 3 = 15 minutes of 5-minute data)."""
        i = step - 1
        n = float(self.count[i])
        if n == 0:
            return {"mae": math.nan, "rmse": math.nan, "mape_pct": math.nan}
        return {
            "mae": float(self.abs_sum[i]) / n,
            "rmse": math.sqrt(float(self.sq_sum[i]) / n),
            "mape_pct": 100.0 * float(self.pct_sum[i]) / n,
        }

    def mae_by_step(self) -> list[float]:
        return [self.at(s)["mae"] for s in range(1, self.horizon + 1)]
