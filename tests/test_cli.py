"""``python -m course_lib generate [MODEL] PROMPT``: streams text, defaults to the tiny GPT-2, clear errors."""

from __future__ import annotations

import subprocess
import sys
from unittest import mock

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
    assert exit_.value.code == 2 and "one prompt per call, quoted" in capsys.readouterr().err


def test_the_usage_line_is_what_works(capsys):
    """The usage once read ``[MODEL] PROMPT [[MODEL] PROMPT ...]``, as if several prompts were allowed."""
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    out = capsys.readouterr().out
    usage = " ".join(out.split("\n\n")[0].split())
    assert exit_.value.code == 0 and usage.endswith("[--threads N] [MODEL] PROMPT") and "[[MODEL]" not in out
    assert "One prompt per call" in out
    # options may come before, between or after the two words
    for argv in (["tiny-gpt2", "Hello", "--max-new-tokens", "4"], ["tiny-gpt2", "--max-new-tokens", "4", "Hello"],
                 ["--max-new-tokens", "4", "tiny-gpt2", "Hello"], ["Hello", "--max-new-tokens", "4"]):
        assert main(["generate", *argv]) == 0, argv
        outputs = capsys.readouterr().out
        assert outputs.startswith("Hello") and len(outputs) > len("Hello\n")


def test_two_prompts_say_to_quote_one(capsys, hf_home):
    assert main(["generate", "Once", "upon a time", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'Once'" in err and err.count("\n") == 1
    assert 'quote the whole prompt: python -m course_lib generate "Once upon a time"' in err


def test_a_folder_that_exists_gets_no_quoting_hint(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert main(["generate", str(tmp_path), "Hello"]) == 1
    assert "quote the whole prompt" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, code, words", [
    (["Hello", "--seed", str(2 ** 70)], 1, "error: seed=1180591620717411303424 is outside"),
    (["Hello", "--max-new-tokens", "-1"], 1, "error: max_new_tokens must be >= 0, got -1"),
    (["Hello", "--temperature", "nan"], 1, "error: temperature must be a finite number"),
    (["Hello", "--top-k", "0"], 1, "error: top_k must be at least 1"),
    (["Hello", "--threads", "0"], 2, "argument --threads: must be at least 1"),
    (["Hello", "--max-new-tokens", "2.5"], 2, "argument --max-new-tokens: invalid int value: '2.5'"),
    (["Hello", "--bogus"], 2, "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_line_before_any_loading(capsys, argv, code, words):
    import course_lib.__main__ as cli

    with mock.patch.object(cli, "_load", side_effect=AssertionError("loaded a model for bad options")):
        if code == 2:
            with pytest.raises(SystemExit) as exit_:
                main(["generate", *argv])
            assert exit_.value.code == 2
        else:
            assert main(["generate", *argv]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_an_unexpected_error_is_one_line_and_ctrl_c_is_quiet(capsys):
    import course_lib.__main__ as cli

    with mock.patch.object(cli, "_generate", side_effect=RuntimeError("deep inside torch")):
        assert main(["generate", "Hello"]) == 1
    assert capsys.readouterr().err == "error: RuntimeError: deep inside torch\n"
    with mock.patch.object(cli, "_generate", side_effect=KeyboardInterrupt):
        assert main(["generate", "Hello"]) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_runs_as_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "course_lib", "generate", "The", "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The")
