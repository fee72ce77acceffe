"""Graph supports: the matrices the diffusion convolution multiplies node signals by.

Convention everywhere in trafficcast: a support ``P`` acts on a node signal ``X`` as
``(P X)[i] = sum_j P[i, j] X[j]``, and ``adj[i, j]`` is the weight of the road from sensor i to
sensor j. So the forward random walk ``D_O^{-1} W`` averages, at sensor i, the signal of the
sensors downstream of it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackNoConvergence, eigs, eigsh

from trafficcast.graph.errors import GraphInputError

if TYPE_CHECKING:  # torch is imported where used: `trafficcast graph` need not load it
    import torch

__all__ = [
    "FILTER_TYPES",
    "compute_supports",
    "random_walk_matrix",
    "reverse_random_walk_matrix",
    "scaled_laplacian",
    "to_edge_index",
    "to_torch_sparse_coo",
    "to_torch_sparse_csr",
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


def to_torch_sparse_csr(m: np.ndarray | sp.spmatrix | sp.sparray) -> torch.Tensor:
    """A float32 ``torch.sparse_csr`` tensor with the same entries as ``m``.

    Shapes:
        m: ``(N, M)``; returns ``(N, M)``.
    """
    import torch

    csr = sp.csr_matrix(m, dtype=np.float32)
    csr.sort_indices()
    with warnings.catch_warnings():
        # torch warns once per process that CSR is "beta"; users of the CLI cannot act on it.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data.copy()),
            size=csr.shape,
            dtype=torch.float32,
            check_invariants=True,  # cheap next to building the matrix; silences torch's warning
        )


def to_torch_sparse_coo(m: np.ndarray | sp.spmatrix | sp.sparray) -> torch.Tensor:
    """A coalesced float32 ``torch.sparse_coo`` tensor with the same entries as ``m``.

    Shapes:
        m: ``(N, M)``; returns ``(N, M)``.
    """
    import torch

    coo = sp.coo_matrix(m, dtype=np.float32)
    indices = np.vstack([coo.row, coo.col]).astype(np.int64)  # (2, nnz)
    return torch.sparse_coo_tensor(
        torch.from_numpy(indices),
        torch.from_numpy(coo.data.copy()),
        size=coo.shape,
        check_invariants=True,
    ).coalesce()


def to_edge_index(
    adj: np.ndarray | sp.spmatrix | sp.sparray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyG ``edge_index`` and ``edge_weight`` of an adjacency, direction kept.

    Each nonzero ``adj[i, j]`` (road from sensor i to sensor j) becomes the column ``(i, j)``:
    row 0 holds the source sensor i, row 1 the target sensor j. PyG's ``MessagePassing`` (default
    ``flow="source_to_target"``) sends messages from row 0 to row 1, i.e. it computes
    ``out[j] = sum_i adj[i, j] x[i]`` = ``(adj^T x)[j]``; to apply a support as ``P x`` pass the
    edges of ``P`` with ``flow="target_to_source"`` (or flip the rows).

    Shapes:
        adj: ``(N, N)``; returns ``edge_index`` ``(2, E)`` int64 and ``edge_weight`` ``(E,)``
        float32, ``E`` = number of nonzeros, ordered by (i, j).
    """
    import torch

    with warnings.catch_warnings():
        # torch_geometric's import emits torch.jit deprecation noise that is not ours to report.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.utils import dense_to_sparse, from_scipy_sparse_matrix

    if sp.issparse(adj):
        coo = sp.coo_matrix(adj, dtype=np.float32)
        coo.eliminate_zeros()
        coo.sum_duplicates()  # also sorts by (row, col)
        edge_index, edge_weight = from_scipy_sparse_matrix(coo)
    else:
        dense = torch.as_tensor(np.asarray(adj, dtype=np.float32))
        if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
            raise GraphInputError(f"adjacency has shape {tuple(dense.shape)}, expected square")
        edge_index, edge_weight = dense_to_sparse(dense)
    return edge_index.to(torch.long), edge_weight.to(torch.float32)
