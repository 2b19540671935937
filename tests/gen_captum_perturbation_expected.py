"""The Captum conformance cases for the perturbation classes, and the script writing Captum's numbers.

FeatureAblation, Occlusion, FeaturePermutation, ShapleyValueSampling, ShapleyValues, Lime,
LimeBase, KernelShap, LayerFeatureAblation, LayerFeaturePermutation, NeuronFeatureAblation.
Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_perturbation_expected.py   # rewrites tests/captum_perturbation_expected.py

This module imports only torch (and xattr for the ``PerLib`` stand-ins): tests/test_compat_perturbation.py
runs the same cases through ``xattr.compat.captum`` with the same ``run`` function.

  CASES        deterministic; xattr must match Captum to float precision. Feature permutation is
               deterministic on a batch of two (the one non-identity permutation swaps them) or with
               a deterministic ``perm_func``; Lime and LimeBase with a generator ``perturb_func``
               yielding fixed coalitions and a least-squares surrogate.
  STAT_CASES   ShapleyValueSampling, Lime and KernelShap with their random draws: Captum's result
               with N_CAPTUM samples is stored; xattr's estimate must agree within its sampling error.
  DIFF_CASES   Captum's numbers where xattr deliberately differs (docs/migration.md):
               - ``fp_cross_tensor``: a feature spanning two tensors. Captum draws one permutation
                 per tensor, xattr one per feature; on f(a, b) = |a - b|^2 with a == b, xattr's
                 permuted copies keep a == b (zero attribution), Captum's do not.
               - ``lfp_target``: LayerFeaturePermutation with a target: Captum selects the target
                 twice and raises; xattr selects it once (the same numbers as the ``lfp_selected``
                 case, whose model selects the output itself).
               - ``kshap_enumerated``: KernelShap with n_samples >= 2^F; xattr uses every coalition
                 once with its Shapley kernel weight, which gives the exact Shapley values
                 (``sv_default``), where Captum still samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

try:
    from .gen_captum_expected import (  # noqa: F401 (default_repr is used by the tests through this module)
        Reshape, TwoInputs, _build, _entry, _randn, default_repr, expected_lines, signature_lines, write_expected,
    )
except ImportError:  # run as a script
    from gen_captum_expected import (  # noqa: F401 (default_repr is used by the tests through this module)
        Reshape, TwoInputs, _build, _entry, _randn, default_repr, expected_lines, signature_lines, write_expected,
    )

N_CAPTUM = 4000  # samples behind each stored statistical reference


class PairOut(nn.Module):
    """A layer with two output tensors."""

    def forward(self, h):
        return h[:, :3] * 2.0, torch.tanh(h[:, 3:])


class WithPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.pair, self.l2, self.l3 = nn.Linear(4, 5), PairOut(), nn.Linear(3, 3), nn.Linear(2, 3)

    def forward(self, x):
        a, b = self.pair(self.l1(x))
        return self.l2(a) + self.l3(b)


class Tokens(nn.Module):
    """Token ids (int64) and a float attention mask passed through."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, ids, attention):
        return self.head((self.emb(ids) * attention[..., None]).sum(1))


class Summed(nn.Module):
    """One number per batch (Captum's aggregate mode): the sum of the first output."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:, 0].sum()


class Selected(nn.Module):
    """The target chosen inside the model: ``inner(x)[:, 1]``, one number per example."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:, 1]


class Matched(nn.Module):
    """|a - b|^2 per example: zero while a and b are permuted together."""

    def forward(self, a, b):
        return ((a - b) ** 2).sum(1)


def _mlp(n_in=4):
    return lambda: nn.Sequential(nn.Linear(n_in, 6), nn.Tanh(), nn.Linear(6, 3))


def build_models() -> dict[str, nn.Module]:
    models = {
        "mlp": _build(80, _mlp()),
        "multi": _build(81, lambda: nn.Sequential(nn.Linear(4, 6), nn.Softplus(), Reshape(2, 3))),
        "conv": _build(82, lambda: nn.Sequential(nn.Conv2d(1, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(32, 3))),
        "two": _build(83, TwoInputs),
        "pairout": _build(84, WithPair),
        "tokens": _build(85, Tokens),
        "wide": _build(86, _mlp(16)),
        "matched": Matched(),
    }
    models["summed"] = Summed(models["mlp"]).eval()
    models["selected"] = Selected(models["mlp"]).eval()
    models["conv_selected"] = Selected(models["conv"]).eval()
    return models


X = _randn(90, 2, 4)
X3 = _randn(91, 3, 4)
X1, X2 = _randn(92, 2, 3), _randn(93, 2, 2)
IMG = _randn(94, 2, 1, 5, 5)
IDS = torch.tensor([[1, 5, 7, 2, 0], [3, 3, 8, 9, 4]])
ATTENTION = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
A4 = _randn(95, 4, 3)
INPUTS = {
    "x": X, "x_first": X[:1], "x3": X3, "x_tuple": (X,), "pair": (X1, X2), "img": IMG, "ids": IDS, "wide": _randn(96, 2, 16),
    "same_pair": (A4, A4.clone()),
}  # fmt: skip

SCALE = torch.tensor([[1.5], [0.5]], dtype=torch.float64)
TWO_ARGS = {"additional_forward_args": (SCALE, 0.25)}
B_ROW = _randn(97, 1, 4)
B_EACH = _randn(98, 2, 4)
B_PAIR = (_randn(99, 1, 3), 0.1)
PATCHES = (torch.arange(5)[:, None] // 2 * 3 + torch.arange(5)[None, :] // 2).reshape(1, 1, 5, 5)  # 9 patches
QUADRANTS = (torch.arange(5)[:, None] // 3 * 2 + torch.arange(5)[None, :] // 3).reshape(1, 1, 5, 5)
CROSS = (torch.tensor([[0, 1, 1]]), torch.tensor([[1, 2]]))  # id 1 spans both tensors


def roll_batch(x, mask):
    """A deterministic perm_func: the masked elements from the next example (cyclically)."""
    return torch.where(mask.bool(), x.roll(1, 0), x)


def product_of_first_and_third(h):
    """A callable neuron selector: (B, n) activations -> (B,)."""
    return h[:, 0] * h[:, 2]


def every_coalition(original_inp, **kwargs):
    """A deterministic Lime/LimeBase perturb_func: a generator over all 2^F coalitions."""
    n = int(kwargs["num_interp_features"])
    for code in range(2**n):
        yield torch.tensor([[(code >> i) & 1 for i in range(n)]])


def size_kernel(original, perturbed, interp, **kwargs):
    """A custom similarity_func: larger coalitions weigh more (uses Captum's kwargs)."""
    return 1.0 + float(interp.sum()) / kwargs["num_interp_features"]


def distance_kernel(original, perturbed, interp, **kwargs):
    """A custom similarity_func reading the inputs (a tuple for tuple inputs)."""
    o = torch.cat([t.flatten() for t in (original if isinstance(original, tuple) else (original,))])
    p = torch.cat([t.flatten() for t in (perturbed if isinstance(perturbed, tuple) else (perturbed,))])
    return torch.exp(-((o - p) ** 2).sum() / 4.0)


def halve_off(sample, original, **kwargs):
    """LimeBase from_interp_rep_transform: features switched off are halved (4 features of x)."""
    return original * (0.5 + 0.5 * sample.to(original.dtype))


def scaled_inputs(original_inp, **kwargs):
    """LimeBase perturb_func in the input space: x with features scaled by 0 or 1 (all 16 patterns)."""
    for code in range(16):
        yield original_inp * torch.tensor([[(code >> i) & 1 for i in range(4)]], dtype=original_inp.dtype)


def nonzero_pattern(sample, original, **kwargs):
    """LimeBase to_interp_rep_transform: which features are kept."""
    return (sample != 0).long()


class LstsqModel:
    """A Captum ``Model`` (``fit(DataLoader)``, ``representation()``, ``bias()``): weighted least
    squares with an intercept, in float64; usable by both libraries."""

    def fit(self, train_data):
        x, y, w = (torch.cat(t).double() for t in zip(*train_data))
        a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        sw = w.sqrt()[:, None]
        sol = torch.linalg.lstsq(a * sw, y[:, None] * sw).solution[:, 0]
        self.weight, self.intercept = sol[None, :-1], sol[-1:]

    def representation(self):
        return self.weight

    def bias(self):
        return self.intercept


@dataclass(frozen=True)
class PerLib:
    """A constructor argument that differs by library: Captum's object, and xattr's."""

    captum: Callable
    xattr: Callable


def captum_linreg():
    from captum._utils.models.linear_model import SkLearnLinearRegression

    return SkLearnLinearRegression()


def xattr_linreg():
    import xattr

    return xattr.linear_regression()


LINREG = PerLib(captum_linreg, xattr_linreg)


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # class name, the same in captum.attr and xattr.compat.captum
    model: str
    inputs: str
    kwargs: dict = field(default_factory=dict)
    ctor: dict = field(default_factory=dict)
    layer: str | None = None  # submodule name, for the layer and neuron classes
    samples: str | None = None  # STAT_CASES: the keyword holding the number of samples


def run(case: Case, lib: Any, models: dict, **overrides):
    """Builds the case's attribution object from ``lib`` and calls ``attribute``."""
    model = models[case.model]
    layer = () if case.layer is None else (model.get_submodule(case.layer),)
    is_captum = lib.__name__.startswith("captum")
    ctor = {k: ((v.captum if is_captum else v.xattr)() if isinstance(v, PerLib) else v) for k, v in case.ctor.items()}
    if ctor.get("interpretable_model") == "lstsq":
        ctor["interpretable_model"] = LstsqModel()
    obj = getattr(lib, case.method)(model, *layer, **ctor)
    return obj.attribute(INPUTS[case.inputs], **{**case.kwargs, **overrides})


LIMEBASE = {"interpretable_model": "lstsq", "similarity_func": size_kernel}

CASES = [
    # FeatureAblation: target forms, masks (shared, per example, non-contiguous ids, across tensors),
    # baselines, chunking, int inputs, aggregate mode
    Case("fa_default", "FeatureAblation", "mlp", "x", {"target": 1}),
    Case("fa_mask_scalar_baseline", "FeatureAblation", "mlp", "x",
         {"target": [0, 2], "feature_mask": torch.tensor([[0, 0, 1, 1]]), "baselines": 0.5}),  # fmt: skip
    Case("fa_per_example_mask", "FeatureAblation", "mlp", "x",
         {"target": torch.tensor([2, 1]), "feature_mask": torch.tensor([[0, 0, 5, 5], [5, 7, 7, 0]]),
          "baselines": B_EACH}),  # fmt: skip
    Case("fa_pair_cross_mask", "FeatureAblation", "two", "pair",
         {"target": 0, "feature_mask": CROSS, "baselines": B_PAIR, "perturbations_per_eval": 3, **TWO_ARGS}),
    Case("fa_pair_default", "FeatureAblation", "two", "pair", {"target": [1, 0], **TWO_ARGS}),
    Case("fa_conv_patches", "FeatureAblation", "conv", "img",
         {"target": 2, "feature_mask": PATCHES, "perturbations_per_eval": 2}),  # fmt: skip
    Case("fa_aggregate", "FeatureAblation", "summed", "x", {"feature_mask": torch.tensor([[0, 1, 1, 2]])}),
    Case("fa_tokens", "FeatureAblation", "tokens", "ids",
         {"target": 1, "feature_mask": torch.tensor([[0, 0, 1, 2, 3]]), "additional_forward_args": (ATTENTION,)}),
    Case("fa_one_tuple", "FeatureAblation", "mlp", "x_tuple", {"target": 0, "baselines": (B_ROW,)}),
    Case("fa_tuple_target", "FeatureAblation", "multi", "x", {"target": (1, 2)}),
    Case("fa_list_of_tuples", "FeatureAblation", "multi", "x", {"target": [(0, 1), (1, 2)], "baselines": 0.2}),
    # Occlusion: windows cut by the edge, strides, a window spanning a dim with a larger stride
    Case("occ_conv", "Occlusion", "conv", "img", {"sliding_window_shapes": (1, 2, 2), "target": 1}),
    Case("occ_conv_strided", "Occlusion", "conv", "img",
         {"sliding_window_shapes": (1, 3, 3), "strides": (1, 2, 2), "baselines": 0.3, "target": [0, 2]}),  # fmt: skip
    Case("occ_conv_edge", "Occlusion", "conv", "img",
         {"sliding_window_shapes": (1, 2, 3), "strides": 2, "target": 2, "perturbations_per_eval": 4}),  # fmt: skip
    Case("occ_pair", "Occlusion", "two", "pair",
         {"sliding_window_shapes": ((2,), (1,)), "strides": (1, 1), "baselines": B_PAIR, "target": [1, 0], **TWO_ARGS}),
    Case("occ_whole_dim", "Occlusion", "mlp", "x", {"sliding_window_shapes": (4,), "strides": 3, "target": 2}),
    Case("occ_aggregate", "Occlusion", "summed", "x", {"sliding_window_shapes": (2,)}),
    # FeaturePermutation: a batch of two swaps; a deterministic perm_func on three
    Case("fp_swap", "FeaturePermutation", "mlp", "x", {"target": 1}),
    Case("fp_swap_pair_mask", "FeaturePermutation", "two", "pair", {"target": 0, "feature_mask": CROSS, **TWO_ARGS}),
    Case("fp_swap_aggregate", "FeaturePermutation", "summed", "x", {"feature_mask": torch.tensor([[0, 1, 1, 2]])}),
    Case("fp_roll", "FeaturePermutation", "mlp", "x3", {"target": 2}, ctor={"perm_func": roll_batch}),
    Case("fp_roll_mask", "FeaturePermutation", "mlp", "x3",
         {"target": [0, 1, 2], "feature_mask": torch.tensor([[3, 1, 1, 3]]), "perturbations_per_eval": 2},
         ctor={"perm_func": roll_batch}),  # fmt: skip
    # ShapleyValues: exact
    Case("sv_mask", "ShapleyValues", "mlp", "x", {"target": 1, "feature_mask": torch.tensor([[0, 1, 1, 2]])}),
    Case("sv_default", "ShapleyValues", "mlp", "x", {"target": [0, 2], "baselines": B_EACH}),
    Case("sv_pair", "ShapleyValues", "two", "pair", {"target": 1, "feature_mask": CROSS, "baselines": B_PAIR, **TWO_ARGS}),
    Case("sv_aggregate", "ShapleyValues", "summed", "x", {"feature_mask": torch.tensor([[0, 0, 1, 2]])}),
    Case("sv_conv_quadrants", "ShapleyValues", "conv", "img",
         {"target": 2, "feature_mask": QUADRANTS, "perturbations_per_eval": 4}),  # fmt: skip
    # Lime with fixed coalitions (every one, from a generator) and a least-squares surrogate
    Case("lime_every_coalition", "Lime", "mlp", "x", {"target": 1, "feature_mask": torch.tensor([[0, 1, 1, 2]]),
         "n_samples": 8}, ctor={"interpretable_model": LINREG, "perturb_func": every_coalition}),  # fmt: skip
    Case("lime_custom_kernel_pair", "Lime", "two", "pair",
         {"target": [1, 0], "feature_mask": CROSS, "baselines": B_PAIR, "n_samples": 8, "return_input_shape": False,
          **TWO_ARGS},
         ctor={"interpretable_model": "lstsq", "perturb_func": every_coalition, "similarity_func": distance_kernel}),
    Case("lime_aggregate", "Lime", "summed", "x", {"feature_mask": torch.tensor([[0, 1, 1, 2]]), "n_samples": 8},
         ctor={"interpretable_model": LINREG, "perturb_func": every_coalition, "similarity_func": size_kernel}),
    # LimeBase: sampling in the interpretable space, and in the input space
    Case("limebase_interp", "LimeBase", "mlp", "x_first", {"target": 1, "n_samples": 16, "num_interp_features": 4},
         ctor={**LIMEBASE, "perturb_func": every_coalition, "perturb_interpretable_space": True,
               "from_interp_rep_transform": halve_off, "to_interp_rep_transform": None}),  # fmt: skip
    Case("limebase_input_space", "LimeBase", "mlp", "x_first", {"target": 2, "n_samples": 16, "perturbations_per_eval": 3,
                                                          "num_interp_features": 4},
         ctor={**LIMEBASE, "perturb_func": scaled_inputs, "perturb_interpretable_space": False,
               "from_interp_rep_transform": None, "to_interp_rep_transform": nonzero_pattern}),  # fmt: skip
    # LayerFeatureAblation: outputs and inputs, masks and baselines, a layer with two tensors
    Case("lfa_linear", "LayerFeatureAblation", "mlp", "x", {"target": 1}, layer="0"),
    Case("lfa_conv_channels", "LayerFeatureAblation", "conv", "img",
         {"target": [2, 0], "layer_mask": torch.tensor([[[[0]], [[1]]]]), "layer_baselines": 0.5}, layer="0"),  # fmt: skip
    Case("lfa_input", "LayerFeatureAblation", "mlp", "x",
         {"target": 0, "attribute_to_layer_input": True, "layer_baselines": _randn(100, 1, 6)}, layer="2"),  # fmt: skip
    Case("lfa_pair_args", "LayerFeatureAblation", "two", "pair", {"target": [1, 0], **TWO_ARGS}, layer="l1"),
    Case("lfa_tuple_layer", "LayerFeatureAblation", "pairout", "x",
         {"target": 1, "layer_mask": CROSS, "layer_baselines": (0.5, 0.1)}, layer="pair"),  # fmt: skip
    Case("lfa_tuple_layer_default", "LayerFeatureAblation", "pairout", "x", {"target": 2}, layer="pair"),
    # LayerFeaturePermutation: Captum's works without a target only (see DIFF_CASES)
    Case("lfp_selected", "LayerFeaturePermutation", "selected", "x", {"layer_mask": torch.tensor([[0, 0, 1, 1, 2, 2]])},
         layer="inner.1"),  # fmt: skip
    Case("lfp_conv", "LayerFeaturePermutation", "conv_selected", "img", {}, layer="inner.0"),
    # NeuronFeatureAblation: selector forms, neuron inputs, masks, extra args
    Case("nfa_int", "NeuronFeatureAblation", "mlp", "x", {"neuron_selector": 3}, layer="0"),
    Case("nfa_slice_patches", "NeuronFeatureAblation", "conv", "img",
         {"neuron_selector": (1, slice(0, 2), 2), "feature_mask": PATCHES, "baselines": 0.2}, layer="0"),  # fmt: skip
    Case("nfa_input", "NeuronFeatureAblation", "mlp", "x", {"neuron_selector": 4, "attribute_to_neuron_input": True},
         layer="2"),  # fmt: skip
    Case("nfa_callable", "NeuronFeatureAblation", "mlp", "x",
         {"neuron_selector": product_of_first_and_third, "feature_mask": torch.tensor([[0, 1, 0, 1]])}, layer="1"),
    Case("nfa_pair", "NeuronFeatureAblation", "two", "pair",
         {"neuron_selector": 2, "feature_mask": CROSS, "baselines": B_PAIR, "perturbations_per_eval": 2, **TWO_ARGS},
         layer="l1"),  # fmt: skip
]

STAT_CASES = [
    Case("stat_svs_mlp", "ShapleyValueSampling", "mlp", "x", {"target": 1}, samples="n_samples"),
    Case("stat_svs_pair", "ShapleyValueSampling", "two", "pair",
         {"target": [1, 0], "feature_mask": CROSS, "baselines": B_PAIR, **TWO_ARGS}, samples="n_samples"),  # fmt: skip
    Case("stat_lime_mlp", "Lime", "mlp", "x", {"target": 1, "feature_mask": torch.tensor([[0, 1, 1, 2]])},
         samples="n_samples"),  # fmt: skip
    Case("stat_lime_conv", "Lime", "conv", "img", {"target": 2, "feature_mask": QUADRANTS, "baselines": 0.1},
         samples="n_samples"),  # fmt: skip
    Case("stat_kshap_wide", "KernelShap", "wide", "wide", {"target": 0}, samples="n_samples"),
]

DIFF_CASES = [
    Case("fp_cross_tensor", "FeaturePermutation", "matched", "same_pair",
         {"feature_mask": (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]]))}),  # fmt: skip
    Case("lfp_target", "LayerFeaturePermutation", "mlp", "x", {"target": 1, "layer_mask": torch.tensor([[0, 0, 1, 1, 2, 2]])},
         layer="1"),  # fmt: skip
    Case("kshap_enumerated", "KernelShap", "mlp", "x", {"target": [0, 2], "baselines": B_EACH, "n_samples": 16}),
]

CLASSES = [
    "FeatureAblation", "Occlusion", "FeaturePermutation", "ShapleyValueSampling", "ShapleyValues", "Lime", "LimeBase",
    "KernelShap", "LayerFeatureAblation", "LayerFeaturePermutation", "NeuronFeatureAblation",
]  # fmt: skip


# ----------------------------------------------------------------------------- writing the file


def _run_or_error(case, lib, models, **overrides):
    try:
        return run(case, lib, models, **overrides)
    except Exception as err:  # a DIFF case where Captum fails
        return err


def main() -> None:
    import warnings

    import captum.attr
    import numpy as np

    warnings.filterwarnings("ignore")  # Captum's notices (many examples for Lime, feature ids)
    stat = [dataclass_replace(c, kwargs={**c.kwargs, "perturbations_per_eval": 500}) for c in STAT_CASES]
    lines = expected_lines(
        "gen_captum_perturbation_expected.py",
        "attr: the attributions (a tuple for tuple inputs or layers with several tensors).",
        f"STAT: estimates from N_CAPTUM = {N_CAPTUM} samples (perturbations_per_eval=500, which changes no number).\n"
        "DIFF: Captum's numbers (or its error) where xattr deliberately differs.\n"
        "SIGNATURES: (name, repr(default) or None) of each class's __init__ and attribute parameters after self.",
        CASES, stat, run, build_models(), _entry, N_CAPTUM,
    )  # fmt: skip
    lines += ["DIFF = {"]
    models = build_models()
    for case in DIFF_CASES:
        torch.manual_seed(0)
        np.random.seed(0)
        out = _run_or_error(case, captum.attr, models)
        if isinstance(out, Exception):
            lines.append(f'    "{case.name}": {{"error": {type(out).__name__ + ": " + str(out).splitlines()[0]!r}}},')
        else:
            lines.append(f'    "{case.name}": {_entry(case, out)},')
    lines += ["}", ""] + signature_lines(captum.attr, CLASSES)
    summary = f"{len(CASES)} cases, {len(STAT_CASES)} statistical cases, {len(DIFF_CASES)} documented differences"
    write_expected("captum_perturbation_expected.py", lines, summary)


def dataclass_replace(case: Case, **changes) -> Case:
    import dataclasses

    return dataclasses.replace(case, **changes)


if __name__ == "__main__":
    main()
