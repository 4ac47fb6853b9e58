"""Chapter 06: GPT-2, a decoder-only transformer, built from ``course_lib.layers``.

Hold ``transformers/models/gpt2/modeling_gpt2.py`` (or nanoGPT's ``model.py``) beside this
file: the attribute names are the checkpoint keys (``transformer.wte``, ``h.N.ln_1``,
``h.N.attn.c_attn``, ``h.N.mlp.c_fc``, ``ln_f``, ``lm_head``), so loading a published
file is a name-to-name copy.

What changes from chapter 04's encoder:

- **causal**: token t attends to tokens 0..t only, so the model can be trained to predict
  the next token at every position at once, and can generate one token at a time;
- **pre-LN**: ``x = x + attn(ln_1(x))``, ``x = x + mlp(ln_2(x))``, one final ``ln_f``. The
  residual stream is never normalised, which makes deep stacks train stably;
- **fused q/k/v**: one ``c_attn`` projection C -> 3C, split into q, k, v;
- **tanh-GELU** (``gelu_new``), learned absolute positions ``wpe`` starting at 0;
- **tied LM head**: ``lm_head.weight`` *is* ``wte.weight``; logits are dot products of the
  final hidden state with every token's embedding;
- a **KV cache** (``course_lib.generation.KVCache``): while generating, keys and values of
  earlier tokens never change, so each step computes them only for the new token.

Conv1D: OpenAI's TensorFlow code stored every projection as ``(in, out)`` and
``transformers`` kept that as a ``Conv1D`` module (``x @ W + b``). We transpose the four
Conv1D weights once, on load, into chapter 02's ``Linear`` ``(out, in)`` (and back on
save). Why: one ``Linear`` for every model in the course (chapter 07 quantizes it
per output row, the same code for BERT and GPT-2). The price, on the teaching path, is a
copy of those weights at load time instead of a memory-mapped view. ``load_model``'s
default path (``course_lib.fused.speed_up``) stores each weight the way this CPU reads it
fastest for one token at a time; where that is by columns, the file's ``(in, out)``
Conv1D tensor is used as it is, seen as its transpose, and its decoding steps run
``fused.FusedGPT2Block``, the same block with fewer operations.

Shapes: B batch, T new tokens, P tokens already in the cache, C = n_embd, H = n_head,
D = C / H, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from course_lib.layers import (Dropout, Embedding, LayerNorm, Linear, activation, causal_mask, merge_heads,
                               padding_mask, scaled_dot_product_attention, split_heads)
from course_lib.models.base import CausalLMGeneration, CourseModel, PretrainedConfig
from course_lib.models.encoder import check_decoder_inputs

__all__ = ["GPT2Config", "GPT2Attention", "PrunedGPT2Attention", "GPT2MLP", "GPT2Block", "GPT2Model",
           "GPT2LMHeadModel", "CONV1D_WEIGHTS", "gpt2_position_ids", "gpt2_attention_mask"]

# The weights transformers keeps as Conv1D (in, out): transposed to (out, in) on load, back on save.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclasses.dataclass
class GPT2Config(PretrainedConfig):
    """``config.json`` of a GPT-2 checkpoint; defaults are ``transformers``' ``GPT2Config`` (gpt2, 124M)."""

    model_type: str = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False  # a mixed-precision training trick: the same values in float32
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    tie_word_embeddings: bool = True

    def validate(self) -> None:
        if self.n_head < 1 or self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.extra.get("add_cross_attention"):
            raise ValueError("add_cross_attention=true (GPT-2 as the decoder of an encoder-decoder model) is not "
                             "supported by the course's GPT-2")
        if not self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=false is not supported: every GPT-2 checkpoint ties lm_head to wte")
        try:
            activation(self.activation_function)
        except ValueError as err:
            raise ValueError(f"activation_function: {err}") from None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd


# --------------------------------------------------------------------------------------
# Positions and masks: where a left-padded batch differs from a single prompt

def gpt2_position_ids(attention_mask: torch.Tensor | None, past_length: int, new_tokens: int,
                      device=None) -> torch.Tensor:
    """Positions of the ``new_tokens`` newest tokens: (1, T) without a mask, (B, T) with one.

    Without a mask, tokens count from ``past_length``. With a mask (B, P + T), 1 = token,
    0 = padding, each token's position is the number of real tokens before it, so a
    left-padded prompt gets positions 0, 1, 2 ... exactly as if it were alone. Pads get 0
    (they are masked; any valid row would do).
    """
    if attention_mask is None:
        return torch.arange(past_length, past_length + new_tokens, device=device).unsqueeze(0)  # (1, T)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P + T)
    return positions[:, -new_tokens:]  # (B, T)


def gpt2_attention_mask(attention_mask: torch.Tensor | None, past_length: int, new_tokens: int,
                        device=None) -> torch.Tensor | None:
    """The bool mask the attention uses, True = may attend: causal, and padding when a mask is given.

    (T, P + T), or (B, 1, T, P + T) with a padding mask; ``None`` when one new token may
    see everything (a step of generation without padding: nothing to hide).
    """
    total = past_length + new_tokens
    if attention_mask is not None and attention_mask.shape[-1] != total:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens, but there are {past_length} "
                         f"cached + {new_tokens} new = {total}: pass the mask of every token so far")
    if attention_mask is None:
        return None if new_tokens == 1 else causal_mask(new_tokens, total, device=device)  # (T, P + T)
    return causal_mask(new_tokens, total, device=device) & padding_mask(attention_mask)  # (B, 1, T, P + T)


# --------------------------------------------------------------------------------------
# One block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))

class GPT2Attention(nn.Module):
    """Causal multi-head self-attention with one fused q/k/v projection ``c_attn`` (C -> 3C)."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.c_attn = Linear(C, 3 * C)  # q, k and v in one matrix product
        self.c_proj = Linear(C, C)
        self.attn_dropout_p = config.attn_pdrop
        self.resid_dropout = Dropout(config.resid_pdrop)
        self.scale = config.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.attention_fn = scaled_dot_product_attention  # chapter 02's; course_lib.fused swaps in torch's kernel

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache=None,
                return_weights: bool = False):
        """x (B, T, C); mask bool, broadcastable to (B, H, T, P + T); ``cache``: one layer of a ``KVCache``."""
        q, k, v = self.c_attn(x).split(x.size(-1), dim=-1)  # 3 x (B, T, C)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # 3 x (B, H, T, D)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, P + T, D): the cached tokens' keys and values, then ours
        out = self.attention_fn(q, k, v, mask, dropout_p=self.attn_dropout_p, training=self.training,
                                scale=self.scale, return_weights=return_weights)
        y, weights = out if return_weights else (out, None)  # y (B, H, T, D)
        y = self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, T, C)
        return (y, weights) if return_weights else y


class PrunedGPT2Attention(GPT2Attention):
    """``GPT2Attention`` after ``course_lib.surgery.prune_heads``: ``n_head`` heads of D features are left.

    ``c_attn`` then maps C -> 3 * n_head * D (fewer than 3C) and ``c_proj`` n_head * D -> C,
    so q, k and v are cut at ``n_head * D`` features instead of at C. Everything else is
    ``GPT2Attention.forward``; the surgery switches an attention block's class to this one.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache=None,
                return_weights: bool = False):
        """x (B, T, C); mask bool, broadcastable to (B, H, T, P + T); ``cache``: one layer of a ``KVCache``."""
        q, k, v = self.c_attn(x).split(self.c_proj.in_features, dim=-1)  # 3 x (B, T, H * D): the kept heads
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # 3 x (B, H, T, D)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, P + T, D)
        out = self.attention_fn(q, k, v, mask, dropout_p=self.attn_dropout_p, training=self.training,
                                scale=self.scale, return_weights=return_weights)
        y, weights = out if return_weights else (out, None)  # y (B, H, T, D)
        y = self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, T, C)
        return (y, weights) if return_weights else y


class GPT2MLP(nn.Module):
    """Feed-forward: ``c_fc`` C -> 4C, tanh-GELU, ``c_proj`` 4C -> C, dropout."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner_dim)
        self.c_proj = Linear(config.inner_dim, config.n_embd)
        self.act = activation(config.activation_function)
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


class GPT2Block(nn.Module):
    """Pre-LN block: normalise, attend, add; normalise, feed forward, add."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


# --------------------------------------------------------------------------------------
# The models

class GPT2Model(CourseModel):
    """token ids (B, T) -> hidden states (B, T, C) after the final LayerNorm ``ln_f``."""

    base_model_prefix = "transformer"
    checkpoint_transposed = CONV1D_WEIGHTS
    unused_checkpoint_prefixes = ("lm_head.",)

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = Embedding(config.vocab_size, config.n_embd)  # token embeddings, also the LM head
        self.wpe = Embedding(config.n_positions, config.n_embd)  # position embeddings
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        if config.pruned_heads:  # saved after course_lib.surgery.prune_heads: build the smaller attention blocks
            from course_lib.surgery import prune_attention_heads

            for layer_idx, heads in config.pruned_heads.items():
                prune_attention_heads(self.h[layer_idx].attn, heads, config.n_head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        """input_ids (B, T) int64 -> (B, T, C).

        ``attention_mask`` (B, P + T): 1 = token, 0 = padding, for every token so far
        (cached and new). ``kv_cache``: a ``course_lib.generation.KVCache``; the new
        tokens' keys and values are appended to it, and they attend to everything in it.
        The inputs are checked first (``check_inputs``).
        """
        past = kv_cache.length if kv_cache is not None else 0
        self.check_inputs(input_ids, attention_mask, position_ids, past, decoding=kv_cache is not None)
        T = input_ids.size(1)
        if past + T > self.config.n_positions:  # a shape check: no pass over the ids
            raise ValueError(f"{past} cached + {T} new tokens is more than the {self.config.n_positions} positions "
                             f"GPT-2's wpe table has: shorten the prompt or generate fewer tokens")
        if position_ids is None:
            position_ids = gpt2_position_ids(attention_mask, past, T, input_ids.device)  # (1 or B, T)
        mask = gpt2_attention_mask(attention_mask, past, T, input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, mask, None if kv_cache is None else kv_cache.layers[i])
        return self.ln_f(x)  # (B, T, C)

    def check_inputs(self, input_ids, attention_mask=None, position_ids=None, past_length: int = 0,
                     decoding: bool = False) -> None:
        """A clear error for a wrong input (``encoder.check_decoder_inputs``: a one-token decoding step gets
        only the metadata checks)."""
        check_decoder_inputs(input_ids, attention_mask, position_ids, vocab_size=self.config.vocab_size,
                             max_positions=self.config.n_positions, past_length=past_length, decoding=decoding)


class GPT2LMHeadModel(CausalLMGeneration, CourseModel):
    """token ids (B, T) -> next-token logits (B, T, V); ``lm_head`` is tied to ``transformer.wte``."""

    base_model_prefix = "transformer"
    checkpoint_transposed = CONV1D_WEIGHTS
    tied_weights = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache=None, last_only: bool = False) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V); ``last_only``: only the last position's, (B, 1, V).

        Generation only needs the last position: with V = 50257 the head is the largest
        matrix product of the model, so ``last_only`` saves T - 1 of them.
        """
        hidden = self.transformer(input_ids, attention_mask, position_ids, kv_cache)  # (B, T, C)
        if last_only:
            hidden = hidden[:, -1:]  # (B, 1, C)
        return self.lm_head(hidden)  # (B, T, V)
