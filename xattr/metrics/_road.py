"""ROAD, remove and debias (Rong et al. 2022): pixels removed in attribution order and filled in by
noisy linear imputation, so that the shape of what was removed does not tell the model the class.

NOTE: [Noisy linear imputation]
Each removed pixel takes the weighted mean of its 8 neighbours inside the image, the 4 direct
ones weighing 1/6 and the 4 diagonal ones 1/12 (so 1 in all for an inner pixel; at the border
the weights of the neighbours that exist are renormalised by their sum s_i). Removed neighbours
are unknowns too, so per image and channel it is one linear system over the removed pixels:
  s_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j      (i removed).
It is written over the whole grid, a kept pixel's row being v_i = x_i:
  A = diag(r s + (1 - r)) - (r r') * W,   rhs = (1 - r) x + r (W ((1 - r) x)),
with r the 0/1 removal indicator and W the neighbour weights (a 3x3 convolution with zero
padding). A is symmetric, and positive definite when at least one pixel is kept (every
8-connected region of removed pixels then borders a kept pixel, which makes the restriction of
D - W to it irreducibly diagonally dominant), which is why a percentage must keep one pixel.
Small images are solved densely, larger ones by a sparse LU per mask on CPU (scipy) and by
conjugate gradients on other devices (NOTE: [Choosing the imputation solver] in
_road_solvers.py, with measured times); all three give the same solution to 1e-10 in float64.
Then Gaussian noise of std ``noise`` is added to the removed pixels only, independently per
pixel and channel, after the solve; kept pixels keep their values exactly.

NOTE: [ROAD as the authors' code does it]
Checked against the authors' reference implementation (github.com/tleemann/road_evaluation,
``road/imputations.py`` class ``NoisyLinearImputer``, ``road/imputed_dataset.py``,
``road/utils.py``), read for its definitions only:
- Weights and border: the same 8 offsets with 1/6 (direct) and 1/12 (diagonal); a pixel's sum
  of weights starts at 1 and loses the weight of every neighbour outside the image, and it is
  the diagonal of their system (-s_i v_i + sum_{j removed} w_ij v_j = -sum_{j kept} w_ij x_j,
  our system times -1), so nothing differs at the border either. They solve it with
  ``scipy.sparse.linalg.spsolve``, one system per image, the C channels as C right-hand sides.
- Noise: ``noise * N(0, 1)``, one independent draw per imputed pixel and channel, added to the
  solution after the solve, at the removed pixels only; default ``noise=0.01``. It is absolute,
  in the units of the image they impute: in their experiments [0, 1] images (``ToTensor``),
  normalised only after the imputation. xattr imputes the image it is given, so for
  normalised inputs the equivalent is ``noise = 0.01 / std``. xattr's default is this.
  tests/test_road.py reproduces their system and noise with a loop-built dense solve.
- Ranking: their attribution map is summed over channels (signed, no absolute value),
  min-max normalised to [0, 1] and given ``1e-4 * N(0, 1)`` per pixel ("a constant small
  perturbation for attribution maps with many equal values"), then sorted, highest first. The
  perturbation orders tied pixels at random. It is drawn once per evaluated percentage and
  shared by all images; it also reorders pixels whose normalised values lie within about 1e-4.
  xattr's ``ties="random"`` (the default) sorts by (attribution, a uniform random key drawn per
  example from ``generator``): exact ties in random order, nothing else moved, and one order
  for all percentages, so the removed sets grow with the percentage. ``ties="index"`` is the
  deterministic order (lower pixel index first) xattr used before; NOTE: [Tied attributions
  in ROAD] says why the difference matters.
- Counts: MoRF removes ``int(p H W)`` pixels (rounded down). Their LeRF at ``p`` removes every
  pixel *but* the ``int(p H W)`` most relevant, i.e. a fraction ``1 - p``. xattr indexes both
  orders by the fraction removed and removes ``round(p H W)`` (``counts="nearest"``, the
  default): for LeRF, curves at p and at their 1 - p use the same masks up to that rounding.
  ``counts="authors"`` removes what their code removes at the same fraction removed: ``int(p H
  W)`` for MoRF, ``H W - int((1 - p) H W)`` for LeRF, in Python floats as theirs: ``int(0.29 *
  100)`` is 28, and LeRF at p = 0.9 of 10 pixels would remove all 10 (``(1 - 0.9) * 10`` is
  0.9999999999999998), which ROAD refuses.

NOTE: [Tied attributions in ROAD]
On the 8x8 digits CNN of docs/metrics/faithfulness.md, 50% of integrated gradients' pixels are
exactly 0 (the background, where the image equals the zero baseline) and 19% negative. With ties
in pixel order LeRF removes the background from the top rows down (at 40% removed, 78% of the
top row against 49% with random ties), and the imputation fills those regions from the strokes
below them (mean imputed background 0.37 against 0.18): IG's LeRF AUC is 0.43 against 0.51 for
random attributions. With ties in random order (the authors' handling) it is 0.49 to 0.51 over
four seeds (the authors' exact perturbation, 1e-4 N(0, 1) on the normalised map, gave the same:
0.50 against 0.51 for this key, means over five seeds). Tie order was worth 0.06 to 0.08 of AUC;
MoRF, which removes IG's nonzero pixels first, moves by 0.013 at most. What remains is not ties:
IG ranks the whole background below every positive stroke pixel, so past 70% removed LeRF keeps
stroke pixels only (99.9% of the 13 kept at 80%, against 52% for random attributions), the
imputation paints the background from them (mean imputed background 0.68 against 0.28) and the
probability collapses (0.27 at 70%, 0.09 at 80%). Removal by imputation is not the removal to
the zero baseline that IG explains. The docs measure the other variants.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch

from .._src import tree as T
from .._src.budget import copies_per_call
from .._src.checks import check_finite, warn_if_training
from .._src.gradients import model_calls
from .._src.nesting import new_call_inside_model
from .._src.progress import progress
from .._src.sampling import per_example, streams
from ._common import batch_of, model_rows, passthrough, positive_nums, resolve, stopped
from ._curves import Curve
from ._road_solvers import solve
from ._similarity import result_dtype

PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def road(
    f: Callable,
    attr_fn_or_attributions: Any,
    *,
    percentages: Sequence[float] = PERCENTAGES,
    order: str = "morf",
    imputation: str = "noisy_linear",
    noise: float = 0.01,
    ties: str = "random",
    counts: str = "nearest",
    argnums: int = 0,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """ROAD curve: the output as the top (MoRF) or bottom (LeRF) p% of pixels are imputed away.

    Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022, "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods". Pixels are ranked by their attribution summed over
    channels (highest first; equal ones in random order, NOTE: [Tied attributions in ROAD]); for
    each p the ``round(p H W)``
    highest-ranked (MoRF) or lowest-ranked (LeRF) pixels, all channels, are replaced by noisy
    linear imputation (NOTE: [Noisy linear imputation]). No retraining: the same model scores
    every imputed image.

    Args:
      f: model function with one output per example (``xattr.target``): a class probability, or
        a 0/1 correctness (``lambda x, y: (model(x).argmax(1) == y).double()`` with the labels
        a pass-through argument) whose batch mean is the accuracy curve.
      attr_fn_or_attributions: an attribution function (called once) or attributions shaped
        like the image (B, C, H, W), or per pixel (B, 1, H, W) or (B, H, W).
      percentages: increasing fractions of removed pixels in [0, 1); each must keep a pixel.
      order: "morf" (most relevant first: faithful attributions make the output fall fast,
        lower AUC is better) or "lerf" (least relevant first: it should stay, higher is better).
      imputation: "noisy_linear" (the paper's; ``noise=0`` makes it plain linear imputation).
      noise: std of the Gaussian noise added to the imputed pixels, >= 0, in the image's units
        (the authors' 0.01 is for [0, 1] images: NOTE: [ROAD as the authors' code does it]).
      ties: the order of pixels with equal attributions: "random" (the authors' handling: per
        example from ``generator``, one order for every percentage) or "index" (lower pixel
        index first, deterministic).
      counts: pixels removed at fraction p: "nearest" (``round(p H W)``) or "authors" (their
        code's, rounded down: ``int(p H W)`` for MoRF, ``H W - int((1 - p) H W)`` for LeRF).
      argnums: the image argument (one (B, C, H, W) float tensor); others pass through.
      generator: int seed or torch.Generator for the noise and the tie order, per example
        (NOTE: [Explicit randomness]).
      chunk_size, memory_budget: model rows, or bytes of imputed images, per model call.
      show_progress: a progress bar over the model calls (needs tqdm).

    Returns:
      ``fn(*args) -> Curve(fractions (P,), scores (B, P), auc (B,))``: ``fractions`` are the
      fractions actually removed (``counts / (H W)``), the AUC the trapezoid rule over them.

    Example:
      >>> f = xattr.target(model, 3)
      >>> curve = xattr.metrics.road(f, xattr.saliency(f), order="morf", generator=0)(images)   # Curve, auc (B,)
    """
    ps = _percentages(percentages)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    if imputation != "noisy_linear":
        raise ValueError(
            f"imputation must be 'noisy_linear' (pass noise=0 for plain linear imputation), got {imputation!r}"
        )
    _check_noise(noise)
    if ties not in ("random", "index"):
        raise ValueError(f"ties must be 'random' (equal attributions in random order, the authors' handling) or "
                         f"'index' (lower pixel index first), got {ties!r}")  # fmt: skip
    if counts not in ("nearest", "authors"):
        raise ValueError(f"counts must be 'nearest' (round(p H W) pixels) or 'authors' (their code's, rounded down), "
                         f"got {counts!r}")  # fmt: skip
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise TypeError(f"argnums must be an int (ROAD attributes one image tensor), got {argnums!r}")

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def fn(*args):
        warn_if_training(f)
        (idx,) = positive_nums((argnums,), len(args))
        (x,), _ = T.split_args(args, (idx,))
        batch = batch_of((x,))
        _check_image(x)
        _, c, h, w = x.shape
        pixel = _pixel_scores(stopped(resolve(attr_fn_or_attributions, args)), x)  # (B, H W)
        n = _removed_counts(ps, h * w, counts, order)
        if n[-1] >= h * w:
            raise ValueError(f"percentage {ps[-1]} removes all {h * w} pixels of a {h}x{w} image; ROAD imputes "
                             "from the kept pixels, so every percentage must keep one (use a smaller one)")  # fmt: skip
        stream, tie_stream = streams(generator, 2)  # the first is the noise's stream as it always was
        rank = _ranks(pixel, order == "morf", ties, tie_stream)
        cnt = torch.tensor(n, device=x.device)
        removed = (rank[:, None, :] < cnt[None, :, None]).reshape(batch, len(ps), h, w)  # (B, P, H, W)
        z = None
        if noise > 0:
            z = torch.empty((batch, len(ps), c, h, w), dtype=x.dtype, device=x.device)
            z = per_example(stream, z, lambda v, g: v.normal_(0.0, float(noise), generator=g))
        k = len(ps)
        per = copies_per_call((x,), batch, chunk_size, memory_budget, k)
        outs = []
        spans = [(s, min(s + per, k)) for s in range(0, k, per)]
        with model_calls(), T.batch_scope(batch):
            for s, e in progress(show_progress, spans, total=len(spans), desc="ROAD", unit="call"):
                xs = x.unsqueeze(1).expand(-1, e - s, -1, -1, -1).reshape(-1, c, h, w)
                r = removed[:, s:e].reshape(-1, h, w)
                filled = _impute(xs, r, None if z is None else z[:, s:e].reshape(-1, c, h, w))
                rows = filled.reshape(batch, e - s, c, h, w).transpose(0, 1).reshape(-1, c, h, w)
                call = passthrough(args, (idx,), e - s, batch)
                out = model_rows(f(*T.split_args(call, (idx,))[1]((rows,))))
                check_finite(out)
                outs.append(out.reshape(e - s, batch))
        scores = torch.cat(outs).T
        dtype = result_dtype(scores.dtype)
        scores = scores.to(dtype)
        fractions = torch.tensor(n, dtype=dtype, device=x.device) / (h * w)
        return Curve(fractions, scores, torch.trapezoid(scores, fractions, dim=1))

    return fn


def _removed_counts(ps, pixels: int, counts: str, order: str) -> list[int]:
    """Pixels removed at each fraction p (NOTE: [ROAD as the authors' code does it], Counts)."""
    if counts == "nearest":
        return [round(p * pixels) for p in ps]
    if order == "morf":
        return [int(p * pixels) for p in ps]
    return [pixels - int((1 - p) * pixels) for p in ps]


def noisy_linear_imputation(
    x: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01, generator=None
) -> torch.Tensor:
    """Images (B, C, H, W) with the ``removed`` pixels filled in by noisy linear imputation.

    ``removed``: bool (B, H, W), (B, 1, H, W), or (H, W) shared by the batch, True where a pixel
    (all its channels) is removed; each image must keep at least one pixel. Each removed pixel
    becomes the weighted mean of its 8 neighbours (1/6 direct, 1/12 diagonal, renormalised at the
    border; removed neighbours are unknowns too) plus N(0, noise^2) noise, drawn per example from
    ``generator`` (NOTE: [Noisy linear imputation]). Kept pixels are returned as they are. This
    is the authors' ``NoisyLinearImputer`` (NOTE: [ROAD as the authors' code does it]); their
    ``noise=0.01`` is for images in [0, 1].

    Example:
      >>> removed = torch.zeros(B, H, W, dtype=torch.bool); removed[:, 2:5, 2:5] = True
      >>> filled = xattr.metrics.noisy_linear_imputation(images, removed, generator=0)   # like images
    """
    _check_image(x)
    _check_noise(noise)
    b, c, h, w = x.shape
    if b == 0:
        raise ValueError("the batch is empty (0 images): there is nothing to impute")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values: every imputed pixel next to one would be NaN; clean the images first")
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool:
        raise TypeError(f"removed must be a bool tensor, got {getattr(removed, 'dtype', type(removed).__name__)}")
    if removed.ndim == 4 and removed.shape[1] == 1:
        removed = removed[:, 0]
    if removed.ndim == 2:
        removed = removed.unsqueeze(0)
    if removed.ndim != 3 or removed.shape[1:] != (h, w) or removed.shape[0] not in (1, b):
        raise ValueError(f"removed of shape {tuple(removed.shape)} must be (B, H, W), (B, 1, H, W) or (H, W) "
                         f"for images of shape {tuple(x.shape)}")  # fmt: skip
    removed = removed.to(x.device).expand(b, h, w)
    if bool(removed.reshape(b, -1).all(1).any()):
        raise ValueError("an image has every pixel removed: linear imputation needs at least one kept pixel")
    z = None
    if noise > 0:
        (stream,) = streams(generator, 1)
        z = per_example(stream, torch.empty_like(x), lambda v, g: v.normal_(0.0, float(noise), generator=g))
    return _impute(stopped(x), removed, z)


def _impute(x: torch.Tensor, removed: torch.Tensor, z: torch.Tensor | None, method: str = "auto") -> torch.Tensor:
    """x (R, C, H, W) with the removed (R, H, W) pixels solved for, plus the noise z at them."""
    if not bool(removed.any()):
        return x.clone()
    v = solve(x, removed, method)  # NOTE: [Choosing the imputation solver] in _road_solvers.py
    return v if z is None else v + z * removed.unsqueeze(1)


def _ranks(pixel: torch.Tensor, descending: bool, ties: str, stream) -> torch.Tensor:
    """Each pixel's place (B, N) in the removal order of the scores (B, N), 0 removed first:
    sorted by score, equal scores by a uniform random key per example (``ties="random"``,
    NOTE: [Tied attributions in ROAD]) or by pixel index (``"index"``)."""
    b, n = pixel.shape
    if ties == "random":
        # drawn on CPU in float64: the same order on every device, and 53 random bits make equal keys
        # (which would fall back to pixel order) practically impossible
        key = per_example(stream, torch.empty(b, n, dtype=torch.float64), lambda v, g: v.uniform_(generator=g))
        shuffle = torch.argsort(key.to(pixel.device), dim=1)  # a uniform random permutation per example
        within = torch.sort(torch.gather(pixel, 1, shuffle), dim=1, descending=descending, stable=True).indices
        order = torch.gather(shuffle, 1, within)
    else:
        order = torch.sort(pixel, dim=1, descending=descending, stable=True).indices
    return torch.empty_like(order).scatter_(1, order, torch.arange(n, device=pixel.device).expand(b, -1))


def _pixel_scores(phi: Any, x: torch.Tensor) -> torch.Tensor:
    """Each pixel's attribution summed over channels, (B, H W)."""
    b, c, h, w = x.shape
    if isinstance(phi, (tuple, list)) and len(phi) == 1:
        phi = phi[0]
    if not isinstance(phi, torch.Tensor) or tuple(phi.shape) not in ((b, c, h, w), (b, 1, h, w), (b, h, w)):
        shape = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise ValueError(f"attributions of shape {shape} do not fit images of shape {tuple(x.shape)}: give them "
                         f"like the image {(b, c, h, w)}, or per pixel {(b, 1, h, w)} or {(b, h, w)}")  # fmt: skip
    if not bool(torch.isfinite(phi).all()):
        raise ValueError("the attributions hold NaN or infinite values: the pixel order they give is garbage; "
                         "check the attribution method (or the precomputed attributions) for NaN")
    phi = phi.reshape(b, -1, h * w) if phi.ndim == 4 else phi.reshape(b, 1, h * w)
    return phi.to(torch.promote_types(phi.dtype, torch.float32)).sum(1)


def _check_image(x) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"ROAD imputes pixels of float images (B, C, H, W) from their 8 neighbours; got {what} "
                         "(a single image needs its batch dim: x[None]; a grey image its channel dim)")  # fmt: skip
    if x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"images of {x.shape[2]}x{x.shape[3]} pixels have no neighbours to impute from")


def _check_noise(noise) -> None:
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (the std of the imputation noise), got {noise!r}")


def _percentages(percentages) -> tuple[float, ...]:
    if isinstance(percentages, numbers.Real) and not isinstance(percentages, bool):
        percentages = (percentages,)
    try:
        ps = tuple(percentages)
    except TypeError:
        raise TypeError(f"percentages must be a sequence of numbers in [0, 1), got {percentages!r}") from None
    if not ps or not all(isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 <= p < 1 for p in ps):
        raise ValueError(f"percentages must be a non-empty sequence of numbers in [0, 1) (fractions of pixels "
                         f"removed), got {percentages!r}")  # fmt: skip
    if any(b <= a for a, b in zip(ps, ps[1:])):
        raise ValueError(f"percentages must be strictly increasing, got {ps!r}")
    return tuple(float(p) for p in ps)
