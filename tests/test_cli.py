"""``python -m course_lib generate [MODEL] PROMPT``: streams text, defaults to the tiny GPT-2, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from course_lib.__main__ import main


def test_generate_streams_the_prompt_and_continuation(capsys):
    assert main(["generate", "The for statement", "--max-new-tokens", "12"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("The for statement") and len(greedy) > len("The for statement\n")
    assert main(["generate", "tiny-gpt2", "The for statement", "--max-new-tokens", "12"]) == 0  # MODEL named
    assert capsys.readouterr().out == greedy


def test_sampling_options_and_seeds(capsys):
    args = ["generate", "Dictionaries", "--max-new-tokens", "15", "--top-k", "20", "--top-p", "0.9",
            "--temperature", "0.8"]
    outputs = []
    for seed in ("1", "1", "2"):
        assert main(args + ["--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != outputs[2]


def test_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["generate", str(tmp_path / "nowhere"), "hi"]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["generate", "hi", "--top-p", "1.5"]) == 1
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "tiny-gpt2", "two", "words"])
    assert exit_.value.code == 2 and "quote the prompt" in capsys.readouterr().err


def test_runs_as_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "course_lib", "generate", "The", "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The")
