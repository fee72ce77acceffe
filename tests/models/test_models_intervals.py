"""Prediction intervals (trafficcast.models.intervals) on synthetic residuals whose noise is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from trafficcast.models.intervals import FACTORS, IntervalCalibrator, check_level, hour_of_week_part

H, N, T = 3, 12, 6
RUSH_HOURS = (7, 8, 17, 18)


def make_split(rng: np.random.Generator, windows: int, skew: bool = False):
    """Forecasts with noise of known scale: larger at later steps, on some sensors and at rush
    hours; the history's variability carries no signal. Returns the calibrator's arguments."""
    start = np.datetime64("2012-03-05T00:00") + rng.integers(0, 5 * 288, windows) * np.timedelta64(
        5, "m"
    )
    times = start[:, None] + np.arange(1, H + 1) * np.timedelta64(5, "m")  # (B, H)
    hours = hour_of_week_part(times) % 24
    rush = np.isin(hours, RUSH_HOURS)[:, :, None]
    sigma = (1 + np.arange(H))[None, :, None] * np.linspace(0.5, 2, N)[None, None, :]
    sigma = sigma * np.where(rush, 3.0, 1.0)  # (B, H, N)
    forecast = rng.uniform(20, 60, (windows, H, N))
    noise = rng.exponential(1.0, forecast.shape) - 1.0 if skew else rng.normal(size=forecast.shape)
    y = forecast + sigma * noise
    history = rng.uniform(20, 60, (windows, T, N))
    return history, times, forecast, y, np.ones_like(y, dtype=bool), rush


def coverage(cal: IntervalCalibrator, split, level: float, where=None) -> float:
    history, times, forecast, y, _, _ = split
    lower, upper = cal.bands(forecast, history, times, level)
    inside = (y >= lower) & (y <= upper)
    return float(inside.mean() if where is None else inside[np.broadcast_to(where, y.shape)].mean())


@pytest.fixture(scope="module")
def fitted() -> tuple[IntervalCalibrator, tuple]:
    rng = np.random.default_rng(0)
    train, val, test = (make_split(rng, n) for n in (3000, 3000, 3000))
    # All four factors, the variability among them: it carries no signal here and must not hurt.
    cal = IntervalCalibrator(H, N, factors=FACTORS).fit_scale(*train[:5]).calibrate(*val[:5])
    return cal, test


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_coverage_lands_at_the_level_overall_and_at_rush_hour(fitted, level: float) -> None:
    cal, test = fitted
    assert coverage(cal, test, level) == pytest.approx(level, abs=0.01)
    rush = test[5]
    assert coverage(cal, test, level, rush) == pytest.approx(level, abs=0.02)
    assert coverage(cal, test, level, ~rush) == pytest.approx(level, abs=0.02)


def test_a_constant_width_misses_at_rush_hour_where_the_factors_do_not(fitted) -> None:
    _, test = fitted
    rng = np.random.default_rng(1)
    train, val = make_split(rng, 3000), make_split(rng, 3000)
    constant = IntervalCalibrator(H, N, factors=("step",))
    constant.fit_scale(*train[:5]).calibrate(*val[:5])
    assert coverage(constant, test, 0.8, test[5]) < 0.65  # too narrow where the noise is 3x


def test_asymmetric_bands_follow_skewed_noise() -> None:
    rng = np.random.default_rng(2)
    train, val, test = (make_split(rng, 3000, skew=True) for _ in range(3))
    cal = IntervalCalibrator(H, N, symmetric=False).fit_scale(*train[:5]).calibrate(*val[:5])
    lo, hi = cal.score_quantiles(0.8)
    # exponential noise: its 10th and 90th percentiles are -0.89 and +1.30 about the mean
    np.testing.assert_allclose(hi / -lo, 1.30 / 0.895, rtol=0.05)
    assert coverage(cal, test, 0.8) == pytest.approx(0.8, abs=0.01)


def test_bands_nest_and_never_cross_the_forecast(fitted) -> None:
    cal, (history, times, forecast, *_) = fitted
    previous = None
    for level in (0.5, 0.6, 0.8, 0.9, 0.95, 0.99):
        lower, upper = cal.bands(forecast, history, times, level)
        assert np.all(lower <= forecast) and np.all(forecast <= upper)
        assert np.all(upper - lower > 0)
        if previous is not None:
            assert np.all(lower <= previous[0]) and np.all(previous[1] <= upper)
            assert (upper - lower).mean() > (previous[1] - previous[0]).mean()
        previous = lower, upper


def test_bands_are_clipped_to_the_speed_range(fitted) -> None:
    cal, (history, times, forecast, *_) = fitted
    forecast = forecast.copy()
    forecast[:, :, 0] = 0.5  # near 0: the lower bound would go negative
    forecast[:, :, 1] = cal.max_speed - 0.5  # near the top
    forecast[:, :, 2] = cal.max_speed + 10  # a forecast above the range keeps its bound
    lower, upper = cal.bands(forecast, history, times, 0.95)
    assert lower.min() == 0.0 and np.all(lower[:, :, 0] == 0.0)
    assert np.all(upper[:, :, 1] == cal.max_speed)
    assert np.all(upper[:, :, 2] == forecast[:, :, 2])
    assert np.all(upper[:, :, :2] <= cal.max_speed)
    assert np.all(lower <= forecast) and np.all(forecast <= upper)


def test_state_round_trips_through_torch_save_weights_only(fitted) -> None:
    cal, (history, times, forecast, *_) = fitted
    buffer = io.BytesIO()
    torch.save({"intervals": cal.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["intervals"]
    assert state["version"] == 1
    again = IntervalCalibrator.from_state_dict(state)
    for a, b in zip(
        cal.bands(forecast, history, times, 0.8),
        again.bands(forecast, history, times, 0.8),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_state_of_another_version_is_refused(fitted) -> None:
    state = {**fitted[0].state_dict(), "version": 99}
    with pytest.raises(ValueError, match="version 99"):
        IntervalCalibrator.from_state_dict(state)


@pytest.mark.parametrize("level", [0.4, 1.0, float("nan"), 0.49999])
def test_levels_outside_half_to_one_are_refused(level: float) -> None:
    with pytest.raises(ValueError, match="at least 0.5 and below 1"):
        check_level(level)


def test_hour_of_week_part_separates_weekends() -> None:
    times = np.array(
        ["2012-03-03T08:10", "2012-03-04T23:59", "2012-03-05T00:00", "2012-03-07T17:30"],
        dtype="datetime64[ns]",
    )  # Saturday, Sunday, Monday, Wednesday
    np.testing.assert_array_equal(hour_of_week_part(times), [32, 47, 0, 17])


def test_variability_ignores_missing_readings() -> None:
    from trafficcast.models.intervals import window_variability

    history = np.array([[[50.0, 0.0]], [[54.0, np.nan]], [[0.0, 40.0]]])  # (T=3, ...) then batch
    v = window_variability(history.transpose(1, 0, 2))  # (1, 3, 2) -> (1, 2)
    np.testing.assert_allclose(v, [[2.0, np.nan]])
