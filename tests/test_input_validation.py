"""Inputs checked once, at the model's entry and at ``generate``'s: a clear error, never a silent result.

Every model the course builds (BERT/RoBERTa base, masked-LM, sequence and token
classification; GPT-2 base and LM head), on chapter 02's layers and after ``fuse()``:
integer ids only, (B, T) only, ids inside the vocabulary, token types inside
``type_vocab_size``, a mask of the ids' shape holding only 0 and 1. Valid inputs give
bit-identical outputs with the checks switched off (they never touch a value), and a
decoding step with a KV cache pays no pass over the values. Also: ``generate``'s
arguments, text that cannot be tokenized, and ``quantize_model`` on a quantized model,
quantized checkpoints with impossible scales, int4 group sizes.
"""

from __future__ import annotations

import json
import warnings
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib import generation, load_model, load_tokenizer
from course_lib.checkpoint import CheckpointError
from course_lib.fused import fuse
from course_lib.generation import check_generation_args, generate
from course_lib.models import encoder as encoder_module
from course_lib.models import gpt2 as gpt2_module
from course_lib.models.encoder import (BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification,
                                       BertModel, EncoderConfig, RobertaForMaskedLM, RobertaForSequenceClassification,
                                       RobertaForTokenClassification, RobertaModel)
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from course_lib.quantization import (CompoundedQuantizationWarning, QuantLinear, TiedQuantHead, group_size_advice,
                                     quantize_model)
from course_lib.tokenizer_loading import check_text, encode_batch
from helpers import randomize_

VOCAB = 53


def encoder_config(model_type: str = "bert", **overrides) -> EncoderConfig:
    values = {"model_type": model_type, "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 24,
              "type_vocab_size": 1 if model_type == "roberta" else 2, "pad_token_id": 1 if model_type == "roberta"
              else 0, "num_labels": 3, **overrides}
    return EncoderConfig.from_dict(values)


def gpt2_config(**overrides) -> GPT2Config:
    return GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": 24, "n_embd": 16,
                                 "n_layer": 1, "n_head": 2, "bos_token_id": 0, "eos_token_id": 0, **overrides})


ENCODERS = {"bert": BertModel, "roberta": RobertaModel, "bert-mlm": BertForMaskedLM, "roberta-mlm": RobertaForMaskedLM,
            "bert-seq": BertForSequenceClassification, "roberta-seq": RobertaForSequenceClassification,
            "bert-tok": BertForTokenClassification, "roberta-tok": RobertaForTokenClassification}
DECODERS = {"gpt2": GPT2Model, "gpt2-lm": GPT2LMHeadModel}


def build(kind: str, fused: bool):
    torch.manual_seed(0)
    if kind in DECODERS:
        model = DECODERS[kind](gpt2_config())
    else:
        model = ENCODERS[kind](encoder_config(kind.split("-")[0]))
    model = randomize_(model, seed=1)
    return fuse(model) if fused else model


@pytest.fixture(scope="module", params=[(kind, fused) for kind in [*ENCODERS, *DECODERS] for fused in (False, True)],
                ids=lambda p: f"{p[0]}{'-fused' if p[1] else ''}")
def any_model(request):
    return build(*request.param)


IDS = torch.tensor([[2, 5, 7, 9], [3, 4, 8, 1]])
MASK = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])


# ---------------------------------------------------------------------------- every model, fused or not

@pytest.mark.parametrize("bad, error, words", [
    (IDS.float(), TypeError, "got dtype torch.float32: ids are whole numbers: convert with \\.long\\(\\)"),
    (IDS.bool(), TypeError, "got dtype torch.bool: a bool tensor is a mask"),
    (IDS.to(torch.int16), TypeError, "got dtype torch.int16: convert with \\.long\\(\\)"),
    (IDS[0], ValueError, "input_ids has shape \\(4,\\): one sequence without a batch dimension.*input_ids\\[None\\]"),
    (IDS[None], ValueError, "must be 2-D \\(batch, tokens\\), got shape \\(1, 2, 4\\)"),
    (IDS.tolist(), TypeError, "input_ids must be a torch.Tensor.*got list"),
    (torch.tensor([[2, -1, 7]]), ValueError, "input_ids\\[0, 1\\] = -1 is outside \\[0, 53\\).*start at 0"),
    (torch.tensor([[2, 5], [7, VOCAB]]), ValueError, "input_ids\\[1, 1\\] = 53 is outside \\[0, 53\\).*own tokenizer"),
], ids=["float", "bool", "int16", "1-D", "3-D", "list", "negative", "too-large"])
def test_bad_ids_are_refused_by_every_model(any_model, bad, error, words):
    with pytest.raises(error, match=words):
        any_model(bad)


@pytest.mark.parametrize("mask, words", [
    (torch.ones(2, 4, dtype=torch.long)[:1].expand(3, 4), "attention_mask has batch 3, input_ids batch 2"),
    (torch.ones(2, 3, dtype=torch.long), "attention_mask covers 3 tokens, input_ids has 4"),
    (torch.ones(8, dtype=torch.long), "attention_mask must be 2-D"),
    (torch.tensor([[1, 1, 2, 1], [1, 1, 1, 1]]), "attention_mask\\[0, 2\\] = 2: a mask holds 1 for a token and 0"),
    (torch.tensor([[1.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), "attention_mask\\[0, 1\\] = 0.5"),
    (torch.tensor([[1, 1, 1, 1], [-1, 1, 1, 1]]), "attention_mask\\[1, 0\\] = -1"),
], ids=["batch", "length", "1-D", "two", "half", "negative"])
def test_bad_masks_are_refused_by_every_model(any_model, mask, words):
    with pytest.raises(ValueError, match=words):
        any_model(IDS, mask)


def test_a_batch_of_one_never_broadcasts_into_two(any_model):
    """The silent case of the issue: ids (1, T) with a mask (2, T) gave a batch-2 output."""
    with pytest.raises(ValueError, match="attention_mask has batch 2, input_ids batch 1"):
        any_model(IDS[:1], torch.ones(2, 4, dtype=torch.long))


def unchecked():
    """The models and generate_ids with every input check replaced by a no-op."""
    nothing = lambda *args, **kwargs: None  # noqa: E731
    return mock.patch.multiple(encoder_module, check_encoder_inputs=nothing), \
        mock.patch.multiple(gpt2_module.GPT2Model, check_inputs=nothing), \
        mock.patch.multiple(generation, check_generate_inputs=nothing)


def test_valid_inputs_give_identical_outputs_with_the_checks_off(any_model):
    """The checks read the inputs and never change them: bit-identical results, whatever the mask's dtype."""
    with torch.no_grad():
        checked = [any_model(IDS), any_model(IDS, MASK), any_model(IDS, MASK.bool()), any_model(IDS, MASK.float()),
                   any_model(IDS.int(), MASK)]
        a, b, c = unchecked()
        with a, b, c:
            plain = [any_model(IDS), any_model(IDS, MASK), any_model(IDS, MASK), any_model(IDS, MASK),
                     any_model(IDS, MASK)]
    for mine, reference in zip(checked, plain):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("fused", [False, True])
def test_negative_ids_no_longer_read_the_last_row(fused):
    """Before, chapter 02's Embedding indexed with -1 and returned the last row's vector."""
    model = build("gpt2-lm", fused)
    with pytest.raises(ValueError, match="= -1 is outside"):
        model(torch.tensor([[4, -1]]))
    with pytest.raises(ValueError, match="= -1 is outside"):
        model(torch.tensor([[-1]]))  # one token, no cache: checked in full


# ---------------------------------------------------------------------------- encoder-only inputs

@pytest.mark.parametrize("kind", ["bert", "bert-seq", "bert-tok", "bert-mlm"])
def test_token_type_ids_are_checked(kind):
    model = build(kind, fused=False)
    with pytest.raises(ValueError, match="token_type_ids\\[0, 1\\] = -1 is outside \\[0, 2\\)"):
        model(IDS, token_type_ids=torch.tensor([[0, -1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="token_type_ids\\[1, 3\\] = 2 is outside \\[0, 2\\).*type_ids"):
        model(IDS, token_type_ids=torch.tensor([[0, 0, 1, 1], [0, 0, 1, 2]]))
    with pytest.raises(ValueError, match="token_type_ids has shape \\(1, 4\\), input_ids \\(2, 4\\)"):
        model(IDS, token_type_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="token_type_ids must hold integer indices"):
        model(IDS, token_type_ids=torch.zeros(2, 4))
    with torch.no_grad():
        assert torch.equal(model(IDS, token_type_ids=torch.zeros_like(IDS)), model(IDS))


def test_roberta_has_one_token_type():
    with pytest.raises(ValueError, match="type_vocab_size=1.*leave token_type_ids out"):
        build("roberta", fused=True)(IDS, token_type_ids=torch.ones_like(IDS))


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_position_ids_are_checked(kind):
    model = build(kind, fused=False)
    with pytest.raises(ValueError, match="position_ids\\[0, 3\\] = 24 is outside \\[0, 24\\)"):
        model(IDS, position_ids=torch.tensor([[0, 1, 2, 24]]))
    with pytest.raises(ValueError, match="position_ids has shape \\(1, 3\\), input_ids \\(2, 4\\)"):
        model(IDS, position_ids=torch.tensor([[0, 1, 2]]))
    with torch.no_grad():
        assert torch.equal(model(IDS, position_ids=torch.arange(4)[None]), model(IDS))


# ---------------------------------------------------------------------------- GPT-2: cheap while decoding

def count_aminmax(monkeypatch) -> list:
    calls = []
    real = torch.aminmax

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "aminmax", counting)
    return calls


@pytest.mark.parametrize("with_mask", [False, True])
def test_decoding_steps_make_no_pass_over_the_values(monkeypatch, with_mask):
    """The range checks run at generate's entry and on the prompt, never on a one-token step with a cache."""
    model = build("gpt2-lm", fused=True)
    mask = torch.ones(2, 4, dtype=torch.long) if with_mask else None
    calls = count_aminmax(monkeypatch)
    model.generate(IDS, 3, eos_token_id=[], attention_mask=mask)
    few = len(calls)
    model.generate(IDS, 12, eos_token_id=[], attention_mask=mask)
    assert len(calls) - few == few  # the same number for 12 new tokens as for 3
    assert all(shape[-1] == 4 for shape in calls)  # only the prompt's (B, 4) ids and mask were read


def test_a_decoding_step_still_gets_the_free_checks():
    model = build("gpt2-lm", fused=False)
    cache = generation.KVCache(1)
    with torch.no_grad():
        model(IDS[:1], kv_cache=cache)
        with pytest.raises(TypeError, match="got dtype torch.float32"):
            model(torch.tensor([[3.0]]), kv_cache=cache)
        with pytest.raises(ValueError, match="shape \\(1,\\).*input_ids\\[None\\]"):
            model(torch.tensor([3]), kv_cache=cache)
        with pytest.raises(ValueError, match="attention_mask covers 4 tokens, but there are 4 cached \\+ 1 new"):
            model(torch.tensor([[3]]), torch.ones(1, 4, dtype=torch.long), kv_cache=cache)


def test_generate_checks_the_prompt_once(monkeypatch):
    model = build("gpt2-lm", fused=False)
    with pytest.raises(ValueError, match="input_ids\\[0, 0\\] = -5 is outside"):
        model.generate(torch.tensor([[-5]]), 3)  # a one-token prompt with a cache: generate_ids checks it
    with pytest.raises(ValueError, match="attention_mask\\[0, 0\\] = 2"):
        model.generate(IDS, 3, attention_mask=torch.tensor([[2, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="attention_mask has batch 1, input_ids batch 2"):
        model.generate(IDS, 3, attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_generated_tokens_are_identical_with_the_checks_off():
    model = build("gpt2-lm", fused=True)
    runs = lambda: [model.generate(IDS, 8, eos_token_id=[], attention_mask=MASK),  # noqa: E731
                    model.generate(IDS, 8, eos_token_id=[], seed=3, top_k=5, top_p=0.9),
                    model.generate(IDS[:1], 8, eos_token_id=[], use_cache=False)]
    checked = runs()
    a, b, c = unchecked()
    with a, b, c:
        plain = runs()
    assert all(torch.equal(x, y) for x, y in zip(checked, plain))


# ---------------------------------------------------------------------------- generate's arguments

@pytest.mark.parametrize("kwargs, error, words", [
    ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be a whole number, got 2.5 \\(float\\)"),
    ({"max_new_tokens": "5"}, TypeError, "max_new_tokens must be a whole number, got '5' \\(str\\)"),
    ({"max_new_tokens": None}, TypeError, "max_new_tokens must be a whole number, got None"),
    ({"max_new_tokens": True}, TypeError, "max_new_tokens must be a whole number, got True"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be >= 0, got -1"),
    ({"temperature": float("nan")}, ValueError, "temperature must be a finite number, got nan"),
    ({"temperature": float("inf")}, ValueError, "temperature must be a finite number, got inf"),
    ({"temperature": -0.5}, ValueError, "temperature must be >= 0"),
    ({"temperature": "0.7"}, TypeError, "temperature must be a number, got '0.7'"),
    ({"top_k": 0}, ValueError, "top_k must be at least 1, got 0"),
    ({"top_k": 2.0}, TypeError, "top_k must be a whole number, got 2.0"),
    ({"top_p": 0.0}, ValueError, "top_p must be in \\(0, 1\\], got 0.0"),
    ({"top_p": 1.5}, ValueError, "top_p must be in \\(0, 1\\], got 1.5"),
    ({"top_p": float("nan")}, ValueError, "top_p must be a finite number"),
    ({"min_p": -0.1}, ValueError, "min_p must be in \\[0, 1\\]"),
    ({"repetition_penalty": 0}, ValueError, "repetition_penalty must be > 0"),
    ({"seed": 2 ** 70}, ValueError, "seed=1180591620717411303424 is outside.*-2\\*\\*63 .. 2\\*\\*64 - 1.*% 2\\*\\*64"),
    ({"seed": 2 ** 64}, ValueError, "is outside the range a torch.Generator takes"),
    ({"seed": "7"}, TypeError, "seed must be a whole number, got '7'"),
    ({"seed": 1.5}, TypeError, "seed must be a whole number"),
    ({"eos_token_id": "0"}, TypeError, "eos_token_id must be a whole number"),
])
def test_bad_generation_arguments_are_refused(kwargs, error, words):
    model = build("gpt2-lm", fused=False)
    with pytest.raises(error, match=words):
        model.generate(IDS, **{"max_new_tokens": 3, **kwargs})
    with pytest.raises(error, match=words):
        check_generation_args(**{"max_new_tokens": 3, **kwargs})


def test_edge_values_and_numpy_integers_are_accepted():
    np = pytest.importorskip("numpy")
    model = build("gpt2-lm", fused=False)
    for seed in (2 ** 64 - 1, -2 ** 63, np.int64(5)):
        assert model.generate(IDS, 2, seed=seed, eos_token_id=[]).shape == (2, 6)
    assert torch.equal(model.generate(IDS, np.int32(4), top_k=np.int64(3), seed=1, eos_token_id=[]),
                       model.generate(IDS, 4, top_k=3, seed=1, eos_token_id=[]))
    assert model.generate(IDS, 0).shape == (2, 4)
    assert torch.equal(model.generate(IDS, 3, temperature=0), model.generate(IDS, 3))


@pytest.mark.parametrize("kind, words", [
    ("bert", "BertModel is an encoder \\(model_type 'bert'\\).*no next-token head.*tiny-gpt2"),
    ("roberta-mlm", "RobertaForMaskedLM is an encoder.*task='masked-lm'"),
    ("bert-seq", "BertForSequenceClassification is an encoder"),
    ("gpt2", "GPT2Model is GPT-2 without its LM head.*task='causal-lm'"),
])
def test_generate_on_a_model_without_an_lm_head(kind, words):
    model = build(kind, fused=False)
    with pytest.raises(TypeError, match="generate needs a causal language model.*" + words):
        generation.generate_ids(model, IDS, 3)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2"), load_tokenizer("tiny-gpt2")


def test_text_generate_refuses_clearly(tiny):
    model, tok = tiny
    with pytest.raises(TypeError, match="generate needs a causal language model.*BertModel is an encoder"):
        generate(build("bert", fused=False), tok, "Hello")
    with pytest.raises(TypeError, match="generate needs a model \\(torch.nn.Module\\) first, got Tokenizer"):
        generate(tok, model, "Hello")
    with pytest.raises(TypeError, match="tokenizer must be a tokenizers.Tokenizer.*got NoneType"):
        generate(model, None, "Hello")
    with pytest.raises(TypeError, match="prompt must be a str, got list"):
        generate(model, tok, ["Hello"])
    with pytest.raises(ValueError, match="prompt has a lone surrogate '\\\\ud800' at position 6"):
        generate(model, tok, "Hello \ud800 there")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, tok, "Hello", max_new_tokens=-2)
    assert generate(model, tok, "The for statement", 6) == generate(model, tok, "The for statement", 6)


def test_encode_batch_refuses_what_is_not_text(tiny):
    _, tok = tiny
    with pytest.raises(TypeError, match="texts must be a string or a list of strings, got NoneType"):
        encode_batch(tok, None)
    with pytest.raises(TypeError, match="texts must be a string or a list of strings, got bytes"):
        encode_batch(tok, b"bytes")
    with pytest.raises(TypeError, match="texts\\[1\\] must be a str, got int \\(5\\)"):
        encode_batch(tok, ["one", 5])
    with pytest.raises(TypeError, match="texts\\[0\\] must be a str, got NoneType"):
        encode_batch(tok, [None])
    with pytest.raises(ValueError, match="texts is an empty list"):
        encode_batch(tok, [])
    with pytest.raises(ValueError, match="texts\\[1\\] has a lone surrogate '\\\\udc80' at position 2"):
        encode_batch(tok, ["fine", "ab\udc80"], pad_token="<|endoftext|>")
    ragged = encode_batch(tok, ("one", "one two"), pad_token="<|endoftext|>", return_tensors=None)  # a tuple
    assert ragged == encode_batch(tok, iter(["one", "one two"]), pad_token="<|endoftext|>", return_tensors=None)


def test_check_text_accepts_every_real_character():
    text = "naïve café – 漢字 🙂 \U0010ffff"
    assert check_text(text) is text
    with pytest.raises(ValueError, match="lone surrogate '\\\\udfff' at position 0.*surrogatepass"):
        check_text("\udfff")


# ---------------------------------------------------------------------------- quantize_model on a quantized model

@pytest.fixture(scope="module")
def heldout():
    return torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))


def test_int8_model_quantized_to_int4_is_converted_and_reloads(tmp_path, heldout):
    float_model = load_model("tiny-gpt2")
    model = load_model("tiny-gpt2", quantize="int8")
    with pytest.warns(CompoundedQuantizationWarning, match="already quantized .*int8.*dequantized and quantized "
                                                           "again as int4-g32.*compounded.*quantize='int4-g32'"):
        assert quantize_model(model, "int4") is model
    schemes = {str(m.scheme) for m in model.modules() if hasattr(m, "scheme")}
    assert schemes == {"int4-g32"} and str(model.quantization) == "int4-g32"  # no layer left behind as int8
    assert isinstance(model.lm_head, TiedQuantHead) and model.lm_head.table is model.transformer.wte
    direct = load_model("tiny-gpt2", quantize="int4")
    with torch.no_grad():
        exact, converted, once = float_model(heldout), model(heldout), direct(heldout)
    # twice rounded is a little worse than once, and far from garbage
    assert (converted.argmax(-1) == exact.argmax(-1)).float().mean() > 0.8
    assert (converted - exact).norm() < 1.5 * (once - exact).norm()
    folder = model.save_pretrained(tmp_path / "q")
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["scheme"] == "int4-g32"
    reloaded = load_model(folder)
    with torch.no_grad():
        assert torch.equal(reloaded(heldout), converted)


def test_the_same_scheme_again_changes_nothing(heldout):
    model = load_model("tiny-gpt2", quantize="int8")
    layer = model.transformer.h[0].attn.c_attn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(model, "int8")
    assert model.transformer.h[0].attn.c_attn is layer


def test_int4_to_int8_and_a_conflicting_skip(heldout):
    model = load_model("tiny-gpt2", quantize="int4")
    with pytest.raises(ValueError, match="transformer.h.0.mlp.c_fc is quantized as int4-g32 and skip= would leave "
                                         "it so"):
        quantize_model(model, "int8", skip=("transformer.h.0.mlp.c_fc",))
    with pytest.warns(CompoundedQuantizationWarning):
        quantize_model(model, "int8")
    assert {str(m.scheme) for m in model.modules() if hasattr(m, "scheme")} == {"int8"}
    with torch.no_grad():
        assert torch.isfinite(model(heldout)).all()


def test_an_int4_width_the_group_does_not_divide_gets_sizes_that_do():
    message = group_size_advice(40, 32)
    assert "e.g. 10, 20 or 40" in message and "e.g. 32" not in message
    assert all(40 % int(g) == 0 for g in ("10", "20", "40"))
    model = GPT2LMHeadModel(gpt2_config(n_embd=40, n_head=2)).eval()
    with pytest.raises(ValueError, match="cannot quantize transformer.wte as int4-g32: rows of 40 values cannot be cut "
                                         "into groups of 32: use a group size that divides 40, e.g. 10, 20 or 40"):
        quantize_model(model, "int4")
    quantize_model(model, "int4-g20")  # what the message suggests works
    with pytest.raises(ValueError, match="divides 96, e.g. 32, 48 or 96 \\(scheme 'int4-g32'; PyTorch's int4 kernel "
                                         "takes 32\\)"):
        QuantLinear(96, 8, scheme="int4-g64")
    assert "no even group size divides 7" in group_size_advice(7, 32)


# ---------------------------------------------------------------------------- quantized checkpoints: scales checked

@pytest.fixture(scope="module")
def int4_folder(tmp_path_factory):
    return load_model("tiny-gpt2", quantize="int4").save_pretrained(tmp_path_factory.mktemp("q") / "int4")


@pytest.mark.parametrize("key, value, words", [
    ("transformer.h.0.attn.c_attn.weight_scale", float("nan"), "weight_scale\\[0, 3\\] = nan: a scale must be"),
    ("transformer.h.0.mlp.c_fc.weight_scale", float("inf"), "c_fc.weight_scale\\[0, 3\\] = inf"),
    ("transformer.wte.weight_scale", 0.0, "transformer.wte.weight_scale\\[0, 3\\] = 0.0: a scale must be a finite"),
    ("transformer.h.0.mlp.c_proj.weight_scale", -0.5, "c_proj.weight_scale\\[0, 3\\] = -0.5"),
    ("transformer.h.0.attn.c_attn.weight_zero_point", 16, "weight_zero_point\\[0, 3\\] = 16: an int4 zero point is "
                                                          "a level 0..15"),
])
def test_impossible_scales_and_zero_points_are_refused_on_load(int4_folder, tmp_path, key, value, words):
    folder = tmp_path / "bad"
    folder.mkdir()
    for f in int4_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tensors = load_file(int4_folder / "model.safetensors")
    broken = tensors[key].clone()
    broken.view(-1)[3] = value
    save_file({**tensors, key: broken}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=words + ".*quantize the float checkpoint again"):
        load_model(folder)
    model = load_model(int4_folder)
    state = model.state_dict()
    state[key] = broken
    with pytest.raises(CheckpointError, match="load_state_dict: tensor .*" + words):
        model.load_state_dict(state)


def test_int8_per_tensor_scale_is_checked(tmp_path):
    folder = load_model("tiny-gpt2", quantize="int8-tensor").save_pretrained(tmp_path / "q")
    tensors = load_file(folder / "model.safetensors")
    key = "transformer.h.0.mlp.c_fc.weight_scale"
    save_file({**tensors, key: torch.tensor(float("nan"), dtype=tensors[key].dtype)}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="tensor transformer.h.0.mlp.c_fc.weight_scale = nan"):
        load_model(folder)


def test_traced_compiled_and_meta_models_read_no_values():
    """A value read in Python would be baked into a trace or break a full-graph compilation: those skip it."""
    model = build("gpt2-lm", fused=True)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(IDS, MASK), model(IDS, MASK))
    with torch.device("meta"):
        shapes_only = GPT2LMHeadModel(gpt2_config())
        assert shapes_only(IDS.to("meta"), MASK.to("meta")).shape == (2, 4, VOCAB)
    with pytest.raises(TypeError, match="got dtype torch.float32"):  # metadata is still checked there
        shapes_only(IDS.float().to("meta"))
