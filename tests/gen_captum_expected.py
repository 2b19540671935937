"""The Captum conformance cases, and the script that writes Captum's numbers for them.

Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_expected.py      # rewrites tests/captum_expected.py

This module itself imports only torch: tests/test_compat_captum.py imports the models, inputs and
cases from here and runs them through ``xattr.compat.captum`` with the same ``run`` function, so
both libraries see exactly the same calls.

Two kinds of case:
  CASES       deterministic; Captum's result is stored and xattr must match it to float precision.
  STAT_CASES  random (noise, baseline draws, GradientShap's alphas); Captum's result with
              N_CAPTUM samples is stored and xattr's estimate must agree within its Monte Carlo
              error (tests/test_compat_captum.py computes the tolerance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

N_CAPTUM = 20000  # samples behind each stored statistical reference


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.shape)


class TwoInputs(nn.Module):
    """f(x1, x2, scale, shift): two attributed inputs plus a per-example tensor and a float."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 2)

    def forward(self, x1, x2, scale, shift=0.0):
        return self.l3(torch.tanh(self.l1(x1) + self.l2(x2)) * scale + shift)


class TwoLinear(nn.Module):
    """Linear in both inputs, so GradientShap's random path positions do not change its value."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x1, x2, scale):
        return self.l1(x1) * scale + self.l2(x2)


def _build(seed: int, make) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make().double().eval()


def build_models() -> dict[str, nn.Module]:
    return {
        "mlp": _build(0, lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))),
        "multi": _build(1, lambda: nn.Sequential(nn.Linear(3, 6), nn.Softplus(), Reshape(2, 3))),
        "scalar": _build(2, lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))),
        "two": _build(3, TwoInputs),
        "conv": _build(
            4, lambda: nn.Sequential(nn.Conv2d(1, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(8, 3))
        ),
        "linear2": _build(5, TwoLinear),
    }


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


X = _randn(1, 2, 3)
X1, X2 = _randn(2, 2, 3), _randn(3, 2, 2)
SCALE = torch.tensor([[1.5], [0.5]], dtype=torch.float64)
IMG = _randn(4, 2, 1, 3, 3)
INPUTS = {"x": X, "pair": (X1, X2), "x_tuple": (X,), "img": IMG}

B_ROW = _randn(5, 1, 3)  # one baseline broadcast across the batch
B_EACH = _randn(6, 2, 3)  # one baseline per example
B_DIST = _randn(7, 4, 3)  # a distribution of baselines
B_DIST2 = (_randn(8, 5, 3), _randn(9, 5, 2))


def _dist_fn(inputs):  # a callable baseline distribution, as GradientShap allows
    return inputs.flip(0) * 0.5


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # class name, the same in captum.attr and xattr.compat.captum
    model: str
    inputs: str
    kwargs: dict = field(default_factory=dict)  # attribute keywords
    ctor: dict = field(default_factory=dict)
    inner: str | None = None  # NoiseTunnel: the wrapped class ...
    inner_ctor: dict = field(default_factory=dict)  # ... and its constructor keywords
    samples: str | None = None  # STAT_CASES: the keyword holding the number of samples


def run(case: Case, lib: Any, models: dict, **overrides):
    """Builds the case's attribution object from ``lib`` and calls ``attribute``."""
    model = models[case.model]
    if case.inner is not None:
        obj = getattr(lib, case.method)(getattr(lib, case.inner)(model, **case.inner_ctor))
    else:
        obj = getattr(lib, case.method)(model, **case.ctor)
    return obj.attribute(INPUTS[case.inputs], **{**case.kwargs, **overrides})


METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
TWO_ARGS = {"additional_forward_args": (SCALE, 0.25)}

CASES = [
    # Saliency / InputXGradient, every target form
    Case("saliency_int", "Saliency", "mlp", "x", {"target": 1}),
    Case("saliency_list_noabs", "Saliency", "mlp", "x", {"target": [0, 2], "abs": False}),
    Case("saliency_tuple_target", "Saliency", "multi", "x", {"target": (1, 2), "abs": False}),
    Case("saliency_none_target", "Saliency", "scalar", "x", {}),
    Case("saliency_pair_args", "Saliency", "two", "pair", {"target": 0, **TWO_ARGS}),
    Case("saliency_conv_list", "Saliency", "conv", "img", {"target": [0, 1]}),
    Case("ixg_tensor_target", "InputXGradient", "mlp", "x", {"target": torch.tensor([2, 1])}),
    Case("ixg_one_element_tensor", "InputXGradient", "mlp", "x", {"target": torch.tensor(1)}),
    Case("ixg_pair_args", "InputXGradient", "two", "pair", {"target": [1, 0], **TWO_ARGS}),
    # IntegratedGradients: every quadrature, baselines forms, deltas, chunks, structures
    *[
        Case(f"ig_{m}", "IntegratedGradients", "mlp", "x",
             {"target": [0, 2], "n_steps": 7, "method": m, "return_convergence_delta": True})
        for m in METHODS
    ],  # fmt: skip
    Case("ig_scalar_baseline", "IntegratedGradients", "mlp", "x", {"baselines": 0.5, "target": 1}),
    Case("ig_row_baseline", "IntegratedGradients", "mlp", "x", {"baselines": B_ROW, "target": 2, "n_steps": 20}),
    Case("ig_each_baseline_delta", "IntegratedGradients", "mlp", "x",
         {"baselines": B_EACH, "target": torch.tensor([1, 2]), "return_convergence_delta": True}),  # fmt: skip
    Case("ig_not_multiplied", "IntegratedGradients", "mlp", "x",
         {"baselines": B_EACH, "target": 0, "n_steps": 9}, ctor={"multiply_by_inputs": False}),  # fmt: skip
    Case("ig_internal_batch", "IntegratedGradients", "mlp", "x",
         {"target": 1, "n_steps": 10, "internal_batch_size": 3, "return_convergence_delta": True}),  # fmt: skip
    Case("ig_list_of_tuples", "IntegratedGradients", "multi", "x",
         {"target": [(0, 1), (1, 2)], "n_steps": 5, "return_convergence_delta": True}),  # fmt: skip
    Case("ig_none_target", "IntegratedGradients", "scalar", "x", {"n_steps": 12, "return_convergence_delta": True}),
    Case("ig_pair_args", "IntegratedGradients", "two", "pair",
         {"baselines": (B_ROW, 0.1), "target": [1, 0], "n_steps": 8, "return_convergence_delta": True, **TWO_ARGS}),
    Case("ig_one_tuple", "IntegratedGradients", "mlp", "x_tuple", {"target": 0, "n_steps": 6}),
    Case("ig_conv", "IntegratedGradients", "conv", "img",
         {"target": 2, "n_steps": 10, "method": "riemann_middle", "internal_batch_size": 4}),  # fmt: skip
    # GradientShap on a model linear in its inputs: the random path positions cancel exactly
    Case("gshap_linear_one_baseline", "GradientShap", "linear2", "pair",
         {"baselines": (B_DIST2[0][:1], B_DIST2[1][:1]), "target": 1, "n_samples": 3,
          "additional_forward_args": (SCALE,)}),  # fmt: skip
    # GradientShap without the (x - b) factor: a linear model's gradients are constant, so noise,
    # baseline draws and path positions all cancel
    Case("gshap_linear_local_noise", "GradientShap", "linear2", "pair",
         {"baselines": B_DIST2, "stdevs": (0.3, 0.2), "target": [0, 1], "n_samples": 4,
          "additional_forward_args": (SCALE,)}, ctor={"multiply_by_inputs": False}),  # fmt: skip
    # GradientShap's deltas, one per (example, sample), example-major; deterministic with one
    # baseline and no noise (exact completeness: zero up to rounding with the factor)
    *[
        Case(f"gshap_linear_{name}", "GradientShap", "linear2", "pair",
             {"baselines": (B_DIST2[0][:1], B_DIST2[1][:1]), "target": [1, 0], "n_samples": 3,
              "additional_forward_args": (SCALE,), "return_convergence_delta": True},
             ctor={"multiply_by_inputs": mult})
        for name, mult in [("delta", True), ("local_delta", False)]
    ],  # fmt: skip
    Case("nt_gshap_local_delta", "NoiseTunnel", "linear2", "pair",
         {"nt_samples": 3, "nt_samples_batch_size": 2, "stdevs": (0.0, 0.0), "baselines": (B_DIST2[0][:1], 0.5),
          "n_samples": 2, "target": [0, 1], "additional_forward_args": (SCALE,), "return_convergence_delta": True},
         inner="GradientShap", inner_ctor={"multiply_by_inputs": False}),  # fmt: skip
    # NoiseTunnel with stdevs=0: deterministic, so every reduction and the delta layout compare exactly
    *[
        Case(f"nt_ig_{t}", "NoiseTunnel", "mlp", "x",
             {"nt_type": t, "nt_samples": 3, "nt_samples_batch_size": 2, "stdevs": 0.0, "baselines": B_EACH,
              "target": [2, 0], "n_steps": 6, "return_convergence_delta": True}, inner="IntegratedGradients")
        for t in ["smoothgrad", "smoothgrad_sq", "vargrad"]
    ],  # fmt: skip
    Case("nt_ig_list_of_tuples", "NoiseTunnel", "multi", "x",
         {"nt_samples": 2, "stdevs": 0.0, "target": [(1, 0), (0, 2)], "n_steps": 5}, inner="IntegratedGradients"),
    Case("nt_saliency_pair_args", "NoiseTunnel", "two", "pair",
         {"nt_type": "smoothgrad_sq", "nt_samples": 4, "stdevs": (0.0, 0.0), "target": 1, **TWO_ARGS},
         inner="Saliency"),  # fmt: skip
    Case("nt_ig_one_baseline_distrib", "NoiseTunnel", "mlp", "x",
         {"nt_samples": 3, "stdevs": 0.0, "draw_baseline_from_distrib": True, "baselines": B_ROW, "target": 1,
          "n_steps": 8}, inner="IntegratedGradients"),  # fmt: skip
    Case("nt_ixg", "NoiseTunnel", "conv", "img", {"nt_samples": 2, "stdevs": 0.0, "target": [2, 0]},
         inner="InputXGradient"),
]

STAT_CASES = [
    Case("stat_nt_saliency_smoothgrad", "NoiseTunnel", "mlp", "x", {"stdevs": 0.5, "target": 1},
         inner="Saliency", samples="nt_samples"),
    Case("stat_nt_saliency_smoothgrad_sq", "NoiseTunnel", "mlp", "x",
         {"nt_type": "smoothgrad_sq", "stdevs": 0.5, "target": 1}, inner="Saliency", samples="nt_samples"),
    Case("stat_nt_saliency_vargrad", "NoiseTunnel", "mlp", "x",
         {"nt_type": "vargrad", "stdevs": 0.5, "target": 1, "abs": False}, inner="Saliency", samples="nt_samples"),
    Case("stat_nt_ig_distrib", "NoiseTunnel", "mlp", "x",
         {"stdevs": 0.3, "draw_baseline_from_distrib": True, "baselines": B_DIST, "target": 0, "n_steps": 8},
         inner="IntegratedGradients", samples="nt_samples"),
    Case("stat_gshap_one_baseline", "GradientShap", "mlp", "x", {"baselines": B_ROW, "target": 2},
         samples="n_samples"),
    Case("stat_gshap_pair_noise", "GradientShap", "two", "pair",
         {"baselines": B_DIST2, "stdevs": (0.2, 0.1), "target": 0, "additional_forward_args": (2.0, 0.5)},
         samples="n_samples"),  # fmt: skip
    Case("stat_gshap_callable", "GradientShap", "conv", "img", {"baselines": _dist_fn, "stdevs": 0.1, "target": 1},
         samples="n_samples"),
    Case("stat_gshap_local_noise", "GradientShap", "mlp", "x", {"baselines": B_DIST, "stdevs": 0.2, "target": 1},
         ctor={"multiply_by_inputs": False}, samples="n_samples"),
]


# ----------------------------------------------------------------------------- writing the file


def _fmt(v, indent: int) -> str:
    """A tensor (or tuple of tensors) as nested lists, one line where it fits in 100 columns."""
    pad = " " * (indent + 4)
    if isinstance(v, tuple):
        return "(\n" + "".join(f"{pad}{_fmt(t, indent + 4)},\n" for t in v) + " " * indent + ")"
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if not isinstance(v, list):
        return f"{v:.10g}"
    line = "[" + ", ".join(_fmt(u, 0) for u in v) + "]"
    if len(line) + indent <= 88:
        return line
    if not isinstance(v[0], list):  # a long flat list: four numbers a line
        rows = [", ".join(_fmt(u, 0) for u in v[i : i + 4]) for i in range(0, len(v), 4)]
        return "[\n" + "".join(f"{pad}{r},\n" for r in rows) + " " * indent + "]"
    return "[\n" + "".join(f"{pad}{_fmt(u, indent + 4)},\n" for u in v) + " " * indent + "]"


def _entry(case: Case, out) -> str:
    attr, delta = out if case.kwargs.get("return_convergence_delta") else (out, None)
    s = f'{{\n        "attr": {_fmt(attr, 8)},\n'
    if delta is not None:
        s += f'        "delta": {_fmt(delta, 8)},\n'
    return s + "    }"


def expected_lines(script: str, legend: str, stat_legend: str, cases, stat_cases, run, models, entry, n_captum) -> list[str]:
    """The generated module up to STAT's closing brace: Captum's numbers for every case.

    Each case runs from the same global seeds; a statistical case runs with ``n_captum`` samples.
    """
    import captum
    import captum.attr
    import numpy as np

    lines = [
        '"""Captum ' + captum.__version__ + f"'s numbers for tests/{script}'s cases. Generated, do not edit.",
        "",
        f"Regenerate with: .venv/bin/python tests/{script}",
        legend,
        stat_legend,
        '"""',
        "",
        "EXPECTED = {",
    ]
    for case in cases:
        torch.manual_seed(0)
        np.random.seed(0)
        lines.append(f'    "{case.name}": {entry(case, run(case, captum.attr, models))},')
    lines += ["}", "", "STAT = {"]
    for case in stat_cases:
        torch.manual_seed(0)
        np.random.seed(0)
        lines.append(f'    "{case.name}": {entry(case, run(case, captum.attr, models, **{case.samples: n_captum}))},')
    return lines + ["}", ""]


def default_repr(value) -> str:
    """repr of a default, with a function's address left out (``<function name>``)."""
    return f"<function {value.__name__}>" if callable(value) and hasattr(value, "__name__") else repr(value)


def parameters(fn) -> list:
    """``[(name, default_repr(default) or None), ...]`` of a function's parameters after ``self``."""
    import inspect

    params = list(inspect.signature(inspect.unwrap(fn)).parameters.values())[1:]
    return [(p.name, None if p.default is inspect.Parameter.empty else default_repr(p.default)) for p in params]


def signature_lines(module, classes) -> list[str]:
    """``SIGNATURES = {...}``: each class's __init__ and attribute parameters, as `parameters` gives them."""
    lines = ["SIGNATURES = {"]
    for name in classes:
        cls = getattr(module, name)
        lines.append(f'    "{name}": {{')
        for method in ("__init__", "attribute"):
            lines.append(f'        "{method}": [')
            lines += [f"            {p!r}," for p in parameters(getattr(cls, method))]
            lines.append("        ],")
        lines.append("    },")
    return lines + ["}", ""]


def write_expected(filename: str, lines: list[str], summary: str) -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}: {summary}")


def main() -> None:
    lines = expected_lines(
        "gen_captum_expected.py",
        "attr: the attributions (a tuple for tuple inputs); delta: the convergence delta when asked for.",
        f"STAT: estimates from N_CAPTUM = {N_CAPTUM} samples, for the statistical cases.",
        CASES, STAT_CASES, run, build_models(), _entry, N_CAPTUM,
    )  # fmt: skip
    write_expected("captum_expected.py", lines, f"{len(CASES)} cases, {len(STAT_CASES)} statistical cases")


if __name__ == "__main__":
    main()
