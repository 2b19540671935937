"""DeepLift on sequence-first tensors of rank 2 and rank 4 (NOTE: [Rows in dim 0 or dim 1] in
xattr/_src/row_layout.py).

Each model takes batch-first inputs; its sequence-first twin (the same weights) computes the same
function with the rows in dim 1 of its ruled tensors: ``W @ x.T`` then a ReLU on the (out, R)
result (rank 2), or attention written by hand on a (L, B, D) tensor viewed as (L, B, H, d), with
ELU, softmax, ReLU and a max-pool on it (rank 4). Before, those ops kept their ordinary gradient
(they were read in dim 1 of 3-d tensors only): the rank-2 twin's delta was 4e-2 to 7e-2 where the
batch-first one's is 1e-16, attributions 3e-2 to 1e-1 off the batch-first ones, and the rank-4
attention twin 0.19 off (attributions of size 0.2). Coincidences: where dim 0 is R too, or a
multiple of it, a tensor of rank 2 or 4 reads as a batch-first model's (a CNN with R channels, an
MLP R wide run one call), until the call finds rows in dim 1: then it runs again with more rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import xattr

D, H = 8, 2


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Transposed(nn.Module):
    """(B, D) inputs; sequence-first: two affine maps as ``W @ h`` on (features, R) tensors."""

    def __init__(self, batch_first: bool, widths=(6, 5), soft: bool = False):
        super().__init__()
        self.batch_first, self.soft = batch_first, soft
        self.pre, self.a, self.b, self.head = nn.Linear(D, D), nn.Linear(D, widths[0]), nn.Linear(*widths), nn.Linear(widths[1], 3)

    def forward(self, x):
        h = self.pre(x)
        if self.batch_first:
            h = torch.tanh(self.b(F.relu(self.a(h))))
            return self.head(torch.softmax(h, -1) if self.soft else h)
        h = F.relu(self.a.weight @ h.T + self.a.bias[:, None])  # (w1, R)
        h = torch.tanh(self.b.weight @ h + self.b.bias[:, None])  # (w2, R)
        return self.head((torch.softmax(h, 0) if self.soft else h).T)


class Heads(nn.Module):
    """(B, L, D) inputs; sequence-first: (L, B, D) viewed as (L, B, H, d) for the ruled ops.

    "attention": ELU feature maps on q and k, softmax over the keys, ReLU after the output map;
    "pointwise": ReLU, a max-pool over d and tanh on the heads, affine otherwise (exact delta)."""

    def __init__(self, kind: str, batch_first: bool):
        super().__init__()
        self.kind, self.batch_first = kind, batch_first
        self.pre, self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.head = nn.Linear(D if kind == "attention" else D // 2, 3)

    def forward(self, x):
        h = F.softplus(self.pre(x))
        h = torch.tanh(h if self.batch_first else h.transpose(0, 1))  # 3-d: L == R is ambiguous there
        heads = h.shape[:2] + (H, D // H)
        if self.kind == "attention":
            q, k, v = F.elu(self.q(h).view(heads)), F.elu(self.k(h).view(heads)), self.v(h).view(heads)
            if self.batch_first:
                w = torch.softmax(torch.einsum("blhd,bmhd->blhm", q, k), -1)
                o = torch.einsum("blhm,bmhd->blhd", w, v)
            else:
                w = torch.softmax(torch.einsum("lbhd,mbhd->lbhm", q, k), -1)
                o = torch.einsum("lbhm,mbhd->lbhd", w, v)
            o = F.relu(o).flatten(2)
        else:
            o = torch.tanh(F.max_pool2d(F.relu(self.q(h).view(heads)), (1, 2))).flatten(2)
        o = o if self.batch_first else o.transpose(0, 1)
        return self.head(o.mean(1))


def _twins(make, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first = make(True).double().eval()
    second = make(False).double().eval()
    second.load_state_dict(first.state_dict())
    return first, second


def _methods(f, model, shape):
    dist = _randn(2, *shape[1:], seed=5) * 0.1
    return {
        "shared": (xattr.deep_lift(f, return_delta=True), {}),
        "per_example": (xattr.deep_lift(f, return_delta=True), {"baselines": _randn(*shape, seed=6) * 0.1}),
        "shap": (xattr.deep_lift_shap(f, baselines=dist, return_delta=True), {}),
        "layer": (xattr.layer_deep_lift(xattr.at_layer(f, model.pre), return_delta=True), {}),
    }


def _check_twins(first, second, x, *, exact: bool, alone: bool = True):
    """The sequence-first twin's attributions and deltas are the batch-first twin's; with
    ``exact`` (affine maps, ReLU, tanh, max-pool only) they sum to delta; an example alone gives
    its row in the batch."""
    f1, f2 = xattr.target(first, 1), xattr.target(second, 1)
    m1, m2 = _methods(f1, first, x.shape), _methods(f2, second, x.shape)
    for name, (attr, kw) in m1.items():
        want, want_delta = attr(x, **kw)
        got, delta = m2[name][0](x, **kw)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(delta, want_delta, rtol=1e-7, atol=1e-11, msg=lambda m: f"{name} delta: {m}")
        if exact and name != "layer":
            assert delta.abs().max() < 1e-9, (name, delta)
        if alone:
            rows = [m2[name][0](x[j : j + 1], **{k: v[j : j + 1] for k, v in kw.items()})[0] for j in range(x.shape[0])]
            torch.testing.assert_close(torch.cat(rows), got, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name} alone: {m}")


# (B, widths): R is B + 1 (shared), 2B (per example), 2(B + 1) (two SHAP rows); widths equal to R
# or 2R (read batch-first until a later op holds the rows in dim 1: then a retry) and next to none
TRANSPOSED = [(4, (6, 5)), (3, (6, 5)), (4, (8, 3)), (4, (10, 7)), (2, (3, 6)), (1, (2, 5)), (3, (7, 9)), (2, (4, 3))]


@pytest.mark.parametrize("batch, widths", TRANSPOSED, ids=[f"B{b}-{w[0]}x{w[1]}" for b, w in TRANSPOSED])
def test_rank_2_transposed_linear_equals_batch_first(batch, widths):
    first, second = _twins(lambda bf: Transposed(bf, widths), seed=batch + sum(widths))
    _check_twins(first, second, _randn(batch, D, seed=10 + batch), exact=True)


def test_rank_2_softmax_over_features_in_dim_0():
    first, second = _twins(lambda bf: Transposed(bf, (6, 7), soft=True), seed=3)
    _check_twins(first, second, _randn(3, D, seed=11), exact=False)


# (B, L): L == R (B + 1 = 4, 2B = 6, 2(B + 1) = 8), d == R (B = 3 shared: d = D / H = 4 = R; B = 1
# paired: H = 2 = R), B == 1 with L == 2, and lengths next to none of them
HEADS = [(3, 4), (3, 6), (3, 8), (3, 5), (2, 3), (1, 2), (1, 5), (2, 7)]


@pytest.mark.parametrize("kind", ["attention", "pointwise"])
@pytest.mark.parametrize("batch, length", HEADS, ids=[f"B{b}-L{n}" for b, n in HEADS])
def test_rank_4_heads_equal_batch_first(kind, batch, length):
    first, second = _twins(lambda bf: Heads(kind, bf), seed=20 + batch + length)
    _check_twins(first, second, _randn(batch, length, D, seed=21 + length), exact=kind == "pointwise")


@given(batch=st.integers(1, 5), w1=st.integers(1, 11), w2=st.integers(1, 11), per_example=st.booleans())
def test_transposed_twins_agree_and_sum_to_delta(batch, w1, w2, per_example):
    """Whatever the widths next to the row count, the (w, R) twin gives the (R, w) numbers, and
    its attributions sum to f(x) - f(b); but where both widths are R, every ruled tensor is
    (R, R) and nothing tells its layout: read batch-first, as NOTE: [Rows in dim 0 or dim 1]
    says ("What stays unseen"; the thorough hypothesis profile drew batch 3, widths 6 and 6)."""
    rows = 2 * batch if per_example else batch + 1  # a shared reference row when none is given
    assume(not (w1 == rows and w2 == rows))
    first, second = _twins(lambda bf: Transposed(bf, (w1, w2)), seed=w1 * 13 + w2)
    x = _randn(batch, D, seed=batch)
    kw = {"baselines": _randn(batch, D, seed=7) * 0.1} if per_example else {}
    want = xattr.deep_lift(xattr.target(first, 0), **kw)(x)
    got, delta = xattr.deep_lift(xattr.target(second, 0), return_delta=True, **kw)(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert delta.abs().max() < 1e-9


def test_vmap_equals_the_loop():
    """Under vmap an example is 2 paired rows: a first width of 2 reads batch-first, the next (3, 2)
    holds the rows in dim 1, and the call runs again."""
    first, model = _twins(lambda bf: Transposed(bf, (2, 3)), seed=30)
    x, base = _randn(3, D, seed=31), _randn(3, D, seed=32) * 0.1
    attr = xattr.deep_lift(xattr.target(model, 2))
    mapped = torch.func.vmap(lambda r, b: attr(r[None], baselines=b[None])[0])(x, base)
    loop = torch.cat([attr(x[j : j + 1], baselines=base[j : j + 1]) for j in range(3)])
    torch.testing.assert_close(mapped, loop, rtol=1e-9, atol=1e-11)
    want = xattr.deep_lift(xattr.target(first, 2))(x, baselines=base)
    torch.testing.assert_close(loop, want, rtol=1e-9, atol=1e-11)


def _rows_of_calls(model, x) -> list:
    rows: list = []

    def spied(t):
        rows.append(t.shape[0])
        return model(t)

    xattr.deep_lift(xattr.target(spied, 1))(x)
    return rows


class Tokens(nn.Module):
    """Batch-first, with the batch merged into the tokens: ReLU on (B * L, D)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(F.relu(self.a(x.flatten(0, 1)))).unflatten(0, x.shape[:2]).mean(1)


def test_batch_first_coincidences_run_one_call_and_sequence_first_ones_one_more():
    """R == 4 (3 examples and a shared reference row): a CNN with 4 channels (R, R, H, W) and an MLP
    4 wide (R, R) run one call, as before. A transposed MLP of widths (4, 5) reads its (R, R)
    batch-first until (5, R) holds the rows in dim 1, a (L, R, H, d) with d == R may hold them in
    dim 3: each runs again with twice the rows, and gives what an unambiguous call gives (tested
    above). Tokens merged into the rows, (R * L, 4), are read merged, not as (L', R) (NOTE: [Rows
    merged with another dim]): the shared call stops there and runs again unshared, 2B rows."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 9, 4), nn.ReLU(),
                        nn.Linear(4, 2)).double().eval()
    mlp = nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    tokens = Tokens().double().eval()
    cases = [(cnn, _randn(3, 3, 8, 8, seed=40), [4]), (mlp, _randn(3, D, seed=41), [4]),
             (tokens, _randn(3, 5, 4, seed=42), [4, 6]),
             (_twins(lambda bf: Transposed(bf, (4, 5)), seed=43)[1], _randn(3, D, seed=44), [4, 8]),
             (_twins(lambda bf: Transposed(bf, (6, 5)), seed=43)[1], _randn(3, D, seed=44), [4]),
             (_twins(lambda bf: Heads("pointwise", bf), seed=45)[1], _randn(3, 5, D, seed=46), [4, 8])]
    for model, x, want in cases:
        assert _rows_of_calls(model, x) == want
    x = _randn(3, 5, 4, seed=42)  # the merged tokens pair their rows (the ReLU kept its gradient before)
    f = xattr.target(tokens, 1)
    attr = xattr.deep_lift(f)(x)
    with torch.no_grad():
        gap = f(x) - f(torch.zeros_like(x))
    torch.testing.assert_close(attr.sum((1, 2)), gap, rtol=1e-12, atol=1e-14)
    assert (attr - xattr.input_x_gradient(f)(x)).abs().max() > 1e-3 * attr.abs().max()


class LaterRows(nn.Module):
    """Rows in dim 2: scores (L, M, R, H) of L queries against M keys, softmax over the keys."""

    def __init__(self, keys: int):
        super().__init__()
        self.keys, self.q, self.k, self.head = keys, nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x):
        h = x.transpose(0, 1)  # (L, B, D)
        heads = (-1, h.shape[1], H, D // H)
        q, k = self.q(h).view(heads), self.k(h[: self.keys]).view(heads)
        w = torch.softmax(torch.einsum("lbhd,mbhd->lmbh", q, k), 1)  # (L, M, B, H)
        return self.head(torch.einsum("lmbh,mbhd->lbhd", w, q[: self.keys]).flatten(2).mean(0))


def test_rows_in_a_later_dim_are_not_paired_in_dim_1():
    """(L, M, R, H) with M == R (4 keys, 3 examples and a shared reference row) is not read in dim
    1, which would pair keys as if they were examples: the call runs again, and the softmax keeps
    its gradient, as at any other M; an example alone gives its row in the batch."""
    torch.manual_seed(1)
    model = LaterRows(4).double().eval()
    x = _randn(3, 6, D, seed=50)
    attr = xattr.deep_lift(xattr.target(model, 1))
    alone = torch.cat([attr(x[j : j + 1]) for j in range(3)])
    torch.testing.assert_close(attr(x), alone, rtol=1e-9, atol=1e-11)
    assert _rows_of_calls(model, x) == [4, 8]


def test_a_direct_paired_rows_reads_dim_1_and_refuses_a_coincidence_after_it():
    """Under a user's own paired_rows: (L, R) and (L, R, H, d) hold the rows in dim 1 (the paired
    multipliers, not the derivative); (R, R) alone reads batch-first; (R, R) once a tensor held
    the rows in dim 1 is a ValueError."""
    relu = xattr.rules(lambda t: F.relu(t), xattr.rule.deep_lift_rules())
    t = _randn(4, 5, seed=60)  # rows in dim 0: inputs, then one shared reference row
    with xattr.rule.paired_rows(4, reference_grads=False, shared=1):
        want = torch.func.vjp(relu, t)[1](torch.ones_like(t))[0]
        got = torch.func.vjp(relu, t.T.contiguous())[1](torch.ones(5, 4, dtype=t.dtype))[0]
        torch.testing.assert_close(got, want.T, rtol=0, atol=0)
        deep = torch.func.vjp(relu, t.T.reshape(5, 4, 1, 1))[1](torch.ones(5, 4, 1, 1, dtype=t.dtype))[0]
        torch.testing.assert_close(deep.flatten(1), want.T, rtol=0, atol=0)
    with xattr.rule.paired_rows(4, reference_grads=False, shared=1):
        relu(_randn(4, 4, seed=61))
    with xattr.rule.paired_rows(4, reference_grads=False, shared=1):
        relu(_randn(5, 4, seed=61))
        with pytest.raises(ValueError, match="dim 0 or in dim 1"):
            relu(_randn(4, 4, seed=61))
