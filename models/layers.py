"""The DCGRU cell (Li et al., ICLR 2018, Eq. 3) on the diffusion convolution of Eq. 2.

The cell runs diffusion convolutions of ``[X, H]`` for the reset/update gates and of
``[X, r ⊙ H]`` for the candidate. Diffusion is linear and acts on each feature separately, so the
diffusion of a concatenation is the concatenation of the diffusions. We use that to compute each
shared term once: the input's diffusion is shared by the gates and the candidate (and, in the
encoder, computed for all time steps in one batched operation), and a hidden state's diffusion
is shared by the layer above (as its input) and the layer's own next step. The weights are the
paper's ``W`` split by rows into an input part and a hidden part; the result is the same
function (``tests/models`` checks it against a straightforward implementation).

The arithmetic, the internal nodes-first layout and where it departs from the original code are
in :mod:`trafficcast.models.diffusion` (the kernel) and :mod:`trafficcast.models.sparse` (the
sparse products); their public names are importable from here as well.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trafficcast.models.diffusion import (
    diffuse,
    diffusion_conv,
    diffusion_conv_steps,
    num_diffusion_terms,
)
from trafficcast.models.sparse import Supports, sparse_matmul

__all__ = [
    "DCGRUCell",
    "Supports",
    "diffuse",
    "diffusion_conv",
    "diffusion_conv_steps",
    "init_input_weight",
    "num_diffusion_terms",
    "sparse_matmul",
]


def _xavier_stds(num_terms: int, input_dim: int, hidden_dim: int) -> tuple[float, float]:
    """Xavier-normal standard deviations of the gates' and the candidate's weight in the paper's
    layout, ``(M·(F+H), 2H)`` and ``(M·(F+H), H)``."""
    fan_in = num_terms * (input_dim + hidden_dim)
    return math.sqrt(2.0 / (fan_in + 2 * hidden_dim)), math.sqrt(2.0 / (fan_in + hidden_dim))


@torch.no_grad()
def init_input_weight(
    weight: torch.Tensor, num_terms: int, input_dim: int, hidden_dim: int
) -> None:
    """Fill rows of a cell's input weight ``(·, 3H)``, columns ``[r | u | C]``, as the cell's
    initialiser does for a cell with ``input_dim`` input features."""
    gate_std, candidate_std = _xavier_stds(num_terms, input_dim, hidden_dim)
    weight[:, : 2 * hidden_dim].normal_(0.0, gate_std)
    weight[:, 2 * hidden_dim :].normal_(0.0, candidate_std)


class DCGRUCell(nn.Module):
    """A diffusion-convolutional GRU cell (Li et al. 2018, Eq. 3).

    .. math::
        r = \\sigma(\\Theta_r \\star [X, H] + b_r), \\quad u = \\sigma(\\Theta_u \\star [X, H] + b_u)

        C = \\tanh(\\Theta_C \\star [X, r \\odot H] + b_C), \\quad H' = u \\odot H + (1 - u) \\odot C

    The cell is used in two calls so that shared work is done once: :meth:`project_input` maps the
    input to its contribution to all three of r, u and C (biases included), for any number of
    time steps at once; :meth:`forward` takes that contribution and the state (None for a zero
    state) and returns the next state.

    Gate biases start at 1.0 as in the original code (the gates start mostly open to the old state).

    Shapes:
        project_input: ``x (N, *, input_dim)`` -> ``(N, *, 3·hidden_dim)``
        forward: ``x_proj (N, B, 3·hidden_dim)``, ``h (N, B, hidden_dim)`` or None
        -> ``(N, B, hidden_dim)``
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
        hidden = self.hidden_dim
        gate_std, candidate_std = _xavier_stds(self.num_terms, self.input_dim, hidden)
        with torch.no_grad():
            init_input_weight(self.weight_input, self.num_terms, self.input_dim, hidden)
            self.weight_hidden_gates.normal_(0.0, gate_std)
            self.weight_hidden_candidate.normal_(0.0, candidate_std)
            self.bias[: 2 * self.hidden_dim].fill_(self.gate_bias_start)
            self.bias[2 * self.hidden_dim :].zero_()

    def project_input(self, x: torch.Tensor, supports: Supports) -> torch.Tensor:
        """The input's contribution to r, u and C, biases included, for any number of steps."""
        return diffusion_conv(x, supports, self.max_diffusion_step, self.weight_input, self.bias)

    def project_input_steps(self, x: torch.Tensor, supports: Supports) -> torch.Tensor:
        """:meth:`project_input` of a whole sequence ``x (N, T, B, F)``, step-major:
        ``(T, N, B, 3H)``, each step a contiguous ``(N, B, 3H)`` block for :meth:`forward`.

        (See :func:`~trafficcast.models.diffusion.diffusion_conv_steps` for how.)
        """
        k = self.max_diffusion_step
        return diffusion_conv_steps(x, supports, k, self.weight_input, self.bias)

    def forward(
        self,
        x_proj: torch.Tensor,
        h: torch.Tensor | None,
        supports: Supports,
        h_gates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The next state from the input's contribution ``x_proj`` and the state ``h``.

        ``h_gates`` is the state's contribution to the gates, ``Θ_{r,u} ⋆ H`` without bias, when
        the caller has computed it already (DCRNN computes it together with the layer above's
        input from one diffusion of ``H``); otherwise it is computed here.
        """
        hidden = self.hidden_dim
        k = self.max_diffusion_step
        # split, not two slices: the backward of two slices fills two full-size zero gradients
        x_gates, x_candidate = torch.split(x_proj, [2 * hidden, hidden], dim=-1)
        if h is None:  # a zero state (the encoder's first step): its diffusion terms are zero
            r, u = torch.split(torch.sigmoid(x_gates), hidden, dim=-1)
            return (1.0 - u) * torch.tanh(x_candidate)
        if h_gates is None:
            # (N, B, 2H): the state's diffusion added to the input's contribution in one pass
            gates = torch.sigmoid(diffusion_conv(h, supports, k, self.weight_hidden_gates, x_gates))
        else:
            gates = torch.sigmoid(x_gates + h_gates)
        r, u = torch.split(gates, hidden, dim=-1)
        # r ⊙ H convolved without keeping the product for backward (recomputed there from r
        # and H, which autograd keeps anyway): a state-sized tensor less per step and layer.
        c = torch.tanh(
            diffusion_conv(h, supports, k, self.weight_hidden_candidate, x_candidate, gate=r)
        )
        # u ⊙ H + (1 - u) ⊙ C as one lerp: its backward needs only c, h and u, which autograd
        # keeps anyway (tanh's output, the state, the sigmoid's output), where c + u * (h - c)
        # would save the difference h - c as well, a state-sized tensor per step and layer.
        return torch.lerp(c, h, u)
