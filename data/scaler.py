"""Z-score scaling of speeds, fitted on observed readings only."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

from trafficcast.data.errors import DataInputError

__all__ = ["StandardScaler"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


class StandardScaler:
    """``(x - mean) / std`` with one mean and std for all sensors, as in DCRNN.

    Deviation from DCRNN: the original fits on every training value, zeros included, so the
    missing readings of METR-LA (stored as 0) pull the mean down; here only observed readings
    (``mask`` True) count. ``transform`` does not know about missing values: a 0.0 placeholder
    becomes ``-mean / std``, so callers keep using the mask. Statistics use the population std
    (``ddof=0``, ``np.std``'s default, as DCRNN); a std of 0 becomes 1 so a constant series
    scales to zeros instead of dividing by zero.
    """

    def __init__(self, mean: float | None = None, std: float | None = None) -> None:
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)

    def fit(
        self, values: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None
    ) -> StandardScaler:
        """Mean and std over the observed entries of ``values``; returns ``self``.

        ``mask`` None means every finite value counts.

        Shapes:
            values, mask: any shape, the same for both (typically (T, N)).
        """
        values = _to_numpy(values).astype(np.float64, copy=False)
        if mask is None:
            mask = np.isfinite(values)
        else:
            mask = _to_numpy(mask).astype(bool, copy=False)
            if mask.shape != values.shape:
                raise DataInputError(
                    f"scaler: mask shape {mask.shape} does not match values {values.shape}"
                )
            mask = mask & np.isfinite(values)
        observed = values[mask]
        if observed.size == 0:
            raise DataInputError("scaler: no observed values to fit (every reading is missing)")
        mean = float(observed.mean())
        std = float(observed.std())
        self.mean = mean
        self.std = std if std > 0 and math.isfinite(std) else 1.0
        return self

    def transform(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """``(x - mean) / std``; a numpy array or a torch tensor (device and dtype kept)."""
        mean, std = self._params()
        return (x - mean) / std

    def inverse_transform(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """``x * std + mean``; a numpy array or a torch tensor (device and dtype kept)."""
        mean, std = self._params()
        return x * std + mean

    def state_dict(self) -> dict[str, float]:
        mean, std = self._params()
        return {"mean": mean, "std": std}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StandardScaler:
        """Rebuild a fitted scaler; keys ``mean`` and ``std`` (finite, std > 0), nothing else."""
        if not isinstance(state, dict):
            raise DataInputError(f"scaler state must be a dict, not {type(state).__name__}")
        unknown = sorted(set(state) - {"mean", "std"})
        missing = sorted({"mean", "std"} - set(state))
        if unknown or missing:
            raise DataInputError(
                f"scaler state: expected keys mean, std (missing: {', '.join(missing) or 'none'}; "
                f"unknown: {', '.join(map(str, unknown)) or 'none'})"
            )
        try:
            mean, std = float(state["mean"]), float(state["std"])
        except (TypeError, ValueError) as exc:
            raise DataInputError(f"scaler state: mean and std must be numbers ({exc})") from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DataInputError(f"scaler state: invalid mean {mean} / std {std}")
        return cls(mean=mean, std=std)

    def _params(self) -> tuple[float, float]:
        if self.mean is None or self.std is None:
            raise RuntimeError("StandardScaler is not fitted; call fit() or from_state_dict()")
        return self.mean, self.std

    def __repr__(self) -> str:
        return f"StandardScaler(mean={self.mean}, std={self.std})"


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
