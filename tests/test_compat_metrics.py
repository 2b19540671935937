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


def test_perturbations_returning_one_tuples_match_captum():
    """Captum's own decorator returns ((I,), (x',)) and its default sensitivity perturbation (x',)
    for one input tensor; both libraries accept them (NOTE: [Captum's perturbation functions])."""
    model, x = _model(), torch.rand(3, 1, 4, 4, dtype=D)
    attr = ca.Saliency(model).attribute(x, target=2, abs=False)
    decorated = cm.infidelity_perturb_func_decorator(False)(lambda inp: inp - _noise(inp))
    theirs = cm.infidelity(model, decorated, x, attr, target=2, n_perturb_samples=4)
    ours = X.infidelity(model, decorated, x, attr, target=2, n_perturb_samples=4)
    torch.testing.assert_close(ours, theirs)

    def one_tuples(inp):
        n = _noise(inp)
        return (n,), (inp - n,)

    torch.testing.assert_close(X.infidelity(model, one_tuples, x, attr, target=2, n_perturb_samples=4), theirs)
    from captum.metrics._core.sensitivity import default_perturb_func

    results = []
    for lib, explain in ((cm, ca.Saliency(model).attribute), (X, X.Saliency(model).attribute)):
        torch.manual_seed(4)  # the global generator: both draw all copies in one call
        results.append(lib.sensitivity_max(explain, x, perturb_func=default_perturb_func, perturb_radius=0.5,
                                           n_perturb_samples=3, target=1))  # fmt: skip
    torch.testing.assert_close(results[1], results[0])
    assert (results[0] > 0).all()


def test_one_tuple_inputs_hand_perturb_func_a_tensor_as_captum():
    model, x = _model(), torch.rand(3, 1, 4, 4, dtype=D)
    attr = ca.Saliency(model).attribute(x, target=2, abs=False)
    got = []

    def pair(inp):
        got.append(type(inp))
        n = _noise(inp)
        return n, inp - n

    theirs = cm.infidelity(model, pair, (x,), (attr,), target=2, n_perturb_samples=4)
    for a in ((attr,), attr):
        torch.testing.assert_close(X.infidelity(model, pair, (x,), a, target=2, n_perturb_samples=4), theirs)
    assert got == [torch.Tensor] * 3

    def shake(inp, radius):
        got.append(type(inp))
        return inp + radius * torch.sin(5 * inp)

    theirs = cm.sensitivity_max(ca.Saliency(model).attribute, (x,), perturb_func=shake, perturb_radius=0.5,
                                n_perturb_samples=3, target=1)  # fmt: skip
    ours = X.sensitivity_max(X.Saliency(model).attribute, (x,), perturb_func=shake, perturb_radius=0.5,
                             n_perturb_samples=3, target=1)  # fmt: skip
    torch.testing.assert_close(ours, theirs)
    assert got[3:] == [torch.Tensor] * 2


@pytest.mark.parametrize("kind", ["number", "one row", "per example"])
def test_infidelity_baselines_reach_perturb_func_as_in_captum(kind):
    """A number stays a number, a (1, ...) baseline stays (1, ...), a per-example one is repeated
    for the copies (NOTE: [Captum's perturbation functions])."""
    model, x = _model(), torch.rand(3, 1, 4, 4, dtype=D)
    attr = ca.InputXGradient(model).attribute(x, target=1)
    base = {"number": 0.5, "one row": torch.full((1, 1, 4, 4), 0.25, dtype=D), "per example": torch.rand_like(x)}[kind]
    seen = []

    def toward(inp, baselines):
        b = torch.full_like(inp, baselines) if isinstance(baselines, float) else baselines
        seen.append(baselines if isinstance(baselines, float) else tuple(baselines.shape))
        mask = (_noise(inp, 7) > 0).to(inp.dtype)
        return mask, inp * (1 - mask) + b * mask

    theirs = cm.infidelity(model, toward, x, attr, baselines=base, target=1, n_perturb_samples=4)
    ours = X.infidelity(model, toward, x, attr, baselines=base, target=1, n_perturb_samples=4)
    torch.testing.assert_close(ours, theirs)
    first, second = seen  # Captum's call, then xattr's
    assert first == second == {"number": 0.5, "one row": (1, 1, 4, 4), "per example": (12, 1, 4, 4)}[kind]
