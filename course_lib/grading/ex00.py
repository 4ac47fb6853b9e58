"""Checks for chapter 00's exercises: warm-ups that show how grading works.

Core: ``count_parameters``, ``dot``, ``variance``, ``argmax``, ``relu``. Stretch:
``pairwise_sum`` and ``merge_stats`` (past what the chapter shows; the notebook does not
show their references). The ``reference_*`` functions are the course's own versions:
``reveal("ex00.name")`` prints a core exercise's below its check cell.

Each check calls the learner's function on random inputs, compares with the reference, and
when the answer matches a typical mistake (the sample variance, a 1-based position, an input
changed in place, adding left to right) says which mistake it is.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from course_lib.grading.registry import GradeError, exercise, expect_close, expect_equal, expect_raises


# --------------------------------------------------------------------------------------
# The course's versions

def reference_count_parameters(shapes: list[tuple[int, ...]]) -> int:
    """Number of values in tensors of the given shapes: one product per shape, added up."""
    return sum(math.prod(shape) for shape in shapes)


def reference_dot(a: list[float], b: list[float]) -> float:
    """The dot product of two equally long lists: the products of the pairs, added up."""
    return sum((x * y for x, y in zip(a, b)), 0.0)


def reference_variance(values: list[float]) -> float:
    """Population variance (divide by n, as LayerNorm does), in two passes.

    The mean first, then the mean of the squared deviations from it. In exact arithmetic
    that equals E[x²] − E[x]², but in floats that one-pass formula subtracts two huge,
    nearly equal numbers when the values sit far from zero and keeps only rounding error.
    """
    if not values:
        raise ValueError("the variance of an empty list is undefined (it has no mean)")
    mean = sum(values) / len(values)
    return sum((x - mean) ** 2 for x in values) / len(values)


def reference_argmax(values: list[float]) -> int:
    """Position of the largest value; the first one when several tie. ValueError if empty."""
    if not values:
        raise ValueError("an empty list has no largest value")
    best = 0
    for position in range(1, len(values)):
        if values[position] > values[best]:  # strictly greater: the first of a tie stays
            best = position
    return best


def reference_relu(x):
    """``max(x, 0)`` elementwise, as a new tensor with ``x``'s shape and dtype; ``x`` is left as it was."""
    import torch

    return torch.where(x > 0, x, torch.zeros_like(x))


def reference_pairwise_sum(values: list[float]) -> float:
    """The sum of ``values`` added in halves: the first ``len // 2`` values, then the rest,
    each summed the same way (``[]`` -> 0.0, ``[x]`` -> x).

    A left-to-right sum of n floats can gather rounding error in proportion to n; a tree of
    halves keeps it in proportion to log2(n). NumPy's ``sum`` and GPU reductions add in
    blocks and trees for the same reason, which is also why their last digits differ.
    """
    if len(values) <= 1:
        return float(values[0]) if values else 0.0
    half = len(values) // 2
    return reference_pairwise_sum(values[:half]) + reference_pairwise_sum(values[half:])


def reference_merge_stats(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """``(count, mean, m2)`` of two batches together, from each batch's ``(count, mean, m2)``.

    ``m2`` is the sum of squared deviations from the batch's mean (variance = m2 / count).
    Chan, Golub and LeVeque's update: the means combine weighted by their counts, and m2
    gains ``delta² · n_a · n_b / n`` for the distance ``delta`` between the two means (the
    two batches also spread around each other). Either batch may be empty.
    """
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / n
    return n, mean, m2


def stats_of(values: list[float]) -> tuple[int, float, float]:
    """``(count, mean, m2)`` of ``values``, as accurately as floats allow (``math.fsum``)."""
    if not values:
        return 0, 0.0, 0.0
    mean = math.fsum(values) / len(values)
    return len(values), mean, math.fsum((x - mean) ** 2 for x in values)


# --------------------------------------------------------------------------------------
# Helpers for the checks

def _describe(values: list, show: int = 8) -> str:
    """The list itself when short, else its length and first values."""
    if len(values) <= show:
        return repr([float(f"{v:.6g}") if isinstance(v, float) else v for v in values])
    return f"a list of {len(values)} values, starting {[float(f'{v:.10g}') for v in values[:3]]}"


def _close(a: float, b: float, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GradeError(f"{what}: expected a number (a float), got {type(value).__name__} {value!r}")
    return float(value)


def _expect_value_error(call: Callable[[], Any], what: str, why: str) -> None:
    """Like expect_raises(ValueError, ...), but names the other errors an empty list tends to raise."""
    try:
        expect_raises(ValueError, call, what, why)
    except (ZeroDivisionError, IndexError, TypeError) as err:
        raise GradeError(f"{what}: {why}, so a ValueError was expected; your function raised "
                         f"{type(err).__name__} ({err}) instead: check for it first and raise ValueError") from None


# --------------------------------------------------------------------------------------
# Core exercises

@exercise("ex00.count_parameters", points=1, reference="course_lib.grading.ex00.reference_count_parameters",
          hints=("A tensor of shape (a, b, c) holds a·b·c values (math.prod multiplies out a shape); a model's "
                 "count is the total over all of its tensors.",
                 "Loop over the shapes and add up one product per shape: a bias of shape (n,) holds n values, "
                 "and an empty list of shapes holds 0."))
def _(fn, rng):
    cases = [[(768, 3072), (3072,)], [(5,)], [], [(2, 3), (4, 5)]]
    cases += [[tuple(int(n) for n in rng.integers(1, 50, size=rng.integers(1, 4)))
               for _ in range(rng.integers(1, 6))] for _ in range(20)]
    for shapes in cases:
        what = f"count_parameters({shapes})"
        actual = fn(list(shapes))
        expected = reference_count_parameters(shapes)
        if actual != expected and actual == sum(sum(shape) for shape in shapes):
            raise GradeError(f"{what}: expected {expected}, got {actual}: you added the sizes of each shape; a "
                             f"tensor of shape (a, b) holds a*b values, not a+b")
        expect_equal(actual, expected, what)


@exercise("ex00.dot", points=1, reference="course_lib.grading.ex00.reference_dot",
          hints=("Multiply the numbers at the same position and add up the products.",
                 "zip walks both lists in step; start the running total at 0.0, so that two empty lists give 0.0."))
def _(fn, rng):
    for n in [0, 1, *rng.integers(2, 40, size=20)]:
        a, b = rng.normal(size=int(n)).tolist(), rng.normal(size=int(n)).tolist()
        expect_close(float(fn(a, b)), reference_dot(a, b), f"dot of two random lists of length {n}", atol=1e-9)


@exercise("ex00.variance", points=1, reference="course_lib.grading.ex00.reference_variance",
          hints=("The variance is the mean of the squared distances from the mean: find the mean first, then "
                 "average (x - mean)² over the values.",
                 "Divide by the number of values n, not n - 1 (that is the sample variance), and raise "
                 "ValueError for an empty list before dividing by anything.",
                 "E[x²] - E[x]² is equal in exact maths, but for values near 1e8 the two huge terms cancel and "
                 "only rounding is left: subtract the mean before squaring."))
def _(fn, rng):
    cases = [([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], False), ([3.5], False), ([1.0, 2.0], False)]
    for _ in range(15):
        n = int(rng.integers(2, 40))
        cases.append(((rng.normal(size=n) * rng.uniform(0.1, 10) + rng.normal() * 5).round(6).tolist(), False))
    for _ in range(3):  # far from zero: the one-pass formula loses every digit here
        n = int(rng.integers(20, 60))
        cases.append(((1e8 + rng.normal(size=n)).tolist(), True))
    for values, far in cases:
        n = len(values)
        expected = reference_variance(values)
        what = f"variance({_describe(values)})"
        try:
            actual = _as_float(fn(list(values)), what)
        except ZeroDivisionError:
            raise GradeError(f"{what}: expected {expected!r}, but your function divided by zero: a list of one "
                             f"value has variance 0.0 (divide by n, not n - 1)") from None
        rtol = 1e-6 if far else 1e-9
        if _close(actual, expected, rtol):
            continue
        if n > 1 and _close(actual, expected * n / (n - 1), rtol):
            raise GradeError(f"{what}: expected {expected:.6g}, got {actual:.6g}: that is the sample variance "
                             f"(dividing by n - 1 = {n - 1}); this exercise asks for the population variance, "
                             f"dividing by n = {n}, the one LayerNorm uses")
        if _close(actual, math.sqrt(expected), rtol):
            raise GradeError(f"{what}: expected {expected:.6g}, got {actual:.6g}: that is the standard deviation, "
                             f"the square root of the variance")
        if far:
            raise GradeError(f"{what}: expected {expected:.6g}, got {actual:.6g}. The values sit near 1e8, and "
                             f"your answer was right for values near 0: E[x²] - E[x]² subtracts two numbers "
                             f"near 1e16 that agree in almost every digit (catastrophic cancellation). Subtract "
                             f"the mean first, then square")
        expect_close(actual, expected, what, rtol=rtol, atol=1e-12)
    _expect_value_error(lambda: fn([]), "variance([])", "an empty list has no mean and no variance")


@exercise("ex00.argmax", points=1, reference="course_lib.grading.ex00.reference_argmax",
          hints=("Walk the list once, remembering the POSITION of the largest value seen so far (not only the "
                 "value itself).",
                 "Start from position 0, the first value, not from a running maximum of 0 (every value may be "
                 "negative), and move on only when a value is strictly greater, so the first of a tie wins.",
                 "An empty list has no largest value: raise ValueError before looking at values[0]."))
def _(fn, rng):
    cases = [[0.1, 2.5, -1.0], [3, 1, 3], [-5.0, -2.0, -9.0], [7]]
    for _ in range(12):  # small integers: ties are common
        cases.append([int(v) for v in rng.integers(-3, 4, size=int(rng.integers(1, 15)))])
    for _ in range(8):
        cases.append((rng.normal(size=int(rng.integers(1, 30))) * 10).round(3).tolist())
    for _ in range(4):  # every value negative
        cases.append((-rng.uniform(0.5, 50, size=int(rng.integers(2, 12)))).round(3).tolist())
    for values in cases:
        expected = reference_argmax(values)
        what = f"argmax({_describe(values, show=15)})"
        actual = fn(list(values))
        largest = max(values)
        if isinstance(actual, float) and actual == largest:
            raise GradeError(f"{what}: expected position {expected}, got {actual!r}: that is the largest value "
                             f"itself; return where it is")
        if isinstance(actual, bool) or not isinstance(actual, (int, np.integer)):
            raise GradeError(f"{what}: expected a position (an int), got {type(actual).__name__} {actual!r}")
        actual = int(actual)
        if actual == expected:
            continue
        ties = [i for i, v in enumerate(values) if v == largest]
        if actual in ties:
            raise GradeError(f"{what}: expected {expected}, got {actual}: the largest value {largest!r} sits at "
                             f"positions {ties}; expected the first of them")
        if actual == expected + 1:
            raise GradeError(f"{what}: expected {expected}, got {actual}: positions start at 0 in Python (you "
                             f"returned the position plus one)")
        if largest < 0 and actual == 0:
            raise GradeError(f"{what}: expected {expected}, got 0: every value is negative. Did the running "
                             f"maximum start at 0? Start from the first value instead")
        if actual == largest:
            raise GradeError(f"{what}: expected position {expected}, got {actual}: that is the largest value "
                             f"itself; return where it is")
        expect_equal(actual, expected, what)
    _expect_value_error(lambda: fn([]), "argmax([])", "an empty list has no largest value")


@exercise("ex00.relu", points=1, reference="course_lib.grading.ex00.reference_relu",
          hints=("Keep every positive value and replace every negative one by 0; the result has the shape and "
                 "dtype of x.",
                 "A comparison such as x > 0 gives a tensor of True/False: select with it (torch.where) or "
                 "multiply by it; clamp takes a lower bound too.",
                 "Build a new tensor: assigning into x (x[x < 0] = 0) or a method ending in _ changes the "
                 "caller's tensor, and the grader notices."))
def _(fn, rng):
    import torch

    cases = [((5,), torch.float32, False), ((3, 4), torch.float32, False), ((2, 3, 4), torch.float64, False),
             ((1,), torch.float32, False), ((4, 6), torch.float32, True)]
    cases += [(tuple(int(n) for n in rng.integers(1, 6, size=int(rng.integers(1, 4)))),
               torch.float32 if rng.random() < 0.6 else torch.float64, bool(rng.random() < 0.3)) for _ in range(8)]
    for shape, dtype, transposed in cases:
        values = rng.normal(size=shape)
        values[rng.random(size=shape) < 0.1] = 0.0
        x = torch.from_numpy(values).to(dtype)
        if transposed and x.ndim >= 2:  # a non-contiguous input, as after .T
            x = x.transpose(0, 1)
        given = x.clone()
        layout = ", transposed" if transposed and x.ndim >= 2 else ""
        what = f"relu(x of shape {tuple(x.shape)}, {str(dtype).removeprefix('torch.')}{layout})"
        actual = fn(given)
        if not (given.dtype == x.dtype and given.shape == x.shape and torch.equal(given, x)):
            raise GradeError(f"{what}: your function changed its input x (an in-place operation such as "
                             f"x[x < 0] = 0 or x.clamp_()); expected a new tensor, with x left as it was")
        if not isinstance(actual, torch.Tensor):
            raise GradeError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
        if tuple(actual.shape) != tuple(x.shape):
            raise GradeError(f"{what}: expected shape {tuple(x.shape)}, got shape {tuple(actual.shape)}")
        if actual.dtype != x.dtype:
            raise GradeError(f"{what}: expected dtype {x.dtype} (the input's), got {actual.dtype}: keep x's dtype "
                             f"(a True/False mask times x keeps it; .float() or an int 0 tensor may not)")
        expected = reference_relu(x)
        if bool((actual < 0).any()):
            raise GradeError(f"{what}: expected no negative values, but {int((actual < 0).sum())} of "
                             f"{actual.numel()} are negative")
        if not torch.equal(actual[x > 0], x[x > 0]):
            raise GradeError(f"{what}: expected positive values to pass through unchanged, but some changed")
        expect_equal(actual.numpy(), expected.numpy(), what)


# --------------------------------------------------------------------------------------
# Stretch exercises

def _left_to_right(values: list[float]) -> float:
    total = 0.0
    for v in values:
        total += v
    return total


def _split_late(values: list[float]) -> float:
    if len(values) <= 1:
        return float(values[0]) if values else 0.0
    half = (len(values) + 1) // 2
    return _split_late(values[:half]) + _split_late(values[half:])


def _bottom_up(values: list[float]) -> float:
    level = [float(v) for v in values] or [0.0]
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


@exercise("ex00.pairwise_sum", points=2, stretch=True, reference="course_lib.grading.ex00.reference_pairwise_sum",
          hints=("Split the list after its first len(values) // 2 values, sum each half the same way (a function "
                 "may call itself), and add the two results.",
                 "The recursion needs base cases: an empty list sums to 0.0 and a list of one value to that value; "
                 "everything longer is split again.",
                 "The check compares bit for bit: no math.fsum, no sum() of a half, and when the length is odd the "
                 "first half is the shorter one."))
def _(fn, rng):
    cases = [[], [2.5], [1.0, 2.0, 3.0], [0.1] * 10, [1e16, 1.0, -1e16, 1.0]]
    for _ in range(30):
        n = int(rng.integers(3, 400))
        cases.append((rng.normal(size=n) * 10.0 ** rng.uniform(-6, 6, size=n)).tolist())
    cases.append((rng.normal(size=5000) * 10.0 ** rng.uniform(-3, 3, size=5000)).tolist())
    answers = []
    for values in cases:
        answers.append(_as_float(fn(list(values)), f"pairwise_sum({_describe(values)})"))
    wrong = [(values, actual) for values, actual in zip(cases, answers) if actual != reference_pairwise_sum(values)]
    if not wrong:
        return
    values, actual = wrong[0]
    expected = reference_pairwise_sum(values)
    what = f"pairwise_sum({_describe(values)}): expected {expected!r}, got {actual!r}"
    # Name the mistake only when one other order explains every answer, not just this one.
    orders = [
        (_left_to_right, "that is the sum added left to right. Close, but float addition is not associative: add "
                         "the two halves' sums, each summed in halves"),
        (_split_late, "you split after (n + 1) // 2 values; the first half holds len(values) // 2 of them"),
        (_bottom_up, "you added neighbours pair by pair, bottom up; for lengths that are not powers of two that is "
                     "another tree. Split at the middle, top down"),
        (math.fsum, "that is the exactly rounded sum (math.fsum), more accurate than this order; the exercise asks "
                    "for the sum in halves, bit for bit"),
    ]
    for order, mistake in orders:
        if all(order(v) == a for v, a in zip(cases, answers)):
            raise GradeError(f"{what}: {mistake}")
    raise GradeError(f"{what} (a difference of {abs(actual - expected):.3g}): a different order of additions, or "
                     f"not the sum")


def _stats(s: tuple[int, float, float]) -> str:
    return f"({s[0]}, {s[1]:.6g}, {s[2]:.6g})"


@exercise("ex00.merge_stats", points=3, stretch=True, reference="course_lib.grading.ex00.reference_merge_stats",
          hints=("The new mean is the two means averaged with their counts as weights. The new m2 is more than "
                 "m2_a + m2_b: the two batches also spread around each other.",
                 "Write a value of batch a as (x - mean_a) + (mean_a - new mean): over batch a, its squared "
                 "deviations from the new mean are m2_a plus a term in (mean_a - new mean)² (the cross term sums "
                 "to zero). Same for b.",
                 "Handle a total count of 0 first. The extra term depends only on the two counts and on the "
                 "distance between the two means (squared), and vanishes when either batch is empty."))
def _(fn, rng):
    cases = [([1.0, 2.0, 3.0], [5.0], False), ([], [1.0, 2.0], False), ([4.0], [], False), ([], [], False)]
    for _ in range(25):
        scale = float(rng.uniform(0.1, 3))
        n_a, n_b = (int(n) for n in rng.integers(0, 30, size=2))
        cases.append(((rng.normal(size=n_a) * scale + rng.normal() * 5).tolist(),
                      (rng.normal(size=n_b) * scale + rng.normal() * 5).tolist(), False))
    for _ in range(3):  # far from zero: sums of squares cancel here
        n_a, n_b = (int(n) for n in rng.integers(5, 30, size=2))
        cases.append(((1e8 + rng.normal(size=n_a)).tolist(), (1e8 + 0.5 + rng.normal(size=n_b)).tolist(), True))
    for values_a, values_b, far in cases:
        a, b = stats_of(values_a), stats_of(values_b)
        n, mean, m2 = reference_merge_stats(a, b)
        what = f"merge_stats({_stats(a)}, {_stats(b)})"
        expected = f"expected {_stats((n, mean, m2))}"
        try:
            actual = fn(a, b)
        except ZeroDivisionError:
            raise GradeError(f"{what}: {expected}, but your function divided by zero: a batch of count 0 changes "
                             f"nothing, and two empty batches give (0, 0.0, 0.0)") from None
        try:
            count, got_mean, got_m2 = actual
        except (TypeError, ValueError):
            raise GradeError(f"{what}: {expected}, a tuple (count, mean, m2); got {actual!r}") from None
        got_mean, got_m2 = _as_float(got_mean, what), _as_float(got_m2, what)
        got = f"got {_stats((count, got_mean, got_m2))}"
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count != n:
            raise GradeError(f"{what}: {expected}, {got}: the count of both batches together is {n}, an int")
        rtol = 1e-6 if far else 1e-9
        if not _close(got_mean, mean, rtol, 1e-9):
            if a[0] != b[0] and a[0] and b[0] and _close(got_mean, (a[1] + b[1]) / 2, rtol, 1e-9):
                raise GradeError(f"{what}: {expected}, {got}: you averaged the two means as if both batches had "
                                 f"the same size; weight each mean by its count")
            raise GradeError(f"{what}: {expected}, {got}: the mean is off")
        if _close(got_m2, m2, rtol, 1e-9):
            continue
        if n and _close(got_m2, m2 / n, rtol, 1e-9):
            raise GradeError(f"{what}: {expected}, {got}: that is the variance m2 / count; return m2 itself")
        if _close(got_m2, a[2] + b[2], rtol, 1e-9):
            raise GradeError(f"{what}: {expected}, {got}: you added the two m2s but left out how far the two "
                             f"means are apart: the deviations of the union are measured from the new mean")
        if far:
            raise GradeError(f"{what}: {expected}, {got}: the values sit near 1e8, and your answer was right for "
                             f"values near 0: going through sums of squares (m2 + count * mean²) subtracts huge, "
                             f"nearly equal numbers. Combine m2s and the difference of the means directly")
        raise GradeError(f"{what}: {expected}, {got}: m2 is off")
