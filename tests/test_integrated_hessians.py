"""Integrated Hessians against a slow per-point Hessian loop and against IG of IG (jacrev of
integrated gradients), closed forms, the completeness and symmetry properties, feature groups,
both Hessian-vector product backends, and argument errors."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import jacrev, vmap

import xattr

D = torch.float64


def mlp(seed: int, d_in: int = 4, hidden: int = 6, act=nn.Softplus) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, 1)).to(D).eval()


def inputs(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def reference(f1, x, b, n_steps, method):
    """One example at a time, every node (a_k, a_l) of the full n x n grid (duplicates and
    all), the Hessian and gradient of the one-example function f1 by torch.autograd.functional:
    Gamma = sum_kl w_k w_l [a_k a_l (d d^T) * H(p) + diag(d * grad f(p))], p = b + a_k a_l d."""
    alphas, weights = xattr.quadrature(method, n_steps)
    out = []
    for xi, bi in zip(x, b):
        d = xi - bi
        gamma = torch.zeros(len(d), len(d), dtype=D)
        for ak, wk in zip(alphas, weights):
            for al, wl in zip(alphas, weights):
                p = bi + ak * al * d
                h, g = hessian(f1, p), jacobian(f1, p)
                gamma += wk * wl * (ak * al * torch.outer(d, d) * h + torch.diag(d * g))
        out.append(gamma)
    return torch.stack(out)


def ig_of_ig(f, x, b, n_steps, method):
    """The definition as a composition: the outer IG of the inner IG, its Jacobian by jacrev at
    each outer node, batched with vmap; Gamma_ij = d_i sum_k w_k dIG_j/dz_i(b + a_k d)."""
    ig = xattr.integrated_gradients(f, n_steps=n_steps, method=method)
    alphas, weights = (torch.as_tensor(v, dtype=D) for v in xattr.quadrature(method, n_steps))
    d = x - b

    def per_example(z, bz):
        return ig(z[None], baselines=bz[None])[0]

    total = torch.zeros(x.shape + x.shape[1:], dtype=D)
    for a, w in zip(alphas, weights):
        jac = vmap(jacrev(per_example))(b + a * d, b)  # (B, j, i)
        total += w * jac.transpose(1, 2)
    return d[:, :, None] * total


@pytest.mark.parametrize("method, n_steps", [("gausslegendre", 5), ("riemann_middle", 4), ("riemann_trapezoid", 4)])
def test_matches_slow_per_point_hessian_loop(method, n_steps):
    model = mlp(0, act=nn.Tanh)
    f = xattr.target(model, 0)
    x, b = inputs(0, (3, 4)), inputs(1, (3, 4))
    gamma = xattr.integrated_hessians(f, baselines=b, n_steps=n_steps, method=method)(x)
    ref = reference(lambda v: model(v[None])[0, 0], x, b, n_steps, method)
    torch.testing.assert_close(gamma, ref, atol=1e-12, rtol=1e-10)


def test_equals_integrated_gradients_of_integrated_gradients():
    model = mlp(1)
    f = xattr.target(model, 0)
    x, b = inputs(2, (3, 4)), inputs(3, (3, 4))
    gamma = xattr.integrated_hessians(f, baselines=b, n_steps=6)(x)
    torch.testing.assert_close(gamma, ig_of_ig(f, x, b, 6, "gausslegendre"), atol=1e-12, rtol=1e-10)


def test_product_of_two_features():
    # f = x1 x2 from a baseline b, d = x - b: Gamma_12 = Gamma_21 = d1 d2 / 4,
    # Gamma_11 = d1 (b2 + d2 / 4), Gamma_22 = d2 (b1 + d1 / 4); exact for any Gauss rule
    x = torch.tensor([[2.0, 3.0], [-1.0, 0.5]], dtype=D)
    b = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=D)
    gamma = xattr.integrated_hessians(lambda v: v[:, 0] * v[:, 1], baselines=b, n_steps=2)(x)
    d = x - b
    expected = torch.stack([
        torch.stack([d[:, 0] * (b[:, 1] + d[:, 1] / 4), d[:, 0] * d[:, 1] / 4], 1),
        torch.stack([d[:, 0] * d[:, 1] / 4, d[:, 1] * (b[:, 0] + d[:, 0] / 4)], 1),
    ], 1)  # fmt: skip
    torch.testing.assert_close(gamma, expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(gamma[0], torch.full((2, 2), 1.5, dtype=D), atol=1e-14, rtol=0)  # x1 x2 / 4 = 6 / 4


def test_cubic_and_quadratic_closed_forms():
    # f = x1^2 x2, zero baseline: Gamma_11 = 4/9, Gamma_12 = Gamma_21 = 2/9, Gamma_22 = 1/9 (times x1^2 x2)
    x = torch.tensor([[1.5, -2.0], [0.5, 3.0]], dtype=D)
    gamma = xattr.integrated_hessians(lambda v: v[:, 0] ** 2 * v[:, 1], n_steps=3)(x)
    unit = (x[:, 0] ** 2 * x[:, 1])[:, None, None]
    torch.testing.assert_close(gamma, unit * torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=D) / 9, atol=1e-13, rtol=0)
    # f = x^T A x / 2, zero baseline: Gamma_ij = x_i x_j A_ij / 4 + [i = j] x_i (A x)_i / 4
    a = inputs(5, (3, 3))
    a = a + a.T
    x = inputs(6, (4, 3))
    gamma = xattr.integrated_hessians(lambda v: 0.5 * torch.einsum("bi,ij,bj->b", v, a, v), n_steps=2)(x)
    expected = x[:, :, None] * x[:, None, :] * a / 4 + torch.diag_embed(x * (x @ a) / 4)
    torch.testing.assert_close(gamma, expected, atol=1e-13, rtol=0)


def test_additive_model_has_no_interactions_and_diagonal_ig():
    def f(v):
        return torch.sin(v[:, 0]) + v[:, 1] ** 3 + torch.tanh(2 * v[:, 2])

    x = inputs(7, (3, 3))
    gamma = xattr.integrated_hessians(f, n_steps=24)(x)
    off = gamma * (1 - torch.eye(3, dtype=D))
    assert (off == 0).all()  # autograd has no path between the features: exactly zero
    ig = xattr.integrated_gradients(f, n_steps=24)(x)
    torch.testing.assert_close(torch.diagonal(gamma, dim1=1, dim2=2), ig, atol=1e-10, rtol=0)
    assert ig.abs().min() > 1e-3


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3), act=st.sampled_from([nn.Softplus, nn.Tanh, nn.GELU]))
def test_row_sums_are_ig_total_is_the_output_change_and_gamma_is_symmetric(seed, batch, act):
    model = mlp(seed, act=act)
    f = xattr.target(model, 0)
    x, b = inputs(seed, (batch, 4)), inputs(seed + 1, (batch, 4))
    gamma = xattr.integrated_hessians(f, baselines=b, n_steps=20)(x)
    ig = xattr.integrated_gradients(f, baselines=b, n_steps=20)(x)
    torch.testing.assert_close(gamma.sum(-1), ig, atol=1e-8, rtol=1e-7)
    with torch.no_grad():
        change = f(x) - f(b)
    torch.testing.assert_close(gamma.sum((1, 2)), change, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(gamma, gamma.transpose(1, 2), atol=1e-12, rtol=1e-10)
    assert (gamma * (1 - torch.eye(4, dtype=D))).abs().max() > 1e-4  # real interactions, not a diagonal


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d_in=st.integers(2, 4))
def test_random_additive_models_have_zero_off_diagonal(seed, d_in):
    torch.manual_seed(seed)
    parts = nn.ModuleList(nn.Sequential(nn.Linear(1, 5), nn.Softplus(), nn.Linear(5, 1)) for _ in range(d_in)).to(D)

    def f(v):
        return sum(p(v[:, k : k + 1])[:, 0] for k, p in enumerate(parts))

    x, b = inputs(seed, (2, d_in)), inputs(seed + 2, (2, d_in))
    gamma = xattr.integrated_hessians(f, baselines=b, n_steps=12)(x)
    off = gamma * (1 - torch.eye(d_in, dtype=D))
    assert off.abs().max() == 0
    torch.testing.assert_close(gamma.sum((1, 2)), f(x).detach() - f(b).detach(), atol=1e-8, rtol=1e-7)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 40), n_groups=st.sampled_from([None, 2, 3]))
def test_batch_equals_per_example_loop_and_chunk_size_changes_nothing(seed, chunk, n_groups):
    f = xattr.target(mlp(seed), 0)
    x, b = inputs(seed, (3, 4)), inputs(seed + 3, (3, 4))
    features = None if n_groups is None else torch.arange(4) % n_groups
    ih = xattr.integrated_hessians(f, n_steps=5, features=features)
    whole = ih(x, baselines=b)
    for i in range(3):
        torch.testing.assert_close(ih(x[i : i + 1], baselines=b[i : i + 1])[0], whole[i], atol=1e-13, rtol=1e-11)
    chunked = xattr.integrated_hessians(f, n_steps=5, features=features, chunk_size=chunk)(x, baselines=b)
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=1e-11)


def test_feature_groups_and_subsets_are_block_sums():
    f = xattr.target(mlp(8, d_in=6), 0)
    x = inputs(8, (2, 6))
    full = xattr.integrated_hessians(f, n_steps=8)(x)
    ids = torch.tensor([1, 0, 1, -1, 2, 0])
    grouped = xattr.integrated_hessians(f, n_steps=8, features=ids)(x)
    assert grouped.shape == (2, 3, 3)
    for g in range(3):
        for h in range(3):
            block = full[:, ids == g][:, :, ids == h].sum((1, 2))
            torch.testing.assert_close(grouped[:, g, h], block, atol=1e-13, rtol=1e-11)
    # a subset: features 4 and 1 only (their ids 0 and 1), the rest left out
    subset = xattr.integrated_hessians(f, n_steps=8, features=torch.tensor([-1, 1, -1, -1, 0, -1]))(x)
    torch.testing.assert_close(subset, full[:, [4, 1]][:, :, [4, 1]], atol=1e-13, rtol=1e-11)


def test_image_shaped_inputs_keep_their_feature_shape():
    torch.manual_seed(9)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(2 * 2 * 2, 1)).to(D).eval()
    x = inputs(9, (2, 1, 3, 3))
    gamma = xattr.integrated_hessians(xattr.target(net, 0), n_steps=4)(x)
    assert gamma.shape == (2, 1, 3, 3, 1, 3, 3)
    flat = xattr.integrated_hessians(lambda v: net(v.reshape(-1, 1, 3, 3))[:, 0], n_steps=4)(x.reshape(2, 9))
    torch.testing.assert_close(gamma.reshape(2, 9, 9), flat, atol=1e-13, rtol=1e-11)
    # one group per image row
    rows = xattr.integrated_hessians(xattr.target(net, 0), n_steps=4, features=torch.arange(3)[:, None].expand(1, 3, 3))(x)
    ids = torch.arange(3).repeat_interleave(3)
    for g in range(3):
        for h in range(3):
            torch.testing.assert_close(rows[:, g, h], flat[:, ids == g][:, :, ids == h].sum((1, 2)), atol=1e-13, rtol=1e-11)


def test_inside_torch_func_transforms_the_same_numbers_and_differentiable():
    model = mlp(10)
    f = xattr.target(model, 0)
    x = inputs(10, (3, 4))
    ih = xattr.integrated_hessians(f, n_steps=5)
    eager = ih(x)
    assert not eager.requires_grad
    batched = vmap(lambda v: ih(v[None])[0])(x)  # the forward-over-reverse backend
    torch.testing.assert_close(batched, eager, atol=1e-13, rtol=1e-11)
    chunked = vmap(lambda v: xattr.integrated_hessians(f, n_steps=5, chunk_size=3)(v[None])[0])(x)
    torch.testing.assert_close(chunked, eager, atol=1e-13, rtol=1e-11)
    # d(sum of interactions)/dx by torch.func.grad against central differences
    grad = torch.func.grad(lambda v: ih(v).sum())(x)
    eps, probe = 1e-6, inputs(11, (3, 4))
    numeric = (ih(x + eps * probe).sum() - ih(x - eps * probe).sum()) / (2 * eps)
    torch.testing.assert_close((grad * probe).sum(), numeric, atol=1e-7, rtol=1e-6)


def test_pass_through_arguments_follow_their_examples():
    model = mlp(12)

    def f(v, scale):
        return model(v)[:, 0] * scale

    x, scale = inputs(12, (3, 4)), torch.tensor([1.0, -2.0, 0.5], dtype=D)
    gamma = xattr.integrated_hessians(f, n_steps=4, chunk_size=5)(x, scale)
    plain = xattr.integrated_hessians(xattr.target(model, 0), n_steps=4)(x)
    torch.testing.assert_close(gamma, plain * scale[:, None, None], atol=1e-13, rtol=1e-11)


def test_float32_and_nothing_of_the_users_changes():
    model = mlp(13).float().train()
    model.eval()
    x = inputs(13, (2, 4)).float()
    before = x.clone()
    gamma = xattr.integrated_hessians(xattr.target(model, 0), n_steps=6)(x)
    assert gamma.dtype == torch.float32 and torch.isfinite(gamma).all()
    assert torch.equal(x, before) and not x.requires_grad and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_relu_models_warn_and_have_zero_interactions_softened_does_not_warn():
    torch.manual_seed(14)
    relu = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).to(D).eval()
    x = inputs(14, (2, 3))
    with pytest.warns(UserWarning, match="softened"):
        gamma = xattr.integrated_hessians(xattr.target(relu, 0), n_steps=8)(x)
    assert (gamma * (1 - torch.eye(3, dtype=D))).abs().max() == 0  # NOTE: [Piecewise-linear models have no interactions]
    soft = xattr.softened(relu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smooth = xattr.integrated_hessians(xattr.target(soft, 0), n_steps=16)(x)
    assert (smooth * (1 - torch.eye(3, dtype=D))).abs().max() > 1e-4
    ig = xattr.integrated_gradients(xattr.target(soft, 0), n_steps=16)(x)
    torch.testing.assert_close(smooth.sum(-1), ig, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(method="simpson"), ValueError, "unknown method"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(argnums=(0, 1)), TypeError, "argnums must be an int"),
        (dict(features=torch.tensor([0.0, 1.0])), TypeError, "integer tensor"),
        (dict(features=[0, 1]), TypeError, "integer tensor"),
        (dict(features=torch.tensor([-1, -1])), ValueError, "no feature"),
    ],
)
def test_bad_arguments_are_refused_when_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        xattr.integrated_hessians(lambda v: v.sum(1), **kwargs)


def test_bad_inputs_are_refused_when_called():
    with pytest.raises(TypeError, match="integrated_hessians"):
        xattr.integrated_hessians(lambda v: v.sum(1).double())(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="does not broadcast"):
        xattr.integrated_hessians(lambda v: v.sum(1), features=torch.tensor([0, 1]))(inputs(0, (2, 3)))
    with pytest.raises(ValueError, match="empty"):
        xattr.integrated_hessians(lambda v: v.sum(1), features=torch.tensor([0, 2, 2]))(inputs(0, (2, 3)))
    with pytest.raises(ValueError, match="one number for the whole batch"):
        xattr.integrated_hessians(lambda v: (v**2).sum())(inputs(0, (2, 3)))
    with pytest.raises(TypeError, match="one tensor"):
        xattr.integrated_hessians(lambda v: v["a"].sum(1))({"a": inputs(0, (2, 3))})


def test_per_example_targets_and_progress_bar_give_the_same_numbers():
    torch.manual_seed(15)
    net = nn.Sequential(nn.Linear(4, 6), nn.Softplus(), nn.Linear(6, 3)).to(D).eval()
    x, labels = inputs(15, (3, 4)), torch.tensor([2, 0, 1])
    gamma = xattr.integrated_hessians(xattr.target(net, labels), n_steps=5, chunk_size=4)(x)
    for i in range(3):
        alone = xattr.integrated_hessians(xattr.target(net, int(labels[i])), n_steps=5)(x[i : i + 1])
        torch.testing.assert_close(alone[0], gamma[i], atol=1e-13, rtol=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without tqdm: a warning and no bar
        shown = xattr.integrated_hessians(xattr.target(net, labels), n_steps=5, chunk_size=4, show_progress=True)(x)
    torch.testing.assert_close(shown, gamma, atol=0, rtol=0)


def test_compiled_models_and_compiled_calls_give_the_same_numbers():
    """Regression: autograd cannot differentiate a compiled graph twice, so the reverse-over-reverse
    path failed with "aot_autograd does not currently support double backward" both on a
    torch.compile'd model and inside a torch.compile'd call (past a graph break dynamo compiled the
    model's forward on its own). NOTE: [Two Hessian-vector product backends]."""
    pytest.importorskip("torch._dynamo")
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this platform")
    model = mlp(16)
    x, base = inputs(16, (3, 4)), inputs(17, (3, 4)) * 0.1
    eager = xattr.integrated_hessians(xattr.target(model, 0), baselines=base, n_steps=4)(x)
    assert (eager * (1 - torch.eye(4, dtype=D))).abs().max() > 1e-4  # interactions to compare
    torch._dynamo.reset()
    try:
        compiled_model = torch.compile(model, backend="aot_eager")
        on_compiled = xattr.integrated_hessians(xattr.target(compiled_model, 0), baselines=base, n_steps=4)(x)
        torch.testing.assert_close(on_compiled, eager, atol=1e-12, rtol=1e-10)
        torch._dynamo.reset()
        call = torch.compile(xattr.integrated_hessians(xattr.target(model, 0), baselines=base, n_steps=4), backend="aot_eager")
        torch.testing.assert_close(call(x), eager, atol=1e-12, rtol=1e-10)
    finally:
        torch._dynamo.reset()


def classes(seed: int, d_in: int = 4, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 6), nn.Tanh(), nn.Linear(6, n_out)).to(D).eval()


@pytest.mark.parametrize("form", ["list", "per_example"])
def test_many_outputs_match_the_slow_loop_for_each_example_and_output(form):
    # a K axis after the batch: Gamma[b, k] is the per-point Hessian loop of output idx[b, k]
    model = classes(7)
    x, b = inputs(7, (3, 4)), inputs(8, (3, 4))
    idx = torch.tensor([[2, 0], [1, 1], [0, 2]]) if form == "per_example" else torch.tensor([[2, 0]] * 3)
    many = xattr.outputs(idx if form == "per_example" else [2, 0])
    gamma = xattr.integrated_hessians(xattr.target(model, many), baselines=b, n_steps=3, method="riemann_middle")(x)
    assert gamma.shape == (3, 2, 4, 4)
    for i in range(3):
        for j in range(2):
            f1 = lambda v, k=int(idx[i, j]): model(v[None])[0, k]  # noqa: E731
            ref = reference(f1, x[i : i + 1], b[i : i + 1], 3, "riemann_middle")
            torch.testing.assert_close(gamma[i, j], ref[0], atol=1e-12, rtol=1e-10)


@settings(max_examples=5, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(0, 3),
    ks=st.lists(st.integers(-3, 2), min_size=1, max_size=3),
    grouped=st.booleans(),
)
def test_many_outputs_equal_single_output_runs(seed, batch, ks, grouped):
    # the K axis is a loop over single targets, with or without feature groups; the row sums
    # of each output's interactions are that output's integrated gradients
    model = classes(seed)
    x = inputs(seed, (batch, 4))
    features = torch.tensor([0, 1, 0, -1]) if grouped else None
    ih = lambda t: xattr.integrated_hessians(xattr.target(model, t), n_steps=4, features=features)  # noqa: E731
    gamma = ih(xattr.outputs(ks))(x)
    assert gamma.shape == (batch, len(ks)) + ((2, 2) if grouped else (4, 4))
    for j, k in enumerate(ks):
        torch.testing.assert_close(gamma[:, j], ih(k)(x), atol=1e-12, rtol=1e-10)
    if not grouped:
        ig = xattr.integrated_gradients(xattr.target(model, xattr.outputs(ks)), n_steps=24)(x)
        torch.testing.assert_close(gamma.sum(-1), ig, atol=2e-3, rtol=2e-3)


def test_many_outputs_inside_torch_func_transforms():
    # the functional backend (under grad) and the eager one agree per output, and the gradient
    # of the K-axis interactions is the sum of the single outputs' gradients
    model = classes(9)
    x = inputs(9, (2, 4))
    many = xattr.integrated_hessians(xattr.target(model, xattr.outputs([1, 2])), n_steps=3)
    ones = [xattr.integrated_hessians(xattr.target(model, k), n_steps=3) for k in (1, 2)]
    grad = torch.func.grad(lambda z: many(z).sum())(x)
    want = sum(torch.func.grad(lambda z, one=one: one(z).sum())(x) for one in ones)
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=1e-10)
    per_example = vmap(lambda z: many(z[None])[0])(x)
    torch.testing.assert_close(per_example, many(x), atol=1e-12, rtol=1e-10)
