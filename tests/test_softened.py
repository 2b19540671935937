"""`xattr.softened` against hand-written smoothed models: explicit Softplus modules and an LSE
pool computed window by window in Python loops, for every spelling of ReLU and max-pool, in a
batch and under vmap/grad; convergence to the original; the LSE bounds; the user's model
untouched; errors."""

import copy
import itertools
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.softened import lse_pool
from xattr.testing.text_cnn import TextCNN, sentiment_data

D = torch.float64
BETA, T = 3.0, 0.4  # far from ReLU and max, so a missed op shows


# -- the reference: explicit windows --------------------------------------------------------------
def pool_windows(size: int, out: int, k: int, s: int, p: int, d: int) -> list:
    """The real positions of each of ``out`` windows along one dim (torch's max-pool windows)."""
    return [[i * s - p + j * d for j in range(k) if 0 <= i * s - p + j * d < size] for i in range(out)]


def adaptive_windows(size: int, out: int) -> list:
    return [list(range((i * size) // out, -(-((i + 1) * size) // out))) for i in range(out)]


def loop_lse(x: torch.Tensor, windows: list, t: float) -> torch.Tensor:
    """t log mean exp(w / t) over the product windows of the last len(windows) dims, one output
    element at a time (torch ops on the gathered elements, so it has gradients)."""
    nd = len(windows)
    lead = x.shape[: x.ndim - nd]
    out = torch.empty(lead + tuple(len(w) for w in windows), dtype=x.dtype)
    rows = []
    for idx in itertools.product(*(range(n) for n in lead)):
        for pos in itertools.product(*(range(len(w)) for w in windows)):
            cells = list(itertools.product(*(windows[i][pos[i]] for i in range(nd))))
            vals = torch.stack([x[idx + c] for c in cells])
            rows.append(t * (torch.logsumexp(vals / t, 0) - math.log(len(cells))))
    return torch.stack(rows).reshape(out.shape)


class RefPool(nn.Module):
    """A hand-written LSE pool: a torch max-pool's windows (its output size read from torch)."""

    def __init__(self, nd, t, k, s=None, p=0, d=1, ceil_mode=False, adaptive=None):
        super().__init__()
        self.nd, self.t, self.adaptive = nd, t, adaptive
        tup = lambda v: tuple(v) if isinstance(v, tuple) else (v,) * nd  # noqa: E731
        self.k, self.p, self.d = tup(k), tup(p), tup(d)
        self.s = self.k if s is None else tup(s)
        self.ceil_mode = ceil_mode

    def forward(self, x):
        sizes = x.shape[x.ndim - self.nd :]
        if self.adaptive is not None:
            outs = [sz if o is None else o for sz, o in zip(sizes, self.adaptive)]
            return loop_lse(x, [adaptive_windows(sz, o) for sz, o in zip(sizes, outs)], self.t)
        with torch.no_grad():
            ref = getattr(F, f"max_pool{self.nd}d")(x, self.k, self.s, self.p, self.d, ceil_mode=self.ceil_mode)
        outs = ref.shape[ref.ndim - self.nd :]
        wins = [pool_windows(sz, o, k, s, p, d) for sz, o, k, s, p, d in zip(sizes, outs, self.k, self.s, self.p, self.d)]
        return loop_lse(x, wins, self.t)


class RefReduce(nn.Module):
    def __init__(self, dims, keepdim, t):
        super().__init__()
        self.dims, self.keepdim, self.t = dims, keepdim, t

    def forward(self, x):
        dims = self.dims or tuple(range(x.ndim))
        return self.t * torch.log(torch.exp(x / self.t).mean(dims, keepdim=self.keepdim))


# -- models with each spelling ----------------------------------------------------------------------
RELUS = {
    "nn.ReLU": lambda: nn.ReLU(),
    "nn.ReLU(inplace=True)": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: F.relu,
    "F.relu(inplace=True)": lambda: partial(F.relu, inplace=True),
    "torch.relu": lambda: torch.relu,
    "x.relu()": lambda: torch.Tensor.relu,
    "x.relu_()": lambda: lambda z: z.relu_(),
    "torch.relu_": lambda: torch.relu_,
    "F.relu_": lambda: F.relu_,
}

# name -> (nd, pool callable, reference pool)
POOLS = {
    "nn.MaxPool1d(3, 2, 1)": (1, lambda: nn.MaxPool1d(3, stride=2, padding=1), lambda t: RefPool(1, t, 3, 2, 1)),
    "F.max_pool1d(2)": (1, lambda: partial(F.max_pool1d, kernel_size=2), lambda t: RefPool(1, t, 2)),
    "torch.max_pool1d(3, 1, 1)": (1, lambda: lambda z: torch.max_pool1d(z, 3, 1, 1), lambda t: RefPool(1, t, 3, 1, 1)),
    "MaxPool1d dilation ceil_mode": (1, lambda: nn.MaxPool1d(2, stride=2, padding=1, dilation=2, ceil_mode=True),
                                     lambda t: RefPool(1, t, 2, 2, 1, 2, True)),
    "nn.MaxPool2d(3, 2, 1, ceil_mode)": (2, lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                                         lambda t: RefPool(2, t, 3, 2, 1, 1, True)),
    "F.max_pool2d((2, 3), dilation)": (2, lambda: lambda z: F.max_pool2d(z, (2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
                                       lambda t: RefPool(2, t, (2, 3), (1, 2), (1, 1), (2, 1))),
    "torch.max_pool2d": (2, lambda: lambda z: torch.max_pool2d(z, 2), lambda t: RefPool(2, t, 2)),
    "nn.MaxPool3d": (3, lambda: nn.MaxPool3d(2, stride=1, padding=1), lambda t: RefPool(3, t, 2, 1, 1)),
    "nn.AdaptiveMaxPool1d(3)": (1, lambda: nn.AdaptiveMaxPool1d(3), lambda t: RefPool(1, t, 1, adaptive=(3,))),
    "F.adaptive_max_pool2d((2, None))": (2, lambda: lambda z: F.adaptive_max_pool2d(z, (2, None)),
                                         lambda t: RefPool(2, t, 1, adaptive=(2, None))),
    "x.max(dim=2).values": (1, lambda: lambda z: z.max(dim=2).values, lambda t: RefReduce((2,), False, t)),
    "torch.max(x, -1)[0]": (1, lambda: lambda z: torch.max(z, -1)[0], lambda t: RefReduce((2,), False, t)),
    "torch.amax(x, (1, 2))": (1, lambda: lambda z: torch.amax(z, (1, 2)), lambda t: RefReduce((1, 2), False, t)),
    "x.amax(-1, keepdim=True)": (1, lambda: lambda z: z.amax(-1, keepdim=True), lambda t: RefReduce((2,), True, t)),
}


class Net(nn.Module):
    """conv -> relu -> pool -> conv(1x1) -> relu (the same one again) -> linear."""

    def __init__(self, nd: int, relu, pool, size: int = 7):
        super().__init__()
        conv = getattr(nn, f"Conv{nd}d")
        self.conv = conv(2, 3, 3, padding=1)
        self.mix = conv(3, 3, 1)
        self.relu, self.pool = relu, pool
        self.shape = (2,) + (size,) * nd
        with torch.no_grad():
            n = self.features(torch.zeros((1,) + self.shape)).reshape(1, -1).shape[1]
        self.fc = nn.Linear(n, 2)

    def features(self, x):
        z = self.pool(self.relu(self.conv(x)))
        return self.relu(self.mix(z)) if z.ndim == x.ndim else z

    def forward(self, x):
        return self.fc(self.features(x).reshape(len(x), -1))


def pair(relu_name: str, pool_name: str, seed: int = 0):
    """(net with the spellings, its hand-smoothed twin sharing the weights)."""
    nd, pool, ref_pool = POOLS[pool_name]
    torch.manual_seed(seed)
    net = Net(nd, RELUS[relu_name](), pool()).to(D).eval()
    ref = copy.deepcopy(net)
    ref.relu, ref.pool = nn.Softplus(beta=BETA), ref_pool(T)
    return net, ref


def inputs(net, batch=3, seed=1):
    return torch.randn((batch,) + net.shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# -- the values and gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("relu_name", list(RELUS))
def test_every_relu_spelling_matches_softplus(relu_name):
    net, ref = pair(relu_name, "nn.MaxPool1d(3, 2, 1)")
    x = inputs(net)
    soft = xattr.softened(net, beta=BETA, temperature=T)
    torch.testing.assert_close(soft(x), ref(x), atol=1e-12, rtol=1e-10)
    assert (soft(x) - net(x)).abs().max() > 1e-2  # the smoothing is not a no-op here
    g = torch.func.vmap(torch.func.grad(lambda v: soft(v[None])[0, 0]))(x)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref(xr)[:, 0].sum(), xr)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)


def test_in_place_relu_writes_into_its_input():
    x = torch.randn(4, 5, dtype=D)
    for call in (lambda z: (z.relu_(), z)[1], lambda z: (F.relu(z, inplace=True), z)[1], lambda z: (torch.relu_(z), z)[1]):
        y = xattr.softened(_Fn(lambda v: call(v * 1.0)), beta=BETA)(x)
        torch.testing.assert_close(y, F.softplus(x, beta=BETA))


@pytest.mark.parametrize("pool_name", [n for n in POOLS if POOLS[n][2](T).__class__ is RefPool])
def test_the_reference_windows_are_torchs_max_pool_windows(pool_name):
    # at a tiny temperature the loop reference is torch's own max-pool: its windows are right
    net, _ = pair("nn.ReLU", pool_name)
    z = torch.randn((2, 2) + net.shape[1:], generator=torch.Generator().manual_seed(5), dtype=D)
    torch.testing.assert_close(POOLS[pool_name][2](1e-9)(z), net.pool(z), atol=1e-7, rtol=0)


@pytest.mark.parametrize("pool_name", list(POOLS))
def test_every_pool_spelling_matches_the_loop_lse_in_batch_and_under_vmap_grad(pool_name):
    net, ref = pair("nn.ReLU", pool_name)
    x = inputs(net)
    soft = xattr.softened(net, beta=BETA, temperature=T)
    torch.testing.assert_close(soft(x), ref(x), atol=1e-12, rtol=1e-10)
    # per-example gradients: vmap(grad) of the softened model against autograd of the loop reference
    g = torch.func.vmap(torch.func.grad(lambda v: soft(v[None])[0, 1]))(x)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref(xr)[:, 1].sum(), xr)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)
    # and an xattr method on top
    torch.testing.assert_close(xattr.saliency(xattr.target(soft, 1))(x), g_ref.abs(), atol=1e-12, rtol=1e-10)


def test_reused_relu_module_is_softened_at_every_call():
    net, ref = pair("nn.ReLU", "nn.MaxPool1d(3, 2, 1)")
    calls = []
    net.relu.register_forward_hook(lambda m, a, o: calls.append(1))
    x = inputs(net)
    torch.testing.assert_close(xattr.softened(net, beta=BETA, temperature=T)(x), ref(x), atol=1e-12, rtol=1e-10)
    assert len(calls) == 2


def test_full_max_reduction_and_indices():
    soft_max = xattr.softened(_Fn(lambda z: z.max()), temperature=T)
    x = torch.randn(3, 4, dtype=D)
    torch.testing.assert_close(soft_max(x), T * torch.log(torch.exp(x / T).mean()))
    values, indices = xattr.softened(_Fn(lambda z: torch.max(z, 1)), temperature=T)(x)
    torch.testing.assert_close(values, T * torch.log(torch.exp(x / T).mean(1)))
    assert torch.equal(indices, x.argmax(1))  # torch's own argmax


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *a):
        return self.fn(*a)


def test_left_alone_integers_two_tensor_max_and_opt_out():
    x, y = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D)
    ids = torch.randint(0, 9, (3, 5))
    assert torch.equal(xattr.softened(_Fn(lambda i: i.max(1).values))(ids), ids.max(1).values)
    assert torch.equal(xattr.softened(_Fn(lambda a, b: torch.max(a, b)))(x, y), torch.max(x, y))
    off = xattr.softened(_Fn(lambda z: z.max(dim=1).values + torch.amax(z, 1)), max_reductions=False)
    assert torch.equal(off(x), 2 * x.max(1).values)
    # the opt-out leaves pools smoothed
    pooled = xattr.softened(nn.MaxPool1d(5), temperature=T, max_reductions=False)(x[:, None])
    torch.testing.assert_close(pooled[:, 0, 0], T * torch.log(torch.exp(x / T).mean(1)))


def test_text_cnn_layer_attributions_match_the_hand_smoothed_model():
    torch.manual_seed(0)
    model = TextCNN().to(D).eval()
    ids, _ = sentiment_data(4, generator=3)

    class Ref(nn.Module):  # the text CNN written out smooth: Softplus module, LSE over time
        def __init__(self, m):
            super().__init__()
            self.embedding, self.conv, self.fc = m.embedding, m.conv, m.fc
            self.act = nn.Softplus(beta=BETA)

        def forward(self, i):
            z = self.act(self.conv(self.embedding(i).transpose(1, 2)))
            return self.fc(loop_lse(z, [[list(range(z.shape[2]))]], T)[..., 0])

    soft, ref = xattr.softened(model, beta=BETA, temperature=T), Ref(model)
    for method in (xattr.saliency, xattr.input_x_gradient, partial(xattr.integrated_gradients, n_steps=8)):
        split_s = xattr.at_layer(xattr.target(soft, 1), soft.embedding)  # the user's own embedding module
        split_r = xattr.at_layer(xattr.target(ref, 1), ref.embedding)
        got = method(split_s.head)(split_s.act(ids), ids)
        want = method(split_r.head)(split_r.act(ids), ids)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("make", [lambda f: xattr.deep_lift(f), lambda f: xattr.lrp(f), lambda f: xattr.guided_backprop(f)])
def test_rule_methods_run_on_the_softened_ops(make):
    net, ref = pair("nn.ReLU(inplace=True)", "nn.MaxPool2d(3, 2, 1, ceil_mode)")
    x = inputs(net, 2)
    got = make(xattr.target(xattr.softened(net, beta=BETA, temperature=T), 0))(x)
    assert got.shape == x.shape and torch.isfinite(got).all()


def test_deep_lift_sums_exactly_through_softplus_and_the_lse_pool():
    # softplus takes Rescale, logsumexp the secant of logsumexp (NOTE: [Softened operations])
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(21, 2)).to(D).eval()
    pooled = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(9, 2)).to(D).eval()
    x = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(2), dtype=D)
    gaps = []
    for model in (plain, pooled):
        f = xattr.target(xattr.softened(model, beta=BETA, temperature=T), 1)
        with torch.no_grad():
            change = f(x) - f(torch.zeros_like(x))
        gaps.append(float((xattr.deep_lift(f)(x).sum((1, 2)) - change).abs().max()))
    assert gaps[0] < 1e-12 and gaps[1] < 1e-12, gaps


# -- limits: large beta, small t -------------------------------------------------------------------
@pytest.mark.parametrize("pool_name", ["nn.MaxPool2d(3, 2, 1, ceil_mode)", "MaxPool1d dilation ceil_mode", "x.max(dim=2).values",
                                       "F.adaptive_max_pool2d((2, None))"])
def test_large_beta_small_temperature_converge_to_relu_and_max(pool_name):
    net, _ = pair("F.relu", pool_name)
    x = inputs(net)
    errors = []
    for beta, t in ((10.0, 0.1), (1e3, 1e-3), (1e6, 1e-6)):
        errors.append(float((xattr.softened(net, beta=beta, temperature=t)(x) - net(x)).detach().abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4, errors


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), size=st.integers(3, 9), k=st.integers(1, 4), s=st.integers(1, 3), d=st.integers(1, 2),
       pad=st.integers(0, 2), ceil_mode=st.booleans(), t1=st.floats(0.01, 2.0), ratio=st.floats(1.1, 5.0))
def test_lse_lies_between_mean_and_max_and_decreases_with_t(seed, size, k, s, d, pad, ceil_mode, t1, ratio):
    span = d * (k - 1) + 1
    p = min(pad, k // 2)
    if span > size + 2 * p:
        return
    x = 3 * torch.randn(2, 1, size, generator=torch.Generator().manual_seed(seed), dtype=D)
    hard = F.max_pool1d(x, k, s, p, d, ceil_mode=ceil_mode)
    wins = pool_windows(size, hard.shape[-1], k, s, p, d)
    n = torch.tensor([len(w) for w in wins], dtype=D)
    mean = torch.stack([x[..., w].mean(-1) for w in wins], -1)
    lo, hi = lse_pool(x, 1, t1, k, s, p, d, ceil_mode), lse_pool(x, 1, t1 * ratio, k, s, p, d, ceil_mode)
    tol = 1e-12
    assert (lo <= hard + tol).all() and (lo >= hard - t1 * n.log() - tol).all()
    assert (lo >= mean - tol).all()
    assert (hi <= lo + tol).all()  # a larger t: smaller (towards the mean)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.1, 50.0), scale=st.floats(0.01, 30.0))
def test_softplus_is_above_relu_by_at_most_log2_over_beta(seed, beta, scale):
    x = scale * torch.randn(50, generator=torch.Generator().manual_seed(seed), dtype=D)
    y = xattr.softened(nn.ReLU(), beta=beta)(x)
    assert (y >= x.relu()).all() and (y - x.relu() <= math.log(2) / beta + 1e-12).all()


# -- the user's model ------------------------------------------------------------------------------
def test_user_model_untouched_and_shared():
    net, _ = pair("nn.ReLU(inplace=True)", "nn.MaxPool1d(3, 2, 1)")
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    soft = xattr.softened(net)
    assert all(a is b for a, b in zip(soft.parameters(), net.parameters()))
    assert soft.conv is net.conv and soft.module is net
    x = inputs(net)
    soft(x)
    xattr.saliency(xattr.target(soft, 0))(x)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for m in net.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
    assert torch._C._len_torch_function_stack() == 0  # the mode is gone after the call
    assert (net(x) - soft(x)).abs().max() > 1e-3  # the original still computes the original


def test_randomization_check_and_eval_work_on_the_wrapper():
    torch.manual_seed(0)
    soft = xattr.softened(TextCNN().train())
    assert soft.eval() is soft and not soft.module.training
    ids, _ = sentiment_data(3, generator=1)
    r = xattr.metrics.randomization_check(soft, lambda m: lambda i: m(i)[:, 0:1].expand(-1, 2), ids, similarity=("spearman",),
                                          generator=0)
    assert r.layers == ["module.fc", "module.conv", "module.embedding"]


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, what", [
    (lambda z: F.max_pool1d(z, 2, return_indices=True), "indices"),
    (lambda z: nn.MaxPool1d(2, return_indices=True)(z), "indices"),
    (lambda z: F.adaptive_max_pool1d(z, 2, return_indices=True), "indices"),
    (lambda z: F.max_pool1d_with_indices(z, 2), "indices"),
    (lambda z: torch.max(z, 1, out=(torch.empty(2, 6), torch.empty(2, 6, dtype=torch.long))), "out="),
    (lambda z: F.fractional_max_pool2d(z[:, :, :, None].expand(-1, -1, -1, 6), 2, output_size=2), "fractional"),
])
def test_refused_maxima_raise(call, what):
    with pytest.raises(ValueError, match=what):
        xattr.softened(_Fn(call))(torch.randn(2, 3, 6))


def test_invalid_pools_raise_like_torch():
    x = torch.randn(2, 3, 6)
    with pytest.raises(RuntimeError):
        nn.MaxPool1d(2, padding=2)(x)  # torch refuses it ...
    with pytest.raises(ValueError, match="half the kernel"):
        xattr.softened(nn.MaxPool1d(2, padding=2))(x)  # ... and so does the LSE pool
    with pytest.raises(ValueError, match="larger than the input"):
        xattr.softened(nn.MaxPool1d(9))(x)
    with pytest.raises(ValueError, match="output_size"):
        xattr.softened(_Fn(lambda z: F.adaptive_max_pool1d(z, (2, 2))))(x)


def test_relu_rnn_refused_and_bad_arguments():
    with pytest.raises(ValueError, match="ReLU RNN"):
        xattr.softened(nn.RNN(3, 4, nonlinearity="relu"))(torch.randn(2, 5, 3))
    for kw in ({"beta": 0}, {"beta": -1.0}, {"temperature": 0.0}, {"temperature": math.inf}, {"beta": True}):
        with pytest.raises(ValueError, match="> 0"):
            xattr.softened(nn.ReLU(), **kw)
    with pytest.raises(TypeError, match="nn.Module"):
        xattr.softened(torch.relu)
    with pytest.raises(TypeError, match="max_reductions"):
        xattr.softened(nn.ReLU(), max_reductions=1)
    with pytest.raises(TypeError, match="TorchScript"):
        xattr.softened(torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU())))
    with pytest.raises(RuntimeError, match="torch.fx"):
        torch.fx.symbolic_trace(xattr.softened(nn.Sequential(nn.Linear(2, 2), nn.ReLU())))
