"""Captum's TracIn classes (``captum.influence``) as thin adapters over ``xattr.influence``.

    from xattr.compat.captum import TracInCP        # was: from captum.influence import TracInCP

``TracInCP``, ``TracInCPFast`` and ``TracInCPFastRandProj`` take Captum 0.9's constructor
arguments and ``influence`` / ``self_influence`` keywords, and return what Captum returns: an
``(n_test, n_train)`` tensor, or with ``k`` a `KMostInfluentialResults`. The numbers are
Captum's (tests/test_compat_tracin.py compares them). What differs, by design:

- The model is never changed. The checkpoints are loaded with ``checkpoints_load_func`` into
  a private copy of the model and their states handed to the functional core; Captum loads
  them into the user's model (leaving the last one there) and sets ``requires_grad`` on the
  chosen layers. What was loaded is kept for later calls while it cannot have changed (NOTE:
  [Loaded checkpoints are kept] in _loaded_checkpoints.py); Captum loads them again on every
  call.
- Per-example gradients come from ``vmap(grad)`` on one example at a time (NOTE: [Per-example
  losses] in xattr/influence/_per_example.py), so any ``reduction`` of ``loss_fn`` gives the same
  numbers: Captum's requirement of ``reduction="none"`` (or "sum"/"mean" with
  ``sample_wise_grads_per_batch=True``) is not enforced. ``sample_wise_grads_per_batch``,
  ``vectorize`` and ``outer_loop_by_checkpoints`` are accepted and change nothing.
- ``TracInCPFastRandProj`` draws its projections from its own generator seeded with ``seed``
  (the same numbers as Captum's, which reseeds torch's global generator); its training
  features use ``loss_fn`` (Captum uses ``test_loss_fn`` for them too); and without
  ``nearest_neighbors`` its proponents are the exact top k of the projected scores (Captum
  defaults to Annoy's approximate search, which needs the ``annoy`` package). A given
  ``nearest_neighbors`` object is used as Captum uses it. Its training features are computed
  at construction, as Captum's are, and so are the checkpoint states its test features use
  (Captum loads the checkpoints again on each call: after a checkpoint changes, build a new
  object, whose training features then agree with it).
- ``TracInCPFast`` differentiates at the output of ``final_fc_layer``; Captum at the model's
  output, the same when that layer is the model's last module.

NOTE: [Rows per gradient call]
Captum's ``batch_size`` only batches the training Dataset. ``TracInCP`` hands the core a
``batch_size`` of as many rows as keep one per-example gradient matrix within
``_GRADIENT_BYTES`` (64 MiB; at least one row), not the core's default 256: on a small model
all examples, and several checkpoints, go through one vectorised call (NOTE: [Checkpoints in
one vectorised call] in xattr/influence/_by_checkpoint.py); on a large one the rows shrink
so that memory stays bounded.

NOTE: [The last child is not the last layer]
Captum's tutorial passes ``final_fc_layer=list(net.children())[-1]``, the module registered last
in ``__init__``; its ``Net`` registers its ReLUs after the last Linear, so that is a ReLU. Captum
accepts any module: it pairs the module's *input* (here the last hidden layer before its ReLU)
with the loss gradient at the *model's output*, a product that is the gradient of no parameter
of the model (the last Linear's weight gradient pairs the same output gradient with the ReLU's
output). The proponents it finds differ from those of the last Linear (tests/
test_influence_tutorials.py). ``TracInCPFast`` here takes an ``nn.Linear`` only and says which
one to pass.

NOTE: [Captum's projection seed]
Captum's ``TracInCPFastRandProj`` seeds torch's global generator with ``seed``, then starts
iterating the training DataLoader (whose iterator draws one int64 base seed from that generator,
unless the loader has a generator of its own) before it draws its two projection matrices. A
private generator seeded alike that skips the same draw gives the same matrices, and torch's
global generator is left alone.
"""

from __future__ import annotations

import glob
import os
import re
from abc import ABC, abstractmethod
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...influence._per_example import parameter_names, per_example_grads, rows_within
from ...influence._tracin import batches, top_k, tracin, tracin_self_influence
from ...influence._tracin_fast import tracin_fast, tracin_fast_projections
from ...influence._tracin_index import _index, tracin_fast_self_influence
from ._loaded_checkpoints import LoadedCheckpoints


class KMostInfluentialResults(NamedTuple):
    """The ``k`` proponents (or opponents) of each test example: ``indices`` ``(n_test, k)``
    into the training set and their ``influence_scores`` ``(n_test, k)``, best first."""

    indices: torch.Tensor
    influence_scores: torch.Tensor


def _load_flexible_state_dict(model: nn.Module, path) -> float:
    """Captum's default loader: a state dict saved by ``torch.save`` (keys may carry the
    ``module.`` prefix of ``nn.DataParallel``), loaded into ``model``; its ``"learning_rate"``
    entry, else 1.0, is returned."""
    state = dict(torch.load(path, map_location="cpu", weights_only=True))
    lr = state.pop("learning_rate", 1.0)
    if state and all(k.startswith("module.") for k in state) and not isinstance(model, nn.DataParallel):
        state = {k[len("module."):]: v for k, v in state.items()}
    model.load_state_dict(state)
    return lr


_GRADIENT_BYTES = 64 * 2**20  # per-example gradient rows one vectorised call may hold


def _not_linear_message(model: nn.Module, layer) -> str:
    """Why ``layer`` cannot be ``final_fc_layer``, naming the model's last-registered Linear.
    See NOTE: [The last child is not the last layer]."""
    name = next((n for n, m in model.named_modules() if m is layer), None)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    got = type(layer).__name__ + (f" {name!r}" if name else "")
    hint = f"; pass the last fully-connected layer, e.g. final_fc_layer={linears[-1]!r}" if linears else ""
    return (f"final_fc_layer must be an nn.Linear (or its name), got {got}. list(model.children())[-1] is the "
            f"module registered last in __init__, not necessarily the one applied last{hint}")


def _natural_key(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"([0-9]+)", s)]


class DataInfluence(ABC):
    """Base of Captum's training-data influence methods (``captum.influence.DataInfluence``)."""

    def __init__(self, model: nn.Module, train_dataset, **kwargs: Any) -> None:
        self.model = model
        self.train_dataset = train_dataset

    @abstractmethod
    def influence(self, inputs: Any = None, **kwargs: Any) -> Any:
        """Influence of the training data on ``inputs``."""

    @classmethod
    def get_name(cls) -> str:
        return cls.__name__


class TracInCPBase(DataInfluence):
    """Shared constructor of the TracIn classes: model, training data, checkpoints and losses."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset,
        checkpoints,
        checkpoints_load_func: Callable = _load_flexible_state_dict,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.train_dataset = train_dataset
        self.checkpoints = checkpoints
        if not callable(checkpoints_load_func):
            raise TypeError("checkpoints_load_func must be a function (model, checkpoint) -> learning rate")
        self.checkpoints_load_func = checkpoints_load_func
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.batch_size = batch_size
        if isinstance(train_dataset, DataLoader):
            self.train_dataloader = train_dataset
        elif isinstance(train_dataset, Dataset):
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError("train_dataset is a Dataset, so batch_size must be a positive int")
            self.train_dataloader = DataLoader(train_dataset, batch_size, shuffle=False)
        else:
            raise TypeError(f"train_dataset must be a Dataset or a DataLoader, got {type(train_dataset).__name__}")
        try:
            self.train_dataloader_len = len(self.train_dataloader)
        except TypeError:
            self.train_dataloader_len = None

    @property
    def checkpoints(self) -> list:
        return self._checkpoints

    @checkpoints.setter
    def checkpoints(self, checkpoints) -> None:
        if isinstance(checkpoints, (str, os.PathLike)):
            found = sorted(glob.glob(os.path.join(os.fspath(checkpoints), "*")), key=_natural_key)
        elif isinstance(checkpoints, list) and checkpoints and isinstance(checkpoints[0], str):
            found = sorted(checkpoints, key=_natural_key)
        else:
            found = list(checkpoints)
        if not found:
            raise ValueError(f"no checkpoints given (or found) in {checkpoints!r}")
        self._checkpoints = found
        self._loaded = LoadedCheckpoints()  # NOTE: [Loaded checkpoints are kept] in _loaded_checkpoints.py

    def _states(self) -> tuple[list, list]:
        """Each checkpoint loaded by ``checkpoints_load_func`` into a copy of the model: its
        state dict and learning rate (None counts as 1); kept while valid."""
        return self._loaded.get(self.model, self.checkpoints, self.checkpoints_load_func)

    def _top(self, scores: torch.Tensor, k: int, proponents: bool) -> KMostInfluentialResults:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int or None, got {k!r}")
        indices, values = top_k(scores, min(k, scores.shape[1]), proponents)
        return KMostInfluentialResults(indices, values)

    @abstractmethod
    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False):
        """TracIn of each example of ``inputs`` (default: the training data) on itself."""

    @abstractmethod
    def influence(self, inputs, k=None, proponents=True, show_progress=False):
        """Scores ``(n_test, n_train)``, or with ``k`` the k proponents/opponents per test example."""


def _check_inputs(inputs) -> None:
    if inputs is None:
        raise ValueError("inputs is required (a batch (x, ..., labels) or a DataLoader); for self influence use self_influence")


class TracInCP(TracInCPBase):
    """TracIn over all parameters (or those of ``layers``) and every checkpoint (Captum's
    ``TracInCP``); the core is `xattr.influence.tracin`."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset,
        checkpoints,
        checkpoints_load_func: Callable = _load_flexible_state_dict,
        layers: list[str] | None = None,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
        sample_wise_grads_per_batch: bool = False,
    ) -> None:
        super().__init__(model, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size, test_loss_fn)
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch  # speed only in Captum; unused
        self.layers = layers
        self._names = parameter_names(model, layers)  # checks the layer names now

    def _rows(self) -> int:
        # NOTE: [Rows per gradient call]
        return rows_within(dict(self.model.named_parameters()), parameter_names(self.model, self.layers), _GRADIENT_BYTES)

    def influence(self, inputs, k: int | None = None, proponents: bool = True, show_progress: bool = False, aggregate: bool = False):
        """``(n_test, n_train)`` scores (``(1, n_train)`` summed over the test examples with
        ``aggregate``), or with ``k`` the k proponents (``proponents=False``: opponents)."""
        _check_inputs(inputs)
        states, lrs = self._states()
        scores = tracin(self.model, states, self.loss_fn, self.train_dataloader, inputs, test_loss_fn=self.test_loss_fn,
                        layers=self.layers, learning_rates=lrs, batch_size=self._rows(), show_progress=show_progress)  # fmt: skip
        if aggregate:
            scores = scores.sum(0, keepdim=True)
        return scores if k is None else self._top(scores, k, proponents)

    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False) -> torch.Tensor:
        """``(n,)``: each example's TracIn on itself (default: the training data)."""
        states, lrs = self._states()
        data = self.train_dataloader if inputs is None else inputs
        return tracin_self_influence(self.model, states, self.loss_fn, data, layers=self.layers, learning_rates=lrs,
                                     batch_size=self._rows(), show_progress=show_progress)  # fmt: skip

    def compute_intermediate_quantities(self, inputs, aggregate: bool = False) -> torch.Tensor:
        """``(n, C * P)``: per example, ``learning_rate * gradient`` at each of the C checkpoints,
        concatenated (Captum's scaling: the dot product of two rows is NOT the TracIn score
        unless every learning rate is 1); summed over examples with ``aggregate``."""
        states, lrs = self._states()
        bs = batches(inputs, self._rows(), "inputs")
        parts = [lr * torch.cat([per_example_grads(self.model, s, self._names, self.loss_fn, b) for b in bs])
                 for s, lr in zip(states, lrs)]  # fmt: skip
        out = torch.cat(parts, dim=1).detach()
        return out.sum(0, keepdim=True) if aggregate else out


class TracInCPFast(TracInCPBase):
    """TracIn on the weight of the last fully-connected layer, factorised (Captum's
    ``TracInCPFast``); the core is `xattr.influence.tracin_fast` with ``include_bias=False``."""

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer,
        train_dataset,
        checkpoints,
        checkpoints_load_func: Callable = _load_flexible_state_dict,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
        vectorize: bool = False,
    ) -> None:
        super().__init__(model, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size, test_loss_fn)
        if loss_fn is None:
            raise ValueError("TracInCPFast needs a loss_fn (as Captum's)")
        self.vectorize = vectorize  # speed only in Captum; unused
        if isinstance(final_fc_layer, str):
            try:
                final_fc_layer = model.get_submodule(final_fc_layer)
            except AttributeError as err:
                raise ValueError(f"Invalid final_fc_layer str: {final_fc_layer!r}: the model has no such module") from err
        if not isinstance(final_fc_layer, nn.Linear):
            raise TypeError(_not_linear_message(model, final_fc_layer))
        self.final_fc_layer = final_fc_layer

    def influence(self, inputs, k: int | None = None, proponents: bool = True, show_progress: bool = False):
        """``(n_test, n_train)`` scores, or with ``k`` the k proponents (``proponents=False``: opponents)."""
        _check_inputs(inputs)
        states, lrs = self._states()
        scores = tracin_fast(self.model, self.final_fc_layer, states, self.loss_fn, self.train_dataloader, inputs,
                             test_loss_fn=self.test_loss_fn, learning_rates=lrs, include_bias=False,
                             show_progress=show_progress)  # fmt: skip
        return scores if k is None else self._top(scores, k, proponents)

    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False) -> torch.Tensor:
        """``(n,)``: each example's fast TracIn on itself (default: the training data)."""
        states, lrs = self._states()
        data = self.train_dataloader if inputs is None else inputs
        return tracin_fast_self_influence(self.model, self.final_fc_layer, states, self.loss_fn, data, learning_rates=lrs,
                                          include_bias=False, show_progress=show_progress)  # fmt: skip


class TracInCPFastRandProj(TracInCPFast):
    """`TracInCPFast` through random projections, with the training features computed once at
    construction (Captum's ``TracInCPFastRandProj``); the core is a
    `xattr.influence.TracInFastIndex` built there, which also keeps the checkpoints it used."""

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer,
        train_dataset,
        checkpoints,
        checkpoints_load_func: Callable = _load_flexible_state_dict,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
        vectorize: bool = False,
        nearest_neighbors=None,
        projection_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, final_fc_layer, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size,
                         test_loss_fn, vectorize)  # fmt: skip
        self.nearest_neighbors = nearest_neighbors
        self.projection_dim = projection_dim
        self.seed = seed
        # NOTE: [Captum's projection seed]
        gen = torch.Generator().manual_seed(seed)
        if getattr(self.train_dataloader, "generator", None) is None:
            torch.empty((), dtype=torch.int64).random_(generator=gen)
        self.projection_quantities = tracin_fast_projections(model, self.final_fc_layer, projection_dim,
                                                             generator=gen, include_bias=False)  # fmt: skip
        states, lrs = self._states()
        # the training factors, computed once (as Captum does): NOTE: [A user-held index of training factors]
        self._index = _index(model, self.final_fc_layer, states, self.loss_fn, self.train_dataloader,
                             projections=self.projection_quantities, learning_rates=lrs, include_bias=False)  # fmt: skip
        self.src_intermediate_quantities = self._index.features()
        if nearest_neighbors is not None:
            nearest_neighbors.setup(self.src_intermediate_quantities)

    def compute_intermediate_quantities(self, inputs) -> torch.Tensor:
        """``(n, C k_g k_a)``: the (projected) feature vectors whose dot products are the scores."""
        return self._index.features(inputs, self.loss_fn)

    def influence(self, inputs=None, k: int | None = 5, proponents: bool = True):
        """With ``k=None`` the ``(n_test, n_train)`` projected scores; else (the default, k=5)
        the k proponents (``proponents=False``: opponents)."""
        _check_inputs(inputs)
        test = self._index.features(inputs, self.test_loss_fn)
        if k is None:
            return test @ self.src_intermediate_quantities.T
        if self.nearest_neighbors is None:
            return self._top(test @ self.src_intermediate_quantities.T, k, proponents)
        sign = 1.0 if proponents else -1.0
        indices, scores = self.nearest_neighbors.get_nearest_neighbors(sign * test, k)
        return KMostInfluentialResults(indices, sign * scores)

    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False):
        """Not available (as in Captum): random projections only save memory for scores
        against stored training features; use `TracInCPFast.self_influence`, which is exact."""
        raise NotImplementedError("TracInCPFastRandProj has no self_influence (as in Captum): use TracInCPFast.self_influence")

