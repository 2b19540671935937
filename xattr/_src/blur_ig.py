"""Blur integrated gradients: the path integral along the Gaussian scale space of an image.

NOTE: [The blur of Blur IG]
blur(x, s) smooths the last two dims (H, W) of each example with a separable Gaussian of
standard deviation s pixels; every leading dim (channels, ...) is smoothed on its own. Along one
spatial dim of size n the blur is the n x n matrix
  A(s)[p, q] = sum of k_j(s) over the taps j = -r..r whose reflected index fold(p + j) is q,
  k_j(s) = exp(-j^2 / (2 s^2)) / Z(s),   Z(s) = sum_{m=-r..r} exp(-m^2 / (2 s^2)),
so blur(x, s) = A_H(s) x A_W(s)^T. The kernel radius r = ceil(4 max_sigma) is the same for every
s along the path (scipy.ndimage's truncate=4 at the largest scale): a radius that grew with s
would make the path jump wherever it grows. Beyond the border the image is mirrored with the
edge pixel repeated (scipy's "reflect": d c b a | a b c d | d c b a), period 2n, so a radius
larger than the image folds back as often as needed. Every row of A sums to 1: the blur keeps
each channel's mean, and for s >> n the blurred image tends to that constant mean. s = 0 is
the identity (A = I exactly; below s = 1e-3 the float64 kernel is already the unit impulse).

NOTE: [Derivative of the blur with respect to the scale]
With g_j = exp(-j^2 / (2 s^2)), dg_j/ds = g_j j^2 / s^3, and the quotient rule gives
  dk_j/ds = k_j (j^2 - sum_m k_m m^2) / s^3,
whose taps sum to 0 (the normalisation holds at every s). Then
  d blur(x, s)/ds = A_H'(s) x A_W(s)^T + A_H(s) x A_W'(s)^T,
with A' built from dk_j/ds as A is from k_j. It is exact: no step size to choose (the
authors' code takes a forward difference with step 0.01). Kernels are computed in float64 and
cast to the input's dtype. tests/test_blur_ig.py checks the derivative against central
differences and the blur against an explicit loop over pixels and taps.

NOTE: [Blur IG as a path integral]
The path runs from the most blurred image to the input: with the path parameter a in [0, 1],
  gamma(a) = blur(x, (1 - a) max_sigma),   gamma'(a) = -max_sigma * d blur/ds at s = (1 - a) max_sigma,
and `path_integral` with quadrature ``method`` gives
  attr = sum_i w_i grad f(gamma(a_i)) * gamma'(a_i) ~ integral_0^1 d f(gamma(a))/da da,
so sum(attr) = f(x) - f(blur(x, max_sigma)) up to quadrature error. The paper's sum over
sigma_i = i max_sigma / n, i = 0..n-1, negated, is this with ``method="riemann_right"``
(a_i = 1 - sigma_i / max_sigma). The image changes fastest at small s, near the input's end of
the path, where Gauss-Legendre (the default) places nodes densely.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch

from . import tree as T
from .checks import check_float_inputs, check_model_fn
from .gradients import attribution_fn
from .paths import path_integral, quadrature

TRUNCATE = 4.0  # kernel radius in units of max_sigma (NOTE: [The blur of Blur IG])
TINY_SIGMA = 1e-3  # below it the float64 kernel is the unit impulse


def radius(max_sigma: float) -> int:
    """The kernel radius shared by every scale of a path up to ``max_sigma``."""
    return int(math.ceil(TRUNCATE * max_sigma))


def kernels(sigmas: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps k_j(s) and dk_j/ds for j = -r..r: two float64 tensors (S, 2r + 1)
    (NOTE: [Derivative of the blur with respect to the scale])."""
    s = sigmas.to(torch.float64).clamp(min=TINY_SIGMA)[:, None]
    j2 = torch.arange(-r, r + 1, dtype=torch.float64, device=sigmas.device) ** 2
    g = torch.exp(-j2 / (2 * s * s))
    k = g / g.sum(1, keepdim=True)
    dk = k * (j2 - (k * j2).sum(1, keepdim=True)) / s**3
    return k, dk


def reflected(n: int, r: int, device=None) -> torch.Tensor:
    """fold(p + j) for p = 0..n-1, j = -r..r: (n, 2r + 1) indices into 0..n-1 (mirror, edge repeated)."""
    q = torch.arange(n, device=device)[:, None] + torch.arange(-r, r + 1, device=device)
    m = q.remainder(2 * n)
    return torch.where(m >= n, 2 * n - 1 - m, m)


def blur_matrices(n: int, taps: torch.Tensor, r: int) -> torch.Tensor:
    """A[s, p, q] = sum of taps[s, j] over j with fold(p + j) = q: (S, n, n)."""
    idx = reflected(n, r, taps.device)
    out = torch.zeros(taps.shape[0], n, n, dtype=taps.dtype, device=taps.device)
    return out.scatter_add_(2, idx.expand(taps.shape[0], n, -1), taps[:, None, :].expand(-1, n, -1))


def blur_and_derivative(x: torch.Tensor, sigmas: torch.Tensor, max_sigma: float):
    """blur(x, s) and d blur(x, s)/ds for each s in sigmas: two tensors (S, *x.shape)."""
    r = radius(max_sigma)
    k, dk = kernels(sigmas, r)
    h, w = x.shape[-2:]
    a_h, da_h = (blur_matrices(h, t, r).to(x.dtype) for t in (k, dk))
    a_w, da_w = (blur_matrices(w, t, r).to(x.dtype) for t in (k, dk))
    shape = (len(sigmas),) + (1,) * (x.ndim - 2) + (h, h)
    a_h, da_h = a_h.reshape(shape), da_h.reshape(shape)
    shape = shape[:-2] + (w, w)
    a_wt, da_wt = a_w.reshape(shape).transpose(-1, -2), da_w.reshape(shape).transpose(-1, -2)
    rows = a_h @ x  # (S, ..., H, W): blurred along H
    return rows @ a_wt, da_h @ x @ a_wt + rows @ da_wt


def gaussian_blur(x: torch.Tensor, sigma: float, max_sigma: float | None = None) -> torch.Tensor:
    """blur(x, sigma) over the last two dims, with the kernel radius of a path up to
    ``max_sigma`` (default sigma): the images a Blur IG path passes through."""
    _check_image(x, "gaussian_blur")
    sigma = _check_sigma(sigma, "sigma", allow_zero=True)
    top = sigma if max_sigma is None else _check_sigma(max_sigma, "max_sigma")
    if sigma > top:
        raise ValueError(f"sigma ({sigma}) must not exceed max_sigma ({top})")
    return blur_and_derivative(x, torch.tensor([sigma], dtype=torch.float64, device=x.device), top)[0][0]


def blur_integrated_gradients(
    f: Callable,
    *,
    max_sigma: float = 50.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
) -> Callable:
    """Blur IG: the path integral from the most blurred image to the input along the blur scale.

    Xu, Venugopalan, Sundararajan 2020, "Attribution in Scale and Space". With blur(x, s) the
    Gaussian blur of standard deviation s over the last two dims (NOTE: [The blur of Blur IG]
    in ``xattr/_src/blur_ig.py``: reflected borders, kernel radius ceil(4 max_sigma)):

      attr_j = integral_0^max_sigma  df/dx_j (blur(x, s)) * (-d blur(x, s)_j / ds)  ds

    computed as `path_integral` over gamma(a) = blur(x, (1 - a) max_sigma), a in [0, 1], with
    the exact derivative of the kernel with respect to s (NOTE: [Derivative of the blur with
    respect to the scale]). Completeness: ``sum(attr) = f(x) - f(blur(x, max_sigma))`` up to
    quadrature error. No baselines: the path's start is the blurred input itself.

    Args (beyond the shared ones):
      max_sigma: the largest scale in pixels, > 0 (the paper's default 50, for 224 x 224 images;
        for s well above the image size the blurred image is nearly the constant channel mean).
      n_steps, method: quadrature along the path (riemann_left/right/middle/trapezoid,
        gausslegendre; the paper's sum is ``riemann_right``).

    Every attributed tensor needs two spatial dims after the batch, (B, ..., H, W). Targets
    with many outputs per example are supported (one path serves every output).

    Returns:
      ``fn(*args)`` giving a tree like ``args[argnums]``.

    Example:
      >>> attr = xattr.blur_integrated_gradients(xattr.target(model, 3), max_sigma=8.0)(x)
    """
    check_model_fn(f, "blur_integrated_gradients")
    top = _check_sigma(max_sigma, "max_sigma")
    quadrature(method, n_steps)  # checks method and n_steps now, not at the first call
    nums = T.normalize_argnums(argnums)[0]

    def walk(x, b, alphas):  # NOTE: [Blur IG as a path integral]
        points, d_ds = blur_and_derivative(x, (1 - alphas.to(torch.float64)) * top, top)
        return points, -top * d_ds

    walk.pointwise = True  # each alpha's image and velocity are its own: chunk_size bounds the path's memory too
    integral = path_integral(f, argnums=argnums, n_steps=n_steps, method=method, path=walk, chunk_size=chunk_size)

    def fn(*args):
        selected = T.split_args(args, nums)[0]
        check_float_inputs(selected, "blur_integrated_gradients")
        for leaf in T.leaves(selected):
            _check_image(leaf, "blur_integrated_gradients")
        return integral(*args)

    return attribution_fn(fn, f)


def _check_sigma(value, name: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or float(value) < 0 or (float(value) == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound} (a scale in pixels), got {value!r}")
    return float(value)


def _check_image(x, method: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{method} blurs the last two (spatial) dims of each example, so every attributed tensor must be "
            f"shaped (B, ..., H, W) with at least 3 dims; got {shape}. For images without a channel dim "
            "(B, H, W) works; for tabular or token inputs use integrated_gradients instead."
        )
    if x.is_complex():
        raise TypeError(f"{method} blurs real images; got a {x.dtype} tensor")
