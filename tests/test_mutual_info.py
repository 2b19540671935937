"""Entropy, (normalised) mutual information, soft MI, subgroups and bins against scikit-learn and
brute-force loops over the joint table, with hypothesis properties of MI."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

from xattr.metrics import (
    bins,
    entropy,
    mutual_information,
    mutual_information_test,
    normalized_mutual_information,
    soft_mutual_information,
    subgroups,
)
from xattr.metrics._mutual_info import permutations

D = torch.float64


def pairs(seed: int, n: int = 300, ka: int = 4, kb: int = 5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, ka, (n,), generator=g)
    noise = torch.randint(0, kb, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.5, a % kb, noise)  # dependent on a, not a function of it
    return a, b


def brute_mi(a, b) -> float:
    """Double loop over every pair of values of the joint table, probabilities from counts."""
    a, b = [tuple(r) if isinstance(r, list) else r for r in a.tolist()], [tuple(r) if isinstance(r, list) else r for r in b.tolist()]
    n = len(a)
    ca, cb, cab = Counter(a), Counter(b), Counter(zip(a, b))
    total = 0.0
    for va in ca:
        for vb in cb:
            nab = cab.get((va, vb), 0)
            if nab:
                total += nab / n * math.log((nab / n) / ((ca[va] / n) * (cb[vb] / n)))
    return total


def brute_h(a) -> float:
    values = [tuple(r) if isinstance(r, list) else r for r in a.tolist()]
    n = len(values)
    return -sum(c / n * math.log(c / n) for c in Counter(values).values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_and_the_brute_force_table(seed):
    a, b = pairs(seed)
    mi = mutual_information(a, b)
    assert mi > 0.05  # the pair is dependent: the comparison is not of two zeros
    assert mi == pytest.approx(mutual_info_score(a.numpy(), b.numpy()), abs=1e-12)
    assert mi == pytest.approx(brute_mi(a, b), abs=1e-12)
    assert entropy(a) == pytest.approx(brute_h(a), abs=1e-12)
    assert mutual_information(a, b, base=2) == pytest.approx(mi / math.log(2), abs=1e-12)
    assert entropy(b, base=10) == pytest.approx(brute_h(b) / math.log(10), abs=1e-12)


@pytest.mark.parametrize("average", ["arithmetic", "geometric", "min", "max"])
def test_normalized_matches_sklearn(average):
    for seed in range(3):
        a, b = pairs(seed, n=120, ka=3, kb=6)
        ref = normalized_mutual_info_score(a.numpy(), b.numpy(), average_method=average)
        assert normalized_mutual_information(a, b, average=average) == pytest.approx(ref, abs=1e-12)
    const = torch.zeros(10, dtype=torch.long)
    assert normalized_mutual_information(const, const) == 1.0  # as scikit-learn: two constant labellings
    assert normalized_mutual_information(const, torch.arange(10)) == 0.0


def test_joint_columns_are_one_variable():
    g = torch.Generator().manual_seed(3)
    a2 = torch.randint(0, 3, (200, 2), generator=g)
    b = (a2[:, 0] + torch.randint(0, 2, (200,), generator=g)) % 3
    mi = mutual_information(a2, b)
    assert mi == pytest.approx(brute_mi(a2, b), abs=1e-12)
    ids, _ = subgroups(a2[:, 0], a2[:, 1])
    assert mi == pytest.approx(mutual_info_score(ids.numpy(), b.numpy()), abs=1e-12)
    assert entropy(a2) == pytest.approx(brute_h(a2), abs=1e-12)
    # bool and integer-valued float inputs are discrete values too
    assert mutual_information(b == 1, b.double()) == pytest.approx(brute_mi((b == 1).long(), b), abs=1e-12)


def test_miller_madow_against_corrected_entropies():
    a, b = pairs(4, n=80, ka=3, kb=4)

    def h_mm(v):
        values = [tuple(r) if isinstance(r, list) else r for r in v.tolist()]
        return brute_h(v) + (len(set(values)) - 1) / (2 * len(values))

    joint = torch.stack([a, b], 1)
    ref = h_mm(a) + h_mm(b) - h_mm(joint)
    assert mutual_information(a, b, correction="miller_madow") == pytest.approx(ref, abs=1e-12)
    assert entropy(a, correction="miller_madow") == pytest.approx(h_mm(a), abs=1e-12)
    # independent variables: the correction pulls the upward-biased plug-in value down
    g = torch.Generator().manual_seed(5)
    x, y = torch.randint(0, 4, (100,), generator=g), torch.randint(0, 4, (100,), generator=g)
    assert mutual_information(x, y, correction="miller_madow") < mutual_information(x, y)


discrete = st.lists(st.integers(0, 4), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), a=discrete)
def test_mi_properties(data, a):
    b = data.draw(st.lists(st.integers(-3, 3), min_size=len(a), max_size=len(a)))
    ta, tb = torch.tensor(a), torch.tensor(b)
    mi = mutual_information(ta, tb)
    ha, hb = entropy(ta), entropy(tb)
    assert mi >= 0.0
    assert mi == pytest.approx(mutual_information(tb, ta), abs=1e-12)
    assert mutual_information(ta, ta) == pytest.approx(ha, abs=1e-12)
    assert mi <= min(ha, hb) + 1e-12
    # relabelling the values by any injective map changes nothing
    perm = data.draw(st.permutations(range(5)))
    relabelled = torch.tensor([10 * perm[v] - 7 for v in a])
    assert mutual_information(relabelled, tb) == pytest.approx(mi, abs=1e-12)
    assert mi == pytest.approx(brute_mi(ta, tb), abs=1e-12)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(ka=st.integers(1, 5), kb=st.integers(1, 5), reps=st.integers(1, 4), shuffle=st.integers(0, 1000))
def test_product_construction_has_zero_mi(ka, kb, reps, shuffle):
    # every pair of values equally often: an exactly independent table
    i = torch.arange(ka * kb).repeat(reps)
    order = torch.randperm(len(i), generator=torch.Generator().manual_seed(shuffle))
    a, b = (i // kb)[order], (i % kb)[order]
    assert mutual_information(a, b) == 0.0
    assert entropy(torch.stack([a, b], 1)) == pytest.approx(entropy(a) + entropy(b), abs=1e-12)


def test_permutation_test_matches_a_loop_over_the_same_draws():
    a, b = pairs(11, n=40, ka=3, kb=3)
    mi, p = mutual_information_test(a, b, n_permutations=200, generator=4)
    assert mi == pytest.approx(mutual_info_score(a.numpy(), b.numpy()), abs=1e-12)
    perms = torch.cat(list(permutations(200, 40, 4)))
    hits = sum(mutual_info_score(a.numpy(), b[perm].numpy()) >= mi - 1e-12 for perm in perms)
    assert p == pytest.approx((1 + hits) / 201)
    assert p < 0.05  # a dependent pair
    assert mutual_information_test(a, b, n_permutations=200, generator=4) == (mi, p)
    # an exactly independent table: every permutation reaches MI 0, p = 1
    i = torch.arange(12).repeat(3)
    assert mutual_information_test(i // 4, i % 4, n_permutations=30, generator=0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="n_permutations"):
        mutual_information_test(a, b, n_permutations=0)


def brute_soft_mi(probs, groups) -> float:
    """Loop over groups: p(y | a) the mean of the group's rows, KL to the overall mean."""
    n = probs.shape[0]
    marg = probs.mean(0)
    total = 0.0
    for value in set(groups.tolist()):
        rows = [i for i in range(n) if groups[i].item() == value]
        cond = probs[rows].mean(0)
        kl = sum(float(c) * math.log(float(c) / float(m)) for c, m in zip(cond, marg) if c > 0)
        total += len(rows) / n * kl
    return total


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), c=st.integers(2, 4), k=st.integers(1, 4))
def test_soft_mi_of_one_hot_probs_is_the_hard_mi(seed, n, c, k):
    g = torch.Generator().manual_seed(seed)
    pred, groups = torch.randint(0, c, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    probs = torch.nn.functional.one_hot(pred, c).to(D)
    soft = soft_mutual_information(probs, groups)
    assert soft.dtype == D and soft.ndim == 0
    assert float(soft) == pytest.approx(mutual_information(groups, pred), abs=1e-12)


def test_soft_mi_matches_the_group_loop_and_finite_differences():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(25, 3, generator=g, dtype=D)
    groups = torch.randint(0, 4, (25,), generator=g)
    value = soft_mutual_information(logits.softmax(-1), groups)
    assert float(value) == pytest.approx(brute_soft_mi(logits.softmax(-1), groups), abs=1e-12)
    assert float(value) > 1e-3
    assert float(soft_mutual_information(logits.softmax(-1), groups, base=2)) == pytest.approx(float(value) / math.log(2))
    leaf = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: soft_mutual_information(z.softmax(-1), groups), (leaf,))
    (grad,) = torch.autograd.grad(soft_mutual_information(leaf.softmax(-1), groups), leaf)
    step = torch.zeros_like(logits)
    step[3, 1] = 1e-6
    fd = (float(soft_mutual_information((logits + step).softmax(-1), groups))
          - float(soft_mutual_information((logits - step).softmax(-1), groups))) / 2e-6  # fmt: skip
    assert float(grad[3, 1]) == pytest.approx(fd, rel=1e-6, abs=1e-10)
    # the same gradient through torch.func (the value check is skipped inside transforms)
    func_grad = torch.func.grad(lambda z: soft_mutual_information(z.softmax(-1), groups))(logits)
    torch.testing.assert_close(func_grad, grad, atol=1e-14, rtol=1e-12)


def test_soft_mi_zero_probabilities_give_finite_gradients():
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=D, requires_grad=True)
    groups = torch.tensor([0, 0, 1, 1])
    value = soft_mutual_information(probs, groups)
    assert value.item() == pytest.approx(brute_soft_mi(probs.detach(), groups), abs=1e-12)
    (grad,) = torch.autograd.grad(value, probs)
    assert torch.isfinite(grad).all()


def test_subgroups_against_a_dict_loop():
    g = torch.Generator().manual_seed(8)
    sex, band, site = torch.randint(0, 2, (50,), generator=g), torch.randint(0, 3, (50,), generator=g), torch.randint(5, 7, (50,), generator=g)
    ids, names = subgroups(sex=sex, age=band, site=site)
    seen = {}
    for key in sorted(set(zip(sex.tolist(), band.tolist(), site.tolist()))):
        seen[key] = len(seen)
    ref = [seen[key] for key in zip(sex.tolist(), band.tolist(), site.tolist())]
    assert ids.tolist() == ref
    assert names == [f"sex={s}, age={a}, site={t}" for s, a, t in seen]
    ids2, names2 = subgroups(sex, band, site, names=["sex", "age", "site"])
    assert ids2.tolist() == ref and names2 == names
    ids3, names3 = subgroups({"s": sex})
    assert ids3.tolist() == sex.tolist() and names3 == ["s=0", "s=1"]
    assert subgroups(sex, band)[1][0] == "a0=0, a1=0"


def test_bins_against_a_loop():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(60, generator=g, dtype=D)
    edges = [-0.5, 0.0, 0.7]
    assert bins(x, edges).tolist() == [sum(v > e for e in edges) for v in x.tolist()]
    assert bins(torch.tensor([-1.0, 0.0, 0.5, 2.0]), [0.0, 2.0]).tolist() == [0, 0, 1, 1]  # closed on the right
    ids, qs = bins(x, 4, return_edges=True)
    assert qs.tolist() == pytest.approx(np.quantile(x.numpy(), [0.25, 0.5, 0.75], method="lower").tolist())
    assert torch.bincount(ids).tolist() == [15, 15, 15, 15]  # equal-frequency bins
    assert bins(x, 1).tolist() == [0] * 60
    assert bins(torch.tensor([0.0, 0.0, 0.0, 1.0]), 2).tolist() == [0, 0, 0, 1]  # ties stay together
    for seed in range(5):  # heavy ties: fewer bins maybe, but none empty
        tied = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(seed)).double()
        assert (torch.bincount(bins(tied, 5)) > 0).all()


def test_inputs_are_not_modified():
    a, b = pairs(10, n=50)
    a0, b0 = a.clone(), b.clone()
    probs = torch.rand(50, 3, dtype=D).softmax(-1)
    p0 = probs.clone()
    mutual_information(a, b)
    soft_mutual_information(probs, a)
    subgroups(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0) and torch.equal(probs, p0)


def test_errors():
    a = torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="one value per example"):
        mutual_information(a, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="integer values"):
        mutual_information(a, torch.tensor([0.5, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one example"):
        entropy(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, k\)"):
        entropy(torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="correction"):
        mutual_information(a, a, correction="jackknife")
    with pytest.raises(ValueError, match="base"):
        entropy(a, base=1)
    with pytest.raises(ValueError, match="average"):
        normalized_mutual_information(a, a, average="harmonic")
    with pytest.raises(ValueError, match="sum to 1"):
        soft_mutual_information(torch.ones(4, 2, dtype=D), a)
    with pytest.raises(ValueError, match="rows of probs"):
        soft_mutual_information(torch.full((3, 2), 0.5, dtype=D), a)
    with pytest.raises(ValueError, match="floating"):
        soft_mutual_information(torch.ones(4, 2, dtype=torch.long), a)
    with pytest.raises(ValueError, match="one value per example"):
        subgroups(a, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer values"):
        subgroups(a, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="increasing"):
        bins(torch.randn(5), [1.0, 0.0])
    with pytest.raises(ValueError, match=">= 1"):
        bins(torch.randn(5), 0)
