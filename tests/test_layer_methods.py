"""Layer methods against slow references: explicit loops over examples and path steps, layer
values and gradients taken with a plain forward hook and torch.autograd.grad."""

import numpy as np
import pytest
import torch
from torch import nn

import xattr
from xattr.testing import check_batch_invariance, check_chunk_invariance

D = torch.float64


class Net(nn.Module):
    """An MLP with a pass-through scale, a shared Softplus used twice and an unused branch."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)
        self.act = nn.Softplus()

    def forward(self, x, scale=1.0):
        h = self.act(self.l1(x))
        return self.l3(self.act(self.l2(h)) * scale)


class Pair(nn.Module):
    """A layer returning a tuple of two tensors."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return torch.tanh(self.a(x)), torch.sin(self.b(x))


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair, self.out = Pair(), nn.Linear(5, 3)

    def forward(self, x):
        a, b = self.pair(x)
        return self.out(torch.cat([a * a, b], 1))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        h = nn.functional.softplus(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(h.flatten(1))


def _build(cls, seed=0):
    torch.manual_seed(seed)
    return cls().double().eval()


def _randn(seed, *shape):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


X = _randn(1, 3, 4)
B = _randn(2, 3, 4) * 0.3
IMG = _randn(3, 2, 2, 4, 4)
T3 = torch.tensor([2, 0, 1])


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------- references


def _h_and_grad(model, layer, row, out_index, *args, sub=None, call=0):
    """h and dF/dh for one example: a forward hook that (optionally) substitutes ``sub`` at the
    layer's ``call``-th call; the gradient is taken with respect to the tensor(s) the hook returns."""
    seen, count = {}, [0]

    def hook(module, inp, out):
        k, count[0] = count[0], count[0] + 1
        if k != call:
            return None
        base = out if sub is None else sub
        fresh = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
        new = tuple(fresh(t) for t in base) if isinstance(base, tuple) else fresh(base)
        seen["h"] = new
        return new

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y = model(row, *args)[0, out_index]
            h = seen["h"]
            g = torch.autograd.grad(y, list(h) if isinstance(h, tuple) else h)
    finally:
        handle.remove()
    if isinstance(h, tuple):
        return tuple(t.detach() for t in h), tuple(g)
    return h.detach(), g[0]


def _nodes(method, n):
    """Quadrature nodes and weights on [0, 1], written out independently of xattr."""
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return list(0.5 * (x + 1)), list(0.5 * w)
    if method == "riemann_trapezoid":
        return [i / (n - 1) for i in range(n)], [(0.5 if i in (0, n - 1) else 1.0) / (n - 1) for i in range(n)]
    off = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return [(i + off) / n for i in range(n)], [1.0 / n] * n


def ref_lig(model, layer, x, b, t, n, method, *args):
    rows = []
    for i in range(x.shape[0]):
        hx, _ = _h_and_grad(model, layer, x[i : i + 1], t[i], *args)
        hb, _ = _h_and_grad(model, layer, b[i : i + 1], t[i], *args)
        total = torch.zeros_like(hx)
        for a, w in zip(*_nodes(method, n)):
            _, g = _h_and_grad(model, layer, x[i : i + 1], t[i], *args, sub=hb + a * (hx - hb))
            total += w * g
        rows.append((hx - hb) * total)
    return torch.cat(rows)


def ref_input_path(model, layer, x, b, t, alphas, *args, call=0):
    """[(h, dF/dh)] at the points b + a (x - b), per example."""
    out = []
    for i in range(x.shape[0]):
        xi, bi = x[i : i + 1], b[i : i + 1]
        out.append([_h_and_grad(model, layer, bi + a * (xi - bi), t[i], *args, call=call) for a in alphas])
    return out


def ref_conductance(model, layer, x, b, t, n, method, *args, call=0):
    alphas, _ = _nodes(method, n + 1)
    out = []
    for pts in ref_input_path(model, layer, x, b, t, alphas, *args, call=call):
        out.append(sum(pts[i][1] * (pts[i + 1][0] - pts[i][0]) for i in range(n)))
    return torch.cat(out)


def ref_internal_influence(model, layer, x, b, t, n, method, *args):
    alphas, weights = _nodes(method, n)
    paths = ref_input_path(model, layer, x, b, t, alphas, *args)
    return torch.cat([sum(w * g for w, (_, g) in zip(weights, pts)) for pts in paths])


# ----------------------------------------------------------------------------- one-pass methods


def test_layer_activation_and_gradient_x_activation_match_hooks():
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, T3), model.l2)
    h = xattr.layer_activation(split)(X)
    gxa = xattr.gradient_x_activation(split)(X)
    grad = xattr.gradient_x_activation(split, multiply=False)(X)
    for i in range(3):
        hi, gi = _h_and_grad(model, model.l2, X[i : i + 1], T3[i])
        torch.testing.assert_close(h[i : i + 1], hi)
        torch.testing.assert_close(grad[i : i + 1], gi)
        torch.testing.assert_close(gxa[i : i + 1], gi * hi)
    assert not (h.requires_grad or gxa.requires_grad) and _no_hooks(model)


@pytest.mark.parametrize("relu, sum_channels", [(True, True), (False, True), (False, False)])
def test_grad_cam_by_hand(relu, sum_channels):
    model = _build(Cnn)
    cam = xattr.grad_cam(xattr.at_layer(xattr.target(model, 1), model.conv2), relu=relu, sum_channels=sum_channels)(IMG)
    for i in range(2):
        h, g = _h_and_grad(model, model.conv2, IMG[i : i + 1], 1)  # (1, C, 3, 3)
        w = torch.stack([g[0, c].mean() for c in range(h.shape[1])])  # one weight per channel
        maps = torch.stack([w[c] * h[0, c] for c in range(h.shape[1])])
        want = maps.sum(0, keepdim=True) if sum_channels else maps
        want = torch.clamp(want, min=0) if relu else want
        torch.testing.assert_close(cam[i], want)
    assert cam.shape == ((2, 1, 3, 3) if sum_channels else (2, 4, 3, 3))


def test_upsample_and_grad_cam_k_outputs():
    model = _build(Cnn)
    split = xattr.at_layer(xattr.target(model, xattr.outputs([2, 0])), model.conv2)
    many = xattr.grad_cam(split, relu=False)(IMG)
    assert many.shape == (2, 2, 1, 3, 3)
    for k, t in enumerate([2, 0]):
        one = xattr.grad_cam(xattr.at_layer(xattr.target(model, t), model.conv2), relu=False)(IMG)
        torch.testing.assert_close(many[:, k], one)
        up_many, up_one = xattr.upsample(many, (4, 4), mode="bilinear"), xattr.upsample(one, (4, 4), mode="bilinear")
        torch.testing.assert_close(up_many[:, k], up_one)
    up = xattr.upsample(many[:, 0], (6, 6))
    assert up.shape == (2, 1, 6, 6)
    torch.testing.assert_close(up[:, :, ::2, ::2], many[:, 0])  # nearest, factor 2


# ----------------------------------------------------------------------------- path methods


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_trapezoid"])
def test_layer_integrated_gradients_reference(method):
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, T3), model.l2)
    attr = xattr.layer_integrated_gradients(split, baselines=B, n_steps=6, method=method)(X, 1.5)
    torch.testing.assert_close(attr, ref_lig(model, model.l2, X, B, T3, 6, method, 1.5))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_right", "riemann_middle", "riemann_trapezoid"])
def test_conductance_reference(method):
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, T3), model.l2)
    attr = xattr.conductance(split, baselines=B, n_steps=5, method=method)(X, 0.5)
    torch.testing.assert_close(attr, ref_conductance(model, model.l2, X, B, T3, 5, method, 0.5))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_trapezoid"])
def test_internal_influence_reference(method):
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, T3), model.l1)
    attr = xattr.internal_influence(split, baselines=B, n_steps=5, method=method)(X)
    torch.testing.assert_close(attr, ref_internal_influence(model, model.l1, X, B, T3, 5, method))


def test_conductance_is_the_chain_rule_integral():
    """Against the definition: sum_i dF/dh_j(x_i) * (dh_j/dx(x_i) . (x - b)) * da, many steps."""
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, 1), model.l2)
    cond = xattr.conductance(split, baselines=B, n_steps=400, method="riemann_trapezoid")(X)
    n = 400
    for i in range(3):
        total = torch.zeros(5, dtype=D)
        for a in (np.arange(n) + 0.5) / n:
            xi = (B[i : i + 1] + a * (X[i : i + 1] - B[i : i + 1])).requires_grad_()
            with torch.enable_grad():
                h = model.l2(model.act(model.l1(xi)))
            _, g = _h_and_grad(model, model.l2, xi.detach(), 1)
            for j in range(5):
                (dh,) = torch.autograd.grad(h[0, j], xi, retain_graph=True)
                total[j] += g[0, j] * (dh * (X[i] - B[i])).sum() / n
        torch.testing.assert_close(cond[i], total, atol=2e-3, rtol=2e-3)


def test_completeness():
    model = _build(Net)
    f = xattr.target(model, T3)
    gap = f(X, 1.5) - f(B, 1.5)
    split = xattr.at_layer(f, model.l2)
    lig, d1 = xattr.layer_integrated_gradients(split, baselines=B, n_steps=40, return_delta=True)(X, 1.5)
    torch.testing.assert_close(lig.sum(1), gap.detach(), atol=1e-9, rtol=0)
    assert d1.abs().max() < 1e-9
    cond, d2 = xattr.conductance(split, baselines=B, n_steps=300, method="riemann_trapezoid", return_delta=True)(X, 1.5)
    torch.testing.assert_close(d2, cond.sum(1) - gap.detach())
    assert d2.abs().max() < 1e-3 * gap.abs().max()
    # F is affine in the input of l3: conductance there is exact for any number of steps
    last = xattr.at_layer(f, model.l3, inputs=True)
    _, d3 = xattr.conductance(last, baselines=B, n_steps=3, method="riemann_trapezoid", return_delta=True)(X, 1.5)
    assert d3.abs().max() < 1e-12


def test_layer_ig_on_integer_inputs_and_conductance_refuses_them():
    torch.manual_seed(0)
    emb, lin = nn.Embedding(10, 3).double(), nn.Linear(3, 2).double()
    text = lambda ids: lin(torch.tanh(emb(ids)).mean(1))  # noqa: E731
    ids, pad = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.zeros(2, 3, dtype=torch.long)
    split = xattr.at_layer(xattr.target(text, 1), emb)
    attr, delta = xattr.layer_integrated_gradients(split, baselines=pad, n_steps=64, return_delta=True)(ids)
    assert attr.shape == (2, 3, 3) and delta.abs().max() < 1e-8
    with pytest.raises(TypeError, match="at_layer"):
        xattr.conductance(split)(ids)


# ----------------------------------------------------------------------------- gradient shap


def test_layer_gradient_shap_reference():
    """Explicit loops over examples and samples, with xattr's draws (same streams as gradient_shap)."""
    from xattr._src.sampling import index_rows, normal_like, streams, uniform_rows

    model = _build(Net)
    dist = _randn(5, 4, 4) * 0.5
    split = xattr.at_layer(xattr.target(model, T3), model.l2)
    lgs = xattr.layer_gradient_shap(split, baselines=dist, n_samples=4, stdevs=0.2, generator=7, return_delta=True)
    attr, delta = lgs(X)
    gens = streams(7, 3)
    noise = normal_like(X, 4, 0.2, gens[0])
    idx, alphas = index_rows(3, 4, 4, gens[1], X.device), uniform_rows(3, 4, gens[2], X)
    for i in range(3):
        total = torch.zeros(1, 5, dtype=D)
        for s in range(4):
            xn, b, a = X[i : i + 1] + noise[s, i], dist[idx[s, i]][None], alphas[s, i]
            _, g = _h_and_grad(model, model.l2, b + a * (xn - b), T3[i])
            hx, _ = _h_and_grad(model, model.l2, xn, T3[i])
            hb, _ = _h_and_grad(model, model.l2, b, T3[i])
            total += g * (hx - hb) / 4
            gap = (g * (hx - hb)).sum() - (model(xn)[0, T3[i]] - model(b)[0, T3[i]])
            torch.testing.assert_close(delta[i * 4 + s], gap.detach())
        torch.testing.assert_close(attr[i : i + 1], total)


def test_layer_gradient_shap_at_the_input_is_gradient_shap():
    model = _build(Net)
    f = xattr.target(model, T3)
    dist = _randn(5, 4, 4)
    kw = dict(baselines=dist, n_samples=5, stdevs=0.3, generator=3)
    split = xattr.at_layer(f, model.l1, inputs=True)  # the layer's input is x itself
    for mult in (True, False):
        layer = xattr.layer_gradient_shap(split, multiply_by_inputs=mult, **kw)(X)
        torch.testing.assert_close(layer, xattr.gradient_shap(f, multiply_by_inputs=mult, **kw)(X))


# ----------------------------------------------------------------------------- invariants


def _methods(split, generator=0, chunk_size=None):
    dist = _randn(6, 3, 4)
    return {
        "gxa": xattr.gradient_x_activation(split),
        "grad_cam": xattr.grad_cam(split, relu=False),
        "lig": xattr.layer_integrated_gradients(split, baselines=0.1, n_steps=5, chunk_size=chunk_size),
        "conductance": xattr.conductance(split, baselines=0.1, n_steps=5, chunk_size=chunk_size),
        "internal_influence": xattr.internal_influence(split, baselines=0.1, n_steps=5, chunk_size=chunk_size),
        "layer_gradient_shap": xattr.layer_gradient_shap(
            split, baselines=dist, n_samples=4, stdevs=0.1, generator=generator, chunk_size=chunk_size
        ),
    }


NAMES = ["gxa", "grad_cam", "lig", "conductance", "internal_influence", "layer_gradient_shap"]


@pytest.mark.parametrize("name", NAMES)
def test_chunk_size_does_not_change_results(name):
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, T3), model.l2)
    make = lambda c: _methods(split, chunk_size=c)[name]  # noqa: E731
    check_chunk_invariance(make, X, 2.0, chunk_sizes=(1, 4, 7), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_batch_result_is_the_per_example_loop(name):
    """Seeded layer_gradient_shap draws by batch position: a prefix of the batch gives the same rows."""
    model = _build(Net)
    scale = torch.tensor([[1.0], [2.0], [0.5]], dtype=D)  # per-example pass-through argument

    def fn(x, t, scale):
        return _methods(xattr.at_layer(xattr.target(model, t), model.l2))[name](x, scale)

    check_batch_invariance(fn, X, T3, scale, by="prefix" if name == "layer_gradient_shap" else "example")
    assert not fn(X, T3, scale).requires_grad and _no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_k_outputs_in_one_call(name):
    model = _build(Net)
    many = _methods(xattr.at_layer(xattr.target(model, xattr.outputs([2, 0])), model.l2))[name](X)
    assert many.shape[:2] == (3, 2)
    for k, t in enumerate([2, 0]):
        torch.testing.assert_close(many[:, k], _methods(xattr.at_layer(xattr.target(model, t), model.l2))[name](X))


@pytest.mark.parametrize("name", ["lig", "conductance", "internal_influence"])
def test_baselines_call_keyword(name):
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, 0), model.l2)
    methods = dict(lig=xattr.layer_integrated_gradients, conductance=xattr.conductance)
    build = methods.get(name, xattr.internal_influence)
    torch.testing.assert_close(build(split, n_steps=4)(X, baselines=B), build(split, n_steps=4, baselines=B)(X))


def test_reused_module_with_call_index():
    model = _build(Net)  # model.act runs twice; call 1 is after l2
    split = xattr.at_layer(xattr.target(model, T3), model.act, call_index=1)
    torch.testing.assert_close(
        xattr.conductance(split, baselines=B, n_steps=4)(X),
        ref_conductance(model, model.act, X, B, T3, 4, "gausslegendre", call=1),
    )
    gxa = xattr.gradient_x_activation(split)(X)
    for i in range(3):
        h, g = _h_and_grad(model, model.act, X[i : i + 1], T3[i], call=1)
        torch.testing.assert_close(gxa[i : i + 1], g * h)
    with pytest.raises(RuntimeError, match="call_index"):
        xattr.conductance(xattr.at_layer(model, model.act))(X)
    assert _no_hooks(model)


def test_tuple_output_layer():
    model = _build(TupleNet)
    f = xattr.target(model, T3)
    split = xattr.at_layer(f, model.pair)
    gxa = xattr.gradient_x_activation(split)(X)
    lig, delta = xattr.layer_integrated_gradients(split, baselines=B, n_steps=50, return_delta=True)(X)
    cond = xattr.conductance(split, baselines=B, n_steps=4)(X)
    assert isinstance(gxa, tuple) and [t.shape for t in lig] == [(3, 3), (3, 2)]
    assert delta.abs().max() < 1e-8
    alphas, _ = _nodes("gausslegendre", 5)
    for i in range(3):
        h, g = _h_and_grad(model, model.pair, X[i : i + 1], T3[i])
        for k in range(2):
            torch.testing.assert_close(gxa[k][i : i + 1], g[k] * h[k])
        pts = ref_input_path(model, model.pair, X[i : i + 1], B[i : i + 1], T3[i : i + 1], alphas)[0]
        for k in range(2):
            want = sum(pts[s][1][k] * (pts[s + 1][0][k] - pts[s][0][k]) for s in range(4))
            torch.testing.assert_close(cond[k][i : i + 1], want)
    assert _no_hooks(model)


def test_no_hooks_left_after_an_error():
    model = _build(Net)
    split = xattr.at_layer(xattr.target(model, 7), model.l2)  # target out of range: raised in the forward
    for fn in _methods(split).values():
        with pytest.raises(IndexError):
            fn(X)
        assert _no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_inside_torch_func(name):
    """Inside torch.func.grad the layer gradients are act + a VJP of head, so attributions compose:
    the input gradient of sum(attributions) equals central finite differences."""
    model = _build(Net)
    fn = _methods(xattr.at_layer(xattr.target(model, T3), model.l2))[name]
    g = torch.func.grad(lambda x: fn(x).sum())(X)
    eps = 1e-6
    for i, j in [(0, 1), (2, 3)]:
        e = torch.zeros_like(X)
        e[i, j] = eps
        torch.testing.assert_close(g[i, j], (fn(X + e).sum() - fn(X - e).sum()) / (2 * eps), atol=1e-7, rtol=1e-6)


def test_a_layer_input_that_also_feeds_a_skip_counts_only_the_paths_through_the_module():
    """docs/layers.md section 6: inputs=True is the input as the module receives it. Reference:
    the gradient with respect to a copy of the input given to the module alone (the skip keeps
    the original), by autograd."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.block, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            u = torch.tanh(self.a(x))
            return self.out(torch.tanh(self.block(u)) + u)

    torch.manual_seed(0)
    model = Residual().double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    u = torch.tanh(model.a(x)).detach().requires_grad_()
    through = model.out(torch.tanh(model.block(u)) + u.detach())[:, 1].sum()
    (module_only,) = torch.autograd.grad(through, u)
    split = xattr.at_layer(xattr.target(model, 1), model.block, inputs=True)
    got = xattr.gradient_x_activation(split, multiply=False)(x)
    torch.testing.assert_close(got, module_only)
    (every_use,) = torch.autograd.grad(model.out(torch.tanh(model.block(u)) + u)[:, 1].sum(), u)
    assert not torch.allclose(got, every_use)  # Captum's gradient methods' answer (docs/migration.md)


@pytest.mark.parametrize("method", ["conductance", "internal_influence"])
def test_a_layer_whose_outputs_are_not_batch_first_is_a_clear_error(method):
    """nn.LSTM returns (output, (h_n, c_n)) with h_n of shape (layers, B, H); torch said only
    "shape '[51, 0, 306, 4]' is invalid"."""

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    model = Recurrent().eval()
    split = xattr.at_layer(xattr.target(model, 0), model.rnn)
    with pytest.raises(ValueError, match=r"dim 0 is not the batch"):
        getattr(xattr, method)(split, n_steps=3)(torch.randn(6, 5, 3))
