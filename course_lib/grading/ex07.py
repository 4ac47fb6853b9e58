"""Checks for chapter 07's exercises (``exercises/ex07_quantization.py``).

Inputs are random: weights of a few scales with a few large outliers of either sign (so
that per-tensor and per-row scales differ), odd numbers of rows, all-zero rows and groups,
rows whose groups all have the same sign, group sizes 4 to 128, clipped scales, 4-bit
values and bytes of every value. Expected answers come from ``course_lib.quantization``
(``quantize_int8``, ``absmax_scale``, ``quantize_absmax``, ``quantize_int4``, ``pack_int4``,
``unpack_int4``, ``relative_error``), itself tested against PyTorch's int8 and int4
kernels in ``tests/test_quantization.py``; it is switched off while the learner's code runs.

The two stretch exercises go past the chapter: ``quantize_int4_clipped`` (a clipping ratio
searched per group; reference ``clip_search_errors`` / ``quantize_int4_clipped``) accepts
any candidate scale whose squared error is within 1e-4 (relative) of the smallest, since
float32 sums can order near-ties differently; ``w8a8_matmul`` (per-token int8 activations,
int32 sums, rescaled; reference ``quantize_per_token`` / ``int8_matmul`` / ``w8a8_linear``)
checks each intermediate, the later ones computed from the learner's own earlier results.
The exercises are registered in the notebook's order.

Integers are compared exactly, except that a level may differ by one where the value
before rounding lies within 1e-4 of a half (``w * (1 / scale)`` or float64 arithmetic can
round those either way). Scales are compared exactly, as bfloat16. When a result is wrong,
the check tries the usual mistakes on the same input and names the one that matches.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from course_lib import quantization as Q
from course_lib.grading.registry import (GradeError, call_learner, exercise, expect_close, expect_dtype,
                                         expect_shape, expect_tensor, expect_tensors, likely, randn)

ANSWER_KEY = tuple(f"course_lib.quantization.{name}" for name in (
    "absmax_scale", "quantize_absmax", "quantize_int8", "dequantize_int8", "group_rows", "quantize_int4",
    "dequantize_int4", "pack_int4", "unpack_int4", "relative_error", "sqnr_db", "fake_quantize", "quantize_model",
    "QuantLinear", "QuantEmbedding", "clip_search_errors", "quantize_int4_clipped", "quantize_per_token", "int8_matmul",
    "w8a8_linear"))

BF16 = torch.bfloat16
HALF_TOLERANCE = 1e-4  # a value this close to k + 0.5 may round either way


# ----------------------------------------------------------------------------- inputs


def weight(rng: np.random.Generator, n: int, k: int, *, outliers: bool = True, zero_rows: bool = False,
           group_size: int | None = None, zero_groups: bool = False, same_sign_rows: bool = False) -> torch.Tensor:
    """A float32 (n, k) weight: normal values at a random scale, plus (optionally) a few outliers 10-60x
    larger with random signs, all-zero rows, all-zero groups, and rows shifted so that all their values
    have one sign."""
    s = float(rng.choice([0.02, 0.1, 0.5, 1.0]))
    w = randn(rng, n, k, scale=s)
    if outliers and n * k > 1:
        count = max(1, n * k // 128)
        flat = w.view(-1)
        where = torch.from_numpy(rng.choice(n * k, size=count, replace=False))
        sign = torch.from_numpy(rng.choice([-1.0, 1.0], size=count).astype(np.float32))
        flat[where] = sign * s * torch.from_numpy(rng.uniform(10, 60, size=count).astype(np.float32))
    if same_sign_rows and n > 1:
        for row in rng.choice(n, size=max(1, n // 3), replace=False):
            sign = float(rng.choice([-1.0, 1.0]))
            w[row] = sign * (w[row].abs() + s * float(rng.uniform(0.5, 4.0)))
    if zero_rows and n > 1:
        w[rng.choice(n, size=max(1, n // 4), replace=False)] = 0.0
    if zero_groups and group_size and k // group_size > 1:
        for row in rng.choice(n, size=max(1, n // 2), replace=False):
            start = int(rng.integers(0, k // group_size)) * group_size
            w[row, start:start + group_size] = 0.0
    return w


def odd_rows(rng: np.random.Generator, most: int = 9) -> int:
    return int(rng.choice(np.arange(1, most + 1, 2)))


# ----------------------------------------------------------------------------- calling and reading results


def call(fn, *args, what: str):
    """Run the learner's function with the answer key switched off; it must leave its inputs as they were."""
    return call_learner(fn, args, what, ANSWER_KEY, "; course_lib.quantization is the answer key (any torch "
                        "operation is fine)", "`/=`, `.round_()`, `.clamp_()`, assigning into w ...")


tensor, tensors = expect_tensor, expect_tensors


def show(t: torch.Tensor) -> str:
    """A tensor's values when it is small, its shape otherwise."""
    return str(t.float().tolist() if t.dtype == BF16 else t.tolist()) if t.numel() <= 12 else \
        f"of shape {tuple(t.shape)}"


def expect_scales(got: torch.Tensor, expected: torch.Tensor, what: str, mistakes: dict) -> None:
    """bfloat16 scales, exactly (dtype and shape checked before)."""
    if torch.equal(got.float(), expected.float()):
        return
    bad = (got.float() != expected.float()).reshape(-1)
    i = int(bad.nonzero()[0])
    want, have = expected.float().reshape(-1)[i].item(), got.float().reshape(-1)[i].item()
    raise GradeError(f"{what}: {int(bad.sum())} of {bad.numel()} scales differ; e.g. scale {_index(expected, i)}: "
                     f"expected {want:.8g}, got {have:.8g}." + likely(got, mistakes))


def _index(t: torch.Tensor, flat: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, tuple(t.shape))) if t.dim() else ()


def _ones_for_zeros(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def near_half(ratio: torch.Tensor) -> torch.Tensor:
    frac = ratio.abs() - ratio.abs().floor()
    return (frac - 0.5).abs() < HALF_TOLERANCE


def expect_levels(got: torch.Tensor, expected: torch.Tensor, ratio: torch.Tensor, what: str, mistakes: dict,
                  name: str = "q", before: str = "w / scale", shown: torch.Tensor | None = None,
                  loose: torch.Tensor | None = None) -> None:
    """Integer levels, exactly, except off by one where ``ratio`` (the value that was rounded, float64) is
    within HALF_TOLERANCE of a half, or where ``loose`` is True. ``shown`` (w) is quoted in the message."""
    diff = (got.long() - expected.long()).abs()
    allowed = near_half(ratio) if loose is None else near_half(ratio) | loose
    bad = (diff > 1) | ((diff == 1) & ~allowed)
    if not bool(bad.any()):
        return
    i = int(bad.reshape(-1).nonzero()[0])
    where = _index(expected, i)
    w_part = f"w = {shown.reshape(-1)[i].item():.6g}, " if shown is not None else ""
    high = int(got.max()) if got.numel() else 0
    extra = ""
    if got.dtype == torch.uint8 and high > 15:
        extra = f" Your {name} has values up to {high}: 4-bit values must be in 0..15."
    want, have = expected.reshape(-1)[i].item(), got.reshape(-1)[i].item()
    raise GradeError(f"{what}: {int(bad.sum())} of {bad.numel()} values of {name} differ; e.g. at index {where}: "
                     f"{w_part}{before} = {ratio.reshape(-1)[i].item():.6g}, expected {want}, got {have}.{extra}"
                     + likely(got, mistakes))


# ----------------------------------------------------------------------------- int8


def _int8_tensor_cases(rng: np.random.Generator) -> list[torch.Tensor]:
    cases = [torch.tensor([[0.5, -1.27], [0.01, 0.0]]), torch.zeros(3, 5)]
    for case in range(10):
        n, k = odd_rows(rng), int(rng.integers(1, 65))
        cases.append(weight(rng, n, k, outliers=case % 3 != 2, zero_rows=case % 4 == 1))
    cases.append(randn(rng, int(rng.integers(2, 40)), scale=0.3))  # a bias: 1-D
    cases.append(weight(rng, 3, 8, outliers=True).reshape(2, 3, 4))  # 3-D
    negative = weight(rng, 5, 16, outliers=False)
    negative[2, 7] = -float(negative.abs().max()) * 30  # the largest |w| is negative
    cases.append(negative)
    return cases


@exercise("ex07.int8_absmax_round_trip", points=2,
          reference=("course_lib.quantization.quantize_int8", "course_lib.quantization.dequantize_int8"),
          hints=(
              "One scale for the whole tensor: the largest magnitude maps to level 127, every weight to its "
              "nearest level, and the weights come back as level times scale. The scale is rounded to bfloat16 "
              "before the levels are computed from it.",
              "`w.abs()` then `amax()` without a dim gives max|w| as a 0-d tensor; `.to(torch.bfloat16)` rounds "
              "the scale and `torch.where` swaps a zero scale for 1. Dequantize in float32: convert both factors "
              "first.",
              "The integer step, in order: divide by the rounded scale (as float32), `torch.round`, clamp to "
              "±127, and only then convert to int8 (the conversion alone truncates 2.9 to 2).",
          ))
def _(fn, rng):
    for w in _int8_tensor_cases(rng):
        what = f"int8_absmax_round_trip(w {show(w)})"
        q, scale, w_hat = tensors(call(fn, w, what=what), 3, what, "(q, scale, w_hat)")
        q_ref, scale_ref = Q.quantize_int8(w, per_channel=False)
        amax = w.abs().amax()

        mistakes_scale = {
            "an all-zero w got scale 0; it must get 1 (so that w / scale is 0, not nan)":
                lambda: (amax / 127).to(BF16),
            "you divided the largest w, not the largest |w|: a large negative weight must fit too":
                lambda: _ones_for_zeros((w.amax() / 127).to(BF16)),
            "you divided by 128; the largest level is 127": lambda: _ones_for_zeros((amax / 128).to(BF16)),
            "you rounded max|w| to bfloat16 before dividing; divide in float32, then round once":
                lambda: _ones_for_zeros(amax.to(BF16) / 127),
        }
        if scale.dtype != BF16:
            text = " It looks like the float32 scale, not rounded." if scale.dtype == torch.float32 and \
                scale.numel() == 1 and float(scale.reshape(())) == float(amax / 127) else ""
            raise GradeError(f"{what}: scale must be bfloat16 (how it is stored, and what the int8 kernel reads), "
                             f"got dtype {scale.dtype}: round it with .to(torch.bfloat16).{text}")
        if scale.shape != ():
            why = "one scale for the whole tensor (per-tensor), not one per row" if scale.numel() > 1 else \
                "a 0-dimensional tensor: w.abs().amax() without dim or keepdim"
            expect_shape(scale, (), f"{what}, scale", why)
        expect_scales(scale, scale_ref, f"{what}, scale", mistakes_scale)

        ratio = w.double() / scale_ref.double()
        expect_dtype(q, torch.int8, f"{what}, q", "the integers are stored as int8 (torch.round keeps a float: "
                                                 "convert with .to(torch.int8) after rounding and clamping)")
        expect_shape(q, tuple(w.shape), f"{what}, q", "one integer per weight")
        expect_levels(q, q_ref, ratio, f"{what}, q", {
            "you truncated toward zero (.to(torch.int8) without torch.round)":
                lambda: (w / scale_ref.float()).clamp(-127, 127).to(torch.int8),
            "you rounded down (floor) instead of to the nearest level":
                lambda: torch.floor(w / scale_ref.float()).clamp(-127, 127).to(torch.int8),
            "you divided by the float32 scale; divide by the bfloat16 one you return (scale.float())":
                lambda: torch.round(w / (amax / 127)).clamp(-127, 127).to(torch.int8),
        }, shown=w)

        expect_dtype(w_hat, torch.float32, f"{what}, w_hat",
                     "the dequantized weight is float32: q.float() * scale.float() (int8 times bfloat16 is "
                     "computed in bfloat16)")
        expect_shape(w_hat, tuple(w.shape), f"{what}, w_hat")
        expected_hat = q.float() * scale_ref.float()  # from your q, which was right (or right within a tie)
        try:
            expect_close(w_hat, expected_hat, f"{what}, w_hat (q * scale)", atol=1e-12, rtol=1e-6)
        except GradeError as err:
            raise GradeError(str(err) + "." + likely(w_hat, {
                "q * scale was computed in bfloat16; convert both to float32 first":
                    lambda: (q.to(BF16) * scale_ref).float(),
                "you multiplied by the float32 scale; use the bfloat16 one": lambda: q.float() * (amax / 127),
                "w_hat is w itself; it must be q * scale, the weights the model computes with": lambda: w,
            })) from None


def _clipped_cases(rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    cases = [(torch.tensor([[0.1, -0.35, 2.0]]), torch.tensor(0.1).to(BF16), 7)]
    for case in range(12):
        n, k = odd_rows(rng), int(rng.integers(4, 65))
        w = weight(rng, n, k)
        qmax = [127, 7][case % 2]
        per_row = case % 4 >= 2
        quantile = float(rng.choice([0.9, 0.95, 0.99]))
        amax = torch.quantile(w.abs(), quantile, dim=1, keepdim=True) if per_row else \
            torch.quantile(w.abs().reshape(-1), quantile)
        scale = (amax / qmax).to(BF16)  # clipping: smaller than max|w| / qmax, so the clamp bites
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        cases.append((w, scale, qmax))
    return cases


@exercise("ex07.quantize_with_scale", points=1,
          reference=("course_lib.quantization.quantize_absmax",),
          hints=(
              "The scale is given, and may be smaller than max|w| / qmax (clipping): every weight goes to its "
              "nearest level, and the ones beyond ±qmax stop at ±qmax.",
              "Divide by the scale as float32 (it broadcasts, whether () or (N, 1)), round to the nearest "
              "integer, then clamp to [-qmax, qmax].",
              "Clamp before converting to int8: the conversion wraps 200 around to -56, and no clamp afterwards "
              "can undo that.",
          ))
def _(fn, rng):
    for w, scale, qmax in _clipped_cases(rng):
        what = f"quantize_with_scale(w {show(w)}, scale {show(scale)}, qmax={qmax})"
        got = tensor(call(fn, w, scale, qmax, what=what), what)
        expected = Q.quantize_absmax(w, scale, qmax)
        expect_dtype(got, torch.int8, what, "convert with .to(torch.int8) after rounding and clamping")
        expect_shape(got, tuple(w.shape), what, "one integer per weight")
        ratio = w.double() / scale.double()
        expect_levels(got, expected, ratio, what, {
            f"you did not clamp to [-{qmax}, {qmax}]: this scale clips the outliers, and .to(torch.int8) wraps "
            f"what is beyond -128..127 around": lambda: torch.round(w / scale.float()).to(torch.int8),
            "you clamped to int8's own range, -128..127, instead of ±qmax":
                lambda: torch.round(w / scale.float()).clamp(-128, 127).to(torch.int8),
            "you converted to int8 before clamping: the conversion wraps 200 around to -56 first":
                lambda: torch.round(w / scale.float()).to(torch.int8).clamp(-qmax, qmax),
            "you truncated toward zero (.to(torch.int8) without torch.round)":
                lambda: (w / scale.float()).clamp(-qmax, qmax).to(torch.int8),
            "you multiplied by the scale instead of dividing":
                lambda: torch.round(w * scale.float()).clamp(-qmax, qmax).to(torch.int8),
        }, shown=w)


@exercise("ex07.per_channel_scales", points=1,
          reference=("course_lib.quantization.absmax_scale",),
          hints=(
              "A row's scale is its largest magnitude over 127: one scale per output row, so an outlier only "
              "coarsens its own row.",
              "`amax` over the last dim (the K values of a row) of the magnitudes gives (N,); divide, then round "
              "to bfloat16 as in exercise 1.",
              "After rounding, an all-zero row still has scale 0: replace those by 1 (`torch.where` or "
              "`masked_fill`). Take magnitudes before the max: a large negative weight must fit too.",
          ))
def _(fn, rng):
    cases = [torch.tensor([[0.5, -0.1, 0.2, 0.0], [1.0, -2.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])]
    for case in range(12):
        n = odd_rows(rng, 11)
        k = int(rng.integers(1, 65))
        if k == n:
            k += 1
        cases.append(weight(rng, n, k, zero_rows=case % 3 == 0))
    cases.append(torch.zeros(1, 6))
    for w in cases:
        what = f"per_channel_scales(w {show(w)})"
        got = tensor(call(fn, w, what=what), what)
        expected = Q.quantize_int8(w, per_channel=True)[1]  # (N,)
        amax = w.abs().amax(dim=1)
        if got.dtype != BF16:
            text = " It looks like the float32 scales, not rounded." if got.shape == amax.shape and \
                torch.equal(got.double(), (amax / 127).double()) else ""
            raise GradeError(f"{what}: scales must be bfloat16 (how they are stored, and what the int8 kernel "
                             f"reads), got dtype {got.dtype}: round with .to(torch.bfloat16).{text}")
        n, k = w.shape
        if tuple(got.shape) != (n,):
            why = {(): "one scale per output row, not one for the whole tensor",
                   (n, 1): "(N,), not (N, 1): .squeeze(-1), or amax without keepdim",
                   (k,): "one scale per row (amax over dim=1, the K values of a row), not one per column"}
            expect_shape(got, (n,), what, why.get(tuple(got.shape), "one scale per output row"))
        expect_scales(got, expected, what, {
            "you used one scale for the whole tensor (per-tensor) for every row":
                lambda: Q.absmax_scale(w, 127).expand(n).clone() if bool(w.any()) else torch.ones(n, dtype=BF16),
            "you divided each row's largest w, not its largest |w|":
                lambda: _ones_for_zeros((w.amax(dim=1) / 127).to(BF16)),
            "an all-zero row got scale 0; it must get 1": lambda: (amax / 127).to(BF16),
            "you divided by 128; the largest level is 127": lambda: torch.where(
                amax == 0, torch.ones_like(amax), amax / 128).to(BF16),
            "you rounded max|w| to bfloat16 before dividing; divide in float32, then round once":
                lambda: torch.where(amax == 0, torch.ones_like(amax), amax).to(BF16) / 127,
        })


# ----------------------------------------------------------------------------- int4 groups


def _group_cases(rng: np.random.Generator, zero_point: bool) -> list[tuple[torch.Tensor, int]]:
    cases = []
    for case in range(12):
        g = int(rng.choice([4, 8, 16, 32, 64, 128] if case % 2 else [4, 8, 16, 32]))
        n, groups = odd_rows(rng), int(rng.integers(1, 5))
        w = weight(rng, n, g * groups, zero_rows=case % 4 == 1, group_size=g, zero_groups=case % 3 == 0,
                   same_sign_rows=zero_point and case % 2 == 0, outliers=case % 5 != 4)
        cases.append((w, g))
    return cases


def _grouped(w: torch.Tensor, g: int) -> torch.Tensor:
    return w.double().reshape(w.shape[0], w.shape[1] // g, g)  # (N, G, g)


@exercise("ex07.quantize_int4_groups", points=3,
          reference=("course_lib.quantization.group_rows", "course_lib.quantization.quantize_int4"),
          hints=(
              "Exercise 1 once per group of g consecutive weights of a row, with 7 as the top level; the levels "
              "-7..7 are then stored shifted by 8, as 1..15.",
              "Reshape (N, K) to (N, K // g, g) so that the last dim is a group, and reduce over it with "
              "keepdim=True: the (N, G, 1) scales then broadcast against the groups.",
              "Add the 8 while the levels are still floats (a uint8 cannot hold -3) and convert to uint8 last; "
              "reshape q back to (N, K) and drop the scales' kept dim to return (N, G).",
          ))
def _(fn, rng):
    cases = [(torch.tensor([[0.7, -0.35, 0.1, 0.0, 2.1, 0.0, 0.0, -1.05]]), 4)] + _group_cases(rng, False)
    for w, g in cases:
        n, k = w.shape
        what = f"quantize_int4_groups(w {show(w)}, group_size={g})"
        q, scale = tensors(call(fn, w, g, what=what), 2, what, "(q, scale)")
        q_ref, scale_ref, _ = Q.quantize_int4(w, g)
        groups = w.reshape(n, k // g, g)
        amax = groups.abs().amax(dim=-1)  # (N, G)

        expect_dtype(scale, BF16, f"{what}, scale", "scales are stored (and read by the int4 kernel) as bfloat16: "
                                                   "round with .to(torch.bfloat16)")
        if tuple(scale.shape) != (n, k // g):
            why = {(n, k // g, 1): "squeeze the kept dimension: scale.squeeze(-1)",
                   (n, 1): "one scale per group of group_size weights, not one per row",
                   (n,): "one scale per group of group_size weights, not one per row"}
            expect_shape(scale, (n, k // g), f"{what}, scale", why.get(
                tuple(scale.shape), "one scale per group: (N, K // group_size), groups along each row"))
        expect_scales(scale, scale_ref, f"{what}, scale", {
            "you divided the largest w, not the largest |w|": lambda: torch.where(
                amax == 0, 1.0, groups.amax(-1) / 7).to(BF16),
            "you divided by 8; the largest symmetric int4 level is 7": lambda: torch.where(
                amax == 0, 1.0, amax / 8).to(BF16),
            "you divided by 15; that is the zero-point scheme's scale (max - min) / 15, here max|w| / 7":
                lambda: torch.where(amax == 0, 1.0, amax / 15).to(BF16),
            "an all-zero group got scale 0; it must get 1": lambda: (amax / 7).to(BF16),
            "your groups are every (K // g)-th weight of a row (w.reshape(N, g, K // g)); a group is g "
            "consecutive weights: w.reshape(N, K // g, g)": lambda: (lambda a: torch.where(
                a == 0, 1.0, a / 7).to(BF16))(w.reshape(n, g, k // g).abs().amax(dim=1)),
        })

        expect_dtype(q, torch.uint8, f"{what}, q", "4-bit values 0..15 are held in uint8: add 8 to the "
                                                   "levels -7..7, then .to(torch.uint8)")
        expect_shape(q, (n, k), f"{what}, q", "one value per weight, (N, K), not yet packed")
        ratio = (_grouped(w, g) / scale_ref.double().unsqueeze(-1)).reshape(n, k)
        s = scale_ref.float().unsqueeze(-1)
        expect_levels(q, q_ref, ratio, f"{what}, q", {
            "you forgot the + 8: the levels -7..7 are stored as 1..15 (a uint8 wraps -3 around to 253)":
                lambda: (torch.round(groups / s).clamp(-7, 7).to(torch.int16) % 256).to(torch.uint8).reshape(n, k),
            "you truncated toward zero instead of rounding": lambda: (
                (groups / s).clamp(-7, 7).trunc() + 8).to(torch.uint8).reshape(n, k),
            "you divided by the float32 scale; divide by the bfloat16 one you return (scale.float())":
                lambda: (torch.round(groups / torch.where(amax == 0, 1.0, amax / 7).unsqueeze(-1)).clamp(-7, 7)
                         + 8).to(torch.uint8).reshape(n, k),
        }, before="w / scale", shown=w)


@exercise("ex07.quantize_int4_zero_point", points=2,
          reference=("course_lib.quantization.quantize_int4", "course_lib.quantization.dequantize_int4"),
          hints=(
              "The 16 levels 0..15 span the group's range [lo, hi], widened to include 0: the step is that range "
              "over 15, and the zero point is the level that stands for 0.0.",
              "Per group with keepdim: `amin` clamped to at most 0 and `amax` clamped to at least 0. The zero "
              "point is -lo counted in (bfloat16-rounded) steps, rounded, kept within 0..15.",
              "q is the weight's own rounded level plus the zero point (round first, then add; not a rounded (w - "
              "lo) / scale), clamped to 0..15. Keep q and zero as floats until the end, then uint8; squeeze scale "
              "and zero to (N, G).",
          ))
def _(fn, rng):
    cases = [(torch.tensor([[-0.1, 0.9, 0.4, 0.2]]), 4)] + _group_cases(rng, True)
    w = weight(rng, 3, 16, outliers=False)
    w[1, 8:] = 0.3  # a group of equal values: the range [0, 0.3] because it includes 0
    w[2, :8] = 0.0  # an all-zero group: scale 1
    cases.append((w, 8))
    w = randn(rng, 3, 16, scale=0.2)
    w[0], w[2] = w[0].abs() + 0.3, -w[2].abs() - 0.3  # all positive, all negative: zero 0 and 15
    cases.append((w, int(rng.choice([4, 8]))))
    for w, g in cases:
        n, k = w.shape
        what = f"quantize_int4_zero_point(w {show(w)}, group_size={g})"
        q, scale, zero = tensors(call(fn, w, g, what=what), 3, what, "(q, scale, zero)")
        q_ref, scale_ref, zero_ref = Q.quantize_int4(w, g, zero_point=True)
        groups = w.reshape(n, k // g, g)
        lo, hi = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)  # (N, G), the range includes 0
        lo_only, hi_only = groups.amin(dim=-1), groups.amax(dim=-1)  # the group's own range, without 0

        expect_dtype(scale, BF16, f"{what}, scale", "scales are stored as bfloat16: .to(torch.bfloat16)")
        expect_shape(scale, (n, k // g), f"{what}, scale", "one scale per group, (N, K // group_size) (squeeze "
                                                           "the kept dimension)")
        expect_scales(scale, scale_ref, f"{what}, scale", {
            "you divided by 16; 16 levels are 15 steps, so (max - min) / 15": lambda: torch.where(
                hi == lo, 1.0, (hi - lo) / 16).to(BF16),
            "this is the symmetric scale max|w| / 7; with a zero point it is (max - min) / 15":
                lambda: torch.where(hi == lo, 1.0, groups.abs().amax(-1) / 7).to(BF16),
            "a group of equal values got scale 0; it must get 1": lambda: ((hi - lo) / 15).to(BF16),
            "the range must include 0: lo = min(amin, 0), hi = max(amax, 0)": lambda: torch.where(
                hi_only == lo_only, 1.0, (hi_only - lo_only) / 15).to(BF16),
        })

        expect_dtype(zero, torch.uint8, f"{what}, zero", "zero points are stored as uint8 (levels 0..15): round, "
                                                         "clamp, then .to(torch.uint8)")
        expect_shape(zero, (n, k // g), f"{what}, zero", "one zero point per group, (N, K // group_size)")
        s = scale_ref.float()
        zero_ratio = -lo.double() / scale_ref.double()
        expect_levels(zero, zero_ref, zero_ratio, f"{what}, zero", {
            "you did not clamp the zero point to 0..15": lambda: torch.round(-lo / s).to(torch.int16).remainder(
                256).to(torch.uint8),
            "the sign is wrong: zero = round(-min / scale), the level that stands for 0.0":
                lambda: torch.round(lo / s).clamp(0, 15).to(torch.uint8),
            "you truncated instead of rounding": lambda: (-lo / s).clamp(0, 15).to(torch.uint8),
        }, name="zero", before="-min / scale")

        expect_dtype(q, torch.uint8, f"{what}, q", "4-bit values 0..15 are held in uint8: .to(torch.uint8) after "
                                                   "the clamp")
        expect_shape(q, (n, k), f"{what}, q", "one value per weight, (N, K), not yet packed")
        sg, zg = s.unsqueeze(-1), zero_ref.float().unsqueeze(-1)
        ratio = (_grouped(w, g) / scale_ref.double().unsqueeze(-1)).reshape(n, k)
        loose = near_half(zero_ratio).unsqueeze(-1).expand(n, k // g, g).reshape(n, k)  # zero may differ by one
        expect_levels(q, q_ref, ratio, f"{what}, q", {
            "you did not clamp q to 0..15: round(w / scale) + zero can reach 16": lambda: (torch.round(groups / sg) + zg).to(torch.int16).remainder(256).to(
                torch.uint8).reshape(n, k),
            "you rounded (w - min) / scale; the spec rounds w / scale and adds the integer zero point":
                lambda: torch.round((groups - lo.unsqueeze(-1)) / sg).clamp(0, 15).to(torch.uint8).reshape(n, k),
            "you subtracted the zero point instead of adding it":
                lambda: (torch.round(groups / sg) - zg).clamp(0, 15).to(torch.uint8).reshape(n, k),
            "you truncated instead of rounding":
                lambda: ((groups / sg).trunc() + zg).clamp(0, 15).to(torch.uint8).reshape(n, k),
        }, before="w / scale", loose=loose, shown=w)


# ----------------------------------------------------------------------------- packing


def _lead(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 3))))


@exercise("ex07.pack_int4", points=1,
          reference=("course_lib.quantization.pack_int4",),
          hints=(
              "Neighbours share a byte: value 2i goes into the low 4 bits of byte i, value 2i + 1 into the high 4 "
              "bits (where each unit is worth 16).",
              "Slicing the last dim with a step of 2 picks the even and the odd positions, (..., K / 2) each; a "
              "left shift by 4 moves a value into the high bits.",
              "The two halves' bits do not overlap, so `|` (or `+`) combines them. Bit operations on uint8 stay "
              "uint8, and bits shifted past the 8th are lost: shift by 4, not 8.",
          ))
def _(fn, rng):
    cases = [torch.tensor([3, 10, 15, 0], dtype=torch.uint8)]
    for case in range(12):
        k = 2 * int(rng.integers(1, 33))
        cases.append(torch.from_numpy(rng.integers(0, 16, size=(*_lead(rng), k)).astype(np.uint8)))
    for q in cases:
        what = f"pack_int4(q {show(q)})"
        got = tensor(call(fn, q, what=what), what)
        expected = Q.pack_int4(q)
        expect_dtype(got, torch.uint8, what, "one byte per two values: keep uint8 (<< and | keep it; convert "
                                             "with .to(torch.uint8) if you went through int64)")
        expect_shape(got, tuple(expected.shape), what, "two values per byte: the last dimension halves, the "
                                                       "others stay")
        if torch.equal(got, expected):
            continue
        bad = (got != expected).reshape(-1)
        i = int(bad.nonzero()[0])
        where = _index(expected, i)
        pair = q.reshape(-1, q.shape[-1])[i // expected.shape[-1]][2 * (i % expected.shape[-1]):][:2].tolist()
        raise GradeError(f"{what}: {int(bad.sum())} of {bad.numel()} bytes differ; e.g. byte {where}, from the "
                         f"values {pair}: expected {int(expected.reshape(-1)[i])}, got {int(got.reshape(-1)[i])}."
                         + likely(got, {
                             "the nibbles are swapped: value 2i goes in the LOW 4 bits, 2i + 1 in the high ones":
                                 lambda: q[..., 1::2] | (q[..., 0::2] << 4),
                             "you paired the first half of the row with the second half; pair neighbours 2i, "
                             "2i + 1 (q[..., 0::2], q[..., 1::2])":
                                 lambda: q[..., :q.shape[-1] // 2] | (q[..., q.shape[-1] // 2:] << 4),
                             "the high value was not shifted (<< 4)": lambda: q[..., 0::2] | q[..., 1::2],
                             "you shifted by 8: a 4-bit value moves up by 4 bits (<< 4), and a uint8 drops "
                             "whatever is shifted past its 8 bits": lambda: q[..., 0::2] | (q[..., 1::2] << 8),
                         }))


@exercise("ex07.unpack_int4", points=1,
          reference=("course_lib.quantization.unpack_int4",),
          hints=(
              "Each byte holds two values: its low 4 bits (value 2i) and its high 4 bits (value 2i + 1). They "
              "come back interleaved: low, high, low, high ...",
              "`& 0x0F` (or `% 16`) keeps the low 4 bits; `>> 4` (or `// 16`) brings the high 4 down. Each is "
              "(..., K / 2).",
              "Interleave by stacking the two on a new last dim, (..., K / 2, 2), then flattening the last two "
              "dims; `torch.cat` would put all the low values first.",
          ))
def _(fn, rng):
    cases = [torch.tensor([163, 15], dtype=torch.uint8),
             torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(2, 128)]  # every byte
    for case in range(10):
        k = int(rng.integers(1, 33))
        if case % 3 == 2:  # what pack_int4 makes
            cases.append(Q.pack_int4(torch.from_numpy(rng.integers(0, 16, size=(*_lead(rng), 2 * k)).astype(np.uint8))))
        else:
            cases.append(torch.from_numpy(rng.integers(0, 256, size=(*_lead(rng), k)).astype(np.uint8)))
    for packed in cases:
        what = f"unpack_int4(packed {show(packed)})"
        got = tensor(call(fn, packed, what=what), what)
        expected = Q.unpack_int4(packed)
        expect_dtype(got, torch.uint8, what, "the 4-bit values come back as uint8 (& and >> keep it)")
        expect_shape(got, tuple(expected.shape), what, "two values per byte: the last dimension doubles, the "
                                                       "others stay")
        if torch.equal(got, expected):
            continue
        bad = (got != expected).reshape(-1)
        i = int(bad.nonzero()[0])
        byte = int(packed.reshape(-1)[i // 2])
        raise GradeError(f"{what}: {int(bad.sum())} of {bad.numel()} values differ; e.g. value {_index(expected, i)}, "
                         f"the {'low' if i % 2 == 0 else 'high'} 4 bits of byte {byte} (0x{byte:02X}): expected "
                         f"{int(expected.reshape(-1)[i])}, got {int(got.reshape(-1)[i])}." + likely(got, {
                             "the nibbles are swapped: the LOW 4 bits come first (value 2i), the high ones second":
                                 lambda: torch.stack((packed >> 4, packed & 15), dim=-1).flatten(-2),
                             "all the low values came first, then all the high ones (torch.cat); interleave them "
                             "with torch.stack(..., dim=-1).flatten(-2)":
                                 lambda: torch.cat((packed & 15, packed >> 4), dim=-1),
                             "the high value was not shifted down: packed & 0xF0 is 16 times too large; use "
                             "packed >> 4": lambda: torch.stack((packed & 15, packed & 0xF0), dim=-1).flatten(-2),
                         }))


# ----------------------------------------------------------------------------- measuring the error


def _error_cases(rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cases = [(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0]))]
    schemes = ["int8", "int8-tensor", "int4", "int4-g64", "int4-zp"]
    for case in range(10):
        n, k = odd_rows(rng) + 2, 64 * int(rng.integers(1, 3))
        w = weight(rng, n, k)
        kind = case % 4
        if kind == 0:
            w_hat = Q.fake_quantize(w, schemes[case // 4 % len(schemes)])
        elif kind == 1:
            w_hat = Q.fake_quantize(w, schemes[(case // 4 + 2) % len(schemes)])
        elif kind == 2:
            w_hat = w.to(BF16)  # another dtype: a bfloat16 copy
        else:
            w_hat = w + randn(rng, n, k, scale=float(w.abs().mean()) * float(rng.uniform(0.01, 0.5)))
        cases.append((w, w_hat))
    w = randn(rng, 2, 3, 8, scale=0.1)
    cases.append((w, w + randn(rng, 2, 3, 8, scale=0.01)))  # 3-D
    w = randn(rng, 5, 7)
    cases.append((w, w.clone()))  # no error at all
    return cases


@exercise("ex07.quantization_error", points=1,
          reference=("course_lib.quantization.relative_error",),
          hints=(
              "The size of the error relative to the size of the weights: the norm of w - w_hat divided by the "
              "norm of w, each over all the elements.",
              "`torch.linalg.vector_norm` without a dim is the square root of the sum of squares over every "
              "element. Convert both tensors to float32 or float64 first (w_hat may be bfloat16).",
              "Return a Python float (`.item()` or `float(...)`), not a 0-d tensor.",
          ))
def _(fn, rng):
    for w, w_hat in _error_cases(rng):
        what = f"quantization_error(w {show(w)}, w_hat {show(w_hat)}{', bfloat16' if w_hat.dtype == BF16 else ''})"
        got = call(fn, w, w_hat, what=what)
        if isinstance(got, torch.Tensor) or not isinstance(got, numbers.Real) or isinstance(got, bool):
            raise GradeError(f"{what}: expected a Python float, got {type(got).__name__}: return float(...) or "
                             f"tensor.item()")
        got = float(got)
        expected = Q.relative_error(w, w_hat)
        if abs(got - expected) <= 1e-5 * expected + 1e-9:
            continue
        a, b = w.double(), w_hat.double()
        diff = a - b
        mistakes = {
            "the mean squared error; divide the norm of the difference by the norm of w":
                (diff ** 2).mean(),
            "the root mean squared error, not divided by ||w||": (diff ** 2).mean().sqrt(),
            "||w - w_hat||² / ||w||²: both norms need their square roots":
                (diff ** 2).sum() / (a ** 2).sum(),
            "||w - w_hat|| / ||w_hat||: divide by the norm of the original weights, w":
                diff.norm() / b.norm(),
            "sum|w - w_hat| / sum|w|: the norms are square roots of sums of squares":
                diff.abs().sum() / a.abs().sum(),
            "max|w - w_hat| / max|w|: the norms are over all elements": diff.abs().max() / a.abs().max(),
            "||w|| - ||w_hat|| divided by ||w||: the norm of the difference, not the difference of the norms":
                (a.norm() - b.norm()).abs() / a.norm(),
            "||w - w_hat|| alone; divide it by ||w||": diff.norm(),
        }
        if a.dim() == 2:
            mistakes["the mean of the rows' relative errors: one norm over all elements"] = \
                (diff.norm(dim=1) / a.norm(dim=1)).mean()
        text = ""
        for label, value in mistakes.items():
            if abs(float(value) - got) <= 1e-5 * abs(float(value)) + 1e-12:
                text = f" It looks like {label}."
                break
        raise GradeError(f"{what}: expected {expected:.6g}, got {got:.6g}.{text}")




# ----------------------------------------------------------------------------- stretch: int4 with a learned clip


def _clip_cases(rng: np.random.Generator) -> list[tuple[torch.Tensor, int, list[float]]]:
    cases = [(torch.tensor([[1.4, 0.1, 0.3, 0.5, -0.5, 0.7, -0.1, 0.9]]), 8, [1.0, 0.9, 0.8])]
    for case in range(10):
        g = int(rng.choice([8, 16, 32, 64] if case % 2 else [4, 8, 16, 32]))
        n, groups = odd_rows(rng) + 2, int(rng.integers(1, 5))
        w = weight(rng, n, g * groups, zero_rows=case % 4 == 1, group_size=g, zero_groups=case % 3 == 0,
                   outliers=case % 5 != 4)
        if case % 3 == 2:
            ratios = list(Q.CLIP_RATIOS)
        else:  # a random grid, always with 1.0 (plain absmax), in random order
            ratios = sorted({round(float(r), 3) for r in rng.uniform(0.4, 0.99, size=int(rng.integers(2, 9)))})
            ratios = [1.0] + ratios
            if case % 2:
                ratios = [float(r) for r in rng.permutation(ratios)]
        cases.append((w, g, ratios))
    return cases


def _group_errors(groups: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Squared error per group (N, G), float64, of symmetric int4 (clamped to ±7) with ``scale`` (N, G)."""
    s = scale.double().unsqueeze(-1)
    x = groups.double()
    return (x - torch.round(x / s).clamp(-7, 7) * s).square().sum(-1)


def _clip_mistake(w: torch.Tensor, g: int, ratios: list[float], *, clamp: bool = True, measure: str = "squared",
                  scope: str = "group", pick: str = "min") -> torch.Tensor:
    """The scales (N, G) a usual mistake in the search picks."""
    n, k = w.shape
    groups = w.reshape(n, k // g, g)
    peak = groups.abs().amax(-1)  # (N, G)
    scales, errors = [], []
    for r in ratios:
        s = (peak * r / 7).to(BF16)
        s = torch.where(s == 0, torch.ones_like(s), s)
        x, sd = groups.double(), s.double().unsqueeze(-1)
        levels = torch.round(x / sd)
        if clamp:
            levels = levels.clamp(-7, 7)
        diff = {"squared": (x - levels * sd).square(), "levels": (x / sd - levels).square(),
                "absolute": (x - levels * sd).abs()}[measure].sum(-1)  # (N, G)
        if scope == "row":
            diff = diff.sum(-1, keepdim=True).expand_as(diff)
        elif scope == "tensor":
            diff = diff.sum().expand_as(diff)
        scales.append(s)
        errors.append(diff)
    e = torch.stack(errors)
    best = e.argmin(0, keepdim=True) if pick == "min" else e.argmax(0, keepdim=True)
    return torch.stack(scales).gather(0, best)[0]


@exercise("ex07.quantize_int4_clipped", points=3, stretch=True,
          reference=("course_lib.quantization.clip_search_errors", "course_lib.quantization.quantize_int4_clipped"),
          hints=(
              "Per group, try every ratio: a scale of ratio × max|group| / 7 (bfloat16, 1 for an all-zero group), "
              "the levels it gives, and the squared error of the weights they give back. Keep the scale with the "
              "smallest error.",
              "The error must include the clamp to ±7 (that is what clipping costs) and be measured in weights, w "
              "minus level × scale, not in levels. Keep a best-so-far scale and error per group (`torch.where` on "
              "error < best), or stack every ratio on a new dim 0 and use `argmin` then `gather`.",
              "Return q for the chosen scales, stored + 8 as in exercise 4, and the chosen scales as (N, G). A "
              "strict < keeps the first ratio on a tie; an all-zero group has error 0 whatever the ratio.",
          ))
def _(fn, rng):
    for w, g, ratios in _clip_cases(rng):
        n, k = w.shape
        what = f"quantize_int4_clipped(w {show(w)}, group_size={g}, ratios={ratios})"
        q, scale = tensors(call(fn, w, g, list(ratios), what=what), 2, what, "(q, scale)")
        candidates, errors = Q.clip_search_errors(w, g, tuple(ratios))  # (R, N, G) each
        groups = w.reshape(n, k // g, g)
        peak = groups.abs().amax(-1)  # (N, G)

        expect_dtype(scale, BF16, f"{what}, scale", "scales are stored (and read by the int4 kernel) as bfloat16: "
                                                   "round each candidate with .to(torch.bfloat16)")
        if tuple(scale.shape) != (n, k // g):
            why = {(n, k // g, 1): "squeeze the kept dimension", (n, 1): "one scale per group, not one per row",
                   (n,): "one scale per group, not one per row",
                   (len(ratios), n, k // g): "return only the chosen scale of each group, not every candidate"}
            expect_shape(scale, (n, k // g), f"{what}, scale", why.get(tuple(scale.shape), "one scale per group: "
                                                                         "(N, K // group_size)"))
        # a scale is fine when it is a candidate (computed in some float32 order) with the smallest error, or
        # within 1e-4 of it (float32 sums can order near-ties differently)
        variants = [candidates]
        for make in (lambda r: peak / 7 * r, lambda r: peak * (r / 7), lambda r: (peak.double() * r / 7)):
            variants.append(torch.stack([torch.where(peak == 0, 1.0, make(r)).to(BF16) for r in ratios]))
        is_candidate = torch.stack([(v == scale.unsqueeze(0)).any(0) for v in variants]).any(0)  # (N, G)
        mistakes = {
            "you divided by 8; the symmetric int4 scale is ratio × max|group| / 7": lambda: torch.where(
                peak == 0, 1.0, peak / 8).to(BF16),
            "you did not search: every scale is plain max|group| / 7 (ratio 1)": lambda: _clip_mistake(w, g, [1.0]),
            "you measured the error before clamping to ±7: clipping then costs nothing, so the smallest ratio "
            "always wins": lambda: _clip_mistake(w, g, ratios, clamp=False),
            "you measured the error in levels (w / scale − level), not in weights (w − level × scale): a smaller "
            "scale makes each level worth less": lambda: _clip_mistake(w, g, ratios, measure="levels"),
            "you kept the ratio with the LARGEST error (argmax)": lambda: _clip_mistake(w, g, ratios, pick="max"),
            "you chose one ratio per row (summing its groups' errors); each group chooses its own":
                lambda: _clip_mistake(w, g, ratios, scope="row"),
            "you chose one ratio for the whole tensor; each group chooses its own":
                lambda: _clip_mistake(w, g, ratios, scope="tensor"),
            "you summed absolute errors; the spec minimises the squared error":
                lambda: _clip_mistake(w, g, ratios, measure="absolute"),
        }
        if not bool(is_candidate.all()):
            i = int((~is_candidate).reshape(-1).nonzero()[0])
            where = _index(peak, i)
            options = sorted({round(float(c), 8) for c in candidates[(slice(None), *where)].float()}, reverse=True)
            raise GradeError(
                f"{what}, scale: {int((~is_candidate).sum())} of {is_candidate.numel()} scales are none of the "
                f"candidates ratio × max|group| / 7 (bfloat16) for your ratios; e.g. group {where}: max|group| = "
                f"{float(peak[where]):.6g}, candidates {options[:6]}{' ...' if len(options) > 6 else ''}, got "
                f"{float(scale[where].float()):.8g}." + likely(scale, mistakes))
        best = errors.min(0).values  # (N, G)
        mine = _group_errors(groups, scale)
        ok = mine <= best * (1 + 1e-4) + 1e-12
        if not bool(ok.all()):
            i = int((~ok).reshape(-1).nonzero()[0])
            where = _index(best, i)
            r_best = ratios[int(errors[(slice(None), *where)].argmin())]
            chosen = Q.quantize_int4_clipped(w, g, tuple(ratios))[1]  # (N, G)
            r_mine = [r for r, c in zip(ratios, candidates[(slice(None), *where)]) if c == scale[where]]
            mine_text = f"ratio {r_mine[0]}" if r_mine else "your scale"
            raise GradeError(
                f"{what}, scale: {int((~ok).sum())} of {ok.numel()} groups did not get the ratio with the smallest "
                f"squared error; e.g. group {where}: {mine_text} (scale {float(scale[where].float()):.6g}) gives "
                f"{float(mine[where]):.6g}, ratio {r_best} (scale {float(chosen[where].float()):.6g}) gives "
                f"{float(best[where]):.6g}." + likely(scale, mistakes))

        expect_dtype(q, torch.uint8, f"{what}, q", "4-bit values 1..15 are held in uint8: add 8 to the levels -7..7, "
                                                   "then .to(torch.uint8)")
        expect_shape(q, (n, k), f"{what}, q", "one value per weight, (N, K), not yet packed")
        s = scale.float().unsqueeze(-1)  # yours, which was right
        ratio = (groups.double() / scale.double().unsqueeze(-1)).reshape(n, k)
        expected = (torch.round(groups / s).clamp(-7, 7) + 8).to(torch.uint8).reshape(n, k)
        plain = Q.absmax_scale(groups, 7, dim=-1).float()
        expect_levels(q, expected, ratio, f"{what}, q (with your scales)", {
            "you forgot the + 8: the levels -7..7 are stored as 1..15":
                lambda: (torch.round(groups / s).clamp(-7, 7).to(torch.int16) % 256).to(torch.uint8).reshape(n, k),
            "you did not clamp to ±7: with a clipped scale the largest weights go past 7 levels":
                lambda: ((torch.round(groups / s) + 8).to(torch.int16) % 256).to(torch.uint8).reshape(n, k),
            "q was computed with the plain max|group| / 7 scale, not the chosen one": lambda: (
                torch.round(groups / plain).clamp(-7, 7) + 8).to(torch.uint8).reshape(n, k),
            "you truncated toward zero instead of rounding": lambda: (
                (groups / s).trunc().clamp(-7, 7) + 8).to(torch.uint8).reshape(n, k),
        }, before="w / scale", shown=w)


# ----------------------------------------------------------------------------- stretch: int8 activations (W8A8)


def _w8a8_cases(rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    cases = [(torch.tensor([[0.5, -1.0]]), torch.tensor([[127, 0], [64, -127]], dtype=torch.int8),
              torch.tensor([0.01, 0.02]).to(BF16))]
    for case in range(10):
        m, k, n = int(rng.integers(2, 9)), int(rng.integers(4, 97)), int(rng.integers(1, 13))
        if n == m:
            n += 1
        x = randn(rng, m, k, scale=float(rng.choice([0.1, 1.0, 5.0])))
        x *= torch.from_numpy(rng.uniform(0.05, 20.0, size=(m, 1)).astype(np.float32))  # tokens of unlike sizes
        if case % 3 == 0:  # a few outlier features, 20x the rest (LLM.int8's observation)
            x[:, torch.from_numpy(rng.choice(k, size=max(1, k // 16), replace=False))] *= 20
        if case % 4 == 1:
            x[int(rng.integers(m))] = 0.0  # a padding token: all zeros
        q_w, w_scale = Q.quantize_int8(weight(rng, n, k))
        cases.append((x, q_w, w_scale))
    return cases


@exercise("ex07.w8a8_matmul", points=3, stretch=True,
          reference=("course_lib.quantization.quantize_per_token", "course_lib.quantization.int8_matmul",
                     "course_lib.quantization.w8a8_linear"),
          hints=(
              "Quantize x on the fly with one float32 scale per token (row), max|x_row| / 127; multiply the "
              "integers with exact integer sums; then rescale each sum once, by its row's x scale and its "
              "column's w scale.",
              "int8 × int8 summed over K does not fit in an int8: convert both to int32 before the product (`@` "
              "works on int32 tensors). x_scale is (M,) and w_scale (N,): on the (M, N) sums one goes along the "
              "rows, the other along the columns.",
              "A token of zeros gets scale 1. Keep x_scale float32 (no bfloat16 rounding: it is never stored), "
              "compute y from acc in float32, and return (q_x, x_scale, acc, y) in that order.",
          ))
def _(fn, rng):
    for x, q_w, w_scale in _w8a8_cases(rng):
        m, k = x.shape
        n = q_w.shape[0]
        what = f"w8a8_matmul(x {show(x)}, q_w {show(q_w)}, w_scale {show(w_scale)})"
        q_x, x_scale, acc, y = tensors(call(fn, x, q_w, w_scale, what=what), 4, what, "(q_x, x_scale, acc, y)")
        q_ref, scale_ref = Q.quantize_per_token(x)  # (M, K), (M, 1)
        scale_ref = scale_ref.squeeze(-1)
        amax = x.abs().amax(dim=1)

        if x_scale.dtype != torch.float32:
            text = " (bfloat16 is for the weights' scales, which are stored)" if x_scale.dtype == BF16 else ""
            raise GradeError(f"{what}, x_scale: expected dtype torch.float32, got {x_scale.dtype}: activation "
                             f"scales are computed for each call and never stored, so they stay float32{text}")
        if tuple(x_scale.shape) != (m,):
            why = {(m, 1): "(M,), not (M, 1): squeeze it, or amax without keepdim",
                   (): "one scale per token (row of x), not one for the whole x",
                   (k,): "one scale per token (amax over dim=1, the K features of a row), not one per feature"}
            expect_shape(x_scale, (m,), f"{what}, x_scale", why.get(tuple(x_scale.shape), "one scale per token"))
        if not torch.allclose(x_scale.double(), scale_ref.double(), rtol=1e-6, atol=0, equal_nan=False):
            bad = ~torch.isclose(x_scale.double(), scale_ref.double(), rtol=1e-6, atol=0)
            i = int(bad.nonzero()[0])
            found = ""
            for text, value in {
                "one scale for the whole x (per-tensor); each token gets its own":
                    torch.full((m,), float(amax.max()) / 127),
                "a token of zeros got scale 0 (or nan); it must get 1": amax / 127,
                "you divided the largest x, not the largest |x|": torch.where(
                    x.amax(1) == 0, 1.0, x.amax(1) / 127),
                "you divided by 128; the largest level is 127": torch.where(amax == 0, 1.0, amax / 128),
                "you rounded the scale to bfloat16; activation scales stay float32": torch.where(
                    amax == 0, 1.0, amax / 127).to(BF16).float(),
            }.items():
                if torch.allclose(x_scale.double(), value.double(), rtol=1e-6, atol=0, equal_nan=True):
                    found = f" It looks like {text}."
                    break
            raise GradeError(f"{what}, x_scale: {int(bad.sum())} of {m} scales differ; e.g. token {i}: max|x| = "
                             f"{float(amax[i]):.6g}, expected {float(scale_ref[i]):.8g}, got "
                             f"{float(x_scale[i]):.8g}.{found}")

        expect_dtype(q_x, torch.int8, f"{what}, q_x", "the activations' integers are int8 (round and clamp, then "
                                                     ".to(torch.int8))")
        expect_shape(q_x, (m, k), f"{what}, q_x", "one integer per activation")
        ratio = x.double() / scale_ref.double().unsqueeze(-1)
        s = scale_ref.unsqueeze(-1)
        expect_levels(q_x, q_ref, ratio, f"{what}, q_x", {
            "you truncated toward zero (.to(torch.int8) without torch.round)":
                lambda: (x / s).clamp(-127, 127).to(torch.int8),
            "you rounded down (floor) instead of to the nearest level":
                lambda: torch.floor(x / s).clamp(-127, 127).to(torch.int8),
            "the scale was applied along the wrong axis (one per feature, not per token)": lambda: torch.round(
                x / torch.where(x.abs().amax(0) == 0, 1.0, x.abs().amax(0) / 127)).clamp(-127, 127).to(torch.int8),
        }, name="q_x", before="x / x_scale", shown=x)

        exact = q_x.long() @ q_w.long().T  # from your q_x, which was right (or right within a tie)
        if acc.dtype != torch.int32:
            hint = " (the sums are right: accumulate in int32, as int8 hardware does)" if \
                acc.shape == exact.shape and torch.equal(acc.double(), exact.double()) else ""
            raise GradeError(f"{what}, acc: expected dtype torch.int32, got {acc.dtype}{hint}: convert q_x and q_w "
                             f"with .to(torch.int32) before the product")
        expect_shape(acc, (m, n), f"{what}, acc", "one sum per token and output: q_x (M, K) times q_w transposed "
                                                  "(K, N)")
        if not torch.equal(acc.long(), exact):
            bad = acc.long() != exact
            i = _index(exact, int(bad.reshape(-1).nonzero()[0]))
            text = ""
            if torch.equal(acc.long(), (q_x @ q_w.T).long()):
                text = (" It looks like the product was computed in int8, which wraps around past 127: convert both "
                        "to int32 first.")
            raise GradeError(f"{what}, acc: {int(bad.sum())} of {bad.numel()} sums differ; e.g. acc{list(i)} = "
                             f"sum_k q_x[{i[0]}, k] * q_w[{i[1]}, k]: expected {int(exact[i])}, got {int(acc[i])}."
                             + text)

        expect_dtype(y, torch.float32, f"{what}, y", "y is float32: acc.float() times the two scales as float32 "
                                                     "(a bfloat16 factor would make the product bfloat16)")
        expect_shape(y, (m, n), f"{what}, y")
        expected_y = exact.double() * x_scale.double().unsqueeze(-1) * w_scale.double()  # from your acc and x_scale
        if not torch.allclose(y.double(), expected_y, rtol=1e-5, atol=0):
            bad = ~torch.isclose(y.double(), expected_y, rtol=1e-5, atol=0)
            i = _index(expected_y, int(bad.reshape(-1).nonzero()[0]))
            found = ""
            W = Q.dequantize_int8(q_w, w_scale)
            for text, value in {
                "you left out x_scale: each row of sums is rescaled by its token's scale":
                    exact.double() * w_scale.double(),
                "you left out w_scale: each column of sums is rescaled by its output row's weight scale":
                    exact.double() * x_scale.double().unsqueeze(-1),
                "this is x @ W.T with x in float (weight-only int8); y must come from the int32 sums":
                    x.double() @ W.double().T,
                "you divided by the scales instead of multiplying":
                    exact.double() / x_scale.double().unsqueeze(-1) / w_scale.double(),
            }.items():
                if torch.allclose(y.double(), value, rtol=1e-5, atol=0):
                    found = f" It looks like {text}."
                    break
            raise GradeError(f"{what}, y: {int(bad.sum())} of {bad.numel()} values differ; e.g. y{list(i)} = "
                             f"acc * x_scale[{i[0]}] * w_scale[{i[1]}]: expected {float(expected_y[i]):.8g}, got "
                             f"{float(y[i]):.8g}.{found}")
