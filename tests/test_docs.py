"""The ```python blocks of each page in docs/ and README.md run, in order, like a notebook.

Blocks of one page share one namespace (later blocks may use names defined earlier).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
WITH_CODE = [p for p in PAGES if BLOCK.search(p.read_text())]


def test_docs_have_examples():
    assert len(WITH_CODE) >= 5


@pytest.mark.parametrize("page", WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(BLOCK.findall(page.read_text())):
        try:
            exec(compile(code, f"{page.name}#{i}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}: example {i} fails: {type(err).__name__}: {err}\n{code}") from err
