"""xattr.compat.captum's rule-based classes against Captum 0.9 run live, on random configurations.

A fixed-seed generator draws small models (tests/rules_live_configs.py: one branch per input of
Linear, Conv1d or Conv2d layers with batch norms, the activations Captum hooks and average or
max pools, concatenated into a two-layer head, sometimes with a residual linear layer beside it,
with a (B, 3), (B, 2, 3) or (B,) output; float64, sometimes float32) and the keywords of one ``attribute`` call: batch sizes 1 to 4, one tensor or a
tuple, targets as ints (also negative), per-example lists and tensors, tuples and lists of tuples,
pass-through arguments (a per-example tensor, a string, a float, a flag), baselines as numbers,
``(1, ...)`` and ``(B, ...)`` tensors mixed per input, distributions as tensors and callables (with
and without the inputs), ``custom_attribution_func`` of one to three parameters,
``multiply_by_inputs``, ``return_convergence_delta``, layers' inputs and outputs, lists of layers,
neuron selectors (ints, tuples, slices, callables), interpolation modes, and LRP rules set as
``module.rule``. Each class is run in both libraries on the same configuration and must give
Captum's structure, shapes, dtypes and numbers.

Models are ones Captum handles correctly (every module called once, no two modules its DeepLift
hooks back to back, max-pools whose windows do not overlap, only modules its LRP has rules for);
the differences docs/migration_rules.md documents are not drawn. The live tests skip without
captum. Where Captum 0.9 fails on valid input, or a documented difference was found this way,
xattr is checked against a reference computed by hand, which needs no captum, and Captum's
failure is checked where it is installed.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from torch import nn

from xattr.compat import captum as X

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from .rules_live_configs import (
        F64, NONLINEAR, Config, assert_same, captum_attr, draw_baselines, draw_custom, draw_distribution,
        draw_extras, draw_inputs, draw_rules, draw_selector, draw_spec, draw_target, layer_shape, leaves,
        module_names, quiet, rules_module, run, spec_entry,
    )
except ImportError:
    from rules_live_configs import (
        F64, NONLINEAR, Config, assert_same, captum_attr, draw_baselines, draw_custom, draw_distribution,
        draw_extras, draw_inputs, draw_rules, draw_selector, draw_spec, draw_target, layer_shape, leaves,
        module_names, quiet, rules_module, run, spec_entry,
    )


# ----------------------------------------------------------------------------- drawing per class


def common(rng, g, seed, *, lrp=False, target=True, shap=False, **spec_kw):
    """A model, inputs, and target and pass-through arguments. ``shap``: a bare tensor argument is
    given as a one-tuple (Captum's SHAP classes pass its rows as separate arguments:
    test_captum_deep_lift_shap_splits_a_tensor_argument)."""
    spec = draw_spec(rng, seed, lrp=lrp, **spec_kw)
    batch = rng.randint(1, 4)
    inputs = draw_inputs(rng, g, spec, batch)
    kwargs = draw_extras(rng, g, batch, spec.dtype, lrp=lrp)
    if shap and isinstance(kwargs.get("additional_forward_args"), torch.Tensor):
        kwargs["additional_forward_args"] = (kwargs["additional_forward_args"],)
    if target:
        kwargs["target"] = draw_target(rng, spec.out, batch)
        if kwargs["target"] is None and rng.random() < 0.5:
            del kwargs["target"]
    return spec, inputs, batch, kwargs


def _is_nonlinear(spec, name):
    entry = spec_entry(spec, name)
    return any(entry[0] == c.__name__ for c in NONLINEAR)


def draw_guided(cls):
    def draw(rng, g, seed):
        spec, inputs, _, kw = common(rng, g, seed)
        return Config(cls, spec, inputs, kw)

    return draw


def draw_guided_grad_cam(rng, g, seed):
    spec, inputs, _, kw = common(rng, g, seed, kinds=("seq", "img"))
    nd = len(spec.shapes[0]) - 1
    layer = rng.choice([n for n in module_names(spec) if n.startswith("branches.0.")] + ["head.0"])  # head: empty maps
    kw["interpolate_mode"] = rng.choice(["nearest", "area", "linear"] if nd == 1 else ["nearest", "area", "bilinear", "bicubic"])
    kw["attribute_to_layer_input"] = rng.random() < 0.3
    return Config("GuidedGradCam", spec, inputs, kw, layer=layer)


def _deep_lift_keywords(rng, kw, delta=True):
    if delta:
        kw["return_convergence_delta"] = rng.random() < 0.5
    custom = draw_custom(rng)
    if custom is not None:
        kw["custom_attribution_func"] = custom
    return {"multiply_by_inputs": rng.random() < 0.75}


def draw_deep_lift(rng, g, seed):
    spec, inputs, batch, kw = common(rng, g, seed)
    kw["baselines"] = draw_baselines(rng, g, spec, batch, inputs)
    ctor = _deep_lift_keywords(rng, kw)
    if rng.random() < 0.2 and not module_names(spec, ("MaxPool1d", "MaxPool2d")):
        ctor["eps"] = rng.choice([1e-6, 1e-3])  # a max-pool input within eps of its reference: documented
    return Config("DeepLift", spec, inputs, kw, ctor)


def draw_deep_lift_shap(rng, g, seed):
    spec, inputs, _, kw = common(rng, g, seed, shap=True)
    kw["baselines"] = draw_distribution(rng, g, spec, inputs)
    return Config("DeepLiftShap", spec, inputs, kw, _deep_lift_keywords(rng, kw))


def _layer(rng, spec, to_input):
    """A layer; for its input, not a nonlinear one (Captum's pre-hook order) nor one whose input
    feeds the residual path too (Captum counts the other path: both documented)."""
    shared = ("head.0", "skip") if spec.skip else ()
    names = [n for n in module_names(spec) if not (to_input and (_is_nonlinear(spec, n) or n in shared))]
    return rng.choice(names)


def draw_layer_deep_lift(rng, g, seed, shap=False):
    """One layer, or a list of them (xattr's leniency: Captum raises an IndexError; its numbers
    for each layer alone are the reference)."""
    spec, inputs, batch, kw = common(rng, g, seed, shap=shap)
    kw["baselines"] = draw_distribution(rng, g, spec, inputs) if shap else draw_baselines(rng, g, spec, batch, inputs)
    kw["attribute_to_layer_input"] = rng.random() < 0.35
    layer = _layer(rng, spec, kw["attribute_to_layer_input"])
    if rng.random() < 0.25:
        layer = sorted({layer, _layer(rng, spec, kw["attribute_to_layer_input"])})
    if not shap and any(_is_nonlinear(spec, f"branches.{i}.0") for i in range(len(spec.branches))):
        # an activation on a model input: Captum needs the inputs to require grad
        # (test_captum_layer_deep_lift_fails_for_an_activation_on_the_input)
        inputs = tuple(x.requires_grad_() for x in leaves(inputs)) if isinstance(inputs, tuple) else inputs.requires_grad_()
    return Config("LayerDeepLiftShap" if shap else "LayerDeepLift", spec, inputs, kw, _deep_lift_keywords(rng, kw), layer)


def draw_layer_deep_lift_shap(rng, g, seed):
    return draw_layer_deep_lift(rng, g, seed, shap=True)


def _neuron(rng, spec, inputs, kw, linear=False):
    """A neuron every input reaches: with two inputs, one in the head (Captum raises for an input
    the neuron does not depend on: test_captum_neuron_classes_fail_for_an_input_the_neuron_ignores)."""
    to_input = rng.random() < 0.35
    layer = rng.choice([n for n in module_names(spec) if len(spec.branches) == 1 or n.startswith("head.")])
    kw["neuron_selector"] = draw_selector(rng, layer_shape(spec, layer, inputs, to_input), linear=linear)
    kw["attribute_to_neuron_input"] = to_input
    return layer


def draw_neuron_deep_lift(rng, g, seed, shap=False):
    spec, inputs, batch, kw = common(rng, g, seed, target=False, shap=shap)
    layer = _neuron(rng, spec, inputs, kw, linear=True)
    kw["baselines"] = draw_distribution(rng, g, spec, inputs) if shap else draw_baselines(rng, g, spec, batch, inputs)
    ctor = _deep_lift_keywords(rng, kw, delta=False)
    return Config("NeuronDeepLiftShap" if shap else "NeuronDeepLift", spec, inputs, kw, ctor, layer)


def draw_neuron_deep_lift_shap(rng, g, seed):
    return draw_neuron_deep_lift(rng, g, seed, shap=True)


def draw_neuron_guided(cls):
    def draw(rng, g, seed):
        spec, inputs, _, kw = common(rng, g, seed, target=False)
        layer = _neuron(rng, spec, inputs, kw)
        return Config(cls, spec, inputs, kw, layer=layer)

    return draw


def draw_lrp(rng, g, seed):
    spec, inputs, _, kw = common(rng, g, seed, lrp=True)
    spec.rules = draw_rules(rng, spec)
    kw["return_convergence_delta"] = rng.random() < 0.5
    return Config("LRP", spec, inputs, kw, captum_rules=rng.random() < 0.3)


LRP_LAYERS = ("Linear", "Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d")


def draw_layer_lrp(rng, g, seed):
    spec, inputs, _, kw = common(rng, g, seed, lrp=True)
    spec.rules = draw_rules(rng, spec)
    kw["return_convergence_delta"] = rng.random() < 0.5
    kw["attribute_to_layer_input"] = rng.random() < 0.35
    names = module_names(spec, LRP_LAYERS)
    if kw["attribute_to_layer_input"]:  # Captum fails there (test_captum_layer_lrp_fails_at_an_identity_rule_input)
        names = [n for n in names if spec.rules.get(n, ("",))[0] != "IdentityRule"]
    layer = rng.sample(names, rng.randint(1, min(3, len(names)))) if rng.random() < 0.4 else rng.choice(names)
    return Config("LayerLRP", spec, inputs, kw, layer=layer, captum_rules=rng.random() < 0.3)


# ----------------------------------------------------------------------------- the differential

DRAWS = {  # configurations per class: (draw, count)
    "GuidedBackprop": (draw_guided("GuidedBackprop"), 40),
    "Deconvolution": (draw_guided("Deconvolution"), 40),
    "GuidedGradCam": (draw_guided_grad_cam, 40),
    "DeepLift": (draw_deep_lift, 80),
    "DeepLiftShap": (draw_deep_lift_shap, 50),
    "LayerDeepLift": (draw_layer_deep_lift, 60),
    "LayerDeepLiftShap": (draw_layer_deep_lift_shap, 50),
    "NeuronDeepLift": (draw_neuron_deep_lift, 50),
    "NeuronDeepLiftShap": (draw_neuron_deep_lift_shap, 30),
    "NeuronGuidedBackprop": (draw_neuron_guided("NeuronGuidedBackprop"), 30),
    "NeuronDeconvolution": (draw_neuron_guided("NeuronDeconvolution"), 30),
    "LRP": (draw_lrp, 60),
    "LayerLRP": (draw_layer_lrp, 60),
}


def configs(draw, n, seed):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    return [draw(rng, g, seed * 1000 + i) for i in range(n)]


def captums(cfg: Config):
    """Captum's result; for a list of layers in LayerDeepLift or LayerDeepLiftShap (Captum raises),
    Captum's for each layer alone, as lists."""
    captum = captum_attr()
    if not (isinstance(cfg.layer, list) and cfg.cls.startswith("LayerDeepLift")):
        return run(captum, cfg)
    each = [run(captum, dataclasses.replace(cfg, layer=name)) for name in cfg.layer]
    if not cfg.kwargs.get("return_convergence_delta"):
        return each
    return [a for a, _ in each], [d for _, d in each]


@pytest.mark.parametrize("name", list(DRAWS))
def test_random_configurations_give_captums_numbers(name):
    captum_attr()  # skips without captum
    draw, count = DRAWS[name]
    failures = []
    for i, cfg in enumerate(configs(draw, count, seed=sorted(DRAWS).index(name) + 1)):
        try:
            assert_same(run(X, cfg), captums(cfg))
        except Exception as e:  # noqa: BLE001
            failures.append(f"configuration {i}: {cfg}\n{type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} of {count}:\n" + "\n\n".join(failures)


# ----------------------------------------------------------------------------- where Captum 0.9 fails


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return module.to(F64).eval()


def _captum_or_none():
    try:
        return captum_attr()
    except pytest.skip.Exception:
        return None


class Gated(nn.Module):
    """lin(x) * s: s a per-example (B, 1) tensor passed through additional_forward_args."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x, s):
        return self.lin(x) * s


def test_captum_deep_lift_shap_splits_a_tensor_argument():
    """A bare tensor as additional_forward_args: xattr's DeepLiftShap and LayerDeepLiftShap pass it
    whole (exact on an affine model: (x - mean(dist)) * w * s, and s times the layer's change).
    Captum's expand it row by row, passing each row as a separate argument (a TypeError here; its
    DeepLift and the one-tuple (s,) are right)."""
    model = _seeded(Gated(), 0)
    g = torch.Generator().manual_seed(1)
    x, dist = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    s = torch.rand(3, 1, generator=g, dtype=F64) + 0.5
    w, bias = model.lin.weight, model.lin.bias
    exact = (x - dist.mean(0)) * w[2] * s
    layer = s * (x @ w.T - (dist @ w.T + bias).mean(0) + bias) * torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    torch.testing.assert_close(X.DeepLiftShap(model).attribute(x, dist, target=2, additional_forward_args=s), exact)
    got = X.LayerDeepLiftShap(model, model.lin).attribute(x, dist, target=2, additional_forward_args=s)
    torch.testing.assert_close(got, layer)
    captum = _captum_or_none()
    if captum is None:
        return
    with quiet():
        for cls, layer_arg, want in (("DeepLiftShap", (), exact), ("LayerDeepLiftShap", (model.lin,), layer)):
            with pytest.raises(TypeError, match="positional arguments"):
                getattr(captum, cls)(model, *layer_arg).attribute(x, dist, target=2, additional_forward_args=s)
            theirs = getattr(captum, cls)(model, *layer_arg).attribute(x, dist, target=2, additional_forward_args=(s,))
            torch.testing.assert_close(theirs, want)


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b, self.head = nn.Linear(4, 3), nn.ReLU(), nn.Linear(2, 3), nn.Linear(6, 2)

    def forward(self, x, y):
        return self.head(torch.cat([self.act(self.a(x)), self.b(y)], 1))


@pytest.mark.parametrize("cls", ["NeuronDeepLift", "NeuronDeepLiftShap", "NeuronGuidedBackprop", "NeuronDeconvolution"])
def test_captum_neuron_classes_fail_for_an_input_the_neuron_ignores(cls):
    """A neuron in one input's branch: xattr gives the other input zeros and the neuron's own
    numbers to its input (a linear neuron: (x - b) * w for DeepLift, w for guided backprop and
    deconvolution). Captum raises: the input "appears to not have been used in the graph"."""
    model = _seeded(TwoBranches(), 2)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 2, generator=g, dtype=F64)
    dist = (torch.randn(4, 4, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64))
    kw = {"baselines": dist} if cls.endswith("Shap") else {"baselines": (dist[0][:1], 0.5)} if "DeepLift" in cls else {}
    w = model.a.weight[1]
    base = dist[0].mean(0) if cls.endswith("Shap") else dist[0][0]
    want = ((x - base) * w if "DeepLift" in cls else w.expand_as(x), torch.zeros_like(y))
    got = getattr(X, cls)(model, model.a).attribute((x, y), neuron_selector=1, **kw)
    torch.testing.assert_close(got, want)
    captum = _captum_or_none()
    if captum is None:
        return
    with quiet(), pytest.raises(RuntimeError, match="not have been used in the graph"):
        getattr(captum, cls)(model, model.a).attribute((x, y), neuron_selector=1, **kw)


class SquareSum(nn.Module):
    """sum(h ** 2) as ``torch.float_power``: an operation DeepLift has no rule for (both keep its
    gradient; xattr's Rescale covers ``h ** 2`` and ``h ** torch.tensor(2.0)`` (kind "tensor_pow"),
    and `Product` ``einsum("bct,bct->b", h, h)``)."""

    def forward(self, h):
        return torch.float_power(h, 2).sum((1, 2))


def _conv_square(pool: bool):
    model = nn.Sequential(nn.Conv1d(1, 2, 1), *([nn.MaxPool1d(1)] if pool else []), SquareSum())
    return _seeded(model, 4)


def test_captum_deep_lift_max_pool_mixes_reference_gradients():
    """A kernel-1 max-pool is the identity, and does not change xattr's DeepLift:
    ``(x - b) * sum_c w_c * 2 h_c(x)`` with the model's gradient 2h at x through the square.
    Captum's max-pool rule takes the reference's part of each change with the reference rows'
    gradient: ``2 max(h_c(x), h_c(b))`` in place of ``2 h_c(x)``, off by 46% of the largest
    attribution here. Only an operation without a rule after a max-pool (a power, a product of two
    activations such as a callable neuron selector multiplying two neurons) tells them apart."""
    g = torch.Generator().manual_seed(5)
    x, b = torch.randn(3, 1, 6, generator=g, dtype=F64), torch.randn(3, 1, 6, generator=g, dtype=F64)
    model = _conv_square(True)
    w, bias = model[0].weight.reshape(1, 2, 1), model[0].bias.reshape(1, 2, 1)
    h, h_ref = w * x + bias, w * b + bias
    ours = (x - b) * (w * 2 * h).sum(1, keepdim=True)
    for pool in (False, True):
        torch.testing.assert_close(X.DeepLift(_conv_square(pool)).attribute(x, baselines=b), ours)
    captum = _captum_or_none()
    if captum is None:
        return
    with quiet():
        torch.testing.assert_close(captum.DeepLift(_conv_square(False)).attribute(x, baselines=b), ours)
        theirs = captum.DeepLift(model).attribute(x, baselines=b)
    torch.testing.assert_close(theirs, (x - b) * (w * 2 * torch.maximum(h, h_ref)).sum(1, keepdim=True))
    assert (theirs - ours).abs().max() > 0.4 * ours.abs().max()


class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act, self.fc = nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.ReLU(), nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.bn(self.conv(x))), 1))


def test_captum_layer_lrp_fails_at_an_identity_rule_input():
    """LayerLRP at the input of a layer with IdentityRule: the relevance at its output, passed on
    unchanged. By hand: epsilon at ``fc`` gives ``relu(h) * w_t`` (times f / (f + 1e-9)), which the
    ReLU and the batch norm pass on. xattr gives it on both sides; Captum's input side fails
    ("Device IDs must be provided with multiple devices"), its output side is right."""
    x = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(6), dtype=F64)

    def layer_lrp(lib, rules, to_input):
        model = _seeded(NormNet(), 7)
        with torch.no_grad():
            model.bn.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(8))
        model.bn.rule = rules.IdentityRule()
        return lib.LayerLRP(model, model.bn).attribute(x, target=1, attribute_to_layer_input=to_input), model

    ours, model = layer_lrp(X, rules_module(X), True)
    with torch.no_grad():
        want = (model.act(model.bn(model.conv(x))).flatten(1) * model.fc.weight[1]).reshape(ours.shape)
    torch.testing.assert_close(ours, want, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(layer_lrp(X, rules_module(X), False)[0], want, rtol=1e-7, atol=1e-12)
    captum = _captum_or_none()
    if captum is None:
        return
    with quiet():
        torch.testing.assert_close(layer_lrp(captum, rules_module(captum), False)[0], want, rtol=1e-7, atol=1e-12)
        with pytest.raises(AssertionError, match="Device IDs"):
            layer_lrp(captum, rules_module(captum), True)


class TanhFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act, self.lin, self.relu, self.out = nn.Tanh(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)

    def forward(self, x):
        return self.out(self.relu(self.lin(self.act(x))))


def test_captum_layer_deep_lift_fails_for_an_activation_on_the_input():
    """An activation module reading the model's input, and inputs that do not require grad:
    xattr's LayerDeepLift is ``(h - h_ref) * m`` with the ReLU's Rescale multiplier above h, by
    hand. Captum's raises ("cannot register a hook on a tensor that doesn't require gradient");
    with the inputs requiring grad it gives those numbers (its DeepLift and the SHAP classes set
    requires_grad themselves)."""
    model = _seeded(TanhFirst(), 10)
    g = torch.Generator().manual_seed(11)
    x, b = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(1, 4, generator=g, dtype=F64)
    with torch.no_grad():
        h, h_ref = model.lin(torch.tanh(x)), model.lin(torch.tanh(b))
        want = (h - h_ref) * model.out.weight[1] * (h.relu() - h_ref.relu()) / (h - h_ref)
    torch.testing.assert_close(X.LayerDeepLift(model, model.lin).attribute(x, baselines=b, target=1), want)
    captum = _captum_or_none()
    if captum is None:
        return
    with quiet():
        with pytest.raises(RuntimeError, match="doesn't require gradient"):
            captum.LayerDeepLift(model, model.lin).attribute(x, baselines=b, target=1)
        theirs = captum.LayerDeepLift(model, model.lin).attribute(x.clone().requires_grad_(), baselines=b, target=1)
    torch.testing.assert_close(theirs, want)


# ----------------------------------------------------------------------------- xattr's leniencies


def test_layer_deep_lift_shap_of_a_list_of_layers_gives_lists_of_deltas():
    """A list of layers with return_convergence_delta=True: a list of attributions and a list of
    (B * N,) deltas, each layer's as alone (as LayerDeepLift and LayerLRP; Captum takes no list).
    The functional API gives a tuple of (B, N) deltas for a split at several layers."""
    import xattr

    model = _seeded(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)), 8)
    g = torch.Generator().manual_seed(9)
    x, dist = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)
    layers = [model[1], model[3]]
    attrs, deltas = X.LayerDeepLiftShap(model, layers).attribute(x, dist, target=1, return_convergence_delta=True)
    assert isinstance(attrs, list) and isinstance(deltas, list) and len(deltas) == 2
    for layer, a, d in zip(layers, attrs, deltas):
        one, one_delta = X.LayerDeepLiftShap(model, layer).attribute(x, dist, target=1, return_convergence_delta=True)
        torch.testing.assert_close(a, one)
        torch.testing.assert_close(d, one_delta)
        assert d.shape == (3 * 4,)
    split = xattr.at_layer(xattr.target(model, 1), layers)
    _, gaps = xattr.layer_deep_lift_shap(split, baselines=dist, return_delta=True)(x)
    assert isinstance(gaps, tuple) and [tuple(d.shape) for d in gaps] == [(3, 4), (3, 4)]
    torch.testing.assert_close(gaps[1].reshape(-1), deltas[1])
