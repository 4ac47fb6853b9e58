"""Our encoder, loaded with ``load_model``, against ``transformers`` on checkpoints in the layouts the Hub publishes.

Every folder here is made on the fly: a ``transformers`` model with the *real* config of a
published checkpoint (2 layers instead of 12 or 6, to stay fast), random weights (seeded;
every parameter, LayerNorm scales and biases included, so that a tensor loaded into the
wrong place shows), written in the file layout of the published repository. Real
pretrained weights come from the offline asset all-MiniLM-L6-v2. ``transformers`` is the
test-only oracle: imported once per module, never by ``course_lib``.

Bar: max |Δ| <= 1e-4 on hidden states and masked-LM logits (float32, CPU), on padded
batches. ``pytest -s`` prints the max |Δ| of every comparison.
"""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from course_lib import load_model
from course_lib.assets import asset_path
from course_lib.checkpoint import StateDictMismatchError
from course_lib.models.encoder import mean_pooling, sentence_embeddings
from course_lib.tokenizer_loading import encode_batch, load_tokenizer
from helpers import assert_close, randomize_

TOL = 1e-4

# The config.json files of the published checkpoints, as on the Hub (num_hidden_layers is
# cut to 2 where used). Extra keys the course does not use are kept: loading must accept them.
ROBERTA_BASE = {
    "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265,
}
DISTILROBERTA_BASE = {
    **ROBERTA_BASE, "_name_or_path": "distilroberta-base", "gradient_checkpointing": False,
    "num_hidden_layers": 6, "position_embedding_type": "absolute", "transformers_version": "4.4.0.dev0",
    "use_cache": True,
}
BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.6.0.dev0", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}
# xlm-roberta-base has vocab_size 250002; 1000 here keeps the file at 10 MB instead of 800 MB
# (the vocabulary size changes no code path).
XLM_ROBERTA_BASE = {
    "architectures": ["XLMRobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514, "model_type": "xlm-roberta", "num_attention_heads": 12,
    "num_hidden_layers": 12, "output_past": True, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 1000,
}


# --------------------------------------------------------------------------------------
# Helpers

def padded_batch(bos: int, eos: int, pad: int, vocab: int, lengths=(12, 7), side: str = "right", seed: int = 0):
    """(ids, attention_mask), both (B, T): random tokens between bos and eos, padded on ``side``."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for row, n in enumerate(lengths):
        seq = torch.randint(5, vocab, (n,), generator=g)  # ids >= 5: never a special token or padding
        seq[0], seq[-1] = bos, eos
        where = slice(0, n) if side == "right" else slice(T - n, T)
        ids[row, where], mask[row, where] = seq, 1
    return ids, mask


def roberta_batch(config, side="right", seed=0):
    return padded_batch(config["bos_token_id"], config["eos_token_id"], config["pad_token_id"],
                        config["vocab_size"], side=side, seed=seed)


def bert_batch(config, seed=0):
    ids, mask = padded_batch(101, 102, config["pad_token_id"], config["vocab_size"], seed=seed)  # [CLS] ... [SEP]
    token_type_ids = torch.zeros_like(ids)
    token_type_ids[0, 6:] = 1  # the first sequence is a pair: sentence B from token 6 on
    return ids, mask, token_type_ids


def write_folder(folder, config: dict, state: dict | None = None, fmt: str = "safetensors"):
    """config.json (as given) + the weights as ``model.safetensors`` or ``pytorch_model.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if state is None:
        return folder
    if fmt == "safetensors":  # safetensors refuses tensors sharing memory: tied copies become real copies
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    else:  # torch.save keeps shared storage, as the published .bin files do for tied weights
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def legacy_bert_names(state: dict) -> dict:
    """Today's names -> bert-base-uncased's: LayerNorm ``gamma``/``beta``; no ``cls.predictions.decoder.bias``."""
    out = {}
    for key, tensor in state.items():
        if key == "cls.predictions.decoder.bias":
            continue
        if ".LayerNorm." in key:
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        out[key] = tensor
    return out


def safetensors_keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


# --------------------------------------------------------------------------------------
# Checkpoints in published layouts (module-scoped: each is built and written once)

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def roberta(tf, tmp_path_factory):
    """roberta-base as published: RobertaForMaskedLM keys, the tied ``lm_head.decoder.weight`` stored too,
    and a ``roberta.pooler`` that RobertaForMaskedLM does not even have."""
    config = {**ROBERTA_BASE, "num_hidden_layers": 2}
    hf = randomize_(tf.RobertaForMaskedLM(tf.RobertaConfig(**config)), seed=1)
    pooler = randomize_(tf.models.roberta.modeling_roberta.RobertaPooler(hf.config), seed=2)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.decoder.bias"}
    state.update({f"roberta.pooler.{k}": v for k, v in pooler.state_dict().items()})
    assert "lm_head.decoder.weight" in state
    folder = write_folder(tmp_path_factory.mktemp("roberta-base"), config, state)
    return types.SimpleNamespace(folder=folder, hf=hf, pooler=pooler, config=config)


@pytest.fixture(scope="module")
def bert(tf, tmp_path_factory):
    """bert-base-uncased as published (BertForPreTraining, legacy gamma/beta), as .bin and as .safetensors."""
    config = {**BERT_BASE_UNCASED, "num_hidden_layers": 2}
    hf = randomize_(tf.BertForPreTraining(tf.BertConfig(**config)), seed=3)
    state = legacy_bert_names(hf.state_dict())
    assert {"bert.embeddings.LayerNorm.gamma", "cls.predictions.decoder.weight", "cls.seq_relationship.weight",
            "bert.pooler.dense.weight"} <= set(state)
    root = tmp_path_factory.mktemp("bert-base-uncased")
    folders = {fmt: write_folder(root / fmt, config, state, fmt) for fmt in ("bin", "safetensors")}
    return types.SimpleNamespace(folders=folders, hf=hf, config=config, state=state)


@pytest.fixture(scope="module")
def minilm(tf, tmp_path_factory):
    """all-MiniLM-L6-v2's layout (real config.json): bare BertModel keys, a pooler, the position_ids buffer."""
    config = json.loads((asset_path("all-MiniLM-L6-v2") / "config.json").read_text(encoding="utf-8"))
    hf = randomize_(tf.BertModel(tf.BertConfig(**config)), seed=4)
    state = dict(hf.state_dict())
    state["embeddings.position_ids"] = torch.arange(config["max_position_embeddings"]).unsqueeze(0)
    assert "pooler.dense.weight" in state
    folder = write_folder(tmp_path_factory.mktemp("minilm"), config, state)
    return types.SimpleNamespace(folder=folder, hf=hf, config=config)


def check_loaded(model, report_skips: dict[str, str]):
    """Eval mode, and ``load_report`` skipped each given key for a reason containing the given words."""
    assert model.training is False and all(not m.training for m in model.modules())
    report = model.load_report
    assert report.ok, report.summary()
    for key, why in report_skips.items():
        assert key in report.skipped, f"{key} not among the skipped keys:\n{report.summary()}"
        assert why in report.skipped[key], f"{key} skipped as {report.skipped[key]!r}, expected {why!r}"


# --------------------------------------------------------------------------------------
# RoBERTa

@pytest.mark.parametrize("task", ["base", "masked-lm"])
def test_roberta_base_layout(roberta, task):
    model = load_model(roberta.folder, task=task)
    ids, mask = roberta_batch(roberta.config)
    with torch.no_grad():
        ours = model(ids, mask)
        if task == "base":
            reference = roberta.hf.roberta(ids, attention_mask=mask).last_hidden_state
        else:
            reference = roberta.hf(ids, attention_mask=mask).logits
    assert_close(f"roberta-base .safetensors task={task}", ours, reference)
    if task == "base":
        check_loaded(model, {"lm_head.decoder.weight": "head", "lm_head.dense.weight": "head"})
        assert type(model).__name__ == "RobertaModel"
        with torch.no_grad():  # the file's pooler was loaded, not left random
            assert_close("roberta-base pooler", model.pooler(ours), roberta.pooler(reference), tol=1e-5)
    else:
        check_loaded(model, {"lm_head.decoder.weight": "tied", "roberta.pooler.dense.weight": "head"})
        assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight


def test_roberta_left_padding_positions_count_real_tokens(roberta):
    """Left padding: positions start after the pads, so the real tokens see what they see unpadded."""
    model = load_model(roberta.folder, task="base")
    ids, mask = roberta_batch(roberta.config, side="left", seed=5)
    assert mask[1, 0] == 0 and mask[1, -1] == 1
    with torch.no_grad():
        ours = model(ids, mask)
        reference = roberta.hf.roberta(ids, attention_mask=mask).last_hidden_state
        n = int(mask[1].sum())
        alone = model(ids[1:, -n:])  # the short sequence without padding
    assert_close("roberta-base left padding", ours, reference)
    assert_close("roberta left-padded vs unpadded", ours[1, -n:], alone[0], tol=1e-5)


def test_distilroberta_sharded_safetensors(roberta, tf, tmp_path):
    """transformers' own sharded layout: model.safetensors.index.json + shards, tied decoder not stored."""
    folder = tmp_path / "distilroberta-base"
    roberta.hf.save_pretrained(folder, max_shard_size="100MB")
    write_folder(folder, {**DISTILROBERTA_BASE, "num_hidden_layers": 2})  # the real config.json
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert (folder / "model.safetensors.index.json").is_file() and len(shards) >= 2, shards
    assert not (folder / "model.safetensors").exists()
    ids, mask = roberta_batch(roberta.config, seed=6)
    with torch.no_grad():
        logits = load_model(folder, task="masked-lm")(ids, mask)
        hidden = load_model(folder)(ids, mask)  # task="auto" is "base" for RoBERTa
        assert_close("distilroberta sharded task=masked-lm", logits, roberta.hf(ids, attention_mask=mask).logits)
        assert_close("distilroberta sharded task=auto", hidden,
                     roberta.hf.roberta(ids, attention_mask=mask).last_hidden_state)


def test_xlm_roberta_same_code_path(tf, tmp_path):
    """model_type "xlm-roberta" -> RobertaModel; this file stores every state_dict key, the
    ``lm_head.decoder.bias`` alias of ``lm_head.bias`` included."""
    config = {**XLM_ROBERTA_BASE, "num_hidden_layers": 2}
    hf = randomize_(tf.XLMRobertaForMaskedLM(tf.XLMRobertaConfig(**config)), seed=7)
    state = hf.state_dict()
    assert "lm_head.decoder.bias" in state
    folder = write_folder(tmp_path / "xlm-roberta-base", config, state)
    ids, mask = roberta_batch(config, seed=8)
    mlm = load_model(folder, task="masked-lm")
    check_loaded(mlm, {"lm_head.decoder.bias": "lm_head.bias", "lm_head.decoder.weight": "tied"})
    with torch.no_grad():
        assert_close("xlm-roberta task=masked-lm", mlm(ids, mask), hf(ids, attention_mask=mask).logits)
        assert_close("xlm-roberta task=base", load_model(folder, task="base")(ids, mask),
                     hf.roberta(ids, attention_mask=mask).last_hidden_state)


# --------------------------------------------------------------------------------------
# BERT

@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("task", ["base", "masked-lm"])
def test_bert_base_uncased_layout(bert, fmt, task):
    model = load_model(bert.folders[fmt], task=task)
    ids, mask, token_types = bert_batch(bert.config)
    with torch.no_grad():
        ours = model(ids, mask, token_types)
        if task == "base":
            reference = bert.hf.bert(ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
        else:
            reference = bert.hf(ids, attention_mask=mask, token_type_ids=token_types).prediction_logits
    assert_close(f"bert-base-uncased .{fmt} task={task}", ours, reference)
    prefix = "bert." if task == "masked-lm" else ""
    assert model.load_report.renamed["bert.embeddings.LayerNorm.gamma"] == f"{prefix}embeddings.LayerNorm.weight"
    assert model.load_report.renamed["bert.encoder.layer.1.output.LayerNorm.beta"] == \
        f"{prefix}encoder.layer.1.output.LayerNorm.bias"
    if task == "base":
        check_loaded(model, {"cls.seq_relationship.weight": "head", "cls.predictions.decoder.weight": "head"})
        assert model.pooler is not None and "pooler.dense.weight" in model.load_report.loaded
    else:
        check_loaded(model, {"cls.seq_relationship.weight": "head", "cls.seq_relationship.bias": "head",
                             "bert.pooler.dense.weight": "head", "cls.predictions.decoder.weight": "tied"})
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
        assert torch.equal(model.cls.predictions.bias, bert.hf.cls.predictions.bias)


@pytest.fixture(scope="module")
def bert_sharded_bin(bert, tmp_path_factory):
    """pytorch_model.bin.index.json + 2 .bin shards, with the position_ids buffer transformers 4.x saved."""
    folder = write_folder(tmp_path_factory.mktemp("bert-sharded-bin"), bert.config)
    state = {**bert.state, "bert.embeddings.position_ids": torch.arange(512).unsqueeze(0)}
    keys = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, names in shards.items():
        torch.save({k: state[k] for k in names}, folder / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def test_bert_sharded_bin_with_position_ids(bert, bert_sharded_bin):
    ids, mask, token_types = bert_batch(bert.config, seed=9)
    model = load_model(bert_sharded_bin, task="masked-lm")
    check_loaded(model, {"bert.embeddings.position_ids": "buffer"})
    with torch.no_grad():
        assert_close("bert sharded .bin task=masked-lm", model(ids, mask, token_types),
                     bert.hf(ids, attention_mask=mask, token_type_ids=token_types).prediction_logits)


def test_minilm_layout(minilm):
    model = load_model(minilm.folder)  # auto = base
    ids, mask = padded_batch(101, 102, 0, minilm.config["vocab_size"], seed=10)
    with torch.no_grad():
        assert_close("MiniLM layout task=auto", model(ids, mask), minilm.hf(ids, attention_mask=mask).last_hidden_state)
    check_loaded(model, {"embeddings.position_ids": "buffer"})
    assert model.pooler is not None and "pooler.dense.weight" in model.load_report.loaded
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(StateDictMismatchError, match=r"cls\.predictions\.transform\.dense\.weight"):
        load_model(minilm.folder, task="masked-lm")  # a bare encoder has no masked-LM head


@pytest.fixture(scope="module")
def minilm_fp16(minilm, tmp_path_factory):
    """The MiniLM layout saved in float16 by transformers (config.json records "dtype": "float16")."""
    half = copy.deepcopy(minilm.hf).half()
    folder = tmp_path_factory.mktemp("minilm-fp16")
    half.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    ids, mask = padded_batch(101, 102, 0, minilm.config["vocab_size"], seed=11)
    with torch.no_grad():  # the reference: the float16 weights, computed in float32
        reference = half.float()(ids, attention_mask=mask).last_hidden_state
    return types.SimpleNamespace(folder=folder, ids=ids, mask=mask, reference=reference)


@pytest.mark.parametrize("dtype, expected, tol", [
    (None, torch.float32, TOL),  # None = float32, as transformers
    ("auto", torch.float16, 2e-2),  # as saved; float16 arithmetic, so only ~1e-2 agreement
    (torch.bfloat16, torch.bfloat16, 1e-1),  # bfloat16 keeps 8 bits of mantissa
])
def test_float16_file_dtypes(minilm_fp16, dtype, expected, tol):
    model = load_model(minilm_fp16.folder, dtype=dtype, device="cpu")
    assert {p.dtype for p in model.parameters()} == {expected}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.no_grad():
        hidden = model(minilm_fp16.ids, minilm_fp16.mask)
    assert hidden.dtype == expected
    assert_close(f"MiniLM float16 file, dtype={dtype}", hidden, minilm_fp16.reference, tol=tol)


# --------------------------------------------------------------------------------------
# Saving: our model -> save_pretrained -> transformers and load_model read the same model

@pytest.mark.parametrize("case", ["roberta masked-lm", "bert base"])
def test_save_pretrained_round_trip(case, roberta, bert, tf, tmp_path):
    if case == "roberta masked-lm":
        src, task, arch, model_type = roberta.folder, "masked-lm", "RobertaForMaskedLM", "roberta"
        ids, mask = roberta_batch(roberta.config, seed=12)
        tied, embedding = "lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"
        auto, source = tf.AutoModelForMaskedLM, roberta.hf  # source: the model the weights came from
    else:
        src, task, arch, model_type = bert.folders["bin"], "base", "BertModel", "bert"
        ids, mask = bert_batch(bert.config, seed=12)[:2]
        tied, embedding = "cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"
        auto, source = tf.AutoModel, bert.hf.bert
    ours = load_model(src, task=task)
    out = ours.save_pretrained(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == [arch] and config["model_type"] == model_type
    keys = safetensors_keys(out / "model.safetensors")
    assert embedding in keys and tied not in keys  # the tied matrix is stored once
    assert len(keys) == len(set(ours.state_dict()) - {tied})

    theirs, info = auto.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    expected_state = source.state_dict()
    changed = [k for k, v in theirs.state_dict().items() if not torch.equal(v, expected_state[k])]
    assert not changed, f"tensors that did not survive load -> save -> transformers: {changed}"

    def logits_or_hidden(output):
        return output.logits if task == "masked-lm" else output.last_hidden_state

    with torch.no_grad():
        got = logits_or_hidden(theirs.eval()(ids, attention_mask=mask))
        assert_close(f"save_pretrained ({case}) -> transformers, vs the source", got,
                     logits_or_hidden(source(ids, attention_mask=mask)), tol=1e-6)
        expected = ours(ids, mask)
        assert_close(f"save_pretrained ({case}) -> transformers, vs ours", got, expected)
        assert_close(f"save_pretrained ({case}) -> load_model", load_model(out, task=task)(ids, mask), expected,
                     tol=1e-6)


# --------------------------------------------------------------------------------------
# python -m course_lib.convert

@pytest.mark.parametrize("layout", ["bin", "sharded bin"])
def test_convert_bin_to_safetensors(layout, bert, bert_sharded_bin, tf, tmp_path, capsys):
    from course_lib import convert

    src = bert.folders["bin"] if layout == "bin" else bert_sharded_bin
    dst = tmp_path / "converted"
    assert convert.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "LayerNorm.gamma -> " in printed and "model.safetensors" in printed

    keys = safetensors_keys(dst / "model.safetensors")
    assert not [k for k in keys if k.endswith((".gamma", ".beta", "position_ids"))], keys
    assert "bert.embeddings.LayerNorm.weight" in keys and "cls.seq_relationship.weight" in keys
    assert json.loads((dst / "config.json").read_text()) == bert.config  # copied beside it
    assert not list(dst.glob("*.bin"))

    ids, mask, token_types = bert_batch(bert.config, seed=13)
    theirs, info = tf.BertForPreTraining.from_pretrained(dst, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"]), info
    with torch.no_grad():
        expected = bert.hf(ids, attention_mask=mask, token_type_ids=token_types).prediction_logits
        got = theirs.eval()(ids, attention_mask=mask, token_type_ids=token_types).prediction_logits
        assert_close(f"convert {layout} -> transformers", got, expected, tol=1e-6)
        ours = load_model(dst, task="masked-lm")(ids, mask, token_types)
        assert_close(f"convert {layout} -> load_model", ours, expected)


# --------------------------------------------------------------------------------------
# Real pretrained weights: sentence-transformers/all-MiniLM-L6-v2, offline

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an acoustic guitar.",
    "The stock market fell sharply today, worrying investors across the world.",
    "Cats sleep most of the day.",
]


@pytest.fixture(scope="module")
def real_minilm(tf):
    folder = asset_path("all-MiniLM-L6-v2")
    return types.SimpleNamespace(folder=folder, hf=tf.AutoModel.from_pretrained(folder).eval(),
                                 tok=load_tokenizer(folder))


@pytest.mark.parametrize("src", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_real_minilm_hidden_states(src, real_minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # an empty cache: the asset must answer
    model = load_model(src)
    check_loaded(model, {"embeddings.position_ids": "buffer"})
    batch = encode_batch(real_minilm.tok, SENTENCES)
    assert (batch["attention_mask"] == 0).any()  # padded
    with torch.no_grad():
        reference = real_minilm.hf(**batch).last_hidden_state
        assert_close(f"real all-MiniLM-L6-v2 ({src})", model(batch["input_ids"], batch["attention_mask"]), reference)


def test_real_minilm_sentence_embeddings(real_minilm):
    model = load_model(real_minilm.folder)
    ours = sentence_embeddings(model, real_minilm.tok, SENTENCES, batch_size=3)  # 2 batches
    # the sentence-transformers recipe, written out: hidden states -> mean over real tokens -> L2 norm
    batch = encode_batch(real_minilm.tok, SENTENCES, max_length=256)
    with torch.no_grad():
        hidden = real_minilm.hf(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    reference = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert ours.shape == (len(SENTENCES), 384)
    assert_close("real all-MiniLM-L6-v2 sentence embeddings", ours, reference, tol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)
    # mean_pooling alone, on the same hidden states
    assert_close("mean_pooling", mean_pooling(hidden, batch["attention_mask"]), (hidden * m).sum(1) / m.sum(1),
                 tol=1e-6)
    cosine = ours @ ours.T
    paraphrase, unrelated = cosine[0, 1].item(), cosine[0, 2].item()
    print(f"\n  cosine paraphrase {paraphrase:.3f}, unrelated {unrelated:.3f}")
    # measured (torch 2.13 CPU): paraphrase 0.804, unrelated -0.066
    assert paraphrase > 0.6 and unrelated < 0.2 and paraphrase - unrelated > 0.5
