"""A rule-based attribution function compiled with torch.compile's default backend (inductor).

Dynamo breaks the graph around the rules, and past a break it compiles every Python frame the
call runs, the rules' backward callbacks included, which autograd calls with torch.func's wrapped
tensors (the methods take their gradients with ``torch.func.vjp``). Inductor's compiled code
reads a tensor's storage, which a wrapped tensor does not have: every rule-based method raised
"Cannot access data pointer of Tensor that doesn't have storage". The callbacks now run eagerly
(NOTE: [Rule callbacks run eagerly] in xattr/_src/rule_apply.py). test_compiled_models.py covers the
``aot_eager`` backend, which did not fail.
"""

import functools

import pytest
import torch
from torch import nn

import xattr
from xattr.testing import assert_trees_close

from compile_support import needs_compile

pytestmark = needs_compile


@functools.cache
def _inductor_works() -> bool:
    try:
        return bool(torch.compile(lambda t: t + 1)(torch.zeros(2)).eq(1).all())
    except Exception:  # noqa: BLE001  (no C++ compiler, or another platform limit)
        return False


METHODS = {
    "guided_backprop": lambda f: xattr.guided_backprop(f),  # graph hooks (ReLU nodes)
    "lrp": lambda f: xattr.lrp(f),  # Functions and output hooks
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_rule_method_compiled_by_inductor_gives_the_eager_numbers(name):
    if not _inductor_works():
        pytest.skip("torch.compile's inductor backend does not run here")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 5), nn.ReLU(),
                          nn.Linear(5, 3)).eval()  # fmt: skip
    x = torch.randn(2, 2, 6, 6)
    fn = METHODS[name](xattr.target(model, 1))
    try:
        assert_trees_close(torch.compile(fn)(x), fn(x), what=f"{name} compiled by inductor vs eager")
    finally:
        torch._dynamo.reset()
