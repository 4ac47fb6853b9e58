"""Chapter 04: the BERT/RoBERTa encoder, step by step, built from ``course_lib.layers``.

Hold ``transformers/models/roberta/modeling_roberta.py`` beside this file: the classes
and attribute names are the same (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``intermediate.dense``, ``output.LayerNorm``,
``lm_head.decoder`` ...), so a published checkpoint's keys are our parameter names.

BERT and RoBERTa are one architecture. RoBERTa changed the *training* (more data, no
next-sentence task, dynamic masking, a byte-level BPE vocabulary) and kept the network.
What differs in code is small, and each difference is one class here:

==========================  ===============================  ===============================
                            BERT                             RoBERTa
==========================  ===============================  ===============================
position ids                0, 1, 2, ... for every token     padding_idx+1, +2, ...; pads
                                                             keep padding_idx
                                                             (``RobertaEmbeddings``)
token types                 2 (sentence A / B)               1 (always 0)
masked-LM head              ``cls.predictions.transform``    ``lm_head``, GELU fixed
                            with ``hidden_act``
checkpoint prefix           ``bert.``                        ``roberta.``
==========================  ===============================  ===============================

Shapes: B batch, T tokens, C hidden size, H heads, D = C / H head size, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from course_lib.layers import (Dropout, Embedding, LayerNorm, Linear, activation, gelu, merge_heads,
                               padding_mask, scaled_dot_product_attention, softmax, split_heads)
from course_lib.models.base import CourseModel, PretrainedConfig

__all__ = [
    "EncoderConfig", "bert_position_ids", "roberta_position_ids", "BertEmbeddings", "RobertaEmbeddings",
    "extended_attention_mask", "attention_probs",
    "SelfAttention", "SelfOutput", "Attention", "Intermediate", "Output", "Layer", "pre_ln_layer_forward",
    "Encoder", "Pooler", "BertModel", "RobertaModel", "BertLMHead", "RobertaLMHead", "BertForMaskedLM",
    "RobertaForMaskedLM", "fill_mask_top_k", "mean_pooling", "sentence_embeddings",
    "BertForSequenceClassification", "RobertaClassificationHead", "RobertaForSequenceClassification",
    "BertForTokenClassification", "RobertaForTokenClassification", "check_index_tensor", "check_input_ids",
    "check_same_shape", "check_attention_mask", "check_position_ids", "check_encoder_inputs",
]


@dataclasses.dataclass
class EncoderConfig(PretrainedConfig):
    """``config.json`` of a BERT/RoBERTa checkpoint; defaults are ``transformers``' ``BertConfig``."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True

    # RobertaConfig differs from BertConfig only in its special token ids and vocabulary size
    # (XLMRobertaConfig keeps BERT's vocab_size default)
    TYPE_DEFAULTS = {"roberta": {"pad_token_id": 1, "vocab_size": 50265}, "xlm-roberta": {"pad_token_id": 1}}

    def validate(self) -> None:
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r} is not supported "
                             "by the course's encoder (only 'absolute', which every checkpoint the course uses has)")
        try:
            activation(self.hidden_act)
        except ValueError as err:
            raise ValueError(f"hidden_act: {err}") from None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# --------------------------------------------------------------------------------------
# Embeddings: the one place where BERT and RoBERTa compute something differently

def bert_position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (1, T): 0, 1, ..., T-1 for every sequence (padding included)."""
    return torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)  # (1, T)


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """(B, T) -> (B, T): real tokens count up from ``padding_idx + 1``; pads get ``padding_idx``.

    fairseq, where RoBERTa was trained, reserved position ``padding_idx`` for pads and
    numbered tokens after it; that is why roberta-base has 514 = 512 + 2 positions.
    Counting only real tokens also makes a left-padded sequence get the same positions as
    the unpadded one.
    """
    is_token = (input_ids != padding_idx).long()  # (B, T) 1 for tokens, 0 for pads
    return torch.cumsum(is_token, dim=1) * is_token + padding_idx  # (B, T)


class BertEmbeddings(nn.Module):
    """token ids (B, T) -> vectors (B, T, C): word + position + token type, then LayerNorm, dropout."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, C)
        self.token_type_embeddings = Embedding(config.type_vocab_size, C)
        self.LayerNorm = LayerNorm(C, eps=config.layer_norm_eps)  # capital L, N: the checkpoint's key
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.padding_idx = config.pad_token_id
        self.max_positions = config.max_position_embeddings

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return bert_position_ids(input_ids)

    @property
    def max_tokens(self) -> int:
        """The longest input the position table covers (BERT: all its rows)."""
        return self.max_positions

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            if input_ids.size(1) > self.max_tokens:  # a shape check: no pass over the ids, no GPU sync
                raise ValueError(f"the input has {input_ids.size(1)} tokens, more than the {self.max_tokens} this "
                                 f"model's {self.max_positions} position embeddings allow: truncate it "
                                 f"(encode_batch(..., max_length={self.max_tokens}))")
            position_ids = self.position_ids(input_ids)  # (B or 1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # every token is "sentence A"
        x = self.word_embeddings(input_ids)  # (B, T, C)
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        x = x + self.position_embeddings(position_ids)  # (B, T, C), broadcasts over B for BERT
        return self.dropout(self.LayerNorm(x))


class RobertaEmbeddings(BertEmbeddings):
    """RoBERTa's embeddings: BERT's, except where position numbering starts (see ``roberta_position_ids``)."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        # the position table has a (never trained) row for padding_idx, as in transformers
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size,
                                             padding_idx=config.pad_token_id)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return roberta_position_ids(input_ids, self.padding_idx)

    @property
    def max_tokens(self) -> int:
        """Rows 0..padding_idx are never a token's position: roberta-base's 514 rows hold 512 tokens."""
        return self.max_positions - self.padding_idx - 1


# --------------------------------------------------------------------------------------
# transformers' form of the padding mask: additive, in the scores' dtype

def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1 = token, 0 = padding -> (B, 1, 1, T) of ``dtype``: 0 to attend, ``finfo(dtype).min`` to not.

    What ``transformers`` adds to the attention scores (``get_extended_attention_mask``). Our
    layers take the boolean ``padding_mask`` instead and fill masked scores with ``-inf``;
    the softmax gives the same weights either way (``exp`` of a score pushed down by
    ``finfo.min`` underflows to exactly 0). ``finfo.min`` of the scores' own dtype, not
    ``-inf``, keeps a row whose keys are all padding finite: adding it leaves equal scores,
    so such a row gets uniform weights instead of NaN.
    """
    keep = padding_mask(attention_mask)  # (B, 1, 1, T) bool, True = attend
    additive = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return additive.masked_fill(~keep, torch.finfo(dtype).min)  # (B, 1, 1, T)


def attention_probs(query: torch.Tensor, key: torch.Tensor, num_heads: int,
                    additive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every head's attention weights from the projected queries and keys, with an additive mask.

    query, key (B, T, C) -> (B, H, T, T): ``softmax(q k^T / sqrt(D) + additive_mask)`` per head,
    D = C / H. ``SelfAttention`` computes the same weights inside chapter 02's
    ``scaled_dot_product_attention`` (with the boolean mask).
    """
    q, k = split_heads(query, num_heads), split_heads(key, num_heads)  # (B, H, T, D) each
    scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, T, T): D, the head size
    if additive_mask is not None:
        scores = scores + additive_mask  # (B, 1, 1, T) broadcasts over heads and queries
    return softmax(scores, dim=-1)  # each row sums to 1 over the keys


# --------------------------------------------------------------------------------------
# One encoder layer: attention block, then feed-forward block, each "post-LN":
#     x = LayerNorm(x + dropout(sublayer(x)))

class SelfAttention(nn.Module):
    """Multi-head self-attention without its output projection (that is ``SelfOutput.dense``)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        C = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.query = Linear(C, C)
        self.key = Linear(C, C)
        self.value = Linear(C, C)
        self.dropout_p = config.attention_probs_dropout_prob
        self.attention_fn = scaled_dot_product_attention  # chapter 02's; course_lib.fused swaps in torch's kernel

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None,
                return_weights: bool = False):
        """hidden_states (B, T, C), mask bool (B, 1, 1, T) True = attend -> (B, T, C) [, weights (B, H, T, T)]."""
        H = self.num_attention_heads
        q = split_heads(self.query(hidden_states), H)  # (B, H, T, D)
        k = split_heads(self.key(hidden_states), H)  # (B, H, T, D)
        v = split_heads(self.value(hidden_states), H)  # (B, H, T, D)
        out = self.attention_fn(q, k, v, mask, dropout_p=self.dropout_p, training=self.training,
                                return_weights=return_weights)
        y, weights = out if return_weights else (out, None)  # y (B, H, T, D)
        y = merge_heads(y)  # (B, T, C)
        return (y, weights) if return_weights else y


class SelfOutput(nn.Module):
    """Output projection of attention + dropout + residual + LayerNorm (post-LN)."""

    def __init__(self, config: EncoderConfig, in_features: int | None = None):
        super().__init__()
        self.dense = Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.dropout(self.dense(hidden_states)))  # (B, T, C)


class Attention(nn.Module):
    """The attention block: ``self`` (the heads) then ``output`` (projection, residual, norm)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.self = SelfAttention(config)  # `self.self`: odd in Python, but it is the checkpoint's key
        self.output = SelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.self(hidden_states, mask), hidden_states)


class Intermediate(nn.Module):
    """First half of the feed-forward block: widen C -> intermediate_size (4C) and apply the activation."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))  # (B, T, 4C)


class Output(SelfOutput):
    """Second half of the feed-forward block: back from 4C to C, dropout, residual, LayerNorm.

    The same computation as ``SelfOutput``, from the intermediate width; transformers keeps two
    classes, and so do we, because the checkpoint's keys name both (``attention.output`` and
    ``output``).
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config, in_features=config.intermediate_size)


class Layer(nn.Module):
    """One encoder layer: attention block, then feed-forward block (intermediate + output)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attention_output = self.attention(hidden_states, mask)  # (B, T, C)
        return self.output(self.intermediate(attention_output), attention_output)  # (B, T, C)


def pre_ln_layer_forward(layer: Layer, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One encoder layer in **pre-LN** order, with the modules of a (post-LN) ``Layer``.

    BERT normalises after each residual sum; GPT-2 and most models since normalise each
    sublayer's *input* and leave the residual stream untouched::

        post-LN (Layer):  a = LN_1(x + Attn(x));       out = LN_2(a + FFN(a))
        pre-LN (here):    a = x + Attn(LN_1(x));       out = a + FFN(LN_2(a))

    ``LN_1`` is ``layer.attention.output.LayerNorm``, ``LN_2`` is ``layer.output.LayerNorm``.
    A roberta-prelayernorm checkpoint (``transformers``' ``RobertaPreLayerNorm``) stores them
    as ``attention.LayerNorm`` and ``intermediate.LayerNorm``; every other tensor has BERT's
    name. hidden_states (B, T, C), mask bool (B, 1, 1, T) -> (B, T, C). The output is not
    normalised: a pre-LN model applies one more LayerNorm after its last layer.
    """
    attention = layer.attention
    heads = attention.self(attention.output.LayerNorm(hidden_states), mask)  # (B, T, C), normalised input
    attended = hidden_states + attention.output.dropout(attention.output.dense(heads))  # residual: raw x
    widened = layer.intermediate(layer.output.LayerNorm(attended))  # (B, T, I)
    return attended + layer.output.dropout(layer.output.dense(widened))  # (B, T, C)


class Encoder(nn.Module):
    """``num_hidden_layers`` layers applied in turn (keys ``encoder.layer.0`` ... ``encoder.layer.N-1``)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        if config.pruned_heads:  # saved after course_lib.surgery.prune_heads: build the smaller attention blocks
            from course_lib.surgery import prune_attention_heads

            for layer_idx, heads in config.pruned_heads.items():
                prune_attention_heads(self.layer[layer_idx].attention, heads, config.num_attention_heads)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, mask)
        return hidden_states


class Pooler(nn.Module):
    """The first token's ([CLS] / <s>) final vector through dense + tanh: (B, T, C) -> (B, C).

    Trained for BERT's next-sentence task; sentence-transformers use mean pooling instead.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))  # (B, C)


# --------------------------------------------------------------------------------------
# Checking the inputs once, where they enter the model
#
# A wrong input must fail at the entry with a message that names the fix, not silently (a
# negative id would read the table's *last* row: Python indexing) nor deep inside torch.
# Checking a dtype or a shape reads only metadata: free. Checking the values' range is one
# pass over the tensor (``aminmax``); GPT-2's one-token decoding steps skip that pass
# (``GPT2Model.check_inputs``), and so does a trace or a compilation (``torch.onnx``,
# ``torch.compile``), where a value read in Python would be baked into the graph.

INDEX_DTYPES = (torch.int64, torch.int32)  # what an embedding lookup takes


def _can_read_values(tensor: torch.Tensor) -> bool:
    """False where a value cannot or must not be read in Python: a meta tensor, a trace, a compilation."""
    return not (tensor.is_meta or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _first_bad(bad: torch.Tensor) -> tuple[int, ...]:
    """The index of the first True in ``bad`` (called only on the error path)."""
    return tuple(bad.nonzero()[0].tolist())


def check_index_tensor(ids, name: str, limit: int, table: str, *, check_values: bool = True,
                       fix_low: str = "", fix_high: str = "") -> None:
    """``ids`` must be an int64/int32 tensor (B, T) whose values index a table of ``limit`` rows.

    ``name``: the argument ("input_ids"); ``table``: what the rows are, for the message
    ("model's vocabulary (vocab_size=30522)"); ``fix_low`` / ``fix_high``: what to do about a
    negative value / one >= ``limit``. ``check_values=False``: the free checks only (type,
    dtype, rank), no pass over the values.
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, tokens), got {type(ids).__name__}: "
                        f"wrap it, e.g. torch.tensor([ids]) for one sequence")
    if ids.dtype not in INDEX_DTYPES:
        if ids.dtype == torch.bool:
            why = "a bool tensor is a mask, not ids (pass masks as attention_mask)"
        elif ids.is_floating_point() or ids.is_complex():
            why = "ids are whole numbers: convert with .long() (a float here often means the ids were computed)"
        else:
            why = "convert with .long()"
        raise TypeError(f"{name} must hold integer indices (torch.long), got dtype {ids.dtype}: {why}")
    if ids.dim() != 2:
        if ids.dim() == 1:
            raise ValueError(f"{name} has shape {tuple(ids.shape)}: one sequence without a batch dimension; the "
                             f"model takes (batch, tokens): add one with {name}[None] (or .unsqueeze(0))")
        raise ValueError(f"{name} must be 2-D (batch, tokens), got shape {tuple(ids.shape)}")
    if not check_values or not _can_read_values(ids) or ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(ids))  # one pass over the values
    if low < 0 or high >= limit:
        where = _first_bad((ids < 0) | (ids >= limit))
        value = int(ids[where])
        index = ", ".join(map(str, where))
        hint = (f"indices start at 0 (-1 and -100 mark padding or ignored labels; they are not ids){fix_low}"
                if value < 0 else fix_high)
        raise ValueError(f"{name}[{index}] = {value} is outside [0, {limit}), the {table}: {hint}")


def check_input_ids(input_ids, vocab_size: int, *, check_values: bool = True) -> None:
    """``input_ids`` (B, T) int64 (or int32) with every id in [0, vocab_size); a clear error otherwise."""
    check_index_tensor(input_ids, "input_ids", vocab_size, f"model's vocabulary (vocab_size={vocab_size})",
                       check_values=check_values,
                       fix_low="; put the pad token's id at padded places and 0 in attention_mask",
                       fix_high="the ids come from another tokenizer (a larger vocabulary): encode with this "
                                "model's own tokenizer (load_tokenizer of the same source)")


def check_same_shape(tensor, name: str, input_ids: torch.Tensor) -> None:
    """``tensor`` must have ``input_ids``' shape: one value per token (no broadcasting over the batch)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped like input_ids {tuple(input_ids.shape)}, "
                        f"got {type(tensor).__name__}")
    if tensor.shape != input_ids.shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, input_ids {tuple(input_ids.shape)}: they must "
                         f"be the same shape, one value per token (a different batch size would broadcast into "
                         f"outputs for sequences that do not exist)")


def check_attention_mask(attention_mask, shape: tuple[int, int], *, cached: int = 0,
                         check_values: bool = True) -> None:
    """``attention_mask`` (B, L): 1 = token, 0 = padding, of exactly ``shape``; a clear error otherwise.

    ``shape`` is (batch of input_ids, tokens the mask must cover: ``cached`` + new ones).
    Values other than 0 and 1 are refused: GPT-2 counts positions with the mask's cumulative
    sum, so a 2 or a 0.5 would shift them silently. A bool mask needs no pass over its values.
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor of shape {tuple(shape)} (1 = token, 0 = padding), "
                        f"got {type(attention_mask).__name__}")
    got = tuple(attention_mask.shape)
    if got != tuple(shape):
        batch, length = shape
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D (batch, tokens) = {tuple(shape)}, got shape {got}")
        if got[0] != batch:
            raise ValueError(f"attention_mask has batch {got[0]}, input_ids batch {batch}: one mask row per "
                             f"sequence (a different batch would broadcast into outputs for sequences that do "
                             f"not exist); pass the mask encode_batch returned with these ids")
        if cached:
            raise ValueError(f"attention_mask covers {got[1]} tokens, but there are {cached} cached + "
                             f"{length - cached} new = {length}: pass the mask of every token so far")
        raise ValueError(f"attention_mask covers {got[1]} tokens, input_ids has {length}: one value per token "
                         f"(shape {tuple(shape)})")
    if (not check_values or attention_mask.dtype == torch.bool or not _can_read_values(attention_mask)
            or attention_mask.numel() == 0):
        return
    if attention_mask.is_floating_point():
        bad = (attention_mask != 0) & (attention_mask != 1)
        wrong = bool(bad.any())
    else:
        low, high = (int(v) for v in torch.aminmax(attention_mask))
        wrong = low < 0 or high > 1
        bad = (attention_mask != 0) & (attention_mask != 1) if wrong else None
    if wrong:
        where = _first_bad(bad)
        raise ValueError(f"attention_mask[{', '.join(map(str, where))}] = {attention_mask[where].item()}: a mask "
                         f"holds 1 for a token and 0 for padding, nothing else (other values would change "
                         f"positions or weights silently); use the mask encode_batch returns, or (mask != 0).long()")


def check_position_ids(position_ids, input_ids: torch.Tensor, max_positions: int, *,
                       check_values: bool = True) -> None:
    """Explicit ``position_ids``: (1 or B, T) indices into the position table of ``max_positions`` rows."""
    check_index_tensor(position_ids, "position_ids", max_positions,
                       f"rows of the position table (max_position_embeddings / n_positions = {max_positions})",
                       check_values=False)
    B, T = input_ids.shape
    if position_ids.size(0) not in (1, B) or position_ids.size(1) != T:
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, input_ids {(B, T)}: give one "
                         f"position per token, (1, {T}) for every sequence alike or ({B}, {T})")
    check_index_tensor(position_ids, "position_ids", max_positions,
                       f"rows of the position table (max_position_embeddings / n_positions = {max_positions})",
                       check_values=check_values, fix_high="shorten the input, or leave position_ids out")


def check_decoder_inputs(input_ids, attention_mask=None, position_ids=None, *, vocab_size: int,
                         max_positions: int, past_length: int = 0, decoding: bool = False) -> None:
    """A decoder's inputs (GPT-2, the Llama family): dtype, shape (B, T), ids in [0, vocab_size), a 0/1 mask
    (B, P + T), positions below ``max_positions``; a clear error naming the argument and the fix otherwise.

    Decoding steps must cost nothing extra: with a cache (``decoding``) a one-token call
    gets only the checks that read metadata (type, dtype, shapes), not the pass over
    the values — its ids come from the model's own logits, and ``generate_ids``
    checked the prompt's values once. Every other call (a prompt, a whole sequence) is
    checked in full: one ``aminmax`` over the ids and one over the mask.
    """
    check_input_ids(input_ids, vocab_size, check_values=False)  # type, dtype, (B, T)
    B, T = input_ids.shape
    values = not (decoding and T == 1)
    if values:
        check_input_ids(input_ids, vocab_size)
    if attention_mask is not None:
        check_attention_mask(attention_mask, (B, past_length + T), cached=past_length, check_values=values)
    if position_ids is not None:
        check_position_ids(position_ids, input_ids, max_positions, check_values=values)


def check_encoder_inputs(config: EncoderConfig, input_ids, attention_mask=None, token_type_ids=None,
                         position_ids=None) -> None:
    """Every input of an encoder's ``forward`` checked once, at ``BertModel.forward``'s entry (task heads call it).

    input_ids (B, T) integer ids in [0, vocab_size); attention_mask (B, T) of 0/1;
    token_type_ids (B, T) in [0, type_vocab_size); position_ids (1 or B, T). A clear error
    naming the argument, the value and the fix otherwise.
    """
    check_input_ids(input_ids, config.vocab_size)
    if attention_mask is not None:
        check_attention_mask(attention_mask, tuple(input_ids.shape))
    if token_type_ids is not None:
        check_same_shape(token_type_ids, "token_type_ids", input_ids)
        types = config.type_vocab_size
        check_index_tensor(token_type_ids, "token_type_ids", types,
                           f"token types this model has (type_vocab_size={types})",
                           fix_low="; use the tokenizer's encoding.type_ids",
                           fix_high="this model has one token type (RoBERTa): leave token_type_ids out"
                           if types == 1 else f"0 marks the first text of a pair, 1 the second: use the "
                                              f"tokenizer's encoding.type_ids")
    if position_ids is not None:
        check_position_ids(position_ids, input_ids, config.max_position_embeddings)


# --------------------------------------------------------------------------------------
# The bare models: token ids -> one vector per token

class BertModel(CourseModel):
    """token ids (B, T) -> hidden states (B, T, C). ``pooler`` only when the checkpoint has one."""

    embeddings_class = BertEmbeddings
    base_model_prefix = "bert"
    unused_checkpoint_prefixes = ("cls.", "lm_head.", "classifier.", "qa_outputs.")

    def __init__(self, config: EncoderConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.embeddings = self.embeddings_class(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooling_layer else None

    @classmethod
    def for_checkpoint(cls, config: EncoderConfig, checkpoint_keys) -> "BertModel":
        """With a pooler exactly when the file has one (all-MiniLM-L6-v2 and bert-base-uncased do)."""
        return cls(config, add_pooling_layer=any(k.endswith("pooler.dense.weight") for k in checkpoint_keys))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T), 1 = token, 0 = padding -> (B, T, C)."""
        check_encoder_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids)  # clear errors
        mask = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, T) bool
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, C)
        return self.encoder(hidden_states, mask)  # (B, T, C)


class RobertaModel(BertModel):
    """RoBERTa = BERT with ``RobertaEmbeddings`` (and the ``roberta.`` prefix in checkpoints)."""

    embeddings_class = RobertaEmbeddings
    base_model_prefix = "roberta"


# --------------------------------------------------------------------------------------
# Masked-LM heads: hidden states -> a score for every vocabulary entry at every position

class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))  # (B, T, C)


class BertLMPredictionHead(nn.Module):
    """transform, then ``decoder`` (the word embeddings, tied) + a bias per vocabulary entry."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)  # weight tied to word_embeddings
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states)) + self.bias  # (B, T, V)


class BertLMHead(nn.Module):
    """``cls.predictions``: the extra ``cls`` level is where BERT's next-sentence head also lived."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class RobertaLMHead(nn.Module):
    """``lm_head``: dense, GELU (always exact GELU, whatever hidden_act says), layer_norm, decoder + bias."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)  # weight tied to word_embeddings
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.act_fn = gelu

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.act_fn(self.dense(hidden_states)))  # (B, T, C)
        return self.decoder(x) + self.bias  # (B, T, V)


class BertForMaskedLM(CourseModel):
    """token ids (B, T) -> masked-LM logits (B, T, V)."""

    base_model_prefix = "bert"
    tied_weights = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}
    key_aliases = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
    vocab_biases = ("cls.predictions.bias",)
    unused_checkpoint_prefixes = ("cls.seq_relationship.", "bert.pooler.")

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertLMHead(config)
        self.tie_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.cls(self.bert(input_ids, attention_mask, token_type_ids, position_ids))  # (B, T, V)


class RobertaForMaskedLM(CourseModel):
    """token ids (B, T) -> masked-LM logits (B, T, V)."""

    base_model_prefix = "roberta"
    tied_weights = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight"}
    key_aliases = {"lm_head.decoder.bias": "lm_head.bias"}
    vocab_biases = ("lm_head.bias",)
    unused_checkpoint_prefixes = ("roberta.pooler.",)

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.lm_head = RobertaLMHead(config)
        self.tie_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.roberta(input_ids, attention_mask, token_type_ids, position_ids))  # (B, T, V)


# --------------------------------------------------------------------------------------
# Classification heads (chapter 08): hidden states -> one score per class
#
# transformers' key names: ``classifier`` is a Linear (C -> num_labels) for BERT's sequence
# head and for both token heads; RoBERTa's sequence head is a small MLP under the same name,
# ``classifier.dense`` + tanh + ``classifier.out_proj``, on the <s> token's vector (RoBERTa
# has no next-sentence task, so no trained pooler to reuse). num_labels, id2label and
# problem_type come from config.json (``PretrainedConfig.num_labels``).

def classifier_dropout_p(config: EncoderConfig) -> float:
    """config.json's ``classifier_dropout``, else ``hidden_dropout_prob`` (as ``transformers``)."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class BertForSequenceClassification(CourseModel):
    """token ids (B, T) -> logits (B, num_labels): the pooler's [CLS] vector (dense + tanh), dropout, ``classifier``.

    ``num_labels = 1`` is a regression / ranking score, e.g. the cross-encoder
    ``cross-encoder/ms-marco-MiniLM-L6-v2`` that scores (query, passage) pairs.
    """

    base_model_prefix = "bert"
    unused_checkpoint_prefixes = ("cls.",)  # a pre-training checkpoint's MLM and next-sentence heads
    head_modules = ("bert.pooler", "classifier")  # transformers initialises both when the file has neither

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = Dropout(classifier_dropout_p(config))
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T) 1 = token -> logits (B, num_labels), float."""
        hidden_states = self.bert(input_ids, attention_mask, token_type_ids, position_ids)  # (B, T, C)
        pooled = self.bert.pooler(hidden_states)  # (B, C): tanh(dense(h_[CLS]))
        return self.classifier(self.dropout(pooled))  # (B, num_labels)


class RobertaClassificationHead(nn.Module):
    """``classifier`` of RoBERTa's sequence head: <s> vector, dropout, dense + tanh, dropout, out_proj."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(classifier_dropout_p(config))
        self.out_proj = Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden_states[:, 0])  # (B, C): the <s> token, RoBERTa's [CLS]
        x = self.dropout(torch.tanh(self.dense(x)))  # (B, C)
        return self.out_proj(x)  # (B, num_labels)


class RobertaForSequenceClassification(CourseModel):
    """token ids (B, T) -> logits (B, num_labels) from ``RobertaClassificationHead`` on the <s> token."""

    base_model_prefix = "roberta"
    unused_checkpoint_prefixes = ("lm_head.", "roberta.pooler.")
    head_modules = ("classifier.dense", "classifier.out_proj")

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.classifier = RobertaClassificationHead(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T) 1 = token -> logits (B, num_labels), float."""
        return self.classifier(self.roberta(input_ids, attention_mask, token_type_ids, position_ids))


class BertForTokenClassification(CourseModel):
    """token ids (B, T) -> logits (B, T, num_labels): dropout, then ``classifier`` on every token's vector.

    Every position gets scores, padding and sub-word pieces included; which positions count
    (e.g. only the first piece of each word, labels -100 elsewhere) is up to the loss.
    """

    base_model_prefix = "bert"
    unused_checkpoint_prefixes = ("cls.", "bert.pooler.")
    head_modules = ("classifier",)

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = Dropout(classifier_dropout_p(config))
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T) -> logits (B, T, num_labels), float."""
        hidden_states = self.bert(input_ids, attention_mask, token_type_ids, position_ids)  # (B, T, C)
        return self.classifier(self.dropout(hidden_states))  # (B, T, num_labels)


class RobertaForTokenClassification(CourseModel):
    """RoBERTa's token head: the same ``classifier`` on every token, on ``RobertaModel`` (prefix ``roberta.``)."""

    base_model_prefix = "roberta"
    unused_checkpoint_prefixes = ("lm_head.", "roberta.pooler.")
    head_modules = ("classifier",)

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.dropout = Dropout(classifier_dropout_p(config))
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T) -> logits (B, T, num_labels), float."""
        hidden_states = self.roberta(input_ids, attention_mask, token_type_ids, position_ids)  # (B, T, C)
        return self.classifier(self.dropout(hidden_states))  # (B, T, num_labels)


def fill_mask_top_k(head: nn.Module, hidden_states: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int,
                    k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked-LM head's ``k`` best guesses at every masked position: (probabilities, token ids).

    ``head`` maps hidden states to vocabulary scores (``RobertaLMHead``, ``BertLMHead``);
    hidden_states (B, T, C) are the encoder's output for ``input_ids`` (B, T). The M positions
    where ``input_ids == mask_token_id`` are taken in reading order (row by row, left to
    right), and only they go through the head: its decoder is a (V, C) matrix, so scoring
    all B * T positions would cost T times as much for a one-mask sentence.
    Returns probabilities (M, k), highest first, and their token ids (M, k) int64.
    """
    masked = hidden_states[input_ids == mask_token_id]  # (M, C), boolean indexing keeps reading order
    probabilities = softmax(head(masked), dim=-1)  # (M, V)
    best = probabilities.topk(k, dim=-1)  # sorted, highest first
    return best.values, best.indices


# --------------------------------------------------------------------------------------
# Sentence embeddings

def mean_pooling(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding excluded: (B, T, C), (B, T) -> (B, C).

    The recipe of sentence-transformers (all-MiniLM-L6-v2's ``1_Pooling`` config).
    """
    weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (B, T, 1)
    summed = (hidden_states * weights).sum(dim=1)  # (B, C)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # (B, 1), never 0
    return summed / counts


@torch.no_grad()
def sentence_embeddings(model: BertModel, tokenizer, sentences: list[str], normalize: bool = True,
                        max_length: int | None = 256, batch_size: int = 32) -> torch.Tensor:
    """Sentences -> (N, C) embeddings: tokenize, encode, mean-pool, L2-normalise (so dot = cosine).

    ``max_length`` 256 is all-MiniLM-L6-v2's ``max_seq_length``.
    """
    from course_lib.tokenizer_loading import encode_batch

    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(sentences), batch_size):
        batch = encode_batch(tokenizer, sentences[start:start + batch_size], max_length=max_length)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        pooled = mean_pooling(model(ids, mask), mask)  # (b, C)
        if normalize:
            pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        chunks.append(pooled)
    return torch.cat(chunks)
