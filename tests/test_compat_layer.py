"""xattr.compat.captum's layer classes against Captum 0.9's own numbers (stored; no captum here).

The cases live in tests/gen_captum_layer_expected.py, which wrote Captum's numbers into
tests/captum_layer_expected.py; both libraries go through the same ``run`` function.
"""

import math

import pytest
import torch

import xattr
from xattr.compat import captum as X

try:
    from .stored import assert_matches_stored
except ImportError:
    from stored import assert_matches_stored

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_layer_expected as E
    from . import gen_captum_layer_expected as G
except ImportError:
    import captum_layer_expected as E
    import gen_captum_layer_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES}
TRAPEZOID = ["lig_riemann_trapezoid", "ii_riemann_trapezoid"]  # documented difference, tested below
N_X = 4000
TOL = dict(rtol=1e-6, atol=1e-8)  # Captum's float32 alphas and 10-digit storage


def _close(out, expected, **tol):
    assert_matches_stored(out, expected, **{**TOL, **tol})


def _attr_and_delta(case, out):
    return out if case.kwargs.get("return_convergence_delta") else (out, None)


def _check(case, out):
    attr, delta = _attr_and_delta(case, out)
    expected = E.EXPECTED[case.name]
    if expected.get("list"):
        assert isinstance(attr, list), "a list of layers gives a list (Captum's convention)"
        attr = tuple(attr)
    _close(attr, expected["attr"])
    if "delta" in expected:
        _close(delta, expected["delta"], atol=1e-7)


@pytest.mark.parametrize("name", [n for n in CASES if n not in TRAPEZOID])
def test_same_numbers_as_captum(name):
    case = CASES[name]
    _check(case, G.run(case, X, MODELS))


@pytest.mark.parametrize("name", TRAPEZOID)
def test_trapezoid_is_captum_times_n_over_n_minus_1(name):
    """Documented difference: exact trapezoid weights (sum 1) vs Captum's (sum 1 - 1/n)."""
    case = CASES[name]
    n = case.kwargs["n_steps"]
    attr, delta = _attr_and_delta(case, G.run(case, X, MODELS))
    _close(attr * (n - 1) / n, E.EXPECTED[name]["attr"])
    if delta is not None:  # Captum's rule under-integrates: its completeness gap is far larger
        assert (delta.abs() < torch.tensor(E.EXPECTED[name]["delta"]).abs() / 10).all()


def test_conductance_trapezoid_matches_exactly():
    """Conductance uses only the rule's nodes, which are Captum's: no factor there."""
    case = CASES["cond_riemann_trapezoid"]
    _check(case, G.run(case, X, MODELS))


@pytest.mark.parametrize("key", list(E.INTERPOLATE), ids=lambda k: f"{k[0]}-{k[2]}")
def test_interpolate(key):
    name, dims, mode = key
    cam = torch.tensor(E.EXPECTED[name]["attr"], dtype=torch.float64)
    _close(X.LayerAttribution.interpolate(cam, dims, mode), E.INTERPOLATE[key])
    _close(X.LayerGradCam.interpolate(cam, dims, interpolate_mode=mode), E.INTERPOLATE[key])


# ----------------------------------------------------------------------------- LayerGradientShap, statistically


def _repeat(inputs, m):
    if isinstance(inputs, tuple):
        return tuple(_repeat(x, m) for x in inputs)
    return inputs.repeat((m,) + (1,) * (inputs.ndim - 1))


@pytest.mark.parametrize("case", G.STAT_CASES, ids=lambda c: c.name)
def test_layer_gradient_shap_statistically_same_as_captum(case):
    """xattr's N_X-sample estimate agrees with Captum's N_CAPTUM-sample one within 5 standard errors."""
    est = G.run(case, X, MODELS, n_samples=N_X, generator=0)
    inputs = G.INPUTS[case.inputs]
    batch = inputs.shape[0]
    model = MODELS[case.model]
    obj = getattr(X, case.method)(model, G.layer_of(model, case.layer), **case.ctor)
    draws = obj.attribute(_repeat(inputs, N_X), **{**case.kwargs, "n_samples": 1, "generator": 1})
    draws = draws.reshape((N_X, batch) + tuple(draws.shape[1:]))  # one-sample attributions (m, B, ...)
    tol = 5 * draws.std(0) * math.sqrt(1 / N_X + 1 / G.N_CAPTUM) + 1e-9
    err = (est - torch.tensor(E.STAT[case.name]["attr"], dtype=est.dtype)).abs()
    assert (err <= tol).all(), f"errors {err.flatten().tolist()} over tolerances {tol.flatten().tolist()}"


def test_layer_gradient_shap_is_seeded():
    case = G.STAT_CASES[1]
    a = G.run(case, X, MODELS, n_samples=6, generator=3)
    torch.testing.assert_close(G.run(case, X, MODELS, n_samples=6, generator=3), a)
    assert not torch.equal(G.run(case, X, MODELS, n_samples=6, generator=4), a)


# ----------------------------------------------------------------------------- Captum's conventions


FLAGS = {  # class: (has_convergence_delta, multiplies_by_inputs), Captum 0.9's values
    "LayerActivation": (False, True),
    "LayerGradientXActivation": (False, True),
    "LayerIntegratedGradients": (True, True),
    "LayerConductance": (True, True),
    "InternalInfluence": (False, False),
    "LayerGradCam": (False, False),
    "LayerGradientShap": (True, True),
}


@pytest.mark.parametrize("cls", list(FLAGS))
def test_flags_and_constructor(cls):
    model = MODELS["mlp"]
    obj = getattr(X, cls)(model, model[2], None)  # device_ids accepted (and ignored)
    assert (obj.has_convergence_delta(), obj.multiplies_by_inputs) == FLAGS[cls]
    if cls in ("LayerGradientXActivation", "LayerIntegratedGradients", "LayerGradientShap"):
        assert getattr(X, cls)(model, model[2], multiply_by_inputs=False).multiplies_by_inputs is False


@pytest.mark.parametrize("cls, kw", [
    ("LayerConductance", {"n_steps": 4}),
    ("LayerIntegratedGradients", {"n_steps": 4}),
    ("InternalInfluence", {"n_steps": 4}),
    ("LayerGradientXActivation", {}),
    ("LayerGradientShap", {"baselines": torch.zeros(2, 3, dtype=torch.float64), "generator": 0}),
])  # fmt: skip
def test_layer_structure_out_whatever_the_inputs_structure(cls, kw):
    """Attributions follow the layer, not the inputs: a one-tuple of inputs still gives a tensor."""
    model = MODELS["mlp"]
    obj = getattr(X, cls)(model, model[2])
    plain = obj.attribute(G.INPUTS["x"], target=1, **kw)
    tupled = obj.attribute(G.INPUTS["x_tuple"], target=1, **kw)
    assert isinstance(tupled, torch.Tensor) and tupled.shape == (2, 4)
    torch.testing.assert_close(tupled, plain)


def test_reused_module_needs_call_index():
    """Documented difference: Captum silently uses the last call; xattr asks which call is meant."""
    model = MODELS["shared"]
    with pytest.raises(RuntimeError, match="call_index"):
        X.LayerConductance(model, model.act).attribute(G.INPUTS["x"], target=1)
    assert all(not m._forward_hooks for m in model.modules())
    first = X.LayerActivation(model, model.act, call_index=0).attribute(G.INPUTS["x"])
    torch.testing.assert_close(first, model.act(model.l1(G.INPUTS["x"])).detach())


def test_grad_kwargs_not_supported():
    model = MODELS["mlp"]
    with pytest.raises(ValueError, match="grad_kwargs"):
        X.LayerConductance(model, model[2]).attribute(G.INPUTS["x"], target=1, grad_kwargs={"retain_graph": True})


def test_gradient_x_activation_of_dependent_layers():
    """Captum (and the adapter) differentiate each listed layer in the unmodified model, and so
    does the functional joint split (total derivatives: the earlier layer's path through the
    later one counts)."""
    model = MODELS["mlp"]
    x = G.INPUTS["x"]
    per_layer = X.LayerGradientXActivation(model, [model[0], model[2]]).attribute(x, target=1)
    f = xattr.target(model, 1)
    for got, layer in zip(per_layer, [model[0], model[2]]):
        torch.testing.assert_close(got, xattr.gradient_x_activation(xattr.at_layer(f, layer))(x))
    joint = xattr.gradient_x_activation(xattr.at_layer(f, [model[0], model[2]]))(x)
    assert torch.count_nonzero(joint[0]) > 0
    torch.testing.assert_close(joint[0], per_layer[0])
    torch.testing.assert_close(joint[1], per_layer[1])


def test_noise_tunnel_free_layer_gradient_shap_delta_layout():
    """Deltas: one per (example, sample), example-major, as Captum's (exact on a linear model)."""
    case = CASES["lgs_linear_local_delta"]
    _, delta = G.run(case, X, MODELS)
    assert delta.shape == (2 * case.kwargs["n_samples"],)
