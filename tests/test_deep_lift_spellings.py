"""DeepLift's two spellings of Rescale (a float mask on the CPU, torch.where elsewhere) and its
max-pool rule on both halves, against formulas per position."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import xattr
from xattr.testing.strategies import random_tensor

from deep_lift_ref import cnn_case

# --------------------------------------------------------------------------- the two spellings of Rescale


SPELLED = {"relu": F.relu, "leaky_relu": F.leaky_relu, "elu": F.elu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": F.softplus,
           "gelu": F.gelu, "mish": F.mish, "selu": F.selu, "celu": F.celu, "softsign": F.softsign, "logsigmoid": F.logsigmoid}


@pytest.mark.parametrize("kind", sorted(SPELLED))
def test_rescale_multipliers_equal_in_both_spellings(kind):
    """The float-mask spelling (CPU) and the torch.where one (other devices) give equal values,
    at exact ties (x == x'), below eps, and elsewhere."""
    from xattr._src import ops
    from xattr._src.deeplift_rules import _rescaled

    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    x2[0] = x1[0]  # ties
    x2[1, :25] = x1[1, :25] + 1e-12  # below eps
    x = torch.cat([x1, x2])
    func = SPELLED[kind]
    op = ops.PARSERS[func](func, x)
    y = op.fn(x)
    masks = _rescaled(op, x, y, 1e-10, where=False)
    assert torch.equal(_rescaled(op, x, y, 1e-10, where=True), masks)
    assert torch.isfinite(masks).all()
    # without ties or differences below eps the CPU spelling takes the ratio alone (one reduction
    # decides), and the padded form (a shared reference row) appends zero rows to the same values
    apart = torch.cat([x1[2:], x2[2:]])
    op = ops.PARSERS[func](func, apart)
    y = op.fn(apart)
    ratio = _rescaled(op, apart, y, 1e-10, where=False)
    assert torch.equal(_rescaled(op, apart, y, 1e-10, where=True), ratio)
    torch.testing.assert_close(ratio, (y[:2] - y[2:]) / (apart[:2] - apart[2:]), rtol=0, atol=0)
    for where in (False, True):
        for z, w in ((x, masks), (apart, ratio)):
            padded = _rescaled(op, z, op.fn(z), 1e-10, where=where, rows=z.shape[0] + 3)
            assert torch.equal(padded[: w.shape[0]], w) and torch.equal(padded[w.shape[0] :], torch.zeros_like(padded[w.shape[0] :]))


def test_deep_lift_with_the_where_spelling_equals_the_default_also_under_vmap(monkeypatch):
    from xattr._src import deeplift_rules

    model, x, base = cnn_case()
    dl = xattr.deep_lift(xattr.target(model, 2))
    expected = dl(x, baselines=base)
    batched = torch.func.vmap(lambda x, b: dl(x[None], baselines=b[None])[0])(x, base)
    shared = [dl(x, baselines=base[:1]), xattr.deep_lift_shap(xattr.target(model, 2), baselines=base)(x)]  # one reference row per copy
    plain, calls = deeplift_rules._rescaled, []

    def where_spelling(*args, **kwargs):
        calls.append(1)
        return plain(*args, **kwargs, where=True)

    monkeypatch.setattr(deeplift_rules, "_rescaled", where_spelling)
    assert torch.equal(dl(x, baselines=base), expected)
    assert calls, "the where spelling must have run"
    assert torch.equal(torch.func.vmap(lambda x, b: dl(x[None], baselines=b[None])[0])(x, base), batched)
    assert torch.equal(dl(x, baselines=base[:1]), shared[0])
    assert torch.equal(xattr.deep_lift_shap(xattr.target(model, 2), baselines=base)(x), shared[1])


# --------------------------------------------------------------------------- the max-pool rule, both halves


def max_pool_rule_by_positions(z, g, kernel, stride, padding, eps, seeded_halves):
    """Captum's max-pool split written per input position: p receives ``g * (top - y')`` from each
    output whose argmax in x is p and ``g * (y - top)`` from each whose argmax in x' is p, and
    divides the sum by ``x_p - x'_p``; where that is below eps it takes the ordinary gradient of
    its own half instead."""
    y, idx = F.max_pool2d_with_indices(z, kernel, stride, padding)
    h = z.shape[0] // 2
    (y1, y2), (i1, i2), (x1, x2) = y.split(h), idx.split(h), z.split(h)
    top = torch.maximum(y1, y2)
    parts = {"x": (top - y2).flatten(2), "ref": (y1 - top).flatten(2)}
    dx = (x1 - x2).flatten(2)
    out = torch.zeros_like(z).flatten(2)
    for half, own in seeded_halves:
        gh = g[half * h : (half + 1) * h].flatten(2)
        for b, c in itertools.product(range(h), range(z.shape[1])):
            received = torch.zeros(dx.shape[2], dtype=z.dtype)
            ordinary = torch.zeros(dx.shape[2], dtype=z.dtype)
            for o in range(gh.shape[2]):
                a, r = int(i1.flatten(2)[b, c, o]), int(i2.flatten(2)[b, c, o])
                received[a] += gh[b, c, o] * parts["x"][b, c, o]
                received[r] += gh[b, c, o] * parts["ref"][b, c, o]
                ordinary[a if own == "x" else r] += gh[b, c, o]
            d = dx[b, c]
            out[half * h + b, c] = torch.where(d.abs() < eps, ordinary, received / torch.where(d.abs() < eps, 1.0, d))
    return out.reshape(z.shape)


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
@pytest.mark.parametrize("reference_grads", [False, True])
def test_max_pool_rule_equals_its_formula_per_position(kernel, stride, padding, reference_grads):
    """Overlapping windows, padding, exact ties (x == x' at a third of the positions) and both
    halves seeded (``paired_rows(..., reference_grads=True)``, as for a user's own rules)."""
    from xattr._src.deeplift_rules import Rescale, paired_rows

    h = 2
    x, ref = random_tensor((h, 2, 5, 6), seed=4), random_tensor((h, 2, 5, 6), seed=5)
    ties = random_tensor((h, 2, 5, 6), seed=6) > 0.4
    ref = torch.where(ties, x, ref)
    z = torch.cat([x, ref]).requires_grad_()
    g = random_tensor((2 * h, 2) + tuple(F.max_pool2d(x, kernel, stride, padding).shape[2:]), seed=7)
    if not reference_grads:
        g[h:] = 0
    pool = xattr.rules(lambda t: F.max_pool2d(t, kernel, stride, padding), {F.max_pool2d: Rescale()})
    with paired_rows(2 * h, reference_grads=reference_grads):
        (got,) = torch.autograd.grad(pool(z), z, g)
    halves = [(0, "x"), (1, "ref")] if reference_grads else [(0, "x")]
    want = max_pool_rule_by_positions(z.detach(), g, kernel, stride, padding, 1e-10, halves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
