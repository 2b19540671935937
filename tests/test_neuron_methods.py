"""Neuron methods and token inputs: slow references, K neurons at once, invariances, embeddings.

Neuron gradient, neuron IG and neuron gradient SHAP are compositions with ``xattr.neuron``;
neuron conductance is ``xattr.neuron_conductance``. Each is checked against a slow reference
that loops over examples, neurons and path steps one at a time with torch.autograd.grad on the
module's captured activation. The embedding tests attribute a tiny text model at its embedding
and compare with Captum's LayerIntegratedGradients (stored numbers).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import xattr

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_neuron_expected as E
    from . import gen_captum_neuron_expected as G
except ImportError:
    import captum_neuron_expected as E
    import gen_captum_neuron_expected as G

MODELS = G.build_models()
X, IMG, X1, X2, SCALE = G.X, G.IMG, G.X1, G.X2, G.SCALE


class InPlace(nn.Module):
    """An in-place ReLU right after the split layer, and a skip connection around it."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(7)
            self.l1, self.l2, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.inplace = inplace

    def forward(self, x):
        h = self.l1(x)
        h = torch.relu_(h) if self.inplace else torch.relu(h)
        return self.out(torch.tanh(self.l2(h)) + h)


# ----------------------------------------------------------------------------- slow references


def _capture(model, layer, args, inputs=False):
    """model(*args) and the layer's output (or first input) tensor as the forward saw it."""
    seen = []
    if inputs:
        handle = layer.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    else:
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        out = model(*args)
    finally:
        handle.remove()
    return out, seen[0]


def _pick(h, idx):
    """One example's neuron: h (1, ...) indexed by idx (slices summed), or a callable's value."""
    return idx(h)[0] if callable(idx) else h[0][idx].sum()


def _rows(args, b):
    return tuple(a[b : b + 1] if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] > 1 else a for a in args)


def _grads(y, xs):
    gs = torch.autograd.grad(y, xs, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, xs)]


def ref_neuron_gradient(model, layer, idx, xs, extra=(), inputs=False):
    out = [torch.zeros_like(x) for x in xs]
    for b in range(xs[0].shape[0]):
        xb = tuple(x[b : b + 1].clone().requires_grad_() for x in xs)
        _, h = _capture(model, layer, xb + _rows(extra, b), inputs)
        for o, g in zip(out, _grads(_pick(h, idx), xb)):
            o[b] = g[0]
    return out


def rule(method, n):
    """Quadrature points and weights written out independently of xattr.quadrature."""
    if method == "riemann_middle":
        return [(k + 0.5) / n for k in range(n)], [1.0 / n] * n
    if method == "riemann_trapezoid":  # exact weights: 1/(n-1), halved at both ends
        return [k / (n - 1) for k in range(n)], [(0.5 if k in (0, n - 1) else 1.0) / (n - 1) for k in range(n)]
    nodes, w = np.polynomial.legendre.leggauss(n)
    return list(0.5 * (nodes + 1)), list(0.5 * w)


def ref_conductance(model, layer, idx, t, xs, bs, extra=(), *, method="riemann_middle", n=7, inputs=False, neuron_only=False):
    """sum_k w_k dF/dy_n dy_n/dx at each path point, times (x - b); neuron_only: IG of the neuron."""
    alphas, weights = rule(method, n)
    out = [torch.zeros_like(x) for x in xs]
    for b in range(xs[0].shape[0]):
        for a, w in zip(alphas, weights):
            pts = tuple((bb + a * (x - bb))[b : b + 1].clone().requires_grad_() for x, bb in zip(xs, bs))
            f, h = _capture(model, layer, pts + _rows(extra, b), inputs)
            y = _pick(h, idx)
            mid = 1.0 if neuron_only else _pick(torch.autograd.grad(f[0, t[b]], h, retain_graph=True)[0], idx)
            for o, g in zip(out, _grads(y, pts)):
                o[b] += w * mid * g[0]
    return [o * (x - bb) for o, x, bb in zip(out, xs, bs)]


# ----------------------------------------------------------------------------- neuron gradient / IG / SHAP


@pytest.mark.parametrize(
    "model, layer, idx, inputs",
    [("mlp", "2", 1, False), ("mlp", "3", (slice(1, 3),), False), ("conv", "1", (1, slice(0, 2), 0), False),
     ("mlp", "3", G.product_of_first_and_third, False), ("mlp", "4", 2, True)],  # fmt: skip
)
def test_neuron_gradient_matches_reference(model, layer, idx, inputs):
    m = MODELS[model]
    x = IMG if model == "conv" else X
    split = xattr.at_layer(m, m.get_submodule(layer), inputs=inputs)
    out = xattr.saliency(xattr.neuron(split, idx), abs=False)(x)
    torch.testing.assert_close(out, ref_neuron_gradient(m, m.get_submodule(layer), idx, (x,), inputs=inputs)[0])


def test_neuron_gradient_tuple_inputs_and_extra_arguments():
    m = MODELS["two"]
    split = xattr.at_layer(m, m.l3, inputs=True)
    out = xattr.saliency(xattr.neuron(split, 2), abs=False, argnums=(0, 1))(X1, X2, SCALE, 0.25)
    ref = ref_neuron_gradient(m, m.l3, 2, (X1, X2), (SCALE, 0.25), inputs=True)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r)


class PairLayer(nn.Module):
    """Returns two tensors, like Captum's MultiRelu: a neuron is chosen by a callable."""

    def forward(self, a, b):
        return torch.relu(a), torch.tanh(b)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(11)
            self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 3)
        self.pair = PairLayer()
        self.double()  # the test inputs are float64

    def forward(self, x):
        h1, h2 = self.pair(self.a(x), self.b(x))
        return self.out(torch.cat([h1, h2], 1))


def both_heads(outs):
    return outs[0][:, 1] + 2 * outs[1][:, 2]


@pytest.mark.parametrize("inputs", [False, True])
def test_a_callable_neuron_reads_a_layer_of_several_tensors(inputs):
    m = TwoBranches().eval()
    split = xattr.at_layer(m, m.pair, inputs=inputs)
    out = xattr.saliency(xattr.neuron(split, both_heads), abs=False)(X)
    seen = []
    hook = (m.pair.register_forward_pre_hook(lambda mod, i: seen.append(i)) if inputs
            else m.pair.register_forward_hook(lambda mod, i, o: seen.append(o)))
    try:
        ref = []
        for b in range(X.shape[0]):
            xb = X[b : b + 1].clone().requires_grad_()
            seen.clear()
            m(xb)
            ref.append(torch.autograd.grad(both_heads(seen[0]).sum(), xb)[0])
    finally:
        hook.remove()
    torch.testing.assert_close(out, torch.cat(ref))
    assert out.abs().sum() > 0
    # the rule-based methods read it too: DeepLift of the neuron sums to its change from the baseline
    dl = xattr.deep_lift(xattr.neuron(split, both_heads), baselines=0.0)(X)
    act = split.act
    torch.testing.assert_close(dl.sum(1), both_heads(act(X)) - both_heads(act(torch.zeros_like(X))), atol=1e-5, rtol=1e-5)


def test_an_index_with_too_few_dims_says_how_many_it_needs():
    m = MODELS["conv"]
    split = xattr.at_layer(m, m.get_submodule("1"))
    dims = split.act(IMG).ndim - 1
    with pytest.raises(ValueError, match=rf"index \(1,\) picks .* one index per dim \({dims} of them\)"):
        xattr.saliency(xattr.neuron(split, (1,)))(IMG)
    full = (1,) + (0,) * (dims - 1)
    assert xattr.saliency(xattr.neuron(split, full))(IMG).shape == IMG.shape


def test_an_index_into_a_layer_of_several_tensors_says_to_use_a_callable():
    m = TwoBranches().eval()
    with pytest.raises(TypeError, match="returns a tuple of 2 parts.*callable"):
        xattr.saliency(xattr.neuron(xattr.at_layer(m, m.pair), 1))(X)


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_neuron_integrated_gradients_matches_reference(method):
    m = MODELS["mlp"]
    split = xattr.at_layer(m, m[2])
    out = xattr.integrated_gradients(xattr.neuron(split, 3), n_steps=7, method=method, baselines=G.B_EACH)(X)
    ref = ref_conductance(m, m[2], 3, None, (X,), (G.B_EACH,), method=method, n=7, neuron_only=True)[0]
    torch.testing.assert_close(out, ref)


def test_neuron_gradient_shap_is_exact_on_a_linear_neuron_and_converges_to_neuron_ig():
    m = MODELS["mlp"]
    lin = xattr.neuron(xattr.at_layer(m, m[0]), 2)  # linear in x: the random path positions cancel
    gs = xattr.gradient_shap(lin, baselines=G.B_ROW, n_samples=3, generator=0)(X)
    torch.testing.assert_close(gs, (X - G.B_ROW) * m[0].weight[2].detach())
    neuron = xattr.neuron(xattr.at_layer(m, m[2]), 1)  # nonlinear: E over alpha is the IG integral
    n = 4000
    est = xattr.gradient_shap(neuron, baselines=G.B_ROW, n_samples=n, generator=0)(X)
    ig = ref_conductance(m, m[2], 1, None, (X,), (G.B_ROW.expand_as(X),), method="gausslegendre", n=24, neuron_only=True)[0]
    draws = xattr.gradient_shap(neuron, baselines=G.B_ROW, n_samples=1, generator=1)(X.repeat(n, 1)).reshape(n, *X.shape)
    assert ((est - ig).abs() <= 5 * draws.std(0) / math.sqrt(n) + 1e-12).all()


# ----------------------------------------------------------------------------- neuron conductance


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize(
    "model, layer, idx", [("mlp", "2", 3), ("mlp", "3", G.middle_region), ("conv", "1", (1, slice(0, 2), 0))]
)
def test_neuron_conductance_matches_reference(method, model, layer, idx):
    m = MODELS[model]
    x = IMG if model == "conv" else X
    base = torch.full_like(x, 0.2)
    t = torch.tensor([2, 0])
    split = xattr.at_layer(xattr.target(m, t), m.get_submodule(layer))
    out = xattr.neuron_conductance(split, idx, n_steps=7, method=method, baselines=0.2)(x)
    ref = ref_conductance(m, m.get_submodule(layer), idx, t, (x,), (base,), method=method, n=7)[0]
    torch.testing.assert_close(out, ref)


def test_neuron_conductance_tuple_inputs_layer_input_and_extra_arguments():
    m = MODELS["two"]
    t = torch.tensor([1, 0])
    split = xattr.at_layer(xattr.target(m, t), m.l3, inputs=True)
    bases = (G.B_PAIR[0], 0.1)
    cond = xattr.neuron_conductance(split, 3, argnums=(0, 1), baselines=bases, n_steps=6, method="riemann_middle")
    out = cond(X1, X2, SCALE, 0.25)
    ref = ref_conductance(m, m.l3, 3, t, (X1, X2), (G.B_PAIR[0].expand_as(X1), torch.full_like(X2, 0.1)), (SCALE, 0.25),
                          n=6, inputs=True)  # fmt: skip
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r)


def test_neuron_conductance_in_place_op_after_the_layer():
    """The captured activation is the module's output even when relu_ overwrites it afterwards."""
    m, plain = InPlace().double().eval(), InPlace(inplace=False).double().eval()
    split = xattr.at_layer(xattr.target(m, 1), m.l1)
    out = xattr.neuron_conductance(split, xattr.outputs([0, 2]), n_steps=5, method="riemann_middle")(X)
    for k, j in enumerate([0, 2]):
        ref = ref_conductance(plain, plain.l1, j, [1, 1], (X,), (torch.zeros_like(X),), n=5)[0]
        torch.testing.assert_close(out[:, k], ref)


def test_conductance_is_complete_over_all_neurons_of_a_layer():
    """Summed over features and over every neuron of a layer all paths cross: F(x) - F(x')."""
    m = MODELS["mlp"]
    f = xattr.target(m, 1)
    split = xattr.at_layer(f, m[2])
    allk = xattr.neuron_conductance(split, xattr.outputs(range(4)), n_steps=64, method="gausslegendre", baselines=G.B_EACH)(X)
    assert allk.shape == (2, 4, 3)
    torch.testing.assert_close(allk.sum((1, 2)), (f(X) - f(G.B_EACH)).detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, 2, 5])
def test_many_neurons_at_once_equal_a_loop_and_chunks_and_batch_change_nothing(chunk_size):
    m = MODELS["conv"]
    split = xattr.at_layer(xattr.target(m, 2), m[1])
    idx = [(0, 0, 0), (1, slice(0, 2), 0), (1, 1, 1)]
    many = xattr.neuron_conductance(split, xattr.outputs(idx), n_steps=6, chunk_size=chunk_size)(IMG)
    assert many.shape == (2, 3) + IMG.shape[1:]
    for k, i in enumerate(idx):
        one = xattr.neuron_conductance(split, i, n_steps=6)(IMG)
        torch.testing.assert_close(many[:, k], one)
        for b in range(2):
            torch.testing.assert_close(xattr.neuron_conductance(split, i, n_steps=6)(IMG[b : b + 1])[0], one[b])
    neuron = xattr.neuron(xattr.at_layer(m, m[1]), xattr.outputs(idx))
    for make in (
        lambda n, c: xattr.saliency(n, abs=False, chunk_size=c),
        lambda n, c: xattr.integrated_gradients(n, n_steps=5, chunk_size=c),
        lambda n, c: xattr.gradient_shap(n, baselines=torch.zeros_like(IMG), n_samples=3, generator=0, chunk_size=c),
    ):
        k_at_once = make(neuron, chunk_size)(IMG)
        for k, i in enumerate(idx):
            torch.testing.assert_close(k_at_once[:, k], make(xattr.neuron(xattr.at_layer(m, m[1]), i), None)(IMG))


def test_neuron_conductance_under_vmap_grad_and_without_the_input_factor():
    m = MODELS["mlp"]
    split = xattr.at_layer(xattr.target(m, 2), m[2])
    cond = xattr.neuron_conductance(split, 1, n_steps=7, method="gausslegendre")
    torch.testing.assert_close(torch.func.vmap(lambda x: cond(x[None])[0])(X), cond(X))
    g = torch.func.grad(lambda x: cond(x).sum())(X)  # dF/dy_n's own dependence on x is kept
    eps, fd = 1e-6, torch.zeros_like(X)
    for i in range(X.numel()):
        e = torch.zeros(X.numel(), dtype=X.dtype)
        e[i] = eps
        e = e.reshape(X.shape)
        fd.view(-1)[i] = (cond(X + e).sum() - cond(X - e).sum()) / (2 * eps)
    torch.testing.assert_close(g, fd, atol=1e-8, rtol=1e-6)
    local = xattr.neuron_conductance(split, 1, n_steps=7, method="gausslegendre", multiply_by_inputs=False)(X)
    torch.testing.assert_close(local * X, cond(X))


def test_neuron_conductance_errors():
    m = MODELS["mlp"]
    with pytest.raises(TypeError, match="at_layer"):
        xattr.neuron_conductance(xattr.target(m, 0), 1)
    with pytest.raises(ValueError, match="one model output per example"):
        xattr.neuron_conductance(xattr.at_layer(xattr.target(m, xattr.outputs([0, 1])), m[2]), 1)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


# ----------------------------------------------------------------------------- token inputs


TEXT = MODELS["text"]
IDS, REF_IDS = G.IDS, G.REF_IDS


def test_reference_tokens():
    torch.testing.assert_close(xattr.reference_tokens(IDS, G.PAD, keep=(G.CLS, G.SEP)), REF_IDS)
    torch.testing.assert_close(xattr.reference_tokens(IDS, 4), torch.full_like(IDS, 4))
    torch.testing.assert_close(xattr.reference_tokens(IDS, 4, keep=torch.tensor([G.SEP])), torch.where(IDS == G.SEP, IDS, 4))
    with pytest.raises(TypeError, match="integer token ids"):
        xattr.reference_tokens(IDS.double(), 0)


def test_integrated_gradients_at_the_embedding_is_complete_and_is_captums_layer_ig():
    t = torch.tensor(G.EMBEDDING.kwargs["target"])
    f = xattr.target(TEXT, t)
    split = xattr.at_layer(f, TEXT.embedding)
    ref = xattr.reference_tokens(IDS, G.PAD, keep=(G.CLS, G.SEP))
    n_steps = G.EMBEDDING.kwargs["n_steps"]
    ig = xattr.integrated_gradients(split.head, baselines=split.act(ref), n_steps=n_steps, return_delta=True)
    attr, delta = ig(split.act(IDS), IDS)  # the ids pass through to the head
    assert attr.shape == (2, G.SEQ, 4)
    expected = E.EXPECTED[G.EMBEDDING.name]
    torch.testing.assert_close(attr, torch.tensor(expected["attr"], dtype=attr.dtype), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(delta, torch.tensor(expected["delta"], dtype=delta.dtype), rtol=0, atol=1e-7)
    scores = xattr.token_scores(attr)
    assert scores.shape == (2, G.SEQ)
    torch.testing.assert_close(scores.sum(1), (f(IDS) - f(ref)).detach(), atol=1e-9, rtol=0)  # completeness
    assert (attr[ref == IDS] == 0).all()  # kept tokens ([CLS], [SEP]) equal their reference: zero attribution
    unit = xattr.token_scores(attr, normalize=True)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2, dtype=unit.dtype))


def test_saliency_and_gradient_shap_at_the_embedding():
    f = xattr.target(TEXT, 1)
    split = xattr.at_layer(f, TEXT.embedding)
    h = split.act(IDS)
    sal = xattr.saliency(split.head, abs=False)(h, IDS)
    for b in range(2):
        e = TEXT.embedding(IDS[b : b + 1]).detach().requires_grad_()
        torch.testing.assert_close(sal[b], torch.autograd.grad(TEXT.mlp(e)[0, 1], e)[0][0])
    base = split.act(REF_IDS[:1])  # one reference row: a one-point baseline distribution
    n = 4000
    est = xattr.gradient_shap(split.head, baselines=base, n_samples=n, generator=0)(h, IDS)
    ig = xattr.integrated_gradients(split.head, baselines=base, n_steps=32)(h, IDS)
    draws = xattr.gradient_shap(split.head, baselines=base, n_samples=1, generator=1)(h.repeat(n, 1, 1), IDS.repeat(n, 1))
    draws = draws.reshape((n,) + tuple(h.shape))
    assert ((est - ig).abs() <= 5 * draws.std(0) / math.sqrt(n) + 1e-12).all()
    many = xattr.saliency(xattr.at_layer(xattr.target(TEXT, xattr.outputs([0, 1])), TEXT.embedding).head, abs=False)(h, IDS)
    torch.testing.assert_close(many[:, 1], sal)
    assert xattr.token_scores(many).shape == (2, 2, G.SEQ)


def test_token_ids_to_a_gradient_method_point_to_the_embedding():
    with pytest.raises(TypeError, match="at_layer"):
        xattr.saliency(xattr.target(TEXT, 0))(IDS)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_normalized_token_scores_of_small_half_precision_attributions_have_unit_norm(dtype):
    attr = torch.full((2, 5, 3), 1e-6).to(dtype)  # a norm below float16's smallest normal was clamped there
    unit = xattr.token_scores(attr, normalize=True)
    assert unit.dtype == dtype
    torch.testing.assert_close(unit.float().norm(dim=-1), torch.ones(2), atol=1e-2, rtol=0)
