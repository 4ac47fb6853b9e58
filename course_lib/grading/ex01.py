"""Checks for chapter 01's exercises (``exercises/ex01_tensors.py``).

Every check draws random shapes, strides and values, computes the expected answer with
``course_lib.tensor`` (the reference the notebook teaches), and names the input, the
expected value and the learner's value when they differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.registry import GradeError, exercise, expect_close, expect_equal, expect_raises
from course_lib.tensor import (
    DTYPES,
    Tensor,
    broadcast_shapes,
    contiguous_strides,
    flat_index,
    is_contiguous_layout,
    matmul,
    parameter_bytes,
)


# --------------------------------------------------------------------------------------
# Random inputs

def random_shape(rng: np.random.Generator, min_ndim: int = 1, max_ndim: int = 4, max_size: int = 5,
                 p_one: float = 0.2) -> tuple[int, ...]:
    """A shape with sizes 1..max_size; each size is 1 with probability ``p_one``."""
    ndim = int(rng.integers(min_ndim, max_ndim + 1))
    return tuple(1 if rng.random() < p_one else int(rng.integers(2, max_size + 1)) for _ in range(ndim))


def random_view(rng: np.random.Generator, storage: np.ndarray, shape: tuple[int, ...]) -> Tensor:
    """A random view (permute, slice, expand, offset) of a contiguous tensor over ``storage``."""
    t = Tensor(storage, shape, offset=int(storage.size - np.prod(shape)))  # a non-zero offset
    if t.ndim >= 2 and rng.random() < 0.7:
        t = t.permute(*rng.permutation(t.ndim).tolist())
    if rng.random() < 0.6:
        index = []
        for size in t.shape:
            start = int(rng.integers(0, size))
            step = int(rng.integers(1, 3))
            index.append(slice(start, None, step))
        t = t[tuple(index)]
    if rng.random() < 0.4:
        sizes = [int(rng.integers(2, 4)) if n == 1 else n for n in t.shape]
        t = t.expand(*([2] if rng.random() < 0.5 else []), *sizes)
    return t


def as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """The learner's answer as a tuple of Python ints, or a GradeError saying why not."""
    try:
        items = tuple(value)
        if not all(float(v) == int(v) for v in items):
            raise TypeError("not whole numbers")
        return tuple(int(v) for v in items)
    except (TypeError, ValueError) as err:
        raise GradeError(f"{what}: expected a tuple of ints, got {value!r} ({err})") from None


# --------------------------------------------------------------------------------------
# Checks, in the order the notebook introduces them

@exercise("ex01.contiguous_strides", points=1,
          hint="Walk the shape from the last dimension to the first: the last stride is 1, and each "
               "earlier stride is the next stride times the next size.")
def _(fn, rng):
    cases = [(4,), (2, 3), (2, 3, 4)] + [random_shape(rng, 1, 5, 6) for _ in range(30)]
    for shape in cases:
        what = f"contiguous_strides({shape})"
        expect_equal(as_int_tuple(fn(shape), what), contiguous_strides(shape), what)


@exercise("ex01.flat_index", points=1,
          hint="Multiply each index by its dimension's stride, add them up, then add the offset.")
def _(fn, rng):
    for _ in range(30):
        shape = random_shape(rng)
        strides = tuple(int(s) for s in rng.integers(0, 30, size=len(shape)))
        index = tuple(int(rng.integers(0, n)) for n in shape)
        offset = int(rng.integers(0, 10))
        what = f"flat_index(index={index}, strides={strides}, offset={offset})"
        actual = fn(index, strides, offset)
        try:
            actual = int(actual)
        except (TypeError, ValueError):
            raise GradeError(f"{what}: expected an int, got {actual!r}") from None
        expect_equal(actual, flat_index(index, strides, offset), what)


@exercise("ex01.is_contiguous", points=2,
          hint="Compare with contiguous strides from the last dimension backwards, but skip dimensions "
               "of size 1: their stride is never used, so any value is fine there.")
def _(fn, rng):
    cases = [((2, 3), (3, 1)), ((2, 3), (1, 2)), ((3, 1), (1, 7)), ((1, 4), (99, 1)), ((2, 2), (2, 2))]
    for _ in range(40):
        shape = random_shape(rng, p_one=0.35)
        kind = rng.integers(0, 3)
        strides = list(contiguous_strides(shape))
        if kind == 1:  # contiguous, but size-1 dimensions carry arbitrary strides
            strides = [int(rng.integers(0, 50)) if n == 1 else s for n, s in zip(shape, strides)]
        elif kind == 2:  # a permutation or a doubled stride: usually not contiguous
            if rng.random() < 0.5:
                strides = [strides[i] for i in rng.permutation(len(shape))]
            else:
                d = int(rng.integers(0, len(shape)))
                strides[d] *= 2
        cases.append((shape, tuple(strides)))
    for shape, strides in cases:
        what = f"is_contiguous(shape={shape}, strides={strides})"
        actual = fn(shape, strides)
        if not isinstance(actual, (bool, np.bool_)):
            raise GradeError(f"{what}: expected True or False, got {actual!r}")
        expect_equal(bool(actual), is_contiguous_layout(shape, strides), what)


@exercise("ex01.transpose_strides", points=1,
          hint="Turn negative dims into positive ones (dim + ndim), then swap the two sizes and the "
               "two strides. No element moves.")
def _(fn, rng):
    for _ in range(30):
        shape = random_shape(rng, min_ndim=2)
        strides = tuple(int(s) for s in rng.integers(0, 40, size=len(shape)))
        ndim = len(shape)
        d0, d1 = (int(d) for d in rng.integers(-ndim, ndim, size=2))
        what = f"transpose_strides(shape={shape}, strides={strides}, dim0={d0}, dim1={d1})"
        actual = fn(shape, strides, d0, d1)
        try:
            new_shape, new_strides = actual
        except (TypeError, ValueError):
            raise GradeError(f"{what}: expected a pair (new_shape, new_strides), got {actual!r}") from None
        reference = Tensor(np.zeros(1 + sum((n - 1) * s for n, s in zip(shape, strides))), shape, strides)
        expected = reference.transpose(d0, d1)
        expect_equal((as_int_tuple(new_shape, what), as_int_tuple(new_strides, what)),
                     (expected.shape, expected.strides), what)


@exercise("ex01.broadcast_shapes", points=2,
          hint="Pad the shorter shape with 1s on the LEFT, then go dimension by dimension: equal sizes "
               "stay, a 1 stretches to the other size, anything else is a ValueError.")
def _(fn, rng):
    cases = [((2, 1, 3), (4, 1)), ((), (3,)), ((5, 4), (1,)), ((2, 3), (4,))]
    for _ in range(40):
        a = list(random_shape(rng, min_ndim=0, p_one=0.3))
        b = [1 if rng.random() < 0.4 else n for n in a][int(rng.integers(0, len(a) + 1)):]
        if b and rng.random() < 0.3:  # make dimension -d clash: two different sizes, both >= 2
            d = int(rng.integers(1, len(b) + 1))
            a[-d] = int(rng.integers(2, 5))
            b[-d] = a[-d] + int(rng.integers(1, 3))
        cases.append((tuple(b), tuple(a)) if rng.random() < 0.5 else (tuple(a), tuple(b)))
    for a, b in cases:
        what = f"broadcast_shapes({a}, {b})"
        try:
            expected = broadcast_shapes(a, b)
        except ValueError:
            expected = None
        if expected is None:
            expect_raises(ValueError, lambda: fn(a, b), what, "these shapes cannot broadcast")
            continue
        try:
            actual = fn(a, b)
        except ValueError as err:
            raise GradeError(f"{what}: expected {expected}, but your function raised ValueError({err})") from None
        expect_equal(as_int_tuple(actual, what), expected, what)


@exercise("ex01.contiguous_copy", points=2,
          hint="Loop over every index of `shape` in row-major order (itertools.product of the ranges) "
               "and read storage[offset + sum(index * stride)] for each.")
def _(fn, rng):
    for _ in range(25):
        shape = random_shape(rng, min_ndim=1, max_ndim=4, max_size=4)
        storage = np.round(rng.normal(size=int(np.prod(shape)) + int(rng.integers(0, 5))), 3).astype(np.float32)
        view = random_view(rng, storage, shape)
        given = storage.copy()
        what = (f"contiguous_copy(storage of {storage.size} random values, shape={view.shape}, "
                f"strides={view.strides}, offset={view.offset})")
        actual = fn(given, view.shape, view.strides, view.offset)
        if not np.array_equal(given, storage):
            raise GradeError(f"{what}: your function changed `storage`; expected it to only read it")
        expected = view.numpy().reshape(-1)
        actual = np.asarray(actual)
        if actual.ndim != 1:
            raise GradeError(f"{what}: expected a flat 1-D array of {expected.size} values, "
                             f"got shape {actual.shape}")
        expect_equal(actual, expected, what)


@exercise("ex01.matmul_loops", points=2,
          hint="out[i, j] is the dot product of row i of a and column j of b: three nested loops "
               "(i over rows of a, j over columns of b, p over the shared dimension). Check "
               "a.shape[1] == b.shape[0] first and raise ValueError if not.")
def _(fn, rng):
    cases = [(1, 1, 1), (2, 3, 4), (16, 16, 16)]
    cases += [tuple(int(n) for n in rng.integers(1, 8, size=3)) for _ in range(12)]
    for m, k, n in cases:
        a, b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
        what = f"matmul_loops(a of shape {(m, k)}, b of shape {(k, n)}) on random values"
        expected = matmul(Tensor(a.reshape(-1), a.shape), Tensor(b.reshape(-1), b.shape)).numpy()
        try:
            actual = fn(a.copy(), b.copy())
        except ValueError as err:
            raise GradeError(f"{what}: expected a result of shape {(m, n)}, but your function raised "
                             f"ValueError({err})") from None
        expect_close(np.asarray(actual, dtype=np.float64), expected, what, atol=1e-9, rtol=1e-9)
    m, k, k2, n = (int(x) for x in rng.integers(2, 6, size=4))
    k2 = k2 if k2 != k else k + 1
    what = f"matmul_loops(a of shape {(m, k)}, b of shape {(k2, n)})"
    a, b = rng.normal(size=(m, k)), rng.normal(size=(k2, n))
    expect_raises(ValueError, lambda: fn(a, b), what, f"the inner dimensions differ ({k} vs {k2})")


@exercise("ex01.bytes_for", points=1,
          hint="float32 is 4 bytes, float16 and bfloat16 2, int8 1, and int4 half a byte: two values "
               "share a byte, so round an odd count up (math.ceil).")
def _(fn, rng):
    names = list(DTYPES)
    cases = [(124_439_808, name) for name in names] + [(3, "int4"), (1, "int4")]
    cases += [(int(rng.integers(1, 2_000_000_000)), names[int(rng.integers(0, len(names)))]) for _ in range(30)]
    for n_params, dtype in cases:
        what = f"bytes_for({n_params}, {dtype!r})"
        actual = fn(n_params, dtype)
        if isinstance(actual, float) and not actual.is_integer():
            raise GradeError(f"{what}: expected a whole number of bytes, got {actual!r}")
        expect_equal(int(actual), parameter_bytes(n_params, dtype), what)
