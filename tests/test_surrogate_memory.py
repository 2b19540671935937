"""LIME's and KernelSHAP's fits within memory_budget (NOTE: [Surrogate fits within the memory budget]).

The results do not depend on the budget (examples fitted in groups, normal equations summed over
steps of samples), and the tensors allocated during a call stay near the budget, counted by a
dispatch mode that tracks every allocation's lifetime (deterministic, unlike a process's RSS).
"""

from __future__ import annotations

import hashlib
import warnings
import weakref

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, LinearRegression, Ridge
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import xattr

B, F, N = 8, 32, 400
BUDGET = 100_000  # bytes: two examples' F x F systems per group, ~100 samples per step
SOLVERS = {"lasso": xattr.lasso(0.01), "ridge": xattr.ridge(1.0), "linear_regression": xattr.linear_regression()}


class LiveBytes(TorchDispatchMode):
    """The largest tensor and the peak of live tensor bytes allocated by ops run under it."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.largest = 0
        self.held = set()

    def _free(self, key, size):
        self.held.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.held:
                    self.held.add(key)
                    self.live += size
                    weakref.finalize(storage, self._free, key, size)
                    self.largest = max(self.largest, size)
                    self.peak = max(self.peak, self.live)
        return out


def _problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(F, generator=g, dtype=dtype)
    x = torch.randn(B, F, generator=g, dtype=dtype)
    return (lambda v: torch.tanh(v) @ w + 0.1 * (v[:, 0] * v[:, 1])), x


def _methods():
    for name, solver in SOLVERS.items():
        yield f"lime-{name}", lambda **kw: xattr.lime(interpretable_model=kw.pop("solver", solver), **kw)
    yield "kernel_shap", lambda **kw: xattr.kernel_shap(**kw)


METHODS = dict(_methods())


@pytest.mark.parametrize("name", list(METHODS))
def test_tiny_budget_gives_the_default_budgets_results(name):
    model, x = _problem()
    make = METHODS[name]
    default = make(f=model, n_samples=N, generator=3)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one example's systems exceed 1 KB: warned, tested below
        for budget in (BUDGET, 3000):
            small = make(f=model, n_samples=N, generator=3, memory_budget=budget)(x)
            torch.testing.assert_close(small, default, rtol=1e-10, atol=1e-12)


def test_enumerated_kernel_shap_in_groups_is_exact():
    """Every coalition (shared by the batch) in groups of examples: the exact Shapley values."""
    g = torch.Generator().manual_seed(1)
    a, q = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    model = lambda v: v @ a + ((v @ q) * v).sum(1)  # noqa: E731  (quadratic: Shapley value in closed form)
    x = torch.randn(B, 5, generator=g, dtype=torch.float64)
    sym = (q + q.T) / 2
    exact = x * a + x * (x @ sym)  # zero baseline: phi_i = a_i x_i + x_i sum_j S_ij x_j (pairs split evenly)
    phi = xattr.kernel_shap(model, n_samples=64, memory_budget=2 * 8 * 5 * (6 * 5 + 3))(x)
    torch.testing.assert_close(phi, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solvers_in_sample_steps_equal_sklearn(name):
    g = torch.Generator().manual_seed(2)
    X = (torch.rand(3, 300, 12, generator=g) < 0.5).double()
    y = torch.randn(3, 300, 1, generator=g, dtype=torch.float64) + X @ torch.randn(12, 1, generator=g, dtype=torch.float64)
    w = torch.rand(3, 300, generator=g, dtype=torch.float64)
    coef, intercept = SOLVERS[name](X, y, w, memory_budget=2 * 16 * 3 * 12 * 7)  # steps of 7 samples
    ref = {"lasso": Lasso(alpha=0.01, tol=1e-12, max_iter=100_000), "ridge": Ridge(1.0), "linear_regression": LinearRegression()}[name]
    for i in range(3):
        est = ref.fit(X[i].numpy(), y[i, :, 0].numpy(), sample_weight=w[i].numpy())
        np.testing.assert_allclose(coef[i, 0].numpy(), est.coef_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(intercept[i, 0].item(), est.intercept_, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(METHODS))
def test_allocations_stay_near_the_budget(name):
    """Live tensors during the call: the (B, N, F) bool coalitions (NOTE: [Coalitions held as
    bool]) plus a few budgets (the model calls' copies and activations, ~3 here; the fits' systems
    and sample steps, the similarity weights' and the draws' steps); once, the fits alone held
    three float64 (B, N, F) copies of the samples, and KernelSHAP's draws a float64 (B, N, F + 1) one."""
    model, x = _problem(torch.float32)
    coalitions = B * N * F  # one byte each
    fn = METHODS[name](f=model, n_samples=N, generator=0, memory_budget=BUDGET)
    with LiveBytes() as seen:
        fn(x)
    assert seen.largest <= max(coalitions, BUDGET)
    assert seen.peak <= coalitions + 5 * BUDGET


@pytest.mark.parametrize("name", list(METHODS))
def test_budget_below_one_examples_system_warns_with_its_size(name):
    model, x = _problem()
    with pytest.warns(UserWarning, match=r"needs \d+ bytes .* per example, more than memory_budget=5000"):
        METHODS[name](f=model, n_samples=50, generator=0, memory_budget=5000)(x)


def _draw_problem(b: int, f: int):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(f, generator=g), torch.randn(b, f, generator=g)
    return (lambda v: torch.tanh(v) @ w), x


@pytest.mark.parametrize("generator", [0, None])
@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_coalitions_of_ten_budgets_are_held_once(name, generator):
    """Coalitions of ten budgets: held once, bool, their uniforms drawn a budget at a time (NOTE:
    [Coalition draws within the memory budget]). Before, KernelSHAP's were copied next to the
    empty coalition (peak 3.1 MB), generator=None drew every example's uniforms at once (float64
    (B, N, F + 1) for KernelSHAP: 8.4 MB; float32 (B, N, F) for LIME: 4.1 MB), and one
    example's uniforms were drawn at once however large (LIME's peak 2.0 MB)."""
    b, n, f = 8, 4000, 32
    model, x = _draw_problem(b, f)
    fn = getattr(xattr, name)(model, n_samples=n, generator=generator, memory_budget=BUDGET)
    torch.manual_seed(0)
    with LiveBytes() as seen:
        fn(x)
    coalitions = b * n * f
    assert seen.largest <= max(coalitions, BUDGET)
    assert seen.peak <= coalitions + 8 * BUDGET


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_one_examples_draws_over_the_budget_in_steps(name):
    """One example's uniforms (N x (F + 1) float64 for KernelSHAP: 264 kB here; N x F float32 for
    LIME: 128 kB) are drawn in steps of samples when they exceed the budget (100 kB; the coalitions
    are 64 kB)."""
    b, n, f = 2, 1000, 32
    model, x = _draw_problem(b, f)
    fn = getattr(xattr, name)(model, n_samples=n, generator=0, memory_budget=BUDGET)
    with LiveBytes() as seen:
        fn(x)
    assert seen.largest <= BUDGET


# sha256 (first 16 hex digits) of the bool coalitions (3, 50, 7) drawn at once before the steps
# existed (git aeb3df9), after torch.manual_seed(1): KernelSHAP's, LIME's
_DRAWN_AT_ONCE = {1234: ("e8eb6a9a5358500d", "b24d44c6e88700d8"), None: ("daada637cb3a803c", "9e7edd324ff281fe")}


@pytest.mark.parametrize("stream", [1234, None])
def test_draws_in_steps_are_the_draws_at_once(stream):
    """The steps change no number (NOTE: [Coalition draws within the memory budget]): whole
    examples, one sample, or nine at a time, from each example's generator (a stream) or the
    global one (None), the coalitions are those drawn at once."""
    from xattr._src.coalitions import bernoulli_draws, shapley_draws

    rows, n, m, cpu = 3, 50, 7, torch.device("cpu")
    digest = lambda z: hashlib.sha256(z.numpy().tobytes()).hexdigest()[:16]  # noqa: E731
    for budget in (None, 2 * n * 8 * (m + 1), 9 * 8 * (m + 1), 1):
        torch.manual_seed(1)
        shap = shapley_draws(rows, n, m, stream, cpu, budget=budget)
        torch.manual_seed(1)
        lime = bernoulli_draws(rows, n, m, stream, None, cpu, 2**40 if budget is None else budget * m // (2 * (m + 1)))
        assert (digest(shap), digest(lime)) == _DRAWN_AT_ONCE[stream], budget


def test_every_coalition_enumerated_within_the_budget():
    """KernelSHAP's enumeration (n_samples >= 2^F) builds its bool coalitions a feature at a
    time: before, two int64 (2^F, F) temporaries (393 kB at F = 12; 78 MB at F = 18) were made
    for 49 kB of coalitions."""
    b, f = 2, 12
    model, x = _draw_problem(b, f)
    fn = xattr.kernel_shap(model, n_samples=2**f, memory_budget=BUDGET)
    with LiveBytes() as seen:
        fn(x)
    assert seen.largest <= BUDGET
