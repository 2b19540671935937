"""Baselines for bool and integer inputs: values their dtype holds exactly, or a clear error
(perturbation methods copy a baseline into such inputs, where a cast would truncate or wrap)."""

from __future__ import annotations

import torch

from . import tree as T


def check_exact(inputs, baselines) -> None:
    """Refuses baselines that bool or integer inputs cannot hold exactly: a fraction (0.5 would
    truncate to 0), NaN, or a value outside the dtype's range (300 would wrap to 44 in uint8).
    Float inputs take any baseline; a structure mismatch is left to the caller to report."""
    def check(x, b):
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
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
