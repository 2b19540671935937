"""Captum 0.9's interpretable inputs for LLM attribution: what a feature of a prompt is.

    from xattr.compat.captum import TextTemplateInput, TextTokenInput, ImageMaskInput

An interpretable input pairs what the model consumes (a string, token ids, an image) with a
(1, n_itp_features) tensor of ones, its interpretable representation: a perturbation method
sets some of those entries to 0 and ``to_model_input`` builds the model input in which those
features are replaced by their baselines. ``format_attr`` maps attributions of the
interpretable features back onto the raw features (segments grouped by a mask share one score).

Differences from Captum's classes (mostly where Captum would crash or misread its input):

* bad arguments raise TypeError or ValueError that say what to pass (Captum asserts);
* ``TextTemplateInput`` and ``ImageMaskInput`` read one perturbation only, as Captum does, but
  refuse a perturbed tensor that is not (1, n_itp_features) instead of reading its first row;
  ``TextTokenInput.to_model_input`` takes any (k, n_itp_features) batch, as in Captum;
* ``TextTemplateInput`` also takes tuples of values, checks that list baselines have one entry
  per value, and sets ``formatted_mask`` (``range(n_features)``) when no mask is given;
* ``TextTokenInput`` takes numpy integer ids as ``baselines`` and refuses a baseline token that
  the tokenizer cannot map to an id;
* ``TextTemplateInput.format_attr`` also takes a 1-D attribution, ``ImageMaskInput`` takes
  numpy masks and masks on any device;
* ``plot_mask_overlay`` draws on a pyplot-free Agg figure unless ``show=True``, and its segment
  colours are the same on every call (a seeded generator instead of numpy's global one).

As in Captum, the interpretable features of a ``TextTemplateInput`` mask are ordered as Python
iterates ``set(mask)``: for integers this is not always ascending (``[1, 8]`` puts 8 first) and
for strings it changes from one process to the next (hash randomisation). Also as in Captum,
``TextTokenInput`` removes a token whose entry is anything but 1 (0.5 removes it), while the
template and image inputs remove a feature only where its entry is 0 (0.5 keeps it).
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageMaskInput", "InterpretableInput", "TextTemplateInput", "TextTokenInput"]


def keyed_list(values, expected: str) -> tuple[list, list]:
    """``(keys, values as a list)`` of a dict (in its order) or ``([], list)`` of a list or
    tuple; anything else is a TypeError that starts with ``expected``."""
    if isinstance(values, dict):
        keys = list(values)
        return keys, [values[k] for k in keys]
    if isinstance(values, (list, tuple)):
        return [], list(values)
    raise TypeError(f"{expected}, got {type(values).__name__}")


def _identity(x):
    return x


def _one_perturbation(perturbed, n: int, cls: str) -> Tensor:
    perturbed = torch.as_tensor(perturbed)
    if perturbed.shape != (1, n):
        raise ValueError(
            f"{cls}.to_model_input takes one perturbation, a tensor of shape (1, {n}) (0 = feature "
            f"replaced by its baseline); got shape {tuple(perturbed.shape)}"
        )
    return perturbed[0]


class InterpretableInput(ABC):
    """The interface: a model input seen as ``n_itp_features`` features named by ``values``."""

    n_itp_features: int
    values: list

    @abstractmethod
    def to_tensor(self) -> Tensor:
        """The interpretable representation of the unperturbed input, (1, n_itp_features)."""

    @abstractmethod
    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> Any:
        """The model input for a perturbed interpretable tensor (None: the original input)."""

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """Attributions of the interpretable features, (..., n_itp_features), in the form the
        user reads them; here unchanged."""
        return itp_attr


class TextTemplateInput(InterpretableInput):
    """Text built from a template whose slots (words, phrases) are the features.

    Args:
      template: a ``str.format`` string, or a callable that takes the values (positionally, or
        as keywords when ``values`` is a dict) and returns the text.
      values: the slots' texts, a list (or tuple) or a dict keyed by the template's names.
      baselines: what a removed slot becomes: a list or dict like ``values``, or a callable
        returning one (called on each perturbation); None means the empty string.
      mask: a group id per slot (list or dict like ``values``); slots sharing an id form one
        interpretable feature and get the same attribution.
    """

    def __init__(self, template: str | Callable[..., str], values, baselines=None, mask=None) -> None:
        self.dict_keys, values = keyed_list(values, "values must be a list of strings or a dict of strings")
        self.values = values
        n = self.n_features = len(values)
        if baselines is None:
            baselines = [""] * n
        elif not callable(baselines):
            baselines = self._as_list(baselines, "baselines", allow_callable=True)
        self.baselines = baselines
        if mask is None:
            self.formatted_mask = list(range(n))
            self.n_itp_features = n
        else:
            mask = self._as_list(mask, "mask")
            ids = set(mask)  # Captum's feature order: the set's iteration order
            index = {mid: i for i, mid in enumerate(ids)}
            self.formatted_mask = [index[mid] for mid in mask]
            self.n_itp_features = len(ids)
        self.mask = mask
        self.template = template
        if isinstance(template, str):
            self.format_fn = template.format
        elif callable(template):
            self.format_fn = template
        else:
            raise TypeError(f"template must be a format string or a callable, got {type(template).__name__}")
        if isinstance(template, str):  # its slots and the values must match now, not at the first perturbation
            try:
                self.to_model_input()
            except (IndexError, KeyError) as err:
                raise ValueError(f"template {template!r} does not take the values {values!r}"
                                 f"{' (keys ' + repr(self.dict_keys) + ')' if self.dict_keys else ''}: "
                                 f"{type(err).__name__}: {err}") from None

    def _as_list(self, arg, name: str, allow_callable: bool = False, returned: bool = False) -> list:
        """``arg`` (a dict when values is one, else a list) as a list with one entry per value."""
        what = "be a dict" if self.dict_keys else "be a list"
        alt = " or a callable returning one" if allow_callable else ""
        src = f"{name} returned by the callable" if returned else name
        if self.dict_keys:
            if not isinstance(arg, dict):
                raise TypeError(f"values is a dict, so {src} must {what}{alt}; got {type(arg).__name__}")
            missing = [k for k in self.dict_keys if k not in arg]
            if missing:
                raise ValueError(f"{src} lacks the keys {missing} of values")
            return [arg[k] for k in self.dict_keys]
        if not isinstance(arg, (list, tuple)):
            raise TypeError(f"values is a list, so {src} must {what}{alt}; got {type(arg).__name__}")
        if len(arg) != len(self.values):
            raise ValueError(f"{src} needs one entry per value ({len(self.values)}), got {len(arg)}")
        return list(arg)

    def to_tensor(self) -> Tensor:
        return torch.ones(1, self.n_itp_features)

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> str:
        values = list(self.values)
        if perturbed_tensor is not None:
            row = _one_perturbation(perturbed_tensor, self.n_itp_features, "TextTemplateInput")
            if callable(self.baselines):
                baselines = self._as_list(self.baselines(), "baselines", returned=True)
            else:
                baselines = self.baselines
            keep = (row[self.formatted_mask] != 0).tolist() if values else []
            values = [v if k else b for v, b, k in zip(values, baselines, keep)]
        if self.dict_keys:
            return self.format_fn(**dict(zip(self.dict_keys, values)))
        return self.format_fn(*values)

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """(..., n_itp_features) -> (..., n_features): each slot gets its group's attribution."""
        if self.mask is None:
            return itp_attr
        index = torch.tensor(self.formatted_mask, dtype=torch.long, device=itp_attr.device)
        return itp_attr.index_select(-1, index)


class TextTokenInput(InterpretableInput):
    """Text whose tokens (under ``tokenizer``) are the features; the model input is token ids.

    Args:
      text: the prompt.
      tokenizer: a Hugging Face style tokenizer (``encode``, ``convert_tokens_to_ids``,
        ``convert_ids_to_tokens``).
      baselines: the id (int) or the token (str) that replaces a removed token.
      skip_tokens: token ids or token strings that are not features (kept as they are, e.g.
        BOS or [CLS]); strings are converted with ``convert_tokens_to_ids``.
    """

    def __init__(self, text: str, tokenizer, baselines: int | str = 0, skip_tokens=None) -> None:
        self.inp_tensor = tokenizer.encode(text, return_tensors="pt")
        self.itp_tensor = self.inp_tensor
        self.itp_mask = None
        if isinstance(skip_tokens, Tensor):
            skip_tokens = skip_tokens.reshape(-1).tolist()
        if skip_tokens:
            if any(isinstance(t, str) for t in skip_tokens):
                skip_tokens = [tokenizer.convert_tokens_to_ids(t) if isinstance(t, str) else t for t in skip_tokens]
            known = [int(t) for t in skip_tokens if t is not None]
            skip = torch.tensor(known, dtype=self.inp_tensor.dtype)
            self.itp_mask = ~torch.isin(self.inp_tensor, skip)
            self.itp_tensor = self.inp_tensor[self.itp_mask].unsqueeze(0)
        self.skip_tokens = skip_tokens
        self.values = tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist())
        self.tokenizer = tokenizer
        self.n_itp_features = len(self.values)
        if isinstance(baselines, str):
            baseline_id = tokenizer.convert_tokens_to_ids([baselines])[0]
            if baseline_id is None:
                raise ValueError(f"the tokenizer has no id for the baseline token {baselines!r}; pass a token id")
            self.baselines = baseline_id
        elif isinstance(baselines, numbers.Integral) and not isinstance(baselines, bool):
            self.baselines = baselines if type(baselines) is int else int(baselines)
        else:
            raise TypeError(f"baselines must be a token id (int) or a token string, got {type(baselines).__name__}")

    def to_tensor(self) -> Tensor:
        return torch.ones_like(self.itp_tensor)

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> Tensor:
        """Token ids (k, L) for k perturbations (k, n_itp_features): each entry that is not 1
        puts the baseline id at its token; skipped tokens stay."""
        if perturbed_tensor is None:
            return self.inp_tensor
        perturbed = torch.as_tensor(perturbed_tensor)
        if perturbed.ndim != 2 or perturbed.shape[1] != self.n_itp_features:
            raise ValueError(
                f"TextTokenInput.to_model_input takes perturbations of shape (k, {self.n_itp_features}), "
                f"one row per perturbation (1 = token kept); got shape {tuple(perturbed.shape)}"
            )
        device, k = perturbed.device, perturbed.shape[0]
        itp = self.itp_tensor.to(device).expand(k, -1)
        new_itp = torch.where(perturbed != 1, self.baselines, itp)
        if self.itp_mask is None:
            return new_itp
        out = self.inp_tensor.to(device).expand(k, -1).clone()
        return out.masked_scatter_(self.itp_mask.to(device).expand(k, -1), new_itp)


class ImageMaskInput(InterpretableInput):
    """An image whose segments are the features; removed segments are painted ``baseline``.

    Args:
      image: a ``PIL.Image.Image`` (RGB).
      mask: (H, W) segment ids, one per pixel (None: the whole image is one feature).
      mask_list: (H, W) boolean masks, one per feature, which may overlap; replaces ``mask``.
      baseline: the RGB colour of removed pixels.
      processor_fn: turns the (perturbed) image into the model input (e.g. a multimodal
        processor); the default returns the image.
    """

    def __init__(self, image, mask=None, mask_list=None, baseline=(255, 255, 255), processor_fn: Callable = _identity) -> None:
        super().__init__()
        self.processor_fn = processor_fn
        self.image = image
        self.baseline = baseline
        shape = (image.size[1], image.size[0])
        if mask_list is not None:
            mask_list = [torch.as_tensor(m) for m in mask_list]
            for i, m in enumerate(mask_list):
                if tuple(m.shape) != shape:
                    raise ValueError(f"mask_list[{i}] has shape {tuple(m.shape)}; each mask must be the image's (H, W) = {shape}")
            ids = list(range(len(mask_list)))
            mask = torch.empty(0)
        else:
            if mask is None:
                mask = torch.zeros(shape, dtype=torch.int32)
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)}; it must be the image's (H, W) = {shape}")
            ids = torch.unique(mask).cpu().tolist()
            mask_list = []
        self.mask = mask
        self.mask_list = mask_list
        self.n_itp_features = len(ids)
        self.mask_id_to_idx = {int(mid): i for i, mid in enumerate(ids)}
        self.values = [f"image_feature_{mid}" for mid in ids]
        self.original_model_inputs = processor_fn(image)

    def to_tensor(self) -> Tensor:
        return torch.ones(1, self.n_itp_features)

    def _feature_index(self, device=None) -> Tensor:
        """(H, W): each pixel's interpretable feature (``mask`` ids -> 0..n-1)."""
        mask = self.mask.to(device)
        mask = mask.long() if mask.dtype == torch.bool else mask
        return torch.searchsorted(torch.unique(mask), mask.contiguous())

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> Any:
        if perturbed_tensor is None:
            return self.original_model_inputs
        import PIL.Image

        removed = (_one_perturbation(perturbed_tensor, self.n_itp_features, "ImageMaskInput") == 0).cpu()
        if self.mask_list:
            stacked = torch.stack([m.cpu().bool() for m in self.mask_list])
            drop = (stacked & removed[:, None, None]).any(0)
        elif self.n_itp_features:
            drop = removed[self._feature_index("cpu")]
        else:
            drop = torch.zeros(self.image.size[::-1], dtype=torch.bool)
        pixels = np.array(self.image)
        pixels[drop.numpy()] = self.baseline
        return self.processor_fn(PIL.Image.fromarray(pixels.astype("uint8")))

    def get_mask_list(self) -> list:
        """One boolean (H, W) mask per interpretable feature."""
        return self.mask_list or [self.mask == mid for mid in self.mask_id_to_idx]

    def format_pixel_attr(self, itp_attr: Tensor) -> Tensor:
        """(..., n_itp_features) -> (..., H, W): each pixel gets the sum of the attributions of
        the features that contain it."""
        h, w = self.image.size[1], self.image.size[0]
        if self.mask_list:
            dtype = torch.promote_types(torch.get_default_dtype(), itp_attr.dtype)
            masks = torch.stack([m.to(itp_attr.device).bool() for m in self.mask_list]).reshape(len(self.mask_list), h * w)
            flat = itp_attr.to(dtype).reshape(-1, itp_attr.shape[-1]) @ masks.to(dtype)
            return flat.reshape(*itp_attr.shape[:-1], h, w)
        return itp_attr[..., self._feature_index(itp_attr.device)]

    def plot_mask_overlay(self, show: bool = False, border_width: int = 0, show_legends: bool = True):
        """The image with each segment tinted its own colour, optionally outlined
        (``border_width`` pixels) and labelled with its id; (fig, ax), or None when ``show``."""
        from .llm_result import _draw_mask_border, _draw_mask_legend, _finish, _new_axes

        fig, ax = _new_axes(show)
        ax.imshow(self.image)
        fig.set_facecolor("white")
        colours = np.concatenate([np.random.default_rng(0).random((self.n_itp_features, 3)), np.full((self.n_itp_features, 1), 0.6)], 1)
        for m, colour, mid in zip(self.get_mask_list(), colours, self.mask_id_to_idx):
            m = m.cpu().numpy().astype(bool)
            ax.imshow(m[..., None] * colour)
            if border_width > 0:
                _draw_mask_border(ax, m, border_width, np.array([*colour[:3], 0.8]))
            if show_legends:
                _draw_mask_legend(ax, m, str(mid))
        ax.axis("off")
        return _finish(fig, ax, show)
