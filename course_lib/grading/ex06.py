"""Checks for chapter 06's exercises (``exercises/ex06_gpt2.py``).

Inputs are random: mask sizes with and without a cache offset, left-padded attention
masks, GPT-2 attention modules with random ``c_attn`` weights, logits with and without
ties, queries, keys and values, seeded ``torch.Generator`` objects, and a small random
"language model" whose next token depends on the whole prefix. Expected answers come from
``course_lib.layers`` (``causal_mask``, ``scaled_dot_product_attention``),
``course_lib.generation`` (``top_k_filter``, ``top_p_filter``, ``next_token``,
``LayerKVCache``, ``generate_ids``) and ``course_lib.models.gpt2`` (``GPT2Attention``'s own
q/k/v split, ``gpt2_position_ids``, ``gpt2_attention_mask``), themselves tested in
``tests/test_gpt2.py`` and against ``transformers`` in ``tests/test_gpt2_parity.py``. Those
are switched off while the learner's code runs.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from course_lib import generation, layers
from course_lib.grading.registry import (GradeError, call_learner, chapter_rules, exercise, expect_close, expect_equal,
                                         expect_tensor, expect_tensors)
from course_lib.models import gpt2

ANSWER_KEY = ("course_lib.layers.causal_mask",) + tuple(
    f"course_lib.generation.{name}" for name in (
        "LayerKVCache", "KVCache", "top_k_filter", "top_p_filter", "is_sampling", "next_token", "generate_ids",
        "generate")) + tuple(
    f"course_lib.models.gpt2.{name}" for name in (
        "gpt2_position_ids", "gpt2_attention_mask", "GPT2Attention", "GPT2Block", "GPT2Model", "GPT2LMHeadModel"))


chapter_rules("ex06", allow=("course_lib.layers",), refuse=("course_lib.layers.causal_mask",))

def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


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


@exercise("ex06.causal_mask", points=1,
          hint="i = torch.arange(t_query)[:, None]; j = torch.arange(t_key)[None, :]; return j <= i + (t_key - "
               "t_query): query i is token i + t_key - t_query of the sequence. (Plain tril is only right when "
               "t_query == t_key.)")
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


@exercise("ex06.split_qkv", points=1,
          hint="C = c_attn_out.size(-1) // 3; q, k, v = c_attn_out.split(C, dim=-1) (queries first, then keys, "
               "then values, each C wide); then each .view(B, T, H, C // H).transpose(1, 2) -> (B, H, T, D).")
def _(fn, rng):
    for case in range(10):
        b, t, h, d = (2, 5, 3, 4) if case == 0 else (
            int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(1, 5)), int(rng.integers(1, 6)))
        c_attn_out, expected = _gpt2_split(rng, b, t, h, d)
        what = f"split_qkv(c_attn_out {tuple(c_attn_out.shape)}, n_head={h})"
        got = tensors(call(fn, c_attn_out, h, what=what), 3, what)
        for name, g, e in zip("qkv", got, expected):
            expect_close(g, e, f"{what}, {name}")


# ----------------------------------------------------------------------------- choosing a token


def _logits_with_ties(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(rng.integers(-3, 3, size=shape).astype(np.float32))


@exercise("ex06.top_k_filter", points=2,
          hint="kth = torch.topk(logits, min(k, V), dim=-1).values[..., -1:] (the k-th highest, kept as (..., 1)); "
               "logits.masked_fill(logits < kth, float('-inf')): strictly below is dropped, ties with the k-th stay.")
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


@exercise("ex06.top_p_filter", points=2,
          hint="Sort descending (torch.sort), probs = softmax(sorted logits), before = probs.cumsum(-1) - probs "
               "(what the tokens ranked above hold), drop = before >= p; put drop back in vocabulary order with "
               "drop.scatter(-1, order, drop) and masked_fill(drop, -inf). The top token has before = 0: it stays.")
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


@exercise("ex06.sample_with_temperature", points=2,
          hint="probs = torch.softmax(logits / temperature, dim=-1); torch.multinomial(probs, num_samples=1, "
               "generator=generator).squeeze(-1): one call on the whole (B, V) tensor, with the generator you got.")
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


@exercise("ex06.kv_cache_step", points=2,
          hint="k_all = torch.cat([k_cache, k_new], dim=2) (the token axis; the new one last), the same for v; "
               "out = softmax(q @ k_all.transpose(-2, -1) / sqrt(D)) @ v_all, with no mask: the newest token sees "
               "every token.")
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


# ----------------------------------------------------------------------------- batches and the loop


def left_padded_mask(rng: np.random.Generator, b: int, t: int) -> torch.Tensor:
    """(B, T) int64: each row some 0s then at least one 1; at least one row padded when T > 1."""
    counts = [int(rng.integers(1, t + 1)) for _ in range(b)]
    if t > 1 and min(counts) == t:
        counts[0] = int(rng.integers(1, t))
    return torch.tensor([[0] * (t - n) + [1] * n for n in counts], dtype=torch.long)


@exercise("ex06.position_ids_from_mask", points=1,
          hint="(attention_mask.long().cumsum(-1) - 1).clamp(min=0): a token's position is the number of real "
               "tokens before it; the left pads would be -1, the clamp makes them 0.")
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


@exercise("ex06.decoder_attention_mask", points=1,
          hint="total = attention_mask.size(-1); causal_mask(new_tokens, total) (T, P + T) from above, with the "
               "cache's offset, & (attention_mask != 0)[:, None, None, :] (B, 1, 1, P + T): padding hides *keys*.")
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


@exercise("ex06.greedy_generate", points=2,
          hint="ids = input_ids; repeat max_new_tokens times: new = logits_fn(ids)[:, -1].argmax(dim=-1); "
               "ids = torch.cat([ids, new[:, None]], dim=1). Feed all the ids every time (there is no cache here).")
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
