"""Per-token attribution statistics (xattr/_src/token_stats.py, token_pass.py), their explorer
view (xattr/insights/_tokens.py) and plot (xattr/viz/tokens.py).

The reference is written out here: explicit Python loops over examples and positions collect
each (group, token id)'s attributions in lists, and numpy gives their mean and sample variance.
The streamed pass is checked against one attribution call per example; shards, batch splits
and merge orders against one pass; the page's token lists against the same loops on the page's
own stored per-token values.
"""

import functools
import json
import shutil
import subprocess
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import xattr
from test_insights import parse

PAD = 0
FILLER = ["the", "a", "movie", "film", "was", "is", "and", "plot", "actor", "story", "very", "of", "it", "this"]
WORDS = ["<pad>"] + FILLER + ["great", "awful"]
GREAT, AWFUL = WORDS.index("great"), WORDS.index("awful")


def corpus(n: int, seed: int, length: int = 10):
    """Filler words of random length, then padding; class 1 carries "great", class 0 "awful"."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    ids = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        size = int(torch.randint(4, length + 1, (1,), generator=g))
        ids[i, :size] = torch.randint(1, len(FILLER) + 1, (size,), generator=g)
        ids[i, int(torch.randint(0, size, (1,), generator=g))] = GREAT if y[i] == 1 else AWFUL
    return ids, y


class Bag(nn.Module):
    """Mean of the non-padding tokens' embeddings, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.embedding, self.out = nn.Embedding(len(WORDS), 6), nn.Linear(6, 2)

    def forward(self, ids):
        m = (ids != PAD).unsqueeze(-1).to(self.embedding.weight.dtype)
        return self.out(torch.tanh((self.embedding(ids) * m).sum(1) / m.sum(1).clamp_min(1)))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Bag()
    ids, y = corpus(300, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids), y).backward()
        opt.step()
    return model.eval()


def reference(ids, attr, groups, *, mask=None, pad=(), reduce="sum"):
    """{(group, id): [attributions]} and {(group, id): {examples}} by loops; attr (B, T[, D])."""
    values, holders = defaultdict(list), defaultdict(set)
    for i in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            v = int(ids[i, t])
            if v in pad or (mask is not None and not mask[i, t]):
                continue
            a = attr[i, t]
            a = a.double()
            a = float(a) if a.ndim == 0 else float(a.sum() if reduce == "sum" else (a**2).sum().sqrt())
            key = ("all" if groups is None else int(groups[i]), v)
            values[key].append(a)
            holders[key].add(i)
    return values, holders


def check(stats, values, holders, n_groups_examples):
    seen = set()
    for (key, v), vals in values.items():
        g = stats.index(key)
        seen.add((g, v))
        assert int(stats.count[g, v]) == len(vals) and int(stats.example_count[g, v]) == len(holders[key, v])
        np.testing.assert_allclose(float(stats.mean[g, v]), np.mean(vals), rtol=1e-12, atol=1e-12)
        if len(vals) > 1:
            np.testing.assert_allclose(float(stats.variance[g, v]), np.var(vals, ddof=1), rtol=1e-9, atol=1e-12)
        else:
            assert torch.isnan(stats.variance[g, v])
    for g in range(len(stats.groups)):  # every other pair: never seen
        for v in range(stats.vocab_size):
            if (g, v) not in seen:
                assert stats.count[g, v] == 0 and stats.mean[g, v] == 0 and stats.m2[g, v] == 0
    assert stats.n_examples.tolist() == n_groups_examples


def random_batch(seed, n=7, length=6, vocab=9, groups=3, dim=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    shape = (n, length) if dim is None else (n, length, dim)
    return ids, torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1, torch.randint(0, groups, (n,), generator=g)


@pytest.mark.parametrize("dim,reduce", [(None, "sum"), (4, "sum"), (4, "norm")])
def test_matches_loop_reference(dim, reduce):
    ids, attr, y = random_batch(0, n=12, dim=dim)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(5)) > 0.2
    stats = xattr.TokenStatistics.from_attributions(ids, attr, y, mask=mask, pad_id=[0, 3], reduce=reduce)
    values, holders = reference(ids, attr, y, mask=mask, pad=(0, 3), reduce=reduce)
    check(stats, values, holders, [int((y == k).sum()) for k in stats.groups])
    assert stats.groups == tuple(sorted(set(y.tolist()))) and stats.reduce == reduce
    assert stats.count[:, [0, 3]].sum() == 0 and stats.n_tokens == sum(len(v) for v in values.values())


def test_streamed_pass_matches_one_call_per_example(trained):
    ids, y = corpus(23, 7)
    method = functools.partial(xattr.feature_ablation, baselines=PAD)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, y), batch_size=5)
    stats = xattr.token_statistics(method, trained, loader, pad_id=PAD, vocab=WORDS)
    # the slow way: each example alone, explaining its label
    rows = [method(xattr.target(trained, int(y[i])))(ids[i : i + 1])[0] for i in range(len(ids))]
    values, holders = reference(ids, torch.stack(rows), y, pad=(PAD,))
    check(stats, values, holders, [int((y == 0).sum()), int((y == 1).sum())])
    # by prediction, explaining the prediction
    with torch.no_grad():
        pred = trained(ids).argmax(1)
    by_pred = xattr.token_statistics(method, trained, ids, by="prediction", pad_id=PAD, batch_size=4)
    rows = [method(xattr.target(trained, int(pred[i])))(ids[i : i + 1])[0] for i in range(len(ids))]
    values, holders = reference(ids, torch.stack(rows), pred, pad=(PAD,))
    check(by_pred, values, holders, [int((pred == k).sum()) for k in by_pred.groups])
    assert by_pred.by == "prediction" and by_pred.vocab is None and by_pred.token(GREAT) == f"[{GREAT}]"


def test_embedding_attributions_are_summed_over_d(trained):
    ids, y = corpus(10, 3)
    lig = lambda f: xattr.layer_integrated_gradients(xattr.at_layer(f, trained.embedding), baselines=PAD, n_steps=8)  # noqa: E731
    stats = xattr.token_statistics(lig, trained, ids, labels=y, pad_id=PAD)
    attr = lig(xattr.target(trained, y))(ids)
    assert attr.shape == (10, 10, 6)
    values, holders = reference(ids, attr, y, pad=(PAD,))  # each token's D values summed in the loop
    check(stats, values, holders, [int((y == 0).sum()), int((y == 1).sum())])


def test_shards_and_batch_splits_equal_one_pass():
    ids, attr, y = random_batch(1, n=30, vocab=12)
    whole = xattr.TokenStatistics.from_attributions(ids, attr, y, pad_id=0)
    for cuts in ([10, 20], [1, 2, 29], [15]):
        parts = [xattr.TokenStatistics.from_attributions(ids[a:b], attr[a:b], y[a:b], pad_id=0)
                 for a, b in zip([0, *cuts], [*cuts, 30])]  # fmt: skip
        merged = functools.reduce(lambda s, t: s.merge(t), parts)
        backwards = functools.reduce(lambda s, t: t.merge(s), parts[::-1])
        for m in (merged, backwards):
            assert m.groups == whole.groups and torch.equal(m.count, whole.count) and torch.equal(m.example_count, whole.example_count)
            torch.testing.assert_close(m.mean, whole.mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.m2, whole.m2, rtol=1e-10, atol=1e-10)


def test_merge_aligns_groups_and_vocab_sizes():
    a = xattr.TokenStatistics.from_attributions(torch.tensor([[1, 2]]), torch.tensor([[1.0, 2.0]]), torch.tensor([0]))
    b = xattr.TokenStatistics.from_attributions(torch.tensor([[5, 1]]), torch.tensor([[3.0, 5.0]]), torch.tensor([2]))
    assert a.vocab_size == 3 and b.vocab_size == 6
    m = a.merge(b)
    assert m.groups == (0, 2) and m.vocab_size == 6 and m.n_examples.tolist() == [1, 1]
    assert m.count.tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1]]
    assert m.mean.tolist() == [[0, 1, 2, 0, 0, 0], [0, 5, 0, 0, 0, 3]]
    every = m.overall()
    assert every.groups == ("all",) and every.count[0, 1] == 2 and every.mean[0, 1] == 3.0 and every.variance[0, 1] == 8.0


def test_padding_is_excluded_and_never_read():
    ids, attr, y = random_batch(2, n=9, vocab=6)
    ids[:, -2:] = PAD
    stats = xattr.TokenStatistics.from_attributions(ids, attr, y, pad_id=PAD)
    changed = attr.clone()
    changed[ids == PAD] = 1e6  # whatever the padding's attribution, it is not counted
    again = xattr.TokenStatistics.from_attributions(ids, changed, y, pad_id=PAD)
    assert stats.count[:, PAD].sum() == 0 and torch.equal(stats.mean, again.mean) and torch.equal(stats.m2, again.m2)
    as_mask = xattr.TokenStatistics.from_attributions(ids, changed, y, mask=(ids != PAD).long())  # the attention-mask way
    assert torch.equal(as_mask.count, stats.count) and torch.equal(as_mask.mean, stats.mean)
    values, holders = reference(ids, attr, y, pad=(PAD,))
    check(stats, values, holders, [int((y == k).sum()) for k in stats.groups])


def test_per_class_split_adds_up_to_the_whole():
    ids, attr, y = random_batch(3, n=25, vocab=8, groups=4)
    per_class = xattr.TokenStatistics.from_attributions(ids, attr, y)
    pooled = xattr.TokenStatistics.from_attributions(ids, attr, None, by=None)
    every = per_class.overall()
    assert pooled.groups == ("all",) and torch.equal(every.count, pooled.count)
    torch.testing.assert_close(every.mean, pooled.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(every.m2, pooled.m2, rtol=1e-10, atol=1e-10)
    assert torch.equal(per_class.count.sum(0), pooled.count[0]) and per_class.n == pooled.n == 25
    for k in per_class.groups:  # each class's row only sees that class's examples
        alone = xattr.TokenStatistics.from_attributions(ids[y == k], attr[y == k], y[y == k])
        row = per_class.index(k)
        assert torch.equal(alone.count[0], per_class.count[row, : alone.vocab_size])


def brute_top(stats, key, k, min_count, largest):
    g = stats.index(key)
    rows = [(float(stats.mean[g, v]), v) for v in range(stats.vocab_size) if int(stats.count[g, v]) >= min_count]
    rows.sort(key=lambda r: ((-r[0] if largest else r[0]), r[1]))
    return [v for _, v in rows[:k]]


def test_top_k_with_min_count():
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 0], [1, 2, 5, 0]])
    attr = torch.tensor([[1.0, 2.0, -1.0, 50.0], [1.0, 2.0, -3.0, 0.0], [1.0, 2.0, -9.0, 0.0]])
    stats = xattr.TokenStatistics.from_attributions(ids, attr, None, pad_id=0, vocab=["<pad>", "a", "b", "c", "rare", "odd"], by=None)
    top = stats.top("all", 2, min_count=2)
    assert [r.token for r in top] == ["b", "a"] and top[0].count == 3 and top[0].examples == 3 and top[0].se == 0.0
    assert [r.token for r in stats.top("all", 5, min_count=1)] == ["rare", "b", "a", "c", "odd"]  # one 50: rare wins
    low = stats.top("all", 1, min_count=2, largest=False)[0]
    assert low.token == "c" and low.mean == -2.0 and low.se == pytest.approx(np.std([-1, -3], ddof=1) / np.sqrt(2))
    assert stats.top("all", 3, min_count=4) == []
    ids, attr, y = random_batch(4, n=40, vocab=15, groups=2)
    attr = attr.round()  # ties: the lower id first
    stats = xattr.TokenStatistics.from_attributions(ids, attr, y)
    for key in stats.groups:
        for k, mc, largest in [(3, 1, True), (5, 6, False), (20, 9, True)]:
            assert [r.id for r in stats.top(key, k, min_count=mc, largest=largest)] == brute_top(stats, key, k, mc, largest)


def test_frequency_view_summary_and_repr():
    ids, attr, y = random_batch(6, n=20, vocab=7, groups=2)
    stats = xattr.TokenStatistics.from_attributions(ids, attr, y, vocab={f"w{i}": i for i in range(7)})
    view = stats.frequency_vs_mean(1)
    g = stats.index(1)
    want = sorted((v for v in range(7) if stats.count[g, v] > 0), key=lambda v: (-int(stats.count[g, v]), v))
    assert view.ids.tolist() == want and view.count.tolist() == [int(stats.count[g, v]) for v in want]
    assert view.mean.tolist() == [float(stats.mean[g, v]) for v in want]
    assert stats.frequency_vs_mean("all").count.sum() == stats.n_tokens
    text = repr(stats)
    assert text.startswith("TokenStatistics(by='label', groups=(0, 1)") and f"tokens={stats.n_tokens}" in text and "tensor" not in text
    best = stats.top(0, 1, min_count=1)[0]
    assert f"'{best.token}' {best.mean:+.3g}" in stats.summary(k=2, min_count=1) and best.token.startswith("w")


class Tokenizer:
    def __len__(self):
        return 4

    def convert_ids_to_tokens(self, ids):
        return ["[PAD]", "x", "y", "z"][ids] if isinstance(ids, int) else [["[PAD]", "x", "y", "z"][i] for i in ids]


def test_vocab_forms_and_batch_forms(trained):
    ids = torch.tensor([[1, 2, 0], [3, 1, 0]])
    attr = torch.ones(2, 3)
    for vocab in (["[PAD]", "x", "y", "z"], {"[PAD]": 0, "x": 1, "y": 2, "z": 3}, Tokenizer()):
        s = xattr.TokenStatistics.from_attributions(ids, attr, None, by=None, vocab=vocab)
        assert s.vocab == ("[PAD]", "x", "y", "z") and s.token(3) == "z" and s.token(9) == "[9]"
    # a DataLoader of dicts (Hugging Face style) and of (ids, y, mask) tuples give the tensor pass
    x, y = corpus(12, 9)
    method = functools.partial(xattr.feature_ablation, baselines=PAD)
    mask = (x != PAD).long()
    want = xattr.token_statistics(method, trained, x, labels=y, mask=mask)
    dicts = [{"input_ids": x[s : s + 4], "labels": y[s : s + 4], "attention_mask": mask[s : s + 4]} for s in (0, 4, 8)]
    tuples = [(x[s : s + 5], y[s : s + 5], mask[s : s + 5]) for s in (0, 5, 10)]
    for data in (dicts, tuples):
        got = xattr.token_statistics(method, trained, data)
        assert torch.equal(got.count, want.count) and torch.equal(got.example_count, want.example_count)
        torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12)
    assert want.count[:, PAD].sum() == 0


def test_leaves_model_and_inputs_alone(trained):
    x, y = corpus(8, 4)
    x0, y0 = x.clone(), y.clone()
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    xattr.token_statistics(functools.partial(xattr.feature_ablation, baselines=PAD), trained, x, labels=y, pad_id=PAD)
    assert torch.equal(x, x0) and torch.equal(y, y0) and not trained.training
    assert all(torch.equal(v, state[k]) for k, v in trained.state_dict().items())
    assert not trained.embedding._forward_hooks and not trained.embedding._forward_pre_hooks


def test_errors(trained):
    ids, attr, y = random_batch(7)
    make = xattr.TokenStatistics.from_attributions
    with pytest.raises(TypeError, match="integer token ids"):
        make(ids.float(), attr, y)
    with pytest.raises(ValueError, match=r"do not match the ids"):
        make(ids, attr[:, :3], y)
    with pytest.raises(ValueError, match="reduce must be"):
        make(ids, attr, y, reduce="mean")
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        make(ids - 1, attr, y)
    make(ids - 1, attr, y, pad_id=-1)  # an ignore-index id is fine once excluded
    with pytest.raises(TypeError, match="pad_id must be a token id"):
        make(ids, attr, y, pad_id=0.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        make(ids, attr / 0, y)
    with pytest.raises(ValueError, match="one key per example"):
        make(ids, attr, y[:2])
    a = make(ids, attr, y)
    with pytest.raises(ValueError, match="grouped by"):
        a.merge(make(ids, attr, y, by="prediction"))
    with pytest.raises(ValueError, match="reduced by"):
        a.merge(make(ids, attr, y, reduce="norm"))
    with pytest.raises(ValueError, match="different vocabularies"):
        make(ids, attr, y, vocab=list("abcdefghi")).merge(make(ids, attr, y, vocab=list("ABCDEFGHI")))
    with pytest.raises(ValueError, match="min_count must be a positive int"):
        a.top(0, 3, min_count=0)
    with pytest.raises(KeyError, match="no group 9"):
        a.top(9)
    method = functools.partial(xattr.feature_ablation, baselines=PAD)
    x, yy = corpus(4, 0)
    with pytest.raises(ValueError, match="needs labels"):
        xattr.token_statistics(method, trained, x)
    with pytest.raises(TypeError, match="labels= and mask= go with a tensor"):
        xattr.token_statistics(method, trained, [(x, yy)], labels=yy)
    with pytest.raises(ValueError, match="by must be"):
        xattr.token_statistics(method, trained, x, labels=yy, by="class")
    with pytest.raises(ValueError, match="mask has shape"):
        xattr.token_statistics(method, trained, x, labels=yy, mask=torch.ones(4, 2))


shard_sizes = st.lists(st.integers(1, 6), min_size=3, max_size=3)


@settings(max_examples=15, deadline=None)
@given(sizes=shard_sizes, seed=st.integers(0, 2**16))
def test_merge_is_associative_and_commutative(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for i, n in enumerate(sizes):  # shards of different lengths and vocab ranges, with large means
        ids = torch.randint(0, 4 + 3 * i, (n, 5), generator=g)
        attr = torch.randn(n, 5, generator=g, dtype=torch.float64) + 1e3 * (i + 1)
        parts.append(xattr.TokenStatistics.from_attributions(ids, attr, torch.randint(0, 3, (n,), generator=g), pad_id=0))
    a, b, c = parts
    left, right, swapped = a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(a).merge(b)
    for other in (right, swapped):
        assert other.groups == left.groups and torch.equal(other.count, left.count) and torch.equal(other.n_examples, left.n_examples)
        torch.testing.assert_close(other.mean, left.mean, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(other.m2, left.m2, rtol=1e-9, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 10.0), shift=st.floats(-5.0, 5.0))
def test_affine_attributions_move_means_and_scale_variances(seed, scale, shift):
    ids, attr, y = random_batch(seed, n=10, vocab=6)
    s = xattr.TokenStatistics.from_attributions(ids, attr, y)
    t = xattr.TokenStatistics.from_attributions(ids, attr * scale + shift, y)
    seen = s.count > 0
    torch.testing.assert_close(t.mean[seen], s.mean[seen] * scale + shift, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(t.m2, s.m2 * scale**2, rtol=1e-9, atol=1e-9)


# --- the explorer's text view ------------------------------------------------------------


@pytest.fixture(scope="module")
def text_page(trained, tmp_path_factory):
    ids, y = corpus(40, 11)
    tokens = [[WORDS[v] for v in row if v != PAD] for row in ids.tolist()]  # padding is not shown
    methods = {"ablation": lambda f: xattr.feature_ablation(f, baselines=PAD),
               "layer IG": lambda f: xattr.layer_integrated_gradients(xattr.at_layer(f, trained.embedding), baselines=PAD, n_steps=8)}  # fmt: skip
    path = tmp_path_factory.mktemp("tok") / "text.html"
    xattr.insights.explore(trained, ids, labels=y, tokens=tokens, classes=["neg", "pos"], methods=methods, path=path, show_progress=False)
    return parse(path) + (ids, y, tokens)


def test_explorer_text_view_matches_loops_on_the_page_values(text_page):
    from xattr.insights._tokens import K, MIN_COUNT

    text, _, data, ids, y, tokens = text_page
    ds = data["dataset"]
    assert list(ds["views"]) == ["label", "prediction", "label_wrong", "prediction_wrong"] and ds["min_count"] == MIN_COUNT
    pred = torch.tensor([e["p"] for e in data["examples"]])
    for view, v in ds["views"].items():
        keys = y if view.startswith("label") else pred
        chosen = [i for i in range(len(ids)) if not view.endswith("wrong") or pred[i] != y[i]]
        assert v["groups"] == sorted({int(keys[i]) for i in chosen})
        for method in data["methods"]:
            for key, n, card in zip(v["groups"], v["n"], v["methods"][method]):
                vals = defaultdict(list)  # the page's own per-token values, by loops
                members = [i for i in chosen if keys[i] == key]
                for i in members:
                    for tok, a in zip(tokens[i], data["examples"][i]["a"][method]["v"]):
                        vals[tok].append(a)
                assert n == len(members) and card["t"] == sum(len(a) for a in vals.values())
                rows = [(np.mean(a), tok, len(a)) for tok, a in vals.items() if len(a) >= MIN_COUNT]
                ids_of = {WORDS[i]: i for i in range(len(WORDS))}
                pos = sorted((r for r in rows if r[0] > 0), key=lambda r: (-r[0], ids_of[r[1]]))[:K]
                neg = sorted((r for r in rows if r[0] < 0), key=lambda r: (r[0], ids_of[r[1]]))[:K]
                for got, want in ((card["pos"], pos), (card["neg"], neg)):
                    assert [r[0] for r in got] == [w[1] for w in want] and [r[2] for r in got] == [w[2] for w in want]
                    np.testing.assert_allclose([r[1] for r in got], [w[0] for w in want], rtol=1e-4, atol=1e-5)


def test_explorer_text_view_shows_the_planted_tokens(text_page):
    text, _, data, *_ = text_page
    label = data["dataset"]["views"]["label"]
    for method in data["methods"]:
        neg, pos = label["methods"][method]
        assert pos["pos"][0][0] == "great" and neg["pos"][0][0] == "awful"
    assert "token statistics" in text and 'id="o-view-dataset"' in text


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_draws_token_cards(text_page, tmp_path):
    from test_insights_dataset_view import BASE

    text, _, data, *_ = text_page
    (tmp_path / "t.html").write_text(text, encoding="utf-8")
    probe = BASE + r"""
const out = { viewShown: !ids["l-view"].hidden, option: ids["o-view-dataset"].textContent };
ids["f-view"].value = "dataset"; ids["f-view"].fire("change");
out.cards = ids.dataset.children.map(c => [+c.attrs["data-group"], c.all("svg").length, c.all("title").map(t => t.textContent), c.textContent]);
out.count = ids.count.textContent;
console.log(JSON.stringify(out));
"""
    res = subprocess.run(["node", "-e", probe, str(tmp_path / "t.html")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    view = data["dataset"]["views"]["label"]
    assert out["viewShown"] and out["option"] == "token statistics" and out["count"].startswith("token statistics of 40 examples")
    assert [c[0] for c in out["cards"]] == view["groups"]
    for (_, n_svg, labels, whole), card, n in zip(out["cards"], view["methods"][data["methods"][0]], view["n"]):
        assert n_svg == (len(card["pos"]) > 0) + (len(card["neg"]) > 0) and f"n = {n}" in whole
        want = [f"{t} \u00d7{c}" for t, _, c in card["pos"] + card["neg"]]
        assert labels == want  # the bars' full labels (their titles): tokens with their counts, in order


def test_plot_token_statistics(trained, tmp_path):
    pytest.importorskip("matplotlib")
    x, y = corpus(30, 5)
    stats = xattr.token_statistics(functools.partial(xattr.feature_ablation, baselines=PAD), trained, x, labels=y, pad_id=PAD, vocab=WORDS)
    fig = xattr.viz.plot_token_statistics(stats, k=3, min_count=2, path=tmp_path / "p" / "tokens.png")
    assert len(fig.axes) == 2 and (tmp_path / "p" / "tokens.png").stat().st_size > 0
    for ax, key in zip(fig.axes, stats.groups):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        high = stats.top(key, 3, min_count=2)
        assert labels[0] == f"{high[0].token} \u00d7{high[0].count}" and len(ax.patches) == len(labels) <= 6
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    with pytest.raises(TypeError, match="TokenStatistics"):
        xattr.viz.plot_token_statistics(object())
    fig = xattr.viz.plot_token_statistics(stats, groups=["all"], min_count=1000)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 0  # nothing seen 1000 times


class PadTokenizer:
    pad_token_id = PAD

    def convert_ids_to_tokens(self, ids):
        return [WORDS[i] for i in ids]


def test_explorer_leaves_the_tokenizers_padding_out(trained, tmp_path):
    ids, y = corpus(12, 13)
    path = xattr.insights.explore(trained, ids, labels=y, tokens=PadTokenizer(), methods={"fa": lambda f: xattr.feature_ablation(f, baselines=PAD)},
                                  path=tmp_path / "pad.html", show_progress=False)  # fmt: skip
    _, _, data = parse(path)
    every = [r[0] for v in data["dataset"]["views"].values() for cards in v["methods"].values() for c in cards for r in c["pos"] + c["neg"]]
    label = data["dataset"]["views"]["label"]
    assert "<pad>" not in every and every  # shown on the cards, but never counted
    assert [c["t"] for c in label["methods"]["fa"]] == [int(((ids != PAD) & (y[:, None] == k)).sum()) for k in label["groups"]]
    assert any("<pad>" in e["x"] for e in data["examples"])
