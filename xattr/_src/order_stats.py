"""Order statistics along a dim (``torch.sort``, ``torch.topk``, ``torch.kthvalue``, ``torch.median``
with a dim, ``torch.msort``): kind ``"sort"``. DeepLift's rule: deeplift_sort.py.

NOTE: [Order statistics along a dim]
``torch.sort(x, dim, descending, stable=)``, ``torch.topk(x, k, dim, largest, sorted=True)``,
``torch.kthvalue(x, k, dim, keepdim)``, ``torch.median(x, dim, keepdim)``, ``torch.msort(x)`` and
their Tensor methods, on a float tensor of at least one dim, are kind ``"sort"``: each output slot
along ``dim`` is one order statistic of the input's values along it, whose ascending rank is fixed
by the call (``options["ranks"]``: n - 1 - s at slot s of a descending sort, n - 1 - s at topk's
largest, k - 1 for kthvalue, (n - 1) // 2 for torch's lower median), options ``dim`` (non-negative),
``ranks``, ``keepdim`` (False where the dim is dropped: kthvalue, median) and ``call`` (torch's own
function of the input, named tuple or tensor). The values and indices returned are torch's own,
bit for bit (`returned`). Not parsed, so keeping the ordinary gradient: ``topk(sorted=False)`` (its
slots hold ranks that differ between an example and its reference: no function of the input to
split), ``median()``/``x.median()`` without a dim (over every element, the paired rows included),
named dims, ``out=``, a non-float or 0-d input. A sort across the dim of the paired rows compares
examples with each other and keeps its ordinary gradient (deeplift_sort.py), as a max across them
does (NOTE: [Max along a dim] in extrema.py). No rule but `Rescale` claims the kind: LRP and
guided backprop keep the ordinary gradient (to torch's indices) as before.
"""

from __future__ import annotations

import operator

import torch

_KEEPS = ("sort", "topk", "msort")  # the functions whose output keeps the dim (one slot per rank)


def _index(d, n: int):
    try:
        d = operator.index(d)
    except TypeError:  # a dim name: not parsed
        return None
    return d % n if -n <= d < n else None


def _make(op_type, func, x, dim, ranks, keepdim: bool, call, name: str):
    options = dict(dim=dim, ranks=tuple(ranks), keepdim=keepdim, call=call, name=name, return_indices=name != "msort")
    fn = call if name == "msort" else (lambda t: call(t)[0])
    return op_type("sort", fn, (x,), options, func, False)


def _float(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim > 0


def _given(input, args: tuple, named: dict, out, names: tuple, also: tuple = ()):
    """The call's arguments by name (positional ones named by ``names``; keywords among ``names``
    and ``also``), or None where it is not parsed: ``out=``, a non-float or 0-d input, an
    argument given twice or not known."""
    if out is not None or len(args) > len(names) or not _float(input) or set(named) - set(names) - set(also):
        return None
    given = dict(zip(names, args))
    return None if set(given) & set(named) else {**given, **named}


def _sort(op_type):
    def parse(func, input, *args, out=None, **named):
        given = _given(input, args, named, out, ("dim", "descending"), ("stable",))
        if given is None:
            return None
        dim = _index(given.get("dim", -1), input.ndim)
        if dim is None:
            return None
        descending, stable = bool(given.get("descending", False)), given.get("stable", False)
        n = input.shape[dim]
        ranks = range(n - 1, -1, -1) if descending else range(n)

        def call(t):
            return torch.sort(t, dim=dim, descending=descending, stable=stable)

        return _make(op_type, func, input, dim, ranks, True, call, "sort")

    return parse


def _msort(op_type):
    def parse(func, input, *args, out=None, **named):
        if args or named or out is not None or not _float(input):
            return None
        return _make(op_type, func, input, 0, range(input.shape[0]), True, torch.msort, "msort")

    return parse


def _topk(op_type):
    def parse(func, input, *args, out=None, **named):
        given = _given(input, args, named, out, ("k", "dim", "largest", "sorted"))
        if given is None or "k" not in given:
            return None
        dim = _index(given.get("dim", -1), input.ndim)
        if dim is None or not given.get("sorted", True):
            return None
        try:
            k = operator.index(given["k"])
        except TypeError:
            return None
        n, largest = input.shape[dim], bool(given.get("largest", True))
        if not 0 <= k <= n:
            return None  # torch's own error follows
        ranks = range(n - 1, n - 1 - k, -1) if largest else range(k)

        def call(t):
            return torch.topk(t, k, dim=dim, largest=largest, sorted=True)

        return _make(op_type, func, input, dim, ranks, True, call, "topk")

    return parse


def _kthvalue(op_type):
    def parse(func, input, *args, out=None, **named):
        given = _given(input, args, named, out, ("k", "dim", "keepdim"))
        if given is None or "k" not in given:
            return None
        dim = _index(given.get("dim", -1), input.ndim)
        try:
            k = operator.index(given["k"])
        except TypeError:
            return None
        if dim is None or not 1 <= k <= input.shape[dim]:
            return None
        keepdim = bool(given.get("keepdim", False))

        def call(t):
            return torch.kthvalue(t, k, dim=dim, keepdim=keepdim)

        return _make(op_type, func, input, dim, (k - 1,), keepdim, call, "kthvalue")

    return parse


def _median(op_type):
    def parse(func, input, *args, out=None, **named):
        given = _given(input, args, named, out, ("dim", "keepdim"))
        if given is None or given.get("dim") is None:  # no dim: over every element, not parsed
            return None
        dim = _index(given["dim"], input.ndim)
        if dim is None:
            return None
        keepdim = bool(given.get("keepdim", False))

        def call(t):
            return torch.median(t, dim=dim, keepdim=keepdim)

        return _make(op_type, func, input, dim, ((input.shape[dim] - 1) // 2,), keepdim, call, "median")

    return parse


def spellings(op_type) -> list:
    """``(torch function, kind, parser)`` of every spelling (``op_type``: `ops.Op`)."""
    parsers = {"sort": _sort, "msort": _msort, "topk": _topk, "kthvalue": _kthvalue, "median": _median}
    return [(f, "sort", make(op_type)) for name, make in parsers.items()
            for f in (getattr(torch, name), getattr(torch.Tensor, name))]


def returned(op, values: torch.Tensor, x: torch.Tensor):
    """What the call returns: torch's named tuple of the ruled values and torch's own indices
    (``msort``: the values)."""
    if not op.options["return_indices"]:
        return values
    pair = op.options["call"](x)
    return type(pair)((values, pair.indices))
