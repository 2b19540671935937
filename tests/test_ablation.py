"""Feature ablation, occlusion and feature permutation against brute-force loops, and the layer
and neuron variants (layer_perturb.py).

The references build every perturbed input by hand, one model call per feature or window, in
float64, and must agree to the last bits (`same`): the methods evaluate the very same perturbed
rows, but batched F copies to a call, and a model's matmuls may round differently for another
number of rows per call (BLAS blocking); occlusion's mean over windows also sums in another
order.
Feature permutation's attributions depend on the whole batch, so it cannot enter the shared
registry (batch invariance); its other invariants are checked here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xattr
from xattr._src.ablation import _Grid, _permutations
from xattr.testing import assert_trees_close, check_chunk_invariance, check_dtype_device
from xattr.testing.strategies import ModelSpec, random_tensor

from registry import changed_state, state_snapshot

B = 4
MLP = ModelSpec("mlp", seed=1, in_shape=(5,), n_out=3, activation="gelu", hidden=(6,), softmax=True)
CNN = ModelSpec("cnn", seed=2, in_shape=(2, 5, 6), n_out=3, activation="relu", hidden=(3,), pool=False)


def mlp():
    return MLP.build().eval(), random_tensor((B, 5), seed=7)


def cnn():
    return CNN.build().eval(), random_tensor((B, 2, 5, 6), seed=8)


def same(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def call(f, x):
    with torch.no_grad():
        return f(x)


# ----------------------------------------------------------------------------- references


def ablation_loop(f, x, mask, base):
    """attr[b, i] = f(x)[b] - f(x with feature mask[b, i] set to base)[b], one call per feature."""
    mask = torch.broadcast_to(mask, x.shape)
    base = torch.broadcast_to(torch.as_tensor(base, dtype=x.dtype), x.shape)
    fx = call(f, x)
    attr = torch.zeros(x.shape, dtype=fx.dtype)
    for j in range(int(mask.max()) + 1):
        sel = mask == j
        xj = x.clone()
        xj[sel] = base[sel]
        drop = fx - call(f, xj)
        attr += drop.reshape((-1,) + (1,) * (x.ndim - 1)) * sel
    return attr


def occlusion_loop(f, x, window, strides, base=0.0):
    """Every window position by explicit loops over its corner (clipped at the edge), averaged."""
    shape = x.shape[1:]
    starts = [list(range(0, st * math.ceil((s - w) / st) + 1, st)) for s, w, st in zip(shape, window, strides)]
    total, count = torch.zeros_like(x), torch.zeros(shape, dtype=x.dtype)
    fx = call(f, x)
    corners = [()]
    for r in starts:
        corners = [c + (s,) for c in corners for s in r]
    for corner in corners:
        region = (slice(None),) + tuple(slice(c, c + w) for c, w in zip(corner, window))
        xo = x.clone()
        xo[region] = base if not isinstance(base, torch.Tensor) else base[region]
        drop = fx - call(f, xo)
        inside = torch.zeros(shape, dtype=torch.bool)
        inside[region[1:]] = True
        total += drop.reshape((-1,) + (1,) * len(shape)) * inside
        count += inside
    return total / count


def permutation_loop(f, x, mask, perms):
    """attr[b, i] = f(x)[b] - f(x with feature mask[i] taken from example perms[j, b])[b]."""
    mask = torch.broadcast_to(mask, x.shape)
    fx = call(f, x)
    attr = torch.zeros(x.shape, dtype=fx.dtype)
    for j in range(int(mask.max()) + 1):
        sel = mask == j
        xj = torch.where(sel, x[perms[j]], x)
        drop = fx - call(f, xj)
        attr += (drop if drop.ndim else drop.reshape(1)).reshape((-1,) + (1,) * (x.ndim - 1)) * sel
    return attr


# ----------------------------------------------------------------------------- feature ablation


def test_feature_ablation_default_mask_equals_the_loop():
    model, x = cnn()
    f = xattr.target(model, 1)
    mask = torch.arange(x[0].numel()).reshape((1,) + x.shape[1:])
    same(xattr.feature_ablation(f)(x), ablation_loop(f, x, mask, 0.0))


def test_feature_ablation_grouped_mask_and_baselines_equal_the_loop():
    model, x = cnn()
    f = xattr.target(model, 2)
    mask = (torch.arange(5)[:, None] // 2 * 3 + torch.arange(6)[None, :] // 2).expand(2, 5, 6)[None]  # 2x2 patches
    base = random_tensor(x.shape, seed=3)  # one baseline per example
    got = xattr.feature_ablation(f, feature_mask=mask)(x, baselines=base)
    same(got, ablation_loop(f, x, mask, base))
    same(xattr.feature_ablation(f, baselines=0.5)(x, feature_mask=mask[0, 0]), ablation_loop(f, x, mask[:, :1], 0.5))


def test_feature_ablation_per_example_masks_equal_the_loop():
    model, x = mlp()
    f = xattr.target(model, 0)
    mask = torch.tensor([[0, 0, 1, 1, 2], [2, 1, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    same(xattr.feature_ablation(f, feature_mask=mask)(x), ablation_loop(f, x, mask, 0.0))


def test_feature_ablation_per_example_targets_and_many_outputs():
    model, x = mlp()
    t = torch.tensor([2, 0, 1, 2])
    got = xattr.feature_ablation(xattr.target(model, t))(x)
    mask = torch.arange(5)[None]
    same(got, ablation_loop(xattr.target(model, t), x, mask, 0.0))
    many = xattr.feature_ablation(xattr.target(model, xattr.outputs([2, 0])))(x)
    assert many.shape == (B, 2, 5)
    assert torch.equal(many[:, 0], xattr.feature_ablation(xattr.target(model, 2))(x))
    assert torch.equal(many[:, 1], xattr.feature_ablation(xattr.target(model, 0))(x))


def test_feature_ablation_of_an_aggregate_model_equals_the_loop():
    model, x = mlp()
    loss = lambda x: model(x)[:, 1].mean()  # noqa: E731  one number per batch (Captum's aggregate mode)
    mask = torch.tensor([[0, 1, 1, 2, 2]])
    got = xattr.feature_ablation(loss, feature_mask=mask)(x)
    assert got.shape == (1, 5)
    assert torch.equal(got, ablation_loop(loss, x, mask, 0.0)[:1])


# ----------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize(
    "window, strides",
    [((1, 2, 2), (1, 1, 1)), ((2, 3, 3), (1, 2, 2)), ((1, 2, 4), (1, 2, 3)), ((2, 5, 6), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))],
    ids=str,
)
def test_occlusion_equals_the_loop_over_window_positions(window, strides):
    model, x = cnn()
    f = xattr.target(model, 1)
    got = xattr.occlusion(f, sliding_window_shapes=window, strides=strides)(x)
    same(got, occlusion_loop(f, x, window, strides))


def test_occlusion_with_one_element_windows_is_feature_ablation():
    model, x = cnn()
    f = xattr.target(model, 0)
    assert torch.equal(xattr.occlusion(f, sliding_window_shapes=(1, 1, 1))(x), xattr.feature_ablation(f)(x))


def test_occlusion_per_example_baselines_and_int_stride():
    model, x = cnn()
    f = xattr.target(model, 2)
    base = random_tensor(x.shape, seed=4)
    got = xattr.occlusion(f, sliding_window_shapes=(2, 2, 3), strides=2, baselines=base)(x)
    want = occlusion_loop(f, x, (2, 2, 3), (2, 2, 2), base)
    same(got, want)


def test_occlusion_of_two_inputs_occludes_one_window_of_one_input_per_copy():
    model, x = cnn()
    v = random_tensor((B, 4), seed=5)
    g = lambda a, b: model(a)[:, 1] + torch.tanh(b).prod(1)  # noqa: E731
    got = xattr.occlusion(g, sliding_window_shapes=((1, 3, 2), (2,)), strides=((1, 2, 2), 1), argnums=(0, 1))(x, v)
    want_a = occlusion_loop(lambda a: g(a, v), x, (1, 3, 2), (1, 2, 2))
    want_b = occlusion_loop(lambda b: g(x, b), v, (2,), (1,))
    same(got[0], want_a)
    same(got[1], want_b)
    # a tree of windows (and strides) like the inputs reads the same
    d = {"a": x, "b": v}
    h = lambda d: g(d["a"], d["b"])  # noqa: E731
    tree = xattr.occlusion(h, sliding_window_shapes={"a": (1, 3, 2), "b": (2,)}, strides={"a": (1, 2, 2), "b": 1})(d)
    assert_trees_close(tree, {"a": got[0], "b": got[1]}, atol=0, rtol=0)


def test_window_masks_follow_captums_placement():
    masks = xattr.window_masks((7,), (3,), 2)  # starts 0, 2, 4 (ceil((7-3)/2) + 1 = 3)
    assert masks.shape == (3, 7) and masks.sum(1).tolist() == [3, 3, 3]
    masks = xattr.window_masks((8,), (3,), 2)  # starts 0, 2, 4, 6: the last window is clipped to 2
    assert masks.shape == (4, 8) and masks.sum(1).tolist() == [3, 3, 3, 2] and masks[-1, 6:].all()
    masks = xattr.window_masks((2, 5, 6), (1, 2, 4), (1, 2, 3))
    assert masks.shape == (2 * 3 * 2, 2, 5, 6)


@pytest.mark.parametrize("shape, window, strides", [((7,), (3,), (2,)), ((8,), (3,), (2,)), ((2, 5, 6), (1, 2, 4), (1, 2, 3)), ((9, 4), (4, 4), (1, 3))], ids=str)
def test_occlusion_cells_cover_exactly_the_window_masks(shape, window, strides):
    grid = _Grid(shape, window, strides, "cpu")
    masks = xattr.window_masks(shape, window, strides)
    assert grid.n_windows == masks.shape[0]
    covered = grid.covered(0, grid.n_windows)  # (W, cells) -> elements
    assert torch.equal(covered[:, grid.cell_of.reshape(-1)].reshape(masks.shape), masks)
    assert torch.equal(grid.covered(1, grid.n_windows - 1), covered[1:-1])
    drops = random_tensor((3, grid.n_windows), seed=1)
    per_cell = grid.average(drops)
    dense = (drops @ masks.reshape(masks.shape[0], -1).double()) / masks.reshape(masks.shape[0], -1).sum(0)
    torch.testing.assert_close(per_cell[:, grid.cell_of.reshape(-1)], dense, rtol=0, atol=1e-14)


def test_occlusion_with_stride_one_over_a_large_input_never_builds_every_mask():
    # 62 * 62 = 3844 windows over 4096 elements: dense masks would hold 15.7M entries
    x = random_tensor((2, 1, 64, 64), seed=2)
    w = random_tensor((64 * 64,), seed=3)
    f = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731  copies fold into dim 0
    got = xattr.occlusion(f, sliding_window_shapes=(1, 3, 3), memory_budget=2**20)(x)
    # affine f: the drop of a window is the sum of w_i x_i over it; its mean over windows is a box filter
    contrib = (x.reshape(2, -1) * w).reshape(2, 1, 64, 64)
    sums = torch.nn.functional.avg_pool2d(contrib, 3, stride=1, divisor_override=1)  # (2, 1, 62, 62)
    total = torch.nn.functional.conv_transpose2d(sums, torch.ones(1, 1, 3, 3, dtype=x.dtype))
    count = torch.nn.functional.conv_transpose2d(torch.ones(1, 1, 62, 62, dtype=x.dtype), torch.ones(1, 1, 3, 3, dtype=x.dtype))
    torch.testing.assert_close(got, total / count, rtol=1e-12, atol=1e-12)


def test_occlusion_errors():
    model, x = cnn()
    f = xattr.target(model, 0)
    with pytest.raises(ValueError, match="does not fit"):
        xattr.occlusion(f, sliding_window_shapes=(3, 2, 2))(x)
    with pytest.raises(ValueError, match="one entry per input dim"):
        xattr.occlusion(f, sliding_window_shapes=(2, 2))(x)
    with pytest.raises(ValueError, match="exceed the sliding window"):
        xattr.occlusion(f, sliding_window_shapes=(1, 2, 2), strides=(1, 3, 1))(x)
    with pytest.raises(ValueError, match="one entry per attributed input"):
        xattr.occlusion(lambda a, b: f(a) + b.sum(1), sliding_window_shapes=((1, 2, 2),) * 3, argnums=(0, 1))(x, x[:, 0, 0])


def test_occlusion_window_over_a_whole_dim_takes_any_stride():
    """Captum's usual call (window (C, h, w), one int stride): the channel dim has one position."""
    model, x = cnn()
    f = xattr.target(model, 0)
    c = x.shape[1]
    got = xattr.occlusion(f, sliding_window_shapes=(c, 2, 2), strides=2)(x)
    want = xattr.occlusion(f, sliding_window_shapes=(c, 2, 2), strides=(1, 2, 2))(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceed the sliding window"):  # a dim the window does not span still refuses
        xattr.occlusion(f, sliding_window_shapes=(c, 2, 2), strides=3)(x)


# ----------------------------------------------------------------------------- feature permutation


def test_feature_permutation_equals_the_loop_given_the_permutations():
    model, x = cnn()
    f = xattr.target(model, 1)
    mask = (torch.arange(5)[:, None] // 2 * 3 + torch.arange(6)[None, :] // 2)[None, None].expand(1, 2, 5, 6)
    perms = _permutations(9, B, 3, "cpu")
    got = xattr.feature_permutation(f, feature_mask=mask, generator=3)(x)
    same(got, permutation_loop(f, x, mask, perms))
    default = xattr.feature_permutation(f, generator=4)(x)
    same(default, permutation_loop(f, x, torch.arange(60).reshape(1, 2, 5, 6), _permutations(60, B, 4, "cpu")))


def test_feature_permutation_never_draws_the_identity_and_shuffles_each_feature_independently():
    perms = _permutations(500, 2, 0, "cpu")
    assert torch.equal(perms, torch.tensor([[1, 0]]).expand(500, 2))  # the only non-identity order of 2
    perms = _permutations(200, 5, 1, "cpu")
    assert not (perms == torch.arange(5)).all(1).any()
    assert torch.equal(perms.sort(1).values, torch.arange(5).expand(200, 5))
    assert len({tuple(p) for p in perms.tolist()}) > 50


def test_feature_permutation_of_an_aggregate_loss_equals_the_loop():
    model, x = mlp()
    y = torch.tensor([0, 2, 1, 1])
    loss = lambda x, y: nn.functional.cross_entropy(torch.log(model(x)), y)  # noqa: E731  one number per batch
    mask = torch.tensor([0, 0, 1, 2, 2])
    got = xattr.feature_permutation(loss, feature_mask=mask, generator=0)(x, y)
    assert got.shape == (1, 5)
    assert torch.equal(got, permutation_loop(lambda x: loss(x, y), x, mask[None], _permutations(3, B, 0, "cpu"))[:1])


def test_feature_permutation_moves_a_feature_shared_by_two_tensors_as_one():
    model, x = mlp()
    f = xattr.target(model, 2)
    a, b = x[:, :3], x[:, 3:]
    masks = (torch.tensor([0, 1, 2]), torch.tensor([2, 0]))  # feature 0 and 2 span both tensors
    got = xattr.feature_permutation(lambda a, b: f(torch.cat([a, b], 1)), feature_mask=masks, argnums=(0, 1), generator=2)(a, b)
    flat = permutation_loop(f, x, torch.tensor([[0, 1, 2, 2, 0]]), _permutations(3, B, 2, "cpu"))
    same(torch.cat(got, 1), flat)


def test_feature_permutation_per_example_masks_and_pass_through_arguments():
    model, x = mlp()
    scale = 1.0 + random_tensor((B, 1), seed=5).abs()
    g = xattr.target(lambda x, s: model(x * s), 0)
    mask = torch.tensor([[0, 0, 1, 1, 2], [2, 1, 0, 1, 2], [0, 1, 2, 1, 0], [1, 1, 1, 0, 2]])
    got = xattr.feature_permutation(g, feature_mask=mask, generator=1)(x, scale)
    want = permutation_loop(lambda x: g(x, scale), x, mask, _permutations(3, B, 1, "cpu"))
    same(got, want)


def test_feature_permutation_needs_a_batch():
    model, x = mlp()
    with pytest.raises(ValueError, match="at least 2 examples"):
        xattr.feature_permutation(xattr.target(model, 0), generator=0)(x[:1])


def test_feature_permutation_randomness_is_explicit():
    model, x = mlp()
    f = xattr.target(model, 1)
    rng = torch.get_rng_state()
    first = xattr.feature_permutation(f, generator=5)(x)
    assert torch.equal(torch.get_rng_state(), rng), "an int seed must not consume torch's global generator"
    assert torch.equal(first, xattr.feature_permutation(f, generator=5)(x))
    assert not torch.equal(first, xattr.feature_permutation(f, generator=6)(x))
    a, b = (xattr.feature_permutation(f, generator=torch.Generator().manual_seed(11))(x) for _ in range(2))
    assert torch.equal(a, b)
    torch.manual_seed(3)
    c = xattr.feature_permutation(f)(x)  # the global generator
    torch.manual_seed(3)
    assert torch.equal(c, xattr.feature_permutation(f)(x))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_feature_permutation_invariants(kind):
    model, x = mlp() if kind == "mlp" else cnn()
    make = lambda cs=None, t=1: xattr.feature_permutation(xattr.target(model, t), generator=0, chunk_size=cs)  # noqa: E731
    check_chunk_invariance(make, x, chunk_sizes=(1, B, 2 * B + 1))
    check_dtype_device(make(), x)
    spec = MLP if kind == "mlp" else CNN
    model32 = ModelSpec(**{**spec.__dict__, "dtype": torch.float32}).build().eval()
    check_dtype_device(xattr.feature_permutation(xattr.target(model32, 0), generator=0), x.float())
    many = make(t=xattr.outputs([2, 0]))(x)
    check_dtype_device(lambda x: many, x, n_outputs=2)
    assert torch.equal(many[:, 0], make(t=2)(x)) and torch.equal(many[:, 1], make(t=0)(x))
    model.train()
    x.requires_grad_(True)
    before = state_snapshot(model, x)
    out = make()(x)
    assert not changed_state(before, state_snapshot(model, x))
    assert not out.requires_grad and out.grad_fn is None


# ----------------------------------------------------------------------------- layer and neuron variants


class Skip(nn.Module):
    """out = fc(relu(conv(x)) * scale + pool(x)): a skip connection around the layer, a pass-through."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.conv, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 5 * 6, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.double().eval()

    def forward(self, x, scale):
        h = torch.relu(self.conv(x)) * scale[:, None, None, None]
        return self.fc((h + x.mean(1, keepdim=True)).flatten(1))


def _skip():
    model, (_, x) = Skip(), cnn()
    return model, x, 1.0 + random_tensor((B,), seed=6).abs()


def head_loop(split, args, h, mask, base):
    """Layer ablation by hand: the head at h with unit group j set to base, one call per group."""
    return ablation_loop(lambda hh: split.head(hh, *args), h, mask, base)


def test_layer_feature_ablation_equals_the_loop_through_the_head():
    model, x, scale = _skip()
    split = xattr.at_layer(xattr.target(model, 1), model.conv)
    h = split.act(x, scale)
    got = xattr.layer_feature_ablation(split)(x, scale)
    assert got.shape == h.shape
    same(got, head_loop(split, (x, scale), h, torch.arange(h[0].numel()).reshape((1,) + h.shape[1:]), 0.0))
    channels = torch.arange(3).reshape(1, 3, 1, 1)
    got = xattr.layer_feature_ablation(split, layer_mask=channels, layer_baselines=0.25)(x, scale)
    same(got, head_loop(split, (x, scale), h, channels, 0.25))
    # per-call keywords, per-example layer baselines
    base = random_tensor(h.shape, seed=9)
    same(xattr.layer_feature_ablation(split)(x, scale, layer_mask=channels, layer_baselines=base),
         head_loop(split, (x, scale), h, channels, base))  # fmt: skip


def test_layer_feature_ablation_equals_explicit_ablation_of_the_activation():
    # the loop without the head: recompute the model by hand with a unit of relu(conv(x)) zeroed
    model, x, scale = _skip()
    split = xattr.at_layer(xattr.target(model, 2), model.conv)
    got = xattr.layer_feature_ablation(split, layer_mask=torch.arange(3).reshape(1, 3, 1, 1))(x, scale)
    with torch.no_grad():
        conv = model.conv(x)
        rest = lambda c: model.fc((torch.relu(c) * scale[:, None, None, None] + x.mean(1, keepdim=True)).flatten(1))[:, 2]  # noqa: E731
        for k in range(3):
            c = conv.clone()
            c[:, k] = 0.0
            same(got[:, k, 0, 0], rest(conv) - rest(c))


def test_layer_feature_ablation_at_a_layer_input_and_at_two_layers():
    model, x, scale = _skip()
    f = xattr.target(model, 0)
    split = xattr.at_layer(f, model.fc, inputs=True)
    h = split.act(x, scale)
    got = xattr.layer_feature_ablation(split, layer_mask=torch.arange(90).reshape(1, 90) // 30)(x, scale)
    same(got, head_loop(split, (x, scale), h, torch.arange(90).reshape(1, 90) // 30, 0.0))
    two = xattr.at_layer(f, [model.conv, model.fc])
    hs = two.act(x, scale)
    masks = (torch.zeros((1,) + hs[0].shape[1:], dtype=torch.long), torch.ones((1, 3), dtype=torch.long))
    both = xattr.layer_feature_ablation(two, layer_mask=masks)(x, scale)
    assert [a.shape for a in both] == [a.shape for a in hs]
    with torch.no_grad():
        fx = f(x, scale)
        zero_conv = two.head((torch.zeros_like(hs[0]), hs[1]), x, scale)
        zero_fc = two.head((hs[0], torch.zeros_like(hs[1])), x, scale)
    same(both[0], (fx - zero_conv)[:, None, None, None].expand_as(hs[0]))
    same(both[1], (fx - zero_fc)[:, None].expand_as(hs[1]))


def test_layer_feature_permutation_equals_the_loop():
    model, x, scale = _skip()
    split = xattr.at_layer(xattr.target(model, 1), model.conv)
    h = split.act(x, scale)
    channels = torch.arange(3).reshape(1, 3, 1, 1)
    got = xattr.layer_feature_permutation(split, layer_mask=channels, generator=7)(x, scale)
    want = permutation_loop(lambda hh: split.head(hh, x, scale), h, channels, _permutations(3, B, 7, "cpu"))
    same(got, want)


def test_neuron_feature_ablation_is_a_composition():
    model, x, scale = _skip()
    split = xattr.at_layer(xattr.target(model, 1), model.conv)
    neuron = xattr.neuron(split, (1, 2, 3))
    got = xattr.feature_ablation(neuron)(x, scale)
    act = lambda x: model.conv(x)[:, 1, 2, 3]  # noqa: E731
    same(got, ablation_loop(act, x, torch.arange(60).reshape(1, 2, 5, 6), 0.0))
    many = xattr.feature_ablation(xattr.neuron(split, xattr.outputs([(1, 2, 3), (0, 0, 0)])))(x, scale)
    assert many.shape == (B, 2) + x.shape[1:] and torch.equal(many[:, 0], got)


def test_layer_variants_leave_the_model_alone():
    model, x, scale = _skip()
    split = xattr.at_layer(xattr.target(model, 1), model.conv)
    before = state_snapshot(model, x)
    xattr.layer_feature_ablation(split)(x, scale)
    xattr.layer_feature_permutation(split, generator=0)(x, scale)
    assert not changed_state(before, state_snapshot(model, x))
    with pytest.raises(TypeError, match="at_layer"):
        xattr.layer_feature_ablation(model)
