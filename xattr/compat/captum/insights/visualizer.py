"""Captum Insights' `AttributionVisualizer` and `Batch`, writing xattr's offline explorer page.

    visualizer = AttributionVisualizer(models=[model], score_func=lambda o: F.softmax(o, 1),
                                       classes=names, features=[ImageFeature("Photo", ...)],
                                       dataset=formatted_data_iter())
    visualizer.render()        # a notebook: the page in an iframe; elsewhere: the file's path
    visualizer.serve()         # no server: writes the page and prints where
    visualizer.visualize()     # a notebook: the page inline; elsewhere: writes it, prints where
    visualizer.get_insights_config()   # Insights' /init answer: classes, methods, their arguments

NOTE: [Insights as a static page]
Insights ran a Flask server (or a Jupyter widget) that pulled a few batches at a time from
``dataset`` and computed one method's attributions when the browser asked. Here everything
is computed once, in Python, and written into one self-contained HTML page (`xattr.insights`):
the first ``max_examples`` examples of ``dataset`` (64 by default; Insights' datasets are often
endless generators), every method of Insights' list for each (see `methods`), for every model.
What Insights did per example is kept:

- each feature's ``input_transforms`` run on each example (no batch dimension) before the
  model; its first ``baseline_transforms`` entry runs on the transformed example to make the
  baseline (none: zeros); ``visualization_transform`` runs on the original example (1, ...);
- the scores shown are ``score_func(model(inputs))`` (the raw outputs without it), and the
  predicted class is their arg-max (for a model with one output per example, that output
  rounded, as Insights did);
- the attributions are of the model itself (not of ``score_func``), for the predicted class
  when ``use_label_for_attr`` (Insights' default), or of the model's single output otherwise;
- each feature's "contribution" is its attributions' sum over the L1 norm of all features' sums.

The collected batches are kept, so `render`, `serve` and `export` can be called again (with
other methods) on the same examples although the dataset is a one-pass generator.
"""

from __future__ import annotations

import html
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch

import xattr
from xattr._src.progress import progress
from xattr._src.warn import warn
from xattr.insights import _features, _page

from . import methods as _methods
from .features import BaseFeature

DEFAULT_PATH = "xattr-insights.html"

# Insights' method list and side-panel arguments (its attr_vis/config.py), in the JSON form its
# /init route sent (named tuples as dicts): every method by Captum's get_name(), in Insights'
# order, and the editable arguments of the three methods that had any.
INSIGHTS_METHODS = ("Deconvolution", "Deep Lift", "Guided Backprop", "Input X Gradient", "Integrated Gradients",
                    "Saliency", "Feature Ablation", "Occlusion")  # fmt: skip
APPROXIMATIONS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def _method_arguments() -> dict:
    def number(value, limit):
        return {"value": value, "limit": limit, "type": "number"}

    return {
        "Integrated Gradients": {
            "n_steps": number(25, (2, None)),
            "method": {"value": "gausslegendre", "limit": list(APPROXIMATIONS), "type": "enum"},
        },
        "Feature Ablation": {"perturbations_per_eval": number(1, (1, 100))},
        "Occlusion": {
            "sliding_window_shapes": {"value": "", "type": "string"},
            "strides": {"value": "", "type": "string"},
            "perturbations_per_eval": number(1, (1, 100)),
        },
    }


class Batch:
    """A batch of examples: ``inputs`` (one tensor per feature, batch in dim 0), their
    ``labels`` (N,) (None: no labels), and ``additional_args`` passed to the model after the
    inputs (a tuple, or one value; tensors with the batch size in dim 0 are cut with the batch)."""

    def __init__(self, inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]], labels: Optional[torch.Tensor],
                 additional_args=None) -> None:  # fmt: skip
        self.inputs = inputs
        self.labels = labels
        self.additional_args = additional_args


def _in_notebook() -> bool:
    """Whether we run in a Jupyter or Colab kernel (IPython with a kernel)."""
    try:
        import IPython
    except ImportError:
        return False
    shell = IPython.get_ipython()
    return shell is not None and (hasattr(shell, "kernel") or type(shell).__name__ == "Shell")


class AttributionVisualizer:
    """Captum Insights' visualizer over xattr: the same constructor; the page is static (NOTE:
    [Insights as a static page]).

    Args:
      models: an ``nn.Module`` (or model function) or a list of them; each is shown per example.
      classes: one name per class (per score the model, after ``score_func``, returns).
      features: a feature or a list of them, one per positional model input, in order
        (`ImageFeature`, `TextFeature`, `GeneralFeature`).
      dataset: an iterable of `Batch` (it may be endless: at most ``max_examples`` are read).
      score_func: applied to the model's outputs to give the scores shown (e.g. softmax).
      use_label_for_attr: explain each example's predicted class (True, Insights' default);
        False for a model with one output per example, which is explained itself.
    """

    def __init__(self, models, classes: List[str], features, dataset: Iterable[Batch],
                 score_func: Optional[Callable] = None, use_label_for_attr: bool = True) -> None:  # fmt: skip
        models = list(models) if isinstance(models, (list, tuple)) else [models]
        features = list(features) if isinstance(features, (list, tuple)) else [features]
        if not models or not all(callable(m) for m in models):
            raise TypeError("AttributionVisualizer: models must be a model (nn.Module or function) or a non-empty list of them")
        if not features or not all(isinstance(f, BaseFeature) for f in features):
            raise TypeError("AttributionVisualizer: features must be ImageFeature, TextFeature or GeneralFeature objects, one per model input")
        for f in features:
            if type(f).visualization_type is BaseFeature.visualization_type or f.visualization_type() not in _features.PART_TYPES:
                raise TypeError(f"AttributionVisualizer: feature {f.name!r} ({type(f).__name__}) has no drawing on xattr's page; "
                                "use ImageFeature, TextFeature or GeneralFeature")  # fmt: skip
        if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
            raise TypeError(f"AttributionVisualizer: classes must be a non-empty list of class names, got {classes!r}")
        if score_func is not None and not callable(score_func):
            raise TypeError(f"AttributionVisualizer: score_func must be a callable or None, got {score_func!r}")
        if not isinstance(use_label_for_attr, bool):
            raise TypeError(f"AttributionVisualizer: use_label_for_attr must be a bool, got {use_label_for_attr!r}")
        try:
            self._dataset_iter = iter(dataset)
        except TypeError:
            raise TypeError(f"AttributionVisualizer: dataset must be an iterable of Batch, got {type(dataset).__name__}") from None
        self.models, self.classes, self.features, self.dataset = models, [str(c) for c in classes], features, dataset
        self.score_func, self.use_label_for_attr = score_func, use_label_for_attr
        self._batches: list = []  # (inputs tuple, labels or None, additional args tuple), as read
        self._selected = "Integrated Gradients"  # the page's first method, after an export
        self._exhausted = False

    # ---- the dataset -------------------------------------------------------------------------

    def _read(self, max_examples: int) -> list:
        """The first ``max_examples`` examples' batches, read once and kept."""
        have = sum(len(b[0][0]) for b in self._batches)
        while have < max_examples and not self._exhausted:
            try:
                batch = next(self._dataset_iter)
            except StopIteration:
                self._exhausted = True
                break
            except RuntimeError as e:  # a generator that ran out by calling next() itself (PEP 479)
                if not isinstance(e.__cause__, StopIteration):
                    raise
                self._exhausted = True
                break
            self._batches.append(self._checked(batch))
            have += len(self._batches[-1][0][0])
        out, left = [], max_examples
        for inputs, labels, extra in self._batches:
            if left <= 0:
                break
            n = len(inputs[0])
            out.append(_cut(inputs, labels, extra, min(n, left)) if n > left else (inputs, labels, extra))
            left -= n
        return out

    def _checked(self, batch) -> tuple:
        if not hasattr(batch, "inputs") or not hasattr(batch, "labels"):
            raise TypeError(f"AttributionVisualizer: dataset must yield Batch(inputs, labels), got {type(batch).__name__}")
        inputs = tuple(batch.inputs) if isinstance(batch.inputs, (tuple, list)) else (batch.inputs,)
        if len(inputs) != len(self.features) or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
            raise ValueError(f"AttributionVisualizer: each Batch needs one input tensor per feature ({len(self.features)}), "
                             f"batch in dim 0; got {len(inputs)} inputs")  # fmt: skip
        n = len(inputs[0])
        if n == 0 or any(len(x) != n for x in inputs):
            raise ValueError(f"AttributionVisualizer: a Batch's inputs must share a non-zero batch size, got {[len(x) for x in inputs]}")
        labels = batch.labels
        if labels is not None:
            labels = torch.as_tensor(labels).detach().cpu().reshape(-1)
            if len(labels) != n or labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(f"AttributionVisualizer: a Batch's labels must be {n} integer class indices, got {tuple(labels.shape)} {labels.dtype}")
            if labels.min() < 0 or labels.max() >= len(self.classes):
                raise ValueError(f"AttributionVisualizer: labels must be class indices in [0, {len(self.classes)})")
            labels = labels.long()
        extra = batch.additional_args
        extra = () if extra is None else tuple(extra) if isinstance(extra, tuple) else (extra,)
        return inputs, labels, extra

    # ---- the numbers -------------------------------------------------------------------------

    def _prepare(self, inputs: tuple) -> tuple[tuple, tuple, list]:
        """Per feature: the transformed inputs (N, ...), their baselines (N, ...), and what is shown."""
        xs, bs, shown = [], [], []
        for feature, x in zip(self.features, inputs):
            rows, bases, views = [], [], []
            for j in range(len(x)):
                t = x[j]
                for tf in feature.input_transforms:
                    t = tf(t)
                t = torch.as_tensor(t).detach()
                b = feature.baseline_transforms[0](t) if feature.baseline_transforms else torch.zeros_like(t)
                rows.append(t)
                bases.append(torch.as_tensor(b, dtype=t.dtype, device=t.device).detach().expand_as(t))
                views.append(self._shown(feature, x[j : j + 1]))
            try:
                xs.append(torch.stack(rows))
            except RuntimeError:
                raise ValueError(f"AttributionVisualizer: feature {feature.name!r}: input_transforms gave examples of different "
                                 f"shapes {sorted({tuple(r.shape) for r in rows})} within one Batch") from None  # fmt: skip
            bs.append(torch.stack(bases))
            shown.append(views)
        return tuple(xs), tuple(bs), shown

    def _shown(self, feature, x1: torch.Tensor):
        kind, vis = feature.visualization_type(), feature.visualization_transform
        if kind == "image":
            v = vis(x1) if vis is not None else x1
            v = torch.as_tensor(v).detach().cpu()
            return v[0] if v.dim() == 4 and len(v) == 1 else v
        if kind == "text":
            words = vis(x1) if vis is not None else x1.reshape(-1).tolist()
            if isinstance(words, torch.Tensor):
                words = words.reshape(-1).tolist()
            return [str(w) for w in words]
        v = x1.detach().cpu().reshape(-1)
        if len(v) != len(feature.categories):
            raise ValueError(f"AttributionVisualizer: GeneralFeature {feature.name!r} has {len(feature.categories)} categories "
                             f"for inputs of {len(v)} values")  # fmt: skip
        return v

    def _scores(self, model, xs: tuple, extra: tuple) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(scores (N, C) or (N,), predicted classes (N,), whether the model gives one output per example)."""
        with torch.no_grad():
            out = model(*xs, *extra)
            scores = self.score_func(out) if self.score_func is not None else out
        if not isinstance(out, torch.Tensor) or not isinstance(scores, torch.Tensor):
            raise TypeError("AttributionVisualizer: the model (and score_func) must return a tensor of scores (N, C)")
        n, scores = len(xs[0]), scores.detach().cpu()
        if out.numel() == n and scores.numel() == n:  # one output per example: it is the prediction, rounded
            s = scores.reshape(n)
            return s, s.round().long().clamp(0, len(self.classes) - 1), True
        if scores.dim() != 2 or scores.shape != (n, len(self.classes)):
            raise ValueError(f"AttributionVisualizer: the scores must be (N, C) = ({n}, {len(self.classes)}), one per class name; "
                             f"got shape {tuple(scores.shape)}")  # fmt: skip
        if not self.use_label_for_attr:
            raise ValueError(f"AttributionVisualizer: use_label_for_attr=False explains a model's single output per example, but the "
                             f"model returns {out.shape[1:].numel()} per example; leave use_label_for_attr=True")  # fmt: skip
        return scores, scores.argmax(1), False

    def _cards(self, chosen: dict, defaults: bool, target: str, show_progress: bool, max_examples: int) -> tuple[list, int, str, dict]:
        batches = self._read(max_examples)
        if not batches:
            raise ValueError("AttributionVisualizer: the dataset gave no examples")
        if target == "true" and any(b[1] is None for b in batches):
            raise ValueError("AttributionVisualizer: target='true' explains each example's label: every Batch needs labels")
        if defaults and not all(x.is_floating_point() for b in batches for x in self._prepare(tuple(v[:1] for v in b[0]))[0]):
            dropped = [n for n in chosen if _methods.METHODS[n].gradient]
            chosen = {n: kw for n, kw in chosen.items() if n not in dropped}
            warn(f"AttributionVisualizer: a model input is integer (token ids) after input_transforms, so the gradient methods "
                 f"{dropped} are left out; map the ids to embeddings in input_transforms to have them")  # fmt: skip
        cards, start, mode = [], 0, "predicted class"
        steps = progress(show_progress, total=len(batches) * len(self.models) * len(chosen), desc="xattr insights", unit="method")
        for inputs, labels, extra in batches:
            xs, bs, shown = self._prepare(inputs)
            floats = all(x.is_floating_point() for x in xs)
            per_model = []
            for model in self.models:
                scores, pred, single = self._scores(model, xs, extra)
                targets = labels if target == "true" else pred
                if single:
                    f, mode = xattr.target(model, lambda o: o.reshape(o.shape[0])), "model's output"
                else:
                    f, mode = xattr.target(model, targets.to(xs[0].device)), ("true class" if target == "true" else "predicted class")
                attrs = {}
                for name, kw in chosen.items():
                    if _methods.METHODS[name].gradient and not floats:
                        raise TypeError(f"AttributionVisualizer: {name} needs floating-point model inputs, but an input_transforms "
                                        "output is integer (token ids): map the ids to embeddings in input_transforms, or use "
                                        "Feature Ablation / Occlusion")  # fmt: skip
                    fn = _methods.METHODS[name].build(f, tuple(range(len(xs))), bs, kw)
                    attrs[name] = _attr_tuple(fn(*xs, *extra), xs, name)
                    if steps is not None:
                        steps.update(1)
                per_model.append((scores, pred, targets, single, attrs))
            for j in range(len(xs[0])):
                for m, (scores, pred, targets, single, attrs) in enumerate(per_model):
                    cards.append(self._card(start + j, m, j, labels, scores, pred, targets, single, attrs, shown))
            start += len(xs[0])
        if hasattr(steps, "close"):
            steps.close()
        return cards, start, mode, chosen

    def _card(self, i, m, j, labels, scores, pred, targets, single, attrs, shown) -> dict:
        num = _features.num
        if single:
            top = [[int(pred[j]), num(scores[j])]]
        else:
            p, c = scores[j].double().topk(min(4, scores.shape[1]))
            top = [[int(ci), num(pi)] for ci, pi in zip(c.tolist(), p.tolist())]
        y = None if labels is None else int(labels[j])
        a = {}
        for name, per_feature in attrs.items():
            f = []
            for k, feature in enumerate(self.features):
                kind, attr = feature.visualization_type(), per_feature[k][j]
                if kind == "text" and len(shown[k][j]) > attr.shape[0]:
                    raise ValueError(f"AttributionVisualizer: TextFeature {feature.name!r}: visualization_transform gave "
                                     f"{len(shown[k][j])} words for {attr.shape[0]} tokens")  # fmt: skip
                f.append(_features.part_attr(kind, attr, shown[k][j]))
            sums = [float(per_feature[k][j].double().sum()) for k in range(len(self.features))]
            a[name] = {"sum": num(sum(sums)), "contrib": _features.contributions(sums), "f": f}
        x = [_features.part_input(ft.visualization_type(), shown[k][j]) for k, ft in enumerate(self.features)]
        return {"i": i, "m": m, "y": y, "p": int(pred[j]), "t": int(targets[j]) if not single else int(pred[j]),
                "conf": num(scores[j] if single else scores[j, pred[j]]), "top": top,
                "wrong": None if y is None else bool(int(pred[j]) != y), "x": x, "a": a}  # fmt: skip

    # ---- the page ----------------------------------------------------------------------------

    def export(self, path: Union[str, os.PathLike] = DEFAULT_PATH, *, methods=None, max_examples: int = 64,
               target: str = "predicted", title: Optional[str] = None, show_progress: bool = False) -> str:  # fmt: skip
        """(xattr only) Writes the explorer page of the first ``max_examples`` examples; returns its path.

        Args:
          path: the HTML file (its folder is created).
          methods: Insights' method names (default: all but Occlusion, Integrated Gradients
            first), or a dict name -> keywords, e.g. ``{"Integrated Gradients": {"n_steps": 50},
            "Occlusion": {"sliding_window_shapes": (1, 3, 3), "strides": (1, 2, 2)}}``.
          max_examples: the most examples read from ``dataset`` (its first ones, in order).
          target: "predicted" (Insights' view) or "true" (each example's label).
          title: the page's heading (default "Captum Insights (xattr)").
          show_progress: a progress bar over batches x models x methods (needs tqdm).
        """
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
            raise ValueError(f"AttributionVisualizer: max_examples must be a positive int, got {max_examples!r}")
        if target not in ("predicted", "true"):
            raise ValueError(f"AttributionVisualizer: target must be 'predicted' or 'true', got {target!r}")
        cards, n, mode, chosen = self._cards(_methods.resolve(methods), methods is None, target, show_progress, max_examples)
        self._selected = next(iter(chosen))
        parts = [{"name": f.name, "type": f.visualization_type(), "categories": getattr(f, "categories", None)} for f in self.features]
        names = [f"model {m}" if len(self.models) > 1 else "model" for m in range(len(self.models))]
        data = _features.payload(title=title or "Captum Insights (xattr)", parts=parts, models=names, classes=self.classes,
                                 methods=list(chosen), target_mode=mode, labels=all(c["y"] is not None for c in cards),
                                 scores="prob" if self.score_func is not None else "raw", n_examples=n, examples=cards)  # fmt: skip
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_page.render(data))
        return path

    def render(self, debug: bool = True, *, path: Union[str, os.PathLike] = DEFAULT_PATH, height: int = 800, **options) -> str:
        """Writes the page (`export`'s keywords) and, in a Jupyter or Colab kernel, shows it in an
        iframe; returns the path. ``debug`` (Insights' widget log) is accepted and unused."""
        path = self.export(path, **options)
        if _in_notebook():
            _display_inline(path, height)
        return path

    def visualize(self, *, path: Union[str, os.PathLike] = DEFAULT_PATH, height: int = 800, **options) -> str:
        """Writes the page (`export`'s keywords) and shows it: inline in a Jupyter or Colab
        kernel, otherwise by printing where it was written. Returns the path.

        Insights' ``visualize()`` computed the next few examples' `VisualizationOutput` records
        for its server to send to the browser; here every example is on the page already, so
        this is the call that shows it.
        """
        path = self.export(path, **options)
        if _in_notebook():
            _display_inline(path, height)
        else:
            print(f"xattr: the Captum Insights page is written to {os.path.abspath(path)}; open it in a browser "
                  "(no server is needed)")  # fmt: skip
        return path

    def get_insights_config(self) -> dict:
        """What Insights' page asked its server for first (the /init route), with Insights' keys:

        ``classes`` (the class names), ``methods`` (every method Insights offered, by Captum's
        names), ``method_arguments`` (per method with editable arguments, each argument's
        ``value``, ``limit`` and ``type``: "number", "enum" or "string") and
        ``selected_method`` (Integrated Gradients, Insights' default; after an `export`, the
        first method of the page written). The arguments are Insights' defaults: this page's
        settings are chosen per call, through ``methods=``.
        """
        return {
            "classes": list(self.classes),
            "methods": list(INSIGHTS_METHODS),
            "method_arguments": _method_arguments(),
            "selected_method": self._selected,
        }

    def serve(self, blocking: bool = False, debug: bool = False, port: Optional[int] = None, bind_all: bool = False, *,
              path: Union[str, os.PathLike] = DEFAULT_PATH, **options) -> str:  # fmt: skip
        """No server: writes the page (`export`'s keywords), prints its path, and returns it.

        Insights started a Flask server on ``port``; the page here is a static file that any
        browser opens from disk, so ``blocking``, ``debug``, ``port`` and ``bind_all`` are
        accepted and unused.
        """
        path = self.export(path, **options)
        print(f"xattr: Captum Insights' server is replaced by a static page; open {os.path.abspath(path)} in a browser")
        return path


def _display_inline(path: str, height: int) -> None:
    """Shows the page at ``path`` in the notebook's output, inside an iframe of its own."""
    try:
        from IPython.display import HTML, display
    except ImportError:  # _in_notebook said yes, but the display module is missing: say where the page is
        print(f"xattr: the Captum Insights page is written to {os.path.abspath(path)}; open it in a browser")
        return
    with open(path, encoding="utf-8") as fh:
        page = html.escape(fh.read(), quote=True)
    display(HTML(f'<iframe srcdoc="{page}" style="width:100%;height:{int(height)}px;border:1px solid #ddd"></iframe>'))


def _cut(inputs: tuple, labels, extra: tuple, n: int) -> tuple:
    """The first ``n`` examples of a batch; extra tensors with the batch size in dim 0 are cut too."""
    size = len(inputs[0])
    cut = lambda v: v[:n] if isinstance(v, torch.Tensor) and v.dim() and len(v) == size else v  # noqa: E731
    return tuple(x[:n] for x in inputs), None if labels is None else labels[:n], tuple(cut(v) for v in extra)


def _attr_tuple(attr, xs: tuple, name: str) -> tuple:
    attr = attr if isinstance(attr, tuple) else (attr,)
    if len(attr) != len(xs) or any(a.shape != x.shape for a, x in zip(attr, xs)):
        raise ValueError(f"AttributionVisualizer: {name} returned attributions of shapes {[tuple(a.shape) for a in attr]} "
                         f"for inputs {[tuple(x.shape) for x in xs]}")  # fmt: skip
    return tuple(a.detach().cpu() for a in attr)


__all__ = ["AttributionVisualizer", "Batch"]
