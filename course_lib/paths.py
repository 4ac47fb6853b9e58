"""Where the course lives on disk: the folder holding `exercises/`, `solutions/` and `notebooks/`."""

from __future__ import annotations

import os
from pathlib import Path


def course_root() -> Path:
    """The course folder.

    Found, in order, from ``$COURSE_ROOT``, from the folder above the installed
    ``course_lib`` package (an editable install, as ``make`` does), or from the current
    directory and its parents (a notebook runs in ``notebooks/``).
    """
    env = os.environ.get("COURSE_ROOT")
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "exercises").is_dir():
            raise FileNotFoundError(f"COURSE_ROOT={env} has no exercises/ folder; unset it or point it at the course folder")
        return root
    beside_package = Path(__file__).resolve().parent.parent
    if (beside_package / "exercises").is_dir():
        return beside_package
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "exercises").is_dir() and (folder / "notebooks").is_dir():
            return folder
    raise FileNotFoundError(
        "cannot find the course folder (the one with exercises/ and notebooks/): run from inside it, "
        "or set COURSE_ROOT=/path/to/the/course"
    )
