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
numbers per checkpoint), and scores are one matmul of test and training features. When
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
from ._by_checkpoint import by_checkpoint, checkpoints_per_call, groups, weighted_sum
from ._tracin import _check_common, batches, checkpoint_states


def _fc_layer(model: nn.Module, layer) -> tuple[str, nn.Linear]:
    if isinstance(layer, str):
        try:
            module = model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"the model has no module named {layer!r}") from err
    else:
        module = layer
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"the fast TracIn needs an nn.Linear layer (the last fully-connected one), got {type(module).__name__}; "
            "use tracin(..., layers=[layer]) for any other layer"
        )
    for name, m in model.named_modules():
        if m is module:
            return name, module
    raise ValueError("layer is not a module of the model")


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
        loss = out.sum() if loss_fn is None else loss_fn(out, label.unsqueeze(0)).sum()
        return loss, a[0]

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


def _factors(model, states, layer, loss_fn, bs, include_bias, chunk_size, batch_size):
    """``(lr, a, g)`` per checkpoint, ``a`` and ``g`` over all the examples of ``bs``."""
    rows = sum(len(b[0]) for b in bs)
    for group, rates in groups(states, checkpoints_per_call(len(states), rows, batch_size, chunk_size)):
        a, g = _stacked_factors(model, group, layer, loss_fn, bs, include_bias, chunk_size)
        yield from zip(rates, a, g)


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
    ``d_in + d_out`` numbers here). See NOTE: [TracIn on the last layer, factorised]."""
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
            cols.append(weighted_sum(rates, torch.bmm(g_t, g.transpose(1, 2)) * torch.bmm(a_t, a.transpose(1, 2))))  # small: one bmm
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


def tracin_fast_self_influence(
    model: nn.Module,
    layer,
    checkpoints,
    loss_fn: Callable | None,
    train,
    *,
    learning_rates=None,
    include_bias: bool = True,
    batch_size: int | None = 4096,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """``(n,)``: ``sum_c eta_c |g|^2 |a|^2`` (``|a|^2 + 1`` with the bias), the self-influence of
    `tracin_fast`."""
    _check_common(model, loss_fn, None, chunk_size)
    _, fc = _fc_layer(model, layer)
    states = checkpoint_states(model, checkpoints, learning_rates)
    train_b = batches(train, batch_size, "train")
    bar = progress(show_progress, total=len(states), desc="TracIn (fast) self-influence", unit="checkpoint")
    total = None
    for lr, a, g in _factors(model, states, fc, loss_fn, train_b, include_bias, chunk_size, batch_size):
        scores = lr * g.square().sum(1) * a.square().sum(1)
        total = scores if total is None else total + scores
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return total


def _as_generator(generator):
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed(generator)


def tracin_fast_projections(model: nn.Module, layer, projection_dim: int | None, *, generator=None, include_bias: bool = True):
    """``(P_g, P_a)`` for `tracin_fast_features`, or None when ``projection_dim`` is None or at
    least the layer's ``d_out * d_a`` (then nothing is projected). See NOTE: [Random projections
    of the factors]. ``generator``: an int seed, a ``torch.Generator``, or None (torch's global)."""
    _, fc = _fc_layer(model, layer)
    if projection_dim is None:
        return None
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1:
        raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
    gen = _as_generator(generator)
    d_g = fc.out_features
    d_a = fc.in_features + (1 if include_bias and fc.bias is not None else 0)
    if d_g * d_a <= projection_dim:
        return None
    k = math.isqrt(projection_dim)
    k_g, k_a = min(k, d_g), min(k, d_a)
    p_g = torch.normal(torch.zeros(d_g, k_g), 1.0 / k_g**0.5, generator=gen)
    p_a = torch.normal(torch.zeros(d_a, k_a), 1.0 / k_a**0.5, generator=gen)
    return p_g.to(fc.weight), p_a.to(fc.weight)


def tracin_fast_features(
    model: nn.Module,
    layer,
    checkpoints,
    loss_fn: Callable | None,
    data,
    *,
    projections=None,
    learning_rates=None,
    include_bias: bool = True,
    batch_size: int | None = 4096,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``(n, C k_g k_a)``: per example, ``sqrt(eta_c) vec((P_g^T g)(P_a^T a)^T)`` over the C
    checkpoints (unprojected with ``projections=None``), so that the dot product of two examples'
    features is their (projected) fast TracIn score. Learning rates must be >= 0."""
    _check_common(model, loss_fn, None, chunk_size)
    _, fc = _fc_layer(model, layer)
    states = checkpoint_states(model, checkpoints, learning_rates)
    if any(lr < 0 for _, lr in states):
        raise ValueError("feature vectors need learning rates >= 0 (they carry sqrt(learning rate))")
    feats = []
    for lr, a, g in _factors(model, states, fc, loss_fn, batches(data, batch_size, "data"), include_bias, chunk_size, batch_size):
        if projections is not None:
            p_g, p_a = projections
            if p_g.shape[0] != g.shape[1] or p_a.shape[0] != a.shape[1]:
                raise ValueError(
                    f"projections of shapes {tuple(p_g.shape)}, {tuple(p_a.shape)} do not fit the layer's "
                    f"output ({g.shape[1]}) and input ({a.shape[1]}): draw them with tracin_fast_projections "
                    "with the same include_bias"
                )
            g, a = g @ p_g, a @ p_a
        feats.append(math.sqrt(lr) * (g[:, :, None] * a[:, None, :]).flatten(1))
    return torch.cat(feats, dim=1)


def tracin_fast_projected(
    model: nn.Module,
    layer,
    checkpoints,
    loss_fn: Callable | None,
    train,
    test,
    *,
    projection_dim: int | None,
    generator=None,
    test_loss_fn: Callable | None = None,
    learning_rates=None,
    include_bias: bool = True,
    batch_size: int | None = 4096,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """`tracin_fast` estimated through random projections of the layer's input and output
    gradient to about ``projection_dim`` numbers per checkpoint: ``(n_test, n_train)``. Exact
    where nothing needs projecting. See NOTE: [Random projections of the factors]."""
    proj = tracin_fast_projections(model, layer, projection_dim, generator=generator, include_bias=include_bias)
    common = dict(projections=proj, learning_rates=learning_rates, include_bias=include_bias, batch_size=batch_size, chunk_size=chunk_size)
    f_train = tracin_fast_features(model, layer, checkpoints, loss_fn, train, **common)
    test_fn = loss_fn if test_loss_fn is None else test_loss_fn
    f_test = tracin_fast_features(model, layer, checkpoints, test_fn, test, **common)
    return f_test @ f_train.T
