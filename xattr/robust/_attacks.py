"""Gradient attacks as pure functions of the model function: `fgsm` and `pgd`.

NOTE: [Attacks as pure functions]
An attack reads the model function and the inputs and returns new inputs; it never mutates
either (no ``requires_grad_`` on the caller's tensors, no ``.grad`` written, no mode changed).
Each step is one forward and one backward pass for the whole batch: the per-example losses
(B,) go through ``xattr.value_and_grad``, whose VJP with a cotangent of ones gives every
example's gradient of its own loss (NOTE: [Per-example gradients of a batch-native model]).
At top level the result is detached; inside a torch.func transform it stays at that
transform's level, so an attack composes with ``torch.func.grad`` over the parameters
(adversarial training) like any other xattr function (NOTE: [Detached results]). There the
gradient goes *through* the attack's steps: a sign step has zero derivative in the parameters,
but a ``direction="l2"`` step does, so the result differs from the gradient at a fixed x_adv,
which ``x_adv.detach()`` gives (docs/robustness.md).

The ball is per attacked tensor and per example: for several attacked tensors each is projected
to its own ball around its original value, as Captum does.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .._src import tree as T
from .._src.checks import is_traced, warn_if_training
from .._src.gradients import detached, value_and_grad
from .._src.nesting import new_call_inside_model, running_model
from .._src.sampling import per_example, streams

_NORMS = ("Linf", "L2")
_DIRECTIONS = ("sign", "l2")


def cross_entropy(outputs: torch.Tensor, target) -> torch.Tensor:
    """The default attack loss: per-example cross-entropy of logits (B, C) against labels (B,).

    Example:
      >>> xattr.robust.cross_entropy(model(x), y)   # (B,) per-example losses
    """
    return F.cross_entropy(_logits(outputs), labels(target, outputs), reduction="none")


def _logits(outputs) -> torch.Tensor:
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(
            f"the default loss (cross-entropy) needs logits of shape (B, C), got {shape}; "
            "pass loss=fn(outputs, target) -> (B,) for other outputs"
        )
    return outputs


def labels(target, outputs: torch.Tensor) -> torch.Tensor:
    """A class index (int or 0-d tensor) or per-example LongTensor (B,) as labels (B,)."""
    b = outputs.shape[0]
    if isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        raise TypeError(f"target must be an int class index or a LongTensor of shape (B,), got {target!r}")
    if isinstance(target, int):
        return torch.full((b,), target, dtype=torch.long, device=outputs.device)
    if target.is_floating_point():
        raise TypeError("a target tensor must hold integer class indices (a LongTensor)")
    if target.ndim == 0:
        return target.to(device=outputs.device, dtype=torch.long).expand(b)
    if target.shape != (b,):
        raise ValueError(f"a per-example target must have shape ({b},), got {tuple(target.shape)}")
    return target.to(device=outputs.device, dtype=torch.long)


class _Setup:
    """One attack call in tensor terms: the attacked leaves, how to rebuild f's arguments, the loss."""

    def __init__(self, f, x, argnums, target, loss, targeted, mask):
        self.is_tuple = isinstance(x, tuple)
        self.args = x if self.is_tuple else (x,)
        self.nums, _ = T.normalize_argnums(argnums)
        selected, self.rebuild_args = T.split_args(self.args, self.nums)
        self.treedef = T.optree.tree_structure(selected, namespace="xattr")
        self.leaves = T.leaves(selected)
        for leaf in self.leaves:
            if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
                raise TypeError(f"attacked inputs must be floating-point tensors, got {_describe(leaf)}")
        self.batch = T.batch_size(selected)
        warn_if_training(f)
        if target is None and loss is None:
            if targeted:
                raise ValueError("a targeted attack needs target= (the class to move towards)")
            with running_model():  # NOTE: [Attributions inside a model's forward] in nesting.py
                target = _logits(f(*self.args)).argmax(1)  # the model's own prediction: move away from it
        self.f, self.target, self.loss = f, target, cross_entropy if loss is None else loss
        self.sign = -1.0 if targeted else 1.0
        self.masks = self._masks(mask)
        self.last_loss = None

    def _masks(self, mask) -> list:
        if mask is None:
            return [None] * len(self.leaves)
        if isinstance(mask, torch.Tensor) and len(self.leaves) == 1:
            masks = [mask]
        else:
            masks = T.leaves(mask)
            if len(masks) != len(self.leaves):
                raise ValueError(f"mask has {len(masks)} tensor(s) but {len(self.leaves)} input tensor(s) are attacked")
        for m, x in zip(masks, self.leaves):
            try:
                shape = torch.broadcast_shapes(m.shape, x.shape)
            except RuntimeError:
                shape = None
            if shape != x.shape:
                raise ValueError(f"a mask of shape {tuple(m.shape)} does not broadcast to the input's {tuple(x.shape)}")
        return [m.to(dtype=x.dtype, device=x.device) for m, x in zip(masks, self.leaves)]

    def objective(self, *selected):
        """Per-example loss (B,) at the attacked inputs ``selected`` (f's other arguments fixed)."""
        self.last_loss = self.loss(self.f(*self.rebuild_args(selected)), self.target)
        return self.last_loss

    def gradients(self, leaves: list) -> list:
        """One forward and one backward pass: each example's gradient of its own loss."""
        selected = T.optree.tree_unflatten(self.treedef, leaves)
        self.last_loss = None
        try:
            _, grads = value_and_grad(self.objective, argnums=tuple(range(len(selected))))(*selected)
        except FloatingPointError as err:  # NOTE: [A non-finite attack loss]
            loss_error = _non_finite_loss(self.last_loss)
            if loss_error is None:
                raise
            raise loss_error from err
        finally:
            self.last_loss = None  # hold no tensor (nor its graph) between steps
        return T.leaves(grads)

    def output(self, leaves: list):
        new = self.rebuild_args(T.optree.tree_unflatten(self.treedef, leaves))
        return new if self.is_tuple else new[0]


def _non_finite_loss(loss) -> FloatingPointError | None:
    """The error for a non-finite attack loss, or None when the loss was finite (or never computed).

    NOTE: [A non-finite attack loss]
    ``value_and_grad`` refuses non-finite values of the function it differentiates, which for an
    attack is the loss, not the model: its message would blame the model and speak of
    attributions. A nan/inf loss (-log of a probability that underflowed to 0, say) gives its
    example no direction, so it stays an error here, named for what it is. Captum's classes
    (``xattr.compat.captum.FGSM`` / ``PGD``) instead follow Captum: an element moves by the sign
    of its gradient only where that exceeds ``zero_thresh``, so an element whose gradient is nan
    stays unchanged (NOTE: [Captum's non-finite losses] in xattr/compat/captum/robust.py).
    """
    if not isinstance(loss, torch.Tensor):
        return None
    bad = int((~torch.isfinite(loss.detach())).sum())
    if not bad:
        return None
    return FloatingPointError(
        f"the attack loss is non-finite (nan/inf) for {bad} of {loss.numel()} value(s) at these inputs, so it "
        "gives no gradient direction there. Check the loss and the model outputs it reads: on probabilities "
        "use log-probabilities (cross-entropy of logits, log_softmax) rather than -log(p), which is inf where "
        "p underflows to 0."
    )


def _describe(leaf) -> str:
    return f"a {leaf.dtype} tensor" if isinstance(leaf, torch.Tensor) else type(leaf).__name__


def _per_example(value, x: torch.Tensor, name: str):
    """A number >= 0, or a tensor (B,) of them, shaped to broadcast against x (a size: a negative
    one would turn the step or ball around, quietly)."""
    if isinstance(value, torch.Tensor):
        if value.ndim not in (0, 1) or (value.ndim == 1 and value.shape != (x.shape[0],)):
            raise ValueError(f"{name} must be a number or a tensor of shape ({x.shape[0]},), got {tuple(value.shape)}")
        if not is_traced(value) and not bool((value >= 0).all()):  # nan compares False too
            raise ValueError(f"{name} must be >= 0 (a size), got {value.tolist()}")
        return value.to(x) if value.ndim == 0 else value.to(x).reshape((-1,) + (1,) * (x.ndim - 1))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor of shape (B,), got {value!r}")
    if not value >= 0:  # nan compares False too
        raise ValueError(f"{name} must be >= 0 (a size; targeted=True attacks towards the target), got {value!r}")
    return float(value)


def _unbounded(lower, upper) -> bool:
    return isinstance(lower, (int, float)) and isinstance(upper, (int, float)) and lower == -math.inf and upper == math.inf


def _clip(lower, upper, bound: Callable | None) -> Callable:
    """The function keeping a perturbed input valid: ``bound`` (the user's), or the clamp to
    [lower, upper] (the identity for an unbounded range); refuses a lower bound above the upper."""
    lo, hi = torch.as_tensor(lower), torch.as_tensor(upper)
    if not (is_traced(lo) or is_traced(hi)) and bool((lo > hi).any()):
        raise ValueError(f"lower_bound must not exceed upper_bound, got lower_bound={lower!r}, upper_bound={upper!r}")
    if bound is None:
        return (lambda x: x) if _unbounded(lower, upper) else (lambda x: torch.clamp(x, min=lower, max=upper))
    if not callable(bound):
        raise TypeError(f"bound must be a function tensor -> tensor, got {type(bound).__name__}")
    if not _unbounded(lower, upper):
        raise ValueError("give bound (a function applied to each perturbed input) or lower_bound/upper_bound, not both")
    return bound


def _direction(g: torch.Tensor, kind: str, zero_threshold: float) -> torch.Tensor:
    """sign(g) (0 where |g| <= zero_threshold), or g / ||g||_2 per example for kind "l2"."""
    if kind == "sign":
        if zero_threshold > 0:
            return torch.where(g.abs() > zero_threshold, g.sign(), torch.zeros_like(g))
        return g.sign()  # torch's sign of NaN is 0: a NaN entry has no direction and stays
    norms = _flat(g).norm(dim=1).reshape((-1,) + (1,) * (g.ndim - 1))
    return torch.where(norms > 0, g / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(g))


def _step(setup: _Setup, leaves: list, size: list, kind: str, zero_threshold: float) -> list:
    grads = setup.gradients(leaves)
    out = []
    for x, g, m, s in zip(leaves, grads, setup.masks, size):
        d = setup.sign * s * _direction(g, kind, zero_threshold)
        out.append(x + (d if m is None else d * m))
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) as (B, d), also for an empty batch (where reshape cannot infer d from -1)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _project(center: torch.Tensor, point: torch.Tensor, radius, norm: str) -> torch.Tensor:
    """The point of the ``norm`` ball of ``radius`` around ``center`` (per example) nearest ``point``."""
    diff = point - center
    if norm == "Linf":
        return center + torch.clamp(diff, -radius, radius)
    norms = _flat(diff).norm(dim=1).reshape((-1,) + (1,) * (diff.ndim - 1))
    return center + diff * torch.where(norms > radius, radius / (norms + 1e-7), torch.ones_like(norms))


def _random_start(x: torch.Tensor, radius, norm: str, mask, stream_z, stream_r) -> torch.Tensor:
    """x plus a point drawn uniformly from the ``norm`` ball of ``radius`` (NOTE: [Explicit randomness])."""
    if norm == "Linf":
        u = per_example(stream_z, torch.empty_like(x), lambda v, g: v.uniform_(0.0, 1.0, generator=g))
        noise = u * radius * 2 - radius
    else:  # a uniform direction, and a radius r * U^(1/d) so that the volume is covered uniformly
        z = per_example(stream_z, torch.empty_like(x), lambda v, g: v.normal_(0.0, 1.0, generator=g))
        u = torch.empty(x.shape[0], device=x.device)  # default dtype, as Captum's torch.rand(B): same global draws
        u = per_example(stream_r, u, lambda v, g: v.uniform_(0.0, 1.0, generator=g))
        flat = _flat(z)
        unit = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(x.shape)
        r = (u.to(x.dtype) ** (1.0 / flat.shape[1])).reshape((-1,) + (1,) * (x.ndim - 1)) * radius
        noise = r * unit
    return x + (noise if mask is None else noise * mask)


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def fgsm(
    f: Callable,
    x,
    *,
    epsilon,
    target=None,
    loss: Callable | None = None,
    targeted: bool = False,
    mask=None,
    lower_bound=-math.inf,
    upper_bound=math.inf,
    argnums: int | Sequence[int] = 0,
    zero_threshold: float = 0.0,
    bound: Callable | None = None,
):
    """Fast gradient sign method: one step of size epsilon along the sign of the loss gradient.

    ``x' = clip(x + s * epsilon * sign(grad_x L(f(x), y)) * mask, lower_bound, upper_bound)``
    with ``s = +1`` (untargeted: increase the loss of the true label ``y``) or ``s = -1``
    (targeted: decrease the loss of the target class). Every coordinate moves by exactly
    epsilon or not at all, so ``x'`` lies in the L-infinity ball of radius epsilon around x.

    Args:
      f: model function returning logits (B, C) (any output, with a custom ``loss``).
      x: the input tensor, or a tuple of f's positional arguments (``f(*x)``) of which
        ``argnums`` picks the attacked ones (tensors or pytrees of tensors).
      epsilon: step size: a number or a tensor (B,) of per-example sizes.
      target: labels (an int or a LongTensor (B,)): the true labels (untargeted) or the classes
        to reach (targeted). None, untargeted with the default loss: the model's prediction at x.
      loss: ``loss(outputs, target) -> (B,)`` per-example loss; default cross-entropy.
      targeted: step down the loss (towards ``target``) instead of up.
      mask: 0/1 tensor broadcastable to the attacked input (a tree like them for several):
        only elements where it is 1 move.
      lower_bound, upper_bound: the valid input range (numbers or broadcastable tensors).
      argnums: which of f's positional arguments are attacked.
      zero_threshold: gradient entries with ``|g| <= zero_threshold`` do not move (Captum: 1e-6);
        NaN entries (a finite loss such as ``-log(p)`` with another probability exactly 0) never
        move, infinite ones move by their sign, as in Captum.
      bound: a function applied to each perturbed input tensor in place of the clamp to
        [lower_bound, upper_bound] (e.g. clamp and quantise to 8-bit levels); Captum's
        overridable ``bound`` attribute. Give it or the bounds, not both.

    Returns:
      Perturbed inputs with x's structure: a tensor for a tensor, the tuple of f's arguments
      (attacked ones replaced) for a tuple. Detached at top level; x and f are never changed.

    Example:
      >>> x_adv = xattr.robust.fgsm(model, x, epsilon=0.03, target=y, lower_bound=0, upper_bound=1)
    """
    with detached():
        setup = _Setup(f, x, argnums, target, loss, targeted, mask)
        with T.batch_scope(setup.batch):
            eps = [_per_example(epsilon, leaf, "epsilon") for leaf in setup.leaves]
            leaves = _step(setup, setup.leaves, eps, "sign", zero_threshold)
            clip = _clip(lower_bound, upper_bound, bound)
            return setup.output([clip(v) for v in leaves])


@new_call_inside_model
def pgd(
    f: Callable,
    x,
    *,
    radius,
    step_size,
    step_num: int,
    norm: str = "Linf",
    random_start: bool = False,
    target=None,
    loss: Callable | None = None,
    targeted: bool = False,
    mask=None,
    lower_bound=-math.inf,
    upper_bound=math.inf,
    argnums: int | Sequence[int] = 0,
    generator=None,
    direction: str = "sign",
    zero_threshold: float = 0.0,
    bound: Callable | None = None,
):
    """Projected gradient descent: ``step_num`` gradient steps, each projected back to the ball.

    ``x_0 = x`` (or, with ``random_start``, ``clip(x + delta * mask)``, delta uniform in the ball),
    ``x_{t+1} = clip(P(x_t + s * step_size * dir(grad L(f(x_t), y)) * mask))`` where P projects
    to the ``norm`` ball of ``radius`` around x, clip to [lower_bound, upper_bound], and
    ``dir`` is the gradient's sign (default, Captum's choice for both norms) or, with
    ``direction="l2"``, the gradient divided by its per-example L2 norm (the usual L2 attack).

    Args:
      f, x, target, loss, targeted, mask, lower_bound, upper_bound, argnums, zero_threshold, bound:
        as in `fgsm` (``bound`` is applied after the random start and after every projected
        step); the target is fixed once (the prediction at x when None).
      radius: radius of the ball (a number or a tensor (B,)).
      step_size: size of each step (a number or a tensor (B,)).
      step_num: number of steps (each one forward and one backward pass of the batch).
      norm: "Linf" (clamp each coordinate) or "L2" (rescale each example's perturbation).
      random_start: start from a uniform random point of the ball.
      generator: int seed, torch.Generator or None for torch's global generator; with a seed an
        example's start does not depend on the batch it is in (NOTE: [Explicit randomness]).
      direction: "sign" or "l2" (see above).

    Example:
      >>> x_adv = xattr.robust.pgd(model, x, radius=0.1, step_size=0.02, step_num=10, target=y)
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    if isinstance(step_num, bool) or not isinstance(step_num, int) or step_num < 0:
        raise ValueError(f"step_num must be a non-negative int, got {step_num!r}")
    clip = _clip(lower_bound, upper_bound, bound)
    with detached():
        setup = _Setup(f, x, argnums, target, loss, targeted, mask)
        with T.batch_scope(setup.batch):
            centers = setup.leaves
            radii = [_per_example(radius, c, "radius") for c in centers]
            sizes = [_per_example(step_size, c, "step_size") for c in centers]
            leaves = list(centers)
            if random_start:
                seeds = streams(generator, 2 * len(centers))
                leaves = [
                    clip(_random_start(c, r, norm, m, seeds[2 * i], seeds[2 * i + 1]))
                    for i, (c, r, m) in enumerate(zip(centers, radii, setup.masks))
                ]
            for _ in range(step_num):
                leaves = _step(setup, leaves, sizes, direction, zero_threshold)
                leaves = [
                    clip(_project(c, v, r, norm)) for c, v, r in zip(centers, leaves, radii)
                ]
            return setup.output(leaves)
