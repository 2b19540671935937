"""Metrics and robustness functions called from inside a model's forward, under outer methods.

They skip the wrapper of the attribution functions, so they check at their own entry (NOTE:
[Attributions inside a model's forward] in xattr/_src/nesting.py). Called inside the forward of
a model being attributed they inherited the outer method's per-call state: sensitivity_max
failed under every outer method ("a per-example tensor has 4 rows but the inputs have a batch of
12": the outer model region made its own inner attribution calls start over without the batch
scope the metric had made for them), infidelity and the deletion/insertion curves failed under
every outer method that folds rows ("... 16 rows but the inputs have a batch of 4"), and pgd's
seeded random start drew other numbers under an outer gradient_shap (0.68 off). They also mark
their own model calls, so an attribution inside *their* model's forward starts fresh too.
References: the same function called at top level on the very rows the model was given, and
for the deterministic ones, each row alone.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import xattr
from xattr._src import nesting
from xattr._src import tree as T
from xattr.metrics import (
    complexity, deletion, gaussian_noise, infidelity, insertion, randomization_check, sensitivity_max, sparseness,
)  # fmt: skip
from xattr.compat import captum
from xattr.robust import attack_comparator, fgsm, min_param_perturbation, pgd

B, D = 4, 6


def _sub() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


def _pred(sub, x):
    """The sub-network's predicted class, a per-example target."""
    return xattr.target(sub, sub(x).argmax(1))


def _sal(sub, x):
    return xattr.saliency(_pred(sub, x))


# each: (sub-network, rows) -> one number per row; True when it does not depend on the other rows
INNER = {
    "sensitivity_max": (lambda s, x: sensitivity_max(_sal(s, x), x, n_perturb_samples=3, generator=0), False),
    "sensitivity_of_smoothgrad": (
        lambda s, x: sensitivity_max(xattr.smoothgrad(_sal(s, x), stdevs=0.2, n_samples=2, generator=3), x,
                                     n_perturb_samples=3, generator=0), False),  # fmt: skip
    "infidelity": (lambda s, x: infidelity(_pred(s, x), _sal(s, x), gaussian_noise(0.05), n_perturb_samples=4, generator=0)(x), False),
    "deletion": (lambda s, x: deletion(_pred(s, x), _sal(s, x), n_steps=3)(x).auc, True),
    "insertion": (lambda s, x: insertion(_pred(s, x), _sal(s, x), n_steps=3)(x).auc, True),
    "sparseness": (lambda s, x: sparseness(_sal(s, x), x), True),
    "complexity": (lambda s, x: complexity(_sal(s, x), x), True),
    "randomization_check": (
        lambda s, x: randomization_check(s, lambda m: xattr.saliency(xattr.target(m, 0)), x, generator=0,
                                         similarity=("spearman",)).scores["spearman"].sum(0), True),  # fmt: skip
    "fgsm": (lambda s, x: fgsm(s, x, epsilon=0.1).sum(1), True),
    "pgd_random_start": (lambda s, x: pgd(s, x, radius=0.2, step_size=0.05, step_num=2, random_start=True, generator=0).sum(1), False),
    "attack_comparator": (
        lambda s, x: attack_comparator(s, x, lambda o: o[:, 0], {"fgsm": (functools.partial(fgsm, s), {"epsilon": 0.1})},
                                       perturbations_per_eval=2)["fgsm"]["mean"], True),  # fmt: skip
    "min_param_perturbation": (
        lambda s, x: min_param_perturbation(s, x, functools.partial(fgsm, s, target=s(x).argmax(1)), "epsilon", 0.0, 1.0,
                                            0.1, target=s(x).argmax(1))[0].sum(1), False),  # fmt: skip
}


class Scaled(nn.Module):
    """A model whose forward scales its input by a metric of a sub-network (one number per row);
    ``record`` keeps every (rows, value) the forward saw."""

    def __init__(self, inner: str):
        super().__init__()
        self.sub = _sub()
        torch.manual_seed(1)
        self.body, self.head = nn.Linear(D, 5), nn.Linear(5, 2)
        self.inner, self.record = inner, []
        self.double().eval()

    def forward(self, x):
        s = INNER[self.inner][0](self.sub, x).to(x.dtype)
        self.record.append((x.detach().clone(), s.detach().clone()))
        return self.head(torch.tanh(self.body(x * (1 + 0.1 * s[:, None]))))


OUTER = {
    "saliency": lambda f, m: xattr.saliency(f),
    "integrated_gradients": lambda f, m: xattr.integrated_gradients(f, n_steps=4),
    "smoothgrad_ig": lambda f, m: xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=2), stdevs=0.1, n_samples=2, generator=0),
    "gradient_shap": lambda f, m: xattr.gradient_shap(f, baselines=torch.zeros(2, D, dtype=torch.float64), n_samples=3, generator=0),
    "deep_lift": lambda f, m: xattr.deep_lift(f),
    "lrp": lambda f, m: xattr.lrp(f),
    "feature_ablation": lambda f, m: xattr.feature_ablation(f),
    "occlusion": lambda f, m: xattr.occlusion(f, sliding_window_shapes=(2,)),
    "sensitivity_max": lambda f, m: lambda x: sensitivity_max(xattr.saliency(f), x, n_perturb_samples=2, generator=1),
}


def _inputs() -> torch.Tensor:
    return torch.rand(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.3


@pytest.mark.parametrize("outer", list(OUTER))
@pytest.mark.parametrize("inner", list(INNER))
def test_nested_call_equals_the_same_call_at_top_level(inner, outer):
    model = Scaled(inner)
    OUTER[outer](xattr.target(model, 1), model)(_inputs())
    seen, model.record = model.record, []
    assert seen, "the outer method ran the model"
    fn, per_row = INNER[inner]
    for rows, value in seen:
        torch.testing.assert_close(value, fn(model.sub, rows).to(value.dtype), atol=1e-9, rtol=1e-7)
        if per_row:  # and each row alone
            alone = torch.cat([fn(model.sub, rows[i : i + 1]) for i in range(rows.shape[0])]).to(value.dtype)
            torch.testing.assert_close(value, alone, atol=1e-9, rtol=1e-7)


def test_deletion_inside_integrated_gradients_by_hand():
    # deletion (n_steps=None, zero baseline) of a linear sub-network's per-example target, by
    # hand; the outer IG runs the model on 4 scaled copies of the batch (16 rows), and the
    # per-example target met IG's batch scope: "16 rows but the inputs have a batch of 4"
    torch.manual_seed(0)
    lin = nn.Linear(D, 2).double()
    weight, bias = lin.weight.detach(), lin.bias.detach()

    def by_hand(rows):
        t = (rows.sum(1) > 0).long()
        w, b = weight[t], bias[t]
        order = torch.sort(rows * w, dim=1, descending=True, stable=True).indices
        kept, scores = torch.ones_like(rows), [(rows * w).sum(1) + b]
        for k in range(D):
            kept[torch.arange(rows.shape[0]), order[:, k]] = 0
            scores.append((rows * kept * w).sum(1) + b)
        return torch.trapezoid(torch.stack(scores, 1), torch.arange(D + 1, dtype=rows.dtype) / D, dim=1)

    record = []

    def model(x):
        t = (x.detach().sum(1) > 0).long()
        auc = deletion(xattr.target(lin, t), lambda v: v * weight[t])(x).auc
        record.append((x.detach().clone(), auc.detach().clone()))
        return x.sum(1) * (1 + 0.1 * auc)

    xattr.integrated_gradients(model, n_steps=4)(_inputs())
    ((rows, auc),) = record
    assert rows.shape[0] == 4 * B
    torch.testing.assert_close(auc, by_hand(rows), atol=1e-12, rtol=1e-9)


# ---------------------------------------------------------------- per-call state seen inside


class Probe:
    """A model / attribution function recording, at each call, whether every per-call context
    variable is at its default, the batch scope, and how many rule modes are on torch's stack."""

    def __init__(self):
        self.seen, self.inside, self.kinds = [], [], []
        self.w = torch.linspace(-1, 1, D * 3, dtype=torch.float64).reshape(D, 3)

    def _record(self, kind: str):
        state = tuple(v.get() is default or v.get() == default for v, default in nesting.per_call_state()
                      if v.name != "xattr_in_model")  # fmt: skip
        n = torch._C._len_torch_function_stack()
        modes = sum(getattr(torch._C._get_function_stack_at(i), "nested_calls_skip", False) for i in range(n))
        self.seen.append((state, T.true_batch(), modes))
        self.inside.append(nesting.inside_model())
        self.kinds.append(kind)

    def logits(self, x):
        self._record("model")
        return torch.tanh(x) @ self.w

    def rows(self, x):
        return self.logits(x)[:, 0]

    def attr(self, x):
        self._record("attr")
        return x * self.w[:, 0]


ENTRY = {
    "sensitivity_max": lambda p, x: sensitivity_max(p.attr, x, n_perturb_samples=2, generator=0),
    "infidelity": lambda p, x: infidelity(p.rows, p.attr, gaussian_noise(0.05), n_perturb_samples=2, generator=0)(x),
    "deletion": lambda p, x: deletion(p.rows, p.attr, n_steps=2)(x).auc,
    "insertion": lambda p, x: insertion(p.rows, p.attr, n_steps=2)(x).auc,
    "sparseness": lambda p, x: sparseness(p.attr, x),
    "complexity": lambda p, x: complexity(p.attr, x),
    "randomization_check": lambda p, x: randomization_check(_sub(), lambda m: p.attr, x, generator=0, similarity=("spearman",)),
    "fgsm": lambda p, x: fgsm(p.logits, x, epsilon=0.1),
    "pgd": lambda p, x: pgd(p.logits, x, radius=0.1, step_size=0.05, step_num=1, random_start=True, generator=0),
    "attack_comparator": lambda p, x: attack_comparator(p.logits, x, lambda o: o[:, 0], {"a": (lambda v: v + 0.1)}),
    "min_param_perturbation": lambda p, x: min_param_perturbation(
        p.logits, x, functools.partial(fgsm, p.logits, target=0), "epsilon", 0.0, 0.3, 0.1, target=0),  # fmt: skip
    "captum_AttackComparator": lambda p, x: _comparator(p).evaluate(x),
    "captum_MinParamPerturbation": lambda p, x: captum.MinParamPerturbation(
        p.logits, captum.FGSM(p.logits), "epsilon", 0.0, 0.3, 0.1).evaluate(x, target=0, attack_kwargs={"target": 0}),  # fmt: skip
}


def _comparator(p: Probe):
    c = captum.AttackComparator(p.logits, lambda out: out[:, 0])
    c.add_attack(lambda v: v + 0.1, name="shift")
    return c


PROBE_OUTER = {
    "smoothgrad_ig": lambda f: xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=2), stdevs=0.1, n_samples=2, generator=0),
    "gradient_shap": lambda f: xattr.gradient_shap(f, baselines=torch.zeros(2, D, dtype=torch.float64), n_samples=2, generator=0),
    "deep_lift": lambda f: xattr.deep_lift(f),
    "lrp": lambda f: xattr.lrp(f),
    "feature_ablation": lambda f: xattr.feature_ablation(f),
}


@pytest.mark.parametrize("outer", list(PROBE_OUTER))
@pytest.mark.parametrize("entry", list(ENTRY))
def test_entered_inside_a_model_it_starts_from_default_state(entry, outer):
    x = _inputs()
    top = Probe()
    ENTRY[entry](top, x)
    lin = nn.Linear(D, 1).double()
    probes = []

    def model(v):
        probes.append(Probe())
        probes[-1].given = v.shape[0]
        ENTRY[entry](probes[-1], v.detach())
        return lin(v)[:, 0]

    PROBE_OUTER[outer](model)(x)
    assert probes
    for p in probes:  # its first call sees what a top-level call's first call sees: no outer state, no rule modes
        state, batch, modes = p.seen[0]
        assert (state, modes) == (top.seen[0][0], 0)
        assert batch == (None if top.seen[0][1] is None else p.given)  # its own rows are its batch


MODEL_CALLERS = ["infidelity", "deletion", "insertion", "fgsm", "pgd", "attack_comparator", "min_param_perturbation",
                 "captum_AttackComparator", "captum_MinParamPerturbation"]  # fmt: skip


@pytest.mark.parametrize("entry", MODEL_CALLERS)
def test_own_model_calls_are_marked(entry):
    # so an attribution function inside the model's forward runs as a call of its own
    p = Probe()
    ENTRY[entry](p, _inputs())
    marks = [inside for inside, kind in zip(p.inside, p.kinds) if kind == "model"]
    assert marks and all(marks), marks


def test_attribution_inside_the_forward_of_an_attack_inside_a_metric():
    # sensitivity_max folds copies for its attribution function (here an attack's displacement);
    # the attack's prediction ran the model unmarked, so the saliency inside that model's forward
    # met the metric's batch scope: "a per-example tensor has 8 rows but the inputs have a batch of 4"
    model, x, record = Scaled("sparseness"), _inputs(), []

    def displacement(v):
        out = fgsm(model, v, epsilon=0.1) - v
        record.append((v.clone(), out.clone()))
        return out

    got = sensitivity_max(displacement, x, n_perturb_samples=2, generator=0)
    ((rows, phi_all),) = record  # x and its two copies in one call (NOTE: [x as copy 0] in _worst_case.py)
    assert torch.equal(rows[:B], x)
    phi0, phi = phi_all[:B], phi_all[B:]
    for v, out in record:  # what the attack gives on those rows at top level
        torch.testing.assert_close(out, fgsm(model, v, epsilon=0.1) - v, atol=1e-12, rtol=0)
    dist = (phi.reshape(2, B, D) - phi0).norm(dim=-1).amax(0)
    torch.testing.assert_close(got, dist / phi0.norm(dim=-1), atol=1e-12, rtol=1e-9)


# functions of tensors alone: nothing of theirs runs a model or an attribution function
PURE = {"Curve", "Randomization", "gaussian_noise", "uniform_noise", "subset_to_baseline", "patch_mask", "spearman", "ssim",
        "top_k_intersection", "cross_entropy",
        # the bias checks' estimators on given values, and result classes: no model call
        "BiasReport", "Counterfactual", "GroupStats", "Interactions", "bins", "entropy", "mutual_information",
        "mutual_information_test", "normalized_mutual_information", "soft_mutual_information", "subgroups",
        "MultiplierCheck", "noisy_linear_imputation", "Cell", "Comparison", "Evaluation", "entries"}  # fmt: skip


def test_every_public_metric_and_attack_checks_at_entry():
    ident = lambda v: v  # noqa: E731
    made = {"infidelity": lambda fn: fn(ident, ident, ident), "deletion": lambda fn: fn(ident, ident),
            "insertion": lambda fn: fn(ident, ident), "faithfulness_correlation": lambda fn: fn(ident, ident, subset_size=1),
            "monotonicity_correlation": lambda fn: fn(ident, ident), "monotonicity": lambda fn: fn(ident, ident),
            "road": lambda fn: fn(ident, ident)}  # fmt: skip
    for module in (xattr.metrics, xattr.robust):
        for name in set(module.__all__) - PURE:
            fn = made.get(name, lambda fn: fn)(getattr(module, name))
            assert getattr(fn, "enters_as_new_call", False), f"{module.__name__}.{name}"
    for cls in (captum.AttackComparator, captum.MinParamPerturbation):
        assert getattr(cls.evaluate, "enters_as_new_call", False), cls.__name__
