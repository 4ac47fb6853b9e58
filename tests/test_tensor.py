"""Property-based tests for course_lib.tensor against NumPy and torch.

Every test draws random shapes and random chains of view operations, applies the same
chain to our Tensor and to a torch tensor over the *same* NumPy buffer, and compares
shape, stride(), storage_offset(), is_contiguous() and the values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import tensor as T
from course_lib.tensor import Tensor

FAST = settings(max_examples=60, deadline=None)
THOROUGH = settings(max_examples=150, deadline=None)

sizes = st.integers(1, 4)
shapes = st.lists(sizes, min_size=0, max_size=4).map(tuple)
shapes_with_zeros = st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple)


def same_buffer(shape, dtype=np.float32, extra=0):
    """A Tensor and a torch tensor over one NumPy buffer (so storage writes show in both)."""
    storage = np.arange(math.prod(shape) + extra).astype(dtype)
    ours = Tensor(storage, shape)
    theirs = torch.from_numpy(storage).as_strided(shape, T.contiguous_strides(shape), 0)
    return storage, ours, theirs


def assert_same_layout(ours: Tensor, theirs: torch.Tensor, what: str = ""):
    assert ours.shape == tuple(theirs.shape), what
    assert ours.strides == theirs.stride(), what
    assert ours.offset == theirs.storage_offset(), what
    assert ours.is_contiguous() == theirs.is_contiguous(), what
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=what)


# --------------------------------------------------------------------------------------
# Layout helpers

@given(shapes_with_zeros)
@FAST
def test_contiguous_strides_match_torch(shape):
    assert T.contiguous_strides(shape) == torch.empty(shape).stride()


@given(shapes, st.data())
@FAST
def test_flat_index_matches_numpy_ravel(shape, data):
    index = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    expected = np.ravel_multi_index(index, shape) if shape else 0
    assert T.flat_index(index, T.contiguous_strides(shape)) == expected
    assert T.flat_index(index, T.contiguous_strides(shape), offset=7) == expected + 7


def broadcastable_pair(draw_base=shapes):
    """Pairs of shapes that usually broadcast: b is a with some sizes set to 1 and some
    leading dimensions dropped; sometimes one size is changed so it does not."""
    @st.composite
    def pair(draw):
        a = draw(draw_base)
        b = [1 if draw(st.booleans()) else n for n in a]
        b = b[draw(st.integers(0, len(b))):]
        if b and draw(st.integers(0, 4)) == 0:
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(1, 5))
        if draw(st.booleans()):
            a, b = tuple(b), a
        return tuple(a), tuple(b)
    return pair()


@given(broadcastable_pair(shapes_with_zeros))
@THOROUGH
def test_broadcast_shapes_matches_numpy_including_errors(pair):
    a, b = pair
    try:
        expected = np.broadcast_shapes(a, b)
    except ValueError:
        with pytest.raises(ValueError, match="cannot broadcast shapes"):
            T.broadcast_shapes(a, b)
        return
    assert T.broadcast_shapes(a, b) == expected == tuple(torch.broadcast_shapes(a, b))


def test_broadcast_error_names_the_dimension():
    with pytest.raises(ValueError, match=r"cannot broadcast shapes \(2, 3\) and \(4,\): dimension -1 is 3 vs 4"):
        T.broadcast_shapes((2, 3), (4,))


# --------------------------------------------------------------------------------------
# Views compose, share storage, and agree with torch

@st.composite
def view_op(draw, shape):
    """One random view operation valid for ``shape``, as (name, args)."""
    ndim = len(shape)
    names = ["unsqueeze", "expand", "view", "reshape", "contiguous"]
    if ndim >= 1:
        names += ["slice", "index", "squeeze"]
    if ndim >= 2:
        names += ["transpose", "permute"]
    name = draw(st.sampled_from(names))
    if name == "transpose":
        return name, (draw(st.integers(-ndim, ndim - 1)), draw(st.integers(-ndim, ndim - 1)))
    if name == "permute":
        return name, tuple(draw(st.permutations(range(ndim))))
    if name == "unsqueeze":
        return name, (draw(st.integers(-ndim - 1, ndim)),)
    if name == "squeeze":
        return name, (draw(st.none() | st.integers(-ndim, ndim - 1)),)
    if name == "expand":
        lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0 if ndim else 1, max_size=1)))
        kept = tuple(draw(st.integers(1, 3)) if n == 1 else draw(st.sampled_from([n, -1])) for n in shape)
        return name, lead + kept
    if name == "slice":
        items = []
        for n in shape[: draw(st.integers(1, ndim))]:
            start = draw(st.none() | st.integers(-n - 1, n + 1))
            stop = draw(st.none() | st.integers(-n - 1, n + 1))
            items.append(slice(start, stop, draw(st.none() | st.integers(1, 3))))
        return name, (tuple(items),)
    if name == "index":
        d = draw(st.integers(0, ndim - 1))
        if shape[d] == 0:
            return "contiguous", ()
        i = draw(st.integers(-shape[d], shape[d] - 1))
        return name, ((slice(None),) * d + (i,),)
    if name in ("view", "reshape"):
        numel = math.prod(shape)
        candidates = [(-1,), tuple(shape) + (1,)]
        for d in range(ndim - 1):  # merge two neighbours
            candidates.append(shape[:d] + (shape[d] * shape[d + 1],) + shape[d + 2:])
        for d, n in enumerate(shape):  # split one dimension
            for f in range(2, n + 1):
                if n % f == 0:
                    candidates.append(shape[:d] + (f, n // f) + shape[d + 1:])
        if numel > 0:
            candidates.append((numel,))
        return name, (draw(st.sampled_from(candidates)),)
    return name, ()


def apply(t, name, args):
    if name == "slice":
        return t[args[0]]
    if name == "index":
        return t[args[0]]
    if name == "squeeze" and args[0] is None:
        return t.squeeze()
    return getattr(t, name)(*args)


@given(st.one_of(shapes, shapes_with_zeros), st.data())
@THOROUGH
def test_view_chains_match_torch(shape, data):
    storage, ours, theirs = same_buffer(shape)
    assert_same_layout(ours, theirs)
    for step in range(data.draw(st.integers(1, 6))):
        name, args = data.draw(view_op(ours.shape))
        what = f"step {step}: {name}{args} on shape {ours.shape} strides {ours.strides}"
        try:
            expected = apply(theirs, name, args)
        except RuntimeError:  # torch refuses (view on incompatible strides): so must we
            assert name == "view", what
            with pytest.raises(ValueError, match=r"\.contiguous\(\)"):
                apply(ours, name, args)
            continue
        result = apply(ours, name, args)
        assert_same_layout(result, expected, what)
        # reshape/contiguous copy exactly when torch copies; everything else is a view
        torch_shares = expected.untyped_storage().data_ptr() == theirs.untyped_storage().data_ptr()
        assert (result.storage is ours.storage) == torch_shares, what
        if name == "contiguous":
            assert (result is ours) == (expected is theirs), what
        ours, theirs = result, expected


@given(shapes, st.data())
@FAST
def test_writes_to_storage_show_through_every_view(shape, data):
    storage, base, _ = same_buffer(shape)
    views = [base]
    for _ in range(data.draw(st.integers(1, 4))):
        name, args = data.draw(view_op(views[-1].shape))
        if name in ("view", "reshape", "contiguous"):
            continue
        views.append(apply(views[-1], name, args))
    for position in range(storage.size):
        storage[position] = -1000 - position  # write straight into the flat buffer
        for v in views:
            # torch, pointed at the same buffer with the same layout, is the oracle
            theirs = torch.from_numpy(storage).as_strided(v.shape, v.strides, v.offset)
            np.testing.assert_array_equal(v.numpy(), theirs.numpy())


def test_view_after_transpose_raises_and_names_the_fix():
    t = T.arange(12).view(3, 4).transpose(0, 1)
    with pytest.raises(ValueError, match=r"view\(12\) is impossible.*\.contiguous\(\)"):
        t.view(12)
    assert t.reshape(12).tolist() == torch.arange(12).view(3, 4).t().reshape(12).tolist()
    assert t.contiguous().view(12).is_contiguous()


def test_negative_slice_step_is_refused_like_torch():
    t = T.arange(6)
    with pytest.raises(ValueError, match="step must be positive"):
        t[::-1]
    with pytest.raises(ValueError, match="greater than zero"):
        torch.arange(6)[::-1]


def test_bad_arguments_get_clear_errors():
    t = T.zeros(2, 3)
    with pytest.raises(IndexError, match="out of bounds for dimension 1 with size 3"):
        t[0, 3]
    with pytest.raises(ValueError, match=r"only size-1 dimensions can be expanded"):
        t.expand(2, 5)
    with pytest.raises(ValueError, match="invalid for a tensor of 6 elements"):
        t.view(4, 2)
    with pytest.raises(ValueError, match="not a permutation"):
        t.permute(0, 0)
    with pytest.raises(ValueError, match="reach storage"):
        Tensor(np.zeros(5), (2, 3))


# --------------------------------------------------------------------------------------
# Arithmetic, matmul, reductions

def values(shape, rng, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape).astype(np.float32)


@given(broadcastable_pair(), st.integers(0, 2**32 - 1))
@FAST
def test_elementwise_ops_broadcast_like_numpy(pair, seed):
    a_shape, b_shape = pair
    rng = np.random.default_rng(seed)
    a, b = values(a_shape, rng), values(b_shape, rng, 0.5, 2.0)  # b away from 0 for division
    try:
        np.broadcast_shapes(a_shape, b_shape)
    except ValueError:
        with pytest.raises(ValueError, match="cannot broadcast"):
            T.from_numpy(a) + T.from_numpy(b)
        return
    ta, tb = T.from_numpy(a), T.from_numpy(b)
    if b.ndim >= 2:  # a non-contiguous right operand: b stored transposed, viewed back
        tb = T.from_numpy(np.ascontiguousarray(np.swapaxes(b, 0, -1))).transpose(0, -1)
    for op in ("__add__", "__sub__", "__mul__", "__truediv__"):
        result = getattr(ta, op)(tb)
        expected = getattr(a, op)(b)
        assert result.dtype == expected.dtype == np.float32
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, err_msg=op)
    np.testing.assert_allclose((ta * 2.5 - 1).numpy(), a * 2.5 - 1, rtol=1e-6)
    assert (ta * 2.5).dtype == np.float32
    np.testing.assert_allclose((-ta).exp().numpy(), np.exp(-a), rtol=1e-6)
    np.testing.assert_array_equal(ta.maximum(tb).numpy(), np.maximum(a, b))


@st.composite
def matmul_shapes(draw):
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    batch_a, batch_b = draw(broadcastable_pair(st.lists(st.integers(1, 3), max_size=2).map(tuple)))
    kind = draw(st.sampled_from(["matrix", "matrix", "vec@mat", "mat@vec", "vec@vec"]))
    a = (k,) if kind.startswith("vec@") else batch_a + (m, k)
    b = (k,) if kind.endswith("@vec") else batch_b + (k, n)
    return a, b


@given(matmul_shapes(), st.integers(0, 2**32 - 1))
@FAST
def test_matmul_matches_numpy(shapes_ab, seed):
    a_shape, b_shape = shapes_ab
    rng = np.random.default_rng(seed)
    a, b = values(a_shape, rng), values(b_shape, rng)
    try:
        expected = np.matmul(a, b)
    except ValueError:
        with pytest.raises(ValueError):
            T.matmul(T.from_numpy(a), T.from_numpy(b))
        return
    result = T.from_numpy(a) @ T.from_numpy(b)
    assert result.shape == expected.shape and result.dtype == np.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_matmul_64x64_with_transposed_operand_matches_torch():
    rng = np.random.default_rng(0)
    a, b = values((3, 64, 64), rng), values((64, 64), rng)
    result = T.from_numpy(a) @ T.from_numpy(b).transpose(0, 1)
    expected = torch.from_numpy(a) @ torch.from_numpy(b).t()
    np.testing.assert_allclose(result.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_matmul_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\).*3 vs 4"):
        T.zeros(2, 3) @ T.zeros(4, 5)


@given(shapes, st.data(), st.integers(0, 2**32 - 1))
@FAST
def test_reductions_match_torch(shape, data, seed):
    x = values(shape, np.random.default_rng(seed))
    ours, theirs = T.from_numpy(x), torch.from_numpy(x)
    if len(shape) >= 2:  # reduce a non-contiguous view too
        ours, theirs = ours.transpose(0, -1), theirs.transpose(0, -1)
    keepdim = data.draw(st.booleans())
    dims = [None] + list(range(-len(shape), len(shape)))
    dim = data.draw(st.sampled_from(dims))
    for name in ("sum", "mean", "max"):
        if dim is None:
            expected = getattr(theirs, name)()
            if keepdim:
                expected = expected.reshape((1,) * len(shape))
            result = getattr(ours, name)(keepdim=keepdim)
        else:
            expected = getattr(theirs, name)(dim, keepdim=keepdim)
            expected = expected.values if name == "max" else expected
            result = getattr(ours, name)(dim, keepdim=keepdim)
        assert result.shape == tuple(expected.shape), (name, dim, keepdim)
        # float32 sums in another order differ by up to ~log2(n) roundings of the running total,
        # so a sum that cancels to near zero needs an absolute bound from the summed magnitudes
        atol = 1e-6 if name == "max" else 1e-6 + 2 * np.finfo(np.float32).eps * np.log2(x.size + 1) * np.abs(x).sum()
        np.testing.assert_allclose(result.numpy(), expected.numpy(), rtol=1e-5, atol=atol, err_msg=name)


# --------------------------------------------------------------------------------------
# Constructors and dtypes

def test_constructors_match_torch_dtypes_and_values():
    assert T.tensor([[1.0, 2.0]]).dtype == np.float32  # Python floats -> float32, as torch
    assert T.tensor([1, 2]).dtype == np.int64
    assert T.arange(5).tolist() == torch.arange(5).tolist()
    assert T.zeros(2, 3).shape == T.zeros((2, 3)).shape == (2, 3)
    x = np.arange(6.0)
    shared = T.from_numpy(x)
    x[0] = 42.0
    assert shared.tolist()[0] == 42.0  # from_numpy shares memory like torch.from_numpy


@pytest.mark.parametrize("name, torch_dtype", [
    ("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16), ("int8", torch.int8),
])
def test_bytes_per_element_matches_torch(name, torch_dtype):
    assert T.bytes_per_element(name) == torch.empty(0, dtype=torch_dtype).element_size()
    assert T.dtype_info(str(torch_dtype)).name == name


def test_int4_packs_two_per_byte_and_aliases_work():
    assert T.bytes_per_element("int4") == 0.5
    assert T.parameter_bytes(3, "int4") == 2
    assert T.parameter_bytes(124_439_808, "fp32") == 4 * 124_439_808
    assert T.parameter_bytes(124_439_808, "bf16") == 2 * 124_439_808
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        T.bytes_per_element("float8")
    with pytest.raises(ValueError, match="NumPy has no bfloat16"):
        T.zeros(2).to("bfloat16")
    assert T.zeros(2).to("float16").dtype == np.float16
    assert T.format_bytes(1536) == "1.5 KiB"


# --------------------------------------------------------------------------------------
# unfold (sliding windows as a view) and unbroadcast (the gradient of broadcasting)

@given(shapes.filter(lambda s: len(s) >= 1), st.data())
@THOROUGH
def test_unfold_matches_torch_after_random_views(shape, data):
    storage, ours, theirs = same_buffer(shape)
    for _ in range(data.draw(st.integers(0, 3))):  # start from a non-contiguous view, too
        name, args = data.draw(view_op(ours.shape))
        if name in ("view", "index") or (name == "squeeze" and ours.ndim <= 1):
            continue
        ours, theirs = apply(ours, name, args), apply(theirs, name, args)
    if ours.ndim == 0:
        return
    dim = data.draw(st.integers(-ours.ndim, ours.ndim - 1))
    size = data.draw(st.integers(0, ours.shape[dim]))
    step = data.draw(st.integers(1, 4))
    result, expected = ours.unfold(dim, size, step), theirs.unfold(dim, size, step)
    assert_same_layout(result, expected, f"unfold({dim}, {size}, {step}) of {ours.shape} {ours.strides}")
    assert result.storage is ours.storage  # a view: nothing copied


def test_unfold_twice_is_im2col_without_a_copy():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 7)).astype(np.float32)
    kernel = rng.normal(size=(3, 3)).astype(np.float32)
    patches = T.from_numpy(image).unfold(0, 3, 2).unfold(1, 3, 2)  # (2, 3, 3, 3): rows, cols, kh, kw
    assert patches.shape == (2, 3, 3, 3) and patches.storage.size == image.size
    assert T.unfold_layout((5,), (1,), 0, 3, 2) == ((2, 3), (2, 1))
    conv = (patches * T.from_numpy(kernel)).sum(-1).sum(-1)
    expected = torch.nn.functional.conv2d(torch.from_numpy(image)[None, None], torch.from_numpy(kernel)[None, None],
                                          stride=2)[0, 0]
    np.testing.assert_allclose(conv.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_unfold_refuses_windows_that_do_not_fit():
    t = T.zeros(4, 5)
    with pytest.raises(ValueError, match="window size 6 does not fit dimension 1 of size 5"):
        t.unfold(1, 6, 1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        t.unfold(0, 2, 0)
    with pytest.raises(IndexError):
        t.unfold(2, 1, 1)


@given(broadcastable_pair(shapes_with_zeros), st.integers(0, 2**32 - 1))
@THOROUGH
def test_unbroadcast_is_the_gradient_of_broadcasting(pair, seed):
    input_shape, other_shape = pair
    try:
        out_shape = np.broadcast_shapes(input_shape, other_shape)
    except ValueError:
        return
    rng = np.random.default_rng(seed)
    grad = rng.normal(size=out_shape)
    x = torch.zeros(input_shape, dtype=torch.float64, requires_grad=True)
    (x.expand(out_shape) * torch.from_numpy(grad)).sum().backward()  # autograd's answer
    result = T.unbroadcast(T.from_numpy(grad), input_shape)
    assert result.shape == tuple(x.grad.shape)
    np.testing.assert_allclose(result.numpy(), x.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_unbroadcast_refuses_shapes_that_do_not_broadcast_to_the_gradient():
    grad = T.zeros(2, 4)
    for shape in [(3,), (2, 1, 4), (2, 5)]:
        with pytest.raises(ValueError):
            T.unbroadcast(grad, shape)
    assert T.unbroadcast(grad, (2, 4)).shape == (2, 4)
    assert T.unbroadcast(T.from_numpy(np.ones((2, 3, 4))), (3, 1)).tolist() == [[8.0], [8.0], [8.0]]


def test_layout_helpers_behind_transpose_and_numpy():
    assert T.transpose_layout((2, 3), (3, 1), 0, 1) == ((3, 2), (1, 3))
    assert T.transpose_layout((2, 3, 4), (12, 4, 1), -1, 0) == tuple(
        (tuple(v.shape), v.stride()) for v in [torch.empty(2, 3, 4).transpose(-1, 0)])[0]
    storage = np.arange(10.0)
    gathered = T.gather_view(storage, (3, 2), (1, 3), 1)  # a transposed 2x3 block starting at 1
    np.testing.assert_array_equal(gathered, torch.from_numpy(storage).as_strided((3, 2), (1, 3), 1).numpy())
    assert not np.shares_memory(gathered, storage)
