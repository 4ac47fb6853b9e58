"""Chapter 08's classification heads against ``transformers``, on checkpoints in the layouts the Hub publishes.

Every folder is made on the fly: a ``transformers`` model with the *real* config.json of a
published checkpoint (fewer layers, a smaller vocabulary and, for roberta-large, a smaller
width: none of these changes a code path), random weights (``helpers.randomize_``: every
parameter, so a tensor loaded into the wrong place shows), written as the repository
stores it (extra buffers and unused pooler weights included where the published file has
them). ``transformers`` is the test-only oracle.

Bar: max |Δ| <= 1e-4 on logits (float32, CPU), on padded batches. ``pytest -s`` prints each.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from course_lib import load_model
from course_lib.checkpoint import CheckpointError, StateDictMismatchError
from course_lib.fused import fuse
from course_lib.models import (ARCHITECTURES, TASKS, EncoderConfig, config_from_dict, model_class,
                               task_of_architecture)
from course_lib.models import encoder as E
from course_lib.quantization import QuantLinear, reference_path
from helpers import assert_close, randomize_

# --------------------------------------------------------------------------------------
# The config.json files of published checkpoints, as on the Hub. Where a test shrinks one,
# SHRINK says what; the label fields are never changed.

# cross-encoder/ms-marco-MiniLM-L6-v2: a BertForSequenceClassification with one output (a relevance score)
CROSS_ENCODER = {
    "architectures": ["BertForSequenceClassification"], "attention_probs_dropout_prob": 0.1,
    "classifier_dropout": None, "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 384, "id2label": {"0": "LABEL_0"}, "initializer_range": 0.02, "intermediate_size": 1536,
    "label2id": {"LABEL_0": 0}, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
    "sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity", "torch_dtype": "float32",
    "transformers_version": "4.6.1", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}
# nlptown/bert-base-multilingual-uncased-sentiment: a transformers-2.x config (generation keys, "_num_labels",
# an empty "pruned_heads"), five classes named "1 star" .. "5 stars"
BERT_SENTIMENT = {
    "_num_labels": 5, "architectures": ["BertForSequenceClassification"], "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0, "directionality": "bidi", "do_sample": False, "eos_token_ids": 0,
    "finetuning_task": "sentiment-analysis", "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "id2label": {"0": "1 star", "1": "2 stars", "2": "3 stars", "3": "4 stars", "4": "5 stars"},
    "initializer_range": 0.02, "intermediate_size": 3072, "is_decoder": False,
    "label2id": {"1 star": 0, "2 stars": 1, "3 stars": 2, "4 stars": 3, "5 stars": 4}, "layer_norm_eps": 1e-12,
    "length_penalty": 1.0, "max_length": 20, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_beams": 1, "num_hidden_layers": 12, "num_return_sequences": 1,
    "output_attentions": False, "output_hidden_states": False, "output_past": True, "pad_token_id": 0,
    "pooler_fc_size": 768, "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3, "pooler_size_per_head": 128,
    "pooler_type": "first_token_transform", "pruned_heads": {}, "repetition_penalty": 1.0, "temperature": 1.0,
    "top_k": 50, "top_p": 1.0, "torchscript": False, "type_vocab_size": 2, "use_bfloat16": False,
    "vocab_size": 105879,
}
# dslim/bert-base-NER: BertForTokenClassification, CoNLL-2003 BIO tags
BERT_NER = {
    "_name_or_path": "bert-base-cased", "_num_labels": 9, "architectures": ["BertForTokenClassification"],
    "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "id2label": {"0": "O", "1": "B-MISC", "2": "I-MISC", "3": "B-PER", "4": "I-PER", "5": "B-ORG", "6": "I-ORG",
                 "7": "B-LOC", "8": "I-LOC"},
    "initializer_range": 0.02, "intermediate_size": 3072,
    "label2id": {"B-LOC": 7, "B-MISC": 1, "B-ORG": 5, "B-PER": 3, "I-LOC": 8, "I-MISC": 2, "I-ORG": 6, "I-PER": 4,
                 "O": 0},
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "output_past": True, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.6.1", "type_vocab_size": 2, "use_cache": True, "vocab_size": 28996,
}
# cardiffnlp/twitter-roberta-base-sentiment-latest: RobertaForSequenceClassification; its pytorch_model.bin also
# holds a roberta.pooler that the sequence head does not use
ROBERTA_SENTIMENT = {
    "_name_or_path": "/home/jupyter/misc/tweeteval/TweetEval_models/sentiment/sentiment_latest_2021/",
    "architectures": ["RobertaForSequenceClassification"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "id2label": {"0": "negative", "1": "neutral", "2": "positive"}, "initializer_range": 0.02,
    "intermediate_size": 3072, "label2id": {"negative": 0, "neutral": 1, "positive": 2}, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 12, "num_hidden_layers": 12,
    "pad_token_id": 1, "position_embedding_type": "absolute", "torch_dtype": "float32",
    "transformers_version": "4.13.0.dev0", "type_vocab_size": 1, "use_cache": True, "vocab_size": 50265,
}
# Jean-Baptiste/roberta-large-ner-english: RobertaForTokenClassification on roberta-large
ROBERTA_NER = {
    "_name_or_path": "roberta-large", "architectures": ["RobertaForTokenClassification"],
    "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2, "gradient_checkpointing": False,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 1024,
    "id2label": {"0": "O", "1": "LOC", "2": "PER", "3": "MISC", "4": "ORG"}, "initializer_range": 0.02,
    "intermediate_size": 4096, "label2id": {"LOC": 1, "MISC": 3, "O": 0, "ORG": 4, "PER": 2},
    "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 16,
    "num_hidden_layers": 24, "pad_token_id": 1, "position_embedding_type": "absolute", "torch_dtype": "float32",
    "transformers_version": "4.10.2", "type_vocab_size": 1, "use_cache": True, "vocab_size": 50265,
}

# 2 layers and 1000 tokens everywhere; roberta-large is also cut to width 128 (16 heads of 8)
SHRINK = {"num_hidden_layers": 2, "vocab_size": 1000}
SHRINK_LARGE = {**SHRINK, "hidden_size": 128, "intermediate_size": 256}

# name -> (config.json, shrink, task, transformers class name, what the published file holds besides the model)
LAYOUTS = {
    "cross-encoder/ms-marco-MiniLM-L6-v2": (CROSS_ENCODER, SHRINK, "sequence-classification",
                                           "BertForSequenceClassification", "position_ids"),
    "nlptown/bert-base-multilingual-uncased-sentiment": (BERT_SENTIMENT, SHRINK, "sequence-classification",
                                                         "BertForSequenceClassification", "bin"),
    "dslim/bert-base-NER": (BERT_NER, SHRINK, "token-classification", "BertForTokenClassification",
                            "position_ids"),
    "cardiffnlp/twitter-roberta-base-sentiment-latest": (ROBERTA_SENTIMENT, SHRINK, "sequence-classification",
                                                         "RobertaForSequenceClassification", "roberta pooler"),
    "Jean-Baptiste/roberta-large-ner-english": (ROBERTA_NER, SHRINK_LARGE, "token-classification",
                                                "RobertaForTokenClassification", ""),
}


# --------------------------------------------------------------------------------------
# Helpers

def write_folder(folder, config: dict, state: dict | None = None, fmt: str = "safetensors"):
    """config.json (as given) + the weights as ``model.safetensors`` or ``pytorch_model.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if state is not None and fmt == "safetensors":
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    elif state is not None:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def batch(config: dict, seed: int = 0, lengths=(9, 6)):
    """(input_ids, attention_mask, token_type_ids), (B, T): [CLS]/<s> first, right-padded; BERT's first row a pair."""
    g = torch.Generator().manual_seed(seed)
    roberta = config["model_type"] == "roberta"
    bos, eos, pad = (0, 2, 1) if roberta else (101, 102, 0)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        seq = torch.randint(5, config["vocab_size"], (n,), generator=g)
        seq[0], seq[-1] = (bos, eos) if roberta else (bos % config["vocab_size"], eos % config["vocab_size"])
        ids[row, :n], mask[row, :n] = seq, 1
    types_ = torch.zeros_like(ids)
    if not roberta:
        types_[0, 5:lengths[0]] = 1  # a (query, passage) pair: sentence B from token 5 on
    return ids, mask, types_


def hf_logits(hf, ids, mask, types_):
    with torch.no_grad():
        return hf(ids, attention_mask=mask, token_type_ids=types_).logits


# --------------------------------------------------------------------------------------
# Checkpoints in published layouts (module-scoped: each built once)

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def layouts(tf, tmp_path_factory):
    made = {}
    for seed, (name, (config, shrink, task, arch, extra)) in enumerate(LAYOUTS.items()):
        config = {**config, **shrink}
        hf = randomize_(getattr(tf, arch)(tf.AutoConfig.for_model(**config)), seed=10 + seed)
        state = dict(hf.state_dict())
        if extra == "position_ids":  # files saved by transformers 4.x before 4.31 hold this buffer
            state["bert.embeddings.position_ids"] = torch.arange(config["max_position_embeddings"]).unsqueeze(0)
        if extra == "roberta pooler":  # trained with a pooler that the sequence head never reads
            C = config["hidden_size"]
            g = torch.Generator().manual_seed(99)
            state["roberta.pooler.dense.weight"] = 0.05 * torch.randn(C, C, generator=g)
            state["roberta.pooler.dense.bias"] = 0.05 * torch.randn(C, generator=g)
        folder = write_folder(tmp_path_factory.mktemp(name.replace("/", "--")), config, state,
                              "bin" if extra == "bin" else "safetensors")
        made[name] = types.SimpleNamespace(folder=folder, hf=hf, config=config, task=task, arch=arch, extra=extra)
    return made


# --------------------------------------------------------------------------------------
# Parity on the published layouts

@pytest.mark.parametrize("name", list(LAYOUTS))
def test_published_layout_parity(layouts, name):
    case = layouts[name]
    model = load_model(case.folder, task=case.task)
    assert type(model).__name__ == case.arch and not model.training
    ids, mask, types_ = batch(case.config, seed=1)
    with torch.no_grad():
        logits = model(ids, mask, types_)
    labels = len(case.config["id2label"])
    expected_shape = (2, labels) if case.task == "sequence-classification" else (2, ids.size(1), labels)
    assert logits.shape == expected_shape and logits.dtype == torch.float32
    assert_close(f"{name} ({case.task})", logits, hf_logits(case.hf, ids, mask, types_))
    report = model.load_report
    assert report.ok and not report.initialised, report.summary()
    if case.extra == "position_ids":
        assert "buffer" in report.skipped["bert.embeddings.position_ids"]
    if case.extra == "roberta pooler":
        assert "head" in report.skipped["roberta.pooler.dense.weight"]
    config = model.config
    assert config.num_labels == labels
    assert config.id2label == {int(k): v for k, v in case.config["id2label"].items()}
    assert config.label2id == case.config["label2id"]


def test_cross_encoder_scores_pairs(layouts):
    """num_labels = 1: one relevance score per (query, passage) pair, (B, 1); the pair's sentence B matters."""
    case = layouts["cross-encoder/ms-marco-MiniLM-L6-v2"]
    model = load_model(case.folder, task="sequence-classification")
    ids, mask, types_ = batch(case.config, seed=2)
    with torch.no_grad():
        scores = model(ids, mask, types_)
        without_pair = model(ids, mask)  # every token "sentence A"
    assert scores.shape == (2, 1) and model.config.num_labels == 1 and model.config.id2label == {0: "LABEL_0"}
    assert model.config.problem_type is None
    assert not torch.allclose(scores[0], without_pair[0])  # token types reach the score
    assert torch.equal(scores[1], without_pair[1])  # the second row has no sentence B


def test_token_head_scores_every_position(layouts):
    """Each token's logits depend on that token's hidden state only: the head is the same Linear at every position."""
    case = layouts["dslim/bert-base-NER"]
    model = load_model(case.folder, task="token-classification")
    ids, mask, types_ = batch(case.config, seed=3)
    with torch.no_grad():
        logits = model(ids, mask, types_)  # (B, T, 9)
        hidden = model.bert(ids, mask, types_)  # (B, T, C)
    assert_close("token head = classifier(hidden) per position", logits, model.classifier(hidden), tol=1e-6)
    labels = [model.config.id2label[i] for i in logits[0, :3].argmax(-1).tolist()]
    assert all(label in case.config["label2id"] for label in labels)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_save_pretrained_loads_in_transformers(layouts, tf, tmp_path, name):
    """Our save_pretrained -> AutoModelFor...from_pretrained: no missing/unexpected/mismatched keys, same logits,
    same labels; and load_model reads it back."""
    case = layouts[name]
    ours = load_model(case.folder, task=case.task)
    out = ours.save_pretrained(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == [case.arch] and config["id2label"] == case.config["id2label"]
    auto = tf.AutoModelForSequenceClassification if case.task == "sequence-classification" \
        else tf.AutoModelForTokenClassification
    theirs, info = auto.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    assert type(theirs).__name__ == case.arch
    assert theirs.config.id2label == ours.config.id2label and theirs.config.num_labels == ours.config.num_labels
    ids, mask, types_ = batch(case.config, seed=4)
    with torch.no_grad():
        expected = ours(ids, mask, types_)
        assert_close(f"{name}: save_pretrained -> transformers", hf_logits(theirs.eval(), ids, mask, types_), expected)
        assert_close(f"{name}: save_pretrained -> load_model", load_model(out, task=case.task)(ids, mask, types_),
                     expected, tol=1e-6)


# --------------------------------------------------------------------------------------
# A new head for fine-tuning, and heads that do not fit the file

@pytest.fixture(scope="module")
def bare_encoder(tf, tmp_path_factory):
    """all-MiniLM-L6-v2's layout (bare BertModel keys, a pooler, the position_ids buffer), 2 layers, 1000 tokens."""
    from course_lib.assets import asset_path

    config = json.loads((asset_path("all-MiniLM-L6-v2") / "config.json").read_text(encoding="utf-8"))
    config = {**config, **SHRINK}
    hf = randomize_(tf.BertModel(tf.BertConfig(**config)), seed=20)
    state = {**hf.state_dict(), "embeddings.position_ids": torch.arange(512).unsqueeze(0)}
    return types.SimpleNamespace(folder=write_folder(tmp_path_factory.mktemp("minilm"), config, state), hf=hf,
                                 config=config)


def test_new_head_on_a_pretrained_encoder(bare_encoder):
    """The fine-tuning start: the file's encoder and pooler, a new classifier N(0, 0.02) with zero bias, seeded."""
    labels = {0: "ham", 1: "spam"}
    torch.manual_seed(0)
    model = load_model(bare_encoder.folder, task="sequence-classification", id2label=labels)
    torch.manual_seed(0)
    again = load_model(bare_encoder.folder, task="sequence-classification", id2label=["ham", "spam"])
    report = model.load_report
    assert report.ok and report.initialised == ["classifier.weight", "classifier.bias"], report.summary()
    assert "initialised (a new head" in report.summary()
    assert "bert.pooler.dense.weight" in report.loaded.keys()  # the file's pooler, not a new one
    assert model.config.id2label == labels and model.config.label2id == {"ham": 0, "spam": 1}
    weight, bias = model.classifier.weight, model.classifier.bias
    assert weight.shape == (2, 384) and torch.equal(bias, torch.zeros(2)) and not weight.is_meta
    assert 0.015 < weight.std().item() < 0.025  # initializer_range = 0.02
    assert torch.equal(weight, again.classifier.weight)  # the same seed, the same head
    ids, mask, types_ = batch(bare_encoder.config, seed=5)
    with torch.no_grad():
        assert_close("new head: encoder = the file's", model.bert(ids, mask, types_),
                     bare_encoder.hf(ids, attention_mask=mask, token_type_ids=types_).last_hidden_state)
        assert model(ids, mask, types_).shape == (2, 2)
    saved = json.loads(json.dumps(model.config.to_dict()))
    assert saved["id2label"] == {"0": "ham", "1": "spam"} and saved["label2id"] == {"ham": 0, "spam": 1}


def test_new_head_on_the_real_minilm(tf):
    """The real all-MiniLM-L6-v2 (offline asset) with a new head = transformers' from_pretrained(num_labels=2)
    given the same head: the chapter's fine-tuning starts from this model."""
    from course_lib.assets import asset_path
    from course_lib.tokenizer_loading import encode_batch, load_tokenizer

    folder = asset_path("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    ours = load_model(folder, task="sequence-classification", id2label={0: "ham", 1: "spam"})
    theirs = tf.BertForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    with torch.no_grad():
        theirs.classifier.weight.copy_(ours.classifier.weight)
        theirs.classifier.bias.copy_(ours.classifier.bias)
    encoded = encode_batch(load_tokenizer(folder), ["Free entry in a weekly competition!", "See you at 6, ok?"])
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad():
        assert_close("real MiniLM + new head vs transformers", ours(ids, mask),
                     theirs(ids, attention_mask=mask).logits)


def test_new_roberta_heads_from_a_masked_lm_checkpoint(tf, tmp_path):
    """roberta-base's layout (RobertaForMaskedLM): lm_head skipped; classifier.dense/out_proj or classifier new."""
    config = {**ROBERTA_SENTIMENT, **SHRINK, "architectures": ["RobertaForMaskedLM"]}
    for key in ("id2label", "label2id"):
        config.pop(key)
    hf = randomize_(tf.RobertaForMaskedLM(tf.RobertaConfig(**config)), seed=21)
    folder = write_folder(tmp_path / "roberta-base", config, hf.state_dict())
    seq = load_model(folder, task="sequence-classification", num_labels=3)
    assert seq.load_report.initialised == ["classifier.dense.weight", "classifier.dense.bias",
                                           "classifier.out_proj.weight", "classifier.out_proj.bias"]
    assert "head" in seq.load_report.skipped["lm_head.dense.weight"]
    assert seq.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    tok = load_model(folder, task="token-classification", num_labels=4)
    assert tok.load_report.initialised == ["classifier.weight", "classifier.bias"]
    ids, mask, _ = batch(config, seed=6)
    with torch.no_grad():
        assert seq(ids, mask).shape == (2, 3) and tok(ids, mask).shape == (2, ids.size(1), 4)
        assert_close("new head: roberta encoder = the file's", tok.roberta(ids, mask),
                     hf.roberta(ids, attention_mask=mask).last_hidden_state)


def test_head_errors_name_the_problem_and_the_fix(layouts, bare_encoder):
    with pytest.raises(StateDictMismatchError, match=r"no sequence-classification head \(classifier.weight, "
                                                     r"classifier.bias missing\).*id2label="):
        load_model(bare_encoder.folder, task="sequence-classification")  # no labels: no new head
    three = layouts["cardiffnlp/twitter-roberta-base-sentiment-latest"]
    with pytest.raises(StateDictMismatchError, match=r"predicts 3 classes .*num_labels=2") as info:
        load_model(three.folder, task="sequence-classification", num_labels=2)
    assert "classifier.out_proj.weight: model (2, 768) vs checkpoint (3, 768)" in str(info.value)
    assert "add strict=False" in str(info.value)
    torch.manual_seed(0)
    two = load_model(three.folder, task="sequence-classification", num_labels=2, strict=False)  # a new out_proj
    assert two.load_report.ok and two.load_report.initialised == ["classifier.out_proj.weight",
                                                                  "classifier.out_proj.bias"]
    assert "replaced" in two.load_report.skipped["classifier.out_proj.weight"]
    assert torch.equal(two.classifier.dense.weight, three.hf.classifier.dense.weight)  # the fitting part is kept
    assert two.classifier.out_proj.weight.shape == (2, 768) and 0.015 < two.classifier.out_proj.weight.std() < 0.025
    with pytest.raises(CheckpointError, match=r"BertForSequenceClassification: its 'classifier' is a "
                                              r"sequence-classification head.*task='sequence-classification'"):
        load_model(layouts["cross-encoder/ms-marco-MiniLM-L6-v2"].folder, task="token-classification")
    with pytest.raises(CheckpointError, match="BertForTokenClassification"):
        load_model(layouts["dslim/bert-base-NER"].folder, task="sequence-classification")
    with pytest.raises(ValueError, match="task='masked-lm' has none"):
        load_model(bare_encoder.folder, task="masked-lm", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=3 but id2label names 2"):
        load_model(bare_encoder.folder, task="sequence-classification", num_labels=3, id2label=["a", "b"])
    with pytest.raises(ValueError, match="untrained: fine-tune it in float first"):
        load_model(bare_encoder.folder, task="sequence-classification", num_labels=2, quantize="int8")
    # the file's head for its own task still loads with the encoder alone
    assert type(load_model(layouts["dslim/bert-base-NER"].folder, task="base")).__name__ == "BertModel"


# --------------------------------------------------------------------------------------
# config.json's label fields, as transformers reads them

@pytest.mark.parametrize("values", [
    {},  # no labels: 2, LABEL_0 and LABEL_1
    {"num_labels": 3},
    {"id2label": {"0": "neg", "1": "pos"}},
    {"id2label": {"1": "b", "0": "a"}, "label2id": {"a": 0, "b": 1}, "problem_type": "multi_label_classification"},
    {"_num_labels": 5, "id2label": {str(i): f"{i + 1} stars" for i in range(5)}},
])
def test_label_fields_as_transformers_reads_them(tf, values):
    ours = config_from_dict({"model_type": "bert", **values})
    theirs = tf.BertConfig.from_dict({"model_type": "bert", **values})
    assert ours.num_labels == theirs.num_labels
    assert ours.id2label == theirs.id2label
    assert ours.problem_type == theirs.problem_type
    assert ours.label2id == (theirs.label2id or {v: k for k, v in theirs.id2label.items()})
    assert config_from_dict(ours.to_dict()) == ours


@pytest.mark.parametrize("values, message", [
    ({"id2label": {"0": "a", "2": "c"}}, r"id2label's keys must be 0 .. 1"),
    ({"id2label": {"x": "a"}}, r"id2label's keys must be class indices"),
    ({"id2label": {"0": "a"}, "num_labels": 3}, r"num_labels=3 disagrees with id2label, which names 1 classes; "
                                                r"remove one"),
    ({"num_labels": 0}, r"num_labels must be a positive integer"),
    ({"problem_type": "ranking"}, r"problem_type='ranking' is not one of"),
    ({"problem_type": "single_label_classification", "id2label": {"0": "x"}}, r"needs at least 2 labels.*regression"),
])
def test_bad_label_fields_are_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict({"model_type": "bert", **values})


def test_tasks_and_classes():
    assert {"sequence-classification", "token-classification"} <= set(TASKS)
    bert, roberta = EncoderConfig(model_type="bert"), EncoderConfig(model_type="roberta")
    assert model_class(bert, "sequence-classification") is E.BertForSequenceClassification
    assert model_class(bert, "token-classification") is E.BertForTokenClassification
    assert model_class(roberta, "sequence-classification") is E.RobertaForSequenceClassification
    assert model_class(roberta, "token-classification") is E.RobertaForTokenClassification
    assert ARCHITECTURES["xlm-roberta"][1]["token-classification"] is E.RobertaForTokenClassification
    with pytest.raises(ValueError, match="sequence-classification.*does not exist for model_type 'gpt2'"):
        model_class(config_from_dict({"model_type": "gpt2"}), "sequence-classification")
    assert [task_of_architecture(n) for n in ("BertForSequenceClassification", "RobertaForTokenClassification",
                                              "BertForPreTraining", "GPT2LMHeadModel", "BertModel",
                                              "BertForQuestionAnswering", None)] == \
        ["sequence-classification", "token-classification", "masked-lm", "causal-lm", "base", None, None]


def test_dropout_only_in_training(layouts):
    """classifier_dropout (None: hidden_dropout_prob) acts in train() only; eval() is deterministic."""
    case = layouts["cardiffnlp/twitter-roberta-base-sentiment-latest"]
    model = load_model(case.folder, task="sequence-classification")
    assert model.classifier.dropout.p == 0.1
    ids, mask, _ = batch(case.config, seed=7)
    with torch.no_grad():
        first, second = model(ids, mask), model(ids, mask)
        model.train()
        torch.manual_seed(0)
        noisy = model(ids, mask)
    assert torch.equal(first, second) and not torch.allclose(first, noisy)


# --------------------------------------------------------------------------------------
# The fused path and quantize=

@pytest.mark.parametrize("name", ["cross-encoder/ms-marco-MiniLM-L6-v2", "Jean-Baptiste/roberta-large-ner-english"])
def test_fused_equals_reference(layouts, name):
    case = layouts[name]
    model = load_model(case.folder, task=case.task)
    ids, mask, types_ = batch(case.config, seed=8)
    with torch.no_grad():
        reference = model(ids, mask, types_)
        assert_close(f"{name} fused", fuse(model)(ids, mask, types_), reference, tol=1e-5)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_heads(layouts, scheme, tmp_path):
    """quantize= quantizes the classifier with every other Linear and Embedding: the quantized model computes
    what the float model computes with the dequantized weights; the quantized save reloads as it was."""
    case = layouts["cross-encoder/ms-marco-MiniLM-L6-v2"]
    ids, mask, _ = batch(case.config, seed=9)
    model = load_model(case.folder, task=case.task, quantize=scheme)
    assert isinstance(model.classifier, QuantLinear) and isinstance(model.bert.pooler.dense, QuantLinear)
    twin = load_model(case.folder, task=case.task)  # float, then given the quantized values
    quantized = {name: m for name, m in model.named_modules() if hasattr(m, "dequantize")}
    with torch.no_grad():
        reference = twin(ids, mask)
        for name, module in quantized.items():
            twin.get_submodule(name).weight.copy_(module.dequantize())
        with reference_path():  # dequantize, then a float32 product (the kernels round activations to bfloat16)
            assert_close(f"{scheme}: quantized model vs float model with the dequantized weights", model(ids, mask),
                         twin(ids, mask), tol=1e-5)
        logits = model(ids, mask)  # PyTorch's int8/int4 kernels where they apply
        error = ((logits - reference).norm() / reference.norm()).item()
        print(f"\n  {scheme} vs float32 on random weights, relative error of the logits: {error:.2e}")
        out = model.save_pretrained(tmp_path / scheme)
        assert torch.equal(load_model(out, task=case.task)(ids, mask), logits)


def test_loss_from_logits_matches_transformers(layouts):
    """The logits are what transformers' own loss reads: the cross-entropy of both agrees."""
    case = layouts["cardiffnlp/twitter-roberta-base-sentiment-latest"]
    model = load_model(case.folder, task=case.task)
    ids, mask, _ = batch(case.config, seed=10)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        theirs = case.hf(ids, attention_mask=mask, labels=labels).loss
        assert_close("cross-entropy on our logits", F.cross_entropy(model(ids, mask), labels), theirs, tol=1e-5)
