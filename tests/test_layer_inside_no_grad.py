"""A layer that runs inside the model's own ``torch.no_grad()`` block, as a frozen backbone
(``with torch.no_grad(): features = backbone(x)``) before a head (NOTE: [Layers inside
torch.no_grad]). The model's output still depends on the layer's value through the ops after
the block, and the layer methods must see that dependence: the numbers of a twin without the
block, at the layer (Captum's LayerIntegratedGradients agrees). Before, the split's substitute
was made inside the block, untracked, and every layer method returned zeros."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr

from layer_registry import LAYER_METHODS_UNDER_TEST


class Frozen(nn.Module):
    def __init__(self, frozen: bool):
        super().__init__()
        torch.manual_seed(0)
        self.frozen = frozen
        self.a, self.mid, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            features = self.mid(torch.tanh(self.a(x)))
        return self.out(torch.tanh(features))


X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _pair():
    frozen, twin = Frozen(True).double().eval(), Frozen(False).double().eval()
    twin.load_state_dict(frozen.state_dict())
    return frozen, twin


@pytest.mark.parametrize("method", [m for m in LAYER_METHODS_UNDER_TEST if m.space == "layer"], ids=repr)
def test_every_layer_method_at_a_layer_inside_the_models_no_grad(method):
    frozen, twin = _pair()
    split = lambda m: xattr.at_layer(xattr.target(m, 1), m.mid)  # noqa: E731
    got = method.make(split(frozen), generator=0)(X)
    want = method.make(split(twin), generator=0)(X)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want)


def test_layer_integrated_gradients_there_equals_captums():
    captum_attr = pytest.importorskip("captum.attr")
    frozen, _ = _pair()
    ours = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(frozen, 1), frozen.mid))(X)
    theirs = captum_attr.LayerIntegratedGradients(frozen, frozen.mid).attribute(X, target=1)
    torch.testing.assert_close(ours, theirs)


def test_perturbation_methods_there_build_no_graph():
    """Under the caller's no_grad (the perturbation methods) the substitute stays untracked."""
    frozen, _ = _pair()
    split = xattr.at_layer(xattr.target(frozen, 1), frozen.mid)
    with torch.no_grad():
        out = split.head(split.act(X), X)
    assert not out.requires_grad
