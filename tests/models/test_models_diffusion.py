"""Diffusion convolution terms computed by hand on a 3-node directed graph (Li et al. 2018, Eq. 2).

Roads (``W[i, j]`` = weight of the road from i to j): 0->1 (3.5), 0->2 (0.5), 1->0 (1), 2->1 (0.5).
The weights are chosen so that every support entry is a binary fraction: the expected values below
are exact in float32.

Forward walk ``P_f = D_O^{-1} W``, out-degrees (4, 1, 0.5)::

    P_f = [[0, 7/8, 1/8],
           [1, 0,   0  ],
           [0, 1,   0  ]]

Backward walk ``P_b = D_I^{-1} W^T``, in-degrees (1, 4, 0.5)::

    P_b = [[0,   1, 0  ],
           [7/8, 0, 1/8],
           [1,   0, 0  ]]

Laplacian: ``max(W, W^T)`` has degrees (4, 4, 1); with lambda_max = 2 the scaled Laplacian is
``-D^{-1/2} W D^{-1/2}``::

    S = [[0,    -7/8, -1/4],
         [-7/8, 0,    -1/4],
         [-1/4, -1/4, 0   ]]

The signal ``x`` is laid out ``(N=3, B=2, F=2)``; its four node vectors are
``a = x[:, 0, 0] = (8, 16, 24)``, ``c = x[:, 0, 1] = (1, 1, 1)``, ``e = x[:, 1, 0] = (8, 0, 0)``,
``g = x[:, 1, 1] = (0, 0, -8)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficcast.graph import compute_supports
from trafficcast.graph.tensors import to_torch_sparse_csr
from trafficcast.models.layers import DCGRUCell, Supports, diffuse, diffusion_conv

W = np.array([[0.0, 3.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])


def _signal(a, c, e, g) -> torch.Tensor:
    """Four node vectors into the ``(N, B, F)`` layout: batch 0 = (a, c), batch 1 = (e, g)."""
    x = torch.tensor([a, c, e, g], dtype=torch.float32)  # (4, N)
    return x.T.reshape(3, 2, 2)  # (N, B·F) -> (N, B, F)


X = _signal((8, 16, 24), (1, 1, 1), (8, 0, 0), (0, 0, -8))

# P_f a  = (7/8·16 + 1/8·24, 8, 16)                 = (17, 8, 16)
# P_f² a = P_f (17, 8, 16) = (7 + 2, 17, 8)         = (9, 17, 8)
# P_f c  = row sums = (1, 1, 1), and so P_f² c
# P_f e  = 8·column 0 = (0, 8, 0); P_f² e = P_f (0, 8, 0) = (7, 0, 8)
# P_f g  = -8·column 2 = (-1, 0, 0); P_f² g = P_f (-1, 0, 0) = (0, -1, 0)
FORWARD_1 = _signal((17, 8, 16), (1, 1, 1), (0, 8, 0), (-1, 0, 0))
FORWARD_2 = _signal((9, 17, 8), (1, 1, 1), (7, 0, 8), (0, -1, 0))

# P_b a  = (16, 7/8·8 + 1/8·24, 8)                  = (16, 10, 8)
# P_b² a = P_b (16, 10, 8) = (10, 14 + 1, 16)       = (10, 15, 16)   -- restarted from a:
#          the original code's P_b P_f² a = P_b (9, 17, 8) = (17, 8.875, 9) would differ.
# P_b c  = (1, 1, 1), and so P_b² c
# P_b e  = 8·column 0 = (0, 7, 8); P_b² e = P_b (0, 7, 8) = (7, 1, 0)
# P_b g  = -8·column 2 = (0, -1, 0); P_b² g = P_b (0, -1, 0) = (-1, 0, 0)
BACKWARD_1 = _signal((16, 10, 8), (1, 1, 1), (0, 7, 8), (0, -1, 0))
BACKWARD_2 = _signal((10, 15, 16), (1, 1, 1), (7, 1, 0), (-1, 0, 0))

# S a  = -(7/8·16 + 1/4·24, 7/8·8 + 1/4·24, 1/4·8 + 1/4·16)   = (-20, -13, -6)
# S² a = (7/8·13 + 1/4·6, 7/8·20 + 1/4·6, 1/4·20 + 1/4·13)    = (12.875, 19, 8.25)
#        (a Chebyshev recurrence 2 S (S a) - a would give (17.75, 22, -7.5) instead)
# S c  = -(row sums) = (-9/8, -9/8, -1/2)
# S² c = (7/8·9/8 + 1/4·1/2, 7/8·9/8 + 1/4·1/2, 1/4·9/8·2)   = (71/64, 71/64, 9/16)
# S e  = 8·column 0 = (0, -7, -2); S² e = S (0, -7, -2) = (53/8, 1/2, 7/4)
# S g  = -8·column 2 = (2, 2, 0); S² g = S (2, 2, 0) = (-7/4, -7/4, -1)
LAPLACIAN_1 = _signal((-20, -13, -6), (-9 / 8, -9 / 8, -1 / 2), (0, -7, -2), (2, 2, 0))
LAPLACIAN_2 = _signal(
    (12.875, 19, 8.25), (71 / 64, 71 / 64, 9 / 16), (53 / 8, 1 / 2, 7 / 4), (-7 / 4, -7 / 4, -1)
)

# Terms in diffuse's order: identity, then each support's powers 1..K; features grouped by term.
EXPECTED_TERMS = {
    "random_walk": [X, FORWARD_1, FORWARD_2],
    "dual_random_walk": [X, FORWARD_1, FORWARD_2, BACKWARD_1, BACKWARD_2],
    "laplacian": [X, LAPLACIAN_1, LAPLACIAN_2],
}


def _supports(filter_type: str) -> list[torch.Tensor]:
    return [to_torch_sparse_csr(s) for s in compute_supports(W, filter_type)]


@pytest.mark.parametrize("filter_type", sorted(EXPECTED_TERMS))
def test_diffusion_by_hand(filter_type):
    out = diffuse(X, _supports(filter_type), 2)
    terms = EXPECTED_TERMS[filter_type]
    assert out.shape == (3, 2, 2 * len(terms))
    expected = torch.cat(terms, dim=-1)  # (N, B, M·F), term-major
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_diffusion_layout_is_term_then_feature():
    # One entry spelled out: node 1, batch 0, term "P_b² x", feature c is 1; feature a is 15.
    out = diffuse(X, _supports("dual_random_walk"), 2)
    assert out[1, 0, 8].item() == 15.0  # term 4 (P_b²), feature 0 (a)
    assert out[1, 0, 9].item() == 1.0  # term 4 (P_b²), feature 1 (c)
    assert out[0, 1, 2].item() == 0.0 and out[2, 1, 4].item() == 8.0  # P_f e and P_f² e


def test_backward_walk_restarts_from_the_input():
    # The defect of the original code: the backward walk continued from the forward-diffused
    # signal. P_b (P_f² a) = (17, 8.875, 9) must not appear as the first backward term.
    out = diffuse(X, _supports("dual_random_walk"), 2)
    first_backward = out[:, 0, 6]  # term 3, feature a
    assert first_backward.tolist() == [16.0, 10.0, 8.0]
    assert first_backward.tolist() != [17.0, 8.875, 9.0]


def test_no_diffusion_is_the_identity_term():
    out = diffuse(X, _supports("dual_random_walk"), 0)
    assert torch.equal(out, X)


def test_dense_and_sparse_supports_agree():
    dense = [torch.from_numpy(s.toarray()) for s in compute_supports(W, "dual_random_walk")]
    torch.testing.assert_close(
        diffuse(X, dense, 2), diffuse(X, _supports("dual_random_walk"), 2), rtol=0, atol=1e-6
    )


def test_gradient_flows_through_the_sparse_matmul():
    # The custom backward uses P^T: compare with autograd through dense supports.
    dense = [torch.from_numpy(s.toarray()) for s in compute_supports(W, "dual_random_walk")]
    weights = torch.arange(60, dtype=torch.float32).reshape(3, 2, 10) / 10
    x_sparse = X.clone().requires_grad_(True)
    x_dense = X.clone().requires_grad_(True)
    (diffuse(x_sparse, _supports("dual_random_walk"), 2) * weights).sum().backward()
    (diffuse(x_dense, dense, 2) * weights).sum().backward()
    torch.testing.assert_close(x_sparse.grad, x_dense.grad, rtol=0, atol=1e-5)
    assert x_sparse.grad.abs().sum() > 0


# 3 < 2F: the gradient walks; 9 >= 2F: recomputation; 24 >= 2·M·F: a narrow input, stacked terms
@pytest.mark.parametrize("out_dim", [3, 9, 24])
@pytest.mark.parametrize("filter_type", ["random_walk", "dual_random_walk", "laplacian"])
@pytest.mark.parametrize("base_kind", ["none", "bias", "tensor"])
def test_diffusion_conv_equals_diffuse_then_matmul(out_dim, filter_type, base_kind):
    # The fused convolution never stacks the terms and recomputes or walks them in backward;
    # it must give the values and the gradients of the straightforward diffuse(x) @ W + base.
    torch.manual_seed(0)
    supports = [s.to(torch.float64) for s in _supports(filter_type)]
    m = 1 + len(supports) * 2
    x = torch.randn(3, 2, 4, 2, dtype=torch.float64, requires_grad=True)  # (N, T, B, F=2)
    weight = torch.randn(m * 2, out_dim, dtype=torch.float64, requires_grad=True)
    base = {
        "none": None,
        "bias": torch.randn(out_dim, dtype=torch.float64, requires_grad=True),
        # a strided view, as DCGRU passes the input's contribution
        "tensor": torch.randn(3, 2, 4, out_dim + 2, dtype=torch.float64)[
            ..., 1:-1
        ].requires_grad_(),
    }[base_kind]
    fused = diffusion_conv(x, Supports(supports), 2, weight, base)
    plain = diffuse(x, supports, 2) @ weight + (0.0 if base is None else base)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    inputs = [x, weight] + ([] if base is None else [base])
    upstream = torch.randn_like(plain)
    grads_fused = torch.autograd.grad(fused, inputs, upstream)
    grads_plain = torch.autograd.grad(plain, inputs, upstream)
    for got, want in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert grads_fused[0].abs().sum() > 0


@pytest.mark.parametrize("out_dim", [3, 9])  # both backward branches, as above
@pytest.mark.parametrize("gate_kind", ["contiguous", "view"])
def test_gated_diffusion_conv_equals_convolving_the_product(out_dim, gate_kind):
    # DCGRU's candidate convolves r ⊙ H with gate=r so the product is not kept for backward;
    # values and gradients (to x, gate, weight, base) must be those of convolving the product.
    torch.manual_seed(1)
    supports = [s.to(torch.float64) for s in _supports("dual_random_walk")]
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)  # (N, B, F=2)
    if gate_kind == "view":  # r is a slice of the gates' sigmoid, as in DCGRU
        gate = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)[..., :2]
    else:
        gate = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5 * 2, out_dim, dtype=torch.float64, requires_grad=True)
    base = torch.randn(3, 4, out_dim, dtype=torch.float64, requires_grad=True)
    gated = diffusion_conv(x, Supports(supports), 2, weight, base, gate=gate)
    plain = diffusion_conv(gate * x, Supports(supports), 2, weight, base)
    torch.testing.assert_close(gated, plain, rtol=1e-12, atol=1e-12)
    # only x, the weight and the gate are kept: the product (a new tensor) is not saved
    node = gated.grad_fn.next_functions[0][0]  # through the output's view
    kept = {t.untyped_storage().data_ptr() for t in node.saved_tensors}
    inputs_storage = {t.untyped_storage().data_ptr() for t in (x, gate, weight)}
    assert kept == inputs_storage
    inputs = [x, gate, weight, base]
    upstream = torch.randn_like(plain)
    grads_gated = torch.autograd.grad(gated, inputs, upstream)
    grads_plain = torch.autograd.grad(plain, inputs, upstream)
    for got, want in zip(grads_gated, grads_plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in grads_gated)


@pytest.mark.parametrize("out_dim", [3, 9])  # both backward branches
def test_gated_diffusion_conv_with_only_the_weight_learning(out_dim):
    # A gated convolution whose x and gate want no gradient (frozen inputs, only the weight
    # trained): the backward has no input gradient to apply the product rule to, and gives the
    # weight's gradient alone (it used to fail on the missing input gradient).
    torch.manual_seed(2)
    supports = [s.to(torch.float64) for s in _supports("dual_random_walk")]
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    gate = torch.rand(3, 4, 2, dtype=torch.float64)
    weight = torch.randn(5 * 2, out_dim, dtype=torch.float64, requires_grad=True)
    gated = diffusion_conv(x, Supports(supports), 2, weight, gate=gate)
    plain = diffuse(gate * x, supports, 2) @ weight
    upstream = torch.randn_like(plain)
    (got,) = torch.autograd.grad(gated, [weight], upstream)
    (want,) = torch.autograd.grad(plain, [weight], upstream)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.abs().sum() > 0


def test_gated_diffusion_conv_refuses_a_gate_of_another_shape():
    supports = Supports(_supports("random_walk"))
    with pytest.raises(ValueError, match="gate shape"):
        diffusion_conv(
            torch.ones(3, 4, 2), supports, 1, torch.ones(3 * 2, 1), gate=torch.ones(3, 4, 1)
        )


# a narrow input (stacked terms) and a wide one (the output transposed)
@pytest.mark.parametrize("input_dim", [2, 40])
def test_project_input_steps_is_project_input_step_major(input_dim):
    # The encoder's projection of all steps at once, laid out (T, N, B, 3H), must be the
    # per-step projection, values and gradients.
    torch.manual_seed(0)
    supports = Supports([s.to(torch.float64) for s in _supports("dual_random_walk")])
    cell = DCGRUCell(input_dim, 8, len(supports), 2).to(torch.float64)
    x = torch.randn(3, 5, 4, input_dim, dtype=torch.float64)  # (N, T, B, F)
    steps = cell.project_input_steps(x, supports)
    plain = cell.project_input(x, supports).transpose(0, 1)
    assert steps.shape == (5, 3, 4, 24) and steps.is_contiguous()
    torch.testing.assert_close(steps, plain, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(steps)
    params = [cell.weight_input, cell.bias]
    for got, want in zip(
        torch.autograd.grad(steps, params, upstream),
        torch.autograd.grad(plain, params, upstream),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
