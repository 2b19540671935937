"""Every registry entry (tests/registry.py) crossed with every shared invariant.

Invariants: batch invariance, chunk invariance, dtype/shape preservation, determinism given a
seed, many-outputs consistency, pytree inputs with a pass-through argument, per-call baselines,
torch.compile, and no hidden state (no mutation of the model or the user's tensors, no hooks).

Where a method documents a refusal of a case (registry.py's ``Method.refuses``: many outputs,
trees of inputs, inputs without spatial dims), the invariant checks that the case raises that
error (`refused`) instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

import xattr
from xattr.testing import (
    assert_trees_close,
    check_batch_invariance,
    check_chunk_invariance,
    check_dtype_device,
)
from xattr.testing.strategies import ModelSpec, random_tensor

from compile_support import needs_compile
from registry import ALL_METHODS, BY_NAME, TwoInputs, changed_state, state_snapshot

B = 4
SPECS = {
    "mlp": ModelSpec("mlp", seed=1, in_shape=(5,), n_out=3, activation="gelu", hidden=(6,), softmax=True),
    "cnn": ModelSpec("cnn", seed=2, in_shape=(2, 4, 4), n_out=3, activation="relu", hidden=(3,), pool=True),
}
all_methods = pytest.mark.parametrize("method", ALL_METHODS, ids=repr)
both_models = pytest.mark.parametrize("kind", sorted(SPECS))


def setup(kind: str, dtype: torch.dtype = torch.float64, batch: int = B):
    spec = SPECS[kind]
    model = ModelSpec(**{**spec.__dict__, "dtype": dtype}).build()
    return model, random_tensor((batch,) + spec.in_shape, seed=7, dtype=dtype)


def home(method) -> str:
    """The model for the single-model invariants: the MLP, or the CNN for methods refusing it."""
    return next(kind for kind in ("mlp", "cnn") if method.refusal(kind) is None)


def refused(method, *keys: str):
    """A context in which the method must raise its documented error if it refuses any of these
    cases (registry.py's ``Method.refuses``), or must run the invariant through otherwise."""
    found = method.refusal(*keys)
    return contextlib.nullcontext() if found is None else pytest.raises(found[0], match=found[1])


def check_shapes(method, attr_fn, *args, n_outputs=None) -> None:
    """check_dtype_device, or for "pairs" outputs the shape (B, *s, *s) of one value per pair."""
    if method.output == "input":
        return check_dtype_device(attr_fn, *args, n_outputs=n_outputs)
    x, out = args[0], attr_fn(*args)
    want = (x.shape[0],) + (() if n_outputs is None else (n_outputs,)) + tuple(x.shape[1:]) * 2
    got = (tuple(out.shape), out.dtype, out.device)
    assert got == (want, x.dtype, x.device), f"{method.name}: (shape, dtype, device) {got}, expected {(want, x.dtype, x.device)}"


@all_methods
@both_models
def test_batch_invariance(method, kind):
    model, x = setup(kind)
    by = "prefix" if method.stochastic else "example"  # seeded noise is drawn by batch position
    with refused(method, kind):
        check_batch_invariance(method.make(xattr.target(model, 1), generator=0), x, by=by)


@all_methods
@both_models
def test_per_example_target_batch_invariance(method, kind):
    model, x = setup(kind)
    t = torch.tensor([2, 0, 1, 2])
    fn = lambda x, t: method.make(xattr.target(model, t), generator=0)(x)  # noqa: E731
    with refused(method, kind):
        check_batch_invariance(fn, x, t, by="prefix" if method.stochastic else "example")


@all_methods
@both_models
def test_chunk_invariance(method, kind):
    model, x = setup(kind)
    f = xattr.target(model, 1)
    with refused(method, kind):
        check_chunk_invariance(lambda cs: method.make(f, chunk_size=cs, generator=0), x, chunk_sizes=(1, B, 2 * B + 1))


@all_methods
@both_models
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dtype_and_shape(method, kind, dtype):
    model, x = setup(kind, dtype)
    with refused(method, kind):
        check_shapes(method, method.make(xattr.target(model, 0), generator=0), x)


@all_methods
def test_determinism_given_a_seed(method):
    model, x = setup(home(method))
    f = xattr.target(model, 2)
    rng = torch.get_rng_state()
    first, second = method.make(f, generator=5)(x), method.make(f, generator=5)(x)
    assert torch.equal(torch.get_rng_state(), rng), "an int seed must not consume torch's global generator"
    assert torch.equal(first, second)
    if method.stochastic:
        gens = [torch.Generator().manual_seed(11) for _ in range(2)]
        a, b = (method.make(f, generator=g)(x) for g in gens)
        assert torch.equal(a, b), "equally seeded torch.Generators must give equal results"
        assert not torch.equal(first, method.make(f, generator=6)(x)), "a different seed must change the draws"


@all_methods
@both_models
def test_many_outputs_match_single_targets(method, kind):
    model, x = setup(kind)
    ks = [2, 0, 1]
    with refused(method, kind, "many_outputs"):
        many = method.make(xattr.target(model, xattr.outputs(ks)), generator=0)(x)
        check_shapes(method, lambda x: many, x, n_outputs=len(ks))
        for j, k in enumerate(ks):
            one = method.make(xattr.target(model, k), generator=0)(x)
            assert_trees_close(many[:, j], one, what=f"outputs({ks})[:, {j}] vs target {k}")


def _pytree_case(form: str):
    model = TwoInputs()
    a, b = random_tensor((B, 3), 1), random_tensor((B, 2), 2)
    scale = 1.0 + random_tensor((B, 4), 3).abs()
    if form == "dict":
        f = xattr.target(lambda d, s: model(d["a"], d["b"], s), 1)
        return f, ({"a": a, "b": b}, scale), 0, lambda attr: attr
    f = xattr.target(lambda a, b, s: model(a, b, s), 1)
    return f, (a, b, scale), (0, 1), lambda attr: {"a": attr[0], "b": attr[1]}


@all_methods
@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_pytree_inputs_with_pass_through_argument(method, form):
    f, args, argnums, as_dict = _pytree_case(form)
    if method.refusal("pytree") is not None:  # the documented error, when built or when called
        with refused(method, "pytree"):
            method.make(f, argnums=argnums, generator=0)(*args)
        return
    fn = method.make(f, argnums=argnums, generator=0)
    check_dtype_device(fn, *args, argnums=argnums)
    check_batch_invariance(fn, *args, argnums=argnums, by="prefix" if method.stochastic else "example")
    check_chunk_invariance(lambda cs: method.make(f, argnums=argnums, chunk_size=cs, generator=0), *args, chunk_sizes=(1, 9))
    if method.deterministic:  # equals attributing the concatenated input of an equivalent model
        flat_f = xattr.target(lambda z, s: _call_flat(f, form, z, s), 1)
        z = torch.cat([args[0]["a"], args[0]["b"]], 1) if form == "dict" else torch.cat(args[:2], 1)
        flat = method.make(flat_f, generator=0)(z, args[-1])
        got = as_dict(fn(*args))
        assert_trees_close(got, {"a": flat[:, :3], "b": flat[:, 3:]}, what="pytree vs concatenated input")


def _call_flat(f, form, z, s):
    a, b = z[:, :3], z[:, 3:]
    return f.model({"a": a, "b": b}, s) if form == "dict" else f.model(a, b, s)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m.baselines], ids=repr)
def test_per_example_baselines_keyword(method):
    model, x = setup(home(method))
    base = random_tensor(x.shape, seed=9) * 0.1
    fn = method.make(xattr.target(model, 1), generator=0)
    check_batch_invariance(lambda x, b: fn(x, baselines=b), x, base, by="prefix" if method.stochastic else "example")
    one = fn(x, baselines=base[:1])  # a single baseline broadcasts across the batch
    assert_trees_close(one, fn(x, baselines=base[:1].expand_as(x)), what="broadcast baseline vs expanded")


@needs_compile
@pytest.mark.parametrize("name", ["saliency", "ig_gausslegendre", "split_ig_left", "guided_ig", "blur_ig", "integrated_hessians"])
def test_torch_compile_gives_the_same_numbers(name):
    # aot_eager traces through dynamo and AOT autograd without a C++ toolchain (inductor adds ~20 s
    # per test on CPU); set XATTR_COMPILE_BACKEND=inductor to compile fully.
    torch._dynamo.reset()
    model, x = setup("cnn")
    fn = BY_NAME[name].make(xattr.target(model, 1))
    compiled = torch.compile(fn, backend=os.environ.get("XATTR_COMPILE_BACKEND", "aot_eager"))
    assert_trees_close(compiled(x), fn(x), what="torch.compile vs eager")
    torch._dynamo.reset()


@all_methods
@pytest.mark.parametrize("requires_grad", [False, True], ids=["plain", "requires_grad"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_mutation_and_no_hooks_left(method, requires_grad, mode):
    model, x = setup(home(method))  # no dropout/batch-norm: train mode is legitimate and must be kept
    model.train(mode == "train")
    x.requires_grad_(requires_grad)
    before = state_snapshot(model, x)
    method.make(xattr.target(model, 0), generator=0)(x)
    changed = changed_state(before, state_snapshot(model, x))
    assert not changed, f"{method.name} changed {changed}"


@all_methods
def test_results_are_detached_outside_transforms(method):
    model, x = setup(home(method))
    out = method.make(xattr.target(model, 0), generator=0)(x.requires_grad_())
    assert not out.requires_grad and out.grad_fn is None
