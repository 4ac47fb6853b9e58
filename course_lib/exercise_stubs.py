"""Write the learner's exercise files from the solutions: one source, no drift.

    python -m course_lib.exercise_stubs            # rewrite exercises/ from solutions/
    python -m course_lib.exercise_stubs ex02       # only chapter 02
    python -m course_lib.exercise_stubs --check    # exit 1 if exercises/ differs (a maintainers' test)
    python -m course_lib.exercise_stubs --out DIR  # write pristine stubs to DIR (the zero-score proof)

``solutions/exNN_*.py`` is the only hand-written copy of each exercise: the same module
docstring, imports, signatures and docstrings (with their tiered hints) as the learner
sees, and a solved body. A stub is that file with every public function's body replaced by
``raise NotImplementedError`` after its docstring. Private top-level helpers would leak
part of an answer into the stubs, so a solution may not have any.

This only works where ``solutions/`` exists (the maintainers' repository). In a learner's
hand-out the exercise files are the learner's: nothing here touches them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from course_lib.paths import course_root


class StubError(ValueError):
    pass


def stub_source(solution: str, filename: str = "<solution>") -> str:
    """The exercise file for a solution file's source."""
    tree = ast.parse(solution, filename=filename)
    lines = solution.splitlines(keepends=True)
    cuts: list[tuple[int, int]] = []  # (first line to drop, last line to drop), 1-based inclusive
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            raise StubError(f"{filename}: {node.name} is a private top-level helper; it would leak into the "
                            f"learner's stub. Inline it, or make it an exercise")
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if not ast.get_docstring(node):
            raise StubError(f"{filename}: {node.name}() needs a docstring (what, shapes, tiered hints)")
        docstring = node.body[0]
        if len(node.body) == 1:
            raise StubError(f"{filename}: {node.name}() has no body after its docstring")
        cuts.append((docstring.end_lineno + 1, node.end_lineno))
    out: list[str] = []
    position = 1
    for first, last in cuts:
        out += lines[position - 1:first - 1]
        indent = " " * (node_indent(lines[first - 1]) if first - 1 < len(lines) else 4)
        out.append(f"{indent}raise NotImplementedError\n")
        position = last + 1
    out += lines[position - 1:]
    return "".join(out)


def node_indent(line: str) -> int:
    return len(line) - len(line.lstrip(" ")) or 4


def write_stubs(solutions: Path, out: Path, only: list[str] | None = None) -> list[Path]:
    """Write a stub for every ``solutions/exNN_*.py`` (or the chapters ``only``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(solutions.glob("ex[0-9][0-9]_*.py")):
        if only and path.name.split("_", 1)[0] not in only:
            continue
        target = out / path.name
        target.write_text(stub_source(path.read_text(encoding="utf-8"), path.name), encoding="utf-8")
        written.append(target)
    return written


def differences(solutions: Path, exercises: Path) -> list[str]:
    """Files of ``exercises`` that are not the stubs of ``solutions`` (missing, extra or changed)."""
    found = []
    expected = {p.name: stub_source(p.read_text(encoding="utf-8"), p.name)
                for p in sorted(solutions.glob("ex[0-9][0-9]_*.py"))}
    present = {p.name for p in exercises.glob("ex[0-9][0-9]_*.py")}
    for name, text in expected.items():
        path = exercises / name
        if not path.exists():
            found.append(f"exercises/{name} is missing")
        elif path.read_text(encoding="utf-8") != text:
            found.append(f"exercises/{name} is not the stub of solutions/{name}")
    found += [f"exercises/{name} has no solution" for name in sorted(present - set(expected))]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.exercise_stubs", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 unless exercises/ equals the generated stubs")
    group.add_argument("--out", type=Path, help="write the stubs to this folder instead of exercises/")
    parser.add_argument("chapters", nargs="*", help="only these chapters (ex02 ...); default: all")
    args = parser.parse_args(argv)
    root = course_root()
    solutions = root / "solutions"
    if not solutions.is_dir():
        print("error: there is no solutions/ here (a learner hand-out): the exercise files are the learner's",
              file=sys.stderr)
        return 2
    try:
        if args.check:
            problems = differences(solutions, root / "exercises")
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("run `python -m course_lib.exercise_stubs` to write exercises/ from solutions/", file=sys.stderr)
            return 1 if problems else 0
        written = write_stubs(solutions, args.out or root / "exercises", args.chapters or None)
    except StubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} stub files to {args.out or root / 'exercises'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
