"""The linear systems of noisy linear imputation (NOTE: [Noisy linear imputation] in _road.py),
solved three ways: dense, sparse direct (scipy, CPU) and conjugate gradients (torch, any device).

NOTE: [Choosing the imputation solver]
The matrix depends only on the mask, never on the channel, so one factorisation or one Krylov
run serves all C channels (C right-hand sides). It is symmetric (w_ij = w_ji; the diagonal s_i
is the in-image weight sum of pixel i, so no row is rescaled) and positive definite once a pixel
is kept, so Cholesky-type direct solves and conjugate gradients are both valid. What it costs:
- up to `DENSE_PIXELS` pixels, `torch.linalg.solve` on the whole (H W)^2 grid system in float64,
  every image and channel of a chunk in one batched call, on the images' device;
- larger images on CPU: the system over the removed pixels only, built with numpy and factorised
  by SuperLU (``scipy.sparse.linalg.splu``) in float64, once per image (once in all when every
  image has the same mask), its C columns solved together, images spread over
  ``torch.get_num_threads()`` threads (SuperLU releases the GIL while it factorises). The
  ordering is minimum degree on A + A' with the symmetric mode and no pivoting
  (``diag_pivot_thresh=0``), which is safe for a symmetric positive definite, diagonally dominant
  matrix and halves the fill of the default COLAMD ordering on these 2D grids. Measured on a
  2-core CPU for one 224x224 image: 0.03 s (50% removed at random), 0.19 s (90% at random),
  0.05 s (a central block of 50%), 0.11 s (a block of 90%). With partial pivoting the same
  ordering took 40 s on the 90% random mask: the pivots wreck it, hence no pivoting.
- larger images elsewhere (CUDA, where scipy cannot run), or with ``method="cg"``: conjugate
  gradients, all images and channels at once, in float64 for float64 images and float32
  otherwise, preconditioned by a multigrid V-cycle on the image grid (NOTE: [Multigrid
  preconditioner for the imputation] in _road_multigrid.py; ``cg_fill(..., multigrid=False)``
  is plain CG). Plain CG needs about as many iterations as the widest removed region is wide
  (the system is a discrete Laplace equation inside it): 523 for a 214x214 hole in a 224x224
  image; with the V-cycle 20. Measured on a 2-core CPU through the forced ``method="cg"``, 8
  images of 3x224x224, plain CG against PCG (iterations, seconds; plain CG checks its residual
  every 8 iterations, so its counts are multiples of 8):
    float32 (tolerance 1e-6):  random 50%  16 / 0.47 s  vs  4 / 0.11 s
                               random 90%  48 / 1.24 s  vs  8 / 0.17 s
                               block 50%  192 / 5.3 s   vs  6 / 0.12 s
                               block 90%  280 / 7.7 s   vs  8 / 0.13 s
    float64 (tolerance 1e-12): random 50%  40 / 0.44 s  vs  9 / 0.32 s
                               random 90%  96 / 3.0 s   vs 17 / 0.57 s
                               block 50%  384 / 11.7 s  vs 18 / 0.51 s
                               block 90%  520 / 16.3 s  vs 20 / 0.54 s
  Part of the gain is not the preconditioner: PCG applies the operator as nine fused
  multiply-adds of shifted views, which on this CPU is 5-20x faster than the 3x3 convolution of
  plain CG; a V-cycle costs about six such applications. Random masks gain least (their
  regions are narrow, so plain CG was already short). No GPU was available to measure; there
  the convolution and the shifts may compare differently, and each PCG iteration reads the
  residual norm back to the host (a V-cycle is many kernels, so one sync is small beside it).
Memory, all linear in the pixels (peak resident memory above the inputs, 8 images of 3x224x224
with 50% removed at random, bytes a pixel per image, float32 / float64 images): sparse LU 296 /
272 (float64 copies of the images, right-hand sides and solution, and the factors of the masks
being factorised at once, one per thread); PCG 287 / 438, its multigrid setup alone 137 / 118
(NOTE: [Multigrid preconditioner for the imputation], memory). A float32 image is 12 bytes a
pixel, so either solver needs about 25 times the images it imputes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .._src.warn import warn
from ._road_multigrid import Multigrid, apply_stencil

DENSE_PIXELS = 256  # images of up to 16x16 pixels: a dense solve; larger: sparse direct or CG
DENSE_BYTES = 64 * 2**20  # float64 matrices per dense solve call
SIDE, CORNER = 1.0 / 6.0, 1.0 / 12.0
OFFSETS = tuple((di, dj, CORNER if di and dj else SIDE) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj)
METHODS = ("auto", "dense", "sparse", "cg")


def solve(x: torch.Tensor, removed: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """x (R, C, H, W) with the removed (R, H, W) pixels solved for (no noise), dtype of x.

    ``method``: "auto" (dense up to `DENSE_PIXELS` pixels, else "sparse" on CPU and "cg"
    elsewhere), or one of "dense", "sparse", "cg" (NOTE: [Choosing the imputation solver])."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    h, w = x.shape[2:]
    if method == "auto":
        method = "dense" if h * w <= DENSE_PIXELS else "sparse" if x.device.type == "cpu" else "cg"
    fill = {"dense": dense_fill, "sparse": sparse_fill, "cg": cg_fill}[method]
    return torch.where(removed.unsqueeze(1), fill(x, removed).to(x.dtype), x)


def kernel(dtype, device) -> torch.Tensor:
    rows = [[CORNER, SIDE, CORNER], [SIDE, 0.0, SIDE], [CORNER, SIDE, CORNER]]
    return torch.tensor(rows, dtype=dtype, device=device).reshape(1, 1, 3, 3)


def neighbours(v: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij v_j for every pixel of v (R, C, H, W): the 3x3 kernel, zero outside the image."""
    r, c, h, w = v.shape
    return F.conv2d(v.reshape(r * c, 1, h, w), kernel(v.dtype, v.device), padding=1).reshape(r, c, h, w)


def dense_fill(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The grid system solved densely in float64, chunk by chunk."""
    r, c, h, w = x.shape
    n = h * w
    eye = torch.eye(n, dtype=torch.float64, device=x.device).reshape(n, 1, h, w)
    wmat = neighbours(eye).reshape(n, n)  # column j: the weights w_ij of basis pixel j (W is symmetric)
    s = wmat.sum(1)
    per = max(1, DENSE_BYTES // (8 * n * n))
    out = []
    for a in range(0, r, per):
        rf = removed[a : a + per].reshape(-1, n).to(torch.float64)  # (R', N)
        xv = x[a : a + per].reshape(-1, c, n).transpose(1, 2).to(torch.float64)  # (R', N, C)
        mat = torch.diag_embed(rf * s + (1 - rf)) - rf[:, :, None] * rf[:, None, :] * wmat
        kept = (1 - rf)[..., None] * xv
        rhs = kept + rf[..., None] * (wmat @ kept)
        out.append(torch.linalg.solve(mat, rhs).transpose(1, 2).reshape(-1, c, h, w))
    return torch.cat(out)


def sparse_matrix(removed: np.ndarray):
    """The (n, n) scipy CSC matrix over the n removed pixels of one (H, W) mask, row-major order:
    s_i on the diagonal, -w_ij between removed neighbours."""
    import scipy.sparse as sp

    h, w = removed.shape
    n = int(removed.sum())
    index = np.full((h + 2, w + 2), -1, dtype=np.int64)  # -1: kept or outside the image
    index[1:-1, 1:-1][removed] = np.arange(n)
    inside = np.zeros((h + 2, w + 2), dtype=bool)
    inside[1:-1, 1:-1] = True
    ii, jj = np.nonzero(removed)
    diag = np.zeros(n)
    rows, cols, vals = [np.arange(n)], [], []
    for di, dj, wt in OFFSETS:
        diag += wt * inside[ii + 1 + di, jj + 1 + dj]
        k = index[ii + 1 + di, jj + 1 + dj]
        hit = k >= 0
        rows.append(np.nonzero(hit)[0])
        cols.append(k[hit])
        vals.append(np.full(int(hit.sum()), -wt))
    cols.insert(0, np.arange(n))
    vals.insert(0, diag)
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def _factor(removed: np.ndarray):
    from scipy.sparse.linalg import splu

    # NOTE: [Choosing the imputation solver]: no pivoting keeps the symmetric ordering's low fill
    return splu(sparse_matrix(removed), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True})  # fmt: skip


def sparse_fill(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The system over the removed pixels by a sparse LU per mask (scipy, float64, on CPU)."""
    r, c, h, w = x.shape
    rm = removed.unsqueeze(1).to(torch.float64)
    xv = x.detach().to("cpu", torch.float64)
    rhs = (rm.cpu() * neighbours((1 - rm.cpu()) * xv)).numpy()  # sum over kept neighbours, (R, C, H, W)
    masks = removed.cpu().numpy()
    out = xv.numpy().copy()
    shared = bool((removed == removed[:1]).all())
    if shared:  # one factorisation for every image and channel
        if masks[0].any():
            cols = rhs[:, :, masks[0]].reshape(r * c, -1).T  # (n, R C)
            out[:, :, masks[0]] = _factor(masks[0]).solve(np.ascontiguousarray(cols)).T.reshape(r, c, -1)
        return torch.from_numpy(out).to(x.device)

    def one(i: int) -> None:
        m = masks[i]
        if m.any():
            out[i][:, m] = _factor(m).solve(np.ascontiguousarray(rhs[i][:, m].T)).T

    workers = max(1, min(r, torch.get_num_threads(), os.cpu_count() or 1))
    if workers == 1:
        for i in range(r):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(r)))
    return torch.from_numpy(out).to(x.device)


def cg_fill(x: torch.Tensor, removed: torch.Tensor, *, multigrid: bool = True) -> torch.Tensor:
    """The grid system by conjugate gradients, matrix-free, all images and channels at once;
    preconditioned by a multigrid V-cycle unless ``multigrid=False`` (plain CG)."""
    return cg_solve(x, removed, multigrid=multigrid)[0]


def cg_solve(x: torch.Tensor, removed: torch.Tensor, *, multigrid: bool = True) -> tuple[torch.Tensor, int]:
    """`cg_fill`'s solution and the number of CG iterations it took (the batch iterates together
    until every image has converged)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    xv = x.to(dtype)
    rm = removed.unsqueeze(1).to(dtype)  # (R, 1, H, W)
    s = neighbours(torch.ones_like(rm))
    diag = rm * s + (1 - rm)

    # NOTE: [Multigrid preconditioner for the imputation] in _road_multigrid.py; without it,
    # Jacobi (the residual is zero at kept pixels, where the diagonal is 1)
    mg = Multigrid(removed, dtype) if multigrid else None

    def apply(v):
        if mg is not None:  # the same operator from the level-0 stencil: nine fused shifts
            return apply_stencil(mg.fine, v).addcmul_(1 - rm, v)
        return diag * v - rm * neighbours(rm * v)

    def precondition(r):
        return mg(r) if mg is not None else r / diag

    every = 1 if multigrid else 8  # a V-cycle costs far more than checking the residual
    kept = (1 - rm) * xv
    rhs = kept + rm * neighbours(kept)
    mean = kept.sum((2, 3), keepdim=True) / (1 - rm).sum((2, 3), keepdim=True)
    v = kept + rm * mean  # start: the removed pixels at the kept ones' mean
    res = rhs - apply(v)
    zz = precondition(res)
    p = zz.clone()  # updated in place below
    rz = (res * zz).sum((2, 3), keepdim=True)
    goal = tol * rhs.flatten(2).norm(dim=2)[..., None, None].clamp_min(torch.finfo(dtype).tiny)
    h, w = x.shape[2:]
    limit = 50 * (h + w) + 100
    for it in range(limit):
        if it % every == 0 and bool((res.flatten(2).norm(dim=2)[..., None, None] <= goal).all()):
            break
        ap = apply(p)
        pap = (p * ap).sum((2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        v.addcmul_(alpha, p)  # in place: no image-sized temporaries (NOTE: [Choosing the imputation solver], memory)
        res.addcmul_(alpha, ap, value=-1.0)
        zz = precondition(res)
        rz_new = (res * zz).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p.mul_(beta).add_(zz)
        rz = rz_new
    else:
        it = limit
        worst = float((res.flatten(2).norm(dim=2)[..., None, None] / goal * tol).max())
        warn(f"noisy linear imputation: conjugate gradients stopped after {limit} iterations at a relative "
             f"residual of {worst:.1e} (asked: {tol:.0e})")  # fmt: skip
    return v, it
