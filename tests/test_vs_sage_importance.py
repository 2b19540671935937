"""Conformance of `xattr.sage` with sage-importance 0.0.6 (Covert's package, import name `sage`),
run live; every test skips where it is not installed (CI), or where `import sage` is another
package (SageMath's is also called `sage`). Shapley interactions against shapiq: test_vs_shapiq.py.

sage-importance takes numpy: the torch model is wrapped (`numpy_model`, float64 throughout, so the
two agree to rounding where both compute the same number). Its `MarginalImputer(model, background)`
averages the model's outputs over every background row with the known features kept, its losses
take those averaged outputs: "mse" and "cross entropy" of *probabilities* (the model must end in
a softmax or sigmoid). That is xattr's game (NOTE: [The SAGE game under marginal imputation] in
xattr/_src/sage.py): the test rebuilds the game from sage-importance's own imputer and loss on
every coalition and takes its Shapley values by explicit loops: xattr's exact estimator equals
them to rounding, for regression, multi-class and binary classification. Their estimators are
then compared with xattr's exact values within a stated multiple (4) of their standard errors, on
fixed seeds. Differences, each pinned by a test (docs/other_libraries.md, "shapiq and sage-importance"):
  * "mse" sums the squared error over a model's outputs; xattr's averages it (K outputs: K times).
  * "cross entropy" clips probabilities to [1e-12, 1 - 1e-12] (a loss is at most 27.6); xattr's
    is exact in log space.
  * standard errors: theirs sqrt(sum of squared deviations) / n (the population variance),
    xattr's the sample variance (n - 1): a factor sqrt(n / (n - 1)).
  * the convergence threshold defaults to 0.025 (xattr: 0.05, the paper's suggestion); the
    criterion is the same ratio, max standard error / (max value - min value).
"""

import importlib.metadata
import inspect
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.sage_estimators import _merge

sage = pytest.importorskip("sage")
try:
    importlib.metadata.version("sage-importance")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("the installed 'sage' is not sage-importance", allow_module_level=True)
if not hasattr(sage, "PermutationEstimator"):
    pytest.skip("the installed 'sage' is not sage-importance", allow_module_level=True)

D = torch.float64
Z = 4.0  # agreement within Z combined standard errors (fixed seeds: the runs are deterministic)


def train(x: torch.Tensor, y: torch.Tensor, outputs: int, loss, seed: int = 0, steps: int = 200) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], 16), nn.Tanh(), nn.Linear(16, outputs)).to(D)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    return net.eval()


def standardised(loader, columns=None):
    data, target = loader(return_X_y=True)
    data = data if columns is None else data[:, columns]
    return torch.tensor((data - data.mean(0)) / data.std(0)), target


def diabetes():
    """(model (B,) -> prediction, X, Y, background): a 10-16-1 MLP on standardised diabetes."""
    from sklearn.datasets import load_diabetes

    x, target = standardised(load_diabetes)
    y = torch.tensor((target - target.mean()) / target.std())
    net = train(x, y, 1, lambda out, t: (out[:, 0] - t).pow(2).mean())
    return (lambda a: net(a)[:, 0]), x[::4][:96], y[::4][:96], x[1::8][:24]


def iris():
    """(logits model, X, class ids, background): a 4-16-3 MLP on standardised iris."""
    from sklearn.datasets import load_iris

    x, target = standardised(load_iris)
    y = torch.tensor(target)
    net = train(x, y, 3, nn.functional.cross_entropy)
    return net, x[::2], y[::2], x[1::5]


def numpy_model(f, then=None):
    """A torch function as sage-importance wants it: numpy in, numpy out, float64."""

    def run(a):
        with torch.no_grad():
            out = f(torch.as_tensor(np.asarray(a, dtype=np.float64)))
            return (out if then is None else then(out)).numpy()

    return run


def sage_game_shapley(imputer, loss, X, Y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """sage-importance's game, rebuilt from its imputer and loss on every coalition: L(S) = mean
    over the examples of loss(imputer(x, S), y); and its Shapley values by explicit loops over
    coalitions, phi_i = sum_S |S|! (n - |S| - 1)! / n! (L(S) - L(S + i)). Returns (phi, L)."""
    loss_fn = sage.utils.get_loss(loss, reduction="none")
    losses = {}
    for k in range(n + 1):
        for s in itertools.combinations(range(n), k):
            mask = np.zeros((len(X), n), dtype=bool)
            mask[:, list(s)] = True
            losses[s] = float(np.mean(loss_fn(imputer(X, mask), Y)))
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += weight * (losses[s] - losses[tuple(sorted(s + (i,)))])
    return phi, losses


def test_sage_is_sage_importance():
    assert importlib.metadata.version("sage-importance") == "0.0.6"
    assert hasattr(sage, "MarginalImputer") and hasattr(sage, "KernelEstimator")


# ------------------------------------------------------------------ the same game, exactly ---------------------


def test_regression_game_equals_theirs():
    f, X, Y, bg = diabetes()
    mine = xattr.sage(f, "mse", X, Y, background=bg, estimator="exact")
    imputer = sage.MarginalImputer(numpy_model(f), bg.numpy())
    phi, losses = sage_game_shapley(imputer, "mse", X.numpy(), Y.numpy(), 10)
    assert np.abs(mine.values.numpy() - phi).max() < 1e-12
    assert abs(mine.loss_empty - losses[()]) < 1e-12 and abs(mine.loss_full - losses[tuple(range(10))]) < 1e-12
    # the empty coalition: the model's mean over the background, whatever x (theirs and xattr's)
    empty = imputer(X.numpy(), np.zeros((len(X), 10), dtype=bool))
    with torch.no_grad():
        assert np.abs(empty - f(bg).mean().item()).max() < 1e-12
    # the kernel estimator's constraint: -L({}), -L(all) over all examples, exactly xattr's losses
    low, high = sage.kernel_estimator.estimate_constraints(imputer, X.numpy(), Y.numpy(), 32,
                                                           sage.utils.get_loss("mse", reduction="none"))  # fmt: skip
    assert abs(-low - mine.loss_empty) < 1e-12 and abs(-high - mine.loss_full) < 1e-12


def test_cross_entropy_is_of_averaged_probabilities():
    """Their "cross entropy" takes probabilities averaged over the background rows (the model
    ends in a softmax); xattr's "cross_entropy" takes the logits and averages the softmax: the
    same game. The cross entropy of averaged *logits* is another one."""
    net, X, Y, bg = iris()
    mine = xattr.sage(net, "cross_entropy", X, Y, background=bg, estimator="exact")
    imputer = sage.MarginalImputer(numpy_model(net, lambda out: out.softmax(-1)), bg.numpy())
    phi, losses = sage_game_shapley(imputer, "cross entropy", X.numpy(), Y.numpy(), 4)
    assert np.abs(mine.values.numpy() - phi).max() < 1e-12
    assert abs(mine.loss_empty - losses[()]) < 1e-12
    logits = xattr.sage(net, lambda mean, y: nn.functional.cross_entropy(mean, y, reduction="none"), X, Y,
                        background=bg, estimator="exact")  # fmt: skip
    assert np.abs(logits.values.numpy() - phi).max() > 1e-3


def test_binary_cross_entropy_of_one_probability():
    """One sigmoid probability per example: theirs makes it (1 - p, p); xattr's
    "binary_cross_entropy" takes the logit and averages the sigmoid."""
    from sklearn.datasets import load_breast_cancer

    x, target = standardised(load_breast_cancer, [0, 1, 7, 20, 27])
    y = torch.tensor(target, dtype=D)
    net = train(x, y, 1, lambda out, t: nn.functional.binary_cross_entropy_with_logits(out[:, 0], t))
    X, Y, bg = x[::6], y[::6], x[1::20]
    mine = xattr.sage(net, "binary_cross_entropy", X, Y, background=bg, estimator="exact")
    imputer = sage.MarginalImputer(numpy_model(net, lambda out: out.sigmoid()), bg.numpy())
    phi, _ = sage_game_shapley(imputer, "cross entropy", X.numpy(), Y.numpy().astype(int), 5)
    assert np.abs(mine.values.numpy() - phi).max() < 1e-12


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 4), classes=st.sampled_from([0, 2, 3]))
def test_random_models_play_their_game(seed, n, classes):
    """Any small random model and data: xattr's exact SAGE is the Shapley value of the game built
    from sage-importance's imputer and loss ("mse" for classes=0, else "cross entropy")."""
    g = torch.Generator().manual_seed(seed)
    X, bg = torch.randn(12, n, generator=g, dtype=D), torch.randn(5, n, generator=g, dtype=D)
    w = torch.randn(n, max(classes, 1), generator=g, dtype=D)

    def f(a):
        out = torch.tanh(a @ w) * 2
        return out if classes else out[:, 0]

    if classes:
        Y = torch.randint(0, classes, (12,), generator=g)
        mine = xattr.sage(f, "cross_entropy", X, Y, background=bg, estimator="exact").values.numpy()
        imputer = sage.MarginalImputer(numpy_model(f, lambda out: out.softmax(-1)), bg.numpy())
        phi, losses = sage_game_shapley(imputer, "cross entropy", X.numpy(), Y.numpy(), n)
    else:
        Y = torch.randn(12, generator=g, dtype=D)
        mine = xattr.sage(f, "mse", X, Y, background=bg, estimator="exact").values.numpy()
        phi, losses = sage_game_shapley(sage.MarginalImputer(numpy_model(f), bg.numpy()), "mse", X.numpy(), Y.numpy(), n)
    assert np.abs(mine - phi).max() < 1e-12
    assert abs(mine.sum() - (losses[()] - losses[tuple(range(n))])) < 1e-12  # efficient: L({}) - L(all)


# ------------------------------------------------------------------ their estimators -------------------------


def test_permutation_estimators_agree_with_the_exact_values():
    f, X, Y, bg = diabetes()
    exact = xattr.sage(f, "mse", X, Y, background=bg, estimator="exact").values.numpy()
    imputer = sage.MarginalImputer(numpy_model(f), bg.numpy())
    theirs = sage.PermutationEstimator(imputer, "mse", random_state=0)(X.numpy(), Y.numpy(), batch_size=128,
                                                                        thresh=0.025, bar=False)  # fmt: skip
    assert (np.abs(theirs.values - exact) <= Z * theirs.std).all()
    mine = xattr.sage(f, "mse", X, Y, background=bg, convergence=0.025, n_permutations=20000, generator=0)
    assert mine.converged
    se = mine.std_errors.numpy()
    assert (np.abs(mine.values.numpy() - exact) <= Z * se).all()
    assert (np.abs(mine.values.numpy() - theirs.values) <= Z * np.sqrt(se**2 + theirs.std**2)).all()
    # both would fail a wrong game: the exact values of another loss lie far outside the errors
    other = xattr.sage(f, "mse", X, Y * 0.5, background=bg, estimator="exact").values.numpy()
    assert (np.abs(theirs.values - other) > Z * theirs.std).any()


def test_kernel_estimator_agrees_and_sums_to_the_exact_total():
    f, X, Y, bg = diabetes()
    exact = xattr.sage(f, "mse", X, Y, background=bg, estimator="exact")
    imputer = sage.MarginalImputer(numpy_model(f), bg.numpy())
    theirs = sage.KernelEstimator(imputer, "mse", random_state=0)(X.numpy(), Y.numpy(), batch_size=128,
                                                                   thresh=0.025, bar=False)  # fmt: skip
    assert (np.abs(theirs.values - exact.values.numpy()) <= Z * theirs.std).all()
    # its efficiency constraint uses L({}) and L(all) over every example: the exact total
    assert abs(theirs.values.sum() - exact.total) < 1e-12


def test_cross_entropy_estimators_agree():
    net, X, Y, bg = iris()
    exact = xattr.sage(net, "cross_entropy", X, Y, background=bg, estimator="exact").values.numpy()
    imputer = sage.MarginalImputer(numpy_model(net, lambda out: out.softmax(-1)), bg.numpy())
    theirs = sage.PermutationEstimator(imputer, "cross entropy", random_state=0)(X.numpy(), Y.numpy(), batch_size=64,
                                                                                 thresh=0.025, bar=False)  # fmt: skip
    assert (np.abs(theirs.values - exact) <= Z * theirs.std).all()


# ------------------------------------------------------------------ differences -----------------------------


def test_mse_sums_over_outputs_where_xattr_averages():
    f, X, Y, bg = diabetes()

    def two(a):  # two outputs: the prediction and half of it
        out = f(a)
        return torch.stack([out, 0.5 * out], 1)

    Y2 = torch.stack([Y, 0.5 * Y], 1)
    mine = xattr.sage(two, "mse", X[:32], Y2[:32], background=bg[:8], estimator="exact").values.numpy()
    phi, _ = sage_game_shapley(sage.MarginalImputer(numpy_model(two), bg[:8].numpy()), "mse", X[:32].numpy(),
                               Y2[:32].numpy(), 10)  # fmt: skip
    assert np.abs(phi - 2 * mine).max() < 1e-12 and np.abs(mine).max() > 1e-3


def test_cross_entropy_clips_probabilities():
    """A loss of a probability below 1e-12: theirs stops at -log(1e-12) = 27.6, xattr's is exact."""
    net, X, Y, bg = iris()
    wrong = (Y + 1) % 3  # labels the model gives almost no probability, once sharpened

    def sharp(a):
        return 40.0 * net(a)

    mine = xattr.sage(sharp, "cross_entropy", X, wrong, background=bg, estimator="exact")
    with torch.no_grad():
        exact = nn.functional.cross_entropy(sharp(X), wrong, reduction="none").numpy()
    assert abs(mine.loss_full - exact.mean()) < 1e-10
    loss_fn = sage.utils.get_loss("cross entropy", reduction="none")
    theirs = loss_fn(numpy_model(sharp, lambda out: out.softmax(-1))(X.numpy()), wrong.numpy())
    assert exact.max() > 30 and abs(theirs.max() + math.log(1e-12)) < 1e-9
    assert np.abs(theirs - np.minimum(exact, -math.log(1e-12))).max() < 1e-6


def test_standard_errors_population_versus_sample_variance():
    samples = np.random.default_rng(0).normal(size=(50, 3))
    tracker = sage.utils.ImportanceTracker()
    tracker.update(samples[:20])
    tracker.update(samples[20:])
    assert np.allclose(tracker.std, samples.std(0, ddof=0) / np.sqrt(50), rtol=1e-12)
    count, mean, m2 = 0, torch.zeros(3, dtype=D), torch.zeros(3, dtype=D)
    for part in (samples[:20], samples[20:]):
        count, mean, m2 = _merge(count, mean, m2, torch.tensor(part))
    ours = (m2 / (count - 1) / count).sqrt().numpy()  # as xattr.sage reports them
    assert np.allclose(ours, samples.std(0, ddof=1) / np.sqrt(50), rtol=1e-12)
    assert np.allclose(ours / tracker.std, math.sqrt(50 / 49), rtol=1e-12)


def test_convergence_defaults():
    assert inspect.signature(sage.PermutationEstimator.__call__).parameters["thresh"].default == 0.025
    assert inspect.signature(xattr.sage).parameters["convergence"].default == 0.05
