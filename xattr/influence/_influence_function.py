"""Influence functions (Koh and Liang 2017) on torch.func: per-example gradients and the Hessian.

NOTE: [Influence function sign and scale]
With the trained parameters theta minimising the mean training loss (1/n) sum_i L(z_i, theta),
upweighting one training point z by eps (adding eps L(z, theta) to the objective) moves the
optimum by d theta / d eps = -H^{-1} g(z), H the Hessian of the mean training loss and g(z) the
gradient of L(z). The test loss then changes at the rate

    d L(z_test) / d eps = - g(z_test)^T H^{-1} g(z)       (Koh and Liang's I_up,loss).

`influence_function` returns its negative, I(z, z_test) = g(z_test)^T H^{-1} g(z), entry
[i, j] for test example i and training example j, so that every score in xattr.influence has
one sign: positive where upweighting z_j lowers the test loss (a helpful, "proponent" point,
as in TracIn and Captum's classes), negative where it raises it (an opponent). Removing z_j is
eps = -1/n, so the leave-one-out change of the test loss is about +I / n: leaving out a
proponent raises the test loss.

NOTE: [Damped eigen-inverse of the Hessian]
H is formed explicitly (``torch.func.hessian`` of the mean loss over the flattened chosen
parameters, summed over chunks of the Hessian data), symmetrised and, in float64,
decomposed as H + damping I = V diag(l) V^T. Eigenpairs with l <= tol are dropped: negative
and near-zero curvature (a non-convex loss, directions the data never moves) would otherwise
dominate the inverse; ``projection_dim`` keeps only the largest ones left. With R =
V_kept diag(l_kept^{-1/2}), H^{-1} ~= R R^T, and every score is a dot product of "influence
embeddings" g^T R: I = (g_test^T R)(g^T R)^T, self-influence |g^T R|^2. Each eigenvector's
sign is fixed by making its entries sum to a positive number (Captum's rule), so R is
reproducible. The default tol is rounding level: P * eps64 * max |l|, P the number of
parameters. `method="cg"` never forms H: it solves (H + damping I) s = g_test by conjugate
gradients with Hessian-vector products (forward over reverse: ``jvp`` of ``grad``), which needs
H + damping I positive definite (a convex loss, or enough damping).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jvp, vmap

from .._src.progress import progress
from ._layers import refuse_train_mode
from ._per_example import check_batch, loss_reduction, parameter_names, per_example_grads, positive_int, row_chunks, summed_loss

__all__ = ["influence_function", "influence_function_self_influence"]


# ---------------------------------------------------------------------------------------------
# arguments


def _nonnegative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# gradients and the Hessian


class LossGeometry:
    """The flattened chosen parameters of a model, their per-example loss gradients and the
    Hessian (or Hessian-vector products) of the mean loss over some data."""

    def __init__(self, model: nn.Module, layers, chunk_size: int | None, show_progress: bool, max_bytes: int | None = None):
        self.model = model
        self.names = parameter_names(model, layers, trainable_only=False)
        refuse_train_mode(model)
        params = dict(model.named_parameters())
        self.params = {n: params[n].detach() for n in self.names}
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.flat = torch.cat([p.reshape(-1) for p in self.params.values()])
        # buffers are passed as copies: a module that updates them in its forward (batch norm in
        # train mode) then writes into the copies, never into the user's model
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.chunk_size = positive_int(chunk_size, "chunk_size")
        self.max_bytes = max_bytes
        self.show = bool(show_progress)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.reshape(s) for n, s, t in zip(self.names, self.shapes, flat.split(self.sizes))}

    def batch_loss(self, flat, batch, loss_fn, reduction) -> torch.Tensor:
        out = functional_call(self.model, (self.unflatten(flat), self.buffers), tuple(batch[:-1]), strict=False)
        return summed_loss(loss_fn, out, batch[-1], reduction)

    def gradients(self, batch, loss_fn: Callable, desc: str) -> torch.Tensor:
        """(n, P): one row per example, d L(z_i) / d theta (NOTE: [Per-example losses] in _per_example.py)."""
        return per_example_grads(self.model, {**self.params, **self.buffers}, self.names, loss_fn, batch,
                                 reduction=loss_reduction(loss_fn), chunk_size=self.chunk_size, max_bytes=self.max_bytes,
                                 show_progress=self.show, desc=desc)  # fmt: skip

    def _chunks(self, batch) -> list[tuple[int, int]]:
        return row_chunks(batch[0].shape[0], self.chunk_size)

    def hessian(self, batch, loss_fn: Callable) -> torch.Tensor:
        """(P, P) Hessian of the mean loss over ``batch``, chunk by chunk, in float64."""
        reduction = loss_reduction(loss_fn)
        n = batch[0].shape[0]
        total = torch.zeros(self.flat.numel(), self.flat.numel(), dtype=torch.float64, device=self.flat.device)
        for lo, hi in progress(self.show, self._chunks(batch), desc="Hessian", unit="chunk"):
            part = [t[lo:hi] for t in batch]
            total += hessian(lambda f: self.batch_loss(f, part, loss_fn, reduction))(self.flat).detach().double()
        total /= n
        return (total + total.T) / 2

    def hvp(self, batch, loss_fn: Callable) -> Callable:
        """v (k, P) -> (H v_i) rows, H the Hessian of the mean loss over ``batch``, never formed."""
        reduction = loss_reduction(loss_fn)
        n = batch[0].shape[0]
        chunks = self._chunks(batch)

        def product(v: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
            for lo, hi in chunks:
                part = [t[lo:hi] for t in batch]
                g = grad(lambda f: self.batch_loss(f, part, loss_fn, reduction))
                one = lambda u: jvp(g, (self.flat,), (u,))[1]  # noqa: E731
                out += vmap(one)(v.to(self.flat.dtype)).detach().double()
            return out / n

        return product


# ---------------------------------------------------------------------------------------------
# the inverse


def inverse_root(H: torch.Tensor, damping: float, tol: float | None, projection_dim: int | None) -> torch.Tensor:
    """R (P, k) with (H + damping I)^{-1} ~= R R^T over the eigenpairs above tol, the
    ``projection_dim`` largest of them (NOTE: [Damped eigen-inverse of the Hessian])."""
    A = H.double() + damping * torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    evals, evecs = torch.linalg.eigh(A)  # ascending
    if tol is None:
        tol = A.shape[0] * torch.finfo(torch.float64).eps * float(evals.abs().max())
    keep = evals > tol
    evals, evecs = evals[keep], evecs[:, keep]
    if projection_dim is not None:
        evals, evecs = evals[-projection_dim:], evecs[:, -projection_dim:]
    if evals.numel() == 0:
        raise ValueError(
            f"the damped Hessian has no eigenvalue above tol={tol:g}: raise damping (the loss may be "
            "flat or non-convex at these parameters) or lower tol"
        )
    signs = torch.where(evecs.sum(0) > 0, 1.0, -1.0).to(evecs.dtype)
    return evecs * signs / evals.sqrt()


def conjugate_gradient(product: Callable, b: torch.Tensor, damping: float, steps: int, rtol: float) -> torch.Tensor:
    """Solves (H + damping I) x_i = b_i for every row b_i of b (k, P) at once, float64."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"cg_steps must be a positive int (the most conjugate-gradient steps), got {steps!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise ValueError(f"cg_rtol must be a number in [0, 1) (the relative residual to stop at), got {rtol!r}")
    b = b.double()
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    stop = (rtol * b.norm(dim=1)) ** 2
    for _ in range(steps):
        if bool((rs <= stop).all()):
            break
        Ap = product(p) + damping * p
        curv = (p * Ap).sum(1)
        if bool((curv[rs > stop] <= 0).any()):
            raise ValueError(
                "conjugate gradients met non-positive curvature: H + damping I is not positive definite "
                "here; raise damping or use method='eigen' (which drops such directions)"
            )
        alpha = torch.where(rs > stop, rs / torch.where(curv > 0, curv, 1.0), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rs_new = (r * r).sum(1)
        p = r + (rs_new / torch.where(rs > 0, rs, 1.0))[:, None] * p
        rs = rs_new
    return x


# ---------------------------------------------------------------------------------------------
# public functions


def _setup(model, loss_fn, train, hessian_data, layers, damping, tol, projection_dim, method, chunk_size, show_progress):
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable: loss_fn(model_output, labels), got {type(loss_fn).__name__}")
    if method not in ("eigen", "cg"):
        raise ValueError(f"method must be 'eigen' (explicit Hessian) or 'cg' (conjugate gradients), got {method!r}")
    damping = _nonnegative(damping, "damping")
    if tol is not None:
        tol = _nonnegative(tol, "tol")
    projection_dim = positive_int(projection_dim, "projection_dim")
    if method == "cg" and projection_dim is not None:
        raise ValueError("projection_dim needs the eigendecomposition: use method='eigen'")
    geo = LossGeometry(model, layers, chunk_size, show_progress)
    check_batch(train, "train")
    h_batch = check_batch(train if hessian_data is None else hessian_data, "hessian_data")
    return geo, h_batch, damping, tol, projection_dim


def influence_function(
    model: nn.Module,
    loss_fn: Callable,
    train: Sequence[torch.Tensor],
    test: Sequence[torch.Tensor],
    *,
    layers=None,
    damping: float = 0.0,
    tol: float | None = None,
    projection_dim: int | None = None,
    hessian_data: Sequence[torch.Tensor] | None = None,
    test_loss_fn: Callable | None = None,
    method: str = "eigen",
    cg_steps: int = 200,
    cg_rtol: float = 1e-10,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Influence of upweighting each training example on each test example's loss (Koh and Liang).

    ``I[i, j] = g(test_i)^T (H + damping I)^{-1} g(train_j)`` (NOTE: [Influence function sign
    and scale] in ``xattr/influence/_influence_function.py``): g the gradient of one example's
    loss and H the Hessian of the mean training loss, both with respect to the parameters of
    ``layers`` at the model's current values. Positive (a proponent): upweighting train_j
    lowers test_i's loss; leaving train_j out raises it by about ``I[i, j] / n_train``. Koh
    and Liang's I_up,loss is ``-I``.

    Args:
      model: an ``nn.Module``, used as it is (in eval mode, as trained); never changed.
      loss_fn: ``loss_fn(model(*inputs), labels)`` -> per-example losses ``(n,)``, or a loss
        module with ``.reduction`` 'sum' or 'mean'.
      train, test: tuples ``(*model_inputs, labels)`` of tensors with one row per example.
      layers: a module, a module name or a list of them whose parameters count (default: all).
      damping: added to H's diagonal before inverting.
      tol: eigenvalues of H + damping I at or below it are dropped (default: rounding level;
        NOTE: [Damped eigen-inverse of the Hessian]).
      projection_dim: keep only this many of the largest eigenvalues (default: all above tol).
      hessian_data: ``(*inputs, labels)`` for H (default: ``train``).
      test_loss_fn: the loss of the test examples (default: ``loss_fn``).
      method: ``"eigen"`` (H formed, P x P) or ``"cg"`` (conjugate gradients on Hessian-vector
        products, ``cg_steps`` at most, to relative residual ``cg_rtol``; H never formed).
      chunk_size: examples per vmap/Hessian chunk (default: all at once).
      show_progress: a progress bar over the chunks.

    Returns:
      ``(n_test, n_train)`` tensor in the parameters' dtype.

    Example:
      >>> I = influence_function(model, nn.CrossEntropyLoss(reduction="none"), (x_tr, y_tr), (x_te, y_te), damping=1e-3)
      >>> helpful = I.argsort(dim=1, descending=True)[:, :5]   # the five most helpful per test point
    """
    geo, h_batch, damping, tol, projection_dim = _setup(
        model, loss_fn, train, hessian_data, layers, damping, tol, projection_dim, method, chunk_size, show_progress
    )
    train, test = check_batch(train, "train"), check_batch(test, "test")
    test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
    if not callable(test_loss_fn):
        raise TypeError(f"test_loss_fn must be callable, got {type(test_loss_fn).__name__}")
    g_train = geo.gradients(train, loss_fn, "train gradients").double()
    g_test = geo.gradients(test, test_loss_fn, "test gradients").double()
    if method == "eigen":
        R = inverse_root(geo.hessian(h_batch, loss_fn), damping, tol, projection_dim)
        scores = (g_test @ R) @ (g_train @ R).T
    else:
        solved = conjugate_gradient(geo.hvp(h_batch, loss_fn), g_test, damping, cg_steps, cg_rtol)
        scores = solved @ g_train.T
    return scores.to(geo.flat.dtype)


def influence_function_self_influence(
    model: nn.Module,
    loss_fn: Callable,
    data: Sequence[torch.Tensor],
    *,
    layers=None,
    damping: float = 0.0,
    tol: float | None = None,
    projection_dim: int | None = None,
    hessian_data: Sequence[torch.Tensor] | None = None,
    method: str = "eigen",
    cg_steps: int = 200,
    cg_rtol: float = 1e-10,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """``g(z)^T (H + damping I)^{-1} g(z)`` for every example z of ``data``: ``(n,)``.

    The diagonal of `influence_function` with ``train = test = data``, without the off-diagonal
    entries; at least 0 where H + damping I is positive definite. The largest are the
    examples the model leans on most (often mislabelled or atypical ones). H is the Hessian of
    the mean loss over ``hessian_data``, by default ``data`` itself; the other arguments as in
    `influence_function`.

    Example:
      >>> loss = nn.CrossEntropyLoss(reduction="none")
      >>> s = xattr.influence.influence_function_self_influence(model, loss, (x_tr, y_tr), damping=1e-3)
      >>> suspects = s.argsort(descending=True)[:10]   # (n,) scores; the ten most self-influential
    """
    geo, h_batch, damping, tol, projection_dim = _setup(
        model, loss_fn, data, hessian_data, layers, damping, tol, projection_dim, method, chunk_size, show_progress
    )
    data = check_batch(data, "data")
    g = geo.gradients(data, loss_fn, "gradients").double()
    if method == "eigen":
        R = inverse_root(geo.hessian(h_batch, loss_fn), damping, tol, projection_dim)
        scores = ((g @ R) ** 2).sum(1)
    else:
        solved = conjugate_gradient(geo.hvp(h_batch, loss_fn), g, damping, cg_steps, cg_rtol)
        scores = (solved * g).sum(1)
    return scores.to(geo.flat.dtype)
