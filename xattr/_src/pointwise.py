"""Elementwise functions of one tensor that `rules` can intercept (exp, log, sqrt, abs, pow...):
their kinds, spellings, parsers and closed-form derivatives. ops.py adds them to its table.

NOTE: [Elementwise functions of one input]
``torch.exp(x)``, ``x.exp()``, ``x.exp_()``, ``torch.exp_(x)`` and, where torch has one, the
``torch.special`` alias are kind ``"exp"``; likewise exp2, expm1, log, log2, log10, log1p, sqrt,
rsqrt, reciprocal, abs (also ``abs(x)``, ``torch.absolute``), sin, cos, erf, erfc, atan, sinh,
cosh and asinh. ``x ** p``, ``torch.pow(x, p)``, ``x.pow(p)``, ``x.pow_(p)``, ``x **= p`` with
p a number (int or float, fractional or negative too) and ``torch.square(x)`` (p = 2) are kind
``"pow"``, with ``options["exponent"]``. With the number on the other side, ``c / x`` (also
``torch.div(c, x)``, ``torch.true_divide``, ``torch.divide``) is kind ``"rdiv"`` with
``options["numerator"]``, and ``c ** x`` (``torch.pow(c, x)``) kind ``"rpow"`` with
``options["base"]``: torch's own names for them, ``Tensor.__rdiv__`` and ``Tensor.__rpow__``,
are their keys. Each is ``y = phi(x)``, so the elementwise rules apply: DeepLift's Rescale (NOTE:
[Rescale off the domain]) and LRP's `Pass` (NOTE: [Elementwise functions pass relevance],
below). Not parsed, so keeping the ordinary
gradient: a call with ``out=`` or ``rounding_mode=``, and a call on a tensor that is not floating
point. A pow with tensors on both sides is kind ``"tensor_pow"`` (NOTE: [Elementwise functions of
two inputs] in pairwise.py); ``t / x`` with t a float tensor not computed from the input is kind
``"rdiv"`` too, with that tensor as ``options["numerator"]`` (NOTE: [Quotients of two
activations] in two_inputs.py).

NOTE: [Elementwise functions pass relevance]
In LRP's gradient form (NOTE: [LRP in gradient form] in lrp_rules.py) ``y = phi(x)`` with its
ordinary derivative hands back ``R_x = x phi'(x) g_y`` where ``R_y = phi(x) g_y``: equal only
where phi is homogeneous of degree 1 (ReLU, abs); elsewhere relevance is scaled by ``x phi'(x) /
phi(x)``: by p at ``x ** p`` (Persimmon's squared ReLU doubled it), by -1 at ``c / x``, by x at
exp. So `lrp_rules` maps every kind here to `Pass` (``R_x = R_y``), as it maps tanh and GELU: the
usual LRP treatment of a neuron's activation function (Montavon et al. 2019). On a bias-free
float64 MLP with one such function between two linear layers, ``sum(R)`` missed ``f(x)`` by 1.0
(squared ReLU), 2.0 (``x ** 3``, ``1 / x``), 0.5 (sqrt), 0.64 (exp), 6.8 (cos) times it, and
meets it to 1e-10 with `Pass` (tests/test_lrp_pointwise.py; bias-free Persimmon 0.24 -> 1e-11).
Powers whose degrees multiply to 1 along a path (``sqrt(mean(x ** 2))``) give the same relevance
either way. A norm written by hand (``x / sqrt(sum(x ** 2))``, ``x * rsqrt(mean(x ** 2) + eps)``)
holds its divisor (`FixedGate`), so its pow and sqrt get no signal. A constant added in between
is a bias: ``log(1 + exp(x))`` leaves its 1 a share (0.41 of ``f(x)`` on that MLP), where
``log1p(exp(x))`` conserves, as ``F.softplus`` does. `Pass` divides by x: where x is exactly 0
(``exp(0) = 1``) R_y is lost, as at sigmoid. The functions of two inputs (pairwise.py) keep their
gradient: maximum, hypot and copysign are of degree 1 and conserve with it; atan2 (degree 0: all
relevance lost), logaddexp, xlogy and ``a ** b`` have no standard split of R_y between two
activations, and do not conserve.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from . import pairwise

_LN2, _LN10 = math.log(2.0), math.log(10.0)
_ERF = 2.0 / math.sqrt(math.pi)

# kind: derivative(x, y, options), the closed form of torch's own backward (tested against it)
DERIVATIVES: dict = {
    "exp": lambda x, y, o: y.clone(),  # a new tensor: extras may not be the output itself
    "exp2": lambda x, y, o: y * _LN2,
    "expm1": lambda x, y, o: y + 1,
    "log": lambda x, y, o: x.reciprocal(),
    "log2": lambda x, y, o: (x * _LN2).reciprocal(),
    "log10": lambda x, y, o: (x * _LN10).reciprocal(),
    "log1p": lambda x, y, o: (x + 1).reciprocal(),
    "sqrt": lambda x, y, o: (2 * y).reciprocal(),
    "rsqrt": lambda x, y, o: -0.5 * y * y * y,
    "reciprocal": lambda x, y, o: -y * y,
    "abs": lambda x, y, o: torch.sign(x),
    "pow": lambda x, y, o: _pow_derivative(x, o["exponent"]),
    "sin": lambda x, y, o: torch.cos(x),
    "cos": lambda x, y, o: -torch.sin(x),
    "erf": lambda x, y, o: _ERF * torch.exp(-x * x),
    "erfc": lambda x, y, o: -_ERF * torch.exp(-x * x),
    "atan": lambda x, y, o: (x * x + 1).reciprocal(),
    "sinh": lambda x, y, o: torch.cosh(x),
    "cosh": lambda x, y, o: torch.sinh(x),
    "asinh": lambda x, y, o: (x * x + 1).rsqrt(),
    "rdiv": lambda x, y, o: -y / x,  # c / x: -c / x ** 2
    "rpow": lambda x, y, o: _rpow_derivative(x, y, o["base"]),
}
KINDS = frozenset(DERIVATIVES)
_KEY = {"pow": torch.pow, "rdiv": torch.Tensor.__rdiv__, "rpow": torch.Tensor.__rpow__}
# one torch function per kind: the keys DeepLift's mapping uses (each stands for its kind)
KEYS = tuple(_KEY.get(kind) or getattr(torch, kind) for kind in sorted(KINDS))


def _pow_derivative(x: torch.Tensor, p) -> torch.Tensor:
    """``p * x ** (p - 1)``, 0 where p == 0 (torch's pow backward)."""
    if p == 0:
        return torch.zeros_like(x)
    return p * x.pow(p - 1)


def _rpow_derivative(x: torch.Tensor, y: torch.Tensor, c) -> torch.Tensor:
    """``c ** x * log(c)``, 0 where c == 0 and x >= 0 (torch's backward of a number base)."""
    if c == 0:
        return torch.where(x >= 0, torch.zeros_like(y), -math.inf * y)
    return y * (math.log(c) if c > 0 else math.nan)


def rescaled(dx: torch.Tensor, dy: torch.Tensor, slope: torch.Tensor, eps: float) -> torch.Tensor:
    """Rescale multipliers ``dy / dx``, or the derivative ``slope`` where ``|dx| < eps`` or the
    ratio is not finite.

    NOTE: [Rescale off the domain]
    log, log2, log10, log1p, sqrt, rsqrt, reciprocal and pow with a negative or fractional exponent
    are infinite or undefined at some points, and exp, sinh, cosh overflow: with a reference there
    (``log`` of a baseline of 0, the usual one) ``phi(x_ref)`` is inf or nan, and so is the secant
    ``(phi(x) - phi(x_ref)) / (x - x_ref)``, where the gradient at x is finite. Such elements take
    phi'(x) instead, as ties do, so no inf or nan multiplier appears where the gradient has none
    (phi'(x) is inf where x itself is at a pole: the ordinary gradient is too). The secant is
    finite wherever both values are, and is then exact: abs across a sign change (``|x| - |x_ref|``
    over ``x - x_ref``, between -1 and 1), sqrt and pow with ``x_ref = 0``. ``f(b)`` is not finite
    when the reference is off the domain, so summation-to-delta has nothing to hold there; it
    holds wherever every op's reference value is finite. One ``torch.where`` on every device (NOTE:
    [Float masks] in deeplift_rules.py): these ops are few next to a model's activations.
    """
    ratio = dy / dx
    keep = (dx.abs() >= eps) & torch.isfinite(ratio)
    if torch._C._functorch.maybe_current_level() is not None:
        # a derivative of the multipliers (NOTE: [Derivatives of rule-based attributions] in
        # rule_limits.py) takes 0 * d(dy / dx) where not kept: nan at a tie (dx = 0) unless the
        # ratio there is taken of finite numbers
        ratio = torch.where(keep, dy, 0.0) / torch.where(keep, dx, 1.0)
    return torch.where(keep, ratio, slope)


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _is_number(p) -> bool:
    return isinstance(p, (int, float)) and not isinstance(p, bool)


def _function(make: Callable, kind: str, fn: Callable, inplace: bool):
    def parse(func, input=None, *rest, out=None, **named):
        if rest or named or out is not None or not _is_float(input):
            return None
        return make(kind, fn, (input,), {}, func, inplace)

    return parse


def _pow(make: Callable, inplace: bool, square: bool = False):
    def parse(func, input=None, exponent=None, *rest, out=None, **named):
        if square:
            rest, exponent = ((exponent,) + rest if exponent is not None else rest), 2
        if rest or named or out is not None:
            return None
        if _is_number(input) and _is_float(exponent) and not inplace:  # torch.pow(c, x)
            return number_side("rpow", make, func, input, exponent)
        if isinstance(input, torch.Tensor) and isinstance(exponent, torch.Tensor):  # NOTE: [Elementwise functions of two inputs]
            return pairwise.pair(make, "tensor_pow", torch.pow, func, input, exponent, inplace)
        if not _is_float(input) or not _is_number(exponent):
            return None
        fn = functools.partial(torch.pow, exponent=exponent)
        return make("pow", fn, (input,), {"exponent": exponent}, func, inplace)

    return parse


def number_side(kind: str, make: Callable, func, c, x):
    """The op ``c / x`` (kind "rdiv") or ``c ** x`` ("rpow") of a number c and a float tensor x."""
    fn, name = (functools.partial(torch.div, c), "numerator") if kind == "rdiv" else (functools.partial(torch.pow, c), "base")
    return make(kind, fn, (x,), {name: c}, func, False)


def _reflected(kind: str, make: Callable):
    """A parser for ``Tensor.__rdiv__(x, c)`` (``c / x``) and ``Tensor.__rpow__(x, c)`` (``c ** x``)."""

    def parse(func, input=None, other=None, *rest, **named):
        if rest or named or not _is_float(input) or not _is_number(other):
            return None
        return number_side(kind, make, func, other, input)

    return parse


def spellings(make: Callable) -> list:
    """``[(torch function, kind, parser)]`` for every spelling; ``make`` builds an `ops.Op`."""
    out = []
    for kind in sorted(KINDS - {"pow", "abs", "rdiv", "rpow"}):
        fn = getattr(torch, kind)
        plain = [fn, getattr(torch.Tensor, kind), getattr(torch.special, kind, None)]
        inplace = [getattr(torch, kind + "_", None), getattr(torch.Tensor, kind + "_")]
        out += [(f, kind, _function(make, kind, fn, False)) for f in plain if f is not None]
        out += [(f, kind, _function(make, kind, fn, True)) for f in inplace if f is not None]
    for f in (torch.abs, torch.Tensor.abs, torch.Tensor.__abs__, torch.absolute, torch.Tensor.absolute):
        out.append((f, "abs", _function(make, "abs", torch.abs, False)))
    for f in (torch.abs_, torch.Tensor.abs_, torch.Tensor.absolute_):
        out.append((f, "abs", _function(make, "abs", torch.abs, True)))
    for f in (torch.pow, torch.Tensor.pow, torch.Tensor.__pow__):
        out.append((f, "pow", _pow(make, False)))
    for f in (torch.Tensor.pow_, torch.Tensor.__ipow__):
        out.append((f, "pow", _pow(make, True)))
    out += [(torch.square, "pow", _pow(make, False, square=True)), (torch.Tensor.square, "pow", _pow(make, False, square=True))]
    out += [(torch.square_, "pow", _pow(make, True, square=True)), (torch.Tensor.square_, "pow", _pow(make, True, square=True))]
    out += [(torch.Tensor.__rdiv__, "rdiv", _reflected("rdiv", make)), (torch.Tensor.__rpow__, "rpow", _reflected("rpow", make))]
    return out  # torch.div(c, x) and its aliases: two_inputs.py
