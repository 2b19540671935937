"""Captum's text-tutorial helpers: token references, interpretable embeddings, visualize_text."""

import re
import sys
import types

import pytest
import torch
from torch import nn

import xattr.viz
from xattr.compat.captum import (
    IntegratedGradients,
    InterpretableEmbeddingBase,
    LayerIntegratedGradients,
    TokenReferenceBase,
    configure_interpretable_embedding_layer,
    remove_interpretable_embedding_layer,
    visualization,
)
from xattr.viz import TextVisualization, VisualizationDataRecord, visualize_text

V, D, T, B = 12, 5, 7, 3


class ConvText(nn.Module):
    """The IMDB tutorial's shape of model, tiny: embedding, 1-d convolution, max-pool, linear."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, D, padding_idx=0)
        self.conv = nn.Conv1d(D, 4, kernel_size=3)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids):
        h = self.embedding(ids).transpose(1, 2)
        return self.fc(torch.tanh(self.conv(h)).amax(-1))


class BagText(nn.Module):
    """An EmbeddingBag (mean of each row's embeddings) under a dotted name, ``encoder.embeddings``."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embeddings = nn.EmbeddingBag(V, D, mode="mean")
        self.fc = nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, 2))

    def forward(self, ids, scale):
        return self.fc(self.encoder.embeddings(ids)) * scale


def _model(kind):
    torch.manual_seed(0)
    model = (ConvText() if kind == "conv" else BagText()).double().eval()
    name = "embedding" if kind == "conv" else "encoder.embeddings"
    args = () if kind == "conv" else (torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64),)
    ids = torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(1))
    return model, name, ids, args


def _configure(model, name):
    with pytest.warns(UserWarning, match="remove_interpretable_embedding_layer"):
        return configure_interpretable_embedding_layer(model, name)


# --- TokenReferenceBase ---------------------------------------------------------------------


@pytest.mark.parametrize("idx,length", [(0, 1), (0, 7), (3, 5)])
def test_token_reference_equals_captums(idx, length):
    captum = pytest.importorskip("captum.attr")
    ours = TokenReferenceBase(idx).generate_reference(length, torch.device("cpu"))
    theirs = captum.TokenReferenceBase(idx).generate_reference(length, torch.device("cpu"))
    assert ours.dtype == theirs.dtype == torch.long and ours.shape == theirs.shape == (length,)
    assert torch.equal(ours, theirs) and ours.device == theirs.device
    assert TokenReferenceBase().reference_token_idx == 0


def test_token_reference_empty_is_long_and_errors():
    assert TokenReferenceBase(2).generate_reference(0, "cpu").dtype == torch.long  # Captum: float32
    with pytest.raises(ValueError, match="sequence_length must be >= 0, got -1"):
        TokenReferenceBase(0).generate_reference(-1, "cpu")
    with pytest.raises(TypeError, match="integer sequence_length and reference_token_idx, got float and int"):
        TokenReferenceBase(0).generate_reference(2.5, "cpu")


# --- interpretable embeddings ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "bag"])
def test_configure_remove_round_trip(kind):
    model, name, ids, args = _model(kind)
    before = dict(model.named_modules())
    with torch.no_grad():
        out = model(ids, *args)
    interp = _configure(model, name)
    assert isinstance(interp, InterpretableEmbeddingBase) and interp.full_name == name
    assert dict(model.named_modules())[name] is interp and interp.embedding is before[name]
    assert (interp.num_embeddings, interp.embedding_dim) == (V, D)
    with torch.no_grad():  # the model now takes embeddings where it took ids
        assert torch.equal(model(interp.indices_to_embeddings(ids), *args), out)
    remove_interpretable_embedding_layer(model, interp)
    after = dict(model.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    with torch.no_grad():
        assert torch.equal(model(ids, *args), out)
    remove_interpretable_embedding_layer(model, interp)  # again: nothing changes, as in Captum
    assert dict(model.named_modules())[name] is before[name]


def test_interpretable_forward_passes_embeddings_through():
    interp = InterpretableEmbeddingBase(nn.Embedding(4, 2), "embedding")
    x = torch.randn(2, 3)
    assert interp(x, "ignored", offsets=None) is x and interp(embeddings=x, other=1) is x
    with pytest.raises(TypeError, match=r"\('embedding'\) was called with no arguments"):
        interp()


@pytest.mark.parametrize("kind", ["conv", "bag"])
def test_attributions_on_interpretable_embedding_equal_captum_layer_ig(kind):
    captum = pytest.importorskip("captum.attr")
    model, name, ids, args = _model(kind)
    ref = TokenReferenceBase(0).generate_reference(T, "cpu").expand(B, T)
    target = [0, 1, 1]
    layer = model.get_submodule(name)
    expected = captum.LayerIntegratedGradients(model, layer).attribute(
        ids, baselines=ref, target=target, additional_forward_args=args or None, n_steps=16
    )
    interp = _configure(model, name)
    try:
        emb, ref_emb = interp.indices_to_embeddings(ids), interp.indices_to_embeddings(ref)
        ig = IntegratedGradients(model).attribute(
            emb, baselines=ref_emb, target=target, additional_forward_args=args or None, n_steps=16
        )
        lig = LayerIntegratedGradients(model, interp).attribute(
            emb, baselines=ref_emb, target=target, additional_forward_args=args or None, n_steps=16
        )
    finally:
        remove_interpretable_embedding_layer(model, interp)
    # Captum rounds its quadrature weights to float32, hence 1e-8 and not float64 rounding
    torch.testing.assert_close(ig, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(lig, expected, rtol=1e-8, atol=1e-10)


def test_configure_errors():
    model, _, _, _ = _model("bag")
    with pytest.raises(AttributeError, match=r"no layer 'embedding': BagText has no attribute 'embedding' \(its submodules: 'encoder', 'fc'\)"):
        configure_interpretable_embedding_layer(model)
    with pytest.raises(AttributeError, match=r"no layer 'encoder.embedding': 'encoder' has no attribute 'embedding' \(its submodules: 'embeddings'\)"):
        configure_interpretable_embedding_layer(model, "encoder.embedding")
    with pytest.raises(ValueError, match="dotted attribute path"):
        configure_interpretable_embedding_layer(model, "encoder..embeddings")
    with pytest.raises(TypeError, match="'fc.0.weight' is a Parameter, not a torch.nn.Module"):
        configure_interpretable_embedding_layer(model, "fc.0.weight")
    interp = _configure(model, "encoder.embeddings")
    with pytest.raises(ValueError, match="'encoder.embeddings' is already an InterpretableEmbeddingBase"):
        configure_interpretable_embedding_layer(model, "encoder.embeddings")
    other, _, _, _ = _model("bag")
    with pytest.raises(ValueError, match="neither this InterpretableEmbeddingBase nor the layer it wraps"):
        remove_interpretable_embedding_layer(other, interp)
    with pytest.raises(TypeError, match="got EmbeddingBag"):
        remove_interpretable_embedding_layer(model, interp.embedding)
    remove_interpretable_embedding_layer(model, interp)
    assert isinstance(model.encoder.embeddings, nn.EmbeddingBag)


# --- visualize_text -------------------------------------------------------------------------

MARK = re.compile(r'background-color: (hsl\([^)]*\)); opacity:1.0; line-height:1.75"><font color="black"> (.*?) </font>')


def _record(scores, words, **kw):
    fields = dict(pred_prob=0.912, pred_class="Pos", true_class="Pos", attr_class="Pos", attr_score=1.234, convergence_score=0.01)
    fields.update(kw)
    return VisualizationDataRecord(scores, fields["pred_prob"], fields["pred_class"], fields["true_class"],
                                   fields["attr_class"], fields["attr_score"], words, fields["convergence_score"])  # fmt: skip


def test_visualize_text_words_colours_labels():
    scores = torch.tensor([0.5, -0.8, 0.0, 3.0])
    html = visualize_text([_record(scores, ["good", "bad", "<pad>", "great"], true_class=1, pred_class=1, attr_class=0)])
    assert isinstance(html, TextVisualization) and isinstance(html, str)
    assert html.data == html == html._repr_html_()
    assert MARK.findall(html) == [
        ("hsl(120, 75%, 75%)", "good"),    # positive: green, lighter for smaller scores
        ("hsl(0, 75%, 68%)", "bad"),       # negative: red
        ("hsl(0, 75%, 100%)", "#pad"),     # zero: white; <name> tokens shown as #name, as in Captum
        ("hsl(120, 75%, 50%)", "great"),   # clipped to 1
    ]  # fmt: skip
    for header in ("True Label", "Predicted Label", "Attribution Label", "Attribution Score", "Word Importance"):
        assert f"<th>{header}</th>" in html
    cells = re.findall(r"<b>(.*?)</b>", html)
    assert cells[-4:] == ["1", "1 (0.91)", "0", "1.23"] and "Legend" in cells[0]
    assert "Legend" not in visualize_text([_record(scores, ["a"])], legend=False)
    assert html.count("<tr>") == html.count("</tr>") == 2


def test_visualize_text_colours_equal_captums():
    vis = pytest.importorskip("captum.attr._utils.visualization")
    words = ["the", "movie", "was", "<unk>", "dull", "!"]
    scores = [0.31, -0.02, 0.0, -1.7, -0.45, 0.999]
    theirs = re.findall(r"background-color: (hsl\([^)]*\)).*?<font color=\"black\"> (\S+)", vis.format_word_importances(words, scores))
    html = visualize_text([_record(torch.tensor(scores, dtype=torch.float64), words)])
    assert MARK.findall(html) == theirs


def test_visualize_text_escapes_words_and_labels():
    words = ["a<b", "<i>good", "x&y", '"q"', "<b>"]
    html = visualize_text([_record([0.1, 0.2, -0.3, 0.4, 0.0], words, true_class="<script>")], legend=False)
    assert [w for _, w in MARK.findall(html)] == ["a&lt;b", "&lt;i&gt;good", "x&amp;y", "&quot;q&quot;", "#b"]
    assert "<i>" not in html and "<script>" not in html and "&lt;script&gt;" in html


def test_visualize_text_errors_and_short_records():
    with pytest.raises(ValueError, match=r"must be 1-d \(one score per word\), got shape \(1, 2\)"):
        visualize_text([_record(torch.zeros(1, 2), ["a", "b"])])
    with pytest.raises(ValueError, match="3 words but only 2 word_attributions"):
        visualize_text([_record([0.1, 0.2], ["a", "b", "c"])])
    html = visualize_text([_record([0.1, 0.2, 0.3], ["a"]), _record([], [])])  # fewer words than scores: fine
    assert [w for _, w in MARK.findall(html)] == ["a"] and "<td></td>" in html
    assert MARK.findall(visualize_text([_record([float("nan")], ["n"])])) == [("hsl(0, 75%, 100%)", "n")]


def test_visualize_text_displays_only_in_a_notebook_kernel(monkeypatch):
    shown = []
    shell = types.SimpleNamespace(kernel=None)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    display_mod = types.ModuleType("IPython.display")
    display_mod.HTML = lambda data: ("HTML", data)
    display_mod.display = shown.append
    ipython.display = display_mod
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    visualize_text([_record([0.5], ["hi"])])
    assert shown == []  # a terminal IPython: returned, not displayed
    shell.kernel = object()
    html = visualize_text([_record([0.5], ["hi"])])
    assert shown == [("HTML", str(html))]


def test_namespaces():
    assert visualization.visualize_text is visualize_text is xattr.viz.visualize_text
    assert visualization.VisualizationDataRecord is VisualizationDataRecord
    record = _record([0.5], ["hi"])
    assert repr(record).startswith("VisualizationDataRecord(word_attributions=[0.5], pred_prob=0.912")
