"""Checks for chapter 01's exercises (``exercises/ex01_tensors.py``).

Every check draws random shapes, strides and values, computes the expected answer with
``course_lib.tensor`` (the reference the notebook teaches), and names the input, the
expected value and the learner's value when they differ; where a wrong answer matches a
typical mistake, the message names the mistake. The two stretch exercises (``unbroadcast``,
``unfold_strides``) go past the chapter: their references are not shown in the notebook.
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
    transpose_layout,
    unbroadcast,
    unfold_layout,
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

@exercise("ex01.contiguous_strides", points=1, reference="course_lib.tensor.contiguous_strides",
          hints=("Row-major means the last dimension's elements sit next to each other (stride 1), and one "
                 "step along any earlier dimension jumps over everything inside the dimensions after it.",
                 "Walk the shape from the last dimension to the first, keeping a running product of the sizes "
                 "you have passed: each stride is that product before you multiply in its own size.",
                 "Fill a list from the right (or append and reverse at the end), and return a tuple with one "
                 "int per dimension; a 1-D shape (n,) has strides (1,)."))
def _(fn, rng):
    cases = [(4,), (2, 3), (2, 3, 4)] + [random_shape(rng, 1, 5, 6) for _ in range(30)]
    for shape in cases:
        what = f"contiguous_strides({shape})"
        actual, expected = as_int_tuple(fn(shape), what), contiguous_strides(shape)
        if actual != expected and actual == contiguous_strides(shape[::-1])[::-1]:
            raise GradeError(f"{what}: expected {expected}, got {actual}: you walked the shape from the first "
                             f"dimension; in row-major order the LAST dimension has stride 1")
        expect_equal(actual, expected, what)


@exercise("ex01.flat_index", points=1, reference="course_lib.tensor.flat_index",
          hints=("Start at the offset (where element (0, 0, ...) lives); each index moves you that many strides "
                 "along its own dimension.",
                 "Pair each index with its dimension's stride (zip), multiply each pair, add the products up, "
                 "and don't forget the offset."))
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
        expected = flat_index(index, strides, offset)
        if offset and actual == expected - offset:
            raise GradeError(f"{what}: expected {expected}, got {actual}: you left out the offset "
                             f"(where element (0, 0, ...) lives)")
        expect_equal(actual, expected, what)


@exercise("ex01.is_contiguous", points=2, reference="course_lib.tensor.is_contiguous_layout",
          hints=("Contiguous means: the strides are exactly the row-major strides of the shape, except that a "
                 "dimension of size 1 is never stepped along, so its stride may be anything.",
                 "Walk from the last dimension to the first with the stride a row-major layout would have there "
                 "(1 at first, then times each size you pass) and compare.",
                 "Skip size-1 dimensions entirely: don't compare their stride, and multiplying by their size "
                 "changes nothing anyway."))
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
        expected = is_contiguous_layout(shape, strides)
        if bool(actual) != expected:
            strict = all(s == c for s, c in zip(strides, contiguous_strides(shape)))
            why = ""
            if bool(actual) == strict and 1 in shape:
                why = (": a dimension of size 1 is never stepped along, so its stride may be anything "
                       "(PyTorch's rule)")
            raise GradeError(f"{what}: expected {expected}, got {bool(actual)}{why}")


@exercise("ex01.transpose_strides", points=1,
          reference=("course_lib.tensor.transpose_layout", "course_lib.tensor.normalize_dim"),
          hints=("A transpose moves no element: it only swaps which dimension is which, so the two sizes and "
                 "the two strides trade places.",
                 "Negative dims count from the end (-1 is the last): turn them into 0 .. ndim - 1 before "
                 "using them as positions, then swap in lists and convert back to tuples."))
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
        got = (as_int_tuple(new_shape, what), as_int_tuple(new_strides, what))
        expected = transpose_layout(shape, strides, d0, d1)
        if got != expected and got[0] == expected[0] and got[1] == strides and strides != expected[1]:
            raise GradeError(f"{what}: expected {expected}, got {got}: you swapped the sizes but not the "
                             f"strides; the elements stay where they are, so the strides travel with their sizes")
        expect_equal(got, expected, what)


@exercise("ex01.broadcast_shapes", points=2, reference="course_lib.tensor.broadcast_shapes",
          hints=("Shapes line up at the right: the last sizes are compared first, and a shape with fewer "
                 "dimensions behaves as if it had extra size-1 dimensions in front.",
                 "Pad the shorter shape on the LEFT with 1s until both have the same length, then decide each "
                 "dimension: equal sizes stay, a 1 takes the other size.",
                 "Any other pair of sizes (say 3 and 4) is an error: raise ValueError naming the dimension and "
                 "both sizes; () is a scalar and broadcasts with anything."))
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
          reference="course_lib.tensor.gather_view",
          hints=("Visit every index of `shape` in row-major order (the last position changes fastest) and read "
                 "the element each one points at; the positions in storage are wherever the strides say.",
                 "itertools.product over one range per dimension yields the indices in exactly that order; "
                 "flat_index, which you wrote above, turns each index into a storage position.",
                 "Allocate the output once with storage's dtype and math.prod(shape) slots, and only read "
                 "`storage` (never write to it)."))
def _(fn, rng):
    mistakes = {
        "run": "you copied one run of storage from the offset on, but the strides say where each element lives",
        "offset": "you left out the offset (where element (0, 0, ...) lives)",
        "column": "that is column-major order (first index fastest); row-major means the LAST index changes fastest",
    }
    failures = []  # (what, actual, expected, what each typical mistake would have returned)
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
        if actual.ndim != 1 or actual.shape != expected.shape:
            run = storage[view.offset:view.offset + expected.size]
            named = f": {mistakes['run']}" if np.array_equal(actual, run) else ""
            raise GradeError(f"{what}: expected a flat 1-D array of {expected.size} values, "
                             f"got shape {actual.shape}{named}")
        if not np.array_equal(actual, expected):
            failures.append((what, actual, expected, {
                "run": storage[view.offset:view.offset + expected.size],
                "offset": Tensor(storage, view.shape, view.strides, 0).numpy().reshape(-1),
                "column": view.permute(*reversed(range(view.ndim))).numpy().reshape(-1),
            }))
    if not failures:
        return
    what, actual, expected, _ = failures[0]
    for key, mistake in mistakes.items():  # named only when it explains every wrong answer
        if all(np.array_equal(a, others[key]) for _, a, _, others in failures):
            raise GradeError(f"{what}: {int(np.sum(actual != expected))} of {expected.size} values differ from "
                             f"the expected result: {mistake}")
    expect_equal(actual, expected, what)


@exercise("ex01.matmul_loops", points=2, reference="course_lib.tensor.matmul",
          hints=("Each output element out[i, j] is the dot product of row i of a with column j of b.",
                 "Three nested loops: i over the rows of a, j over the columns of b, and p over the dimension "
                 "they share, accumulating products into a running total.",
                 "Compare a's number of columns with b's number of rows before any arithmetic and raise "
                 "ValueError naming both shapes when they differ."))
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


@exercise("ex01.bytes_for", points=1, reference="course_lib.tensor.parameter_bytes",
          hints=("Each dtype has a fixed number of bits per value (section 9's table): bytes = values times "
                 "bits, divided by 8.",
                 "int4 is half a byte, so an odd count leaves one half-used byte that still has to be stored: "
                 "round up, and return an int (math.ceil returns one)."))
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


# --------------------------------------------------------------------------------------
# Stretch exercises: past what the chapter shows (the notebook does not show their references)

def _unbroadcast_cases(rng: np.random.Generator) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, gradient shape) pairs: the input broadcast to a random larger shape."""
    cases = [((3, 1), (2, 3, 4)), ((), (2, 3)), ((4,), (4,)), ((1, 1), (3, 2)), ((2, 1, 3), (5, 2, 4, 3)),
             ((1,), (4,))]
    for _ in range(25):
        shape = random_shape(rng, min_ndim=0, max_ndim=3, max_size=4, p_one=0.45)
        grown = [int(rng.integers(2, 5)) if n == 1 and rng.random() < 0.7 else n for n in shape]
        lead = [int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 3)))]
        cases.append((shape, tuple(lead + grown)))
    return cases


def _unbroadcast_shape_mistake(actual: tuple[int, ...], shape: tuple[int, ...], grad_shape: tuple[int, ...]) -> str:
    n_lead = len(grad_shape) - len(shape)
    stretched = [d for d, n in enumerate(shape) if n == 1 and grad_shape[n_lead + d] != 1]
    if actual == grad_shape:
        return ("you returned a gradient of the broadcast shape; sum it down to the input's shape (every copy "
                "of an input element adds its gradient)")
    if stretched and actual == tuple(n for d, n in enumerate(shape) if d not in stretched):
        return ("the size-1 dimensions that broadcasting stretched disappeared: sum over them but keep them, "
                "with size 1 (keepdims)")
    if n_lead and actual == grad_shape[:n_lead] + shape:
        return "the leading dimensions that broadcasting added on the left are still there: sum them away too"
    return "compare the result's shape with the input's"


@exercise("ex01.unbroadcast", points=3, stretch=True, reference="course_lib.tensor.unbroadcast",
          hints=("Broadcasting copied each input element to many output positions; the gradient of that element "
                 "is the SUM of the gradient over all of its copies.",
                 "There are two kinds of copies: leading dimensions that broadcasting added on the left (sum them "
                 "away), and dimensions where the input has size 1 but grad does not (sum them, keeping size 1).",
                 "Refuse a shape that does not broadcast to grad's shape first (ValueError); NumPy's sum takes "
                 "an axis (or a tuple of axes) and keepdims."))
def _(fn, rng):
    for shape, grad_shape in _unbroadcast_cases(rng):
        grad = np.round(rng.normal(size=grad_shape), 3)
        given = grad.copy()
        what = f"unbroadcast(grad of shape {grad_shape}, shape={shape})"
        actual = fn(given, shape)
        if not np.array_equal(given, grad):
            raise GradeError(f"{what}: your function changed `grad`; expected it to only read it")
        expected = unbroadcast(Tensor(grad.reshape(-1), grad.shape), shape).numpy()
        try:
            actual = np.asarray(actual, dtype=np.float64)
        except (TypeError, ValueError):
            raise GradeError(f"{what}: expected an array of shape {shape}, got {type(actual).__name__}") from None
        if actual.shape != expected.shape:
            raise GradeError(f"{what}: expected shape {shape}, got shape {actual.shape}: "
                             f"{_unbroadcast_shape_mistake(actual.shape, shape, grad_shape)}")
        copies = int(np.prod(grad_shape)) // max(int(np.prod(shape)), 1)
        if copies > 1 and not np.allclose(actual, expected, rtol=1e-9, atol=1e-9) \
                and np.allclose(actual * copies, expected, rtol=1e-9, atol=1e-9):
            raise GradeError(f"{what}: expected the sums over the {copies} copies of each element, got their "
                             f"mean: a gradient adds up over every copy (sum, not mean)")
        expect_close(actual, expected, what, atol=1e-9, rtol=1e-9)
    for shape, grad_shape in [((3,), (2, 4)), ((2, 1, 4), (2, 4)), ((2,), (1,)), ((2, 5), (2, 4))]:
        what = f"unbroadcast(grad of shape {grad_shape}, shape={shape})"
        grad = rng.normal(size=grad_shape)
        expect_raises(ValueError, lambda: fn(grad, shape), what,
                      f"an input of shape {shape} cannot have been broadcast to {grad_shape}")


def _unfold_mistake(got: tuple, expected: tuple, shape: tuple[int, ...], strides: tuple[int, ...], dim: int,
                    size: int, step: int) -> str:
    (got_shape, got_strides), (exp_shape, exp_strides) = got, expected
    d = dim % len(shape)
    if len(got_shape) != len(exp_shape) or len(got_strides) != len(exp_strides):
        return ("the result has exactly one dimension more than the input: `dim` becomes the number of windows "
                "and the window is a new last dimension")
    if got_shape[d] == exp_shape[d] - 1 and got_shape[:d] + got_shape[d + 1:] == exp_shape[:d] + exp_shape[d + 1:]:
        return ("one window too few: windows start at 0, step, 2*step, ... for as long as the whole window fits, "
                "and the one that starts at 0 counts too")
    if got_shape[d] != exp_shape[d]:
        return (f"{exp_shape[d]} windows fit along dimension {dim} (size {shape[d]}), your shape says "
                f"{got_shape[d]}: count the starts whose window still fits")
    if got_shape != exp_shape:
        return "the window is the new LAST dimension (as in torch's unfold); the other sizes stay where they were"
    if step > 1 and got_strides[d] == strides[d] and exp_strides[d] != strides[d]:
        return (f"consecutive windows start {step} positions apart along dimension {dim}, so moving to the next "
                f"window jumps {step} of that dimension's strides")
    if got_strides[-1] != exp_strides[-1]:
        return (f"one step inside a window is one step along dimension {dim} of the input (stride {strides[d]}); "
                f"the input need not be contiguous")
    return "compare the strides dimension by dimension"


@exercise("ex01.unfold_strides", points=3, stretch=True,
          reference="course_lib.tensor.unfold_layout",
          hints=("Window w along `dim` starts at position w * step and covers `size` consecutive positions; the "
                 "other dimensions keep their sizes and strides.",
                 "Count the starts 0, step, 2*step, ... whose window still ends inside the dimension. Moving to "
                 "the next window moves `step` positions along dim; moving inside a window moves one position.",
                 "Turn a negative dim into a position first. The window is a new LAST dimension: which stride "
                 "does one step along dim take in the input (which need not be contiguous)?"))
def _(fn, rng):
    cases = [((5,), (1,), 0, 3, 2), ((4, 5), (5, 1), 1, 3, 1), ((4, 5), (1, 4), 0, 2, 2), ((3, 6), (6, 1), -1, 6, 4)]
    for _ in range(40):
        shape = random_shape(rng, 1, 4, 8, p_one=0.1)
        strides = tuple(int(s) for s in rng.integers(0, 40, size=len(shape)))
        dim = int(rng.integers(-len(shape), len(shape)))
        size = int(rng.integers(1, shape[dim] + 1))
        cases.append((shape, strides, dim, size, int(rng.integers(1, 4))))
    for shape, strides, dim, size, step in cases:
        what = f"unfold_strides(shape={shape}, strides={strides}, dim={dim}, size={size}, step={step})"
        actual = fn(shape, strides, dim, size, step)
        try:
            new_shape, new_strides = actual
        except (TypeError, ValueError):
            raise GradeError(f"{what}: expected a pair (new_shape, new_strides), got {actual!r}") from None
        got = (as_int_tuple(new_shape, what), as_int_tuple(new_strides, what))
        expected = unfold_layout(shape, strides, dim, size, step)
        if got != expected:
            raise GradeError(f"{what}: expected {expected}, got {got}: "
                             f"{_unfold_mistake(got, expected, shape, strides, dim, size, step)}")
    shape = random_shape(rng, 2, 3, 6, p_one=0.0)
    strides = contiguous_strides(shape)
    dim = int(rng.integers(0, len(shape)))
    too_big = shape[dim] + int(rng.integers(1, 3))
    expect_raises(ValueError, lambda: fn(shape, strides, dim, too_big, 1),
                  f"unfold_strides(shape={shape}, strides={strides}, dim={dim}, size={too_big}, step=1)",
                  f"a window of {too_big} does not fit in dimension {dim} of size {shape[dim]}")
    expect_raises(ValueError, lambda: fn(shape, strides, dim, 1, 0),
                  f"unfold_strides(shape={shape}, strides={strides}, dim={dim}, size=1, step=0)",
                  "step 0 never moves on to a next window")
