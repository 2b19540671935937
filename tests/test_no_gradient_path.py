"""A model that computes its output from the inputs without recording gradients (NOTE: [No
gradient path]): the gradient methods give zeros, as autograd defines them, and say why with a
xattr.NoGradientPathWarning; a model with a path from some of its inputs says nothing. Before, the
zeros came silently (Captum raises)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import xattr


class Cut(nn.Module):
    """``how`` cuts the path from x: a no_grad block, detach, or none at all (``"none"``)."""

    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x, y=None):
        if self.how == "no_grad":
            with torch.no_grad():
                h = self.a(x)
        elif self.how == "detach":
            h = self.a(x).detach()
        else:
            h = self.a(x)
        if y is not None:
            h = h + y
        return self.b(torch.tanh(h))


X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
METHODS = {
    "saliency": lambda f: xattr.saliency(f),
    "integrated_gradients": lambda f: xattr.integrated_gradients(f, n_steps=4),
    "deep_lift": lambda f: xattr.deep_lift(f),
    "guided_backprop": lambda f: xattr.guided_backprop(f),
    "many outputs": lambda f: xattr.saliency(f),
}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("how", ["no_grad", "detach"])
def test_no_path_from_the_inputs_gives_zeros_and_says_why(name, how):
    model = Cut(how).double().eval()
    f = xattr.target(model, xattr.outputs([0, 1]) if name == "many outputs" else 1)
    with pytest.warns(xattr.NoGradientPathWarning, match=r"no gradient reaches the attributed inputs"):
        attr = METHODS[name](f)(X)
    assert torch.count_nonzero(attr) == 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_path_from_the_inputs_says_nothing(name):
    model = Cut("none").double().eval()
    f = xattr.target(model, xattr.outputs([0, 1]) if name == "many outputs" else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", xattr.NoGradientPathWarning)
        attr = METHODS[name](f)(X)
    assert torch.count_nonzero(attr) > 0


def test_a_path_from_one_of_two_inputs_says_nothing():
    """y reaches the output, x does not: x's attributions are zero, without a warning."""
    model = Cut("detach").double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", xattr.NoGradientPathWarning)
        gx, gy = xattr.saliency(xattr.target(model, 1), argnums=(0, 1), abs=False)(X, X.clone())
    assert torch.count_nonzero(gx) == 0 and torch.count_nonzero(gy) > 0


class Aux(nn.Module):
    """``aux`` runs on the hidden layer, and the output never reads it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.aux, self.b = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        self.aux(h)
        return self.b(torch.tanh(h))


@pytest.mark.parametrize("many", [False, True])
def test_a_layer_the_output_never_reads_gives_zeros_and_says_why(many):
    """With K outputs the layer gradients' stack met None and raised a TypeError; one output gave
    silent zeros."""
    model = Aux().double().eval()
    f = xattr.target(model, xattr.outputs([0, 1]) if many else 1)
    with pytest.warns(xattr.NoGradientPathWarning, match="no gradient reaches the layer's value"):
        attr = xattr.gradient_x_activation(xattr.at_layer(f, model.aux))(X)
    assert attr.shape == ((4, 2, 3) if many else (4, 3))
    assert torch.count_nonzero(attr) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", xattr.NoGradientPathWarning)
        assert torch.count_nonzero(xattr.gradient_x_activation(xattr.at_layer(f, model.a))(X)) > 0


@pytest.mark.parametrize("how", ["no_grad", "detach", "none"])
@pytest.mark.parametrize("transform", ["vmap", "grad", "compile"])
def test_the_same_warning_under_transforms(how, transform):
    """Inside torch.func transforms (and torch.compile) the VJP is torch.func.vjp (NOTE: [Two
    differentiation backends]); whether the output requires grad at vjp's own level says whether
    it depends on the inputs, so the warning is the same as at top level (before: none)."""
    model = Cut(how).double().eval()
    sal = xattr.saliency(xattr.target(model, 1), abs=False)
    if transform == "vmap":
        run = lambda: torch.func.vmap(sal)(X[:, None])[:, 0]  # noqa: E731
    elif transform == "grad":
        run = lambda: torch.func.grad(lambda x: (sal(x) * x).sum())(X)  # noqa: E731
    else:
        torch._dynamo.reset()
        run = lambda: torch.compile(sal, backend="eager", fullgraph=False)(X)  # noqa: E731
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = run()
    warned = [w for w in seen if issubclass(w.category, xattr.NoGradientPathWarning)]
    assert bool(warned) == (how != "none"), [str(w.message)[:80] for w in seen]
    want = sal(X) if how == "none" else torch.zeros_like(X)
    if transform != "grad":
        torch.testing.assert_close(out, want)
