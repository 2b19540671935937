"""Parsers for divisions and ``torch.einsum`` of two activations or more (kinds "quotient" and
"einsum"), ``torch.cumprod`` (kind "cumprod"), and ``torch.div(c, x)`` with a number or a fixed
tensor c (kind "rdiv", pointwise.py); ops.py adds them to its table, beside the products and
matrix products (NOTE: [Products of two activations] in ops.py).

NOTE: [Quotients of two activations]
``a / b`` (``torch.div``, ``torch.true_divide``, ``torch.divide``, their Tensor methods, ``/=``,
``div_``) with both a and b differentiated (`differentiated`: both computed from the attributed
input, as the centred input and its norm in ``F.normalize`` or a layer norm written by hand) is
kind ``"quotient"``: a function of two inputs, like a product. It is ``a * (1 / b)``, and DeepLift
composes its two exact steps (`Product` in deeplift_products.py, NOTE: [DeepLift at a product]):
the product rule on a and ``r = 1 / b`` at their averages over each example and its reference,
and Rescale at the reciprocal, whose secant has the closed form ``(1 / b - 1 / b_ref) / (b -
b_ref) = -1 / (b b_ref) = -r r_ref`` (no difference to divide by, so no tie to guard: where it is
not finite, a reference at a pole, it is the derivative ``-r ** 2``, as NOTE: [Rescale off the
domain] in pointwise.py). The op's output is ``torch.div``'s own. A quotient is not bilinear, so
`Product`'s ordinary VJP at averaged operands would not be exact: ``(a - a_ref) / avg(b)`` is not
the change. A divisor that is a number, a parameter or a tensor not computed from the input leaves
the op linear in a: not parsed, it keeps its gradient; so do a call with ``out=`` or
``rounding_mode=`` and non-float tensors. A numerator that is not computed from the input makes
the op a function of the divisor alone: ``c / x`` with a number c, and ``t / x`` with t a float
tensor (a constant, a parameter; ``torch.div(t, x)``, ``t.div(x)``) that broadcasts to x's shape,
are kind "rdiv" (`options["numerator"]`: c or t), ruled by Rescale like ``c / x`` (NOTE:
[Elementwise functions of one input] in pointwise.py). Before, ``t / x`` kept its gradient: off by
2.9 where |f(x) - f(0)| was 3.3 on a small float64 MLP. Under torch.func transforms t is the op's
second tensor (``options["bounds"]``, as a clamp's tensor bounds: NOTE: [Clamp as an activation]
in ops.py), which rules give no gradient. Not parsed: in place (``t /= x`` writes into t), or t
broadcasting the output beyond x's shape or changing its dtype.

NOTE: [Einsum of two activations]
``torch.einsum(equation, a, b)`` (also with the operands in a list) with exactly two operands,
both differentiated floats, is kind ``"einsum"``: bilinear like ``a @ b``, so `Product`'s rule
(the VJP at the averaged operands) is exact. `einsum_rows` finds each operand's dim that holds
the output's paired rows by its subscript letter (ellipses expanded, from the right, as einsum
broadcasts them; an implicit output is the once-seen letters in alphabetical order after the
ellipsis). Three operands or more, of which at least two are differentiated floats (the others
fixed: parameters, constants), are kind ``"einsum"`` too, with ``options["players"]`` the
differentiated ones' positions: multilinear in them, ruled by `Product` through NOTE: [DeepLift
at a multilinear op] in multilinear.py (before: the ordinary gradient, off by 10.5 where |f(x) -
f(0)| was 5.2 for ``einsum('bi,bi,bi->bi', a, b, c)`` on a small MLP). One operand, or two of
which one is fixed: linear, not parsed, the call keeps its gradient; so does the sublist format.
``torch.cumprod(x, dim)`` (``x.cumprod(dim)``, ``cumprod_``) of a differentiated float tensor is
kind ``"cumprod"`` (``options["dim"]``): each output a product of the elements before it, so
multilinear in x's elements, ruled the same way, where the dim is at most `CUMPROD_MAX` long (the
cost grows with it); a longer one, a ``dtype=`` or ``out=``: not parsed (before: off by 193 where
|f(x) - f(0)| was 42).
"""

from __future__ import annotations

import functools

import torch

from . import pairwise, pointwise
from .dependence import differentiated

# a function's other kinds: torch.div(c, x) is "rdiv", torch.pow(c, x) "rpow", torch.pow(a, b) with
# two tensors "tensor_pow" (ops.PARSES)
ALSO = {"quotient": frozenset({"rdiv"}), "pow": frozenset({"rpow"}) | pairwise.STANDS_FOR["pow"]}
CUMPROD_MAX = 64  # the longest dim a cumprod is parsed along (NOTE: [Einsum of two activations])


def both_differentiated(a, b) -> bool:
    """Whether a and b are float tensors both computed from the attributed input (`differentiated`)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.is_floating_point() and b.is_floating_point()):
        return False
    return differentiated(a) and differentiated(b)  # cheap checks first, then the graph walks


def _division(make, inplace: bool):
    """A parser for ``torch.div`` and its spellings (NOTE: [Quotients of two activations])."""

    def parse(func, input=None, other=None, *rest, out=None, rounding_mode=None, **named):
        if rest or named or out is not None or rounding_mode is not None:
            return None
        if pointwise._is_number(input) and pointwise._is_float(other) and not inplace:  # torch.div(c, x)
            return pointwise.number_side("rdiv", make, func, input, other)
        if not (pointwise._is_float(input) and pointwise._is_float(other)) or not differentiated(other):
            return None  # a fixed divisor: linear in the numerator
        if differentiated(input):
            return make("quotient", torch.div, (input, other), {}, func, inplace)
        return None if inplace else _fixed_numerator(make, func, input, other)

    return parse


def _fixed_numerator(make, func, t: torch.Tensor, x: torch.Tensor):
    """``t / x`` with t a float tensor not computed from the input: kind "rdiv" (NOTE:
    [Quotients of two activations]), or None where t would change the output's shape or dtype."""
    try:
        if torch.result_type(t, x) != x.dtype or torch.broadcast_shapes(t.shape, x.shape) != x.shape:
            return None
    except RuntimeError:  # shapes that do not broadcast: torch's own error follows
        return None
    if torch._C._functorch.maybe_current_level() is None:
        return make("rdiv", functools.partial(torch.div, t), (x,), {"numerator": t, "bounds": ()}, func, False)
    return make("rdiv", lambda x, t: torch.div(t, x), (x, t), {"numerator": None, "bounds": ("numerator",)}, func, False)


def _einsum(make):
    def parse(func, equation=None, *operands):
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        if not isinstance(equation, str) or len(operands) < 2:
            return None
        if len(operands) == 2:
            if not both_differentiated(*operands):
                return None
            return make("einsum", lambda a, b: torch.einsum(equation, a, b), tuple(operands), {"equation": equation}, func, False)
        if not all(pointwise._is_float(t) for t in operands):
            return None
        players = tuple(i for i, t in enumerate(operands) if differentiated(t))
        if len(players) < 2:
            return None  # linear in the one operand computed from the input
        options = {"equation": equation, "players": players}
        return make("einsum", lambda *ts: torch.einsum(equation, *ts), tuple(operands), options, func, False)

    return parse


def _cumprod(make, inplace: bool):
    def parse(func, input=None, dim=None, *rest, dtype=None, out=None, **named):
        if rest or named or dtype is not None or out is not None or not isinstance(dim, int) or isinstance(dim, bool):
            return None
        if not pointwise._is_float(input) or not input.ndim or input.shape[dim] > CUMPROD_MAX or not differentiated(input):
            return None
        return make("cumprod", functools.partial(torch.cumprod, dim=dim), (input,), {"dim": dim}, func, inplace)

    return parse


def _letters(equation: str, ndims: tuple) -> tuple:
    """The subscripts of each operand and of the output, one letter per dim, ellipses expanded
    (NOTE: [Einsum of two activations])."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    spans = [nd - (len(t) - 3) if "..." in t else 0 for t, nd in zip(terms, ndims)]
    n = max(spans, default=0)
    fill = "".join(chr(0x100 + i) for i in range(n))  # letters no equation uses

    def expand(term: str, k: int) -> str:
        return term.replace("...", fill[n - k :]) if "..." in term else term

    ins = [expand(t, k) for t, k in zip(terms, spans)]
    if arrow:
        out = expand(rhs, n)
    else:
        seen = "".join(t.replace("...", "") for t in terms)
        out = fill + "".join(sorted(c for c in set(seen) if seen.count(c) == 1))
    return ins, out


def einsum_rows(equation: str, operands: tuple, out_dim: int | None, rows: int) -> tuple:
    """The dim of each operand that holds the output's rows dim ``out_dim``, None where that
    operand does not hold them (it lacks the letter, has it twice, or is 1 wide there)."""
    if out_dim is None:
        return (None,) * len(operands)
    subs, so = _letters(equation, tuple(t.ndim for t in operands))
    letter = so[out_dim]

    def dim(s: str, t: torch.Tensor):
        if s.count(letter) != 1:
            return None
        d = s.index(letter)
        return d if t.shape[d] == rows else None

    return tuple(dim(s, t) for s, t in zip(subs, operands))


def einsum_dims(equation: str, a: torch.Tensor, b: torch.Tensor, out_dim: int | None, rows: int) -> tuple:
    """`einsum_rows` of two operands."""
    return einsum_rows(equation, (a, b), out_dim, rows)


def spellings(make) -> list:
    """``[(torch function, kind, parser)]``; ``make`` builds an `ops.Op`."""
    plain = (torch.div, torch.divide, torch.true_divide, torch.Tensor.div, torch.Tensor.divide, torch.Tensor.true_divide,
             torch.Tensor.__truediv__, torch.Tensor.__div__)
    inplace = (torch.Tensor.div_, torch.Tensor.divide_, torch.Tensor.true_divide_, torch.Tensor.__itruediv__,
               torch.Tensor.__idiv__)
    out = [(f, "quotient", _division(make, False)) for f in plain] + [(f, "quotient", _division(make, True)) for f in inplace]
    out += [(f, "cumprod", _cumprod(make, False)) for f in (torch.cumprod, torch.Tensor.cumprod)]
    return out + [(torch.Tensor.cumprod_, "cumprod", _cumprod(make, True)), (torch.einsum, "einsum", _einsum(make))]
