"""Target tensors of every integer dtype, negative (B, K) indices, and empty batches.

A per-example target (B,), or the indices in ``xattr.outputs`` of shape (K,) or (B, K), may be of
any integer dtype (uint8 labels from numpy, int16 ones stored compactly): each gives int64's
numbers, and a uint8 tensor is never read as a mask. A bool tensor is refused (a mask or the
indices 0/1?). A negative index counts from the last output in every form, (B, K) included. An
empty batch gives empty attributions from the gradient, rule and layer methods (with the K axis
of ``xattr.outputs``, and empty deltas), as it does with one target; the perturbation methods
refuse it (nothing to perturb).
"""

import pytest
import torch
from torch import nn

import xattr
from xattr.compat import captum as C

# int32 indexed before too; uint8 gathered nowhere and was a mask in outputs (K,); the 16-bit and
# 8-bit signed ones failed in every gather; uint16/32/64 failed in the range check everywhere
SMALL = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.uint16, torch.uint32, torch.uint64]
SIGNED = [torch.int8, torch.int16, torch.int32]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4)).eval()


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 4)).eval()


NET, CNN = _mlp(), _cnn()
X = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
IMG = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
BG = torch.rand(3, 5, generator=torch.Generator().manual_seed(3))
LABELS = torch.tensor([3, 0, 1, 2])
K_IDX = torch.tensor([2, 0, 1])  # read as a uint8 mask: outputs 0 and 2, in another order
BK_IDX = torch.tensor([[3, 0], [1, 1], [0, 2], [2, 3]])


def _methods(x=X, img=IMG):
    """name -> (target -> attributions): model rows reached with autograd, through rules, at a
    layer, and under no_grad (perturbation)."""
    T, split = xattr.target, xattr.at_layer
    return {
        "saliency": lambda t: xattr.saliency(T(NET, t), abs=False)(x),
        "input_x_gradient": lambda t: xattr.input_x_gradient(T(NET, t))(x),
        "integrated_gradients+delta": lambda t: xattr.integrated_gradients(T(NET, t), n_steps=8, return_delta=True)(x),
        "gradient_shap": lambda t: xattr.gradient_shap(T(NET, t), baselines=BG, n_samples=3, generator=0)(x),
        "smoothgrad": lambda t: xattr.smoothgrad(xattr.saliency(T(NET, t)), stdevs=0.1, n_samples=3, generator=0)(x),
        "guided_backprop": lambda t: xattr.guided_backprop(T(NET, t))(x),
        "deep_lift+delta": lambda t: xattr.deep_lift(T(NET, t), return_delta=True)(x),
        "deep_lift_shap": lambda t: xattr.deep_lift_shap(T(NET, t), baselines=BG)(x),
        "lrp": lambda t: xattr.lrp(T(NET, t))(x),
        "layer_integrated_gradients": lambda t: xattr.layer_integrated_gradients(split(T(NET, t), NET[1]), n_steps=8)(x),
        "grad_cam": lambda t: xattr.grad_cam(split(T(CNN, t), CNN[1]))(img),
        "layer_deep_lift": lambda t: xattr.layer_deep_lift(split(T(NET, t), NET[1]))(x),
        "feature_ablation": lambda t: xattr.feature_ablation(T(NET, t))(x),
        "occlusion": lambda t: xattr.occlusion(T(CNN, t), sliding_window_shapes=(1, 2, 2))(img),
        "shapley_value_sampling": lambda t: xattr.shapley_value_sampling(T(NET, t), n_samples=2, generator=0)(x),
    }


METHODS = _methods()
PERTURBATION = ("feature_ablation", "occlusion", "shapley_value_sampling")


def _leaves(out):
    return list(out) if isinstance(out, tuple) else [out]


def _mismatches(method, forms):
    """For each target form that does not give its int64 form's numbers: the form, and what went wrong."""
    bad = []
    for name, (given, reference) in forms.items():
        want = _leaves(method(reference))
        try:
            got = _leaves(method(given))
        except Exception as err:  # noqa: BLE001 - reported with the rest
            bad.append(f"{name}: {type(err).__name__}: {str(err)[:90]}")
            continue
        if [g.shape for g in got] != [w.shape for w in want] or not all(torch.equal(g, w) for g, w in zip(got, want)):
            bad.append(f"{name}: shapes {[tuple(g.shape) for g in got]} vs {[tuple(w.shape) for w in want]}, or other values")
    return bad


@pytest.mark.parametrize("method", list(METHODS))
def test_a_per_example_target_of_every_integer_dtype_gives_int64s_numbers(method):
    forms = {str(dt): (LABELS.to(dt), LABELS) for dt in SMALL}
    forms.update({f"{dt}, negative": (torch.tensor([-1, 0, -3, 2], dtype=dt), torch.tensor([3, 0, 1, 2])) for dt in SIGNED})
    assert not _mismatches(METHODS[method], forms)


@pytest.mark.parametrize("method", list(METHODS))
def test_outputs_k_of_every_integer_dtype_give_int64s_numbers_never_a_mask(method):
    forms = {str(dt): (xattr.outputs(K_IDX.to(dt)), xattr.outputs(K_IDX)) for dt in SMALL}
    forms.update({f"{dt}, negative": (xattr.outputs(torch.tensor([-2, 0, -3], dtype=dt)), xattr.outputs(K_IDX)) for dt in SIGNED})
    assert not _mismatches(METHODS[method], forms)


@pytest.mark.parametrize("method", list(METHODS))
def test_outputs_bk_of_every_integer_dtype_give_int64s_numbers(method):
    forms = {str(dt): (xattr.outputs(BK_IDX.to(dt)), xattr.outputs(BK_IDX)) for dt in SMALL}
    assert not _mismatches(METHODS[method], forms)


@pytest.mark.parametrize("method", list(METHODS))
def test_negative_outputs_bk_equal_their_wrapped_positive_indices(method):
    negative = torch.tensor([[-1, 0], [1, -3], [-4, 2], [2, -1]])  # BK_IDX, counted from the end where negative
    assert torch.equal(negative.remainder(4), BK_IDX)
    forms = {str(dt): (xattr.outputs(negative.to(dt)), xattr.outputs(BK_IDX)) for dt in [torch.int64] + SIGNED}
    assert not _mismatches(METHODS[method], forms)


def test_negative_bk_rows_wrap_and_out_of_range_ones_are_still_refused():
    negative = torch.tensor([[-1, 0], [1, -3], [-4, 2], [2, -1]])
    for dt in [torch.int64] + SIGNED:
        rows = xattr.target(NET, xattr.outputs(negative.to(dt)))(X)
        assert torch.equal(rows, NET(X).gather(1, BK_IDX))
    for idx in ([[0, -5], [1, 2]], [[0, 4], [1, 2]]):  # wrapping never hides an index out of range
        for dt in (torch.int64, torch.int8):
            with pytest.raises(IndexError, match=r"must lie in \[0, 4\)"):
                xattr.saliency(xattr.target(NET, xattr.outputs(torch.tensor(idx, dtype=dt))))(X[:2])


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["autograd", "no_grad"])
def test_target_rows_of_every_integer_dtype(grad_enabled):
    """The selected rows themselves, on a 2-d output (one flat `take` without autograd) and a 3-d
    one (a gather along the output axis)."""
    three_d = lambda v: NET(v).unsqueeze(-1) * torch.arange(1.0, 3.0)  # noqa: E731 - (B, 4, 2)
    bad = []
    with torch.set_grad_enabled(grad_enabled):
        for model in (NET, three_d):
            want = xattr.target(model, LABELS)(X)
            for dt in SMALL:
                try:
                    got = xattr.target(model, LABELS.to(dt))(X)
                    ok = torch.equal(got, want)
                except Exception as err:  # noqa: BLE001
                    ok = f"{type(err).__name__}: {err}"
                if ok is not True:
                    bad.append((dt, model is NET, ok))
    assert not bad


def test_a_traced_target_of_a_small_dtype_is_an_index_not_a_mask():
    """Under vmap each example's 0-d target is traced: a uint8 one still indexes (per-example
    gradients of the targeted rows, written with torch.func)."""
    row = lambda xi, ti: xattr.target(NET, ti)(xi[None])[0]  # noqa: E731
    want = xattr.saliency(xattr.target(NET, LABELS), abs=False)(X)
    for dt in (torch.uint8, torch.int16):
        torch.testing.assert_close(torch.func.vmap(row)(X, LABELS.to(dt)), NET(X)[torch.arange(4), LABELS])
        torch.testing.assert_close(torch.func.vmap(torch.func.grad(row))(X, LABELS.to(dt)), want)


COMPAT = {
    "Saliency": lambda t: C.Saliency(NET).attribute(X, target=t),
    "IntegratedGradients": lambda t: C.IntegratedGradients(NET).attribute(X, target=t, n_steps=8),
    "DeepLift": lambda t: C.DeepLift(NET).attribute(X, target=t),
    "LayerGradCam": lambda t: C.LayerGradCam(CNN, CNN[1]).attribute(IMG, target=t),
    "FeatureAblation": lambda t: C.FeatureAblation(NET).attribute(X, target=t),
}


def test_compat_classes_with_targets_of_every_integer_dtype():
    """Captum's classes take a target tensor of any integer dtype, with int64's numbers (the
    adapters cast it to int64 before xattr sees it: this pins that, it passed before too)."""
    bad = {name: _mismatches(method, {str(dt): (LABELS.to(dt), LABELS) for dt in SMALL}) for name, method in COMPAT.items()}
    assert not any(bad.values()), bad


@pytest.mark.parametrize(
    "make",
    [
        lambda: xattr.outputs(torch.tensor([True, False, True, False])),
        lambda: xattr.target(NET, torch.tensor([True, False, True, False]))(X),
        lambda: xattr.target(NET, torch.tensor(True))(X),
        lambda: xattr.target(NET, xattr.Outputs(torch.tensor([True, False, True, False])))(X),
    ],
    ids=["outputs(bool)", "per-example bool", "0-d bool", "Outputs(bool) built directly"],
)
def test_a_bool_tensor_is_refused_as_an_ambiguous_mask(make):
    with pytest.raises(TypeError, match="bool values: as a mask or as the indices 0/1"):
        make()


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_an_outputs_tensor_of_another_dtype_is_refused(dtype):
    with pytest.raises(TypeError, match="must hold integer class indices"):
        xattr.outputs(K_IDX.to(dtype))


# ---------------------------------------------------------------------------- empty batches

EMPTY_TARGETS = {
    "outputs list": (xattr.outputs([0, 2]), 2),
    "outputs None": (xattr.outputs(None), 4),
    "outputs (0, K)": (xattr.outputs(torch.zeros(0, 2, dtype=torch.uint8)), 2),
}


@pytest.mark.parametrize("form", list(EMPTY_TARGETS))
@pytest.mark.parametrize("method", [m for m in METHODS if m not in PERTURBATION])
def test_an_empty_batch_with_k_outputs_gives_empty_attributions(method, form):
    """As with one target (tests/test_errors.py): (0, K, ...) attributions, (0, K) deltas; the
    perturbation methods refuse an empty batch either way (tests/test_perturb.py)."""
    t, k = EMPTY_TARGETS[form]
    out = _leaves(_methods(X[:0], IMG[:0])[method](t))
    assert out[0].shape[:2] == (0, k)
    if len(out) == 2:  # the delta
        assert out[1].shape == (0, k)


@pytest.mark.parametrize("t", [1, torch.zeros(0, dtype=torch.int16)], ids=["int", "per-example"])
def test_an_empty_batch_gives_empty_deltas(t):
    x0 = X[:0]
    for method in (xattr.integrated_gradients, xattr.deep_lift, xattr.layer_deep_lift):
        f = xattr.target(NET, t)
        fn = method(xattr.at_layer(f, NET[1]) if method is xattr.layer_deep_lift else f, return_delta=True)
        attr, delta = fn(x0)
        assert attr.shape[0] == 0 and delta.shape == (0,)
    attr, delta = xattr.gradient_shap(xattr.target(NET, t), baselines=BG, generator=0, return_delta=True)(x0)
    assert attr.shape == (0, 5) and delta.shape == (0,)
    assert xattr.completeness_gap(xattr.target(NET, xattr.outputs([0, 3])), (x0,), 0, torch.zeros(0, 2, 5), 0.0).shape == (0, 2)


def test_a_model_returning_a_mapping_names_its_tensors():
    """A dict or a Hugging Face ModelOutput: the error names the tensors and how to pick one."""
    from collections import OrderedDict

    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    for out_type in (dict, OrderedDict):
        model = lambda x, out_type=out_type: out_type(logits=lin(x), hidden=None)  # noqa: E731
        with pytest.raises(TypeError, match=r"the tensors \['logits'\]: pick one .*model\(\*args\)\['logits'\]"):
            xattr.saliency(xattr.target(model, 1))(x)
        picked = xattr.target(lambda x, m=model: m(x)["logits"], 1)
        torch.testing.assert_close(xattr.saliency(picked, abs=False)(x), lin.weight[1].expand(4, 3))
