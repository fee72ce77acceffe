"""DCRNN: the diffusion-convolutional recurrent neural network (Li et al., ICLR 2018, Sec. 2.3).

A sequence-to-sequence model: an encoder of stacked DCGRU layers reads ``seq_len`` steps, a
decoder of stacked DCGRU layers starts from the encoder's final states and a GO symbol (zeros)
and produces ``horizon`` steps, each projected from the top layer's state to the output. In
training, scheduled sampling feeds the decoder the ground truth with a probability given by the
training loop (the paper's inverse-sigmoid decay ``k / (k + exp(step / k))``); at inference the
decoder always feeds back its own prediction.

With ``max_diffusion_step = 0`` there is no graph: every term is the identity, and the model is a
GRU sequence-to-sequence applied to each sensor separately with shared weights (the paper's
ablation of the spatial part).

Differences from the original implementation: see :mod:`models.layers` for the diffusion; in
addition the teacher-forcing coin is drawn with a ``torch.Generator`` passed in (the original used
unseeded ``np.random``), all parameters are created in ``__init__`` (the original created them on
the first forward, so the optimizer had to be rebuilt after the first batch and its learning-rate
schedule never applied), and the supports are buffers that move with ``.to()`` and are saved in
the ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import DCGRUCell, Supports, diffuse, num_diffusion_terms


def sparse_to_buffers(support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A support as plain CSR tensors ``(crow_indices, col_indices, values)``.

    Plain tensors save and load with ``torch.load(weights_only=True)`` and move with ``.to()``.
    """
    if support.layout == torch.sparse_csr:
        csr = support
    elif support.layout == torch.sparse_coo:
        csr = support.coalesce().to_sparse_csr()
    else:
        csr = support.to_sparse_csr()
    return (
        csr.crow_indices().to(torch.int64),
        csr.col_indices().to(torch.int64),
        csr.values().to(torch.float32),
    )


class DCRNN(nn.Module):
    """The DCRNN encoder-decoder.

    Args:
        num_nodes: sensors in the graph.
        input_dim: input features per sensor and step (speed, time of day, ...).
        output_dim: predicted features per sensor and step (1: speed).
        supports: the transition matrices (``(N, N)`` torch sparse or dense), already computed for
            the filter type (see :func:`graph.compute_supports`); ignored when
            ``max_diffusion_step`` is 0.
        hidden_dim: units per DCGRU layer (``rnn_units``).
        num_layers: stacked DCGRU layers (``num_rnn_layers``).
        max_diffusion_step: K.
        seq_len: input steps; horizon: output steps.

    Shapes:
        x: ``(B, seq_len, N, input_dim)`` scaled inputs.
        targets: ``(B, horizon, N, output_dim)`` scaled ground truth, used only for scheduled
        sampling when ``teacher_forcing_prob > 0``.
        returns: ``(B, horizon, N, output_dim)`` scaled predictions.
    """

    def __init__(
        self,
        num_nodes: int,
        input_dim: int,
        output_dim: int = 1,
        supports: list[torch.Tensor] | None = None,
        hidden_dim: int = 64,
        num_layers: int = 2,
        max_diffusion_step: int = 2,
        seq_len: int = 12,
        horizon: int = 12,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.max_diffusion_step = max_diffusion_step
        self.seq_len = seq_len
        self.horizon = horizon
        supports = list(supports or []) if max_diffusion_step > 0 else []
        self.num_supports = len(supports)
        for i, support in enumerate(supports):
            if tuple(support.shape) != (num_nodes, num_nodes):
                raise ValueError(
                    f"support {i} has shape {tuple(support.shape)}, expected N x N = {num_nodes}"
                )
            crow, col, val = sparse_to_buffers(support)
            self.register_buffer(f"support{i}_crow", crow)
            self.register_buffer(f"support{i}_col", col)
            self.register_buffer(f"support{i}_val", val)
        self.encoder_cells = nn.ModuleList(
            DCGRUCell(
                input_dim if i == 0 else hidden_dim,
                hidden_dim,
                self.num_supports,
                max_diffusion_step,
            )
            for i in range(num_layers)
        )
        self.decoder_cells = nn.ModuleList(
            DCGRUCell(
                output_dim if i == 0 else hidden_dim,
                hidden_dim,
                self.num_supports,
                max_diffusion_step,
            )
            for i in range(num_layers)
        )
        self.projection = nn.Linear(hidden_dim, output_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for cell in (*self.encoder_cells, *self.decoder_cells):
            cell.reset_parameters()
        self.projection.reset_parameters()

    @property
    def num_terms(self) -> int:
        return num_diffusion_terms(self.num_supports, self.max_diffusion_step)

    def supports(self) -> list[torch.Tensor]:
        """The supports as sparse CSR tensors, rebuilt from the buffers (cheap: no copy)."""
        out = []
        n = self.num_nodes
        for i in range(self.num_supports):
            out.append(
                torch.sparse_csr_tensor(
                    getattr(self, f"support{i}_crow"),
                    getattr(self, f"support{i}_col"),
                    getattr(self, f"support{i}_val"),
                    size=(n, n),
                    check_invariants=False,
                )
            )
        return out

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        teacher_forcing_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        batch, seq_len, n, _ = x.shape
        supports = Supports(self.supports())
        k = self.max_diffusion_step
        hidden = self.hidden_dim

        # ---- encoder: layer by layer, each layer's input projection for all steps at once.
        inputs_diffused = diffuse(x.permute(2, 1, 0, 3), supports, k)  # (N, T, B, M·F)
        states: list[torch.Tensor] = []
        states_diffused: list[torch.Tensor] = []
        for layer, cell in enumerate(self.encoder_cells):
            # unbind, not x_proj[:, t]: the backward of T slices would fill T full-size zero
            # gradients; unbind's backward stacks once.
            x_proj = cell.project_input(inputs_diffused).unbind(1)  # T x (N, B, 3H)
            h = x.new_zeros(n, batch, hidden)
            h_diffused = x.new_zeros(n, batch, self.num_terms * hidden)  # diffusion of zeros
            step_diffused = []
            for t in range(seq_len):
                h = cell(x_proj[t], h, h_diffused, supports)  # (N, B, H)
                h_diffused = diffuse(h, supports, k)  # (N, B, M·H): this layer's next step ...
                step_diffused.append(h_diffused)  # ... and the next layer's input at step t
            states.append(h)
            states_diffused.append(h_diffused)
            if layer + 1 < self.num_layers:
                inputs_diffused = torch.stack(step_diffused, dim=1)  # (N, T, B, M·H)

        # ---- decoder: step by step, each step's output feeding the next.
        use_truth = self._teacher_forcing_draws(targets, teacher_forcing_prob, generator)
        if use_truth is not None:
            truth = targets.permute(1, 2, 0, 3)  # (horizon, N, B, out)
        decoder_input = x.new_zeros(n, batch, self.output_dim)  # the GO symbol
        outputs = []
        for t in range(self.horizon):
            layer_input_diffused = diffuse(decoder_input, supports, k)  # (N, B, M·out)
            for layer, cell in enumerate(self.decoder_cells):
                x_proj = cell.project_input(layer_input_diffused)  # (N, B, 3H)
                h = cell(x_proj, states[layer], states_diffused[layer], supports)
                states[layer] = h
                states_diffused[layer] = diffuse(h, supports, k)
                layer_input_diffused = states_diffused[layer]
            out = self.projection(h)  # (N, B, out)
            outputs.append(out)
            decoder_input = truth[t] if use_truth is not None and bool(use_truth[t]) else out
        # (horizon, N, B, out) -> (B, horizon, N, out)
        return torch.stack(outputs, dim=0).permute(2, 0, 1, 3)

    def _teacher_forcing_draws(
        self,
        targets: torch.Tensor | None,
        prob: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor | None:
        """One coin per decoder step (shared by the batch, as in the original), or None."""
        if targets is None or prob <= 0.0 or not self.training:
            return None
        draws = torch.rand(self.horizon, generator=generator)
        return draws < prob
