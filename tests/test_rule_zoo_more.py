"""Rule-based methods on more of torchvision's zoo than test_rule_zoo.py: MaxViT, MViT v1 and v2,
Swin3D, the video ResNets (R3D, MC3, R(2+1)D), S3D, Inception v3, EfficientNet-V2, Wide ResNet,
AlexNet, RegNetY and the segmentation models (FCN, DeepLabV3 with ASPP, LRASPP).

Each model, at a small width and input (the same forward code as torchvision's full models),
random weights at a fixed seed, float64, batch norms calibrated on one random batch:

- DeepLift with `exact_deep_lift_rules` sums to ``f(x) - f(b)`` (everything these models do is an
  op DeepLift conserves through: convolutions in 2-d and 3-d, pools, interpolation, concatenations,
  squeeze-and-excitation gates, layer norms and attention written out; MaxViT's block and grid
  partitions, MViT's pooled attention with its relative position terms written in place and
  Swin3D's shifted 3-d windows pair their rows batch-major: NOTE: [Rows merged with another
  dim]); with the defaults the attention models are far off (layer norm and attention keep their
  gradient). The model is left as it was; an example alone equals its row of the batch.
- guided backprop and deconvolution equal the model run with its ReLUs swapped for rule_fuzz_nets'
  written-out Functions (and the gradient where the model holds no ReLU: GELU, SiLU, hardswish);
- LRP (epsilon 1e-13) conserves on a bias-free copy, learned tokens (MViT's class token and
  position embeddings, which are biases too) zeroed and softmax mapped to ``Block``.

RAFT-small (optical flow) conserves too: its frames share one ``torch.cat`` batch, two blocks of
the rows DeepLift pairs on their views (NOTE: [Interleaved rows]). Group and instance norms
(RAFT's encoder) are written out by `exact_deep_lift_rules` (tested on small nets at the end).

Cost: the full Inception v3 and S3D take 10-20 s each here; their blocks are built alone
(`_inception`, `_s3d`).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.testing import assert_trees_close
from xattr.testing.strategies import random_tensor
from xattr.testing.vision import models as vision_models

from registry import changed_state, state_snapshot
from rule_fuzz_nets import DeconvReLU, GuidedReLU
from test_rule_zoo import _calibrated, swapped_grad

tv = vision_models()
pytestmark = pytest.mark.skipif(tv is None, reason="torchvision is not installed")
BN = nn.modules.batchnorm._BatchNorm
IMAGE, VIDEO = (3, 32, 32), (3, 4, 16, 16)


class _Segmentation(nn.Module):
    """A segmentation model's ``"out"`` map averaged over the pixels: one score per class."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"].mean((2, 3))


def _backbone(**returned):
    from torchvision.models._utils import IntermediateLayerGetter  # noqa: PLC0415

    return IntermediateLayerGetter(tv.ResNet(tv.resnet.BasicBlock, [1, 1, 1, 1]), returned)


def _fcn():
    seg = tv.segmentation
    return _Segmentation(seg.FCN(_backbone(layer4="out", layer3="aux"), seg.fcn.FCNHead(512, 5), seg.fcn.FCNHead(256, 5)))


def _deeplab():
    seg = tv.segmentation
    return _Segmentation(seg.DeepLabV3(_backbone(layer4="out"), seg.deeplabv3.DeepLabHead(512, 5, atrous_rates=(1, 2, 3))))


def _maxvit():
    return tv.maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1],
                            head_dim=4, stochastic_depth_prob=0.0, num_classes=5)


def _mvit(v2: bool):
    conf = tv.video.mvit.MSBlockConfig
    setting = [conf(1, 8, 8, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]), conf(2, 8, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1])]
    return tv.video.MViT(spatial_size=(16, 16), temporal_size=4, block_setting=setting, residual_pool=v2,
                         residual_with_cls_embed=not v2, rel_pos_embed=v2, proj_after_attn=v2, dropout=0.0, num_classes=5)


def _video_resnet(kind: str):
    r = tv.video.resnet
    makers = {"r3d": [r.Conv3DSimple] * 4, "mc3": [r.Conv3DSimple] + [r.Conv3DNoTemporal] * 3, "r2plus1d": [r.Conv2Plus1D] * 4}
    stem = r.R2Plus1dStem if kind == "r2plus1d" else r.BasicStem
    return r.VideoResNet(r.BasicBlock, makers[kind], [1, 1, 1, 1], stem, num_classes=5)


def _s3d():
    """S3D through its first two separable inception blocks and the 3x3x3 max-pool after them."""
    model = tv.video.S3D(num_classes=5, dropout=0.0)
    model.features = model.features[:7]
    model.avgpool = nn.AdaptiveAvgPool3d(1)  # a (2, 7, 7) window needs 16 x 224 x 224 clips
    model.classifier[1] = nn.Conv3d(480, 5, kernel_size=1)
    return model


def _inception():
    """Inception v3's five block types (A to E) in its order, after one of its stem convs."""
    inc = tv.inception
    return nn.Sequential(inc.BasicConv2d(3, 16, kernel_size=3), inc.InceptionA(16, pool_features=8), inc.InceptionB(232),
                         inc.InceptionC(712, channels_7x7=16), inc.InceptionD(768), inc.InceptionE(1280),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 5))


def _efficientnet_v2():
    e = tv.efficientnet
    setting = [e.FusedMBConvConfig(1, 3, 1, 8, 8, 1), e.FusedMBConvConfig(4, 3, 2, 8, 16, 2), e.MBConvConfig(4, 3, 2, 16, 24, 1)]
    return e.EfficientNet(setting, dropout=0.0, num_classes=5, last_channel=64, norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3))


def _alexnet():
    model = tv.alexnet(num_classes=5)
    model.classifier[1], model.classifier[4], model.classifier[6] = nn.Linear(256 * 36, 64), nn.Linear(64, 64), nn.Linear(64, 5)
    return model


BUILDERS = {  # name: (builder, the shape of one example)
    "maxvit": (_maxvit, IMAGE),
    "mvit_v1": (functools.partial(_mvit, False), VIDEO),
    "mvit_v2": (functools.partial(_mvit, True), VIDEO),
    "swin3d": (lambda: tv.video.SwinTransformer3d([2, 4, 4], 8, [2, 2], [1, 2], [2, 2, 2], stochastic_depth_prob=0.0,
                                                  num_classes=5), VIDEO),
    "r3d": (functools.partial(_video_resnet, "r3d"), VIDEO),
    "mc3": (functools.partial(_video_resnet, "mc3"), VIDEO),
    "r2plus1d": (functools.partial(_video_resnet, "r2plus1d"), VIDEO),
    "s3d": (_s3d, (3, 4, 16, 16)),
    "inception_v3": (_inception, (3, 17, 17)),
    "efficientnet_v2": (_efficientnet_v2, IMAGE),
    "wide_resnet": (lambda: tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128, num_classes=5), IMAGE),
    "alexnet": (_alexnet, (3, 64, 64)),
    "regnet_y": (lambda: tv.regnet_y_400mf(num_classes=5), IMAGE),
    "fcn": (_fcn, IMAGE),
    "deeplabv3": (_deeplab, IMAGE),
    "lraspp": (lambda: _Segmentation(tv.segmentation.lraspp_mobilenet_v3_large(weights_backbone=None, num_classes=5)), IMAGE),
}
ATTENTION = ("maxvit", "mvit_v1", "mvit_v2", "swin3d")
NO_RELU = (*ATTENTION, "efficientnet_v2")  # GELU, SiLU: guided backprop and deconvolution are the gradient
# |delta| / |f(x) - f(b)| with DeepLift's defaults, where layer norm and attention keep their gradient
DEFAULT_GAP = {"maxvit": 0.10, "mvit_v1": 1.4, "mvit_v2": 1.5, "swin3d": 0.72}


@functools.lru_cache(maxsize=None)
def zoo(name: str) -> nn.Module:
    build, shape = BUILDERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
    return _calibrated(model, shape)


def inputs(name: str, batch: int = 2):
    shape = BUILDERS[name][1]
    return random_tensor((batch, *shape), seed=1), random_tensor((batch, *shape), seed=2, scale=0.3)


# --------------------------------------------------------------------------- DeepLift


@pytest.mark.parametrize("name", list(BUILDERS))
def test_exact_deep_lift_sums_to_delta(name):
    model = zoo(name)
    x, base = inputs(name)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    exact = xattr.rule.exact_deep_lift_rules()
    attr, delta = xattr.deep_lift(f, baselines=base, mapping=exact, return_delta=True)(x)
    with torch.no_grad():
        gap = f(x) - f(base)
    assert gap.abs().min() > 1e-4  # a live output
    assert_trees_close(attr.flatten(1).sum(1), gap, atol=1e-12 * gap.abs().max(), rtol=0, what=f"{name} summation-to-delta")
    assert delta.abs().max() < 1e-12 * gap.abs().max()
    if name in DEFAULT_GAP:  # the defaults keep the gradient at layer norm and attention
        _, plain = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
        measured = (plain.abs().max() / gap.abs().max()).item()
        assert DEFAULT_GAP[name] / 3 < measured < DEFAULT_GAP[name] * 3, measured
    assert not changed_state(before, state_snapshot(model, x))


@pytest.mark.parametrize("name", ATTENTION)
def test_exact_deep_lift_rows_and_shared_reference(name):
    """Three examples: one alone equals its row, with a reference each and a shared one (B + 1
    rows; the windows and pooled tokens merged with the rows run unshared), which sums to delta."""
    model = zoo(name)
    x, base = inputs(name, 3)
    f = xattr.target(model, 1)
    dl = functools.partial(xattr.deep_lift, f, mapping=xattr.rule.exact_deep_lift_rules())
    attr = dl(baselines=base)(x)
    assert_trees_close(attr[2:], dl(baselines=base[2:])(x[2:]), what=f"{name}: row vs alone")
    shared, delta = dl(baselines=0.0, return_delta=True)(x)
    assert_trees_close(shared[2:], dl(baselines=0.0)(x[2:]), what=f"{name}: shared reference, row vs alone")
    with torch.no_grad():
        gap = f(x) - f(torch.zeros_like(x))
    assert delta.abs().max() < 1e-12 * gap.abs().max()


# --------------------------------------------------------------------------- guided backprop, deconvolution


@pytest.mark.parametrize("name", list(BUILDERS))
def test_guided_backprop_and_deconvolution_equal_swapped_relus(name):
    model = zoo(name)
    x, _ = inputs(name)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    gb, dc = xattr.guided_backprop(f)(x), xattr.deconvolution(f)(x)
    assert_trees_close(gb, swapped_grad(model, x, 1, GuidedReLU), what=f"{name} guided backprop")
    assert_trees_close(dc, swapped_grad(model, x, 1, DeconvReLU), what=f"{name} deconvolution")
    grad = xattr.grad(f)(x)
    if name in NO_RELU:
        assert_trees_close(gb, grad, what=f"{name}: no ReLU, guided backprop is the gradient")
    else:  # the reference did swap something
        assert (gb - grad).abs().max() > 1e-3 * gb.abs().max()
    assert not changed_state(before, state_snapshot(model, x))


# --------------------------------------------------------------------------- LRP


def bias_free(model: nn.Module) -> nn.Module:
    """A copy without biases: those of layers, batch norms' running means, learned tokens."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.zero_()
            if isinstance(m, BN):
                m.running_mean.zero_()
        for name, p in model.named_parameters():  # MViT's class token and position embeddings
            if name.startswith("pos_encoding."):
                p.zero_()
    return model


@pytest.mark.parametrize("name", list(BUILDERS))
def test_lrp_conserves_without_biases(name):
    model = bias_free(zoo(name))
    x, _ = inputs(name)
    f = xattr.target(model, 1)
    composite = xattr.rule.lrp_rules(1e-13)
    composite[F.softmax] = xattr.rule.Block()
    _, delta = xattr.lrp(f, composite=composite, return_delta=True)(x)
    out = f(x).detach()
    assert out.abs().min() > 1e-4
    assert delta.abs().max() < 1e-7 * out.abs().max()


# --------------------------------------------------------------------------- RAFT (optical flow): measured gaps


class _PerFrame(nn.Module):
    """An encoder run on each half of its batch alone: RAFT's ``torch.cat([frame1, frame2])``
    without the cat (the same numbers)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, both):
        return torch.cat([self.encoder(half) for half in both.chunk(2)])


class _Flow(nn.Module):
    """RAFT-small's flow after one update, averaged over the pixels, (B, 2); ``x`` holds both
    frames, (B, 6, H, W)."""

    def __init__(self, norm: bool, per_frame: bool):
        super().__init__()
        raft_module = tv.optical_flow.raft
        self.raft = tv.optical_flow.raft_small(weights=None)
        if not norm:
            self.raft.feature_encoder = raft_module.FeatureEncoder(block=raft_module.BottleneckBlock,
                                                                   layers=(32, 32, 64, 96, 128), norm_layer=None)
        if per_frame:
            self.raft.feature_encoder = _PerFrame(self.raft.feature_encoder)

    def forward(self, x):
        return self.raft(x[:, :3], x[:, 3:], num_flow_updates=1)[-1].mean((2, 3))


# With `exact_deep_lift_rules` RAFT conserves to float64 rounding, its instance norms written out
# as group norms (before, no op kind, they kept their gradient: 0.58 of the change) or without
# them: its correlation volume (a matmul of two activations), ``grid_sample`` at fixed coordinates,
# the ConvGRU's gates (products), tanh and sigmoid. Its feature encoder runs on ``torch.cat([frame1,
# frame2])``; under DeepLift each frame holds inputs then references, so the cat holds two blocks
# of the rows, paired on their views (NOTE: [Interleaved rows]: before, its ReLUs kept their
# gradient, 0.25 off with the instance norms and 0.48 without), and gives the numbers of the
# encoder run frame by frame. After a second update the sampling coordinates depend on the input
# through a ``detach`` (RAFT's own), where no gradient passes: 0.3 of the change there.
@pytest.mark.parametrize("norm", [True, False], ids=["instance_norm", "no_norm"])
def test_raft_deep_lift_conserves(monkeypatch, norm):
    raft_module = tv.optical_flow.raft
    grid = raft_module.make_coords_grid  # float32 whatever the model's dtype
    monkeypatch.setattr(raft_module, "make_coords_grid", lambda *a, **k: grid(*a, **k).double())
    x, base = random_tensor((2, 6, 128, 128), seed=1), random_tensor((2, 6, 128, 128), seed=2, scale=0.3)
    attrs = []
    for per_frame in (False, True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _Flow(norm, per_frame).double().eval()
        before = state_snapshot(model, x)
        f = xattr.target(model, 0)
        attr, delta = xattr.deep_lift(f, baselines=base, mapping=xattr.rule.exact_deep_lift_rules(), return_delta=True)(x)
        with torch.no_grad():
            gap = f(x) - f(base)
        assert (delta.abs() / gap.abs()).max() < 1e-12
        attrs.append(attr)
        if norm and not per_frame:  # RAFT as torchvision builds it: guided backprop is exact
            assert_trees_close(xattr.guided_backprop(f)(x), swapped_grad(model, x, 0, GuidedReLU), what="raft guided backprop")
        assert not changed_state(before, state_snapshot(model, x))
    assert_trees_close(attrs[0], attrs[1], what="raft: frames in one cat vs one by one")


# --------------------------------------------------------------------------- group and instance norms


NORMS = {
    "nn.GroupNorm": lambda: nn.GroupNorm(2, 6),
    "nn.GroupNorm(affine=False)": lambda: nn.GroupNorm(3, 6, affine=False),
    "nn.InstanceNorm2d(affine=True)": lambda: nn.InstanceNorm2d(6, affine=True),
    "nn.InstanceNorm2d": lambda: nn.InstanceNorm2d(6),
}


@pytest.mark.parametrize("norm", list(NORMS))
def test_exact_deep_lift_writes_group_and_instance_norms_out(norm):
    """Under `exact_deep_lift_rules` a group norm (an instance norm: one channel per group) runs as
    layer norm's steps over each group: DeepLift sums to delta. Before, no op kind, it kept its
    gradient: |delta| 0.58-1.0 of |f(x) - f(b)| on these nets (RAFT's encoder: 0.58)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = NORMS[norm]()
        net = nn.Sequential(nn.Conv2d(3, 6, 3), layer, nn.ReLU(), nn.Conv2d(6, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 2)).double().eval()
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    x, base = random_tensor((3, 3, 8, 8), seed=1), random_tensor((3, 3, 8, 8), seed=2, scale=0.3)
    f = xattr.target(net, 1)
    exact = xattr.rule.exact_deep_lift_rules()
    assert_trees_close(xattr.rules(net, exact)(x), net(x), what=f"{norm} written out, forward")
    with torch.no_grad():
        gap, gap0 = f(x) - f(base), f(x) - f(torch.zeros_like(x))
    for b, change in ((base, gap), (0.0, gap0)):
        _, delta = xattr.deep_lift(f, baselines=b, mapping=exact, return_delta=True)(x)
        assert delta.abs().max() < 1e-12 * change.abs().max(), norm
    _, plain = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
    assert plain.abs().max() > 0.1 * gap.abs().max()  # DeepLift's defaults keep its gradient


def test_an_instance_norm_with_running_statistics_is_not_written_out():
    """With running statistics an instance norm is affine in eval mode (its gradient is exact)
    and updates them in training mode, which the written-out call would not: not parsed."""
    layer = nn.InstanceNorm2d(6, track_running_stats=True).double()
    x = random_tensor((2, 6, 4, 4), seed=1)
    for training in (True, False):
        layer.train(training)
        seen = []
        with pytest.MonkeyPatch.context() as mp:
            written = xattr._src.written_out.group_norm
            mp.setattr(xattr._src.unfused, "_FROM_OP", {**xattr._src.unfused._FROM_OP,
                                                        "group_norm": lambda *a, **k: seen.append(1) or written(*a, **k)})
            xattr.rules(layer, xattr.rule.exact_deep_lift_rules())(x)
        assert not seen
