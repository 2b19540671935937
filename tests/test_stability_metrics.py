"""Local Lipschitz estimate and relative input/output/representation stability against slow
references: explicit loops over examples and perturbed copies, drawing the copies the way
`sensitivity_max` draws them; known answers on linear models, invariances and errors."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.metrics import (
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
    sensitivity_max,
    uniform_noise,
)
from xattr._src.sampling import row_seeds, streams

D = torch.float64


def mlp(seed: int, d_in: int = 5, hidden: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(D).eval()


def inputs(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def copies(x: torch.Tensor, n: int, radius: float, seed: int) -> list[list[torch.Tensor]]:
    """copies[i][j]: example i's j-th perturbed copy, drawn as the metrics document it: one
    generator per example, seeded by `row_seeds` of the seed's stream, handed example i's n
    copies (the layout of NOTE: [Perturbed copies of each example])."""
    (stream,) = streams(seed, 1)
    out = []
    for i, s in enumerate(row_seeds(stream, x.shape[0])):
        g = torch.Generator().manual_seed(s)
        drawn = uniform_noise(x[i : i + 1].repeat_interleave(n, 0), radius, generator=g)
        out.append([drawn[j] for j in range(n)])
    return out


def norm(v: torch.Tensor, p: float) -> float:
    vals = [abs(a) for a in v.flatten().tolist()]
    return max(vals) if p == math.inf else sum(a**p for a in vals) ** (1 / p)


def pct(v0: torch.Tensor, v1: torch.Tensor, eps_div: float) -> torch.Tensor:
    """(v0 - v1) / v0 elementwise with v0's magnitudes floored at eps_div * max |v0|, one by one."""
    big = max(abs(a) for a in v0.flatten().tolist())
    floor = eps_div * big if big > 0 else eps_div
    out = []
    for a, b in zip(v0.flatten().tolist(), v1.flatten().tolist()):
        safe = max(abs(a), floor) * (-1.0 if a < 0 else 1.0)
        out.append((a - b) / safe)
    return torch.tensor(out, dtype=D)


def ref_metric(kind, model, attr_one, x, n, radius, seed, p=2.0, eps_min=1e-6, eps_div=1e-6, layer_fn=None):
    """One example and one copy at a time; attr_one(x_i, i) explains example i alone."""
    drawn = copies(x, n, radius, seed)
    out = []
    for i in range(x.shape[0]):
        xi = x[i]
        e0 = attr_one(xi, i)
        with torch.no_grad():
            h0 = model(xi[None])[0] if model is not None else None
            l0 = layer_fn(xi[None])[0] if layer_fn is not None else None
        best = -math.inf
        for xs in drawn[i]:
            es = attr_one(xs, i)
            if kind == "lle":
                den = norm(xi - xs, p)
                ratio = norm(e0 - es, p) / den if den > 0 else 0.0
            else:
                with torch.no_grad():
                    hs = model(xs[None])[0] if model is not None else None
                if model is not None and int(hs.argmax()) != int(h0.argmax()):
                    continue  # the copy changed the predicted class
                num = norm(pct(e0, es, eps_div), p)
                if kind == "ris":
                    den = norm(pct(xi, xs, eps_div), p)
                elif kind == "ros":
                    den = norm(h0 - hs, p)
                else:
                    with torch.no_grad():
                        ls = layer_fn(xs[None])[0]
                    den = norm(pct(l0, ls, eps_div), p)
                ratio = num / max(den, eps_min)
            best = max(best, ratio)
        out.append(best if best > -math.inf else math.nan)
    return torch.tensor(out, dtype=D)


def saliency_one(model, targets):
    def one(xi, i):
        v = xi[None].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(v)[0, int(targets[i])], v)
        return g[0].abs()  # xattr.saliency's default, abs=True

    return one


@pytest.mark.parametrize("norm_name,p", [("l2", 2.0), ("l1", 1.0), ("linf", math.inf), (3, 3.0)])
def test_lipschitz_estimate_matches_the_loop(norm_name, p):
    model = mlp(0)
    x = inputs(1, (4, 5))
    pred = model(x).argmax(1)
    sal = xattr.saliency(xattr.target(model, pred))  # per-example targets follow the copies
    got = local_lipschitz_estimate(sal, x, radius=0.3, n_samples=7, norm=norm_name, generator=11, chunk_size=8)
    want = ref_metric("lle", None, saliency_one(model, pred), x, 7, 0.3, 11, p=p)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    assert (got > 0).all()


@pytest.mark.parametrize("kind", ["ris", "ros", "rrs"])
def test_relative_stability_matches_the_loop_with_the_class_constraint(kind):
    model = mlp(2)
    x = inputs(3, (6, 5)) * 0.3  # near the decision boundaries: a radius of 0.4 flips some copies
    pred = model(x).argmax(1)
    sal = xattr.saliency(xattr.target(model, pred))
    kw = dict(radius=0.4, n_samples=9, generator=5, chunk_size=12)
    layer_fn = lambda v: model[1](model[0](v))  # noqa: E731
    if kind == "ris":
        got = relative_input_stability(model, sal, x, **kw)
    elif kind == "ros":
        got = relative_output_stability(model, sal, x, **kw)
    else:
        got = relative_representation_stability(model, sal, x, layer=model[1], **kw)
    want = ref_metric(kind, model, saliency_one(model, pred), x, 9, 0.4, 5, layer_fn=layer_fn)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    flipped = sum(int(model(c[None]).argmax()) != int(pred[i]) for i, cs in enumerate(copies(x, 9, 0.4, 5)) for c in cs)
    assert flipped > 0  # the constraint was exercised
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks  # no hooks left behind


def test_relative_stability_other_norms_and_floors_match_the_loop():
    model = mlp(4)
    x = inputs(4, (3, 5))
    x[0, 2] = 0.0  # an exact zero: the floor of the percent change decides
    pred = model(x).argmax(1)
    sal = xattr.saliency(xattr.target(model, pred))
    for p, eps_div, eps_min in ((1.0, 1e-3, 1e-2), (math.inf, 0.05, 1e-6)):
        got = relative_input_stability(model, sal, x, radius=0.1, n_samples=5, p=p, eps_div=eps_div, eps_min=eps_min,
                                       generator=1)  # fmt: skip
        want = ref_metric("ris", model, saliency_one(model, pred), x, 5, 0.1, 1, p=p, eps_min=eps_min, eps_div=eps_div)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    # no model: no class constraint
    got = relative_input_stability(None, sal, x, radius=2.0, n_samples=5, generator=1)
    want = ref_metric("ris", None, saliency_one(model, pred), x, 5, 2.0, 1)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_representation_of_several_layers_is_taken_together():
    model = mlp(7)
    x = inputs(7, (4, 5))
    pred = model(x).argmax(1)
    sal = xattr.saliency(xattr.target(model, pred))
    got = relative_representation_stability(model, sal, x, layer=[model[0], model[1]], radius=0.2, n_samples=6,
                                            generator=4)  # fmt: skip
    both = lambda v: torch.cat([model[0](v), model[1](model[0](v))], -1)  # noqa: E731
    want = ref_metric("rrs", model, saliency_one(model, pred), x, 6, 0.2, 4, layer_fn=both)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_copies_are_sensitivity_maxs_copies():
    """The reference's draws reproduce sensitivity_max, so all these metrics perturb alike."""
    model = mlp(5)
    x = inputs(5, (3, 5))
    sal = xattr.saliency(xattr.target(model, 0))
    one = saliency_one(model, [0, 0, 0])
    drawn = copies(x, 6, 0.2, 9)
    want = []
    for i in range(3):
        e0 = one(x[i], i)
        want.append(max(norm(one(c, i) - e0, 2.0) for c in drawn[i]) / norm(e0, 2.0))
    got = sensitivity_max(sal, x, perturb_radius=0.2, n_perturb_samples=6, generator=9)
    torch.testing.assert_close(got, torch.tensor(want, dtype=D), atol=1e-10, rtol=1e-9)


def test_seeded_smoothgrad_is_one_function_of_its_input():
    """A seeded stochastic method keeps phi(x)'s draws on every copy (NOTE: [Seeds of folded
    copies]): the metric equals a loop calling it on copy j of the whole batch."""
    model = mlp(6)
    x = inputs(6, (3, 5))
    sg = xattr.smoothgrad(xattr.saliency(xattr.target(model, 1)), stdevs=0.2, n_samples=4, generator=3)
    drawn = copies(x, 5, 0.2, 2)
    e0 = sg(x)
    best = torch.full((3,), -math.inf, dtype=D)
    for j in range(5):
        xs = torch.stack([drawn[i][j] for i in range(3)])
        es = sg(xs)
        ratio = torch.tensor([norm(e0[i] - es[i], 2.0) / norm(x[i] - xs[i], 2.0) for i in range(3)], dtype=D)
        best = torch.maximum(best, ratio)
    got = local_lipschitz_estimate(sg, x, radius=0.2, n_samples=5, generator=2, chunk_size=3)
    torch.testing.assert_close(got, best, atol=1e-10, rtol=1e-9)
    # as for sensitivity_max: a vanishing radius gives a vanishing relative change
    tiny = relative_input_stability(None, sg, x, radius=1e-12, n_samples=3, generator=2, eps_min=1.0)
    assert (tiny < 1e-8).all()


def test_linear_saliency_is_perfectly_stable():
    w = torch.tensor([1.5, -2.0, 0.25], dtype=D)
    f = lambda v: v @ w  # noqa: E731
    x = inputs(7, (5, 3))
    sal = xattr.saliency(f)
    assert torch.equal(local_lipschitz_estimate(sal, x, radius=0.5, n_samples=10, generator=0), torch.zeros(5, dtype=D))
    assert torch.equal(relative_input_stability(None, sal, x, radius=0.5, n_samples=10, generator=0),
                       torch.zeros(5, dtype=D))  # fmt: skip
    logits = lambda v: torch.stack([v @ w, -(v @ w)], -1)  # noqa: E731
    assert torch.equal(relative_output_stability(logits, sal, x, radius=0.01, n_samples=4, generator=0),
                       torch.zeros(5, dtype=D))  # fmt: skip


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 6), radius=st.floats(0.01, 3.0))
def test_input_x_gradient_of_a_linear_model_is_bounded_by_the_largest_weight(seed, d, radius):
    # phi(x) - phi(x') = w * (x - x'), so ||w * delta||_2 / ||delta||_2 <= max |w_j|, with
    # equality for a delta along the largest weight's axis
    w = inputs(seed, (d,))
    x = inputs(seed + 1, (3, d))
    ixg = xattr.input_x_gradient(lambda v: v @ w)
    got = local_lipschitz_estimate(ixg, x, radius=radius, n_samples=8, generator=seed)
    assert (got <= w.abs().max() * (1 + 1e-12)).all() and (got >= w.abs().min() * (1 - 1e-12)).all()


def test_input_x_gradient_estimate_approaches_the_largest_weight():
    w = torch.tensor([3.0, 0.5], dtype=D)
    x = inputs(8, (4, 2))
    ixg = xattr.input_x_gradient(lambda v: v @ w)
    # the ratio is sqrt((9 a^2 + b^2 / 4) / (a^2 + b^2)) for delta = (a, b): above 0.995 * 3 needs
    # |b| < 0.06 |a|, which 400 uniform draws hit with probability 1 - (1 - ~0.03)^400 > 0.99999
    many = local_lipschitz_estimate(ixg, x, radius=0.1, n_samples=400, generator=0)
    assert (many > 0.995 * 3.0).all() and (many <= 3.0).all()


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0), negative=st.booleans())
def test_relative_stability_ignores_the_attributions_scale(seed, scale, negative):
    model = mlp(seed % 7)
    x = inputs(seed, (3, 5))
    pred = model(x).argmax(1)
    sal = xattr.saliency(xattr.target(model, pred))
    c = -scale if negative else scale
    scaled = lambda v: c * sal(v)  # noqa: E731
    kw = dict(radius=0.1, n_samples=4, generator=seed)
    for metric in (relative_input_stability, relative_output_stability):
        torch.testing.assert_close(metric(model, scaled, x, **kw), metric(model, sal, x, **kw))
    # with exact zeros at x that the copies move off: the floor is relative, so still invariant
    # (for maps that are not all zero: those are divided by eps_div itself)
    x[:, 0] = -0.01
    x[:, 1] = x[:, 1].abs() + 0.5
    relu = lambda v: torch.relu(v)  # noqa: E731
    scaled_relu = lambda v: c * torch.relu(v)  # noqa: E731
    torch.testing.assert_close(relative_input_stability(model, scaled_relu, x, **kw),
                               relative_input_stability(model, relu, x, **kw))  # fmt: skip
    # the Lipschitz estimate is not scale-free: it scales with |c|
    lle = local_lipschitz_estimate(sal, x, **kw)
    torch.testing.assert_close(local_lipschitz_estimate(scaled, x, **kw), abs(c) * lle)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 4), chunk=st.sampled_from([None, 1, 5]))
def test_batch_prefix_and_chunk_invariance(seed, batch, chunk):
    model = mlp(seed % 5)
    x = inputs(seed, (batch, 5))
    pred = model(x).argmax(1)
    sal = xattr.saliency(xattr.target(model, pred))
    kw = dict(radius=0.2, n_samples=5, generator=seed)
    for metric, extra in ((local_lipschitz_estimate, ()), (relative_input_stability, (model,)),
                          (relative_output_stability, (model,))):  # fmt: skip
        whole = metric(*extra, sal, x, **kw)
        assert whole.shape == (batch,)
        torch.testing.assert_close(metric(*extra, sal, x, chunk_size=chunk, **kw), whole)
        # an int seed gives example i the same copies in any batch it is the i-th of
        head = xattr.saliency(xattr.target(model, pred[:-1]))
        torch.testing.assert_close(metric(*extra, head, x[:-1], **kw), whole[:-1])


def test_pass_through_arguments_and_several_inputs():
    model = mlp(9, d_in=5)

    def f(a, b, scale):
        return model(torch.cat([a, b], 1) * scale)[:, 0]

    a, b = inputs(1, (3, 2)), inputs(2, (3, 3))
    scale = torch.tensor([[1.0], [2.0], [0.5]], dtype=D)  # one per example: tiled with the copies
    sal = xattr.saliency(f, argnums=(0, 1))
    got = local_lipschitz_estimate(sal, a, b, scale, argnums=(0, 1), radius=0.2, n_samples=4, generator=3)
    (stream,) = streams(3, 1)
    want = []
    for i, s in enumerate(row_seeds(stream, 3)):
        g = torch.Generator().manual_seed(s)
        pa, pb = uniform_noise((a[i : i + 1].repeat(4, 1), b[i : i + 1].repeat(4, 1)), 0.2, generator=g)
        e0 = torch.cat([t[0] for t in sal(a[i : i + 1], b[i : i + 1], scale[i : i + 1])])
        best = 0.0
        for j in range(4):
            ej = torch.cat([t[0] for t in sal(pa[j : j + 1], pb[j : j + 1], scale[i : i + 1])])
            dx = torch.cat([a[i] - pa[j], b[i] - pb[j]])
            best = max(best, norm(e0 - ej, 2.0) / norm(dx, 2.0))
        want.append(best)
    torch.testing.assert_close(got, torch.tensor(want, dtype=D), atol=1e-10, rtol=1e-9)


def test_lost_class_gives_nan_and_a_warning_at_the_callers_line():
    model = mlp(3)
    x = inputs(3, (4, 5))
    sal = xattr.saliency(xattr.target(model, model(x).argmax(1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = relative_input_stability(model, sal, x, radius=50.0, n_samples=2, generator=0)
    assert torch.isnan(got).any()
    msgs = [w for w in caught if "kept the predicted class" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].filename == __file__
    assert f"{int(torch.isnan(got).sum())} of 4" in str(msgs[0].message)


def test_model_inputs_and_mode_are_left_alone():
    model = mlp(1)
    x = inputs(1, (3, 5))
    x0 = x.clone()
    params = [q.clone() for q in model.parameters()]
    sal = xattr.saliency(xattr.target(model, 0))
    relative_representation_stability(model, sal, x, layer=model[1], radius=0.1, n_samples=3, generator=0)
    local_lipschitz_estimate(sal, x, radius=0.1, n_samples=3, generator=0)
    assert torch.equal(x, x0) and not model.training
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


def test_bad_arguments_are_refused_with_a_message():
    model = mlp(0)
    x = inputs(0, (2, 5))
    sal = xattr.saliency(xattr.target(model, 0))
    for radius in (0, -0.1, math.inf, True):
        with pytest.raises(ValueError, match="radius must be a positive"):
            local_lipschitz_estimate(sal, x, radius=radius, n_samples=3)
    with pytest.raises(ValueError, match="n_samples"):
        relative_input_stability(model, sal, x, radius=0.1, n_samples=0)
    with pytest.raises(ValueError, match="norm must be"):
        local_lipschitz_estimate(sal, x, radius=0.1, n_samples=3, norm="fro")
    with pytest.raises(ValueError, match="p must be"):
        relative_output_stability(model, sal, x, radius=0.1, n_samples=3, p=0.5)
    with pytest.raises(ValueError, match="eps_min"):
        relative_input_stability(model, sal, x, radius=0.1, n_samples=3, eps_min=0)
    with pytest.raises(ValueError, match="eps_div"):
        relative_input_stability(model, sal, x, radius=0.1, n_samples=3, eps_div=-1.0)
    with pytest.raises(TypeError, match="logits"):
        relative_output_stability(None, sal, x, radius=0.1, n_samples=3)
    with pytest.raises(TypeError, match="attribution function"):
        local_lipschitz_estimate(sal(x), x, radius=0.1, n_samples=3)
    with pytest.raises(ValueError, match="takes no `generator`"):
        local_lipschitz_estimate(sal, x, radius=0.1, n_samples=3, generator=0, perturb_func=lambda v, r: v + r)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        local_lipschitz_estimate(sal, x[:0], radius=0.1, n_samples=3)
