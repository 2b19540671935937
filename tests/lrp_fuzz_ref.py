"""Random sequential networks, random LRP composites, and a layer-by-layer LRP reference.

The reference shares nothing with xattr's rules: each layer is read as a dense affine map
``z = A x + b`` of one example's flattened activation (A from the layer applied to the identity,
so a conv is its matrix; a max-pool the 0/1 matrix selecting each window's argmax), and each
rule's relevance is written out in relevance form from docs/lrp.md:

- epsilon / gamma / positive weights: ``R_i = sum_j x_i rho(A)_ji / stab(z'_j) R_j`` with
  ``z' = rho(A) x + rho(b)``, ``stab(z) = z + eps sign(z)`` (sign(0) = 1);
- alpha-beta: ``R_i = sum_j (alpha (x_i A_ji)+ / stab(z+_j) - beta (x_i A_ji)- / stab(z-_j)) R_j``,
  the bias joining the part of its sign;
- w^2, flat, z^B: ``R_i = sum_j c_ji / stab(sum_i c_ji) R_j`` with ``c = A^2``, ``1``, and
  ``x_i A_ji - l_i A+_ji - h_i A-_ji``;
- activations (the ReLU's derivative, or `Pass`) and flatten: ``R_x = R_y``;
- a residual add ``y = x + h``: ``R_x = x / y R_y``, ``R_h = h / y R_y`` (proportional split).

Rules are chosen as docs/rules.md says: from the innermost running module outwards, at each its
name, then instance, then type; then the op's kind; the first rule that accepts the kind wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.rule import AlphaBeta, Epsilon, Flat, Gamma, Pass, PositiveWeights, WSquare, ZBox, ZPlus
from xattr.testing.strategies import seeds

D = torch.float64
K = 3  # classes
_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOLS = {1: dict(avg=nn.AvgPool1d, max=nn.MaxPool1d, adaptive_avg=nn.AdaptiveAvgPool1d, adaptive_max=nn.AdaptiveMaxPool1d),
          2: dict(avg=nn.AvgPool2d, max=nn.MaxPool2d, adaptive_avg=nn.AdaptiveAvgPool2d, adaptive_max=nn.AdaptiveMaxPool2d)}
_ACTS = dict(relu=nn.ReLU, tanh=nn.Tanh, leaky=lambda: nn.LeakyReLU(0.1))
# the kind key of lrp_rules() for each op kind (relu has none: its ordinary derivative)
KIND_KEYS = {"linear": F.linear, "conv": torch.conv2d, "batch_norm": F.batch_norm, "avg_pool": F.avg_pool2d,
             "max_pool": F.max_pool2d, "tanh": torch.tanh, "leaky_relu": F.leaky_relu}


class Residual(nn.Module):
    """``x + b(act(a(x)))`` on (B, F)."""

    def __init__(self, n: int):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n)

    def forward(self, x):
        return x + self.b(self.act(self.a(x)))


class Net(nn.Module):
    """Layers in order; ``x.flatten(1)`` before layer ``flatten_at`` (a function, so Captum sees no module)."""

    def __init__(self, layers, flatten_at: int):
        super().__init__()
        self.layers, self.flatten_at = nn.ModuleList(layers), flatten_at

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            if i == self.flatten_at:
                x = x.flatten(1)
            x = layer(x)
        return x


def kind_of(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "batch_norm"
    if isinstance(m, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        return "avg_pool"
    if isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return "max_pool"
    return {nn.ReLU: "relu", nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu"}.get(type(m))


def _out_len(n, k, s, p):
    return (n + 2 * p - k) // s + 1


@st.composite
def architectures(draw, *, captum: bool = False):
    """(layers as specs, input shape): a conv stage (1-d or 2-d), flatten, a dense stage, a head."""
    nd = draw(st.sampled_from([0, 2] if captum else [0, 1, 2]))
    acts = ["relu", "relu", "tanh"] + ([] if captum else ["leaky"])
    if nd == 0:
        shape = (draw(st.integers(3, 6)),)
    else:
        shape = (draw(st.integers(1, 3)),) + tuple(draw(st.integers(4, 7)) for _ in range(nd))
    specs, c, size = [], shape[0], list(shape[1:])
    for _ in range(draw(st.integers(0, 2)) if nd else 0):
        k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
        if min(_out_len(n, k, s, p) for n in size) < 1:
            continue
        out = draw(st.integers(2, 4))
        specs.append(("conv", nd, c, out, k, s, p, draw(st.booleans())))
        c, size = out, [_out_len(n, k, s, p) for n in size]
        if draw(st.booleans()):
            specs.append(("bn", nd, c))
        specs.append(("act", draw(st.sampled_from(acts))))
        pool = draw(st.sampled_from(["none", "avg", "max", "adaptive_avg"] + ([] if captum else ["adaptive_max"])))
        if pool != "none" and min(size) >= 2:
            if pool.startswith("adaptive"):
                o = draw(st.integers(1, 2))
                specs.append(("pool", nd, pool, o))
                size = [o] * nd
            else:
                s = draw(st.integers(1, 2))
                specs.append(("pool", nd, pool, 2, s))
                size = [_out_len(n, 2, s, 0) for n in size]
    flatten_at = len(specs) if nd else -1
    n = c * int(torch.tensor(size).prod()) if nd else shape[0]
    for _ in range(draw(st.integers(0, 2))):
        out = draw(st.integers(2, 6))
        specs.append(("linear", n, out, draw(st.booleans())))
        n = out
        if not captum and draw(st.booleans()):  # Captum has no rule for BatchNorm1d
            specs.append(("bn", 0, n))
        specs.append(("act", draw(st.sampled_from(acts))))
    if not captum and draw(st.booleans()):
        specs.append(("residual", n))
    specs.append(("linear", n, K, draw(st.booleans())))
    return tuple(specs), flatten_at, shape


def build(specs, flatten_at: int, seed: int) -> Net:
    layers = []
    for spec in specs:
        if spec[0] == "conv":
            _, nd, cin, cout, k, s, p, bias = spec
            layers.append(_CONV[nd](cin, cout, k, stride=s, padding=p, bias=bias))
        elif spec[0] == "linear":
            layers.append(nn.Linear(spec[1], spec[2], bias=spec[3]))
        elif spec[0] == "bn":
            layers.append(_BN[spec[1]](spec[2]))
        elif spec[0] == "act":
            layers.append(_ACTS[spec[1]]())
        elif spec[0] == "pool":
            cls = _POOLS[spec[1]][spec[2]]
            layers.append(cls(spec[3]) if spec[2].startswith("adaptive") else cls(spec[3], stride=spec[4]))
        else:
            layers.append(Residual(spec[1]))
    net = Net(layers, flatten_at).to(D).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.5 * torch.randn(m.num_features, generator=gen, dtype=D))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=gen, dtype=D))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen, dtype=D))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen, dtype=D))
            elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=D) * 1.5 / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen, dtype=D))
    return net


def first_layer(net: Net):
    """(name, module) of the weighted layer reading the input, or None."""
    m = net.layers[0]
    return ("layers.0", m) if kind_of(m) in ("linear", "conv") else None


def layer_rules(kind: str, draw, *, first: bool, box):
    """A strategy-drawn rule for a module of this kind."""
    eps = draw(st.sampled_from([1e-9, 0.01, 0.3]))
    if kind in ("linear", "conv"):
        options = [lambda: Epsilon(eps),
                   lambda: Gamma(draw(st.sampled_from([0.1, 0.25, 1.0])), eps, zero_bias=draw(st.booleans()), modify_bias=draw(st.booleans())),
                   lambda: AlphaBeta(*draw(st.sampled_from([(1.0, 0.0), (2.0, 1.0), (1.5, 0.5)])), eps, bias=draw(st.booleans())),
                   lambda: ZPlus(eps),
                   lambda: PositiveWeights(eps, zero_bias=draw(st.booleans()))]
        if first:
            options += [lambda: WSquare(eps), lambda: Flat(eps), lambda: ZBox(*box, eps)] * 2
        return draw(st.sampled_from(options))()
    if kind == "batch_norm":
        return draw(st.sampled_from([Epsilon(eps), Pass()]))
    if kind in ("avg_pool", "max_pool"):
        return Epsilon(eps)
    return Pass()


@st.composite
def composites(draw, net: Net, box):
    """lrp_rules() plus, per module, a rule keyed by its name, its instance, its type, or none."""
    mapping = xattr.rule.lrp_rules()
    first = first_layer(net)
    for name, m in net.named_modules():
        kind = "linear" if isinstance(m, Residual) else kind_of(m)
        if kind is None or not name:
            continue
        for how in draw(st.lists(st.sampled_from(["name", "instance", "type"]), max_size=2, unique=True)):
            rule = layer_rules(kind, draw, first=first is not None and m is first[1], box=box)
            key = {"name": name, "instance": m, "type": type(m)}[how]
            if how == "type" and (key in mapping or getattr(rule, "input_layer", False)):
                continue  # one rule per type; an input-layer rule only on the layer reading the input
            mapping[key] = rule
    if first is not None and draw(st.booleans()):  # an input-layer rule, by name (which wins) or instance
        eps = draw(st.sampled_from([1e-9, 0.01, 0.3]))
        mapping[draw(st.sampled_from(first))] = draw(st.sampled_from([WSquare(eps), Flat(eps), ZBox(*box, eps)]))
    return mapping


# ----------------------------------------------------------------------------- the reference


def resolve(mapping, chain, kind):
    """The rule for an op of ``kind`` run inside ``chain``: [(name, module)], innermost first."""
    candidates = []
    for name, m in chain:
        candidates += [mapping.get(name), next((r for k, r in mapping.items() if k is m), None)]
        candidates += [r for k, r in mapping.items() if isinstance(k, type) and isinstance(m, k)]
    candidates.append(mapping.get(KIND_KEYS.get(kind)))
    return next((r for r in candidates if r is not None and kind in r.kinds), None)


def stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def affine(m: nn.Module, x: torch.Tensor):
    """(A, b) of an affine layer at one example x (1, ...): ``m(x).flatten() = A @ x.flatten() + b``."""
    n = x.numel()
    b = m(torch.zeros_like(x)).flatten()
    eye = torch.eye(n, dtype=x.dtype).reshape((n,) + x.shape[1:])
    return (m(eye).reshape(n, -1) - b).T, b


def selection(m: nn.Module, x: torch.Tensor):
    """The 0/1 matrix of a max-pool at x: row j picks the argmax of window j."""
    nd = x.ndim - 2
    if isinstance(m, nn.modules.pooling._AdaptiveMaxPoolNd):
        z, idx = getattr(F, f"adaptive_max_pool{nd}d")(x, m.output_size, return_indices=True)
    else:
        z, idx = getattr(F, f"max_pool{nd}d")(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    spatial = x[0, 0].numel()
    cols = (idx[0].reshape(idx.shape[1], -1) + spatial * torch.arange(idx.shape[1])[:, None]).flatten()
    A = torch.zeros(z.numel(), x.numel(), dtype=x.dtype)
    A[torch.arange(z.numel()), cols] = 1.0
    return A


def apply_rule(rule, m, kind, x, R):
    """Relevance of one example's input x (1, ...) of layer m from its output's relevance R (1, ...)."""
    if kind not in ("linear", "conv", "batch_norm", "avg_pool", "max_pool") or isinstance(rule, Pass):
        return R.reshape(x.shape)  # ReLU's derivative, Pass: relevance unchanged
    xv, Rv = x.flatten(), R.flatten()
    A, b = (selection(m, x), torch.zeros(R.numel(), dtype=x.dtype)) if kind == "max_pool" else affine(m, x)
    if rule is None:
        raise AssertionError(f"no rule for {kind}")
    if isinstance(rule, (WSquare, Flat, ZBox)):
        if isinstance(rule, WSquare):
            c = A * A
        elif isinstance(rule, Flat):
            c = (A != 0).to(A.dtype)
        else:
            low, high = (torch.as_tensor(v, dtype=x.dtype).expand_as(x).flatten() for v in (rule.low, rule.high))
            c = xv * A - low * A.clamp(min=0) - high * A.clamp(max=0)
        return (c / stab(c.sum(1), rule.eps)[:, None] * Rv[:, None]).sum(0).reshape(x.shape)
    if isinstance(rule, AlphaBeta):
        C = xv * A
        cp, cn = C.clamp(min=0), C.clamp(max=0)
        bp, bn = (b.clamp(min=0), b.clamp(max=0)) if rule.bias else (0 * b, 0 * b)
        sp, sn = Rv / stab(cp.sum(1) + bp, rule.eps), Rv / stab(cn.sum(1) + bn, rule.eps)
        return (rule.alpha * cp.T @ sp - rule.beta * cn.T @ sn).reshape(x.shape)
    if kind in ("linear", "conv", "batch_norm"):
        if isinstance(rule, Gamma):
            A = A + rule.gamma * A.clamp(min=0)
            b = 0 * b if rule.zero_bias else (b + rule.gamma * b.clamp(min=0) if rule.modify_bias else b)
        elif isinstance(rule, PositiveWeights):
            A, b = A.clamp(min=0), (0 * b if rule.zero_bias else b)
        elif not isinstance(rule, Epsilon):
            raise AssertionError(f"no reference for {rule!r}")
    return (xv * (A.T @ (Rv / stab(A @ xv + b, rule.eps)))).reshape(x.shape)


def reference(net: Net, mapping, x: torch.Tensor, t: int):
    """(relevance of x, {id(module): relevance of its output}) for one example x (1, ...)."""
    outputs = {}
    steps, h = [], x
    for i, m in enumerate(net.layers):
        if i == net.flatten_at:
            h = h.flatten(1)
        steps.append((f"layers.{i}", m, h))
        h = m(h)
    R = torch.zeros_like(h)
    R[0, t] = h[0, t]
    with torch.no_grad():
        for name, m, h in reversed(steps):
            outputs[id(m)] = R
            if isinstance(m, Residual):
                act = m.act(m.a(h))
                y = h + m.b(act)
                chain = [(name, m)]
                R_h = (m.b(act) / y) * R
                outputs[id(m.b)] = R_h
                R_act = apply_rule(resolve(mapping, [(name + ".b", m.b)] + chain, "linear"), m.b, "linear", act, R_h)
                outputs[id(m.act)] = R_act
                outputs[id(m.a)] = R_act  # relu: unchanged
                R = (h / y) * R + apply_rule(resolve(mapping, [(name + ".a", m.a)] + chain, "linear"), m.a, "linear", h, R_act)
            elif kind_of(m) is not None:
                kind = kind_of(m)
                R = apply_rule(resolve(mapping, [(name, m)], kind), m, kind, h, R)
            R = R.reshape(h.shape)
    return R.reshape(x.shape), outputs


@st.composite
def cases(draw, *, captum: bool = False):
    """(model, net, x, mapping, target): a random net, possibly merged (model), the same layers as a
    `Net` for the reference (net), a batch in [low, high], a composite keyed on model's modules."""
    specs, flatten_at, shape = draw(architectures(captum=captum))
    net = build(specs, flatten_at, draw(seeds))
    model = net
    if draw(st.booleans()) and not captum:
        model = xattr.merge_batch_norm(net)  # a GraphModule: the reference reads its layers by name
        x0 = torch.randn((2,) + shape, dtype=D)
        assert torch.allclose(model(x0), net(x0), atol=1e-12)
        net = Net([model.get_submodule(f"layers.{i}") for i in range(len(net.layers))], flatten_at)
    low, high = draw(st.sampled_from([(-1.0, 1.0), (0.0, 1.0), (-0.5, 2.0)]))
    batch = draw(st.integers(1, 3))
    x = low + (high - low) * torch.rand((batch,) + shape, generator=torch.Generator().manual_seed(draw(seeds)), dtype=D)
    mapping = xattr.rule.lrp_rules() if captum else draw(composites(net, (low, high)))
    return model, net, x, mapping, draw(st.integers(0, K - 1))
