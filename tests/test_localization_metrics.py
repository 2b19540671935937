"""Localization metrics (pointing game, relevance mass and rank accuracy, attribution
localization) against brute-force references: explicit loops over examples and pixels, ties
resolved by averaging over every order of the pixels; known answers, invariances and errors."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from xattr.metrics import attribution_localization, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy

D = torch.float64


def orders(n: int):
    """Every order of n pixels: a tie broken each possible way, equally often."""
    return list(itertools.permutations(range(n)))


def ranked(values: list, order) -> list:
    """Pixel indices by decreasing value, ties in the given order (a stable sort of that order)."""
    return sorted(order, key=lambda j: -values[j])


def ref_pointing(maps, masks, shape, tolerance=0.0):
    out = []
    for m, k in zip(maps, masks):
        values, inside = m.flatten().tolist(), k.flatten().tolist()
        coords = list(itertools.product(*(range(n) for n in shape)))
        hit_pixels = [
            any(inside[q] and math.dist(coords[j], coords[q]) <= tolerance for q in range(len(values)))
            for j in range(len(values))
        ]
        every = orders(len(values))
        out.append(sum(hit_pixels[ranked(values, o)[0]] for o in every) / len(every))
    return torch.tensor(out, dtype=D)


def ref_rank(maps, masks):
    out = []
    for m, k in zip(maps, masks):
        values, inside = m.flatten().tolist(), k.flatten().tolist()
        size = sum(inside)
        every = orders(len(values))
        out.append(sum(sum(inside[j] for j in ranked(values, o)[:size]) for o in every) / len(every) / size)
    return torch.tensor(out, dtype=D)


def ref_mass(maps, masks):
    out = []
    for m, k in zip(maps, masks):
        total = inside = 0.0
        for v, i in zip(m.flatten().tolist(), k.flatten().tolist()):
            if v > 0:
                total += v
                inside += v if i else 0.0
        out.append(inside / total if total > 0 else math.nan)
    return torch.tensor(out, dtype=D)


def tied_maps(seed: int, batch: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributions (B, 2, *shape) whose channel sums take few values (many ties), and masks."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-2, 3, (batch, 2) + tuple(shape), generator=g).to(D)
    k = torch.rand((batch,) + tuple(shape), generator=g) < 0.4
    k.view(batch, -1)[:, 0] = True  # never empty
    return a, k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_brute_force_references_with_ties(seed):
    a, k = tied_maps(seed, 3, (2, 3))
    maps = a.sum(1)
    torch.testing.assert_close(pointing_game(a, k), ref_pointing(maps, k, (2, 3)), atol=1e-12, rtol=0)
    torch.testing.assert_close(relevance_rank_accuracy(a, k), ref_rank(maps, k), atol=1e-12, rtol=0)
    torch.testing.assert_close(relevance_mass_accuracy(a, k), ref_mass(maps, k), atol=1e-12, rtol=0, equal_nan=True)


@pytest.mark.parametrize("tolerance", [1.0, 1.5, 2.3])
def test_pointing_tolerance_matches_brute_force_distances(tolerance):
    a, k = tied_maps(5, 4, (2, 3))
    k[:] = False
    k[:, 0, 0] = True  # one mask pixel in the corner: the tolerance decides
    got = pointing_game(a, k, tolerance=tolerance)
    torch.testing.assert_close(got, ref_pointing(a.sum(1), k, (2, 3), tolerance), atol=1e-12, rtol=0)
    # one spatial dim (a sequence) and three (a volume)
    a1, k1 = tied_maps(6, 2, (6,))
    torch.testing.assert_close(pointing_game(a1, k1, tolerance=tolerance), ref_pointing(a1.sum(1), k1, (6,), tolerance))
    a3, k3 = tied_maps(7, 2, (2, 1, 3))
    torch.testing.assert_close(
        pointing_game(a3, k3, tolerance=tolerance), ref_pointing(a3.sum(1), k3, (2, 1, 3), tolerance)
    )


def test_known_answers_on_hand_made_maps():
    k = torch.zeros(8, 8, dtype=torch.bool)
    k[2:5, 3:6] = True  # 9 of 64 pixels
    inside = torch.zeros(1, 1, 8, 8, dtype=D)
    inside[0, 0, 2:5, 3:6] = torch.arange(1.0, 10.0, dtype=D).reshape(3, 3)
    inside[0, 0, 0, 0] = -5.0  # negative relevance outside does not count against the mass
    assert pointing_game(inside, k).item() == 1.0
    assert relevance_mass_accuracy(inside, k).item() == 1.0
    assert relevance_rank_accuracy(inside, k).item() == 1.0
    assert attribution_localization(inside, k, weighted=True).item() == pytest.approx(64 / 9)
    uniform = torch.full((1, 1, 8, 8), 0.3, dtype=D)
    for metric in (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy):
        assert metric(uniform, k).item() == pytest.approx(9 / 64, abs=1e-14)
    assert attribution_localization(uniform, k, weighted=True).item() == pytest.approx(1.0)
    outside = torch.zeros(1, 1, 8, 8, dtype=D)
    outside[0, 0, 7, 7] = 1.0
    assert pointing_game(outside, k).item() == 0.0
    assert relevance_mass_accuracy(outside, k).item() == 0.0
    # a max one pixel diagonally off the box's corner (4, 5): distance sqrt(2)
    near = torch.zeros(1, 1, 8, 8, dtype=D)
    near[0, 0, 5, 6] = 1.0
    assert pointing_game(near, k, tolerance=1.0).item() == 0.0
    assert pointing_game(near, k, tolerance=1.5).item() == 1.0
    # half the positive mass inside
    half = torch.zeros(1, 1, 8, 8, dtype=D)
    half[0, 0, 3, 4], half[0, 0, 7, 0] = 2.0, 2.0
    assert relevance_mass_accuracy(half, k).item() == 0.5
    assert attribution_localization(half, k).item() == 0.5


def test_no_positive_relevance_gives_nan_mass():
    k = torch.ones(2, 3, dtype=torch.bool)
    a = torch.tensor([[[0.0, -1.0, -2.0], [0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    got = relevance_mass_accuracy(a.unsqueeze(1), k[None].expand(2, 2, 3))
    assert math.isnan(got[0].item()) and got[1].item() == 1.0
    assert math.isnan(attribution_localization(a.unsqueeze(1), k, weighted=True)[0].item())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), power=st.integers(-6, 6), batch=st.integers(1, 3))
def test_positive_rescaling_changes_nothing(seed, power, batch):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 3, 4, 5, generator=g, dtype=D)
    k = torch.rand(batch, 4, 5, generator=g) < 0.3
    k[:, 0, 0] = True
    c = 2.0**power  # exact in floating point: no ties are made or broken by rounding
    for metric in (pointing_game, relevance_rank_accuracy):
        assert torch.equal(metric(c * a, k), metric(a, k))
    torch.testing.assert_close(relevance_mass_accuracy(c * a, k), relevance_mass_accuracy(a, k))
    c2 = 0.1 + 10 * torch.rand((), generator=g).item()  # any positive scale, up to rounding for the mass
    torch.testing.assert_close(relevance_mass_accuracy(c2 * a, k), relevance_mass_accuracy(a, k))
    torch.testing.assert_close(relevance_rank_accuracy(c2 * a, k), relevance_rank_accuracy(a, k))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_permuting_pixels_with_the_mask_changes_nothing_even_with_ties(seed):
    a, k = tied_maps(seed, 2, (3, 4))
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(seed + 1))
    pa = a.reshape(2, 2, 12)[:, :, perm].reshape(2, 2, 3, 4)
    pk = k.reshape(2, 12)[:, perm].reshape(2, 3, 4)
    for metric in (pointing_game, relevance_rank_accuracy, relevance_mass_accuracy):
        torch.testing.assert_close(metric(pa, pk), metric(a, k), atol=1e-12, rtol=0, equal_nan=True)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 4))
def test_batch_equals_each_example_alone(seed, batch):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 2, 5, 5, generator=g)
    k = torch.rand(batch, 5, 5, generator=g) < 0.5
    k[:, 2, 2] = True
    for metric in (pointing_game, relevance_rank_accuracy, relevance_mass_accuracy, attribution_localization):
        whole = metric(a, k)
        assert whole.shape == (batch,) and whole.dtype == torch.float32
        for i in range(batch):
            torch.testing.assert_close(metric(a[i : i + 1], k[i : i + 1])[0], whole[i])


def test_channels_are_summed_and_mask_forms_agree():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, 6, 6, generator=g, dtype=D)
    k = torch.rand(3, 6, 6, generator=g) < 0.3
    k[:, 0, 0] = True
    for metric in (pointing_game, relevance_rank_accuracy, relevance_mass_accuracy):
        want = metric(a.sum(1), k, channel_dim=None)
        torch.testing.assert_close(metric(a, k), want)
        torch.testing.assert_close(metric(a, k[:, None]), want)  # (B, 1, H, W)
        torch.testing.assert_close(metric(a, k.to(D)), want)  # 0/1 floats
        torch.testing.assert_close(metric(a.movedim(1, -1), k, channel_dim=-1), want)  # channel-last
        shared = metric(a, k[0])  # one mask for every example
        torch.testing.assert_close(shared, metric(a, k[0].expand(3, 6, 6)))


def test_attribution_function_and_inputs_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 4)
    x0 = x.clone()
    k = torch.zeros(4, 4, dtype=torch.bool)
    k[1:3, 1:3] = True
    sal = xattr.saliency(xattr.target(model, 1))
    torch.testing.assert_close(relevance_mass_accuracy(sal, k, x), relevance_mass_accuracy(sal(x), k))
    torch.testing.assert_close(pointing_game(sal, k, x, tolerance=1), pointing_game(sal(x), k, tolerance=1))
    assert torch.equal(x, x0)
    a = torch.randn(2, 1, 4, 4)
    a0 = a.clone()
    relevance_rank_accuracy(a, k)
    assert torch.equal(a, a0)


def test_bad_arguments_are_refused_with_a_message():
    a = torch.randn(2, 1, 4, 4)
    k = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="does not match the map"):
        pointing_game(a, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match the map"):
        relevance_mass_accuracy(a, torch.ones(3, 4, 4, dtype=torch.bool))
    empty = k.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"example\(s\) \[1\] is empty"):
        relevance_rank_accuracy(a, empty)
    with pytest.raises(ValueError, match="only 0 and 1"):
        relevance_mass_accuracy(a, torch.full((2, 4, 4), 0.5))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(a, k, tolerance=-1)
    with pytest.raises(ValueError, match="nan or inf"):
        pointing_game(a.clone().fill_(math.nan), k)
    with pytest.raises(TypeError, match="one attribution tensor"):
        relevance_mass_accuracy((a, a), k)
    with pytest.raises(ValueError, match="channel_dim"):
        pointing_game(a, k, channel_dim=0)
    with pytest.raises(ValueError, match="channel_dim=None"):
        pointing_game(torch.randn(2, 16), torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a tensor"):
        pointing_game(a, [[1]])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        pointing_game(torch.randn(0, 1, 4, 4), torch.ones(4, 4, dtype=torch.bool))
