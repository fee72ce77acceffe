"""Sparse products with the graph supports: ``P @ X`` in one pass, its autograd, and the
block matrices that advance the walks of all supports together.

Supports come as ``(N, N)`` sparse CSR tensors (dense ones work too, more slowly); the kernel in
:mod:`trafficcast.models.diffusion` multiplies them into nodes-first 2-D views ``(N, C)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

# The CSR products below are the point of this module; torch's beta notice would print on each run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def sparse_matmul(support: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``support @ x`` into a fresh buffer.

    ``torch.mm(csr, dense)`` zero-fills its output, multiplies into a temporary and copies it
    back: three passes over the output. ``addmm`` with ``beta=0`` writes the product straight
    into an uninitialised buffer, one pass (``beta=0`` means the buffer is never read, so its
    garbage, NaN included, cannot leak in: ``tests/models/test_models_dcrnn_reference.py``
    fills every uninitialised buffer with NaN and compares with the paper's formula).
    """
    if support.layout != torch.sparse_csr:
        return torch.mm(support, x)
    out = x.new_empty(support.shape[0], x.shape[1])
    return torch.addmm(out, support, x, beta=0.0, alpha=1.0, out=out)


class _SparseMatmul(torch.autograd.Function):
    """``P @ X`` for a constant sparse ``P``, with ``P^T`` given for the backward pass.

    torch's own backward for a CSR matmul transposes and re-sorts ``P`` at every call; the
    supports are constant, so their transposes are made once per forward pass instead.
    """

    # ``ctx: Any``: torch's context object takes whatever attributes the forward puts on it.
    @staticmethod
    def forward(
        ctx: Any, support: torch.Tensor, support_t: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        ctx.support_t = support_t
        return sparse_matmul(support, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, sparse_matmul(ctx.support_t, grad.contiguous())


# torch leaves ``Function.apply`` unannotated; this names what it takes and returns here.
_sparse_matmul_with_grad: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = (
    _SparseMatmul.apply
)


# Which block matrix of the supports (see Supports.block).
BlockKind = Literal["stack", "row", "diag"]


class Supports:
    """The graph supports of one forward pass, with the block matrices the fused walks use.

    For ``S`` supports the walks of all of them advance together, one sparse matmul per step:
    the first step multiplies by ``[P_1; ...; P_S]`` (stacked, ``(S·N, N)``), the next ones by
    ``diag(P_1, ..., P_S)`` (block-diagonal, ``(S·N, S·N)``). Same products, ``S`` times fewer
    calls. The transposed blocks serve the backward pass. All are made on first need.
    """

    def __init__(self, supports: list[torch.Tensor]) -> None:
        self.matrices = supports
        self._transposes: list[torch.Tensor] | None = None  # made on first need (training only)
        self._blocks: dict[tuple[BlockKind, bool], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.matrices)

    def transpose(self, i: int) -> torch.Tensor:
        """``P_i^T`` in ``P_i``'s layout, made once for all supports on first need."""
        if self._transposes is None:
            self._transposes = [
                s.t().to_sparse_csr() if s.layout == torch.sparse_csr else s.t().contiguous()
                for s in self.matrices
            ]
        return self._transposes[i]

    def matmul(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``P_i @ x``, differentiable in ``x``. Shapes: ``x (N, C)`` -> ``(N, C)``."""
        if x.requires_grad:
            return _sparse_matmul_with_grad(self.matrices[i], self.transpose(i), x)
        return sparse_matmul(self.matrices[i], x)

    def block(self, kind: BlockKind, transposed: bool = False) -> torch.Tensor:
        """``kind``: ``stack`` ``[P_1; ...]`` (S·N, N), ``row`` ``[P_1, ...]`` (N, S·N) or
        ``diag`` (S·N, S·N), of the supports or (``transposed``) of their transposes; CSR."""
        key: tuple[BlockKind, bool] = (kind, transposed)
        if key not in self._blocks:
            self._blocks[key] = self._make_block(kind, transposed)
        return self._blocks[key]

    def _make_block(self, kind: BlockKind, transposed: bool) -> torch.Tensor:
        n = self.matrices[0].shape[0]
        count = len(self.matrices)
        rows, cols, vals = [], [], []
        for i, p in enumerate(self.matrices):
            coo = p.to_sparse().coalesce()  # COO from CSR or dense alike
            r, c = coo.indices()
            if transposed:
                r, c = c, r
            rows.append(r + (i * n if kind in ("stack", "diag") else 0))
            cols.append(c + (i * n if kind in ("row", "diag") else 0))
            vals.append(coo.values())
        shape = {"stack": (count * n, n), "row": (n, count * n), "diag": (count * n, count * n)}
        coo = torch.sparse_coo_tensor(
            torch.stack([torch.cat(rows), torch.cat(cols)]),
            torch.cat(vals),
            shape[kind],
            check_invariants=True,
        ).coalesce()
        csr = coo.to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            size=shape[kind],
            check_invariants=False,
        )
