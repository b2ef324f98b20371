"""Every ```python block in README.md and docs/*.md runs as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)

CASES = [(path, i, code) for path in FILES
         for i, code in enumerate(BLOCK.findall(path.read_text()))]


@pytest.mark.parametrize("path,index,code", CASES,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in CASES])
def test_doc_example_runs(path, index, code, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name} block {index}", "exec"), {"__name__": "__doc_example__"})
