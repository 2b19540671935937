"""Activations written out as their input times a gate computed from it (NOTE: [Activations
written out] in xattr/_src/written_activations.py), and ``torch.addmm`` as a linear layer (Hugging
Face's ``Conv1D``), without transformers.

- Hugging Face's GELUs in Python (``gelu_new``/NewGELU, FastGELU, the erf ``gelu_python``,
  QuickGELU) in a bias-free network: LRP-0 conserves, and equals x times the gradient of the
  network with the ratio ``act(u) / u`` detached (the activation passes relevance on whole, as
  `Pass` at ``F.gelu``). Before, the factors got half each and the gate's constant 1 took its
  share: ``sum(R)`` missed ``f(x)`` by 0.8-7 times it at the worst example here (QuickGELU, whose
  halves both pass through its sigmoid, conserved).
- Products that are no such activation keep their rule: SwiGLU (two linear layers of one input),
  GLU (two halves of one input) and a gate pooled over the other factor.
- ``torch.addmm(b, x, W)`` takes the linear layer's rule: LRP-epsilon at eps 0.25 equals the
  network written with ``F.linear``. Before, it kept its gradient (LRP-0): 0.03-1.0 apart.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import xattr
from xattr._src.written_activations import self_gated

D = torch.float64
G = torch.Generator().manual_seed(0)
W1, W2, W3 = (torch.randn(*s, generator=G, dtype=D) for s in ((7, 5), (7, 7), (7,)))
X = torch.randn(4, 5, generator=G, dtype=D)

ACTIVATIONS = {
    "gelu_new": lambda u: 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * torch.pow(u, 3.0)))),
    "gelu_fast": lambda u: 0.5 * u * (1.0 + torch.tanh(u * 0.7978845608 * (1.0 + 0.044715 * u * u))),
    "gelu_python": lambda u: u * 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0))),
    "quick_gelu": lambda u: u * torch.sigmoid(1.702 * u),
    "gate_first": lambda u: (1.0 + torch.tanh(u)) * u,
}


def _net(act, held=False):
    def f(x):
        h = x @ W1.T
        a = act(h)
        if held:  # the activation as a gain on its input, held
            a = h * (a / h).detach()
        h2 = a @ W2.T
        return act(h2) @ W3 if not held else (h2 * (act(h2) / h2).detach()) @ W3

    return f


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_written_out_activations_conserve(name):
    act = ACTIVATIONS[name]
    relevance = xattr.lrp(_net(act), composite=xattr.rule.lrp_rules(1e-13))(X)
    torch.testing.assert_close(relevance.sum(1), _net(act)(X), rtol=1e-10, atol=0)
    x = X.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_net(act, held=True)(x).sum(), x)
    torch.testing.assert_close(relevance, X * grad, rtol=1e-9, atol=1e-12)


def test_the_gate_is_found():
    u = (X @ W1.T).requires_grad_()
    h = u * 2.0
    for name, act in ACTIVATIONS.items():
        a, b = _factors(act, h)
        assert self_gated(a, b) == (0 if name == "gate_first" else 1), name


def _factors(act, h):
    """The two factors of the product the activation ends with (its last multiplication)."""
    seen = []

    class Spy(xattr.rule.Rule):
        kinds = frozenset({"product"})

        def accepts(self, op):
            seen.append(op.tensors)
            return False

    xattr.rules(act, {torch.mul: Spy()})(h)
    return seen[-1]


def test_other_products_are_not_self_gated():
    x = X.clone().requires_grad_()
    u, v = x @ W1.T, x @ W1.flip(0).T
    assert self_gated(F.silu(u), v) is None  # SwiGLU: two projections of x
    assert self_gated(u[:, :3], torch.sigmoid(u[:, 3:6])) is None  # GLU: two halves of x
    assert self_gated(u, torch.sigmoid(u.mean(-1, keepdim=True))) is None  # a pooled gate
    assert self_gated(u, torch.sigmoid(v)) is None  # another tensor's gate


def test_addmm_is_a_linear_layer():
    b1 = torch.randn(7, generator=torch.Generator().manual_seed(2), dtype=D)

    def conv1d(x):  # Hugging Face's Conv1D: addmm(bias, x, weight), weight (in, out)
        return torch.addmm(torch.zeros(1, dtype=D), torch.relu(torch.addmm(b1, x, W1.T)), W3[:, None])[:, 0]

    def linear(x):
        return F.linear(torch.relu(F.linear(x, W1, b1)), W3[None])[:, 0]

    composite = xattr.rule.lrp_rules(0.25)
    torch.testing.assert_close(xattr.lrp(conv1d, composite=composite)(X), xattr.lrp(linear, composite=composite)(X))


def test_two_outputs_of_one_node_are_two_tensors():
    """The halves of a chunk are two outputs of one autograd node, not one tensor: no gate."""
    h = X.clone().requires_grad_()
    a, b = h[:, :4].chunk(2, dim=1)
    assert self_gated(a, b) is None
    assert self_gated(a, torch.sigmoid(b)) is None
