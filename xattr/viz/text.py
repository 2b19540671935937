"""Word-importance tables for text attributions, as HTML (Captum's ``visualize_text``).

    record = VisualizationDataRecord(scores, pred_prob, pred_class, true_class, attr_class,
                                     attr_score, words, convergence_score)
    html = visualize_text([record])          # a str; rendered in a notebook, writable to a file

One table row per record: true label, predicted label (with its probability), the label the
attributions explain, the attributions' total, and the words, each highlighted by its score:
green for positive, red for negative, more saturated the larger the magnitude. Scores are
clipped to [-1, 1], so scale them first (``xattr.token_scores(attr, normalize=True)``).

The table is built from Captum's four HTML helpers, public here under Captum's names so code
that assembles its own tables keeps working: `format_classname` (one bold table cell),
`format_special_tokens` (``<unk>`` -> ``#unk``), `format_word_importances` (the cell of
highlighted words, the same code `visualize_text` uses) and `format_tooltip`.

No dependency: IPython is used only to display the table when it runs inside a notebook.
"""

from __future__ import annotations

import html as _html
import math
import sys
from typing import Any, Iterable, Sequence

import torch

__all__ = [
    "TextVisualization",
    "VisualizationDataRecord",
    "format_classname",
    "format_special_tokens",
    "format_tooltip",
    "format_word_importances",
    "visualize_text",
]


class VisualizationDataRecord:
    """One explained text: its per-word attributions, the labels, and the scores to show.

    Attributes (Captum 0.9's, in its order):
      word_attributions: one score per word, a 1-d tensor, array or sequence of floats.
      pred_prob: the predicted class's probability.
      pred_class: the predicted label (an int or a name).
      true_class: the true label.
      attr_class: the label the attributions explain.
      attr_score: the attributions' sum (or any score to show next to them).
      raw_input_ids: the words (tokens) as strings, one per score (fewer is allowed).
      convergence_score: the attribution's convergence delta; stored, not shown (as in Captum).

    Example:
      >>> record = xattr.viz.VisualizationDataRecord(scores, 0.92, "pos", "pos", "pos", scores.sum(), words, 0.0)
      >>> html = xattr.viz.visualize_text([record])
    """

    __slots__ = (
        "word_attributions",
        "pred_prob",
        "pred_class",
        "true_class",
        "attr_class",
        "attr_score",
        "raw_input_ids",
        "convergence_score",
    )

    def __init__(
        self,
        word_attributions: Any,
        pred_prob: float,
        pred_class: Any,
        true_class: Any,
        attr_class: Any,
        attr_score: float,
        raw_input_ids: Sequence[str],
        convergence_score: float,
    ) -> None:
        self.word_attributions = word_attributions
        self.pred_prob = pred_prob
        self.pred_class = pred_class
        self.true_class = true_class
        self.attr_class = attr_class
        self.attr_score = attr_score
        self.raw_input_ids = raw_input_ids
        self.convergence_score = convergence_score

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"VisualizationDataRecord({fields})"


class TextVisualization(str):
    """The HTML of a ``visualize_text`` table: a plain ``str`` that notebooks render as HTML.

    ``.data`` is the same string (the attribute IPython's ``HTML`` object has, which Captum's
    ``visualize_text`` returns).

    Example:
      >>> html = xattr.viz.visualize_text([record])
      >>> open("words.html", "w").write(html)   # a str; notebooks render it
    """

    __slots__ = ()

    @property
    def data(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return str(self)


def _color(score: float) -> str:
    """The CSS colour of one score: green (hue 120) above 0, red (hue 0) at or below, white at 0.

    The score is clipped to [-1, 1]; lightness falls from 100% to 50% (positive) or 60%
    (negative) as the magnitude grows, Captum's scale. A NaN score is drawn neutral (white).
    """
    if math.isnan(score):
        score = 0.0
    score = max(-1.0, min(1.0, score))
    if score > 0:
        return f"hsl(120, 75%, {100 - int(50 * score)}%)"
    return f"hsl(0, 75%, {100 - int(-40 * score)}%)"


def format_special_tokens(token: str) -> str:
    """A token written ``<name>`` (``<pad>``, ``<unk>``, ``</s>``) as ``#name``; others unchanged.

    Captum's rule: the token's leading and trailing ``<`` and ``>`` characters are stripped, so
    ``"</s>"`` gives ``"#/s"``. Plain text in, plain text out (not escaped).
    """
    token = str(token)
    if token.startswith("<") and token.endswith(">"):
        return "#" + token.strip("<>")
    return token


def _display_word(token: str) -> str:
    """A token as shown: `format_special_tokens`, then HTML-escaped."""
    return _html.escape(format_special_tokens(token), quote=True)


def _scores(importances: Any) -> list[float]:
    """A 1-d tensor, array or sequence of scores as Python floats."""
    if isinstance(importances, torch.Tensor):
        if importances.dim() != 1:
            raise ValueError(f"visualize_text: word_attributions must be 1-d (one score per word), got shape {tuple(importances.shape)}")
        return [float(v) for v in importances.detach().cpu().double().tolist()]
    shape = getattr(importances, "shape", None)
    if shape is not None and len(shape) != 1:
        raise ValueError(f"visualize_text: word_attributions must be 1-d (one score per word), got shape {tuple(shape)}")
    return [float(v) for v in importances]


def format_word_importances(words: Sequence[str], importances: Any) -> str:
    """The table cell of highlighted words: one ``<mark>`` per word, coloured by its score.

    ``importances`` is a 1-d tensor, array or sequence with at least one score per word (extra
    scores are ignored); None or empty gives ``"<td></td>"``. Each word goes through
    `format_special_tokens` and is HTML-escaped. Captum's markup, colours and order; its
    line-continuation whitespace inside the tags is one space here. ValueError for a
    multi-dimensional ``importances`` or fewer scores than words (Captum: AssertionError).
    """
    if importances is None:
        return "<td></td>"
    scores = _scores(importances)
    if not scores:
        return "<td></td>"
    words = list(words)
    if len(words) > len(scores):
        raise ValueError(f"visualize_text: {len(words)} words but only {len(scores)} word_attributions (one score per word is needed)")
    marks = "".join(
        f'<mark style="background-color: {_color(score)}; opacity:1.0; line-height:1.75">'
        f'<font color="black"> {_display_word(word)} </font></mark>'
        for word, score in zip(words, scores)
    )
    return f"<td>{marks}</td>"


def format_classname(classname: Any) -> str:
    """One bold table cell holding ``str(classname)``, HTML-escaped (Captum's markup)."""
    return f'<td><text style="padding-right:2em"><b>{_html.escape(str(classname), quote=True)}</b></text></td>'


def format_tooltip(item: str, text: str) -> str:
    """``item`` with a hover tooltip ``text``: Captum's ``tooltip`` / ``tooltiptext`` markup.

    Both are inserted as HTML, unescaped, as in Captum (``item`` is usually a marked-up word);
    pass ``html.escape(s)`` for raw text. The page must define the two CSS classes. Captum's
    string up to whitespace: its indentation between the tags is one space here.
    """
    return f'<div class="tooltip">{item} <span class="tooltiptext">{text}</span> </div>'


_HEADER = (
    "<tr><th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
    "<th>Attribution Score</th><th>Word Importance</th></tr>"
)


def _legend() -> str:
    swatches = "".join(
        f'<span style="display: inline-block; width: 10px; height: 10px; border: 1px solid; '
        f'background-color: {_color(value)}"></span> {label} '
        for value, label in ((-1.0, "Negative"), (0.0, "Neutral"), (1.0, "Positive"))
    )
    return f'<div style="border-top: 1px solid; margin-top: 5px; padding-top: 5px; display: inline-block"><b>Legend: </b>{swatches}</div>'


def _in_notebook_display():
    """IPython's ``display`` and ``HTML`` when running in a notebook kernel, else None."""
    if "IPython" not in sys.modules:  # a notebook kernel has imported it already
        return None
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:  # plain python or a terminal IPython
        return None
    return display, HTML


def visualize_text(datarecords: Iterable[VisualizationDataRecord], legend: bool = True) -> TextVisualization:
    """An HTML table of word attributions, one row per record (Captum 0.9's layout and colours).

    Columns: True Label, Predicted Label (``"class (prob)"``, prob to 2 decimals), Attribution
    Label, Attribution Score (2 decimals), Word Importance (each word highlighted by its score,
    see ``_color``). With ``legend`` a Negative/Neutral/Positive key precedes the table.

    Returns:
      The HTML as a ``TextVisualization`` (a ``str``). Inside a Jupyter kernel it is also
      displayed, as Captum does; elsewhere nothing is printed and IPython is not needed.

    Differences from Captum: words and labels are HTML-escaped (Captum inserts them raw, so a
    token such as ``a<b`` or ``<i>good`` opens a tag and breaks its table, and ``&`` sequences
    are read as entities); the markup is well formed (rows closed with ``</tr>``, the table's
    width as a style); IPython is optional (Captum asserts it is installed); a NaN score is
    drawn neutral; a record with more words than scores raises ValueError (Captum:
    AssertionError).

    Example:
      >>> html = xattr.viz.visualize_text([xattr.viz.VisualizationDataRecord(
      ...     scores, 0.92, "pos", "pos", "pos", scores.sum(), words, 0.0)])   # a TextVisualization (str)
    """
    rows = [_HEADER]
    for record in datarecords:
        rows.append(
            "<tr>"
            + format_classname(record.true_class)
            + format_classname(f"{record.pred_class} ({format(record.pred_prob, '.2f')})")
            + format_classname(record.attr_class)
            + format_classname(format(record.attr_score, ".2f"))
            + format_word_importances(record.raw_input_ids, record.word_attributions)
            + "</tr>"
        )
    page = (_legend() if legend else "") + '<table style="width: 100%">' + "".join(rows) + "</table>"
    result = TextVisualization(page)
    shown = _in_notebook_display()
    if shown is not None:
        display, HTML = shown
        display(HTML(result.data))
    return result
