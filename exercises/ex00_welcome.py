"""Chapter 00 warm-up: small functions to try the grading loop.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex00.count_parameters")`` — the grader runs a copy of this file
  in a fresh process, so just save it and run the cell again (no kernel restart);
* in a terminal: ``python -m course_lib.grade ex00``.

The checks call your functions on random inputs and compare with the course's reference, so
an answer that only works for the docstring's example will not pass. A failed check names
the input, what was expected and what your function returned, and shows a first hint; each
further failed ``check`` shows the next one. ``pairwise_sum`` and ``merge_stats``, at the end,
are stretch exercises: they go past what the chapter shows.

This file may import ``math``, ``numpy`` and ``torch``; importing ``course_lib`` (the
course's own implementation, the answer key) scores 0.
"""

from __future__ import annotations

import math

import torch


def count_parameters(shapes: list[tuple[int, ...]]) -> int:
    """Total number of values in tensors of the given shapes.

    Example: ``count_parameters([(768, 3072), (3072,)]) == 2_362_368`` — the weight and the
    bias of one GPT-2 MLP layer. An empty list holds 0 values.

    Hint: how many values does a 2 x 3 matrix hold?
    """
    raise NotImplementedError


def dot(a: list[float], b: list[float]) -> float:
    """The dot product of two equally long lists of numbers: Σ_i a[i]·b[i].

    Example: ``dot([1.0, 2.0], [3.0, 4.0]) == 11.0``; two empty lists give ``0.0``. Use a
    plain loop (no numpy): every matrix product in this course is many of these.
    """
    raise NotImplementedError


def variance(values: list[float]) -> float:
    """The population variance of ``values``: the mean of the squared distances from the mean.

    ``values``: a list of floats. Returns a float. Divide by the number of values n (the
    *population* variance, the one LayerNorm uses), not by n - 1. Raise ``ValueError`` for an
    empty list: it has no mean.

    Examples: ``variance([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == 4.0`` (the mean is 5);
    one value has variance ``0.0``. The answer must stay accurate for values far from zero:
    ``variance([1e8 + 1, 1e8 + 2, 1e8 + 3])`` is 2/3.

    Hint: which do you need before you can measure distances from the mean?
    """
    raise NotImplementedError


def argmax(values: list[float]) -> int:
    """The position (counted from 0) of the largest value; the first such position on a tie.

    ``values``: a list of numbers. Returns an int. Raise ``ValueError`` for an empty list.
    Greedy decoding (chapter 06) picks each next token like this, from a row of scores.

    Examples: ``argmax([0.1, 2.5, -1.0]) == 1``; ``argmax([3, 1, 3]) == 0`` (a tie: the first);
    ``argmax([-5.0, -2.0, -9.0]) == 1``.

    Hint: keep track of where the best value so far is, not only what it is.
    """
    raise NotImplementedError


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU, max(x, 0) elementwise: negative values become 0, the others pass through.

    ``x``: a float tensor (float32 or float64) of any shape, possibly non-contiguous.
    Returns a NEW tensor with ``x``'s shape and dtype; ``x`` itself must not change (the
    grader checks). Use torch operations, no Python loop over the elements; ``torch.relu``
    exists, but write it yourself here (later chapters switch such shortcuts off).

    Example: ``relu(torch.tensor([-1.0, 0.0, 2.5]))`` is ``tensor([0.0, 0.0, 2.5])``.

    Hint: a comparison of a tensor with a number gives a tensor of True/False.
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Stretch exercises: they go past what the chapter shows.


def pairwise_sum(values: list[float]) -> float:
    """The sum of ``values``, added in halves: the sum of the first half plus the sum of the
    second half, each half summed the same way.

    The first half is the first ``len(values) // 2`` values, the second half the rest; ``[]``
    sums to ``0.0`` and ``[x]`` to ``x``. Returns a float that must equal the course's bit for
    bit. Float addition is not associative: the same numbers added in another order (left to
    right, ``math.fsum``, another split) can differ in the last digits, and the check says so.

    Why: adding n floats left to right can gather rounding error in proportion to n; adding
    in halves keeps it in proportion to log2(n). NumPy and GPUs add in blocks and trees for
    that reason, which is also why a GPU's sum differs from the CPU's in the last digits.

    Examples: ``pairwise_sum([1.0, 2.0, 3.0])`` adds ``1.0 + (2.0 + 3.0)``, ``6.0``;
    ``pairwise_sum([0.1] * 10)`` is ``1.0``, while adding left to right gives
    ``0.9999999999999999``.

    Hint: a function may call itself on a shorter list.
    """
    raise NotImplementedError


def merge_stats(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Combine the statistics of two batches of numbers into those of both batches together.

    ``a`` and ``b`` are ``(count, mean, m2)`` of two batches, where ``m2`` is the sum of the
    squared deviations from that batch's mean (its variance is ``m2 / count``). Return
    ``(count, mean, m2)`` of all the numbers together, an ``(int, float, float)`` tuple,
    without seeing the numbers. A batch may be empty (count 0, mean and m2 0.0), and two
    empty batches merge into an empty one. Stay accurate when the means are far from zero
    (say 1e8).

    Running statistics (BatchNorm, the mean and variance of a dataset too big for memory or
    split over several GPUs) are merged like this, one batch at a time.

    Example: ``[1.0, 2.0, 3.0]`` has ``(3, 2.0, 2.0)`` and ``[5.0]`` has ``(1, 5.0, 0.0)``;
    together, ``[1.0, 2.0, 3.0, 5.0]`` has ``(4, 2.75, 8.75)``.

    Hint: measure both batches' deviations from the new mean, and expand the squares.
    """
    raise NotImplementedError
