"""Edge cases of the perturbation methods: integer and bool model outputs, integer baselines
outside the input dtype's range, writes behind a prepared call's back that only the bits show,
inputs without elements, non-finite inputs in large copies, and bounds on what the methods
build and keep (no F x F coalitions, no L x L occlusion tables, no large cached constants).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xattr
from xattr._src import masks as masks_module
from xattr._src import copies as copies_module
from xattr._src import perturb as perturb_module
from xattr._src import prepared as prepared_module


class Largest(TorchDispatchMode):
    """Records the largest tensor (in elements) that any torch op makes while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.numel = max(self.numel, o.numel())
        return out


METHODS = {
    "feature_ablation": lambda f: xattr.feature_ablation(f),
    "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(1,)),
    "feature_permutation": lambda f: xattr.feature_permutation(f, generator=0),
    "shapley_values": lambda f: xattr.shapley_values(f),
    "shapley_value_sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=6, generator=0),
    "lime": lambda f: xattr.lime(f, n_samples=30, generator=0),
    "kernel_shap": lambda f: xattr.kernel_shap(f, n_samples=30, generator=0),
}

# ----------------------------------------------------------------------------- integer and bool outputs


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", ["int64", "int16", "bool"])
def test_integer_and_bool_outputs_are_taken_as_floats_by_every_method(method, kind):
    """A count or a vote: every method gives the attributions the float model's outputs give,
    in the default float dtype (shapley_value_sampling failed on them; bool outputs could not be
    subtracted; shapley_values rounded its values to whole numbers)."""
    x = torch.tensor([[0.5, 1.0, -2.0, 0.3], [-1.0, 0.2, 0.7, 0.1], [0.4, -0.3, 0.9, 1.5]])
    votes = lambda x: (x > 0).sum(1) >= 3  # noqa: E731  a game that is not additive
    counted = (lambda x: votes(x).to(getattr(torch, kind))) if kind != "bool" else votes
    as_float = lambda x: votes(x).float()  # noqa: E731
    got, want = METHODS[method](counted)(x), METHODS[method](as_float)(x)
    assert got.dtype == torch.get_default_dtype()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_shapley_values_of_an_integer_game_are_not_rounded():
    majority = lambda x: ((x > 0).sum(1) >= 2).long()  # noqa: E731  each of 3 players is worth 1/3
    got = xattr.shapley_values(majority)(torch.ones(1, 3))
    torch.testing.assert_close(got, torch.full((1, 3), 1 / 3))


def test_kernel_shap_weighs_every_coalition_in_floats_for_an_integer_model():
    """n_samples >= 2^F enumerates the coalitions with their Shapley kernel weights: cast to an
    integer model's int64 they were all 0, and every feature got the same share."""
    x = torch.tensor([[0.5, 1.0, -2.0, 0.3]])
    positives = lambda x: (x > 0).sum(1)  # noqa: E731  additive: each positive feature adds 1
    got = xattr.kernel_shap(positives, n_samples=50)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, 0.0, 1.0]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 1)])
def test_integer_inputs_to_an_integer_model_get_float_attributions(shape):
    """A (B, F) input with the default mask skips the scatter: integer drops came out int64."""
    ids = torch.tensor([[1, 2, 3], [4, 0, 6]]).reshape(shape)
    fa = xattr.feature_ablation(lambda ids: ids.flatten(1).sum(1))
    for _ in range(4):  # the general path, then prepared calls
        got = fa(ids)
        assert got.dtype == torch.float32 and torch.equal(got, ids.float())


# ----------------------------------------------------------------------------- integer baselines


@pytest.mark.parametrize("dtype, baseline", [
    (torch.uint8, 300), (torch.uint8, torch.tensor(300)), (torch.uint8, torch.tensor([300, 0, 0])), (torch.uint8, torch.tensor(-1)),
    (torch.uint8, -1), (torch.int32, 2**32 + 5), (torch.int32, torch.tensor(2**32 + 5)), (torch.int64, 2**70), (torch.int64, 1e19),
    (torch.bool, 2), (torch.bool, torch.tensor([0, 2, 1])), (torch.int16, torch.tensor(float("inf"))),
], ids=str)  # fmt: skip
def test_integer_baselines_the_dtype_cannot_hold_are_refused(dtype, baseline):
    """300 for a uint8 input wrapped to 44 (and -1 to 255) instead of raising."""
    ids = torch.tensor([[4, 8, 1]]).to(dtype)
    with pytest.raises(ValueError, match=f"baselines for a {dtype} input must be values of that dtype"):
        xattr.feature_ablation(lambda i: i.double().sum(1), baselines=baseline)(ids)


def test_the_refusal_names_the_baseline_values_out_of_range():
    ids = torch.tensor([[4, 8, 1, 0, 2, 3]], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"got \[300\]$"):
        xattr.feature_ablation(lambda i: i.double().sum(1), baselines=torch.tensor([0, 1, 2, 3, 4, 300]))(ids)


def test_integer_baselines_at_the_edges_of_the_range_are_exact():
    seen = []
    record = lambda i: (seen.append(i.clone()), i.double().sum(1))[1]  # noqa: E731
    xattr.feature_ablation(record, baselines=255)(torch.tensor([[4, 8]], dtype=torch.uint8))
    assert seen[-1][1:].tolist() == [[255, 8], [4, 255]]
    big = 2**53 + 3  # past float64's whole numbers: a number baseline must not pass through a float
    xattr.feature_ablation(record, baselines=big)(torch.tensor([[2**53 + 1, 3]]))
    assert seen[-1][1:].tolist() == [[big, 3], [2**53 + 1, big]]


# ----------------------------------------------------------------------------- prepared calls


def _served_after_a_write(write):
    """Feature ablation of atan2(x, -1) (which tells -0.0 from 0.0) served after ``write(b)``
    changed its zero baseline behind the version counter, and the general path's result."""
    f = lambda x: torch.atan2(x, torch.tensor(-1.0)).sum(1)  # noqa: E731  atan2(+0, -1) = pi, atan2(-0, -1) = -pi
    x = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.zeros(1, 3)
    fa = xattr.feature_ablation(f, baselines=b)
    for _ in range(3):  # the second call prepares, the third is served
        fa(x)
    write(b)
    return fa(x), xattr.feature_ablation(f, baselines=b)(x)


@pytest.mark.parametrize("through", ["data", "numpy"])
def test_a_baseline_flipped_to_negative_zero_behind_the_version_counter_is_seen(through):
    """torch.equal(-0.0, 0.0) is True: the served call used the stale +0.0."""

    def write(b):
        if through == "data":
            b.data[0, 1] = -0.0
        else:
            b.numpy()[0, 1] = -0.0

    served, general = _served_after_a_write(write)
    assert torch.equal(served, general) and general[0, 1] > 5


def test_a_baseline_holding_nan_is_served(monkeypatch):
    """NaN != NaN: a prepared call whose baseline held a NaN was refused, never served."""
    refused = []
    monkeypatch.setattr(prepared_module.Prepared, "refuse", lambda self, key: refused.append(key))
    b = torch.tensor([[float("nan"), 0.0, 0.0]])
    fa = xattr.feature_ablation(lambda x: torch.nan_to_num(x, nan=5.0).sum(1), baselines=b)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    results = [fa(x) for _ in range(4)]
    assert not refused and all(torch.equal(r, torch.tensor([[-4.0, 2.0, 3.0]])) for r in results)


# ----------------------------------------------------------------------------- no elements, huge ids


@pytest.mark.parametrize("method", ["feature_ablation", "shapley_values", "shapley_value_sampling", "lime", "kernel_shap", "feature_permutation"])
def test_inputs_without_elements_are_refused_clearly(method):
    with pytest.raises(ValueError, match="no elements"):
        METHODS[method](lambda x: x.sum(1))(torch.randn(3, 0))


def test_shapley_values_say_how_many_rows_a_thousand_features_would_take():
    # F counts the features an example holds (a huge id alone is one feature: tests/test_perturb_metamorphic.py)
    with pytest.raises(ValueError, match=r"F=1100 would take 2\^1100 model rows"):
        xattr.shapley_values(lambda x: x.sum(1), feature_mask=torch.arange(1100) * 7)(torch.randn(2, 1100))


# ----------------------------------------------------------------------------- non-finite inputs in large copies


def test_large_copies_replace_a_nan_input_by_the_baseline():
    """Past WHERE_ELEMENTS on CPU the copies are x * k + b * (1 - k), and NaN * 0 is NaN: an
    ablated NaN feature stayed NaN (the attribution came out 0 instead of 0 - 1)."""
    x = torch.randn(4, 10000)
    x[0, 5] = float("nan")
    mask = torch.arange(10000).clamp(max=10)
    first_ten = lambda v: torch.nan_to_num(v, nan=0.0)[:, :10].sum(1)  # noqa: E731
    fa = xattr.feature_ablation(first_ten, feature_mask=mask, baselines=1.0)
    small = xattr.feature_ablation(first_ten, feature_mask=mask[:10], baselines=1.0)(x[:, :10].clone())
    for _ in range(4):  # the general path, then prepared calls (their copier)
        got = fa(x)
        assert got[0, 5] == -1.0 and torch.equal(got[:, :10], small)


@pytest.mark.parametrize("where", ["input", "baseline"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_both_spellings_of_the_copies_agree_on_non_finite_values(monkeypatch, where, value):
    """The float ops' copies equal torch.where's bit for bit when an input or a baseline is not
    finite (b * (1 - k) is NaN where a kept feature meets an infinite baseline)."""
    x, b = torch.randn(2, 5), torch.randn(1, 5)
    (x if where == "input" else b)[0, 2] = value
    keep = torch.rand((3, 2, 5), generator=torch.Generator().manual_seed(0)) > 0.5
    monkeypatch.setattr(copies_module, "WHERE_ELEMENTS", 0)
    copier, _ = copies_module.copier(x, b[None], keep)
    by_ops, served = copies_module.perturb(x[None], b[None], keep), copier(x)
    want = torch.where(keep, x, b)
    assert torch.equal(by_ops.view(torch.int32), want.view(torch.int32)) and torch.equal(served.view(torch.int32), want.view(torch.int32))


# ----------------------------------------------------------------------------- what is built and kept


@pytest.mark.parametrize("method", ["feature_ablation", "feature_permutation"])
def test_one_feature_off_coalitions_are_made_chunk_by_chunk(method):
    """Every element its own feature: F = 4800 coalitions of 4800 features were one (F, F)
    tensor (23M entries); each chunk now makes its own rows only."""
    x = torch.randn(2, 3, 40, 40)
    n_features, chunk = 3 * 40 * 40, 256
    make = {"feature_ablation": lambda: xattr.feature_ablation(lambda v: v.flatten(1).sum(1), chunk_size=chunk),
            "feature_permutation": lambda: xattr.feature_permutation(lambda v: v.flatten(1).sum(1), generator=0, chunk_size=chunk)}[method]  # fmt: skip
    with Largest() as seen:
        make()(x)
    assert seen.numel <= chunk * n_features  # one call's rows (the copies), nothing F x F


def test_no_large_constant_outlives_a_call():
    """Feature ablation's (F, F) coalitions stayed cached after the call (22 MiB for a 40x40
    RGB input, twice: once more with the all-keep copy in front)."""
    xattr.feature_ablation(lambda v: v.flatten(1).sum(1), chunk_size=256)(torch.randn(2, 3, 40, 40))
    assert all(t.numel() <= masks_module.SMALL for t in masks_module._CONSTANTS.values())
    assert all(z.numel() <= masks_module.SMALL for _, z in perturb_module._WITH_ONES.values())
    xattr.feature_ablation(lambda v: v.sum(1))(torch.randn(3, 20))  # a small one is still cached (the tabular case)
    assert ("ablate one", 20, torch.device("cpu")) in masks_module._CONSTANTS


def test_occlusion_over_a_long_axis_builds_no_length_squared_table():
    """A (positions, cells) cover table per dim is L x L at stride 1 (1.5 GB as floats for L =
    12,000): the averaging needs neither it nor its float copy."""
    length, chunk = 4000, 64
    x, w = torch.randn(2, length, dtype=torch.float64), torch.randn(length, dtype=torch.float64)
    with Largest() as seen:
        got = xattr.occlusion(lambda v: v @ w, sliding_window_shapes=(1,), chunk_size=chunk)(x)
    assert seen.numel <= chunk * length
    torch.testing.assert_close(got, x * w)  # window 1 of a linear model: each element's own term


def test_token_ids_count_as_embedding_rows_in_the_default_budget():
    """An id costs the model a row of floats, not 8 bytes (`budget.INDEX_BYTES`): one 256-token
    text goes in calls of 8 copies on CPU (2 MiB / 1 KiB an id), not in one call of 257 rows
    (measured 31 s and 2.7 GB on all-MiniLM-L6-v2 against 13 s and 0.9 GB). Floats and bools
    count as their bytes, as before."""
    rows = []
    table = torch.nn.Embedding(1000, 4)

    def f(ids):
        rows.append(len(ids))
        return table(ids).sum((1, 2))

    ids = torch.randint(0, 1000, (1, 256))
    with torch.no_grad():
        out = xattr.feature_ablation(f, baselines=0)(ids)
    assert rows == [8] * 32 + [1], rows  # 256 copies 8 at a time, then f(x)
    rows.clear()
    torch.testing.assert_close(xattr.feature_ablation(f, baselines=0, chunk_size=300)(ids), out, rtol=0, atol=0)
    assert rows == [257]  # f(x) is one more copy
    flags = torch.zeros(1, 256, dtype=torch.bool)
    for x in (flags, flags.float()):
        rows.clear()
        xattr.feature_ablation(lambda t: (rows.append(len(t)), t.sum(1))[1], baselines=1)(x)
        assert rows == [257], (x.dtype, rows)
