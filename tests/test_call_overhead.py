"""The per-call shortcuts of the cheapest calls give the numbers of the paths they replace.

Each shortcut is checked against the path it skips (forced by a wrapper the shortcut does not
recognise) bit for bit, and against a slow reference (a loop over examples, or a hand-written
zero added at the layer): the one-hot cotangent of a per-example target (NOTE: [Targets
differentiated by a one-hot cotangent]), layer gradients through a view (NOTE: [Layer gradients
through a view]) with its fallback for in-place ops, the small integer snapshots of the memos,
and the shortcuts of the train-mode warning and the attribution wrapper.
"""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import tree as T

D = torch.float64


class Net(nn.Module):
    """conv -> relu -> conv (the split layer) -> relu (in place, optionally) -> mean -> linear."""

    def __init__(self, inplace: bool = False, skip: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.ident = nn.Identity()
        self.relu = nn.ReLU(inplace=inplace)
        self.skip = skip
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        a = torch.tanh(self.conv1(x))
        h = self.conv2(a)
        if self.skip:  # nn.Identity returns its input itself; the skip path reads it too
            h = self.ident(h) + 0.5 * h
        return self.fc(self.relu(h).mean((2, 3)))


def net(seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return Net(**kw).to(D).eval()


def data(seed: int, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, 5, 5, generator=g, dtype=D), torch.randint(0, 5, (batch,), generator=g)


def general(f):
    """f behind a wrapper no shortcut recognises: the general path (gather, zeros at the layer)."""
    return lambda *args: f(*args)


def zero_added(model, layer, x, y):
    """Slow reference of the layer gradient: a zero added to the layer's value by a hand-made
    hook, one example at a time; (h, dF/dh)."""
    hs, gs = [], []
    for xi, yi in zip(x, y):
        z = []

        def hook(module, inp, out):
            z.append(torch.zeros_like(out).requires_grad_())
            return out + z[0]

        handle = layer.register_forward_hook(hook)
        try:
            out = model(xi[None])[0, yi]
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(out, z[0])
        with torch.no_grad():
            hs.append(layer_value(model, layer, xi[None])[0])
        gs.append(g[0])
    return torch.stack(hs), torch.stack(gs)


def layer_value(model, layer, x):
    got = []
    handle = layer.register_forward_hook(lambda m, i, o: got.append(o.clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return got[0]


def per_example_saliency(model, x, y):
    rows = []
    for xi, yi in zip(x, y):
        xi = xi[None].clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi)[0, yi], xi)
        rows.append(g[0].abs())
    return torch.stack(rows)


# ----------------------------------------------------------------- one-hot cotangent of targets


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 50), batch=st.integers(1, 5), negative=st.booleans())
def test_saliency_with_a_target_tensor_equals_the_gather_path_and_a_loop(seed, batch, negative):
    model = net(seed)
    x, y = data(seed, batch)
    t = y - 5 if negative else y  # -1 is the last output, as for an int
    fast = xattr.saliency(xattr.target(model, t))(x)
    assert torch.equal(fast, xattr.saliency(general(xattr.target(model, t)))(x))
    torch.testing.assert_close(fast, per_example_saliency(model, x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient", "value_and_grad"])
def test_other_gradient_methods_equal_the_gather_path(method):
    model = net(3)
    x, y = data(3, 4)
    make = getattr(xattr, method)
    fast, slow = make(xattr.target(model, y))(x), make(general(xattr.target(model, y)))(x)
    for a, b in zip(T.leaves(fast), T.leaves(slow)):
        assert torch.equal(a, b)


class Clamped(nn.Module):
    """ReLUs spelt as clamps against a tensor bound: the rules take the mode, not graph hooks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        h = torch.maximum(self.conv(x), torch.zeros(()))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvolution", "lrp", "guided_backprop, under the mode"])
def test_rule_methods_pick_the_target_by_a_one_hot_cotangent_as_the_gather_path(method):
    """`rules` around a target run the target's model ruled (graph hooks or the mode) and pick
    the rows themselves: bit for bit the gather path's, and the shortcut really ran."""
    from unittest import mock  # noqa: PLC0415

    from xattr._src.targets import Targeted  # noqa: PLC0415

    torch.manual_seed(5)
    model = Clamped().to(D).eval() if "mode" in method else net(5)
    x, y = data(5, 4)
    make = getattr(xattr, method.split(",")[0])
    with mock.patch.object(Targeted, "one_hot_rows", autospec=True, side_effect=Targeted.one_hot_rows) as picked:
        fast = make(xattr.target(model, y))(x)
    assert picked.call_count == 1
    slow = make(general(xattr.target(model, y)))(x)
    assert torch.equal(fast, slow)
    assert fast.abs().sum() > 0


def test_folded_copies_and_weights_use_the_same_rows():
    """Noise tunnel folds copies of the batch into the rows (the target index tiles them)."""
    model = net(4)
    x, y = data(4, 3)
    smooth = xattr.smoothgrad(xattr.saliency(xattr.target(model, y)), stdevs=0.2, n_samples=4, generator=0)
    slow = xattr.smoothgrad(xattr.saliency(general(xattr.target(model, y))), stdevs=0.2, n_samples=4, generator=0)
    assert torch.equal(smooth(x), slow(x))


def test_a_target_out_of_range_still_fails_clearly():
    model = net(0)
    x, _ = data(0, 2)
    with pytest.raises(IndexError, match="target values must lie in"):
        xattr.saliency(xattr.target(model, torch.tensor([0, 7])))(x)
    with pytest.raises(TypeError, match="bool"):
        xattr.saliency(xattr.target(model, torch.tensor([True, False])))(x)


def test_non_finite_outputs_are_still_refused():
    model = net(0)
    x, y = data(0, 2)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        xattr.saliency(xattr.target(model, y))(x)
    with pytest.raises(FloatingPointError, match="non-finite"):
        xattr.grad_cam(xattr.at_layer(xattr.target(model, y), model.conv2))(x)


# ----------------------------------------------------------------- layer gradients through a view


@pytest.mark.parametrize("inplace", [False, True])
def test_layer_gradients_equal_a_hand_added_zero(inplace):
    model = net(1, inplace=inplace)
    x, y = data(1, 3)
    split = xattr.at_layer(xattr.target(model, y), model.conv2)
    gxa = xattr.gradient_x_activation(split, multiply=False)
    for _ in range(2):  # with an in-place op after the layer: the zeros' path from the first call's rerun on
        g = gxa(x)
        h, ref = zero_added(model, model.conv2, x, y)
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(xattr.layer_activation(split)(x), h, rtol=1e-12, atol=1e-12)
        assert split.copied_values is inplace  # the in-place ReLU wrote into the layer's value
    assert torch.equal(g, xattr.gradient_x_activation(xattr.at_layer(general(xattr.target(model, y)), model.conv2),
                                                        multiply=False)(x))  # fmt: skip


def test_a_layer_returning_its_input_gets_only_its_own_paths():
    """nn.Identity returns its input tensor: a gradient taken with respect to that tensor would
    count the skip path too. Through the view (as through the zero) only the path after the
    layer counts: dF/d ident = dF/dh_total - 0.5 * (that same path)."""
    model = net(2, skip=True)
    x, y = data(2, 3)
    g = xattr.gradient_x_activation(xattr.at_layer(xattr.target(model, y), model.ident), multiply=False)(x)
    _, ref = zero_added(model, model.ident, x, y)
    torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    _, whole = zero_added(model, model.conv2, x, y)  # the conv's output feeds both paths
    torch.testing.assert_close(g * 1.5, whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["conductance", "internal_influence", "layer_gradient_shap", "grad_cam"])
def test_layer_methods_with_weights_and_folded_rows_equal_the_general_path(method):
    """Path methods weight the rows' cotangents (`one_hot` with weights) and fold copies."""
    model = net(8)
    x, y = data(8, 3)
    kw = {"baselines": x[:2] * 0.3, "n_samples": 3, "generator": 0} if method == "layer_gradient_shap" else {}
    kw.update({"n_steps": 4} if method in ("conductance", "internal_influence") else {})
    make = getattr(xattr, method)
    fast = make(xattr.at_layer(xattr.target(model, y), model.conv2), **kw)(x)
    slow = make(xattr.at_layer(general(xattr.target(model, y)), model.conv2), **kw)(x)
    assert torch.equal(fast, slow)


def test_grad_cam_of_a_frozen_model_and_several_layers():
    model = net(5)
    for p in model.parameters():
        p.requires_grad_(False)  # nothing recorded before the hook: zeros added there
    x, y = data(5, 2)
    split = xattr.at_layer(xattr.target(model, y), model.conv2)
    _, ref = zero_added(model, model.conv2, x, y)
    g = xattr.gradient_x_activation(split, multiply=False)(x)
    torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    model = net(5)
    both = xattr.gradient_x_activation(xattr.at_layer(xattr.target(model, y), [model.conv1, model.conv2]), multiply=False)(x)
    _, ref1 = zero_added(model, model.conv1, x, y)  # conv1's total derivative runs through conv2's view
    torch.testing.assert_close(both[0], ref1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both[1], zero_added(model, model.conv2, x, y)[1], rtol=1e-10, atol=1e-12)


class _Noop(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["view value", "function mode"])
def test_values_that_get_zeros_as_before(case):
    """A layer whose value is itself a view (nn.Flatten's), and any call under a torch function
    mode (the rule methods run under theirs), take the zero added at the layer."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Tanh(), nn.Linear(27, 4)).to(D).eval()
    x = torch.randn(3, 2, 5, 5, dtype=D)
    y = torch.tensor([0, 3, 1])
    layer = model[1] if case == "view value" else model[0]
    gxa = xattr.gradient_x_activation(xattr.at_layer(xattr.target(model, y), layer), multiply=False)
    if case == "function mode":
        with _Noop():
            g = gxa(x)
    else:
        g = gxa(x)
    torch.testing.assert_close(g, zero_added(model, layer, x, y)[1], rtol=1e-10, atol=1e-12)


def test_grad_cam_equals_a_plain_torch_grad_cam():
    model = net(6)
    x, y = data(6, 4)
    cam = xattr.grad_cam(xattr.at_layer(xattr.target(model, y), model.conv2))(x)
    h, g = zero_added(model, model.conv2, x, y)
    ref = torch.relu((g.mean((2, 3), keepdim=True) * h).sum(1, keepdim=True))
    torch.testing.assert_close(cam, ref, rtol=1e-10, atol=1e-12)
    assert not any(m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------- memo snapshots and warnings


def test_a_target_changed_behind_the_version_counter_is_seen():
    model = net(7)
    x, y = data(7, 3)
    f = xattr.target(model, y)
    sal = xattr.saliency(f)
    sal(x)
    version = y._version
    y.numpy()[:] = (y.numpy() + 1) % 5  # bypasses the version counter
    assert y._version == version
    assert torch.equal(sal(x), per_example_saliency(model, x, y))
    xt = x.flatten(1)[:, :6]
    lin = nn.Linear(6, 5).to(D)
    fa = xattr.feature_ablation(xattr.target(lin, y))
    for _ in range(3):  # the third call is served by a prepared call
        fa(xt)
    y.numpy()[:] = (y.numpy() + 2) % 5
    want = torch.stack([torch.stack([(lin(r[None]) - lin((r * (torch.arange(6) != i))[None]))[0, yi] for i in range(6)])
                        for r, yi in zip(xt, y)])  # fmt: skip
    torch.testing.assert_close(fa(xt), want.detach(), rtol=1e-12, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(values=st.lists(st.integers(-5, 5), min_size=0, max_size=8), dtype=st.sampled_from([torch.int64, torch.int8, torch.bool]))
def test_small_snapshots_compare_as_the_bits(values, dtype):
    t = torch.tensor(values, dtype=torch.int64).to(dtype)
    snap = T.cpu_snapshot(t)
    assert T.matches_snapshot(t, snap)
    if t.numel():
        t.numpy()[0] = not t[0] if dtype == torch.bool else t[0] + 1
        assert not T.matches_snapshot(t, snap)
    f = torch.tensor([0.0, 1.0])
    snap = T.cpu_snapshot(f)
    f.numpy()[0] = -0.0
    assert not T.matches_snapshot(f, snap)  # a float snapshot still compares bits


@pytest.mark.parametrize("make", ["saliency", "grad_cam"])
def test_the_train_mode_warning_follows_each_call(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Dropout(0.5), nn.Flatten(), nn.Linear(27, 2)).to(D).eval()
    x = torch.randn(2, 2, 5, 5, dtype=D)
    f = xattr.target(model, torch.tensor([0, 1]))
    fn = xattr.saliency(f) if make == "saliency" else xattr.grad_cam(xattr.at_layer(f, model[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(x)
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        fn(x)
    model[1].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(x)


def test_grad_mode_is_restored_after_an_error():
    model = net(0)
    for enabled in (True, False):
        torch.set_grad_enabled(enabled)
        try:
            with pytest.raises(ValueError):
                xattr.saliency(model)(data(0, 2)[0])  # (B, 5) outputs without a target
            assert torch.is_grad_enabled() is enabled
        finally:
            torch.set_grad_enabled(True)
