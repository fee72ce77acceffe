"""Supports computed by hand on a 3-node directed graph, and properties on METR-LA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trafficcast.graph import (
    FILTER_TYPES,
    GraphInputError,
    compute_supports,
    load_adjacency,
    random_walk_matrix,
    reverse_random_walk_matrix,
    scaled_laplacian,
)
from trafficcast.graph.pyg import to_edge_index
from trafficcast.graph.tensors import to_torch_sparse_coo, to_torch_sparse_csr

REPO = Path(__file__).resolve().parents[2]

# Roads 0->1 (weight 1), 0->2 (3), 1->2 (2); node 2 has no outgoing road.
W = np.array([[0.0, 1.0, 3.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])

# D_O = diag(4, 2, 0): rows divided by out-degree, node 2's row stays zero.
FORWARD = np.array([[0.0, 0.25, 0.75], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
# W^T rows are in-edges; D_I = diag(0, 1, 5).
BACKWARD = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.4, 0.0]])
# Undirected W = [[0,1,3],[1,0,2],[3,2,0]], degrees 4, 3, 5; with lambda_max = 2 the scaled
# Laplacian is L - I = -D^{-1/2} W D^{-1/2}.
LAPLACIAN = np.array(
    [
        [0.0, -1 / math.sqrt(12), -3 / math.sqrt(20)],
        [-1 / math.sqrt(12), 0.0, -2 / math.sqrt(15)],
        [-3 / math.sqrt(20), -2 / math.sqrt(15), 0.0],
    ]
)


@pytest.fixture(scope="module")
def metr_la_adj() -> np.ndarray:
    return load_adjacency(REPO / "data" / "sample" / "adj_mx.pkl")[1]


# Supports each filter type builds; a type added to FILTER_TYPES fails here until it is added.
SUPPORT_COUNTS = {"laplacian": 1, "random_walk": 1, "dual_random_walk": 2}


@pytest.mark.parametrize("filter_type", FILTER_TYPES)
def test_every_listed_filter_type_builds_its_supports(
    filter_type: str, metr_la_adj: np.ndarray
) -> None:
    # FILTER_TYPES is the list error messages offer: each entry must be accepted.
    supports = compute_supports(metr_la_adj, filter_type)
    assert len(supports) == SUPPORT_COUNTS[filter_type]
    for support in supports:
        assert support.format == "csr" and support.dtype == np.float32
        assert support.shape == (207, 207)
        assert support.nnz > 0 and np.isfinite(support.data).all()


@pytest.mark.parametrize("filter_type", ["chebyshev", "Laplacian", "dual_random_walk ", ""])
def test_filter_types_not_listed_are_refused(filter_type: str) -> None:
    assert filter_type not in FILTER_TYPES
    with pytest.raises(GraphInputError, match="unknown filter_type"):
        compute_supports(W, filter_type)


@pytest.mark.parametrize(
    ("filter_type", "expected"),
    [
        ("random_walk", [FORWARD]),
        ("dual_random_walk", [FORWARD, BACKWARD]),
        ("laplacian", [LAPLACIAN]),
    ],
)
def test_supports_match_hand_computation(filter_type: str, expected: list[np.ndarray]) -> None:
    supports = compute_supports(W, filter_type)
    assert len(supports) == len(expected)
    for support, want in zip(supports, expected, strict=True):
        assert sp.issparse(support) and support.format == "csr"
        assert support.dtype == np.float32
        np.testing.assert_allclose(support.toarray(), want, rtol=1e-6, atol=1e-7)


def test_diffusion_direction_on_a_signal() -> None:
    # (P x)[i] = sum_j P[i, j] x[j]: node 0 averages its downstream neighbours 1 and 2.
    x = np.array([10.0, 20.0, 40.0])
    np.testing.assert_allclose(random_walk_matrix(W) @ x, [35.0, 40.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(reverse_random_walk_matrix(W) @ x, [0.0, 10.0, 14.0], rtol=1e-6)


def test_reverse_walk_is_forward_walk_of_transpose() -> None:
    np.testing.assert_array_equal(
        reverse_random_walk_matrix(W).toarray(), random_walk_matrix(W.T).toarray()
    )


def test_laplacian_with_computed_lambda_max() -> None:
    sym = np.maximum(W, W.T)
    d = sym.sum(axis=1)
    lap = np.eye(3) - sym / np.sqrt(np.outer(d, d))
    lambda_max = np.linalg.eigvalsh(lap).max()
    got = scaled_laplacian(W, lambda_max=None).toarray()
    np.testing.assert_allclose(got, 2 / lambda_max * lap - np.eye(3), rtol=1e-5, atol=1e-6)
    # its spectrum is scaled into [-1, 1]
    assert np.linalg.eigvalsh(got.astype(np.float64)).max() == pytest.approx(1.0, abs=1e-5)


def test_laplacian_on_large_graph_uses_sparse_eigensolver(metr_la_adj: np.ndarray) -> None:
    got = scaled_laplacian(metr_la_adj, lambda_max=None).toarray().astype(np.float64)
    eig = np.linalg.eigvalsh(got)
    assert eig.max() == pytest.approx(1.0, abs=1e-4)
    assert eig.min() >= -1.0 - 1e-4


def test_zero_degree_node_gives_zero_rows_not_nan() -> None:
    w = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # node 2 isolated
    for support in (random_walk_matrix(w), reverse_random_walk_matrix(w)):
        dense = support.toarray()
        assert np.isfinite(dense).all()
        np.testing.assert_array_equal(dense[2], [0.0, 0.0, 0.0])
    lap = scaled_laplacian(w).toarray()
    assert np.isfinite(lap).all()
    np.testing.assert_allclose(lap, [[0, -1, 0], [-1, 0, 0], [0, 0, 0]], atol=1e-7)


def test_random_walks_are_row_stochastic_on_metr_la(metr_la_adj: np.ndarray) -> None:
    for support in compute_supports(metr_la_adj, "dual_random_walk"):
        row_sums = np.asarray(support.sum(axis=1)).ravel()
        has_edges = np.asarray((support != 0).sum(axis=1)).ravel() > 0
        np.testing.assert_allclose(row_sums[has_edges], 1.0, rtol=1e-5)
        assert (support.data >= 0).all()
    forward, backward = compute_supports(metr_la_adj, "dual_random_walk")
    # METR-LA is directed, so the two walks differ.
    assert abs(forward - backward).max() > 0.1


def test_sparse_input_gives_same_supports(metr_la_adj: np.ndarray) -> None:
    for filter_type in FILTER_TYPES:
        dense = compute_supports(metr_la_adj, filter_type)
        sparse = compute_supports(sp.csr_matrix(metr_la_adj), filter_type)
        for a, b in zip(dense, sparse, strict=True):
            np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-6, atol=1e-7)


def test_unknown_filter_type_lists_valid_ones() -> None:
    with pytest.raises(
        GraphInputError,
        match=r"unknown filter_type 'chebyshev' \(valid: laplacian, random_walk, "
        r"dual_random_walk\)",
    ):
        compute_supports(W, "chebyshev")


def test_non_square_adjacency_is_refused() -> None:
    with pytest.raises(GraphInputError, match="square"):
        random_walk_matrix(np.ones((2, 3)))


def test_torch_sparse_round_trip(metr_la_adj: np.ndarray) -> None:
    support = random_walk_matrix(metr_la_adj)
    csr = to_torch_sparse_csr(support)
    coo = to_torch_sparse_coo(support)
    assert csr.layout == torch.sparse_csr and csr.dtype == torch.float32
    assert coo.layout == torch.sparse_coo and coo.is_coalesced() and coo.dtype == torch.float32
    np.testing.assert_array_equal(csr.to_dense().numpy(), support.toarray())
    np.testing.assert_array_equal(coo.to_dense().numpy(), support.toarray())
    # and multiplying a signal gives what scipy gives
    x = np.random.default_rng(0).normal(size=(207, 4)).astype(np.float32)
    np.testing.assert_allclose((csr @ torch.from_numpy(x)).numpy(), support @ x, atol=1e-5)


def test_torch_conversion_of_hand_example() -> None:
    csr = to_torch_sparse_csr(FORWARD)
    assert csr.crow_indices().tolist() == [0, 2, 3, 3]
    assert csr.col_indices().tolist() == [1, 2, 2]
    assert csr.values().tolist() == [0.25, 0.75, 1.0]


def test_edge_index_keeps_direction() -> None:
    w = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 1.0], [0.25, 0.0, 0.0]], dtype=np.float32)
    for adj in (w, sp.csr_matrix(w)):
        edge_index, edge_weight = to_edge_index(adj)
        assert edge_index.dtype == torch.long and edge_weight.dtype == torch.float32
        # row 0 = source sensor i, row 1 = target sensor j of w[i, j]
        assert edge_index.tolist() == [[0, 1, 2], [1, 2, 0]]
        assert edge_weight.tolist() == [0.5, 1.0, 0.25]


def test_edge_index_round_trips_metr_la(metr_la_adj: np.ndarray) -> None:
    edge_index, edge_weight = to_edge_index(metr_la_adj)
    assert edge_index.shape == (2, 1722)
    rebuilt = np.zeros_like(metr_la_adj)
    rebuilt[edge_index[0].numpy(), edge_index[1].numpy()] = edge_weight.numpy()
    np.testing.assert_array_equal(rebuilt, metr_la_adj)
