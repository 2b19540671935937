"""The operations `rules` can intercept: each torch function mapped to a kind and a parser.

A parser turns one intercepted call ``func(*args, **kwargs)`` into an `Op`: the tensors the rule
sees (the input first, then weights), an out-of-place function of exactly those tensors, and
whether the call was in place. Every spelling of an operation maps to one kind: ``nn.ReLU``,
``F.relu``, ``torch.relu``, ``x.relu()``, ``torch.relu_`` and ``F.relu(x, inplace=True)`` are all
kind ``"relu"``, so a rule for ``"relu"`` sees them all (NOTE: [Intercepting operations] in
rules.py).
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import extrema, order_stats, pairwise, pointwise, pools, two_inputs, written_activations, written_norms
from .written_out import norm_spellings
from .written_recurrent import gated
from .dependence import differentiated  # noqa: F401 (its home before dependence.py)
from .pools import pool_with_indices  # noqa: F401 (its home before pools.py)


class Op(NamedTuple):
    """One intercepted call: ``fn(*tensors)`` recomputes its output out of place.

    ``kind`` names the operation (``"relu"``, ``"max_pool"``, ``"linear"``, ...), ``tensors`` are
    the differentiable inputs (input first; then weight and bias for linear/conv/norm kinds, a
    missing bias is a zero tensor), ``options`` holds the non-tensor arguments (``dim``,
    ``stride``...), ``func`` is the torch function that was called.

    Example:
      >>> def backward(self, op, saved, grad):        # in a Rule of kind "softmax", keep_output = True
      ...     y = saved.output                          # op.kind == "softmax"; op.options holds its dim
      ...     return (y * (grad - (grad * y).sum(op.options["dim"], keepdim=True)),)
    """

    kind: str
    fn: Callable
    tensors: tuple
    options: dict
    func: Callable
    inplace: bool


ELEMENTWISE = frozenset({"relu", "elu", "leaky_relu", "sigmoid", "tanh", "softplus", "gelu", "silu", "hardswish", "hardsigmoid",
                         "relu6", "hardtanh", "mish", "selu", "celu", "softsign", "logsigmoid", "threshold", "clamp"})
ELEMENTWISE |= pointwise.KINDS  # exp, log, sqrt, abs, pow... (NOTE: [Elementwise functions of one input] in pointwise.py)
AFFINE = frozenset({"linear", "conv", "batch_norm", "avg_pool"})  # affine in their input


def _unary(kind: str, out_of_place: Callable, inplace_default: bool = False):
    def parse(func, input, *rest, inplace=inplace_default, **options):
        if rest:  # positional options after the input, in the functional's order
            names = _POSITIONAL[kind]
            options.update(zip(names, rest))
            inplace = options.pop("inplace", inplace)
        options.pop("inplace", None)
        return Op(kind, functools.partial(out_of_place, **options), (input,), options, func, bool(inplace))

    return parse


_POSITIONAL = {
    "relu": ("inplace",),
    "elu": ("alpha", "inplace"),
    "leaky_relu": ("negative_slope", "inplace"),
    "softplus": ("beta", "threshold"),
    "gelu": ("approximate",),
    "silu": ("inplace",),
    "hardswish": ("inplace",),
    "hardsigmoid": ("inplace",),
    "relu6": ("inplace",),
    "hardtanh": ("min_val", "max_val", "inplace"),
    "mish": ("inplace",),
    "selu": ("inplace",),
    "celu": ("alpha", "inplace"),
    "softsign": (),
    "logsigmoid": (),
    "threshold": ("threshold", "value", "inplace"),
    "sigmoid": (),
    "tanh": (),
}


def _clamp(names: tuple, inplace: bool):
    """A parser for ``torch.clamp``/``clip`` (``names`` = ("min", "max")), ``clamp_min`` ("min",)
    or ``clamp_max`` ("max",), function or Tensor method, in place or not.

    NOTE: [Clamp as an activation]
    ``clamp(x, lo, hi)`` with bounds that are numbers, or tensors that are not differentiated
    along with x, is elementwise in x (``y_i = min(max(x_i, lo_i), hi_i)``), so it is kind
    ``"clamp"`` and the elementwise rules apply (DeepLift's Rescale, LRP's `Pass`, as at hardtanh);
    the bounds get no gradient (`_clamp_op`). ``torch.maximum(x, c)``/``minimum`` with c such a
    tensor are the same op (`_extremum`). A bound that is differentiated too (it depends on the
    attributed input: ``x.clamp(min=other_activation)``, ``torch.maximum`` of two activations)
    makes the op a function of two inputs, which no elementwise rule describes: with that bound
    alone it is kind ``"maximum"`` (NOTE: [Maximum of two activations] in pairwise.py; LRP and
    guided backprop keep the ordinary gradient there, which routes each unit's relevance to the
    operand it took and conserves it); with both bounds the call is not parsed and keeps its
    ordinary gradient (DeepLift's delta shows the gap). So is a call with
    ``out=``, on a non-float input, or whose bounds would broadcast the output beyond the input's
    shape or change its dtype. A tensor is differentiated when it requires grad and was computed
    from a tensor that requires grad and is not an ``nn.Parameter`` (`differentiated`): a bound
    computed from parameters (a learnt threshold) stays fixed.
    """

    def parse(func, input, *bounds, out=None, **named):
        if out is not None or len(bounds) > len(names) or set(named) - set(names):
            return None  # torch's own error follows where the call is wrong
        if not isinstance(input, torch.Tensor) or not input.is_floating_point():
            return None
        given = dict(zip(names, bounds))
        given.update(named)
        lo, hi = given.get("min"), given.get("max")
        if (lo is None and hi is None) or not (_fixed_bound(lo, input) and _fixed_bound(hi, input)):
            return pairwise.bounded(Op, func, input, lo, hi, inplace)  # a bound computed from the input: or None
        return _clamp_op(func, input, {"min": lo, "max": hi}, inplace, lambda x, b: torch.clamp(x, min=b["min"], max=b["max"]))

    return parse


def _clamp_op(func, x: torch.Tensor, bounds: dict, inplace: bool, call: Callable) -> Op:
    """The clamp `Op` of ``call(x, bounds)``. Outside torch.func transforms tensor bounds ride in
    ``fn``; under them they are tensors of the op after x (a tensor of an outer level read inside
    the rule's Function fails functorch's checks), named in order by ``options["bounds"]``: rules
    give them no gradient."""
    named = () if torch._C._functorch.maybe_current_level() is None else tuple(k for k, v in bounds.items() if isinstance(v, torch.Tensor))
    fixed = {k: v for k, v in bounds.items() if k not in named}

    def fn(t, *tensors):
        return call(t, dict(fixed, **dict(zip(named, tensors))))

    options = dict(fixed, bounds=named)
    return Op("clamp", fn, (x, *(bounds[k] for k in named)), options, func, inplace)


def relu_clamp(op: Op) -> bool:
    """Whether a clamp op is a ReLU, wholly or at some elements (NOTE: [Clamps that are ReLUs] in
    guided_rules.py): no upper bound, and a lower bound that is the number 0 or a tensor (a ReLU
    at the elements where it is 0, decided without reading it)."""
    options = op.options
    if op.kind != "clamp" or options.get("max") is not None or "max" in options["bounds"]:
        return False
    lo = options.get("min")
    return "min" in options["bounds"] or isinstance(lo, torch.Tensor) or (isinstance(lo, (int, float)) and lo == 0)


def relu_threshold(op: Op) -> bool:
    """Whether a threshold op is a ReLU: ``F.threshold(x, 0, 0)`` (x where x > 0, else 0)."""
    options = op.options
    return op.kind == "threshold" and _is_zero(options.get("threshold")) and _is_zero(options.get("value"))


def _is_zero(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _extremum(bound: str):
    """A parser for ``torch.maximum``/``minimum`` (``bound`` "min"/"max"), their Tensor methods and
    the two-tensor forms of ``torch.max``/``min``: with one operand differentiated and the other a
    fixed bound for it, the call is ``clamp`` of the first (``torch.maximum(x, zeros)`` is a ReLU).
    With both differentiated it is a function of two inputs: kind ``"maximum"`` (NOTE: [Maximum of
    two activations] in pairwise.py). Reductions (``torch.max(x, dim)``) are kind ``"max"`` (NOTE: [Max along a dim] in
    extrema.py)."""

    def parse(func, input, other=None, *rest, out=None, **named):
        if rest or named or out is not None or not isinstance(input, torch.Tensor) or not isinstance(other, torch.Tensor):
            return None
        if differentiated(other):
            if differentiated(input):
                return pairwise.extremum(Op, func, input, other)
            x, fixed = other, input
        else:
            x, fixed = input, other
        if not x.is_floating_point() or not _fixed_bound(fixed, x, checked=True):
            return None
        call = (lambda t, b: func(b[bound], t)) if x is other else (lambda t, b: func(t, b[bound]))  # the order as called
        return _clamp_op(func, x, {bound: fixed}, False, call)

    return parse


def _fixed_bound(bound, x: torch.Tensor, checked: bool = False) -> bool:
    """Whether a clamp bound leaves the op elementwise in x (NOTE: [Clamp as an activation]);
    ``checked``: the bound is known not to be differentiated."""
    if not isinstance(bound, torch.Tensor):
        return True
    try:
        if torch.result_type(x, bound) != x.dtype or torch.broadcast_shapes(bound.shape, x.shape) != x.shape:
            return False
    except RuntimeError:  # shapes that do not broadcast: torch's own error follows
        return False
    return checked or not differentiated(bound)


def _product(inplace: bool):
    """A parser for ``torch.mul`` and its spellings (``a * b``, ``a.mul(b)``, ``a.mul_(b)``).

    NOTE: [Products of two activations]
    ``a * b`` with both factors differentiated (`differentiated`: each depends on the attributed
    input, as a squeeze-and-excitation gate and the feature map it scales do, or the two halves of
    a GLU) is kind ``"product"``: a function of two inputs, whose ordinary gradient hands each
    factor the product's whole relevance, so LRP would count it twice (`FixedGate` in
    gate_rules.py), and evaluates each factor at the input alone, so DeepLift's sum would miss
    the change (`Product` in deeplift_products.py: NOTE: [DeepLift at a product]). A factor that
    is a number, a parameter or computed from parameters alone (ConvNeXt's layer scale) is a fixed
    weight: the op is linear in the other factor, is not parsed, and keeps its gradient. So is a
    call with ``out=`` or on non-float tensors. ``torch.matmul``, ``@`` and ``torch.bmm`` of two
    such tensors (the scores ``q @ k.transpose(-2, -1)`` and ``attn @ v`` of attention written by
    hand) are kind ``"matmul"`` on the same terms (`_matmul`); quotients and einsum of two such
    tensors are kinds ``"quotient"`` and ``"einsum"`` (two_inputs.py).
    """

    def parse(func, input, other=None, *rest, out=None, **named):
        if rest or named or out is not None or not two_inputs.both_differentiated(input, other):
            return None
        gate = written_activations.self_gated(input, other)  # x * gate(x): NOTE: [Activations written out]
        return Op("product", torch.mul, (input, other), {} if gate is None else {"gate": gate}, func, inplace)

    return parse


def _gated(func, gate, signal):
    """A parser for `written_recurrent.gated` (the gates of a recurrent layer written out): kind
    ``"product"`` with ``options["gate"] = 0``, the first factor a gate (`FixedGate` holds it)."""
    if not two_inputs.both_differentiated(gate, signal):
        return None
    return Op("product", torch.mul, (gate, signal), {"gate": 0}, func, False)


def _matmul(func, input, other=None, *rest, out=None, **named):
    """A parser for ``torch.matmul``, ``@`` and ``torch.bmm`` (function or Tensor method) of two
    differentiated float tensors: kind ``"matmul"`` (NOTE: [Products of two activations])."""
    if rest or named or out is not None or not two_inputs.both_differentiated(input, other) or not (input.ndim and other.ndim):
        return None
    fn = torch.bmm if func in (torch.bmm, torch.Tensor.bmm) else torch.matmul
    return Op("matmul", fn, (input, other), {}, func, False)


def _baddbmm(func, input, batch1, batch2, *, beta=1, alpha=1, out=None):
    """``torch.baddbmm(t, a, b)``, ``beta * t + alpha * (a @ b)`` (BLOOM's attention scores with
    their ALiBi bias), of two differentiated float tensors a and b: kind ``"baddbmm"``, which
    `Unfused` writes out so that ``a @ b`` takes the matmul rule. Affine in one activation, it
    is not parsed (NOTE: [Products of two activations])."""
    if out is not None or not two_inputs.both_differentiated(batch1, batch2):
        return None
    return Op("baddbmm", lambda t, a, b: torch.baddbmm(t, a, b, beta=beta, alpha=alpha), (input, batch1, batch2),
              {"beta": beta, "alpha": alpha}, func, False)


def _softmax(kind: str, fn: Callable):
    """A parser for softmax (``fn`` torch.softmax) or log_softmax (torch.log_softmax)."""

    def parse(func, input, dim=None, _stacklevel=3, dtype=None):
        if dim is None:
            raise ValueError(f"xattr.rules needs {kind}'s dim given explicitly (implicit dim is deprecated in torch)")
        return Op(kind, functools.partial(fn, dim=dim, dtype=dtype), (input,), {"dim": dim, "dtype": dtype}, func, False)

    return parse


def _logsumexp(func, input, dim=None, keepdim=False, *, out=None):
    """A parser for ``torch.logsumexp`` (``x.logsumexp``, ``torch.special.logsumexp``) of a float
    tensor over one dim or several: kind ``"logsumexp"``, ``options["dim"]`` a tuple of ints (as
    given, negative ones too), ``options["keepdim"]``. A call with ``out=``, named dims or no dims
    is not parsed (torch's own error follows where the call is wrong)."""
    if out is not None or not isinstance(input, torch.Tensor) or not input.is_floating_point():
        return None
    try:
        dims = (operator.index(dim),) if not isinstance(dim, (tuple, list)) else tuple(operator.index(d) for d in dim)
    except TypeError:  # None, a name
        return None
    if not dims:
        return None
    keepdim = bool(keepdim)
    return Op("logsumexp", functools.partial(torch.logsumexp, dim=dims, keepdim=keepdim), (input,),
              {"dim": dims, "keepdim": keepdim}, func, False)


def _bias(bias, weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.zeros(rows, dtype=weight.dtype, device=weight.device) if bias is None else bias


def _linear(func, input, weight, bias=None):
    fn = lambda x, w, b: F.linear(x, w, b)  # noqa: E731
    return Op("linear", fn, (input, weight, _bias(bias, weight, weight.shape[0])), {}, func, False)


def _addmm(func, input, mat1, mat2, *, beta=1, alpha=1, out=None):
    """``torch.addmm(b, x, W)`` is ``F.linear(x, W.T, b)`` (Hugging Face's ``Conv1D``: GPT-2's
    projections): kind "linear" where b is a bias (one dim, or none of it) and W a weight, not an
    activation. Before, it kept its ordinary gradient, so LRP-epsilon was LRP-0 there."""
    if out is not None or beta != 1 or alpha != 1 or not isinstance(input, torch.Tensor) or input.ndim > 1:
        return None
    if not (isinstance(mat1, torch.Tensor) and isinstance(mat2, torch.Tensor)) or mat1.ndim != 2 or differentiated(mat2):
        return None
    bias = input.expand(mat2.shape[1]) if input.ndim == 0 or input.shape[0] != mat2.shape[1] else input
    return Op("linear", lambda x, w, b: F.linear(x, w, b), (mat1, mat2.t(), bias), {}, func, False)


def _conv(nd: int):
    conv = getattr(torch, f"conv{nd}d")

    def parse(func, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        fn = lambda x, w, b: conv(x, w, b, **options)  # noqa: E731
        return Op("conv", fn, (input, weight, _bias(bias, weight, weight.shape[0])), dict(options, nd=nd), func, False)

    return parse


def _batch_norm(func, input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if training:
        return None  # batch statistics couple the examples: no rule applies (the train-mode warning says so)
    c = running_mean.shape[0]
    w = torch.ones(c, dtype=input.dtype, device=input.device) if weight is None else weight
    b = torch.zeros(c, dtype=input.dtype, device=input.device) if bias is None else bias
    fn = lambda x, w, b: F.batch_norm(x, running_mean, running_var, w, b, False, 0.0, eps)  # noqa: E731
    options = {"running_mean": running_mean, "running_var": running_var, "eps": eps}
    return Op("batch_norm", fn, (input, w, b), options, func, False)


def _layer_norm(func, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = tuple(normalized_shape) if not isinstance(normalized_shape, int) else (normalized_shape,)
    w = torch.ones(shape, dtype=input.dtype, device=input.device) if weight is None else weight
    b = torch.zeros(shape, dtype=input.dtype, device=input.device) if bias is None else bias
    fn = lambda x, w, b: F.layer_norm(x, shape, w, b, eps)  # noqa: E731
    return Op("layer_norm", fn, (input, w, b), {"normalized_shape": shape, "eps": eps}, func, False)


def _rms_norm(func, input, normalized_shape, weight=None, eps=None):
    shape = tuple(normalized_shape) if not isinstance(normalized_shape, int) else (normalized_shape,)
    w = torch.ones(shape, dtype=input.dtype, device=input.device) if weight is None else weight
    eps = torch.finfo(input.dtype).eps if eps is None else eps  # torch's default
    fn = lambda x, w: F.rms_norm(x, shape, w, eps)  # noqa: E731
    return Op("rms_norm", fn, (input, w), {"normalized_shape": shape, "eps": eps}, func, False)


def _sdpa(func, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """NOTE: [Attention masks under transforms]
    A tensor ``attn_mask`` rides in ``fn`` and ``options``, except one that a torch.func transform
    has wrapped (a mask given per example, batched by an outer ``vmap``): a tensor of an outer level
    read inside the rule's Function failed functorch's checks (an internal assert), so such a mask
    is the op's fourth tensor (``options["attn_mask"]`` is then None and ``options["mask_tensor"]``
    True), as a clamp's tensor bounds are (NOTE: [Clamp as an activation]). Rules give it no
    gradient."""
    if dropout_p:
        return None
    options = dict(attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=bool(enable_gqa), mask_tensor=False)
    tensors = (query, key, value)
    if isinstance(attn_mask, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(attn_mask):
        options.update(attn_mask=None, mask_tensor=True)
        tensors += (attn_mask,)
    call = {k: v for k, v in options.items() if k != "mask_tensor"}

    def fn(q, k, v, *mask):
        return F.scaled_dot_product_attention(q, k, v, **(dict(call, attn_mask=mask[0]) if mask else call))

    return Op("attention", fn, tensors, options, func, False)


def _glu(func, input, dim=-1):
    """``F.glu`` (``nn.GLU``): ``a * sigmoid(b)`` of the two halves of ``input`` along ``dim``, one
    call whose product no rule sees unless it is written out (`Unfused`: NOTE: [Products of two
    activations])."""
    return Op("glu", lambda x: F.glu(x, dim), (input,), {"dim": dim}, func, False)


def _fused_attention(func, *args, **kwargs):
    return Op("fused_attention", None, (), {}, func, False)


def _fused_recurrent(func, *args, **kwargs):
    return Op("fused_recurrent", None, (), {}, func, False)


# nn.LSTM, nn.GRU, nn.RNN and their cells: one call each, whose gates and activations no rule sees
RECURRENT = (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu, torch.lstm_cell, torch.gru_cell, torch.rnn_tanh_cell,
             torch.rnn_relu_cell)


_CLAMPS = (  # (positional bounds, out-of-place spellings, in-place spellings): all kind "clamp"
    (("min", "max"), [torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip],
     [torch.clamp_, torch.Tensor.clamp_, torch.clip_, torch.Tensor.clip_]),
    (("min",), [torch.clamp_min, torch.Tensor.clamp_min], [torch.clamp_min_, torch.Tensor.clamp_min_]),
    (("max",), [torch.clamp_max, torch.Tensor.clamp_max], [torch.clamp_max_, torch.Tensor.clamp_max_]),
)


def _table() -> tuple[dict, dict]:
    """(torch function -> parser, torch function -> kind)."""
    unary = {
        "relu": (torch.relu, [F.relu, torch.relu, torch.Tensor.relu], [torch.relu_, torch.Tensor.relu_, F.relu_]),
        "elu": (F.elu, [F.elu], [F.elu_]),
        "leaky_relu": (F.leaky_relu, [F.leaky_relu], [F.leaky_relu_]),
        "sigmoid": (torch.sigmoid, [torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid], [torch.sigmoid_, torch.Tensor.sigmoid_]),
        "tanh": (torch.tanh, [torch.tanh, torch.Tensor.tanh, F.tanh], [torch.tanh_, torch.Tensor.tanh_]),
        "softplus": (F.softplus, [F.softplus], []),
        "gelu": (F.gelu, [F.gelu], []),
        "silu": (F.silu, [F.silu], []),
        "hardswish": (F.hardswish, [F.hardswish], []),  # MobileNetV3
        "hardsigmoid": (F.hardsigmoid, [F.hardsigmoid], []),
        "relu6": (F.relu6, [F.relu6], []),
        "hardtanh": (F.hardtanh, [F.hardtanh], [F.hardtanh_]),  # nn.ReLU6 (MobileNetV2) calls it
        "mish": (F.mish, [F.mish], []),
        "selu": (F.selu, [F.selu, torch.selu], [F.selu_, torch.selu_]),
        "celu": (F.celu, [F.celu, torch.celu], [F.celu_, torch.celu_]),
        "softsign": (F.softsign, [F.softsign], []),
        "logsigmoid": (F.logsigmoid, [F.logsigmoid], []),
        "threshold": (F.threshold, [F.threshold, torch.threshold], [F.threshold_, torch.threshold_]),
    }
    table: dict = {}
    kinds: dict = {}

    def add(func, kind, parser):
        table[func], kinds[func] = parser, kind

    for kind, (fn, plain, inplace) in unary.items():
        for f in plain:
            add(f, kind, _unary(kind, fn))
        for f in inplace:
            add(f, kind, _unary(kind, fn, inplace_default=True))
    for f in (F.softmax, torch.softmax, torch.Tensor.softmax):
        add(f, "softmax", _softmax("softmax", torch.softmax))
    for f in (F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax, torch.special.log_softmax):
        add(f, "log_softmax", _softmax("log_softmax", torch.log_softmax))
    for f in (torch.logsumexp, torch.Tensor.logsumexp, getattr(torch.special, "logsumexp", None)):
        if f is not None:  # torch.special.logsumexp: torch >= 1.13
            add(f, "logsumexp", _logsumexp)
    for nd in (1, 2, 3):
        add(getattr(torch, f"conv{nd}d"), "conv", _conv(nd))
    for f, kind, parser in pools.spellings(Op):  # max and average pools, plain and adaptive
        add(f, kind, parser)
    for names, plain, inplace in _CLAMPS:
        for f in plain:
            add(f, "clamp", _clamp(names, False))
        for f in inplace:
            add(f, "clamp", _clamp(names, True))
    for f in (torch.maximum, torch.Tensor.maximum):
        add(f, "clamp", _extremum("min"))
    for f in (torch.minimum, torch.Tensor.minimum):
        add(f, "clamp", _extremum("max"))
    for f, kind, parser in extrema.spellings(Op, _extremum):  # torch.max/min: "clamp" or "max" (PARSES)
        add(f, kind, parser)
    for f, kind, parser in order_stats.spellings(Op):  # sort, topk, kthvalue, median, msort: "sort"
        add(f, kind, parser)
    for f in (torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.multiply, torch.Tensor.__mul__, torch.Tensor.__rmul__):
        add(f, "product", _product(False))
    for f in (torch.Tensor.mul_, torch.Tensor.multiply_, torch.Tensor.__imul__):
        add(f, "product", _product(True))
    add(gated, "product", _gated)  # NOTE: [Recurrent layers written out] in written_recurrent.py
    for f in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm):
        add(f, "matmul", _matmul)
    for f in (torch.baddbmm, torch.Tensor.baddbmm):
        add(f, "baddbmm", _baddbmm)
    # norms, F.normalize, F.cosine_similarity: NOTE: [Vector norms written out] in written_norms.py
    for f, kind, parser in pointwise.spellings(Op) + two_inputs.spellings(Op) + pairwise.spellings(Op) + written_norms.spellings(Op):
        add(f, kind, parser)
    add(F.linear, "linear", _linear)
    for f in (torch.addmm, torch.Tensor.addmm):
        add(f, "linear", _addmm)
    add(F.batch_norm, "batch_norm", _batch_norm)
    add(F.layer_norm, "layer_norm", _layer_norm)
    for f, kind, parser in norm_spellings(Op):  # group and instance norms (NOTE: [Attention and norms written out])
        add(f, kind, parser)
    for f in (F.rms_norm, getattr(torch, "rms_norm", None)):  # torch.rms_norm: not in every torch >= 2.4
        if f is not None:
            add(f, "rms_norm", _rms_norm)
    add(F.scaled_dot_product_attention, "attention", _sdpa)
    add(F.multi_head_attention_forward, "fused_attention", _fused_attention)
    add(F.glu, "glu", _glu)
    for f in RECURRENT:
        add(f, "fused_recurrent", _fused_recurrent)
    return table, kinds


PARSERS, KIND_OF = _table()
KINDS = frozenset(KIND_OF.values()) | pairwise.PAIRS  # "tensor_pow": no function of its own (pairwise.STANDS_FOR)
# the kinds each function's calls parse into: its own, and for torch.div (``c / x``) and torch.pow
# (``c ** x``) the other side's (rule_table.py parses a function's calls where a rule claims one)
PARSES = {f: frozenset({kind}) | two_inputs.ALSO.get(kind, pairwise.STANDS_FOR.get(kind, frozenset())) for f, kind in KIND_OF.items()}
PARSES.update(dict.fromkeys(extrema.TWO_KINDS, frozenset({"clamp", "max", "maximum"})))
# In-place forms ``fn(x, **op.options)`` of the elementwise kinds that have one: an in-place call
# under a rule that needs neither the input nor a forward of its own runs in place for real
# (rule_apply.py, `_ApplyEagerInPlace`), not out of place and copied back.
IN_PLACE = {"relu": torch.relu_, "elu": F.elu_, "leaky_relu": F.leaky_relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_}


def parse(func, args: tuple, kwargs: dict) -> Op | None:
    """The `Op` of an intercepted call, or None when `rules` has nothing to say about it."""
    parser = PARSERS.get(func)
    if parser is None:
        return None
    return parser(func, *args, **kwargs)

