"""Checks for chapter 09's exercises (``exercises/ex09_modern_decoders.py``).

Inputs are random: float32, float64, bfloat16 and float16 tensors; head sizes from 2 to 128
(half sizes odd and even), one token and a dozen, batch 1 and more, one head and many (up to
32 after ``repeat_kv``), ``n_rep = 1``; positions that do not start at 0 (a different offset
per row, left padding, one new token at position 3000 as in cached decoding); fewer queries
than keys; windows of 1, of a few tokens and longer than the keys; non-contiguous views (heads
split off with a transpose, weights stored transposed); Llama 3.1/3.2's real ``rope_scaling``
and random ones whose three frequency bands all occur. Expected answers come from
``course_lib`` (``rope.rotate_half``, ``rope.rope_cos_sin``, ``rope.apply_rope``,
``layers.repeat_kv``, ``layers.swiglu``, ``layers.sliding_window_mask``,
``rope.rope_frequencies`` with ``"llama3"`` scaling, ``rope.interleaved_to_half``), themselves
tested against ``transformers`` in ``tests/test_rope.py`` and ``tests/test_llama_layers.py``;
they are switched off while the learner's code runs, and so are PyTorch's ready-made SiLU and
GLU (``chapter_rules`` below).

Tolerances: selections of values (``rotate_half``, ``repeat_kv``, the mask, the permutation)
exactly; float32 results 1e-5 relative (and 1e-5 times the result's natural scale absolute),
float64 1e-10, bfloat16 3e-2. cos and sin also allow one float32 rounding of the angle (1.2e-7
times the largest angle), so angles computed in float64 and rounded once at the end pass too.
When a result is wrong, the check tries the usual mistakes on the same input and names the
one that matches.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from course_lib import layers as L
from course_lib import rope as R
from course_lib.grading.registry import (GradeError, call_learner, chapter_rules, exercise, expect_close,
                                         expect_dtype, expect_tensor, expect_tensors, expect_values, likely, randn,
                                         same_value)

ANSWER_KEY = (
    *(f"course_lib.rope.{name}" for name in (
        "rope_frequencies", "rope_cos_sin", "rotate_half", "apply_rope", "apply_rope_interleaved",
        "interleaved_to_half", "half_to_interleaved", "_permute_rows", "RotaryEmbedding")),
    *(f"course_lib.layers.{name}" for name in ("silu", "swiglu", "repeat_kv", "sliding_window_mask")),
    # the Llama model's pieces, and the names it imported from the modules above
    *(f"course_lib.models.llama.{name}" for name in (
        "LlamaAttention", "LlamaMLP", "LlamaDecoderLayer", "llama_attention_mask", "repeat_kv", "silu",
        "sliding_window_mask", "apply_rope", "RotaryEmbedding")),
)

# PyTorch's ready-made SiLU and GLU, with their other spellings. Everything the other exercises
# need (cat, expand, repeat_interleave, tril, where, sigmoid, exp) is an ordinary operation.
SHORTCUTS = (
    "torch.nn.functional.silu", "torch._C._nn.silu", "torch._C._nn.silu_", "torch.ops.aten.silu",
    "torch.ops.aten.silu_", "torch.nn.SiLU",
    "torch.nn.functional.glu", "torch._C._nn.glu", "torch.ops.aten.glu", "torch.nn.GLU",
)
chapter_rules("ex09", shortcuts=SHORTCUTS)

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16


# ----------------------------------------------------------------------------- inputs and calls


def call(fn, *args, what: str):
    """Run the learner's function with the answer key switched off; it must leave its inputs as they were."""
    return call_learner(fn, args, what, ANSWER_KEY + SHORTCUTS, "; course_lib is the answer key, and F.silu / "
                        "nn.SiLU and F.glu / nn.GLU are switched off (torch.sigmoid, torch.exp and any other torch "
                        "operation are fine)", "assigning into an argument, `+=`, `.mul_()` ...")


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for values of order 1."""
    if dtype == F64:
        return 1e-10, 1e-10
    if dtype in (BF16, F16):
        return 3e-2, 3e-2
    return 1e-5, 1e-5


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def describe(t: torch.Tensor) -> str:
    """'(2, 3, 5, 8) float32', with ', a non-contiguous view' when it is one."""
    return f"{tuple(t.shape)} {name_of(t.dtype)}" + ("" if t.is_contiguous() else ", a non-contiguous view")


def expect_error(exception: type[Exception], run, what: str, why: str) -> None:
    """``run()`` (which calls the learner's code) must raise ``exception``; ``why`` says why it should.

    Unlike the registry's ``expect_raises``, another exception (PyTorch's RuntimeError from deep inside a
    matrix product, say) is reported as the wrong kind of error, and a returned tensor by its shape only."""
    try:
        out = run()
    except exception:
        return
    except (GradeError, NotImplementedError):
        raise
    except Exception as err:
        raise GradeError(f"{what}: {why}, so a {exception.__name__} was expected, with a message that names the "
                         f"problem; your function raised {type(err).__name__} ({err})") from None
    if isinstance(out, torch.Tensor):
        shown = f"a tensor of shape {tuple(out.shape)}"
    elif isinstance(out, (tuple, list)):
        shown = f"a {type(out).__name__} of {len(out)} values"
    else:
        shown = f"a value of type {type(out).__name__}"
    raise GradeError(f"{what}: {why}, so a {exception.__name__} was expected; your function returned {shown}")


def positions(rng: np.random.Generator, B: int, T: int, high: int = 3000) -> torch.Tensor:
    """(B, T) int64 positions, each row counting up from its own random start (cached tokens before them)."""
    start = rng.integers(0, high, size=(B, 1))
    return torch.from_numpy(start + np.arange(T)).to(torch.int64)


# ----------------------------------------------------------------------------- 1. rotate_half


def rotate_mistakes(x: torch.Tensor) -> dict:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return {
        "the signs are the other way round: [x2, -x1] turns each pair by -90 degrees; rotate_half gives "
        "[-x2, x1] (pair (a, b) -> (-b, a))": lambda: torch.cat((x2, -x1), -1),
        "the minus sign is missing: [x2, x1] swaps the halves without turning the pairs; the second half comes "
        "first, negated": lambda: torch.cat((x2, x1), -1),
        "the halves kept their places ([-x1, x2]); they swap: the second half, negated, comes first":
            lambda: torch.cat((-x1, x2), -1),
        "the halves kept their places ([x1, -x2]); they swap: the second half, negated, comes first":
            lambda: torch.cat((x1, -x2), -1),
        "the pairs were taken as neighbours (2i, 2i + 1), Meta's interleaved layout; in the half-split layout "
        "pair i is features i and i + D/2": lambda: torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
        if x.size(-1) > 2 else None,
        "the halves were cut along the first dimension; RoPE's pairs live in the last one (head_dim), which "
        "`...` reaches whatever the number of leading dimensions": lambda: torch.cat(
            (-x[x.size(0) // 2:], x[:x.size(0) // 2]), 0) if x.dim() > 1 else None,
    }


def _rotate_cases(rng: np.random.Generator) -> list:
    cases = [torch.tensor([1.0, 2.0, 3.0, 4.0])]
    dtypes = [F32, F32, F64, BF16, F16]
    for i in range(12):
        D = int(rng.choice([2, 4, 6, 8, 10, 16, 64]))
        lead = [int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 4)))]
        dtype = dtypes[i % len(dtypes)]
        if i % 3 == 1 and lead:  # the features of a transposed tensor are not next to each other
            x = randn(rng, *lead[:-1], D, lead[-1], dtype=dtype).transpose(-1, -2)
        else:
            x = randn(rng, *lead, D, dtype=dtype)
        cases.append(x)
    return cases


@exercise("ex09.rotate_half", points=1, reference="course_lib.rope.rotate_half",
          hints=(
              "Write the rotation formula for one pair (a, b) = (x[i], x[i + D/2]) and match it term by term with "
              "x * cos + rotate_half(x) * sin: the terms multiplied by sin say what rotate_half must hold at "
              "feature i and at feature i + D/2.",
              "At feature i the sin term is -b (minus the second half's value), at feature i + D/2 it is +a. Slice the "
              "last dimension with `...` (`x[..., :half]`, `x[..., half:]`) so any leading dimensions work, and join "
              "two halves with `torch.cat(..., dim=-1)`.",
              "Try it by hand on [1, 2, 3, 4]: the pairs are (1, 3) and (2, 4), and a 90-degree turn makes "
              "(1, 3) into (-3, 1). Raise the ValueError before slicing when the last dimension is odd.",
          ))
def _(fn, rng):
    for x in _rotate_cases(rng):
        what = f"rotate_half(x {describe(x)})"
        got = expect_tensor(call(fn, x, what=what), what)
        expect_dtype(got, x.dtype, what, "the result holds x's own values (some negated): keep its dtype")
        expect_values(got, R.rotate_half(x), what, rotate_mistakes(x), why_shape="the same shape as x")
    x = randn(rng, 2, 3, 5)
    expect_error(ValueError, lambda: call(fn, x, what="rotate_half"), "rotate_half(x (2, 3, 5) float32)",
                  "the last dimension, 5, is odd: its features do not form pairs")


# ----------------------------------------------------------------------------- 2. rope_cos_sin


def cos_sin_mistakes(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> dict:
    pos, freq = position_ids.float(), inv_freq.float()
    half = pos[..., None] * freq  # (..., T, D/2)

    def both(angles):
        return angles.cos(), angles.sin()

    def doubled(angles):
        return torch.cat((angles, angles), -1)

    counting = torch.arange(position_ids.shape[-1], dtype=torch.float32).expand(position_ids.shape)
    return {
        "each angle was repeated twice in a row (f0, f0, f1, f1, ...): that is the interleaved layout's order; in "
        "the half-split layout pair i is features i and i + D/2, so the D/2 angles come once, then once again "
        "(f0, f1, ..., f0, f1, ...)": lambda: both(half.repeat_interleave(2, -1)) if len(freq) > 1 else None,
        "the angles are not repeated over both halves: (..., T, D/2); pair i is features i and i + D/2 and both "
        "carry its angle, so the D/2 angles appear twice along the last dimension": lambda: both(half),
        "the positions were taken as 0, 1, ..., T - 1; use position_ids (after P cached tokens they start at P, "
        "and each row may start elsewhere)": lambda: both(doubled(counting[..., None] * freq))
        if not torch.equal(counting.to(position_ids.dtype), position_ids) else None,
        "cos and sin are swapped": lambda: both(doubled(half))[::-1],
        "the positions were divided by the frequencies; the angle is the position times inv_freq":
            lambda: both(doubled(pos[..., None] / freq)),
    }


def _cos_sin_cases(rng: np.random.Generator) -> list:
    cases = [(torch.tensor([[0, 1, 2]]), torch.tensor([1.0, 0.01]), "the docstring's example")]
    for i in range(11):
        D = int(rng.choice([2, 4, 6, 8, 16, 32, 64, 128]))
        theta = float(rng.choice([100.0, 10000.0, 500000.0, 1e6]))
        B, T = int(rng.integers(1, 4)), int(rng.integers(1, 10))
        pos = positions(rng, B, T)
        inv_freq = R.rope_frequencies(D, theta)
        label = f"position_ids {tuple(pos.shape)} int64 from {int(pos.min())} to {int(pos.max())}"
        if i == 0:  # one new token late in a cached generation
            pos, label = torch.tensor([[3000]]), "position_ids [[3000]] (one new token after 3000 cached ones)"
        elif i == 1:
            pos = pos[0]
            label = f"position_ids {tuple(pos.shape)} int64 (one dimension: no batch)"
        elif i == 2:
            pos = pos.to(torch.int32)
            label = label.replace("int64", "int32")
        elif i == 3:
            inv_freq = R.rope_frequencies(D, 500000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 8192})
            label += ", Llama 3.2's scaled frequencies"
        elif i == 4:
            inv_freq = inv_freq.double()
        elif i == 5:  # left padding as transformers numbers it: padded slots get 1, real tokens count from 0
            pad = min(int(rng.integers(1, 4)), T)
            row = torch.cat((torch.ones(pad, dtype=torch.int64), torch.arange(T - pad)))
            pos = torch.stack((row, torch.arange(T)))
            label = f"position_ids {pos.tolist()} (a left-padded row)"
        cases.append((pos, inv_freq, f"{label}, inv_freq ({len(inv_freq)},) {name_of(inv_freq.dtype)}"))
    return cases


def _close_pair(a, b, atol: float) -> bool:
    return all(isinstance(t, torch.Tensor) and same_value(t, u, 0.0, atol) and bool(torch.isfinite(u).all())
               for t, u in zip(a, b))


@exercise("ex09.rope_cos_sin", points=2, reference="course_lib.rope.rope_cos_sin",
          hints=(
              "Token t's angle for pair i is its position times inv_freq[i]: for every row that is a table of "
              "T x D/2 angles, an outer product. The half-split layout then needs each angle at both features of "
              "its pair, i and i + D/2.",
              "Convert both inputs to float32 (`.float()`), give the positions a last axis of size 1 "
              "(`[..., None]` or `unsqueeze(-1)`) so that multiplying by the (D/2,) frequencies broadcasts to "
              "(..., T, D/2); then join that table with itself along the last dimension (`torch.cat`).",
              "Not `repeat_interleave`: it puts each angle twice in a row (f0, f0, f1, f1, ...), the interleaved "
              "layout's order; the half-split one is (f0, f1, ..., f0, f1, ...). Raise the TypeError first when "
              "`position_ids.dtype.is_floating_point` (or the dtype is torch.bool).",
          ))
def _(fn, rng):
    for pos, inv_freq, label in _cos_sin_cases(rng):
        what = f"rope_cos_sin({label})"
        got = expect_tensors(call(fn, pos, inv_freq, what=what), 2, what, "(cos, sin)")
        expected = R.rope_cos_sin(pos, inv_freq)
        for t, name in zip(got, ("cos", "sin")):
            expect_dtype(t, F32, f"{what}, {name}", "cos and sin are float32 whatever the dtypes of position_ids and "
                         "inv_freq: convert both to float32 before multiplying")
        max_angle = float(pos.abs().max()) * float(inv_freq.abs().max())
        atol = 1e-5 + 1.2e-7 * max_angle  # one float32 rounding of the largest angle
        if _close_pair(got, expected, atol):
            continue
        mistake = likely(got, cos_sin_mistakes(pos, inv_freq), same=lambda g, m: _close_pair(g, m, atol))
        for t, e, name in zip(got, expected, ("cos", "sin")):
            if tuple(t.shape) != tuple(e.shape):
                raise GradeError(f"{what}, {name}: expected shape {tuple(e.shape)}, got shape {tuple(t.shape)}; "
                                 f"(..., T, D): position_ids' shape, then D = 2 * len(inv_freq) features." + mistake)
            try:
                expect_close(t, e, f"{what}, {name}", atol=atol, rtol=0.0)
            except GradeError as err:
                raise GradeError(str(err) + "." + mistake) from None
        raise GradeError(f"{what}: NaN where a number was expected, or the reverse." + mistake)
    x = torch.arange(4.0)[None]
    expect_error(TypeError, lambda: call(fn, x, R.rope_frequencies(8), what="rope_cos_sin"),
                  "rope_cos_sin(position_ids tensor([[0., 1., 2., 3.]]) float32, inv_freq (4,))",
                  "position_ids must be integers (token positions), and these are floats")


# ----------------------------------------------------------------------------- 3. apply_rope


def rope_mistakes(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict:
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    D, H = x.size(-1), x.size(1)
    return {
        "the rotation goes the wrong way ((a cos θ + b sin θ, b cos θ - a sin θ)): rotate_half must give "
        "[-x2, x1], and the sin term is added": lambda: R.apply_rope(x, cos, -sin),
        "the pairs were rotated as neighbours (2i, 2i + 1), Meta's interleaved layout; here pair i is features i "
        "and i + D/2 (that is what rotate_half pairs up)": lambda: R.apply_rope_interleaved(x, cos, sin)
        if D > 2 else None,
        "cos and sin are swapped": lambda: R.apply_rope(x, sin, cos),
        "rotate_half is missing: x * cos + x * sin scales x but does not turn its pairs":
            lambda: x * c[:, None] + x * s[:, None],
        "cos and sin were broadcast without a heads dimension: (B, T, D) against (B, H, T, D) lines their batch up "
        "with x's heads; give them an axis of size 1 for the heads, (B, 1, T, D)":
            lambda: x * c + R.rotate_half(x) * s if cos.size(0) == H and H > 1 else None,
    }


def _rope_cases(rng: np.random.Generator) -> list:
    cases = []
    dtypes = [F32, F32, F64, BF16]
    for i in range(12):
        B, H, T = int(rng.integers(1, 4)), int(rng.choice([1, 2, 3, 4, 8, 16])), int(rng.integers(1, 9))
        D = int(rng.choice([2, 4, 6, 8, 16, 32, 64]))
        if i in (0, 5):
            B = H = int(rng.integers(2, 4))  # a missing heads axis broadcasts instead of raising
        if i == 1:
            T = 1  # one new token
        dtype = dtypes[i % len(dtypes)]
        shared = i % 5 == 4 and B > 1
        pos = positions(rng, 1 if shared else B, T)
        cos, sin = R.rope_cos_sin(pos, R.rope_frequencies(D, float(rng.choice([10000.0, 500000.0]))))
        if i % 3 == 1:  # heads split off with a transpose, as in attention
            x = randn(rng, B, T, H, D, dtype=dtype).transpose(1, 2)
        else:
            x = randn(rng, B, H, T, D, dtype=dtype)
        cases.append((x, cos, sin, pos))
    return cases


@exercise("ex09.apply_rope", points=3, reference="course_lib.rope.apply_rope",
          hints=(
              "Per pair, (a, b) turned by θ is (a cos θ - b sin θ, b cos θ + a sin θ). Where x holds (a, b), "
              "rotate_half(x) holds (-b, a): so the rotated x is x times cos plus rotate_half(x) times sin, all "
              "elementwise.",
              "cos and sin are (B, T, D) but x is (B, H, T, D): insert an axis of size 1 for the heads at position "
              "1 (`unsqueeze(1)` or `[:, None]`). Broadcasting alone lines up from the right, which puts cos's batch "
              "against x's heads.",
              "Cast cos and sin to x.dtype (`.to(x.dtype)`) before multiplying: a bfloat16 x times float32 cos is "
              "promoted to float32. Check the shapes first (x 4-D; cos and sin (B or 1, T, D)) and raise "
              "ValueError when they do not fit.",
          ))
def _(fn, rng):
    for x, cos, sin, pos in _rope_cases(rng):
        what = (f"apply_rope(x {describe(x)}, cos and sin {tuple(cos.shape)} float32 for positions "
                f"{int(pos.min())}..{int(pos.max())})")
        got = expect_tensor(call(fn, x, cos, sin, what=what), what)
        expect_dtype(got, x.dtype, what, "keep x's dtype: cast cos and sin to x.dtype first (x times float32 cos "
                     "is promoted to float32)")
        rtol, atol = tolerances(x.dtype)
        expect_values(got, R.apply_rope(x, cos, sin), what, rope_mistakes(x, cos, sin), rtol,
                      atol * max(1.0, float(x.abs().max())), why_shape="the same shape as x, (B, H, T, D)")
    x = randn(rng, 2, 4, 5, 8)
    cos, sin = R.rope_cos_sin(positions(rng, 2, 5), R.rope_frequencies(8))
    bad = [
        (x[:, 0], cos, sin, "x (2, 5, 8) has no heads dimension: apply_rope takes (batch, heads, tokens, head_dim)"),
        (x, cos[:, :4], sin[:, :4], "cos and sin hold 4 tokens, x 5"),
        (x, cos[..., :4], sin[..., :4], "cos and sin have 4 features, x's heads 8 (the angles not repeated over "
                                        "both halves)"),
    ]
    for args in bad:
        what = (f"apply_rope(x {tuple(args[0].shape)}, cos {tuple(args[1].shape)}, sin {tuple(args[2].shape)})")
        expect_error(ValueError, lambda: call(fn, *args[:3], what=what), what, args[3])


# ----------------------------------------------------------------------------- 4. repeat_kv


def repeat_mistakes(x: torch.Tensor, n_rep: int) -> dict:
    KV = x.size(1)
    return {
        "the KV heads were tiled (k0, k1, k0, k1, ...: `repeat` or `cat` of n_rep copies); query head h uses KV "
        "head h // n_rep, so each KV head comes n_rep times in a row (k0, k0, k1, k1, ...)":
            lambda: x.repeat(1, n_rep, 1, 1) if KV > 1 and n_rep > 1 else None,
        "the copies were made along the tokens (dimension 2); they go along the heads (dimension 1)":
            lambda: x.repeat_interleave(n_rep, 2) if n_rep > 1 else None,
        "the copies were made along the batch (dimension 0); they go along the heads (dimension 1)":
            lambda: x.repeat_interleave(n_rep, 0) if n_rep > 1 else None,
        "the copies were made along head_dim (dimension 3); they go along the heads (dimension 1)":
            lambda: x.repeat_interleave(n_rep, 3) if n_rep > 1 else None,
    }


def _repeat_cases(rng: np.random.Generator) -> list:
    plans = [(2, 2), (1, 4), (4, 1), (3, 2), (2, 3), (8, 4), (1, 1), (4, 2), (2, 5), (3, 3)]  # (KV, n_rep)
    dtypes = [F32, F64, BF16, F32, F16]
    cases = []
    for i, (KV, n_rep) in enumerate(plans):
        B, T, D = int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 9))
        dtype = dtypes[i % len(dtypes)]
        if i % 3 == 1:  # keys just split into heads: a transposed view
            x = randn(rng, B, T, KV, D, dtype=dtype).transpose(1, 2)
        else:
            x = randn(rng, B, KV, T, D, dtype=dtype)
        cases.append((x, n_rep))
    return cases


@exercise("ex09.repeat_kv", points=2, reference="course_lib.layers.repeat_kv",
          hints=(
              "Query head h uses KV head h // n_rep: the result lists KV head 0 n_rep times, then KV head 1 n_rep "
              "times, and so on. Tiling the whole set of KV heads n_rep times gives the wrong order.",
              "Insert an axis of size n_rep right after the KV heads (`x[:, :, None]` has shape (B, KV, 1, T, D)), "
              "`expand` it to n_rep (no copy yet), then `reshape` (not `view`: x may be a non-contiguous view) to "
              "(B, KV * n_rep, T, D).",
              "`torch.repeat_interleave` along the heads' dimension does the same in one call; `Tensor.repeat` "
              "tiles instead. Raise the ValueError for n_rep < 1, or for a tensor that is not 4-D, before anything "
              "else.",
          ))
def _(fn, rng):
    for x, n_rep in _repeat_cases(rng):
        what = f"repeat_kv(x {describe(x)}, n_rep={n_rep})"
        got = expect_tensor(call(fn, x, n_rep, what=what), what)
        expect_dtype(got, x.dtype, what, "the result holds copies of x's values: keep its dtype")
        expect_values(got, L.repeat_kv(x, n_rep), what, repeat_mistakes(x, n_rep),
                      why_shape="(B, KV * n_rep, T, D): n_rep copies of each KV head")
    x = randn(rng, 1, 2, 3, 4)
    expect_error(ValueError, lambda: call(fn, x, 0, what="repeat_kv"), "repeat_kv(x (1, 2, 3, 4), n_rep=0)",
                  "n_rep must be at least 1")
    expect_error(ValueError, lambda: call(fn, x[0], 2, what="repeat_kv"), "repeat_kv(x (2, 3, 4), n_rep=2)",
                  "x must be (batch, kv_heads, tokens, head_dim)")


# ----------------------------------------------------------------------------- 5. swiglu


def swiglu_mistakes(x, gate_weight, up_weight, down_weight) -> dict:
    x, wg, wu, wd = (t.double() for t in (x, gate_weight, up_weight, down_weight))
    g, u = x @ wg.T, x @ wu.T
    silu = L.silu
    square = wg.shape[0] == wg.shape[1]
    return {
        "this is GELU of the gate; SwiGLU's gate goes through SiLU, z * sigmoid(z)":
            lambda: (L.gelu(g) * u) @ wd.T,
        "the gate and up projections are swapped: SiLU goes on gate(x), which then multiplies up(x)":
            lambda: (silu(u) * g) @ wd.T,
        "the gate went through sigmoid alone (a plain GLU); SiLU is z * sigmoid(z)":
            lambda: (torch.sigmoid(g) * u) @ wd.T,
        "this is ReLU of the gate; SwiGLU's gate goes through SiLU, z * sigmoid(z)":
            lambda: (L.relu(g) * u) @ wd.T,
        "SiLU was applied to the product; it goes on gate(x) alone, then multiplies up(x)":
            lambda: silu(g * u) @ wd.T,
        "the SiLU is missing: gate(x) * up(x) without the activation": lambda: (g * u) @ wd.T,
        "SiLU has the wrong sign inside: z * sigmoid(-z) = z / (1 + exp(z)); it is z / (1 + exp(-z))":
            lambda: (g * torch.sigmoid(-g) * u) @ wd.T,
        "the weights were not transposed: nn.Linear stores them (out, in), so a linear map is x @ weight.T":
            lambda: (silu(x @ wg) * (x @ wu)) @ wd if square else None,
    }


def _swiglu_cases(rng: np.random.Generator) -> list:
    cases = []
    for i in range(10):
        C, Fdim = int(rng.integers(1, 17)), int(rng.integers(1, 25))
        if i in (0, 5):
            Fdim = C = int(rng.integers(2, 9))  # square weights: a missing transpose gives values, not an error
        lead = [int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 4)))]
        dtype = BF16 if i == 7 else F64 if i % 4 == 2 else F32
        x = randn(rng, *lead, C, scale=float(rng.choice([1.0, 3.0])), dtype=dtype)
        if i % 3 == 1:  # weights stored transposed: non-contiguous views
            gate = randn(rng, C, Fdim, scale=0.5, dtype=dtype).T
        else:
            gate = randn(rng, Fdim, C, scale=0.5, dtype=dtype)
        up = randn(rng, Fdim, C, scale=0.5, dtype=dtype)
        down = randn(rng, C, Fdim, scale=0.5, dtype=dtype)
        cases.append((x, gate, up, down))
    return cases


@exercise("ex09.swiglu", points=2, reference="course_lib.layers.swiglu",
          hints=(
              "Three linear maps without bias, weights stored (out, in) as in nn.Linear: gate and up take x from C "
              "to F features, down takes the gated product from F back to C. SiLU is z * sigmoid(z); the gating is "
              "an elementwise product.",
              "A linear map with an (out, in) weight is `x @ weight.T`, for any number of leading dimensions of x. "
              "Apply SiLU to the gate projection's output only, multiply it by the up projection's output, then "
              "project down.",
              "Write SiLU with torch.sigmoid (or z / (1 + torch.exp(-z))): F.silu is switched off. Check the three "
              "shapes before multiplying and raise ValueError, naming both shapes, when they do not fit: (F, C), "
              "(F, C), (C, F).",
          ))
def _(fn, rng):
    for x, gate, up, down in _swiglu_cases(rng):
        what = (f"swiglu(x {describe(x)}, gate_weight {describe(gate)}, up_weight {tuple(up.shape)}, "
                f"down_weight {tuple(down.shape)})")
        got = expect_tensor(call(fn, x, gate, up, down, what=what), what)
        expect_dtype(got, x.dtype, what, "compute in the input's dtype")
        x64, g64, u64, d64 = (t.double() for t in (x, gate, up, down))
        expected = L.swiglu(x64, g64, u64, d64)
        # the result's natural scale: the same computation on absolute values bounds every rounding error
        scale = (((x64.abs() @ g64.abs().T) * (x64.abs() @ u64.abs().T)) @ d64.abs().T).max().item() if \
            x.numel() else 1.0
        rtol, atol = tolerances(x.dtype)
        expect_values(got, expected, what, swiglu_mistakes(x, gate, up, down), rtol, atol * max(1.0, scale),
                      why_shape="the same shape as x, (..., C)")
    x = randn(rng, 2, 3, 4)
    gate, up, down = randn(rng, 6, 4), randn(rng, 6, 4), randn(rng, 4, 6)
    bad = [
        (x, randn(rng, 6, 5), up, down, "gate_weight (6, 5) does not take x's 4 features"),
        (x, gate, randn(rng, 7, 4), down, "up_weight (7, 4) is not gate_weight's shape (6, 4)"),
        (x, gate, up, randn(rng, 6, 4), "down_weight (6, 4) is not (C, F) = (4, 6)"),
    ]
    for args in bad:
        what = (f"swiglu(x (2, 3, 4), gate_weight {tuple(args[1].shape)}, up_weight {tuple(args[2].shape)}, "
                f"down_weight {tuple(args[3].shape)})")
        expect_error(ValueError, lambda: call(fn, *args[:4], what=what), what, args[4])


# ----------------------------------------------------------------------------- 6. sliding-window mask


def window_variant(t_query: int, t_key: int | None, window: int | None, *, low: int = 0, aligned: bool = True,
                   causal: bool = True) -> torch.Tensor:
    """The mask with the knobs of the usual mistakes: ``low`` shifts the window's lower bound."""
    t_key = t_query if t_key is None else t_key
    p = torch.arange(t_query)[:, None] + (t_key - t_query if aligned else 0)
    j = torch.arange(t_key)[None, :]
    mask = j <= p if causal else torch.ones(t_query, t_key, dtype=torch.bool)
    if window is not None:
        mask = mask & (j > p - window - low)
    return mask


def window_mistakes(t_query: int, t_key: int | None, window: int | None) -> dict:
    tk = t_query if t_key is None else t_key
    reach = window is not None and window < tk
    return {
        "the window holds one key too many: each query sees itself and the window - 1 keys before it, so key j is "
        "allowed when j > p - window (not >=)": lambda: window_variant(t_query, t_key, window, low=1)
        if reach else None,
        "the window holds one key too few: each query sees itself and the window - 1 keys before it, so key j is "
        "allowed when j > p - window": lambda: window_variant(t_query, t_key, window, low=-1) if window else None,
        "the queries were placed at positions 0..t_query - 1; they are the LAST t_query positions, p = i + t_key - "
        "t_query (the keys include the cached tokens before them)":
            lambda: window_variant(t_query, t_key, window, aligned=False) if tk > t_query else None,
        "the causal part is missing: keys after the query (j > p) must be hidden too":
            lambda: window_variant(t_query, t_key, window, causal=False),
        "the window is ignored: this is the plain causal mask": lambda: window_variant(t_query, t_key, None)
        if reach else None,
        "True and False are swapped: True means the query MAY attend to the key":
            lambda: ~window_variant(t_query, t_key, window),
        "the mask is transposed: rows are queries (t_query), columns keys (t_key)":
            lambda: window_variant(t_query, t_key, window).T,
    }


def _window_cases(rng: np.random.Generator) -> list:
    cases = [(4, None, 2), (1, 5, 3), (5, None, None), (3, 8, 4), (1, 10, 3), (6, 6, 1), (4, 4, 10), (1, 1, 1),
             (2, 7, 7)]
    while len(cases) < 22:
        t_query = int(rng.integers(1, 11))
        t_key = t_query + int(rng.integers(0, 11))
        window = None if rng.random() < 0.15 else int(rng.integers(1, t_key + 4))
        cases.append((t_query, None if t_key == t_query and rng.random() < 0.5 else t_key, window))
    return cases


@exercise("ex09.sliding_window_mask", points=2, reference="course_lib.layers.sliding_window_mask",
          hints=(
              "Give each query its absolute position, t_key - t_query + i (the queries are the last t_query "
              "positions), and each key its index j. Key j is allowed when it is not in the query's future and "
              "fewer than `window` positions back.",
              "`torch.arange` gives the query positions as a column (Tq, 1) and the key positions as a row (1, Tk); "
              "comparing them broadcasts to a (Tq, Tk) table of booleans. Combine the causal condition and the "
              "window condition with `&`; with window None keep only the causal one.",
              "Count on the docstring's example: with window 2, query 3 sees keys 2 and 3 and not key 1, so the "
              "lower bound is strict, j > p - window. Raise ValueError for window < 1 and for t_key < t_query.",
          ))
def _(fn, rng):
    for t_query, t_key, window in _window_cases(rng):
        what = f"sliding_window_mask({t_query}, t_key={t_key}, window={window})"
        got = expect_tensor(call(fn, t_query, t_key, window, what=what), what)
        expect_dtype(got, torch.bool, what, "a boolean mask, True = may attend (what the attention's masked_fill "
                     "and torch's bool attn_mask expect)")
        expect_values(got, L.sliding_window_mask(t_query, t_key, window), what,
                      window_mistakes(t_query, t_key, window), why_shape="(t_query, t_key): a row per query")
    for args, why in [((3, None, 0), "a window of 0 tokens hides even the query itself"),
                      ((4, 8, -2), "a window of -2 tokens is meaningless"),
                      ((5, 3, 2), "5 queries cannot be the last positions of 3 keys (t_key < t_query)")]:
        what = f"sliding_window_mask({args[0]}, t_key={args[1]}, window={args[2]})"
        expect_error(ValueError, lambda: call(fn, *args, what=what), what, why)


# ----------------------------------------------------------------------------- stretch: llama3 frequencies


def llama3_variant(head_dim, theta, factor, low, high, L_old, *, swap_bands=False, swap_edges=False,
                   invert_smooth=False, blend=True, two_pi=True, exponent_step=2) -> torch.Tensor:
    """The llama3 frequencies (float64) with the knobs of the usual mistakes."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=F64) / head_dim * (exponent_step / 2))
    wavelen = (2 * math.pi if two_pi else 1.0) / inv_freq
    fast_edge, slow_edge = (L_old / low, L_old / high) if swap_edges else (L_old / high, L_old / low)
    fast, slow = wavelen < fast_edge, wavelen > slow_edge
    if swap_bands:
        fast, slow = slow, fast
    smooth = (L_old / wavelen - low) / (high - low)
    if invert_smooth:
        smooth = 1 - smooth
    middle = (1 - smooth) * inv_freq / factor + smooth * inv_freq if blend else inv_freq
    return torch.where(fast, inv_freq, torch.where(slow, inv_freq / factor, middle))


def llama3_mistakes(args) -> dict:
    head_dim, theta, factor, low, high, L_old = args
    return {
        "the bands are swapped: the SLOW pairs (long wavelengths, above L / low_freq_factor) are divided by factor, "
        "the fast ones (below L / high_freq_factor) stay": lambda: llama3_variant(*args, swap_bands=True),
        "the band edges are swapped: fast pairs are those below L / high_freq_factor (the shorter wavelength), "
        "slow ones those above L / low_freq_factor": lambda: llama3_variant(*args, swap_edges=True),
        "the blend runs the wrong way: at the slow edge (L / wavelen = low_freq_factor) the weight of the "
        "unchanged value is 0, at the fast edge 1": lambda: llama3_variant(*args, invert_smooth=True),
        "the pairs between the edges were left unchanged; they are blended between inv_freq and inv_freq / factor":
            lambda: llama3_variant(*args, blend=False),
        "the wavelength is 2 pi / inv_freq (tokens per full turn); the 2 pi is missing":
            lambda: llama3_variant(*args, two_pi=False),
        "every frequency was divided by factor (that is the 'linear' scaling); llama3 keeps the fast pairs and "
        "blends the middle": lambda: R.rope_frequencies(head_dim, theta).double() / factor,
        "these are the plain frequencies, without the llama3 scaling": lambda: R.rope_frequencies(head_dim, theta),
        "the exponents are i / head_dim; they are 2i / head_dim (0, 2/D, 4/D, ...)":
            lambda: llama3_variant(*args, exponent_step=1),
    }


def _llama3_cases(rng: np.random.Generator) -> list:
    cases = [(64, 500000.0, 32.0, 1.0, 4.0, 8192), (128, 500000.0, 8.0, 1.0, 4.0, 8192)]  # Llama 3.2 1B, 3.1 8B
    while len(cases) < 12:
        head_dim = int(rng.choice([2, 4, 8, 16, 32, 64, 128]))
        theta = float(rng.choice([10000.0, 500000.0, 1e6]))
        factor = float(rng.choice([1.5, 2.0, 4.0, 8.0, 16.0, 32.0]))
        low = float(rng.choice([0.5, 1.0, 2.0]))
        high = low + float(rng.choice([1.0, 2.0, 3.0]))
        L_old = int(rng.choice([64, 256, 1024, 2048, 8192]))
        cases.append((head_dim, theta, factor, low, high, L_old))
    return cases


@exercise("ex09.llama3_frequencies", points=4, stretch=True,
          reference=("course_lib.rope.rope_frequencies", "course_lib.rope.check_rope_scaling"),
          hints=(
              "Compute the plain inverse frequencies in float32, then each pair's wavelength 2 pi / inv_freq. Two "
              "thresholds split the pairs into three bands: short wavelengths (below L / high_freq_factor) keep "
              "their frequency, long ones (above L / low_freq_factor) are divided by factor, the rest are blended.",
              "Build three candidates of shape (head_dim / 2,) — unchanged, divided by factor, blended — and choose "
              "pair by pair with boolean masks and `torch.where` (one inside the other). The blend's weight is a "
              "tensor too, computed from L / wavelen for every pair; only the middle band uses it.",
              "At the slow edge (L / wavelen == low_freq_factor) the blend equals inv_freq / factor; at the fast "
              "edge it equals inv_freq. If your curve jumps at an edge, a band or the blend's direction is "
              "swapped. Return float32 (`torch.arange(..., dtype=torch.float32)`).",
          ))
def _(fn, rng):
    for args in _llama3_cases(rng):
        head_dim, theta, factor, low, high, L_old = args
        what = (f"llama3_frequencies(head_dim={head_dim}, theta={theta:g}, factor={factor:g}, low_freq_factor={low:g}, "
                f"high_freq_factor={high:g}, original_max_position_embeddings={L_old})")
        got = expect_tensor(call(fn, *args, what=what), what)
        expected = R.rope_frequencies(head_dim, theta, {"rope_type": "llama3", "factor": factor,
                                                        "low_freq_factor": low, "high_freq_factor": high,
                                                        "original_max_position_embeddings": L_old})
        expect_dtype(got, F32, what, "inverse frequencies are float32, as transformers computes them")
        expect_values(got, expected, what, llama3_mistakes(args), rtol=1e-5, atol=0.0,
                      why_shape="(head_dim / 2,): one frequency per pair")
    for args, why in [((7, 500000.0, 32.0, 1.0, 4.0, 8192), "head_dim 7 is odd: its features do not form pairs"),
                      ((64, 500000.0, 8.0, 4.0, 1.0, 8192), "high_freq_factor 1 is not greater than low_freq_factor 4"),
                      ((64, 500000.0, 8.0, 2.0, 2.0, 8192), "high_freq_factor equals low_freq_factor (the blend would "
                                                            "divide by 0)")]:
        what = f"llama3_frequencies{args}"
        expect_error(ValueError, lambda: call(fn, *args, what=what), what, why)


# ----------------------------------------------------------------------------- stretch: interleaved -> half-split


def permute_mistakes(weight: torch.Tensor, n_heads: int) -> dict:
    rows = weight.size(0)
    D = rows // n_heads
    return {
        "this is the inverse permutation (half-split -> interleaved): row 2i + j moves TO j * D/2 + i, so the "
        "result's row j * D/2 + i is the input's row 2i + j": lambda: R.half_to_interleaved(weight, n_heads)
        if D > 4 else None,
        "the rows were permuted as one big head; each head's D rows are permuted on their own (n_heads blocks)":
            lambda: R.interleaved_to_half(weight, 1) if n_heads > 1 else None,
        "the columns were permuted; the permutation moves rows (output features) and leaves the columns alone":
            lambda: R.interleaved_to_half(weight.T, n_heads).T if weight.dim() == 2 and weight.size(1) == rows
            else None,
        "the rows are unchanged": lambda: weight if D > 2 else None,
    }


def _permute_cases(rng: np.random.Generator) -> list:
    cases = [(torch.arange(6.0)[:, None].expand(6, 3).contiguous(), 1, "the docstring's example (rows r0..r5)")]
    dtypes = [F32, F32, BF16, F64]
    for i in range(10):
        H, D, C = int(rng.integers(1, 7)), int(rng.choice([2, 4, 6, 8, 10, 16])), int(rng.integers(1, 9))
        if i == 0:
            D = int(rng.choice([6, 10]))
            C = H * D  # square: a permutation of the columns shows as values
        dtype = dtypes[i % len(dtypes)]
        if i == 2:
            weight, label = randn(rng, H * D, dtype=dtype), f"a bias ({H * D},)"
        elif i % 3 == 1:  # stored transposed
            weight = randn(rng, C, H * D, dtype=dtype).T
            label = f"weight {describe(weight)}"
        else:
            weight = randn(rng, H * D, C, dtype=dtype)
            label = f"weight {describe(weight)}"
        cases.append((weight, H, label))
    return cases


@exercise("ex09.interleaved_to_half", points=3, stretch=True,
          reference=("course_lib.rope.interleaved_to_half", "course_lib.rope.half_to_interleaved"),
          hints=(
              "The permutation acts on rows only, inside each head separately. Within a head of D rows, Meta's row "
              "2i + j (pair i, member j) becomes the Hub's row j * D/2 + i: first all the pairs' first members, "
              "then all their second members.",
              "View the rows as (n_heads, D/2, 2): indices (head, pair, member). Swapping the last two of those axes "
              "(`transpose`) and flattening back reads the members first. Either move the rows themselves that way "
              "(keeping the columns, if any, as a trailing axis), or build the list of row numbers that way and "
              "index the weight with it (works for a weight and a bias alike).",
              "Check with one head of D = 6: rows r0..r5 come out as r0, r2, r4, r1, r3, r5. If you get r0, r3, "
              "r1, r4, r2, r5, that is the inverse permutation. Raise ValueError when the rows do not split into "
              "n_heads heads of an even size.",
          ))
def _(fn, rng):
    for weight, n_heads, label in _permute_cases(rng):
        what = f"interleaved_to_half({label}, n_heads={n_heads})"
        got = expect_tensor(call(fn, weight, n_heads, what=what), what)
        expect_dtype(got, weight.dtype, what, "the result holds the weight's own rows: keep its dtype")
        expect_values(got, R.interleaved_to_half(weight, n_heads), what, permute_mistakes(weight, n_heads),
                      why_shape="the same shape as the weight: only the rows move")
    for shape, n_heads, why in [((10, 4), 3, "10 rows do not split into 3 heads"),
                                ((9, 4), 3, "3 heads of 3 rows: the head size 3 is odd")]:
        weight = randn(rng, *shape)
        what = f"interleaved_to_half(weight {shape}, n_heads={n_heads})"
        expect_error(ValueError, lambda: call(fn, weight, n_heads, what=what), what, why)

