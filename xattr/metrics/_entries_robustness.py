"""The entries of the robustness metrics: those that call the method again, at perturbed inputs
(sensitivity, Lipschitz estimate, relative stability) or on a randomized model (the
randomization check); all of them need ``make(f) -> attr_fn`` (NOTE: [Metric entries] in
entries.py). The randomization check gives a curve over the randomized layers, kept by
`evaluate` (NOTE: [Curves of an evaluation] in _evaluation_curves.py); its value is the last point."""

from __future__ import annotations

import torch
from torch import nn

from ._entry import Entry, Traced, _args, _one_input, _seed
from ._entry_checks import check_callable, check_n, check_name, check_norm, check_radius
from ._noise import uniform_noise
from ._randomization import randomization_check as _randomization_check
from ._sensitivity import sensitivity_max as _sensitivity_max
from ._similarity import MEASURES
from ._stability import (
    local_lipschitz_estimate as _local_lipschitz_estimate,
    relative_input_stability as _relative_input_stability,
    relative_output_stability as _relative_output_stability,
    relative_representation_stability as _relative_representation_stability,
)

MODES = ("cascading", "independent")


def _perturb_checks(radius, n_samples, perturb_func=uniform_noise) -> None:
    check_n(n_samples), check_radius(radius)
    check_callable(perturb_func, "perturb_func", hint=" (x, radius, generator=g) -> perturbed x, e.g. uniform_noise")


def sensitivity_max(*, radius: float = 0.02, n_samples: int = 10, perturb_func=uniform_noise,
                    name: str = "sensitivity_max") -> Entry:  # fmt: skip
    """`sensitivity_max` (lower is better); recomputes the attributions at n_samples copies.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.sensitivity_max(radius=0.05)])
    """
    _perturb_checks(radius, n_samples, perturb_func)

    def run(f, a, x, ctx):
        return _sensitivity_max(a, *_args(x, ctx), perturb_func=perturb_func, perturb_radius=radius,
                                n_perturb_samples=n_samples, argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def local_lipschitz_estimate(*, radius: float = 0.05, n_samples: int = 10, norm="l2",
                             name: str = "local_lipschitz") -> Entry:  # fmt: skip
    """`local_lipschitz_estimate` (lower is better); recomputes the attributions at the copies.

    Example:
      >>> entry = xattr.metrics.entries.local_lipschitz_estimate(radius=0.05, n_samples=20)
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[entry])
    """
    _perturb_checks(radius, n_samples), check_norm(norm)

    def run(f, a, x, ctx):
        return _local_lipschitz_estimate(a, *_args(x, ctx), radius=radius, n_samples=n_samples, norm=norm,
                                         argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def relative_input_stability(*, radius: float = 0.05, n_samples: int = 10,
                             name: str = "relative_input_stability") -> Entry:  # fmt: skip
    """`relative_input_stability` (lower is better), the class constraint read from the model.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.relative_input_stability()])
    """
    _perturb_checks(radius, n_samples)

    def run(f, a, x, ctx):
        return _relative_input_stability(ctx.model, a, *_args(x, ctx), radius=radius, n_samples=n_samples,
                                         argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def relative_output_stability(*, radius: float = 0.05, n_samples: int = 10,
                              name: str = "relative_output_stability") -> Entry:  # fmt: skip
    """`relative_output_stability` (lower is better): the model's logits in the denominator.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.relative_output_stability()])
    """
    _perturb_checks(radius, n_samples)

    def run(f, a, x, ctx):
        return _relative_output_stability(ctx.model, a, *_args(x, ctx), radius=radius, n_samples=n_samples,
                                          argnums=ctx.argnums, generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def _check_layers(layer, what: str, *, optional: bool) -> None:
    """A module, or a non-empty list of modules (``layers`` of the randomization check: or of names)."""
    if layer is None and optional:
        return
    items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    names_ok = optional  # the randomization check also takes submodule names
    if not items or not all(isinstance(m, nn.Module) or (names_ok and isinstance(m, str) and m) for m in items):
        kinds = "modules of the model or their names" if names_ok else "a module of the model (or a list of them)"
        none = ", or None for every layer with parameters" if optional else ""
        raise TypeError(f"{what} must be {kinds}{none}, got {layer!r}")


def relative_representation_stability(*, layer, radius: float = 0.05, n_samples: int = 10,
                                      name: str = "relative_representation_stability") -> Entry:  # fmt: skip
    """`relative_representation_stability` at ``layer`` (a module of the model; lower is better).

    Example:
      >>> entry = xattr.metrics.entries.relative_representation_stability(layer=model.conv2)
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[entry])
    """
    _perturb_checks(radius, n_samples), _check_layers(layer, "layer", optional=False)

    def run(f, a, x, ctx):
        return _relative_representation_stability(ctx.model, a, *_args(x, ctx), layer=layer, radius=radius,
                                                  n_samples=n_samples, argnums=ctx.argnums,
                                                  generator=_seed(ctx))  # fmt: skip

    return Entry(run, "lower", name=name, needs="method")


def randomization(*, similarity="spearman_abs", mode: str = "cascading", layers=None,
                  name: str | None = None) -> Entry:  # fmt: skip
    """`randomization_check`: the similarity of the method's maps on the model with every listed
    layer randomized (the last step of the cascade; lower is better: the maps should depend on
    the weights). Builds the method anew through its ``make`` on deep copies of the model.
    ``similarity``: a name of ``xattr.metrics`` similarity measures ("spearman", "spearman_abs",
    "ssim", "topk") or a function ``(original, randomized) -> (B,)``. `evaluate` keeps every
    step's similarity as a curve over the layers.

    Example:
      >>> entry = xattr.metrics.entries.randomization(similarity="ssim")
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[entry])   # lower: maps that follow the weights
    """
    if not (isinstance(similarity, str) and similarity in MEASURES) and not callable(similarity):
        raise ValueError(f"similarity must be one of {sorted(MEASURES)} or a function (original, randomized) -> "
                         f"(B,), got {similarity!r}")  # fmt: skip
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_layers(layers, "layers", optional=True)
    check_name(name)
    label = getattr(similarity, "__name__", "custom") if callable(similarity) else similarity
    named = name or f"randomization_{label}"
    x_label = "layers randomized, from the output" if mode == "cascading" else "layer randomized (alone)"

    def run(f, a, x, ctx):
        if not isinstance(ctx.model, nn.Module):
            raise TypeError(f"metric {named!r} re-initialises layers: the model must be an nn.Module")
        out = _randomization_check(ctx.model, lambda m: ctx.make(ctx.f_of(m)), _args(x, ctx), mode=mode,
                                   layers=layers, similarity=(similarity,), generator=ctx.run_seed)  # fmt: skip
        (steps,) = out.scores.values()  # (L, B): one measure asked for
        xs = torch.arange(1, len(steps) + 1, dtype=torch.float64)
        return Traced(steps[-1], xs, steps.T, "last", x_label, tuple(str(n) for n in out.layers),
                      f"similarity to the maps of the trained model ({label})")  # fmt: skip

    refuse = _one_input if similarity == "ssim" else None
    return Entry(run, "lower", name=named, needs="method", refuse=refuse)
