"""LIME's exp kernel (xattr/_src/similarity_kernels.py, NOTE: [Similarity weights' precision]).

The closed-form weights `lime` computes for `xattr.exp_kernel_similarity` equal the formulas of
docs/methods/lime.md evaluated here per sample by explicit loops (each copy built element by
element, sums by `math.fsum`), on features of mixed scales (1e4 beside 1) and a baseline far
from the input, where a total minus the kept part cancels: to 1e-12 in float64, 1e-6 in float32.
Float16 models get finite LIME attributions close to the same model's in float32, with the
default lasso and with least squares (0/0 and overflow made them NaN, or crashed); the
public kernel is finite on float16 copies.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import xattr

D = torch.float64
MASK = [0, 0, 1, 2, 3, 3, 4, 5]  # 8 elements, 6 features (two of two elements)
SCALE = [1e4, 2e4, 3e4, 1.0, 0.5, 2.0, 0.1, 1.0]  # tabular: incomes beside ages and ratios


def mixed_scale_inputs(dtype):
    """Inputs (3, 8) and a baseline at the features' scales (a data set's mean); the inputs are
    near 0 on the large features, so a copy keeping them has a norm far below the baseline's,
    and one removing only small features lies at a distance far below |x - b|."""
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor(SCALE, dtype=D)
    x = (torch.rand(3, 8, generator=g, dtype=D) + 0.5) * scale
    x[:, :3] = 4 * torch.rand(3, 3, generator=g, dtype=D) - 2
    base = (scale * torch.tensor([1.0, 0.9, 1.1, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=D)).expand(3, 8)
    return x.to(dtype), base.to(dtype)


def explicit_weights(x, base, z, distance, width, aggregate=False):
    """docs/methods/lime.md, one copy at a time: x(z) keeps x_i where z_f = 1 for i's feature f,
    else b_i; cosine d = 1 - x.x(z) / (max(|x|, 1e-8) max(|x(z)|, 1e-8)), euclidean
    d^2 = sum_f (1 - z_f) sum_{i in f} (x_i - b_i)^2; weight exp(-d^2 / (2 width^2))."""
    xs, bs = x.tolist(), base.tolist()
    if aggregate:  # the whole batch is one example
        xs, bs = [sum(xs, [])], [sum(bs, [])]
    mask = MASK * (len(xs[0]) // len(MASK))
    out = []
    for i, (xi, bi) in enumerate(zip(xs, bs)):
        row = []
        for zn in z[i].tolist():
            p = [xv if zn[mask[j]] == 1 else bv for j, (xv, bv) in enumerate(zip(xi, bi))]
            if distance == "cosine":
                dot = math.fsum(a * c for a, c in zip(xi, p))
                nx = max(math.sqrt(math.fsum(a * a for a in xi)), 1e-8)
                npn = max(math.sqrt(math.fsum(c * c for c in p)), 1e-8)
                sq = (1 - dot / (nx * npn)) ** 2
            else:
                sq = math.fsum((1 - zn[f]) * math.fsum((xi[j] - bi[j]) ** 2 for j in range(len(xi)) if mask[j] == f)
                               for f in range(len(zn)))  # fmt: skip
            row.append(math.exp(-sq / (2 * width**2)))
        out.append(row)
    return torch.tensor(out, dtype=D)


def lime_weights(x, base, distance, width, aggregate=False):
    """The coalitions and weights `lime` hands its solver for the built-in kernel."""
    seen = {}

    def spy(X, y, w):
        seen["z"], seen["w"] = X, w
        return xattr.linear_regression()(X, y, w)

    lin = nn.Linear(8, 1).to(x.dtype).eval()
    f = (lambda v: lin(v).sum()) if aggregate else xattr.target(lin, 0)
    kernel = xattr.exp_kernel_similarity(distance, kernel_width=width)
    xattr.lime(f, n_samples=64, baselines=base, feature_mask=torch.tensor([MASK]), generator=1,
               similarity_func=kernel, interpretable_model=spy)(x)  # fmt: skip
    return seen["z"], seen["w"]


KERNELS = [("cosine", 0.7), ("euclidean", 2.0)]  # euclidean: exponents ~1 for the small features


@pytest.mark.parametrize("aggregate", [False, True], ids=["per_example", "aggregate"])
@pytest.mark.parametrize("distance,width", KERNELS)
def test_closed_form_weights_equal_explicit_loops_float64(distance, width, aggregate):
    x, base = mixed_scale_inputs(D)
    z, w = lime_weights(x, base, distance, width, aggregate)
    want = explicit_weights(x, base, z, distance, width, aggregate)
    assert want.max() - want.min() > 0.02  # weights that differ
    torch.testing.assert_close(w.to(D), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("distance,width", KERNELS)
def test_closed_form_weights_float32_mixed_scales(distance, width):
    """Float32 inputs, the reference in float64 from the same float32 values: the closed form
    loses only float32 rounding (|x - b|^2 - z.(...) and |b|^2 + z.(x^2 - b^2) lost every digit)."""
    x, base = mixed_scale_inputs(torch.float32)
    z, w = lime_weights(x, base, distance, width)
    want = explicit_weights(x.to(D), base.to(D), z, distance, width)
    assert (w.to(D) - want).abs().max() < 1e-6


def half_case(case):
    """A float16 model and inputs, and the same model and inputs (already float16 numbers) in
    float32: (a) 4 features in [0, 1) at a zero baseline (the empty coalition's copy has norm 0;
    eps^2 = 1e-16 is 0 in float16), (b) raw pixels 0..255, 8 features of 2 elements (|x|^2
    overflows float16)."""
    torch.manual_seed(0)
    if case == "zero_norm_copy":
        model, x, mask = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)), torch.rand(2, 4), None
    else:
        model, x = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)), torch.rand(2, 16) * 255
        mask = torch.arange(16).reshape(1, 16) // 2
    model = model.half().eval()
    x16 = x.half()
    return model, copy.deepcopy(model).float(), x16, x16.float(), mask


@pytest.mark.parametrize("solver", ["lasso", "linear_regression"])
@pytest.mark.parametrize("case", ["zero_norm_copy", "pixels"])
def test_float16_model_lime_is_finite_and_close_to_float32(case, solver):
    m16, m32, x16, x32, mask = half_case(case)
    kw = dict(n_samples=30, generator=0, feature_mask=mask)
    if solver == "linear_regression":
        kw["interpretable_model"] = xattr.linear_regression()
    got = xattr.lime(xattr.target(m16, 1), **kw)(x16)
    want = xattr.lime(xattr.target(m32, 1), **kw)(x32)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert want.abs().max() > 0.05
    torch.testing.assert_close(got.float(), want, atol=5e-3 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_public_kernel_on_float16_copies(distance):
    """The plain function (as `lime` calls a user's similarity_func) on float16 originals and
    copies: the zero copy's cosine weight is exp(-1/2), squares of pixels do not overflow."""
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 16, generator=g) * 255).half()
    z = (torch.rand(2, 5, 16, generator=g) < 0.5).half()
    z[:, 0] = 0  # the empty coalition: all zeros at the zero baseline
    copies = x[:, None] * z
    width = 1.0 if distance == "cosine" else 600.0
    kernel = xattr.exp_kernel_similarity(distance, kernel_width=width)
    got = kernel(x, copies, z)
    want = kernel(x.double(), copies.double(), z.double())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=0)
    if distance == "cosine":
        torch.testing.assert_close(got[:, 0].double(), torch.full((2,), math.exp(-0.5), dtype=D), atol=1e-6, rtol=0)
    else:
        assert 0.05 < want.min() and want.max() < 0.95
