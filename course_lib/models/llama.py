"""Chapter 09: the decoder of today's open models — Llama, Mistral, Qwen2, Qwen3 — in one file.

Hold ``transformers/models/llama/modeling_llama.py`` beside this file: the attribute names are
the checkpoint keys (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``,
``model.layers.N.mlp.gate_proj``, ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``, ``lm_head``), so loading a published file is a name-to-name copy.

What changes from chapter 06's GPT-2, one idea at a time:

- **RMSNorm** instead of LayerNorm (``layers.rms_norm``): no mean subtracted, no bias;
- **RoPE** instead of learned positions (``course_lib.rope``): queries and keys are rotated
  by an angle that grows with the position, so attention sees relative distances; no
  position table. ``rope_theta`` sets the slowest turn, ``rope_scaling`` ("llama3")
  stretches it for long contexts;
- **SwiGLU** feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))``;
- **grouped-query attention**: ``num_key_value_heads`` < ``num_attention_heads``; each key/value
  head serves a group of query heads (``layers.repeat_kv``), and the KV cache stores only the
  KV heads: ``kv_cache_bytes_per_token`` = 2 x layers x kv_heads x head_dim x bytes;
- **separate q/k/v projections without biases** (except Qwen2's q/k/v biases), and the head
  size may be set apart from the width (``head_dim``, Qwen3 and Llama 3.2);
- **untied heads** in the larger models (``tie_word_embeddings``: Llama 3.2 1B, SmolLM2,
  Qwen2.5-0.5B and Qwen3-0.6B tie, Mistral 7B does not);
- **Mistral's sliding window**: a token attends to the last ``sliding_window`` tokens only
  (``layers.sliding_window_mask``); Qwen2/Qwen3 can use it in their upper layers;
- **Qwen3's q/k norm**: an RMSNorm over each head's queries and keys before RoPE.

Which of these a model uses follows from config.json (``model_type`` and its fields), as in
``transformers``; the table is in ``LlamaConfig``'s docstring.

Shapes: B batch, T new tokens, P tokens already in the cache, C = hidden_size, H attention
heads, KV key/value heads, D = head_dim, F = intermediate_size, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from course_lib.layers import (Embedding, Linear, RMSNorm, merge_heads, padding_mask, repeat_kv,
                               scaled_dot_product_attention, silu, sliding_window_mask, split_heads)
from course_lib.models.base import CausalLMGeneration, CourseModel, PretrainedConfig
from course_lib.models.encoder import check_decoder_inputs
from course_lib.models.gpt2 import gpt2_position_ids
from course_lib.rope import RotaryEmbedding, apply_rope, check_rope_scaling

__all__ = ["LLAMA_FAMILY", "LlamaConfig", "LlamaAttention", "LlamaMLP", "LlamaDecoderLayer", "LlamaModel",
           "LlamaForCausalLM", "llama_attention_mask", "kv_cache_bytes_per_token", "init_weights"]

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
LAYER_TYPES = ("full_attention", "sliding_attention")
_CLASS_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


@dataclasses.dataclass
class LlamaConfig(PretrainedConfig):
    """``config.json`` of a Llama, Mistral, Qwen2 or Qwen3 checkpoint.

    Defaults are ``transformers``' for ``model_type="llama"`` (``TYPE_DEFAULTS`` holds the
    other types'). What each type takes from its fields, as ``transformers`` builds it:

    ===========  =======================  =========  ===================================  =======
    model_type   q/k/v biases (o_proj)    MLP bias   sliding window                       q/k norm
    ===========  =======================  =========  ===================================  =======
    llama        attention_bias (same)    mlp_bias   never                                no
    mistral      no (no)                  no         every layer, when ``sliding_window``  no
    qwen2        always (no)              no         layers >= ``max_window_layers`` when  no
                                                     ``use_sliding_window`` (or
                                                     ``layer_types``)
    qwen3        attention_bias (same)    no         as qwen2                             yes
    ===========  =======================  =========  ===================================  =======

    RoPE: ``rope_theta`` and ``rope_scaling`` (the Hub's files), or ``rope_parameters`` (what
    ``transformers`` 5 writes: the same two in one object); ``head_dim`` defaults to
    ``hidden_size // num_attention_heads`` and ``num_key_value_heads`` to the number of heads
    (plain multi-head attention). After loading, both hold numbers.
    """

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads (no grouping)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float | None = None  # None: rope_parameters' value, else 10 000
    rope_scaling: dict | None = None
    attention_bias: bool | None = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    use_sliding_window: bool = False
    max_window_layers: int | None = None
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    pad_token_id: int | None = None

    TYPE_DEFAULTS = {
        "mistral": {"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                    "sliding_window": 4096},
        "qwen2": {"vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
                  "sliding_window": 4096, "max_window_layers": 28, "bos_token_id": None, "eos_token_id": None},
        "qwen3": {"vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
                  "head_dim": 128, "sliding_window": 4096, "max_window_layers": 28, "bos_token_id": None,
                  "eos_token_id": None},
    }

    def __post_init__(self):
        heads = self.num_attention_heads
        self._head_dim_given = self.head_dim is not None  # else hidden_size must divide into the heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = heads
        if self.head_dim is None and isinstance(heads, int) and heads > 0:
            self.head_dim = self.hidden_size // heads
        saved = self.extra.get("rope_parameters")  # transformers 5 keeps theta and scaling together
        if isinstance(saved, dict):
            if self.rope_theta is None:
                self.rope_theta = saved.get("rope_theta")
            kind = saved.get("rope_type", saved.get("type", "default"))
            if self.rope_scaling is None and kind != "default":
                self.rope_scaling = {k: v for k, v in saved.items() if k != "rope_theta"}
        if self.rope_theta is None:
            self.rope_theta = 10000.0

    def validate(self) -> None:
        if self.model_type not in LLAMA_FAMILY:
            raise ValueError(f"model_type {self.model_type!r} is not one LlamaConfig serves "
                             f"({', '.join(LLAMA_FAMILY)})")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r}: the course's Llama-family MLP is SwiGLU with 'silu'; "
                             f"a model with another activation is another architecture")
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        for name, value in (("num_attention_heads", heads), ("num_key_value_heads", kv)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if heads % kv:
            raise ValueError(f"num_attention_heads={heads} is not divisible by num_key_value_heads={kv}: in "
                             f"grouped-query attention each key/value head serves an equal group of query heads. "
                             f"Use a num_key_value_heads that divides {heads}")
        if not self._head_dim_given and self.hidden_size % heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={heads}, and "
                             f"config.json gives no head_dim: add \"head_dim\" or fix the sizes")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim}: RoPE rotates pairs of features, so it must be even")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        try:
            check_rope_scaling(self.rope_scaling)
        except ValueError as err:
            raise ValueError(f"rope_scaling: {err}") from None
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be at least 1 token (or null for none), got {self.sliding_window}")
        eos = self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]
        if any(e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 0) for e in eos):
            raise ValueError(f"eos_token_id must be a token id, a list of ids or null, got {self.eos_token_id!r}")
        types = self.extra.get("layer_types")
        if types is not None and (not isinstance(types, list) or len(types) != self.num_hidden_layers
                                  or any(t not in LAYER_TYPES for t in types)):
            raise ValueError(f"layer_types must list one of {LAYER_TYPES} for each of the {self.num_hidden_layers} "
                             f"layers, got {types!r}")

    # ---- what the fields mean for each model_type

    @property
    def n_layer(self) -> int:
        """Number of layers (GPT-2's name, read by ``generation.generate_ids`` to size the KV cache)."""
        return self.num_hidden_layers

    @property
    def qkv_bias(self) -> bool:
        """Whether q_proj, k_proj, v_proj have biases: always in Qwen2, never in Mistral, else ``attention_bias``."""
        if self.model_type == "qwen2":
            return True
        return bool(self.attention_bias) and self.model_type != "mistral"

    @property
    def o_bias(self) -> bool:
        """Whether o_proj has a bias: ``attention_bias`` for llama and qwen3, never for mistral and qwen2."""
        return bool(self.attention_bias) and self.model_type in ("llama", "qwen3")

    @property
    def mlp_has_bias(self) -> bool:
        """Whether gate/up/down_proj have biases (``mlp_bias``, a Llama field; the others never do)."""
        return bool(self.mlp_bias) and self.model_type == "llama"

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises each head's queries and keys (RMSNorm over head_dim) before RoPE."""
        return self.model_type == "qwen3"

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` in tokens, or None (it attends to everything before it)."""
        if self.model_type == "mistral":
            return self.sliding_window
        if self.model_type not in ("qwen2", "qwen3") or not self.use_sliding_window or self.sliding_window is None:
            return None
        types = self.extra.get("layer_types")
        if types is not None:
            return self.sliding_window if types[layer] == "sliding_attention" else None
        return self.sliding_window if layer >= (self.max_window_layers or 0) else None


def kv_cache_bytes_per_token(config, dtype: torch.dtype | str = torch.float32) -> int:
    """Bytes the KV cache holds per token of one sequence: 2 (k and v) x layers x KV heads x head_dim x bytes.

    Works for GPT-2 (every head keeps its keys: KV = n_head) and the Llama family (KV =
    ``num_key_value_heads``). Llama 3.2 1B in bfloat16: 2 x 16 x 8 x 64 x 2 = 32 KiB per token,
    where its 32 query heads without grouping would need 128 KiB.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    kv_heads = getattr(config, "num_key_value_heads", None) or config.n_head
    return 2 * config.n_layer * kv_heads * config.head_dim * torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------
# The mask: causal, padding, and a sliding window

def llama_attention_mask(attention_mask: torch.Tensor | None, past_length: int, new_tokens: int,
                         window: int | None = None, device=None) -> torch.Tensor | None:
    """The bool mask a layer uses, True = may attend: causal, within ``window`` tokens, and not padding.

    (T, P + T), or (B, 1, T, P + T) with a padding mask (B, P + T); ``None`` when one new token
    may see everything (a decoding step with no padding and no window in reach). The window
    counts places in the cache, pads included, as ``transformers`` does.
    """
    total = past_length + new_tokens
    if attention_mask is not None and attention_mask.shape[-1] != total:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens, but there are {past_length} "
                         f"cached + {new_tokens} new = {total}: pass the mask of every token so far")
    if attention_mask is None and new_tokens == 1 and (window is None or total <= window):
        return None
    mask = sliding_window_mask(new_tokens, total, window, device=device)  # (T, P + T)
    return mask if attention_mask is None else mask & padding_mask(attention_mask)  # (B, 1, T, P + T)


# --------------------------------------------------------------------------------------
# One layer: x = x + attn(input_layernorm(x)); x = x + mlp(post_attention_layernorm(x))

class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE: q_proj C -> H*D, k_proj and v_proj C -> KV*D, o_proj H*D -> C."""

    def __init__(self, config: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        C, D = config.hidden_size, config.head_dim
        self.num_heads, self.num_key_value_heads, self.head_dim = config.num_attention_heads, \
            config.num_key_value_heads, D
        self.q_proj = Linear(C, self.num_heads * D, bias=config.qkv_bias)
        self.k_proj = Linear(C, self.num_key_value_heads * D, bias=config.qkv_bias)
        self.v_proj = Linear(C, self.num_key_value_heads * D, bias=config.qkv_bias)
        self.o_proj = Linear(self.num_heads * D, C, bias=config.o_bias)
        if config.qk_norm:  # Qwen3: one RMSNorm over each head's D features, shared by the heads
            self.q_norm = RMSNorm(D, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(D, eps=config.rms_norm_eps)
        self.sliding_window = config.layer_window(layer_idx)
        self.attn_dropout_p = config.attention_dropout
        self.scale = D ** -0.5
        self.attention_fn = scaled_dot_product_attention  # chapter 02's; course_lib.fused swaps in torch's kernel

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                cache=None, return_weights: bool = False):
        """x (B, T, C); cos, sin (B, T, D) from ``RotaryEmbedding``; mask bool, broadcastable to (B, H, T, P + T).

        ``cache``: one layer of a ``KVCache``; it receives the rotated keys and the values of the
        KV heads only, (B, KV, T, D).
        """
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.num_key_value_heads)  # (B, KV, T, D)
        v = split_heads(self.v_proj(x), self.num_key_value_heads)  # (B, KV, T, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions enter here, and only here
        if cache is not None:
            k, v = cache.append(k, v)  # (B, KV, P + T, D): the cache holds the KV heads only
        groups = self.num_heads // self.num_key_value_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, P + T, D)
        out = self.attention_fn(q, k, v, mask, dropout_p=self.attn_dropout_p, training=self.training,
                                scale=self.scale, return_weights=return_weights)
        y, weights = out if return_weights else (out, None)  # y (B, H, T, D)
        y = self.o_proj(merge_heads(y))  # (B, T, C)
        return (y, weights) if return_weights else y


class LlamaMLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, C -> F -> C (``layers.swiglu``)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        C, F = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(C, F, bias=config.mlp_has_bias)
        self.up_proj = Linear(C, F, bias=config.mlp_has_bias)
        self.down_proj = Linear(F, C, bias=config.mlp_has_bias)
        self.act_fn = silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm layer: RMSNorm, attend, add; RMSNorm, SwiGLU, add (GPT-2's block with today's parts)."""

    def __init__(self, config: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                cache=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)  # (B, T, C)
        return x + self.mlp(self.post_attention_layernorm(x))  # (B, T, C)


# --------------------------------------------------------------------------------------
# The models

class _LlamaFamilyModel(CourseModel):
    @property
    def architecture(self) -> str:
        """``transformers``' class for this model_type: "Qwen2ForCausalLM", "MistralModel", ..."""
        return _CLASS_PREFIX[self.config.model_type] + type(self).__name__.removeprefix("Llama")


class LlamaModel(_LlamaFamilyModel):
    """token ids (B, T) -> hidden states (B, T, C) after the final RMSNorm ``norm``."""

    base_model_prefix = "model"
    unused_checkpoint_prefixes = ("lm_head.",)

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        """input_ids (B, T) int64 -> (B, T, C).

        ``attention_mask`` (B, P + T): 1 = token, 0 = padding, for every token so far (cached
        and new); positions then count real tokens only, so a left-padded prompt is rotated as
        if it were alone. ``kv_cache``: a ``course_lib.generation.KVCache``.
        """
        past = kv_cache.length if kv_cache is not None else 0
        self.check_inputs(input_ids, attention_mask, position_ids, past, decoding=kv_cache is not None)
        T, device = input_ids.size(1), input_ids.device
        if position_ids is None:
            position_ids = gpt2_position_ids(attention_mask, past, T, device)  # (1 or B, T), as GPT-2
        cos, sin = self.rotary_emb(position_ids)  # (1 or B, T, D) float32, shared by every layer
        masks = {}  # one mask per window size: full layers share one, sliding layers another
        x = self.embed_tokens(input_ids)  # (B, T, C): no position embedding added
        for i, layer in enumerate(self.layers):
            window = layer.self_attn.sliding_window
            if window not in masks:
                masks[window] = llama_attention_mask(attention_mask, past, T, window, device)
            x = layer(x, cos, sin, masks[window], None if kv_cache is None else kv_cache.layers[i])
        return self.norm(x)  # (B, T, C)

    def check_inputs(self, input_ids, attention_mask=None, position_ids=None, past_length: int = 0,
                     decoding: bool = False) -> None:
        """A clear error for a wrong input, as ``GPT2Model.check_inputs`` (``encoder.check_decoder_inputs``)."""
        check_decoder_inputs(input_ids, attention_mask, position_ids, vocab_size=self.config.vocab_size,
                             max_positions=self.config.max_position_embeddings, past_length=past_length,
                             decoding=decoding)


class LlamaForCausalLM(CausalLMGeneration, _LlamaFamilyModel):
    """token ids (B, T) -> next-token logits (B, T, V); ``lm_head`` is tied to ``model.embed_tokens`` when
    config.json says ``tie_word_embeddings``."""

    base_model_prefix = "model"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        # per model, not per class: the same class serves tied and untied checkpoints
        self.tied_weights = {"lm_head.weight": "model.embed_tokens.weight"} if config.tie_word_embeddings else {}
        self.tie_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache=None, last_only: bool = False) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V); ``last_only``: only the last position's, (B, 1, V)."""
        hidden = self.model(input_ids, attention_mask, position_ids, kv_cache)  # (B, T, C)
        if last_only:
            hidden = hidden[:, -1:]  # (B, 1, C)
        return self.lm_head(hidden)  # (B, T, V)


@torch.no_grad()
def init_weights(model: nn.Module) -> nn.Module:
    """``transformers``' initialisation of a Llama-family model (``_init_weights``), in place; returns ``model``.

    Every Linear weight and embedding row N(0, ``initializer_range``) (the padding row, if any,
    0), biases 0, RMSNorm scales 1. Unlike GPT-2's, no extra scaling of the residual
    projections. Draws from torch's global RNG: seed it first. For training a model from
    scratch (a freshly built model has chapter 02's default init instead).
    """
    std = model.config.initializer_range
    modules = list(model.modules())
    tables = {id(m.weight) for m in modules if isinstance(m, Embedding)}
    for module in modules:
        if isinstance(module, Linear):
            if id(module.weight) not in tables:  # a tied lm_head is the embedding table: drawn once, below
                module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
    for module in modules:
        if isinstance(module, Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
    return model
