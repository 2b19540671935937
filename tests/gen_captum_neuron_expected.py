"""The Captum conformance cases for neuron methods and embeddings, and the script writing Captum's numbers.

Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_neuron_expected.py    # rewrites tests/captum_neuron_expected.py

This module imports only torch: tests/test_compat_neuron.py runs the same cases through
``xattr.compat.captum`` with the same ``run`` function, and tests/test_neuron_methods.py uses the
models (the tiny text model included) and the embedding case.

  CASES       deterministic; xattr must match Captum to float precision (the riemann_trapezoid
              ones up to the documented factor (n_steps - 1) / n_steps, see docs/migration.md).
  STAT_CASES  random (GradientShap's draws): Captum's N_CAPTUM-sample estimate is stored.
  EMBEDDING   Captum's LayerIntegratedGradients on the text model's embedding, against which
              tests/test_neuron_methods.py checks the functional composition over ``split.head``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

try:
    from .gen_captum_expected import TwoInputs, _build, _entry, _fmt, _randn, expected_lines, write_expected  # noqa: F401
except ImportError:  # run as a script
    from gen_captum_expected import TwoInputs, _build, _entry, _fmt, _randn, expected_lines, write_expected  # noqa: F401

N_CAPTUM = 20000  # samples behind each stored statistical reference

PAD, CLS, SEP, VOCAB, SEQ = 0, 1, 2, 12, 5


class Joined(nn.Module):
    """``join``'s neurons are linear in both inputs, so GradientShap's draws cancel on them."""

    def __init__(self) -> None:
        super().__init__()
        self.join, self.out = nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x1, x2, scale):
        return self.out(torch.tanh(self.join(torch.cat([x1, x2 * scale], 1))))


class TinyText(nn.Module):
    """Token ids (B, SEQ) -> embedding (B, SEQ, 4) -> an MLP over all positions -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 4)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(SEQ * 4, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, ids):
        return self.mlp(self.embedding(ids))


def build_models() -> dict[str, nn.Module]:
    return {
        "mlp": _build(10, lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Softplus(), nn.Linear(4, 3))),
        "conv": _build(
            11, lambda: nn.Sequential(nn.Conv2d(1, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(8, 3))
        ),
        "two": _build(12, TwoInputs),
        "joined": _build(13, Joined),
        "text": _build(14, TinyText),
    }



X = _randn(21, 2, 3)
X1, X2 = _randn(22, 2, 3), _randn(23, 2, 2)
SCALE = torch.tensor([[1.5], [0.5]], dtype=torch.float64)
IMG = _randn(24, 2, 1, 3, 3)
IDS = torch.tensor([[CLS, 5, 9, SEP, PAD], [CLS, 3, 11, 7, SEP]])
REF_IDS = torch.tensor([[CLS, PAD, PAD, SEP, PAD], [CLS, PAD, PAD, PAD, SEP]])  # reference_tokens(IDS, PAD, keep=(CLS, SEP))
INPUTS = {"x": X, "pair": (X1, X2), "x_tuple": (X,), "img": IMG, "ids": IDS}

B_ROW = _randn(25, 1, 3)
B_EACH = _randn(26, 2, 3)
B_PAIR = (_randn(27, 1, 3), _randn(28, 1, 2))
B_DIST2 = (_randn(29, 5, 3), _randn(30, 5, 2))


def product_of_first_and_third(h):
    """A callable neuron selector: (B, n) activations -> (B,)."""
    return h[:, 0] * h[:, 2]


def middle_region(h):
    """A callable selecting a summed region, as conductance's selectors should (see neuron_methods.py)."""
    return h[:, 1:3].sum(1)


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # class name, the same in captum.attr and xattr.compat.captum
    model: str
    layer: str  # submodule name
    inputs: str
    kwargs: dict = field(default_factory=dict)
    ctor: dict = field(default_factory=dict)
    samples: str | None = None  # STAT_CASES: the keyword holding the number of samples


def run(case: Case, lib: Any, models: dict, **overrides):
    """Builds the case's attribution object from ``lib`` and calls ``attribute``."""
    model = models[case.model]
    obj = getattr(lib, case.method)(model, model.get_submodule(case.layer), **case.ctor)
    return obj.attribute(INPUTS[case.inputs], **{**case.kwargs, **overrides})


METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
TWO_ARGS = {"additional_forward_args": (SCALE, 0.25)}
TRAPEZOID = "riemann_trapezoid"

CASES = [
    # NeuronGradient: every selector form, layer inputs, tuple inputs with extra arguments
    Case("ng_int", "NeuronGradient", "mlp", "2", "x", {"neuron_selector": 1}),
    Case("ng_slice", "NeuronGradient", "conv", "1", "img", {"neuron_selector": (1, slice(0, 2), 0)}),
    Case("ng_callable", "NeuronGradient", "mlp", "3", "x", {"neuron_selector": product_of_first_and_third}),
    Case("ng_pair_neuron_input", "NeuronGradient", "two", "l3", "pair",
         {"neuron_selector": 2, "attribute_to_neuron_input": True, **TWO_ARGS}),  # fmt: skip
    Case("ng_one_tuple", "NeuronGradient", "mlp", "1", "x_tuple", {"neuron_selector": (4,)}),
    # NeuronIntegratedGradients
    *[
        Case(f"nig_{m}", "NeuronIntegratedGradients", "mlp", "2", "x", {"neuron_selector": 3, "n_steps": 7, "method": m})
        for m in METHODS
    ],
    Case("nig_row_baseline", "NeuronIntegratedGradients", "mlp", "3", "x",
         {"neuron_selector": (0,), "baselines": B_ROW, "n_steps": 20}),  # fmt: skip
    Case("nig_internal_batch", "NeuronIntegratedGradients", "conv", "1", "img",
         {"neuron_selector": (slice(None), 1, 1), "n_steps": 10, "internal_batch_size": 3}),  # fmt: skip
    Case("nig_not_multiplied", "NeuronIntegratedGradients", "mlp", "2", "x",
         {"neuron_selector": 0, "baselines": B_EACH, "n_steps": 9}, ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("nig_pair_neuron_input", "NeuronIntegratedGradients", "two", "l3", "pair",
         {"neuron_selector": 1, "baselines": (B_PAIR[0], 0.1), "attribute_to_neuron_input": True, "n_steps": 8,
          **TWO_ARGS}),  # fmt: skip
    # NeuronConductance: Captum's default rule (trapezoid) and the exact ones, targets, selectors
    Case("nc_default", "NeuronConductance", "mlp", "2", "x", {"neuron_selector": 1, "target": 2}),
    *[
        Case(f"nc_{m}", "NeuronConductance", "mlp", "2", "x",
             {"neuron_selector": 3, "target": [0, 2], "n_steps": 7, "method": m})
        for m in METHODS
    ],  # fmt: skip
    Case("nc_slice_conv", "NeuronConductance", "conv", "1", "img",
         {"neuron_selector": (1, slice(0, 2), 0), "target": 2, "n_steps": 12, "method": "gausslegendre"}),  # fmt: skip
    Case("nc_callable", "NeuronConductance", "mlp", "3", "x",
         {"neuron_selector": middle_region, "target": 1, "n_steps": 9, "method": "riemann_middle"}),  # fmt: skip
    Case("nc_row_baseline_tensor_target", "NeuronConductance", "mlp", "1", "x",
         {"neuron_selector": 2, "baselines": B_ROW, "target": torch.tensor([1, 0]), "method": "gausslegendre",
          "n_steps": 16}),  # fmt: skip
    Case("nc_internal_batch", "NeuronConductance", "mlp", "2", "x",
         {"neuron_selector": 0, "baselines": B_EACH, "target": 1, "n_steps": 10, "method": "riemann_left",
          "internal_batch_size": 3}),  # fmt: skip
    Case("nc_not_multiplied", "NeuronConductance", "mlp", "2", "x",
         {"neuron_selector": 2, "target": 0, "n_steps": 8, "method": "riemann_right"},
         ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("nc_pair_neuron_input", "NeuronConductance", "two", "l3", "pair",
         {"neuron_selector": 3, "baselines": B_PAIR, "target": [1, 0], "attribute_to_neuron_input": True,
          "n_steps": 8, "method": "gausslegendre", **TWO_ARGS}),  # fmt: skip
    Case("nc_pair_trapezoid", "NeuronConductance", "joined", "join", "pair",
         {"neuron_selector": 1, "target": 1, "n_steps": 6, "additional_forward_args": (SCALE,)}),  # fmt: skip
    # NeuronGradientShap on neurons linear in the inputs: the random draws cancel exactly
    Case("ngs_linear_one_baseline", "NeuronGradientShap", "mlp", "0", "x",
         {"neuron_selector": 2, "baselines": B_ROW, "n_samples": 3}),  # fmt: skip
    Case("ngs_pair_local_noise", "NeuronGradientShap", "joined", "join", "pair",
         {"neuron_selector": 3, "baselines": B_DIST2, "stdevs": (0.3, 0.2), "n_samples": 4,
          "additional_forward_args": (SCALE,)}, ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("ngs_pair_one_baseline", "NeuronGradientShap", "joined", "join", "pair",
         {"neuron_selector": 0, "baselines": B_PAIR, "n_samples": 2, "additional_forward_args": (SCALE,)}),  # fmt: skip
]

STAT_CASES = [
    Case("stat_ngs_one_baseline", "NeuronGradientShap", "mlp", "2", "x", {"neuron_selector": 1, "baselines": B_ROW},
         samples="n_samples"),  # fmt: skip
]

EMBEDDING = Case("lig_embedding", "LayerIntegratedGradients", "text", "embedding", "ids",
                 {"baselines": REF_IDS, "target": [0, 2], "n_steps": 24, "return_convergence_delta": True})  # fmt: skip


# ----------------------------------------------------------------------------- writing the file


def main() -> None:
    lines = expected_lines(
        "gen_captum_neuron_expected.py",
        "attr: the attributions (a tuple for tuple inputs); delta: the convergence delta when asked for.",
        f"STAT: estimates from N_CAPTUM = {N_CAPTUM} samples, for the statistical cases.",
        CASES + [EMBEDDING], STAT_CASES, run, build_models(), _entry, N_CAPTUM,
    )  # fmt: skip
    write_expected("captum_neuron_expected.py", lines, f"{len(CASES) + 1} cases, {len(STAT_CASES)} statistical cases")


if __name__ == "__main__":
    main()
