"""LIME's exp kernel similarity, and its weights for all coalitions from per-feature sums.

NOTE: [Similarity weights' precision]
LIME's similarity weights are computed, and handed to the solver, in the output's dtype
promoted to at least float32 (the built-in solvers fit in float64 anyway): in float16 eps^2 =
1e-16 underflows to 0 (the empty coalition at a zero baseline gave cosine 0/0) and |x|^2
overflows for inputs of a few hundred. `exp_kernel_similarity`'s closed form sums only terms
of one sign per coalition, never a total minus the kept part: |x - x(z)|^2 = sum_f (1 - z_f)
sum_{i in f} (x_i - b_i)^2 and |x(z)|^2 = sum_f z_f sum_{i in f} x_i^2 + (1 - z_f) sum_{i in f}
b_i^2, which cancelled catastrophically on features of mixed scales as |x - b|^2 - z.(...).
"""

from __future__ import annotations

from typing import Callable

import torch

from . import tree as T
from .checks import at_least_float32

EXP_KERNEL = "_xattr_exp_kernel"  # the attribute marking exp_kernel_similarity's functions


def exp_kernel_similarity(distance: str = "cosine", kernel_width: float = 1.0) -> Callable:
    """LIME's default similarity: ``exp(-d(x, x')^2 / (2 kernel_width^2))``.

    ``d`` is the cosine distance ``1 - cos(x, x')`` (``distance="cosine"``) or the Euclidean
    distance between an example's attributed inputs, flattened and concatenated, and its
    perturbed copy (Captum's ``get_exp_kernel_similarity_function``). The returned function
    has the `lime` ``similarity_func`` signature; `lime` recognises it and computes the same
    weights from per-feature sums in O(N F) per example, without building the copies.

    Example:
      >>> sim = xattr.exp_kernel_similarity("euclidean", kernel_width=0.75)
      >>> attr = xattr.lime(xattr.target(model, 1), similarity_func=sim, n_samples=200, generator=0)(x)
    """
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be positive, got {kernel_width}")

    def similarity(original, perturbed, coalitions):
        for x, p in zip(T.leaves(original), T.leaves(perturbed)):
            if p.ndim != x.ndim + 1 or p.shape[0] != x.shape[0] or p.shape[2:] != x.shape[1:]:
                raise ValueError(
                    f"exp_kernel_similarity's function takes the original inputs (B, ...) and every example's N "
                    f"perturbed copies (B, N, ...) at once (lime's batched similarity_func); got original "
                    f"{tuple(x.shape)} and perturbed {tuple(p.shape)}. For Captum's per-sample call "
                    "similarity(original, perturbed, interp_sample) use "
                    "xattr.compat.captum.get_exp_kernel_similarity_function(distance, kernel_width)"
                )
        xs = [x.reshape(x.shape[0], 1, -1) for x in T.leaves(original)]
        ps = [p.reshape(p.shape[0], p.shape[1], -1) for p in T.leaves(perturbed)]
        dt = at_least_float32(ps[0].dtype if ps[0].is_floating_point() else torch.get_default_dtype())
        x, p = torch.cat(xs, -1).to(dt), torch.cat(ps, -1).to(dt)
        if distance == "cosine":
            eps = 1e-8
            d = 1 - (x * p).sum(-1) / (x.norm(dim=-1).clamp_min(eps) * p.norm(dim=-1).clamp_min(eps))
            sq = d * d
        else:
            sq = ((x - p) * (x - p)).sum(-1)  # the squared distance itself: no sqrt to square again
        return torch.exp(-sq / (2 * kernel_width**2))

    setattr(similarity, EXP_KERNEL, (distance, float(kernel_width)))
    similarity.__name__ = f"exp_kernel_similarity({distance!r}, {kernel_width})"
    return similarity


def exp_kernel_weights(kind, selected, base, masks, z, dt, n_features, aggregate, budget: int) -> torch.Tensor:
    """The exp kernel's weights in ``dt`` from per-feature sums (NOTE: [Similarity weights'
    precision]): with p = x(z) and z' = 1 - z, x.p = z.(sum_f x^2) + z'.(sum_f x b), |p|^2 =
    z.(sum_f x^2) + z'.(sum_f b^2) and |x - p|^2 = z'.(sum_f (x - b)^2)."""
    distance, width = kind
    rows = T.batch_size(selected)
    k = 3 if distance == "cosine" else 1
    sums = torch.zeros(k, rows, n_features, dtype=dt, device=z.device)  # per feature: x^2, x b, b^2 or (x - b)^2
    for x, b, m in zip(T.leaves(selected), T.leaves(base), T.leaves(masks)):
        xf, bf = x.reshape(rows, -1).to(dt), torch.broadcast_to(b, x.shape).reshape(rows, -1).to(dt)
        ids = torch.broadcast_to(m, x.shape).reshape(rows, -1)
        if distance == "cosine":
            vals = torch.stack([xf * xf, xf * bf, bf * bf])
        else:
            d = xf - bf
            vals = (d * d)[None]
        sums.scatter_add_(2, ids.expand(k, -1, -1), vals)
    if aggregate:  # the whole batch is one example
        sums = sums.sum(1, keepdim=True)
    if distance == "euclidean":
        # used squared: no sqrt at 0, whose infinite derivative would make the gradient of an
        # attribution NaN under torch.func.grad (the full coalition's distance is 0)
        sq = coalition_dots(None, sums[0][:, None], z, budget)[:, 0]  # (rows, N)
        return torch.exp(-sq / (2 * width**2))
    xx, xb, bb = sums
    lin = coalition_dots(xx[:, None], torch.stack([xb, bb], 1), z, budget).transpose(0, 1)  # (2, rows, N): x.p, |p|^2
    # norms clamped before their square roots (sqrt(max(s, eps^2)) = max(sqrt(s), eps)): a
    # zero-norm copy (every feature at a zero baseline) gets cosine 0, and a finite gradient
    eps = 1e-8
    norm_x = xx.sum(-1).clamp_min(eps * eps).sqrt()[:, None]
    dist = 1 - lin[0] / (norm_x * lin[1].clamp_min(eps * eps).sqrt())
    return torch.exp(-(dist * dist) / (2 * width**2))


def coalition_dots(kept, removed: torch.Tensor, z: torch.Tensor, budget: int) -> torch.Tensor:
    """kept (rows, 1, F) . z + removed (rows, k, F) . (1 - z) for the bool coalitions z (rows, N,
    F): (rows, k, N), z made 0/1 in removed's dtype ``budget`` bytes at a time ((F, N) on the
    right: BLAS's fast layout). ``kept`` None: the removed part only."""
    step = max(1, budget // max(1, 2 * z.shape[0] * z.shape[2] * removed.element_size()))
    parts = []
    for a in range(0, max(z.shape[1], 1), step):
        on = z[:, a : a + step].to(removed.dtype).transpose(1, 2)
        dots = torch.bmm(removed, 1 - on)
        parts.append(dots if kept is None else torch.bmm(kept, on) + dots)
    return torch.cat(parts, 2)
