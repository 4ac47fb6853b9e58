"""Grade exercises and report points, verdicts and hints.

:func:`grade` is what ``python -m course_lib.grade`` and :func:`check` (the notebook's
one-exercise call) both use. The checks run here, in the grader's process; the learner's
code runs in a child (:mod:`course_lib.grading.learner_process`, :mod:`course_lib.grading.child`)
that holds no checks, no expected answers and no results. For each chapter:

1. the learner's file is copied to a temporary folder, and the copy is what is read and run;
2. the copy is read for imports of the answer key and torch's private internals
   (:mod:`course_lib.grading.scan`): if there are any, every exercise in the file scores 0;
3. a child imports the copy (with the chapter's shortcuts switched off first), and each
   check calls the learner's functions there through :class:`LearnerFunction`;
4. a learner's function that hangs, crashes, exits, runs out of memory or signals its
   parent costs that one exercise: the child's process group is killed and a fresh child
   grades the rest.

The child runs in the folder above ``exercises/`` (so a stray relative path written by the
learner's code does not land inside ``course_lib/``), with a memory limit and a cap on the
output kept. It is not a sandbox: the learner's code runs with the learner's rights.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import tempfile
import zlib
from pathlib import Path

from course_lib.grading import registry, scan
from course_lib.grading.learner_process import (LearnerError, LearnerExit, LearnerFunction, LearnerProcess,
                                                LearnerProcessEnded, memory_limit_bytes)
from course_lib.paths import course_root

DEFAULT_TIMEOUT = 20.0  # seconds of the learner's code per exercise

STATUS_TEXT = {
    "pass": "passed",
    "fail": "wrong answer",
    "todo": "not implemented yet",
    "error": "raised an error",
    "timeout": "timed out",
    "crash": "crashed",
    "answer_key": "uses the course's code",
    "missing": "file missing",
}


@dataclasses.dataclass
class Result:
    key: str
    status: str  # one of STATUS_TEXT
    points: int  # earned
    max_points: int
    message: str = ""
    hint: str = ""
    printed: str = ""
    source: str = ""  # the graded file, relative to the course folder
    printed_bytes: int = 0  # everything the learner's code printed (``printed`` keeps the first MB)
    stretch: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def rng_for(seed: int, key: str):
    """The random generator a check gets: depends on the run's seed and the exercise only."""
    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def chapter_file(chapter: str, folder: Path) -> Path | None:
    """``folder/exNN_*.py`` for a chapter, or None if there is none."""
    matches = sorted(folder.glob(f"{chapter}_*.py"))
    if len(matches) > 1:
        raise RuntimeError(f"{folder} has several files for {chapter}: {[m.name for m in matches]}; keep one")
    return matches[0] if matches else None


def resolve_targets(targets: list[str] | None) -> list[registry.Exercise]:
    """"ex01" means the whole chapter, "ex01.name" one exercise; nothing means everything."""
    if not targets:
        return registry.all_exercises()
    chosen: list[registry.Exercise] = []
    for target in targets:
        target = target.strip()
        found = [registry.get(target)] if "." in target else registry.load_chapter(target)
        chosen += [ex for ex in found if ex not in chosen]
    return chosen


def _source_folder(solutions: bool, source: str | os.PathLike | None) -> Path:
    if source is not None:
        return Path(source).expanduser().resolve()
    folder = course_root() / ("solutions" if solutions else "exercises")
    if solutions and not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist (a learner hand-out has no solutions/)")
    return folder


def _violation_message(violations: list[dict], rules: registry.ChapterRules) -> tuple[str, str] | None:
    """(status, message) when the learner's code used the answer key or a switched-off shortcut."""
    answer = [v["name"] for v in violations if v.get("kind") == "answer_key"]
    if answer:
        helpers = f" (you may import {', '.join(rules.allow)})" if rules.allow else ""
        return "answer_key", (f"uses the course's own implementation: your code reached {answer[0]}, the answer "
                              f"key, so this exercise scores 0. Write it yourself with torch, numpy and "
                              f"math{helpers}.")
    shortcuts = [v["name"] for v in violations if v.get("kind") == "shortcut"]
    if shortcuts:
        return "fail", (f"your code called {shortcuts[0]}(), a ready-made version of what this exercise asks you "
                        f"to write yourself; it is switched off while your code is graded")
    return None


def _grade_one(ex: registry.Exercise, process: LearnerProcess, seed: int, timeout: float,
               rules: registry.ChapterRules) -> tuple[str, str]:
    """Run one check against the learner's process: (status, message)."""
    process.budget = process.budget_total = ex.timeout or timeout
    process.pop_violations()
    try:
        ex.grade(LearnerFunction(process, ex.function), rng_for(seed, ex.key))
        status, message = "pass", ""
    except LearnerProcessEnded as ended:
        status, message = ended.status, ended.message
    except registry.GradeError as err:
        status, message = "fail", str(err)
    except LearnerExit as err:
        status, message = "error", str(err)
    except NotImplementedError as err:
        if isinstance(err, LearnerError):
            status, message = "todo", "not implemented yet"
        else:
            status, message = "error", f"the check could not use your function's result (NotImplementedError: {err})"
    except LearnerError as err:
        status, message = "error", err.learner_traceback or f"{err.type_name}: {err}"
        if err.type_name == "MemoryError" or "can't allocate memory" in str(err) or "Cannot allocate memory" in str(err):
            limit = process.memory_bytes / 2**30
            allowed = f"the grader allows {limit:g} GB" if limit else "the machine has no more"
            message = f"your code ran out of memory ({allowed}):\n{message}"
    except Exception as err:  # the check choked on what the learner's function returned
        status, message = "error", (f"the check could not use what your function returned ({type(err).__name__}: "
                                    f"{err}); see the docstring for the type and shape to return")
    found = _violation_message(process.pop_violations(), rules)
    if found and status != "todo":
        status, message = found
    return status, message


def _grade_chapter(exercises: list[registry.Exercise], path: Path, seed: int, timeout: float,
                   relative: str, memory_bytes: int) -> list[Result]:
    """Grade one chapter's exercises from one learner file, restarting the child as needed."""
    chapter = exercises[0].chapter
    rules = registry.rules_for(chapter)
    results: dict[str, Result] = {}

    def record(ex: registry.Exercise, status: str, message: str = "", printed: str = "", printed_bytes: int = 0):
        results[ex.key] = Result(ex.key, status, ex.points if status == "pass" else 0, ex.points, message,
                                 "" if status in ("pass", "todo") else ex.hint, printed, relative, printed_bytes,
                                 ex.stretch)

    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        text = copy.read_text(encoding="utf-8", errors="replace")
        findings = scan.scan_source(text, rules.allow, rules.refuse)
        if findings:
            message = scan.describe(findings, path.name, rules.allow)
            status = "fail" if all(f.kind == "private" for f in findings) else "answer_key"
            for ex in exercises:
                record(ex, status, message)
            return [results[ex.key] for ex in exercises]

        pending = list(exercises)
        while pending:
            process = LearnerProcess(copy, relative, shortcuts=registry.expand_shortcuts(rules.shortcuts),
                                     allow=list(rules.allow), refuse=list(rules.refuse), memory_bytes=memory_bytes,
                                     cwd=path.parent.parent, exercises_dir=path.parent)
            with process:
                try:
                    ready = process.start()
                except LearnerProcessEnded as ended:  # importing the file hangs or crashes: for every exercise
                    for ex in pending:
                        record(ex, ended.status, ended.message)
                    break
                startup_text, startup_bytes = process.startup_output
                if ready.get("error"):
                    for ex in pending:
                        record(ex, "error", str(ready["error"]), startup_text, startup_bytes)
                    break
                found = _violation_message(list(ready.get("violations") or []), rules)
                if found:
                    for ex in pending:
                        record(ex, found[0], found[1], startup_text, startup_bytes)
                    break
                functions = set(ready.get("functions") or [])
                for ex in list(pending):
                    pending.remove(ex)
                    if ex.function not in functions:
                        record(ex, "error", f"{path.name} has no function named {ex.function}()")
                        continue
                    status, message = _grade_one(ex, process, seed, timeout, rules)
                    printed, printed_bytes = process.take_output()
                    if startup_bytes:
                        printed, printed_bytes = startup_text + printed, startup_bytes + printed_bytes
                        startup_text, startup_bytes = "", 0
                    record(ex, status, message, printed, printed_bytes)
                    if process.ended is not None:
                        break  # a fresh child grades the rest
    return [results[ex.key] for ex in exercises]


def grade(targets: list[str] | None = None, *, solutions: bool = False,
          source: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT,
          seed: int | None = None, memory_gb: float | None = None) -> tuple[list[Result], int]:
    """Grade ``targets`` ("ex01", "ex01.name"; None = all) and return (results, seed used).

    ``solutions=True`` grades ``solutions/`` instead of ``exercises/``; ``source`` grades
    any folder of ``exNN_*.py`` files. ``seed`` fixes the random inputs (default: new ones).
    ``memory_gb`` caps the learner's process (default ``$COURSE_GRADER_MEMORY_GB`` or 4; 0 = no cap).
    """
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    folder = _source_folder(solutions, source)
    exercises = resolve_targets(targets)
    memory_bytes = memory_limit_bytes(memory_gb)
    try:
        root = course_root()
    except FileNotFoundError:
        root = folder.parent
    results: list[Result] = []
    for chapter in dict.fromkeys(ex.chapter for ex in exercises):
        in_chapter = [ex for ex in exercises if ex.chapter == chapter]
        path = chapter_file(chapter, folder)
        if path is None:
            results += [Result(ex.key, "missing", 0, ex.points, f"no {chapter}_*.py in {folder}", ex.hint,
                               stretch=ex.stretch) for ex in in_chapter]
            continue
        try:
            relative = str(path.relative_to(root))
        except ValueError:  # a folder outside the course: its name is enough to tell which
            relative = f"{path.parent.name}/{path.name}"
        results += _grade_chapter(in_chapter, path, seed, timeout, relative, memory_bytes)
    return results, seed


# --------------------------------------------------------------------------------------
# Presentation

def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _size(n: int) -> str:
    if n < 10_000:
        return f"{n:,} bytes"
    if n < 10 * 2**20:
        return f"{n / 2**10:,.0f} KB"
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


def _printed_note(r: Result) -> str:
    if not r.printed_bytes and not r.printed.strip():
        return ""
    if r.printed_bytes > len(r.printed.encode()):
        return f"  (it printed {_size(r.printed_bytes)}; the grader kept the first {_size(len(r.printed.encode()))})"
    return "  (it printed output: remove debug prints)"


def format_table(results: list[Result], seed: int) -> str:
    width = max([len(r.key) for r in results] + [8])
    sources = ", ".join(dict.fromkeys(r.source for r in results if r.source))
    lines = [f"Grading {sources or 'nothing'}", "",
             f"{'exercise':<{width}}  points  result", f"{'-' * width}  ------  {'-' * 22}"]
    for r in results:
        tag = " (stretch)" if r.stretch else ""
        lines.append(f"{r.key:<{width}}  {r.points:>2}/{r.max_points:<3}  {STATUS_TEXT[r.status]}{tag}"
                     f"{_printed_note(r)}")
    earned, total = sum(r.points for r in results), sum(r.max_points for r in results)
    core = [r for r in results if not r.stretch]
    stretch = [r for r in results if r.stretch]
    summary = f"({sum(r.passed for r in results)} of {len(results)} exercises passed"
    if stretch:
        summary += (f"; core {sum(r.points for r in core)}/{sum(r.max_points for r in core)}, "
                    f"stretch {sum(r.points for r in stretch)}/{sum(r.max_points for r in stretch)}")
    lines += [f"{'-' * width}  ------", f"{'total':<{width}}  {earned:>2}/{total:<3}  {summary})"]
    problems = [r for r in results if r.status not in ("pass", "todo")]
    if problems:
        lines += ["", "What went wrong, and a first hint (check() in the notebook gives more on each retry):"]
        for r in problems:
            lines.append(f"  {r.key} ({r.source}): {STATUS_TEXT[r.status]}")
            lines.append(_indent(r.message))
            if r.hint:
                lines.append(_indent(f"hint: {r.hint}"))
    todo = [r for r in results if r.status == "todo"]
    if todo and problems:
        lines += ["", f"{len(todo)} exercise(s) not started yet: {', '.join(r.key for r in todo)}"]
    lines += ["", f"random inputs from seed {seed} (repeat them with --seed {seed})"]
    return "\n".join(lines)


_FAILURES: dict[tuple[str, str], int] = {}  # (exercise, graded folder) -> failed check() calls, for the hint tiers


def check(key: str, *, solutions: bool = False, timeout: float = DEFAULT_TIMEOUT, hint: int | None = None,
          source: str | os.PathLike | None = None) -> None:
    """Grade one exercise (``"ex01.contiguous_strides"``) and print a friendly verdict.

    Meant for a notebook cell. The grading runs your code in a child process, so save your
    edits to the exercise file and run the cell again; no kernel restart is needed. The
    first failure shows the first hint, each further failure the next one; ``hint=2`` asks
    for hint 2 now.
    """
    ex = registry.get(key)
    [r], seed = grade([key], solutions=solutions, timeout=timeout, source=source)
    counter = (key, str(source or ("solutions" if solutions else "exercises")))
    where = r.source or "your exercise file"
    shown_hint = None
    if r.status == "pass":
        after = " A stretch exercise: few get this far." if ex.stretch else \
            " Compare with the course's version in the next cells."
        print(f"[PASS] {r.key}: {r.points}/{r.max_points} points. Well done!{after}")
        _FAILURES.pop(counter, None)
    elif r.status == "todo":
        print(f"[TODO] {r.key}: not implemented yet. Write `{ex.function}` in {where}, save, and run this cell "
              f"again.")
    else:
        _FAILURES[counter] = _FAILURES.get(counter, 0) + 1
        print(f"[FAIL] {r.key}: {STATUS_TEXT[r.status]} (0/{r.max_points} points)")
        print(_indent(r.message, "  "))
        shown_hint = _FAILURES[counter] if hint is None else hint
        print(f"  (random inputs from seed {seed}; `python -m course_lib.grade {r.key} --seed {seed}` repeats them)")
    if hint is not None and shown_hint is None:
        shown_hint = hint
    if shown_hint is not None and ex.hints:
        n = min(max(int(shown_hint), 1), len(ex.hints))
        print(f"  hint {n} of {len(ex.hints)}: {ex.hint_tier(n)}")
        if n < len(ex.hints):
            print(f"  (a further failure shows hint {n + 1}; check({key!r}, hint={n + 1}) shows it now)")
    if r.printed_bytes or r.printed.strip():
        shown = r.printed.strip().splitlines() or [""]
        print(f"  note: your code printed {_size(r.printed_bytes) if r.printed_bytes else 'output'}, e.g. "
              f"{shown[0][:80]!r}; graded functions should return values, not print them.")


def reveal(key: str) -> None:
    """Print the course's own version of exercise ``key`` (its ``reference``), to compare with yours.

    Notebooks call it in the cell *below* the exercise's ``check()`` cell, never above it.
    """
    import importlib
    import inspect

    ex = registry.get(key)
    if not ex.reference:
        print(f"{key} has no reference in course_lib to show.")
        return
    for dotted in ex.reference:
        module_name, _, attr = dotted.rpartition(".")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        print(f"# The course's version: {dotted} (compare it with yours)")
        print(inspect.getsource(obj))
