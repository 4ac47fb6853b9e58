"""Checkpoint files, read and written: a hostile or damaged file, a wrong config, a destination
that holds something else. Each case builds a tiny model folder (the course's own classes,
the Hugging Face layout) in ``tmp_path``, then does the bad thing. Nothing touches the network.

The dedicated tests go further where one row is not enough: tests/test_load_validation.py
(dtypes, shard paths, configs, devices), tests/test_save_safety.py (a save killed mid-write,
permissions, stale files), tests/test_load_errors.py and tests/test_download_convert.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from unittest import mock

import torch

from course_lib import checkpoint as _ckpt
from course_lib import hub as _hub

from . import Case

AREA = "loading and saving models"


# ------------------------------------------------------------------ tiny model folders

def tiny_bert(hidden: int = 32):
    from course_lib.models.encoder import BertModel, EncoderConfig

    torch.manual_seed(0)
    return BertModel(EncoderConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=64)).eval()


def tiny_gpt2():
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).eval()


def saved(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def with_tensor(folder: Path, key: str, change) -> Path:
    """``folder``'s model.safetensors with tensor ``key`` replaced by ``change(tensor)``."""
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state[key] = change(state[key]).contiguous()
    save_file(state, folder / "model.safetensors")
    return folder


def with_config(folder: Path, **changes) -> Path:
    values = json.loads((folder / "config.json").read_text())
    values.update(changes)
    (folder / "config.json").write_text(json.dumps(values))
    return folder


def with_header_dtype(folder: Path, key: str, dtype: str) -> Path:
    """Rewrite one tensor's dtype name in the safetensors header (the bytes stay): an unknown or sub-byte dtype."""
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header[key]["dtype"] = dtype
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    return folder


def gpt2_folder(tmp_path: Path) -> Path:
    return saved(tiny_gpt2(), tmp_path / "gpt2")


def load(folder: Path, **kwargs):
    from course_lib.loading import load_model

    return load_model(folder, **kwargs)


# ------------------------------------------------------------------ tensors of the wrong dtype

def fp8_weight(tmp_path: Path):
    folder = with_tensor(gpt2_folder(tmp_path), "transformer.h.0.attn.c_attn.weight",
                         lambda t: t.to(torch.float8_e4m3fn))
    load(folder)


def fp8_weight_quantized_while_loading(tmp_path: Path):
    folder = with_tensor(gpt2_folder(tmp_path), "transformer.h.0.attn.c_attn.weight", lambda t: t.to(torch.float8_e5m2))
    load(folder, quantize="int8")


def int64_layer_norm_as_bfloat16(tmp_path: Path):
    folder = with_tensor(gpt2_folder(tmp_path), "transformer.ln_f.weight", lambda t: t.round().to(torch.int64))
    load(folder, dtype=torch.bfloat16)


def int64_token_embedding(tmp_path: Path):
    folder = with_tensor(gpt2_folder(tmp_path), "transformer.wte.weight", lambda t: (t * 100).to(torch.int64))
    load(folder)


def bool_mlp_weight(tmp_path: Path):
    folder = with_tensor(gpt2_folder(tmp_path), "transformer.h.0.mlp.c_fc.weight", lambda t: t > 0)
    load(folder)


def uint16_weight(tmp_path: Path):
    folder = with_tensor(gpt2_folder(tmp_path), "transformer.h.0.mlp.c_proj.weight",
                         lambda t: (t.abs() * 1000).to(torch.int32).to(torch.uint16))
    load(folder)


def sub_byte_dtype_in_header(tmp_path: Path):
    load(with_header_dtype(gpt2_folder(tmp_path), "transformer.ln_f.bias", "F4"))


def unknown_dtype_in_header(tmp_path: Path):
    load(with_header_dtype(gpt2_folder(tmp_path), "transformer.ln_f.bias", "F9_E9"))


# ------------------------------------------------------------------ shard indexes

def sharded(tmp_path: Path, weight_map) -> Path:
    """A BERT folder whose index is ``weight_map``; its weights moved to a shard beside the index."""
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def shard_outside_the_folder(tmp_path: Path):
    other = saved(tiny_bert(), tmp_path / "other")
    from safetensors import safe_open

    with safe_open(str(other / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    load(sharded(tmp_path, {k: "../other/model.safetensors" for k in keys}))


def shard_absolute_path(tmp_path: Path):
    load(sharded(tmp_path, {"embeddings.word_embeddings.weight": "/etc/passwd"}))


def shard_symlink_out_of_the_folder(tmp_path: Path):
    other = saved(tiny_bert(), tmp_path / "other")
    folder = sharded(tmp_path, {"embeddings.word_embeddings.weight": "model-00002-of-00002.safetensors"})
    os.symlink(other / "model.safetensors", folder / "model-00002-of-00002.safetensors")
    load(folder)


def weight_map_a_list(tmp_path: Path):
    load(sharded(tmp_path, ["model-00001-of-00001.safetensors"]))


def weight_map_with_numbers(tmp_path: Path):
    load(sharded(tmp_path, {"embeddings.word_embeddings.weight": 1}))


# ------------------------------------------------------------------ folders and config.json

def symlink_loop_as_the_folder(tmp_path: Path):
    os.symlink(tmp_path / "my-model", tmp_path / "my-model")
    load(tmp_path / "my-model")


def config_number_in_quotes(tmp_path: Path):
    load(with_config(gpt2_folder(tmp_path), n_head="2"))


def config_negative_vocab(tmp_path: Path):
    load(with_config(gpt2_folder(tmp_path), vocab_size=-5))


def config_bert_vocab_zero(tmp_path: Path):
    load(with_config(saved(tiny_bert(), tmp_path / "bert"), vocab_size=0))


def config_dropout_above_one(tmp_path: Path):
    load(with_config(saved(tiny_bert(), tmp_path / "bert"), hidden_dropout_prob=1.5))


def config_pad_id_past_the_vocabulary(tmp_path: Path):
    load(with_config(saved(tiny_bert(), tmp_path / "bert"), pad_token_id=100))


def config_bool_for_a_size(tmp_path: Path):
    load(with_config(gpt2_folder(tmp_path), n_layer=True))


# ------------------------------------------------------------------ devices

def cuda_on_a_cpu_only_torch(tmp_path: Path):
    folder = gpt2_folder(tmp_path)
    with mock.patch("torch.cuda.is_available", return_value=False), mock.patch.object(torch.version, "cuda", None):
        load(folder, device="cuda")


def a_device_that_does_not_exist(tmp_path: Path):
    load(gpt2_folder(tmp_path), device="gpu")


def mps_where_there_is_none(tmp_path: Path):
    folder = gpt2_folder(tmp_path)
    mps = getattr(torch.backends, "mps", None)
    patch = mock.patch.object(mps, "is_available", return_value=False) if mps else contextlib.nullcontext()
    with patch:
        load(folder, device="mps")


# ------------------------------------------------------------------ strict=False

def strict_false_with_problems(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "bert")
    with_tensor(folder, "embeddings.position_embeddings.weight", lambda t: torch.zeros(70, t.shape[1]))
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state["encoder.layer.0.output.dense.bias"]
    state["encoder.layer.0.surprise.weight"] = torch.zeros(3)
    save_file(state, folder / "model.safetensors")
    model = load(folder, strict=False)
    first_line = model.load_report.summary().splitlines()[0]
    if "INCOMPLETE" not in first_line or "1 missing" not in first_line:
        raise AssertionError(f"the report's first line does not say the load is incomplete: {first_line}")


# ------------------------------------------------------------------ writing over something else

def save_into_another_models_folder(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "tokenizer.json").write_text("{}")
    tiny_bert(hidden=64).save_pretrained(folder)


def save_into_a_file(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"not a folder")
    tiny_bert().save_pretrained(tmp_path / "model.safetensors")


def save_over_stale_shards(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    tiny_bert().save_pretrained(folder)


def legacy_bin_folder(tmp_path: Path) -> Path:
    folder = saved(tiny_bert(), tmp_path / "src")
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def convert_into_another_checkpoint(tmp_path: Path):
    from course_lib import convert

    src = legacy_bin_folder(tmp_path)
    dst = saved(tiny_bert(hidden=64), tmp_path / "dst")
    raise SystemExit(convert.main([str(src), str(dst)]))


def convert_into_a_file(tmp_path: Path):
    from course_lib import convert

    src = legacy_bin_folder(tmp_path)
    (tmp_path / "out.safetensors").write_bytes(b"x")
    raise SystemExit(convert.main([str(src), str(tmp_path / "out.safetensors")]))


def handout_into_a_file(tmp_path: Path):
    from course_lib import handout

    (tmp_path / "handout.zip").write_bytes(b"x")
    raise SystemExit(handout.main([str(tmp_path / "handout.zip")]))


# ------------------------------------------------------------------ cases handled before (kept so they stay clear)

def truncated_safetensors(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])
    load(folder)


def git_lfs_pointer(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    load(folder)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_that_runs_code(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "model.safetensors").unlink()
    torch.save({"x": _RunsCode(tmp_path / "pwned")}, folder / "pytorch_model.bin")
    try:
        load(folder)
    finally:
        if (tmp_path / "pwned").exists():
            raise AssertionError("the pickle's code ran")


def folder_without_weights(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "model.safetensors").unlink()
    load(folder)


def folder_without_config(tmp_path: Path):
    folder = saved(tiny_bert(), tmp_path / "model")
    (folder / "config.json").unlink()
    load(folder)


def unknown_model_type(tmp_path: Path):
    load(with_config(saved(tiny_bert(), tmp_path / "model"), model_type="t5"))


def encoder_loaded_as_masked_lm(tmp_path: Path):
    load(saved(tiny_bert(), tmp_path / "model"), task="masked-lm")


def shard_missing(tmp_path: Path):
    load(sharded(tmp_path, {"embeddings.word_embeddings.weight": "model-00002-of-00002.safetensors"}))


def offline_and_not_cached(tmp_path: Path):
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    with mock.patch.dict(os.environ, env):
        for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            os.environ.pop(var, None)
        load("roberta-base")


CASES = [
    Case("files-fp8-weight", AREA, fp8_weight, _ckpt.CheckpointDtypeError,
         ("transformer.h.0.attn.c_attn.weight", "float8_e4m3fn (F8_E4M3)", "float32", "nothing was loaded",
          "original float checkpoint"),
         problem="`load_model` on a checkpoint whose weights are FP8 (or integers, booleans) instead of floats",
         fix="load the model's float checkpoint (F32/F16/BF16); for a smaller model use `quantize='int8'`/`'int4'`",
         readme=True),
    Case("files-fp8-weight-quantize", AREA, fp8_weight_quantized_while_loading, _ckpt.CheckpointDtypeError,
         ("transformer.h.0.attn.c_attn.weight", "float8_e5m2", "original float checkpoint")),
    Case("files-int64-ln-f-bfloat16", AREA, int64_layer_norm_as_bfloat16, _ckpt.CheckpointDtypeError,
         ("transformer.ln_f.weight", "int64 (I64)", "bfloat16", "damaged")),
    Case("files-int64-wte", AREA, int64_token_embedding, _ckpt.CheckpointDtypeError,
         ("transformer.wte.weight", "int64", "float32")),
    Case("files-bool-c-fc", AREA, bool_mlp_weight, _ckpt.CheckpointDtypeError,
         ("transformer.h.0.mlp.c_fc.weight", "bool (BOOL)", "float32")),
    Case("files-uint16-weight", AREA, uint16_weight, _ckpt.CheckpointDtypeError,
         ("transformer.h.0.mlp.c_proj.weight", "uint16 (U16)")),
    Case("files-f4-dtype", AREA, sub_byte_dtype_in_header, _ckpt.CheckpointError,
         ("transformer.ln_f.bias", "'F4'", "4-bit floats", "original float checkpoint")),
    Case("files-unknown-dtype", AREA, unknown_dtype_in_header, _ckpt.CheckpointError,
         ("transformer.ln_f.bias", "'F9_E9'", "does not know", "BF16")),
    Case("files-shard-outside-folder", AREA, shard_outside_the_folder, _ckpt.CheckpointError,
         ("model.safetensors.index.json", "'../other/model.safetensors'", "'..'", "only name files in its own folder"),
         problem="a shard index (`*.index.json`) names a file outside the model folder (`../x`, `/etc/...`, a link)",
         fix="put the shards beside the index and name them by file name; a downloaded index that does this is "
             "damaged or hostile",
         readme=True),
    Case("files-shard-absolute-path", AREA, shard_absolute_path, _ckpt.CheckpointError,
         ("'/etc/passwd'", "an absolute path")),
    Case("files-shard-symlink-escapes", AREA, shard_symlink_out_of_the_folder, _ckpt.CheckpointError,
         ("model-00002-of-00002.safetensors", "outside the folder")),
    Case("files-weight-map-list", AREA, weight_map_a_list, _ckpt.CorruptCheckpointError,
         ("model.safetensors.index.json", "'weight_map' must be", "a list")),
    Case("files-weight-map-number", AREA, weight_map_with_numbers, _ckpt.CorruptCheckpointError,
         ("model.safetensors.index.json", "'embeddings.word_embeddings.weight' maps to a number")),
    Case("files-symlink-loop", AREA, symlink_loop_as_the_folder, FileNotFoundError,
         ("my-model", "symbolic link loop", "rm "),
         problem="the model folder is a symbolic link that leads back to itself (a link loop)",
         fix="remove the link (`rm`) and pass, or link, the real model folder",
         readme=True),
    Case("files-config-number-in-quotes", AREA, config_number_in_quotes, ValueError,
         ("config.json", "n_head must be an integer", 'the string "2"', "without the quotes"),
         problem='config.json has a wrong value: `"n_head": "2"`, `"vocab_size": -5`, a dropout of 1.5',
         fix="the message names config.json, the field and what it must be: fix that value",
         readme=True),
    Case("files-config-negative-vocab", AREA, config_negative_vocab, ValueError,
         ("config.json", "vocab_size must be at least 1", "-5")),
    Case("files-config-bert-vocab-zero", AREA, config_bert_vocab_zero, ValueError,
         ("config.json", "vocab_size must be at least 1", "got 0")),
    Case("files-config-dropout", AREA, config_dropout_above_one, ValueError,
         ("config.json", "hidden_dropout_prob must be between 0 and 1", "1.5")),
    Case("files-config-pad-id", AREA, config_pad_id_past_the_vocabulary, ValueError,
         ("config.json", "pad_token_id=100", "vocab_size=100")),
    Case("files-config-bool-size", AREA, config_bool_for_a_size, ValueError,
         ("config.json", "n_layer must be an integer", "the boolean true")),
    Case("files-device-cuda-cpu-only", AREA, cuda_on_a_cpu_only_torch, ValueError,
         ("device='cuda'", "CPU-only PyTorch", "it has: cpu", "device='cpu'"),
         problem="`load_model(..., device='cuda')` where PyTorch has no CUDA (a CPU-only install, or no GPU)",
         fix="use `device='cpu'` (or leave it out); for a GPU, install the CUDA build of PyTorch on a machine "
             "that has one",
         readme=True),
    Case("files-device-unknown", AREA, a_device_that_does_not_exist, ValueError,
         ("device='gpu'", "not a device name", "cpu")),
    Case("files-device-mps-absent", AREA, mps_where_there_is_none, ValueError,
         ("device='mps'", "not available", "it has: cpu")),
    Case("files-strict-false-warns", AREA, strict_false_with_problems, None,
         ("strict=False", "1 missing", "1 unexpected", "1 with the wrong shape", "load_report"),
         warns=_ckpt.IncompleteLoadWarning,
         problem="`load_model(..., strict=False)` warns `IncompleteLoadWarning`: N missing, unexpected or "
                 "wrongly shaped keys",
         fix="those parameters are random: check the model id, task and config; `model.load_report.summary()` "
             "lists every key",
         readme=True),
    Case("files-save-over-another-model", AREA, save_into_another_models_folder, _ckpt.CheckpointExistsError,
         ("already holds another checkpoint", "hidden_size: 32 there, 64 here", "Nothing was written",
          "overwrite=True", "tokenizer.json"),
         problem="`model.save_pretrained(folder)` where the folder holds another model's checkpoint",
         fix="save into a new folder, or pass `overwrite=True` (that checkpoint's weights, index and tokenizer "
             "files are removed; other files stay)",
         readme=True),
    Case("files-save-over-stale-shards", AREA, save_over_stale_shards, _ckpt.CheckpointExistsError,
         ("model-00001-of-00002.safetensors", "stale", "overwrite=True")),
    Case("files-save-into-a-file", AREA, save_into_a_file, NotADirectoryError,
         ("model.safetensors is a file, not a folder", "nothing was written")),
    Case("files-convert-over-another-model", AREA, convert_into_another_checkpoint, SystemExit,
         ("error:", "already holds another checkpoint", "--overwrite"),
         problem="`python -m course_lib.convert SRC DST` where DST holds another checkpoint",
         fix="choose a new DST, or add `--overwrite` to replace that checkpoint",
         readme=True),
    Case("files-convert-into-a-file", AREA, convert_into_a_file, SystemExit,
         ("error:", "out.safetensors is a file, not a folder")),
    Case("files-handout-into-a-file", AREA, handout_into_a_file, SystemExit,
         ("error:", "handout.zip is a file, not a folder", "nothing was written")),
    Case("files-truncated-safetensors", AREA, truncated_safetensors, _ckpt.CorruptCheckpointError,
         ("model.safetensors", "truncated", "download it again"),
         problem="`model.safetensors` (or `.bin`) is truncated or damaged (an interrupted download or copy)",
         fix="download it again (`hf download MODEL --force-download`) or copy it again",
         readme=True),
    Case("files-git-lfs-pointer", AREA, git_lfs_pointer, _ckpt.CorruptCheckpointError,
         ("Git LFS pointer", "git lfs pull"),
         problem="the weights are a Git LFS pointer (a repository cloned without git-lfs)",
         fix="`git lfs install && git lfs pull` in the clone",
         readme=True),
    Case("files-unsafe-pickle", AREA, pickle_that_runs_code, _ckpt.UnsafeCheckpointError,
         ("could run code", "Nothing from it was executed", "model.safetensors"),
         problem="a `pytorch_model.bin` that asks to import or call Python objects",
         fix="refused before anything ran: use the model's `model.safetensors`",
         readme=True),
    Case("files-no-weights", AREA, folder_without_weights, _ckpt.CheckpointError,
         ("no weights in", "model.safetensors", "the folder holds: config.json"),
         problem="a model folder without `model.safetensors` / `pytorch_model.bin`",
         fix="download the weight file too (`hf download MODEL model.safetensors`) or pass the folder that has it",
         readme=True),
    Case("files-no-config", AREA, folder_without_config, _ckpt.CheckpointError,
         ("has no config.json", "hf download MODEL config.json")),
    Case("files-unknown-model-type", AREA, unknown_model_type, ValueError,
         ("config.json", "model_type 't5'", "supported: bert")),
    Case("files-keys-do-not-fit", AREA, encoder_loaded_as_masked_lm, _ckpt.StateDictMismatchError,
         ("missing from the checkpoint", "cls.predictions.bias", "task='base'", "strict=False"),
         problem="weights that do not fit the model: missing, unexpected or wrongly shaped keys",
         fix="check the model id and `task=` (a bare encoder has no masked-LM head: `task='base'`); every "
             "problem is listed at once",
         readme=True),
    Case("files-shard-missing", AREA, shard_missing, _ckpt.CheckpointError,
         ("model-00002-of-00002.safetensors", "download every shard")),
    Case("files-offline-not-cached", AREA, offline_and_not_cached, _hub.ModelNotCachedError,
         ("'roberta-base'", "HF_HUB_OFFLINE", "python -m course_lib.download roberta-base --to DIR"),
         problem="`load_model('roberta-base')` offline (or without network) when the Hub cache does not hold it",
         fix="on a machine with network run `python -m course_lib.download MODEL --to DIR`, copy DIR here and "
             "set `HF_HOME` to it",
         readme=True),
]
