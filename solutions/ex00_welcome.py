"""Chapter 00 warm-up: two small functions to try the grading loop.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex00.count_parameters")`` — runs in a fresh process, so just save
  this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex00``.

The checks call your function on random inputs and compare with the course's reference.
"""

from __future__ import annotations


def count_parameters(shapes: list[tuple[int, ...]]) -> int:
    """Total number of values in tensors of the given shapes.

    Example: ``count_parameters([(768, 3072), (3072,)]) == 2_362_368`` — the weight and the
    bias of one GPT-2 MLP layer. An empty list holds 0 values.

    Hint: ``math.prod(shape)`` is the number of values in one tensor.
    """
    total = 0
    for shape in shapes:
        count = 1
        for size in shape:
            count *= size
        total += count
    return total


def dot(a: list[float], b: list[float]) -> float:
    """The dot product of two equally long lists of numbers: ``sum(a[i] * b[i])``.

    Example: ``dot([1.0, 2.0], [3.0, 4.0]) == 11.0``. Use a plain loop (no numpy): every
    matrix product in this course is many of these.
    """
    total = 0.0
    for x, y in zip(a, b):
        total += x * y
    return total
