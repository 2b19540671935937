"""xattr.compat.captum's perturbation classes against Captum 0.9 run live, on random configurations.

A fixed-seed generator draws configurations over the keyword surface the stored cases
(tests/gen_captum_perturbation_expected.py) sample by hand: one tensor, a one-tensor tuple or two
tensors; feature masks none, per input, ids shared across tensors, ids with gaps, per example
``(B, ...)`` or broadcast (``(1, ...)``, also along inner dims); baselines as numbers, ``(1, ...)`` and
``(B, ...)`` tensors, mixed per input; targets as ints, per-example lists and tensors, tuples and
lists of tuples into a ``(B, 2, 3)`` output, None for one number per example or per batch;
pass-through arguments (a per-example tensor, a string, a Python float); perturbations_per_eval
from 1 to more than the features. Each class is run in both libraries on the same configuration.

Deterministic classes must give Captum's numbers. The random ones are compared where their
result is fixed: ShapleyValueSampling, Lime (least squares) and KernelShap on a model that is a
sum of per-element terms, where every order and every coalition sample gives the exact answer;
Lime on every coalition from a generator ``perturb_func`` with Captum's similarity functions;
KernelShap with ``n_samples >= 2^F`` against Captum's exact ShapleyValues (documented: xattr
enumerates); ShapleyValueSampling on an interacting model within its sampling error of Captum's
exact ShapleyValues. Differences xattr documents (docs/migration.md) are not drawn. The models,
the drawing primitives and the runner are in tests/perturbation_live_configs.py; the live tests
skip without captum.

Where Captum 0.9 fails on valid input (docs/migration.md, "Where Captum 0.9 fails"), xattr is
checked against references computed by hand, which need no captum, and the failure against
Captum where it is installed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xattr
from xattr.compat import captum as X

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from .perturbation_live_configs import (
        F64, Config, PerLib, assert_same, captum_attr, captums, compact, configs, distance_kernel, draw_baselines,
        draw_common, draw_mask, draw_ppe, draw_similarity, every_coalition, first_times_last, flip_batch,
        kept_features, lasso, leaves, linear_regression, mask_like, n_interp, quiet, randn, roll_batch, run,
        scaled_features, size_kernel, switch_features, tile,
    )
except ImportError:
    from perturbation_live_configs import (
        F64, Config, PerLib, assert_same, captum_attr, captums, compact, configs, distance_kernel, draw_baselines,
        draw_common, draw_mask, draw_ppe, draw_similarity, every_coalition, first_times_last, flip_batch,
        kept_features, lasso, leaves, linear_regression, mask_like, n_interp, quiet, randn, roll_batch, run,
        scaled_features, size_kernel, switch_features, tile,
    )


# ----------------------------------------------------------------------------- drawing per class


def draw_feature_ablation(rng, g, seed):
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar", "column", "aggregate"], seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    kw["feature_mask"] = mask_like(draw_mask(rng, g, batch, shapes, 5, per_example=not aggregate), inputs)
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    return Config("FeatureAblation", model, inputs, kw)


def draw_shapley_values(rng, g, seed):
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar", "aggregate"], seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    mask = draw_mask(rng, g, batch, shapes, 4, per_example=not aggregate)
    if mask is None:
        mask = tuple(torch.randint(0, 4, (1, *s), generator=g) for s in shapes)
        mask = mask if len(mask) > 1 else mask[0]
    mask = compact(mask, rng.choice([0, 1]))  # Captum runs the (largest id + 1)! orders
    kw["feature_mask"] = mask_like(mask, inputs)
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    return Config("ShapleyValues", model, inputs, kw)


def _window(rng, shape):
    return tuple(rng.randint(1, s) for s in shape)


def _stride(rng, window, shape):
    """At most the window along each dim (else both libraries refuse), any stride along a dim the
    window spans whole (it has one position there)."""
    if rng.random() < 0.4:
        return rng.randint(1, min(w for w, s in zip(window, shape) if w < s)) if window != shape else rng.randint(1, 3)
    return tuple(rng.randint(1, w) if w < s else rng.randint(1, s + 1) for w, s in zip(window, shape))


def draw_occlusion(rng, g, seed):
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar", "column", "aggregate"], seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    windows = tuple(_window(rng, s) for s in shapes)
    strides = tuple(_stride(rng, w, s) for w, s in zip(windows, shapes))
    if not isinstance(inputs, tuple):
        windows, strides = windows[0], strides[0]
    kw["sliding_window_shapes"] = windows
    if rng.random() < 0.8:
        kw["strides"] = strides
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    return Config("Occlusion", model, inputs, kw)


def draw_feature_permutation(rng, g, seed):
    """A batch of two with Captum's default perm_func (the one non-identity permutation swaps);
    any batch with a deterministic perm_func."""
    custom = rng.random() < 0.5
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar", "aggregate"],
                                                  batches=(2, 4) if custom else (2, 2), seed=seed)  # fmt: skip
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    kw["feature_mask"] = mask_like(draw_mask(rng, g, batch, shapes, 4, per_example=not aggregate), inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    ctor = {"perm_func": rng.choice([roll_batch, flip_batch])} if custom else {}
    return Config("FeaturePermutation", model, inputs, kw, ctor)


def draw_additive_sampling(rng, g, seed):
    """ShapleyValueSampling on a model additive in its elements: every order gives the exact values."""
    outs = ["rows", "multi", "scalar", "aggregate"]
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=outs, additive=True, seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    kw["feature_mask"] = mask_like(draw_mask(rng, g, batch, shapes, 5, per_example=not aggregate), inputs)
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    kw["n_samples"] = rng.randint(1, 4)
    return Config("ShapleyValueSampling", model, inputs, kw)


def draw_lime_additive(rng, g, seed):
    """Lime (least squares) on an additive model: exact from any coalitions that span the features."""
    outs = ["rows", "multi", "scalar", "aggregate"]
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=outs, additive=True, seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    mask = draw_mask(rng, g, batch, shapes, 4, per_example=not aggregate, gap=2)
    if mask is None:
        mask = tuple(torch.randint(0, 3, (1, *s), generator=g) for s in shapes)
        mask = mask if len(mask) > 1 else mask[0]
    kw["feature_mask"] = mask_like(mask, inputs)
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    kw["n_samples"] = 60
    kw["return_input_shape"] = rng.random() < 0.5
    one_argument_as_tuple(kw, aggregate)
    ctor = {"interpretable_model": PerLib(linear_regression), "similarity_func": draw_similarity(rng)}
    return Config("Lime", model, inputs, kw, ctor)


def one_argument_as_tuple(kw, aggregate):
    """Captum's Lime and KernelShap for a model returning one number per batch pass a bare tensor
    argument's rows as separate arguments (test_captum_lime_aggregate_splits_a_tensor_argument)."""
    extra = kw.get("additional_forward_args")
    if aggregate and isinstance(extra, torch.Tensor):
        kw["additional_forward_args"] = (extra,)


def draw_lime_coalitions(rng, g, seed):
    """Lime on an interacting model with every coalition once (a generator perturb_func). The
    mask is shared by the batch and skips no id: Captum's coalitions run over every id up to the
    largest, xattr's over the ids an example holds (docs/migration.md, "Each example's own
    features")."""
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar", "aggregate"], seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    mask = draw_mask(rng, g, batch, shapes, 4, per_example=False)
    if mask is None:
        mask = tuple(torch.randint(0, 3, (1, *s), generator=g) for s in shapes)
        mask = mask if len(mask) > 1 else mask[0]
    mask = compact(mask, rng.choice([0, 0, 2]))
    kw["feature_mask"] = mask_like(mask, inputs)
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    kw["n_samples"] = 2 ** n_interp(mask, inputs)
    kw["return_input_shape"] = rng.random() < 0.5
    one_argument_as_tuple(kw, aggregate)
    ctor = {"interpretable_model": PerLib(rng.choice([linear_regression, lasso])), "similarity_func": draw_similarity(rng),
            "perturb_func": every_coalition}  # fmt: skip
    return Config("Lime", model, inputs, kw, ctor)


def draw_kernel_shap_additive(rng, g, seed):
    """KernelShap on an additive model (exact from any coalitions). Captum's fails for a single
    feature (test_captum_kernel_shap_fails_for_one_feature): its FeatureAblation, the Shapley
    value of one feature, stands in there."""
    cfg = draw_lime_additive(rng, g, seed)
    if n_interp(cfg.kwargs["feature_mask"], cfg.inputs) > 1:
        return Config("KernelShap", cfg.model, cfg.inputs, cfg.kwargs)
    cfg.kwargs["return_input_shape"] = True
    return Config("KernelShap", cfg.model, cfg.inputs, cfg.kwargs, note="against FeatureAblation")


def draw_kernel_shap_exact(rng, g, seed):
    """KernelShap with n_samples >= 2^F: xattr enumerates (the exact Shapley values)."""
    cfg = draw_shapley_values(rng, g, seed)
    cfg.kwargs["n_samples"] = 2 ** n_interp(cfg.kwargs["feature_mask"], cfg.inputs) + rng.choice([0, 3])
    return Config("KernelShap", cfg.model, cfg.inputs, cfg.kwargs, note="against ShapleyValues")


LAYER_SHAPES = {  # (output, input) per-example shapes; "lin" takes the flat inputs
    "lin": ((5,), None), "act": ((5,), (5,)), "head": ((6,), (5,)), "fold": ((2, 3), (6,)),
}  # fmt: skip


def _layer(rng, model, inputs_side):
    name = rng.choice(list(LAYER_SHAPES))
    out_shape, in_shape = LAYER_SHAPES[name]
    shape = (6 + 4 * (model.n - 1),) if in_shape is None else in_shape
    return name, shape if inputs_side else out_shape


def draw_layer_feature_ablation(rng, g, seed):
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar", "column", "aggregate"], seed=seed)
    to_input = rng.random() < 0.4
    name, shape = _layer(rng, model, to_input)
    kw["layer_mask"] = draw_mask(rng, g, batch, [shape], 4, per_example=not aggregate)
    if rng.random() < 0.2 and kw["layer_mask"] is not None:
        kw["layer_mask"] = (kw["layer_mask"],)
    kind = rng.choice(["none", "number", "row", "each"])
    if kind != "none":
        kw["layer_baselines"] = rng.choice([0.5, -1]) if kind == "number" else randn(g, 1 if kind == "row" else batch, *shape)
    kw["attribute_to_layer_input"] = to_input
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    target = kw.get("target")
    per_example = isinstance(target, list) or (isinstance(target, torch.Tensor) and target.numel() > 1)
    note = "Captum at perturbations_per_eval=1" if per_example and kw["perturbations_per_eval"] > 1 else ""
    return Config("LayerFeatureAblation", model, inputs, kw, layer=name, note=note)


def draw_layer_feature_permutation(rng, g, seed):
    """A batch of two (the one non-identity permutation swaps); no target (Captum's raises)."""
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["scalar", "aggregate"], batches=(2, 2), seed=seed)
    name, shape = _layer(rng, model, False)
    kw["layer_mask"] = draw_mask(rng, g, batch, [shape], 4, per_example=not aggregate)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    return Config("LayerFeaturePermutation", model, inputs, kw, layer=name)


def _selector(rng, shape):
    kind = rng.choice(["int", "tuple", "slice", "callable"])
    if kind == "callable":
        return first_times_last
    if kind == "int" and len(shape) == 1:
        return rng.randrange(shape[0])
    if kind == "slice":
        start = rng.randrange(shape[0])
        first = slice(start, rng.randint(start + 1, shape[0])) if rng.random() < 0.7 else slice(None)
        return (first,) + tuple(rng.randrange(s) for s in shape[1:])
    return tuple(rng.randrange(s) for s in shape)


def draw_neuron_feature_ablation(rng, g, seed):
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows"], seed=seed)
    del kw["target"]
    to_input = rng.random() < 0.4
    name, shape = _layer(rng, model, to_input)
    kw["neuron_selector"] = _selector(rng, shape)
    kw["attribute_to_neuron_input"] = to_input
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    kw["feature_mask"] = mask_like(draw_mask(rng, g, batch, shapes, 5), inputs)
    kw["baselines"] = draw_baselines(rng, g, batch, inputs)
    kw["perturbations_per_eval"] = draw_ppe(rng, aggregate)
    return Config("NeuronFeatureAblation", model, inputs, kw, layer=name)





def draw_lime_base(rng, g, seed):
    """LimeBase on one example with every coalition (or pattern) once, sampled in the
    interpretable space or in the input space; the user's functions get Captum's kwargs."""
    model, inputs, batch, aggregate, kw = draw_common(rng, g, outs=["rows", "multi", "scalar"], batches=(1, 1), seed=seed)
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    n = rng.randint(2, 4)
    mask = tuple(torch.randint(0, n, (1, *s), generator=g) for s in shapes)
    mask = compact(mask if len(mask) > 1 else mask[0], 0)
    n = n_interp(mask, inputs)
    base = tuple(randn(g, 1, *s) for s in shapes)
    kw.update(n_samples=2**n + rng.choice([0, 0, 3]), perturbations_per_eval=draw_ppe(rng, False), num_interp_features=n,
              feature_mask=mask_like(mask, inputs), baselines=base if isinstance(inputs, tuple) else base[0])  # fmt: skip
    interp = rng.random() < 0.5
    ctor = {"interpretable_model": PerLib(linear_regression), "similarity_func": rng.choice([size_kernel, distance_kernel]),
            "perturb_func": every_coalition if interp else scaled_features, "perturb_interpretable_space": interp,
            "from_interp_rep_transform": switch_features if interp else None,
            "to_interp_rep_transform": None if interp else kept_features}  # fmt: skip
    return Config("LimeBase", model, inputs, kw, ctor)


# ----------------------------------------------------------------------------- the differential

DRAWS = {  # configurations per class: (draw, count)
    "FeatureAblation": (draw_feature_ablation, 60),
    "Occlusion": (draw_occlusion, 60),
    "ShapleyValues": (draw_shapley_values, 30),
    "FeaturePermutation": (draw_feature_permutation, 50),
    "ShapleyValueSampling": (draw_additive_sampling, 40),
    "Lime (additive)": (draw_lime_additive, 20),
    "Lime (every coalition)": (draw_lime_coalitions, 40),
    "KernelShap (additive)": (draw_kernel_shap_additive, 25),
    "KernelShap (enumerated)": (draw_kernel_shap_exact, 30),
    "LayerFeatureAblation": (draw_layer_feature_ablation, 60),
    "LayerFeaturePermutation": (draw_layer_feature_permutation, 40),
    "NeuronFeatureAblation": (draw_neuron_feature_ablation, 60),
    "LimeBase": (draw_lime_base, 30),
}


@pytest.mark.parametrize("name", list(DRAWS))
def test_random_configurations_give_captums_numbers(name):
    captum_attr()
    draw, count = DRAWS[name]
    for i, cfg in enumerate(configs(draw, count, seed=sorted(DRAWS).index(name) + 1)):
        want = captums(cfg)
        got = run(X, cfg)
        try:
            assert_same(got, want)
        except AssertionError as e:
            raise AssertionError(f"configuration {i}: {cfg}\n{e}") from None


@pytest.mark.parametrize("k", range(4))
def test_shapley_value_sampling_within_its_error_of_captums_exact_values(k):
    """On an interacting model the sampled estimate (400 orders per example) is within 5 standard
    errors of Captum's exact ShapleyValues; the spread comes from 300 one-order estimates (the
    batch tiled 300 times: xattr draws every example's orders from its own stream)."""
    cfg = configs(draw_shapley_values, 12, seed=40)[k * 3]
    if cfg.model.out == "aggregate":  # tiling the batch changes a per-batch output
        cfg = configs(draw_shapley_values, 12, seed=40)[k * 3 + 1]
    want = captums(cfg)
    est = run(X, cfg, cls="ShapleyValueSampling", n_samples=400, generator=k)
    batch, m = leaves(cfg.inputs)[0].shape[0], 300
    tiled = Config(cfg.cls, cfg.model, tile(cfg.inputs, m, batch), {k_: tile(v, m, batch) for k_, v in cfg.kwargs.items()})
    draws = run(X, tiled, cls="ShapleyValueSampling", n_samples=1, generator=100 + k)
    for e, w, d in zip(leaves(est), leaves(want), leaves(draws)):
        sd = d.reshape(m, batch, *d.shape[1:]).std(0)
        assert ((e - w.to(F64)).abs() <= 5 * sd / math.sqrt(400) + 1e-5).all(), cfg


def _additive_setup():
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    x = torch.tensor([[0.3, -1.2, 0.8, 0.1], [1.1, 0.4, -0.6, -0.9]], dtype=F64)
    scale = torch.tensor([[2.0], [3.0]], dtype=F64)
    return w, x, scale


def test_captum_lime_aggregate_splits_a_tensor_argument():
    """A model returning one number per batch and one tensor as additional_forward_args: xattr
    passes it as one argument (exact values on an additive model). Captum's Lime and KernelShap
    pass its rows as separate arguments there (a TypeError here; wrong numbers for a forward taking
    *args); its FeatureAblation and ShapleyValues pass the tensor whole."""
    w, x, scale = _additive_setup()
    f = lambda x, s: ((x @ w) * s[:, 0]).sum()  # noqa: E731
    mask = torch.tensor([[0, 0, 1, 1]])
    exact = torch.stack([(x[:, :2] @ w[:2] * scale[:, 0]).sum(), (x[:, 2:] @ w[2:] * scale[:, 0]).sum()])[None]
    for obj in (X.Lime(f, interpretable_model=xattr.linear_regression()), X.KernelShap(f)):
        got = obj.attribute(x, feature_mask=mask, additional_forward_args=scale, n_samples=40, generator=0,
                            return_input_shape=False)  # fmt: skip
        torch.testing.assert_close(got, exact, rtol=0, atol=1e-12)
    try:
        captum = captum_attr()
    except pytest.skip.Exception:
        return
    for obj in (captum.Lime(f, interpretable_model=linear_regression()), captum.KernelShap(f)):
        with quiet(), pytest.raises(TypeError, match="positional arguments"):
            obj.attribute(x, feature_mask=mask, additional_forward_args=scale, n_samples=40)
        with quiet():
            got = obj.attribute(x, feature_mask=mask, additional_forward_args=(scale,), n_samples=40, return_input_shape=False)
        torch.testing.assert_close(got.to(F64), exact, rtol=1e-5, atol=1e-5)


def test_captum_kernel_shap_fails_for_one_feature():
    """One feature: its Shapley value is f(x) - f(baseline). Captum's KernelShap fails to draw
    coalitions (a Categorical of NaN probabilities): a ValueError naming ``probs``, or, once
    anything in the process has run torch.compile (dynamo's TorchPatcher turns the distributions'
    argument validation off for the whole process), torch.multinomial's RuntimeError."""
    w, x, _ = _additive_setup()
    f = lambda x: torch.tanh(x @ w)  # noqa: E731
    mask = torch.zeros(1, 4, dtype=torch.long)
    for n in (3, 25):
        got = X.KernelShap(f).attribute(x, baselines=0.5, feature_mask=mask, n_samples=n, generator=0, return_input_shape=False)
        torch.testing.assert_close(got, (f(x) - f(torch.full_like(x, 0.5)))[:, None], rtol=0, atol=1e-12)
    try:
        captum = captum_attr()
    except pytest.skip.Exception:
        return
    with quiet(), pytest.raises((ValueError, RuntimeError), match="probs|probability tensor contains"):
        captum.KernelShap(f).attribute(x, baselines=0.5, feature_mask=mask, n_samples=25)


def test_captum_layer_ablation_per_example_targets_in_chunks():
    """LayerFeatureAblation with one target per example and perturbations_per_eval > 1: xattr's
    numbers are the loop's (each unit of the layer set to its baseline by hand). Captum's fails
    there (its targets are not repeated for the copies) and gives the same numbers at 1."""
    g = torch.Generator().manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    x, target, base = torch.randn(3, 4, generator=g, dtype=F64), [2, 0, 1], 0.25
    with torch.no_grad():
        h = net[1](net[0](x))
        rows = torch.arange(3)
        loop = torch.stack(
            [net[2](h)[rows, target] - net[2](h.index_fill(1, torch.tensor([j]), base))[rows, target] for j in range(5)], 1
        )  # fmt: skip
    for t in (target, torch.tensor(target)):
        got = X.LayerFeatureAblation(net, net[1]).attribute(x, layer_baselines=base, target=t, perturbations_per_eval=3)
        torch.testing.assert_close(got, loop, rtol=0, atol=1e-12)
    try:
        captum = captum_attr()
    except pytest.skip.Exception:
        return
    with quiet(), pytest.raises(AssertionError, match="[Tt]arget"):
        captum.LayerFeatureAblation(net, net[1]).attribute(x, layer_baselines=base, target=target, perturbations_per_eval=3)
    with quiet():
        at_one = captum.LayerFeatureAblation(net, net[1]).attribute(x, layer_baselines=base, target=target)
    torch.testing.assert_close(at_one, loop, rtol=0, atol=1e-12)
