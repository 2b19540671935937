"""Layer-wise relevance propagation: the gradient of the model under LRP rules, times the input.

NOTE: [LRP in gradient form] (lrp_rules.py) explains why this is LRP. The target output's own
value is the relevance it starts with, so ``sum(relevance) ~ f(x)`` (exactly, for epsilon -> 0
on a bias-free ReLU network; z+ on positive networks).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from torch import nn

from . import tree as T
from .backprop_methods import _split_with
from .checks import warn_if_training
from .gradients import attribution_fn, vjp_rows
from .layers import Split, layer_vjp_rows
from .lrp_rules import ABOVE_SPLIT, lrp_rules
from .rules import rules


def _input_layer(mapping: Mapping) -> bool:
    return any(getattr(rule, "input_layer", False) for rule in mapping.values())


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
        `xattr.rule.epsilon_plus`). With an input-layer rule (`ZBox`, `WSquare`, `Flat`), which
        must sit on the layers reading the attributed inputs, its relevance is returned as is.
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
    as_relevance = _input_layer(mapping)
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        with T.batch_scope(T.batch_size(selected)):
            out, grads = vjp_rows(ruled, args, nums, chunk_size=chunk_size, method="lrp")
        attr = grads if as_relevance else T.tree_map(lambda g, x: g * T.expand_like(x, g), grads, selected)
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
        token = ABOVE_SPLIT.set(True)
        try:
            h, out, g = layer_vjp_rows(ruled, args)
        finally:
            ABOVE_SPLIT.reset(token)
        attr = T.tree_map(lambda gi, hi: gi * T.expand_like(hi, gi), g, h)
        return (attr, _total(attr, out) - out) if return_delta else attr

    return attribution_fn(fn, split)
