"""Captum 0.9's ``LLMAttributionResult`` and the readable token strings of its output tokens.

    result = LLMAttributionResult(seq_attr=[...], token_attr=[[...]], input_tokens=[...],
                                  output_tokens=pretty_tokens(generated_ids, tokenizer))
    fig, ax = result.plot_token_attr()        # a plain Agg figure; show=True uses pyplot

``seq_attr`` (one score per input feature), ``token_attr`` (one row per output token) and
``output_probs`` accept any array-like and are stored as tensors (a tensor is kept as given,
anything else goes through ``torch.tensor``), as in Captum. Differences: a wrong shape is a
ValueError (Captum asserts, and its message for ``output_probs`` names the wrong arguments);
the plots never touch pyplot unless ``show=True``; ``plot_image_heatmap`` also draws grey-scale
images; there is no dataclass ``__eq__`` (Captum's compares tensors with ``==`` and fails for
more than one element), and ``__repr__`` is xattr's own.

As in Captum, ``seq_attr_dict`` is keyed by token string, so a token that occurs twice keeps
only its last score.
"""

from __future__ import annotations

import warnings
from textwrap import shorten

import numpy as np
import torch
from torch import Tensor

from .llm_inputs import ImageMaskInput

__all__ = ["LLMAttributionResult", "pretty_tokens"]


# ----------------------------------------------------------------------------- drawing helpers (shared with llm_inputs)


def _new_axes(show: bool, figsize=None):
    """(fig, ax): pyplot's when the figure is to be shown, else a plain Agg Figure."""
    if show:
        from matplotlib import pyplot

        return pyplot.subplots(figsize=figsize)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _finish(fig, ax, show: bool):
    if show:
        from matplotlib import pyplot

        pyplot.show()
        return None
    return fig, ax


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion by the 4-neighbour cross, pixels outside the image counting as False."""
    for _ in range(iterations):
        p = np.pad(mask, 1, constant_values=False)
        mask = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask


def _draw_mask_border(ax, mask: np.ndarray, width: int, colour: np.ndarray) -> None:
    """Paints the ``width`` outermost pixels inside ``mask`` in ``colour`` (RGBA)."""
    if mask.any():
        border = mask & ~_erode(mask, width)
        ax.imshow(border[..., None] * np.asarray(colour).reshape(1, 1, -1))


def _draw_mask_legend(ax, mask: np.ndarray, label: str) -> None:
    """Writes ``label`` in a dark box at the mask's centroid."""
    if mask.any():
        rows, cols = np.nonzero(mask)
        ax.text(cols.mean(), rows.mean(), label, color="white", fontsize=10, ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.6})


def _colour_map():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])


def _tick_labels(tokens, width: int | None = 50) -> list:
    labels = [repr(t)[1:-1] for t in tokens]
    return labels if width is None else [shorten(t, width=width, placeholder="...") for t in labels]


class LLMAttributionResult:
    """What an LLM attribution returns: scores of the input features for the whole generated
    sequence (``seq_attr``, shape (n_in,)) and optionally per output token (``token_attr``,
    (n_out, n_in)), the token strings, the output tokens' probabilities and the input object."""

    def __init__(self, *, seq_attr, token_attr=None, input_tokens, output_tokens, inp=None, output_probs=None) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.seq_attr = seq_attr
        self.token_attr = token_attr
        self.output_probs = output_probs
        self.inp = inp

    @staticmethod
    def _tensor(value):
        return value if value is None or isinstance(value, Tensor) else torch.tensor(value)

    @property
    def seq_attr(self) -> Tensor:
        return self._seq_attr

    @seq_attr.setter
    def seq_attr(self, value) -> None:
        value = self._tensor(value)
        if value.ndim != 1 or value.shape[0] != len(self.input_tokens):
            raise ValueError(
                f"seq_attr must be 1-D with one score per input token ({len(self.input_tokens)}); "
                f"got shape {tuple(value.shape)}"
            )
        self._seq_attr = value

    @property
    def token_attr(self) -> Tensor | None:
        return self._token_attr

    @token_attr.setter
    def token_attr(self, value) -> None:
        value = self._tensor(value)
        want = (len(self.output_tokens), len(self.input_tokens))
        if value is not None and tuple(value.shape) != want:
            raise ValueError(
                f"token_attr must be 2-D, (output tokens, input tokens) = {want}; got shape {tuple(value.shape)}"
            )
        self._token_attr = value

    @property
    def output_probs(self) -> Tensor | None:
        return self._output_probs

    @output_probs.setter
    def output_probs(self, value) -> None:
        value = self._tensor(value)
        if value is not None and (value.ndim != 1 or value.shape[0] != len(self.output_tokens)):
            raise ValueError(
                f"output_probs must be 1-D with one probability per output token ({len(self.output_tokens)}); "
                f"got shape {tuple(value.shape)}"
            )
        self._output_probs = value

    @property
    def seq_attr_dict(self) -> dict:
        """``{input token: its sequence attribution}`` (a repeated token keeps its last score)."""
        return dict(zip(self.input_tokens, self.seq_attr.cpu().tolist()))

    def __repr__(self) -> str:
        return (
            f"LLMAttributionResult(input_tokens={self.input_tokens!r}, output_tokens={self.output_tokens!r}, "
            f"seq_attr={self.seq_attr!r}, token_attr={self.token_attr!r}, output_probs={self.output_probs!r}, "
            f"inp={self.inp!r})"
        )

    def plot_token_attr(self, show: bool = False):
        """A heat map of ``token_attr``: output tokens down, input tokens across (on top), each
        cell written with its value, red negative and green positive around a white 0.
        Returns (fig, ax), or None when ``show``."""
        if self.token_attr is None:
            raise ValueError("token_attr is None: no per-token attribution was computed; plot_seq_attr draws seq_attr")
        data = self.token_attr.detach().cpu().numpy()
        bound = float(np.abs(data).max()) if data.size else 0.0
        fig, ax = _new_axes(show)
        ax.grid(False)
        fig.set_size_inches(max(data.shape[1] * 1.3, 6.4), max(data.shape[0] / 2.5, 4.8))
        im = ax.imshow(data, vmin=-bound, vmax=bound, cmap=_colour_map(), aspect="auto")
        fig.set_facecolor("white")
        fig.colorbar(im, ax=ax).ax.set_ylabel("Token Attribution", rotation=-90, va="bottom")
        ax.set_xticks(np.arange(data.shape[1]), labels=_tick_labels(self.input_tokens),
                      rotation=-30, ha="right", rotation_mode="anchor")
        ax.set_yticks(np.arange(data.shape[0]), labels=_tick_labels(self.output_tokens, None))
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        shade = im.norm(data)
        for (i, j), value in np.ndenumerate(data):
            colour = "black" if 0.2 < shade[i, j] < 0.8 else "white"
            ax.text(j, i, "%.4f" % value, ha="center", va="center", color=colour)
        return _finish(fig, ax, show)

    def plot_seq_attr(self, show: bool = False):
        """A bar chart of ``seq_attr`` over the input tokens (blue positive, red negative).
        Returns (fig, ax), or None when ``show``."""
        data = self.seq_attr.detach().cpu().numpy()
        n = data.shape[0]
        fig, ax = _new_axes(show)
        fig.set_size_inches(max(n / 2, 6.4), max(n / 4, 4.8))
        ax.set_xticks(range(n), labels=_tick_labels(self.input_tokens), rotation=-30, ha="right", rotation_mode="anchor")
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        fig.set_facecolor("white")
        ax.bar(range(n), np.maximum(data, 0), align="center", color="#4772b3")
        ax.bar(range(n), np.minimum(data, 0), align="center", color="#d0365b")
        ax.set_ylabel("Sequence Attribution", rotation=90, va="bottom")
        return _finish(fig, ax, show)

    def plot_image_heatmap(self, show: bool = False, target_token_pos=None, border_width: int = 2, show_legends: bool = True):
        """The input image in grey under a heat map of its segments' attributions.

        ``target_token_pos``: None for ``seq_attr``; an int for that output token's row of
        ``token_attr``; ``(m, n)`` for the sum of rows m..n-1. Each segment is outlined
        (``border_width`` pixels, 0 for none) in a darker shade of its colour and labelled with
        its mask id when ``show_legends``. Only for an ``ImageMaskInput`` as ``inp``.
        Returns (fig, ax), or None when ``show``.
        """
        inp = self.inp
        if not isinstance(inp, ImageMaskInput):
            raise ValueError("plot_image_heatmap needs the result's inp to be an ImageMaskInput")
        if target_token_pos is None:
            attr = self.seq_attr
        elif self.token_attr is None:
            raise ValueError("token_attr is None: no per-token attribution was computed; use target_token_pos=None")
        elif isinstance(target_token_pos, int):
            attr = self.token_attr[target_token_pos]
        else:
            start, stop = target_token_pos
            attr = self.token_attr[start:stop].sum(0)
        attr = attr.detach()
        picture = np.asarray(inp.image)
        fig, ax = _new_axes(show)
        ax.imshow(picture.mean(axis=2) if picture.ndim == 3 else picture, cmap="gray")
        pixels = inp.format_pixel_attr(attr.unsqueeze(0))[0].cpu().numpy()
        bound = np.abs(pixels).max()
        cmap, alpha = _colour_map(), 0.8
        heat = ax.imshow(pixels, vmin=-bound, vmax=bound, cmap=cmap, alpha=alpha)
        fig.colorbar(heat, ax=ax).ax.set_ylabel("Attribution", rotation=-90, va="bottom")
        scores = attr.cpu().numpy()
        for i, (m, mid) in enumerate(zip(inp.get_mask_list(), inp.mask_id_to_idx)):
            m = m.cpu().numpy().astype(bool)
            if not m.any():
                continue
            if border_width > 0:
                shade = (scores[i] / bound + 1) / 2 if bound > 0 else 0.5
                _draw_mask_border(ax, m, border_width, np.array([*(np.array(cmap(shade))[:3] * 0.7), alpha]))
            if show_legends:
                _draw_mask_legend(ax, m, str(mid))
        fig.set_facecolor("white")
        ax.axis("off")
        return _finish(fig, ax, show)


# ----------------------------------------------------------------------------- pretty tokens


def _clean(token: str) -> str:
    return token.replace("\n", "\\n").strip()


def pretty_tokens(ids, tokenizer) -> list:
    """The text of each token id, without byte-level markers such as ``Ġ`` or WordPiece's ``##``.

    The ids are decoded to one string and re-tokenized with character offsets; each id gets its
    slice of the text (stripped, newlines written ``\\n``, `` [OVERLAP]`` appended where its span
    starts inside the previous one). Re-tokenized pieces that do not match the next id are
    skipped with a warning; when that leaves fewer strings than ids, each id is decoded on its
    own instead (`_pretty_tokens_one_by_one`). Captum 0.9's ``_convert_ids_to_pretty_tokens``
    gives the same strings; where it raises IndexError (pieces left after every id matched, a
    last id that decodes to a lone "�") this skips or keeps the piece, and a tokenizer without
    offsets (a slow one) goes to the one-by-one decoding instead of raising.
    """
    ids = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
    text = tokenizer.decode(ids)
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    except NotImplementedError:
        warnings.warn("the tokenizer gives no character offsets; decoding each token on its own", stacklevel=2)
        return _pretty_tokens_one_by_one(ids, tokenizer)
    found, spans = list(enc["input_ids"]), list(enc["offset_mapping"])
    # a piece with an empty span reaches to the start of the next one (or the end of the text)
    ends = [end if start != end else (spans[i + 1][0] if i + 1 < len(spans) else len(text)) for i, (start, end) in enumerate(spans)]
    out, prev_end = [], -1
    for token_id, (start, _), end in zip(found, spans, ends):
        if len(out) == len(ids) or token_id != ids[len(out)]:
            warnings.warn(
                f"re-tokenized piece {token_id} ({text[start:end]!r}) does not match the next id "
                f"{ids[len(out)] if len(out) < len(ids) else None}; skipping it", stacklevel=2)
            continue
        out.append(_clean(text[start:end]) + (" [OVERLAP]" if prev_end > start else ""))
        prev_end = end
    if len(out) != len(ids):
        warnings.warn(f"{len(out)} pretty tokens for {len(ids)} ids; decoding each token on its own", stacklevel=2)
        return _pretty_tokens_one_by_one(ids, tokenizer)
    return out


def _pretty_tokens_one_by_one(ids: list, tokenizer) -> list:
    """Each id decoded alone. An id that decodes to a lone "�" (part of a character split over
    several ids) and is followed by another such id: the pair is listed as the first one's
    string and that string plus " [OVERLAP]" (Captum's fallback does the same)."""

    def split(i: int) -> bool:
        return tokenizer.decode(ids[i]).strip() == "\ufffd" and tokenizer.encode(tokenizer.decode(ids[i])) != [ids[i]]

    out, i = [], 0
    while i < len(ids):
        first = _clean(tokenizer.decode(ids[i]))
        if i + 1 < len(ids) and split(i):
            second = first + " [OVERLAP]" if split(i + 1) else _clean(tokenizer.decode(ids[i + 1]))
            out += [first, second]
            i += 2
        else:
            out.append(first)
            i += 1
    return out
