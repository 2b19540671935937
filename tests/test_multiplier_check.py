"""`xattr.metrics.multiplier_check` against a loop calling `randomization_check`, the methods and
the similarity functions directly; the average gradient against Gauss-Legendre sums of
autograd gradients; one set of random weights for every method; the result's views; errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import metrics
from xattr.testing.text_cnn import TextCNN, sentiment_data

D = torch.float64


def text_model(seed=0):
    torch.manual_seed(seed)
    return TextCNN().to(D).eval()


def image_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).to(D).eval()


def measures(a, b, top_k):
    return {"spearman_abs": metrics.spearman(a, b, abs=True), "topk": metrics.top_k_intersection(a, b, k=top_k),
            "spearman": metrics.spearman(a, b)}


def test_layer_check_matches_a_loop_over_randomization_check():
    model, (ids, _) = text_model(), sentiment_data(5, generator=2)
    with torch.no_grad():
        pred = model(ids).argmax(1)
    check = metrics.multiplier_check(model, ids, layer="embedding", methods=("saliency", "input_x_gradient"), reduce="sum",
                                     similarity=("spearman_abs", "topk"), top_k=3, generator=4)
    # the embedding's output on each model of the cascade: the "attribution" of a builder returning it
    hs = metrics.randomization_check(model, lambda m: m.embedding, ids, similarity=("spearman",), generator=4, keep=True)
    hs = [hs.original, *hs.attributions]
    mult = [h.abs().sum(-1) for h in hs]
    for name, method in (("saliency", xattr.saliency), ("input_x_gradient", xattr.input_x_gradient)):
        def build(m, method=method):
            split = xattr.at_layer(xattr.target(m, pred), m.embedding)
            return lambda i: method(split.head)(split.act(i), i).sum(-1)

        ref = metrics.randomization_check(model, build, ids, similarity=("spearman_abs", "topk"), top_k=3, generator=4, keep=True)
        got = check.randomization[name]
        assert got.layers == ref.layers == check.layers == ["fc", "conv", "embedding"]
        for s in ("spearman_abs", "topk"):
            torch.testing.assert_close(got.scores[s], ref.scores[s])
            maps = [ref.original, *ref.attributions]
            want = torch.stack([measures(a, m, 3)[s] for a, m in zip(maps, mult)])
            torch.testing.assert_close(check.to_multiplier[name][s], want)
    torch.testing.assert_close(torch.stack(check.multipliers["x"]), torch.stack(mult))
    assert check.multiplies == {"saliency": False, "input_x_gradient": True}
    # the embedding is random in the last step: its multiplier changed with it
    assert not torch.allclose(mult[-1], mult[0]) and torch.equal(mult[1], mult[0])


def gauss_legendre_average_gradient(f1, x, b, n):
    """sum_i w_i grad f(b + a_i (x - b)) on [0, 1], one example and one node at a time."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    out = []
    for xi, bi in zip(x, b):
        total = torch.zeros_like(xi)
        for a, w in zip((nodes + 1) / 2, weights / 2):
            p = (bi + float(a) * (xi - bi)).requires_grad_(True)
            (g,) = torch.autograd.grad(f1(p), p)
            total += float(w) * g
        out.append(total)
    return torch.stack(out)


def test_input_check_matches_loop_reference_with_baselines_and_independent_mode():
    model = image_model(1)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=D)
    b = torch.full_like(x, 0.25)
    check = metrics.multiplier_check(model, x, target=2, methods=("average_gradient", "integrated_gradients"), baselines=b,
                                     mode="independent", similarity=("spearman", "ssim"), n_steps=6, generator=1)
    f1 = lambda v: model(v[None])[0, 2]  # noqa: E731
    avg = gauss_legendre_average_gradient(f1, x, b, 6)
    torch.testing.assert_close(check.randomization["average_gradient"].original, avg)
    torch.testing.assert_close(check.randomization["integrated_gradients"].original, avg * (x - b))
    for name, build in (("average_gradient", lambda m: lambda v: gauss_legendre_average_gradient(lambda u: m(u[None])[0, 2], v, b, 6)),
                        ("integrated_gradients", lambda m: xattr.integrated_gradients(xattr.target(m, 2), baselines=b, n_steps=6))):
        ref = metrics.randomization_check(model, build, x, mode="independent", similarity=("spearman", "ssim"), generator=1, keep=True)
        for s in ("spearman", "ssim"):
            torch.testing.assert_close(check.randomization[name].scores[s], ref.scores[s])
            maps = [ref.original, *ref.attributions]
            want = torch.stack([metrics.spearman(a, x - b) if s == "spearman" else metrics.ssim(a, x - b) for a in maps])
            torch.testing.assert_close(check.to_multiplier[name][s], want)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), reduce=st.sampled_from([None, "sum", "norm"]))
def test_saliency_and_gradient_see_the_same_random_weights(seed, reduce):
    # |grad| and grad have equal magnitudes: their spearman_abs scores agree only if every method
    # was run on the same randomized models (one seed, also when generator is None)
    model, (ids, _) = text_model(seed), sentiment_data(3, generator=seed)
    check = metrics.multiplier_check(model, ids, layer=model.embedding, methods=("saliency", "gradient"), reduce=None,
                                     similarity=("spearman_abs",), generator=None)
    torch.testing.assert_close(check.randomization["saliency"].scores["spearman_abs"],
                               check.randomization["gradient"].scores["spearman_abs"])
    again = metrics.multiplier_check(model, ids, layer="embedding", methods=("input_x_gradient",), reduce=reduce, generator=seed)
    same = metrics.multiplier_check(model, ids, layer="embedding", methods=("input_x_gradient",), reduce=reduce, generator=seed)
    for s in again.measures:
        torch.testing.assert_close(again.to_multiplier["input_x_gradient"][s], same.to_multiplier["input_x_gradient"][s])


def test_curves_summary_final_and_plot(tmp_path):
    model, (ids, _) = text_model(), sentiment_data(4, generator=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check = metrics.multiplier_check(model, ids, layer="embedding", reduce="sum", n_steps=4, generator=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    for m in check.methods:
        c = check.curve(m)
        assert c.shape == (4,) and abs(float(c[0]) - 1.0) < 1e-6  # the trained map against itself
        torch.testing.assert_close(c[1:], check.randomization[m].scores["spearman_abs"].double().nanmean(1))
        torch.testing.assert_close(check.curve(m, "topk", against="multiplier"), check.to_multiplier[m]["topk"].double().nanmean(1))
        assert check.final()[m] == float(c[-1])
    text = check.summary()
    for m in check.methods:
        line = next(row for row in text.splitlines() if row.startswith(m))
        assert f"{check.final()[m]:.3f}" in line and ("yes" in line) == check.multiplies[m]
    fig = check.plot(tmp_path / "check.png", measure="topk")
    assert (tmp_path / "check.png").stat().st_size > 1000 and len(fig.axes[0].lines) == 2 * len(check.methods)
    with pytest.raises(ValueError, match="not computed"):
        check.summary("ssim")
    with pytest.raises(ValueError, match="against"):
        check.curve("saliency", against="input")


def test_errors():
    model, (ids, _) = text_model(), sentiment_data(2, generator=1)
    cases = [
        (dict(layer="embedding", methods=("deep_lift",)), ValueError, "unknown methods"),
        (dict(layer="embedding", methods=("saliency", "saliency")), ValueError, "repeated"),
        (dict(layer="embedding", reduce="mean"), ValueError, "reduce"),
        (dict(layer="embedding", similarity=("pearson",)), ValueError, "similarity"),
        (dict(), ValueError, "layer="),
        (dict(layer=nn.Linear(2, 2)), ValueError, "not a module"),
        (dict(layer="embedding", n_steps=0), ValueError, "n_steps"),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            metrics.multiplier_check(model, ids, **kw)
    with pytest.raises(ValueError, match="no module named 'embeddings' .did you mean 'embedding'"):
        metrics.multiplier_check(model, ids, layer="embeddings")
