"""Checks for chapter 07's exercises (``exercises/ex07_quantization.py``).

Inputs are random: weights of a few scales with a few large outliers of either sign (so
that per-tensor and per-row scales differ), odd numbers of rows, all-zero rows and groups,
rows whose groups all have the same sign, group sizes 4 to 128, clipped scales, 4-bit
values and bytes of every value. Expected answers come from ``course_lib.quantization``
(``quantize_int8``, ``absmax_scale``, ``quantize_absmax``, ``quantize_int4``, ``pack_int4``,
``unpack_int4``, ``relative_error``), itself tested against PyTorch's int8 and int4
kernels in ``tests/test_quantization.py``; it is switched off while the learner's code runs.

Integers are compared exactly, except that a level may differ by one where the value
before rounding lies within 1e-4 of a half (``w * (1 / scale)`` or float64 arithmetic can
round those either way). Scales are compared exactly, as bfloat16. When a result is wrong,
the check tries the usual mistakes on the same input and names the one that matches.
"""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np
import torch

from course_lib import quantization as Q
from course_lib.grading.registry import (GradeError, call_learner, exercise, expect_close,
                                         expect_tensor, expect_tensors)

ANSWER_KEY = tuple(f"course_lib.quantization.{name}" for name in (
    "absmax_scale", "quantize_absmax", "quantize_int8", "dequantize_int8", "group_rows", "quantize_int4",
    "dequantize_int4", "pack_int4", "unpack_int4", "relative_error", "sqnr_db", "fake_quantize", "quantize_model",
    "QuantLinear", "QuantEmbedding"))

BF16 = torch.bfloat16
HALF_TOLERANCE = 1e-4  # a value this close to k + 0.5 may round either way


# ----------------------------------------------------------------------------- inputs


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


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


def likely(got: torch.Tensor, mistakes: dict[str, Callable[[], torch.Tensor]]) -> str:
    """A sentence naming the usual mistakes that reproduce ``got`` exactly (on a small input several can),
    or "" when none does."""
    found = []
    for text, make in mistakes.items():
        try:
            candidate = make()
        except Exception:  # the mistake cannot even happen on this input
            continue
        if isinstance(candidate, torch.Tensor) and candidate.shape == got.shape and \
                torch.equal(candidate.double(), got.double()):
            found.append(text)
    if not found:
        return ""
    return f" It looks like {found[0]}" + (f" (or: {'; or: '.join(found[1:])})" if found[1:] else "") + "."


def expect_dtype(t: torch.Tensor, dtype: torch.dtype, what: str, why: str) -> None:
    if t.dtype != dtype:
        raise GradeError(f"{what}: expected dtype {dtype}, got {t.dtype}; {why}")


def expect_shape(t: torch.Tensor, shape: tuple[int, ...], what: str, why: str = "") -> None:
    if tuple(t.shape) != tuple(shape):
        because = f"; {why}" if why else ""
        raise GradeError(f"{what}: expected shape {tuple(shape)}, got shape {tuple(t.shape)}{because}")


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
          hint="scale = (w.abs().amax() / 127).to(torch.bfloat16), then 1 where it is 0; q = torch.round(w / "
               "scale.float()).clamp(-127, 127).to(torch.int8) (round first: the int conversion truncates); "
               "w_hat = q.float() * scale.float(), float32.")
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


@exercise("ex07.per_channel_scales", points=1,
          hint="w.abs().amax(dim=1) is (N,): one max|w| per output row; divide by 127, .to(torch.bfloat16), then "
               "torch.where(scale == 0, torch.ones_like(scale), scale) for the all-zero rows.")
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
          hint="torch.round(w / scale.float()).clamp(-qmax, qmax).to(torch.int8): round to the nearest level, "
               "clamp to ±qmax (the scale clips the outliers), and only then convert (int8 wraps 200 to -56).")
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
          hint="torch.linalg.vector_norm(w - w_hat) / torch.linalg.vector_norm(w) over all elements (convert both to "
               "float32 or float64 first), then .item() or float(...): a Python float.")
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


# ----------------------------------------------------------------------------- packing


def _lead(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 3))))


@exercise("ex07.pack_int4", points=1,
          hint="q[..., 0::2] | (q[..., 1::2] << 4): the even positions in the low 4 bits, the odd ones in the high "
               "4 bits, K / 2 bytes, still uint8.")
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
          hint="low = packed & 0x0F, high = packed >> 4; torch.stack((low, high), dim=-1).flatten(-2) interleaves "
               "them (low, high, low, high ...); uint8.")
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
          hint="groups = w.reshape(N, K // g, g); scale = (groups.abs().amax(-1, keepdim=True) / 7)"
               ".to(torch.bfloat16), 1 where 0; q = torch.round(groups / scale.float()).clamp(-7, 7) + 8, then "
               ".to(torch.uint8).reshape(N, K); return q and scale.squeeze(-1), (N, K // g).")
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
          hint="Per group: lo = amin(keepdim).clamp(max=0), hi = amax(keepdim).clamp(min=0) (the range includes 0); "
               "scale = ((hi - lo) / 15).to(torch.bfloat16), 1 where 0; "
               "zero = torch.round(-lo / scale.float()).clamp(0, 15); q = (torch.round(groups / scale.float()) + "
               "zero).clamp(0, 15); q, zero as uint8, scale and zero squeezed to (N, K // g).")
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
