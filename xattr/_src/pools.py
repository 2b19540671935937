"""Max and average pools, plain and adaptive, 1-3d (kinds ``"max_pool"`` and ``"avg_pool"``): their
spellings and parsers, which ops.py adds to its table, and `pool_with_indices`, which the max-pool
rules (DeepLift's, LRP's) read a pool's argmax from."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _max_pool(make: Callable, nd: int):
    pool = getattr(F, f"max_pool{nd}d_with_indices")

    def parse(func, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        return_indices = return_indices or func is pool
        options = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
        fn = lambda x: pool(x, **options)[0]  # noqa: E731
        return make("max_pool", fn, (input,), dict(options, nd=nd, return_indices=return_indices), func, False)

    return parse


def _adaptive_max_pool(make: Callable, nd: int):
    pool = getattr(F, f"adaptive_max_pool{nd}d_with_indices")

    def parse(func, input, output_size, return_indices=False):
        fn = lambda x: pool(x, output_size)[0]  # noqa: E731
        options = dict(output_size=output_size, nd=nd, return_indices=bool(return_indices) or func is pool)
        return make("max_pool", fn, (input,), options, func, False)

    return parse


_POOL_KEYS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


def pool_with_indices(op, x: torch.Tensor):
    """A max-pool op's output at x and the flat spatial index of each output's argmax (the same
    layout for plain and adaptive max-pools)."""
    nd = op.options["nd"]
    if "output_size" in op.options:
        return getattr(F, f"adaptive_max_pool{nd}d_with_indices")(x, op.options["output_size"])
    return getattr(F, f"max_pool{nd}d_with_indices")(x, **{k: op.options[k] for k in _POOL_KEYS})


def _avg_pool(make: Callable, nd: int):
    pool = getattr(F, f"avg_pool{nd}d")

    def parse(func, input, *rest, **kwargs):
        fn = lambda x: pool(x, *rest, **kwargs)  # noqa: E731
        return make("avg_pool", fn, (input,), {"nd": nd}, func, False)

    return parse


def _adaptive_avg_pool(make: Callable, nd: int):
    pool = getattr(F, f"adaptive_avg_pool{nd}d")

    def parse(func, input, output_size):
        return make("avg_pool", lambda x: pool(x, output_size), (input,), {"nd": nd}, func, False)

    return parse


def spellings(make: Callable) -> list:
    """``[(torch function, kind, parser)]`` of every pool; ``make``: ops.Op."""
    out = []
    for nd in (1, 2, 3):
        for f in (getattr(F, f"max_pool{nd}d"), getattr(torch, f"max_pool{nd}d"), getattr(F, f"max_pool{nd}d_with_indices")):
            out.append((f, "max_pool", _max_pool(make, nd)))
        for f in (getattr(F, f"adaptive_max_pool{nd}d"), getattr(F, f"adaptive_max_pool{nd}d_with_indices")):
            out.append((f, "max_pool", _adaptive_max_pool(make, nd)))
        out.append((getattr(F, f"avg_pool{nd}d"), "avg_pool", _avg_pool(make, nd)))
        out.append((getattr(F, f"adaptive_avg_pool{nd}d"), "avg_pool", _adaptive_avg_pool(make, nd)))
    return out
