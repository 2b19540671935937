"""The Captum conformance cases for LRP and LayerLRP, and the script that writes Captum's numbers.

Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_lrp_expected.py   # rewrites tests/captum_lrp_expected.py

Like tests/gen_captum_expected.py (whose inputs and formatting it reuses), this module imports
only torch: tests/test_compat_lrp.py runs the same cases through ``xattr.compat.captum.lrp``
with the same ``run`` function. Rules are given by name (``{"conv1": ("GammaRule", {...})}``)
and set as ``module.rule`` before each call, from Captum's rule classes for Captum and from
``xattr.compat.captum.lrp``'s lookalikes for xattr; Captum deletes them after the call, ``run``
does too.
  CASES      xattr must match Captum's stored result to float precision.
  DIFFERENT  models where Captum's hooks give a different (non-conservative) answer: stored so
             the tests can show the difference (docs/migration_rules.md, LRP).
  ERRORS     models Captum refuses, with the message it raised.
  VGG        a summary of Captum's LRP of torchvision's vgg11 (random weights): relevance summed
             over channels and 16 x 16 blocks, per channel, and the delta.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

try:
    from . import gen_captum_expected as G
except ImportError:
    import gen_captum_expected as G


class CNN(nn.Module):
    """Every layer type Captum has a default rule for, with the flatten inside forward (Captum
    needs a rule for each leaf module, and nn.Flatten has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(3)
        self.conv2, self.relu2 = nn.Conv2d(3, 4, 2), nn.ReLU()
        self.avg, self.adaptive = nn.AvgPool2d(2, stride=1), nn.AdaptiveAvgPool2d((2, 1))
        self.drop, self.fc = nn.Dropout(0.3), nn.Linear(8, 3)
        with torch.no_grad():  # batch-norm statistics away from the identity
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        h = self.bn(self.pool(self.relu1(self.conv1(x))))
        h = self.adaptive(self.avg(self.relu2(self.conv2(h))))
        return self.fc(self.drop(torch.flatten(h, 1)))


class TanhMLP(nn.Module):
    """Linear, tanh, linear, ReLU, dropout, linear; ``functional=True`` calls torch.tanh in place
    of the nn.Tanh module (same weights: Captum treats the two differently)."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.l1, self.act, self.l2 = nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5)
        self.relu, self.drop, self.l3 = nn.ReLU(), nn.Dropout(), nn.Linear(5, 3)

    def forward(self, x):
        h = self.l1(x)
        h = torch.tanh(h) if self.functional else self.act(h)
        return self.l3(self.drop(self.relu(self.l2(h))))


class TwoInputs(nn.Module):
    """f(x1, x2, mask): two attributed inputs joined by concatenation; a 0/1 mask on x2."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.relu, self.l3 = nn.Linear(3, 4), nn.Linear(2, 3), nn.ReLU(), nn.Linear(7, 3)

    def forward(self, x1, x2, mask):
        return self.l3(self.relu(torch.cat([self.l1(x1), self.l2(x2 * mask)], 1)))


class Add(nn.Module):
    """x + y as a module, so Captum can hold a rule for it (what its Addition_Module is for)."""

    def forward(self, x, y):
        return x + y


class Residual(nn.Module):
    """A bias-free residual block: relu(h + l2(h)) with h = relu(l1(x)). ``module_add=True`` adds
    through the `Add` module (Captum's way), otherwise with ``+`` (same weights)."""

    def __init__(self, module_add: bool = False) -> None:
        super().__init__()
        self.module_add = module_add
        self.l1, self.r1, self.l2 = nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False)
        self.r2, self.l3 = nn.ReLU(), nn.Linear(4, 3, bias=False)
        with torch.no_grad():  # activations of order one, where Captum's treatment of ``+`` shows
            for layer in (self.l1, self.l2, self.l3):
                layer.weight.mul_(4.0)
        if module_add:  # a leaf without a rule: Captum refuses the model unless one is set
            self.add = Add()

    def forward(self, x):
        h = self.r1(self.l1(x))
        s = self.add(h, self.l2(h)) if self.module_add else h + self.l2(h)
        return self.l3(self.r2(s))


class FunctionalAndReused(nn.Module):
    """F.relu between two layers, then one nn.ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 4), nn.Linear(4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = torch.nn.functional.relu(self.l1(x))
        return self.l4(self.relu(self.l3(self.relu(self.l2(h)))))


class ReusedLinear(nn.Module):
    """One bias-free linear layer applied twice: Captum refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.relu, self.out = nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.out(self.relu(self.lin(self.relu(self.lin(x)))))


def build_models() -> dict[str, nn.Module]:
    return {
        "cnn": G._build(20, CNN),
        "mlp": G._build(21, TanhMLP),
        "ftanh": G._build(21, lambda: TanhMLP(functional=True)),
        "two": G._build(22, TwoInputs),
        "res": G._build(23, Residual),
        "res_add": G._build(23, lambda: Residual(module_add=True)),
        "frelu": G._build(24, FunctionalAndReused),
        "reused": G._build(25, ReusedLinear),
    }


IMG = G._randn(30, 2, 2, 8, 8)
X = G.X  # (2, 3)
PAIR = (G.X1, G.X2)
MASK = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
INPUTS = {"x": X, "img": IMG, "pair": PAIR, "pos": X.abs()}


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # "LRP" or "LayerLRP"
    model: str
    inputs: str
    kwargs: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)  # module name -> (rule class name, constructor keywords)
    layer: Any = None  # LayerLRP: module name, or a list of names


def _rule_classes(lib):
    """Captum's rule classes for Captum; xattr.compat.captum.lrp's lookalikes otherwise."""
    if lib.__name__.startswith("captum"):
        return importlib.import_module("captum.attr._utils.lrp_rules")
    return importlib.import_module("xattr.compat.captum.lrp")


def layer_of(model: nn.Module, spec):
    return [model.get_submodule(s) for s in spec] if isinstance(spec, list) else model.get_submodule(spec)


def run(case: Case, lib: Any, models: dict, **overrides):
    """Sets the case's rules, builds ``lib``'s LRP or LayerLRP and calls ``attribute``; then takes
    the rules off again (Captum deletes them itself)."""
    model = models[case.model]
    classes = _rule_classes(lib)
    for name, (cls, kw) in case.rules.items():
        model.get_submodule(name).rule = getattr(classes, cls)(**kw)
    try:
        if case.method == "LRP":
            obj = lib.LRP(model)
        else:
            obj = lib.LayerLRP(model, layer_of(model, case.layer))
        return obj.attribute(INPUTS[case.inputs], **{**case.kwargs, **overrides})
    finally:
        for name in case.rules:
            module = model.get_submodule(name)
            if hasattr(module, "rule"):
                del module.rule


DELTA = {"return_convergence_delta": True}
CNN_RULES = {
    "conv1": ("GammaRule", {}),
    "conv2": ("Alpha1_Beta0_Rule", {}),
    "bn": ("IdentityRule", {}),
    "fc": ("EpsilonRule", {"epsilon": 0.1}),
}
CNN_ZERO_BIAS = {
    "conv1": ("GammaRule", {"gamma": 0.5, "set_bias_to_zero": True}),
    "conv2": ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True}),
    "pool": ("EpsilonRule", {"epsilon": 0.05}),
}
MLP_RULES = {"l1": ("EpsilonRule", {"epsilon": 0.5}), "l2": ("GammaRule", {"gamma": 0.1}), "act": ("IdentityRule", {})}

CASES = [
    # LRP: Captum's default rule for every supported layer type, every target form
    Case("lrp_cnn_default", "LRP", "cnn", "img", {"target": 1, **DELTA}),
    Case("lrp_cnn_list_target", "LRP", "cnn", "img", {"target": [0, 2]}),
    Case("lrp_cnn_rules", "LRP", "cnn", "img", {"target": 2, **DELTA}, rules=CNN_RULES),
    Case("lrp_cnn_zero_bias_rules", "LRP", "cnn", "img", {"target": torch.tensor([1, 0]), **DELTA},
         rules=CNN_ZERO_BIAS),  # fmt: skip
    Case("lrp_mlp_int", "LRP", "mlp", "x", {"target": 0, **DELTA}),
    Case("lrp_mlp_tensor_target", "LRP", "mlp", "x", {"target": torch.tensor([2, 1]), **DELTA}),
    Case("lrp_mlp_rules", "LRP", "mlp", "x", {"target": 0, **DELTA}, rules=MLP_RULES),
    Case("lrp_mlp_one_element_target", "LRP", "mlp", "pos", {"target": torch.tensor(1)}),
    Case("lrp_two_inputs", "LRP", "two", "pair", {"target": 1, "additional_forward_args": MASK, **DELTA}),
    Case("lrp_two_inputs_rules", "LRP", "two", "pair", {"target": [2, 0], "additional_forward_args": (MASK,)},
         rules={"l1": ("GammaRule", {"gamma": 1.0}), "l3": ("Alpha1_Beta0_Rule", {})}),  # fmt: skip
    Case("lrp_res_add_module", "LRP", "res_add", "x", {"target": 1, **DELTA}, rules={"add": ("EpsilonRule", {})}),
    Case("lrp_frelu_reused_relu", "LRP", "frelu", "x", {"target": 2, **DELTA}),
    # LayerLRP: a layer's output and input, a list of layers, rules, two inputs
    Case("layer_cnn_conv2", "LayerLRP", "cnn", "img", {"target": 1, **DELTA}, layer="conv2"),
    Case("layer_cnn_conv2_input", "LayerLRP", "cnn", "img", {"target": 0, "attribute_to_layer_input": True},
         layer="conv2"),  # fmt: skip
    Case("layer_cnn_list", "LayerLRP", "cnn", "img", {"target": [2, 1], **DELTA}, layer=["conv1", "bn", "fc"]),
    Case("layer_cnn_rules", "LayerLRP", "cnn", "img", {"target": 2, **DELTA}, rules=CNN_RULES, layer="bn"),
    Case("layer_cnn_pool_input", "LayerLRP", "cnn", "img", {"target": 1, "attribute_to_layer_input": True, **DELTA},
         rules=CNN_RULES, layer="pool"),  # fmt: skip
    Case("layer_mlp_rules", "LayerLRP", "mlp", "x", {"target": 1, **DELTA}, rules=MLP_RULES, layer="l2"),
    Case("layer_two_inputs", "LayerLRP", "two", "pair", {"target": 0, "additional_forward_args": (MASK,),
         "attribute_to_layer_input": True, **DELTA}, layer="l3"),  # fmt: skip
]

# Captum propagates relevance, not a gradient, between its hooked modules, so an operation
# outside a module gets the chain rule applied to relevance: torch.tanh multiplies it by
# tanh'(x), a plain ``+`` copies all of it to both terms. xattr gives "ftanh" the numbers of
# "mlp" (nn.Tanh) and "res" those of "res_add" (the Add module with Captum's epsilon rule).
DIFFERENT = [
    Case("diff_ftanh", "LRP", "ftanh", "x", {"target": 0, **DELTA}),
    Case("diff_res_plus", "LRP", "res", "x", {"target": 1, **DELTA}),
]
SAME_AS = {"diff_ftanh": "lrp_mlp_int", "diff_res_plus": "lrp_res_add_module"}  # xattr's numbers: these cases'.

ERROR_CASES = [Case("reused_linear", "LRP", "reused", "x", {"target": 0})]


# ----------------------------------------------------------------------------- torchvision's vgg11


def vgg_model_and_input():
    """torchvision's vgg11 with random weights (seed 0), eval, and a (2, 3, 64, 64) batch in [0, 1)."""
    from xattr.testing.vision import models

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models().vgg11().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, x


VGG_TARGET = [3, 7]


def vgg_summary(relevance: torch.Tensor) -> dict:
    """Block sums (B, 4, 4) over channels and 16 x 16 pixels, and per-channel sums (B, 3)."""
    r = relevance.detach().double()
    return {"blocks": r.sum(1).reshape(r.shape[0], 4, 16, 4, 16).sum((2, 4)), "channels": r.sum((2, 3))}


# ----------------------------------------------------------------------------- writing the file


def _entry(case: Case, out) -> str:
    attr, delta = out if case.kwargs.get("return_convergence_delta") else (out, None)
    s = "{\n"
    if isinstance(attr, list):  # a list of layers: stored as a tuple, flagged
        s += '        "list": True,\n'
        attr, delta = tuple(attr), (tuple(d.detach() for d in delta) if delta is not None else None)
    s += f'        "attr": {G._fmt(attr, 8)},\n'
    if delta is not None:
        s += f'        "delta": {G._fmt(delta.detach() if isinstance(delta, torch.Tensor) else delta, 8)},\n'
    return s + "    }"


def main() -> None:
    import warnings

    import captum.attr

    warnings.filterwarnings("ignore")  # Captum's notices about inputs' requires_grad
    models = build_models()
    lines = G.expected_lines(
        "gen_captum_lrp_expected.py",
        "attr: the relevance (a tuple for tuple inputs; list: True marks a list of layers); delta: when asked for.",
        "DIFFERENT: where Captum's numbers differ from xattr's; ERRORS: what Captum raised; VGG: a vgg11 summary.",
        CASES, [], run, models, _entry, 0,
    )  # fmt: skip
    lines += ["DIFFERENT = {"]
    for case in DIFFERENT:
        lines.append(f'    "{case.name}": {_entry(case, run(case, captum.attr, models))},')
    lines += ["}", "", "ERRORS = {"]
    for case in ERROR_CASES:
        try:
            run(case, captum.attr, models)
        except Exception as err:  # noqa: BLE001 - recording what Captum raises
            lines.append(f'    "{case.name}": ({type(err).__name__!r}, {str(err).splitlines()[0]!r}),')
        else:
            raise AssertionError(f"Captum no longer refuses {case.name}")
    lines += ["}", ""]
    model, x = vgg_model_and_input()
    relevance, delta = captum.attr.LRP(model).attribute(x, target=VGG_TARGET, return_convergence_delta=True)
    summary = vgg_summary(relevance)
    lines += [
        "VGG = {",
        f'    "blocks": {G._fmt(summary["blocks"], 4)},',
        f'    "channels": {G._fmt(summary["channels"], 4)},',
        f'    "delta": {G._fmt(delta.detach().double(), 4)},',
        "}",
        "",
    ]
    summary = f"{len(CASES)} cases, {len(DIFFERENT)} differences, {len(ERROR_CASES)} errors, vgg11"
    G.write_expected("captum_lrp_expected.py", lines, summary)


if __name__ == "__main__":
    main()
