"""Backward rules for `xattr.rules`: the `Rule` base class and the rules xattr ships.

    xattr.rules(model, {F.relu: xattr.rule.Guided()})          # guided backprop's backward
    xattr.rules(model, xattr.rule.deep_lift_rules())            # DeepLift's Rescale everywhere
    xattr.deep_lift(f, mapping=xattr.rule.exact_deep_lift_rules())  # ... and exact through transformers
    xattr.lrp(f, composite=xattr.rule.epsilon_plus())           # an LRP composite

See docs/rules.md for how rules are chosen and how to write one.
"""

from ._src.deeplift_rules import Rescale, paired_rows
from ._src.guided_rules import Deconv, Guided
from ._src.attention_rules import FixedAttention, FixedStd
from ._src.gate_rules import FixedGate
from ._src.deeplift_products import Product
from ._src.deeplift_softmax import ExactSoftmax
from ._src.unfused import Unfused
from ._src.exact_rules import exact_deep_lift_rules
from ._src.attn_lrp import attn_lrp_rules
from ._src.backprop_methods import deep_lift_rules
from ._src.lrp_input_rules import Flat, WSquare, ZBox
from ._src.lrp_generalized_gamma import GeneralizedGamma
from ._src.lrp_rules import (
    AlphaBeta,
    Block,
    Epsilon,
    Gamma,
    Pass,
    PositiveWeights,
    Refuse,
    ZPlus,
    epsilon_gamma_box,
    epsilon_plus,
    lrp_rules,
)
from ._src.ops import ELEMENTWISE, KINDS, Op
from ._src.rule_base import Rule, Saved, pullback

__all__ = [
    "AlphaBeta",
    "Block",
    "Deconv",
    "ELEMENTWISE",
    "Epsilon",
    "ExactSoftmax",
    "FixedAttention",
    "FixedGate",
    "FixedStd",
    "Flat",
    "Gamma",
    "GeneralizedGamma",
    "Guided",
    "KINDS",
    "Op",
    "Pass",
    "PositiveWeights",
    "Product",
    "Refuse",
    "Rescale",
    "Rule",
    "Saved",
    "Unfused",
    "WSquare",
    "ZBox",
    "ZPlus",
    "attn_lrp_rules",
    "deep_lift_rules",
    "epsilon_gamma_box",
    "exact_deep_lift_rules",
    "epsilon_plus",
    "lrp_rules",
    "paired_rows",
    "pullback",
]
