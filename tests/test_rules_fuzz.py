"""A fuzzer for the rule-based methods: random small architectures against slow references.

Nets are random DAGs (`rule_fuzz_nets.architectures`) mixing linear and conv layers, every
ReLU spelling (module, a reused module, in place, functional, method), the smooth activations,
max and average pools (overlapping windows, padding, ceil_mode, adaptive), batch norm, residual
adds, cat, chunk and split, reshapes, transposes, means, scaling and dropout, and the ops
DeepLift gives no multiplier (layer norm, softmax, attention by matmul and by
``F.scaled_dot_product_attention``), and gates (a product of two paths). The references (in
`rule_fuzz_nets`) are written out per op: guided backprop's masked ReLU backward, and DeepLift's
Rescale multiplier per pair of rows ``[x; b]`` and its product rule at gates. Properties:

- the ruled forward is the model's forward, and the model is left as it was;
- guided backprop and deconvolution equal their masked backward, whatever the ReLUs' spelling
  (``clamp(min=0)`` and ``maximum(x, zeros)`` included);
- DeepLift equals the per-op Rescale reference wherever there is no max-pool (the reference has
  no max-pool rule), and sums to ``f(x) - f(b)`` where every op is one it promises that for;
  its ``return_delta`` is that gap wherever it is not zero;
- LRP-epsilon and LRP-gamma conserve relevance on bias-free ReLU nets, z-plus on nets with
  positive weights;
- every method is batch invariant, chunk_size changes nothing, vmap over examples neither;
  DeepLift SHAP is the mean of DeepLift over its baselines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from rule_fuzz_nets import CLAMP_SPELLINGS, IN_PLACE_SPELLINGS, INEXACT, RELU_SPELLINGS, FuzzNet, architectures
from registry import changed_state, state_snapshot
from xattr.testing import assert_trees_close, check_batch_invariance, check_chunk_invariance
from xattr.testing.strategies import random_tensor, seeds

TOL = dict(atol=1e-9, rtol=1e-7)
# three times the profile's examples: a net is drawn and checked in a few ms (default profile: ~15 s for the file)
fuzz = settings(max_examples=3 * settings.default.max_examples)


@st.composite
def nets(draw, *, bias: bool = True, positive: bool = False, **arch_kwargs):
    """(model, x, b, target): a random net, a batch of 1-3 inputs, a reference per example."""
    arch, in_shape = draw(architectures(**arch_kwargs))
    model = FuzzNet(arch, in_shape, draw(seeds), bias=bias, positive=positive)
    batch, seed = draw(st.integers(1, 3)), draw(seeds)
    x = random_tensor((batch,) + in_shape, seed)
    b = 0.3 * random_tensor((batch,) + in_shape, seed + 1)
    if positive:
        x = x.abs()
    return model, x, b, draw(st.integers(0, 2))


def _has(model, *ops) -> bool:
    return any(step[0] in ops for step in model.arch)


def _has_max_pool(model) -> bool:
    return any(step[0] == "pool" and "max" in step[2] for step in model.arch)


def _reference_grad(model, mode, target, x, **kw):
    with model.reference(mode, **kw):
        x = x.detach().requires_grad_()
        (g,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return g


# ----------------------------------------------------------------------------- guided backprop


@fuzz
@given(nets(spellings=RELU_SPELLINGS + CLAMP_SPELLINGS), st.sampled_from(["guided", "deconv"]))
def test_guided_backprop_and_deconvolution_equal_their_masked_backward(case, name):
    model, x, _, t = case
    before = state_snapshot(model, x)
    got = (xattr.guided_backprop if name == "guided" else xattr.deconvolution)(xattr.target(model, t))(x)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert_trees_close(got, _reference_grad(model, name, t, x), **TOL)


@fuzz
@given(nets(ops=("linear", "conv", "act", "pool", "add", "cat", "flatten", "transpose"), kinds=("relu",)),
       st.sampled_from(RELU_SPELLINGS + CLAMP_SPELLINGS))
def test_every_relu_spelling_gives_the_same_attributions(case, spelling):
    """Every spelling of ReLU, ``clamp(min=0)`` and ``maximum(x, 0)`` included, for every rule method."""
    model, x, b, t = case
    respelled_as = "functional" if spelling in IN_PLACE_SPELLINGS else spelling
    arch = tuple(s[:3] + (respelled_as,) if s[0] == "act" else s for s in model.arch)
    respelled = FuzzNet(arch, x.shape[1:], 0)
    respelled.load_state_dict(model.state_dict())
    eps = xattr.rule.Epsilon(0.25)  # a large eps: a layer that skipped it would show
    lrp = {**xattr.rule.lrp_rules(), F.linear: eps, F.max_pool2d: eps, F.avg_pool2d: eps, torch.conv2d: xattr.rule.Gamma(0.25)}
    methods = [lambda f: xattr.lrp(f, composite=lrp), lambda f: xattr.deep_lift(f, baselines=b)]
    for method in methods + [xattr.guided_backprop, xattr.deconvolution]:
        assert_trees_close(method(xattr.target(respelled, t))(x), method(xattr.target(model, t))(x), **TOL)


# ----------------------------------------------------------------------------- DeepLift


@fuzz
@given(nets(spellings=RELU_SPELLINGS + CLAMP_SPELLINGS))
def test_deep_lift_equals_the_rescale_reference(case):
    model, x, b, t = case
    assert torch.equal(xattr.rules(model, xattr.rule.deep_lift_rules())(x), model(x))
    before = state_snapshot(model, x)
    attr, delta = xattr.deep_lift(xattr.target(model, t), baselines=b, return_delta=True)(x)
    assert changed_state(before, state_snapshot(model, x)) == []
    gap = (attr.flatten(1).sum(1) - (model(x) - model(b))[:, t])
    assert_trees_close(delta, gap, **TOL)  # the delta shows the gap, where there is one
    if not _has(model, *INEXACT):  # summation-to-delta
        assert_trees_close(delta, torch.zeros_like(delta), atol=1e-9)
    if not _has_max_pool(model):
        m = _reference_grad(model, "deep_lift", t, torch.cat([x, b]))[: len(x)]
        assert_trees_close(attr, (x - b) * m, **TOL)


@fuzz
@given(nets(spellings=RELU_SPELLINGS + CLAMP_SPELLINGS), st.sampled_from([0.0, "row"]))
def test_deep_lift_with_a_shared_reference_sums_to_delta(case, shared):
    model, x, _, t = case
    b = 0.0 if shared == 0.0 else 0.5 * random_tensor((1,) + x.shape[1:], 7)
    attr = xattr.deep_lift(xattr.target(model, t), baselines=b)(x)
    b = torch.broadcast_to(torch.as_tensor(b, dtype=x.dtype), x.shape)
    if not _has_max_pool(model):
        m = _reference_grad(model, "deep_lift", t, torch.cat([x, b]))[: len(x)]
        assert_trees_close(attr, (x - b) * m, **TOL)
    if not _has(model, *INEXACT):
        assert_trees_close(attr.flatten(1).sum(1), (model(x) - model(b))[:, t], **TOL)


# ----------------------------------------------------------------------------- LRP

_BIAS_FREE_OPS = ("linear", "conv", "act", "pool", "add", "cat", "scale", "mean", "flatten", "unflatten", "transpose", "split_acts")


@fuzz
@given(nets(bias=False, ops=_BIAS_FREE_OPS, kinds=("relu",), spellings=RELU_SPELLINGS + CLAMP_SPELLINGS),
       st.sampled_from(["epsilon", "gamma"]))
def test_lrp_epsilon_and_gamma_conserve_relevance_on_bias_free_relu_nets(case, name):
    model, x, _, t = case
    gamma = xattr.rule.Gamma(0.25)
    composite = {**xattr.rule.lrp_rules(), **({F.linear: gamma, torch.conv2d: gamma} if name == "gamma" else {})}
    before = state_snapshot(model, x)
    relevance, delta = xattr.lrp(xattr.target(model, t), composite=composite, return_delta=True)(x)
    assert changed_state(before, state_snapshot(model, x)) == []
    out = model(x)[:, t]
    assert_trees_close(relevance.flatten(1).sum(1), out, atol=1e-6 * (1 + out.abs().max().item()), rtol=1e-6)
    assert_trees_close(delta, relevance.flatten(1).sum(1) - out, **TOL)


@fuzz
@given(nets(bias=False, positive=True, ops=_BIAS_FREE_OPS, kinds=("relu",)))
def test_z_plus_conserves_relevance_on_positive_nets(case):
    model, x, _, t = case
    zplus = xattr.rule.ZPlus()
    composite = {**xattr.rule.lrp_rules(), F.linear: zplus, torch.conv2d: zplus}
    relevance = xattr.lrp(xattr.target(model, t), composite=composite)(x)
    assert_trees_close(relevance.flatten(1).sum(1), model(x)[:, t], atol=1e-9, rtol=1e-6)
    assert (relevance >= 0).all()


# ----------------------------------------------------------------------------- every method


def _methods(b):
    return {
        "guided": lambda f, c=None: xattr.guided_backprop(f, chunk_size=c),
        "deconv": lambda f, c=None: xattr.deconvolution(f, chunk_size=c),
        "deep_lift": lambda f, c=None: xattr.deep_lift(f, baselines=b, chunk_size=c),
        "lrp": lambda f, c=None: xattr.lrp(f, chunk_size=c),
    }


@fuzz
@given(nets(spellings=RELU_SPELLINGS + CLAMP_SPELLINGS), st.sampled_from(["guided", "deconv", "deep_lift", "lrp"]))
def test_rule_methods_are_batch_chunk_and_vmap_invariant(case, name):
    model, x, _, t = case
    if name == "lrp" and _has(model, "softmax", "attention"):  # LRP raises at a softmax (docs/rules.md)
        name = "deep_lift"
    b = 0.5 * random_tensor((1,) + x.shape[1:], 3)
    method = _methods(b)[name]
    f = xattr.target(model, t)
    check_batch_invariance(method(f), x, **TOL)
    check_chunk_invariance(lambda c: method(f, c), x, chunk_sizes=(1, 2), **TOL)
    assert_trees_close(torch.func.vmap(lambda row: method(f)(row[None])[0])(x), method(f)(x), **TOL)


@fuzz
@given(nets(spellings=RELU_SPELLINGS + CLAMP_SPELLINGS))
def test_deep_lift_shap_is_the_mean_of_deep_lift(case):
    model, x, b, t = case
    dist = torch.cat([b, 2 * b])
    f = xattr.target(model, t)
    mean = torch.stack([xattr.deep_lift(f, baselines=r[None])(x) for r in dist]).mean(0)
    assert_trees_close(xattr.deep_lift_shap(f, baselines=dist)(x), mean, **TOL)
