"""The environment check and the instructor's hand-out command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from course_lib import doctor
from course_lib.handout import write_handout
from course_lib.paths import course_root


def test_doctor_passes_here_and_reports_every_section():
    out = subprocess.run([sys.executable, "-m", "course_lib.doctor", "--no-network"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for needle in ("[OK]   Python", "[OK]   torch", "CPU: torch", "CUDA", "MPS", "offline asset all-MiniLM-L6-v2",
                   "Jupyter kernel", "All good"):
        assert needle in out.stdout, f"doctor output lacks {needle!r}:\n{out.stdout}"


def test_doctor_fails_on_a_missing_required_package_and_says_how_to_fix(monkeypatch, capsys):
    real = doctor._installed
    monkeypatch.setattr(doctor, "_installed", lambda dist: None if dist == "safetensors" else real(dist))
    assert doctor.run(hub=False) == 1
    out = capsys.readouterr().out
    assert "[FAIL] safetensors is not installed" in out and "make setup" in out


def test_doctor_warns_but_does_not_fail_on_a_version_off_the_pins(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "read_pins", lambda: {"numpy": "0.0.1"})
    assert doctor.run(hub=False) == 0
    assert "[WARN] numpy" in capsys.readouterr().out


def test_offline_hub_is_information_not_failure(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = doctor.check_hub()
    assert all(status == doctor.INFO for status, _ in lines)
    assert any("offline mode" in text for _, text in lines)


def test_pins_are_read_from_constraints():
    pins = doctor.read_pins()
    assert pins.get("torch") == "2.13.0", "constraints.txt must pin torch==2.13.0 (the CPU wheel)"
    for name in ("numpy", "nbval", "transformers", "tokenizers"):
        assert name in pins


def test_handout_leaves_out_solutions_and_still_grades(tmp_path):
    dest = tmp_path / "learners"
    copied = write_handout(dest)
    assert copied and not (dest / "solutions").exists()
    assert all(p.parts[0] != "solutions" for p in copied)
    for needed in ("Makefile", "pyproject.toml", "constraints.txt", "README.md", "course_lib/grade.py"):
        assert (dest / needed).is_file(), f"hand-out lacks {needed}"
    assert sorted(p.name for p in (dest / "exercises").glob("ex*.py")) == \
        sorted(p.name for p in (course_root() / "exercises").glob("ex*.py"))
    env = dict(os.environ, COURSE_ROOT=str(dest))
    zero = subprocess.run([sys.executable, "-m", "course_lib.grade", "ex00", "--expect", "zero"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert zero.returncode == 0, zero.stdout + zero.stderr
    no_solutions = subprocess.run([sys.executable, "-m", "course_lib.grade", "--solutions"],
                                  capture_output=True, text=True, env=env, timeout=120)
    assert no_solutions.returncode == 2 and "no solutions/" in no_solutions.stderr


def test_handout_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        write_handout(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_handout_into_a_file_is_a_clear_error(tmp_path, capsys, where):
    from course_lib import handout

    (tmp_path / "handout.zip").write_bytes(b"precious")
    dest = tmp_path / "handout.zip" if where == "a file" else tmp_path / "handout.zip" / "course"
    with pytest.raises(NotADirectoryError, match="is a file, not a folder; nothing was written"):
        write_handout(dest)
    assert handout.main([str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "handout.zip is a file" in err and "Traceback" not in err
    assert (tmp_path / "handout.zip").read_bytes() == b"precious"


def test_handout_help_is_plain_text(capsys):
    from course_lib import handout

    with pytest.raises(SystemExit):
        handout.main(["--help"])
    assert "``" not in capsys.readouterr().out
