"""Influence functions against explicit loops with torch.autograd.functional.hessian, a
retraining finite difference on L2 logistic regression, conjugate gradients, Captum's
NaiveInfluenceFunction, the user's model left alone, and argument errors."""

import copy
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import xattr.influence as xi
from xattr.compat.captum import NaiveInfluenceFunction

D = torch.float64
CE = nn.CrossEntropyLoss(reduction="none")


def mlp(seed: int, d_in: int = 3, hidden: int = 4, classes: int = 3, dtype=D) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype).eval()


def data(seed: int, n: int, d_in: int = 3, classes: int = 3, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def reference(model, loss_fn, train, test, names=None, damping=0.0, tol=None, hessian_data=None):
    """One example at a time: torch.autograd.grad per example, the Hessian of the mean loss by
    torch.autograd.functional.hessian over the flattened parameters, then a loop over the
    eigenpairs of H + damping I above tol: -sum_k (g_test . v_k)(g_train . v_k) / l_k."""
    params = dict(model.named_parameters())
    names = list(params) if names is None else names
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss_at(flat, x, y):
        ps = {n: t.reshape(s) for n, s, t in zip(names, shapes, flat.split(sizes))}
        return loss_fn(functional_call(model, ps, (x,)), y).sum()

    def grads(batch):
        rows = []
        for x, y in zip(*batch):
            flat = flat0.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_at(flat, x[None], y[None]), flat)
            rows.append(g.double())
        return torch.stack(rows)

    hx, hy = train if hessian_data is None else hessian_data
    H = torch.autograd.functional.hessian(lambda f: loss_at(f, hx, hy) / len(hx), flat0).double()
    evals, evecs = torch.linalg.eigh((H + H.T) / 2 + damping * torch.eye(len(flat0), dtype=D))
    tol = len(flat0) * torch.finfo(D).eps * evals.abs().max().item() if tol is None else tol
    g_tr, g_te = grads(train), grads(test)
    out = torch.zeros(len(g_te), len(g_tr), dtype=D)
    for i in range(len(g_te)):
        for j in range(len(g_tr)):
            for l, v in zip(evals.tolist(), evecs.T):
                if l > tol:
                    out[i, j] += (g_te[i] @ v) * (g_tr[j] @ v) / l
    return out, H


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_slow_loop_reference(seed):
    model = mlp(seed)
    train, test = data(seed, 12), data(seed + 50, 4)
    ref, _ = reference(model, CE, train, test, damping=0.05)
    got = xi.influence_function(model, CE, train, test, damping=0.05)
    assert got.shape == (4, 12) and got.dtype == D
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-8)


def test_chosen_layers_tol_and_hessian_data_match_the_reference():
    model = mlp(3)
    train, test, hess = data(3, 10), data(4, 3), data(5, 6)
    names = ["2.weight", "2.bias"]
    ref, H = reference(model, CE, train, test, names=names, tol=1e-3, hessian_data=hess)
    for layers in ([model[2]], "2", ["2"]):
        got = xi.influence_function(model, CE, train, test, layers=layers, tol=1e-3, hessian_data=hess)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-8)
    # softmax is unchanged by a shift of all logits: the last layer's H is singular, and tol drops those
    evals = torch.linalg.eigvalsh(H)
    assert (evals.abs() < 1e-12).sum() >= 1 and (evals > 1e-3).sum() < len(evals)


def test_projection_dim_keeps_the_largest_eigenvalues():
    model = mlp(6)
    train, test = data(6, 15), data(7, 2)
    _, H = reference(model, CE, train, test)
    evals, evecs = torch.linalg.eigh(H + 0.1 * torch.eye(len(H), dtype=D))
    got = xi.influence_function(model, CE, train, test, damping=0.1, projection_dim=3)
    # explicit: a loop over the eigenpairs, once over all of them and once over the top three
    ref = torch.zeros(2, 15, dtype=D)
    top = torch.argsort(evals)[-3:]
    full = xi.influence_function(model, CE, train, test, damping=0.1, tol=0.0)
    keep_all = torch.zeros_like(ref)
    grads_tr = _grads(model, train)
    grads_te = _grads(model, test)
    for k in range(len(evals)):
        term = torch.outer(grads_te @ evecs[:, k], grads_tr @ evecs[:, k]) / evals[k]
        if evals[k] > 0:  # tol=0 still drops negative curvature
            keep_all += term
        if k in top.tolist():
            ref += term
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(full, keep_all, atol=1e-10, rtol=1e-8)
    assert (got - full).abs().max() > 1e-3  # the truncation matters here
    assert (evals < 0).any()  # and so does dropping negative curvature (an untrained model)


def _grads(model, batch):
    rows = []
    for x, y in zip(*batch):
        model.zero_grad()
        loss = CE(model(x[None]), y[None]).sum()
        gs = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 9), chunk=st.integers(1, 4), damping=st.floats(0.01, 1.0))
def test_self_influence_symmetry_and_chunks(seed, n, chunk, damping):
    model = mlp(seed)
    a, b = data(seed, n), data(seed + 1, 3)
    h = data(seed + 2, 8)
    I_ab = xi.influence_function(model, CE, a, b, damping=damping, hessian_data=h)
    I_ba = xi.influence_function(model, CE, b, a, damping=damping, hessian_data=h, chunk_size=chunk)
    torch.testing.assert_close(I_ab, I_ba.T, atol=1e-10, rtol=1e-8)  # g_b^T H^-1 g_a is symmetric
    s = xi.influence_function_self_influence(model, CE, a, damping=damping, hessian_data=h, chunk_size=chunk)
    diag = xi.influence_function(model, CE, a, a, damping=damping, hessian_data=h).diagonal()
    torch.testing.assert_close(s, diag, atol=1e-10, rtol=1e-8)
    assert (s >= -1e-12).all()  # R R^T is positive semi-definite: self-influence is never negative


@settings(max_examples=5, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 10))
def test_conjugate_gradients_match_the_explicit_inverse(seed, n):
    model = mlp(seed)
    train, test = data(seed, n), data(seed + 3, 2)
    _, H = reference(model, CE, train, test)
    damping = 0.05 + max(0.0, -torch.linalg.eigvalsh(H).min().item())  # H + damping I positive definite
    eigen = xi.influence_function(model, CE, train, test, damping=damping, tol=0.0)
    cg = xi.influence_function(model, CE, train, test, damping=damping, method="cg", chunk_size=2)
    torch.testing.assert_close(cg, eigen, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(
        xi.influence_function_self_influence(model, CE, train, damping=damping, method="cg"),
        xi.influence_function_self_influence(model, CE, train, damping=damping, tol=0.0),
        atol=1e-9,
        rtol=1e-7,
    )


def test_reduction_attribute_gives_the_same_scores():
    model = mlp(8)
    train, test = data(8, 7), data(9, 2)
    base = xi.influence_function(model, CE, train, test, damping=0.1)
    for red in ("sum", "mean"):
        got = xi.influence_function(model, nn.CrossEntropyLoss(reduction=red), train, test, damping=0.1)
        torch.testing.assert_close(got, base, atol=1e-12, rtol=1e-10)


def _newton_fit(x, y, weights, lam, theta=None, steps=30):
    """argmin (1/n) sum_i w_i bce_i + lam/2 |theta|^2 for logistic regression, by Newton's method."""
    n, d = x.shape
    xb = torch.cat([x, torch.ones(n, 1, dtype=D)], 1)
    theta = torch.zeros(d + 1, dtype=D) if theta is None else theta.clone()
    for _ in range(steps):
        p = torch.sigmoid(xb @ theta)
        g = xb.T @ (weights * (p - y)) / n + lam * theta
        H = xb.T @ (xb * (weights * p * (1 - p))[:, None]) / n + lam * torch.eye(d + 1, dtype=D)
        theta = theta - torch.linalg.solve(H, g)
    return theta


def test_upweighting_matches_finite_difference_retraining():
    g = torch.Generator().manual_seed(0)
    n, d, lam = 40, 3, 0.1
    x = torch.randn(n, d, generator=g, dtype=D)
    y = (x @ torch.tensor([1.0, -2.0, 0.5], dtype=D) + 0.8 * torch.randn(n, generator=g, dtype=D) > 0).to(D)
    xt, yt = torch.randn(3, d, generator=g, dtype=D), torch.tensor([1.0, 0.0, 1.0], dtype=D)
    theta = _newton_fit(x, y, torch.ones(n, dtype=D), lam)
    model = nn.Linear(d, 1).to(D)
    with torch.no_grad():
        model.weight.copy_(theta[:d][None])
        model.bias.copy_(theta[d:])

    def bce(out, labels):
        return nn.functional.binary_cross_entropy_with_logits(out[:, 0], labels, reduction="none")

    # the L2 term's Hessian is lam I: the damping; its gradient is 0 summed with the data's
    I = xi.influence_function(model, bce, (x, y), (xt, yt), damping=lam)

    def test_loss(th):
        return nn.functional.binary_cross_entropy_with_logits(xt @ th[:d] + th[d], yt, reduction="none")

    eps = 1e-4
    fd = torch.zeros(3, n, dtype=D)
    for j in range(n):
        w_up, w_dn = torch.ones(n, dtype=D), torch.ones(n, dtype=D)
        w_up[j] += n * eps  # (1/n) w_j = 1/n + eps: eps more weight on z_j's loss
        w_dn[j] -= n * eps
        up, dn = _newton_fit(x, y, w_up, lam, theta, 6), _newton_fit(x, y, w_dn, lam, theta, 6)
        fd[:, j] = (test_loss(up) - test_loss(dn)) / (2 * eps)
    # fd is d L_test / d eps (Koh and Liang's I_up,loss); xattr reports its negative (positive = proponent)
    torch.testing.assert_close(I, -fd, atol=1e-6, rtol=1e-5)
    assert I.abs().max() > 0.1  # not trivially small


def test_user_model_and_tensors_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).to(D)
    model.eval()
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    train, test = data(11, 6), data(12, 2)
    train_copy = [t.clone() for t in train]
    xi.influence_function(model, CE, train, test, damping=0.1, layers=[model[0], model[3]])
    xi.influence_function_self_influence(model, CE, train, damping=5.0, method="cg")
    assert not model.training and not model[0].weight.requires_grad and model[3].weight.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(a, b) for a, b in zip(train, train_copy))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_errors():
    model = mlp(0)
    train, test = data(0, 5), data(1, 2)
    with pytest.raises(ValueError, match="method"):
        xi.influence_function(model, CE, train, test, method="lissa")
    with pytest.raises(ValueError, match="projection_dim needs"):
        xi.influence_function(model, CE, train, test, method="cg", projection_dim=2)
    with pytest.raises(ValueError, match="damping"):
        xi.influence_function(model, CE, train, test, damping=-1.0)
    with pytest.raises(ValueError, match="per-example losses"):
        xi.influence_function(model, lambda o, y: CE(o, y).mean(), train, test)
    with pytest.raises(ValueError, match="no module named"):
        xi.influence_function(model, CE, train, test, layers=["nope"])
    with pytest.raises(ValueError, match="not a module of the model"):
        xi.influence_function(model, CE, train, test, layers=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="no parameters"):
        xi.influence_function(model, CE, train, test, layers=[model[1]])
    with pytest.raises(TypeError, match="tuple"):
        xi.influence_function(model, CE, train[0], test)
    with pytest.raises(ValueError, match="same non-zero number of rows"):
        xi.influence_function(model, CE, (train[0], train[1][:3]), test)
    with pytest.raises(ValueError, match="no eigenvalue above tol"):
        xi.influence_function(model, CE, train, test, tol=1e6)
    with pytest.raises(ValueError, match="positive definite"):
        xi.influence_function(model, lambda o, y: -CE(o, y), train, test, method="cg")
    with pytest.raises(TypeError, match="loss_fn"):
        xi.influence_function(model, "ce", train, test)
    dropout = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 3)).to(D)
    with pytest.raises(ValueError, match="model.eval"):
        xi.influence_function(dropout, CE, train, test)
    assert dropout.training  # the check changed nothing


# ---------------------------------------------------------------------------------------------
# Captum


def _captum_setup(tmp_path, seed=0):
    from torch.utils.data import TensorDataset

    model = mlp(seed, d_in=4, hidden=5, dtype=torch.float32)
    x, y = data(seed, 24, d_in=4, dtype=torch.float32)
    ck = os.path.join(tmp_path, "model.pt")
    torch.save(model.state_dict(), ck)
    return model, TensorDataset(x, y), ck, data(seed + 9, 3, d_in=4, dtype=torch.float32)


@pytest.mark.parametrize(
    "kwargs",
    [dict(projection_dim=None), dict(projection_dim=4, layers=["2"]), dict(hessian_reg=0.3, hessian_inverse_tol=1e-3)],
    ids=["full", "projected_layer", "damped"],
)
def test_naive_influence_function_matches_captum(tmp_path, kwargs):
    captum_influence = pytest.importorskip("captum.influence")
    model, ds, ck, test = _captum_setup(tmp_path)
    state = copy.deepcopy(model.state_dict())
    args = dict(loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=5, **kwargs)
    ours = NaiveInfluenceFunction(model, ds, ck, **args)
    theirs = captum_influence.NaiveInfluenceFunction(model, ds, ck, **args)
    ref = theirs.influence(test)
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours.influence(test), ref, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(ours.self_influence(), theirs.self_influence(), atol=1e-4 * scale, rtol=1e-4)
    assert ours.R.shape == theirs.R.shape  # the same eigenvalues kept
    for proponents in (True, False):
        a, b = ours.influence(test, k=3, proponents=proponents), theirs.influence(test, k=3, proponents=proponents)
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.influence_scores, b.influence_scores, atol=1e-4 * scale, rtol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_naive_influence_function_is_the_core_over_n(tmp_path):
    model, ds, ck, test = _captum_setup(tmp_path, seed=2)
    from torch.utils.data import TensorDataset

    model64 = copy.deepcopy(model).double()
    x, y = ds.tensors[0].double(), ds.tensors[1]
    ds = TensorDataset(x, y)
    torch.save(model64.state_dict(), ck)
    compat = NaiveInfluenceFunction(model64, ds, ck, loss_fn=CE, batch_size=7, projection_dim=None, hessian_reg=0.2)
    core = xi.influence_function(model64, CE, (x.double(), y), (test[0].double(), test[1]), damping=0.2 / len(x), tol=1e-5 / len(x))
    torch.testing.assert_close(compat.influence((test[0].double(), test[1])), core / len(x), atol=1e-12, rtol=1e-9)
    from torch.utils.data import DataLoader

    as_loader = compat.influence(DataLoader(TensorDataset(test[0].double(), test[1]), batch_size=2))
    torch.testing.assert_close(as_loader, core / len(x), atol=1e-12, rtol=1e-9)
    emb = compat.compute_intermediate_quantities(ds)
    torch.testing.assert_close(compat.compute_intermediate_quantities(ds, aggregate=True), emb.sum(0, keepdim=True))
    torch.testing.assert_close(compat.self_influence(), (emb**2).sum(1))
    with pytest.raises(ValueError, match="reduction must be 'none'"):
        NaiveInfluenceFunction(model64, ds, ck, loss_fn=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="needs loss_fn"):
        NaiveInfluenceFunction(model64, ds, ck)


def test_checkpoint_goes_into_a_copy(tmp_path):
    model, ds, ck, test = _captum_setup(tmp_path, seed=4)
    other = mlp(99, d_in=4, hidden=5, dtype=torch.float32)
    before = copy.deepcopy(other.state_dict())
    loaded = NaiveInfluenceFunction(other, ds, ck, loss_fn=CE, projection_dim=None)
    direct = NaiveInfluenceFunction(model, ds, None, loss_fn=CE, projection_dim=None)
    torch.testing.assert_close(loaded.influence(test), direct.influence(test))
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k])  # the checkpoint went into a copy
    assert not math.isnan(loaded.influence(test).sum().item())
