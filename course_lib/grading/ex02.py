"""Checks for chapter 02's exercises (``exercises/ex02_layers.py``).

Every check draws random shapes and values, computes the expected answer with
``course_lib.layers`` (itself tested against ``torch.nn``), and runs the learner's
function with the ``torch.nn.functional`` shortcuts switched off, so the exercise really is
"from primitive operations". Hints go from the idea to a pointer, never the line; the two
stretch exercises (RMSNorm, ALiBi) compare with references the notebook never shows.
"""

from __future__ import annotations

import numpy as np
import torch

from course_lib import layers
from course_lib.grading.registry import (chapter_rules, GradeError, exercise, expect_close, expect_equal, expect_raises,
                                         forbid, randn)

SHORTCUTS = (
    "torch.nn.functional.linear", "torch.nn.functional.layer_norm", "torch.layer_norm",
    "torch.nn.functional.gelu", "torch.nn.functional.softmax", "torch.softmax", "torch.Tensor.softmax",
    "torch.special.softmax", "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.multi_head_attention_forward", "torch.nn.functional.rms_norm",
)


chapter_rules("ex02", shortcuts=SHORTCUTS)


def random_batch_shape(rng: np.random.Generator, max_ndim: int = 3) -> tuple[int, ...]:
    return tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, max_ndim + 1))))


def call(fn, *args, what: str):
    """Run the learner's function with the shortcuts switched off; check it returned a tensor."""
    with forbid(*SHORTCUTS):
        out = fn(*args)
    if not isinstance(out, torch.Tensor):
        raise GradeError(f"{what}: expected a torch.Tensor, got {type(out).__name__}")
    return out


def unchanged(inputs: dict[str, torch.Tensor], copies: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in inputs.items():
        if not torch.equal(tensor, copies[name]):
            raise GradeError(f"{what}: your function changed its input `{name}` in place; "
                             f"return a new tensor instead (avoid `+=`, `.sub_()`, ...)")


def named_mistake(got: torch.Tensor, mistakes: dict[str, torch.Tensor], atol: float, rtol: float) -> str | None:
    """The description of the first typical mistake whose result ``got`` reproduces, if any."""
    for why, wrong in mistakes.items():
        if got.shape == wrong.shape and torch.allclose(got.double(), wrong.double(), atol=atol, rtol=rtol):
            return why
    return None


def expect_close_or_name_mistake(got, expected, what: str, mistakes: dict[str, torch.Tensor],
                                 atol: float, rtol: float) -> None:
    """``expect_close``; when it fails and ``got`` is a known mistake, the message names it."""
    try:
        expect_close(got, expected, what, atol=atol, rtol=rtol)
    except GradeError as err:
        why = named_mistake(got, mistakes, atol, rtol)
        if why is None:
            raise
        raise GradeError(f"{err}\n  It looks like {why}.") from None


@exercise("ex02.linear", points=1, reference="course_lib.layers.linear", hints=(
    "Output feature i is the dot product of the input vector with row i of the weight, plus bias[i]; the "
    "weight is stored (out_features, in_features).",
    "One matrix product with the weight turned round (its transpose) does every row at once; `@` broadcasts "
    "over the leading dimensions, and so does adding a (out_features,) bias.",
    "`bias` may be None (a layer without bias): add it only when there is one."))
def _(fn, rng):
    for case in range(12):
        d_in, d_out = (int(n) for n in rng.integers(1, 9, size=2))
        lead = random_batch_shape(rng)
        x, weight = randn(rng, *lead, d_in), randn(rng, d_out, d_in)
        bias = None if case % 3 == 0 else randn(rng, d_out)
        what = f"linear(x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {None if bias is None else tuple(bias.shape)})"
        expect_close(call(fn, x, weight, bias, what=what), layers.linear(x, weight, bias), what)


@exercise("ex02.layer_norm", points=2, reference="course_lib.layers.layer_norm", hints=(
    "Each vector along the last dimension is normalised on its own: subtract its mean, divide by its "
    "standard deviation, then scale by `weight` and shift by `bias`.",
    "Take the mean and the variance over dim=-1 with keepdim=True, so they keep a dimension of size 1 and "
    "broadcast back; the variance is the mean of the squared deviations (biased: divide by d, not d - 1).",
    "`eps` is added to the variance *inside* the square root; that is what keeps a row of equal values "
    "(variance 0) finite."))
def _(fn, rng):
    for case in range(15):
        d = int(rng.integers(2, 17))
        x = randn(rng, *random_batch_shape(rng), d, scale=float(rng.uniform(0.1, 10))) + float(rng.normal() * 3)
        weight, bias = randn(rng, d), randn(rng, d)
        eps = [1e-5, 1e-12, 1e-3][case % 3]
        what = f"layer_norm(x {tuple(x.shape)}, weight, bias, eps={eps:g})"
        copies = {"x": x.clone(), "weight": weight.clone(), "bias": bias.clone()}
        got = call(fn, x, weight, bias, eps, what=what)
        unchanged({"x": x, "weight": weight, "bias": bias}, copies, what)
        centred = x - x.mean(-1, keepdim=True)
        mistakes = {
            "the unbiased variance (divided by d - 1); LayerNorm divides by d":
                centred / torch.sqrt(x.var(-1, unbiased=True, keepdim=True) + eps) * weight + bias,
            "eps is added outside the square root; it goes inside, added to the variance":
                centred / (x.var(-1, unbiased=False, keepdim=True).sqrt() + eps) * weight + bias,
            "weight and bias are missing: scale by `weight`, then shift by `bias`": layers.layer_norm(x, None, None, eps),
            "the mean and variance were taken over the first dimension; each vector along the *last* one is "
            "normalised on its own": (x - x.mean(0, keepdim=True)) / torch.sqrt(
                x.var(0, unbiased=False, keepdim=True) + eps) * weight + bias,
        }
        expect_close_or_name_mistake(got, layers.layer_norm(x, weight, bias, eps), what, mistakes, atol=2e-5, rtol=1e-5)
    x = torch.ones(2, 4) * 3.0  # constant rows: variance 0, the eps keeps it finite
    what = "layer_norm of rows whose values are all equal (variance 0), eps=1e-5"
    expect_close(call(fn, x, torch.ones(4), torch.zeros(4), 1e-5, what=what),
                 layers.layer_norm(x, torch.ones(4), torch.zeros(4), 1e-5), what)


@exercise("ex02.gelu_tanh", points=1, reference="course_lib.layers.gelu_tanh", hints=(
    "GELU is x times a smooth step that goes from 0 (very negative x) to 1 (large x); GPT-2 builds that "
    "step from tanh, shifted and halved so it runs from 0 to 1.",
    "Translate the formula term by term: the constant sqrt(2/pi) is a plain Python float (`math`), the "
    "tanh must act on a tensor element by element (`torch.tanh`).",
    "x cubed is element-wise; keep 0.044715 exactly: the curve must match GPT-2's to 1e-6, and the exact "
    "(erf) GELU differs from it by up to 5e-4."))
def _(fn, rng):
    x = torch.linspace(-6, 6, 241)
    what = "gelu_tanh on torch.linspace(-6, 6, 241)"
    expect_close(call(fn, x, what=what), layers.gelu_tanh(x), what, atol=1e-6)
    for _ in range(5):
        x = randn(rng, *random_batch_shape(rng), int(rng.integers(1, 9)), scale=3.0)
        what = f"gelu_tanh(x of shape {tuple(x.shape)})"
        expect_close(call(fn, x, what=what), layers.gelu_tanh(x), what, atol=1e-6)


@exercise("ex02.stable_softmax", points=2, reference="course_lib.layers.softmax", hints=(
    "exp of a large score overflows to inf. Softmax does not change when the same number is subtracted from "
    "every score of a row, so shift each row by its largest score: the largest exponent is then exp(0) = 1.",
    "`amax` over the last dim with keepdim=True gives each row's maximum in a shape that broadcasts. A row "
    "that is all -inf has maximum -inf, and -inf - (-inf) is NaN: shift such rows by 0 instead "
    "(`torch.where` or `masked_fill` on the maxima).",
    "In an all -inf row every exp is 0, so its sum is 0 too: divide by the sum only where it is positive "
    "(e.g. put 1 where it is 0), and 0 / 1 gives the zeros you want."))
def _(fn, rng):
    for case in range(12):
        n = int(rng.integers(1, 10))
        scores = randn(rng, *random_batch_shape(rng), n, scale=float(rng.choice([1.0, 10.0, 1000.0])))
        if case % 2:  # mask some entries, and sometimes whole rows
            masked = torch.from_numpy(rng.random(scores.shape) < 0.4)
            if scores.ndim > 1 and case % 4 == 1:
                masked[..., 0, :] = True
            scores = scores.masked_fill(masked, float("-inf"))
        what = f"stable_softmax(scores of shape {tuple(scores.shape)}, values up to {float(scores[scores.isfinite()].abs().max()) if scores.isfinite().any() else 0:.0f}"
        what += ", with -inf entries)" if case % 2 else ")"
        got = call(fn, scores.clone(), what=what)
        if got.shape == scores.shape and torch.isnan(got).any():
            all_masked = torch.isinf(scores).all(-1) & (scores < 0).all(-1)  # rows that may attend nowhere
            if torch.isnan(got[all_masked]).any():
                raise GradeError(f"{what}: your result contains NaN in a row whose scores are all -inf: its maximum "
                                 f"is -inf and -inf - (-inf) is NaN; such a row must come out as zeros")
            raise GradeError(f"{what}: your result contains NaN: large scores must not overflow (exp(89.) is "
                             f"already inf in float32)")
        expect_close(got, layers.softmax(scores), what, atol=1e-6)
    scores = torch.tensor([[1000.0, 1000.0], [float("-inf"), float("-inf")]])
    what = "stable_softmax([[1000., 1000.], [-inf, -inf]])"
    got = call(fn, scores, what=what)
    if got.shape == scores.shape and torch.isnan(got[0]).any():
        raise GradeError(f"{what}: the row [1000., 1000.] gives NaN: exp(1000.) overflows to inf; shift each row by "
                         f"its largest score first")
    if got.shape == scores.shape and torch.isnan(got[1]).any():
        raise GradeError(f"{what}: the row of all -inf gives NaN: its maximum is -inf and -inf - (-inf) is NaN; such "
                         f"a row must come out as zeros")
    expect_close(got, torch.tensor([[0.5, 0.5], [0.0, 0.0]]), what)


@exercise("ex02.causal_mask", points=1, reference="course_lib.layers.causal_mask", hints=(
    "True = may attend. A query sees every key at or before its own position, none after it. The queries "
    "are the last t_query of t_key positions, so query i sits at position i + t_key - t_query.",
    "Make a column of the queries' positions, shape (t_query, 1), and a row of the keys' positions, shape "
    "(1, t_key), with `torch.arange`; one comparison between them broadcasts to the whole (t_query, t_key) "
    "table of bools.",
    "Try yours on causal_mask(1, 4) (the one query is at position 3 and sees all 4 keys) and "
    "causal_mask(3, 3) (the diagonal is True: a token sees itself)."))
def _(fn, rng):
    cases = [(1, 1), (3, 3), (1, 4), (2, 5)] + [tuple(sorted(int(n) for n in rng.integers(1, 12, size=2))) for _ in range(10)]
    for t_query, t_key in cases:
        what = f"causal_mask(t_query={t_query}, t_key={t_key})"
        got = call(fn, t_query, t_key, what=what)
        if got.dtype != torch.bool:
            raise GradeError(f"{what}: expected a bool tensor (True = may attend), got dtype {got.dtype}")
        expect_equal(got, layers.causal_mask(t_query, t_key), what)


@exercise("ex02.attention", points=2, reference="course_lib.layers.scaled_dot_product_attention", hints=(
    "Each query scores every key with a dot product, divided by sqrt(D); keys the mask forbids get the "
    "score -inf; the softmax of a query's scores weights the values, and the weighted sum is its output.",
    "All queries against all keys is one matrix product with the keys' last two dimensions swapped "
    "(`transpose(-2, -1)`), giving (B, H, Tq, Tk). `masked_fill` writes -inf where you pass True, and the "
    "mask is True where attending is *allowed*.",
    "Call the stable_softmax you wrote above (it is in the same file): a query whose keys are all masked "
    "then gets zeros instead of NaN. Then one more matrix product with v."))
def _(fn, rng):
    for case in range(10):
        b, h, tq, d = (int(n) for n in rng.integers(1, 4, size=4))
        tk = tq + int(rng.integers(0, 3))
        d *= 4
        q, k, v = randn(rng, b, h, tq, d), randn(rng, b, h, tk, d), randn(rng, b, h, tk, d)
        kind = ["no mask", "causal", "padding", "padding + causal"][case % 4]
        mask = None
        if kind != "no mask":
            mask = torch.ones(b, 1, tq, tk, dtype=torch.bool)
            if "padding" in kind:
                lengths = torch.from_numpy(rng.integers(1, tk + 1, size=b))
                attention_mask = (torch.arange(tk)[None, :] < lengths[:, None]).long()
                mask = mask & layers.padding_mask(attention_mask)
            if "causal" in kind:
                mask = mask & layers.causal_mask(tq, tk)
        what = f"attention(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, mask: {kind})"
        got = call(fn, q, k, v, mask, what=what)
        if torch.isnan(got).any():
            raise GradeError(f"{what}: your result contains NaN (a query with every key masked must give zeros)")
        expect_close(got, layers.scaled_dot_product_attention(q, k, v, mask), what, atol=1e-5)
    # A query that may attend to no key at all (e.g. a padding position under a custom mask).
    q, k, v = randn(rng, 2, 2, 3, 8), randn(rng, 2, 2, 4, 8), randn(rng, 2, 2, 4, 8)
    mask = torch.from_numpy(rng.random((2, 1, 3, 4)) < 0.7)
    mask[:, :, int(rng.integers(0, 3)), :] = False
    what = "attention(q (2, 2, 3, 8), k (2, 2, 4, 8), v (2, 2, 4, 8), a mask where one query may attend to no key)"
    got = call(fn, q, k, v, mask, what=what)
    if torch.isnan(got).any():
        raise GradeError(f"{what}: your result contains NaN; a query with every key masked must give zeros")
    expect_close(got, layers.scaled_dot_product_attention(q, k, v, mask), what, atol=1e-5)


@exercise("ex02.split_heads", points=1, reference="course_lib.layers.split_heads", hints=(
    "Head h owns features h*D to (h+1)*D - 1 of every token, D = hidden / n_heads. So: cut the last "
    "dimension into (n_heads, D), then move the head dimension in front of the time dimension.",
    "`view` (or `reshape`) cuts one dimension into two without copying; `transpose` swaps two dimensions "
    "and is a view too. Check the order of your result: (B, n_heads, T, D).",
    "Raise the ValueError before reshaping when the hidden size does not divide by n_heads. Cutting the "
    "last dimension as (D, n_heads) instead gives each head every n-th feature: the wrong layout."))
def _(fn, rng):
    for _ in range(8):
        b, t, n_heads, d = (int(n) for n in rng.integers(1, 5, size=4))
        x = randn(rng, b, t, n_heads * d)
        what = f"split_heads(x {tuple(x.shape)}, n_heads={n_heads})"
        expect_equal(call(fn, x, n_heads, what=what), layers.split_heads(x, n_heads), what)
    x = randn(rng, 2, 3, 10)
    expect_raises(ValueError, lambda: fn(x, 4), "split_heads(x (2, 3, 10), n_heads=4)", "10 is not divisible by 4")


@exercise("ex02.merge_heads", points=1, reference="course_lib.layers.merge_heads", hints=(
    "Undo split_heads in reverse order: first move the time dimension back in front of the heads, then "
    "join (n_heads, D) into one dimension of n_heads * D.",
    "After a transpose the memory is no longer row-major, so `view` refuses to join dimensions; "
    "`reshape` (or `.contiguous()` first) copies when it must."))
def _(fn, rng):
    for _ in range(8):
        b, h, t, d = (int(n) for n in rng.integers(1, 5, size=4))
        x = layers.split_heads(randn(rng, b, t, h * d), h)  # a real (non-contiguous) split
        what = f"merge_heads(x {tuple(x.shape)})"
        expect_equal(call(fn, x, what=what), layers.merge_heads(x), what)


# ----------------------------------------------------------------------------- stretch exercises

@exercise("ex02.rms_norm", points=3, stretch=True, reference="course_lib.layers.rms_norm", hints=(
    "RMSNorm is LayerNorm without the centring: divide each vector along the last dimension by its root "
    "mean square (the square root of the mean of its squares), then scale by `weight`. No mean is "
    "subtracted, and there is no bias.",
    "The mean of the squares over dim=-1 with keepdim=True keeps a dimension of size 1 that broadcasts "
    "back; `eps` is added to that mean inside the square root.",
    "Not the standard deviation: a row whose values are all 3 has root mean square 3 (it normalises to "
    "ones), while its standard deviation is 0."))
def _(fn, rng):
    cases = []
    for case in range(15):
        d = int(rng.integers(2, 17))
        scale = float(rng.choice([0.05, 1.0, 10.0]))
        x = randn(rng, *random_batch_shape(rng), d, scale=scale) + float(rng.normal()) * scale
        cases.append((x, randn(rng, d), [1e-6, 1e-5, 1e-3][case % 3]))
    cases.append((torch.full((2, 4), 3.0), torch.ones(4), 1e-6))  # a constant row: RMS 3, standard deviation 0
    for x, weight, eps in cases:
        what = f"rms_norm(x {tuple(x.shape)}, weight {tuple(weight.shape)}, eps={eps:g})"
        copies = {"x": x.clone(), "weight": weight.clone()}
        got = call(fn, x, weight, eps, what=what)
        unchanged({"x": x, "weight": weight}, copies, what)
        if torch.isnan(got).any():
            raise GradeError(f"{what}: your result contains NaN")
        root_mean_square = (x * x).mean(-1, keepdim=True).sqrt()
        mistakes = {
            "LayerNorm: you subtracted the mean; RMSNorm divides x itself by its root mean square":
                layers.layer_norm(x, weight, None, eps),
            "you divided by the standard deviation (the deviations from the mean), not the root mean square of "
            "x itself": x / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * weight,
            "eps is added outside the square root; it goes inside, added to the mean of the squares":
                x / (root_mean_square + eps) * weight,
            "the weight is missing: scale the normalised vector by `weight`": layers.rms_norm(x, None, eps),
            "you used the sum of the squares, not their mean": x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps) * weight,
        }
        expect_close_or_name_mistake(got, layers.rms_norm(x, weight, eps), what, mistakes, atol=2e-5, rtol=1e-5)


def _alibi_like(n_heads: int, t_query: int, t_key: int, exponents: list[float], query_offset: bool = True,
                absolute_keys: bool = False) -> torch.Tensor:
    """An ALiBi-like bias with the given slope exponents (base 2), for the messages on typical mistakes."""
    slopes = torch.tensor([2.0 ** e for e in exponents], dtype=torch.float64)[:n_heads]
    first = t_key - t_query if query_offset else 0
    query_pos = torch.arange(first, first + t_query, dtype=torch.float64)[:, None]
    key_pos = torch.arange(t_key, dtype=torch.float64)[None, :]
    offset = key_pos if absolute_keys else key_pos - query_pos
    return slopes[:, None, None] * offset


def _alibi_exponents(n_heads: int, odd: bool = True, start: int = 1, n0: int | None = None) -> list[float]:
    n0 = n0 or 1 << (n_heads.bit_length() - 1)
    first = [-8.0 * (h + start) / n0 for h in range(n0)]
    extra = [-8.0 * ((2 * h + 1) if odd else (2 * h + 2)) / (2 * n0) for h in range(n_heads - n0)]
    return first + extra


@exercise("ex02.alibi_bias", points=3, stretch=True,
          reference=("course_lib.layers.alibi_bias", "course_lib.layers.alibi_slopes"), hints=(
    "ALiBi gives each head a slope m and adds m times (key position - query position) to its attention "
    "scores: 0 for the query's own position, more and more negative for keys further back.",
    "Start with the slopes, a Python list: for a power of two n, m_h = 2 ** (-8 (h + 1) / n) with h from 0. "
    "For other head counts, n0 = the largest power of two below: n0 such slopes, then 2 ** (-8 k / (2 n0)) "
    "for k = 1, 3, 5, ... until there are n_heads.",
    "Query i sits at position i + t_key - t_query (as in causal_mask). Build the (t_query, t_key) table of "
    "offsets from two `torch.arange`s that broadcast, and the slopes as a (n_heads, 1, 1) tensor."))
def _(fn, rng):
    cases = [(4, 3, 3), (1, 2, 3), (6, 2, 5), (8, 1, 6), (3, 4, 4), (12, 3, 7)]
    for _ in range(10):
        t_query = int(rng.integers(1, 8))
        cases.append((int(rng.integers(1, 21)), t_query, t_query + int(rng.integers(0, 5))))
    for n_heads, t_query, t_key in cases:
        what = f"alibi_bias(n_heads={n_heads}, t_query={t_query}, t_key={t_key})"
        got = call(fn, n_heads, t_query, t_key, what=what)
        if not got.is_floating_point():
            raise GradeError(f"{what}: expected a float tensor, got dtype {got.dtype} (the slopes are fractions)")
        expected = layers.alibi_bias(n_heads, t_query, t_key)
        right = _alibi_exponents(n_heads)
        mistakes = {
            "the sign is flipped: keys further back must get lower scores (a negative bias)":
                -_alibi_like(n_heads, t_query, t_key, right),
            "the queries were placed at positions 0 .. t_query-1; they are the last t_query of the t_key "
            "positions, so query i sits at i + t_key - t_query (as in causal_mask)":
                _alibi_like(n_heads, t_query, t_key, right, query_offset=False),
            "the bias uses the key's position j alone (BLOOM's shortcut, equal after the softmax); here it is "
            "the offset from the query, 0 at the query's own position":
                _alibi_like(n_heads, t_query, t_key, right, absolute_keys=True),
            "the slopes start one step too early: head 0's slope is 2 ** (-8 / n), not 1":
                _alibi_like(n_heads, t_query, t_key, _alibi_exponents(n_heads, start=0)),
            f"the slopes for {n_heads} heads (not a power of two) were spread as 2 ** (-8 (h + 1) / {n_heads}); "
            "take the slopes of the largest power of two below, then the odd steps of twice that":
                _alibi_like(n_heads, t_query, t_key, [-8.0 * (h + 1) / n_heads for h in range(n_heads)]),
            "the extra heads took the even steps of 2 n0 (those repeat slopes you already have); they take the "
            "odd steps, k = 1, 3, 5, ...": _alibi_like(n_heads, t_query, t_key, _alibi_exponents(n_heads, odd=False)),
        }
        expect_close_or_name_mistake(got, expected, what, mistakes, atol=1e-6, rtol=1e-5)
