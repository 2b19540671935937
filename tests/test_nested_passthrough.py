"""Pass-through arguments under nested methods (NOTE: [Shared pass-through tensors under nesting]).

A pass-through tensor without a batch axis is shared by every example and must reach the model
unchanged at every level of a composition, even when its length equals the rows an inner method
sees (S copies x B examples). The reference binds it in a closure, where nothing can tile it.
Per-example pass-through tensors must still follow their examples. Also: argnums naming one
argument twice, and attributed leaves that are not batched tensors, are refused clearly.
"""

import pytest
import torch
from torch import nn

import xattr
import xattr.metrics

B, S = 2, 3  # S * B = 6 rows inside the noise tunnel: the length of the shared tensor below


def _close(a, b, what=""):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@pytest.fixture
def setup():
    torch.manual_seed(0)
    lin = nn.Linear(4, 6)
    x, w = torch.rand(B, 4), torch.rand(S * B) + 0.5

    def model(x, w):  # w: one weight vector for all examples (no batch axis), summed
        return lin(x)[:, 0] * w.sum()

    def elementwise(x, w):  # w used elementwise against a (rows, 6) activation
        return (torch.tanh(lin(x)) * w).sum(1)

    return lin, x, w, model, elementwise


def _sg(inner, **kw):
    return xattr.smoothgrad(inner, stdevs=0.1, n_samples=kw.pop("n_samples", S), generator=0, **kw)


D = torch.rand(5, 4)
NESTED = {
    "smoothgrad(ig)": lambda g: _sg(xattr.integrated_gradients(g, n_steps=4)),
    "expectation(ig)": lambda g: xattr.expectation(xattr.integrated_gradients(g, n_steps=4), baselines=D, n_samples=S, generator=0),
    "smoothgrad(deep_lift)": lambda g: _sg(xattr.deep_lift(g)),
    "smoothgrad(feature_ablation)": lambda g: _sg(xattr.feature_ablation(g)),
    "smoothgrad(shapley_value_sampling)": lambda g: _sg(xattr.shapley_value_sampling(g, n_samples=2, generator=0)),
    "vargrad(integrated_gradients)": lambda g: xattr.vargrad(xattr.integrated_gradients(g, n_steps=3), stdevs=0.1, n_samples=S, generator=0),
}


@pytest.mark.parametrize("name", list(NESTED))
@pytest.mark.parametrize("use", ["sum", "elementwise"])
def test_shared_tensor_passes_through_nested_methods_unchanged(setup, name, use):
    _, x, w, model, elementwise = setup
    g = model if use == "sum" else elementwise
    got = NESTED[name](g)(x, w)  # before the fix: 2x-5x the closure's numbers, or a size mismatch
    _close(got, NESTED[name](lambda x: g(x, w))(x), f"{name}, w used as {use}")


@pytest.mark.parametrize("sg_chunk, ig_chunk, length", [(6, None, 6), (6, 12, 6), (None, 24, 12), (4, 8, 4)])
def test_shared_tensor_with_chunk_sizes(setup, sg_chunk, ig_chunk, length):
    # S = 6 copies of B = 2: chunks of sg_chunk // B copies hand `length` rows inwards
    lin, x, _, _, _ = setup
    w = torch.rand(length) + 0.5
    model = lambda x, w: lin(x)[:, 0] * w.sum()
    elementwise = lambda x, w: (torch.tanh(lin(x)[:, :1]) * w).sum(1)
    for g in (model, elementwise):
        make = lambda h: _sg(xattr.integrated_gradients(h, n_steps=4, chunk_size=ig_chunk), n_samples=6, chunk_size=sg_chunk)
        _close(make(g)(x, w), make(lambda x: g(x, w))(x), f"chunk sizes {sg_chunk}, {ig_chunk}")


def test_shared_tensor_in_layer_methods(setup):
    lin, x, w, model, _ = setup
    for make in (
        lambda g: _sg(xattr.layer_integrated_gradients(xattr.at_layer(g, lin), n_steps=4)),
        lambda g: _sg(xattr.conductance(xattr.at_layer(g, lin), n_steps=4)),
        lambda g: _sg(xattr.gradient_x_activation(xattr.at_layer(g, lin))),
    ):
        _close(make(model)(x, w), make(lambda x: model(x, w))(x), "layer method in a noise tunnel")


def test_doubly_nested(setup):
    _, x, w, model, elementwise = setup
    two = lambda g: _sg(_sg(xattr.integrated_gradients(g, n_steps=4), n_samples=2), n_samples=S)
    _close(two(elementwise)(x, w), two(lambda x: elementwise(x, w))(x), "smoothgrad(smoothgrad(ig))")
    w12 = torch.rand(12)  # as long as the rows of the middle call (2 * S * B)
    _close(two(model)(x, w12), two(lambda x: model(x, w12))(x), "a shared tensor as long as the inner rows")


def test_shared_per_call_keyword_under_nesting():
    # a baseline of one example's shape (F,), shared by the batch, with F equal to the rows of
    # the inner noise tunnel (S * B): folded with the call's keywords, it must stay as it is
    torch.manual_seed(1)
    lin = nn.Linear(6, 1)
    f = lambda x: torch.tanh(lin(x))[:, 0]
    x, b = torch.rand(B, 6), torch.rand(6)
    two = _sg(_sg(xattr.integrated_gradients(f, n_steps=4), n_samples=2), n_samples=S)
    _close(two(x, baselines=b), two(x, baselines=b[None]), "(F,) baseline vs (1, F)")


def test_expectation_of_smoothgrad_with_shared_tensor(setup):
    # expectation hands its drawn baselines (per row) to the noise tunnel, which must tile them
    _, x, w, model, elementwise = setup
    make = lambda g: xattr.expectation(_sg(xattr.integrated_gradients(g, n_steps=4)), baselines=D, n_samples=S, generator=0)
    for g in (model, elementwise):
        _close(make(g)(x, w), make(lambda x: g(x, w))(x), "expectation(smoothgrad(ig))")


def test_per_example_tensor_still_follows_its_example(setup):
    lin, x, w, _, _ = setup
    m = torch.rand(B, 4)  # per-example: dim 0 is B

    def model(x, m, w):
        return (torch.tanh(lin(x * m)) * w).sum(1)

    for name, make in NESTED.items():
        for i in range(B):  # example i first: its seeded draws are those it gets alone (NOTE: [Explicit randomness])
            order = [i] + [j for j in range(B) if j != i]
            got = make(model)(x[order], m[order], w)
            alone = make(lambda xi: model(xi, m[i : i + 1], w))(x[i : i + 1])
            _close(got[:1], alone, f"{name}: example {i}")


def test_metrics_with_a_shared_tensor(setup):
    _, x, w, _, elementwise = setup
    ig = lambda g: xattr.integrated_gradients(g, n_steps=4)
    # sensitivity: S perturbed copies of B examples are S * B = 6 rows for the inner method
    got = xattr.metrics.sensitivity_max(ig(elementwise), x, w, n_perturb_samples=S, generator=0)
    want = xattr.metrics.sensitivity_max(ig(lambda x: elementwise(x, w)), x, n_perturb_samples=S, generator=0)
    _close(got, want, "sensitivity_max")
    noise = xattr.metrics.gaussian_noise(0.1)
    got = xattr.metrics.infidelity(elementwise, _sg(ig(elementwise)), noise, n_perturb_samples=4, generator=0)(x, w)
    closure = lambda x: elementwise(x, w)
    want = xattr.metrics.infidelity(closure, _sg(ig(closure)), noise, n_perturb_samples=4, generator=0)(x)
    _close(got, want, "infidelity of a noise tunnel")


@pytest.mark.parametrize("make", [xattr.saliency, xattr.integrated_gradients, xattr.deep_lift, xattr.feature_ablation])
def test_argnums_naming_one_argument_twice(make):
    f = lambda a, b, c: (a.sum(1) + b.sum(1)) * c.sum(1)
    args = (torch.rand(3, 2), torch.rand(3, 4), torch.rand(3, 2))
    with pytest.raises(ValueError, match="more than once"):
        make(f, argnums=(0, 0))
    with pytest.raises(ValueError, match="more than once"):
        make(f, argnums=(0, -3))(*args)  # the same argument once normalised against the call


def _dict_model():
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    return lambda d: lin(d["x"])[:, 1] * d["temp"]


NON_TENSOR = {
    "saliency": lambda f: xattr.saliency(f),
    "integrated_gradients": lambda f: xattr.integrated_gradients(f, n_steps=4),
    "deep_lift": lambda f: xattr.deep_lift(f),
    "feature_ablation": lambda f: xattr.feature_ablation(f),
    "kernel_shap": lambda f: xattr.kernel_shap(f, n_samples=20, generator=0),
    "smoothgrad": lambda f: _sg(xattr.saliency(f)),
}


@pytest.mark.parametrize("name", list(NON_TENSOR))
def test_number_leaf_in_an_attributed_tree(name):
    f = _dict_model()
    with pytest.raises(TypeError, match=r"\['temp'\].*left out of argnums"):
        NON_TENSOR[name](f)({"x": torch.rand(3, 4), "temp": 2.0})


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "feature_ablation"])
def test_zero_dim_tensor_leaf_in_an_attributed_tree(name):
    f = _dict_model()
    with pytest.raises(ValueError, match=r"\['temp'\] of attributed argument 0 is a 0-d tensor"):
        NON_TENSOR[name](f)({"x": torch.rand(3, 4), "temp": torch.tensor(2.0)})
