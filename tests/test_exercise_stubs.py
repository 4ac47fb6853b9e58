"""Exercises and solutions cannot drift apart, stubs are only stubs, and hints never give the line.

``solutions/`` is the one hand-written copy of every exercise; ``exercises/`` is generated
from it (``make stubs``). These are maintainers' checks: in a learner's hand-out there are no
solutions and the exercise files are the learner's, so they skip there, and nothing here
depends on how far the learner has got.

Everywhere: every chapter has at least 5 core and 2 stretch exercises, each with 2-3 tiered
hints, and a reference in ``course_lib`` to reveal below its check.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from course_lib import exercise_stubs
from course_lib.grading import registry
from course_lib.paths import course_root
from helpers import trivial_statement

ROOT = course_root()
SOLUTIONS = sorted((ROOT / "solutions").glob("ex[0-9][0-9]_*.py"))
HAS_SOLUTIONS = bool(SOLUTIONS)
maintainers_only = pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")


def public_functions(source: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(source)
    return {node.name: node for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def statements(fn: ast.FunctionDef, source: str) -> list[str]:
    """The solved body's statements, whitespace removed (docstring left out)."""
    lines = source.splitlines()
    body = fn.body[1:] if ast.get_docstring(fn) else fn.body
    found = []
    for node in body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.stmt) and not isinstance(sub, (ast.If, ast.For, ast.While, ast.With, ast.Try)) \
                    and not trivial_statement(sub):
                text = "".join(lines[sub.lineno - 1][sub.col_offset:].split()) if sub.lineno == sub.end_lineno \
                    else ""
                if len(text) >= 14:
                    found.append(text)
    return found


@maintainers_only
def test_exercises_are_the_stubs_of_the_solutions():
    problems = exercise_stubs.differences(ROOT / "solutions", ROOT / "exercises")
    assert not problems, "; ".join(problems) + " (run `make stubs`)"


@maintainers_only
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_a_stub_is_the_docstring_and_raise_and_keeps_the_signature(solution):
    source = solution.read_text()
    stub = exercise_stubs.stub_source(source, solution.name)
    solved, stubbed = public_functions(source), public_functions(stub)
    assert list(solved) == list(stubbed)
    for name, fn in stubbed.items():
        assert ast.dump(fn.args) == ast.dump(solved[name].args) and ast.get_docstring(fn) == \
            ast.get_docstring(solved[name])
        rest = fn.body[1:]
        assert len(rest) == 1 and isinstance(rest[0], ast.Raise) and ast.unparse(rest[0]) == \
            "raise NotImplementedError", f"{solution.name}: {name}() stub"
    assert ast.get_docstring(ast.parse(stub)) == ast.get_docstring(ast.parse(source))


def test_the_stub_writer_refuses_private_helpers_and_missing_docstrings():
    with pytest.raises(exercise_stubs.StubError, match="private top-level helper"):
        exercise_stubs.stub_source('def _helper():\n    """x"""\n    return 1\n')
    with pytest.raises(exercise_stubs.StubError, match="needs a docstring"):
        exercise_stubs.stub_source("def f(x):\n    return x\n")
    stub = exercise_stubs.stub_source('"""Doc."""\nimport math\n\n\ndef f(x):\n    """Say.\n\n    More.\n    """\n'
                                      '    y = x + 1  # a comment\n    return y\n\n\nCONSTANT = 3\n')
    assert stub == ('"""Doc."""\nimport math\n\n\ndef f(x):\n    """Say.\n\n    More.\n    """\n'
                    '    raise NotImplementedError\n\n\nCONSTANT = 3\n')


@maintainers_only
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_function_is_graded_and_every_check_has_a_function(solution):
    chapter = solution.name.split("_", 1)[0]
    checked = {ex.function for ex in registry.load_chapter(chapter)}
    defined = set(public_functions(solution.read_text()))
    assert checked == defined, (f"{solution.name}: functions without a check: {sorted(defined - checked)}; "
                                f"checks without a function: {sorted(checked - defined)}")


@maintainers_only
def test_every_graded_chapter_has_a_solution_file():
    assert set(registry.chapters()) == {p.name.split("_", 1)[0] for p in SOLUTIONS}


# ----------------------------------------------------------------------------- exercise design


@pytest.mark.parametrize("chapter", registry.chapters())
def test_every_chapter_has_five_core_and_two_stretch_exercises(chapter):
    exercises = registry.load_chapter(chapter)
    core = [ex for ex in exercises if not ex.stretch]
    stretch = [ex for ex in exercises if ex.stretch]
    assert len(core) >= 5, f"{chapter} has {len(core)} core exercises; at least 5"
    assert len(stretch) >= 2, f"{chapter} has {len(stretch)} stretch exercises; at least 2"
    assert min(ex.points for ex in stretch) >= max(
        1, sorted(ex.points for ex in core)[len(core) // 2]), f"{chapter}: stretch exercises are worth more"


@pytest.mark.parametrize("ex", registry.all_exercises(), ids=lambda ex: ex.key)
def test_every_exercise_has_tiered_hints_and_a_reference(ex):
    assert 2 <= len(ex.hints) <= 3, f"{ex.key}: {len(ex.hints)} hints; give 2-3, from the idea to a pointer"
    assert len(set(ex.hints)) == len(ex.hints) and all(len(h) >= 20 for h in ex.hints)
    assert ex.reference, f"{ex.key}: name the course's own version (reference=...) to reveal below the check"
    for dotted in ex.reference:
        module_name, _, attr = dotted.rpartition(".")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), dotted


@maintainers_only
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_hints_and_docstrings_never_give_the_finished_line(solution):
    """No hint (and no docstring) holds a statement of the solved body, whitespace aside."""
    source = solution.read_text()
    chapter = solution.name.split("_", 1)[0]
    checks = {ex.function: ex for ex in registry.load_chapter(chapter)}
    for name, fn in public_functions(source).items():
        texts = ["".join(h.split()) for h in checks[name].hints] + ["".join((ast.get_docstring(fn) or "").split())]
        for statement in statements(fn, source):
            bare = re.sub(r"^return", "", statement)
            for text in texts:
                assert bare not in text, f"{solution.name}: {name}(): a hint or the docstring gives the line {statement!r}"
