"""Chapter 01 exercises: the bookkeeping behind every tensor library.

A tensor is a flat ``storage`` buffer plus ``shape``, ``strides`` (in elements) and an
``offset``; the element at ``index`` lives at
``storage[offset + sum(index[d] * strides[d] for every dimension d)]``.
These exercises have you write that bookkeeping yourself, with plain Python (and NumPy
arrays only as containers). Don't ask torch or NumPy for the answer (``np.broadcast_shapes``,
``Tensor.unfold``, ``as_strided``...): the point is to work it out.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/01_tensors.ipynb``: ``check("ex01.contiguous_strides")`` (one
  cell per exercise) — grading runs in a fresh process, so save this file and run the cell
  again, no kernel restart needed;
* in a terminal: ``python -m course_lib.grade ex01`` (all of them) or
  ``python -m course_lib.grade ex01.matmul_loops`` (one).

The checks call your functions on random inputs and compare with ``course_lib.tensor``,
so an answer that only works for the examples will not pass. A failed check shows a hint;
``check(key)`` again shows the next one. The last two functions are stretch exercises: they
go past what the chapter shows.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major ("C order", contiguous) strides, in elements, for ``shape``.

    ``shape``: a tuple of sizes, each >= 1, e.g. ``(2, 3, 4)``.
    Returns a tuple of ints, one per dimension.

    Example: ``contiguous_strides((2, 3, 4)) == (12, 4, 1)`` — moving one step along the
    last dimension moves 1 element in storage; along the middle one, a whole row of 4;
    along the first, a whole 3x4 block of 12.

    Hint: which dimension's elements sit next to each other in memory?
    """
    raise NotImplementedError


def flat_index(index: tuple[int, ...], strides: tuple[int, ...], offset: int = 0) -> int:
    """Position in storage of the element at ``index``.

    ``index`` and ``strides``: tuples with one int per dimension (same length);
    ``offset``: where element ``(0, 0, ...)`` lives. Returns an int.

    Example: ``flat_index((1, 2), strides=(3, 1), offset=0) == 5`` (row 1 starts at 3,
    plus 2). With ``offset=10`` the answer is 15.

    Hint: each index moves you that many strides along its own dimension.
    """
    raise NotImplementedError


def is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True when a tensor of ``shape`` with ``strides`` is laid out row-major without gaps.

    ``shape``: sizes, each >= 1; ``strides``: one int per dimension. Returns a bool.
    Use PyTorch's rule: dimensions of size 1 are ignored, because you never step
    along them, so their stride can be anything.

    Examples: ``is_contiguous((2, 3), (3, 1))`` is True; ``is_contiguous((2, 3), (1, 2))``
    (a transpose) is False; ``is_contiguous((3, 1), (1, 7))`` is True (the 7 is never used).

    Hint: compare with the strides a row-major layout would have, dimension by dimension.
    """
    raise NotImplementedError


def transpose_strides(shape: tuple[int, ...], strides: tuple[int, ...], dim0: int,
                      dim1: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``(shape, strides)`` of ``t.transpose(dim0, dim1)`` for a tensor ``t`` with these.

    ``dim0``, ``dim1``: dimensions to swap, possibly negative (``-1`` is the last).
    Returns ``(new_shape, new_strides)``, two tuples of ints. The offset does not change
    and no element moves: a transpose is a view.

    Example: ``transpose_strides((2, 3), (3, 1), 0, 1) == ((3, 2), (1, 3))``.

    Hint: no element moves; only the bookkeeping of the two dimensions trades places.
    """
    raise NotImplementedError


def broadcast_shapes(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``a + b`` under broadcasting; ValueError if the shapes are incompatible.

    ``shape_a``, ``shape_b``: tuples of sizes (either may be ``()``, a scalar).
    Returns a tuple of ints. Rules: line the shapes up at the right, pad the shorter one
    with 1s on the left; per dimension, equal sizes stay, a size 1 stretches to the other
    size, and any other pair raises ``ValueError`` (say which dimension and both sizes).

    Examples: ``broadcast_shapes((2, 1, 3), (4, 1)) == (2, 4, 3)``;
    ``broadcast_shapes((2, 3), (4,))`` raises ValueError (3 vs 4).

    Hint: a shape with fewer dimensions acts as if it had size-1 dimensions in front.
    """
    raise NotImplementedError


def contiguous_copy(storage: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...],
                    offset: int) -> np.ndarray:
    """The elements of the view ``(storage, shape, strides, offset)``, copied in row-major order.

    ``storage``: a 1-D NumPy array (do not modify it); ``shape``: sizes (>= 1 each);
    ``strides``: one int >= 0 per dimension (0 means "repeat", as after ``expand``);
    ``offset``: position of element ``(0, 0, ...)``.
    Returns a new 1-D array of ``math.prod(shape)`` values with ``storage``'s dtype: what
    ``t.contiguous()`` puts in its fresh storage.

    Example: ``storage = np.arange(6.0)``, ``shape=(3, 2)``, ``strides=(1, 3)``,
    ``offset=0`` (the transpose of a 2x3 matrix) gives ``[0., 3., 1., 4., 2., 5.]``.

    Hint: visit the indices in row-major order (``itertools.product`` can do that);
    ``flat_index`` from above says where each one lives.
    """
    raise NotImplementedError


def matmul_loops(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The matrix product ``a @ b`` from its definition, with loops.

    ``a``: shape ``(m, k)``; ``b``: shape ``(k, n)``; both float arrays.
    Returns an array of shape ``(m, n)`` with ``out[i, j] = sum over p of a[i, p] * b[p, j]``.
    Raise ``ValueError`` when ``a.shape[1] != b.shape[0]`` (name both shapes).

    Example: ``matmul_loops(np.array([[1., 2.]]), np.array([[3.], [4.]]))`` is
    ``[[11.]]``.

    Don't call ``@``/``np.matmul``/``np.dot`` — the point is to see the definition
    (and, later, why libraries work so hard to make this fast).

    Hint: every output element is a dot product; one loop per index in the formula.
    """
    raise NotImplementedError


def bytes_for(n_params: int, dtype: str) -> int:
    """Bytes needed to store ``n_params`` numbers in ``dtype`` (the weights alone).

    ``dtype``: one of ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"int8"``, ``"int4"``.
    Returns an int. int4 packs two values into one byte, so an odd count needs one more,
    half-used byte.

    Examples: ``bytes_for(124_439_808, "float32") == 497_759_232`` (GPT-2 small, ~475 MiB);
    ``bytes_for(3, "int4") == 2``.

    Hint: bits per value for each dtype (section 9's table), then bits to bytes, rounding up.
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Stretch exercises: they go past what the chapter shows.


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum the gradient of a broadcast result back to the shape of the input that was broadcast.

    ``grad``: a float array, the gradient of ``x op y`` (shape: the broadcast shape);
    ``shape``: the shape of ``x`` before broadcasting (``()`` for a scalar). Do not modify
    ``grad``. Returns an array of exactly ``shape``: for each element of ``x``, the sum of
    ``grad`` over every position that element was copied to. Raise ``ValueError`` if
    ``shape`` does not broadcast to ``grad.shape``. NumPy's ``sum`` over axes is fine here.

    This is what autograd does for every broadcasting operation in a training step: a bias
    of shape ``(n,)`` added to a batch ``(B, T, n)`` gets a gradient of shape ``(n,)``.

    Example: ``grad = np.ones((2, 3, 4))`` and ``shape=(3, 1)`` give a ``(3, 1)`` array of
    8s (each element was copied to 2 x 4 positions); ``shape=(2, 3, 4)`` gives ``grad``
    back; ``shape=(3,)`` raises ValueError.

    Hint: broadcasting copies elements in two ways; each copy adds to the gradient.
    """
    raise NotImplementedError


def unfold_strides(shape: tuple[int, ...], strides: tuple[int, ...], dim: int, size: int,
                   step: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``(shape, strides)`` of every window of ``size`` elements along ``dim``, ``step`` apart.

    This is torch's ``t.unfold(dim, size, step)``, a view: window ``w`` covers positions
    ``w * step`` to ``w * step + size - 1`` of dimension ``dim``, so
    ``out[..., w, ..., j] == t[..., w * step + j, ...]``. Dimension ``dim`` becomes the
    number of windows that fit entirely, and the window is a new LAST dimension.
    ``shape``, ``strides``: the input's (any strides, not only contiguous ones); ``dim`` may
    be negative; ``size``, ``step``: ints >= 1. Returns ``(new_shape, new_strides)``, two
    tuples of ints, one entry longer than the input's. Raise ``ValueError`` if the window
    does not fit (``size > shape[dim]``) or ``step < 1``.

    Two unfolds of an image ``(H, W)`` give every ``k x k`` patch, ``(H', W', k, k)``,
    without copying a number: the "im2col" step of a convolution, for free.

    Example: ``unfold_strides((5,), (1,), 0, 3, 2) == ((2, 3), (2, 1))``: windows
    ``[0, 1, 2]`` and ``[2, 3, 4]``; ``unfold_strides((4, 5), (5, 1), 1, 3, 1)`` is
    ``((4, 3, 3), (5, 1, 1))``.

    Hint: write down where window ``w``'s element ``j`` sits in storage.
    """
    raise NotImplementedError
