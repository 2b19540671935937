"""SAGE: global feature importance as the Shapley values of the model's loss reduction.

Covert, Lundberg and Lee, "Understanding Global Feature Contributions With Additive Importance
Measures" (NeurIPS 2020). The estimators and losses are in sage_estimators.py, the result
class, its plot and summary in sage_result.py.

NOTE: [The SAGE game under marginal imputation]
With the features split into F groups, a coalition S of them is "known" and the rest unknown.
The model restricted to S predicts the average of the model over the unknown features,
  f_S(x_S) = E_{X'}[ f(x_S, X'_{not S}) ],
where X' is drawn from the background rows independently of x: the *marginal* distribution,
the paper's default ("marginal imputation"), in place of the conditional X_{not S} | X_S = x_S
that the definition asks for. The game is the loss reduction that knowing S buys,
  v(S) = E_{X,Y}[ loss(f_{}(), Y) ] - E_{X,Y}[ loss(f_S(X_S), Y) ],
so v({}) = 0 and v(all) = E[loss(mean prediction, Y)] - E[loss(f(X), Y)], the loss the model
saves over predicting its average. SAGE values are this game's Shapley values: they sum to
v(all). The loss is applied to the *averaged* prediction (a cross-entropy to the averaged
class probabilities, not to averaged logits). Where features are correlated the marginal draws
pair them in ways the data never shows (a tall child with a short parent) and the model is
asked about points off the data: the values then tell how the model depends on each feature,
not what information the feature carries. A feature the model never reads gets 0 even when it
is a copy of one it does read (the conditional game would split the two), and two models that
agree on every data point can get different values (docs/methods/sage.md shows both).
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch

from .checks import warn_if_training
from .masks import features
from .sage_estimators import MIN_DRAWS, exact, loss_function, permutation
from .sage_result import SageResult
from .warn import warn

MAX_EXACT_FEATURES = 12  # exact SAGE: (2^F - 1) M + 1 model rows per example; 2^12 already 4095 M


def sage(
    model: Callable,
    loss,
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    background: torch.Tensor,
    feature_mask: torch.Tensor | None = None,
    estimator: str = "permutation",
    n_permutations: int = 4096,
    n_background: int | None = None,
    convergence: float | None = 0.05,
    block_size: int = 64,
    extra_args: Sequence = (),
    feature_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
    generator=None,
) -> SageResult:
    """SAGE values: each feature's share of the loss reduction the model gets from the features.

    The Shapley values of ``v(S) = E[loss(f_{}, Y)] - E[loss(f_S(X_S), Y)]`` with the unknown
    features drawn from ``background`` independently of the known ones (marginal imputation;
    NOTE: [The SAGE game under marginal imputation]). They sum to ``v(all)``: the expected loss
    of the model's mean prediction minus that of the model. Positive: the feature lowers the
    loss; about 0: the model does not need it (given the others).

    Args:
      model: a function of one batch ``model(x, *extra_args)`` returning one output row per
        input row: logits (B, C) for "cross_entropy", one logit (B,) or (B, 1) for
        "binary_cross_entropy", predictions for "mse" or a callable loss. Only called (under
        ``torch.no_grad``), never modified; pass an ``nn.Module`` in eval mode.
      loss: "mse" (squared error, averaged over the output's elements), "cross_entropy" (class
        ids Y; the softmax probabilities are averaged over the background rows),
        "binary_cross_entropy" (Y in [0, 1]; sigmoid probabilities averaged), or a callable
        ``loss(mean_output, y) -> (B,)`` per-example losses, given the model's raw outputs
        averaged over the background rows, in the model's own per-example shape (a (B, 1) output
        stays (B, 1)), so the model should output something whose average means something:
        probabilities, not logits. Labels, data and losses must be finite.
      X, Y: the data the importance is measured on, (N, ...) and (N, ...); draws are uniform
        over the N rows.
      background: (M, ...) rows like X's whose features fill in the unknown ones (the marginal
        distribution: 32 to 512 rows of training data, or a k-means summary).
      feature_mask: int ids per element of one example, shape ``X.shape[1:]`` or (1, ...): the
        features (groups) that are known or unknown together. None: every element its own
        feature. Ids no element holds get value 0 and cost nothing.
      estimator: "permutation" (the paper's sampling estimator, NOTE: [SAGE permutation draws
        in one evaluation] in sage_estimators.py) or "exact" (every coalition of the F features, averaged over all N
        examples and all M background rows: N ((2^F - 1) M + 1) model rows, F at most
        ``MAX_EXACT_FEATURES``).
      n_permutations: the most draws (example, order, background rows) of the permutation
        estimator; with ``convergence=None`` exactly this many.
      n_background: background rows averaged per coalition, drawn anew for each draw without
        replacement; None (default): all M rows (deterministic, the exact estimator's game).
        Fewer rows estimate another game, whose loss of an m-row average is larger, and whose
        total is too (NOTE: [SAGE inner samples] in sage_estimators.py). The exact estimator
        always uses every row.
      convergence: stop when the largest standard error < convergence * (max value - min
        value), checked after each block (the paper suggests 0.05); for a single feature, its
        |value| stands for the spread. None: run all draws.
      block_size: draws per batched evaluation and between convergence checks (the criterion
        may stop a run from ``MIN_DRAWS`` = 32 draws on); examples per evaluation for "exact".
        The outputs of one block's evaluation are held at once.
      extra_args: more positional arguments of the model; a tensor with N rows goes with its
        example (never from the background), anything else is passed as it is.
      feature_names: one name per feature id, for the summary and the plot.
      chunk_size, memory_budget: model rows per call, or bytes of perturbed inputs per call
        (NOTE: [Perturbed copies in one call] in perturb.py); a call holds at least one draw's
        chain ((F - 1) M + 1 rows, NOTE: [SAGE permutation draws in one evaluation]), for the
        exact estimator one copy of a block (``block_size`` examples).
      show_progress: a tqdm bar over the draws (the model calls for the exact estimator).
      generator: int seed, ``torch.Generator`` or None (torch's global generator gives the
        run's seed); the same seed gives the same result whatever ``block_size`` and
        ``chunk_size`` (NOTE: [Counter-based draws] in counter_rng.py).

    Returns:
      a `SageResult`: ``values`` and ``std_errors`` (F,) float64 on the CPU, the mean losses
      ``loss_empty`` and ``loss_full``, ``n_draws``, ``converged``, ``.summary()``,
      ``.to_dict()``, ``.plot()``.

    Example:
      >>> res = xattr.sage(model, "cross_entropy", x_test, y_test, background=x_train[:64], generator=0)
      >>> print(res.summary())
    """
    loss_fn = loss_function(loss)
    X, Y, bg = _check_data(X, Y, background)
    _check_labels(loss, Y)
    _check_options(estimator, n_permutations, n_background, convergence, block_size, show_progress, bg.shape[0])
    warn_if_training(model)
    mask, ids, n_ids = _mask(X, feature_mask)
    n = len(ids)
    names = _names(feature_names, n_ids)
    per_example, call = _extra(model, extra_args, X.shape[0])
    if estimator == "exact":
        if n > MAX_EXACT_FEATURES:
            raise ValueError(
                f"estimator='exact' evaluates all 2^F coalitions of the F features, each over every example and "
                f"background row: F={n} is more than {MAX_EXACT_FEATURES}. Group the inputs into fewer features with "
                "feature_mask, or use estimator='permutation'."
            )
        if n_background is not None:
            raise ValueError(
                "estimator='exact' averages over every background row: leave n_background=None and pass a smaller "
                "background instead"
            )
        phi, l_empty, l_full = exact(call, loss_fn, X, Y, bg, mask, n, per_example, block_size, chunk_size, memory_budget,
                                      show_progress)  # fmt: skip
        se, draws, converged, ratio = torch.zeros_like(phi), 0, True, 0.0
    else:
        phi, se, l_empty, l_full, draws, converged, ratio = permutation(
            call, loss_fn, X, Y, bg, mask, n, per_example, n_permutations, n_background, convergence, block_size,
            chunk_size, memory_budget, show_progress, generator,
        )  # fmt: skip
        if convergence is not None and not converged:
            if draws < MIN_DRAWS:
                why = (f"the criterion is checked from {MIN_DRAWS} draws on (fewer give no usable variance) and "
                       f"n_permutations={n_permutations} is fewer")  # fmt: skip
            else:
                why = f"the largest standard error is {ratio:.3g} of the values' spread, not below convergence={convergence}"
            warn(
                f"sage did not converge within n_permutations={n_permutations} draws: {why}. Raise n_permutations, "
                "or read the standard errors."
            )
    values, errors = _at_ids(phi, ids, n_ids), _at_ids(se, ids, n_ids)
    return SageResult(values, errors, float(l_empty), float(l_full), names, estimator, draws, converged, ratio)


# ----------------------------------------------------------------------------- arguments


def _check_data(X, Y, background):
    for name, t in (("X", X), ("Y", Y), ("background", background)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sage needs {name} as a tensor, got {type(t).__name__}")
    if X.ndim < 2:
        raise ValueError(f"X must be (N, ...) with features after the batch dim, got shape {tuple(X.shape)}")
    if X.shape[0] == 0 or Y.ndim == 0 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"X and Y need the same number N > 0 of rows, got {tuple(X.shape)} and {tuple(Y.shape)}")
    if background.ndim != X.ndim or tuple(background.shape[1:]) != tuple(X.shape[1:]) or background.shape[0] == 0:
        raise ValueError(
            f"background must be rows (M, {', '.join(map(str, X.shape[1:]))}) like X's, M > 0; got {tuple(background.shape)}"
        )
    if background.dtype != X.dtype and not (background.is_floating_point() and X.is_floating_point()):
        raise TypeError(f"background of dtype {background.dtype} cannot stand in for X of dtype {X.dtype}: give it X's dtype")
    for name, t in (("X", X), ("background", background), ("Y", Y)):
        _check_finite(t, name)
    return X, Y.to(X.device), background.to(device=X.device, dtype=X.dtype)


def _check_finite(t: torch.Tensor, name: str) -> None:
    """NaN or infinity in the data: refused here, in the user's terms (a NaN label made every value
    NaN without a word; a NaN input met the engine's check on the model's outputs)."""
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (nan/inf): SAGE needs finite data; drop or impute those rows")


def _check_labels(loss, Y: torch.Tensor) -> None:
    """Labels the built-in losses can take, checked against the user's Y (the losses see them
    repeated per coalition). The class ids' range is checked with the logits (loss_function)."""
    if loss == "cross_entropy" and (Y.is_floating_point() or Y.is_complex() or Y.ndim != 1):
        raise ValueError(
            f"loss='cross_entropy' needs Y as class ids of shape ({Y.shape[0]},) of an integer dtype, got {Y.dtype} "
            f"{tuple(Y.shape)}; for probabilities of one class use 'binary_cross_entropy'"
        )
    if loss == "binary_cross_entropy":
        t = Y.to(torch.float64)
        if Y.is_complex() or bool(((t < 0) | (t > 1)).any()):
            raise ValueError(
                f"loss='binary_cross_entropy' needs Y in [0, 1] (labels 0/1 or probabilities), got values from "
                f"{t.min().item():.4g} to {t.max().item():.4g}"
            )


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_options(estimator, n_permutations, n_background, convergence, block_size, show_progress, m: int) -> None:
    if estimator not in ("permutation", "exact"):
        raise ValueError(f"estimator must be 'permutation' or 'exact', got {estimator!r}")
    _positive_int(n_permutations, "n_permutations")
    _positive_int(block_size, "block_size")
    if n_background is not None:
        _positive_int(n_background, "n_background")
        if n_background > m:
            raise ValueError(f"n_background={n_background} is more than the background's {m} rows: use None for all")
    if convergence is not None and (
        isinstance(convergence, bool) or not isinstance(convergence, numbers.Real) or not convergence > 0
    ):
        raise ValueError(f"convergence must be a positive number (e.g. 0.05) or None, got {convergence!r}")
    if not isinstance(show_progress, bool):
        raise TypeError(f"show_progress must be True or False, got {show_progress!r}")


def _mask(X: torch.Tensor, feature_mask):
    """The engine's mask (1, ...) over the held ids renumbered 0..F-1, the held ids, and the
    number of ids (largest + 1) the values are reported over."""
    one = X[:1]
    if feature_mask is None:
        masks, n = features((one,), None)
        return masks[0], torch.arange(n), n
    if not isinstance(feature_mask, torch.Tensor):
        raise TypeError(f"feature_mask must be an integer tensor of one example's shape, got {type(feature_mask).__name__}")
    m = feature_mask.to(X.device)
    if m.ndim == X.ndim and m.shape[0] != 1:
        raise ValueError(
            f"SAGE explains the model over the whole data set, so its features are the same for every example: give "
            f"feature_mask of one example's shape {tuple(X.shape[1:])} (or (1, ...)), got {tuple(m.shape)}"
        )
    try:  # one example's ids (a leading 1 allowed): per-example masks were refused above
        one_shape = m.shape[1:] if m.ndim == X.ndim else m.shape
        fits = m.ndim <= X.ndim and torch.broadcast_shapes(one_shape, X.shape[1:]) == X.shape[1:]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"feature_mask of shape {tuple(m.shape)} does not fit one example of X: give ids of one example's "
            f"shape {tuple(X.shape[1:])} (or (1, ...), or a shape that broadcasts to it)"
        )
    masks, n_ids = features((one,), m)
    m = masks[0]
    if m.ndim < X.ndim:
        m = m.reshape((1,) * (X.ndim - m.ndim) + tuple(m.shape))
    ids = torch.unique(m)
    if m.min() < 0:
        raise ValueError("feature_mask ids must be non-negative")
    relabelled = torch.searchsorted(ids, m.contiguous())
    masks, _ = features((one,), relabelled)
    return masks[0], ids.cpu(), n_ids


def _names(feature_names, n_ids: int) -> list[str]:
    if feature_names is None:
        return [str(i) for i in range(n_ids)]
    if isinstance(feature_names, (str, bytes)):
        raise TypeError(f"feature_names must be a list of names, one per feature id, got the string {feature_names!r}")
    names = [str(s) for s in feature_names]
    if len(names) != n_ids:
        raise ValueError(f"{len(names)} feature_names for {n_ids} feature ids")
    return names


def _extra(model: Callable, extra_args: Sequence, n: int):
    """Which extra arguments go with their example (tensors of N rows), and the model function of
    the features and those: the others are closed over, never tiled."""
    if not isinstance(extra_args, (tuple, list)):
        raise TypeError(f"extra_args must be a tuple of the model's further arguments, got {type(extra_args).__name__}")
    rows = [i for i, a in enumerate(extra_args) if isinstance(a, torch.Tensor) and a.ndim > 0 and a.shape[0] == n]
    per_example = [extra_args[i] for i in rows]

    def call(x, *mine):
        args = list(extra_args)
        for i, a in zip(rows, mine):
            args[i] = a
        return model(x, *args)

    call.multi_output = True  # the engine keeps the output's shape: a (B, 1) output stays (B, 1) for a callable loss
    return per_example, call


def _at_ids(phi: torch.Tensor, ids: torch.Tensor, n_ids: int) -> torch.Tensor:
    out = torch.zeros(n_ids, dtype=torch.float64)
    out[ids] = phi.to(device="cpu", dtype=torch.float64)
    return out
