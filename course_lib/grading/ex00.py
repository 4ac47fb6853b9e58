"""Checks for chapter 00's warm-up exercises: they exist to show how grading works."""

from __future__ import annotations

import math

from course_lib.grading.registry import exercise, expect_close, expect_equal


def reference_count_parameters(shapes: list[tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes)


@exercise("ex00.count_parameters", points=1,
          hint="A weight of shape (a, b) holds a*b numbers; math.prod multiplies a shape out. "
               "Add them up over all shapes (a bias of shape (n,) holds n).")
def _(fn, rng):
    cases = [[(768, 3072), (3072,)], [(5,)], []]
    cases += [[tuple(int(n) for n in rng.integers(1, 50, size=rng.integers(1, 4)))
               for _ in range(rng.integers(1, 6))] for _ in range(20)]
    for shapes in cases:
        expect_equal(fn(list(shapes)), reference_count_parameters(shapes), f"count_parameters({shapes})")


@exercise("ex00.dot", points=1,
          hint="Multiply the numbers at the same position and add up the products; "
               "two empty lists have dot product 0.0.")
def _(fn, rng):
    for n in [0, 1, *rng.integers(2, 40, size=20)]:
        a, b = rng.normal(size=int(n)).tolist(), rng.normal(size=int(n)).tolist()
        expected = sum(x * y for x, y in zip(a, b))
        expect_close(float(fn(a, b)), expected, f"dot of two random lists of length {n}", atol=1e-9)
