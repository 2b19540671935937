"""Attribution functions called from inside a model's forward run as calls of their own.

NOTE: [Attributions inside a model's forward]
xattr keeps per-call state in context variables: the batch scope and the record of shared
pass-through tensors (tree.py), DeepLift's shared reference rows (tree.py) and paired rows
(deeplift_rules.py), the copy blocks of seeded draws (sampling.py), LRP's input copies and its
layer flag (input_copies.py, lrp_rules.py), the graph nodes a ruled call found to depend on its
input (dependence.py); and the rule methods run the model under a
TorchFunctionMode (rules.py). That state is set up for the methods a user composes: in
``smoothgrad(integrated_gradients(f))`` the noise tunnel calls the inner attribution function
itself, inside the batch scope and copy blocks it made for it. A model whose forward itself
calls an attribution function (a saliency-guided model, an explanation-regularised
architecture, ``integrated_gradients(lambda x: saliency(f)(x).sum(1))``) is another thing: the
outer method's state describes the rows it runs the model on, not the inner call. Inherited, it
made the inner call refuse its own per-example target ("a per-example tensor has 16 rows but the
inputs have a batch of 4"), moved its random draws, and under a rule method sent the inner
gradient through the outer rules (the forward value of such a model changed by 0.048 on a 0.33
scale, where the rules promise an unchanged forward pass).

So the methods mark the region where they run the model function (`running_model`): the
forward of the VJP (`gradients._forward`), `gradients.model_calls` (perturbation methods,
completeness gaps, metrics), a prepared call (prepared.py), a layer split's run (layers.py), a
`Ruled` model's call (rules.py), and the model calls of the attacks and robustness metrics (an
attack's prediction, `robust._metrics.grouped_forward`, Captum's AttackComparator and
MinParamPerturbation). An attribution function entered inside that region (the wrapper
`gradients.attribution_fn` makes; feature ablation and occlusion, which skip it, check at their
own entry) runs as a new outermost call (`as_new_call`). The metrics and the robustness
functions (xattr.metrics: sensitivity_max, infidelity, deletion, insertion, sparseness,
complexity, randomization_check; xattr.robust: fgsm, pgd, attack_comparator,
min_param_perturbation; Captum's AttackComparator and MinParamPerturbation ``evaluate``) skip
that wrapper too and do the same at their entry (`new_call_inside_model`): inside a model they
inherited the outer state, so sensitivity_max's own inner calls (the model region still marked)
started over without the batch scope it made for them, infidelity and the curves met the outer
batch scope ("a per-example tensor has 16 rows but the inputs have a batch of 4"), and pgd's
seeded random start moved with the outer copy blocks (tests/test_metrics_in_forward.py). A new
outermost call has every per-call variable at its default, the mark cleared (its own model
calls set it again), and the outer call's rule modes taken off torch's function-mode stack for
its duration (other modes stay, in order).
Composition is untouched: an outer method calls its inner attribution function directly,
outside any model region, and sees the state made for it as before. ``rules(attribution_fn)``
is composition too (the rules apply to the gradient the function takes): a `Ruled` that wraps
an attribution function marks nothing and runs it under its own mode (inside a model region,
as a new call first). Split hooks act only at the nesting depth their split runs at (`depth`),
so a layer inside the sub-network an inner call explains is not counted or replaced by the
outer split. A context variable that nesting must keep (`rule_limits._CONSTANT_LEVELS`, the
transforms held constant around the whole call) is listed in `INHERITED`; tests check that
every other one of xattr's context variables is reset.

Cost on the common path: one context-variable read per attribution, metric or attack call, and
a set and reset per model call (a fraction of a microsecond).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Callable

import torch

_IN_MODEL: contextvars.ContextVar = contextvars.ContextVar("xattr_in_model", default=False)
_DEPTH: contextvars.ContextVar = contextvars.ContextVar("xattr_nesting_depth", default=0)

inside_model = _IN_MODEL.get  # whether a method is running the model function here
depth = _DEPTH.get  # how many attribution calls entered from inside a model enclose this point

INHERITED = frozenset({"xattr_constant_levels"})  # context variables a nested call keeps (see the NOTE)


class running_model:
    """Marks the region where a method runs the model function (NOTE: [Attributions inside a
    model's forward]); ``no_grad=True`` also switches gradients off for it. A class, not a
    generator context manager: it is entered on every model call."""

    __slots__ = ("no_grad", "grad", "token")

    def __init__(self, no_grad: bool = False):
        self.no_grad, self.grad, self.token = no_grad, None, None

    def __enter__(self) -> None:
        if self.no_grad:
            self.grad = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
        self.token = _IN_MODEL.set(True)

    def __exit__(self, *exc) -> None:
        _IN_MODEL.reset(self.token)
        if self.no_grad:
            torch._C._set_grad_enabled(self.grad)


def marked(fn: Callable) -> Callable:
    """fn, run inside `running_model` (for a model function handed to torch.func.vjp)."""

    def run(*args):
        with running_model():
            return fn(*args)

    return run


@functools.cache
def per_call_state() -> tuple:
    """(variable, default) for every context variable a new call starts from (NOTE above)."""
    from .deeplift_rules import _ROWS  # noqa: PLC0415 (these modules import this one's users)
    from .dependence import _PROVEN  # noqa: PLC0415
    from .input_copies import INPUT_COPIES  # noqa: PLC0415
    from .lrp_input_rules import ABOVE_SPLIT  # noqa: PLC0415
    from .rule_limits import RULED_VJP  # noqa: PLC0415
    from .sampling import _COPIES  # noqa: PLC0415
    from .tree import _BATCH, _SHARED  # noqa: PLC0415

    fresh = contextvars.Context()  # where every variable reads its default
    return tuple((v, fresh.run(v.get))
                 for v in (_BATCH, _SHARED, _COPIES, _ROWS, INPUT_COPIES, ABOVE_SPLIT, _IN_MODEL, _PROVEN, RULED_VJP))


def new_call_inside_model(fn: Callable) -> Callable:
    """fn, run as a new outermost call (`as_new_call`) when entered inside a model's forward:
    the entry check of the metrics and robustness functions, which skip `attribution_fn`'s
    wrapper (NOTE: [Attributions inside a model's forward]). One context-variable read per call."""

    @functools.wraps(fn)
    def entry(*args, **kwargs):
        if _IN_MODEL.get():
            return as_new_call(fn, args, kwargs)
        return fn(*args, **kwargs)

    entry.enters_as_new_call = True  # tests check that every public metric and attack has it
    return entry


def as_new_call(fn: Callable, args: tuple, kwargs: dict):
    """``fn(*args, **kwargs)`` as an outermost attribution call: per-call state at its defaults,
    one nesting level deeper, without the rule modes of the call around it."""
    tokens = [(v, v.set(default)) for v, default in per_call_state()]
    tokens.append((_DEPTH, _DEPTH.set(_DEPTH.get() + 1)))
    try:
        with _without_rule_modes():
            return fn(*args, **kwargs)
    finally:
        for v, token in reversed(tokens):
            v.reset(token)


class _without_rule_modes:
    """Takes the function modes marked ``nested_calls_skip`` (xattr's rule modes) off torch's
    function-mode stack, and puts the stack back as it was on exit."""

    __slots__ = ("modes", "kept")

    def __enter__(self) -> None:
        n = torch._C._len_torch_function_stack()
        modes = [torch._C._get_function_stack_at(i) for i in range(n)]  # bottom first
        self.modes = self.kept = None
        if not any(getattr(m, "nested_calls_skip", False) for m in modes):
            return
        for _ in range(n):
            torch._C._pop_torch_function_stack()
        self.modes, self.kept = modes, [m for m in modes if not getattr(m, "nested_calls_skip", False)]
        for m in self.kept:
            torch._C._push_on_torch_function_stack(m)

    def __exit__(self, *exc) -> None:
        if self.modes is None:
            return
        for _ in range(len(self.kept)):
            torch._C._pop_torch_function_stack()
        for m in self.modes:
            torch._C._push_on_torch_function_stack(m)
