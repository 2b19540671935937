"""Linear layers under DeepLift's paired rows whose backward skips the reference rows when their
gradient is zero (`linear_rows`; rules.py routes unruled linear ops here).

NOTE: [Reference rows take no gradient]
DeepLift seeds only the input rows of its paired call (``reference_grads=False``: NOTE: [Paired
rows] in deeplift_rules.py), and every rule gives the reference rows zero multipliers or
multiplies their zero gradient, so in a model whose ops keep rows apart the gradient reaching the
reference rows is zero at every op. A linear layer's backward ``g @ W`` still runs on all of them:
half of each backward matrix product of the 2B rows computes zeros (the plain floor, one
forward+backward of the 2B rows, does the same). So an unruled linear op whose input holds the
call's rows in dim 0 runs as a Function whose backward looks at the gradient of the rows after the
input rows: where they are all zero (one reduction) it multiplies the input rows alone and writes
zeros for the rest; where any is not (a model that mixes rows, both halves seeded) it runs the
whole product, as before. The rows of ``F.linear`` are independent whatever dim 0 means, so
skipping a zero row's product is exact for any layout (the zeros it writes are what the product
gives; a weight holding inf or nan would have made them nan). The Function gives no gradient to
the weight and the bias, which are parameters or computed from parameters alone (a weight
computed from the input keeps the plain op), as the other rules' Functions give none; under
torch.func transforms and inside a derivative of the attributions (NOTE: [Derivatives of
rule-based attributions]) the plain op runs, and so it does on other devices than the CPU, where
reading the ``any()`` would synchronise the device at every linear layer (the product it saves
is not worth a stall there; not measured: no GPU in this session).

A table that no rule claims a linear op in parses none; in paired rows the mode parses them
(`parsers_with_linear`). Measured on all-MiniLM-L6-v2: NOTE: [Fast paths on MiniLM] in
deeplift_fused.py (the mm of the backward is half of the floor's, at the price of a Function and
one ``any()`` per linear op).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from . import ops
from .dependence import differentiated
from .rule_limits import RULED_VJP

_LINEAR = tuple(f for f, kind in ops.KIND_OF.items() if kind == "linear")  # F.linear, torch.addmm, Tensor.addmm
_WITH_LINEAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _InputRows(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward multiplies only the first ``n`` rows of the
    gradient where the others are all zero (NOTE: [Reference rows take no gradient])."""

    @staticmethod
    def forward(ctx, x, weight, bias, n: int):
        ctx.save_for_backward(weight)
        ctx.n = n
        out = F.linear(x, weight, bias)
        # a view (F.linear of some 3-d inputs) returned by a Function may not be written in place
        return out.clone() if out._is_view() else out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        n = ctx.n
        if grad is None:
            return None, None, None, None
        if bool(grad[n:].any()):  # rows mixed, or both halves seeded: the whole product
            return grad.matmul(weight), None, None, None
        out = grad.new_empty(grad.shape[:-1] + weight.shape[-1:])
        head, tail = out.split_with_sizes([n, out.shape[0] - n])
        torch.mm(grad[:n].reshape(-1, grad.shape[-1]), weight, out=head.view(-1, weight.shape[-1]))
        tail.zero_()
        return out, None, None, None


def linear_rows(op, rows: int, n: int):
    """The output of the linear op ``op`` (tensors x, weight, bias) through `_InputRows`, with
    ``n`` input rows of the call's ``rows``, or None where the plain op must run (NOTE: [Reference
    rows take no gradient])."""
    x, weight, bias = op.tensors
    if x.ndim < 2 or weight.ndim != 2 or x.shape[0] != rows or not x.requires_grad or x.device.type != "cpu":
        return None  # on a GPU the backward's any() would synchronise at every linear layer
    if (torch._C._functorch.maybe_current_level() is not None or RULED_VJP.get() is not None
            or differentiated(weight) or differentiated(bias)):
        return None
    with torch._C.DisableTorchFunction():
        return _InputRows.apply(x, weight, bias, n)


def parsers_with_linear(table) -> dict:
    """``table.parsers`` with the linear ops' parsers added (a table whose rules claim no linear
    op parses none), so that the mode sees them in paired rows; one dict per table."""
    found = _WITH_LINEAR.get(table)
    if found is None:
        found = dict(table.parsers)
        for f in _LINEAR:
            found.setdefault(f, ops.PARSERS[f])
        _WITH_LINEAR[table] = found
    return found
