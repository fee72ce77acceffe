"""The DCRNN Gaussian-kernel adjacency, checked against PEMS-BAY and small hand examples."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast.graph import (
    GraphInputError,
    GraphWarning,
    build_adjacency,
    build_adjacency_with_sigma,
)
from trafficcast.graph.io import read_distances

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pems-bay"
BAY_DISTANCES = FIXTURES / "distances_bay_2017.csv"
BAY_LOCATIONS = FIXTURES / "graph_sensor_locations_bay.csv"


def _bay_ids() -> list[str]:
    with open(BAY_LOCATIONS, newline="") as handle:
        return [row[0] for row in csv.reader(handle) if row]


def _reference_adjacency(path: Path, ids: list[str], threshold: float) -> np.ndarray:
    """An independent, deliberately plain re-implementation of DCRNN's gen_adj_mx.py."""
    position = {sensor: k for k, sensor in enumerate(ids)}
    n = len(ids)
    dist = [[math.inf] * n for _ in range(n)]
    with open(path, newline="") as handle:
        for sensor_from, sensor_to, cost in csv.reader(handle):
            if sensor_from in position and sensor_to in position:
                dist[position[sensor_from]][position[sensor_to]] = float(cost)
    finite = [d for row in dist for d in row if d != math.inf]
    mean = sum(finite) / len(finite)
    sigma = math.sqrt(sum((d - mean) ** 2 for d in finite) / len(finite))
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            w = math.exp(-((dist[i][j] / sigma) ** 2)) if dist[i][j] != math.inf else 0.0
            out[i, j] = w if w >= threshold else 0.0
    return out


def test_pems_bay_reproduces_dcrnn_published_matrix() -> None:
    ids = _bay_ids()
    distances = read_distances(BAY_DISTANCES)
    with pytest.warns(GraphWarning, match=r"4 of 325 sensors .*400001, 400017, 400240, 400677"):
        adj, sigma = build_adjacency_with_sigma(distances, ids, threshold=0.1)

    assert adj.shape == (325, 325)
    assert adj.dtype == np.float32
    assert int(np.count_nonzero(adj)) == 2694  # DCRNN's published adj_mx_bay.pkl
    assert sigma == pytest.approx(3620.299, abs=1e-3)

    expected = _reference_adjacency(BAY_DISTANCES, ids, 0.1)
    np.testing.assert_allclose(adj, expected, rtol=1e-6, atol=1e-7)
    assert np.array_equal(adj != 0, expected != 0)

    # Spot values: rows 400030 -> 400045 (5108.4 m) and 400030 -> 400065 (7401.1 m).
    i, j, k = ids.index("400030"), ids.index("400045"), ids.index("400065")
    assert adj[i, j] == pytest.approx(math.exp(-((5108.4 / sigma) ** 2)), rel=1e-6)
    assert adj[i, j] == pytest.approx(0.13655, abs=1e-4)
    assert adj[i, k] == 0.0  # exp(-(7401.1/3620.3)^2) = 0.0153 < 0.1
    assert adj[ids.index("400001"), ids.index("400001")] == 1.0  # self-distance 0 -> weight 1
    # The graph is directed: 400045 -> 400030 is 2525.0 m, not 5108.4 m.
    assert adj[j, i] == pytest.approx(math.exp(-((2525.0 / sigma) ** 2)), rel=1e-6)
    # 400040 -> 400654 is 295.9 m and the file has no row back.
    a, b = ids.index("400040"), ids.index("400654")
    assert adj[a, b] == pytest.approx(math.exp(-((295.9 / sigma) ** 2)), rel=1e-6)
    assert adj[b, a] == 0.0


def test_build_adjacency_matches_hand_computed_kernel() -> None:
    distances = pd.DataFrame(
        {"from": ["a", "a", "b", "c"], "to": ["b", "c", "c", "a"], "cost": [1.0, 2.0, 3.0, 2.0]}
    )
    # finite distances 1, 2, 3, 2: mean 2, population std sqrt(0.5)
    adj = build_adjacency(distances, ["a", "b", "c"], threshold=0.0)
    w1, w2, w3 = math.exp(-2.0), math.exp(-8.0), math.exp(-18.0)
    expected = np.array([[0, w1, w2], [0, 0, w3], [w2, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(adj, expected, rtol=1e-6)

    thresholded = build_adjacency(distances, ["a", "b", "c"], threshold=0.1)
    np.testing.assert_allclose(thresholded, np.array([[0, w1, 0], [0, 0, 0], [0, 0, 0]]), rtol=1e-6)


def test_order_follows_sensor_ids_and_rows_outside_are_ignored() -> None:
    distances = pd.DataFrame(
        {"from": ["a", "b", "x"], "to": ["b", "a", "a"], "cost": [10.0, 30.0, 5.0]}
    )
    adj_ab = build_adjacency(distances, ["a", "b"], threshold=0.0)
    adj_ba = build_adjacency(distances, ["b", "a"], threshold=0.0)
    # sigma = std(10, 30) = 10 (the row from "x" is not among the sensors)
    np.testing.assert_allclose(adj_ab, [[0, math.exp(-1)], [math.exp(-9), 0]], rtol=1e-6)
    np.testing.assert_allclose(adj_ba, adj_ab[::-1, ::-1], rtol=1e-6)


def test_repeated_pair_keeps_last_row_like_dcrnn() -> None:
    distances = pd.DataFrame(
        {"from": ["a", "a", "b"], "to": ["b", "b", "a"], "cost": [100.0, 10.0, 30.0]}
    )
    adj = build_adjacency(distances, ["a", "b"], threshold=0.0)
    np.testing.assert_allclose(adj[0, 1], math.exp(-1), rtol=1e-6)


def test_equal_distances_give_weight_one_without_dividing_by_zero() -> None:
    distances = pd.DataFrame({"from": ["a", "b"], "to": ["b", "a"], "cost": [250.0, 250.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0/0 either
        adj, sigma = build_adjacency_with_sigma(distances, ["a", "b"], threshold=0.1)
    assert sigma == 0.0
    np.testing.assert_array_equal(adj, [[0, 1], [1, 0]])


@pytest.mark.parametrize("threshold", [-0.01, 1.5, float("nan")])
def test_threshold_outside_unit_interval_is_refused(threshold: float) -> None:
    distances = pd.DataFrame({"from": ["a"], "to": ["b"], "cost": [1.0]})
    with pytest.raises(GraphInputError, match="threshold"):
        build_adjacency(distances, ["a", "b"], threshold=threshold)


def test_no_sensor_in_common_is_an_error() -> None:
    distances = pd.DataFrame({"from": ["x"], "to": ["y"], "cost": [1.0]})
    with pytest.raises(
        GraphInputError, match="no sensor in common between 2 sensor ids and the distances file"
    ):
        build_adjacency(distances, ["a", "b"])


def test_sensors_without_distances_are_named_in_a_warning() -> None:
    distances = pd.DataFrame({"from": ["a", "b"], "to": ["b", "a"], "cost": [1.0, 2.0]})
    with pytest.warns(GraphWarning, match=r"^2 of 4 sensors have no road distance.*: c, d$"):
        adj = build_adjacency(distances, ["a", "b", "c", "d"])
    assert not adj[2:].any() and not adj[:, 2:].any()


def test_ids_are_matched_as_strings() -> None:
    distances = pd.DataFrame({"from": ["007", "7"], "to": ["7", "007"], "cost": [1.0, 3.0]})
    adj = build_adjacency(distances, ["7", "007"], threshold=0.0)
    # row "7" -> "007" is 3 m, row "007" -> "7" is 1 m; sigma = 1
    np.testing.assert_allclose(adj, [[0, math.exp(-9)], [math.exp(-1), 0]], rtol=1e-6)


def test_duplicate_sensor_ids_are_refused() -> None:
    distances = pd.DataFrame({"from": ["a"], "to": ["b"], "cost": [1.0]})
    with pytest.raises(GraphInputError, match="duplicate sensor id 'a'"):
        build_adjacency(distances, ["a", "b", "a"])
