"""xattr.compat.captum.concepts (TCAV, Concept, CAV, Classifier) against Captum 0.9's TCAV.

Captum's default classifier is random (an unseeded SGDClassifier and a random split), so both
libraries get the same deterministic classifier, ``MeanDiff`` (class mean minus overall mean).
Captum's numbers for the ``run`` cases are stored below (STORED, written by running this file's
``run`` with captum installed: ``python tests/test_compat_concepts.py``); with captum importable
the same cases are also compared live.
"""

import os
import sys

import pytest
import torch
from torch import nn

from xattr.compat.captum import LayerGradientXActivation
from xattr.compat.captum import concepts as X
from xattr.concepts._cache import load_plain

try:
    from .stored import assert_matches_stored
except ImportError:
    from stored import assert_matches_stored


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


class MeanDiff:
    """A deterministic classifier with Captum's Classifier interface: w_c = mean_c - mean."""

    def __init__(self):
        self.trained = 0

    def train_and_eval(self, dataloader, **kwargs):
        xs, ys = zip(*list(dataloader))
        x, y = torch.cat(xs), torch.cat(ys)
        self.cls = sorted(set(y.tolist()))
        self.w = torch.stack([x[y == c].mean(0) - x.mean(0) for c in self.cls])
        self.trained += 1
        return {"accs": torch.tensor(1.0)}

    def weights(self):
        return self.w

    def classes(self):
        return self.cls


def _images(seed, n=12):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def setup():
    torch.manual_seed(0)
    model = Net().eval()
    data = [_images(i) for i in range(4)]
    x = _images(10, 10)
    return model, data, x


SETS = [[0, 1], [0, 2], [1, 2, 3]]
TARGETS = {"int": 1, "per_example": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]}


def run(lib, save_path, target_name, classifier=None):
    """One TCAV.interpret through ``lib`` (captum.concept or xattr.compat.captum.concepts)."""
    model, data, x = setup()
    concepts = [lib.Concept(i, f"c{i}", [d[:6], d[6:]]) for i, d in enumerate(data)]
    tcav = lib.TCAV(model, ["conv1", "conv2"], classifier=classifier or MeanDiff(), save_path=str(save_path))
    return tcav.interpret(x, [[concepts[i] for i in s] for s in SETS], target=TARGETS[target_name])


def as_lists(scores):
    return {k: {l: {m: t.tolist() for m, t in d.items()} for l, d in per.items()} for k, per in scores.items()}


def _compare(out, expected):
    assert list(out) == list(expected) or set(out) == set(expected)
    for k in expected:
        assert set(out[k]) == set(expected[k])
        for layer in expected[k]:
            for m in ("sign_count", "magnitude"):
                assert_matches_stored(out[k][layer][m], expected[k][layer][m], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_same_numbers_as_captum_stored(target_name, tmp_path):
    _compare(run(X, tmp_path, target_name), STORED[target_name])


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_same_numbers_as_captum_live(target_name, tmp_path):
    captum_concept = pytest.importorskip("captum.concept")
    expected = as_lists(run(captum_concept, tmp_path / "captum", target_name))
    _compare(run(X, tmp_path / "xattr", target_name), expected)


def test_captum_concepts_are_accepted(tmp_path):
    captum_concept = pytest.importorskip("captum.concept")
    model, data, x = setup()
    ours = [X.Concept(i, f"c{i}", d) for i, d in enumerate(data[:2])]
    theirs = [captum_concept.Concept(i, f"c{i}", [d]) for i, d in enumerate(data[:2])]
    a = X.TCAV(model, ["conv2"], classifier=MeanDiff(), save_path=str(tmp_path / "a")).interpret(x, [ours], target=0)
    b = X.TCAV(model, ["conv2"], classifier=MeanDiff(), save_path=str(tmp_path / "b")).interpret(x, [theirs], target=0)
    torch.testing.assert_close(a["0-1"]["conv2"]["sign_count"], b["0-1"]["conv2"]["sign_count"])


def test_files_are_plain_tensors_and_cavs_are_reused(tmp_path):
    clf = MeanDiff()
    first = run(X, tmp_path, "int", classifier=clf)
    assert clf.trained == len(SETS) * 2
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
    assert files and all(f.endswith(".pt") for f in files)
    for f in files:
        assert isinstance(torch.load(f, weights_only=True), dict)
    cav_file = os.path.join(tmp_path, "default_model_id", "0-1-conv1.pt")
    assert load_plain(cav_file)["stats"]["weights"].shape == (2, 4 * 8 * 8)
    second = run(X, tmp_path, "int", classifier=clf)
    assert clf.trained == len(SETS) * 2, "saved CAVs are loaded, not retrained"
    _compare(second, as_lists(first))
    pair = [X.Concept(0, "c0", None), X.Concept(1, "c1", None)]
    loaded = X.CAV.load(str(tmp_path), "default_model_id", pair, "conv1")
    assert loaded.stats["classes"] == [0, 1] and float(loaded.stats["accs"]) == 1.0


def test_cached_activations_of_tagged_concepts_are_found(tmp_path):
    from xattr.concepts import random_concepts

    model, data, x = setup()
    drawn = random_concepts(torch.cat(data), 2, 6, generator=0, first_id=0)  # tagged with a digest
    tcav = X.TCAV(model, ["conv1"], classifier=MeanDiff(), save_path=str(tmp_path))
    for c in drawn:
        tcav.generate_activation("conv1", c)
    layers, missing = tcav.load_cavs(drawn)
    assert layers == ["conv1"] and not missing  # no CAV yet; the activations are on disk


def test_layer_attr_method_gives_the_same_scores(tmp_path):
    model, data, x = setup()
    concepts = [X.Concept(i, f"c{i}", d) for i, d in enumerate(data)]
    sets = [concepts[:2], concepts[1:]]
    plain = X.TCAV(model, ["conv1", "conv2"], classifier=MeanDiff(), save_path=str(tmp_path))
    method = LayerGradientXActivation(model, None, multiply_by_inputs=False)
    via = X.TCAV(model, ["conv1", "conv2"], classifier=MeanDiff(), layer_attr_method=method, save_path=str(tmp_path))
    _compare(via.interpret(x, sets, target=2), as_lists(plain.interpret(x, sets, target=2)))


def test_default_classifier(tmp_path):
    model, data, x = setup()
    concepts = [X.Concept(0, "bright", data[0] + 2.0), X.Concept(1, "dark", data[1] - 2.0)]
    tcav = X.TCAV(model, "conv2", save_path=str(tmp_path))
    scores = tcav.interpret(x, [concepts], target=0)["0-1"]["conv2"]
    assert scores["sign_count"].shape == (2,) and scores["magnitude"].shape == (2,)
    torch.testing.assert_close(scores["sign_count"].sum(), torch.tensor(1.0))  # weights are [-w, w]
    assert float(tcav.cavs["0-1"]["conv2"].stats["accs"]) == 1.0  # separable: the real accuracy


def test_errors(tmp_path):
    model, data, x = setup()
    a, b = X.Concept(0, "a", data[0]), X.Concept(0, "b", data[1])
    tcav = X.TCAV(model, ["conv1"], classifier=MeanDiff(), save_path=str(tmp_path))
    with pytest.raises(AssertionError, match="shares an id"):
        tcav.interpret(x, [[a, b]], target=0)
    with pytest.raises(AssertionError, match="constructor"):
        tcav.interpret(x, [[a, X.Concept(1, "c", data[1])]], target=0, attribute_to_layer_input=True)
    assert repr(a) == "Concept(0, 'a')" and X.concepts_to_str([a, b]) == "0-0"


STORED = {  # Captum 0.9.0, MeanDiff classifier; regenerate: python tests/test_compat_concepts.py
    "int": {
        "0-1": {
            "conv1": {"sign_count": [0.8999999762, 0.1000000015], "magnitude": [0.0009508450748, -0.0009508499643]},
            "conv2": {"sign_count": [0.8000000119, 0.200000003], "magnitude": [0.000802066992, -0.0008020708337]},
        },
        "0-2": {
            "conv1": {"sign_count": [0.6000000238, 0.400000006], "magnitude": [0.00089660089, -0.0008966047317]},
            "conv2": {"sign_count": [0.5, 0.5], "magnitude": [0.0009046456544, -0.0009046491468]},
        },
        "1-2-3": {
            "conv1": {
                "sign_count": [0.5, 0.8000000119, 0.200000003],
                "magnitude": [0.0009642714867, 0.001072761021, -0.002037044149],
            },
            "conv2": {
                "sign_count": [0.6000000238, 0.6999999881, 0.200000003],
                "magnitude": [0.0009430666687, 0.0007379095186, -0.001680977293],
            },
        },
    },
    "per_example": {
        "0-1": {
            "conv1": {"sign_count": [0.6999999881, 0.3000000119], "magnitude": [0.002086645691, -0.002086647553]},
            "conv2": {"sign_count": [0.6000000238, 0.400000006], "magnitude": [0.002417204436, -0.002417206764]},
        },
        "0-2": {
            "conv1": {"sign_count": [0.400000006, 0.6000000238], "magnitude": [-0.0001562596299, 0.0001562569232]},
            "conv2": {"sign_count": [0.5, 0.5], "magnitude": [3.357143214e-05, -3.357324749e-05]},
        },
        "1-2-3": {
            "conv1": {
                "sign_count": [0.400000006, 0.6000000238, 0.6000000238],
                "magnitude": [-0.003274171147, 0.001211638562, 0.002062526299],
            },
            "conv2": {
                "sign_count": [0.3000000119, 0.6000000238, 0.6000000238],
                "magnitude": [-0.003501859726, 0.00126540591, 0.002236447763],
            },
        },
    },
}


if __name__ == "__main__":  # regenerate STORED with captum installed
    import pprint
    import tempfile

    import captum.concept

    with tempfile.TemporaryDirectory() as d:
        got = {t: as_lists(run(captum.concept, os.path.join(d, t), t)) for t in TARGETS}
    pprint.pprint(got, width=110, stream=sys.stdout)
