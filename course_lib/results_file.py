"""Checking the layout of a shipped results file (a ``results.json`` that a chapter reads).

A measuring module (:mod:`course_lib.fine_tuning`, :mod:`course_lib.vision_training`) writes its
numbers to a results file, and its ``check_results`` walks the file with a :class:`ResultsLayout`
before anything reads it::

    layout = ResultsLayout("python -m course_lib.vision_training")
    threads = layout.key(results["environment"], "threads", "environment", int)

Each error is a :class:`ResultsError` that names the file, the path of the key ("table[2].test"),
what was expected and what was found, and the command that measures the file again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class ResultsError(ValueError):
    """A results file does not have its documented layout; the message names the key and the command to rerun."""


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(getattr(k, "__name__", str(k)) for k in kinds)


@dataclasses.dataclass(frozen=True)
class ResultsLayout:
    """The checks for one results file: ``command`` writes it again, ``name`` is how messages call it."""

    command: str  # e.g. "python -m course_lib.fine_tuning"
    name: str = "results.json"

    def value(self, value: Any, path: str, kind, what: str = "") -> Any:
        """``value`` (found at ``path``) if it is a ``kind``, else a ResultsError; ``what`` describes ``kind``
        in the message. ``float`` means a finite int or float, ``int`` an int; neither accepts a bool."""
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ResultsError(f"{self.name}: {path} should be {what or _kind_name(kind)}, got "
                               f"{type(value).__name__} {str(value)[:60]!r}; rerun `{self.command}`")
        return value

    def key(self, obj: Any, key: str, path: str, kind=dict, what: str = "") -> Any:
        """``obj[key]`` (``obj`` found at ``path``), checked with :meth:`value`; a ResultsError when ``obj`` is
        not an object or has no ``key``."""
        if not isinstance(obj, dict):
            raise ResultsError(f"{self.name}: {path} should be an object with the key {key!r}, got "
                               f"{type(obj).__name__}; rerun `{self.command}`")
        if key not in obj:
            raise ResultsError(f"{self.name}: {path} has no key {key!r} (it has {sorted(obj)}); "
                               f"rerun `{self.command}`")
        return self.value(obj[key], f"{path}.{key}", kind, what)

    def fraction(self, obj: Any, key: str, path: str) -> float:
        """``obj[key]`` as :meth:`key` with ``float``, and in [0, 1] (an accuracy, a ratio)."""
        value = self.key(obj, key, path, float)
        if not 0.0 <= value <= 1.0:
            raise ResultsError(f"{self.name}: {path}.{key} = {value} is not in [0, 1]; rerun `{self.command}`")
        return value
