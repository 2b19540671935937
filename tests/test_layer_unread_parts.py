"""A layer whose value has a part nothing after it reads (attention weights that the module itself
used for its context, as in Captum's BERT tutorial): the gradient layer methods give that part
zeros and say so with a NoGradientPathWarning naming it (NOTE: [Parts of a layer's value no path
reads] in xattr/_src/layer_grads.py); the other parts are unchanged, and nothing is said where every
part is read."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import xattr


class Attention(nn.Module):
    """``(context, probs)``: the context is computed from the probabilities inside the module."""

    def __init__(self, d=6):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        probs = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1)
        return probs @ self.v(x), probs


class Net(nn.Module):
    def __init__(self, read_probs=False):
        super().__init__()
        torch.manual_seed(0)
        self.attn, self.out = Attention(), nn.Linear(6, 1)
        self.read_probs = read_probs

    def forward(self, x):
        context, probs = self.attn(x)
        y = self.out(context).sum((1, 2))
        return y + probs.square().sum((1, 2)) if self.read_probs else y


X = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
METHODS = {
    "gradient_x_activation": xattr.gradient_x_activation,
    "internal_influence": lambda s: xattr.internal_influence(s, n_steps=8),
    "conductance": lambda s: xattr.conductance(s, n_steps=8),
}


def _run(method, model):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        context, probs = METHODS[method](xattr.at_layer(model, model.attn))(X)
    return context, probs, [str(w.message) for w in seen if issubclass(w.category, xattr.NoGradientPathWarning)]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_unread_part_is_named(method):
    model = Net().double()
    context, probs, said = _run(method, model)
    assert len(said) == 1 and "part(s) [1] of the layer's output" in said[0] and "Captum" in said[0]
    assert torch.count_nonzero(probs) == 0 and torch.count_nonzero(context) > 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_warning_where_every_part_is_read(method):
    context, probs, said = _run(method, Net(read_probs=True).double())
    assert not said and torch.count_nonzero(probs) > 0


def test_the_read_part_is_that_of_the_layer_alone():
    """The warning changes no number: the context's gradient x activation equals a split of the
    same model at the context alone (a twin module returning it by itself)."""

    class ContextOnly(nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x)[0]

    class Twin(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.ctx, self.out = ContextOnly(net.attn), net.out

        def forward(self, x):
            return self.out(self.ctx(x)).sum((1, 2))

    model = Net().double()
    context = _run("gradient_x_activation", model)[0]
    twin = Twin(model)
    torch.testing.assert_close(context, xattr.gradient_x_activation(xattr.at_layer(twin, twin.ctx))(X))


def test_captum_counts_the_use_inside_the_layer():
    """The documented difference (docs/migration_rules.md): Captum's LayerGradientXActivation gives
    the probabilities the path through the context; the context itself agrees."""
    captum = pytest.importorskip("captum.attr")
    model = Net().double()
    theirs = captum.LayerGradientXActivation(model, model.attn).attribute(X)
    from xattr.compat.captum import LayerGradientXActivation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xattr.NoGradientPathWarning)
        ours = LayerGradientXActivation(model, model.attn).attribute(X)
    torch.testing.assert_close(ours[0], theirs[0])
    assert torch.count_nonzero(ours[1]) == 0 and theirs[1].abs().max() > 1e-3
