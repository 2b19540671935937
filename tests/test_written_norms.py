"""Vector norms, ``F.normalize`` and ``F.cosine_similarity`` written out (NOTE: [Vector norms
written out] in xattr/_src/written_norms.py): the forward is torch's, and DeepLift with
`exact_deep_lift_rules` conserves through every spelling, where each kept its ordinary gradient
(and ``F.normalize`` hid even its division from the rules) before."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr

D = torch.float64
EXACT = xattr.rule.exact_deep_lift_rules()

SPELLINGS = {
    "vector_norm": lambda h: torch.linalg.vector_norm(h, dim=-1),
    "vector_norm_p1": lambda h: torch.linalg.vector_norm(h, 1, -1),
    "vector_norm_inf": lambda h: torch.linalg.vector_norm(h, math.inf, dim=(1,), keepdim=True).squeeze(1),
    "vector_norm_p3": lambda h: torch.linalg.vector_norm(h, 3.0, -1),
    "torch_norm": lambda h: torch.norm(h, dim=1),
    "tensor_norm": lambda h: h.norm(dim=-1),
    "tensor_norm_p1": lambda h: h.norm(1, 1),
    "linalg_norm": lambda h: torch.linalg.norm(h, dim=-1),
    "normalize": lambda h: F.normalize(h, dim=-1) @ torch.linspace(-1, 1, 6, dtype=h.dtype),
    "normalize_p1": lambda h: F.normalize(h, p=1.0) @ torch.linspace(-1, 1, 6, dtype=h.dtype),
    "cosine": lambda h: F.cosine_similarity(h, torch.linspace(-1, 1, 6, dtype=h.dtype).expand_as(h)),
    "cosine_two": lambda h: F.cosine_similarity(h[:, :3], h[:, 3:] ** 2, dim=1),
}


def _model(head):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6)).to(D)
    return lambda x: head(net(x))


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_deep_lift_conserves_through_every_spelling(name):
    f = _model(SPELLINGS[name])
    torch.manual_seed(1)
    x, b = torch.randn(4, 5, dtype=D), torch.randn(4, 5, dtype=D)
    gap = (f(x) - f(b)).abs().max()
    _, delta = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)(x)
    assert delta.abs().max() <= 1e-12 * max(gap, 1.0)


def test_the_defaults_keep_the_ordinary_gradient():
    """Without the opt-in mapping the norm keeps its gradient: off (as before)."""
    f = _model(SPELLINGS["vector_norm"])
    x, b = torch.randn(4, 5, dtype=D), torch.zeros(1, 5, dtype=D)
    _, delta = xattr.deep_lift(f, baselines=b, return_delta=True)(x)
    assert delta.abs().max() > 1e-3


@pytest.mark.parametrize("case", [
    dict(ord=2, dim=None, keepdim=False), dict(ord=2, dim=(0, 2), keepdim=True), dict(ord=1, dim=(1,), keepdim=False),
    dict(ord=math.inf, dim=(2,), keepdim=False), dict(ord=-math.inf, dim=(1,), keepdim=True),
    dict(ord=0.5, dim=(2,), keepdim=False), dict(ord=3, dim=None, keepdim=False)])
def test_written_norm_is_torchs(case):
    from xattr._src import written_norms

    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=D)
    torch.testing.assert_close(written_norms.vector_norm(x, dtype=None, **case),
                               torch.linalg.vector_norm(x, case["ord"], case["dim"], case["keepdim"]), rtol=1e-14, atol=0)


def test_written_normalize_and_cosine_are_torchs():
    from xattr._src import written_norms

    torch.manual_seed(0)
    x, y = torch.randn(3, 4, dtype=D), torch.randn(1, 4, dtype=D)
    x[1] = 0  # a zero vector: divided by eps
    torch.testing.assert_close(written_norms.normalize(x, p=2.0, dim=1, eps=1e-12), F.normalize(x), rtol=1e-14, atol=0)
    cosine = written_norms.cosine_similarity(x, y, dim=1, eps=1e-8)
    torch.testing.assert_close(cosine, F.cosine_similarity(x, y), rtol=1e-14, atol=1e-16)
    h = torch.randn(3, 4, dtype=torch.float16)
    half = written_norms.vector_norm(h, ord=2, dim=(1,), keepdim=False, dtype=None)
    torch.testing.assert_close(half, torch.linalg.vector_norm(h, dim=1))


def test_forward_unchanged_under_the_rules():
    f = _model(lambda h: F.normalize(h, dim=-1).sum(-1) + h.norm(dim=-1) + F.cosine_similarity(h, h.flip(-1)))
    x = torch.randn(4, 5, dtype=D)
    torch.testing.assert_close(xattr.rules(f, {**xattr.rule.deep_lift_rules(), **EXACT})(x), f(x), rtol=1e-14, atol=0)


def test_zero_vectors_at_an_example_and_its_reference_pass_zero():
    """A zero vector at both (rows of h forced to 0): sqrt's secant would be inf there, times a
    zero difference; the written-out norm passes 0, and the call still conserves."""
    def f(x):
        h = x * torch.tensor([1.0, 1.0, 0.0], dtype=D)  # the last column is 0 at x and at b
        return torch.linalg.vector_norm(h.unflatten(1, (3, 1)), dim=-1).sum(1) + F.normalize(h[:, 2:], dim=1).sum(1)

    x, b = torch.randn(3, 3, dtype=D), torch.zeros(1, 3, dtype=D)
    attr, delta = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)(x)
    assert torch.isfinite(attr).all()
    assert delta.abs().max() <= 1e-12
    assert (attr[:, 2] == 0).all()


@pytest.mark.parametrize("call", [lambda h: h.norm(p=0, dim=1), lambda h: h.unflatten(1, (2, 3)).norm(p="nuc", dim=(1, 2)),
                                  lambda h: torch.linalg.norm(h.unflatten(1, (2, 3)), dim=(1, 2)),
                                  lambda h: torch.linalg.vector_norm(h, -1.0, dim=1)])
@pytest.mark.filterwarnings("ignore::xattr._src.gradients.NoGradientPathWarning")  # the L0 norm has no gradient
def test_calls_not_written_out_keep_their_gradient(call):
    f = _model(call)
    x = torch.randn(4, 5, dtype=D)
    got = xattr.deep_lift(f, baselines=0.0, mapping=EXACT)(x)  # runs, ordinary gradient there
    assert got.shape == x.shape


def test_parsed_kinds():
    from xattr._src import ops

    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    assert ops.parse(torch.Tensor.norm, (x, 2, 1, False, torch.float32), {}).options["dtype"] == torch.float32
    assert ops.parse(torch.norm, (x, "fro", (0, 1)), {}).options == {"ord": 2, "dim": (0, 1), "keepdim": False, "dtype": None}
    assert ops.parse(torch.norm, (x, "nuc"), {}) is None
    assert ops.parse(torch.linalg.norm, (x,), {"ord": 2}) is None  # the spectral norm of a matrix
    assert ops.parse(F.normalize, (x,), {"out": x}) is None
    assert ops.parse(F.cosine_similarity, (x, x), {}).kind == "cosine_similarity"
