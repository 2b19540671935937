"""ProductBaselines: the same draws as Captum's under the same ``random`` seed, a private stream
with ``rng``, joint (tuple) keys, clear errors, and use as a TextTemplateInput's baselines."""

import collections
import random

import pytest

from xattr.compat.captum import ProductBaselines, TextTemplateInput

captum_attr = pytest.importorskip("captum.attr")

LISTS = [["a", "b", "c"], ["x", "y"], [1, 2, 3, 4]]
DICT = {"name": ["Alex", "Sam", "Kim"], ("city", "country"): [("Oslo", "Norway"), ("Lima", "Peru")]}


@pytest.mark.parametrize("values", [LISTS, DICT], ids=["lists", "dict"])
def test_same_draws_as_captum(values):
    ours, theirs = ProductBaselines(values), captum_attr.ProductBaselines(values)
    random.seed(7)
    got = [ours() for _ in range(20)]
    random.seed(7)
    want = [theirs() for _ in range(20)]
    assert got == want


def test_draws_cover_the_product_uniformly():
    rng = random.Random(1)
    pb = ProductBaselines(LISTS, rng=rng)
    counts = collections.Counter(tuple(pb()) for _ in range(24000))
    assert len(counts) == 3 * 2 * 4
    assert max(counts.values()) / min(counts.values()) < 1.25  # 1000 expected each


def test_private_stream_is_reproducible_and_leaves_random_alone():
    random.seed(3)
    before = random.random()
    random.seed(3)
    a = [ProductBaselines(DICT, rng=random.Random(5)).sample() for _ in range(3)]
    assert random.random() == before  # the global stream did not move
    b = [ProductBaselines(DICT, rng=random.Random(5)).sample() for _ in range(3)]
    assert a == b
    assert set(a[0]) == {"name", "city", "country"}
    assert (a[0]["city"], a[0]["country"]) in DICT[("city", "country")]


def test_as_template_baselines():
    import torch

    pb = ProductBaselines({"who": ["someone"], "where": ["somewhere", "nowhere"]}, rng=random.Random(0))
    inp = TextTemplateInput("{who} went {where}", {"who": "Ann", "where": "home"}, baselines=pb)
    text = inp.to_model_input(torch.tensor([[0, 0]]))
    assert text in ("someone went somewhere", "someone went nowhere")
    assert inp.to_model_input(torch.tensor([[1, 1]])) == "Ann went home"


def test_clear_errors():
    with pytest.raises(TypeError, match="list of candidate lists or a dict"):
        ProductBaselines("abc")
    with pytest.raises(ValueError, match="non-empty list"):
        ProductBaselines([["a"], []])
    with pytest.raises(ValueError, match="non-empty list"):
        ProductBaselines({"k": "word"})
    with pytest.raises(ValueError, match="tuples of 2"):
        ProductBaselines({("a", "b"): ["x"]}).sample()
