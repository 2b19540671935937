"""Standard errors of Monte Carlo attributions (``return_std_error=True``).

NOTE: [Standard errors of Monte Carlo attributions]
A sampled attribution is, element by element, the mean of S per-sample estimates a_1 .. a_S:
a noisy copy's attribution (the noise tunnel), a drawn baseline's (`expectation`), one draw of
noise, baseline and path position (gradient SHAP), one permutation's marginal contribution
(Shapley sampling). Given the input they are independent and identically distributed (each
copy draws from its own seeds, NOTE: [Seeds of folded copies] in sampling.py, so this holds
around a stochastic inner method too), so the mean's standard deviation is sigma / sqrt(S),
estimated by
    SE = sqrt(s^2 / S),   s^2 = sum_s (a_s - mean)^2 / (S - 1),
from the very samples the mean is made of: no model call more. The sum of squared deviations is
merged over chunks as VarGrad's is (NOTE: [Variance over chunks] in noise_tunnel.py): the SE does not
depend on chunk_size beyond rounding, and half-precision samples are accumulated in float32.
SmoothGrad-squared's samples are a_s^2, and its SE is that of their mean. Complex attributions
count |a_s - mean|^2 (the SE is real). Memory: three more running tensors like the result (the
shift, the mean, M2). The SE is differentiable as the mean is (torch.func.grad through it is
tested), except where it is 0 (every sample equal): sqrt has no finite derivative there.

Antithetic Shapley sampling uses each drawn permutation and its reverse: the two contributions
are dependent (negatively correlated, which is their point), so the independent units are the
S/2 pairs: SE = sqrt(s_p^2 / (S/2)), s_p^2 the unbiased variance of the pair means (the
estimate is their mean). An odd S, which leaves one permutation unpaired, is refused, as is any
S with fewer than two independent units: s^2 needs two (one gives 0/0). VarGrad's value is a
variance; its SE needs the samples' fourth moment, which is not kept: refused.

What the SE is not: it measures the estimate's sampling noise about its own expectation, the
value at S -> infinity (for the noise tunnel E_e[A(x + e)], not A(x); for gradient SHAP the
expected gradients), not the method's bias nor its faithfulness. mean +- 1.96 SE is a 95%
interval under the normal approximation, which needs S large enough for the central limit
theorem; heavy-tailed samples (a gradient that jumps where noise crosses a ReLU kink) need more.

KernelSHAP's estimate is a regression's solution, not a mean: its SE is the delta method's over
the same coalitions (NOTE: [Standard errors of KernelSHAP] in kernel_shap_error.py).
"""

from __future__ import annotations

import torch

from .paths import WIDE


def check_std_error(return_std_error, n_samples, method: str, *, pairs: bool = False, reduce: str = "mean") -> None:
    """Refuses, when the call is built, a standard error that cannot be estimated (NOTE:
    [Standard errors of Monte Carlo attributions]); ``pairs``: the samples come in antithetic pairs."""
    if not isinstance(return_std_error, bool):
        raise TypeError(f"{method}: return_std_error must be True or False, got {return_std_error!r}")
    if not return_std_error:
        return
    if reduce == "var":
        raise ValueError(
            f"{method}: return_std_error is not available for reduce='var' (VarGrad): the standard error of a "
            "variance needs the samples' fourth moment, which is not kept. Use reduce='mean' or 'sq_mean', or compare "
            "VarGrad over a few seeds"
        )
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        return  # the method's own check names the problem
    if pairs and n_samples % 2:
        raise ValueError(
            f"{method}: with antithetic=True the independent samples are the pairs of a permutation and its reverse, "
            f"and n_samples={n_samples} leaves one unpaired; give an even n_samples for return_std_error"
        )
    units = n_samples // 2 if pairs else n_samples
    if units < 2:
        what = "antithetic pairs (n_samples >= 4)" if pairs else "samples (n_samples >= 2)"
        raise ValueError(
            f"{method}: return_std_error estimates the samples' variance, which needs at least two independent {what}; "
            f"got n_samples={n_samples}"
        )


def mean_and_std_error(samples: torch.Tensor, dim: int, pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``samples`` over ``dim`` and its standard error; ``pairs``: consecutive samples
    along ``dim`` are antithetic pairs, and the SE is that of the pair means (NOTE: [Standard
    errors of Monte Carlo attributions])."""
    mean = samples.mean(dim)
    units = samples.unflatten(dim, (-1, 2)).mean(dim + 1) if pairs else samples
    wide = units.to(WIDE.get(units.dtype, units.dtype))
    var = wide.var(dim, correction=1)  # complex: of |a - mean|^2, real
    return mean, (var / units.shape[dim]).sqrt().to(real_dtype(samples.dtype))


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of a complex one (complex64 -> float32); a real dtype itself."""
    return dtype.to_real() if dtype.is_complex else dtype
