"""xattr.insights.explore: every bad option refused at entry, before any model call; one train-mode warning.

The model counts its calls, so "refused before any work" is checked, not assumed; next to each
refusal the valid values of the same option still write a page.
"""

import os
import warnings

import pytest
import torch
from torch import nn

import xattr
from xattr.insights import explore


class Counting(nn.Module):
    def __init__(self, dropout=False):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.0) if dropout else nn.Identity()  # p=0: train mode changes nothing here
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.drop(self.lin(x))


X = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
SAL = {"saliency": xattr.saliency}


def refused(err, match, **kw):
    m = Counting().eval()
    with pytest.raises(err, match=match):
        explore(m, X, **{"methods": SAL, "show_progress": False, **kw})
    assert m.calls == 0, "refused only after calling the model"
    assert not isinstance(kw["path"], (str, os.PathLike)) or not os.path.isfile(kw["path"])


@pytest.mark.parametrize("title", [5, b"t", ["t"]])
def test_title(title, tmp_path):
    refused(TypeError, "explore: title must be a str or None", title=title, path=tmp_path / "a.html")


def test_path_directory_and_type(tmp_path):
    refused(ValueError, "is a directory; give the HTML file to write", path=tmp_path)
    refused(TypeError, "explore: path must be a file path", path=5)
    (tmp_path / "file").write_text("x")
    refused(ValueError, "is a file, not a folder", path=tmp_path / "file" / "sub" / "a.html")


@pytest.mark.parametrize("show", ["yes", 1, None])
def test_show_progress(show, tmp_path):
    refused(TypeError, "explore: show_progress must be True or False", show_progress=show, path=tmp_path / "a.html")


@pytest.mark.parametrize("gen", ["seed", 1.5, True])
def test_generator(gen, tmp_path):
    refused(TypeError, "explore: generator must be an int seed", generator=gen, evaluation=["sparseness"],
            path=tmp_path / "a.html")  # fmt: skip
    refused(TypeError, "explore: generator must be an int seed", generator=gen, path=tmp_path / "b.html")


def test_target_labels_methods_classes_before_the_model(tmp_path):
    p = tmp_path / "a.html"
    refused(ValueError, "target must be 'predicted', 'true'", target="best", path=p)
    refused(ValueError, "target='true' explains each example's true class: pass labels=", target="true", path=p)
    refused(ValueError, "target class -1 is negative", target=-1, path=p)
    refused(ValueError, "labels must have one class per example", labels=torch.zeros(3, dtype=torch.long), path=p)
    refused(TypeError, "labels must be integer class indices", labels=torch.zeros(12), path=p)
    refused(TypeError, "methods must be a non-empty dict", methods={}, path=p)
    refused(TypeError, "methods must map names", methods={"s": 5}, path=p)
    refused(TypeError, "classes must be a list of class names", classes="abc", path=p)


def test_valid_options_still_write(tmp_path):
    m = Counting().eval()
    out = explore(m, X, methods=SAL, path=tmp_path / "sub" / "a.html", title="T <&>", show_progress=False,
                  generator=torch.Generator().manual_seed(0), labels=torch.arange(12) % 3, target="true",
                  classes=("a", "b", "c"))  # fmt: skip
    assert out == os.fspath(tmp_path / "sub" / "a.html") and os.path.isfile(out)
    text = open(out, encoding="utf-8").read()
    assert "<title>T &lt;&amp;&gt;</title>" in text
    assert m.calls > 0
    for gen in (None, 3):
        assert os.path.isfile(explore(m, X, methods=SAL, path=str(tmp_path / f"g{gen}.html"), show_progress=False,
                                      generator=gen, evaluation=["sparseness"]))  # fmt: skip


def caught(model, **kw):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        explore(model, X, show_progress=False, **kw)
    return [w for w in got if "is in train mode" in str(w.message)]


def test_train_mode_warns_once_per_call(tmp_path):
    m = Counting(dropout=True)  # train mode, with a dropout
    ws = caught(m, path=tmp_path / "a.html")  # the 4 default tabular methods
    assert len(ws) == 1 and ws[0].filename == __file__, [(w.filename, w.lineno) for w in ws]
    assert m.training  # never changed for the user
    assert len(caught(m, path=tmp_path / "b.html", evaluation=["sparseness"])) == 1
    assert caught(m.eval(), path=tmp_path / "c.html") == []
    # the silencing ends with the call: a plain attribution call still warns
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        xattr.saliency(xattr.target(m.train(), 0))(X)
    assert sum("is in train mode" in str(w.message) for w in got) == 1
