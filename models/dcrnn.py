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

Differences from the original implementation: see :mod:`trafficcast.models.diffusion` for the diffusion; in
addition the teacher-forcing coin is drawn with a ``torch.Generator`` passed in (the original used
unseeded ``np.random``), all parameters are created in ``__init__`` (the original created them on
the first forward, so the optimizer had to be rebuilt after the first batch and its learning-rate
schedule never applied), and the supports are buffers that move with ``.to()`` and are saved in
the ``state_dict``.

One addition, off by default: ``node_embedding_dim = d > 0`` gives every sensor a learned vector of
``d`` values, appended to the input of the first encoder and first decoder layer at every step (as
if it were ``d`` more input features that never change). The paper's cells share all weights
across sensors, so a sensor is known only through its own and its neighbours' recent speeds;
that cannot tell apart two free-flowing sensors of which one jams every weekday at 7:00. Trained
on months of data the shared dynamics outweigh this; on a week the recurring, sensor-specific
rush hours dominate the 60-minute error. Because the diffusion convolution is linear in its
input, the vector's contribution is one ``(N, 3H)`` term per cell, computed once per forward
(not re-diffused at each step); the model is exactly the one with the vectors concatenated to
the input (a test checks this).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from trafficcast.models.diffusion import diffusion_conv, num_diffusion_terms
from trafficcast.models.layers import DCGRUCell, init_input_weight
from trafficcast.models.sparse import Supports


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
        node_embedding_dim: length of the learned per-sensor vector (0: none, the paper's model).

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
        node_embedding_dim: int = 0,
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
        self.node_embedding_dim = node_embedding_dim
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
        if node_embedding_dim > 0:
            m = num_diffusion_terms(self.num_supports, max_diffusion_step)
            d, three_h = node_embedding_dim, 3 * hidden_dim
            self.node_embedding = nn.Parameter(torch.empty(num_nodes, d))
            # the rows the first layers' input weights would have for the vector, term by term
            self.encoder_embedding_weight = nn.Parameter(torch.empty(m * d, three_h))
            self.decoder_embedding_weight = nn.Parameter(torch.empty(m * d, three_h))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for cell in (*self.encoder_cells, *self.decoder_cells):
            cell.reset_parameters()
        self.projection.reset_parameters()
        if self.node_embedding_dim > 0:
            with torch.no_grad():
                self.node_embedding.normal_(0.0, 1.0)  # on the scale of the scaled inputs
                for weight, cell in (
                    (self.encoder_embedding_weight, _as_cells(self.encoder_cells)[0]),
                    (self.decoder_embedding_weight, _as_cells(self.decoder_cells)[0]),
                ):
                    # as the rows of the cell's input weight, were the vector part of its input
                    init_input_weight(
                        weight,
                        cell.num_terms,
                        cell.input_dim + self.node_embedding_dim,
                        self.hidden_dim,
                    )

    def _embedding_terms(self, supports: Supports) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The per-sensor vectors' contribution to the first encoder and decoder layers' r, u
        and C: ``(N, 1, 3H)`` each; None without vectors."""
        if self.node_embedding_dim == 0:
            return None
        both = diffusion_conv(
            self.node_embedding.unsqueeze(1),  # (N, 1, d): one "batch" of the constant vectors
            supports,
            self.max_diffusion_step,
            torch.cat([self.encoder_embedding_weight, self.decoder_embedding_weight], dim=1),
        )  # (N, 1, 6H)
        encoder_terms, decoder_terms = both.chunk(2, dim=-1)
        return encoder_terms, decoder_terms

    @property
    def num_terms(self) -> int:
        return num_diffusion_terms(self.num_supports, self.max_diffusion_step)

    def supports(self) -> list[torch.Tensor]:
        """The supports as sparse CSR tensors, rebuilt from the buffers (cheap: small copies)."""
        out = []
        n = self.num_nodes
        for i in range(self.num_supports):
            out.append(
                torch.sparse_csr_tensor(
                    # int32 indices: the sparse kernel takes them as they are (int64 would be
                    # converted at every call)
                    getattr(self, f"support{i}_crow").to(torch.int32),
                    getattr(self, f"support{i}_col").to(torch.int32),
                    getattr(self, f"support{i}_val"),
                    size=(n, n),
                    check_invariants=False,
                )
            )
        return out

    def _graph(self) -> Supports:
        """The supports with their blocks and transposes, kept while the buffers are unchanged
        (they are constant in training; ``.to()`` or ``load_state_dict`` makes new ones)."""
        key = tuple(
            (t.data_ptr(), t._version, str(t.device))
            for i in range(self.num_supports)
            for t in (getattr(self, f"support{i}_{part}") for part in ("crow", "col", "val"))
        )
        cached = self.__dict__.get("_graph_cache")
        if cached is None or cached[0] != key:
            cached = (key, Supports(self.supports()))
            self.__dict__["_graph_cache"] = cached  # not a submodule, buffer or parameter
        return cached[1]

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        teacher_forcing_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        batch, seq_len, n, _ = x.shape
        supports = self._graph()

        # A state H of layer l at step t is diffused once, for two uses: the gates of layer l at
        # step t+1 and the input of layer l+1 at step t. One diffusion convolution with the two
        # weights side by side (see _state_conv) computes both contributions.
        layers = self.num_layers
        enc, dec = _as_cells(self.encoder_cells), _as_cells(self.decoder_cells)
        fused: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        # ---- encoder, step-major; layer 0's input contribution for all steps at once.
        embedding = self._embedding_terms(supports)
        x_proj = enc[0].project_input_steps(x.permute(2, 1, 0, 3), supports)  # (T, N, B, 3H)
        if embedding is not None:
            x_proj = x_proj + embedding[0]  # (N, 1, 3H) for every step and window
        step_inputs = x_proj.unbind(0)  # T x (N, B, 3H), contiguous views
        states: list[torch.Tensor | None] = [None] * layers
        h_gates: list[torch.Tensor | None] = [None] * layers
        for t in range(seq_len):
            layer_input: torch.Tensor | None = step_inputs[t]  # None above the top layer
            last = t == seq_len - 1
            for layer in range(layers):
                h = enc[layer](layer_input, states[layer], supports, h_gates[layer])
                states[layer] = h
                # gates: the encoder's own next step, or the decoder's first step after the last
                gates_cell = dec[layer] if last else enc[layer]
                above = enc[layer + 1] if layer + 1 < layers else None
                h_gates[layer], layer_input = self._state_conv(
                    h, supports, gates_cell, above, fused
                )

        # ---- decoder: step by step, each step's output feeding the next.
        truth = self._teacher_forcing(targets, teacher_forcing_prob, generator)
        decoder_input = x.new_zeros(n, batch, self.output_dim)  # the GO symbol
        outputs = []
        for t in range(self.horizon):
            layer_input = dec[0].project_input(decoder_input, supports)  # (N, B, 3H)
            if embedding is not None:
                layer_input = layer_input + embedding[1]
            last = t == self.horizon - 1
            for layer in range(layers):
                h = dec[layer](layer_input, states[layer], supports, h_gates[layer])
                states[layer] = h
                above = dec[layer + 1] if layer + 1 < layers else None
                h_gates[layer], layer_input = self._state_conv(
                    h, supports, None if last else dec[layer], above, fused
                )
            out = self.projection(h)  # (N, B, out)
            outputs.append(out)
            fed = truth[t]
            decoder_input = out if fed is None else fed
        # (horizon, N, B, out) -> (B, horizon, N, out)
        return torch.stack(outputs, dim=0).permute(2, 0, 1, 3)

    def _state_conv(
        self,
        h: torch.Tensor,
        supports: Supports,
        gates_cell: DCGRUCell | None,
        above: DCGRUCell | None,
        fused: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One diffusion of the state ``h`` for its next uses.

        Returns ``gates_cell``'s hidden contribution to its gates (``(N, B, 2H)``, no bias) and
        ``above``'s input contribution (``(N, B, 3H)``, bias included); None where not wanted.
        ``fused`` caches the side-by-side weights for the forward pass (three pairs per layer).
        """
        k = self.max_diffusion_step
        two_h = 2 * self.hidden_dim
        if above is None:
            if gates_cell is None:
                return None, None
            return diffusion_conv(h, supports, k, gates_cell.weight_hidden_gates), None
        if gates_cell is None:
            return None, above.project_input(h, supports)
        key = (id(gates_cell), id(above))
        if key not in fused:
            fused[key] = (
                torch.cat([gates_cell.weight_hidden_gates, above.weight_input], dim=1),  # (M·H, 5H)
                torch.cat([above.bias.new_zeros(two_h), above.bias]),  # (5H,)
            )
        weight, base = fused[key]
        both = diffusion_conv(h, supports, k, weight, base)  # (N, B, 5H)
        h_gates, above_input = torch.split(both, [two_h, 3 * self.hidden_dim], dim=-1)
        return h_gates, above_input

    def _teacher_forcing(
        self,
        targets: torch.Tensor | None,
        prob: float,
        generator: torch.Generator | None,
    ) -> list[torch.Tensor | None]:
        """Per decoder step, the ground truth ``(N, B, out)`` that the next step is fed, or None
        where it is fed the prediction. One coin per step (shared by the batch, as in the
        original), drawn only in training with ``prob > 0`` and targets given."""
        if targets is None or prob <= 0.0 or not self.training:
            return [None] * self.horizon
        use_truth = torch.rand(self.horizon, generator=generator) < prob
        truth = targets.permute(1, 2, 0, 3)  # (horizon, N, B, out)
        return [truth[t] if bool(use_truth[t]) else None for t in range(self.horizon)]


def _as_cells(cells: nn.ModuleList) -> list[DCGRUCell]:
    """The cells of a layer stack, typed (a ModuleList's items are typed as any Module)."""
    return [cast(DCGRUCell, cell) for cell in cells]
