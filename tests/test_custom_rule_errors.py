"""Mistakes in user-written rules, and uses of them that gave wrong numbers or crashed: each test
here failed before its fix (the rules and models are test_custom_rules.py's)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Rule, pullback
from xattr.testing import assert_trees_close

from test_custom_rules import CALLS, S, X, AsHook, KeepsOutput, MyEpsilon, WithExtras, cnn, models, vmapped


def test_deep_lift_mapping_replaces_a_default_by_kind_however_the_key_is_spelled():
    # DeepLift keys its Rescale rules by F.relu, torch.sigmoid...: a user's torch.relu or F.sigmoid
    # key stands for the same kind and used to be refused as a second rule for it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 3)).double().eval()

    class Derivative(Rule):  # the ordinary derivative: DeepLift then gives gradient x input
        kinds = frozenset({"relu", "sigmoid"})
        keep_output = True
        shares_reference = True

        def backward(self, op, saved, grad):
            y = saved.output
            return (grad * ((y > 0).to(y.dtype) if op.kind == "relu" else y * (1 - y)),)

    expected = X * xattr.grad(xattr.target(model, 1))(X)
    rule = Derivative()
    for mapping in ({torch.relu: rule, F.sigmoid: rule}, {torch.Tensor.relu: rule, torch.Tensor.sigmoid: rule},
                    {F.relu: rule, torch.sigmoid: rule}):
        got = xattr.deep_lift(xattr.target(model, 1), mapping=mapping)(X)
        assert_trees_close(got, expected, what=repr(mapping))
    split = xattr.at_layer(xattr.target(model, 1), model[0])
    xattr.layer_deep_lift(split, mapping={torch.relu: rule})(X)  # the layer variants merge alike
    xattr.deep_lift_shap(xattr.target(model, 1), baselines=X[:2] * 0, mapping={torch.relu: rule})(X)


# --------------------------------------------------------------------------- silent wrong numbers fixed


def test_an_input_grad_rule_at_softsign_changes_the_whole_gradient():
    # torch writes softsign in Python, x / (1 + |x|): a hook on its last node (a division) rewrote
    # only the numerator's share of the gradient (off by 0.027 where the gradient was 0.076)
    class HalfSoftsign(Rule):
        kinds = frozenset({"softsign"})
        keep_inputs = True

        def input_grad(self, op, grad):
            return grad.mul_(S)

        def backward(self, op, saved, grad):
            return (S * grad / (1 + saved.inputs[0].abs()) ** 2,)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Softsign(), nn.Linear(8, 1)).double().eval()
    f = xattr.rules(model, {F.softsign: HalfSoftsign()})
    expected = S * xattr.grad(model)(X)
    assert_trees_close(xattr.grad(f)(X), expected, what="eager")
    assert_trees_close(vmapped(f)(X), expected, what="vmap")


def test_an_input_grad_that_forgets_to_return_is_refused_not_zero():
    class ForgetsReturn(AsHook):
        def input_grad(self, op, grad):
            grad.mul_(S)  # no return: torch read None as "no gradient", and the result was all zeros

    model, _ = models()
    for mapping in ({F.relu: ForgetsReturn()}, {nn.ReLU: ForgetsReturn()}):  # the graph walk, the mode
        with pytest.raises(TypeError, match=r"ForgetsReturn\(\).input_grad must return .* it returned NoneType"):
            xattr.grad(xattr.target(xattr.rules(model, mapping), 1))(X)

    class WrongShape(AsHook):
        def input_grad(self, op, grad):
            return grad.sum(0)

    with pytest.raises(TypeError, match=r"tensor of shape \(5, \d\).*it returned shape \(\d,\)"):
        xattr.grad(xattr.target(xattr.rules(model, {F.relu: WrongShape()}), 1))(X)


@pytest.mark.parametrize("call", ["eager", "vmap"])
def test_a_kept_output_the_model_then_writes_into(call):
    # keep_output at a linear layer followed by ReLU(inplace=True), and at a layer whose output a
    # residual adds into (ResNet's out += identity): the saved output was overwritten and the
    # eager backward failed, where plain autograd (and vmap) worked
    class SigmoidScaled(Rule):
        kinds = frozenset({"linear"})
        keep_inputs = True
        keep_output = True

        def backward(self, op, saved, grad):
            _, vjp = pullback(op.fn, *saved.inputs)
            return (vjp(grad * torch.sigmoid(saved.output))[0], None, None)

    class Ref(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, layer):
            y = layer(x)
            ctx.save_for_backward(x, y.clone())
            ctx.layer = layer
            return y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return g * torch.sigmoid(y) @ ctx.layer.weight, None

    class Residual(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 3)
            self.linear = linear

        def forward(self, x):
            h = self.linear(x, self.a).relu_()
            h = self.linear(h, self.b)
            h += x
            return self.linear(h, self.c)

    torch.manual_seed(0)
    model = Residual(lambda x, m: m(x)).double().eval()
    ref = Residual(lambda x, m: Ref.apply(x, m)).double().eval()
    ref.load_state_dict(model.state_dict())
    got = CALLS[call](xattr.target(xattr.rules(model, {F.linear: SigmoidScaled()}), 1))(X)
    assert_trees_close(got, xattr.grad(xattr.target(ref, 1))(X), what=call)


# --------------------------------------------------------------------------- clear errors


def relu_grad_of(rule, call="eager"):
    model, _ = models()
    return CALLS[call](xattr.target(xattr.rules(model, {F.relu: rule}), 1))(X)


@pytest.mark.parametrize("call", ["eager", "vmap"])
def test_a_backward_returning_a_bare_tensor_says_so(call):
    class Bare(KeepsOutput):
        def backward(self, op, saved, grad):
            return super().backward(op, saved, grad)[0]

    # was "returned 5 gradients for 1 tensors" eagerly (the tensor's length), a torch shape error under vmap
    with pytest.raises(RuntimeError, match=r"Bare\(\).backward returned a tensor of shape .* for 1 tensors: return a tuple"):
        relu_grad_of(Bare(), call)


@pytest.mark.parametrize("call", ["eager", "vmap"])
def test_a_forward_returning_no_pair_says_so(call):
    class NoPair(WithExtras):
        def forward(self, op, x):
            return op.fn(x)

    with pytest.raises(TypeError, match=r"NoPair\(\).forward must return \(output, extras\).*a tensor of shape"):
        relu_grad_of(NoPair(), call)


@pytest.mark.parametrize("call", ["eager", "vmap"])
@pytest.mark.parametrize("extra", ["input", "number", "output"])
def test_extras_that_are_no_new_tensors_are_refused_alike_eagerly_and_under_vmap(extra, call):
    class Extra(WithExtras):
        def forward(self, op, x):
            y = op.fn(x)
            return y, ({"input": x, "number": 2.0, "output": y}[extra],)

    # an input among the extras used to pass eagerly and fail under vmap with torch's message
    # about setup_context; a number failed in save_for_backward
    with pytest.raises((RuntimeError, TypeError), match={"input": "one of its inputs among its extras: set keep_inputs",
                                                          "number": "a float among its extras",
                                                          "output": "its output among its extras"}[extra]):
        relu_grad_of(Extra(), call)


def test_reading_inputs_a_rule_does_not_keep_says_how_to_keep_them():
    class Forgot(WithExtras):
        def backward(self, op, saved, grad):
            return (grad * (saved.inputs[0] > 0),)

    with pytest.raises(IndexError, match="saved.inputs is empty: this rule keeps no inputs .*keep_inputs = True"):
        relu_grad_of(Forgot(), "vmap")
    assert Forgot().keep_inputs is False


@pytest.mark.parametrize("use", ["compare", "torch", "method", "arithmetic"])
def test_reading_an_output_a_rule_does_not_keep_says_how_to_keep_it(use):
    class Forgot(WithExtras):
        def backward(self, op, saved, grad):
            out = saved.output
            mask = {"compare": lambda: out > 0, "torch": lambda: torch.sign(out), "method": lambda: out.sign(),
                    "arithmetic": lambda: 1 - out}[use]()
            return (grad * mask,)

    with pytest.raises((TypeError, AttributeError), match="saved.output is not kept: set keep_output = True"):
        relu_grad_of(Forgot(), "vmap")


def test_a_rule_without_backward_names_itself():
    class OnlyHook(AsHook):
        backward = Rule.backward

    with pytest.raises(NotImplementedError, match="OnlyHook has no backward"):
        relu_grad_of(OnlyHook(), "vmap")  # transforms run backward


@pytest.mark.parametrize("kinds, error, match", [
    ("relu", TypeError, "kinds must be a frozenset"),  # a string: "elu" in "relu" is True
    (frozenset({"ReLU"}), ValueError, r"names no op kind: \['ReLU'\]"),
    (frozenset(), ValueError, "kinds is empty"),
])
def test_kinds_that_could_never_match_are_refused(kinds, error, match):
    rule = type("Typo", (KeepsOutput,), {"kinds": kinds})()
    model, _ = models()
    with pytest.raises(error, match=match):  # keyed by module: the rule was silently never applied
        xattr.rules(model, {nn.ReLU: rule})


def test_two_rules_of_one_kind_name_the_keys_and_how_to_replace_a_shipped_entry():
    model = cnn()
    with pytest.raises(ValueError, match=r"F.conv2d and F.conv1d both stand for every 'conv' op.*key by the same function \(F.conv2d\)"):
        xattr.lrp(xattr.target(model, 2), composite={**xattr.rule.lrp_rules(), F.conv1d: MyEpsilon(0.1)})


def test_a_rule_at_a_fused_op_says_that_only_refuse_applies_there():
    class Mine(Rule):
        kinds = frozenset({"fused_attention"})

        def backward(self, op, saved, grad):
            return ()

    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    f = lambda x: attention(x, x, x)[0].sum((1, 2))  # noqa: E731
    x = torch.randn(2, 3, 8)
    for rule in (Mine(), xattr.rule.Block()):  # was TypeError: 'NoneType' object is not callable
        with pytest.raises(NotImplementedError, match="one fused call whose tensors no rule sees.*Refuse"):
            xattr.grad(xattr.rules(f, {F.multi_head_attention_forward: rule}))(x)


@pytest.mark.parametrize("factor", ["number", "0-d", "per feature", "full"])
def test_an_output_scale_may_be_any_factor_that_broadcasts_to_the_output(factor):
    # a number failed with "'float' object has no attribute 'reshape'", a 0-d or per-feature
    # tensor with "shape '[5, 8]' is invalid for input of size 1"
    class HalfAtOutput(Rule):
        kinds = frozenset({"linear"})
        keep_inputs = True

        def scales_output(self, op):
            return True

        def output_scale(self, op, out):
            return {"number": 0.5, "0-d": out.new_tensor(0.5), "per feature": out.new_full(out.shape[-1:], 0.5),
                    "full": torch.full_like(out, 0.5)}[factor]

        def backward(self, op, saved, grad):
            return (0.5 * grad @ saved.inputs[1], None, None)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    f = xattr.target(xattr.rules(model, {F.linear: HalfAtOutput()}), 1)
    expected = xattr.grad(xattr.target(model, 1))(X) / 4
    assert_trees_close(xattr.grad(f)(X), expected, what="eager: the output hook")
    assert_trees_close(vmapped(f)(X), expected, what="vmap: the backward")


def test_an_output_scale_that_does_not_broadcast_says_so():
    class Wrong(Rule):
        kinds = frozenset({"linear"})

        def scales_output(self, op):
            return True

        def output_scale(self, op, out):
            return torch.ones(3, dtype=out.dtype)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    with pytest.raises(RuntimeError, match=r"Wrong\(\).output_scale returned shape \(3,\), which does not broadcast to the output's \(5, 8\)"):
        xattr.grad(xattr.target(xattr.rules(model, {F.linear: Wrong()}), 1))(X)
