"""Stability of attributions under small changes of the input: the local Lipschitz estimate
(Alvarez-Melis and Jaakkola 2018) and relative input, output and representation stability
(Agarwal et al. 2022).

NOTE: [Neighbourhoods of the stability metrics]
Each metric is a sup over a neighbourhood of x, estimated by the max over ``n_samples``
perturbed copies (a lower bound of the sup that grows with ``n_samples``) in
`worst_over_copies`, the loop of `sensitivity_max` too: with the same ``perturb_func``,
``radius``, ``n_samples`` and seed every metric here and `sensitivity_max` see the same copies.
They are drawn by `draw_copies` with the radius as the second positional argument, one generator
per example (NOTE: [Perturbed copies of each example]), by default with `uniform_noise`: uniform
in the L-infinity box ``|x'_j - x_j| <= radius``. The attribution function is called once at x
and once per chunk on all copies folded into the batch; a seeded stochastic one keeps phi(x)'s
draws on every copy (NOTE: [Seeds of folded copies]), so it is scored as one function of its
input and every metric is 0 at a radius of 0. Model and layer calls (predicted classes, logits,
representations) run on the same folded rows, under ``torch.no_grad`` outside torch.func
transforms.

NOTE: [Percent changes of the relative stability metrics]
Agarwal et al. divide elementwise by the unperturbed value, ``(v - v') / v``, for the
attributions, the input (RIS) and the representation (RRS), and take a p-norm of the result.
Where ``v_j = 0`` that is a division by zero, so every ``v_j`` is replaced by
``sign(v_j) max(|v_j|, eps_div * max_k |v_k|)`` (zeros count as positive; ``max_k`` over the
example's elements of that quantity; an all-zero v uses ``eps_div`` itself). The floor is
relative, so the percent changes stay invariant to rescaling v, as they are without zeros
(except for an all-zero v, whose every change is infinitely large relative to it).
Near-zero elements still dominate: an input pixel at 0 that the perturbation moves by r
contributes ``r / (eps_div max|x|)``, and an attribution that is exactly 0 at x (integrated
gradients at a zero pixel, with a zero baseline) does the same in the numerator. The ratio's
denominator is floored at ``eps_min`` (the paper's epsilon_min), which guards the case where the
input, logits or representation did not change. Following the paper, only copies that keep the
predicted class count (the argmax of ``model``'s output; the sign of a single logit); an example
none of whose copies keep it gets nan, with a warning.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .._src.layers import at_layer
from .._src.nesting import new_call_inside_model
from .._src.warn import warn
from ._noise import uniform_noise
from ._worst_case import worst_over_copies


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def local_lipschitz_estimate(
    attr_fn: Callable,
    *args,
    radius: float,
    n_samples: int,
    norm: str | float = "l2",
    perturb_func: Callable = uniform_noise,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """``max_{x'} ||phi(x) - phi(x')|| / ||x - x'||`` over perturbed x', one number per example.

    Alvarez-Melis and Jaakkola 2018 (their L_X, a sup over the ball around x), estimated by the
    max over ``n_samples`` copies drawn uniformly from the L-infinity box of radius ``radius``
    (NOTE: [Neighbourhoods of the stability metrics]). Both norms are taken over all attributed
    elements of an example together; a copy equal to x (``||x - x'|| = 0``) scores 0.

    Args:
      attr_fn: attribution function, called on ``args`` and on the folded copies.
      args: its arguments; ``args[argnums]`` are perturbed, the others pass through, tiled.
      radius: the neighbourhood's radius, > 0.
      n_samples: perturbed copies per example.
      norm: "l2" (the paper's), "l1", "linf", or a number p >= 1.
      perturb_func: ``perturb_func(x[, radius][, generator=g])`` as for `sensitivity_max`.
      generator: int seed or torch.Generator (NOTE: [Explicit randomness]).
      chunk_size: most rows (examples x copies) per call of attr_fn.
      show_progress: a progress bar over the chunks.

    Returns:
      (B,) tensor, >= 0 (lower is more stable).

    Example:
      >>> sal = xattr.saliency(xattr.target(model, 3))
      >>> L = xattr.metrics.local_lipschitz_estimate(sal, x, radius=0.05, n_samples=10, generator=0)   # (B,)
    """
    p = _ord(norm, "norm")

    def score(x0, xs, e0, es, outs0, outs):
        num = torch.linalg.vector_norm(e0 - es, ord=p, dim=-1)
        den = torch.linalg.vector_norm(x0 - xs, ord=p, dim=-1)
        return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))

    return _worst(attr_fn, args, (), score, radius, n_samples, perturb_func, argnums, generator, chunk_size,
                  show_progress, "local Lipschitz estimate")  # fmt: skip


@new_call_inside_model
def relative_input_stability(
    model: Callable | None,
    attr_fn: Callable,
    *args,
    radius: float,
    n_samples: int,
    p: str | float = 2,
    eps_min: float = 1e-6,
    eps_div: float = 1e-6,
    perturb_func: Callable = uniform_noise,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Relative input stability (Agarwal et al. 2022), one number per example:

      RIS = max_{x'} ||(e_x - e_x') / e_x||_p / max(||(x - x') / x||_p, eps_min)

    over perturbed copies x' with the predicted class of x (NOTE: [Percent changes of the
    relative stability metrics], NOTE: [Neighbourhoods of the stability metrics]).

    Args:
      model: the model function giving logits (B, K) (or one logit per example) on ``args``,
        used for the class constraint; None drops the constraint.
      attr_fn: attribution function, called on ``args`` and on the folded copies.
      radius, n_samples, perturb_func, argnums, generator, chunk_size, show_progress: as for
        `local_lipschitz_estimate`.
      p: the norm of the percent changes: a number >= 1, or "l1", "l2", "linf".
      eps_min: floor of the denominator's norm.
      eps_div: relative floor of the elementwise divisions.

    Returns:
      (B,) tensor, >= 0 (lower is more stable); nan for an example no copy of which kept its class.

    Example:
      >>> sal = xattr.saliency(xattr.target(model, 3))
      >>> ris = xattr.metrics.relative_input_stability(model, sal, x, radius=0.05, n_samples=10, generator=0)  # (B,)
    """
    o = _ord(p, "p")
    _positive(eps_min=eps_min, eps_div=eps_div)
    if model is not None and not callable(model):
        raise TypeError(f"model must be the model function giving the logits (or None), got {type(model).__name__}")

    def score(x0, xs, e0, es, outs0, outs):
        num = _pct_norm(e0, es, o, eps_div)
        den = _pct_norm(x0, xs, o, eps_div).clamp(min=eps_min)
        return _kept(num / den, outs0, outs, model is not None)

    calls = () if model is None else (model,)
    out = _worst(attr_fn, args, calls, score, radius, n_samples, perturb_func, argnums, generator, chunk_size,
                 show_progress, "relative input stability")  # fmt: skip
    return _no_copy_left(out, "relative_input_stability")


@new_call_inside_model
def relative_output_stability(
    model: Callable,
    attr_fn: Callable,
    *args,
    radius: float,
    n_samples: int,
    p: str | float = 2,
    eps_min: float = 1e-6,
    eps_div: float = 1e-6,
    perturb_func: Callable = uniform_noise,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Relative output stability (Agarwal et al. 2022), one number per example:

      ROS = max_{x'} ||(e_x - e_x') / e_x||_p / max(||h(x) - h(x')||_p, eps_min)

    with ``h = model`` the logits (the plain difference, as in the paper), over copies x' with
    x's predicted class. Arguments as `relative_input_stability`'s, ``model`` required.

    Example:
      >>> sal = xattr.saliency(xattr.target(model, 3))
      >>> ros = xattr.metrics.relative_output_stability(model, sal, x, radius=0.05, n_samples=10, generator=0)  # (B,)
    """
    o = _ord(p, "p")
    _positive(eps_min=eps_min, eps_div=eps_div)
    if not callable(model):
        raise TypeError(f"relative_output_stability needs the model function giving the logits, got {model!r}")

    def score(x0, xs, e0, es, outs0, outs):
        num = _pct_norm(e0, es, o, eps_div)
        den = torch.linalg.vector_norm(outs0[0] - outs[0], ord=o, dim=-1).clamp(min=eps_min)
        return _kept(num / den, outs0, outs, True)

    out = _worst(attr_fn, args, (model,), score, radius, n_samples, perturb_func, argnums, generator, chunk_size,
                 show_progress, "relative output stability")  # fmt: skip
    return _no_copy_left(out, "relative_output_stability")


@new_call_inside_model
def relative_representation_stability(
    model: Callable,
    attr_fn: Callable,
    *args,
    layer,
    radius: float,
    n_samples: int,
    p: str | float = 2,
    eps_min: float = 1e-6,
    eps_div: float = 1e-6,
    perturb_func: Callable = uniform_noise,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Relative representation stability (Agarwal et al. 2022), one number per example:

      RRS = max_{x'} ||(e_x - e_x') / e_x||_p / max(||(L_x - L_x') / L_x||_p, eps_min)

    with ``L`` the output of ``layer`` (a module of ``model``, or a list of them, taken
    together), read through `xattr.at_layer` (its hooks exist only during each call), over
    copies x' with x's predicted class. Arguments as `relative_input_stability`'s, ``model``
    required.

    Example:
      >>> sal = xattr.saliency(xattr.target(model, 3))
      >>> rrs = xattr.metrics.relative_representation_stability(
      ...     model, sal, x, layer=model.conv2, radius=0.05, n_samples=10, generator=0)           # (B,)
    """
    o = _ord(p, "p")
    _positive(eps_min=eps_min, eps_div=eps_div)
    if not callable(model):
        raise TypeError(f"relative_representation_stability needs the model function, got {model!r}")
    act = at_layer(model, layer).act

    def score(x0, xs, e0, es, outs0, outs):
        num = _pct_norm(e0, es, o, eps_div)
        den = _pct_norm(outs0[1], outs[1], o, eps_div).clamp(min=eps_min)
        return _kept(num / den, outs0, outs, True)

    out = _worst(attr_fn, args, (model, act), score, radius, n_samples, perturb_func, argnums, generator,
                 chunk_size, show_progress, "relative representation stability")  # fmt: skip
    return _no_copy_left(out, "relative_representation_stability")


def _worst(attr_fn, args, calls, score, radius, n_samples, perturb_func, argnums, generator, chunk_size,
           show_progress, desc) -> torch.Tensor:  # fmt: skip
    """`worst_over_copies` of ``score`` (-inf where no copy counts), widened to at least float32."""
    _positive(radius=radius)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not callable(attr_fn):
        raise TypeError(f"attr_fn must be an attribution function, got {type(attr_fn).__name__}")
    return worst_over_copies(attr_fn, args, score, n_samples, perturb_func, radius, argnums, generator, chunk_size,
                             calls=calls, show_progress=show_progress, desc=desc)  # fmt: skip


def _safe(v: torch.Tensor, eps_div: float) -> torch.Tensor:
    """v with every magnitude raised to the relative floor (NOTE: [Percent changes of the
    relative stability metrics]); v is (..., Q), the floor per row."""
    floor = eps_div * v.abs().amax(-1, keepdim=True)
    floor = torch.where(floor > 0, floor, torch.full_like(floor, eps_div))
    return torch.where(v < 0, -1.0, 1.0).to(v.dtype) * torch.maximum(v.abs(), floor)


def _pct_norm(v0: torch.Tensor, vs: torch.Tensor, o: float, eps_div: float) -> torch.Tensor:
    """``||(v0 - vs) / v0||_o`` per copy and example: v0 (B, Q), vs (c, B, Q) -> (c, B)."""
    return torch.linalg.vector_norm((v0 - vs) / _safe(v0, eps_div), ord=o, dim=-1)


def _classes(h: torch.Tensor) -> torch.Tensor:
    return (h[..., 0] > 0).long() if h.shape[-1] == 1 else h.argmax(-1)


def _kept(ratio: torch.Tensor, outs0: list, outs: list, constrained: bool) -> torch.Tensor:
    """The ratios of copies that keep x's predicted class (the first call's), -inf for the others."""
    if not constrained:
        return ratio
    same = _classes(outs[0]) == _classes(outs0[0])[None]
    return torch.where(same, ratio, torch.full_like(ratio, -math.inf))


def _no_copy_left(worst: torch.Tensor, name: str) -> torch.Tensor:
    lost = worst == -math.inf
    if lost.any():
        warn(
            f"{name}: for {int(lost.sum())} of {lost.numel()} example(s) no perturbed copy kept the predicted "
            "class, so they have no value (nan): use a smaller radius or more n_samples"
        )
    return torch.where(lost, torch.full_like(worst, math.nan), worst)


def _ord(norm, what: str) -> float:
    names = {"l1": 1.0, "l2": 2.0, "linf": math.inf, "inf": math.inf}
    if isinstance(norm, str) and norm in names:
        return names[norm]
    if isinstance(norm, (int, float)) and not isinstance(norm, bool) and (norm >= 1):
        return float(norm)
    raise ValueError(f"{what} must be 'l1', 'l2', 'linf' or a number >= 1 (math.inf included), got {norm!r}")


def _positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
