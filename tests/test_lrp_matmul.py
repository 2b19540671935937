"""LRP at matrix products and einsum of activations (NOTE: [Matrix products share relevance] in
xattr/_src/gate_rules.py): the factors computed from the input share the product's relevance
evenly where the mapping keys ``torch.matmul`` and ``torch.einsum`` to `FixedGate` (not the
default, which hand-written attention with its softmax held needs: below). With their gradient
every factor takes the whole of it: relevance counted twice (k times for k factors)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import xattr

D = torch.float64
RULES = {**xattr.rule.lrp_rules(1e-13), torch.matmul: xattr.rule.FixedGate(), torch.einsum: xattr.rule.FixedGate()}


def _relevance(f, x):
    return xattr.lrp(f, composite=RULES)(x)


class Bilinear(nn.Module):
    """Bias-free: two projections of x multiplied as matrices, ``einsum`` or ``a @ b``, then one
    more linear layer; ``three``: an einsum of three activations."""

    def __init__(self, d: int, how: str):
        super().__init__()
        self.a, self.b, self.c, self.out = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.how = how

    def forward(self, x):  # x: (B, L, d)
        a, b = self.a(x), self.b(x)
        if self.how == "matmul":
            z = a @ b.transpose(1, 2)  # (B, L, L)
            return self.out(z @ x).sum((1, 2))  # a third activation, x, in the second product
        if self.how == "einsum":
            return self.out(torch.einsum("bld,bmd->blm", a, b) @ x).sum((1, 2))
        return torch.einsum("bld,bld,bld->b", a, b, self.c(x))


@pytest.mark.parametrize("how", ["matmul", "einsum", "three"])
@given(seed=st.integers(0, 10**6))
@settings(max_examples=10, deadline=None)
def test_matrix_products_conserve(how, seed):
    torch.manual_seed(seed % 1000)
    model = Bilinear(4, how).to(D)
    x = torch.randn(3, 5, 4, dtype=D, generator=torch.Generator().manual_seed(seed))
    rel = _relevance(model, x)
    with torch.no_grad():
        fx = model(x)
    torch.testing.assert_close(rel.sum((1, 2)), fx, rtol=1e-9, atol=1e-12)


def test_a_product_of_two_activations_splits_in_half_by_hand():
    """``f(x) = sum(w * ((x A) (x B)^T))``: the relevance of x is half what each factor's
    gradient times the factor hands back, written out by hand."""
    torch.manual_seed(0)
    A, B, w = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D), torch.randn(5, 5, dtype=D)
    x = torch.randn(2, 5, 4, dtype=D)

    def f(t):
        return (w * ((t @ A) @ (t @ B).transpose(1, 2))).sum((1, 2))

    rel = _relevance(f, x)
    a, b = x @ A, x @ B
    ra = 0.5 * a * (w @ b)  # R of a: half of a * dz/da . w
    rb = 0.5 * b * (w.T @ a)
    # each linear map passes its relevance back in proportion to its contributions (LRP-0)
    by_hand = torch.einsum("bld,dk,blk->bld", x, A, ra / a) + torch.einsum("bld,dk,blk->bld", x, B, rb / b)
    torch.testing.assert_close(rel, by_hand, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(rel.sum((1, 2)), f(x), rtol=1e-9, atol=1e-12)


def test_a_product_with_a_parameter_keeps_its_gradient():
    """``x @ W`` with W a parameter is linear in x (no rule: the gradient conserves already)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, dtype=D))
    x = torch.randn(2, 4, dtype=D)
    f = lambda t: torch.relu(t @ w).sum(1)  # noqa: E731
    torch.testing.assert_close(_relevance(f, x).sum(1), f(x).detach(), rtol=1e-9, atol=1e-12)


def test_the_default_keeps_the_gradient_for_attention_written_by_hand():
    """``softmax(q @ k.T) @ v`` with softmax mapped to `Block` (the weights held): ``@ v`` must
    hand v the whole relevance, as its gradient does, and the default conserves; sharing it would
    stop the weights' half at the softmax."""
    torch.manual_seed(0)
    q, k, v, out = (nn.Linear(4, 4, bias=False).to(D) for _ in range(4))

    def f(x):
        w = torch.softmax(q(x) @ k(x).transpose(1, 2), dim=-1)
        return out(w @ v(x)).sum((1, 2))

    x = torch.randn(2, 5, 4, dtype=D)
    held = {**xattr.rule.lrp_rules(1e-13), F.softmax: xattr.rule.Block()}
    torch.testing.assert_close(xattr.lrp(f, composite=held)(x).sum((1, 2)), f(x).detach(), rtol=1e-9, atol=1e-12)
    shared = {**held, torch.matmul: xattr.rule.FixedGate()}
    assert (xattr.lrp(f, composite=shared)(x).sum((1, 2)) - f(x)).abs().max() > 1e-3


SHAPES = [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
          ((1, 2, 3, 4), (5, 2, 4, 6)), ((5, 1, 3, 4), (1, 2, 4, 6)), ((2, 1, 3, 4), (2, 4, 6))]


@pytest.mark.parametrize("shapes", SHAPES)
def test_the_direct_matmul_backward_is_autograds(shapes):
    """FixedGate's matmul backward (`gate_rules._matmul_vjp`: two products, no re-run of the
    product) equals autograd's VJP of ``a @ b`` for every broadcast of the batch dims (bmm too)."""
    from xattr._src.gate_rules import _matmul_vjp

    gen = torch.Generator().manual_seed(len(shapes[0]) * 10 + len(shapes[1]))
    a = torch.randn(shapes[0], dtype=D, generator=gen, requires_grad=True)
    b = torch.randn(shapes[1], dtype=D, generator=gen, requires_grad=True)
    fns = [torch.matmul] + ([torch.bmm] if a.ndim == b.ndim == 3 else [])
    for fn in fns:
        z = fn(a, b)
        g = torch.randn(z.shape, dtype=D, generator=gen)
        want = torch.autograd.grad(z, (a, b), g)
        got = _matmul_vjp(a.detach(), b.detach(), g)
        for w, o in zip(want, got):
            assert o.shape == w.shape
            torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12)
