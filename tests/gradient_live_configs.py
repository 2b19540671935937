"""Random configurations of Captum's gradient classes, and running them in Captum and in
xattr.compat.captum: the helpers of tests/test_compat_gradient_live.py.

Models are the ``Spec`` models of tests/rules_live_configs.py (one branch of Linear, Conv1d or
Conv2d stages per input, batch norms, activations and pools, a two-layer head, sometimes a
residual linear layer; float64, sometimes float32), optionally made affine (activations replaced
by the identity, max-pools by average pools: every gradient is then constant, so GradientShap's
and the noise tunnel's random draws cancel out of the result). A ``Config`` names the class (or
``NoiseTunnel`` around an inner class), the constructor keywords, a layer (a module name or a
list of them) and the keywords of one ``attribute`` call; ``run(lib, cfg)`` builds everything
afresh from ``captum.attr`` or ``xattr.compat.captum`` and calls it on fresh copies. The fixed
cases at the end are the stochastic configurations of the statistical comparison and the small
models of the hand-computed references.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import torch

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from .rules_live_configs import (
        F64, Spec, assert_same, build, captum_attr, draw_extras, draw_inputs, draw_selector, draw_spec,
        draw_target, first_plus_last, first_times_last, fresh, layer_shape, leaves, module_names, one_baseline, quiet,
        randn,
    )
except ImportError:
    from rules_live_configs import (
        F64, Spec, assert_same, build, captum_attr, draw_extras, draw_inputs, draw_selector, draw_spec,
        draw_target, first_plus_last, first_times_last, fresh, layer_shape, leaves, module_names, one_baseline, quiet,
        randn,
    )

__all__ = [
    "F64", "Config", "affine", "assert_same", "captum_attr", "configs", "draw_baselines", "draw_common",
    "draw_distribution", "draw_extras", "draw_inputs", "draw_selector", "draw_spec", "draw_stdevs", "draw_target",
    "first_plus_last", "first_times_last", "layer_shape", "leaves", "mlp", "module_names", "product_distribution",
    "quiet", "randn", "random_case", "run", "tiled", "to_captums_trapezoid", "TwoInputs",
]  # fmt: skip

ACTIVATIONS = ("ReLU", "Sigmoid", "Tanh", "ELU", "Softplus", "LeakyReLU")


def affine(spec: Spec) -> Spec:
    """The model with every activation the identity and every max-pool an average pool."""

    def swap(entry):
        name, args, kwargs = entry
        if name in ACTIVATIONS:
            return ("Identity", (), {})
        if name.startswith("MaxPool"):
            return (name.replace("Max", "Avg"), args, kwargs)
        return entry

    return dataclasses.replace(spec, branches=[[swap(e) for e in b] for b in spec.branches],
                               head=[swap(e) for e in spec.head])  # fmt: skip


def draw_common(rng, g, seed, *, target=True, linear=False, **spec_kw):
    """A model (affine if ``linear``), inputs, and target and pass-through arguments."""
    spec = draw_spec(rng, seed, **spec_kw)
    if linear:
        spec = affine(spec)
    batch = rng.randint(1, 4)
    inputs = draw_inputs(rng, g, spec, batch)
    kwargs = draw_extras(rng, g, batch, spec.dtype)
    if target:
        kwargs["target"] = draw_target(rng, spec.out, batch)
        if kwargs["target"] is None and rng.random() < 0.5:
            del kwargs["target"]
    return spec, inputs, batch, kwargs


def draw_baselines(rng, g, spec: Spec, batch: int, inputs):
    """None, or per input a number, a ``(1, ...)`` or a ``(B, ...)`` tensor (Captum's forms: a
    ``(1, C, 1, ...)`` tensor broadcast further fails in its layer methods, which run the model on
    the baselines as given, and with ``internal_batch_size``)."""
    if rng.random() < 0.2:
        return None
    out = tuple(one_baseline(rng, g, batch, s, spec.dtype, kinds=["int", "float", "row", "each", "each"]) for s in spec.shapes)
    return out if isinstance(inputs, tuple) else out[0]


def draw_distribution(rng, g, spec: Spec, inputs, *, same_rows: bool):
    """A baseline distribution (N, ...) per input, as tensors or a callable; ``same_rows``: every
    row one random row (which row is drawn does not matter)."""
    n = rng.randint(1, 3)
    rows = tuple(randn(g, 1 if same_rows else n, *s, dtype=spec.dtype) for s in spec.shapes)
    dist = tuple(r.expand(n, *r.shape[1:]).clone() for r in rows)
    dist = dist if isinstance(inputs, tuple) else dist[0]
    return dist if rng.random() < 0.75 else (lambda: dist)


def draw_stdevs(rng, inputs, *, zero: bool):
    """A number, or a tuple of one per input (a tuple input)."""
    pick = (lambda: 0.0) if zero else (lambda: rng.choice([0.0, 0.1, 0.5, 1.0]))
    if isinstance(inputs, tuple) and rng.random() < 0.5:
        return tuple(pick() for _ in inputs)
    return pick()


@dataclass
class Config:
    cls: str
    spec: Spec
    inputs: object
    kwargs: dict
    ctor: dict = field(default_factory=dict)
    layer: object = None  # a module name, a list of them, or None
    inner: str | None = None  # NoiseTunnel around this class (``ctor`` and ``layer`` are its)

    def __repr__(self) -> str:
        kw = {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
        shapes = [tuple(t.shape) for t in leaves(self.inputs)]
        return (f"{self.cls}[{self.inner}](branches={self.spec.branches}, head={self.spec.head}, out={self.spec.out}, "
                f"skip={self.spec.skip}, dtype={self.spec.dtype}, layer={self.layer}, inputs={shapes}, {kw}, "
                f"{self.ctor})")  # fmt: skip


def run(lib, cfg: Config, **overrides):
    model = build(cfg.spec)
    layer = cfg.layer
    if layer is not None:
        layer = [model.get_submodule(n) for n in layer] if isinstance(layer, list) else model.get_submodule(layer)
    args = () if layer is None else (layer,)
    if cfg.inner is not None:
        obj = lib.NoiseTunnel(getattr(lib, cfg.inner)(model, *args, **cfg.ctor))
    else:
        obj = getattr(lib, cfg.cls)(model, *args, **cfg.ctor)
    with quiet():
        return obj.attribute(fresh(cfg.inputs), **fresh({**cfg.kwargs, **overrides}))


TRAPEZOID_SCALED = ("IntegratedGradients", "LayerIntegratedGradients", "InternalInfluence",
                    "NeuronIntegratedGradients", "NeuronConductance")  # fmt: skip


def to_captums_trapezoid(cfg: Config, out):
    """xattr's result in Captum's trapezoid weights (docs/migration.md, "Trapezoid rule"): the
    attributions times (n - 1) / n (squared for smoothgrad_sq and vargrad), the delta less the
    attributions' change summed per example. Other configurations pass unchanged."""
    cls = cfg.inner or cfg.cls
    method = cfg.kwargs.get("method", "riemann_trapezoid" if cls == "NeuronConductance" else "gausslegendre")
    if cls not in TRAPEZOID_SCALED or method != "riemann_trapezoid":
        return out
    n = cfg.kwargs.get("n_steps", 50)
    factor = (n - 1) / n
    if cfg.kwargs.get("nt_type") in ("smoothgrad_sq", "vargrad"):
        factor = factor**2
    with_delta = bool(cfg.kwargs.get("return_convergence_delta"))
    attr, delta = out if with_delta else (out, None)

    def scale(a):
        return type(a)(scale(t) for t in a) if isinstance(a, (tuple, list)) else a * factor

    scaled = scale(attr)
    if not with_delta:
        return scaled
    flat = [t for group in (attr if isinstance(attr, list) else [attr]) for t in leaves(group)]
    change = sum((1 - factor) * t.reshape(t.shape[0], -1).sum(1) for t in flat)
    return scaled, delta - change.reshape(delta.shape)


def configs(draw, n, seed):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    return [draw(rng, g, seed * 1000 + i) for i in range(n)]


# ----------------------------------------------------------------------------- fixed cases


def product_distribution(dist):
    """Every combination of the inputs' rows: xattr draws whole rows of it, Captum each input's
    row independently (docs/migration.md, "Baseline distributions for tuple inputs"): the same law."""
    if not isinstance(dist, tuple):
        return dist
    idx = torch.cartesian_prod(*[torch.arange(d.shape[0]) for d in dist]).reshape(-1, len(dist))
    return tuple(d[idx[:, i]] for i, d in enumerate(dist))


def random_case(k):
    """A nonlinear model, inputs and one stochastic configuration: (cfg, sample keyword, nt_type)."""
    rng, g = random.Random(500 + k), torch.Generator().manual_seed(500 + k)
    spec, inputs, batch, kw = draw_common(rng, g, 500 + k, target=False, dtype=F64)
    kw.pop("additional_forward_args", None)  # the batch is tiled below
    kw["target"] = {"rows": 1, "multi": (1, 2), "scalar": None}[spec.out]
    cls, layer, inner, ctor = [("GradientShap", None, None, {}), ("LayerGradientShap", "head.0", None, {}),
                               ("NeuronGradientShap", "head.1", None, {}), ("NoiseTunnel", None, "IntegratedGradients", {}),
                               ("NoiseTunnel", None, "Saliency", {}), ("NoiseTunnel", "head.1", "LayerGradCam", {}),
                               ("NoiseTunnel", "head.1", "NeuronIntegratedGradients", {"multiply_by_inputs": False})][k]  # fmt: skip
    if cls.endswith("Shap"):
        dist = draw_distribution(rng, g, spec, inputs, same_rows=False)
        kw["baselines"] = product_distribution(dist() if callable(dist) else dist)
        kw["stdevs"] = 0.3
        if cls.startswith("Neuron"):
            kw["neuron_selector"] = 1
            del kw["target"]
        return Config(cls, spec, inputs, kw, ctor, layer), "n_samples", "smoothgrad"
    nt_type = ("smoothgrad", "smoothgrad_sq", "vargrad")[k % 3]
    kw.update(nt_type=nt_type, stdevs=0.3)
    if inner.endswith("IntegratedGradients"):
        kw["n_steps"] = 8
    if inner.startswith("Neuron"):
        kw["neuron_selector"] = 1
        del kw["target"]
    return Config(cls, spec, inputs, kw, ctor, layer, inner=inner), "nt_samples", nt_type


def tiled(cfg, m):
    inputs = tuple(x.repeat((m,) + (1,) * (x.ndim - 1)) for x in leaves(cfg.inputs))
    return Config(cfg.cls, cfg.spec, inputs if isinstance(cfg.inputs, tuple) else inputs[0], cfg.kwargs, cfg.ctor,
                  cfg.layer, cfg.inner)  # fmt: skip


def mlp(seed, n_in=4):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(n_in, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(F64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return model


class TwoInputs(torch.nn.Module):
    def __init__(self, seed) -> None:
        super().__init__()
        self.net = mlp(seed, n_in=6)

    def forward(self, x, y):
        return self.net(torch.cat([x, y], 1))
