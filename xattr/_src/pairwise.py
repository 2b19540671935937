"""Elementwise functions of two tensors that `rules` can intercept (atan2, logaddexp, logaddexp2,
xlogy, copysign, hypot, pow with tensors on both sides, and the maximum or minimum of two
activations): their kinds, spellings and parsers. ops.py adds them to its table; DeepLift's rule
for them: deeplift_pairs.py.

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
``torch.hypot`` (and ``hypot_``) is kind ``"hypot"`` on the same terms.

NOTE: [Maximum of two activations]
``torch.maximum(a, b)``, ``torch.minimum``, the two-tensor ``torch.max(a, b)``/``torch.min``, their
Tensor methods, ``torch.fmax``/``fmin`` and ``torch.clamp(a, min=b)`` (or ``max=b`` alone; also
``clamp_min``/``clamp_max`` and the in-place forms) with both a and b float tensors computed
from the input (`differentiated`) are kind ``"maximum"`` (a minimum too, as kind "max" holds the
min): ``op.fn`` is the function called, so the values are torch's own. One operand fixed (a
constant tensor, a parameter) is kind "clamp" as before (NOTE: [Clamp as an activation] in
ops.py), and ``fmax``/``fmin`` with one fixed operand are not parsed (they keep their gradient,
as before: a NaN operand is where they differ from a clamp). Like "tensor_pow" the kind has no
torch function of its own: a key of kind "clamp" (``torch.clamp``, ``torch.maximum``) stands for
it too where that key's rule accepts it (`STANDS_FOR`). DeepLift splits the change by the two
Shapley values (NOTE: [DeepLift at two inputs]): exact, with multipliers in [0, 1] (max is
monotone and 1-Lipschitz in each operand). Before, these calls kept their gradient, which
conserves where the reference is 0 alone (max is homogeneous of degree 1).
"""

from __future__ import annotations

from typing import Callable

import torch

from .dependence import differentiated

PAIRS = frozenset({"atan2", "logaddexp", "logaddexp2", "xlogy", "copysign", "hypot", "tensor_pow", "maximum"})
# a kind with no torch function of its own: the kind whose keys stand for it too (NOTEs above)
STANDS_FOR = {"pow": frozenset({"tensor_pow"}), "clamp": frozenset({"maximum"})}
_EXTREMA = {torch.maximum: torch.maximum, torch.Tensor.maximum: torch.maximum, torch.max: torch.maximum,
            torch.Tensor.max: torch.maximum, torch.minimum: torch.minimum, torch.Tensor.minimum: torch.minimum,
            torch.min: torch.minimum, torch.Tensor.min: torch.minimum, torch.fmax: torch.fmax,
            torch.Tensor.fmax: torch.fmax, torch.fmin: torch.fmin, torch.Tensor.fmin: torch.fmin}
FMAX = (torch.fmax, torch.Tensor.fmax, torch.fmin, torch.Tensor.fmin)  # kind "clamp" keys; parse into "maximum" alone
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


def extremum(make: Callable, func, a, b, inplace: bool = False, fn: Callable | None = None):
    """The kind ``"maximum"`` op of ``func(a, b)`` where a and b are float tensors both computed
    from the input, else None (NOTE: [Maximum of two activations]); ``fn``: the out-of-place
    function (default: ``func``'s own)."""
    if not (_is_float(a) and _is_float(b) and differentiated(a) and differentiated(b)):
        return None
    return make("maximum", fn or _EXTREMA[func], (a, b), {}, func, inplace)


def bounded(make: Callable, func, x, lo, hi, inplace: bool):
    """The kind ``"maximum"`` op of ``clamp(x, min=lo)`` or ``clamp(x, max=hi)`` whose one bound is
    computed from the input, as x is; else None (ops.py's clamp parser asks where a bound is not
    a fixed one: NOTE: [Clamp as an activation])."""
    if (lo is None) == (hi is None):
        return None
    bound, other = ("min", lo) if hi is None else ("max", hi)
    return extremum(make, func, x, other, inplace, lambda a, b: torch.clamp(a, **{bound: b}))


def _fmax(make: Callable):
    def parse(func, input=None, other=None, *rest, out=None, **named):
        if rest or named or out is not None:
            return None
        return extremum(make, func, input, other)

    return parse


def _parser(make: Callable, kind: str, fn: Callable, inplace: bool):
    def parse(func, input=None, other=None, *rest, out=None, **named):
        if rest or named or out is not None:
            return None
        return pair(make, kind, fn, func, input, other, inplace)

    return parse


def spellings(make: Callable) -> list:
    """``[(torch function, kind, parser)]`` (``tensor_pow``: pointwise.py's pow parsers)."""
    names = {"atan2": ("atan2", "arctan2"), "logaddexp": ("logaddexp",), "logaddexp2": ("logaddexp2",),
             "xlogy": ("xlogy",), "copysign": ("copysign",), "hypot": ("hypot",)}
    out = []
    for kind, spelled in names.items():
        fn = getattr(torch, kind)
        plain = [getattr(torch, n) for n in spelled] + [getattr(torch.Tensor, n) for n in spelled]
        plain += [getattr(torch.special, kind)] if hasattr(torch.special, kind) else []
        inplace = [f for n in spelled for f in (getattr(torch, n + "_", None), getattr(torch.Tensor, n + "_", None))]
        out += [(f, kind, _parser(make, kind, fn, False)) for f in plain]
        out += [(f, kind, _parser(make, kind, fn, True)) for f in inplace if f is not None]
    return out + [(f, "clamp", _fmax(make)) for f in FMAX]
