"""The course's tiny GPT-2 (``course_lib/assets/tiny-gpt2``): the Hub's gpt2 layout, loadable by
transformers and by our loader with the same logits, a tokenizer that round-trips the corpus, the
perplexity its model card states, and the script that made it (``course_lib.train_tiny``)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from course_lib import load_model, load_tokenizer
from course_lib.assets import ASSETS, asset_path
from course_lib.corpus import DOCUMENT_SEPARATOR, corpus_documents, corpus_lines, corpus_text
from course_lib.metrics import next_token_loss, perplexity, unigram_perplexity
from helpers import randomize_

MAX_BYTES = 12 * 10**6


@pytest.fixture(scope="module")
def folder():
    return asset_path("tiny-gpt2")


@pytest.fixture(scope="module")
def config(folder):
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def training_log(folder):
    return json.loads((folder / "training_log.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


def heldout_ids(tok) -> torch.Tensor:
    return torch.tensor(tok.encode(corpus_text("heldout")).ids)


# ---------------------------------------------------------------------------- the files

def test_registered_asset_has_every_file(folder):
    assert ASSETS["tiny-gpt2"].package is None
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "training_log.json"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size <= MAX_BYTES
    png = folder / "loss.png"
    assert not png.exists() or png.stat().st_size < 60_000


def test_safetensors_has_exactly_the_hub_gpt2_layout(folder, config):
    from safetensors import safe_open

    C, P, L, V = config["n_embd"], config["n_positions"], config["n_layer"], config["vocab_size"]
    expected = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(L):
        expected.update({
            f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
            f"h.{i}.attn.bias": (1, 1, P, P),  # the causal-mask buffer the Hub's file carries
            f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),  # Conv1D: (in, out)
            f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
            f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
            f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
            f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,),
        })
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert shapes == expected  # bare keys, no "transformer." prefix, no lm_head.weight (tied)
        mask = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
        for k in f.keys():
            tensor = f.get_tensor(k)
            assert tensor.dtype == torch.float32, k
            if k.endswith(".attn.bias"):  # not c_attn.bias
                assert torch.equal(tensor, mask), k
            else:
                assert torch.isfinite(tensor).all(), k


def test_config_is_a_gpt2_config(config, tok):
    assert config["model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu_new"
    assert config["n_ctx"] == config["n_positions"]
    assert config["vocab_size"] == tok.get_vocab_size()
    eos = tok.token_to_id(DOCUMENT_SEPARATOR)
    assert config["eos_token_id"] == config["bos_token_id"] == eos
    assert config["tie_word_embeddings"] is True


# ---------------------------------------------------------------------------- the tokenizer

def test_tokenizer_round_trips_the_corpus(tok):
    text = corpus_text("heldout")  # separators included: each is the one special token
    enc = tok.encode(text)
    assert tok.decode(enc.ids, skip_special_tokens=False) == text
    assert enc.ids.count(tok.token_to_id(DOCUMENT_SEPARATOR)) == text.count(DOCUMENT_SEPARATOR)
    for doc in corpus_documents("train")[:5]:
        assert tok.decode(tok.encode(doc).ids) == doc
    odd = "naïve café — 漢字 ✓\ttabs\r\n"  # bytes the corpus lacks still round-trip (byte-level BPE)
    assert tok.decode(tok.encode(odd).ids) == odd


def test_tokenizer_pipeline_is_the_gpt2_one_load_tokenizer_builds(tok, tmp_path):
    """Written out as a legacy vocab.json + merges.txt, our loader's GPT-2 pipeline gives the same ids."""
    from course_lib.tokenizer_loading import build_tokenizer

    model = json.loads(tok.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    rebuilt = build_tokenizer(tmp_path)
    ours, theirs = json.loads(tok.to_str()), json.loads(rebuilt.to_str())
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[part] == theirs[part], part
    text = corpus_text("heldout")[:5000]
    assert tok.encode(text).ids == rebuilt.encode(text).ids


# ---------------------------------------------------------------------------- the model

def test_transformers_and_course_lib_give_the_same_logits(folder, model, tok):
    transformers = pytest.importorskip("transformers")

    theirs, info = transformers.GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    theirs.eval()
    lines = corpus_lines("heldout")[:4]
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([tok.encode(line).ids])
            torch.testing.assert_close(model(ids), theirs(ids).logits, atol=1e-4, rtol=0)


def test_heldout_perplexity_is_what_the_model_card_says(folder, model, tok, training_log):
    ids = heldout_ids(tok)
    settings = training_log["settings"]
    ppl = perplexity(model, ids, block_size=settings["n_positions"])
    stated = training_log["results"]["heldout_perplexity"]
    assert math.isfinite(ppl)
    assert abs(ppl - stated) < 0.006, (ppl, stated)  # equal to 2 decimals (last bits vary between CPUs)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert f"**{stated:.2f}**" in card
    train_ids = torch.tensor(tok.encode(corpus_text("train")).ids)
    baseline = unigram_perplexity(train_ids, ids, tok.get_vocab_size())
    assert baseline == pytest.approx(training_log["results"]["unigram_perplexity"])
    assert ppl < 0.5 * baseline  # the context is worth something


def test_training_log_can_draw_the_loss_curve(training_log):
    log = training_log["log"]
    assert len(log["step"]) == len(log["train_loss"]) == training_log["results"]["steps_done"]
    assert len(log["eval_step"]) == len(log["heldout_loss"]) >= 2
    assert log["train_loss"][-1] < log["train_loss"][0]
    assert min(log["heldout_loss"]) == pytest.approx(training_log["results"]["heldout_loss"], abs=1e-3)


def test_samples_look_like_the_corpus(model, tok, training_log):
    from course_lib import generate

    text = generate(model, tok, "The for statement", max_new_tokens=20)
    stated = next(s["text"] for s in training_log["samples"]
                  if s["prompt"] == "The for statement" and s["how"] == "greedy")
    assert stated.startswith(text)  # greedy generation is reproducible
    assert len(text) > len("The for statement") + 20


# ---------------------------------------------------------------------------- metrics.perplexity

def test_perplexity_matches_a_hand_computation():
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = randomize_(GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1,
                                                  n_head=2)), scale=0.3)
    model.train()  # perplexity must switch dropout off, then restore the mode
    ids = torch.randint(50, (75,))
    block = 16
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, block):  # non-overlapping blocks; the last one shorter
            x = ids[start:start + block]
            y = ids[start + 1:start + block + 1]
            x = x[:y.numel()]
            logits = model(x.unsqueeze(0))[0]
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += y.numel()
    model.train()
    assert count == ids.numel() - 1
    expected = math.exp(total / count)
    assert perplexity(model, ids, block_size=block, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, ids.tolist(), block_size=block, batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert next_token_loss(model, ids, block_size=block) == pytest.approx(math.log(expected), rel=1e-5)
    assert model.training
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, [3])


def test_unigram_perplexity_by_hand():
    train, heldout = [0, 0, 1, 2], [0, 2]
    probs = torch.tensor([2 + 1, 1 + 1, 1 + 1, 0 + 1], dtype=torch.float64) / 8  # add-one smoothing, V = 4
    expected = math.exp(-(math.log(probs[0]) + math.log(probs[2])) / 2)
    assert unigram_perplexity(train, heldout, vocab_size=4) == pytest.approx(expected)


# ---------------------------------------------------------------------------- the training script

def test_learning_rate_warms_up_then_decays_to_the_minimum():
    from course_lib.train_tiny import TrainSettings, learning_rate

    s = TrainSettings(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_learning_rate=1e-4)
    lrs = [learning_rate(step, s) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert learning_rate(100, s) == pytest.approx(1e-4)


def test_batches_are_shifted_windows_in_a_seeded_order():
    from course_lib.train_tiny import batches

    stream = torch.arange(1000)
    first = [next(batches(stream, 8, 4, seed=0)) for _ in range(2)]
    x, y = first[0]
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(first[0][0], first[1][0])  # the same seed, the same order
    assert not torch.equal(next(batches(stream, 8, 4, seed=1))[0], x)


def test_smoke_run_writes_a_model_transformers_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from course_lib.train_tiny import main

    out = tmp_path / "tiny"
    results = main(["--out", str(out), "--quiet", "--max-steps", "3", "--eval-every", "2", "--n-embd", "16",
                    "--n-layer", "1", "--n-head", "2", "--n-positions", "32", "--batch-size", "2",
                    "--vocab-size", "1024", "--sample-tokens", "3", "--seed", "1"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "training_log.json"):
        assert (out / name).is_file(), name
    assert results["steps_done"] == 3 and math.isfinite(results["heldout_perplexity"])
    theirs, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    ours = load_model(out)
    ids = torch.tensor([load_tokenizer(out).encode("The for statement").ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs.eval()(ids).logits, atol=1e-4, rtol=0)
    log = json.loads((out / "training_log.json").read_text(encoding="utf-8"))
    assert log["settings"]["max_steps"] == 3 and log["results"]["parameters"] == ours.num_parameters()
