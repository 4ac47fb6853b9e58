"""The grader survives whatever learner code does, and reports it.

Learner files here are written on the fly into a temporary folder and graded with
``source=`` against the real ex00 checks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from course_lib.grading import registry, runner
from course_lib.grading.runner import format_table, grade
from course_lib.paths import course_root

needs_solutions = pytest.mark.skipif(not (course_root() / "solutions").is_dir(),
                                     reason="a learner hand-out has no solutions/")

GOOD_DOT = """
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))
"""


def write_ex00(tmp_path, count_parameters_body: str, dot_source: str = GOOD_DOT):
    (tmp_path / "ex00_welcome.py").write_text(
        "import math, os, sys, time\n\n"
        "def count_parameters(shapes):\n" + textwrap.indent(textwrap.dedent(count_parameters_body), "    ")
        + "\n" + textwrap.dedent(dot_source)
    )
    return tmp_path


def by_key(results):
    return {r.key: r for r in results}


@needs_solutions
def test_solutions_score_full_and_stubs_zero():
    full, _ = grade(["ex00"], solutions=True)
    n = len(registry.load_chapter("ex00"))
    assert [r.status for r in full] == ["pass"] * n
    zero, _ = grade(["ex00"])
    assert [(r.status, r.points) for r in zero] == [("todo", 0)] * n


def test_wrong_answer_fails_with_message_and_hint(tmp_path):
    write_ex00(tmp_path, "return 42\n")
    results = by_key(grade(["ex00"], source=tmp_path)[0])
    r = results["ex00.count_parameters"]
    assert (r.status, r.points) == ("fail", 0)
    assert "expected" in r.message and "got 42" in r.message
    assert "math.prod" in r.hint
    assert results["ex00.dot"].status == "pass"  # the rest is still graded


def test_hard_coded_example_cannot_pass(tmp_path):
    # The docstring's example, hard-coded: random inputs catch it.
    write_ex00(tmp_path, "return 2_362_368\n")
    assert by_key(grade(["ex00"], source=tmp_path)[0])["ex00.count_parameters"].status == "fail"


def test_raising_code_is_reported_with_the_learners_line(tmp_path):
    write_ex00(tmp_path, "return shapes[0][0] / 0\n")
    r = by_key(grade(["ex00"], source=tmp_path)[0])["ex00.count_parameters"]
    assert r.status == "error"
    assert "ZeroDivisionError" in r.message and "ex00_welcome.py, line" in r.message


def test_hanging_code_times_out_and_the_rest_is_graded(tmp_path):
    write_ex00(tmp_path, "while True:\n    time.sleep(0.01)\n")
    start = time.monotonic()
    results = by_key(grade(["ex00"], source=tmp_path, timeout=2)[0])
    assert time.monotonic() - start < 30
    assert results["ex00.count_parameters"].status == "timeout"
    assert "2 s" in results["ex00.count_parameters"].message
    assert results["ex00.dot"].status == "pass"


def test_sys_exit_is_reported_not_fatal(tmp_path):
    write_ex00(tmp_path, "sys.exit(3)\n")
    results = by_key(grade(["ex00"], source=tmp_path)[0])
    assert results["ex00.count_parameters"].status == "error"
    assert "sys.exit(3)" in results["ex00.count_parameters"].message
    assert results["ex00.dot"].status == "pass"


def test_killing_the_interpreter_is_reported_and_the_rest_is_graded(tmp_path):
    write_ex00(tmp_path, "os._exit(7)\n")
    results = by_key(grade(["ex00"], source=tmp_path)[0])
    assert results["ex00.count_parameters"].status == "crash"
    assert "exit code 7" in results["ex00.count_parameters"].message
    assert results["ex00.dot"].status == "pass"


def test_printing_is_reported_but_a_right_answer_still_counts(tmp_path):
    write_ex00(tmp_path, "print('debug', shapes)\nreturn sum(math.prod(s) for s in shapes)\n")
    results, seed = grade(["ex00"], source=tmp_path)
    r = by_key(results)["ex00.count_parameters"]
    assert r.status == "pass" and "debug" in r.printed
    assert "remove debug prints" in format_table(results, seed)


def test_file_that_fails_to_import_is_reported_for_each_exercise(tmp_path):
    (tmp_path / "ex00_welcome.py").write_text("def count_parameters(shapes):\n    return (\n")
    results = grade(["ex00"], source=tmp_path)[0]
    assert [r.status for r in results] == ["error"] * len(registry.load_chapter("ex00"))
    assert "failed to import" in results[0].message and "SyntaxError" in results[0].message


def test_missing_function_and_missing_file(tmp_path):
    (tmp_path / "ex00_welcome.py").write_text(GOOD_DOT)
    r = by_key(grade(["ex00"], source=tmp_path)[0])["ex00.count_parameters"]
    assert r.status == "error" and "no function named count_parameters" in r.message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert {r.status for r in grade(["ex00"], source=empty)[0]} == {"missing"}


def test_same_seed_same_inputs(tmp_path):
    # A wrong answer's message names the random input; the same seed gives the same message.
    write_ex00(tmp_path, "return len(shapes)\n")
    first = by_key(grade(["ex00.count_parameters"], source=tmp_path, seed=123)[0])
    again = by_key(grade(["ex00.count_parameters"], source=tmp_path, seed=123)[0])
    assert first["ex00.count_parameters"].message == again["ex00.count_parameters"].message


@needs_solutions
def test_check_prints_a_friendly_verdict(capsys):
    runner.check("ex00.dot")
    out = capsys.readouterr().out
    assert out.startswith("[TODO] ex00.dot: not implemented yet") and "exercises/ex00_welcome.py" in out
    runner.check("ex00.dot", solutions=True)
    assert capsys.readouterr().out.startswith("[PASS] ex00.dot: 1/1 points")


def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="ex00.count_parameters"):
        registry.get("ex00.no_such_thing")
    with pytest.raises(KeyError, match="there is no chapter"):
        registry.load_chapter("ex99")


@needs_solutions
def test_cli_expect_flags_set_the_exit_code():
    cmd = [sys.executable, "-m", "course_lib.grade", "ex00"]
    assert subprocess.run(cmd + ["--solutions", "--expect", "full"], capture_output=True).returncode == 0
    assert subprocess.run(cmd + ["--expect", "zero"], capture_output=True).returncode == 0
    wrong = subprocess.run(cmd + ["--expect", "full"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "EXPECTED FULL MARKS" in wrong.stderr
    assert subprocess.run(cmd + ["--solutions", "--expect", "zero"], capture_output=True).returncode == 1


def test_check_reveals_the_hints_one_tier_per_failure(tmp_path, capsys):
    write_ex00(tmp_path, "return 42\n")
    hints = registry.get("ex00.count_parameters").hints
    assert len(hints) >= 2
    runner.check("ex00.count_parameters", source=tmp_path)
    first = capsys.readouterr().out
    assert first.startswith("[FAIL] ex00.count_parameters") and f"hint 1 of {len(hints)}: {hints[0]}" in first
    assert hints[1] not in first and "hint=2" in first
    runner.check("ex00.count_parameters", source=tmp_path)
    assert f"hint 2 of {len(hints)}: {hints[1]}" in capsys.readouterr().out
    runner.check("ex00.count_parameters", source=tmp_path, hint=1)
    assert f"hint 1 of {len(hints)}" in capsys.readouterr().out
    # the CLI shows the first hint only
    results, seed = grade(["ex00.count_parameters"], source=tmp_path)
    table = format_table(results, seed)
    assert hints[0] in table and hints[1] not in table
    # a solved exercise resets the ladder
    write_ex00(tmp_path, "return sum(math.prod(s) for s in shapes)\n")
    runner.check("ex00.count_parameters", source=tmp_path)
    assert capsys.readouterr().out.startswith("[PASS]")
    write_ex00(tmp_path, "return 42\n")
    runner.check("ex00.count_parameters", source=tmp_path)
    assert "hint 1 of" in capsys.readouterr().out
