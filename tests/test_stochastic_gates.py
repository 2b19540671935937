"""Stochastic gates against Captum's modules and a slow loop reference, the L0 probability against
Monte Carlo, reparameterised gradients against finite differences, eval mode, seeds and errors."""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from xattr._src.stochastic_gates_base import StochasticGatesBase

D = torch.float64
KINDS = [xattr.BinaryConcreteStochasticGates, xattr.GaussianStochasticGates]
PARAM = {xattr.BinaryConcreteStochasticGates: "log_alpha_param", xattr.GaussianStochasticGates: "mu"}


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def phi_cdf(v: float) -> float:
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def reference(kind, n_gates, seed, x, mask=None, training=True, reg_reduction="sum", reg_weight=1.0, **kw):
    """Draws the documented stream from its own generator (n initial normals, then a (B, n) noise
    tensor) and gates element by element with Python floats."""
    g = torch.Generator().manual_seed(seed)
    init = torch.empty(n_gates).normal_(0.0 if kind is KINDS[0] else 0.5, 0.01, generator=g).double().tolist()
    batch = x.shape[0]
    flat = x.reshape(batch, -1).tolist()
    idx = (mask.expand(x.shape).reshape(batch, -1).tolist() if mask is not None
           else [list(range(n_gates))] * batch)  # fmt: skip
    if kind is KINDS[0]:
        tau, lo, hi, eps = kw.get("temperature", 2 / 3), kw.get("lower_bound", -0.1), kw.get("upper_bound", 1.1), 1e-8
        if training:
            u = torch.empty(batch, n_gates, dtype=D).uniform_(eps, 1 - eps, generator=g).tolist()
            raw = [[sigmoid((math.log(u[b][k] / (1 - u[b][k])) + init[k]) / tau) for k in range(n_gates)]
                   for b in range(batch)]
        else:
            raw = [[sigmoid(init[k]) for k in range(n_gates)] for _ in range(batch)]
        gates = [[min(1.0, max(0.0, lo + (hi - lo) * s)) for s in row] for row in raw]
        probs = [sigmoid(a - tau * math.log(-lo / hi)) for a in init]
    else:
        std = kw.get("std", 0.5)
        if training:
            e = torch.empty(batch, n_gates, dtype=D).normal_(0.0, std, generator=g).tolist()
            gates = [[min(1.0, max(0.0, init[k] + e[b][k])) for k in range(n_gates)] for b in range(batch)]
        else:
            gates = [[min(1.0, max(0.0, m)) for m in init] for _ in range(batch)]
        probs = [phi_cdf(m / std) for m in init]
    out = [[flat[b][j] * gates[b][idx[b][j]] for j in range(len(flat[b]))] for b in range(batch)]
    reg = {"sum": sum(probs), "mean": sum(probs) / n_gates}.get(reg_reduction, probs)
    return torch.tensor(out, dtype=D).reshape(x.shape), reg_weight * torch.tensor(reg, dtype=D)


def make(kind, n_gates, seed, **kw):
    gates = kind(n_gates, generator=seed, **kw).double()
    return gates


# -- Captum ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_matches_captum_under_the_same_global_seed(kind, masked, reduction):
    captum_module = pytest.importorskip("captum.module")
    theirs_cls = getattr(captum_module, kind.__name__)
    mask = torch.tensor([[0, 1, 1, 2], [2, 3, 0, 3]]) if masked else None
    n = 4 if masked else 8
    extra = {"temperature": 0.5, "lower_bound": -0.2} if kind is KINDS[0] else {"std": 0.3}
    results = []
    for cls in (theirs_cls, kind):
        torch.manual_seed(7)
        gates = cls(n, mask=mask, reg_weight=0.3, reg_reduction=reduction, **extra)
        x = torch.randn(5, 2, 4)
        got = [gates(x) for _ in range(2)]  # two training draws in a row
        gates.eval()
        got.append(gates(x))
        got.append((gates.get_gate_values(), gates.get_gate_values(clamp=False), gates.get_gate_active_probs()))
        results.append([t for pair in got for t in pair])
    assert len(results[0]) == 9
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert not torch.equal(results[0][0], results[0][2])  # the two training draws differ


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_from_pretrained_and_state_dicts_match_captum(kind):
    captum_module = pytest.importorskip("captum.module")
    theirs_cls = getattr(captum_module, kind.__name__)
    values = torch.tensor([-1.0, 0.2, 0.7, 3.0])
    outs = []
    for cls in (theirs_cls, kind):
        torch.manual_seed(3)
        gates = cls._from_pretrained(values, reg_weight=2.0)
        outs.append((gates(torch.ones(3, 4)), gates.state_dict()))
    (c_out, c_state), (x_out, x_state) = outs
    torch.testing.assert_close(x_out, c_out, rtol=0, atol=0)
    assert list(x_state) == list(c_state)
    torch.testing.assert_close(x_state[PARAM[kind]], values)
    theirs = theirs_cls(4)
    theirs.load_state_dict(x_state)
    mine = kind(4, mask=torch.tensor([0, 1, 2, 3]))
    mine.load_state_dict(theirs_cls(4, mask=torch.tensor([3, 2, 1, 0])).state_dict())
    assert mine.mask.tolist() == [3, 2, 1, 0]


# -- the slow reference ------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_matches_slow_loop_reference(kind, reduction, training):
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(1), dtype=D)
    mask = torch.tensor([[0, 0, 1], [2, 1, 2]])
    extra = {"temperature": 0.4, "lower_bound": -0.3, "upper_bound": 1.2} if kind is KINDS[0] else {"std": 0.8}
    for m, n in ((None, 6), (mask, 3)):
        gates = make(kind, n, 11, mask=m, reg_weight=0.5, reg_reduction=reduction, **extra).train(training)
        gated, reg = gates(x)
        ref_gated, ref_reg = reference(kind, n, 11, x, mask=m, training=training, reg_reduction=reduction,
                                       reg_weight=0.5, **extra)  # fmt: skip
        torch.testing.assert_close(gated, ref_gated, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(reg, ref_reg, rtol=1e-12, atol=1e-14)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(KINDS),
    batch=st.integers(1, 4),
    n=st.integers(1, 5),
    repeat=st.integers(1, 3),
    weight=st.floats(0.0, 5.0),
)
def test_masked_gates_are_the_unmasked_gates_gathered(seed, kind, batch, n, repeat, weight):
    # a mask sharing each gate among `repeat` features gives each feature its gate's draw
    order = torch.randperm(n * repeat, generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(n).repeat_interleave(repeat)[order]
    ones = torch.ones(batch, n, dtype=D)
    plain = make(kind, n, seed, reg_weight=weight)
    shared = make(kind, n, seed, mask=mask, reg_weight=weight)
    gates, reg = plain(ones)
    gated, reg_shared = shared(torch.full((batch, n * repeat), 2.0, dtype=D))
    torch.testing.assert_close(gated, 2 * gates[:, mask], rtol=0, atol=0)
    torch.testing.assert_close(reg_shared, reg, rtol=0, atol=0)
    assert ((gates >= 0) & (gates <= 1)).all()
    probs = plain.get_gate_active_probs()
    assert ((probs > 0) & (probs < 1)).all()
    torch.testing.assert_close(reg, weight * probs.sum())


@settings(max_examples=20, deadline=None, derandomize=True)
@given(values=st.lists(st.floats(-6, 6), min_size=2, max_size=6), kind=st.sampled_from(KINDS),
       weight=st.floats(0.01, 10.0))  # fmt: skip
def test_penalty_reductions_and_monotone_probabilities(values, kind, weight):
    t = torch.tensor(values, dtype=D)
    regs = {}
    for reduction in ("sum", "mean", "none"):
        gates = kind.from_pretrained(t, reg_weight=weight, reg_reduction=reduction, generator=0).double()
        regs[reduction] = gates(torch.ones(1, len(values), dtype=D))[1]
        probs = gates.get_gate_active_probs()
    torch.testing.assert_close(regs["none"], weight * probs)
    torch.testing.assert_close(regs["sum"], regs["mean"] * len(values))
    order = torch.argsort(t)
    assert (torch.diff(probs[order]) >= 0).all()  # a larger parameter opens the gate more often
    values_unclamped = gates.get_gate_values(clamp=False)
    assert (torch.diff(values_unclamped[order]) >= 0).all()
    torch.testing.assert_close(gates.get_gate_values(), values_unclamped.clamp(0, 1))


# -- the L0 probability and gradients ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_active_probability_matches_monte_carlo(kind):
    # 40000 draws per gate: the open fraction must lie within 5 binomial standard errors
    values = torch.tensor([-2.5, -0.4, 0.0, 0.3, 1.5] if kind is KINDS[0] else [-0.5, 0.0, 0.2, 0.6, 1.2], dtype=D)
    gates = kind.from_pretrained(values, generator=5).double()
    samples = gates(torch.ones(40_000, 5, dtype=D))[0]
    frac = (samples > 0).double().mean(0)
    p = gates.get_gate_active_probs()
    tol = 5 * torch.sqrt(p * (1 - p) / 40_000)
    assert ((frac - p).abs() <= tol).all(), (frac, p)
    assert (frac - p).abs().max() > 0  # a real sample, not the formula
    if kind is KINDS[0]:
        closed = [sigmoid(v - (2 / 3) * math.log(0.1 / 1.1)) for v in values.tolist()]
    else:
        closed = [phi_cdf(v / 0.5) for v in values.tolist()]
    torch.testing.assert_close(p, torch.tensor(closed, dtype=D))


def expected_gate(kind, param: float) -> float:
    """E[z] = integral_0^1 P(z > t) dt by 200-point Gauss-Legendre (the integrand is smooth)."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    t = (nodes + 1) / 2
    if kind is KINDS[0]:
        q = (t + 0.1) / 1.2
        tail = 1 / (1 + np.exp(-(param - (2 / 3) * np.log(q / (1 - q)))))
    else:
        tail = torch.special.ndtr(torch.from_numpy((param - t) / 0.5)).numpy()
    return float((weights * tail).sum() / 2)


@pytest.mark.parametrize("param", [-0.7, 0.4, 1.6])
@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_pathwise_gradient_is_the_derivative_of_the_expected_gate(kind, param):
    if kind is KINDS[1]:
        param = param / 2
    n = 100_000  # n gates sharing one parameter value: one draw each, n per-sample derivatives
    gates = kind.from_pretrained(torch.full((n,), param, dtype=D), generator=2).double()
    z = gates(torch.ones(1, n, dtype=D))[0]
    (per_sample,) = torch.autograd.grad(z.sum(), getattr(gates, PARAM[kind]))
    h = 1e-5
    fd = (expected_gate(kind, param + h) - expected_gate(kind, param - h)) / (2 * h)
    se = per_sample.std().item() / math.sqrt(n)
    assert abs(per_sample.mean().item() - fd) < 5 * se, (per_sample.mean().item(), fd, se)
    assert abs(z.mean().item() - expected_gate(kind, param)) < 5 * z.std().item() / math.sqrt(n)


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_fixed_noise_gradients_pass_gradcheck(kind):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    start = torch.tensor([0.3, -0.2, 0.9, 0.45], dtype=D, requires_grad=True)

    def gated_and_reg(param):
        gates = make(kind, 4, 9, reg_reduction="none")  # the same seed: the same noise each call
        return torch.func.functional_call(gates, {PARAM[kind]: param}, (x,))

    assert torch.autograd.gradcheck(gated_and_reg, (start,))
    gated = gated_and_reg(start)[0]
    (g,) = torch.autograd.grad(gated.sum(), start)
    assert g.abs().sum() > 0  # the gates are not all clamped: the check saw a gradient


# -- eval mode, seeds, the user's objects ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_eval_mode_is_deterministic_and_draws_nothing(kind):
    torch.manual_seed(0)
    gates = kind(6).eval()
    x = torch.randn(4, 6)
    state = torch.get_rng_state()
    first, second = gates(x)[0], gates(x)[0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, x * gates.get_gate_values(), rtol=0, atol=0)
    gates.train()
    assert not torch.equal(gates(x)[0], first)


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_generator_reproduces_and_leaves_the_global_stream_alone(kind):
    x = torch.randn(3, 5)
    state = torch.get_rng_state()
    a, b = kind(5, generator=4), kind(5, generator=torch.Generator().manual_seed(4))
    runs = [[m(x)[0] for _ in range(3)] for m in (a, b)]
    assert torch.equal(torch.get_rng_state(), state)
    for r, s in zip(*runs):
        assert torch.equal(r, s)
    assert not torch.equal(runs[0][0], runs[0][1])  # a stream, not one draw repeated
    assert not torch.equal(kind(5, generator=5)(x)[0], runs[0][0])


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_user_tensors_are_not_changed(kind):
    mask = torch.tensor([0, 1, 0, 1])
    x = torch.randn(2, 4)
    x0 = x.clone()
    gates = kind(2, mask=mask, generator=0)
    mask[0] = 1
    gates(x)
    assert torch.equal(x, x0)
    assert gates.mask.tolist() == [0, 1, 0, 1]
    copied = copy.deepcopy(gates)
    assert torch.equal(copied(x)[0], gates(x)[0])  # the copy carries the generator's state


def test_exports():
    from xattr.compat import captum

    assert captum.BinaryConcreteStochasticGates is xattr.BinaryConcreteStochasticGates
    assert captum.GaussianStochasticGates is xattr.GaussianStochasticGates
    assert issubclass(xattr.GaussianStochasticGates, captum.StochasticGatesBase)
    assert captum.StochasticGatesBase is StochasticGatesBase


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=["concrete", "gaussian"])
def test_errors(kind):
    with pytest.raises(ValueError, match="reg_reduction"):
        kind(3, reg_reduction="max")
    with pytest.raises(ValueError, match="n_gates"):
        kind(0)
    with pytest.raises(ValueError, match="largest"):
        kind(3, mask=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="0..n_gates-1"):
        kind(2, mask=torch.tensor([-1, 1]))
    with pytest.raises(TypeError, match="integer"):
        kind(2, mask=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="generator"):
        kind(2, generator="seed")
    masked = kind(2, mask=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="does not broadcast"):
        masked(torch.ones(2, 4))
    with pytest.raises(ValueError, match="n_gates = 3"):
        kind(3)(torch.ones(2, 4))
    with pytest.raises(ValueError, match="at least 2 dims"):
        kind(3)(torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        kind.from_pretrained(torch.zeros(2, 2))


def test_distribution_argument_errors():
    with pytest.raises(ValueError, match="temperature"):
        xattr.BinaryConcreteStochasticGates(3, temperature=1.0)
    with pytest.raises(ValueError, match="lower_bound"):
        xattr.BinaryConcreteStochasticGates(3, lower_bound=0.0)
    with pytest.raises(ValueError, match="upper_bound"):
        xattr.BinaryConcreteStochasticGates(3, upper_bound=1.0)
    with pytest.raises(ValueError, match="std"):
        xattr.GaussianStochasticGates(3, std=0.0)
    with pytest.raises(TypeError, match="reg_weight"):
        xattr.GaussianStochasticGates(3, reg_weight=float("nan"))
