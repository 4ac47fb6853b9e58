"""The exercise registry: which exercises exist, how many points each is worth, how to grade it.

A chapter's grading module (``course_lib/grading/exNN.py``) registers one check per
exercise::

    from course_lib.grading.registry import exercise, GradeError, expect_close

    @exercise("ex01.contiguous_strides", points=2,
              hint="Walk the shape from the last dimension to the first.")
    def _(fn, rng):
        for _ in range(20):
            shape = tuple(int(n) for n in rng.integers(1, 6, size=rng.integers(1, 5)))
            expect_equal(tuple(fn(shape)), reference(shape), f"strides for shape {shape}")

``fn`` is the learner's function of the same name (``contiguous_strides`` in
``exercises/ex01_*.py``); ``rng`` is a seeded ``numpy.random.Generator``. Inputs are random,
expected values come from ``course_lib``'s reference code, so a hard-coded answer cannot
pass. A check signals a wrong answer by raising :class:`GradeError` with a message that
says what input gave what, and what was expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import numpy as np


class GradeError(AssertionError):
    """A learner's answer is wrong. The message is shown to the learner as is."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    key: str  # "ex01.contiguous_strides"
    points: int
    hint: str
    grade: Callable[[Callable[..., Any], np.random.Generator], None]
    timeout: float | None = None  # seconds; None means the grader's default

    @property
    def chapter(self) -> str:  # "ex01"
        return self.key.split(".", 1)[0]

    @property
    def function(self) -> str:  # "contiguous_strides"
        return self.key.split(".", 1)[1]


_REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, points: int = 1, hint: str = "", timeout: float | None = None):
    """Register the decorated function as the check for exercise ``key`` ("exNN.function")."""
    chapter, _, function = key.partition(".")
    if not (chapter.startswith("ex") and chapter[2:].isdigit() and function.isidentifier()):
        raise ValueError(f"exercise key {key!r} must look like 'ex01.function_name'")

    def register(grade: Callable[[Callable[..., Any], np.random.Generator], None]):
        if key in _REGISTRY:
            raise ValueError(f"exercise {key!r} is registered twice")
        _REGISTRY[key] = Exercise(key, points, hint, grade, timeout)
        return grade

    return register


def _load_all_chapters() -> None:
    for chapter in chapters():
        importlib.import_module(f"course_lib.grading.{chapter}")


def load_chapter(chapter: str) -> list[Exercise]:
    """Import ``course_lib.grading.<chapter>`` and return its exercises in definition order."""
    try:
        importlib.import_module(f"course_lib.grading.{chapter}")
    except ModuleNotFoundError as err:
        if err.name == f"course_lib.grading.{chapter}":
            raise KeyError(f"there is no chapter {chapter!r}; chapters: {', '.join(chapters())}") from None
        raise
    return [ex for ex in _REGISTRY.values() if ex.chapter == chapter]


def chapters() -> list[str]:
    """Every chapter that has graded exercises, e.g. ['ex01', 'ex02']."""
    import course_lib.grading as package

    return sorted(
        info.name for info in pkgutil.iter_modules(package.__path__)
        if info.name.startswith("ex") and info.name[2:].isdigit()
    )


def all_exercises() -> list[Exercise]:
    _load_all_chapters()
    return sorted(_REGISTRY.values(), key=lambda ex: ex.chapter)


def get(key: str) -> Exercise:
    chapter = key.split(".", 1)[0]
    for ex in load_chapter(chapter):
        if ex.key == key:
            return ex
    known = ", ".join(ex.key for ex in load_chapter(chapter))
    raise KeyError(f"there is no exercise {key!r}; {chapter} has: {known}")


# --------------------------------------------------------------------------------------
# Comparison helpers for checks. They accept numpy arrays, torch tensors, the course's own
# teaching Tensor (anything with .numpy()), Python numbers and nested lists/tuples.

def _as_numpy(value: Any, what: str) -> np.ndarray:
    from course_lib.metrics import to_numpy

    try:
        return to_numpy(value)
    except Exception as err:
        raise GradeError(f"{what}: could not read your result {type(value).__name__} as an array ({err})") from None


def expect_equal(actual: Any, expected: Any, what: str) -> None:
    """Exact equality for ints, tuples, strings, integer arrays. ``what`` names the case."""
    if isinstance(expected, (str, int, tuple, list, dict)) and not isinstance(expected, bool):
        if isinstance(expected, tuple) and isinstance(actual, list):
            actual = tuple(actual)
        if isinstance(expected, list) and isinstance(actual, tuple):
            actual = list(actual)
        if actual != expected:
            raise GradeError(f"{what}: expected {expected!r}, got {actual!r}")
        return
    a, e = _as_numpy(actual, what), _as_numpy(expected, what)
    if a.shape != e.shape:
        raise GradeError(f"{what}: expected shape {tuple(e.shape)}, got shape {tuple(a.shape)}")
    if not np.array_equal(a, e):
        bad = int(np.sum(a != e))
        raise GradeError(f"{what}: {bad} of {e.size} values differ from the expected result")


def expect_close(actual: Any, expected: Any, what: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Float comparison with shapes checked first; reports the largest difference."""
    a, e = _as_numpy(actual, what), _as_numpy(expected, what)
    if a.shape != e.shape:
        raise GradeError(f"{what}: expected shape {tuple(e.shape)}, got shape {tuple(a.shape)}")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    if not np.allclose(a64, e64, atol=atol, rtol=rtol, equal_nan=True):
        diff = np.abs(a64 - e64)
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.ndim == 0:
            raise GradeError(f"{what}: expected {float(e64):.6g}, got {float(a64):.6g}")
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise GradeError(
            f"{what}: {int(np.sum(~np.isclose(a64, e64, atol=atol, rtol=rtol)))} of {e64.size} values differ; "
            f"the largest difference, {float(diff.max()):.3g}, is at index {tuple(int(i) for i in worst)}: "
            f"expected {float(e64[worst]):.6g}, got {float(a64[worst]):.6g}"
        )


def expect_raises(exception: type[BaseException], call: Callable[[], Any], what: str, why: str) -> None:
    """``call()`` (which runs the learner's code) must raise ``exception``; ``why`` says why it
    should, e.g. "the inner dimensions differ (3 vs 4)"."""
    try:
        actual = call()
    except exception:
        return
    shown = repr(actual) if isinstance(actual, (int, float, str, tuple, list, type(None))) \
        else f"a value of type {type(actual).__name__}"
    raise GradeError(f"{what}: {why}, so a {exception.__name__} was expected; your function returned {shown}")



def _copy_inputs(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy_inputs(v) for k, v in value.items()}
    return value


def _unchanged(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_unchanged(a[k], b[k]) for k in a)
    return True


def call_learner(fn: Callable[..., Any], args: tuple, what: str, answer_key: tuple[str, ...], instead: str,
                 in_place_examples: str) -> Any:
    """``fn(*args)`` with ``answer_key`` switched off (``forbid``) and gradients off; the learner's
    function must leave its inputs (tensors, dicts of tensors) as they were. Returns its result."""
    import torch

    copies = [_copy_inputs(a) for a in args]
    with forbid(*answer_key, instead=instead), torch.no_grad():
        out = fn(*args)
    if not all(_unchanged(a, c) for a, c in zip(args, copies)):
        raise GradeError(f"{what}: your function changed one of its inputs in place; compute new tensors "
                         f"instead (avoid {in_place_examples})")
    return out


def expect_tensor(out: Any, what: str):
    """``out`` if it is a torch.Tensor, else a GradeError naming what came back."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise GradeError(f"{what}: expected a torch.Tensor, got {type(out).__name__}")
    return out


def expect_tensors(out: Any, n: int, what: str, names: str = "") -> tuple:
    """``out`` as a tuple of ``n`` tensors (``names`` describes them in the error), else a GradeError."""
    if not isinstance(out, (tuple, list)) or len(out) != n:
        shown = f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) \
            else f"a {type(out).__name__}"
        raise GradeError(f"{what}: expected a tuple of {n} tensors{' ' + names if names else ''}, got {shown}")
    return tuple(expect_tensor(t, f"{what}, item {i} of the tuple") for i, t in enumerate(out))

@contextlib.contextmanager
def forbid(*dotted_names: str, instead: str = ""):
    """While active, calling any of ``dotted_names`` (e.g. ``"torch.nn.functional.layer_norm"``,
    ``"torch.Tensor.softmax"``) raises a GradeError that names the shortcut the learner took.

    Use it around the call of the learner's function only, never around the reference:
    exercises that ask for a layer "from primitive ops" get teeth this way.
    """
    patched = []
    try:
        for name in dotted_names:
            owner_name, _, attr = name.rpartition(".")
            owner = importlib.import_module(owner_name) if not owner_name.endswith("Tensor") else \
                getattr(importlib.import_module(owner_name.rpartition(".")[0]), "Tensor")
            if not hasattr(owner, attr):
                continue
            original = getattr(owner, attr)

            def refuse(*args, _name=name, **kwargs):
                raise GradeError(f"your code called {_name}(), a ready-made shortcut; this exercise asks "
                                 f"you to write it from primitive operations{instead}")

            setattr(owner, attr, refuse)
            patched.append((owner, attr, original))
        yield
    finally:
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)
