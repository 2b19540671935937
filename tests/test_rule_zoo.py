"""Rule-based methods on torchvision's model zoo beyond ResNet and VGG (test_rule_models.py).

Guided backprop and deconvolution must equal the model run with its ReLUs swapped for the
written-out autograd Functions of rule_fuzz_nets (every torchvision ReLU goes through ``F.relu``:
``nn.ReLU``, DenseNet's and GoogLeNet's functional, in-place calls), and equal the plain gradient
on models without a ReLU (ReLU6, SiLU, GELU are no ReLUs: docs/rules.md). DeepLift must sum to
``f(x) - f(b)`` on the models made of conserving ops (squeeze-and-excitation gates included:
products of two activations), and on the others (layer norm, attention) and the gated ones equal
the model run on rows ``[x; b]`` with its nonlinearities swapped for rule_fuzz_nets' Rescale
Functions and its gates for its product Function. On every model an example attributed alone must
equal its row of a batch, with a reference per example and a shared one (B + 1 rows), also at
batch sizes whose row count equals a ViT's token count (NOTE: [Rows in dim 0 or dim 1]); DeepLift
SHAP must not depend on ``chunk_size``; no call may change the model.

Random weights at a fixed seed, float64, tiny inputs. Batch norms are calibrated on one random
batch (at torchvision's initial statistics the activations of MobileNet or EfficientNet shrink to
1e-10 and below, where DeepLift's eps fallback, not its rules, decides the numbers); heads that
torchvision initialises at or near zero are redrawn. Large models are built from their classes at
a reduced width or depth (the same forward code): the full-size ones take seconds each.
"""

from __future__ import annotations

import contextlib
import functools
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
import xattr._src.row_layout as row_layout
from xattr.testing import assert_trees_close
from xattr.testing.strategies import random_tensor
from xattr.testing.vision import models as vision_models

from registry import changed_state, state_snapshot
from rule_fuzz_nets import DeconvReLU, GuidedReLU, PairedMatmul, PairedProduct, _Rescale, _RescaleSoftmax

tv = vision_models()
SqueezeExcitation = None if tv is None else importlib.import_module("torchvision.ops.misc").SqueezeExcitation
pytestmark = pytest.mark.skipif(tv is None, reason="torchvision is not installed")

SIZE = 32


def _calibrated(model: nn.Module, shape: tuple = (3, SIZE, SIZE)) -> nn.Module:
    """float64, batch norms' statistics from one random batch of inputs of ``shape``, eval mode."""
    model = model.double()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # the batch's own statistics
    if norms:
        model.train()
        with torch.no_grad():
            model(random_tensor((8, *shape), seed=99))
    return model.eval()


def _densenet():
    return tv.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=5)


def _efficientnet():
    conf = tv.efficientnet.MBConvConfig
    setting = [conf(1, 3, 1, 32, 16, 1), conf(6, 3, 2, 16, 24, 2), conf(6, 5, 2, 24, 40, 1)]
    return tv.efficientnet.EfficientNet(setting, dropout=0.2, num_classes=5)


def _convnext():
    conf = tv.convnext.CNBlockConfig  # layer scale 1 (torchvision's 1e-6 makes every block an identity)
    return tv.ConvNeXt([conf(8, 16, 1), conf(16, None, 1)], layer_scale=1.0, num_classes=5)


def _vit(image_size=SIZE):
    model = tv.VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                                 num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.3)  # zeros in torchvision
    return model


def _swin(v2=False):
    st = tv.swin_transformer
    extra = dict(block=st.SwinTransformerBlockV2, downsample_layer=st.PatchMergingV2) if v2 else {}
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2], num_classes=5,
                              **extra)


def _squeezenet():
    model = tv.squeezenet1_1(weights=None, num_classes=5)
    nn.init.normal_(model.classifier[1].weight, std=0.3)  # std 0.01 in torchvision: its ReLU'd outputs are mostly 0
    return model


BUILDERS = {
    "densenet": _densenet,
    "squeezenet1_1": _squeezenet,
    "mobilenet_v2": lambda: tv.mobilenet_v2(weights=None, num_classes=5, width_mult=0.25),
    "mobilenet_v3_small": lambda: tv.mobilenet_v3_small(weights=None, num_classes=5),
    "efficientnet": _efficientnet,
    "shufflenet_v2_x0_5": lambda: tv.shufflenet_v2_x0_5(weights=None, num_classes=5),
    "regnet_x_400mf": lambda: tv.regnet_x_400mf(weights=None, num_classes=5),
    "mnasnet0_5": lambda: tv.mnasnet0_5(weights=None, num_classes=5),
    "googlenet": lambda: tv.googlenet(weights=None, num_classes=5, aux_logits=False, init_weights=True),
    "resnext": lambda: tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=5),
    "convnext": _convnext,
    "vit": _vit,
    "swin": _swin,
    "swin_v2": functools.partial(_swin, v2=True),
}
# summation-to-delta holds (docs/rules.md: affine maps, elementwise nonlinearities, max-pools,
# products of two activations)
GATED = ("mobilenet_v3_small", "efficientnet")  # squeeze-and-excitation gates: products
CONSERVING = ("densenet", "squeezenet1_1", "mobilenet_v2", "shufflenet_v2_x0_5", "regnet_x_400mf", "mnasnet0_5", "googlenet",
              "resnext", *GATED)
# no ReLU at all: ReLU6 (hardtanh), SiLU, GELU; guided backprop and deconvolution are the gradient
NO_RELU = ("mobilenet_v2", "efficientnet", "convnext", "vit", "swin", "swin_v2")


@functools.lru_cache(maxsize=None)
def zoo(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _calibrated(BUILDERS[name]())


def inputs(batch: int, size: int = SIZE):
    return random_tensor((batch, 3, size, size), seed=1), random_tensor((batch, 3, size, size), seed=2, scale=0.3)


# --------------------------------------------------------------------------- references


@contextlib.contextmanager
def relus_as(fn: type[torch.autograd.Function]):
    """Every ``F.relu`` call (``nn.ReLU`` makes one) through ``fn``, out of place."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "relu", lambda x, inplace=False: fn.apply(x))
        yield


def swapped_grad(model, x, k, fn):
    x = x.clone().requires_grad_()
    with relus_as(fn):
        out = model(x)
    return torch.autograd.grad(out[:, k].sum(), x)[0]


@contextlib.contextmanager
def rescaled(rows: int):
    """The elementwise nonlinearities torchvision calls, ``Tensor.softmax`` and products of two
    activations (``Tensor.matmul``, ``@``), replaced by the
    Rescale references on tensors whose dim 0 holds the ``rows`` rows, alone or merged with the
    dim after them, each example's together (Swin's windows, ``(rows * windows, ...)``: the first
    half are the inputs', as DeepLift reads them); other tensors (parameters) keep their op."""

    def wrap(orig, rule):
        def call(x, *args, **kwargs):
            if not (isinstance(x, torch.Tensor) and x.ndim and x.shape[0] % rows == 0 and x.requires_grad):
                return orig(x, *args, **kwargs)
            kwargs.pop("inplace", None)
            args = tuple(a for a in args if not isinstance(a, bool))  # a positional inplace flag
            return rule(x, args, kwargs)

        return call

    elementwise = lambda orig: wrap(orig, lambda x, a, k: _Rescale.apply(x, lambda t: orig(t, *a, **k), 1e-10))  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        for name in ("relu", "silu", "gelu", "hardswish", "hardsigmoid", "hardtanh"):
            mp.setattr(F, name, elementwise(getattr(F, name)))
        mp.setattr(torch, "sigmoid", elementwise(torch.sigmoid))
        softmax = lambda x, a, k: _RescaleSoftmax.apply(x, k["dim"] if "dim" in k else a[0], 1e-10)  # noqa: E731
        mp.setattr(torch.Tensor, "softmax", wrap(torch.Tensor.softmax, softmax))
        # Swin's attention: products of two activations on its windows
        matmul = lambda orig: wrap(orig, lambda x, a, k: PairedMatmul.apply(x, a[0]) if a[0].requires_grad else orig(x, *a))  # noqa: E731
        for name in ("matmul", "__matmul__"):
            mp.setattr(torch.Tensor, name, matmul(getattr(torch.Tensor, name)))
        # the squeeze-and-excitation gates of MobileNetV3 and EfficientNet: ``scale * input``
        mp.setattr(SqueezeExcitation, "forward", lambda self, t: PairedProduct.apply(self._scale(t), t))
        yield


def rescale_reference(model, x, base, k):
    """DeepLift of output k written out: the model on rows [x; b] under `rescaled`."""
    both = torch.cat([x, base]).requires_grad_()
    with rescaled(both.shape[0]):
        out = model(both)
    seed = torch.zeros_like(out)
    seed[: x.shape[0], k] = 1
    return (x - base) * torch.autograd.grad(out, both, seed)[0][: x.shape[0]]


# --------------------------------------------------------------------------- guided backprop, deconvolution


@pytest.mark.parametrize("name", list(BUILDERS))
def test_guided_backprop_and_deconvolution_equal_swapped_relus(name):
    model = zoo(name)
    x, _ = inputs(2)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    gb, dc = xattr.guided_backprop(f)(x), xattr.deconvolution(f)(x)
    assert_trees_close(gb, swapped_grad(model, x, 1, GuidedReLU), what=f"{name} guided backprop")
    assert_trees_close(dc, swapped_grad(model, x, 1, DeconvReLU), what=f"{name} deconvolution")
    if name in NO_RELU:
        assert_trees_close(gb, xattr.grad(f)(x), what=f"{name}: no ReLU, guided backprop is the gradient")
    else:  # the reference did swap something
        assert (gb - xattr.grad(f)(x)).abs().max() > 1e-3 * gb.abs().max()
    assert not changed_state(before, state_snapshot(model, x))


def test_guided_backprop_under_activation_checkpointing_and_refusals():
    """DenseNet's memory-efficient layers run under torch.utils.checkpoint: guided backprop keeps
    its numbers, deconvolution and DeepLift refuse clearly (docs/rules.md, Limits)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _calibrated(tv.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=5,
                                        memory_efficient=True))
    model.load_state_dict(zoo("densenet").state_dict())
    x, base = inputs(2)
    f = xattr.target(model, 1)
    assert_trees_close(xattr.guided_backprop(f)(x), xattr.guided_backprop(xattr.target(zoo("densenet"), 1))(x),
                       what="guided backprop with checkpointing")
    for method in (xattr.deconvolution(f), xattr.deep_lift(f, baselines=base)):
        with pytest.raises(RuntimeError, match="checkpoint"):
            method(x)


# --------------------------------------------------------------------------- DeepLift


def _alone_equals_rows(f, x, base, what):
    """An example attributed alone equals its row of the batch, with a reference per example and
    with the shared reference 0 (B + 1 rows)."""
    i = x.shape[0] - 1
    attr = xattr.deep_lift(f, baselines=base)(x)
    assert_trees_close(attr[i:], xattr.deep_lift(f, baselines=base[i:])(x[i:]), what=f"{what}: row vs alone")
    shared = xattr.deep_lift(f, baselines=0.0)(x)
    assert_trees_close(shared[i:], xattr.deep_lift(f, baselines=0.0)(x[i:]), what=f"{what}: shared reference, row vs alone")
    return attr, shared


@pytest.mark.parametrize("name", CONSERVING)
def test_deep_lift_sums_to_delta_on_conserving_models(name):
    model = zoo(name)
    x, base = inputs(2)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(base)[:, 1]
    assert gap.abs().min() > 1e-3
    assert_trees_close(attr.flatten(1).sum(1), gap, atol=1e-10, rtol=1e-9, what=f"{name} summation-to-delta")
    assert delta.abs().max() < 1e-10 + 1e-9 * gap.abs().max()
    _, shared = _alone_equals_rows(f, x, base, name)
    with torch.no_grad():
        gap0 = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert_trees_close(shared.flatten(1).sum(1), gap0, atol=1e-10, rtol=1e-9, what=f"{name} summation-to-delta, 0")
    assert not changed_state(before, state_snapshot(model, x))


@pytest.mark.parametrize("name", [n for n in BUILDERS if n not in CONSERVING or n in GATED])
def test_deep_lift_equals_the_rescale_reference_elsewhere(name):
    """Squeeze-and-excitation gates take the product's multipliers in both; layer norms and
    attention keep their gradient in both (the delta is not small there)."""
    model = zoo(name)
    x, base = inputs(2)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    attr, shared = _alone_equals_rows(f, x, base, name)
    assert_trees_close(attr, rescale_reference(model, x, base, 1), what=f"{name} deep_lift vs reference")
    assert_trees_close(shared, rescale_reference(model, x, torch.zeros_like(x), 1), what=f"{name} deep_lift(0) vs reference")
    assert (attr - xattr.grad(f)(x) * (x - base)).abs().max() > 1e-6 * attr.abs().max(), "the rules must change the result"
    assert not changed_state(before, state_snapshot(model, x))


@pytest.mark.parametrize("name", ["googlenet", "mobilenet_v3_small", "vit"])
def test_deep_lift_shap_chunks(name):
    model = zoo(name)
    x, _ = inputs(2)
    dist = random_tensor((3, 3, SIZE, SIZE), seed=3, scale=0.3)
    f = xattr.target(model, 1)
    whole, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    assert delta.shape == (2, 3)
    for chunk in (3, 4, 7):
        assert_trees_close(xattr.deep_lift_shap(f, baselines=dist, chunk_size=chunk)(x), whole, what=f"{name} chunk {chunk}")
    assert_trees_close(xattr.deep_lift_shap(f, baselines=dist)(x[1:]), whole[1:], what=f"{name} shap row vs alone")


# --------------------------------------------------------------------------- rows that coincide with tokens


@pytest.fixture
def retries(monkeypatch):
    """How many times DeepLift ran a call again with more rows (NOTE: [Rows in dim 0 or dim 1])."""
    count = []
    factor = row_layout._next_factor
    monkeypatch.setattr(row_layout, "_next_factor", lambda *a: count.append(a) or factor(*a))
    return count


def test_vit_rows_equal_to_its_token_count(retries):
    """A 32-px ViT has 17 tokens: 16 examples and a shared reference are 17 rows, and its MLP's
    (17, 17, 32) activations and its layers' (17, 17, 16) outputs could hold them in dim 0 or 1."""
    model = zoo("vit")
    x, base = inputs(16)
    f = xattr.target(model, 1)
    _alone_equals_rows(f, x, base, "vit, 16 examples")
    assert retries, "the 17 rows did not coincide with the tokens"
    assert_trees_close(xattr.deep_lift(f, baselines=0.0)(x), rescale_reference(model, x, torch.zeros_like(x), 1),
                       what="vit, 17 rows, vs reference")
    split = xattr.at_layer(f, model.encoder.layers[0])  # its (17, 17, 16) output, read in dim 0
    layer = xattr.layer_deep_lift(split, baselines=0.0)(x)
    assert_trees_close(layer[15:], xattr.layer_deep_lift(split, baselines=0.0)(x[15:]), what="vit layer, row vs alone")


@pytest.mark.parametrize("batch, n", [(1, 5), (4, 2)], ids=["paired", "shared"])
def test_vit_deep_lift_shap_rows_equal_to_its_token_count(retries, batch, n):
    """A 24-px ViT has 10 tokens: 5 baselines of one example (2 * 5 rows), or 2 of four examples
    (2 * 4 + 2 rows), fill 10 rows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _calibrated(_vit(24))
    x, _ = inputs(batch, 24)
    dist = random_tensor((n, 3, 24, 24), seed=3, scale=0.3)
    f = xattr.target(model, 1)
    got = xattr.deep_lift_shap(f, baselines=dist)(x)
    assert retries, "the 10 rows did not coincide with the tokens"
    expected = torch.stack([rescale_reference(model, x, d.expand_as(x), 1) for d in dist]).mean(0)
    assert_trees_close(got, expected, what=f"vit deep_lift_shap, {batch} x {n}")
