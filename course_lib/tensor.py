"""A teaching tensor on a flat NumPy buffer.

Every tensor library — PyTorch, NumPy, Candle — stores an n-dimensional array the same
way: one flat buffer of numbers (the *storage*) plus three pieces of bookkeeping:

* ``shape``   — how many elements along each dimension, e.g. ``(2, 3)``;
* ``strides`` — how many *elements* to jump in storage to move one step along each
  dimension, e.g. ``(3, 1)`` for a row-major 2x3 array (NumPy counts bytes, we count
  elements like PyTorch);
* ``offset``  — where in storage the element at index ``(0, 0, ...)`` lives.

The element at ``index`` is ``storage[offset + sum(i * s for i, s in zip(index, strides))]``.
Transposing, slicing, adding a dimension or broadcasting only change this bookkeeping —
they are *views* that share the storage and copy nothing. Only some operations
(``contiguous``, arithmetic, ``matmul``, reductions) produce new storage.

This module is the course's reference implementation: the notebook shows its source with
``inspect.getsource`` and the ex01 grader uses it to compute expected answers. It is written
to be read, not to be fast; the arithmetic at the bottom hands the inner loops to NumPy
once the layout work is done.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------
# Layout helpers: pure functions on shapes and strides. The ex01 exercises mirror these.

def numel_of(shape: Sequence[int]) -> int:
    """Number of elements in a tensor of ``shape`` (1 for the 0-d shape ``()``)."""
    return math.prod(shape)


def contiguous_strides(shape: Sequence[int]) -> Shape:
    """Row-major ("C order") strides, in elements, for ``shape``.

    The last dimension moves by 1; each earlier dimension moves by the product of the
    sizes after it. ``contiguous_strides((2, 3, 4)) == (12, 4, 1)``.
    """
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)  # a size-0 dimension must not zero the strides before it (torch does the same)
    return tuple(reversed(strides))


def flat_index(index: Sequence[int], strides: Sequence[int], offset: int = 0) -> int:
    """Position in storage of the element at ``index`` (one non-negative int per dimension).

    ``flat_index((1, 2), strides=(3, 1), offset=0) == 5``.
    """
    if len(index) != len(strides):
        raise ValueError(f"index {tuple(index)} has {len(index)} entries, "
                         f"but the tensor has {len(strides)} dimensions")
    return offset + sum(i * s for i, s in zip(index, strides))


def is_contiguous_layout(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """True when ``strides`` are the row-major strides of ``shape`` — PyTorch's rule.

    Dimensions of size 1 are skipped: their stride is never used to reach an element,
    so any value is fine. A tensor with no elements is always contiguous.
    """
    if numel_of(shape) == 0:
        return True
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def normalize_dim(dim: int, ndim: int, *, extra: int = 0) -> int:
    """Turn a possibly negative ``dim`` into ``0 .. ndim - 1 + extra`` or raise IndexError.

    ``extra=1`` is for ``unsqueeze``, which may insert a new dimension after the last one.
    """
    limit = ndim + extra
    if not -limit <= dim < max(limit, 1):
        raise IndexError(f"dimension {dim} is out of range for a tensor with {ndim} dimension(s) "
                         f"(expected {-limit} .. {max(limit, 1) - 1})")
    return dim + limit if dim < 0 else dim


def transpose_layout(shape: Sequence[int], strides: Sequence[int], dim0: int, dim1: int) -> tuple[Shape, Shape]:
    """The ``(shape, strides)`` of a transpose: swap two sizes and the two matching strides.

    No element moves, so the offset stays too. Dims may be negative (``-1`` is the last).
    ``transpose_layout((2, 3), (3, 1), 0, 1) == ((3, 2), (1, 3))``.
    """
    d0, d1 = normalize_dim(dim0, len(shape)), normalize_dim(dim1, len(shape))
    shape, strides = list(shape), list(strides)
    shape[d0], shape[d1] = shape[d1], shape[d0]
    strides[d0], strides[d1] = strides[d1], strides[d0]
    return tuple(shape), tuple(strides)


def gather_view(storage: np.ndarray, shape: Sequence[int], strides: Sequence[int], offset: int) -> np.ndarray:
    """The elements of the view ``(storage, shape, strides, offset)``, copied into a fresh
    array of shape ``shape`` (row-major): what ``contiguous()`` puts in its new storage.

    For every dimension d, the positions ``0..n_d-1`` times ``stride_d`` are added up with
    broadcasting, which gives the storage position of every element at once; then one
    fancy-index gathers them. (``np.lib.stride_tricks.as_strided`` does the same without a
    copy, but can read out of bounds if the strides are wrong.)
    """
    ndim = len(shape)
    position = np.full(tuple(shape), offset, dtype=np.int64)
    for d, (size, stride) in enumerate(zip(shape, strides)):
        along_d = np.arange(size).reshape([size if e == d else 1 for e in range(ndim)])
        position = position + along_d * stride
    return np.asarray(storage[position])


def broadcast_shapes(shape_a: Sequence[int], shape_b: Sequence[int]) -> Shape:
    """The shape that ``a op b`` has under broadcasting, or ValueError if there is none.

    Rules (the same in NumPy, PyTorch and Candle): line the shapes up at the *right*;
    a missing dimension counts as size 1; two sizes are compatible when they are equal or
    one of them is 1, and the result takes the larger one.
    ``broadcast_shapes((2, 1, 3), (4, 1)) == (2, 4, 3)``.
    """
    ndim = max(len(shape_a), len(shape_b))
    padded_a = (1,) * (ndim - len(shape_a)) + tuple(shape_a)
    padded_b = (1,) * (ndim - len(shape_b)) + tuple(shape_b)
    result = []
    for d, (n_a, n_b) in enumerate(zip(padded_a, padded_b)):
        if n_a == n_b or n_b == 1:
            result.append(n_a)
        elif n_a == 1:
            result.append(n_b)
        else:
            raise ValueError(f"cannot broadcast shapes {tuple(shape_a)} and {tuple(shape_b)}: "
                             f"dimension {d - ndim} is {n_a} vs {n_b}")
    return tuple(result)


def infer_shape(shape: Sequence[int], numel: int) -> Shape:
    """Replace a single ``-1`` in ``shape`` so that it holds ``numel`` elements; check the total."""
    shape = tuple(int(n) for n in shape)
    if shape.count(-1) > 1:
        raise ValueError(f"only one dimension can be -1, got shape {shape}")
    if any(n < -1 for n in shape):
        raise ValueError(f"invalid shape {shape}: sizes must be >= 0 (or a single -1)")
    if -1 in shape:
        known = numel_of(n for n in shape if n != -1)
        if known == 0 or numel % known:
            raise ValueError(f"shape {shape} is invalid for a tensor of {numel} elements")
        shape = tuple(numel // known if n == -1 else n for n in shape)
    if numel_of(shape) != numel:
        raise ValueError(f"shape {shape} is invalid for a tensor of {numel} elements "
                         f"(it holds {numel_of(shape)})")
    return shape


def view_strides(shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]) -> Shape | None:
    """Strides that show the same elements in ``new_shape`` without copying, or None.

    A view is possible when every group of old dimensions that is merged or split is
    laid out contiguously *within the group* ("a chunk"). Walking from the last
    dimension, we collect old dimensions into chunks (a chunk ends where the next
    dimension's stride breaks the pattern), then hand out new dimensions to each chunk
    until they hold the same number of elements. This is PyTorch's ``computeStride``.
    """
    shape, strides, new_shape = tuple(shape), tuple(strides), tuple(new_shape)
    if len(shape) == 0:  # a 0-d tensor holds one element; any shape of ones works
        return (1,) * len(new_shape)
    if numel_of(shape) == 0:  # nothing to address: strides are arbitrary, pick torch's
        return strides if shape == new_shape else contiguous_strides(new_shape)

    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    chunk_stride = strides[-1]  # stride of the innermost dimension of the current chunk
    chunk_numel = 1  # elements in the current chunk of old dimensions
    view_numel = 1  # elements in the new dimensions given to this chunk so far
    for d in range(len(shape) - 1, -1, -1):
        chunk_numel *= shape[d]
        chunk_ends = d == 0 or (shape[d - 1] != 1 and strides[d - 1] != chunk_numel * chunk_stride)
        if not chunk_ends:
            continue
        while view_d >= 0 and (view_numel < chunk_numel or new_shape[view_d] == 1):
            new_strides[view_d] = view_numel * chunk_stride
            view_numel *= new_shape[view_d]
            view_d -= 1
        if view_numel != chunk_numel:  # a new dimension would straddle two chunks
            return None
        if d > 0:
            chunk_stride, chunk_numel, view_numel = strides[d - 1], 1, 1
    if view_d != -1:
        return None
    return tuple(new_strides)


def unfold_layout(shape: Sequence[int], strides: Sequence[int], dim: int, size: int,
                  step: int) -> tuple[Shape, Shape]:
    """The ``(shape, strides)`` of ``t.unfold(dim, size, step)``: every window of ``size``
    elements along ``dim``, ``step`` apart, as a view (torch's ``Tensor.unfold``).

    Window ``w`` covers positions ``w * step .. w * step + size - 1`` of ``dim``, so
    ``out[..., w, ..., j] == t[..., w * step + j, ...]``. Dimension ``dim`` becomes the
    window count (every start whose window still fits) and moves ``step`` elements of the
    old dimension per window; the window itself is a new last dimension that moves like
    the old ``dim``. Nothing is copied: this is im2col without the copy.
    ``unfold_layout((5,), (1,), 0, 3, 2) == ((2, 3), (2, 1))``.
    """
    shape, strides = tuple(int(n) for n in shape), tuple(int(s) for s in strides)
    d = normalize_dim(dim, len(shape))
    if size < 0 or size > shape[d]:
        raise ValueError(f"unfold: window size {size} does not fit dimension {dim} of size {shape[d]} "
                         f"(expected 0 <= size <= {shape[d]})")
    if step < 1:
        raise ValueError(f"unfold: step must be >= 1, got {step}")
    n_windows = (shape[d] - size) // step + 1  # starts 0, step, 2*step, ... while the window fits
    new_shape = shape[:d] + (n_windows,) + shape[d + 1:] + (size,)
    new_strides = strides[:d] + (strides[d] * step,) + strides[d + 1:] + (strides[d],)
    return new_shape, new_strides


# --------------------------------------------------------------------------------------
# Dtypes and bytes: the bridge to quantization (chapter 07).

@dataclasses.dataclass(frozen=True)
class DType:
    name: str  # "float32"
    bits: int  # bits per element
    numpy: str | None  # the NumPy dtype, or None when NumPy has none
    torch: str | None  # the torch dtype, or None
    candle: str | None  # Candle's DType variant
    note: str

    @property
    def bytes(self) -> float:
        """Bytes per element; 0.5 for int4 (two values share one byte)."""
        return self.bits / 8


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        DType("float32", 32, "float32", "torch.float32", "DType::F32",
              "1 sign, 8 exponent, 23 mantissa bits; the default for training and reference runs"),
        DType("float16", 16, "float16", "torch.float16", "DType::F16",
              "1 sign, 5 exponent, 10 mantissa bits; largest value 65504, so activations can overflow"),
        DType("bfloat16", 16, None, "torch.bfloat16", "DType::BF16",
              "1 sign, 8 exponent, 7 mantissa bits; float32's range with less precision; NumPy has no bfloat16"),
        DType("int8", 8, "int8", "torch.int8", None,
              "integers -128..127; weights are stored as int8 plus a float scale per tensor or per channel"),
        DType("int4", 4, None, None, None,
              "integers -8..7 packed two per byte (a 'nibble' each); no array library computes in it directly"),
    ]
}

# Short spellings learners meet in model cards and other libraries.
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32",
                  "fp16": "float16", "f16": "float16", "half": "float16",
                  "bf16": "bfloat16", "i8": "int8", "i4": "int4"}


def dtype_info(name: str) -> DType:
    """The :class:`DType` entry for ``name`` ("float32", "bf16", "torch.float16", ...)."""
    key = str(name).removeprefix("torch.").lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)} "
                         f"(or {', '.join(_DTYPE_ALIASES)})")
    return DTYPES[key]


def bytes_per_element(name: str) -> float:
    """Bytes one element of dtype ``name`` takes: 4, 2, 2, 1 and 0.5 for float32..int4."""
    return dtype_info(name).bytes


def parameter_bytes(n_params: int, dtype: str) -> int:
    """Bytes needed to store ``n_params`` numbers in ``dtype`` (weights only, no scales).

    int4 packs two values per byte, so an odd count needs one extra half-filled byte:
    ``parameter_bytes(3, "int4") == 2``.
    """
    return math.ceil(n_params * dtype_info(dtype).bits / 8)


def format_bytes(n_bytes: float) -> str:
    """``123456789`` -> ``'117.7 MiB'`` (powers of 1024, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------
# The Tensor.

def _shape_arg(args: tuple) -> Shape:
    """Accept both ``t.view(2, 3)`` and ``t.view((2, 3))``, as torch does."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(int(n) for n in args)


class Tensor:
    """An n-dimensional view of a flat NumPy ``storage``.

    ``Tensor(storage, shape, strides=None, offset=0)``: ``storage`` is a 1-D NumPy array
    (kept, not copied, so several tensors can share it); ``strides`` default to the
    contiguous (row-major) strides of ``shape``.
    """

    # Make NumPy hand `ndarray + Tensor` to Tensor.__radd__ instead of converting us.
    __array_ufunc__ = None

    def __init__(self, storage: np.ndarray, shape: Sequence[int], strides: Sequence[int] | None = None,
                 offset: int = 0):
        storage = np.asarray(storage)
        if storage.ndim != 1:
            raise ValueError(f"storage must be a flat 1-D array, got shape {storage.shape}")
        shape = tuple(int(n) for n in shape)
        strides = contiguous_strides(shape) if strides is None else tuple(int(s) for s in strides)
        if len(strides) != len(shape):
            raise ValueError(f"shape {shape} and strides {strides} have different lengths")
        if any(n < 0 for n in shape) or any(s < 0 for s in strides) or offset < 0:
            raise ValueError(f"sizes, strides and offset must be >= 0, got shape {shape}, "
                             f"strides {strides}, offset {offset}")
        if numel_of(shape) > 0:
            last = flat_index([n - 1 for n in shape], strides, offset)  # the farthest element
            if last >= storage.size:
                raise ValueError(f"shape {shape}, strides {strides}, offset {offset} reach storage[{last}], "
                                 f"but storage has only {storage.size} elements")
        self.storage = storage
        self.shape: Shape = shape
        self.strides: Shape = strides
        self.offset = int(offset)

    # ---- basic facts ------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    def numel(self) -> int:
        return numel_of(self.shape)

    def size(self, dim: int | None = None):
        """torch spelling: the shape, or one size."""
        return self.shape if dim is None else self.shape[normalize_dim(dim, self.ndim)]

    def stride(self, dim: int | None = None):
        """torch spelling: the strides (in elements), or one stride."""
        return self.strides if dim is None else self.strides[normalize_dim(dim, self.ndim)]

    def storage_offset(self) -> int:
        """torch spelling of ``offset``."""
        return self.offset

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), precision=4, suppress_small=True, separator=", ")
        return (f"Tensor(shape={self.shape}, strides={self.strides}, offset={self.offset}, "
                f"dtype={self.dtype})\n{body}")

    # ---- reading the elements -----------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A fresh NumPy array (a copy) holding the logical elements, shape ``self.shape``
        (see :func:`gather_view`)."""
        return gather_view(self.storage, self.shape, self.strides, self.offset)

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.numpy().reshape(()).item()

    # ---- contiguity -----------------------------------------------------------------------
    def is_contiguous(self) -> bool:
        """True when a walk through storage from ``offset`` meets the elements in row-major order."""
        return is_contiguous_layout(self.shape, self.strides)

    def contiguous(self) -> Tensor:
        """``self`` if already contiguous, otherwise a row-major copy in fresh storage."""
        if self.is_contiguous():
            return self
        return Tensor(self.numpy().reshape(-1), self.shape)

    # ---- views: new shape/strides/offset, same storage ----------------------------------------
    def _view_of_self(self, shape: Sequence[int], strides: Sequence[int], offset: int | None = None) -> Tensor:
        return Tensor(self.storage, shape, strides, self.offset if offset is None else offset)

    def view(self, *shape) -> Tensor:
        """The same elements in a new shape, sharing storage; one size may be -1.

        Raises if the strides don't allow it (e.g. after a transpose): call
        ``.contiguous()`` first, or use ``reshape``, which copies only when it must.
        """
        new_shape = infer_shape(_shape_arg(shape), self.numel())
        new_strides = view_strides(self.shape, self.strides, new_shape)
        if new_strides is None:
            raise ValueError(
                f"view({', '.join(map(str, new_shape))}) is impossible for shape {self.shape} "
                f"with strides {self.strides}: "
                f"some new dimension would span elements that are not evenly spaced in storage. "
                f"Call .contiguous() first (it copies), or use .reshape(), which copies only when needed."
            )
        return self._view_of_self(new_shape, new_strides)

    def reshape(self, *shape) -> Tensor:
        """A view when the strides allow it, otherwise a contiguous copy in the new shape."""
        new_shape = infer_shape(_shape_arg(shape), self.numel())
        if view_strides(self.shape, self.strides, new_shape) is not None:
            return self.view(new_shape)
        return self.contiguous().view(new_shape)

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        """Swap two dimensions: swap their sizes and their strides (:func:`transpose_layout`).
        No data moves."""
        return self._view_of_self(*transpose_layout(self.shape, self.strides, dim0, dim1))

    @property
    def T(self) -> Tensor:
        """All dimensions reversed (for 2-D: the transpose)."""
        return self.permute(*reversed(range(self.ndim)))

    def permute(self, *dims) -> Tensor:
        """Reorder the dimensions: new dimension i is old dimension ``dims[i]``."""
        dims = tuple(normalize_dim(d, self.ndim) for d in _shape_arg(dims))
        if sorted(dims) != list(range(self.ndim)):
            raise ValueError(f"permute{dims} is not a permutation of the {self.ndim} dimensions "
                             f"of shape {self.shape}")
        return self._view_of_self([self.shape[d] for d in dims], [self.strides[d] for d in dims])

    def expand(self, *sizes) -> Tensor:
        """Repeat size-1 dimensions (and add leading ones) without copying: stride 0.

        With stride 0, every step along that dimension lands on the same storage
        element, so an ``(1, 4)`` row can pose as a ``(3, 4)`` matrix. ``-1`` keeps a size.
        """
        sizes = _shape_arg(sizes)
        n_new = len(sizes) - self.ndim
        if n_new < 0:
            raise ValueError(f"expand{sizes} has fewer sizes than the tensor has dimensions (shape {self.shape})")
        shape, strides = [0] * len(sizes), [0] * len(sizes)
        for i in range(len(sizes) - 1, -1, -1):  # right to left, like broadcasting
            target = sizes[i]
            if i >= n_new:  # an existing dimension
                size, stride = self.shape[i - n_new], self.strides[i - n_new]
                if target == -1:
                    target = size
            else:  # a new leading dimension, size 1 before expanding
                if target < 0:
                    raise ValueError(f"expand{sizes}: a new leading dimension needs a size >= 0, got {target}")
                # A size-1 dimension's stride is never used; this is torch's choice, so stride() matches.
                size, stride = 1, (shape[i + 1] * strides[i + 1] if i + 1 < len(sizes) else 0)
            if size != target:
                if size != 1:
                    raise ValueError(f"cannot expand shape {self.shape} to {sizes}: dimension {i} has size "
                                     f"{size}, and only size-1 dimensions can be expanded")
                stride = 0  # every index along this dimension reads the same element
            shape[i], strides[i] = target, stride
        return self._view_of_self(shape, strides)

    def unsqueeze(self, dim: int) -> Tensor:
        """Insert a size-1 dimension at ``dim`` (``-1`` appends one at the end)."""
        d = normalize_dim(dim, self.ndim, extra=1)
        # The new stride is never used (size 1); torch picks "as if contiguous here".
        stride = self.shape[d] * self.strides[d] if d < self.ndim else 1
        return self._view_of_self(self.shape[:d] + (1,) + self.shape[d:],
                                  self.strides[:d] + (stride,) + self.strides[d:])

    def squeeze(self, dim: int | None = None) -> Tensor:
        """Drop size-1 dimensions: all of them, or only ``dim`` (a no-op if its size is not 1)."""
        if dim is None:
            keep = [d for d in range(self.ndim) if self.shape[d] != 1]
        else:
            d = normalize_dim(dim, self.ndim)
            keep = [e for e in range(self.ndim) if e != d or self.shape[e] != 1]
        return self._view_of_self([self.shape[d] for d in keep], [self.strides[d] for d in keep])

    def unfold(self, dim: int, size: int, step: int) -> Tensor:
        """Every window of ``size`` elements along ``dim``, ``step`` apart, as a new last dimension:
        a view, like torch's ``Tensor.unfold`` (see :func:`unfold_layout`)."""
        shape, strides = unfold_layout(self.shape, self.strides, dim, size, step)
        return self._view_of_self(shape, strides)

    def __getitem__(self, index) -> Tensor:
        """Basic indexing with ints, slices (positive steps) and ``...``; always a view.

        An int picks one position and removes the dimension (offset moves by
        ``i * stride``); a slice ``start:stop:step`` keeps the dimension with
        ``ceil((stop - start) / step)`` elements and stride ``stride * step``.
        """
        items = index if isinstance(index, tuple) else (index,)
        if sum(item is Ellipsis for item in items) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items = items[:at] + (slice(None),) * (self.ndim - len(items) + 1) + items[at + 1:]
        if len(items) > self.ndim:
            raise IndexError(f"too many indices: {len(items)} for a tensor of shape {self.shape}")
        items = items + (slice(None),) * (self.ndim - len(items))

        shape, strides, offset = [], [], self.offset
        for d, item in enumerate(items):
            size, stride = self.shape[d], self.strides[d]
            if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
                i = int(item) + size if item < 0 else int(item)
                if not 0 <= i < size:
                    raise IndexError(f"index {item} is out of bounds for dimension {d} with size {size}")
                offset += i * stride
            elif isinstance(item, slice):
                if item.step is not None and item.step <= 0:
                    raise ValueError(f"slice step must be positive, got {item.step} (torch also refuses "
                                     f"negative steps: strides here are >= 0; use .numpy()[::-1] to reverse)")
                start, stop, step = item.indices(size)
                length = max(0, -(-(stop - start) // step))  # ceil division
                offset += start * stride
                shape.append(length)
                strides.append(stride * step)
            else:
                raise TypeError(f"index {item!r} at position {d}: only ints, slices and ... are supported "
                                f"(use .unsqueeze() to add a dimension)")
        return self._view_of_self(shape, strides, offset)

    # ---- dtype --------------------------------------------------------------------------------
    def to(self, dtype: str) -> Tensor:
        """A contiguous copy converted to ``dtype`` ("float32", "float16", "int8", ...)."""
        info = dtype_info(dtype)
        if info.numpy is None and info.torch is not None:
            raise ValueError(f"NumPy has no {info.name} type, so this teaching tensor cannot hold it; "
                             f"torch can: torch.zeros(3, dtype={info.torch})")
        if info.numpy is None:
            raise ValueError(f"{info.name} is a storage format (two values per byte), not a dtype to compute in")
        return Tensor(self.numpy().astype(info.numpy).reshape(-1), self.shape)

    # ---- arithmetic: broadcast by expanding (views), then compute on the gathered values ----------
    def _binary(self, other: Any, op: Callable[[np.ndarray, Any], np.ndarray]) -> Tensor:
        if isinstance(other, (int, float, bool, np.number)):
            # A Python number keeps our dtype: float32 + 0.5 stays float32, as in torch.
            return from_numpy(np.asarray(op(self.numpy(), other)))
        other = other if isinstance(other, Tensor) else from_numpy(np.asarray(other))
        shape = broadcast_shapes(self.shape, other.shape)
        a, b = self.expand(*shape), other.expand(*shape)  # views with stride 0 where repeated
        return from_numpy(np.asarray(op(a.numpy(), b.numpy())))

    def __add__(self, other): return self._binary(other, np.add)
    def __radd__(self, other): return self._binary(other, lambda a, b: np.add(b, a))
    def __sub__(self, other): return self._binary(other, np.subtract)
    def __rsub__(self, other): return self._binary(other, lambda a, b: np.subtract(b, a))
    def __mul__(self, other): return self._binary(other, np.multiply)
    def __rmul__(self, other): return self._binary(other, lambda a, b: np.multiply(b, a))
    def __truediv__(self, other): return self._binary(other, np.true_divide)
    def __rtruediv__(self, other): return self._binary(other, lambda a, b: np.true_divide(b, a))
    def __neg__(self): return from_numpy(-self.numpy())

    def maximum(self, other) -> Tensor:
        """Elementwise maximum with broadcasting (``torch.maximum``)."""
        return self._binary(other, np.maximum)

    def exp(self) -> Tensor:
        return from_numpy(np.exp(self.numpy()))

    def __matmul__(self, other: Tensor) -> Tensor:
        return matmul(self, other)

    def matmul(self, other: Tensor) -> Tensor:
        return matmul(self, other)

    # ---- reductions -----------------------------------------------------------------------
    def _reduce(self, op: Callable[..., np.ndarray], dim: int | None, keepdim: bool) -> Tensor:
        """Apply ``op(rows, axis=1)`` to every line of elements along ``dim``.

        Permute ``dim`` to the end (a view) and read it out as a
        ``(everything else, size of dim)`` matrix: each row is then one line to reduce.
        """
        if dim is None:
            result = np.asarray(op(self.numpy().reshape(1, -1), axis=1)[0])
            return from_numpy(result.reshape((1,) * self.ndim if keepdim else ()))
        d = normalize_dim(dim, self.ndim)
        others = [e for e in range(self.ndim) if e != d]
        rest = tuple(self.shape[e] for e in others)
        # .numpy() gathers the permuted view in row-major order: each run of shape[d] values is one line.
        lines = self.permute(*others, d).numpy().reshape(numel_of(rest), self.shape[d])
        out = from_numpy(np.asarray(op(lines, axis=1)).reshape(rest))
        return out.unsqueeze(d) if keepdim else out

    def sum(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        return self._reduce(np.sum, dim, keepdim)

    def mean(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        return self._reduce(np.mean, dim, keepdim)

    def max(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        """Largest value along ``dim`` — values only (torch also returns the indices)."""
        size = self.numel() if dim is None else self.shape[normalize_dim(dim, self.ndim)]
        if size == 0:
            raise ValueError(f"max() over an empty dimension of shape {self.shape} has no answer")
        return self._reduce(np.max, dim, keepdim)


# --------------------------------------------------------------------------------------
# Constructors.

def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor over ``array``'s memory when it is C-contiguous (shared, like
    ``torch.from_numpy``), otherwise over a contiguous copy."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return Tensor(array.reshape(-1), array.shape)


def tensor(data: Any, dtype: str | None = None) -> Tensor:
    """A new tensor from nested lists or an array; Python floats become float32 as in torch."""
    if dtype is not None:
        info = dtype_info(dtype)
        if info.numpy is None:
            raise ValueError(f"NumPy has no {info.name} type (see DTYPES[{info.name!r}].note)")
        array = np.array(data, dtype=info.numpy)
    else:
        array = np.array(data)
        if array.dtype == np.float64 and not isinstance(data, np.ndarray):
            array = array.astype(np.float32)
    return from_numpy(array)


def zeros(*shape, dtype: str = "float32") -> Tensor:
    shape = _shape_arg(shape)
    return Tensor(np.zeros(numel_of(shape), dtype=dtype_info(dtype).numpy), shape)


def ones(*shape, dtype: str = "float32") -> Tensor:
    shape = _shape_arg(shape)
    return Tensor(np.ones(numel_of(shape), dtype=dtype_info(dtype).numpy), shape)


def arange(start: float, stop: float | None = None, step: float = 1, dtype: str | None = None) -> Tensor:
    """``arange(6)`` -> 0..5 (int64, like torch); ``arange(0, 1, 0.25, dtype="float32")``."""
    if stop is None:
        start, stop = 0, start
    values = np.arange(start, stop, step)
    if dtype is not None:
        values = values.astype(dtype_info(dtype).numpy)
    elif values.dtype == np.float64:
        values = values.astype(np.float32)
    return Tensor(values, values.shape)


# --------------------------------------------------------------------------------------
# Matrix multiplication from its definition.

def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with torch's rules: ``(..., m, k) @ (..., k, n) -> (..., m, n)``.

    Leading "batch" dimensions broadcast; a 1-D ``a`` is a row ``(1, k)`` and a 1-D ``b``
    a column ``(k, 1)``, and that added dimension is dropped from the result.
    ``out[..., i, j] = sum over p of a[..., i, p] * b[..., p, j]`` — computed one output
    row at a time: row i of a, as a column, times all of b, summed over p.
    """
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs at least 1-D operands, got shapes {a.shape} and {b.shape}")
    a2 = a.unsqueeze(0) if a.ndim == 1 else a  # (..., m, k)
    b2 = b.unsqueeze(-1) if b.ndim == 1 else b  # (..., k, n)
    (m, k), (k_b, n) = a2.shape[-2:], b2.shape[-2:]
    if k != k_b:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied: "
                         f"inner dimensions are {k} vs {k_b}")
    batch = broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    lhs = a2.expand(*batch, m, k).numpy().reshape(-1, m, k)  # (B, m, k)
    rhs = b2.expand(*batch, k, n).numpy().reshape(-1, k, n)  # (B, k, n)

    out_dtype = np.result_type(lhs.dtype, rhs.dtype)
    # Accumulate floats in float64 so the result doesn't depend on summation order
    # (BLAS libraries sum in blocks; we want agreement with them to ~1e-7, not ~1e-5).
    acc_dtype = np.float64 if np.issubdtype(out_dtype, np.floating) else out_dtype
    out = np.zeros((lhs.shape[0], m, n), dtype=acc_dtype)
    for batch_i in range(lhs.shape[0]):
        for i in range(m):
            # (k, 1) * (k, n) -> (k, n); summing over p gives row i of the output, (n,)
            out[batch_i, i] = (lhs[batch_i, i, :, None].astype(acc_dtype) * rhs[batch_i]).sum(axis=0)
    result = from_numpy(out.astype(out_dtype).reshape(*batch, m, n))
    if a.ndim == 1:
        result = result.squeeze(-2)
    if b.ndim == 1:
        result = result.squeeze(-1)
    return result


# --------------------------------------------------------------------------------------
# Broadcasting, backwards: where a broadcast input's gradient comes from.

def unbroadcast(grad: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum ``grad``, the gradient of a broadcast result, back to the input's ``shape``.

    If ``x`` of ``shape`` was broadcast to ``grad.shape`` (``x + y``, ``x * y``, ...), each
    element of ``x`` was read by every position it was stretched over, so its gradient is
    the *sum* of ``grad`` over those positions: over the leading dimensions broadcasting
    added, and over every dimension where ``shape`` has size 1 and ``grad`` does not (kept,
    with size 1). ``unbroadcast(ones of shape (2, 3, 4), (3, 1))`` has shape ``(3, 1)``,
    every value 8. ValueError if ``shape`` does not broadcast to ``grad.shape``.
    """
    shape = tuple(int(n) for n in shape)
    if broadcast_shapes(shape, grad.shape) != grad.shape:  # also raises for shapes that clash
        raise ValueError(f"unbroadcast: shape {shape} does not broadcast to the gradient's shape {grad.shape}")
    out = grad
    for _ in range(grad.ndim - len(shape)):
        out = out.sum(0)  # a dimension broadcasting added on the left: every copy adds up
    for d, size in enumerate(shape):
        if size == 1 and out.shape[d] != 1:
            out = out.sum(d, keepdim=True)  # a size-1 dimension that was stretched
    return out
