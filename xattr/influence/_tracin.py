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

Per-example gradients: NOTE: [Per-example losses] in _per_example.py.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, TensorDataset, default_collate

from .._src.progress import progress
from ._by_checkpoint import by_checkpoint, checkpoints_per_call, grams, groups, weighted_sum
from ._layers import refuse_train_mode
from ._per_example import check_batch, parameter_names, per_example_grads, positive_int, squared_norms


class TopK(NamedTuple):
    """The ``k`` most influential training examples of each test example: ``indices``
    ``(n_test, k)`` into the training set and their ``scores`` ``(n_test, k)``, best first.

    Example:
      >>> best = xattr.influence.top_k(scores, 5)
      >>> best.indices, best.scores            # (n_test, 5) each, best first
    """

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
    positive_int(batch_size, "batch_size")
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return _cut(check_batch(data, what), batch_size)
    if batch_size is not None and _plain_tensor_loader(data):  # its batches would be these slices
        return _cut(check_batch(data.dataset.tensors, what), batch_size)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size or 1, shuffle=False)
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            f"{what} must be a batch (a tuple of tensors whose last element holds the labels), a Dataset "
            f"or a DataLoader of such batches, got {type(data).__name__}"
        )
    out = [check_batch(b, what) for b in data]
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


def _check_common(model, loss_fn, test_loss_fn, chunk_size):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    refuse_train_mode(model)
    for name, fn in (("loss_fn", loss_fn), ("test_loss_fn", test_loss_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    positive_int(chunk_size, "chunk_size")


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

    See NOTE: [TracIn over checkpoints] and NOTE: [Per-example losses] in _per_example.py.

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

    Example:
      >>> loss = nn.CrossEntropyLoss()
      >>> scores = xattr.influence.tracin(model, ["ckpt1.pt", "ckpt2.pt"], loss, (x_tr, y_tr), (x_te, y_te))
      >>> scores.shape                         # (n_test, n_train)
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
        g_test = torch.cat([by_checkpoint(lambda s: per_example_grads(model, s, names, test_fn, b, chunk_size=chunk_size), group)
                            for b in test_b], dim=1)  # fmt: skip
        cols = []
        for b in train_b:
            g = by_checkpoint(lambda s: per_example_grads(model, s, names, loss_fn, b, chunk_size=chunk_size), group)
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
    ``(n,)`` tensor, without forming the n x n matrix. Arguments as for `tracin`.

    Example:
      >>> s = xattr.influence.tracin_self_influence(model, checkpoints, loss, (x_tr, y_tr))  # (n_train,)
    """
    _check_common(model, loss_fn, None, chunk_size)
    names = parameter_names(model, layers)
    states = checkpoint_states(model, checkpoints, learning_rates)
    train_b = batches(train, batch_size, "train")
    bar = progress(show_progress, total=len(states) * len(train_b), desc="TracIn self-influence", unit="batch")
    total = None
    for state, lr in states:  # one checkpoint per call: see NOTE: [Checkpoints in one vectorised call] in _by_checkpoint.py
        parts = []
        for b in train_b:
            parts.append(squared_norms(per_example_grads(model, state, names, loss_fn, b, chunk_size=chunk_size, flat=False)))
            if bar is not None:
                bar.update()
        scores = lr * torch.cat(parts)
        total = scores if total is None else total + scores
    if bar is not None:
        bar.close()
    return total.detach()


def top_k(scores: torch.Tensor, k: int, proponents: bool = True) -> TopK:
    """The ``k`` proponents (largest scores, best first) or opponents (smallest scores, most
    negative first) of each row of an ``(n_test, n_train)`` score matrix.

    Example:
      >>> scores = xattr.influence.tracin(model, checkpoints, nn.CrossEntropyLoss(), (x_tr, y_tr), (x_te, y_te))
      >>> opponents = xattr.influence.top_k(scores, 5, proponents=False)   # TopK: indices, scores (n_test, 5)
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError("scores must be an (n_test, n_train) tensor, e.g. what tracin returns")
    if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores hold NaN or infinite values: their ranking is meaningless; check the data and checkpoints")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an int in [1, n_train = {scores.shape[1]}], got {k!r}")
    values, indices = torch.topk(scores if proponents else -scores, k, dim=1)
    return TopK(indices, values if proponents else -values)
