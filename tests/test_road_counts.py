"""ROAD's ``counts=``: "nearest" removes round(p H W) pixels, "authors" what the authors' code
removes at the same fraction removed (int(p H W) for MoRF; for LeRF every pixel but the int((1 - p)
H W) most relevant), each against a loop that removes and imputes pixel by pixel."""

import numpy as np
import pytest
import torch
from test_road import images, numpy_imputation
from torch import nn

from xattr import metrics as M
from xattr.metrics import _road

D = torch.float64
PS = (0.1, 0.25, 0.35, 0.5, 0.66, 0.8)  # of 10 pixels: nearest 1 2 4 5 7 8, MoRF 1 2 3 5 6 8, LeRF 1 3 4 5 7 9


def authors_removed(p: float, pixels: int, order: str) -> int:
    """The authors' code, in their terms: MoRF at p removes int(p n); LeRF at q keeps the int(q n)
    most relevant, so at q = 1 - p (p removed) it removes n - int((1 - p) n)."""
    return int(p * pixels) if order == "morf" else pixels - int((1 - p) * pixels)


def loop(model, x, ranks, removed_counts):
    b, c, h, w = x.shape
    out = np.zeros((b, len(removed_counts)))
    for i in range(b):
        for k, n in enumerate(removed_counts):
            removed = (ranks[i] < n).reshape(h, w).numpy()
            with torch.no_grad():
                out[i, k] = model(torch.as_tensor(numpy_imputation(x[i].numpy(), removed))[None])[0].item()
    return torch.as_tensor(out)


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("counts", ["nearest", "authors"])
def test_counts_remove_what_they_say_and_the_scores_match_a_loop(order, counts):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 2 * 5, 1)).to(D).eval()
    x = images(21, (2, 1, 2, 5))  # 10 pixels
    attr = torch.randn(2, 1, 2, 5, generator=torch.Generator().manual_seed(22), dtype=D)
    curve = M.road(lambda v: net(v)[:, 0], attr, percentages=PS, order=order, noise=0.0, ties="index", counts=counts)(x)
    want = [round(p * 10) for p in PS] if counts == "nearest" else [authors_removed(p, 10, order) for p in PS]
    assert curve.fractions.tolist() == [n / 10 for n in want]
    ranks = _road._ranks(attr.reshape(2, -1), order == "morf", "index", None)
    torch.testing.assert_close(curve.scores, loop(net, x, ranks, want), atol=1e-10, rtol=0)


def test_the_two_counts_differ_where_rounding_down_does():
    assert [authors_removed(p, 10, "morf") for p in PS] == [1, 2, 3, 5, 6, 8]
    assert [authors_removed(p, 10, "lerf") for p in PS] == [1, 3, 4, 5, 7, 9]  # (1 - 0.8) * 10 is 1.99...
    assert [round(p * 10) for p in PS] == [1, 2, 4, 5, 7, 8]
    assert authors_removed(0.29, 100, "morf") == 28  # 0.29 * 100 is 28.999999999999996
    x = images(23, (1, 1, 2, 5))
    attr = torch.arange(10, dtype=D).reshape(1, 1, 2, 5)
    f = lambda v: v.flatten(1).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="removes all 10 pixels"):  # (1 - 0.9) * 10 is 0.999...: their LeRF keeps none
        M.road(f, attr, percentages=(0.9,), order="lerf", noise=0.0, counts="authors")(x)
    assert M.road(f, attr, percentages=(0.9,), order="lerf", noise=0.0)(x).fractions.tolist() == [0.9]


def test_the_entry_passes_counts_on_and_bad_counts_are_refused():
    entry = M.entries.road(order="lerf", counts="authors")
    assert entry.name == "road_lerf"
    with pytest.raises(ValueError, match="counts must be 'nearest'.*or 'authors'"):
        M.road(lambda v: v.sum((1, 2, 3)), torch.zeros(1, 1, 2, 2), counts="floor")
    with pytest.raises(ValueError, match="counts must be 'nearest'.*or 'authors'"):
        M.entries.road(counts="floor")
