"""TCN: a temporal convolutional baseline, the CNN family's usual form for traffic.

Each sensor's input window is read by a stack of dilated causal 1-D convolutions (WaveNet, van
den Oord et al. 2016; the temporal part of Graph WaveNet, Wu et al. 2019, without its graph):
layer ``i`` looks ``kernel_size - 1`` taps back, ``kernel_size**i`` steps apart, so the receptive
field grows exponentially with depth,

.. math::
    R = 1 + (k - 1) \\sum_{i=0}^{L-1} k^i = k^L,

and four layers of kernel 2 see 16 steps, more than the 12-step window. A linear head reads the
last step's channels and predicts all ``horizon`` steps at once (no decoder, no feedback). All
sensors share one set of weights and none sees another: like the GRU baseline, it is the model
without the road graph.

Deviations from WaveNet: a ReLU instead of the gated ``tanh · sigmoid`` unit and no skip
connections, only residual ones. With the residual form, a stack whose dilated convolutions are
zero passes the projected input through unchanged, which keeps the model easy to reason about
(a test sets the weights by hand to compute a known function of the window).

Shapes:
    x: ``(B, seq_len, N, input_dim)``; returns ``(B, horizon, N, output_dim)`` (scaled, like
    DCRNN). ``targets`` is accepted for the trainer's common signature and not used.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TCN(nn.Module):
    def __init__(
        self,
        num_nodes: int,
        input_dim: int,
        output_dim: int = 1,
        channels: int = 32,
        num_layers: int = 4,
        kernel_size: int = 2,
        horizon: int = 12,
    ) -> None:
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"kernel_size = {kernel_size} must be >= 2 (1 sees no history)")
        self.num_nodes = num_nodes
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.channels = channels
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.horizon = horizon
        self.dilations: list[int] = [kernel_size**i for i in range(num_layers)]
        self.input_projection = nn.Conv1d(input_dim, channels, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d) for d in self.dilations
        )
        self.residual = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in self.dilations)
        self.head = nn.Linear(channels, horizon * output_dim)
        self.reset_parameters()

    @property
    def receptive_field(self) -> int:
        """Input steps the last step's output depends on."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def reset_parameters(self) -> None:
        self.input_projection.reset_parameters()
        for conv in (*self.dilated, *self.residual):
            conv.reset_parameters()
        self.head.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        teacher_forcing_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        batch, seq_len, n, f = x.shape
        h = x.permute(0, 2, 3, 1).reshape(batch * n, f, seq_len)  # (B·N, F, T)
        h = self.input_projection(h)  # (B·N, C, T)
        for conv, residual, d in zip(self.dilated, self.residual, self.dilations, strict=True):
            # Left padding only: step t sees steps <= t (causal), and the length stays T.
            h = h + residual(F.relu(conv(F.pad(h, ((self.kernel_size - 1) * d, 0)))))
        y: torch.Tensor = self.head(h[:, :, -1])  # (B·N, horizon·out)
        y = y.view(batch, n, self.horizon, self.output_dim)  # (B, N, horizon, out)
        return y.permute(0, 2, 1, 3).contiguous()  # (B, horizon, N, out)
