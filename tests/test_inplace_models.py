"""A model that writes into its input in place (``x.mul_(0.5)``, an in-place normalisation) gives
the numbers of the same model written out of place, and the user's tensors stay as they were."""

import pytest
import torch
from torch import nn

import xattr
from xattr import metrics

torch.manual_seed(0)
LIN = nn.Linear(5, 2).double()
MASK = torch.tensor([0, 0, 1, 2, 2])


def in_place(x):
    x.mul_(0.5)  # not idempotent: a second write, or copies made from the written x, show up
    return LIN(x)


def out_of_place(x):
    return LIN(x * 0.5)


METHODS = {
    "feature_ablation": lambda g: xattr.feature_ablation(g, baselines=0.3),
    "occlusion": lambda g: xattr.occlusion(g, sliding_window_shapes=(2,), baselines=0.3),
    "shapley_values": lambda g: xattr.shapley_values(g, feature_mask=MASK, baselines=0.3),
    "shapley_value_sampling": lambda g: xattr.shapley_value_sampling(g, feature_mask=MASK, n_samples=4, generator=0, baselines=0.3),
    "kernel_shap": lambda g: xattr.kernel_shap(g, feature_mask=MASK, n_samples=50, generator=0, baselines=0.3),
    "lime": lambda g: xattr.lime(g, feature_mask=MASK, n_samples=50, generator=0, baselines=0.3),
    "feature_permutation": lambda g: xattr.feature_permutation(g, feature_mask=MASK, generator=0),
    "infidelity": lambda g: metrics.infidelity(g, PHI, metrics.gaussian_noise(0.1), n_perturb_samples=4, generator=0),
}
PHI = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(3, 5)
# Gradient methods raise torch's own error there ("a leaf Variable that requires grad is being
# used in an in-place operation"), as Captum does: the input they differentiate is a leaf.


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_model_writing_into_its_input(name):
    x = torch.randn(3, 5, dtype=torch.float64)
    before = x.clone()
    got = METHODS[name](xattr.target(in_place, 1))(x)
    assert torch.equal(x, before), f"{name} let the model overwrite the user's input"
    expected = METHODS[name](xattr.target(out_of_place, 1))(before.clone())
    torch.testing.assert_close(got, expected)
