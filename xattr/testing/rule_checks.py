"""`check_rule_paths`: a written rule gives the same gradients on every path xattr runs it by.

Outside torch.func transforms a rule with ``input_grad`` runs as a hook on the op's own autograd
node and one with ``output_scale`` as a hook on its output (NOTE: [Rules as backward hooks],
[Rules as output hooks] in xattr/_src/rule_apply.py); under a transform, and at an in-place call on a
view, its ``backward`` runs instead. Nothing else checks that they agree.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import optree
import torch
from torch.utils import _pytree

from .checks import _batch_size, _rows, _selected, assert_trees_close


def check_rule_paths(
    f: Callable, mapping: Mapping, *args, argnums: int | Sequence[int] = 0, root=None, atol=None, rtol=None
) -> None:
    """Checks that ``xattr.rules(f, mapping)`` has equal gradients eagerly and under ``vmap``.

    Eagerly, a rule's ``input_grad`` or ``output_scale`` runs where it has one; under
    ``torch.func.vmap`` (one example at a time) every rule's ``backward`` does. The two must give
    the same gradients, example by example; a difference means ``input_grad``/``output_scale``
    and ``backward`` compute different things.

    Args:
      f: the model function, with one scalar per example (``xattr.target(model, t)``).
      mapping, root: as for `xattr.rules`.
      args, argnums: the model's arguments and the attributed ones; dim 0 is the batch.

    Example:
      >>> from xattr.testing import check_rule_paths
      >>> check_rule_paths(xattr.target(model, 0), {F.relu: MyRule()}, x)
    """
    import xattr  # noqa: PLC0415 (xattr imports xattr.testing lazily; not at import time)

    grad_fn = xattr.grad(xattr.rules(f, mapping, root=root), argnums=argnums)
    eager = grad_fn(*args)
    batch = _batch_size(_selected(args, argnums))
    for k in range(batch):
        rows = tuple(_pytree.tree_map(_leading, a) for a in _rows(args, batch, slice(k, k + 1)))
        in_dims = tuple(_pytree.tree_map(lambda t: 0 if isinstance(t, torch.Tensor) else None, a) for a in rows)
        under_vmap = torch.func.vmap(grad_fn, in_dims=in_dims)(*rows)
        assert_trees_close(
            optree.tree_map(lambda t: t[0], under_vmap, namespace="xattr"),
            optree.tree_map(lambda t: t[k : k + 1], eager, namespace="xattr"),
            atol=atol, rtol=rtol,
            what=f"gradients of example {k}: eager (input_grad / output_scale hooks) vs vmap (each rule's backward)",
        )


def _leading(t):
    return t.unsqueeze(0) if isinstance(t, torch.Tensor) else t
