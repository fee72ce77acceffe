"""The real METR-LA week re-shaped the T-GCN way (speeds CSV with an id header and no
timestamps, the adjacency as a dense CSV) is the same data as the HDF + pickle it came from: the
same ``summary``, the same 1-epoch report; and bad files of that layout are one ``error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trafficcast.app.cli import main
from trafficcast.data import read_speeds, sample_adjacency_pkl_path, sample_speeds_path
from trafficcast.graph import load_adjacency

TINY = "model:\n  rnn_units: 8\n  num_rnn_layers: 1\nbaselines:\n  fc_lstm: false\n"
TIMING = ["--start", "2012-03-01", "--freq", "5min"]


@pytest.fixture(scope="module")
def tgcn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``speeds.csv`` (an id header, no timestamps), ``adj.csv`` (dense, no header, the data's
    sensor order) and ``tiny.yaml`` from the bundled week and ``adj_mx.pkl``."""
    root = tmp_path_factory.mktemp("tgcn")
    ids, adj = load_adjacency(sample_adjacency_pkl_path())
    week = read_speeds(sample_speeds_path()).select_sensors(ids)
    frame = week.to_frame().astype(np.float64)  # float32 -> float64 is exact, so is its repr
    frame.to_csv(root / "speeds.csv", index=False)
    np.savetxt(root / "adj.csv", adj.astype(np.float64), delimiter=",", fmt="%.17g")
    (root / "tiny.yaml").write_text(TINY)
    return root


def _summary(capsys, argv: list[str]) -> list[str]:
    assert main(["summary", *argv]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("file:")]


def test_summary_is_the_same(tgcn, capsys):
    from_hdf = _summary(capsys, ["--data", str(sample_speeds_path())])
    from_csv = _summary(capsys, ["--data", str(tgcn / "speeds.csv"), *TIMING])
    assert from_csv == from_hdf
    assert "windows (12/12): 1993" in from_csv


def test_one_epoch_report_is_the_same(tgcn, tmp_path, capsys):
    common = ["--config", str(tgcn / "tiny.yaml"), "--epochs", "1", "--no-progress"]
    hdf_run, csv_run = tmp_path / "hdf", tmp_path / "csv"
    argv = ["--data", str(sample_speeds_path()), "--adjacency", str(sample_adjacency_pkl_path())]
    assert main(["train", *argv, *common, "--output", str(hdf_run)]) == 0
    argv = ["--data", str(tgcn / "speeds.csv"), *TIMING, "--adjacency", str(tgcn / "adj.csv")]
    assert main(["train", *argv, *common, "--output", str(csv_run)]) == 0
    capsys.readouterr()
    a = json.loads((hdf_run / "report.json").read_text())
    b = json.loads((csv_run / "report.json").read_text())
    for key in ("dataset", "split", "metrics", "mae_by_step"):
        assert b[key] == a[key], key
    assert (a["data"]["start"], a["data"]["end"]) == (b["data"]["start"], b["data"]["end"])
    assert a["metrics"]["dcrnn"]["60min"]["mae"] > 0

    # The run remembers the file had no timestamps: evaluate without --data reads it again.
    assert main(["evaluate", "--run", str(csv_run), "--output", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["metrics"] == b["metrics"]
    # Given again, the file needs its times again: one line naming both flags.
    assert main(["evaluate", "--run", str(csv_run), "--data", str(tgcn / "speeds.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--start TIMESTAMP and --freq" in err[0]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A 3-sensor speeds CSV without timestamps (30 rows) beside a few bad companions."""
    rows = ["a,b,c"] + [f"{50 + k % 7},{60 - k % 5},{55 + k % 3}" for k in range(30)]
    (tmp_path / "speeds.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "adj3.csv").write_text("1,1,0\n1,1,1\n0,1,1\n")
    (tmp_path / "adj2.csv").write_text("1,1\n1,1\n")
    (tmp_path / "adj_ragged.csv").write_text("1,1,0\n1,1\n")
    (tmp_path / "ids4.txt").write_text("a,b,c,d\n")
    (tmp_path / "adj_other.csv").write_text("a,b,z\n1,1,0\n1,1,1\n0,1,1\n")
    (tmp_path / "wide.csv").write_text("a,b\n1,2\n1,2,3\n")
    (tmp_path / "stamps.csv").write_text("t,a\nyesterday,1\n2012-03-01 00:05,2\n")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "--data", "{d}/speeds.csv"], "--start TIMESTAMP and --freq"),
        (["summary", "--data", "{d}/speeds.csv", "--start", "2012-03-01"], "--start needs --freq"),
        (
            ["summary", "--data", "{d}/speeds.csv", "--start", "2012-03-01", "--freq", "7s"],
            "--freq '7s' is not a whole number of minutes",
        ),
        (
            ["summary", "--data", "{d}/speeds.csv", "--start", "nonsense", "--freq", "5min"],
            "--start 'nonsense' is not a timestamp",
        ),
        (
            ["summary", "--data", "{d}/wide.csv", "--start", "2012-03-01", "--freq", "5min"],
            "{d}/wide.csv: line 3 has more fields than the header (2 columns)",
        ),
        (["summary", "--data", "{d}/stamps.csv"], "{d}/stamps.csv: cannot read timestamp 'yesterday'"),
        (
            ["train", "--data", "{d}/speeds.csv", "--start", "2012-03-01", "--freq", "5min",
             "--adjacency", "{d}/adj2.csv", "--output", "{d}/run"],
            "{d}/adj2.csv: the matrix is 2 x 2 but the data has 3 sensors",
        ),
        (
            ["train", "--data", "{d}/speeds.csv", "--start", "2012-03-01", "--freq", "5min",
             "--adjacency", "{d}/adj_ragged.csv", "--output", "{d}/run"],
            "{d}/adj_ragged.csv: not a square matrix (2 rows of 3 columns)",
        ),
        (
            ["train", "--data", "{d}/speeds.csv", "--start", "2012-03-01", "--freq", "5min",
             "--adjacency", "{d}/adj_other.csv", "--output", "{d}/run"],
            "{d}/adj_other.csv: the graph's sensors don't match the data's",
        ),
        (
            ["train", "--data", "{d}/speeds.csv", "--start", "2012-03-01", "--freq", "5min",
             "--adjacency", "{d}/adj3.csv", "--sensor-ids", "{d}/ids4.txt", "--output", "{d}/run"],
            "{d}/adj3.csv: the matrix is 3 x 3 but --sensor-ids lists 4 sensors",
        ),
        (
            ["train", "--data", "{d}/speeds.csv", "--adjacency", "{d}/adj3.csv",
             "--output", "{d}/run"],
            "--start TIMESTAMP and --freq",
        ),
    ],
)  # fmt: skip
def test_bad_files_are_one_error_line_and_exit_2(small, capsys, argv, message):
    argv = [a.replace("{d}", str(small)) for a in argv]
    assert main(argv) == 2
    assert message.replace("{d}", str(small)) in _error_line(capsys)
