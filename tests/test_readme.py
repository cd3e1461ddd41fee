"""The README's quick start is exactly what CI runs, on a fresh virtual environment."""
from __future__ import annotations

import re
import subprocess

from conftest import REPO


def quick_start_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def ci_lines() -> list[str]:
    out = subprocess.run(["bash", str(REPO / ".ci" / "run"), "--list"], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.splitlines()


def test_ci_runs_the_readme_quick_start_lines_verbatim():
    lines = quick_start_lines()
    assert lines == ci_lines()
    # set-up first (with the test tools), then the tests, then the demo
    assert lines[0].startswith("pip install -e ") and "[dev]" in lines[0]
    assert "pytest" in lines[1] and "run_all.py demo" in lines[2]


def test_ci_builds_a_fresh_venv_and_runs_every_readme_line_as_a_step():
    script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"python3 -m venv .*\$tmp/venv", script)
    assert 'source "$tmp/venv/bin/activate"' in script
    assert re.search(r'for i in "\$\{!README_LINES\[@\]\}"; do\n\s+step ', script)


def test_a_failing_step_stops_ci_with_its_exit_code_even_pytest_5():
    """.ci/run's step(): runs its command, prints the time, and exits with the command's code
    (pytest's 5, "no tests collected", included); later steps never run."""
    script = (REPO / ".ci" / "run").read_text()
    step = re.search(r"^timings=\(\)\n\nstep\(\) \{.*?^\}\n", script, re.S | re.M).group(0)
    body = step + 'step "first" "true"\nstep "tests" "exit 5"\necho never-reached\n'
    out = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30)
    assert out.returncode == 5 and "never-reached" not in out.stdout
    assert "ci: [first] exited 0 after" in out.stderr
    assert "ci: FAILED at step 'tests' (exit 5)" in out.stderr
