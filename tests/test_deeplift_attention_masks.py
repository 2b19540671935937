"""DeepLift's fused SDPA op (`_Attention`, NOTE: [Written-out attention fused]) against the
written-out steps it replaces, for every kind of ``attn_mask``: none, causal, float and bool masks
of every broadcast shape, queries with no key to attend (the ``dead`` rows), key padding, the
mask's L equal to the call's rows, a shared reference row, DeepLift SHAP's copies, both halves
seeded, and random shapes. The steps run with `rules.fused` switched off by monkeypatching, as in
tests/test_deeplift_speed_paths.py; a spy on `_Attention.forward` counts the fused op's runs, so
that a silent fallback cannot make a comparison vacuous, and a spy on its backward records the
rows and the dead rows it saw. Summation-to-delta is checked too, and the forward against the
plain model where a mask of a finite number hides every key of a query (NOTE: [Rows masked by a
finite number])."""

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
import xattr._src.rules as rules_module
from xattr._src import deeplift_fused, ops
from xattr._src.deeplift_attention import _Attention
from xattr._src.row_layout import paired_rows

D = torch.float64
EXACT = xattr.rule.exact_deep_lift_rules()
NEG = float("-inf")


class Attn(nn.Module):
    """x (B, H, L, 3) -> an embedding, then q (B, H, L, E) and k, v (B, H, S, E) by linear layers (k
    and v over S positions by a linear map along the sequence), SDPA, tanh, a weighted sum: every
    tensor 4-d, so that no (rows, L, D) tensor makes DeepLift retry when L equals the rows."""

    def __init__(self, seed: int, heads: int, length: int, keys: int, d: int = 3, e: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(d, d)
        self.q, self.k, self.v = nn.Linear(d, e), nn.Linear(d, e), nn.Linear(d, e)
        self.seq = nn.Linear(length, keys, bias=False) if keys != length else nn.Identity()
        self.w = nn.Parameter(torch.randn(e))

    def forward(self, x, mask=None, causal=False, scale=None):
        h = self.embed(x)
        kv = self.seq(h.transpose(-1, -2)).transpose(-1, -2)
        a = F.scaled_dot_product_attention(self.q(h), self.k(kv), self.v(kv), attn_mask=mask, is_causal=causal, scale=scale)
        return (torch.tanh(a) * self.w).sum((1, 2, 3))


def model(heads=5, length=4, keys=5, seed=0) -> Attn:
    return Attn(seed, heads, length, keys).to(D).eval()


def data(seed: int, batch: int, heads=5, length=4, base_rows=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, heads, length, 3, generator=g, dtype=D)
    return x, 0.3 * torch.randn(base_rows or batch, heads, length, 3, generator=g, dtype=D)


@contextlib.contextmanager
def spied():
    """Counts `_Attention.forward` runs; records (rows, dead-rows shape or None) of each backward."""
    seen = {"backward": []}

    def backward(self, op, saved, grad):
        extras = saved.extras
        seen["backward"].append((grad.shape[0], tuple(extras[6].shape) if len(extras) > 6 else None))
        return original(self, op, saved, grad)

    original = _Attention.backward
    with mock.patch.object(_Attention, "forward", autospec=True, side_effect=_Attention.forward) as fwd, \
            mock.patch.object(_Attention, "backward", backward):
        yield seen
        seen["forward"] = fwd.call_count


def fused_and_steps(dl, *args):
    """((attributions, delta) fused, the same written out, what the spies saw), leaving args as given."""
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with spied() as seen:
        new = dl(*args)
    with mock.patch.object(rules_module, "fused", lambda *a: None):  # the written-out steps
        old = dl(*args)
    for a, b in zip(args, before):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)  # the user's inputs and mask untouched
    return new, old, seen


def same(new, old, rel=1e-10):
    """Equal to ~1e-10 of the largest attribution, which is not 0 (no vacuous comparison)."""
    scale = float(old.abs().max())
    assert scale > 0
    torch.testing.assert_close(new, old, rtol=0, atol=rel * scale)


def conserves(delta, f, x, b, *rest):
    with torch.no_grad():
        gap = float((f(x, *rest) - f(b.expand_as(x), *rest)).abs().max())
    assert delta.abs().max() <= 1e-11 * max(1.0, gap)


SHAPES = {  # name -> shape, from B, H, L, S
    "LS": lambda B, H, L, S: (L, S),
    "11LS": lambda B, H, L, S: (1, 1, L, S),
    "B1LS": lambda B, H, L, S: (B, 1, L, S),
    "BHLS": lambda B, H, L, S: (B, H, L, S),
    "HLS": lambda B, H, L, S: (H, L, S),
    "B11S": lambda B, H, L, S: (B, 1, 1, S),
}


def make_mask(shape, kind: str, dead: bool, seed: int):
    """A random mask (about a third of the keys hidden; key 0 always kept, so that only ``dead``
    hides every key of a query): bool (True = attend) or float (0 or -inf); with ``dead`` query 1
    (of the first example and head where the shape has them; for (B, 1, 1, S) every query of
    example 0: a padded-out example) attends nothing."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=g) > 0.35
    keep[..., 0] = True
    if dead:
        index = (0,) * (len(shape) - 2) + ((slice(None),) if shape[-2] == 1 else (1,))
        keep[index] = False
    return keep if kind == "bool" else torch.zeros(shape, dtype=D).masked_fill(~keep, NEG)


CASES = [(name, kind, dead) for name in SHAPES for kind in ("float", "bool") for dead in (False, True)]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name,kind,dead", CASES)
def test_masks_of_every_shape_equal_the_written_out_steps(name, kind, dead, batch):
    alone = name == "B11S" and dead and batch == 1  # a padded-out example alone: nothing reaches its inputs
    H, L, S = 5, 4, 5  # H is none of the row counts 2, 6 (4-d tensors with the rows in dim 1 run written out)
    f, (x, b) = model(H, L, S), data(1, batch)
    mask = make_mask(SHAPES[name](batch, H, L, S), kind, dead, seed=len(name) + 7 * batch)
    dead_rows = torch.as_tensor(mask == NEG if kind == "float" else ~mask).all(-1)
    assert bool(dead_rows.any()) == dead  # the case is what it says
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, delta_old), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 1 and len(seen["backward"]) == 1
    rows, dead_shape = seen["backward"][0]
    assert rows == 2 * batch
    per_row = mask.ndim == 4 and mask.shape[0] == batch  # tiled with the inputs: the backward slices its input rows
    assert dead_shape == ((rows,) if per_row else tuple(mask.shape[:1])) + tuple(mask.shape[1:-1]) + (1,)
    if alone:  # every attribution is 0 on both paths (no relative comparison to make)
        assert not attr.any() and not attr_old.any()
        return
    same(attr, attr_old)
    conserves(delta, f, x, b, mask)
    conserves(delta_old, f, x, b, mask)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_no_mask_and_causal_equal_the_written_out_steps(causal, batch):
    f, (x, b) = model(5, 4, 4), data(2, batch)  # causal: L == S (torch aligns tril at the top left)
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, None, causal)
    assert seen["forward"] == 1 and seen["backward"] == [(2 * batch, (4, 1) if causal else None)]
    same(attr, attr_old)
    conserves(delta, f, x, b, None, causal)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["float", "bool"])
def test_a_2d_mask_as_long_as_the_rows(kind, batch):
    """An (L, S) mask with L == 2B, the call's rows, its last query dead (past the input rows; at
    B = 3 the first too): its dead rows (L, 1) broadcast over the queries, not sliced as rows."""
    L, S = 2 * batch, 3
    f, (x, b) = model(5, L, S), data(3, batch, length=L)
    mask = make_mask((L, S), kind, dead=False, seed=batch)
    hidden = False if kind == "bool" else NEG
    mask[-1] = hidden
    if batch > 1:
        mask[0] = hidden
    for method in ("deep_lift", "layer_deep_lift"):
        dl = (xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True) if method == "deep_lift" else
              xattr.layer_deep_lift(xattr.at_layer(f, f.embed), baselines=b, mapping=EXACT, return_delta=True))
        (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
        assert seen["forward"] == 1 and seen["backward"] == [(L, (L, 1))]  # the coincidence, not retried
        same(attr, attr_old)
        conserves(delta, f, x, b, mask)


def test_a_batch_first_model_whose_length_is_the_rows_retries():
    """A (B, L, D) model (heads split from D) with L == 2B and an (L, S) mask: its (rows, L, D)
    activations are ambiguous, so DeepLift runs the call again with the rows doubled (NOTE: [Rows
    in dim 0 or dim 1]); the fused op then sees 4B rows, not L."""

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.qkv, self.out = nn.Linear(6, 3 * 6), nn.Linear(6, 1)

        def forward(self, x, mask):
            q, k, v = self.qkv(x).unflatten(-1, (3, 2, 3)).permute(2, 0, 3, 1, 4)  # each (B, 2, L, 3)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
            return self.out(torch.tanh(a)).sum((1, 2))

    f = Seq().to(D).eval()
    g = torch.Generator().manual_seed(17)
    x, b = torch.randn(3, 6, 6, generator=g, dtype=D), 0.3 * torch.randn(3, 6, 6, generator=g, dtype=D)
    mask = make_mask((6, 6), "bool", dead=True, seed=18)
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 1 and seen["backward"] == [(12, (6, 1))]
    same(attr, attr_old)
    conserves(delta, f, x, b, mask)


@pytest.mark.parametrize("name", ["LS", "11LS", "none"])
def test_shared_reference_row(name):
    """One baseline row for B = 3 examples: B + 1 rows; an (L, S) mask with L == 4 == the rows,
    its queries 0 and 3 dead."""
    f, (x, b) = model(5, 4, 5), data(4, 3, base_rows=1)
    mask = None
    if name != "none":
        mask = make_mask((4, 5), "bool", dead=False, seed=5)
        mask[0] = mask[3] = False
        mask = mask if name == "LS" else mask[None, None]
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 1 and seen["backward"][0][0] == 4
    same(attr, attr_old)
    conserves(delta, f, x, b, mask)


@pytest.mark.parametrize("kind", ["bool", "float", "hf"])
def test_key_padding(kind):
    """(B, 1, 1, S) key padding: bool, -inf, and transformers' ``finfo.min`` (finite), example 0
    padded after 3 keys, example 2 after 4 (examples padded out entirely: the dead (B, 1, 1, S)
    masks above, and the finite masks below)."""
    f, (x, b) = model(5, 4, 5), data(5, 3)
    pad = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    pad[0, ..., 3:] = pad[2, ..., 4:] = False
    fill = NEG if kind == "float" else torch.finfo(D).min
    mask = pad if kind == "bool" else torch.zeros(pad.shape, dtype=D).masked_fill(~pad, fill)
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 1 and seen["backward"] == [(6, (6, 1, 1, 1))]
    same(attr, attr_old)
    conserves(delta, f, x, b, mask)


def ruled_forward(f, x, b, *args):
    """The fused op's forward in a ruled call of the paired rows, the plain model's on them, and
    the fused op's runs."""
    both = torch.cat([x, b]).requires_grad_()  # the fused op runs on inputs that take gradient
    ruled = xattr.rules(f, {**xattr.rule.deep_lift_rules(), **EXACT})
    with spied() as seen, paired_rows(both.shape[0], reference_grads=False):
        out = ruled(both, *args)
    return out.detach(), f(both, *args).detach(), seen["forward"]


@pytest.mark.parametrize("dtype,fill,tol", [(D, torch.finfo(D).min, 1e-14), (D, -1e4, 1e-14), (torch.float32, -1e4, 1e-6),
                                            (torch.float32, torch.finfo(torch.float32).min, 1e-6)])
def test_queries_hidden_by_a_finite_mask_keep_torch_softmax(dtype, fill, tol):
    """A query whose every key is masked by a finite number (transformers' ``finfo.min`` padding,
    the older -1e4) has equal scores after the mask absorbed them: softmax gives 1/S each, and so
    must the fused op (NOTE: [Rows masked by a finite number]: ``exp(z - logsumexp(z))`` alone gave
    1 each at finfo.min, and weights 5e-4 off in float32 at -1e4)."""
    f, (x, b) = model(5, 4, 5).to(dtype), data(6, 3)
    x, b = x.to(dtype), b.to(dtype)
    pad = torch.zeros(6, 1, 1, 5, dtype=dtype)
    pad[0, ..., 3:] = fill
    pad[2] = pad[5] = fill  # example 2 and its reference padded out
    out, plain, runs = ruled_forward(f, x, b, pad)
    assert runs == 1
    torch.testing.assert_close(out, plain, rtol=0, atol=tol * float(plain.abs().max()))


def test_padded_out_example_under_a_finite_mask_matches_the_steps():
    """Example 2 padded out by ``finfo.min``: the mask absorbs its scores in the forward (equal
    z at the input and the reference), while the backward's sum passes their differences on, so
    neither the fused op nor the steps conserve there (the same delta, measured 0.17; the other
    examples conserve to 1e-15); the fused op equals the steps."""
    f, (x, b) = model(5, 4, 5), data(7, 3)
    mask = torch.zeros(3, 1, 1, 5, dtype=D)
    mask[0, ..., 3:] = mask[2] = torch.finfo(D).min
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, delta_old), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 1
    same(attr, attr_old)
    torch.testing.assert_close(delta, delta_old, rtol=0, atol=1e-12)
    assert delta[:2].abs().max() < 1e-12 and delta[2].abs() > 1e-3


@pytest.mark.parametrize("chunk_size", [None, 6])
def test_deep_lift_shap_with_a_per_example_mask(chunk_size):
    """A (B, 1, L, S) mask with dead queries and a distribution of 3 baselines: the mask is tiled
    with the copies (2 * 3 * B rows in one call, or chunks of 6: three calls)."""
    f, (x, dist) = model(5, 4, 5), data(8, 2, base_rows=3)
    mask = make_mask((2, 1, 4, 5), "bool", dead=True, seed=9)
    dl = xattr.deep_lift_shap(f, baselines=dist, mapping=EXACT, return_delta=True, chunk_size=chunk_size)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
    calls = len(seen["backward"])
    assert seen["forward"] == calls == (1 if chunk_size is None else 3)
    assert seen["backward"] == [(12 // calls, (12 // calls, 1, 4, 1))] * calls
    same(attr, attr_old)
    assert delta.shape == (2, 3) and delta.abs().max() < 1e-11


def test_deep_lift_shap_shares_reference_rows_with_a_broadcast_mask():
    """A (1, 1, L, S) mask is no per-example argument: DeepLift SHAP runs its 3 copies of the
    B = 2 inputs with one reference row each (9 rows)."""
    f, (x, dist) = model(5, 4, 5), data(10, 2, base_rows=3)
    mask = make_mask((1, 1, 4, 5), "float", dead=True, seed=11)
    dl = xattr.deep_lift_shap(f, baselines=dist, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 1 and seen["backward"] == [(9, (1, 1, 4, 1))]
    same(attr, attr_old)
    assert delta.abs().max() < 1e-11


@pytest.mark.parametrize("name", ["B1LS", "LS"])
def test_both_halves_seeded(name):
    """`paired_rows` with ``reference_grads=True``: the fused op's terms on every row, its dead
    rows unsliced; gradients equal the steps'."""
    f, (x, b) = model(5, 4, 5), data(12, 3)
    mask = make_mask(SHAPES[name](3, 5, 4, 5), "bool", dead=True, seed=13)
    mask = torch.cat([mask, mask]) if name == "B1LS" else mask
    ruled = xattr.rules(f, {**xattr.rule.deep_lift_rules(), **EXACT})

    def grads():
        both = torch.cat([x, b]).requires_grad_()
        with paired_rows(6):
            return torch.autograd.grad(ruled(both, mask).sum(), both)[0]

    with spied() as seen:
        new = grads()
    with mock.patch.object(rules_module, "fused", lambda *a: None):
        old = grads()
    assert seen["forward"] == 1 and seen["backward"][0][0] == 6
    same(new, old)
    assert float(new[3:].abs().max()) > 0  # the reference rows take gradient too


def test_heads_as_many_as_the_rows_run_written_out():
    """q of shape (2, 2, L, E) at B = 1 (2 rows): the rows could sit in dim 1, so the fused op
    declines on purpose (`rows_in_dim_0`) and the steps run; the attributions are theirs."""
    f, (x, b) = model(2, 4, 5), data(14, 1, heads=2)
    mask = make_mask((1, 2, 4, 5), "bool", dead=True, seed=15)
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, _), seen = fused_and_steps(dl, x, mask)
    assert seen["forward"] == 0
    torch.testing.assert_close(attr, attr_old, rtol=0, atol=0)
    conserves(delta, f, x, b, mask)


def test_mask_computed_from_the_input():
    """A key-padding mask read off the input (differs between an example and its reference): the
    fused op equals the steps (its dead rows are the input rows'); a mask that changes with the
    input is no function DeepLift's rules see, so neither conserves (not asserted). A float mask
    that requires grad makes the fused op decline."""

    class Padded(Attn):
        def forward(self, x, grad_mask=False):
            keep = (x[:, :1, :, :1] > 0).transpose(-1, -2)  # (rows, 1, 1, L)
            keep[..., 0] = True
            mask = -F.softplus(-x[:, :1, :, :1]).transpose(-1, -2) if grad_mask else keep
            return super().forward(x, mask)

    torch.manual_seed(0)
    f = Padded(0, 5, 4, 4).to(D).eval()
    x, b = data(16, 3, length=4)
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, _), (attr_old, _), seen = fused_and_steps(dl, x)
    assert seen["forward"] == 1 and seen["backward"][0][1] == (6, 1, 1, 1)
    same(attr, attr_old)
    (attr, delta), _, seen = fused_and_steps(dl, x, True)
    assert seen["forward"] == 0  # written out: the mask takes gradient
    conserves(delta, f, x, b, True)


def test_masks_the_fused_op_declines():
    """Op level: a 5-d mask (torch's SDPA refuses it; the steps broadcast it) and a mask that
    requires grad leave the call written out; a 4-d bool mask fuses."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 2, 3, 4, generator=g, dtype=D, requires_grad=True)
    table = rules_module.Table({**xattr.rule.deep_lift_rules(), **EXACT}, None)
    unfused = EXACT[F.scaled_dot_product_attention]

    def fused_with(mask):
        op = ops.parse(F.scaled_dot_product_attention, (q, q, q), {"attn_mask": mask})
        with paired_rows(4, reference_grads=False):
            return deeplift_fused.fused(unfused, op, table, [])

    assert isinstance(fused_with(torch.ones(4, 1, 3, 3, dtype=torch.bool)), _Attention)
    assert fused_with(torch.ones(1, 1, 1, 3, 3, dtype=torch.bool)) is None
    assert fused_with(torch.zeros(3, 3, dtype=D, requires_grad=True)) is None


@st.composite
def attention_cases(draw):
    batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    length, keys = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["none", "causal", "float", "bool"]))
    full = (batch, heads, length, keys)
    kept = draw(st.lists(st.booleans(), min_size=4, max_size=4))
    ndim = draw(st.integers(2, 4))
    shape = tuple(n if k else 1 for n, k in zip(full, kept))[4 - ndim:]
    while len(shape) < 4 and shape[0] == batch:  # a pass-through tensor of B rows is tiled as per-example
        shape = (1,) + shape  # (tree.fold): a mask of fewer dims would then broadcast its copies wrongly
    scale, shared = draw(st.sampled_from([None, 0.3])), draw(st.booleans())
    return batch, heads, length, keys, kind, shape, scale, shared, draw(st.integers(0, 10_000))


@settings(max_examples=25, deadline=None)
@given(case=attention_cases())
def test_random_shapes_and_masks_equal_the_written_out_steps(case):
    batch, heads, length, keys, kind, shape, scale, shared, seed = case
    if kind == "causal":
        keys = length
    f = model(heads, length, keys, seed=seed % 7)
    x, b = data(seed, batch, heads=heads, length=length, base_rows=1 if shared else batch)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.rand(shape, generator=g) < 0.4  # some queries may attend nothing
    mask = {"none": None, "causal": None, "bool": ~hidden,
            "float": torch.randn(shape, generator=g, dtype=D).masked_fill(hidden, NEG)}[kind]
    dl = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)
    (attr, delta), (attr_old, delta_old), seen = fused_and_steps(dl, x, mask, kind == "causal", scale)
    per_example = kind in ("float", "bool") and shape[0] == batch
    rows = batch + 1 if shared and batch > 1 and not per_example else 2 * batch  # one reference row, or pairs
    assert seen["forward"] == (0 if heads == rows else 1)  # heads == rows: written out on purpose
    assert seen["backward"][0][0] == rows if heads != rows else not seen["backward"]
    torch.testing.assert_close(attr, attr_old, rtol=0, atol=1e-10 * max(float(attr_old.abs().max()), 1e-300))
    conserves(delta, f, x, b, mask, kind == "causal", scale)
