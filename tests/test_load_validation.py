"""Loading checks what it reads, once, at the boundary: never a silently wrong model.

- every safetensors dtype maps to its torch dtype (or is refused by name): ``read_rows`` and
  ``get`` return the same values, never bytes read as another type;
- a float parameter takes float tensors only (converted, explicitly, to the wanted dtype);
  integers, booleans and FP8 are refused naming the key and both dtypes; an integer buffer
  (a quantized layer's weight) takes exactly its dtype;
- a shard index may only name files inside its folder (the Hub cache's links into ``blobs/``
  are followed);
- ``config.json``'s values are checked against the config dataclass's annotations and ranges;
- ``device=`` is checked before anything is read; ``strict=False`` warns.

The reliability table (tests/reliability/cases_files.py) holds the one-line cases; this file
the ones that need more than a row.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib import checkpoint as ckpt
from course_lib.checkpoint import CheckpointDtypeError, CheckpointError, CheckpointReader, IncompleteLoadWarning
from course_lib.loading import check_device, load_model
from course_lib.models import config_from_dict
from course_lib.models.encoder import BertModel, EncoderConfig
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel
from helpers import fake_hub_snapshot


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).eval()


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=100, max_position_embeddings=64)).eval()


def retyped(folder: Path, change) -> Path:
    """``folder``'s weights with ``change(key, tensor)`` applied to every tensor."""
    state = load_file(folder / "model.safetensors")
    save_file({k: change(k, v).contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


# ------------------------------------------------------------------ safetensors dtypes

def test_every_safetensors_dtype_is_mapped_as_safetensors_maps_it():
    import safetensors.torch as st

    theirs = getattr(st, "_TYPES", {})
    assert {k: v for k, v in ckpt._SAFETENSORS_DTYPES.items() if k in theirs} == \
        {k: v for k, v in theirs.items() if k in ckpt._SAFETENSORS_DTYPES}
    for name in ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                 "F8_E4M3", "F8_E5M2"):
        assert name in ckpt._SAFETENSORS_DTYPES, name
    for name, why in (("F4", "4-bit"), ("F6_E2M3", "6-bit"), ("X7", "does not know")):
        with pytest.raises(CheckpointError, match=why):
            ckpt.safetensors_dtype(name)


def every_dtype_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, dtype in ckpt._SAFETENSORS_DTYPES.items():
        values = torch.randn(5, 3, generator=g) * 3
        if dtype == torch.bool:
            out[name] = values > 0
        elif dtype.is_complex:
            out[name] = torch.complex(values, -values).to(dtype)
        elif dtype.is_floating_point:
            out[name] = values.abs().to(dtype) if "E8M0" in name else values.to(dtype)
        else:
            out[name] = (values.abs() * 10).to(torch.int64).to(dtype)
    return out


def test_read_rows_and_get_agree_for_every_dtype(tmp_path):
    """The reader's dtype is the file's: rows read with plain reads are the same bits as safetensors' own."""
    tensors = every_dtype_tensors()
    save_file(tensors, tmp_path / "all.safetensors")
    with CheckpointReader([tmp_path / "all.safetensors"]) as reader:
        for name, tensor in tensors.items():
            assert reader.dtype(name) == tensor.dtype, name
            whole, rows = reader.get(name), reader.read_rows(name, 1, 4)
            assert rows.dtype == tensor.dtype and rows.shape == (3, 3), name
            assert torch.equal(whole.view(torch.uint8), tensor.view(torch.uint8)), name
            assert torch.equal(rows.view(torch.uint8), tensor[1:4].contiguous().view(torch.uint8)), name


def test_a_float_file_is_converted_explicitly_to_the_wanted_dtype(tmp_path):
    model = tiny_gpt2()
    folder = model.save_pretrained(tmp_path / "m")
    retyped(folder, lambda k, v: v.double())  # F64 on disk
    for dtype, quantize in ((None, None), (torch.bfloat16, None), (None, "int8")):
        loaded = load_model(folder, dtype=dtype, quantize=quantize)
        floats = {p.dtype for p in loaded.parameters() if p.is_floating_point()}
        assert floats <= {dtype or torch.float32}, (dtype, quantize, floats)
    loaded = load_model(folder)
    assert torch.equal(loaded.transformer.ln_f.weight, model.transformer.ln_f.weight)


def test_a_saved_quantized_model_still_loads_and_a_retyped_integer_weight_is_refused(tmp_path):
    from course_lib.quantization import quantize_model

    folder = quantize_model(tiny_gpt2(), "int8").save_pretrained(tmp_path / "q")
    assert load_model(folder).quantization is not None  # int8 weights into int8 buffers: exact dtypes
    key = "transformer.h.0.mlp.c_fc.weight"
    retyped(folder, lambda k, v: v.to(torch.int32) if k == key else v)
    with pytest.raises(CheckpointDtypeError) as err:
        load_model(folder)
    assert key in str(err.value) and "int32 (I32)" in str(err.value) and "int8 (I8)" in str(err.value)


def test_every_wrong_dtype_is_listed_at_once_and_nothing_is_read(tmp_path, monkeypatch):
    folder = tiny_gpt2().save_pretrained(tmp_path / "m")
    retyped(folder, lambda k, v: v.to(torch.int8) if k.endswith(".bias") else v)
    reads = []
    monkeypatch.setattr(CheckpointReader, "get", lambda self, key: reads.append(key))
    with pytest.raises(CheckpointDtypeError) as err:
        load_model(folder)
    assert reads == []
    biases = [k for k in load_file(folder / "model.safetensors") if k.endswith(".bias")]
    assert f"{len(biases)} tensor(s)" in str(err.value) and all(k in str(err.value) for k in biases)


def test_strict_false_does_not_skip_the_dtype_check(tmp_path):
    folder = retyped(tiny_bert().save_pretrained(tmp_path / "m"),
                     lambda k, v: v.to(torch.int64) if k == "embeddings.word_embeddings.weight" else v)
    with pytest.raises(CheckpointDtypeError, match="embeddings.word_embeddings.weight"):
        load_model(folder, strict=False)


# ------------------------------------------------------------------ shard indexes

def shard_folder(folder: Path, model, names=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    state = load_file(model.save_pretrained(folder) / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = list(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for name, part in zip(names, halves):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_the_hub_caches_links_into_blobs_are_followed(hf_home):
    """A Hub snapshot's files are links to ../../blobs/<hash>: outside the snapshot folder, and allowed."""
    model = tiny_bert(seed=3)
    snapshot = shard_folder(fake_hub_snapshot(hf_home / "hub", "org/sharded"), model)
    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir()
    for path in list(snapshot.iterdir()):
        blob = blobs / f"hash-{path.name}"
        path.rename(blob)
        os.symlink(os.path.relpath(blob, snapshot), path)
    loaded = load_model("org/sharded")
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_a_folder_reached_through_a_link_and_shards_in_a_subfolder_load(tmp_path):
    model = tiny_bert(seed=4)
    shard_folder(tmp_path / "real", model, names=("weights/a.safetensors", "weights/b.safetensors"))
    os.symlink(tmp_path / "real", tmp_path / "link")
    loaded = load_model(tmp_path / "link")
    assert torch.equal(loaded.encoder.layer[0].output.dense.weight, model.encoder.layer[0].output.dense.weight)


@pytest.mark.parametrize("name, words", [("..\\other\\model.safetensors", "'..'"),
                                         ("weights/../../other/model.safetensors", "'..'"),
                                         ("C:\\models\\model.safetensors", "absolute path")])
def test_other_spellings_of_a_path_out_of_the_folder(tmp_path, name, words):
    folder = shard_folder(tmp_path / "m", tiny_bert())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": name}}))
    with pytest.raises(CheckpointError, match=words):
        load_model(folder)


def test_a_bin_index_pointing_out_of_the_folder_is_refused_before_torch_load(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    tiny_bert().save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, tmp_path / "elsewhere.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.bin"}}))
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(CheckpointError, match="only name files in its own folder"):
        load_model(folder)
    assert calls == []


# ------------------------------------------------------------------ config.json

@pytest.mark.parametrize("field, value, words", [
    ("n_head", "2", ["n_head must be an integer", 'the string "2"', '"n_head": 2']),
    ("n_embd", 32.0, ["n_embd must be an integer", "32.0"]),
    ("n_inner", "64", ["n_inner must be an integer or null"]),
    ("resid_pdrop", "0.1", ["resid_pdrop must be a finite number", '"resid_pdrop": 0.1']),
    ("resid_pdrop", float("nan"), ["resid_pdrop must be a finite number", "nan"]),
    ("activation_function", 1, ["activation_function must be a string"]),
    ("tie_word_embeddings", "true", ["tie_word_embeddings must be true or false"]),
    ("n_positions", 0, ["n_positions must be at least 1", "got 0"]),
    ("n_layer", -1, ["n_layer must be at least 1"]),
    ("layer_norm_epsilon", 0, ["layer_norm_epsilon must be greater than 0"]),
    ("attn_pdrop", -0.1, ["attn_pdrop must be between 0 and 1"]),
    ("initializer_range", -1, ["initializer_range must be 0 or more"]),
    ("bos_token_id", -1, ["bos_token_id must be 0 or more"]),
])
def test_gpt2_config_fields_are_checked(field, value, words):
    values = {"model_type": "gpt2", "n_embd": 32, "n_head": 2, field: value}
    with pytest.raises(ValueError) as err:
        config_from_dict(values, where="some/config.json")
    assert str(err.value).startswith("some/config.json: "), str(err.value)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize("values", [
    {"n_inner": None, "bos_token_id": None, "eos_token_id": None},  # null where the annotation allows it
    {"resid_pdrop": 0, "embd_pdrop": 1, "initializer_range": 0},  # ints for floats, the ends of the ranges
    {"n_ctx": "anything", "summary_type": "cls_index"},  # keys the model does not use: kept, not checked
])
def test_values_that_fit_are_accepted(values):
    config = config_from_dict({"model_type": "gpt2", **values})
    assert config.to_dict()["model_type"] == "gpt2"


def test_the_configs_the_course_ships_and_transformers_writes_pass():
    from course_lib.assets import asset_path

    for name in ("all-MiniLM-L6-v2", "tiny-gpt2"):
        values = json.loads((asset_path(name) / "config.json").read_text())
        assert config_from_dict(values).model_type == values["model_type"]
    tf = pytest.importorskip("transformers")
    for config in (tf.BertConfig(), tf.RobertaConfig(), tf.GPT2Config()):
        config_from_dict(config.to_dict())


def test_the_type_check_comes_before_the_architectures_own_checks():
    """"n_head": "2" would otherwise fail inside validate() with "'<' not supported between str and int"."""
    with pytest.raises(ValueError, match="n_head must be an integer") as err:
        GPT2Config.from_dict({"model_type": "gpt2", "n_head": "2"})
    assert "not supported between" not in str(err.value)


# ------------------------------------------------------------------ devices

def test_check_device_accepts_what_the_machine_has():
    assert check_device(None) is None
    assert check_device("cpu") == torch.device("cpu") == check_device(torch.device("cpu"))


def test_a_cuda_index_beyond_the_gpus_is_named():
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.device_count", return_value=2):
        assert check_device("cuda") == torch.device("cuda")
        assert check_device("cuda:1") == torch.device("cuda:1")
        with pytest.raises(ValueError, match=r"device='cuda:5' is not available.*cuda:0, cuda:1"):
            check_device("cuda:5")


def test_a_cuda_build_without_a_gpu_says_so():
    with mock.patch("torch.cuda.is_available", return_value=False), mock.patch.object(torch.version, "cuda", "12.4"):
        with pytest.raises(ValueError, match="no GPU"):
            check_device("cuda")


@pytest.mark.parametrize("device", ["meta", 3.5, "cuda:x"])
def test_devices_that_cannot_hold_a_loaded_model(device):
    with pytest.raises(ValueError, match="device="):
        check_device(device)


def test_the_device_is_checked_before_anything_is_read(hf_home):
    with mock.patch("torch.cuda.is_available", return_value=False):
        with pytest.raises(ValueError, match="device='cuda'"):
            load_model("org/not-cached-anywhere", device="cuda")  # not ModelNotCachedError


# ------------------------------------------------------------------ strict=False

def test_strict_false_warns_only_when_something_is_wrong(tmp_path):
    folder = tiny_bert().save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(folder, strict=False)  # a complete load: no warning
    assert "INCOMPLETE" not in model.load_report.summary()
    state = load_file(folder / "model.safetensors")
    del state["encoder.layer.0.output.dense.bias"], state["embeddings.LayerNorm.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.warns(IncompleteLoadWarning, match="2 missing") as record:
        model = load_model(folder, strict=False)
    assert issubclass(record[0].category, UserWarning)
    assert record[0].filename == __file__  # points at the caller's line, not at course_lib
    assert model.load_report.summary().splitlines()[0].endswith("INCOMPLETE (strict=False): 2 missing (random init)")
