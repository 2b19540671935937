"""Metamorphic relations between calls of the perturbation methods (docs/perturbation.md).

No oracle: each test runs a method twice on inputs related by a transformation whose effect on
the attributions the docs promise, and compares. Chunking (`chunk_size`, `memory_budget`) and
progress bars never change the numbers; relabelling a mask's ids changes nothing for the exact
methods, nor, when the order of the ids is kept (gaps, per-example shifts), for the sampling
ones (they number an example's own features in the order of their ids); permuting, duplicating
or splitting the batch permutes, duplicates or splits the results of the deterministic methods
(per-example masks, baselines, targets and pass-through arguments travel with their examples),
and a seeded sampling method gives the first k examples their numbers alone; the methods are
linear in the model; float16/bfloat16, strided, channels-last, expanded, bool and integer
inputs give the numbers of the same values as plain float tensors; a tree of inputs with one
mask across its tensors gives the numbers of their concatenation; targets picked by xattr equal
targets picked by hand; every spelling of one mask (a 1-tuple, nested lists, int32, a
broadcast view) gives its numbers; ids no example holds cost no copies; feature permutation
inside `smoothgrad` shuffles each copy of the batch within itself; and a batch of one whose
model answers one number (shaped (1,)) is explained for every chunk size.

The model is elementwise with a per-row sum, so its rows do not depend on the batch they are
computed in (a matrix kernel may round a row differently in a bigger batch), and the relations
can be checked bit for bit.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr

D = 8
_g = torch.Generator().manual_seed(0)
W = torch.randn(3, D, generator=_g, dtype=torch.float64)
X = torch.randn(5, D, generator=_g, dtype=torch.float64)
B = X.shape[0]


def net(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, 3), row by row: elementwise terms, an interaction, a per-row sum."""
    x = x.to(W.dtype) if not x.is_floating_point() else x
    h = torch.tanh(x[:, None, :] * W + 0.1)  # (B, 3, D)
    return h.sum(-1) + (x[:, 0] * x[:, 3] - x[:, 5] * x[:, 6] * x[:, 1])[:, None]


def one(x: torch.Tensor) -> torch.Tensor:
    return net(x)[:, 1]


MASK = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])  # 5 features
METHODS = {
    "feature_ablation": lambda f, **kw: xattr.feature_ablation(f, **kw),
    "occlusion": lambda f, feature_mask=None, **kw: xattr.occlusion(f, sliding_window_shapes=(3,), strides=2, **kw),
    "feature_permutation": lambda f, baselines=None, generator=3, **kw: xattr.feature_permutation(f, generator=generator, **kw),
    "shapley_values": lambda f, **kw: xattr.shapley_values(f, **kw),
    "shapley_value_sampling": lambda f, generator=3, **kw: xattr.shapley_value_sampling(f, n_samples=3, generator=generator, **kw),
    "shapley_antithetic": lambda f, generator=3, **kw: xattr.shapley_value_sampling(f, n_samples=4, antithetic=True, generator=generator, **kw),
    "lime": lambda f, generator=3, **kw: xattr.lime(f, n_samples=12, generator=generator, **kw),
    "kernel_shap": lambda f, generator=3, **kw: xattr.kernel_shap(f, n_samples=12, generator=generator, **kw),
}
DETERMINISTIC = ["feature_ablation", "occlusion", "shapley_values"]
SAMPLING = ["shapley_value_sampling", "shapley_antithetic", "lime", "kernel_shap"]  # per-example draws
FITTED = ("lime", "kernel_shap")
every = pytest.mark.parametrize("name", sorted(METHODS))


def masks(kind: str, batch: int = B):
    if kind == "shared":
        return MASK
    if kind == "gaps":
        return MASK * 3 + 2
    if kind == "per_example":
        g = torch.Generator().manual_seed(batch)
        return torch.randint(0, 4, (batch, D), generator=g) * torch.arange(1, batch + 1)[:, None]
    return None


def make(name, f=one, **kw):
    return METHODS[name](f, **kw)


# ----------------------------------------------------------------------------- chunking and progress


@every
@settings(max_examples=10, deadline=None)
@given(
    mask=st.sampled_from(["default", "shared", "gaps", "per_example"]),
    target=st.sampled_from(["one", "per_example", "many"]),
    knob=st.sampled_from([("chunk_size", 1), ("chunk_size", B + 1), ("chunk_size", 3 * B), ("memory_budget", 1),
                          ("memory_budget", 300), ("show_progress", True)]),
)  # fmt: skip
def test_chunking_and_progress_never_change_the_numbers(name, mask, target, knob):
    f = {
        "one": one,
        "per_example": xattr.target(net, torch.tensor([2, 0, 1, 1, 0])),
        "many": xattr.target(net, xattr.outputs([2, 0])),
    }[target]
    kw = dict(feature_mask=masks(mask))
    ref = make(name, f, **kw)(X)
    with warnings.catch_warnings():  # LIME's and KernelSHAP's fits over a tiny budget say so
        warnings.simplefilter("ignore")
        got = make(name, f, **kw, **dict([knob]))(X)
    if knob[0] == "memory_budget" and name in FITTED:  # the fits' sums go in steps of the budget: rounding
        torch.testing.assert_close(got, ref, atol=1e-13, rtol=0)
    else:
        assert torch.equal(got, ref)


@pytest.mark.parametrize("name", ["feature_permutation"] + SAMPLING)
def test_global_generator_draws_do_not_depend_on_chunks(name):
    """generator=None: torch's global generator, seeded by the user, gives the same draws for any chunk size, bar or not."""
    mask = MASK if name == "feature_permutation" else masks("per_example")
    outs = []
    for kw in ({}, dict(chunk_size=1), dict(chunk_size=7), dict(show_progress=True)):
        torch.manual_seed(11)
        outs.append(make(name, generator=None, feature_mask=mask, **kw)(X))
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


# ----------------------------------------------------------------------------- relabelling the mask


@pytest.mark.parametrize("name", ["feature_ablation", "shapley_values"])
@settings(max_examples=10, deadline=None)
@given(labels=st.permutations(list(range(16))), per_example=st.booleans())
def test_exact_methods_ignore_the_names_of_the_ids(name, labels, per_example):
    """Any renumbering (a permutation, gaps, ids far apart) gives the same attributions."""
    base = masks("per_example") if per_example else MASK
    relabelled = torch.tensor(labels)[base] * 7  # gaps of 6 ids
    ref, got = make(name, feature_mask=base)(X), make(name, feature_mask=relabelled)(X)
    torch.testing.assert_close(got, ref, atol=1e-13, rtol=0)  # Shapley sums its gains in the order of the ids


@pytest.mark.parametrize("name", SAMPLING)
@settings(max_examples=6, deadline=None)
@given(start=st.lists(st.integers(0, 50), min_size=B, max_size=B), step=st.integers(1, 9))
def test_sampling_methods_ignore_ids_that_keep_their_order(name, start, step):
    """An example's features are numbered in the order of its ids: gaps and per-example shifts change nothing."""
    base = masks("per_example")
    relabelled = base * step + torch.tensor(start)[:, None]
    assert torch.equal(make(name, feature_mask=relabelled)(X), make(name, feature_mask=base)(X))


def test_exact_shapley_values_cost_two_to_the_features_held_not_to_the_largest_id():
    """[0, 0, 30, 30] is 2 features: 3 coalitions and f(x) per example. Before, F was the largest
    id plus one: 2^31 rows per example, refused (and [0, 0, 17, 17] ran 2^18 copies)."""
    rows = []

    def counting(x):
        rows.append(x.shape[0])
        return one(x)

    ref = xattr.shapley_values(one, feature_mask=torch.tensor([0, 0, 1, 1]).repeat_interleave(2))(X)
    for ids in ([0, 0, 17, 17], [0, 0, 30, 30], [7, 7, 3, 3]):
        rows.clear()
        got = xattr.shapley_values(counting, feature_mask=torch.tensor(ids).repeat_interleave(2))(X)
        assert sum(rows) == B * 4, ids
        torch.testing.assert_close(got, ref, atol=1e-13, rtol=0)
    held = torch.tensor([[0, 0, 1, 1], [0, 1, 2, 3], [9, 9, 9, 12], [5, 5, 5, 5], [0, 0, 1, 1]]).repeat_interleave(2, 1)  # 2, 4, 2, 1, 2 features
    rows.clear()
    got = xattr.shapley_values(counting, feature_mask=held)(X)
    assert sum(rows) == B * 2**4  # the widest example's 2^4 - 1 coalitions, and f(x)
    for i in range(B):
        alone = xattr.shapley_values(one, feature_mask=held[i : i + 1])(X[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], alone, atol=1e-13, rtol=0)


@pytest.mark.parametrize("name", ["feature_ablation", "feature_permutation"])
def test_ids_no_example_holds_cost_no_copies(name):
    """One copy per feature, not per id up to the largest: [0, 0, 50000, 7000] (token ids as
    feature ids) is 3 copies. Before, 50001 copies, all but 3 of them equal to the input; the
    numbers do not change (feature permutation keeps each id's permutation: checked against the
    code before by hand)."""
    rows = []

    def counting(x):
        rows.append(x.shape[0])
        return one(x)

    big = torch.tensor([0, 0, 50, 50, 50, 7, 7, 0]) * 1000
    per_example = torch.stack([big, big + 13, torch.full((D,), 4), big, big])
    for mask in (big, per_example):
        rows.clear()
        make(name, counting, feature_mask=mask)(X)
        assert sum(rows) == B * (len(torch.unique(mask)) + 1), mask  # the copies and f(x)
    small = torch.tensor([0, 0, 2, 2, 2, 1, 1, 0])
    if name == "feature_ablation":
        assert torch.equal(make(name, feature_mask=big)(X), make(name, feature_mask=small)(X))


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"occlusion"}))
@pytest.mark.parametrize("spelling", ["tuple", "list", "int32", "expanded"])
def test_every_spelling_of_one_mask_gives_the_same_numbers(name, spelling):
    """A 1-tuple for the one attributed argument (Captum's spelling), nested lists, a narrower
    int dtype, a broadcast view: the mask they hold. Before, the Shapley methods wrapped the mask
    in a tuple of their own, and refused a 1-tuple and nested lists that the others took."""
    mask = masks("per_example")
    spelled = {"tuple": (mask,), "list": mask.tolist(), "int32": mask.int(), "expanded": MASK.expand(B, -1)}[spelling]
    ref = make(name, feature_mask=MASK if spelling == "expanded" else mask)(X)
    assert torch.equal(make(name, feature_mask=spelled)(X), ref)


# ----------------------------------------------------------------------------- the batch


def _per_example_call(name):
    """A method with per-example mask, baselines, target and pass-through argument: fn(x, base, t, mask, s)."""

    def fn(x, base, t, mask, s):
        f = xattr.target(lambda x, s: net(x) * s[:, None], t)
        kw = {} if name == "feature_permutation" else dict(baselines=base)
        return make(name, f, feature_mask=mask, **kw)(x, s)

    return fn


def _batch_args(batch: int = B):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, D, generator=g, dtype=torch.float64)
    base = torch.randn(batch, D, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (batch,), generator=g)
    return x, base, t, masks("per_example", batch), 0.5 + torch.rand(batch, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", DETERMINISTIC)
@settings(max_examples=8, deadline=None)
@given(order=st.lists(st.integers(0, B - 1), min_size=1, max_size=2 * B), cut=st.integers(1, B - 1))
def test_deterministic_methods_follow_their_examples(name, order, cut):
    """Reordering, duplicating, dropping or splitting examples does the same to their attributions."""
    fn, args = _per_example_call(name), _batch_args()
    ref = fn(*args)
    idx = torch.tensor(order)
    assert torch.equal(fn(*(a[idx] for a in args)), ref[idx])
    assert torch.equal(torch.cat([fn(*(a[:cut] for a in args)), fn(*(a[cut:] for a in args))]), ref)


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_methods_give_a_prefix_its_numbers_alone(name):
    fn, args = _per_example_call(name), _batch_args()
    ref = fn(*args)
    for k in (1, 3):
        assert torch.equal(fn(*(a[:k] for a in args)), ref[:k])


def test_feature_permutation_of_two_examples_swaps_them():
    """The only permutation of two examples that is not the identity: any seed, feature ablation to the other example."""
    x = X[:2]
    ref = xattr.feature_ablation(one, feature_mask=MASK, baselines=x.flip(0))(x)
    for seed in (0, 1, 2):
        assert torch.equal(xattr.feature_permutation(one, feature_mask=MASK, generator=seed)(x), ref)


def test_feature_permutation_inside_a_fold_shuffles_each_copy_of_the_batch_within_itself():
    """Inside `smoothgrad` the rows are noisy copies of the batch. Before, feature permutation
    shuffled across all the rows a chunk held (an example with its own noisy copies), so the
    numbers changed with the outer chunk_size (by up to 1.4). Each copy of a batch of two can
    only be swapped: with no noise, every copy gives feature ablation to the other example
    (before: 0.90 off it)."""
    x = X[:2]
    swap = xattr.feature_ablation(one, feature_mask=MASK, baselines=x.flip(0))(x)
    for cs in (None, 2, 4):
        inner = xattr.feature_permutation(one, feature_mask=MASK, generator=0)
        got = xattr.smoothgrad(inner, stdevs=0.0, n_samples=3, generator=0, chunk_size=cs)(x)
        torch.testing.assert_close(got, swap, atol=1e-14, rtol=0)  # the mean of three equal copies: rounding
    outs = [xattr.smoothgrad(make("feature_permutation", feature_mask=MASK), stdevs=0.1, n_samples=3, generator=0, chunk_size=cs)(X)
            for cs in (None, B, 2 * B + 1)]  # fmt: skip
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    with pytest.raises(ValueError, match="at least 2"):  # each copy is a batch of one: nothing to shuffle
        xattr.smoothgrad(make("feature_permutation", feature_mask=MASK), stdevs=0.1, n_samples=3, generator=0)(X[:1])


# ----------------------------------------------------------------------------- linearity in the model


@pytest.mark.parametrize("name", ["feature_ablation", "occlusion", "shapley_values", "shapley_value_sampling", "shapley_antithetic",
                                  "feature_permutation", "kernel_shap_enumerated"])  # fmt: skip
def test_linear_in_the_model(name):
    def f1(x):
        return net(x)[:, 0]

    def f2(x):
        return (x * x).sum(1) - 2 * x[:, 2]

    def build(f):
        if name == "kernel_shap_enumerated":  # n_samples >= 2^F: every coalition, the Shapley values
            return xattr.kernel_shap(f, feature_mask=masks("per_example"), n_samples=32, generator=0)
        return make(name, f, feature_mask=masks("per_example"))

    a, b = build(f1)(X), build(f2)(X)
    torch.testing.assert_close(build(lambda x: f1(x) + f2(x))(X), a + b, atol=1e-12, rtol=0)
    torch.testing.assert_close(build(lambda x: -2.5 * f1(x))(X), -2.5 * a, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- dtypes and layouts


def float_model(x):
    return one(x.to(torch.float64)).float()


@every
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_the_numbers_of_their_values(name, dtype):
    """A model that answers in float32: float32 attributions, those of the same values in float32."""
    xh = X.to(dtype)
    got, ref = make(name, float_model, feature_mask=MASK)(xh), make(name, float_model, feature_mask=MASK)(xh.float())
    assert got.dtype == torch.float32
    assert torch.equal(got, ref)


@every
@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded", "offset", "channels_last"])
def test_layouts_give_the_numbers_of_their_values(name, layout):
    x4 = X.reshape(B, 2, 2, 2)
    view = {
        "transposed": x4.transpose(1, 3).contiguous().transpose(1, 3),
        "strided": torch.stack([x4, -x4], -1)[..., 0],
        "expanded": x4[2:3].expand(B, -1, -1, -1),
        "offset": torch.cat([x4[:1], x4])[1:],
        "channels_last": x4.contiguous(memory_format=torch.channels_last),
    }[layout]
    fn = make(name, lambda v: one(v.reshape(v.shape[0], D)), feature_mask=MASK.reshape(2, 2, 2)) if name != "occlusion" else (
        xattr.occlusion(lambda v: one(v.reshape(v.shape[0], D)), sliding_window_shapes=(1, 2, 1), strides=(1, 1, 1)))  # fmt: skip
    ref = fn(view.contiguous())
    for _ in range(3):  # the general path, then a prepared call (feature ablation and occlusion)
        assert torch.equal(fn(view), ref)


@every
def test_bool_and_integer_inputs_give_the_numbers_of_their_values(name):
    ids = torch.randint(0, 4, (B, D), generator=torch.Generator().manual_seed(2))
    flags = ids > 1
    for v, base in ((ids, 1), (flags, False)):
        got = make(name, one, feature_mask=MASK, baselines=base)(v)
        ref = make(name, one, feature_mask=MASK, baselines=float(base))(v.to(torch.float64))
        assert got.dtype == torch.float64  # the default float dtype widened to the model's output's
        assert torch.equal(got, ref)


@every
def test_a_float64_model_output_gives_float64_attributions(name):
    def wide(x):
        return one(x.to(torch.float64))

    x32 = X.float()
    got = make(name, wide, feature_mask=MASK)(x32)
    assert got.dtype == torch.float64
    assert torch.equal(got, make(name, wide, feature_mask=MASK)(x32.to(torch.float64)))


# ----------------------------------------------------------------------------- trees, pass-through arguments, targets


@every
@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_a_tree_of_inputs_gives_the_numbers_of_their_concatenation(name, form):
    """One mask across two tensors (ids 0 and 4 in both) equals the mask of the concatenated input."""
    mask = torch.tensor([0, 4, 1, 0, 2, 4, 3, 3])
    ref = make(name, one, feature_mask=mask)(X) if name != "occlusion" else None
    if name == "occlusion":  # its windows are per tensor: (1,) windows are feature ablation's elements
        ref = xattr.occlusion(one, sliding_window_shapes=(1,))(X)
    a, b = X[:, :3], X[:, 3:]
    if form == "tuple":
        f, args, kw = (lambda a, b: one(torch.cat([a, b], 1))), (a, b), dict(argnums=(0, 1), feature_mask=(mask[:3], mask[3:]))
    else:
        f, args, kw = (lambda d: one(torch.cat([d["a"], d["b"]], 1))), ({"a": a, "b": b},), dict(feature_mask={"a": mask[:3], "b": mask[3:]})
    if name == "occlusion":
        fn = xattr.occlusion(f, sliding_window_shapes=((1,), (1,)) if form == "tuple" else {"a": (1,), "b": (1,)},
                             argnums=kw.get("argnums", 0))  # fmt: skip
    else:
        fn = make(name, f, **kw)
    got = fn(*args)
    got = torch.cat(list(got) if form == "tuple" else [got["a"], got["b"]], 1)
    assert torch.equal(got, ref)


@every
def test_batched_pass_through_arguments_travel_with_their_copies(name):
    """f(x, s, w, c): s has the batch in dim 0 (tiled with the copies), w and c are shared."""
    s, w = torch.linspace(0.5, 2.0, B, dtype=torch.float64), torch.linspace(-1, 1, D, dtype=torch.float64)

    def with_args(x, s, w, c):
        return one(x * w) * s * c

    got = make(name, with_args, feature_mask=MASK)(X, s, w, torch.tensor(3.0))
    ref = make(name, lambda x: one(x * w) * s.repeat(x.shape[0] // B) * 3.0, feature_mask=MASK)(X)  # copy-major rows
    assert torch.equal(got, ref)


@every
def test_targets_equal_outputs_picked_by_hand(name):
    def cube(x):  # (R, 3, 2)
        return net(x)[:, :, None] * torch.tensor([1.0, -1.0], dtype=torch.float64)

    t = torch.tensor([2, 0, 1, 1, 0])
    cases = [
        (xattr.target(net, 1), one),
        (xattr.target(cube, (2, 1)), lambda x: -net(x)[:, 2]),
        (xattr.target(net, t), lambda x: net(x)[torch.arange(x.shape[0]), t.repeat(x.shape[0] // B)]),
    ]
    for picked, by_hand in cases:
        assert torch.equal(make(name, picked, feature_mask=MASK)(X), make(name, by_hand, feature_mask=MASK)(X))
    many = make(name, xattr.target(net, xattr.outputs([2, 0])), feature_mask=MASK)(X)
    for j, k in enumerate([2, 0]):
        single = make(name, xattr.target(net, k), feature_mask=MASK)(X)
        if name in FITTED:  # K outputs fitted in one solve: rounding
            torch.testing.assert_close(many[:, j], single, atol=1e-13, rtol=0)
        else:
            assert torch.equal(many[:, j], single)


# ----------------------------------------------------------------------------- one number for a batch of one


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"feature_permutation"}))
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_a_batch_of_one_answered_by_one_number_is_explained_for_any_chunk_size(name, shape):
    """A loss over the batch shaped (1,) or (1, 1): for a batch of one the number is the
    example's too. Before, copies folded into one call got one number for several rows and
    raised; chunk_size=1 (one row per call) worked."""

    def loss(x):
        return one(x).sum().reshape(shape)

    x = X[:1]
    ref = make(name, loss, feature_mask=MASK, chunk_size=1)(x)
    assert ref.shape == x.shape
    fn = make(name, loss, feature_mask=MASK)
    for _ in range(3):  # feature ablation and occlusion: the general path, then a repeated signature
        assert torch.equal(fn(x), ref)
