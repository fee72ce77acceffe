"""Graph supports: the matrices the diffusion convolution multiplies node signals by.

Their torch forms are in :mod:`~trafficcast.graph.tensors` and PyG's ``edge_index`` form in
:mod:`~trafficcast.graph.pyg`, apart so that this module (and ``trafficcast graph``) needs no torch.

Convention everywhere in trafficcast: a support ``P`` acts on a node signal ``X`` as
``(P X)[i] = sum_j P[i, j] X[j]``, and ``adj[i, j]`` is the weight of the road from sensor i to
sensor j. So the forward random walk ``D_O^{-1} W`` averages, at sensor i, the signal of the
sensors downstream of it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackNoConvergence, eigs, eigsh

from trafficcast.graph.errors import GraphInputError

__all__ = [
    "FILTER_TYPES",
    "compute_supports",
    "random_walk_matrix",
    "reverse_random_walk_matrix",
    "scaled_laplacian",
]

FILTER_TYPES = ("laplacian", "random_walk", "dual_random_walk")

# Below this size a dense eigensolver is cheaper and ARPACK (which needs k < N) may not apply.
_DENSE_EIG_MAX_NODES = 64


def _as_csr(adj: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """A float64 CSR copy of a square dense or sparse adjacency (float64: sums without drift)."""
    m = sp.csr_matrix(adj, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise GraphInputError(f"adjacency has shape {m.shape}, expected a square matrix")
    return m


def _safe_inverse(values: np.ndarray, power: float = -1.0) -> np.ndarray:
    """``values ** power`` with 0 where ``values`` is 0: a node without edges gets a zero row."""
    out = np.zeros_like(values, dtype=np.float64)
    positive = values > 0
    out[positive] = np.power(values[positive], power)
    return out


def random_walk_matrix(adj: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """Forward transition matrix ``P = D_O^{-1} W`` (DCRNN Eq. 2), ``D_O`` = out-degree.

    Row-stochastic: each row with an edge sums to 1; a row with zero out-degree stays all zero
    (no division by zero, no NaN).

    Shapes:
        adj: ``(N, N)``; returns ``(N, N)`` float32 CSR.
    """
    w = _as_csr(adj)
    out_degree = np.asarray(w.sum(axis=1)).ravel()
    p = sp.diags(_safe_inverse(out_degree)) @ w
    return sp.csr_matrix(p, dtype=np.float32)


def reverse_random_walk_matrix(adj: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """Backward transition matrix ``D_I^{-1} W^T`` (DCRNN Eq. 2), ``D_I`` = in-degree.

    Equal to ``random_walk_matrix(adj.T)``: the walk that follows roads against traffic.

    Shapes:
        adj: ``(N, N)``; returns ``(N, N)`` float32 CSR.
    """
    return random_walk_matrix(_as_csr(adj).T)


def scaled_laplacian(
    adj: np.ndarray | sp.spmatrix | sp.sparray,
    lambda_max: float | None = 2.0,
    undirected: bool = True,
) -> sp.csr_matrix:
    """Scaled normalized Laplacian ``(2 / lambda_max) L - I`` for Chebyshev filters.

    As DCRNN's ``calculate_scaled_laplacian``: if ``undirected``, ``W = max(W, W^T)``; then
    ``L = I - D^{-1/2} W D^{-1/2}`` with ``D`` the row sums (a zero-degree node gets
    ``D^{-1/2} = 0``, so its row of ``L`` is the identity's). ``lambda_max=None`` computes the
    largest eigenvalue of ``L`` (``eigsh``, ``'LM'``). With ``undirected=False`` we build
    ``D^{-1/2} W D^{-1/2}`` as written; the original code built its transpose.

    Shapes:
        adj: ``(N, N)``; returns ``(N, N)`` float32 CSR.
    """
    w = _as_csr(adj)
    if undirected:
        w = w.maximum(w.T).tocsr()
    num_nodes = w.shape[0]
    d_inv_sqrt = sp.diags(_safe_inverse(np.asarray(w.sum(axis=1)).ravel(), -0.5))
    identity = sp.identity(num_nodes, dtype=np.float64, format="csr")
    laplacian = (identity - d_inv_sqrt @ w @ d_inv_sqrt).tocsr()
    if lambda_max is None:
        lambda_max = _largest_eigenvalue(laplacian, symmetric=undirected)
    if not np.isfinite(lambda_max) or lambda_max <= 0:
        raise GraphInputError(f"lambda_max {lambda_max!r} must be a positive number")
    scaled = (2.0 / lambda_max) * laplacian - identity
    return sp.csr_matrix(scaled, dtype=np.float32)


def _largest_eigenvalue(laplacian: sp.csr_matrix, symmetric: bool) -> float:
    """Largest-magnitude eigenvalue of ``L`` (its real part when ``L`` is not symmetric)."""
    if laplacian.shape[0] > _DENSE_EIG_MAX_NODES:
        solver = eigsh if symmetric else eigs
        try:
            values = solver(laplacian, k=1, which="LM", return_eigenvectors=False)
            return float(np.real(values[0]))
        except ArpackNoConvergence:
            pass  # rare; the dense solver below always answers
    dense = laplacian.toarray()
    values = np.linalg.eigvalsh(dense) if symmetric else np.linalg.eigvals(dense)
    return float(np.real(values[np.argmax(np.abs(values))]))


def compute_supports(
    adj: np.ndarray | sp.spmatrix | sp.sparray, filter_type: str
) -> list[sp.csr_matrix]:
    """The supports of a DCRNN ``filter_type``.

    - ``laplacian``: ``[scaled_laplacian(adj)]`` (ChebNet-style, undirected);
    - ``random_walk``: ``[D_O^{-1} W]``;
    - ``dual_random_walk``: ``[D_O^{-1} W, D_I^{-1} W^T]`` (forward and backward diffusion).

    The paper (Li et al., ICLR 2018, Eq. 2) diffuses with ``(D_O^{-1} W)^k`` and
    ``(D_I^{-1} W^T)^k`` acting on ``X``. The original TF/PyTorch code passes the *transposes* of
    these matrices (column-stochastic) into its sparse matmul, which diffuses along the opposite
    direction of each road. We follow the paper (row-stochastic), which is what the formula says:
    ``(P X)[i] = sum_j P[i, j] X[j]``.

    Shapes:
        adj: ``(N, N)``; returns a list of ``(N, N)`` float32 CSR matrices.

    Raises:
        GraphInputError: unknown ``filter_type`` (the valid ones are listed).
    """
    if filter_type == "laplacian":
        return [scaled_laplacian(adj)]
    if filter_type == "random_walk":
        return [random_walk_matrix(adj)]
    if filter_type == "dual_random_walk":
        return [random_walk_matrix(adj), reverse_random_walk_matrix(adj)]
    raise GraphInputError(f"unknown filter_type {filter_type!r} (valid: {', '.join(FILTER_TYPES)})")
