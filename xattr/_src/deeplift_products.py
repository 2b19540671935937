"""DeepLift's rule for products of two activations (NOTE: [Products of two activations] in ops.py).

NOTE: [DeepLift at a product]
For ``z = a * b`` with both factors computed from the input, and ``z_ref = a_ref * b_ref``,

    z - z_ref = (b + b_ref) / 2 * (a - a_ref) + (a + a_ref) / 2 * (b - b_ref)

exactly (expand the right side: the cross terms cancel). So the multipliers ``m_a = (b + b_ref) / 2``
and ``m_b = (a + a_ref) / 2`` (each summed to its factor's shape where that factor broadcasts, as
a squeeze-and-excitation gate (B, C, 1, 1) does over its feature map (B, C, H, W)) conserve the
change through the product, and are the ordinary derivatives ``b`` and ``a`` where the reference
equals the input. It is the symmetric choice (Shapley values of the two factors as players),
without a division, so it has no tie to guard against. The ordinary gradient instead passes
``g * b`` and ``g * a``, evaluated at the input alone: on MobileNetV3-small, EfficientNet-B0 and
RegNetY-400MF (float64, calibrated batch norms) the delta was 0.7 to 3.7 times ``|f(x) - f(0)|``.
A matrix product is bilinear too: ``A B - A_ref B_ref = (A - A_ref) avg(B) + avg(A) (B - B_ref)``
(the order of the factors kept), so the same holds for ``q @ k.transpose(-2, -1)`` and ``attn @
v``. In both cases the rule is the op's ordinary VJP evaluated at the averaged factors.

The rows pair as for `Rescale` (NOTE: [Paired rows], [Shared reference] in deeplift_rules.py): the
output's rows are found by size in dim 0 or dim 1 (NOTE: [Rows in dim 0 or dim 1]), and each
factor's own dim aligned with it (by broadcasting, from the right). A factor of size 1 there, or
without that dim (one tensor for every row), is the same at the input and the reference, so it is
its own average. Outside paired rows the multipliers are ``b`` and ``a``: the ordinary gradient.
The reference rows take the same multipliers as their inputs where both halves are seeded, zeros
otherwise (deep_lift seeds the input half only).
"""

from __future__ import annotations

import torch

from .deeplift_rules import _flat, _halves, _on_rows
from .row_layout import _ROWS, rows_dim
from .rule_base import Rule, Saved, pullback
from .two_inputs import einsum_dims


def _paired(t: torch.Tensor, dim: int | None, of_pair, unpaired) -> torch.Tensor:
    """``of_pair(input rows, reference rows)`` of t's rows in ``dim``, on every row (repeated for
    reference rows that are seeded, zeros for those that are not), in t's shape; ``unpaired(t)``
    where t holds no rows (``dim`` None)."""
    if dim is None:
        return unpaired(t)
    first = t.movedim(dim, 0) if dim else t
    m = _on_rows(_flat(of_pair(*_halves(first)), first))
    return m.movedim(0, dim) if dim else m


def _averaged(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """t averaged over each pair of rows (an input row and its reference), in t's shape; t itself
    (a copy) where it holds no rows (``dim`` None)."""
    return _paired(t, dim, lambda x, r: (x + r).mul_(0.5), torch.clone)


def _reciprocal_secant(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``(1 / b - 1 / b_ref) / (b - b_ref) = -r r_ref`` of reciprocals x = 1 / b and r = 1 / b_ref,
    or the derivative ``-x ** 2`` where that is not finite (NOTE: [Quotients of two activations]
    in two_inputs.py)."""
    m = x * r
    return torch.where(torch.isfinite(m), m, x * x).neg_()


def _rows_of(shape, out_dim: int | None, out_ndim: int, rows: int) -> int | None:
    """The dim of a factor of this shape aligned (by broadcasting) with the output's rows dim, or
    None where the factor does not hold the rows there."""
    if out_dim is None:
        return None
    dim = out_dim - (out_ndim - len(shape))
    return dim if dim >= 0 and shape[dim] == rows else None


def _matmul_rows(a: torch.Tensor, b: torch.Tensor, out_dim: int | None, out_ndim: int, rows: int) -> tuple:
    """`_rows_of` for ``a @ b``: a batch dim of the output aligns with the operands' batch dims
    (from the right, before their matrix dims), its row dim with a's rows, its column dim with
    b's columns; a 1-d operand holds no rows."""
    if out_dim is None:
        return None, None
    batch = out_ndim - (a.ndim >= 2) - (b.ndim >= 2)  # the output's batch dims
    if out_dim >= batch:  # a matrix dim: a's rows, or b's columns
        if a.ndim >= 2 and out_dim == batch:
            return (a.ndim - 2 if a.shape[-2] == rows else None), None
        return None, (b.ndim - 1 if b.shape[-1] == rows else None)
    return tuple(None if t.ndim < 3 else _rows_of(t.shape[:-2], out_dim, batch, rows) for t in (a, b))


class Product(Rule):
    """DeepLift at a product of two activations: the op's VJP at the averages of its factors.

    For ``z = a * b`` (``torch.mul``, ``*``, ``mul_``: kind ``"product"``) and ``z = a @ b``
    (``torch.matmul``, ``@``, ``torch.bmm``: kind ``"matmul"``), both factors computed from the
    input, ``z - z_ref = (a - a_ref) o avg(b) + avg(a) o (b - b_ref)`` exactly, with ``avg(t) = (t +
    t_ref) / 2`` over each example and its reference and ``o`` the product; so the multipliers are
    the ordinary VJP's, evaluated at ``(avg(a), avg(b))`` instead of ``(a, b)``, and
    summation-to-delta holds through squeeze-and-excitation gates, GLU, SwiGLU, ``x *
    torch.sigmoid(x)`` written out, and the bilinear steps of attention written by hand (NOTE:
    [DeepLift at a product] in deeplift_products.py); so is ``torch.einsum`` of two such operands
    (kind ``"einsum"``). At ``a / b`` (kind ``"quotient"``) it is the product rule on a and ``1 /
    b`` with Rescale's secant at the reciprocal, ``-1 / (b b_ref)`` (NOTE: [Quotients of two
    activations] in two_inputs.py). ``torch.einsum`` of three operands or more (two of them at
    least computed from the input) and ``torch.cumprod`` are multilinear in their players: each
    player's multiplier is the op's VJP integrated along the straight path from the reference,
    exactly, by Gauss-Legendre with ``ceil(k / 2)`` nodes for k players: their Shapley split
    (NOTE: [DeepLift at a multilinear op] in multilinear.py). The gradient where the reference
    equals the input. `deep_lift_rules` maps ``torch.mul``, ``torch.matmul``, ``torch.einsum``,
    ``torch.div`` and ``torch.cumprod`` to it.

    Example:
      >>> mapping = {**xattr.rule.deep_lift_rules(), torch.mul: xattr.rule.Product()}
      >>> attr, delta = xattr.deep_lift(xattr.target(model, 1), mapping=mapping, return_delta=True)(x)
    """

    kinds = frozenset({"product", "matmul", "einsum", "quotient", "cumprod"})
    shares_reference = True

    def forward(self, op, *tensors):
        if op.kind == "cumprod" or "players" in op.options:  # NOTE: [DeepLift at a multilinear op]
            from . import multilinear  # it imports this module's helpers

            return multilinear.forward(op, tensors)
        a, b = tensors
        out = op.fn(a, b)
        rows = _ROWS.get()[0]
        dim = rows_dim(out)  # NOTE: [Rows in dim 0 or dim 1]
        if op.kind == "matmul":
            dims = _matmul_rows(a, b, dim, out.ndim, rows)
        elif op.kind == "einsum":
            dims = einsum_dims(op.options["equation"], a, b, dim, rows)
        else:
            dims = _rows_of(a.shape, dim, out.ndim, rows), _rows_of(b.shape, dim, out.ndim, rows)
        if op.kind == "quotient":  # a * r, r = 1 / b: NOTE: [Quotients of two activations] in two_inputs.py
            r = b.reciprocal()
            return out, (_averaged(a, dims[0]), _averaged(r, dims[1]), _paired(r, dims[1], _reciprocal_secant, lambda t: -t * t))
        return out, (_averaged(a, dims[0]), _averaged(b, dims[1]))

    def backward(self, op, saved: Saved, grad):
        if op.kind == "cumprod" or "players" in op.options:
            from . import multilinear

            return multilinear.backward(op, saved.extras, grad)
        a, b = saved.extras[:2]  # the averages (of a and 1 / b at a quotient)
        if op.kind == "product":
            return (grad * b).sum_to_size(a.shape), (grad * a).sum_to_size(b.shape)
        if op.kind == "quotient":
            return (grad * b).sum_to_size(a.shape), (grad * a).sum_to_size(b.shape) * saved.extras[2]
        if op.kind == "matmul" and a.ndim >= 2 and b.ndim >= 2:
            return (grad @ b.mT).sum_to_size(a.shape), (a.mT @ grad).sum_to_size(b.shape)
        return tuple(pullback(op.fn, a, b)[1](grad))
