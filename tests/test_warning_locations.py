"""xattr's warnings are shown at the user's line (NOTE: [Warnings at the user's line] in
xattr/_src/warn.py), not inside xattr or torch, whatever the method's depth or the transforms
around it."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import xattr

X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x.detach())


class TwoParts(nn.Module):
    def forward(self, x):
        return x * 2, x * 3


class UsesOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.parts = TwoParts()

    def forward(self, x):
        return self.parts(x)[0].sum(1)


def _unread_part(model):
    return xattr.gradient_x_activation(xattr.at_layer(model, model.parts))(X)


def _caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return seen


CASES = {
    "no gradient path": (lambda: xattr.saliency(xattr.target(Detached(), 0))(X), xattr.NoGradientPathWarning),
    "no gradient path, integrated gradients": (lambda: xattr.integrated_gradients(xattr.target(Detached(), 0), n_steps=4)(X),
                                               xattr.NoGradientPathWarning),
    "an unread layer part": (lambda: _unread_part(UsesOne()), xattr.NoGradientPathWarning),
    "train mode": (lambda: xattr.saliency(xattr.target(nn.Sequential(nn.Linear(4, 2), nn.Dropout()).train(), 0))(X),
                   UserWarning),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shown_at_the_callers_line(name):
    call, category = CASES[name]
    seen = [w for w in _caught(call) if issubclass(w.category, category)]
    assert seen, name
    assert all(w.filename == __file__ for w in seen), [(w.filename, w.lineno) for w in seen]
