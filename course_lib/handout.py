"""Write a learner hand-out: the course without ``solutions/``.

    python -m course_lib.handout DEST        # or: make handout DEST=...

Copies the course's tracked files (``git ls-files`` when the course is a git checkout,
otherwise every file except virtual environments, caches and version control) into
``DEST``, leaving out ``solutions/`` and the README's maintainers' notes. The hand-out still
installs with ``make lab``, and ``make test`` passes there whatever the learner has solved:
the maintainers' checks (solutions full, stubs zero, exercises = generated stubs) skip
themselves, and the grader shows the learner's table without expecting a score.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from course_lib.paths import course_root

LEFT_OUT_DIRS = {"solutions", "node_modules", ".git", ".venv", "venv", "__pycache__", ".ipynb_checkpoints", ".pytest_cache",
                 ".hypothesis", "build"}


def _course_files(root: Path) -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
        files = [Path(p) for p in listed.decode().split("\0") if p]
        if files:
            return [f for f in files if (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and not (set(p.relative_to(root).parts) & LEFT_OUT_DIRS)
            and not p.name.endswith(".egg-info")]


MAINTAINERS_ONLY = re.compile(r"\n?<!-- maintainers -->.*?<!-- /maintainers -->\n?", re.S)


def learner_readme(text: str) -> str:
    """The README without its maintainers' notes (``<!-- maintainers -->`` blocks): a hand-out
    has no solutions/, and its README must not send learners looking for them."""
    return MAINTAINERS_ONLY.sub("\n", text)


def write_handout(dest: Path, root: Path | None = None) -> list[Path]:
    """Copy the course minus solutions/ into ``dest`` (which must not exist or be empty, and not be a file)."""
    root = root or course_root()
    given = Path(dest).expanduser()
    if given.exists() and not given.is_dir():
        raise NotADirectoryError(f"{given} is a file, not a folder; nothing was written. Pass a new folder for the "
                                 f"hand-out (e.g. {given.parent / 'handout'})")
    if os.path.lexists(given) and not given.exists():
        raise NotADirectoryError(f"{given} is a symbolic link to nothing (a broken link or a link loop); nothing "
                                 f"was written. Pass a new folder for the hand-out")
    dest = given.resolve()
    blocking = next((p for p in dest.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"cannot make {dest}: {blocking} is a file, not a folder; nothing was written")
    if dest == root or root in dest.parents:
        raise ValueError(f"write the hand-out outside the course folder, not into {dest}")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty: choose a new folder, nothing was written")
    copied = []
    for rel in _course_files(root):
        if rel.parts[0] in LEFT_OUT_DIRS or set(rel.parts) & {"__pycache__"}:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
        if rel == Path("README.md"):
            target.write_text(learner_readme((root / rel).read_text(encoding="utf-8")), encoding="utf-8")
            shutil.copystat(root / rel, target)
        copied.append(rel)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.handout",
                                     description=__doc__.split("\n")[0].replace("``", ""))  # no RST markup
    parser.add_argument("dest", type=Path, help="a new folder for the learner copy")
    args = parser.parse_args(argv)
    try:
        copied = write_handout(args.dest)
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(copied)} files to {args.dest.resolve()} (no solutions/). "
          "Learners run `make lab` there; zip it for a USB stick: "
          f"(cd {args.dest.resolve().parent} && zip -qr {args.dest.name}.zip {args.dest.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
