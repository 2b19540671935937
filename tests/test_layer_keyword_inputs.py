"""``at_layer(..., inputs=True)`` at a layer called by keyword alone (NOTE: [Layer inputs given
by keyword]): its input is its forward's first parameter, as for a positional call. Each method
must give the numbers of a twin that passes that argument by position; before, the input was
``()`` and every method failed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr

from layer_registry import LAYER_METHODS_UNDER_TEST


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, gate=None, scale=1.0):
        y = self.lin(x) * scale
        return y if gate is None else y * torch.sigmoid(gate)


class Caller(nn.Module):
    """proj -> block(...) -> tanh -> out; ``style`` is how the block is called."""

    def __init__(self, style: str):
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.proj, self.gate, self.block, self.out = nn.Linear(3, 4), nn.Linear(3, 4), Block(), nn.Linear(4, 2)

    def forward(self, x):
        h, g = self.proj(x), self.gate(x)
        if self.style == "positional":
            y = self.block(h, scale=2.0)
        elif self.style == "keyword":
            y = self.block(x=h, scale=2.0)
        elif self.style == "gated, x by position":
            y = self.block(h, gate=g, scale=2.0)
        else:  # "gated, all by keyword"
            y = self.block(gate=g, scale=2.0, x=h)
        return self.out(torch.tanh(y))


def _models(style, twin):
    a, b = Caller(style).double().eval(), Caller(twin).double().eval()
    b.load_state_dict(a.state_dict())
    return a, b


X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", LAYER_METHODS_UNDER_TEST, ids=repr)
def test_every_layer_method_at_a_layer_input_given_by_keyword(method):
    kw, pos = _models("keyword", "positional")
    split = lambda m: xattr.at_layer(xattr.target(m, 1), m.block, inputs=True)  # noqa: E731
    got = method.make(split(kw), index=2, generator=0)(X)
    want = method.make(split(pos), index=2, generator=0)(X)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["layer_integrated_gradients", "gradient_x_activation", "layer_activation", "layer_deep_lift"])
def test_other_keyword_tensors_stay_out_of_the_input(name):
    """The gate, by keyword in both, is not part of the input: the first parameter is, by
    position in the twin and by keyword (given last) here."""
    kw, pos = _models("gated, all by keyword", "gated, x by position")
    method = getattr(xattr, name)
    split = lambda m: xattr.at_layer(xattr.target(m, 1), m.block, inputs=True)  # noqa: E731
    got, want = method(split(kw))(X), method(split(pos))(X)
    assert isinstance(got, torch.Tensor) and got.shape == (5, 4)
    torch.testing.assert_close(got, want)


def test_the_head_substitutes_a_keyword_input_where_it_came_from():
    kw, _ = _models("keyword", "positional")
    split = xattr.at_layer(xattr.target(kw, 1), kw.block, inputs=True)
    h = split.act(X)
    torch.testing.assert_close(h, kw.proj(X))
    with torch.no_grad():
        torch.testing.assert_close(split.head(torch.zeros_like(h), X), kw.out(torch.tanh(kw.block.lin.bias * 2.0)).expand(5, 2)[:, 1])
