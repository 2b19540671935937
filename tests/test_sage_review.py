"""An adversarial review of `xattr.sage`: several outputs, label dtypes and ranges, data dtypes and
image shapes with groups, background sizes, randomness, convergence, bad models and losses,
non-finite data, the result's reports, torch.func models, and the bias of averaging the model
over ``n_background`` rows (the estimator's game against the exact one). Every value is checked
against loops written from the definition here, not against the library."""

import itertools
import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

D = torch.float64


def mlp(seed: int, d_in: int = 4, d_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 5), nn.Tanh(), nn.Linear(5, d_out)).to(D).eval()


def randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ----------------------------------------------------------------------------- the reference


def ce(outs, y):
    """-log of the true class's probability averaged over the imputed rows."""
    p = sum(torch.softmax(o.reshape(-1), 0) for o in outs) / len(outs)
    return -math.log(float(p[int(y)]))


def bce(outs, y):
    p = sum(float(torch.sigmoid(o.reshape(()))) for o in outs) / len(outs)
    t = float(y)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def mse(outs, y):
    mean = sum(outs) / len(outs)
    return float(((mean.reshape(-1).double() - y.reshape(-1).double()) ** 2).mean())


def imputed(x, b, ids, S):
    """One example x with the elements whose feature id is in S kept and the rest from b."""
    keep = torch.tensor([int(i) in S for i in ids.reshape(-1).tolist()]).reshape(ids.shape)
    return torch.where(keep.expand(x.shape), x, b)


def brute_losses(model, row_loss, X, Y, bg, ids, subsets=None):
    """L(S) for every coalition S of the ids held, one plain model call per imputed row; the
    background rows averaged are all of them, or (``subsets``) each subset in turn, the losses
    then averaged over the subsets (the game of averaging over m rows drawn without replacement)."""
    held = sorted(set(ids.reshape(-1).tolist()))
    subsets = subsets or [tuple(range(bg.shape[0]))]
    L = {}
    for r in range(len(held) + 1):
        for S in itertools.combinations(held, r):
            total = 0.0
            for n in range(X.shape[0]):
                with torch.no_grad():
                    outs = [model(imputed(X[n], bg[b], ids, set(S))[None])[0] for b in range(bg.shape[0])]
                total += sum(row_loss([outs[b] for b in sub], Y[n]) for sub in subsets) / len(subsets)
            L[S] = total / X.shape[0]
    return held, L


def shapley(held, L):
    phi = {}
    F = len(held)
    for i in held:
        others = [j for j in held if j != i]
        phi[i] = sum(math.factorial(r) * math.factorial(F - r - 1) / math.factorial(F) * (L[S] - L[tuple(sorted(S + (i,)))])
                     for r in range(F) for S in itertools.combinations(others, r))  # fmt: skip
    return phi


def brute(model, row_loss, X, Y, bg, ids, n_ids=None, subsets=None):
    held, L = brute_losses(model, row_loss, X, Y, bg, ids, subsets)
    phi = shapley(held, L)
    out = torch.zeros(n_ids or max(held) + 1, dtype=D)
    for i in held:
        out[i] = phi[i]
    return out, L[()], L[tuple(held)]


def caught(fn):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = fn()
    return res, [str(w.message) for w in got]


# ----------------------------------------------------------------------------- outputs and labels


def test_two_regression_targets_against_the_brute_force():
    model, X, bg = mlp(1, d_out=2), randn(1, 5, 4), randn(2, 3, 4)
    Y = randn(3, 5, 2)
    res = xattr.sage(model, "mse", X, Y, background=bg, estimator="exact")
    want, l0, l1 = brute(model, mse, X, Y, bg, torch.arange(4))
    torch.testing.assert_close(res.values, want, atol=1e-12, rtol=1e-10)
    assert res.loss_empty == pytest.approx(l0, abs=1e-12) and res.loss_full == pytest.approx(l1, abs=1e-12)
    # a (N, 1, 2) Y holds the same numbers per example: the same values
    same = xattr.sage(model, "mse", X, Y[:, None], background=bg, estimator="exact")
    torch.testing.assert_close(same.values, res.values, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match="2 number"):
        xattr.sage(model, "mse", X, Y[:, 0], background=bg, estimator="exact")


def test_one_logit_binary_cross_entropy_with_float_long_and_bool_labels():
    model, X, bg = mlp(2, d_out=1), randn(4, 6, 4), randn(5, 3, 4)
    Y = torch.tensor([1, 0, 0, 1, 1, 0])
    want, l0, _ = brute(model, bce, X, Y, bg, torch.arange(4))
    for labels in (Y.to(D), Y, Y.bool(), Y.to(D)[:, None]):
        res = xattr.sage(model, "binary_cross_entropy", X, labels, background=bg, estimator="exact")
        torch.testing.assert_close(res.values, want, atol=1e-12, rtol=1e-10)
    squeezed = mlp(2, d_out=1)
    one_dim = xattr.sage(lambda x: squeezed(x)[:, 0], "binary_cross_entropy", X, Y, background=bg, estimator="exact")
    torch.testing.assert_close(one_dim.values, want, atol=1e-12, rtol=1e-10)
    assert one_dim.loss_empty == pytest.approx(l0, abs=1e-12)
    # soft labels in [0, 1] are a cross-entropy too
    soft = torch.tensor([0.25, 0.5, 1.0, 0.0, 0.75, 0.1], dtype=D)
    torch.testing.assert_close(xattr.sage(model, "binary_cross_entropy", X, soft, background=bg, estimator="exact").values,
                               brute(model, bce, X, soft, bg, torch.arange(4))[0], atol=1e-12, rtol=1e-10)  # fmt: skip


def test_labels_a_loss_cannot_take_are_refused_in_the_users_terms():
    X, bg = randn(6, 6, 4), randn(7, 3, 4)
    one, three = mlp(3, d_out=1), mlp(3)
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    cases = [
        (one, "binary_cross_entropy", ids.to(D), "in \\[0, 1\\]"),  # was silently a "loss" of -2 log p ...
        (one, "binary_cross_entropy", -ids.to(D), "in \\[0, 1\\]"),
        (three, "cross_entropy", ids + 1, "class ids 0 .. 2"),  # was an IndexError from gather
        (three, "cross_entropy", ids - 1, "class ids 0 .. 2"),
        (three, "cross_entropy", ids[:, None], "\\(6,\\)"),  # the user's shape, not an internal (90, 1)
        (one, "cross_entropy", ids.clamp(max=1), "binary_cross_entropy"),  # one logit: says which loss to use
        (lambda x: one(x)[:, 0], "cross_entropy", ids.clamp(max=1), "binary_cross_entropy"),
        (three, "cross_entropy", ids.to(D), "integer"),
    ]
    for model, loss, Y, match in cases:
        for estimator in ("exact", "permutation"):
            with pytest.raises(ValueError, match=match):
                xattr.sage(model, loss, X, Y, background=bg, estimator=estimator, n_permutations=3, convergence=None, generator=0)
    ok = xattr.sage(three, "cross_entropy", X, ids.bool().long(), background=bg, estimator="exact")
    assert torch.isfinite(ok.values).all()


def test_a_callable_loss_gets_the_models_own_output_shape():
    lin = mlp(4, d_out=1)
    seen = []

    def squared(mean, y):
        seen.append(tuple(mean.shape))
        return (mean[:, 0] - y) ** 2  # written for the model's (B, 1) output

    X, bg, Y = randn(8, 5, 4), randn(9, 3, 4), randn(10, 5)
    res = xattr.sage(lin, squared, X, Y, background=bg, estimator="exact")
    assert all(len(s) == 2 and s[1] == 1 for s in seen), seen  # was (R,): the 1 dropped
    torch.testing.assert_close(res.values, brute(lin, mse, X, Y, bg, torch.arange(4))[0], atol=1e-12, rtol=1e-10)
    perm = xattr.sage(lin, squared, X, Y, background=bg, n_permutations=5, convergence=None, generator=0)
    assert perm.n_draws == 5 and abs(perm.values.sum().item() - perm.total) < 1e-12


def test_non_finite_data_and_losses_are_refused():
    model, X, bg = mlp(5, d_out=1), randn(11, 6, 4), randn(12, 3, 4)
    Y = randn(13, 6)
    bad = X.clone()
    bad[2, 1] = float("nan")
    yb = Y.clone()
    yb[0] = float("inf")
    for kw, match in [(dict(X=bad), "X holds 1 non-finite"), (dict(background=bad), "background holds 1 non-finite"),
                      (dict(Y=yb), "Y holds 1 non-finite")]:  # fmt: skip
        args = dict(X=X, Y=Y, background=bg)
        args.update(kw)
        for estimator in ("exact", "permutation"):
            with pytest.raises(ValueError, match=match):  # Y's NaN was silent: every value NaN
                xattr.sage(model, "mse", args["X"], args["Y"], background=args["background"], estimator=estimator,
                           n_permutations=40, generator=0)  # fmt: skip

    def log_loss(mean, y):  # infinite where the prediction is not positive
        return -torch.log(mean[:, 0].clamp(min=0)) + 0 * y

    with pytest.raises(FloatingPointError, match="the loss returned"):
        xattr.sage(lambda x: x[:, :1] - 10, log_loss, X, Y, background=bg, n_permutations=4, convergence=None, generator=0)
    with pytest.raises(FloatingPointError, match="non-finite"):  # the model's own NaN: the engine's check
        xattr.sage(lambda x: x[:, :1] / 0 * 0, "mse", X, Y, background=bg, estimator="exact")


# ----------------------------------------------------------------------------- data shapes and dtypes


def test_integer_bool_and_mixed_float_data():
    torch.manual_seed(14)
    emb = nn.Embedding(6, 3).to(D)

    def tokens(x):
        return emb(x).sum(1)

    g = torch.Generator().manual_seed(14)
    Xi, bgi, Y = torch.randint(0, 6, (4, 3), generator=g), torch.randint(0, 6, (3, 3), generator=g), torch.tensor([0, 2, 1, 2])
    res = xattr.sage(tokens, "cross_entropy", Xi, Y, background=bgi, estimator="exact")
    torch.testing.assert_close(res.values, brute(tokens, ce, Xi, Y, bgi, torch.arange(3))[0], atol=1e-12, rtol=1e-10)
    w = randn(15, 3, 2)

    def bools(x):
        return x.to(D) @ w

    Xb, bgb, Yb = Xi > 2, bgi > 2, randn(16, 4, 2)
    resb = xattr.sage(bools, "mse", Xb, Yb, background=bgb, estimator="exact")
    torch.testing.assert_close(resb.values, brute(bools, mse, Xb, Yb, bgb, torch.arange(3))[0], atol=1e-12, rtol=1e-10)
    with pytest.raises(TypeError, match="cannot stand in"):
        xattr.sage(tokens, "cross_entropy", Xi, Y, background=bgi.to(D), estimator="exact")
    # a float64 background for float32 data is cast to float32: the values of the cast rows
    m32 = mlp(17, d_out=1).float()
    X32, bg64, Y32 = randn(17, 5, 4).float(), randn(18, 3, 4), randn(19, 5).float()
    mixed = xattr.sage(m32, "mse", X32, Y32, background=bg64, estimator="exact")
    cast = xattr.sage(m32, "mse", X32, Y32, background=bg64.float(), estimator="exact")
    assert torch.equal(mixed.values, cast.values) and mixed.values.dtype == D


def test_images_with_group_masks():
    torch.manual_seed(20)
    conv = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(D).eval()
    X, bg = randn(20, 3, 2, 4, 4), randn(21, 2, 2, 4, 4)
    Y = torch.tensor([0, 2, 1])
    quad = torch.arange(4)[:, None] // 2 * 2 + torch.arange(4)[None, :] // 2  # four 2x2 quadrants, both channels
    res = xattr.sage(conv, "cross_entropy", X, Y, background=bg, feature_mask=quad, estimator="exact")
    torch.testing.assert_close(res.values, brute(conv, ce, X, Y, bg, quad.expand(2, 4, 4))[0], atol=1e-12, rtol=1e-10)
    for mask in (quad.expand(2, 4, 4), quad.expand(1, 2, 4, 4), quad[None]):
        same = xattr.sage(conv, "cross_entropy", X, Y, background=bg, feature_mask=mask, estimator="exact")
        torch.testing.assert_close(same.values, res.values, atol=1e-13, rtol=0)
    chan = torch.tensor([0, 1])[:, None, None]  # the channels as two features
    by_channel = xattr.sage(conv, "cross_entropy", X, Y, background=bg, feature_mask=chan, n_permutations=64,
                            convergence=None, generator=0)  # fmt: skip
    assert by_channel.values.shape == (2,) and abs(by_channel.values.sum().item() - by_channel.total) < 1e-12
    # a 3-d input (N, H, W): a mask of (H, W)
    flat = xattr.sage(lambda x: conv(x[:, None].expand(-1, 2, -1, -1)), "cross_entropy", X[:, 0], Y, background=bg[:, 0],
                      feature_mask=quad, estimator="exact")  # fmt: skip
    want = brute(lambda x: conv(x[:, None].expand(-1, 2, -1, -1)), ce, X[:, 0], Y, bg[:, 0], quad)[0]
    torch.testing.assert_close(flat.values, want, atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="one example's shape \\(2, 4, 4\\)") as err:  # said "or one mask per example"
        xattr.sage(conv, "cross_entropy", X, Y, background=bg, feature_mask=torch.zeros(3, 3, dtype=torch.long))
    assert "per example" not in str(err.value)


def test_background_sizes_and_n_background():
    model, X, Y = mlp(22), randn(22, 3, 4), torch.tensor([1, 0, 2])
    bg = randn(23, 7, 4)  # more rows than X
    res = xattr.sage(model, "cross_entropy", X, Y, background=bg, estimator="exact")
    torch.testing.assert_close(res.values, brute(model, ce, X, Y, bg, torch.arange(4))[0], atol=1e-12, rtol=1e-10)
    kw = dict(n_permutations=30, convergence=None, generator=4)
    every = xattr.sage(model, "cross_entropy", X, Y, background=bg, **kw)
    all_rows = xattr.sage(model, "cross_entropy", X, Y, background=bg, n_background=7, **kw)  # the rows in another order
    torch.testing.assert_close(all_rows.values, every.values, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="n_background=8 is more than the background's 7 rows"):
        xattr.sage(model, "cross_entropy", X, Y, background=bg, n_background=8, **kw)
    one = xattr.sage(model, "cross_entropy", X, Y, background=bg[:1], estimator="exact")  # a single background row
    torch.testing.assert_close(one.values, brute(model, ce, X, Y, bg[:1], torch.arange(4))[0], atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------- randomness


def test_int_seeds_and_generators():
    model, X, Y, bg = mlp(24), randn(24, 10, 4), torch.arange(10) % 3, randn(25, 6, 4)
    kw = dict(background=bg, n_background=3, n_permutations=40, convergence=None)
    a, b = (xattr.sage(model, "cross_entropy", X, Y, generator=7, **kw) for _ in range(2))
    assert torch.equal(a.values, b.values) and torch.equal(a.std_errors, b.std_errors)
    assert not torch.allclose(xattr.sage(model, "cross_entropy", X, Y, generator=8, **kw).values, a.values)
    gen = torch.Generator().manual_seed(7)
    c = xattr.sage(model, "cross_entropy", X, Y, generator=gen, **kw)
    d = xattr.sage(model, "cross_entropy", X, Y, generator=gen, **kw)  # the generator moved on: other draws
    assert not torch.allclose(c.values, d.values)
    e = xattr.sage(model, "cross_entropy", X, Y, generator=torch.Generator().manual_seed(7), block_size=3, **kw)
    torch.testing.assert_close(e.values, c.values, atol=1e-12, rtol=0)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(block=st.integers(1, 50), chunk=st.sampled_from([None, 1, 7, 100]), budget=st.sampled_from([None, 1, 10**4]),
       n_bg=st.sampled_from([None, 2]))  # fmt: skip
def test_the_draws_do_not_depend_on_block_chunk_or_memory(block, chunk, budget, n_bg):
    model, X, Y, bg = mlp(26), randn(26, 8, 4), torch.arange(8) % 3, randn(27, 4, 4)
    kw = dict(background=bg, n_background=n_bg, n_permutations=23, convergence=None, generator=9)
    ref = xattr.sage(model, "cross_entropy", X, Y, **kw)
    got = xattr.sage(model, "cross_entropy", X, Y, block_size=block, chunk_size=chunk, memory_budget=budget, **kw)
    torch.testing.assert_close(got.values, ref.values, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.std_errors, ref.std_errors, atol=1e-12, rtol=0)
    assert got.loss_empty == pytest.approx(ref.loss_empty, abs=1e-12) and got.n_draws == 23


# ----------------------------------------------------------------------------- convergence


def linear_problem(w, n=60, seed=28):
    X = randn(seed, n, len(w))
    w = torch.tensor(w, dtype=D)
    return (lambda x: (x @ w)[:, None]), X, X @ w


def test_convergence_on_an_easy_and_a_hard_problem():
    f, X, Y = linear_problem([2.0, 0.5, 0.0])
    exact = xattr.sage(f, "mse", X, Y, background=X[:16], estimator="exact")
    easy, warned = caught(lambda: xattr.sage(f, "mse", X, Y, background=X[:16], n_permutations=4096, generator=0))
    assert easy.converged and not warned and easy.n_draws < 4096 and easy.ratio < 0.05
    assert ((easy.values - exact.values).abs() <= 4 * easy.std_errors + 1e-12).all()
    # two features of the same value: the spread of the values goes to 0 faster than the errors
    f, X, Y = linear_problem([1.0, -1.0])
    hard, warned = caught(lambda: xattr.sage(f, "mse", X, Y, background=X[:16], n_permutations=256, generator=0))
    assert not hard.converged and hard.n_draws == 256 and len(warned) == 1 and "did not converge" in warned[0]
    assert f"{hard.ratio:.3g}" in warned[0]


def test_one_feature_converges():
    # the spread of one value is 0: the criterion compared the error with 0 and never stopped
    f, X, Y = linear_problem([1.0, 2.0])
    one, warned = caught(lambda: xattr.sage(f, "mse", X, Y, background=X[:8], feature_mask=torch.tensor([0, 0]),
                                            n_permutations=2048, generator=0))  # fmt: skip
    assert one.converged and not warned and one.n_draws < 2048 and math.isfinite(one.ratio)
    assert one.values.item() == pytest.approx(one.total, abs=1e-12)
    assert one.std_errors.item() < 0.05 * abs(one.values.item())


def test_too_few_draws_for_the_criterion_says_so():
    f, X, Y = linear_problem([3.0, 0.1, 0.0])
    res, warned = caught(lambda: xattr.sage(f, "mse", X, Y, background=X[:8], n_permutations=20, generator=0))
    assert not res.converged and len(warned) == 1
    assert "from 32 draws on" in warned[0] and "n_permutations=20" in warned[0]


# ----------------------------------------------------------------------------- models and arguments


def test_models_in_train_mode_and_models_of_several_outputs():
    torch.manual_seed(30)
    drop = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).to(D).train()
    X, Y, bg = randn(30, 5, 4), torch.tensor([0, 1, 2, 0, 1]), randn(31, 3, 4)
    with pytest.warns(UserWarning, match="train mode"):
        xattr.sage(drop, "cross_entropy", X, Y, background=bg, n_permutations=4, convergence=None, generator=0)
    assert drop.training  # the mode left as it was
    model = mlp(32)
    for bad, name in ((lambda x: (model(x), x), "tuple"), (lambda x: {"logits": model(x)}, "dict")):
        with pytest.raises(TypeError, match=f"must return a tensor, got {name}"):
            xattr.sage(bad, "cross_entropy", X, Y, background=bg, n_permutations=4, convergence=None)


def test_argument_errors_of_the_review():
    model, X, Y, bg = mlp(33, d_out=1), randn(33, 5, 4), randn(34, 5), randn(35, 3, 4)
    with pytest.raises(ValueError, match="one loss per example"):
        xattr.sage(model, lambda m, y: ((m[:, 0] - y) ** 2).mean(), X, Y, background=bg, n_permutations=4)
    with pytest.raises(ValueError, match="3 feature_names for 4"):
        xattr.sage(model, "mse", X, Y, background=bg, feature_names=["a", "b", "c"], n_permutations=4)
    with pytest.raises(TypeError, match="feature_names"):  # a string was split into one name per letter
        xattr.sage(model, "mse", X, Y, background=bg, feature_names="abcd", n_permutations=4)
    wide = randn(36, 3, 13)
    with pytest.raises(ValueError, match="F=13 is more than 12") as err:
        xattr.sage(lambda x: x[:, :1], "mse", wide, randn(37, 3), background=wide, estimator="exact")
    assert "feature_mask" in str(err.value) and "permutation" in str(err.value)
    groups = torch.arange(13) // 2  # 7 groups: exact is fine
    grouped = xattr.sage(lambda x: x[:, :1], "mse", wide, randn(37, 3), background=wide, feature_mask=groups, estimator="exact")
    assert grouped.values.shape == (7,) and grouped.values[1:].abs().max() == 0


def test_models_made_with_torch_func():
    model, X, Y, bg = mlp(38), randn(38, 5, 4), torch.tensor([0, 1, 2, 0, 1]), randn(39, 3, 4)
    params = {k: v.detach() * 1.5 for k, v in model.named_parameters()}

    def functional(x):  # the module with other weights, not modified
        return torch.func.functional_call(model, params, (x,))

    res = xattr.sage(functional, "cross_entropy", X, Y, background=bg, estimator="exact")
    torch.testing.assert_close(res.values, brute(functional, ce, X, Y, bg, torch.arange(4))[0], atol=1e-12, rtol=1e-10)
    per_row = torch.func.vmap(lambda row: model(row[None])[0])  # a model written for one row, vmapped
    vm = xattr.sage(per_row, "cross_entropy", X, Y, background=bg, estimator="exact")
    torch.testing.assert_close(vm.values, brute(model, ce, X, Y, bg, torch.arange(4))[0], atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------- the result


def test_reports_plot_json_and_summary(tmp_path):
    f, X, Y = linear_problem([float(k) for k in range(15)], n=20)
    names = [f"feature number {k}" for k in range(15)]
    res = xattr.sage(f, "mse", X, Y, background=X[:4], feature_names=names, n_permutations=40, convergence=None, generator=0)
    fig = res.plot(top=5, path=tmp_path / "sub" / "sage.png", title="t")
    assert (tmp_path / "sub" / "sage.png").stat().st_size > 1000
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [names[i] for i in res.order()[:5]]
    assert len(ax.patches) == 5 and ax.get_title() == "t"
    assert len(res.plot().axes[0].patches) == 15
    text = res.summary(top=3)
    lines = text.splitlines()
    assert len(lines) == 5 and lines[2].startswith(names[res.order()[0]]) and "40 draws" in lines[0]
    share = float(lines[2].split()[-1].rstrip("%")) / 100
    assert share == pytest.approx(float(res.values[res.order()[0]]) / res.total, abs=1e-3)
    for bad in (0, -1, 1.5):  # top=-1 dropped the last feature silently
        with pytest.raises(ValueError, match="top"):
            res.summary(top=bad)
    # one draw: infinite standard errors, which strict JSON has no number for
    one = xattr.sage(f, "mse", X, Y, background=X[:4], n_permutations=1, convergence=None, generator=0)
    d = json.loads(json.dumps(one.to_dict(), allow_nan=False))
    assert d["std_errors"] == [None] * 15 and d["ratio"] is None and d["values"] == one.values.tolist()
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["std_errors"] == res.std_errors.tolist()
    assert "inf" in one.summary()


# ----------------------------------------------------------------------------- the definition


def test_sign_efficiency_and_the_loss_of_the_averaged_probabilities():
    X = randn(40, 6, 3)
    Y = (X[:, 0] > 0).long()
    w = torch.tensor([[-4.0, 4.0], [0.0, 0.0], [0.0, 0.0]], dtype=D)  # reads feature 0 alone, and well

    def f(x):
        return x @ w

    res = xattr.sage(f, "cross_entropy", X, Y, background=X, estimator="exact")
    assert res.values[0] > 0 and res.values[1:].abs().max() < 1e-14  # the useful feature lowers the loss: positive
    p_mean = torch.softmax(f(X), 1).mean(0)
    l_empty = -torch.log(p_mean[Y]).mean().item()  # the loss of the mean probabilities
    l_full = nn.functional.cross_entropy(f(X), Y).item()
    assert res.loss_empty == pytest.approx(l_empty, abs=1e-12) and res.loss_full == pytest.approx(l_full, abs=1e-12)
    assert res.values.sum().item() == pytest.approx(l_empty - l_full, abs=1e-12)
    logit_mean = nn.functional.cross_entropy(f(X).mean(0).expand(6, -1), Y).item()  # averaged logits instead
    assert abs(logit_mean - l_empty) > 1e-3


# ----------------------------------------------------------------------------- inner samples


def spread_mse(c):
    """Squared error of the mean plus c times the variance over the rows: for a model returning
    (f, f^2), the expected squared error of the mean of m rows drawn without replacement from M,
    c = (M - m) / (m (M - 1))."""

    def loss(mean, y):
        return (mean[:, 0] - y) ** 2 + c * (mean[:, 1] - mean[:, 0] ** 2)

    return loss


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), m=st.sampled_from([1, 2, 3]))
def test_n_background_rows_estimate_the_m_row_game(seed, m):
    """With n_background = m the estimator's game averages the model over m background rows:
    L_m(S) is the loss of that average, itself averaged over the m-row subsets. Its values are not
    those of the game over all M rows; for the squared error the gap of the total is
    Var(f over the background) (M - m) / (m (M - 1)) (the variance of a mean drawn without
    replacement), which the per-draw empty coalition puts into the total."""
    model, X, bg = mlp(seed, d_in=3, d_out=1), randn(seed, 4, 3), randn(seed + 1, 4, 3)
    Y = randn(seed + 2, 4)
    M = bg.shape[0]
    subsets = list(itertools.combinations(range(M), m))
    game_m, l0_m, l1_m = brute(model, mse, X, Y, bg, torch.arange(3), subsets=subsets)
    game, l0, l1 = brute(model, mse, X, Y, bg, torch.arange(3))
    with torch.no_grad():
        var = model(bg)[:, 0].var(unbiased=False).item()
    assert l1_m == pytest.approx(l1, abs=1e-12)
    assert l0_m - l0 == pytest.approx(var * (M - m) / (m * (M - 1)), abs=1e-12)

    def both(x):
        out = model(x)
        return torch.cat([out, out**2], 1)

    # the docs' way to get the m-row game exactly: the exact estimator with this loss
    trick = xattr.sage(both, spread_mse((M - m) / (m * (M - 1))), X, Y, background=bg, estimator="exact")
    torch.testing.assert_close(trick.values, game_m, atol=1e-12, rtol=1e-10)
    est = xattr.sage(model, "mse", X, Y, background=bg, n_background=m, n_permutations=1500, convergence=None,
                     generator=seed)  # fmt: skip
    assert ((est.values - game_m).abs() <= 4.5 * est.std_errors + 1e-12).all(), (est.values, game_m, est.std_errors)
    # the m-row game's total exceeds the full game's by that gap (0 for m = M)
    assert game_m.sum().item() - game.sum().item() == pytest.approx(var * (M - m) / (m * (M - 1)), abs=1e-12)


# ----------------------------------------------------------------------------- the chains' rows


@pytest.mark.parametrize("n_bg", [None, 3])
def test_the_empty_coalition_is_evaluated_once_and_matches_the_per_example_path(n_bg):
    # without a per-example argument f(background) is computed once (M rows) and each draw costs
    # (F - 1) m + 1 rows; with one (ignored here) every draw costs F m + 1: the same values
    model, X, Y, bg = mlp(40), randn(40, 9, 4), torch.arange(9) % 3, randn(41, 5, 4)
    seen = []

    def counted(x, *extra):
        seen.append(x.shape[0])
        return model(x)

    kw = dict(background=bg, n_background=n_bg, n_permutations=17, convergence=None, generator=11, block_size=5)
    plain = xattr.sage(counted, "cross_entropy", X, Y, **kw)
    m = 5 if n_bg is None else n_bg
    assert sum(seen) == 5 + 17 * (3 * m + 1)
    seen.clear()
    extra = xattr.sage(counted, "cross_entropy", X, Y, extra_args=(torch.zeros(9, 2),), **kw)
    assert sum(seen) == 17 * (4 * m + 1)
    torch.testing.assert_close(extra.values, plain.values, atol=1e-12, rtol=0)
    torch.testing.assert_close(extra.std_errors, plain.std_errors, atol=1e-12, rtol=0)
    assert extra.loss_empty == pytest.approx(plain.loss_empty, abs=1e-12)
