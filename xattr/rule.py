"""Backward rules for `xattr.rules`: the `Rule` base class and the rules xattr ships.

    xattr.rules(model, {F.relu: xattr.rule.Guided()})          # guided backprop's backward
    xattr.rules(model, xattr.rule.deep_lift_rules())            # DeepLift's Rescale everywhere

See docs/rules.md for how rules are chosen and how to write one.
"""

from ._src.deeplift_rules import Deconv, Guided, Rescale, paired_rows
from ._src.backprop_methods import deep_lift_rules
from ._src.ops import ELEMENTWISE, KINDS, Op
from ._src.rules import Rule, Saved

__all__ = ["Deconv", "ELEMENTWISE", "Guided", "KINDS", "Op", "Rescale", "Rule", "Saved", "deep_lift_rules", "paired_rows"]
