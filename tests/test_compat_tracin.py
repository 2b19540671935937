"""The Captum-compatible TracIn classes against Captum's own numbers (TracInCP, TracInCPFast,
TracInCPFastRandProj) for "none", "sum" and "mean" losses, ``layers=``, a ``test_loss_fn``,
Dataset and DataLoader training sets, top-k, ``aggregate``, self-influence; the model left as
it was; errors."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xattr.compat.captum import (
    DataInfluence,
    KMostInfluentialResults,
    TracInCP,
    TracInCPBase,
    TracInCPFast,
    TracInCPFastRandProj,
)

D = torch.float64


def setup(tmp_path, seed=0, n_train=14, n_test=4, hidden=6, d_out=3):
    """A small MLP, three checkpoints saved as files with their learning rates, and data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(D).eval()
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=D))
        paths.append(str(tmp_path / f"checkpoint-{i + 8}.pt"))  # 8, 9, 10: natural order differs from text order
        torch.save({**model.state_dict(), "learning_rate": 0.5 / (i + 1)}, paths[-1])
    x, y = torch.randn(n_train, 4, generator=g, dtype=D), torch.randint(0, d_out, (n_train,), generator=g)
    xt, yt = torch.randn(n_test, 4, generator=g, dtype=D), torch.randint(0, d_out, (n_test,), generator=g)
    return model, paths, (x, y), (xt, yt)


def load(model, path):
    state = torch.load(path)
    lr = state.pop("learning_rate")
    model.load_state_dict(state)
    return lr


def captum():
    return pytest.importorskip("captum.influence")


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def same_top(a, b):
    assert isinstance(a, KMostInfluentialResults)
    assert torch.equal(a.indices, b.indices)
    close(a.influence_scores, b.influence_scores)


@pytest.mark.parametrize(
    "loss, sample_wise",
    [(nn.CrossEntropyLoss(reduction="none"), False), (nn.CrossEntropyLoss(reduction="sum"), True), (nn.CrossEntropyLoss(reduction="mean"), True)],
)
def test_tracincp_matches_captum(tmp_path, loss, sample_wise):
    ci = captum()
    model, paths, (x, y), test = setup(tmp_path)
    kw = dict(checkpoints_load_func=load, loss_fn=loss, batch_size=5, sample_wise_grads_per_batch=sample_wise)
    ours = TracInCP(model, TensorDataset(x, y), paths, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ci.TracInCP(copy.deepcopy(model), TensorDataset(x, y), paths, **kw)
        close(ours.influence(test), theirs.influence(test))
        same_top(ours.influence(test, k=3), theirs.influence(test, k=3))
        same_top(ours.influence(test, k=4, proponents=False), theirs.influence(test, k=4, proponents=False))
        close(ours.influence(test, aggregate=True), theirs.influence(test, aggregate=True))
        close(ours.self_influence(), theirs.self_influence())
        close(ours.self_influence(test, outer_loop_by_checkpoints=True), theirs.self_influence(test, outer_loop_by_checkpoints=True))
        close(ours.compute_intermediate_quantities(test), theirs.compute_intermediate_quantities(test))


def test_tracincp_layers_test_loss_fn_and_dataloader_match_captum(tmp_path):
    ci = captum()
    model, paths, (x, y), test = setup(tmp_path, seed=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)

    def logit0(out, labels):  # per example: class 0's logit
        return out[:, 0]

    kw = dict(checkpoints_load_func=load, layers=["2"], loss_fn=nn.CrossEntropyLoss(reduction="none"), test_loss_fn=logit0)
    ours = TracInCP(model, loader, paths, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ci.TracInCP(copy.deepcopy(model), loader, paths, **kw)
        close(ours.influence(test), theirs.influence(test))
        test_loader = DataLoader(TensorDataset(*test), batch_size=3)
        close(ours.influence(test_loader), theirs.influence(test_loader))
        close(ours.self_influence(), theirs.self_influence())


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_tracincp_fast_matches_captum(tmp_path, reduction):
    ci = captum()
    model, paths, (x, y), test = setup(tmp_path, seed=2)

    def logit1(out, labels):  # a "sum" loss without a reduction attribute
        return out[:, 1].sum()

    for test_loss in (None, logit1):
        kw = dict(checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction=reduction), batch_size=6, test_loss_fn=test_loss)
        ours = TracInCPFast(model, "2", TensorDataset(x, y), paths, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = copy.deepcopy(model)
            theirs = ci.TracInCPFast(twin, twin[2], TensorDataset(x, y), paths, **kw)
            close(ours.influence(test), theirs.influence(test))
            same_top(ours.influence(test, k=5), theirs.influence(test, k=5))
            same_top(ours.influence(test, k=2, proponents=False), theirs.influence(test, k=2, proponents=False))
            close(ours.self_influence(), theirs.self_influence())


class BruteForce:
    """Exact nearest neighbours by dot product (Captum's default needs the annoy package)."""

    def setup(self, data):
        self.data = data

    def get_nearest_neighbors(self, query, k):
        values, indices = torch.topk(query @ self.data.T, k, dim=1)
        return indices, values


@pytest.mark.parametrize("projection_dim", [None, 4, 9, 1000])
def test_tracincp_fast_rand_proj_matches_captum(tmp_path, projection_dim):
    ci = captum()
    from captum.influence._utils.nearest_neighbors import NearestNeighbors

    class Brute(BruteForce, NearestNeighbors):
        pass

    model, paths, (x, y), test = setup(tmp_path, seed=3, hidden=8, d_out=5)
    kw = dict(checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=5, projection_dim=projection_dim, seed=11)
    ours = TracInCPFastRandProj(model, model[2], TensorDataset(x, y), paths, nearest_neighbors=BruteForce(), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = copy.deepcopy(model)
        theirs = ci.TracInCPFastRandProj(twin, twin[2], TensorDataset(x, y), paths, nearest_neighbors=Brute(), **kw)
    close(ours.influence(test, k=None), theirs.influence(test, k=None))
    same_top(ours.influence(test), theirs.influence(test))
    same_top(ours.influence(test, k=3, proponents=False), theirs.influence(test, k=3, proponents=False))
    close(ours.compute_intermediate_quantities(test), theirs.compute_intermediate_quantities(test))
    # without nearest_neighbors: the exact top k of the same projected scores
    plain = TracInCPFastRandProj(model, model[2], TensorDataset(x, y), paths, **kw)
    same_top(plain.influence(test), theirs.influence(test))


def test_classes_sit_under_captums_bases_and_leave_the_model_alone(tmp_path):
    model, paths, train, test = setup(tmp_path, seed=4)
    model[2].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    loss = nn.CrossEntropyLoss(reduction="sum")
    cp = TracInCP(model, TensorDataset(*train), paths, load, layers=["2"], loss_fn=loss, batch_size=4)
    fast = TracInCPFast(model, model[2], TensorDataset(*train), paths, load, loss_fn=loss, batch_size=4)
    proj = TracInCPFastRandProj(model, model[2], TensorDataset(*train), paths, load, loss_fn=loss, batch_size=4, projection_dim=4)
    for m in (cp, fast, proj):
        assert isinstance(m, TracInCPBase) and isinstance(m, DataInfluence)
        m.influence(test)
    cp.self_influence()
    fast.self_influence()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model[2].weight.requires_grad
    assert all(not m._forward_hooks for m in model.modules())
    # the checkpoints are in natural order (8, 9, 10), not text order (10, 8, 9)
    assert [p[-5:] for p in TracInCP(model, TensorDataset(*train), str(tmp_path), load, loss_fn=loss).checkpoints] == ["-8.pt", "-9.pt", "10.pt"]


def test_errors(tmp_path):
    model, paths, train, test = setup(tmp_path, seed=5)
    loss = nn.CrossEntropyLoss(reduction="sum")
    with pytest.raises(ValueError, match="batch_size"):
        TracInCP(model, TensorDataset(*train), paths, load, loss_fn=loss, batch_size=None)
    with pytest.raises(ValueError, match="no checkpoints"):
        TracInCP(model, TensorDataset(*train), [], load, loss_fn=loss)
    with pytest.raises(TypeError, match="Dataset or a DataLoader"):
        TracInCP(model, train, paths, load, loss_fn=loss)
    with pytest.raises(ValueError, match="no module named"):
        TracInCP(model, TensorDataset(*train), paths, load, layers=["5"], loss_fn=loss)
    with pytest.raises(ValueError, match="final_fc_layer"):
        TracInCPFast(model, "9", TensorDataset(*train), paths, load, loss_fn=loss)
    with pytest.raises(ValueError, match="loss_fn"):
        TracInCPFast(model, "2", TensorDataset(*train), paths, load)
    cp = TracInCP(model, TensorDataset(*train), paths, load, loss_fn=loss)
    with pytest.raises(ValueError, match="inputs is required"):
        cp.influence(None)
    with pytest.raises(ValueError, match="k must be"):
        cp.influence(test, k=0)
    proj = TracInCPFastRandProj(model, "2", TensorDataset(*train), paths, load, loss_fn=loss, projection_dim=4)
    with pytest.raises(NotImplementedError, match="TracInCPFast"):
        proj.self_influence()
