"""Chapter 06 exercises: GPT-2's attention, and generating text one token at a time.

GPT-2 is chapter 04's transformer turned into a next-token predictor: a token may attend
only to itself and the tokens before it (a causal mask), and q, k and v come out of one
fused projection ``c_attn``. To generate, the model scores every token of the vocabulary
at the last position (the logits), one token is chosen (greedy, or sampled with a
temperature, top-k and top-p), appended, and the loop repeats. A KV cache keeps the keys
and values of the tokens seen so far, so that a step computes only the new token; a batch
of prompts is padded on the left, and position ids count only the real tokens.

The functions come in the order the notebook meets them. The last two are stretch
exercises (more points, and the notebook does not show the course's version): min-p
sampling and a repetition penalty.

Shapes: B batch, T tokens, C = n_embd hidden size, H heads, D = C / H head size, P tokens
already in the cache, V vocabulary size.

You may use any ``torch`` operation and the functions of ``course_lib.layers``
(``split_heads``, ``scaled_dot_product_attention``, ``softmax`` ...) except
``course_lib.layers.causal_mask``, which is the first exercise. Not ``course_lib.generation``
or ``course_lib.models.gpt2``: they are the answer key, and the grader switches them off
while your code runs. The functions later in this file can call the ones you wrote earlier
(``decoder_attention_mask`` can use your ``causal_mask``).

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/06_gpt2.ipynb``: ``check("ex06.causal_mask")`` (one cell per
  exercise) — grading runs in a fresh process, so save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex06`` (all) or ``python -m course_lib.grade
  ex06.top_p_filter`` (one).

The checks use random sizes, logits, queries, keys and values, and seeded random number
generators, and compare with ``course_lib.layers``, ``course_lib.generation`` and
``course_lib.models.gpt2`` (itself tested against ``transformers``' GPT-2): masks,
positions, filtered logits and sampled tokens exactly (for min-p, a token within float
rounding of the threshold may go either way), attention outputs and penalised logits to
within float32 rounding (1e-5).
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def causal_mask(t_query: int, t_key: int) -> torch.Tensor:
    """The causal mask, bool (t_query, t_key), True = may attend: no query sees a key from its future.

    The keys are every token so far (t_key of them); the queries are the *last* t_query of
    those tokens (``t_key >= t_query``). Without a cache both are the whole sequence and
    ``t_query == t_key``; with a KV cache only the new tokens are queries while the keys
    include the cached ones. So query i sits at absolute position i + (t_key - t_query),
    and it may attend to key j exactly when j is at or before that position.

    Examples::

        causal_mask(3, 3) = [[True, False, False],      # the lower triangle
                             [True, True,  False],
                             [True, True,  True ]]
        causal_mask(2, 4) = [[True, True, True, False], # query 0 sits at position 2
                             [True, True, True, True ]]
        causal_mask(1, 5) = [[True, True, True, True, True]]   # one new token sees everything

    You wrote this in chapter 02 (``ex02.causal_mask``): GPT-2 is where it is used, with
    the cache's offset, so write it again here (or copy yours).

    Hint: a column of query indices against a row of key indices broadcasts to
    (t_query, t_key); which comparison, and with which offset?
    """
    raise NotImplementedError


def split_qkv(c_attn_out: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the output of GPT-2's fused projection ``c_attn`` into per-head q, k and v.

    ``c_attn_out``: (B, T, 3C), the result of ``x @ W.T + b`` with ``c_attn``'s (3C, C)
    weight: queries, keys and values side by side on the last axis, in that order, each C
    wide (``[..., :C]`` are the queries, ``[..., C:2C]`` the keys, ``[..., 2C:]`` the
    values). ``n_head``: H. Returns ``(q, k, v)``, each (B, H, T, D) with D = C // H;
    head h gets features ``h*D`` to ``(h+1)*D - 1`` of its C-wide chunk, as in chapter 04.

    Example: gpt2 (124M) has C = 768 and H = 12, so ``c_attn_out`` (1, 5, 2304) gives three
    (1, 12, 5, 64) tensors.

    Hint: separate the three C-wide blocks first, then split each into heads as in
    chapter 04 (``course_lib.layers.split_heads`` is allowed). In the other order q, k and
    v get mixed up.
    """
    raise NotImplementedError


def greedy_generate(logits_fn: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                    max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding, without a cache: append the most likely next token, ``max_new_tokens`` times.

    ``logits_fn``: the model, a function from token ids (B, T) int64 to logits (B, T, V),
    where ``logits[:, t]`` scores the token that follows position t. ``input_ids``:
    (B, T0) int64, the prompts. At every step, call ``logits_fn`` on *all* the ids so far,
    take the last position's logits, pick each row's highest-scoring token and append it
    as a new column. Returns (B, T0 + max_new_tokens) int64: the prompts followed by the
    new tokens (``max_new_tokens=0`` returns the prompts).

    Example: a model that always scores token ``(last id + 1) % V`` highest, with
    ``input_ids = [[5, 6]]`` and ``max_new_tokens=3``: ``[[5, 6, 7, 8, 9]]`` (for V > 9).

    Hint: build the result one column at a time; ``torch.cat`` appends a column when it
    has shape (B, 1), not (B,).
    """
    raise NotImplementedError


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row and set all the others to ``-inf``.

    ``logits``: (..., V) float, one row of V scores per position (any number of leading
    dimensions). ``k``: an int >= 1; ``k >= V`` keeps everything. Returns a new tensor of
    the same shape and dtype: the kept logits unchanged, the rest ``float("-inf")`` (so
    that softmax gives them probability 0). A logit *equal* to the k-th highest is kept
    too, so with ties more than k may stay (this is what ``transformers`` does).

    Example: ``top_k_filter(torch.tensor([1., 3., 2., 3., 0.]), 2)`` ->
    ``[-inf, 3., -inf, 3., -inf]``; with ``k=3``: ``[-inf, 3., 2., 3., -inf]``.

    Hint: each row's k-th highest logit is a threshold; ``torch.topk`` finds it.
    """
    raise NotImplementedError


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (top-p) filter: keep the most probable tokens until their probability reaches ``p``.

    ``logits``: (..., V) float (some may already be ``-inf``); ``p``: a float in (0, 1].
    Sort each row's tokens from most to least probable (probabilities = softmax of the
    row). A token is dropped (set to ``-inf``) when the tokens ranked *above* it already
    hold at least ``p`` of the probability; the most probable token always stays (nothing
    is above it). Returns a new tensor of the same shape, the kept logits unchanged, in
    the original (vocabulary) order.

    Example: logits whose probabilities are ``[0.1, 0.5, 0.3, 0.1]`` (tokens 0..3), ``p=0.7``:
    ranked 1, 2, then 0 and 3; above token 1 there is 0, above token 2 there is 0.5 < 0.7
    (kept), above the next one 0.8 >= 0.7 (dropped), so tokens 1 and 2 stay. ``p=1.0``
    keeps every token; a tiny ``p`` keeps only the top one.

    Hint: decide in sorted order (``torch.sort``, a cumulative sum), then bring the
    decisions back to vocabulary order before filling.
    """
    raise NotImplementedError


def sample_with_temperature(logits: torch.Tensor, temperature: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)``: (B, V) -> (B,) int64.

    ``logits``: (B, V) float32, the last position's scores for B sequences. ``temperature``
    > 0: below 1 sharpens the distribution (towards greedy), above 1 flattens it (towards
    uniform). ``generator``: a ``torch.Generator`` (or ``None``); a generator seeded the
    same way must give the same tokens, which is how a seed makes generation repeatable.

    Draw with ``torch.multinomial`` on the (B, V) probabilities, one sample per row,
    passing ``generator``, and return one token per row as (B,) int64. The grader runs your
    function and the course's with generators seeded alike and compares the tokens (and
    the generators' states afterwards), so draw that way, in one call.

    Example: ``logits = torch.tensor([[2.0, 1.0, 0.0]])``: temperature 1 gives probabilities
    ``[0.665, 0.245, 0.090]``; temperature 0.5 ``[0.867, 0.117, 0.016]``; temperature 2
    ``[0.506, 0.307, 0.186]``.

    Hint: the temperature acts on the logits, before the softmax; mind the shape
    ``torch.multinomial`` returns.
    """
    raise NotImplementedError


def kv_cache_step(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of generation with a KV cache, for one attention layer, all heads at once.

    ``k_cache``, ``v_cache``: (B, H, P, D), the keys and values of the P tokens so far
    (P may be 0). ``q``, ``k_new``, ``v_new``: (B, H, 1, D), the new token's query, key and
    value. Append the new key and value to the cache along the token axis (after the
    cached ones), then let the new query attend to all P + 1 keys:
    ``softmax(q @ k_all^T / sqrt(D)) @ v_all``. No mask is needed: the newest token may
    see every token, itself included.

    Returns a tuple of three tensors: ``out`` (B, H, 1, D), then ``k_all`` and ``v_all``
    (B, H, P + 1, D), the cache for the next step. ``out`` is exactly the last row of
    causal attention over the whole sequence of P + 1 tokens, computed with 1 query
    instead of P + 1: that is the KV cache's saving.

    Example: with gpt2's D = 64 and 7 tokens cached, ``k_cache`` (1, 12, 7, 64) and
    ``k_new`` (1, 12, 1, 64) give ``k_all`` (1, 12, 8, 64) and ``out`` (1, 12, 1, 64).

    Hint: which axis is the token axis? After that it is chapter 02's attention
    (``course_lib.layers.scaled_dot_product_attention`` is allowed, or write it by hand).
    """
    raise NotImplementedError


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """GPT-2's position ids for a left-padded batch: real tokens count 0, 1, 2, ...; pads get 0.

    ``attention_mask``: (B, T) integers, 1 = real token, 0 = padding, each row padded on
    the left (some 0s, then 1s). Returns (B, T) int64: the position of a real token is the
    number of real tokens before it, so a padded prompt gets exactly the positions it
    would get alone (and generates the same text); pads get 0 (they are masked anyway).

    Example::

        attention_mask = [[0, 0, 1, 1, 1],
                          [1, 1, 1, 1, 1]]
        result         = [[0, 0, 0, 1, 2],
                          [0, 1, 2, 3, 4]]

    Hint: a running count of the real tokens along each row is almost the answer; what
    is it off by, and where?
    """
    raise NotImplementedError


def decoder_attention_mask(attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The bool mask GPT-2's attention uses for a padded batch, True = may attend: causal *and* not padding.

    ``attention_mask``: (B, P + T) integers, 1 = real token, 0 = padding, for *every* token
    so far: the P cached ones, then the T = ``new_tokens`` new ones (the queries). Rows are
    padded on the left. Returns bool (B, 1, T, P + T): new token i of row b may attend to
    key j when j is not in its future (``causal_mask(T, P + T)``, with the cache's offset)
    and key j of row b is a real token. The singleton axis broadcasts over the heads of
    the scores (B, H, T, P + T).

    Example, one row, two pads, no cache (P = 0, T = 4)::

        attention_mask = [[0, 0, 1, 1]]
        result[0, 0]   = [[False, False, False, False],   # a pad: sees nothing (it is ignored)
                          [False, False, False, False],
                          [False, False, True,  False],
                          [False, False, True,  True ]]

    The next step of generation (a cache of P = 4, one new token, mask ``[[0, 0, 1, 1, 1]]``)
    gives ``[[[[False, False, True, True, True]]]]``.

    Hint: your ``causal_mask`` above gives the causal part, (T, P + T); the padding part
    depends only on the key. Give each part the axes it needs to broadcast, then combine.
    """
    raise NotImplementedError


# ----------------------------------------------------------------------------- stretch exercises


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p filter: keep the tokens at least ``min_p`` times as probable as the row's most probable token.

    ``logits``: (..., V) float (some may already be ``-inf``); ``min_p``: a float in [0, 1].
    With probabilities p = softmax of each row, token v stays when ``p_v >= min_p * max_u p_u``
    and is set to ``-inf`` otherwise. Returns a new tensor of the same shape, the kept
    logits unchanged. ``min_p = 0`` keeps everything; ``min_p = 1`` keeps only the best
    token (and any tied with it); the best token always stays.

    Top-p cuts at a fixed amount of probability; min-p cuts relative to the best token, so
    a confident model (one token near 1) keeps very few tokens, and an unsure one (a flat
    distribution) keeps many (Nguyen et al. 2024; ``transformers``' ``min_p=``).

    Example: probabilities ``[0.5, 0.3, 0.15, 0.05]``, ``min_p = 0.4``: the threshold is
    0.4 x 0.5 = 0.2, so tokens 0 and 1 stay and tokens 2 and 3 become ``-inf``.

    Hint: the threshold differs from row to row.
    """
    raise NotImplementedError


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make the tokens already in each sequence less likely: the repetition penalty of CTRL.

    ``logits``: (B, V) float, the next token's scores for B sequences. ``input_ids``:
    (B, T) int64, every token of each sequence so far (prompt included). ``penalty``: a
    float > 0; 1 changes nothing, above 1 discourages repeats, below 1 encourages them.

    For every token v that occurs in row b of ``input_ids`` (once or many times: the
    penalty is applied once), the logit ``logits[b, v]`` is divided by ``penalty`` if it is
    positive and multiplied by it if it is negative, so that a penalty above 1 always
    makes the token less likely (0 stays 0). Tokens that do not occur in row b keep their
    logit. Returns a new (B, V) tensor; the input is not changed. This is ``transformers``'
    ``repetition_penalty=`` (``RepetitionPenaltyLogitsProcessor``).

    Example: ``logits = [[2.0, -1.0, 0.5, -3.0, 1.0]]``, ``input_ids = [[1, 2, 2, 0]]``,
    ``penalty = 2``: tokens 0, 1, 2 occur, so ``[[1.0, -2.0, 0.25, -3.0, 1.0]]``.

    Hint: first find, per row, *which* tokens occur (a (B, V) bool), then penalize by sign.
    """
    raise NotImplementedError
