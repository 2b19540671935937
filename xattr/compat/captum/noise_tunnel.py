"""Captum's ``NoiseTunnel`` over ``xattr.smooth``, around any adapter's functional form.

NOTE: [Noise tunnel deltas]
Captum returns the inner method's deltas for every noisy copy (nt_samples * batch of them, times
n_samples for GradientShap, whose delta is one per sample). ``xattr.smooth`` reduces the copies
without keeping them, so the adapter records the inner deltas as smooth calls the inner function,
one call per chunk of copies in order; each chunk's rows are copy-major (xattr's fold) and are
reordered example-major within the chunk, keeping each row's own deltas together and in order,
which is Captum's layout (its partitions of nt_samples_batch_size copies are example-major inside
and concatenated).
"""

from __future__ import annotations

import inspect

import torch

import xattr
from xattr._src import tree as T

from ._convert import Attribution, Call, subseed

_REDUCE = {"smoothgrad": "mean", "smoothgrad_sq": "sq_mean", "vargrad": "var"}


class NoiseTunnel(Attribution):
    """``NoiseTunnel(attribution_method)``: SmoothGrad, SmoothGrad-squared or VarGrad of any adapter.

    xattr: ``xattr.smooth(attr_fn, stdevs=..., n_samples=nt_samples, reduce=...,
    chunk_size=nt_samples_batch_size * batch)``; with ``draw_baseline_from_distrib=True`` the
    inner function is wrapped in ``xattr.expectation(..., n_samples=1)``, one baseline drawn per
    noisy copy, as Captum does. Keywords other than the noise tunnel's own (``target``,
    ``additional_forward_args``, ``baselines``, ``n_steps``, ...) go to the inner method.
    ``generator`` (xattr only) seeds the noise; torch's global generator is used by default.
    """

    stochastic = True

    def __init__(self, attribution_method: Attribution) -> None:
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                "NoiseTunnel wraps an xattr.compat.captum attribution object (e.g. IntegratedGradients(model)), "
                f"got {type(attribution_method).__name__}"
            )
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method

    def has_convergence_delta(self) -> bool:
        return self.attribution_method.has_convergence_delta()

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def attribute(
        self,
        inputs,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs=1.0,
        draw_baseline_from_distrib: bool = False,
        *,
        generator=None,
        **kwargs,
    ):
        target = kwargs.pop("target", None)
        extra = kwargs.pop("additional_forward_args", None)
        return self._run(
            inputs, target, extra, nt_type=nt_type, nt_samples=nt_samples, nt_samples_batch_size=nt_samples_batch_size,
            stdevs=stdevs, draw_baseline_from_distrib=draw_baseline_from_distrib, generator=generator, **kwargs,
        )  # fmt: skip

    def _functional(self, call: Call, *, nt_type="smoothgrad", nt_samples=5, nt_samples_batch_size=None, stdevs=1.0,
                    draw_baseline_from_distrib=False, generator=None, **kwargs):  # fmt: skip
        if nt_type not in _REDUCE:
            raise ValueError(f"nt_type must be one of {sorted(_REDUCE)}, got {nt_type!r}")
        if nt_samples_batch_size is not None and (isinstance(nt_samples_batch_size, bool) or not isinstance(nt_samples_batch_size, int)
                                                  or nt_samples_batch_size < 1):  # fmt: skip
            raise ValueError(f"nt_samples_batch_size must be a positive int or None, got {nt_samples_batch_size!r}")
        inner = self.attribution_method
        if kwargs.get("return_convergence_delta") and not inner.has_convergence_delta():
            raise TypeError(
                f"{type(inner).__name__} has no convergence delta: NoiseTunnel(...).attribute(return_convergence_delta=True) "
                "needs a method that has one (IntegratedGradients, DeepLift, ...)"
            )
        if inner.stochastic:
            kwargs["generator"] = subseed(generator, 1)
        with_delta = bool(kwargs.get("return_convergence_delta", False)) and inner.has_convergence_delta()
        _check_keywords(inner, kwargs)
        inner_fn, aux = inner._functional(call, **kwargs)
        deltas: list[torch.Tensor] = []  # NOTE: [Noise tunnel deltas]
        batch = [call.batch]

        def attr_fn(*args):  # one chunk of noisy copies, folded copy-major
            attributions, delta = inner_fn(*args)
            if with_delta:  # (copies * B * per-row deltas,) copy-major -> example-major
                rows = T.leaves(attributions)[0].shape[0]  # a layer method's attributions: its layer's structure
                deltas.append(delta.reshape(rows // batch[0], batch[0], -1).transpose(0, 1).reshape(-1))
            return attributions

        body, tail = attr_fn, aux
        if draw_baseline_from_distrib and aux:
            dist = call.distribution(aux)
            body = xattr.expectation(
                lambda *args, baselines: attr_fn(*args, *baselines),
                baselines=dist, n_samples=1, argnums=call.argnums, generator=subseed(generator, 2),
            )  # fmt: skip
            tail = ()

        def fn(*args):  # (*inputs, *additional_forward_args, *tail)
            batch[0] = args[0].shape[0]
            per = None if nt_samples_batch_size is None else max(1, min(nt_samples, nt_samples_batch_size))
            tunnel = xattr.smooth(
                body, stdevs=stdevs, n_samples=nt_samples, reduce=_REDUCE[nt_type], argnums=call.argnums,
                generator=generator, chunk_size=None if per is None else per * batch[0],
            )  # fmt: skip
            deltas.clear()
            attributions = tunnel(*args)
            return attributions, (torch.cat(deltas) if with_delta else None)

        return fn, tail

    def _output(self, call: Call, attributions, delta, with_delta: bool):
        """The inner method's return convention (one attribution per input, or a layer's structure)."""
        return self.attribution_method._output(call, attributions, delta, with_delta)


def _check_keywords(inner, kwargs: dict) -> None:
    """A keyword the wrapped method's ``attribute`` does not take is refused in its name, as Captum's
    error reads (the old NoiseTunnel ``n_samples``), not in that of a private method."""
    params = inspect.signature(type(inner).attribute).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params and k != "generator"]
    if unknown:
        raise TypeError(f"{type(inner).__name__}.attribute() got an unexpected keyword argument {unknown[0]!r}")

