"""Rule-based methods on real architectures: torchvision ResNets and a VGG-style net, a model
using only functional ReLUs, and a transformer block.

ResNets reuse one in-place nn.ReLU per block and add residuals in place; DeepLift must still sum
to f(x) - f(b) through them, their max-pool, batch-norms and average pool, and leave the model
exactly as it was. Module-hook implementations (Captum's) miss functional ReLUs; rules do not. In
a transformer block softmax and LayerNorm break exact summation-to-delta, so there DeepLift must
run, report a finite delta, and differ from the plain gradient x delta.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.testing import assert_trees_close, check_completeness
from xattr.testing.strategies import random_tensor
from xattr.testing.vision import models as vision_models

from registry import changed_state, state_snapshot
from rule_fuzz_nets import GuidedReLU
from deep_lift_ref import one_hot, reference

tv = vision_models()
needs_torchvision = pytest.mark.skipif(tv is None, reason="torchvision is not installed")


def resnet(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(tv, name)(weights=None, num_classes=10)
    return model.double().eval()


def gradient_x_delta(f, x, base):
    return xattr.grad(f)(x) * (x - base)


@needs_torchvision
@pytest.mark.parametrize("name, shape", [("resnet18", (2, 3, 64, 64)), ("resnet50", (1, 3, 64, 64))])
def test_resnet_deep_lift_sums_to_delta_and_leaves_the_model_unchanged(name, shape):
    model = resnet(name)
    x = random_tensor(shape, seed=1)
    base = random_tensor(shape, seed=2, scale=0.3)
    f = xattr.target(model, 3)
    before = state_snapshot(model, x)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert not changed_state(before, state_snapshot(model, x))
    with torch.no_grad():
        gap = model(x)[:, 3] - model(base)[:, 3]
    assert attr.shape == shape and delta.shape == (shape[0],)
    assert_trees_close(attr.flatten(1).sum(1), gap, atol=1e-9, rtol=1e-8, what=f"{name} summation-to-delta")
    assert delta.abs().max() < 1e-9 + 1e-8 * gap.abs().max()
    # the in-place, reused ReLUs were rescaled: the plain gradient x delta does not sum to the gap
    plain = gradient_x_delta(f, x, base).flatten(1).sum(1)
    assert (plain - gap).abs().max() > 1e-3 * gap.abs().max()


@needs_torchvision
def test_resnet_guided_backprop_runs_and_leaves_the_model_unchanged():
    model = resnet("resnet18")
    x = random_tensor((2, 3, 32, 32), seed=3)
    before = state_snapshot(model, x)
    f = xattr.target(model, 0)
    gb = xattr.guided_backprop(f)(x)
    assert not changed_state(before, state_snapshot(model, x))
    assert gb.shape == x.shape and torch.isfinite(gb).all()
    assert not torch.allclose(gb, xattr.grad(f)(x))
    assert_trees_close(gb[1:], xattr.guided_backprop(f)(x[1:]), what="batch invariance")


# --------------------------------------------------------------------------- VGG-style


def vgg_style() -> nn.Sequential:
    """torchvision's VGG feature blocks (conv, in-place ReLU, max-pool) and a small classifier
    with in-place ReLU and dropout (VGG's own head is 120M parameters: slow to build)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        features = tv.vgg.make_layers([4, "M", 8, "M", 8, "M"], batch_norm=False)
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 5)]
        model = nn.Sequential(*features, *head)
    return model.double().eval()


class SwappedReLU(nn.Module):
    def forward(self, x):
        return GuidedReLU.apply(x)


@needs_torchvision
def test_vgg_style_guided_backprop_and_deep_lift():
    model = vgg_style()
    x = random_tensor((2, 3, 16, 16), seed=5)
    base = random_tensor((2, 3, 16, 16), seed=6, scale=0.3)
    before = state_snapshot(model, x)
    # guided backprop against the classic implementation: every ReLU module swapped for one
    # whose autograd backward is guided
    swapped = nn.Sequential(*[SwappedReLU() if isinstance(m, nn.ReLU) else m for m in model])
    for k in (0, 4):
        xg = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(swapped(xg)[:, k].sum(), xg)
        assert_trees_close(xattr.guided_backprop(xattr.target(model, k))(x), expected, what=f"VGG guided target {k}")
    # DeepLift against the paper's rules layer by layer (max-pool split, average pool, dropout)
    attr = xattr.deep_lift(xattr.target(model, 2), baselines=base)(x)
    assert_trees_close(attr, reference(model, x, base, one_hot(5, 2))[0], what="VGG deep_lift vs reference")
    check_completeness(xattr.target(model, 2), lambda x: attr, x, baselines=base, atol=1e-10, rtol=1e-8)
    assert not changed_state(before, state_snapshot(model, x))


# --------------------------------------------------------------------------- functional ReLUs


class FunctionalCNN(nn.Module):
    """No activation modules at all: F.relu, F.max_pool2d and x.relu_() in forward."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(16, 3)
        self.double().eval()

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = self.conv2(h).relu_()
        return self.fc(F.relu(h - 0.1).flatten(1))


def test_functional_relus_get_deep_lift_rules():
    model = FunctionalCNN()
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in model.modules())  # nothing for module hooks
    x, base = random_tensor((3, 2, 4, 4), seed=8), random_tensor((3, 2, 4, 4), seed=9, scale=0.5)
    f = xattr.target(model, 1)
    check_completeness(f, xattr.deep_lift(f, baselines=base), x, baselines=base, atol=1e-10, rtol=1e-8)
    with pytest.raises(AssertionError, match="completeness"):  # what skipping the ReLUs would give
        check_completeness(f, lambda x: gradient_x_delta(f, x, base), x, baselines=base, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(xattr.guided_backprop(f)(x), xattr.grad(f)(x))


# --------------------------------------------------------------------------- a transformer block


class Block(nn.Module):
    """Pre-norm transformer block on (B, T, D): attention (explicit softmax or fused SDPA), GELU
    MLP, residuals; then mean over tokens and a linear head."""

    def __init__(self, d: int = 8, heads: int = 2, sdpa: bool = False):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(10)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.head = nn.Linear(d, 3)
        self.heads, self.sdpa = heads, sdpa
        self.double().eval()

    def split(self, t):
        b, n, d = t.shape
        return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x):
        h = self.norm1(x)
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(x.shape))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


@pytest.mark.parametrize("sdpa", [False, True], ids=["softmax", "sdpa"])
def test_transformer_block(sdpa):
    model = Block(sdpa=sdpa)
    x, base = random_tensor((2, 5, 8), seed=11), random_tensor((2, 5, 8), seed=12, scale=0.2)
    f = xattr.target(model, 2)
    before = state_snapshot(model, x)
    with torch.no_grad():
        assert torch.equal(xattr.rules(model, xattr.rule.deep_lift_rules())(x), model(x))
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert attr.shape == x.shape and delta.shape == (2,)
    assert torch.isfinite(attr).all() and torch.isfinite(delta).all()
    with torch.no_grad():
        gap = model(x)[:, 2] - model(base)[:, 2]
    assert_trees_close(delta, attr.flatten(1).sum(1) - gap, atol=1e-12, what="reported delta")
    assert (attr - gradient_x_delta(f, x, base)).abs().max() > 1e-6, "the rules must change the result"
    # guided backprop runs; with no ReLU in the block it is the plain gradient
    gb = xattr.guided_backprop(f)(x)
    assert_trees_close(gb, xattr.grad(f)(x), what="guided backprop without ReLUs")
    assert not changed_state(before, state_snapshot(model, x))
