"""LRP on real architectures: torchvision's resnet18 and vgg11 (random weights) and a transformer block.

ResNet: relevance is conserved except where a rule absorbs it, and how much each layer absorbs
follows from its rule alone: a layer whose rule shares ``R_j`` in proportion to contributions
``n_ij`` over a stabilised total ``d_j`` passes on ``sum_i R_i = sum_j R_j N_j / stab(d_j)`` with
``N_j = sum_i n_ij`` (for epsilon ``N_j = z_j - b_j``, ``d_j = z_j``). Summed over every layer,
``f(x) - sum(R_x)`` must equal the total absorbed, which the tests compute from each layer's
input, output and ``R_j = z_j g_j`` captured on a run of ``xattr.rules``: residual adds, ReLUs,
flatten and the downsampling branches must conserve for the books to balance.
VGG: Captum's LRP of the same vgg11 (stored summary). Transformer: layer norm with its std held
(`FixedStd`) and attention with its weights held (`FixedAttention`) conserve relevance exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Gamma, epsilon_gamma_box, lrp_rules
from xattr.testing.strategies import random_tensor
from xattr.testing.vision import models as vision_models

from registry import changed_state, state_snapshot

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_lrp_expected as E
    from . import gen_captum_lrp_expected as G
except ImportError:
    import captum_lrp_expected as E
    import gen_captum_lrp_expected as G

TV = vision_models()
needs_torchvision = pytest.mark.skipif(TV is None, reason="torchvision is not installed")


def stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


# ----------------------------------------------------------------------------- relevance bookkeeping


def _epsilon_terms(eps):
    """(N, d, eps) of the epsilon rule: contributions sum to z minus the bias."""

    def terms(module, a, z):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            b = module.bias if module.bias is not None else torch.zeros(z.shape[1], dtype=z.dtype)
            return z - b.detach().reshape((1, -1) + (1,) * (z.ndim - 2)), z, eps
        if isinstance(module, nn.BatchNorm2d):
            s = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
            return s.reshape(1, -1, 1, 1) * a, z, eps
        return z, z, eps  # pooling: no bias

    return terms


def _gamma_terms(gamma):
    def terms(module, a, z):
        w = module.weight.detach()
        b = module.bias.detach() if module.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        w, b = w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0)
        return module._conv_forward(a, w, None), module._conv_forward(a, w, b), 1e-9

    return terms


def _zbox_terms(low, high):
    def terms(module, a, z):
        w = module.weight.detach()
        lo, hi = torch.full_like(a, low), torch.full_like(a, high)
        n = module._conv_forward(a, w, None) - module._conv_forward(lo, w.clamp(min=0), None)
        n = n - module._conv_forward(hi, w.clamp(max=0), None)
        return n, n, 1e-9

    return terms


def absorbed(f, composite, x, terms_of) -> torch.Tensor:
    """Per example, the relevance the layers absorb: sum over layers of sum_j R_j (1 - N_j / stab(d_j)).

    ``terms_of(module)`` gives the layer's ``terms(module, a, z) -> (N, d, eps)``, or None for
    modules that are not layers. R_j = z_j g_j with g from ``xattr.rules(f, composite)``.
    """
    captured, handles = [], []

    def hook(module, inputs, out):
        captured.append((module, inputs[0].detach(), out))
        return out.clone()  # what follows may write in place (ReLU(inplace=True)); out stays the layer's

    for module in f_modules(f):
        if terms_of(module) is not None:
            handles.append(module.register_forward_hook(hook))
    try:
        out = xattr.rules(f, composite)(x)
        grads = torch.autograd.grad(out.sum(), [z for _, _, z in captured], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for (module, a, z), g in zip(captured, grads):
        z = z.detach()
        n, d, eps = terms_of(module)(module, a, z)
        r = z * g if g is not None else torch.zeros_like(z)
        total += (r * (1 - n / stab(d, eps))).reshape(x.shape[0], -1).sum(1)
    return total


def f_modules(f) -> list[nn.Module]:
    return list(f.model.modules())


# ----------------------------------------------------------------------------- resnet18


def resnet18() -> nn.Module:
    """torchvision's resnet18, random weights, batch-norm statistics and affine parameters drawn
    away from the identity (seeded), float64, eval."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TV.resnet18()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.2)
                    m.bias.uniform_(-0.1, 0.1)
    return model.double().eval()


TARGET = 3


@pytest.fixture(scope="module")
def resnet():
    if TV is None:
        pytest.skip("torchvision is not installed")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return resnet18(), x


@needs_torchvision
def test_resnet18_default_lrp_books_balance(resnet):
    """Default rules (epsilon 1e-9): f(x) - sum(R) is exactly what the biases (conv, batch norm,
    fc) absorb, layer by layer; the model is left as it was."""
    model, x = resnet
    before = state_snapshot(model, x)
    f = xattr.target(model, TARGET)
    R, delta = xattr.lrp(f, return_delta=True)(x)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert R.shape == x.shape and torch.isfinite(R).all()
    out = model(x)[:, TARGET].detach()
    torch.testing.assert_close(delta, R.reshape(2, -1).sum(1) - out)
    layers = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    eps_terms = _epsilon_terms(1e-9)
    lost = absorbed(f, lrp_rules(), x, lambda m: eps_terms if isinstance(m, layers) else None)
    torch.testing.assert_close(-delta, lost, rtol=1e-6, atol=1e-9 * float(R.abs().sum()))
    assert (lost.abs() > 1e-3 * out.abs()).all()  # the biases do absorb something: the check has teeth


@needs_torchvision
def test_resnet18_merged_epsilon_gamma_box(resnet):
    """merge_batch_norm then z^B (pixels in [0, 1]) at conv1, gamma on the other convs, epsilon
    0.25 on fc: the same bookkeeping with each rule's own contributions and totals."""
    model, x = resnet
    before = state_snapshot(model, x)
    merged = xattr.merge_batch_norm(model)
    assert changed_state(before, state_snapshot(model, x)) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())
    torch.testing.assert_close(merged(x), model(x), rtol=1e-9, atol=1e-9)
    f = xattr.target(merged, TARGET)
    composite = epsilon_gamma_box("conv1", 0.0, 1.0)
    R, delta = xattr.lrp(f, composite=composite, return_delta=True)(x)
    assert R.shape == x.shape and torch.isfinite(R).all()
    conv1 = merged.get_submodule("conv1")
    gamma, zbox, eps, pools = _gamma_terms(0.25), _zbox_terms(0.0, 1.0), _epsilon_terms(0.25), _epsilon_terms(1e-9)

    def terms_of(m):
        if m is conv1:
            return zbox
        if isinstance(m, nn.Conv2d):
            return gamma
        if isinstance(m, nn.Linear):
            return eps
        return pools if isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)) else None

    lost = absorbed(f, composite, x, terms_of)
    torch.testing.assert_close(-delta, lost, rtol=1e-6, atol=1e-9 * float(R.abs().sum()))
    # the input layer's rule is z^B: its relevance is returned as is, and differs from x * g
    plain = xattr.lrp(f, composite={**composite, "conv1": Gamma(0.25)})(x)
    assert not torch.allclose(plain, R)


# ----------------------------------------------------------------------------- vgg11 against Captum


@needs_torchvision
def test_vgg11_same_as_captum():
    """Captum's LRP of the same vgg11 (default rules; stored as block and channel sums, float32)."""
    model, x = G.vgg_model_and_input()
    before = state_snapshot(model, x)
    R, delta = xattr.lrp(xattr.target(model, torch.tensor(G.VGG_TARGET)), return_delta=True)(x)
    assert changed_state(before, state_snapshot(model, x)) == []
    got = G.vgg_summary(R)
    for key in ("blocks", "channels"):
        want = torch.tensor(E.VGG[key], dtype=torch.float64)
        torch.testing.assert_close(got[key], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # vgg's biases start at zero: nothing absorbs, both deltas are float32 rounding of f(x)
    out = model(x)[torch.arange(2), G.VGG_TARGET].detach()
    assert (delta.abs() < 1e-4 * out.abs().max()).all()
    assert (torch.tensor(E.VGG["delta"]).abs() < 1e-4 * out.abs().max()).all()


# ----------------------------------------------------------------------------- a transformer block


class Block(nn.Module):
    """Pre-norm transformer block: LN, causal multi-head F.scaled_dot_product_attention, residual;
    LN, GELU MLP, residual; mean over tokens; linear head."""

    def __init__(self, d=8, heads=2, bias=True):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d, bias=bias), nn.Linear(2 * d, d, bias=bias)
        self.head = nn.Linear(d, 3, bias=bias)
        with torch.no_grad():
            self.ln1.weight.uniform_(0.5, 1.5)
            self.ln2.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


def _block(bias: bool) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        return Block(bias=bias).double().eval()


def test_transformer_block_conserves_without_biases():
    """Bias-free linears and layer norms: FixedStd, FixedAttention, Pass on GELU, epsilon 1e-12
    and the residual adds all conserve, so sum(R) == f(x). With layer norm's own gradient instead
    of FixedStd it does not."""
    model = _block(bias=False)
    x = random_tensor((3, 5, 8), seed=6)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    R, delta = xattr.lrp(f, composite=lrp_rules(1e-12), return_delta=True)(x)
    assert changed_state(before, state_snapshot(model, x)) == []
    out = model(x)[:, 1].detach()
    assert R.shape == x.shape
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9 * float(out.abs().max()), rtol=0)
    torch.testing.assert_close(R.reshape(3, -1).sum(1), out, rtol=1e-8, atol=1e-10)
    no_ln_rule = {k: v for k, v in lrp_rules(1e-12).items() if k is not F.layer_norm}
    _, off = xattr.lrp(f, composite=no_ln_rule, return_delta=True)(x)
    assert (off.abs() > 1e-3 * out.abs()).any()


def test_transformer_block_with_biases_runs_and_layers_conserve():
    """With biases: finite relevance; at the block's output (before the head) the relevance sums
    to f(x) minus the head's bias, the only bias above it."""
    model = _block(bias=True)
    x = random_tensor((2, 5, 8), seed=7)
    f = xattr.target(model, 2)
    R = xattr.lrp(f)(x)
    assert R.shape == x.shape and torch.isfinite(R).all()
    r_head, d_head = xattr.layer_lrp(xattr.at_layer(f, model.head, inputs=True), return_delta=True)(x)
    torch.testing.assert_close(d_head, -model.head.bias[2].detach().expand(2), atol=1e-7, rtol=0)
    assert r_head.shape == (2, 8)
