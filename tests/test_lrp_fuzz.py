"""LRP composites on random sequential networks against a layer-by-layer reference.

Networks (`lrp_fuzz_ref.architectures`): Linear and Conv1d/Conv2d layers with and without bias,
ReLU, tanh and leaky ReLU, average, max and adaptive pools, a flatten, eval batch norm merged by
`xattr.merge_batch_norm` or not, sometimes a residual block of two linears. Composites: the
default mapping plus, per module, a rule keyed by its name, its instance or its type (epsilon,
gamma, alpha-beta, z+, positive weights; `Pass` at activations and batch norm; w^2, flat or z^B
on the layer reading the input). The reference (`lrp_fuzz_ref.reference`) writes each rule's
formula of docs/lrp.md out on the layer's dense matrix, one example at a time, from the target
logit down. Properties, in float64:

- `xattr.lrp` equals the reference; `return_delta` is ``sum(R) - f(x)`` of the reference;
- `xattr.layer_lrp` at a random layer equals the reference's relevance of that layer's output;
- the relevance of an example does not depend on the rest of the batch;
- `xattr.compat.captum.LRP` with rules set as ``module.rule`` equals the reference with the
  equivalent xattr rules, and so does Captum's own LRP on the networks Captum supports.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
import xattr.compat.captum
from lrp_fuzz_ref import Residual, cases, kind_of, reference
from xattr.testing import assert_trees_close, check_batch_invariance

TOL = dict(atol=1e-10, rtol=1e-8)
fuzz = settings(max_examples=3 * settings.default.max_examples)


def _reference(net, mapping, x, t):
    rows = [reference(net, mapping, x[i : i + 1], t) for i in range(len(x))]
    return torch.cat([r for r, _ in rows]), [o for _, o in rows]


@fuzz
@given(cases())
def test_lrp_equals_the_layer_by_layer_reference(case):
    model, net, x, mapping, t = case
    want, _ = _reference(net, mapping, x, t)
    got, delta = xattr.lrp(xattr.target(model, t), composite=mapping, return_delta=True)(x)
    assert_trees_close(got, want, **TOL)
    assert_trees_close(delta, want.flatten(1).sum(1) - net(x)[:, t], **TOL)


@fuzz
@given(cases(), st.data())
def test_layer_lrp_equals_the_reference_at_a_random_layer(case, data):
    model, net, x, mapping, t = case
    layers = [m for m in net.modules() if kind_of(m) is not None or isinstance(m, Residual)]
    layer = data.draw(st.sampled_from(layers))
    _, outputs = _reference(net, mapping, x, t)
    want = torch.cat([o[id(layer)] for o in outputs])
    got, delta = xattr.layer_lrp(xattr.at_layer(xattr.target(model, t), layer), composite=mapping, return_delta=True)(x)
    assert_trees_close(got, want.reshape(got.shape), **TOL)
    assert_trees_close(delta, want.flatten(1).sum(1) - net(x)[:, t], **TOL)


@settings(max_examples=settings.default.max_examples)
@given(cases())
def test_lrp_is_batch_invariant(case):
    model, net, x, mapping, t = case
    check_batch_invariance(xattr.lrp(xattr.target(model, t), composite=mapping), x, **TOL)


# ----------------------------------------------------------------------------- Captum's module.rule


def _captum_rules(draw, net):
    """Captum rule objects set as ``module.rule`` on some layers; the equivalent xattr mapping."""
    from captum.attr._utils import lrp_rules as C

    mapping = xattr.rule.lrp_rules()
    for m in net.modules():
        kind = kind_of(m)
        if kind not in ("linear", "conv", "batch_norm") or not draw(st.booleans()):
            continue
        eps = draw(st.sampled_from([1e-9, 0.01, 0.3]))
        # on batch norm Captum's gamma and alpha1-beta0 rewrite its parameters (gamma, beta), not the
        # affine map's weight and bias (docs/lrp.md's z' = rho(W) x + rho(b)): left out
        which = draw(st.sampled_from(["epsilon", "identity"] if kind == "batch_norm" else ["epsilon", "gamma", "alpha1beta0"]))
        zero = draw(st.booleans())
        if which == "epsilon":
            m.rule, mapping[m] = C.EpsilonRule(eps), xattr.rule.Epsilon(eps)
        elif which == "gamma":
            g = draw(st.sampled_from([0.1, 0.25, 1.0]))
            m.rule, mapping[m] = C.GammaRule(g, set_bias_to_zero=zero), xattr.rule.Gamma(g, zero_bias=zero, modify_bias=False)
        elif which == "alpha1beta0":
            m.rule, mapping[m] = C.Alpha1_Beta0_Rule(set_bias_to_zero=zero), xattr.rule.PositiveWeights(zero_bias=zero)
        else:
            m.rule, mapping[m] = C.IdentityRule(), xattr.rule.Pass()
    return mapping


@settings(max_examples=2 * settings.default.max_examples)
@given(cases(captum=True), st.data())
def test_captum_lrp_with_module_rules_equals_the_reference(case, data):
    pytest.importorskip("captum")
    from captum.attr import LRP as CaptumLRP

    _, net, x, _, t = case
    mapping = _captum_rules(data.draw, net)
    want, _ = _reference(net, mapping, x, t)
    got, delta = xattr.compat.captum.LRP(net).attribute(x, target=t, return_convergence_delta=True)
    assert_trees_close(got, want, **TOL)
    assert_trees_close(delta, net(x)[:, t] - want.flatten(1).sum(1), **TOL)
    theirs = CaptumLRP(copy.deepcopy(net)).attribute(x, target=t)
    assert_trees_close(theirs, want, **TOL)
