"""The fast TracIn's training factors, held by the user: the training pass paid once.

NOTE: [A user-held index of training factors]
`tracin_fast` runs the training set through the model at every checkpoint on every call, to get
each training example's factors ``a`` (the layer's input) and ``g`` (the loss gradient at its
output; NOTE: [TracIn on the last layer, factorised] in _tracin_fast.py). Those do not depend
on the test examples, so `tracin_fast_index` computes them once and returns a
`TracInFastIndex` that holds them, stacked over the C checkpoints as ``(C, n_train, ·)``,
projected when ``projection_dim`` asks for it (NOTE: [Random projections of the factors]),
along with the checkpoint states and learning rates. Each ``influence(test)`` then runs only
the test examples and multiplies; ``self_influence()`` and ``features()`` need no model call
at all. Nothing is cached behind the user's back: the object is the cache, it is built when
asked, dropped with the object, and never refreshed. It holds copies of the checkpoint states,
so a state dict changed in place later (a model's own ``state_dict()`` trained further) does
not mix into its answers; it is stale once the model's structure, the checkpoints or the
training data change: build a new one then. It takes ``C n_train (d_a + d_g)`` numbers
(``k_a + k_g`` per checkpoint when projected). `tracin_fast_self_influence`, `tracin_fast_features` and `tracin_fast_projected`
are one-shot calls through an index; `tracin_fast` is not (it streams the training batches,
never holding all their factors, and runs the test examples with the first training batch
in one call).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .._src.progress import progress
from ._per_example import row_chunks
from ._tracin import _check_common, batches, checkpoint_states, top_k
from ._tracin_fast import _fc_layer, all_factors, fast_scores, tracin_fast_projections


class TracInFastIndex:
    """The training factors of the fast TracIn at every checkpoint (see NOTE: [A user-held index
    of training factors] in xattr/influence/_tracin_index.py); build it with `tracin_fast_index`.

    Attributes: ``a`` ``(C, n_train, d_a)`` and ``g`` ``(C, n_train, d_g)`` (projected: ``k_a``,
    ``k_g`` columns), ``learning_rates`` (C floats), ``projections`` (``(P_g, P_a)`` or None).
    Stale once the model's structure, the checkpoints or the training data change (it keeps its
    own copies of the checkpoint states: later in-place changes do not reach it).

    Example:
      >>> index = xattr.influence.tracin_fast_index(model, "fc", checkpoints, nn.CrossEntropyLoss(), (x_tr, y_tr))
      >>> index.influence((x_te, y_te)), index.self_influence()   # (n_test, n_train), (n_train,)
    """

    def __init__(self, model, layer, states, loss_fn, train, *, projections, include_bias, batch_size, chunk_size, show_progress):
        self.model, self.layer, self.loss_fn = model, layer, loss_fn
        self._states = states
        self.learning_rates = [lr for _, lr in states]
        self.projections = projections
        self.include_bias, self.batch_size, self.chunk_size = include_bias, batch_size, chunk_size
        bar = progress(show_progress, total=len(states), desc="TracIn (fast) index", unit="checkpoint")
        self.a, self.g = self._factors(train, loss_fn, "train", bar)
        if bar is not None:
            bar.close()

    def __repr__(self) -> str:
        c, n, d_a = self.a.shape
        return f"TracInFastIndex(checkpoints={c}, n_train={n}, d_a={d_a}, d_g={self.g.shape[2]}, projected={self.projections is not None})"

    def _factors(self, data, loss_fn, what: str, bar=None):
        bs = batches(data, self.batch_size, what)
        a, g = all_factors(self.model, self._states, self.layer, loss_fn, bs, self.include_bias, self.chunk_size, self.batch_size, bar)
        if self.projections is not None:
            p_g, p_a = self.projections
            g, a = g @ p_g, a @ p_a
        return a, g

    def influence(self, test, k: int | None = None, proponents: bool = True, *, test_loss_fn: Callable | None = None,
                  show_progress: bool = False):  # fmt: skip
        """The ``(n_test, n_train)`` fast TracIn scores of ``test`` (a batch, Dataset or
        DataLoader), equal to `tracin_fast` (`tracin_fast_projected` when projected); with an
        int ``k`` the ``TopK`` proponents (``proponents=False``: opponents) of each test example.
        ``test_loss_fn``: the loss of the test examples (default: the index's ``loss_fn``)."""
        if not isinstance(proponents, bool):
            raise TypeError(f"proponents must be True (the largest scores) or False (the smallest), got {proponents!r}")
        if test_loss_fn is not None and not callable(test_loss_fn):
            raise TypeError(f"test_loss_fn must be callable or None, got {type(test_loss_fn).__name__}")
        a_t, g_t = self._factors(test, self.loss_fn if test_loss_fn is None else test_loss_fn, "test")
        chunks = row_chunks(self.a.shape[1], self.batch_size)
        cols = [fast_scores(self.learning_rates, a_t, g_t, self.a[:, lo:hi], self.g[:, lo:hi])
                for lo, hi in progress(show_progress, chunks, desc="TracIn (fast) scores", unit="batch")]  # fmt: skip
        scores = cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
        return scores if k is None else top_k(scores, k, proponents)

    def self_influence(self) -> torch.Tensor:
        """``(n_train,)``: ``sum_c eta_c |g|^2 |a|^2`` of each training example, equal to
        `tracin_fast_self_influence` (projected: its estimate); no model call."""
        total = None
        for lr, a, g in zip(self.learning_rates, self.a, self.g):
            scores = lr * g.square().sum(1) * a.square().sum(1)
            total = scores if total is None else total + scores
        return total

    def features(self, data=None, loss_fn: Callable | None = None) -> torch.Tensor:
        """``(n, C k_g k_a)``: ``sqrt(eta_c) vec(g a^T)`` per example over the checkpoints, whose
        dot products are the scores; of the training set (``data=None``: no model call) or of
        ``data`` with ``loss_fn`` (default: the index's). Learning rates must be >= 0."""
        if any(lr < 0 for lr in self.learning_rates):
            raise ValueError("feature vectors need learning rates >= 0 (they carry sqrt(learning rate))")
        a, g = (self.a, self.g) if data is None else self._factors(data, self.loss_fn if loss_fn is None else loss_fn, "data")
        return torch.cat([math.sqrt(lr) * (gc[:, :, None] * ac[:, None, :]).flatten(1)
                          for lr, ac, gc in zip(self.learning_rates, a, g)], dim=1)  # fmt: skip


def _index(model, layer, checkpoints, loss_fn, train, *, projections=None, learning_rates=None, include_bias=True,
           batch_size=4096, chunk_size=None, show_progress=False, copy_states=False) -> TracInFastIndex:  # fmt: skip
    _check_common(model, loss_fn, None, chunk_size)
    _, fc = _fc_layer(model, layer)
    if projections is not None:
        p_g, p_a = projections
        d_a = fc.in_features + (1 if include_bias and fc.bias is not None else 0)
        if p_g.shape[0] != fc.out_features or p_a.shape[0] != d_a:
            raise ValueError(
                f"projections of shapes {tuple(p_g.shape)}, {tuple(p_a.shape)} do not fit the layer's output "
                f"({fc.out_features}) and input ({d_a}): draw them with tracin_fast_projections with the same include_bias"
            )
    states = checkpoint_states(model, checkpoints, learning_rates)
    if copy_states:  # the index outlives the call: its own copies (a user's state dict may share storage with a model)
        states = [({k: v.clone() for k, v in state.items()}, lr) for state, lr in states]
    return TracInFastIndex(model, fc, states, loss_fn, train, projections=projections, include_bias=include_bias,
                           batch_size=batch_size, chunk_size=chunk_size, show_progress=show_progress)  # fmt: skip


def tracin_fast_index(
    model: nn.Module,
    layer,
    checkpoints,
    loss_fn: Callable | None,
    train,
    *,
    learning_rates=None,
    include_bias: bool = True,
    projection_dim: int | None = None,
    generator=None,
    batch_size: int | None = 4096,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> TracInFastIndex:
    """The fast TracIn's training factors at every checkpoint, computed once and held by the
    returned `TracInFastIndex`: query it with ``.influence(test, k=None, proponents=True)``,
    ``.self_influence()`` and ``.features()``. See NOTE: [A user-held index of training factors].

    Arguments as for `tracin_fast` (``train``: a batch, Dataset or DataLoader); with
    ``projection_dim`` the factors are projected as in `tracin_fast_projected`, the matrices
    drawn from ``generator`` (an int seed, a ``torch.Generator``, or None: torch's global).
    The index holds copies of the checkpoint states; it is stale once the model's structure,
    the checkpoints or ``train`` change.

    Example:
      >>> index = tracin_fast_index(model, "fc", paths, nn.CrossEntropyLoss(), (x_train, y_train))
      >>> s1, s2 = index.influence((x1, y1)), index.influence((x2, y2))   # no training pass
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    proj = tracin_fast_projections(model, layer, projection_dim, generator=generator, include_bias=include_bias)
    return _index(model, layer, checkpoints, loss_fn, train, projections=proj, learning_rates=learning_rates,
                  include_bias=include_bias, batch_size=batch_size, chunk_size=chunk_size, show_progress=show_progress,
                  copy_states=True)  # fmt: skip


def tracin_fast_self_influence(model: nn.Module, layer, checkpoints, loss_fn: Callable | None, train, *, learning_rates=None,
                               include_bias: bool = True, batch_size: int | None = 4096, chunk_size: int | None = None,
                               show_progress: bool = False) -> torch.Tensor:  # fmt: skip
    """``(n,)``: ``sum_c eta_c |g|^2 |a|^2`` (``|a|^2 + 1`` with the bias), the self-influence of
    `tracin_fast`: ``tracin_fast_index(...).self_influence()``.

    Example:
      >>> s = xattr.influence.tracin_fast_self_influence(model, "fc", checkpoints, loss, (x_tr, y_tr))  # (n_train,)
    """
    return _index(model, layer, checkpoints, loss_fn, train, learning_rates=learning_rates, include_bias=include_bias,
                  batch_size=batch_size, chunk_size=chunk_size, show_progress=show_progress).self_influence()  # fmt: skip


def tracin_fast_features(model: nn.Module, layer, checkpoints, loss_fn: Callable | None, data, *, projections=None,
                         learning_rates=None, include_bias: bool = True, batch_size: int | None = 4096,
                         chunk_size: int | None = None) -> torch.Tensor:  # fmt: skip
    """``(n, C k_g k_a)``: per example, ``sqrt(eta_c) vec((P_g^T g)(P_a^T a)^T)`` over the C
    checkpoints (unprojected with ``projections=None``; else ``(P_g, P_a)`` from
    `tracin_fast_projections`), so that the dot product of two examples' features is their
    (projected) fast TracIn score. Learning rates must be >= 0.

    Example:
      >>> P = xattr.influence.tracin_fast_projections(model, "fc", 64, generator=0)
      >>> a = xattr.influence.tracin_fast_features(model, "fc", checkpoints, loss, (x_tr, y_tr), projections=P)
      >>> b = xattr.influence.tracin_fast_features(model, "fc", checkpoints, loss, (x_te, y_te), projections=P)
      >>> scores = b @ a.T                     # (n_test, n_train), the projected fast TracIn
    """
    index = _index(model, layer, checkpoints, loss_fn, data, projections=projections, learning_rates=learning_rates,
                   include_bias=include_bias, batch_size=batch_size, chunk_size=chunk_size)  # fmt: skip
    return index.features()


def tracin_fast_projected(model: nn.Module, layer, checkpoints, loss_fn: Callable | None, train, test, *,
                          projection_dim: int | None, generator=None, test_loss_fn: Callable | None = None,
                          learning_rates=None, include_bias: bool = True, batch_size: int | None = 4096,
                          chunk_size: int | None = None) -> torch.Tensor:  # fmt: skip
    """`tracin_fast` estimated through random projections of the layer's input and output
    gradient to at most ``projection_dim`` numbers per checkpoint, ``k_g * k_a`` with each factor
    projected to ``k = isqrt(projection_dim)`` dims or fewer where the layer has fewer (a 3-output
    layer at 8: 2 * 2 = 4): ``(n_test, n_train)``. Exact
    where nothing needs projecting. See NOTE: [Random projections of the factors] in
    _tracin_fast.py; ``tracin_fast_index(..., projection_dim=...).influence(test)``.

    Example:
      >>> scores = xattr.influence.tracin_fast_projected(
      ...     model, "fc", checkpoints, loss, (x_tr, y_tr), (x_te, y_te), projection_dim=64, generator=0)
    """
    _check_common(model, loss_fn, test_loss_fn, chunk_size)
    index = tracin_fast_index(model, layer, checkpoints, loss_fn, train, learning_rates=learning_rates, include_bias=include_bias,
                              projection_dim=projection_dim, generator=generator, batch_size=batch_size, chunk_size=chunk_size)  # fmt: skip
    return index.influence(test, test_loss_fn=test_loss_fn)

