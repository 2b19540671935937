"""xattr.concepts: bad arguments of `tcav` and `Concept` are refused by name, before any work.

Each refusal is checked with its message, and next to it the valid calls it must leave alone: a
pool of random examples must give exactly what drawing the random concepts by hand and passing
them as a list gives (the slow reference of the pool branch).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xattr.compat.captum import TCAV
from xattr.concepts import Concept, random_concepts, tcav
from xattr.concepts._classifier import seed_of


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(108, 2)).eval()


def img(seed, n):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


NET, C, POOL, X = net(), Concept(0, "c", img(1, 10)), img(2, 40), img(3, 5)


def run(**kw):
    kw = {"randoms": POOL, "generator": 0, **kw}
    return tcav(NET, ["1"], kw.pop("concepts", [C]), X, 0, **kw)


def same(a, b):
    for c in a:
        for layer in a[c]:
            for f in ("sign_count", "magnitude", "random_sign_count", "random_magnitude", "accuracy", "p_value"):
                assert torch.equal(getattr(a[c][layer], f), getattr(b[c][layer], f)), (c, layer, f)
    assert list(a) == list(b)


# --- n_random_runs and random_size with a pool ----------------------------------------------------


@pytest.mark.parametrize("runs", [0, -1, 1])
def test_pool_runs_below_two_refused(runs):
    with pytest.raises(ValueError, match=rf"n_random_runs must be at least 2 .*got {runs}"):
        run(n_random_runs=runs)


@pytest.mark.parametrize("bad", [2.0, "3", True])
def test_pool_runs_not_int_refused(bad):
    with pytest.raises(TypeError, match="n_random_runs must be an int or None"):
        run(n_random_runs=bad)


@pytest.mark.parametrize("bad, err, msg", [(0, ValueError, "random_size must be at least 1"),
                                           (-3, ValueError, "random_size must be at least 1"),
                                           (41, ValueError, "random_size=41 is more than the pool's 40"),
                                           (True, TypeError, "random_size must be an int or None"),
                                           (5.0, TypeError, "random_size must be an int or None")])  # fmt: skip
def test_pool_random_size_refused(bad, err, msg):
    with pytest.raises(err, match=msg):
        run(n_random_runs=2, random_size=bad)


def test_list_of_randoms_refuses_the_same_runs():
    rs = random_concepts(POOL, 4, 10, generator=0)
    for runs in (0, -1, 1):
        with pytest.raises(ValueError, match="n_random_runs must be at least 2"):
            run(randoms=rs, n_random_runs=runs)
    with pytest.raises(ValueError, match="random_size is for a pool"):
        run(randoms=rs, random_size=5)
    with pytest.raises(TypeError, match="randoms must be a list of Concepts or a pool"):
        run(randoms=[*rs, "r"])


def test_pool_matches_hand_drawn_randoms():
    """The slow reference: the pool branch draws R + 1 concepts exactly as `random_concepts` does."""
    for runs, size in [(None, None), (2, None), (3, 7), (2, 40)]:
        got = run(n_random_runs=runs, random_size=size)
        r = 10 if runs is None else runs
        n = 20 if size is None else size  # default: min(50, half the pool)
        hand = random_concepts(POOL, r + 1, n, generator=seed_of(0, "randoms"))
        same(got, run(randoms=hand))
        assert got["c"]["1"].sign_count.shape == (r,)


@settings(max_examples=6, deadline=None)
@given(st.integers(-5, 4))
def test_runs_property(runs):
    """Every int below 2 is refused; every int from 2 up gives that many runs."""
    if runs < 2:
        with pytest.raises(ValueError, match="n_random_runs"):
            run(n_random_runs=runs, random_size=4)
    else:
        assert run(n_random_runs=runs, random_size=4)["c"]["1"].sign_count.shape == (runs,)


# --- layers, concepts ----------------------------------------------------------------------------


def test_unknown_layer_named():
    with pytest.raises(ValueError, match=r"the model has no submodule 'relu'; see model.named_modules\(\)"):
        tcav(NET, ["relu"], [C], X, 0, randoms=POOL, n_random_runs=2)
    with pytest.raises(ValueError, match=r"no submodule '11' \(did you mean '1'"):
        tcav(NET, {"x": "11"}, [C], X, 0, randoms=POOL, n_random_runs=2)


def test_unknown_layer_named_in_compat(tmp_path):
    with pytest.raises(ValueError, match="the model has no submodule 'relu'"):
        TCAV(NET, ["relu"], save_path=str(tmp_path))
    assert [n for n, _ in TCAV(NET, ["1"], save_path=str(tmp_path))._named] == ["1"]


@pytest.mark.parametrize("bad, what", [("c", "str"), (5, "int"), (None, "NoneType")])
def test_concepts_not_concepts(bad, what):
    with pytest.raises(TypeError, match=f"concepts must be a Concept or a list of Concepts, got {what}"):
        run(concepts=bad, n_random_runs=2)


def test_concepts_list_items_and_empty():
    with pytest.raises(TypeError, match="got a str in the list"):
        run(concepts=[C, "d"], n_random_runs=2)
    with pytest.raises(ValueError, match="concepts is empty"):
        run(concepts=[], n_random_runs=2)
    one, listed = run(concepts=C, n_random_runs=2), run(concepts=(C,), n_random_runs=2)
    same(one, listed)


def test_empty_concept_named():
    with pytest.raises(ValueError, match="Concept 'e' has no examples"):
        Concept(0, "e", torch.rand(0, 1, 6, 6))
    with pytest.raises(ValueError, match="Concept 'e' has no examples"):
        Concept(0, "e", (torch.rand(0, 1, 6, 6),))
    lazy = Concept(1, "e", [img(1, 4), torch.rand(0, 1, 6, 6)])  # an iterable: known only when read
    with pytest.raises(ValueError, match=r"concept 'e-1': batch 1 has no examples"):
        run(concepts=[lazy], n_random_runs=2)
    with pytest.raises(ValueError, match=r"concept 'e-1' has no examples \(its data yielded no batch\)"):
        run(concepts=[Concept(1, "e", [])], n_random_runs=2)


# --- the Concept constructor ---------------------------------------------------------------------


@pytest.mark.parametrize("cid", ["a", 1.0, True, None])
def test_concept_id_must_be_int(cid):
    with pytest.raises(TypeError, match="Concept: id must be an int"):
        Concept(cid, "c", img(1, 3))


@pytest.mark.parametrize("name", [0, None, b"c"])
def test_concept_name_must_be_str(name):
    with pytest.raises(TypeError, match="Concept: name must be a str"):
        Concept(0, name, img(1, 3))


@pytest.mark.parametrize("data", [5, 2.5, "images", torch.tensor(1.0)])
def test_concept_data_must_be_examples(data):
    with pytest.raises((TypeError, ValueError), match="Concept 'c'.*data must be"):
        Concept(0, "c", data)


def test_concept_tag_must_be_str():
    with pytest.raises(TypeError, match="tag must be a str"):
        Concept(0, "c", img(1, 3), tag=5)


def test_concept_valid_forms_still_accepted():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(img(1, 6)), batch_size=4)
    for data in (img(1, 6), (img(1, 6),), [img(1, 3), img(2, 3)], loader, None, (x for x in [img(1, 2)])):
        c = Concept(7, "c", data, tag="t")
        assert (c.id, c.name, c.cache_key) == (7, "c", "c-7-t")
    # the same examples in any of the forms give the same scores
    same(run(concepts=[Concept(0, "c", [img(1, 10)[:4], img(1, 10)[4:]])], n_random_runs=2), run(n_random_runs=2))


@settings(max_examples=10, deadline=None)
@given(st.one_of(st.integers(-(2**40), 2**40), st.booleans(), st.floats(allow_nan=False), st.text(max_size=3)))
def test_concept_id_property(cid):
    """Exactly the ints that are not bools are ids."""
    if isinstance(cid, int) and not isinstance(cid, bool):
        assert Concept(cid, "c", None).identifier == f"c-{cid}"
    else:
        with pytest.raises(TypeError, match="id must be an int"):
            Concept(cid, "c", None)
