"""A custom ``bound`` for FGSM and PGD: xattr.robust's keyword, and Captum's overridable
``bound`` attribute on xattr.compat.captum's FGSM and PGD (against Captum with the same override,
and against an explicit loop)."""

import pytest
import torch
from torch import nn

import xattr
from xattr.compat import captum as X


def quantised(x):
    """Valid 8-bit images: clamp to [0, 1] and round to 1/255 steps."""
    return torch.round(x.clamp(0.0, 1.0) * 255) / 255


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])


def test_fgsm_bound_equals_bounding_afterwards(model, data):
    x, y = data
    raw = xattr.robust.fgsm(model, x, epsilon=0.05, target=y)
    got = xattr.robust.fgsm(model, x, epsilon=0.05, target=y, bound=quantised)
    torch.testing.assert_close(got, quantised(raw), rtol=0, atol=0)
    assert not torch.equal(got, raw)


def test_pgd_bound_against_a_loop(model, data):
    x, y = data
    got = xattr.robust.pgd(model, x, radius=0.1, step_size=0.03, step_num=4, target=y, bound=quantised)
    point = x.clone()
    for _ in range(4):  # the loop: a sign step up the cross-entropy, project to the ball, bound
        point = point.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(point), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, point)
        point = quantised(x + (point.detach() + 0.03 * g.sign() - x).clamp(-0.1, 0.1))
    torch.testing.assert_close(got, point, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["FGSM", "PGD"])
def test_compat_override_same_as_captum(model, data, kind):
    captum_robust = pytest.importorskip("captum.robust")
    x, y = data
    ours, theirs = getattr(X, kind)(model), getattr(captum_robust, kind)(model)
    ours.bound = quantised
    theirs.bound = quantised
    assert ours.bound is quantised
    if kind == "FGSM":
        a, b = ours.perturb(x, 0.05, y), theirs.perturb(x, 0.05, y)
    else:
        a, b = ours.perturb(x, 0.1, 0.03, 4, y), theirs.perturb(x, 0.1, 0.03, 4, y)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(quantised(a), a)  # the override ran


def test_default_bound_still_clamps(model, data):
    x, y = data
    attack = X.FGSM(model, lower_bound=0.0, upper_bound=1.0)
    assert attack.bound(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 1.0]
    out = attack.perturb(x, 0.5, y)
    assert out.min() >= 0 and out.max() <= 1


def test_bound_errors(model, data):
    x, y = data
    with pytest.raises(ValueError, match="not both"):
        xattr.robust.fgsm(model, x, epsilon=0.1, target=y, lower_bound=0.0, bound=quantised)
    with pytest.raises(TypeError, match="function"):
        xattr.robust.pgd(model, x, radius=0.1, step_size=0.1, step_num=1, target=y, bound=1.0)
    with pytest.raises(TypeError, match="function"):
        X.PGD(model).bound = "clamp"
