"""Every ```python block in README.md and docs/*.md runs as written, and where a ```text
block follows it directly, that block is what it prints ("..." in the text stands for any
characters within a line, for output that differs between runs or machines)."""

import contextlib
import io
import os
import pathlib
import re

import numpy as np
import pytest

from helpers import real_data_root

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A python block, and the text block right after it if there is one.
BLOCK = re.compile(r"```python\n((?:(?!```).)*?)```(?:\s*```text\n((?:(?!```).)*?)```)?", re.S)

CASES = [(path, i, match.group(1), match.group(2)) for path in FILES
         for i, match in enumerate(BLOCK.finditer(path.read_text()))]


def matches_printed(expected: str, printed: str) -> bool:
    """Whether ``printed`` is ``expected``, with "..." matching anything within a line."""
    pattern = "\n".join(".*".join(re.escape(part) for part in line.split("..."))
                        for line in expected.strip().splitlines())
    return re.fullmatch(pattern, printed.strip()) is not None


@pytest.mark.parametrize("path,index,code,expected", CASES,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _, _ in CASES])
def test_doc_example_runs_and_prints_what_the_docs_show(path, index, code, expected,
                                                        monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), np.printoptions():  # no example sets another's
        exec(compile(code, f"{path.name} block {index}", "exec"), {"__name__": "__doc_example__"})
    if "ANYARRAY_NN_DATA" in code and real_data_root() is None:
        pytest.skip("the example ran; what it prints needs the real data (ANYARRAY_NN_DATA)")
    if expected is not None:
        assert matches_printed(expected, printed.getvalue()), (
            f"{path.name} block {index} printed:\n{printed.getvalue()}\nthe docs show:\n{expected}")


def test_the_ellipsis_matches_within_a_line_only():
    assert matches_printed("eof = ..., done", "eof = 87648, done")
    assert not matches_printed("eof = 1, done", "eof = 2, done")
    assert not matches_printed("a...b", "a\nb")
