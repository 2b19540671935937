"""The `Entry` of a metric for `xattr.metrics.evaluate`, its context and what one call of it
gives (NOTE: [Metric entries] and NOTE: [Entries with several inputs] in
`xattr/metrics/entries.py`)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ._curves import Curve

DIRECTIONS = ("higher", "lower")
NEEDS = ("mask", "method")
RULES = ("trapezoid", "last")


class Context(NamedTuple):
    """What an entry may read beside ``(f, attr_fn, x)`` (NOTE: [Metric entries]).

    Example:
      >>> ctx = xattr.metrics.entries.Context(model=model, mask=masks, generator=0)
      >>> values = entry.fn(f, attr_fn, x, ctx)       # what an Entry's call builds from its keywords
    """

    model: Callable | None = None
    mask: torch.Tensor | None = None
    make: Callable | None = None
    f_of: Callable | None = None
    generator: int | None = None
    run_seed: int | None = None
    args: tuple | None = None
    argnums: int | tuple = 0


class Traced(NamedTuple):
    """One call of an entry: ``values`` (B,), one per example, and for a curve metric the curve
    behind them (NOTE: [Curves of an evaluation] in `xattr/metrics/_evaluation_curves.py`):
    ``x`` (S,) or (B, S), ``y`` (B, S), the ``rule`` that sums a curve up into its value
    ("trapezoid": the area over x; "last": the last point), what x counts (``x_label``) and,
    where the points have names (the randomized layers), their ``ticks``; what y is (``y_label``).

    Example:
      >>> tr = xattr.metrics.entries.deletion(n_steps=8).trace(f, xattr.saliency(f), x)
      >>> tr.values, tr.x, tr.y               # (B,) areas, (S,) fractions, (B, S) outputs
    """

    values: torch.Tensor
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    rule: str | None = None
    x_label: str | None = None
    ticks: tuple | None = None
    y_label: str | None = None


class Entry:
    """A metric for `evaluate`: ``fn(f, attr_fn, x, context) -> (B,) tensor or Curve``, its
    ``direction`` ("higher" or "lower" is better), a ``name``, what it ``needs`` ("mask",
    "method"; NOTE: [Metric entries]) and ``refuse(argnums) -> reason or None``, the inputs it
    cannot score (NOTE: [Entries with several inputs]). Called as ``entry(f, attr_fn, x,
    **context) -> (B,)``; ``entry.trace(...)`` gives the curve too (a `Traced`). ``fn`` may
    also return a `Traced` itself. ``x_label`` names the x axis of the curves it returns.

    Example:
      >>> max_abs = xattr.metrics.entries.Entry(lambda f, attr_fn, x, ctx: attr_fn(x).abs().flatten(1).amax(1),
      ...                                       "lower", name="max_abs")
      >>> max_abs(xattr.target(model, 3), xattr.saliency(xattr.target(model, 3)), x)   # (B,)
    """

    def __init__(self, fn: Callable, direction: str, *, name: str, needs=(), refuse: Callable | None = None,
                 x_label: str = "fraction"):  # fmt: skip
        if not callable(fn):
            raise TypeError(f"Entry needs a function fn(f, attr_fn, x, context), got {type(fn).__name__}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'higher' or 'lower' (which values are better), got {direction!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        needs = (needs,) if isinstance(needs, str) else tuple(needs)
        bad = [n for n in needs if n not in NEEDS]
        if bad:
            raise ValueError(f"needs may hold {NEEDS}, got {bad}")
        if refuse is not None and not callable(refuse):
            raise TypeError(f"refuse must be a function argnums -> reason or None, got {type(refuse).__name__}")
        if not isinstance(x_label, str):
            raise TypeError(f"x_label must be a str (what the x axis of the curves counts), got {x_label!r}")
        self.fn, self.direction, self.name, self.needs, self._refuse = fn, direction, name, needs, refuse
        self.x_label = x_label

    def refuses(self, argnums) -> str | None:
        """Why this metric cannot score inputs attributed at ``argnums`` (an int or a tuple), or None."""
        return None if self._refuse is None else self._refuse(argnums)

    def __call__(self, f, attr_fn, x, **context) -> torch.Tensor:
        return self.trace(f, attr_fn, x, **context).values

    def trace(self, f, attr_fn, x, **context) -> Traced:
        """The values (B,) and, for a metric that gives a curve, the curve (NOTE: [Curves of an evaluation])."""
        ctx = Context(**context)
        if "mask" in self.needs and ctx.mask is None:
            raise ValueError(f"metric {self.name!r} needs ground-truth masks: pass masks=")
        reason = self.refuses(ctx.argnums)
        if reason is not None:
            raise ValueError(f"metric {self.name!r}: {reason}")
        out = self.fn(f, attr_fn, x, ctx)
        if isinstance(out, Curve):
            return Traced(out.auc, out.fractions, out.scores, "trapezoid", self.x_label, None, "model output f")
        if isinstance(out, Traced):
            if out.y is not None and out.rule not in RULES:
                raise ValueError(f"metric {self.name!r}: a curve's rule must be one of {RULES}, got {out.rule!r}")
            return out
        return Traced(out)

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.direction} is better)"


def custom(fn: Callable, direction: str, *, name: str | None = None) -> Entry:
    """An entry from your own ``fn(f, attr_fn, *args) -> (B,) tensor or Curve`` (``fn(f, attr_fn,
    x)`` for one input; ``args`` are all the model's arguments, NOTE: [Entries with several
    inputs]); ``evaluate`` runs it with torch's global generator forked and seeded, so its
    draws repeat with the same seed.

    Example:
      >>> max_abs = xattr.metrics.entries.custom(lambda f, attr_fn, x: attr_fn(x).abs().flatten(1).amax(1), "lower")
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics={"max_abs": max_abs, "deletion": "deletion"})
    """
    if not callable(fn):
        raise TypeError(f"custom needs a function fn(f, attr_fn, *args) -> (B,) or Curve, got {type(fn).__name__}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty str (or None: the function's name), got {name!r}")
    named = name or getattr(fn, "__name__", "custom")
    return Entry(lambda f, a, x, ctx: fn(f, a, *_args(x, ctx)), direction, name=named)


def _seed(ctx: Context):
    return ctx.generator


def _args(x, ctx: Context) -> tuple:
    """The model's positional arguments: the context's, or the attributed input alone."""
    return (x,) if ctx.args is None else tuple(ctx.args)


def _one_input(argnums) -> str | None:
    if isinstance(argnums, int):
        return None
    return (f"it scores one attributed tensor, but argnums={tuple(argnums)!r} names several; give argnums as an "
            "int (the other arguments pass through)")  # fmt: skip
