"""Helpers Captum's VQA and TCAV tutorials import beside the attribution classes:
``ModelInputWrapper`` (a raw input attributed with inner layers in one layer call),
``CustomIterableDataset``, ``dataset_to_dataloader`` and ``concepts_to_str``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr
from xattr.compat import captum as X


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(10, 3)
        self.image = nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, image, question):
        return self.out(torch.tanh(self.image(image) * self.embedding(question).mean(1)))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randint(1, 10, (3, 5), generator=g)


def test_the_wrapper_runs_the_model_and_maps_each_input():
    model = TwoInputs().double()
    wrapped = X.ModelInputWrapper(model)
    img, q = _data()
    assert torch.equal(wrapped(img, q), model(img, q)) and torch.equal(wrapped(img, question=q), model(img, q))
    assert list(wrapped.input_maps) == ["image", "question"] and wrapped.module is model
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, o: seen.setdefault(m.input_name, o)) for m in wrapped.input_maps.values()]
    wrapped(img, q)
    for h in hooks:
        h.remove()
    assert seen["image"] is img and seen["question"] is q


def test_layer_ig_over_a_raw_input_and_an_embedding():
    """The VQA tutorial's call: one LayerIntegratedGradients over the image's identity module and the
    question's embedding equals the functional layer IG over the same split, and Captum's."""
    model = TwoInputs().double()
    wrapped = X.ModelInputWrapper(model)
    img, q = _data()
    lig = X.LayerIntegratedGradients(wrapped, [wrapped.input_maps["image"], model.embedding])
    img_attr, emb_attr = lig.attribute((img, q), baselines=(img * 0, torch.zeros_like(q)), target=1, n_steps=16)
    want = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(wrapped, 1), [wrapped.input_maps["image"], model.embedding]),
                                            baselines=(img * 0, torch.zeros_like(q)), argnums=(0, 1), n_steps=16)(img, q)
    torch.testing.assert_close(img_attr, want[0])
    torch.testing.assert_close(emb_attr, want[1])
    assert img_attr.shape == img.shape and emb_attr.shape == (3, 5, 3)
    captum = pytest.importorskip("captum.attr")
    theirs = captum.LayerIntegratedGradients(wrapped, [wrapped.input_maps["image"], model.embedding]).attribute(
        (img, q), baselines=(img * 0, torch.zeros_like(q)), target=1, n_steps=16, method="gausslegendre")
    torch.testing.assert_close(img_attr, theirs[0], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(emb_attr, theirs[1], rtol=1e-6, atol=1e-8)


def test_the_wrapper_refuses_a_forward_without_names():
    class Star(nn.Module):
        def forward(self, *xs):
            return xs[0]

    with pytest.raises(TypeError, match="needs named inputs"):
        X.ModelInputWrapper(Star())


def test_concept_data_helpers(tmp_path):
    for i in range(3):
        torch.save(torch.full((2,), float(i)), tmp_path / f"{i}.pt")
    read = lambda name: torch.load(name, weights_only=True)  # noqa: E731
    for path in (str(tmp_path), str(tmp_path) + "/"):  # Captum lists the files only with the separator
        ds = X.CustomIterableDataset(read, path)
        assert [t[0].item() for t in ds] == [0.0, 1.0, 2.0]
    batches = list(X.dataset_to_dataloader(X.CustomIterableDataset(read, str(tmp_path)), 2))
    assert [b.shape for b in batches] == [(2, 2), (1, 2)]

    def rows(name):  # a file holding many examples: the reader yields them
        yield from torch.load(name, weights_only=True)[:, None]

    torch.save(torch.arange(4.0)[:, None].expand(4, 2).clone(), tmp_path / "many.pt")
    assert len(list(X.CustomIterableDataset(rows, str(tmp_path / "many.pt")))) == 4
    concepts = [X.Concept(0, "striped", None), X.Concept(1, "random", None)]
    assert X.concepts_to_str(concepts) == "0-1"
