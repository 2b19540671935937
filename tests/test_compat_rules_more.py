"""xattr.compat.captum's rule-based classes against Captum 0.9 run live, over the keyword surface
the stored cases (tests/gen_captum_backprop_expected.py, gen_captum_lrp_expected.py) leave out:
list-of-tuple targets on a (B, 2, 3) output, tuple inputs with mixed baselines, per-example and
non-tensor extra arguments, callables as baselines and selectors, custom attribution functions,
layer inputs, lists of layers, nested Sequentials with rules on some modules, interpolation modes,
batch size 1, float32 and inputs that require grad. Models are ones Captum handles correctly (each
hooked module called once, none back to back); the live tests skip without captum.

The documented differences found this way (docs/migration_rules.md) are checked against references
computed by hand, which need no captum, and against Captum where it is installed.
"""

import contextlib
import warnings

import pytest
import torch
from torch import nn

from xattr.compat import captum as X
from xattr.compat.captum import lrp as XL

F64 = torch.float64


def _captum():
    return pytest.importorskip("captum.attr")


@contextlib.contextmanager
def _unpool_allowed():
    """Captum's DeepLift spreads max-pool multipliers with max_unpool, which has no deterministic
    kernel (the suite asks for deterministic ones: tests/conftest.py)."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def _close(got, want, atol=1e-6):
    if isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            _close(g, w, atol)
        return
    assert got.shape == want.shape
    if got.numel() == 0:  # GuidedGradCam's empty tensor: Captum's is float32 for any input
        return
    torch.testing.assert_close(got, want.detach(), atol=atol, rtol=0)


def _fresh(tree):
    """New tensors for every call: Captum can leave hooks on the tensors it is given."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone().requires_grad_(tree.requires_grad)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_fresh(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _fresh(v) for k, v in tree.items()}
    return tree


class Net(nn.Module):
    """f(x, y, w, mode) -> (B, 2, 3): x (B, 4) and y (B, 2, 4) meet in one hidden layer; w is a
    per-example tensor, mode a string."""

    def __init__(self) -> None:
        super().__init__()
        self.lx, self.ly = nn.Linear(4, 5), nn.Conv1d(2, 1, 2)
        self.rx, self.ry = nn.ReLU(), nn.Sigmoid()
        self.hidden, self.act, self.out = nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6)

    def forward(self, x, y, w=None, mode="plain"):
        h = torch.cat([self.rx(self.lx(x)), self.ry(self.ly(y)).flatten(1)], 1)
        o = self.out(self.act(self.hidden(h))).reshape(-1, 2, 3)
        if w is not None:
            o = o * w.reshape(-1, 1, 1)
        return -o if mode == "neg" else o


def _net():
    torch.manual_seed(1)
    return Net().to(F64).eval()


gen = torch.Generator().manual_seed(0)
XS, YS = torch.randn(3, 4, generator=gen, dtype=F64), torch.randn(3, 2, 4, generator=gen, dtype=F64)
W = torch.rand(3, generator=gen, dtype=F64) + 0.5
B_ROW = torch.randn(1, 2, 4, generator=gen, dtype=F64)
B_EACH = (torch.randn(3, 4, generator=gen, dtype=F64), torch.randn(3, 2, 4, generator=gen, dtype=F64))
DIST = (torch.randn(4, 4, generator=gen, dtype=F64), torch.randn(4, 2, 4, generator=gen, dtype=F64))
PAIR = (XS, YS)
PAIR_GRAD = (XS.clone().requires_grad_(), YS)
FIRST = (XS[:1], YS[:1])
PER_EXAMPLE = [(0, 1), (1, 2), (1, 0)]
ARGS = {"additional_forward_args": (W, "neg")}
DELTA = {"return_convergence_delta": True}
LOCAL = {"multiply_by_inputs": False}


def dist_of_inputs(inputs):
    return (inputs[0] * 0.5 + DIST[0][:3], inputs[1].flip(0))


def product(multipliers, inputs):
    return tuple(m * x for m, x in zip(multipliers, inputs))


def squared(multipliers, inputs, baselines):
    return tuple(m * (x - b) ** 2 for m, x, b in zip(multipliers, inputs, baselines))


def hidden_pair(h):
    return h[:, 1] * h[:, 4]


# (name, class, constructor keywords, layer name or None, inputs, attribute keywords)
CASES = [
    ("gbp_tuples_args", "GuidedBackprop", {}, None, PAIR, {"target": PER_EXAMPLE, **ARGS}),
    ("gbp_index_grad", "GuidedBackprop", {}, None, PAIR_GRAD, {"target": (1, -1)}),
    ("gbp_first", "GuidedBackprop", {}, None, FIRST, {"target": [(1, 1)], "additional_forward_args": (W[:1],)}),
    ("deconv_tuples_args", "Deconvolution", {}, None, PAIR, {"target": PER_EXAMPLE, **ARGS}),
    ("deconv_tensor_target", "Deconvolution", {}, None, PAIR_GRAD, {"target": (0, 2)}),
    ("dl_mixed_baselines", "DeepLift", {}, None, PAIR, {"baselines": (0.2, B_ROW), "target": PER_EXAMPLE, **ARGS, **DELTA}),
    ("dl_each_local", "DeepLift", LOCAL, None, PAIR, {"baselines": B_EACH, "target": (1, 2), **DELTA}),
    ("dl_eps", "DeepLift", {"eps": 1e-3}, None, PAIR, {"baselines": B_EACH, "target": (0, 0), **ARGS, **DELTA}),
    ("dl_custom_two", "DeepLift", {}, None, PAIR, {"baselines": B_EACH, "target": (1, 0), "custom_attribution_func": product}),
    ("dl_first", "DeepLift", {}, None, FIRST, {"baselines": (B_EACH[0][:1], 0.1), "target": [(0, 2)], **DELTA}),
    ("dl_grad", "DeepLift", {}, None, PAIR_GRAD, {"target": (1, 1), "additional_forward_args": (None, "neg"), **DELTA}),
    ("dls_tuples_args", "DeepLiftShap", {}, None, PAIR, {"baselines": DIST, "target": PER_EXAMPLE, **ARGS, **DELTA}),
    ("dls_callable", "DeepLiftShap", LOCAL, None, PAIR, {"baselines": lambda: DIST, "target": (1, 2), **DELTA}),
    ("dls_callable_inputs", "DeepLiftShap", {}, None, PAIR, {"baselines": dist_of_inputs, "target": (0, 1), **DELTA}),
    ("dls_custom", "DeepLiftShap", {}, None, PAIR_GRAD, {"baselines": DIST, "target": (1, 1), "custom_attribution_func": squared}),
    ("dls_first", "DeepLiftShap", {}, None, FIRST, {"baselines": DIST, "target": [(1, 0)], **DELTA}),
    ("ldl_hidden", "LayerDeepLift", {}, "hidden", PAIR, {"baselines": (0.2, B_ROW), "target": PER_EXAMPLE, **ARGS, **DELTA}),
    ("ldl_hidden_input", "LayerDeepLift", LOCAL, "hidden", PAIR,
     {"baselines": B_EACH, "target": (1, 2), "attribute_to_layer_input": True, **DELTA}),  # fmt: skip
    ("ldl_conv_input_custom", "LayerDeepLift", {}, "ly", PAIR,
     {"baselines": B_EACH, "target": (0, 1), "attribute_to_layer_input": True, "custom_attribution_func": squared}),  # fmt: skip
    ("ldls_act", "LayerDeepLiftShap", {}, "act", PAIR, {"baselines": DIST, "target": PER_EXAMPLE, **ARGS, **DELTA}),
    ("ldls_hidden_input", "LayerDeepLiftShap", LOCAL, "hidden", PAIR,
     {"baselines": lambda: DIST, "target": (1, 1), "attribute_to_layer_input": True, **DELTA}),  # fmt: skip
    ("ndl_int", "NeuronDeepLift", {}, "hidden", PAIR, {"neuron_selector": 4, "baselines": (0.2, B_ROW), **ARGS}),
    ("ndl_slice_input", "NeuronDeepLift", LOCAL, "out", PAIR,
     {"neuron_selector": (slice(1, 5),), "baselines": B_EACH, "attribute_to_neuron_input": True}),  # fmt: skip
    ("ndl_callable_custom", "NeuronDeepLift", {}, "act", PAIR_GRAD,
     {"neuron_selector": hidden_pair, "baselines": B_EACH, "custom_attribution_func": product}),  # fmt: skip
    ("ndls_tuple", "NeuronDeepLiftShap", {}, "hidden", PAIR, {"neuron_selector": (2,), "baselines": DIST, **ARGS}),
    ("ndls_callable", "NeuronDeepLiftShap", LOCAL, "act", FIRST, {"neuron_selector": hidden_pair, "baselines": DIST}),
    ("ngb_slice", "NeuronGuidedBackprop", {}, "hidden", PAIR, {"neuron_selector": (slice(0, 4),), **ARGS}),
    ("ngb_input_callable", "NeuronGuidedBackprop", {}, "out", PAIR_GRAD,
     {"neuron_selector": hidden_pair, "attribute_to_neuron_input": True}),  # fmt: skip
    ("ndc_int", "NeuronDeconvolution", {}, "act", FIRST, {"neuron_selector": 3}),
    ("ndc_input", "NeuronDeconvolution", {}, "hidden", PAIR, {"neuron_selector": 6, "attribute_to_neuron_input": True, **ARGS}),
]


def _run(lib, cls, ctor, layer, inputs, kwargs):
    model = _net()
    layer = () if layer is None else (model.get_submodule(layer),)
    return getattr(lib, cls)(model, *layer, **ctor).attribute(_fresh(inputs), **_fresh(kwargs))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_classes_match_captum(case):
    ca = _captum()
    _, *spec = case
    _close(_run(X, *spec), _run(ca, *spec))


class CNN(nn.Module):
    """An image and a vector; the map of a conv layer resizes to the image only."""

    def __init__(self, nd: int = 2) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
        self.c1, self.r1, self.c2, self.r2 = conv(2, 3, 3, padding=1), nn.ReLU(), conv(3, 2, 2), nn.ReLU()
        self.v, self.fc = nn.Linear(3, 3), nn.Linear(2 * 3**nd + 3, 5)

    def forward(self, img, vec, scale=1.0):
        return self.fc(torch.cat([self.r2(self.c2(self.r1(self.c1(img)))).flatten(1), self.v(vec) * scale], 1))


@pytest.mark.parametrize("nd, mode", [(1, "linear"), (2, "bilinear"), (2, "bicubic"), (2, "area"), (3, "trilinear")])
@pytest.mark.parametrize("layer_input", [False, True])
def test_guided_grad_cam_modes_match_captum(nd, mode, layer_input):
    ca = _captum()
    gen = torch.Generator().manual_seed(nd)
    inputs = (torch.randn(3, 2, *(4,) * nd, generator=gen, dtype=F64), torch.randn(3, 3, generator=gen, dtype=F64))

    def run(lib):
        torch.manual_seed(nd)
        model = CNN(nd).to(F64).eval()
        return lib.GuidedGradCam(model, model.c2).attribute(
            _fresh(inputs), target=[0, 4, 2], additional_forward_args=(_fresh(W[:, None]),), interpolate_mode=mode,
            attribute_to_layer_input=layer_input,
        )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # both warn that vec gets an empty tensor
        _close(run(X), run(ca))


# ----------------------------------------------------------------------------- LRP


class Nested(nn.Module):
    """Nested Sequentials of every layer Captum has a rule for; the flatten inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Sequential(
            nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())),
            nn.MaxPool2d(2),
            nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 2), nn.ReLU()),
            nn.AdaptiveAvgPool2d((2, 2)),
            nn.Sequential(nn.AvgPool2d(2, stride=1)),
        )
        self.head = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3))
        bn = self.feat[2][0]
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)

    def forward(self, img, reshape=False):  # Captum's LRP adds 0 to every argument: a bool, not a string
        h = self.feat(img)
        return self.head(h.reshape(len(h), -1) if reshape else torch.flatten(h, 1))


RULES = {  # module name: (rule class name, keywords); the modules not named keep the defaults
    "none": {},
    "nested": {"feat.0.0": ("GammaRule", {"gamma": 0.5}), "feat.0.2.0": ("GammaRule", {"gamma": 0.1, "set_bias_to_zero": True}),
               "head.3": ("EpsilonRule", {"epsilon": 0.1})},  # fmt: skip
    "alpha_identity": {"feat.0.0": ("Alpha1_Beta0_Rule", {}), "feat.2.0": ("IdentityRule", {}), "head.1": ("IdentityRule", {}),
                       "feat.2.1": ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True}), "head.0": ("GammaRule", {})},  # fmt: skip
    "pools": {"feat.1": ("GammaRule", {}), "feat.3": ("EpsilonRule", {"epsilon": 1e-3}), "feat.4.0": ("Alpha1_Beta0_Rule", {})},
}
IMG = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
LRP_CASES = [  # (name, class, layer names or None, inputs, keywords)
    ("lrp_list_target", "LRP", None, IMG, {"target": [0, 1, 2], "additional_forward_args": True, **DELTA}),
    ("lrp_first_grad", "LRP", None, IMG[:1].clone().requires_grad_(), {"target": 2, **DELTA}),
    ("lrp_one_tuple", "LRP", None, (IMG,), {"target": torch.tensor([2, 1, 0]), "additional_forward_args": (False,)}),
    ("layer_nested", "LayerLRP", "feat.2.1", IMG, {"target": 1, **DELTA}),
    ("layer_nested_input", "LayerLRP", "feat.2.1", IMG, {"target": 1, "attribute_to_layer_input": True, **DELTA}),
    ("layer_list", "LayerLRP", ["feat.0.0", "feat.2.0", "head.3"], IMG, {"target": [2, 0, 1], **DELTA}),
    ("layer_list_input", "LayerLRP", ["feat.0.2.0", "feat.3", "head.0"], IMG,
     {"target": [2, 0, 1], "attribute_to_layer_input": True, **DELTA}),  # fmt: skip
]


def _lrp(lib, rules_from, rules, cls, layer, inputs, kwargs, dtype=F64):
    torch.manual_seed(2)
    model = Nested().to(dtype).eval()
    for name, (rule, kw) in rules.items():
        model.get_submodule(name).rule = getattr(rules_from, rule)(**kw)
    if layer is not None:
        layer = [model.get_submodule(n) for n in layer] if isinstance(layer, list) else model.get_submodule(layer)
    return getattr(lib, cls)(model, *(() if layer is None else (layer,))).attribute(_fresh(inputs), **_fresh(kwargs))


@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize("case", LRP_CASES, ids=[c[0] for c in LRP_CASES])
def test_lrp_rules_on_nested_modules_match_captum(case, rules):
    ca = _captum()
    from captum.attr._utils import lrp_rules as captum_rules

    _, *spec = case
    _close(_lrp(X, XL, RULES[rules], *spec), _lrp(ca, captum_rules, RULES[rules], *spec), atol=1e-9)


def test_lrp_float32_matches_captum():
    ca = _captum()
    from captum.attr._utils import lrp_rules as captum_rules

    spec = ("LayerLRP", ["feat.0.0", "head.0"], IMG.float(), {"target": [0, 1, 2], **DELTA})
    _close(_lrp(X, XL, RULES["nested"], *spec, dtype=torch.float32), _lrp(ca, captum_rules, RULES["nested"], *spec, dtype=torch.float32))


class Grid(nn.Module):
    """conv -> ReLU -> linear with a (B, 2, 3) output, the flatten and reshape inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2 * 4 * 4, 6)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1)).reshape(-1, 2, 3)


@pytest.mark.parametrize("layers", [None, ["conv"], ["conv", "fc"]])
def test_lrp_list_of_tuples_target_matches_captum(layers):
    ca = _captum()
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(6), dtype=F64)

    def run(lib):
        torch.manual_seed(1)
        model = Grid().to(F64).eval()
        if layers is None:
            return lib.LRP(model).attribute(x.clone(), target=PER_EXAMPLE, **DELTA)
        chosen = [model.get_submodule(n) for n in layers]
        obj = lib.LayerLRP(model, chosen if len(chosen) > 1 else chosen[0])
        return obj.attribute(x.clone(), target=PER_EXAMPLE, attribute_to_layer_input=len(chosen) > 1, **DELTA)

    _close(run(X), run(ca), atol=1e-9)


# ----------------------------------------------------------------------------- documented differences


def _relu_pair(between: nn.Module | None = None):
    """conv -> nn.ReLU -> [between] -> nn.ReLU -> linear. With nothing between (or a module that
    returns its input, such as nn.Identity or an eval-mode nn.Dropout) the two ReLUs are back to back."""
    torch.manual_seed(4)
    conv, fc = nn.Conv2d(1, 3, 3), nn.Linear(48, 3)
    body = [nn.ReLU(), *([between] if between is not None else []), nn.ReLU()]
    return nn.Sequential(conv, *body, nn.Flatten(), fc).to(F64).eval()


class Times1(nn.Module):
    def forward(self, x):
        return x * 1.0


IMG1 = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=F64)


def _deconvolution_by_hand(model, target):
    """Deconvolution written out: the ReLUs' rule is max(g, 0) on the gradient (twice is once)."""
    conv, fc = model[0], model[-1]
    g = fc.weight[target].reshape(1, 3, 4, 4).expand(IMG1.shape[0], -1, -1, -1)
    return torch.nn.grad.conv2d_input(IMG1.shape, conv.weight, g.clamp(min=0).clamp(min=0))


@pytest.mark.parametrize("between", [None, nn.Identity(), nn.Dropout(0.5), Times1()], ids=["none", "identity", "dropout", "x*1"])
def test_deconvolution_of_relu_modules_back_to_back(between):
    model = _relu_pair(between)
    xattr_attr = X.Deconvolution(model).attribute(IMG1.clone(), target=1)
    _close(xattr_attr, _deconvolution_by_hand(model, 1), atol=1e-12)
    ca = _captum()
    captum_attr = ca.Deconvolution(model).attribute(IMG1.clone(), target=1)
    if isinstance(between, Times1):  # a new tensor between the two: Captum is right
        _close(xattr_attr, captum_attr, atol=1e-12)
        return
    # back to back, Captum also applies the first ReLU's derivative: guided backprop's numbers
    mask = (model[0](IMG1) > 0).to(F64)
    g = model[-1].weight[1].reshape(1, 3, 4, 4).clamp(min=0) * mask
    _close(captum_attr, torch.nn.grad.conv2d_input(IMG1.shape, model[0].weight, g), atol=1e-12)
    assert (captum_attr - xattr_attr).abs().max() > 0.5 * xattr_attr.abs().max()


class Scaled(nn.Module):
    """c * mlp(k * x): factors outside modules, at the output and at the input."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x, c=1.0, k=1.0):
        return c * self.l2(self.act(self.l1(x * k)))


@pytest.mark.parametrize("c", [2.0, -1.0, -3.0])
def test_lrp_factor_outside_modules(c):
    torch.manual_seed(0)
    model = Scaled().to(F64).eval()
    x = torch.randn(3, 4, dtype=F64)
    base, base_delta = X.LRP(model).attribute(x, target=1, **DELTA)
    ours, delta = X.LRP(model).attribute(x, target=1, additional_forward_args=c, **DELTA)
    _close(ours, c * base, atol=1e-12)  # relevance is linear in the output: c * f gets c times f's
    _close(delta, c * base_delta, atol=1e-12)
    ca = _captum()
    theirs = ca.LRP(model).attribute(x.clone(), target=1, additional_forward_args=c)
    _close(theirs, c * c * base, atol=1e-12)  # Captum's: c^2 times, so -f gets f's relevance


def test_lrp_factor_on_the_input_outside_modules():
    torch.manual_seed(0)
    model = Scaled().to(F64).eval()
    x, k = torch.randn(3, 4, dtype=F64), torch.rand(3, 1, dtype=F64) + 0.5
    ours = X.LRP(model).attribute(x, target=1, additional_forward_args=(1.0, k))
    _close(ours, X.LRP(model).attribute(x * k, target=1), atol=1e-12)  # relevance of x * k, given to x
    ca = _captum()
    _close(ca.LRP(model).attribute(x.clone(), target=1, additional_forward_args=(1.0, k)), k * ours, atol=1e-12)


ACTIVATIONS = [nn.ReLU6(), nn.Hardtanh(-0.5, 0.5), nn.Threshold(0.1, 0.0), nn.GELU(), nn.SiLU(), nn.Mish(), nn.Hardswish(),
               nn.Softsign(), nn.SELU(), nn.CELU(), nn.LogSigmoid()]  # fmt: skip


@pytest.mark.parametrize("act", ACTIVATIONS, ids=[type(a).__name__ for a in ACTIVATIONS])
def test_deep_lift_rescales_activations_captum_does_not_hook(act):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3)).to(F64).eval()
    gen = torch.Generator().manual_seed(0)
    x, b = torch.randn(8, 4, generator=gen, dtype=F64), 0.3 * torch.randn(8, 4, generator=gen, dtype=F64)
    ours = X.DeepLift(model).attribute(x, baselines=b, target=1)
    z, zb = model[0](x), model[0](b)  # the Rescale rule by hand: one multiplier per hidden unit
    m = (act(z) - act(zb)) / (z - zb)  # no unit has z == zb here
    _close(ours, (x - b) * ((m * model[2].weight[1]) @ model[0].weight), atol=1e-12)
    ca = _captum()
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(xr)[:, 1].sum(), xr)
    _close(ca.DeepLift(model).attribute(x.clone(), baselines=b, target=1), grad * (x - b), atol=1e-12)  # Captum's: plain gradient


class Windows(nn.Module):
    """A max-pool's windows unfolded side by side, (B, C, k*k, L): a max over dim 2 (a pool whose
    windows do not overlap) is then the pool, whatever its stride and dilation."""

    def __init__(self, k: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.k, self.stride, self.dilation = k, stride, dilation

    def forward(self, h):
        windows = torch.nn.functional.unfold(h, self.k, dilation=self.dilation, stride=self.stride)
        return windows.reshape(h.shape[0], h.shape[1], self.k * self.k, -1)


POOLS = {  # name: (pool, its windows: kernel, stride, dilation; input side)
    "overlapping": (nn.MaxPool2d(2, stride=1), (2, 1, 1), 4),
    "adaptive": (nn.AdaptiveMaxPool2d(2), (2, 1, 1), 4),  # 3x3 -> 2x2: windows 2x2, stride 1
    "dilated": (nn.MaxPool2d(2, stride=1, dilation=2), (2, 1, 2), 5),
}


@pytest.mark.parametrize("name", list(POOLS))
def test_deep_lift_through_max_pools_with_shared_inputs(name):
    pool, (k, stride, dilation), side = POOLS[name]
    torch.manual_seed(7)
    conv, fc = nn.Conv2d(1, 2, 2), nn.Linear(8, 3)
    model = nn.Sequential(conv, nn.Sigmoid(), Times1(), pool, nn.Flatten(), fc).to(F64).eval()
    twin = nn.Sequential(conv, nn.Sigmoid(), Times1(), Windows(k, stride, dilation), nn.MaxPool2d((k * k, 1)), nn.Flatten(), fc)
    twin = twin.to(F64).eval()
    gen = torch.Generator().manual_seed(0)
    x, b = torch.randn(3, 1, side, side, generator=gen, dtype=F64), 0.5 * torch.randn(3, 1, side, side, generator=gen, dtype=F64)
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    kw = {"baselines": b, "target": [0, 1, 2], **DELTA}
    ours, delta = X.DeepLift(model).attribute(x, **kw)
    _close(ours, X.DeepLift(twin).attribute(x, **kw)[0], atol=1e-12)
    assert delta.abs().max() < 1e-12
    ca = _captum()
    with _unpool_allowed():
        _close(ours, ca.DeepLift(twin).attribute(x.clone(), **kw)[0], atol=1e-12)  # Captum is right on the twin
        if name == "dilated":
            with pytest.raises(ValueError, match="output_size"):
                ca.DeepLift(model).attribute(x.clone(), **kw)
            return
        theirs, their_delta = ca.DeepLift(model).attribute(x.clone(), **kw)
    assert (theirs - ours).abs().max() > 0.25 * ours.abs().max() and their_delta.abs().max() > 0.01


def test_layer_deep_lift_of_a_list_of_layers_gives_lists_like_layer_lrp():
    from xattr.compat.captum import LayerDeepLift

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    attrs, deltas = LayerDeepLift(m, [m[1], m[3]]).attribute(x, target=0, return_convergence_delta=True)
    assert isinstance(attrs, list) and isinstance(deltas, list) and len(deltas) == 2
    for layer, a, d in zip([m[1], m[3]], attrs, deltas):
        one, one_delta = LayerDeepLift(m, layer).attribute(x, target=0, return_convergence_delta=True)
        torch.testing.assert_close(a, one)
        torch.testing.assert_close(d, one_delta)
