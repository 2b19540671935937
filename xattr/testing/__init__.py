"""Public checkers for attribution axioms and invariances, and hypothesis strategies.

In the spirit of ``jax.test_util.check_grads``: each ``check_*`` returns None when the property
holds and raises AssertionError saying where and by how much it fails, with ``atol``/``rtol``
defaulting by dtype (`default_tolerance`).

Checkers (xattr.testing.checks, xattr.testing.rule_checks):
  check_completeness               sum of attributions == f(x) - f(baseline), per example
  check_batch_invariance           batched result == per-example loop (or batch prefixes)
  check_chunk_invariance           the same result for every chunk_size
  check_linearity                  method(a f1 + b f2) == a method(f1) + b method(f2)
  check_symmetry                   symmetric features with equal values get equal attributions
  check_dummy                      features the model ignores get zero
  check_implementation_invariance  functionally equal models get equal attributions
  check_dtype_device               attributions keep the inputs' structure, shape, dtype, device
  check_grads_match_finite_differences   xattr.grad against central differences
  check_rule_paths                 a rule's input_grad/output_scale hooks agree with its backward
  assert_trees_close               the comparison every checker uses

Strategies (``xattr.testing.strategies``, needs the ``hypothesis`` package): small random
MLP/CNN/linear models built from a drawn seed, inputs, and models with a known symmetry, dummy
features or a functionally equal twin.

Example:
  >>> import xattr
  >>> from xattr.testing import check_completeness
  >>> f = xattr.target(model, 0)
  >>> check_completeness(f, xattr.integrated_gradients(f, n_steps=64), x, atol=1e-5, rtol=1e-4)
"""

from .checks import (
    assert_trees_close,
    check_batch_invariance,
    check_chunk_invariance,
    check_completeness,
    check_dtype_device,
    check_dummy,
    check_grads_match_finite_differences,
    check_implementation_invariance,
    check_linearity,
    check_symmetry,
    default_tolerance,
)
from .rule_checks import check_rule_paths

__all__ = [
    "assert_trees_close",
    "check_batch_invariance",
    "check_chunk_invariance",
    "check_completeness",
    "check_dtype_device",
    "check_dummy",
    "check_grads_match_finite_differences",
    "check_implementation_invariance",
    "check_linearity",
    "check_rule_paths",
    "check_symmetry",
    "default_tolerance",
]


def __getattr__(name: str):
    if name == "strategies":  # imported lazily: hypothesis is a test-only dependency
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
