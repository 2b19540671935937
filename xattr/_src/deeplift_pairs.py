"""DeepLift's Rescale at elementwise functions of two tensors (NOTE: [Elementwise functions of two
inputs] in pairwise.py): `Rescale` hands these ops here.

NOTE: [DeepLift at two inputs]
For ``y = g(a, b)`` elementwise (``a ** b``, atan2, logaddexp, logaddexp2, xlogy, copysign), with
``y_ref = g(a_ref, b_ref)``, the change splits between the two inputs by their Shapley values, the
average over the two orders in which they can move from the reference to the example:

    s_a = ((g(a, b_ref) - g(a_ref, b_ref)) + (g(a, b) - g(a_ref, b))) / 2
    s_b = ((g(a_ref, b) - g(a_ref, b_ref)) + (g(a, b) - g(a, b_ref))) / 2

so ``s_a + s_b = y - y_ref`` exactly, for any g (no linearity needed), and the multipliers are
``m_a = s_a / (a - a_ref)``, ``m_b = s_b / (b - b_ref)``. With one input it is Rescale's secant;
for a product ``a * b`` it is `Product`'s ``avg(b)``, ``avg(a)``. Each is computed on the output's
shape, from a and b broadcast to it, and summed to the input's shape in the backward: an input
broadcast over some dims has one difference there, so its gradient times its difference sums to
the sum of its shares. An input without the paired rows (a parameter, a fixed tensor, a 0-d
number) is the same at the example and the reference: its share is 0, and the other input takes
the whole change, which is then Rescale of a function of one input. Where ``|a - a_ref| < eps`` or
the ratio is not finite, m_a is the partial derivative at the input, torch's own (forward mode),
and 0 where that is not finite either (atan2 at (0, 0) is finite in torch; xlogy's derivative in y
at (0, 0) and pow's in the exponent at a negative base are not): a tie's share is 0 anyway, and an
inf or nan multiplier would make every attribution upstream nan (0 * nan). Where one order's
middle point is off the domain (``g(a, b_ref)`` nan: a negative base raised to the reference's
fractional exponent) while the other's is not, the split uses that other order alone, still
exact; where both are off it, the shares are not finite and the multipliers are the derivatives.
Where y or y_ref is not finite, summation-to-delta has nothing to hold. The rows pair as for
Rescale (NOTE: [Paired rows], [Shared reference], [Rows in dim 0 or dim 1]): found in the output.
Before, these ops kept their gradient: |delta| 211 (pow, where |f(x) - f(0)| was 17), 6.9 (atan2,
6.9), 2.2 (logaddexp, 5.2), 47 (xlogy, 108) on a small float64 MLP into the op.
"""

from __future__ import annotations

import torch

from . import pointwise
from .deeplift_rules import _flat, _halves, _on_rows
from .row_layout import rows_dim


def _partials(fn, a: torch.Tensor, b: torch.Tensor) -> tuple:
    """g's partial derivatives in a and in b at (a, b) (same shapes), torch's own, 0 where not finite."""
    a, b = a.contiguous(), b.contiguous()
    da = torch.func.jvp(fn, (a, b), (torch.ones_like(a), torch.zeros_like(b)))[1]
    db = torch.func.jvp(fn, (a, b), (torch.zeros_like(a), torch.ones_like(b)))[1]
    return tuple(torch.where(torch.isfinite(d), d, torch.zeros_like(d)) for d in (da, db))


def _shares(fn, a1, a0, b1, b0, y1, y0) -> tuple:
    """The Shapley shares of a and b in ``y1 - y0`` (NOTE: [DeepLift at two inputs])."""
    p, q = fn(a1, b0), fn(a0, b1)  # a moved first, b moved first
    a_first, b_first = torch.isfinite(p), torch.isfinite(q)
    both = a_first & b_first
    s_a = torch.where(both, ((p - y0) + (y1 - q)) * 0.5, torch.where(a_first, p - y0, y1 - q))
    s_b = torch.where(both, ((q - y0) + (y1 - p)) * 0.5, torch.where(a_first, y1 - p, q - y0))
    return s_a, s_b


def forward(op, a: torch.Tensor, b: torch.Tensor, eps: float) -> tuple:
    """The op's output and the multipliers of a and b on the output's shape, then a's and b's
    shapes (no storage): `Rescale.forward` at a kind of `pairwise.PAIRS`."""
    fn = op.fn
    out = fn(a, b)
    shapes = (a.new_zeros(()).expand(a.shape), b.new_zeros(()).expand(b.shape))
    dim = rows_dim(out)  # NOTE: [Rows in dim 0 or dim 1]
    wide_a, wide_b = a.expand(out.shape), b.expand(out.shape)
    if dim is None:
        return out, (*_partials(fn, wide_a, wide_b), *shapes)
    first = [t.movedim(dim, 0) if dim else t for t in (wide_a, wide_b, out)]
    (a1, a0), (b1, b0), (y1, y0) = (_halves(t) for t in first)
    s_a, s_b = _shares(fn, a1, a0, b1, b0, y1, y0)
    d_a, d_b = _partials(fn, a1.expand(s_a.shape), b1.expand(s_b.shape))
    m_a = pointwise.rescaled(a1 - a0, s_a, d_a, eps)
    m_b = pointwise.rescaled(b1 - b0, s_b, d_b, eps)
    ms = [_on_rows(_flat(m, first[2])) for m in (m_a, m_b)]
    if dim:
        ms = [m.movedim(0, dim) for m in ms]
    return out, (*ms, *shapes)


def backward(op, extras: tuple, grad: torch.Tensor) -> tuple:
    """The gradients of a and b: the incoming gradient times each multiplier, summed to the
    input's shape."""
    m_a, m_b, a, b = extras
    return tuple((grad * m).sum_to_size(t.shape).to(t.dtype) for m, t in ((m_a, a), (m_b, b)))
