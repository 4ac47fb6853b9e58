"""Our Llama-family decoder (``course_lib.models.llama``), loaded with ``load_model``, against ``transformers``.

One model file serves five published configurations: meta-llama/Llama-3.2-1B (llama3 RoPE
scaling, head_dim given, GQA 32:8, tied), HuggingFaceTB/SmolLM2-135M (GQA 9:3, tied),
Qwen/Qwen2.5-0.5B (q/k/v biases, GQA 14:2, tied), Qwen/Qwen3-0.6B (q/k norm, head_dim 128 >
hidden/heads, tied) and mistralai/Mistral-7B-v0.1 (sliding window, untied). Each config.json is
written out by hand below, with only hidden_size, intermediate_size and num_hidden_layers shrunk
(and head_dim with them where the published file derives it); every other field is as published.
``transformers`` builds the model with random weights and ``save_pretrained`` writes it (the
Hub's layout: one file, or shards with an index); the published config.json then replaces the
one ``transformers`` 5 writes (``rope_parameters``), so the Hub's field names are what we read
(one test reads the ``rope_parameters`` form too). Bar: max |Δ| <= 1e-4 on float32 logits;
greedy tokens identical with and without the KV cache.
"""

from __future__ import annotations

import json

import pytest
import torch

from course_lib import load_model, quantize_model
from course_lib.checkpoint import StateDictMismatchError
from course_lib.fused import fuse
from course_lib.generation import KVCache
from course_lib.models import LlamaConfig, config_from_dict
from course_lib.models.llama import LlamaForCausalLM, init_weights, kv_cache_bytes_per_token
from course_lib.quantization import QuantLinear, TiedQuantHead
from helpers import assert_close

# config.json as published on the Hub (course_lib.models.published_configs); SHRINK says which sizes the tests cut
from course_lib.models.published_configs import (LLAMA_3_2_1B, MISTRAL_7B, QWEN2_5_0_5B,  # noqa: E402
                                                 QWEN3_0_6B, SMOLLM2_135M)

# hidden_size must stay a multiple of the heads where head_dim is derived (SmolLM2 9, Qwen2.5 14, Mistral 32)
SHRINK = {
    "Llama-3.2-1B": (LLAMA_3_2_1B, {"hidden_size": 64, "intermediate_size": 128}),
    "SmolLM2-135M": (SMOLLM2_135M, {"hidden_size": 288, "intermediate_size": 768}),  # head_dim 64 -> 32
    "Qwen2.5-0.5B": (QWEN2_5_0_5B, {"hidden_size": 112, "intermediate_size": 224}),  # head_dim 64 -> 8
    "Qwen3-0.6B": (QWEN3_0_6B, {"hidden_size": 64, "intermediate_size": 128}),
    "Mistral-7B-v0.1": (MISTRAL_7B, {"hidden_size": 256, "intermediate_size": 512}),  # head_dim 128 -> 8
}
NAMES = list(SHRINK)
LAYERS = 2


def shrunk(name: str, **changes) -> dict:
    published, sizes = SHRINK[name]
    return {**published, **sizes, "num_hidden_layers": LAYERS, **changes}


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def reference_model(tf, config: dict, seed: int):
    """transformers' model for ``config`` in float32, every parameter random: norm scales near 1, the rest
    N(0, 0.05^2) (biases too), so a weight in the wrong place or a missing bias shows in the logits."""
    hf = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(**config), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.05 * noise)
    return hf.eval()


def save_hub_folder(hf, folder, config: dict, **save_kwargs):
    """``save_pretrained`` (the Hub's tensor layout), then the published config.json in place of the one
    transformers 5 writes."""
    hf.save_pretrained(folder, **save_kwargs)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tf, tmp_path_factory):
    """name -> (folder, transformers model, config), made on first use."""
    root = tmp_path_factory.mktemp("llama-family")
    made = {}

    def get(name: str):
        if name not in made:
            config = shrunk(name)
            hf = reference_model(tf, config, seed=NAMES.index(name) + 1)
            made[name] = (save_hub_folder(hf, root / name, config), hf, config)
        return made[name]

    return get


def left_padded_batch(vocab: int, lengths=(11, 6), seed: int = 0):
    """ids, attention_mask (B, T) padded on the left with token 0, and the positions generate() gives."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, T - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[row, T - n:] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def check_logits(what: str, model, hf, vocab: int, lengths=(11, 6)) -> None:
    ids, mask, positions = left_padded_batch(vocab, lengths)
    with torch.no_grad():
        reference = hf(ids[:1]).logits
        assert reference.std() > 0.1, f"{what}: the logits are too flat to compare"
        assert_close(f"{what}, one prompt", model(ids[:1]), reference)
        ours = model(ids, mask)  # positions from the mask
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert_close(f"{what}, left-padded batch", ours[real], theirs[real])


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(checkpoints, name):
    folder, hf, config = checkpoints(name)
    model = load_model(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.model_type == config["model_type"] and model.architecture == config["architectures"][0]
    assert model.load_report.ok, model.load_report.summary()
    tied = config["tie_word_embeddings"]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.out_features == config["num_key_value_heads"] * model.config.head_dim
    assert (attention.q_proj.bias is not None) == (config["model_type"] == "qwen2")  # only Qwen2 has q/k/v biases
    assert hasattr(attention, "q_norm") == (config["model_type"] == "qwen3")
    check_logits(name, model, hf, config["vocab_size"])


def test_base_task_gives_transformers_hidden_states(checkpoints):
    folder, hf, config = checkpoints("Qwen3-0.6B")
    model = load_model(folder, task="base")
    assert type(model).__name__ == "LlamaModel" and model.architecture == "Qwen3Model"
    ids, _, _ = left_padded_batch(config["vocab_size"])
    with torch.no_grad():
        assert_close("Qwen3Model hidden states", model(ids), hf.model(ids).last_hidden_state)


def test_sharded_checkpoint_with_index_loads(tf, tmp_path):
    config = shrunk("Mistral-7B-v0.1")
    hf = reference_model(tf, config, seed=11)
    folder = save_hub_folder(hf, tmp_path / "sharded", config, max_shard_size="10MB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and not (folder / "model.safetensors").exists()
    assert "lm_head.weight" in index["weight_map"]  # untied: the head is a tensor of its own
    model = load_model(folder)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    check_logits("Mistral, sharded", model, hf, config["vocab_size"])


def test_transformers_5_config_with_rope_parameters_loads(tf, checkpoints, tmp_path):
    """transformers 5 writes rope_theta and rope_scaling as one "rope_parameters" object: the same model."""
    _, hf, config = checkpoints("Llama-3.2-1B")
    hf.save_pretrained(tmp_path / "v5")
    written = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert written["rope_parameters"]["rope_type"] == "llama3" and "rope_scaling" not in written
    model = load_model(tmp_path / "v5")
    assert model.config.rope_theta == 500000.0 and model.config.rope_scaling["factor"] == 32.0
    check_logits("Llama 3.2, rope_parameters config", model, hf, config["vocab_size"])


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_equal_transformers_with_and_without_cache(checkpoints, name):
    folder, hf, config = checkpoints(name)
    model = load_model(folder)
    prompt = torch.randint(0, config["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, 8, eos_token_id=[])
    assert cached.shape == (1, 15)
    assert torch.equal(cached, expected)
    assert torch.equal(model.generate(prompt, 8, eos_token_id=[], use_cache=False), expected)


def test_left_padded_batch_generates_what_each_prompt_generates_alone(checkpoints):
    folder, hf, config = checkpoints("SmolLM2-135M")
    model = load_model(folder)
    ids, mask, _ = left_padded_batch(config["vocab_size"], lengths=(9, 4), seed=7)
    batch = model.generate(ids, 8, attention_mask=mask, eos_token_id=[])
    for row in range(ids.size(0)):
        alone = model.generate(ids[row:row + 1, mask[row].bool()], 8, eos_token_id=[])
        assert torch.equal(batch[row, -alone.size(1):], alone[0]), f"row {row}"
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                               pad_token_id=0)
    assert torch.equal(batch, expected)
    assert torch.equal(model.generate(ids, 8, attention_mask=mask, eos_token_id=[], use_cache=False), batch)


# ----------------------------------------------------------------------------- sliding window

def test_mistral_sliding_window_is_exercised(tf, tmp_path):
    """A window of 5 tokens on 16-token sequences: logits and cached generation as transformers', and the
    window really changes them (the same weights without it give other logits after position 5)."""
    config = shrunk("Mistral-7B-v0.1", sliding_window=5)
    hf = reference_model(tf, config, seed=21)
    folder = save_hub_folder(hf, tmp_path / "window", config)
    model = load_model(folder)
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [5, 5]
    check_logits("Mistral, sliding_window=5", model, hf, config["vocab_size"], lengths=(16, 9))
    ids, _, _ = left_padded_batch(config["vocab_size"], lengths=(16,))
    unwindowed = load_model(save_hub_folder(hf, tmp_path / "no-window", {**config, "sliding_window": None}))
    with torch.no_grad():
        ours, full = model(ids), unwindowed(ids)
    assert_close("the first 5 positions see no further back anyway", ours[:, :5], full[:, :5], tol=1e-5)
    assert (ours[:, 5:] - full[:, 5:]).abs().max() > 1e-2
    prompt = ids[:, :3]
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 12, eos_token_id=[]), expected)  # the cache grows past the window
    assert torch.equal(model.generate(prompt, 12, eos_token_id=[], use_cache=False), expected)


def test_qwen_sliding_window_in_the_upper_layers(tf, tmp_path):
    """Qwen2's use_sliding_window: layers from max_window_layers on attend within the window."""
    config = shrunk("Qwen2.5-0.5B", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    hf = reference_model(tf, config, seed=22)
    model = load_model(save_hub_folder(hf, tmp_path / "qwen-window", config))
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, 4]
    check_logits("Qwen2, window in layer 1", model, hf, config["vocab_size"], lengths=(12, 7))


# ----------------------------------------------------------------------------- the KV cache

@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Mistral-7B-v0.1"])
def test_kv_cache_holds_only_the_kv_heads(checkpoints, name):
    folder, _, config = checkpoints(name)
    model = load_model(folder)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4  # float32
    assert kv_cache_bytes_per_token(model.config) == per_token
    assert kv_cache_bytes_per_token(model.config, "bfloat16") == per_token // 2
    B, T = 2, 9
    cache = KVCache(model.config.n_layer, capacity=T)
    with torch.no_grad():
        model(torch.randint(0, config["vocab_size"], (B, T)), kv_cache=cache)
    assert cache.length == T
    assert cache.layers[0].keys.shape == (B, config["num_key_value_heads"], T, head_dim)
    assert cache.nbytes == B * T * per_token  # measured: what the buffers hold
    ratio = config["num_attention_heads"] // config["num_key_value_heads"]
    assert ratio == 4 and cache.nbytes * ratio == B * T * 2 * LAYERS * config["num_attention_heads"] * head_dim * 4


def test_kv_cache_bytes_per_token_of_gpt2():
    gpt2 = config_from_dict({"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768})
    assert kv_cache_bytes_per_token(gpt2) == 2 * 12 * 12 * 64 * 4


# ----------------------------------------------------------------------------- quantization, fuse, saving

@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Mistral-7B-v0.1"])
def test_int8_quantization_runs_and_stays_close(checkpoints, name):
    folder, hf, config = checkpoints(name)
    model = load_model(folder)
    ids, mask, _ = left_padded_batch(config["vocab_size"])
    with torch.no_grad():
        float_logits = model(ids, mask)
        quantize_model(model, "int8")
        assert isinstance(model.model.layers[0].self_attn.k_proj, QuantLinear)
        assert isinstance(model.lm_head, TiedQuantHead if config["tie_word_embeddings"] else QuantLinear)
        int8_logits = model(ids, mask)
        loaded = load_model(folder, quantize="int8")(ids, mask)  # quantized while reading the file
    real = mask.bool()
    a, b = float_logits[real], int8_logits[real]
    relative = ((a - b).norm() / a.norm()).item()
    assert 0 < relative < 0.05, relative  # random Gaussian weights: the hardest case for absmax scales
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    assert_close("int8 after loading vs while loading", loaded[real], b, tol=1e-5)
    tokens = model.generate(ids[:1], 5, eos_token_id=[])
    assert tokens.shape == (1, ids.size(1) + 5)
    with torch.no_grad():  # int4 (groups of 32) runs too; random Gaussian weights lose ~17 % of the signal
        int4_logits = load_model(folder, quantize="int4")(ids, mask)[real]
    assert 0.05 < ((a - int4_logits).norm() / a.norm()).item() < 0.3


@pytest.mark.parametrize("name", ["Qwen2.5-0.5B", "Qwen3-0.6B"])
def test_fused_model_equals_reference(checkpoints, name):
    from course_lib.fused import FusedRMSNorm

    folder, hf, config = checkpoints(name)
    fused = fuse(load_model(folder))
    norms = [m for m in fused.modules() if "Norm" in type(m).__name__]
    assert norms and all(type(m) is FusedRMSNorm for m in norms)  # Qwen3's q/k norms included
    assert fused.model.layers[0].mlp.act_fn is torch.nn.functional.silu
    check_logits(f"{name} fused", fused, hf, config["vocab_size"])
    prompt = torch.randint(0, config["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(5))
    reference = load_model(folder).generate(prompt, 8, eos_token_id=[])
    assert torch.equal(fused.generate(prompt, 8, eos_token_id=[]), reference)


@pytest.mark.parametrize("name", ["SmolLM2-135M", "Mistral-7B-v0.1"])
def test_our_save_pretrained_loads_in_transformers(tf, checkpoints, name, tmp_path):
    folder, hf, config = checkpoints(name)
    load_model(folder).save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["architectures"] == config["architectures"] and saved["rope_theta"] == config["rope_theta"]
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    ids, _, _ = left_padded_batch(config["vocab_size"])
    with torch.no_grad():
        assert_close(f"{name}: our save_pretrained -> transformers", reloaded(ids).logits, hf(ids).logits, tol=0.0)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling: rope_scaling type 'yarn' is not one"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 32.0}}, "needs low_freq_factor, high_freq_factor"),
    ({"num_key_value_heads": 5}, "num_attention_heads=32 is not divisible by num_key_value_heads=5"),
    ({"head_dim": 63}, "head_dim=63: RoPE rotates pairs"),
    ({"hidden_act": "gelu"}, "SwiGLU with 'silu'"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be at least 1"),
    ({"sliding_window": 0}, "sliding_window must be at least 1"),
    ({"rope_theta": "500000"}, "rope_theta must be a finite number or null"),
    ({"layer_types": ["full_attention"]}, "layer_types must list one of"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError) as err:
        config_from_dict(shrunk("Llama-3.2-1B", **change), where="llama/config.json")
    assert message in str(err.value) and "llama/config.json" in str(err.value)


def test_hidden_size_must_divide_into_heads_when_head_dim_is_not_given():
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_attention_heads=32"):
        config_from_dict(shrunk("Mistral-7B-v0.1", hidden_size=100))
    config = config_from_dict(shrunk("Llama-3.2-1B", hidden_size=100))  # head_dim given: any width works
    assert isinstance(config, LlamaConfig) and config.head_dim == 64


def test_an_untied_checkpoint_without_lm_head_is_refused(tf, checkpoints, tmp_path):
    folder, hf, config = checkpoints("Llama-3.2-1B")
    lying = save_hub_folder(hf, tmp_path / "untied", {**config, "tie_word_embeddings": False})
    with pytest.raises(StateDictMismatchError, match="lm_head.weight"):
        load_model(lying)


def test_wrong_kv_heads_in_config_is_a_shape_error_with_both_shapes(checkpoints, tmp_path):
    folder, hf, config = checkpoints("Qwen3-0.6B")
    wrong = save_hub_folder(hf, tmp_path / "kv", {**config, "num_key_value_heads": 16})
    with pytest.raises(StateDictMismatchError) as err:
        load_model(wrong)
    assert "model.layers.0.self_attn.k_proj.weight: model (2048, 64) vs checkpoint (1024, 64)" in str(err.value)


def test_init_weights_is_transformers_initialisation():
    config = config_from_dict(shrunk("Qwen2.5-0.5B", pad_token_id=3))
    torch.manual_seed(0)
    model = init_weights(LlamaForCausalLM(config))
    std = config.initializer_range
    q = model.model.layers[0].self_attn.q_proj
    assert abs(q.weight.std().item() - std) < 0.1 * std and torch.equal(q.bias, torch.zeros_like(q.bias))
    assert abs(model.model.embed_tokens.weight.std().item() - std) < 0.05 * std
    assert not model.model.embed_tokens.weight[3].any()  # the padding row
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.2-1B", "HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-0.5B",
                                  "Qwen/Qwen3-0.6B", "mistralai/Mistral-7B-v0.1"])
def test_full_size_models_on_the_meta_device_count_what_transformers_counts(tf, name):
    """Chapter 09's table builds the published configs at full size without memory: same parameters as transformers."""
    from course_lib.models.published_configs import published_config

    config = published_config(name)
    with torch.device("meta"):
        ours = LlamaForCausalLM(config_from_dict(config))
        theirs = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(**config))
    unique = {id(p): p.numel() for p in theirs.parameters()}  # a tied head counted once
    assert ours.num_parameters() == sum(unique.values())
    assert all(p.is_meta for p in ours.parameters())
