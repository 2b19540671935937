"""bias_check against loops: permutation p-values with the same draws, subgroup rates, counterfactual
flips and interactions per example; seeds, untouched models and inputs, errors."""

import math

import pytest
import torch
from sklearn.metrics import mutual_info_score
from torch import nn

from xattr.metrics import bias_check
from xattr.metrics._mutual_info import permutations

D = torch.float64


def data(seed: int, n: int = 60, d: int = 5):
    """Column 0: a binary attribute, column 1: a three-valued one, the rest continuous."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    x[:, 0] = torch.randint(0, 2, (n,), generator=g).to(D)
    x[:, 1] = torch.randint(0, 3, (n,), generator=g).to(D) * 0.5 - 0.5
    labels = torch.randint(0, 2, (n,), generator=g)
    return x, labels


def mlp(seed: int, d: int = 5, out: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, out)).to(D).eval()


def probs_of(model, x):
    with torch.no_grad():
        out = model(x)
    return out.softmax(-1) if out.shape[-1] > 1 else torch.cat([1 - out.sigmoid(), out.sigmoid()], -1)


def test_p_values_match_a_loop_over_the_same_permutations():
    model = mlp(0)
    x, _ = data(0)
    shift = torch.tensor([-1.0, 1.0], dtype=D)

    def biased(v):  # the prediction depends on the attribute in column 0
        return model(v) + 2.0 * (v[:, :1] - 0.5) * shift

    sex, band = x[:, 0].long(), (x[:, 1] * 2 + 1).long()
    report = bias_check(biased, x, {"sex": sex, "band": band}, n_permutations=150, generator=3)
    pred = probs_of(biased, x).argmax(1)
    perms = torch.cat(list(permutations(150, len(x), 3)))
    assert perms.shape == (150, len(x)) and (perms.sort(1).values == torch.arange(len(x))).all()
    inter = [3 * a + b for a, b in zip(sex.tolist(), band.tolist())]
    for key, groups in [("sex", sex.tolist()), ("band", band.tolist()), ("sex x band", inter)]:
        observed = mutual_info_score(groups, pred.tolist())
        assert report.mi[key] == pytest.approx(observed, abs=1e-12)
        hits = 0
        for perm in perms:
            null = mutual_info_score(groups, pred[perm].tolist())
            hits += null >= observed - 1e-12 * max(1.0, observed)
        assert report.p_values[key] == pytest.approx((1 + hits) / 151)
    assert report.mi["sex"] > 0.05 and report.p_values["sex"] < 0.05  # the test can find a dependence


def test_seeds_give_the_same_report_and_draws_differ_between_seeds():
    model = mlp(1)
    x, labels = data(1)
    prot = {"a": x[:, 0].long()}
    r1 = bias_check(model, x, prot, labels=labels, n_permutations=60, generator=5)
    r2 = bias_check(model, x, prot, labels=labels, n_permutations=60, generator=5)
    assert r1.p_values == r2.p_values and r1.mi == r2.mi
    assert torch.equal(r1.groups["a"].pred_rate, r2.groups["a"].pred_rate)
    assert not torch.equal(torch.cat(list(permutations(60, 60, 5))), torch.cat(list(permutations(60, 60, 6))))
    r3 = bias_check(model, x, prot, n_permutations=60, generator=torch.Generator().manual_seed(5))
    r4 = bias_check(model, x, prot, n_permutations=60, generator=torch.Generator().manual_seed(5))
    assert r3.p_values == r4.p_values
    assert math.isnan(bias_check(model, x, prot, n_permutations=0).p_values["a"])


def test_subgroup_rates_match_a_loop():
    model = mlp(2, out=3)
    x, _ = data(2)
    labels = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(0))
    sex, band = x[:, 0].long(), (x[:, 1] * 2 + 1).long()
    report = bias_check(model, x, {"sex": sex, "band": band}, labels=labels, n_permutations=0)
    pred = probs_of(model, x).argmax(1).tolist()
    keys = list(zip(sex.tolist(), band.tolist()))
    combos = sorted(set(keys))
    stats = report.groups["sex x band"]
    assert stats.names == [f"sex={s}, band={b}" for s, b in combos]
    for g, combo in enumerate(combos):
        rows = [i for i, k in enumerate(keys) if k == combo]
        assert stats.size[g] == len(rows)
        for c in range(3):
            assert stats.pred_rate[g, c] == pytest.approx(sum(pred[i] == c for i in rows) / len(rows))
            assert stats.label_rate[g, c] == pytest.approx(sum(labels[i] == c for i in rows) / len(rows))
            pos = [i for i in rows if labels[i] == c]
            rec = sum(pred[i] == c for i in pos) / len(pos) if pos else math.nan
            assert (math.isnan(rec) and math.isnan(stats.recall[g, c])) or stats.recall[g, c] == pytest.approx(rec)
        assert stats.accuracy[g] == pytest.approx(sum(pred[i] == labels[i] for i in rows) / len(rows))
    # gaps: the largest spread over classes of the rates across groups
    dp = max(float(stats.pred_rate[:, c].max() - stats.pred_rate[:, c].min()) for c in range(3))
    assert stats.dp_gap == pytest.approx(dp)
    eo = max(float(r[~r.isnan()].max() - r[~r.isnan()].min()) for r in stats.recall.T)
    assert stats.eo_gap == pytest.approx(eo)
    assert stats.label_mi == pytest.approx(mutual_info_score([str(k) for k in keys], labels.tolist()))
    assert report.accuracy == pytest.approx(sum(p == t for p, t in zip(pred, labels.tolist())) / 60)


def test_binary_gap_is_the_positive_class():
    model = mlp(3)
    x, labels = data(3)
    stats = bias_check(model, x, {"a": x[:, 0].long()}, labels=labels, n_permutations=0).groups["a"]
    assert stats.dp_gap == pytest.approx(float((stats.pred_rate[0, 1] - stats.pred_rate[1, 1]).abs()))
    assert stats.eo_gap == pytest.approx(float((stats.recall[0, 1] - stats.recall[1, 1]).abs()))


def reference_counterfactual(model, x, cols):
    """Per example: every other observed combination of the columns, one model call per copy."""
    combos = sorted(set(tuple(r) for r in x[:, cols].tolist()))
    flips, changes, pairs_ = [], [], []
    for i in range(len(x)):
        p = probs_of(model, x[i : i + 1])[0]
        own = tuple(x[i, cols].tolist())
        for h, combo in enumerate(combos):
            if combo == own:
                continue
            xc = x[i].clone()
            xc[cols] = torch.tensor(combo, dtype=D)
            q = probs_of(model, xc[None])[0]
            flips.append(int(q.argmax() != p.argmax()))
            changes.append(0.5 * float((q - p).abs().sum()))
            pairs_.append((combos.index(own), h))
    return combos, flips, changes, pairs_


@pytest.mark.parametrize("out", [2, 1])
def test_counterfactual_flips_match_a_per_example_loop(out):
    model = mlp(4, out=out)
    with torch.no_grad():
        model[0].weight[:, :2] *= 4.0  # make the protected columns matter
    x, _ = data(4, n=40)
    report = bias_check(model, x, columns={"sex": 0, "band": 1}, n_permutations=0, chunk_size=7)
    cf = report.counterfactual
    combos, flips, changes, pairs_ = reference_counterfactual(model, x, [0, 1])
    assert cf.values.tolist() == [list(c) for c in combos]
    assert cf.flip_rate == pytest.approx(sum(flips) / len(flips))
    assert 0 < cf.flip_rate < 1
    assert cf.mean_change == pytest.approx(sum(changes) / len(changes))
    assert cf.max_change == pytest.approx(max(changes))
    for g in range(len(combos)):
        for h in range(len(combos)):
            own = [f for f, (s, t) in zip(flips, pairs_) if s == g and t == h]
            n_g = sum(1 for s, t in pairs_ if s == g) // (len(combos) - 1)
            assert cf.flip_matrix[g, h] == pytest.approx(sum(own) / n_g if g != h else 0.0)
    per_example = [flips[k : k + len(combos) - 1] for k in range(0, len(flips), len(combos) - 1)]
    assert cf.any_flip_rate == pytest.approx(sum(any(f) for f in per_example) / len(per_example))
    again = bias_check(model, x, columns={"sex": 0, "band": 1}, n_permutations=0, chunk_size=1000).counterfactual
    assert again.flip_rate == cf.flip_rate and torch.allclose(again.change_matrix, cf.change_matrix)
    # the groups read from the columns are the same as the values given
    given = bias_check(model, x, {"sex": x[:, 0].long()}, n_permutations=0)
    assert given.mi["sex"] == pytest.approx(report.mi["sex"], abs=1e-15)


def test_a_model_blind_to_the_columns_never_flips():
    torch.manual_seed(5)
    inner = nn.Linear(3, 2).to(D)
    x, _ = data(5)
    report = bias_check(lambda v: inner(v[:, 2:]), x, columns={"sex": 0, "band": 1}, interactions=True, n_permutations=0)
    assert report.counterfactual.flip_rate == 0.0 and report.counterfactual.max_change == 0.0
    assert report.interactions.strength.abs().max() < 1e-15
    assert report.interactions.main[:2].abs().max() == 0.0 and report.interactions.main[2:].min() > 0


def test_interactions_match_a_per_example_loop():
    model = mlp(6)
    x, _ = data(6, n=20)
    base = torch.linspace(-0.3, 0.3, 5, dtype=D)
    inter = bias_check(model, x, columns={"sex": 0}, interactions=True, baseline=base, n_permutations=0, chunk_size=9).interactions
    assert inter.others == [1, 2, 3, 4]

    def f(row, cls):
        return float(probs_of(model, row[None])[0, cls])

    for j_pos, j in enumerate(inter.others):
        total = 0.0
        for xi in x:
            cls = int(probs_of(model, xi[None]).argmax())
            xa, xb, xab = xi.clone(), xi.clone(), xi.clone()
            xa[0], xb[j], xab[[0, j]] = base[0], base[j], base[[0, j]]
            total += abs(f(xi, cls) - f(xa, cls) - f(xb, cls) + f(xab, cls))
        assert inter.strength[0, j_pos] == pytest.approx(total / len(x), rel=1e-9, abs=1e-12)
    assert inter.strength.min() > 0
    main = [sum(abs(f(xi, int(probs_of(model, xi[None]).argmax())) - f(torch.where(torch.arange(5) == k, base, xi),
                int(probs_of(model, xi[None]).argmax()))) for xi in x) / len(x) for k in range(5)]  # fmt: skip
    assert inter.main.tolist() == pytest.approx(main, rel=1e-9)
    default = bias_check(model, x, columns={"sex": 0}, interactions=True, n_permutations=0).interactions
    assert torch.allclose(default.baseline, x.mean(0))


def test_model_and_inputs_unchanged_and_no_hooks():
    model = mlp(7)
    model.train()  # no dropout or batch norm: no warning, and the mode must stay
    x, labels = data(7)
    prot = {"band": (x[:, 1] * 2 + 1).long()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x0, l0, p0 = x.clone(), labels.clone(), prot["band"].clone()
    report = bias_check(model, x, prot, labels=labels, columns={"sex": 0}, interactions=True, n_permutations=20, generator=0)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x0) and torch.equal(labels, l0) and torch.equal(prot["band"], p0)
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model.modules())
    text = report.summary()
    assert "band x sex" in text and "flip rate" in text and f"{report.mi['band']:.4f}" in text


def test_plot_has_the_panels():
    pytest.importorskip("matplotlib")
    model = mlp(8)
    x, labels = data(8)
    report = bias_check(model, x, labels=labels, columns={"sex": 0, "band": 1}, n_permutations=20, generator=1)
    fig = report.plot()
    assert len(fig.axes) == 4  # rates, MI, flip matrix and its colour bar
    assert len(fig.axes[1].patches) == 3  # one MI bar per grouping
    assert not hasattr(fig, "number")  # a plain Figure, not one pyplot keeps open


def test_errors():
    model = mlp(9)
    x, labels = data(9, n=10)
    sex = x[:, 0].long()
    with pytest.raises(ValueError, match="at least 2 examples"):
        bias_check(model, x[:1], {"sex": sex[:1]})
    with pytest.raises(ValueError, match="10 examples"):
        bias_check(model, x, {"sex": sex[:8]})
    with pytest.raises(ValueError, match="integer values"):
        bias_check(model, x, {"sex": x[:, 2]})
    with pytest.raises(ValueError, match="both in protected and in columns"):
        bias_check(model, x, {"sex": sex}, columns={"sex": 0})
    with pytest.raises(ValueError, match="distinct values"):
        bias_check(model, torch.randn(80, 5, dtype=D), columns={"age": 2})
    with pytest.raises(ValueError, match="class indices"):
        bias_check(model, x, {"sex": sex}, labels=labels + 2)
    with pytest.raises(ValueError, match="needs the protected attributes as input columns"):
        bias_check(model, x, {"sex": sex}, interactions=True)
    with pytest.raises(ValueError, match="at least one protected attribute"):
        bias_check(model, x)
    with pytest.raises(ValueError, match="outputs"):
        bias_check(model, x, {"sex": sex}, outputs="scores")
    with pytest.raises(ValueError, match="n_permutations"):
        bias_check(model, x, {"sex": sex}, n_permutations=-1)
    with pytest.raises(ValueError, match="different column"):
        bias_check(model, x, columns={"sex": 0, "other": -5})
    with pytest.raises(ValueError, match="1-D"):
        bias_check(model, x, {"sex": torch.stack([sex, sex], 1)})
    with pytest.raises(ValueError, match="column index"):
        bias_check(model, x, columns={"sex": 7})
    with pytest.raises(ValueError, match="baseline"):
        bias_check(model, x, columns={"sex": 0}, interactions=True, baseline=torch.zeros(3))
    with pytest.raises(TypeError, match="generator"):
        bias_check(model, x, {"sex": sex}, generator="seed")
