"""Grade the exercises from a terminal.

    python -m course_lib.grade                  # every chapter, your exercises/
    python -m course_lib.grade ex01             # one chapter
    python -m course_lib.grade ex01.matmul_loops ex02
    python -m course_lib.grade --solutions --expect full   # maintainers: the grader has teeth
    python -m course_lib.grade --expect zero                # ... and untouched stubs score zero

Exit status: 0, or 1 when ``--expect`` is given and not met, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from course_lib.grading.runner import DEFAULT_TIMEOUT, format_table, grade, resolve_targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grade", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="chapters (ex01) or exercises (ex01.name); default: all")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--solutions", action="store_true", help="grade solutions/ instead of exercises/")
    group.add_argument("--source", metavar="DIR", help="grade the exNN_*.py files in DIR")
    parser.add_argument("--expect", choices=["full", "zero"],
                        help="exit 1 unless every exercise scores full marks / every exercise scores zero")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds allowed per exercise (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--seed", type=int, help="seed for the random inputs (default: a new one each run)")
    parser.add_argument("--memory-gb", type=float, metavar="GB",
                        help="memory limit of the process that runs your code (default: $COURSE_GRADER_MEMORY_GB "
                             "or 4; 0 = none; enforced on Linux)")
    parser.add_argument("--list", action="store_true", help="list the exercises and their points, grade nothing")
    args = parser.parse_args(argv)

    try:
        if args.list:
            for ex in resolve_targets(args.targets):
                print(f"{ex.key:<40} {ex.points} point(s)")
            return 0
        results, seed = grade(args.targets, solutions=args.solutions, source=args.source,
                              timeout=args.timeout, seed=args.seed, memory_gb=args.memory_gb)
    except (KeyError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    print(format_table(results, seed))
    earned, total = sum(r.points for r in results), sum(r.max_points for r in results)
    if args.expect == "full" and earned != total:
        print(f"\nEXPECTED FULL MARKS, got {earned}/{total}", file=sys.stderr)
        return 1
    if args.expect == "zero":
        if earned != 0:
            print(f"\nEXPECTED ZERO for untouched stubs, got {earned}/{total}: a check passes without the "
                  "learner's code, or a stub is not a stub", file=sys.stderr)
            return 1
        not_todo = [r.key for r in results if r.status != "todo"]
        if not_todo:
            print(f"\nEXPECTED every stub to report 'not implemented yet', but these did not: {not_todo}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
