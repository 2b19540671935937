"""What tests/test_vs_quantus.py, tests/test_vs_quantus_more.py and tests/test_vs_quantus_axioms.py
share: the digits MLP, a model that records its inputs, input x gradient, one call of a Quantus
metric, the comparison, and round 2's held-out digits and target outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xattr

SIDE = 8


class Recorder(nn.Module):
    """The model, keeping a copy of every batch it is called on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, v):
        self.seen.append(v.detach().clone())
        return self.model(v)


def digits_mlp():
    """A digits MLP (64-32-10, 150 full-batch Adam steps on the first 1500 digits, seeded) and the
    digits (N, 1, 8, 8) in [0, 1] with their labels; the held-out accuracy is checked."""
    from sklearn.datasets import load_digits

    data, labels = load_digits(return_X_y=True)
    images = torch.tensor(data, dtype=torch.float32).reshape(-1, 1, SIDE, SIDE) / 16
    labels = torch.tensor(labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(model(images[:1500]), labels[:1500]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(images[1500:]).argmax(1) == labels[1500:]).float().mean() > 0.85
    return model, images, labels


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def ixg(model, x, y):
    return xattr.input_x_gradient(xattr.target(model, y))(x).detach()


def run(metric, model, x, y, a, s=None, explain=None, **call):
    """One call of a Quantus metric on torch tensors (``s``: a tensor or an array), as float64."""
    if isinstance(s, torch.Tensor):
        s = s.numpy().copy()
    out = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None if a is None else a.numpy(),
                 s_batch=s, explain_func=explain, channel_first=True, **call)  # fmt: skip
    return torch.as_tensor(np.asarray(list(out.values()) if isinstance(out, dict) else out, dtype=np.float64))


def close(ours, theirs, tol=1e-5):
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert torch.equal(ours.isnan(), theirs.isnan()), (ours, theirs)
    ok = ~ours.isnan()
    gap = float((ours[ok] - theirs[ok]).abs().max()) if ok.any() else 0.0
    assert gap <= tol * max(1.0, float(theirs[ok].abs().max())), (gap, ours, theirs)


@pytest.fixture(scope="module")
def digits():
    """Round 2's fixture: the digits MLP (`digits_mlp`); 4 held-out digits (1, 8, 8) in [0, 1] (half
    the pixels 0), and the same shifted by 0.25 plus a little noise, so that no two pixels are equal
    and each image has one smallest pixel."""
    model, images, _ = digits_mlp()
    x = images[1500:1504].clone()
    shifted = x + 0.25 + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    return model, x, shifted


@pytest.fixture
def trapz(monkeypatch):
    """Quantus 0.6.0 calls ``np.trapz``, which numpy 2 removed: its AUCs need it put back."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def out_of(model, v, y):
    """The model's outputs at the targets y, in float64."""
    with torch.no_grad():
        return model(v)[torch.arange(v.shape[0]), y].double()
