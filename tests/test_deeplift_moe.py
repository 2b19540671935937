"""DeepLift through mixture-of-experts blocks (NOTE: [Experts dispatched densely] in deeplift_moe.py,
[DeepLift at top-k routing] in moe_routing.py): the routing rule's multipliers against a slow loop
per token pair, the dense forward against the block's own, summation-to-delta on tiny Mixtral and
Qwen2-MoE (as they are and in float64 throughout) and on a block of our own, the clear error at a
router of another kind, no hooks left (after errors too), and models without such blocks untouched."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import backprop_methods

hf_zoo = pytest.importorskip("hf_zoo")  # its float64_throughout mode; transformers optional
from xattr._src.deeplift_moe import _behind, dense_experts, dense_output, moe_blocks
from xattr._src.moe_routing import Routing, pulled, routing_multipliers, routing_terms, routing_weights

D = torch.float64
EXACT = xattr.rule.exact_deep_lift_rules()


# --- a block of our own with Hugging Face's interface --------------------------------------------


class Router(nn.Module):
    """Softmax top-k, as MixtralTopKRouter / Qwen2MoeTopKRouter (the softmax in float32)."""

    def __init__(self, e, h, k, norm=True):
        super().__init__()
        self.top_k, self.norm_topk_prob = k, norm
        self.weight = nn.Parameter(torch.randn(e, h, dtype=D))

    def forward(self, h):
        logits = F.linear(h, self.weight)
        probs = F.softmax(logits.float(), dim=-1)
        values, index = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            values = values / values.sum(-1, keepdim=True)
        return logits, values.to(logits.dtype), index


class SigmoidRouter(Router):
    """Not softmax-top-k: sigmoid scores (as DeepSeek-V3's)."""

    def forward(self, h):
        logits = F.linear(h, self.weight)
        values, index = torch.topk(torch.sigmoid(logits), self.top_k, dim=-1)
        return logits, values, index


class ScaledRouter(Router):
    """Softmax top-k with a scaling factor (as DeepSeek's routed_scaling_factor)."""

    def forward(self, h):
        logits, values, index = super().forward(h)
        return logits, values * 2.5, index


class Experts(nn.Module):
    """Experts dispatched by index, as MixtralExperts' eager forward."""

    def __init__(self, e, h, i):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h, dtype=D) / h**0.5)
        self.down_proj = nn.Parameter(torch.randn(e, h, i, dtype=D) / i**0.5)
        self.act_fn = nn.SiLU()

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(self.gate_up_proj.shape[0]):
            pos, tok = torch.where(top_k_index.T == e)
            if tok.numel() == 0:
                continue
            g, u = F.linear(hidden_states[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(self.act_fn(g) * u, self.down_proj[e]) * top_k_weights[tok, pos, None]
            out.index_add_(0, tok, y.to(out.dtype))
        return out


class Block(nn.Module):
    def __init__(self, router, experts):
        super().__init__()
        self.gate, self.experts = router, experts

    def forward(self, x):
        b, n, h = x.shape
        flat = x.view(-1, h)
        _, w, idx = self.gate(flat)
        return self.experts(flat, idx, w).reshape(b, n, h)


class Net(nn.Module):
    """(B, L, 6) -> linear -> MoE block (+ residual) -> tanh -> mean over L -> (B,)."""

    def __init__(self, seed=0, k=2, norm=True, router=Router, fail=False):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(6, 8).to(D)
        self.moe = Block(router(4, 8, k, norm), Experts(4, 8, 5))
        self.out = nn.Linear(8, 1).to(D)
        self.fail = fail

    def forward(self, x):
        h = self.inp(x)
        h = h + self.moe(h)
        if self.fail:
            raise RuntimeError("fails after the block")
        return self.out(torch.tanh(h)).mean(1)[:, 0]


def net_inputs(seed=1, b=3, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 6, generator=g, dtype=D), torch.randn(b, n, 6, generator=g, dtype=D)


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def global_hooks() -> int:
    mod = nn.modules.module
    return len(mod._global_forward_hooks) + len(mod._global_forward_pre_hooks)


def relative_delta(f, x, b, split=None):
    if split is None:
        attr, delta = xattr.deep_lift(f, baselines=b, return_delta=True, mapping=EXACT)(x)
    else:
        attr, delta = xattr.layer_deep_lift(split, baselines=b, return_delta=True, mapping=EXACT)(x)
    with torch.no_grad():
        gap = f(x) - f(b)
    return (delta.abs() / gap.abs()).max().item(), attr


# --- the routing rule --------------------------------------------------------------------------


def slow_weights(p, k, norm):
    """G(p) one token at a time with Python loops; S from torch.topk (its tie-break)."""
    out = torch.zeros_like(p)
    for t in range(p.shape[0]):
        chosen = torch.topk(p[t], k).indices.tolist()
        z = sum(p[t, j].item() for j in chosen) if norm else 1.0
        for j in chosen:
            out[t, j] = p[t, j] / z
    return out


def slow_multipliers(p, q, k, norm):
    """M per token pair, entry by entry from the formulas of NOTE: [DeepLift at top-k routing]."""
    n, e = p.shape
    out = torch.zeros(n, e, e, dtype=p.dtype)
    for t in range(n):
        sp, sq = set(torch.topk(p[t], k).indices.tolist()), set(torch.topk(q[t], k).indices.tolist())
        ip = [1.0 if j in sp else 0.0 for j in range(e)]
        iq = [1.0 if j in sq else 0.0 for j in range(e)]
        rp = 1 / sum(p[t, j].item() for j in sp) if norm else 1.0
        rq = 1 / sum(q[t, j].item() for j in sq) if norm else 1.0
        kappa = rp * rq if norm else 0.0
        avg_p = [(p[t, j].item() + q[t, j].item()) / 2 for j in range(e)]
        avg_i = [(ip[j] + iq[j]) / 2 for j in range(e)]
        dp = [p[t, j].item() - q[t, j].item() for j in range(e)]
        jump = sum(avg_p[j] * (ip[j] - iq[j]) for j in range(e))
        union = [j for j in range(e) if j in sp or j in sq]
        norm_u = sum(dp[j] ** 2 for j in union)
        if norm_u == 0:
            union, norm_u = list(range(e)), sum(d * d for d in dp)
        for a in range(e):
            w = avg_p[a] * avg_i[a] * kappa
            c = avg_p[a] * (rp + rq) / 2 * (ip[a] - iq[a]) - w * jump
            for j in range(e):
                m = ((ip[a] * rp + iq[a] * rq) / 2 if a == j else 0.0) - w * avg_i[j]
                if j in union and norm_u > 0:
                    m += c * dp[j] / norm_u
                out[t, a, j] = m
    return out


def probability_rows(seed, n, e, ties):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n, e, generator=g, dtype=D)
    if ties:  # exact ties within rows, and an input row equal to its reference on some experts
        logits[0, :, 1] = logits[0, :, 0]
        logits[1, :, e - 1] = logits[1, :, e - 2]
        logits[1, 0] = logits[0, 0]
    return torch.softmax(logits, -1).unbind(0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), e=st.integers(2, 6), k_minus=st.integers(0, 5), norm=st.booleans(),
       ties=st.booleans())
def test_multipliers_match_a_loop_and_conserve(seed, e, k_minus, norm, ties):
    k = 1 + k_minus % e
    p, q = probability_rows(seed, 4, e, ties)
    m = routing_multipliers(p, q, Routing(k, norm))
    torch.testing.assert_close(m, slow_multipliers(p, q, k, norm), rtol=0, atol=1e-12)
    dg = slow_weights(p, k, norm) - slow_weights(q, k, norm)
    torch.testing.assert_close(m @ (p - q).unsqueeze(-1), dg.unsqueeze(-1), rtol=0, atol=1e-12)
    g = torch.randn(4, e, generator=torch.Generator().manual_seed(seed), dtype=D)
    torch.testing.assert_close(pulled(g, routing_terms(p, q, Routing(k, norm))), (g.unsqueeze(-2) @ m).squeeze(-2), rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), e=st.integers(2, 6), k_minus=st.integers(0, 5), norm=st.booleans())
def test_multipliers_at_equal_rows_are_the_jacobian(seed, e, k_minus, norm):
    k = 1 + k_minus % e
    p, _ = probability_rows(seed, 3, e, False)
    jac = torch.func.vmap(torch.func.jacrev(lambda r: routing_weights(r, Routing(k, norm))))(p)
    torch.testing.assert_close(routing_multipliers(p, p, Routing(k, norm)), jac, rtol=0, atol=1e-12)
    torch.testing.assert_close(routing_weights(p, Routing(k, norm)), slow_weights(p, k, norm), rtol=0, atol=1e-15)


def test_set_changes_are_exercised():
    """The random pairs above do switch experts (the jump term is not idle)."""
    p, q = probability_rows(3, 50, 4, False)
    changed = (torch.topk(p, 2).indices.sort().values != torch.topk(q, 2).indices.sort().values).any(-1)
    assert changed.sum() > 10
    c = routing_terms(p, q, Routing(2, True)).unflatten(-1, (5, 4))[:, 3]
    assert c[changed].abs().amax(-1).min() > 1e-4


# --- a block of our own -------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("k", [1, 2])
def test_own_block_conserves_in_float64(k, norm):
    """In float64 throughout (the router's softmax too): float64's rounding; a closure f."""
    model = Net(k=k, norm=norm).eval()
    f = hf_zoo.in_float64(model)
    x, b = net_inputs()
    rel, _ = relative_delta(f, x, b)
    assert rel < 1e-12
    rel_layer, _ = relative_delta(f, x, b, xattr.at_layer(f, model.inp))
    assert rel_layer < 1e-12


def test_own_block_was_off_without_dense_dispatch(monkeypatch):
    """The same call with the experts dispatched by index: far from conserving (the test can fail)."""
    model = Net().eval()
    f = hf_zoo.in_float64(model)
    x, b = net_inputs()
    assert relative_delta(f, x, b)[0] < 1e-12
    monkeypatch.setattr(backprop_methods, "dense_experts", lambda f: contextlib.nullcontext())
    assert relative_delta(f, x, b)[0] > 1e-3


def test_float32_router_softmax_conserves_to_float32_rounding():
    model = Net().eval()
    x, b = net_inputs()
    assert relative_delta(model, x, b)[0] < 1e-6


def test_dense_forward_equals_the_blocks_own():
    for norm in (True, False):
        model = Net(seed=3, norm=norm).eval()
        for seed in range(3):
            h = torch.randn(7, 8, generator=torch.Generator().manual_seed(seed), dtype=D)
            logits, w, idx = model.moe.gate(h)
            own = model.moe.experts(h, idx, w)
            dense = dense_output(model.moe.experts, model.moe.gate, h, logits, idx, w)
            torch.testing.assert_close(dense, own, rtol=0, atol=1e-13)
        x, _ = net_inputs()
        plain = model(x)
        with dense_experts(model):
            assert hooks(model) == 3
            torch.testing.assert_close(model(x), plain, rtol=0, atol=1e-13)
        assert hooks(model) == 0


def test_nothing_changes_on_the_model():
    model = Net().eval()
    model.moe.train()  # a mixed mode, kept
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, b = net_inputs()
    xc, bc = x.clone(), b.clone()
    seen = []
    model.out.register_forward_pre_hook(lambda m, a: seen.append(hooks(model)))  # the user's own hook, kept
    xattr.deep_lift(model, baselines=b)(x)
    assert seen and min(seen) == 4  # during the call: the user's hook and the three of the block
    assert hooks(model) == 1 and global_hooks() == 0
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(x, xc) and torch.equal(b, bc)


def test_hooks_are_removed_after_an_exception():
    model = Net(fail=True).eval()
    x, b = net_inputs()
    with pytest.raises(RuntimeError, match="fails after the block"):
        xattr.deep_lift(model, baselines=b)(x)
    assert hooks(model) == 0 and global_hooks() == 0


def test_a_router_of_another_kind_is_refused():
    model = Net(router=SigmoidRouter).eval()
    x, b = net_inputs()
    with pytest.raises(ValueError, match=r"moe \(router SigmoidRouter\) routes by other weights"):
        xattr.deep_lift(model, baselines=b)(x)
    assert hooks(model) == 0
    scaled = Net(router=ScaledRouter).eval()
    with pytest.raises(ValueError, match=r"routes by other weights .* \(they differ by"):
        xattr.layer_deep_lift(xattr.at_layer(scaled, scaled.inp), baselines=b)(x)
    assert hooks(scaled) == 0


_GLOBAL = Net(seed=5).eval()
_HOLDER = types.SimpleNamespace(model=Net(seed=6).eval())


def _reads_a_global(x):
    with hf_zoo.float64_throughout():
        return _GLOBAL(x)


def _reads_an_attribute(x):
    with hf_zoo.float64_throughout():
        return _HOLDER.model(x)


def test_a_model_read_from_a_global_is_found_behind_the_function():
    x, b = net_inputs()
    assert _behind(_reads_a_global) == [_GLOBAL]
    rel, _ = relative_delta(_reads_a_global, x, b)
    assert rel < 1e-12
    assert hooks(_GLOBAL) == 0 and global_hooks() == 0


def test_a_model_found_nowhere_is_found_as_it_runs():
    x, b = net_inputs()
    assert _behind(_reads_an_attribute) == []
    rel, _ = relative_delta(_reads_an_attribute, x, b)
    assert rel < 1e-12
    assert hooks(_HOLDER.model) == 0 and global_hooks() == 0


def test_a_closure_finds_its_model():
    model = Net().eval()

    def f(x):
        return model(x) * 2

    assert _behind(f) == [model] and len(moe_blocks(model)) == 1


def test_deep_lift_shap_conserves():
    model = Net().eval()
    f = hf_zoo.in_float64(model)
    x, b = net_inputs()
    dist = torch.cat([b, b.flip(0)])[:4]
    attr, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True, mapping=EXACT)(x)
    with torch.no_grad():
        gap = f(x)[:, None] - f(dist)[None, :]
    assert (delta.abs() / gap.abs()).max() < 1e-12


# --- models without such blocks ----------------------------------------------------------------


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)).to(D).eval()


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).to(D).eval()
    return nn.Sequential(layer, nn.Flatten(), nn.Linear(32, 2).to(D)).eval()


@pytest.mark.parametrize("which", ["cnn", "encoder"])
def test_models_without_blocks_are_untouched(which, monkeypatch):
    model = _cnn() if which == "cnn" else _encoder()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((3, 1, 8, 8) if which == "cnn" else (3, 4, 8), generator=g, dtype=D)
    f = xattr.target(model, 1)
    seen = []
    model[-1].register_forward_pre_hook(lambda m, a: seen.append((hooks(model), global_hooks())))
    now = xattr.deep_lift(f, baselines=0.0)(x)
    assert seen and set(seen) == {(1, 0)}  # the test's own hook alone, during the call
    monkeypatch.setattr(backprop_methods, "dense_experts", lambda f: contextlib.nullcontext())  # the code before
    assert torch.equal(now, xattr.deep_lift(f, baselines=0.0)(x))
    assert moe_blocks(model) == ()


# --- Hugging Face's Mixtral and Qwen2-MoE ------------------------------------------------------

HF = ["mixtral:eager", "qwen2_moe:eager"]


@pytest.mark.skipif(hf_zoo.transformers is None, reason="needs transformers")
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("key", HF)
def test_hugging_face_moe_conserves(key):
    """Layer DeepLift at the word embeddings: float32's rounding as they are (the routers'
    softmax, the RMS norms), float64's in float64 throughout."""
    case = hf_zoo.ZOO[key]()
    assert len(moe_blocks(case.model)) == 2
    as_is, attr = hf_zoo.deep_lift_gap(case, EXACT, case.f, 1e-5)
    assert as_is < 1e-6
    in_64, attr64 = hf_zoo.deep_lift_gap(case, EXACT, hf_zoo.in_float64(case.f), 1e-5)
    assert in_64 < 1e-12
    assert torch.allclose(attr, attr64, rtol=0, atol=1e-5 * attr64.abs().max())
    assert hooks(case.model) == 0


@pytest.mark.skipif(hf_zoo.transformers is None, reason="needs transformers")
@pytest.mark.parametrize("key", HF)
def test_hugging_face_dense_forward(key):
    case = hf_zoo.ZOO[key]()
    block = next(m for m in case.model.modules() if hasattr(m, "experts"))
    for seed in range(2):
        h = torch.randn(9, 32, generator=torch.Generator().manual_seed(seed), dtype=D)
        logits, w, idx = block.gate(h)
        own = block.experts(h, idx, w)
        torch.testing.assert_close(dense_output(block.experts, block.gate, h, logits, idx, w), own, rtol=0, atol=1e-14)
