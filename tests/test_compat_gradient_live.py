"""xattr.compat.captum's gradient classes against Captum 0.9 run live, on random configurations.

A fixed-seed generator draws small models (tests/gradient_live_configs.py, the models of
tests/rules_live_configs.py: Linear, Conv1d and Conv2d branches with batch norms, activations and
pools, a two-layer head, a (B, 3), (B, 2, 3) or (B,) output, float64 and sometimes float32) and
the keywords of one ``attribute`` call: one tensor or a tuple; targets as ints (also negative),
per-example lists and tensors, tuples and lists of tuples, None; pass-through arguments (a
per-example tensor, a string, a float, a flag); baselines as numbers, ``(1, ...)`` and
``(B, ...)`` tensors mixed per input; every integration method, ``n_steps``,
``internal_batch_size``, ``return_convergence_delta`` and ``multiply_by_inputs``; layers' inputs
and outputs and lists of layers; neuron selectors (ints, tuples, lists, slices, callables);
Grad-CAM's flags; baseline distributions as tensors and callables; noise tunnels of every type
around every class, with ``nt_samples``, ``nt_samples_batch_size``, ``stdevs`` as a number or a
tuple and ``draw_baseline_from_distrib``. Each class runs in both libraries on the same
configuration and must give Captum's structure, shapes, dtypes and numbers; with
``riemann_trapezoid`` xattr's exact weights are converted to Captum's first (docs/migration.md).

The random draws (GradientShap's baselines and path positions, the noise tunnel's noise) come
from different generators in the two libraries, so those configurations are drawn where the
draws cannot change the result: noise of standard deviation 0, baseline distributions whose rows
are one row, and affine models (activations the identity, max-pools average pools) for the
methods whose result is then a constant gradient. Where the draws matter, xattr's estimate and
Captum's agree within their sampling error (``test_random_estimates_agree_with_captums``).
The live tests skip without captum. Differences docs/migration.md and docs/migration_rules.md
document are not drawn (a layer's input that also feeds the residual path); where Captum 0.9
fails on valid input, xattr is checked against a reference computed by hand, which needs no
captum, and Captum's failure where it is installed.
"""

from __future__ import annotations

import math

import pytest
import torch

from xattr.compat import captum as X

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from .gradient_live_configs import (
        F64, Config, assert_same, captum_attr, configs, draw_baselines, draw_common, draw_distribution, draw_selector,
        draw_stdevs, layer_shape, leaves, mlp, module_names, quiet, random_case, run, tiled, to_captums_trapezoid,
        TwoInputs,
    )
except ImportError:
    from gradient_live_configs import (
        F64, Config, assert_same, captum_attr, configs, draw_baselines, draw_common, draw_distribution, draw_selector,
        draw_stdevs, layer_shape, leaves, mlp, module_names, quiet, random_case, run, tiled, to_captums_trapezoid,
        TwoInputs,
    )

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


# ----------------------------------------------------------------------------- drawing per class


def _path_keywords(rng, kw, batch, *, delta=True):
    kw["n_steps"] = rng.randint(2, 12)
    if rng.random() < 0.8:
        kw["method"] = rng.choice(METHODS)
    if rng.random() < 0.4:
        kw["internal_batch_size"] = rng.randint(1, 2 * batch * kw["n_steps"])
    if delta and rng.random() < 0.5:
        kw["return_convergence_delta"] = True


def _mbi(rng, constant=False):
    return {"multiply_by_inputs": False} if constant else {"multiply_by_inputs": rng.random() < 0.75}


def draw_saliency(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, linear=constant)
    if rng.random() < 0.6:
        kw["abs"] = rng.random() < 0.5
    return Config("Saliency", spec, inputs, kw)


def draw_input_x_gradient(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed)
    return Config("InputXGradient", spec, inputs, kw)


def draw_integrated_gradients(rng, g, seed, constant=False):
    spec, inputs, batch, kw = draw_common(rng, g, seed, linear=constant)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    _path_keywords(rng, kw, batch, delta=not constant)
    return Config("IntegratedGradients", spec, inputs, kw, _mbi(rng, constant))


def _shap_keywords(rng, g, spec, inputs, kw, mbi):
    """Draws that cancel out on an affine model: without the (x - b) factor and without deltas
    any distribution and noise; else a distribution of one row and no noise."""
    free = not mbi and not kw.get("return_convergence_delta")
    kw["baselines"] = draw_distribution(rng, g, spec, inputs, same_rows=not free)
    kw["n_samples"] = rng.randint(1, 5)
    if rng.random() < 0.7:
        kw["stdevs"] = draw_stdevs(rng, inputs, zero=not free)


def draw_gradient_shap(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, linear=True)
    ctor = _mbi(rng, constant)
    if not constant and rng.random() < 0.5:
        kw["return_convergence_delta"] = True
    _shap_keywords(rng, g, spec, inputs, kw, ctor["multiply_by_inputs"])
    return Config("GradientShap", spec, inputs, kw, ctor)


def _layer(rng, spec, to_input):
    """A layer; for its input, not one whose input feeds the residual path too (Captum's gradient
    layer methods count that path: documented in docs/migration_rules.md)."""
    shared = ("head.0", "skip") if spec.skip else ()
    return rng.choice([n for n in module_names(spec) if not (to_input and n in shared)])


def _feeds(spec, a, b):
    """Whether every path from layer ``a`` to the output runs through layer ``b`` (or back):
    two layers of one branch, or of the head, or a branch's and the head's without the residual
    layer beside the head. Captum's LayerIntegratedGradients raises for such a list
    (test_captum_layer_integrated_gradients_fails_for_a_layer_behind_another)."""
    pa, pb = a.split("."), b.split(".")
    if pa[0] == pb[0] == "branches":
        return pa[1] == pb[1]
    if pa[0] == pb[0] == "head":
        return True
    return {pa[0], pb[0]} == {"branches", "head"} and not spec.skip


def _layers(rng, spec, kw, *, lists=True, substituted=False):
    """A layer, or a list of two (``substituted``: layers set together, as layer IG does, where
    one must not lie behind the other)."""
    kw["attribute_to_layer_input"] = rng.random() < 0.35
    layer = _layer(rng, spec, kw["attribute_to_layer_input"])
    if lists and rng.random() < 0.4:
        for _ in range(4):
            other = _layer(rng, spec, kw["attribute_to_layer_input"])
            if other != layer and not (substituted and _feeds(spec, layer, other)):
                return sorted({layer, other})
    return layer


def draw_layer_activation(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, target=False)
    layer = _layers(rng, spec, kw)
    return Config("LayerActivation", spec, inputs, kw, layer=layer)


def draw_layer_gradient_x_activation(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, linear=constant)
    layer = _layers(rng, spec, kw)
    return Config("LayerGradientXActivation", spec, inputs, kw, _mbi(rng, constant), layer)


def draw_layer_integrated_gradients(rng, g, seed, constant=False):
    spec, inputs, batch, kw = draw_common(rng, g, seed, linear=constant)
    layer = _layers(rng, spec, kw, substituted=True)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    _path_keywords(rng, kw, batch, delta=not constant)
    return Config("LayerIntegratedGradients", spec, inputs, kw, _mbi(rng, constant), layer)


def draw_layer_conductance(rng, g, seed, constant=False):
    spec, inputs, batch, kw = draw_common(rng, g, seed)
    layer = _layers(rng, spec, kw, lists=False)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    _path_keywords(rng, kw, batch)
    return Config("LayerConductance", spec, inputs, kw, layer=layer)


def draw_internal_influence(rng, g, seed, constant=False):
    spec, inputs, batch, kw = draw_common(rng, g, seed, linear=constant)
    layer = _layers(rng, spec, kw, lists=False)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    _path_keywords(rng, kw, batch, delta=False)
    return Config("InternalInfluence", spec, inputs, kw, layer=layer)


def draw_layer_gradient_shap(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, linear=True)
    layer = _layers(rng, spec, kw, lists=False)
    ctor = _mbi(rng, constant)
    if not constant and rng.random() < 0.5:
        kw["return_convergence_delta"] = True
    _shap_keywords(rng, g, spec, inputs, kw, ctor["multiply_by_inputs"])
    return Config("LayerGradientShap", spec, inputs, kw, ctor, layer)


def draw_layer_grad_cam(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed)
    layer = _layers(rng, spec, kw, lists=False)
    if rng.random() < 0.6:
        kw["relu_attributions"] = rng.random() < 0.5
    if rng.random() < 0.6:
        kw["attr_dim_summation"] = rng.random() < 0.5
    return Config("LayerGradCam", spec, inputs, kw, layer=layer)


def first_neuron(h):
    """A callable selector picking one neuron (NeuronConductance's kind of callable)."""
    return h.reshape(h.shape[0], -1)[:, -1]


def _neuron(rng, spec, inputs, kw, *, conductance=False, linear=False):
    """A neuron every input reaches: with two inputs, one in the head. ``linear``: no callable
    multiplying two neurons (the neuron of an affine model stays affine)."""
    to_input = rng.random() < 0.35
    layer = rng.choice([n for n in module_names(spec) if len(spec.branches) == 1 or n.startswith(("head.", "skip"))])
    shape = layer_shape(spec, layer, inputs, to_input)
    selector = draw_selector(rng, shape, linear=linear)
    if conductance and callable(selector):
        selector = first_neuron
    kw["neuron_selector"] = selector
    kw["attribute_to_neuron_input"] = to_input
    return layer


def draw_neuron_gradient(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, target=False, linear=constant)
    layer = _neuron(rng, spec, inputs, kw, linear=constant)
    return Config("NeuronGradient", spec, inputs, kw, layer=layer)


def draw_neuron_integrated_gradients(rng, g, seed, constant=False):
    spec, inputs, batch, kw = draw_common(rng, g, seed, target=False, linear=constant)
    layer = _neuron(rng, spec, inputs, kw, linear=constant)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    _path_keywords(rng, kw, batch, delta=False)
    return Config("NeuronIntegratedGradients", spec, inputs, kw, _mbi(rng, constant), layer)


def draw_neuron_conductance(rng, g, seed, constant=False):
    spec, inputs, batch, kw = draw_common(rng, g, seed)
    layer = _neuron(rng, spec, inputs, kw, conductance=True)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    _path_keywords(rng, kw, batch, delta=False)
    return Config("NeuronConductance", spec, inputs, kw, _mbi(rng), layer)


def draw_neuron_gradient_shap(rng, g, seed, constant=False):
    spec, inputs, _, kw = draw_common(rng, g, seed, target=False, linear=True)
    layer = _neuron(rng, spec, inputs, kw, linear=True)
    ctor = _mbi(rng, constant)
    _shap_keywords(rng, g, spec, inputs, kw, ctor["multiply_by_inputs"])
    return Config("NeuronGradientShap", spec, inputs, kw, ctor, layer)


# the classes whose result on an affine model, without the (x - b) factor, is a constant gradient
CONSTANT = {
    "Saliency": draw_saliency, "IntegratedGradients": draw_integrated_gradients, "GradientShap": draw_gradient_shap,
    "LayerIntegratedGradients": draw_layer_integrated_gradients, "InternalInfluence": draw_internal_influence,
    "LayerGradientXActivation": draw_layer_gradient_x_activation, "LayerGradientShap": draw_layer_gradient_shap,
    "NeuronGradient": draw_neuron_gradient, "NeuronIntegratedGradients": draw_neuron_integrated_gradients,
    "NeuronGradientShap": draw_neuron_gradient_shap,
}  # fmt: skip
ANY = {
    **CONSTANT, "InputXGradient": draw_input_x_gradient, "LayerConductance": draw_layer_conductance,
    "LayerGradCam": draw_layer_grad_cam, "NeuronConductance": draw_neuron_conductance,
}  # fmt: skip
SHAP = ("GradientShap", "LayerGradientShap", "NeuronGradientShap")
WITH_BASELINES = ("IntegratedGradients", "LayerIntegratedGradients", "LayerConductance", "InternalInfluence",
                  "NeuronIntegratedGradients", "NeuronConductance")  # fmt: skip


def draw_noise_tunnel(rng, g, seed):
    """A noise tunnel around any class with noise of standard deviation 0, or around a class whose
    result on an affine model is a constant gradient with any noise."""
    constant = rng.random() < 0.5
    inner = rng.choice(sorted(CONSTANT if constant else ANY))
    cfg = (CONSTANT if constant else ANY)[inner](rng, g, seed, constant=constant)
    kw = cfg.kwargs
    layer = cfg.layer[0] if isinstance(cfg.layer, list) else cfg.layer  # Captum's raises for a list
    if inner in SHAP:  # Captum's tunnel takes a tensor distribution of one row or one per example
        dist = draw_distribution(rng, g, cfg.spec, cfg.inputs, same_rows=not constant)
        dist = dist() if callable(dist) else dist
        n = rng.choice([1, leaves(cfg.inputs)[0].shape[0]])
        kw["baselines"] = type(dist)(d[:1].expand(n, *d.shape[1:]).clone() for d in leaves(dist)) if isinstance(dist, tuple) else dist[:1].expand(n, *dist.shape[1:]).clone()
    if kw.get("method") == "riemann_trapezoid" and kw.get("return_convergence_delta"):
        del kw["return_convergence_delta"]  # one delta per copy: not converted (to_captums_trapezoid)
    kw["nt_type"] = rng.choice(["smoothgrad", "smoothgrad_sq", "vargrad"])
    kw["nt_samples"] = rng.randint(1, 5)
    if rng.random() < 0.5:
        kw["nt_samples_batch_size"] = rng.randint(1, kw["nt_samples"] + 1)
    kw["stdevs"] = draw_stdevs(rng, cfg.inputs, zero=not constant)
    if inner in WITH_BASELINES and rng.random() < 0.3:
        kw["draw_baseline_from_distrib"] = True
        dist = draw_distribution(rng, g, cfg.spec, cfg.inputs, same_rows=True)
        kw["baselines"] = dist() if callable(dist) else dist
    return Config("NoiseTunnel", cfg.spec, cfg.inputs, kw, cfg.ctor, layer, inner=inner)


# ----------------------------------------------------------------------------- the differential

DRAWS = {  # configurations per class: (draw, count)
    "Saliency": (draw_saliency, 25),
    "InputXGradient": (draw_input_x_gradient, 20),
    "IntegratedGradients": (draw_integrated_gradients, 50),
    "GradientShap": (draw_gradient_shap, 30),
    "NoiseTunnel": (draw_noise_tunnel, 70),
    "LayerActivation": (draw_layer_activation, 20),
    "LayerGradientXActivation": (draw_layer_gradient_x_activation, 30),
    "LayerIntegratedGradients": (draw_layer_integrated_gradients, 40),
    "LayerConductance": (draw_layer_conductance, 30),
    "InternalInfluence": (draw_internal_influence, 25),
    "LayerGradientShap": (draw_layer_gradient_shap, 30),
    "LayerGradCam": (draw_layer_grad_cam, 30),
    "NeuronGradient": (draw_neuron_gradient, 25),
    "NeuronIntegratedGradients": (draw_neuron_integrated_gradients, 30),
    "NeuronConductance": (draw_neuron_conductance, 30),
    "NeuronGradientShap": (draw_neuron_gradient_shap, 25),
}


@pytest.mark.parametrize("name", list(DRAWS))
def test_random_configurations_give_captums_numbers(name):
    captum = captum_attr()  # skips without captum
    draw, count = DRAWS[name]
    failures = []
    for i, cfg in enumerate(configs(draw, count, seed=sorted(DRAWS).index(name) + 1)):
        try:
            assert_same(to_captums_trapezoid(cfg, run(X, cfg)), run(captum, cfg))
        except Exception as e:  # noqa: BLE001
            failures.append(f"configuration {i}: {cfg}\n{type(e).__name__}: {str(e)[:400]}")
    assert not failures, f"{len(failures)} of {count}:\n" + "\n\n".join(failures)


# ----------------------------------------------------------------------------- random estimates

N_EST, N_DRAWS = 400, 300  # samples in each library's estimate; single draws for the spread


@pytest.mark.parametrize("k", range(7))
def test_random_estimates_agree_with_captums(k):
    """GradientShap's, LayerGradientShap's and NeuronGradientShap's draws (noise, baseline rows,
    path positions) and noise tunnels with noise, on nonlinear models: xattr's estimate and
    Captum's (N_EST samples each) agree within 5 standard errors, the spread taken from N_DRAWS
    single draws of xattr's (the batch tiled: every copy draws from its own stream)."""
    import numpy as np

    captum = captum_attr()
    cfg, samples, nt_type = random_case(k)
    torch.manual_seed(k)
    np.random.seed(k)
    theirs = run(captum, cfg, **{samples: N_EST})
    ours = run(X, cfg, **{samples: N_EST, "generator": k})
    one = {samples: 1, "generator": 100 + k, **({"nt_type": "smoothgrad"} if cfg.inner else {})}
    draws = run(X, tiled(cfg, N_DRAWS), **one)
    batch = leaves(cfg.inputs)[0].shape[0]
    for o, t, d in zip(leaves(ours), leaves(theirs), leaves(draws)):
        d = d.reshape(N_DRAWS, batch, *d.shape[1:])
        q = {"smoothgrad": d, "smoothgrad_sq": d * d, "vargrad": (d - d.mean(0)) ** 2}[nt_type]
        tol = 5 * q.std(0) * math.sqrt(2 / N_EST) + 1e-6  # (and rounding where the spread vanishes)
        assert o.shape == t.shape
        err = (o - t).abs()
        assert (err <= tol).all(), f"{cfg}: errors {err.flatten().tolist()} over {tol.flatten().tolist()}"


# ----------------------------------------------------------------------------- found by the differential


@pytest.mark.parametrize("cls", ["LayerActivation", "LayerGradientXActivation", "LayerIntegratedGradients",
                                 "LayerConductance", "InternalInfluence", "LayerGradCam"])  # fmt: skip
@pytest.mark.parametrize("pair", [False, True])
def test_noise_tunnel_around_a_layer_method_keeps_the_layer_structure(cls, pair):
    """A noise tunnel without noise around a layer method gives the method's own result, shaped
    like the layer, (B, 5), whatever the inputs' structure (a tuple of two here), and its squares
    and zero variances; deltas are the method's, one per copy, example-major. Before, the result
    was built like the inputs': the first example's row (5,), or a tuple of the rows."""
    model = TwoInputs(1) if pair else mlp(1)
    layer = model.net[1] if pair else model[1]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    inputs = (x, torch.randn(3, 2, generator=g, dtype=F64)) if pair else x
    kw = {} if cls == "LayerActivation" else {"target": 2}
    with_delta = cls in ("LayerIntegratedGradients", "LayerConductance")
    if with_delta:
        kw.update(n_steps=6, return_convergence_delta=True)
    alone = getattr(X, cls)(model, layer).attribute(inputs, **kw)
    want, want_delta = alone if with_delta else (alone, None)
    assert isinstance(want, torch.Tensor) and want.shape[0] == 3
    for nt_type, f in (("smoothgrad", lambda a: a), ("smoothgrad_sq", lambda a: a * a), ("vargrad", torch.zeros_like)):
        tunnel = X.NoiseTunnel(getattr(X, cls)(model, layer))
        got = tunnel.attribute(inputs, nt_type=nt_type, nt_samples=4, nt_samples_batch_size=3, stdevs=0.0, **kw)
        got, delta = got if with_delta else (got, None)
        assert isinstance(got, torch.Tensor), type(got)
        torch.testing.assert_close(got, f(want), rtol=1e-10, atol=1e-12)
        if with_delta:  # copies 0-2 in the first batch of copies, copy 3 in the second
            torch.testing.assert_close(delta, torch.cat([want_delta.repeat_interleave(3), want_delta]))


def test_noise_tunnel_around_a_list_of_layers_gives_a_list():
    """A list of layers: a list, each layer's own result (Captum's NoiseTunnel raises there:
    "`inputs` must be a torch.Tensor or a tuple[torch.Tensor] but found: <class 'list'>")."""
    model, x = mlp(3), torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    layers = [model[0], model[2]]
    want = X.LayerGradientXActivation(model, layers).attribute(x, target=1)
    got = X.NoiseTunnel(X.LayerGradientXActivation(model, layers)).attribute(x, nt_samples=3, stdevs=0.0, target=1)
    assert isinstance(got, list) and len(got) == 2
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    try:
        captum = captum_attr()
    except pytest.skip.Exception:
        return
    with quiet(), pytest.raises(AssertionError, match="found: <class 'list'>"):
        captum.NoiseTunnel(captum.LayerGradientXActivation(model, layers)).attribute(x, nt_samples=3, stdevs=0.0, target=1)


# ----------------------------------------------------------------------------- where Captum 0.9 fails


def test_captum_noise_tunnel_fails_for_a_baseline_distribution_around_gradient_shap():
    """A noise tunnel (without noise) around GradientShap of an affine model, with a baseline
    distribution of three copies of one row b: ``(x - b) * w`` exactly, for the tensor and for a
    callable returning it. Captum's NoiseTunnel checks the distribution like one baseline per
    example and raises for three rows and a batch of two ("Baseline can be provided as a tensor
    for just one input ..."), and for the callable; with one row it gives these numbers."""
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Linear(4, 3).to(F64).eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=g, dtype=F64))
    x, b = torch.randn(2, 4, generator=g, dtype=F64), torch.randn(1, 4, generator=g, dtype=F64)
    want = (x - b) * model.weight[2]
    kw = dict(nt_samples=3, stdevs=0.0, target=2, n_samples=4)
    for dist in (b.expand(3, 4).clone(), lambda: b.expand(3, 4).clone(), b):
        torch.testing.assert_close(X.NoiseTunnel(X.GradientShap(model)).attribute(x, baselines=dist, **kw), want)
    try:
        captum = captum_attr()
    except pytest.skip.Exception:
        return
    with quiet():
        with pytest.raises(AssertionError, match="Baseline can be provided"):
            captum.NoiseTunnel(captum.GradientShap(model)).attribute(x, baselines=b.expand(3, 4).clone(), **kw)
        with pytest.raises(AssertionError, match="however <class 'function'>"):
            captum.NoiseTunnel(captum.GradientShap(model)).attribute(x, baselines=lambda: b.expand(3, 4).clone(), **kw)
        torch.testing.assert_close(captum.NoiseTunnel(captum.GradientShap(model)).attribute(x, baselines=b, **kw), want)


def test_captum_layer_integrated_gradients_fails_for_a_layer_behind_another():
    """Layer IG of [lin1, lin2] in lin2(tanh(lin1(x))) moves both layers together: every path
    from lin1 crosses lin2, so lin1 gets zeros and lin2 the exact IG of a linear head,
    ``(lin2(h(x)) - lin2(h(b)))`` at the target column. Captum raises ("appears to not have been
    used in the graph"; it warns that no layer may depend solely on another)."""
    model = mlp(6)
    g = torch.Generator().manual_seed(7)
    x, b = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(1, 4, generator=g, dtype=F64)
    with torch.no_grad():
        last = (model(x) - model(b)) * torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    got = X.LayerIntegratedGradients(model, [model[0], model[2]]).attribute(x, baselines=b, target=1, n_steps=4)
    assert isinstance(got, list)
    torch.testing.assert_close(got[0], torch.zeros(3, 5, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], last, rtol=1e-12, atol=1e-12)
    try:
        captum = captum_attr()
    except pytest.skip.Exception:
        return
    with quiet():
        with pytest.raises(RuntimeError, match="not have been used in the graph"):
            captum.LayerIntegratedGradients(model, [model[0], model[2]]).attribute(x, baselines=b, target=1, n_steps=4)
        theirs = captum.LayerIntegratedGradients(model, model[2]).attribute(x, baselines=b, target=1, n_steps=4)
    torch.testing.assert_close(theirs, last, rtol=1e-12, atol=1e-12)


def test_captum_fails_for_a_baseline_broadcast_along_more_than_the_batch():
    """A (1, C, 1, 1) baseline, one value per channel: xattr broadcasts it to the inputs, giving the
    numbers (and convergence deltas) of the (1, C, H, W) baseline it stands for. Captum's
    IntegratedGradients gives those attributions but fails for its delta, and its
    LayerIntegratedGradients fails outright: both run the model on the baseline as given (a conv
    kernel larger than the 1 x 1 input), or fail a shape check ("Baseline can be provided as a
    tensor for just one input ...") before."""
    g = torch.Generator().manual_seed(8)
    conv = torch.nn.Conv2d(2, 3, 2).to(F64).eval()
    model = torch.nn.Sequential(conv, torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(27, 2)).to(F64).eval()
    x, b = torch.randn(3, 2, 4, 4, generator=g, dtype=F64), torch.randn(1, 2, 1, 1, generator=g, dtype=F64)
    kw = dict(target=1, n_steps=5)
    for make, extra in ((lambda lib: lib.IntegratedGradients(model), {"return_convergence_delta": True}),
                        (lambda lib: lib.LayerIntegratedGradients(model, model[1]), {})):  # fmt: skip
        want = make(X).attribute(x, baselines=b.expand(1, 2, 4, 4), **kw, **extra)
        got = make(X).attribute(x, baselines=b, **kw, **extra)
        for a, w in zip(leaves(got), leaves(want)):
            torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)
        try:
            captum = captum_attr()
        except pytest.skip.Exception:
            continue
        with quiet():
            with pytest.raises((AssertionError, RuntimeError), match="Baseline can be provided|Kernel size"):
                make(captum).attribute(x, baselines=b, **kw, **extra)
            theirs = make(captum).attribute(x, baselines=b.expand(1, 2, 4, 4), **kw, **extra)
            for t, w in zip(leaves(theirs), leaves(want)):
                torch.testing.assert_close(t, w)
