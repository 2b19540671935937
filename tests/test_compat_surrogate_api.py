"""xattr.compat.captum's Lime/LimeBase/KernelShap object API against Captum 0.9's (where installed).

Captum's LIME tutorial reads the pieces a ``Lime`` object stores (its default transform, kernel,
sampler and interpretable model), calls them on their own, and reads the interpretable model
after ``attribute`` (``representation()``, ``bias()``). These tests check that xattr's objects
store working defaults with Captum's semantics, that the user's model object is left fitted as
Captum leaves it (on the batch's last example) while the fits stay batched, that the SkLearn*
models fit as Captum's, the per-sample kernel, the error of xattr's batched kernel called
Captum's way, no_grad around the user's functions, and where the mask warning points.
"""

import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import xattr
from xattr.compat import captum as X
from xattr.compat.captum import surrogate as S

torch.manual_seed(0)
NET = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
XS = torch.randn(3, 4)
MASK = torch.tensor([[0, 1, 1, 2]])


def every_coalition(original_inp, **kwargs):
    """A deterministic perturb_func (Captum's signature): a generator over all 2^F coalitions."""
    n = int(kwargs["num_interp_features"])
    for code in range(2**n):
        yield torch.tensor([[(code >> i) & 1 for i in range(n)]])


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's "multiple inputs" advice, sklearn's chatter
        return fn()


# ----------------------------------------------------------------------------- 1: stored defaults


def test_lime_stores_working_defaults():
    lime = X.Lime(NET)
    assert isinstance(lime.interpretable_model, X.SkLearnLasso) and lime.interpretable_model.construct_kwargs == {"alpha": 0.01}
    assert lime.perturb_func is X.default_perturb_func
    assert lime.from_interp_rep_transform is X.default_from_interp_rep_transform and lime.to_interp_rep_transform is None
    assert lime.similarity_func(XS[:1], XS[:1], None) == pytest.approx(1.0)
    # ... recognised: xattr's batched draws, kernel and solver, as for None
    assert S._exp_kernel(lime.similarity_func)._xattr_exp_kernel == ("cosine", 1.0)
    assert S._perturb(lime.perturb_func, None) is None
    assert S.solver(lime.interpretable_model) == xattr.lasso(alpha=0.01)
    kw = dict(target=1, feature_mask=MASK, n_samples=40, generator=0)
    want = xattr.lime(xattr.target(NET, 1), n_samples=40, feature_mask=MASK, generator=0)(XS)
    torch.testing.assert_close(lime.attribute(XS, **kw), want, rtol=0, atol=0)
    ks = X.KernelShap(NET)
    assert ks.from_interp_rep_transform is X.default_from_interp_rep_transform and ks.interpretable_model is None


def test_default_pieces_match_captums():
    lime_mod = pytest.importorskip("captum.attr._core.lime")
    torch.manual_seed(1)
    img, mask = torch.randn(1, 3, 2, 2), torch.tensor([[[[0, 1], [2, 3]]]])
    sample = torch.tensor([[1, 1, 0, 1]])
    for base in (0, 0.5, torch.randn(1, 3, 2, 2)):
        ours = X.Lime(NET).from_interp_rep_transform(sample, img, feature_mask=mask, baselines=base)
        theirs = lime_mod.default_from_interp_rep_transform(sample, img, feature_mask=mask, baselines=base)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    pair, masks = (img, torch.randn(1, 2)), (mask, torch.tensor([[4, 4]]))
    five = torch.tensor([[1, 0, 1, 1, 0]])
    ours = X.default_from_interp_rep_transform(five, pair, feature_mask=masks, baselines=(0.0, 1.0))
    theirs = lime_mod.default_from_interp_rep_transform(five, pair, feature_mask=masks, baselines=(0.0, 1.0))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(3)
    ours = X.default_perturb_func(img, num_interp_features=7)
    torch.manual_seed(3)
    theirs = lime_mod.default_perturb_func(img, num_interp_features=7)
    assert ours.dtype == theirs.dtype == torch.long and torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="num_interp_features"):
        X.default_perturb_func(img)
    with pytest.raises(ValueError, match="feature_mask"):
        X.default_from_interp_rep_transform(sample, img, baselines=0)


# ----------------------------------------------------------------------------- 4: the per-sample kernel


@pytest.mark.parametrize("mode,width", [("cosine", 1.0), ("euclidean", 10.0), ("euclidean", 0.5)])
def test_per_sample_kernel_matches_captums(mode, width):
    lime_mod = pytest.importorskip("captum.attr._core.lime")
    torch.manual_seed(2)
    img = torch.randn(1, 3, 8, 8)
    pert = img * (torch.rand(1, 1, 8, 8) > 0.5)
    ours, theirs = X.get_exp_kernel_similarity_function(mode, width), lime_mod.get_exp_kernel_similarity_function(mode, width)
    for a, b in [(img, pert), ((img, img[:, 0]), (pert, pert[:, 0] * 0.3))]:
        got = ours(a, b, None)
        assert isinstance(got, float) and got == pytest.approx(theirs(a, b, None), rel=1e-6)
    assert ours(img.double(), pert.double(), None, num_interp_features=4) == pytest.approx(theirs(img, pert, None), rel=1e-6)


def test_per_sample_kernel_maps_to_the_batched_one():
    assert X.get_exp_kernel_similarity_function() is not X.get_exp_kernel_similarity_function()
    kw = dict(target=1, feature_mask=MASK, n_samples=30, generator=0)
    a = X.Lime(NET, similarity_func=X.get_exp_kernel_similarity_function("euclidean", 0.5)).attribute(XS, **kw)
    b = X.Lime(NET, similarity_func=xattr.exp_kernel_similarity("euclidean", 0.5)).attribute(XS, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="distance_mode"):
        X.get_exp_kernel_similarity_function("manhattan")


def test_batched_kernel_called_captums_way_names_the_shapes():
    img = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, N, \.\.\.\).*xattr\.compat\.captum\.get_exp_kernel_similarity_function"):
        xattr.exp_kernel_similarity("euclidean", 10.0)(img, img * 0.5, None)
    w = xattr.exp_kernel_similarity("euclidean", 10.0)(img, img[:, None] * 0.5, None)  # the batched call still works
    assert w.shape == (1, 1)


# ----------------------------------------------------------------------------- 2: the user's model left fitted


def _captum_linear(name, **kw):
    lm = pytest.importorskip("captum._utils.models.linear_model")
    return getattr(lm, name)(**kw)


@pytest.mark.parametrize("name,kw,tol", [("SkLearnLinearRegression", {}, 1e-5), ("SkLearnRidge", {"alpha": 0.3}, 1e-5),
                                         ("SkLearnLasso", {"alpha": 0.01}, 1e-5)])  # fmt: skip
def test_captums_model_object_is_left_fitted_as_captum_leaves_it(name, kw, tol):
    CA = pytest.importorskip("captum.attr")
    ours_model, theirs_model = _captum_linear(name, **kw), _captum_linear(name, **kw)
    args = dict(target=1, feature_mask=MASK, n_samples=8)
    ours = X.Lime(NET, ours_model, perturb_func=every_coalition).attribute(XS, **args)
    theirs = _quiet(lambda: CA.Lime(NET, theirs_model, perturb_func=every_coalition).attribute(XS, **args))
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    assert ours_model.representation().shape == (1, 3) and ours_model.bias().shape == (1,)
    assert ours_model.representation().dtype == torch.float32
    torch.testing.assert_close(ours_model.representation(), theirs_model.representation(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours_model.bias(), theirs_model.bias(), rtol=tol, atol=tol)


def test_model_object_fitted_on_the_last_example_of_several_feature_sets():
    """Per-example masks holding different ids: xattr fits per set (the last example's set first
    here); the object gets the last example's fit, over every id (0 where it holds none)."""
    CA = pytest.importorskip("captum.attr")
    masks = torch.tensor([[0, 1, 1, 2], [0, 2, 3, 3], [0, 0, 1, 2]])  # sets {0,1,2}: rows 0, 2; {0,2,3}: row 1
    ours_model, theirs_model = X.SkLearnLinearRegression(), _captum_linear("SkLearnLinearRegression")
    args = dict(target=2, feature_mask=masks, n_samples=16, return_input_shape=False)
    ours = X.Lime(NET, ours_model, perturb_func=every_coalition).attribute(XS, **args)
    theirs = _quiet(lambda: CA.Lime(NET, theirs_model, perturb_func=every_coalition).attribute(XS, **args))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)  # 0 at the ids an example lacks, both
    torch.testing.assert_close(ours_model.representation(), ours[-1:], rtol=0, atol=1e-7)
    torch.testing.assert_close(ours_model.representation(), theirs_model.representation(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_model.bias(), theirs_model.bias(), rtol=1e-5, atol=1e-5)


def test_default_model_fitted_with_the_batched_draws_equals_a_direct_fit():
    """With xattr's own draws: the object holds the fit of the last example's recorded data."""
    recorded = {}

    class Record(xattr.lasso):  # a solver subclass: xattr.lime hands it every example's data
        def __call__(self, X_, y, w, **kw):
            recorded["data"] = (X_.clone(), y.clone(), w.clone())
            return super().__call__(X_, y, w, **kw)

    lime = X.Lime(NET)
    out = lime.attribute(XS, target=0, feature_mask=MASK, n_samples=60, generator=3, return_input_shape=False)
    xattr.lime(xattr.target(NET, 0), n_samples=60, feature_mask=MASK, generator=3, interpretable_model=Record(0.01))(XS)
    Xd, yd, wd = recorded["data"]
    coef, intercept = xattr.lasso(0.01)(Xd[-1:].double(), yd[-1:].double(), wd[-1:].double())
    torch.testing.assert_close(lime.interpretable_model.representation(), coef[0].float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lime.interpretable_model.bias(), intercept[0].float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lime.interpretable_model.representation(), out[-1:], rtol=1e-6, atol=1e-7)
    # the forward of the fitted surrogate is its linear model
    z = torch.tensor([[1.0, 0.0, 1.0]])
    torch.testing.assert_close(lime.interpretable_model(z), z @ coef[0].float().T + intercept[0].float())


# ----------------------------------------------------------------------------- 3: SkLearn* models


def _data(n=40, f=5, k=None, seed=4):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, f, generator=g) > 0.5).float()
    y = x @ torch.randn(f, k or 1, generator=g) + 0.1 * torch.randn(n, k or 1, generator=g)
    return x, (y[:, 0] if k is None else y), torch.rand(n, generator=g) + 0.1


TIGHT = {"tol": 1e-7, "max_iter": 100_000}  # scikit-learn's lasso to its float32 precision (xattr's is exact)


@pytest.mark.parametrize("name,kw", [("SkLearnLasso", {"alpha": 0.01, **TIGHT}),
                                     ("SkLearnLasso", {"alpha": 0.05, "fit_intercept": False, **TIGHT}),
                                     ("SkLearnRidge", {"alpha": 0.5}), ("SkLearnLinearRegression", {}),
                                     ("SkLearnLinearRegression", {"fit_intercept": False})])  # fmt: skip
def test_sklearn_models_fit_as_captums(name, kw):
    theirs = _captum_linear(name, **kw)
    ours = getattr(X, name)(**{k: v for k, v in kw.items() if k not in TIGHT})
    x, y, w = _data()
    for loader in [DataLoader(TensorDataset(x, y, w), batch_size=40), DataLoader(TensorDataset(x, y), batch_size=16)]:
        assert set(ours.fit(loader)) == {"train_time"}
        theirs.fit(loader)
        torch.testing.assert_close(ours.representation(), theirs.representation(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.bias(), theirs.bias(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_sklearn_models_api_and_recognition():
    x, y, w = _data(k=2)
    model = X.SkLearnRidge(alpha=2.0)
    assert model.bias() is None and model.classes() is None and model.construct_kwargs == {"alpha": 2.0}
    with pytest.raises(RuntimeError, match="not fitted"):
        model.representation()
    model.fit(DataLoader(TensorDataset(x, y, w), batch_size=40))
    coef, intercept = xattr.ridge(2.0)(x[None].double(), y[None].double(), w[None].double())
    assert model.representation().shape == (2, 5) and model.bias().shape == (2,)
    torch.testing.assert_close(model.representation(), coef[0].float())
    assert isinstance(model, nn.Module)
    assert S.solver(X.SkLearnLasso(alpha=0.05)) == xattr.lasso(0.05)
    assert S.solver(X.SkLearnRidge(alpha=2.0, fit_intercept=False)) == xattr.ridge(2.0, fit_intercept=False)
    assert S.solver(X.SkLearnLinearRegression()) == xattr.linear_regression()
    with pytest.raises(TypeError, match="takes no alpha"):
        X.SkLearnLinearRegression(alpha=0.5)
    with pytest.raises(TypeError, match="scikit-learn"):
        X.SkLearnLasso(alpha=0.1, max_iter=5)


def test_xattrs_model_object_left_fitted_in_lime_and_limebase():
    CA = pytest.importorskip("captum.attr")
    args = dict(target=1, feature_mask=MASK, n_samples=8)
    ours_model, theirs_model = X.SkLearnRidge(alpha=0.3), _captum_linear("SkLearnRidge", alpha=0.3)
    X.Lime(NET, ours_model, perturb_func=every_coalition).attribute(XS, **args)
    _quiet(lambda: CA.Lime(NET, theirs_model, perturb_func=every_coalition).attribute(XS, **args))
    torch.testing.assert_close(ours_model.representation(), theirs_model.representation(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_model.bias(), theirs_model.bias(), rtol=1e-5, atol=1e-5)
    # LimeBase fits it through fit(DataLoader), as Captum's loop does
    lime_mod = pytest.importorskip("captum.attr._core.lime")
    pieces = (X.get_exp_kernel_similarity_function(), every_coalition, True, X.default_from_interp_rep_transform, None)
    kw = dict(target=1, n_samples=8, feature_mask=MASK, baselines=0.0, num_interp_features=3)
    ours = X.LimeBase(NET, X.SkLearnRidge(alpha=0.3), *pieces).attribute(XS[:1], **kw)
    theirs = lime_mod.LimeBase(NET, _captum_linear("SkLearnRidge", alpha=0.3), *pieces).attribute(XS[:1], **kw)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 5: no_grad


def test_user_functions_run_without_grad():
    seen = []

    def sim(original, perturbed, interp, **kwargs):
        seen.append(("sim", torch.is_grad_enabled()))
        return torch.exp(-(NET(perturbed) - NET(original)).norm())  # a tensor from the model: no graph, no warning

    def perturb(original, **kwargs):
        seen.append(("perturb", torch.is_grad_enabled()))
        return torch.bernoulli(torch.full((1, kwargs["num_interp_features"]), 0.5)).long()

    def transform(sample, original, **kwargs):
        seen.append(("transform", torch.is_grad_enabled()))
        return X.default_from_interp_rep_transform(sample, original, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X.LimeBase(NET, X.SkLearnLasso(alpha=0.01), sim, perturb, True, transform, None).attribute(
            XS[:1], target=1, n_samples=6, feature_mask=MASK, baselines=0.0, num_interp_features=3)
        X.Lime(NET, similarity_func=sim, perturb_func=perturb).attribute(XS[:2], target=1, feature_mask=MASK, n_samples=4)
    assert {k for k, _ in seen} == {"sim", "perturb", "transform"} and not any(g for _, g in seen)
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------- 6: the mask warning's location


def test_mask_warning_points_at_the_attribute_call():
    shifted = torch.tensor([[3, 3, 5, 6]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        X.KernelShap(NET).attribute(XS[:1], target=1, feature_mask=shifted, n_samples=8)
        X.Lime(NET).attribute(XS[:1], target=1, feature_mask=shifted, n_samples=8)
    found = [(w.filename, w.lineno) for w in caught if "Minimum element in feature mask" in str(w.message)]
    assert found == [(__file__, line), (__file__, line + 1)]
