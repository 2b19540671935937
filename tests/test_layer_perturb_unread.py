"""Layer feature ablation and permutation hand the traced head's unread arguments as empty
stand-ins (NOTE: [Traced heads] in fx_head.py; `layers.unread_dropped`), as layer IG does: the
model's input is not tiled with every perturbed copy of the layer, and the numbers are those of
the tiled call, bit for bit, on the traced head and on the hook head alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr
import xattr._src.layer_perturb as LP
import xattr._src.layers as L
from xattr._src import fx_head

D = torch.float64


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))  # fmt: skip

    def forward(self, x):
        return self.net(x)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.lin, self.out = nn.Embedding(10, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, ids, mask):
        e = self.lin(self.embedding(ids)) * mask.unsqueeze(-1)
        return self.out(e.sum(1) / mask.sum(1, keepdim=True))


def _case(name):
    torch.manual_seed(0)
    if name == "cnn":
        model = CNN().to(D).eval()
        return model, model.net[2], (torch.randn(4, 1, 5, 5, dtype=D),), {0}
    model = Tokens().to(D).eval()
    ids, mask = torch.randint(0, 10, (4, 6)), (torch.rand(4, 6) > 0.3).to(D)
    mask[:, 0] = 1.0
    return model, model.embedding, (ids, mask), {0}  # the mask is read after the embedding: tiled


METHODS = {
    "ablation": lambda split: xattr.layer_feature_ablation(split, chunk_size=8),
    "permutation": lambda split: xattr.layer_feature_permutation(split, generator=3, chunk_size=8),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", ["cnn", "tokens"])
def test_unread_arguments_go_as_stand_ins_with_the_tiled_numbers(name, method, monkeypatch):
    model, layer, args, unread = _case(name)
    split = xattr.at_layer(xattr.target(model, 1), layer)
    traced = fx_head.traced_head(split, split.act(*args), args)
    assert traced is not None and set(traced.unread) == unread
    real, seen = LP.unread_dropped, []
    monkeypatch.setattr(LP, "unread_dropped", lambda *a: seen.append(real(*a)) or seen[-1])
    got = METHODS[method](split)(*args)
    assert [i for i, a in enumerate(seen[0]) if a.numel() == 0] == sorted(unread)
    assert all(a.numel() for i, a in enumerate(seen[0]) if i not in unread)

    monkeypatch.setattr(LP, "unread_dropped", lambda split, h, args: args)  # every argument tiled, as before
    tiled = METHODS[method](split)(*args)
    assert torch.equal(got, tiled)

    calls = []

    def first_only(*a):  # traced for unread_dropped's question, then busy: the head calls take the hook head
        calls.append(1)
        return fx_head.traced_head(*a) if len(calls) == 1 else None

    monkeypatch.setattr(LP, "unread_dropped", real)
    monkeypatch.setattr(L, "traced_head", first_only)
    assert torch.equal(METHODS[method](split)(*args), tiled)
    assert len(calls) > 1


def test_the_model_and_the_arguments_are_left_as_they_were():
    model, layer, args, _ = _case("cnn")
    before = [a.clone() for a in args]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    split = xattr.at_layer(xattr.target(model, 1), layer)
    xattr.layer_feature_ablation(split)(*args)
    assert all(torch.equal(a, b) for a, b in zip(args, before))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
