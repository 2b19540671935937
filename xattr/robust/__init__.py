"""Adversarial robustness as pure functions of the model function (docs/robustness.md).

``fgsm`` and ``pgd`` return perturbed inputs; ``attack_comparator`` summarizes a metric under
several attacks; ``min_param_perturbation`` finds the smallest attack strength that fools the
model. Captum's classes over these are in ``xattr.compat.captum`` (FGSM, PGD, AttackComparator,
MinParamPerturbation).
"""

from ._attacks import cross_entropy, fgsm, pgd
from ._metrics import attack_comparator, min_param_perturbation

__all__ = ["attack_comparator", "cross_entropy", "fgsm", "min_param_perturbation", "pgd"]
