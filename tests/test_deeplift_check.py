"""deep_lift's first call warns where its attributions miss summation-to-delta (NOTE:
[Summation-to-delta checked once] in xattr/_src/deeplift_check.py)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.deeplift_check import REL_TOL, off_by

MISS = "miss summation-to-delta"


class _Attention(nn.Module):
    """A softmax inside the model: the default rules leave a gap, the exact ones do not."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.out = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        a = F.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1) @ self.v(x)
        return self.out(a.mean(1))


def _cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)).eval()


X_SEQ = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(2))
X_IMG = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))


def _caught(fn):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in got if MISS in str(w.message)]


def test_a_gap_warns_on_the_first_call_only_and_names_the_remedy():
    f = xattr.deep_lift(xattr.target(_Attention().eval(), 1))
    _, first = _caught(lambda: f(X_SEQ))
    assert len(first) == 1 and "exact_deep_lift_rules" in first[0] and "return_delta" in first[0]
    _, second = _caught(lambda: f(X_SEQ))
    assert second == []
    _, fresh = _caught(lambda: xattr.deep_lift(xattr.target(_Attention().eval(), 1))(X_SEQ))  # a new function checks again
    assert len(fresh) == 1


def test_exact_models_and_exact_rules_do_not_warn():
    (_, delta), got = _caught(lambda: xattr.deep_lift(xattr.target(_Attention().eval(), 1),
                                                      mapping=xattr.rule.exact_deep_lift_rules(), return_delta=True)(X_SEQ))
    assert got == [] and delta.abs().max() < 1e-5
    _, got = _caught(lambda: xattr.deep_lift(xattr.target(_cnn(), 2))(X_IMG))  # ReLU, max-pool: exact
    assert got == []


def test_not_checked_where_the_sum_is_not_the_methods_property():
    f = xattr.target(_Attention().eval(), 1)
    _, got = _caught(lambda: xattr.deep_lift(f, multiply_by_inputs=False)(X_SEQ))
    assert got == []
    _, got = _caught(lambda: xattr.deep_lift(f, attribution_func=lambda m, x, b: m * (x - b) * 2)(X_SEQ))
    assert got == []


def test_under_vmap_the_check_waits_for_an_eager_call():
    f = xattr.deep_lift(xattr.target(_Attention().eval(), 1))
    _, got = _caught(lambda: torch.vmap(lambda x: f(x[None])[0])(X_SEQ))
    assert got == []
    _, got = _caught(lambda: f(X_SEQ))
    assert len(got) == 1


def test_return_delta_is_the_checked_gap_and_the_numbers_do_not_change():
    f = xattr.target(_Attention().eval(), 1)
    (attr, delta), _ = _caught(lambda: xattr.deep_lift(f, return_delta=True)(X_SEQ))
    plain, _ = _caught(lambda: xattr.deep_lift(f)(X_SEQ))
    assert torch.equal(attr, plain)
    with torch.no_grad():
        gap = f(X_SEQ) - f(torch.zeros_like(X_SEQ))
    torch.testing.assert_close(delta, attr.flatten(1).sum(1) - gap, atol=1e-6, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-10, 10), min_size=3, max_size=3), min_size=1, max_size=4),
       st.lists(st.floats(-10, 10), min_size=4, max_size=4))
def test_off_by_equals_a_loop(rows, changes):
    attr = torch.tensor(rows, dtype=torch.float64)
    change = torch.tensor(changes[: len(rows)], dtype=torch.float64)
    gap = attr.sum(1) - change
    worst, big = 0.0, 0.0
    for a, c, g in zip(attr.tolist(), change.tolist(), gap.tolist()):
        scale = max(abs(c), sum(abs(v) for v in a))
        rel = abs(g) / scale if scale > 0 else 0.0
        worst, big = max(worst, rel), max(big, abs(g))
    got = off_by((attr,), gap)
    if worst > REL_TOL:
        assert got is not None and got[0] == pytest.approx(big) and got[1] == pytest.approx(worst)
    else:
        assert got is None


def test_captums_deep_lift_class_checks_its_first_call_only():
    from xattr.compat.captum import DeepLift

    dl = DeepLift(_Attention().eval())
    _, first = _caught(lambda: dl.attribute(X_SEQ, target=1))
    _, later = _caught(lambda: [dl.attribute(X_SEQ, target=1) for _ in range(3)])
    assert len(first) == 1 and later == []
