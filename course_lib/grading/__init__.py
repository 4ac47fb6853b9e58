"""Graded exercises: the registry of checks (one module per chapter, ``exNN.py``) and the runner.

Learners use :func:`check` in a notebook, or ``python -m course_lib.grade`` in a terminal.
"""

from course_lib.grading.registry import GradeError, exercise, expect_close, expect_equal
from course_lib.grading.runner import Result, check, format_table, grade, reveal

__all__ = ["GradeError", "Result", "check", "exercise", "expect_close", "expect_equal", "format_table", "grade", "reveal"]
