"""DeepLift through more Hugging Face mixture-of-experts families (tests/hf_zoo_moe.py): the routings
of NOTE: [Routers of other kinds] (moe_routers.py) against a slow loop, every family the dense
dispatch covers conserving to float64's rounding (every family but PhiMoE), the dense forward equal
to each block's own, and PhiMoE's router, of another kind, refused.
docs/rules.md, "Mixtures of experts", has the table."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from xattr._src import backprop_methods

hf_zoo_moe = pytest.importorskip("hf_zoo_moe")
from xattr._src.deeplift_moe import _block, dense_output, moe_blocks
from xattr._src.moe_routers import router_routing
from xattr._src.moe_routing import Routing, pulled, routing_multipliers, routing_terms, routing_weights

D = torch.float64
EXACT = xattr.rule.exact_deep_lift_rules()
needs_hf = pytest.mark.skipif(hf_zoo_moe.transformers is None, reason="needs transformers")

# --- the routings, by loops ---------------------------------------------------------------------


def slow_chosen(s, r: Routing) -> list:
    """The chosen experts of one token's scores s (a list), as the routers pick them, in loops."""
    e = len(s)
    choice = [s[j] + (0.0 if r.bias is None else r.bias[j].item()) for j in range(e)]
    allowed = list(range(e))
    if r.groups > 1:
        size = e // r.groups
        scores = []
        for g in range(r.groups):
            members = list(range(g * size, (g + 1) * size))
            if r.group_score == "max":
                scores.append(max(s[j] for j in members))
            else:
                scores.append(sum(sorted((choice[j] for j in members), reverse=True)[:2]))
        best = sorted(range(r.groups), key=lambda g: -scores[g])[: r.topk_group]
        allowed = [j for j in range(e) if j // size in best]
    return sorted(allowed, key=lambda j: -choice[j])[: r.top_k]


def slow_weights(p, r: Routing):
    out = torch.zeros_like(p)
    for t in range(p.shape[0]):
        s = p[t].tolist()
        chosen = slow_chosen(s, r)
        z = max(sum(s[j] for j in chosen) + r.eps, r.floor) if r.normalize else 1.0
        for j in chosen:
            out[t, j] = r.scale * s[j] / z
    return out


def slow_multipliers(p, q, r: Routing):
    """M per token pair, entry by entry (NOTE: [DeepLift at top-k routing], with the scale and the
    floor's slope of NOTE: [Routers of other kinds])."""
    n, e = p.shape
    out = torch.zeros(n, e, e, dtype=p.dtype)
    for t in range(n):
        sp, sq = p[t].tolist(), q[t].tolist()
        cp, cq = set(slow_chosen(sp, r)), set(slow_chosen(sq, r))
        ip = [float(j in cp) for j in range(e)]
        iq = [float(j in cq) for j in range(e)]
        zp, zq = sum(sp[j] for j in cp), sum(sq[j] for j in cq)
        fp, fq = max(zp + r.eps, r.floor), max(zq + r.eps, r.floor)
        rp, rq = (1 / fp, 1 / fq) if r.normalize else (1.0, 1.0)
        if not r.normalize:
            kappa = 0.0
        elif zp != zq:
            kappa = rp * rq * ((fp - fq) / (zp - zq) if r.floor else 1.0)
        else:
            kappa = rp * rq * float(zp + r.eps >= r.floor)
        avg_p = [(sp[j] + sq[j]) / 2 for j in range(e)]
        avg_i = [(ip[j] + iq[j]) / 2 for j in range(e)]
        dp = [sp[j] - sq[j] for j in range(e)]
        jump = sum(avg_p[j] * (ip[j] - iq[j]) for j in range(e))
        union = [j for j in range(e) if j in cp or j in cq]
        norm_u = sum(dp[j] ** 2 for j in union)
        if norm_u == 0:
            union, norm_u = list(range(e)), sum(d * d for d in dp)
        for a in range(e):
            w = r.scale * avg_p[a] * avg_i[a] * kappa
            c = r.scale * avg_p[a] * (rp + rq) / 2 * (ip[a] - iq[a]) - w * jump
            for j in range(e):
                m = (r.scale * (ip[a] * rp + iq[a] * rq) / 2 if a == j else 0.0) - w * avg_i[j]
                if j in union and norm_u > 0:
                    m += c * dp[j] / norm_u
                out[t, a, j] = m
    return out


@st.composite
def routings(draw):
    """A routing of every kind the routers have, and its experts' count."""
    grouped = draw(st.booleans())
    e = 8 if grouped else draw(st.integers(2, 6))
    groups = draw(st.sampled_from([2, 4])) if grouped else 1
    topk_group = draw(st.integers(1, groups - 1)) if grouped else 1
    allowed = e // groups * topk_group
    seed = draw(st.integers(0, 10_000))
    bias = 0.3 * torch.randn(e, generator=torch.Generator().manual_seed(seed), dtype=D) if draw(st.booleans()) else None
    routing = Routing(draw(st.integers(1, min(allowed, 3))), draw(st.booleans()), draw(st.sampled_from(["softmax", "sigmoid"])),
                      draw(st.sampled_from([1.0, 2.5])), draw(st.sampled_from([0.0, 1e-6])), bias, groups, topk_group,
                      draw(st.sampled_from(["top2", "max"])), draw(st.sampled_from([0.0, 0.0, 0.5])))
    return routing, e, seed


def scores(routing, seed, n, e):
    g = torch.Generator().manual_seed(seed + 1)
    logits = 2 * torch.randn(2, n, e, generator=g, dtype=D)
    logits[1, 0] = logits[0, 0]  # a pair with no change at all
    s = torch.softmax(logits, -1) if routing.score == "softmax" else torch.sigmoid(logits)
    return s.unbind(0)


@settings(max_examples=40, deadline=None)
@given(case=routings())
def test_routings_match_a_loop_and_conserve(case):
    routing, e, seed = case
    p, q = scores(routing, seed, 5, e)
    torch.testing.assert_close(routing_weights(p, routing), slow_weights(p, routing), rtol=0, atol=1e-14)
    m = routing_multipliers(p, q, routing)
    torch.testing.assert_close(m, slow_multipliers(p, q, routing), rtol=0, atol=1e-12)
    dg = slow_weights(p, routing) - slow_weights(q, routing)
    torch.testing.assert_close(m @ (p - q).unsqueeze(-1), dg.unsqueeze(-1), rtol=0, atol=1e-12)
    g = torch.randn(5, e, generator=torch.Generator().manual_seed(seed), dtype=D)
    torch.testing.assert_close(pulled(g, routing_terms(p, q, routing)), (g.unsqueeze(-2) @ m).squeeze(-2), rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(case=routings())
def test_routings_at_equal_rows_are_the_jacobian(case):
    routing, e, seed = case
    p, _ = scores(routing, seed, 3, e)
    jac = torch.func.vmap(torch.func.jacrev(lambda r: routing_weights(r, routing)))(p)
    torch.testing.assert_close(routing_multipliers(p, p, routing), jac, rtol=0, atol=1e-12)


def test_bias_groups_and_floor_move_the_choice():
    """The parts of the routings are not idle: a bias, groups and a floor each change G."""
    p, _ = scores(Routing(2, score="sigmoid"), 7, 200, 8)
    plain = routing_weights(p, Routing(2, True, "sigmoid"))
    bias = 0.3 * torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=D)
    for other in (Routing(2, True, "sigmoid", bias=bias), Routing(2, True, "sigmoid", groups=4, topk_group=1),
                  Routing(2, True, "sigmoid", floor=1.5)):
        moved = ((routing_weights(p, other) - plain).abs().amax(-1) > 1e-3).sum().item()
        assert 10 < moved < 200


def test_the_floor_is_crossed_exactly():
    """One token above the floor, its reference below it: the slope of the clamp (not 1)."""
    r = Routing(1, True, "sigmoid", floor=0.5)
    p = torch.tensor([[0.9, 0.1, 0.2]], dtype=D)
    q = torch.tensor([[0.3, 0.1, 0.2]], dtype=D)
    m = routing_multipliers(p, q, r)
    torch.testing.assert_close(m @ (p - q).unsqueeze(-1), (slow_weights(p, r) - slow_weights(q, r)).unsqueeze(-1),
                               rtol=0, atol=1e-15)
    assert not torch.allclose(m, routing_multipliers(p, q, Routing(1, True, "sigmoid")))


# --- the families ------------------------------------------------------------------------------

# the families the dense dispatch covers (NOTE: [Experts dispatched densely], [Routers of other kinds]; Llama 4,
# DBRX and JetMoE: NOTE: [Experts of their own layouts], [A mixture of attention heads, densely])
SUPPORTED = [n for n in hf_zoo_moe.FAMILIES if n != "phimoe"]
OWN_LAYOUTS = ("llama4", "dbrx", "jetmoe")  # their dense forward: tests/test_deeplift_moe_more.py
BLOCKS = {"jetmoe": 4}  # its MLPs and its attentions (MoA)
REFUSED = {"phimoe": "sparsemixer"}  # its router's weights are not a top-k of its scores: the ValueError


def _gap(case, f):
    return hf_zoo_moe.hf_zoo.deep_lift_gap(case, EXACT, f, 1e-5)[0]


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", SUPPORTED)
def test_family_conserves(name):
    """Float64's rounding in float64 throughout; float32's as it is (the routers cast)."""
    case = hf_zoo_moe.FAMILIES[name]()
    assert len(moe_blocks(case.model)) == BLOCKS.get(name, 2)
    assert _gap(case, hf_zoo_moe.in_float64(case.f)) < 1e-12
    assert _gap(case, case.f) < 1e-5


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["deepseek_v3", "gpt_oss", "ernie4_5_moe", "lfm2_moe", *OWN_LAYOUTS])
def test_families_were_off_without_dense_dispatch(name, monkeypatch):
    case = hf_zoo_moe.FAMILIES[name]()
    monkeypatch.setattr(backprop_methods, "dense_experts", lambda f: contextlib.nullcontext())
    assert _gap(case, hf_zoo_moe.in_float64(case.f)) > 1e-3


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", [n for n in SUPPORTED if n not in OWN_LAYOUTS])
def test_dense_forward_equals_the_blocks_own(name):
    case = hf_zoo_moe.FAMILIES[name]()
    block = hf_zoo_moe.blocks(case.model)[0]
    gate, experts, _ = _block(block)
    for seed in range(2):
        h = torch.randn(9, hf_zoo_moe.H, generator=torch.Generator().manual_seed(seed), dtype=D)
        with hf_zoo_moe.float64_throughout():
            logits, w, idx = _router_call(block, gate, h)
            own = experts(h, idx, w)
            dense = dense_output(experts, gate, h, logits, idx, w, block=block)
        torch.testing.assert_close(dense, own.reshape(dense.shape), rtol=0, atol=1e-13)


def _router_call(block, gate, h):
    if router_routing(gate, block).bias is not None and hasattr(gate, "use_expert_bias"):  # LFM2-MoE
        return gate(h, block.expert_bias)
    return gate(h)[:3]


@needs_hf
@pytest.mark.filterwarnings("ignore")
def test_bias_and_groups_change_the_choice_in_the_families():
    """The zoo's random score-correction biases and groups do move experts (so the tests above see them)."""
    case = hf_zoo_moe.FAMILIES["deepseek_v3"]()
    gate = hf_zoo_moe.blocks(case.model)[0].gate
    routing = router_routing(gate)
    assert routing.bias is not None and routing.groups == 2 and routing.scale == 2.5
    s = torch.sigmoid(torch.randn(100, 8, generator=torch.Generator().manual_seed(0), dtype=D))
    plain = routing_weights(s, Routing(2, True, "sigmoid", 2.5, 1e-20))
    assert ((routing_weights(s, routing) - plain).abs().amax(-1) > 1e-3).sum() > 10


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_routers_are_refused(name):
    case = hf_zoo_moe.FAMILIES[name]()
    with pytest.raises(ValueError, match=r"routes by other weights than softmax and top-2 \(renormalised\)"):
        _gap(case, hf_zoo_moe.in_float64(case.f))


@needs_hf
@pytest.mark.filterwarnings("ignore")
def test_a_router_that_drifts_from_its_attributes_is_refused():
    """DeepSeek-V3's router scaled by other than its ``routed_scaling_factor``: the check sees it."""
    case = hf_zoo_moe.FAMILIES["deepseek_v3"]()
    for block in hf_zoo_moe.blocks(case.model):
        own = block.gate.forward
        block.gate.forward = lambda h, own=own: (lambda out: (out[0], out[1] * 1.01, out[2]))(own(h))
    with pytest.raises(ValueError, match=r"sigmoid and top-2 \+ a score bias in the best 1 of 2 groups \(renormalised\) "
                                         r"times 2.5 of its logits"):
        _gap(case, hf_zoo_moe.in_float64(case.f))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in case.model.modules()) == 0
