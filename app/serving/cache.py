"""The forecast cache's entry: the forecast from the latest stored window, made once per store
state and model, with what answering from it needs (the window, its coverage, rendered answers
and bands computed while it stays cached)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trafficcast.app.serving.loading import LoadedModel

# A band: ``lower``, ``upper``, each the shape of the forecast.
Bands = tuple[np.ndarray, np.ndarray]
# Bands kept per cached forecast, at most: clients may ask for any level.
MAX_CACHED_BANDS = 64


def window_bands(
    model: LoadedModel,
    window: np.ndarray,
    stamps: pd.DatetimeIndex,
    forecast: np.ndarray,
    level: float,
) -> Bands:
    """The calibrated band around ``model``'s forecast of one window (the model must have
    ``forecaster.intervals``). Shapes: ``window (seq_len, N)``, ``forecast (H, N)`` ->
    ``lower``, ``upper`` ``(H, N)``."""
    times = np.asarray(stamps, dtype="datetime64[ns]")
    lower, upper = model.forecaster.bands(window[None], times[None], forecast[None], level)
    return lower[0], upper[0]


@dataclass
class CachedForecast:
    model: LoadedModel
    generation: int
    last_observation: pd.Timestamp
    future: pd.DatetimeIndex
    forecast: np.ndarray  # (H, N) in the model's sensor order
    coverage: float
    stamps: pd.DatetimeIndex  # (seq_len,) the window the forecast is from
    window: np.ndarray  # (seq_len, N), NaN = missing
    # Cache hits for the same (sensors, horizon, interval) answer with the same bytes: serialising
    # 207 x 12 numbers is most of the cost of a cached read, so it is done once per query.
    rendered: dict[tuple[tuple[str, ...], int, float | None], bytes] = field(default_factory=dict)
    bands: dict[float, Bands] = field(default_factory=dict)

    def band(self, level: float) -> Bands:
        """The band at ``level``, computed once per level while cached."""
        bands = self.bands.get(level)
        if bands is None:
            bands = window_bands(self.model, self.window, self.stamps, self.forecast, level)
            if len(self.bands) < MAX_CACHED_BANDS:
                self.bands[level] = bands
        return bands
