"""METHODS_UNDER_TEST: every attribution method, crossed with every invariant in test_invariants.py.

A new method enters here once and inherits every invariant test; test_axioms.py crosses it with
the attribution axioms too. Methods whose inputs or outputs those axioms' checkers cannot take
(image-only inputs, one value per pair of features) enter ``SHAPED_METHODS_UNDER_TEST`` instead;
test_invariants.py crosses ``ALL_METHODS``, both lists. Each entry's ``make(f, *, argnums=0,
chunk_size=None, generator=0) -> attr_fn`` builds the method with small settings (few steps and
samples: the invariants are exact, so accuracy does not matter here). Flags say which invariants
apply:

  deterministic  the same inputs always give the same result (no generator involved)
  stochastic     draws random numbers from ``generator`` (an int seed or torch.Generator)
  complete       sum of attributions == f(x) - f(0) exactly on affine models (zero baseline)
  baselines      attr_fn accepts a ``baselines=`` keyword per call (IG's and its wrappers')
  linear         method(a f1 + b f2) == a method(f1) + b method(f2) (for a fixed seed)
  output         "input": attributions shaped like the attributed inputs; "pairs": one value per
                 pair of features, (B, *x.shape[1:], *x.shape[1:]) (Integrated Hessians)
  refuses        (invariant or model kind, exception type, message regex) for each documented
                 refusal: where the registry's invariant does not apply because the method refuses
                 the case (many outputs, pytrees, inputs without spatial dims), test_invariants.py
                 checks that the case raises that error instead of skipping it
                 (`Method.refusal`; keys in `INVARIANT_KEYS`)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import optree
import torch
from torch import nn

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
    output: str = "input"
    refuses: tuple[tuple[str, type, str], ...] = ()

    def __post_init__(self):
        unknown = [k for k, _, _ in self.refuses if k not in INVARIANT_KEYS]
        if unknown or self.output not in ("input", "pairs"):
            raise ValueError(f"{self.name}: unknown refusal keys {unknown} or output {self.output!r}")

    def __repr__(self) -> str:
        return self.name

    def refusal(self, *keys: str) -> tuple[type, str] | None:
        """(exception type, message regex) if the method refuses any of these cases, else None."""
        for key, error, match in self.refuses:
            if key in keys:
                return error, match
        return None


# What a `Method.refuses` entry can name: an invariant of test_invariants.py, or a shared model.
INVARIANT_KEYS = ("many_outputs", "pytree", "mlp", "cnn")


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
# for the invariants here the softmax keeps its ordinary gradient instead. Epsilon 1e-30, not the
# default 1e-9: LRP-epsilon conserves relevance only up to a relative eps / |z| at each layer, and
# the completeness property meets outputs |z| ~ 1e-2 (a gap of 1e-7, found by the thorough
# profile); a tiny epsilon is the "LRP epsilon with tiny epsilon".
_LRP_RULES = {k: v for k, v in xattr.rule.lrp_rules(eps=1e-30).items() if k is not torch.nn.functional.softmax}


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


# ----------------------------------------------------------------------------- Shapley values (shapley.py)


def shapley_groups(selected):
    """Feature ids for exact Shapley values on the shared models, ids running on across tensors.

    Exact Shapley values cost 2^F rows, so image-shaped inputs (B, C, H, W, ...) are grouped by
    (channel, row): a CNN's dead input channel is still a set of whole features (the dummy axiom)
    and 2x5x5 images make 10 features. Inputs (B, D) keep one feature per element.
    """
    start, ids = 0, []
    for x in optree.tree_leaves(selected, namespace="xattr"):
        lead = tuple(x.shape[1:3]) if x.ndim > 3 else tuple(x.shape[1:])
        n = 1
        for s in lead:
            n *= s
        m = torch.arange(start, start + n, device=x.device).reshape((1,) + lead + (1,) * (x.ndim - 1 - len(lead)))
        ids.append(m)
        start += n
    it = iter(ids)
    return optree.tree_map(lambda _: next(it), selected, namespace="xattr")


def _group_share(attr, x):
    """A group's value over its elements (the registry checks completeness over elements)."""
    size = 1
    for s in x.shape[3:]:
        size *= s
    return attr / size if x.ndim > 3 else attr


def _shapley_values(f, *, argnums=0, chunk_size=None, generator=0):
    def attr_fn(*args, **kwargs):
        selected = _selected(args, argnums)
        attr = xattr.shapley_values(f, feature_mask=shapley_groups(selected), argnums=argnums, chunk_size=chunk_size)(
            *args, **kwargs
        )
        return optree.tree_map(lambda a, x: _group_share(a, x), attr, selected, namespace="xattr")

    return attr_fn


def _shapley_sampling(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.shapley_value_sampling(f, n_samples=N_SAMPLES, argnums=argnums, generator=generator, chunk_size=chunk_size)


# Shapley values copy a feature's value onto each of its elements (as feature ablation does); the
# exact entry groups image rows (`shapley_groups`) and reports each element's equal share of its
# group, so that its elements' sum is the features' sum, f(x) - f(0). Every sampled permutation's
# marginal contributions telescope to f(x) - f(baseline), so the sampling estimate is exactly
# complete too, and linear in f for a fixed seed (the permutations do not depend on f).
METHODS_UNDER_TEST += [
    Method("shapley_values", _shapley_values, complete=True, baselines=True),
    Method("shapley_value_sampling", _shapley_sampling, complete=True, baselines=True, **_random),
]
BY_NAME = {m.name: m for m in METHODS_UNDER_TEST}


# ----------------------------------------------------------------------------- feature ablation and occlusion (ablation.py)


def _feature_ablation(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.feature_ablation(f, argnums=argnums, chunk_size=chunk_size)


def occlusion_windows(selected):
    """Windows for the shared models: one element along the first per-example dim (an MLP's
    feature, a CNN's channel: the dummy and symmetry axioms and the pytree/concatenation
    comparison need whole features there), up to 2 along the others (2x2 patches, overlapping
    with stride 1, so each element averages up to four windows)."""
    return optree.tree_map(lambda x: (1,) + tuple(min(2, s) for s in x.shape[2:]), selected, namespace="xattr")


def _occlusion(f, *, argnums=0, chunk_size=None, generator=0):
    def attr_fn(*args, **kwargs):
        windows = occlusion_windows(_selected(args, argnums))
        return xattr.occlusion(f, sliding_window_shapes=windows, strides=1, argnums=argnums, chunk_size=chunk_size)(*args, **kwargs)

    return attr_fn


# Feature ablation with its default mask (every element a feature) and a zero baseline is exactly
# complete on affine models: the drops w_i x_i sum to f(x) - f(0). Occlusion averages the drops of
# overlapping windows, so its sum is not f(x) - f(0) (complete=False). Both are linear in f (a
# difference of outputs at fixed inputs) and take per-call baselines. Feature permutation is not
# here: its attributions depend on the rest of the batch by design (batch invariance cannot hold
# and a batch of one is refused); tests/test_ablation.py checks its other invariants.
METHODS_UNDER_TEST += [
    Method("feature_ablation", _feature_ablation, complete=True, baselines=True),
    Method("occlusion", _occlusion, baselines=True),
]
BY_NAME = {m.name: m for m in METHODS_UNDER_TEST}


# ----------------------------------------------------------------------------- LIME and KernelSHAP (surrogate.py)


def _n_groups(groups) -> int:
    return max(int(m.max()) + 1 for m in optree.tree_leaves(groups, namespace="xattr"))


def _kernel_shap_exact(f, *, argnums=0, chunk_size=None, generator=0):
    def attr_fn(*args, **kwargs):
        selected = _selected(args, argnums)
        groups = shapley_groups(selected)
        method = xattr.kernel_shap(
            f, n_samples=2 ** _n_groups(groups), feature_mask=groups, argnums=argnums, chunk_size=chunk_size, generator=generator
        )
        return optree.tree_map(_group_share, method(*args, **kwargs), selected, namespace="xattr")

    return attr_fn


def _every_coalition(n_samples, n_features, generator):
    ids = torch.arange(n_samples)
    return (ids[:, None] >> torch.arange(n_features)) & 1


def _uniform_weights(original, perturbed, coalitions):
    return torch.ones(coalitions.shape[:2])


def _lime_factorial(f, *, argnums=0, chunk_size=None, generator=0):
    def attr_fn(*args, **kwargs):
        selected = _selected(args, argnums)
        groups = shapley_groups(selected)
        method = xattr.lime(
            f, n_samples=2 ** _n_groups(groups), feature_mask=groups, argnums=argnums, chunk_size=chunk_size, generator=generator,
            perturb_func=_every_coalition, similarity_func=_uniform_weights, interpretable_model=xattr.linear_regression(),
        )  # fmt: skip
        return optree.tree_map(_group_share, method(*args, **kwargs), selected, namespace="xattr")

    return attr_fn


# Sampled KernelSHAP and LIME give a dummy feature a small non-zero coefficient (regression noise),
# so the registry holds their exact forms, over the `shapley_groups` features: KernelSHAP with
# n_samples >= 2^F enumerates every coalition with its Shapley kernel weight, which gives the
# Shapley values (complete, linear, symmetric, dummy); LIME over every coalition with uniform
# weights and least squares is a full factorial design, whose coefficients are the features' main
# effects (exact w x on affine models, zero for dummies, linear in f). The custom perturb_func and
# similarity_func (copies built in chunks) go through lime's pluggable paths. tests/test_surrogate.py
# checks the sampled forms' invariants (seeded batch prefix, chunks, pytrees, many outputs).
METHODS_UNDER_TEST += [
    Method("kernel_shap_exact", _kernel_shap_exact, complete=True, baselines=True),
    Method("lime_factorial", _lime_factorial, complete=True, baselines=True),
]
BY_NAME = {m.name: m for m in METHODS_UNDER_TEST}


class TwoInputs(nn.Module):
    """Shared by the invariant and Shapley tests: out = W3 (tanh(W1 a + W2 b) * scale): `scale` is a batched pass-through argument."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.lin_a, self.lin_b, self.out = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double().eval()

    def forward(self, a, b, scale):
        return self.out(torch.tanh(self.lin_a(a) + self.lin_b(b)) * scale)


# ----------------------------------------------------------------------------- IG variants (split, guided, blur; Hessians)

def _split_part(side: int):
    """One part of Split IG: 0 the left part [0, alpha*], 1 the right part [alpha*, 1]."""

    def make(f, *, argnums=0, chunk_size=None, generator=0):
        split = xattr.split_integrated_gradients(f, n_steps=N_STEPS, argnums=argnums, chunk_size=chunk_size)

        def attr_fn(*args, **kwargs):
            return split(*args, **kwargs)[side]

        return attr_fn

    return make


def _guided_ig(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.guided_integrated_gradients(f, n_steps=N_STEPS, max_dist=0.1, argnums=argnums, chunk_size=chunk_size)


# Split IG returns a pair (left, right); each part is the method's own output, with alpha* and its
# quadrature, so each goes through every invariant as an entry of its own (their sum, IG over the
# whole path cut at alpha*, would let an error move attribution between the parts unseen). Neither
# part alone is complete (sum(left) = f(gamma(alpha*)) - f(0)); alpha* depends on f's values, so
# Split IG is not linear in f. Guided IG's path follows f's gradient (not linear in f); on affine
# models the gradient is constant along any path that ends at x, so its left Riemann sum is exact.
# Both take many-outputs targets as K copies of the batch, one split or path per example and
# output (NOTE: [K outputs as K copies of the batch] in xattr/_src/split_ig.py); guided IG's
# chunk_size has no effect (each step is one pass of B rows): the chunk invariant checks exactly that.
METHODS_UNDER_TEST += [
    Method("split_ig_left", _split_part(0), baselines=True, linear=False),
    Method("split_ig_right", _split_part(1), baselines=True, linear=False),
    Method("guided_ig", _guided_ig, complete=True, baselines=True, linear=False),
]


def _blur_ig(f, *, argnums=0, chunk_size=None, generator=0):
    # max_sigma 2 on 4 x 4 images: kernel radius 8 folds the reflected border several times
    return xattr.blur_integrated_gradients(f, max_sigma=2.0, n_steps=N_STEPS, argnums=argnums, chunk_size=chunk_size)


def _smooth_target(f):
    """f on ``xattr.softened(model)`` when the model has ReLUs or max-pools (the shared CNN): their
    second derivatives vanish, so Integrated Hessians would warn and give zero interactions, and
    the invariants would compare zeros (NOTE: [Piecewise-linear models have no interactions])."""
    model = getattr(f, "model", None)
    kinked = isinstance(model, nn.Module) and any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in model.modules())
    return xattr.target(xattr.softened(model), f.t) if kinked else f


def _integrated_hessians(f, *, argnums=0, chunk_size=None, generator=0):
    return xattr.integrated_hessians(_smooth_target(f), n_steps=3, argnums=argnums, chunk_size=chunk_size)


# Methods whose inputs or outputs the property tests of test_axioms.py cannot take (they cross
# METHODS_UNDER_TEST with random MLPs and expect attributions shaped like the input): Blur IG
# blurs the last two dims of each example, so it needs image-shaped inputs (B, ..., H, W) and
# refuses the shared MLP's (B, 5) and the pytree case's vectors (tests/test_new_method_invariants.py
# runs the pytree invariant on images); Integrated Hessians gives (B, *x.shape[1:], *x.shape[1:])
# ((B, K, ...) for many outputs) and refuses trees of inputs. test_invariants.py crosses them with its invariants
# as it does METHODS_UNDER_TEST. Blur IG's path starts at the blurred input, not a baseline (no
# baselines keyword; sum(attr) = f(x) - f(blur(x, max_sigma))); it is linear in f (the path does
# not depend on f), which tests/test_new_method_invariants.py checks. Integrated Hessians is exact
# on affine models (no interactions, diagonal = IG) but the completeness checker expects input-
# shaped attributions; the same file checks it.
_NO_IMAGE = (ValueError, r"at least 3 dims")
SHAPED_METHODS_UNDER_TEST: list[Method] = [
    Method("blur_ig", _blur_ig, refuses=(("mlp", *_NO_IMAGE), ("pytree", *_NO_IMAGE))),
    Method(
        "integrated_hessians", _integrated_hessians, baselines=True, output="pairs",
        refuses=(("pytree", TypeError, "attributes one tensor"),),
    ),  # fmt: skip
]
ALL_METHODS = METHODS_UNDER_TEST + SHAPED_METHODS_UNDER_TEST
BY_NAME = {m.name: m for m in ALL_METHODS}
