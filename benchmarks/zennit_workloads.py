"""LRP against zennit 0.5.1 (see workloads.py for the conventions, README.md for the results).

Each workload runs `xattr.lrp` and zennit on the same model and inputs with rules both libraries
can express the same way; the Captum column of run.py's table holds zennit here. zennit is LGPL:
it is installed and run, never copied (its behaviour is read off its documentation and off runs).

Contenders: xattr's transform is built before timing; zennit's composite is registered once on a
private copy of the model (hooks stay on the copy only, which xattr never sees), so zennit's timed
call is the forward and backward of its hooked copy, its cheapest spelling (its documentation
enters ``composite.context(model)`` around each call, which also registers and removes the hooks).
The floor is one plain fwd+bwd of the B rows, as for Captum's LRP (rule_workloads.py).

Agreement is judged in float64 on copies of model and inputs (the timed runs are float32), with
zennit seeded by ``one_hot(y) * f(x)``: zennit takes the output gradient as the initial relevance,
xattr starts at f(x) (NOTE: [LRP in gradient form] in xattr/_src/lrp_rules.py). Settings that make
the two compute the same quantity (each a documented difference, tests/test_vs_zennit.py):

- epsilon 1e-6 (zennit's default stabilizer) in both; xattr's default is 1e-9.
- max-pools take their plain gradient in zennit (winner takes all); xattr's `lrp_rules()` puts
  `Epsilon` on them (``z / (z + eps)`` at the maximum), so its key is removed here (`base_rules`).
- zennit's ``ZPlus()`` keeps the bias (it is ``AlphaBeta(1, 0)``), xattr's `ZPlus` drops it:
  xattr's equals ``ZPlus(zero_params="bias")``.
- zennit's ``Gamma`` is the generalized gamma rule (Andeol et al. 2021): where a layer's output is
  negative it adds ``gamma * w-`` instead of ``gamma * w+``, and a negative input takes the other
  sign's part. Both agree where gamma sits on layers whose inputs are >= 0 and whose negative
  outputs a ReLU zeroes (every conv after the first in a ReLU VGG, a hidden linear layer).
- zennit's ``SequentialMergeBatchNorm`` resets the merged batch norm to weight 1, bias 0, mean 0,
  var 1 but keeps its ``eps``, so the canonized model is the original scaled by ``1 / sqrt(1 +
  eps)`` at each merged norm (about 5e-6 for eps 1e-5) and its relevance differs by about that much.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr import rule as xr

from .perturbation_workloads import make_tabular
from .rule_workloads import VGG_CFG, VGGStyle, _inputs
from .workloads import N_CLASSES, SEED, Workload, _one_hot, _seeded, exact, fwd_bwd, make_model

EPS = 1e-6  # zennit's default stabilizer, used by both libraries here
GAMMA = 0.25
TOL64 = 1e-10  # float64 agreement, relative to max(1, max |relevance|)


def import_zennit():
    """zennit's modules (it imports torchvision, whose CPU wheels may need `vision.models`'s
    repair first), or None when zennit is not installed."""
    from xattr.testing.vision import models  # noqa: PLC0415

    models()
    try:
        import zennit.canonizers  # noqa: PLC0415
        import zennit.composites  # noqa: PLC0415
        import zennit.rules  # noqa: PLC0415
        import zennit.types  # noqa: PLC0415
    except ImportError:
        return None
    return zennit


class VGGBNStyle(VGGStyle):
    """`VGGStyle` with a batch norm after every conv and after the first linear layer, with
    seeded running statistics and affine parameters away from their defaults."""

    def __init__(self, cfg=VGG_CFG, side: int = 32, n_classes: int = N_CLASSES):
        super().__init__(cfg, side, n_classes)
        layers = []
        for m in self.features:
            layers.append(m)
            if isinstance(m, nn.Conv2d):
                layers.append(nn.BatchNorm2d(m.out_channels))
        self.features = nn.Sequential(*layers)
        lin = self.classifier[0]
        self.classifier = nn.Sequential(lin, nn.BatchNorm1d(lin.out_features), *self.classifier[1:])
        gen = torch.Generator().manual_seed(SEED + 5)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    n = m.num_features
                    m.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                    m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(n, generator=gen))


def base_rules(eps: float = EPS) -> dict:
    """xattr's `lrp_rules(eps)` with max-pools left to their gradient, as zennit leaves them."""
    rules = xr.lrp_rules(eps)
    del rules[F.max_pool2d]
    return rules


def with_rules(first: str | None = None, first_rule=None, **by_kind) -> dict:
    """`base_rules()` with ``conv=`` and ``linear=`` rules, and ``first_rule`` at module ``first``."""
    rules = base_rules()
    keys = {"conv": torch.conv2d, "linear": F.linear}
    rules.update({keys[k]: v for k, v in by_kind.items()})
    if first is not None:
        rules[first] = first_rule
    return rules


def zennit_relevance(model: nn.Module, composite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """zennit's LRP as its documentation spells it (the composite's context around one call),
    seeded with ``one_hot(y) * f(x)``, on a copy of the model."""
    m = copy.deepcopy(model)
    xr_ = x.detach().clone().requires_grad_()
    with composite.context(m) as hooked:
        out = hooked(xr_)
        (r,) = torch.autograd.grad(out, xr_, _seed(out, y))
    return r


def _seed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, out.shape[1]).to(out.dtype) * out.detach()


def registered(model: nn.Module, composite, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The timed zennit call: the composite registered once on a private copy of the model."""
    m = copy.deepcopy(model)
    composite.register(m)

    def run():
        xr_ = x.detach().requires_grad_()
        out = m(xr_)
        return torch.autograd.grad(out, xr_, _seed(out, y))[0]

    return run


def xattr_relevance(model: nn.Module, rules: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return xattr.lrp(xattr.target(model, y), composite=rules)(x)


def _pair(label: str, model: nn.Module, x, y, n_out: int, zennit_composite: Callable, rules: Callable,
          note: str, *, prepare: Callable[[nn.Module], nn.Module] = lambda m: m,
          check64: Callable[[], tuple[str, bool]] | None = None) -> Workload:
    """One workload. ``zennit_composite(x)`` and ``rules(x)`` build a fresh composite for inputs x;
    ``prepare`` is xattr's canonizer (zennit's is in its composite)."""
    lrp_x = xattr.lrp(xattr.target(prepare(model), y), composite=rules(x))
    z_call = registered(model, zennit_composite(x), x, y)

    def agree():
        m64, x64 = copy.deepcopy(model).double(), x.double()
        a = xattr_relevance(prepare(m64), rules(x64), x64, y)
        z = zennit_relevance(m64, zennit_composite(x64), x64, y)
        text64, ok = exact(a, z, TOL64)
        text32, _ = exact(lrp_x(x), z_call())
        text = f"float64 {text64}; float32 {text32}"
        if check64 is not None:
            more, ok = check64()
            text += f"; {more}"
        return text, ok

    return Workload(
        f"LRP {label} vs zennit", "gradient", lambda: lrp_x(x), z_call,
        {"fwd+bwd": fwd_bwd(model, x, _one_hot(y, 1, n_out).to(x.device))},
        agree, f"exact in float64, tol {TOL64:.0e} x max(1, max abs relevance)",
        notes=[f"LRP {label} vs zennit 0.5.1: {note} Timed in float32; zennit's composite registered once on a "
               "private copy; floor: one plain fwd+bwd of the B rows."],
    )


def _bounds(x: torch.Tensor) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def build(device: str = "cpu") -> list[Workload]:
    """The zennit workloads: a VGG-style CNN (batch 16, 3x32x32), its batch-norm twin, and the
    tabular MLP (20-64-64-2, 32 rows). Skipped with a note when zennit is not installed."""
    z = import_zennit()
    if z is None:
        return [Workload("LRP vs zennit", "gradient", None, None, {}, None, "", skip="zennit is not installed")]
    zr, zc, zt = z.rules, z.composites, z.types
    lmap = zc.LayerMapComposite
    _, shape, b = make_model("cnn", device)
    x, y = _inputs(b, shape, device)
    vgg = _seeded(VGGStyle).to(device).eval()
    vggbn = _seeded(VGGBNStyle).to(device).eval()
    mlp, xt, yt = make_tabular(device)
    size = f"VGG-style CNN, batch {b}, 3x32x32"

    def egb(canonizers=None):
        def make(xx):
            lo, hi = _bounds(xx)
            return zc.EpsilonGammaBox(low=torch.full_like(xx, lo), high=torch.full_like(xx, hi), epsilon=EPS,
                                      gamma=GAMMA, canonizers=[cls() for cls in canonizers or ()] or None)
        return make

    def egb_rules(xx):
        return with_rules("features.0", xr.ZBox(*_bounds(xx), eps=EPS), conv=xr.Gamma(GAMMA, EPS), linear=xr.Epsilon(EPS))

    def bn_tiny_eps() -> tuple[str, bool]:
        """zennit keeps the merged norm's eps: with eps 1e-12 in the model the two agree to rounding."""
        tiny = copy.deepcopy(vggbn).double()
        for m in tiny.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 1e-12
        x64 = x.double()
        a = xattr_relevance(xattr.merge_batch_norm(tiny), egb_rules(x64), x64, y)
        zz = zennit_relevance(tiny, egb([z.canonizers.SequentialMergeBatchNorm])(x64), x64, y)
        text, ok = exact(a, zz, TOL64)
        return f"batch-norm eps 1e-12 instead of 1e-5: {text}", ok

    def bn_pair() -> Workload:
        return _pair(f"EpsilonGammaBox + batch-norm merging ({size} with batch norms)", vggbn, x, y, N_CLASSES,
                     egb([z.canonizers.SequentialMergeBatchNorm]), egb_rules,
                     "zennit EpsilonGammaBox(..., canonizers=[SequentialMergeBatchNorm()]); xattr: lrp of "
                     "merge_batch_norm(model) with ZBox / Gamma / Epsilon. zennit's canonizer keeps each merged norm's "
                     "eps (it computes x / sqrt(1 + eps) there), so with eps 1e-5 the relevances differ by ~1e-5 of "
                     "their size (reported as the float64 gap); agreement is judged on a copy with eps 1e-12.",
                     prepare=xattr.merge_batch_norm, check64=bn_tiny_eps)

    return [
        _pair(f"epsilon={EPS:g} ({size})", vgg, x, y, N_CLASSES,
              lambda xx: lmap([(zt.Convolution, zr.Epsilon(EPS)), (zt.Linear, zr.Epsilon(EPS))]),
              lambda xx: base_rules(),
              "zennit LayerMapComposite Epsilon for conv and linear; xattr lrp_rules(1e-6) without its max-pool key."),
        _pair(f"z-plus conv, epsilon dense ({size})", vgg, x, y, N_CLASSES,
              lambda xx: lmap([(zt.Convolution, zr.ZPlus(zero_params="bias")), (zt.Linear, zr.Epsilon(EPS))]),
              lambda xx: with_rules(conv=xr.ZPlus(EPS), linear=xr.Epsilon(EPS)),
              "zennit ZPlus(zero_params='bias') (its ZPlus() keeps the bias) / xattr ZPlus for conv; Epsilon dense."),
        _pair(f"alpha1-beta0 ({size})", vgg, x, y, N_CLASSES,
              lambda xx: lmap([(zt.Convolution, zr.AlphaBeta(1.0, 0.0)), (zt.Linear, zr.AlphaBeta(1.0, 0.0))]),
              lambda xx: with_rules(conv=xr.AlphaBeta(1.0, 0.0, EPS), linear=xr.AlphaBeta(1.0, 0.0, EPS)),
              "AlphaBeta(1, 0) for every conv and linear layer in both (= zennit's ZPlus())."),
        _pair(f"EpsilonGammaBox ({size})", vgg, x, y, N_CLASSES, egb(), egb_rules,
              "zennit EpsilonGammaBox(low, high, epsilon=1e-6, gamma=0.25); xattr: ZBox at features.0, Gamma(0.25) "
              "for conv, Epsilon(1e-6) dense (xattr.rule.epsilon_gamma_box with eps=1e-6 and its max-pool key "
              "removed); bounds: the batch's min and max."),
        bn_pair(),
        _pair("epsilon (tabular MLP 20-64-64-2, 32 rows)", mlp, xt, yt, 2,
              lambda xx: lmap([(zt.Linear, zr.Epsilon(EPS))]), lambda xx: base_rules(),
              "Epsilon(1e-6) for every linear layer."),
        _pair("alpha1-beta0 (tabular MLP)", mlp, xt, yt, 2,
              lambda xx: lmap([(zt.Linear, zr.AlphaBeta(1.0, 0.0))]),
              lambda xx: with_rules(linear=xr.AlphaBeta(1.0, 0.0, EPS)),
              "AlphaBeta(1, 0) for every linear layer."),
        _pair("gamma hidden layer (tabular MLP)", mlp, xt, yt, 2,
              lambda xx: zc.NameMapComposite([(["net.0", "net.4"], zr.Epsilon(EPS)), (["net.2"], zr.Gamma(GAMMA))]),
              lambda xx: with_rules("net.2", xr.Gamma(GAMMA, EPS)),
              "Gamma(0.25) at net.2 (reads ReLU outputs, feeds a ReLU), Epsilon(1e-6) elsewhere."),
        _pair("flat first layer (tabular MLP)", mlp, xt, yt, 2,
              lambda xx: zc.EpsilonPlusFlat(epsilon=EPS),
              lambda xx: with_rules("net.0", xr.Flat(EPS)),
              "zennit EpsilonPlusFlat(epsilon=1e-6) (Flat at the first linear, Epsilon dense: no convs here); "
              "xattr Flat at net.0."),
    ]
