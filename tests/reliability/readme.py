"""The reliability table: load every ``cases_*.py`` module's ``CASES``, and write the README's
"Errors you may see" section from the cases marked ``readme=True``.

    python -m tests.reliability.readme            # print the section
    python -m tests.reliability.readme --write    # write it into README.md, between the markers
    python tests/reliability/readme.py --write    # the same

``tests/test_reliability.py`` runs the cases (``load_cases``) and fails when the README's
section differs from ``section()``; this module is the one place that finds the case modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
README = TESTS.parent / "README.md"
BEGIN, END = "<!-- errors:begin -->", "<!-- errors:end -->"
REGENERATE = "python -m tests.reliability.readme --write"
CASE_FIELDS = ("id", "area", "run", "raises", "warns", "words", "problem", "fix", "readme")


def case_modules() -> list[Path]:
    """``tests/reliability/cases_*.py``; the command-line cases last (their advice repeats the library's)."""
    return sorted(HERE.glob("cases_*.py"), key=lambda p: (p.stem == "cases_cli", p.stem))


def import_case_module(path: Path):
    return importlib.import_module(f"reliability.{path.stem}")


def load_cases() -> tuple[list, list[str]]:
    """(every case, in module order; problems found: a module without ``CASES``, a duplicate id, ...).

    The modules are imported as ``reliability.cases_*`` with ``tests/`` on ``sys.path``, as pytest
    imports the test modules (so a case module may ``from helpers import ...`` and ``from . import Case``).
    """
    for folder in (TESTS.parent, TESTS):  # the course's own course_lib, then helpers and reliability
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    cases, problems, seen = [], [], {}
    for path in case_modules():
        name = f"tests/reliability/{path.name}"
        try:
            module = import_case_module(path)
        except Exception as err:  # a broken module must fail the run, not vanish from it
            problems.append(f"{name} cannot be imported: {type(err).__name__}: {err}")
            continue
        found = getattr(module, "CASES", None)
        if not isinstance(found, (list, tuple)) or not found:
            problems.append(f"{name} has no CASES (a non-empty list of reliability.Case)")
            continue
        for case in found:
            if not all(hasattr(case, field) for field in CASE_FIELDS):
                problems.append(f"{name}: {case!r} is not a reliability.Case")
            elif case.id in seen:
                problems.append(f"duplicate case id {case.id!r} in {seen[case.id]} and {name}: ids must be unique "
                                f"(prefix them with your area)")
            else:
                seen[case.id] = name
                cases.append(case)
    return cases, problems


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def section(cases: list) -> str:
    """The Markdown between the markers: one table per area, in the order the areas first appear."""
    by_area: dict[str, list] = {}
    for case in cases:
        if case.readme:
            by_area.setdefault(case.area, []).append(case)
    lines = [f"<!-- generated from tests/reliability/cases_*.py (readme=True) by `{REGENERATE}`: "
             f"edit the cases, not this table -->"]
    for area, chosen in by_area.items():
        lines += ["", f"**{_cell(area[:1].upper() + area[1:])}**", "",
                  "| what you did | what the message says to do |", "|---|---|"]
        lines += [f"| {_cell(case.problem)} | {_cell(case.fix)} |" for case in chosen]
    return "\n".join(lines)


def readme_section(text: str) -> str | None:
    """What the README holds between the markers (None when they are missing)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(BEGIN):end].strip("\n")


def with_section(text: str, body: str) -> str:
    if readme_section(text) is None:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} markers: put them where the section goes")
    start, end = text.find(BEGIN) + len(BEGIN), text.find(END)
    return text[:start] + "\n" + body + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.readme", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write the section into {README.name}")
    args = parser.parse_args(argv)
    cases, problems = load_cases()
    if problems:
        print("the reliability table is broken, nothing written:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    body = section(cases)
    if not args.write:
        print(body)
        return 0
    text = README.read_text(encoding="utf-8")
    new = with_section(text, body)
    if new != text:
        README.write_text(new, encoding="utf-8")
    print(f"{README}: 'Errors you may see' {'updated' if new != text else 'already up to date'} "
          f"({sum(c.readme for c in cases)} of {len(cases)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
