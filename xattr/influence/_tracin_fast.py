"""TracIn on the last fully-connected layer, factorised; and its random projection.

NOTE: [TracIn on the last layer, factorised]
For a linear layer ``y = W a + b`` seen once per example, the loss gradient w.r.t. W of one
example is the outer product ``g a^T`` of the gradient ``g = dL/dy`` at the layer's output and
the layer's input ``a``, and the gradient w.r.t. b is ``g``. So the dot product of two examples'
gradients factorises,

    <g_i a_i^T, g_j a_j^T> + <g_i, g_j> = <g_i, g_j> (<a_i, a_j> + 1),

and TracIn restricted to the layer needs only ``a`` and ``g`` per example (d_in + d_out numbers,
not d_in * d_out): two small matmuls per batch and their elementwise product. ``include_bias``
keeps the ``+ 1`` (the bias as a constant-1 input) when the layer has a bias; Captum's
``TracInCPFast`` leaves it out (its scores cover W only), which ``include_bias=False`` matches.
``g`` is the gradient at the layer's output (an added zero that the layer's forward hook puts
on its output, differentiated by ``vmap(grad)``); ``a`` is what that hook saw as its input.
The hook lives inside one call. Captum differentiates at the model's output instead, the same
thing when the layer is the model's last module.

NOTE: [Random projections of the factors]
``tracin_fast_projected`` (Captum's ``TracInCPFastRandProj``) maps ``g`` by a Gaussian matrix
``P_g`` (d_out x k_g) and ``a`` by ``P_a`` (d_a x k_a), with ``k = isqrt(projection_dim)``
capped at each dim and entries of variance 1/k, so that ``E[P P^T] = I`` and each projected dot
product is an unbiased estimate of the exact one, with relative spread O(1/sqrt(k)). An example's
features are ``sqrt(eta_c) vec((P_g^T g)(P_a^T a)^T)`` concatenated over checkpoints (k_g k_a
numbers per checkpoint), whose dot products are the projected scores; `tracin_fast_projected`
computes the same numbers (to rounding) from the projected factors, as `tracin_fast` does from
the exact ones: ``sum_c eta_c (P_g^T g_i . P_g^T g_j)(P_a^T a_i . P_a^T a_j)``, which allows
negative learning rates too. When
``d_out * d_a <= projection_dim`` (or ``projection_dim=None``) nothing is projected and the
scores are exact. The matrices are drawn once, ``P_g`` first, from ``generator``; with the same
integer seed and ``include_bias=False`` they are Captum's (which seeds torch's global generator).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .._src.progress import progress
from .._src.sampling import torch_generator
from ._by_checkpoint import by_checkpoint, checkpoints_per_call, groups, weighted_sum
from ._layers import module_paths, resolve_layer
from ._per_example import positive_int, summed_loss
from ._tracin import _check_common, batches, checkpoint_states


def _fc_layer(model: nn.Module, layer) -> tuple[str, nn.Linear]:
    name, module = resolve_layer(model, layer, module_paths(model))
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"the fast TracIn needs an nn.Linear layer (the last fully-connected one), got {type(module).__name__}; "
            "use tracin(..., layers=[layer]) for any other layer"
        )
    return name, module


def layer_factors(model, state, layer: nn.Linear, loss_fn, batch, *, include_bias=True, chunk_size=None):
    """``(a, g)``, each ``(b, ·)``: the input of the linear ``layer`` (with a column of ones when
    ``include_bias`` and the layer has a bias) and the loss gradient at its output, per example
    of ``batch``, at the parameter values ``state``. See NOTE: [TracIn on the last layer, factorised]."""
    path = next(n for n, m in model.named_modules() if m is layer)
    w = state[f"{path}.weight" if path else "weight"]
    zero = torch.zeros(1, layer.out_features, dtype=w.dtype, device=w.device)

    def one(d, inputs, label):
        seen = []

        def hook(module, args, out):
            seen.append(args[0] if args else None)
            return out + d

        handle = layer.register_forward_hook(hook)
        try:
            out = functional_call(model, state, tuple(x.unsqueeze(0) for x in inputs))
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ValueError(f"the layer must run exactly once per forward pass, it ran {len(seen)} times")
        a = seen[0]
        if not isinstance(a, torch.Tensor) or a.shape != (1, layer.in_features):
            got = tuple(a.shape[1:]) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"the fast TracIn needs a layer input of one vector per example ({layer.in_features},), got {got}; "
                "use tracin(..., layers=[layer]) for a layer applied over a sequence or image"
            )
        return summed_loss(loss_fn, out, label.unsqueeze(0), None), a[0]

    *inputs, labels = batch
    g, a = vmap(grad(one, has_aux=True), in_dims=(None, 0, 0), chunk_size=chunk_size)(zero, tuple(inputs), labels)
    g = g.reshape(g.shape[0], -1)
    if include_bias and layer.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
    return a.detach(), g.detach()


def _stacked_factors(model, group, layer, loss_fn, bs, include_bias, chunk_size):
    """``(a, g)``, each ``(k, n, ·)``: `layer_factors` at each of the k states of ``group``
    for the examples of all the batches ``bs``. NOTE: [Checkpoints in one vectorised call] in
    _by_checkpoint.py."""
    parts = [by_checkpoint(lambda s: layer_factors(model, s, layer, loss_fn, b, include_bias=include_bias, chunk_size=chunk_size), group)
             for b in bs]  # fmt: skip
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


def all_factors(model, states, layer, loss_fn, bs, include_bias, chunk_size, batch_size, bar=None):
    """``(a, g)``, each ``(C, n, ·)``: the factors at each of the C ``states`` (``[(state,
    lr), ...]``) for all the examples of ``bs``, checkpoints grouped as in `tracin_fast`."""
    rows = sum(len(b[0]) for b in bs)
    parts = []
    for group, _ in groups(states, checkpoints_per_call(len(states), rows, batch_size, chunk_size)):
        parts.append(_stacked_factors(model, group, layer, loss_fn, bs, include_bias, chunk_size))
        if bar is not None:
            bar.update(len(group))
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fast_scores(rates: list, a_test, g_test, a, g) -> torch.Tensor:
    """``sum_c rates[c] (g_test[c] g[c]^T) * (a_test[c] a[c]^T)`` of ``(C, ·, ·)`` factor
    stacks: the score columns of the training examples of ``a`` and ``g`` (one ``bmm`` each: small)."""
    return weighted_sum(rates, torch.bmm(g_test, g.transpose(1, 2)) * torch.bmm(a_test, a.transpose(1, 2)))


def tracin_fast(
    model: nn.Module,
    layer,
    checkpoints,
    loss_fn: Callable | None,
    train,
    test,
    *,
    test_loss_fn: Callable | None = None,
    learning_rates=None,
    include_bias: bool = True,
    batch_size: int | None = 4096,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """TracIn restricted to the parameters of one ``nn.Linear`` layer (module or name), without
    forming any per-example weight gradient: ``(n_test, n_train)``, equal to
    ``tracin(..., layers=[layer])`` (with ``include_bias=False``: to its weight part alone).
    Other arguments as for `tracin` (``batch_size`` defaults higher: an example costs only
    ``d_in + d_out`` numbers here). See NOTE: [TracIn on the last layer, factorised].

    Example:
      >>> scores = xattr.influence.tracin_fast(model, "fc", checkpoints, loss, (x_tr, y_tr), (x_te, y_te))
      >>> scores.shape                         # (n_test, n_train), as tracin(..., layers=["fc"])
    """
    _check_common(model, loss_fn, test_loss_fn, chunk_size)
    _, fc = _fc_layer(model, layer)
    states = checkpoint_states(model, checkpoints, learning_rates)
    train_b, test_b = batches(train, batch_size, "train"), batches(test, batch_size, "test")
    test_fn = loss_fn if test_loss_fn is None else test_loss_fn
    bar = progress(show_progress, total=len(states) * len(train_b), desc="TracIn (fast)", unit="batch")
    n_test = sum(len(b[0]) for b in test_b)
    per = checkpoints_per_call(len(states), max(n_test, max(len(b[0]) for b in train_b)), batch_size, chunk_size)
    joint = _joint_batch(test_b, train_b[0], per, len(states), batch_size, chunk_size) if test_fn is loss_fn else None
    total = None
    # NOTE: [Checkpoints in one vectorised call] in _by_checkpoint.py
    for group, rates in groups(states, per):
        if joint is not None:  # the test examples and the first training batch in one call
            a_j, g_j = _stacked_factors(model, group, fc, loss_fn, [joint], include_bias, chunk_size)
            a_t, g_t, first = a_j[:, :n_test], g_j[:, :n_test], (a_j[:, n_test:], g_j[:, n_test:])
        else:
            (a_t, g_t), first = _stacked_factors(model, group, fc, test_fn, test_b, include_bias, chunk_size), None
        cols = []
        for j, b in enumerate(train_b):
            a, g = first if j == 0 and first is not None else _stacked_factors(model, group, fc, loss_fn, [b], include_bias, chunk_size)
            cols.append(fast_scores(rates, a_t, g_t, a, g))
            if bar is not None:
                bar.update(len(group))
        scores = torch.cat(cols, dim=1)
        total = scores if total is None else total + scores
    if bar is not None:
        bar.close()
    return total


def _joint_batch(test_b: list, first: tuple, per: int, n_checkpoints: int, batch_size, chunk_size) -> tuple | None:
    """The test examples (one batch) followed by the first training batch, as one batch, when
    their tensors agree in dtype, device and shape beyond the batch dim, and the joint batch
    keeps within ``batch_size`` without fewer checkpoints per call; else None."""
    if len(test_b) != 1 or batch_size is None or len(test_b[0]) != len(first):
        return None
    rows = len(test_b[0][0]) + len(first[0])
    if rows > batch_size or checkpoints_per_call(n_checkpoints, rows, batch_size, chunk_size) < per:
        return None
    if any(t.dtype != u.dtype or t.device != u.device or t.shape[1:] != u.shape[1:] for t, u in zip(test_b[0], first)):
        return None
    return tuple(torch.cat([t, u]) for t, u in zip(test_b[0], first))


def tracin_fast_projections(model: nn.Module, layer, projection_dim: int | None, *, generator=None, include_bias: bool = True):
    """``(P_g, P_a)`` for `tracin_fast_features`, or None when ``projection_dim`` is None or at
    least the layer's ``d_out * d_a`` (then nothing is projected). See NOTE: [Random projections
    of the factors]. ``generator``: an int seed, a ``torch.Generator``, or None (torch's global).

    Example:
      >>> P = xattr.influence.tracin_fast_projections(model, "fc", 64, generator=0)   # (P_g, P_a), or None
    """
    _, fc = _fc_layer(model, layer)
    if positive_int(projection_dim, "projection_dim") is None:
        return None
    gen = torch_generator(generator)
    d_g = fc.out_features
    d_a = fc.in_features + (1 if include_bias and fc.bias is not None else 0)
    if d_g * d_a <= projection_dim:
        return None
    k = math.isqrt(projection_dim)
    k_g, k_a = min(k, d_g), min(k, d_a)
    p_g = torch.normal(torch.zeros(d_g, k_g), 1.0 / k_g**0.5, generator=gen)
    p_a = torch.normal(torch.zeros(d_a, k_a), 1.0 / k_a**0.5, generator=gen)
    return p_g.to(fc.weight), p_a.to(fc.weight)
