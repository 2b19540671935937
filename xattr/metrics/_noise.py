"""Perturbation functions for the metrics, each drawing with an explicit generator.

They follow NOTE: [Perturbed copies of each example]: called with the copies of one example (or
of all examples when no generator is given) and a ``generator`` keyword.

NOTE: [Removal masks for global attributions]
Infidelity compares ``I . phi`` with ``f(x) - f(x - I)``. A global attribution (integrated
gradients, input x gradient, SHAP) already carries the factor ``x - baseline``: for a linear
``f = w . x`` it is ``phi_j = w_j (x_j - b_j)``, and setting a subset S of elements to their
baselines changes the output by ``sum_{j in S} phi_j``. So for such attributions ``I`` must be
the 0/1 removal indicator of S, not the displacement ``x - perturbed = 1_S (x - b)``, which
counts the input factor twice (and gives the plain gradient ``w`` the perfect score instead).
That is what Captum's ``infidelity_perturb_func_decorator(multiply_by_inputs=True)`` computes
by dividing ``x - perturbed`` by ``x - baseline``; `subset_to_baseline` knows the indicator, so
it divides nothing and needs no guard where ``x == baseline`` (there ``I`` is the indicator,
1 where the element was replaced, and a global attribution is 0 anyway). For local attributions
(the gradient) a perturbation function returning only the perturbed input gives
``I = x - perturbed``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from .._src import tree as T
from .._src.sampling import torch_generator


def _torch_generator(generator, x):
    """`torch_generator` on the device of x's first tensor."""
    return torch_generator(generator, T.leaves(x)[0].device)


def uniform_noise(x, perturb_radius: float = 0.02, *, generator=None):
    """``x + u`` with ``u ~ U(-r, r)`` elementwise: a uniform draw from the L-infinity ball of radius r.

    The default perturbation of `sensitivity_max` (the same distribution as Captum's default).
    ``x`` is a tensor or a tuple of tensors; the result has its structure.

    Example:
      >>> s = xattr.metrics.sensitivity_max(sal, x, perturb_func=xattr.metrics.uniform_noise, perturb_radius=0.05)
      >>> x_near = xattr.metrics.uniform_noise(x, 0.05, generator=0)   # like x
    """

    if isinstance(perturb_radius, bool) or not (isinstance(perturb_radius, numbers.Real) and 0 <= perturb_radius < math.inf):
        raise ValueError(f"perturb_radius must be a finite number >= 0, got {perturb_radius!r}")

    generator = _torch_generator(generator, x)

    def one(t):
        u = torch.empty_like(t).uniform_(-perturb_radius, perturb_radius, generator=generator)
        return t + u

    return T.tree_map(one, x)


def gaussian_noise(std: float = 0.1) -> Callable:
    """A perturbation function for `infidelity`: ``I ~ N(0, std^2 I)``, perturbed input ``x - I``.

    Returns ``perturb(x, *, generator=None) -> (I, x - I)`` (Yeh et al. 2019's noisy baseline
    perturbation). ``x`` is a tensor or a tuple of tensors.

    Example:
      >>> inf = xattr.metrics.infidelity(f, xattr.saliency(f), xattr.metrics.gaussian_noise(0.1), generator=0)(x)
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")

    def perturb(x, *, generator=None):
        generator = _torch_generator(generator, x)
        noise = T.tree_map(lambda t: torch.empty_like(t).normal_(0.0, std, generator=generator), x)
        return noise, T.tree_map(torch.sub, x, noise)

    perturb.__name__ = f"gaussian_noise({std})"
    return perturb


def subset_to_baseline(p: float = 0.5) -> Callable:
    """A perturbation function for `infidelity` with baselines, for global attributions (IG, input
    x gradient, SHAP): each element independently takes its baseline value with probability p.

    Returns ``perturb(x, baselines, *, generator=None) -> (I, perturbed)`` with ``I`` the 0/1
    mask of the replaced elements (NOTE: [Removal masks for global attributions]). ``x`` is a
    tensor or a tuple of tensors; ``baselines`` has its structure and shapes.

    Example:
      >>> ig = xattr.integrated_gradients(f)
      >>> inf = xattr.metrics.infidelity(f, ig, xattr.metrics.subset_to_baseline(0.5), baselines=0.0, generator=0)(x)
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must lie in (0, 1], got {p!r}")

    def perturb(x, baselines, *, generator=None):
        generator = _torch_generator(generator, x)

        def draw(t):
            return torch.empty(t.shape, dtype=t.dtype, device=t.device).bernoulli_(p, generator=generator)

        removed = T.tree_map(draw, x)
        return removed, T.tree_map(lambda t, b, r: torch.where(r != 0, b, t), x, baselines, removed)

    perturb.__name__ = f"subset_to_baseline({p})"
    return perturb
