"""Two-sample t-tests for TCAV's significance test, with or without scipy.

NOTE: [Testing TCAV scores against random concepts]
A CAV always exists, even for a set of examples with nothing in common, and a TCAV score from a
single CAV can be far from 0.5 by chance. Kim et al. (2018) therefore train the concept's CAV
against R different random counterpart concepts, train R *random* CAVs, and ask with a two-sided
two-sample t-test whether the R concept scores and the R random scores have the same mean.
Kim et al.'s code (and Captum's tutorial) trains the random CAVs of one random concept against
the same R counterparts (``null="anchor"``): the whole null sample then rests on that one
concept. xattr's default, ``null="pairs"``, trains random concept i against random concept
i + 1, so the null sample spans R different random concepts. Measured over 30 seeds (R = 10,
3 sets of random examples posing as concepts per seed) on tests/test_concepts.py's planted
model / docs/tcav.md's CNN:
                                          pairs         anchor
  planted concept significant at 0.05     100% / 100%   97% / 100%
  irrelevant concept flagged              7% / 3%       30% / 17%
  random examples posing as a concept     18% / 13%     30% / 23%
  range of the random scores' mean        0.37-0.62 /   0.32-0.83 /
                                          0.43-0.56     0.29-0.74
Neither keeps the nominal 5%: the R runs of a concept share its examples, so they are not
independent samples, and the test treats the concept's examples as given. Read a p-value as a
screen, and check that a score holds up with other example sets and other random pools.
The statistic and the degrees of freedom are computed here (Student's pooled test by default,
as in Captum's tutorial's ``scipy.stats.ttest_ind``; Welch's with ``equal_var=False``); the
p-value is
``P(|T_df| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)``, the regularised incomplete beta
function, from scipy where installed and otherwise from the continued fraction below.
Degenerate samples are decided, not left NaN: both samples constant and equal gives t = 0 and
p = 1, constant and different gives t = +-inf and p = 0.
"""

from __future__ import annotations

import math

import torch


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t distribution with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    try:
        from scipy import special
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return betainc(df / 2.0, 0.5, df / (df + t * t))
    return float(special.betainc(df / 2.0, 0.5, df / (df + t * t)))


def ttest(a: torch.Tensor, b: torch.Tensor, *, equal_var: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided two-sample t-test along dim 0 (NOTE: [Testing TCAV scores against random concepts]).

    Args:
      a, b: samples (n_a, ...) and (n_b, ...), n_a, n_b >= 2; trailing dims are tested
        elementwise (one test per target for K targets).
      equal_var: Student's pooled-variance test (scipy's ``ttest_ind`` default); False: Welch's.

    Returns:
      ``(t, p)`` float64 tensors shaped like ``a.shape[1:]``.

    Example:
      >>> t, p = xattr.concepts.ttest(scores, random_scores)   # (n_a, K), (n_b, K) -> (K,), (K,)
    """
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    na, nb = a.shape[0], b.shape[0]
    if na < 2 or nb < 2:
        raise ValueError(f"a t-test needs at least 2 values per sample, got {na} and {nb}")
    ma, mb = a.mean(0), b.mean(0)
    va, vb = a.var(0, unbiased=True), b.var(0, unbiased=True)
    if equal_var:
        df = torch.full_like(ma, float(na + nb - 2))
        se = (((na - 1) * va + (nb - 1) * vb) / (na + nb - 2) * (1.0 / na + 1.0 / nb)).sqrt()
    else:
        sa, sb = va / na, vb / nb
        se = (sa + sb).sqrt()
        df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
        df = torch.where(se > 0, df, torch.full_like(df, float(na + nb - 2)))
    diff = ma - mb
    t = torch.where(se > 0, diff / torch.where(se > 0, se, torch.ones_like(se)), diff.sign() * math.inf)
    t = torch.where((se == 0) & (diff == 0), torch.zeros_like(t), t)
    p = [t_two_sided(float(tv), float(dv)) for tv, dv in zip(t.reshape(-1), df.reshape(-1))]
    p = torch.tensor(p, dtype=torch.float64)
    return t, p.reshape(t.shape)
