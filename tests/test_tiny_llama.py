"""Chapter 09's twins, trained on python-stdlib: ``tiny-gpt2-stdlib`` (GPT-2) and ``tiny-llama`` (Llama).

The Llama is in the Hub's ``LlamaForCausalLM`` layout and loads in transformers with the same
logits; both share one tokenizer, one corpus, one parameter budget and one schedule, so their
held-out perplexities compare; the numbers their model cards state are what the weights give;
and ``train_tiny --arch llama`` reproduces the recipe.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from course_lib import load_model, load_tokenizer
from course_lib.assets import ASSETS, asset_path
from course_lib.corpus import DOCUMENT_SEPARATOR, corpus_lines, corpus_text
from course_lib.metrics import perplexity
from course_lib.models.llama import LlamaForCausalLM, kv_cache_bytes_per_token

TWINS = ("tiny-gpt2-stdlib", "tiny-llama")
MAX_BYTES = 8 * 10**6


def log_of(name: str) -> dict:
    return json.loads((asset_path(name) / "training_log.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def heldout_ids():
    tok = load_tokenizer("tiny-llama")
    return torch.tensor(tok.encode(corpus_text("heldout", "python-stdlib")).ids)


# ---------------------------------------------------------------------------- the files


def test_llama_files_have_the_hub_llama_layout():
    from safetensors import safe_open

    folder = asset_path("tiny-llama")
    assert ASSETS["tiny-llama"].package is None
    assert (folder / "model.safetensors").stat().st_size <= MAX_BYTES
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_act"] == "silu" and config["tie_word_embeddings"] is True
    C, L, V, F = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"], config["intermediate_size"]
    H, KV = config["num_attention_heads"], config["num_key_value_heads"]
    D = C // H
    assert KV < H  # grouped-query attention
    expected = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}  # no lm_head.weight: tied
    for i in range(L):
        p = f"model.layers.{i}."
        expected.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                         p + "self_attn.q_proj.weight": (H * D, C), p + "self_attn.k_proj.weight": (KV * D, C),
                         p + "self_attn.v_proj.weight": (KV * D, C), p + "self_attn.o_proj.weight": (C, H * D),
                         p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                         p + "mlp.down_proj.weight": (C, F)})
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == expected
        for k in f.keys():
            t = f.get_tensor(k)
            assert t.dtype == torch.float32 and torch.isfinite(t).all(), k
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    generation_config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    eos = load_tokenizer("tiny-llama").token_to_id(DOCUMENT_SEPARATOR)
    assert tokenizer_config["eos_token"] == DOCUMENT_SEPARATOR
    assert config["eos_token_id"] == config["bos_token_id"] == generation_config["eos_token_id"] == eos


def test_the_twins_share_tokenizer_corpus_budget_and_schedule():
    gpt2, llama = (log_of(name) for name in TWINS)
    assert (asset_path(TWINS[0]) / "tokenizer.json").read_bytes() == (asset_path(TWINS[1]) / "tokenizer.json").read_bytes()
    different = {k for k in gpt2["settings"] if gpt2["settings"][k] != llama["settings"].get(k)}
    assert different <= {"arch", "tokenizer_from", "minutes", "threads"}, different
    assert gpt2["settings"]["corpus"] == llama["settings"]["corpus"] == "python-stdlib"
    assert gpt2["settings"]["arch"] == "gpt2" and llama["settings"]["arch"] == "llama"
    assert gpt2["results"]["steps_done"] == llama["results"]["steps_done"]
    p_gpt2, p_llama = gpt2["results"]["parameters"], llama["results"]["parameters"]
    assert abs(p_llama - p_gpt2) / p_gpt2 < 0.01  # the same parameter budget, within 1 %
    assert load_model(TWINS[0]).num_parameters() == p_gpt2 and load_model(TWINS[1]).num_parameters() == p_llama


def test_kv_cache_bytes_per_token_of_the_twins():
    gpt2, llama = load_model(TWINS[0]), load_model(TWINS[1])
    g, c = gpt2.config, llama.config
    assert kv_cache_bytes_per_token(g) == 2 * g.n_layer * g.n_head * (g.n_embd // g.n_head) * 4
    assert kv_cache_bytes_per_token(c) == 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    ratio = c.num_attention_heads // c.num_key_value_heads
    assert kv_cache_bytes_per_token(g) == ratio * kv_cache_bytes_per_token(c)  # same width: GQA's saving alone
    assert log_of("tiny-llama")["results"]["kv_cache_bytes_per_token"] == kv_cache_bytes_per_token(c)


# ---------------------------------------------------------------------------- transformers agrees


def test_llama_loads_in_transformers_with_the_same_logits():
    transformers = pytest.importorskip("transformers")
    folder = asset_path("tiny-llama")
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"], info
    theirs.eval()
    ours = load_model("tiny-llama")
    assert isinstance(ours, LlamaForCausalLM)
    tok = load_tokenizer("tiny-llama")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        for line in corpus_lines("heldout", "python-stdlib")[:4]:
            ids = tok.encode(line).ids
            assert hf_tok(line)["input_ids"] == ids  # no bos added, as the training text had none
            x = torch.tensor([ids])
            torch.testing.assert_close(ours(x), theirs(x).logits, atol=1e-4, rtol=0)
        prompt = torch.tensor([tok.encode("Return the number of").ids])
        expected = theirs.generate(prompt, max_new_tokens=12, do_sample=False)
        assert torch.equal(ours.generate(prompt, 12), expected)


def test_gpt2_twin_loads_in_transformers_with_the_same_logits():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(asset_path("tiny-gpt2-stdlib")).eval()
    ours, tok = load_model("tiny-gpt2-stdlib"), load_tokenizer("tiny-gpt2-stdlib")
    with torch.no_grad():
        for line in corpus_lines("heldout", "python-stdlib")[:3]:
            x = torch.tensor([tok.encode(line).ids])
            torch.testing.assert_close(ours(x), theirs(x).logits, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- the stated numbers


@pytest.mark.parametrize("name", TWINS)
def test_heldout_perplexity_is_what_the_model_card_says(name, heldout_ids):
    log = log_of(name)
    ppl = perplexity(load_model(name), heldout_ids, block_size=log["settings"]["n_positions"])
    stated = log["results"]["heldout_perplexity"]
    assert math.isfinite(ppl) and abs(ppl - stated) < 0.006, (ppl, stated)
    assert f"**{stated:.2f}**" in (asset_path(name) / "README.md").read_text(encoding="utf-8")
    assert ppl < 0.5 * log["results"]["unigram_perplexity"]  # the context is worth something
    assert min(log["log"]["heldout_loss"]) == pytest.approx(log["results"]["heldout_loss"], abs=1e-3)


# ---------------------------------------------------------------------------- the recipe


def test_smoke_run_of_the_llama_recipe_writes_a_model_transformers_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from course_lib.train_tiny import main

    out = tmp_path / "tiny-llama"
    results = main(["--out", str(out), "--quiet", "--arch", "llama", "--max-steps", "3", "--eval-every", "2",
                    "--n-embd", "16", "--n-layer", "1", "--n-head", "4", "--num-key-value-heads", "2",
                    "--intermediate-size", "40", "--n-positions", "32", "--batch-size", "2", "--vocab-size", "1024",
                    "--sample-tokens", "3", "--seed", "1"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "README.md", "training_log.json"):
        assert (out / name).is_file(), name
    assert results["steps_done"] == 3 and math.isfinite(results["heldout_perplexity"])
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    ours = load_model(out)
    assert ours.config.num_key_value_heads == 2 and ours.config.intermediate_size == 40
    ids = torch.tensor([load_tokenizer(out).encode("The for statement").ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs.eval()(ids).logits, atol=1e-4, rtol=0)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "tiny Llama" in card and "--arch llama" in card and "python-docs/LICENSE.txt" in card


def test_tokenizer_from_a_folder_without_one_names_the_fix(tmp_path):
    from course_lib.train_tiny import TrainSettings, load_or_train_tokenizer

    with pytest.raises(FileNotFoundError, match="no tokenizer.json there"):
        load_or_train_tokenizer(TrainSettings(tokenizer_from=str(tmp_path)))
    with pytest.raises(ValueError, match="has 4096 tokens.*needs 1024"):
        load_or_train_tokenizer(TrainSettings(tokenizer_from=str(asset_path("tiny-gpt2")), vocab_size=1024))


@pytest.mark.parametrize("change, message", [({"arch": "mamba"}, "unknown arch 'mamba'"),
                                             ({"corpus": "wiki"}, "unknown corpus 'wiki'"),
                                             ({"arch": "llama", "num_key_value_heads": 3}, "must divide n_head")])
def test_bad_settings_are_refused(change, message):
    from course_lib.train_tiny import TrainSettings

    with pytest.raises(ValueError, match=message):
        TrainSettings(**change)
