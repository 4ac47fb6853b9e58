"""The course's GPT-2 and generation, on their own (transformers parity: tests/test_gpt2_parity.py).

Properties that must hold whatever the weights: causality, the KV cache giving the same
logits and tokens as recomputing, a left-padded batch generating what each prompt
generates alone, seeds, temperature, top-k/top-p/min-p restricting what can be drawn, the
repetition penalty, stopping at the end token, and clear errors. The min-p filter and the
repetition penalty (chapter 06's stretch exercises) are also compared with ``transformers``'
logits processors, a test-only oracle.
"""

from __future__ import annotations

import pytest
import torch

from course_lib import generation, layers
from course_lib.fused import fuse
from course_lib.generation import (KVCache, LayerKVCache, apply_repetition_penalty, min_p_filter, next_token,
                                   top_k_filter, top_p_filter)
from course_lib.models import model_class
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model, gpt2_attention_mask, gpt2_position_ids
from helpers import randomize_

VOCAB = 97


def small_config(**overrides) -> GPT2Config:
    values = {"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": 48, "n_embd": 32, "n_layer": 2,
              "n_head": 4, "bos_token_id": 0, "eos_token_id": 0, **overrides}
    return GPT2Config.from_dict(values)


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return randomize_(GPT2LMHeadModel(small_config()), seed=0, scale=0.3)


def prompt(length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the model

def test_config_defaults_are_gpt2_124m_and_bad_configs_are_refused():
    config = GPT2Config.from_dict({"model_type": "gpt2"})
    assert (config.n_embd, config.n_layer, config.n_head, config.vocab_size, config.n_positions) == (768, 12, 12,
                                                                                                     50257, 1024)
    assert config.inner_dim == 3072 and config.activation_function == "gelu_new"
    with torch.device("meta"):
        assert GPT2LMHeadModel(config).num_parameters() == 124_439_808  # gpt2's published count
    assert model_class(config) is GPT2LMHeadModel and model_class(config, "base") is GPT2Model
    for bad, words in [({"n_embd": 30, "n_head": 4}, "not divisible"), ({"add_cross_attention": True}, "cross"),
                       ({"tie_word_embeddings": False}, "tie_word_embeddings"),
                       ({"activation_function": "swish"}, "activation_function")]:
        with pytest.raises(ValueError, match=words):
            GPT2Config.from_dict({"model_type": "gpt2", **bad})
    with pytest.raises(ValueError, match="masked-lm.*does not exist"):
        model_class(config, "masked-lm")


def test_lm_head_is_the_token_embedding(model):
    assert model.lm_head.weight is model.transformer.wte.weight
    assert "lm_head.weight" not in dict(model.named_parameters())  # counted once


def test_the_future_cannot_change_the_past(model):
    ids = prompt(12)
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-6, rtol=0)
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3


def test_position_ids_and_masks():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert gpt2_position_ids(mask, 0, 5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert gpt2_position_ids(mask, 4, 1).tolist() == [[2], [4]]  # the newest token, after 4 cached ones
    assert gpt2_position_ids(None, 3, 2).tolist() == [[3, 4]]
    assert gpt2_attention_mask(None, 7, 1) is None  # one new token may see everything
    assert torch.equal(gpt2_attention_mask(None, 2, 3), layers.causal_mask(3, 5))
    full = gpt2_attention_mask(mask, 2, 3)  # (B, 1, 3, 5)
    assert full.shape == (2, 1, 3, 5) and not full[0, 0, :, :2].any() and full[1, 0, 0, :3].all()
    with pytest.raises(ValueError, match="covers 4 tokens.*2 cached \\+ 3 new"):
        gpt2_attention_mask(mask[:, :4], 2, 3)


def test_too_long_input_is_refused(model):
    with pytest.raises(ValueError, match="48 positions"):
        model(prompt(49))
    assert model.generate(prompt(40), 9, eos_token_id=[]).shape == (1, 49)  # the last token is never fed back
    with pytest.raises(ValueError, match="41 tokens \\+ 9 new tokens needs 49 positions; the model has 48"):
        model.generate(prompt(41), 9, eos_token_id=[])


# ---------------------------------------------------------------------------- KV cache

def test_cache_step_by_step_gives_the_full_forward_logits(model):
    ids = prompt(10, seed=1)
    with torch.no_grad():
        full = model(ids)  # (1, 10, V)
        cache = KVCache(model.config.n_layer)
        steps = [model(ids[:, :4], kv_cache=cache)]  # prefill 4, then one token at a time
        steps += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 10 and cache.layers[1].keys.shape == (1, 4, 16, 8)  # capacity 4 -> 8 -> 16


def test_layer_cache_grows_keeps_its_content_and_refuses_another_batch():
    cache = LayerKVCache(capacity=3)
    ks = [torch.randn(2, 4, n, 8) for n in (2, 1, 4)]  # 7 tokens: grows past the capacity of 3
    for k in ks:
        keys, values = cache.append(k, -k)
    assert cache.length == 7 and cache.capacity >= 7
    assert torch.equal(keys, torch.cat(ks, dim=2)) and torch.equal(values, -keys)
    assert cache.nbytes == 2 * 2 * 4 * cache.capacity * 8 * 4
    with pytest.raises(ValueError, match="a cache belongs to one batch"):
        cache.append(torch.randn(3, 4, 1, 8), torch.randn(3, 4, 1, 8))


def test_generate_with_and_without_cache_and_fused_give_the_same_tokens(model):
    ids = prompt(5, seed=2)
    cached = model.generate(ids, 30, eos_token_id=[])
    assert cached.shape == (1, 35) and torch.equal(cached[:, :5], ids)
    assert torch.equal(model.generate(ids, 30, eos_token_id=[], use_cache=False), cached)
    fast = fuse(randomize_(GPT2LMHeadModel(small_config()), seed=0, scale=0.3))
    assert torch.equal(fast.generate(ids, 30, eos_token_id=[]), cached)


# ---------------------------------------------------------------------------- batches

def test_left_padded_batch_equals_each_prompt_alone(model):
    lengths = (7, 3, 5)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, T - n:] = prompt(n, seed=10 + row)[0]
        mask[row, T - n:] = 1
    for use_cache in (True, False):
        batch = model.generate(ids, 15, attention_mask=mask, eos_token_id=[], use_cache=use_cache)
        for row, n in enumerate(lengths):
            alone = model.generate(ids[row:row + 1, T - n:], 15, eos_token_id=[])
            assert torch.equal(batch[row, T - n:], alone[0]), (use_cache, row)
    sampled = model.generate(ids, 15, attention_mask=mask, eos_token_id=[], seed=3, top_k=10)
    assert torch.equal(sampled, model.generate(ids, 15, attention_mask=mask, eos_token_id=[], seed=3, top_k=10))


def test_right_padding_and_bad_shapes_are_refused(model):
    ids = prompt(4, batch=2)
    with pytest.raises(ValueError, match="pad batches for generation on the left"):
        model.generate(ids, 3, attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="attention_mask covers 3 tokens, input_ids has 4"):
        model.generate(ids, 3, attention_mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token.*BOS"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, -1)


# ---------------------------------------------------------------------------- choosing tokens

def test_end_token_stops_generation_and_fills_finished_rows(model):
    ids = prompt(4, seed=4, batch=2)
    free = model.generate(ids, 12, eos_token_id=[])
    stop = int(free[0, 4 + 3])  # row 0's 4th new token becomes the end token
    first_hit = [int((free[r, 4:] == stop).nonzero()[0]) if (free[r, 4:] == stop).any() else None for r in range(2)]
    out = model.generate(ids, 12, eos_token_id=stop)
    assert first_hit[0] <= 3 and out[0, 4 + first_hit[0]] == stop
    if first_hit[1] is None:  # row 1 never ends: generation runs to max_new_tokens, row 0 filled with the end token
        assert out.shape == (2, 16) and (out[0, 4 + first_hit[0]:] == stop).all()
    else:  # both end: generation stops when the later one does
        assert out.size(1) == 4 + max(first_hit) + 1
    assert model.config.eos_token_id == 0  # default: the config's end token
    assert torch.equal(model.generate(ids, 12, eos_token_id=[0]), model.generate(ids, 12))


def test_sampling_is_repeatable_with_a_seed_and_varies_without_one(model):
    ids = prompt(3, seed=5)
    a = model.generate(ids, 20, seed=1, eos_token_id=[])
    assert torch.equal(a, model.generate(ids, 20, seed=1, eos_token_id=[]))
    assert not torch.equal(a, model.generate(ids, 20, seed=2, eos_token_id=[]))
    greedy = model.generate(ids, 20, eos_token_id=[])
    assert not torch.equal(a, greedy)
    assert torch.equal(model.generate(ids, 20, temperature=0.0, eos_token_id=[]), greedy)
    assert torch.equal(model.generate(ids, 20, temperature=1e-4, seed=9, eos_token_id=[]), greedy)  # ~ argmax


def test_is_sampling_rules():
    assert not generation.is_sampling()
    assert generation.is_sampling(seed=0) and generation.is_sampling(temperature=0.7)
    assert generation.is_sampling(top_k=5) and generation.is_sampling(top_p=0.9)
    assert generation.is_sampling(min_p=0.1) and not generation.is_sampling(temperature=0, min_p=0.1)
    assert not generation.is_sampling(temperature=0, top_k=5)
    with pytest.raises(ValueError, match="temperature"):
        generation.is_sampling(temperature=-1)


def test_top_k_keeps_the_k_best_and_ties():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, -2.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, False, True]]  # tie kept
    assert torch.equal(top_k_filter(logits, 10), logits)
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)
    draws = next_token(logits.expand(2000, -1), top_k=1, generator=torch.Generator().manual_seed(0))
    assert (draws == 1).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: (~torch.isinf(top_p_filter(logits, p))).int().tolist()[0]  # noqa: E731
    assert kept(0.5) == [1, 0, 0, 0]
    assert kept(0.51) == [1, 1, 0, 0]
    assert kept(0.8) == [1, 1, 0, 0]
    assert kept(0.81) == [1, 1, 1, 0]
    assert kept(1.0) == [1, 1, 1, 1]
    assert kept(1e-6) == [1, 0, 0, 0]  # the best token always stays
    order = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()  # not sorted: filtered in vocabulary order
    assert (~torch.isinf(top_p_filter(order, 0.8))).int().tolist() == [[0, 1, 0, 1]]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            top_p_filter(logits, bad)


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(20000, -1)
    g = torch.Generator().manual_seed(0)
    share = {t: (next_token(logits, temperature=t, generator=g) == 0).float().mean().item() for t in (0.5, 1.0, 2.0)}
    expected = {t: torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / t, 0)[0].item() for t in share}
    for t in share:
        assert abs(share[t] - expected[t]) < 0.02, (t, share[t], expected[t])
    assert share[0.5] > share[1.0] > share[2.0]


# ---------------------------------------------------------------------------- min-p and the repetition penalty

def random_logits(seed: int, shape=(4, 50), scale: float = 3.0, dropped: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * scale
    if dropped:
        mask = torch.rand(*shape, generator=g) < dropped
        mask[..., 0] = False  # never a whole row
        logits = logits.masked_fill(mask, float("-inf"))
    return logits


def test_min_p_keeps_tokens_relative_to_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = lambda m: (~torch.isinf(min_p_filter(probs.log(), m))).int().tolist()[0]  # noqa: E731
    assert kept(0.0) == [1, 1, 1, 1]
    assert kept(0.4) == [1, 1, 0, 0]  # threshold 0.2
    assert kept(0.6) == [1, 1, 0, 0]  # threshold 0.3: a token at the threshold stays
    assert kept(0.61) == [1, 0, 0, 0]
    assert kept(1.0) == [1, 0, 0, 0]  # the best token always stays
    ties = torch.tensor([[2.0, 2.0, 1.0]])
    assert (~torch.isinf(min_p_filter(ties, 1.0))).tolist() == [[True, True, False]]
    flat, sure = torch.zeros(1, 10), torch.tensor([[8.0] + [0.0] * 9])  # unsure keeps all, sure keeps one
    assert not torch.isinf(min_p_filter(flat, 0.5)).any() and int((~torch.isinf(min_p_filter(sure, 0.5))).sum()) == 1
    logits = random_logits(0, (2, 3, 20))
    before = logits.clone()
    out = min_p_filter(logits, 0.2)
    assert torch.equal(logits, before) and torch.equal(out[~torch.isinf(out)], logits[~torch.isinf(out)])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_p"):
            min_p_filter(logits, bad)


@pytest.mark.parametrize("seed", range(5))
def test_min_p_equals_transformers_min_p_warper(seed):
    tf = pytest.importorskip("transformers")
    from transformers.generation.logits_process import MinPLogitsWarper

    for min_p in (0.0, 0.05, 0.3, 0.9, 1.0):
        logits = random_logits(seed, (6, 300), scale=[1.0, 3.0][seed % 2], dropped=0.3 if seed >= 3 else 0.0)
        expected = MinPLogitsWarper(min_p)(None, logits.clone())
        assert torch.equal(min_p_filter(logits, min_p), expected), (min_p, tf.__version__)


def test_repetition_penalty_divides_positive_multiplies_negative_once_per_token():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0], [2.0, -1.0, 0.5, -3.0, 1.0, 0.0]])
    ids = torch.tensor([[1, 2, 2, 2, 0, 5], [3, 3, 3, 3, 3, 3]])
    out = apply_repetition_penalty(logits, ids, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.25, -3.0, 1.0, 0.0], [2.0, -1.0, 0.5, -6.0, 1.0, 0.0]]
    assert logits[0, 0] == 2.0  # the input is unchanged
    reward = apply_repetition_penalty(logits, ids, 0.5)  # below 1: repeats become more likely
    assert reward[1, 3] == -1.5 and reward[0, 2] == 1.0
    assert torch.equal(apply_repetition_penalty(logits, ids, 1.0), logits)
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_repetition_penalty(logits, ids, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_repetition_penalty_equals_transformers_processor(seed):
    pytest.importorskip("transformers")
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(100 + seed)
    logits = random_logits(seed, (5, 80))
    ids = torch.randint(0, 20, (5, 30), generator=g)  # 20 distinct tokens at most: many repeats
    for penalty in (1.3, 2.0, 0.7):
        expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        assert torch.equal(apply_repetition_penalty(logits, ids, penalty), expected), penalty


def test_min_p_restricts_what_is_drawn(model):
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]]).expand(3000, -1)
    draws = next_token(logits, min_p=0.5, generator=torch.Generator().manual_seed(0))  # keeps tokens 0 and 1
    assert set(draws.tolist()) == {0, 1}
    ids = prompt(4, seed=6)
    a = model.generate(ids, 20, min_p=0.2, seed=1, eos_token_id=[])
    assert torch.equal(a, model.generate(ids, 20, min_p=0.2, seed=1, eos_token_id=[]))
    assert torch.equal(model.generate(ids, 20, min_p=1.0, seed=5, eos_token_id=[]),  # only the best: greedy
                       model.generate(ids, 20, eos_token_id=[]))


def test_repetition_penalty_in_generation(model):
    ids = prompt(6, seed=7)
    greedy = model.generate(ids, 25, eos_token_id=[])
    assert torch.equal(model.generate(ids, 25, eos_token_id=[], repetition_penalty=1.0), greedy)
    strong = model.generate(ids, 25, eos_token_id=[], repetition_penalty=1e6)  # a seen token never comes back
    new = strong[0, 6:].tolist()
    assert len(set(new)) == len(new) and not set(new) & set(ids[0].tolist())
    for use_cache in (True, False):  # the penalty reads the ids, not the cache
        assert torch.equal(model.generate(ids, 25, eos_token_id=[], repetition_penalty=1.5, use_cache=use_cache),
                           model.generate(ids, 25, eos_token_id=[], repetition_penalty=1.5))
    lengths = (6, 3)  # pads are not part of the text: a padded row generates what it generates alone
    T = max(lengths)
    batch_ids = torch.full((2, T), 5, dtype=torch.long)  # pad with token 5 ...
    mask = torch.zeros_like(batch_ids)
    for row, n in enumerate(lengths):
        batch_ids[row, T - n:] = prompt(n, seed=20 + row)[0]
        mask[row, T - n:] = 1
    batch = model.generate(batch_ids, 15, attention_mask=mask, eos_token_id=[], repetition_penalty=1e6)
    for row, n in enumerate(lengths):
        alone = model.generate(batch_ids[row:row + 1, T - n:], 15, eos_token_id=[], repetition_penalty=1e6)
        assert torch.equal(batch[row, T - n:], alone[0]), row


def test_repetition_penalty_generates_what_transformers_generates():
    tf = pytest.importorskip("transformers")
    from course_lib import load_model
    from course_lib.assets import asset_path

    ours = load_model("tiny-gpt2")
    theirs = tf.GPT2LMHeadModel.from_pretrained(asset_path("tiny-gpt2")).eval()
    ids = torch.tensor([[464, 329, 2643, 318]]) % ours.config.vocab_size
    greedy = ours.generate(ids, 30, eos_token_id=[])
    for penalty in (1.3, 2.0):
        assert not torch.equal(ours.generate(ids, 30, eos_token_id=[], repetition_penalty=penalty), greedy)
        with torch.no_grad():
            expected = theirs.generate(ids, max_new_tokens=30, min_new_tokens=30, do_sample=False,
                                       repetition_penalty=penalty, pad_token_id=ours.config.eos_token_id)
        assert torch.equal(ours.generate(ids, 30, eos_token_id=[], repetition_penalty=penalty), expected), penalty


def test_conv1d_weights_load_transposed_contiguous_in_any_dtype():
    from course_lib import load_model

    from course_lib import fused

    fp32 = load_model("tiny-gpt2", fast=False)  # the teaching path: rows, as chapter 02's Linear reads them
    bf16 = load_model("tiny-gpt2", dtype=torch.bfloat16, fast=False)
    fast = load_model("tiny-gpt2")  # the default: the layout speed_up measured as fastest, written as read
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.3.mlp.c_proj.weight"):
        a, b = fp32.get_parameter(name), bf16.get_parameter(name)
        assert a.is_contiguous() and b.is_contiguous() and b.dtype == torch.bfloat16
        assert torch.equal(b, a.to(torch.bfloat16))
        assert fused.weight_layout(fast.get_parameter(name)) == fused.matvec_layout()
        assert torch.equal(fast.get_parameter(name), a)
    assert fp32.transformer.wte.weight.dtype == torch.float32 and bf16.lm_head.weight is bf16.transformer.wte.weight
