"""Masked losses and metrics, as DCRNN computes them: a missing target counts nowhere.

What is missing is a rule of the data (``data.missing``: a 0 is a missing speed in METR-LA but a
real flow at 3 am), decided once when the data is read and carried by the mask; here a target
counts where the mask says observed and it is not NaN. On METR-LA-style data (the ``zero`` rule)
the mask already excludes zeros, so this is DCRNN's ``labels != 0`` masking.

The mask is renormalised to mean 1 over the batch (DCRNN's ``mask /= mask.mean()``) so that the
loss is the mean absolute error over observed targets only, whatever fraction is missing.
"""

from __future__ import annotations

import math

import torch


def observed(y_raw: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """Where a target counts: marked observed by ``y_mask`` and not NaN.

    The one rule for the loss, the metrics and the training loop's MAE. Whether a 0 is a
    reading or a gap was decided by the data's missing-value rule when the mask was made
    (:func:`data.read_speeds`), so a 0 marked observed counts (a real flow of 0); a NaN target
    is missing whatever the mask says.

    Shapes: ``y_raw`` and ``y_mask`` broadcastable to one shape; returns a bool tensor of it.
    """
    return y_mask.bool() & ~torch.isnan(y_raw)


def masked_mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the targets that count (:func:`observed`); 0 if none does.

    ``target`` is in data units; a missing target's placeholder value is never used.

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

    MAPE is the mean over the targets that count and are not 0: a real 0 (a flow at night)
    counts in MAE and RMSE but has no percentage error.

    Shapes: ``update(pred, target, mask)`` with ``(B, H, N)``; sums are kept per horizon step.
    """

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.abs_sum = torch.zeros(horizon, dtype=torch.float64)
        self.sq_sum = torch.zeros(horizon, dtype=torch.float64)
        self.pct_sum = torch.zeros(horizon, dtype=torch.float64)
        self.count = torch.zeros(horizon, dtype=torch.float64)
        self.pct_count = torch.zeros(horizon, dtype=torch.float64)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        pred = pred.detach().to("cpu", torch.float64)
        target = target.detach().to("cpu", torch.float64)
        mask = observed(target, mask.detach().to("cpu"))
        err = (pred - target).masked_fill(~mask, 0.0)
        pct_mask = mask & (target != 0)
        safe_target = target.masked_fill(~pct_mask, 1.0)
        self.abs_sum += err.abs().sum(dim=(0, 2))
        self.sq_sum += (err**2).sum(dim=(0, 2))
        self.pct_sum += (err.abs() / safe_target.abs()).masked_fill(~pct_mask, 0.0).sum(dim=(0, 2))
        self.count += mask.sum(dim=(0, 2)).to(torch.float64)
        self.pct_count += pct_mask.sum(dim=(0, 2)).to(torch.float64)

    def at(self, step: int) -> dict[str, float]:
        """Metrics at horizon ``step`` (1-based, e.g. 3 = 15 minutes of 5-minute data)."""
        i = step - 1
        sums = (self.abs_sum[i], self.sq_sum[i], self.pct_sum[i])
        return _metrics(*sums, self.count[i], self.pct_count[i])

    def average(self) -> dict[str, float]:
        """Metrics over every horizon step at once: each target that counts, at whatever step,
        weighs the same, so RMSE is the root of the mean square over all of them (not the mean
        of the per-step RMSEs). This is the "average over the 12 horizons" of the PEMS0x tables
        (STSGCN's and AGCRN's test code pool the whole ``(B, H, N)`` output this way)."""
        sums = (self.abs_sum.sum(), self.sq_sum.sum(), self.pct_sum.sum())
        return _metrics(*sums, self.count.sum(), self.pct_count.sum())

    def mae_by_step(self) -> list[float]:
        return [self.at(s)["mae"] for s in range(1, self.horizon + 1)]


def _metrics(
    abs_sum: torch.Tensor,
    sq_sum: torch.Tensor,
    pct_sum: torch.Tensor,
    count: torch.Tensor,
    pct_count: torch.Tensor,
) -> dict[str, float]:
    """MAE, RMSE and MAPE (in percent) from the sums of :class:`MaskedMetrics`; NaN where no
    target counted."""
    n = float(count)
    if n == 0:
        return {"mae": math.nan, "rmse": math.nan, "mape_pct": math.nan}
    n_pct = float(pct_count)
    return {
        "mae": float(abs_sum) / n,
        "rmse": math.sqrt(float(sq_sum) / n),
        "mape_pct": 100.0 * float(pct_sum) / n_pct if n_pct else math.nan,
    }
