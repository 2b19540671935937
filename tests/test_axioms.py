"""Property tests of the attribution axioms on random small models (xattr.testing.strategies).

Completeness (IG on smooth models, every `complete` entry on affine models), linearity,
symmetry, dummy and implementation invariance; plus checks that the checkers themselves catch
violations, so a passing axiom test means something.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import xattr
from xattr.testing import (
    check_batch_invariance,
    check_chunk_invariance,
    check_completeness,
    check_dtype_device,
    check_dummy,
    check_implementation_invariance,
    check_linearity,
    check_symmetry,
)
from xattr.testing import strategies as xst

from registry import METHODS_UNDER_TEST, entries

registry = functools.partial(pytest.mark.parametrize, "method", ids=repr)


def _n_out(model, x) -> int:
    with torch.no_grad():
        return model(x).shape[1]


@given(xst.models_and_inputs(activations=xst.SMOOTH, pool=False), st.data())
def test_ig_completeness_on_smooth_models(model_x, data):
    model, x = model_x
    f = xattr.target(model, data.draw(st.integers(0, _n_out(model, x) - 1), label="target"))
    base = data.draw(xst.inputs(x.shape[1:], batch_sizes=st.just(x.shape[0])), label="baselines")
    ig = xattr.integrated_gradients(f, baselines=base, n_steps=48, method="gausslegendre")
    check_completeness(f, ig, x, baselines=base, atol=1e-8, rtol=1e-6)
    attr, delta = xattr.integrated_gradients(f, baselines=base, n_steps=48, return_delta=True)(x)
    assert delta.abs().max() < 1e-8 + 1e-6 * attr.abs().sum()


@given(xst.models_and_inputs(activations=xst.SMOOTH, pool=False))
def test_ig_completeness_for_every_output_at_once(model_x):
    model, x = model_x
    f = xattr.target(model, xattr.outputs(None))
    check_completeness(f, xattr.integrated_gradients(f, n_steps=48), x, atol=1e-8, rtol=1e-6)


@registry(entries(complete=True))
@given(xst.linear_models_and_inputs(), st.data())
def test_complete_methods_are_exact_on_affine_models(method, model_x, data):
    model, x = model_x
    f = xattr.target(model, data.draw(st.integers(0, _n_out(model, x) - 1), label="target"))
    check_completeness(f, method.make(f), x)


@st.composite
def _two_models_one_input(draw):
    spec = draw(xst.model_specs())
    other = dataclasses.replace(
        spec, seed=draw(xst.seeds), activation=draw(st.sampled_from(xst.ACTIVATIONS)), softmax=draw(st.booleans())
    )
    x = draw(xst.inputs(spec.in_shape))
    return spec.build(), other.build(), x


@registry(entries(linear=True))
@given(_two_models_one_input(), st.floats(-2, 2), st.floats(-2, 2))
def test_linearity(method, models_x, a, b):
    m1, m2, x = models_x
    f1, f2 = xattr.target(m1, 0), xattr.target(m2, 0)
    check_linearity(lambda f: method.make(f, generator=0), f1, f2, a, b, x)


@registry(entries(deterministic=True))
@given(xst.symmetric_models_and_inputs())
def test_symmetry_preservation(method, case):
    model, x, i, j = case
    check_symmetry(method.make(xattr.target(model, 0)), x, i, j)


@registry(METHODS_UNDER_TEST)
@given(xst.dummy_models_and_inputs())
def test_dummy_features_get_zero(method, case):
    model, x, mask = case
    check_dummy(method.make(xattr.target(model, 0), generator=0), x, mask)


@registry(METHODS_UNDER_TEST)
@given(xst.twin_models_and_inputs())
def test_implementation_invariance(method, case):
    model, twin, x = case
    check_implementation_invariance(lambda m: method.make(xattr.target(m, 0), generator=0), model, twin, x)


# --- the checkers catch violations ---------------------------------------------------------------

MODEL = xst.ModelSpec("mlp", seed=0, in_shape=(4,), n_out=2, activation="tanh", hidden=(5,)).build()
X = xst.random_tensor((3, 4), seed=1)
F = xattr.target(MODEL, 0)


def test_checkers_pass_on_correct_methods():
    check_completeness(F, xattr.integrated_gradients(F, n_steps=48), X, atol=1e-9, rtol=1e-7)
    check_batch_invariance(xattr.saliency(F), X)
    check_dtype_device(xattr.saliency(F), X)


def test_completeness_checker_reports_the_gap():
    coarse = xattr.integrated_gradients(F, n_steps=2, method="riemann_left")
    with pytest.raises(AssertionError, match=r"completeness fails .* worst: example \d"):
        check_completeness(F, coarse, X)
    with pytest.raises(AssertionError, match="completeness"):  # a wrong baseline is a wrong claim
        check_completeness(F, xattr.integrated_gradients(F, n_steps=48), X, baselines=1.0)


def test_batch_invariance_checker_catches_examples_interacting():
    mixing = lambda x: xattr.saliency(F)(x) + x.mean(0)  # noqa: E731
    with pytest.raises(AssertionError, match="example 0 alone vs in a batch of 3"):
        check_batch_invariance(mixing, X)
    seeded = xattr.smoothgrad(xattr.saliency(F, abs=False), stdevs=0.5, n_samples=2, generator=0)
    check_batch_invariance(seeded, X, by="prefix")
    with pytest.raises(AssertionError):  # seeded noise is drawn by position, not by example
        check_batch_invariance(seeded, X, by="example")


def test_chunk_and_linearity_checkers_catch_violations():
    with pytest.raises(AssertionError, match="chunk_size=1 vs None"):
        check_chunk_invariance(lambda cs: (lambda x: x * (cs or 0)), X, chunk_sizes=(1,))
    with pytest.raises(AssertionError, match="linearity"):
        check_linearity(xattr.saliency, F, xattr.target(MODEL, 1), -1.0, 0.5, X)  # |grad| is not linear


def test_symmetry_dummy_and_implementation_checkers_catch_violations():
    x = X.clone()
    x[:, 1] = x[:, 0]
    with pytest.raises(AssertionError, match="symmetry"):
        check_symmetry(lambda x: x * torch.arange(4.0, dtype=x.dtype), x, 0, 1)
    with pytest.raises(ValueError, match="needs x"):
        check_symmetry(lambda x: x, X, 0, 1)
    with pytest.raises(AssertionError, match="feature 2"):
        check_dummy(lambda x: x * (torch.arange(4) == 2), X, [2, 3])
    with pytest.raises(ValueError, match="not one function"):
        check_implementation_invariance(xattr.saliency, F, xattr.target(MODEL, 1), X)
    with pytest.raises(AssertionError, match="dtype"):
        check_dtype_device(lambda x: x.float(), X)


def test_checkers_fail_on_nan_and_infinite_attributions():
    """NaN compared False with every tolerance, so NaN attributions passed completeness and dummy."""
    for bad in (float("nan"), float("inf")):
        with pytest.raises(AssertionError, match="completeness fails"):
            check_completeness(F, lambda x, bad=bad: torch.full_like(x, bad), X)
        with pytest.raises(AssertionError, match="dummy"):
            check_dummy(lambda x, bad=bad: torch.full_like(x, bad), X, [1])
    nan_model = xattr.target(lambda x: MODEL(x) * float("nan"), 0)
    with pytest.raises(AssertionError, match="not finite"):
        check_completeness(nan_model, xattr.integrated_gradients(F), X)


def test_completeness_checks_the_structure_of_the_attributions():
    y = xst.random_tensor((3, 4), seed=2)
    f2 = lambda a, b: MODEL(a + b)[:, 0]  # noqa: E731
    ig = xattr.integrated_gradients(f2, argnums=(0, 1), n_steps=48)
    check_completeness(f2, ig, X, y, argnums=(0, 1), atol=1e-6, rtol=1e-5)
    with pytest.raises(AssertionError, match="structure"):
        check_completeness(f2, lambda a, b: (*ig(a, b), torch.full((3, 7), 1e6)), X, y, argnums=(0, 1))
    with pytest.raises(AssertionError, match="structure"):
        check_completeness(F, lambda x: (xattr.integrated_gradients(F)(x), "extra"), X)


def test_feature_indices_wrap_negatives_and_are_checked():
    x = xst.random_tensor((2, 2, 3), seed=3)
    x[:, 1, -1] = x[:, 0, -1]
    attr = lambda x: x * torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]], dtype=x.dtype)  # noqa: E731
    check_symmetry(attr, x, (0, -1), (1, -1))  # both the last column: equal weights, equal values
    with pytest.raises(AssertionError, match="dummy"):
        check_dummy(lambda x: x * (torch.arange(6).reshape(2, 3) == 5), x, [(1, -1)])  # (1, -1) is (1, 2)
    with pytest.raises(IndexError, match="out of range"):
        check_dummy(lambda x: x, x, [(2, 0)])
    with pytest.raises(IndexError, match="3 entries for an example of shape"):
        check_dummy(lambda x: x, x, [(0, 0, 0)])
    with pytest.raises(ValueError, match="one example's shape"):
        check_dummy(lambda x: x, x, torch.tensor([True, False]))


def test_trees_close_refuses_a_tensor_against_a_number():
    from xattr.testing import assert_trees_close

    with pytest.raises(AssertionError, match="float where Tensor"):
        assert_trees_close((X, 1.0), (X, torch.tensor(1.0)))
    with pytest.raises(AssertionError, match="Tensor where float"):
        assert_trees_close((X, torch.tensor(1.0)), (X, 1.0))


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
@given(data=st.data())
def test_dummy_masks_mark_exactly_what_the_model_ignores(kind, data):
    """A linear model on (C, H, W) examples zeroed one flattened pixel but marked a whole channel."""
    model, x, mask = data.draw(xst.dummy_models_and_inputs(kinds=(kind,)))
    with torch.no_grad():
        moved = x + 10.0 * mask.to(x.dtype)  # change only the masked features
        torch.testing.assert_close(model(moved), model(x))


@given(xst.twin_models_and_inputs())
def test_twins_differ_in_their_parameters(case):
    model, twin, _ = case
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
