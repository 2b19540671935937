"""xattr.compat.captum's perturbation classes against Captum 0.9's own numbers (stored; no captum here).

FeatureAblation, Occlusion, FeaturePermutation, ShapleyValueSampling, ShapleyValues, Lime,
LimeBase, KernelShap, LayerFeatureAblation, LayerFeaturePermutation, NeuronFeatureAblation. The
cases live in tests/gen_captum_perturbation_expected.py, which wrote Captum's numbers into
tests/captum_perturbation_expected.py; both libraries go through the same ``run`` function. The
documented differences (docs/migration.md, "Perturbation methods") are tested against Captum's
stored numbers for them.
"""

import inspect
import math
import warnings

import pytest
import torch

import xattr
from xattr.compat import captum as X
from xattr.compat.captum import surrogate as S

try:
    from .stored import assert_matches_stored
except ImportError:
    from stored import assert_matches_stored

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_perturbation_expected as E
    from . import gen_captum_perturbation_expected as G
except ImportError:
    import captum_perturbation_expected as E
    import gen_captum_perturbation_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES + G.DIFF_CASES}
TOL = dict(rtol=1e-6, atol=1e-8)  # exact methods: float64 on both sides, 10-digit storage
FLOAT32 = {  # Captum computes these in float32 (see docs/migration.md); xattr keeps float64
    "Occlusion": dict(rtol=1e-6, atol=1e-7),
    "ShapleyValues": dict(rtol=1e-5, atol=1e-6),
    "Lime": dict(rtol=1e-5, atol=1e-6),
}
R = 8  # replicate estimates behind xattr's side of a statistical comparison


def _close(out, expected, **tol):
    assert_matches_stored(out, expected, **{**TOL, **tol})


def _run(name, **overrides):
    return G.run(CASES[name], X, MODELS, **overrides)


@pytest.mark.parametrize("name", [c.name for c in G.CASES])
def test_same_numbers_as_captum(name):
    case = CASES[name]
    inputs = G.INPUTS[case.inputs]
    tol = dict(rtol=1e-6, atol=1e-7) if case.inputs == "ids" else FLOAT32.get(case.method, {})  # a float32 model
    out = _run(name)
    _close(out, E.EXPECTED[name]["attr"], **tol)
    first = out[0] if isinstance(out, tuple) else out
    if isinstance(inputs, tuple) or inputs.is_floating_point():
        assert first.dtype == torch.float64, "xattr keeps the model's float64 (Captum's float32 where it casts)"


# ----------------------------------------------------------------------------- Captum's signatures and flags


def _params(fn) -> list:
    """(name, default or None) after self, leaving out xattr-only keyword-only parameters."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    kept = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    return [(p.name, None if p.default is inspect.Parameter.empty else G.default_repr(p.default)) for p in kept]


@pytest.mark.parametrize("cls", list(E.SIGNATURES))
def test_signatures_are_captums(cls):
    for method, expected in E.SIGNATURES[cls].items():
        assert _params(getattr(getattr(X, cls), method)) == [tuple(p) for p in expected], f"{cls}.{method}"


def test_flags_follow_captum():
    model = MODELS["mlp"]
    for cls in ["FeatureAblation", "Occlusion", "FeaturePermutation", "ShapleyValueSampling", "ShapleyValues"]:
        obj = getattr(X, cls)(model)
        assert (obj.has_convergence_delta(), obj.multiplies_by_inputs) == (False, True), cls
    for cls in ["LayerFeatureAblation", "LayerFeaturePermutation", "NeuronFeatureAblation"]:
        obj = getattr(X, cls)(model, model[0])
        assert (obj.has_convergence_delta(), obj.multiplies_by_inputs) == (False, True), cls
    for obj in [X.Lime(model), X.KernelShap(model)]:
        assert (obj.has_convergence_delta(), obj.multiplies_by_inputs) == (False, False)
    assert isinstance(X.KernelShap(model), X.Lime) and isinstance(X.Lime(model), X.LimeBase)


def test_attribute_future_is_not_supported_where_captum_has_none():
    for cls in [X.Occlusion, X.Lime, X.KernelShap]:
        with pytest.raises(NotImplementedError):
            cls(MODELS["mlp"]).attribute_future(G.X)


# ----------------------------------------------------------------------------- statistical conformance


def _tile(value, m: int, batch: int):
    """The batch repeated m times (copy-major): tensors and lists with one entry per example."""
    if isinstance(value, tuple):
        return tuple(_tile(v, m, batch) for v in value)
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
        return value.repeat((m,) + (1,) * (value.ndim - 1))
    if isinstance(value, list) and len(value) == batch:
        return value * m
    return value


def _replicates(case, m: int, n: int, seed: int):
    """m independent n-sample estimates per example, (m, B, ...) per input: one call on the batch
    tiled m times (xattr draws every example from its own generator)."""
    inputs = G.INPUTS[case.inputs]
    batch = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
    kwargs = {k: _tile(v, m, batch) for k, v in case.kwargs.items()}
    obj = getattr(X, case.method)(MODELS[case.model], **case.ctor)
    out = obj.attribute(_tile(inputs, m, batch), **kwargs, **{case.samples: n}, generator=seed)
    unfold = lambda t: t.reshape((m, batch) + tuple(t.shape[1:]))  # noqa: E731
    return tuple(unfold(t) for t in out) if isinstance(out, tuple) else (unfold(out),)


@pytest.mark.parametrize("case", G.STAT_CASES, ids=lambda c: c.name)
def test_statistically_same_as_captum(case):
    """The mean of R xattr estimates with Captum's N_CAPTUM samples agrees with Captum's one estimate.

    Equivalent estimators with the same sample size have the same distribution, so the difference
    has standard deviation sd * sqrt(1 + 1/R), sd the spread of one estimate (taken from the R
    replicates); the tolerance is 5 of those (plus Captum's float32 rounding). Shapley sampling is
    unbiased at any size: its sd comes from one-permutation draws, the estimate from N_CAPTUM.
    """
    expected = E.STAT[case.name]["attr"]
    expected = expected if isinstance(expected, tuple) else (expected,)
    if case.method == "ShapleyValueSampling":
        est = G.run(case, X, MODELS, n_samples=G.N_CAPTUM, generator=0)
        est = est if isinstance(est, tuple) else (est,)
        draws = _replicates(case, 2000, 1, seed=1)
        tols = [5 * d.std(0) * math.sqrt(1 / G.N_CAPTUM + 1 / G.N_CAPTUM) + 1e-6 for d in draws]
    else:
        reps = _replicates(case, R, G.N_CAPTUM, seed=0)
        est = [r.mean(0) for r in reps]
        tols = [5 * r.std(0) * math.sqrt(1 + 1 / R) + 1e-6 for r in reps]
    for e, ref, tol in zip(est, expected, tols):
        err = (e - torch.tensor(ref, dtype=e.dtype)).abs()
        assert (err <= tol).all(), f"errors {err.flatten().tolist()} over tolerances {tol.flatten().tolist()}"


def test_shapley_value_sampling_converges_to_captums_exact_values():
    """The sampled estimate is within its sampling error of Captum's ShapleyValues (sv_default)."""
    est = X.ShapleyValueSampling(MODELS["mlp"]).attribute(G.X, baselines=G.B_EACH, target=[0, 2], n_samples=2000, generator=0)
    draws = _replicates(G.Case("d", "ShapleyValueSampling", "mlp", "x", {"target": [0, 2], "baselines": G.B_EACH},
                               samples="n_samples"), 2000, 1, seed=1)[0]  # fmt: skip
    tol = 5 * draws.std(0) / math.sqrt(2000) + 1e-6
    assert ((est - torch.tensor(E.EXPECTED["sv_default"]["attr"], dtype=est.dtype)).abs() <= tol).all()


def test_random_classes_are_reproducible_with_a_seed():
    model, mask = MODELS["mlp"], torch.tensor([[0, 1, 1, 2]])
    for obj, kw in [(X.ShapleyValueSampling(model), {"n_samples": 5}), (X.Lime(model), {}), (X.KernelShap(model), {}),
                    (X.FeaturePermutation(model), {})]:  # fmt: skip
        a = obj.attribute(G.X3, target=1, feature_mask=mask, generator=3, **kw)
        b = obj.attribute(G.X3, target=1, feature_mask=mask, generator=3, perturbations_per_eval=2, **kw)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- documented differences


def test_feature_permutation_moves_a_feature_spanning_tensors_as_one():
    """Captum permutes each tensor of a feature on its own; xattr uses one permutation per feature."""
    out = _run("fp_cross_tensor", generator=0)
    assert all(bool((t == 0).all()) for t in out), "a == b stays true in every permuted copy: no change"
    assert any(abs(v) > 0.1 for t in E.DIFF["fp_cross_tensor"]["attr"] for row in t for v in row)


def test_layer_feature_permutation_selects_the_target_once():
    """Captum applies the target twice and fails; xattr gives the numbers of the model selecting it."""
    assert "Cannot choose target" in E.DIFF["lfp_target"]["error"]
    _close(_run("lfp_target"), E.EXPECTED["lfp_selected"]["attr"])


def test_kernel_shap_enumerates_every_coalition_when_n_samples_allows():
    """n_samples >= 2^F: xattr's KernelShap is Captum's exact ShapleyValues; Captum's still samples."""
    _close(_run("kshap_enumerated"), E.EXPECTED["sv_default"]["attr"], **FLOAT32["ShapleyValues"])
    captum_sampled = torch.tensor(E.DIFF["kshap_enumerated"]["attr"])
    assert (captum_sampled - torch.tensor(E.EXPECTED["sv_default"]["attr"])).abs().max() > 1e-3


def test_shapley_values_refuse_more_than_20_features():
    with pytest.raises(ValueError, match="feature_mask"):
        X.ShapleyValues(lambda x: x.sum(1)).attribute(torch.zeros(1, 21))


def test_a_python_bool_baseline_is_a_number_as_in_captum():
    w = torch.tensor([1.0, -2.0, 3.0])
    flags = torch.tensor([[True, False, True], [False, True, True]])
    f = lambda b: b.to(w.dtype) @ w  # noqa: E731
    for cls in (X.FeatureAblation, X.ShapleyValues):
        flipped = cls(f).attribute(flags, baselines=True)
        torch.testing.assert_close(flipped, (flags.float() - 1) * w, rtol=0, atol=0)
        torch.testing.assert_close(cls(f).attribute(flags, baselines=False), flags * w, rtol=0, atol=0)


@pytest.mark.parametrize("perm_func", [None, G.roll_batch])
def test_feature_permutation_needs_two_examples(perm_func):
    obj = X.FeaturePermutation(MODELS["mlp"], **({} if perm_func is None else {"perm_func": perm_func}))
    with pytest.raises(ValueError, match="at least 2"):
        obj.attribute(G.X[:1], target=0)


def _counting(model, rows: list):
    def f(*args):
        rows.append(args[0].shape[0])
        return model(*args)

    return f


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        ("FeatureAblation", {}),
        ("Occlusion", {"sliding_window_shapes": (1,)}),
        ("ShapleyValues", {}),
        ("ShapleyValueSampling", {"n_samples": 2, "generator": 0}),
    ],
)
def test_perturbations_per_eval_caps_the_rows_per_call(cls, kwargs):
    """1 (Captum's default) lets xattr batch by its memory budget; k > 1 allows k copies per call."""
    rows = []
    obj = getattr(X, cls)(_counting(MODELS["mlp"], rows))
    default = obj.attribute(G.X, target=1, **kwargs)
    folded = cls in ("FeatureAblation", "Occlusion", "ShapleyValueSampling")  # f(x) is one more copy there
    assert len(rows) == 1 if folded else (rows[0] == 2 and len(rows) == 2), "every copy in one call"
    rows.clear()
    capped = obj.attribute(G.X, target=1, perturbations_per_eval=3, **kwargs)
    assert max(rows) == 6 and len(rows) >= 2 and (folded or rows[0] == 2)
    torch.testing.assert_close(default, capped, rtol=0, atol=1e-12)


def test_unused_feature_ids_cost_nothing():
    rows = []
    a = X.FeatureAblation(_counting(MODELS["mlp"], rows)).attribute(G.X, target=1, feature_mask=torch.tensor([[0, 0, 100, 100]]))
    b = X.FeatureAblation(MODELS["mlp"]).attribute(G.X, target=1, feature_mask=torch.tensor([[0, 0, 1, 1]]))
    assert sum(rows) == 2 + 2 * 2
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lime_shifts_a_mask_not_starting_at_zero():
    obj = X.Lime(MODELS["mlp"])
    with pytest.warns(UserWarning, match="shifting"):
        a = obj.attribute(G.X, target=1, feature_mask=torch.tensor([[1, 2, 2, 3]]), generator=0, return_input_shape=False)
    b = obj.attribute(G.X, target=1, feature_mask=torch.tensor([[0, 1, 1, 2]]), generator=0, return_input_shape=False)
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lime_generator_perturb_func_must_last_n_samples():
    obj = X.Lime(MODELS["mlp"], perturb_func=G.every_coalition)
    with pytest.raises(ValueError, match="stopped after 8 of n_samples=9"):
        obj.attribute(G.X, target=1, feature_mask=torch.tensor([[0, 1, 1, 2]]), n_samples=9)


def test_limebase_fits_on_the_samples_a_generator_gives():
    case = CASES["limebase_interp"]
    with pytest.warns(UserWarning, match="Generator completed"):
        more = G.run(case, X, MODELS, n_samples=20)  # 16 coalitions: Captum's warning, the same fit
    _close(more, E.EXPECTED["limebase_interp"]["attr"])
    with pytest.raises(TypeError, match="from_interp_rep_transform"):
        X.LimeBase(MODELS["mlp"], G.LstsqModel(), G.size_kernel, G.every_coalition, True, None, None).attribute(G.X[:1])


# ----------------------------------------------------------------------------- Captum's surrogate pieces


def test_captum_sklearn_models_become_xattr_solvers():
    """Captum's SkLearnLasso/Ridge/LinearRegression (recognised by name, captum not needed)."""

    def captum_like(name, **kw):
        cls = type(name, (), {"__module__": "captum._utils.models.linear_model.model"})
        cls.__qualname__ = name
        obj = cls()
        obj.construct_kwargs, obj.fit, obj.representation = kw, lambda data: None, lambda: None
        return obj

    assert S.solver(captum_like("SkLearnLasso", alpha=0.05)) == xattr.lasso(alpha=0.05)
    assert S.solver(captum_like("SkLearnRidge", alpha=2.0, fit_intercept=False)) == xattr.ridge(2.0, fit_intercept=False)
    assert S.solver(captum_like("SkLearnLinearRegression")) == xattr.linear_regression()
    with pytest.raises(TypeError, match="takes no alpha"):  # it was the default lasso, silently
        S.solver(captum_like("SkLearnLinearRegression", alpha=0.5))
    assert isinstance(S.solver(captum_like("SkLearnLasso", alpha=0.1, max_iter=5)), S._CaptumModel)  # fitted as given
    assert S.solver(None) is None


def test_captum_exp_kernel_becomes_xattrs():
    def get_exp_kernel_similarity_function(distance_mode="cosine", kernel_width=1.0):  # Captum's factory's shape
        def default_exp_kernel(original_inp, perturbed_inp, __, **kwargs):
            raise AssertionError(f"replaced by xattr's kernel ({distance_mode}, {kernel_width}), never called")

        return default_exp_kernel

    sim = S._similarity(get_exp_kernel_similarity_function("euclidean", 0.5), None)
    assert getattr(sim, "_xattr_exp_kernel") == ("euclidean", 0.5)
    a = X.Lime(MODELS["mlp"], similarity_func=get_exp_kernel_similarity_function("euclidean", 0.5))
    b = X.Lime(MODELS["mlp"], similarity_func=xattr.exp_kernel_similarity("euclidean", 0.5))
    kw = dict(target=1, feature_mask=torch.tensor([[0, 1, 1, 2]]), generator=0)
    torch.testing.assert_close(a.attribute(G.X, **kw), b.attribute(G.X, **kw), rtol=0, atol=0)


def test_custom_similarity_gets_captums_per_example_arguments():
    seen = []

    def similarity(original, perturbed, interp, **kwargs):
        seen.append((original.shape, perturbed.shape, interp.shape, kwargs["baselines"].shape,
                     kwargs["feature_mask"].shape, kwargs["num_interp_features"]))  # fmt: skip
        return 1.0

    X.Lime(MODELS["mlp"], similarity_func=similarity).attribute(G.X, baselines=G.B_EACH, target=1, n_samples=3, generator=0)
    assert len(seen) == 6 and set(seen) == {((1, 4), (1, 4), (1, 4), (1, 4), (1, 4), 4)}


def test_sklearn_estimator_fits_like_xattrs_lasso():
    linear_model = pytest.importorskip("sklearn.linear_model")
    kw = dict(target=1, feature_mask=torch.tensor([[0, 1, 1, 2]]), n_samples=200, generator=0, return_input_shape=False)
    ours = X.Lime(MODELS["mlp"]).attribute(G.X, **kw)
    theirs = X.Lime(MODELS["mlp"], interpretable_model=linear_model.Lasso(alpha=0.01, tol=1e-10)).attribute(G.X, **kw)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_lime_aggregate_model_gets_one_row():
    out = X.Lime(MODELS["summed"]).attribute(G.X, feature_mask=torch.tensor([[0, 1, 1, 2]]), generator=0)
    assert out.shape == (1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coef = X.KernelShap(MODELS["summed"]).attribute(G.X, return_input_shape=False, n_samples=16)
    assert coef.shape == (1, 4)
