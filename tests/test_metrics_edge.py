"""xattr.metrics at the edges: an empty batch is refused early, with the library's wording."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr
from xattr import metrics as M
from xattr.compat import captum as X

D = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 3)).to(D).eval()


def _cases():
    m = _model()
    f = xattr.target(m, 1)
    x0, a0, img0 = torch.zeros(0, 6, dtype=D), torch.zeros(0, 6, dtype=D), torch.zeros(0, 4, 4, dtype=D)
    sal = xattr.saliency(f)
    return {
        "infidelity": lambda: M.infidelity(f, sal, M.gaussian_noise(0.1))(x0),
        "infidelity seeded": lambda: M.infidelity(f, sal, M.gaussian_noise(0.1), generator=0)(x0),
        "infidelity baselines": lambda: M.infidelity(f, a0, M.subset_to_baseline(0.5), baselines=0.0, generator=0)(x0),
        "sensitivity_max": lambda: M.sensitivity_max(sal, x0),
        "sensitivity_max seeded": lambda: M.sensitivity_max(sal, x0, generator=0),
        "deletion": lambda: M.deletion(f, sal)(x0),
        "insertion": lambda: M.insertion(f, a0, feature_mask=torch.tensor([0, 0, 1, 1, 2, 2]))(x0),
        "sparseness": lambda: M.sparseness(a0),
        "sparseness of a function": lambda: M.sparseness(sal, x0),
        "complexity": lambda: M.complexity((a0, a0)),
        "spearman": lambda: M.spearman(a0, a0),
        "top_k_intersection": lambda: M.top_k_intersection(a0, a0, k=2),
        "ssim": lambda: M.ssim(img0, img0),
        "randomization_check": lambda: M.randomization_check(m, lambda mm: xattr.saliency(xattr.target(mm, 0)), x0,
                                                             similarity=("spearman",), generator=0),  # fmt: skip
        "compat infidelity": lambda: X.infidelity(m, lambda x: (0.1 * x, 0.9 * x), x0, a0, target=1),
        "compat sensitivity_max": lambda: X.sensitivity_max(X.Saliency(m).attribute, x0, target=1),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_an_empty_batch_is_refused_early(name):
    """NOTE: [Empty batches]: a ValueError worded as the perturbation methods' (not a reshape error)."""
    with pytest.raises(ValueError, match=r"the batch is empty \(0 examples\)"):
        _cases()[name]()
