"""The optimised DCRNN equals a straightforward implementation of the paper (Li et al. 2018).

The reference below follows Eq. 2 and Eq. 3 literally: every gate diffuses the concatenation
``[X, H]`` (the candidate ``[X, r ⊙ H]``) with DENSE supports, one weight matrix per gate over the
concatenated diffusion terms, step-major loops over time and layers, layout ``(B, N, F)``. It
shares nothing with :mod:`models.layers` except the weights, which are copied into the paper's
layout: the optimised cell splits the paper's weight by rows into an input part and a hidden part.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graph import compute_supports, to_torch_sparse_csr
from models.dcrnn import DCRNN


def reference_diffusion(z: torch.Tensor, supports: list[torch.Tensor], k: int) -> torch.Tensor:
    """``[Z, P_1 Z, ..., P_1^K Z, P_2 Z, ...]`` concatenated on the feature axis.

    Shapes: ``z (B, N, C)``, supports dense ``(N, N)``; returns ``(B, N, M·C)``.
    """
    terms = [z]
    for p in supports:
        power = torch.eye(p.shape[0], dtype=z.dtype)
        for _ in range(k):
            power = power @ p  # P^k, built explicitly: each walk restarts from Z
            terms.append(torch.einsum("nm,bmc->bnc", power, z))
    return torch.cat(terms, dim=-1)


class ReferenceDCGRUCell(nn.Module):
    """Eq. 3 with one weight per gate over the diffusion terms of ``[X, H]``.

    Shapes: ``x (B, N, F)``, ``h (B, N, H)`` -> ``(B, N, H)``. The weight rows are ordered by
    diffusion term, then by feature of the concatenation ``[X, H]``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_terms: int, k: int) -> None:
        super().__init__()
        self.hidden_dim, self.k = hidden_dim, k
        rows = num_terms * (input_dim + hidden_dim)
        self.weight_gates = nn.Parameter(torch.zeros(rows, 2 * hidden_dim))  # columns [r | u]
        self.bias_gates = nn.Parameter(torch.zeros(2 * hidden_dim))
        self.weight_candidate = nn.Parameter(torch.zeros(rows, hidden_dim))
        self.bias_candidate = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x: torch.Tensor, h: torch.Tensor, supports: list[torch.Tensor]):
        hidden = self.hidden_dim
        xh = reference_diffusion(torch.cat([x, h], dim=-1), supports, self.k)
        gates = torch.sigmoid(xh @ self.weight_gates + self.bias_gates)
        r, u = gates[..., :hidden], gates[..., hidden:]
        xrh = reference_diffusion(torch.cat([x, r * h], dim=-1), supports, self.k)
        c = torch.tanh(xrh @ self.weight_candidate + self.bias_candidate)
        return u * h + (1.0 - u) * c

    @torch.no_grad()
    def copy_from(self, cell, embedding_weight: torch.Tensor | None = None) -> None:
        """Interleave the optimised cell's input and hidden rows term by term; the rows of the
        per-sensor vectors (``(M·d, 3H)``), when given, follow the input's in each term."""
        m, f, hidden = cell.num_terms, cell.input_dim, cell.hidden_dim
        d = 0 if embedding_weight is None else embedding_weight.shape[0] // m
        gates, candidate = [], []
        for term in range(m):
            x_rows = cell.weight_input[term * f : (term + 1) * f]  # (F, 3H)
            if d:
                x_rows = torch.cat([x_rows, embedding_weight[term * d : (term + 1) * d]])
            h_rows = slice(term * hidden, (term + 1) * hidden)
            gates += [x_rows[:, : 2 * hidden], cell.weight_hidden_gates[h_rows]]
            candidate += [x_rows[:, 2 * hidden :], cell.weight_hidden_candidate[h_rows]]
        self.weight_gates.copy_(torch.cat(gates, dim=0))
        self.weight_candidate.copy_(torch.cat(candidate, dim=0))
        self.bias_gates.copy_(cell.bias[: 2 * hidden])
        self.bias_candidate.copy_(cell.bias[2 * hidden :])


class ReferenceDCRNN(nn.Module):
    """Seq2seq of stacked reference cells, step-major. Shapes as :class:`models.dcrnn.DCRNN`."""

    def __init__(self, model: DCRNN, dense_supports: list[torch.Tensor]) -> None:
        super().__init__()
        self.supports = dense_supports if model.max_diffusion_step > 0 else []
        m, k, hidden = model.num_terms, model.max_diffusion_step, model.hidden_dim
        self.hidden_dim, self.horizon, self.output_dim = hidden, model.horizon, model.output_dim
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        d = model.node_embedding_dim
        # the per-sensor vectors, appended to the first layers' inputs as d constant features
        self.embedding = model.node_embedding.detach().clone() if d else None
        for optimised, cells, extra in (
            (model.encoder_cells, self.encoder, "encoder_embedding_weight"),
            (model.decoder_cells, self.decoder, "decoder_embedding_weight"),
        ):
            for i, cell in enumerate(optimised):
                first = d and i == 0
                ref = ReferenceDCGRUCell(cell.input_dim + (d if first else 0), hidden, m, k)
                ref.copy_from(cell, getattr(model, extra) if first else None)
                cells.append(ref)
        self.projection = nn.Linear(hidden, model.output_dim)
        self.projection.load_state_dict(model.projection.state_dict())

    def _with_embedding(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return x
        return torch.cat([x, self.embedding.expand(x.shape[0], -1, -1)], dim=-1)

    def forward(self, x: torch.Tensor, truth: torch.Tensor | None = None) -> torch.Tensor:
        """``truth`` given: the decoder is fed the ground truth at every step (teacher forcing)."""
        batch, seq_len, n, _ = x.shape
        h = [x.new_zeros(batch, n, self.hidden_dim) for _ in self.encoder]
        for t in range(seq_len):
            layer_input = self._with_embedding(x[:, t])
            for i, cell in enumerate(self.encoder):
                h[i] = cell(layer_input, h[i], self.supports)
                layer_input = h[i]
        decoder_input = x.new_zeros(batch, n, self.output_dim)  # GO symbol
        outputs = []
        for t in range(self.horizon):
            layer_input = self._with_embedding(decoder_input)
            for i, cell in enumerate(self.decoder):
                h[i] = cell(layer_input, h[i], self.supports)
                layer_input = h[i]
            out = self.projection(layer_input)
            outputs.append(out)
            decoder_input = truth[:, t] if truth is not None else out
        return torch.stack(outputs, dim=1)  # (B, horizon, N, out)


def _random_graph(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    adj = rng.uniform(0.1, 1.0, (n, n)) * (rng.random((n, n)) < 0.5)
    np.fill_diagonal(adj, 0.0)
    adj[np.arange(n), (np.arange(n) + 1) % n] = 0.7  # a directed ring: every node has an out-road
    return adj


def _models(filter_type: str, k: int, num_layers: int, seed: int = 0, embedding: int = 0):
    torch.manual_seed(seed)
    adj = _random_graph(6, seed)
    supports = compute_supports(adj, filter_type)
    model = DCRNN(
        num_nodes=6,
        input_dim=2,
        output_dim=1,
        supports=[to_torch_sparse_csr(s) for s in supports],
        hidden_dim=8,
        num_layers=num_layers,
        max_diffusion_step=k,
        seq_len=5,
        horizon=4,
        node_embedding_dim=embedding,
    )
    # Non-trivial biases and projection, so a misplaced bias or gate column cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    dense = [torch.from_numpy(s.toarray()) for s in supports]
    return model, ReferenceDCRNN(model, dense)


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 6, 2, generator=g)  # (B, seq_len, N, F)
    y = torch.randn(3, 4, 6, 1, generator=g)  # (B, horizon, N, 1)
    return x, y


@pytest.mark.parametrize(
    ("filter_type", "k", "num_layers"),
    [
        ("dual_random_walk", 2, 2),
        ("dual_random_walk", 0, 2),
        ("laplacian", 2, 1),
        ("random_walk", 3, 1),
    ],
)
def test_optimised_dcrnn_equals_the_paper(filter_type, k, num_layers):
    model, reference = _models(filter_type, k, num_layers)
    x, _ = _inputs()
    model.eval()
    with torch.no_grad():
        out = model(x)
        expected = reference(x)
    assert out.shape == (3, 4, 6, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # The check is not vacuous: the outputs vary across sensors, steps and samples.
    assert out.std() > 1e-2


def test_no_graph_means_no_supports():
    model, _ = _models("dual_random_walk", 0, 2)
    assert model.num_supports == 0 and model.num_terms == 1
    assert model.encoder_cells[0].weight_input.shape == (2, 24)  # (M·F, 3H) with M = 1


def test_teacher_forcing_feeds_the_ground_truth():
    model, reference = _models("dual_random_walk", 2, 2)
    x, y = _inputs()
    model.train()
    out = model(x, y, teacher_forcing_prob=1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        forced = reference(x, truth=y)
        free = reference(x)
    torch.testing.assert_close(out.detach(), forced, rtol=0, atol=1e-5)
    # Teacher forcing changes every step after the first: the test sees the difference.
    assert (forced[:, 1:] - free[:, 1:]).abs().max() > 1e-3
    torch.testing.assert_close(forced[:, 0], free[:, 0], rtol=0, atol=1e-6)


def test_teacher_forcing_is_off_in_eval_mode():
    model, reference = _models("dual_random_walk", 2, 1)
    x, y = _inputs()
    model.eval()
    with torch.no_grad():
        out = model(x, y, teacher_forcing_prob=1.0)
        free = reference(x)
    torch.testing.assert_close(out, free, rtol=0, atol=1e-5)


def test_gradients_match_the_reference():
    model, reference = _models("dual_random_walk", 2, 2)
    x, y = _inputs()
    model.train()
    model(x).pow(2).mean().backward()
    reference(x).pow(2).mean().backward()
    cell, ref = model.encoder_cells[0], reference.encoder[0]
    # Bias gradients map one to one; compare also the projection.
    torch.testing.assert_close(cell.bias.grad[:16], ref.bias_gates.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cell.bias.grad[16:], ref.bias_candidate.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        model.projection.weight.grad, reference.projection.weight.grad, rtol=1e-4, atol=1e-6
    )
    assert cell.bias.grad.abs().sum() > 0


def _cell_grads_in_reference_layout(cell) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimised cell's weight gradients, interleaved term by term as the reference holds
    its weights (the inverse of ``ReferenceDCGRUCell.copy_from``)."""
    m, f, hidden = cell.num_terms, cell.input_dim, cell.hidden_dim
    gates, candidate = [], []
    for term in range(m):
        x_rows = cell.weight_input.grad[term * f : (term + 1) * f]
        h_rows = slice(term * hidden, (term + 1) * hidden)
        gates += [x_rows[:, : 2 * hidden], cell.weight_hidden_gates.grad[h_rows]]
        candidate += [x_rows[:, 2 * hidden :], cell.weight_hidden_candidate.grad[h_rows]]
    return torch.cat(gates), torch.cat(candidate)


@pytest.mark.parametrize(
    ("filter_type", "k", "num_layers"),
    [("dual_random_walk", 2, 2), ("dual_random_walk", 2, 3), ("laplacian", 1, 2)],
)
def test_optimised_dcrnn_gradients_equal_the_paper(filter_type, k, num_layers):
    # The optimised model has its own backward (fused diffusion convolutions that recompute or
    # walk the gradient): every weight's gradient and the input's must equal autograd's through
    # the literal reference.
    model, reference = _models(filter_type, k, num_layers)
    x, y = _inputs()
    x_model = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    (model(x_model) - y).abs().mean().backward()
    (reference(x_ref) - y).abs().mean().backward()
    torch.testing.assert_close(x_model.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
    assert x_model.grad.abs().sum() > 0
    for optimised, ref_cells in (
        (model.encoder_cells, reference.encoder),
        (model.decoder_cells, reference.decoder),
    ):
        for cell, ref in zip(optimised, ref_cells, strict=True):
            gates, candidate = _cell_grads_in_reference_layout(cell)
            torch.testing.assert_close(gates, ref.weight_gates.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(candidate, ref.weight_candidate.grad, rtol=1e-4, atol=1e-6)
            bias = torch.cat([ref.bias_gates.grad, ref.bias_candidate.grad])
            torch.testing.assert_close(cell.bias.grad, bias, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        model.projection.weight.grad, reference.projection.weight.grad, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize(("filter_type", "k"), [("dual_random_walk", 2), ("dual_random_walk", 0)])
def test_per_sensor_vectors_equal_appending_them_to_every_input(filter_type, k):
    # node_embedding_dim: the optimised model adds the vectors' diffused contribution once per
    # forward; the reference appends them to the first layers' inputs at every step, encoder and
    # decoder, and diffuses them there.
    model, reference = _models(filter_type, k, 2, embedding=3)
    x, y = _inputs()
    model.eval()
    with torch.no_grad():
        out = model(x)
        expected = reference(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # The vectors matter: different vectors, different forecasts.
    with torch.no_grad():
        model.node_embedding.mul_(-1.0)
        assert (model(x) - out).abs().max() > 1e-3
        model.node_embedding.mul_(-1.0)
    # Their gradient reaches them (teacher forcing off) and equals the reference's.
    ref_embedding = reference.embedding.requires_grad_(True)
    (model(x) - y).abs().mean().backward()
    (reference(x) - y).abs().mean().backward()
    assert model.node_embedding.grad.abs().sum() > 0
    torch.testing.assert_close(model.node_embedding.grad, ref_embedding.grad, rtol=1e-4, atol=1e-6)


def test_no_per_sensor_vectors_is_the_paper_model():
    model, _ = _models("dual_random_walk", 2, 2)
    assert model.node_embedding_dim == 0
    assert not any("embedding" in name for name, _ in model.named_parameters())
