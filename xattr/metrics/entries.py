"""Ready-made metric entries for `xattr.metrics.evaluate`: each metric of `xattr.metrics` as a
call ``entry(f, attr_fn, x, ...) -> (B,)``, with its name and the direction that is better.

NOTE: [Metric entries]
The metrics of `xattr.metrics` are called in a few ways (``metric(f, attr_fn, ...)(x)``,
``metric(attr_fn, x, ...)``, ``metric(attributions, mask, x)``, ``metric(model, builder, x)``)
and return a (B,) tensor, a `Curve` or a `Randomization`. An `Entry` hides that: it is called
as ``entry(f, attr_fn, x, *, model=None, mask=None, make=None, f_of=None, generator=None,
run_seed=None)``
and returns one number per example, a Curve summed up by its area (``Curve.auc``) and a
randomization check by the similarity of its last step. ``f`` is the model function with one
output per example (``xattr.target``), ``attr_fn`` the attribution function of the method,
``x`` the (B, ...) inputs; the keywords are the context some metrics need: the model itself
(the logits, for the relative stability metrics), the ground-truth masks (localization), the
method's ``make(f) -> attr_fn`` and ``f_of(model) -> f`` (the randomization check builds the
method anew on a randomized copy of the model), an int seed for the metric's draws in this
batch (``generator``) and one shared by every batch (``run_seed``: the randomization check
re-initialises the same weights for every batch).
``needs`` names what an entry cannot run without: ``"mask"``, or ``"method"`` (it calls the
attribution function at other inputs than x, or builds it anew, so precomputed attributions
cannot serve it).
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import torch

from ._concentration import complexity as _complexity, sparseness as _sparseness
from ._curves import Curve, deletion as _deletion, insertion as _insertion
from ._faithfulness import (
    faithfulness_correlation as _faithfulness_correlation,
    monotonicity as _monotonicity,
    monotonicity_correlation as _monotonicity_correlation,
)
from ._infidelity import infidelity as _infidelity
from ._localization import (
    attribution_localization as _attribution_localization,
    pointing_game as _pointing_game,
    relevance_mass_accuracy as _relevance_mass_accuracy,
    relevance_rank_accuracy as _relevance_rank_accuracy,
)
from ._noise import gaussian_noise, subset_to_baseline, uniform_noise
from ._randomization import randomization_check as _randomization_check
from ._road import PERCENTAGES, road as _road
from ._sensitivity import sensitivity_max as _sensitivity_max
from ._stability import (
    local_lipschitz_estimate as _local_lipschitz_estimate,
    relative_input_stability as _relative_input_stability,
    relative_output_stability as _relative_output_stability,
    relative_representation_stability as _relative_representation_stability,
)

DIRECTIONS = ("higher", "lower")
NEEDS = ("mask", "method")


class Context(NamedTuple):
    """What an entry may read beside ``(f, attr_fn, x)`` (NOTE: [Metric entries])."""

    model: Callable | None = None
    mask: torch.Tensor | None = None
    make: Callable | None = None
    f_of: Callable | None = None
    generator: int | None = None
    run_seed: int | None = None


class Entry:
    """A metric for `evaluate`: ``fn(f, attr_fn, x, context) -> (B,) tensor or Curve``, its
    ``direction`` ("higher" or "lower" is better), a ``name`` and what it ``needs`` ("mask",
    "method"; NOTE: [Metric entries]). Called as ``entry(f, attr_fn, x, **context)``."""

    def __init__(self, fn: Callable, direction: str, *, name: str, needs=()):
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
        self.fn, self.direction, self.name, self.needs = fn, direction, name, needs

    def __call__(self, f, attr_fn, x, **context) -> torch.Tensor:
        ctx = Context(**context)
        if "mask" in self.needs and ctx.mask is None:
            raise ValueError(f"metric {self.name!r} needs ground-truth masks: pass masks=")
        out = self.fn(f, attr_fn, x, ctx)
        if isinstance(out, Curve):
            out = out.auc
        return out

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.direction} is better)"


def custom(fn: Callable, direction: str, *, name: str | None = None) -> Entry:
    """An entry from your own ``fn(f, attr_fn, x) -> (B,) tensor or Curve``; ``evaluate`` runs it
    with torch's global generator forked and seeded, so its draws repeat with the same seed."""
    return Entry(lambda f, a, x, ctx: fn(f, a, x), direction, name=name or getattr(fn, "__name__", "custom"))


def _seed(ctx: Context):
    return ctx.generator


def _count(value, n: int, what: str) -> int:
    """An int count, or a fraction in (0, 1) of n (at least 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be an int or a fraction in (0, 1), got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not 0 < value < 1:
        raise ValueError(f"{what} as a fraction must lie in (0, 1), got {value!r}")
    return max(1, int(round(value * n)))


def _perturbation(perturb, std: float, p: float):
    if callable(perturb):
        return perturb
    if perturb == "noise":
        return gaussian_noise(std)
    if perturb == "subset":
        return subset_to_baseline(p)
    raise ValueError(f"perturb must be 'subset', 'noise' or a perturbation function, got {perturb!r}")


def infidelity(*, perturb="subset", n_samples: int = 10, normalize: bool = True, std: float = 0.1,
               p: float = 0.5, baselines=0.0, name: str = "infidelity") -> Entry:  # fmt: skip
    """`infidelity` (lower is better). ``perturb``: "subset" (`subset_to_baseline(p)`, each
    element set to ``baselines`` with probability p: suits global attributions such as IG or
    input x gradient), "noise" (`gaussian_noise(std)`: suits gradients) or a perturbation
    function. ``normalize=True`` (not the metric's default) makes it blind to the attributions'
    scale, so that methods of different scales compare."""
    fn_perturb = _perturbation(perturb, std, p)
    base = baselines if perturb == "subset" else None

    def run(f, a, x, ctx):
        return _infidelity(f, a, fn_perturb, n_perturb_samples=n_samples, normalize=normalize, baselines=base,
                           generator=_seed(ctx))(x)  # fmt: skip

    return Entry(run, "lower", name=name)


def sensitivity_max(*, radius: float = 0.02, n_samples: int = 10, perturb_func=uniform_noise,
                    name: str = "sensitivity_max") -> Entry:  # fmt: skip
    """`sensitivity_max` (lower is better); recomputes the attributions at n_samples copies."""

    def run(f, a, x, ctx):
        return _sensitivity_max(a, x, perturb_func=perturb_func, perturb_radius=radius, n_perturb_samples=n_samples,
                                generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def deletion(*, n_steps: int | None = 16, baselines=0.0, feature_mask=None, name: str = "deletion") -> Entry:
    """The area under the `deletion` curve (lower is better)."""
    kw = dict(n_steps=n_steps, baselines=baselines, feature_mask=feature_mask)
    return Entry(lambda f, a, x, ctx: _deletion(f, a, **kw)(x), "lower", name=name)


def insertion(*, n_steps: int | None = 16, baselines=0.0, feature_mask=None, name: str = "insertion") -> Entry:
    """The area under the `insertion` curve (higher is better)."""
    kw = dict(n_steps=n_steps, baselines=baselines, feature_mask=feature_mask)
    return Entry(lambda f, a, x, ctx: _insertion(f, a, **kw)(x), "higher", name=name)


def sparseness(*, name: str = "sparseness") -> Entry:
    """`sparseness`, the Gini index of |phi| (higher: more concentrated, is counted better)."""
    return Entry(lambda f, a, x, ctx: _sparseness(a, x), "higher", name=name)


def complexity(*, name: str = "complexity") -> Entry:
    """`complexity`, the entropy of |phi| (lower is better)."""
    return Entry(lambda f, a, x, ctx: _complexity(a, x), "lower", name=name)


def faithfulness_correlation(*, subset=0.25, n_samples: int = 20, baselines=0.0, feature_mask=None,
                             name: str = "faithfulness_correlation") -> Entry:  # fmt: skip
    """`faithfulness_correlation` (higher is better); ``subset``: the subset size, an int or a
    fraction of the elements of one example (with a ``feature_mask``: of its ids)."""

    def run(f, a, x, ctx):
        n = x[0].numel() if feature_mask is None else int(torch.as_tensor(feature_mask).unique().numel())
        size = _count(subset, n, "subset")
        return _faithfulness_correlation(f, a, subset_size=size, n_samples=n_samples, baselines=baselines,
                                         feature_mask=feature_mask, generator=_seed(ctx))(x)  # fmt: skip

    return Entry(run, "higher", name=name)


def monotonicity(*, baselines=0.0, feature_mask=None, name: str = "monotonicity") -> Entry:
    """`monotonicity` of Arya et al. (higher is better); one model row per feature."""
    return Entry(lambda f, a, x, ctx: _monotonicity(f, a, baselines=baselines, feature_mask=feature_mask)(x),
                 "higher", name=name)  # fmt: skip


def monotonicity_correlation(*, n_samples: int = 1, perturb_func=None, baselines=None, feature_mask=None,
                             name: str = "monotonicity_correlation") -> Entry:  # fmt: skip
    """`monotonicity_correlation` of Nguyen & Martinez (higher is better)."""

    def run(f, a, x, ctx):
        return _monotonicity_correlation(f, a, n_samples=n_samples, perturb_func=perturb_func, baselines=baselines,
                                         feature_mask=feature_mask,
                                         generator=None if perturb_func is None else _seed(ctx))(x)  # fmt: skip

    return Entry(run, "higher", name=name)


def road(*, order: str = "morf", percentages=PERCENTAGES, noise: float = 0.01, name: str | None = None) -> Entry:
    """The area under the `road` curve: "morf" lower is better, "lerf" higher."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")

    def run(f, a, x, ctx):
        return _road(f, a, percentages=percentages, order=order, noise=noise, generator=_seed(ctx))(x)

    return Entry(run, "lower" if order == "morf" else "higher", name=name or f"road_{order}")


def local_lipschitz_estimate(*, radius: float = 0.05, n_samples: int = 10, norm="l2",
                             name: str = "local_lipschitz") -> Entry:  # fmt: skip
    """`local_lipschitz_estimate` (lower is better); recomputes the attributions at the copies."""

    def run(f, a, x, ctx):
        return _local_lipschitz_estimate(a, x, radius=radius, n_samples=n_samples, norm=norm, generator=_seed(ctx))

    return Entry(run, "lower", name=name, needs="method")


def relative_input_stability(*, radius: float = 0.05, n_samples: int = 10,
                             name: str = "relative_input_stability") -> Entry:  # fmt: skip
    """`relative_input_stability` (lower is better), the class constraint read from the model."""

    def run(f, a, x, ctx):
        return _relative_input_stability(ctx.model, a, x, radius=radius, n_samples=n_samples, generator=_seed(ctx))

    return Entry(run, "lower", name=name, needs="method")


def relative_output_stability(*, radius: float = 0.05, n_samples: int = 10,
                              name: str = "relative_output_stability") -> Entry:  # fmt: skip
    """`relative_output_stability` (lower is better): the model's logits in the denominator."""

    def run(f, a, x, ctx):
        return _relative_output_stability(ctx.model, a, x, radius=radius, n_samples=n_samples, generator=_seed(ctx))

    return Entry(run, "lower", name=name, needs="method")


def relative_representation_stability(*, layer, radius: float = 0.05, n_samples: int = 10,
                                      name: str = "relative_representation_stability") -> Entry:  # fmt: skip
    """`relative_representation_stability` at ``layer`` (a module of the model; lower is better)."""

    def run(f, a, x, ctx):
        return _relative_representation_stability(ctx.model, a, x, layer=layer, radius=radius, n_samples=n_samples,
                                                  generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def randomization(*, similarity: str = "spearman_abs", mode: str = "cascading", layers=None,
                  name: str | None = None) -> Entry:  # fmt: skip
    """`randomization_check`: the similarity of the method's maps on the model with every listed
    layer randomized (the last step of the cascade; lower is better: the maps should depend on
    the weights). Builds the method anew through its ``make`` on deep copies of the model."""

    def run(f, a, x, ctx):
        if not isinstance(ctx.model, torch.nn.Module):
            raise TypeError(f"metric {name or 'randomization'!r} re-initialises layers: the model must be an nn.Module")
        out = _randomization_check(ctx.model, lambda m: ctx.make(ctx.f_of(m)), x, mode=mode, layers=layers,
                                   similarity=(similarity,), generator=ctx.run_seed)  # fmt: skip
        return out.scores[similarity][-1]

    return Entry(run, "lower", name=name or f"randomization_{similarity}", needs="method")


def _localization(metric, direction: str, name: str, **kw) -> Entry:
    return Entry(lambda f, a, x, ctx: metric(a, ctx.mask, x, **kw), direction, name=name, needs="mask")


def pointing_game(*, tolerance: float = 0, channel_dim: int | None = 1, name: str = "pointing_game") -> Entry:
    """`pointing_game` against ``masks`` (higher is better)."""
    return _localization(_pointing_game, "higher", name, tolerance=tolerance, channel_dim=channel_dim)


def relevance_mass_accuracy(*, channel_dim: int | None = 1, name: str = "relevance_mass") -> Entry:
    """`relevance_mass_accuracy` against ``masks`` (higher is better)."""
    return _localization(_relevance_mass_accuracy, "higher", name, channel_dim=channel_dim)


def relevance_rank_accuracy(*, channel_dim: int | None = 1, name: str = "relevance_rank") -> Entry:
    """`relevance_rank_accuracy` against ``masks`` (higher is better)."""
    return _localization(_relevance_rank_accuracy, "higher", name, channel_dim=channel_dim)


def attribution_localization(*, weighted: bool = False, channel_dim: int | None = 1,
                             name: str = "attribution_localization") -> Entry:  # fmt: skip
    """`attribution_localization` against ``masks`` (higher is better)."""
    return _localization(_attribution_localization, "higher", name, weighted=weighted, channel_dim=channel_dim)


def defaults() -> dict:
    """The metrics `evaluate` runs when none are given: deletion and insertion AUC (16 steps),
    faithfulness correlation (20 subsets of a quarter of the elements), infidelity (10 subsets
    of half the elements set to 0, scale-normalised) and sparseness. Each costs model calls (or
    nothing) but no further attribution call, so the cost does not grow with the method's; the
    metrics that recompute attributions (sensitivity, stability, randomization) and the
    localization ones (they need masks) are left to ask for."""
    return {e.name: e for e in (deletion(), insertion(), faithfulness_correlation(), infidelity(), sparseness())}


__all__ = [
    "Context",
    "Entry",
    "attribution_localization",
    "complexity",
    "custom",
    "defaults",
    "deletion",
    "faithfulness_correlation",
    "infidelity",
    "insertion",
    "local_lipschitz_estimate",
    "monotonicity",
    "monotonicity_correlation",
    "pointing_game",
    "randomization",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "sensitivity_max",
    "sparseness",
]
