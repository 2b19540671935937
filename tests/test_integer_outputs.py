"""Integer model outputs past 2^24 keep their exact differences (NOTE: [Integer outputs] in
exact_baselines.py): they are taken in the widest float dtype among the default one and the
model's float arguments, so float64 inputs give float64 drops, while float32 and integer inputs
keep float32 attributions and float models are untouched."""

import itertools
import math
from fractions import Fraction

import pytest
import torch

import xattr

SCALE = 2**30  # each feature is worth up to 2^30: past float32's 2^24 whole numbers
F = 4


def _x(dtype=torch.float64, batch=3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, F, generator=g, dtype=torch.float64) * 2 - 1
    return x.to(dtype)


def counts(x):
    """Additive: feature i is worth round(x_i * 2^30), an int64 count."""
    return (x * SCALE).round().long().sum(-1)


def game(x):
    """Not additive: feature 0's count is paid again while feature 1 is present (not 0)."""
    v = (x * SCALE).round().long()
    return v.sum(-1) + v[:, 0] * (v[:, 1] != 0).long()


def _with(x, kept):
    """x with the features not in ``kept`` set to the baseline 0."""
    y = torch.zeros_like(x)
    for i in kept:
        y[:, i] = x[:, i]
    return y


def brute_ablation(f, x):
    """f(x) - f(x without feature i), one model call per feature, in int64: exact."""
    fx = f(x)
    return torch.stack([fx - f(_with(x, [j for j in range(F) if j != i])) for i in range(F)], 1)


def brute_shapley(f, x):
    """Exact Shapley values (rationals) from every coalition, one model call each."""
    value = {s: f(_with(x, s)) for r in range(F + 1) for s in itertools.combinations(range(F), r)}
    phi = []
    for b in range(x.shape[0]):
        row = []
        for i in range(F):
            total = Fraction(0)
            others = [j for j in range(F) if j != i]
            for r in range(F):
                w = Fraction(math.factorial(r) * math.factorial(F - r - 1), math.factorial(F))
                for s in itertools.combinations(others, r):
                    gain = int(value[tuple(sorted(s + (i,)))][b]) - int(value[s][b])
                    total += w * gain
            row.append(float(total))
        phi.append(row)
    return torch.tensor(phi, dtype=torch.float64)


ABLATIONS = {
    "feature_ablation": lambda f: xattr.feature_ablation(f),
    "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(1,)),
}
SHAPLEY = {
    "shapley_values": lambda f: xattr.shapley_values(f),
    "shapley_value_sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=4, generator=0),
    "kernel_shap": lambda f: xattr.kernel_shap(f, n_samples=64, generator=0),
}
ALL = {
    **ABLATIONS,
    **SHAPLEY,
    "lime": lambda f: xattr.lime(f, n_samples=40, generator=0),
    "feature_permutation": lambda f: xattr.feature_permutation(f, generator=0),
}


def test_the_counts_need_more_than_float32():
    """The test's premise: float32 rounds these drops (by up to 2^7 near 2^31)."""
    want = brute_ablation(counts, _x())
    assert want.abs().max() > 2**24
    assert not torch.equal(want.float().double(), want.double())


@pytest.mark.parametrize("method", sorted(ABLATIONS))
def test_ablation_of_large_counts_is_exact(method):
    x = _x()
    want = brute_ablation(counts, x).double()
    got = ABLATIONS[method](counts)(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# The 3rd and later calls of one signature are served by a prepared call (NOTE: [Prepared calls]),
# whose output conversion is prepared.py's own: OneCall converts with output_float_dtype too.
@pytest.mark.parametrize("method", sorted(ABLATIONS))
def test_prepared_calls_of_large_counts_are_exact(method):
    x = _x()
    want = brute_ablation(counts, x).double()
    explain = ABLATIONS[method](counts)
    for _ in range(4):  # the general path twice, then prepared calls
        got = explain(x)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("method", sorted(SHAPLEY))
def test_shapley_values_of_an_additive_count_are_each_features_count(method):
    """Every coalition method recovers an additive game's own terms; exactly but for kernel_shap's
    float64 solve (float32 drops were off by up to 2^7)."""
    x = _x()
    want = brute_ablation(counts, x).double()
    got = SHAPLEY[method](counts)(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0 if method != "kernel_shap" else 1e-5)


def test_exact_shapley_values_of_a_large_integer_game():
    x = _x()
    want = brute_shapley(game, x)
    got = xattr.shapley_values(game)(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", sorted(ALL))
def test_an_int64_model_is_taken_as_its_float64_twin_for_float64_inputs(method):
    """Bit for bit the same attributions as the model whose counts are float64 numbers."""
    x = _x()
    got, want = ALL[method](game)(x), ALL[method](lambda x: game(x).double())(x)
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_feature_permutation_of_large_counts_is_exact():
    x = _x(batch=2)  # a permutation of 2 examples that is not the identity swaps them
    swapped = [x.clone() for _ in range(F)]
    for i, s in enumerate(swapped):
        s[:, i] = x.flip(0)[:, i]
    want = torch.stack([counts(x) - counts(s) for s in swapped], 1).double()
    got = xattr.feature_permutation(counts, generator=0)(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_python_int_for_the_whole_batch_is_exact():
    """A model returning one Python int for the batch (aggregate mode) was taken through float32."""
    x = _x()
    total = lambda x: int(counts(x).sum())  # noqa: E731
    want = brute_ablation(counts, x).sum(0, keepdim=True).double()
    got = xattr.feature_ablation(total)(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_float64_pass_through_argument_makes_integer_outputs_float64():
    """Integer ids attributed, a float64 table passed through: the outputs are taken in float64."""
    ids = torch.tensor([[1, 2, 3, 0], [3, 3, 1, 2]])
    table = torch.rand(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(ids, table):
        return (table[ids] * SCALE).round().long().sum(-1)

    got = xattr.feature_ablation(f, baselines=0)(ids, table)
    want = torch.stack([f(ids, table) - f(ids.index_fill(1, torch.tensor([i]), 0), table) for i in range(F)], 1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want.double(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- dtypes kept


@pytest.mark.parametrize("method", sorted(ALL))
@pytest.mark.parametrize("kind", ["int64", "int32", "int16", "bool"])
def test_integer_outputs_of_float32_inputs_stay_float32(method, kind):
    """No dtype change for float32 inputs: an integer model's attributions are float32 (its
    float32 twin's, bit for bit)."""
    x = _x(torch.float32)
    out = (lambda x: game(x) > 0) if kind == "bool" else (lambda x: (game(x) >> 12).to(getattr(torch, kind)))
    got, want = ALL[method](out)(x), ALL[method](lambda x: out(x).float())(x)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_integer_inputs_to_an_integer_model_stay_in_the_default_dtype():
    ids = torch.tensor([[1, 2, 3, 4], [4, 0, 6, 9]])
    for _ in range(4):
        got = xattr.feature_ablation(lambda ids: ids.sum(1))(ids)
        assert got.dtype == torch.get_default_dtype() and torch.equal(got, ids.float())


@pytest.mark.parametrize("method", sorted(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_models_are_unchanged(method, dtype):
    """A float32 model keeps float32 attributions for float32 inputs, float64 ones for float64
    inputs (the inputs' dtype widened to the outputs'); a float64 model widens float32 inputs."""
    x = _x(dtype)
    f32 = lambda x: (x.float() * 3).sum(-1)  # noqa: E731
    assert ALL[method](f32)(x).dtype == dtype
    f64 = lambda x: (x.double() * 3).sum(-1)  # noqa: E731
    assert ALL[method](f64)(x).dtype == torch.float64


def test_float32_model_attributions_match_brute_force():
    x = _x(torch.float32)
    f = lambda x: (x * 3).sum(-1)  # noqa: E731
    explain = xattr.feature_ablation(f)
    for _ in range(4):
        got = explain(x)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, brute_ablation(f, x))


def test_a_python_float_output_keeps_float64_precision():
    # A loss's .item() is one number per batch in double precision; with float64 inputs its
    # differences must not go through float32 (they did: relative errors up to 6.5e-4 here).
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double().eval()
    x = torch.rand(8, 6, dtype=torch.float64)
    as_tensor = lambda z: m(z).sum() + 1e4  # noqa: E731
    as_python = lambda z: float(m(z).sum()) + 1e4  # noqa: E731
    for explain in (xattr.feature_ablation, xattr.shapley_values, lambda g: xattr.kernel_shap(g, n_samples=64, generator=0)):
        want, got = explain(as_tensor)(x), explain(as_python)(x)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
