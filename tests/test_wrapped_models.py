"""Models wrapped by torch.jit, torch.utils.checkpoint and torch.compile: right numbers or a clear error.

TorchScript runs its ops out of sight of the rules and of forward hooks: refused (NOTE: [Rules
on TorchScript models]). A checkpointed forward is recomputed in the backward pass without the
head's substitution: refused there, right everywhere else (NOTE: [Layers under activation
checkpointing]). Compiled models run as their Python source under a split (NOTE: [Layers of
compiled models]), so their layer methods give the eager model's numbers.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import xattr
from xattr.testing import assert_trees_close

from compile_support import needs_compile


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.lin1 = nn.Linear(4 * 3 * 3, 12)
        self.lin2 = nn.Linear(12, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x)))
        h = torch.tanh(self.lin1(h.flatten(1)))
        return self.lin2(F.relu(h - 0.1))


def _net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(3, 2, 6, 6)


def _jit(kind: str, model: nn.Module, x: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, x) if kind == "trace" else torch.jit.script(model)


# --------------------------------------------------------------------------------------- TorchScript

RULED = {
    "guided_backprop": lambda f, m: xattr.guided_backprop(f),
    "deconvolution": lambda f, m: xattr.deconvolution(f),
    "deep_lift": lambda f, m: xattr.deep_lift(f, baselines=0.1),
    "deep_lift_shap": lambda f, m: xattr.deep_lift_shap(f, baselines=torch.zeros(2, 2, 6, 6)),
    "lrp": lambda f, m: xattr.lrp(f),
    "lrp_epsilon_plus": lambda f, m: xattr.lrp(f, composite=xattr.rule.epsilon_plus()),
    "rules": lambda f, m: xattr.grad(xattr.rules(f, {F.relu: xattr.rule.Guided()})),
    "guided_grad_cam": lambda f, m: xattr.guided_grad_cam(xattr.at_layer(f, m.lin1)),
    "layer_deep_lift": lambda f, m: xattr.layer_deep_lift(xattr.at_layer(f, m.lin1), baselines=0.1),
    "layer_lrp": lambda f, m: xattr.layer_lrp(xattr.at_layer(f, m.lin1)),
}


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_every_rule_method_refuses_a_torchscript_model(kind):
    """They silently gave the plain gradient (x * grad for DeepLift and LRP)."""
    model, x = _net()
    jit = _jit(kind, model, x)
    y = torch.tensor([0, 1, 2])
    for name, make in RULED.items():
        with pytest.raises(TypeError, match="TorchScript.*Pass the eager nn.Module"):
            # at_layer of a jit model needs a layer it can hook: the eager model's, which the
            # jit model never calls, so the rule methods on a split take theirs from `model`
            make(xattr.target(jit, y), model)(x)
        assert callable(make(xattr.target(model, y), model)), name  # the eager model is fine
    with pytest.raises(TypeError, match="TorchScript"):  # found inside a closure, too
        RULED["deep_lift"](lambda v: jit(v)[:, 1], model)(x)
    # gradient methods on the jit model itself are right
    assert_trees_close(xattr.saliency(xattr.target(jit, y))(x), xattr.saliency(xattr.target(model, y))(x), what="saliency")


def test_the_graph_walk_refuses_torchscript_it_was_not_shown():
    """A jit model the static search cannot find (held in a dict) leaves one opaque node once the
    TorchScript executor has optimised it; guided backprop's graph walk must not pass over it."""
    model, x = _net()
    jit = _jit("script", model, x)
    for _ in range(3):  # the profiling executor optimises after its first runs with gradients
        jit(x.clone().requires_grad_()).sum().backward()
    held = {"model": jit}
    with pytest.raises(TypeError, match="DifferentiableGraphBackward"):
        xattr.guided_backprop(lambda v: held["model"](v)[:, 1])(x)


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_at_layer_refuses_the_layers_of_a_torchscript_model(kind):
    """A traced model said "never called", a scripted one gave torch's hook error."""
    model, x = _net()
    jit = _jit(kind, model, x)
    for layer in (jit.conv, model.conv):  # the jit model's own layer; the eager layer it never calls
        with pytest.raises(TypeError, match="at_layer cannot see inside TorchScript"):
            xattr.layer_activation(xattr.at_layer(xattr.target(jit, 1), layer))(x)
        with pytest.raises(TypeError, match="at_layer cannot see inside TorchScript"):
            xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(jit, 1), layer), n_steps=4)(x)


# ------------------------------------------------------------------------------------ checkpointing


class Checkpointed(nn.Module):
    """fx cannot trace it (a data-dependent branch), so the head is the hook head."""

    def __init__(self, ckpt: bool):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.ckpt = ckpt

    def seg(self, x):
        return torch.tanh(self.l2(torch.tanh(self.l1(x))))

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return self.l3(checkpoint(self.seg, x, use_reentrant=False) if self.ckpt else self.seg(x))


B = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
LAYER = {
    "layer_integrated_gradients": lambda s: xattr.layer_integrated_gradients(s, n_steps=8)(X),
    "layer_ig_at_an_input": lambda s: xattr.layer_integrated_gradients(s, n_steps=8)(X),  # at l2's input: below
    "ig_of_the_head": lambda s: xattr.integrated_gradients(s.head, n_steps=8)(s.act(X), X),
    "layer_activation": lambda s: xattr.layer_activation(s)(X),
    "gradient_x_activation": lambda s: xattr.gradient_x_activation(s)(X),
    "grad_cam": lambda s: xattr.grad_cam(s, relu=False)(X),
    "conductance": lambda s: xattr.conductance(s, n_steps=8)(X),
    "internal_influence": lambda s: xattr.internal_influence(s, n_steps=8)(X),
    "layer_gradient_shap": lambda s: xattr.layer_gradient_shap(s, baselines=B, n_samples=6, generator=0)(X),
    "layer_feature_ablation": lambda s: xattr.layer_feature_ablation(s)(X),
    "layer_feature_permutation": lambda s: xattr.layer_feature_permutation(s, generator=0)(X),
    "neuron_saliency": lambda s: xattr.saliency(xattr.neuron(s, 2), abs=False)(X),
    "neuron_ig": lambda s: xattr.integrated_gradients(xattr.neuron(s, 2), n_steps=8)(X),
    "neuron_conductance": lambda s: xattr.neuron_conductance(s, 2, n_steps=8)(X),
    "neuron_feature_ablation": lambda s: xattr.feature_ablation(xattr.neuron(s, 2))(X),
}
REFUSED = {"layer_integrated_gradients", "layer_ig_at_an_input", "ig_of_the_head"}
X = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))


def test_every_layer_method_under_a_checkpoint_is_right_or_refused():
    """Layer IG was off by 0.14 of 0.22, silently: the backward recomputed the checkpointed
    segment without the head's substitution. Methods whose hooks add a zero stay right."""
    torch.manual_seed(0)
    plain = Checkpointed(False).eval()
    ck = Checkpointed(True).eval()
    ck.load_state_dict(plain.state_dict())
    for name, run in LAYER.items():
        def split(m, name=name):
            if name == "layer_ig_at_an_input":
                return xattr.at_layer(xattr.target(m, 1), m.l2, inputs=True)
            return xattr.at_layer(xattr.target(m, 1), m.l1)

        expected = run(split(plain))
        if name in REFUSED:
            with pytest.raises(RuntimeError, match="inside torch.utils.checkpoint"):
                run(split(ck))
        else:
            assert_trees_close(run(split(ck)), expected, what=f"{name}: checkpointed vs plain")
    # the head itself still runs where nothing differentiates it, and fx's traced head (which
    # inlines the checkpointed function) is right
    s = xattr.at_layer(xattr.target(ck, 1), ck.l1)
    with torch.no_grad():
        torch.testing.assert_close(s.head(s.act(X), X), ck(X)[:, 1])
    traceable = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    wrapped = Wrap(traceable).eval()
    got = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(wrapped, 1), traceable[0]), n_steps=8)(X)
    want = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(traceable, 1), traceable[0]), n_steps=8)(X)
    assert_trees_close(got, want, what="traced head under a checkpoint")


class Wrap(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return checkpoint(self.inner, x, use_reentrant=False)


# ----------------------------------------------------------------------------------- torch.compile


compiles = needs_compile  # the marker of the torch.compile tests below


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.lin = nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.lin(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def small():
    torch.manual_seed(0)
    yield Small().eval(), torch.randn(3, 2, 6, 6)
    torch._dynamo.reset()


COMPILED_LAYER = {
    "layer_activation": lambda s, x: xattr.layer_activation(s)(x),
    "gradient_x_activation": lambda s, x: xattr.gradient_x_activation(s)(x),
    "grad_cam": lambda s, x: xattr.grad_cam(s)(x),
    "layer_integrated_gradients": lambda s, x: xattr.layer_integrated_gradients(s, n_steps=4)(x),
    "conductance": lambda s, x: xattr.conductance(s, n_steps=4)(x),
    "neuron_ig": lambda s, x: xattr.integrated_gradients(xattr.neuron(s, (1, 2, 2)), n_steps=4)(x),
    "layer_feature_ablation": lambda s, x: xattr.layer_feature_ablation(s)(x),
}


@compiles
def test_layer_methods_of_a_compiled_model_after_a_plain_call(small):
    """Dynamo reused the graph of a plain no_grad call, compiled without the split's hooks: "the
    layer Conv2d was never called"."""
    model, x = small
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        compiled(x)
    for name, run in COMPILED_LAYER.items():
        expected = run(xattr.at_layer(xattr.target(model, 1), model.conv), x)
        got = run(xattr.at_layer(xattr.target(compiled, 1), model.conv), x)
        assert_trees_close(got, expected, what=f"{name}: compiled vs eager model")
        closure = xattr.at_layer(lambda v: compiled(v)[:, 1], model.conv)  # reached only through a closure
        assert_trees_close(run(closure, x), expected, what=f"{name}: compiled model in a closure")


@compiles
def test_layer_gradients_of_a_fullgraph_compiled_model(small):
    """The zero tensor that requires grad, made in the hook, crashed dynamo under fullgraph=True."""
    model, x = small
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for name in ("gradient_x_activation", "grad_cam", "conductance", "layer_integrated_gradients"):
        run = COMPILED_LAYER[name]
        expected = run(xattr.at_layer(xattr.target(model, 1), model.conv), x)
        got = run(xattr.at_layer(xattr.target(compiled, 1), model.conv), x)
        assert_trees_close(got, expected, what=f"{name}: fullgraph-compiled vs eager model")
    ggc = xattr.guided_grad_cam(xattr.at_layer(xattr.target(compiled, 1), model.conv))(x)
    assert_trees_close(ggc, xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, 1), model.conv))(x), what="guided grad-cam")
