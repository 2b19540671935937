"""Captum's ``NaiveInfluenceFunction`` and ``SimilarityInfluence`` over xattr's influence core.

NaiveInfluenceFunction reports Captum's numbers: ``g_test^T R R^T g_train`` with R the damped,
truncated inverse square root of the Hessian of the *summed* loss over the Hessian data
(positive = proponent, as ``xattr.influence.influence_function`` returns: the opposite sign
of Koh and Liang's I_up,loss; NOTE: [Influence function sign and scale]).
With N Hessian examples, Captum's H_sum + reg I = N (H_mean + reg/N I), so it is the core's
eigen-inverse with damping reg/N and tol tol/N, divided by N. Deliberate differences:

- the checkpoint is loaded into a copy of the model: the user's model is never changed (Captum
  loads it in place and sets ``requires_grad`` on the chosen layers); ``checkpoint=None`` uses
  the model as it is;
- ``seed`` is accepted and unused: the projection is the top eigenvectors, nothing is random
  (Captum calls ``torch.manual_seed(seed)``, resetting the global stream; xattr does not);
- the Hessian is decomposed in float64 (``eigh``), so scores agree with Captum's float32 ones
  to float32 rounding.

SimilarityInfluence computes every activation in memory, one forward pass per batch through
``at_layer``: ``activation_dir``, ``model_id`` and ``load_src_from_disk`` are accepted and
unused (nothing is written to disk, nothing stale is ever loaded). The ``zero_acts-<layer>``
entry lists ``[test_index, train_index]`` pairs with indices into the whole training set
(Captum's are positions inside each batch).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..._src.layers import at_layer
from ..._src.progress import progress
from ..._src.warn import warn
from ...influence._influence_function import LossGeometry, inverse_root
from ...influence._per_example import check_batch
from .influence import _GRADIENT_BYTES, KMostInfluentialResults

__all__ = ["NaiveInfluenceFunction", "SimilarityInfluence", "cosine_similarity", "euclidean_distance"]


def _load_state_dict(model: nn.Module, path: str) -> float:
    """Captum's default loader: a state dict (``module.`` prefixes of DataParallel dropped);
    returns its ``learning_rate`` entry or 1.0."""
    state = torch.load(path, map_location="cpu")
    lr = float(state.pop("learning_rate", 1.0)) if isinstance(state, dict) else 1.0
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state)
    return lr


def _concat_batches(data, batch_size, what: str) -> tuple[torch.Tensor, ...]:
    """All examples of a DataLoader, a Dataset (batched by ``batch_size``) or one tuple batch,
    as one tuple ``(*inputs, labels)``."""
    if isinstance(data, (tuple, list)):
        return check_batch(tuple(data), what)
    if not isinstance(data, DataLoader):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{what} is a Dataset, so batch_size must be a positive int, got {batch_size!r}")
        data = DataLoader(data, batch_size, shuffle=False)
    batches = [tuple(b) for b in data]
    if not batches:
        raise ValueError(f"{what} is empty")
    return check_batch(tuple(torch.cat(parts) for parts in zip(*batches)), what)


class _WithReduction:
    """A loss function without a ``.reduction`` attribute, told which one it applies."""

    def __init__(self, fn: Callable, reduction: str):
        self.fn, self.reduction = fn, reduction

    def __call__(self, out, labels):
        return self.fn(out, labels)


def _checked_loss(loss_fn, name: str, sample_wise: bool):
    if loss_fn is None:
        raise ValueError(f"NaiveInfluenceFunction needs {name}: a loss with reduction='none', e.g. nn.CrossEntropyLoss(reduction='none')")
    if not callable(loss_fn):
        raise TypeError(f"{name} must be callable, got {type(loss_fn).__name__}")
    red = getattr(loss_fn, "reduction", None)
    if sample_wise:
        if red is None:
            warn(f"{name} has no .reduction attribute and sample_wise_grads_per_batch=True: taken as a sum over the batch")
            return _WithReduction(loss_fn, "sum")
        if red not in ("sum", "mean"):
            raise ValueError(f"{name}.reduction must be 'sum' or 'mean' when sample_wise_grads_per_batch=True, got {red!r}")
    elif red is not None and red != "none":
        raise ValueError(f"{name}.reduction must be 'none' when sample_wise_grads_per_batch=False, got {red!r}")
    return loss_fn


class NaiveInfluenceFunction:
    """Captum 0.9's ``NaiveInfluenceFunction``: influence through the explicit Hessian's top
    eigenvectors, over ``xattr.influence``'s torch.func gradients and Hessian."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset,
        checkpoint: str | None,
        checkpoints_load_func: Callable = _load_state_dict,
        layers: list[str] | None = None,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        hessian_dataset=None,
        test_loss_fn: Callable | None = None,
        sample_wise_grads_per_batch: bool = False,
        projection_dim: int | None = 50,
        seed: int = 42,
        hessian_reg: float = 1e-6,
        hessian_inverse_tol: float = 1e-5,
        projection_on_cpu: bool = True,
        show_progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if layers is not None and (not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers)):
            raise ValueError(f"layers must be None or a non-empty list of module names, got {layers!r}")
        self.checkpoint = checkpoint
        self.checkpoints_load_func = checkpoints_load_func
        if checkpoint is None:
            self.model = model
        else:
            self.model = copy.deepcopy(model)
            checkpoints_load_func(self.model, checkpoint)
        self.sample_wise_grads_per_batch = bool(sample_wise_grads_per_batch)
        self.loss_fn = _checked_loss(loss_fn, "loss_fn", self.sample_wise_grads_per_batch)
        self.test_loss_fn = self.loss_fn if test_loss_fn is None else _checked_loss(test_loss_fn, "test_loss_fn", self.sample_wise_grads_per_batch)
        self.layers = layers
        self.batch_size = batch_size
        self.projection_dim = projection_dim
        self.seed = seed
        self.hessian_reg = float(hessian_reg)
        self.hessian_inverse_tol = float(hessian_inverse_tol)
        self.train_data = _concat_batches(train_dataset, batch_size, "train_dataset")
        hess = self.train_data if hessian_dataset is None else _concat_batches(hessian_dataset, batch_size, "hessian_dataset")
        self._geo = LossGeometry(self.model, layers, None, show_progress, max_bytes=_GRADIENT_BYTES)
        n = hess[0].shape[0]
        R = inverse_root(self._geo.hessian(hess, self.loss_fn), self.hessian_reg / n, self.hessian_inverse_tol / n, projection_dim)
        self._R64 = R / n**0.5  # Captum's R for the summed loss: H_sum^{-1} ~= R R^T
        device = torch.device("cpu") if projection_on_cpu else self._geo.flat.device
        self.R = self._R64.to(dtype=self._geo.flat.dtype, device=device)

    def get_name(self) -> str:
        return type(self).__name__

    def compute_intermediate_quantities(self, inputs_dataset, aggregate: bool = False, show_progress: bool = False, return_on_cpu: bool = True, test: bool = False) -> torch.Tensor:
        """Influence embeddings ``g^T R`` (N, k), or their sum (1, k) with ``aggregate``."""
        data = _concat_batches(inputs_dataset, 1, "inputs_dataset")
        loss_fn = self.test_loss_fn if test else self.loss_fn
        self._geo.show = bool(show_progress)
        try:
            g = self._geo.gradients(data, loss_fn, "intermediate quantities").double()
        finally:
            self._geo.show = False
        emb = g @ self._R64.to(g.device)
        if aggregate:
            emb = emb.sum(0, keepdim=True)
        emb = emb.to(self._geo.flat.dtype)
        return emb.cpu() if return_on_cpu else emb

    def influence(self, inputs, k: int | None = None, proponents: bool = True, show_progress: bool = False):
        """``(n_test, n_train)`` scores, or with an int ``k`` the ``KMostInfluentialResults``
        of the ``k`` highest (``proponents``) or lowest scores per test example."""
        test = self.compute_intermediate_quantities(inputs, show_progress=show_progress, return_on_cpu=False, test=True).double()
        train = self.compute_intermediate_quantities(self.train_data, show_progress=show_progress, return_on_cpu=False).double()
        scores = (test @ train.T).to(self._geo.flat.dtype)
        if k is None:
            return scores
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int or None, got {k!r}")
        values, idx = scores.topk(min(k, scores.shape[1]), dim=1, largest=bool(proponents))
        return KMostInfluentialResults(idx, values)

    def self_influence(self, inputs_dataset=None, show_progress: bool = False) -> torch.Tensor:
        """``|g^T R|^2`` for every example of ``inputs_dataset`` (default: the training set)."""
        data = self.train_data if inputs_dataset is None else inputs_dataset
        emb = self.compute_intermediate_quantities(data, show_progress=show_progress, return_on_cpu=False).double()
        return (emb**2).sum(1).to(self._geo.flat.dtype)


# ---------------------------------------------------------------------------------------------


def euclidean_distance(test: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Captum's pairwise euclidean distance of flattened rows, ``(n_test, n_train)``."""
    return torch.cdist(test.reshape(test.shape[0], -1)[None], train.reshape(train.shape[0], -1)[None])[0]


def cosine_similarity(test: torch.Tensor, train: torch.Tensor, replace_nan: int = 0) -> torch.Tensor:
    """Captum's pairwise cosine similarity of flattened rows; an all-zero row is first replaced
    by a row of ``replace_nan`` values (Captum's arithmetic, kept for the same numbers)."""
    a, b = test.reshape(test.shape[0], -1), train.reshape(train.shape[0], -1)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    fill = torch.tensor(float(replace_nan), dtype=a.dtype, device=a.device)
    a = torch.where(na != 0, a / torch.where(na != 0, na, 1), fill)
    b = torch.where(nb != 0, b / torch.where(nb != 0, nb, 1), fill)
    return a @ b.T


def _src_inputs(batch) -> tuple:
    """A dataset batch's model inputs: its first element when it is ``(inputs, labels)``."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


class SimilarityInfluence:
    """Captum 0.9's ``SimilarityInfluence``: training examples ranked by the similarity of their
    layer activations to each test example's, in memory (no activation files)."""

    def __init__(
        self,
        module: nn.Module,
        layers: str | list[str],
        influence_src_dataset,
        activation_dir: str,
        model_id: str = "",
        similarity_metric: Callable = cosine_similarity,
        similarity_direction: str = "max",
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers or not all(isinstance(n, str) for n in self.layers):
            raise ValueError(f"layers must be a module name or a non-empty list of names, got {layers!r}")
        self._modules = []
        for name in self.layers:
            try:
                self._modules.append(module.get_submodule(name))
            except AttributeError:
                raise ValueError(f"the model has no module named {name!r}") from None
        self.influence_src_dataset = influence_src_dataset
        self.activation_dir = activation_dir
        self.model_id = model_id
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        if similarity_direction not in ("max", "min"):
            raise ValueError(f"{similarity_direction} is not a valid value. Must be either 'max' or 'min'")
        self.similarity_direction = similarity_direction
        if not callable(similarity_metric):
            raise TypeError(f"similarity_metric must be callable, got {type(similarity_metric).__name__}")
        if similarity_metric is cosine_similarity:
            self.replace_nan = kwargs.get("replace_nan", -2 if similarity_direction == "max" else 2)
            similarity_metric = functools.partial(cosine_similarity, replace_nan=self.replace_nan)
        self.similarity_metric = similarity_metric
        self.influence_src_dataloader = DataLoader(influence_src_dataset, batch_size, shuffle=False)

    def influence(self, inputs, top_k: int = 1, additional_forward_args: Any = None, load_src_from_disk: bool = True, **kwargs: Any) -> dict:
        """``{layer: (indices, scores)}``, both ``(n_test, top_k)``, best first; a
        ``zero_acts-<layer>`` entry where the cosine metric met all-zero activations."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        split = at_layer(self.module, self._modules)
        extra = () if additional_forward_args is None else (tuple(additional_forward_args) if isinstance(additional_forward_args, tuple) else (additional_forward_args,))
        test_in = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.no_grad():
            test_acts = split.act(*test_in, *extra)
            src = [[] for _ in self._modules]
            for batch in progress(kwargs.get("show_progress", False), self.influence_src_dataloader, desc="train activations", unit="batch"):
                for i, a in enumerate(split.act(*_src_inputs(batch))):
                    src[i].append(a.detach())
        largest = self.similarity_direction == "max"
        result: dict = {}
        for name, a_test, parts in zip(self.layers, test_acts, src):
            a_src = torch.cat(parts)
            sim = self.similarity_metric(a_test.detach(), a_src)
            if not isinstance(sim, torch.Tensor) or sim.shape != (a_test.shape[0], a_src.shape[0]):
                got = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
                raise ValueError(f"similarity_metric must return shape (n_test, n_train) = {(a_test.shape[0], a_src.shape[0])}, got {got}")
            values, idx = sim.topk(min(top_k, sim.shape[1]), dim=1, largest=largest)
            result[name] = (idx, values)
            if hasattr(self, "replace_nan"):
                zero = (sim == self.replace_nan).nonzero()
                if zero.numel():
                    warn(f"Layer {name} has zero-vector activations for some inputs: their [input, train] index pairs are under 'zero_acts-{name}'", RuntimeWarning)
                    result[f"zero_acts-{name}"] = zero
        return result
