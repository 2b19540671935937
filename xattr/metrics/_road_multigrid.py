"""A multigrid V-cycle over the removed pixels: the preconditioner of ROAD's conjugate gradients.

NOTE: [Multigrid preconditioner for the imputation]
The system of noisy linear imputation (NOTE: [Choosing the imputation solver] in
_road_solvers.py) is a discrete Laplace equation inside each removed region, so plain CG needs
about as many iterations as the widest region is wide. A geometric V-cycle on the image grid
removes that growth, and everything in it is batched torch (slices, sums, one small Cholesky
per image), so it runs wherever the images are.

Levels. Level 0 is the system itself, restricted to the removed pixels: A_0 = S - W over them,
S the in-image weight sums, W the 1/6 (direct) and 1/12 (diagonal) weights between removed
neighbours. Level l+1 groups the cells of level l in 2x2 blocks (a last odd row or column
forms blocks of its own); a block is unknown when any of its cells is (the coarse mask is the
max-pool of the fine one). P_l copies a block's value to its unknown cells (piecewise constant,
0 at known cells), its transpose sums the residual over them (2x2 averaging up to the factor 4),
and A_{l+1} = P_l' A_l P_l (Galerkin). A block sums the couplings of its cells, so A_{l+1} is
again a 3x3 stencil, now with coefficients that vary from cell to cell; the known pixels inside
a block stay in its diagonal, which is what makes the coarse levels right for masks scattered at
random: rediscretising the fixed stencil on the coarse mask would lose them (a 50% random mask
has nearly every block unknown, and that coarse system is singular). Each A_l is symmetric,
positive definite over its unknown cells (P_l has full column rank there), and weakly
diagonally dominant with non-positive couplings. Coarsening stops at `COARSEST` cells or fewer,
solved exactly by a Cholesky factor per image (computed in float64 once per solve).

The V-cycle. On each level above the coarsest: `SWEEPS` damped Jacobi sweeps from zero
(x += omega D^-1 (r - A x), omega = `OMEGA`), the residual summed to the next level, its
V-cycle result copied back and scaled by c = `OVERCORRECT`, then `SWEEPS` more Jacobi sweeps.
Symmetric: the same smoother before and after (omega D^-1 is symmetric), the restriction is the
transpose of the prolongation, and the coarsest solve is exact. Positive definite, by induction
from the coarsest level up: with B_l the cycle from level l, B_l = (I - E_l) A_l^-1 and
E_l = S^k (I - c P B_{l+1} P' A_l) S^k, S = I - omega D^-1 A_l. D^-1 A_l has its eigenvalues in
(0, 2] (Gershgorin: diagonal dominance), so omega < 1 gives |S| < 1 in the A-norm; B_{l+1}
positive makes the middle factor at most I; so E_l < I and B_l is positive, for any c > 0.
(c > 1 can push E_l below -I, which would break the cycle as a stand-alone iteration, but PCG
only needs B_0 symmetric positive definite.) Over-correction is the usual remedy for
piecewise-constant prolongation, whose Galerkin coarse operator is about twice too stiff for a
Laplacian: c = 1.7 roughly halves the iterations on a block hole against c = 1.

Measured (iterations to a relative residual of 1e-12, float64, 8 images of 224x224, plain CG vs
this PCG): 40 vs 9 with half the pixels removed at random, 96 vs 17 with 90%, 384 vs 18 for a
central block of 50%, 520 vs 20 for a block of 90% (times in NOTE: [Choosing the imputation
solver]). The cycle costs about five level-0 stencil applications plus a third of that on the
coarser levels; a stencil is applied as nine fused multiply-adds of shifted views
(`apply_stencil`), 5-20x faster on CPU than a 3x3 convolution, so PCG beat plain CG in time
for every mask measured, random ones included (1.4x to 4x for 50% at random, 20x to 60x for
a block, float64 and float32).

Memory. Nothing is dense but the coarsest level (at most `COARSEST` cells, one Cholesky factor
per mask), so the setup is linear in the pixels. It holds, per image (one mask), 11 numbers a
pixel at level 0 (nine coefficients, the Jacobi weights, the prolongation mask) and a quarter of
that on each coarser level: 59 bytes a pixel in float32, 118 in float64 (`held_bytes`; tested).
Images sharing one mask share one hierarchy. Measured as peak resident memory above the inputs
(glibc with a fixed mmap threshold, so that freed tensors leave; 8 images of 3x224x224, 50% of
the pixels removed at random; the same per pixel for 2 and 16 images): the setup peaks at 137
bytes a pixel per image in float32 and 118 in float64. It was 207 and 179 before two copies
were removed: the stencil was built as a list of nine slots then concatenated, and
`coarsen` zero-padded (copied) every level, even-sized ones included. Each level is built in
float64; for a float32 solve its float64 version is dropped once the next level is made. The
whole PCG solve peaks at 287 bytes a pixel per image in float32 and 438 in float64 (its CG
vectors and the V-cycle's temporaries beside the hierarchy, some twenty image-sized tensors;
the updates of the iterate, residual and direction are in place), against 296 and 272
for the sparse LU on CPU (NOTE: [Choosing the imputation solver]). ROAD solves one chunk of
B x (percentages per call) masks at once, each with its own hierarchy: about 25x the float32
imputed images that its ``memory_budget`` counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COARSEST = 64  # cells at which coarsening stops and the level is solved densely
SWEEPS = 2  # Jacobi sweeps before and after each coarse correction
OMEGA = 0.9  # Jacobi damping, in (0, 1) (NOTE: [Multigrid preconditioner for the imputation])
OVERCORRECT = 1.7  # scale of the coarse correction, > 0
SHIFTS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))  # stencil slot k = 3 (di + 1) + (dj + 1)


def _shift(v: torch.Tensor, di: int, dj: int) -> torch.Tensor:
    """u with u[..., i, j] = v[..., i + di, j + dj], zero outside the grid."""
    h, w = v.shape[-2:]
    pad = F.pad(v, (1, 1, 1, 1))
    return pad[..., 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]


def fine_stencil(removed: torch.Tensor, dtype) -> torch.Tensor:
    """The level-0 coefficients (R, 9, H, W): slot k of pixel i is A_0[i, i + shift_k] (A_0[i, i]
    for the centre slot), zero at kept pixels and for couplings to kept pixels or the outside.
    Written slot by slot into one buffer: the setup holds the stencil and one (R, H, W) product,
    never a list of slots (NOTE: [Multigrid preconditioner for the imputation], memory)."""
    from ._road_solvers import CORNER, SIDE

    r, h, w = removed.shape
    m = removed.to(dtype)  # (R, H, W)
    coef = torch.zeros(r, 9, h, w, dtype=dtype, device=removed.device)
    total = torch.zeros(h, w, dtype=dtype, device=removed.device)  # s_i: the weights of the in-image neighbours
    for k, (di, dj) in enumerate(SHIFTS):
        if k == 4:
            continue
        wt = CORNER if di and dj else SIDE
        rows, cols = slice(max(0, -di), h - max(0, di)), slice(max(0, -dj), w - max(0, dj))  # i + d inside
        near = m[:, max(0, di) : h + min(0, di), max(0, dj) : w + min(0, dj)]
        torch.mul(m[:, rows, cols], near, out=coef[:, k, rows, cols]).mul_(-wt)
        total[rows, cols] += wt
    torch.mul(m, total, out=coef[:, 4])
    return coef


def coarsen(coef: torch.Tensor) -> torch.Tensor:
    """The Galerkin stencil P' A P (R, 9, ceil(H/2), ceil(W/2)) of a stencil (R, 9, H, W) under
    2x2 piecewise-constant prolongation: entry A[i, i + d] of fine cell i = 2I + p lands in coarse
    slot K = floor((p + d) / 2) of coarse cell I."""
    r, _, h, w = coef.shape
    if h % 2 or w % 2:  # an odd last row or column: blocks of zeros added (a copy; none when even)
        coef = F.pad(coef, (0, w % 2, 0, h % 2))
    out = coef.new_zeros(r, 9, (h + 1) // 2, (w + 1) // 2)
    for k, (di, dj) in enumerate(SHIFTS):
        for pi in (0, 1):
            for pj in (0, 1):
                kk = 3 * ((pi + di) // 2 + 1) + (pj + dj) // 2 + 1
                out[:, kk] += coef[:, k, pi::2, pj::2]
    return out


def apply_stencil(coef: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A v for a stencil (R or 1, 9, H, W) and vectors (R, C, H, W): one padded copy of v, nine
    fused multiply-adds of its shifted views (far faster than a 3x3 convolution on CPU)."""
    h, w = v.shape[-2:]
    pad = F.pad(v, (1, 1, 1, 1))
    out = coef[:, 4:5] * v
    for k, (di, dj) in enumerate(SHIFTS):
        if k != 4:
            out.addcmul_(coef[:, k : k + 1], pad[..., 1 + di : 1 + di + h, 1 + dj : 1 + dj + w])
    return out


def dense_matrix(coef: torch.Tensor) -> torch.Tensor:
    """The (R, n, n) matrix of a stencil (R, 9, H, W), n = H W in row-major order, with 1 on the
    diagonal of cells that are not unknowns (their centre coefficient is 0)."""
    r, _, h, w = coef.shape
    n = h * w
    ii, jj = torch.meshgrid(torch.arange(h, device=coef.device), torch.arange(w, device=coef.device), indexing="ij")
    mat = coef.new_zeros(r, n, n)
    for k, (di, dj) in enumerate(SHIFTS):
        ok = ((ii + di >= 0) & (ii + di < h) & (jj + dj >= 0) & (jj + dj < w)).flatten()
        rows = (ii * w + jj).flatten()[ok]
        cols = ((ii + di) * w + jj + dj).flatten()[ok]
        mat[:, rows, cols] += coef[:, k].flatten(1)[:, ok]
    known = coef[:, 4].flatten(1) <= 0
    return mat + torch.diag_embed(known.to(mat.dtype))


class Multigrid:
    """The V-cycle of NOTE: [Multigrid preconditioner for the imputation] for the removed pixels
    (R, H, W) of a batch: ``mg(r)`` is M^-1 r for residuals r (R, C, H, W) that are zero at kept
    pixels (the result is too). Set up once per solve (the stencils and the coarsest Cholesky
    factor depend on the masks only, built once when every image has the same mask); symmetric
    positive definite over the removed pixels. ``mg.fine`` is the level-0 stencil: A v at
    removed pixels is ``apply_stencil(mg.fine, v)``."""

    def __init__(self, removed: torch.Tensor, dtype: torch.dtype, *, coarsest: int = COARSEST,
                 sweeps: int = SWEEPS, omega: float = OMEGA, overcorrect: float = OVERCORRECT):  # fmt: skip
        if sweeps < 1 or not 0 < omega < 1 or not overcorrect > 0:
            raise ValueError("the V-cycle is symmetric positive definite only for sweeps >= 1, 0 < omega < 1 "
                             f"and overcorrect > 0; got {sweeps}, {omega}, {overcorrect}")  # fmt: skip
        self.sweeps = sweeps
        if removed.shape[0] > 1 and bool((removed == removed[:1]).all()):
            removed = removed[:1]  # one hierarchy for all: it broadcasts over the batch
        coef = fine_stencil(removed, torch.float64)
        self.coefs, self.masks, self.dinv = [], [], []
        while True:
            centre = coef[:, 4:5]
            unknown = centre > 0
            self.coefs.append(coef.to(dtype))
            self.masks.append(unknown.to(dtype) * overcorrect)  # the over-corrected prolongation's mask
            self.dinv.append(torch.where(unknown, omega / torch.where(unknown, centre, 1.0), 0.0).to(dtype))
            h, w = coef.shape[-2:]
            if h * w <= coarsest:
                break
            coef = coarsen(coef)
        self.known = (~unknown).to(dtype)
        self.chol = torch.linalg.cholesky(dense_matrix(coef)).to(dtype)
        self.fine = self.coefs[0]

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, r)

    def held_bytes(self) -> int:
        """The bytes the hierarchy keeps between V-cycles (NOTE: [Multigrid preconditioner for
        the imputation], memory)."""
        return sum(t.untyped_storage().nbytes() for t in [*self.coefs, *self.masks, *self.dinv, self.chol, self.known])

    def _cycle(self, level: int, r: torch.Tensor) -> torch.Tensor:
        if level == len(self.coefs) - 1:
            n, c, h, w = r.shape
            chol = self.chol.expand(n, -1, -1)
            sol = torch.cholesky_solve(r.reshape(n, c, h * w).transpose(1, 2), chol).transpose(1, 2)
            return sol.reshape(n, c, h, w) * (1 - self.known)  # zero at known cells (their rows are 1)
        coef, dinv = self.coefs[level], self.dinv[level]
        x = dinv * r  # the first Jacobi sweep from zero
        for _ in range(self.sweeps - 1):
            x.addcmul_(dinv, r - apply_stencil(coef, x))
        res = r - apply_stencil(coef, x)
        h, w = res.shape[-2:]
        res = F.pad(res, (0, w % 2, 0, h % 2))
        coarse = res[..., 0::2, 0::2] + res[..., 0::2, 1::2] + res[..., 1::2, 0::2] + res[..., 1::2, 1::2]
        e = self._cycle(level + 1, coarse)
        n, c, hc, wc = e.shape
        e = e[:, :, :, None, :, None].expand(n, c, hc, 2, wc, 2).reshape(n, c, 2 * hc, 2 * wc)[..., :h, :w]
        x.addcmul_(self.masks[level], e)
        for _ in range(self.sweeps):
            x.addcmul_(dinv, r - apply_stencil(coef, x))
        return x
