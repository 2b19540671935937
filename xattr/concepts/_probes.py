"""Linear probes at every layer: accuracy, a control task, selectivity and fragility.

NOTE: [Probes and control tasks]
`probe` asks, per layer, whether a property of the inputs is linearly decodable from the layer's
activations, and how robustly:
  activations  one `at_layer` split at all the layers, so one forward pass per batch of
               ``chunk_size`` inputs (under ``torch.no_grad``) reaches every layer; each layer's
               value is flattened to (N, F). The model is not changed and no hook stays on it.
  split        one permutation (seeded ``seed_of(generator, "split")``) holds out
               ``round(test_fraction N)`` examples; every layer and the control task use it.
  probe        the classifier (NOTE: [Which classifier probes]) fitted on the training rows;
               accuracy is measured on the held-out rows.
  control      Hewitt and Liang 2019: the same probe trained and scored on control labels that
               keep the labels' frequencies but not their relation to the input. Given ``types``
               (one id per example: a token id, a word type), every type gets one label drawn
               from the labels' empirical distribution, as in the paper: a probe can learn it by
               memorising types, and selectivity = accuracy - control accuracy is what the probe
               finds beyond memorisation. Without types (continuous inputs: pixels, embeddings),
               the labels are permuted (seeded ``seed_of(generator, "control")``); a held-out
               example's control label is then independent of its activations, so control
               accuracy sits near the accuracy of a random guess at every layer and selectivity
               is the accuracy above that baseline: a sanity check, not the paper's
               memorisation measure.
  fragility    the held-out accuracy under Gaussian noise at a grid of levels, and the level
               where it collapses (NOTE: [Fragility of a probe] in _fragility.py).

NOTE: [Which classifier probes]
  None                    ``MultinomialLogisticRegression()``: softmax regression with an L2
                          penalty, by L-BFGS in torch float64; deterministic, on the activations'
                          device, without a numpy round trip per noise draw. On the same
                          features it minimises the objective of sklearn's
                          ``LogisticRegression(C=1 / (l2 N))`` (the tests check that). Its
                          features are centred and divided by one number, the layer's activation
                          scale: the noise is isotropic in the activations' own coordinates, and
                          a per-feature standardisation would magnify near-constant features and
                          the weights on them, so that fragility would measure the
                          standardisation; one number keeps the geometry and gives ``l2`` one
                          meaning at every layer.
  MultinomialLogisticRegression(...)   as configured (copied, then fitted).
  LogisticRegression()    xattr's binary logistic regression: binary properties only.
  an sklearn classifier   anything with ``fit`` and ``predict`` (LogisticRegression, LinearSVC,
                          RidgeClassifier, an MLP for a non-linear probe, ...): cloned and fitted
                          on float64 numpy arrays; a ``random_state`` left None is seeded from
                          ``seed_of(generator, f"fit-{layer}")`` (``f"control-{layer}"`` for the
                          control probe).
Labels are any integer or bool class ids; the classifiers see their indices 0..K-1.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from .._src.layers import at_layer
from .._src.progress import progress
from .._src.warn import warn
from ._classifier import LogisticRegression, seed_of
from ._data import named_layers, root_module
from ._fragility import DEFAULT_LEVELS, ProbeResult, activation_scale, check_levels, collapse_level, noise_curve
from ._tcav import activations


class MultinomialLogisticRegression:
    """L2-regularised multinomial (softmax) logistic regression, by L-BFGS in torch (float64).

    Minimises ``mean_i CE(softmax(z_i W + b), y_i) + l2 / 2 |W|^2`` over W (F, K) and b (K,)
    (the intercept is not penalised), with z the features centred and scaled by ``scaling``:
    "rms" one number, `activation_scale` (NOTE: [Which classifier probes]); "features" each
    feature by its standard deviation (1 for a feature constant in training); None: z = x.
    The optimal W lies in the span of the training rows, so with more features than rows it is
    solved in an orthonormal basis of that span. Deterministic; runs where the data are.
    After ``fit``: ``classes_`` (K,), ``coef_`` (K, F) and ``intercept_`` (K,) in the units of
    the raw features (sklearn's layout: logits ``x @ coef_.T + intercept_``), ``n_iter_``.

    Example:
      >>> clf = xattr.concepts.MultinomialLogisticRegression(l2=0.01).fit(h_train, y_train)
      >>> acc = (clf.predict(h_test) == y_test).float().mean()
    """

    def __init__(self, l2: float = 1e-2, max_iter: int = 1000, tol: float = 1e-7, scaling: str | None = "rms"):
        if not (isinstance(l2, (int, float)) and l2 > 0 and math.isfinite(l2)):
            raise ValueError(f"l2 must be a finite number > 0 (separable classes have no optimum without it), "
                             f"got {l2!r}")  # fmt: skip
        if scaling not in ("rms", "features", None):
            raise ValueError(f"scaling must be 'rms', 'features' or None, got {scaling!r}")
        self.l2, self.max_iter, self.tol, self.scaling = float(l2), int(max_iter), float(tol), scaling

    def __repr__(self) -> str:
        return (f"MultinomialLogisticRegression(l2={self.l2}, max_iter={self.max_iter}, tol={self.tol}, "
                f"scaling={self.scaling!r})")  # fmt: skip

    def fit(self, X, y) -> "MultinomialLogisticRegression":
        X = torch.as_tensor(X).detach().double()
        y = torch.as_tensor(y).reshape(-1).to(X.device)
        if X.ndim != 2 or len(y) != len(X):
            raise ValueError(f"fit needs X (N, F) and y (N,); got {tuple(X.shape)} and {tuple(y.shape)}")
        classes, idx = torch.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError("the training labels hold one class only; a classifier needs two or more")
        mean = X.mean(0) if self.scaling else torch.zeros_like(X[0])
        if self.scaling == "rms":
            s = activation_scale(X)
            scale = torch.full_like(X[0], s if s > 0 else 1.0)
        elif self.scaling == "features":
            sd = X.std(0, unbiased=False)
            scale = torch.where(sd > 0, sd, torch.ones_like(sd))
        else:
            scale = torch.ones_like(X[0])
        Z, basis = (X - mean) / scale, None
        if Z.shape[1] > Z.shape[0]:  # wide: solve in the span of the rows (r <= N unknowns per class)
            lam, E = torch.linalg.eigh(Z @ Z.T)
            keep = lam > lam.max().clamp_min(0) * 1e-12
            basis = Z.T @ (E[:, keep] / lam[keep].sqrt())
            Z = Z @ basis
        r, k = Z.shape[1], len(classes)
        theta = torch.zeros(r * k + k, dtype=Z.dtype, device=Z.device)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=self.max_iter, max_eval=2 * self.max_iter,
                                tolerance_grad=self.tol, tolerance_change=1e-16, history_size=20,
                                line_search_fn="strong_wolfe")  # fmt: skip

        onehot = F.one_hot(idx, k).to(Z.dtype)

        def closure():  # the loss and its gradient in closed form: no autograd graph
            W, b = theta.detach()[: r * k].view(r, k), theta.detach()[r * k :]
            logits = Z @ W + b
            logp = logits - logits.logsumexp(1, keepdim=True)
            G = (logp.exp() - onehot) / len(Z)
            theta.grad = torch.cat([(Z.T @ G + self.l2 * W).reshape(-1), G.sum(0)])
            return -(onehot * logp).sum() / len(Z) + 0.5 * self.l2 * (W * W).sum()

        opt.step(closure)
        self.n_iter_ = int(opt.state[theta]["n_iter"])
        if self.n_iter_ >= self.max_iter:
            warn(f"MultinomialLogisticRegression did not converge in max_iter={self.max_iter} iterations; "
                 "raise max_iter or l2")  # fmt: skip
        W, b = theta.detach()[: r * k].view(r, k), theta.detach()[r * k :]
        W = W if basis is None else basis @ W
        self.coef_ = (W / scale[:, None]).T.contiguous()
        self.intercept_ = b - self.coef_ @ mean
        self.classes_ = classes
        return self

    def decision_function(self, X) -> torch.Tensor:
        """The logits (N, K) of the rows of X (N, F)."""
        X = torch.as_tensor(X).detach().to(device=self.coef_.device, dtype=torch.float64)
        return X @ self.coef_.T + self.intercept_

    def predict(self, X) -> torch.Tensor:
        """The most likely class of each row of X (N, F), from ``classes_``."""
        return self.classes_[self.decision_function(X).argmax(1)]


def _fitted(classifier, X: torch.Tensor, y: torch.Tensor, seed: int):
    """Fits ``classifier`` on (X, y: indices 0..K-1); returns ``predict(Z) -> indices``."""
    if classifier is None:
        classifier = MultinomialLogisticRegression()
    if isinstance(classifier, MultinomialLogisticRegression):
        return copy.copy(classifier).fit(X, y).predict
    if isinstance(classifier, LogisticRegression):
        if int(y.max()) > 1:
            raise ValueError("xattr.concepts.LogisticRegression is binary; for more classes use "
                             "MultinomialLogisticRegression (the default)")  # fmt: skip
        est = copy.copy(classifier).fit(X, y)
        w, b = est.coef_[0], est.intercept_[0]
        return lambda Z: (Z.to(w) @ w + b > 0).long()
    if not (hasattr(classifier, "fit") and hasattr(classifier, "predict")):
        raise TypeError(f"classifier must be None, MultinomialLogisticRegression, LogisticRegression or an "
                        f"estimator with fit and predict; got {classifier!r}")  # fmt: skip
    try:
        from sklearn.base import clone

        est = clone(classifier)
    except (ImportError, TypeError):
        est = copy.deepcopy(classifier)
    if hasattr(est, "get_params") and "random_state" in est.get_params() and est.get_params()["random_state"] is None:
        est.set_params(random_state=seed % 2**32)
    est.fit(X.detach().cpu().double().numpy(), y.cpu().numpy())
    return lambda Z: torch.as_tensor(est.predict(Z.detach().cpu().double().numpy()))


def _layers(model, layers) -> list:
    """(name, module) pairs; a layer that is not part of the model is refused by name."""
    root = root_module(model)
    if isinstance(layers, dict):
        given = list(layers.values())
    else:
        given = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if root is not None:
        inside = {id(m) for m in root.modules()}
        for layer in given:
            if isinstance(layer, str):
                try:
                    root.get_submodule(layer)
                except AttributeError:
                    raise ValueError(f"the model has no submodule {layer!r}; see model.named_modules()") from None
            elif isinstance(layer, torch.nn.Module) and id(layer) not in inside:
                raise ValueError(f"layer {type(layer).__name__} is not a module of the model")
    return named_layers(model, layers)


def _labels(labels, n: int):
    """(classes (K,), indices (N,) in 0..K-1) of integer or bool labels."""
    try:
        y = torch.as_tensor(labels).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        what = type(labels).__name__
        raise TypeError(f"labels must be integer class ids (a tensor, array or list), got {what}") from err
    if y.ndim != 1:
        raise ValueError(f"labels must be one class id per input, (N,); got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must be integer or bool class ids, got {y.dtype}; convert them with .long()")
    if len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} inputs: give one label per input")
    classes, idx = torch.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"the labels hold one class only ({classes.tolist()}); a probe needs two or more")
    return classes, idx


def _control(idx: torch.Tensor, types, seed: int) -> torch.Tensor:
    """Control labels (NOTE: [Probes and control tasks]): per type, or a permutation."""
    g = torch.Generator().manual_seed(seed)
    if types is None:
        return idx[torch.randperm(len(idx), generator=g)]
    t = torch.as_tensor(types).detach().cpu().reshape(-1)
    if len(t) != len(idx) or t.is_floating_point():
        got = f"{t.dtype} of shape {tuple(t.shape)}"
        raise ValueError(f"types must be one integer id per input ({len(idx)}), got {got}")
    uniq, inv = torch.unique(t, return_inverse=True)
    return idx[torch.randint(0, len(idx), (len(uniq),), generator=g)][inv]


def layer_features(model, named, args: tuple, chunk_size: int | None = None) -> list:
    """[(N, F) per layer]: one forward pass per chunk of ``chunk_size`` inputs reaches every layer."""
    n = args[0].shape[0]
    step = chunk_size or n
    chunks = [tuple(a[s : s + step] if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == n else a for a in args)
              for s in range(0, n, step)]  # fmt: skip
    split = at_layer(model, [m for _, m in named])
    with torch.no_grad():
        return list(activations(split, chunks))


def probe(model, layers, inputs, labels, *, classifier=None, test_fraction: float = 0.3, noise=None,
          n_repeats: int = 5, control: bool = True, types=None, generator=0, chunk_size: int | None = None,
          show_progress: bool = False) -> ProbeResult:  # fmt: skip
    """Linear probes of a property at each layer: accuracy, control, selectivity, fragility.

    NOTE: [Probes and control tasks] and NOTE: [Fragility of a probe] define every number.

    Args:
      model: the model (an nn.Module or a function of one); it is not changed.
      layers: a module, a submodule name, a list of them, or a dict {name: module or name}.
      inputs: the model's inputs: a tensor (N, ...) or a tuple of arguments sharing dim 0.
      labels: (N,) integer or bool class ids of the property to probe.
      classifier: the probe (NOTE: [Which classifier probes]); default a multinomial logistic
        regression with L2 penalty 1e-2 on features scaled by the layer's activation scale.
      test_fraction: the share of the inputs held out to score the probes, in (0, 1).
      noise: the noise levels sigma (relative to each layer's activation scale), increasing,
        >= 0; default 21 levels from 0.01 to 100, five per decade.
      n_repeats: noise draws averaged per level.
      control: also train a control probe (Hewitt and Liang 2019) for selectivity.
      types: (N,) integer input types for the control task (default: a label permutation).
      generator: int seed or torch.Generator; the same seed gives the same result.
      chunk_size: most inputs per forward pass (default: all at once).
      show_progress: a progress bar over the layers (needs tqdm).

    Returns:
      A `ProbeResult`: ``accuracy``, ``control_accuracy``, ``selectivity``, ``curves``,
      ``collapse`` per layer, ``summary()`` and ``plot()``.

    Example:
      >>> res = probe(model, ["fc1", "fc2"], x, y, generator=0)
      >>> print(res.summary()); res.plot()
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args) or args[0].ndim == 0:
        raise TypeError("inputs must be a tensor (N, ...) or a tuple of tensors sharing dim 0")
    if not callable(model):
        raise TypeError(f"model must be an nn.Module or a function of the inputs, got {type(model).__name__}")
    named = _layers(model, layers)
    n = args[0].shape[0]
    if n == 0:
        raise ValueError("inputs are empty (0 examples): a probe needs examples of two or more classes")
    if any(a.is_floating_point() and not bool(torch.isfinite(a).all()) for a in args):
        raise ValueError("inputs hold NaN or infinite values: their activations, and so every probe, would be NaN")
    classes, y = _labels(labels, n)
    levels = check_levels(DEFAULT_LEVELS if noise is None else noise)
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise ValueError(f"n_repeats must be a positive int, got {n_repeats!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    base = seed_of(generator)
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test <= n - 2:
        raise ValueError(f"test_fraction={test_fraction} of {n} inputs leaves no held-out or too few training examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(base, "split")))
    test, train = perm[:n_test], perm[n_test:]
    if len(torch.unique(y[train])) < 2:
        raise ValueError("the training split holds one class only; give more inputs of each class")
    yc = _control(y, types, seed_of(base, "control")) if control else None
    chance = float(torch.bincount(y[test]).max()) / n_test
    feats = layer_features(model, named, args, chunk_size)
    acc, ctrl, curves, collapse, scales = [], [], [], [], []
    for (name, _), X in progress(show_progress, list(zip(named, feats)), total=len(named), desc="probe", unit="layer"):
        X = X.detach().double()
        s = activation_scale(X[train])
        predict = _fitted(classifier, X[train], y[train].to(X.device), seed_of(base, f"fit-{name}"))
        a0 = float((torch.as_tensor(predict(X[test])).cpu() == y[test]).double().mean())
        curve = noise_curve(predict, X[test], y[test], levels, scale=s, n_repeats=n_repeats,
                            generator=seed_of(base, f"noise-{name}"))  # fmt: skip
        c = collapse_level(levels, curve, a0, chance)
        if a0 > chance and float(curve[0]) <= (a0 + chance) / 2:
            warn(f"the probe at layer {name!r} has collapsed already at the smallest noise level, "
                 f"{float(levels[0]):g}; its collapse level is an upper bound: give smaller levels in "
                 "noise=")  # fmt: skip
        cacc = math.nan
        if yc is not None:
            if len(torch.unique(yc[train])) < 2:
                raise ValueError("the control labels of the training split hold one class only; give more types")
            pc = _fitted(classifier, X[train], yc[train].to(X.device), seed_of(base, f"control-{name}"))
            cacc = float((torch.as_tensor(pc(X[test])).cpu() == yc[test]).double().mean())
        acc.append(a0)
        ctrl.append(cacc)
        curves.append(curve)
        collapse.append(c)
        scales.append(s)
    f64 = torch.float64
    return ProbeResult(tuple(nm for nm, _ in named), tuple(int(f.shape[1]) for f in feats),
                       torch.tensor(acc, dtype=f64), torch.tensor(ctrl, dtype=f64), levels, torch.stack(curves),
                       torch.tensor(collapse, dtype=f64), torch.tensor(scales, dtype=f64), chance, classes, train,
                       test)  # fmt: skip
