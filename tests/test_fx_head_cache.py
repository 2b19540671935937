"""The traced-head cache (NOTE: [Traced heads]) never serves a graph traced from code that has
changed since: a module's class, its forward, a closure cell it reads; and it holds no user class
alive after its models are gone."""

import gc
import weakref

import torch
from torch import nn

import xattr
from xattr._src import fx_head


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) * 2


class Negated(Block):
    def forward(self, x):
        return -self.lin(x) * 2


class Net(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.block = block

    def forward(self, x):
        return self.block(torch.relu(self.l1(x)))


def _layer_ig_matches_a_fresh_split(net, split, x):
    fresh = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(net, 0), net.l1), n_steps=8)(x)
    torch.testing.assert_close(xattr.layer_integrated_gradients(split, n_steps=8)(x), fresh)
    torch.testing.assert_close(split.head(split.act(x), x), net(x)[:, 0])


def test_a_module_given_another_class_is_a_new_trace():
    # Same object, same id, another class: what a freed id handed to a new module of another
    # class looks like to an id-keyed cache.
    torch.manual_seed(0)
    net, x = Net(Block()).eval(), torch.rand(2, 4)
    split = xattr.at_layer(xattr.target(net, 0), net.l1)
    xattr.layer_integrated_gradients(split, n_steps=8)(x)
    net.block.__class__ = Negated
    _layer_ig_matches_a_fresh_split(net, split, x)


def test_a_replaced_forward_is_a_new_trace():
    class Patched(Block):
        pass

    torch.manual_seed(0)
    net, x = Net(Patched()).eval(), torch.rand(2, 4)
    split = xattr.at_layer(xattr.target(net, 0), net.l1)
    xattr.layer_integrated_gradients(split, n_steps=8)(x)
    Patched.forward = lambda self, h: self.lin(h) * 3  # reads the same names as before
    _layer_ig_matches_a_fresh_split(net, split, x)


def test_a_changed_closure_cell_is_a_new_trace():
    scale = 2.0

    class Scaled(Block):
        def forward(self, x):
            return self.lin(x) * scale

    torch.manual_seed(0)
    net, x = Net(Scaled()).eval(), torch.rand(2, 4)
    split = xattr.at_layer(xattr.target(net, 0), net.l1)
    xattr.layer_integrated_gradients(split, n_steps=8)(x)
    scale = 5.0  # noqa: F841 (read by Scaled.forward through its closure cell)
    _layer_ig_matches_a_fresh_split(net, split, x)


def test_the_class_table_holds_no_class_alive():
    def make():
        big = torch.zeros(1000)

        class Made(Block):
            def forward(self, x):
                return self.lin(x) + big[0]

        return Made

    cls = make()
    net, x = Net(cls()).eval(), torch.rand(2, 4)
    xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(net, 0), net.l1), n_steps=4)(x)
    assert cls in fx_head._OWN  # the head did look the class up
    gone = weakref.ref(cls)
    del cls, net
    gc.collect()
    assert gone() is None
