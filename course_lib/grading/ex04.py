"""Checks for chapter 04's exercises (``exercises/ex04_roberta.py``).

Inputs are random (sizes, weights, token ids, padding on the right or the left) plus one
real layer of all-MiniLM-L6-v2; expected answers come from ``course_lib.models.encoder``
(its functions, or its modules loaded with the same tensors), which is tested against
``transformers``. The encoder's own classes and functions are switched off while the
learner's code runs; ``course_lib.layers`` (chapter 02) is allowed.

Two stretch exercises go past the chapter: an encoder layer in pre-LN order, from a
roberta-prelayernorm checkpoint's tensors, and the masked-LM head's top-k guesses for the
masked positions, with the decoder tied to the word embeddings.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from course_lib import layers
from course_lib.grading.registry import (GradeError, call_learner, chapter_rules, exercise, expect_close,
                                         expect_equal, expect_tensor, expect_tensors, randn)
from course_lib.models import encoder

ANSWER_KEY = tuple(f"course_lib.models.encoder.{name}" for name in (
    "roberta_position_ids", "extended_attention_mask", "attention_probs", "mean_pooling", "sentence_embeddings",
    "SelfAttention", "SelfOutput", "Attention", "Intermediate", "Output", "Layer", "pre_ln_layer_forward", "Encoder",
    "BertModel", "RobertaModel", "RobertaLMHead", "BertLMHead", "fill_mask_top_k"))
E = "course_lib.models.encoder."

MINILM_HEADS, MINILM_EPS = 12, 1e-12  # all-MiniLM-L6-v2's config.json


chapter_rules("ex04", allow=("course_lib.layers",))


def call(fn, *args, what: str) -> torch.Tensor:
    """Run the learner's function with the answer key switched off; it must return a tensor
    and leave its inputs (tensors, weight dicts) as they were."""
    out = call_learner(fn, args, what, ANSWER_KEY, "; course_lib.models.encoder is the answer key "
                       "(course_lib.layers and torch are fine)", "`+=`, `.masked_fill_()`, assigning into a weight ...")
    return expect_tensor(out, what)


def random_attention_mask(rng: np.random.Generator, b: int, t: int, min_tokens: int = 1) -> torch.Tensor:
    """(B, T) int64 of 1s then 0s (right padding) or 0s then 1s (left padding), row by row."""
    rows = []
    for _ in range(b):
        n = int(rng.integers(min_tokens, t + 1))
        row = [1] * n + [0] * (t - n)
        rows.append(row if rng.random() < 0.5 else row[::-1])
    return torch.tensor(rows, dtype=torch.long)


def padded_case(rng: np.random.Generator, b: int, t: int) -> torch.Tensor:
    """A mask where at least one row has padding (when T > 1), so ignoring the mask shows."""
    mask = random_attention_mask(rng, b, t)
    if t > 1 and bool(mask.all()):
        mask[0, -1] = 0
    return mask


def mask_text(mask: torch.Tensor | None) -> str:
    return "None" if mask is None else str(mask.tolist())


def config_for(c: int, h: int, i: int = 4, eps: float = 1e-12) -> encoder.EncoderConfig:
    return encoder.EncoderConfig(hidden_size=c, num_attention_heads=h, intermediate_size=i,
                                 layer_norm_eps=eps, hidden_act="gelu")


def loaded(module: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    module.load_state_dict(weights, strict=True)
    return module.eval()


def random_layer_weights(rng: np.random.Generator, c: int, i: int) -> dict[str, torch.Tensor]:
    """The 16 tensors of one encoder layer, by their checkpoint names, with sensible scales."""
    shapes = {}
    for name in ("query", "key", "value"):
        shapes[f"attention.self.{name}.weight"], shapes[f"attention.self.{name}.bias"] = (c, c), (c,)
    shapes["attention.output.dense.weight"], shapes["attention.output.dense.bias"] = (c, c), (c,)
    shapes["intermediate.dense.weight"], shapes["intermediate.dense.bias"] = (i, c), (i,)
    shapes["output.dense.weight"], shapes["output.dense.bias"] = (c, i), (c,)
    weights = {}
    for key, shape in shapes.items():
        fan_in = shape[1] if len(shape) == 2 else 1
        weights[key] = randn(rng, *shape, scale=1.5 / np.sqrt(fan_in) if len(shape) == 2 else 0.5)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        weights[f"{ln}.weight"] = 1.0 + randn(rng, c, scale=0.3)
        weights[f"{ln}.bias"] = randn(rng, c, scale=0.3)
    return weights


def sub(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


@functools.lru_cache(maxsize=None)
def minilm_layer(index: int) -> dict[str, torch.Tensor]:
    """The 16 tensors of all-MiniLM-L6-v2's layer ``index``, ``encoder.layer.N.`` removed."""
    from course_lib.assets import asset_path
    from course_lib.checkpoint import CheckpointReader

    prefix = f"encoder.layer.{index}."
    with CheckpointReader.from_folder(asset_path("all-MiniLM-L6-v2")) as reader:
        return {k[len(prefix):]: reader.get(k).float() for k in reader.keys() if k.startswith(prefix)}


def random_sizes(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(B, T, H, D), small."""
    return int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 5)), int(rng.integers(1, 7))


@exercise("ex04.roberta_position_ids", points=2, reference=E + "roberta_position_ids", hints=(
    "Only real tokens are counted: a pad's position is padding_idx itself, and the n-th real token of a row gets "
    "padding_idx + n, wherever the pads sit (on the left, on the right, or in the middle).",
    "Mark the real tokens with 1 and the pads with 0 (a comparison with padding_idx, turned into integers); a "
    "cumulative sum along the tokens (dim 1) counts the real tokens up to and including each position.",
    "The running count is not 0 on a pad that follows real tokens: multiply it by the same 0/1 marks before you "
    "shift everything by padding_idx. Return integers (torch.long), not floats."))
def _(fn, rng):
    cases = [(torch.tensor([[0, 713, 16, 2, 1, 1], [1, 1, 0, 713, 16, 2]]), 1)]
    for case in range(24):
        padding_idx = [1, 0, 2, int(rng.integers(3, 60))][case % 4]
        b, t = int(rng.integers(1, 5)), int(rng.integers(1, 10))
        ids = torch.from_numpy(rng.integers(0, 60, size=(b, t))).long()
        ids = ids.masked_fill(ids == padding_idx, padding_idx + 61)  # no accidental pads
        mask = random_attention_mask(rng, b, t, min_tokens=0 if case % 6 == 5 else 1)
        if case % 8 == 7 and t > 2:  # a pad in the middle (packed sequences): it too keeps padding_idx
            mask[0, t // 2] = 0
        cases.append((ids.masked_fill(mask == 0, padding_idx), padding_idx))
    for ids, padding_idx in cases:
        what = f"roberta_position_ids({ids.tolist()}, padding_idx={padding_idx})"
        got = call(fn, ids.clone(), padding_idx, what=what)
        if got.is_floating_point() or got.dtype == torch.bool:
            raise GradeError(f"{what}: position ids index an embedding table, so they must be integers "
                             f"(torch.long); got dtype {got.dtype}")
        expect_equal(got, encoder.roberta_position_ids(ids, padding_idx), what)


@exercise("ex04.extended_attention_mask", points=1, reference=E + "extended_attention_mask", hints=(
    "An additive mask: 0.0 where a key may be attended to and a hugely negative number where it is padding, so "
    "that once it is added to the scores, the softmax gives padding a weight of 0.",
    "Start from zeros of shape (B, 1, 1, T) in the requested dtype, then fill the padded positions: `masked_fill` "
    "with a boolean tensor of where attention_mask is 0, given its two singleton dimensions by indexing with None.",
    "The fill value is `torch.finfo(dtype).min` of the dtype you were given (float16's is -65504, float32's "
    "-3.4e38): not -inf, and not -10000."))
def _(fn, rng):
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    for case in range(12):
        b, t = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        if case % 3 == 2:  # any pattern of 0s and 1s
            mask = torch.from_numpy(rng.integers(0, 2, size=(b, t))).long()
        else:
            mask = random_attention_mask(rng, b, t, min_tokens=0)
        if case == 0 and t > 1:
            mask[0, -1] = 0
        mask = mask.to(torch.int32 if case % 4 == 3 else torch.long)
        dtype = dtypes[case % len(dtypes)]
        what = f"extended_attention_mask({mask.tolist()}, dtype={dtype})"
        got = call(fn, mask.clone(), dtype, what=what)
        if got.dtype != dtype:
            raise GradeError(f"{what}: expected dtype {dtype} (the mask is added to scores of that dtype), "
                             f"got {got.dtype}")
        expected = encoder.extended_attention_mask(mask, dtype)
        if tuple(got.shape) != tuple(expected.shape):
            raise GradeError(f"{what}: expected shape {tuple(expected.shape)} = (B, 1, 1, T), so that it broadcasts "
                             f"over the heads and the queries of (B, H, T, T) scores; got {tuple(got.shape)}")
        if bool(torch.isinf(got).any()):
            raise GradeError(f"{what}: your mask holds -inf; use torch.finfo(dtype).min, the most negative finite "
                             f"number (a row of padding only would turn into NaN with -inf)")
        expect_equal(got, expected, what)


@exercise("ex04.attention_probs", points=2, reference=E + "attention_probs", hints=(
    "Each head works on its own D = C / H consecutive features: give the heads a dimension of their own, "
    "(B, H, T, D), then score every query against every key of the same head.",
    "Reshape to (B, T, H, D) and move H in front of T (`view`, then `transpose`); the scores are q times k with "
    "its last two dimensions swapped, divided by sqrt(D), the head size, not sqrt(C).",
    "Add the additive mask (its (B, 1, 1, T) shape broadcasts over heads and queries) before the softmax, and "
    "normalise over the keys: the last dimension. (course_lib.layers.split_heads may do the split.)"))
def _(fn, rng):
    for case in range(12):
        b, t, h, d = (2, 5, 3, 4) if case == 0 else random_sizes(rng)
        c = h * d
        query, key = randn(rng, b, t, c, scale=2.0), randn(rng, b, t, c, scale=2.0)
        mask = None if case % 3 == 1 else padded_case(rng, b, t)
        additive = None if mask is None else encoder.extended_attention_mask(mask, torch.float32)
        what = (f"attention_probs(query {tuple(query.shape)}, key {tuple(key.shape)}, num_heads={h}, "
                f"additive_mask from attention_mask={mask_text(mask)})")
        got = call(fn, query, key, h, additive, what=what)
        expected = encoder.attention_probs(query, key, h, additive)
        if tuple(got.shape) == tuple(expected.shape) and not torch.allclose(got.sum(-1), torch.ones(()), atol=1e-4):
            raise GradeError(f"{what}: the weights of a query must sum to 1 over the keys (the last dimension); "
                             f"yours do not: was the softmax taken over another dimension?")
        expect_close(got, expected, what, atol=1e-6)


@exercise("ex04.self_attention", points=2, reference=E + "SelfAttention", hints=(
    "Three linear projections of the same input (query, key, value), every head's attention weights, then each "
    "head's weighted sum of its values, put back side by side: (B, T, C) in, (B, T, C) out.",
    "Checkpoint weights are stored (out_features, in_features): a projection multiplies by the transposed weight "
    "and adds the bias. Your attention_probs and extended_attention_mask (in the input's dtype) do the middle part.",
    "Split the values into heads like the queries; after probs @ v, (B, H, T, D), move T back in front of H before "
    "reshaping to (B, T, C): reshaping straight away mixes up tokens and heads."))
def _(fn, rng):
    for case in range(9):
        if case == 8:  # a real layer: all-MiniLM-L6-v2, C = 384, H = 12
            index = int(rng.integers(0, 6))
            weights, h = sub(minilm_layer(index), "attention.self."), MINILM_HEADS
            b, t, c = 2, 6, 384
            source = f"all-MiniLM-L6-v2's layer {index}"
        else:
            b, t, h, d = (2, 5, 3, 4) if case == 0 else random_sizes(rng)
            c = h * d
            weights = sub(random_layer_weights(rng, c, 4), "attention.self.")
            source = "random weights"
        x = randn(rng, b, t, c)
        mask = None if case % 3 == 1 else padded_case(rng, b, t)
        what = (f"self_attention(hidden_states {tuple(x.shape)}, {source}, num_heads={h}, "
                f"attention_mask={mask_text(mask)})")
        got = call(fn, x, dict(weights), h, None if mask is None else mask.clone(), what=what)
        with torch.no_grad():
            module = loaded(encoder.SelfAttention(config_for(c, h)), weights)
            expected = module(x, None if mask is None else layers.padding_mask(mask))
        expect_close(got, expected, what, atol=1e-5, rtol=1e-4)


def _feed_forward_reference(x, weights, eps):
    c, i = x.shape[-1], weights["intermediate.dense.weight"].shape[0]
    block = nn.Module()
    block.intermediate = encoder.Intermediate(config_for(c, 1, i, eps))
    block.output = encoder.Output(config_for(c, 1, i, eps))
    block = loaded(block, weights)
    with torch.no_grad():
        return block.output(block.intermediate(x), x)


@exercise("ex04.feed_forward", points=2,
          reference=(E + "Intermediate", E + "SelfOutput", E + "Output"), hints=(
    "Widen every token's vector to I features, apply GELU, project back to C; then add the block's input (the "
    "residual) and normalise the sum with output.LayerNorm: post-LN.",
    "Both dense weights are stored (out, in). GELU is the exact, erf-based one (the default of "
    "torch.nn.functional.gelu, not approximate='tanh'); torch.nn.functional.layer_norm takes the normalised "
    "shape (C,), the weight, the bias and eps.",
    "The order matters: the residual sum first, the LayerNorm of that sum last. Not LayerNorm then residual, and "
    "not normalising the input; use the eps you are given."))
def _(fn, rng):
    for case in range(10):
        b, t, h, d = random_sizes(rng)
        c, i = h * d + 1, int(rng.integers(2, 17))  # C >= 2 so that the LayerNorm has something to normalise
        eps = [1e-12, 1e-5, 0.1][case % 3]
        weights = {k: v for k, v in random_layer_weights(rng, c, i).items()
                   if k.startswith(("intermediate.", "output."))}
        x = randn(rng, b, t, c, scale=float(rng.choice([0.5, 1.0, 2.0])))
        what = f"feed_forward(hidden_states {tuple(x.shape)}, weights with I={i}, eps={eps:g})"
        got = call(fn, x, dict(weights), eps, what=what)
        expect_close(got, _feed_forward_reference(x, weights, eps), what, atol=1e-5, rtol=1e-4)


@exercise("ex04.encoder_layer", points=2, reference=(E + "Attention", E + "Layer"), hints=(
    "Two post-LN blocks in a row: the attention block (self-attention, output projection, residual, LayerNorm), "
    "then the feed-forward block you wrote, applied to the attention block's output.",
    "Give self_attention only the attention.self.* tensors, with that prefix removed (a dict comprehension with "
    "startswith); attention.output.dense projects the merged heads, attention.output.LayerNorm is the first norm.",
    "The feed-forward block's residual is the attention block's output, not the layer's input; both norms use the "
    "same eps, and only self-attention needs the mask."))
def _(fn, rng):
    for case in range(7):
        if case == 6:  # a real layer: all-MiniLM-L6-v2
            index = int(rng.integers(0, 6))
            weights, h, eps, i = minilm_layer(index), MINILM_HEADS, MINILM_EPS, 1536
            b, t, c = 2, 6, 384
            source = f"all-MiniLM-L6-v2's layer {index}"
        else:
            b, t, h, d = (2, 5, 3, 4) if case == 0 else random_sizes(rng)
            c, i, eps = h * max(d, 2), int(rng.integers(2, 17)), [1e-12, 1e-5, 0.1][case % 3]
            weights = random_layer_weights(rng, c, i)
            source = f"random weights, I={i}"
        x = randn(rng, b, t, c)
        mask = None if case % 3 == 1 else padded_case(rng, b, t)
        what = (f"encoder_layer(hidden_states {tuple(x.shape)}, {source}, num_heads={h}, eps={eps:g}, "
                f"attention_mask={mask_text(mask)})")
        got = call(fn, x, dict(weights), h, eps, None if mask is None else mask.clone(), what=what)
        with torch.no_grad():
            layer = loaded(encoder.Layer(config_for(c, h, i, eps)), weights)
            expected = layer(x, None if mask is None else layers.padding_mask(mask))
        expect_close(got, expected, what, atol=1e-5, rtol=1e-4)


@exercise("ex04.mean_pooling", points=1, reference=E + "mean_pooling", hints=(
    "Average each sentence's token vectors over its real tokens only: add up the vectors where the mask is 1 and "
    "divide by how many there are.",
    "Turn the mask into a (B, T, 1) tensor of the hidden states' dtype (unsqueeze the last dimension, convert): "
    "multiplying by it zeroes the pads, and its sum over T is the number of real tokens.",
    "A sentence with no real token has a count of 0: clamp the count to at least 1e-9, so that 0 / 1e-9 gives "
    "zeros and not NaN."))
def _(fn, rng):
    cases = []
    for case in range(10):
        b, t, c = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
        mask = padded_case(rng, b, t)
        if case == 9:  # a row that is all padding gives zeros, not NaN
            mask = torch.cat([mask, torch.zeros(1, t, dtype=torch.long)])
            b += 1
        cases.append((randn(rng, b, t, c, scale=3.0) + float(rng.normal() * 5), mask))
    for hidden, mask in cases:
        what = f"mean_pooling(hidden_states {tuple(hidden.shape)}, attention_mask={mask.tolist()})"
        got = call(fn, hidden, mask.clone(), what=what)
        if torch.isnan(got).any():
            raise GradeError(f"{what}: your result contains NaN; a row with no real token must give zeros "
                             f"(clamp the count to at least 1e-9)")
        expect_close(got, encoder.mean_pooling(hidden, mask), what)


# ----------------------------------------------------------------------------- stretch: pre-LN layer

# roberta-prelayernorm's names for the two norms -> where they sit in our (post-LN) Layer
PRE_LN_NORMS = {"attention.LayerNorm.": "attention.output.LayerNorm.", "intermediate.LayerNorm.": "output.LayerNorm."}


def _pre_ln_checkpoint(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Layer's 16 tensors under roberta-prelayernorm's names (the two norms renamed)."""
    out = {}
    for key, value in weights.items():
        for ours, theirs in ((v, k) for k, v in PRE_LN_NORMS.items()):
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        out[key] = value
    return out


def _pre_ln_variants(layer, x, mask):
    """Typical wrong pre-LN layers, each computed with the course's modules: {message: output}."""
    attention = layer.attention
    ln_a, ln_f = attention.output.LayerNorm, layer.output.LayerNorm

    def attend(inp, norm, residual_from_norm=False):
        normed = norm(inp)
        return (normed if residual_from_norm else inp) + attention.output.dense(attention.self(normed, mask))

    def ffn(inp, norm, residual_from_norm=False):
        normed = norm(inp)
        return (normed if residual_from_norm else inp) + layer.output.dense(layer.intermediate(normed))

    pre = encoder.pre_ln_layer_forward(layer, x, mask)
    return {
        "that is the post-LN layer (BERT's order: residual sum, then LayerNorm); pre-LN normalises each sublayer's "
        "input instead and adds the sublayer's output to the un-normalised x": layer(x, mask),
        "the residual carries the normalised input; in pre-LN the residual adds to the un-normalised x "
        "(x + Attn(LN(x)), not LN(x) + Attn(LN(x)))": ffn(attend(x, ln_a, True), ln_f, True),
        "the attention half's residual carries the normalised input; it adds to the un-normalised x "
        "(x + Attn(LN(x)), not LN(x) + Attn(LN(x)))": ffn(attend(x, ln_a, True), ln_f),
        "the feed-forward half's residual carries the normalised input; it adds to the un-normalised a "
        "(a + FFN(LN(a)), not LN(a) + FFN(LN(a)))": ffn(attend(x, ln_a), ln_f, True),
        "the two LayerNorms are swapped: attention.LayerNorm normalises the input of self-attention, "
        "intermediate.LayerNorm the input of intermediate.dense": ffn(attend(x, ln_f), ln_a),
        "your layer ends with a LayerNorm; a pre-LN layer's output is the residual stream itself, not normalised "
        "(the model adds one final LayerNorm after its last layer)": ln_f(pre),
        "the attention mask was ignored: padded keys must get no attention":
            encoder.pre_ln_layer_forward(layer, x, None),
    }


def _diagnose(got: torch.Tensor, variants: dict[str, torch.Tensor], what: str, atol=1e-4) -> None:
    """A GradeError naming the mistake when ``got`` equals one of the typical wrong answers."""
    for message, wrong in variants.items():
        if tuple(got.shape) == tuple(wrong.shape) and torch.allclose(got.float(), wrong.float(), atol=atol,
                                                                      rtol=1e-4):
            raise GradeError(f"{what}: {message}")


@exercise("ex04.pre_ln_encoder_layer", points=3, stretch=True, reference=E + "pre_ln_layer_forward", hints=(
    "Pre-LN normalises the input of each sublayer and adds the sublayer's output to the un-normalised stream: "
    "x + Attn(LN(x)), then the same with the feed-forward block; nothing normalises the layer's output.",
    "attention.LayerNorm comes before self-attention, intermediate.LayerNorm before intermediate.dense; the "
    "residual sums come after attention.output.dense and after output.dense. Your self_attention does the heads.",
    "Keep the un-normalised input for the residual (adding LN(x) instead of x is the classic slip), and do not "
    "finish with a LayerNorm."))
def _(fn, rng):
    for case in range(9):
        b, t, h, d = (2, 5, 3, 4) if case == 0 else random_sizes(rng)
        # C >= 4: a LayerNorm over 2 or 3 nearly equal features turns float32 rounding into visible differences
        c, i, eps = h * max(d, 4), int(rng.integers(2, 17)), [1e-5, 1e-12, 0.1][case % 3]
        weights = random_layer_weights(rng, c, i)
        file_weights = _pre_ln_checkpoint(weights)
        x = randn(rng, b, t, c, scale=float(rng.choice([0.5, 2.0, 4.0])))  # the stream's scale shows
        mask = None if case % 4 == 1 else padded_case(rng, b, t)
        bool_mask = None if mask is None else layers.padding_mask(mask)
        what = (f"pre_ln_encoder_layer(hidden_states {tuple(x.shape)}, roberta-prelayernorm weights with I={i}, "
                f"num_heads={h}, eps={eps:g}, attention_mask={mask_text(mask)})")
        got = call(fn, x, dict(file_weights), h, eps, None if mask is None else mask.clone(), what=what)
        with torch.no_grad():
            layer = loaded(encoder.Layer(config_for(c, h, i, eps)), weights)
            expected = encoder.pre_ln_layer_forward(layer, x, bool_mask)
            if tuple(got.shape) == tuple(expected.shape) and not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
                variants = _pre_ln_variants(layer, x, bool_mask)
                if mask is None or bool(mask.all()):
                    variants = {m: v for m, v in variants.items() if not m.startswith("the attention mask")}
                _diagnose(got, variants, what)
        expect_close(got, expected, what, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- stretch: fill-mask head

MLM_KEYS = ("lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight", "lm_head.layer_norm.bias",
            "lm_head.bias", "roberta.embeddings.word_embeddings.weight")


def _mlm_case(rng: np.random.Generator, case: int):
    """hidden (B, T, C), input_ids (B, T), mask id, k, eps, the head's checkpoint tensors."""
    b, t, c = int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(8, 17))  # a wide enough layer_norm
    v = int(rng.integers(8, 60))
    mask_id = int(rng.integers(0, v))
    ids = torch.from_numpy(rng.integers(0, v - 1, size=(b, t))).long()
    ids = ids + (ids >= mask_id).long()  # every id but the mask's
    masked = rng.random((b, t)) < 0.3
    if case != 5:
        masked[int(rng.integers(0, b)), int(rng.integers(0, t))] = True  # at least one <mask>
    else:
        masked[:] = False  # no <mask> at all: two empty (0, k) results
    if case == 0 and b * t > 1:
        masked[:] = False
        masked[0, 0] = masked[-1, -1] = True  # first and last positions
    ids[torch.from_numpy(masked)] = mask_id
    k = v if case == 3 else int(rng.integers(1, min(6, v) + 1))
    eps = [1e-5, 1e-12, 0.1][case % 3]
    weights = {
        "lm_head.dense.weight": randn(rng, c, c, scale=1.5 / np.sqrt(c)),
        "lm_head.dense.bias": randn(rng, c, scale=0.5),
        "lm_head.layer_norm.weight": 1.0 + randn(rng, c, scale=0.3),
        "lm_head.layer_norm.bias": randn(rng, c, scale=0.3),
        "lm_head.bias": randn(rng, v, scale=1.0),
        "roberta.embeddings.word_embeddings.weight": randn(rng, v, c, scale=1.0),
        "roberta.embeddings.position_embeddings.weight": randn(rng, t + 2, c, scale=0.1),  # in the file, not needed
    }
    hidden = randn(rng, b, t, c, scale=float(rng.choice([0.5, 1.0, 3.0])))
    return hidden, ids, mask_id, k, eps, weights


def _mlm_head(weights: dict[str, torch.Tensor], eps: float, act=None, variant: str = "") -> nn.Module:
    """RobertaLMHead with the checkpoint's tensors, its decoder tied to the word embeddings."""
    v, c = weights["roberta.embeddings.word_embeddings.weight"].shape
    config = encoder.EncoderConfig(hidden_size=c, vocab_size=v, num_attention_heads=1, layer_norm_eps=eps)
    head = encoder.RobertaLMHead(config)
    state = {k.removeprefix("lm_head."): w for k, w in weights.items() if k.startswith("lm_head.")}
    state["decoder.weight"] = weights["roberta.embeddings.word_embeddings.weight"]
    if variant == "no bias":
        state["bias"] = torch.zeros_like(state["bias"])
    head = loaded(head, state)
    if act is not None:
        head.act_fn = act
    if variant == "no layer_norm":
        head.layer_norm = nn.Identity()
    return head


def _mlm_variants(weights, eps, hidden, ids, mask_id, k, expected_values):
    """Typical wrong fill-mask heads: {message: top-k probabilities}."""
    def top(head, h=hidden, i=ids):
        return encoder.fill_mask_top_k(head, h, i, mask_id, k)[0]

    head = _mlm_head(weights, eps)
    norm_first = _mlm_head(weights, eps)
    norm_first.forward = lambda x: norm_first.decoder(norm_first.act_fn(norm_first.layer_norm(norm_first.dense(x)))) \
        + norm_first.bias
    masked = hidden[ids == mask_id]
    logits = head(masked)
    return {
        "lm_head.bias is missing: the decoder adds one bias per vocabulary entry after the tied matrix product":
            top(_mlm_head(weights, eps, variant="no bias")),
        "GELU with the tanh approximation; RobertaLMHead uses the exact (erf) GELU":
            top(_mlm_head(weights, eps, act=lambda x: torch.nn.functional.gelu(x, approximate="tanh"))),
        "the layer_norm is missing: dense, GELU, layer_norm, then the decoder": top(_mlm_head(weights, eps,
                                                                                           variant="no layer_norm")),
        "layer_norm before GELU: the head is dense, GELU, then layer_norm": top(norm_first),
        "masked positions taken column by column: take them in reading order (row by row, left to right), as "
        "boolean indexing with input_ids == mask_token_id does":
            top(head, hidden.transpose(0, 1), ids.transpose(0, 1)),
        "these look like the scores (logits) of the top k, not probabilities: apply a softmax over the vocabulary "
        "first": logits.topk(k, dim=-1).values,
        "the softmax went over the masked positions (dimension 0); each position's probabilities are a softmax "
        "over the vocabulary, the last dimension": layers.softmax(logits, dim=0).topk(k, dim=-1).values,
        "your probabilities are sorted lowest first; topk gives the most likely first": expected_values.flip(-1),
    }


@exercise("ex04.fill_mask_top_k", points=3, stretch=True, reference=E + "fill_mask_top_k", hints=(
    "Pick out the hidden vectors of the masked positions, run only them through RoBERTa's head (dense, GELU, "
    "layer_norm, decoder plus bias), turn the scores into probabilities, and keep the k largest.",
    "The decoder is tied: its (V, C) weight is roberta.embeddings.word_embeddings.weight (the file stores it once); "
    "lm_head.bias is the per-word bias. Boolean indexing with input_ids == mask_token_id gives the rows in reading "
    "order.",
    "Softmax over the vocabulary (the last dimension), then topk along it: it returns the values highest first and "
    "their indices, the two results."))
def _(fn, rng):
    for case in range(10):
        hidden, ids, mask_id, k, eps, weights = _mlm_case(rng, case)
        n_masks = int((ids == mask_id).sum())
        what = (f"fill_mask_top_k(hidden_states {tuple(hidden.shape)}, input_ids={ids.tolist()}, weights with "
                f"V={weights['lm_head.bias'].shape[0]}, mask_token_id={mask_id}, eps={eps:g}, k={k})")
        out = call_learner(fn, (hidden, ids.clone(), dict(weights), mask_id, eps, k), what, ANSWER_KEY,
                           "; course_lib.models.encoder is the answer key", "`+=`, assigning into a weight ...")
        got_values, got_ids = expect_tensors(out, 2, what, "(probabilities (M, k), token ids (M, k))")
        with torch.no_grad():
            head = _mlm_head(weights, eps)
            values, top_ids = encoder.fill_mask_top_k(head, hidden, ids, mask_id, k)
            probabilities = layers.softmax(head(hidden[ids == mask_id]), dim=-1)  # (M, V)
        if tuple(got_values.shape) != (n_masks, k) or tuple(got_ids.shape) != (n_masks, k):
            raise GradeError(f"{what}: the input has {n_masks} masked position(s), so both results must be "
                             f"({n_masks}, {k}) (one row per <mask>, k guesses each); got {tuple(got_values.shape)} "
                             f"and {tuple(got_ids.shape)}")
        if got_ids.is_floating_point() or got_ids.dtype == torch.bool:
            raise GradeError(f"{what}: token ids must be integers (torch.long); got dtype {got_ids.dtype}")
        if n_masks == 0:
            continue
        if not torch.allclose(got_values.float(), values, atol=1e-5, rtol=1e-4):
            with torch.no_grad():
                _diagnose(got_values.float(), _mlm_variants(weights, eps, hidden, ids, mask_id, k, values), what,
                          atol=1e-5)
        expect_close(got_values, values, f"{what}, the probabilities", atol=1e-5, rtol=1e-4)
        got_ids = got_ids.long()
        if ((got_ids < 0) | (got_ids >= probabilities.shape[-1])).any():
            raise GradeError(f"{what}: a token id is outside the vocabulary 0 .. {probabilities.shape[-1] - 1}")
        if any(len(set(row)) != len(row) for row in got_ids.tolist()):
            raise GradeError(f"{what}: a row of your token ids names the same token twice")
        # each id must be the token whose probability you give (ties may come in either order)
        expect_close(probabilities.gather(1, got_ids), values,
                     f"{what}, the probabilities of the token ids you return (they must be the top-k tokens, "
                     f"in the order of your probabilities; expected ids {top_ids.tolist()})", atol=1e-5, rtol=1e-4)
