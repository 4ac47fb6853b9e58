"""Runs inside a child process: grades exercises one by one and reports each as a JSON line.

The parent (:mod:`course_lib.grading.runner`) starts this as
``python -m course_lib.grading.worker RESULTS SOURCE SEED KEY...`` and watches ``RESULTS``.
Running in a child keeps the grader alive whatever the learner's code does: raise, print,
call ``sys.exit``, hang (the parent kills us) or crash the interpreter (the parent notices).

Events written to RESULTS, one JSON object per line:
``{"event": "ready"}`` once the checks and the learner's file are imported,
``{"event": "start", "key": K}`` before each exercise,
``{"event": "result", "key": K, "status": ..., "message": ..., "printed": ...}`` after it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import traceback
import zlib
from pathlib import Path

STATUS_PASS, STATUS_FAIL, STATUS_TODO, STATUS_ERROR = "pass", "fail", "todo", "error"


def _emit(out, **event) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()
    os.fsync(out.fileno())


def _learner_traceback(err: BaseException, source: Path) -> str:
    """The last frames of a traceback that are in the learner's file, or the last frame."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == source.resolve()]
    shown = mine[-1:] or frames[-1:]
    where = "".join(f"  {Path(f.filename).name}, line {f.lineno}, in {f.name}: {f.line}\n" for f in shown)
    return f"{type(err).__name__}: {err}\n{where}".rstrip()


def _import_learner_module(source: Path):
    name = f"_learner_{source.stem}"
    spec = importlib.util.spec_from_file_location(name, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rng_for(seed: int, key: str):
    """The random generator a check gets: depends on the run's seed and the exercise only."""
    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def main(argv: list[str]) -> int:
    results_path, source, seed, keys = argv[0], Path(argv[1]), int(argv[2]), argv[3:]
    from course_lib.grading import registry

    with open(results_path, "a", encoding="utf-8") as out:
        exercises = [registry.get(key) for key in keys]
        learner, import_problem, printed = None, None, ""
        capture = io.StringIO()
        try:
            with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture):
                learner = _import_learner_module(source)
        except BaseException as err:  # SyntaxError, SystemExit, anything at import time
            import_problem = f"your file {source.name} failed to import:\n{_learner_traceback(err, source)}"
        printed = capture.getvalue()
        _emit(out, event="ready")

        for ex in exercises:
            _emit(out, event="start", key=ex.key)
            capture = io.StringIO()
            if import_problem:
                status, message = STATUS_ERROR, import_problem
            elif not callable(getattr(learner, ex.function, None)):
                status, message = STATUS_ERROR, f"{source.name} has no function named {ex.function}()"
            else:
                fn = getattr(learner, ex.function)
                try:
                    with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture):
                        ex.grade(fn, rng_for(seed, ex.key))
                    status, message = STATUS_PASS, ""
                except NotImplementedError:
                    status, message = STATUS_TODO, "not implemented yet"
                except registry.GradeError as err:
                    status, message = STATUS_FAIL, str(err)
                except SystemExit as err:
                    status, message = STATUS_ERROR, f"your code called sys.exit({err.code!r}); return a value instead"
                except BaseException as err:
                    status, message = STATUS_ERROR, _learner_traceback(err, source)
            _emit(out, event="result", key=ex.key, status=status, message=message,
                  printed=(printed + capture.getvalue())[-2000:])
            printed = ""
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
