"""xattr.compat.captum's neuron classes against Captum 0.9's own numbers (stored; captum is not needed).

The cases live in tests/gen_captum_neuron_expected.py, which also wrote Captum's numbers into
tests/captum_neuron_expected.py; both libraries go through the same ``run`` function.
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
    from . import captum_neuron_expected as E
    from . import gen_captum_neuron_expected as G
except ImportError:
    import captum_neuron_expected as E
    import gen_captum_neuron_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES}
TOL = dict(rtol=1e-6, atol=1e-8)  # Captum's float32 step sizes and 10-digit storage


def _close(out, expected, **tol):
    assert_matches_stored(out, expected, **{**TOL, **tol})


def _scale(out, factor):
    return tuple(o * factor for o in out) if isinstance(out, tuple) else out * factor


def _trapezoid(case) -> bool:
    return case.kwargs.get("method", "riemann_trapezoid" if case.method == "NeuronConductance" else None) == G.TRAPEZOID


@pytest.mark.parametrize("name", [c.name for c in G.CASES if not _trapezoid(c)])
def test_same_numbers_as_captum(name):
    case = CASES[name]
    _close(G.run(case, X, MODELS), E.EXPECTED[name]["attr"])


@pytest.mark.parametrize("name", [c.name for c in G.CASES if _trapezoid(c)])
def test_trapezoid_is_captum_times_n_over_n_minus_1(name):
    """Documented difference: exact trapezoid weights (sum 1) vs Captum's (sum 1 - 1/n).

    NeuronConductance's default method is riemann_trapezoid, so its default numbers differ.
    """
    case = CASES[name]
    n = case.kwargs.get("n_steps", 50)
    out = G.run(case, X, MODELS)
    _close(_scale(out, (n - 1) / n), E.EXPECTED[name]["attr"])
    with pytest.raises(AssertionError):
        _close(out, E.EXPECTED[name]["attr"])


def test_neuron_gradient_shap_statistically_same_as_captum():
    """xattr's estimate agrees with Captum's 20000-sample one within 5 standard errors."""
    case = G.STAT_CASES[0]
    n = 4000
    est = G.run(case, X, MODELS, n_samples=n, generator=0)
    x = G.INPUTS[case.inputs]
    one = X.NeuronGradientShap(MODELS[case.model], MODELS[case.model].get_submodule(case.layer))
    draws = one.attribute(x.repeat(n, 1), **{**case.kwargs, "n_samples": 1, "generator": 1})  # n one-sample draws
    many = draws.reshape(n, *x.shape)
    tol = 5 * many.std(0) * math.sqrt(1 / n + 1 / G.N_CAPTUM) + 1e-9
    err = (est - torch.tensor(E.STAT[case.name]["attr"], dtype=est.dtype)).abs()
    assert (err <= tol).all(), f"errors {err.flatten().tolist()} over tolerances {tol.flatten().tolist()}"


# ----------------------------------------------------------------------------- the functional core


def test_adapters_are_the_functional_compositions():
    model = MODELS["mlp"]
    x, layer = G.X, model[2]
    split = xattr.at_layer(model, layer)
    neuron = xattr.neuron(split, 3)
    torch.testing.assert_close(
        X.NeuronGradient(model, layer).attribute(x, 3), xattr.saliency(neuron, abs=False)(x)
    )
    torch.testing.assert_close(
        X.NeuronIntegratedGradients(model, layer).attribute(x, 3, n_steps=9), xattr.integrated_gradients(neuron, n_steps=9)(x)
    )
    base = G.B_ROW
    torch.testing.assert_close(
        X.NeuronGradientShap(model, layer).attribute(x, 3, base, n_samples=6, generator=0),
        xattr.gradient_shap(neuron, baselines=base, n_samples=6, generator=0)(x),
    )
    cond = xattr.neuron_conductance(xattr.at_layer(xattr.target(model, 1), layer), 3, n_steps=9)
    torch.testing.assert_close(X.NeuronConductance(model, layer).attribute(x, 3, target=1, n_steps=9), cond(x))


# ----------------------------------------------------------------------------- Captum's conventions


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (X.NeuronGradient, {}),
        (X.NeuronIntegratedGradients, {"n_steps": 4}),
        (X.NeuronGradientShap, {"baselines": torch.zeros(3, 3, dtype=torch.float64), "generator": 0}),
        (X.NeuronConductance, {"n_steps": 4, "target": 0}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_tuple_in_tuple_out_tensor_in_tensor_out(make, kwargs):
    model = MODELS["mlp"]
    a = make(model, model[2])
    out = a.attribute(G.X, 1, **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == G.X.shape
    out = a.attribute((G.X,), 1, **kwargs)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == G.X.shape


def test_constructor_arguments_and_flags():
    model = MODELS["mlp"]
    assert not X.NeuronGradient(model, model[2], None).multiplies_by_inputs
    for cls in (X.NeuronIntegratedGradients, X.NeuronGradientShap, X.NeuronConductance):
        assert cls(model, model[2]).multiplies_by_inputs
        assert not cls(model, model[2], device_ids=None, multiply_by_inputs=False).multiplies_by_inputs
        assert not cls(model, model[2]).has_convergence_delta()


def test_no_hooks_left_and_inputs_untouched():
    model = MODELS["mlp"]
    x = G.X.clone()
    X.NeuronConductance(model, model[2]).attribute(x, 1, target=0, n_steps=4)
    X.NeuronGradient(model, model[2]).attribute(x, (slice(0, 2),))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not x.requires_grad and torch.equal(x, G.X)


def test_noise_tunnel_around_a_neuron_method():
    """The neuron adapters expose the same functional form, so NoiseTunnel wraps them too."""
    model = MODELS["mlp"]
    nig = X.NeuronIntegratedGradients(model, model[2])
    out = X.NoiseTunnel(nig).attribute(G.X, nt_samples=3, stdevs=0.0, neuron_selector=1, n_steps=5)
    torch.testing.assert_close(out, nig.attribute(G.X, 1, n_steps=5))


def test_bad_selector_and_grad_kwargs():
    model = MODELS["mlp"]
    with pytest.raises(TypeError, match="neuron_selector"):
        X.NeuronGradient(model, model[2]).attribute(G.X, [0.5])
    with pytest.raises(TypeError, match="neuron_selector"):
        X.NeuronGradient(model, model[2]).attribute(G.X, "0")
    # a list indexes like the tuple of its items, as in Captum: one neuron, not several
    conv = MODELS["conv"]
    torch.testing.assert_close(X.NeuronGradient(conv, conv[1]).attribute(G.IMG, [1, 0, 1]),
                               X.NeuronGradient(conv, conv[1]).attribute(G.IMG, (1, 0, 1)))
    with pytest.raises(NotImplementedError, match="grad_kwargs"):
        X.NeuronConductance(model, model[2]).attribute(G.X, 1, target=0, grad_kwargs={"retain_graph": True})
