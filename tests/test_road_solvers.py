"""The three solvers of noisy linear imputation (dense, scipy sparse LU, torch conjugate
gradients) against a numpy solve of the system built pixel by pixel, on masks that touch the
border, isolated pixels, a full row and every pixel but one; the system's symmetry and
definiteness; linearity; the 224x224 case; the noise and its seeding on the sparse path."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xattr import metrics as M
from xattr.metrics import _road, _road_solvers as S

D = torch.float64
OFFSETS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def weight(di: int, dj: int) -> float:
    return 1 / 12 if di and dj else 1 / 6


def loop_system(removed: np.ndarray, img: np.ndarray | None = None):
    """The matrix over the removed pixels (row-major order) and, given an image (C, H, W), the
    right-hand sides, one pixel and neighbour at a time:
    s_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j."""
    h, w = removed.shape
    unknown = [(i, j) for i in range(h) for j in range(w) if removed[i, j]]
    index = {p: k for k, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    rhs = None if img is None else np.zeros((len(unknown), img.shape[0]))
    for k, (i, j) in enumerate(unknown):
        for di, dj in OFFSETS:
            ni, nj = i + di, j + dj
            if not (0 <= ni < h and 0 <= nj < w):
                continue
            a[k, k] += weight(di, dj)
            if removed[ni, nj]:
                a[k, index[(ni, nj)]] -= weight(di, dj)
            elif rhs is not None:
                rhs[k] += weight(di, dj) * img[:, ni, nj]
    return a, rhs, unknown


def numpy_solve(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    a, rhs, unknown = loop_system(removed, img)
    out = img.copy()
    if unknown:
        sol = np.linalg.solve(a, rhs)
        for k, (i, j) in enumerate(unknown):
            out[:, i, j] = sol[k]
    return out


def residual(v: torch.Tensor, removed: torch.Tensor) -> float:
    """max |s_i v_i - sum_j w_ij v_j| over the removed pixels, by shifting the padded image."""
    r, c, h, w = v.shape
    pad = torch.nn.functional.pad(v, (1, 1, 1, 1))
    inside = torch.nn.functional.pad(torch.ones(1, 1, h, w, dtype=v.dtype), (1, 1, 1, 1))
    total = torch.zeros_like(v)
    norm = torch.zeros(1, 1, h, w, dtype=v.dtype)
    for di, dj in OFFSETS:
        total += weight(di, dj) * pad[:, :, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
        norm += weight(di, dj) * inside[:, :, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
    return float(((norm * v - total) * removed.unsqueeze(1)).abs().max())


def masks_17x19() -> dict[str, torch.Tensor]:
    h, w = 17, 19  # 323 pixels: past the dense threshold, so "auto" takes the sparse path
    out = {}
    m = torch.zeros(h, w, dtype=torch.bool)
    m[0], m[-1], m[:, 0], m[:, -1] = True, True, True, True
    out["border"] = m
    m = torch.zeros(h, w, dtype=torch.bool)
    m[::3, ::3] = True  # isolated pixels, corners included
    out["isolated"] = m
    m = torch.zeros(h, w, dtype=torch.bool)
    m[8] = True
    out["full row"] = m
    m = torch.ones(h, w, dtype=torch.bool)
    m[16, 0] = False
    out["all but one"] = m
    out["random 70%"] = torch.rand(h, w, generator=torch.Generator().manual_seed(0)) < 0.7
    m = torch.zeros(h, w, dtype=torch.bool)
    m[2:15, 3:17] = True
    out["block"] = m
    return out


@pytest.mark.parametrize("name", list(masks_17x19()))
def test_every_solver_equals_the_numpy_solve(name):
    removed = masks_17x19()[name]
    x = torch.rand(2, 3, 17, 19, generator=torch.Generator().manual_seed(1), dtype=D)
    rm = removed.expand(2, -1, -1).clone()
    rm[1, 5, 5] = not bool(rm[1, 5, 5])  # the second image's mask differs: no shared factorisation
    before = x.clone()
    want = np.stack([numpy_solve(x[i].numpy(), rm[i].numpy()) for i in range(2)])
    for method in ("dense", "sparse", "cg", "auto"):
        got = S.solve(x, rm, method)
        assert got.dtype == D and got.device == x.device
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10, rtol=0, err_msg=method)
        assert residual(got, rm) < 1e-10
        assert torch.equal(got[~rm.unsqueeze(1).expand_as(x)], x[~rm.unsqueeze(1).expand_as(x)])  # kept: exact
    shared = S.solve(x, removed.expand(2, -1, -1), "sparse")  # one factorisation for both images
    for i in range(2):
        np.testing.assert_allclose(shared[i].numpy(), numpy_solve(x[i].numpy(), removed.numpy()), atol=1e-10, rtol=0)
    assert torch.equal(x, before)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 9), w=st.integers(2, 9), p=st.floats(0.05, 1.0))
def test_the_sparse_matrix_is_the_loop_system_symmetric_and_positive_definite(seed, h, w, p):
    removed = (torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) < p).numpy()
    removed.flat[seed % (h * w)] = False  # one kept pixel
    a = S.sparse_matrix(removed).toarray()
    want, _, unknown = loop_system(removed)
    assert a.shape == (len(unknown), len(unknown))
    np.testing.assert_allclose(a, want, atol=1e-15, rtol=0)
    assert np.array_equal(a, a.T)  # CG and a symmetric ordering are valid
    if unknown:
        assert np.linalg.eigvalsh(a).min() > 0


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), p=st.floats(0.1, 0.95), alpha=st.floats(-3, 3), beta=st.floats(-3, 3))
def test_solvers_agree_and_are_linear_in_the_image(seed, p, alpha, beta):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.rand(2, 2, 3, 18, 16, generator=g, dtype=D)
    rm = torch.rand(2, 18, 16, generator=g) < p
    rm[:, seed % 18, seed % 16] = False
    a = S.solve(x1, rm, "sparse")
    torch.testing.assert_close(S.solve(x1, rm, "cg"), a, atol=1e-10, rtol=0)
    torch.testing.assert_close(S.solve(x1, rm, "dense"), a, atol=1e-10, rtol=0)
    combined = S.solve(alpha * x1 + beta * x2, rm, "sparse")
    torch.testing.assert_close(combined, alpha * a + beta * S.solve(x2, rm, "sparse"), atol=1e-10, rtol=0)


def test_float32_images_stay_float32_on_both_large_paths():
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    rm = torch.rand(2, 20, 20, generator=torch.Generator().manual_seed(3)) < 0.8
    exact = S.solve(x.double(), rm, "dense")
    for method in ("sparse", "cg"):
        got = S.solve(x, rm, method)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), exact, atol=1e-5, rtol=0)


def test_224x224_with_90_percent_removed_is_fast_and_solves_the_equations():
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(4), dtype=D)
    rm = torch.rand(2, 224, 224, generator=torch.Generator().manual_seed(5)) < 0.9
    rm[1] = False
    rm[1, 5:219, 5:219] = True  # a 214x214 hole: 523 iterations of plain CG
    start = time.perf_counter()
    v = M.noisy_linear_imputation(x, rm, noise=0.0)
    took = time.perf_counter() - start
    assert residual(v, rm) < 1e-10
    assert torch.equal(v[:, :, ~rm[1]][1], x[1][:, ~rm[1]])
    assert took < 10, took  # ~0.4 s on a 2-core CPU; plain CG: 17 s for 8 images with a 212x212 hole


def test_noise_only_on_imputed_pixels_seeded_and_same_through_every_solver():
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(6), dtype=D)
    rm = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(7)) < 0.5
    clean = M.noisy_linear_imputation(x, rm, noise=0.0)
    noisy = M.noisy_linear_imputation(x, rm, noise=0.2, generator=11)
    diff = (noisy - clean).permute(0, 2, 3, 1)
    assert (diff[~rm] == 0).all() and (diff[rm] != 0).all()
    torch.testing.assert_close(noisy, M.noisy_linear_imputation(x, rm, noise=0.2, generator=11), atol=0, rtol=0)
    assert not torch.equal(noisy, M.noisy_linear_imputation(x, rm, noise=0.2, generator=12))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=D)
    by = {m: _road._impute(x, rm, z, m) for m in ("dense", "sparse", "cg")}
    torch.testing.assert_close(by["sparse"], clean + z * rm.unsqueeze(1), atol=1e-10, rtol=0)
    torch.testing.assert_close(by["cg"], by["sparse"], atol=1e-10, rtol=0)
    torch.testing.assert_close(by["dense"], by["sparse"], atol=1e-10, rtol=0)


def test_bad_method_is_refused():
    x = torch.rand(1, 1, 4, 4, dtype=D)
    with pytest.raises(ValueError, match="method must be one of"):
        S.solve(x, torch.ones(1, 4, 4, dtype=torch.bool), "lu")
