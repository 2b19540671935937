"""DeepLift and DeepLift SHAP, and their layer variants (guided backprop and deconvolution:
guided_methods.py).

Each is a gradient of the model under `rules` (NOTE: [Intercepting operations]), so it works
with ``F.relu``, in-place and reused ReLUs, and composes with ``at_layer`` and ``neuron``:

    xattr.deep_lift(xattr.neuron(split, idx), baselines=b)     # Captum's NeuronDeepLift

Shared arguments: ``f``, ``argnums`` and ``chunk_size`` as in methods.py. DeepLift runs each
example and its reference in one call (NOTE: [Paired rows]): 2B rows, or B + 1 (NOTE: [Shared
reference]), and more where a sequence-first tensor could hold them in two dims (NOTE: [Rows in
dim 0 or dim 1]).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from . import pointwise
from . import tree as T
from .checks import baselines_tuple, is_traced, warn_if_training
from .deeplift_check import warn_if_off
from .deeplift_moe import dense_experts
from .deeplift_products import Product
from .deeplift_rules import Rescale
from .deeplift_softmax import ExactSoftmax
from .gradients import attribution_fn, is_multi_output, vjp_rows
from .layer_layout import check_merged
from .layer_grads import layer_vjp_rows
from .layers import Split
from .merged_rows import unshared_if_merged
from .methods import _gap
from .rule_limits import differentiable_rules
from .row_layout import rows_dim, rows_scope, unambiguous
from .rule_table import merged
from .rules import rules
from .sampling import distribution
from .unfused import Unfused

RESCALED = (F.relu, F.elu, F.leaky_relu, torch.sigmoid, torch.tanh, F.softplus, F.gelu, F.silu, F.hardswish, F.hardsigmoid,
            F.relu6, F.hardtanh, F.mish, F.selu, F.celu, F.softsign, F.logsigmoid, F.threshold, torch.clamp, F.max_pool2d,
            F.softmax, torch.amax) + pointwise.KEYS  # exp, log, sqrt, pow... (NOTE: [Elementwise functions of one input])
RESCALED += (torch.atan2, torch.logaddexp, torch.logaddexp2, torch.xlogy, torch.copysign, torch.hypot)  # torch.pow too
RESCALED += (torch.sort,)  # order statistics (NOTE: [DeepLift at order statistics]); torch.clamp keys "maximum" too


def deep_lift_rules(eps: float = 1e-10) -> dict:
    """DeepLift's mapping: the Rescale rule for every elementwise nonlinearity and elementwise
    function of one input (exp, log, sqrt, abs, pow with a number exponent, ``c / x``, ``c **
    x``...) or of two (``a ** b``, atan2, logaddexp, logaddexp2, xlogy, copysign, hypot, the
    maximum or minimum of two activations: NOTE: [DeepLift at two inputs], [Maximum of two
    activations]), max-pool, max and min along dims (``x.max(dim)``, ``torch.amax``: NOTE: [Max
    along a dim]), order statistics along a dim (sort, topk, kthvalue, median: NOTE: [DeepLift at
    order statistics]) and softmax, `Product` for products of two activations, elementwise, matrix or
    einsum, their quotients, einsum of more operands and cumprod (NOTE: [DeepLift at a
    product], [Quotients of two activations], [DeepLift at a multilinear op]), `ExactSoftmax` at
    log_softmax and logsumexp (NOTE: [DeepLift through log_softmax], [DeepLift through logsumexp]:
    the LSE pools of `xattr.softened` among them), and `Unfused` at ``F.glu`` (``nn.GLU``),
    which then runs as ``a * torch.sigmoid(b)``, at ``torch.baddbmm`` of two activations, which
    runs as ``alpha * torch.bmm(a, b) + beta * t``, and at ``torch.lstm`` (every recurrent op:
    ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells), which then run step by step with their
    gates as products (NOTE: [Recurrent layers written out]).

    Example:
      >>> attr = xattr.deep_lift(xattr.target(model, 3), mapping=xattr.rule.deep_lift_rules(1e-6))(x)  # like x
    """
    rule, product, written, exact = Rescale(eps), Product(), Unfused(), ExactSoftmax(eps)
    return {**{op: rule for op in RESCALED}, torch.mul: product, torch.matmul: product, torch.einsum: product,
            torch.div: product, torch.cumprod: product, F.log_softmax: exact, torch.logsumexp: exact, F.glu: written,
            torch.baddbmm: written, torch.lstm: written}


def _multipliers(ruled: Callable, args: tuple, nums: tuple, base_rows, copies: int, chunk_size, *, shared: bool = False):
    """`_pair_calls`, shared where it can be: a model that merges the rows with another dim runs
    unshared (NOTE: [Rows merged with another dim] in merged_rows.py)."""
    run = lambda shared: _pair_calls(ruled, args, nums, base_rows, copies, chunk_size, shared=shared)  # noqa: E731
    with dense_experts(ruled):  # NOTE: [Experts dispatched densely] in deeplift_moe.py
        return unshared_if_merged(run, ruled, shared)


def _pair_calls(ruled: Callable, args: tuple, nums: tuple, base_rows, copies: int, chunk_size, *, shared: bool = False):
    """DeepLift multipliers at ``copies`` copies of the inputs against ``base_rows`` (copies*B rows).

    Returns (outputs at the inputs, outputs at the references, multipliers tree), all copy-major
    with copies*B rows. Each call holds whole pairs of copies (NOTE: [Paired rows]); with
    ``shared`` (`_can_share`; every copy's B reference rows are one row repeated), a call of c
    copies holds their c*B input rows and one reference row per copy (NOTE: [Shared reference]).
    A call with a tensor whose rows could sit in dim 0 or dim 1 runs again with its copies
    repeated (NOTE: [Rows in dim 0 or dim 1]).
    """
    selected = T.split_args(args, nums)[0]
    batch = T.batch_size(selected)
    device = T.leaves(selected)[0].device
    ends, refs, grads = [], [], []
    for s, e in T.chunks(copies, batch + 1 if shared else 2 * batch, chunk_size):
        c, rows = e - s, (e - s) * batch

        def call(k, notes, s=s, e=e, c=c, rows=rows):  # the chunk's c copies, repeated k times
            xs = T.fold(selected, c * k)
            if shared:
                bs = T.tree_map(lambda b: _tiled(b[s * batch : e * batch : batch], k), base_rows)  # each copy's row
                rows_args = T.split_args(args, nums)[1](T.tree_map(lambda x, b: torch.cat([x, b.to(x.dtype)]), xs, bs))
                with rows_scope(k * (rows + c), reference_grads=False, shared=c * k, notes=notes):
                    out, g = vjp_rows(_ExpandShared(ruled), rows_args, nums, weights=_first_half(k * rows, device),
                                      method="deep_lift")
            else:
                bs = T.tree_map(lambda b: _tiled(b[s * batch : e * batch], k), base_rows)
                both = T.tree_map(lambda x, b: torch.cat([x, b.to(x.dtype)]), xs, bs)
                folded = tuple(a if i in nums else T.fold(a, 2 * c * k, batch) for i, a in enumerate(args))
                with rows_scope(2 * k * rows, reference_grads=False, notes=notes):
                    out, g = vjp_rows(ruled, T.split_args(folded, nums)[1](both), nums, weights=_first_half(k * rows, device),
                                      method="deep_lift")
            return out[:rows], out[k * rows : (k + 1) * rows], T.tree_map(lambda t: t[:rows], g)

        end, ref, g = unambiguous(call, rows + c if shared else 2 * rows)
        ends.append(end)
        refs.append(ref)
        grads.append(g)
    if len(ends) == 1:  # one call: no copies
        return ends[0], refs[0], grads[0]
    cat = lambda *ts: torch.cat(ts)  # noqa: E731
    return torch.cat(ends), torch.cat(refs), T.tree_map(cat, *grads)


def _tiled(t: torch.Tensor, k: int) -> torch.Tensor:
    """t's rows repeated k times (copy-major): the copies of a retried call."""
    return t if k == 1 else t.repeat((k,) + (1,) * (t.ndim - 1))


class _ExpandShared:
    """``f`` whose outputs of c*B + c rows come back as 2*c*B (`tree.expand_shared`): each shared
    reference row's outputs once per input row of its copy (NOTE: [Shared reference])."""

    def __init__(self, f: Callable):
        self.f, self.multi_output = f, is_multi_output(f)

    def __call__(self, *args):
        return T.expand_shared(self.f(*args))


def _can_share(mapping: Mapping, args: tuple, nums: tuple) -> bool:
    """Whether DeepLift may run one reference row per copy of the batch (NOTE: [Shared
    reference]) where each copy's reference is one row: more than one example, no per-example
    argument beside the inputs (its value at a shared row would be undefined), and every rule
    declaring that it pairs rows so."""
    batch = T.batch_size(T.split_args(args, nums)[0])
    if batch < 2 or not all(r.shares_reference for r in mapping.values()):
        return False
    others = [a for i, a in enumerate(args) if i not in nums]
    return not any(isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == batch for t in T.leaves(others))


def _shares_reference(mapping: Mapping, args: tuple, nums: tuple, base) -> bool:
    """`_can_share`, and every baseline one row for the whole batch: a number, a tensor without a
    batch of its own, or a batch of equal rows (Captum's ``baselines=torch.zeros_like(x)``; one
    comparison, which on a GPU waits for the device, and only outside torch.func transforms,
    where a value cannot steer the computation)."""
    leaves = T.leaves(base)
    if any(b.ndim == 0 for b in leaves) or not _can_share(mapping, args, nums):
        return False
    return all(b.stride(0) == 0 or (not is_traced(b) and torch.equal(b, b[:1].expand_as(b))) for b in leaves)


def _first_half(rows: int, device) -> torch.Tensor:
    """Cotangent weights seeding the input half of 2 * rows paired rows."""
    return torch.cat([torch.ones(rows, device=device), torch.zeros(rows, device=device)])


def _combine(grads, xs, bs, multiply_by_inputs: bool, attribution_func, as_tuple: bool = True):
    if attribution_func is not None:  # it sees (and returns) trees like args[argnums]
        if as_tuple:
            return attribution_func(grads, xs, bs)
        return (attribution_func(grads[0], xs[0], bs[0]),)
    if not multiply_by_inputs:
        return grads
    return T.tree_map(lambda g, x, b: g * T.expand_like(x - b, g), grads, xs, bs)


def _broadcast_baselines(selected: tuple, baselines, as_tuple: bool) -> tuple:
    """The baselines as a tuple of trees like ``selected``, each leaf broadcast to its input's shape.

    For an int ``argnums`` the baselines are a tree like ``args[argnums]`` (not wrapped in a tuple).
    A number becomes one element expanded (no storage per example: NOTE: [Shared reference]).
    """
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return T.tree_map(lambda x: torch.full((), float(baselines), dtype=x.dtype, device=x.device).expand(x.shape), selected)
    return T.tree_map(lambda x, b: torch.broadcast_to(b, x.shape), selected, baselines_tuple(selected, baselines, as_tuple))


def deep_lift(
    f: Callable,
    *,
    baselines: Any = 0.0,
    argnums: int | Sequence[int] = 0,
    multiply_by_inputs: bool = True,
    attribution_func: Callable | None = None,
    eps: float = 1e-10,
    mapping: Mapping | None = None,
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Callable:
    """DeepLift with the Rescale rule: ``(x - b) * m``, m the multipliers of a modified backward pass.

    Shrikumar et al. 2017, "Learning Important Features Through Propagating Activation
    Differences". Each elementwise nonlinearity (ReLU, ELU, LeakyReLU, sigmoid, tanh, softplus,
    GELU, SiLU; also exp, log, sqrt, abs, ``x ** p`` and the other elementwise functions of
    docs/rules.md) passes ``g * (y - y_ref) / (x - x_ref)`` back instead of ``g * phi'(x)``; max-pool
    and softmax have their own rules (`xattr.rule.Rescale`), and so do products of two
    activations, ``a * b``, ``a @ b`` and ``torch.einsum`` (`xattr.rule.Product`: each factor's
    multiplier is the other averaged over the example and its reference), their quotients ``a /
    b``, and log_softmax and logsumexp (`xattr.rule.ExactSoftmax`: the LSE pools of
    `xattr.softened` too). Summation-to-delta holds exactly for networks of affine maps,
    elementwise nonlinearities, max-pools, log_softmax, logsumexp and such products:
    ``sum(attributions) = f(x) - f(b)`` (tested; softmax inside the model breaks it, unless
    ``mapping={F.softmax: xattr.rule.ExactSoftmax()}``).

    Args (beyond the shared ones):
      baselines: the reference: number, tensor broadcastable to the input, or tree like it;
        also a call keyword.
      multiply_by_inputs: False returns the multipliers m alone.
      attribution_func: ``(multipliers, inputs, baselines) -> attributions`` replacing the
        product (trees like ``args[argnums]``; Captum's ``custom_attribution_func``).
      eps: below this ``|x - x_ref|`` the ordinary derivative is used.
      mapping: rules added to (or replacing) the defaults, as for `xattr.rules`; a torch-function
        key replaces the default of its kind however it is spelled (``{torch.relu: rule}``
        replaces the Rescale rule that DeepLift keys by ``F.relu``).
      return_delta: also return ``sum(attributions) - (f(x) - f(b))`` per example, (B,) or (B, K).

    Example:
      >>> attr, delta = xattr.deep_lift(xattr.target(model, 3), baselines=0.0, return_delta=True)(x)
    """
    ruled = rules(f, merged(deep_lift_rules(eps), mapping))
    nums, as_tuple = T.normalize_argnums(argnums)
    unchecked = [True]  # emptied by the first call's summation check

    def fn(*args, baselines=baselines):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        # NOTE: [Derivatives of rule-based attributions] in rule_limits.py
        with differentiable_rules("deep_lift"), T.batch_scope(T.batch_size(selected)):
            base = _broadcast_baselines(selected, baselines, as_tuple)
            shared = _shares_reference(ruled.mapping, args, nums, base)
            end, ref, m = _multipliers(ruled, args, nums, base, 1, chunk_size, shared=shared)
        attr = _combine(m, selected, base, multiply_by_inputs, attribution_func, as_tuple)
        out = attr if as_tuple else attr[0]
        checked = unchecked and multiply_by_inputs and attribution_func is None
        gap = _gap(attr, end, ref) if return_delta or checked else None
        if checked and warn_if_off(attr, gap):  # NOTE: [Summation-to-delta checked once] in deeplift_check.py
            unchecked.clear()
        return (out, gap) if return_delta else out

    wrapped = attribution_fn(fn, f)
    wrapped.sum_unchecked = unchecked  # cleared by a caller that has checked already (compat's DeepLift)
    return wrapped


def _distribution(selected, baselines, as_tuple: bool, method: str):
    """The baseline distribution as a tree like ``selected`` of (N, ...) tensors, and N; numbers
    are one-row distributions, whole or at a leaf (NOTE: [Baseline distributions] in sampling.py).
    Rows take their input's dtype and device, as `deep_lift`'s baselines do, so the attributions
    keep the inputs' dtype whatever the distribution's."""
    dist, n = distribution(selected, baselines, as_tuple, method=method, like_inputs=False)
    for x, b in zip(T.leaves(selected), T.leaves(dist)):
        if tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"baselines rows of shape {tuple(b.shape[1:])} do not match inputs {tuple(x.shape[1:])}")
    return T.tree_map(lambda x, b: b.to(dtype=x.dtype, device=x.device), selected, dist), n


def deep_lift_shap(
    f: Callable,
    *,
    baselines: Any,
    argnums: int | Sequence[int] = 0,
    multiply_by_inputs: bool = True,
    attribution_func: Callable | None = None,
    eps: float = 1e-10,
    mapping: Mapping | None = None,
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Callable:
    """DeepLift SHAP: DeepLift averaged over a baseline distribution (Lundberg & Lee 2017).

    Every example is compared with every one of the N baseline rows in batched calls (pairs of
    copies, ``chunk_size`` bounding the rows per call) and the N attributions are averaged.

    Args (beyond those of `deep_lift`):
      baselines: the distribution, a tensor (N, ...) or a tree of them sharing N.
      return_delta: also return the gap of each (example, baseline) pair, shape (B, N) or
        (B, N, K).

    Example:
      >>> attr = xattr.deep_lift_shap(xattr.target(model, 3), baselines=x_train[:20])(x)
    """
    ruled = rules(f, merged(deep_lift_rules(eps), mapping))
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        batch = T.batch_size(selected)
        dist, n = _distribution(selected, baselines, as_tuple, "deep_lift_shap")
        base = T.tree_map(lambda b: b.repeat_interleave(batch, 0), dist)  # copy k is baseline row k
        with differentiable_rules("deep_lift_shap"), T.batch_scope(batch):
            end, ref, m = _multipliers(ruled, args, nums, base, n, chunk_size, shared=_can_share(ruled.mapping, args, nums))
        xs = T.fold(selected, n)
        attr = _combine(m, xs, base, multiply_by_inputs, attribution_func, as_tuple)
        mean = T.tree_map(lambda a: T.unfold(a, n).mean(0), attr)
        out = mean if as_tuple else mean[0]
        if not return_delta:
            return out
        gap = _gap(attr, end, ref)
        return out, gap.reshape((n, batch) + tuple(gap.shape[1:])).movedim(0, 1)

    return attribution_fn(fn, f)


def _split_with(split: Split, mapping: Mapping, root=None) -> Split:
    """The same split of ``rules(split.model, mapping)``."""
    layers = split.modules if split.many else split.modules[0]
    return Split(rules(split.model, mapping, root=root), layers, split.inputs, split.call_index, split.batch_dim)


def _layer_pairs(split: Split, args: tuple, nums: tuple, base_rows, copies: int, *, shared: bool = False):
    """`_layer_pair_calls`, shared where it can be (as `_multipliers`)."""
    with dense_experts(split.model):  # NOTE: [Experts dispatched densely] in deeplift_moe.py
        return unshared_if_merged(lambda shared: _layer_pair_calls(split, args, nums, base_rows, copies, shared=shared), split.model, shared)


def _layer_pair_calls(split: Split, args: tuple, nums: tuple, base_rows, copies: int, *, shared: bool = False):
    """(h, h_ref, multipliers at h, outputs, reference outputs) for copies x B paired rows, or
    with ``shared`` for their inputs and one reference row per copy (NOTE: [Shared reference]):
    h_ref is then each copy's row repeated over its batch (an expanded view for one copy). Run
    again with the copies repeated where a tensor is ambiguous (NOTE: [Rows in dim 0 or dim 1])."""
    selected = T.split_args(args, nums)[0]
    batch = T.batch_size(selected)
    rows = copies * batch
    weights = lambda k: _first_half(k * rows, out_device(selected))  # noqa: E731

    def call(k, notes):
        xs = T.fold(selected, copies * k)
        if shared:
            bs = T.tree_map(lambda b: _tiled(b[::batch], k), base_rows)  # each copy's row
            both = T.tree_map(lambda x, b: torch.cat([x, b.to(x.dtype)]), xs, bs)
            with rows_scope(k * (rows + copies), reference_grads=False, shared=copies * k, notes=notes):
                h, out, g = layer_vjp_rows(split, T.split_args(args, nums)[1](both), weights=weights(k))
                _check_layer_rows(h)
            head = lambda t: t[:rows]  # noqa: E731
            ref = lambda t: T.repeat_references(t[k * rows : k * rows + copies], rows, copies)  # noqa: E731
            return T.tree_map(head, h), T.tree_map(ref, h), T.tree_map(head, g), out[:rows], out[k * rows : (k + 1) * rows]
        both = T.tree_map(lambda x, b: torch.cat([x, b.to(x.dtype)]), xs, T.tree_map(lambda b: _tiled(b, k), base_rows))
        folded = tuple(a if i in nums else T.fold(a, 2 * copies * k, batch) for i, a in enumerate(args))
        with rows_scope(2 * k * rows, reference_grads=False, notes=notes):
            h, out, g = layer_vjp_rows(split, T.split_args(folded, nums)[1](both), weights=weights(k))
            _check_layer_rows(h)
        top, bottom = (lambda t: t[:rows]), (lambda t: t[k * rows : (k + 1) * rows])  # noqa: E731
        return T.tree_map(top, h), T.tree_map(bottom, h), T.tree_map(top, g), out[:rows], out[k * rows : (k + 1) * rows]

    return unambiguous(call, rows + copies if shared else 2 * rows)


def _check_layer_rows(h) -> None:
    """Refuses a layer activation without the call's rows in dim 0 (a sequence-first layer's
    ``(L, B, D)``), whose rows would be read from the wrong dim; one that could hold them in dim 0
    or dim 1 retries the call (NOTE: [Rows in dim 0 or dim 1])."""
    for t in T.leaves(h):
        if rows_dim(t) != 0:
            raise ValueError(
                f"layer DeepLift: the layer's activation of shape {tuple(t.shape)} does not hold the call's rows "
                "(inputs and references) in dim 0; attribute at a batch-first layer (a sequence-first layer's output is "
                "(L, B, ...): say so with xattr.at_layer(..., batch_dim=1), or use batch_first=True; a layer on rows merged "
                "with another dim, (B * L, ...) as OPT's MLP, or joined with another batch, torch.cat([h1, h2]): attribute "
                "before the merge or after it is undone)"
            )


def out_device(selected):
    return T.leaves(selected)[0].device


def _layer_gaps(split: Split, attr, end, ref):
    """Summation-to-delta gap: (B,), or a tuple with one per layer for a split at several layers."""
    if split.many:
        return tuple(_gap(T.leaves(a), end, ref) for a in attr)
    return _gap(T.leaves(attr), end, ref)


def layer_deep_lift(
    split: Split,
    *,
    baselines: Any = 0.0,
    argnums: int | Sequence[int] = 0,
    multiply_by_inputs: bool = True,
    attribution_func: Callable | None = None,
    eps: float = 1e-10,
    mapping: Mapping | None = None,
    return_delta: bool = False,
) -> Callable:
    """DeepLift at a layer: ``(h - h_ref) * m_h``, h the activation at the input and reference.

    ``baselines`` replace ``args[argnums]`` in input space (Captum's LayerDeepLift); m_h are the
    DeepLift multipliers of the output with respect to h. Summation-to-delta holds when every
    path from the input to the output crosses the layer.

    Returns:
      ``fn(*args)`` like ``split.act(*args)``, or ``(attributions, delta)`` with delta (B,) (a
      tuple of them, one per layer, for a split at several layers).

    Example:
      >>> attr = xattr.layer_deep_lift(xattr.at_layer(xattr.target(model, 3), model.conv2))(x)
    """
    ruled = _split_with(split, merged(deep_lift_rules(eps), mapping))
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines):
        warn_if_training(split)
        check_merged(split, args, "layer_deep_lift")
        selected = T.split_args(args, nums)[0]
        with differentiable_rules("layer_deep_lift"), T.batch_scope(T.batch_size(selected)):
            base = _broadcast_baselines(selected, baselines, as_tuple)
            shared = _shares_reference(ruled.model.mapping, args, nums, base)
            h, h_ref, m, end, ref = _layer_pairs(ruled, args, nums, base, 1, shared=shared)
        attr = _combine(m, h, h_ref, multiply_by_inputs, attribution_func)
        return (attr, _layer_gaps(split, attr, end, ref)) if return_delta else attr

    return attribution_fn(fn, split)


def layer_deep_lift_shap(
    split: Split,
    *,
    baselines: Any,
    argnums: int | Sequence[int] = 0,
    multiply_by_inputs: bool = True,
    attribution_func: Callable | None = None,
    eps: float = 1e-10,
    mapping: Mapping | None = None,
    return_delta: bool = False,
) -> Callable:
    """`layer_deep_lift` averaged over a baseline distribution (N, ...) in input space.

    Returns:
      ``fn(*args)`` like ``split.act(*args)``, or ``(attributions, delta)`` with delta (B, N)
      (a tuple with one per layer for a split at several layers).

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> attr = xattr.layer_deep_lift_shap(split, baselines=x_train[:20])(x)
    """
    ruled = _split_with(split, merged(deep_lift_rules(eps), mapping))
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines):
        warn_if_training(split)
        check_merged(split, args, "layer_deep_lift_shap")
        selected = T.split_args(args, nums)[0]
        batch = T.batch_size(selected)
        dist, n = _distribution(selected, baselines, as_tuple, "layer_deep_lift_shap")
        base = T.tree_map(lambda b: b.repeat_interleave(batch, 0), dist)
        with differentiable_rules("layer_deep_lift_shap"), T.batch_scope(batch):
            h, h_ref, m, end, ref = _layer_pairs(ruled, args, nums, base, n, shared=_can_share(ruled.model.mapping, args, nums))
        attr = _combine(m, h, h_ref, multiply_by_inputs, attribution_func)
        mean = T.tree_map(lambda a: T.unfold(a, n).mean(0), attr)
        if not return_delta:
            return mean

        def per_pair(a):  # (N * B,) baseline-major -> (B, N)
            gap = _gap(T.leaves(a), end, ref)
            return gap.reshape((n, batch) + tuple(gap.shape[1:])).movedim(0, 1)

        return mean, (tuple(per_pair(a) for a in attr) if split.many else per_pair(attr))

    return attribution_fn(fn, split)
