"""DeepLift through logsumexp (NOTE: [DeepLift through logsumexp] in xattr/_src/deeplift_softmax.py).

Summation-to-delta over a dim and a tuple of dims, keepdim or not, in batch-first, sequence-first
and interleaved rows, against per-example references, one shared reference row and DeepLift
SHAP's several, at a layer, and through `xattr.softened` CNNs (max-pools, max-over-time); the
multipliers against a loop computing the secants by hand and against DeepLift on the written-out
spelling ``x.exp().sum(dims).log()``; the ordinary gradient where x is its reference, outside
paired rows and across the rows' own dim; guided backprop and LRP as before (the ordinary
gradient there, no warning). `Plain` below gives logsumexp its ordinary gradient, as DeepLift did
before the rule: every setup where the rule is checked shows a gap with it.
"""

import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import ops

D = torch.float64


def randn(seed: int, *shape, scale: float = 1.0, dtype=D) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Plain(xattr.rule.Rule):
    """logsumexp's ordinary gradient, ``softmax(x) * g`` over the dims: DeepLift before the rule."""

    kinds = frozenset({"logsumexp"})
    keep_inputs = True

    def backward(self, op, saved, grad):
        x = saved.inputs[0]
        dims = tuple(sorted(d % x.ndim for d in op.options["dim"]))
        if not op.options["keepdim"]:
            for d in dims:
                grad = grad.unsqueeze(d)
        return ((x - x.logsumexp(dims, keepdim=True)).exp() * grad,)


BEFORE = {torch.logsumexp: Plain()}


def gap(f, x, b, mapping=None) -> float:
    """max |sum(attributions) - (f(x) - f(b))| of DeepLift, computed here (not by return_delta)."""
    attr = xattr.deep_lift(f, baselines=b, mapping=mapping)(x)
    with torch.no_grad():
        change = f(x) - f(b.expand_as(x) if torch.is_tensor(b) else torch.full_like(x, b))
    return float((attr.flatten(1).sum(1) - change).abs().max())


# -- the multipliers: a loop of secants, and Rescale on the written-out spelling -----------------

DIMS = [((1,), False), ((2,), True), ((-1,), False), ((1, 2), False), ((2, 1), True), ((-2, -1), True)]


def weighted(dims, keepdim, weights):
    """t (B, 3, 4) -> sum(logsumexp(t, dims, keepdim) * weights) per example."""
    return lambda t: (torch.logsumexp(t, dims, keepdim) * weights).reshape(len(t), -1).sum(1)


def loop_multipliers(x, b, dims, keepdim, weights):
    """w_k g by hand, one group of reduced positions at a time, in Python floats: ``w_k = (L -
    L_ref) / (S - S_ref) * (e^x_k - e^b_k) / (x_k - b_k)``, L = log S, S = sum of e^x over the group."""
    dims = sorted(d % 3 for d in dims)
    kept = [d for d in (1, 2) if d not in dims]
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        bi = b[i] if b.shape[0] == x.shape[0] else b[0]
        groups = {}
        for pos in itertools.product(range(3), range(4)):
            groups.setdefault(tuple(pos[d - 1] for d in kept), []).append(pos)
        for key, members in groups.items():
            s = sum(math.exp(x[i][p]) for p in members)
            s_ref = sum(math.exp(bi[p]) for p in members)
            r = (math.log(s) - math.log(s_ref)) / (s - s_ref)
            where = [0 if d in dims else key[kept.index(d)] for d in (1, 2)] if keepdim else list(key)
            g = float(weights[i][tuple(where)] if weights.shape[0] > 1 else weights[0][tuple(where)])
            for p in members:
                q = (math.exp(x[i][p]) - math.exp(bi[p])) / (float(x[i][p]) - float(bi[p]))
                out[i][p] = r * q * g
    return out


@pytest.mark.parametrize("dims,keepdim", DIMS)
def test_multipliers_are_the_secants_by_hand(dims, keepdim):
    x = randn(1, 3, 3, 4)
    weights = randn(2, 1, *torch.logsumexp(x, dims, keepdim).shape[1:])  # one row for every example
    f = weighted(dims, keepdim, weights)
    for b in (randn(3, 3, 3, 4), randn(4, 1, 3, 4)):  # per example, one shared row
        got = xattr.deep_lift(f, baselines=b, multiply_by_inputs=False)(x)
        torch.testing.assert_close(got, loop_multipliers(x, b, dims, keepdim, weights), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dims,keepdim", DIMS)
def test_equals_rescale_at_exp_and_log_written_out(dims, keepdim):
    """The same attributions as DeepLift (Rescale at exp and log) on ``t.exp().sum(dims).log()``."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 12).to(D)
    weights = randn(5, *torch.logsumexp(torch.zeros(1, 3, 4), dims, keepdim).shape[1:])
    per_example = lambda y: (y * weights).reshape(len(y), -1).sum(1)  # noqa: E731
    fused = lambda t: per_example(torch.logsumexp(lin(t).view(-1, 3, 4), dims, keepdim))  # noqa: E731
    written = lambda t: per_example(lin(t).view(-1, 3, 4).exp().sum(dims, keepdim).log())  # noqa: E731
    x = randn(6, 4, 5)
    for b in (randn(7, 4, 5), randn(8, 1, 5), 0.0):
        want = xattr.deep_lift(written, baselines=b)(x)
        torch.testing.assert_close(xattr.deep_lift(fused, baselines=b)(x), want, rtol=1e-10, atol=1e-12)
        assert gap(fused, x, b) < 1e-10 and gap(fused, x, b, BEFORE) > 1e-3


def test_every_spelling_and_key():
    x, b = randn(9, 3, 6), randn(10, 3, 6)
    spellings = [lambda t: torch.logsumexp(t, 1), lambda t: torch.logsumexp(t, dim=1), lambda t: t.logsumexp(1),
                 lambda t: t.logsumexp(dim=[1], keepdim=False), lambda t: torch.special.logsumexp(t, (1,)),
                 lambda t: torch.logsumexp(t, -1, True)[:, 0]]
    want = xattr.deep_lift(lambda t: torch.logsumexp(t * t, 1), baselines=b)(x)  # t * t: a product, then the op
    for spell in spellings:
        got = xattr.deep_lift(lambda t, spell=spell: spell(t * t), baselines=b)(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for key in (torch.logsumexp, torch.Tensor.logsumexp, torch.special.logsumexp):
        got = xattr.deep_lift(lambda t: torch.logsumexp(t * t, 1), baselines=b, mapping={key: xattr.rule.ExactSoftmax()})(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="would never run"):
        xattr.rules(lambda t: t, {torch.logsumexp: xattr.rule.Rescale()})


def test_parsed_calls():
    x = randn(11, 2, 3, 4)
    op = ops.parse(torch.logsumexp, (x, (2, -3)), {"keepdim": True})
    assert op.kind == "logsumexp" and op.options == {"dim": (2, -3), "keepdim": True} and op.tensors[0] is x
    assert torch.equal(op.fn(x), torch.logsumexp(x, (2, -3), True))
    assert ops.parse(torch.Tensor.logsumexp, (x, 1), {}).options == {"dim": (1,), "keepdim": False}
    assert ops.KIND_OF[torch.special.logsumexp] == "logsumexp" and "logsumexp" in xattr.rule.KINDS
    # not parsed: out=, no dims, a named dim, an integer tensor (torch's own error or result follows)
    assert ops.parse(torch.logsumexp, (x, 1), {"out": torch.empty(2, 4, dtype=D)}) is None
    assert ops.parse(torch.logsumexp, (x, ()), {}) is None
    assert ops.parse(torch.logsumexp, (x, "a"), {}) is None
    assert ops.parse(torch.logsumexp, (torch.ones(2, 3, dtype=torch.long), 1), {}) is None


# -- the ordinary gradient where it should be ------------------------------------------------------


@pytest.mark.parametrize("dims,keepdim", DIMS)
def test_gradient_where_x_is_its_reference_and_outside_paired_rows(dims, keepdim):
    x, weights = randn(12, 3, 3, 4), randn(13, 1, *torch.logsumexp(torch.zeros(1, 3, 4), dims, keepdim).shape[1:])
    f = weighted(dims, keepdim, weights)
    grad = torch.func.grad(lambda t: f(t).sum())(x)
    torch.testing.assert_close(xattr.deep_lift(f, baselines=x, multiply_by_inputs=False)(x), grad, rtol=1e-12, atol=1e-14)
    ruled = xattr.rules(f, xattr.rule.deep_lift_rules())  # no paired rows: torch's own numbers
    assert torch.equal(torch.func.grad(lambda t: ruled(t).sum())(x), grad)
    xg = x.clone().requires_grad_()
    assert torch.equal(torch.autograd.grad(ruled(xg).sum(), xg)[0], grad)


def test_over_the_rows_dim_keeps_the_gradient():
    """A logsumexp over the rows' own dim mixes examples: its ordinary gradient, in paired rows."""
    torch.manual_seed(1)
    lin = nn.Linear(4, 5).to(D)
    h = randn(14, 6, 4)
    for dims in ((0,), (0, 1), (1, 0)):
        f = lambda t, dims=dims: torch.logsumexp(lin(t), dims).sum() + torch.logsumexp(lin(t), 1).sum()  # noqa: E731
        ruled = xattr.rules(f, xattr.rule.deep_lift_rules())
        with xattr.rule.paired_rows(6):
            got = torch.func.grad(ruled)(h)
        # the second logsumexp is paired: its part is the rule's; the first keeps torch's
        mixed = torch.func.grad(lambda t, dims=dims: torch.logsumexp(lin(t), dims).sum())(h)
        alone = xattr.rules(lambda t: torch.logsumexp(lin(t), 1).sum(), xattr.rule.deep_lift_rules())
        with xattr.rule.paired_rows(6):
            paired = torch.func.grad(alone)(h)
        torch.testing.assert_close(got, mixed + paired, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(paired, torch.func.grad(lambda t: torch.logsumexp(lin(t), 1).sum())(h))


# -- layouts: sequence-first and interleaved rows --------------------------------------------------


class Pooled(nn.Module):
    """(B, 15) -> lin to (B, 5, 7) -> logsumexp over time and/or features -> (B,); sequence-first
    runs the same on the transposed (5, B, 7)."""

    def __init__(self, dims: tuple, seq_first: bool):
        super().__init__()
        torch.manual_seed(2)
        self.lin, self.dims, self.seq_first = nn.Linear(3, 7).to(D), dims, seq_first

    def forward(self, t):
        h = self.lin(t.view(len(t), 5, 3))
        if not self.seq_first:
            return torch.logsumexp(h, self.dims).reshape(len(t), -1).sum(1)
        swap = tuple({0: 1, 1: 0}.get(d, d) for d in self.dims)
        y = torch.logsumexp(h.transpose(0, 1), swap)
        return (y.transpose(0, 1) if 1 not in self.dims else y).reshape(len(t), -1).sum(1)


@pytest.mark.parametrize("dims", [(1,), (2,), (1, 2)])
def test_sequence_first_is_the_batch_first_twin(dims):
    x = randn(15, 3, 15)
    first, seq = Pooled(dims, False), Pooled(dims, True)
    for b in (randn(16, 3, 15), randn(17, 1, 15)):
        want = xattr.deep_lift(first, baselines=b)(x)
        torch.testing.assert_close(xattr.deep_lift(seq, baselines=b)(x), want, rtol=1e-12, atol=1e-14)
        assert gap(seq, x, b) < 1e-10 and gap(seq, x, b, BEFORE) > 1e-3


@pytest.mark.parametrize("join", ["cat", "repeat"])
def test_interleaved_rows(join):
    """Rows as blocks of the paired rows (a siamese ``cat``, a ``repeat``): ruled on their views
    (NOTE: [Interleaved rows]); over the merged rows themselves, the ordinary gradient."""
    torch.manual_seed(3)
    lin = nn.Linear(4, 6).to(D)

    def f(t):
        h = torch.cat([lin(t), lin(-0.5 * t)]) if join == "cat" else lin(t).repeat(2, 1) * 0.7
        h = h.view(len(h), 2, 3)
        both = torch.logsumexp(h, (1, 2)).view(2, -1).sum(0)
        return both + torch.logsumexp(h, -1, keepdim=True).view(2, -1, 2).sum((0, 2))

    x = randn(18, 3, 4)
    for b in (randn(19, 3, 4), randn(20, 1, 4)):
        assert gap(f, x, b) < 1e-10 and gap(f, x, b, BEFORE) > 1e-3


def test_rows_merged_with_tokens():
    """``(B, L, D).reshape(-1, D)``, each example's rows together (NOTE: [Rows merged with another
    dim]): paired by the merged size."""
    torch.manual_seed(4)
    lin = nn.Linear(3, 4).to(D)
    f = lambda t: torch.logsumexp(lin(t.view(len(t), 5, 3)).reshape(-1, 4), 1).view(len(t), 5).sum(1)  # noqa: E731
    x = randn(21, 3, 15)
    for b in (randn(22, 3, 15), randn(23, 1, 15)):
        assert gap(f, x, b) < 1e-10 and gap(f, x, b, BEFORE) > 1e-3


# -- through xattr.softened ------------------------------------------------------------------------


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Flatten(), nn.Linear(36, 3)).to(D).eval()


class TextCNN(nn.Module):
    """conv1d -> ReLU -> max over time (``x.max(dim=2)`` or ``torch.amax``) -> linear."""

    def __init__(self, amax: bool):
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.fc, self.amax = nn.Conv1d(3, 5, 3), nn.Linear(5, 2), amax

    def forward(self, x):
        z = torch.relu(self.conv(x))
        return self.fc(torch.amax(z, 2) if self.amax else z.max(dim=2).values)


@pytest.mark.parametrize("name", ["cnn", "text_max", "text_amax", "adaptive"])
def test_softened_models_sum_exactly(name):
    if name == "cnn":
        model, x = cnn(0), randn(21, 2, 1, 8, 8)
    elif name == "adaptive":
        torch.manual_seed(5)
        model, x = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten(),
                                 nn.Linear(18, 2)).to(D).eval(), randn(22, 2, 2, 7, 8)
    else:
        model, x = TextCNN(name == "text_amax").to(D).eval(), randn(23, 3, 3, 9)
    f = xattr.target(xattr.softened(model), 1)
    for b in (0.0, randn(24, *x.shape), randn(25, 1, *x.shape[1:])):
        _, delta = xattr.deep_lift(f, baselines=b, return_delta=True)(x)
        assert delta.abs().max() < 1e-10 and gap(f, x, b) < 1e-10
        assert gap(f, x, b, BEFORE) > 1e-4  # the LSE pools are what the rule fixes


def test_deep_lift_shap_and_layer_deep_lift_through_softened():
    model = cnn(1)
    f = xattr.target(xattr.softened(model), 2)
    x, dist = randn(26, 2, 1, 8, 8), randn(27, 3, 1, 8, 8)
    attr, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    assert delta.abs().max() < 1e-10
    each = [xattr.deep_lift(f, baselines=dist[j : j + 1])(x) for j in range(3)]  # the mean over the references
    torch.testing.assert_close(attr, sum(each) / 3, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        change = f(x) - f(dist).mean()
    torch.testing.assert_close(attr.flatten(1).sum(1), change, rtol=1e-10, atol=1e-12)
    split = xattr.at_layer(f, model[0])  # every path crosses the first conv: its attributions sum to the change
    layer_attr, layer_delta = xattr.layer_deep_lift(split, baselines=dist[:1], return_delta=True)(x)
    with torch.no_grad():
        change = f(x) - f(dist[:1])
    torch.testing.assert_close(layer_attr.flatten(1).sum(1), change, rtol=1e-10, atol=1e-12)
    assert layer_delta.abs().max() < 1e-10
    _, before = xattr.layer_deep_lift(split, baselines=dist[:1], return_delta=True, mapping=BEFORE)(x)
    assert before.abs().max() > 1e-4


def test_per_example_under_vmap():
    model = TextCNN(False).to(D).eval()
    f = xattr.target(xattr.softened(model), 0)
    x, b = randn(28, 3, 3, 9), randn(29, 3, 3, 9)
    attr = xattr.deep_lift(f)
    mapped = torch.func.vmap(lambda r, s: attr(r[None], baselines=s[None])[0])(x, b)
    torch.testing.assert_close(mapped, attr(x, baselines=b), rtol=1e-10, atol=1e-12)


# -- numerics: large scores, masked scores --------------------------------------------------------


def test_large_scores_in_float32():
    """Scores of scale 100 in float32: exp overflows (the written-out spelling is inf), w does not."""
    x, b = randn(30, 4, 8, scale=100.0, dtype=torch.float32), randn(31, 4, 8, scale=100.0, dtype=torch.float32)
    f = lambda t: torch.logsumexp(t, 1)  # noqa: E731
    attr = xattr.deep_lift(f, baselines=b)(x)
    assert torch.isfinite(attr).all() and not torch.isfinite(x.exp().sum(1)).all()
    torch.testing.assert_close(attr.sum(1), f(x) - f(b), rtol=1e-5, atol=1e-4)
    want = xattr.deep_lift(f, baselines=b.double())(x.double())  # float64, where nothing overflows here
    torch.testing.assert_close(attr.double(), want, rtol=1e-4, atol=1e-4)


def test_masked_scores():
    """Scores masked to -inf in both rows (padding) are ties: zero attribution, exact sums."""
    mask = torch.tensor([[False, True, False, False, True]])
    f = lambda t: torch.logsumexp((t * 1.5).masked_fill(mask, -math.inf), 1)  # noqa: E731
    x, b = randn(32, 3, 5), randn(33, 3, 5)
    attr = xattr.deep_lift(f, baselines=b)(x)
    assert torch.isfinite(attr).all() and not attr[:, mask[0]].any() and attr[:, ~mask[0]].all()
    torch.testing.assert_close(attr.sum(1), f(x) - f(b), rtol=1e-12, atol=1e-12)


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       picks=st.lists(st.booleans(), min_size=3, max_size=3), keepdim=st.booleans(), shared=st.booleans(),
       scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_properties(seed, shape, picks, keepdim, shared, scale):
    """Summation-to-delta; every multiplier positive; symmetric in the example and its reference."""
    dims = tuple(d + 1 for d in range(len(shape)) if picks[d]) or (1,)
    x, b = randn(seed, 3, *shape, scale=scale), randn(seed + 1, 1 if shared else 3, *shape, scale=scale)
    f = lambda t: torch.logsumexp(t, dims, keepdim).reshape(len(t), -1).sum(1)  # noqa: E731
    attr, delta = xattr.deep_lift(f, baselines=b, return_delta=True)(x)
    assert delta.abs().max() < 1e-10 * (1 + scale)
    m = xattr.deep_lift(f, baselines=b, multiply_by_inputs=False)(x)
    assert (m > 0).all()
    if not shared:
        torch.testing.assert_close(xattr.deep_lift(f, baselines=x, multiply_by_inputs=False)(b), m, rtol=1e-10, atol=1e-14)


# -- other methods: the ordinary gradient, as before --------------------------------------------


class _GuidedRelu(torch.autograd.Function):
    """ReLU with guided backprop's backward, ``g.clamp(min=0) * [x > 0]``."""

    @staticmethod
    def forward(x):
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x > 0)


class _DeconvRelu(_GuidedRelu):
    """ReLU with deconvolution's backward, ``g.clamp(min=0)``."""

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


class _OpaqueLSE(torch.autograd.Function):
    """logsumexp with torch's gradient, as one Function no rule sees into."""

    @staticmethod
    def forward(x):
        return torch.logsumexp(x, 2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return (x - y.unsqueeze(2)).exp() * g.unsqueeze(2)


class Head(nn.Module):
    def __init__(self, relu, lse):
        super().__init__()
        torch.manual_seed(6)
        self.lin1, self.lin2, self.relu, self.lse = nn.Linear(4, 12), nn.Linear(4, 2), relu, lse

    def forward(self, x):
        return self.lin2(self.lse(self.relu(self.lin1(x)).view(-1, 4, 3)))


def test_guided_backprop_deconvolution_and_lrp_keep_the_gradient():
    """No rule of theirs claims logsumexp: its ordinary gradient, and no warning."""
    x = randn(34, 3, 4).float()
    lse = lambda h: torch.logsumexp(h, 2)  # noqa: E731
    f = xattr.target(Head(torch.relu, lse).eval(), 1)
    guided_hand = xattr.target(Head(_GuidedRelu.apply, lse).eval(), 1)  # by hand, logsumexp plain
    deconv_hand = xattr.target(Head(_DeconvRelu.apply, lse).eval(), 1)
    opaque = xattr.target(Head(torch.relu, _OpaqueLSE.apply).eval(), 1)
    typed = {nn.Linear: xattr.rule.Epsilon(0.01)}  # module keys: every op is parsed, logsumexp too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guided, deconv = xattr.guided_backprop(f)(x), xattr.deconvolution(f)(x)
        lrp, lrp_typed = xattr.lrp(f)(x), xattr.lrp(f, composite=typed)(x)
    assert not caught, [str(w.message) for w in caught]
    for got, hand in ((guided, guided_hand), (deconv, deconv_hand)):
        torch.testing.assert_close(got, torch.func.grad(lambda t, hand=hand: hand(t).sum())(x), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lrp, xattr.lrp(opaque)(x), rtol=0, atol=0)
    torch.testing.assert_close(lrp_typed, xattr.lrp(opaque, composite=typed)(x), rtol=0, atol=0)


# -- derivatives of the attributions (NOTE: [Derivatives of rule-based attributions]) -------------


@pytest.mark.parametrize("dims,keepdim", [((2,), False), ((1, 2), True)])
def test_derivatives_of_the_attributions(dims, keepdim):
    """grad of the squared attribution against central differences, as for every DeepLift rule
    (tests/test_attribution_derivatives_deeplift.py's checks), per-example and shared references."""
    from test_attribution_derivatives_deeplift import REF, X, Net, _check, _deep_lift

    body = lambda h: torch.logsumexp(h.view(-1, 2, 3), dims, keepdim).flatten(1)  # noqa: E731
    model = Net(body, 2 if dims == (2,) else 1)
    _check(_deep_lift(REF), model, X, ("a.weight", "b.weight"), REF)
    _check(_deep_lift(0.3), model, X, ("a.weight", "a.bias"), torch.full_like(X, 0.3))
