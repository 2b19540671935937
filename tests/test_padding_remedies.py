"""uneven_padding, even_input_sizes and with_padding_mode against brute force: which rows of a
layer's (padded) input reach its output, found with torch.autograd one row at a time."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.padding_remedies import LayerPadding, UnevenPadding

D = torch.float64
CONV = {1: nn.Conv1d, 2: nn.Conv2d}
MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d}


def _pads(layer, nd):
    """(left, right) per dim, read off the layer's attributes (numeric padding only)."""
    p = layer.padding
    p = (p,) * nd if isinstance(p, int) else tuple(p)
    return [(a, a) for a in p]


def _as_tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _unpadded_op(layer, nd):
    """The layer's operation with padding 0, for an input padded explicitly."""
    if isinstance(layer, tuple(CONV.values())):
        conv = getattr(F, f"conv{nd}d")
        return lambda xp: conv(xp, layer.weight, None, layer.stride, 0, layer.dilation)
    if isinstance(layer, tuple(MAX.values())):
        pool = getattr(F, f"max_pool{nd}d")
        return lambda xp: pool(xp, layer.kernel_size, layer.stride, 0, layer.dilation, layer.ceil_mode)
    pool = getattr(F, f"avg_pool{nd}d")
    return lambda xp: pool(xp, layer.kernel_size, layer.stride, 0, layer.ceil_mode)


def _rows_read(fn, x, dim, seed=0):
    """For each index r of ``dim`` (counted from the spatial dims): does any output depend on
    row r? Row r is raised above everything else (so it is the max of every window holding it)
    and the gradient of a random positive weighting of all outputs is read at row r."""
    g = torch.Generator().manual_seed(seed)
    axis = 2 + dim
    read = []
    for r in range(x.shape[axis]):
        xr = x.clone()
        xr.select(axis, r).copy_(10 + torch.rand(xr.select(axis, r).shape, generator=g, dtype=D))
        xr.requires_grad_(True)
        y = fn(xr)
        c = 1 + torch.rand(y.shape, generator=g, dtype=D)
        (grad,) = torch.autograd.grad((y * c).sum(), xr)
        read.append(bool(grad.select(axis, r).abs().sum() > 0))
    return read


def _trailing_false(flags):
    n = 0
    for f in reversed(flags):
        if f:
            break
        n += 1
    return n


def reference(layer, nd, size, channels=2):
    """Brute force per dim: (unread, unread_input, skipped, (left, right) pads read), output size."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, channels, *size), generator=g, dtype=D)
    with torch.no_grad():
        out = layer(x).shape[2:]
    pads = _pads(layer, nd)
    flat = [v for pair in reversed(pads) for v in pair]
    xp = F.pad(x, flat)
    op = _unpadded_op(layer, nd)
    results = []
    for dim in range(nd):
        # the padded input: explicit padding, the layer's op without padding, its first `out` windows
        cut = lambda y: y[(...,) + tuple(slice(0, o) for o in out)]  # noqa: E731
        padded = _rows_read(lambda v: cut(op(v)), xp, dim)
        left, right = pads[dim]
        n = size[dim]
        # the input rows, through the layer itself (its own padding)
        inner = _rows_read(layer, x, dim)
        size_p, unread = len(padded), _trailing_false(padded)
        of_input = sum(1 for p in range(size_p - unread, size_p) if left <= p < left + n)
        results.append((unread, of_input, inner.count(False), (sum(padded[:left]), sum(padded[left + n:]))))
        assert padded[left:left + n] == inner  # the explicit padding matches the layer's own
    return results, tuple(out)


def windows_direct(out, kernel, stride, dilation, left, n, right):
    """The left and right padding rows covered by the windows, by explicit loops."""
    lo, hi = set(), set()
    for o in range(out):
        for j in range(kernel):
            p = o * stride + j * dilation
            if p < left:
                lo.add(p)
            elif left + n <= p < left + n + right:
                hi.add(p)
    return len(lo), len(hi)


@st.composite
def layers(draw):
    nd = draw(st.sampled_from([1, 2]))
    kind = draw(st.sampled_from(["conv", "max", "avg"]))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd)) if kind != "avg" else (1,) * nd
    if kind == "conv":
        p = tuple(draw(st.integers(0, 3)) for _ in range(nd))
    else:  # torch: pooling padding at most half the (effective) kernel
        p = tuple(draw(st.integers(0, (dd * (kk - 1) + 1) // 2 if kind == "max" else kk // 2)) for kk, dd in zip(k, d))
    size = tuple(draw(st.integers(1, 13)) for _ in range(nd))
    ceil = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 100)))
    if kind == "conv":
        layer = CONV[nd](2, 3, k, stride=s, padding=p, dilation=d).to(D)
    elif kind == "max":
        layer = MAX[nd](k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    else:
        layer = AVG[nd](k, stride=s, padding=p, ceil_mode=ceil)
    return layer, nd, size


def _analyse(layer, nd, size):
    try:
        with torch.no_grad():
            layer(torch.zeros((1, 2, *size), dtype=D))
    except RuntimeError:
        return None  # the input is too small for this layer
    (rec,) = xattr.uneven_padding(nn.Sequential(layer), (2, *size), dtype=D)
    return rec


@settings(max_examples=150, deadline=None, derandomize=True)
@given(layers())
def test_unread_rows_match_autograd_brute_force(case):
    layer, nd, size = case
    rec = _analyse(layer, nd, size)
    assume(rec is not None)
    # a row of one dim counts as read through the layer itself only if some row of the other dim is
    assume(nd == 1 or all(k < n for k, n in zip(rec.skipped, size)))
    per_dim, out = reference(layer, nd, size)
    assert rec.output_size == out and rec.input_size == size
    for dim, (unread, unread_input, skipped, pad_read) in enumerate(per_dim):
        assert rec.unread[dim] == unread
        assert rec.unread_input[dim] == unread_input
        assert rec.skipped[dim] == skipped
        assert rec.pad_read[dim] == pad_read
    assert rec.uneven == any(u > 0 for u in rec.unread)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(layers())
def test_asymmetry_and_the_unread_formula(case):
    layer, nd, size = case
    rec = _analyse(layer, nd, size)
    assume(rec is not None)
    for dim in range(nd):
        (left, right), n = rec.padding[dim], size[dim]
        k, s, d = rec.kernel[dim], rec.stride[dim], rec.dilation[dim]
        lo, hi = windows_direct(rec.output_size[dim], k, s, d, left, n, right)
        assert rec.pad_read[dim] == (lo, hi)
        assert rec.asymmetric[dim] == (lo != hi)
        span = d * (k - 1) + 1
        if not rec.ceil_mode:  # floor((L - e) / s) + 1 windows: the unread rows are (L - e) mod s < s
            assert rec.output_size[dim] == (n + left + right - span) // s + 1
            assert rec.unread[dim] == (n + left + right - span) % s < s
        # unread rows at the end of the padded input: beyond the right padding they are input rows
        assert rec.unread_input[dim] == min(n, max(0, rec.unread[dim] - right))
        if left == right and (rec.output_size[dim] - 1) * s + span == n + left + right:
            # the last window ends on the last row: the read rows are mirror-symmetric (o -> out-1-o, j -> k-1-j)
            assert not rec.asymmetric[dim]


def test_known_values_of_a_stride_two_net():
    # 28 -> 14 -> 7 -> 4 with 3x3 stride-2 convolutions padded by 1: (28 + 2 - 3) mod 2 = 1 row unread
    net = nn.Sequential(nn.Conv2d(1, 2, 3, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 3, 2, 1), nn.Conv2d(2, 2, 3, 2, 1))
    recs = xattr.uneven_padding(net, (1, 28, 28))
    assert isinstance(recs, UnevenPadding) and all(isinstance(r, LayerPadding) for r in recs)
    assert [r.name for r in recs] == ["0", "2", "3"]
    assert [r.input_size for r in recs] == [(28, 28), (14, 14), (7, 7)]
    assert [r.unread for r in recs] == [(1, 1), (1, 1), (0, 0)]
    assert [r.pad_read for r in recs] == [((1, 0), (1, 0))] * 2 + [((1, 1), (1, 1))]
    assert [r.asymmetric for r in recs] == [(True, True), (True, True), (False, False)]
    assert [r.name for r in recs.uneven] == ["0", "2"]
    text = recs.summary()
    assert "asymmetric" in text and "28x28" in text and "2 of 3 layer calls leave rows unread: 0, 2" in text
    # a non-square input: the dims are separate
    (r0, r1, r2) = xattr.uneven_padding(net, (1, 25, 28))
    assert r0.unread == (0, 1) and r1.unread == (0, 1) and r2.unread == (0, 0)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_of_even_kernel_is_asymmetric_at_stride_one():
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 1, 4, padding="same", bias=False).to(D)
    x = torch.rand(1, 1, 9, dtype=D)
    # torch pads 1 in front and 2 behind: the layer equals a valid convolution of F.pad(x, (1, 2))
    torch.testing.assert_close(conv(x), F.conv1d(F.pad(x, (1, 2)), conv.weight))
    (rec,) = xattr.uneven_padding(nn.Sequential(conv), (1, 9))
    assert rec.padding == ((1, 2),) and rec.unread == (0,) and rec.pad_read == ((1, 2),)
    assert rec.asymmetric == (True,) and not rec.uneven


def test_other_layer_kinds():
    # Conv3d: (n + 2 - 3) mod 2 per dim; LPPool2d: stride defaults to the kernel, 8 = 2 * 3 + 2 rows;
    # a max pool returning indices; an adaptive pool is left out
    net = nn.Sequential(nn.Conv3d(1, 1, 3, 2, 1))
    (rec,) = xattr.uneven_padding(net, (1, 5, 6, 7))
    assert rec.unread == (0, 1, 0) and rec.output_size == (3, 3, 4) and rec.asymmetric == (False, True, False)
    pools = nn.Sequential(nn.LPPool2d(2, 3), nn.MaxPool2d(2, return_indices=True))
    lp, mp = xattr.uneven_padding(nn.Sequential(pools[0], nn.AdaptiveAvgPool2d(2), pools[1]), (1, 8, 9))
    assert lp.layer == "LPPool2d" and lp.stride == (3, 3) and lp.unread == (2, 0) and lp.unread_input == (2, 0)
    assert mp.layer == "MaxPool2d" and mp.input_size == (2, 2) and mp.unread == (0, 0)


def test_repeated_module_gives_one_record_per_call_and_skips_are_counted():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1, stride=2)  # a 1x1 stride-2 conv reads every other row
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.pool(self.conv(x)))

    recs = xattr.uneven_padding(Twice(), (1, 16, 15))
    assert [(r.name, r.call) for r in recs] == [("conv", 0), ("pool", 0), ("pool", 1)]
    assert recs[0].skipped == (8, 7) and recs[0].unread == (1, 0) and recs[0].output_size == (8, 8)
    assert recs[1].input_size == (8, 8) and recs[2].input_size == (4, 4)
    assert "pool#1" in recs.summary()


def _reference_even(net, shape, dim):
    """Layer by layer through a Sequential: every conv/pool child's rows along `dim`, brute force."""
    x = torch.zeros((1, *shape), dtype=D)
    for child in net:
        if isinstance(child, nn.Flatten):
            return True
        if isinstance(child, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            try:
                per_dim, _ = reference(child, 2, tuple(x.shape[2:]), channels=x.shape[1])
            except RuntimeError:
                return False  # too small for this layer
            if per_dim[dim][0] != 0:
                return False
        with torch.no_grad():
            x = child(x)
    return True


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(3, 2, 4, stride=3, padding=1),
        nn.Flatten(), nn.Linear(2, 2),  # 14x15 -> 7x8 -> 4x4 -> 1x1
    ).to(D).eval()  # fmt: skip


def test_even_input_sizes_match_brute_force_and_miss_nothing_closer():
    net = _net()  # the Linear head takes 14x15 only: the search must stop before it
    near, radius = (14, 15), 5
    sizes = xattr.even_input_sizes(net, near, radius=radius)
    assert len(sizes) == 2
    for dim in range(2):
        expected = []
        for size in range(near[dim] - radius, near[dim] + radius + 1):
            shape = [2, *near]
            shape[1 + dim] = size
            if _reference_even(net, tuple(shape), dim):
                expected.append(size)
        assert sorted(sizes[dim]) == expected
        assert expected  # the range holds some even size here
        dist = [abs(s - near[dim]) for s in sizes[dim]]
        assert dist == sorted(dist)  # nearest first: nothing closer is missed
        for size in sizes[dim]:
            shape = [2, *near]
            shape[1 + dim] = size
            assert not any(r.unread[dim] for r in xattr.uneven_padding(nn.Sequential(*net[:4]), tuple(shape)))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(near=st.integers(6, 40), radius=st.integers(0, 6))
def test_even_sizes_of_stride_two_stack_are_one_mod_four(near, radius):
    # two 3x3 stride-2 convolutions padded by 1 consume n exactly iff n - 1 and (n - 1) / 2 are even
    net = nn.Sequential(nn.Conv1d(1, 1, 3, 2, 1), nn.Conv1d(1, 1, 3, 2, 1))
    (sizes,) = xattr.even_input_sizes(net, near, radius=radius)
    lo = max(1, near - radius)
    assert sorted(sizes) == [n for n in range(lo, near + radius + 1) if n % 4 == 1]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_with_padding_mode_equals_a_model_built_with_that_mode():
    def build(mode):
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, padding_mode=mode), nn.ReLU(),
            nn.Conv2d(4, 4, 4, padding="same", padding_mode=mode), nn.MaxPool2d(2, padding=1),
            nn.Conv2d(4, 2, 1), nn.Conv2d(2, 2, 3, stride=2, padding=(2, 1), padding_mode=mode),
        ).to(D).eval()  # fmt: skip

    x = torch.randn(2, 1, 9, 10, dtype=D, generator=torch.Generator().manual_seed(0))
    for start in ["zeros", "circular"]:
        model = build(start)
        before = model(x)
        for mode in xattr._src.padding_remedies.MODES:
            copy = xattr.with_padding_mode(model, mode, input_shape=(1, 9, 10))
            direct = build(mode)
            direct.load_state_dict(model.state_dict())
            torch.testing.assert_close(copy(x), direct(x), rtol=0, atol=0)
            assert [copy[i].padding_mode for i in (0, 2, 5)] == [mode] * 3
            assert copy[4].padding_mode == "zeros"  # a 1x1 convolution without padding is left alone
            assert all(a is not b for a, b in zip(copy.parameters(), model.parameters()))
        # the user's model is unchanged
        assert [m.padding_mode for m in model if isinstance(m, nn.Conv2d)] == [start, start, "zeros", start]
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_modes_remove_the_border_of_a_constant_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1)).eval()
    zeros = xattr.padding_bias(net, [net[2]], (1, 12, 12), fill=1.0)["2"]
    assert xattr.border_ratio(zeros) > 0
    for mode in ["reflect", "replicate", "circular"]:
        m = xattr.with_padding_mode(net, mode)
        assert xattr.border_ratio(xattr.padding_bias(m, [m[2]], (1, 12, 12), fill=1.0)["2"]) == 0.0


@pytest.mark.parametrize("training", [False, True])
def test_models_unchanged_and_no_hooks(training):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.MaxPool2d(2)).train(training)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    xattr.uneven_padding(net, (1, 12, 12))
    xattr.even_input_sizes(net, 12, radius=2)
    xattr.with_padding_mode(net, "reflect", input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="fails"):
        xattr.uneven_padding(net, (3, 12, 12))  # wrong channels: the forward fails mid-way
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(m.training == training for m in net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert net[0].padding_mode == "zeros"
    assert xattr.with_padding_mode(net, "replicate").training == training


def test_warnings():
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AvgPool2d(3, 1, padding=1))
    with pytest.warns(UserWarning, match="count_include_pad"):
        xattr.with_padding_mode(pooled, "replicate")
    with pytest.warns(UserWarning, match="no convolution of the model pads"):
        xattr.with_padding_mode(nn.Sequential(nn.Conv2d(1, 1, 3)), "reflect")


def test_errors():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=3), nn.Conv2d(1, 1, 3, padding=1))
    with pytest.raises(ValueError, match="mode must be one of"):
        xattr.with_padding_mode(net, "mirror")
    with pytest.raises(ValueError, match="no convolution layer"):
        xattr.with_padding_mode(nn.Sequential(nn.Linear(2, 2), nn.MaxPool1d(2)), "reflect")
    with pytest.raises(ValueError, match=r"reflect padding is impossible at layer '0'.*3x3 input by 3"):
        xattr.with_padding_mode(net, "reflect", input_shape=(1, 3, 3))
    with pytest.raises(ValueError, match="circular padding is impossible"):
        xattr.with_padding_mode(net, "circular", input_shape=(1, 2, 5))
    xattr.with_padding_mode(net, "circular", input_shape=(1, 3, 3))  # padding 3 of 3 rows wraps once: fine
    xattr.with_padding_mode(net, "reflect", input_shape=(1, 4, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        xattr.with_padding_mode(lambda x: x, "zeros")
    with pytest.raises(ValueError, match="no convolution or pooling"):
        xattr.uneven_padding(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)), (1, 2, 2))
    with pytest.raises(ValueError, match="input_shape"):
        xattr.uneven_padding(net, (1, 0, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        xattr.uneven_padding(None, (1, 4, 4))
    with pytest.raises(ValueError, match="radius"):
        xattr.even_input_sizes(net, 8, radius=-1)
    with pytest.raises(ValueError, match="channels"):
        xattr.even_input_sizes(net, 8, channels=0)
    with pytest.raises(ValueError, match="pass channels="):
        xattr.even_input_sizes(nn.Sequential(nn.MaxPool2d(2)), 8)
    with pytest.raises(TypeError, match="near"):
        xattr.even_input_sizes(net, "8")
    assert xattr.even_input_sizes(nn.Sequential(nn.MaxPool2d(2)), 8, channels=1, radius=1) == ([8], [8])
    assert xattr.even_input_sizes(net, (8, 9), radius=0) == ([8], [9])  # stride 1 reads every row
    assert xattr.even_input_sizes(net, (8, 9), radius=1, show_progress=True) == ([8, 7, 9], [9, 8, 10])  # nearest first
