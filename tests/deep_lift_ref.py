"""DeepLift by hand, after the paper (Shrikumar et al. 2017), the random small networks it is
checked on, and the fixed cases and helpers the DeepLift test files share."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import xattr
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


# fixed cases for the option tests: a CNN with max-pool and every activation kind, and an MLP
CNN = build("cnn", 3, (2, 4, 4), ("relu", "elu", "softplus"), True, 3)
MLP = build("mlp", 4, (5,), ("leaky_relu", "tanh", "gelu"), True, 3)
B = 3


def cnn_case():
    return CNN, random_tensor((B, 2, 4, 4), seed=1), random_tensor((B, 2, 4, 4), seed=2, scale=0.5)


def mlp_case():
    return MLP, random_tensor((B, 5), seed=3), random_tensor((B, 5), seed=4, scale=0.5)


class _Halves(xattr.rule.Rescale):
    shares_reference = False  # as a rule of the user's that reads paired rows as two halves


PAIRED = {torch.tanh: _Halves()}  # a rule that cannot share: DeepLift keeps its 2B paired rows


class SoftmaxHead(nn.Module):
    """f(x) = v . flatten(softmax(W x + c, dim=-1)): x (B, D) or (B, T, D)."""

    def __init__(self, d: int, c: int, t: int = 1):
        super().__init__()
        self.lin = nn.Linear(d, c)
        self.v = nn.Linear(t * c, 1, bias=False)
        self.double()

    def forward(self, x):
        return self.v(torch.softmax(self.lin(x), dim=-1).flatten(1))
