"""LRP and AttnLRP through the Hugging Face mixture-of-experts families of tests/hf_zoo_moe.py.

The recipe of tests/test_lrp_hf_zoo.py: a bias-free copy (every linear, norm, router and expert
bias 0; the score-correction biases, which only move the choice, kept), relevance by
`xattr.layer_lrp` at the word embeddings, epsilon 1e-13, float64 throughout (`hf_zoo_moe.in_float64`),
gap ``|sum(R) - f(x)| / |f(x)|``, the largest of the padded batch of 2. Two mappings:

- CP-LRP, ``lrp_rules(1e-13)`` with ``F.softmax: Block()``: every family conserves to float64's
  rounding (2e-13 to 1.4e-9) but GPT-OSS, whose clamped GLU ``(up + 1) * glu`` hands the constant 1
  a bias's share (5.3e-2 of f(x); 2e-12 with the ``+ 1`` taken out, which changes the function);
- AttnLRP, ``attn_lrp_rules(1e-13)``: off by 4e-3 to 31 times f(x), and ``sum(R) - f(x)`` is exactly
  (1e-7) the sum of what the attention's softmax rows gain or lose under its rule, which does not
  conserve by design (NOTE: [AttnLRP in gradient form]); with CP-LRP's rules inside the attention
  modules and AttnLRP's everywhere else, the families conserve as above.

The routers take no relevance under either: the routing weights multiply the experts' outputs as
a factor that broadcasts (``(T, 1)`` against ``(T, H)``), which `FixedGate` holds. docs/lrp.md,
"Mixtures of experts", has the table.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

from registry import changed_state, state_snapshot

hf_zoo_moe = pytest.importorskip("hf_zoo_moe")
if hf_zoo_moe.transformers is None:
    pytest.skip("needs transformers", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore")

EPS = 1e-13
_CHOICE_BIASES = ("e_score_correction_bias", "expert_bias")  # move the choice only: kept as built

# CP-LRP, float64 throughout: the measured gap (bound: 10 times it)
CP = {
    "qwen3_moe": 1.6e-11, "qwen3_moe_unnormalised": 1.3e-11, "olmoe": 1.6e-11, "flex_olmo": 4.6e-10,
    "phimoe": 1.7e-11, "minimax": 2.0e-13, "deepseek_v3": 9.0e-12, "glm4_moe": 2.5e-11, "deepseek_v2": 1.5e-11,
    "deepseek_v2_groups": 7.0e-12, "dots1": 2.7e-11, "ernie4_5_moe": 3.6e-10, "hunyuan_v1_moe": 3.0e-11,
    "granitemoe": 1.4e-9, "jetmoe": 1.6e-11, "qwen3_next": 3.9e-11, "dbrx": 9.9e-12, "llama4": 6.8e-12,
    "lfm2_moe": 2.2e-11, "exaone_moe": 2.7e-11,
}
# CP-LRP's gaps, pinned within 3x, with their reason
CP_GAPS = {
    "gpt_oss": 5.27e-2,  # GptOssExperts._apply_gate: (up + 1) * glu; the 1 takes a bias's share of R
}
# AttnLRP, float64 throughout: all of it the attention softmax rule's (pinned within 3x)
ATTN = {
    "qwen3_moe": 1.44, "qwen3_moe_unnormalised": 1.48, "olmoe": 1.10, "flex_olmo": 0.816, "phimoe": 0.308,
    "minimax": 4.0e-3, "deepseek_v3": 0.103, "glm4_moe": 0.395, "deepseek_v2": 8.9e-2, "deepseek_v2_groups": 0.104,
    "dots1": 0.504, "ernie4_5_moe": 5.75, "hunyuan_v1_moe": 0.363, "gpt_oss": 4.04e-2, "granitemoe": 30.7,
    "jetmoe": 2.68e-2, "qwen3_next": 0.265, "dbrx": 0.251, "llama4": 0.231, "lfm2_moe": 1.37, "exaone_moe": 0.485,
}
FAMILIES = sorted(hf_zoo_moe.FAMILIES)


@functools.lru_cache(maxsize=None)
def _case(name: str):
    """The family's tiny model, bias-free (built once: the tests below leave it as it was)."""
    return _bias_free(hf_zoo_moe.FAMILIES[name]())


def _bias_free(case):
    """The case with every bias parameter 0 but the score-correction biases (in place)."""
    with torch.no_grad():
        for n, p in case.model.named_parameters():
            if n.split(".")[-1] == "bias" or (n.endswith("_bias") and not n.endswith(_CHOICE_BIASES)):
                p.zero_()
    return case


def cp_rules() -> dict:
    composite = xattr.rule.lrp_rules(EPS)
    composite[F.softmax] = xattr.rule.Block()  # the attention weights and the routers' softmax held
    return composite


class _CPInside(xattr.rule.FixedGate):
    """CP-LRP's rules, keyed by an attention module's class: its softmax held, its matrix products
    their gradient (the values take all), its elementwise products and quotients `FixedGate`."""

    kinds = frozenset({"softmax", "matmul", "einsum", "product", "quotient"})

    def backward(self, op, saved, grad):
        if op.kind == "softmax":
            return (None,)
        if op.kind in ("matmul", "einsum"):
            return xattr.rule.pullback(op.fn, *saved.inputs)[1](grad)
        return super().backward(op, saved, grad)


def attn_outside_attention(model) -> dict:
    """AttnLRP everywhere but inside the attention modules, which take CP-LRP's rules."""
    composite = xattr.rule.attn_lrp_rules(EPS)
    composite.update({type(m): _CPInside() for m in model.modules() if type(m).__name__.endswith("Attention")})
    return composite


def _total(case, composite, f, ids, mask) -> torch.Tensor:
    relevance = xattr.layer_lrp(xattr.at_layer(f, case.embeddings), composite=composite)(ids, mask)
    return sum(r.flatten(1).sum(1) for r in relevance)


def gap(case, composite, f=None, ids=None, mask=None) -> float:
    """|sum(R) - f(x)| / |f(x)|, the largest over the batch."""
    f = hf_zoo_moe.in_float64(case.f) if f is None else f
    if ids is None:
        ids, mask, _ = case.inputs()
    total = _total(case, composite, f, ids, mask)
    with torch.no_grad():
        out = f(ids, mask)
    return float(((total - out) / out).abs().max())


@pytest.mark.parametrize("name", FAMILIES)
def test_cp_lrp(name):
    """Conserved to float64's rounding, or the gap of CP_GAPS (within 3x); each example alone gives
    its row and the model is left as it was."""
    case = _case(name)
    ids, mask, _ = case.inputs()
    before = state_snapshot(case.model, ids)
    measured = gap(case, cp_rules())
    if name in CP_GAPS:
        assert CP_GAPS[name] / 3 < measured < CP_GAPS[name] * 3
    else:
        assert measured < 10 * CP[name]
    assert changed_state(before, state_snapshot(case.model, ids)) == []
    f = hf_zoo_moe.in_float64(case.f)
    both, alone = _total(case, cp_rules(), f, ids, mask), _total(case, cp_rules(), f, ids[1:], mask[1:])
    torch.testing.assert_close(alone, both[1:], rtol=1e-9, atol=1e-14)


class _Recorded(xattr.rule.Rule):
    """The softmax's ordinary gradient (AttnLRP's softmax rule), recording what each row loses:
    ``sum_i x_i R_x_i - sum_j R_s_j`` per row, from ``R_x = x * g_x`` and ``R_s = s * g_s``."""

    kinds = frozenset({"softmax"})
    keep_inputs = True

    def __init__(self):
        self.lost = []

    def backward(self, op, saved, grad):
        (x,) = saved.inputs
        s, back = xattr.rule.pullback(op.fn, x)
        (gx,) = back(grad)
        dim = op.options["dim"]
        self.lost.append(((x * gx).sum(dim) - (s * grad).sum(dim)).detach())
        return (gx,)


def _softmax_gap(case) -> tuple:
    """AttnLRP's ``sum(R) - f(x)`` and the sum of what its softmax rows gain or lose, per example."""
    recorded = _Recorded()
    ids, mask, _ = case.inputs()
    f = hf_zoo_moe.in_float64(case.f)
    total = _total(case, {**xattr.rule.attn_lrp_rules(EPS), torch.softmax: recorded}, f, ids, mask)
    assert len(recorded.lost) == 2  # one attention softmax per layer; the routers' rows receive nothing
    with torch.no_grad():
        out = f(ids, mask)
    return total - out, sum(row.flatten(1).sum(1) for row in recorded.lost), out


@pytest.mark.parametrize("name", FAMILIES)
def test_attn_lrp_loses_only_at_the_attention_softmax(name):
    """AttnLRP misses f(x) by its pinned gap, which is exactly the sum of what the attention's
    softmax rows gain or lose under its rule (GPT-OSS: that and the constant 1 of its GLU, below;
    the routers' softmax rows receive nothing). With CP-LRP's rules inside attention alone (the
    routers' softmax, the experts, the shared-expert gates and the norms under AttnLRP's rules)
    the family conserves as under CP-LRP."""
    case = _case(name)
    measured = gap(case, xattr.rule.attn_lrp_rules(EPS))
    assert ATTN[name] / 3 < measured < ATTN[name] * 3
    missed, lost, out = _softmax_gap(case)
    if name not in CP_GAPS:
        torch.testing.assert_close(missed, lost, rtol=1e-7, atol=1e-9 * float(out.abs().max()))
    else:  # GPT-OSS: the constant 1 and the sinks take the rest (below)
        assert ((missed - lost) / out).abs().max() > 1e-3
    outside = gap(case, attn_outside_attention(case.model))
    if name in CP_GAPS:  # the same constant 1 as under CP-LRP
        assert CP_GAPS[name] / 3 < outside < CP_GAPS[name] * 3
    else:
        assert outside < 10 * CP[name]


def _routers(model) -> list:
    out = []
    for block in hf_zoo_moe.blocks(model):
        router = getattr(block, "gate", None) if isinstance(getattr(block, "gate", None), nn.Module) else getattr(block, "router", None)
        if isinstance(router, nn.Module):
            out.append(router)
    return out


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "jetmoe"])  # JetMoE's routers are not found by blocks()
def test_routers_take_no_relevance(name):
    """Relevance taken at the embeddings and at each router's outputs together: the routers'
    is exactly 0 under both mappings (their weights are held gates of the experts' outputs);
    without the embeddings in the split the experts' outputs are constants, the weights' product is
    linear in them and they take it all (a check that the measure can see relevance there)."""
    case = _case(name)
    routers = _routers(case.model)
    assert len(routers) == 2
    ids, mask, _ = case.inputs()
    f = hf_zoo_moe.in_float64(case.f)

    def at_routers(composite, layers):
        relevance = xattr.layer_lrp(xattr.at_layer(f, layers), composite=composite)(ids, mask)
        flat = []

        def walk(x):
            if isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
            elif isinstance(x, torch.Tensor) and x.is_floating_point():
                flat.append(x)

        walk(relevance[-len(routers):])
        return sum(float(r.abs().sum()) for r in flat)

    for composite in (cp_rules(), xattr.rule.attn_lrp_rules(EPS)):
        assert at_routers(composite, list(case.embeddings) + routers) == 0.0
    assert at_routers(xattr.rule.attn_lrp_rules(EPS), routers) > 1e-3


def test_gpt_oss_gaps_are_its_glu_constant_and_its_sinks(monkeypatch):
    """GPT-OSS's experts compute ``(up + 1) * glu`` (glu = gate * sigmoid(alpha * gate), both
    clamped): the product's factors have equal shapes, so ``up + 1`` takes half the relevance
    (`FixedGate`), and the sum hands the 1 its share as a bias's. With ``up * glu`` (another
    function) CP-LRP conserves to float64's rounding. Under AttnLRP its attention sinks (a learned
    logit per head concatenated to each row of scores, and dropped after the softmax) take a
    bias's share of the softmax rule's relevance too: with the 1 gone and the sinks 0, AttnLRP's gap
    is its softmax rows' alone, as in the other families."""
    experts = type(hf_zoo_moe.blocks(_case("gpt_oss").model)[0].experts)

    def without_one(self, gate_up):
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return up * (gate * torch.sigmoid(gate * self.alpha))

    monkeypatch.setattr(experts, "_apply_gate", without_one)
    case = _case("gpt_oss")
    assert gap(case, cp_rules()) < 1e-10
    missed, lost, out = _softmax_gap(case)
    share = ((missed - lost) / out).abs()  # the sinks' share: measured 2.7e-4 and 3.1e-4 of f(x)
    assert (share > 1e-4).all() and (share < 1e-3).all()
    fresh = _bias_free(hf_zoo_moe.FAMILIES["gpt_oss"]())
    with torch.no_grad():
        for layer in fresh.model.layers:
            layer.self_attn.sinks.zero_()
    missed, lost, out = _softmax_gap(fresh)
    torch.testing.assert_close(missed, lost, rtol=1e-7, atol=1e-9 * float(out.abs().max()))


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3", "granitemoe", "lfm2_moe"])
def test_float32_casts_conserve_to_float32_rounding(name):
    """As the model is (its routers and RMS norms cast to float32): CP-LRP conserves to float32's
    rounding (measured 3e-8 to 7.4e-6; GraniteMoE's f(x) is small at one example)."""
    case = _case(name)
    assert 1e-12 < gap(case, cp_rules(), case.f) < 3e-5


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["deepseek_v3", "qwen3_next", "lfm2_moe"]), length=st.integers(2, 8))
def test_conservation_on_other_ids(seed, name, length):
    """Any ids and padding: CP-LRP conserves (the choice of experts, which moves with the ids,
    does not matter: the weights are held whatever they are), and AttnLRP outside attention too."""
    case = _case(name)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, hf_zoo_moe.V, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, length:] = 0
    ids = ids.masked_fill(mask == 0, hf_zoo_moe.hf_zoo.PAD)
    assert gap(case, cp_rules(), ids=ids, mask=mask) < 1e-8
    assert gap(case, attn_outside_attention(case.model), ids=ids, mask=mask) < 1e-8
