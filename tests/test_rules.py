"""The `rules` transform: which ops a rule reaches, how rules are chosen, and what is left behind.

Forward values never change; a rule reaches every spelling of its op (modules, functionals, in
place, reused modules, plain functions); keys by op, module type, instance and name resolve with
the documented precedence; bad mappings fail with clear errors; a user rule of a few lines works;
nothing is left on the model (also when the forward raises); and ruled functions compose with
torch.func (vmap, grad, jacrev) and with each other (nested rules).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Deconv, Guided, Rescale, Rule, Saved
from xattr.testing import assert_trees_close, check_batch_invariance
from xattr.testing.strategies import random_tensor

from registry import changed_state, state_snapshot


# --------------------------------------------------------------------------- rules used as probes


class Scale(Rule):
    """The ReLU's ordinary derivative times c, logging its name whenever it runs (forward)."""

    kinds = frozenset({"relu"})
    keep_inputs = True

    def __init__(self, c: float = 1.0, name: str = "", log: list | None = None):
        self.c, self.name, self.log = c, name, log

    def forward(self, op, x):
        if self.log is not None:
            self.log.append(self.name)
        return op.fn(x), ()

    def backward(self, op, saved: Saved, grad):
        (x,) = saved.inputs
        return (self.c * grad * (x > 0).to(grad.dtype),)


class ScaleLinear(Rule):
    """A linear layer's input gradient times c (no weight gradients): a rule for a 3-tensor op."""

    kinds = frozenset({"linear"})
    keep_inputs = True

    def __init__(self, c: float):
        self.c = c

    def backward(self, op, saved: Saved, grad):
        x, w, b = saved.inputs
        return (self.c * grad @ w, None, None)


# --------------------------------------------------------------------------- models


class Spellings(nn.Module):
    """Nine ReLU spellings in a chain of linear layers; the ReLU module is reused at the end."""

    def __init__(self, d: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lins = nn.ModuleList(nn.Linear(d, d) for _ in range(10))
        with torch.no_grad():
            for lin in self.lins:  # near-orthogonal, positive-leaning: activations stay alive
                lin.weight.copy_(torch.eye(d) + 0.3 * torch.randn(d, d, generator=g))
                lin.bias.copy_(0.5 + 0.1 * torch.randn(d, generator=g))
        self.act = nn.ReLU()
        self.act_inplace = nn.ReLU(inplace=True)
        self.head = nn.Linear(d, 3)
        self.double()

    def forward(self, x):
        L = self.lins
        h = self.act(L[0](x))  # nn.ReLU
        h = self.act_inplace(L[1](h))  # nn.ReLU(inplace=True)
        h = F.relu(L[2](h))  # F.relu
        h = F.relu(L[3](h), inplace=True)  # F.relu(inplace=True)
        h = torch.relu(L[4](h))  # torch.relu
        h = L[5](h).relu()  # Tensor.relu
        h = torch.relu_(L[6](h))  # torch.relu_
        h = L[7](h).relu_()  # Tensor.relu_
        h = F.relu_(L[8](h))  # F.relu_
        h = self.act(L[9](h))  # the first nn.ReLU again
        return self.head(h)


N_SPELLINGS = 10  # ReLU calls per forward of Spellings


def small_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def input_grad(f, x: torch.Tensor, k: int = 0) -> torch.Tensor:
    """d f(x)[:, k].sum() / dx by plain torch.autograd (the rules decide the backward)."""
    x = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x)[:, k].sum(), x)
    return g


def guided_by_hand(weights: list, x: torch.Tensor, k: int) -> torch.Tensor:
    """Guided backprop of a bias-free ReLU MLP x -> W1 -> relu -> ... -> Wn, written out."""
    pre, h = [], x
    for w in weights[:-1]:
        pre.append(h @ w.T)
        h = pre[-1].clamp(min=0)
    g = weights[-1][k].expand(x.shape[0], -1)
    for w, z in zip(reversed(weights[:-1]), reversed(pre)):
        g = (g.clamp(min=0) * (z > 0)) @ w
    return g


X = random_tensor((3, 5), seed=1)


# --------------------------------------------------------------------------- forward values


@pytest.mark.parametrize(
    "mapping", [{F.relu: Guided()}, {F.relu: Deconv()}, xattr.rule.deep_lift_rules(), {nn.Linear: ScaleLinear(2.0)}],
    ids=["guided", "deconv", "deep_lift_rules", "module_type"],
)
def test_forward_values_are_unchanged(mapping):
    model = Spellings()
    ruled = xattr.rules(model, mapping)
    for x in (X, X[:2]):  # an odd and an even batch (Rescale pairs the halves of an even one)
        with torch.no_grad():
            expected = model(x)
        assert torch.equal(ruled(x), expected)
        x = x.clone().requires_grad_()
        assert torch.equal(ruled(x), expected)
        assert torch.equal(ruled(x.detach()), expected)


def test_forward_values_are_unchanged_on_a_cnn_with_every_intercepted_kind():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ELU(), nn.AvgPool2d(2), nn.Flatten(), nn.LayerNorm(4),
        nn.Linear(4, 6), nn.LeakyReLU(0.2), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 6), nn.Tanh(),
        nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6), nn.SiLU(), nn.Softmax(dim=1),
    ).double().eval()  # fmt: skip
    x = random_tensor((4, 2, 4, 4), seed=2)
    with torch.no_grad():
        expected = model(x)
    for mapping in ({F.relu: Guided()}, xattr.rule.deep_lift_rules()):
        assert torch.equal(xattr.rules(model, mapping)(x), expected)


# --------------------------------------------------------------------------- which calls a rule reaches


def test_a_relu_rule_reaches_every_spelling_and_every_reuse():
    model = Spellings()
    log = []
    ruled = xattr.rules(model, {F.relu: Scale(2.0, "relu", log)})
    g = input_grad(ruled, X)
    assert log == ["relu"] * N_SPELLINGS
    # the ReLU derivative masks the same units; each of the 10 ReLUs doubles the gradient
    assert_trees_close(g, 2.0**N_SPELLINGS * input_grad(model, X), what="10 doubled ReLUs")
    assert g.abs().sum() > 0


@pytest.mark.parametrize(
    "key", [F.relu, torch.relu, torch.Tensor.relu_, F.relu_, torch.relu_], ids=["F.relu", "torch.relu", "Tensor.relu_", "F.relu_", "torch.relu_"]
)
def test_any_relu_function_keys_the_relu_kind(key):
    log = []
    xattr.rules(Spellings(), {key: Scale(1.0, "relu", log)})(X)
    assert log == ["relu"] * N_SPELLINGS


def test_a_reused_module_gets_its_rule_at_every_call():
    model = Spellings()
    log = []
    xattr.rules(model, {model.act: Scale(1.0, "instance", log)})(X)
    assert log == ["instance", "instance"]  # first and last ReLU; other spellings are not that module
    log.clear()
    xattr.rules(model, {nn.ReLU: Scale(1.0, "type", log)})(X)
    assert log == ["type"] * 3  # act twice, act_inplace once


def test_guided_rule_on_a_reused_module_equals_distinct_modules_and_the_hand_formula():
    torch.manual_seed(0)
    ws = [torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)]
    relu = nn.ReLU()
    lins = [nn.Linear(w.shape[1], w.shape[0], bias=False).double() for w in ws]
    with torch.no_grad():
        for lin, w in zip(lins, ws):
            lin.weight.copy_(w)
    reused = nn.Sequential(lins[0], relu, lins[1], relu, lins[2])
    distinct = nn.Sequential(lins[0], nn.ReLU(), lins[1], nn.ReLU(), lins[2])
    x = random_tensor((4, 4), seed=3)
    expected = guided_by_hand(ws, x, 1)
    for model in (reused, distinct):
        for key in (F.relu, nn.ReLU):
            got = input_grad(xattr.rules(model, {key: Guided()}), x, 1)
            assert_trees_close(got, expected, what=f"guided, key {key}")
    assert not torch.allclose(expected, input_grad(reused, x, 1)), "guided must differ from the gradient here"


def test_rules_apply_to_a_plain_function_without_modules():
    torch.manual_seed(0)
    ws = [torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)]

    def f(x):  # no nn.Module anywhere: torch ops on tensors
        h = torch.relu(x @ ws[0].T)
        h = F.relu(h @ ws[1].T)
        return h @ ws[2].T

    ruled = xattr.rules(f, {F.relu: Guided()})
    assert torch.equal(ruled(X), f(X))
    assert_trees_close(input_grad(ruled, X, 2), guided_by_hand(ws, X, 2), what="guided on a plain function")
    via_method = xattr.guided_backprop(xattr.target(f, 2))(X)
    assert_trees_close(via_method, guided_by_hand(ws, X, 2), what="xattr.guided_backprop on a plain function")


def test_in_place_calls_modify_their_input_and_follow_the_rule_on_views_too():
    torch.manual_seed(0)
    ws = [torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)]
    seen = {}

    def f(x):  # in-place ReLUs: on a whole tensor, and on a view (then all of it again, out of place)
        h = x @ ws[0].T
        ret = torch.relu_(h)
        seen["same object"], seen["h after"] = ret is h, h.detach().clone()
        h = h @ ws[1].T
        h[:, :2].relu_()
        seen["no negatives"] = bool((h[:, :2] >= 0).all())
        return F.relu(h) @ ws[2].T  # relu twice on the view's columns: the same function, the same guided gradient

    for rule, name in ((Guided(), "guided"), (Deconv(), "deconv"), (Scale(2.0, "s", []), "a rule with its own forward")):
        ruled = xattr.rules(f, {F.relu: rule})
        assert torch.equal(ruled(X), f(X))
        assert seen["same object"] and seen["no negatives"], name
        assert torch.equal(seen["h after"], (X @ ws[0].T).clamp(min=0)), name
    assert_trees_close(input_grad(xattr.rules(f, {F.relu: Guided()}), X, 2), guided_by_hand(ws, X, 2), what="guided, in place on views")


# --------------------------------------------------------------------------- keys and precedence


class Outer(nn.Module):
    """F.relu called directly in Outer.forward, and inside a child nn.ReLU (twice) and a Sequential."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Linear(5, 5), nn.ReLU())
        self.double()

    def forward(self, x):
        h = F.relu(self.lin(x))  # in Outer only
        h = self.act(h)  # in Outer > ReLU "act"
        h = self.block(h)  # in Outer > Sequential "block" > ReLU "block.1"
        return self.act(h)  # "act" again


def resolved(model, keys: dict, x=X) -> list:
    """The name of the rule that ran at each ReLU call, for rules {key: name}."""
    log = []
    xattr.rules(model, {key: Scale(1.0, name, log) for key, name in keys.items()})(x)
    return log


def test_keys_by_op_type_instance_and_name():
    m = Outer()
    assert resolved(m, {F.relu: "kind"}) == ["kind"] * 4
    assert resolved(m, {nn.ReLU: "type"}) == ["type"] * 3
    assert resolved(m, {m.act: "inst"}) == ["inst", "inst"]
    assert resolved(m, {m.block[1]: "inst"}) == ["inst"]
    assert resolved(m, {"block.1": "name"}) == ["name"]
    assert resolved(m, {"act": "name"}) == ["name", "name"]
    assert resolved(m, {"": "root"}) == ["root"] * 4  # the root's own name is ""
    assert resolved(m, {Outer: "outer"}) == ["outer"] * 4  # every ReLU runs inside Outer
    assert resolved(m, {nn.Sequential: "seq"}) == ["seq"]
    assert resolved(m, {nn.Linear: "linear"}) == []  # no ReLU runs inside a Linear


def test_a_module_type_key_covers_subclasses():
    class MyReLU(nn.ReLU):
        pass

    model = nn.Sequential(nn.Linear(5, 5), MyReLU(), nn.Linear(5, 2)).double()
    assert resolved(model, {nn.ReLU: "base"}) == ["base"]
    assert resolved(model, {nn.ReLU: "base", MyReLU: "sub"}) == ["sub"]  # the nearer class in the MRO wins


def test_precedence_name_then_instance_then_type_then_kind():
    m = Outer()
    everything = {F.relu: "kind", nn.ReLU: "type", m.act: "inst", "act": "name"}
    # calls: F.relu in Outer, "act", "block.1" (an nn.ReLU too), "act"
    assert resolved(m, everything) == ["kind", "name", "type", "name"]
    assert resolved(m, {F.relu: "kind", nn.ReLU: "type", m.act: "inst"}) == ["kind", "inst", "type", "inst"]
    assert resolved(m, {F.relu: "kind", nn.ReLU: "type"}) == ["kind", "type", "type", "type"]
    # mapping order does not matter
    assert resolved(m, dict(reversed(list(everything.items())))) == ["kind", "name", "type", "name"]


def test_precedence_innermost_module_first():
    m = Outer()
    # a rule for the outer module loses to one for the module the op runs in, whatever the key type
    assert resolved(m, {"": "root", nn.ReLU: "relu"}) == ["root", "relu", "relu", "relu"]
    assert resolved(m, {Outer: "outer", "block": "block"}) == ["outer", "outer", "block", "outer"]
    assert resolved(m, {"block": "block", m.block[1]: "inner"}) == ["inner"]
    assert resolved(m, {m.block: "block", nn.ReLU: "relu", F.relu: "kind"}) == ["kind", "relu", "relu", "relu"]


def test_a_rule_that_does_not_accept_the_op_is_skipped():
    m = Outer()
    # ScaleLinear accepts only "linear": at every ReLU the search goes on to the next candidate
    log = []
    ruled = xattr.rules(m, {nn.ReLU: ScaleLinear(5.0), "": Scale(1.0, "root", log), F.relu: Scale(1.0, "kind", log)})
    ruled(X)
    assert log == ["root"] * 4
    log.clear()
    xattr.rules(m, {m.act: ScaleLinear(5.0), F.relu: Scale(1.0, "kind", log)})(X)
    assert log == ["kind"] * 4
    # and the linear rule does reach the linear layers inside the ReLU-free modules it is keyed on
    model = small_mlp()
    g = input_grad(xattr.rules(model, {nn.Linear: ScaleLinear(3.0), nn.ReLU: ScaleLinear(100.0)}), X[:, :4])
    assert_trees_close(g, 27.0 * input_grad(model, X[:, :4]), what="three linear layers scaled by 3")


def test_names_resolve_against_root_given_or_found():
    model = small_mlp()
    x = X[:, :4]
    wrapped = lambda x: model(x)  # noqa: E731  (nothing to find behind a lambda)
    with pytest.raises(ValueError, match="need root"):
        xattr.rules(wrapped, {"1": Guided()})
    log = []
    xattr.rules(wrapped, {"3": Scale(1.0, "three", log)}, root=model)(x)
    assert log == ["three"]
    log.clear()
    xattr.rules(xattr.target(model, 0), {"1": Scale(1.0, "one", log)})(x)  # found behind the target
    assert log == ["one"]


def test_a_shared_module_answers_to_each_of_its_names():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5)
            self.act = nn.ReLU()
            self.alias = self.act  # one module, two names

        def forward(self, x):
            return self.alias(self.lin(x))

    model = Shared().double()
    assert resolved(model, {"act": "act"}) == ["act"]
    assert resolved(model, {"alias": "alias"}) == ["alias"]


# --------------------------------------------------------------------------- errors


def test_bad_mappings_fail_clearly():
    model = small_mlp()
    with pytest.raises(TypeError, match="cannot key on"):
        xattr.rules(model, {torch.add: Guided()})  # a torch function rules does not intercept
    with pytest.raises(TypeError, match="cannot key on"):
        xattr.rules(model, {3: Guided()})
    with pytest.raises(TypeError, match="cannot key on"):
        xattr.rules(model, {int: Guided()})  # a type that is no nn.Module
    with pytest.raises(TypeError, match="Rule objects.*maps to str"):
        xattr.rules(model, {F.relu: "guided"})
    with pytest.raises(TypeError, match="Rule objects.*maps to type"):
        xattr.rules(model, {F.relu: Guided})  # the class, not an instance
    with pytest.raises(ValueError, match=r"no module named \['9', 'nope'\]"):
        xattr.rules(model, {"nope": Guided(), "9": Guided(), "1": Guided()})
    with pytest.raises(ValueError, match="both stand for every 'relu' op"):
        xattr.rules(model, {F.relu: Guided(), torch.relu_: Deconv()})  # one kind, two rules
    guided = Guided()
    xattr.rules(model, {F.relu: guided, torch.relu_: guided})  # one kind, one rule: fine


def test_a_rule_returning_the_wrong_number_of_gradients_fails_clearly():
    class Wrong(Rule):
        kinds = frozenset({"relu"})

        def backward(self, op, saved, grad):
            return (grad, grad)

    with pytest.raises(RuntimeError, match="returned 2 gradients for 1 tensors"):
        input_grad(xattr.rules(small_mlp(), {F.relu: Wrong()}), X[:, :4])


def test_a_rule_returning_its_output_as_an_extra_fails_clearly():
    class Aliased(Rule):
        kinds = frozenset({"relu"})

        def forward(self, op, x):
            y = op.fn(x)
            return y, (y,)

        def backward(self, op, saved, grad):
            return (grad,)

    with pytest.raises(RuntimeError, match="returned its output among its extras"):
        xattr.rules(small_mlp(), {F.relu: Aliased()})(X[:, :4])


def test_a_rule_without_backward_says_so():
    class NoBackward(Rule):
        kinds = frozenset({"relu"})

    with pytest.raises(NotImplementedError):
        input_grad(xattr.rules(small_mlp(), {F.relu: NoBackward()}), X[:, :4])


def test_ops_no_rule_claims_are_left_alone():
    # nn.Softmax() without dim: deprecated in torch but legal; guided backprop has no softmax rule,
    # so the call must run untouched, not be rejected by the softmax parser
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Softmax()).double()
    x = X[:2, :4]
    with pytest.warns(UserWarning, match="dim"):
        got = xattr.guided_backprop(xattr.target(model, 0))(x)
    assert got.shape == x.shape and torch.isfinite(got).all()
    with pytest.raises(ValueError, match="softmax's dim"):
        xattr.deep_lift(xattr.target(model, 0))(x)  # DeepLift does rewrite softmax and needs the dim


# --------------------------------------------------------------------------- a user rule in a few lines


def test_a_custom_rule_in_a_few_lines():
    class Twice(Rule):  # the whole rule: a ReLU whose gradient is doubled
        kinds = frozenset({"relu"})
        keep_inputs = True

        def backward(self, op, saved, grad):
            return (2 * grad * (saved.inputs[0] > 0),)

    model = small_mlp()
    x = X[:, :4]
    ruled = xattr.rules(model, {F.relu: Twice()})
    assert_trees_close(input_grad(ruled, x), 4 * input_grad(model, x), what="two doubled ReLUs")
    assert_trees_close(xattr.saliency(xattr.target(ruled, 0), abs=False)(x), 4 * input_grad(model, x), what="via saliency")


def test_a_custom_rule_with_forward_extras():
    class Sign(Rule):  # the backward sees a tensor the forward computed, not the input
        kinds = frozenset({"tanh"})

        def forward(self, op, x):
            return op.fn(x), (torch.sign(x),)

        def backward(self, op, saved, grad):
            assert saved.inputs == ()  # keep_inputs is False: nothing else is kept
            return (grad * saved.extras[0],)

    w = random_tensor((3, 5), seed=4)
    f = lambda x: torch.tanh(x @ w.T)  # noqa: E731
    got = input_grad(xattr.rules(f, {torch.tanh: Sign()}), X, 1)
    assert_trees_close(got, torch.sign(X @ w.T)[:, 1:2] * w[1], what="sign rule")


# --------------------------------------------------------------------------- nothing left behind


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_hooks_mode_or_weight_changes_after_a_call(mode):
    model = Outer().train(mode == "train")
    x = X.clone().requires_grad_()
    before = state_snapshot(model, x)
    ruled = xattr.rules(model, {nn.ReLU: Guided(), "block": Deconv(), model.act: Guided(), F.relu: Rescale()})
    ruled(x)
    input_grad(ruled, X)
    xattr.guided_backprop(xattr.target(model, 0))(X)
    xattr.deep_lift(xattr.target(model, 0))(X)
    assert not changed_state(before, state_snapshot(model, x))


def test_nothing_left_behind_when_the_forward_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = small_mlp()

        def forward(self, x):
            h = self.inner(x)
            if h.shape[0] == 3:
                raise RuntimeError("boom")
            return h

    model = Boom()
    x = X[:, :4]
    before = state_snapshot(model, x)
    ruled = xattr.rules(model, {nn.ReLU: Guided(), "inner.1": Deconv(), F.relu: Guided()})
    log = []
    with pytest.raises(RuntimeError, match="boom"):
        ruled(x)
    with pytest.raises(RuntimeError, match="boom"):
        xattr.guided_backprop(xattr.target(model, 0))(x)
    assert not changed_state(before, state_snapshot(model, x))
    # the module stack starts empty again: a rule keyed on a module does not leak to later calls
    ruled = xattr.rules(model, {"inner.1": Scale(1.0, "one", log)})
    with pytest.raises(RuntimeError, match="boom"):
        ruled(x)
    ruled(x[:2])
    assert log == ["one", "one"]


# --------------------------------------------------------------------------- torch.func and nesting


def test_vmap_over_examples_equals_a_loop():
    model = Spellings()  # in-place ReLUs under vmap too
    ruled = xattr.rules(model, {F.relu: Guided()})
    per_example = lambda x: torch.func.grad(lambda x: ruled(x[None])[0, 1])(x)  # noqa: E731
    batched = torch.func.vmap(per_example)(X)
    loop = torch.stack([input_grad(ruled, X[i : i + 1], 1)[0] for i in range(X.shape[0])])
    assert_trees_close(batched, loop, what="vmap(grad) vs loop")
    assert_trees_close(input_grad(ruled, X, 1), loop, what="batched autograd vs loop")
    assert_trees_close(torch.func.vmap(lambda x: ruled(x[None])[0])(X), model(X), what="vmapped forward")
    assert not torch.allclose(loop, input_grad(model, X, 1)), "the rule must change the gradient"


def test_jacrev_and_grad_follow_the_rules():
    model = small_mlp()
    x = X[:, :4]
    ruled = xattr.rules(model, {nn.ReLU: Guided()})
    jac = torch.func.vmap(torch.func.jacrev(lambda x: ruled(x[None])[0]))(x)  # (B, 3, 4)
    for k in range(3):
        expected = xattr.guided_backprop(xattr.target(model, k))(x)
        assert_trees_close(jac[:, k], expected, what=f"jacrev row {k}")
        assert_trees_close(torch.func.grad(lambda x: ruled(x)[:, k].sum())(x), expected, what=f"grad {k}")


def test_guided_backprop_under_vmap_and_grad_of_an_attribution():
    """vmap of a rule-based attribution is the batch; differentiating one follows the true
    derivative of the guided map (NOTE: [Derivatives of rule-based attributions]), not the rules."""
    model = small_mlp()
    x = X[:, :4]
    gb = xattr.guided_backprop(xattr.target(model, 2))
    assert_trees_close(torch.func.vmap(lambda x: gb(x[None])[0])(x), gb(x), what="vmap(guided_backprop)")
    w = random_tensor((3, 4), seed=5)
    f = lambda x: torch.relu(torch.tanh(x @ w.T))  # noqa: E731  (tanh > 0 where the ReLU passes)
    gbt = xattr.guided_backprop(xattr.target(f, 0))
    hand = lambda x: (1 - torch.tanh(x @ w[0]) ** 2).unsqueeze(-1) * (x @ w[0] > 0).unsqueeze(-1) * w[0]  # noqa: E731
    assert_trees_close(gbt(x), hand(x), what="guided through tanh")
    assert_trees_close(torch.func.jacrev(lambda x: gbt(x).sum())(x), torch.func.jacrev(lambda x: hand(x).sum())(x),
                       what="derivative of guided backprop through tanh")


def test_nested_rules_inner_first_then_outer():
    model = small_mlp()
    x = X[:, :4]
    log = []
    inner = xattr.rules(model, {F.relu: Scale(1.0, "inner", log)})
    outer = xattr.rules(inner, {F.relu: Scale(1.0, "outer", log), F.linear: ScaleLinear(3.0)})
    assert torch.equal(outer(x), model(x))
    assert log == ["inner", "inner"]  # the inner rule claims the ReLUs; the outer sees the rest
    assert_trees_close(input_grad(outer, x), 27.0 * input_grad(model, x), what="outer linear rule through inner")
    log.clear()
    swapped = xattr.rules(xattr.rules(model, {F.linear: ScaleLinear(3.0)}), {F.relu: Scale(2.0, "outer", log)})
    assert_trees_close(input_grad(swapped, x), 27.0 * 4.0 * input_grad(model, x), what="both nested rules")
    assert log == ["outer", "outer"]


def test_a_mapping_given_to_deep_lift_overrides_its_defaults():
    # a mapping given to deep_lift replaces the default for its key: Guided at the ReLUs, with the
    # zero baseline on a ReLU MLP, no longer sums to f(x) - f(0)
    model = small_mlp()
    x = X[:, :4]
    f = xattr.target(model, 0)
    plain = xattr.deep_lift(f, multiply_by_inputs=False)(x)
    guided = xattr.deep_lift(f, multiply_by_inputs=False, mapping={F.relu: Guided()})(x)
    assert_trees_close(guided, xattr.guided_backprop(f)(x), what="deep_lift with Guided at ReLU = guided backprop")
    assert not torch.allclose(plain, guided)



# --------------------------------------------------------------------------- guided backprop and deconvolution


class GuidedCNN(nn.Module):
    """conv -> ReLU (module, in place) -> max-pool -> conv -> F.relu -> flatten -> linear -> relu_ -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc1, self.fc2 = nn.Linear(16, 6), nn.Linear(6, 3)
        self.double().eval()

    def forward(self, x):
        h = F.max_pool2d(self.act(self.conv1(x)), 2)
        h = F.relu(self.conv2(h)).flatten(1)
        return self.fc2(torch.relu_(self.fc1(h)))


def relu_backward_by_hand(model: GuidedCNN, x: torch.Tensor, k: int, relu_backward) -> torch.Tensor:
    """The model's forward, then its backward written out layer by layer without autograd;
    ``relu_backward(g, z)`` is the ReLU's backward at pre-activation z."""
    with torch.no_grad():
        z1 = model.conv1(x)
        a1 = z1.clamp(min=0)
        p1, idx = F.max_pool2d(a1, 2, return_indices=True)
        z2 = model.conv2(p1)
        a2 = z2.clamp(min=0).flatten(1)
        z3 = model.fc1(a2)
        g = model.fc2.weight[k].expand(x.shape[0], -1)  # d out_k / d relu(z3)
        g = relu_backward(g, z3) @ model.fc1.weight  # through fc1
        g = relu_backward(g.reshape(z2.shape), z2)
        g = F.conv_transpose2d(g, model.conv2.weight, padding=1)  # through conv2
        routed = torch.zeros_like(a1).flatten(2)  # the max-pool sends g to each window's argmax
        routed.scatter_add_(2, idx.flatten(2), g.flatten(2))
        g = relu_backward(routed.reshape(a1.shape), z1)
        return F.conv_transpose2d(g, model.conv1.weight, padding=1)  # through conv1


GUIDED = lambda g, z: g.clamp(min=0) * (z > 0)  # noqa: E731
DECONV = lambda g, z: g.clamp(min=0)  # noqa: E731
METHODS = {"guided": (xattr.guided_backprop, GUIDED), "deconv": (xattr.deconvolution, DECONV)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_guided_backprop_and_deconvolution_match_a_backward_by_hand(name):
    method, relu_backward = METHODS[name]
    model = GuidedCNN()
    x = random_tensor((4, 2, 4, 4), seed=6)
    plain = lambda g, z: g * (z > 0)  # noqa: E731
    assert_trees_close(xattr.grad(xattr.target(model, 0))(x), relu_backward_by_hand(model, x, 0, plain), what="the hand backward")
    for k in range(3):
        expected = relu_backward_by_hand(model, x, k, relu_backward)
        got = method(xattr.target(model, k))(x)
        assert_trees_close(got, expected, what=f"{name} target {k}")
        assert not torch.allclose(got, relu_backward_by_hand(model, x, k, plain)), "must differ from the gradient"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_guided_backprop_and_deconvolution_batch_vmap_and_many_outputs(name):
    method = METHODS[name][0]
    model = GuidedCNN()
    x = random_tensor((4, 2, 4, 4), seed=7)
    fn = method(xattr.target(model, 1))
    check_batch_invariance(fn, x)
    assert_trees_close(torch.func.vmap(lambda x: fn(x[None])[0])(x), fn(x), what="vmap over examples vs batch")
    many = method(xattr.target(model, xattr.outputs([2, 0, 1])))(x)
    assert many.shape == (4, 3) + x.shape[1:]
    for j, k in enumerate((2, 0, 1)):
        assert_trees_close(many[:, j], method(xattr.target(model, k))(x), what=f"outputs K axis {j}")
    for cs in (1, 3):
        assert_trees_close(method(xattr.target(model, 1), chunk_size=cs)(x), fn(x), what=f"chunk_size={cs}")


# --------------------------------------------------------------------------- rules as backward hooks


class HalveGradient(Rule):
    """A user's hook rule: half the ReLU's ordinary gradient (and the same as a backward)."""

    kinds = frozenset({"relu"})
    keep_output = True

    def backward(self, op, saved: Saved, grad):
        return (torch.ops.aten.threshold_backward(grad, saved.output, 0).mul_(0.5),)

    def input_grad(self, op, grad):
        return grad.mul_(0.5)


@pytest.mark.parametrize("rule", [Guided(), HalveGradient()], ids=["guided", "user rule"])
def test_hook_rules_equal_their_backward(rule, monkeypatch):
    """Outside transforms an ``input_grad`` rule is a hook on the op's node (NOTE: [Rules as
    backward hooks]); it must give bit for bit what its ``backward`` gives through the
    `autograd.Function` path, and the same under torch.func: with an in-place ReLU, an in-place
    ReLU on a view (the Function path there), a ReLU partly applied to its own output, and a ReLU
    whose output feeds two ops (whose gradients add up before the ReLU's node)."""
    from xattr._src import rules as rules_module

    torch.manual_seed(3)
    ws = [torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)]
    hooked_calls = []
    real = rules_module._hooked
    monkeypatch.setattr(rules_module, "_hooked", lambda *a: (hooked_calls.append(a[1].kind), real(*a))[1])

    def f(x):
        h = torch.relu_(x @ ws[0].T) * 2.0  # in place
        h = h @ ws[1].T - 0.5
        h[:, :3].relu_()  # in place on a view
        h = F.relu(h)  # partly on its own output
        return h @ ws[2].T + h.sum(1, keepdim=True)  # two consumers

    ruled = xattr.rules(f, {F.relu: rule})
    hooked = [input_grad(ruled, X, k) for k in range(3)]
    assert hooked_calls == ["relu"] * 6, hooked_calls  # two hooks per call: not on the view's ReLU
    monkeypatch.setattr(rules_module, "_as_hook", lambda rule, op: False)
    by_function = [input_grad(ruled, X, k) for k in range(3)]
    for k in range(3):
        assert torch.equal(hooked[k], by_function[k]), k
    by_vmap = torch.func.vmap(torch.func.grad(lambda x, k: ruled(x[None])[0, k]), in_dims=(0, None))
    assert_trees_close(torch.stack([by_vmap(X, k) for k in range(3)]), torch.stack(hooked), what="torch.func path")
    assert not torch.equal(hooked[0], input_grad(f, X, 0))  # the rule changed something


class _ModeCalls:
    """Counts calls that ran under the rules' torch function mode (the others were graph walks)."""

    def __init__(self, monkeypatch):
        from xattr._src import rules as rules_module

        self.calls = 0
        real = rules_module._RulesMode.tracking

        def tracking(mode):
            self.calls += 1
            return real(mode)

        monkeypatch.setattr(rules_module._RulesMode, "tracking", tracking)


def _by_mode(ruled):
    """The same ruled function with the graph walk turned off (NOTE: [Rules as graph hooks])."""
    import copy

    from xattr._src.rules import Ruled

    table = copy.copy(ruled.table)
    table.by_node = {}
    return Ruled(ruled.model, table, ruled.mapping)


@pytest.mark.parametrize("rule", [Guided(), HalveGradient()], ids=["guided", "user rule"])
def test_hook_rules_on_the_graph_equal_the_mode_without_running_it(rule, monkeypatch):
    """NOTE: [Rules as graph hooks]: a kind-keyed hook rule is put on the autograd graph after a
    plain call, with no torch function mode, for every ReLU spelling, reuse and a tuple output;
    bit for bit what the mode gives."""
    torch.manual_seed(5)
    w = [torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)]
    relu = nn.ReLU()

    def f(x):
        h = relu(x @ w[0].T)
        h = torch.relu_(h @ w[1].T - 0.3)  # in place, not on a view
        h = relu(F.relu(h) - 0.1)  # reused module and the functional
        return h @ w[2].T, h.sum(1)

    counted = _ModeCalls(monkeypatch)
    ruled = xattr.rules(f, {F.relu: rule})
    graph = [input_grad(lambda x: ruled(x)[0], X, k) for k in range(3)]
    x = X.detach().clone().requires_grad_()
    graph_second = torch.autograd.grad(ruled(x)[1].sum(), x)[0]
    assert counted.calls == 0
    forced = _by_mode(ruled)
    for k in range(3):
        assert torch.equal(graph[k], input_grad(lambda x: forced(x)[0], X, k)), k
    assert torch.equal(graph_second, torch.autograd.grad(forced(x)[1].sum(), x)[0])
    assert counted.calls == 4
    assert not torch.equal(graph[0], input_grad(lambda x: f(x)[0], X, 0))  # the rule changed something


def test_an_in_place_op_on_a_view_sends_the_call_to_the_mode(monkeypatch):
    """A CopySlices node may hide a ReLU: the call runs again under the mode, with its gradients."""
    counted = _ModeCalls(monkeypatch)
    torch.manual_seed(6)
    w = torch.randn(4, 5, dtype=torch.float64)

    def f(x):
        h = x @ w.T
        h[:, :2].relu_()
        return -h  # negative gradients at the ReLU: guided backprop stops them

    ruled = xattr.rules(f, {F.relu: Guided()})
    got = input_grad(ruled, X, 1)
    assert counted.calls == 1
    assert torch.equal(got, input_grad(_by_mode(ruled), X, 1))
    assert torch.equal(got, torch.zeros_like(got)) and not torch.equal(got, input_grad(f, X, 1))


def test_a_tensor_with_a_history_keeps_its_own_gradients(monkeypatch):
    """The walk stops at nodes made before the call: a ReLU in an input's history is not ruled
    (as under the mode), so a gradient through it is the ordinary one."""
    counted = _ModeCalls(monkeypatch)
    w = random_tensor((3, 5), seed=7).requires_grad_()
    outside = F.relu(w * 2.0)  # made before the ruled call
    ruled = xattr.rules(lambda z: -3.0 * z.sum(1) + F.relu(z * 0.0 + 1.0).sum(1), {F.relu: Guided()})
    (got,) = torch.autograd.grad(ruled(outside).sum(), w)  # -3 reaches the outside ReLU
    assert counted.calls == 0
    (want,) = torch.autograd.grad(-3.0 * F.relu(w * 2.0).sum(), w)  # its ordinary gradient
    assert torch.equal(got, want) and (want < 0).any()  # guided, the outside ReLU would give 0


def test_relus_fused_in_a_recurrent_call_keep_their_gradient_on_either_path(monkeypatch):
    """nn.RNN(nonlinearity="relu") is one torch call: the mode never sees its ReLUs, but on CPU
    they leave ReLU nodes in the graph. Models holding one take the mode, so guided backprop is
    the same on both paths (and on cuDNN, which leaves no ReLU node): the fused ReLUs keep their
    gradient, the model's own ReLU is guided."""
    counted = _ModeCalls(monkeypatch)
    torch.manual_seed(0)
    rnn, fc = nn.RNN(3, 5, nonlinearity="relu", batch_first=True).double(), nn.Linear(5, 2).double()
    model = nn.ModuleDict({"rnn": rnn, "fc": fc}).eval()

    def f(x):
        return fc(torch.relu(rnn(x)[0][:, -1]))

    f.model = model  # how xattr finds the modules behind a plain function (as xattr.target does)
    x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    ruled = xattr.rules(f, {F.relu: Guided()})
    (got,) = torch.autograd.grad(ruled(x)[:, 1].sum(), x)
    assert counted.calls == 1
    h = rnn(x)[0][:, -1]  # the reference: the RNN's ordinary vector-Jacobian product of the
    (g_h,) = torch.autograd.grad(fc(torch.relu(h))[:, 1].sum(), h, retain_graph=True)  # guided
    (want,) = torch.autograd.grad(h, x, g_h.clamp_min(0) * (h > 0))  # gradient at the outer ReLU
    assert torch.allclose(got, want) and want.abs().sum() > 0
    hooked = xattr.rules(lambda x: fc(torch.relu(rnn(x)[0][:, -1])), {F.relu: Guided()})  # no modules found
    (walked,) = torch.autograd.grad(hooked(x)[:, 1].sum(), x)
    assert not torch.allclose(walked, want)  # the walk guides the fused ReLUs too: why models take the mode


def test_rules_the_graph_cannot_carry_keep_the_mode(monkeypatch):
    """Deconvolution (a rule of the incoming gradient, not the ReLU's own), DeepLift's rules, module
    keys, and calls under torch.func or without grad run under the mode."""
    counted = _ModeCalls(monkeypatch)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    x = X.detach().clone().requires_grad_()
    for mapping in ({F.relu: Deconv()}, xattr.rule.deep_lift_rules(), {nn.ReLU: Guided()}):
        xattr.rules(model, mapping)(x)
    assert counted.calls == 3
    guided = xattr.rules(model, {F.relu: Guided()})
    with torch.no_grad():
        guided(x)
    torch.func.vmap(lambda r: guided(r[None]))(x)
    assert counted.calls == 5


def _node_names(out: torch.Tensor) -> set:
    names, todo, seen = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_an_in_place_call_under_a_rule_with_its_own_forward_is_written_in_place():
    """DeepLift's Rescale at ``nn.ReLU(inplace=True)``: the result is written into the input inside
    the rule's Function (no copy-back node whose backward adds a zero gradient), and the
    attributions equal those of the same model with out-of-place ReLUs."""
    torch.manual_seed(0)
    in_place = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).double().eval()
    out_of_place = nn.Sequential(in_place[0], nn.ReLU(), in_place[2])
    x, b = random_tensor((3, 4), seed=1), random_tensor((3, 4), seed=2)
    ruled = xattr.rules(in_place, xattr.rule.deep_lift_rules())
    z = torch.cat([x, b]).requires_grad_()
    from xattr._src.deeplift_rules import paired_rows

    with paired_rows(6):
        names = _node_names(ruled(z))
    assert "CopyBackwards" not in names and "_ApplyEagerInPlaceBackward" in names, names
    a = xattr.deep_lift(xattr.target(in_place, 1), baselines=b)(x)
    assert torch.equal(a, xattr.deep_lift(xattr.target(out_of_place, 1), baselines=b)(x))


def test_ruled_outputs_may_be_modified_in_place_under_transforms():
    """Under torch.func a ruled op runs as an autograd.Function, whose vmapped outputs can be
    views that may not be modified in place: the model's in-place op after it (a conv or
    batch-norm, then ReLU(inplace=True)) works, with the eager path's gradients."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(27, 2)).double().eval()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    ruled = xattr.rules(model, {torch.conv2d: xattr.rule.Epsilon(), F.linear: xattr.rule.Epsilon()})
    eager = xattr.grad(xattr.target(ruled, 0))(x)
    by_vmap = torch.func.vmap(torch.func.grad(lambda r: ruled(r[None])[0, 0]))(x)
    assert_trees_close(by_vmap, eager, what="torch.func path")
