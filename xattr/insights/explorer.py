"""`explore`: attributions of a classifier over a set of examples, written as one static HTML page.

    path = xattr.insights.explore(model, x_test[:100], labels=y_test[:100], classes=names)

The page (docs/insights.md) filters the examples by predicted and true class, shows the
misclassified ones, finds examples by index, and opens any example to compare every method's
attribution of it. Its dataset view (`_dataset`) shows each class's mean attribution and mean
|attribution| per method (for text, `_tokens`: each class's tokens of largest and most
negative mean attribution), computed from the same attributions. It is one self-contained file:
no server, no network, no script library; the numbers and pictures are one JSON payload inside
it (`_payload`, `_dataset`), the page is `_page`. With ``evaluation=``, `_evaluation_view` scores
the methods with `xattr.metrics.evaluate` and the page shows its table and per-example scores
(`_page_eval`).

Each method is a function ``make(f) -> attr_fn``, ``f`` the model restricted to each
example's explained class (``xattr.target(model, targets)``); it is called once per chunk of
examples, so every method runs batched over all of them.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

import xattr
from xattr._src.checks import warn_if_training

from . import _dataset, _evaluation_view, _page, _payload, _tokens

KINDS = ("image", "tabular", "text")


def default_methods(kind: str, model: Callable, inputs: torch.Tensor, *, baseline_id: int = 0) -> dict:
    """The methods `explore` runs when none are given, name -> ``make(f)``.

    image:   saliency, integrated gradients (32 steps), occlusion (a square window about an
             eighth of the image's side, at least 2 pixels, moved by half a window), and
             guided backprop when the model has an ``nn.ReLU``.
    tabular: saliency, integrated gradients (32 steps), feature ablation, Shapley value
             sampling (25 permutations, seed 0); baselines are zero.
    text:    feature ablation and Shapley value sampling (25 permutations, seed 0) over tokens,
             each token replaced by ``baseline_id`` (the tokenizer's padding id when it has one).

    Example:
      >>> methods = xattr.insights.default_methods("image", model, x)   # name -> make(f)
      >>> sal = methods["saliency"](xattr.target(model, 3))(x)           # like x
    """
    if kind == "image":
        side = max(2, min(inputs.shape[-2:]) // 8)
        step = max(1, side // 2)
        window = (side, side) if inputs.dim() == 3 else (inputs.shape[1], side, side)
        strides = (step, step) if inputs.dim() == 3 else (inputs.shape[1], step, step)
        methods = {
            "saliency": lambda f: xattr.saliency(f),
            "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=32),
            f"occlusion {side}x{side}": lambda f: xattr.occlusion(f, sliding_window_shapes=window, strides=strides),
        }
        modules = model.modules() if isinstance(model, nn.Module) else ()
        if any(isinstance(m, nn.ReLU) for m in modules):
            methods["guided backprop"] = lambda f: xattr.guided_backprop(f)
        return methods
    if kind == "tabular":
        return {
            "saliency": lambda f: xattr.saliency(f),
            "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=32),
            "feature ablation": lambda f: xattr.feature_ablation(f),
            "shapley value sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=25, generator=0),
        }
    return {
        "feature ablation": lambda f: xattr.feature_ablation(f, baselines=baseline_id),
        "shapley value sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=25, baselines=baseline_id, generator=0),
    }


def _kind(kind, inputs: torch.Tensor, tokens) -> str:
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"explore: kind must be one of {KINDS} or None (inferred), got {kind!r}")
        want = {"image": (3, 4), "tabular": (2,), "text": (2,)}[kind]
        if inputs.dim() not in want:
            shapes = {"image": "(N, C, H, W) or (N, H, W)", "tabular": "(N, F)", "text": "(N, T) token ids"}[kind]
            raise ValueError(f"explore: {kind} inputs must have shape {shapes}, got {tuple(inputs.shape)}")
        return kind
    if tokens is not None or (inputs.dim() == 2 and not inputs.is_floating_point()):
        return "text"
    if inputs.dim() == 2:
        return "tabular"
    if inputs.dim() in (3, 4):
        return "image"
    raise ValueError(
        f"explore: cannot tell what kind of inputs of shape {tuple(inputs.shape)} are: pass kind='image' "
        "(N, C, H, W), 'tabular' (N, F) or 'text' (N, T) with tokens="
    )


def _token_strings(tokens, inputs: torch.Tensor) -> list[list[str]]:
    if tokens is None:
        raise ValueError("explore: text inputs need tokens=: a list of token strings per example, or a tokenizer")
    if inputs.is_floating_point() or inputs.is_complex():
        raise TypeError(f"explore: text inputs must be integer token ids, got a {inputs.dtype} tensor")
    if hasattr(tokens, "convert_ids_to_tokens"):
        return [[str(t) for t in tokens.convert_ids_to_tokens(row)] for row in inputs.tolist()]
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"explore: tokens must be a list of token-string lists or a tokenizer, got {type(tokens).__name__}")
    if len(tokens) != len(inputs):
        raise ValueError(f"explore: {len(tokens)} token lists for {len(inputs)} examples")
    out = []
    for i, row in enumerate(tokens):
        if isinstance(row, str) or len(row) > inputs.shape[1]:
            raise ValueError(f"explore: tokens[{i}] must be a list of at most {inputs.shape[1]} token strings (one per id)")
        out.append([str(t) for t in row])
    return out


def _labels(labels, n: int, n_classes: int | None) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or len(labels) != n:
        raise ValueError(f"explore: labels must have one class per example, {n}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"explore: labels must be integer class indices, got {labels.dtype}")
    if n and n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"explore: labels must be class indices in [0, {n_classes}), got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def _targets(target, pred: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> tuple[torch.Tensor, str]:
    if isinstance(target, str):
        if target == "predicted":
            return pred.clone(), "predicted class"
        if target == "true":
            if labels is None:
                raise ValueError("explore: target='true' explains each example's true class: pass labels=")
            return labels.clone(), "true class"
        raise ValueError(f"explore: target must be 'predicted', 'true', a class index or one index per example, got {target!r}")
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < n_classes:
            raise ValueError(f"explore: target class {target} is not in [0, {n_classes})")
        return torch.full_like(pred, target), f"class {target}"
    t = torch.as_tensor(target).detach().cpu()
    if t.dim() != 1 or len(t) != len(pred) or t.is_floating_point() or t.dtype == torch.bool:
        got = f"shape {tuple(t.shape)} ({t.dtype})" if t.dim() else repr(target)
        raise ValueError(f"explore: target must be 'predicted', 'true', a class index or one class index per example ({len(pred)}), got {got}")
    if len(t) and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"explore: target classes must be in [0, {n_classes})")
    return t.long(), "given classes"


def _options(*, path, title, show_progress, generator, labels, target, classes) -> None:
    """The options that need no model call, refused before any (a bad one must not cost a run of every method)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"explore: path must be a file path (str or os.PathLike), got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"explore: path {os.fspath(path)!r} is a directory; give the HTML file to write, e.g. a path ending in .html")
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.exists(parent):  # the nearest folder that exists ("/" at worst)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"explore: path {os.fspath(path)!r} cannot be written: {parent!r} is a file, not a folder")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"explore: title must be a str or None (the default), got {type(title).__name__}")
    if not isinstance(show_progress, bool):
        raise TypeError(f"explore: show_progress must be True or False, got {show_progress!r}")
    if generator is not None and not isinstance(generator, torch.Generator) and (isinstance(generator, bool) or not isinstance(generator, int)):
        raise TypeError(f"explore: generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    if isinstance(target, str) and target not in ("predicted", "true"):
        raise ValueError(f"explore: target must be 'predicted', 'true', a class index or one index per example, got {target!r}")
    if isinstance(target, str) and target == "true" and labels is None:
        raise ValueError("explore: target='true' explains each example's true class: pass labels=")
    if isinstance(target, int) and not isinstance(target, bool) and target < 0:
        raise ValueError(f"explore: target class {target} is negative; give a class index")
    if classes is not None and (isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__")):
        raise TypeError(f"explore: classes must be a list of class names (one per logit), got {type(classes).__name__}")


def _methods(methods) -> None:
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("explore: methods must be a non-empty dict of name -> make(f) -> attr_fn")
    for name, make in methods.items():
        if not isinstance(name, str) or not callable(make):
            raise TypeError(f"explore: methods must map names (str) to functions make(f) -> attr_fn; got {name!r}: {make!r}")


# NOTE: [One train-mode warning per explore]
# Every attribution call warns when the model is in train mode with dropout or batch norm; explore
# makes one call per method (and more for its evaluation), so the same warning would repeat for
# each. explore warns once at entry (at the user's line), then silences that one message while
# its methods run, with ``warnings.catch_warnings``: like every use of it, it swaps the process's
# warning filters for the call, so it is not thread-safe against other threads editing filters.
_TRAIN_MODE = r".* is in train mode and contains "


def _names(names, n: int, what: str, default: str) -> list[str]:
    if names is None:
        return [default.format(i) for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ValueError(f"explore: got {len(names)} {what}, expected {n}")
    return [str(c) for c in names]


def explore(
    model: Callable,
    inputs: torch.Tensor,
    *,
    labels=None,
    classes: Sequence | None = None,
    methods: Mapping[str, Callable] | None = None,
    target="predicted",
    path: str | os.PathLike = "xattr-explorer.html",
    kind: str | None = None,
    tokens=None,
    feature_names: Sequence | None = None,
    title: str | None = None,
    chunk_size: int | None = None,
    show_progress: bool = True,
    dataset_view: bool = True,
    evaluation=False,
    masks: torch.Tensor | None = None,
    generator=0,
    max_curve_values: int | None = None,
) -> str:
    """Writes an interactive, offline HTML explorer of ``model``'s attributions over ``inputs``.

    Args:
      model: model function returning logits (B, C) (an ``nn.Module`` in eval mode is one).
      inputs: (N, ...) examples: images (N, C, H, W) or (N, H, W), tabular rows (N, F), or token
        ids (N, T) with ``tokens``.
      labels: true classes (N,), optional; enables the true-class filter and misclassified flags.
      classes: class names, one per logit (default "0", "1", ...).
      methods: name -> ``make(f) -> attr_fn``, ``f`` the targeted model function; default
        `default_methods` for the kind.
      target: which class each attribution explains: "predicted", "true" (needs labels), a
        class index, or one index per example.
      path: the HTML file to write (its folder is created).
      kind: "image", "tabular" or "text"; inferred from the inputs when None.
      tokens: for text: a list of token strings per example (at most T each; extra ids are not
        shown), or a tokenizer with ``convert_ids_to_tokens``.
      feature_names: for tabular inputs: one name per feature (default "x0", "x1", ...).
      title: the page's title (default "xattr explorer"); nothing else varies between runs.
      chunk_size: most examples per method call (default: all in one call). Seeded methods
        draw per example position in its call, so their numbers depend on the chunking.
      show_progress: a tqdm bar over the methods (needs tqdm).
      dataset_view: add the page's "class means" view: per method, each class's mean
        attribution and mean |attribution|, by true label or prediction, over every example
        or the misclassified ones (images and tabular rows; NOTE: [Class means on the
        explorer page] in `_dataset`); for text, each class's tokens of largest and most
        negative mean attribution (NOTE: [Token statistics on the explorer page] in
        `_tokens`). It reuses the attributions above: no second pass.
      evaluation: True, or a list or dict of `xattr.metrics.entries` entries (or their names):
        score every method with `xattr.metrics.evaluate` (True: its default metrics) on the same
        inputs and targets, and add an "evaluation" view (the method x metric table of means
        and 95% bootstrap intervals, best per metric marked), each method's scores next to its
        map in the detail panel, the mean curves of the curve metrics (deletion, insertion,
        ROAD, randomization) with the selected example's own (NOTE: [Curves on the explorer
        page]), and an "Order" list of the examples where the methods disagree most. The metrics that only read attributions use the page's own; those
        that call the method again rerun it (NOTE: [Evaluation on the explorer page] in
        `_evaluation_view`). False (the default): no evaluation, and the page is unchanged.
      masks: (N, ...) ground-truth masks for the evaluation's localization entries.
      generator: the evaluation's seed (int or torch.Generator; None: unseeded): its metrics'
        draws and intervals, as `evaluate`'s. The methods take their own seeds.
      max_curve_values: most per-example curve numbers the page embeds over all curve metrics
        (None: 50,000); past it the page keeps every k-th example's curves and says so, the
        mean curves and bands stay over every example (NOTE: [Curves on the explorer page]).

    Returns:
      ``path`` as a str.

    Example:
      >>> xattr.insights.explore(model, x_test, labels=y_test, path="explorer.html")   # returns the path
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"explore: inputs must be a tensor (N, ...), got {type(inputs).__name__}")
    if inputs.dim() < 2 or len(inputs) == 0:
        raise ValueError(f"explore: inputs must be a non-empty batch (N, ...), got shape {tuple(inputs.shape)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"explore: chunk_size must be a positive int or None, got {chunk_size!r}")
    if not isinstance(dataset_view, bool):
        raise TypeError(f"explore: dataset_view must be True or False, got {dataset_view!r}")
    if max_curve_values is not None and (isinstance(max_curve_values, bool) or not isinstance(max_curve_values, int)
                                         or max_curve_values < 1):
        raise ValueError(f"explore: max_curve_values must be a positive int or None, got {max_curve_values!r}")
    _options(path=path, title=title, show_progress=show_progress, generator=generator, labels=labels, target=target,
             classes=classes)  # fmt: skip
    if methods is not None:
        _methods(methods)
    kind = _kind(kind, inputs, tokens)
    chosen = _evaluation_view.entries(evaluation, masks, len(inputs))  # None: no evaluation
    token_lists = _token_strings(tokens, inputs) if kind == "text" else None
    if kind != "text" and tokens is not None:
        raise ValueError(f"explore: tokens= is for text inputs, not {kind} ones")
    if kind in ("image", "tabular") and not inputs.is_floating_point():
        raise TypeError(f"explore: {kind} inputs must be floating point, got {inputs.dtype}")
    if feature_names is not None and kind != "tabular":
        raise ValueError(f"explore: feature_names= is for tabular inputs, not {kind} ones")
    names = _names(feature_names, inputs.shape[1], "feature_names (one per input feature)", "x{}") if kind == "tabular" else None
    if labels is not None:
        _labels(labels, len(inputs), None)  # its shape and dtype now; its range once the classes are known
    warn_if_training(model)  # NOTE: [One train-mode warning per explore]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TRAIN_MODE, category=UserWarning)
        return _explore(model, inputs, labels=labels, classes=classes, methods=methods, target=target, path=path,
                        kind=kind, tokens=tokens, names=names, token_lists=token_lists, title=title,
                        chunk_size=chunk_size, show_progress=show_progress, dataset_view=dataset_view, chosen=chosen,
                        masks=masks, generator=generator, max_curve_values=max_curve_values)  # fmt: skip


def _explore(model, inputs, *, labels, classes, methods, target, path, kind, tokens, names, token_lists, title,
             chunk_size, show_progress, dataset_view, chosen, masks, generator, max_curve_values) -> str:  # fmt: skip
    """`explore` after its arguments are checked."""
    logits = _payload.logits(model, inputs, chunk_size)
    n_classes = logits.shape[1]
    class_names = _names(classes, n_classes, "class names (one per logit the model returns)", "{}")
    labels = _labels(labels, len(inputs), n_classes)
    targets, target_mode = _targets(target, logits.argmax(1), labels, n_classes)

    if methods is None:
        methods = default_methods(kind, model, inputs, baseline_id=int(getattr(tokens, "pad_token_id", None) or 0))
    _methods(methods)

    attrs = _payload.compute(methods, model, inputs, targets, kind, chunk_size, show_progress)
    data = _payload.payload(kind=kind, title=title or "xattr explorer", inputs=inputs, logits_=logits, labels=labels,
                            targets=targets, target_mode=target_mode, classes=class_names, attrs=attrs,
                            feature_names=names, tokens=token_lists)  # fmt: skip
    if not dataset_view:
        data["dataset"] = None
    elif kind == "text":
        pad_id = getattr(tokens, "pad_token_id", None)
        data["dataset"] = _tokens.payload(inputs, attrs, labels, logits.argmax(1), token_lists, pad_id if isinstance(pad_id, int) else None)
    else:
        data["dataset"] = _dataset.payload(kind, inputs, attrs, labels, logits.argmax(1))
    if chosen is not None:
        ev = _evaluation_view.run(chosen, model, methods, inputs, targets, attrs, masks=masks, chunk_size=chunk_size,
                                  generator=generator, show_progress=show_progress)  # fmt: skip
        data["evaluation"] = _evaluation_view.payload(ev, max_curve_values)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(_page.render(data))
    return path
