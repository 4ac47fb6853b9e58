"""The ex00 checks have teeth: the solutions pass, and typical wrong answers fail, by name.

Each wrong answer below is a mistake a learner is likely to make (or a hard-coded answer to
the docstring's example). Every one must be caught, for several seeds, with a GradeError
whose message names the call, says what was expected and, where the check knows the
mistake, names it. The references of the stretch exercises are tested here too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.grading import ex00, registry
from helpers import chapter_checks, have_solutions, load_exercise_module

SEEDS = range(5)
CHECKS = chapter_checks("ex00")
HAS_SOLUTIONS = have_solutions("ex00_welcome.py")


def load(folder: str):
    return load_exercise_module(folder, "ex00_welcome.py")


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_solution_passes(name, seed):
    CHECKS[name].grade(getattr(load("solutions"), name), np.random.default_rng(seed))


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="in a learner's hand-out the exercise files are the learner's")
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stub_is_not_implemented(name):
    with pytest.raises(NotImplementedError):
        CHECKS[name].grade(getattr(load("exercises"), name), np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_references_pass_their_own_checks(name):
    CHECKS[name].grade(getattr(ex00, f"reference_{name}"), np.random.default_rng(7))


# --------------------------------------------------------------------------------------
# Wrong answers

def count_adding_sizes(shapes):
    return sum(sum(shape) for shape in shapes)


def count_hard_coded(shapes):
    return 2_362_368


def count_first_tensor_only(shapes):
    return math.prod(shapes[0]) if shapes else 0


def dot_hard_coded(a, b):
    return 11.0


def dot_of_sums(a, b):
    return sum(a) * sum(b)


def variance_sample(values):
    mean = sum(values) / len(values)
    return sum((x - mean) ** 2 for x in values) / (len(values) - 1)


def variance_std(values):
    if not values:
        raise ValueError("empty")
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))


def variance_one_pass(values):
    if not values:
        raise ValueError("empty")
    n = len(values)
    return sum(x * x for x in values) / n - (sum(values) / n) ** 2


def variance_empty_divides_by_zero(values):
    mean = sum(values) / len(values)
    return sum((x - mean) ** 2 for x in values) / len(values)


def argmax_returns_value(values):
    return max(values)


def argmax_last_of_tie(values):
    best = 0
    for i, v in enumerate(values):
        if v >= values[best]:
            best = i
    return best


def argmax_one_based(values):
    return values.index(max(values)) + 1


def argmax_from_zero(values):
    best_value, best = 0, 0
    for i, v in enumerate(values):
        if v > best_value:
            best_value, best = v, i
    return best


def argmax_empty_returns_zero(values):
    return values.index(max(values)) if values else 0


def relu_in_place(x):
    x[x < 0] = 0
    return x


def relu_numpy(x):
    return np.maximum(x.numpy(), 0)


def relu_always_float32(x):
    return x.clamp(min=0).float()


def relu_abs(x):
    return x.abs()


def relu_identity(x):
    return x.clone()


def pairwise_left_to_right(values):
    total = 0.0
    for v in values:
        total += v
    return total


def pairwise_builtin_sum(values):
    return float(sum(values))


def pairwise_fsum(values):
    return math.fsum(values)


def pairwise_split_late(values):
    if len(values) <= 1:
        return float(values[0]) if values else 0.0
    half = (len(values) + 1) // 2
    return pairwise_split_late(values[:half]) + pairwise_split_late(values[half:])


def pairwise_bottom_up(values):
    level = list(values) or [0.0]
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return float(level[0])


def merge_unweighted_mean(a, b):
    n = a[0] + b[0]
    if n == 0:
        return 0, 0.0, 0.0
    _, _, m2 = ex00.reference_merge_stats(a, b)
    mean = (a[1] + b[1]) / 2 if a[0] and b[0] else (a[1] if a[0] else b[1])
    return n, mean, m2


def merge_without_between_term(a, b):
    n, mean, _ = ex00.reference_merge_stats(a, b)
    return n, mean, a[2] + b[2]


def merge_returns_variance(a, b):
    n, mean, m2 = ex00.reference_merge_stats(a, b)
    return n, mean, m2 / n if n else 0.0


def merge_through_sums_of_squares(a, b):
    n = a[0] + b[0]
    if n == 0:
        return 0, 0.0, 0.0
    total = a[0] * a[1] + b[0] * b[1]
    squares = a[2] + a[0] * a[1] ** 2 + b[2] + b[0] * b[1] ** 2
    mean = total / n
    return n, mean, squares - n * mean ** 2


def merge_divides_by_zero(a, b):
    n = a[0] + b[0]
    delta = b[1] - a[1]
    return n, a[1] + delta * b[0] / n, a[2] + b[2] + delta ** 2 * a[0] * b[0] / n


# (exercise, wrong answer, a phrase of the message that names the mistake, or None)
WRONG = [
    ("count_parameters", count_adding_sizes, "added the sizes"),
    ("count_parameters", count_hard_coded, None),
    ("count_parameters", count_first_tensor_only, None),
    ("dot", dot_hard_coded, None),
    ("dot", dot_of_sums, None),
    ("variance", variance_sample, "sample variance"),
    ("variance", variance_std, "standard deviation"),
    ("variance", variance_one_pass, "catastrophic cancellation"),
    ("variance", variance_empty_divides_by_zero, "raised ZeroDivisionError"),
    ("argmax", argmax_returns_value, "largest value itself"),
    ("argmax", argmax_last_of_tie, "expected the first of them"),
    ("argmax", argmax_one_based, "positions start at 0"),
    ("argmax", argmax_from_zero, "running maximum start at 0"),
    ("argmax", argmax_empty_returns_zero, "ValueError was expected"),
    ("relu", relu_in_place, "changed its input"),
    ("relu", relu_numpy, "expected a torch.Tensor"),
    ("relu", relu_always_float32, "expected dtype torch.float64"),
    ("relu", relu_abs, None),
    ("relu", relu_identity, "expected no negative values"),
    ("pairwise_sum", pairwise_left_to_right, "added left to right"),
    ("pairwise_sum", pairwise_builtin_sum, "added left to right"),
    ("pairwise_sum", pairwise_fsum, "math.fsum"),
    ("pairwise_sum", pairwise_split_late, "(n + 1) // 2"),
    ("pairwise_sum", pairwise_bottom_up, "bottom up"),
    ("merge_stats", merge_unweighted_mean, "weight each mean by its count"),
    ("merge_stats", merge_without_between_term, "left out how far the two means are apart"),
    ("merge_stats", merge_returns_variance, "that is the variance"),
    ("merge_stats", merge_through_sums_of_squares, "sums of squares"),
    ("merge_stats", merge_divides_by_zero, "divided by zero"),
]


@pytest.mark.parametrize("name, wrong, named", WRONG, ids=[w.__name__ for _, w, _ in WRONG])
def test_wrong_answer_is_caught_with_a_message(name, wrong, named):
    for seed in SEEDS:
        with pytest.raises(registry.GradeError) as caught:
            CHECKS[name].grade(wrong, np.random.default_rng(seed))
        message = str(caught.value)
        assert name in message, f"the message should name the call: {message}"
        assert "expected" in message, f"the message should say what was expected: {message}"
        if named:
            assert named in message, f"the message should name the mistake ({named!r}): {message}"


def test_the_one_pass_variance_passes_near_zero_and_fails_only_far_from_it():
    # The named message claims the answer "was right for values near 0": make sure it is.
    for values in ([1.0, 2.0, 4.0], [0.5, -1.5, 2.25, 3.0]):
        assert math.isclose(variance_one_pass(values), ex00.reference_variance(values), rel_tol=1e-12)
    far = [1e8 + v for v in np.random.default_rng(0).normal(size=40)]
    assert not math.isclose(variance_one_pass(far), ex00.reference_variance(far), rel_tol=1e-6)


def test_every_check_is_fast_and_every_exercise_has_wrong_answers_here():
    import time

    solutions = load("solutions") if HAS_SOLUTIONS else ex00
    for name, ex in CHECKS.items():
        fn = getattr(solutions, name) if HAS_SOLUTIONS else getattr(ex00, f"reference_{name}")
        start = time.perf_counter()
        ex.grade(fn, np.random.default_rng(123))
        assert time.perf_counter() - start < 1.0, f"{name}: the check takes over a second"
    assert {name for name, _, _ in WRONG} == set(CHECKS)
    stretch = {ex.function for ex in CHECKS.values() if ex.stretch}
    assert stretch == {"pairwise_sum", "merge_stats"}
    assert all(sum(n == name for n, _, _ in WRONG) >= 4 for name in stretch)


# --------------------------------------------------------------------------------------
# The references

def test_count_parameters_agrees_with_torch():
    model = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert ex00.reference_count_parameters(shapes) == sum(p.numel() for p in model.parameters())


def test_variance_argmax_relu_agree_with_numpy_and_torch():
    rng = np.random.default_rng(1)
    for n in (1, 2, 17):
        values = rng.normal(size=n).tolist()
        assert math.isclose(ex00.reference_variance(values), float(np.var(values)), rel_tol=1e-12, abs_tol=1e-15)
        assert ex00.reference_argmax(values) == int(np.argmax(values))
    assert ex00.reference_argmax([1, 3, 3, 0]) == int(np.argmax([1, 3, 3, 0])) == 1  # the first of a tie
    x = torch.from_numpy(rng.normal(size=(3, 4))).T
    assert torch.equal(ex00.reference_relu(x), torch.relu(x))
    with pytest.raises(ValueError):
        ex00.reference_variance([])
    with pytest.raises(ValueError):
        ex00.reference_argmax([])


def test_pairwise_sum_adds_in_halves_and_is_accurate():
    a, b, c, d, e = 1e16, 1.0, -1e16, 1.0, 3.0
    assert ex00.reference_pairwise_sum([a, b, c, d, e]) == (a + b) + (c + (d + e))
    assert ex00.reference_pairwise_sum([]) == 0.0 and ex00.reference_pairwise_sum([2]) == 2.0
    assert isinstance(ex00.reference_pairwise_sum([2]), float)
    rng = np.random.default_rng(2)
    values = (rng.uniform(0, 1, size=2**16)).tolist()
    exact = math.fsum(values)
    pairwise_error = abs(ex00.reference_pairwise_sum(values) - exact)
    naive_error = abs(pairwise_left_to_right(values) - exact)
    assert pairwise_error < naive_error / 10  # log2(n) against n: far smaller on 65536 values


def test_merge_stats_equals_the_stats_of_the_union():
    rng = np.random.default_rng(3)
    for _ in range(50):
        a = (rng.normal(size=int(rng.integers(0, 20))) * 3 + rng.normal() * 10).tolist()
        b = (rng.normal(size=int(rng.integers(0, 20))) + rng.normal() * 10).tolist()
        n, mean, m2 = ex00.reference_merge_stats(ex00.stats_of(a), ex00.stats_of(b))
        n_u, mean_u, m2_u = ex00.stats_of(a + b)
        assert n == n_u and math.isclose(mean, mean_u, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(m2, m2_u, rel_tol=1e-10, abs_tol=1e-10)
    stream = [(rng.normal(size=int(rng.integers(1, 9))) + 1e8).tolist() for _ in range(20)]
    running = (0, 0.0, 0.0)
    for batch in stream:  # one batch at a time, far from zero: stays accurate
        running = ex00.reference_merge_stats(running, ex00.stats_of(batch))
    everything = [v for batch in stream for v in batch]
    assert running[0] == len(everything)
    assert math.isclose(running[2] / running[0], float(np.var(everything)), rel_tol=1e-6)
