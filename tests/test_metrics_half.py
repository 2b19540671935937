"""Metrics and TCAV with float16 and bfloat16 attributions and models.

NOTE: [Metrics of half-precision maps] in xattr/metrics/_similarity.py: the metrics compute and
return in the maps' dtype widened to at least float32. Every check here compares a half-precision
computation with the float64 computation on the *same* values (maps drawn in float64 and rounded
to the half dtype, so that widening them back is exact), at sizes where float16 overflows
(65504: a count of 76800 pixels, the sum of 150528 magnitudes) and where bfloat16's 8 significant
bits round counts. Tolerance: rtol = atol = 1e-6 (float32 arithmetic on values of order 1..12;
the measured errors are below 3e-6 relative to 11.7 for the entropy and below 5e-7 elsewhere).
TCAV on a bfloat16 model is compared with the float32 model (same seed): its CAVs are fitted on
float32 copies of the activations (NOTE: [CAVs of half-precision models] in
xattr/concepts/_classifier.py), and a model run in bfloat16 moves a few directional derivatives
across 0, so per-run sign counts may differ by one input in 20 plus bfloat16 rounding.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import xattr
from xattr import metrics as M
from xattr.concepts import Concept, LogisticRegression, cav, fit_cav, random_concepts, tcav

HALF = [torch.float16, torch.bfloat16]
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _same_values(shape, dt, seed=0, transform=None):
    """A float64 map rounded to ``dt``: the half tensor and its exact float64 copy."""
    t = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    t = transform(t) if transform is not None else t
    h = t.to(dt)
    return h, h.double()


def _close(half_result, reference):
    torch.testing.assert_close(half_result.double(), reference, **TOL)
    assert half_result.dtype == torch.float32, half_result.dtype


@pytest.mark.parametrize("dt", HALF)
def test_sparseness_of_image_sized_half_maps(dt):
    # float16: positions 1..3072 and P * sum overflow (NaN); bfloat16 rounds them
    for shape, scale in [((2, 3, 32, 32), 1.0), ((2, 3, 8, 8), 400.0), ((2, 3, 224, 224), 1.0)]:
        h, d = _same_values(shape, dt, transform=lambda t: scale * t**4)
        _close(M.sparseness(h), M.sparseness(d))


@pytest.mark.parametrize("dt", HALF)
def test_complexity_of_a_near_uniform_224_map(dt):
    h, d = _same_values((2, 3, 224, 224), dt)
    ref = M.complexity(d)
    assert (ref > 11.7).all()  # close to log(150528) = 11.92, nowhere near 0
    _close(M.complexity(h), ref)
    _close(M.complexity(lambda x: x * h, torch.ones(1, dtype=dt)), ref)  # an attribution function


@pytest.mark.parametrize("dt", HALF)
def test_top_k_intersection_of_more_than_65504_elements(dt):
    a, a64 = _same_values((2, 3, 224, 224), dt, seed=1)
    b, b64 = _same_values((2, 3, 224, 224), dt, seed=2, transform=lambda t: a64 + 0.01 * t)
    for k in (0.5, 1.0, 70_000):
        _close(M.top_k_intersection(a, b, k=k), M.top_k_intersection(a64, b64, k=k))


@pytest.mark.parametrize("dt", HALF)
def test_spearman_and_ssim_of_half_maps(dt):
    a, a64 = _same_values((2, 3, 64, 64), dt, seed=3, transform=lambda t: t - 0.5)
    b, b64 = _same_values((2, 3, 64, 64), dt, seed=4, transform=lambda t: t - 0.5 + a64)
    _close(M.spearman(a, b), M.spearman(a64, b64))
    _close(M.spearman(a, b, abs=True), M.spearman(a64, b64, abs=True))
    _close(M.ssim(a, b), M.ssim(a64, b64))
    c, c64 = _same_values((2, 224, 224), dt, seed=5)
    _close(M.ssim(c, c.flip(-1)), M.ssim(c64, c64.flip(-1)))


@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("curve", [M.deletion, M.insertion])
def test_curves_of_a_half_model_with_more_than_65504_features(dt, curve):
    # every pixel of a 3x160x160 image is a feature: F = 76800 > 65504. Binary inputs and a model
    # summing 256 of them give outputs that are exact in both half dtypes, so the float64 model's
    # curve is the reference for all of fractions, scores and area.
    g = torch.Generator().manual_seed(0)
    x64 = torch.randint(0, 2, (2, 3, 160, 160), generator=g).double()
    phi, phi64 = _same_values(x64.shape, dt, seed=6)

    def f(x):
        return x.flatten(1)[:, ::300].sum(1)

    ref = curve(f, phi64, n_steps=10)(x64)
    got = curve(f, phi, n_steps=10)(x64.to(dt))
    torch.testing.assert_close(ref.fractions, torch.arange(11, dtype=torch.float64) / 10)
    assert torch.isfinite(ref.auc).all() and (ref.scores[:, 0] != ref.scores[:, -1]).all()
    for name in ("fractions", "scores", "auc"):
        _close(getattr(got, name), getattr(ref, name))


# --- TCAV on a bfloat16 model -----------------------------------------------------------------


class _Lines(nn.Module):
    """docs/tcav.md's ZebraNet: conv channel 0 detects horizontal lines, class 0 sums its responses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)
        with torch.no_grad():
            self.conv.weight[0, 0] = torch.tensor([[1.0, 1, 1], [-2, -2, -2], [1, 1, 1]]) / 3
            self.conv.bias[0] = 0.0
            self.fc.weight[0] = 0.0
            self.fc.weight[0, :64] = 1.0 / 64

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _stripes(n, g, contrast):
    rows = (torch.arange(8) % 2).float()[None, :, None].expand(n, 8, 8)
    return (contrast * rows + (1 - contrast) * torch.rand(n, 8, 8, generator=g))[:, None]


@pytest.fixture(scope="module")
def lines():
    g = torch.Generator().manual_seed(0)
    inputs, concept = _stripes(20, g, 0.1), _stripes(30, g, 0.5)
    pool = torch.rand(200, 1, 8, 8, generator=g)
    return _Lines().eval(), inputs, concept, pool


def _tcav(model, data, dt, classifier=None):
    _, inputs, concept, pool = data
    m = copy.deepcopy(model).to(dt)
    randoms = random_concepts(pool.to(dt), n=6, size=20, generator=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SGDClassifier's convergence warnings
        res = tcav(m, {"conv": m.conv}, [Concept(0, "lines", concept.to(dt))], inputs.to(dt), target=0,
                   randoms=randoms, generator=0, classifier=classifier)  # fmt: skip
    return res["lines"]["conv"]


@pytest.mark.parametrize("classifier", [None, "sklearn"])
def test_tcav_on_a_bfloat16_model_agrees_with_float32(lines, classifier):
    if classifier == "sklearn":
        from sklearn.linear_model import LogisticRegression as SkLogistic

        classifier = SkLogistic(max_iter=500)
    ref = _tcav(lines[0], lines, torch.float32, classifier)
    got = _tcav(lines[0], lines, torch.bfloat16, classifier)
    assert float(ref.score) > 0.85 and bool(ref.significant)
    assert torch.equal(got.accuracy.float(), ref.accuracy.float())
    torch.testing.assert_close(got.sign_count.float(), ref.sign_count.float(), rtol=0, atol=0.05 + 2**-8)
    assert abs(float(got.score) - float(ref.score)) <= 0.02
    assert bool(got.significant) == bool(ref.significant)


def _classifiers():
    from sklearn.linear_model import LogisticRegression as SkLogistic

    def mean_difference(X, y):
        return X[y == 1].float().mean(0) - X[y == 0].float().mean(0)

    return {"default": None, "sklearn": SkLogistic(max_iter=500), "torch": LogisticRegression(),
            "function": mean_difference}  # fmt: skip


@pytest.mark.parametrize("name", ["default", "sklearn", "torch", "function"])
def test_fit_cav_on_bfloat16_activations_is_the_float32_fit(name):
    # bfloat16 activations and their exact float32 copy: the same boundary, bias and accuracy;
    # the CAV is the float32 one rounded to bfloat16
    classifier = _classifiers()[name]
    g = torch.Generator().manual_seed(0)
    pos = (torch.randn(40, 600, generator=g) + 0.5).to(torch.bfloat16)
    neg = torch.randn(40, 600, generator=g).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fit_cav(pos.float(), neg.float(), classifier=classifier, generator=0)
        got = fit_cav(pos, neg, classifier=classifier, generator=0)
    assert got.vector.dtype == got.weights.dtype == torch.bfloat16
    assert ref.accuracy > 0.9 and got.accuracy == ref.accuracy
    assert got.bias == pytest.approx(ref.bias, rel=1e-6, abs=1e-9)
    assert torch.equal(got.vector, ref.vector.to(torch.bfloat16))
    assert torch.equal(got.weights, ref.weights.to(torch.bfloat16))


def test_cav_with_an_sklearn_estimator_on_a_bfloat16_model(lines):
    from sklearn.svm import LinearSVC

    model, _, concept, pool = lines
    vs = {}
    for dt in (torch.float32, torch.bfloat16):
        m = copy.deepcopy(model).to(dt)
        vs[dt] = cav(xattr.at_layer(m, m.conv), concept.to(dt), pool[:30].to(dt), classifier=LinearSVC(), generator=0)
    assert vs[torch.bfloat16].vector.dtype == torch.bfloat16
    assert float(vs[torch.bfloat16].vector.float() @ vs[torch.float32].vector) > 0.999
    assert vs[torch.bfloat16].accuracy == vs[torch.float32].accuracy


def test_tcav_scores_of_a_half_precision_model_are_not_rounded_to_half():
    from xattr.concepts._tcav import _scores

    g = torch.randn(20, 8).to(torch.bfloat16)
    vectors = torch.randn(3, 8).to(torch.bfloat16)
    sign, mag = _scores(g, vectors)
    d = g.double() @ vectors.double().T
    torch.testing.assert_close(sign.double(), (d > 0).double().mean(0), rtol=0, atol=1e-7)
    assert sign.dtype == mag.dtype == torch.float32
