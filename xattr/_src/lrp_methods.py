"""Layer-wise relevance propagation: the gradient of the model under LRP rules, times the input.

NOTE: [LRP in gradient form] (lrp_rules.py) explains why this is LRP. The target output's own
value is the relevance it starts with, so ``sum(relevance) ~ f(x)`` (exactly, for epsilon -> 0
on a bias-free ReLU network; z+ on positive networks).

NOTE: [Input-layer relevance]
An input-layer rule (`ZBox`, `WSquare`, `Flat`) hands back its input's relevance itself, not a
gradient to multiply by the input. Where it reads an attributed input directly, the signal that
input receives is therefore relevance along that path and a gradient along every other (a
second input, a skip from the input, a layer without such a rule reading it too), and one
number cannot say which part is which. So `lrp` gives the model, beside each attributed input x
(handed over as a fresh clone, never a view of the caller's tensor), a copy c of equal value,
and each input-layer op that reads x, or data moved from x, is rerouted to read c, or the same
data moved from c (`_InputLayer._reroute`); nothing else sees c. While the model runs, the rules
mode replays each data movement (views, reshape, permute, contiguous, cat, stack, indexing, ...:
`input_copies.MOVES`) that takes x or data moved from x on the copies, and records the pair, so the
input-layer op can find what to read (`input_copies.moved`); in a movement that mixes such data with
other tensors, the replay reads those others detached, so the rules' relevance reaching them
goes nowhere. One backward pass then gives c the relevance of the input-layer rules and x the
gradient of the other paths, and the input's relevance is ``g_c + x * g_x``: the rules' share as
is, the rest in gradient form. An input no such rule reads gets ``x * g_x`` (its g_c is zero).
An input-layer op reading (data moved from) an argument of the call that is not attributed runs
as it is: that argument is a leaf of the call, so its relevance goes nowhere. An input-layer
rule on a layer that reads anything else (a hidden layer, a normalised input) is an error,
since what it returns would travel down the layers below as a gradient. Without input-layer
rules in the composite no copy is made and nothing is tracked.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from . import tree as T
from .backprop_methods import _split_with
from .checks import warn_if_training
from .gradients import attribution_fn, vjp_rows
from .layer_layout import check_merged
from .layer_grads import layer_vjp_rows
from .layers import Split
from .input_copies import INPUT_COPIES, entry
from .lrp_input_rules import ABOVE_SPLIT
from .lrp_rules import lrp_rules
from .rule_limits import differentiable_rules
from .rules import rules


def _input_layer(mapping: Mapping) -> bool:
    return any(getattr(rule, "input_layer", False) for rule in mapping.values())


class _ReadingCopies:
    """``f(*args)`` called as ``g(*args, *copies)``: while f runs, input-layer rules read the copies
    in place of the attributed inputs (NOTE: [Input-layer relevance])."""

    def __init__(self, f: Callable, n_args: int, nums: tuple):
        self.f, self.n_args, self.nums = f, n_args, nums
        self.multi_output = bool(getattr(f, "multi_output", False))

    def __call__(self, *args):
        real, copies = list(args[: self.n_args]), args[self.n_args :]
        # the arguments not attributed stand for themselves: an input-layer op reading one runs as is
        table = {id(t): entry(t, t) for i, a in enumerate(real) if i not in self.nums for t in _tensors(a)}
        for i, c in zip(self.nums, copies):
            # a fresh tensor, not a view of the caller's: views of it can be replayed on the copy
            real[i] = T.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, real[i])
            table.update((id(x), entry(x, y)) for x, y in zip(_tensors(real[i]), _tensors(c)))
        token = INPUT_COPIES.set(table)
        try:
            return self.f(*real)
        finally:
            INPUT_COPIES.reset(token)


def _tensors(tree) -> list:
    return [t for t in T.leaves(tree) if isinstance(t, torch.Tensor)]


def _input_layer_rows(ruled: Callable, args: tuple, nums: tuple, chunk_size):
    """(outputs, gradients of the attributed inputs, relevance the input-layer rules gave them),
    from one forward and backward pass with a copy of each attributed input beside it (NOTE:
    [Input-layer relevance])."""
    n = len(args)
    idx = tuple(i + n if i < 0 else i for i in nums)
    copies = tuple(T.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, args[i]) for i in idx)
    wrt = idx + tuple(range(n, n + len(idx)))
    out, grads = vjp_rows(_ReadingCopies(ruled, n, idx), args + copies, wrt, chunk_size=chunk_size, method="lrp")
    return out, grads[: len(idx)], grads[len(idx) :]


def lrp(
    f: Callable,
    *,
    composite: Mapping | None = None,
    argnums: int | Sequence[int] = 0,
    root: nn.Module | None = None,
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Callable:
    """Layer-wise relevance propagation: each input feature's share of the output ``f(x)``.

    Bach et al. 2015; Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview".
    Rules are chosen per op, module type or module name (`xattr.rules`); the default
    (`xattr.rule.lrp_rules`) is Captum's: epsilon = 1e-9 for every layer. Works with ``F.relu``,
    reused modules and residual networks (sums split relevance in proportion, NOTE: [LRP in
    gradient form]). Conservation ``sum(R) = f(x)`` holds up to what biases and epsilon absorb.

    Args (beyond the shared ones):
      composite: ``{key: rule}`` as for `xattr.rules` (see `xattr.rule.epsilon_gamma_box`,
        `xattr.rule.epsilon_plus`). An input-layer rule (`ZBox`, `WSquare`, `Flat`) must sit on
        a layer reading an argument of the call (or data moved from one: a view, reshape,
        permute, cat, indexing); the relevance it gives is
        returned as is, plus ``x * g`` from any other path (NOTE: [Input-layer relevance]).
      root: the module that names in ``composite`` refer to (found behind f when omitted).
      return_delta: also return ``sum(R) - f(x)`` per example, (B,) or (B, K).

    Returns:
      ``fn(*args)`` with the relevance of ``args[argnums]`` (a K axis for ``xattr.outputs``).

    Example:
      >>> relevance = xattr.lrp(xattr.target(model, 3))(x)
      >>> boxed = xattr.lrp(xattr.target(model, 3), composite=xattr.rule.epsilon_gamma_box("features.0", 0.0, 1.0))(x)
    """
    mapping = lrp_rules() if composite is None else composite
    ruled = rules(f, mapping, root=root)
    input_layer = _input_layer(mapping)
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        # NOTE: [Derivatives of rule-based attributions] in rule_limits.py
        with differentiable_rules("lrp"), T.batch_scope(T.batch_size(selected)):
            if not input_layer:
                out, grads = vjp_rows(ruled, args, nums, chunk_size=chunk_size, method="lrp")
                attr = T.tree_map(lambda g, x: g * T.expand_like(x, g), grads, selected)
            else:  # NOTE: [Input-layer relevance]
                out, grads, given = _input_layer_rows(ruled, args, nums, chunk_size)
                attr = T.tree_map(lambda g, r, x: r + g * T.expand_like(x, g), grads, given, selected)
        result = attr if as_tuple else attr[0]
        return (result, _total(attr, out) - out) if return_delta else result

    return attribution_fn(fn, f)


def _total(attr, out):
    """Each row's attributions summed over features: (B,) or (B, K) like out."""
    k = out.ndim - 1
    return sum(a.reshape(a.shape[: 1 + k] + (-1,)).sum(-1) for a in T.leaves(attr))


def layer_lrp(
    split: Split,
    *,
    composite: Mapping | None = None,
    root: nn.Module | None = None,
    return_delta: bool = False,
) -> Callable:
    """LRP relevance of a layer's activation, ``h * g_h`` under the LRP rules (Captum's LayerLRP).

    Returns:
      ``fn(*args)`` like ``split.act(*args)``, or ``(relevance, delta)`` with ``sum(R) - f(x)``.

    Example:
      >>> r = xattr.layer_lrp(xattr.at_layer(xattr.target(model, 3), model.features[4]))(x)
    """
    mapping = lrp_rules() if composite is None else composite
    ruled = _split_with(split, mapping, root=root)

    def fn(*args):
        warn_if_training(split)
        check_merged(split, args, "layer_lrp")
        token = ABOVE_SPLIT.set(True)
        try:
            with differentiable_rules("layer_lrp"):  # NOTE: [Derivatives of rule-based attributions]
                h, out, g = layer_vjp_rows(ruled, args)
        finally:
            ABOVE_SPLIT.reset(token)
        attr = T.tree_map(lambda gi, hi: gi * T.expand_like(hi, gi), g, h)
        return (attr, _total(attr, out) - out) if return_delta else attr

    return attribution_fn(fn, split)
