"""LRP against slow references written from the papers' formulas, in relevance form.

Each rule is written out as ``R_i = sum_j (contribution of i to j) / (stabilised total of j) R_j``
for one example at a time, on a dense matrix: a linear layer's own weights, and for convolutions,
batch norm and average pooling the matrix found by applying the layer to basis vectors (a conv
is a sparse linear map); max pooling picks its winners by explicit loops over windows. The
reference walks the layers backwards from ``R = f(x)`` at the target output. xattr computes the
same numbers as a modified gradient (NOTE: [LRP in gradient form] in xattr/_src/lrp_rules.py),
so every test below compares two independent computations. Then: conservation properties
(hypothesis), rule choice by kind, type, name and instance, merge_batch_norm, clear errors, and
the transforms (vmap, batch invariance, many outputs, layers, no state left behind).

References: Bach et al. 2015 (epsilon, alpha-beta); Montavon et al. 2017 (z+, w^2, z^B),
2019 (gamma, composites); Ali et al. 2022 (layer norm and attention held constant).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.rule import (
    AlphaBeta,
    Epsilon,
    FixedAttention,
    FixedStd,
    Flat,
    Gamma,
    Pass,
    PositiveWeights,
    WSquare,
    ZBox,
    ZPlus,
    epsilon_gamma_box,
    epsilon_plus,
    lrp_rules,
)
from xattr.testing import check_batch_invariance
from xattr.testing import strategies as xst
from xattr.testing.strategies import random_tensor

from registry import changed_state, state_snapshot

DT = torch.float64


# ----------------------------------------------------------------------------- the reference, in relevance form


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), sign(0) = +1."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def spread(C: torch.Tensor, denom: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``R_i = sum_j C[j, i] / denom[j] * R[j]``: each output's relevance shared by contributions."""
    return torch.einsum("ji,j->i", C, R / denom)


def ref_epsilon(eps=1e-9):
    def rule(x, M, b, R, **_):
        Z = M * x  # Z[j, i] = x_i w_ij
        return spread(Z, stab(Z.sum(1) + b, eps), R)

    return rule


def ref_gamma(gamma, eps=1e-9, modify_bias=True, zero_bias=False):
    def rule(x, M, b, R, **_):
        Z = (M + gamma * M.clamp(min=0)) * x
        bias = torch.zeros_like(b) if zero_bias else (b + gamma * b.clamp(min=0) if modify_bias else b)
        return spread(Z, stab(Z.sum(1) + bias, eps), R)

    return rule


def ref_positive(eps=1e-9, zero_bias=False):
    def rule(x, M, b, R, **_):
        Z = M.clamp(min=0) * x
        return spread(Z, stab(Z.sum(1) + (0 * b if zero_bias else b), eps), R)

    return rule


def ref_alpha_beta(alpha, beta, eps=1e-9, bias=True):
    def rule(x, M, b, R, **_):
        Z = M * x
        Zp, Zn = Z.clamp(min=0), Z.clamp(max=0)
        bp, bn = (b.clamp(min=0), b.clamp(max=0)) if bias else (0 * b, 0 * b)
        return alpha * spread(Zp, stab(Zp.sum(1) + bp, eps), R) - beta * spread(Zn, stab(Zn.sum(1) + bn, eps), R)

    return rule


def ref_zbox(low, high, eps=1e-9):
    def rule(x, M, b, R, **_):
        lo = torch.as_tensor(low, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        hi = torch.as_tensor(high, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        Z = M * x - M.clamp(min=0) * lo - M.clamp(max=0) * hi
        return spread(Z, stab(Z.sum(1), eps), R)

    return rule


def ref_wsquare(eps=1e-9):
    def rule(x, M, b, R, **_):
        return spread(M**2, stab((M**2).sum(1), eps), R)

    return rule


def ref_flat(eps=1e-9):
    def rule(x, M, b, R, connected, **_):
        return spread(connected, stab(connected.sum(1), eps), R)

    return rule


PASS_THROUGH = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Flatten, nn.Identity, nn.Dropout)


def max_pool_matrix(pool: nn.MaxPool2d, a: torch.Tensor) -> torch.Tensor:
    """The 0/1 matrix routing each window's maximum (kernel = stride, no padding), by loops."""
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    c, h, w = a.shape
    ho, wo = h // k, w // k
    M = torch.zeros(c * ho * wo, c * h * w, dtype=a.dtype)
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                best, where = -math.inf, None
                for di in range(k):
                    for dj in range(k):
                        v = a[ch, i * k + di, j * k + dj].item()
                        if v > best:
                            best, where = v, (i * k + di, j * k + dj)
                M[(ch * ho + i) * wo + j, (ch * h + where[0]) * w + where[1]] = 1.0
    return M


def dense(layer: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, b) with layer(a) = M a + b, from the layer applied to 0 and to each basis vector."""
    if isinstance(layer, nn.MaxPool2d):
        M = max_pool_matrix(layer, a)
        return M, torch.zeros(M.shape[0], dtype=a.dtype)
    n = a.numel()
    with torch.no_grad():
        b = layer(torch.zeros_like(a)[None]).reshape(-1)
        M = (layer(torch.eye(n, dtype=a.dtype).reshape((n,) + a.shape)).reshape(n, -1) - b).T
    return M, b


def connectivity(layer: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    """Which inputs each output of a linear or conv layer reads (for LRP-flat)."""
    if isinstance(layer, nn.Linear):
        return torch.ones(layer.out_features, layer.in_features, dtype=a.dtype)
    if isinstance(layer, nn.Conv2d):
        ones = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, bias=False).to(a.dtype)  # fmt: skip
        nn.init.ones_(ones.weight)
        return (dense(ones, a)[0] != 0).to(a.dtype)
    return None


def leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def reference_lrp(layers, x, target: int, rules: dict | None = None, default=None, every_layer: bool = False):
    """LRP of ``layers`` (run in order) at output ``target``, one example at a time.

    ``rules`` maps layer positions to reference rules (default: epsilon 1e-9); layers in
    PASS_THROUGH hand relevance on unchanged. Returns R at the input, (B, *x.shape[1:]), or with
    ``every_layer`` the list of R at every layer's input and at the output.
    """
    rules = rules or {}
    default = default or ref_epsilon()
    per_example = []
    for a0 in x:
        acts = [a0]
        with torch.no_grad():
            for layer in layers:
                acts.append(layer(acts[-1][None])[0])
        R = torch.zeros_like(acts[-1])
        R[target] = acts[-1][target]
        relevances = [R]
        for k in reversed(range(len(layers))):
            layer, a = layers[k], acts[k]
            if isinstance(layer, PASS_THROUGH):
                R = R.reshape(a.shape)
            else:
                M, b = dense(layer, a)
                rule = rules.get(k, default)
                R = rule(a.reshape(-1), M, b, R.reshape(-1), connected=connectivity(layer, a)).reshape(a.shape)
            relevances.insert(0, R)
        per_example.append(relevances if every_layer else R)
    if every_layer:
        return [torch.stack(rs) for rs in zip(*per_example)]
    return torch.stack(per_example)


# ----------------------------------------------------------------------------- models


def _seeded(seed: int, make) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make().to(DT).eval()


def mlp() -> nn.Sequential:
    """Linear, GELU, linear, tanh, linear (biases on)."""
    return _seeded(1, lambda: nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)))


def cnn() -> nn.Sequential:
    """conv, ReLU, max-pool, batch norm, conv, ReLU, average pool, flatten, linear."""

    def make():
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3),
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
        )  # fmt: skip
        with torch.no_grad():
            bn = model[3]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        return model

    return _seeded(2, make)


MODELS = {"mlp": (mlp, (5,)), "cnn": (cnn, (2, 8, 8))}
CONV_AND_LINEAR = {"mlp": [0, 2, 4], "cnn": [0, 4, 8]}  # positions of the weighted layers (not batch norm)


def setup(kind: str, seed: int = 3, batch: int = 3):
    make, shape = MODELS[kind]
    return make(), random_tensor((batch,) + shape, seed=seed)


def run(model, x, target, mapping, **kw):
    return xattr.lrp(xattr.target(model, target), composite=mapping, **kw)(x)


def with_rule(rule) -> dict:
    return {**lrp_rules(), F.linear: rule, torch.conv2d: rule}


# ----------------------------------------------------------------------------- each rule against its formula


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("eps", [1e-9, 0.3])
def test_epsilon(kind, eps):
    """lrp_rules(eps): epsilon at every linear, conv, batch-norm and pooling layer; GELU, tanh and
    ReLU pass relevance on."""
    model, x = setup(kind)
    want = reference_lrp(leaves(model), x, 1, default=ref_epsilon(eps))
    torch.testing.assert_close(run(model, x, 1, lrp_rules(eps)), want)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("modify_bias, zero_bias", [(True, False), (False, False), (True, True)])
def test_gamma(kind, modify_bias, zero_bias):
    model, x = setup(kind)
    rule = Gamma(0.3, modify_bias=modify_bias, zero_bias=zero_bias)
    ref = ref_gamma(0.3, modify_bias=modify_bias, zero_bias=zero_bias)
    want = reference_lrp(leaves(model), x, 2, {k: ref for k in CONV_AND_LINEAR[kind]})
    torch.testing.assert_close(run(model, x, 2, with_rule(rule)), want)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("zero_bias", [False, True])
def test_positive_weights(kind, zero_bias):
    model, x = setup(kind)
    want = reference_lrp(leaves(model), x, 0, {k: ref_positive(zero_bias=zero_bias) for k in CONV_AND_LINEAR[kind]})
    torch.testing.assert_close(run(model, x, 0, with_rule(PositiveWeights(zero_bias=zero_bias))), want)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("alpha, beta, bias", [(1.0, 0.0, True), (2.0, 1.0, True), (2.0, 1.0, False), (1.5, 0.5, True)])
def test_alpha_beta(kind, alpha, beta, bias):
    """Inputs of both signs (standard normal), biases of both signs."""
    model, x = setup(kind)
    assert (x < 0).any() and (x > 0).any()
    ref = ref_alpha_beta(alpha, beta, bias=bias)
    want = reference_lrp(leaves(model), x, 1, {k: ref for k in CONV_AND_LINEAR[kind]})
    torch.testing.assert_close(run(model, x, 1, with_rule(AlphaBeta(alpha, beta, bias=bias))), want)


def test_alpha_beta_needs_alpha_minus_beta_one():
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        AlphaBeta(2.0, 0.5)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_z_plus(kind):
    model, x = setup(kind)
    want = reference_lrp(leaves(model), x, 2, {k: ref_alpha_beta(1.0, 0.0, bias=False) for k in CONV_AND_LINEAR[kind]})
    torch.testing.assert_close(run(model, x, 2, with_rule(ZPlus())), want)


def test_pass_keeps_relevance_through_activations():
    """Pass on tanh, sigmoid and GELU: the relevance of each activation's input is its output's."""
    model = _seeded(4, lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Sigmoid(),
                                             nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 2)))  # fmt: skip
    x = random_tensor((3, 4), seed=5)
    want = reference_lrp(leaves(model), x, 1)
    torch.testing.assert_close(run(model, x, 1, lrp_rules()), want)
    # and without Pass, tanh's ordinary derivative scales the relevance: a different answer
    plain = {k: v for k, v in lrp_rules().items() if not isinstance(v, Pass)}
    assert not torch.allclose(run(model, x, 1, plain), want)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", ["wsquare", "flat", "zbox", "zbox_tensor_bounds"])
def test_input_layer_rules(kind, name):
    """w^2, flat and z^B on the first layer return its input's relevance itself (not x * g)."""
    model, x = setup(kind)
    shape = MODELS[kind][1]
    low, high = -3.0, 3.0
    if name == "zbox_tensor_bounds":
        low = -2.5 - torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=DT)
        high = 2.5 + torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    x = x.clamp(-2.5, 2.5)
    rule, ref = {
        "wsquare": (WSquare(), ref_wsquare()),
        "flat": (Flat(), ref_flat()),
        "zbox": (ZBox(low, high), ref_zbox(low, high)),
        "zbox_tensor_bounds": (ZBox(low, high), ref_zbox(low, high)),
    }[name]
    first = model[0]
    want = reference_lrp(leaves(model), x, 0, {0: ref})
    got = xattr.lrp(xattr.target(model, 0), composite={**lrp_rules(), first: rule})(x)
    torch.testing.assert_close(got, want)


def test_fixed_std_is_lrp_0_on_the_layer_norm_with_its_std_held():
    """LN(x) = w (x - mean x) / std + b with std a constant is the linear map A = diag(w / std) C
    (C centres), so R_i = sum_j x_i A_ji / y_j R_j."""
    model = _seeded(6, lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    x = random_tensor((3, 4), seed=7)
    ln = model[1]

    def ref_ln(a, M, b, R, **_):
        n = a.numel()
        std = torch.sqrt(a.var(unbiased=False) + ln.eps)
        A = (ln.weight.detach() / std)[:, None] * (torch.eye(n, dtype=DT) - 1.0 / n)
        y = A @ a + ln.bias.detach()
        return spread(A * a, y, R)

    assert isinstance(lrp_rules()[F.layer_norm], FixedStd)
    want = reference_lrp(leaves(model), x, 2, {1: ref_ln})
    torch.testing.assert_close(run(model, x, 2, lrp_rules()), want)


class Attention(nn.Module):
    """One head of attention over L tokens: q, k, v projections, F.scaled_dot_product_attention,
    flatten, a linear read-out."""

    def __init__(self, d=5, dh=4, length=4, mask=None, causal=False):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, dh), nn.Linear(d, dh), nn.Linear(d, dh)
        self.out = nn.Linear(length * dh, 3)
        self.mask, self.causal = mask, causal

    def forward(self, x):
        q, k, v = (m(x)[:, None] for m in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal)[:, 0]
        return self.out(o.flatten(1))


@pytest.mark.parametrize("variant", ["plain", "causal", "bool_mask", "float_mask"])
def test_fixed_attention_holds_the_attention_weights(variant):
    """o = A v with A = softmax(q k^T / sqrt(d)) held constant: R_v[t, d] = sum_s v_td A_st / o_sd R_o[s, d];
    queries and keys get no relevance; the projections and read-out are epsilon layers."""
    length = 4
    mask = None
    if variant == "bool_mask":
        mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    if variant == "float_mask":
        mask = random_tensor((length, length), seed=8)
    model = _seeded(9, lambda: Attention(mask=mask, causal=variant == "causal"))
    x = random_tensor((2, length, 5), seed=10)
    assert isinstance(lrp_rules()[F.scaled_dot_product_attention], FixedAttention)
    got = run(model, x, 1, lrp_rules())
    for b in range(x.shape[0]):
        a = x[b]
        with torch.no_grad():
            q, k, v = model.q(a), model.k(a), model.v(a)
            scores = q @ k.T / math.sqrt(q.shape[-1])
            if variant == "causal":
                scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), -math.inf)
            if variant == "bool_mask":
                scores = scores.masked_fill(~mask, -math.inf)
            if variant == "float_mask":
                scores = scores + mask
            A = torch.softmax(scores, -1)
            o = A @ v
            y = model.out(o.reshape(1, -1))[0]
        R_y = torch.zeros_like(y)
        R_y[1] = y[1]
        W, c = model.out.weight.detach(), model.out.bias.detach()
        R_o = ref_epsilon()(o.reshape(-1), W, c, R_y).reshape(o.shape)
        R_v = torch.einsum("td,st,sd->td", v, A, R_o / o)  # the attention weights held constant
        Wv, cv = model.v.weight.detach(), model.v.bias.detach()
        R_x = torch.stack([ref_epsilon()(a[t], Wv, cv, R_v[t]) for t in range(length)])
        torch.testing.assert_close(got[b], R_x)


# ----------------------------------------------------------------------------- choosing rules


def test_composite_keys_by_type_name_and_instance():
    """Name beats instance beats type beats kind, checked module by module from the innermost."""
    model, x = setup("cnn")
    mapping = {
        **lrp_rules(),
        torch.conv2d: Epsilon(0.2),  # kind: overridden by the type key for every conv
        nn.Conv2d: Gamma(0.5),  # type: conv 0
        "4": PositiveWeights(),  # name: conv 4 (beats the type key)
        model[8]: AlphaBeta(2.0, 1.0),  # instance: the linear layer
        nn.BatchNorm2d: Epsilon(0.1),
    }
    rules = {0: ref_gamma(0.5), 4: ref_positive(), 8: ref_alpha_beta(2.0, 1.0), 3: ref_epsilon(0.1)}
    want = reference_lrp(leaves(model), x, 1, rules)
    torch.testing.assert_close(run(model, x, 1, mapping), want)


def test_innermost_module_wins():
    """A name key on a block covers its ops; one on a layer inside it wins for that layer; a rule
    that does not accept an op's kind (Gamma on ReLU) leaves it to the next key."""
    model = _seeded(11, lambda: nn.Sequential(
        nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5)), nn.ReLU(), nn.Linear(5, 2)))  # fmt: skip
    x = random_tensor((3, 4), seed=12)
    mapping = {**lrp_rules(), "0": Gamma(0.5), "0.2": Epsilon(0.3), model: ZPlus()}
    rules = {0: ref_gamma(0.5), 2: ref_epsilon(0.3), 4: ref_alpha_beta(1, 0, bias=False)}
    want = reference_lrp(leaves(model), x, 0, rules)
    torch.testing.assert_close(run(model, x, 0, mapping), want)


def test_epsilon_gamma_box_composite():
    """z^B on the first conv, gamma 0.25 on the other conv, epsilon 0.25 on the linear layer,
    epsilon 1e-9 on pooling and batch norm (Montavon et al. 2019's composite)."""
    model, _ = setup("cnn")
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(13), dtype=DT)
    want = reference_lrp(leaves(model), x, 2, {0: ref_zbox(0.0, 1.0), 4: ref_gamma(0.25), 8: ref_epsilon(0.25)})
    got = xattr.lrp(xattr.target(model, 2), composite=epsilon_gamma_box("0", 0.0, 1.0))(x)
    torch.testing.assert_close(got, want)
    by_instance = xattr.lrp(xattr.target(model, 2), composite=epsilon_gamma_box(model[0], 0.0, 1.0))(x)
    torch.testing.assert_close(by_instance, want)


def test_epsilon_plus_composite():
    model, x = setup("cnn")
    want = reference_lrp(leaves(model), x, 0, {0: ref_alpha_beta(1, 0, bias=False), 4: ref_alpha_beta(1, 0, bias=False),
                                                8: ref_epsilon(1e-6)})  # fmt: skip
    torch.testing.assert_close(run(model, x, 0, epsilon_plus()), want)


def test_conflicting_kind_keys_raise():
    with pytest.raises(ValueError, match="both stand for every 'conv' op"):
        xattr.lrp(xattr.target(cnn(), 0), composite={torch.conv2d: Epsilon(), torch.conv1d: Gamma()})


# ----------------------------------------------------------------------------- conservation (hypothesis)


def _bias_free(spec) -> nn.Module:
    model = spec.build()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model


relu_specs = xst.model_specs(activations=("relu",), softmax=False, n_out=2)


@given(relu_specs, xst.seeds)
def test_epsilon_conserves_on_bias_free_relu_nets(spec, seed):
    """sum(R) == f(x) with a tiny epsilon when no bias absorbs relevance (max-pools included)."""
    model = _bias_free(spec)
    x = random_tensor((2,) + spec.in_shape, seed)
    R, delta = xattr.lrp(xattr.target(model, 1), composite=lrp_rules(1e-12), return_delta=True)(x)
    out = model(x)[:, 1].detach()
    torch.testing.assert_close(R.reshape(2, -1).sum(1), out, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(delta, R.reshape(2, -1).sum(1) - out)


@given(relu_specs, xst.seeds)
def test_z_plus_conserves_on_bias_free_relu_nets_with_positive_inputs(spec, seed):
    """z+ shares each unit's relevance among its positive contributions, which exist wherever a
    ReLU is on: with f = relu(output), sum(R) == f(x) exactly (and R >= 0)."""
    model = _bias_free(spec)
    x = random_tensor((2,) + spec.in_shape, seed).abs()
    f = lambda x: torch.relu(model(x)[:, 0])  # noqa: E731
    R = xattr.lrp(f, composite={**lrp_rules(1e-12), F.linear: ZPlus(1e-12), torch.conv2d: ZPlus(1e-12)})(x)
    torch.testing.assert_close(R.reshape(2, -1).sum(1), f(x).detach(), atol=1e-9, rtol=1e-8)
    assert (R >= -1e-12).all()


@given(
    xst.model_specs(activations=("relu", "tanh"), softmax=False, n_out=2), xst.seeds, st.sampled_from([(1.0, 0.0), (2.0, 1.0)])
)
def test_alpha_beta_conserves_at_every_layer(spec, seed, ab):
    """At each linear or conv layer, sum_i R_i == sum_j R_j (alpha z+_j / (z+_j + eps) - beta z-_j / (z-_j - eps)),
    i.e. == sum_j R_j (alpha - beta) = sum_j R_j wherever both parts exist (bias left out)."""
    alpha, beta = ab
    model = spec.build()
    x = random_tensor((2,) + spec.in_shape, seed)
    f = xattr.target(model, 0)
    mapping = with_rule(AlphaBeta(alpha, beta, bias=False))
    for layer in [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
        r_in = xattr.layer_lrp(xattr.at_layer(f, layer, inputs=True), composite=mapping)(x)
        r_out = xattr.layer_lrp(xattr.at_layer(f, layer), composite=mapping)(x)
        a = xattr.layer_activation(xattr.at_layer(f, layer, inputs=True))(x)
        w = layer.weight.detach()
        if isinstance(layer, nn.Linear):
            op = F.linear
        else:
            op = lambda t, w, layer=layer: layer._conv_forward(t, w, None)  # noqa: E731
        zp = op(a.clamp(min=0), w.clamp(min=0)) + op(a.clamp(max=0), w.clamp(max=0))
        zn = op(a.clamp(min=0), w.clamp(max=0)) + op(a.clamp(max=0), w.clamp(min=0))
        share = alpha * zp / stab(zp, 1e-9) - beta * zn / stab(zn, 1e-9)
        want = (r_out * share).reshape(2, -1).sum(1)
        torch.testing.assert_close(r_in.reshape(2, -1).sum(1), want, atol=1e-9, rtol=1e-7)


# ----------------------------------------------------------------------------- merge_batch_norm


def bn_model() -> nn.Sequential:
    def make():
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Flatten(), nn.Linear(16, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3),
        )  # fmt: skip
        with torch.no_grad():
            for bn in (model[1], model[4], model[8]):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(-1.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)
        return model

    return _seeded(14, make)


def test_merge_batch_norm_same_function_original_untouched():
    model = bn_model()
    x = random_tensor((3, 2, 6, 6), seed=15)
    before = state_snapshot(model, x)
    merged = xattr.merge_batch_norm(model)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert all(isinstance(model[i], nn.BatchNorm2d if i < 8 else nn.BatchNorm1d) for i in (1, 4, 8))
    torch.testing.assert_close(merged(x), model(x), atol=1e-12, rtol=1e-10)
    for name in ("1", "4", "8"):
        assert isinstance(merged.get_submodule(name), nn.Identity)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in merged.modules())
    assert not any(m.training for m in merged.modules())  # the Identity takes the batch norm's mode
    assert merged.get_submodule("0").bias is not None  # a bias-free conv gains the batch norm's shift
    # the merged conv is one layer to the rules: gamma sees the folded weights
    names = [n for n, m in model.named_modules() if not list(m.children())]
    layers = [merged.get_submodule(n) for n in names]
    want = reference_lrp(layers, x, 1, {0: ref_gamma(0.5), 3: ref_gamma(0.5), 7: ref_epsilon(0.1)})
    got = run(merged, x, 1, {**lrp_rules(), nn.Conv2d: Gamma(0.5), nn.Linear: Epsilon(0.1), "10": Epsilon()})
    torch.testing.assert_close(got, want)


class SharedOutput(nn.Module):
    """The conv's output feeds the batch norm and a skip: merging would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        z = self.conv(x)
        return (self.bn(z) + z + self.bn2(self.conv2(z))).sum((1, 2, 3))


def test_merge_batch_norm_leaves_shared_outputs_alone():
    model = _seeded(16, SharedOutput)
    with torch.no_grad():
        model.bn.running_var.fill_(2.0)
        model.bn2.running_mean.fill_(0.3)
    x = random_tensor((2, 2, 5, 5), seed=17)
    merged = xattr.merge_batch_norm(model)
    assert isinstance(merged.bn, nn.BatchNorm2d) and isinstance(merged.bn2, nn.Identity)
    torch.testing.assert_close(merged(x), model(x))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so Sequential neighbours are merged."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = self.body(x).mean((2, 3))
        return self.head(h) if h.sum() > 0 else -self.head(h)


def test_merge_batch_norm_falls_back_to_sequential_neighbours():
    model = _seeded(18, Untraceable)
    with torch.no_grad():
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    x = random_tensor((2, 2, 5, 5), seed=19)
    merged = xattr.merge_batch_norm(model)
    assert type(merged) is Untraceable and merged is not model
    assert isinstance(merged.body[1], nn.Identity) and isinstance(model.body[1], nn.BatchNorm2d)
    assert not any(m.training for m in merged.modules())
    torch.testing.assert_close(merged(x), model(x))


@pytest.mark.parametrize("traceable", [True, False])
def test_merge_batch_norm_with_a_linear_on_the_last_dim_keeps_the_function(traceable):
    """A linear acts on the last dim, BatchNorm1d on dim 1: merged only for (B, F) activations;
    on (B, C, L) (here C == L, so a per-feature fold would run and be wrong) the merged linear
    computes the two unmerged."""
    torch.manual_seed(20)
    seq = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5), nn.ReLU()).double()
    with torch.no_grad():
        seq[1].running_mean.uniform_(-1, 1)
        seq[1].running_var.uniform_(0.5, 2.0)
        seq[1].weight.uniform_(-1.5, 1.5)
    model = (seq if traceable else Untraceable2(seq)).eval()
    merged = xattr.merge_batch_norm(model)
    body = merged if traceable else merged.body
    assert isinstance(body.get_submodule("0"), nn.Linear) and isinstance(body.get_submodule("1"), nn.Identity)
    for shape in ((4, 5), (4, 5, 5)):
        x = random_tensor(shape, seed=21)
        torch.testing.assert_close(merged(x), model(x), msg=str(shape))
    flat = random_tensor((4, 5), seed=22)  # LRP of the merged (B, F) model sees one layer with folded weights
    got = run(merged, flat, 1, {**lrp_rules(), nn.Linear: Gamma(0.5)})
    torch.testing.assert_close(got, reference_lrp([body.get_submodule("0"), body.get_submodule("2")], flat, 1, {0: ref_gamma(0.5)}))


class Untraceable2(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        h = self.body(x)
        return h if h.sum() > -1e9 else -h


def test_merge_batch_norm_leaves_batch_norms_without_running_statistics():
    """track_running_stats=False: batch statistics even in eval mode, not an affine map."""
    torch.manual_seed(23)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 3), nn.BatchNorm1d(3)).double().eval()
    merged = xattr.merge_batch_norm(model)
    assert isinstance(merged.get_submodule("1"), nn.BatchNorm2d) and isinstance(merged.get_submodule("5"), nn.Identity)
    x = random_tensor((2, 2, 5, 5), seed=24)
    torch.testing.assert_close(merged(x), model(x))


def test_merge_batch_norm_in_train_mode_raises():
    model = bn_model().train()
    with pytest.raises(ValueError, match="eval mode"):
        xattr.merge_batch_norm(model)


# ----------------------------------------------------------------------------- clear errors


def test_softmax_inside_lrp_is_refused():
    model = _seeded(20, lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1)))
    with pytest.raises(NotImplementedError, match="LRP has no relevance rule for softmax"):
        xattr.lrp(xattr.target(model, 0))(random_tensor((2, 3), seed=0))


def test_multihead_attention_runs_written_out_and_dropout_in_training_is_refused():
    """nn.MultiheadAttention was refused ("cannot see inside"); it now runs as its projections and
    SDPA (xattr.rule.Unfused): bias-free, relevance is conserved. Dropout in training is random:
    refused."""

    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(4, 2, batch_first=True, bias=False, dropout=0.5)

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0].sum((1, 2))

    model = _seeded(21, MHA)
    x = random_tensor((2, 3, 4), seed=0)
    R, delta = xattr.lrp(model, composite=xattr.rule.lrp_rules(1e-12), return_delta=True)(x)
    assert delta.abs().max() < 1e-9 and R.abs().sum() > 0
    with pytest.raises(NotImplementedError, match="dropout 0.5 in training mode"):
        xattr.lrp(model.train())(x)


class Recurrent(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer, self.head = layer, nn.Linear(4, 2)

    def forward(self, x):
        out = self.layer(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out[:, -1] if out.ndim == 3 else out)


RECURRENT = {
    "lstm": lambda: nn.LSTM(3, 4, batch_first=True), "gru": lambda: nn.GRU(3, 4, batch_first=True),
    "rnn": lambda: nn.RNN(3, 4, batch_first=True), "rnn_relu": lambda: nn.RNN(3, 4, nonlinearity="relu", batch_first=True),
    "lstm_cell": lambda: nn.LSTMCell(3, 4), "gru_cell": lambda: nn.GRUCell(3, 4), "rnn_cell": lambda: nn.RNNCell(3, 4),
}


@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_layers_run_written_out_and_can_be_left_fused(kind):
    """A fused recurrent op multiplies gates: LRP runs it written out (its gates held, Arras et al.
    2017), which conserves relevance without biases (it raised before: tests/test_recurrent_rules.py
    checks the rule itself); dropping the entry runs it fused, with the ordinary gradient."""
    model = _seeded(22, lambda: Recurrent(RECURRENT[kind]()).double()).eval()
    x = random_tensor((2, 5, 3) if "cell" not in kind else (2, 3), seed=1)
    with torch.no_grad():  # bias-free: biases absorb relevance
        for p in model.parameters():
            p.mul_(p.ndim > 1)
    _, gap = xattr.lrp(xattr.target(model, 0), composite=lrp_rules(1e-13), return_delta=True)(x)
    assert gap.abs().max() < 1e-10 * model(x).abs().max()
    composite = lrp_rules()
    del composite[torch.lstm]
    got = xattr.lrp(xattr.target(model, 0), composite=composite)(x)
    # the head is the only ruled layer: epsilon's gradient w z / (z + eps sign z) at h, then the
    # recurrent layer's ordinary gradient, times the input
    x = x.clone().requires_grad_()
    h = model.layer(x)
    h = h[0] if isinstance(h, tuple) else h
    h = h[:, -1] if h.ndim == 3 else h
    z = model.head(h)[:, 0].detach()
    g_h = model.head.weight[0].detach() * (z / (z + 1e-9 * torch.where(z >= 0, 1.0, -1.0)))[:, None]
    (want,) = torch.autograd.grad(h, x, g_h)
    torch.testing.assert_close(got, (x * want).detach())


# ----------------------------------------------------------------------------- transforms and state


def test_vmap_over_examples_equals_the_batch():
    model, x = setup("cnn")
    keyed = {**lrp_rules(), nn.Conv2d: Gamma(0.5), "8": ZPlus()}
    for mapping in (lrp_rules(), epsilon_gamma_box("0", -3.0, 3.0), keyed):
        fn = xattr.lrp(xattr.target(model, 1), composite=mapping)
        torch.testing.assert_close(torch.func.vmap(lambda xi: fn(xi[None])[0])(x).detach(), fn(x))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_batch_invariance(kind):
    model, x = setup(kind, batch=4)
    check_batch_invariance(xattr.lrp(xattr.target(model, 2), composite=with_rule(AlphaBeta(2.0, 1.0))), x)
    per_example = lambda x, t: xattr.lrp(xattr.target(model, t))(x)  # noqa: E731
    check_batch_invariance(per_example, x, torch.tensor([0, 2, 1, 1]))


def test_many_outputs_have_a_k_axis():
    model, x = setup("cnn")
    ks = [2, 0, 1]
    R, delta = xattr.lrp(xattr.target(model, xattr.outputs(ks)), return_delta=True)(x)
    assert R.shape == (3, 3) + x.shape[1:] and delta.shape == (3, 3)
    for j, k in enumerate(ks):
        one, d = xattr.lrp(xattr.target(model, k), return_delta=True)(x)
        torch.testing.assert_close(R[:, j], one)
        torch.testing.assert_close(delta[:, j], d)
        torch.testing.assert_close(one, reference_lrp(leaves(model), x, k))


def test_model_unchanged_after_a_call():
    model, x = setup("cnn")
    before = state_snapshot(model, x)
    mapping = {**epsilon_gamma_box("0", -3.0, 3.0), nn.Linear: AlphaBeta(2.0, 1.0), model[3]: Pass()}
    xattr.lrp(xattr.target(model, 1), composite=mapping, return_delta=True)(x)
    xattr.layer_lrp(xattr.at_layer(xattr.target(model, 1), model[4]), composite=mapping)(x)
    assert changed_state(before, state_snapshot(model, x)) == []


def test_layer_lrp_is_activation_times_head_gradient_and_matches_the_reference():
    model, x = setup("cnn")
    f = xattr.target(model, 2)
    refs = reference_lrp(leaves(model), x, 2, every_layer=True)
    for pos in (2, 4, 8):  # at the input of the batch norm, of conv 2 and of the linear layer
        split = xattr.at_layer(f, model[pos], inputs=True)
        R = xattr.layer_lrp(split)(x)
        h = xattr.layer_activation(split)(x)
        head = xattr.lrp(split.head, argnums=0)(h, x)  # h * g_h, the rules applied to the head alone
        torch.testing.assert_close(R, head)
        torch.testing.assert_close(R, refs[pos].reshape(R.shape))


@given(relu_specs, xst.seeds)
def test_layer_relevance_is_conserved_on_bias_free_nets(spec, seed):
    model = _bias_free(spec)
    x = random_tensor((2,) + spec.in_shape, seed)
    f = xattr.target(model, 0)
    out = model(x)[:, 0].detach()
    for layer in [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ReLU))]:
        R, delta = xattr.layer_lrp(xattr.at_layer(f, layer), composite=lrp_rules(1e-12), return_delta=True)(x)
        torch.testing.assert_close(R.reshape(2, -1).sum(1), out, atol=1e-8, rtol=1e-7)
        torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-8, rtol=0)


def test_layer_delta_is_the_bias_above():
    """With LRP-0 above the last hidden layer only the output bias absorbs: delta == -b_k."""
    model, x = setup("cnn")
    _, delta = xattr.layer_lrp(xattr.at_layer(xattr.target(model, 1), model[7]), return_delta=True)(x)
    torch.testing.assert_close(delta, -model[8].bias[1].detach().expand(3), atol=1e-7, rtol=0)


def test_layer_lrp_refuses_an_input_layer_rule_above_the_split():
    """Below a ZBox layer the backward signal is relevance, not a gradient: h * g_h would be wrong."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    composite = {**xattr.rule.lrp_rules(), model[0]: xattr.rule.ZBox(-1.0, 1.0)}
    x = torch.rand(3, 4) * 2 - 1
    below = xattr.at_layer(xattr.target(model, 1), model[0], inputs=True)
    with pytest.raises(ValueError, match="sits above the layer"):
        xattr.layer_lrp(below, composite=composite)(x)
    above = xattr.at_layer(xattr.target(model, 1), model[1])  # ZBox is below this split: allowed
    r = xattr.layer_lrp(above, composite=composite)(x)
    assert r.shape == (3, 6)
    xattr.lrp(xattr.target(model, 1), composite=composite)(x)  # the input-level call is unaffected


# ----------------------------------------------------------------------------- the two spellings of the stabilizer


def test_stabilizer_spellings_are_equal_at_zero_signed_zero_nan_and_elsewhere():
    from xattr._src.lrp_rules import stabilize

    z = torch.cat([random_tensor((200,), seed=4), torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("nan"), float("inf"), -float("inf")])])
    for eps in (1e-9, 0.25, 0.0):
        a, b = stabilize(z, eps, where=False), stabilize(z, eps, where=True)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()]), eps
        assert ((a[:-3] != 0) | (eps == 0.0)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_stabilized_ratio_equals_z_over_the_stabilizer_bit_for_bit(dtype):
    """``|z| / (|z| + eps)`` against the quotient written out: equal values everywhere (a zero
    quotient may differ in sign only, which == ignores), nan where it is nan."""
    from xattr._src.lrp_rules import stabilize, stabilized_ratio

    special = [0.0, -0.0, 1e-30, -1e-30, 1e-9, -1e-9, 3e-8, -3e-8, float("nan"), float("inf"), -float("inf")]
    z = torch.cat([random_tensor((2000,), seed=5) * s for s in (1e-9, 1e-6, 1.0, 1e6)] + [torch.tensor(special, dtype=torch.float64)]).to(dtype)
    for eps in (1e-9, 1e-6, 0.25, 0.0, 7.0):
        for where in (False, True):
            want = z / stabilize(z, eps, where=where)
            got = stabilized_ratio(z, eps)
            assert torch.equal(got.isnan(), want.isnan()), (eps, where)
            assert (got[~got.isnan()] == want[~want.isnan()]).all(), (eps, where)


def test_lrp_with_the_where_stabilizer_equals_the_default_also_under_vmap(monkeypatch):
    from xattr._src import lrp_input_rules, lrp_rules as module

    model, x = setup("cnn")
    fns = [xattr.lrp(xattr.target(model, 1), composite=m) for m in (lrp_rules(), epsilon_gamma_box("0", -3.0, 3.0))]
    expected = [fn(x) for fn in fns]
    batched = [torch.func.vmap(lambda xi: fn(xi[None])[0])(x) for fn in fns]
    plain, calls = module.stabilize, []

    def where_spelling(*args, **kwargs):
        calls.append(1)
        return plain(*args, **kwargs, where=True)

    monkeypatch.setattr(module, "stabilize", where_spelling)
    monkeypatch.setattr(lrp_input_rules, "stabilize", where_spelling)  # ZBox, epsilon-gamma-box's input layer
    for fn, e, bt in zip(fns, expected, batched):
        assert torch.equal(fn(x), e)
        assert torch.equal(torch.func.vmap(lambda xi: fn(xi[None])[0])(x), bt)
    assert calls, "the where spelling must have run"


# --------------------------------------------------------------------------- rules as output hooks


class _Hooked(nn.Module):
    """Every layer kind the epsilon rule takes as an output hook, in the awkward spots: a conv
    followed by batch-norm and an in-place ReLU (the hook's tensor is then modified in place),
    an overlapping max-pool, a layer output with two consumers, a max-pool returning indices
    (the Function path), an average pool and linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3)
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu_(self.bn(self.conv1(x)))
        h = F.max_pool2d(h, 3, stride=2, padding=1)  # overlapping windows: 8x8 -> 4x4
        h2 = self.conv2(h)  # 2x2
        p, _ = F.max_pool2d(h2, 2, return_indices=True)
        a = F.avg_pool2d(h2, 2).flatten(1) + p.flatten(1)
        return self.fc2(torch.relu(self.fc1(a))) + h2.mean((1, 2, 3))[:, None]  # h2: two consumers


def test_epsilon_as_output_hooks_equals_its_function(monkeypatch):
    """NOTE: [Rules as output hooks]: outside transforms, epsilon at linear, conv, batch-norm and
    pooling layers keeps the op's own backward with a hook rescaling its output's gradient; the
    attributions equal the autograd.Function path's and the torch.func path's."""
    from xattr._src import rules as rules_module

    model = _seeded(5, _Hooked)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = random_tensor((3, 2, 8, 8), seed=6)
    kinds = []
    real = rules_module._scaled
    monkeypatch.setattr(rules_module, "_scaled", lambda rule, op, out: (kinds.append(op.kind), real(rule, op, out))[1])
    hooked = [xattr.lrp(xattr.target(model, k))(x) for k in range(3)]
    assert sorted(set(kinds)) == ["avg_pool", "batch_norm", "conv", "linear", "max_pool"], kinds
    assert kinds.count("max_pool") == 3  # once per call: the pool returning indices takes the Function path
    monkeypatch.setattr(rules_module, "_as_output_hook", lambda rule, op: False)
    by_function = [xattr.lrp(xattr.target(model, k))(x) for k in range(3)]
    for k in range(3):
        torch.testing.assert_close(hooked[k], by_function[k], rtol=1e-12, atol=1e-15)
    monkeypatch.undo()
    ruled = xattr.rules(model, xattr.rule.lrp_rules())
    by_vmap = torch.func.vmap(torch.func.grad(lambda r, k: ruled(r[None])[0, k]), in_dims=(0, None))
    for k in range(3):
        torch.testing.assert_close(by_vmap(x, k) * x, hooked[k], rtol=1e-10, atol=1e-14)
    assert not torch.equal(hooked[0], xattr.input_x_gradient(xattr.target(model, 0))(x))  # the rules changed something


def test_output_hooks_only_for_rules_that_keep_the_ops_backward():
    from xattr._src import ops

    x = torch.zeros(1, 2, 4, 4)
    conv = ops.PARSERS[torch.conv2d](torch.conv2d, x, torch.zeros(3, 2, 3, 3), torch.zeros(3))
    pool = ops.PARSERS[torch.max_pool2d](torch.max_pool2d, x, 2)
    assert Epsilon().scales_output(conv) and not Epsilon(zero_bias=True).scales_output(conv)
    assert not Gamma(0.25).scales_output(conv) and not AlphaBeta(2.0, 1.0).scales_output(conv)
    assert Gamma(0.25).scales_output(pool)  # a pool's backward does not use the weights' rule


def test_float16_zero_activations_give_zero_relevance_not_nan():
    # eps 1e-9 is 0 in float16: z == 0 must still be stabilized (0 / 0 was NaN)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight[:3] = 0  # three units with z == 0 exactly
        model[0].bias.zero_()
    x = torch.rand(2, 4)
    want = xattr.lrp(xattr.target(model, 1))(x)
    for composite in (None, epsilon_plus()):
        got = xattr.lrp(xattr.target(model.half(), 1), composite=composite)(x.half())
        assert torch.isfinite(got).all()
        if composite is None:
            torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=1e-2)
        model.float()


@pytest.mark.parametrize("rule", [Epsilon, Gamma, AlphaBeta, ZPlus, WSquare])
def test_a_negative_eps_is_refused(rule):
    with pytest.raises(ValueError, match="eps must be >= 0"):
        rule(eps=-1.0)
