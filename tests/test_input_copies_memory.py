"""LRP's input-copy table holds only what can still be read (NOTE: [Weak input copies] in
input_copies.py): a model that moves its input many times keeps a bounded table, moved data
that died leaves it with its copy, and a new tensor that got a dead one's id is not served."""

import gc
import weakref

import pytest
import torch
from torch import nn

import xattr
from xattr._src.input_copies import INPUT_COPIES, entry, read_in_place_of

RULES = {
    "zbox": lambda: xattr.rule.ZBox(-4.0, 4.0),
    "wsquare": lambda: xattr.rule.WSquare(),
    "flat": lambda: xattr.rule.Flat(),
}


class Mover(nn.Module):
    """Transposes and flips its (square) input ``n`` times (8 moves: the identity), then a conv;
    records the table's size after each move."""

    def __init__(self, n: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(2, 3, 3), nn.Linear(3 * 4 * 4, 2)
        self.n, self.sizes, self.first_alive = n, [], None

    def forward(self, x):
        table = INPUT_COPIES.get()
        first = None
        for i in range(self.n):
            x = x.flip(-1) if i % 2 else x.transpose(-1, -2)
            if i == 0:
                first = weakref.ref(x)
            if table is not None:
                self.sizes.append(len(table))
        self.first_alive = first is not None and first() is not None
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _lrp(model, rule, x):
    composite = {**xattr.rule.lrp_rules(), model.conv: RULES[rule]()}
    return xattr.lrp(xattr.target(model, 1), composite=composite)(x)


def _x():
    return torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(1))


def test_a_model_moving_its_input_many_times_keeps_a_bounded_table():
    """800 moves: the table held every one (and its copy) until the forward ended."""
    model = Mover(800)
    _lrp(model, "zbox", _x())
    assert len(model.sizes) >= 800
    assert max(model.sizes) <= model.sizes[0] + 2, (model.sizes[0], max(model.sizes))
    assert not model.first_alive  # the first move's result is freed once nothing reads it


@pytest.mark.parametrize("rule", sorted(RULES))
def test_relevance_after_many_moves_is_that_of_no_move(rule):
    """No regression: 800 moves (8 of them the identity) give the relevance of none."""
    x = _x()
    moved, still = _lrp(Mover(800), rule, x), _lrp(Mover(0), rule, x)
    torch.testing.assert_close(moved, still, rtol=1e-5, atol=1e-6)


class Keeper(nn.Module):
    """Keeps one moved copy of its input, moves the input ``n`` more times (dropping those),
    then reads the kept one: live data must keep its entry."""

    def __init__(self, n: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3)
        self.n = n

    def forward(self, x):
        kept = x.flip(-1).transpose(-1, -2)
        y = x
        for _ in range(self.n):
            y = y.flip(-2)
        gc.collect()
        return torch.relu(self.conv(kept)).flatten(1).sum(1) + 0 * y.sum((1, 2, 3))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_moved_data_still_alive_keeps_its_copy(rule):
    x = _x()
    composite = lambda m: {**xattr.rule.lrp_rules(), m.conv: RULES[rule]()}  # noqa: E731
    many, none = Keeper(300), Keeper(0)
    got = xattr.lrp(many, composite=composite(many))(x)
    want = xattr.lrp(none, composite=composite(none))(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.abs().sum() > 0


class Forgetter(nn.Module):
    """Records what happens to a moved tensor's entry when the tensor dies."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.seen = {}

    def forward(self, x):
        table = INPUT_COPIES.get()
        t = x.flip(-1)
        key = id(t)
        self.seen["recorded"] = read_in_place_of(table, t) is not None
        del t
        self.seen["dropped"] = key not in table
        return torch.relu(self.conv(x)).flatten(1).sum(1)


def test_an_entry_leaves_with_its_tensor():
    model = Forgetter()
    xattr.lrp(model, composite={**xattr.rule.lrp_rules(), model.conv: xattr.rule.Flat()})(_x())
    assert model.seen == {"recorded": True, "dropped": True}


def test_a_dead_tensors_id_serves_no_new_tensor():
    """An entry made without a table (the call's own arguments) stays when its tensor dies, and a
    new tensor that got the dead one's id must not be served its copy."""
    table, copy = {}, torch.zeros(4)
    t = torch.ones(4)
    key = id(t)
    table[key] = entry(t, copy)
    assert read_in_place_of(table, t) is copy
    del t
    held = []
    for _ in range(200):
        held.append(torch.ones(4))
        if id(held[-1]) == key:
            break
    else:
        pytest.skip("no new tensor got the dead one's id")
    assert key in table and read_in_place_of(table, held[-1]) is None


def test_an_argument_standing_for_itself_holds_no_strong_reference():
    table = {}
    t = torch.ones(3)
    table[id(t)] = entry(t, t)
    assert read_in_place_of(table, t) is t
    gone = weakref.ref(t)
    del t
    assert gone() is None
