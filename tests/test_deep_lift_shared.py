"""One reference row shared by the batch (NOTE: [Shared reference]): B + 1 rows that equal the
2B paired rows of the same reference, for DeepLift, layer DeepLift and DeepLift SHAP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import assert_trees_close
from xattr.testing.strategies import random_tensor

from deep_lift_ref import B, PAIRED, SoftmaxHead, _Halves, cases, cnn_case, n_out
from test_deep_lift_spellings import max_pool_rule_by_positions

# --------------------------------------------------------------------------- one reference row shared by the batch


def _rows_of(model, rows: list):
    """model, recording the rows of every call (a module, so the rules still find its layers)."""

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, *rest):
            rows.append(x.shape[0])
            return self.inner(x)

    return Spy().eval()


@st.composite
def shared_cases(draw):
    """A random small network, a batch of at least 2, and one reference for every example: a
    number, or one row (broadcast over the batch)."""
    model, x, base, t = draw(cases())
    if x.shape[0] == 1:
        x = torch.cat([x, x.flip(-1) * 0.5])
    shared = draw(st.sampled_from(["number", "row"]))
    reference = float(draw(st.sampled_from([0.0, 0.25, -0.5]))) if shared == "number" else base[:1]
    return model, x, reference, t


@given(shared_cases(), st.sampled_from(["int", "per example", "outputs", "outputs per example"]))
def test_a_shared_reference_runs_one_row_for_the_batch_and_equals_paired_rows(case, which):
    """NOTE: [Shared reference]: B + 1 rows, with the same attributions, multipliers and deltas as
    the 2B paired rows of the same reference written out per example (which the layer-by-layer
    reference checks), for every kind of target."""
    model, x, reference, t = case
    b, n = x.shape[0], n_out(model, x)
    target = {
        "int": t,
        "per example": torch.arange(b) % n,
        "outputs": xattr.outputs(list(range(n))),
        "outputs per example": xattr.outputs(torch.stack([torch.arange(b) % n, (torch.arange(b) + 1) % n], 1)),
    }[which]
    rows = []
    f = xattr.target(_rows_of(model, rows), target)
    for multiply in (True, False):
        rows.clear()
        got, delta = xattr.deep_lift(f, baselines=reference, multiply_by_inputs=multiply, return_delta=True)(x)
        assert rows == [b + 1], rows
        want, want_delta = xattr.deep_lift(f, baselines=reference, multiply_by_inputs=multiply, return_delta=True, mapping=PAIRED)(x)
        assert rows == [b + 1, 2 * b], rows
        assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what=f"shared vs paired rows ({which})")
        assert_trees_close(delta, want_delta, atol=1e-12, rtol=1e-10, what=f"deltas ({which})")
        if multiply:  # summation-to-delta
            assert delta.abs().max() <= 1e-10 + 1e-8 * got.abs().sum()


def test_a_shared_reference_is_used_only_where_it_is_the_same_computation():
    """2B rows, not B + 1: a reference per example, one example, a per-example argument beside the
    input (its value at a shared row would be undefined), or a rule of the user's that does not
    declare ``shares_reference``."""
    model, x, base = cnn_case()
    rows = []
    spy = _rows_of(model, rows)
    f = xattr.target(spy, 1)
    xattr.deep_lift(f, baselines=0.5)(x)
    xattr.deep_lift(f, baselines=base[:1])(x)
    xattr.deep_lift(f, baselines=base)(x)
    xattr.deep_lift(f, baselines=0.5)(x[:1])
    assert rows == [B + 1, B + 1, 2 * B, 2]
    rows.clear()
    xattr.deep_lift(xattr.target(spy, 1), baselines=0.5, argnums=0)(x, torch.ones(B, 3))
    assert rows == [2 * B]

    rows.clear()
    got = xattr.deep_lift(f, baselines=0.5, mapping={F.elu: _Halves()})(x)
    assert rows == [2 * B]
    assert_trees_close(got, xattr.deep_lift(f, baselines=0.5)(x), atol=1e-12, what="same values either way")


def test_a_shared_reference_for_dict_inputs_and_an_unbatched_argument():
    """Trees of inputs share their reference leaf by leaf (a number for all, or one row each), and
    an extra argument without a batch (a per-feature scale) does not stop the sharing."""
    w = random_tensor((3, 5), seed=9)
    rows = []

    def f(d, scale):
        rows.append(d["a"].shape[0])
        return F.elu(torch.cat([d["a"], d["b"]], 1) * scale @ w.T)

    g = xattr.target(f, 2)
    x = {"a": random_tensor((B, 3), seed=10), "b": random_tensor((B, 2), seed=11)}
    scale = random_tensor((5,), seed=12)
    one = {"a": random_tensor((1, 3), seed=13), "b": random_tensor((1, 2), seed=14)}
    for reference in (0.5, one):
        rows.clear()
        got = xattr.deep_lift(g, baselines=reference)(x, scale)
        want = xattr.deep_lift(g, baselines=reference, mapping=PAIRED)(x, scale)
        assert rows == [B + 1, 2 * B], rows
        assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what=f"dict inputs, reference {type(reference).__name__}")


def test_a_batch_of_equal_reference_rows_is_shared_too():
    """Captum's spelling ``baselines=torch.zeros_like(x)``: a (B, ...) reference whose rows are all
    equal runs as one shared row (one comparison finds it), with the same attributions; rows that
    differ in one element keep the 2B rows; under vmap no value is compared."""
    model, x, base = cnn_case()
    rows = []
    f = xattr.target(_rows_of(model, rows), 1)
    equal = base[:1].expand_as(x).clone()  # its own storage, one row repeated
    got = xattr.deep_lift(f, baselines=equal)(x)
    assert rows == [B + 1]
    assert_trees_close(got, xattr.deep_lift(f, baselines=equal, mapping=PAIRED)(x), atol=1e-12, rtol=1e-10, what="equal rows")
    almost = equal.clone()
    almost[-1, 0, 0, 0] += 1e-9
    rows.clear()
    xattr.deep_lift(f, baselines=almost)(x)
    assert rows == [2 * B]
    groups = torch.stack([x, x.flip(0)])
    batched = torch.func.vmap(lambda g: xattr.deep_lift(xattr.target(model, 1), baselines=torch.zeros_like(g))(g))(groups)
    loop = torch.stack([xattr.deep_lift(xattr.target(model, 1), baselines=torch.zeros_like(g))(g) for g in groups])
    assert_trees_close(batched, loop, atol=1e-12, what="vmap with a full zero reference")


def test_shared_paired_rows_need_unseeded_references():
    with pytest.raises(ValueError, match="reference_grads=False"):
        with xattr.rule.paired_rows(4, shared=True):
            pass


def test_a_shared_reference_under_vmap_equals_a_loop():
    """Inside vmap (over groups of examples) the shared path pads multipliers by concatenation."""
    model, x, base = cnn_case()
    groups = torch.stack([x, x.flip(0) * 0.7])  # (2, B, ...)
    dl = xattr.deep_lift(xattr.target(model, 2), baselines=base[:1])
    got = torch.func.vmap(dl)(groups)
    assert_trees_close(got, torch.stack([dl(g) for g in groups]), atol=1e-12, what="vmap over groups vs loop")


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_max_pool_rule_with_a_shared_reference_row_equals_its_formula(kernel, stride, padding):
    """The max-pool rule against one reference row shared by h inputs, with exact ties: the input
    rows get the formula's gradients for the reference written out per input, the shared row none."""
    from xattr._src.deeplift_rules import Rescale, paired_rows

    h = 3
    x, ref = random_tensor((h, 2, 5, 6), seed=4), random_tensor((1, 2, 5, 6), seed=5)
    x = torch.where(random_tensor((h, 2, 5, 6), seed=6) > 0.4, ref, x)  # ties with the shared row
    z = torch.cat([x, ref]).requires_grad_()
    g = random_tensor((h + 1, 2) + tuple(F.max_pool2d(x, kernel, stride, padding).shape[2:]), seed=7)
    g[h:] = 0
    pool = xattr.rules(lambda t: F.max_pool2d(t, kernel, stride, padding), {F.max_pool2d: Rescale()})
    with paired_rows(h + 1, reference_grads=False, shared=True):
        (got,) = torch.autograd.grad(pool(z), z, g)
    full = torch.cat([x, ref.expand_as(x)])
    g_full = torch.cat([g[:h], torch.zeros_like(g[:h])])
    want = max_pool_rule_by_positions(full, g_full, kernel, stride, padding, 1e-10, [(0, "x")])
    torch.testing.assert_close(got[:h], want[:h], rtol=1e-12, atol=1e-12)
    assert torch.equal(got[h:], torch.zeros_like(got[h:]))


@pytest.mark.parametrize("target", [2, "per example"])
def test_layer_deep_lift_with_a_shared_reference_equals_paired_rows(target):
    """Layer DeepLift runs B + 1 rows for a shared reference too; h_ref is the shared row's
    activation for every example; values and deltas as with the reference written per example."""
    model, x, base = cnn_case()
    rows = []
    spy = _rows_of(model, rows)
    t = torch.tensor([0, 2, 1]) if target == "per example" else target
    for layer in (1, 2, 4):
        split = xattr.at_layer(xattr.target(spy, t), spy.inner[layer])
        for reference in (0.25, base[:1]):
            rows.clear()
            got, delta = xattr.layer_deep_lift(split, baselines=reference, return_delta=True)(x)
            want, want_delta = xattr.layer_deep_lift(split, baselines=reference, return_delta=True, mapping=PAIRED)(x)
            assert rows == [B + 1, 2 * B], rows
            assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what=f"layer {layer}")
            assert_trees_close(delta, want_delta, atol=1e-12, rtol=1e-10, what=f"layer {layer} deltas")
        seen = []
        xattr.layer_deep_lift(split, baselines=0.25, attribution_func=lambda m, h, h_ref: seen.append(h_ref) or m * (h - h_ref))(x)
        assert seen[0].shape == got.shape and torch.equal(seen[0], seen[0][:1].expand_as(seen[0]))


@pytest.mark.parametrize("which", ["cnn (max-pool)", "softmax (B,T,D)"])
@pytest.mark.parametrize("target", ["per example", "outputs"])
def test_deep_lift_shap_with_shared_rows_per_copy_equals_paired_rows(which, target):
    """DeepLift SHAP and its layer variant run c copies with one reference row each (rows c*B + c)
    through max-pool and softmax rules, with the values of the 2*c*B paired rows."""
    if which.startswith("cnn"):
        model, x, _ = cnn_case()
        dist, layer = random_tensor((4, 2, 4, 4), seed=21), model[2]
    else:
        torch.manual_seed(0)
        model = SoftmaxHead(5, 4, 2).eval()
        x, dist, layer = random_tensor((B, 2, 5), seed=22), random_tensor((4, 2, 5), seed=23), model.lin
    n = 3 if which.startswith("cnn") else 1
    t = torch.arange(B) % n if target == "per example" else xattr.outputs(list(range(n)))
    rows = []
    f = xattr.target(_rows_of(model, rows), t)
    paired = PAIRED
    got, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    want, want_delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True, mapping=paired)(x)
    assert rows == [4 * B + 4, 8 * B], rows
    assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what="deep_lift_shap: shared vs paired")
    assert_trees_close(delta, want_delta, atol=1e-12, rtol=1e-10, what="deep_lift_shap deltas")
    split = xattr.at_layer(f, layer if which.startswith("softmax") else f.model.inner[2])
    got = xattr.layer_deep_lift_shap(split, baselines=dist)(x)
    want = xattr.layer_deep_lift_shap(split, baselines=dist, mapping=paired)(x)
    assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what="layer_deep_lift_shap: shared vs paired")
