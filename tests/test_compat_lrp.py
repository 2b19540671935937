"""xattr.compat.captum's LRP and LayerLRP against Captum 0.9's own numbers (stored; no captum here).

The cases live in tests/gen_captum_lrp_expected.py, which wrote Captum's numbers into
tests/captum_lrp_expected.py; both libraries go through the same ``run`` function, with Captum's
rule classes for Captum and xattr.compat.captum.lrp's lookalikes for xattr. Where Captum's hooks
give a different answer (torch.tanh, a plain ``+``) or refuse the model (a reused layer), the
tests show what xattr does instead: documented differences (docs/migration_rules.md).
"""

import pytest
import torch
from torch import nn

import xattr
from xattr.compat.captum import lrp as X

from registry import changed_state, state_snapshot

try:
    from .stored import assert_matches_stored
except ImportError:
    from stored import assert_matches_stored

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_lrp_expected as E
    from . import gen_captum_lrp_expected as G
except ImportError:
    import captum_lrp_expected as E
    import gen_captum_lrp_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES + G.DIFFERENT}
TOL = dict(rtol=1e-6, atol=1e-9)  # 10-digit storage


def _close(out, expected, **tol):
    assert_matches_stored(out, expected, **{**TOL, **tol})


def _split(case, out):
    return out if case.kwargs.get("return_convergence_delta") else (out, None)


def _check(out, case, expected):
    attr, delta = _split(case, out)
    if expected.get("list"):
        assert isinstance(attr, list), "a list of layers gives a list (Captum's convention)"
        assert delta is None or isinstance(delta, list)
        attr, delta = tuple(attr), (tuple(delta) if delta is not None else None)
    _close(attr, expected["attr"])
    if "delta" in expected:
        _close(delta, expected["delta"], atol=1e-8)


@pytest.mark.parametrize("name", [c.name for c in G.CASES])
def test_same_numbers_as_captum(name):
    case = CASES[name]
    _check(G.run(case, X, MODELS), case, E.EXPECTED[name])


def test_rules_are_read_from_modules_and_left_there():
    """Rules set as module.rule change the result; xattr leaves them on the modules (Captum deletes
    them after each call) and changes nothing else on the model."""
    model, x = MODELS["cnn"], G.INPUTS["img"]
    default = X.LRP(model).attribute(x, target=2)
    model.conv1.rule = X.GammaRule()
    try:
        before = state_snapshot(model, x)
        ruled = X.LRP(model).attribute(x, target=2)
        assert changed_state(before, state_snapshot(model, x)) == []
        assert isinstance(model.conv1.rule, X.GammaRule)
        torch.testing.assert_close(X.LRP(model).attribute(x, target=2), ruled)  # the rule applies again
    finally:
        del model.conv1.rule
    assert not torch.allclose(ruled, default)


def test_captum_delta_sign_and_compute_convergence_delta():
    """Captum's delta is f(x) - sum(R), the opposite of xattr's return_delta."""
    model, x = MODELS["cnn"], G.INPUTS["img"]
    attr, delta = X.LRP(model).attribute(x, target=1, return_convergence_delta=True)
    _, xattr_delta = xattr.lrp(xattr.target(model, 1), return_delta=True)(x)
    torch.testing.assert_close(delta, -xattr_delta)
    out = model(x)[:, 1].detach()
    torch.testing.assert_close(X.LRP(model).compute_convergence_delta(attr, out), delta)
    lrp = X.LRP(model)
    assert lrp.has_convergence_delta() and lrp.multiplies_by_inputs


def test_xattr_rules_as_module_rule():
    """An xattr Rule set as module.rule is used as it is (here AlphaBeta, which Captum lacks)."""
    model, x = MODELS["mlp"], G.INPUTS["x"]
    model.l2.rule = xattr.rule.AlphaBeta(2.0, 1.0)
    try:
        got = X.LRP(model).attribute(x, target=1)
    finally:
        del model.l2.rule
    composite = {**xattr.rule.lrp_rules(), model.l2: xattr.rule.AlphaBeta(2.0, 1.0)}
    want = xattr.lrp(xattr.target(model, 1), composite=composite)(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cls, kw, rule, expected", [
    ("EpsilonRule", {"epsilon": 0.3}, xattr.rule.Epsilon, {"eps": 0.3}),
    ("GammaRule", {"gamma": 0.7, "set_bias_to_zero": True}, xattr.rule.Gamma,
     {"gamma": 0.7, "zero_bias": True, "modify_bias": False, "eps": 1e-9}),
    ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True}, xattr.rule.PositiveWeights, {"zero_bias": True, "eps": 1e-9}),
])  # fmt: skip
def test_rule_translation(cls, kw, rule, expected):
    translated = X.xattr_rule(getattr(X, cls)(**kw))
    assert type(translated) is rule and {k: getattr(translated, k) for k in expected} == expected


def test_captum_rule_objects_are_translated():
    """Captum's own rule objects (when captum is installed) give the lookalikes' numbers."""
    captum_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
    model, x = MODELS["cnn"], G.INPUTS["img"]
    results = []
    for classes in (captum_rules, X):
        model.conv1.rule, model.bn.rule = classes.GammaRule(0.4), classes.IdentityRule()
        model.fc.rule = classes.Alpha1_Beta0_Rule(set_bias_to_zero=True)
        try:
            results.append(X.LRP(model).attribute(x, target=0))
        finally:
            del model.conv1.rule, model.bn.rule, model.fc.rule
    torch.testing.assert_close(results[0], results[1])


def test_unknown_rules_raise_on_construction():
    model = MODELS["mlp"]
    model.l1.rule = "epsilon"
    try:
        with pytest.raises(TypeError, match="module 'l1' has rule 'epsilon'"):
            X.LRP(model)
    finally:
        del model.l1.rule


def test_identity_rule_needs_a_same_shape_layer():
    model = MODELS["mlp"]
    model.l1.rule = X.IdentityRule()  # Linear(3, 6)
    try:
        with pytest.raises(ValueError, match="IdentityRule .* maps"):
            X.LRP(model).attribute(G.INPUTS["x"], target=0)
    finally:
        del model.l1.rule


def test_verbose_prints_the_rules(capsys):
    model = MODELS["mlp"]
    model.l1.rule = rule = X.EpsilonRule(0.25)
    try:
        X.LRP(model).attribute(G.INPUTS["x"], target=0, verbose=True)
    finally:
        del model.l1.rule
    assert f"Applied {rule} on layer {model.l1}" in capsys.readouterr().out  # the rule object given, as Captum prints


def test_layer_lrp_is_xattr_layer_lrp_and_accepts_device_ids():
    model, x = MODELS["cnn"], G.INPUTS["img"]
    got = X.LayerLRP(model, model.conv2, None).attribute(x, target=1)
    want = xattr.layer_lrp(xattr.at_layer(xattr.target(model, 1), model.conv2))(x)
    torch.testing.assert_close(got, want)
    assert X.LayerLRP(model, model.conv2).has_convergence_delta()


# ----------------------------------------------------------------------------- documented differences


@pytest.mark.parametrize("name", [c.name for c in G.DIFFERENT])
def test_where_captum_differs_xattr_gives_the_module_numbers(name):
    """torch.tanh: Captum applies the chain rule to relevance (multiplies it by tanh'); a plain
    ``+``: Captum copies the relevance to both terms. xattr gives the numbers Captum gives for the
    same model written with nn.Tanh, or with the addition in a module holding the epsilon rule."""
    case = CASES[name]
    out = G.run(case, X, MODELS)
    same = E.EXPECTED[G.SAME_AS[name]]
    _check(out, case, same)
    captum = torch.tensor(E.DIFFERENT[name]["attr"], dtype=torch.float64)
    assert (out[0] - captum).abs().max() > 0.05 * captum.abs().max()


def test_residual_plus_conserves_where_captum_does_not():
    """The residual model is bias-free and ReLU: xattr conserves relevance (delta ~ 0); Captum's
    copies through ``+`` do not."""
    _, delta = G.run(CASES["diff_res_plus"], X, MODELS)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-8, rtol=0)
    out = MODELS["res"](G.INPUTS["x"])[:, 1].detach()
    assert (torch.tensor(E.DIFFERENT["diff_res_plus"]["delta"], dtype=out.dtype).abs() > 0.1 * out.abs()).any()


class _Gated(nn.Module):
    """``h * tanh(g(h))``: a product of two activations between bias-free linear layers."""

    def __init__(self):
        super().__init__()
        self.l1, self.g, self.l2 = nn.Linear(4, 6, bias=False), nn.Linear(6, 6, bias=False), nn.Linear(6, 1, bias=False)
        self.t = nn.Tanh()

    def forward(self, x):
        h = self.l1(x)
        return self.l2(h * self.t(self.g(h)))


def test_product_of_activations_conserves_where_captum_does_not():
    """docs/migration_rules.md, Products of two activations: xattr's FixedGate holds relevance to
    f(x) (a bias-free model, epsilon 1e-9); Captum's chain rule through the product does not
    (its sum of relevance was 0.043 where f(x) = -0.050 on this model)."""
    torch.manual_seed(0)
    model = _Gated().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    f = model(x)[:, 0].detach()
    relevance, delta = X.LRP(model).attribute(x, target=0, return_convergence_delta=True)
    torch.testing.assert_close(relevance.sum(1), f, atol=1e-8, rtol=0)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-8, rtol=0)
    captum_attr = pytest.importorskip("captum.attr")
    theirs = captum_attr.LRP(model).attribute(x, target=0)
    assert ((theirs.sum(1) - f).abs() > 0.5 * f.abs()).any()


def test_reused_layer_works_where_captum_refuses():
    """Captum raises for a layer called twice; xattr propagates through both calls and, the model
    being bias-free ReLU, conserves relevance. The result is a reference written out by hand."""
    assert "used more than once" in E.ERRORS["reused_linear"][1]
    model, x = MODELS["reused"], G.INPUTS["x"]
    attr, delta = X.LRP(model).attribute(x, target=0, return_convergence_delta=True)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-8, rtol=0)
    w, v = model.lin.weight.detach(), model.out.weight.detach()[0]
    for b in range(x.shape[0]):  # LRP-0 by hand: z1 = W x, a1 = relu(z1), z2 = W a1, a2 = relu(z2), y = v . a2
        z1 = w @ x[b]
        a1 = z1.clamp(min=0)
        z2 = w @ a1
        a2 = z2.clamp(min=0)
        r2 = v * a2  # relevance of a2 (= of z2)
        r1 = (w * a1[None, :] / z2[:, None] * r2[:, None]).sum(0)  # of a1 (= of z1)
        r0 = (w * x[b][None, :] / z1[:, None] * r1[:, None]).sum(0)
        torch.testing.assert_close(attr[b], r0)


def test_functional_relu_and_reused_relu_match_captum():
    """Captum handles these two (relevance is zero where ReLU is off); xattr agrees exactly —
    checked in test_same_numbers_as_captum["lrp_frelu_reused_relu"]; here: it also conserves up
    to the biases, which an all-zero-bias copy shows."""
    model = G.FunctionalAndReused().double().eval()
    model.load_state_dict(MODELS["frelu"].state_dict())
    with torch.no_grad():
        for m in (model.l1, model.l2, model.l3, model.l4):
            m.bias.zero_()
    _, delta = X.LRP(model).attribute(G.INPUTS["x"], target=2, return_convergence_delta=True)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-8, rtol=0)


def test_modules_captum_rejects_get_xattr_defaults():
    """Captum needs a rule for every leaf module (nn.Flatten, nn.Softplus, nn.Conv1d raise there);
    xattr uses its defaults: flatten carries relevance, activations pass it, conv1d is epsilon."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(12, 2)).double().eval()
    x = torch.randn(2, 2, 6, dtype=torch.float64)
    got = X.LRP(model).attribute(x, target=1)
    torch.testing.assert_close(got, xattr.lrp(xattr.target(model, 1))(x))


def test_reused_module_in_layer_lrp_needs_call_index():
    model = MODELS["frelu"]
    with pytest.raises(RuntimeError, match="call_index"):
        X.LayerLRP(model, model.relu).attribute(G.INPUTS["x"], target=0)
    r = X.LayerLRP(model, model.relu, call_index=1).attribute(G.INPUTS["x"], target=0)
    want = xattr.layer_lrp(xattr.at_layer(xattr.target(model, 0), model.relu, call_index=1))(G.INPUTS["x"])
    torch.testing.assert_close(r, want)


def test_a_list_of_layers_is_one_pass():
    """LayerLRP and LayerGradientXActivation on a list of layers run the model once, as for one
    layer (they ran one pass per layer: 8x Captum's time on 16 layers), with each layer's numbers
    and delta those of its own split."""
    from xattr.compat.captum import LayerGradientXActivation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    layers = [model[0], model[2], model[4]]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        for make in (lambda l: X.LayerLRP(model, l), lambda l: LayerGradientXActivation(model, l)):
            calls.clear()
            make(model[0]).attribute(x, target=1)
            one = len(calls)
            calls.clear()
            got = make(layers).attribute(x, target=1)
            assert len(calls) == one and isinstance(got, list) and len(got) == 3
    finally:
        handle.remove()
    rel, deltas = X.LayerLRP(model, layers).attribute(x, target=1, return_convergence_delta=True)
    for r, d, layer in zip(rel, deltas, layers):
        r1, d1 = X.LayerLRP(model, layer).attribute(x, target=1, return_convergence_delta=True)
        torch.testing.assert_close(r, r1)
        torch.testing.assert_close(d, d1)


def test_verbose_lists_the_layers_captum_lists():
    """verbose=True prints one line per leaf module whose rule applies, defaults included, and
    none for ReLU, Dropout or Tanh (rules Captum ignores there), as Captum does; Captum's
    tutorial sets rules on those too."""
    import contextlib
    import copy
    import io

    captum = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x = torch.randn(2, 4)

    def printed(cls):
        m = copy.deepcopy(net)
        m[1].rule, m[2].rule, m[3].rule = GammaRule(), EpsilonRule(epsilon=0), EpsilonRule(epsilon=0)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cls(m).attribute(x, target=0, verbose=True)
        return [line.split(" on layer ", 1)[1] for line in out.getvalue().splitlines()]

    ours = printed(X.LRP)
    assert ours == printed(captum.LRP)
    assert ours == [repr(net[0]), repr(net[3]), repr(net[5])]
