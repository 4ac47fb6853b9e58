"""No notebook shows an exercise's answer above its check() cell.

For every ``check("exNN.name")`` cell this walks the cells above it (their outputs, and the
code blocks of their markdown) and looks for the answer: a ``def``/``class`` of the exercise's
function or of the course's version of it (its ``reference``), or any statement of the
solution's body or of the reference's body. The course's version may be shown below the check
cell (``reveal``), never above; a stretch exercise's reference is not shown at all.

It also checks the notebook side of the exercise design: every exercise of a chapter has one
check cell in its notebook, marked ``# NBVAL_IGNORE_OUTPUT`` (the verdict depends on how far
the learner has got, so nbval must not compare it).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest

from course_lib.grading import registry
from course_lib.paths import course_root
from helpers import trivial_statement

ROOT = course_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK = re.compile(r"""\bcheck\(\s*["'](ex\d\d\.\w+)["']""")
REVEAL = re.compile(r"""\breveal\(\s*["'](ex\d\d\.\w+)["']""")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
MIN_STATEMENT = 16  # characters without whitespace: shorter statements (``return out``) say nothing


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def output_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append("".join(out["text"]))
        for mime in ("text/plain", "text/html", "text/markdown"):
            if mime in out.get("data", {}):
                parts.append("".join(out["data"][mime]))
    return "\n".join(parts)


def shown_text(cell: dict) -> str:
    """What a learner reads of a cell besides its own code: outputs, and markdown code blocks."""
    if cell["cell_type"] == "markdown":
        return "\n".join(FENCE.findall(source(cell)))
    return output_text(cell)


def body_statements(code: str) -> set[str]:
    """Single-line statements of every function body in ``code``, whitespace removed."""
    tree = ast.parse(textwrap.dedent(code))
    lines = textwrap.dedent(code).splitlines()
    found = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = fn.body[1:] if ast.get_docstring(fn) else fn.body
        for node in body:
            for sub in ast.walk(node):
                if isinstance(sub, ast.stmt) and sub.lineno == sub.end_lineno and not isinstance(
                        sub, (ast.If, ast.For, ast.While, ast.With, ast.Try)) and not trivial_statement(sub):
                    text = "".join(lines[sub.lineno - 1][sub.col_offset:].split())
                    text = re.sub(r"#.*$", "", text)
                    if len(text) >= MIN_STATEMENT:
                        found.add(text)
    return found


def resolve(dotted: str):
    module_name, _, attr = dotted.rpartition(".")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def answer_of(ex: registry.Exercise) -> tuple[set[str], set[str]]:
    """(names whose def/class must not appear, statements that must not appear)."""
    names = {ex.function} | {dotted.rsplit(".", 1)[-1] for dotted in ex.reference}
    statements: set[str] = set()
    for dotted in ex.reference:
        statements |= body_statements(inspect.getsource(resolve(dotted)))
    solution = next((ROOT / "solutions").glob(f"{ex.chapter}_*.py"), None)
    if solution is not None:
        tree = ast.parse(solution.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == ex.function:
                statements |= body_statements(ast.get_source_segment(solution.read_text(), node))
    return names, statements


def gives_away(text: str, names: set[str], statements: set[str]) -> str | None:
    for name in names:
        match = re.search(rf"\b(def|class)\s+{re.escape(name)}\b", text)
        if match:
            return match.group(0)
    bare = "".join(text.split())
    for statement in statements:
        if statement in bare:
            return statement
    return None


def chapter_notebook(chapter: str) -> Path:
    [notebook] = [nb for nb in NOTEBOOKS if nb.name.startswith(chapter[2:] + "_")]
    return notebook


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_no_answer_is_shown_above_its_check_cell(notebook):
    seen: list[dict] = []
    problems = []
    for cell in cells(notebook):
        if cell["cell_type"] == "code":
            for key in CHECK.findall(source(cell)):
                ex = registry.get(key)
                names, statements = answer_of(ex)
                for above_index, above in enumerate(seen):
                    leak = gives_away(shown_text(above), names, statements)
                    if leak:
                        problems.append(f"{key}: cell {above_index} shows {leak!r} above the check cell")
        seen.append(cell)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_stretch_answers_are_not_shown_anywhere(notebook):
    chapter = "ex" + notebook.name[:2]
    if chapter not in registry.chapters():
        pytest.skip("no exercises")
    problems = []
    for ex in registry.load_chapter(chapter):
        if not ex.stretch:
            continue
        names, statements = answer_of(ex)
        for index, cell in enumerate(cells(notebook)):
            if REVEAL.search(source(cell)) and ex.key in REVEAL.findall(source(cell)):
                problems.append(f"{ex.key}: cell {index} reveals a stretch exercise's answer")
            leak = gives_away(shown_text(cell), names, statements)
            if leak:
                problems.append(f"{ex.key}: cell {index} shows {leak!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("chapter", registry.chapters())
def test_every_exercise_has_one_check_cell_that_nbval_does_not_compare(chapter):
    notebook = chapter_notebook(chapter)
    found: dict[str, int] = {}
    for cell in cells(notebook):
        if cell["cell_type"] != "code":
            continue
        keys = CHECK.findall(source(cell))
        for key in keys:
            found[key] = found.get(key, 0) + 1
            assert source(cell).lstrip().startswith("# NBVAL_IGNORE_OUTPUT"), (
                f"{notebook.name}: the check cell of {key} must start with # NBVAL_IGNORE_OUTPUT (its verdict "
                "depends on the learner's progress)")
    expected = {ex.key for ex in registry.load_chapter(chapter)}
    assert set(found) == expected, (f"{notebook.name}: exercises without a check cell: {sorted(expected - set(found))};"
                                    f" check cells of other chapters: {sorted(set(found) - expected)}")
    assert all(n == 1 for n in found.values()), f"{notebook.name}: an exercise is checked twice: {found}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_reveals_come_after_their_check(notebook):
    checked: set[str] = set()
    for index, cell in enumerate(cells(notebook)):
        text = source(cell) if cell["cell_type"] == "code" else ""
        for key in REVEAL.findall(text):
            assert key in checked, f"{notebook.name}: cell {index} reveals {key} before its check cell"
        checked |= set(CHECK.findall(text))
