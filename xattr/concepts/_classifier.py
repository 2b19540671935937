"""Concept activation vectors: a linear classifier between a concept's and a counterpart's activations.

NOTE: [Which classifier makes the CAV]
The CAV is the normal of a linear decision boundary between the layer activations of the
concept's examples (label 1) and of the counterpart's (label 0), oriented towards the concept
and scaled to unit length (Kim et al. 2018). ``classifier`` chooses the boundary:
  None                 scikit-learn's ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``,
                       the model inside Captum's DefaultClassifier, seeded from ``generator``;
  an sklearn estimator any linear classifier with ``fit`` and ``coef_`` (LogisticRegression,
                       LinearSVC, RidgeClassifier, ...), cloned and fitted (a ``random_state``
                       left None is seeded from ``generator``);
  LogisticRegression() xattr's own L2-regularised logistic regression, solved by L-BFGS in
                       torch in float64: deterministic, on the activations' device, no sklearn;
  a function           ``fn(X, y) -> w`` or ``(w, b)`` on tensors (w: (F,)); without b the
                       boundary passes midway between the two class means.
Accuracy is measured on a held-out ``test_fraction`` of the examples (Captum's 0.33 split),
drawn from the same seeded stream, and is NaN for ``test_fraction=0``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import sys
import types
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._src.checks import at_least_float32  # NOTE: [CAVs of half-precision models]
from ._cache import update_digest


@dataclass(frozen=True)
class CAV:
    """A concept activation vector at one layer (NOTE: [Which classifier makes the CAV]).

    Attributes:
      vector: (F,) unit normal of the boundary, pointing towards the concept.
      weights: (F,) the classifier's raw weights (same direction, the classifier's scale).
      bias: the classifier's intercept (decision: ``h @ weights + bias > 0`` means concept).
      accuracy: held-out accuracy of the classifier (NaN without a test split).

    Example:
      >>> c = xattr.concepts.cav(xattr.at_layer(model, model.conv2), stripes, random0, generator=0)
      >>> c.vector, c.accuracy                # (F,) unit vector towards the concept, held-out accuracy
    """

    vector: torch.Tensor
    weights: torch.Tensor
    bias: float
    accuracy: float

    def as_dict(self) -> dict:
        """Plain tensors and numbers, for the cache."""
        return {"vector": self.vector, "weights": self.weights, "bias": float(self.bias),
                "accuracy": float(self.accuracy)}  # fmt: skip

    @staticmethod
    def from_dict(d: dict) -> "CAV":
        return CAV(d["vector"], d["weights"], float(d["bias"]), float(d["accuracy"]))


class LogisticRegression:
    """L2-regularised binary logistic regression, solved by Newton's method in torch (float64).

    Minimises ``mean(log(1 + exp(-s (x w + b)))) + l2 / 2 * |w|^2`` over the examples (s = +-1).
    The optimal w lies in the span of the examples, so the problem is solved in the basis of
    their (right) singular vectors: r <= min(N, F) unknowns whatever the layer's width, a few Newton
    steps with a backtracking line search. Deterministic, runs where the activations are, no
    sklearn. ``standardize`` fits on features scaled to unit variance and maps w back.
    After ``fit``: ``coef_`` (1, F), ``intercept_`` (1,), ``classes_`` [0, 1] (sklearn's layout),
    and ``decision_function``/``predict`` as sklearn's.

    Example:
      >>> clf = xattr.concepts.LogisticRegression(l2=0.1)
      >>> c = xattr.concepts.fit_cav(h_concept, h_random, classifier=clf, generator=0)   # a CAV
    """

    def __init__(self, l2: float = 1e-2, max_iter: int = 100, tol: float = 1e-10, standardize: bool = True):
        self.l2, self.max_iter, self.tol, self.standardize = l2, max_iter, tol, standardize

    def __repr__(self) -> str:
        return (f"LogisticRegression(l2={self.l2}, max_iter={self.max_iter}, tol={self.tol}, "
                f"standardize={self.standardize})")  # fmt: skip

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> "LogisticRegression":
        X, y = X.detach().double(), y.detach().double().to(X.device)
        mean = X.mean(0) if self.standardize else torch.zeros_like(X[0])
        scale = X.std(0, unbiased=False).clamp_min(1e-12) if self.standardize else torch.ones_like(X[0])
        Z = (X - mean) / scale
        wide = Z.shape[0] <= Z.shape[1]  # eigenvectors of the smaller Gram matrix give the basis
        lam, E = torch.linalg.eigh(Z @ Z.T if wide else Z.T @ Z)
        keep = lam > lam.max().clamp_min(0) * 1e-12
        lam, E = lam[keep], E[:, keep]
        basis = Z.T @ (E / lam.sqrt()) if wide else E  # (F, r) orthonormal right singular vectors
        A = torch.cat([Z @ basis, torch.ones_like(X[:, :1])], 1)  # features in the basis, and 1
        reg = torch.full((A.shape[1],), float(self.l2), dtype=A.dtype, device=A.device)
        reg[-1] = 0.0

        def loss(theta):
            z = A @ theta
            return (F.softplus(z) - y * z).mean() + 0.5 * (reg * theta * theta).sum()

        theta = torch.zeros(A.shape[1], dtype=A.dtype, device=A.device)
        current = loss(theta)
        for _ in range(self.max_iter):
            p = torch.sigmoid(A @ theta)
            grad = A.T @ (p - y) / len(y) + reg * theta
            if float(grad.abs().max()) < self.tol:
                break
            hess = (A.T * (p * (1 - p) / len(y))) @ A + torch.diag(reg + 1e-12)
            step, t = torch.linalg.solve(hess, grad), 1.0
            while t > 1e-10:
                new = loss(theta - t * step)
                if new <= current - 1e-4 * t * float(grad @ step):
                    break
                t /= 2
            theta, current = theta - t * step, new
        coef = (basis @ theta[:-1]) / scale
        self.coef_ = coef[None]
        self.intercept_ = (theta[-1] - (coef * mean).sum()).reshape(1)
        self.classes_ = torch.tensor([0, 1])
        return self

    def decision_function(self, X) -> torch.Tensor:
        """The logit (N,) of class 1 for the rows of X (N, F), as sklearn's binary classifiers give it."""
        X = torch.as_tensor(X).detach().to(device=self.coef_.device, dtype=torch.float64)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict(self, X) -> torch.Tensor:
        """The class (0 or 1) of each row of X (N, F): 1 where the logit is positive."""
        return self.classes_.to(self.coef_.device)[(self.decision_function(X) > 0).long()]


def classifier_tag(classifier) -> str | None:
    """What identifies a classifier's configuration in cache keys; None when nothing identifies
    it stably, and its CAVs must not be cached (NOTE: [Naming a classifier function])."""
    if classifier is None:
        return "SGDClassifier(alpha=0.01,max_iter=1000,tol=0.001)"
    if callable(classifier) and not hasattr(classifier, "fit"):
        ident = _Identity(getattr(classifier, "__module__", None))
        if not ident.feed(classifier):
            return None
        name = getattr(classifier, "__qualname__", type(classifier).__qualname__)
        return f"{getattr(classifier, '__module__', '')}.{name}-{ident.h.hexdigest()[:16]}"
    return repr(classifier)


# NOTE: [Naming a classifier function]
# A function classifier is named in CAV cache keys by what decides what it computes: its module
# and qualified name, its compiled code (bytecode, constants, the names it uses, nested functions'
# code), its defaults, its closure cells and the module globals it names. Two lambdas, or two
# closures of one factory over different values, thus get different keys, and the same source
# with the same values gets the same key in any process. A value is identified when it is plain
# (None, numbers, strings, bytes, containers of them; tensors and arrays by dtype, shape and
# bytes), a function of the classifier's own module (recursively, by content), a
# functools.partial, a module, or an object found again under its module and qualified name
# (classes, builtins, library functions: by that name, so editing library code does not change
# keys). Anything else (an object in a closure or a global, a bound method, a callable instance)
# has no stable identity: its state is unknown, and its repr may hold a memory address that a
# later object reuses. Such a classifier's CAVs are computed afresh, never read from or written
# to the cache; the activations are still cached.

_SCALARS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis), range, slice, torch.dtype,
            torch.device)  # fmt: skip


class _Identity:
    """A hash of what identifies a classifier function (NOTE: [Naming a classifier function])."""

    def __init__(self, home: str | None):
        self.h, self.home, self.seen = hashlib.sha256(), home, set()

    def feed(self, v) -> bool:
        """Feeds what identifies ``v`` to the hash; False when nothing identifies it stably."""
        self.h.update(f"<{type(v).__qualname__}>".encode())
        if isinstance(v, _SCALARS):
            self.h.update(repr(v).encode())
            return True
        if isinstance(v, torch.Tensor):
            update_digest(self.h, v)
            return True
        if _is_array(v):
            self.h.update(f"{v.dtype}:{v.shape}".encode() + v.tobytes())
            return True
        if isinstance(v, (tuple, list)):
            self.h.update(str(len(v)).encode())
            return all(self.feed(x) for x in v)
        if isinstance(v, dict):
            self.h.update(str(len(v)).encode())
            return all(self.feed(k) and self.feed(x) for k, x in v.items())
        if isinstance(v, (set, frozenset)):  # NOTE: iteration order differs between processes
            parts = [self.digest_of(x) for x in v]
            return None not in parts and self.feed(sorted(parts))
        if isinstance(v, types.CodeType):
            return self.feed_code(v)
        if isinstance(v, types.FunctionType) and (v.__module__ == self.home or _name_of(v) is None):
            return self.feed_function(v)
        if isinstance(v, functools.partial):
            return self.feed((v.func, v.args, v.keywords))
        name = _name_of(v)
        self.h.update(str(name).encode())
        return name is not None

    def digest_of(self, v) -> str | None:
        sub = _Identity(self.home)
        sub.seen = self.seen
        return sub.h.hexdigest() if sub.feed(v) else None

    def feed_code(self, code: types.CodeType) -> bool:
        self.h.update(code.co_code)
        self.h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode())
        return self.feed(code.co_consts)

    def feed_function(self, fn: types.FunctionType) -> bool:
        """A function's name, code, defaults, closure cells and the globals its code names."""
        self.h.update(f"{fn.__module__}.{fn.__qualname__}".encode())
        if id(fn) in self.seen:  # recursion (a function naming itself): its content is being fed
            return True
        self.seen.add(id(fn))
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append((cell.cell_contents,))
            except ValueError:  # a cell not filled yet
                cells.append(())
        used = {n: fn.__globals__[n] for n in sorted(_names(fn.__code__)) if n in fn.__globals__}
        return (self.feed_code(fn.__code__) and self.feed((fn.__defaults__, fn.__kwdefaults__))
                and self.feed(cells) and self.feed(used))  # fmt: skip


def _is_array(v) -> bool:
    """A numpy array or scalar whose bytes are its values (no Python objects inside)."""
    dtype = getattr(v, "dtype", None)
    return type(v).__module__ == "numpy" and hasattr(v, "tobytes") and not getattr(dtype, "hasobject", True)


def _name_of(v) -> str | None:
    """``module.qualname`` for a module, or an object found again under that name; else None."""
    if isinstance(v, types.ModuleType):
        return v.__name__
    module, qualname = getattr(v, "__module__", None), getattr(v, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}.{qualname}" if found is v else None


def _names(code: types.CodeType) -> set:
    """The global (and attribute) names used by a code object and the code nested in it."""
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


# NOTE: [CAVs of half-precision models]
# numpy has no bfloat16, so activations are handed to a scikit-learn estimator as float32 (float16
# and bfloat16, both exactly) or as they are (float32, float64). The boundary is read back, the
# midpoint bias of a function classifier, the held-out accuracy and the unit vector are computed
# in the same widened dtype; only the finished CAV's ``vector`` and ``weights`` are rounded to the
# activations' dtype, so they multiply the model's activations and gradients as they are. In
# bfloat16 a mean over examples, a dot product over F features or a norm would keep 8 significant
# bits, enough to move examples across the boundary and the accuracy with them.


def _fit(classifier, X: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """Trains the classifier on (X, y in {0, 1}); returns (w (F,), b) towards label 1, w in
    X's dtype widened to at least float32 (NOTE: [CAVs of half-precision models])."""
    wide = at_least_float32(X.dtype)
    if classifier is not None and callable(classifier) and not hasattr(classifier, "fit"):
        got = classifier(X, y)
        w, b = got if isinstance(got, tuple) else (got, None)
        w = torch.as_tensor(w, device=X.device).to(wide).reshape(-1)
        if b is None:
            Xw = X.to(wide)
            b = -float(w @ (Xw[y == 1].mean(0) + Xw[y == 0].mean(0))) / 2
        return w, float(b)
    if isinstance(classifier, LogisticRegression):
        est = copy.copy(classifier).fit(X, y)
        return est.coef_[0].to(wide), float(est.intercept_[0])
    if classifier is None:
        from sklearn.linear_model import SGDClassifier

        est = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed % 2**32)
    else:
        if not hasattr(classifier, "fit"):
            raise TypeError(f"classifier must be None, an estimator with fit/coef_, or a function; got {classifier!r}")
        try:
            from sklearn.base import clone

            est = clone(classifier)
        except (ImportError, TypeError):
            est = copy.deepcopy(classifier)
        if hasattr(est, "get_params") and est.get_params().get("random_state", 0) is None:
            est.set_params(random_state=seed % 2**32)
    est.fit(X.detach().cpu().to(wide).numpy(), y.detach().cpu().long().numpy())
    coef = torch.as_tensor(getattr(est, "coef_"), dtype=wide).reshape(-1, X.shape[1])
    if coef.shape[0] != 1:
        raise ValueError(f"the classifier gave {coef.shape[0]} weight rows; a CAV needs a binary linear classifier")
    intercept = getattr(est, "intercept_", 0.0)
    b = float(torch.as_tensor(intercept, dtype=torch.float64).reshape(-1)[0]) if intercept is not None else 0.0
    return coef[0].to(X.device), b


def fit_cav(
    concept: torch.Tensor, negative: torch.Tensor, *, classifier=None, generator=0, test_fraction: float = 0.33
) -> CAV:
    """The CAV separating two sets of layer activations (NOTE: [Which classifier makes the CAV]).

    Args:
      concept, negative: activations (N_c, F) and (N_n, F) (flatten layers first).
      classifier: None (sklearn's SGDClassifier as in Captum), an sklearn linear estimator,
        ``LogisticRegression()`` or a function ``(X, y) -> w | (w, b)``.
      generator: int seed or torch.Generator for the split and the classifier (None: global).
      test_fraction: share of the examples held out to measure accuracy.

    Returns:
      A `CAV`, its ``vector`` and ``weights`` in the activations' dtype (fitted, normalised and
      scored in float32 for float16 and bfloat16 activations, NOTE: [CAVs of half-precision models]).

    Example:
      >>> split = xattr.at_layer(model, model.conv2)
      >>> h_c, h_r = xattr.concepts.activations(split, stripes), xattr.concepts.activations(split, random0)
      >>> c = xattr.concepts.fit_cav(h_c, h_r, generator=0)              # CAV: c.vector (F,)
    """
    if concept.ndim != 2 or negative.ndim != 2 or concept.shape[1] != negative.shape[1]:
        shapes = f"{tuple(concept.shape)} and {tuple(negative.shape)}"
        raise ValueError(f"activations must be (N, F) with one F; got {shapes}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    seed = seed_of(generator)
    X = torch.cat([concept, negative]).detach()
    y = torch.cat([torch.ones(len(concept)), torch.zeros(len(negative))]).to(X.device)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed)).to(X.device)
    n_test = int(test_fraction * len(X))
    test, train = perm[:n_test], perm[n_test:]
    if len(torch.unique(y[train])) < 2:
        raise ValueError("the training split holds examples of one class only; give both sets more examples")
    w, b = _fit(classifier, X[train], y[train], seed)  # NOTE: [CAVs of half-precision models]
    acc = float(((X[test].to(w.dtype) @ w + b > 0).to(y.dtype) == y[test]).float().mean()) if n_test else math.nan
    norm = w.norm()
    vector = w / norm if norm > 0 else w
    return CAV(vector.to(X.dtype), w.to(X.dtype), b, acc)


def seed_of(generator, key: str = "") -> int:
    """An int seed from ``generator`` (int, torch.Generator, None: global), mixed with ``key``."""
    if generator is None:
        base = int(torch.randint(0, 2**62, (1,)))
    elif isinstance(generator, torch.Generator):
        base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    elif isinstance(generator, int) and not isinstance(generator, bool):
        base = generator
    else:
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    if not key:
        return base % 2**62
    return (base * 1_000_003 + zlib.crc32(key.encode()) * 0x9E3779B1) % 2**62
