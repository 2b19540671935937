"""Conformance with zennit 0.5.1 (LRP), run live; every test skips where zennit is not installed
(CI). shap: test_vs_shap.py.

Each rule pair that agrees is checked in float64 to rounding; each documented difference
(docs/other_libraries.md, benchmarks/README.md) is checked to exist, and where the other library
computes something else, that something is pinned down by a slow reference written out by hand.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import rule as xr
from benchmarks.zennit_workloads import EPS, base_rules, import_zennit, with_rules, zennit_relevance

D = torch.float64


def need_zennit():
    from xattr.testing.vision import models

    models()  # torchvision's CPU wheels need this repair before zennit imports torchvision
    pytest.importorskip("zennit")
    z = import_zennit()
    assert z is not None
    return z


def mlp(seed: int, widths=(6, 7, 5, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(D).eval()


class TinyVGG(nn.Module):
    def __init__(self, bn: bool = False):
        super().__init__()
        norm = (lambda c: [nn.BatchNorm2d(c)]) if bn else (lambda c: [])
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *norm(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), *norm(6), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def tiny_vgg(seed: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyVGG(bn).to(D)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def data(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def lrp(model, rules, x, y):
    return xattr.lrp(xattr.target(model, y), composite=rules)(x)


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


def far(a, b, rel=1e-3):
    """a and b differ by more than rel of b's largest magnitude."""
    a, b = a.detach(), b.detach()
    assert float((a - b).abs().max()) > rel * float(b.abs().max())


def linear_lrp_ref(w, b, x, r_out, contrib, bias_term, eps=EPS):
    """One linear layer, explicit loops: R_i = sum_j c_ij / (sum_i c_ij + bias_j, stabilized) R_j,
    with c_ij = contrib(w_ji, x_i, z_j) and bias_j = bias_term(b_j, z_j)."""
    n, m = x.shape
    out = torch.zeros_like(x)
    for e in range(n):
        for j in range(w.shape[0]):
            z = float(w[j] @ x[e] + b[j])
            c = [contrib(float(w[j, i]), float(x[e, i]), z) for i in range(m)]
            den = sum(c) + bias_term(float(b[j]), z)
            den += eps if den >= 0 else -eps
            for i in range(m):
                out[e, i] += c[i] / den * float(r_out[e, j])
    return out


# ---------------------------------------------------------------- zennit: the pairs that agree ----------


def zennit_pairs(z):
    """(name, zennit composite for inputs x, xattr rules for x) that compute the same LRP."""
    zr, zc, zt = z.rules, z.composites, z.types
    lmap = zc.LayerMapComposite

    def box(x):
        lo, hi = float(x.min()), float(x.max())
        return lo, hi

    return [
        ("epsilon", lambda x: lmap([(zt.Convolution, zr.Epsilon(EPS)), (zt.Linear, zr.Epsilon(EPS))]), lambda x: base_rules()),
        ("epsilon 0.25", lambda x: lmap([(zt.Convolution, zr.Epsilon(0.25)), (zt.Linear, zr.Epsilon(0.25))]), lambda x: base_rules(0.25)),
        ("z-plus without bias", lambda x: lmap([(zt.Convolution, zr.ZPlus(zero_params="bias")), (zt.Linear, zr.Epsilon(EPS))]),
         lambda x: with_rules(conv=xr.ZPlus(EPS), linear=xr.Epsilon(EPS))),
        ("zennit ZPlus = AlphaBeta(1, 0)", lambda x: lmap([(zt.Convolution, zr.ZPlus()), (zt.Linear, zr.ZPlus())]),
         lambda x: with_rules(conv=xr.AlphaBeta(1.0, 0.0, EPS), linear=xr.AlphaBeta(1.0, 0.0, EPS))),
        ("alpha2-beta1", lambda x: lmap([(zt.Convolution, zr.AlphaBeta(2.0, 1.0)), (zt.Linear, zr.Epsilon(EPS))]),
         lambda x: with_rules(conv=xr.AlphaBeta(2.0, 1.0, EPS), linear=xr.Epsilon(EPS))),
        ("EpsilonGammaBox", lambda x: zc.EpsilonGammaBox(low=torch.full_like(x, box(x)[0]), high=torch.full_like(x, box(x)[1]), epsilon=EPS),
         lambda x: with_rules("features.0", xr.ZBox(*box(x), eps=EPS), conv=xr.Gamma(0.25, EPS), linear=xr.Epsilon(EPS))),
        ("EpsilonPlusFlat, z-plus without bias", lambda x: zc.EpsilonPlusFlat(epsilon=EPS, layer_map=[(zt.Convolution, zr.ZPlus(zero_params="bias"))]),
         lambda x: with_rules("features.0", xr.Flat(EPS), conv=xr.ZPlus(EPS), linear=xr.Epsilon(EPS))),
        ("WSquare first without bias", lambda x: zc.SpecialFirstLayerMapComposite(
            [(zt.Convolution, zr.Epsilon(EPS)), (zt.Linear, zr.Epsilon(EPS))], [(zt.Convolution, zr.WSquare(zero_params="bias"))]),
         lambda x: with_rules("features.0", xr.WSquare(EPS))),
    ]


@pytest.mark.parametrize("index", range(8))
def test_lrp_equals_zennit_on_a_vgg(index):
    z = need_zennit()
    name, zennit_composite, rules = zennit_pairs(z)[index]
    model, x, y = tiny_vgg(0), data(1, (4, 3, 8, 8)), torch.tensor([0, 1, 2, 1])
    a, b = lrp(model, rules(x), x, y), zennit_relevance(model, zennit_composite(x), x, y)
    assert b.abs().max() > 1e-6, name
    close(a, b)


def test_lrp_equals_zennit_after_batch_norm_merging():
    z = need_zennit()
    model, x, y = tiny_vgg(2, bn=True), data(3, (4, 3, 8, 8)), torch.tensor([2, 1, 0, 1])
    for m in model.modules():  # zennit's merged norm keeps its eps (see the difference below)
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-14
    lo, hi = float(x.min()), float(x.max())
    composite = z.composites.EpsilonGammaBox(low=torch.full_like(x, lo), high=torch.full_like(x, hi), epsilon=EPS,
                                             canonizers=[z.canonizers.SequentialMergeBatchNorm()])
    rules = with_rules("features.0", xr.ZBox(lo, hi, eps=EPS), conv=xr.Gamma(0.25, EPS), linear=xr.Epsilon(EPS))
    close(lrp(xattr.merge_batch_norm(model), rules, x, y), zennit_relevance(model, composite, x, y))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.integers(2, 9), eps=st.sampled_from([1e-6, 1e-2, 0.3]))
def test_epsilon_and_gamma_equal_zennit_on_random_mlps(seed, hidden, eps):
    """Epsilon everywhere, and gamma on a hidden layer (its inputs are ReLU outputs, its negative
    outputs go to a ReLU): equal to zennit for any weights."""
    z = need_zennit()
    zr = z.rules
    model = mlp(seed, (5, hidden, hidden, 2))
    x, y = data(seed + 1, (6, 5)), torch.tensor([0, 1] * 3)
    eps_only = z.composites.LayerMapComposite([(z.types.Linear, zr.Epsilon(eps))])
    close(lrp(model, base_rules(eps), x, y), zennit_relevance(model, eps_only, x, y))
    gamma = z.composites.NameMapComposite([(["0", "4"], zr.Epsilon(EPS)), (["2"], zr.Gamma(0.5))])
    close(lrp(model, with_rules("2", xr.Gamma(0.5, EPS)), x, y), zennit_relevance(model, gamma, x, y))


def test_relevance_sums_hold_in_both():
    """Bias-free, epsilon tiny: both conserve f(x) (so agreement is not agreement on zero)."""
    z = need_zennit()
    model = mlp(4, (6, 8, 8, 3))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.bias.data.zero_()
    x, y = data(5, (5, 6)), torch.tensor([0, 1, 2, 0, 1])
    fx = model(x).gather(1, y[:, None])[:, 0].detach()
    comp = z.composites.LayerMapComposite([(z.types.Linear, z.rules.Epsilon(1e-12))])
    close(zennit_relevance(model, comp, x, y).sum(1), fx, 1e-9)
    close(lrp(model, base_rules(1e-12), x, y).sum(1), fx, 1e-9)


# ---------------------------------------------------------------- zennit: documented differences ------


def test_zennit_takes_the_output_gradient_as_initial_relevance():
    """Seeded with one_hot(y) (its documentation's spelling), zennit gives xattr's relevance / f(x)."""
    z = need_zennit()
    model, x, y = mlp(6), data(7, (4, 6)), torch.tensor([0, 1, 2, 0])
    comp = z.composites.LayerMapComposite([(z.types.Linear, z.rules.Epsilon(EPS))])
    m = copy.deepcopy(model)
    xr_ = x.clone().requires_grad_()
    with comp.context(m) as hooked:
        out = hooked(xr_)
        (one_hot,) = torch.autograd.grad(out, xr_, F.one_hot(y, 3).to(D))
    fx = model(x).gather(1, y[:, None]).detach()
    close(one_hot * fx, lrp(model, base_rules(), x, y))
    far(one_hot, lrp(model, base_rules(), x, y))


def test_zennit_zplus_keeps_the_bias():
    """zennit's ZPlus() = AlphaBeta(1, 0) with the bias; xattr's ZPlus drops it, and its
    epsilon_plus composite differs from zennit's EpsilonPlus() there."""
    z = need_zennit()
    model, x, y = mlp(8), data(9, (5, 6)), torch.tensor([0, 1, 2, 0, 1])
    zennit_zplus = zennit_relevance(model, z.composites.LayerMapComposite([(z.types.Linear, z.rules.ZPlus())]), x, y)
    far(lrp(model, with_rules(linear=xr.ZPlus(EPS)), x, y), zennit_zplus)
    close(lrp(model, with_rules(linear=xr.AlphaBeta(1.0, 0.0, EPS)), x, y), zennit_zplus)
    vgg, xv, yv = tiny_vgg(10), data(11, (4, 3, 8, 8)), torch.tensor([0, 1, 2, 1])
    rules = xr.epsilon_plus(eps=EPS)
    rules[torch.conv2d] = xr.ZPlus(EPS)
    del rules[F.max_pool2d]
    far(lrp(vgg, rules, xv, yv), zennit_relevance(vgg, z.composites.EpsilonPlus(epsilon=EPS), xv, yv))


def generalized_gamma(w, b, x, r_out, gamma):
    """Andeol et al.'s gamma, written out: the added part is gamma * w+ where the input and output
    have the same sign, gamma * w- where they differ (the bias: its part of the output's sign)."""
    def contrib(wji, xi, zj):
        same = (xi >= 0) == (zj >= 0)
        return xi * (wji + gamma * (max(wji, 0.0) if same else min(wji, 0.0)))

    return linear_lrp_ref(w, b, x, r_out, contrib, lambda bj, zj: bj + gamma * (max(bj, 0.0) if zj >= 0 else min(bj, 0.0)))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.1, 0.25, 1.0]))
def test_zennit_gamma_is_the_generalized_rule(seed, gamma):
    """One linear layer with inputs and outputs of both signs: zennit's Gamma is the generalized
    rule (the reference), xattr's the original one; they agree where input and output are >= 0."""
    z = need_zennit()
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(6, 5)).to(D).eval()
    x = data(seed + 1, (4, 6))
    w, b = layer[0].weight.detach(), layer[0].bias.detach()
    comp = lambda: z.composites.LayerMapComposite([(z.types.Linear, z.rules.Gamma(gamma))])  # noqa: E731
    for t in range(5):
        y = torch.full((4,), t)
        out = layer(x).detach()
        r_out = F.one_hot(y, 5).to(D) * out
        zen = zennit_relevance(layer, comp(), x, y)
        close(zen, generalized_gamma(w, b, x, r_out, gamma))
        close(lrp(layer, with_rules(linear=xr.Gamma(gamma, EPS)), x, y),
              linear_lrp_ref(w, b, x, r_out, lambda wji, xi, zj: xi * (wji + gamma * max(wji, 0.0)), lambda bj, zj: bj + gamma * max(bj, 0.0)))
    xp = x.abs()
    out = layer(xp).detach()
    for t in range(5):
        y = torch.full((4,), t)
        same = lrp(layer, with_rules(linear=xr.Gamma(gamma, EPS)), xp, y)
        zen = zennit_relevance(layer, comp(), xp, y)
        pos = out[:, t] > 0
        if pos.any():
            close(same[pos], zen[pos])
        if (~pos).any():
            far(same[~pos], zen[~pos])


def test_zennit_wsquare_counts_the_bias():
    """zennit's WSquare divides by sum w^2 + b^2 (the reference); xattr's by sum w^2, which is
    zennit's WSquare(zero_params='bias')."""
    z = need_zennit()
    model, x, y = mlp(14), data(15, (4, 6)), torch.tensor([0, 1, 2, 0])
    first = lambda rule: z.composites.SpecialFirstLayerMapComposite([(z.types.Linear, z.rules.Epsilon(EPS))], [(z.types.Linear, rule)])  # noqa: E731
    zen = zennit_relevance(model, first(z.rules.WSquare()), x, y)
    far(lrp(model, with_rules("0", xr.WSquare(EPS)), x, y), zen)
    close(lrp(model, with_rules("0", xr.WSquare(EPS)), x, y), zennit_relevance(model, first(z.rules.WSquare(zero_params="bias")), x, y))
    # the reference: relevance at the first layer's output (epsilon above), then w^2 / (sum w^2 + b^2)
    h = model[0](x).detach()
    r_h = lrp(nn.Sequential(*list(model)[1:]), base_rules(), h, y)
    w, b = model[0].weight.detach(), model[0].bias.detach()
    ref = linear_lrp_ref(w ** 2, b ** 2, torch.ones_like(x), r_h, lambda wji, xi, zj: wji, lambda bj, zj: bj)
    close(zen, ref, 1e-8)


def test_zennit_batch_norm_merging_keeps_eps():
    """zennit's SequentialMergeBatchNorm leaves the norm computing x / sqrt(1 + eps): the canonized
    model is off by that factor, and so is its relevance (~1e-5 of it at eps 1e-5)."""
    z = need_zennit()
    model, x, y = tiny_vgg(16, bn=True), data(17, (4, 3, 8, 8)), torch.tensor([0, 1, 2, 0])
    m = copy.deepcopy(model)
    handles = z.canonizers.SequentialMergeBatchNorm().apply(m)
    norms = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert all(float(n.running_var.max()) == 1.0 and n.eps == 1e-5 for n in norms)
    far(m(x), model(x), 1e-7)
    merged = xattr.merge_batch_norm(model)
    close(m.features[:2](x), merged.features[:2](x) / (1 + 1e-5) ** 0.5, 1e-12)  # first conv + its norm
    for h in handles:
        h.remove()
    rules = base_rules()
    a = lrp(xattr.merge_batch_norm(model), rules, x, y)
    comp = z.composites.LayerMapComposite([(z.types.Convolution, z.rules.Epsilon(EPS)), (z.types.Linear, z.rules.Epsilon(EPS))],
                                          canonizers=[z.canonizers.SequentialMergeBatchNorm()])
    gap = float((a - zennit_relevance(model, comp, x, y)).abs().max() / a.abs().max())
    assert 1e-7 < gap < 1e-3


def test_max_pool_epsilon_is_xattrs_default():
    """zennit's max-pool takes its plain gradient; xattr's lrp_rules() puts Epsilon there, which
    scales each maximum's relevance by z / (z + eps): equal with the key removed, close with it."""
    z = need_zennit()
    model, x, y = tiny_vgg(18), data(19, (4, 3, 8, 8)), torch.tensor([0, 1, 2, 0])
    comp = lambda: z.composites.LayerMapComposite([(z.types.Convolution, z.rules.Epsilon(0.1)), (z.types.Linear, z.rules.Epsilon(0.1))])  # noqa: E731
    zen = zennit_relevance(model, comp(), x, y)
    close(lrp(model, base_rules(0.1), x, y), zen)
    far(lrp(model, xr.lrp_rules(0.1), x, y), zen)
