"""The Captum conformance cases for the rule-based classes, and the script writing Captum's numbers.

GuidedBackprop, Deconvolution, GuidedGradCam, DeepLift, DeepLiftShap, LayerDeepLift,
LayerDeepLiftShap, NeuronDeepLift, NeuronDeepLiftShap, NeuronGuidedBackprop, NeuronDeconvolution.
Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_backprop_expected.py   # rewrites tests/captum_backprop_expected.py

This module imports only torch: tests/test_compat_backprop.py runs the same cases through
``xattr.compat.captum`` with the same ``run`` function.

  CASES        deterministic; xattr must match Captum to float precision. The models are ones
               Captum handles correctly: every hooked module (nn.ReLU, nn.MaxPool2d, nn.Tanh, ...)
               is called once, and no two of them are called back to back (see DIFF_CASES).
  DIFF_CASES   Captum's numbers where xattr deliberately differs (docs/migration_rules.md):
               - ``adjacent_*``: two hooked modules back to back (nn.ReLU -> nn.MaxPool2d,
                 nn.Tanh -> nn.Sigmoid). Captum records the first module's output gradient with
                 a tensor hook on the tensor they share, and that hook runs before the second
                 module's input hook replaces the gradient with its DeepLift multiplier, so the
                 first module rescales the *ordinary* gradient: summation-to-delta fails. The
                 ``separated_*`` twins put a no-op module (``x * 1``) between the two; Captum is
                 then right and its numbers are xattr's on the adjacent model.
               - ``functional``: ``F.relu`` in ``forward``; Captum's hooks never see it.
               - ``layer_input_*``: LayerDeepLift(Shap) with attribute_to_layer_input=True on a
                 nonlinear module. Captum's pre-hook capturing the layer input runs after the
                 DeepLift pre-hook has swapped that input for a clone, so the gradient it takes
                 is the layer's ordinary derivative, not its Rescale multiplier.
               - ``pool_equal_region``: where a max-pool input equals its reference, Captum's
                 fallback to the ordinary gradient takes the first example's (``grad_input[0]``,
                 broadcast over the batch), so other examples' multipliers differ from what
                 Captum computes for them alone (``..._second_alone``).
               - ``softmax``: Captum's softmax rule subtracts one mean over the whole doubled
                 batch, so an example's attributions depend on the other examples.
               - ``ndl_callable``: a neuron selector that multiplies two neurons. Captum keeps the
                 product's gradient there (summation-to-delta fails); xattr's DeepLift has a
                 rule for products of two activations, which conserves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from .gen_captum_expected import _build, _entry, _randn, expected_lines, signature_lines, write_expected
except ImportError:  # run as a script
    from gen_captum_expected import _build, _entry, _randn, expected_lines, signature_lines, write_expected


class TwoRelu(nn.Module):
    """f(x1, x2, scale, shift): two attributed inputs, a per-example tensor and a float."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 2)
        self.act = nn.ReLU()

    def forward(self, x1, x2, scale, shift=0.0):
        return self.l3(self.act(self.l1(x1) + self.l2(x2)) * scale + shift)


class ImgVec(nn.Module):
    """An image and a vector: Grad-CAM's map resizes to the image only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.vec = nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Linear(2, 3)
        self.out = nn.Linear(2 * 5 * 5 + 3, 3)

    def forward(self, img, vec):
        return self.out(torch.cat([self.act(self.conv(img)).flatten(1), self.vec(vec)], 1))


class NoOp(nn.Module):
    """``x * 1``: a new tensor between two hooked modules, which is all Captum needs."""

    def forward(self, x):
        return x * 1.0


class FunctionalRelu(nn.Module):
    """The ``relu`` model's layers (same seed, same parameters) with ``F.relu`` instead of nn.ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 5), nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def _relu_mlp():
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _acts():
    return nn.Sequential(
        nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 5), nn.ELU(), nn.Linear(5, 5),
        nn.LeakyReLU(0.1), nn.Linear(5, 4), nn.Softplus(), nn.Linear(4, 3),
    )  # fmt: skip


def _cnn():  # (B, 1, 6, 6) -> conv 5x5 -> ReLU -> conv 4x4 -> max-pool 2x2 -> MLP
    return nn.Sequential(
        nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 6), nn.ReLU(),
        nn.Linear(6, 3),
    )  # fmt: skip


def _pool(sep: bool):  # conv -> ReLU -> [no-op] -> max-pool -> linear; the no-op holds no parameters
    return lambda: nn.Sequential(
        nn.Conv2d(1, 3, 2), nn.ReLU(), *([NoOp()] if sep else []), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)
    )


def _tanh_sigmoid(sep: bool):
    return lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), *([NoOp()] if sep else []), nn.Sigmoid(), nn.Linear(5, 3))


def build_models() -> dict[str, nn.Module]:
    return {
        "relu": _build(40, _relu_mlp),
        "acts": _build(41, _acts),
        "cnn": _build(42, _cnn),
        "two": _build(43, TwoRelu),
        "imgvec": _build(44, ImgVec),
        "adjacent_pool": _build(45, _pool(False)),
        "separated_pool": _build(45, _pool(True)),
        "adjacent_act": _build(46, _tanh_sigmoid(False)),
        "separated_act": _build(46, _tanh_sigmoid(True)),
        "functional": _build(40, FunctionalRelu),
        "softmax": _build(47, lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 3))),
        "pool": _build(48, lambda: nn.Sequential(nn.Conv2d(1, 2, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))),
    }


X = _randn(50, 2, 3)
X1, X2 = _randn(51, 2, 3), _randn(52, 2, 2)
SCALE = torch.tensor([[1.5], [0.5]], dtype=torch.float64)
IMG = _randn(53, 2, 1, 6, 6)
VEC = _randn(54, 2, 2)
IMG3 = _randn(62, 3, 1, 5, 5)
INPUTS = {
    "x": X, "x_first": X[:1], "pair": (X1, X2), "x_tuple": (X,), "img": IMG, "imgvec": (IMG, VEC), "img3": IMG3,
    "img3_second": IMG3[1:2],
}  # fmt: skip

B_ROW = _randn(55, 1, 3)
B_EACH = _randn(56, 2, 3)
B_DIST = _randn(57, 4, 3)
B_DIST2 = (_randn(58, 5, 3), _randn(59, 5, 2))
B_IMG = _randn(60, 2, 1, 6, 6)
B_IMG_DIST = _randn(61, 3, 1, 6, 6)
B_SAME = torch.stack([X[0], B_EACH[1]])  # example 0 is its own reference: every difference is 0
B_NEAR = torch.stack([X[0] + 1e-6, B_EACH[1]])  # example 0 within eps=1e-3 of its reference
B_REGION = _randn(63, 3, 1, 5, 5)
B_REGION[:, :, :3, :3] = IMG3[:, :, :3, :3]  # a region equal to the input: max-pool inputs equal there


def product_of_first_and_third(h):
    """A callable neuron selector: (B, n) activations -> (B,)."""
    return h[:, 0] * h[:, 2]


def img_dist(inputs):
    """A callable baseline distribution (Captum passes the inputs): 4 references."""
    return torch.cat([inputs * 0.5, inputs.flip(0) * -0.3])


def doubled(multipliers):
    """A one-parameter custom_attribution_func."""
    return tuple(2 * m for m in multipliers)


def squared_difference(multipliers, inputs, baselines):
    """A three-parameter custom_attribution_func."""
    return tuple(m * (x - b) ** 2 for m, x, b in zip(multipliers, inputs, baselines))


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # class name, the same in captum.attr and xattr.compat.captum
    model: str
    inputs: str
    kwargs: dict = field(default_factory=dict)
    ctor: dict = field(default_factory=dict)
    layer: str | None = None  # submodule name, for the layer and neuron classes


def run(case: Case, lib: Any, models: dict, **overrides):
    """Builds the case's attribution object from ``lib`` and calls ``attribute``."""
    model = models[case.model]
    layer = () if case.layer is None else (model.get_submodule(case.layer),)
    obj = getattr(lib, case.method)(model, *layer, **case.ctor)
    return obj.attribute(INPUTS[case.inputs], **{**case.kwargs, **overrides})


TWO_ARGS = {"additional_forward_args": (SCALE, 0.25)}
DELTA = {"return_convergence_delta": True}
LOCAL = {"multiply_by_inputs": False}

CASES = [
    # GuidedBackprop / Deconvolution: target forms, max-pool and conv, tuple inputs with extra args
    Case("gbp_relu_int", "GuidedBackprop", "relu", "x", {"target": 1}),
    Case("gbp_tensor_target", "GuidedBackprop", "relu", "x", {"target": torch.tensor([2, 0])}),
    Case("gbp_cnn_list", "GuidedBackprop", "cnn", "img", {"target": [1, 2]}),
    Case("gbp_pair_args", "GuidedBackprop", "two", "pair", {"target": 0, **TWO_ARGS}),
    Case("gbp_one_tuple", "GuidedBackprop", "relu", "x_tuple", {"target": 2}),
    Case("deconv_relu", "Deconvolution", "relu", "x", {"target": 2}),
    Case("deconv_cnn", "Deconvolution", "cnn", "img", {"target": 1}),
    Case("deconv_pair_args", "Deconvolution", "two", "pair", {"target": [1, 0], **TWO_ARGS}),
    # GuidedGradCam
    Case("ggc_default", "GuidedGradCam", "cnn", "img", {"target": 1}, layer="2"),
    Case("ggc_first_conv_list", "GuidedGradCam", "cnn", "img", {"target": [2, 1]}, layer="0"),
    Case("ggc_bilinear", "GuidedGradCam", "cnn", "img", {"target": 2, "interpolate_mode": "bilinear"}, layer="2"),
    Case("ggc_layer_input", "GuidedGradCam", "cnn", "img", {"target": 2, "attribute_to_layer_input": True}, layer="2"),
    Case("ggc_vector_input_empty", "GuidedGradCam", "imgvec", "imgvec", {"target": 1}, layer="conv"),
    # DeepLift: baseline forms, targets, every supported nonlinearity, deltas, custom functions, eps
    Case("dl_zero_delta", "DeepLift", "relu", "x", {"target": 1, **DELTA}),
    Case("dl_scalar_list_target", "DeepLift", "relu", "x", {"baselines": 0.5, "target": [0, 2], **DELTA}),
    Case("dl_row_tensor_target", "DeepLift", "relu", "x", {"baselines": B_ROW, "target": torch.tensor([2, 0])}),
    Case("dl_relu_each_delta", "DeepLift", "relu", "x", {"baselines": B_EACH, "target": 1, **DELTA}),
    Case("dl_each_not_multiplied", "DeepLift", "relu", "x", {"baselines": B_EACH, "target": 1, **DELTA}, ctor=LOCAL),
    Case("dl_equal_row_local", "DeepLift", "relu", "x", {"baselines": B_SAME, "target": 0}, ctor=LOCAL),
    Case("dl_acts_delta", "DeepLift", "acts", "x", {"baselines": B_EACH, "target": 2, **DELTA}),
    Case("dl_acts_eps", "DeepLift", "acts", "x", {"baselines": B_NEAR, "target": 1}, ctor={"eps": 1e-3, **LOCAL}),
    Case("dl_cnn_delta", "DeepLift", "cnn", "img", {"baselines": B_IMG, "target": [1, 0], **DELTA}),
    Case("dl_cnn_zero", "DeepLift", "cnn", "img", {"target": 2}),
    Case("dl_pair_args", "DeepLift", "two", "pair", {"baselines": (B_ROW, 0.1), "target": [1, 0], **TWO_ARGS, **DELTA}),
    Case("dl_one_tuple", "DeepLift", "relu", "x_tuple", {"baselines": (B_ROW,), "target": 0}),
    Case("dl_custom_one", "DeepLift", "relu", "x", {"baselines": B_EACH, "target": 1, "custom_attribution_func": doubled}),
    Case("dl_custom_three", "DeepLift", "two", "pair",
         {"baselines": (B_ROW, 0.1), "target": 0, "custom_attribution_func": squared_difference, **TWO_ARGS}),  # fmt: skip
    # DeepLiftShap: deltas (B * N,) example-major
    Case("dls_relu_delta", "DeepLiftShap", "relu", "x", {"baselines": B_DIST, "target": 1, **DELTA}),
    Case("dls_acts_list", "DeepLiftShap", "acts", "x", {"baselines": B_DIST, "target": [0, 2], **DELTA}),
    Case("dls_not_multiplied", "DeepLiftShap", "relu", "x", {"baselines": B_DIST, "target": 2}, ctor=LOCAL),
    Case("dls_pair_args", "DeepLiftShap", "two", "pair", {"baselines": B_DIST2, "target": [1, 0], **TWO_ARGS, **DELTA}),
    Case("dls_cnn_callable", "DeepLiftShap", "cnn", "img", {"baselines": img_dist, "target": 1, **DELTA}),
    Case("dls_custom_three", "DeepLiftShap", "relu", "x",
         {"baselines": B_DIST, "target": 0, "custom_attribution_func": squared_difference}),  # fmt: skip
    # LayerDeepLift: layer outputs and inputs, a ReLU as the layer, conv, extra args, custom function
    Case("ldl_linear_delta", "LayerDeepLift", "relu", "x", {"target": 1, **DELTA}, layer="2"),
    Case("ldl_relu_output", "LayerDeepLift", "relu", "x", {"baselines": B_ROW, "target": [0, 2], **DELTA}, layer="1"),
    Case("ldl_linear_input", "LayerDeepLift", "relu", "x",
         {"baselines": B_EACH, "target": 2, "attribute_to_layer_input": True, **DELTA}, layer="2"),  # fmt: skip
    Case("ldl_cnn_conv", "LayerDeepLift", "cnn", "img", {"baselines": B_IMG, "target": 1, **DELTA}, layer="2"),
    Case("ldl_not_multiplied", "LayerDeepLift", "acts", "x", {"baselines": B_EACH, "target": 0}, ctor=LOCAL, layer="4"),
    Case("ldl_pair_args", "LayerDeepLift", "two", "pair",
         {"baselines": (B_ROW, 0.1), "target": [1, 0], **TWO_ARGS, **DELTA}, layer="act"),  # fmt: skip
    Case("ldl_custom_one", "LayerDeepLift", "relu", "x",
         {"baselines": B_EACH, "target": 1, "custom_attribution_func": doubled}, layer="2"),  # fmt: skip
    # LayerDeepLiftShap
    Case("ldls_linear_delta", "LayerDeepLiftShap", "relu", "x", {"baselines": B_DIST, "target": 1, **DELTA}, layer="2"),
    Case("ldls_cnn_list", "LayerDeepLiftShap", "cnn", "img", {"baselines": B_IMG_DIST, "target": [2, 1], **DELTA},
         layer="0"),  # fmt: skip
    Case("ldls_input_local", "LayerDeepLiftShap", "acts", "x",
         {"baselines": B_DIST, "target": 0, "attribute_to_layer_input": True}, ctor=LOCAL, layer="6"),  # fmt: skip
    Case("ldls_pair_args", "LayerDeepLiftShap", "two", "pair", {"baselines": B_DIST2, "target": 0, **TWO_ARGS, **DELTA},
         layer="act"),  # fmt: skip
    # NeuronDeepLift / NeuronDeepLiftShap: every selector form, neuron inputs, extra args
    Case("ndl_int", "NeuronDeepLift", "relu", "x", {"neuron_selector": 1}, layer="2"),
    Case("ndl_relu_output", "NeuronDeepLift", "relu", "x", {"neuron_selector": 1, "baselines": B_ROW}, layer="1"),
    Case("ndl_neuron_input", "NeuronDeepLift", "relu", "x",
         {"neuron_selector": 2, "baselines": B_EACH, "attribute_to_neuron_input": True}, layer="3"),  # fmt: skip
    Case("ndl_slice_cnn", "NeuronDeepLift", "cnn", "img", {"neuron_selector": (1, slice(0, 2), 0), "baselines": B_IMG},
         layer="2"),  # fmt: skip
    Case("ndl_pair_args", "NeuronDeepLift", "two", "pair", {"neuron_selector": 1, "baselines": (B_ROW, 0.1), **TWO_ARGS},
         layer="l3"),  # fmt: skip
    Case("ndl_not_multiplied", "NeuronDeepLift", "relu", "x", {"neuron_selector": 0, "baselines": B_EACH}, ctor=LOCAL,
         layer="2"),  # fmt: skip
    Case("ndl_custom_three", "NeuronDeepLift", "relu", "x",
         {"neuron_selector": 3, "baselines": B_EACH, "custom_attribution_func": squared_difference}, layer="2"),  # fmt: skip
    Case("ndls_relu", "NeuronDeepLiftShap", "relu", "x", {"neuron_selector": 1, "baselines": B_DIST}, layer="2"),
    Case("ndls_pair_args", "NeuronDeepLiftShap", "two", "pair", {"neuron_selector": 2, "baselines": B_DIST2, **TWO_ARGS},
         layer="act"),  # fmt: skip
    Case("ndls_cnn_local", "NeuronDeepLiftShap", "cnn", "img", {"neuron_selector": (2, 1, 1), "baselines": B_IMG_DIST},
         ctor=LOCAL, layer="0"),  # fmt: skip
    # NeuronGuidedBackprop / NeuronDeconvolution
    Case("ngb_int", "NeuronGuidedBackprop", "relu", "x", {"neuron_selector": 2}, layer="2"),
    Case("ngb_cnn_slice", "NeuronGuidedBackprop", "cnn", "img", {"neuron_selector": (slice(None), 1, 1)}, layer="2"),
    Case("ngb_neuron_input", "NeuronGuidedBackprop", "relu", "x",
         {"neuron_selector": 2, "attribute_to_neuron_input": True}, layer="3"),  # fmt: skip
    Case("ngb_pair_args", "NeuronGuidedBackprop", "two", "pair", {"neuron_selector": 0, **TWO_ARGS}, layer="l3"),
    Case("ndc_int", "NeuronDeconvolution", "relu", "x", {"neuron_selector": 3}, layer="2"),
    Case("ndc_cnn_linear", "NeuronDeconvolution", "cnn", "img", {"neuron_selector": 4}, layer="5"),
    Case("ndc_pair_input", "NeuronDeconvolution", "two", "pair",
         {"neuron_selector": 1, "attribute_to_neuron_input": True, **TWO_ARGS}, layer="l3"),  # fmt: skip
]

DIFF_CASES = [
    Case("adjacent_pool", "DeepLift", "adjacent_pool", "img", {"baselines": B_IMG, "target": 1, **DELTA}),
    Case("separated_pool", "DeepLift", "separated_pool", "img", {"baselines": B_IMG, "target": 1, **DELTA}),
    Case("adjacent_act", "DeepLift", "adjacent_act", "x", {"baselines": B_EACH, "target": 0, **DELTA}),
    Case("separated_act", "DeepLift", "separated_act", "x", {"baselines": B_EACH, "target": 0, **DELTA}),
    # the same calls as dl_relu_each_delta, gbp_relu_int and deconv_relu on the F.relu twin
    Case("functional_dl", "DeepLift", "functional", "x", {"baselines": B_EACH, "target": 1, **DELTA}),
    Case("functional_gbp", "GuidedBackprop", "functional", "x", {"target": 1}),
    Case("functional_deconv", "Deconvolution", "functional", "x", {"target": 2}),
    # the input of a nonlinear layer: Captum's gradient there misses the layer's own multiplier
    Case("layer_input_relu", "LayerDeepLift", "relu", "x",
         {"baselines": B_EACH, "target": 2, "attribute_to_layer_input": True, **DELTA}, layer="3"),  # fmt: skip
    Case("layer_input_elu_shap", "LayerDeepLiftShap", "acts", "x",
         {"baselines": B_DIST, "target": 0, "attribute_to_layer_input": True, **DELTA}, layer="5"),  # fmt: skip
    # max-pool inputs equal to their references: Captum falls back to the *first* example's gradient
    Case("pool_equal_region", "DeepLift", "pool", "img3", {"baselines": B_REGION, "target": 1}, ctor=LOCAL),
    Case("pool_equal_region_second_alone", "DeepLift", "pool", "img3_second", {"baselines": B_REGION[1:2], "target": 1},
         ctor=LOCAL),  # fmt: skip
    # a neuron selector multiplying two neurons: a product of two activations, where Captum keeps the gradient
    Case("ndl_callable", "NeuronDeepLift", "acts", "x",
         {"neuron_selector": product_of_first_and_third, "baselines": B_EACH}, layer="4"),  # fmt: skip
    # the same example with another example beside it, and alone
    Case("softmax_batch", "DeepLift", "softmax", "x", {"baselines": B_ROW, "target": 1, **DELTA}),
    Case("softmax_alone", "DeepLift", "softmax", "x_first", {"baselines": B_ROW, "target": 1, **DELTA}),
]


CLASSES = [
    "GuidedBackprop", "Deconvolution", "GuidedGradCam", "DeepLift", "DeepLiftShap", "LayerDeepLift", "LayerDeepLiftShap",
    "NeuronDeepLift", "NeuronDeepLiftShap", "NeuronGuidedBackprop", "NeuronDeconvolution",
]  # fmt: skip


# ----------------------------------------------------------------------------- writing the file


def main() -> None:
    import warnings

    import captum.attr

    warnings.filterwarnings("ignore")  # Captum's notices about hooks and the empty GuidedGradCam input
    lines = expected_lines(
        "gen_captum_backprop_expected.py",
        "attr: the attributions (a tuple for tuple inputs or layers); delta: the convergence delta when asked for.",
        "CASES and DIFF_CASES (Captum's numbers where xattr deliberately differs); STAT is empty (nothing is random).\n"
        "SIGNATURES: (name, repr(default) or None) of each class's __init__ and attribute parameters after self.",
        CASES + DIFF_CASES, [], run, build_models(), _entry, 0,
    )  # fmt: skip
    lines += signature_lines(captum.attr, CLASSES)
    summary = f"{len(CASES)} cases, {len(DIFF_CASES)} documented differences, {len(CLASSES)} signatures"
    write_expected("captum_backprop_expected.py", lines, summary)


if __name__ == "__main__":
    main()
