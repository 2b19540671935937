"""Backward rules for guided backprop, deconvolution and DeepLift (Rescale), as `Rule`s.

NOTE: [Paired rows]
DeepLift compares each example with its reference. Like Captum, xattr runs both in one batch:
rows ``[x_1..x_B, r_1..r_B]``, so every intercepted op sees its input as two halves, and the
Rescale multiplier of an element is ``(y_i - y_ref_i) / (x_i - x_ref_i)`` with the same value on
both halves. ``deep_lift`` records the number of rows it feeds (`paired_rows`); an op whose input
has another number of rows in dim 0 (a parameter, a reshaped sequence layout) does not carry the
batch, so it keeps its ordinary derivative, and so does every op outside a `paired_rows` block
(``rules(model, deep_lift_rules())`` alone never pairs example i with example i + B/2). The rules propagate the gradient of each half from
that half's own cotangent; ``deep_lift`` seeds the input half only.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch.func import jvp

from . import ops
from .rules import Rule, Saved, pullback

_ROWS: contextvars.ContextVar = contextvars.ContextVar("xattr_paired_rows", default=None)


@contextlib.contextmanager
def paired_rows(rows: int):
    """Declares that ops of this many rows hold inputs then references (NOTE: [Paired rows])."""
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def _paired(x: torch.Tensor) -> bool:
    expected = _ROWS.get()
    return expected is not None and x.ndim > 0 and x.shape[0] == expected


def _halves(t: torch.Tensor):
    h = t.shape[0] // 2
    return t[:h], t[h:]


def derivative(op: ops.Op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ordinary derivative of an elementwise op at x (closed forms where cheap)."""
    if op.kind == "relu":
        return (x > 0).to(x.dtype)
    if op.kind == "sigmoid":
        return y * (1 - y)
    if op.kind == "tanh":
        return 1 - y * y
    return jvp(op.fn, (x,), (torch.ones_like(x),))[1]


class Guided(Rule):
    """Guided backpropagation at ReLU: only positive gradients pass, through active units.

    ``dx = max(g, 0) * [x > 0]`` (Springenberg et al. 2015).
    """

    kinds = frozenset({"relu"})

    def forward(self, op, x):
        y = op.fn(x)
        return y, (x > 0,)

    def backward(self, op, saved: Saved, grad):
        (active,) = saved.extras
        return (grad.clamp(min=0) * active,)


class Deconv(Rule):
    """Deconvolution at ReLU: the ReLU is applied to the gradient instead, ``dx = max(g, 0)``.

    Zeiler & Fergus 2014.
    """

    kinds = frozenset({"relu"})

    def backward(self, op, saved: Saved, grad):
        return (grad.clamp(min=0),)


class Rescale(Rule):
    """DeepLift's Rescale rule (Shrikumar et al. 2017) for elementwise ops, max-pooling and softmax.

    Elementwise y = phi(x): multiplier ``m = (y - y_ref) / (x - x_ref)``, or phi'(x) where
    ``|x - x_ref| < eps``; ``dx = g * m``. Max-pooling: each output's change ``y - y_ref`` is split
    into the part from x's maximum and the part from the reference's maximum, routed to the
    argmax positions of each, and divided by ``x - x_ref`` (so summation-to-delta holds through
    the pool). Softmax: the elementwise multipliers times g, minus their mean over the softmax
    dim (the paper's normalisation; per example, where Captum takes the mean over the whole
    doubled batch). Rows pair as in NOTE: [Paired rows].
    """

    kinds = ops.ELEMENTWISE | {"max_pool", "softmax"}

    def __init__(self, eps: float = 1e-10):
        self.eps = eps

    def keeps(self, op):
        return op.kind == "max_pool"

    def forward(self, op, x):
        y = op.fn(x)
        if op.kind == "max_pool":
            return y, ()
        paired = _paired(x)
        if paired:
            dx, dy = _delta(x), _delta(y)
            near = dx.abs() < self.eps
            ratio = dy / torch.where(near, torch.ones_like(dx), dx)
        if op.kind == "softmax":
            return y, ((ratio, near, y.clone()) if paired else (y.clone(),))
        if not paired:
            return y, (derivative(op, x, y),)
        return y, (torch.where(near, derivative(op, x, y), ratio),)

    def backward(self, op, saved: Saved, grad):
        if op.kind == "max_pool":
            return (self._max_pool(op, saved.inputs[0], grad),)
        if op.kind == "softmax":
            *paired, y = saved.extras
            dim = op.options["dim"]
            ordinary = y * (grad - (grad * y).sum(dim, keepdim=True))
            if not paired:
                return (ordinary,)
            ratio, near = paired
            u = torch.where(near, ordinary, grad * ratio)
            return (u - u.mean(dim, keepdim=True),)
        return (grad * saved.extras[0],)

    def _max_pool(self, op, x, grad):
        if not _paired(x):
            return pullback(op.fn, x)[1](grad)[0]
        x1, x2 = _halves(x)
        (y1, pull1), (y2, pull2) = pullback(op.fn, x1), pullback(op.fn, x2)
        top = torch.maximum(y1, y2)
        dx = x1 - x2
        near = dx.abs() < self.eps
        safe = torch.where(near, torch.ones_like(dx), dx)

        def multiplier(g, pull_own):
            routed = pull1(g * (top - y2))[0] + pull2(g * (y1 - top))[0]
            return torch.where(near, pull_own(g)[0], routed / safe)

        g1, g2 = _halves(grad)
        return torch.cat([multiplier(g1, pull1), multiplier(g2, pull2)])


def _delta(t: torch.Tensor) -> torch.Tensor:
    a, b = _halves(t)
    d = a - b
    return torch.cat([d, d])
