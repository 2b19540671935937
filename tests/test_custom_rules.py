"""User-written rules, as docs/rules.md teaches them, against hand-written references.

Each rule below is checked against a plain `torch.autograd.Function` (or a backward written out
by hand) in every way a user calls it: `xattr.grad` eagerly, under `torch.func.vmap`, in chunks,
twice in a row, from threads, on models with in-place ReLUs, reused modules, `F.relu`, views
written in place, nested modules keyed by name, several outputs and dict inputs, in low
precision and inside DeepLift. What mistakes in a rule say, and the uses that went wrong before
their fixes: test_custom_rule_errors.py.
"""

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Rule, pullback
from xattr.testing import assert_trees_close

S = 0.5  # the scale every ReLU rule below applies to the ReLU's gradient


# --------------------------------------------------------------------------- the rules


class KeepsInput(Rule):
    kinds = frozenset({"relu"})
    keep_inputs = True

    def backward(self, op, saved, grad):
        return (S * grad * (saved.inputs[0] > 0).to(grad.dtype),)


class KeepsOutput(Rule):
    kinds = frozenset({"relu"})
    keep_output = True

    def backward(self, op, saved, grad):
        return (S * grad * (saved.output > 0).to(grad.dtype),)


class WithExtras(Rule):
    kinds = frozenset({"relu"})

    def forward(self, op, x):
        return op.fn(x), (S * (x > 0).to(x.dtype),)

    def backward(self, op, saved, grad):
        return (grad * saved.extras[0],)


class AsHook(Rule):
    kinds = frozenset({"relu"})
    keep_output = True

    def input_grad(self, op, grad):
        return grad.mul_(S)

    def backward(self, op, saved, grad):
        return (S * grad * (saved.output > 0).to(grad.dtype),)


class ByPullback(Rule):
    kinds = frozenset({"relu"})
    keep_inputs = True

    def backward(self, op, saved, grad):
        _, vjp = pullback(op.fn, *saved.inputs)
        return tuple(S * g for g in vjp(grad))


RELU_RULES = [KeepsInput, KeepsOutput, WithExtras, AsHook, ByPullback]


class RefRelu(torch.autograd.Function):
    """The reference: a ReLU whose backward is S times its gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return S * g * (x > 0).to(g.dtype)


def ref_relu(t):
    return RefRelu.apply(t)


def ref_relu_(t):  # an in-place ReLU, as the reference writes it
    return t.copy_(RefRelu.apply(t.clone()))


# --------------------------------------------------------------------------- the models


class Net(nn.Module):
    """Reused ReLU module, F.relu, an in-place ReLU on a view, a nested module; ``act``/``act_``
    are the out-of-place and in-place ReLU (``None``: the model's own)."""

    def __init__(self, act=None, act_=None):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.block = nn.Sequential(nn.Linear(8, 6), nn.ReLU(inplace=True))
        self.relu = nn.ReLU()
        self.head = nn.Linear(6, 3)
        self.act, self.act_ = act, act_

    def forward(self, x):
        relu = self.act or self.relu
        h = relu(self.l1(x))
        h = self.l3(relu(self.l2(h)))  # the ReLU module, reused
        (self.act_ or torch.Tensor.relu_)(h[:, 2:5])  # in place on a view
        h = F.relu(h) if self.act is None else self.act(h)
        if self.act_ is not None:
            return self.head(self.act_(self.block[0](h)))
        return self.head(self.block(h))


def models(dtype=torch.float64):
    torch.manual_seed(0)
    model = Net().to(dtype).eval()
    ref = Net(ref_relu, ref_relu_).to(dtype).eval()
    ref.load_state_dict(model.state_dict())
    return model, ref


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def vmapped(f):
    return lambda x: torch.func.vmap(lambda r: xattr.grad(f)(r[None])[0])(x)


def threaded(f):
    def run(x):
        out = [None] * 4

        def work(i):
            out[i] = xattr.grad(f)(x)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for o in out[1:]:
            assert torch.equal(o, out[0])
        return out[0]

    return run


def twice(f):
    def run(x):
        xattr.grad(f)(x)
        return xattr.grad(f)(x)

    return run


CALLS = {
    "eager": lambda f: xattr.grad(f),
    "vmap": vmapped,
    "chunks": lambda f: xattr.saliency(f, abs=False, chunk_size=2),
    "twice": twice,
    "threads": threaded,
}


@pytest.mark.parametrize("rule", RELU_RULES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("key", ["relu_fn", "module_type", "root_name", "instance"])
@pytest.mark.parametrize("call", list(CALLS))
def test_relu_rules_equal_a_hand_written_function(rule, key, call):
    model, ref = models()
    mapping = {"relu_fn": {F.relu: rule()}, "module_type": {Net: rule()}, "root_name": {"": rule()},
               "instance": {model: rule()}}[key]
    got = CALLS[call](xattr.target(xattr.rules(model, mapping), 1))(X)
    assert_trees_close(got, xattr.grad(xattr.target(ref, 1))(X), what=f"{rule.__name__} keyed by {key}, {call}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rule", RELU_RULES, ids=lambda r: r.__name__)
def test_relu_rules_in_low_precision_equal_the_reference_in_that_precision(rule, dtype):
    model, ref = models(dtype)
    x = X.to(dtype)
    f = xattr.target(xattr.rules(model, {F.relu: rule()}), 1)
    expected = xattr.grad(xattr.target(ref, 1))(x)
    for got in (xattr.grad(f)(x), vmapped(f)(x)):
        assert got.dtype == dtype
        assert_trees_close(got.double(), expected.double(), atol=1e-2, rtol=1e-2, what=str(dtype))


def test_rules_keyed_by_nested_names_apply_inside_those_modules_only():
    model, _ = models()
    ref = copy.deepcopy(model)
    ref.block[1] = nn.Identity()
    ref.block.append(type("R", (nn.Module,), {"forward": lambda self, t: ref_relu_(t)})())
    got = xattr.grad(xattr.target(xattr.rules(model, {"block.1": AsHook()}), 1))(X)
    assert_trees_close(got, xattr.grad(xattr.target(ref, 1))(X), what="block.1 only")
    got = xattr.grad(xattr.target(xattr.rules(model, {"block": KeepsInput()}), 1))(X)  # the ops inside block
    assert_trees_close(got, xattr.grad(xattr.target(ref, 1))(X), what="block")


def test_a_rule_on_several_outputs_and_dict_inputs():
    class TwoHeads(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.a, self.b, self.h1, self.h2 = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 3), nn.Linear(6, 2)
            self.act = act

        def forward(self, d):
            h = self.act(self.a(d["x"])) + self.act(self.b(d["y"]))
            return self.h1(h), self.h2(self.act(h))

    torch.manual_seed(0)
    model = TwoHeads(F.relu).double().eval()
    ref = TwoHeads(ref_relu).double().eval()
    ref.load_state_dict(model.state_dict())
    d = {"x": X, "y": X[:, :3] * 2}
    pick = lambda out: out[0][:, 1] + 2 * out[1][:, 0]  # noqa: E731
    f = xattr.target(xattr.rules(model, {F.relu: WithExtras()}), pick)
    expected = xattr.grad(xattr.target(ref, pick))(d)
    assert_trees_close(xattr.grad(f)(d), expected, what="dict input, two heads")
    got = torch.func.vmap(lambda r: xattr.grad(f)({k: v[None] for k, v in r.items()}))(d)
    assert_trees_close({k: v[:, 0] for k, v in got.items()}, expected, what="under vmap")


# --------------------------------------------------------------------------- layer rules


class MyEpsilon(Rule):
    """LRP-epsilon in gradient form, through `pullback`: g_x = op^T(g * z / (z + eps sign z))."""

    kinds = frozenset({"linear", "conv"})
    keep_inputs = True

    def __init__(self, eps):
        self.eps = eps

    def forward(self, op, *tensors):
        z = op.fn(*tensors)
        return z, (z.abs() / (z.abs() + self.eps),)

    def backward(self, op, saved, grad):
        _, vjp = pullback(op.fn, *saved.inputs)
        return (vjp(grad * saved.extras[0])[0],) + (None,) * (len(saved.inputs) - 1)


class RefEpsilon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer, eps):
        ctx.save_for_backward(x)
        ctx.layer, ctx.eps = layer, eps
        return layer(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            z = ctx.layer(x)
            (gx,) = torch.autograd.grad(z, x, g * (z.abs() / (z.abs() + ctx.eps)).detach())
        return gx, None, None


class Epsiloned(nn.Module):
    def __init__(self, layer, eps):
        super().__init__()
        self.layer, self.eps = layer, eps

    def forward(self, x):
        return RefEpsilon.apply(x, self.layer, self.eps)


def cnn():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 5)).double().eval()


@pytest.mark.parametrize("keys", ["kinds", "types", "names", "instances", "mixed"])
def test_an_lrp_epsilon_written_by_hand_equals_the_reference_and_the_shipped_rule(keys):
    model = cnn()
    eps = {0: 0.1, 2: 0.2, 5: 0.01}
    ref = nn.Sequential(*[Epsiloned(m, eps[i]) if i in eps else m for i, m in enumerate(model)])
    mapping = {
        "kinds": {torch.conv2d: MyEpsilon(0.1), F.linear: MyEpsilon(0.01), "2": MyEpsilon(0.2)},
        "types": {nn.Conv2d: MyEpsilon(0.1), nn.Linear: MyEpsilon(0.01), "2": MyEpsilon(0.2)},
        "names": {str(i): MyEpsilon(e) for i, e in eps.items()},
        "instances": {model[i]: MyEpsilon(e) for i, e in eps.items()},
        "mixed": {F.relu: xattr.rule.Pass(), model[0]: MyEpsilon(0.1), "2": MyEpsilon(0.2), F.linear: MyEpsilon(0.01)},
    }[keys]
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = xattr.grad(xattr.target(ref, 2))(x)
    f = xattr.target(xattr.rules(model, mapping), 2)
    for how, call in (("eager", xattr.grad), ("vmap", vmapped), ("chunks", CALLS["chunks"])):
        assert_trees_close(call(f)(x), expected, what=f"{keys}, {how}")
    shipped = {k: xattr.rule.Epsilon(v.eps) if isinstance(v, MyEpsilon) else v for k, v in mapping.items()}
    assert_trees_close(xattr.lrp(xattr.target(model, 2), composite={**xattr.rule.lrp_rules(), **mapping})(x),
                       xattr.lrp(xattr.target(model, 2), composite={**xattr.rule.lrp_rules(), **shipped})(x), what="in lrp")


def test_a_rule_whose_accepts_decides_per_op():
    class WideOnly(AsHook):
        def accepts(self, op):
            return op.kind == "relu" and op.tensors[0].shape[-1] == 8

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    ref = lambda t: model[4](model[3](model[2](ref_relu(model[0](t)))))  # noqa: E731
    expected = xattr.grad(xattr.target(ref, 1))(X)
    for key in (F.relu, nn.ReLU, "1", model):
        f = xattr.target(xattr.rules(model, {key: WideOnly()}), 1)
        assert_trees_close(xattr.grad(f)(X), expected, what=f"{key!r} eager")
        assert_trees_close(vmapped(f)(X), expected, what=f"{key!r} vmap")


# --------------------------------------------------------------------------- inside DeepLift


@pytest.mark.parametrize("rule", RELU_RULES, ids=lambda r: r.__name__)
def test_a_user_rule_inside_deep_lift_shares_the_reference_row_or_not_with_equal_numbers(rule):
    model, _ = models()
    shared = type("Shared", (rule,), {"shares_reference": True})
    b = torch.full((1, 4), 0.3, dtype=torch.float64)
    paired = xattr.deep_lift(xattr.target(model, 1), baselines=b, mapping={F.relu: rule()}, return_delta=True)(X)
    one_row = xattr.deep_lift(xattr.target(model, 1), baselines=b, mapping={F.relu: shared()}, return_delta=True)(X)
    assert_trees_close(one_row, paired, what="shared reference row vs 2B rows")
    assert_trees_close(vmapped_deep_lift(model, b, shared())(X), one_row[0], what="under vmap")


def vmapped_deep_lift(model, b, rule):
    f = xattr.deep_lift(xattr.target(model, 1), baselines=b, mapping={F.relu: rule})
    return lambda x: torch.func.vmap(lambda r: f(r[None])[0])(x)


# --------------------------------------------------------------------------- documented behaviour


def test_where_input_grad_and_backward_disagree_the_call_decides_which_runs():
    # docs/rules.md: nothing checks that they agree; eagerly input_grad runs, under vmap backward
    class Disagree(AsHook):
        def input_grad(self, op, grad):
            return grad.mul_(2.0)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    f = xattr.target(xattr.rules(model, {F.relu: Disagree()}), 1)
    plain = xattr.grad(xattr.target(model, 1))(X)
    assert_trees_close(xattr.grad(f)(X), 2.0 * plain, what="eager: input_grad")
    assert_trees_close(vmapped(f)(X), S * plain, what="vmap: backward")


def test_keys_that_match_no_op_do_nothing():
    # docs/rules.md: a composite may name what a model lacks; such keys leave the plain gradient
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    plain = xattr.grad(xattr.target(model, 1))(X)
    for mapping in ({nn.Conv2d: MyEpsilon(0.1)}, {"0": KeepsInput()}, {F.max_pool2d: xattr.rule.Rescale()}):
        assert_trees_close(xattr.grad(xattr.target(xattr.rules(model, mapping), 1))(X), plain, what=repr(mapping))
