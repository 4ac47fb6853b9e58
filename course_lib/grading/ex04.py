"""Checks for chapter 04's exercises (``exercises/ex04_roberta.py``).

Inputs are random (sizes, weights, token ids, padding on the right or the left) plus one
real layer of all-MiniLM-L6-v2; expected answers come from ``course_lib.models.encoder``
(its modules loaded with the same tensors), which is tested against ``transformers``. The
encoder's own classes and functions are switched off while the learner's code runs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from course_lib import layers
from course_lib.grading.registry import chapter_rules, GradeError, call_learner, exercise, expect_close, expect_equal, expect_tensor
from course_lib.models import encoder

ANSWER_KEY = tuple(f"course_lib.models.encoder.{name}" for name in (
    "roberta_position_ids", "mean_pooling", "sentence_embeddings", "SelfAttention", "SelfOutput", "Attention",
    "Intermediate", "Output", "Layer", "Encoder", "BertModel", "RobertaModel"))

MINILM_HEADS, MINILM_EPS = 12, 1e-12  # all-MiniLM-L6-v2's config.json


chapter_rules("ex04", allow=("course_lib.layers",))

def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


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


@exercise("ex04.roberta_position_ids", points=2,
          hint="is_token = (input_ids != padding_idx).long(); torch.cumsum(is_token, dim=1) * is_token + "
               "padding_idx: tokens count from padding_idx + 1, pads keep padding_idx, on either side.")
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


@exercise("ex04.extended_attention_mask", points=1,
          hint="torch.zeros(B, 1, 1, T, dtype=dtype).masked_fill((attention_mask == 0)[:, None, None, :], "
               "torch.finfo(dtype).min): 0.0 = attend, the most negative finite value of *that* dtype = padding.")
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
        expected = torch.zeros(b, 1, 1, t, dtype=dtype).masked_fill(~layers.padding_mask(mask),
                                                                    torch.finfo(dtype).min)
        expect_equal(got, expected, what)


@exercise("ex04.attention_probs", points=2,
          hint="Split both into heads: .view(B, T, H, C // H).transpose(1, 2); scores = q @ k.transpose(-2, -1) / "
               "sqrt(C // H) (the head size, not C); + additive_mask; softmax over the last dimension.")
def _(fn, rng):
    for case in range(12):
        b, t, h, d = (2, 5, 3, 4) if case == 0 else random_sizes(rng)
        c = h * d
        query, key = randn(rng, b, t, c, scale=2.0), randn(rng, b, t, c, scale=2.0)
        mask = None if case % 3 == 1 else padded_case(rng, b, t)
        additive = None if mask is None else torch.zeros(b, 1, 1, t).masked_fill(
            ~layers.padding_mask(mask), torch.finfo(torch.float32).min)
        what = (f"attention_probs(query {tuple(query.shape)}, key {tuple(key.shape)}, num_heads={h}, "
                f"additive_mask from attention_mask={mask_text(mask)})")
        got = call(fn, query, key, h, additive, what=what)
        q, k = layers.split_heads(query, h), layers.split_heads(key, h)
        _, expected = layers.scaled_dot_product_attention(
            q, k, k, None if mask is None else layers.padding_mask(mask), return_weights=True)
        expect_close(got, expected, what, atol=1e-6)


@exercise("ex04.self_attention", points=2,
          hint="q, k, v = x @ W.T + b for 'query', 'key', 'value'; probs = attention_probs(q, k, H, "
               "extended_attention_mask(mask, x.dtype)); split v into heads too; (probs @ v).transpose(1, 2)"
               ".reshape(B, T, C).")
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
          hint="h = gelu(x @ W1.T + b1) with the exact (erf) GELU; y = x + h @ W2.T + b2 (the residual comes "
               "BEFORE the norm); return layer_norm(y) with output.LayerNorm's weight, bias and the given eps.")
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


@exercise("ex04.encoder_layer", points=2,
          hint="a = self_attention(x, ...); a = layer_norm(x + a @ Wo.T + bo) with attention.output's weights; "
               "then feed_forward(a, ...): the second residual adds a, not x. Both norms use eps.")
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


@exercise("ex04.mean_pooling", points=1,
          hint="m = attention_mask.unsqueeze(-1).to(hidden_states.dtype); (hidden_states * m).sum(1) / "
               "m.sum(1).clamp(min=1e-9): pads are left out of both the sum and the count.")
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
