"""Leaving the user's ``interpretable_model`` fitted after ``Lime``'s batched solve, as Captum's
per-example loop leaves it (fitted on the batch's last example): the built-in solver is wrapped
to record each call's coefficients and intercepts, and the last example's are written into the
object (xattr.compat.captum's SkLearn* models directly, Captum's through their constructor)."""

from __future__ import annotations

import dataclasses

from xattr._src.masks import feature_sets, features
from xattr._src.solvers import BUILT_IN

from ._convert import _captum
from .linear_models import _SolverModel


class _Recording:
    """Mixed into a built-in solver's class: also keeps every call's (coef, intercept), so the
    user's interpretable_model object can be left fitted after the batched solve. Still a
    built-in solver (``xattr.lime`` fits it in memory-budget groups, as the plain one)."""

    def __call__(self, X, y, sample_weight, **kwargs):
        coef, intercept = super().__call__(X, y, sample_weight, **kwargs)
        self.calls.append((coef.detach(), intercept.detach()))
        return coef, intercept


_RECORDING: dict = {}


def _recording(fit):
    """The built-in solver ``fit`` (a frozen dataclass) that also records its results in ``.calls``."""
    kind = type(fit)
    if kind not in _RECORDING:
        _RECORDING[kind] = type(f"recording_{kind.__name__}", (_Recording, kind), {})
    out = _RECORDING[kind](**{f.name: getattr(fit, f.name) for f in dataclasses.fields(fit)})
    object.__setattr__(out, "calls", [])
    return out


def _fitted_model(model, fit) -> bool:
    """Whether ``model`` is an object Captum would leave fitted that xattr fits with the built-in ``fit``."""
    return isinstance(fit, BUILT_IN) and (isinstance(model, _SolverModel) or _captum(
        model, "SkLearnLasso", "SkLearnRidge", "SkLearnLinearRegression"))  # fmt: skip


def _last_example(calls: list, inputs: tuple, mask):
    """The batch's last example's (coef (K, F), intercept (K,)) from a recording solver's calls
    (``xattr.lime`` fits the examples per feature set, in the sets' order, in groups): None if
    they do not add up."""
    if not calls:
        return None
    rows = sum(c.shape[0] for c, _ in calls)  # the examples fitted: 1 for a model returning one number per batch
    masks, n = features(inputs, mask)
    sets = feature_sets(masks, n, rows)
    counts = [s.count(rows) for s in sets]
    if sum(counts) != rows:
        return None
    k = next(i for i, s in enumerate(sets) if s.rows is None or int(s.rows[-1]) == rows - 1)
    at = sum(counts[: k + 1]) - 1  # its place in the calls' order
    for coef, intercept in calls:
        if at < coef.shape[0]:
            c, b = coef[at], intercept[at]
            break
        at -= coef.shape[0]
    ids = sets[k].ids
    if ids is not None:
        c = c.new_zeros(c.shape[0], n).index_copy(1, ids.to(c.device), c)
    return c, b


def _leave_fitted(model, last) -> None:
    """Leaves the user's interpretable_model fitted with ``last``, coef (K, F) and intercept (K,), as
    Captum's fit would (float32 parameters; Captum's own objects on the CPU, through their
    constructor); nothing for None."""
    if last is None:
        return
    coef, intercept = last
    if isinstance(model, _SolverModel):
        model._set(coef, intercept)
        return
    model._construct_model_params(norm_type=None, weight_values=coef.detach().float().cpu(),
                                  bias_value=intercept.detach().float().cpu().reshape(-1), classes=None)  # fmt: skip
