"""Stochastic gates: trainable random masks with an L0 penalty, for learning which features matter.

NOTE: [Stochastic gates]
A gate z_k in [0, 1] multiplies the input features assigned to it (every feature its own gate,
or groups of features sharing one through ``mask``). z_k is random, drawn afresh for every
example of every training batch from a distribution with a trainable parameter, and is exactly
0 with positive probability. The expected number of open gates, sum_k P(z_k > 0), is a smooth
function of the parameters: it stands in for the L0 norm of the gate vector, and adding
``reg_weight`` times it to the model's loss trades accuracy against the number of features
kept. The sample is reparameterised (z = h(parameter, noise) with noise that does not depend on
the parameter), so the model loss's gradient reaches the parameter through z. Both
distributions are "rectified": a continuous variable that may leave [0, 1] is clamped,
z = min(1, max(0, s)), which puts point masses at 0 and at 1.

Hard concrete (Louizos, Welling and Kingma, "Learning Sparse Neural Networks through L0
Regularization", ICLR 2018), parameter log_alpha per gate, temperature tau in (0, 1), stretch
bounds gamma < 0 < 1 < zeta:
  u ~ Uniform(eps, 1 - eps),   s = sigmoid((logit(u) + log_alpha) / tau),
  s_bar = gamma + (zeta - gamma) s,   z = min(1, max(0, s_bar)),
  P(z > 0) = P(s > -gamma / (zeta - gamma)) = sigmoid(log_alpha - tau log(-gamma / zeta))
(s > q holds iff logit(u) > tau logit(q) - log_alpha, and logit(-gamma / (zeta - gamma)) is
log(-gamma / zeta); the truncation of u to [eps, 1 - eps] moves it by at most eps). In eval mode
the gate is the paper's test-time value min(1, max(0, gamma + (zeta - gamma) sigmoid(log_alpha))),
which is not the mean of z.

Gaussian (Yamada, Lindenbaum, Negahban and Kluger, "Feature Selection using Stochastic Gates",
ICML 2020), parameter mu per gate, fixed std sigma > 0:
  z = min(1, max(0, mu + sigma * e)),  e ~ N(0, 1),   P(z > 0) = Phi(mu / sigma),
and in eval mode z = min(1, max(0, mu)).

The constructors, defaults, attribute and parameter names (``log_alpha_param``, ``mu``, the
``mask`` buffer) are Captum's (``captum.module``), so state dicts load either way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .stochastic_gates_base import StochasticGatesBase, _real


class BinaryConcreteStochasticGates(StochasticGatesBase):
    """Hard-concrete gates (Louizos, Welling and Kingma, ICLR 2018), one ``log_alpha`` per gate.

    See NOTE: [Stochastic gates]: z = clamp(gamma + (zeta - gamma) sigmoid((logit(u) +
    log_alpha) / temperature), 0, 1) with u ~ Uniform(eps, 1 - eps), and
    P(z > 0) = sigmoid(log_alpha - temperature * log(-lower_bound / upper_bound)).

    Args:
      n_gates: the number of gates.
      mask: optional integer tensor broadcastable to the input's shape naming each element's
        gate, 0..n_gates-1 (n_gates - 1 must occur); copied. Without it element k of each
        flattened example has gate k.
      reg_weight: the factor of the L0 penalty.
      temperature: of the concrete distribution, in (0, 1) (towards 0: closer to Bernoulli).
      lower_bound, upper_bound: the stretch gamma < 0 and zeta > 1.
      eps: the uniform noise is drawn from [eps, 1 - eps], so its logit stays finite.
      reg_reduction: ``'sum'``, ``'mean'`` or ``'none'`` (the vector of probabilities).
      generator: xattr only: an int seed or a ``torch.Generator`` for the initial log_alpha and
        every gate drawn after (NOTE: [Random streams of stochastic gates]); None: torch's
        global generator, in Captum's order.

    Example:
      >>> gates = xattr.BinaryConcreteStochasticGates(30, reg_weight=0.01, generator=0)
      >>> gated, reg = gates(x)              # x: (B, 30)
      >>> loss = loss_fn(model(gated), y) + reg
    """

    def __init__(self, n_gates: int, mask: torch.Tensor | None = None, reg_weight: float = 1.0,
                 temperature: float = 2 / 3, lower_bound: float = -0.1, upper_bound: float = 1.1,
                 eps: float = 1e-8, reg_reduction: str = "sum", *, generator=None) -> None:  # fmt: skip
        super().__init__(n_gates, mask=mask, reg_weight=reg_weight, reg_reduction=reg_reduction, generator=generator)
        temperature = _real("temperature", temperature)
        lower_bound, upper_bound = _real("lower_bound", lower_bound), _real("upper_bound", upper_bound)
        eps = _real("eps", eps)
        if not 0 < temperature < 1:
            raise ValueError(f"temperature must lie in (0, 1), got {temperature}")
        if not lower_bound < 0:
            raise ValueError(f"lower_bound (the stretch below 0) must be negative, got {lower_bound}")
        if not upper_bound > 1:
            raise ValueError(f"upper_bound (the stretch above 1) must be larger than 1, got {upper_bound}")
        if not 0 <= eps < 0.5:
            raise ValueError(f"eps must lie in [0, 0.5), got {eps}")
        self.log_alpha_param = nn.Parameter(self._draw((self.n_gates,), lambda t, g: t.normal_(0.0, 0.01, generator=g)))
        self.temperature = temperature
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.eps = eps
        self.active_prob_offset = temperature * math.log(-lower_bound / upper_bound)

    def _stretch(self, s: torch.Tensor) -> torch.Tensor:
        return s * (self.upper_bound - self.lower_bound) + self.lower_bound

    def _sample_gate_values(self, batch_size: int) -> torch.Tensor:
        la = self.log_alpha_param
        if not self.training:
            return self._stretch(torch.sigmoid(la)).expand(batch_size, self.n_gates)
        lo, hi = self.eps, 1 - self.eps
        u = self._draw((batch_size, self.n_gates), lambda t, g: t.uniform_(lo, hi, generator=g), like=la)
        return self._stretch(torch.sigmoid((torch.logit(u) + la) / self.temperature))

    def _get_gate_values(self) -> torch.Tensor:
        return self._stretch(torch.sigmoid(self.log_alpha_param))

    def _get_gate_active_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha_param - self.active_prob_offset)

    @classmethod
    def from_pretrained(cls, log_alpha_param: torch.Tensor, *args, **kwargs) -> "BinaryConcreteStochasticGates":
        """Gates with the given 1-D ``log_alpha_param`` (one per gate); the other arguments are the
        constructor's after ``n_gates``. Like Captum, the initial draw is still made (and replaced)."""
        return cls._pretrained("log_alpha_param", log_alpha_param, *args, **kwargs)

    _from_pretrained = from_pretrained  # Captum's name

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.temperature:.4g}, lower_bound={self.lower_bound}, "
                f"upper_bound={self.upper_bound}")  # fmt: skip


class GaussianStochasticGates(StochasticGatesBase):
    """Clipped-Gaussian gates (Yamada, Lindenbaum, Negahban and Kluger, ICML 2020), one ``mu`` per gate.

    See NOTE: [Stochastic gates]: z = clamp(mu + std * e, 0, 1) with e ~ N(0, 1), and
    P(z > 0) = Phi(mu / std).

    Args:
      n_gates, mask, reg_weight, reg_reduction, generator: as for `BinaryConcreteStochasticGates`
        (the generator also draws the initial mu, normal around 0.5 with std 0.01).
      std: the fixed standard deviation of the noise, positive.

    Example:
      >>> gates = xattr.GaussianStochasticGates(30, reg_weight=0.01, generator=0)
      >>> gated, reg = gates(x)
    """

    def __init__(self, n_gates: int, mask: torch.Tensor | None = None, reg_weight: float = 1.0,
                 std: float = 0.5, reg_reduction: str = "sum", *, generator=None) -> None:  # fmt: skip
        super().__init__(n_gates, mask=mask, reg_weight=reg_weight, reg_reduction=reg_reduction, generator=generator)
        std = _real("std", std)
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mu = nn.Parameter(self._draw((self.n_gates,), lambda t, g: t.normal_(0.5, 0.01, generator=g)))
        self.std = std

    def _sample_gate_values(self, batch_size: int) -> torch.Tensor:
        mu = self.mu
        if not self.training:
            return mu.expand(batch_size, self.n_gates)
        std = self.std
        return mu + self._draw((batch_size, self.n_gates), lambda t, g: t.normal_(0.0, std, generator=g), like=mu)

    def _get_gate_values(self) -> torch.Tensor:
        return self.mu

    def _get_gate_active_probs(self) -> torch.Tensor:
        x = self.mu / self.std
        return 0.5 * (1 + torch.erf(x / math.sqrt(2)))

    @classmethod
    def from_pretrained(cls, mu: torch.Tensor, *args, **kwargs) -> "GaussianStochasticGates":
        """Gates with the given 1-D ``mu`` (one per gate); the other arguments are the
        constructor's after ``n_gates``. Like Captum, the initial draw is still made (and replaced)."""
        return cls._pretrained("mu", mu, *args, **kwargs)

    _from_pretrained = from_pretrained  # Captum's name

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, std={self.std}"
