"""Chapter 07: quantization — fewer bytes per weight, and kernels that read them.

A float32 weight takes 4 bytes. Decoding one token reads every weight once, so on a CPU
generation is limited by how fast memory delivers those bytes (chapter 06). Storing weights
in fewer bytes saves memory *and*, with a kernel that reads the small integers directly,
time.

- **float16 / bfloat16**: 2 bytes, a plain cast (``cast_model``). bfloat16 keeps float32's
  range with fewer mantissa bits; float16 keeps more bits with a smaller range.
- **int8 absmax** (1 byte): ``scale = max|w| / 127``, ``q = round(w / scale)`` in
  [-127, 127], ``w ≈ q * scale``. One scale for the whole tensor ("per-tensor") lets one
  outlier coarsen every weight; one scale per output row ("per-channel") confines it to
  its row.
- **int4 group-wise** (half a byte): one scale per group of 32/64/128 consecutive weights
  of a row, values in [-7, 7] stored as 1..15 (symmetric), or an affine ``(q - zero) *
  scale`` with q in [0, 15] that uses all 16 levels for the group's [min, max]
  (zero point). Two 4-bit values are packed into each byte.

The reference path is the readable one: ``quantize_*`` -> ``pack_int4`` -> ``unpack_int4``
-> ``dequantize_*`` -> an ordinary matrix product. ``QuantLinear`` and ``QuantEmbedding``
store the integers and scales as buffers (so ``state_dict``, saving and loading work) and,
on the CPU, call PyTorch's weight-only kernels instead when they exist:
``torch._weight_int8pack_mm`` (int8, per-channel scales) and
``torch.ops.aten._weight_int4pack_mm_for_cpu`` (int4 groups, weights in the layout
``_convert_weight_to_int4pack_for_cpu`` makes). Both are fast only with **bfloat16
activations**, so the fast path rounds its input to bfloat16 and its output comes back
in bfloat16 precision (about 3 significant digits), converted to the input's dtype.
``tests/test_quantization.py`` checks them against the reference path.

Past the chapter (its stretch exercises, not used by the layers): ``quantize_int4_clipped``
searches, per group, the clipping ratio of the symmetric int4 scale that minimises the
reconstruction error (``clip_search_errors``), and ``w8a8_linear`` quantizes activations
per token too (``quantize_per_token``) and multiplies int8 by int8 with int32 sums
(``int8_matmul``) before rescaling.

Convolutions (chapter 10): a conv's filters (C_out, C_in / groups, kh, kw) flattened to
(C_out, C_in / groups * kh * kw) are the rows im2col's columns are multiplied by, so
``QuantConv2d`` quantizes them per output channel exactly as a Linear's rows (int8 schemes;
int4 leaves convolutions in float).

``quantize_model(model, scheme)`` swaps a float model's layers in place;
``course_lib.load_model(src, quantize="int8")`` quantizes while reading the file, one
tensor (or block of rows) at a time, so the float32 model never exists in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import layers
from course_lib.checkpoint import CheckpointError, release_freed_memory

SCALE_DTYPE = torch.bfloat16  # scales are stored (and read by the kernels) in bfloat16: 2 bytes each
BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int4": 0.5}
FLOAT_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------
# Schemes

@dataclasses.dataclass(frozen=True)
class Scheme:
    """How weights are quantized.

    ``bits``: 8 or 4. ``granularity``: ``"tensor"`` (one scale), ``"channel"`` (one per
    output row) or ``"group"`` (one per ``group_size`` consecutive weights of a row).
    ``zero_point``: affine ``(q - zero) * scale`` instead of symmetric ``q * scale``.
    """

    bits: int
    granularity: str
    group_size: int | None = None
    zero_point: bool = False

    @property
    def name(self) -> str:
        if self.bits == 8:
            return "int8" if self.granularity == "channel" else "int8-tensor"
        return f"int4-g{self.group_size}" + ("" if self.zero_point else "-sym")

    @property
    def qmax(self) -> int:
        """The largest symmetric level: 127 for int8, 7 for int4."""
        return 2 ** (self.bits - 1) - 1

    def __str__(self) -> str:
        return self.name


_SCHEME_PATTERN = re.compile(
    r"int(?P<bits>[48])(?:-(?P<tensor>tensor|channel))?(?:-g(?P<group>\d+))?(?:-(?P<zp>zp|sym))?")


def parse_scheme(scheme: str | Scheme) -> Scheme:
    """``"int8"`` (per-channel), ``"int8-tensor"``, ``"int4"`` (= ``"int4-g32"``: groups of 32 with a
    zero point), ``"int4-g64"``, ``"int4-g128"``, and the symmetric int4 ones ending in ``"-sym"``
    (``"-zp"`` is accepted for the default) -> a ``Scheme``.

    int4 has a zero point by default: on the course's models it was clearly better for the
    same memory in the kernels' layout (tiny GPT-2 perplexity +0.3 % instead of +0.9 %,
    MiniLM embedding cosine 0.97 instead of 0.95, groups of 32).
    """
    if isinstance(scheme, Scheme):
        return scheme
    found = _SCHEME_PATTERN.fullmatch(str(scheme).strip().lower())
    if found is None:
        raise ValueError(f"quantization scheme {scheme!r} is not known: use 'int8' (per-channel), 'int8-tensor', "
                         f"'int4' (groups of 32 with a zero point), 'int4-g64', 'int4-g128', or an int4 one "
                         f"ending in '-sym' (symmetric); for float16/bfloat16 use cast_model or dtype=")
    bits, group, zp = int(found["bits"]), found["group"], found["zp"] != "sym"
    if bits == 8:
        if group or found["zp"]:
            raise ValueError(f"{scheme!r}: int8 here is symmetric per-channel ('int8') or per-tensor "
                             f"('int8-tensor'); groups and zero points are int4 options")
        return Scheme(8, found["tensor"] or "channel")
    if found["tensor"]:
        raise ValueError(f"{scheme!r}: int4 is always group-wise here (16 levels are too few for a whole row); "
                         f"use 'int4', 'int4-g64' or 'int4-g128'")
    group_size = int(group or 32)
    if group_size < 2 or group_size % 2:
        raise ValueError(f"{scheme!r}: the group size must be an even number (32, 64 or 128 are usual)")
    return Scheme(4, "group", group_size, zp)


# --------------------------------------------------------------------------------------
# The reference path: quantize, pack, unpack, dequantize

def absmax_scale(w: torch.Tensor, qmax: int = 127, dim: int | None = None) -> torch.Tensor:
    """``max|w| / qmax``: over the whole tensor (``dim=None``, shape ()) or along ``dim`` (kept as size 1).

    The scale is rounded to ``SCALE_DTYPE`` (how it is stored), and an all-zero tensor or
    row gets scale 1 so that dividing by it is safe.
    """
    amax = w.abs().amax() if dim is None else w.abs().amax(dim=dim, keepdim=True)
    scale = (amax.float() / qmax).to(SCALE_DTYPE)
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def quantize_absmax(w: torch.Tensor, scale: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """``clamp(round(w / scale), -qmax, qmax)`` as int8 (``scale`` broadcasts against ``w``)."""
    return torch.clamp(torch.round(w.float() / scale.float()), -qmax, qmax).to(torch.int8)


def quantize_int8(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """float (N, K) -> (q int8 (N, K), scale bfloat16 (N,) per output row, or () per tensor)."""
    scale = absmax_scale(w, 127, dim=-1 if per_channel else None)
    return quantize_absmax(w, scale, 127), scale.squeeze(-1) if per_channel else scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 (N, K) and scale (N,) or () -> ``q * scale`` as ``dtype`` (N, K)."""
    scale = scale.float().unsqueeze(-1) if scale.dim() else scale.float()
    return (q.float() * scale).to(dtype)


def group_rows(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., K) -> (..., K / group_size, group_size): each row cut into groups of consecutive weights."""
    if w.shape[-1] % group_size:
        raise ValueError(f"rows of {w.shape[-1]} values cannot be cut into groups of {group_size}: use a group "
                         f"size that divides {w.shape[-1]} (e.g. 32, or leave this layer in float)")
    return w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)


def quantize_int4(w: torch.Tensor, group_size: int = 32, zero_point: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """float (N, K) -> (q uint8 (N, K) in [0, 15], scale bfloat16 (N, K / group_size), zero uint8 or None).

    Symmetric: ``scale = max|w| / 7`` per group, ``q = round(w / scale) + 8`` (levels 1..15),
    ``w ≈ (q - 8) * scale``. Zero point: with ``lo = min(min, 0)`` and ``hi = max(max, 0)``,
    ``scale = (hi - lo) / 15``, ``zero = round(-lo / scale)``, ``q = round(w / scale) + zero``
    clamped to 0..15, ``w ≈ (q - zero) * scale``: all 16 levels cover the group's own range.
    """
    groups = group_rows(w.float(), group_size)  # (N, G, g)
    if not zero_point:
        scale = absmax_scale(groups, 7, dim=-1)  # (N, G, 1)
        q = quantize_absmax(groups, scale, 7).to(torch.int16) + 8
        return q.to(torch.uint8).flatten(-2), scale.squeeze(-1), None
    # the range always includes 0, so 0.0 is exactly a level (the zero point) and a group whose
    # values all have the same sign still fits (zero 0 or 15) instead of being clamped away
    lo = groups.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = groups.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 15).to(SCALE_DTYPE)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale.float()), 0, 15)
    q = torch.clamp(torch.round(groups / scale.float()) + zero, 0, 15)
    return q.to(torch.uint8).flatten(-2), scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8)


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (N, K) in [0, 15], scale (N, G), zero (N, G) or None (symmetric: 8) -> ``(q - zero) * scale`` (N, K)."""
    groups = group_rows(q.float(), q.shape[-1] // scale.shape[-1])  # (N, G, g)
    zero = 8.0 if zero is None else zero.float().unsqueeze(-1)
    return ((groups - zero) * scale.float().unsqueeze(-1)).flatten(-2).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 (..., K) with values 0..15 -> uint8 (..., K / 2): value ``2i`` in the low 4 bits of byte ``i``,
    value ``2i + 1`` in the high 4 bits."""
    if q.shape[-1] % 2:
        raise ValueError(f"packing two 4-bit values per byte needs an even number of columns, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: uint8 (..., K / 2) -> uint8 (..., K) with values 0..15."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """``||w - w_hat|| / ||w||`` (Frobenius norms): 0 is perfect; 0.01 is a 1 % error."""
    w, w_hat = w.double(), w_hat.double()
    return float(torch.linalg.vector_norm(w - w_hat) / torch.linalg.vector_norm(w).clamp_min(1e-300))


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in decibels, ``-20 log10(relative_error)``: each extra bit adds ~6 dB."""
    err = relative_error(w, w_hat)
    return float("inf") if err == 0 else -20.0 * torch.log10(torch.tensor(err)).item()


def fake_quantize(w: torch.Tensor, scheme: str | Scheme) -> torch.Tensor:
    """``w`` quantized with ``scheme`` and dequantized again (same shape and dtype): the weights a quantized
    layer computes with (in the int4 kernel's layout a zero point is held as a bfloat16 offset, which can
    move a weight by up to scale / 32)."""
    scheme = parse_scheme(scheme)
    if scheme.bits == 8:
        q, scale = quantize_int8(w, scheme.granularity == "channel")
        return dequantize_int8(q, scale, w.dtype)
    q, scale, zero = quantize_int4(w, scheme.group_size, scheme.zero_point)
    return dequantize_int4(unpack_int4(pack_int4(q)), scale, zero, w.dtype)



# --------------------------------------------------------------------------------------
# Past the chapter (its stretch exercises): int4 with a learned clip, int8 activations (W8A8)

CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)  # the clipping ratios searched


def clip_search_errors(w: torch.Tensor, group_size: int = 32, ratios: tuple[float, ...] = CLIP_RATIOS
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group with each clipping ratio: float (N, K) -> (scales, errors), both (R, N, G).

    For ratio ``r`` a group's scale is ``r * max|group| / 7`` (computed in float32, rounded
    to bfloat16, 1 for an all-zero group); below 1 the largest weights are clipped to ±7
    levels, and every other weight gets finer steps. ``errors[r, i, j]`` is group (i, j)'s
    squared error ``sum (w - (q - 8) * scale)^2`` with that scale, in float64: the rounding
    error of the small weights plus the clipping error of the large ones.
    """
    grouped = group_rows(w.float(), group_size)  # (N, G, g)
    peak = grouped.abs().amax(dim=-1, keepdim=True)  # (N, G, 1)
    candidates, errors = [], []
    for ratio in ratios:
        step = (peak * ratio / 7).to(SCALE_DTYPE)
        step = step.masked_fill(step == 0, 1.0)  # an all-zero group: any scale is exact
        levels = quantize_absmax(grouped, step, 7)  # clamped to ±7: that is where the clipping happens
        residual = grouped.double() - levels.double() * step.double()
        candidates.append(step.squeeze(-1))
        errors.append(residual.square().sum(dim=-1))  # (N, G)
    return torch.stack(candidates), torch.stack(errors)


def quantize_int4_clipped(w: torch.Tensor, group_size: int = 32, ratios: tuple[float, ...] = CLIP_RATIOS
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 with a learned clip: each group gets the ratio (of ``ratios``) whose scale
    ``ratio * max|group| / 7`` reconstructs it best. float (N, K) -> (q uint8 (N, K) in 1..15,
    scale bfloat16 (N, K / group_size)); the weight comes back as ``(q - 8) * scale``.

    Plain absmax (ratio 1) spends levels on the range up to the largest weight; in a group
    with one large weight most of the others then share a few levels. Clipping the few large
    weights buys finer steps for all the others, and the search (``clip_search_errors``)
    picks, per group, the ratio with the smallest squared error (the first one on a tie),
    as AWQ and GPTQ-style tools do with a grid of clipping ratios.
    """
    candidates, errors = clip_search_errors(w, group_size, ratios)  # (R, N, G) each
    pick = errors.argmin(dim=0, keepdim=True)  # (1, N, G): argmin returns the first of equal minima
    chosen = candidates.gather(0, pick).squeeze(0)  # (N, G)
    signed = quantize_absmax(group_rows(w.float(), group_size), chosen.unsqueeze(-1), 7)
    return (signed.to(torch.int16) + 8).to(torch.uint8).flatten(-2), chosen


def quantize_per_token(x: torch.Tensor, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic int8 for activations: float (..., K) -> (q int8 (..., K), scale float32 (..., 1)).

    Activations change with every input, so their scales are computed at run time, one per
    row (token): ``max|x_row| / qmax`` (1 for a row of zeros). They are never stored, so they
    stay float32 instead of being rounded to bfloat16 like the weights' scales.
    """
    peak = x.float().abs().amax(dim=-1, keepdim=True)  # (..., 1)
    per_row = torch.where(peak > 0, peak / qmax, torch.ones_like(peak))
    return quantize_absmax(x, per_row, qmax), per_row


def int8_matmul(q_x: torch.Tensor, q_w: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) times int8 (N, K) transposed -> int32 (M, N), the sums exact.

    An int8 matrix product would wrap around at 127; int8 hardware multiplies 8-bit values
    and accumulates in 32 bits, which this emulates (exact while K < 133,000: 127² K < 2³¹).
    """
    return torch.matmul(q_x.to(torch.int32), q_w.to(torch.int32).t())


def w8a8_linear(x: torch.Tensor, q_w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` with both operands in int8 ("W8A8"): x float (M, K), ``q_w`` int8 (N, K) and its
    per-channel scales ``w_scale`` (N,) (``quantize_int8``) -> float32 (M, N).

    ``x`` is quantized per token (``quantize_per_token``), the integers are multiplied with
    int32 sums (``int8_matmul``), and each sum is rescaled once by its row's activation scale
    and its column's weight scale: ``y[m, n] = acc[m, n] * x_scale[m] * w_scale[n]``. Weight-only
    int8 (``QuantLinear``) keeps the activations in float; this is what int8 tensor cores and
    SmoothQuant / LLM.int8()-style kernels compute.
    """
    q_x, x_scale = quantize_per_token(x)  # (M, K), (M, 1)
    total = int8_matmul(q_x, q_w)  # (M, N) int32
    return total.float() * x_scale * w_scale.float()  # rows by x_scale, columns by w_scale


# --------------------------------------------------------------------------------------
# PyTorch's CPU kernels and the int4 weight layout they read

_KERNELS_ENABLED = True


@contextlib.contextmanager
def reference_path():
    """Within this block quantized layers compute with the reference path (dequantize, then matmul)."""
    global _KERNELS_ENABLED
    before, _KERNELS_ENABLED = _KERNELS_ENABLED, False
    try:
        yield
    finally:
        _KERNELS_ENABLED = before


def int8_kernel_available() -> bool:
    """``torch._weight_int8pack_mm``: int8 (N, K) weights, one scale per row, bfloat16 activations."""
    return hasattr(torch, "_weight_int8pack_mm")


@functools.cache
def int4_kernel_available() -> bool:
    """``_weight_int4pack_mm_for_cpu`` exists and its weight layout is the one ``int4_kernel_layout`` writes.

    The layout of a private kernel can change between PyTorch versions: it is checked once
    against PyTorch's own packing op, and a mismatch means the reference path is used.
    """
    ops = torch.ops.aten
    if not (hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")):
        return False
    q = torch.randint(0, 16, (80, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    try:
        theirs = ops._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    except RuntimeError:
        return False
    return torch.equal(theirs, int4_kernel_layout(q)) and torch.equal(int4_from_kernel_layout(theirs, 64), q)


INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # the group sizes _weight_int4pack_mm_for_cpu accepts
_BLOCK = 64  # rows j and j + 32 of each block of 64 share a byte; a last block of 16/32/48 rows pairs rows 2j, 2j+1


def group_size_advice(width: int, group_size: int) -> str:
    """Why rows of ``width`` values cannot be quantized in groups of ``group_size``, and group sizes that can.

    The suggestions divide ``width`` (and are even: two 4-bit values share a byte), nearest to
    the size asked for first; the sizes the int4 kernel takes are named as such.
    """
    fits = [g for g in range(2, min(width, 256) + 1, 2) if width % g == 0]
    message = f"rows of {width} values cannot be cut into groups of {group_size}"
    if not fits:
        return (f"{message}, and no even group size divides {width}: leave this layer in float "
                f"(quantize_model(..., skip=...)) or use 'int8'")
    near = sorted(sorted(fits, key=lambda g: (abs(g - group_size), -g))[:3])
    fast = [g for g in near if g in INT4_KERNEL_GROUPS]
    listed = ", ".join(map(str, near[:-1])) + (" or " if len(near) > 1 else "") + str(near[-1])
    speed = (f"PyTorch's int4 kernel takes {' and '.join(map(str, fast))}" if fast else
             f"PyTorch's int4 kernel takes only {', '.join(map(str, INT4_KERNEL_GROUPS))}: other sizes run on "
             f"the slower reference path")
    return (f"{message}: use a group size that divides {width}, e.g. {listed} (scheme "
            f"'int4-g{(fast or near)[-1]}'; {speed}), or leave this layer in float (quantize_model(..., skip=...))")


def padded_rows(n: int) -> int:
    """The int4 kernel needs a multiple of 16 rows: GPT-2's 50,257-row head is padded to 50,272."""
    return -(-n // 16) * 16


def int4_kernel_layout(q: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K) values 0..15, N a multiple of 16 -> uint8 (N, K / 2) in ``_weight_int4pack_mm_for_cpu``'s layout.

    The same bytes as ``torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.int(), 1)``,
    without its int32 copy of the whole matrix: blocks of 64 rows, each stored column by
    column (K columns x 32 bytes), byte j holding row j (low nibble) and row j + 32 (high);
    the last block of R < 64 rows stores K columns x R / 2 bytes, pairing rows 2j and 2j + 1.
    """
    N, K = q.shape
    full = N // _BLOCK * _BLOCK
    blocks = q[:full].reshape(full // _BLOCK, 2, _BLOCK // 2, K)  # (blocks, low/high, 32, K)
    tail = q[full:].reshape((N - full) // 2, 2, K)  # (R/2, low/high, K)
    parts = [(blocks[:, 0] | (blocks[:, 1] << 4)).transpose(1, 2).reshape(-1),  # (blocks, K, 32)
             (tail[:, 0] | (tail[:, 1] << 4)).t().reshape(-1)]  # (K, R/2)
    return torch.cat(parts).view(N, K // 2)


def int4_from_kernel_layout(packed: torch.Tensor, K: int) -> torch.Tensor:
    """The inverse of ``int4_kernel_layout``: uint8 (N, K / 2) -> uint8 (N, K) values 0..15."""
    N = packed.shape[0]
    full = N // _BLOCK * _BLOCK
    flat = packed.reshape(-1)
    blocks = flat[:full * K // 2].view(full // _BLOCK, K, _BLOCK // 2).transpose(1, 2)  # (blocks, 32, K)
    tail = flat[full * K // 2:].view(K, (N - full) // 2).t()  # (R/2, K)
    rows = [torch.stack((blocks & 15, blocks >> 4), dim=1).reshape(full, K),
            torch.stack((tail & 15, tail >> 4), dim=1).reshape(N - full, K)]
    return torch.cat(rows)


def int4_kernel_layout_rows(packed: torch.Tensor, ids: torch.Tensor, K: int) -> torch.Tensor:
    """Rows ``ids`` (M,) of a matrix in the kernel layout -> uint8 (M, K) values 0..15, unpacking only those rows."""
    N = packed.shape[0]
    full = N // _BLOCK * _BLOCK
    in_block = ids < full
    base = torch.where(in_block, ids // _BLOCK * (_BLOCK * K // 2), full * K // 2)  # where the row's block starts
    stride = torch.where(in_block, _BLOCK // 2, (N - full) // 2)  # bytes per column in that block
    byte = torch.where(in_block, ids % (_BLOCK // 2), (ids - full) // 2)
    shift = torch.where(in_block, ids % _BLOCK // (_BLOCK // 2), (ids - full) % 2) * 4
    index = base[:, None] + torch.arange(K, device=ids.device) * stride[:, None] + byte[:, None]  # (M, K)
    return (packed.reshape(-1)[index] >> shift[:, None].to(torch.uint8)) & 15


# --------------------------------------------------------------------------------------
# Layers that hold quantized weights

CHUNK_BYTES = 4 * 2**20  # quantize big matrices this many float32 bytes of rows at a time
# (small: the allocator keeps freed blocks of up to 32 MB for reuse, so big temporaries stay resident)
# Rows above which dequantize-then-matmul beats the kernels (3072x768 here: at 16 rows the int8
# kernel took 0.7 ms vs 1.1 ms for float32; at 64 rows 19 ms vs 4 ms)
KERNEL_MAX_ROWS = 32
DEQUANT_BLOCK_BYTES = CHUNK_BYTES  # the reference path dequantizes this many float bytes of weight rows at a time


class QuantizedWeight(nn.Module):
    """An (out, in) weight stored quantized: the part ``QuantLinear`` and ``QuantEmbedding`` share.

    Buffers (what ``state_dict`` holds, whatever the layout in memory):

    - ``weight``: int8 (out, in), or for int4 uint8 (out, in / 2), two values per byte
      (``pack_int4``);
    - ``weight_scale``: bfloat16, (out,) per-channel, () per-tensor, (out, in / group) int4;
    - ``weight_zero_point``: uint8 (out, in / group), int4 with a zero point only.

    With ``kernel_layout=True`` and PyTorch's int4 CPU kernel present, an int4 weight is
    kept in memory in that kernel's layout instead (rows padded to a multiple of 16, scales
    and zeros interleaved in one (in / group, rows, 2) bfloat16 tensor), converted back to
    the layout above whenever a ``state_dict`` is taken: one copy in memory either way.
    """

    def __init__(self, out_features: int, in_features: int, scheme: str | Scheme, *, kernel_layout: bool = True,
                 device=None):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.scheme = parse_scheme(scheme)
        if self.scheme.bits == 4 and in_features % self.scheme.group_size:
            raise ValueError(group_size_advice(in_features, self.scheme.group_size))
        self.kernel_layout = kernel_layout  # wanted; ``layout`` says what the buffers hold now
        self.layout = "plain"
        self.compute_dtype = torch.float32  # the dtype outputs come back in (QuantEmbedding)
        for name, (shape, dtype) in self._plain_shapes().items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))

    def _plain_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        N, K, s = self.out_features, self.in_features, self.scheme
        if s.bits == 8:
            return {"weight": ((N, K), torch.int8), "weight_scale": ((N,) if s.granularity == "channel" else (),
                                                                     SCALE_DTYPE)}
        shapes = {"weight": ((N, K // 2), torch.uint8), "weight_scale": ((N, K // s.group_size), SCALE_DTYPE)}
        if s.zero_point:
            shapes["weight_zero_point"] = ((N, K // s.group_size), torch.uint8)
        return shapes

    # ---- filling from float weights
    def quantize_(self, rows_of) -> "QuantizedWeight":
        """Quantize a float weight into this layer, in blocks of rows; returns ``self``.

        ``rows_of(start, stop)`` returns float rows ``start:stop`` of the (out, in) weight:
        a slice of a tensor, or rows read from a checkpoint file. Only one block of float32
        rows exists at a time.
        """
        N, K = self.out_features, self.in_features
        self._buffers.pop("weight_zero_point", None)  # the kernel layout may have folded it into the scales
        for name, (shape, dtype) in self._plain_shapes().items():  # fresh buffers in the plain layout
            self._buffers[name] = torch.empty(shape, dtype=dtype)
        self.layout = "plain"
        step = max(1, CHUNK_BYTES // (4 * K))
        if self.scheme.granularity == "tensor":  # one scale for all rows: a first pass finds max|w|
            amax = max(float(rows_of(i, min(i + step, N)).abs().max()) for i in range(0, N, step))
            self.weight_scale = absmax_scale(torch.tensor(amax), 127)
        for start in range(0, N, step):
            stop = min(start + step, N)
            w = rows_of(start, stop).float()  # (rows, K)
            if self.scheme.bits == 8:
                if self.scheme.granularity == "tensor":
                    self.weight[start:stop] = quantize_absmax(w, self.weight_scale, 127)
                else:
                    self.weight[start:stop], self.weight_scale[start:stop] = quantize_int8(w)
            else:
                q, scale, zero = quantize_int4(w, self.scheme.group_size, self.scheme.zero_point)
                self.weight[start:stop], self.weight_scale[start:stop] = pack_int4(q), scale
                if zero is not None:
                    self.weight_zero_point[start:stop] = zero
        return self.use_kernel_layout()

    def fill_from_checkpoint(self, reader, key: str, transposed: bool = False) -> None:
        """Quantize checkpoint tensor ``key`` into this layer while reading it (``load_model(quantize=...)``).

        Rows are read from the file in blocks (``CheckpointReader.read_rows``), so the float
        tensor is never whole in memory; a weight the file stores transposed (GPT-2's Conv1D,
        a few MB) is read whole and transposed.
        """
        expected = (self.out_features, self.in_features)
        shape = tuple(reader.shape(key))
        if shape[::-1 if transposed else 1] != expected:
            raise ValueError(f"checkpoint tensor {key!r} has shape {shape}, the quantized layer needs "
                             f"{expected[::-1 if transposed else 1]}")
        if transposed:
            whole = reader.read_rows(key, 0, shape[0]).t()
            self.quantize_(lambda a, b: whole[a:b])
        else:
            self.quantize_(lambda a, b: reader.read_rows(key, a, b))
        release_freed_memory()

    def check_state(self, prefix: str = "", source: str = "the checkpoint", names=("weight_scale", "weight_zero_point")
                    ) -> None:
        """Refuse scales and zero points no quantizer writes: a clear error naming the key.

        A scale must be a finite number > 0 (NaN or infinity would spread to every output, 0
        would erase a row, a negative one flip its sign); a zero point must be a level, 0..15.
        Checked in the plain layout, as loaded (``use_kernel_layouts``, ``load_state_dict``);
        ``names``: the buffers to check (those just loaded).
        """
        if self.layout != "plain" or any(t is None or t.is_meta for t in self._buffers.values()):
            return  # converted by us already, or not filled yet (strict=False names what is missing)
        scale = self.weight_scale.float()
        bad = ~(torch.isfinite(scale) & (scale > 0))
        if "weight_scale" in names and bool(bad.any()):
            where = tuple(bad.nonzero()[0].tolist())
            at = f"[{', '.join(map(str, where))}]" if where else ""
            raise CheckpointError(f"{source}: tensor {prefix}weight_scale{at} = {scale[where].item()}: a scale must "
                                  f"be a finite number > 0 ({int(bad.sum())} of {bad.numel()} are not); the file "
                                  f"is damaged or was not written by save_pretrained: quantize the float checkpoint "
                                  f"again (load_model(src, quantize=...))")
        zero = self._buffers.get("weight_zero_point") if "weight_zero_point" in names else None
        if zero is not None and bool((zero > 15).any()):
            where = tuple((zero > 15).nonzero()[0].tolist())
            raise CheckpointError(f"{source}: tensor {prefix}weight_zero_point[{', '.join(map(str, where))}] = "
                                  f"{int(zero[where])}: an int4 zero point is a level 0..15; the file is damaged "
                                  f"or was not written by save_pretrained: quantize the float checkpoint again")

    # ---- layouts
    def use_kernel_layout(self) -> "QuantizedWeight":
        """Make the buffers fit the kernels: int4 on the CPU with the kernel present is converted to the
        kernel's layout, and a buffer read straight from a file is copied if it is not 64-byte aligned."""
        for name, tensor in self._buffers.items():
            if tensor is not None and not tensor.is_meta and tensor.data_ptr() % 64:
                self._buffers[name] = tensor.clone()  # the kernels' vector loads crash on a misaligned file map
        if not (self.kernel_layout and self.layout == "plain" and self.scheme.bits == 4
                and self.scheme.group_size in INT4_KERNEL_GROUPS and self.weight.device.type == "cpu"
                and int4_kernel_available()):
            return self
        N, K = self.out_features, self.in_features
        n_pad = padded_rows(N)
        # padding rows: value 8 with scale 1 and zero 0 dequantize to 0
        scale = F.pad(self.weight_scale.float(), (0, 0, 0, n_pad - N), value=1.0)  # (N', G)
        zero = (8.0 - self.weight_zero_point.float()) * self.weight_scale.float() if self.scheme.zero_point \
            else torch.zeros(N, scale.shape[1])
        zero = F.pad(zero, (0, 0, 0, n_pad - N))
        packed = torch.empty(n_pad, K // 2, dtype=torch.uint8)
        step = _BLOCK * max(1, CHUNK_BYTES // (_BLOCK * K))  # blocks of 64 rows are laid out independently
        for start in range(0, n_pad, step):  # a block of rows at a time: no unpacked copy of the whole matrix
            stop = min(start + step, n_pad)
            q = unpack_int4(self.weight[start:stop])
            q = F.pad(q, (0, 0, 0, (stop - start) - q.shape[0]), value=8)
            packed[start:stop] = int4_kernel_layout(q)
        self.weight = packed
        self.weight_scale = torch.stack((scale.t(), zero.t()), dim=-1).to(SCALE_DTYPE).contiguous()  # (G, N', 2)
        if self.scheme.zero_point:
            del self._buffers["weight_zero_point"]
        self.layout = "int4-cpu-kernel"
        return self

    def plain_state(self) -> dict[str, torch.Tensor]:
        """The buffers in the plain layout (as saved), converted back from the kernel layout if need be."""
        if self.layout == "plain":
            return {name: self._buffers[name] for name in self._plain_shapes()}
        N = self.out_features
        q = int4_from_kernel_layout(self.weight, self.in_features)[:N]
        scale = self.weight_scale[..., 0].t()[:N].contiguous()  # (N, G) bfloat16
        state = {"weight": pack_int4(q), "weight_scale": scale}
        if self.scheme.zero_point:  # the kernel's zero is (8 - zero_point) * scale: recover the integer exactly
            offset = self.weight_scale[..., 1].t()[:N].float() / scale.float()
            state["weight_zero_point"] = (8 - torch.round(offset)).to(torch.uint8)
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, param in self._parameters.items():
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()
        for name, tensor in self.plain_state().items():
            destination[prefix + name] = tensor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.layout != "plain":  # load into the plain layout, then convert again
            for name, tensor in self.plain_state().items():
                self._buffers[name] = tensor
            self.layout = "plain"
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.check_state(prefix, "load_state_dict", [name for name in self._buffers if prefix + name in state_dict])
        self.use_kernel_layout()

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() would convert the bfloat16 scales too: keep them, note the new compute dtype
        probe = fn(torch.zeros((), dtype=self.compute_dtype))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        super()._apply(fn, recurse)
        for name, tensor in self._buffers.items():
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != SCALE_DTYPE:
                self._buffers[name] = tensor.to(SCALE_DTYPE)
        return self

    # ---- computing
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float (out, in) weight these integers and scales stand for: what the layer computes with."""
        if self.layout == "plain":
            if self.scheme.bits == 8:
                return dequantize_int8(self.weight, self.weight_scale, dtype)
            zero = self.weight_zero_point if self.scheme.zero_point else None
            return dequantize_int4(unpack_int4(self.weight), self.weight_scale, zero, dtype)
        q = int4_from_kernel_layout(self.weight, self.in_features)[:self.out_features]
        return self._dequantize_kernel_rows(q, self.weight_scale[:, :self.out_features], dtype)

    def _dequantize_kernel_rows(self, q: torch.Tensor, scale_zero: torch.Tensor, dtype) -> torch.Tensor:
        """q (M, K) values 0..15, scale_zero (G, M, 2) -> ``(q - 8) * scale + zero`` (M, K), as the kernel computes."""
        scale, zero = scale_zero.float().permute(2, 1, 0)  # 2 x (M, G)
        groups = group_rows(q.float(), self.scheme.group_size)  # (M, G, g)
        return ((groups - 8) * scale.unsqueeze(-1) + zero.unsqueeze(-1)).flatten(-2).to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dequantized rows ``ids`` (...) -> (..., in): an embedding lookup that unpacks only those rows."""
        dtype = dtype or self.compute_dtype
        flat = ids.reshape(-1)
        if self.layout != "plain":
            q = int4_kernel_layout_rows(self.weight, flat, self.in_features)
            out = self._dequantize_kernel_rows(q, self.weight_scale[:, flat], dtype)
        elif self.scheme.bits == 8:
            scale = self.weight_scale[flat] if self.weight_scale.dim() else self.weight_scale
            out = dequantize_int8(self.weight[flat], scale, dtype)
        else:
            zero = self.weight_zero_point[flat] if self.scheme.zero_point else None
            out = dequantize_int4(unpack_int4(self.weight[flat]), self.weight_scale[flat], zero, dtype)
        return out.reshape(*ids.shape, self.in_features)

    def requantized(self, scheme: "str | Scheme", **kwargs) -> "QuantizedWeight":
        """A new layer of the same kind holding this one's weight quantized again with ``scheme``.

        The weight is dequantized a block of rows at a time (``rows``) and quantized with the
        new scheme: its rounding error adds to the first one (``quantize_model`` warns).
        """
        new = self._empty_like(scheme, **kwargs)
        new.compute_dtype = self.compute_dtype
        if not self.weight.is_meta:
            new.quantize_(lambda a, b: self.rows(torch.arange(a, b, device=self.weight.device), torch.float32))
        return new

    def _empty_like(self, scheme, **kwargs) -> "QuantizedWeight":
        raise NotImplementedError

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """True when ``matmul(x)`` will run PyTorch's int8/int4 kernel rather than the reference path."""
        if not (_KERNELS_ENABLED and x.device.type == "cpu" and self.weight.device.type == "cpu"
                and x.is_floating_point() and not (torch.is_grad_enabled() and x.requires_grad)):
            return False
        if self.scheme.bits == 4:
            return self.layout == "int4-cpu-kernel"
        # the int8 kernel reads rows 16 values at a time: other widths give garbage or crash (AVX-512 here)
        return int8_kernel_available() and self.in_features % 16 == 0

    def _row_blocks(self, dtype: torch.dtype):
        """(start, stop) of blocks of output rows, each at most ``DEQUANT_BLOCK_BYTES`` once dequantized."""
        size = torch.empty((), dtype=dtype).element_size()
        if self.layout != "plain":
            size = max(size, 8)  # unpacking rows of the int4 kernel layout gathers with an int64 index per value
        step = max(1, DEQUANT_BLOCK_BYTES // (size * self.in_features))
        if self.layout != "plain":
            step = max(_BLOCK, step // _BLOCK * _BLOCK)  # the int4 kernel layout packs rows in blocks of 64
        return [(a, min(a + step, self.out_features)) for a in range(0, self.out_features, step)]

    def _block_rows(self, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
        return self.rows(torch.arange(a, b, device=self.weight.device), dtype)  # (b - a, in)

    def blockwise_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> ``x @ W.T`` (..., out), dequantizing a block of W's rows at a time.

        Never holds a float copy of the whole weight: at most ``DEQUANT_BLOCK_BYTES`` of it,
        freed before the next block. For a small weight (one block) it is the plain product.
        """
        blocks = self._row_blocks(x.dtype)
        if len(blocks) == 1:
            return x @ self.dequantize(x.dtype).T
        out = x.new_empty(*x.shape[:-1], self.out_features)
        for a, b in blocks:
            out[..., a:b] = x @ self._block_rows(a, b, x.dtype).T
        return out

    def blockwise_matmul_t(self, g: torch.Tensor) -> torch.Tensor:
        """g (..., out) -> ``g @ W`` (..., in), a block of W's rows at a time (the gradient of ``x @ W.T``)."""
        blocks = self._row_blocks(g.dtype)
        if len(blocks) == 1:
            return g @ self.dequantize(g.dtype)
        out = g.new_zeros(*g.shape[:-1], self.in_features)
        for a, b in blocks:
            out += g[..., a:b] @ self._block_rows(a, b, g.dtype)
        return out

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> ``x @ W.T`` (..., out) in x's dtype; PyTorch's kernel when it applies, else the reference.

        The kernels take bfloat16 activations (with float32 ones they were 15-30x slower here), so x
        is rounded to bfloat16 and the result has bfloat16 precision. They are made for a
        few rows (one token per sequence while generating); above ``KERNEL_MAX_ROWS`` rows
        the weight is dequantized once for a float32 matrix product instead.
        """
        if not self.uses_kernel(x):  # the reference path: (..., in) @ (in, out), a block of rows at a time
            if torch.is_grad_enabled() and x.requires_grad:
                return QuantizedMatmul.apply(x, self)  # x gets its gradient; no float weight is kept for it
            return self.blockwise_matmul(x)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernels want (M, K) rows
        if x2.shape[0] > KERNEL_MAX_ROWS:
            # many rows at once (a prompt, an evaluation): the kernels, written for a few rows, are
            # slower than dequantizing once and one float32 matrix product; the same numbers
            # (bfloat16 in, exact weights, float32 sums, bfloat16 out)
            y = (x2.float() @ self.dequantize().T).to(torch.bfloat16)
        elif self.scheme.bits == 8:
            scale = self.weight_scale.to(torch.bfloat16).expand(self.out_features)  # () per-tensor -> (N,)
            y = torch._weight_int8pack_mm(x2, self.weight, scale.contiguous())
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.scheme.group_size,
                                                          self.weight_scale)[:, :self.out_features]
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._buffers.values() if t is not None)

    def extra_repr(self) -> str:
        layout = "" if self.layout == "plain" else f", layout={self.layout}"
        return f"{self.in_features}, {self.out_features}, scheme={self.scheme}{layout}"


class QuantizedMatmul(torch.autograd.Function):
    """``x @ W.T`` for a quantized W when x needs a gradient (a LoRA adapter or a prompt being tuned upstream).

    Autograd would keep the dequantized float W of every layer until ``backward`` (it needs W
    for x's gradient): a quantized model would then cost more memory than the float one the
    first time it is called outside ``torch.no_grad()``. This function keeps only the layer
    (its integers) and dequantizes again, a block of rows at a time, when the gradient is asked
    for. The quantized weight gets no gradient (it is a buffer); the bias is added outside.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantizedWeight") -> torch.Tensor:
        ctx.layer = layer
        return layer.blockwise_matmul(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return ctx.layer.blockwise_matmul_t(grad_out), None


class QuantLinear(QuantizedWeight):
    """``layers.Linear`` with a quantized weight: ``x @ W.T + bias``; the bias stays in float."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str | Scheme = "int8", *,
                 kernel_layout: bool = True, device=None, dtype=None):
        super().__init__(out_features, in_features, scheme, kernel_layout=kernel_layout, device=device)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Module, scheme: str | Scheme) -> "QuantLinear":
        """A ``layers.Linear`` (or ``nn.Linear``) -> its quantized twin (only shapes when it is on ``meta``)."""
        weight = linear.weight
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, device=weight.device)
        q.compute_dtype = weight.dtype
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        if not weight.is_meta:
            q.quantize_(lambda a, b: weight.detach()[a:b])
        return q

    def _empty_like(self, scheme, **kwargs) -> "QuantLinear":
        new = QuantLinear(self.in_features, self.out_features, self.bias is not None, scheme,
                          device=self.weight.device, **kwargs)
        if self.bias is not None:
            new.bias = self.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x)  # (..., out)
        return y if self.bias is None else y + self.bias


class QuantEmbedding(QuantizedWeight):
    """``layers.Embedding`` with a quantized table: a lookup dequantizes only the rows it reads.

    Embedding tables are only looked up, so they keep the plain layout, unless the table is
    also a tied output head (GPT-2's ``wte``): then it is kept in the int4 kernel's layout,
    which ``rows`` reads too.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 scheme: str | Scheme = "int8", *, kernel_layout: bool = False, device=None):
        super().__init__(num_embeddings, embedding_dim, scheme, kernel_layout=kernel_layout, device=device)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Module, scheme: str | Scheme, *, as_head: bool = False) -> "QuantEmbedding":
        weight = embedding.weight
        q = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, scheme,
                kernel_layout=as_head, device=weight.device)
        q.compute_dtype = weight.dtype
        if not weight.is_meta:
            q.quantize_(lambda a, b: weight.detach()[a:b])
        return q

    def _empty_like(self, scheme, *, as_head: bool = False) -> "QuantEmbedding":
        return QuantEmbedding(self.num_embeddings, self.embedding_dim, self.padding_idx, scheme, kernel_layout=as_head,
                              device=self.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids)  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, " + super().extra_repr().split(", ", 2)[2]


class QuantConv2d(QuantizedWeight):
    """A 2-D convolution with an int8 weight (chapter 10's ResNet): per output channel, the im2col path.

    A conv weight (C_out, C_in / groups, kh, kw) flattened to (C_out, C_in / groups * kh * kw)
    is a Linear's (out, in) matrix: row ``o`` is filter ``o``, and ``conv2d`` multiplies im2col's
    columns by exactly these rows. So per-output-channel int8 is the Linear's per-row int8
    (one bfloat16 scale per filter). The buffer ``weight`` keeps the conv's 4-D shape, int8,
    so a saved quantized model holds ``...convolution.weight`` in the shape the float file had.
    The forward dequantizes the filters and runs ``course_lib.vision.conv2d`` (im2col + one
    matmul): an image makes thousands of im2col columns, where a float32 matrix product beats
    the weight-only int8 kernels written for a few rows (``QuantizedWeight.matmul``).

    int8 schemes only ("int8" per channel, "int8-tensor"): ``quantize_model`` leaves
    convolutions in float for int4 (a stem's 3 * 7 * 7 = 147 values per filter fit no group).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, scheme: str | Scheme = "int8", *, device=None, dtype=None):
        from course_lib.vision import _pair

        kh, kw = _pair(kernel_size, "kernel_size", 1)
        self.conv_shape = (out_channels, in_channels // groups, kh, kw)
        scheme = parse_scheme(scheme)
        if scheme.bits != 8:
            raise ValueError(f"QuantConv2d holds int8 filters only, not {scheme}: quantize the float model with "
                             f"'int8' (int4 leaves convolutions in float)")
        super().__init__(out_channels, in_channels // groups * kh * kw, scheme, kernel_layout=False, device=device)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
        self.dilation, self.groups = _pair(dilation, "dilation", 1), groups
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def _plain_shapes(self):
        shapes = super()._plain_shapes()
        shapes["weight"] = (self.conv_shape, torch.int8)  # (C_out, C_in/g, kh, kw): the float file's shape
        return shapes

    @classmethod
    def from_conv(cls, conv: nn.Module, scheme: str | Scheme) -> "QuantConv2d":
        """A ``vision.Conv2d`` (or ``nn.Conv2d``) -> its int8 twin (only shapes when it is on ``meta``)."""
        if not isinstance(conv.padding, (int, tuple)):
            raise ValueError(f"cannot quantize a convolution with padding={conv.padding!r}: give it in pixels")
        weight = conv.weight
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, scheme, device=weight.device)
        q.compute_dtype = weight.dtype
        if conv.bias is not None:
            q.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
        if not weight.is_meta:
            q.quantize_(lambda a, b: weight.detach()[a:b])
        return q

    def quantize_(self, rows_of) -> "QuantConv2d":
        """Quantize float filters into this layer; ``rows_of(start, stop)`` gives filters (rows, C_in/g, kh, kw)."""
        N, K = self.out_features, self.in_features
        flat = QuantizedWeight(N, K, self.scheme, kernel_layout=False)
        flat.quantize_(lambda a, b: rows_of(a, b).reshape(b - a, K))
        self._buffers["weight"] = flat.weight.view(self.conv_shape)
        self._buffers["weight_scale"] = flat.weight_scale
        self.layout = "plain"
        return self.use_kernel_layout()

    def fill_from_checkpoint(self, reader, key: str, transposed: bool = False) -> None:
        """Quantize checkpoint filters ``key`` (C_out, C_in/g, kh, kw) while reading them, a block at a time."""
        shape = tuple(reader.shape(key))
        if shape != self.conv_shape:
            raise ValueError(f"checkpoint tensor {key!r} has shape {shape}, the quantized convolution needs "
                             f"{self.conv_shape}")
        self.quantize_(lambda a, b: reader.read_rows(key, a, b))
        release_freed_memory()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float filters (C_out, C_in/g, kh, kw) these integers and scales stand for."""
        return dequantize_int8(self.weight.reshape(self.out_features, -1), self.weight_scale, dtype
                               ).view(self.conv_shape)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dequantized filters ``ids`` flattened: (M,) -> (M, C_in/g * kh * kw) (to quantize them again)."""
        flat = ids.reshape(-1)
        scale = self.weight_scale[flat] if self.weight_scale.dim() else self.weight_scale
        return dequantize_int8(self.weight[flat].reshape(len(flat), -1), scale, dtype or self.compute_dtype)

    def _empty_like(self, scheme, **kwargs) -> "QuantConv2d":
        new = QuantConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, self.groups, self.bias is not None, scheme, device=self.weight.device)
        if self.bias is not None:
            new.bias = self.bias
        return new

    def requantized(self, scheme, **kwargs) -> "QuantConv2d":
        new = self._empty_like(scheme)
        new.compute_dtype = self.compute_dtype
        if not self.weight.is_meta:
            new.quantize_(lambda a, b: self.rows(torch.arange(a, b, device=self.weight.device), torch.float32))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H_out, W_out) in x's dtype: ``conv2d`` with the dequantized filters."""
        from course_lib.vision import conv2d

        bias = None if self.bias is None else self.bias.to(x.dtype)
        return conv2d(x, self.dequantize(x.dtype), bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, scheme={self.scheme}")


class TiedQuantHead(nn.Module):
    """An output head that *is* a quantized embedding table (GPT-2's ``lm_head`` = ``wte``): one table, two uses.

    It holds no tensors of its own (so ``state_dict`` has the table once, under the
    embedding's name); ``forward(x)`` is ``x @ table.T`` with the table's kernel.
    """

    def __init__(self, table: QuantEmbedding, source: str):
        super().__init__()
        self.__dict__["table"] = table  # not a submodule: the model already holds it under ``source``
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table.matmul(x)  # (..., vocab)

    def extra_repr(self) -> str:
        return f"tied to {self.source} ({self.table.scheme})"


# --------------------------------------------------------------------------------------
# Whole models

def cast_model(model: nn.Module, dtype: str | torch.dtype) -> nn.Module:
    """float16/bfloat16 (or float32): every floating-point tensor cast in place; returns ``model``."""
    dtype = FLOAT_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"cast_model casts to float32, float16 or bfloat16, not {dtype!r}; for int8/int4 use "
                         f"quantize_model")
    return model.to(dtype)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (layers.Linear, nn.Linear))


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, (layers.Embedding, nn.Embedding))


def _is_conv(module: nn.Module) -> bool:
    from course_lib.vision import Conv2d

    return isinstance(module, (Conv2d, nn.Conv2d))


class CompoundedQuantizationWarning(UserWarning):
    """An already quantized model was quantized again: the two rounding errors add up."""


def quantize_model(model: nn.Module, scheme: str | Scheme | torch.dtype, *, skip: tuple[str, ...] = ()) -> nn.Module:
    """Quantize ``model``'s weights in place (every Linear and Embedding; with int8 every Conv2d too,
    as ``QuantConv2d``: one scale per output channel); returns ``model``.

    ``scheme``: ``"int8"``, ``"int8-tensor"``, ``"int4"`` / ``"int4-g64"`` / ``"int4-g128"``
    (zero point; + ``"-sym"`` for symmetric), or ``"float16"`` / ``"bfloat16"`` (a cast). ``skip``: module names (or
    name prefixes) to leave in float. A tied output head (GPT-2's ``lm_head``) becomes a
    ``TiedQuantHead`` reading the quantized embedding table: one table for both. On the
    ``meta`` device only the structure changes (``load_model`` fills it while reading).

    A model that is already quantized with another scheme is *converted*: each quantized
    layer is dequantized and quantized again, with a ``CompoundedQuantizationWarning`` (the
    second rounding adds to the first; quantizing the original float weights is better).
    Layers already in ``scheme`` are kept as they are.
    """
    if isinstance(scheme, torch.dtype) or str(scheme).lower() in FLOAT_DTYPES:
        return cast_model(model, scheme)
    scheme = parse_scheme(scheme)
    tied = {k.rpartition(".")[0]: v.rpartition(".")[0]
            for k, v in getattr(model, "tied_weights", {}).items() if k.endswith(".weight")}  # head -> table
    heads = set(tied.values())
    skipped = lambda name: any(name == s or name.startswith(s.rstrip(".") + ".") for s in skip)  # noqa: E731
    # first decide every layer's fate and check it, so that an error leaves the model as it was
    plan = []  # (name, module)
    for name, module in model.named_modules():
        if not name or name in tied:
            continue
        quantized = isinstance(module, QuantizedWeight)
        if skipped(name):
            if quantized and module.scheme != scheme:
                raise ValueError(f"{name} is quantized as {module.scheme} and skip= would leave it so in a model "
                                 f"quantized as {scheme}: a saved model holds one scheme. Drop {name!r} from skip=, "
                                 f"or quantize the float model instead")
            continue
        if quantized and module.scheme == scheme:
            continue  # already what is asked for
        if isinstance(module, QuantConv2d) and scheme.bits != 8:
            raise ValueError(f"{name} is an int8 convolution and {scheme} has no convolutions (int4 leaves them in "
                             f"float): quantize the float model as {scheme} instead")
        if _is_conv(module) and scheme.bits == 8:
            plan.append((name, module))  # filters (C_out, C_in/g, kh, kw): int8 per output channel
            continue
        if not (quantized or _is_linear(module) or _is_embedding(module)):
            continue
        width = module.in_features if quantized or _is_linear(module) else module.embedding_dim
        if scheme.bits == 4 and width % scheme.group_size:
            raise ValueError(f"cannot quantize {name} as {scheme}: {group_size_advice(width, scheme.group_size)}")
        plan.append((name, module))
    requantized = []
    for name, module in plan:
        if isinstance(module, QuantizedWeight):
            kwargs = {"as_head": name in heads} if isinstance(module, QuantEmbedding) else {}
            new = module.requantized(scheme, **kwargs)
            requantized.append(f"{name} ({module.scheme})")
        elif _is_linear(module):
            new = QuantLinear.from_linear(module, scheme)
        elif _is_conv(module):
            new = QuantConv2d.from_conv(module, scheme)
        else:
            new = QuantEmbedding.from_embedding(module, scheme, as_head=name in heads)
        model.set_submodule(name, new)
    if requantized:
        warnings.warn(f"the model was already quantized ({', '.join(requantized[:3])}"
                      f"{f' and {len(requantized) - 3} more' if len(requantized) > 3 else ''}): its integer "
                      f"weights were dequantized and quantized again as {scheme}, so the two rounding errors add "
                      f"up (compounded error). For the best {scheme} model quantize the original float weights: "
                      f"load_model(src, quantize={scheme.name!r})", CompoundedQuantizationWarning, stacklevel=2)
    for head, table in tied.items():
        if isinstance(model.get_submodule(table), QuantEmbedding) and not skipped(head):
            model.set_submodule(head, TiedQuantHead(model.get_submodule(table), table))
    model.checkpoint_transposed = ()  # quantized weights are saved as our layers hold them, (out, in)
    model.quantization = scheme
    return model


def use_kernel_layouts(model: nn.Module, source: str = "the checkpoint") -> nn.Module:
    """After filling a quantized model's buffers directly (loading a quantized checkpoint): check every scale and
    zero point (``QuantizedWeight.check_state``, an error naming the key), then convert to the kernel layouts."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizedWeight):
            module.check_state(f"{name}." if name else "", source)
            module.use_kernel_layout()
    return model


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied tensors are one)."""
    seen = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type != "meta":
            seen[(tensor.untyped_storage().data_ptr(), tensor.device)] = tensor.untyped_storage().nbytes()
    return sum(seen.values())
