"""Graph supports as torch sparse tensors, the form the diffusion convolution multiplies by.

Apart from :mod:`~trafficcast.graph.transitions` so that ``import trafficcast.graph`` (and the
``trafficcast graph`` command) does not load torch; import this module where tensors are needed.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["to_torch_sparse_coo", "to_torch_sparse_csr"]


def to_torch_sparse_csr(m: np.ndarray | sp.spmatrix | sp.sparray) -> torch.Tensor:
    """A float32 ``torch.sparse_csr`` tensor with the same entries as ``m``.

    Shapes:
        m: ``(N, M)``; returns ``(N, M)``.
    """
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
    coo = sp.coo_matrix(m, dtype=np.float32)
    indices = np.vstack([coo.row, coo.col]).astype(np.int64)  # (2, nnz)
    return torch.sparse_coo_tensor(
        torch.from_numpy(indices),
        torch.from_numpy(coo.data.copy()),
        size=coo.shape,
        check_invariants=True,
    ).coalesce()
