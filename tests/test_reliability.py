"""The reliability table: every bad input in ``tests/reliability/cases_*.py`` gives its clear error.

One test per case id (``pytest tests/test_reliability.py -k cli-`` runs one area's): the case's
``run(tmp_path)`` must raise ``case.raises`` (or warn ``case.warns``) and the message must
contain each of ``case.words`` (case-insensitive). For a command-line case that exits
(``SystemExit``), the status must be non-zero and the words must be in what it printed.
A change that turns a clear error back into a traceback from deep inside torch, or drops the
fix from a message, fails here. The README's "Errors you may see" is generated from the
cases marked ``readme=True``; a test below fails when it is out of date.
"""

from __future__ import annotations

import pytest

from reliability import Case
from reliability.readme import BEGIN, END, README, REGENERATE, load_cases, readme_section, section

CASES, PROBLEMS = load_cases()


def missing_words(case, message: str) -> list[str]:
    return [word for word in case.words if word.lower() not in message.lower()]


def check(case, tmp_path, capfd) -> None:
    """Run one case and fail (``pytest.fail``) unless it gives the error or warning it promises."""
    if case.warns is not None:
        with pytest.warns(case.warns) as record:
            case.run(tmp_path)
        messages = [str(w.message) for w in record if issubclass(w.category, case.warns)]
        if not any(not missing_words(case, message) for message in messages):
            pytest.fail(f"{case.id}: no {case.warns.__name__} names all of {case.words}; it said:\n"
                        + "\n".join(messages), pytrace=False)
        return
    capfd.readouterr()  # what came before the case is not its output
    with pytest.raises(case.raises) as info:
        case.run(tmp_path)
    err = info.value
    if isinstance(err, SystemExit):
        if err.code in (0, None):
            pytest.fail(f"{case.id}: exited with status 0 (success) on bad input", pytrace=False)
        out, errout = capfd.readouterr()
        message = out + errout + (err.code if isinstance(err.code, str) else "")
        what = "printed"
    else:
        message = str(err)
        what = f"said ({type(err).__name__})"
    missing = missing_words(case, message)
    if missing:
        pytest.fail(f"{case.id}: the message lacks {missing}; it {what}:\n{message}", pytrace=False)


def test_the_case_modules_are_well_formed():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert len(CASES) >= 5, "the reliability table lost its cases: tests/reliability/cases_*.py"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(case, tmp_path, capfd):
    check(case, tmp_path, capfd)


def test_the_readme_lists_the_errors_you_may_see():
    text = README.read_text(encoding="utf-8")
    current = readme_section(text)
    assert current is not None, f"README.md lost its {BEGIN} / {END} markers ('Errors you may see')"
    assert current == section(CASES), (f"README.md's 'Errors you may see' differs from the reliability cases "
                                       f"marked readme=True: run `{REGENERATE}` and commit README.md")
    assert "| what you did |" in current  # at least one case is shown


# ------------------------------------------------------------------ the checker has teeth

def _fails(case, tmp_path, capfd) -> str:
    with pytest.raises(pytest.fail.Exception) as failed:
        check(case, tmp_path, capfd)
    return str(failed.value)


def _raise(err):
    def run(tmp_path):
        raise err
    return run


def _exit_printing(text: str, code):
    def run(tmp_path):
        print(text)
        raise SystemExit(code)
    return run


def _warn(message: str):
    def run(tmp_path):
        import warnings

        warnings.warn(message, UserWarning)
    return run


def test_a_clear_error_passes_and_a_vague_one_fails(tmp_path, capfd):
    clear = Case("t-clear", "t", _raise(ValueError("Bad Dtype in model.safetensors: use float32")), ValueError,
                 ("bad dtype", "model.safetensors", "float32"))
    check(clear, tmp_path, capfd)
    vague = Case("t-vague", "t", _raise(ValueError("bad dtype")), ValueError, ("bad dtype", "model.safetensors"))
    assert "lacks ['model.safetensors']" in _fails(vague, tmp_path, capfd)


def test_nothing_raised_or_the_wrong_type_fails(tmp_path, capfd):
    quiet = Case("t-quiet", "t", lambda tmp_path: None, ValueError, ("x",))
    assert "DID NOT RAISE" in _fails(quiet, tmp_path, capfd)
    wrong = Case("t-wrong", "t", _raise(IndexError("index out of range in self")), ValueError, ("index",))
    with pytest.raises(IndexError):  # a traceback from deep inside torch is not the promised error
        check(wrong, tmp_path, capfd)


def test_a_command_line_case_reads_what_it_printed(tmp_path, capfd):
    printed = Case("t-cli", "t", _exit_printing("error: no folder 'x': check the path", 1), SystemExit,
                   ("no folder", "check the path"))
    check(printed, tmp_path, capfd)
    lacking = Case("t-cli-vague", "t", _exit_printing("error: failed", 1), SystemExit, ("check the path",))
    assert "error: failed" in _fails(lacking, tmp_path, capfd)
    success = Case("t-cli-ok", "t", _exit_printing("check the path", 0), SystemExit, ("check the path",))
    assert "status 0" in _fails(success, tmp_path, capfd)


def test_a_warning_case_needs_one_warning_with_every_word(tmp_path, capfd):
    warned = Case("t-warn", "t", _warn("strict=False: 2 missing keys, 1 unexpected"), None,
                  ("strict=false", "missing"), warns=UserWarning)
    check(warned, tmp_path, capfd)
    vague = Case("t-warn-vague", "t", _warn("something is off"), None, ("missing",), warns=UserWarning)
    assert "something is off" in _fails(vague, tmp_path, capfd)
    silent = Case("t-warn-none", "t", lambda tmp_path: None, None, ("missing",), warns=UserWarning)
    assert "DID NOT WARN" in _fails(silent, tmp_path, capfd)


def test_broken_case_modules_are_reported(tmp_path, monkeypatch):
    import reliability.readme as table

    (tmp_path / "cases_a.py").write_text("from reliability import Case\n"
                                         "CASES = [Case('dup', 'a', lambda p: None, ValueError, ('x',))]\n")
    (tmp_path / "cases_b.py").write_text("from reliability import Case\n"
                                         "CASES = [Case('dup', 'b', lambda p: None, ValueError, ('x',))]\n")
    (tmp_path / "cases_c.py").write_text("CASE = []  # misspelt\n")
    monkeypatch.setattr(table, "HERE", tmp_path)
    monkeypatch.setattr(table, "import_case_module", _import)
    cases, problems = table.load_cases()
    assert [c.id for c in cases] == ["dup"]
    assert any("duplicate case id 'dup'" in p and "cases_a.py" in p and "cases_b.py" in p for p in problems)
    assert any("cases_c.py has no CASES" in p for p in problems)


def _import(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_reliability_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
