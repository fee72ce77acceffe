"""``trafficcast import npz``: ASTGCN-style releases (PEMS04/08 with flow, occupancy and speed;
PEMS03 with flow and a sensor-id list), built as released, through import, ``train --epochs 1``,
``evaluate`` and ``predict``; bad files end in one ``error:`` line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.data.test_import_common import check_round_trip, train_evaluate_predict, user_error
from trafficcast.app.cli import main
from trafficcast.data import read_speeds
from trafficcast.graph import read_distances

STEPS, SENSORS = 576, 5
START = "2018-01-01T00:00"


def channels(seed: int = 0) -> np.ndarray:
    """``(T, N, 3)``: flow (vehicles per 5 minutes), occupancy (0..1), speed (mph).

    Shapes:
        returns (STEPS, SENSORS, 3) float64.
    """
    rng = np.random.default_rng(seed)
    hour = (np.arange(STEPS) * 5 / 60) % 24
    busy = np.exp(-((hour - 8.0) ** 2) / 3.0)[:, None]  # (T, 1)
    flow = np.round(80 + 220 * busy + rng.normal(0, 5, (STEPS, SENSORS)))
    occupancy = np.broadcast_to(0.03 + 0.2 * busy, (STEPS, SENSORS))
    speed = 66.0 - 30.0 * busy - np.arange(SENSORS)[None, :] + rng.normal(0, 1, (STEPS, SENSORS))
    return np.stack([flow, occupancy, speed], axis=-1)


def write_pems04(root, array: np.ndarray | None = None) -> dict:
    """``PEMS04.npz`` (key ``data``) and ``distance.csv`` naming sensors by column number."""
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "PEMS04.npz", data=channels() if array is None else array)
    rows = ["from,to,cost", "0,1,402.3", "1,2,515.0", "2,3,388.9", "3,4,601.2", "4,0,955.1"]
    (root / "distance.csv").write_text("\n".join(rows) + "\n")
    return {"npz": root / "PEMS04.npz", "distances": root / "distance.csv"}


def _argv(files: dict, out, *extra: str) -> list[str]:
    argv = ["import", "npz", "--npz", str(files["npz"]), "--distances", str(files["distances"])]
    return [*argv, *extra, "--output-dir", str(out)]


def test_npz_speed_channel_import_train_evaluate_predict(tmp_path, capsys):
    files = write_pems04(tmp_path / "PEMS04")
    out = tmp_path / "out"
    argv = _argv(files, out, "--channel", "speed", "--start", START, "--freq", "5min")
    assert main(argv) == 0
    assert "imported npz: speed, 5 sensors x 576 steps of 5 min" in capsys.readouterr().out

    speeds = read_speeds(out / "speeds.h5")
    assert speeds.sensor_ids == ["0", "1", "2", "3", "4"]
    assert speeds.index[0] == pd.Timestamp(START)
    assert speeds.index[-1] == pd.Timestamp("2018-01-02T23:55")
    np.testing.assert_allclose(speeds.values, channels()[:, :, 2].astype(np.float32))
    assert speeds.mask.all()
    distances = read_distances(out / "distances.csv")
    assert distances.iloc[1].tolist() == ["1", "2", 515.0]
    summary = json.loads((out / "import.json").read_text())
    assert summary["read"] == {"steps": 576, "sensors": 5, "channels": 3, "distance rows": 5}

    at = "2018-01-02T10:00"
    trained = train_evaluate_predict(
        tmp_path, out / "speeds.h5", ("--distances", out / "distances.csv"), at, capsys
    )
    check_round_trip(trained, SENSORS, at)


def test_npz_pems03_flow_with_sensor_ids_keeps_zero_flows(tmp_path, capsys):
    root = tmp_path / "PEMS03"
    root.mkdir()
    flow = channels()[:, :4, :1].copy()  # PEMS03: one channel, flow
    flow[10, 2, 0] = 0.0
    flow[11, 3, 0] = np.nan
    np.savez(root / "PEMS03.npz", data=flow)
    (root / "PEMS03.txt").write_text("317842\n318120\n318121\n319693\n")
    (root / "distance.csv").write_text("from,to,cost\n317842,318120,0.5\n318120,318121,0.71\n")
    files = {"npz": root / "PEMS03.npz", "distances": root / "distance.csv"}
    extra = ["--channel", "flow", "--sensor-ids", str(root / "PEMS03.txt")]
    out = tmp_path / "out"
    assert main(_argv(files, out, *extra, "--start", "2018-09-01", "--freq", "5min")) == 0
    printed = capsys.readouterr().out
    assert "config: train on this flow table with `data: {quantity: flow, missing: nan}`" in printed

    frame = pd.read_hdf(out / "speeds.h5", "df")
    assert frame.columns.tolist() == ["317842", "318120", "318121", "319693"]
    assert frame.iloc[10, 2] == 0.0  # a real zero flow stays a reading in the file
    assert np.isnan(frame.iloc[11, 3])
    assert frame.iloc[0].tolist() == flow[0, :, 0].tolist()
    summary = json.loads((out / "import.json").read_text())
    assert summary["dropped"]["readings not finite (flow)"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--channel", "speed", "--start", START], "{npz} has no timestamps: give --start TIMESTAMP and --freq STEP (e.g. --start 2018-01-01T00:00 --freq 5min)"),
        (["--channel", "speed", "--freq", "5min"], "{npz} has no timestamps: give --start TIMESTAMP and --freq STEP (e.g. --start 2018-01-01T00:00 --freq 5min)"),
        (["--channel", "3", "--start", START, "--freq", "5min"], "{npz}: no channel 3: the file has 3 (0 .. 2)"),
        (["--channel", "density", "--start", START, "--freq", "5min"], "{npz}: no channel 'density': the file has 3 channels (flow, occupancy, speed)"),
        (["--channel", "speed", "--start", "01/13/2018 25:00", "--freq", "5min"], "--start '01/13/2018 25:00' is not a timestamp"),
    ],
)  # fmt: skip
def test_npz_bad_arguments_are_one_error_line(tmp_path, capsys, extra, message):
    files = write_pems04(tmp_path / "PEMS04")
    line = user_error(_argv(files, tmp_path / "out", *extra), capsys)
    assert line == "error: " + message.format(npz=files["npz"])


def test_npz_missing_channel_wrong_key_and_unknown_sensor_are_one_error_line(tmp_path, capsys):
    files = write_pems04(tmp_path / "PEMS07", channels()[:, :, :1])  # flow only, like PEMS07
    extra = ["--start", START, "--freq", "5min"]
    line = user_error(_argv(files, tmp_path / "out", "--channel", "speed", *extra), capsys)
    assert line == f"error: {files['npz']}: no channel 'speed': the file has 1 channel (flow)"

    np.savez(files["npz"], flow=channels())
    line = user_error(_argv(files, tmp_path / "out", "--channel", "flow", *extra), capsys)
    assert line == f"error: {files['npz']}: no array 'data' (found: flow)"

    write_pems04(tmp_path / "PEMS07")
    files["distances"].write_text("from,to,cost\n0,1,402.3\n4,9,88.0\n")
    line = user_error(_argv(files, tmp_path / "out", "--channel", "flow", *extra), capsys)
    assert line == f"error: {files['distances']}: sensor 9 is not one of the 5 sensors (0 .. 4)"
