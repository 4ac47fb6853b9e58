"""Chapter 06: generating text with a causal language model, one token at a time.

A language model gives, at every position, scores (logits) for the next token. To
generate, run the prompt, pick a next token from the last position's scores, append it,
and repeat. The pieces, each a function here:

- **choosing**: greedy (the highest score) or sampling from ``softmax(logits / temperature)``,
  optionally restricted to the ``top_k`` best tokens, to the smallest set whose
  probability reaches ``top_p`` (nucleus sampling), or to the tokens at least ``min_p``
  times as likely as the best one (min-p). A seeded ``torch.Generator`` makes a sample
  repeatable. A ``repetition_penalty`` makes the tokens already in the text less likely;
- **stopping**: after ``max_new_tokens``, or when every sequence has produced an end token;
- **the KV cache**: a token's keys and values never change once computed (causal
  attention: earlier tokens never see later ones), so each step only computes the new
  token and attends to the cached keys and values. Without it, step n recomputes all n
  tokens: quadratic work instead of linear;
- **batches**: prompts of different lengths are padded on the *left*, so every sequence's
  newest token is in the last column; the attention mask hides the pads and position ids
  count only real tokens, so each row generates what it would generate alone.

Shapes: B batch, T tokens, V vocabulary, H heads, D head size.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable, Sequence

import torch

from course_lib.models.encoder import check_attention_mask, check_input_ids

__all__ = ["LayerKVCache", "KVCache", "top_k_filter", "top_p_filter", "min_p_filter", "apply_repetition_penalty",
           "is_sampling", "next_token", "check_generation_args", "check_can_generate", "check_generate_inputs",
           "generate_ids", "generate", "TextStreamer", "print_piece"]


# --------------------------------------------------------------------------------------
# The KV cache

class LayerKVCache:
    """Keys and values of one attention layer for every token so far: (B, H, length, D) each.

    Pre-allocated: one (B, H, capacity, D) buffer each for keys and values, written in
    place, and ``append`` returns views of the filled part. Appending with ``torch.cat``
    would copy the whole cache at every step (work that grows with the sequence); here a
    step writes only the new token. When a sequence outgrows the capacity the buffers
    double (one copy, rarely). ``generate_ids`` sizes the capacity to prompt +
    ``max_new_tokens``, so that never happens there.
    """

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self.keys: torch.Tensor | None = None  # (B, H, capacity, D)
        self.values: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' k, v (B, H, T, D); return every token's (B, H, length + T, D)."""
        end = self.length + k.size(2)
        if self.keys is None or end > self.keys.size(2):
            self._grow(k, end)
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _grow(self, k: torch.Tensor, needed: int) -> None:
        B, H, _, D = k.shape
        if self.keys is not None and (self.keys.size(0), self.keys.size(1), self.keys.size(3)) != (B, H, D):
            raise ValueError(f"the cache holds keys of shape {tuple(self.keys.shape)}, the new ones are "
                             f"{tuple(k.shape)}: a cache belongs to one batch; start a new KVCache")
        old = 0 if self.keys is None else self.keys.size(2)
        capacity = max(needed, self.capacity, 2 * old)
        keys, values = (k.new_empty(B, H, capacity, D) for _ in range(2))
        if self.keys is not None:
            keys[:, :, :self.length] = self.keys[:, :, :self.length]
            values[:, :, :self.length] = self.values[:, :, :self.length]
        self.keys, self.values, self.capacity = keys, values, capacity

    @property
    def nbytes(self) -> int:
        """Bytes allocated (both buffers, whole capacity)."""
        return 0 if self.keys is None else 2 * self.keys.numel() * self.keys.element_size()


class KVCache:
    """One ``LayerKVCache`` per layer; ``length`` tokens are cached. Pass it to the model's forward."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.layers = [LayerKVCache(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self.layers)}, length={self.length}, {self.nbytes / 2**10:,.0f} KiB allocated)"


# --------------------------------------------------------------------------------------
# Choosing the next token

def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row, set the rest to -inf: (..., V) -> (..., V).

    Ties with the k-th value are kept (as in ``transformers``' ``TopKLogitsWarper``).
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most probable tokens until their probability reaches ``p``.

    Sorted from most to least probable, a token is dropped when the tokens before it
    already hold at least ``p`` of the probability; the most probable token always stays.
    (..., V) -> (..., V) with dropped logits -inf.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = before >= p  # (..., V) in sorted order
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p filter: keep the tokens at least ``min_p`` times as probable as the most probable one.

    Token v stays when ``p_v >= min_p * max_u p_u`` (probabilities = softmax of the row);
    the others become -inf. Unlike top-p the cut moves with the model's confidence *on
    the best token*: a sure model keeps few tokens, an unsure one many. ``min_p`` in
    [0, 1]: 0 keeps everything, 1 only the best token(s). (..., V) -> (..., V); the same
    as ``transformers``' ``MinPLogitsWarper(min_p)`` (Nguyen et al. 2024, "min-p sampling").
    """
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    probs = logits.softmax(dim=-1)  # (..., V)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (..., 1) scaled by each row's best token
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make the tokens already in each sequence less likely: (B, V) logits, (B, T) ids -> (B, V).

    Every token that occurs in row b of ``input_ids`` (once or many times: the penalty
    applies once) has its logit in row b divided by ``penalty`` when positive and
    multiplied by it when negative, so that ``penalty > 1`` always lowers it (dividing a
    negative logit would raise it). Other logits are unchanged. ``penalty < 1`` rewards
    repetition instead. The rule of CTRL (Keskar et al. 2019) and ``transformers``'
    ``RepetitionPenaltyLogitsProcessor(penalty)``.
    """
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = no penalty), got {penalty}")
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, input_ids, True)  # (B, V) once per token
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)  # always towards less likely
    return torch.where(seen, penalized, logits)


def is_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                seed: int | None = None, min_p: float | None = None) -> bool:
    """Sampling when any sampling parameter is set; greedy otherwise (and for temperature 0)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature == 0:
        return False
    return temperature != 1.0 or top_k is not None or top_p is not None or seed is not None or min_p is not None


def next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None,
               sample: bool = True, min_p: float | None = None) -> torch.Tensor:
    """Choose one token per row of ``logits`` (B, V) -> (B,) int64.

    ``sample=False``: greedy, the highest logit. Otherwise: divide by ``temperature``
    (< 1 sharpens the distribution, > 1 flattens it), apply ``top_k``, ``top_p`` then
    ``min_p`` (the order ``transformers`` uses), and draw from the softmax with ``generator``.
    """
    if not sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V), 0 where filtered
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


# --------------------------------------------------------------------------------------
# Checking the arguments: a clear error before the first step, never a traceback from torch

SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed accepts


def _whole_number(value, name: str, fix: str) -> int:
    """``value`` as an int: Python and NumPy integers pass; bool, float, str and None are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {value!r} ({type(value).__name__}): {fix}")
    return int(value)


def _real_number(value, name: str, fix: str) -> float:
    """``value`` as a finite float: ints and floats pass; NaN, infinities, bool, str and None are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}): {fix}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}: {fix}")
    return float(value)


def check_generation_args(max_new_tokens=20, temperature=1.0, top_k=None, top_p=None, seed=None, min_p=None,
                          repetition_penalty=None, eos_token_id=None) -> None:
    """Raise a clear ``TypeError``/``ValueError`` naming the argument, its value and the allowed range.

    ``max_new_tokens`` an int >= 0; ``temperature`` a finite number >= 0 (0 = greedy);
    ``top_k`` an int >= 1; ``top_p`` in (0, 1]; ``min_p`` in [0, 1]; ``repetition_penalty``
    > 0; ``seed`` an int that ``torch.Generator.manual_seed`` takes, -2**63 .. 2**64 - 1
    (reduce a larger one yourself, e.g. ``seed % 2**64``); ``eos_token_id`` an int or a
    list of ints. Each ``None`` means "not used".
    """
    count = _whole_number(max_new_tokens, "max_new_tokens", "pass an int, e.g. max_new_tokens=20")
    if count < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {count}")
    t = _real_number(temperature, "temperature", "pass a float >= 0: 1 = the model's distribution, < 1 sharper, "
                                                 "0 = greedy")
    if t < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and _whole_number(top_k, "top_k", "pass an int >= 1, or None for no top-k") < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < _real_number(top_p, "top_p", "pass a float in (0, 1], or None") <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= _real_number(min_p, "min_p", "pass a float in [0, 1], or None") <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty is not None and _real_number(
            repetition_penalty, "repetition_penalty", "pass a float > 0 (1 = no penalty), or None") <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = no penalty), got {repetition_penalty}")
    if seed is not None:
        value = _whole_number(seed, "seed", "pass an int, e.g. seed=0")
        if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise ValueError(f"seed={value} is outside the range a torch.Generator takes, -2**63 .. 2**64 - 1: "
                             f"use a smaller one (seed % 2**64 keeps it repeatable)")
    if eos_token_id is not None:
        ids = [eos_token_id] if not isinstance(eos_token_id, (list, tuple)) else eos_token_id
        for value in ids:
            _whole_number(value, "eos_token_id", "pass a token id, a list of ids, or [] to never stop early")


def check_can_generate(model) -> None:
    """Refuse, clearly, a model with no next-token head (an encoder, GPT-2 without its LM head): it cannot generate.

    ``generate_ids`` calls ``model(ids, attention_mask, kv_cache=..., last_only=True)``: the
    forward of a causal language model (``GPT2LMHeadModel``).
    """
    name = type(model).__name__
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"generate needs a model (torch.nn.Module) first, got {name}: call "
                        f"generate(model, tokenizer, prompt) with model = load_model('tiny-gpt2') or another decoder")
    forward = model.forward
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # not inspectable (a compiled or wrapped model): trust it
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if takes_any or {"kv_cache", "last_only"} <= parameters.keys():
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ("bert", "roberta", "xlm-roberta"):
        why = (f"{name} is an encoder (model_type {model_type!r}): it reads the whole text at once and has no "
               f"next-token head. Generate with a decoder (load_model('tiny-gpt2') or 'gpt2'); to fill in a "
               f"masked word, load the encoder with task='masked-lm' (chapter 04's fill_mask_top_k)")
    elif model_type == "gpt2":
        why = (f"{name} is GPT-2 without its LM head (task='base' gives hidden states): load it with "
               f"task='causal-lm', the default for GPT-2")
    else:
        why = (f"{name}.forward takes no kv_cache= and last_only=, so it is not a causal language model "
               f"(course_lib's GPT2LMHeadModel)")
    raise TypeError(f"generate needs a causal language model, which scores the next token; {why}")


def check_generate_inputs(model, input_ids, max_new_tokens, attention_mask=None, **arguments) -> None:
    """Everything ``generate_ids`` is given, checked once before the first step; a clear error otherwise.

    The model must be a causal LM (``check_can_generate``), the sampling ``arguments`` valid
    (``check_generation_args``), the prompt (B, T) integer ids with T >= 1 inside the model's
    vocabulary, the mask (B, T) of 0/1 with every prompt's last token real (left padding),
    and prompt + new tokens must fit the model's positions. The decoding steps then check
    only metadata (``GPT2Model.check_inputs``): they feed back the model's own tokens.
    """
    check_can_generate(model)
    check_generation_args(max_new_tokens, **arguments)
    vocab_size = getattr(model.config, "vocab_size", None)  # a toy model may not say
    check_input_ids(input_ids, vocab_size, check_values=False)  # a tensor (B, T) of integers
    if input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (batch, tokens) with at least one token, got shape "
                         f"{tuple(input_ids.shape)}; to start from nothing, pass the BOS token")
    if vocab_size is not None:
        check_input_ids(input_ids, vocab_size)  # one pass over the prompt's values
    if attention_mask is not None:
        check_attention_mask(attention_mask, tuple(input_ids.shape))
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("a prompt ends with padding: pad batches for generation on the left "
                             "(encode_batch(..., padding_side='left')), so every prompt's last token is real")
    positions = getattr(model.config, "n_positions", None)
    if positions is not None and input_ids.size(1) + max_new_tokens - 1 > positions:
        raise ValueError(f"a prompt of {input_ids.size(1)} tokens + {max_new_tokens} new tokens needs "
                         f"{input_ids.size(1) + max_new_tokens - 1} positions; the model has {positions}: "
                         f"shorten the prompt or ask for fewer tokens")


# --------------------------------------------------------------------------------------
# The loop

def _eos_ids(model, eos_token_id) -> list[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if not isinstance(eos_token_id, (list, tuple)) else [int(i) for i in eos_token_id]


@torch.inference_mode()
def generate_ids(model, input_ids: torch.Tensor, max_new_tokens: int = 20, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, attention_mask: torch.Tensor | None = None,
                 use_cache: bool = True, stream: Callable[[torch.Tensor], None] | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None) -> torch.Tensor:
    """Extend each prompt by up to ``max_new_tokens`` tokens: (B, T) -> (B, T + new) int64.

    ``model(ids, attention_mask, kv_cache=..., last_only=True)`` must return logits
    (B, 1, V) (the course's ``GPT2LMHeadModel``). Greedy unless a sampling parameter
    (``temperature`` other than 1, ``top_k``, ``top_p``, ``min_p``, ``seed``) is given.
    ``repetition_penalty`` (greedy or sampling): the tokens of each row so far, prompt
    included and padding left out, are made less likely (``apply_repetition_penalty``).
    ``eos_token_id``: an id or ids that end a sequence (default: the model's
    ``config.eos_token_id``; ``[]``: never stop early). A finished sequence is filled with
    the end token until every sequence has finished, then generation stops.
    ``attention_mask`` (B, T): 1 = token, 0 = padding; pad prompts on the left.
    ``use_cache``: keep keys and values (``KVCache``); the tokens are the same without it.
    ``stream``: called with the new tokens (B,) after every step.
    Everything is checked before the first step (``check_generate_inputs``): a clear error,
    not one from deep inside torch.
    """
    check_generate_inputs(model, input_ids, max_new_tokens, attention_mask, temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed, min_p=min_p, repetition_penalty=repetition_penalty,
                          eos_token_id=eos_token_id)
    max_new_tokens, top_k = int(max_new_tokens), None if top_k is None else int(top_k)  # NumPy integers too
    seed = None if seed is None else int(seed)
    sample = is_sampling(temperature, top_k, top_p, seed, min_p)
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    eos = torch.tensor(_eos_ids(model, eos_token_id), dtype=torch.long, device=device)
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
    cache = None
    if use_cache:
        cache = KVCache(model.config.n_layer, capacity=ids.size(1) + max_new_tokens)
    step_input = ids
    for _ in range(max_new_tokens):
        logits = model(step_input, mask, kv_cache=cache, last_only=True)[:, -1]  # (B, V)
        if repetition_penalty is not None:
            # pads are not part of the text: stand in the row's last token (real, and already counted)
            seen = ids if mask is None else torch.where(mask.bool(), ids, ids[:, -1:])
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        new = next_token(logits, temperature, top_k, top_p, generator, sample, min_p)  # (B,)
        if eos.numel():
            new = torch.where(finished, eos[0], new)  # finished rows keep emitting the end token
            finished |= torch.isin(new, eos)
        ids = torch.cat([ids, new[:, None]], dim=1)  # (B, T + 1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        if stream is not None:
            stream(new)
        if eos.numel() and bool(finished.all()):
            break
        step_input = new[:, None] if use_cache else ids  # with a cache only the new token goes in
    return ids


# --------------------------------------------------------------------------------------
# Text in, text out

class TextStreamer:
    """Turns the token ids of one sequence into text pieces as they arrive.

    Byte-level BPE tokens can end in the middle of a UTF-8 character, so the text is
    decoded from all tokens so far and only the complete new part is passed on.
    """

    def __init__(self, tokenizer, callback: Callable[[str], None]):
        self.tokenizer, self.callback = tokenizer, callback
        self.ids: list[int] = []
        self.sent = 0

    def __call__(self, new_ids: torch.Tensor) -> None:
        self.ids.append(int(new_ids[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next byte
            return
        if len(text) > self.sent:
            self.callback(text[self.sent:])
            self.sent = len(text)


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 50, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, *, stream: Callable[[str], None] | None = None,
             eos_token_id: int | Sequence[int] | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None) -> str:
    """``prompt`` followed by the text the model generates (greedy unless a sampling parameter is set).

    ``tokenizer``: a ``tokenizers.Tokenizer`` (``load_tokenizer``). ``stream``: called with
    each new piece of text as soon as it is complete (``stream=print_piece`` prints as it
    goes). Stops after ``max_new_tokens`` or at the end token, which is not part of the
    returned text. An empty prompt starts from the model's BOS token.
    """
    from course_lib.tokenizer_loading import check_text

    check_can_generate(model)
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer (load_tokenizer(src)), got "
                        f"{type(tokenizer).__name__}: call generate(model, tokenizer, prompt)")
    check_text(prompt, "prompt")  # a str that UTF-8 can encode; for token ids use model.generate
    ids = tokenizer.encode(prompt).ids
    if not ids:
        bos = getattr(model.config, "bos_token_id", None)
        if bos is None:
            raise ValueError("the prompt is empty and the model's config has no bos_token_id to start from")
        ids = [bos]
    streamer = TextStreamer(tokenizer, stream) if stream is not None else None
    out = generate_ids(model, torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, eos_token_id=eos_token_id, use_cache=use_cache, stream=streamer,
                       min_p=min_p, repetition_penalty=repetition_penalty)
    return prompt + tokenizer.decode(out[0, len(ids):].tolist())


def print_piece(text: str) -> None:
    """A ``stream`` callback: print each piece at once, without a newline."""
    print(text, end="", flush=True)
