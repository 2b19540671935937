"""SAGE against a brute force written from the definition, the permutation estimator against
the exact values, the game's properties (efficiency, dummy, symmetry, the closed form of a
linear model with squared error), determinism and argument errors."""

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

D = torch.float64


def mlp(seed: int, d_in: int = 4, d_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 6), nn.Tanh(), nn.Linear(6, d_out)).to(D).eval()


def data(seed: int, n: int, d: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)


def row_loss(kind, outs, y):
    """The loss of one example from the model's outputs at its M imputed rows, straight from
    the definition: average the prediction (probabilities for the cross-entropies), then score."""
    if kind == "cross_entropy":
        p = sum(torch.softmax(o, -1) for o in outs) / len(outs)
        return -math.log(float(p[int(y)]))
    if kind == "binary_cross_entropy":
        p = float(sum(torch.sigmoid(o.reshape(())) for o in outs)) / len(outs)
        return -(float(y) * math.log(p) + (1 - float(y)) * math.log(1 - p))
    mean = sum(outs) / len(outs)
    return float(((mean.reshape(-1) - y.reshape(-1)) ** 2).mean())


def brute_force(model, kind, X, Y, bg, groups, extra=()):
    """Exact SAGE from the definition: for every coalition S of the feature groups, every example
    and every background row, one plain model call on one imputed row; v(S) = L({}) - L(S);
    phi_i = sum_S |S|! (F - |S| - 1)! / F! (v(S + i) - v(S))."""
    ids = sorted(set(groups))
    F = len(ids)

    def mean_loss(S):
        total = 0.0
        for n in range(X.shape[0]):
            outs = []
            for b in range(bg.shape[0]):
                row = bg[b].clone()
                for col, g in enumerate(groups):
                    if g in S:
                        row[col] = X[n, col]
                with torch.no_grad():
                    ex = tuple(a[n : n + 1] if isinstance(a, torch.Tensor) and a.shape[:1] == X.shape[:1] else a for a in extra)
                    outs.append(model(row[None], *ex)[0])
            total += row_loss(kind, outs, Y[n])
        return total / X.shape[0]

    L = {S: mean_loss(set(S)) for r in range(F + 1) for S in itertools.combinations(ids, r)}
    phi = {}
    for i in ids:
        others = [j for j in ids if j != i]
        acc = 0.0
        for r in range(F):
            w = math.factorial(r) * math.factorial(F - r - 1) / math.factorial(F)
            for S in itertools.combinations(others, r):
                acc += w * (L[S] - L[tuple(sorted(S + (i,)))])  # v(S + i) - v(S) = L(S) - L(S + i)
        phi[i] = acc
    return phi, L[()], L[tuple(ids)]


@pytest.mark.parametrize("kind", ["cross_entropy", "mse", "binary_cross_entropy"])
def test_exact_matches_the_brute_force_definition(kind):
    d_out = {"cross_entropy": 3, "mse": 2, "binary_cross_entropy": 1}[kind]
    model = mlp(1, d_out=d_out)
    X, Y = data(1, 5)
    if kind == "mse":
        Y = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=D)
    elif kind == "binary_cross_entropy":
        Y = (Y > 0).to(D)
    bg = data(3, 3)[0]
    res = xattr.sage(model, kind, X, Y, background=bg, estimator="exact")
    phi, l0, l1 = brute_force(model, kind, X, Y, bg, [0, 1, 2, 3])
    torch.testing.assert_close(res.values, torch.tensor([phi[i] for i in range(4)], dtype=D), atol=1e-12, rtol=1e-10)
    assert res.loss_empty == pytest.approx(l0, abs=1e-12) and res.loss_full == pytest.approx(l1, abs=1e-12)
    assert torch.equal(res.std_errors, torch.zeros(4, dtype=D)) and res.converged and res.n_draws == 0
    blocks = xattr.sage(model, kind, X, Y, background=bg, estimator="exact", block_size=2, chunk_size=5)
    torch.testing.assert_close(blocks.values, res.values, atol=1e-13, rtol=0)  # examples two at a time


def test_exact_with_groups_gaps_extra_args_and_a_callable_loss():
    torch.manual_seed(4)
    lin = nn.Linear(5, 2).to(D).eval()
    scale = torch.tensor([1.0, -2.0], dtype=D)  # not per example: passed as it is

    def model(x, per_row, s):
        return torch.softmax(lin(x) * per_row[:, None] * s, -1)  # probabilities: a callable loss averages them

    def nll(p, y):
        return -torch.log(p.gather(1, y[:, None])[:, 0])

    X, Y = data(5, 4, d=5, classes=2)
    per_row = torch.tensor([0.5, 1.0, 2.0, -1.0], dtype=D)  # one per example: goes with it
    bg = data(6, 3, d=5)[0]
    groups = [0, 0, 2, 5, 2]  # ids 1, 3, 4 hold nothing
    res = xattr.sage(model, nll, X, Y, background=bg, estimator="exact", feature_mask=torch.tensor(groups),
                     extra_args=(per_row, scale))  # fmt: skip

    # brute force: one call per example, coalition and background row; average the
    # probabilities, then -log of the true class's
    ids = [0, 2, 5]

    def loss_of(S):
        total = 0.0
        for n in range(4):
            ps = []
            for b in range(3):
                row = torch.stack([X[n, c] if groups[c] in S else bg[b, c] for c in range(5)])
                with torch.no_grad():
                    ps.append(model(row[None], per_row[n : n + 1], scale)[0])
            total += -math.log(float((sum(ps) / 3)[int(Y[n])]))
        return total / 4

    L = {S: loss_of(S) for r in range(4) for S in itertools.combinations(ids, r)}
    want = torch.zeros(6, dtype=D)
    for i in ids:
        others = [j for j in ids if j != i]
        for r in range(3):
            w = math.factorial(r) * math.factorial(2 - r) / 6
            for S in itertools.combinations(others, r):
                want[i] += w * (L[S] - L[tuple(sorted(S + (i,)))])
    torch.testing.assert_close(res.values, want, atol=1e-12, rtol=1e-10)
    assert res.values[[1, 3, 4]].abs().max() == 0 and len(res.feature_names) == 6
    assert res.values.sum().item() == pytest.approx(L[()] - L[(0, 2, 5)], abs=1e-12)


def test_permutation_converges_to_the_exact_values():
    # a model trained a little, so the values differ clearly from 0 and from each other
    X, Y = data(7, 40)
    Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    model = mlp(7)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()
    model.eval()
    bg = X[:8]
    exact = xattr.sage(model, "cross_entropy", X, Y, background=bg, estimator="exact")
    est = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=3000, convergence=None, generator=0)
    assert est.n_draws == 3000 and (est.std_errors > 0).all()
    # stated tolerance: within 4 of its own standard errors (fixed seed), and the errors are small
    assert ((est.values - exact.values).abs() <= 4 * est.std_errors).all(), (est.values, exact.values, est.std_errors)
    assert est.std_errors.max() < 0.1 * (exact.values.max() - exact.values.min())
    assert exact.order()[0] == est.order()[0] == 0 and exact.order()[-1] == est.order()[-1] == 3
    # the paper's criterion stops it earlier, converged
    early = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=3000, convergence=0.05, generator=0)
    assert early.converged and 32 <= early.n_draws < 3000 and early.ratio < 0.05
    assert early.std_errors.max() < 0.05 * float(early.values.max() - early.values.min())
    # it stopped at the first block where the criterion held: one block fewer of the same draws had not
    before = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=early.n_draws - 64, convergence=None,
                        generator=0)  # fmt: skip
    assert before.std_errors.max() >= 0.05 * float(before.values.max() - before.values.min())
    prefix = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=early.n_draws, convergence=None,
                        generator=0)  # fmt: skip
    torch.testing.assert_close(prefix.values, early.values, atol=1e-12, rtol=0)


def test_a_draws_samples_are_the_marginal_contributions_along_one_order_and_telescope():
    model = mlp(8)
    X, Y = data(8, 1)  # one example: every draw takes it
    bg = data(9, 4)[0]
    one = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=1, convergence=None, generator=3)
    # brute-force losses of every coalition for the example; one of the 4! orders gives the samples
    groups = [0, 1, 2, 3]
    L = {}
    for r in range(5):
        for S in itertools.combinations(groups, r):
            outs = [model(torch.where(torch.tensor([c in S for c in groups]), X[0], bg[b])[None])[0] for b in range(4)]
            L[S] = row_loss("cross_entropy", [o.detach() for o in outs], Y[0])
    orders = []
    for p in itertools.permutations(groups):
        contrib = torch.zeros(4, dtype=D)
        for j in range(4):
            contrib[p[j]] = L[tuple(sorted(p[:j]))] - L[tuple(sorted(p[: j + 1]))]
        orders.append(contrib)
    assert any(torch.allclose(one.values, c, atol=1e-12, rtol=0) for c in orders)
    assert one.values.sum().item() == pytest.approx(L[()] - L[(0, 1, 2, 3)], abs=1e-12)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_bg=st.sampled_from([None, 1, 3]), draws=st.integers(1, 40),
       kind=st.sampled_from(["cross_entropy", "mse"]))  # fmt: skip
def test_permutation_draws_telescope_to_the_total(seed, n_bg, draws, kind):
    model = mlp(seed, d_out=3 if kind == "cross_entropy" else 1)
    X, Y = data(seed, 6)
    Y = Y if kind == "cross_entropy" else Y.to(D)
    bg = data(seed + 1, 5)[0]
    res = xattr.sage(model, kind, X, Y, background=bg, n_background=n_bg, n_permutations=draws, convergence=None,
                     block_size=7, generator=seed)  # fmt: skip
    assert res.n_draws == draws
    # each draw's samples telescope to L_0 - L_F, so the mean values sum to the mean losses' gap
    assert res.values.sum().item() == pytest.approx(res.total, abs=1e-12)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["cross_entropy", "mse"]))
def test_exact_efficiency_and_dummy(seed, kind):
    model = mlp(seed, d_out=3 if kind == "cross_entropy" else 1)
    with torch.no_grad():
        model[0].weight[:, 2] = 0.0  # the model ignores feature 2
    X, Y = data(seed, 5)
    Y = Y if kind == "cross_entropy" else torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=D)
    bg = data(seed + 1, 3)[0]
    res = xattr.sage(model, kind, X, Y, background=bg, estimator="exact")
    # 0 up to rounding: the same rows may be summed in another order at another place of a batched call
    assert abs(res.values[2].item()) < 1e-14
    with torch.no_grad():
        out_full, out_bg = model(X), model(bg)
    if kind == "mse":
        l_full, l_empty = ((out_full[:, 0] - Y) ** 2).mean(), ((out_bg[:, 0].mean() - Y) ** 2).mean()
    else:
        l_full = nn.functional.cross_entropy(out_full, Y)
        l_empty = -torch.log(torch.softmax(out_bg, -1).mean(0)[Y]).mean()
    assert res.values.sum().item() == pytest.approx(float(l_empty - l_full), abs=1e-12)
    perm = xattr.sage(model, kind, X, Y, background=bg, n_permutations=20, convergence=None, generator=seed)
    assert abs(perm.values[2].item()) < 1e-14 and perm.std_errors[2].item() < 1e-14


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_exact_symmetry_of_interchangeable_features(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g, dtype=D)

    def model(x):  # features 0 and 1 enter only through their sum: interchangeable
        return (torch.tanh(w[0] * (x[:, 0] + x[:, 1]) + w[1] * x[:, 2]) + w[2] * x[:, 2] ** 2)[:, None]

    X = torch.randn(4, 3, generator=g, dtype=D)
    Y = torch.randn(4, generator=g, dtype=D)
    swap = X[:, [1, 0, 2]]
    X, Y = torch.cat([X, swap]), torch.cat([Y, Y])  # the data, and so its marginals, symmetric in 0 and 1
    bg = torch.randn(3, 3, generator=g, dtype=D)
    bg = torch.cat([bg, bg[:, [1, 0, 2]]])
    res = xattr.sage(model, "mse", X, Y, background=bg, estimator="exact")
    assert res.values[0].item() == pytest.approx(res.values[1].item(), abs=1e-12)
    assert abs(res.values[0].item() - res.values[2].item()) > 1e-6  # not symmetric with the other one


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), shift=st.floats(-2, 2))
def test_linear_model_with_squared_error_has_the_closed_form(seed, shift):
    """f(x) = w.x + b, Y = f(X) + shift, features independent and imputed from their own
    distribution. With mu_i = E X_i, f_S(x) - Y = -sum_{i not in S} w_i (x_i - mu_i) - shift, so
    L(S) = sum_{i not in S} w_i^2 Var(X_i) + shift^2 (the cross terms vanish by independence):
    v(S) = sum_{i in S} Var(w_i X_i) is additive and SAGE_i = Var(w_i X_i). On a product grid
    the empirical distribution is exactly independent, so this holds with the population
    variance of the grid's columns, to rounding."""
    g = torch.Generator().manual_seed(seed)
    levels = [torch.randn(k, generator=g, dtype=D) for k in (3, 2, 4)]
    X = torch.cartesian_prod(*levels)  # 24 rows, every combination once
    w, b = torch.randn(3, generator=g, dtype=D), float(torch.randn((), generator=g))
    lin = nn.Linear(3, 1).to(D).eval()
    with torch.no_grad():
        lin.weight.copy_(w[None])
        lin.bias.fill_(b)
    Y = X @ w + b + shift
    res = xattr.sage(lin, "mse", X, Y, background=X, estimator="exact")
    closed = (w**2) * torch.stack([lvl.var(unbiased=False) for lvl in levels])
    torch.testing.assert_close(res.values, closed, atol=1e-12, rtol=1e-9)
    assert res.loss_full == pytest.approx(shift**2, abs=1e-12)


def test_linear_closed_form_from_the_permutation_estimator_on_sampled_data():
    g = torch.Generator().manual_seed(11)
    sd = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=D)  # the last feature is constant: 0
    X = torch.randn(4000, 4, generator=g, dtype=D) * sd
    w = torch.tensor([0.5, -1.5, 2.0, 3.0], dtype=D)
    lin = nn.Linear(4, 1).to(D).eval()
    with torch.no_grad():
        lin.weight.copy_(w[None])
        lin.bias.zero_()
    Y = X @ w
    res = xattr.sage(lin, "mse", X, Y, background=X[:256], n_background=64, n_permutations=1500, convergence=None,
                     generator=1)  # fmt: skip
    closed = (w * sd) ** 2  # Var(w_i X_i) = 1, 2.25, 1, 0
    assert ((res.values - closed).abs() <= 4 * res.std_errors + 0.05 * closed).all(), (res.values, closed)
    assert res.values[3].item() == 0.0


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5))
def test_running_mean_and_variance_merged_by_blocks_match_numpy(seed, sizes):
    from xattr._src.sage_estimators import _merge

    g = torch.Generator().manual_seed(seed)
    samples = [torch.randn(k, 3, generator=g, dtype=D) * 10 + 1000 for k in sizes]
    count, mean, m2 = 0, torch.zeros(3, dtype=D), torch.zeros(3, dtype=D)
    for block in samples:
        count, mean, m2 = _merge(count, mean, m2, block)
    every = torch.cat(samples).numpy()
    assert count == every.shape[0]
    torch.testing.assert_close(mean, torch.tensor(every.mean(0)), atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(m2, torch.tensor(((every - every.mean(0)) ** 2).sum(0)), atol=1e-8, rtol=1e-9)


def test_determinism_blocks_and_chunks():
    model = mlp(12)
    X, Y = data(12, 10)
    bg = data(13, 6)[0]
    kw = dict(background=bg, n_background=4, n_permutations=50, convergence=None)
    a = xattr.sage(model, "cross_entropy", X, Y, generator=5, **kw)
    b = xattr.sage(model, "cross_entropy", X, Y, generator=5, block_size=13, chunk_size=9, **kw)
    torch.testing.assert_close(a.values, b.values, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.std_errors, b.std_errors, atol=1e-12, rtol=0)
    c = xattr.sage(model, "cross_entropy", X, Y, generator=6, **kw)
    assert not torch.allclose(a.values, c.values)
    state = torch.get_rng_state()
    xattr.sage(model, "cross_entropy", X, Y, generator=5, **kw)
    assert torch.equal(state, torch.get_rng_state())  # an int seed leaves the global generator alone
    torch.manual_seed(0)
    d = xattr.sage(model, "cross_entropy", X, Y, **kw)
    torch.manual_seed(0)
    e = xattr.sage(model, "cross_entropy", X, Y, **kw)
    assert torch.equal(d.values, e.values)
    gen = torch.Generator().manual_seed(3)
    f = xattr.sage(model, "cross_entropy", X, Y, generator=gen, **kw)
    g2 = xattr.sage(model, "cross_entropy", X, Y, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(f.values, g2.values)


def test_leaves_model_and_tensors_alone_and_reports():
    model = mlp(14)
    params = [p.clone() for p in model.parameters()]
    X, Y = data(14, 6)
    bg = data(15, 4)[0]
    X0, Y0, bg0 = X.clone(), Y.clone(), bg.clone()
    res = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=10, convergence=None, generator=0,
                     feature_names=["a", "b", "c", "d"])  # fmt: skip
    assert torch.equal(X, X0) and torch.equal(Y, Y0) and torch.equal(bg, bg0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params)) and not model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    d = json.loads(json.dumps(res.to_dict()))
    assert d["feature_names"] == ["a", "b", "c", "d"] and d["n_draws"] == 10 and len(d["values"]) == 4
    text = res.summary()
    assert all(name in text for name in "abcd") and "10 draws" in text
    assert text.splitlines()[2].split()[0] == res.feature_names[res.order()[0]]
    fig = res.plot(top=3)
    (ax,) = fig.axes
    top = res.order()[:3]
    assert [t.get_text() for t in ax.get_yticklabels()] == [res.feature_names[i] for i in top]
    assert [p.get_width() for p in ax.patches] == pytest.approx(res.values[top].tolist(), abs=1e-12)


def test_progress_bar_and_non_convergence_warning():
    model = mlp(16)
    X, Y = data(16, 6)
    bg = data(17, 4)[0]
    with pytest.warns(UserWarning, match="did not converge"):
        res = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_permutations=4, block_size=2,
                         convergence=1e-9, show_progress=True, generator=0)  # fmt: skip
    assert not res.converged and res.n_draws == 4
    ex = xattr.sage(model, "cross_entropy", X, Y, background=bg, estimator="exact", show_progress=True)
    assert ex.converged


def test_bad_arguments_are_refused():
    model = mlp(18)
    X, Y = data(18, 6)
    bg = data(19, 4)[0]

    def call(**kw):
        args = dict(loss="cross_entropy", X=X, Y=Y, background=bg)
        args.update(kw)
        return xattr.sage(model, args.pop("loss"), args.pop("X"), args.pop("Y"), **args)

    cases = [
        (dict(loss="hinge"), ValueError, "loss must be one of"),
        (dict(estimator="kernel"), ValueError, "estimator must be"),
        (dict(X=X.numpy()), TypeError, "X as a tensor"),
        (dict(Y=Y[:3]), ValueError, "same number"),
        (dict(background=bg[:, :3]), ValueError, "background must be rows"),
        (dict(n_background=5), ValueError, "more than the background"),
        (dict(n_background=0), ValueError, "n_background must be a positive int"),
        (dict(n_permutations=0), ValueError, "n_permutations"),
        (dict(block_size=1.5), ValueError, "block_size"),
        (dict(convergence=-0.1), ValueError, "convergence must be"),
        (dict(estimator="exact", n_background=2), ValueError, "leave n_background=None"),
        (dict(feature_mask=torch.zeros(6, 4, dtype=torch.long)), ValueError, "one example's shape"),
        (dict(feature_mask=torch.zeros(4)), TypeError, "integer"),
        (dict(feature_names=["a"]), ValueError, "feature_names"),
        (dict(Y=Y.to(D)), ValueError, "class ids"),
        (dict(loss=lambda out, y: out.mean()), ValueError, "one loss per example"),
        (dict(loss="mse"), ValueError, "number\\(s\\) per example"),
        (dict(generator="seed"), TypeError, "generator"),
        (dict(background=bg.long()), TypeError, "cannot stand in"),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            call(n_permutations=kw.pop("n_permutations", 4), convergence=kw.pop("convergence", None), **kw)
    wide = torch.randn(3, 13, dtype=D)
    with pytest.raises(ValueError, match="2\\^F coalitions"):
        xattr.sage(lambda x: x[:, :1], "mse", wide, torch.zeros(3, dtype=D), background=wide, estimator="exact")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_equals_cpu():
    model = mlp(20)
    X, Y = data(20, 8)
    bg = data(21, 4)[0]
    kw = dict(n_background=3, n_permutations=40, convergence=None, generator=2)
    cpu = xattr.sage(model, "cross_entropy", X, Y, background=bg, **kw)
    gpu = xattr.sage(model.cuda(), "cross_entropy", X.cuda(), Y.cuda(), background=bg.cuda(), **kw)
    torch.testing.assert_close(gpu.values, cpu.values, atol=1e-10, rtol=1e-8)
    exact_gpu = xattr.sage(model, "cross_entropy", X.cuda(), Y.cuda(), background=bg.cuda(), estimator="exact")
    exact_cpu = xattr.sage(model.cpu(), "cross_entropy", X, Y, background=bg, estimator="exact")
    torch.testing.assert_close(exact_gpu.values, exact_cpu.values, atol=1e-10, rtol=1e-8)
