"""The invariants the shared machinery cannot run on Split IG, Blur IG and Integrated Hessians.

tests/test_invariants.py crosses them with its invariants (registry.py: Split IG's two parts are
entries of their own; Blur IG and Integrated Hessians are in ``SHAPED_METHODS_UNDER_TEST``, and
their documented refusals are checked there as refusals). What it cannot run is here: the pytree
invariant of Blur IG on image-shaped inputs (the shared pytree case has vectors); the axioms of
tests/test_axioms.py, whose checkers expect attributions shaped like an MLP's input, for Blur IG
(on CNNs) and Integrated Hessians (on its (B, D, D) result); Split IG's completeness per part on
affine models (neither part alone is complete, so its entries are not ``complete``); Integrated
Hessians' K axis on the shared models, with its (B, K, *s, *s) shape; and a check that the
refusal machinery fails when a method does not refuse what its entry says.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import (
    assert_trees_close,
    check_batch_invariance,
    check_chunk_invariance,
    check_dtype_device,
    check_dummy,
    check_implementation_invariance,
    check_linearity,
)
from xattr.testing import strategies as xst
from xattr.testing.strategies import random_tensor

import test_invariants
from registry import BY_NAME, Method, _saliency

B = 4
BLUR, HESSIANS = BY_NAME["blur_ig"], BY_NAME["integrated_hessians"]
SMOOTH_CNNS = dict(kinds=("cnn",), activations=xst.SMOOTH, pool=False)


# ----------------------------------------------------------------------------- Blur IG: pytrees of images


class TwoImages(nn.Module):
    """out = W (tanh(conv([a; b])) * scale): a (B, 1, 4, 4) and b (B, 2, 4, 4) images stacked as
    channels, and ``scale`` (B, 3 * 16) a batched pass-through argument."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.conv, self.out = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(48, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.double().eval()

    def forward(self, a, b, scale):
        return self.out(torch.tanh(self.conv(torch.cat([a, b], 1))).flatten(1) * scale)


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_blur_ig_pytree_of_images_with_a_pass_through_argument(form):
    """The shared pytree invariant on images: structure and dtype, batch and chunk invariance, and
    the same numbers as the concatenated input (the blur keeps channels apart)."""
    model = TwoImages()
    a, b = random_tensor((B, 1, 4, 4), 1), random_tensor((B, 2, 4, 4), 2)
    scale = 1.0 + random_tensor((B, 48), 3).abs()
    if form == "dict":
        f, args, argnums = xattr.target(lambda d, s: model(d["a"], d["b"], s), 1), ({"a": a, "b": b}, scale), 0
    else:
        f, args, argnums = xattr.target(model, 1), (a, b, scale), (0, 1)
    fn = BLUR.make(f, argnums=argnums)
    check_dtype_device(fn, *args, argnums=argnums)
    check_batch_invariance(fn, *args, argnums=argnums)
    check_chunk_invariance(lambda cs: BLUR.make(f, argnums=argnums, chunk_size=cs), *args, chunk_sizes=(1, 9))
    got = fn(*args)
    got = got if form == "dict" else {"a": got[0], "b": got[1]}
    flat = BLUR.make(xattr.target(lambda z, s: model(z[:, :1], z[:, 1:], s), 1))(torch.cat([a, b], 1), scale)
    assert_trees_close(got, {"a": flat[:, :1], "b": flat[:, 1:]}, what="pytree vs concatenated input")
    assert got["a"].abs().max() > 1e-3 and got["b"].abs().max() > 1e-3  # not trivially zero


# ----------------------------------------------------------------------------- the axioms on CNNs and on (B, D, D)


@st.composite
def two_models_one_input(draw, **spec_kwargs):
    """Two random models of one input shape (as test_axioms draws them) and a batch for both."""
    spec = draw(xst.model_specs(**spec_kwargs))
    other = dataclasses.replace(spec, seed=draw(xst.seeds), softmax=draw(st.booleans()))
    return spec.build(), other.build(), draw(xst.inputs(spec.in_shape))


@st.composite
def twin_cnns_and_inputs(draw):
    """(model, twin, x): a CNN and the same function with its first conv's channels permuted
    (filters, biases and the next layer's input channels or flattened columns)."""
    spec = draw(xst.model_specs(**SMOOTH_CNNS))
    assume(spec.hidden[0] >= 2)
    model, twin = spec.build(), spec.build()
    perm = torch.tensor(draw(st.permutations(range(spec.hidden[0])).filter(lambda p: list(p) != sorted(p))))
    first, after = [m for m in twin.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:2]
    with torch.no_grad():
        first.weight.copy_(first.weight[perm])
        first.bias.copy_(first.bias[perm])
        w = after.weight if isinstance(after, nn.Conv2d) else after.weight.reshape(after.weight.shape[0], len(perm), -1)
        w.copy_(w[:, perm].clone())
    return model, twin, draw(xst.inputs(spec.in_shape))


@given(two_models_one_input(**SMOOTH_CNNS), st.floats(-2, 2), st.floats(-2, 2))
def test_blur_ig_is_linear_in_the_model(models_x, a, b):
    m1, m2, x = models_x  # the blur path depends on x alone, so the integral is linear in f
    check_linearity(lambda f: BLUR.make(f), xattr.target(m1, 0), xattr.target(m2, 0), a, b, x)


@given(xst.dummy_models_and_inputs(kinds=("cnn",)))
def test_blur_ig_gives_ignored_channels_zero(case):
    model, x, mask = case  # the blur keeps channels apart: an ignored channel's gradient is 0 all along
    check_dummy(BLUR.make(xattr.target(model, 0)), x, mask)


@given(twin_cnns_and_inputs())
def test_blur_ig_and_integrated_hessians_are_implementation_invariant_on_cnns(case):
    model, twin, x = case
    check_implementation_invariance(lambda m: BLUR.make(xattr.target(m, 0)), model, twin, x)
    check_implementation_invariance(lambda m: HESSIANS.make(xattr.target(m, 0)), model, twin, x)


@given(xst.linear_models_and_inputs(), st.data())
def test_integrated_hessians_on_affine_models_is_diagonal_ig(model_x, data):
    """f = w . x + c: no interactions, the diagonal is IG = w (x - 0), the total f(x) - f(0)."""
    model, x = model_x
    t = data.draw(st.integers(0, model[-1].out_features - 1), label="target")
    f = xattr.target(model, t)
    gamma = HESSIANS.make(f)(x)
    flat = gamma.reshape(x.shape[0], x[0].numel(), x[0].numel())
    w = model[-1].weight[t]
    assert_trees_close(flat, torch.diag_embed(w * x.flatten(1)), what="Gamma on an affine model")
    with torch.no_grad():
        delta = f(x) - f(torch.zeros_like(x))
    assert_trees_close(flat.sum((1, 2)), delta, what="sum of Gamma vs f(x) - f(0)")


@given(two_models_one_input(kinds=("mlp",), activations=xst.SMOOTH, pool=False), st.floats(-2, 2), st.floats(-2, 2))
def test_integrated_hessians_is_linear_in_the_model(models_x, a, b):
    m1, m2, x = models_x  # gradients and Hessians are linear in f
    check_linearity(lambda f: HESSIANS.make(f), xattr.target(m1, 0), xattr.target(m2, 0), a, b, x)


@given(xst.dummy_models_and_inputs(activations=xst.SMOOTH, pool=False))
def test_integrated_hessians_gives_ignored_features_zero_rows_and_columns(case):
    model, x, mask = case
    gamma = HESSIANS.make(xattr.target(model, 0))(x)
    dead = mask.flatten()
    flat = gamma.reshape(x.shape[0], dead.numel(), dead.numel())
    worst = max(flat[:, dead].abs().max().item(), flat[:, :, dead].abs().max().item())
    assert worst <= 1e-12, f"an ignored feature's row or column of Gamma reaches {worst:.3g}"


@given(xst.symmetric_models_and_inputs(activations=xst.SMOOTH, pool=False))
def test_integrated_hessians_preserves_symmetry(case):
    """A model symmetric in i and j, x_i = x_j: swapping i and j maps Gamma onto itself."""
    model, x, i, j = case
    gamma = HESSIANS.make(xattr.target(model, 0))(x)
    order = list(range(x.shape[1]))
    order[i], order[j] = j, i
    assert_trees_close(gamma[:, order][:, :, order], gamma, what=f"Gamma with features {i} and {j} swapped")


@given(xst.twin_models_and_inputs(activations=xst.SMOOTH))
def test_integrated_hessians_is_implementation_invariant(case):
    model, twin, x = case
    check_implementation_invariance(lambda m: HESSIANS.make(xattr.target(m, 0)), model, twin, x)


# ----------------------------------------------------------------------------- Split IG: completeness per part


@given(xst.linear_models_and_inputs(), st.floats(0.05, 0.95), st.data())
def test_split_ig_parts_on_affine_models(model_x, fraction, data):
    """On an affine model the progress along the line is p(a) = a, so alpha* = fraction, and each
    part is complete on its stretch: sum(left) = fraction (f(x) - f(0)), sum(right) the rest.
    The registry's two entries are the pair's parts."""
    model, x = model_x
    f = xattr.target(model, data.draw(st.integers(0, model[-1].out_features - 1), label="target"))
    with torch.no_grad():
        delta = f(x) - f(torch.zeros_like(x))
    assume(bool((delta.abs() > 1e-6).all()))  # a flat output puts everything left (alpha* = 1)
    left, right, alpha = xattr.split_integrated_gradients(f, fraction=fraction, n_steps=5, return_split=True)(x)
    assert_trees_close(alpha, torch.full_like(alpha, fraction), what="alpha* on an affine model")
    assert_trees_close(left.flatten(1).sum(1), fraction * delta, what="sum(left) vs fraction (f(x) - f(0))")
    assert_trees_close(right.flatten(1).sum(1), (1 - fraction) * delta, what="sum(right) vs (1 - fraction)(f(x) - f(0))")
    pair = xattr.split_integrated_gradients(f, n_steps=5)(x)
    assert_trees_close((BY_NAME["split_ig_left"].make(f)(x), BY_NAME["split_ig_right"].make(f)(x)), pair, what="entries vs pair")


# ----------------------------------------------------------------------------- the refusal machinery


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_integrated_hessians_many_outputs_match_single_targets_on_shared_models(kind):
    # the registry's many-outputs invariant with the pairs shape (B, K, *s, *s), per-example
    # targets included: outputs(idx) with idx (B, K) against the LongTensor targets idx[:, j]
    model, x = test_invariants.setup(kind)
    idx = torch.stack([torch.tensor([2, 0, 1, 2]), torch.tensor([1, 1, 0, 2])], 1)[: x.shape[0]]
    for many_t, ones in ((xattr.outputs([2, 0]), [2, 0]), (xattr.outputs(idx), [idx[:, 0], idx[:, 1]])):
        many = HESSIANS.make(xattr.target(model, many_t), generator=0)(x)
        assert many.shape == (x.shape[0], 2) + tuple(x.shape[1:]) * 2 and many.dtype == x.dtype
        for j, t in enumerate(ones):
            one = HESSIANS.make(xattr.target(model, t), generator=0)(x)
            assert_trees_close(many[:, j], one, what=f"outputs[:, {j}] vs its single target")


def test_a_claimed_refusal_that_does_not_happen_fails_the_invariant():
    """`refused` runs the invariant under pytest.raises: a method whose entry claims a refusal it
    does not make fails (saliency answers many outputs), and an unknown key is refused."""
    liar = Method("saliency_claiming_a_refusal", _saliency, refuses=(("many_outputs", ValueError, "one output"),))
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        test_invariants.test_many_outputs_match_single_targets(liar, "mlp")
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        test_invariants.test_pytree_inputs_with_pass_through_argument(
            dataclasses.replace(liar, refuses=(("pytree", TypeError, "one tensor"),)), "dict"
        )
    with pytest.raises(ValueError, match="unknown refusal keys"):
        Method("typo", _saliency, refuses=(("many_output", ValueError, ""),))
