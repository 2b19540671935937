"""merge_batch_norm on forwards that change their own state or raise on some path.

Tracing runs the forward's Python code: the copy it returns must be one never traced (a call
counter at 0, no Proxy left in a cache), and a path that raises when traced (an ``assert``) is one
the model cannot run, skipped, while one fx cannot trace leaves the model unmerged (NOTE: [Merging
batch norm]). Each test checks the merged copy computes as the model does, to 1e-5, and leaves
the model untouched.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import fx, nn

import xattr
from registry import changed_state, state_snapshot

_NORMS = nn.modules.batchnorm._BatchNorm


def _made(make, seed: int = 0) -> nn.Module:
    """An eval model from ``make``, its batch norms with random statistics and affine maps."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make()
        with torch.no_grad():
            for bn in model.modules():
                if isinstance(bn, _NORMS):
                    bn.running_mean.uniform_(-1, 1)
                    bn.running_var.uniform_(0.5, 2)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-1, 1)
        return model.eval()


def _inputs(seed: int = 1) -> list:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x = torch.rand(2, 3, 8, 8)
    return [x, -x]


def _merged(model: nn.Module, x: torch.Tensor):
    """The merged copy, with the model's state checked untouched and no warning given."""
    before = state_snapshot(model, x)
    attributes = dict(vars(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = xattr.merge_batch_norm(model)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert vars(model).keys() == attributes.keys()
    assert all(vars(model)[k] is v for k, v in attributes.items())
    return merged


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, _NORMS) for m in model.modules())


def _close(merged: nn.Module, model: nn.Module, inputs: list) -> None:
    with torch.no_grad():
        for x in inputs:
            got, want = merged(x), model(x)
            assert isinstance(got, torch.Tensor)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- forwards that write state


class Counter(nn.Module):
    """Counts its calls, and scales by the count; a data-dependent condition (paths)."""

    def __init__(self):
        super().__init__()
        self.f, self.n = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 0

    def forward(self, x):
        self.n += 1
        h = self.f(x)
        if h.sum() > 1e9:
            h = h * 2
        return h.flatten(1) * self.n


class PlainCounter(Counter):
    """The same without the condition: fx traces it in one graph, and bakes the count in."""

    def forward(self, x):
        self.n += 1
        return self.f(x).flatten(1) * self.n


class ProxyCache(nn.Module):
    """Fills a cache on its first call, from a tensor (a Proxy when traced)."""

    def __init__(self):
        super().__init__()
        self.f, self.mask = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), None

    def forward(self, x):
        h = self.f(x)
        if self.mask is None:
            self.mask = torch.ones_like(h[:1]) * 0.5
        if h.sum() > 1e9:
            h = h * 2
        return (h * self.mask).flatten(1)


class PlainProxyCache(ProxyCache):
    def forward(self, x):
        h = self.f(x)
        if self.mask is None:
            self.mask = torch.ones_like(h[:1]) * 0.5
        return (h * self.mask).flatten(1)


class History(nn.Module):
    """Appends to a list it holds: a write that rebinds nothing."""

    def __init__(self):
        super().__init__()
        self.f, self.seen = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.f(x).flatten(1) * len(self.seen)


@pytest.mark.parametrize("make", [Counter, PlainCounter, History])
def test_merge_batch_norm_returns_a_counter_never_traced(make):
    model, inputs = _made(make), _inputs()
    merged = _merged(model, inputs[0])
    assert _norms(merged) == 0
    assert not isinstance(merged, fx.GraphModule)  # its forward writes state: a graph would not
    assert getattr(merged, "n", 0) == 0 and len(getattr(merged, "seen", [])) == 0
    for _ in range(2):  # the counts go on alike, call after call
        _close(merged, model, inputs)
    assert getattr(merged, "n", 4) == getattr(model, "n", 4) == 4
    assert len(getattr(merged, "seen", [0] * 4)) == len(getattr(model, "seen", [0] * 4)) == 4


@pytest.mark.parametrize("make", [ProxyCache, PlainProxyCache])
def test_merge_batch_norm_returns_no_proxy_in_a_cache(make):
    model, inputs = _made(make), _inputs()
    merged = _merged(model, inputs[0])
    assert _norms(merged) == 0
    assert merged.mask is None and model.mask is None
    _close(merged, model, inputs)
    assert isinstance(merged.mask, torch.Tensor)


class Constant(nn.Module):
    """Writes nothing; fx attaches a tensor constant to the root while tracing it."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x):
        return (self.f(x) + torch.arange(4.0).view(1, 4, 1, 1)).flatten(1)


def test_merge_batch_norm_returns_the_models_class_for_a_forward_that_writes_nothing():
    model, inputs = _made(Constant), _inputs()
    merged = _merged(model, inputs[0])
    assert type(merged) is Constant and _norms(merged) == 0  # not a GraphModule, which inlines blocks
    tensors = [*model.parameters(), *model.buffers()]
    assert all(p.data_ptr() != q.data_ptr() for p in [*merged.parameters(), *merged.buffers()] for q in tensors)
    _close(merged, model, inputs)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return x + torch.relu(self.bn(self.conv(x)))


def test_merge_batch_norm_keeps_blocks_running_for_composite_keys_and_layers():
    """A composite keyed by a block's type or name still applies after merging, and at_layer finds the
    block (the GraphModule returned before inlined it: the keys changed nothing, layer_lrp raised)."""
    model = nn.Sequential(Block(), nn.Flatten(), nn.Linear(3 * 16, 2)).double().eval()
    with torch.no_grad():
        model[0].bn.running_mean.normal_(generator=torch.Generator().manual_seed(1))
    merged, x = xattr.merge_batch_norm(model), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert type(merged) is nn.Sequential and _norms(merged) == 0
    on_conv = xattr.lrp(xattr.target(merged, 1), composite={**xattr.rule.lrp_rules(), "0.conv": xattr.rule.Gamma(1.0)})(x)
    plain = xattr.lrp(xattr.target(merged, 1))(x)
    assert not torch.allclose(on_conv, plain)
    for key in (Block, "0", merged[0]):
        keyed = xattr.lrp(xattr.target(merged, 1), composite={**xattr.rule.lrp_rules(), key: xattr.rule.Gamma(1.0)})(x)
        torch.testing.assert_close(keyed, on_conv)
    assert xattr.layer_lrp(xattr.at_layer(xattr.target(merged, 1), merged[0]))(x).shape == x.shape


# ----------------------------------------------------------------------------- paths that raise


class Assert(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        # an assert statement, spelled out: pytest rewrites the asserts of test files, and its
        # failure message traces nodes that a model's own assert would not
        if not torch.isfinite(x).all():
            raise AssertionError("inputs must be finite")
        return self.f(x).flatten(1)


class RaiseOnABranch(nn.Module):
    """One path raises; of the two that run, one calls ``g[0]`` without its batch norm."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.g = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x):
        if x.isnan().any():
            raise ValueError("nan in the input")
        h = self.f(x)
        h = self.g(h) if h.mean() > 0.1 else self.g[0](h)
        return h.flatten(1)


def test_merge_batch_norm_skips_a_path_that_raises():
    model, inputs = _made(Assert), _inputs()
    merged = _merged(model, inputs[0])
    assert _norms(merged) == 0 and isinstance(merged.f[1], nn.Identity)
    _close(merged, model, inputs)
    with pytest.raises(AssertionError):
        merged(torch.full((1, 3, 8, 8), float("nan")))


def test_merge_batch_norm_merges_only_what_every_traced_path_agrees_on():
    model = _made(RaiseOnABranch)
    merged = _merged(model, _inputs()[0])
    assert isinstance(merged.f[1], nn.Identity)  # merged on both paths that run
    assert isinstance(merged.g[1], nn.BatchNorm2d)  # g[0] runs alone on one of them
    both = [_inputs()[0] - 3, _inputs()[0] + 3]
    with torch.no_grad():
        assert [bool(model.f(x).mean() > 0.1) for x in both] == [True, False]  # both branches run
    _close(merged, model, both)


class Untraceable(nn.Module):
    """One branch fx cannot trace (a Proxy where a number is needed) calls the conv alone: it
    runs for real, so it is not skipped, and nothing is merged."""

    def __init__(self):
        super().__init__()
        self.c, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.mean() > 0:
            return self.bn(self.c(x)).flatten(1)
        h = self.c(x)
        return h.flatten(1) * float(h.abs().max() > 0)


class AlwaysRaises(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:
            raise ValueError("positive")
        raise ValueError("not positive")


@pytest.mark.parametrize("make", [Untraceable, AlwaysRaises])
def test_merge_batch_norm_leaves_a_model_unmerged_when_no_path_can_be_trusted(make):
    model, inputs = _made(make), _inputs()
    with pytest.warns(UserWarning, match="cannot trace"):
        merged = xattr.merge_batch_norm(model)
    assert _norms(merged) == 1 and merged is not model
    if make is Untraceable:
        _close(merged, model, inputs)


class ShapeChecked(nn.Module):
    """A branch that runs for real but fails under fx (an isinstance check on a shape) reads the
    conv without its batch norm: it must not be taken for a path the model cannot run."""

    def __init__(self):
        super().__init__()
        self.c, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.c(x)
        if x.mean() > 0.5:
            n = x.shape[1]
            assert isinstance(n, int)
            return (y * n).flatten(1)
        return self.bn(y).flatten(1)


def test_merge_batch_norm_does_not_skip_a_path_fx_cannot_trace():
    model = _made(ShapeChecked)
    with pytest.warns(UserWarning, match="cannot trace"):
        merged = xattr.merge_batch_norm(model)
    assert isinstance(merged.bn, nn.BatchNorm2d)
    x = _inputs()[0]
    _close(merged, model, [x - x.mean() + 1.0, x - x.mean()])
