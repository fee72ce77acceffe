"""The API's forecast for the last hour of the bundled week equals ``trafficcast predict``'s."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from trafficcast import data
from trafficcast.app.pipeline import predict_run
from trafficcast.app.service import create_app


def test_post_forecast_equals_predict(service_settings, service_run_dir, tmp_path) -> None:
    week = data.read_speeds(data.sample_speeds_path())
    frame = predict_run(
        service_run_dir, data.sample_speeds_path(), "2012-03-07T23:55:00", tmp_path / "p.csv"
    )
    last_hour = slice(week.num_steps - 12, week.num_steps)
    values = np.where(week.mask[last_hour], week.values[last_hour], np.nan)
    body = {
        "timestamps": [t.isoformat() for t in week.index[last_hour]],
        "sensors": week.sensor_ids,
        "speeds": [[None if math.isnan(v) else float(v) for v in row] for row in values],
    }
    with TestClient(create_app(service_settings)) as c:
        got = c.post("/v1/forecast", json=body).json()
    assert got["timestamps"] == [t.isoformat() for t in frame.index]
    assert got["sensors"] == list(frame.columns)
    np.testing.assert_allclose(np.array(got["forecast"]), frame.to_numpy(), rtol=0, atol=1e-4)
    # The CSV `trafficcast predict` writes holds the same numbers (to its 4 decimals).
    written = pd.read_csv(tmp_path / "p.csv", index_col=0)
    np.testing.assert_allclose(np.array(got["forecast"]), written.to_numpy(), atol=1e-4 + 5e-5)
