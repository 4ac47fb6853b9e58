"""The ex07 checks have teeth: the solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, or a call of the answer key
(``course_lib.quantization``) that the checks switch off. Every one must be caught for
several seeds: with a GradeError, or, for the few marked "(raises)", by an exception from
the wrong answer itself (the grader reports those as "raised an error", 0 points). Some
right answers written differently from the solution must pass, among them ones that
compute in float64 or multiply by ``1 / scale`` (a level may then round the other way
where the value is within float rounding of a half, which the checks accept).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.grading.registry import GradeError
from helpers import assert_wrong_answer_fails, chapter_checks, have_solutions, load_exercise_module

SEEDS = range(3)
FILE = "ex07_quantization.py"
HAS_SOLUTIONS = have_solutions(FILE)
BF16 = torch.bfloat16

checks = chapter_checks


def answer_key():
    return __import__("course_lib.quantization", fromlist=["x"])


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(checks("ex07")))
def test_solution_passes(name, seed):
    checks("ex07")[name].grade(getattr(load_exercise_module("solutions", FILE), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- int8

def _guard(scale):
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _round_trip(amax="abs", qmax_div=127, scale_dtype="bf16", guard=True, rounding="round", clamp=True,
                quantize_with="bf16", hat="float32", per_row=False, q_dtype=torch.int8):
    def int8_absmax_round_trip(w):
        if per_row:
            m = w.abs().amax(dim=-1)
        else:
            m = {"abs": w.abs().amax(), "max": w.amax()}[amax]
        exact = m / qmax_div
        scale = {"bf16": exact.to(BF16), "f32": exact, "bf16-first": m.to(BF16) / qmax_div}[scale_dtype]
        if guard:
            scale = _guard(scale)
        divisor = scale.float() if quantize_with == "bf16" else _guard(exact)
        if per_row:
            divisor = divisor[..., None]
        x = w / divisor
        x = {"round": torch.round(x), "trunc": x, "floor": torch.floor(x)}[rounding]
        if clamp:
            x = x.clamp(-127, 127)
        q = x.to(q_dtype)
        s = scale[..., None] if per_row else scale
        w_hat = {"float32": q.float() * s.float(), "bf16": q * s, "bf16->f32": (q.to(BF16) * s).float(),
                 "w": w.clone(), "f32-scale": q.float() * (exact[..., None] if per_row else exact)}[hat]
        return q, scale, w_hat
    return int8_absmax_round_trip


def _per_channel(reduce="abs", dim=1, qmax_div=127, dtype="bf16", guard=True, keepdim=False):
    def per_channel_scales(w):
        m = (w.abs() if reduce == "abs" else w).amax(dim=dim, keepdim=keepdim)
        if reduce == "tensor":
            m = w.abs().amax().expand(w.shape[0])
        scale = m / qmax_div
        scale = scale.to(BF16) if dtype == "bf16" else scale
        return _guard(scale) if guard else scale
    return per_channel_scales


def _with_scale(clamp="qmax", rounding="round", op="divide", dtype=torch.int8):
    def quantize_with_scale(w, scale, qmax):
        x = w / scale.float() if op == "divide" else w * scale.float()
        x = torch.round(x) if rounding == "round" else x
        if clamp == "qmax":
            return x.clamp(-qmax, qmax).to(dtype)
        if clamp == "int8":
            return x.clamp(-128, 127).to(dtype)
        if clamp == "after":
            return x.to(dtype).clamp(-qmax, qmax)
        if clamp == "positive":
            return x.clamp(0, qmax).to(dtype)
        return x.to(dtype)
    return quantize_with_scale


EX07_WRONG_INT8 = {
    "int8_absmax_round_trip": {
        "truncates instead of rounding": _round_trip(rounding="trunc"),
        "floor instead of round": _round_trip(rounding="floor"),
        "max instead of max-abs": _round_trip(amax="max"),
        "float32 scale, not rounded to bfloat16": _round_trip(scale_dtype="f32"),
        "quantized with the float32 scale, the bfloat16 one returned": _round_trip(quantize_with="f32"),
        "max|w| rounded to bfloat16 before dividing": _round_trip(scale_dtype="bf16-first"),
        "divides by 128": _round_trip(qmax_div=128),
        "no zero guard (an all-zero w gets scale 0)": _round_trip(guard=False),
        "per-row scales": _round_trip(per_row=True),
        "w_hat in bfloat16": _round_trip(hat="bf16"),
        "w_hat computed in bfloat16, then float32": _round_trip(hat="bf16->f32"),
        "w_hat with the float32 scale": _round_trip(hat="f32-scale"),
        "w_hat = w": _round_trip(hat="w"),
        "q as int16": _round_trip(q_dtype=torch.int16),
        "q as a float (not converted)": _round_trip(q_dtype=torch.float32),
        "answer key": lambda w: (*answer_key().quantize_int8(w, per_channel=False),
                                 answer_key().dequantize_int8(*answer_key().quantize_int8(w, False))),
    },
    "per_channel_scales": {
        "one scale for the whole tensor, repeated": _per_channel(reduce="tensor"),
        "max instead of max-abs": _per_channel(reduce="max"),
        "over the columns (dim=0)": _per_channel(dim=0),
        "divides by 128": _per_channel(qmax_div=128),
        "float32, not rounded": _per_channel(dtype="f32"),
        "no zero guard": _per_channel(guard=False),
        "kept dimension (N, 1)": _per_channel(keepdim=True),
        "float16 instead of bfloat16": lambda w: _guard((w.abs().amax(dim=1) / 127).half()),
        "answer key": lambda w: answer_key().absmax_scale(w, 127, dim=-1).squeeze(-1),
    },
    "quantize_with_scale": {
        "not clamped": _with_scale(clamp="none"),
        "clamped to int8's -128..127": _with_scale(clamp="int8"),
        "converted to int8 before clamping": _with_scale(clamp="after"),
        "clamped to 0..qmax": _with_scale(clamp="positive"),
        "truncates instead of rounding": _with_scale(rounding="trunc"),
        "multiplies by the scale": _with_scale(op="multiply"),
        "returns a float tensor": _with_scale(dtype=torch.float32),
        "answer key": lambda w, s, qmax: answer_key().quantize_absmax(w, s, qmax),
    },
}


# ----------------------------------------------------------------------------- the error

def _norm(t):
    return t.double().pow(2).sum().sqrt()


EX07_WRONG_ERROR = {
    "quantization_error": {
        "mean squared error": lambda w, h: float((w.double() - h.double()).pow(2).mean()),
        "root mean squared error": lambda w, h: float((w.double() - h.double()).pow(2).mean().sqrt()),
        "squared ratio (no square roots)": lambda w, h: float((w.double() - h.double()).pow(2).sum()
                                                              / w.double().pow(2).sum()),
        "divided by ||w_hat||": lambda w, h: float(_norm(w.double() - h.double()) / _norm(h)),
        "L1: sum|w - w_hat| / sum|w|": lambda w, h: float((w.double() - h.double()).abs().sum() / w.abs().sum()),
        "max error / max|w|": lambda w, h: float((w.double() - h.double()).abs().max() / w.abs().max()),
        "difference of the norms": lambda w, h: float((_norm(w) - _norm(h)).abs() / _norm(w)),
        "not divided by ||w||": lambda w, h: float(_norm(w.double() - h.double())),
        "mean of the rows' relative errors": lambda w, h: float(
            ((w.double() - h.double()).norm(dim=-1) / w.double().norm(dim=-1)).mean()),
        "returns a 0-d tensor": lambda w, h: torch.linalg.vector_norm(w - h.float()) / torch.linalg.vector_norm(w),
        "answer key": lambda w, h: answer_key().relative_error(w, h),
    },
}


# ----------------------------------------------------------------------------- packing

EX07_WRONG_PACKING = {
    "pack_int4": {
        "nibbles swapped": lambda q: q[..., 1::2] | (q[..., 0::2] << 4),
        "first half with the second half": lambda q: q[..., :q.shape[-1] // 2] | (q[..., q.shape[-1] // 2:] << 4),
        "high value not shifted": lambda q: q[..., 0::2] | q[..., 1::2],
        "shifted by 8 (a uint8 loses it)": lambda q: q[..., 0::2] | (q[..., 1::2] << 8),
        "int64 bytes": lambda q: q[..., 0::2].long() | (q[..., 1::2].long() << 4),
        "not packed at all": lambda q: q.clone(),
        "answer key": lambda q: answer_key().pack_int4(q),
    },
    "unpack_int4": {
        "nibbles swapped": lambda p: torch.stack((p >> 4, p & 15), dim=-1).flatten(-2),
        "lows then highs (torch.cat)": lambda p: torch.cat((p & 15, p >> 4), dim=-1),
        "high nibble not shifted down (& 0xF0)": lambda p: torch.stack((p & 15, p & 0xF0), dim=-1).flatten(-2),
        "int64 values": lambda p: torch.stack((p & 15, p >> 4), dim=-1).flatten(-2).long(),
        "stacked on a new first axis": lambda p: torch.stack((p & 15, p >> 4)).reshape(*p.shape[:-1], -1),
        "answer key": lambda p: answer_key().unpack_int4(p),
    },
}


# ----------------------------------------------------------------------------- int4 groups

def _groups(w, g, layout="consecutive"):
    n, k = w.shape
    if layout == "consecutive":
        return w.reshape(n, k // g, g)
    if layout == "strided":  # every (K // g)-th weight
        return w.reshape(n, g, k // g).transpose(1, 2)
    raise ValueError(layout)


def _int4(layout="consecutive", amax="abs", qmax_div=7, offset=8, rounding="round", scale_dtype="bf16",
          quantize_with="bf16", guard=True, keepdim=False, per_row=False, q_dtype=torch.uint8, columns=False):
    def quantize_int4_groups(w, group_size):
        x = w.t().contiguous() if columns else w
        n, k = x.shape
        g = k if per_row else group_size
        groups = _groups(x, g, layout)  # (N, G, g)
        m = (groups.abs() if amax == "abs" else groups).amax(dim=-1, keepdim=True)
        exact = m / qmax_div
        scale = exact.to(BF16) if scale_dtype == "bf16" else exact
        if guard:
            scale = _guard(scale)
        divisor = scale.float() if quantize_with == "bf16" else _guard(exact)
        levels = groups / divisor
        levels = torch.round(levels) if rounding == "round" else levels.trunc()
        q = levels.clamp(-7, 7) + offset
        if layout == "strided":
            q = q.transpose(1, 2)
        q = q.to(torch.int16).remainder(256).to(q_dtype).reshape(n, k) if q_dtype == torch.uint8 else \
            q.to(q_dtype).reshape(n, k)
        if columns:
            q, scale = q.t(), scale.squeeze(-1).t()
            return q, scale
        return q, scale if keepdim else scale.squeeze(-1)
    return quantize_int4_groups


def _zero_point(scale_div=15, zero_sign=-1, zero_clamp=True, q_clamp=True, rounding="round", subtract=False,
                shifted=False, zero_dtype=torch.uint8, symmetric_scale=False, guard=True, include_zero=True):
    def quantize_int4_zero_point(w, group_size):
        n, k = w.shape
        groups = w.reshape(n, k // group_size, group_size)
        lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        if include_zero:
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (groups.abs().amax(-1, keepdim=True) / 7 if symmetric_scale else (hi - lo) / scale_div).to(BF16)
        if guard:
            scale = _guard(scale)
        s = scale.float()
        rnd = torch.round if rounding == "round" else torch.trunc
        zero = rnd(zero_sign * lo / s)
        if zero_clamp:
            zero = zero.clamp(0, 15)
        q = rnd((groups - lo) / s) if shifted else (rnd(groups / s) - zero if subtract else rnd(groups / s) + zero)
        if q_clamp:
            q = q.clamp(0, 15)
        q = q.to(torch.int16).remainder(256).to(torch.uint8)  # what a uint8 makes of -1 or 16 + ...
        zero = zero.to(torch.int16).remainder(256).to(zero_dtype) if zero_dtype == torch.uint8 else zero.to(zero_dtype)
        return q.reshape(n, k), scale.squeeze(-1), zero.squeeze(-1)
    return quantize_int4_zero_point


EX07_WRONG_INT4 = {
    "quantize_int4_groups": {
        "forgot the + 8": _int4(offset=0),
        "scale max|w| / 8": _int4(qmax_div=8),
        "scale max|w| / 15": _int4(qmax_div=15),
        "max instead of max-abs": _int4(amax="max"),
        "truncates instead of rounding": _int4(rounding="trunc"),
        "float32 scale, not rounded": _int4(scale_dtype="f32"),
        "quantized with the float32 scale, the bfloat16 one returned": _int4(quantize_with="f32"),
        "no zero guard": _int4(guard=False),
        "groups of every (K // g)-th weight": _int4(layout="strided"),
        "groups along the columns (raises)": _int4(columns=True),
        "one scale per row": _int4(per_row=True),
        "scale kept as (N, G, 1)": _int4(keepdim=True),
        "q as int8 levels -7..7": _int4(offset=0, q_dtype=torch.int8),
        "q as int64": _int4(q_dtype=torch.int64),
        "returns (q, scale, None)": lambda w, g: (*_int4()(w, g), None),
        "answer key": lambda w, g: answer_key().quantize_int4(w, g)[:2],
    },
    "quantize_int4_zero_point": {
        "scale (max - min) / 16": _zero_point(scale_div=16),
        "range without 0 (the group's own min, max)": _zero_point(include_zero=False),
        "symmetric scale max|w| / 7": _zero_point(symmetric_scale=True),
        "zero = round(min / scale) (sign)": _zero_point(zero_sign=1),
        "zero point subtracted": _zero_point(subtract=True),
        "round((w - min) / scale)": _zero_point(shifted=True),
        "truncates instead of rounding": _zero_point(rounding="trunc"),
        "no zero guard": _zero_point(guard=False),
        "zero as a float": _zero_point(zero_dtype=torch.float32),
        "answer key": lambda w, g: answer_key().quantize_int4(w, g, zero_point=True),
    },
}

# ----------------------------------------------------------------------------- stretch: a learned clip

def _clipped(ratio_rule="search", clamp_in_error=True, measure="squared", scope="group", pick="min", offset=8,
             clamp_q=True, q_scale="chosen", scale_dtype="bf16", keep_all=False):
    def quantize_int4_clipped(w, group_size, ratios):
        n, k = w.shape
        groups = w.reshape(n, k // group_size, group_size)  # (N, G, g)
        peak = groups.abs().amax(-1, keepdim=True)
        scales, errors = [], []
        for r in ([1.0] if ratio_rule == "absmax" else ratios):
            exact = peak * r / 7
            s = _guard(exact.to(BF16)) if scale_dtype == "bf16" else _guard(exact)
            levels = torch.round(groups / s.float())
            if clamp_in_error:
                levels = levels.clamp(-7, 7)
            diff = {"squared": (groups - levels * s.float()).square(), "levels": (groups / s.float() - levels).square(),
                    "absolute": (groups - levels * s.float()).abs()}[measure].sum(-1, keepdim=True)
            if scope == "row":
                diff = diff.sum(1, keepdim=True).expand_as(diff)
            elif scope == "tensor":
                diff = diff.sum().expand_as(diff)
            scales.append(s)
            errors.append(diff)
        e = torch.stack(errors)
        best = e.argmin(0, keepdim=True) if pick == "min" else e.argmax(0, keepdim=True)
        scale = torch.stack(scales).gather(0, best)[0]  # (N, G, 1)
        divisor = scale.float() if q_scale == "chosen" else _guard((peak / 7).to(BF16)).float()
        levels = torch.round(groups / divisor)
        if clamp_q:
            levels = levels.clamp(-7, 7)
        q = (levels + offset).to(torch.int16).remainder(256).to(torch.uint8).reshape(n, k)
        if keep_all:
            return q, torch.stack(scales).squeeze(-1)
        return q, scale.squeeze(-1)
    return quantize_int4_clipped


def _w8a8(scope="token", guard=True, qmax_div=127, scale_dtype="f32", keepdim=False, rounding="round",
          acc="int32", y="both"):
    def w8a8_matmul(x, q_w, w_scale):
        m = {"token": x.abs().amax(dim=1), "tensor": x.abs().amax().expand(x.shape[0]),
             "feature": x.abs().amax(dim=0)}[scope]
        s = m / qmax_div
        if guard:
            s = _guard(s)
        if scale_dtype == "bf16":
            s = s.to(BF16)
        levels = x / (s.float()[:, None] if scope != "feature" else s.float()[None, :])
        levels = torch.round(levels) if rounding == "round" else levels.trunc()
        q_x = levels.clamp(-127, 127).to(torch.int8)
        total = {"int32": lambda: q_x.to(torch.int32) @ q_w.to(torch.int32).T,
                 "int8": lambda: (q_x @ q_w.T).to(torch.int32),
                 "int64": lambda: q_x.long() @ q_w.long().T}[acc]()
        sx, sw = s.float()[:, None], w_scale.float()[None, :]
        out = {"both": lambda: total.float() * sx * sw, "no x": lambda: total.float() * sw,
               "no w": lambda: total.float() * sx,
               "weight-only": lambda: x @ (q_w.float() * w_scale.float()[:, None]).T}[y]()
        return q_x, (s[:, None] if keepdim else s), total, out
    return w8a8_matmul


EX07_WRONG_STRETCH = {
    "quantize_int4_clipped": {
        "no search: plain absmax (ratio 1)": _clipped(ratio_rule="absmax"),
        "error measured before the clamp (the smallest ratio wins)": _clipped(clamp_in_error=False),
        "error measured in levels, not in weights": _clipped(measure="levels"),
        "the largest error (argmax)": _clipped(pick="max"),
        "one ratio per row": _clipped(scope="row"),
        "one ratio for the whole tensor": _clipped(scope="tensor"),
        "forgot the + 8": _clipped(offset=0),
        "q not clamped to ±7": _clipped(clamp_q=False),
        "q from the plain absmax scale, the chosen scale returned": _clipped(q_scale="plain"),
        "float32 scales": _clipped(scale_dtype="f32"),
        "every candidate scale returned": _clipped(keep_all=True),
        "answer key": lambda w, g, ratios: answer_key().quantize_int4_clipped(w, g, tuple(ratios)),
    },
    "w8a8_matmul": {
        "one activation scale for the whole x": _w8a8(scope="tensor"),
        "no zero guard (a padding token)": _w8a8(guard=False),
        "divides by 128": _w8a8(qmax_div=128),
        "bfloat16 activation scales": _w8a8(scale_dtype="bf16"),
        "x_scale kept as (M, 1)": _w8a8(keepdim=True),
        "truncates instead of rounding": _w8a8(rounding="trunc"),
        "the product in int8 (wraps around)": _w8a8(acc="int8"),
        "int64 sums": _w8a8(acc="int64"),
        "y without x_scale": _w8a8(y="no x"),
        "y without w_scale": _w8a8(y="no w"),
        "y from float x (weight-only int8)": _w8a8(y="weight-only"),
        "one scale per feature (raises)": _w8a8(scope="feature"),
        "answer key": lambda x, q_w, w_scale: (*answer_key().quantize_per_token(x), None,
                                               answer_key().w8a8_linear(x, q_w, w_scale)),
    },
}

EX07_WRONG = {**EX07_WRONG_INT8, **EX07_WRONG_ERROR, **EX07_WRONG_PACKING, **EX07_WRONG_INT4,
              **EX07_WRONG_STRETCH}
WRONG = [(name, label, fn) for name, cases in EX07_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", WRONG, ids=[f"ex07.{n}: {l}" for n, l, _ in WRONG])
def test_wrong_answer_fails(name, label, fn, seed):
    assert_wrong_answer_fails("ex07", name, label, fn, seed)


# ----------------------------------------------------------------------------- right answers, written differently

def _round_trip_f64(w):
    """float64 arithmetic and a reciprocal: some levels within float rounding of a half may round the other way."""
    scale = _guard((w.abs().max() / 127).to(BF16))
    q = torch.round(w.double() * (1.0 / scale.double())).clamp(-127, 127).to(torch.int8)
    return q, scale, (q.double() * scale.double()).float()


def _int4_loop(w, g):
    """One group at a time, the +8 added before rounding and the clamp after it."""
    n, k = w.shape
    q, scale = torch.empty(n, k, dtype=torch.uint8), torch.empty(n, k // g, dtype=BF16)
    for i in range(n):
        for j in range(k // g):
            group = w[i, j * g:(j + 1) * g]
            s = _guard((group.abs().max() / 7).to(BF16))
            scale[i, j] = s
            q[i, j * g:(j + 1) * g] = torch.round(group.double() / s.double() + 8).clamp(1, 15).to(torch.uint8)
    return q, scale


def _zero_point_f64(w, g):
    n, k = w.shape
    groups = w.double().reshape(n, k // g, g)
    lo, hi = groups.amin(-1, keepdim=True).clamp(max=0), groups.amax(-1, keepdim=True).clamp(min=0)
    scale = _guard(((hi - lo).float() / 15).to(BF16))
    s = scale.double()
    zero = (-lo / s).round().clamp(0, 15)
    q = torch.clamp(groups.div(s).round().add(zero), min=0, max=15)
    return q.to(torch.uint8).flatten(1), scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8)


def _clipped_vectorized_f64(w, g, ratios):
    """Every ratio at once on a new leading dim, float64 errors, the scale as max / 7 * ratio."""
    n, k = w.shape
    groups = w.double().reshape(n, k // g, g)
    peak = groups.abs().amax(-1, keepdim=True).float()
    r = torch.tensor(ratios, dtype=torch.float32).reshape(-1, 1, 1, 1)
    scales = (peak / 7 * r).to(BF16)  # (R, N, G, 1)
    scales = scales.masked_fill(scales == 0, 1.0)
    s = scales.double()
    err = (groups - (groups / s).round().clamp(-7, 7) * s).pow(2).sum(-1)  # (R, N, G)
    pick = err.argmin(0)  # (N, G)
    scale = scales.squeeze(-1).gather(0, pick.unsqueeze(0))[0]
    q = ((groups / scale.double().unsqueeze(-1)).round().clamp(-7, 7) + 8).to(torch.uint8).reshape(n, k)
    return q, scale


def _w8a8_float_path(x, q_w, w_scale):
    """A reciprocal for the scale, the sums through a float64 product, the scales multiplied together first."""
    m = x.abs().max(dim=1).values
    s = torch.where(m == 0, torch.ones_like(m), m * (1 / 127))
    q_x = torch.round(x * (1 / s)[:, None]).clamp(-127, 127).to(torch.int8)
    total = (q_x.double() @ q_w.double().T).round().to(torch.int32)
    return q_x, s, total, total.float() * (s[:, None] * w_scale.float()[None, :])


RIGHT = {
    "int8_absmax_round_trip": {"float64 and a reciprocal": _round_trip_f64},
    "per_channel_scales": {"max(dim=1).values, masked_fill": lambda w: (w.abs().max(dim=1).values / 127).to(
        BF16).masked_fill(w.abs().max(dim=1).values == 0, 1.0)},
    "quantize_with_scale": {"clamp before rounding": lambda w, s, qmax: (w / s).clamp(-qmax, qmax).round().to(
        torch.int8)},
    "quantization_error": {
        "torch.dist in float32": lambda w, h: (torch.dist(w, h.float()) / w.norm()).item(),
        "numpy": lambda w, h: np.linalg.norm((w.double() - h.double()).numpy()) / np.linalg.norm(w.double().numpy())},
    "pack_int4": {"* 16 +": lambda q: q[..., 1::2] * 16 + q[..., 0::2],
                  "pairs via reshape": lambda q: (lambda p: p[..., 0] | (p[..., 1] << 4))(
                      q.reshape(*q.shape[:-1], q.shape[-1] // 2, 2))},
    "unpack_int4": {"% 16 and // 16": lambda p: torch.stack((p % 16, p // 16), dim=-1).reshape(*p.shape[:-1], -1)},
    "quantize_int4_groups": {"a loop over groups, float64, clamp to 1..15 after the + 8": _int4_loop},
    "quantize_int4_zero_point": {"float64 arithmetic": _zero_point_f64},
    "quantize_int4_clipped": {"all ratios at once, float64 errors, max / 7 * ratio": _clipped_vectorized_f64,
                              "the test's own loop": _clipped()},
    "w8a8_matmul": {"reciprocal scales, a float64 product, scales multiplied first": _w8a8_float_path},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", [(n, l, f) for n, c in RIGHT.items() for l, f in c.items()],
                         ids=[f"ex07.{n}: {l}" for n, c in RIGHT.items() for l in c])
def test_right_answer_written_differently_passes(name, label, fn, seed):
    checks("ex07")[name].grade(fn, np.random.default_rng(seed))


def test_every_exercise_has_wrong_and_right_answers():
    assert set(EX07_WRONG) == set(checks("ex07")) == set(RIGHT)
    assert all(len(cases) >= 3 for cases in EX07_WRONG.values())
    assert all(len(EX07_WRONG[name]) >= 4 for name in ("quantize_int4_clipped", "w8a8_matmul"))


def test_answer_key_is_named_and_restored():
    from course_lib import quantization

    before = (quantization.pack_int4, quantization.quantize_int4, quantization.relative_error)
    with pytest.raises(GradeError, match=r"course_lib\.quantization\.pack_int4\(\).*answer key"):
        checks("ex07")["pack_int4"].grade(EX07_WRONG["pack_int4"]["answer key"], np.random.default_rng(0))
    assert (quantization.pack_int4, quantization.quantize_int4, quantization.relative_error) == before


def test_messages_name_the_likely_mistake():
    cases = {
        ("int8_absmax_round_trip", "truncates instead of rounding"): "truncated toward zero",
        ("int8_absmax_round_trip", "max instead of max-abs"): "not the largest |w|",
        ("int8_absmax_round_trip", "quantized with the float32 scale, the bfloat16 one returned"): "float32 scale",
        ("per_channel_scales", "one scale for the whole tensor, repeated"): "per-tensor",
        ("quantize_with_scale", "not clamped"): "did not clamp",
        ("quantization_error", "mean squared error"): "mean squared error",
        ("pack_int4", "nibbles swapped"): "nibbles are swapped",
        ("unpack_int4", "lows then highs (torch.cat)"): "torch.cat",
        ("quantize_int4_groups", "forgot the + 8"): "forgot the + 8",
        ("quantize_int4_groups", "groups of every (K // g)-th weight"): "consecutive",
        ("quantize_int4_clipped", "no search: plain absmax (ratio 1)"): "did not search",
        ("quantize_int4_clipped", "error measured before the clamp (the smallest ratio wins)"): "before clamping",
        ("quantize_int4_clipped", "one ratio per row"): "one ratio per row",
        ("quantize_int4_clipped", "q from the plain absmax scale, the chosen scale returned"): "plain max|group|",
        ("w8a8_matmul", "one activation scale for the whole x"): "per-tensor",
        ("w8a8_matmul", "no zero guard (a padding token)"): "must get 1",
        ("w8a8_matmul", "the product in int8 (wraps around)"): "int8, which wraps around",
        ("w8a8_matmul", "y from float x (weight-only int8)"): "weight-only",
    }
    for (name, label), text in cases.items():
        with pytest.raises(GradeError) as info:
            checks("ex07")[name].grade(EX07_WRONG[name][label], np.random.default_rng(0))
        assert text in str(info.value), f"{name}, {label!r}: {info.value}"


def test_points_add_up():
    exercises = checks("ex07").values()
    assert sum(ex.points for ex in exercises if not ex.stretch) == 12
    assert sum(ex.points for ex in exercises if ex.stretch) == 6
    assert {ex.function for ex in exercises if ex.stretch} == {"quantize_int4_clipped", "w8a8_matmul"}
