"""Captum's linear surrogate models, ``SkLearnLasso``, ``SkLearnRidge`` and ``SkLearnLinearRegression``,
fitted by xattr's solvers (``xattr.lasso``, ``xattr.ridge``, ``xattr.linear_regression``).

They keep Captum 0.9's object API: ``fit(train_data)`` takes a ``DataLoader`` of ``(x, y)`` or
``(x, y, w)`` batches (x (N, F), y (N,) or (N, K), w (N,) sample weights) and fits on all of them
at once; afterwards ``representation()`` is the (K, F) coefficients, ``bias()`` the (K,)
intercepts, and the object, an ``nn.Module``, maps (M, F) inputs to (M, K) outputs. Captum
fits with scikit-learn's estimator of the same name; xattr's solvers minimise the same
objectives exactly (scikit-learn's coordinate descent stops at a tolerance), so the numbers agree
to that tolerance. As in Captum, the fitted parameters are float32 (``nn.Linear``'s).

``Lime`` recognises these objects (``interpretable_model=SkLearnLasso(alpha=0.01)`` is its
default): every example is fitted in one batched solve, and the object is left fitted on the
batch's last example, as Captum's per-example loop leaves it. The constructors take Captum's
``alpha`` and ``fit_intercept``; other scikit-learn options raise (Captum's own classes, from
``captum._utils.models.linear_model``, fit with scikit-learn and take them all).
"""

from __future__ import annotations

import time

import torch
from torch import nn

import xattr


class _SolverModel(nn.Module):
    """A linear model whose ``fit`` is one of xattr's solvers (Captum's ``LinearModel`` API)."""

    _options = ("fit_intercept",)

    def __init__(self, **kwargs) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(self._options))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} takes {', '.join(self._options)} (fitted by xattr's solver); got {unknown}: "
                f"captum._utils.models.linear_model.{type(self).__name__} fits with scikit-learn and takes its options"
            )
        self.construct_kwargs = dict(kwargs)
        self.norm = None
        self.linear: nn.Linear | None = None

    @property
    def solver(self):
        """The xattr solver ``(X (B, N, F), y (B, N, K), w (B, N)) -> (coef, intercept)`` this model fits with."""
        raise NotImplementedError

    def fit(self, train_data, **kwargs) -> dict:
        """Fits on every batch of ``train_data`` (``(x, y)`` or ``(x, y, w)``) at once; returns ``{"train_time": s}``."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.fit takes no options, got {sorted(kwargs)}")
        xs, ys, ws = [], [], []
        for batch in train_data:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise ValueError("train_data must give (x, y) or (x, y, w) batches")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
            if len(batch) == 3:
                ws.append(torch.as_tensor(batch[2]))
        if not xs:
            raise ValueError("train_data gave no batches")
        if ws and len(ws) != len(xs):
            raise ValueError("some batches of train_data have weights and some do not")
        X, y = torch.cat(xs), torch.cat(ys)
        if X.ndim != 2 or y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(f"fit takes x (N, F) and y (N,) or (N, K); got {tuple(X.shape)} and {tuple(y.shape)}")
        n = X.shape[0]
        w = torch.cat(ws).reshape(n) if ws else torch.ones(n, device=X.device)
        start = time.perf_counter()
        f64 = torch.float64
        coef, intercept = self.solver(X[None].to(f64), y.reshape(n, -1)[None].to(f64), w[None].to(device=X.device, dtype=f64))
        self._set(coef[0], intercept[0])
        return {"train_time": time.perf_counter() - start}

    def _set(self, coef: torch.Tensor, intercept: torch.Tensor) -> None:
        """Sets the fitted parameters: coef (K, F), intercept (K,), stored as float32 (Captum's)."""
        k, f = coef.shape
        linear = nn.Linear(f, k, device=coef.device, dtype=torch.float32)
        with torch.no_grad():
            linear.weight.copy_(coef.detach())
            linear.bias.copy_(intercept.detach().reshape(k))
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(train_data) first")
        return self.linear(x)

    def representation(self) -> torch.Tensor:
        """The (K, F) coefficients (without the intercept: see ``bias``)."""
        if self.linear is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(train_data) first")
        return self.linear.weight.detach()

    def bias(self) -> torch.Tensor | None:
        """The (K,) intercepts, or None before ``fit``."""
        return None if self.linear is None else self.linear.bias.detach()

    def classes(self) -> None:
        """None: these are regression models (Captum's API)."""
        return None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.construct_kwargs.items())


class SkLearnLasso(_SolverModel):
    """``SkLearnLasso(alpha=1.0, fit_intercept=True)``: scikit-learn's ``Lasso(alpha)`` objective with
    sample weights, ``1/(2 sum w) sum w_n (y_n - c - x_n.beta)^2 + alpha ||beta||_1``, minimised
    exactly by ``xattr.lasso``. (Captum's ``Lime`` default is ``SkLearnLasso(alpha=0.01)``.)"""

    def __init__(self, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(alpha=alpha, **kwargs)

    _options = ("alpha", "fit_intercept")

    @property
    def solver(self):
        return xattr.lasso(**self.construct_kwargs)


class SkLearnRidge(_SolverModel):
    """``SkLearnRidge(alpha=1.0, fit_intercept=True)``: scikit-learn's ``Ridge(alpha)`` with sample
    weights, ``sum w_n (y_n - c - x_n.beta)^2 + alpha ||beta||^2``, by ``xattr.ridge``."""

    def __init__(self, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(alpha=alpha, **kwargs)

    _options = ("alpha", "fit_intercept")

    @property
    def solver(self):
        return xattr.ridge(**self.construct_kwargs)


class SkLearnLinearRegression(_SolverModel):
    """``SkLearnLinearRegression(fit_intercept=True)``: scikit-learn's ``LinearRegression`` with sample
    weights (the minimum-norm solution where it is not unique), by ``xattr.linear_regression``."""

    def __init__(self, **kwargs) -> None:
        if "alpha" in kwargs:
            raise TypeError("SkLearnLinearRegression takes no alpha (it is unregularised): use SkLearnLasso or SkLearnRidge")
        super().__init__(**kwargs)

    @property
    def solver(self):
        return xattr.linear_regression(**self.construct_kwargs)
