"""FC-LSTM: the paper's LSTM encoder-decoder without the graph (Li et al. 2018, Sec. 4.1).

All sensors form one input vector per step (``N·F`` values), so the model sees every sensor but
no road structure: what it learns about space it learns from data alone. Two LSTM layers encode
the input sequence; two decode from a GO symbol, feeding back their own prediction (or, in
training with scheduled sampling, the ground truth), each step projected to the ``N`` outputs.
It is the baseline that makes the comparison concrete: LSTM units vs. the DCGRU, and a dense
"everything to everything" mixing vs. diffusion on the road graph.

Shapes:
    x: ``(B, seq_len, N, input_dim)``; targets: ``(B, horizon, N, output_dim)``;
    returns ``(B, horizon, N, output_dim)`` (scaled, like DCRNN).
"""

from __future__ import annotations

import torch
from torch import nn


class FCLSTM(nn.Module):
    def __init__(
        self,
        num_nodes: int,
        input_dim: int,
        output_dim: int = 1,
        hidden_dim: int = 256,
        num_layers: int = 2,
        horizon: int = 12,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.horizon = horizon
        self.encoder = nn.LSTM(num_nodes * input_dim, hidden_dim, num_layers, batch_first=True)
        self.decoder = nn.LSTM(num_nodes * output_dim, hidden_dim, num_layers, batch_first=True)
        self.projection = nn.Linear(hidden_dim, num_nodes * output_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        self.decoder.reset_parameters()
        self.projection.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        teacher_forcing_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        batch, seq_len, n, f = x.shape
        _, state = self.encoder(x.reshape(batch, seq_len, n * f))  # (B, T, N·F)
        use_truth = None
        if targets is not None and teacher_forcing_prob > 0.0 and self.training:
            use_truth = torch.rand(self.horizon, generator=generator) < teacher_forcing_prob
        decoder_input = x.new_zeros(batch, 1, n * self.output_dim)  # the GO symbol
        outputs = []
        for t in range(self.horizon):
            out, state = self.decoder(decoder_input, state)  # (B, 1, H)
            y = self.projection(out)  # (B, 1, N·out)
            outputs.append(y)
            if use_truth is not None and targets is not None and bool(use_truth[t]):
                decoder_input = targets[:, t].reshape(batch, 1, n * self.output_dim)
            else:
                decoder_input = y
        return torch.cat(outputs, dim=1).view(batch, self.horizon, n, self.output_dim)
