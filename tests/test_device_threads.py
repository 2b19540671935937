"""Attributions with every backward callback run where a CUDA device thread would run it: in an
empty context, where each of xattr's context variables reads its default (NOTE: [Device threads
on CPU] in tests/device_threads.py; NOTE: [Backward callbacks read no context] in
xattr/_src/rule_base.py). Each method must give exactly its numbers of the ordinary run: the
rule-based methods (their ruled ops' Functions, node hooks and output hooks), the derivatives of
rule-based attributions (whose backward recomputes a rule's forward), and the gradient methods.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jacfwd, jacrev, jvp, vmap

import xattr
from device_threads import device_threads
from test_deeplift_layouts import _twins
from xattr.rule import AlphaBeta, Epsilon, ExactSoftmax, Flat, Gamma, WSquare, ZBox

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop", "ignore:enable_nested_tensor")
DT = torch.float64


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


class CNN(nn.Module):
    """Conv, in-place ReLU, max-pool, conv, batch norm, a squeeze-and-excitation gate, clamp as a
    ReLU, linear, tanh, linear: every kind of ruled op (Function, node hook, output hook)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3, padding=1)
        self.bn, self.gate = nn.BatchNorm2d(5), nn.Linear(5, 5)
        self.fc1, self.fc2 = nn.Linear(5 * 9, 8), nn.Linear(8, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.to(DT).eval()

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x), inplace=True), 2)
        h = self.bn(self.conv2(h))
        h = h * torch.sigmoid(self.gate(h.mean((2, 3))))[..., None, None]
        h = h.clamp(min=0).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


class Mixed(nn.Module):
    """A tensor-bound clamp (the rules run under the mode), a product of two activations, softmax."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(4, 3)
        self.to(DT).eval()

    def forward(self, x):
        h = torch.maximum(self.a(x), torch.zeros(8, dtype=DT))
        h = torch.relu(self.b(h))
        return self.c(F.softmax(h[:, :4] * torch.tanh(h[:, 4:]), -1))


class Zoo(nn.Module):
    """The other rules' kinds: layer norm, nn.MultiheadAttention, SDPA, an LSTM, GLU, RMS norm, a
    matmul, an einsum of three operands, cumprod, a quotient and atan2 of two activations.
    ``attention=False`` leaves out both attentions, whose native SDPA backward torch cannot
    differentiate on CPU (for the derivatives)."""

    def __init__(self, attention: bool = True):
        super().__init__()
        self.attention = attention
        torch.manual_seed(2)
        self.a, self.norm, self.rms = nn.Linear(6, 12), nn.LayerNorm(12), nn.RMSNorm(4)
        self.att, self.rnn = nn.MultiheadAttention(4, 2, batch_first=True), nn.LSTM(4, 4, batch_first=True)
        self.out = nn.Linear(9 + 12 + 4 * 4 + 6, 3)
        self.to(DT).eval()

    def forward(self, x):
        h = self.norm(self.a(x))
        s = h.view(-1, 3, 4)
        if self.attention:
            s = self.att(s, s, s, need_weights=False)[0]
            s = F.scaled_dot_product_attention(s, s, torch.tanh(s))
        s = self.rms(s)
        r = self.rnn(s)[0].flatten(1)
        m = (s @ s.transpose(1, 2)).flatten(1)
        a, b, c = h[:, :4], h[:, 4:8], torch.tanh(h[:, 8:])
        e = torch.einsum("bi,bi,bi->bi", a, b, c)
        p, q, t = torch.cumprod(torch.sigmoid(a), 1), a / (F.softplus(b) + 0.5), torch.atan2(a, b)
        return self.out(torch.cat([m, r, e, p, q, t, F.glu(h, -1)], 1))


MODEL, MIXED, ZOO, ZOO2 = CNN(), Mixed(), Zoo(), Zoo(attention=False)
X = _randn(3, 3, 8, 8, seed=1).clamp(-1, 1)
REF = _randn(3, 3, 8, 8, seed=2).clamp(-1, 1) * 0.5
DIST = _randn(2, 3, 8, 8, seed=3).clamp(-1, 1) * 0.5
V = _randn(3, 6, seed=4)
F1, FM, FZ = xattr.target(MODEL, 1), xattr.target(MIXED, 2), xattr.target(ZOO, 0)
FZ2 = xattr.target(ZOO2, 0)
BOX = dict(low=-1.0, high=1.0)


def _squares(attr):
    """x -> sum(attr(x) ** 2): a scalar of the attribution to differentiate."""
    return lambda v: (attr(v) ** 2).sum()


CASES = {
    # rule-based: node hooks (graph walk), Functions (the mode), output hooks
    "guided_backprop": lambda: xattr.guided_backprop(F1)(X),
    "guided_backprop_mode": lambda: xattr.guided_backprop(FM)(V),
    "deconvolution": lambda: xattr.deconvolution(F1)(X),
    "guided_grad_cam": lambda: xattr.guided_grad_cam(xattr.at_layer(F1, MODEL.conv2))(X),
    "deep_lift_shared": lambda: xattr.deep_lift(F1, return_delta=True)(X),
    "deep_lift_paired": lambda: xattr.deep_lift(F1, baselines=REF, return_delta=True)(X),
    "deep_lift_mixed": lambda: xattr.deep_lift(FM, baselines=V.flip(0), return_delta=True)(V),
    "deep_lift_exact_softmax": lambda: xattr.deep_lift(FM, mapping={F.softmax: ExactSoftmax()})(V),
    "deep_lift_shap_chunks": lambda: xattr.deep_lift_shap(F1, baselines=DIST, chunk_size=8, return_delta=True)(X),
    "layer_deep_lift": lambda: xattr.layer_deep_lift(xattr.at_layer(F1, MODEL.conv2), baselines=REF)(X),
    "layer_deep_lift_shap": lambda: xattr.layer_deep_lift_shap(xattr.at_layer(F1, MODEL.bn), baselines=DIST)(X),
    "neuron_deep_lift": lambda: xattr.deep_lift(xattr.neuron(xattr.at_layer(MODEL, MODEL.fc1), 2))(X),
    "neuron_guided_backprop": lambda: xattr.guided_backprop(xattr.neuron(xattr.at_layer(MODEL, MODEL.conv2), (1, 2, 2)))(X),
    "deep_lift_zoo": lambda: xattr.deep_lift(FZ, baselines=V.flip(0) * 0.5, return_delta=True)(V),
    "deep_lift_zoo_shared": lambda: xattr.deep_lift(FZ, return_delta=True)(V),
    "lrp_zoo": lambda: xattr.lrp(FZ, return_delta=True)(V),
    "grad_deep_lift_zoo": lambda: grad(_squares(xattr.deep_lift(FZ2, baselines=V.flip(0) * 0.5)))(V),
    "grad_lrp_zoo": lambda: grad(_squares(xattr.lrp(FZ2)))(V),
    "lrp": lambda: xattr.lrp(F1, return_delta=True)(X),
    "lrp_mixed_gamma_alpha_beta": lambda: xattr.lrp(FM, composite={F.linear: Gamma(0.25), MIXED.c: AlphaBeta(2.0, 1.0),
                                                                   F.softmax: xattr.rule.Block()})(V),
    "lrp_epsilon_gamma_box": lambda: xattr.lrp(F1, composite=xattr.rule.epsilon_gamma_box(MODEL.conv1, **BOX))(X),
    "lrp_epsilon_plus": lambda: xattr.lrp(F1, composite=xattr.rule.epsilon_plus())(X),
    "lrp_flat": lambda: xattr.lrp(F1, composite={MODEL.conv1: Flat(), F.linear: Epsilon(0.1)})(X),
    "lrp_w_square": lambda: xattr.lrp(F1, composite={MODEL.conv1: WSquare(), torch.conv2d: Epsilon(0.1)})(X),
    "lrp_z_box_chunks": lambda: xattr.lrp(F1, composite={MODEL.conv1: ZBox(**BOX)}, chunk_size=2)(X),
    "layer_lrp": lambda: xattr.layer_lrp(xattr.at_layer(F1, MODEL.conv2), return_delta=True)(X),
    "neuron_lrp": lambda: xattr.lrp(xattr.neuron(xattr.at_layer(MODEL, MODEL.fc1), 2))(X),
    # derivatives of rule-based attributions (the rule's forward recomputed in the backward)
    "grad_deep_lift": lambda: grad(_squares(xattr.deep_lift(F1, baselines=REF)))(X),
    "grad_deep_lift_shared": lambda: grad(_squares(xattr.deep_lift(FM)))(V),
    "grad_deep_lift_shap": lambda: grad(_squares(xattr.deep_lift_shap(FM, baselines=V[:2] * 0.5)))(V),
    "jacrev_deep_lift_exact_softmax": lambda: jacrev(xattr.deep_lift(FM, mapping={F.softmax: ExactSoftmax()}))(V),
    "jacfwd_deep_lift": lambda: jacfwd(xattr.deep_lift(FM, baselines=V.flip(0)))(V),
    "vmap_grad_deep_lift": lambda: vmap(grad(lambda v: xattr.deep_lift(FM)(v[None]).square().sum()))(V),
    "grad_layer_deep_lift": lambda: grad(_squares(xattr.layer_deep_lift(xattr.at_layer(FM, MIXED.b))))(V),
    "grad_guided_backprop": lambda: grad(_squares(xattr.guided_backprop(FM)))(V),
    "jvp_deconvolution": lambda: jvp(xattr.deconvolution(FM), (V,), (V.flip(0),))[1],
    "grad_lrp": lambda: grad(_squares(xattr.lrp(FM, composite={F.softmax: xattr.rule.Block()})))(V),
    "grad_lrp_z_box": lambda: grad(_squares(xattr.lrp(F1, composite={MODEL.conv1: ZBox(**BOX)})))(X),
    "grad_layer_lrp": lambda: grad(_squares(xattr.layer_lrp(xattr.at_layer(F1, MODEL.conv2))))(X),
    "grad_guided_grad_cam": lambda: grad(_squares(xattr.guided_grad_cam(xattr.at_layer(F1, MODEL.conv2))))(X),
}
GRADIENT_METHODS = {
    "saliency": lambda: xattr.saliency(F1)(X),
    "integrated_gradients": lambda: xattr.integrated_gradients(F1, baselines=REF, n_steps=8, return_delta=True)(X),
    "smoothgrad": lambda: xattr.smoothgrad(xattr.saliency(F1), stdevs=0.1, n_samples=3, generator=0)(X),
    "gradient_shap": lambda: xattr.gradient_shap(F1, baselines=DIST, n_samples=3, generator=0)(X),
    "layer_integrated_gradients": lambda: xattr.layer_integrated_gradients(xattr.at_layer(F1, MODEL.conv2), n_steps=8)(X),
    "conductance": lambda: xattr.conductance(xattr.at_layer(F1, MODEL.bn), n_steps=8)(X),
    "grad_cam": lambda: xattr.grad_cam(xattr.at_layer(F1, MODEL.conv2))(X),
    "gradient_x_activation": lambda: xattr.gradient_x_activation(xattr.at_layer(F1, [MODEL.conv1, MODEL.fc1]))(X),
    "neuron_conductance": lambda: xattr.neuron_conductance(xattr.at_layer(F1, MODEL.fc1), 2, n_steps=8)(X),
    "neuron_integrated_gradients": lambda: xattr.integrated_gradients(xattr.neuron(xattr.at_layer(MODEL, MODEL.fc1), 2),
                                                                      n_steps=8)(X),
    "grad_integrated_gradients": lambda: grad(_squares(xattr.integrated_gradients(FM, n_steps=4)))(V),
}
CASES.update(GRADIENT_METHODS)


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _assert_same(got, want, name: str) -> None:
    for g, w in zip(_flat(got), _flat(want), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.filterwarnings("ignore::xattr._src.gradients.NoGradientPathWarning")  # softmax blocked: no path to V
def test_backward_callbacks_read_no_context(name):
    """The numbers of a device thread, and (strict) no read of xattr's context variables at all: an
    LRP derivative through z-box read `ABOVE_SPLIT` whose default happens to be harmless."""
    want = CASES[name]()
    for strict in (False, True):
        with device_threads(strict=strict) as count:
            got = CASES[name]()
        # the gradient methods' backward passes run no Python of xattr's (none to simulate, none to go wrong)
        assert count["callbacks"] > 0 or name in GRADIENT_METHODS, "no backward callback ran under the simulation"
        _assert_same(got, want, f"{name} (strict={strict})")


def _same_on_device_threads(runs: dict, label: str) -> None:
    """Each run gives its numbers again under the strict simulation, with callbacks seen."""
    for name, run in runs.items():
        want = run()
        with device_threads(strict=True) as count:
            got = run()
        assert count["callbacks"] > 0
        _assert_same(got, want, f"{label} {name}")


@pytest.mark.parametrize("kind", ["mlp", "mha", "lstm"])
def test_deep_lift_sequence_first_and_its_retry(kind):
    """Rows in dim 1 (sequence-first), at a length equal to the shared row count (B + 1 = L: the
    call runs again with more rows), per example and for DeepLift SHAP, and under grad."""
    _, model = _twins(kind, seed=7)
    f = xattr.target(model, 1)
    x = _randn(3, 4, 8, seed=8)
    runs = {"shared": lambda: xattr.deep_lift(f, return_delta=True)(x),
            "paired": lambda: xattr.deep_lift(f, baselines=_randn(3, 4, 8, seed=9) * 0.1)(x),
            "shap": lambda: xattr.deep_lift_shap(f, baselines=_randn(2, 4, 8, seed=10) * 0.1)(x),
            "grad": lambda: grad(_squares(xattr.deep_lift(f)))(x)}
    _same_on_device_threads(runs, kind)


def test_the_simulation_runs_callbacks_in_an_empty_context():
    """The stand-in itself: a Function's backward and a tensor hook read a variable's default."""
    import contextvars

    var = contextvars.ContextVar("probe", default="default")
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 1

        @staticmethod
        def backward(ctx, g):
            seen.append(var.get())
            return g

    token = var.set("set")
    try:
        with device_threads():
            t = torch.ones(2, requires_grad=True)
            y = Probe.apply(t)
            y.register_hook(lambda g: seen.append(var.get()))
            y.sum().backward()
        Probe.apply(t).sum().backward()
    finally:
        var.reset(token)
    assert seen == ["default", "default", "set"]


def test_strict_refuses_a_read_of_xattrs_variables():
    """``strict=True``: a backward that indexes DeepLift's paired rows raises, where the default
    (``None`` rows) would have passed unseen."""
    from xattr._src.row_layout import _ROWS

    class Reads(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 1

        @staticmethod
        def backward(ctx, g):
            return g if _ROWS.get()[0] is None else g * 2

    t = torch.ones(2, requires_grad=True)
    with device_threads():
        Reads.apply(t).sum().backward()
    with device_threads(strict=True), pytest.raises(RuntimeError, match="read one of xattr's context variables"):
        Reads.apply(t).sum().backward()


@pytest.mark.parametrize("how", ["batch-major", "blocks"])
def test_deep_lift_on_merged_rows(how):
    """Rows merged with another dim, batch-major (run with the merged size as the call's rows) and
    in blocks (ruled on views), shared (the call stops and runs unshared) and paired, under grad:
    the forward decides all of it, the backward reads no context."""
    from test_deeplift_merged_rows import EXACT, _interleaved, _twins

    model = _twins(4, 5)[0] if how == "batch-major" else _interleaved("seq")
    x = _randn(3, 5, 4, seed=11)
    runs = {"shared": lambda: xattr.deep_lift(model, mapping=EXACT, return_delta=True)(x),
            "paired": lambda: xattr.deep_lift(model, baselines=_randn(3, 5, 4, seed=12), mapping=EXACT)(x),
            "grad": lambda: grad(_squares(xattr.deep_lift(model, mapping=EXACT)))(x)}
    _same_on_device_threads(runs, how)
