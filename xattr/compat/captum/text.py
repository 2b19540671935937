"""Captum's token helpers for text models: reference sequences and interpretable embeddings.

    from xattr.compat.captum import (TokenReferenceBase, configure_interpretable_embedding_layer,
                                     remove_interpretable_embedding_layer)

``TokenReferenceBase`` builds a baseline sequence of one token (usually padding).
``configure_interpretable_embedding_layer`` swaps a model's embedding submodule for an
``InterpretableEmbeddingBase`` that passes precomputed embeddings through, so that any input
method (``IntegratedGradients`` and the rest) can attribute the embedding vectors themselves;
``remove_interpretable_embedding_layer`` puts the original submodule back.

Unlike everything else in xattr these helpers change the model they are given: replacing the
submodule is what they are for. xattr's own route to the same numbers leaves the model alone:
``xattr.at_layer(f, model.embedding)`` with ``xattr.reference_tokens`` (docs/text.md).
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from torch import nn

__all__ = [
    "InterpretableEmbeddingBase",
    "TokenReferenceBase",
    "configure_interpretable_embedding_layer",
    "remove_interpretable_embedding_layer",
]


class TokenReferenceBase:
    """A maker of reference (baseline) token sequences: every position holds one token id.

    Args:
      reference_token_idx: the vocabulary index of the reference token, typically padding.
    """

    def __init__(self, reference_token_idx: int = 0) -> None:
        self.reference_token_idx = reference_token_idx

    def generate_reference(self, sequence_length: int, device: torch.device | str | None) -> torch.Tensor:
        """A 1-d LongTensor of ``sequence_length`` copies of the reference token, on ``device``.

        Captum 0.9 builds the same tensor from a Python list, so for an integer index the two
        agree in shape, dtype (int64) and values; for ``sequence_length == 0`` Captum's list is
        empty and its tensor float32, where this one stays int64.
        """
        try:
            length = operator.index(sequence_length)
            token = operator.index(self.reference_token_idx)
        except TypeError as err:
            raise TypeError(
                "TokenReferenceBase needs an integer sequence_length and reference_token_idx, got "
                f"{type(sequence_length).__name__} and {type(self.reference_token_idx).__name__}"
            ) from err
        if length < 0:
            raise ValueError(f"generate_reference: sequence_length must be >= 0, got {length}")
        return torch.full((length,), token, dtype=torch.long, device=device)


class InterpretableEmbeddingBase(nn.Module):
    """A stand-in for an embedding submodule whose forward returns the embeddings it is given.

    With it in place the model takes embedding vectors where it took token ids: compute them with
    ``indices_to_embeddings`` (the original submodule) and attribute them with any input method.

    Attributes:
      embedding: the original submodule (put back by ``remove_interpretable_embedding_layer``).
      full_name: its dotted name in the model, e.g. ``"bert.embeddings"``.
      num_embeddings, embedding_dim: copied from ``embedding`` where it has them, else None.
    """

    def __init__(self, embedding: nn.Module, full_name: str) -> None:
        super().__init__()
        self.num_embeddings = getattr(embedding, "num_embeddings", None)
        self.embedding_dim = getattr(embedding, "embedding_dim", None)
        self.embedding = embedding
        self.full_name = full_name

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """The embeddings, unchanged: the first positional argument, else the first keyword's value.

        The model's own call to its embedding submodule supplies the precomputed embeddings in
        place of token ids; any further arguments (offsets, position ids, ...) are ignored.
        """
        if inputs:
            return inputs[0]
        if kwargs:
            return next(iter(kwargs.values()))
        raise TypeError(
            f"InterpretableEmbeddingBase ({self.full_name!r}) was called with no arguments: it "
            "returns its first argument (or first keyword argument), the precomputed embeddings"
        )

    def indices_to_embeddings(self, *input: Any, **kwargs: Any) -> Any:
        """The original submodule's output for these arguments (token ids -> embeddings)."""
        return self.embedding(*input, **kwargs)

    def extra_repr(self) -> str:
        return f"full_name={self.full_name!r}"


def _parent_and_leaf(model: nn.Module, name: str, caller: str) -> tuple[nn.Module, str, Any]:
    """The module holding the dotted ``name``, the last part of the name, and what it holds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
        raise ValueError(f"{caller}: the layer name must be a dotted attribute path such as 'embedding', got {name!r}")
    parts = name.split(".")
    owner = model
    for depth, part in enumerate(parts):
        if not hasattr(owner, part):
            where = type(model).__name__ if depth == 0 else f"{'.'.join(parts[:depth])!r}"
            children = [n for n, _ in owner.named_children()] if isinstance(owner, nn.Module) else []
            listed = ", ".join(repr(c) for c in children[:20]) + (", ..." if len(children) > 20 else "")
            raise AttributeError(
                f"{caller}: the model has no layer {name!r}: {where} has no attribute {part!r}"
                + (f" (its submodules: {listed})" if children else "")
            )
        if depth < len(parts) - 1:
            owner = getattr(owner, part)
    return owner, parts[-1], getattr(owner, parts[-1])


def configure_interpretable_embedding_layer(
    model: nn.Module, embedding_layer_name: str = "embedding"
) -> InterpretableEmbeddingBase:
    """Replace ``model``'s embedding submodule with an ``InterpretableEmbeddingBase`` wrapping it.

    This changes ``model`` in place: from now on the model takes embeddings where it took token
    ids, until ``remove_interpretable_embedding_layer(model, interpretable_emb)`` puts the
    original back (a UserWarning says so on every call).

    Args:
      model: the module that holds the embedding.
      embedding_layer_name: the submodule's dotted attribute path, e.g. ``"embedding"`` or
        ``"bert.embeddings"`` (indices of ``nn.Sequential``/``nn.ModuleList`` work: ``"layers.0"``).

    Returns:
      The ``InterpretableEmbeddingBase`` now in the model; its ``indices_to_embeddings(ids)``
      runs the original embedding.

    Raises:
      AttributeError: the model has no attribute at that path (the message names the first part
        that is missing and the submodules present there).
      TypeError: the path leads to something that is not an ``nn.Module``.
      ValueError: that layer is already an ``InterpretableEmbeddingBase`` (Captum: AssertionError).
    """
    caller = "configure_interpretable_embedding_layer"
    owner, leaf, layer = _parent_and_leaf(model, embedding_layer_name, caller)
    if isinstance(layer, InterpretableEmbeddingBase):
        raise ValueError(
            f"{caller}: {embedding_layer_name!r} is already an InterpretableEmbeddingBase; call "
            "remove_interpretable_embedding_layer(model, interpretable_emb) before configuring it again"
        )
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{caller}: {embedding_layer_name!r} is a {type(layer).__name__}, not a torch.nn.Module")
    warnings.warn(
        f"configure_interpretable_embedding_layer replaced the model's {embedding_layer_name!r} with an "
        "InterpretableEmbeddingBase: the model now takes embedding vectors in its place. Call "
        "remove_interpretable_embedding_layer(model, interpretable_emb) when the attribution is done "
        "to restore the original layer.",
        UserWarning,
        stacklevel=2,
    )
    interpretable_emb = InterpretableEmbeddingBase(layer, embedding_layer_name)
    setattr(owner, leaf, interpretable_emb)
    return interpretable_emb


def remove_interpretable_embedding_layer(model: nn.Module, interpretable_emb: InterpretableEmbeddingBase) -> None:
    """Put the original embedding back at ``interpretable_emb.full_name`` in ``model`` (in place).

    Calling it again once the original is back changes nothing, as in Captum.

    Raises:
      TypeError: ``interpretable_emb`` is not an ``InterpretableEmbeddingBase``.
      AttributeError: the model has no attribute at ``interpretable_emb.full_name``.
      ValueError: that attribute holds neither ``interpretable_emb`` nor its original layer (it
        was configured on another model, or the slot was reassigned since); Captum overwrites it.
    """
    caller = "remove_interpretable_embedding_layer"
    if not isinstance(interpretable_emb, InterpretableEmbeddingBase):
        raise TypeError(
            f"{caller}: interpretable_emb must be the InterpretableEmbeddingBase returned by "
            f"configure_interpretable_embedding_layer, got {type(interpretable_emb).__name__}"
        )
    owner, leaf, current = _parent_and_leaf(model, interpretable_emb.full_name, caller)
    if current is not interpretable_emb and current is not interpretable_emb.embedding:
        raise ValueError(
            f"{caller}: the model's {interpretable_emb.full_name!r} is a {type(current).__name__}, neither "
            "this InterpretableEmbeddingBase nor the layer it wraps (was it configured on another model?)"
        )
    setattr(owner, leaf, interpretable_emb.embedding)
