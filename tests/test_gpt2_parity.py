"""Our GPT-2, loaded with ``load_model``, against ``transformers``' GPT2LMHeadModel, on every published layout.

GPT-2 checkpoints on the Hub come in several layouts, all of which must load:

- the Hub's ``gpt2`` / ``gpt2-medium`` ``model.safetensors``: bare ``GPT2Model`` keys
  (``wte.weight``, ``h.0.attn.c_attn.weight`` ...), the causal-mask buffers ``h.N.attn.bias``
  (float32, (1, 1, 1024, 1024)), no ``lm_head.weight`` (tied);
- older files such as ``distilgpt2``'s ``pytorch_model.bin``: ``transformer.``-prefixed keys,
  ``attn.bias`` and ``attn.masked_bias`` buffers, and a saved copy of ``lm_head.weight``;
- what ``save_pretrained`` writes today: ``transformer.`` prefix, no buffers, no lm_head.

Every Conv1D weight is stored (in, out). Each folder is made on the fly: transformers'
model with the real config (2 layers instead of 12/6/24, real widths and the real 50257
vocabulary), random weights, rewritten into the published layout. ``transformers`` is the
test-only oracle. Bar: max |Δ| <= 1e-4 on logits; greedy tokens identical.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from course_lib import load_model
from course_lib.checkpoint import StateDictMismatchError
from course_lib.fused import fuse
from helpers import assert_close, randomize_

# config.json of the published checkpoints, as on the Hub (n_layer cut to 2 where used)
GPT2 = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}
DISTILGPT2 = {**GPT2, "_num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "n_layer": 6}
GPT2_MEDIUM = {**GPT2, "n_embd": 1024, "n_head": 16, "n_layer": 24, "n_special": 0, "predict_special_tokens": True}


def causal_buffer(n_positions: int) -> torch.Tensor:
    """The ``attn.bias`` buffer old GPT-2 files carry: lower-triangular ones, (1, 1, n, n) float32."""
    return torch.tril(torch.ones(n_positions, n_positions)).view(1, 1, n_positions, n_positions)


def hub_layout(state: dict, n_layer: int, n_positions: int) -> dict:
    """transformers' GPT2LMHeadModel state -> the Hub's gpt2 model.safetensors: bare keys + attn.bias, no lm_head."""
    out = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    out.update({f"h.{i}.attn.bias": causal_buffer(n_positions) for i in range(n_layer)})
    return out


def legacy_layout(state: dict, n_layer: int, n_positions: int) -> dict:
    """-> an older file (distilgpt2's pytorch_model.bin): prefixed keys, attn.bias + masked_bias, lm_head saved."""
    out = dict(state)
    out["lm_head.weight"] = out["transformer.wte.weight"]  # the same storage, as torch.save wrote tied weights
    for i in range(n_layer):
        out[f"transformer.h.{i}.attn.bias"] = causal_buffer(n_positions)
        out[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def write_folder(folder, config: dict, state: dict, fmt: str = "safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if fmt == "safetensors":
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def left_padded_batch(vocab: int, lengths=(11, 6), seed: int = 0):
    """ids, attention_mask (B, T) padded on the left with token 0, and the mask's position ids."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, T - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[row, T - n:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() gives transformers' GPT-2
    return ids, mask, positions


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def make_reference(tf, config: dict, seed: int):
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(**{**config, "n_layer": 2}))
    return randomize_(hf, seed=seed)


@pytest.fixture(scope="module")
def checkpoints(tf, tmp_path_factory):
    """name -> (folder, transformers reference model, config)."""
    root = tmp_path_factory.mktemp("gpt2-layouts")
    made = {}
    gpt2 = make_reference(tf, GPT2, seed=1)
    config = {**GPT2, "n_layer": 2}
    made["gpt2 (Hub safetensors: bare keys + attn.bias)"] = (
        write_folder(root / "gpt2", config, hub_layout(gpt2.state_dict(), 2, 1024)), gpt2, config)
    distil = make_reference(tf, DISTILGPT2, seed=2)
    config = {**DISTILGPT2, "n_layer": 2}
    made["distilgpt2 (pytorch_model.bin: transformer. + masked_bias + lm_head)"] = (
        write_folder(root / "distilgpt2-bin", config, legacy_layout(distil.state_dict(), 2, 1024), fmt="bin"),
        distil, config)
    folder = root / "distilgpt2-today"
    distil.save_pretrained(folder)
    made["distilgpt2 (save_pretrained today)"] = (folder, distil, json.loads((folder / "config.json").read_text()))
    medium = make_reference(tf, GPT2_MEDIUM, seed=3)
    config = {**GPT2_MEDIUM, "n_layer": 2}
    made["gpt2-medium (Hub safetensors)"] = (
        write_folder(root / "gpt2-medium", config, hub_layout(medium.state_dict(), 2, 1024)), medium, config)
    return made


LAYOUTS = ["gpt2 (Hub safetensors: bare keys + attn.bias)",
           "distilgpt2 (pytorch_model.bin: transformer. + masked_bias + lm_head)",
           "distilgpt2 (save_pretrained today)", "gpt2-medium (Hub safetensors)"]


def test_the_layouts_are_the_published_ones(checkpoints):
    folder = checkpoints[LAYOUTS[0]][0]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_slice("h.0.attn.c_attn.weight").get_shape() == [768, 2304]  # Conv1D: (in, out)
        assert f.get_slice("h.0.attn.bias").get_shape() == [1, 1, 1024, 1024]
    assert "wte.weight" in keys and "lm_head.weight" not in keys and not any(k.startswith("transformer.") for k in keys)
    state = torch.load(checkpoints[LAYOUTS[1]][0] / "pytorch_model.bin", weights_only=True)
    assert {"lm_head.weight", "transformer.h.0.attn.masked_bias", "transformer.h.1.attn.bias"} <= set(state)
    with safe_open(str(checkpoints[LAYOUTS[2]][0] / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("transformer.") for k in f.keys())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_match_transformers(checkpoints, layout):
    folder, hf, config = checkpoints[layout]
    model = load_model(folder)
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    report = model.load_report
    assert report.ok, report.summary()
    if "attn.bias" in layout or "masked_bias" in layout:
        assert any("buffer" in why for why in report.skipped.values()), report.summary()
    if "lm_head" in layout:
        assert "tied" in report.skipped["lm_head.weight"]
    assert model.lm_head.weight is model.transformer.wte.weight
    ids, mask, positions = left_padded_batch(config["vocab_size"])
    with torch.no_grad():
        assert_close(f"{layout}, no padding", model(ids[:1]), hf(ids[:1]).logits)
        ours = model(ids, mask)  # positions from the mask
        reference = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert_close(f"{layout}, left-padded batch", ours[real], reference[real])


def test_base_task_gives_transformers_hidden_states(checkpoints):
    folder, hf, config = checkpoints[LAYOUTS[1]]
    model = load_model(folder, task="base")
    assert type(model).__name__ == "GPT2Model"
    assert "head this task does not use" in model.load_report.skipped["lm_head.weight"]
    ids, _, _ = left_padded_batch(config["vocab_size"])
    with torch.no_grad():
        assert_close("GPT2Model hidden states", model(ids), hf.transformer(ids).last_hidden_state)


def test_greedy_tokens_equal_transformers_with_and_without_cache(checkpoints):
    folder, hf, config = checkpoints[LAYOUTS[0]]
    model = load_model(folder)
    prompt = torch.randint(0, config["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=50256)
    cached = model.generate(prompt, 20, eos_token_id=[])
    uncached = model.generate(prompt, 20, eos_token_id=[], use_cache=False)
    fast = fuse(load_model(folder)).generate(prompt, 20, eos_token_id=[])
    assert cached.shape == (1, 27)
    assert torch.equal(cached, expected)
    assert torch.equal(uncached, expected)
    assert torch.equal(fast, expected)


def test_left_padded_batch_generates_what_each_prompt_generates_alone(checkpoints):
    folder, hf, config = checkpoints[LAYOUTS[0]]
    model = load_model(folder)
    ids, mask, _ = left_padded_batch(config["vocab_size"], lengths=(9, 4, 6), seed=7)
    batch = model.generate(ids, 12, attention_mask=mask, eos_token_id=[])
    for row in range(ids.size(0)):
        alone = model.generate(ids[row:row + 1, mask[row].bool()], 12, eos_token_id=[])
        assert torch.equal(batch[row, -alone.size(1):], alone[0]), f"row {row}"
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                               pad_token_id=0)
    assert torch.equal(batch, expected)
    assert torch.equal(model.generate(ids, 12, attention_mask=mask, eos_token_id=[], use_cache=False), batch)


def test_save_pretrained_writes_what_transformers_writes(checkpoints, tf, tmp_path):
    folder, hf, config = checkpoints[LAYOUTS[1]]
    model = load_model(folder)
    model.save_pretrained(tmp_path / "ours")
    hf.save_pretrained(tmp_path / "theirs")
    shapes = {}
    for name in ("ours", "theirs"):
        with safe_open(str(tmp_path / name / "model.safetensors"), framework="pt") as f:
            shapes[name] = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert shapes["ours"] == shapes["theirs"]  # same keys, Conv1D weights back in (in, out)
    reloaded = tf.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    ids, _, _ = left_padded_batch(config["vocab_size"])
    with torch.no_grad():
        assert_close("our save_pretrained -> transformers", reloaded(ids).logits, hf(ids).logits, tol=0.0)


def test_a_wrongly_shaped_conv1d_weight_is_reported_with_both_shapes(checkpoints, tmp_path):
    folder, hf, config = checkpoints[LAYOUTS[0]]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    state["h.1.mlp.c_fc.weight"] = state["h.1.mlp.c_fc.weight"].T.contiguous()  # (3072, 768): not Conv1D's layout
    del state["h.0.ln_2.bias"]
    broken = write_folder(tmp_path / "broken", config, state)
    with pytest.raises(StateDictMismatchError) as err:
        load_model(broken)
    message = str(err.value)
    assert "transformer.h.1.mlp.c_fc.weight: model (768, 3072) vs checkpoint (3072, 768)" in message
    assert "transformer.h.0.ln_2.bias" in message
