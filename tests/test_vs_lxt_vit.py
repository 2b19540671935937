"""Conformance with LXT 2.1's patches for torchvision's VisionTransformer, run live; every test
skips where lxt or torchvision is not installed (CI). Without LXT: tests/test_attn_lrp_vit.py.

A tiny random ViT (32x32 pixels, 8x8 patches, 2 layers, 2 heads, width 32), float64, relevance at
the pixels of one logit per example: xattr's against LXT's ``x * x.grad`` after its ``cp_LRP``
patches and, for the gamma rule, zennit's ``Gamma`` hooked by LXT's ``monkey_patch_zennit`` (its
ViT example). benchmarks/lxt_workloads.py says what each setting of `lxt_vit_rules` is for.
LXT's patches change ``torch.nn.GELU``, ``torch.nn.LayerNorm``, ``torch.nn.MultiheadAttention``
and zennit's ``BasicHook`` for the whole process; the helpers restore them (checked here).
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr import rule as xr

pytest.importorskip("lxt")
from benchmarks.lxt_workloads import LxtPass, lxt_patched  # noqa: E402
from benchmarks.lxt_vit_workloads import (  # noqa: E402
    LxtGamma,
    lxt_vit_relevance,
    lxt_vit_rules,
    tiny_vit,
    vit_patches,
    zennit_patched,
)

D = torch.float64
CLASSES = torch.tensor([3, 7])


@pytest.fixture(scope="module")
def vit():
    if vit_patches() is None:
        pytest.skip("torchvision (or transformers, which LXT's import needs) is not installed")
    return tiny_vit()


def need_zennit():
    from xattr.testing.vision import models

    models()  # torchvision's CPU wheels need this repair before zennit imports torchvision
    pytest.importorskip("zennit")


def pixels(seed=1):
    return torch.randn(2, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(seed))


def theirs(model, x, **gammas):
    return lxt_vit_relevance(model, x, lambda out: out.gather(1, CLASSES[:, None])[:, 0], **gammas)


def ours(model, x, composite):
    return xattr.lrp(xattr.target(model, CLASSES), composite=composite)(x)


def gap(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_cp_lrp_patches_equal_attn_lrp_rules_held(vit):
    """LXT's ``cp_LRP`` alone (no gamma): LRP-0 at the patch conv and linear layers, the layer
    norm's std detached, GELU's identity rule, the query and key of ``nn.MultiheadAttention``
    detached. xattr: ``attn_lrp_rules(0.0, hold_attention=True)``, `LxtPass` at GELU: equal to
    rounding (4e-16 of the largest relevance); with `Pass` 7e-10 (LXT's ``x + 1e-10``), with the
    default eps 1e-9 2e-7. The class token and the position embedding are summands: both
    libraries give them their gradient, and neither is part of the pixels' relevance."""
    x = pixels()
    lxt = theirs(vit, x)
    assert gap(ours(vit, x, {**xr.attn_lrp_rules(0.0, hold_attention=True), F.gelu: LxtPass()}), lxt) < 1e-13
    assert gap(ours(vit, x, lxt_vit_rules()), lxt) < 1e-13
    assert 1e-12 < gap(ours(vit, x, xr.attn_lrp_rules(0.0, hold_attention=True)), lxt) < 1e-7
    assert 1e-9 < gap(ours(vit, x, xr.attn_lrp_rules(hold_attention=True)), lxt) < 1e-4
    assert gap(ours(vit, x, xr.attn_lrp_rules(0.0)), lxt) > 1e-2  # the softmax rule is not CP-LRP
    assert gap(xattr.input_x_gradient(xattr.target(vit, CLASSES))(x), lxt) > 1e-2


@pytest.mark.parametrize("linear, conv", [(0.05, 0.25), (0.0, 100.0), (1.0, 0.1), (None, 0.25)])
def test_gamma_recipe_equals_lxt_with_zennit(vit, linear, conv):
    """LXT's ViT example: ``cp_LRP`` plus zennit's ``Gamma(lin)`` on ``nn.Linear`` and ``Gamma(conv)``
    on ``nn.Conv2d`` (pairs from its sweep), after ``monkey_patch_zennit``. `lxt_vit_rules(lin, conv)`
    (`GeneralizedGamma` by module type): equal to rounding with LXT's stabilisers, within 1e-7 of
    the largest relevance without them (measured 5e-10 - 3e-9)."""
    need_zennit()
    x = pixels()
    lxt = theirs(vit, x, linear_gamma=linear, conv_gamma=conv)
    assert gap(ours(vit, x, lxt_vit_rules(linear, conv)), lxt) < 1e-12
    assert 1e-12 < gap(ours(vit, x, lxt_vit_rules(linear, conv, lxt_stabilisers=False)), lxt) < 1e-7


def test_where_attn_lrp_rules_with_gamma_differs(vit):
    """``attn_lrp_rules(gamma=...)`` is not LXT's ViT recipe, for two reasons, each pinned here
    with everything else set as LXT (eps 0, LXT's stabilisers, CP-LRP):

    - xattr's `Gamma` is the original rule (``w + gamma w+`` whatever the signs), zennit's the
      generalized one (xattr's `GeneralizedGamma`, which ``attn_lrp_rules(gamma=...)`` takes): on
      the modules zennit hooks, xattr's `Gamma` gives relevances 12 times LXT's largest (measured);
    - keyed by ``F.linear`` the rule also reaches ``nn.MultiheadAttention``'s in- and
      out-projections, which zennit's module hooks never see (the attention calls ``F.linear`` on
      its own parameters; its ``out_proj`` module never runs): 28% of the largest relevance. Keying
      ``nn.MultiheadAttention: Epsilon(0)`` on top gives LXT's numbers back, which pins the cause."""
    need_zennit()
    x = pixels()
    lin, conv = 0.05, 0.25
    lxt = theirs(vit, x, linear_gamma=lin, conv_gamma=conv)
    held = {**xr.attn_lrp_rules(0.0, hold_attention=True), F.gelu: LxtPass()}
    classic = {**held, nn.Linear: xr.Gamma(lin, 1e-6), nn.Conv2d: xr.Gamma(conv, 1e-6)}
    assert gap(ours(vit, x, classic), lxt) > 10
    everywhere = xr.attn_lrp_rules(0.0, linear=LxtGamma(lin, 1e-6, 1e-10), conv=LxtGamma(conv, 1e-6, 1e-10),
                                   hold_attention=True)  # fmt: skip
    everywhere[F.gelu] = LxtPass()
    assert 0.1 < gap(ours(vit, x, everywhere), lxt) < 1
    assert gap(ours(vit, x, {**everywhere, nn.MultiheadAttention: xr.Epsilon(0.0)}), lxt) < 1e-12
    # attn_lrp_rules(gamma=...) takes the generalized rule: it differs from LXT by the attention's
    # projections (and LXT's stabilisers) alone
    shipped = {**xr.attn_lrp_rules(1e-6, gamma=lin, conv=xr.GeneralizedGamma(conv, 1e-6), hold_attention=True), F.gelu: LxtPass()}
    assert 0.1 < gap(ours(vit, x, shipped), lxt) < 1
    assert gap(ours(vit, x, {**shipped, nn.MultiheadAttention: xr.Epsilon(0.0)}), lxt) < 1e-6


def _uniform_attention_forward(self, query, key, value, *args, **kwargs):
    """LXT's uniform rule at an attention's entry, as its transformers wrapper applies it (the
    gradients of q and k divided by 4, of v by 2), here at ``nn.MultiheadAttention``."""
    from lxt.efficient.rules import divide_gradient

    return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4), divide_gradient(value, 2), *args, **kwargs)


def test_attn_lrp_equals_lxt_uniform_rule_at_torchvision_attention(vit):
    """LXT ships no AttnLRP patch for ``nn.MultiheadAttention`` (only CP-LRP); built from its own
    parts (its ``patch_method`` and ``divide_gradient``, the factors of its transformers attention
    wrapper; the projections are LRP-0, so dividing before them is dividing after), it is xattr's
    ``attn_lrp_rules(0.0)`` with `LxtPass`, to rounding: the softmax's gradient and the uniform
    rule at ``q @ k^T`` and ``weights @ v`` through xattr's written-out ``nn.MultiheadAttention``."""
    from lxt.efficient.patches import patch_method

    modeling, cp_map = vit_patches()
    uniform = dict(cp_map)
    uniform[modeling.nn.MultiheadAttention] = functools.partial(patch_method, _uniform_attention_forward, keep_original=True)
    x = pixels()
    e = x.clone().requires_grad_(True)
    with lxt_patched(modeling, uniform):
        (grad,) = torch.autograd.grad(vit(e).gather(1, CLASSES[:, None]).sum(), e)
    lxt = e.detach() * grad
    assert gap(ours(vit, x, {**xr.attn_lrp_rules(0.0), F.gelu: LxtPass()}), lxt) < 1e-13
    assert gap(ours(vit, x, lxt_vit_rules()), lxt) > 1e-2  # CP-LRP is another rule


def test_lxt_vit_patches_are_undone(vit):
    """The patched classes and zennit's BasicHook get every attribute back, and the forward is the
    original one again."""
    need_zennit()
    import zennit.core

    modeling, patch_map = vit_patches()
    watched = [*patch_map, zennit.core.BasicHook]
    assert set(patch_map) == {nn.GELU, nn.LayerNorm, nn.MultiheadAttention}
    before = [dict(vars(t)) for t in watched]
    x = pixels()
    with torch.no_grad():
        logits = vit(x)
    with zennit_patched(), lxt_patched(modeling, patch_map):
        changed = [t for t, b in zip(watched, before) if dict(vars(t)) != b]
        assert changed == watched  # every patch acted
    theirs(vit, x, linear_gamma=0.05, conv_gamma=0.25)
    for t, b in zip(watched, before):
        a = dict(vars(t))
        assert a.keys() == b.keys() and all(a[k] is b[k] for k in b), t
    with torch.no_grad():
        assert torch.equal(vit(x), logits)
    assert all(p.grad is None for p in vit.parameters())
