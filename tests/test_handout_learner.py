"""A learner's hand-out passes `make test` at every stage of their work.

Builds a hand-out, solves a few exercises in it the way a learner would (the solution's
body pasted into the exercise file), and runs what `make test` runs that depends on the
exercises: the grading target, the exercise and notebook design tests, and nbval on a
notebook whose check cells now print [PASS] instead of the stored [TODO] — once as stored,
once re-executed and saved by the learner.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.handout import write_handout
from course_lib.paths import course_root

ROOT = course_root()
VENV = Path(sys.prefix)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "solutions").is_dir(), reason="needs solutions/ to play the learner"),
    pytest.mark.skipif(not (VENV / ".course-installed").exists(), reason="runs make with the course's .venv"),
]
SOLVED = {"ex00_welcome.py": ["count_parameters", "dot"], "ex02_layers.py": ["linear"]}


def solve(handout: Path, filename: str, names: list[str]) -> None:
    """Replace the stubs ``names`` in the hand-out's exercise file with the solutions' functions."""
    solution = (ROOT / "solutions" / filename).read_text()
    path = handout / "exercises" / filename
    text = path.read_text()
    for name in names:
        solved = next(node for node in ast.parse(solution).body if getattr(node, "name", None) == name)
        stub = next(node for node in ast.parse(text).body if getattr(node, "name", None) == name)
        lines = text.splitlines(keepends=True)
        replacement = ast.get_source_segment(solution, solved) + "\n"
        text = "".join(lines[:stub.lineno - 1]) + replacement + "".join(lines[stub.end_lineno:])
    path.write_text(text)


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed in the hand-out:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def test_make_test_passes_in_a_handout_with_some_exercises_solved(tmp_path):
    handout = tmp_path / "learner"
    write_handout(handout)
    assert "solutions/" not in (handout / "README.md").read_text()
    for filename, names in SOLVED.items():
        solve(handout, filename, names)
    env = dict(os.environ, COURSE_ROOT=str(handout), PYTHONPATH=str(handout), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    python = str(VENV / "bin" / "python")

    grading = run(["make", f"VENV={VENV}", "test-grading"], handout, env)
    assert "ex00.count_parameters" in grading.stdout and "not implemented yet" in grading.stdout
    table = {line.split()[0]: line for line in grading.stdout.splitlines() if line.startswith("ex")}
    assert "passed" in table["ex00.count_parameters"] and "passed" in table["ex02.linear"]

    # every test that reads exercises/ (the design tests, and each chapter's stub tests)
    cases = sorted(str(p.relative_to(handout)) for p in (handout / "tests").glob("test_ex*_grading_cases.py"))
    run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_exercise_stubs.py",
         "tests/test_notebook_exercises.py", *cases, "-k", "stub or notebook or exercise or hint"], handout, env)

    nbval = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
             "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "notebooks/00_welcome.ipynb"]
    run(nbval, handout, env)  # the stored outputs say [TODO]; the learner's check cells now pass
    run([str(VENV / "bin" / "jupyter"), "nbconvert", "--to", "notebook", "--execute", "--inplace",
         "notebooks/00_welcome.ipynb"], handout, env)
    assert "[PASS] ex00.dot" in (handout / "notebooks" / "00_welcome.ipynb").read_text()
    run(nbval, handout, env)  # ... and after the learner re-ran and saved the notebook
