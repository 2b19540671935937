"""The Captum conformance cases for the layer classes, and the script that writes Captum's numbers.

Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_layer_expected.py   # rewrites tests/captum_layer_expected.py

Like tests/gen_captum_expected.py (whose models, inputs and formatting it reuses), this module
imports only torch: tests/test_compat_layer.py runs the same cases through
``xattr.compat.captum`` with the same ``run`` function.
  CASES       deterministic; xattr must match Captum's stored result to float precision.
  STAT_CASES  LayerGradientShap with random draws; xattr's estimate must agree with Captum's
              N_CAPTUM-sample one within Monte Carlo error.
  INTERPOLATE LayerAttribution.interpolate of a stored Grad-CAM map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

try:
    from . import gen_captum_expected as G
except ImportError:
    import gen_captum_expected as G

N_CAPTUM = G.N_CAPTUM


class Pair(nn.Module):
    """A layer with a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return torch.tanh(self.a(x)), torch.sin(self.b(x))


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair, self.out = Pair(), nn.Linear(5, 3)

    def forward(self, x):
        a, b = self.pair(x)
        return self.out(torch.cat([a * a, b], 1))


class Shared(nn.Module):
    """A Softplus module called twice per forward (a reused module)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.act = nn.Softplus()

    def forward(self, x):
        return self.l3(self.act(self.l2(self.act(self.l1(x)))))


def build_models() -> dict[str, nn.Module]:
    return {
        "mlp": G._build(
            10, lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Softplus(), nn.Linear(4, 3))
        ),
        "multi": G._build(11, lambda: nn.Sequential(nn.Linear(3, 6), nn.Softplus(), nn.Linear(6, 6), G.Reshape(2, 3))),
        "two": G._build(3, G.TwoInputs),
        "conv": G._build(
            12,
            lambda: nn.Sequential(
                nn.Conv2d(1, 3, 2), nn.Softplus(), nn.Conv2d(3, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(2, 3)
            ),
        ),
        "tuple": G._build(13, TupleNet),
        "shared": G._build(14, Shared),
        "lin": G._build(15, lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))),
        "linear2": G._build(5, G.TwoLinear),
    }


INPUTS = G.INPUTS  # x (2, 3), pair ((2, 3), (2, 2)), x_tuple, img (2, 1, 3, 3)
B_ROW, B_EACH, B_DIST, B_DIST2 = G.B_ROW, G.B_EACH, G.B_DIST, G.B_DIST2
TWO_ARGS = G.TWO_ARGS


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # class name, the same in captum.attr and xattr.compat.captum
    model: str
    layer: Any  # attribute path of the layer in the model ("2", "l1"), or a list of them
    inputs: str
    kwargs: dict = field(default_factory=dict)
    ctor: dict = field(default_factory=dict)
    xattr_ctor: dict = field(default_factory=dict)  # constructor keywords only xattr has (call_index)
    samples: str | None = None  # STAT_CASES: the keyword holding the number of samples


def layer_of(model: nn.Module, spec):
    if isinstance(spec, list):
        return [layer_of(model, s) for s in spec]
    return model.get_submodule(spec)


def run(case: Case, lib: Any, models: dict, **overrides):
    """Builds the case's layer attribution object from ``lib`` and calls ``attribute``."""
    model = models[case.model]
    ctor = {**case.ctor, **(case.xattr_ctor if lib.__name__.startswith("xattr") else {})}
    obj = getattr(lib, case.method)(model, layer_of(model, case.layer), **ctor)
    return obj.attribute(INPUTS[case.inputs], **{**case.kwargs, **overrides})


METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
PAIR = {"baselines": (B_ROW, 0.1), "target": [1, 0], **TWO_ARGS}

CASES = [
    # LayerActivation: outputs, inputs, a list of layers, a tuple-output layer, pass-through args
    Case("act_mlp", "LayerActivation", "mlp", "2", "x"),
    Case("act_layer_input", "LayerActivation", "mlp", "2", "x", {"attribute_to_layer_input": True}),
    Case("act_layer_list", "LayerActivation", "mlp", ["0", "2"], "x"),
    Case("act_tuple_layer", "LayerActivation", "tuple", "pair", "x"),
    Case("act_pair_args", "LayerActivation", "two", "l3", "pair", TWO_ARGS),
    # LayerGradientXActivation
    Case("gxa_int", "LayerGradientXActivation", "mlp", "2", "x", {"target": 1}),
    Case("gxa_local_list_target", "LayerGradientXActivation", "mlp", "2", "x", {"target": [0, 2]},
         ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("gxa_layer_list", "LayerGradientXActivation", "mlp", ["0", "2"], "x", {"target": 1}),
    Case("gxa_tuple_layer", "LayerGradientXActivation", "tuple", "pair", "x", {"target": 2}),
    Case("gxa_layer_input", "LayerGradientXActivation", "mlp", "4", "x",
         {"target": torch.tensor([2, 1]), "attribute_to_layer_input": True}),  # fmt: skip
    Case("gxa_tuple_target", "LayerGradientXActivation", "multi", "2", "x", {"target": (1, 2)}),
    Case("gxa_pair_args", "LayerGradientXActivation", "two", "l1", "pair", {"target": 0, **TWO_ARGS}),
    # LayerIntegratedGradients
    *[
        Case(f"lig_{m}", "LayerIntegratedGradients", "mlp", "2", "x",
             {"target": [0, 2], "n_steps": 7, "method": m, "return_convergence_delta": True})
        for m in METHODS
    ],  # fmt: skip
    Case("lig_row_baseline", "LayerIntegratedGradients", "mlp", "2", "x", {"baselines": B_ROW, "target": 1, "n_steps": 20}),
    Case("lig_internal_batch", "LayerIntegratedGradients", "mlp", "2", "x",
         {"target": 1, "n_steps": 10, "internal_batch_size": 3, "return_convergence_delta": True}),  # fmt: skip
    Case("lig_not_multiplied", "LayerIntegratedGradients", "mlp", "2", "x", {"baselines": B_EACH, "target": 0, "n_steps": 9},
         ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("lig_layer_list", "LayerIntegratedGradients", "two", ["l1", "l2"], "pair",
         {**PAIR, "n_steps": 8, "return_convergence_delta": True}),  # fmt: skip
    Case("lig_one_layer_list", "LayerIntegratedGradients", "two", ["l3"], "pair", {**PAIR, "n_steps": 6}),
    Case("lig_layer_input", "LayerIntegratedGradients", "mlp", "2", "x",
         {"target": 2, "n_steps": 6, "attribute_to_layer_input": True}),  # fmt: skip
    Case("lig_tuple_layer", "LayerIntegratedGradients", "tuple", "pair", "x",
         {"target": 1, "n_steps": 8, "return_convergence_delta": True}),  # fmt: skip
    Case("lig_list_of_tuples", "LayerIntegratedGradients", "multi", "0", "x", {"target": [(0, 1), (1, 2)], "n_steps": 5}),
    Case("lig_conv", "LayerIntegratedGradients", "conv", "0", "img",
         {"target": 2, "n_steps": 6, "method": "riemann_middle", "internal_batch_size": 4}),  # fmt: skip
    # LayerConductance: every rule matches exactly (only the nodes are used, not the weights)
    *[
        Case(f"cond_{m}", "LayerConductance", "mlp", "2", "x",
             {"target": [0, 2], "n_steps": 7, "method": m, "return_convergence_delta": True})
        for m in METHODS
    ],  # fmt: skip
    Case("cond_internal_batch", "LayerConductance", "mlp", "2", "x",
         {"baselines": B_EACH, "target": 1, "n_steps": 10, "internal_batch_size": 5, "return_convergence_delta": True}),  # fmt: skip
    Case("cond_pair_args", "LayerConductance", "two", "l3", "pair", {**PAIR, "n_steps": 6, "return_convergence_delta": True}),
    Case("cond_layer_input", "LayerConductance", "mlp", "4", "x",
         {"baselines": 0.5, "target": 1, "attribute_to_layer_input": True}),  # fmt: skip
    Case("cond_conv", "LayerConductance", "conv", "1", "img", {"target": 2, "n_steps": 5}),
    Case("cond_tuple_layer", "LayerConductance", "tuple", "pair", "x", {"target": 0, "n_steps": 6}),
    # a reused module: Captum silently takes the last call, xattr needs call_index
    Case("cond_reused_last_call", "LayerConductance", "shared", "act", "x", {"target": 1, "n_steps": 6},
         xattr_ctor={"call_index": 1}),  # fmt: skip
    Case("act_reused_last_call", "LayerActivation", "shared", "act", "x", xattr_ctor={"call_index": 1}),
    # InternalInfluence
    *[
        Case(f"ii_{m}", "InternalInfluence", "mlp", "2", "x", {"target": [0, 2], "n_steps": 7, "method": m})
        for m in METHODS
    ],  # fmt: skip
    Case("ii_internal_batch", "InternalInfluence", "mlp", "2", "x",
         {"baselines": B_ROW, "target": 1, "n_steps": 10, "internal_batch_size": 3}),  # fmt: skip
    Case("ii_pair_args", "InternalInfluence", "two", "l3", "pair", {**PAIR, "n_steps": 6, "attribute_to_layer_input": True}),
    Case("ii_conv", "InternalInfluence", "conv", "0", "img", {"target": 1, "n_steps": 5}),
    # LayerGradCam
    Case("cam_default", "LayerGradCam", "conv", "0", "img", {"target": 1}),
    Case("cam_relu_list_target", "LayerGradCam", "conv", "0", "img", {"target": [1, 2], "relu_attributions": True}),
    Case("cam_per_channel", "LayerGradCam", "conv", "1", "img", {"target": 2, "attr_dim_summation": False}),
    Case("cam_linear_layer", "LayerGradCam", "mlp", "2", "x", {"target": 2}),
    Case("cam_layer_input", "LayerGradCam", "conv", "2", "img", {"target": 0, "attribute_to_layer_input": True}),
    Case("cam_tuple_layer", "LayerGradCam", "tuple", "pair", "x", {"target": 1}),
    # LayerGradientShap on models linear in their inputs: the random path positions cancel
    Case("lgs_linear_one_baseline", "LayerGradientShap", "lin", "0", "x",
         {"baselines": B_ROW, "target": 1, "n_samples": 3, "return_convergence_delta": True}),  # fmt: skip
    Case("lgs_linear_local_noise", "LayerGradientShap", "lin", "0", "x",
         {"baselines": B_DIST, "stdevs": 0.3, "target": [0, 1], "n_samples": 4}, ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("lgs_linear_local_delta", "LayerGradientShap", "lin", "1", "x",
         {"baselines": B_ROW, "target": [1, 0], "n_samples": 2, "return_convergence_delta": True},
         ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("lgs_linear_pair", "LayerGradientShap", "linear2", "l1", "pair",
         {"baselines": (B_DIST2[0][:1], B_DIST2[1][:1]), "target": 1, "n_samples": 3, "additional_forward_args": (G.SCALE,),
          "return_convergence_delta": True}),  # fmt: skip
]

STAT_CASES = [
    Case("stat_lgs_one_baseline", "LayerGradientShap", "mlp", "2", "x", {"baselines": B_ROW, "target": 2},
         samples="n_samples"),  # fmt: skip
    Case("stat_lgs_noise", "LayerGradientShap", "mlp", "2", "x", {"baselines": B_DIST, "stdevs": 0.2, "target": 0},
         samples="n_samples"),  # fmt: skip
    Case("stat_lgs_local_conv", "LayerGradientShap", "conv", "0", "img",
         {"baselines": G._dist_fn, "stdevs": 0.1, "target": 1}, ctor={"multiply_by_inputs": False}, samples="n_samples"),  # fmt: skip
]

INTERPOLATE = [("cam_default", (3, 3), "nearest"), ("cam_default", (5, 4), "bilinear"), ("cam_per_channel", (3, 3), "area")]


# ----------------------------------------------------------------------------- writing the file


def _entry(case: Case, out) -> str:
    attr, delta = out if case.kwargs.get("return_convergence_delta") else (out, None)
    s = "{\n"
    if isinstance(attr, list):  # a list of layers: stored as a tuple, flagged
        s += '        "list": True,\n'
        attr = tuple(attr)
    if isinstance(attr, tuple) and any(isinstance(a, tuple) for a in attr):
        raise ValueError(f"{case.name}: nested tuples are not stored")
    s += f'        "attr": {G._fmt(attr, 8)},\n'
    if delta is not None:
        s += f'        "delta": {G._fmt(delta, 8)},\n'
    return s + "    }"


def main() -> None:
    import warnings

    import captum.attr

    warnings.filterwarnings("ignore")  # Captum's multiple-layer notice
    models = build_models()
    lines = G.expected_lines(
        "gen_captum_layer_expected.py",
        "attr: the attributions (a tuple for tuple layers; list: True marks a list of layers); delta: when asked for.",
        f"STAT: estimates from N_CAPTUM = {N_CAPTUM} samples. INTERPOLATE: LayerAttribution.interpolate of a stored map.",
        CASES, STAT_CASES, run, models, _entry, N_CAPTUM,
    )  # fmt: skip
    lines += ["INTERPOLATE = {"]
    for name, dims, mode in INTERPOLATE:
        case = next(c for c in CASES if c.name == name)
        out = captum.attr.LayerAttribution.interpolate(run(case, captum.attr, models), dims, mode)
        lines.append(f'    ("{name}", {dims!r}, "{mode}"): {G._fmt(out.detach(), 4)},')
    lines += ["}", ""]
    summary = f"{len(CASES)} cases, {len(STAT_CASES)} statistical cases, {len(INTERPOLATE)} interpolations"
    G.write_expected("captum_layer_expected.py", lines, summary)


if __name__ == "__main__":
    main()
