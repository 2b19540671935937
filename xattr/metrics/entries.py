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

NOTE: [Entries with several inputs]
A model may take several positional arguments: attributed inputs (an image and a table of
features) and pass-through ones (an attention mask, lengths). The context's ``args`` holds all
of them (sliced to the batch) and ``argnums`` names the attributed ones, as for every metric of
`xattr.metrics` (``metric(f, attr_fn, argnums=...)(*args)``); ``x`` is then ``args[argnums]``,
a tensor for an int ``argnums`` and a tuple for a tuple, and the attributions have its
structure. Every entry calls its metric with ``*args`` and ``argnums``: the metrics perturb the
attributed inputs and tile the others with the copies. Three metrics score one attributed
tensor, and their entries refuse a tuple ``argnums`` before anything runs (``Entry.refuses``):
ROAD (it imputes pixels of one image; the other inputs may still pass through), the
localization metrics unless the entry's ``argnum`` names the attributed argument the masks
cover (then the masks are (N, ...) over that argument's map and the other attributions are not
read), and the randomization check with ``similarity="ssim"`` (an image measure; the rank
measures compare all attributed elements of an example together).
"""

from __future__ import annotations

import numbers
from typing import Mapping

import torch

from ._concentration import complexity as _complexity, sparseness as _sparseness
from ._curves import deletion as _deletion, insertion as _insertion
from ._entry import Context, Entry, _args, _one_input, _seed, custom
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

def _check_n(value, least: int = 1, what: str = "n_samples") -> int:
    """An entry's count, checked when the entry is built (not after the attributions are computed)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{what} must be an int >= {least}, got {value!r}")
    return value


def _check_radius(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise ValueError(f"radius must be a positive finite number, got {value!r}")
    return value


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
    _check_n(n_samples)
    fn_perturb = _perturbation(perturb, std, p)
    base = baselines if perturb == "subset" else None

    def run(f, a, x, ctx):
        return _infidelity(f, a, fn_perturb, n_perturb_samples=n_samples, normalize=normalize, baselines=base,
                           argnums=ctx.argnums, generator=_seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "lower", name=name)


def sensitivity_max(*, radius: float = 0.02, n_samples: int = 10, perturb_func=uniform_noise,
                    name: str = "sensitivity_max") -> Entry:  # fmt: skip
    """`sensitivity_max` (lower is better); recomputes the attributions at n_samples copies."""
    _check_n(n_samples), _check_radius(radius)

    def run(f, a, x, ctx):
        return _sensitivity_max(a, *_args(x, ctx), perturb_func=perturb_func, perturb_radius=radius,
                                n_perturb_samples=n_samples, argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def deletion(*, n_steps: int | None = 16, baselines=0.0, feature_mask=None, name: str = "deletion") -> Entry:
    """The area under the `deletion` curve (lower is better)."""
    kw = dict(n_steps=n_steps, baselines=baselines, feature_mask=feature_mask)
    return Entry(lambda f, a, x, ctx: _deletion(f, a, argnums=ctx.argnums, **kw)(*_args(x, ctx)), "lower", name=name)


def insertion(*, n_steps: int | None = 16, baselines=0.0, feature_mask=None, name: str = "insertion") -> Entry:
    """The area under the `insertion` curve (higher is better)."""
    kw = dict(n_steps=n_steps, baselines=baselines, feature_mask=feature_mask)
    return Entry(lambda f, a, x, ctx: _insertion(f, a, argnums=ctx.argnums, **kw)(*_args(x, ctx)), "higher", name=name)


def sparseness(*, name: str = "sparseness") -> Entry:
    """`sparseness`, the Gini index of |phi| (higher: more concentrated, is counted better)."""
    return Entry(lambda f, a, x, ctx: _sparseness(a, *_args(x, ctx)), "higher", name=name)


def complexity(*, name: str = "complexity") -> Entry:
    """`complexity`, the entropy of |phi| (lower is better)."""
    return Entry(lambda f, a, x, ctx: _complexity(a, *_args(x, ctx)), "lower", name=name)


def faithfulness_correlation(*, subset=0.25, n_samples: int = 20, baselines=0.0, feature_mask=None,
                             name: str = "faithfulness_correlation") -> Entry:  # fmt: skip
    """`faithfulness_correlation` (higher is better); ``subset``: the subset size, an int or a
    fraction of the elements of one example, all attributed inputs together (with a
    ``feature_mask``: of its ids)."""
    _check_n(n_samples, 2)
    if isinstance(subset, numbers.Integral) and not isinstance(subset, bool):
        _check_n(int(subset), 1, "subset")
    else:
        _count(subset, 1, "subset")  # a fraction: its type and range now, its count per call

    def run(f, a, x, ctx):
        if feature_mask is None:
            n = sum(t[0].numel() for t in (x if isinstance(x, tuple) else (x,)))
        else:
            leaves = feature_mask if isinstance(feature_mask, (tuple, list)) else (feature_mask,)
            n = int(torch.cat([torch.as_tensor(m).flatten() for m in leaves]).unique().numel())
        size = _count(subset, n, "subset")
        return _faithfulness_correlation(f, a, subset_size=size, n_samples=n_samples, baselines=baselines,
                                         feature_mask=feature_mask, argnums=ctx.argnums,
                                         generator=_seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "higher", name=name)


def monotonicity(*, baselines=0.0, feature_mask=None, name: str = "monotonicity") -> Entry:
    """`monotonicity` of Arya et al. (higher is better); one model row per feature."""
    kw = dict(baselines=baselines, feature_mask=feature_mask)
    return Entry(lambda f, a, x, ctx: _monotonicity(f, a, argnums=ctx.argnums, **kw)(*_args(x, ctx)), "higher",
                 name=name)  # fmt: skip


def monotonicity_correlation(*, n_samples: int = 1, perturb_func=None, baselines=None, feature_mask=None,
                             name: str = "monotonicity_correlation") -> Entry:  # fmt: skip
    """`monotonicity_correlation` of Nguyen & Martinez (higher is better)."""
    _check_n(n_samples)

    def run(f, a, x, ctx):
        return _monotonicity_correlation(f, a, n_samples=n_samples, perturb_func=perturb_func, baselines=baselines,
                                         feature_mask=feature_mask, argnums=ctx.argnums,
                                         generator=None if perturb_func is None else _seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "higher", name=name)


def road(*, order: str = "morf", percentages=PERCENTAGES, noise: float = 0.01, name: str | None = None) -> Entry:
    """The area under the `road` curve: "morf" lower is better, "lerf" higher; one attributed
    image (an int ``argnums``; NOTE: [Entries with several inputs])."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")

    def run(f, a, x, ctx):
        return _road(f, a, percentages=percentages, order=order, noise=noise, argnums=ctx.argnums,
                     generator=_seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "lower" if order == "morf" else "higher", name=name or f"road_{order}", refuse=_one_input)


def local_lipschitz_estimate(*, radius: float = 0.05, n_samples: int = 10, norm="l2",
                             name: str = "local_lipschitz") -> Entry:  # fmt: skip
    """`local_lipschitz_estimate` (lower is better); recomputes the attributions at the copies."""
    _check_n(n_samples), _check_radius(radius)

    def run(f, a, x, ctx):
        return _local_lipschitz_estimate(a, *_args(x, ctx), radius=radius, n_samples=n_samples, norm=norm,
                                         argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def relative_input_stability(*, radius: float = 0.05, n_samples: int = 10,
                             name: str = "relative_input_stability") -> Entry:  # fmt: skip
    """`relative_input_stability` (lower is better), the class constraint read from the model."""
    _check_n(n_samples), _check_radius(radius)

    def run(f, a, x, ctx):
        return _relative_input_stability(ctx.model, a, *_args(x, ctx), radius=radius, n_samples=n_samples,
                                         argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def relative_output_stability(*, radius: float = 0.05, n_samples: int = 10,
                              name: str = "relative_output_stability") -> Entry:  # fmt: skip
    """`relative_output_stability` (lower is better): the model's logits in the denominator."""
    _check_n(n_samples), _check_radius(radius)

    def run(f, a, x, ctx):
        return _relative_output_stability(ctx.model, a, *_args(x, ctx), radius=radius, n_samples=n_samples,
                                          argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def relative_representation_stability(*, layer, radius: float = 0.05, n_samples: int = 10,
                                      name: str = "relative_representation_stability") -> Entry:  # fmt: skip
    """`relative_representation_stability` at ``layer`` (a module of the model; lower is better)."""
    _check_n(n_samples), _check_radius(radius)

    def run(f, a, x, ctx):
        return _relative_representation_stability(ctx.model, a, *_args(x, ctx), layer=layer, radius=radius,
                                                  n_samples=n_samples, argnums=ctx.argnums,
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
        out = _randomization_check(ctx.model, lambda m: ctx.make(ctx.f_of(m)), _args(x, ctx), mode=mode,
                                   layers=layers, similarity=(similarity,), generator=ctx.run_seed)  # fmt: skip
        return out.scores[similarity][-1]

    refuse = _one_input if similarity == "ssim" else None
    return Entry(run, "lower", name=name or f"randomization_{similarity}", needs="method", refuse=refuse)


def _localization(metric, direction: str, name: str, argnum: int | None, **kw) -> Entry:
    if argnum is not None and (isinstance(argnum, bool) or not isinstance(argnum, int)):
        raise TypeError(f"argnum must be an int (the attributed argument the masks cover) or None, got {argnum!r}")

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
    other localization entries."""
    return _localization(_pointing_game, "higher", name, argnum, tolerance=tolerance, channel_dim=channel_dim)


def relevance_mass_accuracy(*, channel_dim: int | None = 1, argnum: int | None = None,
                            name: str = "relevance_mass") -> Entry:  # fmt: skip
    """`relevance_mass_accuracy` against ``masks`` (higher is better)."""
    return _localization(_relevance_mass_accuracy, "higher", name, argnum, channel_dim=channel_dim)


def relevance_rank_accuracy(*, channel_dim: int | None = 1, argnum: int | None = None,
                            name: str = "relevance_rank") -> Entry:  # fmt: skip
    """`relevance_rank_accuracy` against ``masks`` (higher is better)."""
    return _localization(_relevance_rank_accuracy, "higher", name, argnum, channel_dim=channel_dim)


def attribution_localization(*, weighted: bool = False, channel_dim: int | None = 1, argnum: int | None = None,
                             name: str = "attribution_localization") -> Entry:  # fmt: skip
    """`attribution_localization` against ``masks`` (higher is better)."""
    return _localization(_attribution_localization, "higher", name, argnum, weighted=weighted,
                         channel_dim=channel_dim)  # fmt: skip


def defaults() -> dict:
    """The metrics `evaluate` runs when none are given: deletion and insertion AUC (16 steps),
    faithfulness correlation (20 subsets of a quarter of the elements), infidelity (10 subsets
    of half the elements set to 0, scale-normalised) and sparseness. Each costs model calls (or
    nothing) but no further attribution call, so the cost does not grow with the method's; the
    metrics that recompute attributions (sensitivity, stability, randomization) and the
    localization ones (they need masks) are left to ask for."""
    return {e.name: e for e in (deletion(), insertion(), faithfulness_correlation(), infidelity(), sparseness())}



def known() -> dict:
    """Name -> a builder of the entry with its default options: the names `resolve` accepts."""
    return {
        "deletion": deletion, "insertion": insertion, "infidelity": infidelity,
        "faithfulness_correlation": faithfulness_correlation, "sparseness": sparseness,
        "complexity": complexity, "sensitivity_max": sensitivity_max, "monotonicity": monotonicity,
        "monotonicity_correlation": monotonicity_correlation, "road_morf": lambda: road(order="morf"),
        "road_lerf": lambda: road(order="lerf"), "local_lipschitz": local_lipschitz_estimate,
        "relative_input_stability": relative_input_stability,
        "relative_output_stability": relative_output_stability, "randomization": randomization,
        "pointing_game": pointing_game, "relevance_mass": relevance_mass_accuracy,
        "relevance_rank": relevance_rank_accuracy, "attribution_localization": attribution_localization,
    }  # fmt: skip


def resolve(metrics) -> dict:
    """The metrics ``evaluate(metrics=...)`` runs, name -> `Entry`, in order: None gives
    `defaults`; a dict name -> entry (or a known name) keeps its keys; a list of entries or
    names names each by its entry's name. Unknown names, objects that are not entries and a name
    given twice are errors, before anything is computed."""
    if metrics is None:
        return defaults()
    names = known()
    items = list(metrics.items()) if isinstance(metrics, Mapping) else [(None, m) for m in metrics]
    if not items:
        raise ValueError("metrics is empty: give at least one (or None for the defaults)")
    out = {}
    for key, m in items:
        if isinstance(m, str):
            key = m if key is None else key
            if m not in names:
                hint = ""
                if "representation" in m:
                    hint = " (it needs a layer: entries.relative_representation_stability(layer=...))"
                raise ValueError(
                    f"unknown metric {m!r}{hint}; known names: {sorted(names)}, or give an xattr.metrics.entries entry"
                )
            m = names[m]()
        if not isinstance(m, Entry):
            raise TypeError(
                f"metric {key or m!r} must be an xattr.metrics.entries entry (or a name); wrap your own function "
                "fn(f, attr_fn, x) -> (B,) as entries.custom(fn, 'higher' or 'lower')"
            )
        name = key if key is not None else m.name
        if name in out:
            raise ValueError(f"metric {name!r} is given twice: give one of them another name= or dict key")
        out[name] = m
    return out


def check_masks(masks, n: int, chosen: Mapping):
    """``masks`` checked for the ``chosen`` entries (name -> Entry) and ``n`` examples: None when
    no entry needs them, else one mask per example (N, ...); returns ``masks``."""
    needing = [k for k, e in chosen.items() if "mask" in e.needs]
    if masks is None:
        if needing:
            raise ValueError(
                f"metric(s) {needing} compare attributions with ground-truth regions: pass masks= (N, ...)"
            )
        return None
    if not isinstance(masks, torch.Tensor) or masks.ndim < 2 or masks.shape[0] != n:
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a tensor (N, ...) with one mask per example (N = {n}), got {got}; "
                         "a mask shared by every example: masks=mask.expand(N, *mask.shape)")  # fmt: skip
    return masks


def check_inputs(chosen: Mapping, argnums) -> None:
    """A ValueError naming every entry of ``chosen`` that cannot score inputs attributed at
    ``argnums`` (NOTE: [Entries with several inputs])."""
    reasons = [f"metric {k!r}: {r}" for k, e in chosen.items() if (r := e.refuses(argnums)) is not None]
    if reasons:
        raise ValueError("; ".join(reasons))

__all__ = [
    "Context",
    "Entry",
    "attribution_localization",
    "check_inputs",
    "check_masks",
    "complexity",
    "custom",
    "defaults",
    "deletion",
    "faithfulness_correlation",
    "infidelity",
    "insertion",
    "known",
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
    "resolve",
    "road",
    "sensitivity_max",
    "sparseness",
]
