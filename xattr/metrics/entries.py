"""Ready-made metric entries for `xattr.metrics.evaluate`: each metric of `xattr.metrics` as a
call ``entry(f, attr_fn, x, ...) -> (B,)``, with its name and the direction that is better.

The entries live in themed modules (faithfulness: _entries_faithfulness.py; robustness:
_entries_robustness.py; the map alone: _entries_maps.py) and are re-exported here, with the
registry of names (`known`, `defaults`, `resolve`) and the checks `evaluate` runs up front. Each
constructor checks its options when it is called (NOTE: [Options checked when an entry is
built] in _entry_checks.py).

NOTE: [Metric entries]
The metrics of `xattr.metrics` are called in a few ways (``metric(f, attr_fn, ...)(x)``,
``metric(attr_fn, x, ...)``, ``metric(attributions, mask, x)``, ``metric(model, builder, x)``)
and return a (B,) tensor, a `Curve` or a `Randomization`. An `Entry` hides that: it is called
as ``entry(f, attr_fn, x, *, model=None, mask=None, make=None, f_of=None, generator=None,
run_seed=None)``
and returns one number per example, a Curve summed up by its area (``Curve.auc``) and a
randomization check by the similarity of its last step; ``entry.trace(...)`` returns the
curve too (a `Traced`), which `evaluate` keeps (NOTE: [Curves of an evaluation]). ``f`` is the model function with one
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

from typing import Mapping

import torch

from ._entries_faithfulness import (
    deletion,
    faithfulness_correlation,
    infidelity,
    insertion,
    monotonicity,
    monotonicity_correlation,
    road,
)
from ._entries_maps import (
    attribution_localization,
    complexity,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    sparseness,
)
from ._entries_robustness import (
    local_lipschitz_estimate,
    randomization,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
    sensitivity_max,
)
from ._entry import Context, Entry, Traced, custom


def defaults() -> dict:
    """The metrics `evaluate` runs when none are given: deletion and insertion AUC (16 steps),
    faithfulness correlation (20 subsets of a quarter of the elements), infidelity (10 subsets
    of half the elements set to 0, scale-normalised) and sparseness. Each costs model calls (or
    nothing) but no further attribution call, so the cost does not grow with the method's; the
    metrics that recompute attributions (sensitivity, stability, randomization) and the
    localization ones (they need masks) are left to ask for.

    Example:
      >>> list(xattr.metrics.entries.defaults())   # ['deletion', 'insertion', 'faithfulness_correlation', ...]
    """
    return {e.name: e for e in (deletion(), insertion(), faithfulness_correlation(), infidelity(), sparseness())}


def known() -> dict:
    """Name -> a builder of the entry with its default options: the names `resolve` accepts.

    Example:
      >>> sorted(xattr.metrics.entries.known())     # the names evaluate(metrics=[...]) accepts
    """
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
    given twice are errors, before anything is computed.

    Example:
      >>> chosen = xattr.metrics.entries.resolve(["deletion", xattr.metrics.entries.road(order="lerf")])  # name -> Entry
    """
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
    no entry needs them, else one mask per example (N, ...); returns ``masks``.

    Example:
      >>> chosen = {"pointing_game": xattr.metrics.entries.pointing_game()}
      >>> masks = xattr.metrics.entries.check_masks(masks, len(x), chosen)   # (N, ...) checked, or ValueError
    """
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
    ``argnums`` (NOTE: [Entries with several inputs]).

    Example:
      >>> xattr.metrics.entries.check_inputs({"road": xattr.metrics.entries.road()}, (0, 1))   # ValueError: one image only
    """
    reasons = [f"metric {k!r}: {r}" for k, e in chosen.items() if (r := e.refuses(argnums)) is not None]
    if reasons:
        raise ValueError("; ".join(reasons))


__all__ = [
    "Context",
    "Entry",
    "Traced",
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
