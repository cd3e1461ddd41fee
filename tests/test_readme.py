"""The README's quick start is what CI runs."""
from __future__ import annotations

import re

from conftest import REPO


def quick_start_lines():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip()]


def test_quick_start_has_exactly_two_lines_and_ci_runs_the_test_line():
    lines = quick_start_lines()
    assert len(lines) == 2
    assert "pytest" in lines[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert lines[1] in ci
