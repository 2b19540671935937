"""Ops inside a model's own ``torch.autograd.Function`` (NOTE: [Ops inside a custom
autograd.Function] in rule_limits.py): the Function's backward, not the rules, gives the gradient
there, so rule-based methods must say so with a RuleBypassedWarning, and must not warn where no
rule is bypassed (no ruled op inside, a ``torch.no_grad()`` block, xattr's own Functions)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr

C = 0.7978845608028654  # sqrt(2 / pi)


def tanh_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(C * (x + 0.044715 * x**3)))


def tanh_gelu_grad(x):
    t = torch.tanh(C * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x * x)


class GeluCtx(torch.autograd.Function):
    """Old style (forward with ctx), as BLOOM's GeLUFunction."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return tanh_gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * tanh_gelu_grad(x)


class ReluFunc(torch.autograd.Function):
    """New style (setup_context), usable under torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return F.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class Rounded(torch.autograd.Function):
    """A straight-through estimator: no op inside that any rule claims."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.round(x * 4) / 4

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


class Net(nn.Module):
    def __init__(self, act, twice=False):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.act, self.twice = act, twice

    def forward(self, x):
        h = self.act(self.a(x))
        if self.twice:
            h = self.act(self.b(h))
        return self.c(h)


def _x():
    return torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _bypassed(fn, *args) -> list:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = fn(*args)
    assert out is not None
    return [w for w in seen if issubclass(w.category, xattr.RuleBypassedWarning)]


def test_deep_lift_warns_at_a_gelu_function_and_conserves_without_it():
    x = _x()
    model = Net(GeluCtx.apply).double()
    (warned,) = _bypassed(xattr.deep_lift(xattr.target(model, 0), baselines=0.0, return_delta=True), x)
    assert "GeluCtx" in str(warned.message) and "torch.autograd.Function" in str(warned.message)
    assert "mlp.gelu_impl" in str(warned.message)  # says how to have it ruled
    _, delta = xattr.deep_lift(xattr.target(model, 0), baselines=0.0, return_delta=True)(x)
    assert delta.abs().max() > 1e-4  # the reason for the warning: the sum misses the change

    plain = Net(tanh_gelu).double()  # the same function in plain ops: ruled, exact, no warning
    assert not _bypassed(xattr.deep_lift(xattr.target(plain, 0), baselines=0.0), x)
    _, delta = xattr.deep_lift(xattr.target(plain, 0), baselines=0.0, return_delta=True)(x)
    assert delta.abs().max() < 1e-12


def test_guided_backprop_warns_at_a_relu_function():
    """The graph-hook path (NOTE: [Rules as graph hooks]) never sees the ReLU inside; the
    Function's node sends the call to the mode, which does."""
    x = _x()
    model = Net(ReluFunc.apply).double()
    (warned,) = _bypassed(xattr.guided_backprop(xattr.target(model, 1)), x)
    assert "ReluFunc" in str(warned.message) and "'relu'" in str(warned.message)
    # what it warns about: the ReLU inside is not guided, so the result is the plain gradient
    torch.testing.assert_close(xattr.guided_backprop(xattr.target(model, 1))(x), xattr.saliency(xattr.target(model, 1), abs=False)(x))
    plain = Net(F.relu).double()
    assert not _bypassed(xattr.guided_backprop(xattr.target(plain, 1)), x)


class Counted(Net):
    """Net counting its forward calls."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("act", ["a custom Function", "an in-place ReLU on a view"])
def test_a_graph_that_hid_ops_sends_later_calls_to_the_mode_at_once(act):
    """NOTE: [Rules as graph hooks]: the first call walks the graph, finds a node that may hide
    a ReLU and runs again under the mode (two forwards); later calls of the same function go to
    the mode at once (one forward each), with the same numbers and the same warning."""
    def relu_on_a_view(h):
        h = h.clone()
        h[:, :4].relu_()
        return F.relu(h)

    model = Counted(ReluFunc.apply if "Function" in act else relu_on_a_view).double()
    x = _x()
    gb = xattr.guided_backprop(xattr.target(model, 1))
    warned = [len(_bypassed(gb, x))]
    assert model.calls == 2
    first = gb(x)
    warned.append(len(_bypassed(gb, x)))
    assert model.calls == 4
    assert torch.equal(gb(x), first)
    assert warned == ([1, 1] if "Function" in act else [0, 0])  # the mode warns on every call
    fresh = Counted(model.act).double()
    assert torch.equal(xattr.guided_backprop(xattr.target(fresh, 1))(x), first)  # as a new function's first call
    assert fresh.calls == 2
    if "view" in act:  # guided at the view's ReLU too: not the plain gradient
        assert not torch.equal(first, xattr.saliency(xattr.target(model, 1), abs=False)(x))


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_warns_under_torch_func_transforms(transform):
    """There the mode sees the Function's call, not the ops inside: a probe of its forward finds them."""
    x = _x()
    model = Net(ReluFunc.apply).double()
    gb = xattr.guided_backprop(xattr.target(model, 0))
    if transform == "vmap":
        run = lambda x: torch.func.vmap(gb)(x[:, None])  # noqa: E731
    else:
        run = lambda x: torch.func.grad(lambda x: gb(x).sum())(x)  # noqa: E731
    (warned,) = _bypassed(run, x)
    assert "ReluFunc" in str(warned.message)
    (again,) = _bypassed(run, x)  # the probe's verdict is kept, the warning given at every call
    assert str(again.message) == str(warned.message)
    plain = xattr.guided_backprop(xattr.target(Net(F.relu).double(), 0))
    assert not _bypassed(lambda x: torch.func.vmap(plain)(x[:, None]), x)


@pytest.mark.parametrize("method", ["deep_lift", "lrp", "guided_backprop"])
def test_no_warning_without_a_ruled_op_inside(method):
    """A straight-through estimator holds no op a rule claims: nothing is bypassed."""
    x = _x()
    model = Net(lambda h: F.relu(Rounded.apply(h))).double()
    fn = getattr(xattr, method)(xattr.target(model, 0))
    assert not _bypassed(fn, x)
    assert not _bypassed(lambda x: torch.func.vmap(fn)(x[:, None]), x)


def test_no_warning_at_a_no_grad_block():
    """No gradient passes a torch.no_grad() block at all: nothing to warn about here."""

    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.c = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            with torch.no_grad():
                h = F.relu(self.a(x))
            return self.c(torch.tanh(h + x.sum(1, keepdim=True)))

    x, model = _x(), Frozen().double()
    for method in (xattr.deep_lift, xattr.guided_backprop, xattr.lrp):
        assert not _bypassed(method(xattr.target(model, 0)), x)


def test_once_per_call_and_class():
    x = _x()
    model = Net(GeluCtx.apply, twice=True).double()
    assert len(_bypassed(xattr.deep_lift(xattr.target(model, 0)), x)) == 1
    assert len(_bypassed(xattr.deep_lift(xattr.target(model, 0)), x)) == 1


def test_compat_captum_warns_too():
    from xattr.compat.captum import DeepLift

    x = _x()
    model = Net(GeluCtx.apply).double()
    assert len(_bypassed(lambda x: DeepLift(model).attribute(x, target=0), x)) == 1


def test_bloom_warns_and_its_gelu_as_a_module_conserves():
    hf_zoo = pytest.importorskip("hf_zoo")
    if hf_zoo.transformers is None:
        pytest.skip("needs transformers")
    case = hf_zoo.ZOO["bloom:eager"]()
    f = hf_zoo.in_float64(case.f)
    exact = xattr.rule.exact_deep_lift_rules()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gap = hf_zoo.deep_lift_gap(case, exact, f, 1e-5)[0]
    assert [w for w in seen if issubclass(w.category, xattr.RuleBypassedWarning)]
    assert gap > 1e-4
    for block in case.model.h:
        block.mlp.gelu_impl = nn.GELU(approximate="tanh")  # the remedy the warning gives
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gap = hf_zoo.deep_lift_gap(case, exact, f, 1e-5)[0]
    assert not [w for w in seen if issubclass(w.category, xattr.RuleBypassedWarning)]
    assert gap < 1e-12


@pytest.mark.parametrize("transform", [None, "vmap"])
def test_the_warning_points_at_the_models_call_of_the_function(transform):
    """Shown at the line that calls ``Function.apply`` in the model (Net.forward's ``self.act``
    line), not inside torch or xattr."""
    import inspect

    x = _x()
    model = Net(ReluFunc.apply).double()
    gb = xattr.guided_backprop(xattr.target(model, 0))
    run = gb if transform is None else (lambda x: torch.func.vmap(gb)(x[:, None]))
    (warned,) = _bypassed(run, x)
    lines, first = inspect.getsourcelines(Net.forward)
    line = first + next(i for i, text in enumerate(lines) if "self.act(self.a(x))" in text)
    assert (warned.filename, warned.lineno) == (__file__, line)

