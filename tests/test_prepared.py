"""Prepared calls (prepared.py, NOTE: [Prepared calls]): feature ablation or occlusion called again with inputs
of one signature reuses what its first call prepared. The reference is always the general path:
a fresh function's first call, which prepares nothing. Equality is bit for bit, since both make
the same copies and call the model once with the same rows.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
import xattr._src.ablation as ablation
import xattr._src.copies as copies_module
import xattr._src.prepared as prepared_module
from xattr._src import tree as T
from xattr._src.prepared import MAX_PREPARED, OneCall, Prepared, signature
from xattr.testing.strategies import ModelSpec, random_tensor

from test_perturb import Counting

B = 3
MLP = ModelSpec("mlp", seed=1, in_shape=(6,), n_out=3, activation="tanh", hidden=(5,))
CNN = ModelSpec("cnn", seed=2, in_shape=(1, 4, 4), n_out=3, activation="relu")


def _no_general_path(monkeypatch):
    """From here on, the general path fails: a call that succeeds was served prepared."""

    def fail(*_, **__):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(prepared_module, "inputs_and_copies", fail)


def _cases():
    mlp, cnn = MLP.build().double().eval(), CNN.build().double().eval()
    x, xc = random_tensor((B, 6), seed=3), random_tensor((B, 1, 4, 4), seed=4)
    seg = torch.arange(16).reshape(1, 4, 4) // 5  # 4 segments
    per_example = torch.randint(0, 3, (B, 6), generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(1, 9, (B, 5), generator=torch.Generator().manual_seed(1))
    emb = torch.nn.Embedding(9, 4).double()
    return {
        "default mask, zero baseline": (xattr.target(mlp, 1), (x,), {}),
        "a shared feature mask": (xattr.target(cnn, torch.tensor([0, 2, 1])), (xc,), {"feature_mask": seg}),
        "per-example masks and baselines": (xattr.target(mlp, 0), (x,), {"feature_mask": per_example, "baselines": x.flip(0)}),
        "a number baseline": (xattr.target(mlp, 2), (x,), {"baselines": -0.5}),
        "many outputs": (xattr.target(mlp, xattr.outputs([0, 2])), (x,), {}),
        "integer token ids": (xattr.target(lambda t: mlp(emb(t).sum(1).repeat(1, 2)[:, :6]), 0), (tokens,), {"baselines": 0}),
        "two inputs, ids across them": (xattr.target(lambda a, b: mlp(a + b), 1), (x, x.flip(1)), {"argnums": (0, 1)}),
        "float32": (xattr.target(MLP.build().float().eval(), 1), (x.float(),), {}),
        # one number per row, as a view that starts past its storage's first element, and as a strided view
        "an output with a storage offset": (lambda a: torch.cat([a.new_zeros(1), mlp(a)[:, 1]])[1:], (x,), {}),
        "a strided output": (lambda a: mlp(a).repeat(1, 2)[:, 1:2], (x,), {}),
        "occlusion": (xattr.target(cnn, 2), (xc,), {"method": xattr.occlusion, "sliding_window_shapes": (1, 2, 3), "strides": (1, 1, 2)}),
        "occlusion of two inputs": (xattr.target(lambda a, b: cnn(a * b), 0), (xc, xc.flip(2)),
                                    {"method": xattr.occlusion, "argnums": (0, 1), "sliding_window_shapes": ((1, 2, 2), (1, 3, 3)),
                                     "baselines": 0.5}),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_a_repeated_call_is_the_general_path_bit_for_bit_in_one_model_call(name, monkeypatch):
    f, args, options = CASES[name]
    options = dict(options)
    method = options.pop("method", xattr.feature_ablation)
    counted = Counting(f)
    fa = method(counted, **options)
    fa(*args), fa(*args)  # the second call prepares
    again = tuple(a.flip(0).contiguous() if a.is_floating_point() else (a + 1) % 9 for a in args)  # other values, one signature
    expected = method(f, **options)(*again)
    counted.rows = []
    _no_general_path(monkeypatch)
    got = fa(*again)
    for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)):
        assert g.dtype == e.dtype and g.shape == e.shape and torch.equal(g, e)
    assert len(counted.rows) == 1  # x and its copies, one call


def test_a_changed_mask_or_baseline_is_a_new_signature():
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    f = xattr.target(model, 1)
    mask, base = torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(1, 6, dtype=torch.double)
    fa = xattr.feature_ablation(f, feature_mask=mask, baselines=base)
    fa(x), fa(x)
    mask[4:] = 0  # in place: a new version
    assert torch.equal(fa(x), xattr.feature_ablation(f, feature_mask=mask.clone(), baselines=base)(x))
    base += 0.25
    assert torch.equal(fa(x), xattr.feature_ablation(f, feature_mask=mask, baselines=base.clone())(x))
    assert torch.equal(fa(x, feature_mask=torch.tensor([0, 1, 2, 3, 4, 5])), xattr.feature_ablation(f, baselines=base)(x))
    assert torch.equal(fa(x[:2]), xattr.feature_ablation(f, feature_mask=mask, baselines=base)(x[:2]))  # another batch
    zero, negative_zero = fa(x, baselines=0.0), fa(x, baselines=-0.0)
    assert torch.equal(zero, negative_zero)  # the same drops, but two signatures (signed zeros are copied as such)
    assert signature((x,), (0,), 0.0, None) != signature((x,), (0,), -0.0, None)


def test_writes_behind_the_version_counter_are_not_served_stale():
    """``.data`` writes and numpy arrays sharing a CPU tensor's memory change values without a new
    version: a prepared call compares the held tensors' values, and takes the general path."""
    import numpy as np

    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    f = xattr.target(model, 1)
    buffer = np.zeros((1, 6))
    base, mask = torch.from_numpy(buffer), torch.tensor([0, 0, 1, 1, 2, 2])
    fa = xattr.feature_ablation(f)
    for _ in range(3):
        fa(x, baselines=base, feature_mask=mask)
    buffer[:] = 0.75
    assert torch.equal(fa(x, baselines=base, feature_mask=mask), xattr.feature_ablation(f)(x, baselines=base.clone(), feature_mask=mask))
    mask.data[:] = torch.tensor([2, 2, 0, 0, 1, 1])
    assert torch.equal(fa(x, baselines=base, feature_mask=mask), xattr.feature_ablation(f)(x, baselines=base.clone(), feature_mask=mask.clone()))


def test_lazily_negated_tensors_take_the_general_path():
    """``z.conj().imag`` is a real tensor with the negative bit set, which has no bit-level view."""
    model = MLP.build().float().eval()
    f = xattr.target(model, 0)
    def negated(r):  # -r, as a lazily negated view
        return torch.complex(torch.zeros_like(r), r).conj().imag

    x, b = negated(random_tensor((B, 6), seed=3, dtype=torch.float32)), negated(random_tensor((1, 6), seed=5, dtype=torch.float32))
    assert x.is_neg() and b.is_neg() and x.abs().min() > 0
    assert signature((x,), (0,), None, None) is None
    for method, kwargs in ((xattr.feature_ablation, {}), (xattr.occlusion, {"sliding_window_shapes": (2,)})):
        fn = method(f, **kwargs)
        got = [fn(x), fn(x), fn(x), fn(x.resolve_neg(), baselines=b), fn(x.resolve_neg(), baselines=b)]
        assert all(torch.equal(g, got[0]) for g in got[1:3])
        assert torch.equal(got[3], got[4])
        assert torch.equal(got[0], method(f, **kwargs)(x.resolve_neg()))


def test_signatures_that_take_the_general_path():
    x = torch.zeros(2, 3)
    assert signature((x,), (0,), 0.0, None) is not None
    assert signature((x, x), (0,), 0.0, None) is None  # a pass-through argument
    assert signature((x, x), (1, 0), 0.0, None) is None  # not in order
    assert signature(((x, x),), (0,), 0.0, None) is None  # a pytree
    assert signature((x,), (0,), True, None) is None  # a bool baseline
    assert signature((x,), (0,), 0.0, [0, 1, 2]) is None  # a list mask
    assert signature((x,), (0,), torch.nn.Parameter(torch.zeros(3)), None) is None  # a tensor subclass
    with torch.inference_mode():
        assert signature((x,), (0,), 0.0, None) is None
    with T.batch_scope(2):  # inside another method's call
        assert signature((x,), (0,), 0.0, None) is None
    seen = []
    torch.func.vmap(lambda r: seen.append(signature((r,), (0,), 0.0, None)) or r)(x[None])  # a transform
    assert seen == [None]


def test_a_model_whose_output_changed_gets_the_general_path_and_is_not_prepared_again():
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)

    class Switch:
        one_number = False

        def __call__(self, t):
            out = model(t)[:, 0]
            return out.sum() if self.one_number else out

    f = Counting(Switch())
    fa = xattr.feature_ablation(f)
    fa(x), fa(x)
    f.f.one_number = True  # now a loss: one number per batch (Captum's aggregate mode)
    assert torch.equal(fa(x), xattr.feature_ablation(Switch.__call__.__get__(f.f))(x))
    f.rows = []
    fa(x)
    assert f.rows[0] == B, f.rows  # known as one number per batch: no folded first call


def test_out_of_memory_in_a_prepared_call_falls_back_and_is_not_prepared_again():
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    reference = xattr.feature_ablation(xattr.target(model, 0))(x)

    class Fails:
        rows: list = []
        most = 10**9

        def __call__(self, t):
            self.rows.append(t.shape[0])
            if t.shape[0] > self.most:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {t.shape[0]} rows")
            return model(t)[:, 0]

    f = Fails()
    fa = xattr.feature_ablation(f, memory_budget=2**20)
    fa(x), fa(x)  # prepared: 7 copies of 3 rows fit one call
    f.most, f.rows = 12, []
    torch.testing.assert_close(fa(x), reference, rtol=1e-12, atol=1e-14)
    assert f.rows == [21, 21, 9, 9, 3], f.rows  # the prepared call fails, then the general path halves
    f.rows = []
    fa(x)
    assert f.rows == [21, 9, 9, 3], f.rows  # not prepared again


def test_a_prepared_call_still_checks_finite_outputs_and_train_mode(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Dropout(0.0)).double().eval()
    x = random_tensor((B, 6), seed=3)
    fa = xattr.feature_ablation(xattr.target(model, 0))
    fa(x), fa(x)
    _no_general_path(monkeypatch)
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        fa(x)
    model.eval()
    monkeypatch.undo()
    with pytest.raises(FloatingPointError, match="non-finite"):
        fa(torch.full_like(x, float("inf")))


def test_at_most_a_few_signatures_are_kept(monkeypatch):
    made = []

    class Recording(Prepared):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(ablation, "Prepared", Recording)
    model = MLP.build().double().eval()
    fa = xattr.feature_ablation(xattr.target(model, 0))
    for b in range(1, MAX_PREPARED + 3):
        fa(random_tensor((b, 6), seed=b)), fa(random_tensor((b, 6), seed=b))
    (prepared,) = made
    assert len(prepared.calls) == MAX_PREPARED
    assert [k[0][0][0] for k in prepared.calls] == list(range(3, MAX_PREPARED + 3))  # batch sizes, the newest kept
    fa(random_tensor((1, 6), seed=9), feature_mask=torch.arange(6)), fa(random_tensor((1, 6), seed=9), feature_mask=torch.arange(6))
    assert len(prepared.calls) == MAX_PREPARED


def test_show_progress_is_never_prepared(capsys):
    pytest.importorskip("tqdm")
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    fa = xattr.feature_ablation(xattr.target(model, 0), show_progress=True)
    for _ in range(2):
        fa(x)
        assert "perturbed copies" in capsys.readouterr().err  # a bar on every call


def test_copies_that_need_several_calls_are_not_prepared(monkeypatch):
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    f = Counting(xattr.target(model, 0))
    fa = xattr.feature_ablation(f, chunk_size=2 * B)
    first, _ = fa(x), fa(x)  # the second call finds out: several calls
    assert f.rows == ([2 * B] * 3 + [B]) * 2, f.rows  # x and 6 copies, 2 per call
    f.rows = []
    monkeypatch.setattr(OneCall, "make", lambda *a, **k: pytest.fail("prepared again"))
    assert torch.equal(fa(x), first) and f.rows == [2 * B] * 3 + [B]


def test_a_one_off_call_prepares_nothing(monkeypatch):
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    monkeypatch.setattr(OneCall, "make", lambda *a, **k: pytest.fail("prepared on the first call"))
    fa = xattr.feature_ablation(xattr.target(model, 0))
    fa(x)
    fa(x[:2])  # another signature, also first met


def test_large_keep_masks_are_not_kept(monkeypatch):
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    made = []
    monkeypatch.setattr(prepared_module, "OneCall", type("Recording", (OneCall,), {"make": classmethod(lambda cls, *a, **k: made.append(OneCall.make(*a, **k)) or made[-1])}))

    def twice(fa):
        fa(x), fa(x)
        return made[-1]

    # x and 6 copies: small copies on CPU (an integer addcmul on the float64 bits) keep the 0/1
    # mask and the baseline's bits as int64 at full size, every example
    full = 2 * 7 * B * 6 * 8
    assert twice(xattr.feature_ablation(xattr.target(model, 0))).nbytes == full
    monkeypatch.setattr(prepared_module, "MAX_KEEP_BYTES", full - 1)
    assert twice(xattr.feature_ablation(xattr.target(model, 0))) is None
    per_example = torch.arange(6).repeat(B, 1)  # (B, 6): the keep masks hold every example
    monkeypatch.setattr(prepared_module, "MAX_KEEP_BYTES", 7 * 6)
    assert twice(xattr.feature_ablation(xattr.target(model, 0), feature_mask=per_example)) is None


def test_large_float_copies_keep_float_masks(monkeypatch):
    """Past WHERE_ELEMENTS on CPU the copies are x * k + b * (1 - k): the prepared call keeps k,
    and b * (1 - k) too unless the baseline is per example (then it would be copies-sized)."""
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3)
    monkeypatch.setattr(copies_module, "WHERE_ELEMENTS", 0)
    made = []
    monkeypatch.setattr(prepared_module, "OneCall", type("Recording", (OneCall,), {"make": classmethod(lambda cls, *a, **k: made.append(OneCall.make(*a, **k)) or made[-1])}))
    for baselines, held in ((0.5, 2 * 7 * 6 * 8), (random_tensor((B, 6), seed=4), 7 * 6 * 8)):
        fa = xattr.feature_ablation(xattr.target(model, 0), baselines=baselines)
        first, second, third = fa(x), fa(x), fa(x)
        assert made[-1].nbytes == held
        assert torch.equal(third, first) and torch.equal(second, first)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    width=st.integers(1, 7),
    groups=st.integers(1, 7),
    per_example=st.booleans(),
    baseline=st.sampled_from(["zero", "number", "shared tensor", "per example"]),
    seed=st.integers(0, 2**16),
)
def test_served_calls_equal_the_general_path(batch, width, groups, per_example, baseline, seed):
    """Property: for random batches, widths, groupings and baselines, the third call with one
    signature (served prepared) equals a fresh function's first call (the general path) bit for bit."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double().eval()
    x = torch.randn(batch, width, generator=g, dtype=torch.float64)
    ids = torch.randint(0, min(groups, width), (batch if per_example else 1, width), generator=g)
    base = {"zero": 0.0, "number": -0.5, "shared tensor": torch.randn(1, width, generator=g, dtype=torch.float64),
            "per example": torch.randn(batch, width, generator=g, dtype=torch.float64)}[baseline]
    f = xattr.target(model, torch.randint(0, 2, (batch,), generator=g))
    fa = xattr.feature_ablation(f, feature_mask=ids, baselines=base)
    fa(x), fa(x)
    again = torch.randn(batch, width, generator=g, dtype=torch.float64)
    real = prepared_module.inputs_and_copies
    prepared_module.inputs_and_copies = lambda *a, **k: pytest.fail("the general path ran")  # served, or fail
    try:
        served = fa(again)
    finally:
        prepared_module.inputs_and_copies = real
    assert torch.equal(served, xattr.feature_ablation(f, feature_mask=ids, baselines=base)(again))


def test_served_calls_are_detached_and_restore_grad_mode(monkeypatch):
    """A served call switches grad mode off itself (no `detached` around it): its results carry no
    graph even for inputs that require grad, and grad mode comes back as it was, also when the
    model raises inside the served call."""
    model, x = MLP.build().double().eval(), random_tensor((B, 6), seed=3).requires_grad_()
    fail = []

    def f(a):
        if fail:
            raise RuntimeError("the model failed")
        return model(a)

    fa = xattr.feature_ablation(xattr.target(f, 1))
    fa(x), fa(x)
    _no_general_path(monkeypatch)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            got = fa(x)
            assert torch.is_grad_enabled() is grad
        assert not got.requires_grad and got.grad_fn is None
    fail.append(True)
    with pytest.raises(RuntimeError, match="the model failed"):
        fa(x)
    assert torch.is_grad_enabled()
