"""Exact Shapley interaction indices (SII, STII, FSII, k-SII) against brute force written from
each definition, with the model called once per coalition, and their axioms on random games."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

D = torch.float64
INDICES = ["SII", "STII", "FSII", "k-SII"]
BERNOULLI = [1.0, -0.5, 1.0 / 6.0, 0.0, -1.0 / 30.0]  # B_0..B_4, B_1 = -1/2


def mlp(seed: int, d_in: int = 5, out: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 9), nn.Tanh(), nn.Linear(9, out)).to(D).eval()


def inputs(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ---- brute force, one example at a time, from the definitions ---------------------------------


def subsets(items):
    items = sorted(items)
    return [frozenset(c) for r in range(len(items) + 1) for c in itertools.combinations(items, r)]


def game(f1, x, b):
    """v(S) for every coalition S of the features of one example: one model call per coalition."""
    n = x.shape[0]
    v = {}
    for S in subsets(range(n)):
        z = torch.tensor([i in S for i in range(n)])
        with torch.no_grad():
            v[S] = float(f1(torch.where(z, x, b)[None]))
    return v


def derivative(v, T, S):
    """Delta_T v(S) = sum_{L subset of T} (-1)^(|T| - |L|) v(S + L)."""
    return sum((-1) ** (len(T) - len(L)) * v[S | L] for L in subsets(T))


def sii(v, n, T):
    k, rest = len(T), set(range(n)) - set(T)
    weight = lambda s: math.factorial(s) * math.factorial(n - s - k) / math.factorial(n - k + 1)  # noqa: E731
    return sum(weight(len(S)) * derivative(v, T, S) for S in subsets(rest))


def stii(v, n, T, order):
    if len(T) < order:
        return derivative(v, T, frozenset())  # the Moebius dividend
    rest = set(range(n)) - set(T)
    return order / n * sum(derivative(v, T, S) / math.comb(n - 1, len(S)) for S in subsets(rest))


def k_sii(v, n, T, order):
    rest = set(range(n)) - set(T)
    return sum(BERNOULLI[len(K)] * sii(v, n, T | K) for K in subsets(rest) if len(T) + len(K) <= order)


def fsii(v, n, order):
    """The Faith-SHAP regression solved as written: the degree-`order` polynomial minimising
    sum_S mu(S) (v(S) - v({}) - sum_{T subset of S} E(T))^2 with the Shapley kernel mu over the
    proper non-empty coalitions and the constraint sum_T E(T) = v(all) - v({}) (Lagrange)."""
    terms = [frozenset(c) for r in range(1, order + 1) for c in itertools.combinations(range(n), r)]
    empty, full = v[frozenset()], v[frozenset(range(n))]
    X, y, w = [], [], []
    for S in subsets(range(n)):
        if 0 < len(S) < n:
            X.append([float(T <= S) for T in terms])
            y.append(v[S] - empty)
            w.append((n - 1) / (math.comb(n, len(S)) * len(S) * (n - len(S))))
    X, y, W = np.array(X), np.array(y), np.diag(w)
    ones = np.ones((1, len(terms)))
    kkt = np.block([[X.T @ W @ X, ones.T], [ones, np.zeros((1, 1))]])
    sol = np.linalg.solve(kkt, np.concatenate([X.T @ W @ y, [full - empty]]))
    return dict(zip(terms, sol[: len(terms)]))


def reference(index, v, n, order):
    """{frozenset T: index} for every 1 <= |T| <= order."""
    if index == "FSII":
        return fsii(v, n, order)
    sets = [frozenset(c) for r in range(1, order + 1) for c in itertools.combinations(range(n), r)]
    one = {"SII": lambda T: sii(v, n, T), "STII": lambda T: stii(v, n, T, order), "k-SII": lambda T: k_sii(v, n, T, order)}
    return {T: one[index](T) for T in sets}


def as_dict(inter, example=0):
    return {frozenset(T): float(val[example]) for T, val in inter.to_dict().items()}


def close(got: dict, want: dict, tol=1e-10):
    assert got.keys() == want.keys()
    worst = max(abs(got[T] - want[T]) for T in want)
    assert worst <= tol, worst


# ---- against the definitions ------------------------------------------------------------------


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_each_index_equals_its_definition(index, order):
    model = mlp(order)
    x, b = inputs(1, (2, 5)), inputs(2, (2, 5))
    inter = xattr.shapley_interactions(xattr.target(model, 0), index=index, order=order, baselines=b)(x)
    for e in range(2):
        v = game(lambda t: model(t)[0, 0], x[e], b[e])
        close(as_dict(inter, e), reference(index, v, 5, order))


table_games = st.lists(st.floats(-3, 3, allow_nan=False), min_size=16, max_size=16)


def total_game(seed: int = 57, d_in: int = 4, rows: int = 3):
    """A model of one number per batch (the sum of an MLP's outputs), its inputs, and its game
    v(S) over the d_in features (the others at 0), by brute force."""
    model = mlp(seed, d_in=d_in)

    def total(x):
        return model(x).sum()

    x = inputs(seed, (rows, d_in))
    with torch.no_grad():
        v = {S: float(total(torch.where(torch.tensor([i in S for i in range(d_in)]), x, 0.0))) for S in subsets(range(d_in))}
    return total, x, v


def table_model(table):
    """A model whose value at the coalition coded c (input 1 on its features, baseline 0) is table[c]."""
    t = torch.tensor(table, dtype=D)
    n = int(math.log2(len(table)))
    return lambda x: t[(x.round().long() * 2 ** torch.arange(n)).sum(-1)]


def table_game(table):
    n = int(math.log2(len(table)))
    return {S: table[sum(2**i for i in S)] for S in subsets(range(n))}


@settings(max_examples=12, deadline=None, derandomize=True)
@given(table=table_games, index=st.sampled_from(INDICES), order=st.integers(1, 4))
def test_random_games_match_the_definitions_and_are_efficient(table, index, order):
    x = torch.ones(1, 4, dtype=D)
    inter = xattr.shapley_interactions(table_model(table), index=index, order=order)(x)
    close(as_dict(inter), reference(index, table_game(table), 4, order), tol=1e-9)
    if index != "SII":  # efficiency
        torch.testing.assert_close(inter.total(), torch.tensor([table[-1] - table[0]], dtype=D), atol=1e-10, rtol=0)
    torch.testing.assert_close(inter.baseline_output, torch.tensor([table[0]], dtype=D))


def test_sii_is_not_efficient_beyond_order_one():
    inter = xattr.shapley_interactions(xattr.target(mlp(3), 0), index="SII", order=2)(inputs(3, (1, 5)))
    assert abs(float(inter.total()[0] - (inter.output - inter.baseline_output)[0])) > 1e-3


@settings(max_examples=8, deadline=None, derandomize=True)
@given(table=table_games, index=st.sampled_from(INDICES))
def test_order_one_is_the_shapley_value(table, index):
    f, x = table_model(table), torch.ones(1, 4, dtype=D)
    inter = xattr.shapley_interactions(f, index=index, order=1)(x)
    torch.testing.assert_close(inter.main_effects, xattr.shapley_values(f)(x), atol=1e-12, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(table=table_games, index=st.sampled_from(INDICES), perm=st.permutations(range(4)))
def test_renaming_the_features_renames_the_indices(table, index, perm):
    # symmetry in its general form: the game v'(S) = v(pi(S)) has I'(T) = I(pi(T))
    game_ = table_game(table)
    renamed = [game_[frozenset(perm[i] for i in range(4) if c >> i & 1)] for c in range(16)]
    x = torch.ones(1, 4, dtype=D)
    a = as_dict(xattr.shapley_interactions(table_model(table), index=index, order=3)(x))
    b = as_dict(xattr.shapley_interactions(table_model(renamed), index=index, order=3)(x))
    for T, val in b.items():
        assert abs(val - a[frozenset(perm[i] for i in T)]) <= 1e-10


@settings(max_examples=8, deadline=None, derandomize=True)
@given(table=st.lists(st.floats(-3, 3, allow_nan=False), min_size=12, max_size=12), index=st.sampled_from(INDICES))
def test_symmetric_players_get_equal_indices(table, index):
    # v depends on players 0 and 1 only through how many of them are in: swapping them changes nothing
    full = [table[((c & 1) + (c >> 1 & 1)) * 4 + (c >> 2 & 1) * 2 + (c >> 3 & 1)] for c in range(16)]
    inter = xattr.shapley_interactions(table_model(full), index=index, order=2)(torch.ones(1, 4, dtype=D))
    main, pairs = inter.main_effects[0], inter.pairs[0]
    assert abs(float(main[0] - main[1])) <= 1e-10
    torch.testing.assert_close(pairs[0, 2:], pairs[1, 2:], atol=1e-10, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(table=st.lists(st.floats(-3, 3, allow_nan=False), min_size=8, max_size=8), index=st.sampled_from(INDICES),
       dummy=st.integers(0, 3))  # fmt: skip
def test_a_dummy_feature_has_no_interactions(table, index, dummy):
    def drop(c):  # the code without the dummy's bit, as a 3-bit code
        low, high = c & ((1 << dummy) - 1), c >> (dummy + 1)
        return low | (high << dummy)

    full = [table[drop(c)] for c in range(16)]
    inter = xattr.shapley_interactions(table_model(full), index=index, order=3)(torch.ones(1, 4, dtype=D))
    for T, val in as_dict(inter).items():
        if dummy in T:
            assert abs(val) <= 1e-12, (T, val)
    assert max(abs(v) for v in as_dict(inter).values()) > 0 or max(map(abs, table)) == 0


@settings(max_examples=8, deadline=None, derandomize=True)
@given(t1=table_games, t2=table_games, a=st.floats(-2, 2), c=st.floats(-2, 2), index=st.sampled_from(INDICES))
def test_linear_in_the_game(t1, t2, a, c, index):
    x = torch.ones(1, 4, dtype=D)
    mixed = [a * p + c * q for p, q in zip(t1, t2)]
    run = lambda t: xattr.shapley_interactions(table_model(t), index=index, order=2)(x)  # noqa: E731
    for j in (1, 2):
        torch.testing.assert_close(run(mixed).values(j), a * run(t1).values(j) + c * run(t2).values(j), atol=1e-9, rtol=0)


@pytest.mark.parametrize("index", INDICES)
def test_an_additive_model_has_no_pair_interactions(index):
    w = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.5], dtype=D)

    def f(x):
        return (torch.sin(x) * w + x**2).sum(-1)

    x, b = inputs(7, (3, 5)), inputs(8, (3, 5))
    inter = xattr.shapley_interactions(f, index=index, order=2, baselines=b)(x)
    assert inter.pairs.abs().max() <= 1e-12
    # each feature's own change, g_i(x_i) - g_i(b_i), for every index
    torch.testing.assert_close(inter.main_effects, (torch.sin(x) - torch.sin(b)) * w + x**2 - b**2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("index", INDICES)
def test_a_product_of_two_features_is_one_pair(index):
    def f(x):
        return x[:, 1] * x[:, 3]

    x = inputs(9, (3, 5))
    inter = xattr.shapley_interactions(f, index=index, order=2)(x)  # baseline 0
    product = x[:, 1] * x[:, 3]
    torch.testing.assert_close(inter.pairs[:, 1, 3], product, atol=1e-12, rtol=0)
    torch.testing.assert_close(inter.pairs[:, 3, 1], product, atol=1e-12, rtol=0)
    others = inter.pairs.clone()
    others[:, 1, 3] = others[:, 3, 1] = 0
    assert others.abs().max() <= 1e-12
    # SII's main effects are the Shapley values (half the product to each); the efficient
    # indices put the whole product on the pair and nothing on the features alone
    main = torch.zeros(3, 5, dtype=D)
    if index == "SII":
        main[:, 1] = main[:, 3] = product / 2
    torch.testing.assert_close(inter.main_effects, main, atol=1e-12, rtol=0)


# ---- the engine's arguments ---------------------------------------------------------------------


def test_batch_chunks_and_per_example_baselines_follow_the_examples():
    f = xattr.target(mlp(11), 0)
    x, b = inputs(11, (4, 5)), inputs(12, (4, 5))
    method = xattr.shapley_interactions(f, index="FSII", order=3)
    whole = method(x, baselines=b)
    chunked = xattr.shapley_interactions(f, index="FSII", order=3, chunk_size=7)(x, baselines=b)
    for j in (1, 2, 3):
        torch.testing.assert_close(chunked.values(j), whole.values(j), atol=1e-12, rtol=0)
        for i in range(4):
            alone = method(x[i : i + 1], baselines=b[i : i + 1])
            torch.testing.assert_close(alone.values(j)[0], whole.values(j)[i], atol=1e-12, rtol=0)


def test_grouped_and_per_example_feature_masks():
    model = mlp(13, d_in=6)
    f = xattr.target(model, 0)
    x = inputs(13, (2, 6))
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    inter = xattr.shapley_interactions(f, index="STII", feature_mask=groups)(x)
    assert inter.pairs.shape == (2, 4, 4)
    for e in range(2):  # the game over the 4 groups, one model call per coalition
        with torch.no_grad():
            v = {S: float(model(torch.where(torch.isin(groups, torch.tensor(sorted(S), dtype=torch.long)), x[e], 0.0)[None])[0, 0])
             for S in subsets(range(4))}  # fmt: skip
        close(as_dict(inter, e), reference("STII", v, 4, 2))
    # per-example masks holding different ids: each example gets what it gets alone, 0 at ids it lacks
    masks = torch.tensor([[0, 0, 1, 1, 2, 2], [5, 5, 5, 1, 1, 3]])
    both = xattr.shapley_interactions(f, index="k-SII", feature_mask=masks)(x)
    assert both.pairs.shape == (2, 6, 6)
    for e in range(2):
        alone = as_dict(xattr.shapley_interactions(f, index="k-SII", feature_mask=masks[e : e + 1])(x[e : e + 1]))
        got = as_dict(both, e)
        assert all(got[T] == 0 for T in got.keys() - alone.keys())  # sets holding an id the example lacks
        close({T: got[T] for T in alone}, alone, tol=1e-12)
    assert both.pairs[1, 0].abs().max() == 0 and both.pairs[0, 5].abs().max() == 0  # ids the example lacks
    assert both.pairs[1, 1, 5] != 0 and both.pairs[0, 0, 2] != 0
    torch.testing.assert_close(both.total(), both.output - both.baseline_output, atol=1e-12, rtol=0)


def test_many_outputs_add_an_axis_of_single_target_runs():
    model = mlp(14, out=3)
    x = inputs(14, (2, 5))
    every = xattr.shapley_interactions(xattr.target(model, xattr.outputs()), index="SII", order=3)(x)
    assert every.pairs.shape == (2, 3, 5, 5) and every.values(3).shape == (2, 3, 5, 5, 5)
    for k in range(3):
        one = xattr.shapley_interactions(xattr.target(model, k), index="SII", order=3)(x)
        for j in (1, 2, 3):
            torch.testing.assert_close(every.values(j)[:, k], one.values(j), atol=1e-12, rtol=0)
    assert len(every.top(4, example=1, output=2)) == 4
    with pytest.raises(ValueError, match="output=k"):
        every.top(3)


def test_two_attributed_arguments_and_a_pass_through():
    def f(a, b, scale):
        return (a.sum(1) * b[:, 0] + a[:, 0] * b[:, 1] ** 2) * scale

    a, b, scale = inputs(15, (2, 2)), inputs(16, (2, 2)), torch.tensor([2.0, -1.0], dtype=D)
    inter = xattr.shapley_interactions(f, index="STII", argnums=(0, 1))(a, b, scale)
    assert inter.n_features == 4  # ids run on across the tensors: a's are 0, 1 and b's 2, 3
    for e in range(2):
        x = torch.cat([a[e], b[e]])
        v = game(lambda t: f(t[:, :2], t[:, 2:], scale[e : e + 1])[0], x, torch.zeros(4, dtype=D))
        close(as_dict(inter, e), reference("STII", v, 4, 2))


def test_rows_evaluated_and_the_result_views():
    calls = []
    model = mlp(17)

    def f(x):
        calls.append(x.shape[0])
        return model(x)[:, 0]

    x = inputs(17, (3, 5))
    inter = xattr.shapley_interactions(f, index="k-SII", order=2)(x)
    assert sum(calls) == 3 * (2**5 - 1) + 3  # every coalition but the full one, and f(x)
    pairs = inter.pairs
    torch.testing.assert_close(pairs, pairs.transpose(1, 2), atol=0, rtol=0)
    assert (torch.diagonal(pairs, dim1=1, dim2=2) == 0).all()
    triples = xattr.shapley_interactions(f, index="k-SII", order=3)(x).values(3)
    for perm in itertools.permutations(range(3)):
        torch.testing.assert_close(triples.permute(0, *(p + 1 for p in perm)), triples, atol=0, rtol=0)
    d = inter.to_dict()
    assert len(d) == 5 + 10 and torch.equal(d[(1, 3)], pairs[:, 1, 3]) and torch.equal(d[(2,)], inter.main_effects[:, 2])
    top = inter.top(3, example=2)
    assert [abs(v) for _, v in top] == sorted((abs(float(v[2])) for v in d.values()), reverse=True)[:3]
    assert inter.top(2, example=2, order=2)[0][0] in {T for T in d if len(T) == 2}
    dense = inter.to_dense()
    assert len(dense) == 2 and torch.equal(dense[1], pairs) and "k-SII" in repr(inter)


def test_a_model_in_eval_mode_is_left_as_it_is_and_the_inputs_unchanged():
    model = mlp(18)
    x = inputs(18, (2, 5))
    before = x.clone()
    xattr.shapley_interactions(xattr.target(model, 0))(x)
    assert not model.training and torch.equal(x, before)


def test_bad_arguments_are_refused():
    f = xattr.target(mlp(19), 0)
    with pytest.raises(ValueError, match="index must be one of"):
        xattr.shapley_interactions(f, index="shap")
    with pytest.raises(ValueError, match="order must be a positive int"):
        xattr.shapley_interactions(f, order=0)
    with pytest.raises(ValueError, match="max_features=4"):
        xattr.shapley_interactions(f, max_features=4)(inputs(19, (1, 5)))
    inter = xattr.shapley_interactions(f, index="fsii")(inputs(19, (1, 5)))  # any case
    assert inter.index == "FSII"
    with pytest.raises(ValueError, match="order must be an int in 1..2"):
        inter.values(3)


def test_an_order_above_the_feature_count_gives_the_dividends():
    f = xattr.target(mlp(20, d_in=3), 0)
    x = inputs(20, (1, 3))
    inter = xattr.shapley_interactions(f, index="FSII", order=4)(x)
    assert inter.values(4).abs().max() == 0  # no set of 4 of 3 features
    v = game(lambda t: f(t)[0], x[0], torch.zeros(3, dtype=D))
    for T, val in as_dict(inter).items():
        if len(T) <= 3:
            assert abs(val - derivative(v, T, frozenset())) <= 1e-12


def test_a_model_of_one_number_per_batch_explains_the_batch():
    model = mlp(21, d_in=4)

    def total(x):  # one number for the whole batch: the game of the batch, coalitions shared
        return model(x).sum()

    x = inputs(21, (3, 4))
    inter = xattr.shapley_interactions(total, index="FSII")(x)
    assert inter.pairs.shape == (1, 4, 4)
    with torch.no_grad():
        v = {S: float(total(torch.where(torch.tensor([i in S for i in range(4)]), x, 0.0))) for S in subsets(range(4))}
    close(as_dict(inter), reference("FSII", v, 4, 2))


def test_show_progress_gives_the_same_numbers():
    f = xattr.target(mlp(22), 0)
    x = inputs(22, (2, 5))
    quiet = xattr.shapley_interactions(f, index="STII")(x)
    shown = xattr.shapley_interactions(f, index="STII", show_progress=True, chunk_size=16)(x)
    torch.testing.assert_close(shown.pairs, quiet.pairs, atol=1e-12, rtol=0)
