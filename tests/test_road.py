"""ROAD and noisy linear imputation: the neighbour-average equations solved exactly (dense and
sparse paths; every solver in test_road_solvers.py), a numpy solve of the same system built pixel by pixel, ROAD curves
against a per-example, per-percentage loop, the maximum principle, noise, batch invariance,
the known effect on a small digits CNN, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from torch import nn

import xattr
from xattr import metrics as M
from xattr.metrics import _road_solvers
from test_road_solvers import OFFSETS, weight
from test_road_solvers import numpy_solve as numpy_imputation  # the paper's system, by loops, solved by numpy

D = torch.float64


def max_residual(img: np.ndarray, removed: np.ndarray) -> float:
    """The largest |v_i - (weighted mean of i's in-image neighbours)| over the removed pixels."""
    c, h, w = img.shape
    worst = 0.0
    for i in range(h):
        for j in range(w):
            if not removed[i, j]:
                continue
            total, norm = np.zeros(c), 0.0
            for di, dj in OFFSETS:
                ni, nj = i + di, j + dj
                if 0 <= ni < h and 0 <= nj < w:
                    total += weight(di, dj) * img[:, ni, nj]
                    norm += weight(di, dj)
            worst = max(worst, np.abs(img[:, i, j] - total / norm).max())
    return worst


def images(seed: int, shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def holes(seed: int, shape, p: float) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("size", [(5, 7), (20, 20)])  # the dense path, and the sparse one past 256 pixels
def test_noise_free_imputation_solves_the_neighbour_equations(size):
    h, w = size
    assert (h * w <= _road_solvers.DENSE_PIXELS) == (size == (5, 7))
    x = images(0, (3, 2, h, w))
    removed = holes(1, (3, h, w), 0.6)
    removed[2] = True
    removed[2, 0, 0] = False  # one kept pixel in a corner: everything else is imputed from it
    out = M.noisy_linear_imputation(x, removed, noise=0.0)
    for i in range(3):
        got, rem = out[i].numpy(), removed[i].numpy()
        assert max_residual(got, rem) < 1e-10
        np.testing.assert_allclose(got, numpy_imputation(x[i].numpy(), rem), atol=1e-10, rtol=0)
        assert np.array_equal(got[:, ~rem], x[i].numpy()[:, ~rem])  # kept pixels exactly as they were
    torch.testing.assert_close(out[2], x[2, :, :1, :1].expand(2, h, w))  # one kept pixel: a constant image


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 7), w=st.integers(2, 7), p=st.floats(0.1, 0.9),
       scale=st.floats(-3, 3), shift=st.floats(-2, 2))  # fmt: skip
def test_imputation_is_a_convex_combination_and_affine_equivariant(seed, h, w, p, scale, shift):
    """Every imputed value is a weighted mean of kept values (the weights are >= 0 and sum to 1),
    so it lies between the kept pixels' min and max; and imputing a x + c gives a v + c."""
    x = images(seed, (2, 3, h, w))
    removed = holes(seed + 1, (2, h, w), p)
    removed[:, 0, 0] = False
    out = M.noisy_linear_imputation(x, removed, noise=0.0)
    for i in range(2):
        kept = x[i][:, ~removed[i]]
        lo, hi = kept.min(1).values[:, None, None], kept.max(1).values[:, None, None]
        assert ((out[i] >= lo - 1e-12) & (out[i] <= hi + 1e-12)).all()
    moved = M.noisy_linear_imputation(scale * x + shift, removed, noise=0.0)
    torch.testing.assert_close(moved, scale * out + shift, atol=1e-10, rtol=0)


def test_noise_lands_on_removed_pixels_only_and_is_seeded_per_example():
    x = images(2, (4, 3, 16, 16))
    removed = holes(3, (4, 16, 16), 0.5)
    clean = M.noisy_linear_imputation(x, removed, noise=0.0)
    noisy = M.noisy_linear_imputation(x, removed, noise=0.1, generator=5)
    diff = (noisy - clean).permute(0, 2, 3, 1)  # (B, H, W, C)
    assert (diff[~removed] == 0).all()
    z = diff[removed] / 0.1
    n = z.numel()
    assert abs(z.mean().item()) < 4 / n**0.5 and abs(z.std().item() - 1) < 4 / (2 * n) ** 0.5
    torch.testing.assert_close(noisy, M.noisy_linear_imputation(x, removed, noise=0.1, generator=5))
    prefix = M.noisy_linear_imputation(x[:2], removed[:2], noise=0.1, generator=5)
    torch.testing.assert_close(prefix, noisy[:2])
    assert not torch.equal(noisy, M.noisy_linear_imputation(x, removed, noise=0.1, generator=6))


def road_reference(model, x, attr, percentages, order):
    """Per example and percentage: rank the pixels (channel-summed attribution, numpy's stable sort),
    remove round(p H W) of them, impute with `numpy_imputation`, score the image alone."""
    b, c, h, w = x.shape
    scores = np.zeros((b, len(percentages)))
    for i in range(b):
        pix = attr[i].sum(0).reshape(-1).numpy()
        ranking = np.argsort(-pix if order == "morf" else pix, kind="stable")
        for k, p in enumerate(percentages):
            removed = np.zeros(h * w, dtype=bool)
            removed[ranking[: round(p * h * w)]] = True
            img = numpy_imputation(x[i].numpy(), removed.reshape(h, w))
            with torch.no_grad():
                scores[i, k] = model(torch.as_tensor(img)[None])[0].item()
    return torch.as_tensor(scores)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_the_loop_reference(order):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 5, 1)).to(D).eval()
    f = lambda v: net(v)[:, 0]  # noqa: E731
    x, attr = images(4, (3, 2, 6, 5)), torch.randn(3, 2, 6, 5, dtype=D)
    attr[0, :, 1, 1] = attr[0, :, 2, 2] = 0.5  # a tie: the lower pixel index first (random: test_road_authors.py)
    ps = (0.0, 0.15, 0.5, 0.9)
    before = (x.clone(), attr.clone())
    curve = M.road(f, attr, percentages=ps, order=order, noise=0.0, ties="index", chunk_size=3)(x)
    assert torch.equal(x, before[0]) and torch.equal(attr, before[1]) and not net.training
    want = road_reference(lambda v: net(v), x, attr, ps, order)
    torch.testing.assert_close(curve.scores, want, atol=1e-10, rtol=0)
    fractions = torch.tensor([round(p * 30) / 30 for p in ps], dtype=D)
    torch.testing.assert_close(curve.fractions, fractions)
    torch.testing.assert_close(curve.auc, torch.trapezoid(want, fractions, dim=1), atol=1e-10, rtol=0)
    per_pixel = M.road(f, attr.sum(1), percentages=ps, order=order, noise=0.0, ties="index")(x)  # (B, H, W)
    torch.testing.assert_close(per_pixel.scores, curve.scores)
    one = lambda i: M.road(f, attr[i : i + 1], percentages=ps, order=order, noise=0.0, ties="index")  # noqa: E731
    loop = torch.cat([one(i)(x[i : i + 1]).scores for i in range(3)])
    torch.testing.assert_close(loop, curve.scores)


def test_road_noise_is_deterministic_and_batch_prefix_invariant():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 1)).to(D).eval()
    f = lambda v: net(v)[:, 0]  # noqa: E731
    x, attr = images(6, (4, 2, 8, 8)), images(7, (4, 2, 8, 8))
    m = M.road(f, attr, noise=0.05, generator=3)
    a, b = m(x), m(x)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(M.road(f, attr[:2], noise=0.05, generator=3)(x[:2]).scores, a.scores[:2])
    torch.testing.assert_close(M.road(f, attr, noise=0.05, generator=3, chunk_size=4)(x).scores, a.scores)
    clean = M.road(f, attr, noise=0.0)(x).scores
    assert not torch.equal(a.scores, clean)
    assert (a.scores - clean).abs().max() < 0.5  # noise of std 0.05 on the imputed pixels only


@pytest.fixture(scope="module")
def digits_cnn():
    return train_digits_cnn()


def train_digits_cnn():
    """A small CNN on scikit-learn's 8x8 digits, trained for a few seconds with a fixed seed."""
    data, labels = load_digits(return_X_y=True)
    x = torch.tensor(data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(1024, 10))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(6):
        perm = torch.randperm(1500)
        for i in range(0, 1500, 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x[1500:1548], y[1500:1548]


def test_road_morf_of_integrated_gradients_falls_faster_than_of_random_attributions(digits_cnn):
    model, x, y = digits_cnn
    assert (model(x).argmax(1) == y).float().mean() > 0.85
    f = xattr.target(lambda v: model(v).softmax(-1), y)
    ig = xattr.integrated_gradients(f, n_steps=16)(x)
    rnd = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    morf_ig = M.road(f, ig, generator=0)(x)
    morf_rnd = M.road(f, rnd, generator=0)(x)
    assert morf_ig.auc.mean() < morf_rnd.auc.mean() - 0.15, (morf_ig.auc.mean(), morf_rnd.auc.mean())
    assert (morf_ig.auc < morf_rnd.auc).float().mean() > 0.75
    # accuracy after imputing the top 10% of IG's pixels is lower than after random 10%
    correct = lambda v, labels: (model(v).argmax(1) == labels).double()  # noqa: E731
    acc = lambda a: M.road(correct, a, percentages=(0.1,), generator=0)(x, y).scores.mean()  # noqa: E731
    assert acc(ig) < acc(rnd)


def test_road_errors():
    f = lambda v: v.flatten(1).sum(1)  # noqa: E731
    x = images(0, (2, 1, 4, 4))
    for bad in [(), (0.5, 0.2), (0.1, 1.0), (-0.1,), ("a",), (0.3, 0.3)]:
        with pytest.raises(ValueError, match="percentages"):
            M.road(f, x, percentages=bad)
    with pytest.raises(ValueError, match="removes all 4 pixels"):
        M.road(f, images(0, (2, 1, 2, 2)), percentages=(0.9,))(images(0, (2, 1, 2, 2)))
    with pytest.raises(ValueError, match="order"):
        M.road(f, x, order="random")
    with pytest.raises(ValueError, match="imputation"):
        M.road(f, x, imputation="fixed")
    with pytest.raises(ValueError, match="noise"):
        M.road(f, x, noise=-1.0)
    with pytest.raises(ValueError, match=r"float images \(B, C, H, W\)"):
        M.road(f, x[:, 0])(x[:, 0])
    with pytest.raises(ValueError, match="no neighbours"):
        M.road(f, x[:, :, :1, :1])(x[:, :, :1, :1])
    with pytest.raises(ValueError, match="do not fit"):
        M.road(f, x[:, :, :3])(x)
    with pytest.raises(TypeError, match="argnums"):
        M.road(f, x, argnums=(0,))
    with pytest.raises(ValueError, match="every pixel removed"):
        M.noisy_linear_imputation(x, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        M.noisy_linear_imputation(x, torch.ones(4, 4))
