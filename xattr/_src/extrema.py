"""Maxima and minima along dims (``x.max(dim)``, ``torch.amax``, ``x.max()``...): kind ``"max"``.

NOTE: [Max along a dim]
``x.max(dim)``, ``torch.max(x, dim, keepdim)``, ``torch.amax(x, dims, keepdim)``, ``x.max()`` and
their min forms on a float tensor are kind ``"max"``, with options ``dims`` (sorted, non-negative;
every dim for ``x.max()`` and ``amax(x, ())``), ``keepdim``, ``sign`` (1 for a max, -1 for a min)
and ``return_indices`` (``torch.max``/``min`` with a dim return values and indices). The op is a
max-pool whose window is the reduced dims, so DeepLift's max-pool rule applies to it (`Rescale`:
deeplift_max.py, each output's change split between the example's argmax and the reference's,
NOTE: [Max-pool multipliers per output]), and a min is ``-max(-x)``. Where the reduced dims hold
the paired rows (``x.max()`` of a batch, a max over dim 0) the op compares examples with each
other, not each with its reference, and keeps its ordinary gradient. The values and indices
returned are torch's own. No other built-in rule claims the kind: LRP and guided backprop keep
the ordinary gradient there as before (the winner takes all; ``amax`` and ``x.max()`` share a
tie evenly). The two-tensor forms (``torch.max(a, b)``) stay kind ``"clamp"`` (`ops._extremum`):
``torch.max`` and ``torch.min`` parse into either kind (``ops.PARSES``).
"""

from __future__ import annotations

import operator

import torch

TWO_KINDS = (torch.max, torch.Tensor.max, torch.min, torch.Tensor.min)  # "clamp" or "max"


def _along(op_type, sign: int, indices: bool, two_tensors=None):
    """A parser for a max (``sign`` 1) or min (-1) along dims; ``indices``: the function returns
    indices when given a dim (``torch.max``); ``two_tensors``: the parser of the function's
    two-tensor form."""
    reduce = torch.amax if sign > 0 else torch.amin

    def parse(func, input, *args, out=None, **named):
        if two_tensors is not None and ("other" in named or (args and isinstance(args[0], torch.Tensor))):
            return two_tensors(func, input, *args, out=out, **named)
        if out is not None or len(args) > 2 or not isinstance(input, torch.Tensor) or not input.is_floating_point():
            return None
        given = dict(zip(("dim", "keepdim"), args))
        if set(named) - {"dim", "keepdim"} or set(named) & set(given) or not input.ndim:
            return None  # torch's own error follows where the call is wrong
        given.update(named)
        dim, n = given.get("dim"), input.ndim
        if indices and isinstance(dim, (tuple, list)):  # torch.max takes one dim: torch's own error follows
            return None
        try:  # an int (a numpy one too), a sequence of them, or None
            dims = () if dim is None else tuple(map(operator.index, dim if isinstance(dim, (tuple, list)) else (dim,)))
        except TypeError:  # a dim name: not parsed
            return None
        if not all(-n <= d < n for d in dims) or len({d % n for d in dims}) != len(dims):
            return None
        dims = tuple(sorted(d % n for d in dims)) or tuple(range(n))
        keepdim = bool(given.get("keepdim", False))
        options = dict(dims=dims, keepdim=keepdim, sign=sign, return_indices=indices and dim is not None, nd=1)
        return op_type("max", lambda x: reduce(x, dims, keepdim), (input,), options, func, False)

    return parse


def spellings(op_type, extremum) -> list:
    """``(function, kind, parser)`` of every spelling (``extremum``: ops' two-tensor parser)."""
    out = [(f, "max", _along(op_type, 1, False)) for f in (torch.amax, torch.Tensor.amax)]
    out += [(f, "max", _along(op_type, -1, False)) for f in (torch.amin, torch.Tensor.amin)]
    out += [(f, "clamp", _along(op_type, 1, True, extremum("min"))) for f in (torch.max, torch.Tensor.max)]
    out += [(f, "clamp", _along(op_type, -1, True, extremum("max"))) for f in (torch.min, torch.Tensor.min)]
    return out


def with_indices(op, values: torch.Tensor, x: torch.Tensor):
    """What a ``"max"`` call with ``return_indices`` returns: torch's named tuple of the values
    and torch's own indices."""
    o = op.options
    pair = (torch.max if o["sign"] > 0 else torch.min)(x, o["dims"][0], o["keepdim"])
    return type(pair)((values, pair.indices))


def keepdim_shape(op, shape) -> tuple:
    """The output's shape with the reduced dims kept (size 1)."""
    return tuple(1 if i in op.options["dims"] else s for i, s in enumerate(shape))
