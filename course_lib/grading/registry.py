"""The exercise registry: which exercises exist, how many points each is worth, how to grade it.

A chapter's grading module (``course_lib/grading/exNN.py``) registers one check per
exercise::

    from course_lib.grading.registry import exercise, GradeError, expect_close

    @exercise("ex01.contiguous_strides", points=2, reference="course_lib.tensor.contiguous_strides",
              hints=("The last dimension's elements sit next to each other: its stride is 1.",
                     "Each stride is the next one times the next dimension's size.",
                     "Walk the shape from the last dimension to the first, keeping a running product."))
    def _(fn, rng):
        for _ in range(20):
            shape = tuple(int(n) for n in rng.integers(1, 6, size=rng.integers(1, 5)))
            expect_equal(tuple(fn(shape)), reference(shape), f"strides for shape {shape}")

``fn`` is the learner's function of the same name (``contiguous_strides`` in
``exercises/ex01_*.py``); ``rng`` is a seeded ``numpy.random.Generator``. Inputs are random,
expected values come from ``course_lib``'s reference code, so a hard-coded answer cannot
pass. A check signals a wrong answer by raising :class:`GradeError` with a message that
says what input gave what, and what was expected. :func:`randn` makes random tensor inputs;
:func:`likely` adds the usual mistake a wrong answer reproduces to the message.

When the grader runs, ``fn`` is a :class:`~course_lib.grading.learner_process.LearnerFunction`:
the learner's code runs in another process and the check only sees arguments go out and
results come back. The tests of wrong answers pass plain functions instead; both work.

Hints come in tiers, from the idea to a pointer, never the finished line: ``check()`` shows
the first after the first failure and the next one after each further failure. ``stretch``
marks an exercise that goes past what the chapter shows. ``reference`` names the course's
own version (``"course_lib.layers.softmax"``): the notebook may show it only *below* the
exercise's ``check()`` cell (:func:`course_lib.grading.reveal`), and a test makes sure no
notebook shows it, or the solution, above.

:func:`chapter_rules` says what a chapter's learner file may use: ``shortcuts`` are torch
functions switched off while the learner's code runs (ready-made versions of what the
exercises ask for), ``allow`` the ``course_lib`` modules it may import (helpers from earlier
chapters; every other ``course_lib`` module is the answer key), ``refuse`` names inside those
modules that are answers of this chapter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import numbers
import pkgutil
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from course_lib.grading.child import resolve_owner

if TYPE_CHECKING:  # the functions that need torch import it: importing this module stays cheap
    import torch


class GradeError(AssertionError):
    """A learner's answer is wrong. The message is shown to the learner as is."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    key: str  # "ex01.contiguous_strides"
    points: int
    hints: tuple[str, ...]  # from the idea to a pointer; never the finished line
    grade: Callable[[Callable[..., Any], np.random.Generator], None]
    timeout: float | None = None  # seconds; None means the grader's default
    stretch: bool = False  # goes past what the chapter shows
    reference: tuple[str, ...] = ()  # the course's own version(s), dotted names in course_lib

    @property
    def hint(self) -> str:
        """The first hint (what the command-line grader shows)."""
        return self.hints[0] if self.hints else ""

    def hint_tier(self, n: int) -> str:
        """Hint ``n`` (1-based), the last one when ``n`` is past the end."""
        if not self.hints:
            return ""
        return self.hints[min(max(n, 1), len(self.hints)) - 1]

    @property
    def chapter(self) -> str:  # "ex01"
        return self.key.split(".", 1)[0]

    @property
    def function(self) -> str:  # "contiguous_strides"
        return self.key.split(".", 1)[1]


_REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, points: int = 1, hints: tuple[str, ...] | list[str] = (), timeout: float | None = None,
             stretch: bool = False, reference: str | tuple[str, ...] = (), hint: str = ""):
    """Register the decorated function as the check for exercise ``key`` ("exNN.function")."""
    chapter, _, function = key.partition(".")
    if not (chapter.startswith("ex") and chapter[2:].isdigit() and function.isidentifier()):
        raise ValueError(f"exercise key {key!r} must look like 'ex01.function_name'")
    if isinstance(hints, str):
        raise TypeError(f"{key}: hints is a tuple of 2-3 strings, from the idea to a pointer")
    references = (reference,) if isinstance(reference, str) else tuple(reference)
    if hint and not hints:  # one untiered hint (older checks)
        hints = (hint,)

    def register(grade: Callable[[Callable[..., Any], np.random.Generator], None]):
        if key in _REGISTRY:
            raise ValueError(f"exercise {key!r} is registered twice")
        _REGISTRY[key] = Exercise(key, points, tuple(hints), grade, timeout, stretch, references)
        return grade

    return register


@dataclasses.dataclass(frozen=True)
class ChapterRules:
    shortcuts: tuple[str, ...] = ()  # torch functions switched off while the learner's code runs
    allow: tuple[str, ...] = ()      # course_lib modules the learner's file may import
    refuse: tuple[str, ...] = ()     # names inside allowed modules that are this chapter's answers


_RULES: dict[str, ChapterRules] = {}

# Private or alternative spellings of the shortcuts, switched off with them: a learner who
# reaches for torch.native_layer_norm or torch._C._nn.gelu is taking the same shortcut.
SHORTCUT_ALIASES: dict[str, tuple[str, ...]] = {
    "torch.nn.functional.layer_norm": (
        "torch.layer_norm", "torch.native_layer_norm", "torch._C._VariableFunctions.layer_norm",
        "torch._C._VariableFunctions.native_layer_norm", "torch.ops.aten.layer_norm",
        "torch.ops.aten.native_layer_norm"),
    "torch.nn.functional.gelu": ("torch._C._nn.gelu", "torch.ops.aten.gelu"),
    "torch.nn.functional.softmax": (
        "torch.softmax", "torch._softmax", "torch.Tensor.softmax", "torch.special.softmax",
        "torch._C._VariableFunctions.softmax", "torch._C._VariableFunctions._softmax", "torch.ops.aten.softmax",
        "torch.ops.aten._softmax", "torch.nn.functional.log_softmax", "torch.log_softmax", "torch._log_softmax",
        "torch.Tensor.log_softmax", "torch.special.log_softmax", "torch._C._VariableFunctions.log_softmax",
        "torch._C._VariableFunctions._log_softmax", "torch.ops.aten.log_softmax", "torch.ops.aten._log_softmax"),
    "torch.nn.functional.linear": ("torch._C._nn.linear", "torch.ops.aten.linear"),
    "torch.nn.functional.scaled_dot_product_attention": (
        "torch._C._nn.scaled_dot_product_attention", "torch.ops.aten.scaled_dot_product_attention",
        "torch._scaled_dot_product_attention_math", "torch._C._VariableFunctions._scaled_dot_product_attention_math",
        "torch.ops.aten._scaled_dot_product_attention_math"),
    "torch.nn.functional.rms_norm": ("torch.rms_norm", "torch._C._VariableFunctions.rms_norm",
                                     "torch.ops.aten.rms_norm"),
    "torch.nn.functional.cross_entropy": ("torch._C._nn.cross_entropy_loss", "torch.ops.aten.cross_entropy_loss"),
    "torch.nn.functional.nll_loss": ("torch._C._nn.nll_loss", "torch._C._nn.nll_loss_nd", "torch._C._nn.nll_loss2d",
                                     "torch.ops.aten.nll_loss", "torch.ops.aten.nll_loss_nd"),
    "torch.optim.AdamW": ("torch.optim.adamw.AdamW", "torch.optim.Adam", "torch.optim.adam.Adam",
                          "torch.optim.adamw.adamw", "torch.optim.adam.adam", "torch._fused_adamw_"),
    "torch.nn.utils.clip_grad_norm_": ("torch.nn.utils.clip_grad_norm", "torch.nn.utils.clip_grad.clip_grad_norm_",
                                       "torch.nn.utils.clip_grads_with_norm_", "torch.nn.utils.get_total_norm",
                                       "torch.nn.utils.clip_grad.get_total_norm"),
}


def chapter_rules(chapter: str, *, shortcuts: tuple[str, ...] = (), allow: tuple[str, ...] = (),
                  refuse: tuple[str, ...] = ()) -> ChapterRules:
    """Declare what ``chapter``'s learner file may use (see the module docstring)."""
    rules = ChapterRules(tuple(shortcuts), tuple(allow), tuple(refuse))
    _RULES[chapter] = rules
    return rules


def rules_for(chapter: str) -> ChapterRules:
    load_chapter(chapter)
    return _RULES.get(chapter, ChapterRules())


def expand_shortcuts(names: tuple[str, ...]) -> list[str]:
    """``names`` plus their private aliases, each once."""
    out: list[str] = []
    for name in names:
        for n in (name, *SHORTCUT_ALIASES.get(name, ())):
            if n not in out:
                out.append(n)
    return out


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


def expect_dtype(t, dtype, what: str, why: str) -> None:
    """A tensor's dtype, or a GradeError naming both and why the dtype matters."""
    if t.dtype != dtype:
        raise GradeError(f"{what}: expected dtype {dtype}, got {t.dtype}; {why}")


def expect_shape(t, shape: tuple[int, ...], what: str, why: str = "") -> None:
    """A tensor's shape, or a GradeError naming both (and why, when given)."""
    if tuple(t.shape) != tuple(shape):
        because = f"; {why}" if why else ""
        raise GradeError(f"{what}: expected shape {tuple(shape)}, got shape {tuple(t.shape)}{because}")


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


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0, dtype: torch.dtype | None = None
          ) -> torch.Tensor:
    """A torch tensor of ``shape`` holding ``scale`` times standard normal draws from ``rng``.

    The draws are made in float64 and then rounded to ``dtype`` (float32 when None), so a check's inputs
    depend on its seed only, not on the dtype it asks for or on PyTorch's global generator.
    """
    import torch

    values = torch.from_numpy(np.asarray(rng.standard_normal(shape) * scale))  # float64
    return values.to(torch.float32 if dtype is None else dtype)


def _tensor_if_number(value: Any) -> Any:
    import torch

    return torch.as_tensor(value, dtype=torch.float64) if isinstance(value, numbers.Real) else value


def same_value(a: Any, b: Any, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Whether ``a`` and ``b`` hold the same value.

    Tensors (a real number counts as a 0-d float64 tensor) must have the same shape and values that
    ``torch.allclose`` accepts within ``rtol`` and ``atol``, compared in float64: with both 0, exactly
    equal values (the dtypes may differ). NaN never matches. Other values (tuples, bytes, strings) are
    compared with ``==``; a tensor never matches a value that is not one.
    """
    import torch

    a, b = _tensor_if_number(a), _tensor_if_number(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)))
    return bool(a == b)


def _finite(value: Any) -> bool:
    import torch

    value = _tensor_if_number(value)
    return not isinstance(value, torch.Tensor) or bool(torch.isfinite(value).all())


def likely(got: Any, mistakes: dict[str, Callable[[], Any]], *, rtol: float = 0.0, atol: float = 0.0,
           same: Callable[[Any, Any], bool] | None = None) -> str:
    """The sentence " It looks like ...", naming the usual mistakes whose result ``got`` reproduces, or "".

    ``mistakes`` maps a sentence that names a mistake (and what to do instead) to a function that computes
    what the mistake returns on the check's input; a function that raises, or returns None, stands for a
    mistake that cannot happen on this input. On a small input several mistakes can match: all are named.

    ``got`` matches a mistake's result when :func:`same_value` says so within ``rtol`` and ``atol``
    (exactly by default) and the result holds no inf or NaN (a computation that broke down does not tell
    which mistake it was); or, when ``same`` is given, when ``same(got, result)`` is true.
    """
    def matches(candidate: Any) -> bool:
        if same is not None:
            return bool(same(got, candidate))
        return _finite(candidate) and same_value(got, candidate, rtol, atol)

    found = []
    for text, make in mistakes.items():
        try:
            candidate = make()
        except Exception:  # the mistake cannot even happen on this input
            continue
        if candidate is not None and matches(candidate):
            found.append(text)
    if not found:
        return ""
    return f" It looks like {found[0]}" + (f" (or: {'; or: '.join(found[1:])})" if found[1:] else "") + "."



def expect_values(got: torch.Tensor, expected: torch.Tensor, what: str, mistakes: dict, rtol: float = 0.0,
                  atol: float = 0.0, why_shape: str = "") -> None:
    """``got`` equal (``rtol = atol = 0``) or close to ``expected``, shapes first; else a GradeError that
    names a usual mistake the result matches."""
    if tuple(got.shape) != tuple(expected.shape):
        because = f"; {why_shape}" if why_shape else ""
        raise GradeError(f"{what}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}{because}."
                         + likely(got, mistakes, rtol=rtol, atol=atol))
    if same_value(got.to(expected.dtype), expected, rtol, atol):
        return
    if rtol == 0 and atol == 0:
        bad = int((got.to(expected.dtype) != expected).sum())
        raise GradeError(f"{what}: {bad} of {expected.numel()} values differ from the expected result (the values are "
                         f"copies of the input's, so they must be equal)." + likely(got, mistakes))
    try:
        expect_close(got.double(), expected.double(), what, atol=atol, rtol=rtol)
    except GradeError as err:
        raise GradeError(str(err) + "." + likely(got, mistakes, rtol=rtol, atol=atol)) from None
    raise GradeError(f"{what}: differs from the expected result (NaN where a number was expected, or the reverse)."
                     + likely(got, mistakes, rtol=rtol, atol=atol))


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
    ``"torch.Tensor.softmax"``) or their private aliases raises a GradeError that names the
    shortcut the learner took.

    This patches the grader's own process, which is where the tests of wrong answers run
    them (plain functions). When the grader runs, the learner's code is in another process:
    there the chapter's :func:`chapter_rules` switch the shortcuts off before the learner's
    file is imported, so a name grabbed at import time is switched off too.
    """
    patched = []
    try:
        for name in expand_shortcuts(dotted_names):
            found = resolve_owner(name)
            if found is None:
                continue
            owner, attr = found
            original = getattr(owner, attr)

            def refuse(*args, _name=name, **kwargs):
                raise GradeError(f"your code called {_name}(), a ready-made shortcut; this exercise asks "
                                 f"you to write it from primitive operations{instead}")

            try:
                setattr(owner, attr, refuse)
            except (AttributeError, TypeError):
                continue
            patched.append((owner, attr, original))
        yield
    finally:
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)
