"""LIME's and KernelSHAP's fits within memory_budget (NOTE: [Surrogate fits within the memory budget]).

The results do not depend on the budget (examples fitted in groups, normal equations summed over
steps of samples), and the tensors allocated during a call stay near the budget, counted by a
dispatch mode that tracks every allocation's lifetime (deterministic, unlike a process's RSS).
"""

from __future__ import annotations

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
    """Live tensors during the call: the (B, N, F) float32 coalitions plus a few budgets (the
    model calls' copies and activations, ~3 here; the fits' systems and sample steps, the
    similarity weights' and KernelSHAP's draws' steps); before, the fits alone held three float64
    (B, N, F) copies of the samples, and KernelSHAP's draws a float64 (B, N, F + 1) one."""
    model, x = _problem(torch.float32)
    coalitions = B * N * F * 4
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
