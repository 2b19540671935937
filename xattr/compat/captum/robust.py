"""Captum's ``captum.robust`` classes over ``xattr.robust``: FGSM, PGD, AttackComparator, MinParamPerturbation.

    from xattr.compat.captum import FGSM, PGD   # was: from captum.robust import ...

Constructor arguments, ``perturb`` / ``evaluate`` keywords and return conventions are Captum
0.9's (tensor in -> tensor out, tuple in -> tuple out, ``(None, None)`` when no parameter fools
the model). The default loss is Captum's: ``-log(outputs)`` at the target, for a model that
returns probabilities. Differences (docs/robustness.md): the ``bound`` attribute is read-only
(bounds are the constructor's), PGD's L2 random start draws one radius per example (Captum's
broadcasts a (B,) radius against the last axis), ``generator=`` (xattr only) seeds it, the
search grid is built by index (Captum's repeated addition can reach arg_max), and an empty
batch gives empty results.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

import xattr
from xattr._src import tree as T
from xattr._src.nesting import new_call_inside_model, running_model
from xattr.robust import _metrics as M

from ._convert import captum_target, extra_args


def _inputs(inputs) -> tuple[tuple, bool]:
    is_tuple = isinstance(inputs, tuple)
    inputs = inputs if is_tuple else (inputs,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("inputs must be a tensor or a non-empty tuple of tensors (Captum's convention)")
    return inputs, is_tuple


def _neg_log_loss(outputs: torch.Tensor, target) -> torch.Tensor:
    """Captum's default attack loss: ``-log(outputs)`` at the target (outputs are probabilities)."""
    if outputs.shape[0] == 0:  # an empty batch: no target to select (its attack is empty too)
        return outputs.new_zeros(0)
    t = captum_target(target, outputs.shape[0])
    neg_log = lambda out: -torch.log(out)  # noqa: E731
    return neg_log(outputs) if t is None else xattr.target(neg_log, t)(outputs)



class _NormError(ValueError, AssertionError):
    """PGD's unknown norm: an AssertionError as Captum raises it, and a ValueError as xattr's
    bad arguments are, so code catching either works."""

class _FiniteValue(torch.autograd.Function):
    """The loss with its nan/inf values read as 0 and its gradient unchanged (NOTE below).

    NOTE: [Captum's non-finite losses]
    Captum differentiates whatever the loss is and moves an element by the sign of its gradient
    only where ``|g| > zero_thresh``: an example whose target probability underflowed to 0
    (``-log(0) = inf``) gets a nan gradient through a softmax and stays where it is, while the
    other examples are attacked; an infinite gradient (-log of an output that is exactly 0 and
    linear in the input) still moves its element by its sign. ``xattr.robust``'s attacks refuse a
    non-finite loss (NOTE: [A non-finite attack loss]), so the adapter hands them the same
    gradient under a finite value, which nothing reads: the attack uses only the gradient.
    """

    generate_vmap_rule = True  # composes with torch.func transforms

    @staticmethod
    def forward(loss: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _captum_loss(loss_func: Callable) -> Callable:
    """``loss_func`` as Captum's FGSM step sees it: only its gradient counts (NOTE above)."""
    return lambda outputs, target: _FiniteValue.apply(loss_func(outputs, target))


class Perturbation:
    """Base of the attacks (Captum's ``captum.robust.Perturbation``): a subclass writes
    ``perturb(inputs, ...)``, and calling the object calls it."""

    def __call__(self, *args, **kwargs):
        return self.perturb(*args, **kwargs)


class _Attack(Perturbation):
    """Shared state of FGSM and PGD."""

    def __init__(self, forward_func: Callable, loss_func: Callable | None, lower_bound: float, upper_bound: float):
        self.forward_func = forward_func
        self.loss_func = loss_func
        self.lower_bound, self.upper_bound = lower_bound, upper_bound
        self._bound = None  # a function the user assigned to ``bound``

    @property
    def bound(self) -> Callable:
        """The function keeping each perturbed input valid: the clamp to [lower_bound, upper_bound],
        or the function assigned to it (as in Captum: ``attack.bound = my_fn``)."""
        if self._bound is not None:
            return self._bound
        return lambda x: torch.clamp(x, min=self.lower_bound, max=self.upper_bound)

    @bound.setter
    def bound(self, fn: Callable) -> None:
        if not callable(fn):
            raise TypeError(f"bound must be a function tensor -> tensor, got {type(fn).__name__}")
        self._bound = fn

    def _attack(self, core: Callable, inputs, target, additional_forward_args, mask, **keywords):
        inputs, is_tuple = _inputs(inputs)
        if mask is not None and not is_tuple and isinstance(mask, tuple):
            mask = mask[0]
        out = core(
            self.forward_func,
            inputs + extra_args(additional_forward_args),
            target=target,
            loss=_captum_loss(self.loss_func if self.loss_func is not None else _neg_log_loss),
            mask=mask,
            **({"bound": self._bound} if self._bound is not None
               else {"lower_bound": self.lower_bound, "upper_bound": self.upper_bound}),
            argnums=tuple(range(len(inputs))),
            **keywords,
        )
        out = out[: len(inputs)]
        return out if is_tuple else out[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.forward_func!r})"


class FGSM(_Attack):
    """``FGSM(forward_func, loss_func=None, lower_bound, upper_bound)``; xattr: ``xattr.robust.fgsm``.

    ``perturb(inputs, epsilon, target, ...)``: one step ``x + s * epsilon * sign(grad)`` (s = -1
    when targeted), masked, clamped to the bounds; gradient entries with ``|g| <= zero_thresh``
    (1e-6, an attribute as in Captum) leave their element unchanged.
    """

    def __init__(self, forward_func: Callable, loss_func: Callable | None = None,
                 lower_bound: float = float("-inf"), upper_bound: float = float("inf")) -> None:  # fmt: skip
        super().__init__(forward_func, loss_func, lower_bound, upper_bound)
        self.zero_thresh = 10**-6

    def perturb(self, inputs, epsilon: float, target: Any, additional_forward_args: Any = None,
                targeted: bool = False, mask=None):  # fmt: skip
        return self._attack(
            xattr.robust.fgsm, inputs, target, additional_forward_args, mask,
            epsilon=epsilon, targeted=targeted, zero_threshold=self.zero_thresh,
        )  # fmt: skip


class PGD(_Attack):
    """``PGD(forward_func, loss_func=None, lower_bound, upper_bound)``; xattr: ``xattr.robust.pgd``.

    ``perturb(inputs, radius, step_size, step_num, target, ...)``: sign steps projected to the
    Linf or L2 ball and clamped, as Captum (its ``fgsm`` attribute's ``zero_thresh`` applies).
    ``generator`` (xattr only) seeds the random start; torch's global generator by default.
    """

    def __init__(self, forward_func: Callable, loss_func: Callable | None = None,
                 lower_bound: float = float("-inf"), upper_bound: float = float("inf")) -> None:  # fmt: skip
        super().__init__(forward_func, loss_func, lower_bound, upper_bound)
        self.fgsm = FGSM(forward_func, loss_func)

    def perturb(self, inputs, radius: float, step_size: float, step_num: int, target: Any,
                additional_forward_args: Any = None, targeted: bool = False, random_start: bool = False,
                norm: str = "Linf", mask=None, *, generator=None):  # fmt: skip
        if norm not in ("Linf", "L2"):  # Captum's message and AssertionError, and a ValueError as xattr's errors are
            raise _NormError(f"Norm constraint must be L2 or Linf (got norm={norm!r}).")
        return self._attack(
            xattr.robust.pgd, inputs, target, additional_forward_args, mask, radius=radius, step_size=step_size,
            step_num=step_num, norm=norm, random_start=random_start, targeted=targeted, generator=generator,
            zero_threshold=self.fgsm.zero_thresh,
        )  # fmt: skip


def _captum_forward(forward_func: Callable, additional_forward_args) -> Callable:
    """Captum's evaluation of attacked copies: ``forward_func(inputs, *extra)``, the inputs one
    argument even when a tuple, n copies concatenated with tensor extras repeated n times."""
    extra = extra_args(additional_forward_args)

    def forward(xs: list) -> list:
        n = len(xs)
        args = tuple(torch.cat([a] * n) if isinstance(a, torch.Tensor) and a.ndim > 0 else a for a in extra)
        with torch.no_grad(), running_model():  # NOTE: [Attributions inside a model's forward] in nesting.py
            if n == 1:
                return [forward_func(xs[0], *args)]
            out = forward_func(M.concat(xs), *args)
        return M.split_rows(out, [M.rows(x) for x in xs])

    return forward


def _as_tensors(value):
    """Captum's summaries hold tensors: numbers become float32 tensors, tuples per component."""
    if isinstance(value, tuple):
        items = [_as_tensors(v) for v in value]
        return type(value)._make(items) if hasattr(value, "_fields") else tuple(items)
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float)


def _batch_mean(value):
    """Captum's aggregation across batches: tensors averaged over dim 0."""
    if isinstance(value, tuple):
        items = [_batch_mean(v) for v in value]
        return type(value)._make(items) if hasattr(value, "_fields") else tuple(items)
    return value.mean(dim=0) if isinstance(value, torch.Tensor) else value


class AttackComparator:
    """``AttackComparator(forward_func, metric, preproc_fn=None)``; xattr: ``xattr.robust.attack_comparator``.

    ``add_attack(...)`` then ``evaluate(inputs, ...)`` per batch: ``{"Original": metric,
    name: {"mean": ...}}`` for one attempt, ``{"mean", "min", "max"}`` for several;
    ``summary()`` averages the results of every batch since construction or ``reset()``.
    """

    def __init__(self, forward_func: Callable, metric: Callable, preproc_fn: Callable | None = None) -> None:
        self.forward_func = forward_func
        self.metric = metric
        self.preproc_fn = preproc_fn
        self.attacks: dict = {}
        self._running: dict = {}

    def add_attack(self, attack: Callable, name: str | None = None, num_attempts: int = 1,
                   apply_before_preproc: bool = True, attack_kwargs: dict | None = None,
                   additional_attack_arg_names: list | None = None) -> None:  # fmt: skip
        name = type(attack).__name__ if name is None else name
        if name in self.attacks:
            raise RuntimeError(f"Cannot add attack with same name as existing attack {name}")
        self.attacks[name] = (attack, num_attempts, apply_before_preproc, dict(attack_kwargs or {}),
                              list(additional_attack_arg_names or []))  # fmt: skip

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def evaluate(self, inputs, additional_forward_args: Any = None, perturbations_per_eval: int = 1, **kwargs) -> dict:
        preproc_input = self.preproc_fn(inputs) if self.preproc_fn is not None else inputs

        def attempt(attack, before, attack_kwargs):
            if before:
                attacked = attack(inputs, **attack_kwargs)
                return self.preproc_fn(attacked) if self.preproc_fn else attacked
            return attack(preproc_input, **attack_kwargs)

        def jobs():
            yield M.ORIGINAL, lambda: preproc_input
            for name, (attack, n, before, attack_kwargs, arg_names) in self.attacks.items():
                for key in arg_names:
                    if key not in kwargs:
                        warnings.warn(f"Additional sample arg {key} not provided for {name}", stacklevel=3)
                keywords = {**{k: kwargs[k] for k in arg_names if k in kwargs}, **attack_kwargs}
                for _ in range(n):
                    yield name, lambda a=attack, b=before, kw=keywords: attempt(a, b, kw)

        forward = _captum_forward(self.forward_func, additional_forward_args)
        values = M.run_comparison(forward, lambda out, **kw: _as_tensors(self.metric(out, **kw)), kwargs, jobs(),
                                  perturbations_per_eval)  # fmt: skip
        results: dict = {M.ORIGINAL: M.summarize(values[M.ORIGINAL])["mean"]}
        # An empty batch says nothing about the attacks: it is left out of `summary` (Captum
        # averages its empty means in, and every later summary is nan).
        counted = not _empty(preproc_input)
        if counted:
            self._update(M.ORIGINAL, results[M.ORIGINAL])
        for name, (_, n, *_rest) in self.attacks.items():
            stats = M.summarize(values[name])
            results[name] = {"mean": stats["mean"]} if n == 1 else stats
            for key, value in results[name].items() if counted else ():
                self._update(name if n == 1 else f"{name} {key.title()} Attempt", value)
        return results

    def _update(self, key: str, value) -> None:
        value = _batch_mean(value)
        count, mean = self._running.get(key, (0, None))
        count += 1
        if mean is None:
            mean = _map(lambda v: v.clone() if v.is_floating_point() else v.double(), value)
        else:
            mean = _map(lambda m, v: m + (v - m) / count, mean, value)
        self._running[key] = (count, mean)

    def summary(self) -> dict:
        return {key: {"mean": mean} for key, (_, mean) in self._running.items()}

    def reset(self) -> None:
        self._running = {}


def _empty(inputs) -> bool:
    """Whether a batch has no examples: its batched tensors have 0 rows."""
    return any(isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == 0 for t in T.leaves(inputs))


def _map(fn: Callable, value, *rest):
    if isinstance(value, tuple):
        items = [_map(fn, *parts) for parts in zip(value, *rest)]
        return type(value)._make(items) if hasattr(value, "_fields") else tuple(items)
    return fn(value, *rest)


class MinParamPerturbation:
    """``MinParamPerturbation(forward_func, attack, arg_name, arg_min, arg_max, arg_step, ...)``;
    xattr: ``xattr.robust.min_param_perturbation``.

    ``evaluate(inputs, ..., target=...)`` returns ``(perturbed inputs, value)`` for the smallest
    value of ``arg_name`` on the grid that makes ``correct_fn`` False, or ``(None, None)``.
    """

    def __init__(self, forward_func: Callable, attack: Callable, arg_name: str, arg_min, arg_max, arg_step,
                 mode: str = "linear", num_attempts: int = 1, preproc_fn: Callable | None = None,
                 apply_before_preproc: bool = False, correct_fn: Callable | None = None) -> None:  # fmt: skip
        self.mode = M.check_search(arg_min, arg_max, arg_step, mode)
        self.forward_func, self.attack, self.arg_name = forward_func, attack, arg_name
        self.arg_min, self.arg_max, self.arg_step = arg_min, arg_max, arg_step
        self.num_attempts = num_attempts
        self.preproc_fn, self.apply_before_preproc = preproc_fn, apply_before_preproc
        self.correct_fn = correct_fn if correct_fn is not None else M.all_correct

    @new_call_inside_model
    def evaluate(self, inputs, additional_forward_args: Any = None, target: Any = None, perturbations_per_eval: int = 1,
                 attack_kwargs: dict | None = None, correct_fn_kwargs: dict | None = None):  # fmt: skip
        preproc_input = self.preproc_fn(inputs) if self.preproc_fn else inputs
        kwargs = {} if target is None else {"target": target}
        kwargs.update(correct_fn_kwargs or {})
        forward = _captum_forward(self.forward_func, additional_forward_args)

        def make(value):
            keywords = {**(attack_kwargs or {}), self.arg_name: value}
            if self.apply_before_preproc:
                attacked = self.attack(inputs, **keywords)
                return (self.preproc_fn(attacked) if self.preproc_fn else attacked), attacked
            attacked = self.attack(preproc_input, **keywords)
            return attacked, attacked

        def first_wrong(xs: list):
            for i, out in enumerate(forward(xs)):
                if not self.correct_fn(out, **kwargs):
                    return i
            return None

        return M.search(self.mode, self.arg_min, self.arg_max, self.arg_step, self.num_attempts,
                        perturbations_per_eval, make, first_wrong)  # fmt: skip
