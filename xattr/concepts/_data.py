"""Concepts, their example batches, random counterpart concepts, layer names and flattening.

A concept is a set of example *inputs* of any modality (images, token ids with masks, ...): the
model runs on them and the layer's activations are what the concept classifier sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from .._src import tree as T
from .._src.checks import _modules
from .._src.sampling import streams
from .._src.submodules import near_names
from ._cache import digest


@dataclass(frozen=True, eq=False)
class Concept:
    """A named set of example inputs for a concept (stripes, a sentiment, ...).

    Args:
      id: a unique integer id (it, ``name`` and ``tag`` identify the concept's cached activations).
      name: a unique name; results are keyed by it.
      data: the examples, one batch or several: a tensor (one batch of examples, dim 0 the
        batch), a tuple of tensors (one batch of the model's positional arguments), or any
        iterable of such batches (a list, a ``DataLoader`` yielding tensors or lists of tensors).
      tag: optional text naming the examples in cache keys (keyword only); change it when the
        examples change. `random_concepts` sets a digest of the drawn examples.

    Concepts compare and hash by identity, like Captum's.

    Example:
      >>> stripes = Concept(0, "stripes", striped_images)                # (N, C, H, W)
      >>> polite = Concept(1, "polite", DataLoader(TensorDataset(ids, mask), batch_size=32))
    """

    id: int
    name: str
    data: Any = field(default=None, repr=False)
    tag: str = field(default="", repr=False, kw_only=True)

    def __post_init__(self):
        if isinstance(self.id, bool) or not isinstance(self.id, int):
            raise TypeError(f"Concept: id must be an int, got {self.id!r} ({type(self.id).__name__})")
        if not isinstance(self.name, str):
            raise TypeError(f"Concept: name must be a str, got {self.name!r} ({type(self.name).__name__})")
        if not isinstance(self.tag, str):
            raise TypeError(f"Concept {self.name!r}: tag must be a str, got {type(self.tag).__name__}")
        _check_data(self.data, f"Concept {self.name!r}")

    @property
    def identifier(self) -> str:
        """``"name-id"`` (Captum's ``Concept.identifier``)."""
        return f"{self.name}-{self.id}"

    @property
    def cache_key(self) -> str:
        """The concept's key in caches: ``identifier``, then ``tag`` if any."""
        return f"{self.identifier}-{self.tag}" if self.tag else self.identifier

    def batches(self) -> Iterator[tuple]:
        """The concept's examples as tuples of model arguments, one tuple per batch."""
        return batches(self.data, f"concept {self.identifier!r}")


def _check_data(data, what: str) -> None:
    """Refuses data that is not examples: a scalar, a string, an empty or 0-d tensor batch (None: no data yet)."""
    if data is None:
        return
    one = (data,) if isinstance(data, torch.Tensor) else data
    if isinstance(one, tuple) and one and all(isinstance(t, torch.Tensor) for t in one):
        if any(t.ndim == 0 for t in one):
            raise ValueError(f"{what}: data must be a batch of examples (dim 0 the batch), got a 0-d tensor")
        if any(t.shape[0] == 0 for t in one):
            raise ValueError(f"{what} has no examples: its data is an empty batch (0 rows)")
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"{what}: data must be example inputs: a tensor, a tuple of tensors, or an iterable of batches "
            f"(a list, a DataLoader); got {type(data).__name__}"
        )


def _rows(batch: tuple) -> int | None:
    """The batch's size along dim 0 (its first tensor's), None when it has no tensor with a dim 0."""
    first = next((t for t in batch if isinstance(t, torch.Tensor) and t.ndim), None)
    return None if first is None else first.shape[0]


def batches(data, what: str = "concept") -> Iterator[tuple]:
    """Yields ``data`` as argument tuples: a tensor or a tuple of tensors is one batch, else iterated."""
    if data is None:
        raise ValueError(f"{what} has no data: give example inputs (a tensor, a tuple of tensors or batches)")
    if isinstance(data, torch.Tensor) or isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        one = (data,) if isinstance(data, torch.Tensor) else data
        if _rows(one) == 0:
            raise ValueError(f"{what} has no examples: its data is an empty batch (0 rows)")
        yield one
        return
    n = 0
    for item in data:
        if isinstance(item, torch.Tensor):
            item = (item,)
        elif isinstance(item, (tuple, list)):
            item = tuple(item)
        else:
            raise TypeError(f"{what}: a batch must be a tensor or a tuple/list of tensors, got {type(item).__name__}")
        if _rows(item) == 0:
            raise ValueError(f"{what}: batch {n} has no examples (0 rows); drop empty batches")
        yield item
        n += 1
    if n == 0:
        raise ValueError(f"{what} has no examples (its data yielded no batch)")


def random_concepts(
    pool, n: int, size: int, *, generator=0, first_id: int = 1_000_000, name: str = "random"
) -> list[Concept]:
    """``n`` random concepts, each ``size`` examples drawn without replacement from ``pool``.

    TCAV's significance test compares a concept with *random counterparts*: sets of examples
    sharing nothing in particular. Each concept gets its own stream of ``generator`` (NOTE:
    [Explicit randomness]), so concept i is the same whatever ``n`` is.

    Args:
      pool: example inputs to draw from: a tensor (N, ...) or a tuple of tensors sharing dim 0.
      n: how many concepts; size: examples in each.
      generator: int seed, torch.Generator, or None (torch's global generator).
      first_id: id of the first concept (the others follow); pick ids your concepts do not use.
      name: prefix of the names, ``f"{name}{i}_s{seed}"``; each concept's ``tag`` is a digest
        of its examples (NOTE: [Cache keys of drawn random concepts]).

    Example:
      >>> randoms = random_concepts(torch.rand(500, 3, 32, 32), n=11, size=50, generator=0)
    """
    args = (pool,) if isinstance(pool, torch.Tensor) else tuple(pool)
    total = T.batch_size(args)
    if not 0 < size <= total:
        raise ValueError(f"size must be in [1, {total}] (the pool's size), got {size}")
    if generator is None:
        generator = int(torch.randint(0, 2**62, (1,)))
    elif isinstance(generator, torch.Generator):
        generator = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    out = []
    for i, seed in enumerate(streams(generator, n)):
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:size]
        data = tuple(a[idx.to(a.device)] for a in args)
        one = data[0] if len(data) == 1 else data
        out.append(Concept(first_id + i, f"{name}{i}_s{generator}", one, tag=digest(data)))
    return out


# NOTE: [Cache keys of drawn random concepts]
# The TCAV cache keys a concept's activations and CAVs by its name, id and tag, so the key of a
# drawn concept must change whenever its examples do: another pool, another size, another seed.
# Its tag is a digest of the drawn examples' dtypes, shapes and bytes: the same pool, size and
# seed give the same key in any process (and hit the cache), anything else a new one. The tag
# is kept out of the name, which seeds the CAVs' streams: results do not change with it. Hashing
# the drawn examples rather than the pool costs ``size`` examples, not the whole pool.


def root_module(f) -> nn.Module | None:
    """The nn.Module behind a model function (through xattr.target, partials, bound methods)."""
    found = _modules(f)
    return found[0] if found else None


def named_layers(f, layers) -> list[tuple[str, nn.Module]]:
    """``layers`` as (name, module) pairs.

    ``layers``: a module, a dotted name of a submodule of the model ("layer1.0.conv1"), a list of
    those, or a dict {name: module or dotted name}. Modules given as objects are named by their
    path in the model where it can be found.
    """
    root = root_module(f)
    if isinstance(layers, dict):
        items = list(layers.items())
    elif isinstance(layers, (list, tuple)):
        items = [(None, l) for l in layers]
    else:
        items = [(None, layers)]
    if not items:
        raise ValueError("layers is empty: give at least one layer")
    paths = {id(m): p for p, m in root.named_modules()} if root is not None else {}
    out = []
    for i, (name, layer) in enumerate(items):
        if isinstance(layer, str):
            if root is None:
                raise TypeError(f"layer {layer!r} is a name but the model function wraps no nn.Module to look it up in")
            try:
                module = root.get_submodule(layer)
            except AttributeError:
                raise ValueError(
                    f"the model has no submodule {layer!r}{near_names(root, layer)}; see model.named_modules()"
                ) from None
            name = layer if name is None else name
        elif isinstance(layer, nn.Module):
            module = layer
            name = (paths.get(id(layer)) or f"layer{i}") if name is None else name
        else:
            raise TypeError(f"a layer must be an nn.Module or a submodule name, got {type(layer).__name__}")
        out.append((str(name), module))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique, got {names}")
    return out


def flatten(h, lead: int = 1) -> torch.Tensor:
    """A layer's value (a tensor or a tuple) as (B, [K,] F): float leaves flattened and concatenated."""
    floats = [t for t in T.leaves(h) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    parts = [t.reshape(tuple(t.shape[:lead]) + (-1,)) for t in floats]
    if not parts:
        raise TypeError("the layer has no floating-point value to classify")
    return parts[0] if len(parts) == 1 else torch.cat(parts, lead)
