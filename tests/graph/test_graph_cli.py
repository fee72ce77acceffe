"""The ``graph``, ``graph-info`` and ``distances`` commands, success and error paths."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trafficcast.app.cli import main
from trafficcast.graph import load_adjacency, read_distances

REPO = Path(__file__).resolve().parents[2]
BAY = REPO / "tests" / "graph" / "fixtures" / "pems-bay"
SAMPLE = REPO / "data" / "sample"


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _bay_ids(tmp_path: Path) -> Path:
    ids = [line.split(",")[0] for line in (BAY / "graph_sensor_locations_bay.csv").open()]
    return _write(tmp_path / "ids.txt", ",".join(ids))


def _user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI expecting a user error; return its single stderr line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_graph_command_builds_pems_bay_as_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "adj.npz"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trafficcast",
            "graph",
            "--distances",
            str(BAY / "distances_bay_2017.csv"),
            "--sensor-ids",
            str(_bay_ids(tmp_path)),
            "--cost-unit",
            "m",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"wrote {out}: 325 sensors, 2694 nonzero weights (threshold 0.1, sigma 3620.3 m)"
    )
    assert result.stderr.strip() == (
        "warning: 4 of 325 sensors have no road distance to another listed sensor and will be "
        "isolated nodes: 400001, 400017, 400240, 400677"
    )
    ids, adj = load_adjacency(out)
    assert len(ids) == 325 and ids[0] == "400001"
    assert int(np.count_nonzero(adj)) == 2694


def test_graph_command_threshold_changes_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adj.npz"
    argv = ["graph", "--distances", str(BAY / "distances_bay_2017.csv")]
    argv += ["--sensor-ids", str(_bay_ids(tmp_path)), "--threshold", "0.5", "--output", str(out)]
    argv += ["--cost-unit", "m"]
    assert main(argv) == 0
    nonzero = int(np.count_nonzero(load_adjacency(out)[1]))
    assert 325 < nonzero < 2694
    assert f"{nonzero} nonzero weights (threshold 0.5, sigma 3620.3 m)" in capsys.readouterr().out


def test_graph_info_on_metr_la_pickle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph-info", str(SAMPLE / "adj_mx.pkl")]) == 0
    out = capsys.readouterr().out
    assert "207 sensors" in out
    assert "nonzero weights: 1722 (1515 between different sensors, 207 self-loops)" in out
    assert "symmetric: no (directed)" in out
    assert "isolated nodes: 1 (717804)" in out


def test_graph_info_on_symmetric_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trafficcast.graph import save_adjacency

    path = tmp_path / "sym.npz"
    save_adjacency(path, ["a", "b", "c"], np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]]))
    assert main(["graph-info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "symmetric: yes" in out
    assert "isolated nodes: 1 (c)" in out


def test_graph_info_refuses_malicious_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "adj_mx.pkl"
    path.write_bytes(pickle.dumps([["a"], {"a": 0}, _RunsShell(f"touch {marker}")], protocol=2))
    line = _user_error(capsys, ["graph-info", str(path)])
    assert line.startswith(f"error: {path}: refused to load '")
    assert not marker.exists()


def test_graph_info_malicious_pickle_as_subprocess(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "adj_mx.pkl"
    path.write_bytes(pickle.dumps(_RunsShell(f"touch {marker}"), protocol=0))
    result = subprocess.run(
        [sys.executable, "-m", "trafficcast", "graph-info", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    # os.system pickles as posix.system (nt.system on Windows)
    assert lines[0].startswith(f"error: {path}: refused to load '")
    assert lines[0].endswith(
        "system' from a pickle (only numpy arrays, lists, dicts, strings and numbers are allowed)"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("distances", "message"),
    [
        ("a,b\nb,c\n", "d.csv: missing column 'cost'"),
        ("", "d.csv: empty file"),
        ("x,y,1\ny,x,2\n", "no sensor in common between 3 sensor ids and the distances file"),
        ("a,b,1\nb,a,ten\n", "d.csv: line 2: cost 'ten'"),
    ],
)
def test_graph_command_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], distances: str, message: str
) -> None:
    d = _write(tmp_path / "d.csv", distances)
    ids = _write(tmp_path / "ids.txt", "a,b,c")
    out = tmp_path / "adj.npz"
    line = _user_error(
        capsys,
        ["graph", "--distances", str(d), "--sensor-ids", str(ids), "--output", str(out)],
    )
    assert message in line
    assert not out.exists()


def test_graph_command_missing_file_and_bad_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _write(tmp_path / "ids.txt", "a,b")
    d = _write(tmp_path / "d.csv", "a,b,1\n")
    out = str(tmp_path / "adj.npz")
    line = _user_error(
        capsys,
        ["graph", "--distances", str(tmp_path / "nope.csv"), "--sensor-ids", str(ids)]
        + ["--output", out],
    )
    assert "nope.csv" in line
    line = _user_error(
        capsys,
        ["graph", "--distances", str(d), "--sensor-ids", str(ids), "--threshold", "2"]
        + ["--output", out],
    )
    assert "threshold 2.0 is outside [0, 1]" in line


def test_graph_command_warns_about_sensors_without_distances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _write(tmp_path / "d.csv", "from,to,cost\na,b,100\nb,a,300\n")
    ids = _write(tmp_path / "ids.txt", "a\nb\nc\nd\n")
    out = tmp_path / "adj.npz"
    code = main(["graph", "--distances", str(d), "--sensor-ids", str(ids), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.splitlines() == [
        "warning: 2 of 4 sensors have no road distance to another listed sensor and will be "
        "isolated nodes: c, d"
    ]
    assert captured.out.startswith(
        f"wrote {out}: 4 sensors, 1 nonzero weights"
    )  # b->a: exp(-9) < 0.1
    ids_loaded, adj = load_adjacency(out)
    assert ids_loaded == ["a", "b", "c", "d"]
    assert adj[0, 1] == pytest.approx(np.exp(-1.0))  # sigma = std(100, 300) = 100


def test_distances_command_roads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roads = _write(
        tmp_path / "roads.csv",
        "from_node,to_node,length_m,oneway\nA,B,100,no\nB,C,50,yes\nC,A,400,no\n",
    )
    sensors = _write(tmp_path / "sensors.csv", "sensor_id,node_id\ns1,A\ns2,C\n")
    out = tmp_path / "d.csv"
    argv = ["distances", "--roads", str(roads), "--sensors", str(sensors), "--output", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith(f"wrote {out}: 4 road distances between 2 sensors")
    assert out.read_text().splitlines() == [
        "from,to,cost",
        "s1,s1,0.0",
        "s1,s2,150.0",  # A-B-C (B->C one-way)
        "s2,s1,400.0",  # C-A: C->B is not allowed
        "s2,s2,0.0",
    ]
    # and the output feeds the graph command
    ids = _write(tmp_path / "ids.txt", "s1,s2")
    adj_path = tmp_path / "adj.npz"
    assert (
        main(
            ["graph", "--distances", str(out), "--sensor-ids", str(ids)]
            + ["--output", str(adj_path)]
        )
        == 0
    )
    assert load_adjacency(adj_path)[1].shape == (2, 2)


def test_distances_command_straight_line_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.csv"
    argv = ["distances", "--straight-line", "--sensors", str(SAMPLE / "graph_sensor_locations.csv")]
    assert main(argv + ["--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "warning: straight-line distances are an approximation: they ignore one-way streets "
        "and road layout"
    ]
    distances = read_distances(out)
    assert len(distances) == 207 * 207
    assert distances.iloc[0].tolist() == ["773869", "773869", 0.0]
    assert distances.iloc[1]["to"] == "767541"
    assert distances.iloc[1]["cost"] == pytest.approx(8555.5, abs=0.1)


def test_distances_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sensors = _write(tmp_path / "s.csv", "sensor_id,latitude,longitude\ns1,34,-118\n")
    roads = _write(tmp_path / "r.csv", "from_node,to_node,length_m\nA,B,5\n")
    out = str(tmp_path / "d.csv")
    line = _user_error(capsys, ["distances", "--sensors", str(sensors), "--output", out])
    assert "give --roads" in line
    line = _user_error(
        capsys, ["distances", "--roads", str(roads), "--sensors", str(sensors), "--output", out]
    )
    assert "(--nodes)" in line
    bad_roads = _write(tmp_path / "bad.csv", "from_node,to_node,length_m\nA,B,-5\n")
    line = _user_error(
        capsys,
        ["distances", "--roads", str(bad_roads), "--sensors", str(sensors), "--output", out],
    )
    assert "bad.csv: line 2: length_m '-5'" in line
    assert not Path(out).exists()
