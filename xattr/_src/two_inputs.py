"""Parsers for divisions and ``torch.einsum`` of two activations (kinds "quotient" and "einsum"),
and for ``torch.div(c, x)`` with a number c (kind "rdiv", pointwise.py); ops.py adds them to its
table, beside the products and matrix products (NOTE: [Products of two activations] in ops.py).

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
the op linear in a: not parsed, it keeps its gradient; so does ``t / x`` with t such a tensor (a
number numerator is kind "rdiv"), a call with ``out=`` or ``rounding_mode=`` and non-float tensors.

NOTE: [Einsum of two activations]
``torch.einsum(equation, a, b)`` (also with the operands in a list, or in the sublist format) with
exactly two operands, both differentiated floats, is kind ``"einsum"``: bilinear like ``a @ b``,
so `Product`'s rule (the VJP at the averaged operands) is exact. `einsum_dims` finds each
operand's dim that holds the output's paired rows by its subscript letter (ellipses expanded,
from the right, as einsum broadcasts them; an implicit output is the once-seen letters in
alphabetical order after the ellipsis). One operand, three or more, or one that is a parameter or
a fixed tensor: not parsed (linear, or a product of more than two factors), so the call keeps its
gradient.
"""

from __future__ import annotations

import torch

from . import pointwise
from .dependence import differentiated

# a function's other kind: torch.div(c, x) is "rdiv", torch.pow(c, x) is "rpow" (ops.PARSES)
ALSO = {"quotient": frozenset({"rdiv"}), "pow": frozenset({"rpow"})}


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
        if not both_differentiated(input, other):
            return None
        return make("quotient", torch.div, (input, other), {}, func, inplace)

    return parse


def _einsum(make):
    def parse(func, equation=None, *operands):
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        if not isinstance(equation, str) or len(operands) != 2 or not both_differentiated(*operands):
            return None
        return make("einsum", lambda a, b: torch.einsum(equation, a, b), tuple(operands), {"equation": equation}, func, False)

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


def einsum_dims(equation: str, a: torch.Tensor, b: torch.Tensor, out_dim: int | None, rows: int) -> tuple:
    """The dim of a and of b that holds the output's rows dim ``out_dim``, each None where that
    operand does not hold them (it lacks the letter, has it twice, or is 1 wide there)."""
    if out_dim is None:
        return None, None
    (sa, sb), so = _letters(equation, (a.ndim, b.ndim))
    letter = so[out_dim]

    def dim(subs: str, t: torch.Tensor):
        if subs.count(letter) != 1:
            return None
        d = subs.index(letter)
        return d if t.shape[d] == rows else None

    return dim(sa, a), dim(sb, b)


def spellings(make) -> list:
    """``[(torch function, kind, parser)]``; ``make`` builds an `ops.Op`."""
    plain = (torch.div, torch.divide, torch.true_divide, torch.Tensor.div, torch.Tensor.divide, torch.Tensor.true_divide,
             torch.Tensor.__truediv__, torch.Tensor.__div__)
    inplace = (torch.Tensor.div_, torch.Tensor.divide_, torch.Tensor.true_divide_, torch.Tensor.__itruediv__,
               torch.Tensor.__idiv__)
    out = [(f, "quotient", _division(make, False)) for f in plain] + [(f, "quotient", _division(make, True)) for f in inplace]
    return out + [(torch.einsum, "einsum", _einsum(make))]
