"""The demo (python -m xattr.demo) on a tiny setting, and the heatmap helper it uses."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from xattr import demo  # noqa: E402
from xattr.viz import heatmap  # noqa: E402

EXPECTED_ROWS = {
    "deep_lift",
    "guided_backprop",
    "lrp",
    "grad_cam",
    "occlusion",
    "kernel_shap",
    "saliency",
    "input_x_gradient",
    "ig_gausslegendre",
    "ig_riemann_trapezoid",
    "ig_riemann_middle",
    "ig_riemann_left",
    "ig_riemann_right",
    "gradient_shap",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "smoothgrad_ig",
    "expected_ig",
    "ig_all_classes",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["--out", str(out), "--epochs", "3", "--images", "3", "--n-steps", "16", "--samples", "4", "--repeats", "1", "--no-progress"]
    return demo.main(argv)


def test_demo_trains_a_sane_model(result):
    assert 0.85 <= result["accuracy"] <= 1.0


def test_demo_writes_its_files(result):
    out = result["out"]
    for name in ("overview.png", "classes.png", "ig_quadrature.png", "class_means.png", "table.md", "explorer.html"):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 1000 or name == "table.md", name
    per_method = sorted(os.listdir(os.path.join(out, "methods")))
    assert per_method == sorted(f"{r}.png" for r in EXPECTED_ROWS - {"ig_all_classes"})
    for path in result["files"]:
        assert os.path.isfile(path), path
    with open(os.path.join(out, "overview.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "explorer.html")) as fh:
        page = fh.read()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") >= demo.EXPLORED
    with open(os.path.join(out, "evaluation.md")) as fh:
        scored = fh.read()
    assert "| random |" in scored and "faithfulness_correlation" in scored and os.path.getsize(os.path.join(out, "evaluation.png")) > 1000


def test_demo_table_covers_every_method(result):
    names = [row[0] for row in result["rows"]]
    assert set(names) == EXPECTED_ROWS and len(names) == len(EXPECTED_ROWS)
    table = result["table"]
    for name in EXPECTED_ROWS:
        assert f"| {name} " in table
    with open(os.path.join(result["out"], "table.md")) as fh:
        assert table in fh.read()
    gaps = {name: gap for name, _, _, gap, _ in result["rows"]}
    assert gaps["saliency"] is None and gaps["vargrad"] is None  # no baseline: "-"
    # integrated gradients is complete up to quadrature error (logits of order 10)
    assert gaps["ig_gausslegendre"] < 0.5
    assert gaps["ig_all_classes"] < 0.5
    assert gaps["deep_lift"] < 1e-3  # exact: summation-to-delta on a ReLU/max-pool CNN
    assert all(ms >= 0 for *_, ms in result["rows"])


def test_demo_explains_a_language_model(result):
    """Step 4: a tiny LM on the Zen of Python; Shapley efficiency and layer IG completeness hold
    for the whole continuation and each token (printed), and the token plot is written."""
    from xattr.testing.llm import zen_lm

    if zen_lm() is None:
        assert result["llm"] is None
        pytest.skip("needs the 'text' extra")
    text = result["llm"]
    assert "continuation 'ugly.'" in text
    for word in ("beautiful", "is", "better", "than"):
        assert f"\n{word} " in text
    numbers = text.rsplit("efficiency: max |sum - (f(x) - f(unk))| = ", 1)[1]
    efficiency, completeness = float(numbers.split(";")[0]), float(numbers.split("= ")[1].split(",")[0])
    assert efficiency < 1e-4 and completeness < 1e-2
    path = os.path.join(result["out"], "llm_tokens.png")
    assert path in result["files"] and os.path.getsize(path) > 1000


def test_format_table_marks_missing_gaps():
    table = demo.format_table([("a", "saliency(f)", 6, None, 1.25), ("b", "ig(f)", 300, 0.001, 20.0)])
    lines = table.splitlines()
    assert lines[0].startswith("| method") and len(lines) == 4
    assert "| -" in lines[2].replace(" ", "") or " - |" in lines[2]
    assert "1.00e-03" in lines[3]


def test_normalize_signs_and_scales():
    a = np.array([[-2.0, 0.0], [1.0, 4.0]])
    values, sign, scale = heatmap.normalize(a, "auto", percentile=100)
    assert sign == "signed" and scale == 4.0
    np.testing.assert_allclose(values, a / 4.0)
    values, sign, _ = heatmap.normalize(a, "abs", percentile=100)
    assert sign == "abs" and values.min() >= 0
    assert heatmap.normalize(np.abs(a), "auto")[1] == "abs"
    zeros, _, scale = heatmap.normalize(np.zeros((2, 2)), "signed")
    assert scale == 1.0 and not zeros.any()  # an all-zero map does not divide by zero
    with pytest.raises(ValueError, match="sign must be"):
        heatmap.normalize(a, "positive")


def test_to_map_and_to_image_shapes():
    assert heatmap.to_map(torch.ones(3, 5, 4)).shape == (5, 4)  # channels summed
    assert heatmap.to_image(torch.rand(3, 5, 4)).shape == (5, 4, 3)
    assert heatmap.to_image(torch.rand(1, 5, 4)).shape == (5, 4)
    with pytest.raises(ValueError, match="shape"):
        heatmap.to_map(torch.ones(2, 3, 4, 5))


def test_save_heatmap_and_grid_errors(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    attr = torch.randn(2, 1, 8, 8)
    path = heatmap.save_heatmap(tmp_path / "sub" / "h.png", attr, x, labels=["a", "b"])
    assert os.path.getsize(path) > 1000
    with pytest.raises(ValueError, match="batched"):
        heatmap.save_heatmap(tmp_path / "bad.png", torch.randn(8, 8), None)
    with pytest.raises(ValueError, match="examples"):
        heatmap.save_grid(tmp_path / "bad.png", x, {"a": attr, "b": attr[:1]})


def test_viz_imports_matplotlib_lazily():
    code = "import sys, xattr.viz; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
