"""A model whose forward itself calls an attribution function, under every family of outer method.

The inner call must run as a call of its own (NOTE: [Attributions inside a model's forward] in
xattr/_src/nesting.py): it inherited the outer method's batch scope ("a per-example tensor has 16
rows but the inputs have a batch of 4"), its copy blocks (other random draws), and under a rule
method its rules (the model's forward value changed). References: the same model with the inner
map computed in closed form (plain tensor ops, detached), explicit loops over features, and the
inner attribution function called at top level on the very rows the model was given.
"""

from __future__ import annotations

import contextvars
import pathlib
import re

import pytest
import torch
from torch import nn

import xattr

B, D = 4, 6
N_STEPS = 8


def _sub() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 3))


def _closed_form(kind: str, sub: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inner attribution of ``sub``'s predicted class, by hand (no autograd, no xattr)."""
    w1, b1, w2, b2 = sub[0].weight, sub[0].bias, sub[2].weight, sub[2].bias
    with torch.no_grad():
        t = (torch.tanh(x @ w1.T + b1) @ w2.T + b2).argmax(1)
        wt = w2[t]  # (B, 8)

        def grad_at(v):  # d sub(v)[t] / dv
            z = v @ w1.T + b1
            return (wt * (1 - torch.tanh(z) ** 2)) @ w1

        def value(v):
            return (torch.tanh(v @ w1.T + b1) * wt).sum(1) + b2[t]

        if kind == "saliency":
            return grad_at(x).abs()
        if kind == "ig":  # riemann_middle, zero baseline
            return sum(grad_at((i + 0.5) / N_STEPS * x) for i in range(N_STEPS)) / N_STEPS * x
        if kind == "ablation":  # every element its own feature, zero baseline
            cols = []
            for i in range(D):
                off = x.clone()
                off[:, i] = 0
                cols.append(value(x) - value(off))
            return torch.stack(cols, 1)
        if kind == "deep_lift":  # Rescale at the tanh, zero reference
            z, z0 = x @ w1.T + b1, b1.expand(x.shape[0], -1)
            dz = z - z0
            tie = dz.abs() < 1e-10  # the derivative where the input equals the reference
            m = torch.where(tie, 1 - torch.tanh(z) ** 2, (torch.tanh(z) - torch.tanh(z0)) / torch.where(tie, 1, dz))
            return x * ((wt * m) @ w1)
    raise ValueError(kind)


def _inner_method(kind: str):
    if kind == "saliency":
        return lambda f: xattr.saliency(f)
    if kind == "ig":
        return lambda f: xattr.integrated_gradients(f, n_steps=N_STEPS, method="riemann_middle")
    if kind == "ablation":
        return lambda f: xattr.feature_ablation(f)
    if kind == "deep_lift":
        return lambda f: xattr.deep_lift(f)
    if kind == "smoothgrad":  # seeded: the draws must be the inner call's own
        return lambda f: xattr.smoothgrad(xattr.saliency(f), stdevs=0.2, n_samples=3, generator=5)
    raise ValueError(kind)


class Explained(nn.Module):
    """A model whose forward scales its input by an attribution map of a sub-network
    (a saliency-guided architecture). ``closed_form`` computes the map by hand instead;
    ``record`` keeps every (rows, map) the forward saw."""

    def __init__(self, inner: str, closed_form: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.sub = _sub()
        self.body = nn.Linear(D, 5)
        self.head = nn.Linear(5, 2)
        self.inner, self.closed_form, self.record = inner, closed_form, []
        self.double().eval()

    def inner_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.closed_form:
            self.sub(x)  # runs the sub-network's layers once, as the target's argmax does below
            return _closed_form(self.inner, self.sub, x)
        target = xattr.target(self.sub, self.sub(x).argmax(1))
        return _inner_method(self.inner)(target)(x)

    def forward(self, x):
        m = self.inner_map(x)
        self.record.append((x.detach().clone(), m.detach().clone()))
        return self.head(torch.tanh(self.body(x * (1 + m))))


def _inputs() -> torch.Tensor:
    return torch.rand(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.3


OUTER = {
    "saliency": lambda f, m: xattr.saliency(f),
    "integrated_gradients": lambda f, m: xattr.integrated_gradients(f, n_steps=4),
    "smoothgrad_ig": lambda f, m: xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=3), stdevs=0.1, n_samples=3, generator=0),
    "gradient_shap": lambda f, m: xattr.gradient_shap(f, baselines=torch.zeros(2, D, dtype=torch.float64), n_samples=3, generator=0),
    "layer_ig": lambda f, m: xattr.layer_integrated_gradients(xattr.at_layer(f, m.body), n_steps=4),
    "gradient_x_activation_in_sub": lambda f, m: xattr.gradient_x_activation(xattr.at_layer(f, m.sub[0])),
    "guided_backprop": lambda f, m: xattr.guided_backprop(f),
    "deep_lift": lambda f, m: xattr.deep_lift(f),
    "lrp": lambda f, m: xattr.lrp(f),
    "gamma_rules": lambda f, m: xattr.saliency(xattr.target(xattr.rules(m, {nn.Linear: xattr.rule.Gamma(1.0)}), 1)),
    "feature_ablation": lambda f, m: xattr.feature_ablation(f),
    "occlusion": lambda f, m: xattr.occlusion(f, sliding_window_shapes=(2,)),
    "shapley_values": lambda f, m: xattr.shapley_values(f, feature_mask=torch.tensor([0, 0, 1, 1, 2, 2])),
}


@pytest.mark.parametrize("inner", ["saliency", "ig", "ablation", "deep_lift"])
@pytest.mark.parametrize("outer", list(OUTER))
@pytest.mark.filterwarnings("ignore::xattr.NoGradientPathWarning")  # sub feeds the output only through detached maps
def test_outer_method_sees_the_forward_of_the_closed_form_model(outer, inner):
    nested, by_hand = Explained(inner), Explained(inner, closed_form=True)
    x = _inputs()
    got = OUTER[outer](xattr.target(nested, 1), nested)(x)
    want = OUTER[outer](xattr.target(by_hand, 1), by_hand)(x)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    assert nested.record, "the outer method ran the model"
    for rows, m in nested.record:  # the map each forward used is the closed form's, row by row
        torch.testing.assert_close(m, _closed_form(inner, nested.sub, rows), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("inner", ["saliency", "ig", "ablation", "deep_lift", "smoothgrad"])
@pytest.mark.parametrize("outer", list(OUTER))
@pytest.mark.filterwarnings("ignore::xattr.NoGradientPathWarning")  # sub feeds the output only through detached maps
def test_inner_call_equals_the_same_call_at_top_level(outer, inner):
    # the inner call gives, on the rows the outer method ran the model on, what it gives alone:
    # seeded draws included (the outer copy blocks used to move them)
    nested = Explained(inner)
    OUTER[outer](xattr.target(nested, 1), nested)(_inputs())
    seen, nested.record = nested.record, []
    assert seen
    for rows, m in seen:
        alone = nested.inner_map(rows)
        torch.testing.assert_close(m, alone, atol=1e-9, rtol=1e-7)


def test_rule_methods_leave_the_forward_value_unchanged():
    # the inner saliency's backward followed the outer Gamma rule: 0.048 off on a 0.33 scale
    for inner in ("saliency", "ig", "deep_lift"):
        nested = Explained(inner)
        x = _inputs()
        plain = nested(x)
        for mapping in ({nn.Linear: xattr.rule.Gamma(1.0)}, xattr.rule.lrp_rules(), {nn.Tanh: xattr.rule.Rescale()}):
            ruled = xattr.rules(nested, mapping)
            torch.testing.assert_close(ruled(x), plain, atol=0, rtol=0)  # called directly, no method around it
            out, _ = xattr.value_and_grad(xattr.target(ruled, 1))(x)
            torch.testing.assert_close(out, plain[:, 1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("inner", ["saliency", "ablation"])
@pytest.mark.parametrize("method", ["feature_ablation", "occlusion"])
def test_perturbation_methods_equal_brute_force_ablation(method, inner):
    nested = Explained(inner)
    x = _inputs()
    got = OUTER[method](xattr.target(nested, 1), nested)(x)
    full = nested(x)[:, 1]
    drops = []
    for i in range(D):  # one model call per feature, each at top level
        off = x.clone()
        if method == "feature_ablation":
            off[:, i] = 0
            drops.append(full - nested(off)[:, 1])
        else:  # windows of 2 at stride 1: an element's attribution is the mean over its windows
            drops.append(None)
    if method == "occlusion":
        windows = []
        for s in range(D - 1):
            off = x.clone()
            off[:, s : s + 2] = 0
            windows.append(full - nested(off)[:, 1])
        cover = [[s for s in range(D - 1) if s <= i < s + 2] for i in range(D)]
        drops = [sum(windows[s] for s in c) / len(c) for c in cover]
    torch.testing.assert_close(got, torch.stack(drops, 1), atol=1e-12, rtol=1e-9)


def test_metrics_calling_attributions_of_such_a_model():
    nested, by_hand = Explained("saliency"), Explained("saliency", closed_form=True)
    x = _inputs()
    for model in (nested, by_hand):
        model.sens = xattr.metrics.sensitivity_max(
            xattr.saliency(xattr.target(model, 1)), x, perturb_radius=0.05, n_perturb_samples=4, generator=0
        )
        attr = xattr.saliency(xattr.target(model, 1))(x)
        noise = xattr.metrics.gaussian_noise(0.05)
        model.infid = xattr.metrics.infidelity(xattr.target(model, 1), attr, noise, n_perturb_samples=5, generator=0)(x)
    torch.testing.assert_close(nested.sens, by_hand.sens, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(nested.infid, by_hand.infid, atol=1e-9, rtol=1e-7)


def test_composition_still_sees_the_outer_state():
    # rules around an attribution function apply to its gradient (composition, not a model)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x = _inputs()
    guided = xattr.rules(xattr.saliency(xattr.target(model, 1), abs=False), {nn.ReLU: xattr.rule.Guided()})
    torch.testing.assert_close(guided(x), xattr.guided_backprop(xattr.target(model, 1))(x))
    # ... also when such a composition is itself called from inside a model's forward
    outer = lambda v: guided(v).sum(1) + model(v)[:, 0]  # noqa: E731
    got = xattr.feature_ablation(outer)(x)
    want = torch.stack([outer(x) - outer(x * (torch.arange(D) != i)) for i in range(D)], 1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)


def test_every_per_call_context_variable_is_reset_or_declared_inherited():
    from xattr._src import nesting

    root = pathlib.Path(xattr.__file__).parent
    declared = set()
    for path in root.rglob("*.py"):
        declared |= set(re.findall(r"ContextVar\(\s*\"([a-z_]+)\"", path.read_text()))
    reset = {v.name for v, _ in nesting.per_call_state()}
    own = {"xattr_nesting_depth"}  # counted up, not reset
    assert declared - reset - own == set(nesting.INHERITED)
    for v, default in nesting.per_call_state():
        assert contextvars.Context().run(v.get) == default
