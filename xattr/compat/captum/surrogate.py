"""Captum's surrogate-model classes (Lime, LimeBase, KernelShap) over xattr's lime and kernel_shap.

``Lime`` and ``KernelShap`` keep Captum 0.9's constructors, ``attribute`` keywords, defaults and
return conventions and run ``xattr.lime`` / ``xattr.kernel_shap``: every example's coalitions in
one batched evaluation and every fit in one batched solver. As Captum's, ``Lime`` stores its
defaults (``interpretable_model=SkLearnLasso(alpha=0.01)``, ``similarity_func=
get_exp_kernel_similarity_function()``, ``perturb_func=default_perturb_func``,
``from_interp_rep_transform=default_from_interp_rep_transform``: xattr's own, with Captum's
semantics, callable on their own) and recognises them. Captum's pieces are translated:

- ``interpretable_model``: ``SkLearnLasso``/``SkLearnRidge``/``SkLearnLinearRegression``, xattr's
  (``xattr.compat.captum``) or Captum's (alpha, fit_intercept), become ``xattr.lasso``/
  ``xattr.ridge``/``xattr.linear_regression``, and the object is left fitted on the batch's last
  example, as Captum's per-example loop leaves it (``representation()``, ``bias()``); any other
  Captum ``Model`` (``fit(DataLoader)`` and ``representation()``) is fitted per example, as Captum
  does; an xattr solver or a scikit-learn estimator is used as ``xattr.lime`` uses it.
- ``similarity_func``: ``get_exp_kernel_similarity_function(mode, width)`` (xattr's or Captum's) is
  ``xattr.exp_kernel_similarity(mode, width)`` (computed without building the copies); any other
  function is Captum's per-sample ``similarity_func(original, perturbed, interp_sample, **kwargs)``
  and is called per sample.
- ``perturb_func``: ``default_perturb_func`` (xattr's or Captum's) is xattr's Bernoulli(1/2) draws
  (``generator=``); any other function is Captum's ``perturb_func(original, **kwargs) -> (1, F)``
  (or a generator function yielding them), called ``n_samples`` times per example.

The per-sample ``**kwargs`` are Captum's: ``baselines`` and ``feature_mask`` of the example and
``num_interp_features``; the per-sample functions run under ``torch.no_grad``, as in Captum.
``LimeBase`` runs Captum's general loop (any interpretable space, both transforms) with xattr's
solvers for the fit.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

import xattr
from xattr._src import tree as T
from xattr._src.masks import default_mask, features
from xattr._src.nesting import running_model
from xattr._src.solvers import sklearn_fit
from xattr._src.warn import warn

from ._convert import Call, _captum
from .bases import PerturbationAttribution
from .fitted_models import _fitted_model, _last_example, _leave_fitted, _recording
from .lime_defaults import (
    _CAPTUM_KERNEL,
    default_from_interp_rep_transform,
    default_perturb_func,
    get_exp_kernel_similarity_function,
)
from .linear_models import SkLearnLasso, _SolverModel
from .perturbation import chunk_rows


class _CaptumModel:
    """A Captum ``Model`` as an xattr solver: ``fit(DataLoader(X, y, w))`` and ``representation()``
    per example, in float32 (Captum's data); the intercept from ``bias()`` where there is one."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, X, y, sample_weight):
        from torch.utils.data import DataLoader, TensorDataset

        B, N, F = X.shape
        coefs, intercepts = [], []
        for b in range(B):
            data = TensorDataset(X[b].float(), y[b, :, 0].float(), sample_weight[b].float())
            self.model.fit(DataLoader(data, batch_size=N))
            coefs.append(torch.as_tensor(self.model.representation()).reshape(1, F).to(X))
            bias = self.model.bias() if callable(getattr(self.model, "bias", None)) else None
            intercepts.append(torch.zeros(1, dtype=X.dtype) if bias is None else torch.as_tensor(bias).reshape(1).to(X))
        return torch.stack(coefs), torch.stack(intercepts).to(X.device)


def solver(model):
    """Captum's interpretable_model as what ``xattr.lime`` takes (None: its default lasso(0.01))."""
    if model is None:
        return None
    if isinstance(model, _SolverModel):
        return model.solver
    name = type(model).__qualname__
    if _captum(model, "SkLearnLasso", "SkLearnRidge", "SkLearnLinearRegression"):
        kw = dict(getattr(model, "construct_kwargs", {}))
        if set(kw) <= {"alpha", "fit_intercept"}:
            if name == "SkLearnLinearRegression":
                if "alpha" in kw:  # Captum fails in sklearn's constructor; never fall back to the lasso
                    raise TypeError("SkLearnLinearRegression takes no alpha (it is unregularised): use SkLearnLasso or SkLearnRidge")
                return xattr.linear_regression(**kw)
            return (xattr.lasso if name == "SkLearnLasso" else xattr.ridge)(**{"alpha": 1.0, **kw})
    if callable(getattr(model, "representation", None)) and callable(getattr(model, "fit", None)):
        return _CaptumModel(model)
    return model


def _select(value, b: int, batch: int):
    """Captum's per-example slice of an argument: tensors (and lists) with ``batch`` rows."""
    if value is None:
        return None
    items = value if isinstance(value, tuple) else (value,)
    out = tuple(v[b : b + 1] if isinstance(v, (torch.Tensor, list)) and len(v) == batch else v for v in items)
    return out if isinstance(value, tuple) else out[0]


class _PerExample:
    """What Captum hands its per-sample functions for row b: the example's inputs and kwargs
    (all of the batch for a model returning one number per batch)."""

    def __init__(self, call: Call, baselines, feature_mask, n_features: int, aggregate: bool) -> None:
        self.call, self.aggregate = call, aggregate
        self.baselines, self.feature_mask, self.n_features = baselines, feature_mask, n_features

    def inputs(self, b: int):
        return self.call.captum_inputs if self.aggregate else _select(self.call.captum_inputs, b, self.call.batch)

    def kwargs(self, b: int) -> dict:
        pick = (lambda v: v) if self.aggregate else (lambda v: _select(v, b, self.call.batch))
        return {"baselines": pick(self.baselines), "feature_mask": pick(self.feature_mask),
                "num_interp_features": self.n_features}  # fmt: skip


def _exp_kernel(func):
    """xattr's batched exp kernel for a similarity_func that is one (xattr's, or made by
    ``get_exp_kernel_similarity_function``, xattr's or Captum's); None for any other."""
    if hasattr(func, "_xattr_exp_kernel"):
        return func
    kind = getattr(func, _CAPTUM_KERNEL, None)
    if kind is not None:
        return xattr.exp_kernel_similarity(*kind)
    if getattr(func, "__qualname__", "").endswith("get_exp_kernel_similarity_function.<locals>.default_exp_kernel"):
        found = inspect.getclosurevars(func).nonlocals
        return xattr.exp_kernel_similarity(found.get("distance_mode", "cosine"), found.get("kernel_width", 1.0))
    return None


def _default_perturb(func) -> bool:
    """Whether perturb_func is Captum's default draws (None, xattr's or Captum's ``default_perturb_func``)."""
    return func is None or func is default_perturb_func or _captum(func, "default_perturb_func")


def _similarity(func, rows: _PerExample):
    """Captum's similarity_func as ``xattr.lime``'s (None for xattr's default)."""
    if func is None:
        return None
    kernel = _exp_kernel(func)
    if kernel is not None:
        return kernel

    def similarity(original, perturbed, coalitions):
        n_rows, c = coalitions.shape[:2]
        out = torch.empty(n_rows, c, dtype=torch.float64)
        with torch.no_grad():  # as in Captum
            for b in range(n_rows):
                orig, kw = rows.inputs(b), rows.kwargs(b)
                for n in range(c):
                    leaves = tuple(p[b, n] if rows.aggregate else p[b, n][None] for p in perturbed)
                    pert = leaves if rows.call.is_tuple else leaves[0]
                    w = func(orig, pert, coalitions[b, n][None].long(), **kw)
                    out[b, n] = float(torch.as_tensor(w).reshape(()))
        return out.to(coalitions.device)

    return similarity


def _perturb(func, rows: _PerExample):
    """Captum's perturb_func as ``xattr.lime``'s (None for xattr's own draws)."""
    if _default_perturb(func):
        return None
    row = iter(range(rows.call.batch))

    def perturb(n_samples, n_features, generator):
        b = next(row)
        with torch.no_grad():  # as in Captum
            return torch.cat([s.reshape(1, -1) for s in _samples(func, rows.inputs(b), rows.kwargs(b), n_samples)])

    return perturb


def _samples(func, inputs, kwargs: dict, n: int) -> list:
    """n draws of Captum's perturb_func (a function or a generator function)."""
    if not inspect.isgeneratorfunction(func):
        return [torch.as_tensor(func(inputs, **kwargs)) for _ in range(n)]
    draws = func(inputs, **kwargs)
    out = []
    for _ in range(n):
        try:
            out.append(torch.as_tensor(next(draws)))
        except StopIteration:
            raise ValueError(f"perturb_func's generator stopped after {len(out)} of n_samples={n} samples "
                             "(Captum fits on fewer; pass n_samples accordingly)") from None  # fmt: skip
    return out


def lime_mask(feature_mask):
    """Captum's Lime mask: shifted so that the smallest id is 0 (with Captum's warning)."""
    if feature_mask is None:
        return None
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    low = min((int(m.min()) for m in masks if isinstance(m, torch.Tensor) and m.numel()), default=0)
    if low == 0:
        return feature_mask
    warn("Minimum element in feature mask is not 0, shifting indices to start at 0.")  # at the user's line
    out = tuple(m - low for m in masks)
    return out if isinstance(feature_mask, tuple) else out[0]


def _is_aggregate(call: Call) -> bool:
    if call.batch < 2:
        return False
    with running_model(no_grad=True):  # NOTE: [Attributions inside a model's forward]
        out = call.model(*call.args)
    return isinstance(out, torch.Tensor) and out.numel() == 1


class LimeBase(PerturbationAttribution):
    """``LimeBase(forward_func, interpretable_model, similarity_func, perturb_func,
    perturb_interpretable_space, from_interp_rep_transform, to_interp_rep_transform)``.

    ``attribute`` runs Captum's loop: ``n_samples`` draws of ``perturb_func(inputs, **kwargs)``
    (a function or a generator function), each turned into a model input (or, sampling in the
    input space, into its interpretable vector) by the transform, weighted by
    ``similarity_func``; the model is called on ``perturbations_per_eval`` samples at a time
    (concatenated along dim 0; it must return one number per sample) and the interpretable model
    is fitted once on all of them. Returns ``interpretable_model.representation()`` for a Captum
    ``Model``, the (1, F) coefficients for an xattr solver or a scikit-learn estimator. As in
    Captum, the loop runs under ``torch.no_grad``.
    """

    def __init__(self, forward_func: Callable, interpretable_model, similarity_func: Callable, perturb_func: Callable,
                 perturb_interpretable_space: bool, from_interp_rep_transform, to_interp_rep_transform) -> None:  # fmt: skip
        super().__init__(forward_func)
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform

    def attribute(self, inputs, target=None, additional_forward_args=None, n_samples: int = 50,
                  perturbations_per_eval: int = 1, show_progress: bool = False, **kwargs):  # fmt: skip
        chunk_rows(perturbations_per_eval, 1)  # checks it
        transform = self.from_interp_rep_transform if self.perturb_interpretable_space else self.to_interp_rep_transform
        if transform is None:
            side = "from_interp_rep_transform" if self.perturb_interpretable_space else "to_interp_rep_transform"
            raise TypeError(f"LimeBase with perturb_interpretable_space={self.perturb_interpretable_space} needs {side}")
        with torch.no_grad():  # Captum's LimeBase.attribute runs so: the user's functions get no graph
            call = Call.build(self.forward_func, inputs, target, additional_forward_args)
            original = call.captum_inputs
            draws = self.perturb_func(original, **kwargs) if inspect.isgeneratorfunction(self.perturb_func) else None
            interps, weights, outs, pending = [], [], [], []
            for _ in range(n_samples):
                try:
                    sample = next(draws) if draws is not None else self.perturb_func(original, **kwargs)
                except StopIteration:
                    warn("Generator completed prior to given n_samples iterations!")
                    break
                if self.perturb_interpretable_space:
                    interp, model_input = sample, transform(sample, original, **kwargs)
                else:
                    interp, model_input = transform(sample, original, **kwargs), sample
                interps.append(torch.as_tensor(interp).reshape(1, -1))
                weights.append(float(torch.as_tensor(self.similarity_func(original, model_input, interp, **kwargs)).reshape(())))
                pending.append(model_input)
                if len(pending) == perturbations_per_eval:
                    outs.append(_evaluate(call, pending))
                    pending = []
            if pending:
                outs.append(_evaluate(call, pending))
            if not interps:
                raise ValueError("perturb_func gave no samples")
            y = torch.cat(outs)
            dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
            X = torch.cat(interps).to(dtype=dtype, device=y.device)[None]
            w = torch.tensor(weights, dtype=dtype, device=y.device)[None]
            model = self.interpretable_model
            if callable(getattr(model, "representation", None)) and callable(getattr(model, "fit", None)):
                _CaptumModel(model)(X, y.to(dtype)[None, :, None], w)
                return model.representation()
            if hasattr(model, "fit"):
                return sklearn_fit(model, X, y.to(dtype)[None, :, None], w)[0]
            return model(X, y.to(dtype)[None, :, None], w)[0][0]

    def attribute_future(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.attribute_future is not supported (nor is it by Captum)")


def _evaluate(call: Call, model_inputs: list) -> torch.Tensor:
    """The model on c samples at once (each a tensor or tuple like the inputs): (c,) outputs."""
    parts = [m if isinstance(m, tuple) else (m,) for m in model_inputs]
    joined = tuple(torch.cat(ts) for ts in zip(*parts))
    c = len(model_inputs)
    with running_model(no_grad=True), T.batch_scope(call.batch):  # NOTE: [Attributions inside a model's forward]
        out = call.model(*joined, *T.fold(call.extra, c, call.batch))
    out = torch.as_tensor(out).reshape(-1)
    if out.numel() != c:
        raise ValueError(f"the model returned {out.numel()} numbers for {c} samples: LimeBase needs one per sample")
    return out


class Lime(LimeBase):
    """``Lime(forward_func, interpretable_model=None, similarity_func=None, perturb_func=None)``.

    xattr: ``xattr.lime(xattr.target(f, t), n_samples=n, baselines=b, feature_mask=m,
    interpretable_model=..., similarity_func=..., perturb_func=..., generator=generator,
    return_input_shape=r)`` (translations in the module docstring). One surrogate per example,
    fitted in one batched solve; a model returning one number per batch gets one surrogate.
    The defaults are stored as Captum stores them: ``interpretable_model`` is
    ``SkLearnLasso(alpha=0.01)`` (left fitted on the last example after ``attribute``),
    ``similarity_func`` ``get_exp_kernel_similarity_function()``, ``perturb_func``
    ``default_perturb_func`` and ``from_interp_rep_transform`` ``default_from_interp_rep_transform``.
    """

    stochastic = True

    def __init__(self, forward_func: Callable, interpretable_model=None, similarity_func=None, perturb_func=None) -> None:
        super().__init__(
            forward_func,
            SkLearnLasso(alpha=0.01) if interpretable_model is None else interpretable_model,
            get_exp_kernel_similarity_function() if similarity_func is None else similarity_func,
            default_perturb_func if perturb_func is None else perturb_func,
            True, default_from_interp_rep_transform, None,
        )  # fmt: skip

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
                  show_progress: bool = False, *, generator=None):  # fmt: skip
        call = Call.build(self.forward_func, inputs, target, additional_forward_args)
        chunk = chunk_rows(perturbations_per_eval, call.batch)
        bases, mask = call.baselines(baselines), lime_mask(feature_mask)
        fn, finish = self._method(call, bases, mask, n_samples, return_input_shape, chunk, show_progress, generator)
        out = fn(*call.args)
        if finish is not None:
            finish()
        return call.output(out, None, False) if return_input_shape else out

    def _method(self, call, bases, mask, n_samples, return_input_shape, chunk, show_progress, generator):
        """(xattr's attribution function, a callable to run after it (or None))."""
        rows = None
        custom_similarity = self.similarity_func is not None and _exp_kernel(self.similarity_func) is None
        if custom_similarity or not _default_perturb(self.perturb_func):  # Captum's per-sample kwargs
            given = default_mask(call.inputs)[0] if mask is None else mask if isinstance(mask, tuple) else (mask,)
            n_features = features(call.inputs, given)[1]
            given = given if call.is_tuple else given[0]
            rows = _PerExample(call, bases if call.is_tuple else bases[0], given, n_features, _is_aggregate(call))
        model = self.interpretable_model
        fit, finish = solver(model), None
        if _fitted_model(model, fit):  # record the fits, to leave the user's object fitted as Captum does
            fit = _recording(fit)
            finish = lambda: _leave_fitted(model, _last_example(fit.calls, call.inputs, mask))  # noqa: E731

        fn = xattr.lime(
            call.model, n_samples=n_samples, baselines=bases, feature_mask=mask, argnums=call.argnums,
            interpretable_model=fit, similarity_func=_similarity(self.similarity_func, rows),
            perturb_func=_perturb(self.perturb_func, rows), generator=generator,
            return_input_shape=return_input_shape, chunk_size=chunk, show_progress=show_progress,
        )  # fmt: skip
        return fn, finish

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


class KernelShap(Lime):
    """``KernelShap(forward_func)``: Shapley values by a weighted regression over coalitions.

    xattr: ``xattr.kernel_shap(xattr.target(f, t), n_samples=n, baselines=b, feature_mask=m,
    generator=generator, return_input_shape=r)``: Captum's coalition distribution (``n_samples``
    counting the two end coalitions), efficiency imposed exactly instead of by 1e6 weights, and
    the exact Shapley values once ``n_samples >= 2^F`` (every coalition, weighted). Its estimator
    is fixed, so ``interpretable_model``, ``similarity_func`` and ``perturb_func`` are None (Captum
    stores its linear regression, kernel and sampler there); ``from_interp_rep_transform`` is
    ``default_from_interp_rep_transform``.
    """

    def __init__(self, forward_func: Callable) -> None:
        LimeBase.__init__(self, forward_func, None, None, None, True, default_from_interp_rep_transform, None)

    def _method(self, call, bases, mask, n_samples, return_input_shape, chunk, show_progress, generator):
        fn = xattr.kernel_shap(
            call.model, n_samples=n_samples, baselines=bases, feature_mask=mask, argnums=call.argnums,
            generator=generator, return_input_shape=return_input_shape, chunk_size=chunk, show_progress=show_progress,
        )  # fmt: skip
        return fn, None
