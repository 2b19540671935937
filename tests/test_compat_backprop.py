"""xattr.compat.captum's rule-based classes against Captum 0.9's own numbers (stored; captum is not needed).

GuidedBackprop, Deconvolution, GuidedGradCam, DeepLift, DeepLiftShap and their layer and neuron
variants. The cases live in tests/gen_captum_backprop_expected.py, which wrote Captum's numbers
(and its signatures) into tests/captum_backprop_expected.py; both libraries go through the same
``run`` function. The documented differences (docs/migration_rules.md, "Rule-based backpropagation")
are tested against Captum's stored numbers for them.
"""

import contextlib
import inspect
import warnings

import pytest
import torch

import xattr
from xattr.compat import captum as X
from xattr.rule import ELEMENTWISE, Rule, pullback

try:
    from .stored import assert_matches_stored
except ImportError:
    from stored import assert_matches_stored

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_backprop_expected as E
    from . import gen_captum_backprop_expected as G
except ImportError:
    import captum_backprop_expected as E
    import gen_captum_backprop_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES + G.DIFF_CASES}
TOL = dict(rtol=1e-6, atol=1e-8)  # 10-digit storage
EXACT = 1e-12  # a summation-to-delta gap that holds (float64)
BROKEN = 1e-3  # one that does not


def _close(out, expected, **tol):
    assert_matches_stored(out, expected, **{**TOL, **tol})


def _split_delta(case, out):
    return out if case.kwargs.get("return_convergence_delta") else (out, None)


def _stored(name):
    """Captum's stored attributions of a case with one input tensor."""
    return torch.tensor(E.EXPECTED[name]["attr"], dtype=torch.float64)


def _run(name, **overrides):
    return G.run(CASES[name], X, MODELS, **overrides)


@pytest.mark.parametrize("name", [c.name for c in G.CASES])
def test_same_numbers_as_captum(name):
    case = CASES[name]
    with _warnings_as_captums(case):
        attr, delta = _split_delta(case, _run(name))
    _close(attr, E.EXPECTED[name]["attr"])
    if "delta" in E.EXPECTED[name]:
        _close(delta, E.EXPECTED[name]["delta"], atol=1e-10)


@contextlib.contextmanager
def _warnings_as_captums(case):
    """The GuidedGradCam case with a vector input warns (as Captum does); the others must not."""
    if case.name == "ggc_vector_input_empty":
        with pytest.warns(UserWarning, match="empty tensor"):
            yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


# ----------------------------------------------------------------------------- Captum's signatures and flags


def _params(fn) -> list:
    """(name, repr(default) or None) after self, leaving out xattr-only keyword-only parameters."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    kept = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    return [(p.name, None if p.default is inspect.Parameter.empty else repr(p.default)) for p in kept]


@pytest.mark.parametrize("cls", list(E.SIGNATURES))
def test_signatures_are_captums(cls):
    for method, expected in E.SIGNATURES[cls].items():
        assert _params(getattr(getattr(X, cls), method)) == [tuple(p) for p in expected], f"{cls}.{method}"


FLAGS = {  # class: (has_convergence_delta, multiplies_by_inputs), Captum 0.9's values
    "GuidedBackprop": (False, False),
    "Deconvolution": (False, False),
    "GuidedGradCam": (False, False),
    "DeepLift": (True, True),
    "DeepLiftShap": (True, True),
    "LayerDeepLift": (True, True),
    "LayerDeepLiftShap": (True, True),
    "NeuronDeepLift": (False, True),
    "NeuronDeepLiftShap": (False, True),
    "NeuronGuidedBackprop": (False, False),
    "NeuronDeconvolution": (False, False),
}


@pytest.mark.parametrize("cls", list(FLAGS))
def test_flags(cls):
    model = MODELS["relu"]
    layer = () if cls in ("GuidedBackprop", "Deconvolution", "DeepLift", "DeepLiftShap") else (model[2],)
    obj = getattr(X, cls)(model, *layer)
    assert (obj.has_convergence_delta(), obj.multiplies_by_inputs) == FLAGS[cls]
    if FLAGS[cls][1]:
        assert getattr(X, cls)(model, *layer, multiply_by_inputs=False).multiplies_by_inputs is False


# ----------------------------------------------------------------------------- the functional core


def test_adapters_are_the_functional_compositions():
    model, x = MODELS["relu"], G.X
    f = xattr.target(model, 1)
    dl, delta = X.DeepLift(model).attribute(x, G.B_EACH, target=1, return_convergence_delta=True)
    ref, ref_delta = xattr.deep_lift(f, baselines=G.B_EACH, return_delta=True)(x)
    torch.testing.assert_close((dl, delta), (ref, ref_delta))
    torch.testing.assert_close(X.GuidedBackprop(model).attribute(x, 1), xattr.guided_backprop(f)(x))
    torch.testing.assert_close(X.Deconvolution(model).attribute(x, 1), xattr.deconvolution(f)(x))
    split = xattr.at_layer(model, model[2])
    torch.testing.assert_close(
        X.NeuronDeepLift(model, model[2]).attribute(x, 3, G.B_ROW),
        xattr.deep_lift(xattr.neuron(split, 3), baselines=G.B_ROW)(x),
    )
    torch.testing.assert_close(
        X.NeuronDeepLiftShap(model, model[2]).attribute(x, 3, G.B_DIST),
        xattr.deep_lift_shap(xattr.neuron(split, 3), baselines=G.B_DIST)(x),
    )
    torch.testing.assert_close(
        X.NeuronGuidedBackprop(model, model[2]).attribute(x, 2), xattr.guided_backprop(xattr.neuron(split, 2))(x)
    )
    torch.testing.assert_close(
        X.NeuronDeconvolution(model, model[2]).attribute(x, 2), xattr.deconvolution(xattr.neuron(split, 2))(x)
    )
    layer_split = xattr.at_layer(f, model[2])
    torch.testing.assert_close(
        X.LayerDeepLift(model, model[2]).attribute(x, G.B_EACH, target=1),
        xattr.layer_deep_lift(layer_split, baselines=G.B_EACH)(x),
    )
    torch.testing.assert_close(
        X.LayerDeepLiftShap(model, model[2]).attribute(x, G.B_DIST, target=1),
        xattr.layer_deep_lift_shap(layer_split, baselines=G.B_DIST)(x),
    )
    cnn = MODELS["cnn"]
    torch.testing.assert_close(
        X.GuidedGradCam(cnn, cnn[2]).attribute(G.IMG, 1, interpolate_mode="bilinear"),
        xattr.guided_grad_cam(xattr.at_layer(xattr.target(cnn, 1), cnn[2]), mode="bilinear")(G.IMG),
    )


@pytest.mark.parametrize("cls", ["DeepLiftShap", "LayerDeepLiftShap"])
def test_shap_deltas_are_example_major(cls):
    """Captum's layout: delta[i * N + k] is the gap of example i against baseline row k."""
    model = MODELS["relu"]
    layer = () if cls == "DeepLiftShap" else (model[2],)
    single = X.DeepLift if cls == "DeepLiftShap" else X.LayerDeepLift
    _, delta = getattr(X, cls)(model, *layer).attribute(G.X, G.B_DIST, target=2, return_convergence_delta=True)
    n = G.B_DIST.shape[0]
    assert delta.shape == (G.X.shape[0] * n,)
    for k in range(n):
        _, dk = single(model, *layer).attribute(G.X, G.B_DIST[k : k + 1], target=2, return_convergence_delta=True)
        torch.testing.assert_close(delta.reshape(-1, n)[:, k], dk)


# ----------------------------------------------------------------------------- documented differences


@pytest.mark.parametrize("kind", ["pool", "act"])
def test_hooked_modules_back_to_back(kind):
    """Captum's DeepLift on nn.ReLU -> nn.MaxPool2d (or nn.Tanh -> nn.Sigmoid) called back to back.

    Captum records the first module's output gradient with a tensor hook on the tensor the two
    share; that hook runs before the second module's input hook swaps the gradient for its
    DeepLift multiplier, so the first module rescales the ordinary gradient and summation-to-delta
    fails. A no-op module between them (the ``separated`` twin, same parameters) fixes Captum, and
    its numbers there are xattr's on the back-to-back model, where xattr's gap is rounding.
    """
    adjacent, separated = MODELS[f"adjacent_{kind}"], MODELS[f"separated_{kind}"]
    for p, q in zip(adjacent.parameters(), separated.parameters(), strict=True):
        assert torch.equal(p, q)
    attr, delta = _run(f"adjacent_{kind}")
    assert delta.abs().max() < EXACT
    assert torch.tensor(E.EXPECTED[f"adjacent_{kind}"]["delta"]).abs().max() > BROKEN  # Captum's own gap
    assert torch.tensor(E.EXPECTED[f"separated_{kind}"]["delta"]).abs().max() < EXACT
    _close(attr, E.EXPECTED[f"separated_{kind}"]["attr"])
    with pytest.raises(AssertionError):
        _close(attr, E.EXPECTED[f"adjacent_{kind}"]["attr"])


def test_functional_relu_deep_lift():
    """F.relu: Captum's hooks never see it, so its DeepLift passes the ordinary gradient there.

    xattr applies the rule to the operation: on the F.relu twin of the nn.ReLU model (same
    parameters) it gives Captum's numbers for the nn.ReLU model, with exact summation-to-delta.
    """
    attr, delta = _run("functional_dl")
    assert delta.abs().max() < EXACT
    assert torch.tensor(E.EXPECTED["functional_dl"]["delta"]).abs().max() > BROKEN
    _close(attr, E.EXPECTED["dl_relu_each_delta"]["attr"])
    with pytest.raises(AssertionError):
        _close(attr, E.EXPECTED["functional_dl"]["attr"])


@pytest.mark.parametrize("method, twin", [("gbp", "gbp_relu_int"), ("deconv", "deconv_relu")])
def test_functional_relu_guided_backprop_and_deconvolution(method, twin):
    """On the F.relu model Captum's GuidedBackprop / Deconvolution are the plain gradient; xattr's
    are its guided ones, the numbers Captum gives for the nn.ReLU twin."""
    case = CASES[f"functional_{method}"]
    plain = xattr.saliency(xattr.target(MODELS["functional"], case.kwargs["target"]), abs=False)(G.X)
    _close(plain, E.EXPECTED[case.name]["attr"])  # Captum's = the ordinary gradient
    ours = _run(case.name)
    _close(ours, E.EXPECTED[twin]["attr"])
    assert not torch.allclose(ours, plain)


class Ordinary(Rule):
    """The op's own derivative (what Captum's layer gradient sees at a nonlinear layer's input)."""

    kinds = ELEMENTWISE
    keep_inputs = True

    def backward(self, op, saved, grad):
        return (pullback(op.fn, saved.inputs[0])[1](grad)[0],)


@pytest.mark.parametrize("name, method", [
    ("layer_input_relu", xattr.layer_deep_lift), ("layer_input_elu_shap", xattr.layer_deep_lift_shap),
])  # fmt: skip
def test_layer_input_of_a_nonlinear_layer(name, method):
    """LayerDeepLift(Shap) with attribute_to_layer_input=True on an nn.ReLU / nn.ELU layer.

    Captum's pre-hook capturing the layer's input runs after the DeepLift pre-hook has swapped
    that input for a clone, so its gradient is taken inside the layer, before the layer's Rescale
    multiplier: Captum's numbers are xattr's with the layer's own rule replaced by its ordinary
    derivative, and its gap is not zero. xattr applies the rule, and its gap is rounding.
    """
    case = CASES[name]
    model = MODELS[case.model]
    layer = model.get_submodule(case.layer)
    attr, delta = _run(name)
    assert delta.abs().max() < EXACT
    assert torch.tensor(E.EXPECTED[name]["delta"]).abs().max() > 1e-5
    split = xattr.at_layer(xattr.target(model, case.kwargs["target"]), layer, inputs=True)
    captums = method(split, baselines=case.kwargs["baselines"], mapping={layer: Ordinary()})(G.X)
    _close(captums, E.EXPECTED[name]["attr"])
    with pytest.raises(AssertionError):
        _close(attr, E.EXPECTED[name]["attr"])


def test_max_pool_inputs_equal_to_their_references():
    """Where a max-pool input equals its reference, both libraries fall back to the ordinary
    gradient; Captum's takes the first example's (``grad_input[0]``, broadcast over the batch).
    Captum is right for the first example, and for the second one alone; xattr for every example
    in any batch. Only the multipliers differ (the attributions there are multiplied by 0)."""
    ours = _run("pool_equal_region")
    captum_batch = _stored("pool_equal_region")
    captum_alone = _stored("pool_equal_region_second_alone")
    torch.testing.assert_close(ours[:1], captum_batch[:1], **TOL)
    torch.testing.assert_close(ours[1:2], captum_alone, **TOL)
    assert not torch.allclose(captum_batch[1:2], captum_alone)
    full = X.DeepLift(MODELS["pool"]).attribute(G.IMG3, G.B_REGION, target=1, return_convergence_delta=True)
    assert full[1].abs().max() < EXACT


def test_softmax_rule_is_per_example():
    """Captum's softmax rule subtracts one mean over the whole doubled batch (every example and
    reference), so an example's attributions change with the other examples in the batch. xattr
    subtracts the mean over the softmax dim per row: alone, the doubled batch holds one example and
    its reference, whose multipliers are equal, and the two rules agree."""
    alone, _ = _run("softmax_alone")
    batch, _ = _run("softmax_batch")
    _close(alone, E.EXPECTED["softmax_alone"]["attr"])
    torch.testing.assert_close(batch[:1], alone)  # xattr: independent of the batch
    captum_alone = _stored("softmax_alone")
    captum_batch = _stored("softmax_batch")
    assert not torch.allclose(captum_batch[:1], captum_alone)  # Captum: not
    assert not torch.allclose(batch, captum_batch)


def test_neuron_selector_multiplying_two_neurons():
    """``h[:, 0] * h[:, 2]`` is a product of two activations: xattr's DeepLift passes each factor
    the other's average over the example and its reference (docs/migration_rules.md), so the
    attributions are the two neurons' DeepLift weighted by those averages and sum to the change
    of the product. Captum keeps the product's gradient: its sum misses the change."""
    model, x, b = MODELS["acts"], G.X, G.B_EACH
    attr = _run("ndl_callable")
    split = xattr.at_layer(model, model[4])
    h, h_ref = model[:5](x).detach(), model[:5](b).detach()
    avg = (h + h_ref) / 2
    first, third = (xattr.deep_lift(xattr.neuron(split, j), baselines=b)(x) for j in (0, 2))
    torch.testing.assert_close(attr, avg[:, 2:3] * first + avg[:, 0:1] * third, rtol=1e-12, atol=1e-14)
    change = h[:, 0] * h[:, 2] - h_ref[:, 0] * h_ref[:, 2]
    assert (attr.sum(1) - change).abs().max() < EXACT
    assert (_stored("ndl_callable").sum(1) - change).abs().max() > 1e-3 * change.abs().max()  # 0.8% off


class Reused(torch.nn.Module):
    """One nn.ReLU module called twice."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.l3(self.act(self.l2(self.act(self.l1(x)))))


def test_reused_relu_module():
    """A ReLU module called twice: Captum's DeepLift raises; xattr applies the rule at each call."""
    model = G._build(1, Reused)
    attr, delta = X.DeepLift(model).attribute(G.X, G.B_EACH, target=1, return_convergence_delta=True)
    assert delta.abs().max() < EXACT and attr.abs().min() > 0


def test_captums_zeros_like_baseline_runs_one_shared_reference_row():
    """``DeepLift(model).attribute(x, baselines=torch.zeros_like(x))``, Captum's usual spelling, runs
    the examples and one shared reference row (NOTE: [Shared reference]), with the numbers and
    deltas of the baseline given as the number 0 (test_same_numbers_as_captum holds those to
    Captum's)."""
    model = MODELS["relu"]
    rows = []
    handle = model.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[0]))
    try:
        attr, delta = X.DeepLift(model).attribute(G.X, torch.zeros_like(G.X), target=1, return_convergence_delta=True)
    finally:
        handle.remove()
    assert rows == [G.X.shape[0] + 1]
    want, want_delta = X.DeepLift(model).attribute(G.X, 0.0, target=1, return_convergence_delta=True)
    assert torch.allclose(attr, want, rtol=1e-12, atol=1e-14) and torch.allclose(delta, want_delta, rtol=1e-12, atol=1e-14)
    assert delta.abs().max() < EXACT


# ----------------------------------------------------------------------------- Captum's conventions


def test_tuple_in_tuple_out_tensor_in_tensor_out():
    model = MODELS["relu"]
    for obj, kw in [
        (X.DeepLift(model), {"target": 0}),
        (X.DeepLiftShap(model), {"baselines": G.B_DIST, "target": 0}),
        (X.GuidedBackprop(model), {"target": 0}),
        (X.NeuronDeepLift(model, model[2]), {"neuron_selector": 1}),
        (X.NeuronGuidedBackprop(model, model[2]), {"neuron_selector": 2}),
    ]:
        out = obj.attribute(G.X, **kw)
        assert isinstance(out, torch.Tensor) and out.shape == G.X.shape
        out = obj.attribute((G.X,), **kw)
        assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == G.X.shape


def test_layer_structure_out_whatever_the_inputs_structure():
    model = MODELS["relu"]
    for cls, base in [(X.LayerDeepLift, G.B_ROW), (X.LayerDeepLiftShap, G.B_DIST)]:
        plain = cls(model, model[2]).attribute(G.X, base, target=1)
        tupled = cls(model, model[2]).attribute((G.X,), (base,), target=1)
        assert isinstance(tupled, torch.Tensor) and tupled.shape == (2, 4)
        torch.testing.assert_close(tupled, plain)


def test_noise_tunnel_around_deep_lift():
    """stdevs=0: the tunnel's mean is DeepLift's; deltas are one per noisy copy, example-major."""
    model = MODELS["relu"]
    dl = X.DeepLift(model)
    attr, delta = X.NoiseTunnel(dl).attribute(
        G.X, nt_samples=3, stdevs=0.0, baselines=G.B_EACH, target=[1, 0], return_convergence_delta=True
    )
    ref, ref_delta = dl.attribute(G.X, G.B_EACH, target=[1, 0], return_convergence_delta=True)
    torch.testing.assert_close(attr, ref)
    torch.testing.assert_close(delta, ref_delta.repeat_interleave(3))


def test_custom_attribution_func_arity():
    model = MODELS["relu"]
    with pytest.raises(ValueError, match="1 to 3 parameters"):
        X.DeepLift(model).attribute(G.X, target=0, custom_attribution_func=lambda m, x, b, extra: m)
    with pytest.raises(ValueError, match="returned 2 tensors for 1 attributed input"):  # Captum asserts too
        X.DeepLift(model).attribute(G.X, target=0, custom_attribution_func=lambda m: (m[0], 2 * m[0]))


def test_one_baseline_row_is_accepted_by_deep_lift_shap():
    """Leniency: Captum asserts N > 1 for DeepLiftShap; xattr accepts one row (DeepLift's numbers)."""
    model = MODELS["relu"]
    one = X.DeepLiftShap(model).attribute(G.X, G.B_ROW, target=2)
    torch.testing.assert_close(one, X.DeepLift(model).attribute(G.X, G.B_ROW, target=2))


def test_grad_kwargs_not_supported():
    model = MODELS["relu"]
    with pytest.raises(ValueError, match="grad_kwargs"):
        X.LayerDeepLift(model, model[2]).attribute(G.X, target=1, grad_kwargs={"retain_graph": True})


def test_no_hooks_left_and_inputs_untouched():
    model = MODELS["cnn"]
    img = G.IMG.clone()
    X.DeepLift(model).attribute(img, G.B_IMG, target=1)
    X.GuidedGradCam(model, model[2]).attribute(img, 1)
    X.NeuronDeconvolution(model, model[5]).attribute(img, 4)
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert not img.requires_grad and torch.equal(img, G.IMG)


@pytest.mark.parametrize("cls", ["DeepLift", "LayerDeepLift", "DeepLiftShap", "LayerDeepLiftShap"])
def test_list_of_tuples_target_with_a_shared_reference_keeps_summation_to_delta(cls):
    """A per-example list of tuple targets picks each example's own output for its reference row
    too (one reference row is shared by the batch; it used to take example 0's target)."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)).double().eval()
    model = lambda x: lin(x).reshape(-1, 2, 2)  # noqa: E731
    x = torch.randn(3, 3, dtype=torch.float64)
    shap = cls.endswith("Shap")
    baselines = torch.randn(4, 3, dtype=torch.float64) if shap else 0.0
    explainer = getattr(X, cls)(model, lin[0]) if cls.startswith("Layer") else getattr(X, cls)(model)
    attr, delta = explainer.attribute(x, baselines, target=[(1, 1), (0, 0), (1, 0)], return_convergence_delta=True)
    assert delta.abs().max() < EXACT
    if not shap:  # the same numbers as one tensor target per example on the flattened outputs
        flat = lambda x: lin(x)  # noqa: E731
        explainer = getattr(X, cls)(flat, lin[0]) if cls.startswith("Layer") else getattr(X, cls)(flat)
        torch.testing.assert_close(attr, explainer.attribute(x, baselines, target=torch.tensor([3, 0, 2])))


def test_float_tensor_target_is_a_type_error():
    lin = torch.nn.Linear(3, 2).double()
    with pytest.raises(TypeError, match="integer"):
        X.DeepLift(lin).attribute(torch.randn(2, 3, dtype=torch.float64), target=torch.tensor([1.0, 0.0]))


def test_bool_tensor_target_is_a_type_error():
    # .long() would turn a mask into the per-example indices 0/1 without a word
    lin = torch.nn.Linear(3, 2).double()
    with pytest.raises(TypeError, match="integer"):
        X.DeepLift(lin).attribute(torch.randn(2, 3, dtype=torch.float64), target=torch.tensor([True, False]))
