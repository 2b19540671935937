"""Recurrent layers under the rule-based methods: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells
run written out step by step (`xattr.rule.Unfused`, NOTE: [Recurrent layers written out] in
xattr/_src/written_recurrent.py), so DeepLift's and LRP's rules reach their gates and activations.

Before, each layer was one fused torch call no rule saw: DeepLift's summation-to-delta was off by
0.066 where |f| was 0.18 (bias-free LSTM; 0.20 of 0.42 on a GRU, 0.035 on an RNN), and LRP raised.
Here: the written-out forward and its gradient equal torch's fused call; DeepLift conserves (a
hypothesis property) and matches DeepLift done by hand on an LSTM; LRP matches Arras et al.'s LSTM
rule done by hand and conserves without biases; and the compat classes' choice against Captum.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.rule import Guided, Unfused, lrp_rules
from xattr.testing import check_batch_invariance, check_chunk_invariance

from registry import changed_state, state_snapshot

D = torch.float64
LAYERS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN, "RNN_RELU": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k)}
CELLS = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell, "RNN": nn.RNNCell,
         "RNN_RELU": lambda *a, **k: nn.RNNCell(*a, nonlinearity="relu", **k)}


def _seeded(seed, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _written(f):
    """f with every recurrent op written out and nothing else ruled: its plain gradient."""
    return xattr.rules(f, {torch.lstm: Unfused()})


def _leaves(out):
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _leaves(o)]


def _assert_same_forward_and_gradient(module, args, seed):
    """The module's outputs, and the gradients of a random weighting of them with respect to its
    tensor arguments and parameters, fused and written out."""
    inputs = [a for a in _leaves(args) if a.requires_grad] + list(module.parameters())
    want = _leaves(module(*args))
    got = _leaves(_written(module)(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)
    weights = [_randn(*w.shape, seed=seed + k) for k, w in enumerate(want)]
    grads = lambda outs: torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, weights)), inputs)  # noqa: E731
    for g, w in zip(grads(got), grads(want)):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-12)


@given(kind=st.sampled_from(sorted(LAYERS)),
       sizes=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 4)),
       layers=st.integers(1, 2), bidirectional=st.booleans(), batch_first=st.booleans(), bias=st.booleans(),
       state=st.sampled_from(["none", "fixed", "differentiated"]), proj=st.booleans(), seed=st.integers(0, 100))
def test_written_out_layers_equal_torchs_fused_call(kind, sizes, layers, bidirectional, batch_first, bias, state, proj, seed):
    """Forward (1e-12 in float64) and gradients (with respect to the input, given initial states and
    parameters) of multi-layer, bidirectional, batch- or sequence-first layers, with or without bias,
    an LSTM's proj_size; the written-out form was refused by Unfused before."""
    batch, length, d_in, hidden = sizes
    proj_size = max(hidden - 1, 1) if proj and kind == "LSTM" and hidden > 1 else 0
    extra = {"proj_size": proj_size} if proj_size else {}
    module = _seeded(seed, lambda: LAYERS[kind](d_in, hidden, num_layers=layers, bidirectional=bidirectional,
                                                 batch_first=batch_first, bias=bias, **extra).to(D).eval())
    x = _randn(*((batch, length) if batch_first else (length, batch)), d_in, seed=seed).requires_grad_()
    args = (x,)
    if state != "none":
        dirs = 2 if bidirectional else 1
        h0 = _randn(layers * dirs, batch, proj_size or hidden, seed=seed + 1).requires_grad_(state == "differentiated")
        c0 = _randn(layers * dirs, batch, hidden, seed=seed + 2).requires_grad_(state == "differentiated")
        args = (x, (h0, c0) if kind == "LSTM" else h0)
    _assert_same_forward_and_gradient(module, args, seed)


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_written_out_cells_and_unbatched_inputs_equal_torchs(kind, bias, batched):
    cell = _seeded(3, lambda: CELLS[kind](3, 4, bias=bias).to(D).eval())
    x = _randn(*((2, 3) if batched else (3,)), seed=4).requires_grad_()
    h, c = (_randn(*((2, 4) if batched else (4,)), seed=s).requires_grad_() for s in (5, 6))
    _assert_same_forward_and_gradient(cell, (x,), seed=6)  # default zero state
    _assert_same_forward_and_gradient(cell, (x, (h, c) if kind == "LSTM" else h), seed=7)
    layer = _seeded(3, lambda: LAYERS[kind](3, 4, num_layers=2, bias=bias).to(D).eval())
    _assert_same_forward_and_gradient(layer, (_randn(5, *((2, 3) if batched else (3,)), seed=8).requires_grad_(),), seed=9)


def test_float32_within_its_documented_tolerance():
    """float32: the additions run in another order (and a GRU's last step is spelled otherwise):
    within 1e-6 of torch's fused call (docs/rules.md)."""
    for kind in sorted(LAYERS):
        module = _seeded(11, lambda: LAYERS[kind](4, 8, num_layers=2, bidirectional=True, batch_first=True).eval())
        x = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(12))
        torch.testing.assert_close(_written(module)(x)[0], module(x)[0], rtol=1e-6, atol=1e-6)


class Net(nn.Module):
    """A recurrent layer (or cell, over the sequence), its last output, a linear head."""

    def __init__(self, kind, cell=False, bias=True, batch_first=True, **options):
        super().__init__()
        self.cell, self.batch_first = cell, batch_first
        out = 2 * 5 if options.get("bidirectional") else 5
        self.rnn = (CELLS[kind](4, 5, bias=bias) if cell else LAYERS[kind](4, 5, bias=bias, batch_first=batch_first, **options))
        self.head = nn.Linear(options.get("proj_size") or out, 3, bias=bias)

    def forward(self, x):
        if self.cell:  # (B, L, D): the cell stepped by hand
            state = None
            for t in range(x.shape[1]):
                state = self.rnn(x[:, t], state)
            h = state[0] if isinstance(state, tuple) else state
        else:
            out = self.rnn(x if self.batch_first else x.transpose(0, 1))[0]
            h = out[:, -1] if self.batch_first else out[-1]
        return self.head(torch.tanh(h))


def _net(kind, seed, **options):
    return _seeded(seed, lambda: Net(kind, **options).to(D).eval())


@given(kind=st.sampled_from(sorted(LAYERS)), cell=st.booleans(), bias=st.booleans(), batch_first=st.booleans(),
       deep=st.booleans(), batch=st.integers(1, 3), length=st.integers(1, 5), shap=st.booleans(), seed=st.integers(0, 100))
def test_deep_lift_sums_to_delta_through_recurrent_layers(kind, cell, bias, batch_first, deep, batch, length, shap, seed):
    """Summation-to-delta, exactly: every step is affine maps, sigmoid/tanh/ReLU (Rescale) and gate
    products (Product). The fused call broke it (0.066 of 0.18 on a bias-free LSTM)."""
    options = {} if cell else {"num_layers": 2 if deep else 1, "bidirectional": deep}
    model = _net(kind, seed, cell=cell, bias=bias, batch_first=batch_first, **options)
    x = _randn(batch, length, 4, seed=seed)
    f = xattr.target(model, seed % 3)
    if shap:
        _, delta = xattr.deep_lift_shap(f, baselines=_randn(3, length, 4, seed=seed + 1), return_delta=True)(x)
    else:
        _, delta = xattr.deep_lift(f, baselines=_randn(batch, length, 4, seed=seed + 1) * 0.5, return_delta=True)(x)
    assert delta.abs().max() < 1e-12, delta


# ----------------------------------------------------------------------------- references by hand


def _hand_lstm(x, w_ih, w_hh, b):
    """A bias-carrying, batch-first LSTM written with plain tensors: every step's values."""
    batch, hidden = x.shape[0], w_hh.shape[1]
    h = c = torch.zeros(batch, hidden, dtype=D)
    steps = []
    for t in range(x.shape[1]):
        u = x[:, t] @ w_ih.T + h @ w_hh.T + b
        ui, uf, ug, uo = u.chunk(4, -1)
        i, f, g, o = torch.sigmoid(ui), torch.sigmoid(uf), torch.tanh(ug), torch.sigmoid(uo)
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * torch.tanh(c)
        steps.append(dict(u=u, i=i, f=f, g=g, o=o, c_prev=c_prev, h_prev=h_prev, c=c, tc=torch.tanh(c), h=h))
    return steps


def _secant(fn, u, r):
    return (fn(u) - fn(r)) / (u - r)


def _lstm_weights(model):
    rnn = model.rnn
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach() if rnn.bias else torch.zeros(4 * rnn.hidden_size, dtype=D)
    return rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach(), b


class LastStep(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 4, batch_first=True, bias=bias), nn.Linear(4, 1, bias=False)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_deep_lift_equals_deep_lift_by_hand_on_an_lstm():
    """DeepLift done by hand, step by step backwards: Rescale's secant ``(y - y_ref) / (u - u_ref)``
    at each sigmoid and tanh, the averaged factors at each gate product (``m_f = m_c * avg(c_prev)``,
    ``m_c_prev = m_c * avg(f)``, ...), the transposed weights at the affine maps."""
    model = _seeded(31, lambda: LastStep().to(D).eval())
    x, ref = _randn(2, 4, 3, seed=32), _randn(2, 4, 3, seed=33) * 0.3
    w_ih, w_hh, b = _lstm_weights(model)
    a, r = _hand_lstm(x, w_ih, w_hh, b), _hand_lstm(ref, w_ih, w_hh, b)
    avg = lambda k, t: (a[t][k] + r[t][k]) / 2  # noqa: E731
    m_h = model.head.weight.detach().expand(2, 4)
    m_c = torch.zeros(2, 4, dtype=D)
    m_x = torch.zeros_like(x)
    for t in reversed(range(x.shape[1])):
        m_o, m_tc = m_h * avg("tc", t), m_h * avg("o", t)
        m_c = m_c + m_tc * _secant(torch.tanh, a[t]["c"], r[t]["c"])
        m_f, m_i, m_g = m_c * avg("c_prev", t), m_c * avg("g", t), m_c * avg("i", t)
        m_c = m_c * avg("f", t)  # to c_prev
        ui, uf, ug, uo = a[t]["u"].chunk(4, -1)
        ri, rf, rg, ro = r[t]["u"].chunk(4, -1)
        m_u = torch.cat([m_i * _secant(torch.sigmoid, ui, ri), m_f * _secant(torch.sigmoid, uf, rf),
                         m_g * _secant(torch.tanh, ug, rg), m_o * _secant(torch.sigmoid, uo, ro)], -1)
        m_x[:, t] = m_u @ w_ih
        m_h = m_u @ w_hh
    want = (x - ref) * m_x
    got, delta = xattr.deep_lift(xattr.target(model, 0), baselines=ref, return_delta=True)(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    assert delta.abs().max() < 1e-13


@pytest.mark.parametrize("bias", [True, False])
def test_lrp_equals_arras_lstm_rule_by_hand(bias):
    """Arras et al. 2017, layer by layer: ``R_h = h w`` at the head; at ``h = o * tanh(c)`` the gate
    o is held and the signal takes all; ``c = f * c_prev + i * g`` splits R_c in proportion to its
    two terms, each passing to its signal (c_prev, g) whole; tanh passes it on; the epsilon rule of
    ``u = W_ih x + W_hh h + b`` gives ``x_k W_jk / u_j * R_j``. Biases absorb their share (with
    them the sum falls short of f; without, it is f)."""
    model = _seeded(41, lambda: LastStep(bias).to(D).eval())
    x = _randn(2, 4, 3, seed=42)
    w_ih, w_hh, b = _lstm_weights(model)
    s = _hand_lstm(x, w_ih, w_hh, b)
    hid = slice(8, 12)  # the cell input g's rows: the gates' rows carry no relevance
    r_h = s[-1]["h"] * model.head.weight.detach()
    r_c = torch.zeros(2, 4, dtype=D)
    r_x = torch.zeros_like(x)
    for t in reversed(range(x.shape[1])):
        r_c = r_c + r_h  # h = o * tanh(c): all to tanh(c), passed on to c
        st_ = s[t]
        r_g = st_["i"] * st_["g"] / st_["c"] * r_c
        r_c = st_["f"] * st_["c_prev"] / st_["c"] * r_c  # to c_prev
        share = r_g / st_["u"][:, hid]  # tanh passes R_g to u_g, split by the epsilon rule
        r_x[:, t] = x[:, t] * (share @ w_ih[hid])
        r_h = st_["h_prev"] * (share @ w_hh[hid])
    got = xattr.lrp(xattr.target(model, 0), composite=lrp_rules(1e-14))(x)
    torch.testing.assert_close(got, r_x, rtol=1e-8, atol=1e-12)
    if not bias:
        torch.testing.assert_close(got.sum((1, 2)), model(x)[:, 0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("cell", [False, True])
def test_lrp_conserves_without_biases_and_composites_run(kind, cell):
    """Bias-free, epsilon -> 0: sum(R) = f(x) through every recurrent layer (LRP raised before);
    z+ and gamma at the linear maps run and give finite relevance."""
    options = {} if cell else {"num_layers": 2, "bidirectional": True}
    model = _net(kind, 51, cell=cell, bias=False, **options)
    x = _randn(3, 5, 4, seed=52)
    f = xattr.target(model, 1)
    _, gap = xattr.lrp(f, composite=lrp_rules(1e-14), return_delta=True)(x)
    assert gap.abs().max() < 1e-11 * model(x).abs().max(), gap
    for rule in (xattr.rule.ZPlus(), xattr.rule.Gamma(0.25)):
        relevance = xattr.lrp(f, composite={**lrp_rules(), F.linear: rule})(x)
        assert relevance.shape == x.shape and torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert torch.isfinite(xattr.lrp(f, composite=xattr.rule.epsilon_plus())(x)).all()


# ----------------------------------------------------------------------------- invariances, state, refusals


def test_batch_and_chunk_invariance_and_the_model_left_unchanged():
    model = _net("LSTM", 61, num_layers=2, bidirectional=True)
    x = _randn(3, 4, 4, seed=62)
    f = xattr.target(model, 2)
    before = state_snapshot(model, x)
    check_batch_invariance(xattr.deep_lift(f, baselines=0.1), x, rtol=1e-10, atol=1e-12)
    check_batch_invariance(xattr.lrp(f), x, rtol=1e-10, atol=1e-12)
    dist = _randn(4, 4, 4, seed=63)
    check_chunk_invariance(lambda c: xattr.deep_lift_shap(f, baselines=dist, chunk_size=c), x, chunk_sizes=(3, 7),
                           rtol=1e-10, atol=1e-12)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert not model.training


def test_packed_sequences_run_and_training_dropout_is_refused_clearly():
    """A PackedSequence input was refused; now written out too (NOTE: [Packed sequences written
    out] in written_packed.py; tests/test_packed_recurrent.py has the rest)."""

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, batch_first=True)

        def forward(self, x):
            out, (h, c) = self.lstm(nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True))
            return out.data, h, c

    x = _randn(2, 5, 3, seed=72)
    _assert_same_forward_and_gradient(_seeded(71, lambda: Packed().to(D).eval()), (x.clone().requires_grad_(),), seed=75)
    deep = _seeded(73, lambda: nn.GRU(3, 4, num_layers=2, dropout=0.5, batch_first=True).to(D).train())
    with pytest.raises(NotImplementedError, match=r"dropout 0.5 between layers in training mode is random; call model.eval\(\)"):
        _written(deep)(x)
    _assert_same_forward_and_gradient(deep.eval(), (x.requires_grad_(),), seed=74)  # in eval mode it runs


def test_guided_backprop_rules_the_relus_of_a_written_out_rnn():
    """With Unfused at the recurrent op, nn.RNN(nonlinearity="relu")'s ReLUs take the ReLU rule: the
    same numbers as the RNN written by hand with F.relu (fused, they kept their gradient)."""
    model = _net("RNN_RELU", 81)
    x = _randn(3, 4, 4, seed=82)

    def by_hand(x):
        rnn, h = model.rnn, torch.zeros(x.shape[0], 5, dtype=D)
        for t in range(x.shape[1]):
            h = F.relu(F.linear(x[:, t], rnn.weight_ih_l0, rnn.bias_ih_l0) + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0))
        return model.head(torch.tanh(h))

    for rule in (Guided(), xattr.rule.Deconv()):
        ruled = xattr.rules(model, {F.relu: rule, torch.rnn_relu: Unfused()})
        want = torch.func.grad(lambda x: xattr.rules(by_hand, {F.relu: rule})(x)[:, 1].sum())(x)
        got = torch.func.grad(lambda x: ruled(x)[:, 1].sum())(x)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
        plain = torch.func.grad(lambda x: xattr.rules(model, {F.relu: rule})(x)[:, 1].sum())(x)
        assert not torch.allclose(plain, want)


# ----------------------------------------------------------------------------- xattr.compat.captum


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")  # Captum's, about its own hooks
def test_compat_keeps_xattrs_numbers_where_captum_keeps_the_gradient_or_refuses():
    """docs/migration_rules.md: Captum's DeepLift leaves an LSTM's inside to the ordinary gradient
    (its delta is not 0); the compat class conserves, and equals Captum's numbers when the layer is
    left fused. Captum's LRP refuses nn.LSTM; the compat class runs Arras's rule."""
    captum = pytest.importorskip("captum.attr")
    from xattr.compat.captum import DeepLift, LRP

    model = _seeded(91, lambda: LastStep(bias=False).to(D).eval())
    x, ref = _randn(3, 4, 3, seed=92).requires_grad_(), _randn(3, 4, 3, seed=93) * 0.3  # Captum wants grad
    theirs, their_delta = captum.DeepLift(model).attribute(x, ref, target=0, return_convergence_delta=True)
    ours, our_delta = DeepLift(model).attribute(x, ref, target=0, return_convergence_delta=True)
    assert their_delta.abs().max() > 1e-3 and our_delta.abs().max() < 1e-12

    class _LeftFused(xattr.rule.Rule):  # a key for the recurrent op whose rule claims no call
        kinds = frozenset({"fused_recurrent"})

        def accepts(self, op):
            return False

    fused = xattr.deep_lift(xattr.target(model, 0), baselines=ref, mapping={torch.lstm: _LeftFused()})(x)
    torch.testing.assert_close(fused, theirs, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="LSTM'> has no rule defined"):
        captum.LRP(model).attribute(x, target=0)
    relevance = LRP(model).attribute(x, target=0)
    torch.testing.assert_close(relevance.sum((1, 2)), model(x)[:, 0], rtol=1e-7, atol=1e-10)
