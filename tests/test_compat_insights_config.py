"""Captum Insights' `get_insights_config()` and `visualize()` on xattr's AttributionVisualizer.

The config is checked key by key against what Insights' /init route sent: method names from the
installed Captum's own classes (``get_name()``), the approximation names from Captum's list, and,
where an old Captum with ``captum.insights`` is installed, the whole dict of Captum's visualizer on
the same setup. `visualize()` is run without IPython (it writes the page and prints its path) and
with a stand-in ``IPython.display`` (it shows the page inline, once).
"""

import html
import json
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_insights import parse
from xattr.compat.captum.insights import AttributionVisualizer, Batch
from xattr.compat.captum.insights import methods as insights_methods
from xattr.compat.captum.insights.attr_vis.features import ImageFeature

CLASSES = ["a", "b", "c"]


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, y


def visualizer(feature_cls=ImageFeature, batch_cls=Batch, visualizer_cls=AttributionVisualizer):
    model, x, y = tiny()
    data = iter([batch_cls(inputs=x[:3], labels=y[:3]), batch_cls(inputs=x[3:], labels=y[3:])])
    feature = feature_cls("Pic", baseline_transforms=[lambda t: t * 0], input_transforms=[])
    return visualizer_cls(models=[model], classes=CLASSES, features=[feature], dataset=data, score_func=lambda o: F.softmax(o, 1))


def test_config_has_insights_keys_and_captums_names():
    pytest.importorskip("captum.attr")
    from captum.attr import (Deconvolution, DeepLift, FeatureAblation, GuidedBackprop, InputXGradient, IntegratedGradients,
                             Occlusion, Saliency)  # fmt: skip
    from captum.attr._utils.approximation_methods import SUPPORTED_METHODS

    config = visualizer().get_insights_config()
    assert list(config) == ["classes", "methods", "method_arguments", "selected_method"]
    assert config["classes"] == CLASSES
    # Insights' list: config.SUPPORTED_ATTRIBUTION_METHODS, in its order, named by get_name()
    order = [Deconvolution, DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients, Saliency, FeatureAblation, Occlusion]
    assert config["methods"] == [cls.get_name() for cls in order]
    assert config["selected_method"] == IntegratedGradients.get_name()
    args = config["method_arguments"]
    assert list(args) == ["Integrated Gradients", "Feature Ablation", "Occlusion"]
    ig = args["Integrated Gradients"]
    assert ig["n_steps"] == {"value": 25, "limit": (2, None), "type": "number"}
    assert ig["method"] == {"value": "gausslegendre", "limit": list(SUPPORTED_METHODS), "type": "enum"}
    assert args["Feature Ablation"] == {"perturbations_per_eval": {"value": 1, "limit": (1, 100), "type": "number"}}
    assert args["Occlusion"] == {"sliding_window_shapes": {"value": "", "type": "string"}, "strides": {"value": "", "type": "string"},
                                 "perturbations_per_eval": {"value": 1, "limit": (1, 100), "type": "number"}}  # fmt: skip
    json.dumps(config)  # what /init sent: plain JSON


def test_config_agrees_with_the_methods_the_page_runs():
    config = visualizer().get_insights_config()
    for name in config["methods"]:
        assert insights_methods.canonical(name) == name  # every offered method runs here under its own name
    for name, params in config["method_arguments"].items():
        defaults = insights_methods.METHODS[name].defaults
        assert set(params) <= set(defaults)  # every editable argument is one `methods=` takes
        for arg, spec in params.items():
            if spec["type"] != "string":  # Occlusion's window had no default in Insights
                assert defaults[arg] == spec["value"]
    for approx in config["method_arguments"]["Integrated Gradients"]["method"]["limit"]:
        insights_methods.resolve({"Integrated Gradients": {"method": approx, "n_steps": 4}})


def test_config_is_a_fresh_dict_and_follows_the_page(tmp_path):
    vis = visualizer()
    first = vis.get_insights_config()
    first["classes"].append("x")
    first["method_arguments"]["Integrated Gradients"]["n_steps"]["value"] = 1
    again = vis.get_insights_config()
    assert again["classes"] == CLASSES and again["method_arguments"]["Integrated Gradients"]["n_steps"]["value"] == 25
    vis.export(tmp_path / "p.html", methods=["Saliency", "Deep Lift"])
    assert vis.get_insights_config()["selected_method"] == "Saliency"  # the page opens on its first method


def test_config_equals_captums_visualizer():
    insights = pytest.importorskip("captum.insights")  # removed in Captum 0.9: runs with an older Captum only
    from captum.insights.attr_vis.features import ImageFeature as CaptumImageFeature

    ours = visualizer().get_insights_config()
    theirs = visualizer(CaptumImageFeature, insights.Batch, insights.AttributionVisualizer).get_insights_config()
    assert ours == theirs


def test_visualize_without_ipython_writes_the_page_and_says_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)  # not installed
    vis = visualizer()
    path = vis.visualize(path=tmp_path / "sub" / "v.html", methods=["Saliency"])
    out = capsys.readouterr().out
    assert path == str(tmp_path / "sub" / "v.html") and os.path.getsize(path) > 0
    assert os.path.abspath(path) in out and "open it in a browser" in out
    _, _, data = parse(path)
    assert data["n"] == 6 and data["methods"] == ["Saliency"] and data["classes"] == CLASSES


def fake_ipython(monkeypatch, shell):
    shown = []
    display = types.ModuleType("IPython.display")
    display.HTML, display.display = (lambda s: ("HTML", s)), shown.append
    ipython = types.ModuleType("IPython")
    ipython.get_ipython, ipython.display = (lambda: shell), display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    return shown


def test_visualize_in_a_notebook_displays_the_page_inline(tmp_path, capsys, monkeypatch):
    shown = fake_ipython(monkeypatch, types.SimpleNamespace(kernel=object()))
    vis = visualizer()
    path = vis.visualize(path=tmp_path / "n.html", methods=["Saliency", "Integrated Gradients"], height=450)
    page = open(path, encoding="utf-8").read()
    assert len(shown) == 1 and shown[0][0] == "HTML" and "height:450px" in shown[0][1]
    srcdoc = shown[0][1].split('srcdoc="', 1)[1].split('" style=', 1)[0]
    assert '"' not in srcdoc and html.unescape(srcdoc) == page  # the whole page, escaped once
    assert capsys.readouterr().out == ""  # shown, not printed


def test_visualize_in_a_terminal_ipython_prints(tmp_path, capsys, monkeypatch):
    shown = fake_ipython(monkeypatch, None)  # IPython importable, but no shell running: a plain script
    path = visualizer().visualize(path=tmp_path / "t.html", methods=["Saliency"])
    assert shown == [] and os.path.abspath(path) in capsys.readouterr().out


def test_visualize_takes_exports_keywords_and_checks_them(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)
    vis = visualizer()
    with pytest.raises(ValueError, match="max_examples must be a positive int"):
        vis.visualize(path=tmp_path / "e.html", max_examples=0)
    with pytest.raises(ValueError, match="unknown method"):
        vis.visualize(path=tmp_path / "e.html", methods=["Magic"])
    path = vis.visualize(path=tmp_path / "four.html", methods=["Saliency"], max_examples=4, target="true", title="T")
    _, _, data = parse(path)
    assert data["n"] == 4 and data["title"] == "T" and data["target"] == "true class"
