"""The entries of the faithfulness metrics: those that change the input in the attributions'
order (or at random) and read the model's output (NOTE: [Metric entries] in entries.py).
Deletion, insertion and ROAD give curves, kept by `evaluate` (NOTE: [Curves of an evaluation]
in _evaluation_curves.py); their value is the curve's area."""

from __future__ import annotations

import numbers

import torch

from ._curves import deletion as _deletion, insertion as _insertion
from ._entry import Entry, _args, _one_input, _seed
from ._entry_checks import (
    check_baselines,
    check_bool,
    check_callable,
    check_feature_mask,
    check_n,
    check_name,
    check_real,
    check_steps,
    count,
)
from ._faithfulness import (
    faithfulness_correlation as _faithfulness_correlation,
    monotonicity as _monotonicity,
    monotonicity_correlation as _monotonicity_correlation,
)
from ._infidelity import infidelity as _infidelity
from ._noise import gaussian_noise, subset_to_baseline
from ._road import PERCENTAGES, road as _road


def _perturbation(perturb, std: float, p: float):
    if callable(perturb):
        return perturb
    if perturb == "noise":
        return gaussian_noise(check_real(std, "std", low=0.0, strict=True))
    if perturb == "subset":
        return subset_to_baseline(check_real(p, "p", low=0.0, high=1.0, strict=True))
    raise ValueError(f"perturb must be 'subset', 'noise' or a perturbation function, got {perturb!r}")


def infidelity(*, perturb="subset", n_samples: int = 10, normalize: bool = True, std: float = 0.1,
               p: float = 0.5, baselines=0.0, name: str = "infidelity") -> Entry:  # fmt: skip
    """`infidelity` (lower is better). ``perturb``: "subset" (`subset_to_baseline(p)`, each
    element set to ``baselines`` with probability p: suits global attributions such as IG or
    input x gradient), "noise" (`gaussian_noise(std)`: suits gradients) or a perturbation
    function. ``normalize=True`` (not the metric's default) makes it blind to the attributions'
    scale, so that methods of different scales compare.

    Example:
      >>> entry = xattr.metrics.entries.infidelity(perturb="noise", std=0.05)   # for gradient maps
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[entry])
    """
    check_n(n_samples), check_bool(normalize, "normalize")
    fn_perturb = _perturbation(perturb, std, p)
    if perturb == "subset":
        check_baselines(baselines)
    base = baselines if perturb == "subset" else None

    def run(f, a, x, ctx):
        return _infidelity(f, a, fn_perturb, n_perturb_samples=n_samples, normalize=normalize, baselines=base,
                           argnums=ctx.argnums, generator=_seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "lower", name=name)


def _curve_options(n_steps, baselines, feature_mask) -> dict:
    check_steps(n_steps), check_baselines(baselines), check_feature_mask(feature_mask)
    return dict(n_steps=n_steps, baselines=baselines, feature_mask=feature_mask)


def deletion(*, n_steps: int | None = 16, baselines=0.0, feature_mask=None, name: str = "deletion") -> Entry:
    """The area under the `deletion` curve (lower is better); `evaluate` keeps the curves.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.deletion(n_steps=32)])
    """
    kw = _curve_options(n_steps, baselines, feature_mask)
    return Entry(lambda f, a, x, ctx: _deletion(f, a, argnums=ctx.argnums, **kw)(*_args(x, ctx)), "lower", name=name,
                 x_label="fraction of features removed")  # fmt: skip


def insertion(*, n_steps: int | None = 16, baselines=0.0, feature_mask=None, name: str = "insertion") -> Entry:
    """The area under the `insertion` curve (higher is better); `evaluate` keeps the curves.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.insertion(n_steps=32)])
    """
    kw = _curve_options(n_steps, baselines, feature_mask)
    return Entry(lambda f, a, x, ctx: _insertion(f, a, argnums=ctx.argnums, **kw)(*_args(x, ctx)), "higher",
                 name=name, x_label="fraction of features inserted")  # fmt: skip


def faithfulness_correlation(*, subset=0.25, n_samples: int = 20, baselines=0.0, feature_mask=None,
                             name: str = "faithfulness_correlation") -> Entry:  # fmt: skip
    """`faithfulness_correlation` (higher is better); ``subset``: the subset size, an int or a
    fraction of the elements of one example, all attributed inputs together (with a
    ``feature_mask``: of its ids).

    Example:
      >>> entry = xattr.metrics.entries.faithfulness_correlation(subset=0.1, n_samples=50)
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[entry])
    """
    check_n(n_samples, 2), check_baselines(baselines), check_feature_mask(feature_mask)
    if isinstance(subset, numbers.Integral) and not isinstance(subset, bool):
        check_n(int(subset), 1, "subset")
    else:
        count(subset, 1, "subset")  # a fraction: its type and range now, its count per call

    def run(f, a, x, ctx):
        if feature_mask is None:
            n = sum(t[0].numel() for t in (x if isinstance(x, tuple) else (x,)))
        else:
            leaves = feature_mask if isinstance(feature_mask, (tuple, list)) else (feature_mask,)
            n = int(torch.cat([torch.as_tensor(m).flatten() for m in leaves]).unique().numel())
        size = count(subset, n, "subset")
        return _faithfulness_correlation(f, a, subset_size=size, n_samples=n_samples, baselines=baselines,
                                         feature_mask=feature_mask, argnums=ctx.argnums,
                                         generator=_seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "higher", name=name)


def monotonicity(*, baselines=0.0, feature_mask=None, name: str = "monotonicity") -> Entry:
    """`monotonicity` of Arya et al. (higher is better); one model row per feature.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.monotonicity()])
    """
    check_baselines(baselines), check_feature_mask(feature_mask)
    kw = dict(baselines=baselines, feature_mask=feature_mask)
    return Entry(lambda f, a, x, ctx: _monotonicity(f, a, argnums=ctx.argnums, **kw)(*_args(x, ctx)), "higher",
                 name=name)  # fmt: skip


def monotonicity_correlation(*, n_samples: int = 1, perturb_func=None, baselines=None, feature_mask=None,
                             name: str = "monotonicity_correlation") -> Entry:  # fmt: skip
    """`monotonicity_correlation` of Nguyen & Martinez (higher is better).

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, x, metrics=[xattr.metrics.entries.monotonicity_correlation()])
    """
    check_n(n_samples), check_feature_mask(feature_mask)
    check_callable(perturb_func, "perturb_func", optional=True, hint=" (perturb_func(x[, baselines], generator=g))")
    if perturb_func is None:
        check_baselines(baselines, optional=True)  # else they are perturb_func's, whatever it takes
        if n_samples != 1:
            raise ValueError(f"n_samples={n_samples} without a perturb_func: the baseline is one draw, so pass "
                             "n_samples=1, or a perturb_func (e.g. xattr.metrics.uniform_noise)")  # fmt: skip

    def run(f, a, x, ctx):
        return _monotonicity_correlation(f, a, n_samples=n_samples, perturb_func=perturb_func, baselines=baselines,
                                         feature_mask=feature_mask, argnums=ctx.argnums,
                                         generator=None if perturb_func is None else _seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "higher", name=name)


def _unused(*args, **kwargs):
    raise AssertionError("a metric built only to check its options is never called")


def road(*, order: str = "morf", percentages=PERCENTAGES, noise: float = 0.01, counts: str = "nearest",
         name: str | None = None) -> Entry:
    """The area under the `road` curve: "morf" lower is better, "lerf" higher; one attributed
    image (an int ``argnums``; NOTE: [Entries with several inputs]); `evaluate` keeps the curves.
    ``counts``: "nearest" or "authors", as `road`'s.

    Example:
      >>> ev = xattr.metrics.evaluate(model, methods, images, metrics=[xattr.metrics.entries.road(order="lerf")])
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    check_name(name)
    # the metric checks percentages, noise and counts when it is built: build it once, now
    _road(_unused, _unused, percentages=percentages, order=order, noise=noise, counts=counts)

    def run(f, a, x, ctx):
        return _road(f, a, percentages=percentages, order=order, noise=noise, counts=counts, argnums=ctx.argnums,
                     generator=_seed(ctx))(*_args(x, ctx))  # fmt: skip

    return Entry(run, "lower" if order == "morf" else "higher", name=name or f"road_{order}", refuse=_one_input,
                 x_label="fraction of pixels imputed")  # fmt: skip
