"""Shapley interaction indices as weights on the game's values, and the result they come in.

NOTE: [Interaction indices as weights on the game]
With v(S) the model at the input whose features outside S take their baseline (NOTE: [Features
and coalitions] in perturb.py), the Moebius transform (Harsanyi dividends)
    m(S) = sum_{L subset of S} (-1)^{|S| - |L|} v(L)
is the part of v that belongs to S and to no smaller set: v(S) = sum_{L subset of S} m(L). Each
of the four indices, for a set T of j <= k features (k the order), shares the dividends of the
sets S containing T out to T with a weight w(|S|, j) that depends on the sizes only:
    SII   (Grabisch & Roubens 1999)   w(r, j) = 1 / (r - j + 1)
    STII  (Sundararajan et al. 2020)  j < k: [r = j] (the dividend itself); j = k: 1 / C(r, k)
    FSII  (Tsai et al. 2023, Thm 19)  [r = j] + [r > k] (-1)^(k-j) j/(k+j) C(k, j) C(r-1, k) / C(r+k-1, k+j)
    k-SII (Bordt & von Luxburg 2023)  sum_{l=0}^{min(k-j, r-j)} B_l C(r-j, l) / (r - j - l + 1)
(B_l the Bernoulli numbers, B_1 = -1/2: k-SII(T) = sum_l B_l sum_{|K| = l, K disjoint from T}
SII(T + K), the SII of orders j..k folded back onto T). I(T) = sum_{S superset of T} w(|S|, j) m(S).
Substituting the transform, the weight of v(L) in I(T) depends only on s = |L| and on t = |L & T|:
    gamma_j(s, t) = sum_{r=u}^{F} C(F - u, r - u) w(r, j) (-1)^(r - s),   u = j + s - t = |L + T|,
(the sets S of size r that contain L + T), so I(T) = sum_L gamma_j(|L|, |L & T|) v(L). The tables
gamma are computed once per (index, F, k) in exact rational arithmetic (the sum alternates, and
in floating point its terms of size C(F, F/2) would cancel away the digits) and rounded to
float64 once. The exact method sums the 2^F coalitions with them; the sampled one estimates
that sum (NOTE: [Stratified interaction sampling] in shapley_interactions_sampled.py).
Efficiency: for STII, FSII and k-SII the indices of all 1 <= |T| <= k sum to v(all) - v({}); SII
does not (its order-k values are not shares of anything). At k = 1 all four are the Shapley
value; k-SII at k = F and STII, FSII at k >= F are the dividends themselves.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from functools import lru_cache

import torch

INDICES = ("k-SII", "SII", "STII", "FSII")
EFFICIENT = ("k-SII", "STII", "FSII")


# other spellings: any case, with or without "-", "_" or spaces, and the papers' names
ALIASES = {"ksii": "k-SII", "sii": "SII", "stii": "STII", "sti": "STII", "shapleytaylor": "STII", "fsii": "FSII",
           "fsi": "FSII", "faithshap": "FSII"}  # fmt: skip


def check_index(index, order) -> str:
    """The index's canonical name (`ALIASES`: "kSII", "k_sii", "Faith-SHAP", "Shapley-Taylor", ...
    are accepted); refuses unknown indices and orders that are not positive ints."""
    key = "".join(c for c in index.lower() if c not in "-_ ") if isinstance(index, str) else None
    if key not in ALIASES:
        raise ValueError(
            f"index must be one of {', '.join(repr(i) for i in INDICES)} (any case, '-' and '_' optional; "
            f"also 'Faith-SHAP', 'Shapley-Taylor'), got {index!r}"
        )
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int (2 for pairs), got {order!r}")
    return ALIASES[key]


@lru_cache(maxsize=None)
def _bernoulli(n: int) -> tuple[Fraction, ...]:
    """B_0..B_n with B_1 = -1/2, from sum_{l=0}^{m} C(m+1, l) B_l = 0 (m >= 1)."""
    b = [Fraction(1)]
    for m in range(1, n + 1):
        b.append(-sum(math.comb(m + 1, l) * b[l] for l in range(m)) / (m + 1))
    return tuple(b)


def moebius_weight(index: str, r: int, j: int, k: int) -> Fraction:
    """w(r, j): the share of the dividend of a set of r features in the index of a set of j <= k
    of them, r >= j (NOTE: [Interaction indices as weights on the game])."""
    if index == "SII":
        return Fraction(1, r - j + 1)
    if index == "STII":
        return Fraction(int(r == j)) if j < k else Fraction(1, math.comb(r, k))
    if index == "FSII":
        w = Fraction(int(r == j))
        if r > k:
            w += (-1) ** (k - j) * Fraction(j * math.comb(k, j) * math.comb(r - 1, k), (k + j) * math.comb(r + k - 1, k + j))
        return w
    b = _bernoulli(k)
    return sum((b[l] * math.comb(r - j, l) / (r - j - l + 1) for l in range(min(k - j, r - j) + 1)), Fraction(0))


@lru_cache(maxsize=16)
def _gamma(index: str, n: int, order: int, j: int) -> tuple[tuple[Fraction, ...], ...]:
    """gamma_j(s, t) as exact fractions, [s][t] for s in 0..n, t in 0..j (0 where no L exists)."""
    w = [moebius_weight(index, r, j, order) if r >= j else Fraction(0) for r in range(n + 1)]
    rows = []
    for s in range(n + 1):
        row = [Fraction(0)] * (j + 1)
        for t in range(max(0, j + s - n), min(j, s) + 1):
            u = j + s - t
            row[t] = sum((math.comb(n - u, r - u) * w[r] * (-1) ** (r - s) for r in range(u, n + 1)), Fraction(0))
        rows.append(tuple(row))
    return tuple(rows)


@lru_cache(maxsize=64)
def gamma_table(index: str, n: int, order: int, j: int) -> torch.Tensor:
    """(n + 1, j + 1) float64: gamma_j(s, t), the weight of v(L), |L| = s, in the index of a set
    T of j features with |L & T| = t; 0 where no such L exists."""
    return torch.tensor([[float(g) for g in row] for row in _gamma(index, n, order, j)], dtype=torch.float64)


@lru_cache(maxsize=64)
def stratum_totals(index: str, n: int, order: int, j: int) -> torch.Tensor:
    """(n + 1,) float64: sum of gamma_j(|L|, |L & T|) over the C(n, s) coalitions L of size s,
    for any T of j features (the index of the game that is 1 on every set of size s)."""
    g = _gamma(index, n, order, j)
    totals = [sum((math.comb(j, t) * math.comb(n - j, s - t) * g[s][t] for t in range(max(0, j + s - n), min(j, s) + 1)),
                  Fraction(0)) for s in range(n + 1)]  # fmt: skip
    return torch.tensor([float(x) for x in totals], dtype=torch.float64)


@lru_cache(maxsize=64)
def combinations(n: int, j: int) -> torch.Tensor:
    """(C(n, j), j) long: the j-subsets of 0..n-1, each ascending, in colex order (by the largest
    id, then the next): the set (c_0 < ... < c_{j-1}) is at position sum_i C(c_i, i + 1)."""
    combos = sorted(itertools.combinations(range(n), j), key=lambda c: c[::-1])
    return torch.tensor(combos, dtype=torch.long).reshape(len(combos), j)


def ranks(combos: torch.Tensor) -> torch.Tensor:
    """The colex positions of ascending j-subsets (C, j) among all j-subsets (`combinations`)."""
    pos = torch.zeros(combos.shape[0], dtype=torch.long)
    for i in range(combos.shape[1]):
        pos += torch.tensor([math.comb(int(c), i + 1) for c in combos[:, i].tolist()], dtype=torch.long)
    return pos


class Interactions:
    """Shapley interaction indices of every set of 1..order features, per example (and output).

    ``values(j)`` is the dense, symmetric (rows, [K,] F, ..., F) tensor of the order-j indices
    (entries with a repeated feature are 0); ``compressed(j)`` the same as (rows, [K,] C(F, j))
    over `combinations(F, j)` (colex order). ``main_effects`` is ``values(1)``, ``pairs`` is
    ``values(2)``. ``output`` is f(x) and ``baseline_output`` f(baseline) = v({}), each (rows[, K]);
    ``total()`` sums every index of orders 1..order (= output - baseline_output for the efficient
    indices, NOTE: [Interaction indices as weights on the game]).

    Example:
      >>> inter = xattr.shapley_interactions(xattr.target(model, 1), order=2)(x)
      >>> inter.pairs                          # (B, F, F) pairwise indices; inter.total() = f(x) - f(baseline)
    """

    def __init__(self, index: str, order: int, n_features: int, by_order: dict, output, baseline_output):
        self.index, self.order, self.n_features = index, order, n_features
        self._by_order, self.output, self.baseline_output = by_order, output, baseline_output

    def __repr__(self) -> str:
        lead = tuple(self.output.shape)
        return f"Interactions(index={self.index!r}, order={self.order}, n_features={self.n_features}, rows={lead})"

    def _check(self, j) -> int:
        j = self.order if j is None else j
        if isinstance(j, bool) or not isinstance(j, int) or not 1 <= j <= self.order:
            raise ValueError(f"order must be an int in 1..{self.order} (the order these interactions were computed to), got {j!r}")
        return j

    def compressed(self, order: int | None = None) -> torch.Tensor:
        """(rows, [K,] C(F, j)): the order-j indices over `combinations(F, j)`."""
        return self._by_order[self._check(order)]

    def values(self, order: int | None = None) -> torch.Tensor:
        """The dense symmetric order-j tensor (rows, [K,] F, ..., F) (j axes of F; default the top order)."""
        j = self._check(order)
        flat = self._by_order[j]
        n = self.n_features
        combos = combinations(n, j).to(flat.device)
        dense = flat.new_zeros(flat.shape[:-1] + (n**j,))
        for perm in itertools.permutations(range(j)):
            at = sum(combos[:, p] * n ** (j - 1 - i) for i, p in enumerate(perm))
            dense[..., at] = flat
        return dense.reshape(flat.shape[:-1] + (n,) * j)

    @property
    def main_effects(self) -> torch.Tensor:
        """(rows, [K,] F): the order-1 indices (for SII, the Shapley values)."""
        return self.values(1)

    @property
    def pairs(self) -> torch.Tensor:
        """(rows, [K,] F, F): the symmetric pair matrix, 0 on the diagonal."""
        return self.values(2)

    def to_dense(self) -> tuple[torch.Tensor, ...]:
        """``(values(1), ..., values(order))``."""
        return tuple(self.values(j) for j in range(1, self.order + 1))

    def to_dict(self) -> dict[tuple[int, ...], torch.Tensor]:
        """``{(i, j, ...): (rows[, K]) tensor}`` for every set of 1..order features, keys ascending."""
        out = {}
        for j in range(1, self.order + 1):
            flat = self._by_order[j]
            for c, combo in enumerate(combinations(self.n_features, j).tolist()):
                out[tuple(combo)] = flat[..., c]
        return out

    def total(self) -> torch.Tensor:
        """(rows[, K]): the sum of every index of orders 1..order."""
        return sum(self._by_order[j].sum(-1) for j in range(1, self.order + 1))

    def top(self, n: int = 10, *, example: int = 0, output: int | None = None, order: int | None = None) -> list:
        """The ``n`` largest indices by magnitude of one example (and output, for many outputs), as
        ``[((i, j, ...), value), ...]``; over all orders, or one ``order``. Ties keep the order
        of `to_dict` (lower orders first, then `combinations` order)."""
        many = self.output.ndim == 2
        rows = self.output.shape[0]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0 (how many indices to list), got {n!r}")
        if isinstance(example, bool) or not isinstance(example, int) or not -rows <= example < rows:
            raise ValueError(f"example must be an int in 0..{rows - 1} (the rows explained), got {example!r}")
        if many:
            k = self.output.shape[1]
            if output is None:
                raise ValueError(f"the model has {k} outputs: choose one with output=k")
            if isinstance(output, bool) or not isinstance(output, int) or not -k <= output < k:
                raise ValueError(f"output must be an int in 0..{k - 1} (the model's outputs), got {output!r}")
        elif output is not None:
            raise ValueError(f"the model has one output per example: leave output=None, got output={output!r}")
        orders = range(1, self.order + 1) if order is None else [self._check(order)]
        items = []
        for j in orders:
            flat = self._by_order[j][example]
            flat = flat[output] if many else flat
            items += zip(map(tuple, combinations(self.n_features, j).tolist()), flat.tolist())
        return sorted(items, key=lambda kv: -abs(kv[1]))[:n]
