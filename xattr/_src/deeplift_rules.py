"""DeepLift's backward rule (Rescale) and the paired-row helpers its rules share, as `Rule`s;
guided backprop's and deconvolution's rules are in guided_rules.py.

NOTE: [Paired rows]
DeepLift compares each example with its reference. Like Captum, xattr runs both in one batch:
rows ``[x_1..x_B, r_1..r_B]``, so every intercepted op sees its input as two halves, and the
Rescale multiplier of an element is ``(y_i - y_ref_i) / (x_i - x_ref_i)`` with the same value on
both halves. ``deep_lift`` records the number of rows it feeds (`paired_rows`), and a rule finds
them in dim 0 of its input, or in dim 1 of a sequence-first one (``(L, R, D)``, ``(out, R)``,
``(L, R, H, d)``), where it runs on the transposed views; where a tensor could hold them in either
dim, the call runs again with more rows (NOTE: [Rows in dim 0 or dim 1] in row_layout.py). An op
whose input holds no dim of that size where the rows may sit (a parameter, the batch interleaved
with another dim, rows in dim 2 or later) does not carry the batch, so it keeps its ordinary
derivative (the batch merged with another dim, each example's rows together, pairs as NOTE:
[Rows merged with another dim] in merged_rows.py says), and so does every op outside a
`paired_rows` block (``rules(model, deep_lift_rules())`` alone never pairs example i with example
i + B/2). The rules propagate the
gradient of each half from that half's own cotangent; ``deep_lift`` seeds the input half only.

NOTE: [Shared reference]
When every example has the same reference (a number, one row broadcast over the batch, or a
batch of equal rows: the common cases), the B reference rows are B copies of one computation. ``deep_lift`` then runs
``[x_1..x_B, r]``: B + 1 rows instead of 2B, so the forward and the backward do a little over
half of Captum's work (``paired_rows(B + 1, shared=1)``). The rules pair every input row with
the last row by broadcasting, and give that row a zero gradient (only the input rows are
seeded). DeepLift SHAP is the same per baseline row: c copies of the batch, each against one
distribution row, run as ``c*B + c`` rows (``shared=c``; the rules view the inputs as
(c, B, ...) against references (c, 1, ...)). Outputs of a shared row that differ per example (a
target per example) are read row by row after `tree.expand_shared` repeats it. Rules declare
that they work so with ``Rule.shares_reference``; a mapping with any rule that does not (a
user's own, by default) keeps the 2B rows, and so does a call with another per-example
argument beside the inputs or a batch of one.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp

from . import deeplift_max, ops, pairwise, pointwise
from . import tree as T
from .row_layout import _ROWS, paired_rows, rows_dim  # noqa: F401 (_ROWS, paired_rows: their home before row_layout.py)
from .rule_base import Rule, Saved

def _halves(t: torch.Tensor):
    """The input rows and the reference rows of paired rows, as two views: two halves; or the
    inputs and one shared reference row, which broadcasts against them; or, for c copies with a
    shared row each, the inputs as (c, B, ...) and the references as (c, 1, ...) (results of
    such views are flattened back with `_flat`)."""
    c = _ROWS.get()[2]
    if not c:
        return t.chunk(2)
    if c == 1:
        return t[:-1], t[-1:]
    n = t.shape[0] - c
    return t[:n].unflatten(0, (c, n // c)), t[n:].unsqueeze(1)


def _flat(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """v in rows like ``like``'s: (c, B, ...) from `_halves` back to (c * B, ...)."""
    return v.flatten(0, 1) if v.ndim > like.ndim else v


def _split(t: torch.Tensor, n: int):
    """``t``'s first n rows and the rest; for backward passes, which read no context (on a GPU
    autograd runs them on its own threads): n comes from a saved tensor's rows."""
    return t[:n], t[n:]


def _on_rows(m: torch.Tensor) -> torch.Tensor:
    """The input rows' multipliers m on every row of the call: repeated for reference rows that
    are seeded too, zeros for those that are not (deep_lift seeds the input half only)."""
    rows, reference_grads = _ROWS.get()[:2]
    return torch.cat([m, m]) if reference_grads and m.shape[0] != rows else _padded(m, rows)


def _padded(m: torch.Tensor, rows: int) -> torch.Tensor:
    """The input rows' multipliers m, with zero rows appended up to ``rows`` (a shared reference
    row takes no gradient): the backward is then one product, like the plain op's."""
    if m.shape[0] == rows:
        return m
    if torch._C._functorch.maybe_current_level() is not None:
        return torch.cat([m, m.new_zeros((rows - m.shape[0],) + tuple(m.shape[1:]))])
    out = m.new_empty((rows,) + tuple(m.shape[1:]))
    head, tail = out.split_with_sizes([m.shape[0], rows - m.shape[0]])
    head.copy_(m)
    tail.zero_()
    return out


def step(t: torch.Tensor) -> torch.Tensor:
    """``[t > 0]`` as a float tensor, by float ops only.

    NOTE: [Float masks]
    On CPU builds of torch, comparisons that produce bool tensors and ``torch.where`` cost 4 to 30
    times a float op of the same size (measured: ``x > 0`` 330 us, ``torch.where`` 1.5-2.7 ms,
    ``sign``/``clamp``/``mul`` 70-100 us on 524k elements). The rules run on every activation, so
    their masks are built from ``sign`` and ``clamp`` instead. On a GPU the count of kernels is
    what costs, and comparisons are cheap there, so the Rescale multipliers (`_rescaled`) and the
    LRP stabilizer (`lrp_rules.stabilize`) have a ``torch.where`` spelling, with equal values
    (tested), that they use on every device but the CPU.
    """
    return torch.sign(t).clamp_min_(0)


def floored(eps: float, dtype: torch.dtype) -> float:
    """eps raised to the smallest normal number of ``dtype``: in float16 the defaults (1e-10,
    1e-9) round to 0, and a tie (``x == x_ref``, ``z == 0``) would divide 0 by 0."""
    return max(eps, torch.finfo(dtype).tiny) if dtype.is_floating_point else eps


def checked_eps(eps: float, name: str) -> float:
    """eps as a float, refusing a negative one (it would turn ties and stabilizers into 0/0)."""
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")
    return eps


def below(t: torch.Tensor, eps: float) -> torch.Tensor:
    """``[|t| < eps]`` as a float tensor (NOTE: [Float masks]): an in-place comparison keeps
    t's float dtype, and is as fast as a float op (not a bool one). Under torch.func transforms
    the same values come from sign and clamp, which have vmap rules (``lt_`` has none)."""
    if torch._C._functorch.maybe_current_level() is None:
        return t.abs().lt_(eps)
    return torch.rsub(t.abs(), eps).sign_().clamp_min_(0)


def derivative(op: ops.Op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ordinary derivative of an elementwise op at x (closed forms where cheap)."""
    if op.kind == "relu":
        return torch.sign(y)  # y = relu(x) >= 0: one op for [x > 0]
    if op.kind == "sigmoid":
        return y * (1 - y)
    if op.kind == "tanh":
        return 1 - y * y
    if op.kind == "leaky_relu":
        slope = op.options.get("negative_slope", 0.01)
        return slope + (1 - slope) * step(x)
    # torch's own backward of these two rounds a constant (1/alpha, 1/6) to float32: ~1e-8 off in float64
    if op.kind == "celu":
        return torch.exp(x.clamp(max=0) / op.options.get("alpha", 1.0))
    if op.kind == "clamp":  # 1 on [min, max], as torch's clamp backward (bounds inclusive)
        return torch.eq(y, x).to(x.dtype)
    if op.kind == "hardsigmoid":  # 1/6 on (-3, 3)
        return torch.rsub(x.abs(), 3).sign_().clamp_min_(0).div_(6)
    closed = pointwise.DERIVATIVES.get(op.kind)  # exp, log, sqrt, abs, pow...
    if closed is not None:
        return closed(x, y, op.options)
    if op.kind == "gelu" and torch._C._functorch.maybe_current_level() is None:
        # torch's own backward kernel, bit for bit the jvp below (tested), without jvp's machinery:
        # 47 us against 127 us on (4, 13, 1536), one thread (a GELU with a tie: once per call on MiniLM)
        return torch.ops.aten.gelu_backward(torch.ones_like(x), x, approximate=op.options.get("approximate", "none"))
    return jvp(op.fn, (x,), (torch.ones_like(x),))[1]


def _rescaled(op: ops.Op, x, y, eps: float, *, where: bool | None = None, rows: int | None = None) -> torch.Tensor:
    """Rescale multipliers of the input rows (B of them): ``dy/dx``, or phi'(x) where |dx| < eps.

    ``rows``: the multipliers come with zero rows appended up to ``rows`` (for a shared reference
    row, NOTE: [Shared reference]), written in place where the kernels allow it.

    Three spellings with equal values: float masks on CPU (NOTE: [Float masks]), and on other
    devices (``where=None``: chosen by x's device) a ``torch.where`` of 8 kernels instead of 17,
    since on a GPU each ReLU's multipliers cost kernel launches, not memory traffic. On CPU
    outside torch.func transforms, where no ``|dx|`` is below eps (the common case: pre-activations
    of an example and its reference rarely tie), the ratio alone, 4 kernels instead of 9.
    """
    x1, x2 = _halves(x)
    y1, y2 = _halves(y)
    dx = x1 - x2
    if op.kind in pointwise.KINDS:  # NOTE: [Rescale off the domain] in pointwise.py
        m = _flat(pointwise.rescaled(dx, y1 - y2, derivative(op, x1, y1), eps), x)
        return m if rows is None else _padded(m, rows)
    eager = torch._C._functorch.maybe_current_level() is None
    if where if where is not None else x.device.type != "cpu":
        near = dx.abs() < eps
        # under transforms out of place, never 0/0 (its nan would reach an outer gradient through the
        # where: NOTE: [Derivatives of rule-based attributions] in rule_limits.py)
        ratio = (y1 - y2).div_(dx) if eager else (y1 - y2) / torch.where(near, torch.ones_like(dx), dx)
        m = _flat(torch.where(near, derivative(op, x1, y1), ratio), x)
        return m if rows is None else _padded(m, rows)
    out = None
    if rows is not None and eager:
        buffer = x.new_empty((rows,) + tuple(x.shape[1:]))
        n = dx.shape[0] * dx.shape[1] if dx.ndim > x.ndim else dx.shape[0]  # input rows
        out, tail = buffer.split_with_sizes([n, rows - n])  # one call, two views
        out = out.view(dx.shape)
        tail.zero_()
    if eager and dx.numel():
        # |dx|, then dy and the ratio, in one buffer (the multipliers' own when padded): on CPU a
        # fresh tensor of an early layer's size can cost more to fault in than its kernel
        scratch = torch.abs(dx, out=out) if out is not None else dx.abs()
        if not scratch.min().item() < eps:  # one reduction decides: no tie
            m = torch.sub(y1, y2, out=scratch).div_(dx)
            return _flat(m, x) if out is None else buffer
    near = below(dx, eps)
    # never 0/0: dx + near != 0 where near = 0 or 1; out of place under transforms (autograd saved dx)
    ratio = (y1 - y2).div_(dx.add_(near)) if eager else (y1 - y2) / (dx + near)
    # lerp picks exactly at weights 0 and 1 (start + 0 * d below 1/2, end - d * 0 above): one
    # kernel for "the derivative where near, else the ratio"
    m = torch.lerp(ratio, derivative(op, x1, y1), near, out=out)
    if out is not None:
        return buffer
    m = _flat(m, x)
    return m if rows is None else _padded(m, rows)


def _both_halves(grad: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """grad (2B, ...) times the multipliers m (B, ...) of each pair."""
    return (grad.unflatten(0, (2, -1)) * m).flatten(0, 1)


pool_with_indices = ops.pool_with_indices  # a max-pool's output and argmax indices (plain or adaptive)


def unpool(v: torch.Tensor, indices: torch.Tensor, shape, nd: int, *more, into: torch.Tensor | None = None) -> torch.Tensor:
    """Adds each pooled value v into its argmax position: the max-pool's VJP, by indices.

    ``more``: further (values, indices) pairs added into the same result (one buffer, no sums
    of full-size tensors); ``into``: a contiguous zero tensor of ``shape`` to add into.
    """
    shape = tuple(shape)
    flat_shape = shape[: len(shape) - nd] + (math.prod(shape[len(shape) - nd :]),)
    pairs = ((v, indices), *zip(more[::2], more[1::2]))
    if torch._C._functorch.maybe_current_level() is not None:
        # under vmap the values or indices may be batched where the zeros are not (a gradient that
        # only affine ops passed is the same for every example): no in-place writes into them
        if into is not None:
            raise ValueError("unpool: no buffer to add into under torch.func transforms")
        flat = v.new_zeros(flat_shape)
        for values, idx in pairs:
            flat = flat.scatter_add(-1, idx.flatten(-nd), values.flatten(-nd))
        return flat.reshape(shape)
    flat = v.new_zeros(flat_shape) if into is None else into.view(flat_shape)
    for values, idx in pairs:
        flat.scatter_add_(-1, idx.flatten(-nd), values.flatten(-nd))
    return flat.reshape(shape)


class Rescale(Rule):
    """DeepLift's Rescale rule (Shrikumar et al. 2017) for elementwise ops, max-pooling and softmax.

    Elementwise y = phi(x) (activations, clamp, and exp, log, sqrt, abs, pow...: NOTE: [Elementwise
    functions of one input]): multiplier ``m = (y - y_ref) / (x - x_ref)``, or phi'(x) where
    ``|x - x_ref| < eps`` or the ratio is not finite (NOTE: [Rescale off the domain]); ``dx = g *
    m``. Elementwise y = g(a, b) (``a ** b``, atan2, logaddexp, logaddexp2, xlogy, copysign: NOTE:
    [Elementwise functions of two inputs]): each input's Shapley share of the change over its
    difference (NOTE: [DeepLift at two inputs] in deeplift_pairs.py). Max-pooling: each output's
    change ``y - y_ref`` is split into the part from x's maximum and the part from the
    reference's maximum, routed to the argmax positions of each, and divided by ``x - x_ref`` (so
    summation-to-delta holds through the pool); a max or min along dims (``x.max(dim)``,
    ``torch.amax``) is such a pool (NOTE: [Max along a dim] in extrema.py). Order statistics along a
    dim (sort, topk, kthvalue, median): the op's permutation averaged along the straight path from
    the reference to the example (NOTE: [DeepLift at order statistics] in deeplift_sort.py). Softmax: the
    elementwise multipliers times g, minus their mean over the softmax dim (the paper's normalisation; per example, where Captum takes the mean over the whole
    doubled batch). Rows pair as in NOTE: [Paired rows], in dim 0 or, in a sequence-first
    tensor, dim 1 (NOTE: [Rows in dim 0 or dim 1]).

    Example:
      >>> mapping = {**xattr.rule.deep_lift_rules(), F.relu: xattr.rule.Rescale(eps=1e-6)}
      >>> attr = xattr.deep_lift(xattr.target(model, 3), mapping=mapping)(x)        # like x
    """

    kinds = ops.ELEMENTWISE | pairwise.PAIRS | {"max_pool", "max", "sort", "softmax"}
    shares_reference = True

    def __init__(self, eps: float = 1e-10):
        self.eps = checked_eps(eps, "Rescale")

    def forward(self, op, x, *bounds):  # bounds: a clamp's tensor bounds under transforms (ops.py)
        eps = floored(self.eps, x.dtype)
        if op.kind in pairwise.PAIRS:  # y = g(a, b): NOTE: [DeepLift at two inputs] in deeplift_pairs.py
            from . import deeplift_pairs  # it imports this module's helpers

            return deeplift_pairs.forward(op, x, bounds[0], eps)
        dim = rows_dim(x)  # NOTE: [Rows in dim 0 or dim 1]
        if op.kind == "max":  # a max along dims: the max-pool rule on a view (deeplift_max.py)
            return deeplift_max.forward(self, op, x, dim, eps)
        if op.kind == "sort":  # order statistics: the path-averaged permutation (deeplift_sort.py)
            from . import deeplift_sort  # it imports this module's helpers

            return deeplift_sort.forward(op, x, dim)
        if dim == 1:  # a sequence-first layout: the dim-0 rule on the transposed views
            if op.kind != "max_pool" or x.ndim - op.options["nd"] > 1:
                return self._rows_second(op, x, bounds, eps)
            dim = None  # an unbatched pool over (rows, ...): it mixes rows, no pairs to keep
        if op.kind == "max_pool":
            y, indices = pool_with_indices(op, x)
            shape = x.new_zeros(()).expand(x.shape)  # the input's shape, no storage
            if dim is None:
                return y, (indices, shape)
            return y, (indices, shape, *self._max_pool_terms(op, x, y, indices, eps))
        y = op.fn(x, *bounds)
        if op.kind == "softmax":
            if dim is None:
                return y, (y.clone(),)
            return y, (*self._softmax_terms(x, y, eps), y.clone())
        if dim is None:
            return y, (derivative(op, x, y),)
        return y, (_rescaled(op, x, y, eps, rows=x.shape[0] if _ROWS.get()[2] else None),)

    @staticmethod
    def _softmax_terms(x, y, eps: float) -> tuple:
        dx, dy = _delta(x), _delta(y)
        # a score masked in both rows (-inf, an attention mask) is a tie: -inf - -inf is nan,
        # which divided dy into nan multipliers (NaN attributions through masked attention)
        near = (dx.abs() < eps) | dx.isnan()
        return dy / torch.where(near, torch.ones_like(dx), dx), near

    def _rows_second(self, op, x, bounds, eps: float):
        """`forward` where the rows sit in dim 1: the extras hold every row (the elementwise
        multipliers and the softmax terms in x's layout, so the backward is unchanged; the
        max-pool's terms transposed, which its backward tells by their shape)."""
        xt = x.transpose(0, 1)
        if op.kind == "max_pool":
            yt, indices = pool_with_indices(op, xt)
            extras = (indices, xt.new_zeros(()).expand(xt.shape), *self._max_pool_terms(op, xt, yt, indices, eps))
            return yt.transpose(0, 1).contiguous(), extras
        y = op.fn(x, *bounds)
        yt = y.transpose(0, 1)
        if op.kind == "softmax":
            ratio, near = self._softmax_terms(xt, yt, eps)
            return y, (ratio.transpose(0, 1), near.transpose(0, 1), y.clone())
        rows, reference_grads, shared = _ROWS.get()[:3]
        m = _rescaled(op, xt, yt, eps, rows=None if reference_grads else rows)  # the reference rows: none, or zeros
        if m.shape[0] != rows:  # both halves seeded: each pair's multipliers on both
            m = torch.cat([m, m])
        return y, (m.transpose(0, 1),)

    def backward(self, op, saved: Saved, grad):
        if op.kind == "max":
            return (deeplift_max.backward(self, op, saved.extras, grad),)
        if op.kind == "sort":
            from . import deeplift_sort

            return (deeplift_sort.backward(op, saved.extras, grad),)
        if op.kind == "max_pool":
            if grad.shape[0] != saved.extras[0].shape[0]:  # rows in dim 1: terms transposed (`_rows_second`)
                return (self._max_pool(op, saved.extras, grad.transpose(0, 1)).transpose(0, 1),)
            return (self._max_pool(op, saved.extras, grad),)
        if op.kind == "softmax":
            *paired, y = saved.extras
            dim = op.options["dim"]
            ordinary = y * (grad - (grad * y).sum(dim, keepdim=True))
            if not paired:
                return (ordinary,)
            ratio, near = paired
            u = torch.where(near, ordinary, grad * ratio)
            return (u - u.mean(dim, keepdim=True),)
        if op.kind in pairwise.PAIRS:
            from . import deeplift_pairs

            return deeplift_pairs.backward(op, saved.extras, grad)
        m = saved.extras[0]
        return (grad * m if m.shape[0] == grad.shape[0] else _both_halves(grad, m),) + (None,) * len(op.options.get("bounds", ()))

    def _max_pool_terms(self, op, x, y, indices, eps: float) -> tuple:
        """Per pooled output: the multipliers of its two argmax positions, for each half.

        NOTE: [Max-pool multipliers per output]
        An output's change ``y - y_ref`` splits into ``top - y_ref`` (x's maximum rising above the
        reference's, routed to x's argmax a) and ``y - top`` (the reference's part, routed to its
        argmax r), with ``top = max(y, y_ref)``. Each position p then divides what it receives by
        ``dx_p = x_p - x_ref_p``, or, where ``|dx_p| < eps``, takes the ordinary gradient (from the
        outputs whose argmax it is in its own half). Every term of p's sum is divided by the same
        dx_p, so the division moves into the terms: each output carries one factor for a and one
        for r, and ``dx`` is needed only at argmax positions, where ``x_a = y`` and ``x_ref_r = y_ref``
        (two gathers of pooled size). Nothing of the input's size is computed in the forward,
        and the backward is two scatters per half, like the ordinary max-pool backward.
        """
        nd = op.options["nd"]
        y1, y2 = _halves(y)
        i1, i2 = _halves(indices)
        x1, x2 = _halves(x)
        top = torch.maximum(y1, y2)
        dx_a = y1 - _at(x2, i1, nd)  # dx at x's argmax
        dx_r = _at(x1, i2, nd) - y2  # dx at the reference's argmax
        near_a, near_r = below(dx_a, eps), below(dx_r, eps)
        if torch._C._functorch.maybe_current_level() is None:
            q_a = (top - y2).div_(dx_a.add_(near_a))  # never 0/0: dx + near != 0
            q_r = (y1 - top).div_(dx_r.add_(near_r))
        else:  # out of place: autograd saved dx_a and dx_r for |dx| (see `_rescaled`)
            q_a, q_r = (top - y2) / (dx_a + near_a), (y1 - top) / (dx_r + near_r)
        one, zero = q_a.new_ones(()), q_a.new_zeros(())
        # where near, the input half takes the ordinary gradient at a (x's argmax) and nothing at r;
        # the reference half the reverse (lerp picks exactly at weights 0 and 1, see `_rescaled`)
        first = (_flat(torch.lerp(q_a, one, near_a), y), _flat(torch.lerp(q_r, zero, near_r), y))
        if not _ROWS.get()[1]:  # only the input half is seeded: the reference half gets no gradient
            return first
        return first + (torch.lerp(q_a, zero, near_a), torch.lerp(q_r, one, near_r))

    def _max_pool(self, op, extras, grad):
        nd = op.options["nd"]
        indices, shape = extras[0], extras[1].shape
        if len(extras) == 2:  # not paired: the ordinary gradient
            return unpool(grad, indices, shape, nd)
        n = extras[2].shape[0]  # input rows: half of them, or all but the shared reference rows
        i1, i2 = _split(indices, n)
        g1, g2 = _split(grad, n)
        if i2.shape[0] != n:  # c shared reference rows, each for a block of n / c input rows
            i2 = T.repeat_references(i2, n, i2.shape[0])
        half = (n,) + tuple(shape[1:])
        if torch._C._functorch.maybe_current_level() is not None:  # out of place: see `unpool`
            first = unpool(g1 * extras[2], i1, half, nd, g1 * extras[3], i2)
            if len(extras) == 6:
                second = unpool(g2 * extras[4], i1, half, nd, g2 * extras[5], i2)
            else:
                second = first.new_zeros((shape[0] - n,) + tuple(shape[1:]))
            return torch.cat([first, second])
        out = grad.new_zeros(shape)
        first, second = out[:n], out[n:]  # slices: in-place writes into chunk() views are refused under grad mode
        unpool(g1 * extras[2], i1, half, nd, g1 * extras[3], i2, into=first)
        if len(extras) == 6:  # NOTE: [Max-pool multipliers per output]
            unpool(g2 * extras[4], i1, half, nd, g2 * extras[5], i2, into=second)
        return out


def _at(t: torch.Tensor, indices: torch.Tensor, nd: int) -> torch.Tensor:
    """t's values at a max-pool's flat spatial indices, shaped like the indices; the dims before
    the spatial ones broadcast (a shared reference row stands for every row of its copy)."""
    lead_t, lead_i = t.shape[:-nd], indices.shape[:-nd]
    if lead_t != lead_i:  # each dim equal or 1: the larger (torch.broadcast_shapes costs ~20 us a call)
        lead = tuple(max(a, b) for a, b in zip(lead_t, lead_i))
        t, indices = t.expand(lead + t.shape[-nd:]), indices.expand(lead + indices.shape[-nd:])
    return t.flatten(-nd).gather(-1, indices.flatten(-nd)).view(indices.shape)


def _delta(t: torch.Tensor) -> torch.Tensor:
    """The input rows' differences from their references, on every row: paired halves share
    them (each pair has one multiplier); shared reference rows, which are not seeded, take the
    first copies' values (any finite value would do there)."""
    a, b = _halves(t)
    d = _flat(a - b, t)
    return torch.cat([d, d[: t.shape[0] - d.shape[0]]])
