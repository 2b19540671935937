"""2-d max-pools run in channels-last (NOTE: [Max-pools in channels-last] in xattr/_src/pools.py):
the same values and argmax indices as torch's own kernel, bit for bit, the same gradient in the
input's layout, taken only where it pays, and the same attributions with it off."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import pools
from xattr._src.ops import Op

SPECIAL = torch.tensor([float("-inf"), -1.0, -0.0, 0.0, 1.0, 2.0, float("nan")])


def _op(kernel, stride, padding, dilation, ceil_mode) -> Op:
    options = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                   nd=2, return_indices=False)
    return Op("max_pool", None, (), options, F.max_pool2d, False)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as bits: NaN where NaN, the sign of every zero."""
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32 if a.dtype == torch.float32 else torch.int64),
                                              b.view(torch.int32 if b.dtype == torch.float32 else torch.int64))


@st.composite
def pools_and_inputs(draw):
    k = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([None, 1, 2, 3, (1, 2)]))
    padding = draw(st.integers(0, k // 2))
    dilation = draw(st.sampled_from([1, 1, 2]))
    ceil_mode = draw(st.booleans())
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([16, 24]))
    h, w = draw(st.integers(8, 13)), draw(st.integers(8, 13))
    seed = draw(st.integers(0, 2**16))
    special = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    if special:  # ties, NaN, -inf and signed zeros: where the two kernels could part
        x = SPECIAL[torch.randint(0, len(SPECIAL), (n, c, h, w), generator=g)]
    else:
        x = torch.randn(n, c, h, w, generator=g).relu()
    return x, (k, stride, padding, dilation, ceil_mode)


@settings(max_examples=60, deadline=None)
@given(pools_and_inputs())
def test_values_and_indices_equal_torch_bit_for_bit(case):
    x, (k, stride, padding, dilation, ceil_mode) = case
    assert pools._channels_last_pays(x)  # the fast path is the one under test
    y, i = pools.pool_with_indices(_op(k, stride, padding, dilation, ceil_mode), x)
    y_ref, i_ref = F.max_pool2d_with_indices(x, k, stride, padding, dilation, ceil_mode)
    assert _same_values(y, y_ref)
    assert torch.equal(i, i_ref)
    assert y.is_contiguous() and i.is_contiguous()


@settings(max_examples=30, deadline=None)
@given(pools_and_inputs(), st.sampled_from([torch.float32, torch.float64]))
def test_gradient_equals_torch_in_the_inputs_layout(case, dtype):
    x, (k, stride, padding, dilation, ceil_mode) = case
    x = x.nan_to_num(0.0).to(dtype)  # (a NaN gradient compares unequal to itself)
    options = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = pools._max_pool2d(a, options), F.max_pool2d(b, **options)
    assert _same_values(y.detach(), y_ref.detach())
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (ga,), (gb,) = torch.autograd.grad(y, a, cot), torch.autograd.grad(y_ref, b, cot)
    assert torch.equal(ga, gb)
    assert ga.is_contiguous()  # not channels-last: the next op's backward mixes no layouts


def test_second_order_gradient_flows_through_the_backward():
    options = dict(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)

    def second_order(pool):
        a = x.clone().requires_grad_()
        v = torch.randn(2, 16, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        (g,) = torch.autograd.grad(pool(a), a, v, create_graph=True)
        return torch.autograd.grad((g * a).sum(), v)[0]

    fast, plain = second_order(lambda t: pools._max_pool2d(t, options)), second_order(lambda t: F.max_pool2d(t, **options))
    assert torch.equal(fast, plain)
    assert torch.equal(plain, F.max_pool2d(x, **options))  # d/dv sum(unpool(v) * x) is x at each argmax


@pytest.mark.parametrize(
    "x",
    [torch.randn(4, 8, 16, 16),  # few channels: nothing to vectorize
     torch.randn(4, 32, 4, 4),  # small maps
     torch.randn(32, 16, 16),  # unbatched
     torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last),  # already channels-last
     torch.randn(2, 16, 8, 8).to(torch.float16)],
    ids=["8-channels", "4x4", "unbatched", "channels-last", "float16"],
)
def test_torch_layout_kept_where_channels_last_does_not_pay(x):
    assert not pools._channels_last_pays(x)


def test_not_under_vmap():
    seen = []

    def pool(x):
        seen.append(pools._channels_last_pays(x))
        return pools.pool_with_indices(_op(2, 2, 0, 1, False), x)[0]

    x = torch.randn(3, 2, 16, 8, 8)
    out = torch.func.vmap(pool)(x)
    assert seen == [False]
    assert torch.equal(out, F.max_pool2d(x.flatten(0, 1), 2).unflatten(0, (3, 2)))


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), kernel_size=3, stride=2, padding=1)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("method", ["deep_lift", "lrp", "lrp_composite"])
def test_attributions_unchanged_with_the_fast_path_off(method, monkeypatch):
    torch.manual_seed(0)
    model = PoolNet().eval()
    x = torch.randn(4, 3, 16, 16)
    f = xattr.target(model, torch.tensor([0, 1, 2, 3]))
    make = {
        "deep_lift": lambda: xattr.deep_lift(f, baselines=0.0),
        "lrp": lambda: xattr.lrp(f),
        "lrp_composite": lambda: xattr.lrp(f, composite={**xattr.rule.lrp_rules(), torch.conv2d: xattr.rule.Gamma(0.25),
                                                          F.max_pool2d: xattr.rule.Epsilon(1e-6)}),
    }[method]
    calls = []
    real = pools._channels_last_pays
    monkeypatch.setattr(pools, "_channels_last_pays", lambda t: calls.append(real(t)) or calls[-1])
    fast = make()(x)
    assert any(calls)  # the fast path ran
    monkeypatch.setattr(pools, "_channels_last_pays", lambda t: False)
    slow = make()(x)
    assert torch.equal(fast, slow)
