"""The perturbation engine (perturb.py) through its methods: masks and their errors, baselines,
how copies become model calls (chunk_size, memory_budget, aggregate mode), progress bars, bool
and integer inputs, pytrees with shared feature ids, pass-through arguments, many outputs,
per-example masks and baselines, exact perturbed values, and a model left untouched.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.masks import features, first_id, keep_masks, scatter_features
from xattr._src.copies import perturb
from xattr._src.perturb import Coalitions, evaluate
from xattr.testing.strategies import ModelSpec, random_tensor

from registry import changed_state, state_snapshot

B = 3
MLP = ModelSpec("mlp", seed=1, in_shape=(5,), n_out=3, activation="tanh", hidden=(4,))


def mlp():
    return MLP.build().eval(), random_tensor((B, 5), seed=7)


class Counting:
    """A model function that records the rows of every call (and passes ``multi_output`` on)."""

    def __init__(self, f):
        self.f, self.rows = f, []
        self.multi_output = getattr(f, "multi_output", False)

    def __call__(self, x, *rest):
        self.rows.append(x.shape[0])
        return self.f(x, *rest)


def same(a, b):
    """Equal up to the last bits: a model's matmuls may round differently for a different number
    of rows per call (BLAS blocking), so a reference with other call sizes is not bitwise equal."""
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def ablate_by_hand(f, x, feature, base=0.0):
    """f(x) - f(x with the elements where ``feature`` is True set to base), explicitly."""
    with torch.no_grad():
        return f(x) - f(torch.where(feature, torch.as_tensor(base, dtype=x.dtype), x))


# ----------------------------------------------------------------------------- masks


def test_mask_errors_say_what_is_wrong():
    model, x = mlp()
    fa = lambda **kw: xattr.feature_ablation(xattr.target(model, 0), **kw)(x)  # noqa: E731
    with pytest.raises(TypeError, match="integer feature ids.*float"):
        fa(feature_mask=torch.zeros(5))
    with pytest.raises(TypeError, match="boolean mask is ambiguous"):
        fa(feature_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(4,\) does not broadcast to the input \(3, 5\)"):
        fa(feature_mask=torch.arange(4))
    with pytest.raises(ValueError, match="more dims than the input"):
        fa(feature_mask=torch.zeros(1, 1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="2 rows for a batch of 3"):
        fa(feature_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="ids must be >= 0"):
        fa(feature_mask=torch.tensor([0, 1, -1, 2, 3]))
    with pytest.raises(ValueError, match="structure of the attributed inputs"):
        xattr.feature_ablation(lambda a, b: model(torch.cat([a, b], 1))[:, 0], argnums=(0, 1),
                               feature_mask=(torch.arange(2),))(x[:, :2], x[:, 2:])  # fmt: skip


def test_masks_broadcast_and_one_example_mask_gets_a_batch_axis():
    x = torch.zeros(B, 2, 3)
    (m,), n = features((x,), torch.tensor([0, 1, 2]))  # broadcast along dim 1
    assert m.shape == (1, 1, 3) and n == 3
    (m,), n = features((x,), torch.arange(6).reshape(B - 1, 3)[:1].expand(2, 3).contiguous() * 0 + torch.tensor([[0], [4]]))
    assert m.shape == (1, 2, 3) and n == 5  # non-contiguous ids: F is the largest id plus one
    (m,), n = features((x,), None)
    assert torch.equal(m, torch.arange(6).reshape(1, 2, 3)) and n == 6


@pytest.mark.parametrize("rows", [1, B])
def test_default_masks_slice_what_explicit_ids_gather(rows):
    """Default masks (ids running on across the tensors) take slices; the same ids given as a mask
    take gathers: the copies' keep masks and the spread attributions must be identical."""
    x = (torch.randn(B, 2, 3), torch.randn(B, 4))
    default, n = features(x, None)
    explicit = (torch.arange(6).reshape(1, 2, 3), torch.arange(6, 10).reshape(1, 4))
    assert [first_id(m) for m in default] == [0, 6] and first_id(explicit[0]) is None and n == 10
    z = torch.rand(rows, 5, n, generator=torch.Generator().manual_seed(0)) < 0.5
    for a, b in zip(keep_masks(z, default, x, B), keep_masks(z, features(x, explicit)[0], x, B)):
        assert torch.equal(a, b)
    values = torch.randn(B, 7, n)  # a K axis of 7 outputs
    for a, b in zip(scatter_features(values, default, x), scatter_features(values, explicit, x)):
        assert torch.equal(a, b)
    for a, b in zip(scatter_features(values[:, 0], default, x), scatter_features(values[:, 0], explicit, x)):
        assert torch.equal(a, b)


def test_ids_shared_across_tensors_are_one_feature():
    model, x = mlp()
    f = xattr.target(model, 1)
    g = lambda d: f(torch.cat([d["a"], d["b"]], 1))  # noqa: E731
    d = {"a": x[:, :2], "b": x[:, 2:]}
    masks = {"a": torch.tensor([0, 1]), "b": torch.tensor([1, 0, 2])}  # feature 0: a[0] and b[1]
    got = xattr.feature_ablation(g, feature_mask=masks)(d)
    flat = torch.tensor([0, 1, 1, 0, 2])
    for j in range(3):
        want = ablate_by_hand(f, x, (flat == j).expand_as(x))
        same(got["a"][:, masks["a"] == j], want[:, None].expand(B, int((masks["a"] == j).sum())))
        same(got["b"][:, masks["b"] == j], want[:, None].expand(B, int((masks["b"] == j).sum())))
    # default masks number the elements across the tensors: the same as the concatenated input
    same(torch.cat(list(xattr.feature_ablation(g)(d).values()), 1), xattr.feature_ablation(f)(x))


def test_per_example_masks_and_baselines():
    model, x = mlp()
    f = xattr.target(model, 2)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 2, 3, 4]])
    base = random_tensor(x.shape, seed=3)
    got = xattr.feature_ablation(f, feature_mask=mask, baselines=base)(x)
    for b in range(B):
        for j in range(int(mask[b].max()) + 1):
            sel = mask[b] == j
            with torch.no_grad():
                xj = x[b : b + 1].clone()
                xj[0, sel] = base[b, sel]
                want = f(x[b : b + 1]) - f(xj)
            same(got[b, sel], want.expand(int(sel.sum())))


# ----------------------------------------------------------------------------- baselines


def test_baseline_errors():
    model, x = mlp()
    fa = xattr.feature_ablation(xattr.target(model, 0))
    with pytest.raises(ValueError, match=r"baselines of shape \(2, 5\) does not broadcast"):
        fa(x, baselines=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same structure"):
        xattr.feature_ablation(lambda a, b: model(torch.cat([a, b], 1))[:, 0], argnums=(0, 1), baselines=(0.0, 0.0, 0.0))(x[:, :2], x[:, 2:])
    emb = nn.Embedding(10, 4)
    tok = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    f = lambda ids: emb(ids).sum((1, 2))  # noqa: E731
    with pytest.raises(ValueError, match="torch.int64 input must be values of that dtype"):
        xattr.feature_ablation(f, baselines=0.5)(tok)
    flags = torch.tensor([[True, False], [False, True], [True, True]])
    with pytest.raises(ValueError, match="torch.bool input"):
        xattr.feature_ablation(lambda b: b.sum(1).double(), baselines=2)(flags)


# ----------------------------------------------------------------------------- model calls


def test_chunk_size_sets_the_rows_per_call():
    model, x = mlp()  # 5 features: x and 5 perturbed copies of 3 rows
    f = Counting(xattr.target(model, 0))
    ref = xattr.feature_ablation(f)(x)
    assert f.rows == [18]  # f(x) is one more copy: all six in one call
    for chunk, calls in [(1, [3] * 6), (3, [3] * 6), (7, [6, 6, 6]), (9, [9, 9]), (100, [18])]:
        f.rows = []
        same(xattr.feature_ablation(f, chunk_size=chunk)(x), ref)
        assert f.rows == calls, (chunk, f.rows)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        xattr.feature_ablation(f, chunk_size=0)(x)


def test_memory_budget_sets_the_copies_per_call():
    model, x = mlp()
    f = Counting(xattr.target(model, 0))
    copy_bytes = x.numel() * x.element_size()  # one perturbed copy of the batch: 120 bytes
    ref = xattr.feature_ablation(f)(x)
    for budget, calls in [(1, [3] * 6), (copy_bytes, [3] * 6), (2 * copy_bytes + 1, [6, 6, 6]), (5 * copy_bytes, [15, 3])]:
        f.rows = []
        same(xattr.feature_ablation(f, memory_budget=budget)(x), ref)
        assert f.rows == calls, (budget, f.rows)
    f.rows = []
    xattr.feature_ablation(f, memory_budget=1, chunk_size=9)(x)  # chunk_size wins
    assert f.rows == [9, 9]
    with pytest.raises(ValueError, match="memory_budget must be a positive"):
        xattr.feature_ablation(f, memory_budget=-5)(x)


class RunsOutOfMemory(Counting):
    """A model function that raises CUDA's out-of-memory error for a first call of more than
    ``most`` rows, and for later calls of more than ``most_after_first`` (``most`` unless set)."""

    def __init__(self, f, most: int):
        super().__init__(f)
        self.most = self.most_after_first = most

    def __call__(self, x, *rest):
        self.rows.append(x.shape[0])
        if x.shape[0] > (self.most if len(self.rows) == 1 else self.most_after_first):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {x.shape[0]} rows")
        return self.f(x, *rest)


def test_a_call_out_of_memory_is_retried_with_half_the_copies():
    model, x = mlp()  # 3 examples, 5 features: 5 copies of 3 rows
    ref = xattr.feature_ablation(xattr.target(model, 0))(x)
    f = RunsOutOfMemory(xattr.target(model, 0), most=9)
    same(xattr.feature_ablation(f, memory_budget=2**20)(x), ref)
    assert f.rows == [18, 9, 9], f.rows  # x and 5 copies in one call fail; then 3 per call
    f = RunsOutOfMemory(xattr.target(model, 0), most=5)
    same(xattr.feature_ablation(f, memory_budget=2**20)(x), ref)
    assert f.rows == [18, 9] + [3] * 6, f.rows  # halved twice: 1 copy per call from the failed one on
    f = RunsOutOfMemory(xattr.target(model, 0), most=6)
    same(xattr.occlusion(f, sliding_window_shapes=(2,))(x), xattr.occlusion(xattr.target(model, 0), sliding_window_shapes=(2,))(x))
    assert f.rows == [15, 6, 6, 3], f.rows  # x and 4 windows: all in one call fails, then 2 per call


def test_out_of_memory_is_raised_when_the_copies_per_call_are_fixed_or_one():
    model, x = mlp()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        xattr.feature_ablation(RunsOutOfMemory(xattr.target(model, 0), most=7), chunk_size=9)(x)
    f = RunsOutOfMemory(xattr.target(model, 0), most=0)  # every call fails, one copy of the batch too
    with pytest.raises(torch.cuda.OutOfMemoryError):
        xattr.feature_ablation(f, memory_budget=2**20)(x)
    assert f.rows == [18, 9, 3], f.rows


def test_the_accelerator_budget_is_a_64th_of_free_memory_within_bounds():
    from xattr._src.budget import MAX_MEMORY_BUDGET, MEMORY_BUDGET, budget_from_free, default_budget

    assert budget_from_free(0) == MEMORY_BUDGET
    assert budget_from_free(64 * 3 * MEMORY_BUDGET) == 3 * MEMORY_BUDGET
    assert budget_from_free(80 * 2**30) == MAX_MEMORY_BUDGET
    assert default_budget(torch.device("cpu")) < MEMORY_BUDGET
    assert default_budget(torch.device("meta")) == MEMORY_BUDGET


def test_occlusion_and_permutation_follow_the_budget_too():
    model, x = mlp()
    f = Counting(xattr.target(model, 0))
    xattr.occlusion(f, sliding_window_shapes=(2,), chunk_size=6)(x)  # x and 4 windows
    assert f.rows == [6, 6, 3]
    f.rows = []
    xattr.feature_permutation(f, memory_budget=3 * x.numel() * x.element_size(), generator=0)(x)
    assert f.rows == [3, 9, 6]


def test_aggregate_models_get_one_call_per_copy_and_one_row():
    model, x = mlp()
    loss = Counting(lambda x: model(x)[:, 0].sum())
    mask = torch.tensor([0, 0, 1, 2, 2])
    got = xattr.feature_ablation(loss, feature_mask=mask, chunk_size=100)(x)
    assert loss.rows == [12, 3, 3, 3, 3] and got.shape == (1, 5)  # x and 3 copies in one call are refused
    loss.rows = []
    assert torch.equal(xattr.feature_ablation(loss, feature_mask=mask, chunk_size=100)(x), got)
    assert loss.rows == [3, 3, 3, 3]  # a function seen returning one number goes one copy per call at once
    for j in range(3):
        assert torch.equal(got[0, mask == j], ablate_by_hand(loss.f, x, (mask == j).expand_as(x)).expand(int((mask == j).sum())))
    one = xattr.feature_ablation(lambda x: model(x)[:, 0].sum().reshape(1), feature_mask=mask)(x)  # a 1-element output
    assert torch.equal(one, got)
    y = torch.tensor([0, 2, 1])
    ce = Counting(lambda x: nn.functional.cross_entropy(model(x), y))  # raises for any batch but B rows
    got = xattr.feature_ablation(ce, feature_mask=mask)(x)
    assert ce.rows == [12, 3, 3, 3, 3] and got.shape == (1, 5)
    assert torch.equal(got[0, mask == 1], ablate_by_hand(ce.f, x, (mask == 1).expand_as(x)).expand(1))

    def per_example_but_broken(x):  # one number per example, but only for B rows
        return (model(x) * y.double()[:, None]).sum(1)

    with pytest.raises(RuntimeError, match="size of tensor a"):  # its own error, not an aggregate-mode one
        xattr.feature_ablation(per_example_but_broken, feature_mask=mask)(x)
    with pytest.raises(ValueError, match="shared by all examples"):
        xattr.feature_ablation(loss.f, feature_mask=torch.zeros(B, 5, dtype=torch.long))(x)
    occ = xattr.occlusion(loss.f, sliding_window_shapes=(2,))(x)
    assert occ.shape == (1, 5)


def test_models_with_the_wrong_number_of_rows_are_refused():
    model, x = mlp()
    with pytest.raises(ValueError, match="one number per example.*xattr.target"):
        xattr.feature_ablation(model)(x)  # (B, 3) outputs: which one?
    with pytest.raises(ValueError, match=r"returned \(2,\) for 18 input rows \(6 copies of a batch of 3"):
        xattr.feature_ablation(lambda x: model(x)[:2, 0])(x)
    with pytest.raises(ValueError, match=r"returned \(2,\) for a batch of 3"):
        xattr.feature_permutation(lambda x: model(x)[:2, 0], generator=0)(x)
    with pytest.raises(ValueError, match="one output row per input row"):
        xattr.feature_ablation(lambda x: model(x[:B])[:, 0])(x)  # ignores the folded copies
    with pytest.raises(TypeError, match="must return a tensor"):
        xattr.feature_ablation(lambda x: [1.0])(x)
    with pytest.raises(TypeError, match="must return a tensor"):
        xattr.shapley_values(lambda x: True)(x)
    with pytest.raises(ValueError, match=r"outputs of shape \(3,\) per example"):  # the example's, not the folded rows'
        xattr.shapley_values(model)(x)


def test_a_python_number_is_one_number_for_the_batch():
    """Captum's forward functions may return a Python float (a loss's .item()): aggregate mode."""
    model, x = mlp()
    mask = torch.tensor([0, 0, 1, 2, 2])
    tensor_loss = lambda x: model(x)[:, 0].sum().to(torch.get_default_dtype())  # noqa: E731
    python_loss = lambda x: float(model(x)[:, 0].sum())  # noqa: E731
    for make in (lambda f: xattr.feature_ablation(f, feature_mask=mask), lambda f: xattr.shapley_values(f, feature_mask=mask),
                 lambda f: xattr.occlusion(f, sliding_window_shapes=(2,))):  # fmt: skip
        got = make(python_loss)(x)
        assert got.shape[0] == 1
        torch.testing.assert_close(got, make(tensor_loss)(x))


@pytest.mark.parametrize("method", ["feature_ablation", "occlusion", "shapley_values", "shapley_value_sampling", "kernel_shap", "lime"])
def test_an_empty_batch_is_refused_clearly(method):
    model, x = mlp()
    kwargs = {"occlusion": {"sliding_window_shapes": (2,)}, "shapley_value_sampling": {"n_samples": 2},
              "kernel_shap": {"n_samples": 8}, "lime": {"n_samples": 8}}.get(method, {})  # fmt: skip
    with pytest.raises(ValueError, match="batch is empty"):
        getattr(xattr, method)(xattr.target(model, 0), **kwargs)(x[:0])


def test_show_progress_draws_a_bar(capsys):
    model, x = mlp()
    xattr.feature_ablation(xattr.target(model, 0), chunk_size=6, show_progress=True)(x)
    err = capsys.readouterr().err
    assert "perturbed copies" in err and "3/3" in err
    xattr.feature_ablation(xattr.target(model, 0))(x)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("method", ["shapley_values", "shapley_interactions"])
def test_exact_enumerations_show_a_bar_only_when_they_run_long(method, capsys, monkeypatch):
    """show_progress=None (their default): nothing on a short run; a bar once the run has lasted
    AUTO_DELAY seconds (here 0); the same numbers either way; False never draws one."""
    from xattr._src import progress

    model, x = mlp()
    make = getattr(xattr, method)
    quiet = make(xattr.target(model, 0), chunk_size=6)(x)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "AUTO_DELAY", 0.0)
    shown = make(xattr.target(model, 0), chunk_size=6)(x)
    err = capsys.readouterr().err
    assert "perturbed copies" in err
    tensor = lambda r: r if isinstance(r, torch.Tensor) else r.compressed()  # noqa: E731 (Interactions)
    assert torch.equal(tensor(shown), tensor(quiet))
    make(xattr.target(model, 0), chunk_size=6, show_progress=False)(x)
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # without tqdm: no bar, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(xattr.target(model, 0), chunk_size=6)(x)


def test_show_progress_without_tqdm_warns_and_runs(monkeypatch):
    model, x = mlp()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto now fails
    with pytest.warns(UserWarning, match="show_progress needs tqdm"):
        attr = xattr.occlusion(xattr.target(model, 0), sliding_window_shapes=(2,), show_progress=True)(x)
    assert attr.shape == x.shape


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("method", ["feature_ablation", "shapley_values", "occlusion", "kernel_shap"])
def test_attributions_are_as_wide_as_the_model_outputs(method):
    """float16 inputs to a model answering in float32: the output differences are neither rounded
    to float16 nor overflowed to inf; float32 inputs to a float64 model give float64."""
    make = {"feature_ablation": lambda f: xattr.feature_ablation(f),
            "shapley_values": lambda f: xattr.shapley_values(f),
            "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(1,)),
            "kernel_shap": lambda f: xattr.kernel_shap(f, n_samples=64, generator=0)}[method]
    scale = torch.tensor([1e5, 2e5, 3.0001e5])
    wide = lambda x: (x.float() * scale).sum(1)  # noqa: E731  (additive: every method is exact)
    got = make(wide)(torch.ones(2, 3, dtype=torch.float16))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, scale.expand(2, 3))
    double = lambda x: (x.double() * scale.double() / 3).sum(1)  # noqa: E731
    got = make(double)(torch.ones(2, 3, dtype=torch.float32))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, (scale.double() / 3).expand(2, 3))


def test_integer_token_ids_with_a_padding_baseline():
    torch.manual_seed(0)
    emb, lin = nn.Embedding(10, 4), nn.Linear(4, 2)
    f = lambda ids, weights: lin((emb(ids) * weights[..., None]).mean(1))[:, 1]  # noqa: E731
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 1, 2, 3]])
    weights = random_tensor((B, 4), seed=1, dtype=torch.float32).abs()  # a batched pass-through argument
    got = xattr.feature_ablation(f, baselines=0)(ids, weights)
    assert got.dtype == torch.get_default_dtype() and got.shape == ids.shape
    for j in range(4):
        with torch.no_grad():
            ablated = ids.clone()
            ablated[:, j] = 0
            torch.testing.assert_close(got[:, j], f(ids, weights) - f(ablated, weights), rtol=1e-6, atol=1e-7)
    words = torch.tensor([[0, 0, 1, 1]])  # two-token words
    by_word = xattr.feature_ablation(f, baselines=0, feature_mask=words)(ids, weights)
    assert torch.equal(by_word[:, 0], by_word[:, 1])
    occ = xattr.occlusion(f, sliding_window_shapes=(2,), baselines=0)(ids, weights)
    assert occ.shape == ids.shape
    perm = xattr.feature_permutation(f, generator=0)(ids, weights)
    assert perm.shape == ids.shape and torch.isfinite(perm).all()


def test_bool_inputs():
    w = torch.tensor([1.0, -2.0, 3.0, 0.5])
    f = lambda b: b.to(w.dtype) @ w  # noqa: E731
    flags = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, False, False]])
    got = xattr.feature_ablation(f, baselines=False)(flags)
    torch.testing.assert_close(got, flags * w, rtol=0, atol=0)  # dropping a flag costs its weight
    flipped = xattr.feature_ablation(f, baselines=True)(flags)
    torch.testing.assert_close(flipped, (flags.float() - 1) * w, rtol=0, atol=0)


def test_perturbed_values_are_exact():
    # b + keep * (x - b) rounds: kept elements must be x itself, ablated ones the baseline itself
    x = torch.tensor([[0.1, 0.7, 1e-8]], dtype=torch.float64)
    b = torch.tensor([[0.3, 1e10, 3.0]], dtype=torch.float64)
    keep = torch.tensor([[[True, False, True]], [[False, True, True]]])
    copies = perturb(x[None], b[None], keep)
    assert torch.equal(copies, torch.tensor([[[0.1, 1e10, 1e-8]], [[0.3, 0.7, 1e-8]]], dtype=torch.float64))
    assert torch.equal(perturb(x[None], b[None], keep.double()), copies)  # float 0/1 keeps too
    seen = []
    f = lambda x: (seen.append(x.clone()), x.sum(1))[1]  # noqa: E731
    xattr.feature_ablation(f, baselines=b)(x)
    for j, row in enumerate(seen[0][1:]):  # seen[0][0] is x itself
        assert torch.equal(row[torch.arange(3) != j], x[0, torch.arange(3) != j]) and row[j] == b[0, j]


def test_both_spellings_of_the_copies_are_exact(monkeypatch):
    """Small copies are one torch.where, large ones (on CPU) float ops: the same values, bit for bit
    for nonzero finite values; a kept -0.0 may come out +0.0 from the float ops."""
    from xattr._src import copies as engine

    x = random_tensor((3, 4, 50), seed=1)
    b = random_tensor((3, 4, 50), seed=2) * 1e6
    keep = torch.rand((7, 3, 4, 50), generator=torch.Generator().manual_seed(0)) > 0.5
    monkeypatch.setattr(engine, "WHERE_ELEMENTS", 0)
    by_float_ops = perturb(x[None], b[None], keep)
    monkeypatch.setattr(engine, "WHERE_ELEMENTS", 10**9)
    by_where = perturb(x[None], b[None], keep)
    assert torch.equal(by_float_ops, by_where) and torch.equal(by_where, torch.where(keep, x, b))
    assert (by_float_ops.signbit() == by_where.signbit()).all()  # no zeros here: see below
    # the float spelling's one difference (documented in perturb): a kept -0.0 beside a baseline >= 0 comes out +0.0
    x0, b0, all_kept = torch.full((3, 4, 50), -0.0), torch.full((3, 4, 50), 2.0), torch.ones((7, 3, 4, 50), dtype=torch.bool)
    monkeypatch.setattr(engine, "WHERE_ELEMENTS", 0)
    float_ops = perturb(x0[None], b0[None], all_kept)
    monkeypatch.setattr(engine, "WHERE_ELEMENTS", 10**9)
    assert perturb(x0[None], b0[None], all_kept).signbit().all() and torch.equal(float_ops, x0.expand_as(float_ops))
    assert not float_ops.signbit().any()


@settings(max_examples=60, deadline=None)
@given(
    copies=st.integers(1, 5),
    batch=st.integers(1, 4),
    width=st.integers(1, 6),
    kind=st.sampled_from(["float64", "float32", "float16", "bfloat16", "int64", "bool"]),
    base_rows=st.sampled_from([0, 1, "batch"]),  # a number, one shared row, or one per example
    keep_rows=st.sampled_from([1, "batch"]),
    keep_dtype=st.sampled_from(["bool", "float"]),
    where_elements=st.sampled_from([0, 10**9]),  # the float spelling or torch.where
    seed=st.integers(0, 2**16),
)
def test_a_prepared_copier_makes_perturbs_copies_bit_for_bit(copies, batch, width, kind, base_rows, keep_rows, keep_dtype, where_elements, seed):
    from xattr._src import copies as engine

    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, kind)
    x = (torch.randn((batch, width), generator=g) * 3).to(dtype)
    x[0, 0] = -0.0 if dtype.is_floating_point else x[0, 0]
    if dtype.is_floating_point and (where_elements or seed % 2):  # the float ops hand non-finite inputs to torch.where
        x[-1, -1], x[0, -1] = math.inf, math.nan
    b = (torch.randn((batch if base_rows == "batch" else max(base_rows, 1), width), generator=g) * 3).to(dtype)
    b = b if base_rows != 0 else b[:1, :1]
    keep = torch.rand((copies, batch if keep_rows == "batch" else 1, width), generator=g) < 0.5
    keep = keep if keep_dtype == "bool" or not dtype.is_floating_point else keep.to(dtype)
    old = engine.WHERE_ELEMENTS
    try:
        engine.WHERE_ELEMENTS = where_elements
        make, nbytes = engine.copier(x[None], b[None], keep)
        want, want_again = perturb(x[None], b[None], keep), perturb((x * 2)[None], b[None], keep)
        engine.WHERE_ELEMENTS = 10**9 - where_elements  # chosen once: a later change does not matter
        got, again = make(x[None]), make((x * 2)[None])
    finally:
        engine.WHERE_ELEMENTS = old
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    for mine, theirs in ((got, want), (again, want_again)):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        assert torch.equal(mine.view(bits), theirs.view(bits))  # bit for bit: signed zeros, NaN and infinities as perturb makes them
    assert nbytes >= keep.numel() * (keep.dtype == torch.bool)  # it holds at least its mask


def test_pass_through_arguments_are_tiled_and_non_tensors_pass_unchanged():
    model, x = mlp()
    scale = 1.0 + random_tensor((B, 5), seed=2).abs()
    shift = torch.tensor([0.5, -0.5, 0.25, 0.0, 1.0], dtype=x.dtype)  # not batched (dim 0 is not B)
    seen = []

    def f(s, x, shift, power):
        seen.append(s.shape[0])
        return model(x * s + shift**power)[:, 1]

    got = xattr.feature_ablation(f, argnums=1, chunk_size=6)(scale, x, shift, 2)
    assert seen == [6, 6, 6]
    for j in range(5):
        same(got[:, j], ablate_by_hand(lambda x: f(scale, x, shift, 2), x, (torch.arange(5) == j).expand_as(x)))


def test_many_outputs_have_a_k_axis():
    model, x = mlp()
    for method in (xattr.feature_ablation, lambda f: xattr.occlusion(f, sliding_window_shapes=(2,)),
                   lambda f: xattr.feature_permutation(f, generator=0)):  # fmt: skip
        many = method(xattr.target(model, xattr.outputs([2, 0, 1])))(x)
        assert many.shape == (B, 3, 5)
        for j, k in enumerate([2, 0, 1]):
            assert torch.equal(many[:, j], method(xattr.target(model, k))(x))


def test_lazy_coalitions_equal_a_tensor():
    model, x = mlp()
    f = xattr.target(model, 0)
    (masks,), n = features((x,), None)
    z = torch.rand(7, n) > 0.5
    base = (torch.zeros(1, 5, dtype=x.dtype),)
    whole = evaluate(f, (x,), (0,), masks=(masks,), baselines=base, coalitions=z, chunk_size=6)
    lazy = evaluate(f, (x,), (0,), masks=(masks,), baselines=base, coalitions=Coalitions(7, lambda s, e: z[s:e]), chunk_size=6)
    assert torch.equal(whole, lazy) and whole.shape == (B, 7)
    keep = keep_masks(z[None], (masks,), (x,), B)[0]
    assert keep.shape == (7, 1, 5) and torch.equal(keep[:, 0], z)


# ----------------------------------------------------------------------------- no hidden state


@pytest.mark.parametrize("name", ["feature_ablation", "occlusion", "feature_permutation"])
def test_the_model_is_only_called(name):
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    x = random_tensor((B, 5), seed=1).requires_grad_()
    before = state_snapshot(model, x)
    make = {
        "feature_ablation": lambda f: xattr.feature_ablation(f),
        "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(2,)),
        "feature_permutation": lambda f: xattr.feature_permutation(f, generator=0),
    }[name]
    out = make(xattr.target(model, 1))(x)
    assert not changed_state(before, state_snapshot(model, x))
    assert not out.requires_grad
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        make(xattr.target(model, 1))(x)
    assert model.training and all(m.training for m in model.modules())


def test_copies_per_call_counts_whole_copies():
    # the engine's unit: a chunk of c copies of the batch; the last call holds the rest
    model, x = mlp()
    f = Counting(xattr.target(model, 0))
    n = 5
    for chunk in range(1, 20):
        f.rows = []
        xattr.feature_ablation(f, chunk_size=chunk)(x)
        per = max(1, chunk // B)
        assert len(f.rows) == math.ceil((n + 1) / per)  # x is one more copy
        assert all(r % B == 0 for r in f.rows) and sum(f.rows) == (n + 1) * B


def test_cached_constants_are_not_shared_with_inference_mode_and_keep_signed_zeros():
    from xattr._src.perturb import baseline_tree

    x = (torch.zeros(2, 3),)
    a, b = baseline_tree(x, 0.0, True)[0], baseline_tree(x, 0.0, True)[0]
    assert a is b  # one tensor per value, dtype and device
    neg = baseline_tree(x, -0.0, True)[0]
    assert torch.signbit(neg) and not torch.signbit(a)
    with torch.inference_mode():
        c = baseline_tree(x, 0.0, True)[0]
    assert c is not a and c.is_inference() and not a.is_inference()


@pytest.mark.parametrize("method", ["feature_ablation", "occlusion", "shapley_values", "shapley_value_sampling", "kernel_shap", "lime",
                                    "layer_feature_ablation"])  # fmt: skip
def test_attributions_are_differentiable_under_torch_func_grad(method):
    """NOTE: [Detached results]: inside a torch.func gradient transform the model calls are recorded
    (they run under no_grad elsewhere), so d(sum of attributions)/dx equals central differences
    (a no_grad there gave a zero gradient, and Lime's kernel a NaN one)."""
    model, x = mlp()
    f = xattr.target(model, 1)
    make = {"feature_ablation": lambda: xattr.feature_ablation(f),
            "occlusion": lambda: xattr.occlusion(f, sliding_window_shapes=(2,)),
            "shapley_values": lambda: xattr.shapley_values(f),
            "shapley_value_sampling": lambda: xattr.shapley_value_sampling(f, n_samples=3, generator=0),
            "kernel_shap": lambda: xattr.kernel_shap(f, n_samples=40, generator=0),
            "lime": lambda: xattr.lime(f, n_samples=40, generator=0),
            "layer_feature_ablation": lambda: xattr.layer_feature_ablation(xattr.at_layer(f, model.get_submodule(
                next(n for n, m in model.named_modules() if isinstance(m, nn.Linear)))))}[method]  # fmt: skip
    attr = make()
    g = torch.func.grad(lambda z: (attr(z) ** 2).sum())(x)
    fd, eps = torch.zeros_like(x), 1e-6
    for idx in np.ndindex(*x.shape):
        e = torch.zeros_like(x)
        e[idx] = eps
        fd[idx] = ((attr(x + e) ** 2).sum() - (attr(x - e) ** 2).sum()) / (2 * eps)
    assert g.abs().max() > 0
    torch.testing.assert_close(g, fd, atol=1e-6, rtol=1e-5)
    if method in ("feature_ablation", "occlusion", "shapley_values"):  # (the samplers draw: vmap refuses random ops)
        assert not torch.func.vmap(attr)(x[:, None]).requires_grad  # vmap alone records nothing
