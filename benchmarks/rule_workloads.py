"""Rule-based gradient workloads: DeepLift, guided backprop, LRP (see workloads.py).

Same conventions as `workloads.build`: contenders are zero-argument callables, everything that
is not the attribution call (transforms, Captum objects, the doubled floor batch, cotangents) is
built before timing, and agreement is judged before a time counts. Floors (see
/work/shared/benchmarks.md) are one plain `torch.autograd.grad` forward+backward:

- DeepLift: of the doubled batch, inputs then baselines (2B rows): Captum runs each example and
  its reference in one batch. xattr runs B + 1 rows when every example has the same reference
  (NOTE: [Shared reference]), as here (zero baselines); the floor stays Captum's 2B rows, and
  a fwd+bwd of the B + 1 rows is timed for reference.
- GuidedBackprop and LRP: of the B rows (the rules change the backward, not its size).

CPU suite (model "cnn"):

- DeepLift on the suite's CNN with its max-pool as two modules (`TwoPoolCNN`: the same weights
  and function; Captum's DeepLift refuses a module called twice, and `SmallCNN` calls `self.pool`
  twice). Captum's DeepLift breaks summation-to-delta where two hooked modules follow each other
  (here nn.ReLU -> nn.MaxPool2d: its hook on the ReLU's output records the ordinary gradient
  before the max-pool's hook swaps in its multiplier; docs/rules.md), so the attributions differ
  by design; agreement is judged on the convergence deltas (xattr's must be ~0) and on the same
  model with the max-pools swapped for average pools (not hooked by Captum), where both must
  agree exactly.
- GuidedBackprop on the suite's CNN as is (Captum hooks only the ReLU modules).
- DeepLift on torchvision's ResNet-50 (random weights): Captum fails (every Bottleneck calls its
  ReLU module three times); the table says why, and xattr is judged against the floor and on
  summation-to-delta. Size per device in `RESNET_DEEPLIFT` (CPU: batch 2, 3x112x112, to keep the
  CPU suite under 10 minutes; GPU: batch 8, 3x224x224).
- LRP (Captum's default rules: epsilon 1e-9 for conv, linear and max-pool; ReLU and dropout pass)
  on `VGGStyle`, a small VGG (conv/ReLU/max-pool features, flatten inside forward, linear/ReLU/
  dropout classifier: every leaf module has a Captum rule), batch 16, 3x32x32.

GPU suite (model "resnet50"): DeepLift and GuidedBackprop on ResNet-50, LRP on torchvision's VGG-16,
each batch 8, 3x224x224 (random weights).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

import xattr
from xattr.testing.vision import models as vision_models

from .workloads import N_CLASSES, SEED, SmallCNN, Workload, _one_hot, _seeded, device_tol, exact, fwd_bwd, make_model

RESNET_DEEPLIFT = {"cpu": (2, 112), "cuda": (8, 224)}  # (batch, side) of the ResNet-50 DeepLift workload
VGG_CFG = [32, "M", 64, "M", 128, 128, "M", 256, "M"]  # VGGStyle's features: conv widths, "M" = max-pool


class TwoPoolCNN(SmallCNN):
    """`SmallCNN` with its max-pool as two modules (Captum's DeepLift needs each module called once)."""

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__(n_classes)
        self.pool2 = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x)).mean((2, 3))
        return self.fc(x)


class AvgPoolCNN(TwoPoolCNN):
    """`TwoPoolCNN` with average pools: both DeepLifts must agree exactly here (no max-pool rule)."""

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__(n_classes)
        self.pool, self.pool2 = nn.AvgPool2d(2), nn.AvgPool2d(2)


class VGGStyle(nn.Module):
    """A small VGG: 3x3 conv + ReLU blocks with max-pools (`VGG_CFG`), then linear/ReLU/dropout/linear."""

    def __init__(self, cfg=VGG_CFG, side: int = 32, n_classes: int = N_CLASSES):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                side //= 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c * side * side, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _same_weights(model: nn.Module, like: nn.Module, device: str) -> nn.Module:
    model.load_state_dict(like.state_dict())
    return model.to(device).eval()


def _inputs(batch: int, shape: tuple[int, ...], device: str, seed: int = SEED):
    """Seeded inputs and targets; for the suite's CNN the same x, y as workloads.build."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + shape, generator=gen).to(device)
    y = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)
    return x, y


def _delta_text(delta: torch.Tensor, gap: torch.Tensor, who: str = "xattr") -> tuple[str, float]:
    """Max abs delta as text (no '|': the text goes into a markdown table), and the delta relative
    to max(1, max abs(f(x) - f(b)))."""
    d = float(delta.detach().abs().max())
    return f"{who} max abs delta {d:.1e}", d / max(1.0, float(gap.abs().max()))


def _captum_error(fn: Callable[[], object]) -> str | None:
    """None if fn runs, else its error as one short line."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 (the message is the result)
        first = str(err).splitlines()[0]
        return f"{type(err).__name__}: {first.split('. ')[0][:200]}"  # its first sentence
    return None


SHARED_FLOOR = "fwd+bwd of B + 1 rows"  # what xattr's DeepLift runs for a reference shared by the batch
CL_FLOOR = "fwd+bwd of {rows}, channels-last max-pools"  # the floor with xattr's max-pool (like for like)


class ChannelsLastMaxPool(nn.MaxPool2d):
    """nn.MaxPool2d through xattr's channels-last max-pool (NOTE: [Max-pools in channels-last] in
    xattr/_src/pools.py): the same values and gradient, bit for bit, faster on CPU. xattr's DeepLift
    and LRP pool this way, so a floor of the model with these pools compares like with like."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from xattr._src.pools import _max_pool2d  # noqa: PLC0415

        keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        return _max_pool2d(x, {k: getattr(self, k) for k in keys})


def channels_last_pools(model: nn.Module) -> nn.Module:
    """A copy of model with every nn.MaxPool2d (without indices) a `ChannelsLastMaxPool`."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.MaxPool2d and not child.return_indices:
                swapped = ChannelsLastMaxPool(child.kernel_size, child.stride, child.padding, child.dilation, ceil_mode=child.ceil_mode)
                setattr(parent, name, swapped)
    return model


def _seeded_rows(y: torch.Tensor, n_out: int, device: str) -> torch.Tensor:
    """Cotangent of B + 1 rows: each input row's target, nothing for the shared reference row."""
    return torch.cat([_one_hot(y, 1, n_out), torch.zeros(1, n_out)]).to(device)


def _deep_lift_cnn(device: str) -> Workload:
    from captum.attr import DeepLift  # noqa: PLC0415

    base, shape, batch = make_model("cnn", device)
    model = _same_weights(TwoPoolCNN(), base, device)
    x, y = _inputs(batch, shape, device)
    f = xattr.target(model, y)
    dl_x = xattr.deep_lift(f, baselines=0.0)
    dl_c = DeepLift(model)

    def dl_captum():
        return dl_c.attribute(x, target=y)

    def agree():
        a, d_x = xattr.deep_lift(f, baselines=0.0, return_delta=True)(x)
        c, d_c = dl_c.attribute(x, target=y, return_convergence_delta=True)
        with torch.no_grad():
            gap = f(x) - f(torch.zeros_like(x))
        tx, rel_x = _delta_text(d_x, gap)
        tc, _ = _delta_text(d_c, gap, "Captum")
        diff, _ = exact(a, c.detach())
        avg = _same_weights(AvgPoolCNN(), base, device)
        fa = xattr.target(avg, y)
        avg_text, avg_ok = exact(xattr.deep_lift(fa, baselines=0.0)(x), DeepLift(avg).attribute(x, target=y).detach())
        text = (f"Captum breaks summation-to-delta at nn.ReLU -> nn.MaxPool2d: {tx}, {tc} (max abs(f(x)-f(0)) "
                f"{float(gap.abs().max()):.1e}); {diff}; max-pools swapped for avg-pools: {avg_text}")
        return text, rel_x <= device_tol(device) and avg_ok

    both = torch.cat([x, torch.zeros_like(x)])
    return Workload(
        "DeepLift (CNN, zero baseline)", "gradient", lambda: dl_x(x), dl_captum,
        {"fwd+bwd of 2B rows": fwd_bwd(model, both, _one_hot(y, 2).to(device))},
        agree, "summation-to-delta (xattr |delta| <= 1e-5 x max(1, |f(x)-f(0)|)) and exact agreement "
        "(tol 1e-5) on the same CNN with average pools (Captum's DeepLift breaks summation-to-delta where "
        "two hooked modules follow each other, here nn.ReLU -> nn.MaxPool2d, so the attributions differ)",
        info={SHARED_FLOOR: fwd_bwd(model, both[: len(x) + 1], _seeded_rows(y, N_CLASSES, device)),
              CL_FLOOR.format(rows="2B rows"): fwd_bwd(channels_last_pools(model), both, _one_hot(y, 2).to(device))},
        notes=["DeepLift (CNN): the suite's CNN with its max-pool as two modules (same weights and "
               "function; Captum's DeepLift refuses SmallCNN's reused self.pool: 'A Module MaxPool2d... "
               "is being used more than once'). xattr: deep_lift(target(model, y), baselines=0.0); "
               "Captum: DeepLift(model).attribute(x, target=y). Captum runs inputs and baselines as one "
               "batch of 2B rows, and the floor is one plain fwd+bwd of those 2B rows (the issue's "
               "definition). xattr runs B + 1 rows, since every example has the same reference (NOTE: "
               f"[Shared reference]); '{SHARED_FLOOR}' (for reference) is the least that scheme costs. "
               f"'{CL_FLOOR.format(rows='2B rows')}' (for reference): the floor with its max-pools run as xattr's "
               "DeepLift runs them (in channels-last, NOTE: [Max-pools in channels-last]; the same numbers, faster "
               "on CPU), so xattr over it is the rules' cost alone."],
    )


def plain_guided_backprop(model: nn.Module, x: torch.Tensor, cot: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Guided backprop written by hand for models whose ReLUs are all nn.ReLU modules: a copy of
    the model whose ReLUs clamp the gradient at their outputs (forward hooks registering tensor
    hooks), then the floor's one fwd+bwd. The least a guided backprop adds to the floor in eager
    PyTorch: a hook call and one clamp per ReLU call."""
    hooked = copy.deepcopy(model)
    def clamp_at_output(_module, _inputs, out):
        out.register_hook(lambda g: g.clamp(min=0))  # returns None: the output stays as it is

    for m in hooked.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(clamp_at_output)
    return fwd_bwd(hooked, x, cot)


def _guided_backprop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_out: int, label: str) -> Workload:
    from captum.attr import GuidedBackprop  # noqa: PLC0415

    gb_x = xattr.guided_backprop(xattr.target(model, y))
    gb_c = GuidedBackprop(model)
    cot = _one_hot(y, 1, n_out).to(x.device)
    plain = plain_guided_backprop(model, x, cot)
    same, ok = exact(plain(), gb_x(x))  # a reference must compute what xattr computes, else it is left out
    reference = "plain-torch GuidedBackprop (ReLU hooks)"
    return Workload(
        f"GuidedBackprop ({label})", "gradient", lambda: gb_x(x), lambda: gb_c.attribute(x, target=y),
        {"fwd+bwd": fwd_bwd(model, x, cot)},
        lambda: exact(gb_x(x), gb_c.attribute(x, target=y).detach()), "exact, tol 1e-5",
        info={reference: plain} if ok else {},
        notes=[f"GuidedBackprop ({label}): xattr: guided_backprop(target(model, y)); Captum: "
               "GuidedBackprop(model).attribute(x, target=y); floor: one plain fwd+bwd of the B rows; "
               f"'{reference}' (for reference): the floor on a copy of the model whose ReLU modules clamp their "
               "output gradients (a hook and one clamp per ReLU call), what a hand-written guided backprop costs; "
               + (f"it equals xattr's attributions ({same})." if ok else f"left out: it differs from xattr's ({same}).")],
    )


def _deep_lift_resnet(device: str, batch: int, side: int) -> Workload:
    from captum.attr import DeepLift  # noqa: PLC0415

    name = f"DeepLift (ResNet-50, batch {batch}, 3x{side}x{side}, zero baseline)"
    tv = vision_models()
    if tv is None:
        return Workload(name, "gradient", None, None, {}, None, "", skip="torchvision is not installed")
    model = _seeded(lambda: tv.resnet50(weights=None)).to(device).eval()
    x, y = _inputs(batch, (3, side, side), device)
    f = xattr.target(model, y)
    dl_x = xattr.deep_lift(f, baselines=0.0)
    dl_c = DeepLift(model)

    def agree():
        err = _captum_error(lambda: dl_c.attribute(x, target=y))
        _, d_x = xattr.deep_lift(f, baselines=0.0, return_delta=True)(x)
        with torch.no_grad():
            gap = f(x) - f(torch.zeros_like(x))
        tx, rel = _delta_text(d_x, gap)
        text = f"Captum: {'runs' if err is None else 'fails (' + err + ')'}; {tx} (max abs(f(x)-f(0)) {float(gap.abs().max()):.1e})"
        return text, rel <= device_tol(device)

    both = torch.cat([x, torch.zeros_like(x)])
    n_out = 1000
    return Workload(
        name, "gradient", lambda: dl_x(x), None,
        {"fwd+bwd of 2B rows": fwd_bwd(model, both, _one_hot(y, 2, n_out).to(device))},
        agree, f"Captum fails, so xattr alone: summation-to-delta, |delta| <= {device_tol(device):.0e} x max(1, |f(x)-f(0)|)",
        info={SHARED_FLOOR: fwd_bwd(model, both[: batch + 1], _seeded_rows(y, n_out, device))},
        notes=[f"DeepLift (ResNet-50): torchvision resnet50(weights=None), eval, batch {batch}, 3x{side}x{side}; "
               "xattr: deep_lift(target(model, y), baselines=0.0); Captum's DeepLift(model) raises because "
               "each Bottleneck calls its ReLU module three times (a known Captum limitation). Floor: one "
               "plain fwd+bwd of the 2B rows (inputs then baselines), Captum's scheme. xattr runs B + 1 rows "
               f"(one shared reference row, NOTE: [Shared reference]); '{SHARED_FLOOR}' (for reference) is the "
               "least that scheme costs."],
    )


def _lrp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_out: int, label: str) -> Workload:
    from captum.attr import LRP  # noqa: PLC0415

    lrp_x = xattr.lrp(xattr.target(model, y))
    lrp_c = LRP(model)

    def lrp_captum():
        return lrp_c.attribute(x, target=y)

    def agree():
        return exact(lrp_x(x), lrp_captum().detach())

    return Workload(
        f"LRP epsilon=1e-9 ({label})", "gradient", lambda: lrp_x(x), lrp_captum,
        {"fwd+bwd": fwd_bwd(model, x, _one_hot(y, 1, n_out).to(x.device))},
        agree, "exact, tol 1e-5",
        info={CL_FLOOR.format(rows="B rows"): fwd_bwd(channels_last_pools(model), x, _one_hot(y, 1, n_out).to(x.device))},
        notes=[f"LRP ({label}): xattr: lrp(target(model, y)) (default rules = Captum's: epsilon 1e-9 for "
               "conv, linear and max-pool; ReLU and dropout pass); Captum: LRP(model).attribute(x, target=y); "
               f"floor: one plain fwd+bwd of the B rows; '{CL_FLOOR.format(rows='B rows')}' (for reference): the "
               "floor with its max-pools run as xattr's LRP runs them (NOTE: [Max-pools in channels-last])."],
    )


def build(model_name: str, device: str, *, resnet: tuple[int, int] | None = None) -> list[Workload]:
    """DeepLift, GuidedBackprop and LRP workloads for the CPU ("cnn") or GPU ("resnet50") suite.

    ``resnet`` = (batch, side) of the ResNet-50 DeepLift workload (default `RESNET_DEEPLIFT`).
    """
    kind = "cuda" if device.startswith("cuda") else "cpu"
    batch, side = resnet or RESNET_DEEPLIFT[kind]
    if model_name == "cnn":
        model, shape, b = make_model("cnn", device)
        x, y = _inputs(b, shape, device)
        vgg = _seeded(VGGStyle).to(device).eval()
        return [
            _deep_lift_cnn(device),
            _guided_backprop(model, x, y, N_CLASSES, "CNN"),
            _deep_lift_resnet(device, batch, side),
            _lrp(vgg, x, y, N_CLASSES, f"VGG-style CNN, batch {b}, 3x32x32"),
        ]
    if model_name == "resnet50":
        tv = vision_models()
        if tv is None:
            return []
        model, shape, b = make_model("resnet50", device)
        x, y = _inputs(b, shape, device)
        vgg = _seeded(lambda: tv.vgg16(weights=None)).to(device).eval()
        size = f"batch {b}, {'x'.join(map(str, shape))}"
        return [
            _guided_backprop(model, x, y, 1000, f"ResNet-50, {size}"),
            _deep_lift_resnet(device, batch, side),
            _lrp(vgg, x, y, 1000, f"VGG-16, {size}"),
        ]
    raise ValueError(f"unknown model {model_name!r}")
