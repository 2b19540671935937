"""xattr.compat.captum's infidelity / sensitivity_max against Captum 0.9 computed live
(skipped without captum), with deterministic perturbations so both see the same copies."""

import pytest
import torch
from torch import nn

from xattr.compat import captum as X

cm = pytest.importorskip("captum.metrics")
ca = pytest.importorskip("captum.attr")

D = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).to(D).eval()


def _noise(x, seed=3):
    return 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_with_pairs_matches_captum(normalize):
    model, x = _model(), torch.rand(3, 1, 4, 4, dtype=D)
    attr = ca.Saliency(model).attribute(x, target=2, abs=False)

    def pair(inp):
        n = _noise(inp)
        return n, inp - n

    theirs = cm.infidelity(model, pair, x, attr, target=2, n_perturb_samples=5, normalize=normalize)
    ours = X.infidelity(model, pair, x, attr, target=2, n_perturb_samples=5, normalize=normalize)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("multiply", [False, True])
def test_decorated_perturbations_with_baselines_match_captum(multiply):
    model, x = _model(), torch.rand(3, 1, 4, 4, dtype=D)
    base = torch.full_like(x, 0.25)
    attr = ca.InputXGradient(model).attribute(x, target=[0, 1, 3])

    def toward(inp, baselines):
        return inp + (baselines - inp) * (_noise(inp, 7) > 0)

    theirs = cm.infidelity(model, cm.infidelity_perturb_func_decorator(multiply)(toward), x, attr, baselines=base,
                           target=[0, 1, 3], n_perturb_samples=4)  # fmt: skip
    ours = X.infidelity(model, X.infidelity_perturb_func_decorator(multiply)(toward), x, attr, baselines=base,
                        target=[0, 1, 3], n_perturb_samples=4, max_examples_per_batch=5)  # fmt: skip
    torch.testing.assert_close(ours, theirs)


def test_sensitivity_max_with_per_example_targets_matches_captum():
    model, x = _model(), torch.rand(3, 1, 4, 4, dtype=D)
    target = torch.tensor([0, 2, 1])

    def perturb(inp, radius):
        return inp + radius * (2 * torch.rand(inp.shape, generator=torch.Generator().manual_seed(5), dtype=inp.dtype) - 1)

    theirs = cm.sensitivity_max(ca.Saliency(model).attribute, x, perturb_func=perturb, perturb_radius=1.5,
                                n_perturb_samples=6, target=target)  # fmt: skip
    ours = X.sensitivity_max(X.Saliency(model).attribute, x, perturb_func=perturb, perturb_radius=1.5,
                             n_perturb_samples=6, target=target)  # fmt: skip
    torch.testing.assert_close(ours, theirs)
    assert ours.shape == (3,) and (ours > 0).all()
