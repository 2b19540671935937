"""DeepLift's Rescale at a max or min along dims (kind ``"max"``: NOTE: [Max along a dim] in
extrema.py), as the max-pool rule on a view of the input.

The view moves the reduced dims last and flattens them into one: a 1-d max-pool's layout, whose
window is the whole last dim, so `Rescale`'s max-pool terms and backward apply unchanged (NOTE:
[Max-pool multipliers per output]); a min is the same rule on the negated view (the multipliers
are ratios of changes, which negation leaves alone). The paired rows (NOTE: [Paired rows]) sit
in dim 0 of the view, or dim 1 (then the rule runs on the transposed view, as at a max-pool of a
sequence-first tensor). Where the reduced dims hold the rows, or there are none, the ordinary
gradient: to the index torch returns for ``torch.max(x, dim)``, shared evenly among ties for
``amax`` and ``x.max()`` (as torch's own backwards).
"""

from __future__ import annotations

import torch

from .extrema import keepdim_shape


def forward(rule, op, x: torch.Tensor, dim: int | None, eps: float):
    """(output, extras) of `Rescale` at a kind ``"max"`` op; ``dim``: the rows' dim of x."""
    dims, sign = op.options["dims"], op.options["sign"]
    y = op.fn(x)
    like = x.new_zeros(()).expand(x.shape)  # x's shape, no storage
    if dim is None or dim in dims:  # not paired, or a max across the rows: the ordinary gradient
        if op.options["return_indices"]:
            indices = (torch.max if sign > 0 else torch.min)(x, dims[0], keepdim=True).indices
            return y, (indices, like)
        mask = torch.eq(x, y if op.options["keepdim"] else y.reshape(keepdim_shape(op, x.shape))).to(x.dtype)
        return y, (mask / mask.sum(dims, keepdim=True),)
    second = dim - sum(d < dim for d in dims)  # the rows' dim in the view: 0 or 1
    v = _view(op, x.neg() if sign < 0 else x, second)
    yv, indices = v.max(-1, keepdim=True)
    terms = rule._max_pool_terms(op, v, yv, indices, eps)
    flag = x.new_zeros(()).expand(second)  # (0,) or (1,): the rows' dim in the view
    return y, (like, flag, indices, v.new_zeros(()).expand(v.shape), *terms)


def backward(rule, op, extras: tuple, grad: torch.Tensor) -> torch.Tensor:
    dims = op.options["dims"]
    if len(extras) == 1:  # the ordinary gradient, ties shared
        return _kept(op, grad, extras[0].shape) * extras[0]
    if len(extras) == 2:  # the ordinary gradient, to torch's index
        indices, like = extras
        return grad.new_zeros(like.shape).scatter(dims[0], indices, _kept(op, grad, like.shape))
    like, flag, *pool = extras
    second = flag.shape[0]
    g = _view(op, _kept(op, grad, like.shape), second)  # a min's two negations cancel
    gv = rule._max_pool(op, pool, g)
    if second:
        gv = gv.transpose(0, 1)
    n = like.ndim
    sizes = [like.shape[d] for d in dims]
    return gv.unflatten(-1, sizes).movedim(tuple(range(n - len(dims), n)), dims)


def _kept(op, grad: torch.Tensor, shape) -> torch.Tensor:
    return grad if op.options["keepdim"] else grad.reshape(keepdim_shape(op, shape))


def _view(op, t: torch.Tensor, second: int) -> torch.Tensor:
    """t with the reduced dims last, flattened into one; rows in dim 0 (``second``: transposed)."""
    dims, n = op.options["dims"], t.ndim
    v = t.movedim(dims, tuple(range(n - len(dims), n))).flatten(n - len(dims))
    return v.transpose(0, 1) if second else v
