"""Reliability cases: bad input that must give a clear error (or a warning), never a traceback
from deep inside torch, a silently wrong result or a lost file.

Each area keeps its cases in a module of this package (``cases_*.py``) as a list ``CASES`` of
``Case``. ``tests/test_reliability.py`` runs every case; the README's "Errors you may see"
section is generated from the cases marked ``readme=True`` (a test keeps it in sync), so a
change that turns a clear error back into a bare traceback, or changes its advice, fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input and what the user must be told.

    ``run(tmp_path)``: does the bad thing in a fresh temporary folder (building whatever files
    it needs there) and returns normally only if nothing was raised. ``raises``: the exception
    type expected (a subclass matches), or ``None`` when ``warns`` names the warning category
    expected instead (and ``run`` must then finish). ``words``: case-insensitive pieces the
    message must contain (the exception's ``str()``, or the warning's, or for a CLI the
    output it printed): name the problem, the key or file, and the fix. ``problem`` and
    ``fix``: one line each for the README's "Errors you may see" (when ``readme``).
    """

    id: str
    area: str
    run: Callable[[Path], object]
    raises: type[BaseException] | tuple[type[BaseException], ...] | None
    words: tuple[str, ...]
    problem: str = ""
    fix: str = ""
    warns: type[Warning] | None = None
    readme: bool = False

    def __post_init__(self):
        if (self.raises is None) == (self.warns is None):
            raise ValueError(f"case {self.id}: give exactly one of raises= or warns=")
        if self.readme and not (self.problem and self.fix):
            raise ValueError(f"case {self.id}: a README case needs problem= and fix=")
        if not self.words:
            raise ValueError(f"case {self.id}: name at least one word the message must contain")
