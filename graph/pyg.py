"""An adjacency as PyTorch Geometric's ``edge_index`` and ``edge_weight``.

Its own module because importing PyG takes seconds: only code that hands graphs to PyG pays it.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from trafficcast.graph.errors import GraphInputError

with warnings.catch_warnings():
    # torch_geometric's import emits torch.jit deprecation noise that is not ours to report.
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch_geometric.utils import dense_to_sparse, from_scipy_sparse_matrix

__all__ = ["to_edge_index"]


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
