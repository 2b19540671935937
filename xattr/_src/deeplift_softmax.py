"""Exact DeepLift rules for softmax (opt-in), log_softmax and logsumexp (DeepLift's defaults):
`ExactSoftmax`.

NOTE: [DeepLift through softmax, exactly]
`Rescale` gives softmax the elementwise ratios ``(y - y_ref) / (x - x_ref)`` minus their mean over
the softmax dim (the paper's normalisation, as Captum): summation-to-delta fails there. An exact
decomposition follows from writing softmax as ``y = exp(z)``, ``z = x - L``, ``L = log(sum(exp(x)))``
and taking DeepLift's secants at each step, over each example and its reference:

    y_j - y_ref_j = m_j (z_j - z_ref_j),        m_j = (y_j - y_ref_j) / (z_j - z_ref_j)   (exp's secant)
    L - L_ref     = sum_k w_k (x_k - x_ref_k),  w_k = r q_k,
        q_k = (e_k - e_ref_k) / (x_k - x_ref_k),  e = exp(x - c)                          (exp's secant)
        r   = (L - L_ref) / (S - S_ref),          S = sum(e) = exp(L - c)                  (log's secant)

so ``y_j - y_ref_j = sum_k m_j (delta_jk - w_k) (x_k - x_ref_k)`` exactly, and the backward of a
gradient g is ``u - w sum(u)`` with ``u = g m``. The constant c (one per pair of rows) cancels in
w; ``c = max(L, L_ref)`` keeps the exponentials at most 1, and then ``r = d / -expm1(-d)`` with
``d = |L - L_ref|``, without a subtraction of S. This is DeepLift (Rescale at exp and log) on the
softmax spelled ``exp(x - log(exp(x).sum(dim)))`` (tested), and where x equals its reference it is
softmax's Jacobian. Ties fall back to the derivatives, as `Rescale`'s do: ``m = y`` where ``|z -
z_ref| < eps``, ``q = e`` where ``|x - x_ref| < eps``, ``r = 1`` (at c = L) where ``d < eps``; a
score masked in both rows (-inf) is a tie, and gets 0.

Why not the product rule on ``y = e * (1 / S)`` (`Product`'s averaged factors): it is exact too,
but its multipliers grow like ``exp(|L - L_ref|)`` and their contributions cancel. Measured on
random rows of 8 scores against a reference near 0: at scores of scale 5, contributions of 1.4e4
to changes below 1 (float32 sums off by 0.26), at scale 10 of 4e9 (float64 off by 2e-3); the
spelling above gave contributions below 4 and sums off by 3e-6 (float32) and 4e-15 (float64).

NOTE: [DeepLift through log_softmax]
``y = log_softmax(x) = x - L`` needs only the second line: ``y_j - y_ref_j = (x_j - x_ref_j) -
sum_k w_k (x_k - x_ref_k)``, so the backward of g is ``g - w sum(g)`` (softmax's Jacobian's
transpose with w in place of softmax(x), which it is where x equals its reference). It is what
DeepLift's Rescale at exp and log gives on ``x - x.exp().sum(dim, keepdim=True).log()`` written
out (tested), every w_k is positive and at most ``r <= 1 + |L - L_ref|``, with no cancellation,
so `deep_lift_rules` maps log_softmax to `ExactSoftmax` by default: Captum has no rule for
log_softmax (``nn.LogSoftmax`` is not among its nonlinearities: the gradient), so there is no
convention to keep, unlike softmax's mean-normalised multipliers.

NOTE: [DeepLift through logsumexp]
``y = logsumexp(x, dims)`` is L itself, so the second line above is its decomposition, and the
backward of g is ``w * g`` (g broadcast over the reduced dims; with ``keepdim=False`` they are
put back first). Over several dims nothing changes: with K the positions of one reduced group
(the product of the dims), ``S = sum_{k in K} e_k`` and ``S - S_ref = sum_{k in K} q_k (x_k -
x_ref_k)`` exactly (a sum of exp's exact secants), and ``L - L_ref = r (S - S_ref)`` (log's), so
``w_k = r q_k`` with one r per group, the secant of logsumexp over the flattened dims. Composing
one dim at a time (``lse_2(lse_1(x))``) would be exact too (a chain of exact secants), but gives
other numbers in general (the inner groups' r differ from the whole group's); the flat secant is
what DeepLift's Rescale at exp and log gives on ``x.exp().sum(dims).log()`` written out (tested),
so that is the one used. Every w_k is positive; where x equals its reference, w is softmax(x)
over the dims, the ordinary gradient. `deep_lift_rules` maps ``torch.logsumexp`` (every
spelling) to `ExactSoftmax`: Captum has no rule there either, and without one DeepLift missed
part of f(x) - f(b) through every LSE pool of `xattr.softened` (NOTE: [Softened operations]).

Rows pair as in NOTE: [Paired rows] (deeplift_rules.py), in dim 0 or dim 1 (NOTE: [Rows in dim 0
or dim 1]); a softmax or logsumexp over the rows' own dim mixes examples, and keeps its ordinary
gradient, as does every one outside paired rows.
"""

from __future__ import annotations

import torch

from .deeplift_rules import _flat, _halves, _on_rows, checked_eps, floored
from .row_layout import rows_dim
from .rule_base import Rule, Saved


def _secant(num: torch.Tensor, den: torch.Tensor, slope: torch.Tensor, eps: float) -> torch.Tensor:
    """``num / den``, or ``slope`` where ``|den| < eps`` or den is nan (both -inf: a masked score)."""
    near = (den.abs() < eps) | den.isnan()
    return torch.where(near, slope, num / torch.where(near, torch.ones_like(den), den))


def _terms(x: torch.Tensor, y: torch.Tensor | None, dims: tuple, eps: float, log: bool = False, lse=None) -> tuple:
    """The multipliers m and w of NOTE: [DeepLift through softmax, exactly] for the input rows of
    x (rows in dim 0), in the input rows' shape, over ``dims`` (nonnegative; several for a
    logsumexp: NOTE: [DeepLift through logsumexp]); with ``log`` (y is log_softmax or logsumexp,
    unread) w alone. ``lse``: x's logsumexp over ``dims`` (keepdim), where the caller has it."""
    x1, x2 = _halves(x)
    dims = tuple(d - x.ndim for d in dims)  # from the right: shared reference rows view the halves with one dim more
    if lse is None:
        lse1, lse2 = x1.logsumexp(dims, keepdim=True), x2.logsumexp(dims, keepdim=True)
    else:
        lse1, lse2 = _halves(lse)
    if not log:
        y1, y2 = _halves(y)
        m = _flat(_secant(y1 - y2, (x1 - lse1) - (x2 - lse2), y1, eps), x)
    c = torch.maximum(lse1, lse2)
    e1, e2 = (x1 - c).exp(), (x2 - c).exp()
    d = (lse1 - lse2).abs()
    r = _secant(d, -torch.expm1(-d), torch.ones_like(d), eps)  # (L - L_ref) / (S - S_ref), one S is 1
    w = _flat(r * _secant(e1 - e2, x1 - x2, e1, eps), x)
    return (w,) if log else (m, w)


class ExactSoftmax(Rule):
    """DeepLift through softmax with summation-to-delta: the secants of ``exp(x - logsumexp(x))``.

    For ``y = softmax(x, dim)`` and its reference ``y_ref = softmax(x_ref, dim)``, the backward of
    g is ``u - w * sum(u, dim)`` with ``u = g * m``, ``m = (y - y_ref) / (z - z_ref)`` (``z = x -
    logsumexp(x)``) and ``w`` the secant of logsumexp (NOTE: [DeepLift through softmax, exactly]
    in deeplift_softmax.py), so the contributions of x's changes sum to ``y - y_ref`` exactly, for
    each output; where x equals its reference it is softmax's Jacobian. Opt-in (the default,
    `Rescale`, keeps the paper's and Captum's rule): ``xattr.deep_lift(f, mapping={F.softmax:
    xattr.rule.ExactSoftmax()})``. With `Product` (the default for ``@``), summation-to-delta
    holds through attention written by hand. ``eps``: below it a difference is a tie, and the
    derivative is used. At ``log_softmax`` (``y = x - logsumexp(x)``) the backward is ``g - w *
    sum(g, dim)``, and at ``logsumexp`` (over a dim or a tuple of dims, ``keepdim`` or not) ``w *
    g``: exact, and DeepLift's default at both (NOTE: [DeepLift through log_softmax], [DeepLift
    through logsumexp]).

    Example:
      >>> mapping = {**xattr.rule.deep_lift_rules(), F.softmax: xattr.rule.ExactSoftmax()}
      >>> attr, delta = xattr.deep_lift(xattr.target(model, 1), mapping=mapping, return_delta=True)(x)
    """

    kinds = frozenset({"softmax", "log_softmax", "logsumexp"})
    shares_reference = True

    def __init__(self, eps: float = 1e-10):
        self.eps = checked_eps(eps, "ExactSoftmax")

    def forward(self, op, x):
        if op.kind == "logsumexp":
            return self._logsumexp(op, x)
        y = op.fn(x)
        log = op.kind == "log_softmax"
        rows = rows_dim(x)  # NOTE: [Rows in dim 0 or dim 1]
        dim = op.options["dim"] % max(x.ndim, 1)
        if rows is None or x.ndim == 0 or dim == rows:  # not paired, or a softmax across examples
            return y, (y.exp() if log else y.clone(),)
        xc = x if y.dtype == x.dtype else x.to(y.dtype)  # softmax(..., dtype=)
        if rows == 1:  # sequence-first: the dim-0 terms on the transposed views
            swapped = ({0: 1, 1: 0}.get(dim, dim),)
            terms = _terms(xc.transpose(0, 1), y.transpose(0, 1), swapped, floored(self.eps, y.dtype), log)
            return y, tuple(_on_rows(t).transpose(0, 1) for t in terms)
        return y, tuple(_on_rows(t) for t in _terms(xc, y, (dim,), floored(self.eps, y.dtype), log))

    def _logsumexp(self, op, x):
        """y and w (NOTE: [DeepLift through logsumexp]); outside paired rows, or over the rows'
        own dim, softmax(x) over the dims: the ordinary gradient."""
        y = op.fn(x)
        dims = _dims(op, x.ndim)
        rows = rows_dim(x)  # NOTE: [Rows in dim 0 or dim 1]
        if rows is None or x.ndim == 0 or rows in dims:  # not paired, or a logsumexp across examples
            return y, ((x - (y if op.options["keepdim"] else _kept(y, dims))).exp(),)
        eps = floored(self.eps, y.dtype)
        if rows == 1:  # sequence-first: w on the transposed view
            (w,) = _terms(x.transpose(0, 1), None, tuple({0: 1, 1: 0}.get(d, d) for d in dims), eps, log=True)
            return y, (_on_rows(w).transpose(0, 1),)
        (w,) = _terms(x, None, dims, eps, log=True)
        return y, (_on_rows(w),)

    def backward(self, op, saved: Saved, grad):
        if op.kind == "logsumexp":  # w, or softmax over the dims (the ordinary gradient), times g
            w = saved.extras[0]  # g put back over the reduced dims first
            return (w * (grad if op.options["keepdim"] else _kept(grad, _dims(op, w.ndim))),)
        dim = op.options["dim"]
        if op.kind == "log_softmax":  # w: the secants of logsumexp, or softmax (the ordinary gradient)
            return (grad - saved.extras[0] * grad.sum(dim, keepdim=True),)
        if len(saved.extras) == 1:  # the ordinary gradient
            (y,) = saved.extras
            return (y * (grad - (grad * y).sum(dim, keepdim=True)),)
        m, w = saved.extras
        u = grad * m
        return (u - w * u.sum(dim, keepdim=True),)


def _dims(op, ndim: int) -> tuple:
    """A logsumexp's reduced dims, nonnegative and sorted (none for a 0-d input, which torch takes
    with dim 0 or -1)."""
    return tuple(sorted({d % ndim for d in op.options["dim"]})) if ndim else ()


def _kept(t: torch.Tensor, dims: tuple) -> torch.Tensor:
    """t, reduced over ``dims`` (sorted) without keepdim, with those dims back as size 1."""
    for d in dims:
        t = t.unsqueeze(d)
    return t
