"""``nn.GLU`` / ``F.glu`` under DeepLift and LRP: one call computing ``a * sigmoid(b)`` of its
input's halves, which both mappings now run written out (`xattr.rule.Unfused`), so its product
takes `Product` (DeepLift) or `FixedGate` (LRP) and its sigmoid its own rule. Before, the call kept
its ordinary gradient: DeepLift's delta and LRP's conservation gap were 0.009 where |f| was 0.036
(the net below), where the same net written as ``a * torch.sigmoid(b)`` was exact."""

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr

D = torch.float64


class _Written(nn.Module):
    """``nn.GLU(dim)`` written as ``a * torch.sigmoid(b)``."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        a, b = x.chunk(2, self.dim)
        return a * torch.sigmoid(b)


def _net(glu, seed: int, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8, bias=bias), glu(-1), nn.Linear(4, 6, bias=bias), glu(1),
                         nn.Linear(3, 2, bias=bias)).to(D).eval()  # fmt: skip


def _twins(seed: int, bias: bool = True):
    return _net(nn.GLU, seed, bias), _net(_Written, seed, bias)


@given(st.integers(0, 50), st.integers(1, 4), st.sampled_from(["each", "zero"]))
def test_deep_lift_through_glu_sums_to_delta_and_equals_the_written_out_net(seed, batch, reference):
    model, written = _twins(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, generator=g, dtype=D)
    base = torch.randn(batch, 4, generator=g, dtype=D) if reference == "each" else 0.0
    attr, delta = xattr.deep_lift(xattr.target(model, 1), baselines=base, return_delta=True)(x)
    assert delta.abs().max() < 1e-12
    torch.testing.assert_close(attr, xattr.deep_lift(xattr.target(written, 1), baselines=base)(x), rtol=1e-10, atol=1e-13)


@given(st.integers(0, 50), st.integers(1, 4))
def test_lrp_through_glu_conserves_and_equals_the_written_out_net(seed, batch):
    model, written = _twins(seed, bias=False)
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(seed), dtype=D)
    relevance, delta = xattr.lrp(xattr.target(model, 0), composite=xattr.rule.lrp_rules(1e-12), return_delta=True)(x)
    assert delta.abs().max() < 1e-8 * max(1.0, model(x)[:, 0].abs().max().item())
    torch.testing.assert_close(relevance, xattr.lrp(xattr.target(written, 0), composite=xattr.rule.lrp_rules(1e-12))(x))


def test_the_forward_is_unchanged_and_functional_glu_is_covered():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, dtype=D)
    f = lambda t: F.glu(t, dim=1).sum((1, 2))  # noqa: E731
    ruled = xattr.rules(f, {F.glu: xattr.rule.Unfused()})
    torch.testing.assert_close(ruled(x), f(x), rtol=0, atol=1e-15)
    _, delta = xattr.deep_lift(f, baselines=0.0, return_delta=True)(x)
    assert delta.abs().max() < 1e-12


def test_guided_backprop_keeps_glu_as_it_was():
    model, _ = _twins(3)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=D)
    torch.testing.assert_close(xattr.guided_backprop(xattr.target(model, 0))(x), xattr.saliency(xattr.target(model, 0), abs=False)(x))


class _Bilinear(nn.Module):
    """``out(a(x) * b(x))`` bias-free, the factors in either order (equal shapes)."""

    def __init__(self, seed: int, swapped: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.out = nn.Linear(3, 5, bias=False), nn.Linear(3, 5, bias=False), nn.Linear(5, 1, bias=False)
        self.swapped = swapped
        self.to(D).eval()

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return self.out(b * a if self.swapped else a * b)[:, 0]


def _held_by_hand(net, x, held: str):
    """LRP-0 by loops, the factor ``held`` ("a" or "b") held at the product: the other factor's
    linear layer passes each unit's whole relevance to the inputs."""
    rows = []
    for xi in x.tolist():
        W = {k: getattr(net, k).weight.detach().tolist() for k in ("a", "b", "out")}
        z = {k: [sum(W[k][j][i] * xi[i] for i in range(3)) for j in range(5)] for k in ("a", "b")}
        r_unit = [W["out"][0][j] * z["a"][j] * z["b"][j] for j in range(5)]  # LRP-0 at out: R_j = z_j w_j
        k = "b" if held == "a" else "a"
        rows.append([sum(xi[i] * W[k][j][i] / z[k][j] * r_unit[j] for j in range(5)) for i in range(3)])
    return torch.tensor(rows, dtype=D)


@given(st.integers(0, 50), st.sampled_from([0, 1]), st.booleans())
def test_fixed_gate_holds_the_named_factor(seed, gate, swapped):
    """``FixedGate(gate=k)`` holds factor k of a product of equal shapes (the shapes alone would
    split it in half): relevance by hand, conservation, and the swapped product with the other
    index gives the same numbers."""
    net = _Bilinear(seed, swapped)
    x = torch.randn(2, 3, dtype=D, generator=torch.Generator().manual_seed(seed))
    rules = {**xattr.rule.lrp_rules(0.0), torch.mul: xattr.rule.FixedGate(gate=gate)}
    got = xattr.lrp(net, composite=rules)(x)
    first = "b" if swapped else "a"
    held = first if gate == 0 else ("a" if first == "b" else "b")
    torch.testing.assert_close(got, _held_by_hand(net, x, held), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(got.sum(1), net(x), rtol=1e-9, atol=1e-12)
    other = xattr.lrp(_Bilinear(seed, not swapped), composite={**rules, torch.mul: xattr.rule.FixedGate(gate=1 - gate)})(x)
    torch.testing.assert_close(got, other, rtol=1e-12, atol=1e-14)
    halved = xattr.lrp(net, composite={**rules, torch.mul: xattr.rule.FixedGate()})(x)
    assert not torch.allclose(got, halved)


def test_fixed_gate_refuses_other_gates():
    for bad in (2, -1, True, "0", 0.0):
        try:
            xattr.rule.FixedGate(gate=bad)
        except ValueError as err:
            assert "gate must be None" in str(err)
        else:
            raise AssertionError(f"accepted gate={bad!r}")
    assert repr(xattr.rule.FixedGate()) == "FixedGate()" and repr(xattr.rule.FixedGate(gate=1)) == "FixedGate(gate=1)"
