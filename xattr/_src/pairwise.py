"""Elementwise functions of two tensors that `rules` can intercept (atan2, logaddexp, logaddexp2,
xlogy, copysign, and pow with tensors on both sides): their kinds, spellings and parsers. ops.py
adds them to its table; DeepLift's rule for them: deeplift_pairs.py.

NOTE: [Elementwise functions of two inputs]
``torch.atan2(a, b)`` (also ``torch.arctan2``, the Tensor methods and ``atan2_``), ``torch.logaddexp``,
``torch.logaddexp2``, ``torch.xlogy`` (also ``torch.special.xlogy`` and ``xlogy_``) and
``torch.copysign`` (and ``copysign_``) are kinds of their own names; ``a ** b``, ``torch.pow(a, b)``,
``a.pow(b)``, ``a.pow_(b)`` and ``a **= b`` with tensors on both sides are kind ``"tensor_pow"``
(a number exponent is kind "pow", a number base "rpow": pointwise.py). Each is ``y = g(a, b)``,
elementwise with broadcasting, and is parsed where a and b are float tensors of which at least
one is computed from the attributed input (`differentiated`); the other may be fixed (a
parameter, a constant tensor), and xlogy and copysign take a number on either side (held as a
0-d tensor of the other's dtype). ``"tensor_pow"`` has no torch function of its own: a mapping's
key of kind "pow" (``torch.pow``, ``torch.square``...) stands for it too where that key's rule
accepts it (`STANDS_FOR`; rule_table.py), so ``{torch.pow: rule}`` covers ``x ** 2`` and ``a **
b`` alike, and a rule written for functions of one input (``kinds`` without "tensor_pow") never
sees two tensors. Not parsed, so keeping the ordinary gradient: neither side computed from the
input, a call with ``out=``, a non-float tensor, and ``fmod``/``remainder`` (piecewise, with a
jump wherever the quotient crosses an integer: the Shapley split would be exact there too, but
its multipliers are a jump over a difference, and such calls between two activations are rare).
``torch.maximum``/``minimum`` and ``torch.hypot`` of two activations are not parsed either; they
keep their gradient, which conserves where the reference is 0 (both are homogeneous of degree 1).
"""

from __future__ import annotations

from typing import Callable

import torch

from .dependence import differentiated

PAIRS = frozenset({"atan2", "logaddexp", "logaddexp2", "xlogy", "copysign", "tensor_pow"})
# a kind with no torch function of its own: the kind whose keys stand for it too (NOTE above)
STANDS_FOR = {"pow": frozenset({"tensor_pow"})}
_NUMBERS = frozenset({"xlogy", "copysign"})  # kinds that take a number on either side


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _is_number(c) -> bool:
    return isinstance(c, (int, float)) and not isinstance(c, bool)


def pair(make: Callable, kind: str, fn: Callable, func, a, b, inplace: bool):
    """The op ``fn(a, b)`` of kind ``kind``, or None where it is not one (NOTE: [Elementwise
    functions of two inputs]); ``make`` builds an `ops.Op`."""
    if kind in _NUMBERS and not inplace:
        if _is_number(a) and _is_float(b):
            a = torch.tensor(a, dtype=b.dtype, device=b.device)
        elif _is_number(b) and _is_float(a):
            b = torch.tensor(b, dtype=a.dtype, device=a.device)
    if not (_is_float(a) and _is_float(b)) or not (differentiated(a) or differentiated(b)):
        return None
    return make(kind, fn, (a, b), {}, func, inplace)


def _parser(make: Callable, kind: str, fn: Callable, inplace: bool):
    def parse(func, input=None, other=None, *rest, out=None, **named):
        if rest or named or out is not None:
            return None
        return pair(make, kind, fn, func, input, other, inplace)

    return parse


def spellings(make: Callable) -> list:
    """``[(torch function, kind, parser)]`` (``tensor_pow``: pointwise.py's pow parsers)."""
    names = {"atan2": ("atan2", "arctan2"), "logaddexp": ("logaddexp",), "logaddexp2": ("logaddexp2",),
             "xlogy": ("xlogy",), "copysign": ("copysign",)}
    out = []
    for kind, spelled in names.items():
        fn = getattr(torch, kind)
        plain = [getattr(torch, n) for n in spelled] + [getattr(torch.Tensor, n) for n in spelled]
        plain += [getattr(torch.special, kind)] if hasattr(torch.special, kind) else []
        inplace = [f for n in spelled for f in (getattr(torch, n + "_", None), getattr(torch.Tensor, n + "_", None))]
        out += [(f, kind, _parser(make, kind, fn, False)) for f in plain]
        out += [(f, kind, _parser(make, kind, fn, True)) for f in inplace if f is not None]
    return out
