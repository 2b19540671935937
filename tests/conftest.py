"""Strictness for the whole suite: deterministic kernels, fixed seeds, hypothesis profiles, and a
check after every test that no global state leaked (hooks, grad mode, default dtype, transforms).

Hypothesis profiles (XATTR_HYPOTHESIS_PROFILE): "default" (derandomized, few examples: the suite
stays fast on 2 CPU cores) and "thorough" (random, many examples, for a nightly run).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from torch.nn.modules import module as _module

# Every op the suite runs on CPU has a deterministic kernel; one that does not must fail loudly.
torch.use_deterministic_algorithms(True)
# Tiny models run fastest single-threaded, and the suite shares its cores with other processes.
torch.set_num_threads(int(os.environ.get("XATTR_TEST_THREADS", "1")))

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("default", max_examples=12, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("XATTR_HYPOTHESIS_PROFILE", "default"))

_GLOBAL_HOOKS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


def _global_state() -> dict:
    state = {name: len(getattr(_module, name, ())) for name in _GLOBAL_HOOKS}
    state["grad_enabled"] = torch.is_grad_enabled()
    state["default_dtype"] = torch.get_default_dtype()
    state["functorch_level"] = torch._C._functorch.maybe_current_level()
    state["torch_function_modes"] = torch._C._len_torch_function_stack()
    state["deterministic"] = torch.are_deterministic_algorithms_enabled()
    return state


@pytest.fixture(autouse=True)
def _strict(request):
    """Fixed seeds before each test; after it, the global state must be what it was."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    before = _global_state()
    yield
    after = _global_state()
    leaked = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not leaked, f"{request.node.nodeid} left global state changed (before, after): {leaked}"


@pytest.fixture
def drawn_shapes(monkeypatch):
    """The shape of each map ``xattr.viz.heatmap.draw`` draws, in order (draw still runs)."""
    from xattr.viz import heatmap  # noqa: PLC0415

    shapes, draw = [], heatmap.draw

    def spy(ax, attr, image=None, **kw):
        sign = draw(ax, attr, image, **kw)
        shapes.append(ax.images[0].get_array().shape)
        return sign

    monkeypatch.setattr(heatmap, "draw", spy)
    return shapes


@pytest.fixture(scope="module")
def lxt_transformers():
    """transformers, with LXT's model patches importable (`benchmarks.lxt_workloads.import_lxt`),
    or the test skips (tests/test_vs_lxt.py, tests/test_vs_lxt_cp.py)."""
    from benchmarks.lxt_workloads import import_lxt  # noqa: PLC0415

    if import_lxt() is None:
        pytest.skip("transformers (or LXT) is not installed")
    from xattr.testing.text import transformers_module  # noqa: PLC0415

    return transformers_module()
