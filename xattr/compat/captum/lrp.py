"""Captum's LRP and LayerLRP as thin adapters over ``xattr.lrp`` and ``xattr.layer_lrp``.

    LRP(model).attribute(x, target=t)
        -> xattr.lrp(xattr.target(model, t), composite=c)(x)
    LayerLRP(model, layer).attribute(x, target=t)
        -> xattr.layer_lrp(xattr.at_layer(xattr.target(model, t), layer), composite=c)(x)

The composite ``c`` is xattr's Captum-like default (`xattr.rule.lrp_rules`: epsilon = 1e-9 for
linear, conv, batch-norm and pooling layers, relevance passing through activations) plus, keyed
by module instance, the rule each module carries as ``module.rule``, read at every ``attribute``
call as Captum does. A rule is one of Captum's own (``EpsilonRule``, ``GammaRule``,
``Alpha1_Beta0_Rule``, ``IdentityRule`` from ``captum.attr._utils.lrp_rules``, recognised
without importing captum), this module's lookalikes of the same names (for code that must run
without captum), or any ``xattr.rule.Rule``. Translation:

    EpsilonRule(epsilon)                 -> xattr.rule.Epsilon(epsilon)
    GammaRule(gamma, set_bias_to_zero)   -> xattr.rule.Gamma(gamma, zero_bias=set_bias_to_zero, modify_bias=False)
    Alpha1_Beta0_Rule(set_bias_to_zero)  -> xattr.rule.PositiveWeights(zero_bias=set_bias_to_zero)
    IdentityRule()                       -> relevance passes unchanged (xattr.rule.Pass, for any same-shape layer)

Return conventions are Captum's (tensor in -> tensor out, tuple in -> tuple out; a list of
layers gives a list), and so is the sign of the convergence delta: ``f(x) - sum(R)`` (the
functional API's ``return_delta`` gives ``sum(R) - f(x)``). The deliberate differences (rules
stay on the modules, F.tanh, residual adds, reused modules, modules Captum rejects) are listed
in docs/migration_rules.md.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr._src.lrp_methods import _total
from xattr._src.lrp_rules import LAYERS, Epsilon, Gamma, PositiveWeights, _n_tensors, _safe_divide, lrp_rules
from xattr._src.ops import ELEMENTWISE
from xattr._src.rule_base import Rule, Saved

from ._convert import Call
from .bases import GradientAttribution
from .layer import LayerAttribution

# ----------------------------------------------------------------------------- rules


class _Identity(Rule):
    """Captum's IdentityRule: the relevance at a layer's output passes to its input unchanged.

    Captum allows it on any layer whose input and output have one shape (batch norm, a square
    linear layer, an activation); the layer's weights play no part.
    """

    kinds = frozenset(LAYERS | ELEMENTWISE)

    def forward(self, op, *tensors):
        y = op.fn(*tensors)
        if y.shape != tensors[0].shape:
            raise ValueError(
                f"IdentityRule passes relevance unchanged, so it needs a layer whose output has its input's shape; "
                f"this {op.kind} maps {tuple(tensors[0].shape)} to {tuple(y.shape)}"
            )
        return y, (_safe_divide(y, tensors[0]),)

    def backward(self, op, saved: Saved, grad):
        return (grad * saved.extras[0],) + (None,) * (_n_tensors(op) - 1)


class PropagationRule:
    """Base of this module's lookalikes of Captum's rule classes (set one as ``module.rule``).

    ``xattr_rule()`` gives the xattr `Rule` it stands for; ``STABILITY_FACTOR`` is the epsilon of
    the stabiliser, 1e-9 unless the rule sets it (Captum's attribute and default).
    """

    STABILITY_FACTOR = 1e-9

    def xattr_rule(self) -> Rule:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class EpsilonRule(PropagationRule):
    """Captum's ``EpsilonRule(epsilon=1e-9)``: LRP-epsilon (`xattr.rule.Epsilon`)."""

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.STABILITY_FACTOR = epsilon

    def xattr_rule(self) -> Rule:
        return Epsilon(self.STABILITY_FACTOR)


class GammaRule(PropagationRule):
    """Captum's ``GammaRule(gamma=0.25, set_bias_to_zero=False)``: weights ``w + gamma * max(w, 0)``,
    the bias kept (or zeroed): `xattr.rule.Gamma` with ``modify_bias=False``."""

    def __init__(self, gamma: float = 0.25, set_bias_to_zero: bool = False) -> None:
        self.gamma = gamma
        self.set_bias_to_zero = set_bias_to_zero

    def xattr_rule(self) -> Rule:
        return _on_norm_parameters(Gamma(self.gamma, self.STABILITY_FACTOR, zero_bias=self.set_bias_to_zero, modify_bias=False))


class Alpha1_Beta0_Rule(PropagationRule):  # noqa: N801 - Captum's name
    """Captum's ``Alpha1_Beta0_Rule(set_bias_to_zero=False)``: weights clamped at zero, bias kept
    (or zeroed): `xattr.rule.PositiveWeights` (`xattr.rule.AlphaBeta` is alpha-beta for any sign)."""

    def __init__(self, set_bias_to_zero: bool = False) -> None:
        self.set_bias_to_zero = set_bias_to_zero

    def xattr_rule(self) -> Rule:
        return _on_norm_parameters(PositiveWeights(self.STABILITY_FACTOR, zero_bias=self.set_bias_to_zero))


class IdentityRule(EpsilonRule):
    """Captum's ``IdentityRule()``: relevance passes a same-shape layer unchanged (e.g. batch norm)."""

    def xattr_rule(self) -> Rule:
        return _Identity()


_CAPTUM_RULES = "captum.attr._utils.lrp_rules"


def _on_norm_parameters(rule: Rule) -> Rule:
    """``rule`` applied to a batch norm's own weight and bias, as Captum's hooks rewrite them
    (xattr's rules act on the norm's affine map; docs/migration_rules.md)."""
    rule.norm_parameters = True
    return rule


def xattr_rule(rule, where: str = "a module") -> Rule | None:
    """The xattr `Rule` for a ``module.rule`` value: Captum's rule objects, this module's
    lookalikes, or an xattr Rule as it is; None for None."""
    if rule is None or isinstance(rule, Rule):
        return rule
    if isinstance(rule, PropagationRule):
        return rule.xattr_rule()
    cls = type(rule)
    if cls.__module__ == _CAPTUM_RULES:  # Captum's own classes, read without importing captum
        eps = getattr(rule, "STABILITY_FACTOR", 1e-9)
        zero_bias = bool(getattr(rule, "set_bias_to_zero", False))
        if cls.__name__ == "IdentityRule":
            return _Identity()
        if cls.__name__ == "EpsilonRule":
            return Epsilon(eps)
        if cls.__name__ == "GammaRule":
            return _on_norm_parameters(Gamma(rule.gamma, eps, zero_bias=zero_bias, modify_bias=False))
        if cls.__name__ == "Alpha1_Beta0_Rule":
            return _on_norm_parameters(PositiveWeights(eps, zero_bias=zero_bias))
    if any(c.__name__ == "PropagationRule" and c.__module__ == _CAPTUM_RULES for c in cls.__mro__):
        raise TypeError(
            f"{where} has rule {cls.__name__}, a custom Captum PropagationRule, which xattr cannot translate "
            "(Captum's rules work by rewriting weights in hooks). Write it as an xattr.rule.Rule (docs/rules.md) "
            "and set that as module.rule."
        )
    raise TypeError(
        f"{where} has rule {rule!r}: set module.rule to one of Captum's rules (EpsilonRule, GammaRule, "
        "Alpha1_Beta0_Rule, IdentityRule), xattr.compat.captum.lrp's classes of the same names, or an "
        "xattr.rule.Rule"
    )


def composite(model: Callable, verbose: bool = False) -> dict:
    """xattr's default LRP mapping plus each module's ``module.rule``, keyed by the module."""
    mapping = lrp_rules()
    if not isinstance(model, nn.Module):
        return mapping
    for name, module in model.named_modules():
        given = getattr(module, "rule", None)
        rule = xattr_rule(given, f"module {name or type(module).__name__!r}")
        if rule is not None:
            mapping[module] = rule
        if verbose:
            _say_applied(module, given, mapping)
    return mapping


# Captum's verbose output lists each leaf module whose forward its rules hook: the modules of
# these types (their default rule where none is set), not its activations (ReLU, Dropout, Tanh),
# whose rules it ignores; the default rule's key in xattr's mapping by module type
_DEFAULT_KEYS = ((nn.Linear, F.linear), ((nn.Conv1d, nn.Conv2d, nn.Conv3d), torch.conv2d),
                 ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), F.batch_norm),
                 ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), F.max_pool2d),
                 ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d), F.avg_pool2d))  # fmt: skip
_IGNORED = (nn.ReLU, nn.Dropout, nn.Tanh)


def _say_applied(module: nn.Module, given, mapping: dict) -> None:
    """``LRP(..., verbose=True)``: prints the rule applied at a leaf module, as Captum does."""
    if next(module.children(), None) is not None or isinstance(module, _IGNORED):
        return
    if given is None:
        given = next((mapping.get(key) for types, key in _DEFAULT_KEYS if isinstance(module, types)), None)
    if given is not None:
        print(f"Applied {given} on layer {module}")


def _captum_delta(delta: torch.Tensor) -> torch.Tensor:
    """xattr's ``sum(R) - f(x)`` as Captum's ``f(x) - sum(R)``, flattened like Captum's."""
    return (-delta).reshape(-1)


# ----------------------------------------------------------------------------- LRP, LayerLRP


class LRP(GradientAttribution):
    """``LRP(model)``: layer-wise relevance propagation with Captum's default rules and ``module.rule``.

    xattr: ``xattr.lrp(xattr.target(model, target), composite=composite(model), argnums=...,
    return_delta=True)``; the delta is returned with Captum's sign, ``f(x) - sum(R)``.
    """

    def __init__(self, model: Callable) -> None:
        super().__init__(model)
        self.model = model
        composite(model)  # Captum checks the rules' types on construction

    def attribute(self, inputs, target=None, additional_forward_args=None, return_convergence_delta: bool = False,
                  verbose: bool = False):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, return_convergence_delta=return_convergence_delta,
                         verbose=verbose)  # fmt: skip

    def _functional(self, call: Call, *, return_convergence_delta=False, verbose=False):
        fn = xattr.lrp(call.model, composite=composite(self.model, verbose), argnums=call.argnums, return_delta=True)

        def run(*args):
            attr, delta = fn(*args)
            return attr, (_captum_delta(delta) if return_convergence_delta else None)

        return run, ()

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @staticmethod
    def compute_convergence_delta(attributions, output: torch.Tensor) -> torch.Tensor:
        """Captum's ``output - sum(attributions)`` per example (over every input of a tuple)."""
        attributions = attributions if isinstance(attributions, tuple) else (attributions,)
        total = sum(a.reshape(a.shape[0], -1).sum(1) for a in attributions)
        return output.flatten() - total.flatten()


class LayerLRP(LayerAttribution, GradientAttribution):
    """``LayerLRP(model, layer)``: the LRP relevance of a layer's output (or input); ``layer`` may be a list.

    xattr: ``xattr.layer_lrp(xattr.at_layer(xattr.target(model, target), layer,
    inputs=attribute_to_layer_input), composite=composite(model), return_delta=True)``; a list
    of layers is one split of them all, each layer's relevance read from one pass (as Captum). Deltas use
    Captum's sign, ``f(x) - sum(R)``, and are a list for a list of layers. ``device_ids`` is
    accepted and ignored; ``call_index`` picks the call of a module called more than once.
    """

    def __init__(self, model: Callable, layer, device_ids=None, *, call_index=None) -> None:
        super().__init__(model, layer, device_ids, call_index=call_index)
        self.model = model
        composite(model)

    def attribute(self, inputs, target=None, additional_forward_args=None, return_convergence_delta: bool = False,
                  attribute_to_layer_input: bool = False, verbose: bool = False):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, return_convergence_delta=return_convergence_delta,
                         attribute_to_layer_input=attribute_to_layer_input, verbose=verbose)  # fmt: skip

    def _functional(self, call: Call, *, return_convergence_delta=False, attribute_to_layer_input=False, verbose=False):
        mapping = composite(self.model, verbose)
        several = isinstance(self.layer, (list, tuple))
        layers = list(self.layer) if several else self.layer
        # one pass for a list too: each layer's relevance is read from the same backward, as Captum's
        fn = xattr.layer_lrp(xattr.at_layer(call.model, layers, inputs=attribute_to_layer_input, call_index=self.call_index),
                             composite=mapping, return_delta=True)  # fmt: skip

        def run(*args):
            attr, delta = fn(*args)
            if not several:
                return attr, (_captum_delta(delta) if return_convergence_delta else None)
            if not return_convergence_delta:
                return tuple(attr), None
            out = _total(attr, delta) - delta  # delta is sum(R over every layer) - f(x)
            return tuple(attr), [_captum_delta(_total(a, delta) - out) for a in attr]

        return run, ()

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    compute_convergence_delta = LRP.compute_convergence_delta


__all__ = [
    "Alpha1_Beta0_Rule",
    "EpsilonRule",
    "GammaRule",
    "IdentityRule",
    "LRP",
    "LayerLRP",
    "PropagationRule",
]
