"""Checks for chapter 06's exercises (``exercises/ex06_gpt2.py``).

Inputs are random: mask sizes with and without a cache offset, left-padded attention
masks, GPT-2 attention modules with random ``c_attn`` weights, logits with and without
ties, queries, keys and values, seeded ``torch.Generator`` objects, token histories with
repeats, and a small random "language model" whose next token depends on the whole
prefix. Expected answers come from ``course_lib.layers`` (``causal_mask``,
``scaled_dot_product_attention``), ``course_lib.generation`` (``top_k_filter``,
``top_p_filter``, ``next_token``, ``LayerKVCache``, ``generate_ids``, and for the stretch
exercises ``min_p_filter`` and ``apply_repetition_penalty``) and ``course_lib.models.gpt2``
(``GPT2Attention``'s own q/k/v split, ``gpt2_position_ids``, ``gpt2_attention_mask``),
themselves tested in ``tests/test_gpt2.py`` (the stretch references against
``transformers``' logits processors) and against ``transformers`` in
``tests/test_gpt2_parity.py``. Those are switched off while the learner's code runs.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from course_lib import generation, layers
from course_lib.grading.registry import (GradeError, call_learner, chapter_rules, exercise, expect_close, expect_equal,
                                         expect_tensor, expect_tensors, randn)
from course_lib.models import gpt2

ANSWER_KEY = ("course_lib.layers.causal_mask",) + tuple(
    f"course_lib.generation.{name}" for name in (
        "LayerKVCache", "KVCache", "top_k_filter", "top_p_filter", "min_p_filter", "apply_repetition_penalty",
        "is_sampling", "next_token", "generate_ids", "generate")) + tuple(
    f"course_lib.models.gpt2.{name}" for name in (
        "gpt2_position_ids", "gpt2_attention_mask", "GPT2Attention", "GPT2Block", "GPT2Model", "GPT2LMHeadModel"))


chapter_rules("ex06", allow=("course_lib.layers",), refuse=("course_lib.layers.causal_mask",))


def call(fn, *args, what: str):
    """Run the learner's function with the answer key switched off; it must leave its input
    tensors as they were. Returns whatever the function returned."""
    return call_learner(fn, args, what, ANSWER_KEY, "; course_lib.generation and course_lib.models.gpt2 are the "
                        "answer key, and so is course_lib.layers.causal_mask (torch and the rest of "
                        "course_lib.layers are fine)", "`/=`, `.masked_fill_()`, assigning into the logits or the "
                        "cache ...")


tensor, tensors = expect_tensor, expect_tensors


def integer(out: torch.Tensor, what: str) -> torch.Tensor:
    if out.is_floating_point() or out.dtype == torch.bool:
        raise GradeError(f"{what}: token ids and positions index embedding tables, so they must be integers "
                         f"(torch.long); got dtype {out.dtype}")
    return out


def show(t: torch.Tensor) -> str:
    """A tensor's values when it is small, its shape otherwise."""
    return str(t.tolist()) if t.numel() <= 24 else f"of shape {tuple(t.shape)}"


def batch_dims(rng: np.random.Generator, most: int = 2) -> tuple[int, ...]:
    return tuple(int(n) for n in rng.integers(1, 4, size=int(rng.integers(0, most + 1))))


# ----------------------------------------------------------------------------- attention


@exercise("ex06.causal_mask", points=1, reference="course_lib.layers.causal_mask", hints=(
    "The queries are the *last* t_query of the t_key tokens, so query i sits at absolute position "
    "i + (t_key - t_query); it may see every key at or before that position, and none after.",
    "Make a column of query indices and a row of key indices with `torch.arange`; comparing them broadcasts to a "
    "(t_query, t_key) bool tensor. (A `tril` works too, once you find the right `diagonal`.)",
    "A plain lower triangle is only right when t_query == t_key: try yours on causal_mask(2, 4), whose first row "
    "must be [True, True, True, False]."))
def _(fn, rng):
    cases = [(3, 3), (2, 4), (1, 5), (1, 1)]
    for case in range(20):
        t_query = int(rng.integers(1, 9))
        offset = [0, 0, int(rng.integers(1, 9))][case % 3]
        cases.append((1 if case % 5 == 4 else t_query, t_query + offset))
    for t_query, t_key in cases:
        what = f"causal_mask({t_query}, {t_key})"
        got = tensor(call(fn, t_query, t_key, what=what), what)
        if got.dtype != torch.bool:
            raise GradeError(f"{what}: expected a bool mask (True = may attend, as masked_fill and "
                             f"scaled_dot_product_attention want it), got dtype {got.dtype}")
        expect_equal(got, layers.causal_mask(t_query, t_key), what)


def _gpt2_split(rng: np.random.Generator, b: int, t: int, h: int, d: int):
    """A GPT2Attention with random c_attn weights, a random input, c_attn's output, and the q, k, v
    (B, H, T, D) that the module's own forward hands to its attention function."""
    c = h * d
    config = gpt2.GPT2Config(vocab_size=8, n_positions=16, n_embd=c, n_layer=1, n_head=h, attn_pdrop=0.0,
                             resid_pdrop=0.0, embd_pdrop=0.0)
    module = gpt2.GPT2Attention(config).eval()
    with torch.no_grad():
        module.c_attn.weight.copy_(randn(rng, 3 * c, c, scale=1 / np.sqrt(c)))
        module.c_attn.bias.copy_(randn(rng, 3 * c, scale=0.5))
    seen = {}

    def capture(q, k, v, mask=None, **kwargs):
        seen["qkv"] = (q.clone(), k.clone(), v.clone())
        return torch.zeros_like(q)

    module.attention_fn = capture
    x = randn(rng, b, t, c)
    with torch.no_grad():
        c_attn_out = module.c_attn(x)  # (B, T, 3C)
        module(x)
    return c_attn_out, seen["qkv"]


@exercise("ex06.split_qkv", points=1, reference="course_lib.models.gpt2.GPT2Attention", hints=(
    "c_attn's output is three C-wide blocks side by side: every query feature, then every key feature, then every "
    "value feature. Separate the three blocks first, then cut each one into heads.",
    "`Tensor.split` (or `chunk`) on the last axis gives three (B, T, C) tensors; chapter 04's head split (a view "
    "to (B, T, H, D), then swap the token and head axes, or `course_lib.layers.split_heads`) does the rest.",
    "Reshaping (B, T, 3C) into heads before separating q, k and v mixes them inside each head; viewing (B, T, C) "
    "straight as (B, H, T, D), without swapping axes, mixes tokens and heads."))
def _(fn, rng):
    for case in range(10):
        b, t, h, d = (2, 5, 3, 4) if case == 0 else (
            int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(1, 5)), int(rng.integers(1, 6)))
        c_attn_out, expected = _gpt2_split(rng, b, t, h, d)
        what = f"split_qkv(c_attn_out {tuple(c_attn_out.shape)}, n_head={h})"
        got = tensors(call(fn, c_attn_out, h, what=what), 3, what)
        for name, g, e in zip("qkv", got, expected):
            expect_close(g, e, f"{what}, {name}")


# ----------------------------------------------------------------------------- the generation loop


class _ToyModel(nn.Module):
    """A callable "language model" in the shape ``generation.generate_ids`` wants, around ``logits_fn``."""

    def __init__(self, logits_fn):
        super().__init__()
        self.logits_fn = logits_fn
        self.config = types.SimpleNamespace(n_layer=0, eos_token_id=None)
        self.anchor = nn.Parameter(torch.zeros(1))  # generate_ids reads the device from a parameter

    def forward(self, input_ids, attention_mask=None, kv_cache=None, last_only=False):
        logits = self.logits_fn(input_ids)
        return logits[:, -1:] if last_only else logits


def toy_logits_fn(rng: np.random.Generator, vocab: int):
    """ids (B, T) -> logits (B, T, V) that depend on the token at t *and* on every token before it."""
    now, past = randn(rng, vocab, vocab, scale=2.0), randn(rng, vocab, vocab, scale=2.0)

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        one_hot = torch.nn.functional.one_hot(ids, vocab).float()  # (B, T, V)
        seen = one_hot.cumsum(1) / torch.arange(1, ids.size(1) + 1)[:, None]  # (B, T, V) the prefix's token mix
        return one_hot @ now + seen @ past  # (B, T, V)

    return logits_fn


@exercise("ex06.greedy_generate", points=2, reference="course_lib.generation.generate_ids", hints=(
    "Repeat max_new_tokens times: run the model on every token so far, look at the scores of the *last* position "
    "only, pick each row's best token, append it.",
    "logits_fn gives (B, T, V); the last position is index -1 of the token axis; `argmax` over the vocabulary "
    "gives one token per row, (B,); a new column is appended with `torch.cat` along axis 1 (it needs shape "
    "(B, 1)).",
    "There is no cache: feed *all* the ids back every step, not only the newest. Return the prompt followed by "
    "the new tokens."))
def _(fn, rng):
    for case in range(8):
        vocab = int(rng.integers(5, 21))
        b, t0 = int(rng.integers(1, 4)), int(rng.integers(1, 6))
        new_tokens = 0 if case == 7 else int(rng.integers(1, 7))
        logits_fn = toy_logits_fn(rng, vocab)
        ids = torch.from_numpy(rng.integers(0, vocab, size=(b, t0))).long()
        what = (f"greedy_generate(a random model with V={vocab}, input_ids={ids.tolist()}, "
                f"max_new_tokens={new_tokens})")
        got = integer(tensor(call(fn, logits_fn, ids, new_tokens, what=what), what), what)
        expected = generation.generate_ids(_ToyModel(logits_fn), ids, new_tokens, use_cache=False, eos_token_id=[])
        expect_equal(got, expected, what)


# ----------------------------------------------------------------------------- choosing a token


def _logits_with_ties(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(rng.integers(-3, 3, size=shape).astype(np.float32))


@exercise("ex06.top_k_filter", points=2, reference="course_lib.generation.top_k_filter", hints=(
    "Find each row's k-th highest logit: everything strictly below it becomes -inf, everything at or above it "
    "stays, so logits tied with the k-th all stay.",
    "`torch.topk` along the last axis returns the k best values in order: the last one is the threshold. Keep its "
    "axis (shape (..., 1)) so that it broadcasts against the row, then `masked_fill` with float('-inf').",
    "k may be larger than V (then nothing is dropped, but topk refuses k > V). Return a new tensor: the input "
    "logits must stay as they were."))
def _(fn, rng):
    cases = [(torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0]), 2), (torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0]), 3),
             (torch.tensor([[0.5, -1.0, 2.0]]), 5)]
    for case in range(24):
        v = int(rng.integers(1, 13))
        shape = (*batch_dims(rng), v)
        logits = _logits_with_ties(rng, shape) if case % 2 else randn(rng, *shape, scale=2.0)
        k = [int(rng.integers(1, v + 1)), int(rng.integers(1, v + 1)), v, v + int(rng.integers(1, 4))][case % 4]
        cases.append((logits, k))
    for logits, k in cases:
        what = f"top_k_filter(logits {show(logits)}, k={k})"
        got = tensor(call(fn, logits, k, what=what), what)
        expect_equal(got, generation.top_k_filter(logits, k), what)


@exercise("ex06.top_p_filter", points=2, reference="course_lib.generation.top_p_filter", hints=(
    "Rank the tokens from most to least probable. A token is dropped when the tokens ranked *above* it already "
    "hold at least p of the probability; the top token has nothing above it, so it always stays.",
    "`torch.sort(..., descending=True)` gives the sorted logits and the permutation. A cumulative sum of the "
    "sorted probabilities includes each token itself: take its own probability out to get what lies above it.",
    "Your drop decisions are in sorted order: send them back to vocabulary order through the sort's indices "
    "(`scatter` puts value i at position order[i]; `gather` would apply the permutation the wrong way round), "
    "then fill with -inf."))
def _(fn, rng):
    cases = [(torch.log(torch.tensor([0.1, 0.5, 0.3, 0.1])), 0.7), (torch.tensor([[2.0, 1.0, 0.0]]), 1.0),
             (torch.tensor([[2.0, 1.0, 0.0]]), 1e-6)]
    for case in range(24):
        v = int(rng.integers(1, 31))
        shape = (*batch_dims(rng), v)
        logits = randn(rng, *shape, scale=float(rng.choice([0.5, 1.0, 2.0])))
        if case % 3 == 2 and v > 1:  # some logits already -inf (a top-k filter ran first); never a whole row
            dropped = torch.from_numpy(rng.random(shape) < 0.4)
            dropped[..., int(rng.integers(0, v))] = False
            logits = logits.masked_fill(dropped, float("-inf"))
        p = [1.0, 1e-6, float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.3, 0.99))][case % 4]
        cases.append((logits, p))
    for logits, p in cases:
        what = f"top_p_filter(logits {show(logits)}, p={p:g})"
        got = tensor(call(fn, logits, p, what=what), what)
        expect_equal(got, generation.top_p_filter(logits, p), what)


@exercise("ex06.sample_with_temperature", points=2, reference="course_lib.generation.next_token", hints=(
    "Divide the logits by the temperature *before* the softmax (T < 1 sharpens, T > 1 flattens), then draw one "
    "token per row from those probabilities with the generator you were given.",
    "`torch.softmax` over the vocabulary axis, then `torch.multinomial` with one sample per row and "
    "`generator=`: a single call for the whole (B, V) batch.",
    "multinomial returns (B, 1): drop the last axis. Draw exactly once: an extra draw advances the generator, and "
    "the grader compares the generator's state with the course's."))
def _(fn, rng):
    for case, temperature in enumerate([1.0, 0.5, 2.0, 1.7, 0.8, 3.0]):
        b, v = int(rng.integers(32, 65)), int(rng.integers(2, 21))
        logits = randn(rng, b, v, scale=1.5)
        seed = int(rng.integers(0, 2**31))
        mine, reference = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        what = f"sample_with_temperature(logits {tuple(logits.shape)}, temperature={temperature:g}, generator)"
        got = tensor(call(fn, logits, temperature, mine, what=what), what)
        expected = generation.next_token(logits, temperature, generator=reference, sample=True)  # (B,)
        if got.shape != expected.shape:
            raise GradeError(f"{what}: expected shape {tuple(expected.shape)} (one token per row), got shape "
                             f"{tuple(got.shape)}")
        integer(got, what)
        if bool(((got < 0) | (got >= v)).any()):
            raise GradeError(f"{what}: every token must be a column index of the logits, 0 to {v - 1}; got "
                             f"values from {int(got.min())} to {int(got.max())}")
        if not torch.equal(got.long(), expected):
            bad = int((got.long() != expected).sum())
            raise GradeError(f"{what}: {bad} of {b} rows drew a different token than the course's code with a "
                             f"generator seeded alike ({seed}); first rows: expected {expected[:8].tolist()}, got "
                             f"{got[:8].tolist()}. Sample from softmax(logits / temperature) with "
                             f"torch.multinomial(..., generator=generator), not argmax")
        if not torch.equal(mine.get_state(), reference.get_state()):
            raise GradeError(f"{what}: the tokens are right, but your function used the generator differently "
                             f"(drew more or fewer random numbers): call torch.multinomial once, on all rows")


# ----------------------------------------------------------------------------- the KV cache


def _reference_step(q, k_cache, v_cache, k_new, v_new):
    cache = generation.LayerKVCache()
    cache.append(k_cache, v_cache)
    k_all, v_all = cache.append(k_new, v_new)  # (B, H, P + 1, D)
    return layers.scaled_dot_product_attention(q, k_all, v_all), k_all.clone(), v_all.clone()


@exercise("ex06.kv_cache_step", points=2, reference="course_lib.generation.LayerKVCache", hints=(
    "The new token's key and value join the cache at its end; then the new query attends to all P + 1 keys. It is "
    "the newest token, so no key lies in its future: no mask.",
    "Concatenate along the token axis (axis 2 of (B, H, P, D)); then chapter 02's attention: q against every key, "
    "scaled by 1/sqrt(D), softmax over the keys, weighted sum of the values "
    "(`course_lib.layers.scaled_dot_product_attention` is allowed).",
    "Return the grown keys and values as well: they are the next step's cache, cached tokens first and the new "
    "one last."))
def _(fn, rng):
    for case in range(8):  # one step, random sizes, P = 0 included
        b, h, d = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 9))
        p = 7 if case == 0 else (0 if case == 1 else int(rng.integers(1, 10)))
        q, k_new, v_new = (randn(rng, b, h, 1, d, scale=1.5) for _ in range(3))
        k_cache, v_cache = randn(rng, b, h, p, d, scale=1.5), randn(rng, b, h, p, d)
        what = (f"kv_cache_step(q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache, "
                f"k_new {tuple(k_new.shape)}, v_new)")
        out, k_all, v_all = tensors(call(fn, q, k_cache, v_cache, k_new, v_new, what=what), 3, what)
        expected = _reference_step(q, k_cache, v_cache, k_new, v_new)
        expect_equal(k_all, expected[1], f"{what}, k_all (the cached keys, then the new one)")
        expect_equal(v_all, expected[2], f"{what}, v_all (the cached values, then the new one)")
        expect_close(out, expected[0], f"{what}, out", atol=1e-5, rtol=1e-4)
    for case in range(3):  # a whole sequence one token at a time == causal attention over all of it
        b, h, t, d = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(2, 9)), int(rng.integers(2, 7))
        q, k, v = randn(rng, b, h, t, d, scale=1.5), randn(rng, b, h, t, d, scale=1.5), randn(rng, b, h, t, d)
        full = layers.scaled_dot_product_attention(q, k, v, layers.causal_mask(t))  # (B, H, T, D)
        k_cache, v_cache = k[:, :, :0], v[:, :, :0]
        for i in range(t):
            what = (f"step {i} of {t} (kv_cache_step on your own k_all, v_all of the step before, B={b}, H={h}, "
                    f"D={d})")
            out, k_cache, v_cache = tensors(call(fn, q[:, :, i:i + 1], k_cache, v_cache, k[:, :, i:i + 1],
                                                 v[:, :, i:i + 1], what=what), 3, what)
            expect_close(out, full[:, :, i:i + 1], f"{what}: out must equal row {i} of causal attention over "
                                                   f"the whole sequence", atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- batches with left padding


def left_padded_mask(rng: np.random.Generator, b: int, t: int) -> torch.Tensor:
    """(B, T) int64: each row some 0s then at least one 1; at least one row padded when T > 1."""
    counts = [int(rng.integers(1, t + 1)) for _ in range(b)]
    if t > 1 and min(counts) == t:
        counts[0] = int(rng.integers(1, t))
    return torch.tensor([[0] * (t - n) + [1] * n for n in counts], dtype=torch.long)


@exercise("ex06.position_ids_from_mask", points=1, reference="course_lib.models.gpt2.gpt2_position_ids", hints=(
    "A real token's position is the number of real tokens *before* it in its row; a pad gets 0 (it is masked "
    "anyway).",
    "A running count along the row (`cumsum` of the mask, as integers) counts the real tokens up to and "
    "*including* each position.",
    "Turn 'including' into 'before', and the left pads come out negative: lift them to 0 (`clamp`). The result "
    "indexes an embedding table: int64."))
def _(fn, rng):
    cases = [torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])]
    for case in range(14):
        b, t = int(rng.integers(1, 5)), int(rng.integers(1, 10))
        mask = left_padded_mask(rng, b, t) if case % 5 else torch.ones(b, t, dtype=torch.long)
        cases.append(mask.to(torch.int32) if case % 4 == 3 else mask)
    for mask in cases:
        what = f"position_ids_from_mask({mask.tolist()})"
        got = integer(tensor(call(fn, mask, what=what), what), what)
        expect_equal(got, gpt2.gpt2_position_ids(mask, 0, mask.size(1)), what)


@exercise("ex06.decoder_attention_mask", points=1, reference="course_lib.models.gpt2.gpt2_attention_mask", hints=(
    "Two rules at once: a query may not see a key from its future (your causal_mask, with the cache's offset) "
    "*and* no query may see a padding key.",
    "Your causal_mask(new_tokens, P + T) is (T, P + T). The padding rule depends on the key only: the (B, P + T) "
    "mask as bool, with two singleton axes inserted so that it is (B, 1, 1, P + T), broadcasts over heads and "
    "queries. Combine the two with `&`.",
    "Padding hides keys (columns), not queries (rows): a pad's own row may stay all False. The result is "
    "(B, 1, T, P + T) bool."))
def _(fn, rng):
    cases = [(torch.tensor([[0, 0, 1, 1]]), 4), (torch.tensor([[0, 0, 1, 1, 1]]), 1)]
    for case in range(14):
        b, past = int(rng.integers(1, 5)), [0, int(rng.integers(1, 7))][case % 2]
        new_tokens = 1 if case % 3 == 1 else int(rng.integers(1, 7))
        mask = left_padded_mask(rng, b, past + new_tokens)
        cases.append((mask.to(torch.int32) if case % 4 == 3 else mask, new_tokens))
    for mask, new_tokens in cases:
        what = f"decoder_attention_mask({mask.tolist()}, new_tokens={new_tokens})"
        got = tensor(call(fn, mask, new_tokens, what=what), what)
        if got.dtype != torch.bool:
            raise GradeError(f"{what}: expected a bool mask (True = may attend), got dtype {got.dtype}")
        past = mask.size(1) - new_tokens
        expect_equal(got, gpt2.gpt2_attention_mask(mask, past, new_tokens), what)


# ----------------------------------------------------------------------------- stretch: min-p and repetition penalty


def _kept(t: torch.Tensor) -> torch.Tensor:
    return ~torch.isneginf(t)


@exercise("ex06.min_p_filter", points=3, stretch=True, reference="course_lib.generation.min_p_filter", hints=(
    "The cut is relative to the best token: a token stays when its probability is at least min_p times the "
    "probability of the most probable token of *its own row*. Compare probabilities, not logits.",
    "Softmax over the vocabulary; each row's highest probability with its axis kept, shape (..., 1), scaled by "
    "min_p, is the row's threshold; what lies strictly below it becomes -inf.",
    "Strictly below: a token exactly at the threshold stays, so the best token stays even with min_p = 1, and "
    "min_p = 0 keeps everything. Logits that are already -inf have probability 0: they stay -inf."))
def _(fn, rng):
    cases = [(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 0.4),   # keeps 0.5 and 0.3 (>= 0.2)
             (torch.tensor([[2.0, 2.0, 1.0, -1.0]]), 1.0),             # only the two tied best
             (torch.tensor([[1.0, 0.0, -1.0]]), 0.0)]                  # keeps everything
    for case in range(24):
        v = int(rng.integers(2, 31))
        shape = (*batch_dims(rng), v)
        if case % 4 == 3:
            logits = _logits_with_ties(rng, shape)
        else:
            logits = randn(rng, *shape, scale=float(rng.choice([0.5, 1.0, 2.0, 4.0])))
        if case % 3 == 2:  # some logits already -inf (top-k ran first); never a whole row
            dropped = torch.from_numpy(rng.random(shape) < 0.3)
            dropped[..., int(rng.integers(0, v))] = False
            logits = logits.masked_fill(dropped, float("-inf"))
        min_p = [float(rng.uniform(0.02, 0.3)), float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.05, 0.6)),
                 1.0 if case % 8 == 3 else 0.0][case % 4]
        cases.append((logits, min_p))
    first_error = None  # a wrong case no single mistake explains; a later case may name the mistake
    for logits, min_p in cases:
        what = f"min_p_filter(logits {show(logits)}, min_p={min_p:g})"
        got = tensor(call(fn, logits, min_p, what=what), what)
        expected = generation.min_p_filter(logits, min_p)
        if got.shape != expected.shape:
            raise GradeError(f"{what}: expected shape {tuple(expected.shape)} (the logits' own shape), got "
                             f"{tuple(got.shape)}")
        if not got.is_floating_point():
            raise GradeError(f"{what}: expected float logits with -inf where a token is dropped, got dtype "
                             f"{got.dtype}")
        got = got.float()
        kept = _kept(got)
        if bool((kept & (got != logits)).any()):
            bad = got[kept & (got != logits)]
            hint = (" Dropped tokens must be float('-inf'), not 0 or a large negative number"
                    if bool(((bad == 0) | (bad <= -1e4)).all()) else
                    " Return the logits (filtered), not probabilities or rescaled logits")
            raise GradeError(f"{what}: {int(bad.numel())} values are neither the input logit nor -inf.{hint}")
        probs = torch.softmax(logits.double(), dim=-1)
        best = probs.amax(dim=-1, keepdim=True)
        # tokens within float rounding of the threshold may go either way (probabilities or log space)
        ratio = probs / best
        clear = (ratio - min_p).abs() > 1e-5 * max(min_p, 1e-12) + 1e-9
        want = _kept(expected)
        if bool(((kept != want) & clear).any()):
            diagnoses = {
                "you compared each probability with min_p itself; min-p scales the threshold by the row's "
                "highest probability (min_p x p(best))": probs >= min_p,
                "the threshold came from the highest probability of the whole tensor; every row has its own "
                "best token (keep the row axis when you take the maximum)": probs >= min_p * probs.max(),
                "you compared logits with min_p x the highest logit; the rule is about probabilities (softmax "
                "first)": logits >= min_p * logits.amax(dim=-1, keepdim=True),
                "that is top-p (cumulative probability); min-p compares each token's own probability with "
                "min_p x p(best)": _kept(generation.top_p_filter(logits, max(min_p, 1e-6))),
            }
            named = [diagnosis for diagnosis, variant in diagnoses.items()
                     if bool(((variant != want) & clear).any()) and not bool(((kept != variant) & clear).any())]
            if len(named) == 1:
                raise GradeError(f"{what}: {named[0]}")
        if bool((~kept & (probs == best)).any()) and first_error is None:
            first_error = (f"{what}: the most probable token of a row was dropped. A token exactly at the "
                           f"threshold min_p x p(best) stays (drop only p < min_p x p(best)), so the best token "
                           f"always stays")
        if bool(((kept != want) & clear).any()) and first_error is None:
            wrong = (kept != want) & clear
            first = tuple(int(i) for i in wrong.nonzero()[0])
            first_error = (f"{what}: {int(wrong.sum())} tokens kept or dropped wrongly; e.g. at index {first}: "
                           f"p = {float(probs[first]):.4g}, the row's best p = {float(best[first[:-1]][0]):.4g}, "
                           f"threshold {min_p:g} x {float(best[first[:-1]][0]):.4g}; expected "
                           f"{'kept' if bool(want[first]) else 'dropped'}, got "
                           f"{'kept' if bool(kept[first]) else 'dropped'}")
    if first_error is not None:
        raise GradeError(first_error)


def _penalized_once(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


@exercise("ex06.apply_repetition_penalty", points=3, stretch=True,
          reference="course_lib.generation.apply_repetition_penalty", hints=(
    "Every token that occurs in a row's ids is penalized once, in that row only: a positive logit is divided by "
    "the penalty, a negative one multiplied by it, so that penalty > 1 always makes the token less likely.",
    "Mark the tokens seen in each row in a (B, V) bool tensor (`scatter` the ids along the last axis, or a loop "
    "over the rows); compute the penalized version of the whole row, choosing by the sign with `torch.where`; "
    "then take the penalized value where a token was seen and the original elsewhere.",
    "A token that occurs three times is still penalized once: a loop over the ids that divides each time "
    "penalizes it three times. Don't change the input logits in place."))
def _(fn, rng):
    cases = [(torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0]]), torch.tensor([[1, 2, 2, 0]]), 2.0)]
    for case in range(16):
        b, v, t = int(rng.integers(1, 5)), int(rng.integers(3, 41)), int(rng.integers(1, 13))
        if case % 4 == 0:
            b = max(b, 2)
        logits = randn(rng, b, v, scale=float(rng.choice([1.0, 2.0, 4.0])))
        if case % 5 == 4:
            logits[:, 0] = 0.0  # a zero logit stays zero, whichever way it is penalized
        history = rng.choice(v, size=max(2, v // 3), replace=False)  # a small set of tokens: repeats are likely
        ids = torch.from_numpy(rng.choice(history, size=(b, t))).long()
        penalty = [float(rng.uniform(1.1, 2.5)), float(rng.uniform(1.1, 2.5)), float(rng.uniform(0.3, 0.9))][case % 3]
        cases.append((logits, ids, penalty))
    first_error = None  # a wrong case no single mistake explains; a later case may name the mistake
    for logits, ids, penalty in cases:
        what = (f"apply_repetition_penalty(logits {show(logits)}, input_ids {show(ids)}, "
                f"penalty={penalty:.3g})")
        got = tensor(call(fn, logits, ids, penalty, what=what), what)
        expected = generation.apply_repetition_penalty(logits, ids, penalty)
        if got.shape != expected.shape:
            raise GradeError(f"{what}: expected shape {tuple(expected.shape)} (the logits' own shape), got "
                             f"{tuple(got.shape)}")
        got = got.double()
        close = lambda a: bool(torch.allclose(got, a.double(), atol=1e-6, rtol=1e-5))  # noqa: E731
        if close(expected):
            continue
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, True)  # (B, V)
        counts = torch.zeros_like(logits).scatter_add(-1, ids, torch.ones_like(ids, dtype=logits.dtype))
        anywhere = seen.any(dim=0, keepdim=True).expand_as(seen)
        diagnoses = {
            "negative logits were divided by the penalty too, which moves them towards 0 and makes those tokens "
            "*more* likely (-2 / 2 = -1 > -2). Divide positive logits, multiply negative ones":
                torch.where(seen, logits / penalty, logits),
            "the penalty went the wrong way (positive logits multiplied, negative ones divided): with penalty > 1 a "
            "repeated token became more likely": torch.where(seen, torch.where(logits < 0, logits / penalty,
                                                                               logits * penalty), logits),
            "a token that occurs n times was penalized n times; the penalty applies once per token, however often "
            "it occurs": torch.where(logits < 0, logits * penalty ** counts, logits / penalty ** counts),
            "each row was penalized for the tokens of every row; a row's penalty comes from its own ids only":
                _penalized_once(logits, anywhere, penalty),
            "the penalty was subtracted; it divides positive logits and multiplies negative ones":
                torch.where(seen, logits - penalty, logits),
        }
        named = [diagnosis for diagnosis, variant in diagnoses.items()
                 if not torch.allclose(variant.double(), expected.double(), atol=1e-6, rtol=1e-5) and close(variant)]
        if len(named) == 1:
            raise GradeError(f"{what}: {named[0]}")
        unseen_changed = ~seen & ~torch.isclose(got, logits.double(), atol=1e-6, rtol=1e-5)
        if bool(unseen_changed.any()):
            row, col = (int(i) for i in unseen_changed.nonzero()[0])
            raise GradeError(f"{what}: token {col} does not occur in row {row}'s ids, so its logit must stay "
                             f"{float(logits[row, col]):.4g}; got {float(got[row, col]):.4g}")
        if first_error is None:
            try:
                expect_close(got, expected, what, atol=1e-6, rtol=1e-5)
            except GradeError as err:
                first_error = str(err)
    if first_error is not None:
        raise GradeError(first_error)
