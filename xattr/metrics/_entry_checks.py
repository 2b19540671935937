"""The checks of an entry's options, run when the entry is built (NOTE: [Options checked when an
entry is built]).

NOTE: [Options checked when an entry is built]
``evaluate`` computes every method's attributions before it calls a metric, so an option the
metric would refuse (a negative radius, a misspelt order, a string where a function belongs)
would surface only after that work, or after other methods and metrics had run. Every entry
constructor therefore checks its options when it is called: types, ranges and the names it
knows, with the same rules as its metric. What depends on the data (a baseline's shape, a
feature mask's size against the input, a layer inside the model) can only be checked when the
metric runs. Unknown keyword names are refused by Python itself: the constructors take keyword
arguments only.
"""

from __future__ import annotations

import math
import numbers

import torch

NORMS = ("l1", "l2", "linf")


def check_n(value, least: int = 1, what: str = "n_samples") -> int:
    """An entry's count, an int >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{what} must be an int >= {least}, got {value!r}")
    return value


def check_radius(value, what: str = "radius") -> float:
    return check_real(value, what, low=0.0, strict=True)


def check_real(value, what: str, *, low: float | None = None, high: float | None = None, strict: bool = False,
               high_strict: bool = False, meaning: str = "") -> float:  # fmt: skip
    """A finite real number in the given range (``strict``: ``low`` itself excluded; ``high_strict``
    likewise for ``high``); ``meaning`` is added to the message."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high if high_strict else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if strict else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_strict else '<='} {high:g}"
        rng = " and ".join(s for s in (lo, hi) if s)
        raise ValueError(f"{what} must be a finite number{' ' + rng if rng else ''}{meaning}, got {value!r}")
    return value


def check_bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def check_callable(value, what: str, *, optional: bool = False, hint: str = ""):
    if value is None and optional:
        return value
    if not callable(value):
        raise TypeError(f"{what} must be a function{' or None' if optional else ''}{hint}, got {type(value).__name__}")
    return value


def check_steps(value):
    """``n_steps`` of a curve: an int >= 1, or None (one step per feature)."""
    if value is not None:
        check_n(value, 1, "n_steps")
    return value


def check_name(value):
    """An entry's ``name`` where None picks a default: None or a non-empty str."""
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"name must be a non-empty str (or None for the default), got {value!r}")
    return value


def check_baselines(value, what: str = "baselines", *, optional: bool = False):
    """A baseline: a number, a tensor (or array), or a tuple/list of them (one per attributed input)."""
    if value is None and optional:
        return value
    leaves = value if isinstance(value, (tuple, list)) else (value,)
    if not leaves or not all(isinstance(v, numbers.Real) or _as_tensor(v) is not None for v in leaves):
        raise TypeError(f"{what} must be a number, a tensor, or a tuple of them (one per attributed input)"
                        f"{' or None' if optional else ''}, got {_describe(value)}")  # fmt: skip
    return value


def check_feature_mask(value):
    """A feature mask: None, an int tensor of ids >= 0, or a tuple/list of them (one per attributed input)."""
    if value is None:
        return value
    leaves = value if isinstance(value, (tuple, list)) else (value,)
    for m in leaves or (None,):
        t = _as_tensor(m)
        if t is None or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(
                "feature_mask must be None, an int tensor of feature ids (0, 1, ..., F-1), or a tuple of them "
                f"(one per attributed input), got {_describe(value)}; a boolean mask: use mask.long()"
            )
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"feature_mask ids must be >= 0, got a smallest id {int(t.min())}")
    return value


def check_norm(value, what: str = "norm"):
    """A p-norm: "l1", "l2", "linf" or a number >= 1 (math.inf included)."""
    if isinstance(value, str) and value in NORMS:
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"{what} must be 'l1', 'l2', 'linf' or a number >= 1 (math.inf included), got {value!r}")


def check_channel_dim(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"channel_dim must be an int (the channel axis, summed over) or None, got {value!r}")
    return value


def count(value, n: int, what: str) -> int:
    """An int count, or a fraction in (0, 1) of n (at least 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be an int or a fraction in (0, 1), got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not 0 < value < 1:
        raise ValueError(f"{what} as a fraction must lie in (0, 1), got {value!r}")
    return max(1, int(round(value * n)))


def _as_tensor(value) -> torch.Tensor | None:
    """``value`` as a tensor (a tensor, or a numpy array), else None: numbers and strings are not."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, bytes, numbers.Number)) or value is None or not hasattr(value, "__array__"):
        return None
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
