"""The diffusion convolution's kernel (Li et al., ICLR 2018, Eq. 2): walks, sparse products, autograd.

Internal layout
---------------
The public model takes ``(batch, time, nodes, features)``. Inside the recurrence the node axis
comes first, ``(nodes, ..., features)``, because a support ``P`` (N × N, sparse CSR) then acts
on a plain 2-D view ``(N, everything_else)``: one sparse matmul per diffusion step for the whole
batch (and, for the encoder's inputs, for all time steps at once), with no per-sample loop and
no transpose copies.

What is computed, and where it differs from the original implementation
------------------------------------------------------------------------
The paper's diffusion convolution (Eq. 2) is

.. math::  X \\star_G f_\\theta = \\sum_{k=0}^{K} \\left(\\theta_{k,1} (D_O^{-1} W)^k
           + \\theta_{k,2} (D_I^{-1} W^T)^k\\right) X

so for every support ``P`` and ``k = 1..K`` the term is ``P^k X``: each walk restarts from ``X``.
The original TensorFlow code (and the PyTorch port) differ in two ways, and we follow the paper:

* it builds the terms with a Chebyshev-style recurrence ``x_k = 2 P x_{k-1} - x_{k-2}``, which is
  not ``P^k X`` for ``k >= 2``;
* its loop variable carries the last forward-diffused signal into the backward support (reported
  against the original as DCRNN issues 45 / 90), so its "backward" terms are backward walks
  *after* forward walks.

Diffusion is linear and acts on each feature separately, so the diffusion of a concatenation is
the concatenation of the diffusions: :class:`trafficcast.models.layers.DCGRUCell` uses that to
compute each shared term once. The functions here compute ``base + Σ_m T_m(x) W_m`` (``T_m`` the
terms, ``W_m`` the matching row blocks of a weight) without materialising the stacked terms where
that saves memory; ``tests/models/test_models_dcrnn_reference.py`` checks every branch against a
literal implementation of the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from trafficcast.models.sparse import Supports, sparse_matmul


def num_diffusion_terms(num_supports: int, max_diffusion_step: int) -> int:
    """The number of terms ``M = 1 + S·K`` (the identity plus K powers of each support)."""
    return 1 + num_supports * max_diffusion_step


def diffuse(
    x: torch.Tensor, supports: Supports | list[torch.Tensor], max_diffusion_step: int
) -> torch.Tensor:
    """All diffusion terms of ``x``, stacked along the feature axis.

    For each support ``P`` and ``k = 1..K`` the term ``P^k x`` (each walk restarting from ``x``),
    after the identity term ``x`` itself, in the order
    ``[x, P_1 x, P_1^2 x, ..., P_2 x, P_2^2 x, ...]``.

    Shapes:
        x: ``(N, *, F)`` — nodes first; any number of batch/time axes in between.
        supports: each ``(N, N)``, sparse CSR or dense.
        returns: ``(N, *, M·F)`` with ``M = 1 + len(supports)·K``, features grouped by term.
    """
    n = x.shape[0]
    inner = x.shape[1:]
    x0 = x.reshape(n, -1)  # (N, *·F): a diffusion step is one matmul over all batch entries
    terms = [x0]
    if max_diffusion_step > 0 and len(supports) > 0:
        if not isinstance(supports, Supports):
            supports = Supports(list(supports))
        for i in range(len(supports)):
            xk = x0
            for _ in range(max_diffusion_step):
                xk = supports.matmul(i, xk)  # (N, N) @ (N, *·F)
                terms.append(xk)
    # (N, *, M, F) -> (N, *, M·F): one copy, no transpose.
    stacked = torch.stack([t.view(n, *inner) for t in terms], dim=-2)
    return stacked.reshape(*stacked.shape[:-2], -1)


def _walks(
    supports: Supports, x0: torch.Tensor, max_diffusion_step: int, adjoint: bool = False
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(m, term)``: the diffusion terms of ``x0 (N, C)``, ``m`` their index in
    :func:`diffuse`'s order (``x0`` first, then each support's powers ``1..K``).

    The walks of all supports advance together (see :class:`Supports`), so the terms come power
    by power: ``P_1 x, P_2 x, P_1^2 x, ...``; each is a contiguous ``(N, C)`` block. With
    ``adjoint`` the walks use the transposed supports: ``(P^T)^k x0``.
    """
    yield 0, x0
    count, k_max = len(supports), max_diffusion_step
    if count == 0 or k_max == 0:
        return
    n = x0.shape[0]
    xk = sparse_matmul(supports.block("stack", adjoint), x0)  # (S·N, C): every P_i x0
    for k in range(1, k_max + 1):
        if k > 1:
            xk = sparse_matmul(supports.block("diag", adjoint), xk)  # every P_i^k x0
        for i in range(count):
            yield 1 + i * k_max + k - 1, xk[i * n : (i + 1) * n]


# Below this many elements of stacked terms (rows x M·F) the forward stacks them and does one
# matmul: at batch 1 that halves the number of operations, and the copy is a few hundred kB.
# A module constant so that tests can force either branch at any size.
_STACK_LIMIT = 1 << 20


def _conv_forward(
    x0: torch.Tensor,
    weight: torch.Tensor,
    base: torch.Tensor | None,
    supports: Supports,
    max_diffusion_step: int,
    rows: int,
) -> torch.Tensor:
    """The arithmetic of :class:`_DiffusionConv`'s forward (also called directly at inference):
    :func:`_conv_forward_stacked` up to :data:`_STACK_LIMIT` elements of stacked terms,
    :func:`_conv_forward_per_term` above.

    Shapes:
        x0: ``(N, C)`` with ``C = (rows / N)·F``; weight: ``(M·F, O)``; base: None, ``(O,)`` or
        ``(rows, O)``. returns: ``(rows, O)``.
    """
    if rows * weight.shape[0] <= _STACK_LIMIT:
        return _conv_forward_stacked(x0, weight, base, supports, max_diffusion_step, rows)
    return _conv_forward_per_term(x0, weight, base, supports, max_diffusion_step, rows)


def _conv_forward_stacked(
    x0: torch.Tensor,
    weight: torch.Tensor,
    base: torch.Tensor | None,
    supports: Supports,
    max_diffusion_step: int,
    rows: int,
) -> torch.Tensor:
    """:func:`_conv_forward` with the terms stacked into one matmul. For small inputs (a forecast
    of a few windows), where fewer, larger operations beat saving a copy."""
    features = weight.shape[0] // num_diffusion_terms(len(supports), max_diffusion_step)
    by_index = dict(_walks(supports, x0, max_diffusion_step))
    terms = [by_index[m].view(rows, features) for m in range(len(by_index))]
    stacked = torch.cat(terms, dim=1) if len(terms) > 1 else terms[0]  # (rows, M·F)
    return torch.mm(stacked, weight) if base is None else torch.addmm(base, stacked, weight)


def _conv_forward_per_term(
    x0: torch.Tensor,
    weight: torch.Tensor,
    base: torch.Tensor | None,
    supports: Supports,
    max_diffusion_step: int,
    rows: int,
) -> torch.Tensor:
    """:func:`_conv_forward` term by term: each term is multiplied into the output as soon as it
    is made, so no ``(rows, M·F)`` copy is made and at most two terms are alive. The output
    starts uninitialised: the first term's product overwrites it (``out=``), never reads it."""
    features = weight.shape[0] // num_diffusion_terms(len(supports), max_diffusion_step)
    out = x0.new_empty(rows, weight.shape[1])
    for m, term in _walks(supports, x0, max_diffusion_step):
        w = weight[m * features : (m + 1) * features]  # (F, O)
        term = term.view(rows, features)  # (N, C) -> (N·*, F)
        if m > 0:
            out.addmm_(term, w)
        elif base is None:
            torch.mm(term, w, out=out)
        else:
            torch.addmm(base, term, w, out=out)
    return out


class _DiffusionConv(torch.autograd.Function):
    """``base + Σ_m T_m(x) W_m``: a diffusion convolution that keeps no stacked terms.

    ``T_m(x)`` are the diffusion terms of :func:`diffuse` and ``W_m`` the matching row blocks of
    the weight. Forward (:func:`_conv_forward`) multiplies each term into the output as soon as
    it is made (no concatenation copy, at most two terms alive), or, for small inputs, stacks the
    terms for one matmul and frees them at once. Backward needs the terms again for the weight's
    gradient and recomputes them from ``x`` (a walk step costs a support's nonzeros per row, about
    8 on METR-LA, multiply-adds a value; the weight's product costs ``O``), so only ``x`` is kept
    for the backward pass: 1/M of the memory that saving the stacked terms takes. The input's
    gradient is ``Σ_m T_m^*(g W_m^T)`` with the adjoint walks ``(P^T)^k``, summed Horner-style
    per support: ``P^T (g_1 + P^T (g_2 + ...))``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x0: torch.Tensor,
        weight: torch.Tensor,
        base: torch.Tensor | None,
        supports: Supports,
        max_diffusion_step: int,
        rows: int,
        x: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # With a gate, x0 is gate ⊙ x (made by the caller, shaped (N, C)): only x and gate are
        # kept, both alive anyway (the state and a view of the gates' sigmoid), and backward
        # recomputes the product, so the product's storage is freed after forward.
        out = _conv_forward(x0, weight, base, supports, max_diffusion_step, rows)
        if gate is None:
            ctx.save_for_backward(x0, weight)
        else:
            ctx.save_for_backward(x, weight, gate)
        ctx.gated = gate is not None
        ctx.supports = supports
        ctx.max_diffusion_step = max_diffusion_step
        ctx.rows = rows
        ctx.base_dim = None if base is None else base.dim()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gated_inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, gate)
        if ctx.gated:
            x, weight, gate = ctx.saved_tensors
            gated_inputs = (x, gate)
            x0 = torch.mul(x, gate).view(x.shape[0], -1)
            needs_x0 = ctx.needs_input_grad[6] or ctx.needs_input_grad[7]
        else:
            x0, weight = ctx.saved_tensors
            needs_x0 = ctx.needs_input_grad[0]
        supports, k, rows = ctx.supports, ctx.max_diffusion_step, ctx.rows
        features = weight.shape[0] // num_diffusion_terms(len(supports), k)
        grad = grad.contiguous()  # (rows, O)
        backward = _backward_walking_grad if grad.shape[1] < 2 * features else _backward_recomputing
        grad_x, grad_weight = backward(
            x0, weight, grad, supports, k, rows, ctx.needs_input_grad[1], needs_x0
        )
        grad_base = None
        if ctx.needs_input_grad[2]:
            grad_base = grad.sum(0) if ctx.base_dim == 1 else grad
        if gated_inputs is None:
            return grad_x, grad_weight, grad_base, None, None, None, None, None
        grad_of_x = grad_gate = None
        if grad_x is not None:  # None when neither x nor the gate wants a gradient
            x, gate = gated_inputs
            grad_product = grad_x.view(x.shape)  # d(gate ⊙ x): the product rule by hand
            grad_of_x = grad_product * gate if ctx.needs_input_grad[6] else None
            grad_gate = grad_product * x if ctx.needs_input_grad[7] else None
        return None, grad_weight, grad_base, None, None, None, grad_of_x, grad_gate


# torch leaves ``Function.apply`` unannotated; this names what it returns here.
_diffusion_conv_with_grad: Callable[..., torch.Tensor] = _DiffusionConv.apply


def _backward_walking_grad(
    x0: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    supports: Supports,
    k: int,
    rows: int,
    needs_weight: bool,
    needs_x0: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_DiffusionConv`'s gradients ``(x0's (N, C), weight's)`` for a narrow output
    (``O < 2F``): the gradient is walked instead of the terms. With ``G_m = T_m^*(grad)`` (the
    adjoint walks ``(P^T)^k`` of ``grad``, width ``O``), ``T_m^T grad = x^T G_m`` and
    ``Σ_m T_m^*(grad W_m^T) = Σ_m G_m W_m^T``: ``S·K`` sparse matmuls of width ``O`` instead of
    ``2·S·K`` of width ``F``.

    Shapes: ``x0 (N, C)``, ``weight (M·F, O)``, ``grad (rows, O)`` contiguous.
    """
    n, out_dim = x0.shape[0], grad.shape[1]
    features = weight.shape[0] // num_diffusion_terms(len(supports), k)
    grad_x = grad_weight = None
    if needs_weight:
        grad_weight = torch.empty_like(weight)
    if needs_x0:
        grad_x = x0.new_empty(rows, features)
    x_rows = x0.view(rows, features)
    for m, g_m in _walks(supports, grad.view(n, -1), k, adjoint=True):
        block = slice(m * features, (m + 1) * features)
        g_m = g_m.view(rows, out_dim)
        if grad_weight is not None:
            torch.mm(x_rows.t(), g_m, out=grad_weight[block])
        if grad_x is not None:
            if m == 0:
                torch.mm(g_m, weight[block].t(), out=grad_x)
            else:
                grad_x.addmm_(g_m, weight[block].t())
    if grad_x is not None:
        grad_x = grad_x.view(n, -1)
    return grad_x, grad_weight


def _backward_recomputing(
    x0: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    supports: Supports,
    k: int,
    rows: int,
    needs_weight: bool,
    needs_x0: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_DiffusionConv`'s gradients ``(x0's (N, C), weight's)`` for a wide output: the
    weight's from the terms, walked again from ``x0``; the input's from the terms' gradients
    ``grad W^T``, taken back through the adjoint walks Horner-style, all supports at once.

    Shapes: ``x0 (N, C)``, ``weight (M·F, O)``, ``grad (rows, O)`` contiguous.
    """
    n = x0.shape[0]
    features = weight.shape[0] // num_diffusion_terms(len(supports), k)
    grad_x = grad_weight = None
    if needs_weight:
        grad_weight = torch.empty_like(weight)
        for m, term in _walks(supports, x0, k):
            block = slice(m * features, (m + 1) * features)
            torch.mm(term.view(rows, features).t(), grad, out=grad_weight[block])
    if needs_x0:
        grad_terms = torch.mm(grad, weight.t())  # (rows, M·F): all terms' gradients

        def term_grad(m: int) -> torch.Tensor:
            return grad_terms[:, m * features : (m + 1) * features]  # (rows, F), strided

        grad_x = term_grad(0).contiguous().view(n, -1)  # (N, C)
        count = len(supports)
        if count and k:
            # Horner over all supports at once: z holds one (N, C) block per support.
            z = x0.new_empty(count * n, x0.shape[1])  # (S·N, C)
            for i in range(count):
                z[i * n : (i + 1) * n].view(rows, features).copy_(term_grad(1 + i * k + k - 1))
            for step in range(k - 1, 0, -1):
                z = sparse_matmul(supports.block("diag", True), z)
                for i in range(count):
                    z[i * n : (i + 1) * n].view(rows, features).add_(
                        term_grad(1 + i * k + step - 1)
                    )
            grad_x.addmm_(supports.block("row", True), z)  # Σ_i P_i^T z_i
    return grad_x, grad_weight


def diffusion_conv(
    x: torch.Tensor,
    supports: Supports,
    max_diffusion_step: int,
    weight: torch.Tensor,
    base: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """The diffusion convolution of Eq. 2 with a weight per term: ``base + diffuse(x) @ weight``.

    The same function as ``diffuse(x, supports, K) @ weight + base`` (a test checks values and
    gradients), computed without materialising the ``M`` stacked terms (see
    :class:`_DiffusionConv`). With ``gate`` (shaped as ``x``) it convolves ``gate ⊙ x``, the
    GRU candidate's ``r ⊙ H``, without keeping that product for backward.

    Shapes:
        x: ``(N, *, F)`` nodes first; weight: ``(M·F, O)`` rows grouped by term as in
        :func:`diffuse`; base: ``(O,)`` (a bias) or ``(N, *, O)``, or None.
        returns: ``(N, *, O)``.
    """
    n = x.shape[0]
    lead = x.shape[:-1]
    rows = x[..., 0].numel()
    if gate is None and _narrow_input(weight):
        terms = diffuse(x, supports, max_diffusion_step)  # (N, *, M·F)
        return _stacked_matmul(terms, weight, base).view(*lead, weight.shape[1])
    source = x
    if gate is not None:
        if gate.shape != x.shape:
            raise ValueError(f"gate shape {tuple(gate.shape)} differs from x's {tuple(x.shape)}")
        with torch.no_grad():  # the product's gradient is _DiffusionConv's (product rule)
            x = torch.mul(x, gate)  # contiguous; not kept for backward (see _DiffusionConv)
    x0 = x.reshape(n, -1)  # (N, *·F)
    if not x0.is_contiguous():
        x0 = x0.contiguous()
    if base is not None and base.dim() > 1:
        base = base.reshape(rows, weight.shape[1])  # (N·*, O), a view where the strides allow
    grad_inputs = (x0, weight, base) if gate is None else (source, gate, weight, base)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in grad_inputs):
        kept = None if gate is None else source  # with a gate, backward rebuilds x0 from these
        out = _diffusion_conv_with_grad(
            x0, weight, base, supports, max_diffusion_step, rows, kept, gate
        )
    else:  # inference: the same arithmetic without the autograd bookkeeping
        out = _conv_forward(x0, weight, base, supports, max_diffusion_step, rows)
    return out.view(*lead, weight.shape[1])


def _narrow_input(weight: torch.Tensor) -> bool:
    """Whether a convolution with this ``(M·F, O)`` weight has a narrow input: its stacked terms
    (``M·F`` values a row) at most half the output (``O``). The model's own inputs (speed and
    time features, the decoder's fed-back prediction) are; the hidden states are not."""
    return 2 * weight.shape[0] <= weight.shape[1]


def _stacked_matmul(
    terms: torch.Tensor, weight: torch.Tensor, base: torch.Tensor | None
) -> torch.Tensor:
    """``base + terms @ weight`` as ``(rows, O)``, for a narrow input's stacked diffusion terms
    ``(..., M·F)`` (from :func:`diffuse`, rows in any order the caller wants the output in).

    With few input features the ``M`` terms, stacked, are a fraction of the output, so keeping
    them for backward costs little, and one matmul with ``M·F`` inner dimension replaces ``M``
    with ``F`` (1 or 2): each of those reads and writes the whole output, and the weight's
    gradient ``terms^T grad`` becomes one matmul reading ``grad`` once instead of ``M`` times
    (figures in ``bench/README.md``).
    """
    terms = terms.reshape(-1, terms.shape[-1])  # a copy only when the caller reordered rows
    if base is None:
        return torch.mm(terms, weight)
    return torch.addmm(base.reshape(-1, weight.shape[1]) if base.dim() > 1 else base, terms, weight)


def diffusion_conv_steps(
    x: torch.Tensor,
    supports: Supports,
    max_diffusion_step: int,
    weight: torch.Tensor,
    base: torch.Tensor,
) -> torch.Tensor:
    """:func:`diffusion_conv` of a whole sequence, step-major: each step's output a contiguous
    block, as a recurrence reads them.

    For a narrow input the stacked terms (``M·F`` values a row) are put in step order before the
    matmul, so the matmul writes the output in place; otherwise the output (``O`` values a row)
    is transposed after it.

    Shapes:
        x: ``(N, T, B, F)``; weight: ``(M·F, O)``; base: ``(O,)``. returns: ``(T, N, B, O)``.
    """
    if not _narrow_input(weight):
        out = diffusion_conv(x, supports, max_diffusion_step, weight, base)  # (N, T, B, O)
        return out.transpose(0, 1).contiguous()
    terms = diffuse(x, supports, max_diffusion_step).transpose(0, 1)  # (T, N, B, M·F)
    out = _stacked_matmul(terms, weight, base)  # (T·N·B, O), step-major rows
    return out.view(*x.shape[1::-1], x.shape[2], weight.shape[1])
