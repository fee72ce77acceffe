r"""Prediction intervals: normalised split-conformal bands around a point forecast.

For a window :math:`b`, horizon step :math:`h` and sensor :math:`n`, the residual
:math:`r = y - \hat y` is scaled by a difficulty estimate :math:`\hat\sigma`, and the band at
central coverage :math:`\alpha` is

.. math::

    \hat y \pm \hat\sigma_{bhn}\, Q_h(\alpha)

where :math:`Q_h` is the empirical quantile function of the scores :math:`|r| / \hat\sigma` at
step :math:`h` on windows the model did not train on (split conformal prediction, Lei et al. 2018,
with the normalised score of their section 5.2). With ``symmetric=False`` the scores are signed,
:math:`e = r / \hat\sigma`, and the band is
:math:`[\hat y + \hat\sigma \min(Q_h(\frac{1-\alpha}{2}), 0),\ \hat y + \hat\sigma \max(Q_h(\frac{1+\alpha}{2}), 0)]`;
on the bundled week it was wider at equal coverage (``bench/intervals.py``), so it is not the
default. All levels come from the same :math:`Q_h`, so a wider level's band holds a narrower
one's. Bands are clipped to ``[0, max_speed]`` (the range of the data the scale was fitted on);
a bound that clipping would push past the forecast stays at the forecast, so
``lower <= forecast <= upper`` always.

The difficulty is multiplicative in categorical factors (a log-linear model of the mean absolute
residual):

.. math::

    \log \hat\sigma_{bhn} = c + \sum_k a_k[g_k(b, h, n)]

with factors among :data:`FACTORS`: the horizon step; the sensor (its own error level); the hour
of day of the target, weekdays and weekends apart (weekends have no rush hours); and, per step,
the bin of the recent variability (standard deviation of the sensor's observed readings in the
input window; a bin of its own when under two are observed). :data:`DEFAULT_FACTORS` are the
first three: the variability measured no gain (``bench/intervals.py``). It is fitted to
:math:`|r|` by the score equations of a log-link quasi-Poisson model, cyclically per factor:
:math:`a_k[g] \mathrel{+}= \log(\sum_g |r| / \sum_g \hat\sigma)`, shrunk towards 0 for levels
with few residuals.

The residuals the scale is fitted to need not be the model's: only its shape matters, the
calibration sets its level. A model's residuals on its own training windows are a poor guide,
smaller than on new data and unevenly so (a network fits the training days' rush hours closely),
so :mod:`trafficcast.app.pipeline.calibrate` fits the scale to the residuals of the persistence forecast on the
training windows, which no fitting has shrunk. The quantiles must come from held-out windows.
The finite-sample correction of split conformal (the :math:`\lceil (n+1)\alpha \rceil`-th score)
is left out: with tens of thousands of scores per step it moves a quantile by less than the
interpolation grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

STATE_VERSION = 1
FACTORS = ("step", "sensor", "hour", "variability")
DEFAULT_FACTORS = ("step", "sensor", "hour")
# Quantile functions are stored on this grid of probabilities and interpolated linearly between
# its points, which keeps them monotone in the level (so bands nest).
GRID_POINTS = 1001
VARIABILITY_BINS = 8
_SHRINK = 50.0  # pseudo-residuals that pull a sparse factor level towards no effect
_SWEEPS = 12


def check_level(level: float) -> float:
    """``level`` as a float; ``ValueError`` unless it is a central coverage in [0.5, 1)."""
    level = float(level)
    if not 0.5 <= level < 1.0:  # also refuses NaN
        raise ValueError(f"interval level {level!r} must be at least 0.5 and below 1")
    return level


def window_variability(history: np.ndarray) -> np.ndarray:
    """Standard deviation of each sensor's observed readings in each input window; NaN where
    fewer than two are observed (0 or non-finite = missing).

    Shapes: ``history (B, T, N)`` -> ``(B, N)``.
    """
    x = np.asarray(history, dtype=np.float64)
    observed = np.isfinite(x) & (x != 0)
    count = observed.sum(axis=1)
    x = np.where(observed, x, 0.0)
    mean = x.sum(axis=1) / np.maximum(count, 1)
    var = (np.where(observed, (x - mean[:, None]) ** 2, 0.0)).sum(axis=1) / np.maximum(count, 1)
    return np.where(count >= 2, np.sqrt(var), np.nan)


def hour_of_week_part(times: np.ndarray) -> np.ndarray:
    """Hour of the day, plus 24 on Saturdays and Sundays. Shapes: ``(...)`` datetime64 ->
    ``(...)`` int64 in [0, 48)."""
    t = np.asarray(times, dtype="datetime64[h]").astype(np.int64)  # hours since 1970-01-01
    days = t // 24
    weekend = (days + 3) % 7 >= 5  # 1970-01-01 was a Thursday: Monday is 0
    return t % 24 + 24 * weekend


class IntervalCalibrator:
    """Calibrated prediction intervals for forecasts of shape ``(B, H, N)``.

    Shapes: ``history (B, T, N)`` the input windows in data units (0 or NaN = missing);
    ``target_times (B, H)`` datetime64 of each forecast step; ``forecast``, ``y`` and
    ``y_mask`` ``(B, H, N)``. Use :meth:`fit_scale` (on residuals of any forecast, e.g. the
    persistence forecast's on the training windows), then :meth:`calibrate` (on the model's
    residuals on held-out windows only), then :meth:`bands`.
    """

    def __init__(
        self,
        horizon: int,
        num_nodes: int,
        factors: Sequence[str] = DEFAULT_FACTORS,
        variability_bins: int = VARIABILITY_BINS,
        symmetric: bool = True,
    ) -> None:
        unknown = sorted(set(factors) - set(FACTORS))
        if unknown:
            raise ValueError(f"unknown interval factors {unknown}; known: {list(FACTORS)}")
        self.horizon = horizon
        self.num_nodes = num_nodes
        self.factors = tuple(factors)
        self.variability_bins = variability_bins
        self.symmetric = symmetric
        self.variability_edges = np.zeros(0)
        self.intercept = 0.0
        self.coef = {k: np.zeros(self._levels(k)) for k in self.factors}
        self.quantiles = np.zeros((horizon, 0))  # (H, GRID_POINTS) once calibrated
        self.max_speed = 0.0
        self.calibration_count = 0

    def _levels(self, factor: str) -> int:
        return {
            "step": self.horizon,
            "sensor": self.num_nodes,
            "hour": 48,
            "variability": self.horizon * (self.variability_bins + 1),
        }[factor]

    # ---- the difficulty estimate -------------------------------------------------------
    def _groups(self, history: np.ndarray, target_times: np.ndarray) -> dict[str, np.ndarray]:
        """The level of each factor per entry. Shapes: each ``(B, H, N)`` int64 (broadcast)."""
        b, h, n = len(history), self.horizon, self.num_nodes
        shape = (b, h, n)
        groups: dict[str, np.ndarray] = {}
        for k in self.factors:
            if k == "step":
                g = np.arange(h)[None, :, None]  # (1, H, 1)
            elif k == "sensor":
                g = np.arange(n)[None, None, :]  # (1, 1, N)
            elif k == "hour":
                g = hour_of_week_part(target_times)[:, :, None]  # (B, H, 1)
            else:
                v = window_variability(history)  # (B, N)
                vbin = np.digitize(v, self.variability_edges)  # NaN lands past the last edge
                vbin = np.where(np.isnan(v), self.variability_bins, vbin)
                g = np.arange(h)[None, :, None] * (self.variability_bins + 1) + vbin[:, None, :]
            groups[k] = np.broadcast_to(g, shape)
        return groups

    def scale(self, history: np.ndarray, target_times: np.ndarray) -> np.ndarray:
        """The difficulty estimate :math:`\\hat\\sigma`. Shapes: -> ``(B, H, N)``."""
        eta = np.full((len(history), self.horizon, self.num_nodes), self.intercept)
        for k, g in self._groups(history, target_times).items():
            eta += self.coef[k][g]
        sigma: np.ndarray = np.exp(eta)  # (B, H, N)
        return sigma

    def fit_scale(
        self,
        history: np.ndarray,
        target_times: np.ndarray,
        forecast: np.ndarray,
        y: np.ndarray,
        y_mask: np.ndarray,
    ) -> IntervalCalibrator:
        """Fit the difficulty model and the variability bins to the residuals where ``y_mask``;
        record the largest observed speed as the upper clip."""
        mask = np.asarray(y_mask, dtype=bool) & (y != 0)
        v = window_variability(history)
        probs = np.linspace(0, 1, self.variability_bins + 1)[1:-1]
        self.variability_edges = np.nanquantile(v, probs) if np.isfinite(v).any() else probs * 0
        hist = np.asarray(history, dtype=np.float64)
        observed = np.concatenate([hist[np.isfinite(hist)], np.asarray(y, np.float64)[mask]])
        self.max_speed = float(observed.max())
        err = np.abs(np.asarray(y, np.float64) - forecast)[mask]
        groups = {k: g[mask] for k, g in self._groups(history, target_times).items()}
        self.intercept = float(np.log(err.mean()))
        eta = np.full(err.shape, self.intercept)
        for _ in range(_SWEEPS):
            for k, g in groups.items():
                fitted = np.exp(eta)
                levels = self._levels(k)
                count = np.bincount(g, minlength=levels)
                num = np.bincount(g, weights=err, minlength=levels)
                den = np.bincount(g, weights=fitted, minlength=levels)
                prior = _SHRINK * den / np.maximum(count, 1)  # the level's mean fit, per residual
                step = np.log((num + prior + 1e-12) / (den + prior + 1e-12))
                self.coef[k] = self.coef[k] + step
                eta += step[g]
        return self

    # ---- calibration -------------------------------------------------------------------
    def calibrate(
        self,
        history: np.ndarray,
        target_times: np.ndarray,
        forecast: np.ndarray,
        y: np.ndarray,
        y_mask: np.ndarray,
    ) -> IntervalCalibrator:
        """Store, per step, the quantile function of the scores ``(y - forecast) / sigma`` on
        these windows, which must be held out from training."""
        mask = np.asarray(y_mask, dtype=bool) & (y != 0)
        scores = (np.asarray(y, np.float64) - forecast) / self.scale(history, target_times)
        if self.symmetric:
            scores = np.abs(scores)
        grid = np.linspace(0.0, 1.0, GRID_POINTS)
        rows = []
        for h in range(self.horizon):
            s = scores[:, h][mask[:, h]]
            if s.size == 0:
                raise ValueError(f"no observed targets at horizon step {h + 1} to calibrate on")
            rows.append(np.quantile(s, grid))
        self.quantiles = np.stack(rows)  # (H, GRID_POINTS)
        self.calibration_count = int(mask.sum())
        return self

    @property
    def calibrated(self) -> bool:
        return self.quantiles.shape[1] == GRID_POINTS

    def score_quantiles(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The lower and upper score multipliers at ``level``, clamped to keep the forecast
        inside. Shapes: -> ``(H,)``, ``(H,)``; lower <= 0 <= upper."""
        level = check_level(level)
        if not self.calibrated:
            raise ValueError("the interval calibrator is not calibrated")
        grid = np.linspace(0.0, 1.0, GRID_POINTS)
        if self.symmetric:
            hi = np.array([np.interp(level, grid, q) for q in self.quantiles])
            return -hi, hi
        lo = np.array([np.interp((1 - level) / 2, grid, q) for q in self.quantiles])
        hi = np.array([np.interp((1 + level) / 2, grid, q) for q in self.quantiles])
        return np.minimum(lo, 0.0), np.maximum(hi, 0.0)

    def bands(
        self,
        forecast: np.ndarray,
        history: np.ndarray,
        target_times: np.ndarray,
        level: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The band at central coverage ``level``. Shapes: -> ``lower``, ``upper`` ``(B, H, N)``
        with ``lower <= forecast <= upper``."""
        lo, hi = self.score_quantiles(level)
        sigma = self.scale(history, target_times)
        f = np.asarray(forecast, dtype=np.float64)
        lower = np.minimum(np.maximum(f + sigma * lo[:, None], 0.0), f)
        upper = np.maximum(np.minimum(f + sigma * hi[:, None], self.max_speed), f)
        return lower, upper

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain lists and numbers: loadable with ``torch.load(weights_only=True)``."""
        return {
            "version": STATE_VERSION,
            "method": "normalised split-conformal",
            "symmetric": self.symmetric,
            "horizon": self.horizon,
            "num_nodes": self.num_nodes,
            "factors": list(self.factors),
            "variability_bins": self.variability_bins,
            "variability_edges": self.variability_edges.tolist(),
            "intercept": self.intercept,
            "coef": {k: v.tolist() for k, v in self.coef.items()},
            "quantiles": self.quantiles.tolist(),
            "max_speed": self.max_speed,
            "calibration_count": self.calibration_count,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> IntervalCalibrator:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"interval calibration version {state.get('version')!r} is not supported "
                f"(this trafficcast reads version {STATE_VERSION})"
            )
        cal = cls(
            int(state["horizon"]),
            int(state["num_nodes"]),
            state["factors"],
            int(state["variability_bins"]),
            bool(state["symmetric"]),
        )
        cal.variability_edges = np.asarray(state["variability_edges"], dtype=np.float64)
        cal.intercept = float(state["intercept"])
        cal.coef = {k: np.asarray(v, dtype=np.float64) for k, v in state["coef"].items()}
        cal.quantiles = np.asarray(state["quantiles"], dtype=np.float64).reshape(cal.horizon, -1)
        cal.max_speed = float(state["max_speed"])
        cal.calibration_count = int(state["calibration_count"])
        return cal
