"""DeepLift's dense experts for Llama 4, DBRX and JetMoE (NOTE: [Experts of their own layouts] in
moe_layouts.py, NOTE: [A mixture of attention heads, densely] in moe_attention.py): DBRX's p-norm
normaliser against a loop (NOTE: [A p-norm normaliser] in moe_routing.py), each block's dense
forward equal to its own, a p-norm DBRX conserving, the cache updated once, routers that drift
refused, and variants left to their own forward. Conservation of the three families at their
defaults: tests/test_deeplift_moe_zoo.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from xattr._src.deeplift_moe import _layout, dense_experts, moe_blocks
from xattr._src.moe_routing import Routing, pulled, routing_multipliers, routing_terms, routing_weights

hf_zoo_moe = pytest.importorskip("hf_zoo_moe")
D = torch.float64
EXACT = xattr.rule.exact_deep_lift_rules()
needs_hf = pytest.mark.skipif(hf_zoo_moe.transformers is None, reason="needs transformers")

# --- the p-norm normaliser, by loops -------------------------------------------------------------


def slow_weights(p, k: int, power: float):
    """Each token: its k largest p, divided by the power-norm of those k, in loops."""
    out = torch.zeros_like(p)
    for t in range(p.shape[0]):
        s = p[t].tolist()
        chosen = sorted(range(len(s)), key=lambda j: -s[j])[:k]
        norm = sum(s[j] ** power for j in chosen) ** (1 / power)
        for j in chosen:
            out[t, j] = s[j] / norm
    return out


def slow_multipliers(p, q, k: int, power: float):
    """M per token pair, entry by entry, as NOTE: [A p-norm normaliser] writes it."""
    n, e = p.shape
    out = torch.zeros(n, e, e, dtype=p.dtype)
    for t in range(n):
        sp, sq = p[t].tolist(), q[t].tolist()
        cp = set(sorted(range(e), key=lambda j: -sp[j])[:k])
        cq = set(sorted(range(e), key=lambda j: -sq[j])[:k])
        ip, iq = [float(j in cp) for j in range(e)], [float(j in cq) for j in range(e)]
        zp, zq = sum(sp[j] ** power for j in cp), sum(sq[j] ** power for j in cq)
        np_, nq = zp ** (1 / power), zq ** (1 / power)
        rp, rq = 1 / np_, 1 / nq
        sigma = (np_ - nq) / (zp - zq) if zp != zq else np_ / (power * zp)
        t_ = [(sp[j] ** power - sq[j] ** power) / (sp[j] - sq[j]) if sp[j] != sq[j] else power * sp[j] ** (power - 1)
              for j in range(e)]
        avg_p = [(sp[j] + sq[j]) / 2 for j in range(e)]
        avg_i = [(ip[j] + iq[j]) / 2 for j in range(e)]
        dp = [sp[j] - sq[j] for j in range(e)]
        jump = sum((sp[j] ** power + sq[j] ** power) / 2 * (ip[j] - iq[j]) for j in range(e))
        union = [j for j in range(e) if j in cp or j in cq]
        norm_u = sum(dp[j] ** 2 for j in union)
        if norm_u == 0:
            union, norm_u = list(range(e)), sum(d * d for d in dp)
        for a in range(e):
            w = avg_p[a] * avg_i[a] * rp * rq * sigma
            c = avg_p[a] * (rp + rq) / 2 * (ip[a] - iq[a]) - w * jump
            for j in range(e):
                m = ((ip[a] * rp + iq[a] * rq) / 2 if a == j else 0.0) - w * avg_i[j] * t_[j]
                if j in union and norm_u > 0:
                    m += c * dp[j] / norm_u
                out[t, a, j] = m
    return out


def probabilities(seed: int, n: int, e: int):
    logits = 2 * torch.randn(2, n, e, generator=torch.Generator().manual_seed(seed), dtype=D)
    logits[1, 0] = logits[0, 0]  # a pair with no change at all
    logits[1, 1, 0] = logits[0, 1, 0]  # an expert whose score does not change
    return torch.softmax(logits, -1).unbind(0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), e=st.integers(2, 6), k=st.integers(1, 3), power=st.sampled_from([1.0, 2.0, 0.5, 3.0]))
def test_p_norm_matches_a_loop_and_conserves(seed, e, k, power):
    k = min(k, e)
    routing = Routing(k, True, "softmax", power=power)
    p, q = probabilities(seed, 5, e)
    torch.testing.assert_close(routing_weights(p, routing), slow_weights(p, k, power), rtol=0, atol=1e-14)
    m = routing_multipliers(p, q, routing)
    torch.testing.assert_close(m, slow_multipliers(p, q, k, power), rtol=0, atol=1e-12)
    dg = slow_weights(p, k, power) - slow_weights(q, k, power)
    torch.testing.assert_close(m @ (p - q).unsqueeze(-1), dg.unsqueeze(-1), rtol=0, atol=1e-12)
    g = torch.randn(5, e, generator=torch.Generator().manual_seed(seed), dtype=D)
    torch.testing.assert_close(pulled(g, routing_terms(p, q, routing)), (g.unsqueeze(-2) @ m).squeeze(-2), rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), e=st.integers(2, 6), k=st.integers(1, 3), power=st.sampled_from([2.0, 0.5, 3.0]))
def test_p_norm_at_equal_rows_is_the_jacobian(seed, e, k, power):
    routing = Routing(min(k, e), True, "softmax", power=power)
    p, _ = probabilities(seed, 3, e)
    jac = torch.func.vmap(torch.func.jacrev(lambda r: routing_weights(r, routing)))(p)
    torch.testing.assert_close(routing_multipliers(p, p, routing), jac, rtol=0, atol=1e-12)


def test_p_norm_is_not_the_sum():
    """The power changes the weights and the multipliers (so the tests above see it)."""
    p, q = probabilities(4, 6, 5)
    one, two = Routing(2, True, "softmax"), Routing(2, True, "softmax", power=2.0)
    assert (routing_weights(p, one) - routing_weights(p, two)).abs().max() > 0.05
    assert (routing_multipliers(p, q, one) - routing_multipliers(p, q, two)).abs().max() > 0.05


# --- the families -------------------------------------------------------------------------------


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _kinds(model) -> list:
    return sorted(_layout(block).kind for _, _, _, block in moe_blocks(model))


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, kinds", [("llama4", ["llama4"] * 2), ("dbrx", ["dbrx"] * 2),
                                         ("jetmoe", ["jetmoe"] * 2 + ["moa"] * 2)])
def test_dense_forward_equals_the_models_own(name, kinds):
    """The whole model's output, with every block computed densely, is its own (float64), and
    the hooks are gone after."""
    case = hf_zoo_moe.FAMILIES[name]()
    assert _kinds(case.model) == kinds
    ids, mask, _ = case.inputs()
    with torch.no_grad(), hf_zoo_moe.float64_throughout():
        own = case.f(ids, mask)
        with dense_experts(case.model):
            assert _hooks(case.model) > 0
            dense = case.f(ids, mask)
    torch.testing.assert_close(dense, own, rtol=0, atol=1e-13)
    assert _hooks(case.model) == 0


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("power", [2.0, None])
def test_dbrx_with_other_normalisers_conserves(power):
    """DBRX's p-norm normaliser (NOTE: [A p-norm normaliser]) at P = 2, and none at all."""
    case = hf_zoo_moe.FAMILIES["dbrx"]()
    for _, _, _, block in moe_blocks(case.model):
        block.moe_normalize_expert_weights = power
    assert {_layout(b).routing.power for *_, b in moe_blocks(case.model)} == {power or 1.0}
    assert hf_zoo_moe.hf_zoo.deep_lift_gap(case, EXACT, hf_zoo_moe.in_float64(case.f), 1e-5)[0] < 1e-12


@needs_hf
@pytest.mark.filterwarnings("ignore")
def test_jetmoe_cache_is_updated_once_and_a_past_is_attended():
    """The dense attention updates the cache as the module does (once), and with a past in the
    cache it gives the module's output."""
    case = hf_zoo_moe.FAMILIES["jetmoe"]()
    ids = torch.randint(2, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    caches = []
    with torch.no_grad(), hf_zoo_moe.float64_throughout():
        for dense in (False, True):
            first = case.model(input_ids=ids[:, :4], use_cache=True)
            with dense_experts(case.model) if dense else contextlib.nullcontext():
                out = case.model(input_ids=ids[:, 4:], past_key_values=first.past_key_values, use_cache=True)
            caches.append((out.last_hidden_state, out.past_key_values))
    (own, own_cache), (dense, dense_cache) = caches
    assert dense_cache.get_seq_length() == own_cache.get_seq_length() == 7
    torch.testing.assert_close(dense, own, rtol=0, atol=1e-13)


def _scaled(outputs, which: int):
    """A router's outputs with output ``which`` times 1.01 (a router of another kind than its
    attributes say)."""
    return tuple(o * 1.01 if i == which else o for i, o in enumerate(outputs))


def _drift(name: str, gate, block):
    if name == "dbrx":  # the block routes: its softmax, top k and normaliser
        own = block.route_tokens_to_experts
        block.route_tokens_to_experts = lambda logits: _scaled(own(logits), 0)
    else:
        own = gate.forward
        gate.forward = lambda h: _scaled(own(h), 0 if name == "llama4" else 2)


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, match", [("llama4", r"sigmoid and top-2 of its logits"),
                                         ("dbrx", r"softmax and top-2 \(renormalised\) of its logits"),
                                         ("jetmoe", r"softmax and top-2 \(renormalised\) of its logits")])
def test_a_router_that_drifts_is_refused(name, match):
    """Weights other than the router's attributes say: a ValueError naming the block, never a
    wrong answer; no hook is left."""
    case = hf_zoo_moe.FAMILIES[name]()
    for _, gate, _, block in moe_blocks(case.model):
        _drift(name, gate, block)
    with pytest.raises(ValueError, match=match):
        hf_zoo_moe.hf_zoo.deep_lift_gap(case, EXACT, hf_zoo_moe.in_float64(case.f), 1e-5)
    assert _hooks(case.model) == 0


@needs_hf
@pytest.mark.filterwarnings("ignore")
def test_variants_are_left_to_their_own_forward():
    """A block that differs from the layouts (an experts module without its activation, a DBRX
    normaliser of an unknown kind, a JetMoE MLP without its bias) is not computed densely."""
    for name, change in (("llama4", lambda b: delattr(b.experts, "act_fn")),
                         ("dbrx", lambda b: setattr(b, "moe_normalize_expert_weights", "max")),
                         ("jetmoe", lambda b: delattr(b, "bias"))):
        case = hf_zoo_moe.FAMILIES[name]()
        blocks = [b for *_, b in moe_blocks(case.model)]
        change(blocks[0])
        assert _layout(blocks[0]) is None and _layout(blocks[-1]) is not None


class _Holder:
    pass


@needs_hf
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["llama4", "dbrx", "jetmoe"])
def test_a_model_found_nowhere_is_found_as_it_runs(name):
    """A model reached through an object's attribute: its blocks are found as their parents run
    (JetMoE's, whose own forward the hooks replace, too), and it conserves."""
    case = hf_zoo_moe.FAMILIES[name]()
    holder = _Holder()
    holder.f = hf_zoo_moe.in_float64(case.f)

    def reads_an_attribute(ids, mask):
        return holder.f(ids, mask)

    from xattr._src.deeplift_moe import _behind

    assert _behind(reads_an_attribute) == []
    assert hf_zoo_moe.hf_zoo.deep_lift_gap(case, EXACT, reads_an_attribute, 1e-5)[0] < 1e-12
    assert _hooks(case.model) == 0 and not torch.nn.modules.module._global_forward_pre_hooks
