"""What every importer shares: the written files, ``--start``/``--freq``, and the helpers the
per-format tests use to take an import through ``train --epochs 1``, ``evaluate`` and
``predict`` in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast.app.cli import main
from trafficcast.data import SpeedData, read_speeds
from trafficcast.data.errors import DataInputError
from trafficcast.data.importers import ImportResult, parse_freq_minutes, parse_start, write_import
from trafficcast.graph import load_adjacency, read_distances

# Small enough that a train/evaluate/predict round takes seconds on a busy core.
TINY_IMPORT_CONFIG = """\
data:
  batch_size: 16
  val_batch_size: 64
  test_batch_size: 64
model:
  rnn_units: 8
  num_rnn_layers: 1
  max_diffusion_step: 1
train:
  threads: 1
baselines:
  fc_lstm: false
"""


def user_error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error: exit 2 and one ``error:`` line; return the line."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def train_evaluate_predict(
    tmp_path: Path, data: Path, graph: tuple[str, Path], at: str, capsys, quantity: str = "speed"
) -> dict:
    """``train --epochs 1`` on ``data`` with ``graph`` (``("--distances", path)`` or
    ``("--adjacency", path)``) and the config's ``data.quantity``, then ``evaluate`` and
    ``predict --at``; returns the report and the forecast frame."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_IMPORT_CONFIG.replace("data:\n", f"data:\n  quantity: {quantity}\n"))
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), graph[0], str(graph[1]), "--config", str(config)]
    assert main([*argv, "--epochs", "1", "--no-progress", "--output", str(run)]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    forecast = tmp_path / "forecast.csv"
    assert main(["predict", "--run", str(run), "--data", str(data), "--at", at, "--output",
                 str(forecast)]) == 0  # fmt: skip
    capsys.readouterr()
    return {"report": report, "forecast": pd.read_csv(forecast, index_col=0, parse_dates=True)}


def check_round_trip(out: dict, num_sensors: int, at: str) -> None:
    """The run saw every sensor, scored finite errors, and forecast the hour after ``at``."""
    report, forecast = out["report"], out["forecast"]
    assert report["dataset"]["sensors"] == num_sensors
    mae = report["metrics"]["dcrnn"]["15min"]["mae"]
    assert np.isfinite(mae) and mae > 0
    assert forecast.shape == (12, num_sensors)
    assert forecast.index[0] == pd.Timestamp(at) + pd.Timedelta(minutes=5)
    assert np.isfinite(forecast.to_numpy()).all()


def _result(values: np.ndarray, mask: np.ndarray, **kwargs) -> ImportResult:
    data = SpeedData(
        index=pd.date_range("2024-01-01", periods=values.shape[0], freq="5min"),
        sensor_ids=["a", "b"],
        values=values,
        mask=mask,
        freq_minutes=5,
    )
    return ImportResult(format="test", quantity="flow", data=data, **kwargs)


def test_write_import_writes_missing_as_empty_and_real_zeros_as_zeros(tmp_path):
    values = np.array([[0.0, 12.0], [3.0, 0.0], [4.0, 5.0]], dtype=np.float32)
    mask = np.array([[True, True], [True, False], [True, True]])
    distances = pd.DataFrame({"from": ["a"], "to": ["b"], "cost": [120.5]})
    paths = write_import(_result(values, mask, distances=distances), tmp_path / "out")
    assert [p.name for p in paths] == [
        "speeds.h5",
        "sensor_ids.txt",
        "distances.csv",
        "import.json",
    ]
    frame = pd.read_hdf(tmp_path / "out" / "speeds.h5", "df")
    # The flow of 0 at the first step is a reading; the unobserved cell is NaN, not 0.
    assert frame.iloc[0, 0] == 0.0
    assert np.isnan(frame.iloc[1, 1])
    assert frame.iloc[2].tolist() == [4.0, 5.0]
    assert (tmp_path / "out" / "sensor_ids.txt").read_text() == "a,b\n"
    assert read_distances(tmp_path / "out" / "distances.csv").to_dict("list") == {
        "from": ["a"], "to": ["b"], "cost": [120.5]
    }  # fmt: skip
    summary = json.loads((tmp_path / "out" / "import.json").read_text())
    assert summary["quantity"] == "flow"
    assert summary["config"] == "data: {quantity: flow, missing: nan}"
    assert summary["missing_pct"] == pytest.approx(100 / 6, abs=1e-3)
    assert summary["graph"] == {"files": ["distances.csv"]}


def test_write_import_prefers_given_weights_to_distances(tmp_path):
    values = np.ones((3, 2), dtype=np.float32)
    adj = np.array([[1.0, 0.5], [0.0, 1.0]], dtype=np.float32)
    write_import(_result(values, values > 0, adjacency=adj), tmp_path)
    ids, loaded = load_adjacency(tmp_path / "adjacency.npz")
    assert ids == ["a", "b"] and np.array_equal(loaded, adj)
    assert not (tmp_path / "distances.csv").exists()
    # The table reads back through the project's own reader.
    assert read_speeds(tmp_path / "speeds.h5").values.tolist() == values.tolist()


def test_start_and_freq_are_parsed_or_named():
    assert parse_start("2018-01-01T00:00") == pd.Timestamp("2018-01-01")
    assert parse_start("2018-01-01T08:00+08:00") == pd.Timestamp("2018-01-01")
    assert parse_freq_minutes("5min") == 5
    assert parse_freq_minutes("1h") == 60
    with pytest.raises(DataInputError, match="--start 'yesterday' is not a timestamp"):
        parse_start("yesterday")
    with pytest.raises(DataInputError, match="--freq: cannot read time step 'often'"):
        parse_freq_minutes("often")
    with pytest.raises(DataInputError, match="not a whole number of minutes"):
        parse_freq_minutes("30s")
