"""Bool and integer numbers taken exactly by the perturbation methods: baselines for such inputs
are values their dtype holds, or a clear error (a baseline is copied into such inputs, where a
cast would truncate or wrap); such outputs become floats wide enough for the inputs' precision
(`as_floating`).

NOTE: [Integer outputs]
A model may answer in bool or integer numbers (a vote, a count). Every perturbation method
averages or regresses its outputs, so they become floats, in the widest float dtype among the
default one and the float tensors the model is called with (`output_float_dtype`): a count
past 2^24 from float64 inputs keeps its exact differences (in float32 it was rounded by up to
64 at 2^30), while float32 and integer inputs keep float32 attributions. The engine converts
each output as the model returns it (`perturb.outputs_at`, `perturb.evaluate`), where the
inputs are known, so f(x) and its copies always share one dtype. The rule reads all the model's
tensor arguments, attributed or passed through: `outputs_at` is not told which are attributed,
and a model handed float64 data works in float64. (Always float64 for int64 outputs was not
taken: float32 and integer inputs would get float64 attributions, a change of dtype for the
common small counts.) An int64 count past 2^53 is rounded even in float64.
"""

from __future__ import annotations

import torch

from . import tree as T


def output_float_dtype(args) -> torch.dtype:
    """The float dtype bool and integer model outputs are taken in: the widest among the default
    float dtype and the float tensors of ``args`` (any tree; NOTE: [Integer outputs])."""
    dtype = torch.get_default_dtype()
    for t in T.leaves(args):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def as_floating(out: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Model outputs as numbers every method can average and regress: bool and integer outputs (a
    count, a vote) in ``dtype`` (`output_float_dtype` of the model's arguments; the default float
    dtype when not given), float ones as they are. All perturbation methods take them so: their
    attributions are floats, never rounded to whole numbers (NOTE: [Integer outputs])."""
    if out.is_floating_point() or out.is_complex():
        return out
    return out.to(torch.get_default_dtype() if dtype is None else dtype)


def check_exact(inputs, baselines) -> None:
    """Refuses baselines that bool or integer inputs cannot hold exactly: a fraction (0.5 would
    truncate to 0), NaN, or a value outside the dtype's range (300 would wrap to 44 in uint8).
    Float inputs take any baseline; a structure mismatch is left to the caller to report."""
    def check(x, b):
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
            return
        if isinstance(b, torch.Tensor) and _holds(b, x):
            return
        lo, hi = (0, 1) if x.dtype == torch.bool else (torch.iinfo(x.dtype).min, torch.iinfo(x.dtype).max)
        span = _whole_span(b)
        if span is None or span[0] < lo or span[1] > hi:  # casting would truncate, or wrap (300 -> 44 in uint8)
            raise ValueError(
                f"baselines for a {x.dtype} input must be values of that dtype (e.g. a padding id), whole numbers "
                f"from {lo} to {hi}; got {_offending(b, lo, hi)}"
            )

    n_leaves = len(T.leaves(inputs))
    if isinstance(baselines, (bool, int, float, torch.Tensor)) and (n_leaves == 1 or not isinstance(baselines, torch.Tensor)):
        T.tree_map(lambda x: check(x, baselines), inputs)
        return
    try:
        T.tree_map(check, inputs, baselines)
    except (TypeError, ValueError) as err:
        if "baselines for a" in str(err):
            raise
        # a structure mismatch: baselines_like says so


def _offending(b, lo, hi) -> str:
    """The baseline values that break `check_exact`'s rule (at most 4 of them), for its message."""
    if isinstance(b, (bool, int, float)):
        return repr(b)
    t = torch.as_tensor(b).flatten()
    if not t.is_complex():
        t = t.double() if t.is_floating_point() else t
        t = t[(t < lo) | (t > hi) | (t != t.round())] if t.is_floating_point() else t[(t < lo) | (t > hi)]
    values = t.tolist()
    return f"{values[:4]}{'...' if len(values) > 4 else ''}"


def _holds(b: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether x's dtype holds every value of b without reading them: b of x's dtype or of a
    narrower integer or bool dtype (reference token ids, the usual case); or b's values cannot
    be read (inside vmap or grad, or while compiling: ``.item()`` fails there), and are taken as
    given."""
    if not (b.is_floating_point() or b.is_complex()) and torch.promote_types(b.dtype, x.dtype) == x.dtype:
        return True
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(b)


def _whole_span(b) -> tuple | None:
    """(smallest, largest) value of a baseline given for a bool or integer input, as Python
    numbers (a Python int may not fit a tensor), or None when some value is not a whole number
    (a fraction, NaN, a complex number). An empty baseline spans nothing: (0, 0)."""
    if isinstance(b, (bool, int)):
        return b, b
    if isinstance(b, float):
        return (b, b) if b.is_integer() else None
    t = torch.as_tensor(b)
    if t.is_complex() or (t.is_floating_point() and not (t == t.round()).all()):  # NaN != NaN: refused too
        return None
    if not t.numel():
        return 0, 0
    return t.min().item(), t.max().item()
