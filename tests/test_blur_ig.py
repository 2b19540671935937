"""Blur integrated gradients: the blur against an explicit loop over pixels and taps, its scale
derivative against finite differences, Blur IG against a per-example loop over the paper's
sum, completeness, batch and chunk invariance, many outputs, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.blur_ig import blur_and_derivative, gaussian_blur

D = torch.float64


def images(seed: int, shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def fold(i: int, n: int) -> int:
    """Mirror index with the edge repeated (d c b a | a b c d | d c b a), by walking."""
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def slow_blur(img: torch.Tensor, sigma: float, max_sigma: float) -> torch.Tensor:
    """One (H, W) image: rows then columns, each output pixel a sum over the taps j = -r..r."""
    if sigma == 0:
        return img.clone()
    r = math.ceil(4 * max_sigma)
    g = [math.exp(-j * j / (2 * sigma * sigma)) for j in range(-r, r + 1)]
    k = [v / sum(g) for v in g]
    h, w = img.shape
    rows = torch.zeros_like(img)
    for p in range(h):
        for q in range(w):
            rows[p, q] = sum(k[t] * img[fold(p + t - r, h), q] for t in range(2 * r + 1))
    out = torch.zeros_like(img)
    for p in range(h):
        for q in range(w):
            out[p, q] = sum(k[t] * rows[p, fold(q + t - r, w)] for t in range(2 * r + 1))
    return out


@pytest.mark.parametrize("sigma, max_sigma", [(0.0, 1.0), (0.4, 0.4), (1.3, 2.0), (2.5, 6.0)])
def test_blur_matches_a_loop_over_pixels_and_taps(sigma, max_sigma):
    x = images(0, (2, 5, 7))  # radius ceil(4 max_sigma) up to 24: folds back several times
    got = gaussian_blur(x, sigma, max_sigma)
    for i in range(2):
        torch.testing.assert_close(got[i], slow_blur(x[i], sigma, max_sigma), atol=1e-13, rtol=0)


def test_blur_properties():
    x = images(1, (3, 2, 6, 5))
    assert torch.equal(gaussian_blur(x, 0.0, 5.0), x)  # the identity at scale 0, exactly
    for s in (0.5, 2.0, 40.0):  # each channel's mean is kept
        torch.testing.assert_close(gaussian_blur(x, s, 40.0).mean((-2, -1)), x.mean((-2, -1)), atol=1e-13, rtol=0)
    far = gaussian_blur(x, 40.0)  # far above the image size: the constant mean image
    assert far.std((-2, -1)).max() < 1e-4
    # channels (and any leading dim) are blurred apart
    torch.testing.assert_close(gaussian_blur(x, 1.5)[:, 1], gaussian_blur(x[:, 1], 1.5), atol=1e-14, rtol=0)
    # a constant image stays constant
    const = torch.full((1, 4, 4), 0.3, dtype=D)
    torch.testing.assert_close(gaussian_blur(const, 3.0), const, atol=1e-14, rtol=0)


@pytest.mark.parametrize("max_sigma", [0.7, 3.0, 12.0])
def test_scale_derivative_matches_central_differences(max_sigma):
    x = images(2, (2, 1, 6, 9))
    sigmas = torch.tensor([0.05, 0.2, 0.5, 1.0, max_sigma * 0.6, max_sigma - 1e-3], dtype=D)
    _, d_ds = blur_and_derivative(x, sigmas, max_sigma)
    h = 1e-5
    up, _ = blur_and_derivative(x, sigmas + h, max_sigma)
    down, _ = blur_and_derivative(x, sigmas - h, max_sigma)
    torch.testing.assert_close(d_ds, (up - down) / (2 * h), atol=1e-8, rtol=1e-6)
    assert d_ds.abs().max() > 1e-2  # not a trivially zero derivative
    # at scale 0 (the input's end) the path is flat: the derivative vanishes
    _, d0 = blur_and_derivative(x, torch.zeros(1, dtype=D), max_sigma)
    assert torch.equal(d0, torch.zeros_like(d0))


def small_cnn(seed: int, channels: int = 1, classes: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 30, classes)
    ).to(D).eval()


def reference(f1, x, max_sigma, n_steps):
    """The paper's sum, one example at a time: sigma_i = i max_sigma / n for i = 0..n-1,
    attr -= (sigma_{i+1} - sigma_i) * grad f(blur(x, sigma_i)) * d blur/d sigma (sigma_i), with
    the slow blur and a central difference of it for the derivative."""
    out = []
    for xi in x:

        def blur(s):
            return torch.stack([slow_blur(c, s, max_sigma) for c in xi])

        total = torch.zeros_like(xi)
        for i in range(n_steps):
            s = i * max_sigma / n_steps
            h = 1e-5
            d_ds = (blur(s + h) - blur(s)) / h if s == 0 else (blur(s + h) - blur(s - h)) / (2 * h)
            point = blur(s).requires_grad_(True)
            (g,) = torch.autograd.grad(f1(point), point)
            total -= (max_sigma / n_steps) * g * d_ds
        out.append(total)
    return torch.stack(out)


def test_matches_the_papers_sum_as_a_loop_over_examples_and_steps():
    model = small_cnn(3)
    x = images(3, (2, 1, 5, 6))
    attr = xattr.blur_integrated_gradients(xattr.target(model, 0), max_sigma=2.0, n_steps=8, method="riemann_right")(x)
    ref = reference(lambda v: model(v[None])[0, 0], x, 2.0, 8)
    torch.testing.assert_close(attr, ref, atol=1e-7, rtol=1e-6)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3), max_sigma=st.floats(0.3, 20.0), channels=st.integers(1, 2))
def test_completeness_on_random_smooth_cnns(seed, batch, max_sigma, channels):
    model = small_cnn(seed, channels)
    f = xattr.target(model, 0)
    x = images(seed, (batch, channels, 5, 6))
    attr = xattr.blur_integrated_gradients(f, max_sigma=max_sigma, n_steps=64)(x)
    with torch.no_grad():
        change = f(x) - f(gaussian_blur(x, max_sigma))
    torch.testing.assert_close(attr.sum((1, 2, 3)), change, atol=1e-6, rtol=1e-5)


def test_quadrature_converges_to_completeness():
    model = small_cnn(4)
    f = xattr.target(model, 0)
    x = images(4, (2, 1, 5, 6))
    with torch.no_grad():
        change = f(x) - f(gaussian_blur(x, 10.0))
    gaps = []
    for n in (8, 32, 128):
        attr = xattr.blur_integrated_gradients(f, max_sigma=10.0, n_steps=n, method="riemann_middle")(x)
        gaps.append((attr.sum((1, 2, 3)) - change).abs().max().item())
    assert gaps[1] < gaps[0] / 8 and gaps[2] < gaps[1] / 8  # second order: 16x per 4x steps
    assert gaps[2] < 1e-4


def test_batch_equals_per_example_loop_and_chunks_change_nothing():
    f = xattr.target(small_cnn(5), 0)
    x = images(5, (3, 1, 5, 6))
    blur_ig = xattr.blur_integrated_gradients(f, max_sigma=4.0, n_steps=12)
    whole = blur_ig(x)
    for i in range(3):
        torch.testing.assert_close(blur_ig(x[i : i + 1])[0], whole[i], atol=1e-13, rtol=1e-11)
    chunked = xattr.blur_integrated_gradients(f, max_sigma=4.0, n_steps=12, chunk_size=5)(x)
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=1e-11)


def test_chunks_walk_the_path_chunk_by_chunk(monkeypatch):
    """With chunk_size the blurred images are made per chunk (NOTE: [Path points per chunk]):
    no call builds more scales than one chunk's steps, and the numbers do not change."""
    import xattr._src.blur_ig as B

    sizes, real = [], B.blur_and_derivative

    def counting(x, sigmas, top):
        sizes.append(len(sigmas))
        return real(x, sigmas, top)

    f = xattr.target(small_cnn(5), 0)
    x = images(7, (2, 1, 5, 6))
    whole = xattr.blur_integrated_gradients(f, max_sigma=4.0, n_steps=12)(x)
    monkeypatch.setattr(B, "blur_and_derivative", counting)
    chunked = xattr.blur_integrated_gradients(f, max_sigma=4.0, n_steps=12, chunk_size=6)(x)  # 3 steps x 2 rows a chunk
    assert sizes == [3, 3, 3, 3]
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=1e-11)


def test_many_outputs_give_one_attribution_per_output():
    model = small_cnn(6, classes=3)
    x = images(6, (2, 1, 5, 6))
    many = xattr.blur_integrated_gradients(xattr.target(model, xattr.outputs([0, 2])), max_sigma=3.0, n_steps=10)(x)
    assert many.shape == (2, 2, 1, 5, 6)
    for k, t in enumerate((0, 2)):
        one = xattr.blur_integrated_gradients(xattr.target(model, t), max_sigma=3.0, n_steps=10)(x)
        torch.testing.assert_close(many[:, k], one, atol=1e-12, rtol=1e-10)


def test_float32_images_without_channel_dim_and_inputs_untouched():
    torch.manual_seed(7)
    lin = nn.Linear(30, 1)

    def f(x):  # (B, H, W) images
        return torch.tanh(lin(x.flatten(1)))[:, 0]

    x = images(7, (2, 5, 6)).float()
    before = x.clone()
    attr = xattr.blur_integrated_gradients(f, max_sigma=3.0, n_steps=32)(x)
    assert attr.dtype == torch.float32 and attr.shape == x.shape
    assert torch.equal(x, before)
    with torch.no_grad():
        change = f(x) - f(gaussian_blur(x.double(), 3.0).float())
    torch.testing.assert_close(attr.sum((1, 2)), change, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_sigma=0.0), "max_sigma"),
        (dict(max_sigma=-1.0), "max_sigma"),
        (dict(max_sigma=math.inf), "max_sigma"),
        (dict(max_sigma=math.nan), "max_sigma"),
        (dict(max_sigma=True), "max_sigma"),
        (dict(max_sigma="3"), "max_sigma"),
        (dict(n_steps=0), "n_steps"),
        (dict(method="simpson"), "unknown method"),
    ],
)
def test_bad_arguments_are_refused_when_the_method_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xattr.blur_integrated_gradients(lambda x: x.sum((1, 2, 3)), **kwargs)


def test_non_images_and_integer_inputs_are_refused():
    blur_ig = xattr.blur_integrated_gradients(lambda x: x.flatten(1).sum(1), max_sigma=2.0)
    with pytest.raises(ValueError, match="two \\(spatial\\) dims"):
        blur_ig(torch.ones(3, 5, dtype=D))  # tabular (B, F)
    with pytest.raises(TypeError, match="blur_integrated_gradients"):
        blur_ig(torch.ones(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(torch.ones(1, 4, 4), -0.5)
    with pytest.raises(ValueError, match="must not exceed max_sigma"):
        gaussian_blur(torch.ones(1, 4, 4), 3.0, 2.0)
