"""Captum's gradient attribution classes as thin adapters over xattr's functional core.

Each ``attribute`` keeps Captum 0.9's positional order, keywords, defaults and return
conventions; the work is one xattr transform (see ``_convert.Call`` for the argument mapping).
"""

from __future__ import annotations

from typing import Callable

import xattr
from xattr._src.paths import straight_line_unit

from ._convert import Call
from .bases import GradientAttribution


class Saliency(GradientAttribution):
    """``Saliency(forward_func)``: gradients of the target output, absolute by default.

    xattr: ``xattr.saliency(xattr.target(f, target), argnums=..., abs=abs)``.
    """

    def attribute(self, inputs, target=None, abs: bool = True, additional_forward_args=None):
        return self._run(inputs, target, additional_forward_args, abs=abs)

    def _functional(self, call: Call, *, abs: bool = True):
        fn = xattr.saliency(call.model, argnums=call.argnums, abs=abs)
        return (lambda *args: (fn(*args), None)), ()


class InputXGradient(GradientAttribution):
    """``InputXGradient(forward_func)``: input times gradient. xattr: ``xattr.input_x_gradient``."""

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self._run(inputs, target, additional_forward_args)

    def _functional(self, call: Call):
        fn = xattr.input_x_gradient(call.model, argnums=call.argnums)
        return (lambda *args: (fn(*args), None)), ()

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class IntegratedGradients(GradientAttribution):
    """``IntegratedGradients(forward_func, multiply_by_inputs=True)``.

    xattr: ``xattr.integrated_gradients(xattr.target(f, target), baselines=..., n_steps=...,
    method=..., chunk_size=internal_batch_size)``; with ``multiply_by_inputs=False`` it is
    ``xattr.path_integral`` along the straight line without the ``(x - baseline)`` factor.
    ``method="riemann_trapezoid"`` uses exact trapezoid weights: the result is Captum's times
    ``n_steps / (n_steps - 1)`` (docs/migration.md).
    """

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
    ):
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size, return_convergence_delta=return_convergence_delta,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, n_steps=50, method="gausslegendre",
                    internal_batch_size=None, return_convergence_delta=False):  # fmt: skip
        bases = call.baselines(baselines)
        path = None if self._multiply_by_inputs else straight_line_unit
        integral = xattr.path_integral(
            call.model, argnums=call.argnums, n_steps=n_steps, method=method, path=path, chunk_size=internal_batch_size
        )
        k = len(bases)

        def fn(*args):  # (*inputs, *additional_forward_args, *baselines)
            args, b = args[:-k], args[-k:]
            attr = integral(*args, baselines=b)
            delta = xattr.completeness_gap(call.model, args, call.argnums, attr, b) if return_convergence_delta else None
            return attr, delta

        return fn, bases

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class GradientShap(GradientAttribution):
    """``GradientShap(forward_func, multiply_by_inputs=True)``: expected gradients.

    xattr: ``xattr.gradient_shap(xattr.target(f, target), baselines=..., n_samples=...,
    stdevs=..., generator=..., multiply_by_inputs=..., return_delta=return_convergence_delta)``.
    Random draws come from xattr's generator streams (torch's global generator by default, or
    ``generator=`` on ``attribute``), so results agree with Captum's in distribution, not draw
    for draw. The convergence delta is Captum's: one per (example, sample), example-major.
    """

    stochastic = True

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs,
        baselines,
        n_samples: int = 5,
        stdevs=0.0,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        *,
        generator=None,
    ):
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines, n_samples=n_samples, stdevs=stdevs,
            return_convergence_delta=return_convergence_delta, generator=generator,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines, n_samples=5, stdevs=0.0, return_convergence_delta=False,
                    generator=None):  # fmt: skip
        fn = xattr.gradient_shap(
            call.model, baselines=call.distribution(baselines), n_samples=n_samples, stdevs=stdevs,
            argnums=call.argnums, generator=generator, multiply_by_inputs=self._multiply_by_inputs,
            return_delta=return_convergence_delta,
        )  # fmt: skip
        return (fn if return_convergence_delta else lambda *args: (fn(*args), None)), ()

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs
