"""The ex01 checks have teeth: the solutions pass, and typical wrong answers fail.

Each wrong answer below is a mistake a learner is likely to make (or a hard-coded answer
to the docstring's example). Every one must be caught, for several seeds, with a
GradeError (a wrong answer), not a crash of the check itself.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from course_lib.grading import registry
from helpers import chapter_checks, have_solutions, load_exercise_module

SEEDS = range(5)
CHECKS = chapter_checks("ex01")


def load(folder: str):
    return load_exercise_module(folder, "ex01_tensors.py")


HAS_SOLUTIONS = have_solutions("ex01_tensors.py")


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


# --------------------------------------------------------------------------------------
# Wrong answers

def strides_left_to_right(shape):
    strides, step = [], 1
    for n in shape:  # wrong direction: the first dimension moves by 1
        strides.append(step)
        step *= n
    return tuple(strides)


def strides_hard_coded(shape):
    return {(2, 3, 4): (12, 4, 1), (2, 3): (3, 1), (4,): (1,)}.get(tuple(shape), (1,) * len(shape))


def flat_index_without_offset(index, strides, offset=0):
    return sum(i * s for i, s in zip(index, strides))


def is_contiguous_without_skipping_ones(shape, strides):
    expected = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if s != expected:
            return False
        expected *= n
    return True


def is_contiguous_always_true(shape, strides):
    return True


def transpose_without_negative_dims(shape, strides, dim0, dim1):
    shape, strides = list(shape), list(strides)
    if dim0 >= 0 and dim1 >= 0:
        shape[dim0], shape[dim1] = shape[dim1], shape[dim0]
        strides[dim0], strides[dim1] = strides[dim1], strides[dim0]
    return tuple(shape), tuple(strides)


def transpose_shape_only(shape, strides, dim0, dim1):
    shape = list(shape)
    shape[dim0], shape[dim1] = shape[dim1], shape[dim0]
    return tuple(shape), tuple(strides)


def broadcast_never_raises(a, b):
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(max(x, y) for x, y in zip(a, b))


def broadcast_padding_on_the_right(a, b):
    n = max(len(a), len(b))
    a, b = tuple(a) + (1,) * (n - len(a)), tuple(b) + (1,) * (n - len(b))
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError("incompatible")
        out.append(max(x, y))
    return tuple(out)


def copy_ignoring_strides(storage, shape, strides, offset):
    return storage[offset:offset + math.prod(shape)].copy()


def copy_ignoring_offset(storage, shape, strides, offset):
    return np.array([storage[sum(i * s for i, s in zip(index, strides))]
                     for index in itertools.product(*(range(n) for n in shape))])


def copy_column_major(storage, shape, strides, offset):
    index_order = itertools.product(*(range(n) for n in reversed(shape)))
    return np.array([storage[offset + sum(i * s for i, s in zip(reversed(index), strides))]
                     for index in index_order])


def copy_that_writes_storage(storage, shape, strides, offset):
    out = np.array([storage[offset + sum(i * s for i, s in zip(index, strides))]
                    for index in itertools.product(*(range(n) for n in shape))])
    storage[:] = 0
    return out


def matmul_no_shape_check(a, b):
    return np.einsum("ik,kj->ij", a[:, : b.shape[0]], b[: a.shape[1]])


def matmul_transposed(a, b):
    if a.shape[1] != b.shape[0]:
        raise ValueError("shapes")
    return (b.T @ a.T)


def matmul_float32(a, b):
    if a.shape[1] != b.shape[0]:
        raise ValueError("shapes")
    return (a.astype(np.float16) @ b.astype(np.float16)).astype(np.float64)


def bytes_floor_for_int4(n, dtype):
    return n * {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "int4": 4}[dtype] // 8


def bytes_as_float(n, dtype):
    return n * {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int4": 0.5}[dtype]


def bytes_bf16_as_fp32(n, dtype):
    return math.ceil(n * {"float32": 4, "float16": 2, "bfloat16": 4, "int8": 1, "int4": 0.5}[dtype])


def unbroadcast_parts(grad, shape):
    n_lead = grad.ndim - len(shape)
    stretched = tuple(d for d, n in enumerate(shape) if n == 1 and grad.shape[n_lead + d] != 1)
    return n_lead, stretched


def unbroadcast_with_mean(grad, shape):
    np.broadcast_shapes(shape, grad.shape)
    n_lead, stretched = unbroadcast_parts(grad, shape)
    out = grad.mean(axis=tuple(range(n_lead)))
    return out.mean(axis=stretched, keepdims=True)


def unbroadcast_without_keepdims(grad, shape):
    np.broadcast_shapes(shape, grad.shape)
    n_lead, stretched = unbroadcast_parts(grad, shape)
    return grad.sum(axis=tuple(range(n_lead))).sum(axis=stretched)


def unbroadcast_leading_only(grad, shape):
    np.broadcast_shapes(shape, grad.shape)
    return grad.sum(axis=tuple(range(grad.ndim - len(shape))))


def unbroadcast_returns_grad(grad, shape):
    return grad.copy()


def unbroadcast_never_raises(grad, shape):
    n_lead = max(grad.ndim - len(shape), 0)
    out = grad.sum(axis=tuple(range(n_lead)))
    stretched = tuple(d for d, n in enumerate(shape) if n == 1 and d < out.ndim and out.shape[d] != 1)
    return out.sum(axis=stretched, keepdims=True)


def unbroadcast_that_zeroes_grad(grad, shape):
    np.broadcast_shapes(shape, grad.shape)
    n_lead, stretched = unbroadcast_parts(grad, shape)
    out = grad.sum(axis=tuple(range(n_lead))).sum(axis=stretched, keepdims=True)
    grad[...] = 0  # "free" the gradient: the caller's array
    return out


def unfold_parts(shape, strides, dim, size, step):
    if size > shape[dim] or step < 1:
        raise ValueError("does not fit")
    return list(shape), list(strides), dim % len(shape)


def unfold_one_window_short(shape, strides, dim, size, step):
    new_shape, new_strides, d = unfold_parts(shape, strides, dim, size, step)
    n = new_shape[d]
    new_shape[d], new_strides[d] = (n - size) // step, strides[d] * step
    return tuple(new_shape + [size]), tuple(new_strides + [strides[d]])


def unfold_step_not_in_stride(shape, strides, dim, size, step):
    new_shape, new_strides, d = unfold_parts(shape, strides, dim, size, step)
    new_shape[d] = (shape[d] - size) // step + 1
    return tuple(new_shape + [size]), tuple(new_strides + [strides[d]])


def unfold_window_stride_one(shape, strides, dim, size, step):
    new_shape, new_strides, d = unfold_parts(shape, strides, dim, size, step)
    new_shape[d], new_strides[d] = (shape[d] - size) // step + 1, strides[d] * step
    return tuple(new_shape + [size]), tuple(new_strides + [1])  # as if the input were contiguous


def unfold_window_next_to_dim(shape, strides, dim, size, step):
    new_shape, new_strides, d = unfold_parts(shape, strides, dim, size, step)
    new_shape[d], new_strides[d] = (shape[d] - size) // step + 1, strides[d] * step
    new_shape.insert(d + 1, size)
    new_strides.insert(d + 1, strides[d])
    return tuple(new_shape), tuple(new_strides)


def unfold_never_raises(shape, strides, dim, size, step):
    d = dim % len(shape)
    new_shape, new_strides = list(shape), list(strides)
    new_shape[d], new_strides[d] = max((shape[d] - size) // max(step, 1) + 1, 0), strides[d] * step
    return tuple(new_shape + [size]), tuple(new_strides + [strides[d]])


def unfold_hard_coded(shape, strides, dim, size, step):
    return ((2, 3), (2, 1)) if tuple(shape) == (5,) else (tuple(shape) + (size,), tuple(strides) + (1,))


WRONG = [
    ("contiguous_strides", strides_left_to_right),
    ("contiguous_strides", strides_hard_coded),
    ("flat_index", flat_index_without_offset),
    ("is_contiguous", is_contiguous_without_skipping_ones),
    ("is_contiguous", is_contiguous_always_true),
    ("transpose_strides", transpose_without_negative_dims),
    ("transpose_strides", transpose_shape_only),
    ("broadcast_shapes", broadcast_never_raises),
    ("broadcast_shapes", broadcast_padding_on_the_right),
    ("contiguous_copy", copy_ignoring_strides),
    ("contiguous_copy", copy_ignoring_offset),
    ("contiguous_copy", copy_column_major),
    ("contiguous_copy", copy_that_writes_storage),
    ("matmul_loops", matmul_no_shape_check),
    ("matmul_loops", matmul_transposed),
    ("matmul_loops", matmul_float32),
    ("bytes_for", bytes_floor_for_int4),
    ("bytes_for", bytes_as_float),
    ("bytes_for", bytes_bf16_as_fp32),
    ("unbroadcast", unbroadcast_with_mean),
    ("unbroadcast", unbroadcast_without_keepdims),
    ("unbroadcast", unbroadcast_leading_only),
    ("unbroadcast", unbroadcast_returns_grad),
    ("unbroadcast", unbroadcast_never_raises),
    ("unbroadcast", unbroadcast_that_zeroes_grad),
    ("unfold_strides", unfold_one_window_short),
    ("unfold_strides", unfold_step_not_in_stride),
    ("unfold_strides", unfold_window_stride_one),
    ("unfold_strides", unfold_window_next_to_dim),
    ("unfold_strides", unfold_never_raises),
    ("unfold_strides", unfold_hard_coded),
]


# The named mistake each wrong answer must be told about (a phrase of the check's message).
NAMED = {
    strides_left_to_right: "LAST dimension has stride 1",
    flat_index_without_offset: "left out the offset",
    is_contiguous_without_skipping_ones: "size 1 is never stepped along",
    transpose_shape_only: "swapped the sizes but not the strides",
    copy_ignoring_strides: "the strides say where each element lives",
    copy_ignoring_offset: "left out the offset",
    copy_column_major: "column-major order",
    unbroadcast_with_mean: "sum, not mean",
    unbroadcast_without_keepdims: "keep them, with size 1",
    unbroadcast_leading_only: "expected shape",
    unbroadcast_returns_grad: "gradient of the broadcast shape",
    unbroadcast_never_raises: "cannot have been broadcast",
    unbroadcast_that_zeroes_grad: "changed `grad`",
    unfold_one_window_short: "one window too few",
    unfold_step_not_in_stride: "positions apart",
    unfold_window_stride_one: "need not be contiguous",
    unfold_window_next_to_dim: "new LAST dimension",
    unfold_never_raises: "does not fit",
}


@pytest.mark.parametrize("name, wrong", WRONG, ids=[w.__name__ for _, w in WRONG])
def test_wrong_answer_is_caught_with_a_message(name, wrong):
    for seed in SEEDS:
        with pytest.raises(registry.GradeError) as caught:
            CHECKS[name].grade(wrong, np.random.default_rng(seed))
        message = str(caught.value)
        assert name in message, f"the message should name the call: {message}"
        assert "expected" in message, f"the message should say what was expected: {message}"
        if wrong in NAMED:
            assert NAMED[wrong] in message, f"the message should name the mistake ({NAMED[wrong]!r}): {message}"


def test_every_check_is_fast_and_every_exercise_has_a_wrong_answer_here():
    import time

    solutions = load("solutions") if HAS_SOLUTIONS else None
    for name, ex in CHECKS.items():
        if solutions is not None:
            start = time.perf_counter()
            ex.grade(getattr(solutions, name), np.random.default_rng(123))
            assert time.perf_counter() - start < 1.0, f"{name}: the check takes over a second"
    assert {name for name, _ in WRONG} == set(CHECKS)
