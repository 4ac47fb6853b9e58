"""Checks for chapter 02's exercises (``exercises/ex02_layers.py``).

Every check draws random shapes and values, computes the expected answer with
``course_lib.layers`` (itself tested against ``torch.nn``), and runs the learner's
function with the ``torch.nn.functional`` shortcuts switched off, so the exercise really is
"from primitive operations".
"""

from __future__ import annotations

import numpy as np
import torch

from course_lib import layers
from course_lib.grading.registry import chapter_rules, GradeError, exercise, expect_close, expect_equal, expect_raises, forbid

SHORTCUTS = (
    "torch.nn.functional.linear", "torch.nn.functional.layer_norm", "torch.layer_norm",
    "torch.nn.functional.gelu", "torch.nn.functional.softmax", "torch.softmax", "torch.Tensor.softmax",
    "torch.special.softmax", "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.multi_head_attention_forward",
)


chapter_rules("ex02", shortcuts=SHORTCUTS)

def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


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


@exercise("ex02.linear", points=1,
          hint="x @ weight.T gives (..., out_features); add the bias only when it is not None.")
def _(fn, rng):
    for case in range(12):
        d_in, d_out = (int(n) for n in rng.integers(1, 9, size=2))
        lead = random_batch_shape(rng)
        x, weight = randn(rng, *lead, d_in), randn(rng, d_out, d_in)
        bias = None if case % 3 == 0 else randn(rng, d_out)
        what = f"linear(x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {None if bias is None else tuple(bias.shape)})"
        expect_close(call(fn, x, weight, bias, what=what), layers.linear(x, weight, bias), what)


@exercise("ex02.layer_norm", points=2,
          hint="mean and (biased) variance over dim=-1 with keepdim=True; (x - mean) / sqrt(var + eps); "
               "then * weight + bias.")
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
        expect_close(got, layers.layer_norm(x, weight, bias, eps), what, atol=2e-5, rtol=1e-5)
    x = torch.ones(2, 4) * 3.0  # constant rows: variance 0, the eps keeps it finite
    what = "layer_norm of rows whose values are all equal (variance 0), eps=1e-5"
    expect_close(call(fn, x, torch.ones(4), torch.zeros(4), 1e-5, what=what),
                 layers.layer_norm(x, torch.ones(4), torch.zeros(4), 1e-5), what)


@exercise("ex02.gelu_tanh", points=1,
          hint="0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))).")
def _(fn, rng):
    x = torch.linspace(-6, 6, 241)
    what = "gelu_tanh on torch.linspace(-6, 6, 241)"
    expect_close(call(fn, x, what=what), layers.gelu_tanh(x), what, atol=1e-6)
    for _ in range(5):
        x = randn(rng, *random_batch_shape(rng), int(rng.integers(1, 9)), scale=3.0)
        what = f"gelu_tanh(x of shape {tuple(x.shape)})"
        expect_close(call(fn, x, what=what), layers.gelu_tanh(x), what, atol=1e-6)


@exercise("ex02.stable_softmax", points=2,
          hint="Subtract the row max (keepdim=True) before exp; where the max is -inf (a fully masked "
               "row) use 0 instead, and divide only where the row sum is > 0.")
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
        if torch.isnan(got).any():
            raise GradeError(f"{what}: your result contains NaN; a row of all -inf must give zeros, "
                             f"and large scores must not overflow")
        expect_close(got, layers.softmax(scores), what, atol=1e-6)
    scores = torch.tensor([[1000.0, 1000.0], [float("-inf"), float("-inf")]])
    what = "stable_softmax([[1000., 1000.], [-inf, -inf]])"
    expect_close(call(fn, scores, what=what), torch.tensor([[0.5, 0.5], [0.0, 0.0]]), what)


@exercise("ex02.causal_mask", points=1,
          hint="Query i sits at position i + t_key - t_query; it may attend to key j when j <= that "
               "position. Compare torch.arange(t_key) with a column of query positions.")
def _(fn, rng):
    cases = [(1, 1), (3, 3), (1, 4), (2, 5)] + [tuple(sorted(int(n) for n in rng.integers(1, 12, size=2))) for _ in range(10)]
    for t_query, t_key in cases:
        what = f"causal_mask(t_query={t_query}, t_key={t_key})"
        got = call(fn, t_query, t_key, what=what)
        if got.dtype != torch.bool:
            raise GradeError(f"{what}: expected a bool tensor (True = may attend), got dtype {got.dtype}")
        expect_equal(got, layers.causal_mask(t_query, t_key), what)


@exercise("ex02.attention", points=2,
          hint="scores = q @ k.transpose(-2, -1) / sqrt(D); masked_fill(~mask, -inf); your stable_softmax; "
               "then @ v.")
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


@exercise("ex02.split_heads", points=1,
          hint="x.view(B, T, n_heads, hidden // n_heads).transpose(1, 2); raise ValueError when "
               "hidden % n_heads != 0.")
def _(fn, rng):
    for _ in range(8):
        b, t, n_heads, d = (int(n) for n in rng.integers(1, 5, size=4))
        x = randn(rng, b, t, n_heads * d)
        what = f"split_heads(x {tuple(x.shape)}, n_heads={n_heads})"
        expect_equal(call(fn, x, n_heads, what=what), layers.split_heads(x, n_heads), what)
    x = randn(rng, 2, 3, 10)
    expect_raises(ValueError, lambda: fn(x, 4), "split_heads(x (2, 3, 10), n_heads=4)", "10 is not divisible by 4")


@exercise("ex02.merge_heads", points=1,
          hint="x.transpose(1, 2) then .reshape(B, T, H * D): after a transpose the memory is not "
               "row-major any more, so .view would fail.")
def _(fn, rng):
    for _ in range(8):
        b, h, t, d = (int(n) for n in rng.integers(1, 5, size=4))
        x = layers.split_heads(randn(rng, b, t, h * d), h)  # a real (non-contiguous) split
        what = f"merge_heads(x {tuple(x.shape)})"
        expect_equal(call(fn, x, what=what), layers.merge_heads(x), what)
