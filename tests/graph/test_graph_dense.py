"""Dense N x N matrix CSVs (T-GCN / STGCN): weights read as they are, distances through the
DCRNN kernel exactly as from ``from,to,cost`` rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trafficcast.app.cli import main
from trafficcast.graph import (
    GraphInputError,
    adjacency_from_distance_matrix,
    build_adjacency_with_sigma,
    load_adjacency,
    read_dense_matrix,
)


def _write(tmp_path, text: str, name: str = "m.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("0,1,0.5\n1,0,0\n0.25,0,1\n", None),
        ("a,b,c\n0,1,0.5\n1,0,0\n0.25,0,1\n", ["a", "b", "c"]),
        ("773869,767541,767542\n0,1,0.5\n1,0,0\n0.25,0,1\n", ["773869", "767541", "767542"]),
        (",a,b,c\na,0,1,0.5\nb,1,0,0\nc,0.25,0,1\n", ["a", "b", "c"]),
    ],
)
def test_the_three_layouts_give_the_same_matrix(tmp_path, text, ids):
    got_ids, matrix = read_dense_matrix(_write(tmp_path, text))
    assert got_ids == ids
    np.testing.assert_array_equal(matrix, [[0, 1, 0.5], [1, 0, 0], [0.25, 0, 1]])


@pytest.mark.parametrize(
    ("text", "what", "message"),
    [
        ("0,1\n1,0\n0,1\n0,0\n", "weights", r"not a square matrix \(4 rows of 2 columns\)"),
        ("0,1,2\n1,0,2\n", "weights", r"not a square matrix \(2 rows of 3 columns\)"),
        ("0,x\n1,0\n", "weights", r"line 1, column 2: 'x' is not a finite weight"),
        ("a,b\n0,1\n1,\n", "weights", r"line 3, column 2: '' is not a finite weight"),
        ("0,-1\n1,0\n", "distances", r"line 1, column 2: '-1' is not a distance"),
        ("a,a\n0,1\n1,0\n", "weights", "duplicate sensor id 'a'"),
        (",a,b\nb,0,1\na,1,0\n", "weights", "first column's sensor ids are not the header's"),
        ("", "weights", "empty file"),
    ],
)
def test_bad_matrices_are_one_line_errors(tmp_path, text, what, message):
    with pytest.raises(GraphInputError, match=message) as info:
        read_dense_matrix(_write(tmp_path, text), what=what)
    assert "\n" not in str(info.value)


def test_distance_matrix_kernel_equals_the_rows_kernel(tmp_path):
    ids = ["a", "b", "c", "d"]
    dist = np.array(
        [[0, 100, 350, np.inf], [120, 0, 200, 900], [np.inf, 210, 0, 80], [1000, np.inf, 75, 0]]
    )
    rows = pd.DataFrame(
        [
            (ids[i], ids[j], dist[i, j])
            for i in range(4)
            for j in range(4)
            if np.isfinite(dist[i, j])
        ],
        columns=["from", "to", "cost"],
    )
    expected, sigma = build_adjacency_with_sigma(rows, ids, threshold=0.1)
    text = "\n".join(",".join("" if not np.isfinite(v) else f"{v:g}" for v in row) for row in dist)
    _, read = read_dense_matrix(_write(tmp_path, text + "\n"), what="distances")
    adj, got_sigma = adjacency_from_distance_matrix(read, ids, threshold=0.1)
    np.testing.assert_array_equal(adj, expected)
    assert got_sigma == sigma
    # By hand for one pair: exp(-(100 / sigma)^2) with sigma the std of the 13 finite distances.
    finite = dist[np.isfinite(dist)]
    assert got_sigma == pytest.approx(float(finite.std()))
    assert adj[0, 1] == pytest.approx(math.exp(-((100 / finite.std()) ** 2)), rel=1e-6)


def test_no_distance_at_all_is_a_graph_without_edges():
    with pytest.warns(UserWarning, match="3 of 3 sensors"):
        adj, sigma = adjacency_from_distance_matrix(np.full((3, 3), np.inf), ["a", "b", "c"])
    assert math.isnan(sigma)
    np.testing.assert_array_equal(adj, np.zeros((3, 3), np.float32))


def test_graph_command_with_a_distance_matrix(tmp_path, capsys):
    matrix = _write(tmp_path, "a,b,c\n0,100,\n100,0,300\n,300,0\n")
    out = tmp_path / "adj.npz"
    assert main(["graph", "--distance-matrix", str(matrix), "--output", str(out)]) == 0
    ids, adj = load_adjacency(out)
    assert ids == ["a", "b", "c"]
    finite = np.array([0, 100, 100, 0, 300, 300, 0], dtype=float)
    w = math.exp(-((100 / finite.std()) ** 2))
    assert adj[0, 1] == adj[1, 0] == pytest.approx(w, rel=1e-6)
    assert adj[0, 2] == 0 and adj[0, 0] == 1
    assert "3 sensors" in capsys.readouterr().out


def test_graph_command_takes_the_order_from_sensor_ids(tmp_path):
    matrix = _write(tmp_path, "0,50\n50,0\n")
    ids_file = _write(tmp_path, "x,y\n", "ids.txt")
    out = tmp_path / "adj.npz"
    argv = ["graph", "--distance-matrix", str(matrix), "--output", str(out)]
    assert main([*argv, "--sensor-ids", str(ids_file)]) == 0
    assert load_adjacency(out)[0] == ["x", "y"]


@pytest.mark.parametrize(
    ("matrix", "ids", "message"),
    [
        ("0,50\n50,0\n", None, "no header of sensor ids; give --sensor-ids"),
        ("0,50\n50,0\n", "x,y,z\n", "the matrix is 2 x 2 but --sensor-ids lists 3 ids"),
        ("a,b\n0,50\n50,0\n", "b,a\n", "not those of --sensor-ids"),
        ("0,50,1\n50,0\n", None, "not a square matrix"),
    ],
)
def test_graph_command_errors_are_one_line_exit_2(tmp_path, capsys, matrix, ids, message):
    argv = ["graph", "--distance-matrix", str(_write(tmp_path, matrix))]
    if ids is not None:
        argv += ["--sensor-ids", str(_write(tmp_path, ids, "ids.txt"))]
    assert main([*argv, "--output", str(tmp_path / "adj.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_graph_command_with_distances_still_needs_sensor_ids(tmp_path, capsys):
    rows = _write(tmp_path, "from,to,cost\na,b,10\n", "d.csv")
    argv = ["graph", "--distances", str(rows), "--output", str(tmp_path / "adj.npz")]
    assert main(argv) == 2
    assert "--distances needs --sensor-ids" in capsys.readouterr().err
