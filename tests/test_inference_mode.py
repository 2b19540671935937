"""Attribution under ``torch.inference_mode()`` (NOTE: [Inference mode]).

Autograd records nothing in inference mode, so before the fix gradient methods returned zeros
silently and guided backprop failed inside its graph walk. Every public method must give the
numbers it gives outside inference mode, both called inside it and called on tensors made in it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr


def _case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()
    return model, torch.randn(2, 1, 4, 4)


def _methods(model):
    f = xattr.target(model, 1)
    split = xattr.at_layer(f, model[0])
    return {
        "saliency": xattr.saliency(f),
        "integrated_gradients": xattr.integrated_gradients(f),
        "gradient_shap": xattr.gradient_shap(f, baselines=torch.zeros(3, 1, 4, 4), generator=torch.Generator().manual_seed(1)),
        "deep_lift": xattr.deep_lift(f),
        "guided_backprop": xattr.guided_backprop(f),
        "deconvolution": xattr.deconvolution(f),
        "lrp": xattr.lrp(f),
        "grad": xattr.grad(f),
        "gradient_x_activation": xattr.gradient_x_activation(split),
        "grad_cam": xattr.grad_cam(split),
        "layer_integrated_gradients": xattr.layer_integrated_gradients(split),
        "layer_deep_lift": xattr.layer_deep_lift(split),
        "layer_lrp": xattr.layer_lrp(split),
        "neuron_guided_backprop": xattr.guided_backprop(xattr.neuron(xattr.at_layer(model, model[0]), (0, 1, 1))),
        "feature_ablation": xattr.feature_ablation(f),
    }


@pytest.mark.parametrize("name", list(_methods(_case()[0])))
@pytest.mark.parametrize("where", ["called inside", "tensors made inside"])
def test_methods_give_the_same_numbers_in_inference_mode(name, where):
    model, x = _case()
    want = _methods(model)[name](x)
    assert want.abs().sum() > 0
    if where == "called inside":
        with torch.inference_mode():
            got = _methods(model)[name](x)
    else:
        with torch.inference_mode():
            inside = x.clone()
        got = _methods(model)[name](inside)
        assert inside.is_inference()  # the user's tensor is left as it was
    assert not got.is_inference()
    torch.testing.assert_close(got, want)
