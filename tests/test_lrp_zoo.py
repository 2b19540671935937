"""LRP, the layer and neuron rule-based methods and guided Grad-CAM on torchvision's zoo beyond
ResNet and VGG (random weights, float64, small configurations of each architecture).

Each check has an obviously correct counterpart:

- LRP-0 (epsilon 1e-13) on copies without biases, batch norms calibrated to O(1) activations:
  ``sum(R) = f(x)`` (every rule conserves there: ReLU6, hardswish and SiLU take `Pass`, layer norm
  `FixedStd`, the squeeze-and-excitation gates `FixedGate`), and ``R = x * grad f`` on networks of
  ReLUs, pools, concatenations and batch norms (a homogeneous piecewise-linear function);
- `merge_batch_norm` leaves LRP-epsilon's numbers as they are (the merged conv is the composition
  the unmerged rules already propagate through), and leaves alone the batch norms that precede a
  conv (DenseNet), which it documents it does not merge;
- a composite keyed by kind, module type, module name and an input-layer rule against the same
  rules written out layer by layer in relevance form for SqueezeNet (nothing shared with xattr);
- `layer_lrp`, `layer_deep_lift` against the method's own signal read by a hook at the layer, the
  neuron variants against the method applied to the model cut off after the layer;
- guided Grad-CAM against guided backprop times Grad-CAM computed by hand and upsampled;
- one example alone equals its row, chunks change nothing, the model is left as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Epsilon, Gamma, ZBox, lrp_rules
from xattr.testing.vision import models as vision_models

from registry import changed_state, state_snapshot

TV = vision_models()
pytestmark = pytest.mark.skipif(TV is None, reason="torchvision is not installed")
D = torch.float64
BN = nn.modules.batchnorm._BatchNorm


def _calibrate(model, centred=True):
    """Each batch norm's running statistics from a fixed batch, in turn, so activations stay O(1)
    (random weights with default statistics die out or blow up with depth)."""

    def hook(module, args):
        a = args[0].detach()
        dims = [0] + list(range(2, a.ndim))
        module.running_mean.copy_(a.mean(dims) if centred else torch.zeros_like(module.running_mean))
        module.running_var.copy_((a.var(dims) if centred else (a * a).mean(dims)) + 1e-3)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, BN)]
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(1)))
    for h in handles:
        h.remove()
    return model


def _build(name):
    torch.manual_seed(0)
    if name == "densenet":
        m = TV.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=5)
    elif name == "squeezenet":
        m = TV.squeezenet1_1(num_classes=5)
    elif name == "mobilenet_v2":
        m = TV.MobileNetV2(num_classes=5, width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]])
    elif name == "mobilenet_v3":
        m = TV.mobilenet_v3_small(num_classes=5)
    elif name == "efficientnet":
        from torchvision.models.efficientnet import MBConvConfig

        m = TV.EfficientNet([MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(6, 3, 2, 16, 24, 2)], dropout=0.2, num_classes=5)
    elif name == "shufflenet":
        m = TV.ShuffleNetV2([2, 2, 1], [8, 16, 32, 64, 128], num_classes=5)
    elif name == "regnet":
        m = TV.regnet_x_400mf(num_classes=5)
    elif name == "googlenet":
        m = TV.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=5)
    elif name == "alexnet":
        m = TV.alexnet(num_classes=5)
    elif name == "convnext":
        from torchvision.models.convnext import CNBlockConfig

        m = TV.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], layer_scale=0.5, num_classes=5)
    m = m.to(D).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, BN) and mod.affine:
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g, dtype=D) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g, dtype=D) * 0.1)
            elif isinstance(mod, nn.Conv2d) and mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g, dtype=D) * 0.05)
    return _calibrate(m)


_CACHE: dict = {}


def model(name):
    """A fresh copy of each model (built once), so no test sees another's changes."""
    if name not in _CACHE:
        _CACHE[name] = _build(name)
    return copy.deepcopy(_CACHE[name])


def bias_free(m):
    """m without biases: conv, linear, batch-norm and layer-norm biases zero, batch norms
    uncentred and recalibrated (running mean 0)."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear, BN, nn.LayerNorm)) and getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    return _calibrate(m, centred=False)


def inputs(b=2):
    return torch.rand(b, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(3))


def target_of(m, x):
    return int(m(x)[0].argmax())


# ----------------------------------------------------------------------------- conservation, LRP-0


@pytest.mark.parametrize("name", ["densenet", "squeezenet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "shufflenet",
                                  "regnet", "convnext"])
def test_lrp_conserves_without_biases(name):
    """Without biases every rule of lrp_rules conserves: sum(R) = f(x) (epsilon 1e-13 absorbs
    ~1e-9 of it). The squeeze-and-excitation gates of MobileNetV3 and EfficientNet counted the
    product's relevance twice and sent it through the gate's sigmoid (sum(R) 1e3 to 1e16 times
    f(x) before FixedGate)."""
    m = bias_free(model(name))
    x = inputs()
    f = xattr.target(m, target_of(m, x))
    r, delta = xattr.lrp(f, composite=lrp_rules(1e-13), return_delta=True)(x)
    out = f(x)
    assert out.abs().min() > 1e-3  # a live output, so the check means something
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-7 * out.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", ["densenet", "squeezenet", "shufflenet", "regnet"])
def test_lrp0_is_gradient_times_input_on_relu_nets_without_biases(name):
    m = bias_free(model(name))
    x = inputs()
    f = xattr.target(m, target_of(m, x))
    r = xattr.lrp(f, composite=lrp_rules(1e-13))(x)
    gxi = xattr.input_x_gradient(f)(x)
    torch.testing.assert_close(r, gxi, atol=1e-8 * gxi.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", ["densenet", "squeezenet", "regnet"])
def test_z_plus_conserves_where_every_conv_feeds_a_relu(name):
    """epsilon_plus (z+ for conv) on merged bias-free ReLU networks: sum(R) = f(x). (It does not
    where a conv's output reaches no ReLU, as in the linear bottlenecks of MobileNetV2 and
    ShuffleNetV2: units without positive contributions keep their relevance, 19% and 67% there.)"""
    m = xattr.merge_batch_norm(bias_free(model(name)))
    x = inputs()
    f = xattr.target(m, target_of(m, x))
    r, delta = xattr.lrp(f, composite=xattr.rule.epsilon_plus(eps=1e-13), return_delta=True)(x)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-7 * f(x).abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", ["densenet", "mobilenet_v2", "mobilenet_v3", "shufflenet"])
def test_merging_batch_norm_keeps_lrp_epsilon(name):
    """LRP-epsilon through a conv and its batch norm equals LRP-epsilon through the merged conv
    (biases included); a batch norm preceding a conv (DenseNet's norm1, transitions, norm5) is not
    merged, as documented, and the merged copy computes the same outputs."""
    m = model(name)
    x = inputs()
    before = state_snapshot(m, x)
    merged = xattr.merge_batch_norm(m)
    assert not changed_state(before, state_snapshot(m, x))
    torch.testing.assert_close(merged(x), m(x), atol=1e-12, rtol=1e-12)
    left = sorted(n for n, mod in merged.named_modules() if isinstance(mod, BN))
    if name == "densenet":
        assert left == sorted(["features.denseblock1.denselayer1.norm1", "features.denseblock1.denselayer2.norm1",
                               "features.denseblock2.denselayer1.norm1", "features.denseblock2.denselayer2.norm1",
                               "features.transition1.norm", "features.norm5"])
    else:
        assert left == []
    t = target_of(m, x)
    r = xattr.lrp(xattr.target(m, t), composite=lrp_rules(1e-12))(x)
    rm = xattr.lrp(xattr.target(merged, t), composite=lrp_rules(1e-12))(x)
    torch.testing.assert_close(rm, r, atol=1e-6 * r.abs().max().item(), rtol=0)


# ----------------------------------------------------------------------------- invariance, state


@pytest.mark.parametrize("name,first", [("densenet", "features.conv0"), ("mobilenet_v3", "features.0.0"), ("shufflenet", "conv1.0")])
def test_rows_chunks_and_state(name, first):
    """One example alone is its row, chunks and K outputs change nothing, the model (also the
    one merge_batch_norm copied) is left as it was: default rules, z+ and z^B-gamma composites."""
    m = model(name)
    merged = xattr.merge_batch_norm(m)
    x = inputs(3)
    t = target_of(m, x)
    for net, composite in ((m, None), (merged, xattr.rule.epsilon_plus()), (merged, xattr.rule.epsilon_gamma_box(first, 0.0, 1.0))):
        before = state_snapshot(net, x)
        attr = xattr.lrp(xattr.target(net, t), composite=composite)
        r = attr(x)
        assert not changed_state(before, state_snapshot(net, x))
        torch.testing.assert_close(attr(x[1:2]), r[1:2], atol=1e-10 * r.abs().max().item(), rtol=0)
        chunked = xattr.lrp(xattr.target(net, t), composite=composite, chunk_size=1)(x)
        torch.testing.assert_close(chunked, r, atol=1e-10 * r.abs().max().item(), rtol=0)
        both = xattr.lrp(xattr.target(net, xattr.outputs([(t + 1) % 5, t])), composite=composite)(x)
        torch.testing.assert_close(both[:, 1], r, atol=1e-10 * r.abs().max().item(), rtol=0)


# ----------------------------------------------------------------------------- FixedGate


class _Gated(nn.Module):
    """conv -> ReLU, times a squeeze-and-excitation gate (or, ``glu``: a same-shape gate), -> linear."""

    def __init__(self, glu=False, inplace=False):
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 4, 3, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
        self.other, self.out = nn.Conv2d(3, 4, 3, bias=False), nn.Linear(4 * 6 * 6, 3, bias=False)
        self.glu, self.inplace = glu, inplace

    def forward(self, x):
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.other(x)) if self.glu else torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3))))))[:, :, None, None]
        y = h.clone().mul_(gate) if self.inplace else h * gate
        return self.out(y.flatten(1))


@pytest.mark.parametrize("inplace", [False, True])
def test_fixed_gate_holds_a_broadcast_gate(inplace):
    """An SE gate held constant: LRP-0 equals x times the gradient with the gate detached."""
    torch.manual_seed(0)
    net = _Gated(inplace=inplace).to(D).eval()
    x = torch.rand(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(4))
    r, delta = xattr.lrp(xattr.target(net, 1), composite=lrp_rules(1e-13), return_delta=True)(x)
    h = torch.relu(net.conv(x))
    gate = torch.sigmoid(net.fc2(torch.relu(net.fc1(h.mean((2, 3))))))[:, :, None, None].detach()
    xx = x.clone().requires_grad_()
    out = net.out((torch.relu(net.conv(xx)) * gate).flatten(1))[:, 1]
    (g,) = torch.autograd.grad(out.sum(), xx)
    torch.testing.assert_close(r, xx.detach() * g, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9, rtol=0)
    many = xattr.lrp(xattr.target(net, xattr.outputs([0, 1])), composite=lrp_rules(1e-13))(x)  # K outputs (vmap)
    torch.testing.assert_close(many[:, 1], r, atol=1e-12, rtol=1e-10)


def test_fixed_gate_splits_a_same_shape_product_in_half():
    """Equal shapes: half the relevance to each factor; on a bias-free bilinear net z = h * s with
    s = sigmoid(...), LRP is conserved and the gradient with each factor's share halved."""
    torch.manual_seed(0)
    net = _Gated(glu=True).to(D).eval()
    x = torch.rand(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(4))
    r, delta = xattr.lrp(xattr.target(net, 1), composite=lrp_rules(1e-13), return_delta=True)(x)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9, rtol=0)
    xx = x.clone().requires_grad_()
    h, u = torch.relu(net.conv(xx)), net.other(xx)
    s = torch.sigmoid(u)
    # relevance form: R_h = R_s = R_z / 2; R_u = R_s (Pass); both conv layers bias-free, LRP-0 = x * grad
    g_z = net.out.weight[1].reshape(1, 4, 6, 6)
    (gh,) = torch.autograd.grad(h, xx, 0.5 * g_z * s)
    (gu,) = torch.autograd.grad(u, xx, 0.5 * g_z * h * s / u)
    torch.testing.assert_close(r, (xx * (gh + gu)).detach(), atol=1e-10, rtol=1e-9)
    assert xattr.rule.FixedGate().accepts(xattr.rule.Op("product", torch.mul, (), {}, torch.mul, False))


# ----------------------------------------------------------------------------- composite, by hand


def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _back(fn, a, r, eps):
    """Relevance form of a rule whose modified layer is z' = fn(a): R_a = a * J^T (R / stab(z'))."""
    a = a.detach().requires_grad_()
    z = fn(a)
    (c,) = torch.autograd.grad(z, a, r / _stab(z, eps))
    return a.detach() * c


def _gamma_conv(conv, gamma=0.25):
    w, b = conv.weight.detach(), conv.bias.detach()
    return lambda a: conv._conv_forward(a, w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0))


def _zbox_back(conv, x, r, low, high, eps=1e-9):
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    lo, hi = torch.full_like(x, low), torch.full_like(x, high)
    conv_ = lambda a, ww: conv._conv_forward(a, ww, None)  # noqa: E731
    s = r / _stab(conv_(x, w) - conv_(lo, wp) - conv_(hi, wn), eps)
    t = lambda ww: torch.nn.grad.conv2d_input(x.shape, ww, s, stride=conv.stride, padding=conv.padding)  # noqa: E731
    return x * t(w) - lo * t(wp) - hi * t(wn)


def test_composite_matches_layer_by_layer_reference_on_squeezenet():
    """Gamma for every conv (kind key), z^B at "features.0" (name), epsilon 0.1 at "classifier.1"
    (name over kind), epsilon 0.01 inside "features.3.expand3x3" (name of a nested module),
    epsilon 1e-3 at every nn.AdaptiveAvgPool2d (type), epsilon 1e-9 at max-pools (kind default)."""
    m = model("squeezenet")
    x = inputs()
    t = target_of(m, x)
    c = lrp_rules()
    c.update({torch.conv2d: Gamma(0.25), "features.0": ZBox(0.0, 1.0), "classifier.1": Epsilon(0.1),
              "features.3.expand3x3": Epsilon(0.01), nn.AdaptiveAvgPool2d: Epsilon(1e-3)})
    got = xattr.lrp(xattr.target(m, t), composite=c)(x)

    seen = {}
    hooks = [mod.register_forward_hook(lambda mod, a, o: seen.__setitem__(mod, (a[0].detach().clone(), o.detach().clone())))
             for mod in m.modules()]
    with torch.no_grad():
        out = m(x)
    for h in hooks:
        h.remove()

    def conv_back(conv, r, eps=1e-9, gamma=0.25):
        return _back(_gamma_conv(conv, gamma) if gamma else conv, seen[conv][0], r, eps)

    pool = m.classifier[3]
    r = torch.zeros_like(seen[pool][1])
    r[:, t] = out[:, t, None, None]
    r = _back(pool, seen[pool][0], r, 1e-3)  # ReLU (classifier.2) passes R
    r = conv_back(m.classifier[1], r, eps=0.1, gamma=0)  # epsilon 0.1, dropout passes R
    for i in range(12, 0, -1):
        layer = m.features[i]
        if isinstance(layer, nn.MaxPool2d):
            r = _back(layer, seen[layer][0], r, 1e-9)
        elif not isinstance(layer, nn.ReLU):  # a Fire module: cat of two expand branches
            n = layer.expand1x1.out_channels
            eps3, g3 = (0.01, 0) if i == 3 else (1e-9, 0.25)
            r_sq = conv_back(layer.expand1x1, r[:, :n]) + conv_back(layer.expand3x3, r[:, n:], eps=eps3, gamma=g3)
            r = conv_back(layer.squeeze, r_sq)
    want = _zbox_back(m.features[0], x, r, 0.0, 1.0)
    torch.testing.assert_close(got, want, atol=1e-9 * want.abs().max().item(), rtol=1e-7)


# ----------------------------------------------------------------------------- layers and neurons


class _Stop(Exception):
    pass


def up_to(m, layer):
    """The model cut off after ``layer``: its output (a forward hook stops the rest)."""

    def fn(x):
        box = {}

        def hook(mod, a, out):
            box["h"] = out
            raise _Stop

        handle = layer.register_forward_hook(hook)
        try:
            m(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return box["h"]

    return fn


def read_at(layer, run):
    """(h, gradient reaching h) of ``layer``'s output during ``run()`` (a hook reads them)."""
    box = {}

    def hook(mod, a, out):
        box["h"] = out.detach().clone()
        out.register_hook(lambda g: box.__setitem__("g", g))

    handle = layer.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return box["h"], box["g"]


LAYERS = [("densenet", "features.denseblock1"), ("densenet", "features.denseblock1.denselayer2"), ("squeezenet", "features.3"),
          ("squeezenet", "features.3.expand3x3_activation"), ("mobilenet_v2", "features.3"), ("mobilenet_v2", "features.3.conv.1"),
          ("mobilenet_v3", "features.2"), ("shufflenet", "stage2")]


@pytest.mark.parametrize("name,layer", LAYERS)
def test_layer_lrp_is_the_relevance_reaching_the_layer(name, layer):
    m = model(name)
    x = inputs()
    t = target_of(m, x)
    f = xattr.target(m, t)
    mod = m.get_submodule(layer)
    for composite in (None, xattr.rule.epsilon_plus()):
        got = xattr.layer_lrp(xattr.at_layer(f, mod), composite=composite)(x)
        xx = x.clone().requires_grad_()
        ruled = xattr.rules(f, lrp_rules() if composite is None else composite)
        h, g = read_at(mod, lambda: torch.autograd.grad(ruled(xx).sum(), xx))
        torch.testing.assert_close(got, h * g, atol=1e-9 * (h * g).abs().max().item(), rtol=0)


def test_layer_lrp_passes_an_in_place_relu_unchanged():
    """A ReLU passes relevance on unchanged: a conv's output (which SqueezeNet's in-place ReLU
    overwrites) and the ReLU's have the same relevance."""
    m = model("squeezenet")
    x = inputs()
    f = xattr.target(m, target_of(m, x))
    conv, relu = (xattr.layer_lrp(xattr.at_layer(f, m.get_submodule(n)))(x) for n in ("features.3.squeeze", "features.3.squeeze_activation"))
    assert relu.abs().max() > 0
    torch.testing.assert_close(conv, relu, atol=0, rtol=0)


@pytest.mark.parametrize("name,layer", LAYERS[:3] + LAYERS[4:7])
def test_layer_deep_lift_is_the_multiplier_at_the_layer(name, layer):
    """(h - h_ref) * m_h, m_h read at the layer while DeepLift runs on the whole model (its rows:
    the inputs first, then the references); at a layer every path crosses, summation to delta."""
    m = model(name)
    x = inputs()
    f = xattr.target(m, target_of(m, x))
    mod = m.get_submodule(layer)
    b = torch.rand(2, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(5)) * 0.3
    got, delta = xattr.layer_deep_lift(xattr.at_layer(f, mod), baselines=b, return_delta=True)(x)
    h, g = read_at(mod, lambda: xattr.deep_lift(f, baselines=b)(x))
    assert h.shape[0] == 4
    want = (h[:2] - h[2:]) * g[:2]
    torch.testing.assert_close(got, want, atol=1e-10 * want.abs().max().item(), rtol=0)
    if layer in ("features.denseblock1", "features.3") and name != "mobilenet_v2":
        torch.testing.assert_close(got.sum((1, 2, 3)), f(x) - f(b), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name,layer", [LAYERS[1], LAYERS[2], LAYERS[5], LAYERS[7]])
def test_neuron_variants_are_the_method_on_the_unit(name, layer):
    m = model(name)
    x = inputs()
    mod = m.get_submodule(layer)
    cut = up_to(m, mod)
    h = cut(x)
    idx = (1,) + tuple(s // 2 for s in h.shape[2:])
    unit = lambda v: cut(v)[(slice(None),) + idx]  # noqa: E731
    split = xattr.at_layer(m, mod)
    b = torch.zeros_like(x)
    for method in (xattr.guided_backprop, xattr.deconvolution, lambda g: xattr.deep_lift(g, baselines=b)):
        got = method(xattr.neuron(split, idx))(x)
        want = method(unit)(x)
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-12 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name,layer", [("densenet", "features.denseblock2"), ("squeezenet", "features.7"), ("mobilenet_v2", "features.3"),
                                        ("mobilenet_v3", "features.3"), ("efficientnet", "features.2"), ("regnet", "trunk_output.block2"),
                                        ("convnext", "features.1"), ("shufflenet", "stage3")])
def test_guided_grad_cam_is_guided_backprop_times_upsampled_grad_cam(name, layer):
    m = model(name)
    x = inputs()
    t = target_of(m, x)
    f = xattr.target(m, t)
    mod = m.get_submodule(layer)
    got = xattr.guided_grad_cam(xattr.at_layer(f, mod))(x)
    h, g = read_at(mod, lambda: f(x.clone().requires_grad_()).sum().backward())
    assert h.shape[-1] > 1  # a map to upsample
    cam = torch.relu((g.mean((2, 3), keepdim=True) * h).sum(1, keepdim=True))
    want = xattr.guided_backprop(f)(x) * F.interpolate(cam, size=x.shape[2:], mode="nearest")
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, atol=1e-12 * want.abs().max().item(), rtol=0)


# ----------------------------------------------------------------------------- clear errors


def test_attention_models_get_clear_errors():
    """Swin (an explicit softmax) raises an error that says what to do; with its softmax mapped to
    Block(), as the error suggests, it conserves without biases. (ViT, whose nn.MultiheadAttention
    was refused too, runs written out: tests/test_lrp_mha.py.)"""
    torch.manual_seed(0)
    x = inputs()
    swin = TV.SwinTransformer([4, 4], 8, [1, 1], [1, 2], [2, 2], num_classes=5).to(D).eval()
    with pytest.raises(NotImplementedError, match="softmax.*Block"):
        xattr.lrp(xattr.target(swin, 1))(x)
    with torch.no_grad():
        for mod in swin.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and mod.bias is not None:
                mod.bias.zero_()
    c = lrp_rules(1e-13)
    c[F.softmax] = xattr.rule.Block()
    r, delta = xattr.lrp(xattr.target(swin, 1), composite=c, return_delta=True)(x)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-8 * swin(x)[:, 1].abs().max().item(), rtol=0)
