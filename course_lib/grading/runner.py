"""Grade exercises in child processes and report points, verdicts and hints.

:func:`grade` is what ``python -m course_lib.grade`` and :func:`check` (the notebook's
one-exercise call) both use. Each chapter's exercises run in a child Python process
(:mod:`course_lib.grading.worker`), so an edited exercise file is always re-read, and a
learner's function that hangs, exits or crashes the interpreter costs that one exercise,
not the grader: the child is killed or found dead, and a fresh one grades the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course_lib.grading import registry
from course_lib.paths import course_root

DEFAULT_TIMEOUT = 20.0  # seconds for one exercise
STARTUP_TIMEOUT = 60.0  # seconds for a child to import numpy/torch, the checks and the learner's file

STATUS_TEXT = {
    "pass": "passed",
    "fail": "wrong answer",
    "todo": "not implemented yet",
    "error": "raised an error",
    "timeout": "timed out",
    "crash": "crashed the interpreter",
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

    @property
    def passed(self) -> bool:
        return self.status == "pass"


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


def _read_events(path: Path, seen: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    events = []
    for line in lines[seen:]:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a half-written last line; read it next time
            break
    return events


def _grade_in_children(exercises: list[registry.Exercise], source: Path, seed: int,
                       timeout: float, relative: str) -> list[Result]:
    """Grade one chapter's exercises from one source file, restarting the child as needed."""
    results: dict[str, Result] = {}
    pending = list(exercises)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The child must import the same course_lib as we do, even from a plain checkout.
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    while pending:
        with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
            events_path = Path(tmp) / "events.jsonl"
            events_path.touch()
            stderr_path = Path(tmp) / "stderr.txt"
            with open(stderr_path, "wb") as stderr:
                child = subprocess.Popen(
                    [sys.executable, "-m", "course_lib.grading.worker", str(events_path), str(source),
                     str(seed), *[ex.key for ex in pending]],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                    cwd=str(source.parent),
                )
                seen, running, ready = 0, None, False
                deadline = time.monotonic() + STARTUP_TIMEOUT
                while True:
                    events = _read_events(events_path, seen)
                    seen += len(events)
                    for event in events:
                        if event["event"] == "ready":
                            ready = True
                        elif event["event"] == "start":
                            running = registry.get(event["key"])
                            deadline = time.monotonic() + (running.timeout or timeout)
                        elif event["event"] == "result":
                            ex = registry.get(event["key"])
                            results[ex.key] = Result(
                                ex.key, event["status"], ex.points if event["status"] == "pass" else 0,
                                ex.points, event["message"], "" if event["status"] == "pass" else ex.hint,
                                event["printed"], relative)
                            pending = [p for p in pending if p.key != ex.key]
                            running = None
                    if not pending:
                        child.wait()
                        break
                    code = child.poll()
                    if code is not None and not _read_events(events_path, seen):
                        victim = running or pending[0]
                        err = stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
                        message = (f"the grading process died with exit code {code} while running your "
                                   f"code (os._exit, a segfault, or running out of memory?)")
                        if not ready:
                            message = "the grader could not start: " + " | ".join(err)
                        results[victim.key] = Result(victim.key, "crash", 0, victim.points, message,
                                                     victim.hint, "", relative)
                        pending = [p for p in pending if p.key != victim.key]
                        break
                    if time.monotonic() > deadline:
                        child.kill()
                        child.wait()
                        victim = running or pending[0]
                        limit = (victim.timeout or timeout) if running else STARTUP_TIMEOUT
                        what = "your function" if running else "importing your file"
                        results[victim.key] = Result(
                            victim.key, "timeout", 0, victim.points,
                            f"{what} did not finish within {limit:g} s (an endless loop? a very slow one?)",
                            victim.hint, "", relative)
                        pending = [p for p in pending if p.key != victim.key]
                        break
                    time.sleep(0.02)
    return [results[ex.key] for ex in exercises]


def grade(targets: list[str] | None = None, *, solutions: bool = False,
          source: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT,
          seed: int | None = None) -> tuple[list[Result], int]:
    """Grade ``targets`` ("ex01", "ex01.name"; None = all) and return (results, seed used).

    ``solutions=True`` grades ``solutions/`` instead of ``exercises/``; ``source`` grades
    any folder of ``exNN_*.py`` files. ``seed`` fixes the random inputs (default: new ones).
    """
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    folder = _source_folder(solutions, source)
    exercises = resolve_targets(targets)
    try:
        root = course_root()
    except FileNotFoundError:
        root = folder.parent
    results: list[Result] = []
    for chapter in dict.fromkeys(ex.chapter for ex in exercises):
        in_chapter = [ex for ex in exercises if ex.chapter == chapter]
        path = chapter_file(chapter, folder)
        if path is None:
            results += [Result(ex.key, "missing", 0, ex.points, f"no {chapter}_*.py in {folder}", ex.hint)
                        for ex in in_chapter]
            continue
        try:
            relative = str(path.relative_to(root))
        except ValueError:  # a folder outside the course: its name is enough to tell which
            relative = f"{path.parent.name}/{path.name}"
        results += _grade_in_children(in_chapter, path, seed, timeout, relative)
    return results, seed


# --------------------------------------------------------------------------------------
# Presentation

def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def format_table(results: list[Result], seed: int) -> str:
    width = max([len(r.key) for r in results] + [8])
    sources = ", ".join(dict.fromkeys(r.source for r in results if r.source))
    lines = [f"Grading {sources or 'nothing'}", "",
             f"{'exercise':<{width}}  points  result", f"{'-' * width}  ------  {'-' * 22}"]
    for r in results:
        note = "  (it printed output: remove debug prints)" if r.printed.strip() else ""
        lines.append(f"{r.key:<{width}}  {r.points:>2}/{r.max_points:<3}  {STATUS_TEXT[r.status]}{note}")
    earned, total = sum(r.points for r in results), sum(r.max_points for r in results)
    lines += [f"{'-' * width}  ------", f"{'total':<{width}}  {earned:>2}/{total:<3}  "
              f"({sum(r.passed for r in results)} of {len(results)} exercises passed)"]
    problems = [r for r in results if r.status not in ("pass", "todo")]
    if problems:
        lines += ["", "What went wrong, and hints:"]
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


def check(key: str, *, solutions: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Grade one exercise (``"ex01.contiguous_strides"``) and print a friendly verdict.

    Meant for a notebook cell. The grading runs in a child process, so save your edits to
    the exercise file and run the cell again; no kernel restart is needed.
    """
    [r], seed = grade([key], solutions=solutions, timeout=timeout)
    where = r.source or "your exercise file"
    if r.status == "pass":
        print(f"[PASS] {r.key}: {r.points}/{r.max_points} points. Well done!")
    elif r.status == "todo":
        print(f"[TODO] {r.key}: not implemented yet. Write `{registry.get(key).function}` in {where}, "
              f"save, and run this cell again.")
    else:
        print(f"[FAIL] {r.key}: {STATUS_TEXT[r.status]} (0/{r.max_points} points)")
        print(_indent(r.message, "  "))
        if r.hint:
            print(f"  hint: {r.hint}")
        print(f"  (random inputs from seed {seed}; `python -m course_lib.grade {r.key} --seed {seed}` repeats them)")
    if r.printed.strip():
        shown = r.printed.strip().splitlines()
        print(f"  note: your code printed {len(shown)} line(s), e.g. {shown[0][:80]!r}; "
              "graded functions should return values, not print them.")
