"""Attributions inside the user's own torch.func transforms and autograd: repeated transforms,
metrics under `grad`, and second derivatives through rules, each against central differences."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

import xattr
import xattr.metrics as M


def _model(act=nn.Softplus):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 3)).double().eval()


X = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 2, 1])
W = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def _central(fun, x, eps=1e-6):
    """Central differences of a scalar function of one tensor."""
    g = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = eps
        step = step.view_as(x)
        g.view(-1)[i] = (fun(x + step) - fun(x - step)) / (2 * eps)
    return g


def _central_params(fun, params):
    return {k: _central(lambda v, k=k: fun({**params, k: v}), p) for k, p in params.items()}


def _assert_params_close(got, want):
    scale = max(w.abs().max() for w in want.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6 * scale, rtol=1e-5)


def _params(model):
    return {k: v.detach() for k, v in model.named_parameters()}


def _bound(model, params, t):
    return xattr.target(lambda v: functional_call(model, params, (v,)), t)


@pytest.mark.parametrize(
    "method",
    [
        lambda f: xattr.saliency(f, abs=False),
        lambda f: xattr.integrated_gradients(f, n_steps=6),
        lambda f: xattr.feature_ablation(f),
    ],
    ids=["saliency", "integrated_gradients", "feature_ablation"],
)
def test_grad_twice_with_one_target_tensor(method):
    # the target's range check and gather index were memoised from inside the first grad, as
    # tensors wrapped at its level: the second grad failed with an internal assert in functorch
    model = _model()
    loss = lambda v: (method(xattr.target(model, LABELS))(v) * W).sum()
    first = grad(loss)(X)
    second = grad(loss)(X)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(second, _central(loss, X), atol=1e-7, rtol=1e-6)
    after = method(xattr.target(model, LABELS))(X)  # and at top level after it
    torch.testing.assert_close(after, method(xattr.target(model, LABELS.clone()))(X))


def test_parameter_grad_twice_with_one_target_and_many_outputs():
    model = _model()
    params = _params(model)
    k_outputs = xattr.outputs(torch.tensor([2, 0]))
    weights = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def loss(p):
        one = xattr.input_x_gradient(_bound(model, p, LABELS))(X)
        many = xattr.saliency(_bound(model, p, k_outputs), abs=False)(X)
        return (one * W).sum() + (many * weights).sum()

    grad(loss)(params)
    _assert_params_close(grad(loss)(params), _central_params(loss, params))


def _perturb(v, generator=None):
    noise = 0.5 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
    return noise, v - noise


def test_grad_of_infidelity():
    # its model calls ran under no_grad and the attributions were detached: grad gave zeros
    model = _model()
    params = _params(model)

    def infidelity(p, v):
        f = _bound(model, p, LABELS)
        return M.infidelity(f, xattr.saliency(f, abs=False), _perturb, n_perturb_samples=4, generator=0)(v).sum()

    _assert_grads_are_central_differences(infidelity, params, smallest_largest=1e-4)


def test_grad_of_sensitivity_max():
    # the attributions were detached inside the transform: grad gave zeros
    model = _model()
    params = _params(model)

    def sensitivity(p, v):
        attr_fn = xattr.integrated_gradients(_bound(model, p, LABELS), n_steps=4)
        return M.sensitivity_max(attr_fn, v, n_perturb_samples=3, perturb_radius=0.1, generator=0).sum()

    _assert_grads_are_central_differences(sensitivity, params, smallest_largest=1e-3)


def _assert_grads_are_central_differences(metric, params, smallest_largest: float):
    """grad of ``metric(params, x)`` in the parameters (its largest entry above
    ``smallest_largest``: not silently zero) and in x, against central differences at X."""
    got = grad(metric)(params, X)
    assert max(g.abs().max() for g in got.values()) > smallest_largest
    _assert_params_close(got, _central_params(lambda p: metric(p, X), params))
    by_x = lambda v: metric(params, v)  # noqa: E731
    torch.testing.assert_close(grad(by_x)(X), _central(by_x, X), atol=1e-7, rtol=1e-5)


def test_metrics_stay_detached_at_top_level():
    model = _model()
    f = xattr.target(model, LABELS)
    x = X.clone().requires_grad_()
    assert not M.infidelity(f, xattr.saliency(f), _perturb, n_perturb_samples=2, generator=0)(x).requires_grad
    assert not M.sensitivity_max(xattr.saliency(f), x, n_perturb_samples=2, generator=0).requires_grad


def _relu_tanh_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()


def test_second_backward_through_guided_rules_is_refused():
    # with create_graph=True the second derivative followed the guided rule at the ReLU (a hook on
    # the ReLU's node): 56% off central differences, silently
    model = _relu_tanh_net()
    ruled = xattr.target(xattr.rules(model, {nn.ReLU: xattr.rule.Guided()}), LABELS)
    x = X.clone().requires_grad_()
    (first,) = torch.autograd.grad(ruled(x).sum(), x)  # first order: allowed
    torch.testing.assert_close(first, xattr.guided_backprop(xattr.target(model, LABELS))(X))
    with pytest.raises(NotImplementedError, match="first-order only"):
        torch.autograd.grad(ruled(x).sum(), x, create_graph=True)


def test_grad_of_integrated_gradients_delta():
    # the gap's f(x) - f(b) ran under no_grad inside the transform: its gradient was left out,
    # and grad of the delta came back as the gradient of the attributions' sum alone
    model = _model(nn.Tanh)
    params = _params(model)
    baselines = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def delta(p, v, b):
        ig = xattr.integrated_gradients(_bound(model, p, LABELS), n_steps=2, method="riemann_left", return_delta=True)
        return (ig(v, baselines=b)[1] * torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)).sum()

    for argnum, arg in ((1, X), (2, baselines)):
        fun = lambda a: delta(params, *((a, baselines) if argnum == 1 else (X, a)))
        torch.testing.assert_close(grad(fun)(arg), _central(fun, arg), atol=1e-8, rtol=1e-6)
    _assert_params_close(grad(delta)(params, X, baselines), _central_params(lambda p: delta(p, X, baselines), params))
    split = xattr.at_layer(_bound(model, params, LABELS), model[1])
    layer_delta = lambda v: xattr.layer_integrated_gradients(split, n_steps=2, method="riemann_left", return_delta=True)(v)[1].sum()
    torch.testing.assert_close(grad(layer_delta)(X), _central(layer_delta, X), atol=1e-8, rtol=1e-6)


def test_grad_of_concentration_and_deletion_metrics():
    # the attributions were detached and the deletion curve's model calls ran under no_grad
    # inside the transform: grad of sparseness and of the deletion AUC came back zero
    model = _model()
    params = _params(model)
    fixed = xattr.saliency(xattr.target(model, LABELS))  # the ranking the curve follows, held fixed

    def sparseness(p):
        return (M.sparseness(xattr.saliency(_bound(model, p, LABELS), abs=False), X) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum()

    def deletion_auc(p):
        return M.deletion(_bound(model, p, LABELS), fixed)(X).auc.sum()

    for fun in (sparseness, deletion_auc):
        got = grad(fun)(params)
        assert max(g.abs().max() for g in got.values()) > 1e-3
        _assert_params_close(got, _central_params(fun, params))
# tests that need /tmp/ut_scratch/rules_patch.diff (xattr/_src/rules.py); append to tests/test_user_transforms.py

@pytest.mark.parametrize(
    "mapping",
    [
        {nn.ReLU: xattr.rule.Guided()},  # a hook on the ReLU's node
        {nn.ReLU: xattr.rule.Deconv()},  # an autograd.Function
        {nn.Linear: xattr.rule.Epsilon()},  # a hook scaling the linear layer's output gradient
    ],
    ids=["guided", "deconvolution", "epsilon"],
)
def test_second_backward_through_rules_is_refused(mapping):
    # with create_graph=True the second derivative followed the rules: guided and deconvolution
    # were 56% and 58% off central differences, silently
    model = _relu_tanh_net()
    ruled = xattr.target(xattr.rules(model, mapping), LABELS)
    x = X.clone().requires_grad_()
    (first,) = torch.autograd.grad(ruled(x).sum(), x)  # first order: allowed
    torch.testing.assert_close(first, xattr.grad(ruled)(X))
    with pytest.raises(NotImplementedError, match="first-order only"):
        torch.autograd.grad(ruled(x).sum(), x, create_graph=True)


def test_rules_around_an_attribution_function_refuse_a_second_derivative():
    # rules(saliency(f)) takes its gradient inside the call, so the one transform it allowed at
    # entry was a second derivative through the rules: 56% off central differences, silently
    model = _relu_tanh_net()
    guided = xattr.rules(xattr.saliency(xattr.target(model, 1), abs=False), {nn.ReLU: xattr.rule.Guided()})
    torch.testing.assert_close(guided(X), xattr.guided_backprop(xattr.target(model, 1))(X))
    per_example = lambda v: guided(v[None])[0]
    torch.testing.assert_close(torch.func.vmap(per_example)(X), guided(X))  # vmap alone: first order
    with pytest.raises(NotImplementedError, match="first-order only"):
        grad(lambda v: (guided(v) * W).sum())(X)
    with pytest.raises(NotImplementedError, match="first-order only"):
        torch.func.jacrev(guided)(X)




@pytest.mark.parametrize("method", [xattr.lime, xattr.kernel_shap], ids=["lime", "kernel_shap"])
def test_surrogate_methods_refuse_vmap_clearly_and_run_under_grad(method):
    # under vmap they failed deep inside torch (a randomness-mode error, a data-dependent branch);
    # they batch over the examples of one call already
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double().eval()
    fn = method(xattr.target(model, 0), n_samples=40, generator=0)
    with pytest.raises(NotImplementedError, match="vmap"):
        torch.func.vmap(lambda v: fn(v[None])[0])(X)
    # grad with respect to the input goes through the model calls (samples and weights held)
    g = grad(lambda v: fn(v).sum())(X)
    eps, e = 1e-6, torch.zeros_like(X)
    e[1, 2] = eps
    fd = (fn(X + e).sum() - fn(X - e).sum()) / (2 * eps)
    torch.testing.assert_close(g[1, 2], fd, atol=1e-6, rtol=1e-5)


def test_constants_made_inside_grad_are_not_served_after_it():
    """A small constant the perturbation engine caches (masks.constant), made inside ``grad`` as a
    tensor of the transform's level, was served to later calls: Shapley sampling with a chunk
    size then saw its model return 6 rows for 3 (found by test order: this file, then
    test_std_error.py)."""
    model = _model()
    loss = lambda v: (xattr.feature_ablation(xattr.target(model, LABELS))(v) * W).sum()  # noqa: E731
    grad(loss)(X)
    f = xattr.target(model, 1)
    runs = [xattr.shapley_value_sampling(f, n_samples=4, generator=1, chunk_size=c)(X) for c in (None, 1, 3, 13)]
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=1e-12, atol=1e-14)
