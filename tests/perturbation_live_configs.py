"""Random configurations of Captum's perturbation classes, and running them in Captum and in
xattr.compat.captum: the helpers of tests/test_compat_perturbation_live.py.

A configuration is a model (``Net``: float64, one tensor or two, five output kinds, optionally a
sum of per-element terms), inputs and the keywords of one ``attribute`` call, drawn from a seeded
``random.Random`` (choices) and ``torch.Generator`` (tensors). ``run(lib, cfg)`` builds the class
from ``captum.attr`` or ``xattr.compat.captum`` and calls it on fresh copies of everything.
"""

from __future__ import annotations

import contextlib
import logging
import random
import warnings

import pytest
import torch
from torch import nn

F64 = torch.float64
SHAPES = ((2, 3), (4,))  # the per-example shapes of x and y


def captum_attr():
    return pytest.importorskip("captum.attr")


class Fold(nn.Module):
    def forward(self, z):
        return z.reshape(-1, 2, 3)


class Net(nn.Module):
    """f(x[, y], *extras) on float64. ``out``: "multi" (B, 2, 3), "rows" (B, 3), "scalar" (B,),
    "column" (B, 1) or "aggregate" (one number per batch). ``additive``: a sum of one term per
    input element (every coalition's value is linear in the coalition). Extras: a tensor scales
    each example, a string "neg" negates, a float shifts."""

    def __init__(self, n_inputs: int, out: str, additive: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        flat = 6 + 4 * (n_inputs - 1)
        self.n, self.out, self.additive = n_inputs, out, additive
        self.lin, self.act, self.head, self.fold = nn.Linear(flat, 5), nn.Tanh(), nn.Linear(5, 6), Fold()
        self.mix = nn.Linear(flat, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double().eval()

    def forward(self, *args):
        xs, extras = args[: self.n], args[self.n :]
        flat = torch.cat([x.reshape(x.shape[0], -1).to(F64) for x in xs], 1)
        z = self.mix(torch.sin(2 * flat + 0.3)) if self.additive else self.head(self.act(self.lin(flat)))
        z = self.fold(z)
        for e in extras:
            if isinstance(e, torch.Tensor):
                z = z * e.reshape(-1, 1, 1)
            elif isinstance(e, str):
                z = -z if e == "neg" else z
            else:
                z = z + e
        return {"multi": z, "rows": z[:, 0], "scalar": z[:, 1, 2], "column": z[:, 1, 2:],
                "aggregate": z[:, 1, 2].sum()}[self.out]  # fmt: skip


class Config:
    def __init__(self, cls, model, inputs, kwargs, ctor=None, layer=None, note=""):
        self.cls, self.model, self.inputs, self.kwargs = cls, model, inputs, kwargs
        self.ctor, self.layer, self.note = ctor or {}, layer, note

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in (self.inputs if isinstance(self.inputs, tuple) else (self.inputs,))]
        kw = {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
        model = f"{self.model.out}, additive={self.model.additive}, layer={self.layer}"
        return f"{self.cls}({model}, {shapes}, {kw}, {self.ctor}, {self.note})"


def randn(g, *shape):
    return torch.randn(shape, generator=g, dtype=F64)


def draw_inputs(rng, g, batch, layout):
    x = randn(g, batch, *SHAPES[0])
    if layout == "one":
        return x
    if layout == "one_tuple":
        return (x,)
    return (x, randn(g, batch, *SHAPES[1]))


def leaves(inputs):
    return inputs if isinstance(inputs, tuple) else (inputs,)


def draw_mask(rng, g, batch, shapes, max_ids, *, per_example=True, inner_broadcast=True, gap=3):
    """A feature mask over the inputs (None sometimes), at most ``max_ids`` distinct ids; the
    "gaps" kind spreads them ``gap`` apart from 2 up (Captum's ShapleyValues runs the orders of
    every id up to the largest: keep ``gap`` small there)."""
    kind = rng.choice(["none", "per_input", "shared", "shared", "gaps"])
    if kind == "none":
        return None
    masks = []
    offset = 0
    for shape in shapes:
        lead = batch if per_example and rng.random() < 0.3 else 1
        mshape = [lead, *shape]
        if inner_broadcast and len(shape) > 1 and rng.random() < 0.3:
            mshape[1 + rng.randrange(len(shape))] = 1
        n_ids = max(1, max_ids // len(shapes)) if kind == "per_input" else max_ids
        ids = torch.randint(0, n_ids, mshape, generator=g)
        if kind == "per_input":
            ids = ids + offset
            offset += n_ids
        elif kind == "gaps":
            ids = ids * gap + 2
        masks.append(ids)
    return tuple(masks) if len(masks) > 1 else masks[0]


def mask_like(mask, inputs):
    """A mask for a tuple input of one tensor is given as a one-tuple."""
    return (mask,) if isinstance(inputs, tuple) and not isinstance(mask, tuple) and mask is not None else mask


def _one_baseline(rng, g, batch, shape):
    kind = rng.choice(["int", "float", "row", "each"])
    if kind == "int":
        return rng.choice([0, 1, -1])
    if kind == "float":
        return rng.choice([0.0, 0.25, -0.5])
    return randn(g, 1 if kind == "row" else batch, *shape)


def draw_baselines(rng, g, batch, inputs):
    if rng.random() < 0.25:
        return None
    shapes = [tuple(t.shape[1:]) for t in leaves(inputs)]
    if not isinstance(inputs, tuple):
        return _one_baseline(rng, g, batch, shapes[0])
    return tuple(_one_baseline(rng, g, batch, s) for s in shapes)


def draw_target(rng, out, batch):
    if out in ("scalar", "aggregate"):
        return None
    if out == "column":
        return rng.choice([None, 0])
    if out == "rows":
        kind = rng.choice(["int", "list", "tensor", "one"])
        if kind == "int":
            return rng.randrange(3)
        each = [rng.randrange(3) for _ in range(batch)]
        return each if kind == "list" else torch.tensor(each) if kind == "tensor" else torch.tensor([each[0]])
    if rng.random() < 0.5:
        return (rng.randrange(2), rng.randrange(3))
    return [(rng.randrange(2), rng.randrange(3)) for _ in range(batch)]


def draw_extras(rng, g, batch, aggregate):
    kind = rng.choice(["none", "none", "scale", "scale_mode", "float", "all"])
    scale = randn(g, batch, 1).abs() + 0.5
    if kind == "none":
        return {}
    if kind == "scale":
        return {"additional_forward_args": scale if rng.random() < 0.5 else (scale,)}
    if kind == "scale_mode":
        return {"additional_forward_args": (scale, rng.choice(["neg", "plain"]))}
    if kind == "float":
        return {"additional_forward_args": (0.75,)}
    return {"additional_forward_args": (scale, "neg", -0.25)}


def draw_ppe(rng, aggregate):
    return 1 if aggregate else rng.choice([1, 1, 2, 3, 7, 50])


def draw_common(rng, g, *, outs, layouts=("one", "one_tuple", "pair"), batches=(1, 4), additive=False, seed=0):
    out = rng.choice(outs)
    layout = rng.choice(layouts)
    aggregate = out == "aggregate"
    batch = rng.randint(max(2, batches[0]) if aggregate else batches[0], batches[1])
    model = Net(2 if layout == "pair" else 1, out, additive, seed)
    inputs = draw_inputs(rng, g, batch, layout)
    kwargs = {"target": draw_target(rng, out, batch), **draw_extras(rng, g, batch, aggregate)}
    if kwargs["target"] is None and rng.random() < 0.5:
        del kwargs["target"]
    return model, inputs, batch, aggregate, kwargs


def compact(mask, start):
    """The mask's ids renumbered start, start + 1, ... in order (no id skipped)."""
    masks = leaves(mask)
    ids = torch.unique(torch.cat([m.reshape(-1) for m in masks]))
    out = tuple(torch.searchsorted(ids, m) + start for m in masks)
    return out if isinstance(mask, tuple) else out[0]


def n_interp(mask, inputs) -> int:
    """Captum's interpretable feature count: every id from the smallest to the largest."""
    if mask is None:
        return sum(t[0].numel() for t in leaves(inputs))
    masks = leaves(mask)
    return int(max(m.max() for m in masks) - min(m.min() for m in masks)) + 1


def fresh(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, tuple):
        return tuple(fresh(t) for t in tree)
    if isinstance(tree, list):
        return [fresh(t) for t in tree]
    if isinstance(tree, dict):
        return {k: fresh(v) for k, v in tree.items()}
    return tree


@contextlib.contextmanager
def quiet():
    """Captum's per-example Lime warning and its skipped-feature log lines."""
    level = logging.getLogger("captum").level
    logging.getLogger("captum").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("captum").setLevel(level)


def run(lib, cfg: Config, cls=None, **overrides):
    layer = () if cfg.layer is None else (cfg.model.get_submodule(cfg.layer),)
    ctor = {k: (v(lib) if getattr(v, "per_lib", False) else v) for k, v in cfg.ctor.items()}
    obj = getattr(lib, cls or cfg.cls)(cfg.model, *layer, **ctor)
    with quiet():
        return obj.attribute(fresh(cfg.inputs), **fresh({**cfg.kwargs, **overrides}))


def assert_same(got, want, rtol=1e-6, atol=1e-6):
    """xattr's float64 result against Captum's (float32 where Captum casts: its rounding)."""
    assert type(got) is type(want), f"{type(got).__name__} vs Captum's {type(want).__name__}"
    if isinstance(want, tuple):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same(a, b, rtol, atol)
        return
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs Captum's {tuple(want.shape)}"
    if want.dtype == torch.float32:
        rtol, atol = max(rtol, 2e-5), max(atol, 2e-5)
    torch.testing.assert_close(got.to(F64), want.to(F64), rtol=rtol, atol=atol)


def configs(draw, n, seed):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    return [draw(rng, g, seed * 1000 + i) for i in range(n)]


class PerLib:
    """A constructor argument built fresh for each library (Captum's Model objects hold state)."""

    per_lib = True

    def __init__(self, make) -> None:
        self.make = make

    def __call__(self, lib):
        return self.make()

    def __repr__(self) -> str:
        return getattr(self.make, "__name__", "PerLib")


def linear_regression():
    from captum._utils.models.linear_model import SkLearnLinearRegression

    return SkLearnLinearRegression()


def lasso():
    from captum._utils.models.linear_model import SkLearnLasso

    return SkLearnLasso(alpha=0.01)


def size_kernel(original, perturbed, interp, **kwargs):
    """A custom similarity_func: larger coalitions weigh more (reads Captum's kwargs)."""
    return 1.0 + float(interp.sum()) / kwargs["num_interp_features"]


def distance_kernel(original, perturbed, interp, **kwargs):
    """A custom similarity_func reading the inputs (a tuple for tuple inputs)."""
    o = torch.cat([t.flatten() for t in leaves(original)])
    p = torch.cat([t.flatten() for t in leaves(perturbed)])
    return torch.exp(-((o - p) ** 2).sum() / 8.0)


def every_coalition(original_inp, **kwargs):
    """A deterministic perturb_func: a generator over all 2^F coalitions."""
    n = int(kwargs["num_interp_features"])
    for code in range(2**n):
        yield torch.tensor([[(code >> i) & 1 for i in range(n)]])


def draw_similarity(rng):
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    kind = rng.choice(["none", "euclidean", "cosine", "size", "distance"])
    if kind == "none":
        return None
    if kind in ("euclidean", "cosine"):
        # widths keeping every weight above ~1e-6: Captum fits in float32
        return get_exp_kernel_similarity_function(kind, rng.choice([0.5, 1.0]) if kind == "cosine" else rng.choice([3.0, 5.0]))
    return size_kernel if kind == "size" else distance_kernel


def roll_batch(x, mask):
    """A deterministic perm_func: the masked elements from the next example (cyclically)."""
    return torch.where(mask.bool(), x.roll(1, 0), x)


def flip_batch(x, mask):
    """Another: the masked elements from the batch in reverse order, scaled."""
    return torch.where(mask.bool(), 0.5 * x.flip(0), x)


def first_times_last(h):
    """A callable neuron selector: (B, ...) -> (B,)."""
    flat = h.reshape(h.shape[0], -1)
    return flat[:, 0] * flat[:, -1]


def switch_features(sample, original, **kwargs):
    """from_interp_rep_transform: features switched off take their baseline (Captum's kwargs)."""
    out = tuple(torch.where(sample[0][m].bool(), x, b) for x, m, b in
                zip(leaves(original), leaves(kwargs["feature_mask"]), leaves(kwargs["baselines"])))  # fmt: skip
    return out if isinstance(original, tuple) else out[0]


def scaled_features(original_inp, **kwargs):
    """perturb_func in the input space: every pattern of features kept (1) or scaled by 0.3."""
    n = int(kwargs["num_interp_features"])
    for code in range(2**n):
        keep = torch.tensor([(code >> i) & 1 for i in range(n)], dtype=F64)
        factor = 0.3 + 0.7 * keep
        out = tuple(x * factor[m] for x, m in zip(leaves(original_inp), leaves(kwargs["feature_mask"])))
        yield out if isinstance(original_inp, tuple) else out[0]


def kept_features(sample, original, **kwargs):
    """to_interp_rep_transform: which features equal the original."""
    n = int(kwargs["num_interp_features"])
    keep = torch.ones(n, dtype=torch.long)
    for s, x, m in zip(leaves(sample), leaves(original), leaves(kwargs["feature_mask"])):
        for j in range(n):
            if bool((s != x)[(m == j).expand_as(x)].any()):
                keep[j] = 0
    return keep[None]


def tile(value, m: int, batch: int):
    """The batch repeated m times (copy-major): tensors, masks and lists with one entry per example."""
    if isinstance(value, tuple):
        return tuple(tile(v, m, batch) for v in value)
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
        return value.repeat((m,) + (1,) * (value.ndim - 1))
    if isinstance(value, list) and len(value) == batch:
        return value * m
    return value


def captums(cfg: Config):
    """Captum's result for the configuration; a note "against <class>" runs that Captum class on
    the same keywords instead (its exact ShapleyValues, or its FeatureAblation for one feature,
    for KernelShap)."""
    captum = captum_attr()
    if cfg.note.startswith("against "):
        kw = {k: v for k, v in cfg.kwargs.items() if k not in ("n_samples", "return_input_shape")}
        return run(captum, Config(cfg.note.split()[1], cfg.model, cfg.inputs, kw))
    if cfg.note == "Captum at perturbations_per_eval=1":  # test_captum_layer_ablation_per_example_targets_in_chunks
        return run(captum, cfg, perturbations_per_eval=1)
    return run(captum, cfg)
