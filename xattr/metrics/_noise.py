"""Perturbation functions for the metrics, each drawing with an explicit generator.

They follow NOTE: [Perturbed copies of each example]: called with the copies of one example (or
of all examples when no generator is given) and a ``generator`` keyword.
"""

from __future__ import annotations

from typing import Callable

import torch

from .._src import tree as T


def uniform_noise(x, perturb_radius: float = 0.02, *, generator=None):
    """``x + u`` with ``u ~ U(-r, r)`` elementwise: a uniform draw from the L-infinity ball of radius r.

    The default perturbation of `sensitivity_max` (the same distribution as Captum's default).
    ``x`` is a tensor or a tuple of tensors; the result has its structure.
    """

    def one(t):
        u = torch.empty_like(t).uniform_(-perturb_radius, perturb_radius, generator=generator)
        return t + u

    return T.tree_map(one, x)


def gaussian_noise(std: float = 0.1) -> Callable:
    """A perturbation function for `infidelity`: ``I ~ N(0, std^2 I)``, perturbed input ``x - I``.

    Returns ``perturb(x, *, generator=None) -> (I, x - I)`` (Yeh et al. 2019's noisy baseline
    perturbation). ``x`` is a tensor or a tuple of tensors.
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")

    def perturb(x, *, generator=None):
        noise = T.tree_map(lambda t: torch.empty_like(t).normal_(0.0, std, generator=generator), x)
        return noise, T.tree_map(torch.sub, x, noise)

    perturb.__name__ = f"gaussian_noise({std})"
    return perturb


def subset_to_baseline(p: float = 0.5) -> Callable:
    """A perturbation function for `infidelity` with baselines: each element independently takes its
    baseline value with probability p. ``I = x - perturbed = keep_out * (x - baseline)``.

    Returns ``perturb(x, baselines, *, generator=None) -> perturbed`` (the perturbation is derived).
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must lie in (0, 1], got {p!r}")

    def perturb(x, baselines, *, generator=None):
        def one(t, b):
            out = torch.empty(t.shape, dtype=t.dtype, device=t.device).bernoulli_(p, generator=generator)
            return t + out * (b - t)

        return T.tree_map(one, x, baselines)

    perturb.__name__ = f"subset_to_baseline({p})"
    return perturb
