"""Chapter 04 exercises: the BERT/RoBERTa encoder, one piece at a time, from checkpoint weights.

The weights come as plain tensors in a dict, named the way a published checkpoint names them
(``query.weight``, ``attention.output.LayerNorm.bias``, ``intermediate.dense.weight`` ...),
so what you write here is exactly what runs when roberta-base or all-MiniLM-L6-v2 reads a
sentence. Shapes: B batch, T tokens, C hidden size, H heads, D = C / H head size,
I = intermediate (feed-forward) size.

You may use any ``torch`` operation (``torch.softmax``, ``torch.nn.functional.gelu`` and
``layer_norm`` included: chapter 02 was the place to write those by hand), and this file may
import chapter 02's layers, ``course_lib.layers`` (``split_heads``, ``merge_heads``,
``layer_norm``, ``gelu``, ``softmax`` ...): the grader allows that one module. Not
``course_lib.models.encoder`` or any other ``course_lib`` module: they are the answer key,
and a file that imports them scores 0. The functions later in this file can call the ones
you wrote earlier (``self_attention`` can use ``attention_probs``, ...).

The last two functions are **stretch exercises**: they go past what the notebook shows (an
encoder layer in pre-LN order, and the masked-LM head's top-k guesses with its tied decoder).

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/04_roberta.ipynb``: ``check("ex04.roberta_position_ids")`` (one
  cell per exercise) — grading runs in a fresh process, so save this file and run the cell
  again;
* in a terminal: ``python -m course_lib.grade ex04`` (all) or ``python -m course_lib.grade
  ex04.self_attention`` (one).

The checks use random weights and inputs of random sizes (and one real layer of
all-MiniLM-L6-v2) and compare with ``course_lib.models.encoder``, which is itself tested
against ``transformers``, to within float32 rounding (1e-5, or 1e-4 relative to large values).
When a check fails, the notebook's ``check()`` shows a hint; run it again for the next one.
"""

from __future__ import annotations

import math

import torch


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """RoBERTa's position ids: real tokens count up from ``padding_idx + 1``, pads get ``padding_idx``.

    ``input_ids``: (B, T) integer token ids; a token equal to ``padding_idx`` is padding.
    Returns an integer tensor (B, T). BERT simply uses 0, 1, ..., T-1. RoBERTa was trained in
    fairseq, which reserved the position ``padding_idx`` for pads and numbered the tokens
    after it (that is why roberta-base has 514 = 512 + 2 position embeddings). Only real
    tokens are counted, so a left-padded sentence gets the same positions as the unpadded one.

    Example with ``padding_idx=1`` (roberta-base's ``<pad>``)::

        input_ids = [[0, 713, 16, 2, 1, 1],     # right padding
                     [1, 1, 0, 713, 16, 2]]     # left padding
        result    = [[2, 3, 4, 5, 1, 1],
                     [1, 1, 2, 3, 4, 5]]

    Hint: a running count of the real tokens along each row gives 1, 2, 3, ... for them; the
    pads must not take part in it, and must end up at ``padding_idx`` whatever the count says.
    """
    raise NotImplementedError


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The *additive* attention mask ``transformers`` builds from a tokenizer's ``attention_mask``.

    ``attention_mask``: (B, T) integer tensor, 1 = real token, 0 = padding.
    Returns a tensor of dtype ``dtype`` (a float dtype: float32, float16, bfloat16 ...) and
    shape (B, 1, 1, T): ``0.0`` where the key may be attended to and
    ``torch.finfo(dtype).min`` (the most negative finite number of that dtype) where it is
    padding. Added to the attention scores (B, H, T, T), the two singleton dimensions
    broadcast over heads and queries, and the softmax gives padded keys a weight of 0.
    ``finfo.min`` rather than ``-inf`` keeps a row whose keys are *all* padding finite
    (``-inf - (-inf)`` is NaN).

    Example: ``extended_attention_mask(torch.tensor([[1, 1, 0]]), torch.float32)`` has shape
    (1, 1, 1, 3) and values ``[[[[0.0, 0.0, -3.4028e+38]]]]``.

    Hint: start from a tensor that lets everything through, and overwrite the padded places.
    """
    raise NotImplementedError


def attention_probs(query: torch.Tensor, key: torch.Tensor, num_heads: int,
                    additive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights of every head: ``softmax(q @ k^T / sqrt(D) + additive_mask)``.

    ``query``, ``key``: (B, T, C), the outputs of the ``query`` and ``key`` linear layers
    (all heads side by side). ``num_heads``: H; each head gets D = C // H consecutive
    features (head h: features ``h*D`` to ``(h+1)*D - 1``). ``additive_mask``: ``None`` or
    (B, 1, 1, T) as ``extended_attention_mask`` makes it.
    Returns (B, H, T, T): entry ``[b, h, i, j]`` is how much query token i of head h attends
    to key token j; every row sums to 1 over j.

    Example: all-MiniLM-L6-v2 has C = 384 and H = 12, so D = 32 and the scores are divided
    by ``sqrt(32)``, not ``sqrt(384)``.

    Hint: split the heads as in chapter 02 (``course_lib.layers.split_heads`` is allowed here);
    the mask is added to the scores, before the softmax.
    """
    raise NotImplementedError


def self_attention(hidden_states: torch.Tensor, weights: dict[str, torch.Tensor], num_heads: int,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BERT's ``attention.self`` module, from a checkpoint's tensors.

    ``hidden_states``: (B, T, C). ``weights``: the six tensors a checkpoint stores under
    ``encoder.layer.N.attention.self.``, with that prefix removed:
    ``"query.weight"``, ``"key.weight"``, ``"value.weight"`` (C, C) and ``"query.bias"``,
    ``"key.bias"``, ``"value.bias"`` (C,). ``attention_mask``: ``None`` or (B, T) with
    1 = token, 0 = padding (no query may attend to a padded key).
    Returns (B, T, C): project to queries, keys and values (``x @ W.T + b``: weights are
    stored (out, in)), attend per head, and merge the heads back side by side. There is no
    output projection here: that is ``attention.output.dense``, in ``encoder_layer``.

    Example: for all-MiniLM-L6-v2, ``hidden_states`` (2, 7, 384), ``num_heads=12`` ->
    (2, 7, 384). Padded positions get an output too (their queries still see the real
    tokens); later steps ignore them.

    Hint: your ``attention_probs`` and ``extended_attention_mask`` do the middle part; the
    values are split into heads like the queries, and merged back as chapter 02's
    ``merge_heads`` does (``course_lib.layers`` is allowed here).
    """
    raise NotImplementedError


def feed_forward(hidden_states: torch.Tensor, weights: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    """The feed-forward half of an encoder layer (modules ``intermediate`` and ``output``).

    ``hidden_states``: (B, T, C). ``weights`` (the layer's keys, ``encoder.layer.N.`` removed):
    ``"intermediate.dense.weight"`` (I, C), ``"intermediate.dense.bias"`` (I,),
    ``"output.dense.weight"`` (C, I), ``"output.dense.bias"`` (C,),
    ``"output.LayerNorm.weight"``, ``"output.LayerNorm.bias"`` (C,). ``eps``: the
    LayerNorm's epsilon (``config.layer_norm_eps``, 1e-12 for BERT, 1e-5 for RoBERTa).
    Returns (B, T, C)::

        h = gelu(x @ W1.T + b1)                   # (B, T, I), the exact (erf) GELU
        out = LayerNorm(x + h @ W2.T + b2)        # residual first, then normalise: "post-LN"

    Example: all-MiniLM-L6-v2 has C = 384, I = 1536 and eps = 1e-12.

    Hint: ``torch.nn.functional.gelu`` is the exact GELU by default, and
    ``torch.nn.functional.layer_norm`` takes the normalised shape, weight, bias and eps
    (or use ``course_lib.layers.gelu`` and ``layer_norm``, chapter 02's).
    """
    raise NotImplementedError


def encoder_layer(hidden_states: torch.Tensor, weights: dict[str, torch.Tensor], num_heads: int, eps: float,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One whole BERT/RoBERTa encoder layer, from the 16 tensors a checkpoint stores for it.

    ``hidden_states``: (B, T, C); ``attention_mask``: ``None`` or (B, T), 1 = token, 0 = pad.
    ``weights``: the keys under ``encoder.layer.N.`` with that prefix removed:

    - ``attention.self.{query,key,value}.{weight,bias}`` — for ``self_attention``;
    - ``attention.output.dense.{weight,bias}`` (C, C), (C,) — the attention's output projection;
    - ``attention.output.LayerNorm.{weight,bias}`` (C,);
    - ``intermediate.dense.*``, ``output.dense.*``, ``output.LayerNorm.*`` — for ``feed_forward``.

    Returns (B, T, C)::

        a = self_attention(x, ...)                             # (B, T, C)
        a = LayerNorm_attention(x + a @ Wo.T + bo)             # attention.output: post-LN
        out = feed_forward(a, ...)                             # its residual is a, not x

    Example: stacking 6 such layers with all-MiniLM-L6-v2's weights is the whole encoder.

    Hint: ``self_attention`` expects the six ``attention.self.`` tensors under their short
    names, so build that smaller dict first.
    """
    raise NotImplementedError


def mean_pooling(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One vector per sentence: the average of its token vectors, padding left out.

    ``hidden_states``: (B, T, C) float; ``attention_mask``: (B, T), 1 = token, 0 = padding.
    Returns (B, C): for each sentence, the sum of the vectors of its real tokens divided by
    how many real tokens it has. This is sentence-transformers' recipe (all-MiniLM-L6-v2's
    ``1_Pooling`` config). A row with no real token at all gives zeros: divide by the count
    clamped to at least ``1e-9``, as sentence-transformers does.

    Example: ``hidden_states = [[[1., 2.], [3., 4.], [100., 100.]]]``,
    ``attention_mask = [[1, 1, 0]]`` -> ``[[2., 3.]]`` (the pad's 100s are left out).

    Hint: the mask, given a last dimension of size 1, broadcasts against the hidden states.
    """
    raise NotImplementedError



def pre_ln_encoder_layer(hidden_states: torch.Tensor, weights: dict[str, torch.Tensor], num_heads: int, eps: float,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Stretch: one encoder layer in **pre-LN** order, from a roberta-prelayernorm checkpoint.

    BERT and RoBERTa are *post-LN*: each block adds its sublayer's output to its input and
    normalises the sum. Most models since GPT-2 are *pre-LN*: each block normalises its
    sublayer's *input* and adds the sublayer's output to the un-normalised stream, which
    trains more stably in deep stacks. ``transformers``' ``RobertaPreLayerNorm`` is a RoBERTa
    built that way::

        a   = x + AttentionOutput(SelfAttention(LN_attention(x)))
        out = a + Output(Intermediate(LN_intermediate(a)))

    where ``AttentionOutput`` is ``attention.output.dense``, ``Intermediate`` is
    ``intermediate.dense`` then the exact GELU, ``Output`` is ``output.dense``. There is no
    LayerNorm after the sums: the output keeps the scale of the residual stream (a pre-LN
    model normalises once more after its last layer).

    ``hidden_states``: (B, T, C); ``attention_mask``: ``None`` or (B, T), 1 = token, 0 = pad.
    ``weights``: the layer's 16 tensors as a roberta-prelayernorm checkpoint names them,
    ``encoder.layer.N.`` removed:

    - ``attention.LayerNorm.{weight,bias}`` (C,) — normalises the attention block's input;
    - ``attention.self.{query,key,value}.{weight,bias}`` — as for ``self_attention``;
    - ``attention.output.dense.{weight,bias}`` (C, C), (C,);
    - ``intermediate.LayerNorm.{weight,bias}`` (C,) — normalises the feed-forward block's input;
    - ``intermediate.dense.{weight,bias}`` (I, C), (I,); ``output.dense.{weight,bias}`` (C, I), (C,).

    Both LayerNorms use ``eps``. Returns (B, T, C).

    Example: for an input ``x`` of standard deviation 4, a post-LN layer (``encoder_layer``)
    returns values of standard deviation about 1, set by its last LayerNorm; this layer's
    output keeps the scale of ``x`` (a standard deviation of 4 or more).

    Hint: two residual sums, each around "normalise, then the sublayer"; the residual adds
    the sublayer's output to what came *into* the block, not to its normalised copy.
    """
    raise NotImplementedError


def fill_mask_top_k(hidden_states: torch.Tensor, input_ids: torch.Tensor, weights: dict[str, torch.Tensor],
                    mask_token_id: int, eps: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretch: RoBERTa's ``k`` best guesses for every ``<mask>`` token, with probabilities.

    ``hidden_states``: (B, T, C), the encoder's output for ``input_ids`` (B, T) int64.
    ``weights``: tensors of a roberta-base-style checkpoint (other keys may be present too):

    - ``lm_head.dense.{weight,bias}`` (C, C), (C,); ``lm_head.layer_norm.{weight,bias}`` (C,);
    - ``lm_head.bias`` (V,): one bias per vocabulary entry;
    - ``roberta.embeddings.word_embeddings.weight`` (V, C).

    There is no ``lm_head.decoder.weight``: the decoder is **tied** to the word embeddings
    (the same matrix scores a vector against every word), so the file stores it once.
    RoBERTa's head is ``decoder(layer_norm(gelu(dense(h)))) + bias`` with the exact GELU and
    the LayerNorm's ``eps``; a softmax over the vocabulary turns the scores into
    probabilities.

    Returns ``(probabilities, token_ids)``, both (M, k), for the M positions where
    ``input_ids == mask_token_id``, in reading order (row 0 left to right, then row 1 ...);
    each row highest probability first; token ids as int64. Only the masked positions need
    the head (for roberta-base, V = 50,265: scoring every position would be T times the work).
    With no ``<mask>`` at all, M = 0.

    Example: ``input_ids`` (2, 6) with ``<mask>`` at (row 0, position 1), (0, 3) and (1, 0)
    gives M = 3: row 0 of the results holds the guesses for (0, 1), row 1 for (0, 3), row 2
    for (1, 0); with ``k=5`` both results are (3, 5).

    Hint: select the masked rows first, then the head; ``torch.topk`` gives the k largest
    values along a dimension, sorted, and where they are.
    """
    raise NotImplementedError
