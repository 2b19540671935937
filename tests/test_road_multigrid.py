"""The multigrid preconditioner of ROAD's conjugate gradients: its Galerkin coarse stencils
against P' A P built from explicit matrices, its V-cycle against a numpy V-cycle written with
those matrices, its symmetry and definiteness, the preconditioned CG against the sparse LU and a
numpy solve, its iteration count against plain CG, dtypes, a shared mask and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from fake_cuda import OnCuda, fake_cuda, on_cpu, on_cuda
from test_road_solvers import loop_system, masks_17x19, numpy_solve, residual

from xattr.metrics import _road_multigrid as MG
from xattr.metrics import _road_solvers as S

D = torch.float64


def random_mask(seed: int, h: int, w: int, p: float) -> torch.Tensor:
    m = torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) < p
    m.view(-1)[seed % (h * w)] = False  # one kept pixel: the system is definite
    m.view(-1)[(seed + 1) % (h * w)] = True  # and one removed: something to solve for (w >= 2)
    return m


def hierarchy(removed: np.ndarray, coarsest: int):
    """[(A_l, P_l, mask_l)] built cell by cell: A_0 the loop system over the removed pixels,
    P_l[i, J] = 1 when unknown cell i of level l lies in the 2x2 block of unknown cell J of
    level l + 1, A_{l+1} = P_l' A_l P_l. The last level has P None."""
    a, _, _ = loop_system(removed)
    mask = removed
    levels = []
    while True:
        h, w = mask.shape
        if h * w <= coarsest:
            levels.append((a, None, mask))
            return levels
        coarse = np.zeros(((h + 1) // 2, (w + 1) // 2), dtype=bool)
        for i in range(h):
            for j in range(w):
                coarse[i // 2, j // 2] |= mask[i, j]
        fine_cells = [(i, j) for i in range(h) for j in range(w) if mask[i, j]]
        coarse_cells = [(i, j) for i in range(coarse.shape[0]) for j in range(coarse.shape[1]) if coarse[i, j]]
        p = np.zeros((len(fine_cells), len(coarse_cells)))
        for k, (i, j) in enumerate(fine_cells):
            p[k, coarse_cells.index((i // 2, j // 2))] = 1.0
        levels.append((a, p, mask))
        a, mask = p.T @ a @ p, coarse


def reference_cycle(levels, r: np.ndarray, level: int = 0) -> np.ndarray:
    """The V-cycle with the explicit matrices: r (n_l, C) over the unknown cells of a level."""
    a, p, _ = levels[level]
    if p is None:
        return np.linalg.solve(a, r)
    d = np.diag(a)[:, None]
    x = np.zeros_like(r)
    for _ in range(MG.SWEEPS):
        x = x + MG.OMEGA * (r - a @ x) / d
    x = x + MG.OVERCORRECT * p @ reference_cycle(levels, p.T @ (r - a @ x), level + 1)
    for _ in range(MG.SWEEPS):
        x = x + MG.OMEGA * (r - a @ x) / d
    return x


def preconditioner_matrix(removed: torch.Tensor, coarsest: int = MG.COARSEST) -> np.ndarray:
    """M^-1 over the removed pixels (row-major), one basis vector at a time through Multigrid."""
    h, w = removed.shape
    cells = removed.flatten().nonzero().flatten()
    basis = torch.zeros(len(cells), 1, h * w, dtype=D)
    basis[torch.arange(len(cells)), 0, cells] = 1.0
    mg = MG.Multigrid(removed.expand(len(cells), h, w), D, coarsest=coarsest)
    return mg(basis.reshape(-1, 1, h, w)).reshape(len(cells), h * w)[:, cells].T.numpy()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 21), w=st.integers(2, 21), p=st.floats(0.05, 1.0))
def test_coarse_stencils_are_the_galerkin_products(seed, h, w, p):
    removed = random_mask(seed, h, w, p)
    levels = hierarchy(removed.numpy(), coarsest=4)
    coef = MG.fine_stencil(removed[None], D)
    for a, _, mask in levels:
        assert np.array_equal((coef[0, 4] > 0).numpy(), mask)  # unknown cells: any unknown fine cell
        dense = MG.dense_matrix(coef)[0].numpy()
        unknown = mask.flatten()
        np.testing.assert_allclose(dense[np.ix_(unknown, unknown)], a, atol=1e-13, rtol=1e-13)  # sums in another order
        assert (dense[np.ix_(unknown, ~unknown)] == 0).all() and (dense[np.ix_(~unknown, unknown)] == 0).all()
        coef = MG.coarsen(coef)
    np.testing.assert_allclose(MG.dense_matrix(MG.fine_stencil(removed[None], D))[0].numpy()[
        np.ix_(removed.flatten().numpy(), removed.flatten().numpy())], S.sparse_matrix(removed.numpy()).toarray(),
        atol=1e-15, rtol=0)  # fmt: skip


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), h=st.integers(2, 20), w=st.integers(2, 20), p=st.floats(0.1, 1.0),
       coarsest=st.sampled_from([4, 16, 64]))  # fmt: skip
def test_the_v_cycle_equals_the_numpy_v_cycle(seed, h, w, p, coarsest):
    removed = random_mask(seed, h, w, p)
    r = torch.randn(1, 2, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=D) * removed
    got = MG.Multigrid(removed[None], D, coarsest=coarsest)(r)
    levels = hierarchy(removed.numpy(), coarsest)
    want = reference_cycle(levels, r[0][:, removed].T.numpy()).T
    np.testing.assert_allclose(got[0][:, removed].numpy(), want, atol=1e-12, rtol=0)
    assert (got[0][:, ~removed] == 0).all()  # kept pixels stay out of it


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), h=st.integers(2, 24), w=st.integers(2, 24), p=st.floats(0.05, 1.0),
       coarsest=st.sampled_from([1, 4, 64]))  # fmt: skip
def test_the_preconditioner_is_symmetric_and_positive_definite(seed, h, w, p, coarsest):
    removed = random_mask(seed, h, w, p)
    g = torch.Generator().manual_seed(seed + 2)
    u, v = torch.randn(2, 1, 3, h, w, generator=g, dtype=D) * removed
    mg = MG.Multigrid(removed[None], D, coarsest=coarsest)
    before = u.clone()
    mu, mv = mg(u), mg(v)
    assert torch.equal(u, before)  # the residual is read, never written
    uv, vu = (u * mv).sum((2, 3)), (v * mu).sum((2, 3))
    torch.testing.assert_close(uv, vu, atol=1e-10 * float(uv.abs().max() + 1), rtol=0)
    assert ((u * mu).sum((2, 3)) > 0).all()
    m = preconditioner_matrix(removed, coarsest)
    np.testing.assert_allclose(m, m.T, atol=1e-12, rtol=0)
    assert np.linalg.eigvalsh((m + m.T) / 2).min() > 0


@pytest.mark.parametrize("name", list(masks_17x19()))
def test_preconditioned_cg_equals_the_sparse_lu_and_the_numpy_solve(name):
    removed = masks_17x19()[name]
    x = torch.rand(2, 3, 17, 19, generator=torch.Generator().manual_seed(1), dtype=D)
    rm = removed.expand(2, -1, -1).clone()
    rm[1, 5, 5] = not bool(rm[1, 5, 5])  # two masks: two hierarchies
    before = x.clone()
    want = np.stack([numpy_solve(x[i].numpy(), rm[i].numpy()) for i in range(2)])
    v, iterations = S.cg_solve(x, rm)
    got = torch.where(rm.unsqueeze(1), v, x)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10, rtol=0)
    torch.testing.assert_close(got, S.solve(x, rm, "sparse"), atol=1e-10, rtol=0)
    torch.testing.assert_close(got, S.solve(x, rm, "cg"), atol=0, rtol=0)  # "cg" is the preconditioned one
    assert residual(got, rm) < 1e-10 and iterations < 30
    assert torch.equal(x, before)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), p=st.floats(0.1, 0.99))
def test_preconditioned_and_plain_cg_agree_and_a_shared_mask_builds_one_hierarchy(seed, p):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, 26, 23, generator=g, dtype=D)
    rm = random_mask(seed, 26, 23, p).expand(3, -1, -1)
    mg = MG.Multigrid(rm, D)
    assert all(c.shape[0] == 1 for c in mg.coefs)  # one hierarchy, broadcast over the batch
    separate = MG.Multigrid(rm.clone().contiguous(), D)
    r = torch.randn(3, 2, 26, 23, generator=g, dtype=D) * rm.unsqueeze(1)
    one = torch.cat([MG.Multigrid(rm[i : i + 1], D)(r[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(mg(r), one, atol=1e-13, rtol=0)
    torch.testing.assert_close(separate(r), one, atol=1e-13, rtol=0)
    torch.testing.assert_close(S.cg_fill(x, rm), S.cg_fill(x, rm, multigrid=False), atol=1e-10, rtol=0)


def test_iterations_on_a_64x64_hole_are_a_tenth_of_plain_cg():
    x = torch.rand(2, 3, 72, 72, generator=torch.Generator().manual_seed(0), dtype=D)
    rm = torch.zeros(2, 72, 72, dtype=torch.bool)
    rm[:, 4:68, 4:68] = True
    _, plain = S.cg_solve(x, rm, multigrid=False)
    v, pcg = S.cg_solve(x, rm)
    assert residual(v, rm) < 1e-10
    assert plain >= 160 and pcg <= 20  # measured: 168 (checked every 8) and 15
    assert pcg * 6 < plain


def test_float32_stays_float32_and_meets_its_tolerance():
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    rm = torch.rand(2, 40, 36, generator=torch.Generator().manual_seed(3)) < 0.9
    rm[1] = False
    rm[1, 3:37, 2:34] = True
    mg = MG.Multigrid(rm, torch.float32)
    assert all(c.dtype == torch.float32 for c in [*mg.coefs, *mg.dinv, mg.chol])
    assert mg(torch.ones(2, 3, 40, 36) * rm.unsqueeze(1)).dtype == torch.float32
    got = S.solve(x, rm, "cg")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), S.solve(x.double(), rm, "sparse"), atol=1e-4, rtol=0)


def test_on_a_cuda_device_auto_is_the_preconditioned_cg_and_stays_there(monkeypatch):
    x = torch.rand(2, 3, 20, 21, generator=torch.Generator().manual_seed(4), dtype=D)
    rm = torch.rand(2, 20, 21, generator=torch.Generator().manual_seed(5)) < 0.8
    built = []
    monkeypatch.setattr(S, "Multigrid", lambda *a, **k: built.append(1) or MG.Multigrid(*a, **k))
    with fake_cuda():
        got = S.solve(*on_cuda((x, rm)), "auto")
        assert isinstance(got, OnCuda) and built == [1]  # the V-cycle ran, on the fake device
    torch.testing.assert_close(on_cpu(got), S.solve(x, rm, "sparse"), atol=1e-10, rtol=0)


def test_bad_settings_are_refused():
    rm = torch.ones(1, 8, 8, dtype=torch.bool)
    rm[0, 0, 0] = False
    for kw in ({"sweeps": 0}, {"omega": 1.0}, {"omega": 0.0}, {"overcorrect": 0.0}):
        with pytest.raises(ValueError, match="symmetric positive definite only"):
            MG.Multigrid(rm, D, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_the_hierarchy_holds_eleven_numbers_a_pixel_per_level_and_is_shared_by_equal_masks(dtype):
    """Counted level by level: (9 coefficients + Jacobi weights + prolongation mask) per cell of
    every level, the coarsest level's dense Cholesky factor and known-cell flags; so linear in
    the images and their pixels (no (H W)^2 term), and one copy for a mask every image shares."""
    size = torch.finfo(dtype).bits // 8

    def expected(images: int, h: int, w: int) -> int:
        total = 0
        while True:
            total += images * 11 * h * w * size
            if h * w <= MG.COARSEST:
                return total + images * (h * w * h * w + h * w) * size
            h, w = (h + 1) // 2, (w + 1) // 2

    for b, h, w in [(1, 40, 33), (3, 40, 33), (2, 97, 64)]:
        rm = torch.rand(b, h, w, generator=torch.Generator().manual_seed(h * w + b)) < 0.5
        rm[:, 0, 0] = False
        assert MG.Multigrid(rm, dtype).held_bytes() == expected(b, h, w)
        assert MG.Multigrid(rm[:1].expand(b, h, w), dtype).held_bytes() == expected(1, h, w)
    one = torch.rand(1, 224, 224, generator=torch.Generator().manual_seed(0)) < 0.5
    per_pixel = MG.Multigrid(one, dtype).held_bytes() / (224 * 224)
    assert per_pixel == expected(1, 224, 224) / (224 * 224) < (60 if dtype == torch.float32 else 120)  # 58.8, 117.7
