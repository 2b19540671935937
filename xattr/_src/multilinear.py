"""DeepLift at ops that are multilinear in several activations: ``torch.einsum`` of three
operands or more and ``torch.cumprod`` (NOTE: [Einsum of two activations] in two_inputs.py).
`Product` hands these ops here.

NOTE: [DeepLift at a multilinear op]
Let ``y = f(u_1, ..., u_k)`` be linear in each of its k players (the operands computed from the
input, or the elements of a cumprod's input along its dim), and ``d_i = u_i - u_i_ref``. The
Shapley split of ``y - y_ref`` among the players, each moving from its reference to its value, is
exact, and for a multilinear f it has a closed form: written as ``f(u_ref + s * d)``, a polynomial
``sum_T c_T prod_{i in T} s_i`` over subsets T of players, each term is a unanimity game that the
Shapley value shares equally among T, so player i gets ``sum_{T ∋ i} c_T / |T|``; and that is
``integral_0^1 df/ds_i(t, ..., t) dt``, the path integral along the straight line from the
reference. So i's multiplier is ``m_i = integral_0^1 VJP_i(u_ref + t d) dt``, and its integrand is
a polynomial of degree k - 1 in t: Gauss-Legendre quadrature with ``ceil(k / 2)`` nodes
integrates it exactly, so the rule costs ``ceil(k / 2)`` VJPs of the op, each of which gives every
player's multiplier at once (the explicit Shapley sum would cost ``2^k - 1``). For k = 2 it is one
node at t = 1/2: `Product`'s VJP at the averages. There is no cap on the operands: an einsum of k
operands costs ``ceil(k / 2)`` VJPs. A cumprod's players are the L elements along its dim (each
output is the product of those before it), so it costs ``ceil(L / 2)`` VJPs, and is parsed only up
to L = 64 (`two_inputs.CUMPROD_MAX`; a longer one keeps its gradient).

The rows pair as for `Product` (NOTE: [DeepLift at a product]): each operand's rows dim found by
its einsum subscript (`two_inputs.einsum_rows`). Only operands that hold the rows and are players
move along the path; the others (fixed operands, an operand the same for every row) stay at their
values. A cumprod along the rows dim mixes examples with references: its ordinary gradient, as
outside paired rows (one node, at the operands themselves).
"""

from __future__ import annotations

import math

import torch

from .deeplift_products import _paired
from .paths import quadrature
from .row_layout import _ROWS, rows_dim
from .rule_base import pullback
from .two_inputs import einsum_rows


def _along(t: torch.Tensor, dim: int | None) -> tuple:
    """(reference, difference) of t's paired rows in ``dim``, on every row (NOTE: [DeepLift at a
    multilinear op]); (t, an empty tensor) where t does not move."""
    if dim is None:
        return t.clone(), t.new_empty(0)
    start = _paired(t, dim, lambda x, r: r.expand_as(x).clone(), None)
    return start, _paired(t, dim, lambda x, r: x - r, None)


def forward(op, tensors: tuple) -> tuple:
    """The op's output and, per tensor, its path's start and direction."""
    out = op.fn(*tensors)
    dim = rows_dim(out)  # NOTE: [Rows in dim 0 or dim 1]
    rows = _ROWS.get()[0]
    if op.kind == "cumprod":
        along = op.options["dim"] % out.ndim
        dims = (None if dim is None or dim == along else dim,)
    else:
        found = einsum_rows(op.options["equation"], tensors, dim, rows)
        dims = tuple(d if i in op.options["players"] else None for i, d in enumerate(found))
    return out, tuple(e for t, d in zip(tensors, dims) for e in _along(t, d))


def backward(op, extras: tuple, grad: torch.Tensor) -> tuple:
    """Each tensor's gradient: the op's VJP along the path from the reference, integrated by
    Gauss-Legendre with as many nodes as make it exact."""
    starts, steps = extras[0::2], extras[1::2]
    moving = [s.numel() > 0 for s in steps]
    if op.kind == "cumprod":
        degree = starts[0].shape[op.options["dim"]] - 1 if moving[0] else 0
    else:
        degree = sum(moving) - 1
    nodes, weights = quadrature("gausslegendre", max(1, math.ceil((degree + 1) / 2)))
    total = None
    for t, w in zip(nodes.tolist(), weights.tolist()):
        at = [s + t * d if m else s for s, d, m in zip(starts, steps, moving)]
        grads = pullback(op.fn, *at)[1](grad)
        total = [g * w for g in grads] if total is None else [acc + g * w for acc, g in zip(total, grads)]
    return tuple(total)
