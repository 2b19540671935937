"""DeepLift (Rescale), DeepLift SHAP, layer and neuron DeepLift, guided Grad-CAM.

A slow reference follows the paper layer by layer (Shrikumar et al. 2017): explicit multipliers
``(y - y') / (x - x')`` per nonlinearity (the ordinary derivative, written out, where
``|x - x'| < eps``), the chain rule of multipliers through linear and convolution layers by hand,
and Captum's max-pool split by a Python loop over pooling windows. ``xattr.deep_lift`` must match
it on random small networks (hypothesis), and sum to ``f(x) - f(b)`` on them. Then: the options
(multipliers, attribution_func, return_delta, baselines per example or as a number or tree),
DeepLift SHAP as a mean of DeepLift, chunking, layer and neuron DeepLift, softmax's rule against
its formula, the eps fallback, vmap, and guided Grad-CAM as its product.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import assert_trees_close, check_batch_invariance, check_completeness
from xattr.testing.strategies import random_tensor

from deep_lift_ref import B, SoftmaxHead, _Halves, cases, cnn_case, mlp_case, n_out, one_hot, reference

# --------------------------------------------------------------------------- summation-to-delta and the reference


@given(cases())
def test_summation_to_delta(case):
    model, x, base, t = case
    f = xattr.target(model, t)
    check_completeness(f, xattr.deep_lift(f, baselines=base), x, baselines=base, atol=1e-10, rtol=1e-8)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert delta.shape == (x.shape[0],)
    assert delta.abs().max() <= 1e-10 + 1e-8 * attr.abs().sum()


@given(cases(), st.sampled_from([1e-10, 0.5]))
def test_matches_the_papers_rules_layer_by_layer(case, eps):
    model, x, base, t = case
    expected, multipliers, _ = reference(model, x, base, one_hot(n_out(model, x), t), eps)
    f = xattr.target(model, t)
    assert_trees_close(xattr.deep_lift(f, baselines=base, eps=eps)(x), expected, atol=1e-10, rtol=1e-8, what="deep_lift vs reference")
    got_m = xattr.deep_lift(f, baselines=base, eps=eps, multiply_by_inputs=False)(x)
    assert_trees_close(got_m, multipliers, atol=1e-10, rtol=1e-8, what="multipliers vs reference")



def test_the_reference_is_not_the_gradient():
    # the reference and xattr could agree by both being the plain gradient times (x - b)
    model, x, base = cnn_case()
    expected = reference(model, x, base, one_hot(3, 1))[0]
    ixg = xattr.grad(xattr.target(model, 1))(x) * (x - base)
    assert (expected - ixg).abs().max() > 1e-3


# --------------------------------------------------------------------------- options


def test_multiply_by_inputs_false_gives_the_multipliers():
    model, x, base = cnn_case()
    f = xattr.target(model, 2)
    m = xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)
    assert_trees_close(m * (x - base), xattr.deep_lift(f, baselines=base)(x), what="multipliers x (x - b)")
    assert_trees_close(m, reference(model, x, base, one_hot(3, 2))[1], what="multipliers vs reference")


def test_attribution_func_sees_multipliers_inputs_and_baselines():
    model, x, base = cnn_case()
    f = xattr.target(model, 0)
    m = xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)
    seen = []

    def custom(mult, inputs, baselines):
        seen.append((mult.shape, inputs.shape, baselines.shape))
        return mult * (inputs - baselines) ** 2

    got = xattr.deep_lift(f, baselines=base, attribution_func=custom)(x)
    assert seen == [(x.shape, x.shape, x.shape)]  # trees like args[argnums]: here tensors
    assert_trees_close(got, m * (x - base) ** 2, what="custom attribution")
    # a number as baseline reaches attribution_func broadcast to the inputs
    got = xattr.deep_lift(f, baselines=0.25, attribution_func=lambda m, x, b: m * 0 + b)(x)
    assert torch.equal(got, torch.full_like(x, 0.25))


def test_attribution_func_with_tuple_argnums_sees_tuples():
    w1, w2 = random_tensor((3, 5), seed=5), random_tensor((3, 2), seed=6)
    f = xattr.target(lambda a, c: torch.tanh(a @ w1.T + c @ w2.T), 1)
    a, c = random_tensor((B, 5), seed=7), random_tensor((B, 2), seed=8)
    m = xattr.deep_lift(f, argnums=(0, 1), multiply_by_inputs=False)(a, c)
    got = xattr.deep_lift(f, argnums=(0, 1), attribution_func=lambda m, x, b: tuple(mi * 3 for mi in m))(a, c)
    assert isinstance(got, tuple) and len(got) == 2
    assert_trees_close(got, (3 * m[0], 3 * m[1]), what="tuple attribution_func")


def test_return_delta_shapes_and_values():
    model, x, base = mlp_case()
    f = xattr.target(model, 1)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert delta.shape == (B,)
    with torch.no_grad():
        gap = attr.sum(1) - (model(x)[:, 1] - model(base)[:, 1])
    assert_trees_close(delta, gap, atol=1e-12, what="delta")
    many = xattr.target(model, xattr.outputs([2, 0]))
    attr_k, delta_k = xattr.deep_lift(many, baselines=base, return_delta=True)(x)
    assert attr_k.shape == (B, 2, 5) and delta_k.shape == (B, 2)
    assert delta_k.abs().max() < 1e-12
    assert_trees_close(attr_k[:, 1], xattr.deep_lift(xattr.target(model, 0), baselines=base)(x), what="K axis")


def test_per_example_and_scalar_baselines():
    model, x, base = cnn_case()
    f = xattr.target(model, 1)
    dl = xattr.deep_lift(f)
    batched = dl(x, baselines=base)
    for i in range(B):
        assert_trees_close(dl(x[i : i + 1], baselines=base[i : i + 1]), batched[i : i + 1], what=f"example {i}")
    assert_trees_close(dl(x, baselines=0.3), dl(x, baselines=torch.full_like(x, 0.3)), what="scalar baseline")
    assert_trees_close(xattr.deep_lift(f, baselines=0.3)(x), dl(x, baselines=0.3), what="construction vs call keyword")
    one = base[:1]
    assert_trees_close(dl(x, baselines=one), dl(x, baselines=one.expand_as(x)), what="one baseline broadcast")
    assert not torch.allclose(dl(x, baselines=0.3), dl(x))


def test_dict_inputs_with_dict_baselines():
    w = random_tensor((3, 5), seed=9)
    flat = xattr.target(lambda z: F.elu(z @ w.T), 2)
    f = xattr.target(lambda d: F.elu(torch.cat([d["a"], d["b"]], 1) @ w.T), 2)
    x = {"a": random_tensor((B, 3), seed=10), "b": random_tensor((B, 2), seed=11)}
    base = {"a": random_tensor((B, 3), seed=12), "b": random_tensor((B, 2), seed=13)}
    z, zb = torch.cat([x["a"], x["b"]], 1), torch.cat([base["a"], base["b"]], 1)
    got = xattr.deep_lift(f, baselines=base)(x)
    want = xattr.deep_lift(flat, baselines=zb)(z)
    assert_trees_close(got, {"a": want[:, :3], "b": want[:, 3:]}, what="dict vs concatenated")
    dist = {"a": random_tensor((4, 3), seed=14), "b": random_tensor((4, 2), seed=15)}
    got = xattr.deep_lift_shap(f, baselines=dist)(x)
    want = xattr.deep_lift_shap(flat, baselines=torch.cat([dist["a"], dist["b"]], 1))(z)
    assert_trees_close(got, {"a": want[:, :3], "b": want[:, 3:]}, what="dict distribution vs concatenated")


# --------------------------------------------------------------------------- DeepLift SHAP


def test_deep_lift_shap_is_the_mean_of_deep_lift_over_baseline_rows():
    model, x, _ = cnn_case()
    dist = random_tensor((4, 2, 4, 4), seed=16)
    f = xattr.target(model, 0)
    attr, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    singles = [xattr.deep_lift(f, baselines=dist[k : k + 1], return_delta=True)(x) for k in range(4)]
    assert_trees_close(attr, sum(a for a, _ in singles) / 4, what="mean of deep_lift")
    assert delta.shape == (B, 4)
    assert_trees_close(delta, torch.stack([d for _, d in singles], 1), atol=1e-12, what="delta per (example, baseline)")
    many = xattr.target(model, xattr.outputs([0, 2]))
    attr_k, delta_k = xattr.deep_lift_shap(many, baselines=dist, return_delta=True)(x)
    assert attr_k.shape == (B, 2) + x.shape[1:] and delta_k.shape == (B, 4, 2)
    assert_trees_close(attr_k[:, 0], attr, what="K axis")
    # summation: the mean attribution sums to f(x) - mean_k f(b_k)
    with torch.no_grad():
        expected = model(x)[:, 0] - model(dist)[:, 0].mean()
    assert_trees_close(attr.flatten(1).sum(1), expected, atol=1e-10, what="DeepLift SHAP summation")


def _row_spy(model, rows: list):
    def spied(x):
        rows.append(x.shape[0])
        return model(x)

    return spied



@pytest.mark.parametrize("chunk_size", [1, 2 * B, 2 * B + 1, 4 * B, 6 * B, 100])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "paired"])
def test_deep_lift_shap_chunks_hold_whole_copies(chunk_size, shared):
    """Each call holds whole copies: B inputs and their one shared reference row (NOTE: [Shared
    reference]), or B inputs and B references where a rule cannot share them."""
    model, x, _ = mlp_case()
    dist = random_tensor((5, 5), seed=17)
    mapping = None if shared else {F.gelu: _Halves()}
    whole = xattr.deep_lift_shap(xattr.target(model, 1), baselines=dist, mapping=mapping)(x)
    rows = []
    got = xattr.deep_lift_shap(xattr.target(_row_spy(model, rows), 1), baselines=dist, chunk_size=chunk_size, mapping=mapping)(x)
    assert_trees_close(got, whole, what=f"chunk_size={chunk_size}")
    per_copy = B + 1 if shared else 2 * B
    copies_per_call = max(1, chunk_size // per_copy)
    assert sum(rows) == 5 * per_copy
    assert all(r % per_copy == 0 and r <= per_copy * copies_per_call for r in rows), rows
    assert len(rows) == math.ceil(5 / copies_per_call)
    if shared:  # the same values as the paired rows
        paired = xattr.deep_lift_shap(xattr.target(model, 1), baselines=dist, mapping={F.gelu: _Halves()})(x)
        assert_trees_close(got, paired, atol=1e-12, rtol=1e-10, what="shared vs paired")


# --------------------------------------------------------------------------- layer and neuron DeepLift


def test_layer_deep_lift_sums_to_delta_and_equals_the_references_layer_multipliers():
    model, x, base = cnn_case()
    layer = 2  # the max-pool's output: every path from input to output crosses it
    split = xattr.at_layer(xattr.target(model, 2), model[layer])
    attr, delta = xattr.layer_deep_lift(split, baselines=base, return_delta=True)(x)
    with torch.no_grad():
        h, h_ref = model[: layer + 1](x), model[: layer + 1](base)
        gap = model(x)[:, 2] - model(base)[:, 2]
    assert attr.shape == h.shape and delta.shape == (B,)
    assert_trees_close(attr.flatten(1).sum(1), gap, atol=1e-10, what="layer summation-to-delta")
    assert delta.abs().max() < 1e-10
    m_ref = reference(model, x, base, one_hot(3, 2))[2][layer]
    assert_trees_close(attr, (h - h_ref) * m_ref, what="(h - h_ref) x reference multipliers")
    m = xattr.layer_deep_lift(split, baselines=base, multiply_by_inputs=False)(x)
    assert_trees_close(m, m_ref, what="layer multipliers")


def test_layer_deep_lift_shap_is_the_mean_of_layer_deep_lift():
    model, x, _ = cnn_case()
    split = xattr.at_layer(xattr.target(model, 0), model[2])
    dist = random_tensor((3, 2, 4, 4), seed=18)
    attr, delta = xattr.layer_deep_lift_shap(split, baselines=dist, return_delta=True)(x)
    singles = [xattr.layer_deep_lift(split, baselines=dist[k : k + 1], return_delta=True)(x) for k in range(3)]
    assert_trees_close(attr, sum(a for a, _ in singles) / 3, what="mean of layer_deep_lift")
    assert delta.shape == (B, 3)
    assert_trees_close(delta, torch.stack([d for _, d in singles], 1), atol=1e-12, what="layer delta")


@pytest.mark.parametrize("layer, index", [(2, (1, 1, 0)), (4, (2, 0, 1)), (7, 9)])
def test_neuron_deep_lift_by_composition(layer, index):
    model, x, base = cnn_case()
    neuron = xattr.neuron(xattr.at_layer(model, model[layer]), index)
    dl = xattr.deep_lift(neuron, baselines=base)
    check_completeness(neuron, dl, x, baselines=base, atol=1e-10, rtol=1e-8)
    with torch.no_grad():
        shape = model[: layer + 1](x).shape[1:]
    seed = torch.zeros(shape, dtype=torch.float64)
    seed[index] = 1.0
    assert_trees_close(dl(x), reference(model[: layer + 1], x, base, seed)[0], what="neuron deep_lift vs reference")


# --------------------------------------------------------------------------- softmax, eps, vmap


@pytest.mark.parametrize("shape", [(5,), (2, 5)], ids=["B,D", "B,T,D"])
def test_softmax_rule_against_its_formula(shape):
    torch.manual_seed(0)
    t = 1 if len(shape) == 1 else shape[0]
    model = SoftmaxHead(5, 4, t)
    x, base = random_tensor((B,) + shape, seed=19), random_tensor((B,) + shape, seed=20)
    W, v = model.lin.weight, model.v.weight.reshape(t, 4) if t > 1 else model.v.weight.reshape(4)
    with torch.no_grad():
        z, z_ref = model.lin(x), model.lin(base)
    s, s_ref = torch.softmax(z, -1), torch.softmax(z_ref, -1)
    u = v * (s - s_ref) / (z - z_ref)  # Rescale multipliers of the softmax times the gradient above it
    m_z = u - u.mean(-1, keepdim=True)  # minus their mean over the softmax dim, per example and row
    expected = (x - base) * (m_z @ W)
    got = xattr.deep_lift(xattr.target(model, 0), baselines=base)(x)
    assert_trees_close(got, expected, what="softmax Rescale vs formula")
    if t > 1:  # a mean over the whole example (or batch) would be another number
        wrong = (x - base) * ((u - u.mean((-2, -1), keepdim=True)) @ W)
        assert not torch.allclose(got, wrong)


def test_eps_falls_back_to_the_ordinary_derivative():
    model, x, base = cnn_case()
    f = xattr.target(model, 1)
    grad = xattr.grad(f)(x)
    # baselines equal to the inputs: every |x - x'| is 0 below eps at every layer
    same = base.clone()
    same[0] = x[0]
    m = xattr.deep_lift(f, baselines=same, multiply_by_inputs=False)(x)
    assert_trees_close(m[0], grad[0], what="multipliers where x == x' vs gradient")
    assert_trees_close(m[1:], reference(model, x, same, one_hot(3, 1))[1][1:], what="the other examples")
    assert not torch.allclose(m[1:], grad[1:])
    # an eps above every difference: the multipliers are the gradient everywhere
    assert_trees_close(xattr.deep_lift(f, baselines=base, eps=1e9, multiply_by_inputs=False)(x), grad, what="eps=1e9")
    mlp, xm, bm = mlp_case()
    gm = xattr.grad(xattr.target(mlp, 0))(xm)
    assert_trees_close(xattr.deep_lift(xattr.target(mlp, 0), baselines=bm, eps=1e9, multiply_by_inputs=False)(xm), gm, what="MLP eps=1e9")


def test_float16_ties_take_the_derivative_not_nan():
    # the default eps (1e-10) is 0 in float16: a tie x == x' must still take the derivative
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8, 3), nn.Softmax(-1)).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    base = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    base[0] = x[0]  # every difference of example 0 is an exact 0
    f = xattr.target(model, 1)
    want = xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)
    got = xattr.deep_lift(xattr.target(model.half(), 1), baselines=base.half(), multiply_by_inputs=False)(x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("eps", [-1.0, float("nan")])
def test_a_negative_eps_is_refused(eps):
    model, x, base = mlp_case()
    with pytest.raises(ValueError, match="eps must be >= 0"):
        xattr.deep_lift(xattr.target(model, 0), baselines=base, eps=eps)(x)


@pytest.mark.parametrize("case", [cnn_case, mlp_case], ids=["cnn", "mlp"])
def test_vmap_over_examples_equals_the_batch(case):
    model, x, base = case()
    dl = xattr.deep_lift(xattr.target(model, 2))
    per_example = torch.func.vmap(lambda x, b: dl(x[None], baselines=b[None])[0])(x, base)
    assert_trees_close(per_example, dl(x, baselines=base), what="vmap(deep_lift) vs batch")
    check_batch_invariance(lambda x, b: dl(x, baselines=b), x, base)
    eps_big = xattr.deep_lift(xattr.target(model, 2), eps=1e9, multiply_by_inputs=False)  # derivative path
    got = torch.func.vmap(lambda x, b: eps_big(x[None], baselines=b[None])[0])(x, base)
    assert_trees_close(got, xattr.grad(xattr.target(model, 2))(x), what="vmapped derivative fallback")


# --------------------------------------------------------------------------- guided Grad-CAM


def test_guided_grad_cam_is_guided_backprop_times_upsampled_grad_cam():
    model, x, _ = cnn_case()
    layer = model[3]  # the second convolution, after the max-pool: 2x2, upsampled to 4x4
    for t in (0, 2):
        split = xattr.at_layer(xattr.target(model, t), layer)
        cam = xattr.grad_cam(split)(x)
        assert cam.shape == (B, 1, 2, 2)
        gb = xattr.guided_backprop(xattr.target(model, t))(x)
        for mode in ("nearest", "bilinear"):
            expected = gb * F.interpolate(cam, size=(4, 4), mode=mode)
            assert_trees_close(xattr.guided_grad_cam(split, mode=mode)(x), expected, what=f"guided Grad-CAM {mode}")
    many = xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, xattr.outputs([2, 0])), layer))(x)
    assert many.shape == (B, 2) + x.shape[1:]
    for j, t in enumerate((2, 0)):
        assert_trees_close(many[:, j], xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, t), layer))(x), what=f"K axis {j}")
    check_batch_invariance(xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, 1), layer)), x)


def test_rescale_outside_paired_rows_is_the_gradient():
    """Without deep_lift's paired_rows the Rescale rule never pairs example i with i + B/2."""
    model, x, r = cnn_case()
    f = xattr.target(model, 0)
    ruled = xattr.rules(f, xattr.rule.deep_lift_rules())
    assert_trees_close(xattr.grad(ruled)(x), xattr.grad(f)(x), atol=1e-6)


def test_layer_deep_lift_at_two_layers_gives_one_delta_per_layer():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    x, b = torch.randn(3, 5), torch.randn(3, 5)
    split = xattr.at_layer(xattr.target(model, 1), [model[1], model[3]])
    attr, delta = xattr.layer_deep_lift(split, baselines=b, return_delta=True)(x)
    assert isinstance(delta, tuple) and len(delta) == 2
    for d in delta:  # every path crosses both layers, so each layer alone sums to the delta
        assert d.shape == (3,) and d.abs().max() < 1e-5


def test_guided_grad_cam_refuses_layers_and_inputs_without_spatial_dims():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with pytest.raises(ValueError, match="spatial dims"):
        xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, 0), model[1]))(torch.randn(2, 4))
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).eval()
    two = lambda img, vec: cnn(img) + vec  # noqa: E731
    split = xattr.at_layer(xattr.target(two, 0), cnn[1])
    with pytest.raises(ValueError, match="layout of the Grad-CAM map"):
        xattr.guided_grad_cam(split, argnums=(0, 1))(torch.randn(2, 1, 6, 6), torch.randn(2, 2))
