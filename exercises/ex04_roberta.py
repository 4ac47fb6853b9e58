"""Chapter 04 exercises: the BERT/RoBERTa encoder, one piece at a time, from checkpoint weights.

The weights come as plain tensors in a dict, named the way a published checkpoint names them
(``query.weight``, ``attention.output.LayerNorm.bias``, ``intermediate.dense.weight`` ...),
so what you write here is exactly what runs when roberta-base or all-MiniLM-L6-v2 reads a
sentence. Shapes: B batch, T tokens, C hidden size, H heads, D = C / H head size,
I = intermediate (feed-forward) size.

You may use any ``torch`` operation (``torch.softmax``, ``torch.nn.functional.gelu`` and
``layer_norm`` included: chapter 02 was the place to write those by hand) and the functions
of ``course_lib.layers``. Not ``course_lib.models.encoder``: it is the answer key, and the
grader switches it off while your code runs. The functions later in this file can call
the ones you wrote earlier (``self_attention`` can use ``attention_probs``, ...).

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/04_roberta.ipynb``: ``check("ex04.roberta_position_ids")`` (one
  cell per exercise) — grading runs in a fresh process, so save this file and run the cell
  again;
* in a terminal: ``python -m course_lib.grade ex04`` (all) or ``python -m course_lib.grade
  ex04.self_attention`` (one).

The checks use random weights and inputs of random sizes (and one real layer of
all-MiniLM-L6-v2) and compare with ``course_lib.models.encoder``, which is itself tested
against ``transformers``, to within float32 rounding (1e-5, or 1e-4 relative to large values).
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

    Hint: ``is_token = (input_ids != padding_idx).long()``; ``torch.cumsum(is_token, dim=1)``
    counts the real tokens up to and including each position; multiply by ``is_token`` so
    that pads get 0, then add ``padding_idx``.
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

    Hint: ``torch.zeros(B, 1, 1, T, dtype=dtype)``, then ``.masked_fill(...)`` where the
    mask, reshaped with ``[:, None, None, :]``, is 0.
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

    Hint: split heads as in chapter 02: ``.view(B, T, H, D).transpose(1, 2)``; then
    ``q @ k.transpose(-2, -1) / math.sqrt(D)``, add the mask, ``torch.softmax(..., dim=-1)``.
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

    Hint: ``attention_probs(q, k, num_heads, extended_attention_mask(...))`` from above; split
    ``v`` the same way; ``probs @ v`` is (B, H, T, D); merge with ``.transpose(1, 2)`` then
    ``.reshape(B, T, C)``.
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

    Hint: ``torch.nn.functional.gelu(h)`` is the exact GELU (its default);
    ``torch.nn.functional.layer_norm(y, (C,), weight, bias, eps)`` the LayerNorm.
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

    Hint: pick a sub-dict by prefix:
    ``{k.removeprefix("attention.self."): v for k, v in weights.items() if k.startswith("attention.self.")}``.
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

    Hint: ``m = attention_mask.unsqueeze(-1).to(hidden_states.dtype)`` is (B, T, 1); then
    ``(hidden_states * m).sum(1) / m.sum(1).clamp(min=1e-9)``.
    """
    raise NotImplementedError
