"""Helpers several test modules share (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import torch

from course_lib.grading import registry
from course_lib.paths import course_root

COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------------ exercises and grading

def load_exercise_module(folder: str, filename: str):
    """``exercises/<filename>`` or ``solutions/<filename>`` imported as a fresh module."""
    path = course_root() / folder / filename
    spec = importlib.util.spec_from_file_location(f"{Path(filename).stem}_{folder}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chapter_checks(chapter: str) -> dict:
    """{function name: its registered check} for chapter ``exNN``."""
    return {ex.function: ex for ex in registry.load_chapter(chapter)}


def assert_checks_leave_the_global_rng_alone(chapter: str, filename: str, functions: dict) -> None:
    """Grading every exercise of ``chapter`` must not move torch's global random generator: a check cell
    in a notebook must not change the random numbers of the cells after it. ``functions``: {name: a
    function to grade} used where there are no solutions (a learner hand-out)."""
    import numpy as np

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    solutions = load_exercise_module("solutions", filename) if have_solutions(filename) else None
    checks = chapter_checks(chapter)
    for name, fn in functions.items():
        try:
            checks[name].grade(getattr(solutions, name) if solutions else fn, np.random.default_rng(0))
        except registry.GradeError:
            pass
    assert torch.equal(torch.rand(3), expected)


def unresolved_switched_off_names(grading_module) -> list[str]:
    """The names a chapter's grading switches off (``SHORTCUTS`` + ``ANSWER_KEY``) that this torch or
    course_lib does not have: a misspelt one would silently stay switched on."""
    from course_lib.grading.child import resolve_owner

    names = tuple(getattr(grading_module, "SHORTCUTS", ())) + tuple(getattr(grading_module, "ANSWER_KEY", ()))
    return [name for name in names if resolve_owner(name) is None]


def have_solutions(*filenames: str) -> bool:
    """False in a learner hand-out (no solutions/)."""
    return all((course_root() / "solutions" / f).exists() for f in filenames)


# ------------------------------------------------------------------ the Hugging Face Hub cache

def fake_hub_snapshot(hub_cache: Path, repo_id: str, files: dict[str, str | bytes] | None = None,
                      refs: tuple[str, ...] = ("main",), commit: str = COMMIT) -> Path:
    """The Hub cache layout, models--org--name/{refs/<ref>, snapshots/<commit>/<files>} (blobs skipped);
    returns the snapshot folder."""
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (snapshot / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


# ------------------------------------------------------------------ models

def assert_close(what: str, ours: torch.Tensor, reference: torch.Tensor, tol: float = 1e-4) -> float:
    """max |ours - reference| <= tol (shapes equal); prints it (``pytest -s``) and returns it."""
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}"
    delta = (ours.double() - reference.double()).abs().max().item()
    print(f"\n  max|Δ| {what}: {delta:.2e}")
    assert delta <= tol, f"{what}: max |Δ| = {delta:.3e} > {tol:.0e}"
    return delta


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter random (tied ones once): LayerNorm scales around 1, everything else around 0,
    so a weight loaded into the wrong place shows. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = name.endswith(("LayerNorm.weight", "layer_norm.weight")) or ".ln_" in f".{name}"
            p.copy_(1 + 0.1 * noise if is_norm_scale and name.endswith("weight") else scale * noise)
    return model.eval()


# ------------------------------------------------------------------ grading cases

def assert_wrong_answer_fails(chapter: str, name: str, label: str, fn, seed: int) -> None:
    """``fn``, a typical wrong answer to exercise ``chapter.name``, must fail its check.

    Labels ending in "(raises)" are wrong answers that raise; then the exception must be a
    ``GradeError`` or come from the wrong answer itself (a file under tests/), never from a
    bug in the check.
    """
    import numpy as np
    import pytest

    from course_lib.grading.registry import GradeError

    check = chapter_checks(chapter)[name]
    if not label.endswith("(raises)"):
        with pytest.raises(GradeError):
            check.grade(fn, np.random.default_rng(seed))
        return
    with pytest.raises(Exception) as info:
        check.grade(fn, np.random.default_rng(seed))
    assert isinstance(info.value, GradeError) or _raised_in_tests(info.value), \
        f"the check itself failed: {info.value!r}"


def _raised_in_tests(err: BaseException) -> bool:
    here = Path(__file__).resolve().parent
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if Path(code.co_filename).resolve().parent == here and code.co_name != "assert_wrong_answer_fails":
            return True
        tb = tb.tb_next
    return False


# ------------------------------------------------------------------ answers shown or hinted

def plain_value(value: ast.AST) -> bool:
    """A name, a constant or an attribute of one (``config.hidden_size``): no computation."""
    while isinstance(value, ast.Attribute):
        value = value.value
    return isinstance(value, (ast.Name, ast.Constant))


def trivial_statement(node: ast.stmt) -> bool:
    """Boilerplate that says nothing about how to compute the answer: ``return q, scale``,
    ``C = config.hidden_size``, ``super().__init__()``."""
    if isinstance(node, ast.Return):
        if node.value is None:
            return True
        parts = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        return all(isinstance(p, ast.Name) for p in parts)
    if isinstance(node, ast.Assign):
        return plain_value(node.value)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) and \
            isinstance(func.value.func, ast.Name) and func.value.func.id == "super"
    return False
