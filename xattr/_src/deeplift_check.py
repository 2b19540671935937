"""A warning on DeepLift's first call where its attributions do not sum to f(x) - f(b).

NOTE: [Summation-to-delta checked once]
DeepLift's defining property is summation-to-delta, ``sum(attributions) = f(x) - f(b)``; xattr's
default rules keep it exactly through affine maps, elementwise nonlinearities, max-pools,
log-softmax and products of activations, but not through a softmax inside the model, layer
norms or attention written with the default rules (a torchvision ViT: |delta| 7.5 with the
defaults, 3e-5 with `xattr.rule.exact_deep_lift_rules()`). A user who never asks for
``return_delta`` would not see that. So the first call of each `deep_lift` function computes the
gap (one sum over the attributions, which the method has at hand; with ``return_delta`` it is
that result) and warns where it exceeds `REL_TOL` of the scale ``max(|f(x) - f(b)|, sum |a|)``
in some row, naming the size and the remedy. Only the first call: the check reads the gap back
(a device sync on a GPU), and a model whose rules break the property breaks it on every batch.
`xattr.compat.captum.DeepLift` builds a function per ``attribute`` call and clears the flag
(``sum_unchecked``) of all but its first, so a loop over batches warns once, not per batch (the
numbers in the message would defeat Python's once-per-line filter). Skipped where the property is not the method's (``multiply_by_inputs=False``, an
``attribution_func``) and under torch.func transforms (no value to read). Layer DeepLift is not
checked: there a path that bypasses the layer breaks the sum by design.
"""

from __future__ import annotations

import torch

from . import tree as T
from .checks import is_traced
from .warn import warn

REL_TOL = 1e-3  # float32 rounding in deep models stays below ~1e-5 of the scale


def off_by(attr: tuple, gap: torch.Tensor) -> tuple[float, float] | None:
    """(largest |delta|, its relative size) where some row's gap exceeds `REL_TOL` of its scale, else None."""
    if not gap.numel():
        return None
    with torch.no_grad():
        k_axis = gap.ndim - 1
        lead = 1 + k_axis
        flat = [a.detach().reshape(a.shape[:lead] + (-1,)) for a in T.leaves(attr)]
        change = sum(a.sum(-1) for a in flat) - gap.detach()  # f(x) - f(b)
        scale = torch.maximum(change.abs(), sum(a.abs().sum(-1) for a in flat))
        delta = gap.detach().abs()
        rel = (delta / scale.clamp_min(torch.finfo(scale.dtype).tiny)).nan_to_num(nan=0.0)
        worst = float(rel.max())
    return (float(delta.max()), worst) if worst > REL_TOL else None


def warn_if_off(attr: tuple, gap: torch.Tensor, method: str = "deep_lift") -> bool:
    """Warns where the gap is large (NOTE: [Summation-to-delta checked once]); False where it
    cannot be read (under a transform), so a later call checks."""
    if is_traced(gap):
        return False
    found = off_by(attr, gap)
    if found is not None:
        warn(
            f"{method}: the attributions miss summation-to-delta by up to {found[0]:.3g} ({found[1]:.1%} of the "
            "attribution scale): some operation's rule does not carry its exact difference. The default rules' "
            "at a softmax inside the model, layer norms and attention do not (mapping="
            "xattr.rule.exact_deep_lift_rules() makes them exact), nor does any rule where |x - x_ref| < eps (the "
            "gradient there). return_delta=True reports the gap per example. (Checked on the first call only.)"
        )
    return True
