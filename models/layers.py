"""Diffusion convolution and the DCGRU cell (Li et al., ICLR 2018, Eq. 2 and Eq. 3).

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

The DCGRU cell (Eq. 3) runs diffusion convolutions of ``[X, H]`` for the reset/update gates and of
``[X, r ⊙ H]`` for the candidate. Diffusion is linear and acts on each feature separately, so the
diffusion of a concatenation is the concatenation of the diffusions. We use that to compute each
shared term once: the input's diffusion is shared by the gates and the candidate (and, in the
encoder, computed for all time steps in one batched operation), and a hidden state's diffusion
is shared by the layer above (as its input) and the layer's own next step. The weights are the
paper's ``W`` split by rows into an input part and a hidden part; the result is the same
function (``tests/models`` checks it against a straightforward implementation).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def num_diffusion_terms(num_supports: int, max_diffusion_step: int) -> int:
    """The number of terms ``M = 1 + S·K`` (the identity plus K powers of each support)."""
    return 1 + num_supports * max_diffusion_step


def sparse_matmul(support: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``support @ x`` into a fresh buffer.

    ``torch.mm(csr, dense)`` zero-fills its output, multiplies into a temporary and copies it
    back: three passes over the output. ``addmm`` with ``beta=0`` writes the product straight
    into an uninitialised buffer (``beta=0`` means the buffer is never read, so its garbage,
    NaN included, cannot leak in; a test checks it). Measured here: about 2x faster.
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

    @staticmethod
    def forward(
        ctx, support: torch.Tensor, support_t: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        ctx.support_t = support_t
        return sparse_matmul(support, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, sparse_matmul(ctx.support_t, grad.contiguous())


class Supports:
    """The graph supports of one forward pass, with their transposes for the backward pass."""

    def __init__(self, supports: list[torch.Tensor]) -> None:
        self.matrices = supports
        self._transposes: list[torch.Tensor] | None = None  # made on first need (training only)

    def __len__(self) -> int:
        return len(self.matrices)

    def transpose(self, i: int) -> torch.Tensor:
        if self._transposes is None:
            self._transposes = [
                s.t().to_sparse_csr() if s.layout == torch.sparse_csr else s.t().contiguous()
                for s in self.matrices
            ]
        return self._transposes[i]

    def matmul(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return _SparseMatmul.apply(self.matrices[i], self.transpose(i), x)
        return sparse_matmul(self.matrices[i], x)


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


class DCGRUCell(nn.Module):
    """A diffusion-convolutional GRU cell (Li et al. 2018, Eq. 3).

    .. math::
        r = \\sigma(\\Theta_r \\star [X, H] + b_r), \\quad u = \\sigma(\\Theta_u \\star [X, H] + b_u)

        C = \\tanh(\\Theta_C \\star [X, r \\odot H] + b_C), \\quad H' = u \\odot H + (1 - u) \\odot C

    The cell is used in two calls so that shared work is done once: :meth:`project_input` maps the
    diffused input to its contribution to all three of r, u and C (biases included), for any
    number of time steps at once; :meth:`forward` takes that contribution, the state and the
    state's diffusion, and returns the next state.

    Gate biases start at 1.0 as in the original code (the gates start mostly open to the old state).

    Shapes:
        project_input: ``x_diffused (N, *, M·input_dim)`` -> ``(N, *, 3·hidden_dim)``
        forward: ``x_proj (N, B, 3·hidden_dim)``, ``h (N, B, hidden_dim)``,
        ``h_diffused (N, B, M·hidden_dim)`` -> ``(N, B, hidden_dim)``
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_supports: int,
        max_diffusion_step: int,
        gate_bias_start: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.max_diffusion_step = max_diffusion_step
        self.num_terms = num_diffusion_terms(num_supports, max_diffusion_step)
        self.gate_bias_start = gate_bias_start
        m = self.num_terms
        # Columns: [r | u | C]; rows: diffusion terms of the input, grouped by term.
        self.weight_input = nn.Parameter(torch.empty(m * input_dim, 3 * hidden_dim))
        self.weight_hidden_gates = nn.Parameter(torch.empty(m * hidden_dim, 2 * hidden_dim))
        self.weight_hidden_candidate = nn.Parameter(torch.empty(m * hidden_dim, hidden_dim))
        self.bias = nn.Parameter(torch.empty(3 * hidden_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-normal over the full concatenated weight, as the original initialiser.
        # The gates' weight is (M·(F+H), 2H) and the candidate's (M·(F+H), H) in the paper's
        # layout; each of our blocks takes the standard deviation of the weight it is part of.
        fan_in = self.num_terms * (self.input_dim + self.hidden_dim)
        hidden = self.hidden_dim
        gate_std = math.sqrt(2.0 / (fan_in + 2 * hidden))
        candidate_std = math.sqrt(2.0 / (fan_in + hidden))
        with torch.no_grad():
            self.weight_input[:, : 2 * hidden].normal_(0.0, gate_std)
            self.weight_input[:, 2 * hidden :].normal_(0.0, candidate_std)
            self.weight_hidden_gates.normal_(0.0, gate_std)
            self.weight_hidden_candidate.normal_(0.0, candidate_std)
            self.bias[: 2 * self.hidden_dim].fill_(self.gate_bias_start)
            self.bias[2 * self.hidden_dim :].zero_()

    def project_input(self, x_diffused: torch.Tensor) -> torch.Tensor:
        lead = x_diffused.shape[:-1]
        flat = x_diffused.reshape(-1, x_diffused.shape[-1])  # (N·*, M·F)
        out = torch.addmm(self.bias, flat, self.weight_input)  # (N·*, 3H)
        return out.view(*lead, 3 * self.hidden_dim)

    def forward(
        self,
        x_proj: torch.Tensor,
        h: torch.Tensor,
        h_diffused: torch.Tensor,
        supports: Supports,
    ) -> torch.Tensor:
        n, b, hidden = h.shape
        gates = torch.mm(h_diffused.reshape(n * b, -1), self.weight_hidden_gates)  # (N·B, 2H)
        gates = torch.sigmoid(x_proj[..., : 2 * hidden] + gates.view(n, b, 2 * hidden))
        r, u = gates.split(hidden, dim=-1)
        rh_diffused = diffuse(r * h, supports, self.max_diffusion_step)  # (N, B, M·H)
        candidate = torch.mm(rh_diffused.reshape(n * b, -1), self.weight_hidden_candidate)
        c = torch.tanh(x_proj[..., 2 * hidden :] + candidate.view(n, b, hidden))
        return u * h + (1.0 - u) * c
