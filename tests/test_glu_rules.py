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
