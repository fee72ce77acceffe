"""The optimised DCRNN equals a straightforward implementation of the paper (Li et al. 2018).

The reference below follows Eq. 2 and Eq. 3 literally: every gate diffuses the concatenation
``[X, H]`` (the candidate ``[X, r ⊙ H]``) with DENSE supports, one weight matrix per gate over the
concatenated diffusion terms, step-major loops over time and layers, layout ``(B, N, F)``. It
shares nothing with :mod:`trafficcast.models.layers` except the weights, which are copied into the paper's
layout: the optimised cell splits the paper's weight by rows into an input part and a hidden part.

The first tests use a small random graph; the last ones run at the sizes of real training (the
METR-LA graph, 64 hidden units) in float64, with each branch of the optimised kernel forced.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trafficcast.graph import FILTER_TYPES, compute_supports, load_adjacency
from trafficcast.graph.tensors import to_torch_sparse_csr
from trafficcast.models import diffusion
from trafficcast.models.dcrnn import DCRNN
from trafficcast.models.layers import DCGRUCell, Supports, diffusion_conv, num_diffusion_terms


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
        """The optimised cell's weights in this cell's layout (see :func:`paper_layout`)."""
        gates, candidate = paper_layout(cell, embedding_weight)
        hidden = cell.hidden_dim
        self.weight_gates.copy_(gates)
        self.weight_candidate.copy_(candidate)
        self.bias_gates.copy_(cell.bias[: 2 * hidden])
        self.bias_candidate.copy_(cell.bias[2 * hidden :])


def paper_layout(
    cell, embedding_weight: torch.Tensor | None = None, grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimised cell's weights (``grad``: their gradients) as the paper's per-gate weights.

    The gates' ``(M·(F+d+H), 2H)`` and the candidate's ``(M·(F+d+H), H)``: the cell's input and
    hidden rows interleaved term by term; the rows of the per-sensor vectors (``(M·d, 3H)``),
    when given, follow the input's in each term.
    """

    def value(t: torch.Tensor) -> torch.Tensor:
        return t.grad if grad else t

    m, f, hidden = cell.num_terms, cell.input_dim, cell.hidden_dim
    weight_input = value(cell.weight_input)
    vectors = None if embedding_weight is None else value(embedding_weight)
    d = 0 if vectors is None else vectors.shape[0] // m
    gates, candidate = [], []
    for term in range(m):
        x_rows = weight_input[term * f : (term + 1) * f]  # (F, 3H)
        if d:
            x_rows = torch.cat([x_rows, vectors[term * d : (term + 1) * d]])
        h_rows = slice(term * hidden, (term + 1) * hidden)
        gates += [x_rows[:, : 2 * hidden], value(cell.weight_hidden_gates)[h_rows]]
        candidate += [x_rows[:, 2 * hidden :], value(cell.weight_hidden_candidate)[h_rows]]
    return torch.cat(gates), torch.cat(candidate)


class ReferenceDCRNN(nn.Module):
    """Seq2seq of stacked reference cells, step-major. Shapes as :class:`trafficcast.models.dcrnn.DCRNN`."""

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
                ref.to(cell.weight_input.dtype)  # before the copy, so float64 stays float64
                ref.copy_from(cell, getattr(model, extra) if first else None)
                cells.append(ref)
        self.projection = nn.Linear(hidden, model.output_dim, dtype=model.projection.weight.dtype)
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
            gates, candidate = paper_layout(cell, grad=True)
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


# ---- At the sizes real training uses: the METR-LA graph (207 sensors), 64 hidden units.
#
# The kernel (trafficcast.models.diffusion) picks its arithmetic by size: _conv_forward stacks the terms into one
# matmul up to _STACK_LIMIT elements and goes term by term above it (training's batch 64), a
# narrow input (2·M·F ≤ O, _narrow_input) is diffused and multiplied stacked, and the backward
# walks the gradient when the output is narrower than 2·F and recomputes the terms otherwise. The
# tests below force each branch at these sizes, check that it ran, and compare values and every
# gradient with the literal reference in float64. The two sides sum in different orders, so they
# agree to rounding: ``assert_equal_to_rounding`` allows 1e-12 of each tensor's largest magnitude
# (the differences seen stay below 1e-14 of it).

METR_LA = Path(__file__).resolve().parents[2] / "data" / "sample" / "adj_mx.pkl"
NODES, BATCH, HIDDEN, K = 207, 8, 64, 2


def assert_equal_to_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item()
    assert scale > 0  # an all-zero tensor would make the comparison vacuous
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * scale)


@functools.cache
def metr_la_supports(filter_type: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The METR-LA supports in float64: sparse CSR for the model, dense for the reference."""
    supports = compute_supports(load_adjacency(METR_LA)[1], filter_type)
    sparse = [to_torch_sparse_csr(s).to(torch.float64) for s in supports]
    dense = [torch.from_numpy(s.toarray()).to(torch.float64) for s in supports]
    assert dense[0].shape == (NODES, NODES)
    return sparse, dense


@pytest.fixture
def branches(monkeypatch) -> Counter:
    """Counts the calls of the kernel's branches (through the real functions): ``stacked`` and
    ``per_term`` (_conv_forward's two ways), ``stacked_terms`` (a narrow input's one matmul),
    ``walks`` and ``adjoint_walks`` (the terms of x, made in forward and by a backward that
    recomputes them; the walks of the gradient, made by a backward that walks it)."""
    calls: Counter = Counter()

    def spy(name: str, real):
        def counted(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return counted

    monkeypatch.setattr(
        diffusion, "_conv_forward_stacked", spy("stacked", diffusion._conv_forward_stacked)
    )
    monkeypatch.setattr(
        diffusion, "_conv_forward_per_term", spy("per_term", diffusion._conv_forward_per_term)
    )
    monkeypatch.setattr(
        diffusion, "_stacked_matmul", spy("stacked_terms", diffusion._stacked_matmul)
    )
    walks = diffusion._walks

    def counted_walks(supports, x0, max_diffusion_step, adjoint=False):
        calls["adjoint_walks" if adjoint else "walks"] += 1
        return walks(supports, x0, max_diffusion_step, adjoint)

    monkeypatch.setattr(diffusion, "_walks", counted_walks)
    return calls


def force_forward(monkeypatch, branch: str) -> None:
    """_conv_forward's branch at any size: ``stacked`` or ``per_term``."""
    monkeypatch.setattr(diffusion, "_STACK_LIMIT", sys.maxsize if branch == "stacked" else 0)


# The convolutions DCRNN makes, as (input features F, output O, base, gated).
CONVOLUTIONS = {
    "first_layer_input": (2, 3 * HIDDEN, "bias", False),  # narrow: 2·M·F ≤ O
    "state_for_gates": (HIDDEN, 2 * HIDDEN, "tensor", False),  # O ≥ 2F: backward recomputes
    "state_for_candidate": (HIDDEN, HIDDEN, "tensor", True),  # r ⊙ H; O < 2F: backward walks
    "state_for_gates_and_layer_above": (HIDDEN, 5 * HIDDEN, "bias", False),
    "state_for_top_gates": (HIDDEN, 2 * HIDDEN, None, False),
}
# How diffusion_conv computes: a narrow input's stacked terms (the rule forced on; a gated
# convolution never takes it), or the fused convolution with either forward (the rule forced off).
PATHS = ("stacked_terms", "stacked", "per_term")


def check_convolution(name: str, path: str, filter_type: str, branches: Counter, monkeypatch):
    """diffusion_conv of convolution ``name`` on ``path``: values and the gradients of x, the
    gate, the weight and the base equal the reference's; the branches asked for ran."""
    features, out_dim, base_kind, gated = CONVOLUTIONS[name]
    sparse, dense = metr_la_supports(filter_type)
    monkeypatch.setattr(diffusion, "_narrow_input", lambda weight: path == "stacked_terms")
    force_forward(monkeypatch, "stacked" if path == "stacked_terms" else path)
    g = torch.Generator().manual_seed(0)
    m = num_diffusion_terms(len(sparse), K)
    x = torch.randn(NODES, BATCH, features, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(m * features, out_dim, generator=g, dtype=torch.float64) / 10
    weight.requires_grad_()
    inputs = [x, weight]
    gate = base = None
    if gated:  # a slice of the gates' sigmoid, as DCGRU passes r
        wide = torch.rand(NODES, BATCH, 2 * features, generator=g, dtype=torch.float64)
        gate = wide[..., :features].requires_grad_()
        inputs.append(gate)
    if base_kind == "bias":
        base = torch.randn(out_dim, generator=g, dtype=torch.float64).requires_grad_()
    elif base_kind == "tensor":  # a strided slice, as DCGRU passes the input's contribution
        wide = torch.randn(NODES, BATCH, out_dim + 2, generator=g, dtype=torch.float64)
        base = wide[..., 1:-1].requires_grad_()
    if base is not None:
        inputs.append(base)

    branches.clear()
    out = diffusion_conv(x, Supports(sparse), K, weight, base, gate=gate)  # (N, B, O)
    forward = Counter(branches)
    z = (x if gate is None else gate * x).transpose(0, 1)  # (B, N, F)
    want = reference_diffusion(z, dense, K) @ weight  # (B, N, O)
    if base is not None:
        want = want + (base if base.dim() == 1 else base.transpose(0, 1))
    want = want.transpose(0, 1)
    assert_equal_to_rounding(out, want)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(out, inputs, upstream)
    backward = branches - forward
    want_grads = torch.autograd.grad(want, inputs, upstream)
    for got, expected in zip(got_grads, want_grads, strict=True):
        assert_equal_to_rounding(got, expected)

    if path == "stacked_terms":
        assert forward == {"stacked_terms": 1}
        assert not backward  # autograd through the stacked terms
    else:
        assert forward == {path: 1, "walks": 1}
        walked = out_dim < 2 * features
        assert backward == ({"adjoint_walks": 1} if walked else {"walks": 1})


@pytest.mark.parametrize("filter_type", FILTER_TYPES)
@pytest.mark.parametrize(
    ("name", "path"),
    [
        (name, path)
        for name, (_, _, _, gated) in CONVOLUTIONS.items()
        for path in PATHS
        if not (gated and path == "stacked_terms")
    ],
)
def test_diffusion_conv_at_metr_la_size_equals_the_paper(
    name, path, filter_type, branches, monkeypatch
):
    check_convolution(name, path, filter_type, branches, monkeypatch)


@pytest.fixture
def poisoned_memory():
    """Every tensor torch allocates without initialising (``torch.empty``, ``new_empty``,
    ``empty_like``) comes filled with NaN: torch does this under deterministic algorithms."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


@pytest.mark.parametrize("path", PATHS)
def test_uninitialised_buffers_filled_with_nan_do_not_leak(
    path, poisoned_memory, branches, monkeypatch
):
    # The kernel writes into buffers it does not initialise (sparse_matmul's addmm with beta=0,
    # the per-term forward's output, the backward's gradients); none may be read before written.
    assert torch.empty(4, dtype=torch.float64).isnan().all()  # the poisoning is on
    for name, (_, _, _, gated) in CONVOLUTIONS.items():
        if not (gated and path == "stacked_terms"):
            check_convolution(name, path, "dual_random_walk", branches, monkeypatch)


def test_training_batch_goes_term_by_term_and_a_forecast_stacked(branches):
    # The branches forced above are the ones the default sizes take: term by term at training's
    # batch 64, stacked for a forecast of one window.
    sparse, dense = metr_la_supports("dual_random_walk")
    m = num_diffusion_terms(len(sparse), K)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(m * HIDDEN, 2 * HIDDEN, generator=g, dtype=torch.float64) / 10
    for batch, branch in ((64, "per_term"), (1, "stacked")):
        h = torch.randn(NODES, batch, HIDDEN, generator=g, dtype=torch.float64)
        branches.clear()
        out = diffusion_conv(h, Supports(sparse), K, weight)
        assert branches == {branch: 1, "walks": 1}
        want = reference_diffusion(h.transpose(0, 1), dense, K) @ weight
        assert_equal_to_rounding(out, want.transpose(0, 1))


@pytest.mark.parametrize("forward_branch", ["stacked", "per_term"])
@pytest.mark.parametrize("input_dim", [2, HIDDEN])  # the first layer's, a layer above's
@pytest.mark.parametrize("filter_type", FILTER_TYPES)
def test_dcgru_cell_at_metr_la_size_equals_the_paper(
    filter_type, input_dim, forward_branch, branches, monkeypatch
):
    force_forward(monkeypatch, forward_branch)
    sparse, dense = metr_la_supports(filter_type)
    torch.manual_seed(0)
    cell = DCGRUCell(input_dim, HIDDEN, len(sparse), K).to(torch.float64)
    with torch.no_grad():  # non-trivial biases, so a misplaced bias or gate column cannot hide
        cell.bias.add_(0.1 * torch.randn_like(cell.bias))
    reference = ReferenceDCGRUCell(input_dim, HIDDEN, cell.num_terms, K).to(torch.float64)
    reference.copy_from(cell)
    x = torch.randn(NODES, BATCH, input_dim, dtype=torch.float64)
    h = torch.randn(NODES, BATCH, HIDDEN, dtype=torch.float64).tanh()
    x_cell, h_cell = x.clone().requires_grad_(), h.clone().requires_grad_()
    x_ref, h_ref = x.transpose(0, 1).requires_grad_(), h.transpose(0, 1).requires_grad_()
    supports = Supports(sparse)
    out = cell(cell.project_input(x_cell, supports), h_cell, supports)  # (N, B, H)
    want = reference(x_ref, h_ref, dense).transpose(0, 1)
    assert_equal_to_rounding(out, want)

    upstream = torch.randn_like(out)
    out.backward(upstream)
    want.backward(upstream)
    assert_equal_to_rounding(x_cell.grad, x_ref.grad.transpose(0, 1))
    assert_equal_to_rounding(h_cell.grad, h_ref.grad.transpose(0, 1))
    gates, candidate = paper_layout(cell, grad=True)
    assert_equal_to_rounding(gates, reference.weight_gates.grad)
    assert_equal_to_rounding(candidate, reference.weight_candidate.grad)
    assert_equal_to_rounding(
        cell.bias.grad, torch.cat([reference.bias_gates.grad, reference.bias_candidate.grad])
    )

    other = "per_term" if forward_branch == "stacked" else "stacked"
    assert branches[forward_branch] > 0 and branches[other] == 0
    # the gates' backward recomputes the terms, the candidate's walks the gradient
    assert branches["adjoint_walks"] == 1
    assert branches["stacked_terms"] == (1 if input_dim == 2 else 0)


@pytest.fixture(scope="module", params=[0, 16], ids=["paper_model", "node_embedding_16"])
def metr_la_dcrnn(request):
    """A DCRNN at the paper's size on METR-LA (float64), its reference, a batch, and the
    reference's output and gradients (MAE loss, as training)."""
    embedding = request.param
    sparse, dense = metr_la_supports("dual_random_walk")
    torch.manual_seed(0)
    model = DCRNN(
        num_nodes=NODES,
        input_dim=2,
        output_dim=1,
        supports=sparse,
        hidden_dim=HIDDEN,
        num_layers=2,
        max_diffusion_step=K,
        seq_len=12,
        horizon=12,
        node_embedding_dim=embedding,
    ).to(torch.float64)
    with torch.no_grad():  # non-trivial biases and projection
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    reference = ReferenceDCRNN(model, dense)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 12, NODES, 2, generator=g, dtype=torch.float64)
    y = torch.randn(BATCH, 12, NODES, 1, generator=g, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    if embedding:
        reference.embedding.requires_grad_()
    want = reference(x_ref)
    (want - y).abs().mean().backward()
    return model, reference, x, y, want.detach(), x_ref.grad


@pytest.mark.parametrize("forward_branch", ["stacked", "per_term"])
def test_dcrnn_at_metr_la_size_equals_the_paper(
    metr_la_dcrnn, forward_branch, branches, monkeypatch
):
    # 207 sensors, batch 8, 64 units, 2 layers, K = 2, 12 steps in and out: the forecasts and the
    # gradients of the input and of every parameter.
    model, reference, x, y, want, want_x_grad = metr_la_dcrnn
    force_forward(monkeypatch, forward_branch)
    model.zero_grad(set_to_none=True)
    x_model = x.clone().requires_grad_()
    out = model(x_model)
    assert_equal_to_rounding(out.detach(), want)
    (out - y).abs().mean().backward()
    assert_equal_to_rounding(x_model.grad, want_x_grad)

    compared = set()
    d = model.node_embedding_dim
    for part, optimised, ref_cells in (
        ("encoder", model.encoder_cells, reference.encoder),
        ("decoder", model.decoder_cells, reference.decoder),
    ):
        for i, (cell, ref) in enumerate(zip(optimised, ref_cells, strict=True)):
            vectors = getattr(model, f"{part}_embedding_weight") if d and i == 0 else None
            gates, candidate = paper_layout(cell, vectors, grad=True)
            assert_equal_to_rounding(gates, ref.weight_gates.grad)
            assert_equal_to_rounding(candidate, ref.weight_candidate.grad)
            bias = torch.cat([ref.bias_gates.grad, ref.bias_candidate.grad])
            assert_equal_to_rounding(cell.bias.grad, bias)
            names = ("weight_input", "weight_hidden_gates", "weight_hidden_candidate", "bias")
            compared |= {f"{part}_cells.{i}.{name}" for name in names}
            if vectors is not None:
                compared.add(f"{part}_embedding_weight")
    for name in ("weight", "bias"):
        got = getattr(model.projection, name).grad
        assert_equal_to_rounding(got, getattr(reference.projection, name).grad)
        compared.add(f"projection.{name}")
    if d:
        assert_equal_to_rounding(model.node_embedding.grad, reference.embedding.grad)
        compared.add("node_embedding")
    assert compared == {name for name, _ in model.named_parameters()}

    other = "per_term" if forward_branch == "stacked" else "stacked"
    assert branches[forward_branch] > 0 and branches[other] == 0
    # the first layers' inputs (and the vectors) stacked; both ways of the backward
    assert branches["stacked_terms"] > 0
    assert branches["adjoint_walks"] > 0 and branches["walks"] > branches[forward_branch]
