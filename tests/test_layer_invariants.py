"""Every layer-registry entry (tests/layer_registry.py) crossed with every shared invariant.

Invariants: batch invariance (also with one target per example), chunk invariance, dtype/shape preservation, determinism given a
seed, K outputs (or K neurons) consistent with single targets (neurons), completeness on affine
models, no hidden state (no mutation of the model or the user's tensors, no hooks left) and
detached results. Two small fixed-seed models in eval mode: an MLP split at its hidden Linear
and a CNN split at its conv layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xattr
from xattr.testing import (
    assert_trees_close,
    check_batch_invariance,
    check_chunk_invariance,
    check_completeness,
    check_dtype_device,
)
from xattr.testing.strategies import ModelSpec, random_tensor

from layer_registry import LAYER_METHODS_UNDER_TEST, entries
from registry import changed_state, state_snapshot

B = 4
SPECS = {
    "mlp": ModelSpec("mlp", seed=1, in_shape=(5,), n_out=3, activation="gelu", hidden=(6,), softmax=True),
    "cnn": ModelSpec("cnn", seed=2, in_shape=(2, 4, 4), n_out=3, activation="relu", hidden=(3,), pool=True),
}
LAYER = {"mlp": 1, "cnn": 0}  # the hidden Linear(5, 6); the Conv2d(2, 3, 3)
NEURON = {"mlp": 2, "cnn": (1, 2, 3)}  # one neuron of that layer's output: (6,) and (3, 4, 4)
NEURONS = {"mlp": [4, 0, 2], "cnn": [(2, 0, 1), (0, 3, 3), (1, 1, 2)]}
KS = [2, 0, 1]

all_methods = pytest.mark.parametrize("method", LAYER_METHODS_UNDER_TEST, ids=repr)
both_models = pytest.mark.parametrize("kind", sorted(SPECS))


def setup(kind: str, dtype: torch.dtype = torch.float64, batch: int = B):
    spec = SPECS[kind]
    model = ModelSpec(**{**spec.__dict__, "dtype": dtype}).build().eval()
    return model, random_tensor((batch,) + spec.in_shape, seed=7, dtype=dtype)


def split_of(model: nn.Module, kind: str, t=1) -> xattr.Split:
    return xattr.at_layer(xattr.target(model, t), model[LAYER[kind]])


def build(method, model, kind, *, t=1, index=None, **kw):
    """method's attr_fn on a fresh split of model (target t), at neuron ``index`` (default NEURON)."""
    index = NEURON[kind] if index is None else index
    return method.make(split_of(model, kind, t), index=index, **kw)


def _by(method) -> str:
    return "prefix" if method.stochastic else "example"  # seeded noise is drawn by batch position


def expected_like(method, model, kind, x):
    """A tensor with the shape, dtype and device the attributions must have."""
    if method.space == "input":
        return x
    h = xattr.layer_activation(split_of(model, kind))(x)
    return h[:, :1] if method.sums_channels else h


@all_methods
@both_models
def test_batch_invariance(method, kind):
    model, x = setup(kind)
    check_batch_invariance(build(method, model, kind, generator=0), x, by=_by(method))


@all_methods
@both_models
def test_per_example_target_batch_invariance(method, kind):
    model, x = setup(kind)
    t = torch.tensor([2, 0, 1, 2])  # one target per example, rows of the split's model function
    fn = lambda x, t: build(method, model, kind, t=t, generator=0)(x)  # noqa: E731
    check_batch_invariance(fn, x, t, by=_by(method))


@pytest.mark.parametrize("method", entries(chunked=True), ids=repr)
@both_models
def test_chunk_invariance(method, kind):
    model, x = setup(kind)
    check_chunk_invariance(lambda cs: build(method, model, kind, chunk_size=cs, generator=0), x, chunk_sizes=(1, B, 2 * B + 1))


@all_methods
@both_models
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dtype_and_shape(method, kind, dtype):
    model, x = setup(kind, dtype)
    attr = build(method, model, kind, t=0, generator=0)(x)
    ref = expected_like(method, model, kind, x)
    check_dtype_device(lambda _: attr, ref)
    assert torch.isfinite(attr).all()


@all_methods
def test_determinism_given_a_seed(method):
    model, x = setup("mlp")
    split = split_of(model, "mlp", 2)  # one split reused: its first call checks, later ones stop early
    make = lambda g: method.make(split, index=NEURON["mlp"], generator=g)  # noqa: E731
    rng = torch.get_rng_state()
    first, second = make(5)(x), make(5)(x)
    assert torch.equal(torch.get_rng_state(), rng), "an int seed must not consume torch's global generator"
    assert torch.equal(first, second)
    if method.deterministic:
        assert torch.equal(first, make(6)(x)), "a deterministic method must ignore the generator"
    if method.stochastic:
        gens = [torch.Generator().manual_seed(11) for _ in range(2)]
        a, b = (make(g)(x) for g in gens)
        assert torch.equal(a, b), "equally seeded torch.Generators must give equal results"
        assert not torch.equal(first, make(6)(x)), "a different seed must change the draws"


@pytest.mark.parametrize("method", entries(targets=True), ids=repr)
@both_models
def test_many_outputs_match_single_targets(method, kind):
    model, x = setup(kind)
    if method.neuron:  # K neurons via outputs equal the single neurons
        singles = NEURONS[kind]
        many = build(method, model, kind, index=xattr.outputs(singles), generator=0)(x)
        one = lambda k: build(method, model, kind, index=k, generator=0)(x)  # noqa: E731
    else:
        singles = KS
        many = build(method, model, kind, t=xattr.outputs(singles), generator=0)(x)
        one = lambda k: build(method, model, kind, t=k, generator=0)(x)  # noqa: E731
    check_dtype_device(lambda _: many, expected_like(method, model, kind, x), n_outputs=len(singles))
    for j, k in enumerate(singles):
        assert_trees_close(many[:, j], one(k), what=f"outputs({singles})[:, {j}] vs {k} alone")


def affine(model: nn.Module) -> nn.Module:
    """The model with every non-linearity made linear: activations and softmax dropped, max-pool
    replaced by average pooling, so that F is affine in the input and in the layer."""
    model = copy.deepcopy(model)
    for i, m in enumerate(model):
        if isinstance(m, (nn.GELU, nn.ReLU, nn.Softmax)):
            model[i] = nn.Identity()
        elif isinstance(m, nn.MaxPool2d):
            model[i] = nn.AvgPool2d(m.kernel_size)
    return model


@pytest.mark.parametrize("method", entries(complete=True), ids=repr)
@both_models
def test_completeness_on_affine_models(method, kind):
    model, x = setup(kind)
    model = affine(model)
    split = split_of(model, kind, 1)
    f = xattr.neuron(split, NEURON[kind]) if method.neuron else split.model
    check_completeness(f, build(method, model, kind, generator=0), x)


@both_models
def test_neuron_conductance_over_every_neuron_is_complete(kind):
    # Summed over every neuron of a layer that all paths cross, neuron conductance is F(x) - F(0).
    model, x = setup(kind)
    model = affine(model)
    split = split_of(model, kind, 1)
    cond = xattr.neuron_conductance(split, xattr.outputs(None), n_steps=5)
    check_completeness(split.model, lambda x: cond(x).sum(1), x)


@all_methods
@both_models
@pytest.mark.parametrize("requires_grad", [False, True], ids=["plain", "requires_grad"])
def test_no_mutation_and_no_hooks_left(method, kind, requires_grad):
    model, x = setup(kind)
    x.requires_grad_(requires_grad)
    before = state_snapshot(model, x)
    build(method, model, kind, t=0, generator=0)(x)
    changed = changed_state(before, state_snapshot(model, x))
    assert not changed, f"{method.name} changed {changed}"


@all_methods
@both_models
def test_results_are_detached_outside_transforms(method, kind):
    model, x = setup(kind)
    out = build(method, model, kind, t=0, generator=0)(x.requires_grad_())
    assert not out.requires_grad and out.grad_fn is None
