"""Chapter 11: ONNX export of the course's models and their parity in onnxruntime.

The oracle is the course's own PyTorch model on the same weights: the real
all-MiniLM-L6-v2 asset (hidden states, sentence embeddings) and the course's tiny GPT-2
(logits at prefill and at cached steps, greedy tokens). Each file is exported once per
module (a few seconds each).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from course_lib import encode_batch, load_model, load_tokenizer  # noqa: E402
from course_lib.assets import asset_path  # noqa: E402
from course_lib.export import onnx_export as ox  # noqa: E402
from course_lib.generation import KVCache, generate_ids  # noqa: E402
from course_lib.models.encoder import sentence_embeddings  # noqa: E402

TOL = 1e-4
SENTENCES = ["A man is eating food.", "Hi",
             "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
             "Transformers turn tokens into vectors."]


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def gpt2_onnx(gpt2, tmp_path_factory):
    path = ox.to_onnx(gpt2, tmp_path_factory.mktemp("gpt2") / "tiny-gpt2.onnx",
                      tokenizer=asset_path("tiny-gpt2") / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def gpt2_ort(gpt2_onnx):
    return ox.OnnxCausalLM(gpt2_onnx, threads=1)


@pytest.fixture(scope="module")
def minilm():
    folder = asset_path("all-MiniLM-L6-v2")
    return load_model(folder), load_tokenizer(folder)


@pytest.fixture(scope="module")
def minilm_onnx(minilm, tmp_path_factory):
    return ox.to_onnx(minilm[0], tmp_path_factory.mktemp("minilm") / "minilm.onnx")


def random_ids(shape, vocab, seed):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# The encoder: all-MiniLM-L6-v2, real weights

def test_minilm_hidden_states_and_embeddings_match_pytorch(minilm, minilm_onnx):
    model, tok = minilm
    runner = ox.OnnxEncoder(minilm_onnx, threads=1)
    batch = encode_batch(tok, SENTENCES)  # right-padded: the mask matters
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).numpy()  # (B, T, C)
    hidden, embedding = runner(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool().numpy()
    assert hidden.shape == expected.shape and hidden.dtype == np.float32
    assert np.abs(hidden - expected)[real].max() <= TOL  # padding positions are never used
    reference = sentence_embeddings(model, tok, SENTENCES).numpy()  # mean-pooled, normalised
    assert embedding.shape == (len(SENTENCES), model.config.hidden_size)
    assert np.abs(embedding - reference).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    assert np.abs(runner.embed(tok, SENTENCES, batch_size=3) - reference).max() <= TOL


def test_encoder_dynamic_batch_and_length(minilm, minilm_onnx):
    model, _ = minilm
    runner = ox.OnnxEncoder(minilm_onnx, threads=1)
    for seed, (B, T) in enumerate([(1, 4), (3, 17)]):
        ids = random_ids((B, T), model.config.vocab_size, seed)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[-1, T // 2:] = 0
        with torch.no_grad():
            expected = model(ids, mask).numpy()
        hidden, _ = runner(ids, mask)
        assert hidden.shape == (B, T, model.config.hidden_size)
        assert np.abs(hidden - expected)[mask.bool().numpy()].max() <= TOL


def test_roberta_positions_and_padding(tmp_path):
    """RoBERTa numbers positions from padding_idx + 1 and skips pads: the graph must follow the ids."""
    from course_lib.models.encoder import EncoderConfig, RobertaModel

    torch.manual_seed(0)
    config = EncoderConfig(model_type="roberta", vocab_size=120, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    model = RobertaModel(config).eval()
    runner = ox.OnnxEncoder(ox.to_onnx(model, tmp_path / "roberta.onnx"), threads=1)
    assert runner.meta["model_type"] == "roberta" and runner.config["max_positions"] == 38
    for B, T in [(1, 5), (2, 11)]:
        ids = random_ids((B, T), 118, B) + 2  # no pad ids among the tokens
        mask = torch.ones(B, T, dtype=torch.long)
        ids[-1, T - 3:], mask[-1, T - 3:] = config.pad_token_id, 0
        with torch.no_grad():
            expected = model(ids, mask).numpy()
        hidden, _ = runner(ids, mask)
        assert np.abs(hidden - expected)[mask.bool().numpy()].max() <= TOL


# --------------------------------------------------------------------------------------
# GPT-2: logits at prefill and at cached steps, greedy tokens

def test_gpt2_logits_at_prefill_and_cached_steps(gpt2, gpt2_ort):
    ids = random_ids((2, 6), gpt2.config.vocab_size, 1)
    cache = KVCache(gpt2.config.n_layer)
    with torch.no_grad():
        expected = gpt2(ids, kv_cache=cache)
    logits, present = gpt2_ort(ids)  # empty past: P = 0
    assert logits.shape == (2, 6, gpt2.config.vocab_size)
    assert np.abs(logits - expected.numpy()).max() <= TOL
    for step in range(5):
        new = random_ids((2, 1), gpt2.config.vocab_size, 10 + step)
        with torch.no_grad():
            expected = gpt2(new, kv_cache=cache)
        logits, present = gpt2_ort(new, past=present)
        assert logits.shape == (2, 1, gpt2.config.vocab_size)
        assert np.abs(logits - expected.numpy()).max() <= TOL, f"step {step}"
    # the ORT cache holds what the course's KVCache holds
    layer = cache.layers[gpt2.config.n_layer - 1]
    assert present[f"key.{gpt2.config.n_layer - 1}"].shape == (2, gpt2.config.n_head, 11, gpt2.config.head_dim)
    assert np.abs(present[f"key.{gpt2.config.n_layer - 1}"] - layer.keys[:, :, :11].numpy()).max() <= TOL
    assert np.abs(present[f"value.{gpt2.config.n_layer - 1}"] - layer.values[:, :, :11].numpy()).max() <= TOL


def test_gpt2_dynamic_batch_and_lengths_through_one_file(gpt2, gpt2_ort):
    for seed, (B, T, P) in enumerate([(1, 1, 0), (3, 9, 0), (1, 2, 5), (3, 4, 7)]):
        prompt = random_ids((B, P + T), gpt2.config.vocab_size, 100 + seed)
        with torch.no_grad():
            expected = gpt2(prompt)[:, P:].numpy()  # no cache: the whole sequence at once
        past = None
        if P:
            _, past = gpt2_ort(prompt[:, :P])
        logits, present = gpt2_ort(prompt[:, P:], past=past)
        assert logits.shape == (B, T, gpt2.config.vocab_size)
        assert present["value.0"].shape[2] == P + T
        assert np.abs(logits - expected).max() <= TOL, (B, T, P)


@pytest.mark.parametrize("max_new", [1, 40])
def test_greedy_tokens_equal_generate_ids_batch_1(gpt2, gpt2_ort, max_new):
    tok = load_tokenizer("tiny-gpt2")
    ids = torch.tensor([tok.encode("The Python interpreter").ids])
    expected = generate_ids(gpt2, ids, max_new, eos_token_id=[])
    got = ox.ort_generate_ids(gpt2_ort, ids, max_new, eos_token_id=[])
    assert got.dtype == torch.long and got.shape == (1, ids.shape[1] + max_new)
    assert torch.equal(got, expected)


def test_greedy_stops_at_eos_like_generate_ids(gpt2, gpt2_ort):
    """The end token is one that greedy decoding reaches after a few steps in one row only (the tiny
    GPT-2 rarely emits its own <|endoftext|>): that row stops, is filled with it, the other runs on."""
    ids = random_ids((2, 4), gpt2.config.vocab_size, 7)
    free = generate_ids(gpt2, ids, 12, eos_token_id=[])
    new = free[:, 4:]
    stop = next(int(t) for t in new[0, 2:] if int(t) not in new[1].tolist())  # only row 0 emits it
    expected = generate_ids(gpt2, ids, 12, eos_token_id=stop)
    assert (expected[0, 4:] == stop).any() and not (expected[1, 4:] == stop).any()
    assert torch.equal(ox.ort_generate_ids(gpt2_ort, ids, 12, eos_token_id=stop), expected)
    assert torch.equal(ox.ort_generate_ids(gpt2_ort, ids[:1], 12, eos_token_id=[stop]), expected[:1, :5 + int(
        (expected[0, 4:] == stop).nonzero()[0])])  # batch 1 stops right after its end token
    # default end token: the sidecar's eos_token_id, as generate_ids takes config.eos_token_id
    assert torch.equal(ox.ort_generate_ids(gpt2_ort, ids, 6), generate_ids(gpt2, ids, 6))
    streamed = []
    got = gpt2_ort.generate_ids(ids[:1], 5, eos_token_id=[], stream=lambda t: streamed.append(int(t[0])))
    assert streamed == got[0, -5:].tolist()


def test_seeded_sampling_equals_generate_ids(gpt2, gpt2_ort):
    ids = random_ids((2, 5), gpt2.config.vocab_size, 9)
    for kwargs in [dict(seed=3), dict(seed=4, temperature=0.8, top_k=40, top_p=0.9)]:
        expected = generate_ids(gpt2, ids, 15, eos_token_id=[], **kwargs)
        assert not torch.equal(expected, generate_ids(gpt2, ids, 15, eos_token_id=[]))  # not greedy
        assert torch.equal(ox.ort_generate_ids(gpt2_ort, ids, 15, eos_token_id=[], **kwargs), expected)


def test_greedy_tokens_equal_for_a_left_padded_batch(gpt2, gpt2_ort):
    tok = load_tokenizer("tiny-gpt2")
    prompts = ["import os", "The standard library of Python contains"]
    rows = [tok.encode(p).ids for p in prompts]
    width = max(map(len, rows))
    pad = gpt2.config.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    assert (mask == 0).any()
    expected = generate_ids(gpt2, ids, 25, attention_mask=mask, eos_token_id=[])
    got = ox.ort_generate_ids(gpt2_ort, ids, 25, attention_mask=mask, eos_token_id=[])
    assert torch.equal(got, expected)
    # and each row is what it generates alone
    alone = ox.ort_generate_ids(gpt2_ort, torch.tensor([rows[0]]), 25, eos_token_id=[])
    assert got[0, -25:].tolist() == alone[0, -25:].tolist()


# --------------------------------------------------------------------------------------
# The file: checker, opset, names, shapes, sidecar

def _graph_shape(value_info) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("which", ["gpt2", "minilm"])
def test_file_checks_and_sidecar_describes_the_graph(which, request):
    path = request.getfixturevalue(f"{which}_onnx")
    model = request.getfixturevalue(which)
    model = model[0] if isinstance(model, tuple) else model
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [ox.DEFAULT_OPSET]
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["course_lib.opset"] == str(ox.DEFAULT_OPSET)
    meta = json.loads(ox.sidecar_path(path).read_text())
    assert meta == ox.read_sidecar(path)
    assert meta["opset"] == ox.DEFAULT_OPSET and meta["file"] == path.name and meta["external_data"] is None
    dtypes = {onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT: "float32"}
    for described, actual in [(meta["inputs"], proto.graph.input), (meta["outputs"], proto.graph.output)]:
        assert [d["name"] for d in described] == [a.name for a in actual]
        for d, a in zip(described, actual):
            assert d["dtype"] == dtypes[a.type.tensor_type.elem_type], d["name"]
            assert d["shape"] == _graph_shape(a), d["name"]
    # the tied embedding / head is stored once: the file holds exactly the parameters the graph uses
    # (all-MiniLM-L6-v2's pooler is not part of it: the sentence embedding is a mean, not [CLS])
    stored = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert stored == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pooler."))
    if which == "gpt2":
        c = model.config
        assert meta["task"] == "causal-lm" and meta["model_type"] == "gpt2"
        assert meta["config"] == {"num_layers": c.n_layer, "num_heads": c.n_head, "head_dim": c.head_dim,
                                  "hidden_size": c.n_embd, "vocab_size": c.vocab_size, "max_positions": c.n_positions}
        assert (meta["bos_token_id"], meta["eos_token_id"]) == (c.bos_token_id, c.eos_token_id)
        names = [d["name"] for d in meta["inputs"]]
        assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
        assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"] and len(names) == 3 + 2 * c.n_layer
        assert meta["tokenizer"] == path.name + ".tokenizer.json"
        assert (path.parent / meta["tokenizer"]).read_text() == (asset_path("tiny-gpt2") / "tokenizer.json").read_text()
    else:
        assert meta["task"] == "feature-extraction" and meta["pooling"]["mode"] == "mean"
        assert meta["config"]["num_layers"] == model.config.num_hidden_layers
        assert [d["name"] for d in meta["outputs"]] == ["last_hidden_state", "sentence_embedding"]


def test_operator_counts(gpt2, gpt2_onnx):
    counts = ox.operator_counts(gpt2_onnx)
    n = gpt2.config.n_layer
    assert counts["LayerNormalization"] == 2 * n + 1  # ln_1, ln_2 per block, ln_f
    assert counts["Softmax"] == n and counts["Tanh"] == n  # one attention, one tanh-GELU per block
    assert counts["Gemm"] == 1  # the tied head
    assert counts["MatMul"] == 6 * n  # c_attn, c_proj, c_fc, mlp.c_proj, q k^T, weights v


def test_other_opset_is_written_and_runs(gpt2, tmp_path):
    path = ox.to_onnx(gpt2, tmp_path / "o14.onnx", opset=14)
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [14]
    assert "LayerNormalization" not in {n.op_type for n in proto.graph.node}  # spelt out before opset 17
    ids = random_ids((1, 5), gpt2.config.vocab_size, 3)
    with torch.no_grad():
        expected = gpt2(ids).numpy()
    assert np.abs(ox.OnnxCausalLM(path, threads=1)(ids)[0] - expected).max() <= TOL


def test_external_data_layout(gpt2, gpt2_ort, tmp_path, monkeypatch):
    ids = random_ids((1, 4), gpt2.config.vocab_size, 4)
    expected = gpt2_ort(ids)[0]
    path = ox.to_onnx(gpt2, tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.is_file() and data.stat().st_size > 0.99 * 4 * sum(p.numel() for p in gpt2.parameters())
    assert path.stat().st_size < 1_000_000  # the graph only
    assert ox.read_sidecar(path)["external_data"] == "ext.onnx.data"
    onnx.checker.check_model(str(path), full_check=True)
    np.testing.assert_array_equal(ox.OnnxCausalLM(path, threads=1)(ids)[0], expected)
    # automatic: weights above the threshold go out (a small threshold stands in for 2 GiB)
    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1024)
    ox.to_onnx(gpt2, tmp_path / "auto.onnx")
    assert (tmp_path / "auto.onnx.data").is_file()
    monkeypatch.undo()
    # a model "over 2 GiB" (a mocked size): external by default, and refused clearly without it
    monkeypatch.setattr(ox, "_weight_bytes", lambda proto: 3 * 1024**3)
    with pytest.raises(ValueError, match="more than one ONNX file.*external_data=True"):
        ox.to_onnx(gpt2, tmp_path / "big.onnx", external_data=False)
    ox.to_onnx(gpt2, tmp_path / "big.onnx", check=False)
    assert ox.read_sidecar(tmp_path / "big.onnx")["external_data"] == "big.onnx.data"
    for name in ("big.onnx", "big.onnx.data", "big.onnx.json"):
        (tmp_path / name).unlink()
    monkeypatch.undo()
    ox.to_onnx(gpt2, tmp_path / "ext.onnx")  # below the threshold again: one file, the stale data removed
    assert not data.exists() and ox.read_sidecar(path)["external_data"] is None
    np.testing.assert_array_equal(ox.OnnxCausalLM(path, threads=1)(ids)[0], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.onnx", "auto.onnx.data", "auto.onnx.json",
                                                          "ext.onnx", "ext.onnx.json"]


def test_export_leaves_the_model_as_it_was(tmp_path):
    from course_lib.fused import FusedLinear, fuse
    from course_lib.layers import Linear, scaled_dot_product_attention

    plain = load_model("tiny-gpt2", fast=False)  # chapter 02's layers
    plain.train()
    ids = random_ids((1, 5), plain.config.vocab_size, 5)
    ox.to_onnx(plain, tmp_path / "plain.onnx", check=False)
    assert plain.training and type(plain.transformer.h[0].attn.c_attn) is Linear
    assert plain.transformer.h[0].attn.attention_fn is scaled_dot_product_attention
    plain.eval()
    fused = fuse(load_model("tiny-gpt2"))
    before = fused(ids)
    ox.to_onnx(fused, tmp_path / "fused.onnx", check=False)
    assert type(fused.transformer.h[0].attn.c_attn) is FusedLinear and not fused.training
    assert torch.equal(fused(ids), before)
    from course_lib import fused as fused_module
    assert fused_module._ONEDNN_LINEAR == fused_module._onednn_linear_available()


# --------------------------------------------------------------------------------------
# Errors: clear, and nothing half-written

def test_unsupported_models_are_refused(tmp_path):
    with pytest.raises(TypeError, match="GPT2LMHeadModel.*BertModel"):
        ox.to_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    head = load_model("tiny-gpt2", task="base")  # GPT2Model: no LM head
    with pytest.raises(TypeError, match="model_type 'gpt2'.*task='causal-lm'"):
        ox.to_onnx(head, tmp_path / "x.onnx")
    quantized = load_model("tiny-gpt2", quantize="int8")
    with pytest.raises(ValueError, match="quantized by chapter 07.*float32"):
        ox.to_onnx(quantized, tmp_path / "x.onnx")
    half = load_model("tiny-gpt2").half()
    with pytest.raises(ValueError, match="float32.*model.float"):
        ox.to_onnx(half, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_and_options(gpt2, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: create it first"):
        ox.to_onnx(gpt2, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ValueError, match=r"ends in \.onnx"):
        ox.to_onnx(gpt2, tmp_path / "m.bin")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ox.to_onnx(gpt2, tmp_path / "d.onnx")
    with pytest.raises(ValueError, match="opset=9 is outside"):
        ox.to_onnx(gpt2, tmp_path / "m.onnx", opset=9)
    with pytest.raises(TypeError, match="opset must be an int"):
        ox.to_onnx(gpt2, tmp_path / "m.onnx", opset="17")
    with pytest.raises(TypeError, match="path must be a file path"):
        ox.to_onnx(gpt2, 3)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        ox.to_onnx(gpt2, tmp_path / "m.onnx", tokenizer=tmp_path / "nope.json")
    assert [p.name for p in tmp_path.iterdir()] == ["d.onnx"]


def test_a_failed_export_leaves_no_file(gpt2, gpt2_onnx, tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the previous export")

    def broken_checker(*args, **kwargs):
        raise onnx.checker.ValidationError("simulated failure")

    monkeypatch.setattr(onnx.checker, "check_model", broken_checker)
    with pytest.raises(onnx.checker.ValidationError):
        ox.to_onnx(gpt2, target)
    assert target.read_bytes() == b"the previous export"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_missing_packages_name_the_fix(gpt2, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match="pip install onnx onnxruntime gguf"):
        ox.to_onnx(gpt2, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnx onnxruntime gguf"):
        ox.OnnxCausalLM(tmp_path / "m.onnx")


def test_importing_course_lib_does_not_import_onnx():
    code = ("import sys, course_lib, course_lib.export, course_lib.export.onnx_export; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'gguf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runner_errors(gpt2_onnx, minilm_onnx, gpt2_ort, tmp_path):
    with pytest.raises(ValueError, match="open it with OnnxEncoder"):
        ox.OnnxCausalLM(minilm_onnx)
    with pytest.raises(ValueError, match="open it with OnnxCausalLM"):
        ox.OnnxEncoder(gpt2_onnx)
    assert isinstance(ox.load_onnx(minilm_onnx, threads=1), ox.OnnxEncoder)
    loaded = ox.load_onnx(gpt2_onnx, threads=1)
    assert isinstance(loaded, ox.OnnxCausalLM)
    assert loaded.tokenizer().encode("import os").ids == load_tokenizer("tiny-gpt2").encode("import os").ids
    with pytest.raises(FileNotFoundError, match="exported without a tokenizer"):
        ox.OnnxEncoder(minilm_onnx).tokenizer()
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        ox.OnnxCausalLM(tmp_path / "none.onnx")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(gpt2_onnx.read_bytes())
    with pytest.raises(FileNotFoundError, match="sidecar"):
        ox.OnnxCausalLM(lonely)
    ox.sidecar_path(lonely).write_text('{"format": "something/9"}')
    with pytest.raises(ValueError, match="course_lib.onnx/1"):
        ox.OnnxCausalLM(lonely)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        ox.OnnxCausalLM(gpt2_onnx, threads=0)
    with pytest.raises(ValueError, match="pad batches for generation on the left"):
        ox.ort_generate_ids(gpt2_ort, torch.tensor([[5, 6, 0]]), 3, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="positions"):
        ox.ort_generate_ids(gpt2_ort, torch.tensor([[5] * 250]), 10)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4096\)"):
        ox.ort_generate_ids(gpt2_ort, torch.tensor([[4096]]), 3)
    with pytest.raises(TypeError, match="must hold integers"):
        gpt2_ort(torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match=r"with 0 cached and 2 new tokens it must be \(1, 2\)"):
        gpt2_ort(torch.tensor([[1, 2]]), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        ox.ort_generate_ids(gpt2_ort, torch.tensor([[1]]), -1)
    with pytest.raises(ValueError, match="top_p must be in"):
        ox.ort_generate_ids(gpt2_ort, torch.tensor([[1]]), 2, top_p=1.5)
