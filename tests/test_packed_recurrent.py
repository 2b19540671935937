"""Recurrent layers fed a PackedSequence under the rule-based methods: the packed overloads of
``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` and ``torch.rnn_relu`` written out step by step
(NOTE: [Packed sequences written out] in xattr/_src/written_packed.py). Before, `Unfused` refused
them, so DeepLift, DeepLift SHAP and LRP raised on every model that packs its sequences.

References: torch's own packed module (forward and gradient, both ways the rows are spelled:
the packed order sliced per step, and the call's own order under DeepLift's paired rows); and
each example run alone on its unpadded sequence through the same layer without packing (a
Python loop over the examples, the padded path of tests/test_recurrent_rules.py), whose DeepLift,
LRP and guided-backprop attributions the packed batch must reproduce, with exact zeros at padded
positions. Batches of more than 8 examples (more than 16 paired rows) are where torch's sort
stops keeping equal lengths in order, so an example and its reference land apart.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import xattr
from xattr._src import backprop_methods
from xattr.rule import Guided, Unfused, lrp_rules, paired_rows

from registry import changed_state, state_snapshot

D = torch.float64
LAYERS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN, "RNN_RELU": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k)}
D_IN, HID, CLASSES = 4, 5, 3


def _seeded(seed, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _randn(*shape, seed, dtype=D):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _written(f):
    """f with every recurrent op written out and nothing else ruled: its plain gradient."""
    return xattr.rules(f, {torch.lstm: Unfused()})


class Packed(nn.Module):
    """Packs the padded (B, L, D) batch by its lengths, runs the layer, reads the last layer's h_n
    (both directions) into a linear head; ``alone`` runs one unpadded sequence without packing."""

    def __init__(self, kind, layers=1, bidirectional=False, enforce_sorted=False, bias=True):
        super().__init__()
        self.rnn = LAYERS[kind](D_IN, HID, num_layers=layers, bidirectional=bidirectional, batch_first=True, bias=bias)
        self.out = nn.Linear(HID * (2 if bidirectional else 1), CLASSES, bias=bias)
        self.dirs, self.enforce_sorted = 2 if bidirectional else 1, enforce_sorted

    def head(self, h):
        h = h[0] if isinstance(h, tuple) else h
        return self.out(torch.cat(list(h[-self.dirs:]), -1))

    def forward(self, x, lengths):
        return self.head(self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=self.enforce_sorted))[1])

    def alone(self, x):
        return self.head(self.rnn(x)[1])


def _model(kind, seed, **kw):
    return _seeded(seed, lambda: Packed(kind, **kw).to(D).eval())


def _batch(lengths, seed, dtype=D):
    """Padded inputs with nonzero values past each length (packing must drop them) and references."""
    lengths = torch.as_tensor(lengths)
    x = _randn(len(lengths), int(lengths.max()), D_IN, seed=seed, dtype=dtype)
    return x, 0.3 * _randn(*x.shape, seed=seed + 1, dtype=dtype), lengths


def _alone(method, model, x, ref, lengths):
    """The slow reference: each example alone on its unpadded sequence, zeros past its length."""
    out = torch.zeros_like(x)
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = method(model, x[i : i + 1, :n], ref[i : i + 1, :n])[0]
    return out


def _padding(x, lengths):
    return torch.arange(x.shape[1])[None] >= lengths[:, None]


def _leaves(out):
    if isinstance(out, PackedSequence):
        return [out.data]
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _leaves(o)]


def _assert_same_forward_and_gradient(f, args, inputs, seed, rtol=1e-12, atol=1e-13, paired=None):
    """f's outputs, and the gradients of a random weighting of them, torch's fused call against
    the written-out one (under ``paired_rows(paired)``: the rows in the call's own order)."""
    want = _leaves(f(*args))
    if paired is None:
        got = _leaves(_written(f)(*args))
    else:
        with paired_rows(paired):
            got = _leaves(_written(f)(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)
    weights = [_randn(*w.shape, seed=seed + k, dtype=w.dtype) for k, w in enumerate(want)]
    grads = lambda outs: torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, weights)), inputs)  # noqa: E731
    for g, w in zip(grads(got), grads(want)):
        torch.testing.assert_close(g, w, rtol=rtol * 10, atol=atol * 10)


# ----------------------------------------------------------------------------- forward and gradient


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(sorted(LAYERS)), lengths=st.lists(st.integers(1, 5), min_size=1, max_size=5),
       layers=st.integers(1, 2), bidirectional=st.booleans(), bias=st.booleans(), enforce_sorted=st.booleans(),
       state=st.booleans(), proj=st.booleans(), paired=st.booleans(), seed=st.integers(0, 100))
def test_written_out_packed_layers_equal_torchs(kind, lengths, layers, bidirectional, bias, enforce_sorted, state, proj,
                                                paired, seed):
    """Output data, h_n and c_n, and the gradients with respect to the input, a given initial state
    and the parameters, of torch's packed call and the written-out one: multi-layer,
    bidirectional, biases or none, an LSTM's proj_size, sorted by pack or given sorted; either
    spelling of the rows (``paired``: every row at every step in the call's order, a row not
    running held at its initial state)."""
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    if paired and len(lengths) % 2:
        lengths = lengths + lengths[-1:]
    if paired:  # a DeepLift call: example i and row i + B/2 of one length
        lengths = lengths[: len(lengths) // 2] * 2
        enforce_sorted = enforce_sorted and len(set(lengths)) == 1
    extra = {"proj_size": HID - 2} if proj and kind == "LSTM" else {}
    rnn = _seeded(seed, lambda: LAYERS[kind](D_IN, HID, num_layers=layers, bidirectional=bidirectional,
                                             batch_first=True, bias=bias, **extra).to(D).eval())
    x, _, lengths = _batch(lengths, seed)
    x.requires_grad_()
    inputs = [x, *rnn.parameters()]
    args = [x]
    if state:
        dirs, out_size = (2 if bidirectional else 1), extra.get("proj_size", HID)
        h0 = _randn(layers * dirs, len(lengths), out_size, seed=seed + 2).requires_grad_()
        hx = (h0, _randn(layers * dirs, len(lengths), HID, seed=seed + 3).requires_grad_()) if kind == "LSTM" else h0
        args.append(hx)
        inputs += _leaves(hx)
    f = lambda x, *hx: rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted), *hx)  # noqa: E731
    _assert_same_forward_and_gradient(f, args, inputs, seed, paired=len(lengths) if paired else None)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_float32_and_rows_past_sixteen(kind):
    """float32 to 1e-6; and 24 sequences (12 pairs), whose sort by length reorders equal lengths."""
    rnn = _seeded(5, lambda: LAYERS[kind](D_IN, HID, num_layers=2, bidirectional=True, batch_first=True).eval())
    lengths = torch.tensor([3, 6, 1, 6, 4, 3, 5, 2, 6, 1, 3, 4] * 2)
    x = _randn(24, 6, D_IN, seed=6, dtype=torch.float32).requires_grad_()
    f = lambda x: rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))  # noqa: E731
    for paired in (None, 24):
        _assert_same_forward_and_gradient(f, (x,), [x, *rnn.parameters()], 7, rtol=1e-6, atol=1e-6, paired=paired)


def test_runs_under_vmap_with_batch_sizes_unbatched():
    """``batch_sizes`` is read as Python ints: vmapped over several packed batches of one layout,
    the written-out layer equals the loop over them."""
    rnn = _seeded(8, lambda: nn.LSTM(D_IN, HID, batch_first=True).to(D).eval())
    x, _, lengths = _batch([4, 2, 3], seed=9)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    many = torch.stack([packed.data, 2 * packed.data, -packed.data])
    layout = (packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    run = lambda data: rnn(PackedSequence(data, *layout))[1][0]  # noqa: E731
    got = torch.func.vmap(_written(run))(many)
    want = torch.stack([run(d) for d in many])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- DeepLift


def _deep_lift(target):
    return lambda model, x, ref: xattr.deep_lift(xattr.target(model.alone, target), baselines=ref)(x)


def _check_deep_lift(model, x, ref, lengths, target):
    attr, delta = xattr.deep_lift(xattr.target(model, target), baselines=ref, return_delta=True)(x, lengths)
    change = model(x, lengths)[:, target] - model(ref, lengths)[:, target]
    assert delta.abs().max() <= 1e-10 * max(change.abs().max().item(), 1e-3), (delta, change)  # summation-to-delta
    torch.testing.assert_close(attr.sum((1, 2)), change, rtol=0, atol=1e-10)
    assert (attr[_padding(x, lengths)] == 0).all()  # padded positions: exactly zero
    torch.testing.assert_close(attr, _alone(_deep_lift(target), model, x, ref, lengths), rtol=1e-9, atol=1e-11)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(LAYERS)), lengths=st.lists(st.integers(1, 5), min_size=1, max_size=10),
       layers=st.integers(1, 2), bidirectional=st.booleans(), bias=st.booleans(), target=st.integers(0, CLASSES - 1),
       seed=st.integers(0, 100))
def test_deep_lift_conserves_and_equals_each_sequence_alone(kind, lengths, layers, bidirectional, bias, target, seed):
    """Summation-to-delta (1e-10 in float64), exact zeros at padding, and the attributions of each
    example run alone on its unpadded sequence, for any lengths, depth, direction and cell."""
    model = _model(kind, seed, layers=layers, bidirectional=bidirectional, bias=bias)
    x, ref, lengths = _batch(lengths, seed)
    _check_deep_lift(model, x, ref, lengths, target)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_deep_lift_past_sixteen_rows_where_the_sort_reorders_equal_lengths(kind):
    """12 examples, 24 paired rows: pack's sort scatters each example and its reference among their
    ties (checked), and the layer still pairs them (taken in the packed order instead, rows of
    different lengths would meet, and the layer would refuse)."""
    lengths = torch.tensor([3, 5, 1, 5, 4, 3, 5, 2, 5, 1, 3, 4])
    sorted_indices = torch.sort(torch.cat([lengths, lengths]), descending=True).indices
    stable = sorted(range(24), key=lambda i: -int(lengths[i % 12]))
    assert sorted_indices.tolist() != stable  # the precondition: ties out of order
    model = _model(kind, 11, layers=2, bidirectional=True)
    x, ref, lengths = _batch(lengths, 12)
    _check_deep_lift(model, x, ref, lengths, 1)


def test_enforce_sorted_true():
    """With enforce_sorted=True the packed rows are the call's own (no sorted_indices): equal
    lengths (any batch) and one example conserve and equal each sequence alone. Sorted unequal
    lengths do not reach the layer: DeepLift appends the references after the inputs, so the
    doubled lengths are no longer sorted, and torch's pack says so."""
    model = _model("LSTM", 13, layers=2, bidirectional=True, enforce_sorted=True)
    for lengths in ([4] * 10, [3]):
        x, ref, lengths = _batch(lengths, 14)
        _check_deep_lift(model, x, ref, lengths, 0)
    x, ref, lengths = _batch([5, 4, 2], 15)
    assert model(x, lengths).shape == (3, CLASSES)  # sorted: the model runs
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        xattr.deep_lift(xattr.target(model, 0), baselines=ref)(x, lengths)


def test_deep_lift_shap_and_layer_deep_lift_at_the_embedding():
    """A token classifier (embedding, packed 2-layer bidirectional GRU): layer DeepLift at the
    embedding conserves; DeepLift SHAP against 3 baselines sums to the mean change, and equals
    the mean of DeepLift against each baseline."""
    emb = _seeded(16, lambda: nn.Embedding(12, D_IN, padding_idx=0).to(D))
    model = _model("GRU", 17, layers=2, bidirectional=True)
    f = lambda ids, lengths: model(emb(ids), lengths)  # noqa: E731
    lengths = torch.tensor([5, 2, 4, 5, 1, 3, 2, 4, 5, 3])
    g = torch.Generator().manual_seed(18)
    ids = torch.randint(1, 12, (10, 5), generator=g) * ~_padding(torch.zeros(10, 5), lengths)
    split = xattr.at_layer(xattr.target(f, 2), emb)
    attr = xattr.layer_deep_lift(split, baselines=torch.zeros_like(ids))(ids, lengths)
    change = f(ids, lengths)[:, 2] - f(torch.zeros_like(ids), lengths)[:, 2]
    torch.testing.assert_close(attr.sum((1, 2)), change, rtol=0, atol=1e-12)
    assert (attr[_padding(attr, lengths)] == 0).all()
    x, _, _ = _batch(lengths.tolist(), 19)
    dist = 0.5 * _randn(3, 5, D_IN, seed=20)
    shap = xattr.deep_lift_shap(xattr.target(model, 0), baselines=dist)(x, lengths)
    each = [xattr.deep_lift(xattr.target(model, 0), baselines=b.expand_as(x))(x, lengths) for b in dist]
    torch.testing.assert_close(shap, torch.stack(each).mean(0), rtol=1e-10, atol=1e-12)
    mean_change = model(x, lengths)[:, 0] - torch.stack([model(b.expand_as(x), lengths)[:, 0] for b in dist]).mean(0)
    torch.testing.assert_close(shap.sum((1, 2)), mean_change, rtol=0, atol=1e-12)


def test_rows_retried_for_a_coincidence_and_a_shared_reference(monkeypatch):
    """Paired rows equal to the length (R == L == 4, a tanh layer before packing: its 3-d tensor is
    ambiguous) run again with the batch repeated (k = 2: 8 rows), and the layer pairs those too.
    Lengths computed from the input with one reference row for the batch (B + 1 rows, NOTE:
    [Shared reference]): paired where every example runs the reference's length, refused where
    one does not."""
    tries = []
    real = backprop_methods.unambiguous
    monkeypatch.setattr(backprop_methods, "unambiguous", lambda call, rows: real(
        lambda k, notes: tries.append(k) or call(k, notes), rows))

    class Tanh(Packed):
        def __init__(self):
            super().__init__("LSTM", bidirectional=True)
            self.pre = nn.Sequential(nn.Linear(D_IN, D_IN), nn.Tanh())

        def forward(self, x, lengths):
            return super().forward(self.pre(x), lengths)

        def alone(self, x):
            return super().alone(self.pre(x))

    x, ref, lengths = _batch([4, 2], 33)
    _check_deep_lift(_seeded(32, lambda: Tanh().to(D).eval()), x, ref, lengths, 2)
    assert tries[:2] == [1, 2]  # retried with twice the rows
    monkeypatch.undo()
    gru = _model("GRU", 34, layers=2, bidirectional=True)
    f = lambda x: gru(x, (x[..., 0] != 0).sum(1))  # noqa: E731  (zeros past the end)
    x, _, _ = _batch([4] * 6, 35)
    b = torch.full((1, 4, D_IN), 0.3, dtype=D)
    attr, delta = xattr.deep_lift(xattr.target(f, 0), baselines=b, return_delta=True)(x)
    assert delta.abs().max() < 1e-12
    each = torch.cat([xattr.deep_lift(xattr.target(gru.alone, 0), baselines=b)(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(attr, each, rtol=1e-9, atol=1e-12)
    x[0, 2:] = 0
    with pytest.raises(NotImplementedError, match="of length 2, with its reference row 6, of length 4"):
        xattr.deep_lift(xattr.target(f, 0), baselines=b)(x)


# ----------------------------------------------------------------------------- LRP and guided backprop


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lrp_equals_each_sequence_alone(bidirectional):
    """LRP (Arras's rule at the gates, epsilon elsewhere) of a packed 2-layer LSTM: each example's
    relevance as when it runs alone, zeros at padding; bias-free, it conserves f(x)."""
    for bias in (True, False):
        model = _model("LSTM", 21, layers=2, bidirectional=bidirectional, bias=bias)
        x, ref, lengths = _batch([2, 5, 3, 5, 1, 4, 2, 3, 5, 4], 22)
        relevance = xattr.lrp(xattr.target(model, 1))(x, lengths)
        alone = _alone(lambda m, xi, _: xattr.lrp(xattr.target(m.alone, 1))(xi), model, x, ref, lengths)
        torch.testing.assert_close(relevance, alone, rtol=1e-9, atol=1e-12)
        assert (relevance[_padding(x, lengths)] == 0).all()
        if not bias:  # epsilon -> 0: conserved
            tight = xattr.lrp(xattr.target(model, 1), composite=lrp_rules(1e-14))(x, lengths)
            torch.testing.assert_close(tight.sum((1, 2)), model(x, lengths)[:, 1], rtol=1e-10, atol=1e-12)


def test_guided_backprop_reaches_the_relus_inside_a_packed_rnn():
    """With the layer written out, the ReLUs inside a packed ReLU RNN take the Guided rule: the
    same numbers as each sequence alone; different from the fused layer's ordinary gradient."""
    model = _model("RNN_RELU", 23, layers=2, bidirectional=True)
    x, ref, lengths = _batch([4, 1, 3, 4, 2], 24)
    mapping = {F.relu: Guided(), torch.lstm: Unfused()}
    got = _grad(xattr.rules(model, mapping), x, lengths)
    alone = _alone(lambda m, xi, _: _grad(xattr.rules(m.alone, mapping), xi), model, x, ref, lengths)
    torch.testing.assert_close(got, alone, rtol=1e-10, atol=1e-12)
    assert (got[_padding(x, lengths)] == 0).all()
    assert not torch.allclose(got, _grad(xattr.rules(model, {F.relu: Guided()}), x, lengths))  # left fused


def _grad(f, x, *args):
    """The gradient of f's output 2, summed over the batch, by torch.autograd (torch's own
    ``pack_padded_sequence`` has no backward under torch.func transforms)."""
    x = x.detach().requires_grad_()
    return torch.autograd.grad(f(x, *args)[:, 2].sum(), x)[0]


# ----------------------------------------------------------------------------- refusals, state


def test_pairs_that_cannot_be_kept_are_refused():
    """Rows sorted by the model itself before packing with enforce_sorted=True (the pre-1.1
    idiom): DeepLift's doubled batch arrives reordered, and an example's row would meet another's
    reference; a packed batch of another size than the paired rows; dropout in training."""
    rnn = _seeded(25, lambda: nn.LSTM(D_IN, HID, batch_first=True).to(D).eval())
    out = _seeded(26, lambda: nn.Linear(HID, 1).to(D))

    def sorted_by_hand(x, lengths):
        lengths, order = lengths.sort(descending=True)
        h = rnn(pack_padded_sequence(x[order], lengths, batch_first=True))[1][0][-1]
        return out(h[order.argsort()])[:, 0]

    x, ref, lengths = _batch([2, 4, 3], 27)
    by_pack = out(rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))[1][0][-1])[:, 0]
    torch.testing.assert_close(sorted_by_hand(x, lengths), by_pack, rtol=1e-12, atol=1e-13)  # the same model
    with pytest.raises(NotImplementedError, match="a pair must run the same steps"):
        xattr.deep_lift(sorted_by_hand, baselines=ref)(x, lengths)
    twice = lambda x, lengths: out(rnn(pack_padded_sequence(  # noqa: E731
        torch.cat([x, x]), torch.cat([lengths, lengths]), batch_first=True, enforce_sorted=False))[1][0][-1])[:3, 0]
    with pytest.raises(NotImplementedError, match="this packed batch holds 12 sequences"):
        xattr.deep_lift(twice, baselines=ref)(x, lengths)
    deep = _seeded(28, lambda: nn.GRU(D_IN, HID, num_layers=2, dropout=0.5, batch_first=True).to(D).train())
    with pytest.raises(NotImplementedError, match="dropout 0.5 between layers in training mode is random"):
        _written(lambda x: deep(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)))(x)


def test_the_model_and_inputs_are_left_unchanged():
    model = _model("LSTM", 29, layers=2, bidirectional=True)
    x, ref, lengths = _batch([3, 1, 2], 30)
    before, x0, l0 = state_snapshot(model, x), x.clone(), lengths.clone()
    xattr.deep_lift(xattr.target(model, 0), baselines=ref)(x, lengths)
    xattr.lrp(xattr.target(model, 0))(x, lengths)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert torch.equal(x, x0) and torch.equal(lengths, l0) and not model.training
