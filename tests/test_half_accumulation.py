"""Sums over chunks in half precision, VarGrad's variance, and DeepLift SHAP's dtype.

NOTE: [Sums over chunks] in xattr/_src/paths.py: a float16/bfloat16 running total stops growing
once it is 2^11 / 2^8 times a chunk's part, so with a small ``chunk_size`` a long path or many
samples rounded away. Each method here runs on a linear model whose answer does not depend on
the random draws, in float16 and bfloat16 with ``chunk_size=None`` and with one copy (or path
step) per chunk; both must agree at the dtype's tolerance with each other and with the same
method in float64. NOTE: [Variance over chunks] in xattr/_src/noise_tunnel.py: VarGrad is a
population variance, non-negative and equal to a two-pass float64 reference over the very
attributions it reduced.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import xattr

B = 2
HALF = [torch.float16, torch.bfloat16]
# many chunks: bfloat16 totals stall past 256 parts, float16 ones drift well before 2048
MANY = {torch.float16: 1000, torch.bfloat16: 300}
# tolerance against float64: a few roundings of the dtype (the backward rounds each product)
TOL = {torch.float16: dict(rtol=4e-3, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=2e-2)}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _models(dtype):
    """A two-layer linear model in ``dtype`` and its exact float64 copy (the same rounded weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 3.0, 0.3, -7.0], [0.5, -1.0, 2.0, 0.25], [-2.1, 0.1, 1.1, 3.7]]))
        model[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model[1].weight.copy_(torch.tensor([[1.3, -0.7, 0.45]]))
        model[1].bias.zero_()
    low = model.to(dtype)
    high = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)).double().eval()
    high.load_state_dict({k: v.double() for k, v in low.state_dict().items()})
    return low, high


def _x(dtype):
    return torch.tensor([[1.0, 0.5, -1.0, 2.0], [0.25, 1.0, 2.0, -0.5]], dtype=dtype)


def _background(dtype):
    return torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.25, 1.0], [-1.0, 0.5, 0.5, 0.0]], dtype=dtype)


def _ig(model, dtype, n, cs):
    f = xattr.target(model, 0)
    return xattr.integrated_gradients(f, n_steps=n, method="riemann_right", chunk_size=cs)(_x(dtype))


def _layer(name):
    def run(model, dtype, n, cs):
        split = xattr.at_layer(xattr.target(model, 0), model[0])
        make = {
            "internal_influence": lambda: xattr.internal_influence(split, n_steps=n, method="riemann_right", chunk_size=cs),
            "conductance": lambda: xattr.conductance(split, n_steps=n, method="riemann_trapezoid", chunk_size=cs),
            "layer_integrated_gradients": lambda: xattr.layer_integrated_gradients(split, n_steps=n, method="riemann_right",
                                                                                  chunk_size=cs),  # fmt: skip
            "layer_gradient_shap": lambda: xattr.layer_gradient_shap(split, baselines=_background(dtype), n_samples=n,
                                                                    generator=0, chunk_size=cs),  # fmt: skip
        }[name]
        return make()(_x(dtype))

    return run


def _neuron_conductance(model, dtype, n, cs):
    split = xattr.at_layer(xattr.target(model, 0), model[0])
    return xattr.neuron_conductance(split, 1, n_steps=n, method="riemann_trapezoid", chunk_size=cs)(_x(dtype))


def _gradient_shap(model, dtype, n, cs):
    f = xattr.target(model, 0)
    return xattr.gradient_shap(f, baselines=_background(dtype), n_samples=n, generator=0, chunk_size=cs)(_x(dtype))


def _smooth(reduce):
    def run(model, dtype, n, cs):
        grad = xattr.saliency(xattr.target(model, 0), abs=False)  # constant: the noise does not matter
        return xattr.smooth(grad, stdevs=0.1, n_samples=n, reduce=reduce, generator=0, chunk_size=cs)(_x(dtype))

    return run


def _expectation(model, dtype, n, cs):
    ig = xattr.integrated_gradients(xattr.target(model, 0), n_steps=2)  # exact on a linear model
    return xattr.expectation(ig, baselines=_background(dtype), n_samples=n, generator=0, chunk_size=cs)(_x(dtype))


METHODS = {
    "integrated_gradients": _ig,
    "internal_influence": _layer("internal_influence"),
    "conductance": _layer("conductance"),
    "layer_integrated_gradients": _layer("layer_integrated_gradients"),
    "layer_gradient_shap": _layer("layer_gradient_shap"),
    "neuron_conductance": _neuron_conductance,
    "gradient_shap": _gradient_shap,
    "smoothgrad": _smooth("mean"),
    "smoothgrad_sq": _smooth("sq_mean"),  # float16: 1000 squares of 7 overflowed even unchunked
    "expectation": _expectation,
}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_half_precision_chunks_do_not_change_the_numbers(name, dtype):
    low, high = _models(dtype)
    run, n = METHODS[name], MANY[dtype]
    whole = run(low, dtype, n, None)
    chunked = run(low, dtype, n, B)  # one copy or path step of the batch per call
    exact = run(high, torch.float64, n, None)
    assert whole.dtype == chunked.dtype == dtype
    torch.testing.assert_close(chunked, whole)  # the dtype's own tolerance
    torch.testing.assert_close(chunked.double(), exact, **TOL[dtype])
    torch.testing.assert_close(whole.double(), exact, **TOL[dtype])


def _recorded_vargrad(attr_fn, x, **kw):
    """VarGrad of attr_fn and the per-sample attributions it reduced, (S, B, ...)."""
    seen = []

    def spy(z):
        a = attr_fn(z)
        seen.append(a.detach().clone())
        return a

    out = xattr.vargrad(spy, generator=0, **kw)(x)
    samples = torch.cat(seen).reshape((kw["n_samples"],) + tuple(x.shape)).double()
    return out, ((samples - samples.mean(0)) ** 2).mean(0)  # two passes in float64 (torch.var's one is off by 1e-7 here)


@pytest.mark.parametrize("chunk_size", [None, 3 * B, B])
@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e3), (torch.float64, 1e8)], ids=["float32", "float64"])
def test_vargrad_is_a_non_negative_two_pass_variance_when_the_mean_dominates(dtype, scale, chunk_size):
    torch.manual_seed(0)
    model = nn.Linear(6, 3).to(dtype).eval()
    x = (1 + torch.rand(3, 6, dtype=dtype)) * scale
    out, ref = _recorded_vargrad(xattr.input_x_gradient(xattr.target(model, 0)), x, stdevs=0.1, n_samples=16,
                                 chunk_size=None if chunk_size is None else chunk_size * 3 // B)  # fmt: skip
    assert out.dtype == dtype
    assert (out >= 0).all()
    rtol = {torch.float32: 1e-4, torch.float64: 1e-9}[dtype]  # E[a^2] - E[a]^2 was off by 70x and 1000x
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=0.0)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_vargrad_chunked_equals_a_float64_two_pass_reference(dtype):
    low, _ = _models(dtype)
    ixg = xattr.input_x_gradient(xattr.target(low, 0))  # w * (x + noise): a variance of w^2 stdev^2
    n = MANY[dtype]
    whole, ref = _recorded_vargrad(ixg, _x(dtype), stdevs=0.5, n_samples=n)
    chunked, ref_chunked = _recorded_vargrad(ixg, _x(dtype), stdevs=0.5, n_samples=n, chunk_size=B)
    torch.testing.assert_close(ref_chunked, ref)  # the same draws
    assert (chunked >= 0).all() and chunked.dtype == dtype
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked.double(), ref, **TOL[dtype])


@pytest.mark.parametrize("low, wide", [(torch.float16, torch.float32), (torch.float32, torch.float64)], ids=str)
def test_deep_lift_shap_keeps_the_inputs_dtype_whatever_the_backgrounds(low, wide):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval().to(low)
    f = xattr.target(model, 1)
    x = torch.rand(2, 4, dtype=low)
    background = torch.rand(3, 4, dtype=wide) * 0.1
    got = xattr.deep_lift_shap(f, baselines=background)(x)
    same = xattr.deep_lift_shap(f, baselines=background.to(low))(x)
    assert got.dtype == low == xattr.deep_lift(f, baselines=background[:1])(x).dtype
    torch.testing.assert_close(got, same, rtol=0, atol=0)
    layer = xattr.layer_deep_lift_shap(xattr.at_layer(f, model[1]), baselines=background)(x)
    assert layer.dtype == low


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_occlusion_averages_equal_drops_to_that_drop_in_half_precision(dtype):
    """Every window of 64 of the 127 features drops the output by the same d, so every feature's
    average over the (up to 64) windows covering it is d; summed in the dtype, 64 copies of d
    lost their low bits (NOTE: [Sums over chunks] in xattr/_src/paths.py)."""
    model = nn.Linear(127, 1, bias=False).to(dtype).eval()
    with torch.no_grad():
        model.weight.fill_(83 / 4096)  # exact in both dtypes
    f = xattr.target(model, 0)
    x = torch.ones(2, 127, dtype=dtype)
    attr = xattr.occlusion(f, sliding_window_shapes=(64,), strides=1)(x)
    occluded = x.clone()
    occluded[:, :64] = 0
    drop = f(x) - f(occluded)
    assert attr.dtype == dtype
    torch.testing.assert_close(attr, drop[:, None].expand_as(attr), rtol=0, atol=0)
