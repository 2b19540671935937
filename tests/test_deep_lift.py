"""DeepLift (Rescale), DeepLift SHAP, layer and neuron DeepLift, guided Grad-CAM.

A slow reference follows the paper layer by layer (Shrikumar et al. 2017): explicit multipliers
``(y - y') / (x - x')`` per nonlinearity (the ordinary derivative, written out, where
``|x - x'| < eps``), the chain rule of multipliers through linear and convolution layers by hand,
and Captum's max-pool split by a Python loop over pooling windows. ``xattr.deep_lift`` must match
it on random small networks (hypothesis), and sum to ``f(x) - f(b)`` on them. Then: the options
(multipliers, attribution_func, return_delta, baselines per example or as a number or tree),
DeepLift SHAP as a mean of DeepLift, chunking, layer and neuron DeepLift, softmax's rule against
its formula, the eps fallback, vmap, and guided Grad-CAM as its product.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import assert_trees_close, check_batch_invariance, check_completeness
from xattr.testing.strategies import random_tensor, seeds

# --------------------------------------------------------------------------- random small networks

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": lambda: nn.ELU(0.7),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": lambda: nn.Softplus(beta=1.5),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,  # MobileNetV3
    "hardsigmoid": nn.Hardsigmoid,
    "relu6": nn.ReLU6,  # MobileNetV2
    "mish": nn.Mish,
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(0.8),
    "softsign": nn.Softsign,
    "logsigmoid": nn.LogSigmoid,
    "threshold": lambda: nn.Threshold(0.1, -0.5),  # a jump: Rescale's ratio is exact across it
}


def build(kind: str, seed: int, in_shape: tuple, acts: tuple, pool: bool, n_out: int) -> nn.Sequential:
    """An MLP or CNN (float64, eval) with one activation per hidden layer and an optional max-pool."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        if kind == "mlp":
            width = in_shape[0]
            for i, act in enumerate(acts):
                layers += [nn.Linear(width, 4 + i), ACTIVATIONS[act]()]
                width = 4 + i
                if i == 0 and pool:  # (B, w) -> (B, 1, w) -> pool -> (B, 1, w // 2) -> (B, w // 2)
                    layers += [nn.Unflatten(1, (1, width)), nn.MaxPool1d(2), nn.Flatten()]
                    width //= 2
            layers.append(nn.Linear(width, n_out))
        else:
            c, h, w = in_shape
            for i, act in enumerate(acts):
                layers += [nn.Conv2d(c, 2 + i, 3, padding=1), ACTIVATIONS[act]()]
                c = 2 + i
                if i == 0 and pool:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            layers += [nn.Flatten(), nn.Linear(c * h * w, n_out)]
        return nn.Sequential(*layers).double().eval()


@st.composite
def cases(draw, pool=None):
    """(model, x, baselines, target) for a random small network."""
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    in_shape = (draw(st.integers(2, 5)),) if kind == "mlp" else (draw(st.integers(1, 2)), 4, draw(st.integers(4, 5)))
    acts = tuple(draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=1, max_size=3)))
    pool = draw(st.booleans()) if pool is None else pool
    n_out = draw(st.integers(1, 3))
    model = build(kind, draw(seeds), in_shape, acts, pool, n_out)
    batch = draw(st.integers(1, 3))
    x = random_tensor((batch,) + in_shape, seed=draw(seeds))
    base = random_tensor((batch,) + in_shape, seed=draw(seeds), scale=draw(st.sampled_from([0.0, 0.5, 1.0])))
    return model, x, base, draw(st.integers(0, n_out - 1))


# --------------------------------------------------------------------------- the paper's DeepLift by hand


def derivative(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """phi'(x) of an activation module, written out."""
    if isinstance(module, nn.ReLU):
        return (x > 0).double()
    if isinstance(module, nn.LeakyReLU):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, module.negative_slope))  # two Python scalars would give float32
    if isinstance(module, nn.ELU):
        return torch.where(x > 0, torch.ones_like(x), module.alpha * torch.exp(x))
    if isinstance(module, nn.Sigmoid):
        s = 1 / (1 + torch.exp(-x))
        return s * (1 - s)
    if isinstance(module, nn.Tanh):
        return 1 - torch.tanh(x) ** 2
    if isinstance(module, nn.Softplus):
        bx = module.beta * x
        return torch.where(bx > module.threshold, torch.ones_like(x), 1 / (1 + torch.exp(-bx)))
    if isinstance(module, nn.GELU):
        return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if isinstance(module, nn.SiLU):
        s = 1 / (1 + torch.exp(-x))
        return s + x * s * (1 - s)
    inside = ((x > -3) & (x < 3)).double()
    if isinstance(module, nn.Hardswish):  # x * relu6(x + 3) / 6
        return torch.where(x >= 3, torch.ones_like(x), inside * (2 * x + 3) / 6)
    if isinstance(module, nn.Hardsigmoid):  # relu6(x + 3) / 6
        return inside / 6
    if isinstance(module, nn.ReLU6):
        return ((x > 0) & (x < 6)).double()
    if isinstance(module, nn.Mish):  # x tanh(softplus(x))
        t = torch.tanh(torch.log1p(torch.exp(x)))
        return t + x * (1 - t * t) / (1 + torch.exp(-x))
    if isinstance(module, nn.SELU):
        scale, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
        return scale * torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x))
    if isinstance(module, nn.CELU):
        return torch.where(x > 0, torch.ones_like(x), torch.exp(x / module.alpha))
    if isinstance(module, nn.Softsign):
        return 1 / (1 + x.abs()) ** 2
    if isinstance(module, nn.LogSigmoid):
        return 1 / (1 + torch.exp(x))
    if isinstance(module, nn.Threshold):
        return (x > module.threshold).double()
    raise TypeError(type(module))


def max_pool_multipliers(m, x, r, kernel: int, eps: float) -> torch.Tensor:
    """Captum's max-pool rule by a loop over windows (stride = kernel, no padding).

    Each window's output change ``y - y'`` splits into ``max(y, y') - y'`` at x's argmax and
    ``y - max(y, y')`` at the reference's argmax; divided by ``x - x'`` there. Where
    ``|x - x'| < eps``, the ordinary max-pool gradient (routed to x's argmax).
    """
    flat = x.ndim == 3  # MaxPool1d over (B, C, L)
    if flat:
        x, r, m = x[:, :, None], r[:, :, None], m[:, :, None]
    kh, kw = (1, kernel) if flat else (kernel, kernel)
    routed, ordinary = torch.zeros_like(x), torch.zeros_like(x)
    for b, c, i, j in itertools.product(*map(range, m.shape)):
        win = (b, c, slice(i * kh, (i + 1) * kh), slice(j * kw, (j + 1) * kw))
        wx, wr = x[win], r[win]
        ax, ar = divmod(int(wx.argmax()), kw), divmod(int(wr.argmax()), kw)  # first maximum, as torch
        px, pr = (b, c, i * kh + ax[0], j * kw + ax[1]), (b, c, i * kh + ar[0], j * kw + ar[1])
        yx, yr = wx.max(), wr.max()
        top = torch.maximum(yx, yr)
        routed[px] += m[b, c, i, j] * (top - yr)
        routed[pr] += m[b, c, i, j] * (yx - top)
        ordinary[px] += m[b, c, i, j]
    dx = x - r
    near = dx.abs() < eps
    out = torch.where(near, ordinary, routed / torch.where(near, torch.ones_like(dx), dx))
    return out[:, :, 0] if flat else out


def reference(model: nn.Sequential, x, r, seed: torch.Tensor, eps: float = 1e-10):
    """(attributions, multipliers at the input, multipliers at each module's output) of the output
    weighted by ``seed`` (one example's output shape), by the paper's rules, one layer at a time."""
    xs, rs = [x], [r]
    with torch.no_grad():
        for module in model:
            xs.append(module(xs[-1].clone()))  # clones: in-place ReLUs would overwrite their inputs
            rs.append(module(rs[-1].clone()))
    m = seed.expand_as(xs[-1]).clone()
    at_output = [None] * len(model)
    for i in reversed(range(len(model))):
        module, xi, ri, yi, ryi = model[i], xs[i], rs[i], xs[i + 1], rs[i + 1]
        at_output[i] = m
        if isinstance(module, nn.Linear):
            m = m @ module.weight
        elif isinstance(module, nn.Conv2d):
            m = F.conv_transpose2d(m, module.weight, stride=module.stride, padding=module.padding)
        elif isinstance(module, (nn.Flatten, nn.Unflatten)):
            m = m.reshape(xi.shape)
        elif isinstance(module, nn.Dropout):  # the identity in eval mode
            pass
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            m = m.expand_as(xi) / (xi.shape[-1] * xi.shape[-2])
        elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
            m = max_pool_multipliers(m, xi, ri, module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0], eps)
        else:  # an elementwise nonlinearity: the Rescale rule
            dx = xi - ri
            near = dx.abs() < eps
            m = m * torch.where(near, derivative(module, xi), (yi - ryi) / torch.where(near, torch.ones_like(dx), dx))
    return (x - r) * m, m, at_output


def one_hot(n: int, k: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(k), n).double()


def n_out(model, x) -> int:
    with torch.no_grad():
        return model(x).shape[1]


# --------------------------------------------------------------------------- summation-to-delta and the reference


@given(cases())
def test_summation_to_delta(case):
    model, x, base, t = case
    f = xattr.target(model, t)
    check_completeness(f, xattr.deep_lift(f, baselines=base), x, baselines=base, atol=1e-10, rtol=1e-8)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert delta.shape == (x.shape[0],)
    assert delta.abs().max() <= 1e-10 + 1e-8 * attr.abs().sum()


@given(cases(), st.sampled_from([1e-10, 0.5]))
def test_matches_the_papers_rules_layer_by_layer(case, eps):
    model, x, base, t = case
    expected, multipliers, _ = reference(model, x, base, one_hot(n_out(model, x), t), eps)
    f = xattr.target(model, t)
    assert_trees_close(xattr.deep_lift(f, baselines=base, eps=eps)(x), expected, atol=1e-10, rtol=1e-8, what="deep_lift vs reference")
    got_m = xattr.deep_lift(f, baselines=base, eps=eps, multiply_by_inputs=False)(x)
    assert_trees_close(got_m, multipliers, atol=1e-10, rtol=1e-8, what="multipliers vs reference")


# fixed cases for the option tests: a CNN with max-pool and every activation kind, and an MLP
CNN = build("cnn", 3, (2, 4, 4), ("relu", "elu", "softplus"), True, 3)
MLP = build("mlp", 4, (5,), ("leaky_relu", "tanh", "gelu"), True, 3)
B = 3


def cnn_case():
    return CNN, random_tensor((B, 2, 4, 4), seed=1), random_tensor((B, 2, 4, 4), seed=2, scale=0.5)


def mlp_case():
    return MLP, random_tensor((B, 5), seed=3), random_tensor((B, 5), seed=4, scale=0.5)


def test_the_reference_is_not_the_gradient():
    # the reference and xattr could agree by both being the plain gradient times (x - b)
    model, x, base = cnn_case()
    expected = reference(model, x, base, one_hot(3, 1))[0]
    ixg = xattr.grad(xattr.target(model, 1))(x) * (x - base)
    assert (expected - ixg).abs().max() > 1e-3


# --------------------------------------------------------------------------- options


def test_multiply_by_inputs_false_gives_the_multipliers():
    model, x, base = cnn_case()
    f = xattr.target(model, 2)
    m = xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)
    assert_trees_close(m * (x - base), xattr.deep_lift(f, baselines=base)(x), what="multipliers x (x - b)")
    assert_trees_close(m, reference(model, x, base, one_hot(3, 2))[1], what="multipliers vs reference")


def test_attribution_func_sees_multipliers_inputs_and_baselines():
    model, x, base = cnn_case()
    f = xattr.target(model, 0)
    m = xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)
    seen = []

    def custom(mult, inputs, baselines):
        seen.append((mult.shape, inputs.shape, baselines.shape))
        return mult * (inputs - baselines) ** 2

    got = xattr.deep_lift(f, baselines=base, attribution_func=custom)(x)
    assert seen == [(x.shape, x.shape, x.shape)]  # trees like args[argnums]: here tensors
    assert_trees_close(got, m * (x - base) ** 2, what="custom attribution")
    # a number as baseline reaches attribution_func broadcast to the inputs
    got = xattr.deep_lift(f, baselines=0.25, attribution_func=lambda m, x, b: m * 0 + b)(x)
    assert torch.equal(got, torch.full_like(x, 0.25))


def test_attribution_func_with_tuple_argnums_sees_tuples():
    w1, w2 = random_tensor((3, 5), seed=5), random_tensor((3, 2), seed=6)
    f = xattr.target(lambda a, c: torch.tanh(a @ w1.T + c @ w2.T), 1)
    a, c = random_tensor((B, 5), seed=7), random_tensor((B, 2), seed=8)
    m = xattr.deep_lift(f, argnums=(0, 1), multiply_by_inputs=False)(a, c)
    got = xattr.deep_lift(f, argnums=(0, 1), attribution_func=lambda m, x, b: tuple(mi * 3 for mi in m))(a, c)
    assert isinstance(got, tuple) and len(got) == 2
    assert_trees_close(got, (3 * m[0], 3 * m[1]), what="tuple attribution_func")


def test_return_delta_shapes_and_values():
    model, x, base = mlp_case()
    f = xattr.target(model, 1)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert delta.shape == (B,)
    with torch.no_grad():
        gap = attr.sum(1) - (model(x)[:, 1] - model(base)[:, 1])
    assert_trees_close(delta, gap, atol=1e-12, what="delta")
    many = xattr.target(model, xattr.outputs([2, 0]))
    attr_k, delta_k = xattr.deep_lift(many, baselines=base, return_delta=True)(x)
    assert attr_k.shape == (B, 2, 5) and delta_k.shape == (B, 2)
    assert delta_k.abs().max() < 1e-12
    assert_trees_close(attr_k[:, 1], xattr.deep_lift(xattr.target(model, 0), baselines=base)(x), what="K axis")


def test_per_example_and_scalar_baselines():
    model, x, base = cnn_case()
    f = xattr.target(model, 1)
    dl = xattr.deep_lift(f)
    batched = dl(x, baselines=base)
    for i in range(B):
        assert_trees_close(dl(x[i : i + 1], baselines=base[i : i + 1]), batched[i : i + 1], what=f"example {i}")
    assert_trees_close(dl(x, baselines=0.3), dl(x, baselines=torch.full_like(x, 0.3)), what="scalar baseline")
    assert_trees_close(xattr.deep_lift(f, baselines=0.3)(x), dl(x, baselines=0.3), what="construction vs call keyword")
    one = base[:1]
    assert_trees_close(dl(x, baselines=one), dl(x, baselines=one.expand_as(x)), what="one baseline broadcast")
    assert not torch.allclose(dl(x, baselines=0.3), dl(x))


def test_dict_inputs_with_dict_baselines():
    w = random_tensor((3, 5), seed=9)
    flat = xattr.target(lambda z: F.elu(z @ w.T), 2)
    f = xattr.target(lambda d: F.elu(torch.cat([d["a"], d["b"]], 1) @ w.T), 2)
    x = {"a": random_tensor((B, 3), seed=10), "b": random_tensor((B, 2), seed=11)}
    base = {"a": random_tensor((B, 3), seed=12), "b": random_tensor((B, 2), seed=13)}
    z, zb = torch.cat([x["a"], x["b"]], 1), torch.cat([base["a"], base["b"]], 1)
    got = xattr.deep_lift(f, baselines=base)(x)
    want = xattr.deep_lift(flat, baselines=zb)(z)
    assert_trees_close(got, {"a": want[:, :3], "b": want[:, 3:]}, what="dict vs concatenated")
    dist = {"a": random_tensor((4, 3), seed=14), "b": random_tensor((4, 2), seed=15)}
    got = xattr.deep_lift_shap(f, baselines=dist)(x)
    want = xattr.deep_lift_shap(flat, baselines=torch.cat([dist["a"], dist["b"]], 1))(z)
    assert_trees_close(got, {"a": want[:, :3], "b": want[:, 3:]}, what="dict distribution vs concatenated")


# --------------------------------------------------------------------------- DeepLift SHAP


def test_deep_lift_shap_is_the_mean_of_deep_lift_over_baseline_rows():
    model, x, _ = cnn_case()
    dist = random_tensor((4, 2, 4, 4), seed=16)
    f = xattr.target(model, 0)
    attr, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    singles = [xattr.deep_lift(f, baselines=dist[k : k + 1], return_delta=True)(x) for k in range(4)]
    assert_trees_close(attr, sum(a for a, _ in singles) / 4, what="mean of deep_lift")
    assert delta.shape == (B, 4)
    assert_trees_close(delta, torch.stack([d for _, d in singles], 1), atol=1e-12, what="delta per (example, baseline)")
    many = xattr.target(model, xattr.outputs([0, 2]))
    attr_k, delta_k = xattr.deep_lift_shap(many, baselines=dist, return_delta=True)(x)
    assert attr_k.shape == (B, 2) + x.shape[1:] and delta_k.shape == (B, 4, 2)
    assert_trees_close(attr_k[:, 0], attr, what="K axis")
    # summation: the mean attribution sums to f(x) - mean_k f(b_k)
    with torch.no_grad():
        expected = model(x)[:, 0] - model(dist)[:, 0].mean()
    assert_trees_close(attr.flatten(1).sum(1), expected, atol=1e-10, what="DeepLift SHAP summation")


def _row_spy(model, rows: list):
    def spied(x):
        rows.append(x.shape[0])
        return model(x)

    return spied


class _Halves(xattr.rule.Rescale):
    shares_reference = False  # as a rule of the user's that reads paired rows as two halves


PAIRED = {torch.tanh: _Halves()}  # a rule that cannot share: DeepLift keeps its 2B paired rows


@pytest.mark.parametrize("chunk_size", [1, 2 * B, 2 * B + 1, 4 * B, 6 * B, 100])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "paired"])
def test_deep_lift_shap_chunks_hold_whole_copies(chunk_size, shared):
    """Each call holds whole copies: B inputs and their one shared reference row (NOTE: [Shared
    reference]), or B inputs and B references where a rule cannot share them."""
    model, x, _ = mlp_case()
    dist = random_tensor((5, 5), seed=17)
    mapping = None if shared else {F.gelu: _Halves()}
    whole = xattr.deep_lift_shap(xattr.target(model, 1), baselines=dist, mapping=mapping)(x)
    rows = []
    got = xattr.deep_lift_shap(xattr.target(_row_spy(model, rows), 1), baselines=dist, chunk_size=chunk_size, mapping=mapping)(x)
    assert_trees_close(got, whole, what=f"chunk_size={chunk_size}")
    per_copy = B + 1 if shared else 2 * B
    copies_per_call = max(1, chunk_size // per_copy)
    assert sum(rows) == 5 * per_copy
    assert all(r % per_copy == 0 and r <= per_copy * copies_per_call for r in rows), rows
    assert len(rows) == math.ceil(5 / copies_per_call)
    if shared:  # the same values as the paired rows
        paired = xattr.deep_lift_shap(xattr.target(model, 1), baselines=dist, mapping={F.gelu: _Halves()})(x)
        assert_trees_close(got, paired, atol=1e-12, rtol=1e-10, what="shared vs paired")


# --------------------------------------------------------------------------- layer and neuron DeepLift


def test_layer_deep_lift_sums_to_delta_and_equals_the_references_layer_multipliers():
    model, x, base = cnn_case()
    layer = 2  # the max-pool's output: every path from input to output crosses it
    split = xattr.at_layer(xattr.target(model, 2), model[layer])
    attr, delta = xattr.layer_deep_lift(split, baselines=base, return_delta=True)(x)
    with torch.no_grad():
        h, h_ref = model[: layer + 1](x), model[: layer + 1](base)
        gap = model(x)[:, 2] - model(base)[:, 2]
    assert attr.shape == h.shape and delta.shape == (B,)
    assert_trees_close(attr.flatten(1).sum(1), gap, atol=1e-10, what="layer summation-to-delta")
    assert delta.abs().max() < 1e-10
    m_ref = reference(model, x, base, one_hot(3, 2))[2][layer]
    assert_trees_close(attr, (h - h_ref) * m_ref, what="(h - h_ref) x reference multipliers")
    m = xattr.layer_deep_lift(split, baselines=base, multiply_by_inputs=False)(x)
    assert_trees_close(m, m_ref, what="layer multipliers")


def test_layer_deep_lift_shap_is_the_mean_of_layer_deep_lift():
    model, x, _ = cnn_case()
    split = xattr.at_layer(xattr.target(model, 0), model[2])
    dist = random_tensor((3, 2, 4, 4), seed=18)
    attr, delta = xattr.layer_deep_lift_shap(split, baselines=dist, return_delta=True)(x)
    singles = [xattr.layer_deep_lift(split, baselines=dist[k : k + 1], return_delta=True)(x) for k in range(3)]
    assert_trees_close(attr, sum(a for a, _ in singles) / 3, what="mean of layer_deep_lift")
    assert delta.shape == (B, 3)
    assert_trees_close(delta, torch.stack([d for _, d in singles], 1), atol=1e-12, what="layer delta")


@pytest.mark.parametrize("layer, index", [(2, (1, 1, 0)), (4, (2, 0, 1)), (7, 9)])
def test_neuron_deep_lift_by_composition(layer, index):
    model, x, base = cnn_case()
    neuron = xattr.neuron(xattr.at_layer(model, model[layer]), index)
    dl = xattr.deep_lift(neuron, baselines=base)
    check_completeness(neuron, dl, x, baselines=base, atol=1e-10, rtol=1e-8)
    with torch.no_grad():
        shape = model[: layer + 1](x).shape[1:]
    seed = torch.zeros(shape, dtype=torch.float64)
    seed[index] = 1.0
    assert_trees_close(dl(x), reference(model[: layer + 1], x, base, seed)[0], what="neuron deep_lift vs reference")


# --------------------------------------------------------------------------- softmax, eps, vmap


class SoftmaxHead(nn.Module):
    """f(x) = v . flatten(softmax(W x + c, dim=-1)): x (B, D) or (B, T, D)."""

    def __init__(self, d: int, c: int, t: int = 1):
        super().__init__()
        self.lin = nn.Linear(d, c)
        self.v = nn.Linear(t * c, 1, bias=False)
        self.double()

    def forward(self, x):
        return self.v(torch.softmax(self.lin(x), dim=-1).flatten(1))


@pytest.mark.parametrize("shape", [(5,), (2, 5)], ids=["B,D", "B,T,D"])
def test_softmax_rule_against_its_formula(shape):
    torch.manual_seed(0)
    t = 1 if len(shape) == 1 else shape[0]
    model = SoftmaxHead(5, 4, t)
    x, base = random_tensor((B,) + shape, seed=19), random_tensor((B,) + shape, seed=20)
    W, v = model.lin.weight, model.v.weight.reshape(t, 4) if t > 1 else model.v.weight.reshape(4)
    with torch.no_grad():
        z, z_ref = model.lin(x), model.lin(base)
    s, s_ref = torch.softmax(z, -1), torch.softmax(z_ref, -1)
    u = v * (s - s_ref) / (z - z_ref)  # Rescale multipliers of the softmax times the gradient above it
    m_z = u - u.mean(-1, keepdim=True)  # minus their mean over the softmax dim, per example and row
    expected = (x - base) * (m_z @ W)
    got = xattr.deep_lift(xattr.target(model, 0), baselines=base)(x)
    assert_trees_close(got, expected, what="softmax Rescale vs formula")
    if t > 1:  # a mean over the whole example (or batch) would be another number
        wrong = (x - base) * ((u - u.mean((-2, -1), keepdim=True)) @ W)
        assert not torch.allclose(got, wrong)


def test_eps_falls_back_to_the_ordinary_derivative():
    model, x, base = cnn_case()
    f = xattr.target(model, 1)
    grad = xattr.grad(f)(x)
    # baselines equal to the inputs: every |x - x'| is 0 below eps at every layer
    same = base.clone()
    same[0] = x[0]
    m = xattr.deep_lift(f, baselines=same, multiply_by_inputs=False)(x)
    assert_trees_close(m[0], grad[0], what="multipliers where x == x' vs gradient")
    assert_trees_close(m[1:], reference(model, x, same, one_hot(3, 1))[1][1:], what="the other examples")
    assert not torch.allclose(m[1:], grad[1:])
    # an eps above every difference: the multipliers are the gradient everywhere
    assert_trees_close(xattr.deep_lift(f, baselines=base, eps=1e9, multiply_by_inputs=False)(x), grad, what="eps=1e9")
    mlp, xm, bm = mlp_case()
    gm = xattr.grad(xattr.target(mlp, 0))(xm)
    assert_trees_close(xattr.deep_lift(xattr.target(mlp, 0), baselines=bm, eps=1e9, multiply_by_inputs=False)(xm), gm, what="MLP eps=1e9")


def test_float16_ties_take_the_derivative_not_nan():
    # the default eps (1e-10) is 0 in float16: a tie x == x' must still take the derivative
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8, 3), nn.Softmax(-1)).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    base = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    base[0] = x[0]  # every difference of example 0 is an exact 0
    f = xattr.target(model, 1)
    want = xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)
    got = xattr.deep_lift(xattr.target(model.half(), 1), baselines=base.half(), multiply_by_inputs=False)(x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("eps", [-1.0, float("nan")])
def test_a_negative_eps_is_refused(eps):
    model, x, base = mlp_case()
    with pytest.raises(ValueError, match="eps must be >= 0"):
        xattr.deep_lift(xattr.target(model, 0), baselines=base, eps=eps)(x)


@pytest.mark.parametrize("case", [cnn_case, mlp_case], ids=["cnn", "mlp"])
def test_vmap_over_examples_equals_the_batch(case):
    model, x, base = case()
    dl = xattr.deep_lift(xattr.target(model, 2))
    per_example = torch.func.vmap(lambda x, b: dl(x[None], baselines=b[None])[0])(x, base)
    assert_trees_close(per_example, dl(x, baselines=base), what="vmap(deep_lift) vs batch")
    check_batch_invariance(lambda x, b: dl(x, baselines=b), x, base)
    eps_big = xattr.deep_lift(xattr.target(model, 2), eps=1e9, multiply_by_inputs=False)  # derivative path
    got = torch.func.vmap(lambda x, b: eps_big(x[None], baselines=b[None])[0])(x, base)
    assert_trees_close(got, xattr.grad(xattr.target(model, 2))(x), what="vmapped derivative fallback")


# --------------------------------------------------------------------------- guided Grad-CAM


def test_guided_grad_cam_is_guided_backprop_times_upsampled_grad_cam():
    model, x, _ = cnn_case()
    layer = model[3]  # the second convolution, after the max-pool: 2x2, upsampled to 4x4
    for t in (0, 2):
        split = xattr.at_layer(xattr.target(model, t), layer)
        cam = xattr.grad_cam(split)(x)
        assert cam.shape == (B, 1, 2, 2)
        gb = xattr.guided_backprop(xattr.target(model, t))(x)
        for mode in ("nearest", "bilinear"):
            expected = gb * F.interpolate(cam, size=(4, 4), mode=mode)
            assert_trees_close(xattr.guided_grad_cam(split, mode=mode)(x), expected, what=f"guided Grad-CAM {mode}")
    many = xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, xattr.outputs([2, 0])), layer))(x)
    assert many.shape == (B, 2) + x.shape[1:]
    for j, t in enumerate((2, 0)):
        assert_trees_close(many[:, j], xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, t), layer))(x), what=f"K axis {j}")
    check_batch_invariance(xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, 1), layer)), x)


def test_rescale_outside_paired_rows_is_the_gradient():
    """Without deep_lift's paired_rows the Rescale rule never pairs example i with i + B/2."""
    model, x, r = cnn_case()
    f = xattr.target(model, 0)
    ruled = xattr.rules(f, xattr.rule.deep_lift_rules())
    assert_trees_close(xattr.grad(ruled)(x), xattr.grad(f)(x), atol=1e-6)


def test_layer_deep_lift_at_two_layers_gives_one_delta_per_layer():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    x, b = torch.randn(3, 5), torch.randn(3, 5)
    split = xattr.at_layer(xattr.target(model, 1), [model[1], model[3]])
    attr, delta = xattr.layer_deep_lift(split, baselines=b, return_delta=True)(x)
    assert isinstance(delta, tuple) and len(delta) == 2
    for d in delta:  # every path crosses both layers, so each layer alone sums to the delta
        assert d.shape == (3,) and d.abs().max() < 1e-5


def test_guided_grad_cam_refuses_layers_and_inputs_without_spatial_dims():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with pytest.raises(ValueError, match="spatial dims"):
        xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, 0), model[1]))(torch.randn(2, 4))
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).eval()
    two = lambda img, vec: cnn(img) + vec  # noqa: E731
    split = xattr.at_layer(xattr.target(two, 0), cnn[1])
    with pytest.raises(ValueError, match="layout of the Grad-CAM map"):
        xattr.guided_grad_cam(split, argnums=(0, 1))(torch.randn(2, 1, 6, 6), torch.randn(2, 2))


# --------------------------------------------------------------------------- the two spellings of Rescale


SPELLED = {"relu": F.relu, "leaky_relu": F.leaky_relu, "elu": F.elu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": F.softplus,
           "gelu": F.gelu, "mish": F.mish, "selu": F.selu, "celu": F.celu, "softsign": F.softsign, "logsigmoid": F.logsigmoid}


@pytest.mark.parametrize("kind", sorted(SPELLED))
def test_rescale_multipliers_equal_in_both_spellings(kind):
    """The float-mask spelling (CPU) and the torch.where one (other devices) give equal values,
    at exact ties (x == x'), below eps, and elsewhere."""
    from xattr._src import ops
    from xattr._src.deeplift_rules import _rescaled

    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    x2[0] = x1[0]  # ties
    x2[1, :25] = x1[1, :25] + 1e-12  # below eps
    x = torch.cat([x1, x2])
    func = SPELLED[kind]
    op = ops.PARSERS[func](func, x)
    y = op.fn(x)
    masks = _rescaled(op, x, y, 1e-10, where=False)
    assert torch.equal(_rescaled(op, x, y, 1e-10, where=True), masks)
    assert torch.isfinite(masks).all()
    # without ties or differences below eps the CPU spelling takes the ratio alone (one reduction
    # decides), and the padded form (a shared reference row) appends zero rows to the same values
    apart = torch.cat([x1[2:], x2[2:]])
    op = ops.PARSERS[func](func, apart)
    y = op.fn(apart)
    ratio = _rescaled(op, apart, y, 1e-10, where=False)
    assert torch.equal(_rescaled(op, apart, y, 1e-10, where=True), ratio)
    torch.testing.assert_close(ratio, (y[:2] - y[2:]) / (apart[:2] - apart[2:]), rtol=0, atol=0)
    for where in (False, True):
        for z, w in ((x, masks), (apart, ratio)):
            padded = _rescaled(op, z, op.fn(z), 1e-10, where=where, rows=z.shape[0] + 3)
            assert torch.equal(padded[: w.shape[0]], w) and torch.equal(padded[w.shape[0] :], torch.zeros_like(padded[w.shape[0] :]))


def test_deep_lift_with_the_where_spelling_equals_the_default_also_under_vmap(monkeypatch):
    from xattr._src import deeplift_rules

    model, x, base = cnn_case()
    dl = xattr.deep_lift(xattr.target(model, 2))
    expected = dl(x, baselines=base)
    batched = torch.func.vmap(lambda x, b: dl(x[None], baselines=b[None])[0])(x, base)
    shared = [dl(x, baselines=base[:1]), xattr.deep_lift_shap(xattr.target(model, 2), baselines=base)(x)]  # one reference row per copy
    plain, calls = deeplift_rules._rescaled, []

    def where_spelling(*args, **kwargs):
        calls.append(1)
        return plain(*args, **kwargs, where=True)

    monkeypatch.setattr(deeplift_rules, "_rescaled", where_spelling)
    assert torch.equal(dl(x, baselines=base), expected)
    assert calls, "the where spelling must have run"
    assert torch.equal(torch.func.vmap(lambda x, b: dl(x[None], baselines=b[None])[0])(x, base), batched)
    assert torch.equal(dl(x, baselines=base[:1]), shared[0])
    assert torch.equal(xattr.deep_lift_shap(xattr.target(model, 2), baselines=base)(x), shared[1])


# --------------------------------------------------------------------------- the max-pool rule, both halves


def max_pool_rule_by_positions(z, g, kernel, stride, padding, eps, seeded_halves):
    """Captum's max-pool split written per input position: p receives ``g * (top - y')`` from each
    output whose argmax in x is p and ``g * (y - top)`` from each whose argmax in x' is p, and
    divides the sum by ``x_p - x'_p``; where that is below eps it takes the ordinary gradient of
    its own half instead."""
    y, idx = F.max_pool2d_with_indices(z, kernel, stride, padding)
    h = z.shape[0] // 2
    (y1, y2), (i1, i2), (x1, x2) = y.split(h), idx.split(h), z.split(h)
    top = torch.maximum(y1, y2)
    parts = {"x": (top - y2).flatten(2), "ref": (y1 - top).flatten(2)}
    dx = (x1 - x2).flatten(2)
    out = torch.zeros_like(z).flatten(2)
    for half, own in seeded_halves:
        gh = g[half * h : (half + 1) * h].flatten(2)
        for b, c in itertools.product(range(h), range(z.shape[1])):
            received = torch.zeros(dx.shape[2], dtype=z.dtype)
            ordinary = torch.zeros(dx.shape[2], dtype=z.dtype)
            for o in range(gh.shape[2]):
                a, r = int(i1.flatten(2)[b, c, o]), int(i2.flatten(2)[b, c, o])
                received[a] += gh[b, c, o] * parts["x"][b, c, o]
                received[r] += gh[b, c, o] * parts["ref"][b, c, o]
                ordinary[a if own == "x" else r] += gh[b, c, o]
            d = dx[b, c]
            out[half * h + b, c] = torch.where(d.abs() < eps, ordinary, received / torch.where(d.abs() < eps, 1.0, d))
    return out.reshape(z.shape)


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
@pytest.mark.parametrize("reference_grads", [False, True])
def test_max_pool_rule_equals_its_formula_per_position(kernel, stride, padding, reference_grads):
    """Overlapping windows, padding, exact ties (x == x' at a third of the positions) and both
    halves seeded (``paired_rows(..., reference_grads=True)``, as for a user's own rules)."""
    from xattr._src.deeplift_rules import Rescale, paired_rows

    h = 2
    x, ref = random_tensor((h, 2, 5, 6), seed=4), random_tensor((h, 2, 5, 6), seed=5)
    ties = random_tensor((h, 2, 5, 6), seed=6) > 0.4
    ref = torch.where(ties, x, ref)
    z = torch.cat([x, ref]).requires_grad_()
    g = random_tensor((2 * h, 2) + tuple(F.max_pool2d(x, kernel, stride, padding).shape[2:]), seed=7)
    if not reference_grads:
        g[h:] = 0
    pool = xattr.rules(lambda t: F.max_pool2d(t, kernel, stride, padding), {F.max_pool2d: Rescale()})
    with paired_rows(2 * h, reference_grads=reference_grads):
        (got,) = torch.autograd.grad(pool(z), z, g)
    halves = [(0, "x"), (1, "ref")] if reference_grads else [(0, "x")]
    want = max_pool_rule_by_positions(z.detach(), g, kernel, stride, padding, 1e-10, halves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- one reference row shared by the batch


def _rows_of(model, rows: list):
    """model, recording the rows of every call (a module, so the rules still find its layers)."""

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, *rest):
            rows.append(x.shape[0])
            return self.inner(x)

    return Spy().eval()


@st.composite
def shared_cases(draw):
    """A random small network, a batch of at least 2, and one reference for every example: a
    number, or one row (broadcast over the batch)."""
    model, x, base, t = draw(cases())
    if x.shape[0] == 1:
        x = torch.cat([x, x.flip(-1) * 0.5])
    shared = draw(st.sampled_from(["number", "row"]))
    reference = float(draw(st.sampled_from([0.0, 0.25, -0.5]))) if shared == "number" else base[:1]
    return model, x, reference, t


@given(shared_cases(), st.sampled_from(["int", "per example", "outputs", "outputs per example"]))
def test_a_shared_reference_runs_one_row_for_the_batch_and_equals_paired_rows(case, which):
    """NOTE: [Shared reference]: B + 1 rows, with the same attributions, multipliers and deltas as
    the 2B paired rows of the same reference written out per example (which the layer-by-layer
    reference checks), for every kind of target."""
    model, x, reference, t = case
    b, n = x.shape[0], n_out(model, x)
    target = {
        "int": t,
        "per example": torch.arange(b) % n,
        "outputs": xattr.outputs(list(range(n))),
        "outputs per example": xattr.outputs(torch.stack([torch.arange(b) % n, (torch.arange(b) + 1) % n], 1)),
    }[which]
    rows = []
    f = xattr.target(_rows_of(model, rows), target)
    for multiply in (True, False):
        rows.clear()
        got, delta = xattr.deep_lift(f, baselines=reference, multiply_by_inputs=multiply, return_delta=True)(x)
        assert rows == [b + 1], rows
        want, want_delta = xattr.deep_lift(f, baselines=reference, multiply_by_inputs=multiply, return_delta=True, mapping=PAIRED)(x)
        assert rows == [b + 1, 2 * b], rows
        assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what=f"shared vs paired rows ({which})")
        assert_trees_close(delta, want_delta, atol=1e-12, rtol=1e-10, what=f"deltas ({which})")
        if multiply:  # summation-to-delta
            assert delta.abs().max() <= 1e-10 + 1e-8 * got.abs().sum()


def test_a_shared_reference_is_used_only_where_it_is_the_same_computation():
    """2B rows, not B + 1: a reference per example, one example, a per-example argument beside the
    input (its value at a shared row would be undefined), or a rule of the user's that does not
    declare ``shares_reference``."""
    model, x, base = cnn_case()
    rows = []
    spy = _rows_of(model, rows)
    f = xattr.target(spy, 1)
    xattr.deep_lift(f, baselines=0.5)(x)
    xattr.deep_lift(f, baselines=base[:1])(x)
    xattr.deep_lift(f, baselines=base)(x)
    xattr.deep_lift(f, baselines=0.5)(x[:1])
    assert rows == [B + 1, B + 1, 2 * B, 2]
    rows.clear()
    xattr.deep_lift(xattr.target(spy, 1), baselines=0.5, argnums=0)(x, torch.ones(B, 3))
    assert rows == [2 * B]

    rows.clear()
    got = xattr.deep_lift(f, baselines=0.5, mapping={F.elu: _Halves()})(x)
    assert rows == [2 * B]
    assert_trees_close(got, xattr.deep_lift(f, baselines=0.5)(x), atol=1e-12, what="same values either way")


def test_a_shared_reference_for_dict_inputs_and_an_unbatched_argument():
    """Trees of inputs share their reference leaf by leaf (a number for all, or one row each), and
    an extra argument without a batch (a per-feature scale) does not stop the sharing."""
    w = random_tensor((3, 5), seed=9)
    rows = []

    def f(d, scale):
        rows.append(d["a"].shape[0])
        return F.elu(torch.cat([d["a"], d["b"]], 1) * scale @ w.T)

    g = xattr.target(f, 2)
    x = {"a": random_tensor((B, 3), seed=10), "b": random_tensor((B, 2), seed=11)}
    scale = random_tensor((5,), seed=12)
    one = {"a": random_tensor((1, 3), seed=13), "b": random_tensor((1, 2), seed=14)}
    for reference in (0.5, one):
        rows.clear()
        got = xattr.deep_lift(g, baselines=reference)(x, scale)
        want = xattr.deep_lift(g, baselines=reference, mapping=PAIRED)(x, scale)
        assert rows == [B + 1, 2 * B], rows
        assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what=f"dict inputs, reference {type(reference).__name__}")


def test_a_batch_of_equal_reference_rows_is_shared_too():
    """Captum's spelling ``baselines=torch.zeros_like(x)``: a (B, ...) reference whose rows are all
    equal runs as one shared row (one comparison finds it), with the same attributions; rows that
    differ in one element keep the 2B rows; under vmap no value is compared."""
    model, x, base = cnn_case()
    rows = []
    f = xattr.target(_rows_of(model, rows), 1)
    equal = base[:1].expand_as(x).clone()  # its own storage, one row repeated
    got = xattr.deep_lift(f, baselines=equal)(x)
    assert rows == [B + 1]
    assert_trees_close(got, xattr.deep_lift(f, baselines=equal, mapping=PAIRED)(x), atol=1e-12, rtol=1e-10, what="equal rows")
    almost = equal.clone()
    almost[-1, 0, 0, 0] += 1e-9
    rows.clear()
    xattr.deep_lift(f, baselines=almost)(x)
    assert rows == [2 * B]
    groups = torch.stack([x, x.flip(0)])
    batched = torch.func.vmap(lambda g: xattr.deep_lift(xattr.target(model, 1), baselines=torch.zeros_like(g))(g))(groups)
    loop = torch.stack([xattr.deep_lift(xattr.target(model, 1), baselines=torch.zeros_like(g))(g) for g in groups])
    assert_trees_close(batched, loop, atol=1e-12, what="vmap with a full zero reference")


def test_shared_paired_rows_need_unseeded_references():
    with pytest.raises(ValueError, match="reference_grads=False"):
        with xattr.rule.paired_rows(4, shared=True):
            pass


def test_a_shared_reference_under_vmap_equals_a_loop():
    """Inside vmap (over groups of examples) the shared path pads multipliers by concatenation."""
    model, x, base = cnn_case()
    groups = torch.stack([x, x.flip(0) * 0.7])  # (2, B, ...)
    dl = xattr.deep_lift(xattr.target(model, 2), baselines=base[:1])
    got = torch.func.vmap(dl)(groups)
    assert_trees_close(got, torch.stack([dl(g) for g in groups]), atol=1e-12, what="vmap over groups vs loop")


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_max_pool_rule_with_a_shared_reference_row_equals_its_formula(kernel, stride, padding):
    """The max-pool rule against one reference row shared by h inputs, with exact ties: the input
    rows get the formula's gradients for the reference written out per input, the shared row none."""
    from xattr._src.deeplift_rules import Rescale, paired_rows

    h = 3
    x, ref = random_tensor((h, 2, 5, 6), seed=4), random_tensor((1, 2, 5, 6), seed=5)
    x = torch.where(random_tensor((h, 2, 5, 6), seed=6) > 0.4, ref, x)  # ties with the shared row
    z = torch.cat([x, ref]).requires_grad_()
    g = random_tensor((h + 1, 2) + tuple(F.max_pool2d(x, kernel, stride, padding).shape[2:]), seed=7)
    g[h:] = 0
    pool = xattr.rules(lambda t: F.max_pool2d(t, kernel, stride, padding), {F.max_pool2d: Rescale()})
    with paired_rows(h + 1, reference_grads=False, shared=True):
        (got,) = torch.autograd.grad(pool(z), z, g)
    full = torch.cat([x, ref.expand_as(x)])
    g_full = torch.cat([g[:h], torch.zeros_like(g[:h])])
    want = max_pool_rule_by_positions(full, g_full, kernel, stride, padding, 1e-10, [(0, "x")])
    torch.testing.assert_close(got[:h], want[:h], rtol=1e-12, atol=1e-12)
    assert torch.equal(got[h:], torch.zeros_like(got[h:]))


@pytest.mark.parametrize("target", [2, "per example"])
def test_layer_deep_lift_with_a_shared_reference_equals_paired_rows(target):
    """Layer DeepLift runs B + 1 rows for a shared reference too; h_ref is the shared row's
    activation for every example; values and deltas as with the reference written per example."""
    model, x, base = cnn_case()
    rows = []
    spy = _rows_of(model, rows)
    t = torch.tensor([0, 2, 1]) if target == "per example" else target
    for layer in (1, 2, 4):
        split = xattr.at_layer(xattr.target(spy, t), spy.inner[layer])
        for reference in (0.25, base[:1]):
            rows.clear()
            got, delta = xattr.layer_deep_lift(split, baselines=reference, return_delta=True)(x)
            want, want_delta = xattr.layer_deep_lift(split, baselines=reference, return_delta=True, mapping=PAIRED)(x)
            assert rows == [B + 1, 2 * B], rows
            assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what=f"layer {layer}")
            assert_trees_close(delta, want_delta, atol=1e-12, rtol=1e-10, what=f"layer {layer} deltas")
        seen = []
        xattr.layer_deep_lift(split, baselines=0.25, attribution_func=lambda m, h, h_ref: seen.append(h_ref) or m * (h - h_ref))(x)
        assert seen[0].shape == got.shape and torch.equal(seen[0], seen[0][:1].expand_as(seen[0]))


@pytest.mark.parametrize("which", ["cnn (max-pool)", "softmax (B,T,D)"])
@pytest.mark.parametrize("target", ["per example", "outputs"])
def test_deep_lift_shap_with_shared_rows_per_copy_equals_paired_rows(which, target):
    """DeepLift SHAP and its layer variant run c copies with one reference row each (rows c*B + c)
    through max-pool and softmax rules, with the values of the 2*c*B paired rows."""
    if which.startswith("cnn"):
        model, x, _ = cnn_case()
        dist, layer = random_tensor((4, 2, 4, 4), seed=21), model[2]
    else:
        torch.manual_seed(0)
        model = SoftmaxHead(5, 4, 2).eval()
        x, dist, layer = random_tensor((B, 2, 5), seed=22), random_tensor((4, 2, 5), seed=23), model.lin
    n = 3 if which.startswith("cnn") else 1
    t = torch.arange(B) % n if target == "per example" else xattr.outputs(list(range(n)))
    rows = []
    f = xattr.target(_rows_of(model, rows), t)
    paired = PAIRED
    got, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    want, want_delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True, mapping=paired)(x)
    assert rows == [4 * B + 4, 8 * B], rows
    assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what="deep_lift_shap: shared vs paired")
    assert_trees_close(delta, want_delta, atol=1e-12, rtol=1e-10, what="deep_lift_shap deltas")
    split = xattr.at_layer(f, layer if which.startswith("softmax") else f.model.inner[2])
    got = xattr.layer_deep_lift_shap(split, baselines=dist)(x)
    want = xattr.layer_deep_lift_shap(split, baselines=dist, mapping=paired)(x)
    assert_trees_close(got, want, atol=1e-12, rtol=1e-10, what="layer_deep_lift_shap: shared vs paired")
