"""The Captum robustness conformance cases, and the script that writes Captum's numbers for them.

Run by hand (needs captum 0.9.0, the ``bench`` extra), never by the test suite:

    .venv/bin/python tests/gen_captum_robust_expected.py   # rewrites tests/captum_robust_expected.py

This module itself imports only torch: tests/test_compat_robust.py imports the models, inputs and
cases from here and runs them through ``xattr.compat.captum`` with the same ``run`` function, so
both libraries see exactly the same calls. Every case is deterministic (no random start).
"""

from __future__ import annotations

import os
import pprint
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TwoInputs(nn.Module):
    """softmax(f(x1, x2, scale)): two attacked inputs plus a per-example tensor argument."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 3)

    def forward(self, x1, x2, scale):
        return torch.softmax(self.l3(torch.tanh(self.l1(x1) + self.l2(x2)) * scale), dim=1)


def _build(seed: int, make) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make().double().eval()


def build_models() -> dict[str, nn.Module]:
    return {
        "mlp": _build(0, lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Softmax(dim=1))),
        "two": _build(1, TwoInputs),
        "conv": _build(
            2, lambda: nn.Sequential(nn.Conv2d(1, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(18, 3), nn.Softmax(1))
        ),
    }


def _randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


X = _randn(10, 4, 4)
X1, X2, SCALE = _randn(11, 4, 3), _randn(12, 4, 2), _randn(13, 4, 1).abs() + 0.5
IMG = _randn(14, 3, 1, 4, 4)
Y = torch.tensor([0, 1, 2, 1])
MASK = (_randn(15, 4, 4) > 0).double()

Metrics = namedtuple("Metrics", ["accuracy", "confidence"])


def metric(out, target):
    return Metrics((out.argmax(1) == target).float(), out.max(1).values)


def ce_loss(out, target):
    return F.nll_loss(torch.log(out), target, reduction="none")


def scale_attack(inputs, factor):
    return inputs * factor


@dataclass
class Case:
    name: str
    kind: str  # "FGSM" | "PGD" | "comparator" | "minparam"
    model: str
    kwargs: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)


CASES = [
    Case("fgsm_int", "FGSM", "mlp", dict(inputs=X, epsilon=0.1, target=1)),
    Case("fgsm_tensor_targeted", "FGSM", "mlp", dict(inputs=X, epsilon=0.2, target=Y, targeted=True)),
    Case("fgsm_list_mask_bounds", "FGSM", "mlp", dict(inputs=X, epsilon=0.3, target=[0, 1, 2, 1], mask=MASK),
         dict(lower_bound=-0.5, upper_bound=0.8)),
    Case("fgsm_loss_func", "FGSM", "mlp", dict(inputs=X, epsilon=0.1, target=Y), dict(loss_func=ce_loss)),
    Case("fgsm_tuple_extra", "FGSM", "two", dict(inputs=(X1, X2), epsilon=0.1, target=Y, additional_forward_args=SCALE)),
    Case("pgd_linf", "PGD", "mlp", dict(inputs=X, radius=0.25, step_size=0.1, step_num=4, target=Y)),
    Case("pgd_l2_targeted", "PGD", "mlp",
         dict(inputs=X, radius=0.3, step_size=0.05, step_num=5, target=2, targeted=True, norm="L2")),
    Case("pgd_mask_bounds", "PGD", "mlp", dict(inputs=X, radius=0.5, step_size=0.2, step_num=3, target=Y, mask=MASK),
         dict(lower_bound=-1.0, upper_bound=1.0)),
    Case("pgd_tuple_l2", "PGD", "two",
         dict(inputs=(X1, X2), radius=0.4, step_size=0.1, step_num=3, target=Y, additional_forward_args=(SCALE,), norm="L2")),
    Case("pgd_conv_l2", "PGD", "conv", dict(inputs=IMG, radius=0.5, step_size=0.05, step_num=3, target=[0, 2, 1], norm="L2")),
    Case("comparator", "comparator", "mlp", dict(per_eval=1)),
    Case("comparator_grouped", "comparator", "mlp", dict(per_eval=3)),
    Case("minparam_linear", "minparam", "mlp", dict(mode="linear", per_eval=1)),
    Case("minparam_binary", "minparam", "mlp", dict(mode="binary", per_eval=1)),
    Case("minparam_linear_grouped", "minparam", "mlp", dict(mode="linear", per_eval=4)),
    Case("minparam_none", "minparam", "mlp", dict(mode="binary", per_eval=1, arg_max=0.04)),
]


def run(case: Case, lib: Any, models: dict):
    """One case through ``lib`` (captum.robust or xattr.compat.captum), Captum's conventions."""
    model = models[case.model]
    kw = dict(case.kwargs)
    if case.kind in ("FGSM", "PGD"):
        attack = getattr(lib, case.kind)(model, **case.init)
        return attack.perturb(**kw)
    if case.kind == "comparator":
        cmp = lib.AttackComparator(model, metric)
        cmp.add_attack(lib.FGSM(model), "FGSM 0.1", attack_kwargs={"epsilon": 0.1}, additional_attack_arg_names=["target"])
        cmp.add_attack(lib.PGD(model, lower_bound=-1.5, upper_bound=1.5), "PGD", num_attempts=2,
                       attack_kwargs={"radius": 0.3, "step_size": 0.1, "step_num": 3},
                       additional_attack_arg_names=["target"])  # fmt: skip
        cmp.add_attack(scale_attack, "scale", attack_kwargs={"factor": 0.5})
        first = cmp.evaluate(X, target=Y, perturbations_per_eval=kw["per_eval"])
        second = cmp.evaluate(X[:3] * 1.5, target=Y[:3], perturbations_per_eval=kw["per_eval"])
        return {"first": first, "second": second, "summary": cmp.summary()}
    search = lib.MinParamPerturbation(model, lib.FGSM(model), "epsilon", 0.0, kw.get("arg_max", 1.5), 0.02, mode=kw["mode"])
    with torch.no_grad():
        pred = model(X).argmax(1)  # labels the model gets right, so that each threshold is positive
    out = {}
    for i in range(3):  # one example at a time: each its own threshold
        adv, eps = search.evaluate(X[i : i + 1], target=pred[i : i + 1], perturbations_per_eval=kw["per_eval"],
                                   attack_kwargs={"target": pred[i : i + 1]})  # fmt: skip
        out[f"example{i}"] = {"inputs": adv, "epsilon": eps}
    return out


# ----------------------------------------------------------------------------- writing the file


def plain(v):
    """Results as Python literals: tensors as nested lists (10 significant digits), namedtuples as tuples."""
    if isinstance(v, dict):
        return {k: plain(u) for k, u in v.items()}
    if isinstance(v, tuple):
        return tuple(plain(u) for u in v)
    if isinstance(v, torch.Tensor):
        v = v.detach().double().tolist()
    if isinstance(v, list):
        return [plain(u) for u in v]
    if isinstance(v, float):
        return float(f"{v:.10g}")
    return v


def main() -> None:
    import captum
    import captum.robust

    lines = [
        f'"""Captum {captum.__version__}\'s numbers for tests/gen_captum_robust_expected.py\'s cases. Generated, do not edit.',
        "",
        "Regenerate with: .venv/bin/python tests/gen_captum_robust_expected.py",
        '"""',
        "",
        "EXPECTED = {",
    ]
    models = build_models()
    for case in CASES:
        torch.manual_seed(0)
        body = pprint.pformat(plain(run(case, captum.robust, models)), width=100, sort_dicts=False)
        lines.append(f'    "{case.name}": ' + body.replace("\n", "\n    ") + ",")
    lines += ["}", ""]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captum_robust_expected.py")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}: {len(CASES)} cases")


if __name__ == "__main__":
    main()
