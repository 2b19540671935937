"""Random small architectures (DAGs) for fuzzing the rule-based methods, and slow references.

An architecture is a tuple of steps; each step reads earlier nodes by index and appends one node
(the input is node 0, the model's output is a linear head on the last node). `architectures`
draws them with hypothesis, tracking every node's shape, so each drawn net is valid; `FuzzNet`
builds one deterministically from a seed, in float64 and eval mode.

Every nonlinearity goes through `FuzzNet.nonlinear`, which in reference mode (`FuzzNet.reference`)
swaps the op for an `autograd.Function` of this file: guided backprop's masked ReLU backward,
or DeepLift's Rescale multiplier ``(phi(x) - phi(b)) / (x - b)`` on rows ``[x; b]`` written
out per pair, with softmax's mean-subtracted rule; deconvolution's ReLU of the gradient. So the references share nothing with xattr
but the model's layers, whose ordinary gradients they use.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

RELU_SPELLINGS = ("module", "shared_module", "module_inplace", "functional", "functional_inplace", "torch_relu_", "method",
                  "method_inplace")
IN_PLACE_SPELLINGS = frozenset({"module_inplace", "functional_inplace", "torch_relu_", "method_inplace", "clamp_min_"})
CLAMP_SPELLINGS = ("clamp", "maximum", "clamp_min_")  # ReLU's values, kind "clamp": every rule method treats them as ReLU
SMOOTH = ("leaky_relu", "elu", "sigmoid", "tanh", "softplus", "gelu", "silu")
_FUNCTIONS = {"relu": torch.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.1), "elu": lambda t: F.elu(t, 0.7),
              "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": lambda t: F.softplus(t, beta=1.5), "gelu": F.gelu,
              "silu": F.silu}
_MODULES = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": lambda: nn.ELU(0.7), "sigmoid": nn.Sigmoid,
            "tanh": nn.Tanh, "softplus": lambda: nn.Softplus(beta=1.5), "gelu": nn.GELU, "silu": nn.SiLU}
# steps whose backward DeepLift's rules do not replace by a multiplier (docs/rules.md): with them
# summation-to-delta is not promised (a gate, a product of two paths, has DeepLift's product rule)
INEXACT = frozenset({"layer_norm", "softmax", "attention"})


class GuidedReLU(torch.autograd.Function):
    """Guided backprop's ReLU, written out: ``max(g, 0) * [x > 0]``."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x > 0).to(g.dtype)


class DeconvReLU(torch.autograd.Function):
    """Deconvolution's ReLU, written out: ``max(g, 0)``."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


class _Rescale(torch.autograd.Function):
    """phi on rows [x; b] with the multiplier of each pair in both halves' backward."""

    @staticmethod
    def forward(ctx, x, phi, eps):
        y = phi(x)
        x1, x2 = x.chunk(2)
        y1, y2 = y.chunk(2)
        with torch.enable_grad():
            t = x1.detach().requires_grad_()
            slope = torch.autograd.grad(phi(t).sum(), t)[0]  # phi' at x, where |x - b| < eps
        near = (x1 - x2).abs() < eps
        m = torch.where(near, slope, (y1 - y2) / torch.where(near, torch.ones_like(x1), x1 - x2))
        ctx.save_for_backward(m)
        return y

    @staticmethod
    def backward(ctx, g):
        (m,) = ctx.saved_tensors
        return g * torch.cat([m, m]), None, None


class PairedProduct(torch.autograd.Function):
    """``a * b`` on rows [x; b] in dim 0, each factor's gradient the other factor averaged over
    each input row and its reference row (a factor of one row is its own average), broadcast
    where the factors broadcast and summed back: ``a * b - a_ref * b_ref = avg(b) (a - a_ref) +
    avg(a) (b - b_ref)``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return (g * _pair_average(b)).sum_to_size(a.shape), (g * _pair_average(a)).sum_to_size(b.shape)


class PairedMatmul(torch.autograd.Function):
    """``a @ b`` (batched, both at least 2-d, rows [x; b] in dim 0), with matmul's gradient at the
    factors averaged over each input row and its reference row: ``a @ b - a_ref @ b_ref =
    (a - a_ref) @ avg(b) + avg(a) @ (b - b_ref)``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.matmul(a, b)  # torch.matmul: test_rule_zoo's reference patches the Tensor methods with this

    @staticmethod
    def backward(ctx, g):
        a, b = (_pair_average(t) for t in ctx.saved_tensors)
        return torch.matmul(g, b.transpose(-2, -1)), torch.matmul(a.transpose(-2, -1), g)


def _pair_average(t: torch.Tensor) -> torch.Tensor:
    if t.shape[0] == 1:
        return t
    half = t.shape[0] // 2
    return torch.cat([(t[:half] + t[half:]) / 2] * 2)


class _RescaleSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, eps):
        y = torch.softmax(x, dim)
        dx = torch.cat([x.chunk(2)[0] - x.chunk(2)[1]] * 2)
        dy = torch.cat([y.chunk(2)[0] - y.chunk(2)[1]] * 2)
        near = dx.abs() < eps
        ctx.save_for_backward(y, near, dy / torch.where(near, torch.ones_like(dx), dx))
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, g):
        y, near, ratio = ctx.saved_tensors
        ordinary = y * (g - (g * y).sum(ctx.dim, keepdim=True))
        u = torch.where(near, ordinary, g * ratio)
        return u - u.mean(ctx.dim, keepdim=True), None, None


class FuzzNet(nn.Module):
    """The net of an architecture (see the module docstring); ``reference`` switches its
    nonlinearities to the slow references ("guided", "deconv" or "deep_lift")."""

    def __init__(self, arch: tuple, in_shape: tuple, seed: int, n_out: int = 3, bias: bool = True, positive: bool = False):
        super().__init__()
        self.arch, self.mode = arch, None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            shapes = shapes_of(arch, in_shape)
            self.layers = nn.ModuleList(self._layer(step, shapes, bias) for step in arch)
            self.shared_relu = nn.ReLU()
            self.head = nn.Linear(math.prod(shapes[-1]), n_out, bias=bias)
            for m in self.modules():
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    nn.init.uniform_(m.weight, 0.5, 1.5)
                    nn.init.uniform_(m.bias, -0.5, 0.5)
                if positive and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                    m.weight.data.abs_()
        self.double().eval()

    @staticmethod
    def _layer(step, shapes, bias: bool) -> nn.Module:
        op, (i, *_), opts = step[0], step[1], step[2:]
        shape = shapes[i]
        if op == "linear":
            return nn.Linear(shape[-1], opts[0], bias=bias)
        if op == "conv":
            conv = nn.Conv1d if len(shape) == 2 else nn.Conv2d
            return conv(shape[0], opts[0], opts[1], padding=opts[2], bias=bias)
        if op == "batch_norm":
            return (nn.BatchNorm1d if len(shape) <= 2 else nn.BatchNorm2d)(shape[0])
        if op == "layer_norm":
            return nn.LayerNorm(shape[-1])
        if op == "scale":
            return nn.Dropout(0.5)  # eval mode: the identity
        if op == "attention":
            return nn.Linear(shape[0], 3 * shape[0], bias=bias)
        if op in ("act", "split_acts") and "module" in opts:
            return nn.ModuleList(_MODULES[k]() for k in opts[0:4:2])
        if op == "act" and opts[1] == "module_inplace":
            return nn.ReLU(inplace=True)
        return nn.Identity()

    def extra_repr(self) -> str:
        return f"arch={self.arch}"

    @contextlib.contextmanager
    def reference(self, mode: str, eps: float = 1e-10):
        self.mode, self.eps = mode, eps
        try:
            yield self
        finally:
            self.mode = None

    def nonlinear(self, kind: str, x, spelling: str = "functional", layer=None):
        if self.mode in ("guided", "deconv") and kind == "relu":
            return (GuidedReLU if self.mode == "guided" else DeconvReLU).apply(x)
        if self.mode == "deep_lift":
            if kind == "softmax":
                return _RescaleSoftmax.apply(x, -1, self.eps)
            if kind in _FUNCTIONS:
                return _Rescale.apply(x, _FUNCTIONS[kind], self.eps)
        if kind == "softmax":
            return torch.softmax(x, -1)
        if spelling == "module":
            return layer(x)
        if kind != "relu":
            return _FUNCTIONS[kind](x)
        return {"shared_module": lambda: self.shared_relu(x), "module_inplace": lambda: layer(x),
                "functional": lambda: F.relu(x), "functional_inplace": lambda: F.relu(x, inplace=True),
                "torch_relu_": lambda: torch.relu_(x), "method": lambda: x.relu(), "method_inplace": lambda: x.relu_(),
                "clamp": lambda: x.clamp(min=0), "maximum": lambda: torch.maximum(x, torch.zeros_like(x)),
                "clamp_min_": lambda: x.clamp_min_(0)}[spelling]()

    def forward(self, x):
        nodes = [x]
        for step, layer in zip(self.arch, self.layers):
            nodes.append(self._run(step, layer, nodes))
        return self.head(nodes[-1].flatten(1))

    def _run(self, step, layer, nodes):
        op, ins, opts = step[0], [nodes[i] for i in step[1]], step[2:]
        x = ins[0]
        if op in ("linear", "conv", "batch_norm", "layer_norm"):
            return layer(x)
        if op == "act":
            return self.nonlinear(opts[0], x, opts[1], layer[0] if isinstance(layer, nn.ModuleList) else layer)
        if op == "split_acts":  # chunk or split on dim 1, a nonlinearity on each part, cat
            parts = x.chunk(2, 1) if opts[-1] == "chunk" else x.split([1, x.shape[1] - 1], 1)
            mods = list(layer) if isinstance(layer, nn.ModuleList) else [None, None]
            return torch.cat([self.nonlinear(opts[0], parts[0], opts[1], mods[0]),
                              self.nonlinear(opts[2], parts[1], opts[3], mods[-1])], 1)
        if op == "pool":
            kind, k, stride, pad, ceil, spelled = opts
            nd = x.ndim - 2
            if kind == "max":
                if spelled == "module":
                    return (nn.MaxPool1d if nd == 1 else nn.MaxPool2d)(k, stride, pad, ceil_mode=ceil)(x)
                return getattr(F, f"max_pool{nd}d")(x, k, stride, pad, ceil_mode=ceil)
            if kind == "avg":
                if spelled == "module":
                    return (nn.AvgPool1d if nd == 1 else nn.AvgPool2d)(k, stride, pad, ceil_mode=ceil)(x)
                return getattr(F, f"avg_pool{nd}d")(x, k, stride, pad, ceil_mode=ceil)
            return getattr(F, f"{kind}_pool{nd}d")(x, k)
        if op == "add":
            return x + ins[1]
        if op == "gate":  # a product of two paths of the input
            gate = self.nonlinear("sigmoid", ins[1])
            return PairedProduct.apply(x, gate) if self.mode == "deep_lift" else x * gate
        if op == "cat":
            return torch.cat(ins, 1)
        if op == "scale":
            return x / opts[0] if opts[1] == "div" else layer(x) * opts[0]
        if op == "mean":
            return x.mean(-1)
        if op == "flatten":
            return x.flatten(1) if opts[0] == "flatten" else x.reshape(x.shape[0], -1) if opts[0] == "reshape" else x.contiguous().view(len(x), -1)
        if op == "unflatten":
            return x.view(x.shape[0], opts[0], -1)
        if op == "transpose":
            return x.permute(0, 2, 1) if x.ndim == 3 else x.transpose(2, 3)
        if op == "softmax":
            return self.nonlinear("softmax", x)
        if op == "attention":  # (B, C, L): L tokens of C features
            q, k, v = layer(x.transpose(1, 2)).chunk(3, -1)
            if opts[0] == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                mm = PairedMatmul.apply if self.mode == "deep_lift" else torch.matmul
                out = mm(self.nonlinear("softmax", mm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])), v)
            return out.transpose(1, 2)
        raise ValueError(op)


def _out_shape(step, shapes) -> tuple:
    op, ins, opts = step[0], step[1], step[2:]
    s = shapes[ins[0]]
    if op == "linear":
        return s[:-1] + (opts[0],)
    if op == "conv":
        return (opts[0],) + tuple(n + 2 * opts[2] - opts[1] + 1 for n in s[1:])
    if op == "pool":
        kind, k, stride, pad, ceil = opts[:5]
        if kind in ("max", "avg"):
            rnd = math.ceil if ceil else math.floor
            sizes = [rnd((n + 2 * pad - k) / stride) + 1 for n in s[1:]]
            if ceil:  # torch drops a last window that starts in the right padding
                sizes = [m - 1 if (m - 1) * stride >= n + pad else m for m, n in zip(sizes, s[1:])]
            return (s[0],) + tuple(sizes)
        return (s[0],) + (k,) * (len(s) - 1)
    if op == "cat":
        return (sum(shapes[i][0] for i in ins),) + s[1:]
    if op == "mean":
        return s[:-1]
    if op == "flatten":
        return (math.prod(s),)
    if op == "unflatten":
        return (opts[0], s[0] // opts[0])
    if op == "transpose":
        return (s[1], s[0]) if len(s) == 2 else (s[0], s[2], s[1])
    return s


def shapes_of(arch, in_shape) -> list:
    """One example's shape at every node: the input's, then each step's output."""
    shapes = [tuple(in_shape)]
    for step in arch:
        shapes.append(_out_shape(step, shapes))
    return shapes


def _relu_or(draw, kinds, spellings, in_place: bool):
    """A nonlinearity and its spelling; ``in_place``: whether an in-place ReLU may be drawn."""
    kind = draw(st.sampled_from(kinds))
    if kind != "relu":
        return kind, draw(st.sampled_from(("module", "functional")))
    spelling = draw(st.sampled_from(spellings))
    return kind, "functional" if spelling in IN_PLACE_SPELLINGS and not in_place else spelling


@st.composite
def architectures(draw, *, ops=None, kinds=("relu",) + SMOOTH, spellings=RELU_SPELLINGS, max_steps: int = 7):
    """(arch, in_shape): ``ops`` the step kinds allowed (default all), ``kinds`` the nonlinearities,
    ``spellings`` ReLU's."""
    allowed = set(ops or ("linear", "conv", "act", "split_acts", "pool", "batch_norm", "add", "cat", "scale", "mean", "flatten",
                          "unflatten", "transpose") + tuple(INEXACT))
    layout = draw(st.sampled_from(["vec", "seq", "img"]))
    in_shape = {"vec": (draw(st.integers(2, 6)),), "seq": (draw(st.integers(1, 3)), draw(st.integers(4, 8))),
                "img": (draw(st.integers(1, 2)), draw(st.integers(4, 6)), draw(st.integers(4, 6)))}[layout]
    shapes, arch, fresh, dead = [in_shape], [], False, set()  # fresh: the last node is a linear or conv output used nowhere else
    for _ in range(draw(st.integers(2, max_steps))):
        options = [o for o in _candidates(shapes[-1]) if o in allowed]
        step = _draw_step(draw, draw(st.sampled_from(options)), shapes, fresh, kinds, dead, spellings)
        if step[0] == "act" and step[3] in IN_PLACE_SPELLINGS:
            dead.add(len(shapes) - 1)  # written in place: later steps read the activation, not this node
        fresh = step[0] in ("linear", "conv")
        arch.append(step)
        shapes.append(_out_shape(step, shapes))
    if not any(s[0] in ("act", "split_acts", "pool", "gate", "softmax", "attention") for s in arch) and "act" in allowed:
        arch.append(_draw_step(draw, "act", shapes, fresh, kinds, dead, spellings))
    return tuple(arch), in_shape


def _candidates(s: tuple) -> list:
    """The steps that can follow a node of one example's shape s."""
    n = len(s)
    out = ["linear", "linear", "act", "act", "act", "scale", "layer_norm", "softmax", "gate", "add", "add"]  # repeats: more likely
    if n >= 2:
        out += ["conv", "conv", "batch_norm", "mean", "flatten", "transpose", "cat"] + (["pool"] * 3 if min(s[1:]) >= 2 else [])
    if n <= 2 and s[0] >= 2:
        out += ["split_acts"]
    if n == 1:
        out += ["batch_norm", "unflatten"] if s[0] % 2 == 0 else ["batch_norm"]
    if n == 2 and s[0] <= 4:
        out += ["attention"]
    return out


def _draw_step(draw, op, shapes, fresh, kinds, dead, spellings):
    last = len(shapes) - 1
    s = shapes[last]
    same = [i for i, t in enumerate(shapes) if t == s and i not in dead]
    if op == "linear":
        return ("linear", (last,), draw(st.integers(2, 6)))
    if op == "conv":
        k = draw(st.integers(1, min(3, *s[1:])))
        return ("conv", (last,), draw(st.integers(1, 3)), k, draw(st.integers(0, (k - 1) // 2 + 1) if k > 1 else st.just(0)))
    if op == "act":  # in place only on a layer output used nowhere else
        return ("act", (last,), *_relu_or(draw, kinds, spellings, fresh))
    if op == "split_acts":
        a, b = (_relu_or(draw, kinds, spellings, False) for _ in range(2))
        return ("split_acts", (last,), *a, *b, draw(st.sampled_from(["chunk", "split"])))
    if op == "pool":
        kind = draw(st.sampled_from(["max", "avg", "max", "adaptive_max", "adaptive_avg"]))
        if kind.startswith("adaptive"):
            return ("pool", (last,), kind, draw(st.integers(1, min(s[1:]))), None, None, None, None)
        k = draw(st.integers(2, min(3, *s[1:])))
        pad = draw(st.integers(0, k // 2))
        return ("pool", (last,), kind, k, draw(st.integers(1, k)), pad, draw(st.booleans()), draw(st.sampled_from(["module", "functional"])))
    if op in ("add", "gate"):
        return (op, (last, draw(st.sampled_from(same))))
    if op == "cat":
        return ("cat", (last, draw(st.sampled_from([i for i, t in enumerate(shapes) if t[1:] == s[1:] and i not in dead]))))
    if op == "scale":
        return ("scale", (last,), draw(st.sampled_from([0.5, 3.0])), draw(st.sampled_from(["div", "dropout"])))
    if op == "flatten":
        return ("flatten", (last,), draw(st.sampled_from(["flatten", "reshape", "view"])))
    if op == "unflatten":
        return ("unflatten", (last,), 2)
    if op == "attention":
        return ("attention", (last,), draw(st.sampled_from(["matmul", "sdpa"])))
    return (op, (last,))
