"""Exercises and solutions cannot drift apart, and stubs are only stubs.

For every ``exercises/exNN_*.py``: ``solutions/`` has the same file with the same public
functions and identical signatures (arguments, defaults, annotations) and docstrings; each
stub's body is exactly its docstring plus ``raise NotImplementedError``; every public
function is graded by a registered check and every check has a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from course_lib.grading import registry
from course_lib.paths import course_root

ROOT = course_root()
STUBS = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))
HAS_SOLUTIONS = (ROOT / "solutions").is_dir()


def public_functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name: node for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def signature_of(fn: ast.FunctionDef) -> str:
    return ast.dump(fn.args) + " -> " + (ast.dump(fn.returns) if fn.returns else "None")


def test_there_are_exercises():
    assert STUBS, "no exercises/exNN_*.py found"


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.name)
def test_stub_bodies_are_docstring_plus_raise(stub):
    functions = public_functions(stub)
    assert functions, f"{stub.name} defines no exercise functions"
    for name, fn in functions.items():
        body = fn.body
        assert ast.get_docstring(fn), f"{stub.name}: {name}() needs a docstring (what, shapes, a hint)"
        rest = body[1:]
        ok = (len(rest) == 1 and isinstance(rest[0], ast.Raise)
              and isinstance(rest[0].exc, (ast.Name, ast.Call))
              and (rest[0].exc.id if isinstance(rest[0].exc, ast.Name) else getattr(rest[0].exc.func, "id", None))
              == "NotImplementedError")
        assert ok, f"{stub.name}: {name}() must be only its docstring and `raise NotImplementedError`"


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.name)
def test_solution_matches_stub(stub):
    solution = ROOT / "solutions" / stub.name
    assert solution.exists(), f"solutions/{stub.name} is missing"
    stubs, solved = public_functions(stub), public_functions(solution)
    assert sorted(stubs) == sorted(solved), f"{stub.name}: exercises and solutions define different functions"
    for name in stubs:
        assert signature_of(stubs[name]) == signature_of(solved[name]), f"{stub.name}: {name}() signatures differ"
        assert ast.get_docstring(stubs[name]) == ast.get_docstring(solved[name]), \
            f"{stub.name}: {name}() docstrings differ between exercises/ and solutions/"
    assert ast.get_docstring(ast.parse(stub.read_text())) == ast.get_docstring(ast.parse(solution.read_text())), \
        f"{stub.name}: module docstrings differ"


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.name)
def test_every_function_is_graded_and_every_check_has_a_function(stub):
    chapter = stub.name.split("_", 1)[0]
    checked = {ex.function for ex in registry.load_chapter(chapter)}
    assert checked == set(public_functions(stub)), (
        f"{stub.name}: functions without a check: {sorted(set(public_functions(stub)) - checked)}; "
        f"checks without a function: {sorted(checked - set(public_functions(stub)))}")


def test_every_graded_chapter_has_an_exercise_file():
    files = {p.name.split("_", 1)[0] for p in STUBS}
    assert set(registry.chapters()) == files
