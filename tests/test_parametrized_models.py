"""Parametrized weights (weight_norm, spectral_norm, orthogonal, old hook-style norms, pruning)
in merge_batch_norm and randomization_check; LRP rules under autocast; LIME's draws under a
float64 default dtype."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune

import xattr
from xattr import metrics
from xattr.metrics._randomization import _reinit

KINDS = ["weight_norm", "spectral_norm", "orthogonal", "old_weight_norm", "old_spectral_norm", "prune"]


def _parametrize(layer: nn.Module, kind: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old hook-style ones are deprecated
        if kind == "weight_norm":
            parametrizations.weight_norm(layer)
        elif kind == "spectral_norm":
            parametrizations.spectral_norm(layer)
        elif kind == "orthogonal":
            parametrizations.orthogonal(layer)
        elif kind == "old_weight_norm":
            torch.nn.utils.weight_norm(layer)
        elif kind == "old_spectral_norm":
            torch.nn.utils.spectral_norm(layer)
        elif kind == "prune":
            prune.l1_unstructured(layer, "weight", amount=0.3)


def _bn_net(kind: str, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3),
    ).to(dtype)  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    _parametrize(model[0], kind)
    _parametrize(model[4], kind)
    return model.eval()


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- merge_batch_norm


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", KINDS)
def test_merge_batch_norm_parametrized_layers_same_function(kind, dtype, tol):
    model = _bn_net(kind, dtype)
    x = torch.randn(5, 2, 6, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))
    before_state, before_out = _snapshot(model), model(x).detach()
    merged = xattr.merge_batch_norm(model)
    assert isinstance(merged.get_submodule("1"), nn.Identity) and isinstance(merged.get_submodule("5"), nn.Identity)
    atol = tol * max(1.0, before_out.abs().max().item())  # old spectral norm's eval weights are large
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), atol=atol, rtol=0)
        assert torch.allclose(merged(x), before_out, atol=atol, rtol=0)
    assert not parametrize.is_parametrized(merged.get_submodule("0"))  # a plain weight, folded
    # the original is untouched: same state, still parametrized, same outputs
    after_state = _snapshot(model)
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    if kind in ("weight_norm", "spectral_norm", "orthogonal"):
        assert parametrize.is_parametrized(model[0], "weight") and parametrize.is_parametrized(model[4], "weight")
    assert torch.equal(model(x).detach(), before_out)
    if dtype == torch.float32:  # LRP on the merged copy: as on the model with its batch norms (epsilon)
        a = xattr.lrp(xattr.target(merged, 1))(x)
        b = xattr.lrp(xattr.target(model, 1))(x)
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, b.abs().max().item()))


def test_merge_batch_norm_parametrized_bias_and_conv1d():
    torch.manual_seed(0)

    class Scale(nn.Module):
        def forward(self, b):
            return 2 * b

        def right_inverse(self, b):
            return b / 2

    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2)
    parametrize.register_parametrization(model[0], "bias", Scale())
    parametrizations.weight_norm(model[0])
    x = torch.randn(2, 3, 7)
    merged = xattr.merge_batch_norm(model)
    assert isinstance(merged.get_submodule("1"), nn.Identity)
    assert torch.allclose(merged(x), model(x), atol=1e-5)
    assert parametrize.is_parametrized(model[0], "bias")


# ---------------------------------------------------------------- randomization_check


def _mlp(kind=None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    if kind is not None:
        for i in (0, 2):
            _parametrize(model[i], kind)
    return model.eval()


def _saliency(m):
    return xattr.saliency(xattr.target(m, 1), abs=False)


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "orthogonal"])
def test_randomization_lists_user_layers_and_changes_parametrized_weights(kind):
    model, x = _mlp(kind), torch.rand(3, 16, generator=torch.Generator().manual_seed(2))
    before = _snapshot(model)
    r = metrics.randomization_check(model, _saliency, x, mode="independent", generator=0, similarity=("spearman",))
    assert r.layers == ["2", "0"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    work = copy.deepcopy(model)
    _reinit(work[0], 123)
    assert (work[0].weight - model[0].weight).abs().max() > 0.05  # the effective weight is new
    assert (work[0].bias - model[0].bias).abs().max() > 0.05
    plain = copy.deepcopy(_mlp())
    _reinit(plain[0], 123)  # the same seed on the unparametrized layer
    w, fresh = work[0].weight.detach(), plain[0].weight.detach()
    assert torch.allclose(work[0].bias, plain[0].bias)
    if kind == "weight_norm":  # g = |w|, v = w: the plain layer's new weight itself
        assert torch.allclose(w, fresh, atol=1e-6)
    elif kind == "spectral_norm":  # the new weight over its largest singular value, estimated (eval mode)
        scale = (fresh.norm() / w.norm()).item()
        assert torch.allclose(w * scale, fresh, atol=1e-5)
        assert abs(torch.linalg.matrix_norm(w, 2).item() - 1) < 0.03  # 15 power iterations, as at registration
    else:  # orthogonal rows
        assert torch.allclose(w.T @ w, torch.eye(w.shape[1]), atol=1e-5)  # (32, 16): orthonormal columns


def test_randomization_weight_norm_scores_equal_the_plain_models():
    x = torch.rand(3, 16, generator=torch.Generator().manual_seed(2))
    kwargs = dict(mode="cascading", generator=0, similarity=("spearman", "topk"))
    plain = metrics.randomization_check(_mlp(), _saliency, x, **kwargs)
    normed = metrics.randomization_check(_mlp("weight_norm"), _saliency, x, **kwargs)
    assert normed.layers == plain.layers
    for k in plain.scores:
        assert torch.allclose(normed.scores[k], plain.scores[k], atol=1e-5)


def test_randomization_refuses_hook_style_norms_internal_modules_and_torchscript():
    x = torch.rand(3, 16)
    for kind in ("old_weight_norm", "old_spectral_norm", "prune"):
        with pytest.raises(ValueError, match="hook-style"):
            metrics.randomization_check(_mlp(kind), _saliency, x, generator=0)
    with pytest.raises(ValueError, match="not a layer of its own"):
        metrics.randomization_check(_mlp("weight_norm"), _saliency, x, layers=["0.parametrizations.weight"], generator=0)
    with pytest.raises(ValueError, match="TorchScript"):
        metrics.randomization_check(torch.jit.script(_mlp()), _saliency, x, generator=0)
    # a hook-style layer left out of `layers`: the model is still copied and checked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(16, 32)), nn.ReLU(), nn.Linear(32, 4)).eval()
    r = metrics.randomization_check(model, _saliency, x, layers=["2"], generator=0, similarity=("spearman",))
    assert r.layers == ["2"]


# ---------------------------------------------------------------- LRP under autocast


def _conv_net(padding) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=padding), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 36, 3),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("padding", [1, "same"])
def test_lrp_rules_under_bfloat16_autocast(padding):
    model = _conv_net(padding)
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    R = xattr.rule
    composites = {
        "epsilon_plus": R.epsilon_plus(),
        "gamma": {**R.lrp_rules(), torch.conv2d: R.Gamma(0.25), F.batch_norm: R.Gamma(0.25)},
        "alpha2beta1": {**R.lrp_rules(), torch.conv2d: R.AlphaBeta(2.0, 1.0)},
        "positive": {**R.lrp_rules(), torch.conv2d: R.PositiveWeights()},
        "box": R.epsilon_gamma_box("0", 0.0, 1.0),
        "wsquare": {**R.lrp_rules(), "0": R.WSquare(), torch.conv2d: R.Gamma(0.25)},
        "flat": {**R.lrp_rules(), "0": R.Flat(), torch.conv2d: R.ZPlus()},
    }
    for name, composite in composites.items():
        ref = xattr.lrp(xattr.target(model, 1), composite=composite)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = xattr.lrp(xattr.target(model, 1), composite=composite)(x)
        err = ((got.float() - ref).norm() / ref.norm()).item()
        assert err < 0.03, (name, err)


# ---------------------------------------------------------------- LIME and the default dtype


def test_lime_and_kernel_shap_draws_do_not_depend_on_the_default_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x = torch.randn(4, 6)
    f = xattr.target(model, 1)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])

    def run():
        return [
            xattr.lime(f, n_samples=30, generator=0)(x),
            xattr.lime(f, n_samples=30, generator=0, feature_mask=mask)(x),
            xattr.kernel_shap(f, n_samples=30, generator=0)(x),
            xattr.kernel_shap(f, n_samples=300, generator=0)(x),
        ]

    default = run()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wide = run()
    finally:
        torch.set_default_dtype(old)
    for a, b in zip(default, wide):
        assert torch.allclose(a.double(), b.double(), atol=1e-6)
