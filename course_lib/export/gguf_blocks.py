"""Chapter 11: GGUF's Q8_0 and Q4_0 blocks, written by the course (chapter 07's absmax, in blocks of 32).

Chapter 07 quantized a weight matrix with one absmax scale per row (int8) or per group of
32..128 weights (int4), the integers in one tensor and the scales in another. llama.cpp's
GGUF files use the same idea with a fixed group, the **block** of ``QK = 32`` consecutive
weights of a row, and store each block's scale *inside* the block, in front of its
integers, so a block is a self-contained little record of bytes:

``Q8_0`` (34 bytes for 32 weights, 8.5 bits per weight)::

    bytes 0..1   d    float16, little-endian: the block's scale, absmax / 127
    bytes 2..33  qs   32 x int8: round(w / d), rounded half away from zero, in [-127, 127]
    w ≈ qs * d

``Q4_0`` (18 bytes for 32 weights, 4.5 bits per weight)::

    bytes 0..1   d    float16: the weight of largest magnitude, *with its sign*, divided by -8
    bytes 2..17  qs   16 bytes, two 4-bit codes each: byte j holds weight j in its LOW nibble
                      and weight j + 16 in its HIGH nibble (not weights 2j and 2j + 1, as
                      chapter 07's ``pack_int4`` pairs them)
    code = q + 8 in [0, 15], with q = trunc(w / d + 8.5) - 8, clipped; w ≈ (code - 8) * d

Why ``max / -8`` and not ``absmax / 7``: a signed 4-bit integer runs from -8 to 7, one
more level on the negative side. Dividing the extreme weight by -8 maps it exactly to -8,
so the extreme gets the lone extra level, and every other weight of the block (|w| <= |max|)
lands in [-8, 8], 8 being clipped to 7. All 16 levels are used, symmetric around 0, no zero
point (chapter 07's affine int4 keeps a zero point per group instead: 16 levels for the
group's [min, max], one more number per group).

The arithmetic here is the reference one of ``ggml-quants.c`` (as ``gguf.quants`` copies it
in NumPy): float32 scale, its float32 reciprocal, the rounding rules above; the scale is
rounded to float16 only when stored, so the integers are computed with the unrounded scale.
``tests/test_export_gguf.py`` checks that the bytes equal ``gguf.quants.quantize`` byte for
byte and the dequantized values ``gguf.quants.dequantize``.

Shapes: a weight (..., K) with K a multiple of 32 becomes uint8 (..., K // 32 * bytes per
block), as ``gguf.quants.quantize`` returns it and ``gguf.GGUFWriter.add_tensor(...,
raw_dtype=...)`` takes it. Everything is vectorised over all blocks at once in torch.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["QK", "QTYPES", "BLOCK_BYTES", "bits_per_weight", "q8_0_scales_and_ints", "pack_q8_0", "unpack_q8_0",
           "quantize_q8_0", "dequantize_q8_0", "q4_0_scales_and_ints", "pack_q4_0", "unpack_q4_0", "quantize_q4_0",
           "dequantize_q4_0", "quantize_blocks", "dequantize_blocks", "round_half_away_from_zero"]

QK = 32  # weights per block (ggml's QK8_0 and QK4_0)
QTYPES = ("F32", "F16", "Q8_0", "Q4_0")
# bytes one block of QK weights takes (F32 / F16: QK plain numbers)
BLOCK_BYTES = {"F32": 4 * QK, "F16": 2 * QK, "Q8_0": 2 + QK, "Q4_0": 2 + QK // 2}
F16_MAX = 65504.0


def bits_per_weight(qtype: str) -> float:
    """Storage cost of one weight, scales included: F32 32, F16 16, Q8_0 8.5, Q4_0 4.5."""
    return BLOCK_BYTES[_check_qtype(qtype)] * 8 / QK


def _check_qtype(qtype: str) -> str:
    if qtype not in QTYPES:
        raise ValueError(f"qtype={qtype!r} is not one the course writes: use one of {', '.join(QTYPES)}")
    return qtype


def _as_blocks(w, what: str = "the tensor") -> tuple[torch.Tensor, tuple[int, ...]]:
    """A float tensor or array (..., K) -> (float32 blocks (n_blocks, 32), its shape); clear errors for bad input."""
    if isinstance(w, np.ndarray):
        w = torch.from_numpy(w)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor or a numpy array, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{what} has dtype {w.dtype}; quantize a floating-point tensor (float32, float16, bfloat16)")
    if w.dim() == 0 or w.shape[-1] % QK:
        raise ValueError(f"{what} has shape {tuple(w.shape)}: GGUF blocks hold {QK} consecutive weights of a row, so "
                         f"the last dimension must be a multiple of {QK} (llama.cpp stores such a tensor as F16 "
                         f"instead)")
    x = w.detach().to("cpu", torch.float32).reshape(-1, QK)  # (n_blocks, 32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} holds NaN or infinite values: there is no scale to quantize them with")
    return x, tuple(w.shape)


def _scale_to_f16(d: torch.Tensor, qtype: str, what: str) -> torch.Tensor:
    """float32 scales (n_blocks, 1) -> float16; a scale float16 cannot hold is an error, never a silent inf."""
    if bool((d.abs() > F16_MAX).any()):
        raise ValueError(f"{what}: a block's {qtype} scale is {d.abs().max().item():.4g}, more than float16 holds "
                         f"({F16_MAX:g}); such weights cannot be stored as {qtype}: use F32")
    return d.to(torch.float16)


def round_half_away_from_zero(x: torch.Tensor) -> torch.Tensor:
    """``roundf`` from C: 2.5 -> 3, -2.5 -> -3 (``torch.round`` rounds halves to even: 2.5 -> 2).

    Computed as floor(|x|) + floor(2 * frac(|x|)): every step is exact in float32, unlike
    ``floor(|x| + 0.5)``, which rounds 0.49999997 + 0.5 up to 1.0 first.
    """
    a = x.abs()
    whole = torch.floor(a)
    return torch.sign(x) * (whole + torch.floor(2 * (a - whole)))


def _bytes_out(blocks: torch.Tensor, shape: tuple[int, ...], per_block: int) -> np.ndarray:
    return blocks.numpy().reshape(*shape[:-1], shape[-1] // QK * per_block)


def _blocks_in(data, qtype: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """uint8 bytes (..., n * bytes per block) -> (blocks (n_blocks, bytes per block), the bytes' shape)."""
    if isinstance(data, torch.Tensor):
        data = data.numpy()
    data = np.asarray(data)
    if data.dtype != np.uint8:
        data = data.view(np.uint8)
    per_block = BLOCK_BYTES[qtype]
    if data.ndim == 0 or data.shape[-1] % per_block:
        raise ValueError(f"{qtype} data of shape {data.shape}: each row must be whole {per_block}-byte blocks")
    blocks = torch.from_numpy(np.array(data, copy=True))  # a copy: a file's tensors are read-only memory maps
    return blocks.reshape(-1, per_block), data.shape


# --------------------------------------------------------------------------------------
# Q8_0: 32 x int8 and one float16 scale

def q8_0_scales_and_ints(w, what: str = "the tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """float (..., K) -> (d float16 (n_blocks,), q int8 (n_blocks, 32)): chapter 07's absmax per block of 32.

    d = max|w| / 127 per block (0 for an all-zero block); q = round(w / d) with halves away
    from zero, computed as w * (1 / d) in float32 exactly as ``ggml-quants.c`` does.
    """
    x, _ = _as_blocks(w, what)
    d = x.abs().amax(dim=-1, keepdim=True) / 127  # (n_blocks, 1) float32
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)  # an all-zero block: q = 0
    q = round_half_away_from_zero(x * inverse)  # in [-127, 127] (|x| <= max|x|)
    return _scale_to_f16(d, "Q8_0", what).squeeze(-1), q.to(torch.int8)


def pack_q8_0(d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(d float16 (n,), q int8 (n, 32)) -> blocks uint8 (n, 34): 2 bytes of d, then the 32 int8 as bytes."""
    return torch.cat([d.reshape(-1, 1).view(torch.uint8), q.view(torch.uint8)], dim=-1)


def unpack_q8_0(blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 bytes (..., n * 34) -> (d float16 (n_blocks,), q int8 (n_blocks, 32))."""
    b, _ = _blocks_in(blocks, "Q8_0")
    return b[:, :2].contiguous().view(torch.float16).squeeze(-1), b[:, 2:].contiguous().view(torch.int8)


def quantize_q8_0(w, what: str = "the tensor") -> np.ndarray:
    """float (..., K) -> Q8_0 bytes uint8 (..., K // 32 * 34), equal to ``gguf.quants.quantize(w, Q8_0)``."""
    d, q = q8_0_scales_and_ints(w, what)
    return _bytes_out(pack_q8_0(d, q), _as_shape(w), BLOCK_BYTES["Q8_0"])


def dequantize_q8_0(data) -> torch.Tensor:
    """Q8_0 bytes (..., n * 34) -> float32 (..., n * 32): q * d per block."""
    d, q = unpack_q8_0(data)
    return _float_out(q.float() * d.float().unsqueeze(-1), data, "Q8_0")


# --------------------------------------------------------------------------------------
# Q4_0: 32 x 4 bits (low nibbles = weights 0..15, high = 16..31) and one float16 scale

def q4_0_scales_and_ints(w, what: str = "the tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """float (..., K) -> (d float16 (n_blocks,), codes uint8 (n_blocks, 32) in [0, 15], code = q + 8).

    d = (the block's weight of largest magnitude, signed) / -8; the first one counts when
    two tie (+a and -a: the sign of d depends on which comes first, as in ggml).
    code = trunc(w / d + 8.5) clipped to [0, 15]: round half up of w / d, shifted by 8.
    """
    x, _ = _as_blocks(w, what)
    where = x.abs().argmax(dim=-1, keepdim=True)  # the first index of the largest |w|
    extreme = x.gather(-1, where)  # (n_blocks, 1), with its sign
    d = extreme / -8
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    codes = torch.trunc(x * inverse + 8.5).clamp(0, 15)  # float32 throughout, as the C code
    return _scale_to_f16(d, "Q4_0", what).squeeze(-1), codes.to(torch.uint8)


def pack_q4_0(d: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(d float16 (n,), codes uint8 (n, 32) in [0, 15]) -> blocks uint8 (n, 18).

    Byte j of the 16 code bytes = codes[j] | codes[j + 16] << 4: the first half of the block
    in the low nibbles, the second half in the high nibbles.
    """
    low, high = codes[:, :QK // 2], codes[:, QK // 2:]
    return torch.cat([d.reshape(-1, 1).view(torch.uint8), low | (high << 4)], dim=-1)


def unpack_q4_0(blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 bytes (..., n * 18) -> (d float16 (n_blocks,), q int8 (n_blocks, 32) in [-8, 7])."""
    b, _ = _blocks_in(blocks, "Q4_0")
    packed = b[:, 2:]
    codes = torch.cat([packed & 0x0F, packed >> 4], dim=-1)  # (n_blocks, 32): low nibbles first
    return b[:, :2].contiguous().view(torch.float16).squeeze(-1), codes.to(torch.int8) - 8


def quantize_q4_0(w, what: str = "the tensor") -> np.ndarray:
    """float (..., K) -> Q4_0 bytes uint8 (..., K // 32 * 18), equal to ``gguf.quants.quantize(w, Q4_0)``."""
    d, codes = q4_0_scales_and_ints(w, what)
    return _bytes_out(pack_q4_0(d, codes), _as_shape(w), BLOCK_BYTES["Q4_0"])


def dequantize_q4_0(data) -> torch.Tensor:
    """Q4_0 bytes (..., n * 18) -> float32 (..., n * 32): (code - 8) * d per block."""
    d, q = unpack_q4_0(data)
    return _float_out(q.float() * d.float().unsqueeze(-1), data, "Q4_0")


# --------------------------------------------------------------------------------------
# All four types behind one name

def quantize_blocks(w, qtype: str, what: str = "the tensor") -> np.ndarray:
    """float (..., K) -> what a GGUF file stores for ``qtype``: float32 / float16 arrays of the
    same shape, or Q8_0 / Q4_0 bytes uint8 (..., K // 32 * bytes per block)."""
    _check_qtype(qtype)
    if qtype == "Q8_0":
        return quantize_q8_0(w, what)
    if qtype == "Q4_0":
        return quantize_q4_0(w, what)
    x = torch.from_numpy(w) if isinstance(w, np.ndarray) else w
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} holds NaN or infinite values: a GGUF file of them would compute nonsense")
    if qtype == "F16":
        if bool((x.abs() > F16_MAX).any()):
            raise ValueError(f"{what}: values up to {x.abs().max().item():.4g} do not fit float16 "
                             f"(max {F16_MAX:g}); store it as F32")
        return x.to(torch.float16).numpy()
    return x.contiguous().numpy()


def dequantize_blocks(data, qtype: str) -> torch.Tensor:
    """What a GGUF file stores for ``qtype`` -> float32: the same shape for F32 / F16, (..., K) for blocks."""
    _check_qtype(qtype)
    if qtype == "Q8_0":
        return dequantize_q8_0(data)
    if qtype == "Q4_0":
        return dequantize_q4_0(data)
    array = np.asarray(data)
    return torch.from_numpy(np.array(array.view(np.float16 if qtype == "F16" else np.float32), dtype=np.float32))



def _as_shape(w) -> tuple[int, ...]:
    return tuple(w.shape)


def _float_out(values: torch.Tensor, data, qtype: str) -> torch.Tensor:
    """(n_blocks, 32) float32 -> (..., n * 32) in the row layout of the bytes ``data`` (..., n * bytes)."""
    shape = tuple(np.shape(data))
    return values.reshape(*shape[:-1], shape[-1] // BLOCK_BYTES[qtype] * QK)
