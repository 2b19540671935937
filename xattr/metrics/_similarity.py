"""Similarity of two attribution maps per example: rank correlation, SSIM, top-k intersection.

NOTE: [Metrics of half-precision maps]
The metrics of attribution maps (these, `sparseness`, `complexity`) and the fractions and areas
of the deletion / insertion curves are computed, and returned, in the maps' float dtype widened
to at least float32 (`result_dtype`): float16 and bfloat16 give float32, float32 stays float32,
float64 stays float64, bool and integer maps give the default float dtype. Widening a half map
is exact, and what a metric adds up overflows float16 long before an image is large: float16's
largest finite value is 65504, so a count of 76800 pixels, a hit count of k = 75264 or the sum of
150528 magnitudes is inf there, and the results come out inf, NaN or 0. bfloat16 does not
overflow but keeps 8 significant bits, so a count of 3000 is already off by 8.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .._src import tree as T
from .._src.checks import at_least_float32
from ._common import batch_of, flat


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions) of each row of v (B, P), from 1."""
    out = torch.empty(v.shape, dtype=torch.float64, device=v.device)
    for i in range(v.shape[0]):
        _, inverse, counts = torch.unique(v[i], sorted=True, return_inverse=True, return_counts=True)
        last = counts.cumsum(0).to(torch.float64)
        out[i] = (last - (counts.to(torch.float64) - 1) / 2)[inverse]
    return out


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def spearman(a: Any, b: Any, *, abs: bool = False) -> torch.Tensor:
    """Spearman rank correlation of two maps per example: (B,), nan where a map is constant.

    ``a``, ``b``: tensors (B, ...) or trees of them (all elements of an example together); with
    ``abs`` the magnitudes are ranked (the sign is ignored). Computed in float64; returned in
    the maps' dtype widened to at least float32 (NOTE: [Metrics of half-precision maps]).

    Example:
      >>> rho = xattr.metrics.spearman(xattr.saliency(f)(x), xattr.integrated_gradients(f)(x))   # (B,)
    """
    fa, fb = _flat_pair(a, b)
    if abs:
        fa, fb = fa.abs(), fb.abs()
    return _pearson(_ranks(fa), _ranks(fb)).to(_pair_dtype(fa, fb))


def top_k_intersection(a: Any, b: Any, *, k: int | float = 0.1) -> torch.Tensor:
    """The fraction of the k largest-magnitude elements of ``a`` that are also among ``b``'s: (B,).

    ``k``: a count, or a fraction of the elements (0 < k <= 1, rounded up). In the maps' dtype
    widened to at least float32 (NOTE: [Metrics of half-precision maps]).

    NOTE: [Ties at the k-th magnitude]
    Where several elements tie at the k-th largest magnitude (the zeros of a sparse or ReLU'd
    map), "the k largest" does not say which of them count, and ``torch.topk`` picks some, in an
    order that differs between CPU and CUDA and between sizes (on the CPU, of the 5 elements
    ``[1, 1, 0, 0, 0]``, k = 3 took the zero at index 4), so two maps that tie differently scored
    by chance. Instead the tied elements share what is left of k: each element's membership in
    the top k is 1 above the k-th magnitude and ``(k - #above) / #at`` at it, and the result is
    ``sum(min(w_a, w_b)) / k``, the size of the (fuzzy) intersection over k. It is 1 for a map
    and itself, symmetric, the same on every device, and without ties at the k-th magnitude
    the plain count.

    Example:
      >>> share = xattr.metrics.top_k_intersection(xattr.saliency(f)(x), xattr.integrated_gradients(f)(x), k=0.1)
    """
    fa, fb = (m.abs() for m in _flat_pair(a, b))
    p = fa.shape[1]
    kk = math.ceil(k * p) if isinstance(k, float) else int(k)
    if not 1 <= kk <= p:
        raise ValueError(f"k={k!r} gives {kk} of {p} elements; it must select between 1 and all of them")
    wa, wb = _top_k_weights(fa, kk), _top_k_weights(fb, kk)
    return (torch.minimum(wa, wb).sum(1) / kk).to(_pair_dtype(fa, fb))  # NOTE: [Metrics of half-precision maps]


def _top_k_weights(f: torch.Tensor, k: int) -> torch.Tensor:
    """Each element's membership in the k largest of its row of f (B, P): 1 above the k-th
    value, the rest of k shared at it (NOTE: [Ties at the k-th magnitude]): float64 (B, P)."""
    kth = torch.topk(f, k, dim=1).values[:, -1:]  # the k-th largest value is the same whatever ties
    above, at = f > kth, f == kth
    share = (k - above.sum(1, keepdim=True)).to(torch.float64) / at.sum(1, keepdim=True)
    return above.to(torch.float64) + at * share


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of two image maps per example: (B,), at most 1.

    Maps are (B, H, W) or (B, C, H, W); each is min-max scaled to [0, 1] per example, SSIM is
    computed per channel with a Gaussian window (``window`` x ``window``, std ``sigma``; shrunk
    to fit small maps) over the valid region, and averaged. Computed and returned in the maps'
    dtype widened to at least float32 (NOTE: [Metrics of half-precision maps]).

    Example:
      >>> s = xattr.metrics.ssim(xattr.saliency(f)(x), xattr.integrated_gradients(f)(x))   # (B,), at most 1
    """
    for m in (a, b):
        if not isinstance(m, torch.Tensor) or m.ndim not in (3, 4):
            raise ValueError("ssim compares image maps (B, H, W) or (B, C, H, W); leave 'ssim' out for other inputs")
    if a.shape != b.shape:
        raise ValueError(f"ssim needs maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    batch_of(a)  # NOTE: [Empty batches]
    dtype = _pair_dtype(a, b)  # NOTE: [Metrics of half-precision maps]
    x, y = (_unit(m.detach().to(dtype)) for m in (a, b))
    x, y = (m.reshape((-1, 1) + tuple(m.shape[-2:])) for m in (x, y))  # channels as rows
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd
    g = torch.exp(-((torch.arange(size, dtype=dtype, device=x.device) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).reshape(1, 1, size, size)

    def blur(t):
        return F.conv2d(t, w)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(a.shape[0], -1).mean(1)


def _flat_pair(a: Any, b: Any) -> tuple:
    """Both maps as detached (B, P) rows, of one B and one P (a batch of one would broadcast
    against the other's rows, silently); see NOTE: [Empty batches]."""
    batch_of(a), batch_of(b)
    fa, fb = flat(a).detach(), flat(b).detach()
    if fa.shape != fb.shape:
        raise ValueError(f"the two attributions must have the same examples and the same number of values per example: "
                         f"(B, values) = {tuple(fa.shape)} and {tuple(fb.shape)}")
    return fa, fb


def _unit(m: torch.Tensor) -> torch.Tensor:
    flat_m = m.reshape(m.shape[0], -1)
    lo, hi = flat_m.min(1, keepdim=True).values, flat_m.max(1, keepdim=True).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat_m - lo) / span).reshape(m.shape)


def _pair_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return result_dtype(torch.promote_types(a.dtype, b.dtype))


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a metric of maps of ``dtype`` computes and returns (NOTE: [Metrics of half-precision maps])."""
    if not dtype.is_floating_point:
        return torch.get_default_dtype()
    return at_least_float32(dtype)


MEASURES = {
    "spearman": lambda a, b, k: spearman(a, b),
    "spearman_abs": lambda a, b, k: spearman(a, b, abs=True),
    "ssim": lambda a, b, k: ssim(*(_one(t) for t in (a, b))),
    "topk": lambda a, b, k: top_k_intersection(a, b, k=k),
}


def _one(t):
    leaves = T.leaves(t)
    if len(leaves) != 1:
        raise ValueError("ssim compares one image map per example; the attributions have several tensors")
    return leaves[0]
