"""xattr.compat.captum's LLM inputs and result against Captum 0.9's own classes, live.

Every class is built beside Captum's with the same arguments (a real BERT WordPiece tokenizer
for the text inputs) and compared attribute by attribute, output by output, figure by figure.
"""

import itertools
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("captum")
pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")
from captum.attr._core import llm_attr as CL  # noqa: E402
from captum.attr._utils import interpretable_input as C  # noqa: E402

from xattr.compat import captum as X  # noqa: E402
from xattr.compat.captum.llm_result import pretty_tokens  # noqa: E402
from xattr.testing.text import minilm  # noqa: E402

TEXTS = ["Hello world, it's a test.", "The unbelievably quick fox jumped over the lazy dog!", "a"]


@pytest.fixture(scope="module")
def tok():
    loaded = minilm()
    if loaded is None:
        pytest.skip("the MiniLM tokenizer is not installed")
    return loaded[1]


@pytest.fixture
def plt():
    """pyplot, with the figures Captum's plots open closed after the test."""
    import matplotlib.pyplot as pyplot

    yield pyplot
    pyplot.close("all")


def _same(a, b):
    """Equal values and types, tensors compared by dtype, shape and values."""
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(b, PIL_Image.Image):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert type(a) is type(b) and a == b


def _texts(artists):
    return [t.get_text() for t in artists]


def _rows(n, k=None, seed=0):
    """All 2^n binary perturbations (or k random ones with some 0.5 entries), (k, n)."""
    if k is None:
        return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float).reshape(-1, n)
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([0.0, 1.0, 0.5])[torch.randint(0, 3, (k, n), generator=g)]


# ----------------------------------------------------------------------------- TextTokenInput


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip", [None, [], [101, 102], ["[CLS]", "[SEP]"], ["the", "[SEP]"]])
@pytest.mark.parametrize("baselines", [0, 103, "[UNK]", "[MASK]"])
def test_text_token_input(tok, text, skip, baselines):
    ours, theirs = X.TextTokenInput(text, tok, baselines, skip), C.TextTokenInput(text, tok, baselines, skip)
    for name in ("inp_tensor", "itp_tensor", "itp_mask", "baselines", "skip_tokens", "values", "n_itp_features"):
        _same(getattr(ours, name), getattr(theirs, name))
    assert ours.tokenizer is tok
    _same(ours.to_tensor(), theirs.to_tensor())
    _same(ours.to_model_input(), theirs.to_model_input())
    n = ours.n_itp_features
    for batch in (_rows(n) if n <= 8 else _rows(n, 64), _rows(n, 16, seed=1)):
        _same(ours.to_model_input(batch), theirs.to_model_input(batch))  # Captum takes (k, n) too
        _same(ours.to_model_input(batch.long()), theirs.to_model_input(batch.long()))
    attr = torch.randn(3, n, dtype=torch.float64)
    _same(ours.format_attr(attr), theirs.format_attr(attr))


def test_text_token_input_changes_only_perturbed_free_tokens(tok):
    inp = X.TextTokenInput("one two three", tok, baselines="[MASK]", skip_tokens=["[CLS]", "[SEP]"])
    ids = inp.to_model_input(torch.tensor([[1, 0, 1], [0, 0, 0]]))
    mask = tok.convert_tokens_to_ids("[MASK]")
    assert ids[0].tolist() == [101, *inp.itp_tensor[0, :1].tolist(), mask, inp.itp_tensor[0, 2].item(), 102]
    assert ids[1].tolist() == [101, mask, mask, mask, 102]


def test_text_token_input_errors(tok):
    for bad in (1.5, True, torch.tensor(3), None):
        with pytest.raises(TypeError, match="token id .int. or a token string"):
            X.TextTokenInput("hi there", tok, baselines=bad)
    assert X.TextTokenInput("hi there", tok, baselines=np.int64(7)).baselines == 7
    inp = X.TextTokenInput("hi there", tok)
    for bad in (torch.ones(inp.n_itp_features), torch.ones(2, inp.n_itp_features + 1)):
        with pytest.raises(ValueError, match=rf"shape \(k, {inp.n_itp_features}\)"):
            inp.to_model_input(bad)


# ----------------------------------------------------------------------------- TextTemplateInput

TEMPLATES = {
    "str": dict(template="{} feels {} right now", values=["He", "depressed"], baselines=["It", "neutral"]),
    "default_baselines": dict(template="{} and {} or {}", values=["cats", "dogs", "fish"]),
    "callable": dict(template=lambda *v: " | ".join(v), values=["a b", "c", "d", "e"], baselines=["x", "y", "z", "w"], mask=[2, 0, 2, 5]),
    "set_order": dict(template="{} {} {} {}", values=["p", "q", "r", "s"], mask=[1, 8, 1, 9]),
    "dict": dict(template="{name} likes {food} with {drink}", values={"name": "Ann", "food": "rice", "drink": "tea"},
                 baselines={"name": "Someone", "food": "something", "drink": "water"}, mask={"name": 0, "food": 1, "drink": 1}),
    "dict_callable": dict(template=lambda **kw: f"{kw['b']} then {kw['a']}", values={"a": "first", "b": "second"},
                          baselines=lambda: {"a": "A", "b": "B"}),
    "list_callable_baselines": dict(template="{}-{}-{}", values=["u", "v", "w"], baselines=lambda: ["0", "1", "2"], mask=["g", "h", "g"]),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_text_template_input(name):
    kw = TEMPLATES[name]
    ours, theirs = X.TextTemplateInput(**kw), C.TextTemplateInput(**kw)
    for attr in ("values", "dict_keys", "mask", "n_features", "n_itp_features", "template", "format_fn"):
        _same(getattr(ours, attr), getattr(theirs, attr))
    if not callable(theirs.baselines):
        _same(ours.baselines, theirs.baselines)
    if theirs.mask is not None:  # xattr also sets it without a mask
        _same(ours.formatted_mask, theirs.formatted_mask)
    _same(ours.to_tensor(), theirs.to_tensor())
    _same(ours.to_model_input(), theirs.to_model_input())
    rows = torch.cat([_rows(ours.n_itp_features), _rows(ours.n_itp_features, 6)])
    for row in rows:
        _same(ours.to_model_input(row[None]), theirs.to_model_input(row[None]))
    for shape in ((1,), (4,), (2, 3)):
        attr = torch.randn(*shape, ours.n_itp_features)
        _same(ours.format_attr(attr), theirs.format_attr(attr))
    one = torch.randn(ours.n_itp_features)  # xattr also takes a 1-D attribution
    _same(ours.format_attr(one), theirs.format_attr(one[None])[0])


def test_text_template_mask_follows_set_order():
    inp = X.TextTemplateInput("{} {} {}", ["a", "b", "c"], mask=[1, 8, 1])
    assert inp.formatted_mask == [1, 0, 1]  # list({1, 8}) == [8, 1], as in Captum
    assert inp.to_model_input(torch.tensor([[1, 0]])) == " b "
    _same(inp.format_attr(torch.tensor([[10.0, 20.0]])), torch.tensor([[20.0, 10.0, 20.0]]))


def test_text_template_errors():
    cases = [
        (TypeError, "values must be a list", dict(template="{}", values="abc")),
        (TypeError, "so baselines must be a dict", dict(template="{a}", values={"a": "x"}, baselines=["y"])),
        (TypeError, "so baselines must be a list", dict(template="{}", values=["x"], baselines={"a": "y"})),
        (ValueError, r"one entry per value \(2\), got 1", dict(template="{}{}", values=["x", "y"], baselines=["z"])),
        (ValueError, r"mask lacks the keys \['b'\]", dict(template="{a}{b}", values={"a": "x", "b": "y"}, mask={"a": 0})),
        (TypeError, "template must be a format string or a callable", dict(template=3, values=["x"])),
    ]
    for error, message, kw in cases:
        with pytest.raises(error, match=message):
            X.TextTemplateInput(**kw)
    inp = X.TextTemplateInput("{}{}", ["x", "y"], baselines=lambda: {"a": 1})
    with pytest.raises(TypeError, match="baselines returned by the callable must be a list"):
        inp.to_model_input(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"one perturbation, a tensor of shape \(1, 2\)"):
        inp.to_model_input(torch.tensor([[0, 1], [1, 1]]))
    with pytest.raises(TypeError, match="abstract"):
        X.InterpretableInput()


# ----------------------------------------------------------------------------- ImageMaskInput


def _image(h=6, w=8, seed=0):
    return PIL_Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _segments():
    mask = torch.zeros(6, 8, dtype=torch.int32)
    mask[:, 3:] = 7
    mask[4:, 5:] = 3
    return mask


def _overlapping():
    a, b, c = (torch.zeros(6, 8, dtype=torch.bool) for _ in range(3))
    a[:4, :4], b[2:, 2:6], c[:, 7] = True, True, True
    return [a, b, c]


IMAGES = {
    "whole": dict(),
    "segments": dict(mask=_segments(), baseline=(0, 10, 20)),
    "mask_list": dict(mask_list=_overlapping(), processor_fn=lambda im: torch.as_tensor(np.array(im))),
}


def _pair(kw):
    return X.ImageMaskInput(_image(), **kw), C.ImageMaskInput(_image(), **kw)


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_mask_input(name):
    ours, theirs = _pair(IMAGES[name])
    for attr in ("mask", "mask_list", "n_itp_features", "mask_id_to_idx", "values", "baseline", "original_model_inputs"):
        _same(getattr(ours, attr), getattr(theirs, attr))
    _same(ours.to_tensor(), theirs.to_tensor())
    _same(ours.get_mask_list(), theirs.get_mask_list())
    for row in _rows(ours.n_itp_features):
        _same(ours.to_model_input(row[None]), theirs.to_model_input(row[None]))
    for dtype in (torch.float16, torch.float32, torch.float64):
        attr = torch.randn(3, ours.n_itp_features, dtype=dtype)
        _same(ours.format_attr(attr), theirs.format_attr(attr))
        got, want = ours.format_pixel_attr(attr), theirs.format_pixel_attr(attr)
        assert got.dtype == want.dtype and got.shape == want.shape == (3, 6, 8)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["segments", "mask_list"])
@pytest.mark.parametrize("border_width", [0, 1, 2])
def test_plot_mask_overlay(plt, name, border_width):
    ours, theirs = _pair(IMAGES[name])
    before = plt.get_fignums()
    fig, ax = ours.plot_mask_overlay(border_width=border_width)
    assert plt.get_fignums() == before and type(fig).__name__ == "Figure"  # no pyplot figure made
    _, tax = theirs.plot_mask_overlay(border_width=border_width)
    assert len(ax.images) == len(tax.images) == 1 + ours.n_itp_features * (1 + (border_width > 0))
    for mine, captum in zip(ax.images[1:], tax.images[1:]):  # tinted segments and their borders
        assert np.array_equal(np.asarray(mine.get_array())[..., 3] > 0, np.asarray(captum.get_array())[..., 3] > 0)
    assert _texts(ax.texts) == _texts(tax.texts) == [str(m) for m in ours.mask_id_to_idx]
    assert [t.get_position() for t in ax.texts] == [t.get_position() for t in tax.texts]
    assert not ax.axison
    assert len(ours.plot_mask_overlay(show_legends=False)[1].texts) == 0


def test_image_mask_errors():
    with pytest.raises(ValueError, match=r"mask has shape \(8, 6\); it must be the image's \(H, W\) = \(6, 8\)"):
        X.ImageMaskInput(_image(), mask=torch.zeros(8, 6))
    with pytest.raises(ValueError, match=r"mask_list\[1\] has shape"):
        X.ImageMaskInput(_image(), mask_list=[torch.ones(6, 8), torch.ones(6, 7)])
    with pytest.raises(ValueError, match=r"tensor of shape \(1, 3\)"):
        X.ImageMaskInput(_image(), mask=_segments()).to_model_input(torch.ones(2, 3))


# ----------------------------------------------------------------------------- LLMAttributionResult

IN, OUT = ["[CLS]", "the", "cat", "the", "sat\n"], ["it", "purred", "!"]


def _results(**kw):
    g = torch.Generator().manual_seed(0)
    base = dict(input_tokens=IN, output_tokens=OUT, seq_attr=torch.randn(len(IN), generator=g),
                token_attr=torch.randn(len(OUT), len(IN), generator=g), output_probs=torch.rand(len(OUT), generator=g))
    base.update(kw)
    return X.LLMAttributionResult(**base), CL.LLMAttributionResult(**base)


@pytest.mark.parametrize("convert", [lambda t: t, lambda t: t.tolist(), lambda t: t.numpy(), lambda t: t.double().numpy()])
def test_result_properties(convert):
    g = torch.Generator().manual_seed(1)
    arrays = dict(seq_attr=convert(torch.randn(5, generator=g)), token_attr=convert(torch.randn(3, 5, generator=g)),
                  output_probs=convert(torch.rand(3, generator=g)))
    ours, theirs = _results(**arrays)
    for name in ("seq_attr", "token_attr", "output_probs", "input_tokens", "output_tokens", "inp"):
        _same(getattr(ours, name), getattr(theirs, name))
    if isinstance(arrays["seq_attr"], torch.Tensor):
        assert ours.seq_attr is arrays["seq_attr"]  # a tensor is kept as given
    assert ours.seq_attr_dict == theirs.seq_attr_dict and len(ours.seq_attr_dict) == 4  # "the" twice
    ours.token_attr, ours.output_probs = None, None
    assert ours.token_attr is None and ours.output_probs is None


def test_result_errors():
    ours, _ = _results()
    with pytest.raises(ValueError, match=r"one score per input token \(5\); got shape \(4,\)"):
        ours.seq_attr = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"seq_attr must be 1-D"):
        ours.seq_attr = torch.zeros(1, 5)
    with pytest.raises(ValueError, match=r"\(output tokens, input tokens\) = \(3, 5\); got shape \(5, 3\)"):
        ours.token_attr = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"one probability per output token \(3\)"):
        ours.output_probs = [0.5]
    ours.token_attr = None
    with pytest.raises(ValueError, match="plot_seq_attr draws seq_attr"):
        ours.plot_token_attr()
    with pytest.raises(ValueError, match="needs the result's inp to be an ImageMaskInput"):
        ours.plot_image_heatmap()
    with pytest.raises(TypeError):
        X.LLMAttributionResult(IN, OUT, torch.zeros(5))  # keyword-only, as in Captum


def test_plot_token_and_seq_attr(plt):
    ours, theirs = _results(input_tokens=IN[:-1] + ["x" * 80])
    (fig, ax), (tfig, tax) = ours.plot_token_attr(), theirs.plot_token_attr()
    assert _texts(ax.get_xticklabels()) == _texts(tax.get_xticklabels()) and len(ax.get_xticks()) == 5
    assert _texts(ax.get_yticklabels()) == _texts(tax.get_yticklabels()) == OUT
    assert ax.get_xticklabels()[-1].get_text().endswith("...")
    cells = [(t.get_text(), t.get_color()) for t in ax.texts]
    assert len(cells) == 15 and cells == [(t.get_text(), t.get_color()) for t in tax.texts]
    assert np.array_equal(ax.images[0].get_array(), tax.images[0].get_array())
    assert ax.images[0].get_clim() == tax.images[0].get_clim()
    assert tuple(fig.get_size_inches()) == tuple(tfig.get_size_inches())
    assert fig.axes[1].get_ylabel() == "Token Attribution"

    ours, theirs = _results()
    (fig, ax), (tfig, tax) = ours.plot_seq_attr(), theirs.plot_seq_attr()
    assert _texts(ax.get_xticklabels()) == _texts(tax.get_xticklabels()) == ["[CLS]", "the", "cat", "the", "sat\\n"]
    bars = [(p.get_height(), p.get_facecolor()) for p in ax.patches]
    assert len(bars) == 10 and bars == [(p.get_height(), p.get_facecolor()) for p in tax.patches]
    assert tuple(fig.get_size_inches()) == tuple(tfig.get_size_inches())
    assert ax.get_ylabel() == "Sequence Attribution"


@pytest.mark.parametrize("name", ["segments", "mask_list"])
@pytest.mark.parametrize("target", [None, 1, (0, 2)])
def test_plot_image_heatmap(plt, name, target):
    ours_inp, their_inp = _pair(IMAGES[name])
    n, g = ours_inp.n_itp_features, torch.Generator().manual_seed(2)
    arrays = dict(input_tokens=ours_inp.values, output_tokens=OUT, seq_attr=torch.randn(n, generator=g),
                  token_attr=torch.randn(len(OUT), n, generator=g))
    ours = X.LLMAttributionResult(**arrays, inp=ours_inp)
    theirs = CL.LLMAttributionResult(**arrays, inp=their_inp)
    fig, ax = ours.plot_image_heatmap(target_token_pos=target)
    _, tax = theirs.plot_image_heatmap(target_token_pos=target)
    assert len(ax.images) == len(tax.images) == 2 + n  # grey image, heat map, one border per segment
    for mine, captum in zip(ax.images, tax.images):
        np.testing.assert_allclose(np.asarray(mine.get_array()), np.asarray(captum.get_array()), rtol=1e-6, atol=1e-7)
    assert _texts(ax.texts) == _texts(tax.texts) == [str(m) for m in ours_inp.mask_id_to_idx]
    assert fig.axes[1].get_ylabel() == "Attribution"
    if target is not None:
        ours.token_attr = None
        with pytest.raises(ValueError, match="use target_token_pos=None"):
            ours.plot_image_heatmap(target_token_pos=target)


def test_show_uses_pyplot(plt, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    ours, _ = _results()
    before = set(plt.get_fignums())
    assert ours.plot_seq_attr(show=True) is None and ours.plot_token_attr(show=True) is None
    assert len(shown) == 2 and len(set(plt.get_fignums()) - before) == 2


# ----------------------------------------------------------------------------- pretty tokens


def _pretty_pair(ids, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = CL._convert_ids_to_pretty_tokens(torch.tensor(ids), tokenizer)
        got = pretty_tokens(torch.tensor(ids), tokenizer)
    return got, want, caught


def test_pretty_tokens_as_captum(tok):
    seqs = [tok.encode(t) for t in TEXTS + ["unbelievably good\nnews", "  spaced   out "]]
    seqs += [tok.convert_tokens_to_ids(t) for t in (["##ing"], ["[UNK]", "##s"], ["want", "##ed", "wa", "##nt"], ["x", "##y"])]
    rng = np.random.default_rng(0)
    seqs += [rng.integers(0, tok.vocab_size, int(rng.integers(1, 7))).tolist() for _ in range(150)]
    fell_back = 0
    for ids in seqs:
        got, want, caught = _pretty_pair(ids, tok)
        assert got == want and len(got) == len(ids), ids
        fell_back += any("on its own" in str(w.message) for w in caught)
    assert fell_back >= 3  # the one-by-one branch was compared too
    assert pretty_tokens([7592, 2075], tok) == ["hello", "ing"]


class SplitTokenizer:
    """A stub whose ids 5 and 6 are halves of one character (each decodes to "\ufffd") and
    whose offsets never match, so the one-by-one branch always runs."""

    text = {5: "\ufffd", 6: "\ufffd", 7: " cat", 8: "\nend"}
    encode = staticmethod(lambda text: [99])
    __call__ = staticmethod(lambda text, **kw: {"input_ids": [], "offset_mapping": []})

    def decode(self, ids):
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        return "".join(self.text[i] for i in ids)


def test_pretty_tokens_fallback_split_characters():
    tok = SplitTokenizer()
    for ids, expected in [([5, 6, 7], ["\ufffd", "\ufffd [OVERLAP]", "cat"]), ([5, 7, 8], ["\ufffd", "cat", "\\nend"])]:
        got, want, _ = _pretty_pair(ids, tok)
        assert got == want == expected
    with pytest.raises(IndexError), warnings.catch_warnings():  # Captum reads past the end
        warnings.simplefilter("ignore")
        CL._convert_ids_to_pretty_tokens(torch.tensor([7, 5]), tok)
    with pytest.warns(UserWarning, match="decoding each token on its own"):
        assert pretty_tokens([7, 5], tok) == ["cat", "\ufffd"]


def test_a_template_whose_slots_do_not_match_its_values_is_refused_when_built():
    from xattr.compat.captum import TextTemplateInput

    with pytest.raises(ValueError, match="does not take the values"):
        TextTemplateInput("{} is {}", ["a"])
    with pytest.raises(ValueError, match="does not take the values"):
        TextTemplateInput("{x} is {y}", {"x": "a"})
    assert TextTemplateInput("{x} is {y}", {"x": "a", "y": "b"}).to_model_input() == "a is b"
