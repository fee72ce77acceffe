"""Calendar features and the masked standard scaler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trafficcast.data import DataInputError, StandardScaler, day_of_week, time_features, time_of_day


def test_time_of_day_and_day_of_week():
    index = pd.DatetimeIndex(
        ["2012-03-01 00:00", "2012-03-01 06:00", "2012-03-03 12:00", "2012-03-04 23:55"]
    )
    tod = time_of_day(index)
    assert tod.dtype == np.float32
    np.testing.assert_allclose(tod, [0.0, 0.25, 0.5, 1435 / 1440], rtol=1e-6)
    assert tod.max() < 1.0
    dow = day_of_week(index)
    assert dow.dtype == np.int64
    np.testing.assert_array_equal(dow, [3, 3, 5, 6])  # 2012-03-01 was a Thursday


def test_time_features_one_hot():
    index = pd.date_range("2012-03-05", periods=3, freq="1D") + pd.Timedelta(hours=18)
    only = time_features(index)
    assert only.shape == (3, 1) and only.dtype == np.float32
    np.testing.assert_allclose(only[:, 0], 0.75)
    full = time_features(index, day_of_week=True)
    assert full.shape == (3, 8) and full.dtype == np.float32
    np.testing.assert_array_equal(full[:, 1:].argmax(axis=1), [0, 1, 2])  # Mon, Tue, Wed
    np.testing.assert_array_equal(full[:, 1:].sum(axis=1), 1.0)


def test_scaler_uses_observed_values_only():
    values = np.array([[10.0, 0.0], [20.0, 30.0], [0.0, 40.0]], dtype=np.float32)
    mask = values != 0
    scaler = StandardScaler().fit(values, mask)
    assert scaler.mean == pytest.approx(25.0)
    assert scaler.std == pytest.approx(np.std([10.0, 20.0, 30.0, 40.0]))
    out = scaler.transform(values)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[1, 1], (30.0 - 25.0) / scaler.std, rtol=1e-6)
    np.testing.assert_allclose(scaler.inverse_transform(out), values, rtol=1e-6, atol=1e-5)


def test_scaler_torch_keeps_type_device_dtype_and_round_trips():
    scaler = StandardScaler().fit(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4, bool))
    x = torch.tensor([[1.0, 4.0]], dtype=torch.float64)
    z = scaler.transform(x)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float64 and z.device == x.device
    torch.testing.assert_close(z, (x - 2.5) / np.std([1, 2, 3, 4]))
    torch.testing.assert_close(scaler.inverse_transform(z), x)
    half = scaler.transform(x.float())
    assert half.dtype == torch.float32


def test_scaler_state_dict_round_trip_and_edge_cases():
    scaler = StandardScaler().fit(np.array([[5.0, 7.0]]), np.array([[True, True]]))
    state = scaler.state_dict()
    assert state == {"mean": 6.0, "std": 1.0}
    again = StandardScaler.from_state_dict(state)
    np.testing.assert_array_equal(
        again.transform(np.array([8.0])), scaler.transform(np.array([8.0]))
    )
    constant = StandardScaler().fit(np.full((3, 3), 50.0), np.ones((3, 3), bool))
    assert (constant.mean, constant.std) == (50.0, 1.0)  # std 0 -> 1
    with pytest.raises(DataInputError, match="no observed values"):
        StandardScaler().fit(np.zeros((4, 2)), np.zeros((4, 2), bool))
    with pytest.raises(DataInputError, match="unknown: scale"):
        StandardScaler.from_state_dict({"mean": 1.0, "std": 1.0, "scale": 2})
    with pytest.raises(RuntimeError, match="not fitted"):
        StandardScaler().transform(np.ones(2))
