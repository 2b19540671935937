"""Robustness metrics over any attack: `attack_comparator` and `min_param_perturbation`.

NOTE: [Attempts grouped into one forward call]
Both functions evaluate the model on attacked copies of the inputs. With
``perturbations_per_eval = n`` up to n copies are concatenated along dim 0 and evaluated in one
call of f, whose output is split back into copies. The copies are joined leaf by leaf over their
pytrees (optree, namespace "xattr"): every tensor leaf with a batch axis is concatenated, so a
tuple of f's arguments, a dict of tensors or any nesting of them travels with its copy; a leaf
without one (a number, a flag, a 0-d tensor) must be the same in every copy and is passed once,
else a TypeError asks for ``perturbations_per_eval=1``: keeping one copy's value for all would
evaluate the other copies on inputs they do not hold. The output is split leaf by leaf too, and
each output leaf must be a tensor with one row per grouped row. For a batch-native model this
changes only the speed, never the numbers. The attacks themselves are called one after
another, in order.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable

import torch

from .._src import tree as T
from .._src.gradients import detached
from .._src.nesting import new_call_inside_model, running_model

ORIGINAL = "Original"
_STATS = ("mean", "min", "max")


def call_model(f: Callable, x):
    """f(x) for a tensor (or any single input), f(*x) for a tuple of f's arguments."""
    return f(*x) if isinstance(x, tuple) else f(x)


def rows(x) -> int:
    """The batch size of one input: dim 0 of its first tensor leaf that has a batch axis."""
    for leaf in T.leaves(x):
        if _batched(leaf):
            return leaf.shape[0]
    raise TypeError(f"cannot group inputs without a batched tensor ({type(x).__name__}): use perturbations_per_eval=1")


def _batched(leaf) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.ndim > 0


def concat(xs: list):
    """Copies of an input joined leaf-wise along dim 0 (NOTE: [Attempts grouped into one forward call])."""
    flat = [T.optree.tree_flatten(x, namespace="xattr") for x in xs]
    treedef = flat[0][1]
    for _, other in flat[1:]:
        if other != treedef:
            raise TypeError(
                f"cannot group copies of different structures ({treedef} and {other}): use perturbations_per_eval=1"
            )
    columns = zip(*(leaves for leaves, _ in flat))
    return T.optree.tree_unflatten(treedef, [_join(list(column)) for column in columns])


def _join(column: list):
    """One leaf of every copy: concatenated when batched, else the value all copies share."""
    first = column[0]
    if all(_batched(v) for v in column):
        return torch.cat([v.to(first.device) for v in column])
    if all(_same(v, first) for v in column[1:]):
        return first
    raise TypeError(
        f"cannot group copies whose {type(first).__name__} leaf without a batch axis differs between copies "
        "(it cannot be concatenated): use perturbations_per_eval=1"
    )


def _same(v, first) -> bool:
    if v is first:
        return True
    if isinstance(v, torch.Tensor) or isinstance(first, torch.Tensor):
        both = isinstance(v, torch.Tensor) and isinstance(first, torch.Tensor)
        return both and v.shape == first.shape and torch.equal(v, first.to(v.device))
    try:
        return bool(v == first)
    except Exception:  # an object whose == is not a truth value
        return False


def split_rows(out, sizes: list) -> list:
    """The output of one grouped call, split leaf-wise into the copies' ``sizes`` rows."""
    total = sum(sizes)

    def check(leaf):
        if not _batched(leaf) or leaf.shape[0] != total:
            shape = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise ValueError(
                f"f returned {shape} for {total} grouped rows; every output must be a tensor with one row "
                "per input row to be split back into copies: use perturbations_per_eval=1"
            )
        return leaf

    out = T.tree_map(check, out)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [T.tree_map(lambda o, s=s, n=n: o[s : s + n], out) for s, n in zip(starts, sizes)]


def grouped_forward(f: Callable) -> Callable:
    """``forward(list of inputs) -> list of outputs`` with one call of f (NOTE above)."""

    def forward(xs: list) -> list:
        with detached(), running_model():  # NOTE: [Attributions inside a model's forward] in nesting.py
            if len(xs) == 1:
                return [call_model(f, xs[0])]
            out = call_model(f, concat(xs))
        return split_rows(out, [rows(x) for x in xs])

    return forward


def _check_per_eval(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"perturbations_per_eval must be a positive int, got {n!r}")


# ----------------------------------------------------------------------------- comparator


def summarize(values: list) -> dict:
    """Mean, min and max over attempts, elementwise (per example for a (B,) metric).

    A metric may be a number, a tensor, or a tuple / named tuple of those (summarized per
    component, the tuple type kept).
    """
    first = values[0]
    if isinstance(first, tuple):
        parts = [summarize([v[i] for v in values]) for i in range(len(first))]
        make = type(first)._make if hasattr(first, "_fields") else tuple
        return {k: make(p[k] for p in parts) for k in _STATS}
    if isinstance(first, torch.Tensor):
        stacked = torch.stack([torch.as_tensor(v) for v in values])
        mean = stacked.mean(0) if stacked.is_floating_point() else stacked.double().mean(0)
        return {"mean": mean, "min": stacked.amin(0), "max": stacked.amax(0)}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def run_comparison(forward: Callable, metric: Callable, metric_kwargs: dict, jobs: Iterable, per_eval: int) -> dict:
    """Evaluates ``jobs`` ((name, make_input) in order), n per call; returns {name: [metric, ...]}."""
    results: dict = {}
    pending: list = []

    def flush():
        outs = forward([x for _, x in pending])
        for (name, _), out in zip(pending, outs):
            results.setdefault(name, []).append(metric(out, **metric_kwargs))
        pending.clear()

    for name, make in jobs:
        pending.append((name, make()))
        if len(pending) == per_eval:
            flush()
    if pending:
        flush()
    return results


def attack_entries(attacks: dict) -> list:
    """{name: attack | (attack, kwargs) | (attack, kwargs, n_attempts)} as (name, attack, kwargs, n)."""
    if not isinstance(attacks, dict):
        raise TypeError("attacks must be a dict {name: attack or (attack, kwargs, n_attempts)}")
    entries = []
    for name, spec in attacks.items():
        if name == ORIGINAL:
            raise ValueError(f"{ORIGINAL!r} names the unperturbed inputs; choose another attack name")
        spec = spec if isinstance(spec, tuple) else (spec,)
        if not 1 <= len(spec) <= 3 or not callable(spec[0]):
            raise TypeError(f"attack {name!r}: give a callable or (callable, kwargs, n_attempts), got {spec!r}")
        kwargs = dict(spec[1]) if len(spec) > 1 and spec[1] is not None else {}
        n = spec[2] if len(spec) > 2 else 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"attack {name!r}: n_attempts must be a positive int, got {n!r}")
        entries.append((name, spec[0], kwargs, n))
    return entries


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def attack_comparator(
    f: Callable,
    x,
    metric: Callable,
    attacks: dict,
    *,
    metric_kwargs: dict | None = None,
    include_original: bool = True,
    perturbations_per_eval: int = 1,
) -> dict:
    """The model's metric on the inputs and under each attack: mean, min and max over attempts.

    For each attack ``a`` with ``n`` attempts, ``m_k = metric(f(a(x, **kwargs)), **metric_kwargs)``
    for k = 1..n, and the summary is the elementwise mean, min and max of m_1..m_n (average,
    worst and best case for an accuracy-like metric; with n = 1 all three are m_1).

    Args:
      f: the model function; called as f(x), or f(*x) when x is a tuple of its arguments.
      x: the inputs, passed unchanged to every attack.
      metric: ``metric(outputs, **metric_kwargs)`` -> a number, a tensor (per-example values
        (B,) are kept per example), or a tuple / named tuple of those.
      attacks: ``{name: attack}``, ``{name: (attack, kwargs)}`` or ``{name: (attack, kwargs,
        n_attempts)}``; ``attack(x, **kwargs)`` returns perturbed inputs like x, e.g.
        ``functools.partial(xattr.robust.fgsm, f)`` with kwargs ``{"epsilon": 0.1, "target": y}``,
        or any random augmentation (use n_attempts > 1 for random ones).
      metric_kwargs: keyword arguments of the metric (labels, say).
      include_original: add the entry "Original": the metric on the unperturbed inputs.
      perturbations_per_eval: attacked copies evaluated per call of f (NOTE: [Attempts grouped
        into one forward call]).

    Returns:
      ``{name: {"mean": ..., "min": ..., "max": ...}}``, "Original" first when included.

    Example:
      >>> acc = lambda out, y: (out.argmax(1) == y).float()
      >>> res = xattr.robust.attack_comparator(model, x, acc, {"fgsm": (partial(fgsm, model), {"epsilon": 0.1})},
      ...                                       metric_kwargs={"y": y})
    """
    _check_per_eval(perturbations_per_eval)
    entries = attack_entries(attacks)
    kwargs = dict(metric_kwargs or {})

    def jobs():
        if include_original:
            yield ORIGINAL, lambda: x
        for name, attack, attack_kwargs, n in entries:
            for _ in range(n):
                yield name, lambda attack=attack, attack_kwargs=attack_kwargs: attack(x, **attack_kwargs)

    values = run_comparison(grouped_forward(f), metric, kwargs, jobs(), perturbations_per_eval)
    return {name: summarize(v) for name, v in values.items()}


# ----------------------------------------------------------------------------- minimal parameter


def grid_size(arg_min, arg_max, arg_step) -> int:
    """How many grid values ``arg_min + i * arg_step`` lie below ``arg_max``.

    NOTE: [The search grid]
    The i-th candidate is computed from its index, ``arg_min + i * arg_step``, and a value within
    1e-9 steps of ``arg_max`` counts as ``arg_max``, which is excluded. Captum accumulates
    ``value += arg_step``, whose rounding errors add up: for (0, 1, 0.1) its eleventh value is
    0.9999999999999999 < 1, so its linear search also tries (in effect) arg_max, and its binary
    search, which steps from its bounds, may or may not. By index, both modes search the same
    grid and return the very same float for the same grid point.
    """
    below = lambda i: arg_min + i * arg_step < arg_max - 1e-9 * arg_step  # noqa: E731
    n = max(0, math.ceil((arg_max - arg_min) / arg_step))
    while n > 0 and not below(n - 1):
        n -= 1
    while below(n):
        n += 1
    return n


def all_correct(outputs: torch.Tensor, target=None) -> bool:
    """The default ``correct_fn``: every example's argmax equals its target."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        raise ValueError("the default correct_fn needs outputs of shape (B, C); pass correct_fn for other outputs")
    if target is None:
        raise ValueError("the default correct_fn needs target= (the true labels)")
    return bool((outputs.argmax(1) == torch.as_tensor(target, device=outputs.device)).all())


def search(mode: str, arg_min, arg_max, arg_step, n_attempts: int, per_eval: int, make: Callable, first_wrong: Callable):
    """Captum's linear or binary search for the smallest parameter at which the model is wrong.

    ``make(value) -> (model input, returned input)`` runs the attack once; ``first_wrong(list of
    model inputs)`` evaluates them in one call and gives the index of the first incorrect one or None.
    Both modes run over the indices of the grid (NOTE: [The search grid]).
    """
    n = grid_size(arg_min, arg_max, arg_step)
    value_at = lambda i: arg_min + i * arg_step  # noqa: E731
    if mode == "linear":
        pending = []
        for value in map(value_at, range(n)):
            for _ in range(n_attempts):
                pending.append((value, *make(value)))
                if len(pending) == per_eval:
                    found = first_wrong([p[1] for p in pending])
                    if found is not None:
                        return pending[found][2], pending[found][0]
                    pending = []
        if pending:
            found = first_wrong([p[1] for p in pending])
            if found is not None:
                return pending[found][2], pending[found][0]
        return None, None
    low, high, best, best_input = 0, n, None, None  # indices: low untested or correct, high wrong or n
    while high > low:
        mid = low + (high - low) // 2  # low itself once only it is left
        success, pending = False, []
        for i in range(n_attempts):
            pending.append(make(value_at(mid)))
            if len(pending) == per_eval or i == n_attempts - 1:
                found = first_wrong([p[0] for p in pending])
                if found is not None:
                    success, high = True, mid
                    best, best_input = value_at(mid), pending[found][1]
                    break
                pending = []
        if mid == low:
            break
        if not success:
            low = mid
    return best_input, best


def check_search(arg_min, arg_max, arg_step, mode: str) -> str:
    bounds = (arg_min, arg_max, arg_step)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in bounds):
        raise ValueError(f"arg_min, arg_max and arg_step must be finite numbers, got {bounds}")
    if not arg_step > 0:
        raise ValueError(f"arg_step must be positive, got {arg_step}")
    if not arg_max > arg_min + arg_step:
        raise ValueError(f"arg_max ({arg_max}) must exceed arg_min + arg_step ({arg_min} + {arg_step})")
    if not isinstance(mode, str) or mode.lower() not in ("linear", "binary"):
        raise ValueError(f"mode must be 'linear' or 'binary', got {mode!r}")
    return mode.lower()


@new_call_inside_model
def min_param_perturbation(
    f: Callable,
    x,
    attack: Callable,
    arg_name: str,
    arg_min,
    arg_max,
    arg_step,
    *,
    mode: str = "linear",
    correct_fn: Callable | None = None,
    target: Any = None,
    n_attempts: int = 1,
    attack_kwargs: dict | None = None,
    correct_kwargs: dict | None = None,
    perturbations_per_eval: int = 1,
):
    """The smallest attack parameter (on a grid) at which the model is no longer correct.

    The candidates are ``arg_min, arg_min + arg_step, ...`` below ``arg_max``. For a value v the
    inputs are ``a = attack(x, **attack_kwargs, arg_name=v)`` (``n_attempts`` times) and the model
    is wrong when ``correct_fn(f(a), target=target, **correct_kwargs)`` is False; by default
    correct means *every* example of the batch keeps its label (Captum's per-batch semantics;
    call it on a single example for a per-example threshold). ``mode="linear"`` tries the values
    in order; ``"binary"`` bisects the grid, assuming that larger values fool the model more.

    Args:
      f: the model function; called as f(a), or f(*a) for a tuple of its arguments.
      x: the inputs given to the attack.
      attack: ``attack(x, **kwargs)`` -> perturbed inputs, e.g. ``partial(xattr.robust.fgsm, f, target=y)``.
      arg_name: the attack's keyword searched over (``"epsilon"``).
      arg_min, arg_max, arg_step: the grid ``arg_min + i * arg_step`` below arg_max (arg_max, and a
        value within 1e-9 steps of it, excluded; NOTE: [The search grid]); arg_step > 0.
      mode: "linear" or "binary".
      correct_fn: ``correct_fn(outputs, **kw) -> bool``; default: argmax equals target for all.
      target: passed to correct_fn as ``target=`` when given.
      n_attempts: attacks per value (> 1 for random attacks: one wrong attempt suffices).
      attack_kwargs, correct_kwargs: further keywords of the attack and of correct_fn.
      perturbations_per_eval: attacked copies per call of f (NOTE: [Attempts grouped into one
        forward call]).

    Returns:
      ``(perturbed inputs, value)`` for the smallest value found, or ``(None, None)``.

    Example:
      >>> x_adv, eps = xattr.robust.min_param_perturbation(
      ...     model, x, partial(xattr.robust.fgsm, model, target=y), "epsilon", 0.0, 1.0, 0.01, target=y)
    """
    mode = check_search(arg_min, arg_max, arg_step, mode)
    _check_per_eval(perturbations_per_eval)
    correct = correct_fn if correct_fn is not None else all_correct
    kwargs = dict(correct_kwargs or {})
    if target is not None:
        kwargs["target"] = target
    forward = grouped_forward(f)

    def make(value):
        a = attack(x, **(attack_kwargs or {}), **{arg_name: value})
        return a, a

    def first_wrong(inputs: list):
        for i, out in enumerate(forward(inputs)):
            if not correct(out, **kwargs):
                return i
        return None

    return search(mode, arg_min, arg_max, arg_step, n_attempts, perturbations_per_eval, make, first_wrong)
