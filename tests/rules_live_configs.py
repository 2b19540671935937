"""Random small models and configurations of Captum's rule-based classes, and running them in
Captum and in xattr.compat.captum: the helpers of tests/test_compat_rules_live.py.

A model is drawn as a ``Spec`` (plain data: one branch of stages per input, a head, an output
kind) and built afresh for every run from its seed (Captum's LRP deletes ``module.rule`` after
each call and its hooks may leave state behind). Models are ones Captum handles correctly: every
module called once, the flatten and the concatenation of branches inside ``forward``, no two
modules Captum's DeepLift hooks back to back (an activation and a max-pool in one stage get a
batch norm or a ``Scale`` between them), max-pools whose windows do not overlap, and for LRP only
the modules Captum has rules for. ``run(lib, cfg)`` builds the class from ``captum.attr`` or
``xattr.compat.captum`` and calls it on fresh copies of everything.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

F64 = torch.float64
DL_ACTS = ("ReLU", "Sigmoid", "Tanh", "ELU", "Softplus", "LeakyReLU")  # the activations Captum's DeepLift hooks
LRP_ACTS = ("ReLU", "Tanh")  # the activations Captum's LRP passes relevance through
NONLINEAR = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softplus, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d)


def captum_attr():
    return pytest.importorskip("captum.attr")


class Scale(nn.Module):
    """``x * c``: a module returning a new tensor, keeping two hooked modules apart."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def _act(name: str, rng) -> nn.Module:
    if name == "ELU":
        return nn.ELU(alpha=rng.choice([0.5, 1.0, 1.5]))
    if name == "Softplus":
        return nn.Softplus(beta=rng.choice([0.5, 1.0, 2.0]))
    if name == "LeakyReLU":
        return nn.LeakyReLU(rng.choice([0.01, 0.2]))
    return getattr(nn, name)()


@dataclass
class Spec:
    """A model as data: ``branches[i]`` is the list of modules input i passes (as constructor
    calls: (class name, args, kwargs)), then the flattened branches are concatenated (reversed by
    a swap flag) and pass ``head``. ``out``: "rows" (B, 3), "multi" (B, 2, 3) or "scalar" (B,)."""

    shapes: list  # per-example input shapes
    branches: list
    head: list
    out: str
    seed: int
    dtype: torch.dtype = F64
    rules: dict = field(default_factory=dict)  # module name: (Captum rule class name, kwargs)
    skip: bool = False  # a linear layer beside the head, added to it (a residual path)


def _build(entry, rng=None):
    name, args, kwargs = entry
    return Scale(*args) if name == "Scale" else getattr(nn, name)(*args, **kwargs)


class Net(nn.Module):
    """f(*inputs, *extras) built from a ``Spec``. Extras: a tensor scales each example, "neg"
    negates, a float shifts, an int (a bool; Captum's LRP adds 0 to every argument) swaps the
    branches' order."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.n, self.out = len(spec.branches), spec.out
        self.branches = nn.ModuleList(nn.Sequential(*[_build(e) for e in b]) for b in spec.branches)
        self.head = nn.Sequential(*[_build(e) for e in spec.head])
        self.skip = nn.Linear(spec.head[0][1][0], spec.head[-1][1][1]) if spec.skip else None
        g = torch.Generator().manual_seed(spec.seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.8)
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        self.to(spec.dtype).eval()

    def forward(self, *args):
        xs, extras = args[: self.n], args[self.n :]
        hs = [torch.flatten(b(x), 1) for b, x in zip(self.branches, xs)]
        if any(isinstance(e, int) and e for e in extras):
            hs = hs[::-1]
        h = torch.cat(hs, 1) if len(hs) > 1 else hs[0]
        z = self.head(h) if self.skip is None else self.head(h) + self.skip(h)
        for e in extras:
            if isinstance(e, torch.Tensor):
                z = z * e.reshape(-1, 1)
            elif e == "neg":
                z = -z
            elif isinstance(e, float):
                z = z + e
        return z.reshape(-1, 2, 3) if self.out == "multi" else z[:, 0] if self.out == "scalar" else z


def build(spec: Spec, rules_from=None) -> Net:
    model = Net(spec)
    for name, (rule, kwargs) in spec.rules.items():
        model.get_submodule(name).rule = getattr(rules_from, rule)(**kwargs)
    return model


# ----------------------------------------------------------------------------- drawing models


def _stage(rng, kind, channels, size, *, lrp, act_names):
    """One stage: a linear or conv layer, then maybe a norm, an activation and a pool.
    Returns (entries, channels, size) with the stage's output channels (features) and size."""
    out_ch = rng.randint(2, 4)
    if kind == "vec":
        entries = [("Linear", (channels, out_ch), {})]
        if not lrp and rng.random() < 0.3:
            entries.append(("BatchNorm1d", (out_ch,), {}))
        if rng.random() < 0.85:
            entries.append((rng.choice(act_names), (), {}))
        return entries, out_ch, ()
    nd = 1 if kind == "seq" else 2
    k = rng.choice([2, 3]) if min(size) >= 3 else 2
    pad = rng.choice([0, 1]) if k == 3 else 0
    entries = [(f"Conv{nd}d", (channels, out_ch, k), {"padding": pad})]
    size = tuple(s + 2 * pad - k + 1 for s in size)
    norm = rng.random() < 0.35
    if norm:
        entries.append((f"BatchNorm{nd}d", (out_ch,), {}))
    act = rng.choice(act_names) if rng.random() < 0.8 else None
    if act:
        entries.append((act, (), {}))
    pools = [f"MaxPool{nd}d", f"AvgPool{nd}d"] + (["AdaptiveAvgPool2d"] if nd == 2 else [])
    if min(size) >= 2 and rng.random() < 0.5:
        pool = rng.choice(pools)
        if act == "ReLU" and pool.startswith("Max") and not lrp:
            pool = f"AvgPool{nd}d"  # windows of dead units equal their references: documented for DeepLift
        if act and pool.startswith("Max") and not lrp:  # Captum's DeepLift mis-chains two hooked modules back to back
            entries.append(("Scale", (rng.choice([1.0, 0.5]),), {}))
        entries.append((pool, (2,), {}))
        size = tuple(s // 2 for s in size) if not pool.startswith("Adaptive") else (2,) * nd
    return entries, out_ch, size


def _vec_size(channels, size):
    n = channels
    for s in size:
        n *= s
    return n


def draw_spec(rng, seed, *, n_inputs=None, kinds=("vec", "seq", "img"), lrp=False, outs=("rows", "multi", "scalar"),
              dtype=None):  # fmt: skip
    """A random model. ``lrp``: only the modules Captum's LRP has rules for (no Conv1d, 1-d norms,
    Sigmoid/ELU/..., Scale); every module Captum would reject is left out."""
    kinds = tuple(k for k in kinds if not (lrp and k == "seq"))
    n_inputs = n_inputs or rng.choice([1, 1, 2])
    act_names = LRP_ACTS if lrp else DL_ACTS
    shapes, branches, width = [], [], 0
    for _ in range(n_inputs):
        kind = rng.choice(kinds)
        if kind == "vec":
            channels, size = rng.randint(3, 5), ()
        else:
            channels, size = rng.randint(1, 2), (rng.randint(5, 7),) * (1 if kind == "seq" else 2)
        shapes.append((channels, *size) if size else (channels,))
        entries, channels, size = _stage(rng, kind, channels, size, lrp=lrp, act_names=act_names)
        if rng.random() < 0.15:  # an activation on the input itself
            entries.insert(0, (rng.choice(act_names), (), {}))
        if kind != "vec" and rng.random() < 0.4 and min(size) >= 2:
            more, channels, size = _stage(rng, kind, channels, size, lrp=lrp, act_names=act_names)
            entries += more
        branches.append(entries)
        width += _vec_size(channels, size)
    out = rng.choice(outs)
    hidden = rng.randint(3, 5)
    head = [("Linear", (width, hidden), {}), (rng.choice(act_names), (), {})]
    if lrp and rng.random() < 0.3:
        head.append(("Dropout", (0.3,), {}))
    head.append(("Linear", (hidden, {"rows": 3, "multi": 6, "scalar": 2}[out]), {}))
    skip = not lrp and rng.random() < 0.25
    if not lrp and not skip and rng.random() < 0.1:
        head.append((rng.choice(act_names), (), {}))  # a hooked module as the model's last
    dtype = dtype or (torch.float32 if rng.random() < 0.15 else F64)
    return Spec(shapes, branches, head, out, seed, dtype, skip=skip)


def module_names(spec: Spec, kinds=None):
    """Names of the model's leaf modules (optionally only of the given class names)."""
    names = [(f"branches.{i}.{j}", e[0]) for i, b in enumerate(spec.branches) for j, e in enumerate(b)]
    names += [(f"head.{j}", e[0]) for j, e in enumerate(spec.head)] + ([("skip", "Linear")] if spec.skip else [])
    return [n for n, c in names if kinds is None or c in kinds]


def layer_shape(spec: Spec, name: str, inputs, to_input: bool):
    """The per-example shape of a layer's output (or input) on these inputs."""
    model, seen = build(spec), []
    hook = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(i[0] if to_input else o))
    try:
        with torch.no_grad():
            model(*leaves(inputs))
    finally:
        hook.remove()
    return tuple(seen[0].shape[1:])


# ----------------------------------------------------------------------------- drawing arguments


def randn(g, *shape, dtype=F64):
    return torch.randn(shape, generator=g, dtype=F64).to(dtype)


def leaves(inputs):
    return inputs if isinstance(inputs, tuple) else (inputs,)


def draw_inputs(rng, g, spec: Spec, batch: int):
    xs = tuple(randn(g, batch, *s, dtype=spec.dtype) for s in spec.shapes)
    if rng.random() < 0.15:  # inputs that already require grad
        xs = (xs[0].requires_grad_(),) + xs[1:]
    return xs if len(xs) > 1 or rng.random() < 0.3 else xs[0]


def draw_target(rng, out, batch):
    if out == "scalar":
        return None
    if out == "rows":
        kind = rng.choice(["int", "int", "negative", "list", "tensor", "one", "0-dim", "tuple"])
        if kind in ("0-dim", "tuple"):
            return torch.tensor(rng.randrange(3)) if kind == "0-dim" else (rng.randrange(3),)
        if kind in ("int", "negative"):
            return rng.randrange(3) - (3 if kind == "negative" else 0)
        each = [rng.randrange(3) for _ in range(batch)]
        return each if kind == "list" else torch.tensor(each) if kind == "tensor" else torch.tensor([each[0]])
    if rng.random() < 0.5:
        return (rng.randrange(2), rng.randrange(3))
    return [(rng.randrange(2), rng.randrange(3)) for _ in range(batch)]


def draw_extras(rng, g, batch, dtype, *, lrp=False):
    """additional_forward_args: for LRP only a flag (Captum's LRP applies the chain rule to relevance
    outside modules: a factor there is documented, docs/migration_rules.md)."""
    if lrp:
        return rng.choice([{}, {}, {"additional_forward_args": True}, {"additional_forward_args": (False,)}])
    kind = rng.choice(["none", "none", "scale", "scale_mode", "float", "all"])
    scale = (torch.rand(batch, 1, generator=g, dtype=F64) + 0.5).to(dtype)
    return {"none": {}, "scale": {"additional_forward_args": scale if rng.random() < 0.5 else (scale,)},
            "scale_mode": {"additional_forward_args": (scale, rng.choice(["neg", "plain"]))},
            "float": {"additional_forward_args": (0.75,)},
            "all": {"additional_forward_args": (scale, "neg", -0.25, True)}}[kind]  # fmt: skip


def one_baseline(rng, g, batch, shape, dtype, constant=True, kinds=None):
    """A number, a ``(1, ...)`` or a ``(B, ...)`` tensor, drawn among ``kinds`` (by default all
    four, or the tensors alone where not ``constant``; a kind listed twice is drawn twice as often)."""
    kind = rng.choice(kinds or (["int", "float", "row", "each"] if constant else ["row", "each"]))
    if kind == "int":
        return rng.choice([0, 1, -1])
    if kind == "float":
        return rng.choice([0.0, 0.25, -0.5])
    return randn(g, 1 if kind == "row" else batch, *shape, dtype=dtype)


def draw_baselines(rng, g, spec: Spec, batch: int, inputs):
    """Numbers, ``(1, ...)`` or ``(B, ...)`` tensors, mixed per input; random tensors only where a
    max-pool follows (a constant reference ties every pool window: which position takes the
    reference's share then rests on rounding, and xattr's B + 1 rows round apart from Captum's 2B)."""
    pooled = bool(module_names(spec, ("MaxPool1d", "MaxPool2d")))
    if not pooled and rng.random() < 0.2:
        return None
    out = tuple(one_baseline(rng, g, batch, s, spec.dtype, constant=not pooled) for s in spec.shapes)
    return out if isinstance(inputs, tuple) else out[0]


class Distribution:
    """A baseline distribution given as a callable, with or without the inputs (Captum's forms)."""

    def __init__(self, dist, with_inputs: bool) -> None:
        self.dist, self.with_inputs = dist, with_inputs

    def __call__(self, *inputs):
        if not self.with_inputs:
            return self.dist
        shifted = tuple(d + 0.1 * x.detach().mean(0, keepdim=True) for d, x in zip(leaves(self.dist), leaves(inputs[0])))
        return shifted if isinstance(self.dist, tuple) else shifted[0]

    def __repr__(self) -> str:
        return f"Distribution(with_inputs={self.with_inputs})"


def draw_distribution(rng, g, spec: Spec, inputs):
    n = rng.randint(2, 4)
    dist = tuple(randn(g, n, *s, dtype=spec.dtype) for s in spec.shapes)
    dist = dist if isinstance(inputs, tuple) else dist[0]
    kind = rng.choice(["tensor", "tensor", "callable", "callable_inputs"])
    if kind == "tensor":
        return dist
    made = Distribution(dist, kind == "callable_inputs")
    return made if kind == "callable_inputs" else (lambda: made())


def doubled(multipliers):
    return tuple(2 * m for m in multipliers)


def product(multipliers, inputs):
    return tuple(m * x for m, x in zip(multipliers, inputs))


def squared(multipliers, inputs, baselines):
    return tuple(m * (x - b) ** 2 for m, x, b in zip(multipliers, inputs, baselines))


def draw_custom(rng):
    return rng.choice([None, None, None, doubled, product, squared])


def first_times_last(h):
    flat = h.reshape(h.shape[0], -1)
    return flat[:, 0] * flat[:, -1]


def first_plus_last(h):
    flat = h.reshape(h.shape[0], -1)
    return flat[:, 0] - 0.5 * flat[:, -1]


def draw_selector(rng, shape, *, linear=False):
    """An int, a tuple of ints or with slices, or a callable. ``linear``: no product of neurons
    (DeepLift keeps its gradient, and a max-pool below it mixes the reference rows' gradient into
    Captum's multipliers: test_captum_deep_lift_max_pool_mixes_reference_gradients)."""
    kind = rng.choice(["int", "tuple", "tuple", "list", "slice", "callable"])
    if kind == "list":  # indexes as the tuple of its items, in both
        return [rng.randrange(s) for s in shape]
    if kind == "callable":
        return first_plus_last if linear else rng.choice([first_times_last, first_plus_last])
    if kind == "int" and len(shape) == 1:
        return rng.randrange(shape[0])
    if kind == "slice":
        start = rng.randrange(shape[0])
        first = slice(start, rng.randint(start + 1, shape[0])) if rng.random() < 0.7 else slice(None)
        return (first,) + tuple(rng.randrange(s) if rng.random() < 0.7 else slice(None) for s in shape[1:])
    return tuple(rng.randrange(s) - (s if rng.random() < 0.2 else 0) for s in shape)  # negative indices too


LRP_RULES = {  # Captum's rule classes and the keywords drawn for them
    "EpsilonRule": lambda rng: {"epsilon": rng.choice([1e-9, 1e-3, 0.1])} if rng.random() < 0.7 else {},
    "GammaRule": lambda rng: {"gamma": rng.choice([0.1, 0.25, 0.5]), "set_bias_to_zero": rng.random() < 0.4},
    "Alpha1_Beta0_Rule": lambda rng: {"set_bias_to_zero": rng.random() < 0.4},
}


def draw_rules(rng, spec: Spec):
    """``module.rule`` on some of the layers Captum has rules for; IdentityRule on a batch norm
    (it reads a conv's output, never a ReLU's: zero entries are documented)."""
    rules = {}
    for name in module_names(spec, ("Linear", "Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d")):
        if rng.random() < 0.5:
            continue
        kind = spec_entry(spec, name)[0]
        choices = list(LRP_RULES) + (["IdentityRule"] if kind == "BatchNorm2d" else [])
        rule = rng.choice(choices)
        rules[name] = (rule, LRP_RULES[rule](rng) if rule in LRP_RULES else {})
    return rules


def spec_entry(spec: Spec, name: str):
    if name == "skip":
        return ("Linear", (), {})
    part, *idx = name.split(".")
    return spec.branches[int(idx[0])][int(idx[1])] if part == "branches" else spec.head[int(idx[0])]


# ----------------------------------------------------------------------------- running and comparing


@dataclass
class Config:
    cls: str
    spec: Spec
    inputs: object
    kwargs: dict
    ctor: dict = field(default_factory=dict)
    layer: object = None  # a module name, a list of them, or None
    captum_rules: bool = False  # Captum's rule objects as module.rule for xattr too

    def __repr__(self) -> str:
        kw = {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
        shapes = [tuple(t.shape) for t in leaves(self.inputs)]
        return (f"{self.cls}(branches={self.spec.branches}, head={self.spec.head}, out={self.spec.out}, "
                f"dtype={self.spec.dtype}, rules={self.spec.rules}, captum_rules={self.captum_rules}, "
                f"layer={self.layer}, inputs={shapes}, {kw}, {self.ctor})")  # fmt: skip


def fresh(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone().requires_grad_(tree.requires_grad)
    if isinstance(tree, (tuple, list)):
        return type(tree)(fresh(t) for t in tree)
    if isinstance(tree, dict):
        return {k: fresh(v) for k, v in tree.items()}
    return tree


@contextlib.contextmanager
def quiet():
    """Captum's hook warnings, GuidedGradCam's empty-tensor warning; max_unpool (Captum's DeepLift
    max-pool rule) has no deterministic kernel, which the suite asks for (tests/conftest.py)."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(was)


def rules_module(lib):
    if lib.__name__.startswith("captum"):
        from captum.attr._utils import lrp_rules

        return lrp_rules
    from xattr.compat.captum import lrp

    return lrp


def run(lib, cfg: Config, **overrides):
    model = build(cfg.spec, rules_module(captum_attr() if cfg.captum_rules else lib))
    layer = cfg.layer
    if layer is not None:
        layer = [model.get_submodule(n) for n in layer] if isinstance(layer, list) else model.get_submodule(layer)
    obj = getattr(lib, cfg.cls)(model, *(() if layer is None else (layer,)), **cfg.ctor)
    with quiet():
        return obj.attribute(fresh(cfg.inputs), **fresh({**cfg.kwargs, **overrides}))


def assert_same(got, want, rtol=1e-6, atol=1e-6):
    """xattr's result against Captum's: the same structure (tensor, tuple, list), shapes, dtypes
    and numbers (looser in float32)."""
    assert type(got) is type(want), f"{type(got).__name__} vs Captum's {type(want).__name__}"
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want), f"{len(got)} entries vs Captum's {len(want)}"
        for a, b in zip(got, want):
            assert_same(a, b, rtol, atol)
        return
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs Captum's {tuple(want.shape)}"
    if want.numel() == 0:  # GuidedGradCam's empty tensor (Captum's is float32 for any input)
        return
    assert got.dtype == want.dtype, f"dtype {got.dtype} vs Captum's {want.dtype}"
    if want.dtype == torch.float32:
        rtol, atol = max(rtol, 1e-4), max(atol, 1e-4)
    torch.testing.assert_close(got.detach().to(F64), want.detach().to(F64), rtol=rtol, atol=atol)
