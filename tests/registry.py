"""METHODS_UNDER_TEST: every attribution method, crossed with every invariant in test_invariants.py.

A new method enters here once and inherits every invariant test. Each entry's ``make(f, *,
argnums=0, chunk_size=None, generator=0) -> attr_fn`` builds the method with small settings
(few steps and samples: the invariants are exact, so accuracy does not matter here). Flags say
which invariants apply:

  deterministic  the same inputs always give the same result (no generator involved)
  stochastic     draws random numbers from ``generator`` (an int seed or torch.Generator)
  complete       sum of attributions == f(x) - f(0) exactly on affine models (zero baseline)
  baselines      attr_fn accepts a ``baselines=`` keyword per call (IG's and its wrappers')
  linear         method(a f1 + b f2) == a method(f1) + b method(f2) (for a fixed seed)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import optree
import torch

import xattr
from xattr._src.paths import METHODS as QUADRATURES

N_STEPS = 5
N_SAMPLES = 3
STDEV = 0.1


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    make: Callable[..., Callable]
    deterministic: bool = True
    stochastic: bool = False
    complete: bool = False
    baselines: bool = False
    linear: bool = True

    def __repr__(self) -> str:
        return self.name


def baseline_distribution(x: torch.Tensor, n: int = 4) -> torch.Tensor:
    """n fixed baselines shaped like one example of x (deterministic, distinct rows)."""
    d = x[0].numel()
    grid = torch.linspace(-1.0, 1.0, n * d, dtype=torch.float64).reshape((n,) + tuple(x.shape[1:]))
    return (grid.flip(0) * 0.5).to(dtype=x.dtype, device=x.device)


def _selected(args, argnums):
    return tuple(args[i] for i in argnums) if isinstance(argnums, tuple) else args[argnums]


def _with_distribution(build: Callable[[object], Callable], argnums) -> Callable:
    """attr_fn whose baseline distribution is built from the inputs' shapes at call time."""

    def attr_fn(*args, **kwargs):
        dist = optree.tree_map(baseline_distribution, _selected(args, argnums), namespace="xattr")
        return build(dist)(*args, **kwargs)

    return attr_fn


def _saliency(f, *, argnums=0, chunk_size=None, generator=0, abs=True):
    return xattr.saliency(f, argnums=argnums, abs=abs, chunk_size=chunk_size)


def _ixg(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.input_x_gradient(f, argnums=argnums, chunk_size=chunk_size)


def _ig(quadrature):
    def make(f, *, argnums=0, chunk_size=None, generator=0):
        return xattr.integrated_gradients(f, argnums=argnums, n_steps=N_STEPS, method=quadrature, chunk_size=chunk_size)

    return make


def _gradient_shap(f, *, argnums=0, chunk_size=None, generator=0):
    def build(dist):
        return xattr.gradient_shap(
            f, baselines=dist, n_samples=N_SAMPLES, stdevs=STDEV, argnums=argnums, generator=generator, chunk_size=chunk_size
        )

    return _with_distribution(build, argnums)


_TUNNELS = {"mean": xattr.smoothgrad, "sq_mean": xattr.smoothgrad_sq, "var": xattr.vargrad}


def _smooth(reduce, inner):
    def make(f, *, argnums=0, chunk_size=None, generator=0):
        attr = inner(f, argnums=argnums, chunk_size=chunk_size)
        tunnel = _TUNNELS[reduce]
        return tunnel(attr, stdevs=STDEV, n_samples=N_SAMPLES, argnums=argnums, generator=generator, chunk_size=chunk_size)

    return make


def _expected_ig(f, *, argnums=0, chunk_size=None, generator=0):
    ig = _ig("gausslegendre")(f, argnums=argnums, chunk_size=chunk_size)

    def build(dist):
        return xattr.expectation(ig, baselines=dist, n_samples=N_SAMPLES, argnums=argnums, generator=generator, chunk_size=chunk_size)

    return _with_distribution(build, argnums)


_signed_saliency = lambda f, **kw: _saliency(f, abs=False, **kw)  # noqa: E731
_random = dict(deterministic=False, stochastic=True)

METHODS_UNDER_TEST: list[Method] = [
    Method("saliency", _saliency, linear=False),
    Method("saliency_signed", _signed_saliency),
    Method("input_x_gradient", _ixg, complete=True),
    *[Method(f"ig_{q}", _ig(q), complete=True, baselines=True) for q in QUADRATURES],
    Method("gradient_shap", _gradient_shap, **_random),
    Method("smoothgrad_saliency", _smooth("mean", _signed_saliency), **_random),
    Method("smoothgrad_sq_saliency", _smooth("sq_mean", _signed_saliency), linear=False, **_random),
    Method("vargrad_saliency", _smooth("var", _signed_saliency), linear=False, **_random),
    Method("smoothgrad_ig", _smooth("mean", _ig("gausslegendre")), baselines=True, **_random),
    Method("smoothgrad_sq_ig", _smooth("sq_mean", _ig("gausslegendre")), baselines=True, linear=False, **_random),
    Method("vargrad_ig", _smooth("var", _ig("gausslegendre")), baselines=True, linear=False, **_random),
    Method("expected_ig", _expected_ig, **_random),
]

BY_NAME = {m.name: m for m in METHODS_UNDER_TEST}


def entries(**flags) -> list[Method]:
    """Registry entries whose flags have the given values, e.g. ``entries(complete=True)``."""
    return [m for m in METHODS_UNDER_TEST if all(getattr(m, k) == v for k, v in flags.items())]


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks")


def state_snapshot(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """What an attribution call must leave unchanged: parameters, buffers, modes, hooks, the input."""
    return {
        "params": {k: (v.detach().clone(), v.requires_grad, v.grad, v._version) for k, v in model.named_parameters()},
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "hooks": [len(getattr(m, h)) for m in model.modules() for h in _HOOK_DICTS],
        "x": (x.detach().clone(), x.requires_grad, x.grad, x._version),
    }


def changed_state(before: dict, after: dict) -> list[str]:
    """The keys of two `state_snapshot`s that differ."""
    return [k for k in before if not _same(before[k], after[k])]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# ----------------------------------------------------------------------------- rule-based methods (rules.py)


def _guided(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.guided_backprop(f, argnums=argnums, chunk_size=chunk_size)


def _deconv(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.deconvolution(f, argnums=argnums, chunk_size=chunk_size)


def _deep_lift(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.deep_lift(f, argnums=argnums, chunk_size=chunk_size)


def constant_rows(x: torch.Tensor, n: int = 4) -> torch.Tensor:
    """n distinct baselines shaped like one example of x, each constant over its features.

    Deterministic methods over a distribution must see the same baselines however the inputs are
    split into tensors (the pytree invariant compares a dict of inputs with their concatenation)
    and equal baselines at swapped features (the symmetry axiom); constant rows give both, where
    `baseline_distribution`'s grid gives neither.
    """
    values = torch.linspace(-0.5, 0.7, n, dtype=torch.float64).to(dtype=x.dtype, device=x.device)
    return values.reshape((n,) + (1,) * (x.ndim - 1)).expand((n,) + tuple(x.shape[1:])).clone()


# The shared models end in a softmax, which LRP's default rules refuse (attribute the logits);
# for the invariants here the softmax keeps its ordinary gradient instead.
_LRP_RULES = {k: v for k, v in xattr.rule.lrp_rules().items() if k is not torch.nn.functional.softmax}


def _lrp(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.lrp(f, composite=_LRP_RULES, argnums=argnums, chunk_size=chunk_size)


def _deep_lift_shap(f, *, argnums=0, chunk_size=None, generator=0):
    def attr_fn(*args, **kwargs):
        dist = optree.tree_map(constant_rows, _selected(args, argnums), namespace="xattr")
        return xattr.deep_lift_shap(f, baselines=dist, argnums=argnums, chunk_size=chunk_size)(*args, **kwargs)

    return attr_fn


# Guided backprop and deconvolution clamp the gradient at each ReLU (max(g, 0)), so they are not
# linear in f: method(-f) != -method(f). DeepLift's rules are linear in the cotangent (Rescale
# multiplies it by multipliers fixed by the forward pass; max-pool and softmax route it linearly),
# so DeepLift and DeepLift SHAP are linear in f. DeepLift is exact on affine models from its zero
# default baseline; DeepLift SHAP averages over a distribution of baselines, so its sum is
# f(x) - mean f(b_k), not f(x) - f(0) (test_deep_lift.py checks that instead).
METHODS_UNDER_TEST += [
    Method("guided_backprop", _guided, linear=False),
    Method("deconvolution", _deconv, linear=False),
    Method("deep_lift", _deep_lift, complete=True, baselines=True),
    Method("deep_lift_shap", _deep_lift_shap),
    # LRP-epsilon scales relevance by z / (z + eps sign z) per layer, which is not linear in f; on an
    # affine model its relevance x * w sums to f(x) - f(0) (the bias absorbs the rest).
    Method("lrp", _lrp, complete=True, linear=False),
]
BY_NAME = {m.name: m for m in METHODS_UNDER_TEST}
