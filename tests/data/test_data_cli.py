"""`trafficcast summary` and `trafficcast synth` through the real CLI, error paths included."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from trafficcast.app.cli import main
from trafficcast.data import read_speeds
from trafficcast.data.bundled import sample_speeds_path


def test_summary_of_bundled_week(capsys):
    assert main(["summary", "--data", str(sample_speeds_path())]) == 0
    out = capsys.readouterr().out
    assert "steps:           2016" in out
    assert "sensors:         207" in out
    assert "2012-03-01T00:00:00 to 2012-03-07T23:55:00" in out
    assert "frequency:       5 min" in out
    assert "missing:         0.00%" in out
    assert "windows (12/12): 1993" in out
    assert "train 1395, val 199, test 399" in out


def test_summary_of_short_file_with_dead_sensor(tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_text("t,1,2\n2012-03-01 00:00,50,0\n2012-03-01 00:05,51,0\n")
    assert main(["summary", "--data", str(path)]) == 0
    captured = capsys.readouterr()
    assert "always missing:  1 (2)" in captured.out
    assert "missing:         50.00%" in captured.out
    assert "windows (12/12): none" in captured.out and "has 2" in captured.out
    assert "warning:" in captured.err and "never observed" in captured.err


def test_synth_writes_the_four_files(tmp_path):
    out_dir = tmp_path / "syn"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trafficcast",
            "synth",
            "--sensors",
            "20",
            "--days",
            "1",
            "--seed",
            "3",
            "--missing-rate",
            "0.05",
            "--output-dir",
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("speeds.h5", "distances.csv", "sensor_ids.txt", "locations.csv"):
        assert (out_dir / name).is_file()
        assert str(out_dir / name) in result.stdout
    speeds = read_speeds(out_dir / "speeds.h5")
    assert (speeds.num_steps, speeds.num_sensors) == (288, 20)
    assert 1 - speeds.mask.mean() == pytest.approx(0.05, abs=0.015)
    ids = (out_dir / "sensor_ids.txt").read_text().split(",")
    assert ids == speeds.sensor_ids
    distances = pd.read_csv(out_dir / "distances.csv", dtype={"from": str, "to": str})
    assert list(distances.columns) == ["from", "to", "cost"]
    assert set(distances["from"]) <= set(ids)
    locations = pd.read_csv(out_dir / "locations.csv", dtype={"sensor_id": str})
    assert list(locations.columns) == ["sensor_id", "latitude", "longitude"]
    assert locations["sensor_id"].tolist() == ids
    assert np.isfinite(locations[["latitude", "longitude"]].to_numpy()).all()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "t,1,2\n2012-03-01 00:00,1,2\n2012-03-01 00:00,1,2\n",
            "duplicated timestamps 2012-03-01 00:00:00",
        ),
        (
            "t,773869,2\n2012-03-01 00:00,1,2\n2012-03-01 00:05,abc,2\n",
            "non-numeric value 'abc' at 2012-03-01 00:05:00, sensor 773869",
        ),
        ("", "empty file"),
    ],
)
def test_summary_bad_files_exit_2_with_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "speeds.csv"
    path.write_text(text)
    assert main(["summary", "--data", str(path)]) == 2
    line = _one_error_line(capsys)
    assert expected in line and "speeds.csv" in line


def test_summary_missing_file_exit_2(tmp_path, capsys):
    path = tmp_path / "nope.h5"
    assert main(["summary", "--data", str(path)]) == 2
    line = _one_error_line(capsys)
    assert str(path) in line and "No such file" in line


def test_synth_bad_sensor_count_exit_2(tmp_path, capsys):
    assert main(["synth", "--sensors", "1", "--output-dir", str(tmp_path / "x")]) == 2
    assert "sensors must be an integer >= 2" in _one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_summary_subprocess_error_has_no_traceback(tmp_path):
    path = tmp_path / "speeds.csv"
    path.write_text("t,1\n2012-03-01 00:00,1\n2012-03-01 00:05,-3\n")
    result = subprocess.run(
        [sys.executable, "-m", "trafficcast", "summary", "--data", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: negative speed -3 at 2012-03-01 00:05:00, sensor 1"
    ]
