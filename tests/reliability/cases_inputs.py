"""Model inputs, ``generate``'s arguments, text for the tokenizer, quantization: wrong ones get a clear error.

The models are tiny (built here with random weights, a few milliseconds each) except where a
case needs the course's shipped tiny GPT-2 (``tiny-gpt2``, offline): quantized checkpoints
and the command line.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from unittest import mock

from . import Case

AREA = "model inputs, generation and quantization"
VOCAB = 50


@functools.cache
def _gpt2(fused: bool = False):
    import torch

    from course_lib.fused import fuse
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": 16, "n_embd": 16,
                                   "n_layer": 1, "n_head": 2, "bos_token_id": 0, "eos_token_id": 0})
    model = GPT2LMHeadModel(config).eval()
    return fuse(model) if fused else model


@functools.cache
def _encoder(kind: str = "bert"):
    import torch

    from course_lib.models import EncoderConfig, model_class

    torch.manual_seed(0)
    task = "base"
    if kind.endswith("-mlm"):
        kind, task = kind[:-4], "masked-lm"
    config = EncoderConfig.from_dict({"model_type": kind, "vocab_size": VOCAB, "hidden_size": 16,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                                      "max_position_embeddings": 16, "type_vocab_size": 1 if kind == "roberta" else 2,
                                      "pad_token_id": 1 if kind == "roberta" else 0})
    return model_class(config, task)(config).eval()


def _ids(*rows):
    import torch

    return torch.tensor(rows or [[2, 3, 4, 5]])


def _call(model, *args, **kwargs):
    import torch

    with torch.no_grad():
        return model(*args, **kwargs)


# ---------------------------------------------------------------------------- model inputs

def negative_id(tmp_path: Path):
    _call(_gpt2(), _ids([2, -1, 4]))  # used to read the embedding table's last row


def negative_id_fused(tmp_path: Path):
    _call(_gpt2(fused=True), _ids([2, -1, 4]))  # used to be an IndexError from inside torch


def id_beyond_the_vocabulary(tmp_path: Path):
    _call(_encoder("bert"), _ids([2, 3, VOCAB + 7]))


def float_ids(tmp_path: Path):
    _call(_encoder("roberta"), _ids([2, 3, 4]).float())


def bool_ids(tmp_path: Path):
    _call(_gpt2(), _ids([1, 0, 1]).bool())


def ids_without_a_batch_dimension(tmp_path: Path):
    _call(_gpt2(fused=True), _ids([2, 3, 4])[0])


def ids_as_a_python_list(tmp_path: Path):
    _call(_encoder("bert-mlm"), [[2, 3, 4]])


def token_type_minus_one(tmp_path: Path):
    import torch

    _call(_encoder("bert"), _ids([2, 3, 4]), token_type_ids=torch.tensor([[0, -1, 0]]))


def roberta_token_type_one(tmp_path: Path):
    import torch

    _call(_encoder("roberta"), _ids([2, 3, 4]), token_type_ids=torch.tensor([[0, 1, 1]]))


def mask_of_another_batch(tmp_path: Path):
    import torch

    _call(_gpt2(), _ids([2, 3, 4]), torch.ones(2, 3, dtype=torch.long))  # used to broadcast to a batch of 2


def mask_of_another_batch_encoder(tmp_path: Path):
    import torch

    _call(_encoder("roberta"), _ids([2, 3, 4]), torch.ones(2, 3, dtype=torch.long))


def mask_with_a_two(tmp_path: Path):
    import torch

    _call(_gpt2(), _ids([2, 3, 4]), torch.tensor([[1, 2, 1]]))  # used to shift GPT-2's positions silently


def mask_with_a_half(tmp_path: Path):
    import torch

    _call(_gpt2(fused=True), _ids([2, 3, 4]), torch.tensor([[1.0, 0.5, 1.0]]))


def mask_too_short(tmp_path: Path):
    import torch

    _call(_encoder("bert"), _ids([2, 3, 4]), torch.ones(1, 2, dtype=torch.long))


# ---------------------------------------------------------------------------- generate's arguments

def _generate(**kwargs):
    _gpt2().generate(_ids([2, 3]), **{"max_new_tokens": 3, **kwargs})


def _tokenizer():
    from course_lib import load_tokenizer

    return load_tokenizer("tiny-gpt2")


def _text_generate(model=None, prompt="Hello", **kwargs):
    """``generate(model, tiny-gpt2's tokenizer, prompt)``; the model defaults to a tiny random GPT-2."""
    from course_lib import generate

    generate(model if model is not None else _gpt2(), _tokenizer(), prompt, **kwargs)


CASES = [
    Case("inputs-negative-id", AREA, negative_id, ValueError,
         ("input_ids[0, 1] = -1", "outside [0, 50)", "vocab_size=50", "start at 0", "pad token", "attention_mask"),
         problem="a negative id (`-1`, `-100`) in `input_ids`",
         fix="put the pad token's id there and 0 in `attention_mask` (`-100` belongs in labels only)", readme=True),
    Case("inputs-negative-id-fused", AREA, negative_id_fused, ValueError, ("input_ids[0, 1] = -1", "outside")),
    Case("inputs-id-beyond-vocabulary", AREA, id_beyond_the_vocabulary, ValueError,
         ("input_ids[0, 2] = 57", "outside [0, 50)", "another tokenizer", "load_tokenizer"),
         problem="ids from another model's tokenizer (an id >= the model's `vocab_size`)",
         fix="encode with the model's own tokenizer: `load_tokenizer(src)` with the same `src` as `load_model`",
         readme=True),
    Case("inputs-float-ids", AREA, float_ids, TypeError, ("input_ids", "torch.float32", ".long()"),
         problem="`input_ids` of dtype float (or bool)", fix="ids are whole numbers: `ids.long()`", readme=True),
    Case("inputs-bool-ids", AREA, bool_ids, TypeError, ("input_ids", "torch.bool", "mask, not ids")),
    Case("inputs-ids-1d", AREA, ids_without_a_batch_dimension, ValueError,
         ("input_ids has shape (3,)", "batch dimension", "input_ids[None]"),
         problem="`input_ids` of shape `(T,)`: one sequence without a batch dimension",
         fix="add one: `model(ids[None])` (or `ids.unsqueeze(0)`)", readme=True),
    Case("inputs-ids-list", AREA, ids_as_a_python_list, TypeError, ("input_ids", "torch.tensor", "got list")),
    Case("inputs-token-type-minus-one", AREA, token_type_minus_one, ValueError,
         ("token_type_ids[0, 1] = -1", "type_vocab_size=2", "type_ids")),
    Case("inputs-token-type-roberta", AREA, roberta_token_type_one, ValueError,
         ("token_type_ids[0, 1] = 1", "type_vocab_size=1", "leave token_type_ids out")),
    Case("inputs-mask-batch-2-ids-batch-1", AREA, mask_of_another_batch, ValueError,
         ("attention_mask has batch 2", "input_ids batch 1", "broadcast", "encode_batch"),
         problem="an `attention_mask` whose batch differs from the ids' (2 masks for 1 sequence)",
         fix="pass the mask `encode_batch` returned together with these ids", readme=True),
    Case("inputs-mask-batch-encoder", AREA, mask_of_another_batch_encoder, ValueError,
         ("attention_mask has batch 2", "input_ids batch 1")),
    Case("inputs-mask-value-two", AREA, mask_with_a_two, ValueError,
         ("attention_mask[0, 1] = 2", "1 for a token and 0 for padding", "(mask != 0).long()"),
         problem="an `attention_mask` holding values other than 0 and 1 (2, 0.5)",
         fix="1 = token, 0 = padding: `(mask != 0).long()`", readme=True),
    Case("inputs-mask-value-half", AREA, mask_with_a_half, ValueError, ("attention_mask[0, 1] = 0.5", "0 for padding")),
    Case("inputs-mask-too-short", AREA, mask_too_short, ValueError,
         ("attention_mask covers 2 tokens", "input_ids has 3")),

    # generate
    Case("inputs-generate-max-new-tokens-float", AREA, lambda p: _generate(max_new_tokens=2.5), TypeError,
         ("max_new_tokens", "whole number", "2.5"),
         problem="`max_new_tokens=2.5`, `\"5\"` or `None`", fix="pass an int >= 0, e.g. `max_new_tokens=20`",
         readme=True),
    Case("inputs-generate-max-new-tokens-str", AREA, lambda p: _generate(max_new_tokens="5"), TypeError,
         ("max_new_tokens", "'5'", "(str)")),
    Case("inputs-generate-max-new-tokens-none", AREA, lambda p: _generate(max_new_tokens=None), TypeError,
         ("max_new_tokens", "None")),
    Case("inputs-generate-temperature-nan", AREA, lambda p: _generate(temperature=float("nan")), ValueError,
         ("temperature", "finite", "nan", "0 = greedy")),
    Case("inputs-generate-temperature-negative", AREA, lambda p: _generate(temperature=-1.0), ValueError,
         ("temperature must be >= 0",)),
    Case("inputs-generate-top-k-zero", AREA, lambda p: _generate(top_k=0), ValueError, ("top_k", "at least 1")),
    Case("inputs-generate-top-p-zero", AREA, lambda p: _generate(top_p=0.0), ValueError, ("top_p", "(0, 1]")),
    Case("inputs-generate-min-p-above-one", AREA, lambda p: _generate(min_p=1.5), ValueError, ("min_p", "[0, 1]")),
    Case("inputs-generate-seed-2-70", AREA, lambda p: _generate(seed=2 ** 70), ValueError,
         ("seed=1180591620717411303424", "-2**63 .. 2**64 - 1", "seed % 2**64"),
         problem="`seed=2**70` (larger than a `torch.Generator` takes)",
         fix="a seed in `-2**63 .. 2**64 - 1`; `seed % 2**64` keeps a big one repeatable", readme=True),
    Case("inputs-generate-on-an-encoder", AREA, lambda p: _text_generate(model=_encoder("bert")), TypeError,
         ("generate needs a causal language model", "BertModel is an encoder", "tiny-gpt2", "task='masked-lm'"),
         problem="`generate(model, ...)` with a BERT/RoBERTa encoder",
         fix="generate with a decoder (`tiny-gpt2`, `gpt2`); to fill in a masked word load the encoder with "
             "`task='masked-lm'`", readme=True),
    Case("inputs-generate-on-gpt2-without-head", AREA, lambda p: _text_generate(model=_gpt2().transformer),
         TypeError, ("GPT2Model is GPT-2 without its LM head", "task='causal-lm'")),
    Case("inputs-generate-tokenizer-first", AREA, lambda p: _text_generate(model=_tokenizer()), TypeError,
         ("generate needs a model", "got Tokenizer", "generate(model, tokenizer, prompt)")),
    Case("inputs-prompt-lone-surrogate", AREA, lambda p: _text_generate(prompt="Hi \ud800!"), ValueError,
         ("prompt", "lone surrogate", "position 3", "surrogatepass"),
         problem='a prompt with a lone surrogate such as `"\\ud800"` (half of a UTF-16 pair, e.g. from a broken '
                 'JSON escape)',
         fix="repair the text (`text.encode('utf-16', 'surrogatepass').decode('utf-16')`) or drop the character",
         readme=True),
    Case("inputs-prompt-not-a-string", AREA, lambda p: _text_generate(prompt=[1, 2]), TypeError,
         ("prompt must be a str", "got list", "model.generate")),
]


# ---------------------------------------------------------------------------- tokenizer input

def _encode_batch(texts, **kwargs):
    from course_lib import encode_batch, load_tokenizer

    encode_batch(load_tokenizer("tiny-gpt2"), texts, **kwargs)


CASES += [
    Case("inputs-encode-batch-none", AREA, lambda p: _encode_batch(None), TypeError,
         ("texts must be a string or a list of strings", "NoneType"),
         problem="`encode_batch(tok, None)` (or a number, bytes, a dict)",
         fix="pass a string or a list of strings", readme=True),
    Case("inputs-encode-batch-not-a-string", AREA, lambda p: _encode_batch(["one", 2]), TypeError,
         ("texts[1] must be a str", "got int")),
    Case("inputs-encode-batch-empty", AREA, lambda p: _encode_batch([]), ValueError, ("empty list", "at least one")),
    Case("inputs-encode-batch-lone-surrogate", AREA,
         lambda p: _encode_batch(["fine", "x\udc80"], pad_token="<|endoftext|>"), ValueError,
         ("texts[1]", "lone surrogate", "position 1")),
]


# ---------------------------------------------------------------------------- quantization

def quantize_an_int8_model_as_int4(tmp_path: Path):
    from course_lib import load_model, quantize_model

    model = quantize_model(load_model("tiny-gpt2", quantize="int8"), "int4")  # warns, converts
    load_model(model.save_pretrained(tmp_path / "int4"))  # and the folder reloads


def skip_leaves_another_scheme(tmp_path: Path):
    from course_lib import load_model, quantize_model

    quantize_model(load_model("tiny-gpt2", quantize="int8"), "int4", skip=("transformer.h.0",))


def int4_on_width_40(tmp_path: Path):
    from course_lib import quantize_model
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    config = GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": 8, "n_embd": 40,
                                   "n_layer": 1, "n_head": 2})
    quantize_model(GPT2LMHeadModel(config), "int4")


def _broken_quantized_checkpoint(tmp_path: Path, key: str, value) -> None:
    """tiny-gpt2 quantized as int4 and saved, with one value of ``key`` replaced; then loaded."""
    from safetensors.torch import load_file, save_file

    from course_lib import load_model

    folder = load_model("tiny-gpt2", quantize="int4").save_pretrained(tmp_path / "tiny-gpt2-int4")
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["scheme"] == "int4-g32"
    tensors = load_file(folder / "model.safetensors")
    changed = tensors[key].clone()
    changed.view(-1)[5] = value  # [1, 1] of a scale with 4 groups per row, [0, 5] of a wider one
    save_file({**tensors, key: changed}, folder / "model.safetensors", metadata={"format": "pt"})
    load_model(folder)


def _scale(value, key="transformer.h.0.attn.c_attn.weight_scale"):
    return lambda tmp_path: _broken_quantized_checkpoint(tmp_path, key, value)


def _checkpoint_error():
    from course_lib.checkpoint import CheckpointError

    return CheckpointError


def _compounded():
    from course_lib.quantization import CompoundedQuantizationWarning

    return CompoundedQuantizationWarning


CASES += [
    Case("inputs-quantize-int8-model-as-int4", AREA, quantize_an_int8_model_as_int4, None,
         ("already quantized", "int8", "dequantized and quantized again as int4-g32", "compounded",
          "load_model(src, quantize='int4-g32')"),
         problem="`quantize_model(int8_model, \"int4\")` (quantizing a quantized model)",
         fix="it converts, with a warning (two rounding errors add up); for less error quantize the float "
             "checkpoint: `load_model(src, quantize=\"int4\")`",
         warns=_compounded(), readme=True),
    Case("inputs-quantize-skip-keeps-another-scheme", AREA, skip_leaves_another_scheme, ValueError,
         ("transformer.h.0.attn.c_attn is quantized as int8", "skip=", "one scheme")),
    Case("inputs-int4-width-40", AREA, int4_on_width_40, ValueError,
         ("cannot quantize transformer.wte as int4-g32", "rows of 40 values", "divides 40", "e.g. 10, 20 or 40",
          "int4-g40", "skip="),
         problem="`quantize=\"int4\"` on a model whose width the group size (32) does not divide, e.g. 40",
         fix="use a group size the message lists (they divide the width: `\"int4-g20\"`), or leave the layer "
             "in float (`skip=`)", readme=True),
    Case("inputs-quantized-nan-scale", AREA, _scale(float("nan")), _checkpoint_error(),
         ("transformer.h.0.attn.c_attn.weight_scale[1, 1] = nan", "finite number > 0", "damaged",
          "quantize the float checkpoint again"),
         problem="a quantized checkpoint whose scales are NaN, infinite, 0 or negative, or a zero point above 15",
         fix="the file is damaged: quantize the float checkpoint again (`load_model(src, quantize=...)`, "
             "`save_pretrained`)", readme=True),
    Case("inputs-quantized-inf-scale", AREA, _scale(float("inf"), "transformer.h.1.mlp.c_fc.weight_scale"),
         _checkpoint_error(), ("transformer.h.1.mlp.c_fc.weight_scale[1, 1] = inf", "finite number > 0")),
    Case("inputs-quantized-zero-scale", AREA, _scale(0.0, "transformer.wte.weight_scale"), _checkpoint_error(),
         ("transformer.wte.weight_scale[1, 1] = 0.0", "finite number > 0")),
    Case("inputs-quantized-negative-scale", AREA, _scale(-0.25), _checkpoint_error(),
         ("weight_scale[1, 1] = -0.25", "finite number > 0")),
    Case("inputs-quantized-zero-point-16", AREA, _scale(16, "transformer.h.0.mlp.c_proj.weight_zero_point"),
         _checkpoint_error(), ("transformer.h.0.mlp.c_proj.weight_zero_point[0, 5] = 16", "0..15")),
]


# ---------------------------------------------------------------------------- the generate command line

def _cli(*argv: str, tmp_path: Path):
    from course_lib.__main__ import main

    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    with mock.patch.dict(os.environ, env):
        raise SystemExit(main(["generate", *argv]))


def cli_two_prompts(tmp_path: Path):
    """What the old usage line, ``[MODEL] PROMPT [[MODEL] PROMPT ...]``, invited."""
    _cli("Once", "upon a time", "--max-new-tokens", "2", tmp_path=tmp_path)


def cli_unexpected_error(tmp_path: Path):
    import course_lib.__main__ as cli

    def broken(*args, **kwargs):
        raise RuntimeError("something inside torch went wrong")

    with mock.patch.object(cli, "_generate", broken):
        _cli("Hello", "--max-new-tokens", "2", tmp_path=tmp_path)


CASES += [
    Case("inputs-cli-two-prompts", AREA, cli_two_prompts, SystemExit,
         ("error:", "'Once'", "quote the whole prompt", 'python -m course_lib generate "Once upon a time"')),
    Case("inputs-cli-seed-too-large", AREA, lambda p: _cli("Hello", "--seed", str(2 ** 70), tmp_path=p), SystemExit,
         ("error: seed=", "2**64 - 1")),
    Case("inputs-cli-max-new-tokens-negative", AREA, lambda p: _cli("Hello", "--max-new-tokens", "-3", tmp_path=p),
         SystemExit, ("error: max_new_tokens must be >= 0",)),
    Case("inputs-cli-threads-zero", AREA, lambda p: _cli("Hello", "--threads", "0", tmp_path=p), SystemExit,
         ("--threads", "at least 1")),
    Case("inputs-cli-unexpected-error-one-line", AREA, cli_unexpected_error, SystemExit,
         ("error: RuntimeError: something inside torch went wrong",)),
]
