"""LRP rules for the layer that reads the input: w^2, flat and z-box (Montavon et al. 2017).

They return the input's relevance itself rather than a modified gradient, so `lrp` routes the
op to a copy of the attributed input (NOTE: [Input-layer relevance] in lrp_methods.py); the
other rules and the gradient form are in lrp_rules.py (NOTE: [LRP in gradient form]).
"""

from __future__ import annotations

import contextvars

import torch

from . import ops
from .deeplift_rules import checked_eps
from .input_copies import INPUT_COPIES, read_in_place_of
from .lrp_math import stabilize, transpose, transposes
from .rule_base import Rule, Saved

# set by layer_lrp: an input-layer rule whose input depends on the layer's activation is an error
ABOVE_SPLIT: contextvars.ContextVar = contextvars.ContextVar("xattr_layer_lrp", default=False)


class _InputLayer(Rule):
    """Rules for the layer reading the input: they return the input's relevance itself."""

    kinds = frozenset({"linear", "conv"})
    keep_inputs = True
    input_layer = True

    def __init__(self, eps: float = 1e-9):
        self.eps = checked_eps(eps, type(self).__name__)

    def _reroute(self, op):
        """Inside `lrp`: the op reading the copy of the attributed input it reads, so that the
        relevance this rule returns reaches that copy alone (NOTE: [Input-layer relevance])."""
        copies = INPUT_COPIES.get()
        if copies is None:  # rules(f, ...) outside lrp: the signal is the caller's to read
            return op
        copy = _copy_of(copies, op.tensors[0])
        if copy is None:
            raise ValueError(
                f"lrp: the input-layer rule {type(self).__name__} is on a {op.kind} layer whose input is not an "
                "attributed input (args[argnums], or data moved from one: a view such as nn.Flatten's, a reshape, "
                "permute, cat, indexing): it returns relevance, which the layers below it would treat as a "
                "gradient. Put it on the layer that reads the input (by module name or instance), or use "
                "Epsilon/Gamma there"
            )
        return ops.Op(op.kind, op.fn, (copy,) + tuple(op.tensors[1:]), op.options, op.func, op.inplace)

    def forward(self, op, x, w, b):
        if ABOVE_SPLIT.get() and x.requires_grad:
            raise ValueError(
                f"layer_lrp: the input-layer rule {type(self).__name__} sits above the layer, so it would hand "
                "relevance (not a gradient) to it; split at or above the layer that reads the input, or use "
                "xattr.lrp for the input's relevance"
            )
        z = op.fn(x, w, b)
        return z, (z.clone(),)


def _copy_of(copies: dict, x: torch.Tensor):
    """What the op reads in place of x: the copy of x where x is an attributed input or data
    moved from one (``x.flatten(1)``, ``torch.cat``: `input_copies.moved` records these), x itself where
    it is (moved from) an argument of the call that is not attributed, else None."""
    read = read_in_place_of(copies, x)
    if read is not None:
        return read
    base = x._base  # a view made where the rules mode does not see it (it shares base's version)
    read = None if base is None else read_in_place_of(copies, base)
    return None if read is None else x._view_func(read)


class WSquare(_InputLayer):
    """LRP-w^2: ``R_i = sum_j w_ij^2 / sum_i w_ij^2 R_j``, independent of x (Montavon et al. 2017).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), model.conv1: xattr.rule.WSquare()}   # the first layer only
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    def backward(self, op, saved: Saved, grad):
        x, w, b = saved.inputs
        (z,) = saved.extras
        ones = torch.ones_like(x)
        w2 = w * w
        denom = op.fn(ones, w2, torch.zeros_like(b))
        return (transpose(op, x, w2, None, z * grad / stabilize(denom, self.eps)), None, None)


class Flat(_InputLayer):
    """LRP-flat: relevance spread uniformly over each output's receptive field (w replaced by 1).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), model.conv1: xattr.rule.Flat()}   # the first layer only
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    def backward(self, op, saved: Saved, grad):
        x, w, b = saved.inputs
        (z,) = saved.extras
        ones_w, ones = torch.ones_like(w), torch.ones_like(x)
        denom = op.fn(ones, ones_w, torch.zeros_like(b))
        return (transpose(op, x, ones_w, None, z * grad / stabilize(denom, self.eps)), None, None)


class ZBox(_InputLayer):
    """LRP-z^B for inputs bounded by ``low <= x <= high`` (pixels): deep Taylor with box constraints.

    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / (z_j - l.w+_j - h.w-_j) R_j``
    (Montavon et al. 2017). ``low``/``high``: numbers or tensors broadcastable to one input.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), model.conv1: xattr.rule.ZBox(0.0, 1.0)}   # pixels in [0, 1]
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    def __init__(self, low, high, eps: float = 1e-9):
        super().__init__(eps)
        self.low, self.high = low, high

    def backward(self, op, saved: Saved, grad):
        x, w, b = saved.inputs
        (z,) = saved.extras
        low, high = _bound(self.low, x), _bound(self.high, x)  # NOTE: [z-box per layer] in lrp_math.py
        wp, wn, zero = w.clamp(min=0), w.clamp(max=0), torch.zeros_like(b)
        denom = op.fn(x, w, zero) - op.fn(low, wp, zero) - op.fn(high, wn, zero)
        s = z * grad / stabilize(denom, self.eps)
        t, tp, tn = transposes(op, x, (w, wp, wn), s)
        return (x * t - low * tp - high * tn, None, None)


def _bound(value, x: torch.Tensor) -> torch.Tensor:
    """A bound of `ZBox` as a tensor like x, of one row where it is the same for every row
    (NOTE: [z-box per layer] in lrp_math.py)."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if x.ndim and (t.ndim < x.ndim or t.shape[0] == 1):
        return t.expand((1,) + tuple(x.shape[1:]))
    return t.expand_as(x)
