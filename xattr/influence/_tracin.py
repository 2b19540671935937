"""TracIn: training-data influence as a sum over checkpoints of gradient dot products.

NOTE: [TracIn over checkpoints]
Pruthi, Liu, Kale and Sundararajan ("Estimating Training Data Influence by Tracing Gradient
Descent", NeurIPS 2020) score a training example z on a test example z' by how much the
training steps on z lowered the loss on z', to first order, summed over saved checkpoints
theta_1 .. theta_C taken with learning rates eta_1 .. eta_C:

    TracIn(z, z') = sum_c  eta_c  < grad_theta L(theta_c, z),  grad_theta L(theta_c, z') >

Self-influence is TracIn(z, z): training examples the model finds hard to fit (mislabelled
ones among them) have large loss gradients at every checkpoint and rank high. ``layers``
restricts theta to the parameters of some modules (the others held at the checkpoint's
values). Per checkpoint, `tracin` computes the flattened per-example gradients of every test
example once, then, one training batch at a time, those of the batch and a single matmul that
adds ``eta_c G_test G_batch^T`` to the (n_test, n_train) score matrix: nothing of size
n_train x P is ever held. Checkpoints are passed to ``torch.func.functional_call`` as
parameter dicts: the model is never loaded, changed or put back.

NOTE: [Per-example losses]
Per-example gradients come from ``vmap(grad(loss))`` where ``loss`` runs the model on ONE
example as a batch of one, ``loss_fn(model(x[None]), y[None])``, summed to a scalar. On a batch
of one, a loss with reduction "sum", "mean" or "none" (summed) is the same number, the
example's own loss, so no reduction needs to be known or corrected for (Captum multiplies "mean"
gradients by the batch size, and assumes "sum" for a loss without a ``reduction`` attribute;
both give the same per-example gradient as here for a loss that is a sum or mean over examples).
With ``loss_fn=None`` the "loss" is the sum of the model's outputs for the example, as in
Captum. The model must run under ``torch.func.vmap``: eval-mode batch norm, no dropout in train
mode, no ``.item()`` on activations.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, TensorDataset, default_collate

from .._src.progress import progress
from ._by_checkpoint import by_checkpoint, checkpoints_per_call, grams, groups, weighted_sum
from ._layers import module_paths, refuse_train_mode, resolve_layer


class TopK(NamedTuple):
    """The ``k`` most influential training examples of each test example: ``indices``
    ``(n_test, k)`` into the training set and their ``scores`` ``(n_test, k)``, best first."""

    indices: torch.Tensor
    scores: torch.Tensor


# --------------------------------------------------------------------------------- data


def batches(data, batch_size: int | None, what: str) -> list:
    """The examples of ``data`` as a list of batches ``(x_1, ..., x_m, labels)``.

    ``data`` is one batch (a tuple or list of tensors with a common first dim; the last one the
    labels), a torch ``Dataset`` (batched by ``batch_size``, in order) or a ``DataLoader`` /
    iterable of such batches. The examples are cut into batches of ``batch_size`` rows, in
    order (a loader's batches joined first, which saves a vectorised call per small batch); with
    ``batch_size=None``, or batches that cannot be joined (shapes that differ beyond the batch
    dim), they stay as they come.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return _cut(_check_batch(data, what), batch_size)
    if batch_size is not None and _plain_tensor_loader(data):  # its batches would be these slices
        return _cut(_check_batch(data.dataset.tensors, what), batch_size)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size or 1, shuffle=False)
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            f"{what} must be a batch (a tuple of tensors whose last element holds the labels), a Dataset "
            f"or a DataLoader of such batches, got {type(data).__name__}"
        )
    out = [_check_batch(b, what) for b in data]
    if not out:
        raise ValueError(f"{what} holds no batches")
    if batch_size is None or len(out) == 1 or len({len(b) for b in out}) != 1:
        return out
    try:
        whole = tuple(torch.cat(parts) for parts in zip(*out))
    except RuntimeError:  # shapes differ beyond the batch dim: keep the batches as they are
        return out
    return _cut(whole, batch_size)


def _plain_tensor_loader(data) -> bool:
    """A DataLoader that yields a TensorDataset's rows in order, collated as they are, none dropped."""
    return (isinstance(data, DataLoader) and type(data.dataset) is TensorDataset and data.collate_fn is default_collate
            and isinstance(data.batch_sampler, BatchSampler) and isinstance(data.batch_sampler.sampler, SequentialSampler)
            and not data.batch_sampler.drop_last)  # fmt: skip


def _cut(batch: tuple, batch_size: int | None) -> list:
    n = batch[0].shape[0]
    if batch_size is None or batch_size >= n:
        return [batch]
    return [tuple(t[i:i + batch_size] for t in batch) for i in range(0, n, batch_size)]


def _check_batch(batch, what: str) -> tuple:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            f"each batch of {what} must be a tuple (x_1, ..., x_m, labels) with at least one input "
            f"and the labels last, got {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in batch):
        raise TypeError(f"each element of a batch of {what} must be a tensor with a batch dim")
    n = batch[0].shape[0]
    if any(t.shape[0] != n for t in batch):
        raise ValueError(f"the tensors of a batch of {what} differ in their first (batch) dim: {[t.shape[0] for t in batch]}")
    if n == 0:
        raise ValueError(f"a batch of {what} is empty (0 examples): give at least one example")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in batch):
        raise ValueError(f"a batch of {what} holds NaN or infinite values: their gradients, and so every score, would be NaN")
    return tuple(batch)


# -------------------------------------------------------------------------- checkpoints


def checkpoint_states(model: nn.Module, checkpoints, learning_rates=None) -> list:
    """``[(state, lr), ...]``: each checkpoint (a state dict, or a path to one saved by
    ``torch.save``) checked against the model's ``state_dict`` keys and cast to its tensors'
    devices and dtypes, with its learning rate (``learning_rates``: one float, one per
    checkpoint, or None: a ``"learning_rate"`` entry of the checkpoint, else 1.0)."""
    if isinstance(checkpoints, (Mapping, str, os.PathLike)):
        checkpoints = [checkpoints]
    if not isinstance(checkpoints, Sequence) or not checkpoints:
        raise ValueError("checkpoints must be a non-empty list of state dicts or of paths to saved state dicts")
    if learning_rates is None or isinstance(learning_rates, (int, float)):
        lrs = [learning_rates] * len(checkpoints)
    else:
        lrs = list(learning_rates)
        if len(lrs) != len(checkpoints):
            raise ValueError(f"{len(lrs)} learning_rates for {len(checkpoints)} checkpoints: give one per checkpoint")
    reference = model.state_dict(keep_vars=True)
    out = []
    for i, (ckpt, lr) in enumerate(zip(checkpoints, lrs)):
        if isinstance(ckpt, (str, os.PathLike)):
            ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, Mapping):
            raise TypeError(f"checkpoint {i} is a {type(ckpt).__name__}: give a state dict or a path to one")
        ckpt = dict(ckpt)
        saved_lr = ckpt.pop("learning_rate", None)
        if ckpt and all(k.startswith("module.") for k in ckpt):  # saved from nn.DataParallel
            ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
        missing, unexpected = set(reference) - set(ckpt), set(ckpt) - set(reference)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {i} does not fit the model: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]} (it must be the model's state_dict())"
            )
        state = {k: torch.as_tensor(v).detach().to(device=reference[k].device, dtype=reference[k].dtype) for k, v in ckpt.items()}
        rate = lr if lr is not None else (saved_lr if saved_lr is not None else 1.0)
        rate = float(rate)
        out.append((state, rate))
    return out


def parameter_names(model: nn.Module, layers) -> list[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters TracIn differentiates:
    with ``layers=None`` every parameter that requires grad, else every parameter of the given
    modules (modules or their names), whether it requires grad or not."""
    named = list(model.named_parameters())
    if layers is None:
        names = [n for n, p in named if p.requires_grad]
        if not names:
            raise ValueError("the model has no parameter that requires grad: name the layers to use with layers=")
        return names
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError("layers must be a non-empty list of modules of the model or of their names")
    by_id = {id(p): n for n, p in named}
    paths = module_paths(model)
    chosen: dict[str, None] = {}
    for layer in layers:
        _, layer = resolve_layer(model, layer, paths)
        ps = list(layer.parameters())
        if not ps:
            raise ValueError(f"layer {type(layer).__name__} has no parameters")
        for p in ps:
            chosen[by_id[id(p)]] = None
    return list(chosen)


# ------------------------------------------------------------------ per-example gradients


def example_loss(model: nn.Module, loss_fn: Callable | None) -> Callable:
    """``f(state, inputs, label) -> scalar``: the loss of ONE example (no batch dim), run as a
    batch of one. See NOTE: [Per-example losses]."""
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")

    def f(state, inputs, label):
        out = functional_call(model, state, tuple(x.unsqueeze(0) for x in inputs))
        if loss_fn is None:
            return out.sum()
        loss = loss_fn(out, label.unsqueeze(0))
        return loss.sum()

    return f


def per_example_grads(model, state, names, loss_fn, batch, chunk_size=None) -> torch.Tensor:
    """``(b, P)``: the loss gradient of each example of ``batch`` w.r.t. the parameters
    ``names`` (flattened and concatenated in that order) at the parameter values ``state``."""
    g = _grads(model, state, names, loss_fn, batch, chunk_size)
    return torch.cat([g[n].reshape(g[n].shape[0], -1) for n in names], dim=1)


def _grads(model, state, names, loss_fn, batch, chunk_size) -> dict:
    """``{name: (b, *shape)}``: per-example gradients, one tensor per parameter."""
    f = example_loss(model, loss_fn)
    trained = {n: state[n] for n in names}
    canonical = {id(p): n for n, p in model.named_parameters()}
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if canonical[id(p)] in trained}
    held = {k: v for k, v in state.items() if k not in tied}  # a tied alias follows its trained name

    def one(p, inputs, label):
        return f({**held, **p}, inputs, label)

    *inputs, labels = batch
    return vmap(grad(one), in_dims=(None, 0, 0), chunk_size=chunk_size)(trained, tuple(inputs), labels)


def _squared_norms(model, state, names, loss_fn, batch, chunk_size) -> torch.Tensor:
    """``(b,)``: each example's squared gradient norm, without concatenating the gradients."""
    g = _grads(model, state, names, loss_fn, batch, chunk_size)
    return sum(g[n].reshape(g[n].shape[0], -1).square().sum(1) for n in names)


def _check_common(model, loss_fn, test_loss_fn, chunk_size):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    refuse_train_mode(model)
    for name, fn in (("loss_fn", loss_fn), ("test_loss_fn", test_loss_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


# -------------------------------------------------------------------------------- TracIn


def tracin(
    model: nn.Module,
    checkpoints,
    loss_fn: Callable | None,
    train,
    test,
    *,
    test_loss_fn: Callable | None = None,
    layers=None,
    learning_rates=None,
    batch_size: int | None = 256,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """TracIn scores of every training example on every test example.

    See NOTE: [TracIn over checkpoints] and NOTE: [Per-example losses].

    Args:
      model: an ``nn.Module``; only its structure is used (parameters come from the
        checkpoints; its mode, parameters and hooks are left as they are).
      checkpoints: state dicts of the model, or paths to files saved by ``torch.save``.
      loss_fn: ``loss_fn(output, labels)`` of a batch (any reduction), or None for the sum of
        the model's outputs.
      train, test: one batch ``(x_1, ..., x_m, labels)``, a ``Dataset`` or a ``DataLoader``.
      test_loss_fn: the loss for test examples (default ``loss_fn``), e.g. one class's logit.
      layers: modules (or names) whose parameters are differentiated; None: all that require grad.
      learning_rates: a float or one per checkpoint; None: each checkpoint's "learning_rate"
        entry, else 1.
      batch_size: rows of a single-batch or Dataset ``train``/``test`` per gradient matrix.
      chunk_size: most examples per vectorised gradient call (bounds memory; None: all).
      show_progress: a progress bar over checkpoints x training batches.

    Returns:
      A detached ``(n_test, n_train)`` tensor: ``[i, j]`` is training example j's influence on
      test example i.
    """
    _check_common(model, loss_fn, test_loss_fn, chunk_size)
    names = parameter_names(model, layers)
    states = checkpoint_states(model, checkpoints, learning_rates)
    train_b, test_b = batches(train, batch_size, "train"), batches(test, batch_size, "test")
    test_fn = loss_fn if test_loss_fn is None else test_loss_fn
    bar = progress(show_progress, total=len(states) * len(train_b), desc="TracIn", unit="batch")
    rows = max(sum(len(b[0]) for b in test_b), max(len(b[0]) for b in train_b))
    total = None
    # NOTE: [Checkpoints in one vectorised call] in _by_checkpoint.py
    for group, rates in groups(states, checkpoints_per_call(len(states), rows, batch_size, chunk_size)):
        g_test = torch.cat([by_checkpoint(lambda s: per_example_grads(model, s, names, test_fn, b, chunk_size), group)
                            for b in test_b], dim=1)  # fmt: skip
        cols = []
        for b in train_b:
            g = by_checkpoint(lambda s: per_example_grads(model, s, names, loss_fn, b, chunk_size), group)
            cols.append(weighted_sum(rates, grams(g_test, g)))
            if bar is not None:
                bar.update(len(group))
        scores = torch.cat(cols, dim=1)
        total = scores if total is None else total + scores
    if bar is not None:
        bar.close()
    return total.detach()


def tracin_self_influence(
    model: nn.Module,
    checkpoints,
    loss_fn: Callable | None,
    train,
    *,
    layers=None,
    learning_rates=None,
    batch_size: int | None = 256,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """TracIn of each example on itself: ``sum_c eta_c |grad L(theta_c, z)|^2``, a detached
    ``(n,)`` tensor, without forming the n x n matrix. Arguments as for `tracin`."""
    _check_common(model, loss_fn, None, chunk_size)
    names = parameter_names(model, layers)
    states = checkpoint_states(model, checkpoints, learning_rates)
    train_b = batches(train, batch_size, "train")
    bar = progress(show_progress, total=len(states) * len(train_b), desc="TracIn self-influence", unit="batch")
    total = None
    for state, lr in states:  # one checkpoint per call: see NOTE: [Checkpoints in one vectorised call] in _by_checkpoint.py
        parts = []
        for b in train_b:
            parts.append(_squared_norms(model, state, names, loss_fn, b, chunk_size))
            if bar is not None:
                bar.update()
        scores = lr * torch.cat(parts)
        total = scores if total is None else total + scores
    if bar is not None:
        bar.close()
    return total.detach()


def top_k(scores: torch.Tensor, k: int, proponents: bool = True) -> TopK:
    """The ``k`` proponents (largest scores, best first) or opponents (smallest scores, most
    negative first) of each row of an ``(n_test, n_train)`` score matrix."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError("scores must be an (n_test, n_train) tensor, e.g. what tracin returns")
    if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores hold NaN or infinite values: their ranking is meaningless; check the data and checkpoints")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an int in [1, n_train = {scores.shape[1]}], got {k!r}")
    values, indices = torch.topk(scores if proponents else -scores, k, dim=1)
    return TopK(indices, values if proponents else -values)
