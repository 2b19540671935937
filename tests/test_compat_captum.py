"""xattr.compat.captum against Captum 0.9's own numbers (stored; captum is not needed here).

The cases live in tests/gen_captum_expected.py, which also wrote Captum's numbers into
tests/captum_expected.py; both libraries go through the same ``run`` function.
"""

import dataclasses
import math
import os
import re

import pytest
import torch

import xattr
from xattr.compat import captum as X

try:
    from .stored import assert_matches_stored
except ImportError:
    from stored import assert_matches_stored

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_expected as E
    from . import gen_captum_expected as G
except ImportError:
    import captum_expected as E
    import gen_captum_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES}
N_X = 4000  # samples for xattr's side of the statistical comparisons
TOL = dict(rtol=1e-6, atol=1e-8)  # Captum's float32 step sizes and 10-digit storage


def _close(out, expected, **tol):
    assert_matches_stored(out, expected, **{**TOL, **tol})


def _split(case, out):
    return out if case.kwargs.get("return_convergence_delta") else (out, None)


# ----------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", [c.name for c in G.CASES if c.name != "ig_riemann_trapezoid"])
def test_same_numbers_as_captum(name):
    case = CASES[name]
    attr, delta = _split(case, G.run(case, X, MODELS))
    _close(attr, E.EXPECTED[name]["attr"])
    if "delta" in E.EXPECTED[name]:
        # deltas are differences of nearly equal numbers: compare on the scale of the outputs
        _close(delta, E.EXPECTED[name]["delta"], atol=1e-7)


def test_trapezoid_is_captum_times_n_over_n_minus_1():
    """Documented difference: exact trapezoid weights (sum 1) vs Captum's (sum 1 - 1/n)."""
    case = CASES["ig_riemann_trapezoid"]
    n = case.kwargs["n_steps"]
    attr, delta = G.run(case, X, MODELS)
    _close(attr * (n - 1) / n, E.EXPECTED[case.name]["attr"])
    # Captum's rule under-integrates, so its completeness gap is far larger than xattr's
    captum_delta = torch.tensor(E.EXPECTED[case.name]["delta"], dtype=delta.dtype)
    assert (delta.abs() < captum_delta.abs() / 10).all()


def test_gradient_shap_one_baseline_converges_to_integrated_gradients():
    """E over a ~ U(0, 1) of (x - b) * grad f(b + a (x - b)) is exactly the IG integral."""
    case = next(c for c in G.STAT_CASES if c.name == "stat_gshap_one_baseline")
    ig = E.EXPECTED["ig_row_baseline"]["attr"]  # same model, baseline and target; Captum's numbers
    assert CASES["ig_row_baseline"].kwargs["target"] == case.kwargs["target"]
    est = G.run(case, X, MODELS, n_samples=N_X, generator=0)
    draws = _draws(case, N_X, seed=1)
    tol = 5 * draws.std(0) / math.sqrt(N_X) + 1e-12
    assert ((est - torch.tensor(ig, dtype=est.dtype)).abs() <= tol).all()


# ----------------------------------------------------------------------------- statistical conformance


def _repeat(inputs, m):
    return tuple(_repeat(x, m) for x in inputs) if isinstance(inputs, tuple) else inputs.repeat((m,) + (1,) * (inputs.ndim - 1))


def _draws(case, m, seed):
    """m independent one-sample attributions per example, shaped (m, B, ...) (per input, for tuples).

    One call on the inputs tiled m times: xattr draws every row independently.
    """
    one = {"nt_type": "smoothgrad"} if case.method == "NoiseTunnel" else {}
    inputs = G.INPUTS[case.inputs]
    batch = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
    for v in case.kwargs.values():  # per-example keywords would have to be tiled too
        assert not (isinstance(v, torch.Tensor) and v.shape[0] == batch and v.shape[0] > 1)
    obj = _object(case)
    out = obj.attribute(_repeat(inputs, m), **{**case.kwargs, **one, case.samples: 1, "generator": seed})
    unfold = lambda t: t.reshape((m, batch) + tuple(t.shape[1:]))  # noqa: E731
    return tuple(unfold(t) for t in out) if isinstance(out, tuple) else unfold(out)


def _object(case):
    model = MODELS[case.model]
    if case.inner is not None:
        return getattr(X, case.method)(getattr(X, case.inner)(model, **case.inner_ctor))
    return getattr(X, case.method)(model, **case.ctor)


def _per_sample_quantity(a, nt_type):
    """The per-sample quantity whose mean the estimator takes (its spread sets the tolerance)."""
    if nt_type == "smoothgrad_sq":
        return a * a
    if nt_type == "vargrad":
        return (a - a.mean(0)) ** 2
    return a


def _product(dists):
    """Every combination of rows of a tuple of baseline distributions (N1 * N2 * ... rows)."""
    idx = torch.cartesian_prod(*[torch.arange(d.shape[0]) for d in dists]).reshape(-1, len(dists))
    return tuple(d[idx[:, i]] for i, d in enumerate(dists))


def _captum_pairing(case):
    """Captum draws each input tensor's baseline independently (docs/migration.md); xattr draws
    whole baseline examples. Drawing whole examples from the product distribution is Captum's."""
    b = case.kwargs.get("baselines")
    if isinstance(b, tuple) and sum(isinstance(t, torch.Tensor) and t.shape[0] > 1 for t in b) > 1:
        return dataclasses.replace(case, kwargs={**case.kwargs, "baselines": _product(b)})
    return case


@pytest.mark.parametrize("case", G.STAT_CASES, ids=lambda c: c.name)
def test_statistically_same_as_captum(case):
    """xattr's N_X-sample estimate agrees with Captum's N_CAPTUM-sample one within 5 standard errors."""
    case = _captum_pairing(case)
    est = G.run(case, X, MODELS, **{case.samples: N_X, "generator": 0})
    draws = _draws(case, N_X, seed=1)
    nt_type = case.kwargs.get("nt_type", "smoothgrad")
    expected = E.STAT[case.name]["attr"]
    est, draws = (est, draws) if isinstance(est, tuple) else ((est,), (draws,))
    expected = expected if isinstance(expected, tuple) else (expected,)
    for e, d, ref in zip(est, draws, expected):
        q = _per_sample_quantity(d, nt_type)
        tol = 5 * q.std(0) * math.sqrt(1 / N_X + 1 / G.N_CAPTUM) + 1e-9
        err = (e - torch.tensor(ref, dtype=e.dtype)).abs()
        assert (err <= tol).all(), f"errors {err.flatten().tolist()} over tolerances {tol.flatten().tolist()}"


def test_gradient_shap_pairs_baselines_as_whole_examples():
    """The documented difference above is real: joint and per-input draws have different expectations."""
    case = next(c for c in G.STAT_CASES if c.name == "stat_gshap_pair_noise")
    joint = G.run(case, X, MODELS, n_samples=N_X, generator=0)
    paired = G.run(_captum_pairing(case), X, MODELS, n_samples=N_X, generator=0)
    assert (joint[1] - paired[1]).abs().max() > 0.02  # about 10 standard errors here


# ----------------------------------------------------------------------------- Captum's conventions


def _ig(model="mlp"):
    return X.IntegratedGradients(MODELS[model])


@pytest.mark.parametrize(
    "obj, kwargs",
    [
        (lambda m: X.Saliency(m), {}),
        (lambda m: X.InputXGradient(m), {}),
        (lambda m: X.IntegratedGradients(m), {"n_steps": 4}),
        (lambda m: X.GradientShap(m), {"baselines": torch.zeros(3, 3, dtype=torch.float64), "generator": 0}),
        (lambda m: X.NoiseTunnel(X.IntegratedGradients(m)), {"n_steps": 4, "nt_samples": 2, "generator": 0}),
    ],
    ids=["Saliency", "InputXGradient", "IntegratedGradients", "GradientShap", "NoiseTunnel"],
)
def test_tuple_in_tuple_out_tensor_in_tensor_out(obj, kwargs):
    a = obj(MODELS["mlp"])
    out = a.attribute(G.X, target=1, **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == G.X.shape
    out = a.attribute((G.X,), target=1, **kwargs)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == G.X.shape
    pair = X.Saliency(MODELS["two"]) if isinstance(a, X.Saliency) else None
    if pair is not None:
        out = pair.attribute(G.INPUTS["pair"], target=0, additional_forward_args=(G.SCALE,))
        assert isinstance(out, tuple) and [o.shape for o in out] == [G.X1.shape, G.X2.shape]


def test_target_forms_agree():
    ig = _ig()
    kw = dict(n_steps=5)
    per_example = torch.stack([ig.attribute(G.X, target=t, **kw)[i] for i, t in enumerate([2, 0])])
    torch.testing.assert_close(ig.attribute(G.X, target=[2, 0], **kw), per_example)
    torch.testing.assert_close(ig.attribute(G.X, target=torch.tensor([2, 0]), **kw), per_example)
    torch.testing.assert_close(ig.attribute(G.X, target=torch.tensor([1]), **kw), ig.attribute(G.X, target=1, **kw))
    torch.testing.assert_close(ig.attribute(G.X, target=torch.tensor(1), **kw), ig.attribute(G.X, target=1, **kw))


def test_list_of_tuples_target_is_one_per_example_under_folding():
    """A Python list of tuples means one output per example, also when copies fill the batch axis."""
    sal, ig = X.Saliency(MODELS["multi"]), X.IntegratedGradients(MODELS["multi"])
    targets = [(1, 0), (0, 2)]
    for method, kw in [(sal, {}), (ig, {"n_steps": 6}), (X.NoiseTunnel(ig), {"n_steps": 3, "stdevs": 0.0})]:
        out = method.attribute(G.X, target=targets, **kw)
        loop = torch.stack([method.attribute(G.X, target=t, **kw)[i] for i, t in enumerate(targets)])
        torch.testing.assert_close(out, loop)


def test_list_target_of_wrong_length_says_it_is_per_example():
    with pytest.raises(ValueError, match="one target per example"):
        _ig().attribute(G.X, target=[0, 1, 2])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_internal_batch_size_does_not_change_integrated_gradients(size):
    for model, inputs, kw in [
        ("mlp", G.X, {"target": [0, 2], "n_steps": 9}),
        ("conv", G.IMG, {"target": 1, "n_steps": 6, "method": "riemann_right"}),
        ("two", G.INPUTS["pair"], {"target": 1, "n_steps": 5, "additional_forward_args": (G.SCALE, 0.25)}),
    ]:
        ig = _ig(model)
        ref = ig.attribute(inputs, **kw)
        out = ig.attribute(inputs, internal_batch_size=size, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


def test_additional_forward_args_single_value_is_wrapped_like_captum():
    f = lambda x, scale: MODELS["mlp"](x) * scale  # noqa: E731
    ig = X.IntegratedGradients(f)
    torch.testing.assert_close(
        ig.attribute(G.X, target=0, additional_forward_args=G.SCALE, n_steps=4),
        ig.attribute(G.X, target=0, additional_forward_args=(G.SCALE,), n_steps=4),
    )


def test_baselines_forms():
    ig = _ig()
    kw = dict(target=1, n_steps=4)
    zero = ig.attribute(G.X, **kw)
    torch.testing.assert_close(ig.attribute(G.X, baselines=0, **kw), zero)
    torch.testing.assert_close(ig.attribute(G.X, baselines=torch.zeros(1, 3, dtype=torch.float64), **kw), zero)
    torch.testing.assert_close(ig.attribute(G.X, baselines=torch.zeros(2, 3, dtype=torch.float64), **kw), zero)
    with pytest.raises(ValueError, match="give baselines as a tuple"):
        X.IntegratedGradients(MODELS["two"]).attribute(G.INPUTS["pair"], baselines=torch.zeros(1, 3), target=0,
                                                        additional_forward_args=(G.SCALE,))  # fmt: skip


def test_inputs_that_require_grad_are_left_alone():
    x = G.X.clone().requires_grad_(True)
    out = _ig().attribute(x, target=1, n_steps=4)
    assert x.requires_grad and x.grad is None
    torch.testing.assert_close(out, _ig().attribute(G.X, target=1, n_steps=4))


def test_properties_follow_captum():
    m = MODELS["mlp"]
    expected = {
        X.Saliency(m): (False, False),
        X.InputXGradient(m): (False, True),
        X.IntegratedGradients(m): (True, True),
        X.IntegratedGradients(m, multiply_by_inputs=False): (True, False),
        X.GradientShap(m): (True, True),
        X.GradientShap(m, multiply_by_inputs=False): (True, False),
        X.NoiseTunnel(X.GradientShap(m, multiply_by_inputs=False)): (True, False),
        X.NoiseTunnel(X.IntegratedGradients(m, multiply_by_inputs=False)): (True, False),
        X.NoiseTunnel(X.Saliency(m)): (False, False),
    }
    for obj, (delta, mult) in expected.items():
        assert (obj.has_convergence_delta(), obj.multiplies_by_inputs) == (delta, mult), type(obj).__name__


# ----------------------------------------------------------------------------- GradientShap


class _Spy(torch.nn.Module):
    """Records every row the model is evaluated at (the calls happen inside vjp, hence lists)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows += x.tolist()
        return self.model(x)


@pytest.mark.parametrize("multiply", [True, False], ids=["global", "local"])
@pytest.mark.parametrize("chunk", [None, 2 * G.X.shape[0]], ids=["one_call", "chunked"])
def test_gradient_shap_delta_is_its_definition(multiply, chunk):
    """Captum's delta, by an explicit loop: for example i and sample s (row i * n + s),
    sum(a_is) - (f(x_i) - f(b)) with a_is = [(x_i - b) *] grad f(p_is), p_is = b + alpha_is (x_i - b).

    One baseline and no noise, so the sampled points p_is are the recorded rows strictly inside
    the path (the model's other rows are x and b themselves); the attribution is mean_s a_is.
    """
    model, x, b, n, targets = MODELS["mlp"], G.X, G.B_ROW, 5, [2, 0]
    spy = _Spy(model)
    attr, delta = xattr.gradient_shap(
        xattr.target(spy, torch.tensor(targets)), baselines=b, n_samples=n, generator=3, chunk_size=chunk,
        multiply_by_inputs=multiply, return_delta=True,
    )(x)  # fmt: skip
    batch = x.shape[0]
    assert delta.shape == (batch * n,)
    rows = torch.tensor(spy.rows, dtype=x.dtype)
    example = torch.arange(rows.shape[0]) % batch  # every call holds whole copies of the batch, copy-major
    v = x[example] - b
    alpha = ((rows - b) * v).sum(1) / (v * v).sum(1)
    torch.testing.assert_close(rows, b + alpha[:, None] * v)  # every row lies on the path
    inside = (alpha > 1e-9) & (alpha < 1 - 1e-9)
    points = rows[inside].reshape(n, batch, -1)  # sample s of example i at [s, i]
    f = lambda t, i: model(t[None])[0, targets[i]]  # noqa: E731
    expected_attr, expected_delta = torch.zeros_like(x), torch.zeros(batch * n, dtype=x.dtype)
    for i in range(batch):
        for s in range(n):
            p = points[s, i].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(p, i), p)
            a = (x[i] - b[0]) * g if multiply else g
            expected_attr[i] += a / n
            with torch.no_grad():
                expected_delta[i * n + s] = a.sum() - (f(x[i], i) - f(b[0], i))
    torch.testing.assert_close(attr, expected_attr, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(delta, expected_delta, rtol=1e-10, atol=1e-12)


def test_gradient_shap_delta_layout_is_example_major():
    """Rows i * n_samples ... (i + 1) * n_samples - 1 are example i's samples, as in Captum."""
    f = lambda x: (x * x).sum(1)  # noqa: E731  from b = 0 the delta is (2 alpha - 1) |x + noise|^2
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    gs = X.GradientShap(f)
    kw = dict(n_samples=4, stdevs=0.01, return_convergence_delta=True, generator=0)
    attr, delta = gs.attribute(x, zero, **kw)
    assert delta.shape == (12,)
    assert (delta[:4].abs() < 0.01).all() and (delta[4:8].abs().max() > 1)
    # seeded draws are per example (NOTE: [Explicit randomness]): the first k examples' blocks are
    # what a batch of those k examples gets
    for k in (1, 2):
        torch.testing.assert_close(delta[: 4 * k], gs.attribute(x[:k], zero, **kw)[1])
    # the mean of the deltas is the delta of the mean attribution (no noise: the same f(x + e))
    kw["stdevs"] = 0.0
    attr, delta = gs.attribute(x, zero, **kw)
    torch.testing.assert_close(delta.reshape(3, 4).mean(1), attr.sum(1) - f(x))


def test_gradient_shap_delta_does_not_change_the_attributions():
    gs = X.GradientShap(MODELS["two"], multiply_by_inputs=False)
    kw = dict(baselines=G.B_DIST2, n_samples=6, stdevs=(0.2, 0.1), target=[1, 0], additional_forward_args=(G.SCALE,),
              generator=4)  # fmt: skip
    attr, delta = gs.attribute(G.INPUTS["pair"], return_convergence_delta=True, **kw)
    torch.testing.assert_close(attr, gs.attribute(G.INPUTS["pair"], **kw), rtol=0, atol=0)
    assert delta.shape == (2 * 6,)


def test_gradient_shap_many_outputs_delta():
    """xattr.gradient_shap's delta carries the K axis: (B * n_samples, K), column k that of output k."""
    model, b = MODELS["mlp"], G.B_DIST
    many = xattr.gradient_shap(xattr.target(model, xattr.outputs([0, 2])), baselines=b, n_samples=3, stdevs=0.1,
                               generator=1, return_delta=True)  # fmt: skip
    attr, delta = many(G.X)
    assert attr.shape == (2, 2, 3) and delta.shape == (6, 2)
    for k, t in enumerate([0, 2]):
        one_attr, one_delta = xattr.gradient_shap(xattr.target(model, t), baselines=b, n_samples=3, stdevs=0.1,
                                                  generator=1, return_delta=True)(G.X)  # fmt: skip
        torch.testing.assert_close(attr[:, k], one_attr)
        torch.testing.assert_close(delta[:, k], one_delta)


def test_gradient_shap_draws_are_reproducible():
    gs = X.GradientShap(MODELS["mlp"])
    kw = dict(baselines=G.B_DIST, n_samples=7, stdevs=0.2, target=0)
    a, b, c = (gs.attribute(G.X, generator=s, **kw) for s in (3, 3, 4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    torch.manual_seed(11)
    d = gs.attribute(G.X, **kw)  # Captum's default: torch's global generator
    torch.manual_seed(11)
    torch.testing.assert_close(gs.attribute(G.X, **kw), d, rtol=0, atol=0)


# ----------------------------------------------------------------------------- NoiseTunnel


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_without_noise_reduces_one_attribution(nt_type):
    ig = _ig()
    kw = dict(target=[1, 2], n_steps=5, baselines=G.B_EACH)
    a = ig.attribute(G.X, **kw)
    out = X.NoiseTunnel(ig).attribute(G.X, nt_type=nt_type, nt_samples=4, stdevs=0.0, **kw)
    torch.testing.assert_close(out, {"smoothgrad": a, "smoothgrad_sq": a * a, "vargrad": 0 * a}[nt_type])


def test_noise_tunnel_baseline_draws_for_tuple_inputs():
    """draw_baseline_from_distrib with a one-row distribution (tensor and number) is that baseline."""
    ig = X.IntegratedGradients(MODELS["two"])
    kw = dict(baselines=(G.B_ROW, 0.1), target=1, n_steps=5, additional_forward_args=(G.SCALE, 0.25))
    out = X.NoiseTunnel(ig).attribute(G.INPUTS["pair"], nt_samples=3, stdevs=0.0, draw_baseline_from_distrib=True, **kw)
    torch.testing.assert_close(out, ig.attribute(G.INPUTS["pair"], **kw))


def test_noise_tunnel_reductions_share_their_noise():
    nt = X.NoiseTunnel(X.Saliency(MODELS["mlp"]))
    kw = dict(nt_samples=6, stdevs=0.4, target=0, abs=False, generator=5)
    mean, sq, var = (nt.attribute(G.X, nt_type=t, **kw) for t in ("smoothgrad", "smoothgrad_sq", "vargrad"))
    torch.testing.assert_close(var, sq - mean * mean)


@pytest.mark.parametrize("batch_size", [None, 1, 2, 4, 7])
def test_noise_tunnel_sample_batches_do_not_change_the_result(batch_size):
    nt = X.NoiseTunnel(_ig())
    kw = dict(nt_type="vargrad", nt_samples=5, stdevs=0.3, target=[0, 1], n_steps=4, generator=2)
    ref = nt.attribute(G.X, **kw)
    torch.testing.assert_close(nt.attribute(G.X, nt_samples_batch_size=batch_size, **kw), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_size, layout", [(None, [0] * 5 + [1] * 5), (2, [0, 0, 1, 1, 0, 0, 1, 1, 0, 1])])
def test_noise_tunnel_delta_layout_is_captums(batch_size, layout):
    """One delta per noisy copy, example-major within each batch of nt_samples_batch_size copies."""
    f = lambda x: (x * x).sum(1)  # noqa: E731  one riemann_left step from 0: delta = -|x + noise|^2
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    nt = X.NoiseTunnel(X.IntegratedGradients(f))
    attr, delta = nt.attribute(x, nt_samples=5, nt_samples_batch_size=batch_size, stdevs=0.1, n_steps=1,
                               method="riemann_left", return_convergence_delta=True, generator=0)  # fmt: skip
    assert delta.shape == (10,)
    big = delta.abs() > 50
    assert big.tolist() == [bool(e) for e in layout]


def test_noise_tunnel_forwards_inner_keywords_and_rejects_unknown_ones():
    nt = X.NoiseTunnel(X.Saliency(MODELS["mlp"]))
    with pytest.raises(TypeError, match="n_steps"):
        nt.attribute(G.X, target=0, n_steps=5)
    with pytest.raises(ValueError, match="nt_type"):
        nt.attribute(G.X, target=0, nt_type="smoothgrad_squared")


def test_noise_tunnel_around_gradient_shap_runs_and_is_seeded():
    nt = X.NoiseTunnel(X.GradientShap(MODELS["mlp"]))
    kw = dict(nt_samples=3, nt_samples_batch_size=2, stdevs=0.1, baselines=G.B_DIST, n_samples=4, target=1)
    a, b = nt.attribute(G.X, generator=9, **kw), nt.attribute(G.X, generator=9, **kw)
    assert a.shape == G.X.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- docs


def test_migration_guide_example_runs():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "migration.md")
    if not os.path.exists(path):
        pytest.skip("docs/migration.md is not shipped with the package")
    blocks = re.findall(r"```python\n(.*?)```", open(path).read(), flags=re.S)
    assert blocks, "docs/migration.md has no python example"
    exec(compile(blocks[0], "docs/migration.md", "exec"), {})


def test_noise_tunnel_refuses_a_delta_the_method_lacks_and_a_zero_batch_of_samples():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="Saliency has no convergence delta"):
        X.NoiseTunnel(X.Saliency(model)).attribute(x, target=0, return_convergence_delta=True)
    with pytest.raises(ValueError, match="nt_samples_batch_size must be a positive int"):
        X.NoiseTunnel(X.Saliency(model)).attribute(x, target=0, nt_samples_batch_size=0)


def test_noise_tunnel_refuses_a_keyword_in_the_wrapped_methods_name():
    """Captum's wording: the method whose ``attribute`` does not take it (the old NoiseTunnel
    ``n_samples``), not a private method of the adapter."""
    with pytest.raises(TypeError, match=r"^Saliency\.attribute\(\) got an unexpected keyword argument 'n_samples'$"):
        X.NoiseTunnel(X.Saliency(MODELS["mlp"])).attribute(G.X, target=0, nt_samples=2, n_samples=5, stdevs=0.1)
    with pytest.raises(TypeError, match=r"^IntegratedGradients\.attribute\(\) got an unexpected keyword argument 'n_step'$"):
        X.NoiseTunnel(_ig()).attribute(G.X, target=0, nt_samples=2, n_step=5, stdevs=0.1)
