"""The pipeline on the real bundled METR-LA week, and the Forecaster against the trained model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from trafficcast.app.forecaster import Forecaster
from trafficcast.app.pipeline import (
    TrainOptions,
    WindowSource,
    prepare_data,
    read_graph,
    train_run,
)
from trafficcast.app.settings import BUNDLED_RUN_DIR
from trafficcast.data import (
    DataInputError,
    SpeedData,
    make_synthetic,
    read_speeds,
    sample_adjacency_pkl_path,
    sample_speeds_path,
)
from trafficcast.graph import save_adjacency
from trafficcast.models import RunConfig
from trafficcast.models.baselines import time_slots
from trafficcast.models.checkpoint import build_model, load_checkpoint


@pytest.fixture(scope="module")
def week() -> SpeedData:
    return read_speeds(sample_speeds_path())


# ---- data preparation ------------------------------------------------------------------------
def test_real_week_splits_as_dcrnn(week):
    prepared = prepare_data(week, RunConfig())
    counts = {k: len(v) for k, v in prepared.splits.items()}
    assert counts == {"train": 1395, "val": 199, "test": 399}
    assert prepared.splits["test"][-1] + 24 == 2016  # the last target is the last row
    assert prepared.train_rows() == 1395 + 23
    assert prepared.input_dim == 2  # speed + time of day


def test_scaler_is_fit_on_training_rows_only(week):
    prepared = prepare_data(week, RunConfig())
    rows = prepared.train_rows()
    observed = week.values[:rows][week.mask[:rows]].astype(np.float64)
    assert prepared.scaler.mean == pytest.approx(observed.mean(), rel=1e-9)
    assert prepared.scaler.std == pytest.approx(observed.std(), rel=1e-9)
    everything = week.values[week.mask].astype(np.float64)
    assert abs(everything.mean() - prepared.scaler.mean) > 1e-3  # the check can tell them apart

    # Changing the validation/test rows leaves the scaler alone; changing a training row does not.
    later = week.values.copy()
    later[rows:] *= 2.0
    changed = prepare_data(dataclasses.replace(week, values=later), RunConfig())
    assert changed.scaler.state_dict() == prepared.scaler.state_dict()
    last_train = week.values.copy()
    last_train[rows - 1] += 10.0
    nudged = prepare_data(dataclasses.replace(week, values=last_train), RunConfig())
    assert nudged.scaler.mean != prepared.scaler.mean


def test_features_and_batches_hold_the_right_rows(week):
    prepared = prepare_data(week, RunConfig())
    mean, std = prepared.scaler.mean, prepared.scaler.std
    source = WindowSource(prepared, {"train": 4, "val": 4, "test": 4}, torch.device("cpu"))
    batch = source.batch_at(np.array([0, 1500]))
    assert batch.x.shape == (2, 12, 207, 2) and batch.y_raw.shape == (2, 12, 207)
    # Window 1500: inputs rows 1500..1511, targets rows 1512..1523.
    expected_x = (torch.from_numpy(week.values[1500:1512]) - mean) / std
    torch.testing.assert_close(batch.x[1, :, :, 0], expected_x)
    assert torch.equal(batch.y_raw[1], torch.from_numpy(week.values[1512:1524]))
    torch.testing.assert_close(batch.y[1, :, :, 0], (batch.y_raw[1] - mean) / std)
    # Time of day: row 0 is midnight, row 1512 is 06:00 on day 6 (1512 = 5·288 + 72).
    assert batch.x[0, 0, 0, 1].item() == 0.0
    assert prepared.features[1512, 0, 1].item() == pytest.approx(0.25)
    assert len(list(source.batches("test"))) == math.ceil(399 / 4)


def test_slots_are_the_time_of_day_slot_at_the_data_frequency(week):
    """The slots index the historical average's table: 288 a day for 5-minute data, 96 for
    15-minute data (counted here from the clock, independently of ``time_slots``)."""
    slots = prepare_data(week, RunConfig()).slots
    assert slots[0] == 0 and slots[1512] == 72 and slots.max() == 287
    quarter = make_synthetic(num_sensors=3, num_days=2, seed=4, freq_minutes=15).speeds
    slots = prepare_data(quarter, RunConfig()).slots
    expected = quarter.index.hour * 4 + quarter.index.minute // 15
    assert np.array_equal(slots, np.asarray(expected)) and slots.max() == 95
    assert np.array_equal(slots, time_slots(quarter.index.hour * 60 + quarter.index.minute, 15))


def test_read_graph_names_whose_sensors_the_graph_lacks(tmp_path):
    ids = ["a", "b", "c"]
    save_adjacency(tmp_path / "adj.npz", ["c", "a", "x"], np.eye(3, dtype=np.float32))
    assert read_graph(ids, None, None) is None
    with pytest.raises(DataInputError) as err:
        read_graph(ids, None, tmp_path / "adj.npz", owner="model")
    assert "adj.npz: the graph's sensors don't match the model's" in str(err.value)
    assert "1 of 3 model sensors are not in the graph and 1 of 3 graph sensors" in str(err.value)
    save_adjacency(tmp_path / "same.npz", ["c", "a", "b"], np.eye(3, dtype=np.float32))
    graph_ids, adj, source = read_graph(ids, None, tmp_path / "same.npz")
    assert graph_ids == ["c", "a", "b"] and adj.dtype == np.float32 and source.endswith("same.npz")


# ---- evaluation on the real week -------------------------------------------------------------
@pytest.mark.slow
def test_real_week_evaluation_is_plausible(week, tmp_path):
    config = RunConfig.from_dict(
        {
            "model": {"rnn_units": 8, "num_rnn_layers": 1},
            "train": {"epochs": 1, "threads": 1},
            "baselines": {"fc_lstm": False, "gru": False, "tcn": False},
        }
    )
    lines: list[str] = []
    report = train_run(
        TrainOptions(
            sample_speeds_path(),
            tmp_path / "run",
            adjacency=sample_adjacency_pkl_path(),
            config=config,
            progress=False,
            log=lines.append,
        )
    )
    assert report["dataset"] == {"sensors": 207, "steps": 2016, "freq_minutes": 5}
    assert report["split"] == {"train": 1395, "val": 199, "test": 399}
    assert list(report["metrics"]) == ["dcrnn", "persistence", "historical_average"]
    for name in ("persistence", "historical_average"):
        for horizon, metrics in report["metrics"][name].items():
            assert 1.0 < metrics["mae"] < 10.0, (name, horizon, metrics)
            assert metrics["mae"] <= metrics["rmse"] < 25.0
            assert 1.0 < metrics["mape_pct"] < 40.0
    persistence = [report["metrics"]["persistence"][h]["mae"] for h in ("15min", "30min", "60min")]
    assert persistence == sorted(persistence)  # the last reading ages: error grows with horizon
    dcrnn = report["metrics"]["dcrnn"]["60min"]
    assert math.isfinite(dcrnn["mae"]) and 0.5 < dcrnn["mae"] < 20.0
    assert any("windows train/val/test 1395/199/399" in line for line in lines)


def test_bundled_report_has_the_average_of_every_model():
    """The shipped report.json carries ``average`` beside 15/30/60 min for all six models: the
    pooled MAE is a count-weighted mean of the 12 per-step MAEs (the steps count almost the same
    targets in the week, so it is within 0.01 of their plain mean); report.md prints it."""
    report = json.loads((BUNDLED_RUN_DIR / "report.json").read_text())
    md = (BUNDLED_RUN_DIR / "report.md").read_text().splitlines()
    assert list(report["metrics"]) == [
        "dcrnn", "persistence", "historical_average", "fc_lstm", "gru", "tcn"
    ]  # fmt: skip
    for name, by_key in report["metrics"].items():
        assert list(by_key) == ["15min", "30min", "60min", "average"]
        average = by_key["average"]
        by_step = report["mae_by_step"][name]
        assert min(by_step) <= average["mae"] <= max(by_step), name
        assert average["mae"] == pytest.approx(np.mean(by_step), abs=0.01), name
        assert average["mae"] < average["rmse"] and 0 < average["mape_pct"] < 100
        row = (
            f"| {name} | {average['mae']:.2f} | {average['rmse']:.2f} | {average['mape_pct']:.2f} |"
        )
        assert row in md, name
    # DCRNN's own figure, as evaluated when the bundled report was regenerated.
    assert report["metrics"]["dcrnn"]["average"] == {
        "mae": 3.5089,
        "rmse": 6.977,
        "mape_pct": 10.1076,
    }


# ---- Forecaster ------------------------------------------------------------------------------
def test_forecaster_from_run_matches_the_model(tiny_run):
    forecaster = Forecaster.from_run(tiny_run["run"])
    payload = load_checkpoint(tiny_run["run"] / "model.pt")
    model = build_model(payload)
    speeds = read_speeds(tiny_run["data"])
    config = RunConfig.from_dict(payload["config"])
    prepared = prepare_data(speeds, config, scaler=forecaster.scaler)
    source = WindowSource(prepared, {"train": 1, "val": 1, "test": 1}, torch.device("cpu"))

    # A window with a missing reading: NaN for the Forecaster, masked in the pipeline.
    missing_rows = np.flatnonzero(~speeds.mask[:-24].all(axis=1))
    assert len(missing_rows)
    start = int(missing_rows[0])
    window = np.where(speeds.mask[start : start + 12], speeds.values[start : start + 12], np.nan)
    forecast, future = forecaster.forecast(speeds.index[start : start + 12], window)

    with torch.no_grad():
        expected = model(source.batch_at(np.array([start])).x)[0, :, :, 0]
    expected = (expected * forecaster.scaler.std + forecaster.scaler.mean).numpy()
    assert forecast.shape == (12, 6)
    np.testing.assert_array_equal(forecast, expected)
    assert future[0] == speeds.index[start + 12] and len(future) == 12
    # Zeros mean missing as NaN does.
    zeros, _ = forecaster.forecast(speeds.index[start : start + 12], np.nan_to_num(window))
    np.testing.assert_array_equal(zeros, forecast)


def test_report_horizon_keys_follow_the_data_frequency(tmp_path):
    from trafficcast.data import make_synthetic, write_synthetic

    write_synthetic(make_synthetic(num_sensors=4, num_days=3, seed=2, freq_minutes=15), tmp_path)
    config = RunConfig.from_dict(
        {
            "model": {"rnn_units": 8, "num_rnn_layers": 1},
            "train": {"epochs": 1},
            "baselines": {"fc_lstm": False},
        }
    )
    report = train_run(
        TrainOptions(
            tmp_path / "speeds.h5",
            tmp_path / "run",
            distances=tmp_path / "distances.csv",
            config=config,
            progress=False,
            log=lambda message: None,
        )
    )
    assert report["dataset"]["freq_minutes"] == 15
    by_step = report["mae_by_step"]["persistence"]  # step 1 = 15 minutes ahead
    metrics = report["metrics"]["persistence"]
    assert metrics["15min"]["mae"] == by_step[0]
    assert metrics["30min"]["mae"] == by_step[1]
    assert metrics["60min"]["mae"] == by_step[3]
