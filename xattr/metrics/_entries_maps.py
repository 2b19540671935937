"""The entries of the metrics that read the attribution map alone, without calling the model
again: its concentration (sparseness, complexity) and its localization against ground-truth
masks (NOTE: [Metric entries] and NOTE: [Entries with several inputs] in entries.py)."""

from __future__ import annotations

from ._concentration import complexity as _complexity, sparseness as _sparseness
from ._entry import Entry, _args
from ._entry_checks import check_bool, check_channel_dim, check_real
from ._localization import (
    attribution_localization as _attribution_localization,
    pointing_game as _pointing_game,
    relevance_mass_accuracy as _relevance_mass_accuracy,
    relevance_rank_accuracy as _relevance_rank_accuracy,
)


def sparseness(*, name: str = "sparseness") -> Entry:
    """`sparseness`, the Gini index of |phi| (higher: more concentrated, is counted better).

    Example:
      >>> g = xattr.metrics.entries.sparseness()(f, xattr.saliency(f), x)     # (B,), as metrics.sparseness
    """
    return Entry(lambda f, a, x, ctx: _sparseness(a, *_args(x, ctx)), "higher", name=name)


def complexity(*, name: str = "complexity") -> Entry:
    """`complexity`, the entropy of |phi| (lower is better).

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.complexity()])
    """
    return Entry(lambda f, a, x, ctx: _complexity(a, *_args(x, ctx)), "lower", name=name)


def _localization(metric, direction: str, name: str, argnum: int | None, **kw) -> Entry:
    if argnum is not None and (isinstance(argnum, bool) or not isinstance(argnum, int)):
        raise TypeError(f"argnum must be an int (the attributed argument the masks cover) or None, got {argnum!r}")
    check_channel_dim(kw.get("channel_dim"))

    def run(f, a, x, ctx):
        phi = a(*_args(x, ctx)) if callable(a) else a
        if not isinstance(ctx.argnums, int):
            phi = phi[tuple(ctx.argnums).index(argnum)]
        return metric(phi, ctx.mask, **kw)

    def refuse(argnums):
        if isinstance(argnums, int):
            return None
        if argnum is None:
            return (f"it compares one map with the masks, but argnums={tuple(argnums)!r} names several attributed "
                    f"inputs: give the entry argnum= (the one of {tuple(argnums)!r} the masks cover)")  # fmt: skip
        if argnum not in tuple(argnums):
            return f"its argnum={argnum} is not among the attributed arguments argnums={tuple(argnums)!r}"
        return None

    return Entry(run, direction, name=name, needs="mask", refuse=refuse)


def pointing_game(*, tolerance: float = 0, channel_dim: int | None = 1, argnum: int | None = None,
                  name: str = "pointing_game") -> Entry:  # fmt: skip
    """`pointing_game` against ``masks`` (higher is better). ``argnum``: with several attributed
    inputs, the one the masks cover (NOTE: [Entries with several inputs]); the same for the
    other localization entries.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.pointing_game()], masks=masks)
    """
    check_real(tolerance, "tolerance", low=0.0, meaning=" (pixels around the mask that still count as a hit)")
    return _localization(_pointing_game, "higher", name, argnum, tolerance=tolerance, channel_dim=channel_dim)


def relevance_mass_accuracy(*, channel_dim: int | None = 1, argnum: int | None = None,
                            name: str = "relevance_mass") -> Entry:  # fmt: skip
    """`relevance_mass_accuracy` against ``masks`` (higher is better).

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.relevance_mass_accuracy()], masks=masks)
    """
    return _localization(_relevance_mass_accuracy, "higher", name, argnum, channel_dim=channel_dim)


def relevance_rank_accuracy(*, channel_dim: int | None = 1, argnum: int | None = None,
                            name: str = "relevance_rank") -> Entry:  # fmt: skip
    """`relevance_rank_accuracy` against ``masks`` (higher is better).

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.relevance_rank_accuracy()], masks=masks)
    """
    return _localization(_relevance_rank_accuracy, "higher", name, argnum, channel_dim=channel_dim)


def attribution_localization(*, weighted: bool = False, channel_dim: int | None = 1, argnum: int | None = None,
                             name: str = "attribution_localization") -> Entry:  # fmt: skip
    """`attribution_localization` against ``masks`` (higher is better).

    Example:
      >>> entry = xattr.metrics.entries.attribution_localization(weighted=True)
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[entry], masks=masks)
    """
    check_bool(weighted, "weighted")
    return _localization(_attribution_localization, "higher", name, argnum, weighted=weighted,
                         channel_dim=channel_dim)  # fmt: skip
