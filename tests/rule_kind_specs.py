"""Every op kind `xattr.rules` intercepts (`ops.KINDS`), spelled every cheap way, as tiny float64
modules: the ops of tests/test_rule_kind_matrix.py.

A `Spec` is one spelling of one kind: ``op(m, *split(h))`` runs it on the activations h (B,
width) inside module m, whose parameters and fixed tensors ``parts(m)`` makes. ``split`` cuts h
into the op's operands (views, chunks: calls no rule sees), so a reference can evaluate the op on
any operands, and every element of h is a player of the op (NOTE: [DeepLift at two inputs]).
Spellings with a Tensor method or in place come from `ops.KIND_OF` itself where the call is
``f(x)`` or ``f(a, b)``, so a spelling added there is swept here too.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xattr._src import ops, pairwise
from xattr._src.written_recurrent import gated

B = 2  # paired rows: 2B = 4, a size no other dim 1 of these ops has (NOTE: [Rows in dim 0 or dim 1])
SHARED = 6  # inputs against one shared reference row: 7 rows, likewise


class Spec(NamedTuple):
    kind: str
    name: str
    width: int  # h's features
    op: Callable  # op(m, *operands) -> y
    split: Callable = lambda h: (h,)  # noqa: E731
    positive: bool = False  # h > 0 (log, sqrt, divisors, bases)
    parts: Callable | None = None  # parts(m): sets m's parameters and fixed tensors
    relu: bool = False  # a clamp or threshold with ReLU's values (Guided and Deconv claim it)


def spelled(f) -> str:
    mod = {torch: "torch", F: "F", torch.Tensor: "Tensor", torch.special: "special"}
    for space, prefix in mod.items():
        for n in dir(space):
            if getattr(space, n, None) is f:
                return f"{prefix}.{n}"
    return getattr(f, "__name__", repr(f))


def _in_place(f) -> bool:
    n = spelled(f).split(".")[-1]
    return (n.endswith("_") and not n.endswith("__")) or n.startswith("__i")


def _spelled(kind: str) -> list:
    """``(name, f)`` for every function of this kind in `ops.KIND_OF`."""
    return [(spelled(f), f) for f, k in ops.KIND_OF.items() if k == kind]


def _fresh(f, x, *rest):
    return f(x.clone() if f in IN_PLACE else x, *rest)


def _halves(h):
    return h.chunk(2, dim=1)


def _fixed(m):
    torch.manual_seed(5)
    m.register_buffer("t", torch.rand(3, dtype=torch.float64) + 0.5)
    m.register_buffer("zeros", torch.zeros(6, dtype=torch.float64))
    m.register_buffer("lo", torch.linspace(-1.0, -0.2, 6, dtype=torch.float64))
    m.register_buffer("hi", torch.linspace(0.1, 0.9, 6, dtype=torch.float64))


def _unary(kind: str, positive: bool) -> list:
    specs = [Spec(kind, n, 6, lambda m, x, f=f: _fresh(f, x), positive=positive) for n, f in _spelled(kind)]
    if kind == "relu":
        specs.append(Spec(kind, "F.relu(inplace=True)", 6, lambda m, x: F.relu(x.clone(), inplace=True)))
        specs.append(Spec(kind, "nn.ReLU", 6, lambda m, x: m.act(x), parts=lambda m: setattr(m, "act", nn.ReLU())))
    return specs


def _clamps() -> list:
    c = lambda name, fn, relu=False: Spec("clamp", name, 6, fn, parts=_fixed, relu=relu)  # noqa: E731
    return [
        c("torch.clamp(min=0)", lambda m, x: torch.clamp(x, min=0), True),
        c("torch.clamp(x, 0)", lambda m, x: torch.clamp(x, 0.0), True),
        c("Tensor.clip(-0.5, 0.5)", lambda m, x: x.clip(-0.5, 0.5)),
        c("torch.clamp_min(0)", lambda m, x: torch.clamp_min(x, 0.0), True),
        c("Tensor.clamp_max(0.3)", lambda m, x: x.clamp_max(0.3)),
        c("Tensor.clamp_(min=0)", lambda m, x: x.clone().clamp_(min=0), True),
        c("torch.clamp_min_(0)", lambda m, x: torch.clamp_min_(x.clone(), 0.0), True),
        c("torch.maximum(x, zeros)", lambda m, x: torch.maximum(x, m.zeros), True),
        c("torch.max(zeros, x)", lambda m, x: torch.max(m.zeros, x), True),
        c("Tensor.clamp(min=zeros)", lambda m, x: x.clamp(min=m.zeros), True),
        c("torch.minimum(x, hi)", lambda m, x: torch.minimum(x, m.hi)),
        c("torch.clamp(x, lo, hi)", lambda m, x: torch.clamp(x, m.lo, m.hi)),
    ]


def _thresholds() -> list:
    t = lambda name, fn, relu=False: Spec("threshold", name, 6, fn, relu=relu)  # noqa: E731
    return [t("F.threshold(0, 0)", lambda m, x: F.threshold(x, 0.0, 0.0), True),
            t("torch.threshold(0.1, -0.2)", lambda m, x: torch.threshold(x, 0.1, -0.2)),
            t("F.threshold_(0, 0)", lambda m, x: F.threshold_(x.clone(), 0.0, 0.0), True),
            Spec("threshold", "nn.Threshold(0, 0)", 6, lambda m, x: m.act(x),
                 parts=lambda m: setattr(m, "act", nn.Threshold(0.0, 0.0)), relu=True)]


def _powers() -> list:
    p = lambda kind, name, fn, split=lambda h: (h,), parts=None: Spec(kind, name, 6, fn, split, True, parts)  # noqa: E731

    def ipow(a, e):
        a = a.clone()
        a **= e
        return a

    return [
        p("pow", "x ** 2", lambda m, x: x**2), p("pow", "torch.pow(x, 3)", lambda m, x: torch.pow(x, 3)),
        p("pow", "x.pow(0.5)", lambda m, x: x.pow(0.5)), p("pow", "x.pow_(2)", lambda m, x: x.clone().pow_(2)),
        p("pow", "x **= -1.5", lambda m, x: ipow(x, -1.5)), p("pow", "torch.square", lambda m, x: torch.square(x)),
        p("pow", "x.square_()", lambda m, x: x.clone().square_()),
        p("rdiv", "2 / x", lambda m, x: 2.0 / x), p("rdiv", "torch.div(2, x)", lambda m, x: torch.div(2.0, x)),
        p("rdiv", "torch.true_divide(2, x)", lambda m, x: torch.true_divide(2.0, x)),
        p("rdiv", "t / x", lambda m, x: m.t / x, lambda h: (h[:, :3],), _fixed),
        p("rdiv", "t.div(x)", lambda m, x: m.t.div(x), lambda h: (h[:, :3],), _fixed),
        p("rpow", "2 ** x", lambda m, x: 2.0**x), p("rpow", "torch.pow(0.5, x)", lambda m, x: torch.pow(0.5, x)),
        p("tensor_pow", "a ** b", lambda m, a, b: a**b, _halves),
        p("tensor_pow", "torch.pow(a, b)", lambda m, a, b: torch.pow(a, b), _halves),
        p("tensor_pow", "a.pow_(b)", lambda m, a, b: a.clone().pow_(b), _halves),
        p("tensor_pow", "a **= b", lambda m, a, b: ipow(a, b), _halves),
        p("tensor_pow", "a ** t", lambda m, a: a**m.t, lambda h: (h[:, :3],), _fixed),
        p("tensor_pow", "t ** b", lambda m, b: m.t**b, lambda h: (h[:, :3],), _fixed),
    ]


def _pairs(kind: str) -> list:
    positive = kind == "xlogy"
    specs = [Spec(kind, n, 6, lambda m, a, b, f=f: _fresh(f, a, b), _halves, positive) for n, f in _spelled(kind)]
    fn = getattr(torch, kind)
    specs.append(Spec(kind, f"torch.{kind}(a, t)", 6, lambda m, a: fn(a, m.t), lambda h: (h[:, :3],), positive, _fixed))
    specs.append(Spec(kind, f"torch.{kind}(t, b)", 6, lambda m, b: fn(m.t, b), lambda h: (h[:, :3],), positive, _fixed))
    if kind in ("xlogy", "copysign"):
        specs.append(Spec(kind, f"torch.{kind}(a, 1.5)", 6, lambda m, a: fn(a, 1.5), positive=positive))
        if kind == "xlogy":  # torch.copysign takes no number first
            specs.append(Spec(kind, "torch.xlogy(-1.5, b)", 6, lambda m, b: fn(-1.5, b), positive=positive))
    return specs


def _two_inputs() -> list:
    mm = lambda h: (h[:, :6].view(-1, 2, 3), h[:, 6:].view(-1, 3, 2))  # noqa: E731
    three = lambda h: h.chunk(3, dim=1)  # noqa: E731
    specs = [Spec("product", n, 6, lambda m, a, b, f=f: _fresh(f, a, b), _halves) for n, f in _spelled("product")]
    specs.append(Spec("product", "a * gate", 5, lambda m, a, g: a * g, lambda h: (h[:, :3], h[:, 3:4])))
    specs += [Spec("matmul", n, 12, lambda m, a, b, f=f: f(a, b), mm) for n, f in _spelled("matmul")]
    bias = lambda m: setattr(m, "bias", torch.randn(2, 2, dtype=torch.float64))  # noqa: E731  (one for every example)
    specs += [Spec("baddbmm", "torch.baddbmm", 12, lambda m, a, b: torch.baddbmm(m.bias, a, b, beta=0.5, alpha=2.0), mm, parts=bias),
              Spec("baddbmm", "Tensor.baddbmm", 12, lambda m, a, b: m.bias.expand(a.shape[0], 2, 2).baddbmm(a, b), mm, parts=bias)]
    specs += [
        Spec("einsum", "bi,bi->bi", 6, lambda m, a, b: torch.einsum("bi,bi->bi", a, b), _halves),
        Spec("einsum", "bij,bjk->bik [list]", 9, lambda m, a, b: torch.einsum("bij,bjk->bik", [a, b]),
             lambda h: (h[:, :3].view(-1, 1, 3), h[:, 3:].view(-1, 3, 2))),
        Spec("einsum", "bi,bi,bi->bi", 6, lambda m, a, b, c: torch.einsum("bi,bi,bi->bi", a, b, c), three),
        Spec("einsum", "bi,bi,i->bi", 6, lambda m, a, b: torch.einsum("bi,bi,i->bi", a, b, m.t), _halves, parts=_fixed),
    ]
    specs += [Spec("quotient", n, 6, lambda m, a, b, f=f: _fresh(f, a, b), _halves, True) for n, f in _spelled("quotient")]
    specs += [Spec("cumprod", n, 3, lambda m, x, f=f: _fresh(f, x, 1)) for n, f in _spelled("cumprod")]
    return specs


def _view(nd: int):
    return lambda h: (h.view((-1, 1) + (1,) * (nd - 1) + (6,)),)


def _pools() -> list:
    specs = []
    for nd in (1, 2, 3):
        k = (1,) * (nd - 1) + (2,)
        specs += [
            Spec("max_pool", f"F.max_pool{nd}d", 6, lambda m, x, k=k, nd=nd: getattr(F, f"max_pool{nd}d")(x, k), _view(nd)),
            Spec("max_pool", f"torch.max_pool{nd}d", 6, lambda m, x, k=k, nd=nd: getattr(torch, f"max_pool{nd}d")(x, k), _view(nd)),
            Spec("max_pool", f"F.max_pool{nd}d(return_indices)", 6,
                 lambda m, x, k=k, nd=nd: getattr(F, f"max_pool{nd}d")(x, k, return_indices=True)[0], _view(nd)),
            Spec("max_pool", f"F.adaptive_max_pool{nd}d", 6,
                 lambda m, x, k=k, nd=nd: getattr(F, f"adaptive_max_pool{nd}d")(x, k[:-1] + (3,)), _view(nd)),
            Spec("avg_pool", f"F.avg_pool{nd}d", 6, lambda m, x, k=k, nd=nd: getattr(F, f"avg_pool{nd}d")(x, k), _view(nd)),
            Spec("avg_pool", f"F.adaptive_avg_pool{nd}d", 6,
                 lambda m, x, k=k, nd=nd: getattr(F, f"adaptive_avg_pool{nd}d")(x, k[:-1] + (3,)), _view(nd)),
        ]
    specs.append(Spec("max_pool", "F.max_pool1d_with_indices", 6, lambda m, x: F.max_pool1d_with_indices(x, 2)[0], _view(1)))
    return specs


def _maxima() -> list:
    """Kind "max" (NOTE: [Max along a dim] in extrema.py) on h viewed (B, 2, 3): never along dim 0,
    which holds the rows (a max across examples keeps its gradient, tests/test_deeplift_max_dim.py)."""
    v = lambda h: (h.view(-1, 2, 3),)  # noqa: E731
    specs = [Spec("max", f"{n}(x, 2)", 6, lambda m, x, f=f: f(x, 2), v) for n, f in _spelled("max")]
    return specs + [
        Spec("max", "torch.max(x, 2).values", 6, lambda m, x: torch.max(x, 2).values, v),
        Spec("max", "Tensor.max(dim=1, keepdim=True)[0]", 6, lambda m, x: x.max(dim=1, keepdim=True)[0], v),
        Spec("max", "torch.min(x, 2)[0]", 6, lambda m, x: torch.min(x, 2)[0], v),
        Spec("max", "Tensor.min(1).values", 6, lambda m, x: x.min(1).values, v),
        Spec("max", "torch.amax(x, (1, 2), keepdim=True)", 6, lambda m, x: torch.amax(x, (1, 2), keepdim=True), v),
        Spec("max", "Tensor.amin(-1, keepdim=True)", 6, lambda m, x: x.amin(-1, keepdim=True)),
    ]


def _sorts() -> list:
    """Kind "sort" (NOTE: [Order statistics along a dim] in order_stats.py) on h viewed (B, 2, 3),
    never along dim 0 (rows); msort sorts dim 0, so on h viewed (3, B, 2), rows in dim 1."""
    v = lambda h: (h.view(-1, 2, 3),)  # noqa: E731
    s = lambda name, fn, split=v: Spec("sort", name, 6, fn, split)  # noqa: E731
    return [
        s("torch.sort(x, 2).values", lambda m, x: torch.sort(x, 2).values),
        s("Tensor.sort(dim=1, descending=True)[0]", lambda m, x: x.sort(dim=1, descending=True)[0]),
        s("torch.sort(x, descending=True, stable=True)[0]", lambda m, x: torch.sort(x, descending=True, stable=True)[0]),
        s("Tensor.topk(2).values", lambda m, x: x.topk(2).values),
        s("torch.topk(x, 1, 1, largest=False)[0]", lambda m, x: torch.topk(x, 1, 1, largest=False)[0]),
        s("Tensor.kthvalue(2, 2, keepdim=True).values", lambda m, x: x.kthvalue(2, 2, keepdim=True).values),
        s("torch.kthvalue(x, 1, 1)[0]", lambda m, x: torch.kthvalue(x, 1, 1)[0]),
        s("torch.median(x, -1).values", lambda m, x: torch.median(x, -1).values),
        s("Tensor.median(1, keepdim=True)[0]", lambda m, x: x.median(1, keepdim=True)[0]),
        s("torch.msort(x)", lambda m, x: torch.msort(x).permute(1, 2, 0), lambda h: (h.view(-1, 2, 3).permute(2, 0, 1),)),
        s("Tensor.msort()", lambda m, x: x.msort().permute(1, 2, 0), lambda h: (h.view(-1, 2, 3).permute(2, 0, 1),)),
    ]


def _extrema_of_two() -> list:
    """Kind "maximum" (NOTE: [Maximum of two activations] in pairwise.py): both operands halves of h."""
    e = lambda name, fn: Spec("maximum", name, 6, fn, _halves)  # noqa: E731
    return [
        e("torch.maximum(a, b)", lambda m, a, b: torch.maximum(a, b)), e("Tensor.minimum", lambda m, a, b: a.minimum(b)),
        e("torch.max(a, b)", lambda m, a, b: torch.max(a, b)), e("Tensor.min(other=b)", lambda m, a, b: a.min(other=b)),
        e("torch.fmax", lambda m, a, b: torch.fmax(a, b)), e("Tensor.fmin", lambda m, a, b: a.fmin(b)),
        e("torch.clamp(a, min=b)", lambda m, a, b: torch.clamp(a, min=b)),
        e("Tensor.clamp_max(b)", lambda m, a, b: a.clamp_max(b)),
        e("Tensor.clip(max=b)", lambda m, a, b: a.clip(max=b)),
        e("Tensor.clamp_(min=b)", lambda m, a, b: a.clone().clamp_(min=b)),
        e("torch.clamp_min_(a, b)", lambda m, a, b: torch.clamp_min_(a.clone(), b)),
    ]


def _set(**factories):
    def parts(m):
        torch.manual_seed(3)
        for name, make in factories.items():
            setattr(m, name, make())
        for p in m.parameters():  # nonzero weights and biases of either sign (batch norm's too)
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.7)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
        m.double().eval()

    return parts


def _norms() -> list:
    """Vector norms, F.normalize and F.cosine_similarity (NOTE: [Vector norms written out])."""
    v = lambda name, fn: Spec("vector_norm", name, 6, fn)  # noqa: E731
    return [
        v("torch.linalg.vector_norm(x, dim=-1, keepdim=True)", lambda m, x: torch.linalg.vector_norm(x, dim=-1, keepdim=True)),
        v("torch.linalg.vector_norm(x, 1, 1, True)", lambda m, x: torch.linalg.vector_norm(x, 1, 1, True)),
        v("torch.norm(x.view(-1, 2, 3), dim=2)", lambda m, x: torch.norm(x.view(-1, 2, 3), dim=2)),
        v("Tensor.norm(3.0, -1, True)", lambda m, x: x.norm(3.0, -1, True)),
        v("Tensor.norm(inf, 1, keepdim=True)", lambda m, x: x.norm(math.inf, 1, keepdim=True)),
        v("torch.linalg.norm(x, dim=(1,), keepdim=True)", lambda m, x: torch.linalg.norm(x, dim=(1,), keepdim=True)),
        Spec("normalize", "F.normalize(x)", 6, lambda m, x: F.normalize(x)),
        Spec("normalize", "F.normalize(x.view(-1, 2, 3), p=1, dim=-1)", 6, lambda m, x: F.normalize(x.view(-1, 2, 3), p=1.0, dim=-1)),
        Spec("cosine_similarity", "F.cosine_similarity(a, b)", 6, lambda m, a, b: F.cosine_similarity(a, b)[:, None], _halves),
        Spec("cosine_similarity", "F.cosine_similarity(a, t, dim=-1)", 6, lambda m, a: F.cosine_similarity(a, m.t, dim=-1)[:, None],
             lambda h: (h[:, :3],), parts=_fixed),
    ]


def _layers() -> list:
    def fixed_weights(m):
        _set(w=lambda: nn.Parameter(torch.empty(5, 6)), k=lambda: nn.Parameter(torch.empty(3, 2, 2)),
             mean=lambda: nn.Parameter(torch.empty(6), requires_grad=False), wn=lambda: nn.Parameter(torch.empty(6)))(m)
        m.var = nn.Parameter(torch.rand(6, dtype=torch.float64) + 0.5, requires_grad=False)

    conv = lambda nd, c, o, k: lambda: getattr(nn, f"Conv{nd}d")(c, o, k)  # noqa: E731
    return [
        Spec("linear", "nn.Linear", 6, lambda m, x: m.lin(x), parts=_set(lin=lambda: nn.Linear(6, 5))),
        Spec("linear", "F.linear(no bias)", 6, lambda m, x: F.linear(x, m.w), parts=fixed_weights),
        Spec("conv", "nn.Conv1d", 6, lambda m, x: m.conv(x), lambda h: (h.view(-1, 2, 3),), parts=_set(conv=conv(1, 2, 3, 2))),
        Spec("conv", "nn.Conv2d", 6, lambda m, x: m.conv(x), lambda h: (h.view(-1, 1, 2, 3),), parts=_set(conv=conv(2, 1, 2, (1, 2)))),
        Spec("conv", "nn.Conv3d", 6, lambda m, x: m.conv(x), _view(3), parts=_set(conv=conv(3, 1, 2, (1, 1, 2)))),
        Spec("conv", "torch.conv1d(no bias, padding=1)", 6, lambda m, x: torch.conv1d(x, m.k, padding=1),
             lambda h: (h.view(-1, 2, 3),), parts=fixed_weights),
        Spec("batch_norm", "nn.BatchNorm1d", 6, lambda m, x: m.bn(x), parts=_set(bn=lambda: nn.BatchNorm1d(6))),
        Spec("batch_norm", "F.batch_norm(no affine)", 6, lambda m, x: F.batch_norm(x, m.mean, m.var), parts=fixed_weights),
        Spec("layer_norm", "nn.LayerNorm", 6, lambda m, x: m.ln(x), parts=_set(ln=lambda: nn.LayerNorm(6))),
        Spec("layer_norm", "F.layer_norm(no affine)", 6, lambda m, x: F.layer_norm(x, (6,))),
        Spec("group_norm", "nn.GroupNorm", 6, lambda m, x: m.gn(x), parts=_set(gn=lambda: nn.GroupNorm(2, 6))),
        Spec("group_norm", "F.group_norm(no affine)", 6, lambda m, x: F.group_norm(x, 3)),
        Spec("group_norm", "nn.InstanceNorm1d(affine)", 6, lambda m, x: m.inorm(x), lambda h: (h.view(-1, 2, 3),),
             parts=_set(inorm=lambda: nn.InstanceNorm1d(2, affine=True))),
        Spec("group_norm", "F.instance_norm", 6, lambda m, x: F.instance_norm(x), lambda h: (h.view(-1, 2, 3),)),
        Spec("rms_norm", "nn.RMSNorm", 6, lambda m, x: m.rms(x), parts=_set(rms=lambda: nn.RMSNorm(6))),
        Spec("rms_norm", "F.rms_norm(no weight)", 6, lambda m, x: F.rms_norm(x, (6,))),
        Spec("rms_norm", "torch.rms_norm(weight)", 6, lambda m, x: torch.rms_norm(x, (6,), m.wn, 1e-5), parts=fixed_weights),
    ]


def _attention() -> list:
    qkv = lambda h: h.view(-1, 3, 2, 3).unbind(1)  # noqa: E731

    def masks(m):
        m.register_buffer("mask", torch.tensor([[0.0, -0.7], [0.3, 0.0]], dtype=torch.float64))
        m.register_buffer("keep", torch.tensor([[True, False], [True, True]]))

    sdpa = F.scaled_dot_product_attention
    mha = lambda **kw: lambda: nn.MultiheadAttention(6, 2, batch_first=True, **kw)  # noqa: E731
    seq = lambda h: (h.view(-1, 2, 6),)  # noqa: E731
    steps = lambda h: (h.view(-1, 2, 3),)  # noqa: E731
    rnn = lambda cls, *a, **kw: _set(rnn=lambda: cls(*a, **kw))  # noqa: E731
    return [
        Spec("attention", "sdpa", 18, lambda m, q, k, v: sdpa(q, k, v), qkv),
        Spec("attention", "sdpa(is_causal, scale)", 18, lambda m, q, k, v: sdpa(q, k, v, is_causal=True, scale=0.7), qkv),
        Spec("attention", "sdpa(float mask)", 18, lambda m, q, k, v: sdpa(q, k, v, attn_mask=m.mask), qkv, parts=masks),
        Spec("attention", "sdpa(bool mask)", 18, lambda m, q, k, v: sdpa(q, k, v, attn_mask=m.keep), qkv, parts=masks),
        Spec("fused_attention", "nn.MultiheadAttention", 12, lambda m, x: m.mha(x, x, x)[0], seq, parts=_set(mha=mha())),
        Spec("fused_attention", "nn.MultiheadAttention(need_weights=False)", 12,
             lambda m, x: m.mha(x, x, x, need_weights=False)[0], seq, parts=_set(mha=mha(bias=False))),
        Spec("glu", "F.glu", 6, lambda m, x: F.glu(x, -1)),
        Spec("glu", "nn.GLU", 6, lambda m, x: m.glu(x), parts=lambda m: setattr(m, "glu", nn.GLU())),
        Spec("fused_recurrent", "nn.LSTM", 6, lambda m, x: m.rnn(x)[0], steps, parts=rnn(nn.LSTM, 3, 3, batch_first=True)),
        Spec("fused_recurrent", "nn.GRU", 6, lambda m, x: m.rnn(x)[0], steps, parts=rnn(nn.GRU, 3, 3, batch_first=True)),
        Spec("fused_recurrent", "nn.RNN(relu)", 6, lambda m, x: m.rnn(x)[0], steps,
             parts=rnn(nn.RNN, 3, 3, batch_first=True, nonlinearity="relu")),
        Spec("fused_recurrent", "nn.LSTMCell", 6, lambda m, x: m.rnn(x)[0], parts=rnn(nn.LSTMCell, 6, 3)),
        Spec("fused_recurrent", "nn.GRUCell", 6, lambda m, x: m.rnn(x), parts=rnn(nn.GRUCell, 6, 3)),
    ]


def _softmaxes() -> list:
    specs = [Spec("softmax", n, 5, lambda m, x, f=f: f(x, -1)) for n, f in _spelled("softmax")]
    specs += [Spec("log_softmax", n, 5, lambda m, x, f=f: f(x, 1)) for n, f in _spelled("log_softmax")]
    specs += [Spec("logsumexp", n, 6, lambda m, x, f=f: f(x.view(-1, 2, 3), 2)) for n, f in _spelled("logsumexp")]
    specs.append(Spec("logsumexp", "torch.logsumexp((1, 2), keepdim=True)", 6,
                      lambda m, x: torch.logsumexp(x.view(-1, 2, 3), (1, 2), keepdim=True).flatten(1)))
    return specs


POSITIVE = frozenset({"log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal"})
_SPECIAL = {"clamp", "threshold", "pow", "rdiv", "rpow"}


def all_specs() -> dict:
    """``{kind: [Spec]}`` for every kind in `ops.KINDS`."""
    specs = [s for k in sorted(ops.ELEMENTWISE - _SPECIAL) for s in _unary(k, k in POSITIVE)]
    specs += _clamps() + _thresholds() + _powers() + [s for k in sorted(pairwise.PAIRS - {"tensor_pow", "maximum"}) for s in _pairs(k)]
    specs += _two_inputs() + _pools() + _maxima() + _sorts() + _extrema_of_two() + _layers() + _norms() + _attention() + _softmaxes()
    specs.append(Spec("product", "gated(gate, signal)", 6, lambda m, g, s: gated(g, s), _halves))
    out: dict = {}
    for s in specs:
        out.setdefault(s.kind, []).append(s)
    return out


IN_PLACE = frozenset(f for f in ops.KIND_OF if _in_place(f))
# the torch function that keys each kind in a mapping (tensor_pow: pow's keys stand for it)
KEY = {k: next(f for f, kind in ops.KIND_OF.items() if kind == k) for k in set(ops.KIND_OF.values())}
KEY["tensor_pow"] = torch.pow
KEY["maximum"] = torch.maximum  # a "clamp" key: clamp's keys stand for it (NOTE: [Maximum of two activations])


class Inner(nn.Module):
    """The module holding one op (module keys name it)."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        if spec.parts is not None:
            spec.parts(self)

    def forward(self, h):
        return self.spec.op(self, *self.spec.split(h))


class Net(nn.Module):
    """``lin2(inner(lin1(x)).flatten(1))``: the op between linear layers, in float64."""

    def __init__(self, spec: Spec, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin1 = nn.Linear(5, spec.width).double()
        if spec.positive:
            with torch.no_grad():
                self.lin1.weight.abs_()
                self.lin1.bias.abs_().add_(0.2)
        self.inner = Inner(spec)
        with torch.no_grad():
            width = self.inner(self.lin1(self.input())).flatten(1).shape[1]
        self.lin2 = nn.Linear(width, 2).double()
        self.eval()

    def input(self, seed: int = 1, n: int = B) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.inner.spec.positive:
            return torch.rand(n, 5, generator=g, dtype=torch.float64) + 0.1
        return torch.randn(n, 5, generator=g, dtype=torch.float64)

    def forward(self, x):
        return self.lin2(self.inner(self.lin1(x)).flatten(1))


class Head(nn.Module):
    """``lin2(inner(h).flatten(1))``: the op's input h is the input (for references at the op)."""

    def __init__(self, net: Net):
        super().__init__()
        self.inner, self.lin2 = net.inner, net.lin2

    def forward(self, h):
        return self.lin2(self.inner(h).flatten(1))
