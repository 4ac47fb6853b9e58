"""Checks for chapter 11's exercises (``exercises/ex11_export.py``).

Inputs are random: blocks of 32 weights at scales from 1e-4 to 1e3, blocks whose values sit
on or a few float32 steps from the rounding boundaries (exact halves, where C's ``roundf``
and round-half-to-even part, and cases where ``x / d`` and ``x * (1 / d)`` round apart),
blocks whose largest magnitude appears with both signs, all-zero blocks, random Q4_0 bytes
covering all 16 codes; metadata entries of every GGUF value type with keys and strings in
several scripts (so characters and UTF-8 bytes differ), arrays of numbers, booleans and
strings; real GGUF files written by the ``gguf`` package with alignments from 1 to 4096;
GPT-2 graphs of 1 to 12 layers, one of them exported to ONNX by the course and read back;
dot products of up to 8 blocks whose integer sums overflow 8 and 16 bits; greedy decoding of
a random tiny GPT-2 exported to ONNX, batches padded on the left, end tokens reached by one
row or by all.

Expected answers come from ``course_lib.export`` (``gguf_blocks.quantize_q8_0`` /
``quantize_q4_0`` / ``dequantize_q4_0`` / ``unpack_q8_0``, ``gguf_export.read_gguf_layout``,
``onnx_export``'s dynamic axes and ``ort_generate_ids``), themselves tested byte for byte
against the ``gguf`` package and token for token against PyTorch in
``tests/test_export_gguf.py`` / ``tests/test_export_onnx.py``; a metadata entry's bytes come
from the ``gguf`` package's own writer. They are switched off while the learner's code runs,
and so are the ``gguf`` package's quantizers, writer and reader (``chapter_rules`` below).

Bytes are compared exactly (a wrong byte is named with the field it belongs to), dequantized
values exactly (they are exact float32 products), the stretch dot product to 1e-5 of the sum
of its terms' sizes, generated tokens exactly. When a result is wrong, the check tries the
usual mistakes on the same input and names the one that matches.
"""

from __future__ import annotations

import atexit
import math
import numbers
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from course_lib.export import gguf_blocks as GB
from course_lib.grading.registry import GradeError, call_learner, chapter_rules, exercise, expect_raises, likely

ANSWER_KEY = (
    *(f"course_lib.export.gguf_blocks.{name}" for name in (
        "q8_0_scales_and_ints", "pack_q8_0", "unpack_q8_0", "quantize_q8_0", "dequantize_q8_0",
        "q4_0_scales_and_ints", "pack_q4_0", "unpack_q4_0", "quantize_q4_0", "dequantize_q4_0", "quantize_blocks",
        "dequantize_blocks", "round_half_away_from_zero")),
    *(f"course_lib.export.gguf_export.{name}" for name in ("to_gguf", "read_gguf", "read_gguf_layout")),
    *(f"course_lib.export.onnx_export.{name}" for name in ("_dynamic_axes", "_gpt2_spec", "ort_generate_ids")),
)

# The gguf package's ready-made versions of this chapter's answers (``gguf.X`` re-exports ``gguf.quants.X``).
SHORTCUTS = (
    "gguf.quants.quantize", "gguf.quants.dequantize", "gguf.quantize", "gguf.dequantize",
    "gguf.quants.np_roundf", "gguf.np_roundf",
    *(f"gguf.quants.{cls}.{method}" for cls in ("Q8_0", "Q4_0")
      for method in ("quantize", "dequantize", "quantize_blocks", "dequantize_blocks", "quantize_rows",
                     "dequantize_rows")),
    "gguf.GGUFWriter", "gguf.gguf_writer.GGUFWriter", "gguf.GGUFReader", "gguf.gguf_reader.GGUFReader",
)
chapter_rules("ex11", shortcuts=SHORTCUTS)

INSTALL = "pip install onnx onnxruntime gguf  (or `make setup`)"


# ----------------------------------------------------------------------------- helpers


def call(fn, *args, what: str):
    """Run the learner's function with the answer key switched off; it must leave its inputs as they were."""
    return call_learner(fn, args, what, ANSWER_KEY + SHORTCUTS, "; course_lib is the answer key, and the gguf "
                        "package's quantizers, writer and reader are switched off (struct, numpy and torch are fine)",
                        "assigning into an argument, `+=`, `.mul_()` ...")


def need(module: str):
    """Import a package the check itself needs; an error that names the fix when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this check needs the {module!r} package, which is not installed: {INSTALL}") from None


def expect_bytes(got: Any, length: int | None, what: str) -> bytes:
    if isinstance(got, bytearray):
        got = bytes(got)
    if not isinstance(got, bytes):
        hint = " (`bytes(array)` or `array.tobytes()` turns a uint8 array into bytes)" \
            if isinstance(got, (np.ndarray, torch.Tensor, list)) else ""
        raise GradeError(f"{what}: expected bytes, got {type(got).__name__}{hint}")
    if length is not None and len(got) != length:
        raise GradeError(f"{what}: expected {length} bytes, got {len(got)}")
    return got


def expect_int(got: Any, what: str) -> int:
    if isinstance(got, bool) or not isinstance(got, numbers.Integral):
        if isinstance(got, float):
            raise GradeError(f"{what}: expected an int, got the float {got!r}: a byte position is a whole number "
                             f"(`//` divides and rounds down, `/` gives a float)")
        raise GradeError(f"{what}: expected an int, got {type(got).__name__} {got!r}")
    return int(got)


def hexed(data: bytes) -> str:
    return data.hex(" ") if data else "(nothing)"


def first_difference(got: bytes, expected: bytes, fields: list[tuple[str, int, int]]) -> str:
    """Which field the first differing byte belongs to, with both versions of that field."""
    n = min(len(got), len(expected))
    at = next((i for i in range(n) if got[i] != expected[i]), n)
    for name, start, stop in fields:
        if start <= at < stop:
            span = f"byte {start}" if stop - start == 1 else f"bytes {start}..{stop - 1}"
            return (f"the first difference is at byte {at}, in {name} ({span}): expected "
                    f"{hexed(expected[start:stop])}, got {hexed(got[start:stop])}")
    return f"the first difference is at byte {at}"


def f32(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(n) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- 1. Q8_0


def q8_variant(x: np.ndarray, rounding: str = "away", divisor: float = 127.0, ints_from_f16: bool = False,
               divide: bool = False, float64: bool = False, scale_format: str = "<e", scale_last: bool = False,
               offset_ints: bool = False) -> bytes:
    """A Q8_0 block written with one of the usual mistakes (the defaults give ggml's bytes)."""
    x = x.astype(np.float64 if float64 else np.float32)
    d = np.abs(x).max() / x.dtype.type(divisor)
    if ints_from_f16:
        d = x.dtype.type(np.float16(d))
    inverse = x.dtype.type(1) / d if d != 0 else x.dtype.type(0)
    scaled = (x / d if d != 0 else x * 0) if divide else x * inverse
    wide = scaled.astype(np.float64)
    if rounding == "away":
        q = np.sign(wide) * np.floor(np.abs(wide) + 0.5)
    elif rounding == "even":
        q = np.round(wide)
    elif rounding == "trunc":
        q = np.trunc(wide)
    else:  # half up
        q = np.floor(wide + 0.5)
    ints = (q.astype(np.int64) + 128).astype(np.uint8) if offset_ints else q.astype(np.int64).astype(np.int8)
    scale = struct.pack(scale_format, float(np.float32(d)))
    return ints.tobytes() + scale if scale_last else scale + ints.tobytes()


def q8_mistakes(x: np.ndarray) -> dict:
    return {
        "the integers were rounded half to even (`round()` / `torch.round` / `np.round`); ggml's `roundf` rounds "
        "halves away from zero: 2.5 -> 3, -2.5 -> -3": lambda: q8_variant(x, rounding="even"),
        "the integers were truncated towards zero; round to the nearest": lambda: q8_variant(x, rounding="trunc"),
        "the integers were rounded with floor(v + 0.5), which rounds -2.5 to -2; ggml rounds halves away from "
        "zero (-2.5 -> -3)": lambda: q8_variant(x, rounding="up"),
        "the integers were computed with the float16-rounded scale; ggml computes them with the float32 d and "
        "rounds only the stored copy to float16": lambda: q8_variant(x, ints_from_f16=True),
        "you divided by d; ggml multiplies by its reciprocal id = 1 / d (float32), which rounds differently in "
        "the last bit near a half": lambda: q8_variant(x, divide=True),
        "the arithmetic was done in float64; ggml computes d, 1 / d and x * (1 / d) in float32":
            lambda: q8_variant(x, float64=True),
        "the scale is max|x| / 128; it is max|x| / 127 (so the largest weight becomes exactly +-127)":
            lambda: q8_variant(x, divisor=128.0),
        "the scale is max|x| / 255 (an unsigned range); Q8_0 is symmetric: max|x| / 127":
            lambda: q8_variant(x, divisor=255.0),
        "the scale is stored big-endian; GGUF is little-endian (`<e`)": lambda: q8_variant(x, scale_format=">e"),
        "the scale comes after the integers; it is the first 2 bytes of the block": lambda: q8_variant(
            x, scale_last=True),
        "the integers were stored as q + 128 (unsigned); Q8_0 stores int8, two's complement":
            lambda: q8_variant(x, offset_ints=True),
    }


def near_ties(rng: np.random.Generator, scale_of: Callable[[np.float32], np.float32],
              levels: tuple[int, int]) -> np.ndarray:
    """A block whose largest magnitude is m and whose other values sit at (k + 0.5) * d, 0-2 float32 steps off."""
    m = np.float32(rng.uniform(0.5, 60.0)) * np.float32(rng.choice([-1, 1]))
    d = scale_of(m)
    x = np.zeros(32, dtype=np.float32)
    x[0] = m
    for i in range(1, 32):
        v = np.float32((int(rng.integers(*levels)) + 0.5) * float(d))
        for _ in range(int(rng.integers(0, 3))):
            v = np.nextafter(v, np.float32(rng.choice([-np.inf, np.inf])))
        x[i] = v if abs(v) <= abs(m) else m
    return x[rng.permutation(32)]


def q8_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    halves = np.array([127.0] + [k + 0.5 for k in range(-8, 8)] + [0.5, -0.5, 126.5, -126.5] + [0.0] * 11,
                      dtype=np.float32)
    cases = [(np.array([127.0, 2.5, -2.5] + [0.0] * 29, dtype=np.float32), "the docstring's example"),
             (halves, "exact halves (max 127, so d = 1)"),
             (np.zeros(32, dtype=np.float32), "an all-zero block"),
             (np.array([0.0] * 31 + [-3.0], dtype=np.float32), "one negative weight"),
             # values where x / d and x * (1 / d) round to different integers (found by search)
             (np.array([47.45815, -23.355389] + [0.0] * 30, dtype=np.float32), "a value near a half"),
             (np.array([21.454659, -8.02438, 1.8641762, 1.357766] + [0.0] * 28, dtype=np.float32),
              "values near halves")]
    for i in range(14):
        scale = float(rng.choice([1e-4, 0.02, 1.0, 30.0, 1000.0]))
        cases.append((f32(rng, 32, scale), f"random normal values, scale {scale:g}"))
    for i in range(8):
        cases.append((near_ties(rng, lambda m: np.abs(m) / np.float32(127), (-127, 127)),
                      "values on or near halves of the step d"))
    return cases


@exercise("ex11.q8_0_block", points=2, reference=("course_lib.export.gguf_blocks.q8_0_scales_and_ints",
                                                 "course_lib.export.gguf_blocks.pack_q8_0"),
          hints=(
              "Chapter 07's absmax, for one block: the scale maps the largest magnitude to 127, each weight becomes "
              "the nearest integer of weight / scale, and the block is the scale's 2 bytes followed by the 32 "
              "integers' bytes.",
              "Work in float32 (`np.float32` or a float32 tensor): the scale, its reciprocal (guard the all-zero "
              "block), the products. `struct.pack('<e', ...)` writes a float16; an int8 array's `.tobytes()` "
              "writes its two's complement bytes.",
              "ggml rounds halves away from zero, unlike Python's `round`, `np.round` and `torch.round` (half to "
              "even): take the sign apart and round the magnitude up from .5. Compute the integers with the "
              "float32 scale, not with its float16 copy.",
          ))
def _(fn, rng):
    for x, label in q8_cases(rng):
        what = f"q8_0_block({label})"
        got = expect_bytes(call(fn, torch.from_numpy(x.copy()), what=what), None, what)
        expected = GB.quantize_q8_0(torch.from_numpy(x)).tobytes()
        if got == expected:
            continue
        if len(got) != len(expected):
            raise GradeError(f"{what}: expected {len(expected)} bytes (2 for the float16 scale, 32 int8), got "
                             f"{len(got)}." + likely(got, {"the scale was written as float32 (4 bytes); Q8_0 stores "
                                                            "it as float16": lambda: q8_variant(x, scale_format="<f")}))
        fields = [("the scale d (float16)", 0, 2)] + [(f"q_{i}", 2 + i, 3 + i) for i in range(32)]
        raise GradeError(f"{what}: wrong bytes; {first_difference(got, expected, fields)}." + likely(got,
                                                                                                   q8_mistakes(x)))
    for n in (31, 64):
        expect_raises(ValueError, lambda: call(fn, torch.zeros(n), what="q8_0_block"),
                      f"q8_0_block(a tensor of {n} values)", "a block holds exactly 32 weights")


# ----------------------------------------------------------------------------- 2. Q4_0


def q4_variant(x: np.ndarray, pairs: str = "halves", scale_rule: str = "signed/-8", rounding: str = "trunc",
               clip: bool = True, last_of_ties: bool = False, offset: bool = True, ints_from_f16: bool = False,
               scale_format: str = "<e") -> bytes:
    """A Q4_0 block written with one of the usual mistakes (the defaults give ggml's bytes)."""
    x = x.astype(np.float32)
    magnitude = np.abs(x)
    where = int(len(x) - 1 - np.argmax(magnitude[::-1])) if last_of_ties else int(np.argmax(magnitude))
    if scale_rule == "signed/-8":
        d = x[where] / np.float32(-8)
    elif scale_rule == "signed/8":
        d = x[where] / np.float32(8)
    elif scale_rule == "abs/8":
        d = magnitude[where] / np.float32(8)
    else:  # abs/7: chapter 07's symmetric int4
        d = magnitude[where] / np.float32(7)
    if ints_from_f16:
        d = np.float32(np.float16(d))
    inverse = np.float32(1) / d if d != 0 else np.float32(0)
    v = x * inverse
    if rounding == "trunc":
        codes = np.trunc(v + np.float32(8.5))
    elif rounding == "away":
        codes = np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5) + 8
    else:  # half to even
        codes = np.round(v.astype(np.float64)) + 8
    if scale_rule == "abs/7":
        codes = np.clip(np.round(v.astype(np.float64)), -7, 7) + 8
    if clip:
        codes = np.clip(codes, 0, 15)
    codes = codes.astype(np.int64)
    if not offset:
        codes = (codes - 8) & 0x0F
    codes = codes.astype(np.uint8)  # without the clip, 16 stays 16 and spills into the next nibble
    if pairs == "halves":
        packed = codes[:16] | (codes[16:] << 4)
    elif pairs == "swapped":
        packed = codes[16:] | (codes[:16] << 4)
    else:  # neighbours, as chapter 07's pack_int4
        packed = codes[0::2] | (codes[1::2] << 4)
    return struct.pack(scale_format, float(d)) + packed.astype(np.uint8).tobytes()


def q4_mistakes(x: np.ndarray) -> dict:
    return {
        "neighbouring weights (2j, 2j + 1) share a byte, as chapter 07's pack_int4 packs them; Q4_0 puts weight j "
        "in the low nibble of byte j and weight j + 16 in its high nibble": lambda: q4_variant(x, pairs="neighbours"),
        "the two halves are swapped: weights 0..15 go in the LOW nibbles, 16..31 in the high ones":
            lambda: q4_variant(x, pairs="swapped"),
        "the scale lost the extreme weight's sign (max|x| / 8); it is the signed extreme divided by -8":
            lambda: q4_variant(x, scale_rule="abs/8"),
        "the scale is the extreme divided by +8; it is divided by -8, so the extreme lands on code 0 (q = -8)":
            lambda: q4_variant(x, scale_rule="signed/8"),
        "this is chapter 07's symmetric int4 (max|x| / 7, levels -7..7); Q4_0 uses all 16 levels: d = extreme / -8":
            lambda: q4_variant(x, scale_rule="abs/7"),
        "the codes were rounded half away from zero; ggml truncates x * id + 8.5, which rounds halves UP "
        "(-2.5 -> -2)": lambda: q4_variant(x, rounding="away"),
        "the codes were rounded half to even; ggml truncates x * id + 8.5 (halves round up)":
            lambda: q4_variant(x, rounding="even"),
        "the codes were not clipped to 15: a weight of the other sign as large as the extreme gives code 16, "
        "which does not fit 4 bits": lambda: q4_variant(x, clip=False),
        "the last of the equally large weights was taken as the extreme; ggml takes the first (argmax)":
            lambda: q4_variant(x, last_of_ties=True),
        "the nibbles hold q as a signed 4-bit number; Q4_0 stores the code q + 8, in 0..15":
            lambda: q4_variant(x, offset=False),
        "the codes were computed with the float16-rounded scale; ggml uses the float32 d and rounds only the "
        "stored copy": lambda: q4_variant(x, ints_from_f16=True),
        "the scale is stored big-endian; GGUF is little-endian (`<e`)": lambda: q4_variant(x, scale_format=">e"),
    }


def q4_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    example = np.array([-8.0] + [1.0] * 31, dtype=np.float32)
    halves = np.array([-8.0] + [k + 0.5 for k in range(-8, 8)] + [-7.0, 7.0, 8.0 - 2 ** -20] + [0.0] * 12,
                      dtype=np.float32)
    both_signs = np.array([3.0, -6.0, 1.0, 6.0] + [0.5] * 28, dtype=np.float32)
    positive = np.array([8.0, -8.0] + [-4.5, -3.5, 2.5, 0.5] * 7 + [0.25, -0.25], dtype=np.float32)
    cases = [(example, "the docstring's example"), (halves, "exact halves (extreme -8, so d = 1)"),
             (both_signs, "the largest magnitude twice, -6 first, then 6"),
             (positive, "extreme +8 first, then -8 (code 16 must be clipped)"),
             (np.zeros(32, dtype=np.float32), "an all-zero block")]
    for i in range(14):
        scale = float(rng.choice([1e-4, 0.02, 1.0, 30.0, 1000.0]))
        x = f32(rng, 32, scale)
        if i % 4 == 3:  # a mirrored extreme later in the block
            j, k = rng.choice(32, size=2, replace=False)
            x[k] = -x[j]
            x[np.abs(x) > abs(x[j])] = 0
        cases.append((x, f"random normal values, scale {scale:g}"))
    for i in range(6):
        cases.append((near_ties(rng, lambda m: m / np.float32(-8), (-8, 8)), "values on or near halves"))
    return cases


@exercise("ex11.q4_0_block", points=3, reference=("course_lib.export.gguf_blocks.q4_0_scales_and_ints",
                                                 "course_lib.export.gguf_blocks.pack_q4_0"),
          hints=(
              "Find the weight of largest magnitude and keep its sign: the scale is that weight over -8, so it "
              "becomes q = -8 and everything else lands in -8..7 (a weight of the other sign as large gives 8: "
              "clip). Store q + 8, a code from 0 to 15, 4 bits per weight.",
              "Follow the docstring's recipe for the code in float32 (`np.float32` numbers, `np.trunc`); `argmax` of "
              "the magnitudes finds the first extreme. A byte holds two codes: one stays in the low 4 bits, the "
              "other is shifted left by 4, and `|` joins them.",
              "Which two codes share byte j? Not neighbours: the block is split into halves, the first half "
              "fills the low nibbles, the second the high ones. The scale's 2 float16 bytes come first.",
          ))
def _(fn, rng):
    for x, label in q4_cases(rng):
        what = f"q4_0_block({label})"
        got = expect_bytes(call(fn, torch.from_numpy(x.copy()), what=what), None, what)
        expected = GB.quantize_q4_0(torch.from_numpy(x)).tobytes()
        if got == expected:
            continue
        if len(got) != len(expected):
            raise GradeError(f"{what}: expected {len(expected)} bytes (2 for the float16 scale, 16 holding two "
                             f"4-bit codes each), got {len(got)}." + likely(got, {
                                 "the scale was written as float32 (4 bytes); Q4_0 stores it as float16":
                                     lambda: q4_variant(x, scale_format="<f")}))
        fields = [("the scale d (float16)", 0, 2)] + [(f"byte {2 + j}, codes {j} (low nibble) and {j + 16} (high)",
                                                       2 + j, 3 + j) for j in range(16)]
        raise GradeError(f"{what}: wrong bytes; {first_difference(got, expected, fields)}." + likely(got,
                                                                                                   q4_mistakes(x)))
    for n in (16, 33):
        expect_raises(ValueError, lambda: call(fn, torch.zeros(n), what="q4_0_block"),
                      f"q4_0_block(a tensor of {n} values)", "a block holds exactly 32 weights")


# ----------------------------------------------------------------------------- 3. Q4_0 back to floats


def dq4_variant(data: bytes, pairs: str = "halves", minus_eight: bool = True, signed_nibbles: bool = False,
                scale_format: str = "<e", use_scale: bool = True) -> torch.Tensor:
    d = np.float32(struct.unpack(scale_format, data[:2])[0])
    packed = np.frombuffer(data[2:18], dtype=np.uint8)
    low, high = packed & 0x0F, packed >> 4
    if pairs == "halves":
        codes = np.concatenate([low, high])
    elif pairs == "swapped":
        codes = np.concatenate([high, low])
    else:
        codes = np.stack([low, high], axis=1).reshape(-1)
    codes = codes.astype(np.float32)
    if signed_nibbles:
        q = np.where(codes >= 8, codes - 16, codes)
    else:
        q = codes - 8 if minus_eight else codes
    return torch.from_numpy(q * d if use_scale else q)


def dq4_mistakes(data: bytes) -> dict:
    return {
        "byte j was read as weights 2j and 2j + 1; it holds weight j (low nibble) and weight j + 16 (high nibble)":
            lambda: dq4_variant(data, pairs="neighbours"),
        "the halves are swapped: the low nibbles are weights 0..15": lambda: dq4_variant(data, pairs="swapped"),
        "the 8 was not subtracted: a code is q + 8": lambda: dq4_variant(data, minus_eight=False),
        "the nibbles were read as signed 4-bit numbers; a code is q + 8, unsigned 0..15":
            lambda: dq4_variant(data, signed_nibbles=True),
        "the scale was read big-endian; GGUF is little-endian": lambda: dq4_variant(data, scale_format=">e"),
        "the scale is missing: multiply by d": lambda: dq4_variant(data, use_scale=False),
    }


def random_q4_bytes(rng: np.random.Generator) -> bytes:
    """A float16 scale of either sign (finite, not tiny) and 16 random bytes: all 16 codes, in any order."""
    d = np.float16(rng.uniform(1e-3, 100.0) * rng.choice([-1, 1]))
    return struct.pack("<e", float(d)) + rng.integers(0, 256, size=16, dtype=np.uint8).tobytes()


@exercise("ex11.dequantize_q4_0_block", points=2, reference=("course_lib.export.gguf_blocks.unpack_q4_0",
                                                            "course_lib.export.gguf_blocks.dequantize_q4_0"),
          hints=(
              "Undo q4_0_block: read the float16 scale from the first 2 bytes, take each of the 16 bytes apart into "
              "its two 4-bit codes, turn each code back into q and multiply by the scale.",
              "`struct.unpack('<e', ...)` reads the float16; `np.frombuffer(..., dtype=np.uint8)` gives the bytes as "
              "numbers; `& 0x0F` keeps the low nibble and `>> 4` moves the high one down.",
              "All 16 low nibbles come first (weights 0..15), then all 16 high nibbles (16..31). Return a float32 "
              "tensor (`torch.from_numpy` of a float32 array).",
          ))
def _(fn, rng):
    cases = [(b"\x00\x3c" + bytes([0x90] + [0x99] * 15), "the docstring's example"),
             (struct.pack("<e", 1.0) + bytes(range(0, 256, 17))[:16], "codes j and j + 16 in every byte j")]
    for i in range(8):
        x = torch.from_numpy(f32(rng, 32, float(rng.choice([0.01, 1.0, 50.0]))))
        cases.append((GB.quantize_q4_0(x).tobytes(), "a block written by q4_0_block"))
    for i in range(8):
        cases.append((random_q4_bytes(rng), "a random block"))
    for data, label in cases:
        what = f"dequantize_q4_0_block({label}: {data.hex(' ')})"
        got = call(fn, data, what=what)
        if not isinstance(got, torch.Tensor):
            raise GradeError(f"{what}: expected a torch.Tensor, got {type(got).__name__}"
                             + (" (`torch.from_numpy(array)` turns it into one)" if isinstance(got, np.ndarray)
                                else ""))
        expected = GB.dequantize_q4_0(np.frombuffer(data, dtype=np.uint8))
        if got.dtype != torch.float32:
            raise GradeError(f"{what}: expected dtype torch.float32, got {got.dtype}; the weights come back as "
                             f"float32 (the float16 scale is widened first)")
        if tuple(got.shape) != (32,):
            raise GradeError(f"{what}: expected shape (32,), got {tuple(got.shape)}")
        if not torch.equal(got, expected):
            bad = (got != expected).nonzero().flatten().tolist()
            i = bad[0]
            raise GradeError(f"{what}: {len(bad)} of 32 weights differ (they are exact products, so they must be "
                             f"equal); weight {i}: expected {expected[i].item():g}, got {got[i].item():g}."
                             + likely(got, dq4_mistakes(data), same=lambda a, b: torch.equal(a, b)))
    for n in (17, 34):
        expect_raises(ValueError, lambda: call(fn, bytes(n), what="dequantize_q4_0_block"),
                      f"dequantize_q4_0_block({n} bytes)", "a Q4_0 block is 18 bytes")


# ----------------------------------------------------------------------------- 4. a GGUF metadata entry


TYPE_IDS = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5, "FLOAT32": 6, "BOOL": 7,
            "STRING": 8, "ARRAY": 9, "UINT64": 10, "INT64": 11, "FLOAT64": 12}
FORMATS = {"UINT8": "B", "INT8": "b", "UINT16": "H", "INT16": "h", "UINT32": "I", "INT32": "i", "FLOAT32": "f",
           "BOOL": "?", "UINT64": "Q", "INT64": "q", "FLOAT64": "d"}


def kv_reference(key: str, value, value_type: str, item_type: str | None) -> bytes:
    """The entry as the ``gguf`` package's writer packs it (llama.cpp's format reference in Python)."""
    gguf = need("gguf")
    writer = gguf.GGUFWriter(None, arch="gpt2")
    if not hasattr(writer, "_pack_val"):  # a private method: should a gguf release rename it, the same rules here
        return kv_variant(key, value, value_type, item_type)
    sub = gguf.GGUFValueType[item_type] if item_type else None
    return (writer._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False)
            + writer._pack_val(value, gguf.GGUFValueType[value_type], add_vtype=True, sub_type=sub))


def kv_variant(key: str, value, value_type: str, item_type: str | None, *, length: str = "<Q", chars: bool = False,
               zero_end: bool = False, type_id: str = "<I", endian: str = "<", count: str = "<Q",
               item_ids: bool = False, no_item_type: bool = False, bool_width: str = "?",
               float_width: dict | None = None) -> bytes:
    """An entry written with one of the usual mistakes (the defaults give the right bytes)."""
    def string(text: str) -> bytes:
        data = text.encode("utf-8")
        n = len(text) if chars else len(data)
        return struct.pack(length.replace("<", endian), n) + data + (b"\x00" if zero_end else b"")

    def plain(item, kind: str) -> bytes:
        if kind == "STRING":
            return string(item)
        fmt = {"BOOL": bool_width, **(float_width or {})}.get(kind, FORMATS[kind])
        return struct.pack(endian + fmt, item)

    tid = (lambda kind: struct.pack(type_id.replace("<", endian), TYPE_IDS[kind])) if type_id else (lambda kind: b"")
    out = string(key) + tid(value_type)
    if value_type == "ARRAY":
        out += (b"" if no_item_type else tid(item_type)) + struct.pack(count.replace("<", endian), len(value))
        out += b"".join((tid(item_type) if item_ids else b"") + plain(v, item_type) for v in value)
    else:
        out += plain(value, value_type)
    return out


def kv_mistakes(key, value, value_type, item_type) -> dict:
    args = (key, value, value_type, item_type)
    return {
        "a string's length was written as uint32 (GGUF v1); since v2 it is a uint64": lambda: kv_variant(
            *args, length="<I"),
        "a string's length counts characters; it counts the UTF-8 bytes (`len(text.encode('utf-8'))`)":
            lambda: kv_variant(*args, chars=True),
        "the strings end with a 0 byte, as in C; a GGUF string is its length and its bytes, nothing after":
            lambda: kv_variant(*args, zero_end=True),
        "the type id was written as one byte; it is a uint32 (4 bytes)": lambda: kv_variant(*args, type_id="<B"),
        "the value's type id is missing: after the key comes the type id (uint32), then the value":
            lambda: kv_variant(*args, type_id=""),
        "the numbers are big-endian; GGUF is little-endian (`<` in struct)": lambda: kv_variant(*args, endian=">"),
        "the array's item count was written as uint32; it is a uint64": lambda: kv_variant(*args, count="<I")
        if value_type == "ARRAY" else None,
        "each array item has its own type id; the items' type is written once, before the count":
            lambda: kv_variant(*args, item_ids=True) if value_type == "ARRAY" else None,
        "the array's item type is missing: an ARRAY's value starts with the items' type id (uint32), then the count":
            lambda: kv_variant(*args, no_item_type=True) if value_type == "ARRAY" else None,
        "a BOOL was written as 4 bytes; it is one byte, 0 or 1": lambda: kv_variant(*args, bool_width="I")
        if "BOOL" in (value_type, item_type) else None,
        "a FLOAT32 was written as a float64 (`d`); FLOAT32 is `f`, 4 bytes": lambda: kv_variant(
            *args, float_width={"FLOAT32": "d"}) if "FLOAT32" in (value_type, item_type) else None,
        "a FLOAT64 was written as a float32; FLOAT64 is `d`, 8 bytes": lambda: kv_variant(
            *args, float_width={"FLOAT64": "f"}) if "FLOAT64" in (value_type, item_type) else None,
    }


WORDS = ["gpt2", "tokenizer", "ggml", "naïve", "café", "Straße", "日本語", "токен", "ελληνικά", "emoji 🙂", "ħ",
         "Ġthe", "Ċ", " ", "a b", "merges"]


def random_text(rng: np.random.Generator, words: int = 2) -> str:
    return ".".join(str(rng.choice(WORDS)) for _ in range(words))


def random_scalar(rng: np.random.Generator, kind: str):
    ranges = {"UINT8": (0, 2**8), "INT8": (-2**7, 2**7), "UINT16": (0, 2**16), "INT16": (-2**15, 2**15),
              "UINT32": (0, 2**32), "INT32": (-2**31, 2**31), "UINT64": (0, 2**64), "INT64": (-2**63, 2**63)}
    if kind == "UINT64":  # the whole range, up to 2**64 - 1
        return int(rng.integers(0, 2**63, dtype=np.int64)) * 2 + int(rng.integers(0, 2))
    if kind in ranges:
        low, high = ranges[kind]
        return int(rng.integers(low, high - 1, endpoint=True, dtype=np.int64))
    if kind == "FLOAT32":
        return float(np.float32(rng.standard_normal() * 10.0 ** int(rng.integers(-6, 6))))
    if kind == "FLOAT64":
        return float(rng.standard_normal() * 10.0 ** int(rng.integers(-30, 30)))
    if kind == "BOOL":
        return bool(rng.integers(0, 2))
    return random_text(rng, int(rng.integers(0, 4)))


def kv_cases(rng: np.random.Generator) -> list[tuple]:
    cases = [("gpt2.block_count", 2, "UINT32", None), ("general.name", "course GPT-2", "STRING", None),
             ("gpt2.attention.layer_norm_epsilon", 1e-5, "FLOAT32", None),
             ("tokenizer.ggml.add_bos_token", False, "BOOL", None),
             ("general.architecture", "gpt2", "STRING", None),
             ("tokenizer.ggml.tokens", ["!", "Ġthe", "é", "日本"], "ARRAY", "STRING"),
             ("tokenizer.ggml.token_type", [1, 1, 3, 4], "ARRAY", "INT32"),
             ("clé.ñame", "naïve café", "STRING", None)]
    for kind in ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64", "FLOAT32", "FLOAT64",
                 "BOOL", "STRING"):
        cases.append((f"test.{random_text(rng)}", random_scalar(rng, kind), kind, None))
    for kind in ("UINT8", "INT16", "UINT32", "INT64", "FLOAT32", "FLOAT64", "BOOL", "STRING"):
        items = [random_scalar(rng, kind) for _ in range(int(rng.integers(1, 6)))]
        cases.append((f"array.{random_text(rng, 1)}", items, "ARRAY", kind))
    return cases


def kv_fields(key: str, value, value_type: str, item_type: str | None) -> list[tuple[str, int, int]]:
    k = len(key.encode("utf-8"))
    fields = [("the key's length (uint64)", 0, 8), ("the key's UTF-8 bytes", 8, 8 + k),
              ("the value's type id (uint32)", 8 + k, 12 + k)]
    start = 12 + k
    if value_type == "ARRAY":
        fields += [("the items' type id (uint32)", start, start + 4), ("the item count (uint64)", start + 4,
                                                                       start + 12)]
        position = start + 12
        for i, item in enumerate(value):
            size = len(kv_variant("", item, item_type, None)) - 12
            fields.append((f"item {i}", position, position + size))
            position += size
    else:
        fields.append(("the value", start, 1 << 30))
    return fields


@exercise("ex11.gguf_kv", points=2, reference=("course_lib.export.gguf_export.read_gguf_layout",),
          hints=(
              "An entry is three pieces one after the other: the key as a GGUF string, the value's type id, the "
              "value. Every piece has a fixed width except strings, which say their own length first; an array "
              "says its items' type and its count first.",
              "`struct.pack` with a little-endian format: `<Q` for a uint64, `<I` for a uint32, and the format of "
              "each value type from its width (`<b`, `<H`, `<f`, `<d`, `<?` ...). `text.encode('utf-8')` gives the "
              "bytes whose number is the string's length.",
              "Inside an array, the items are written bare: no type id of their own (the array stated it once), "
              "but a string item keeps its length prefix. The course's reader (shown after the check) undoes "
              "each of these steps.",
          ))
def _(fn, rng):
    for key, value, value_type, item_type in kv_cases(rng):
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        what = f"gguf_kv({key!r}, {shown}, {value_type!r}" + (f", item_type={item_type!r})" if item_type else ")")
        args = (key, value, value_type) + ((item_type,) if item_type else ())
        got = expect_bytes(call(fn, *args, what=what), None, what)
        expected = kv_reference(key, value, value_type, item_type)
        if got == expected:
            continue
        where = first_difference(got, expected, kv_fields(key, value, value_type, item_type))
        size = f" (expected {len(expected)} bytes, got {len(got)})" if len(got) != len(expected) else ""
        raise GradeError(f"{what}: wrong bytes{size}; {where}."
                         + likely(got, kv_mistakes(key, value, value_type, item_type)))
    for args, why in [(("a.b", 1, "FLOAT16"), "FLOAT16 is not a GGUF value type"),
                      (("a.b", [1, 2], "ARRAY"), "an ARRAY needs its items' type (item_type)"),
                      (("a.b", [[1]], "ARRAY", "ARRAY"), "nested arrays are not asked")]:
        expect_raises(ValueError, lambda: call(fn, *args, what="gguf_kv"), f"gguf_kv{args!r}", why)


# ----------------------------------------------------------------------------- 5. where a tensor's data starts


def offset_mistakes(header_end: int, alignment: int, offset: int) -> dict:
    return {
        "the data section was not aligned: it starts at the first multiple of the alignment at or after the "
        "header's end": lambda: header_end + offset,
        "the header's end was rounded down; round it up (the data cannot start inside the header)":
            lambda: header_end // alignment * alignment + offset,
        "a whole alignment was added when the header already ends on a multiple; the padding is 0 then":
            lambda: (header_end // alignment + 1) * alignment + offset if header_end % alignment == 0 else None,
        "the alignment was taken as 32; use the one given (general.alignment)":
            lambda: -(-header_end // 32) * 32 + offset if alignment != 32 else None,
        "the tensor's own offset is missing: it counts from the start of the data section": lambda:
            -(-header_end // alignment) * alignment if offset else None,
    }


_FILES: dict[str, Path] = {}  # name -> folder of files the checks wrote (removed when the process exits)


def scratch(name: str) -> Path:
    if name not in _FILES:
        folder = Path(tempfile.mkdtemp(prefix=f"course_ex11_{name}_"))
        atexit.register(shutil.rmtree, folder, True)
        _FILES[name] = folder
    return _FILES[name]


def gguf_file(rng: np.random.Generator, alignment: int, index: int) -> tuple[Path, dict]:
    """A GGUF file with a few metadata entries and tensors of odd sizes, written by the ``gguf`` package."""
    gguf = need("gguf")
    path = scratch("gguf") / f"file_{index}_{alignment}_{int(rng.integers(1 << 30))}.gguf"
    writer = gguf.GGUFWriter(path, arch="gpt2")
    if alignment != 32:
        writer.add_custom_alignment(alignment)
    writer.add_name(random_text(rng, int(rng.integers(1, 4))))
    writer.add_uint32("gpt2.block_count", int(rng.integers(1, 48)))
    writer.add_array("test.words", [random_text(rng, 1) for _ in range(int(rng.integers(1, 8)))])
    tensors = {}
    for t in range(int(rng.integers(1, 5))):
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 40)))
        kind = [np.float32, np.float16][t % 2]
        array = rng.standard_normal(shape).astype(kind)
        tensors[f"blk.{t}.weight"] = array
        writer.add_tensor(f"blk.{t}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, tensors


def header_end(path: Path) -> int:
    """The byte just after the last tensor description, as the ``gguf`` package's reader parses it."""
    gguf = need("gguf")
    reader = gguf.GGUFReader(path)
    field = reader.tensors[-1].field
    end = int(field.offset) + sum(int(part.nbytes) for part in field.parts)
    del reader
    return end


@exercise("ex11.tensor_data_offset", points=1, reference=("course_lib.export.gguf_export.read_gguf_layout",),
          hints=(
              "Two steps: find where the data section starts (the header's end, pushed forward to the next "
              "multiple of the alignment, unless it is on one already), then move forward by the tensor's own "
              "offset.",
              "Rounding n up to a multiple of a is rounding n / a up, times a: with integers, `-(-n // a)` "
              "rounds up (or add a - 1 before dividing down). Check it on a header that ends exactly on a multiple.",
          ))
def _(fn, rng):
    cases = [(1000, 32, 0), (1024, 32, 64), (70, 64, 128), (24, 1, 5), (4096, 4096, 0), (4097, 4096, 8192)]
    for _ in range(20):
        alignment = int(rng.choice([1, 8, 16, 32, 64, 256, 4096]))
        end = int(rng.integers(24, 2_000_000))
        if rng.integers(0, 3) == 0:
            end = -(-end // alignment) * alignment  # already aligned
        cases.append((end, alignment, int(rng.integers(0, 1000)) * alignment))
    for end, alignment, offset in cases:
        what = f"tensor_data_offset(header_end={end}, alignment={alignment}, offset={offset})"
        got = expect_int(call(fn, end, alignment, offset, what=what), what)
        expected = -(-end // alignment) * alignment + offset  # read_gguf_layout's rule
        if got != expected:
            raise GradeError(f"{what}: expected {expected}, got {got}." + likely(got, offset_mistakes(end, alignment,
                                                                                                      offset)))
    from course_lib.export.gguf_export import read_gguf_layout

    for index, alignment in enumerate((32, int(rng.choice([8, 16, 64])), int(rng.choice([128, 4096])))):
        path, tensors = gguf_file(rng, alignment, index)
        layout = read_gguf_layout(path)
        end = header_end(path)
        data = path.read_bytes()
        for t in layout["tensors"]:
            what = (f"tensor_data_offset(header_end={end}, alignment={alignment}, offset={t['offset']}) for tensor "
                    f"{t['name']!r} of a GGUF file of {len(data)} bytes")
            got = expect_int(call(fn, end, alignment, t["offset"], what=what), what)
            if got != t["data_offset"]:
                found = data[got:got + 8].hex(" ") if 0 <= got < len(data) else "past the end of the file"
                raise GradeError(f"{what}: the file's reader finds its data at byte {t['data_offset']}, you said "
                                 f"{got} (the file holds {found} there; the tensor starts with "
                                 f"{tensors[t['name']].tobytes()[:8].hex(' ')})."
                                 + likely(got, offset_mistakes(end, alignment, t["offset"])))


# ----------------------------------------------------------------------------- 6. dynamic axes


def tiny_gpt2(n_layer: int, seed: int = 0, vocab: int = 16, n_embd: int = 8, n_head: int = 2, scale: float = 0.02):
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):  # a check leaves the notebook's random numbers alone
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
        if scale != 0.02:  # larger weights than GPT-2's initialisation: greedy decoding then varies its tokens
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(0, scale)
    return model


def expected_axes(num_layers: int) -> dict:
    from course_lib.export import onnx_export as OX

    return OX._dynamic_axes(OX._gpt2_spec(tiny_gpt2(num_layers)))


_EXPORTED: dict[tuple, Path] = {}


def exported(n_layer: int, seed: int, **sizes) -> Path:
    """A random tiny GPT-2 exported to ONNX by the course (once per process for each configuration)."""
    need("onnx")
    key = (n_layer, seed, tuple(sorted(sizes.items())))
    if key not in _EXPORTED:
        from course_lib.export import onnx_export as OX

        path = scratch("onnx") / f"gpt2_{len(_EXPORTED)}.onnx"
        OX.to_onnx(tiny_gpt2(n_layer, seed, **sizes), path)
        _EXPORTED[key] = path
    return _EXPORTED[key]


def graph_axes(path: Path) -> dict:
    """{name: {axis: dim name}} read from the exported graph's inputs and outputs."""
    onnx = need("onnx")
    graph = onnx.load(str(path)).graph
    return {v.name: {i: d.dim_param for i, d in enumerate(v.type.tensor_type.shape.dim) if d.dim_param}
            for v in list(graph.input) + list(graph.output)}


def explain_axes(name: str, got: dict, expected: dict) -> str:
    size_names = {"past": ("B", "H", "P", "D"), "present": ("B", "H", "P + T", "D"), "logits": ("B", "T", "V")}
    kind = "past" if name.startswith("past_key_values") else "present" if name.startswith("present") else name
    extra = sorted(set(got) - set(expected))
    if extra and kind in size_names:
        fixed = ", ".join(size_names[kind][a] for a in extra if a < len(size_names[kind]))
        return f"axis {extra} ({fixed}) is a size of the model, the same in every run: it is not dynamic"
    if kind == "present" and got.get(2) == "past_sequence_length":
        return "the present holds the cache AND this step's tokens: its axis 2 is total_sequence_length (P + T)"
    if kind == "past" and got.get(2) == "total_sequence_length":
        return "the past holds only the tokens already cached: its axis 2 is past_sequence_length (P)"
    if name == "attention_mask" and got.get(1) == "sequence_length":
        return "the mask covers the cached tokens too: its axis 1 is total_sequence_length (P + T)"
    if 0 not in got:
        return "the batch (axis 0) is dynamic too: one graph for every batch size"
    if kind in ("past", "present") and got.get(1) is not None:
        return "axis 1 of the cache is the heads (H), a size of the model; the cached tokens are on axis 2"
    return "compare each axis with the shapes in the docstring"


@exercise("ex11.dynamic_axes", points=2, reference=("course_lib.export.onnx_export._gpt2_spec",
                                                   "course_lib.export.onnx_export._dynamic_axes"),
          hints=(
              "Write the shape of every input and output with letters (B, T, P, P + T, H, D, V) and keep only the "
              "axes whose size changes from one run to the next; the model's own sizes stay fixed.",
              "Three kinds of length: this step's tokens (input_ids, position_ids, logits), the cached tokens (the "
              "past), and both together (the mask covers all tokens so far; the present is the past with this "
              "step appended).",
              "The cache has one input and one output per layer and per kind (key, value): loop over the layers "
              "counting from 0, and use ints as the axis keys.",
          ))
def _(fn, rng):
    layer_counts = [1, 2, 3, 4] + [int(rng.integers(5, 13)) for _ in range(2)]
    for num_layers in layer_counts:
        what = f"dynamic_axes({num_layers})"
        got = call(fn, num_layers, what=what)
        check_axes(got, expected_axes(num_layers), what)
    from course_lib.export.onnx_export import read_sidecar

    path = exported(2, 0)
    sidecar = read_sidecar(path)  # a string in a shape is a dynamic axis, named
    from_sidecar = {t["name"]: {i: d for i, d in enumerate(t["shape"]) if isinstance(d, str)}
                    for t in sidecar["inputs"] + sidecar["outputs"]}
    got = call(fn, 2, what="dynamic_axes(2)")
    check_axes(got, from_sidecar, "dynamic_axes(2), compared with the sidecar of a GPT-2 graph the course exported")
    check_axes(got, graph_axes(path), "dynamic_axes(2), compared with the dims of a GPT-2 graph the course exported")


def check_axes(got: Any, expected: dict, what: str) -> None:
    if not isinstance(got, dict):
        raise GradeError(f"{what}: expected a dict {{name: {{axis: axis name}}}}, got {type(got).__name__}")
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing or extra:
        message = f"{what}: "
        if missing:
            message += f"missing {', '.join(map(repr, missing[:6]))}{' ...' if len(missing) > 6 else ''}; "
        if extra:
            message += f"names the graph does not have: {', '.join(map(repr, extra[:6]))}; "
        layers = max((int(n.split(".")[1]) for n in expected if n.startswith("present.")), default=0) + 1
        if any(n.startswith(f"present.{layers}.") or n.startswith(f"past_key_values.{layers}.") for n in extra):
            message += "layers count from 0 (the last layer is N - 1); "
        raise GradeError(message + "the inputs are input_ids, attention_mask, position_ids and "
                         "past_key_values.N.key/value per layer; the outputs logits and present.N.key/value")
    for name, axes in expected.items():
        mine = got[name]
        if not isinstance(mine, dict):
            raise GradeError(f"{what}[{name!r}]: expected a dict {{axis: axis name}}, got {type(mine).__name__}")
        if any(not isinstance(a, int) or isinstance(a, bool) for a in mine):
            raise GradeError(f"{what}[{name!r}]: the axes are ints (0, 1, 2 ...), got keys {list(mine)!r}")
        if mine != axes:
            raise GradeError(f"{what}[{name!r}]: expected {axes}, got {mine}; {explain_axes(name, mine, axes)}")


# ----------------------------------------------------------------------------- stretch: Q8_0 dot product


def dot_terms(weights: bytes, x: np.ndarray, *, quantize_x: bool = True, f16_scale: bool = True,
              overflow: str | None = None, scales: str = "both") -> np.ndarray:
    """The per-block terms of llama.cpp's Q8_0 x Q8_0 dot product (float64), or of a usual mistake."""
    d_w, q_w = GB.unpack_q8_0(np.frombuffer(weights, dtype=np.uint8))
    d_w = d_w.double()
    if not quantize_x:  # the float activations times the dequantized weights
        w = (q_w.double() * d_w[:, None]).reshape(-1)
        return (w * torch.from_numpy(x).double()).reshape(-1, 32).sum(-1).numpy()
    d_x, q_x = GB.q8_0_scales_and_ints(torch.from_numpy(x))
    d_x = d_x.double()
    if not f16_scale:  # the same integers, but the float32 scale instead of its float16 copy
        d_x = torch.from_numpy((np.abs(x).reshape(-1, 32).max(-1) / np.float32(127)).astype(np.float64))
    if overflow == "int8":
        products = (q_w * q_x).to(torch.int64)  # int8 * int8 wraps in int8
        sums = products.sum(-1)
    elif overflow == "int16":
        sums = (q_w.to(torch.int16) * q_x.to(torch.int16)).sum(-1, dtype=torch.int16).to(torch.int64)
    else:
        sums = (q_w.to(torch.int64) * q_x.to(torch.int64)).sum(-1)
    factor = {"both": d_w * d_x, "weights": d_w, "activations": d_x}[scales]
    return (sums.double() * factor).numpy()


# The reference is the nearest piece course_lib has (it has no Q8_0 dot product); q8_0_scales_and_ints is left
# out on purpose: it is q8_0_block's reference, revealed in the notebook, and a stretch reference is never shown.
@exercise("ex11.q8_0_dot", points=4, stretch=True, reference=("course_lib.export.gguf_blocks.unpack_q8_0",),
          hints=(
              "Per block: quantize the 32 activations as the weights were quantized, multiply the two blocks' int8s "
              "pairwise and add them up as one integer, then scale it by both blocks' scales. Add the blocks' "
              "results.",
              "Your q8_0_block gives x's blocks. Read each block's scale back from its 2 bytes (float16, widened to "
              "float32) and its int8s with `np.frombuffer(..., dtype=np.int8)`.",
              "Widen the int8s (to int32 or int64) BEFORE multiplying: 127 * 127 does not fit an int8, and a sum "
              "of 32 such products does not fit an int16 either.",
          ))
def _(fn, rng):
    cases = []
    for i in range(14):
        n = int(rng.integers(1, 9))
        w_scale, x_scale = float(rng.choice([0.01, 1.0, 20.0])), float(rng.choice([0.1, 1.0, 300.0]))
        w = f32(rng, 32 * n, w_scale)
        x = f32(rng, 32 * n, x_scale)
        if i % 4 == 1:  # the same signs: the integer sums grow large
            x = np.abs(x)
            w = np.abs(w)
        if i % 5 == 2:
            x[:32] = 0  # an all-zero block of activations
        cases.append((GB.quantize_q8_0(torch.from_numpy(w)).tobytes(), x, f"{n} blocks"))
    for weights, x, label in cases:
        what = f"q8_0_dot({label}: {len(weights)} bytes of weights, x of {x.size} values)"
        got = call(fn, weights, torch.from_numpy(x.copy()), what=what)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, np.generic):
            got = got.item()
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            raise GradeError(f"{what}: expected a Python float, got {type(got).__name__}")
        terms = dot_terms(weights, x)
        expected = float(terms.sum())
        tolerance = 1e-5 * float(np.abs(terms).sum()) + 1e-30
        if math.isfinite(got) and abs(got - expected) <= tolerance:
            continue
        mistakes = {
            "x was not quantized: you computed the float dot product with the dequantized weights; llama.cpp "
            "quantizes the activations to Q8_0 blocks first and multiplies integers":
                lambda: float(dot_terms(weights, x, quantize_x=False).sum()),
            "x's scale was used unrounded; llama.cpp stores it as float16 like every Q8_0 scale and uses that copy":
                lambda: float(dot_terms(weights, x, f16_scale=False).sum()),
            "the int8 products overflowed: widen the int8s to int32 before multiplying":
                lambda: float(dot_terms(weights, x, overflow="int8").sum()),
            "the sum overflowed int16: add the 32 products up in int32 (or int64)":
                lambda: float(dot_terms(weights, x, overflow="int16").sum()),
            "only the weights' scale was applied: each block's integer sum is scaled by BOTH scales":
                lambda: float(dot_terms(weights, x, scales="weights").sum()),
            "only the activations' scale was applied: each block's integer sum is scaled by BOTH scales":
                lambda: float(dot_terms(weights, x, scales="activations").sum()),
        }
        close = lambda a, b: math.isfinite(a) and abs(a - b) <= tolerance  # noqa: E731
        raise GradeError(f"{what}: expected {expected:.8g}, got {got:.8g} (tolerance {tolerance:.2g})."
                         + likely(got, mistakes, same=close))
    weights, x = cases[0][0], cases[0][1]
    expect_raises(ValueError, lambda: call(fn, weights[:-1], torch.from_numpy(x[:-32].copy() if x.size > 32 else x),
                                           what="q8_0_dot"), "q8_0_dot(weights of 33 bytes too few, ...)",
                  "Q8_0 data is whole 34-byte blocks")
    expect_raises(ValueError, lambda: call(fn, weights, torch.from_numpy(np.zeros(x.size + 32, np.float32)),
                                           what="q8_0_dot"), "q8_0_dot(weights, x with 32 values too many)",
                  "x must hold 32 values per block of weights")


# ----------------------------------------------------------------------------- stretch: greedy with the cache


class GraphRunner:
    """``run(feeds)`` for the learner: one onnxruntime call of the exported graph, its inputs checked first.

    Records each call's (tokens fed, cached tokens fed) so the check can say whether the cache was used.
    """

    def __init__(self, path: Path, sidecar: dict):
        from course_lib.export.onnx_export import OnnxCausalLM

        self.model = OnnxCausalLM(path, threads=1)
        self.sidecar = sidecar
        self.inputs = {i["name"]: i for i in sidecar["inputs"]}
        self.outputs = [o["name"] for o in sidecar["outputs"]]
        self.calls: list[tuple[int, int]] = []

    def __call__(self, feeds):
        if not isinstance(feeds, dict):
            raise TypeError(f"run() takes one dict {{input name: numpy array}}, got {type(feeds).__name__}")
        missing = [n for n in self.inputs if n not in feeds]
        extra = [n for n in feeds if n not in self.inputs]
        if missing or extra:
            raise ValueError(f"run(): the graph's inputs are {', '.join(self.inputs)}; missing: "
                             f"{', '.join(missing) or 'none'}; unknown: {', '.join(map(str, extra)) or 'none'}")
        arrays = {}
        for name, spec in self.inputs.items():
            value = feeds[name]
            if isinstance(value, torch.Tensor):
                value = value.numpy()
            value = np.asarray(value)
            if str(value.dtype) != spec["dtype"]:
                raise TypeError(f"run(): {name} must be {spec['dtype']}, got {value.dtype}")
            if value.ndim != len(spec["shape"]):
                raise ValueError(f"run(): {name} must have {len(spec['shape'])} dimensions {spec['shape']}, got "
                                 f"shape {value.shape}")
            arrays[name] = np.ascontiguousarray(value)
        B, T = arrays["input_ids"].shape
        P = arrays[self.sidecar["past"]["input"].format(layer=0, kind="key")].shape[2]
        if arrays["attention_mask"].shape != (B, P + T):
            raise ValueError(f"run(): with {P} cached tokens and {T} new ones, attention_mask must be ({B}, {P + T}), "
                             f"got {arrays['attention_mask'].shape}")
        if arrays["position_ids"].shape != (B, T):
            raise ValueError(f"run(): position_ids must be ({B}, {T}) like input_ids, got "
                             f"{arrays['position_ids'].shape}")
        if (arrays["position_ids"] < 0).any() or (arrays["position_ids"] >= self.sidecar["config"]["max_positions"]
                                                  ).any():
            raise ValueError(f"run(): position_ids must be in [0, {self.sidecar['config']['max_positions']}), got "
                             f"{arrays['position_ids'].min()}..{arrays['position_ids'].max()}")
        self.calls.append((T, P))
        out = self.model.session.run(self.outputs, arrays)
        return dict(zip(self.outputs, out))


def greedy_variant(runner: GraphRunner, ids: np.ndarray, mask: np.ndarray, max_new: int, eos: int | None, *,
                   positions: str = "mask", stop: str = "all", force_eos: bool = True) -> np.ndarray:
    """Greedy decoding with one of the usual mistakes (the defaults give the right tokens)."""
    config, names = runner.sidecar["config"], runner.sidecar["past"]
    B = ids.shape[0]
    empty = np.zeros((B, config["num_heads"], 0, config["head_dim"]), dtype=np.float32)
    past = {names["input"].format(layer=i, kind=k): empty for i in range(config["num_layers"])
            for k in ("key", "value")}
    finished = np.zeros(B, dtype=bool)
    step = ids
    for _ in range(max_new):
        t = step.shape[1]
        if positions == "mask":
            pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -t:]
        elif positions == "arange":  # ignores the padding
            pos = np.broadcast_to(np.arange(mask.shape[1] - t, mask.shape[1]), (B, t)).astype(np.int64)
        else:  # restarts at 0 every step
            pos = np.broadcast_to(np.arange(t), (B, t)).astype(np.int64)
        outputs = runner({"input_ids": step, "attention_mask": mask, "position_ids": np.ascontiguousarray(pos),
                          **past})
        new = outputs["logits"][:, -1].argmax(axis=-1).astype(np.int64)
        if eos is not None and force_eos:
            new = np.where(finished, eos, new)
        if eos is not None:
            finished |= new == eos
        ids = np.concatenate([ids, new[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        past = {names["input"].format(layer=i, kind=k): outputs[names["output"].format(layer=i, kind=k)]
                for i in range(config["num_layers"]) for k in ("key", "value")}
        if eos is not None and (finished.any() if stop == "any" else finished.all()):
            break
        step = new[:, None]
    return ids


def greedy_cases(rng: np.random.Generator, runner: GraphRunner) -> list[tuple]:
    """(ids, mask, max_new, eos, label): single prompts, left-padded batches, end tokens met by one row or all."""
    from course_lib.export.onnx_export import ort_generate_ids

    vocab = runner.sidecar["config"]["vocab_size"]
    cases = []
    for i in range(6):
        B = 1 if i == 0 else int(rng.integers(2, 4))
        T = int(rng.integers(2, 7))
        ids = rng.integers(1, vocab, size=(B, T)).astype(np.int64)
        mask = np.ones((B, T), dtype=np.int64)
        if B > 1:
            for b in range(1, B):
                pad = int(rng.integers(1, T))
                mask[b, :pad] = 0
                ids[b, :pad] = 0
        max_new = int(rng.integers(4, 10))
        plain = ort_generate_ids(runner.model, ids, max_new, attention_mask=mask, eos_token_id=[]).numpy()
        eos, label = None, f"batch {B}, prompt length {T}" + (", left-padded" if B > 1 else "") + ", no end token"
        if i >= 2:  # an end token that greedy decoding reaches: one row's third new token
            row = int(rng.integers(0, B))
            eos = int(plain[row, T + 2])
            label = f"batch {B}, prompt length {T}, left-padded, end token {eos} (row {row} produces it)"
        cases.append((ids, mask, max_new, eos, label))
    return cases


@exercise("ex11.greedy_with_cache", points=5, stretch=True,
          reference=("course_lib.export.onnx_export.ort_generate_ids",),
          timeout=120,
          hints=(
              "One call of run() per new token. The first call gets the whole prompt and an empty cache (P = 0: "
              "arrays with a 0-long axis 2); every later call gets one token per row and, as its cache, the "
              "present outputs of the call before.",
              "Keep the ids and the mask as growing (B, n) arrays. The positions of this step's tokens are the last "
              "t columns of the count of real tokens so far (a cumulative sum of the mask) minus one, never below "
              "0. The next token is the argmax of the logits at the last position.",
              "Map the outputs to the next inputs by name with the sidecar's patterns (present.N.kind -> "
              "past_key_values.N.kind). With an end token: a finished row keeps getting it, and the loop stops "
              "when all rows are finished.",
          ))
def _(fn, rng):
    from course_lib.export.onnx_export import ort_generate_ids, read_sidecar

    seed = int(rng.integers(0, 4))
    path = exported(2, seed, vocab=40, n_embd=24, n_head=3, scale=0.5)
    for ids, mask, max_new, eos, label in greedy_cases(rng, GraphRunner(path, dict(read_sidecar(path)))):
        sidecar = dict(read_sidecar(path), eos_token_id=eos)
        runner = GraphRunner(path, sidecar)
        what = f"greedy_with_cache({label}, max_new_tokens={max_new})"
        got = call(fn, runner, sidecar, torch.from_numpy(ids.copy()), torch.from_numpy(mask.copy()), max_new,
                   what=what)
        if isinstance(got, np.ndarray):
            got = torch.from_numpy(got)
        if not isinstance(got, torch.Tensor):
            raise GradeError(f"{what}: expected a (B, T + new) int64 tensor, got {type(got).__name__}")
        expected = ort_generate_ids(runner.model, ids, max_new, attention_mask=mask,
                                    eos_token_id=[] if eos is None else eos)
        if got.dtype != torch.int64:
            raise GradeError(f"{what}: expected dtype torch.int64, got {got.dtype}")
        if not torch.equal(got, expected):
            if tuple(got.shape) != tuple(expected.shape):
                difference = (f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)} (the prompt's "
                              f"{ids.shape[1]} columns, then one column per step)")
            else:
                row, col = [int(i) for i in (got != expected).nonzero()[0]]
                difference = (f"row {row}, column {col} (new token {col - ids.shape[1] + 1}): expected "
                              f"{int(expected[row, col])}, got {int(got[row, col])}")
            variants = {
                "the positions ignore the left padding: a row's positions count its real tokens only (cumulative "
                "sum of the mask, minus one)": dict(positions="arange"),
                "the positions restart at 0 at every step: the new token's position is the count of real tokens "
                "before it": dict(positions="restart"),
                "decoding stopped when the first row finished; it goes on until every row has produced the end "
                "token": dict(stop="any"),
                "a finished row went on choosing tokens; once a row has produced the end token it keeps "
                "producing it": dict(force_eos=False),
            }
            mistakes = {text: (lambda knobs=knobs: torch.from_numpy(greedy_variant(
                GraphRunner(path, sidecar), ids, mask, max_new, eos, **knobs))) for text, knobs in variants.items()}
            if eos is not None:
                mistakes["the end token was ignored (sidecar['eos_token_id'])"] = lambda: torch.from_numpy(
                    greedy_variant(GraphRunner(path, sidecar), ids, mask, max_new, None))
            raise GradeError(f"{what}: the tokens differ from onnxruntime's greedy decoding; {difference}."
                             + likely(got, mistakes,
                                      same=lambda a, b: a.shape == b.shape and torch.equal(a, b)))
        prompt = ids.shape[1]
        for step, (t, p) in enumerate(runner.calls):
            wanted = (prompt, 0) if step == 0 else (1, prompt + step - 1)
            if (t, p) != wanted:
                raise GradeError(f"{what}: the tokens are right, but call {step + 1} of run() fed {t} token(s) with "
                                 f"{p} cached; it should feed {wanted[0]} with {wanted[1]} cached: the prompt once "
                                 f"with an empty cache, then only each new token, with the previous call's present "
                                 f"outputs as the past")
        if len(runner.calls) != expected.shape[1] - prompt:
            raise GradeError(f"{what}: run() was called {len(runner.calls)} times for "
                             f"{expected.shape[1] - prompt} new tokens: one call per new token")
