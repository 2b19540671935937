"""DeepLift where a model merges the examples with another dim into the rows (NOTE: [Rows merged
with another dim] in xattr/_src/merged_rows.py): OPT's ``hidden.reshape(-1, D)``, heads as
``(B * H, L, d)``, Swin's windows. Before, the ruled ops on such tensors kept their ordinary
gradient (OPT's delta was 3.1 times its change); now they pair the first half of the merged rows
with the second, exactly, and interleaved merges still keep their gradient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import merged_rows as M

EXACT = xattr.rule.exact_deep_lift_rules()


# --- how a watched op notes the rows, against example ids carried through the op -------------


def _ids(shape, rows: int, dim: int) -> torch.Tensor:
    """A float tensor of ``shape`` holding, everywhere, the index of its row in ``dim``; it requires
    grad, as a tensor computed from the attributed input does (others hold no rows)."""
    view = [1] * len(shape)
    view[dim] = rows
    return torch.arange(rows, dtype=torch.float64).view(view).expand(shape).contiguous().requires_grad_()


def _batch_major(ids: torch.Tensor, dim: int, rows: int) -> bool:
    """Whether the example ids along ``dim`` run 0,0,..,1,1,.. (each example's rows together)."""
    return _ids_run(ids, dim, rows, lambda i, n: i // (n // rows))


def _in_blocks(ids: torch.Tensor, dim: int, rows: int) -> bool:
    """Whether the example ids along ``dim`` run 0,1,..,R-1,0,1,.. (k blocks of the rows)."""
    return _ids_run(ids, dim, rows, lambda i, n: i % rows)


def _ids_run(ids: torch.Tensor, dim: int, rows: int, example_at) -> bool:
    """Whether the ids along ``dim`` are ``example_at(position, size)``, the same across the other dims."""
    n = ids.shape[dim]
    if n % rows:
        return False
    view = [1] * ids.ndim
    view[dim] = n
    return torch.equal(ids, example_at(torch.arange(n, dtype=torch.float64), n).view(view).expand(ids.shape))


def _noted(func, args, rows: int, kwargs=None) -> tuple:
    merged: dict = {}
    out = M.watched(merged, rows, func, args, kwargs or {})
    return merged, out


@st.composite
def _regrouped(draw):
    """(rows, x's shape with the rows in dim 0 or 1, a reshape of it that groups x's dims)."""
    rows = draw(st.integers(2, 4))
    rest = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    at = draw(st.integers(0, 1))
    shape = rest[:at] + [rows] + rest[at:]
    if at == 1 and shape[0] == rows:
        shape[0] += 1  # a sequence-first tensor: dim 0 is not the rows
    cuts = draw(st.lists(st.booleans(), min_size=len(shape) - 1, max_size=len(shape) - 1))
    out, group = [], shape[0]
    for cut, n in zip(cuts, shape[1:]):
        if cut:
            out.append(group)
            group = n
        else:
            group *= n
    return rows, at, tuple(shape), tuple(out + [group])


@given(_regrouped())
@settings(max_examples=200, deadline=None)
def test_a_reshape_notes_batch_major_exactly_where_the_ids_say_so(case):
    """Every size noted batch-major is a dim whose example ids run batch-major; every merged dim
    0 or 1 whose ids run so, made from batch-first rows, is noted; an interleaved one never is."""
    rows, at, shape, target = case
    x = _ids(shape, rows, at)
    merged, out = _noted(torch.Tensor.reshape, (x, target), rows)
    for j, n in enumerate(out.shape):
        if merged.get(n) == M.BATCH:
            assert any(_batch_major(out, k, rows) for k, m in enumerate(out.shape) if m == n)
        if merged.get(n) == M.POSITION:
            assert any(_in_blocks(out, k, rows) for k, m in enumerate(out.shape) if m == n)
        if j < 2 and n > rows and n % rows == 0 and at == 0 and math.prod(out.shape[:j]) == 1:
            assert merged.get(n) == M.BATCH and _batch_major(out, j, rows)
    if at == 1 and shape[0] > 1 and target[0] == shape[0] * rows:  # (L, R, ...) -> (L * R, ...): interleaved
        assert merged.get(target[0]) == M.POSITION and not _batch_major(out, 0, rows)


@pytest.mark.parametrize(
    "name, make, layout",
    [
        ("cat along the rows", lambda x: torch.cat([x, x + 0]), M.POSITION),
        ("repeat along the rows", lambda x: x.repeat(2, 1, 1), M.POSITION),
        ("tile", lambda x: torch.tile(x, (3, 1, 1)), M.POSITION),
        ("repeat_interleave", lambda x: x.repeat_interleave(2, dim=0), M.BATCH),
        ("flatten(0, 1)", lambda x: x.flatten(0, 1), M.BATCH),
        ("view(-1, D)", lambda x: x.view(-1, x.shape[-1]), M.BATCH),
        ("sequence-first merged", lambda x: x.transpose(0, 1).reshape(-1, x.shape[-1]), M.POSITION),
    ],
)
def test_watched_ops_note_the_layout_the_ids_show(name, make, layout):
    rows = 3
    x = _ids((rows, 4, 5), rows, 0)
    merged: dict = {}

    class Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in M.WATCHED:
                return M.watched(merged, rows, func, args, kwargs or {})
            return func(*args, **(kwargs or {}))

    with Watch():
        out = make(x)
    sizes = [n for n in out.shape[:1] if n > rows and n % rows == 0]
    assert sizes and merged.get(sizes[0]) == layout
    assert _batch_major(out, 0, rows) == (layout == M.BATCH)
    assert _in_blocks(out, 0, rows) == (layout == M.POSITION)


def test_a_size_made_both_ways_is_neither():
    merged: dict = {}
    x = _ids((3, 4, 5), 3, 0)
    M.watched(merged, 3, torch.Tensor.reshape, (x, (12, 5)), {})
    M.watched(merged, 3, torch.Tensor.reshape, (x.transpose(0, 1), (12, 5)), {})
    assert merged[12] == M.BOTH
    assert M.merged_rows(merged, 3, (torch.zeros(12, 5),)) is None


def test_an_op_with_rows_in_dim_0_is_not_read_by_a_parameter_of_a_merged_size():
    """A layer norm on (R, L, D) whose weight has D = a noted size keeps its R rows (Swin was 1.6
    off while its norms' weights, 64 wide, were taken for 64 merged rows)."""
    merged = {64: M.BATCH}
    assert M.merged_rows(merged, 4, (torch.zeros(4, 64, 64), torch.zeros(64), torch.zeros(64))) is None
    assert M.merged_rows(merged, 4, (torch.zeros(64, 16), torch.zeros(16))) == (M.BATCH, 64)


# --- DeepLift on models that merge the rows ----------------------------------------------------


class TokenMLP(nn.Module):
    """A block whose MLP runs token-wise, on ``(B * L, D)`` as OPT's does (``merge``) or on the
    batch-first tensor: one function, two spellings."""

    def __init__(self, d: int, merge: bool, act=torch.relu):
        super().__init__()
        self.embed, self.norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.up, self.down, self.merge, self.act = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), merge, act

    def forward(self, x):
        b, length, d = x.shape
        h = self.embed(x)
        h = h.reshape(-1, d) if self.merge else h
        h = self.down(self.act(self.up(self.norm(h)))).view(b, length, d)
        return (h.softmax(-1) * x).sum((1, 2))


def _twins(d: int, seed: int, act=torch.relu):
    torch.manual_seed(seed)
    merged = TokenMLP(d, True, act).double()
    plain = TokenMLP(d, False, act).double()
    plain.load_state_dict(merged.state_dict())
    return merged, plain


def _gap(f, x, base):
    with torch.no_grad():
        return f(x) - f(base if isinstance(base, torch.Tensor) else torch.full_like(x, base))


@given(st.integers(1, 4), st.integers(2, 5), st.integers(2, 6), st.booleans(), st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_merged_rows_give_the_batch_first_numbers(batch, length, d, per_example, seed):
    """Summation-to-delta through the merged MLP, and the attributions of its batch-first twin,
    with a shared reference (the call then runs unshared) and with one per example."""
    merged, plain = _twins(d, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d, generator=g, dtype=torch.float64)
    base = torch.randn(batch, length, d, generator=g, dtype=torch.float64) if per_example else 0.0
    attr, delta = xattr.deep_lift(merged, baselines=base, mapping=EXACT, return_delta=True)(x)
    twin = xattr.deep_lift(plain, baselines=base, mapping=EXACT)(x)
    gap = _gap(merged, x, base)
    assert (delta.abs() <= 1e-10 * gap.abs().clamp_min(1e-3)).all()
    assert torch.allclose(attr, twin, rtol=0, atol=1e-11 * twin.abs().max().clamp_min(1e-3))


def test_merged_rows_under_the_default_rules_match_the_twin():
    """The default mapping keeps the layer norm's gradient (a delta) in both spellings alike: the
    ReLU's pairs are the same."""
    merged, plain = _twins(6, 0)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    for base in (0.0, torch.randn(3, 5, 6, dtype=torch.float64)):
        a = xattr.deep_lift(merged, baselines=base)(x)
        b = xattr.deep_lift(plain, baselines=base)(x)
        assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_layer_deep_lift_and_shap_through_merged_rows():
    merged, plain = _twins(4, 1)
    torch.manual_seed(2)
    x, dist = torch.randn(3, 4, 4, dtype=torch.float64), torch.randn(5, 4, 4, dtype=torch.float64)
    shap = xattr.deep_lift_shap(merged, baselines=dist, mapping=EXACT)(x)
    assert torch.allclose(shap, xattr.deep_lift_shap(plain, baselines=dist, mapping=EXACT)(x), rtol=0, atol=1e-12)
    layer = xattr.layer_deep_lift(xattr.at_layer(merged, merged.embed), mapping=EXACT)(x)
    assert torch.allclose(layer, xattr.layer_deep_lift(xattr.at_layer(plain, plain.embed), mapping=EXACT)(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="merged with another dim"):  # a layer on the merged rows: refused, as before
        xattr.layer_deep_lift(xattr.at_layer(merged, merged.norm), mapping=EXACT)(x)


class HeadsInRows(nn.Module):
    """Self-attention with its heads merged into the rows, ``(B * H, L, d)`` and ``torch.bmm``
    (``merge``), or kept apart as ``(B, H, L, d)`` and ``@``."""

    def __init__(self, d: int, heads: int, merge: bool):
        super().__init__()
        self.qkv, self.out, self.heads, self.merge = nn.Linear(d, 3 * d), nn.Linear(d, 1), heads, merge

    def forward(self, x):
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.merge:
            q, k, v = (t.reshape(b * self.heads, length, -1) for t in (q, k, v))
            weights = torch.bmm(q, k.transpose(1, 2)).softmax(-1)
            h = torch.bmm(weights, v).view(b, self.heads, length, -1)
        else:
            h = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.out(torch.tanh(h.transpose(1, 2).reshape(b, length, d))).sum((1, 2))


@pytest.mark.parametrize("per_example", [False, True])
def test_heads_merged_into_the_rows(per_example):
    """bmm and softmax on ``(B * H, L, L)`` pair their rows: exact, and the 4-d twin's numbers
    (before, both products and the softmax kept their gradient there)."""
    torch.manual_seed(0)
    merged = HeadsInRows(8, 2, True).double()
    plain = HeadsInRows(8, 2, False).double()
    plain.load_state_dict(merged.state_dict())
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    base = torch.randn(3, 5, 8, dtype=torch.float64) if per_example else 0.0
    attr, delta = xattr.deep_lift(merged, baselines=base, mapping=EXACT, return_delta=True)(x)
    twin = xattr.deep_lift(plain, baselines=base, mapping=EXACT)(x)
    assert delta.abs().max() < 1e-12 * _gap(merged, x, base).abs().min()
    assert torch.allclose(attr, twin, rtol=0, atol=1e-12)


class RelativeKeys(nn.Module):
    """Heads in the rows, ``(B * H, L, d)``, plus DeBERTa-v2's content-to-position scores: a table
    of position keys, ``(H, L, d)`` (not computed from the input), repeated to ``(B * H, L, d)``."""

    def __init__(self, d: int, heads: int, length: int):
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, 1), heads
        self.positions = nn.Parameter(torch.randn(heads, length, d // heads))

    def forward(self, x):
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = (t.reshape(b * self.heads, length, -1) for t in (q, k, v))
        keys = self.positions.repeat(q.shape[0] // self.heads, 1, 1)
        weights = (torch.bmm(q, k.transpose(1, 2)) + torch.bmm(q, keys.transpose(1, 2))).softmax(-1)
        h = torch.bmm(weights, v).view(b, self.heads, length, -1)
        return self.out(torch.tanh(h.transpose(1, 2).reshape(b, length, d))).sum((1, 2))


@pytest.mark.parametrize("frozen", [False, True])
def test_a_table_repeated_to_the_merged_size_holds_no_rows(frozen):
    """A table of as many rows as the call (H = 4 heads, 2 examples and their references) repeated
    along dim 0 is no merge of the examples: the heads merged into the rows are still paired
    (exact). Before, read by size, the repeat noted the heads' size position-major, and the
    products and softmax kept their gradient: 0.57 of the change here (DeBERTa-v2: 2.4e-4)."""
    torch.manual_seed(0)
    model = RelativeKeys(8, 4, 5).double().requires_grad_(not frozen)
    x, base = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    attr, delta = xattr.deep_lift(model, baselines=base, mapping=EXACT, return_delta=True)(x)
    assert (delta.abs() < 1e-12 * _gap(model, x, base).abs()).all()
    merged: dict = {}
    M.watched(merged, 4, torch.Tensor.repeat, (model.positions.detach(), 2, 1, 1), {})
    assert merged == {}


def _kept(h):
    """ReLU spelled as an op no rule parses: the ordinary gradient, what an unpaired ReLU keeps."""
    return torch.where(h > 0, h, torch.zeros_like(h))


class Interleaved(nn.Module):
    """A token-wise MLP on the examples interleaved with another dim: ``(L, B, D) -> (L * B, D)``
    (``seq``: L blocks of the rows), the batch joined to its negation, ``cat([x, -x])`` (``cat``:
    a siamese pair, two blocks), the same then merged with the tokens, ``(2 * B * L, D)``
    (``cat+flatten``: two blocks, each example's tokens together in each), or ``merge=False``:
    the same function on batch-first tensors."""

    def __init__(self, d: int, how: str, act=torch.relu, merge: bool = True):
        super().__init__()
        self.up, self.down, self.how, self.act, self.merge = nn.Linear(d, 2 * d), nn.Linear(2 * d, 1), how, act, merge

    def mlp(self, h):
        return self.down(self.act(self.up(h)))

    def forward(self, x):
        b, length, d = x.shape
        if not self.merge:
            return self.mlp(x).sum((1, 2)) + (self.mlp(-x).sum((1, 2)) if self.how != "seq" else 0)
        if self.how == "seq":
            return self.mlp(x.transpose(0, 1).reshape(-1, d)).view(length, b).sum(0)
        if self.how == "cat":
            return self.mlp(torch.cat([x, -x])).view(2, b, length).sum((0, 2))
        return self.mlp(torch.cat([x, -x]).reshape(-1, d)).view(2, b, length).sum((0, 2))


def _interleaved(how, act=torch.relu, merge=True):
    torch.manual_seed(0)
    return Interleaved(4, how, act, merge).double()


@pytest.mark.parametrize("how", ["seq", "cat"])
def test_rows_in_blocks_pair_on_their_views(how):
    """k blocks of the R rows (a sequence-first merge, two batches joined) pair on their (k, R,
    ...) views (NOTE: [Interleaved rows]): exact, and the batch-first twin's numbers, with a
    shared reference and with one per example (before, their ReLUs kept the gradient)."""
    ruled, twin = _interleaved(how), _interleaved(how, merge=False)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    for base in (0.0, torch.randn(3, 5, 4, dtype=torch.float64)):
        attr, delta = xattr.deep_lift(ruled, baselines=base, return_delta=True)(x)
        assert delta.abs().max() < 1e-12 * _gap(ruled, x, base).abs().min()
        assert torch.allclose(attr, xattr.deep_lift(twin, baselines=base)(x), rtol=0, atol=1e-12)


def test_blocks_merged_again_keep_the_ordinary_gradient():
    """Two blocks of rows, each then merged with its tokens: (2, R, L) in one dim, neither layout
    the rules pair. The ReLU there keeps its ordinary gradient, as one no rule parses does."""
    ruled, kept = _interleaved("cat+flatten"), _interleaved("cat+flatten", _kept)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    for base in (0.0, torch.randn(3, 5, 4, dtype=torch.float64)):
        a = xattr.deep_lift(ruled, baselines=base)(x)
        assert torch.allclose(a, xattr.deep_lift(kept, baselines=base)(x), rtol=0, atol=1e-13)


def test_baddbmm_of_two_activations_is_written_out():
    """``torch.baddbmm(bias, q, k)`` (BLOOM's ALiBi scores) takes the product rule through its
    written-out ``alpha * bmm + beta * bias``: exact, where it kept its gradient before."""
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64)
    bias = torch.randn(5, 5, dtype=torch.float64)  # one for every example

    def f(x, spelled):
        q, k = torch.tanh(x @ w), torch.sigmoid(x)
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), beta=0.5, alpha=0.3) if spelled else 0.5 * bias + 0.3 * torch.bmm(q, k.transpose(1, 2))
        return scores.softmax(-1).sum((1, 2)) + scores.sum((1, 2))

    x = torch.randn(3, 5, 4, dtype=torch.float64)
    attr, delta = xattr.deep_lift(lambda t: f(t, True), mapping=EXACT, return_delta=True)(x)
    twin = xattr.deep_lift(lambda t: f(t, False), mapping=EXACT)(x)
    assert delta.abs().max() < 1e-12
    assert torch.allclose(attr, twin, rtol=0, atol=1e-12)
    # affine in one activation (k a parameter): not parsed, the ordinary gradient is exact there
    assert xattr._src.ops.PARSERS[torch.baddbmm](torch.baddbmm, bias, x, w.expand(3, 4, 4)) is None


def test_a_shared_reference_stops_once_per_attribution_function():
    """Against one shared reference row the first call stops at the merged MLP and runs 2B rows;
    the same attribution function then runs 2B rows at once, and so does its layer variant."""
    merged, _ = _twins(4, 3)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    rows: list = []

    def spied(t):
        rows.append(t.shape[0])
        return merged(t)

    attribute = xattr.deep_lift(spied, mapping=EXACT)
    first = attribute(x)
    assert rows == [4, 6]
    assert torch.equal(attribute(x), first) and rows == [4, 6, 6]
    layer = xattr.layer_deep_lift(xattr.at_layer(spied, merged.embed), mapping=EXACT)
    rows.clear()
    layer(x)
    layer(x)
    assert rows == [4, 6, 6]


@pytest.mark.parametrize("how", ["seq", "batch"])
def test_a_merge_of_r_by_r_rows_is_read_after_a_retry(how):
    """(R, R, D) merged: batch-first ``x.flatten(0, 1)`` or sequence-first ``x.transpose(0, 1)``
    then flattened, at L == R (2 examples, a reference each: R = 4 = L). Size cannot tell them
    apart, so the call runs again with more rows, as for a ruled op on (R, R, D): then both pair,
    batch-major and in blocks, and are exact (before the retry the sequence-first merge was noted
    batch-major: wrong pairs, 0.06 off; the batch-first twin is the same function)."""
    torch.manual_seed(0)
    up, down = nn.Linear(3, 5).double(), nn.Linear(5, 1).double()

    def f(x, merge=True):
        if not merge:
            return down(torch.relu(up(x))).sum((1, 2))
        h = x.flatten(0, 1) if how == "batch" else x.transpose(0, 1).reshape(-1, 3)
        out = down(torch.relu(up(h))).view(x.shape[0], x.shape[1]) if how == "batch" else down(torch.relu(up(h))).view(x.shape[1], x.shape[0]).T
        return out.sum(1)

    x, base = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert delta.abs().max() < 1e-12
    assert torch.allclose(attr, xattr.deep_lift(lambda t: f(t, False), baselines=base)(x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("per_example", [False, True])
def test_blocks_through_bmm_softmax_and_an_in_place_relu(per_example):
    """Sequence-first blocks ``(L * R, 2, 3)``: ``torch.bmm`` of two activations, softmax along a
    non-negative dim (shifted on the view) and ``relu_`` (written into the merged tensor) pair on
    their views: exact, and the batch-first twin's numbers."""
    torch.manual_seed(0)
    up = nn.Linear(4, 6).double()

    def f(x, merge=True):
        b, length, _ = x.shape
        h = up(x)
        if merge:
            q = h.transpose(0, 1).reshape(length * b, 2, 3)
            s = torch.bmm(q, q.transpose(1, 2)).softmax(1)
            return s.clone().relu_().mul(s).view(length, b, 4).sum((0, 2)) + torch.tanh(q).view(length, b, 6).sum((0, 2))
        q = h.view(b, length, 2, 3)
        s = (q @ q.transpose(-2, -1)).softmax(2)
        return s.clone().relu_().mul(s).flatten(2).sum((1, 2)) + torch.tanh(q).flatten(1).sum(1)

    x = torch.randn(3, 5, 4, dtype=torch.float64)
    base = torch.randn(3, 5, 4, dtype=torch.float64) if per_example else 0.0
    attr, delta = xattr.deep_lift(f, baselines=base, mapping=EXACT, return_delta=True)(x)
    assert delta.abs().max() < 1e-12 * _gap(f, x, base).abs().min()
    assert torch.allclose(attr, xattr.deep_lift(lambda t: f(t, False), baselines=base, mapping=EXACT)(x), rtol=0, atol=1e-12)


class _CaptumMerged(nn.Module):
    """A token-wise MLP whose ReLU is one ``nn.ReLU`` module (Captum's hooks see it), on the rows
    merged batch-major (``batch``), sequence-first (``seq``) or two batches joined (``cat``)."""

    def __init__(self, how: str):
        super().__init__()
        self.up, self.act, self.down, self.how = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), how

    def forward(self, x):
        b, length, d = x.shape
        if self.how == "batch":
            return self.down(self.act(self.up(x.reshape(-1, d)))).view(b, length, 2).sum(1)
        if self.how == "seq":
            return self.down(self.act(self.up(x.transpose(0, 1).reshape(-1, d)))).view(length, b, 2).sum(0)
        return self.down(self.act(self.up(torch.cat([x, -x])))).view(2, b, length, 2).sum((0, 2))


@pytest.mark.parametrize("how", ["batch", "seq", "cat"])
def test_captum_deep_lift_on_merged_rows(how):
    """Captum pairs the two halves of a hooked module's input: right on batch-major rows, where
    `xattr.compat.captum.DeepLift` gives its numbers; wrong on rows in blocks, whose halves are not
    the inputs' and references' (its delta 0.42 and 1.0 of an output of about 1), where ours is
    exact (documented: docs/migration_rules.md)."""
    captum = pytest.importorskip("captum.attr")
    from xattr.compat import captum as compat

    torch.manual_seed(0)
    model = _CaptumMerged(how).double()
    x, base = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    theirs, their_delta = captum.DeepLift(model).attribute(x, baselines=base, target=1, return_convergence_delta=True)
    ours, delta = compat.DeepLift(model).attribute(x, baselines=base, target=1, return_convergence_delta=True)
    assert delta.abs().max() < 1e-12
    if how == "batch":
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    else:
        assert their_delta.abs().max() > 0.1
