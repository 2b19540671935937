"""Derivatives of attribution maps (explanation-manipulation attacks, attribution-regularised
training, robustness): torch.func.grad / jacrev / jacfwd / vjp / hessian of a scalar of the
attribution, with respect to the input and to the weights (through functional_call), against
central differences of the attribution function itself, in float64.

NOTE: [Derivatives of rule-based attributions] in xattr/_src/rule_limits.py. Guided backprop,
deconvolution, guided Grad-CAM, LRP and layer LRP were refused under every differentiating
transform before (NotImplementedError), though the math is defined; the gradient methods
(saliency, input x gradient, integrated gradients) are the control group and already worked.
The models are smooth past their ReLUs (tanh, softplus) and the points are checked to keep
every ReLU input at least ``MARGIN`` from 0, so no step of the differences crosses a kink.
Tolerance: max |autodiff - central| <= RTOL * max |central| (+ a floor for exact zeros).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, vjp, vmap
from torch.overrides import TorchFunctionMode

import xattr
from xattr.rule import AlphaBeta, Flat, Gamma, WSquare, ZBox, ZPlus, epsilon_gamma_box, lrp_rules

DT = torch.float64
H = 1e-6  # central-difference step
RTOL = 1e-5  # measured: 1e-6 (LRP's z-box rule wrt conv weights: the step's h**2 term) to 1e-10 (guided backprop)
MARGIN = 1e-3  # no ReLU input closer to 0 than this at the points tested (checked)


def _mlp() -> nn.Module:
    torch.manual_seed(0)  # a ReLU feeding a tanh: the outer derivative must not follow the rule there
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softplus(),
                         nn.Linear(4, 3)).to(DT).eval()


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Conv2d(3, 4, 2)
        self.l1, self.l2 = nn.Linear(16, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.c1(x)), inplace=True), 2)  # in place, under the transforms too
        h = F.softplus(self.l1(torch.tanh(self.c2(h)).flatten(1)))
        return self.l2(h)


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    model = _CNN().to(DT).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


X_MLP = torch.randn(2, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
X_CNN = torch.rand(2, 2, 9, 9, dtype=DT, generator=torch.Generator().manual_seed(3))


def _relu_inputs_away_from_zero(model, x) -> None:
    """Every ReLU input (the MLP's nn.ReLU, the CNN's batch-norm output) is at least MARGIN from 0."""
    seen = []
    at = [model.bn] if isinstance(model, _CNN) else [m for m in model.modules() if isinstance(m, nn.ReLU)]
    read = (lambda m, args, out: out) if isinstance(model, _CNN) else (lambda m, args, out: args[0])
    handles = [m.register_forward_hook(lambda *call: seen.append(read(*call).abs().min())) for m in at]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(seen) == len(at) and min(seen) > MARGIN


def _central(fun, arg: torch.Tensor, idx) -> torch.Tensor:
    """Central differences of the scalar ``fun`` at the flat positions ``idx`` of ``arg``."""
    out = []
    for i in idx:
        e = torch.zeros(arg.numel(), dtype=arg.dtype)
        e[i] = H
        e = e.view_as(arg)
        out.append((fun(arg + e) - fun(arg - e)) / (2 * H))
    return torch.stack(out)


def _assert_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    err, scale = (got - ref).abs().max().item(), ref.abs().max().item()
    assert scale > 0, "a derivative that is zero here tests nothing"
    assert err <= RTOL * scale + 1e-13, f"off by {err:.2e} where the derivative's largest entry is {scale:.2e}"


def check_grads(make, model: nn.Module, x: torch.Tensor, params) -> None:
    """grad of the squared attribution ``make(forward)`` with respect to x (every entry) and to the
    parameters named in ``params`` (their largest entries, and their first two, where a wrong zero
    would show; through functional_call), against central differences."""
    s = _squared(make(model))
    _assert_close(grad(s)(x).reshape(-1), _central(s, x, range(x.numel())))
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}

    def penalty(p):
        return _squared(make(lambda v: functional_call(model, p, (v,))))(x)

    got = grad(penalty)(weights)
    for key in params:
        flat = got[key].reshape(-1)
        idx = sorted(set(flat.abs().topk(min(4, flat.numel())).indices.tolist()) | {0, 1})
        _assert_close(flat[idx], _central(lambda w, key=key: penalty({**weights, key: w}), weights[key], idx))


def _methods(f, split=None, root=None) -> dict:
    out = {
        "saliency": lambda: xattr.saliency(f, abs=False),  # control group: plain gradients
        "input_x_gradient": lambda: xattr.input_x_gradient(f),
        "integrated_gradients": lambda: xattr.integrated_gradients(f, n_steps=8),
        "guided_backprop": lambda: xattr.guided_backprop(f),
        "deconvolution": lambda: xattr.deconvolution(f),
        "lrp": lambda: xattr.lrp(f),  # epsilon everywhere
    }
    if split is not None:
        out.update({
            "guided_grad_cam": lambda: xattr.guided_grad_cam(split),
            "layer_lrp": lambda: xattr.layer_lrp(split),
            # a neuron past a tanh: at c2 (before it) guided backprop is piecewise constant in x
            "neuron_guided_backprop": lambda: xattr.guided_backprop(xattr.neuron(xattr.at_layer(f, root.l1), 2)),
            "lrp_epsilon_gamma_box": lambda: xattr.lrp(f, composite=epsilon_gamma_box("c1", 0.0, 1.0), root=root),
            "lrp_alpha_beta": lambda: xattr.lrp(f, composite={**lrp_rules(), nn.Conv2d: AlphaBeta(2.0, 1.0)}),
            "lrp_flat": lambda: xattr.lrp(f, composite={**lrp_rules(), "c1": Flat()}, root=root),
            "lrp_w_square": lambda: xattr.lrp(f, composite={**lrp_rules(), "c1": WSquare()}, root=root),
        })
    return out


MLP_METHODS = list(_methods(None))
CNN_METHODS = MLP_METHODS + ["guided_grad_cam", "layer_lrp", "neuron_guided_backprop", "lrp_epsilon_gamma_box",
                             "lrp_alpha_beta", "lrp_flat", "lrp_w_square"]


def _attr_fn(name: str, model: nn.Module, forward=None):
    """The attribution function ``name`` of ``forward`` (default: the model): the MLP's class 1, the
    CNN's class 0 (whose Grad-CAM map at c2 is not all zero)."""
    cnn = isinstance(model, _CNN)
    f = xattr.target(model if forward is None else forward, 0 if cnn else 1)
    return _methods(f, xattr.at_layer(f, model.c2) if cnn else None, model)[name]()


def _weights_for(a: torch.Tensor) -> torch.Tensor:
    """Fixed weights of a's shape, no randomness (jacrev and hessian vmap over the scalar)."""
    return torch.linspace(-1.0, 1.5, a.numel(), dtype=DT).reshape(a.shape)


def _squared(attr_fn):
    """sum(w * attr**2): the scalar whose gradient an attack or a penalty takes."""
    def s(v):
        a = attr_fn(v)
        return (_weights_for(a) * a**2).sum()
    return s


@pytest.mark.parametrize("name", MLP_METHODS)
def test_grad_wrt_input_of_squared_attribution_mlp(name):
    model = _mlp()
    _relu_inputs_away_from_zero(model, X_MLP)
    s = _squared(_attr_fn(name, model))
    _assert_close(grad(s)(X_MLP).reshape(-1), _central(s, X_MLP, range(X_MLP.numel())))


@pytest.mark.parametrize("name", CNN_METHODS)
def test_grad_wrt_input_of_squared_attribution_cnn(name):
    model = _cnn()
    _relu_inputs_away_from_zero(model, X_CNN)
    s = _squared(_attr_fn(name, model))
    got = grad(s)(X_CNN).reshape(-1)
    # the 4 largest entries, and 4 drawn (where a wrong zero would show)
    idx = got.abs().topk(4).indices.tolist() + torch.randperm(got.numel(), generator=torch.Generator().manual_seed(5))[:4].tolist()
    _assert_close(got[idx], _central(s, X_CNN, idx))


@pytest.mark.parametrize("name", ["integrated_gradients", "guided_backprop", "deconvolution", "lrp", "guided_grad_cam",
                                  "layer_lrp", "lrp_epsilon_gamma_box"])
def test_grad_wrt_weights_of_squared_attribution(name):
    """A 'right for the right reasons' penalty ||attr * mask||^2 differentiated with respect to the
    weights, through functional_call, against differences of each parameter in turn."""
    model = _cnn()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    mask = (torch.arange(81, dtype=DT).reshape(9, 9) % 3 == 0).to(DT)

    def penalty(p):
        attr = _attr_fn(name, model, lambda v: functional_call(model, p, (v,)))(X_CNN)
        return ((attr * (mask if attr.shape == X_CNN.shape else 1.0)) ** 2).sum()  # layer_lrp: c2's output

    got = grad(penalty)(params)
    for key in ("c1.weight", "bn.weight", "c2.weight", "l1.bias"):
        def moved(w, key=key):
            return penalty({**params, key: w})
        idx = list(range(min(5, params[key].numel())))
        _assert_close(got[key].reshape(-1)[idx], _central(moved, params[key], idx))


@pytest.mark.parametrize("name", ["guided_backprop", "deconvolution", "lrp", "integrated_gradients"])
def test_jacobians_of_attribution_reverse_and_forward_mode(name):
    model = _mlp()
    attr = _attr_fn(name, model)
    rev, fwd = jacrev(attr)(X_MLP), jacfwd(attr)(X_MLP)  # (2, 5, 2, 5)
    n = X_MLP.numel()
    fd = torch.stack([(attr(X_MLP + H * e.view_as(X_MLP)) - attr(X_MLP - H * e.view_as(X_MLP))) / (2 * H)
                      for e in torch.eye(n, dtype=DT)], -1)
    _assert_close(rev.reshape(n, n), fd.reshape(n, n))
    torch.testing.assert_close(fwd, rev, rtol=1e-9, atol=1e-12)
    out, pull = vjp(attr, X_MLP)
    torch.testing.assert_close(out, attr(X_MLP))
    cot = _weights_for(out)
    torch.testing.assert_close(pull(cot)[0], torch.einsum("ij,jk->k", cot.reshape(1, n), rev.reshape(n, n)).view_as(X_MLP))


@pytest.mark.parametrize("name", ["guided_backprop", "lrp"])
def test_hessian_of_squared_attribution(name):
    model = _mlp()
    s = _squared(_attr_fn(name, model))
    g = grad(s)
    n = X_MLP.numel()
    fd = torch.stack([(g(X_MLP + H * e.view_as(X_MLP)) - g(X_MLP - H * e.view_as(X_MLP))) / (2 * H)
                      for e in torch.eye(n, dtype=DT)], -1)
    rev = jacrev(jacrev(s))(X_MLP).reshape(n, n)
    _assert_close(rev, fd.reshape(n, n))
    torch.testing.assert_close(hessian(s)(X_MLP).reshape(n, n), rev, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["guided_backprop", "deconvolution", "lrp", "integrated_gradients", "input_x_gradient"])
def test_vmap_over_grad_of_attribution_is_per_example(name):
    model = _mlp()
    attr = _attr_fn(name, model)
    per_example = vmap(grad(lambda v: (attr(v[None]) ** 2).sum()))(X_MLP)
    torch.testing.assert_close(per_example, grad(lambda v: (attr(v) ** 2).sum())(X_MLP))


@pytest.mark.parametrize("name", ["guided_backprop", "lrp", "guided_grad_cam"])
def test_attribution_inside_a_gradient_transform_has_its_first_order_values(name):
    model = _cnn()
    attr = _attr_fn(name, model)

    def loss(v):
        a = attr(v)
        return (a**2).sum(), a

    _, inside = grad(loss, has_aux=True)(X_CNN)
    torch.testing.assert_close(inside, attr(X_CNN))


def test_grad_of_attribution_agrees_with_plain_autograd_double_backward():
    """Control: xattr.saliency inside torch.func.grad against torch.autograd with create_graph=True."""
    model = _mlp()
    x = X_MLP.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(x)[:, 1].sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad((g**2).sum(), x)
    got = grad(lambda v: (xattr.saliency(xattr.target(model, 1), abs=False)(v) ** 2).sum())(X_MLP)
    torch.testing.assert_close(got, expected)


def test_create_graph_through_rules_with_plain_autograd_is_refused():
    """Pins the behaviour before this file: no mark ends the first-order pass of a user's own
    torch.autograd.grad, so the second backward would follow the rules (NOTE: [Rule-based
    attributions are first-order])."""
    model = _mlp()
    ruled = xattr.rules(model, {F.relu: xattr.rule.Guided()})
    x = X_MLP.clone().requires_grad_()
    with pytest.raises(NotImplementedError, match="create_graph=True.*torch.func.grad"):
        torch.autograd.grad(ruled(x)[:, 1].sum(), x, create_graph=True)


def test_attributions_outside_transforms_are_detached():
    """Pins NOTE: [Detached results]: a penalty added to a loss with plain autograd has no gradient;
    attribution-regularised training goes through torch.func.grad (tests above)."""
    model = _mlp()
    for name in ("saliency", "guided_backprop", "lrp"):
        assert not _attr_fn(name, model)(X_MLP).requires_grad


@pytest.mark.parametrize("name", ["deep_lift", "deep_lift_shap"])
def test_deep_lift_derivatives_match_central_differences(name):
    """Refused before (NotImplementedError: its multipliers were computed in place). Every
    DeepLift rule, layer and neuron forms: tests/test_attribution_derivatives_deeplift.py."""
    model = _mlp()
    f = xattr.target(model, 1)
    ref = torch.full_like(X_MLP, 0.1)
    dist = torch.randn(3, 5, dtype=DT, generator=torch.Generator().manual_seed(6))

    def make(eps, forward=model):
        g = xattr.target(forward, 1)
        return xattr.deep_lift(g, baselines=ref, eps=eps) if name == "deep_lift" else xattr.deep_lift_shap(g, baselines=dist, eps=eps)

    for point in (X_MLP, ref, dist):
        _relu_inputs_away_from_zero(model, point)
    # no difference x - x_ref the rules divide by is below MARGIN (eps switches to the derivative)
    torch.testing.assert_close(make(MARGIN)(X_MLP), make(1e-10)(X_MLP), rtol=0, atol=1e-13)
    check_grads(lambda forward: make(1e-10, forward), model, X_MLP, ("0.weight", "2.bias", "4.weight"))


# --------------------------------------------------------------------------- LRP's rule families


class _Linears(TorchFunctionMode):
    """Records every F.linear's input, weight and output seen from outside fused calls."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            self.seen.append((args[0], args[1], out))
        return out


def _linears_away_from_zero(model, x, *, inputs: bool) -> None:
    """Every LRP denominator (a linear's output z) at least MARGIN from 0; with ``inputs``, also
    every input and weight entry, where alpha-beta, z+ and gamma split positive from negative."""
    with _Linears() as rec, torch.no_grad():
        model(x)
    assert rec.seen
    for a, w, z in rec.seen:
        assert z.abs().min() > MARGIN
        assert not inputs or min(a.abs().min(), w.abs().min()) > MARGIN


class _Transformer(nn.Module):
    """nn.MultiheadAttention (Unfused: F.linear with Epsilon, SDPA with FixedAttention), layer
    norm (FixedStd), GLU (FixedGate); ``weights``: the attention weights feed the output too."""

    def __init__(self, weights: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.mha, self.ln = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.LayerNorm(8)
        self.out, self.weights = nn.Linear(4, 3), weights
        self.to(DT).eval()

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        a, w = self.mha(h, h, h, need_weights=self.weights)
        h = self.ln(h + a + (w @ h if self.weights else 0))
        return self.out(F.glu(h).mean(1))


class _Attention(nn.Module):
    """F.scaled_dot_product_attention, causal (FixedAttention), and RMS norm (FixedStd)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.q, self.k, self.v, self.rms, self.out = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(4, 6), nn.RMSNorm(6), nn.Linear(6, 3)
        self.to(DT).eval()

    def forward(self, x):
        return self.out(self.rms(F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), is_causal=True)).sum(1))


class _Recurrent(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(2)
        self.r, self.out = getattr(nn, kind)(4, 5, batch_first=True), nn.Linear(5, 3)
        self.to(DT).eval()

    def forward(self, x):
        return self.out(self.r(x)[0][:, -1])


class _Gated(nn.Module):
    """A squeeze-and-excitation gate (FixedGate holds it), and a parameter concatenated beside the
    input before the first layer (which an input-layer rule reads)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.p = nn.Parameter(torch.randn(2))
        self.a, self.g, self.b, self.out = nn.Linear(6, 6), nn.Linear(6, 1), nn.Linear(6, 5), nn.Linear(5, 3)
        self.to(DT).eval()

    def forward(self, x):
        h = F.softplus(self.a(torch.cat([x, torch.tanh(self.p).expand(x.shape[0], 2)], 1)))
        return self.out(torch.tanh(self.b(h * torch.sigmoid(self.g(h)))))


X_SEQ = torch.randn(2, 3, 4, dtype=DT, generator=torch.Generator().manual_seed(7))
X_VEC = torch.randn(2, 4, dtype=DT, generator=torch.Generator().manual_seed(8))
_LRP_CASES = {  # name: (model, input, parameters checked, composite or None, whether inputs and weights are split by sign)
    "transformer": (lambda: _Transformer(), X_SEQ, ("inp.weight", "mha.in_proj_weight", "ln.weight"), None, False),
    "attention_weights_used": (lambda: _Transformer(weights=True), X_SEQ, ("inp.weight", "mha.in_proj_weight"), None, False),
    "sdpa_rms_norm": (_Attention, X_SEQ, ("q.weight", "v.weight", "rms.weight"), None, False),
    "lstm": (lambda: _Recurrent("LSTM"), X_SEQ, ("r.weight_hh_l0", "r.weight_ih_l0"), None, False),
    "gru": (lambda: _Recurrent("GRU"), X_SEQ, ("r.weight_hh_l0", "r.bias_hh_l0"), None, False),
    "se_gate": (_Gated, X_VEC, ("a.weight", "g.weight"), None, False),
    "alpha_beta": (_Gated, X_VEC, ("a.weight", "b.weight"), {F.linear: AlphaBeta(2.0, 1.0)}, True),
    "z_plus": (_Gated, X_VEC, ("a.weight", "b.weight"), {F.linear: ZPlus()}, True),
    "gamma": (_Gated, X_VEC, ("a.weight", "b.weight"), {F.linear: Gamma(0.25)}, True),
    "z_box_beside_a_parameter": (_Gated, X_VEC, ("p", "a.weight"), {"a": ZBox(-3.0, 3.0)}, False),
    "flat_beside_a_parameter": (_Gated, X_VEC, ("p", "g.weight"), {"a": Flat()}, False),
}


@pytest.mark.parametrize("name", list(_LRP_CASES))
def test_lrp_rule_families_under_derivatives(name):
    """The attention weights torch returns, and what is concatenated beside an input that an
    input-layer rule reads, were detached in the forward: their whole derivative was lost (3% of
    the input gradient; 100% of the parameter's)."""
    build, x, params, rules, signs = _LRP_CASES[name]
    model = build()
    _linears_away_from_zero(model, x, inputs=signs)
    composite = None if rules is None else {**lrp_rules(), **rules}
    check_grads(lambda forward: xattr.lrp(xattr.target(forward, 1), composite=composite, root=model), model, x, params)


def test_guided_backprop_through_a_fused_lstm_is_its_ordinary_derivative():
    """No ReLU: guided backprop is the gradient, and its derivative the second derivative."""
    model = _Recurrent("LSTM")
    check_grads(lambda forward: xattr.guided_backprop(xattr.target(forward, 1)), model, X_SEQ, ("r.weight_hh_l0",))
    torch.testing.assert_close(xattr.guided_backprop(xattr.target(model, 1))(X_SEQ), xattr.saliency(xattr.target(model, 1), abs=False)(X_SEQ))
