"""Every wrong input to load_model gets one clear error that names the problem and the fix.

Never a bare traceback from deep inside torch or safetensors, never a half-loaded model,
and never code run from a pickle. Tiny checkpoints, made by the course's own classes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from course_lib.checkpoint import (CheckpointError, CorruptCheckpointError, IncompleteLoadWarning,
                                   StateDictMismatchError, UnsafeCheckpointError)
from course_lib.hub import ModelNotCachedError
from course_lib.loading import load_model
from course_lib.models.encoder import BertModel, EncoderConfig


def tiny_config() -> EncoderConfig:
    return EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=100, max_position_embeddings=64)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, BertModel]:
    """A valid tiny BERT folder (config.json + model.safetensors) and the model that wrote it."""
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    folder = tmp_path_factory.mktemp("good")
    model.save_pretrained(folder)
    return folder, model


def folder_with(tmp_path: Path, good, name: str, data: bytes | None = None, obj=None, **save_kwargs) -> Path:
    """good's config.json plus one weight file ``name`` holding ``data`` (raw bytes) or ``torch.save(obj)``."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(good[0] / "config.json", folder)
    if data is not None:
        (folder / name).write_bytes(data)
    else:
        torch.save(obj, folder / name, **save_kwargs)
    return folder


def assert_names_the_fix(message: str, *needles: str) -> None:
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


# ------------------------------------------------------------------- damaged files

@pytest.mark.parametrize("damage", ["cut in half", "garbage", "empty", "header only"])
def test_corrupt_safetensors(tmp_path, good, damage):
    data = (good[0] / "model.safetensors").read_bytes()
    header_len = 8 + int.from_bytes(data[:8], "little")
    damaged = {"cut in half": data[:len(data) // 2], "garbage": os.urandom(4096), "empty": b"",
               "header only": data[:header_len]}[damage]
    folder = folder_with(tmp_path, good, "model.safetensors", damaged)
    with pytest.raises(CorruptCheckpointError) as err:
        load_model(folder)
    assert_names_the_fix(str(err.value), str(folder / "model.safetensors"), "truncated", "download it again")


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4b2e0c1f8d9a7e6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b\nsize 498818054\n")


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_git_lfs_pointer_instead_of_weights(tmp_path, good, name):
    folder = folder_with(tmp_path, good, name, LFS_POINTER)
    with pytest.raises(CorruptCheckpointError) as err:
        load_model(folder)
    assert_names_the_fix(str(err.value), str(folder / name), "Git LFS pointer", "git lfs pull")


@pytest.fixture(scope="module")
def bin_bytes(good) -> dict[str, bytes]:
    import io

    state = good[1].state_dict()
    out = {}
    for fmt, zip_format in (("zip", True), ("legacy", False)):
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
        out[fmt] = buffer.getvalue()
    return out


@pytest.mark.parametrize("damage", ["zip cut in half", "zip cut to 100 bytes", "legacy cut in half",
                                    "legacy cut to 10 bytes", "empty", "garbage"])
def test_corrupt_pytorch_model_bin(tmp_path, good, bin_bytes, damage):
    zipped, legacy = bin_bytes["zip"], bin_bytes["legacy"]
    damaged = {"zip cut in half": zipped[:len(zipped) // 2], "zip cut to 100 bytes": zipped[:100],
               "legacy cut in half": legacy[:len(legacy) // 2], "legacy cut to 10 bytes": legacy[:10],
               "empty": b"", "garbage": b"not a checkpoint " * 64}[damage]
    folder = folder_with(tmp_path, good, "pytorch_model.bin", damaged)
    with pytest.raises(CorruptCheckpointError) as err:
        load_model(folder)
    assert_names_the_fix(str(err.value), str(folder / "pytorch_model.bin"), "damaged", "download it again")


# ------------------------------------------------------------------- pickles that run code

class TouchMarker:
    """Unpickling this creates ``marker`` (pathlib.Path.touch)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class ExecMarker(TouchMarker):
    """Unpickling this runs Python source (builtins.exec) that creates ``marker``."""

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class SystemMarker(TouchMarker):
    """Unpickling this runs a shell command (os.system)."""

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


PAYLOADS = [TouchMarker, ExecMarker] + ([SystemMarker] if os.name == "posix" else [])


def evil_state(payload, marker: Path) -> dict:
    return {"embeddings.word_embeddings.weight": torch.zeros(100, 32), "x": payload(marker)}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_pickle_that_runs_code_is_refused_before_running(tmp_path, good, payload, zip_format):
    marker = tmp_path / "pwned"
    folder = folder_with(tmp_path, good, "pytorch_model.bin", obj=evil_state(payload, marker),
                         _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_model(folder)
    assert not marker.exists(), "the pickle's code ran"
    assert_names_the_fix(str(err.value), str(folder / "pytorch_model.bin"), "could run code",
                         "Nothing from it was executed", "model.safetensors")
    assert "\x1b[" not in str(err.value)  # torch's colour codes are not passed on


def test_the_evil_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    """The test above has teeth: the same payload creates its marker with weights_only=False."""
    for payload in PAYLOADS:
        marker = tmp_path / f"marker-{payload.__name__}"
        torch.save(evil_state(payload, marker), tmp_path / "evil.bin")
        torch.load(tmp_path / "evil.bin", weights_only=False)
        assert marker.exists(), payload


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_that_is_not_a_torch_file(tmp_path, good, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps(evil_state(TouchMarker, marker), protocol=protocol)
    folder = folder_with(tmp_path, good, "pytorch_model.bin", data)
    with pytest.raises(CheckpointError, match="(?i)nothing (from it )?was executed"):
        load_model(folder)
    assert not marker.exists()


# ------------------------------------------------------------------- .bin with the wrong content

def test_a_bin_holding_a_list(tmp_path, good):
    folder = folder_with(tmp_path, good, "pytorch_model.bin", obj=list(good[1].state_dict().values()))
    with pytest.raises(CheckpointError, match="holds a list, not a {name: tensor} state dict") as err:
        load_model(folder)
    assert str(folder / "pytorch_model.bin") in str(err.value)


def test_a_nested_training_checkpoint(tmp_path, good):
    training = {"model": good[1].state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}
    folder = folder_with(tmp_path, good, "pytorch_model.bin", obj=training)
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    assert type(err.value) is CheckpointError
    assert_names_the_fix(str(err.value), str(folder / "pytorch_model.bin"), "'model', 'optimizer', 'epoch'",
                         "training checkpoint", "under 'model'")


# ------------------------------------------------------------------- config.json

def with_config(tmp_path: Path, good, text: str | None) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(good[0], folder)
    if text is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(text)
    return folder


def config_text(good, **changes) -> str:
    values = json.loads((good[0] / "config.json").read_text())
    values.update(changes)
    return json.dumps({k: v for k, v in values.items() if v is not None})


def test_unknown_model_type(tmp_path, good):
    folder = with_config(tmp_path, good, config_text(good, model_type="t5"))
    with pytest.raises(ValueError, match="model_type 't5' is not an architecture the course implements; "
                                         "supported: bert, roberta") as err:
        load_model(folder)
    assert str(folder / "config.json") in str(err.value)


def test_missing_model_type(tmp_path, good):
    folder = with_config(tmp_path, good, config_text(good, model_type=None))
    with pytest.raises(ValueError, match="has no 'model_type'.*supported: bert, roberta"):
        load_model(folder)


def test_missing_config_json_names_the_folder(tmp_path, good):
    folder = with_config(tmp_path, good, None)
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    assert_names_the_fix(str(err.value), str(folder), "has no config.json", "hf download MODEL config.json")


@pytest.mark.parametrize("text, pattern", [("{not json", "is not valid JSON"), ("", "is not valid JSON"),
                                           ("[1, 2]", "must hold a JSON object, found list")])
def test_invalid_config_json(tmp_path, good, text, pattern):
    folder = with_config(tmp_path, good, text)
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_model(folder)
    assert str(folder / "config.json") in str(err.value)


def test_config_values_that_cannot_describe_a_model(tmp_path, good):
    folder = with_config(tmp_path, good, config_text(good, hidden_size=30))
    with pytest.raises(ValueError, match="hidden_size=30 is not divisible by num_attention_heads=4"):
        load_model(folder)


# ------------------------------------------------------------------- missing files

@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    import huggingface_hub  # noqa: F401  (imported first: HF_HOME is set after, as in a notebook)

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "empty-hf-home"


def test_offline_with_nothing_cached_says_how_to_prefetch(offline_empty_cache):
    with pytest.raises(ModelNotCachedError) as err:
        load_model("roberta-base")
    assert_names_the_fix(str(err.value), "'roberta-base'", "HF_HUB_OFFLINE", str(offline_empty_cache / "hub"),
                         "python -m course_lib.download roberta-base --to DIR", "hf download roberta-base",
                         "HF_HOME")


def test_a_folder_without_weights_lists_what_it_holds(tmp_path, good):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(good[0] / "config.json", folder)
    (folder / "vocab.txt").write_text("[PAD]\n")
    (folder / "tf_model.h5").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    assert_names_the_fix(str(err.value), f"no weights in {folder}", "config.json, tf_model.h5, vocab.txt",
                         "model.safetensors", "pytorch_model.bin")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_shard_index_listing_a_missing_shard(tmp_path, good, fmt):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(good[0] / "config.json", folder)
    first, second = ((f"model-0000{i}-of-00002.safetensors" for i in (1, 2)) if fmt == "safetensors"
                     else (f"pytorch_model-0000{i}-of-00002.bin" for i in (1, 2)))
    if fmt == "safetensors":
        shutil.copy(good[0] / "model.safetensors", folder / first)
    else:
        torch.save(good[1].state_dict(), folder / first)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"weight_map": {"a": first, "b": second}}))
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    assert_names_the_fix(str(err.value), index, second, "download every shard")
    assert first not in str(err.value)


@pytest.mark.parametrize("weight_map, words", [
    ([], "'weight_map' must be a non-empty JSON object"), ({}, "'weight_map' must be a non-empty JSON object"),
    ("model.safetensors", "found a string"), ({"a": None}, "'a' maps to null"),
    ({"a": ["x.safetensors"]}, "'a' maps to a list")])
def test_a_weight_map_of_the_wrong_shape(tmp_path, good, weight_map, words):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(good[0] / "config.json", folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CorruptCheckpointError, match=words) as err:
        load_model(folder)
    assert str(folder / "model.safetensors.index.json") in str(err.value)


def test_a_broken_shard_index(tmp_path, good):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(good[0] / "config.json", folder)
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CorruptCheckpointError, match="not a valid shard index.*'weight_map'"):
        load_model(folder)


# ------------------------------------------------------------------- keys that do not fit

@pytest.fixture
def mismatched(tmp_path, good) -> Path:
    """good's weights with one key missing, one unexpected and one of the wrong shape."""
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in good[1].state_dict().items()}
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.0.surprise.weight"] = torch.zeros(3)
    state["embeddings.position_embeddings.weight"] = torch.zeros(70, 32)
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(good[0] / "config.json", folder)
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_strict_loading_reports_every_problem_at_once(mismatched):
    with pytest.raises(StateDictMismatchError) as err:
        load_model(mismatched)
    assert_names_the_fix(str(err.value), str(mismatched), "1 missing", "encoder.layer.1.output.dense.bias",
                         "1 unexpected", "encoder.layer.0.surprise.weight", "embeddings.position_embeddings.weight",
                         "model (64, 32) vs checkpoint (70, 32)", "strict=False")
    report = err.value.report
    assert report.missing == ["encoder.layer.1.output.dense.bias"]
    assert report.unexpected == ["encoder.layer.0.surprise.weight"]
    assert report.mismatched == [("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight",
                                  (64, 32), (70, 32))]


def test_non_strict_loading_keeps_random_init_and_reports(mismatched, good):
    with pytest.warns(IncompleteLoadWarning, match="1 missing .*1 unexpected .*1 with the wrong shape"):
        model = load_model(mismatched, strict=False)
    report = model.load_report
    assert report.summary().splitlines()[0].endswith(
        "INCOMPLETE (strict=False): 1 missing (random init), 1 unexpected (ignored), 1 with the wrong shape "
        "(random init)")
    assert report.missing == ["encoder.layer.1.output.dense.bias"]
    assert report.unexpected == ["encoder.layer.0.surprise.weight"]
    assert [m[0] for m in report.mismatched] == ["embeddings.position_embeddings.weight"]
    assert not any(t.is_meta for t in model.parameters())
    assert not model.training
    missing = model.encoder.layer[1].output.dense.bias
    assert torch.isfinite(missing).all() and missing.abs().sum() > 0  # a random init, not zeros or meta
    positions = model.embeddings.position_embeddings.weight
    assert positions.shape == (64, 32) and positions.abs().sum() > 0  # the file's (70, 32) zeros were not used
    source = good[1]
    assert torch.equal(model.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)
    assert "1 missing" in report.summary() and "(70, 32)" in report.summary()
    ids = torch.randint(0, 100, (1, 5))
    assert torch.isfinite(model(ids)).all()


def test_a_bare_encoder_loaded_as_masked_lm(good):
    with pytest.raises(StateDictMismatchError) as err:
        load_model(good[0], task="masked-lm")
    assert_names_the_fix(str(err.value), "BertForMaskedLM (task='masked-lm')", "missing from the checkpoint",
                         "cls.predictions.bias", "task='base'")


def test_bad_arguments_fail_before_any_download(offline_empty_cache, good):
    # a Hub id that is not cached: each argument error must come first, not ModelNotCachedError
    with pytest.raises(ValueError, match="task='sentiment' is not one of 'auto', 'base', 'masked-lm'"):
        load_model("org/not-cached", task="sentiment")
    with pytest.raises(ValueError, match="dtype='int8' is not supported.*quantize='int8'"):
        load_model("org/not-cached", dtype="int8")
    with pytest.raises(ValueError, match="not a floating-point type.*quantize="):
        load_model("org/not-cached", dtype=torch.int8)
    with pytest.raises(ValueError, match="scheme 'int9' is not known.*'int8'"):
        load_model("org/not-cached", quantize="int9")
    with pytest.raises(ValueError, match="quantize='bf16' is a float type: load with dtype='bf16'"):
        load_model("org/not-cached", quantize="bf16")
    with pytest.raises(ValueError, match="int4 is always group-wise"):
        load_model("org/not-cached", quantize="int4-tensor")
    with pytest.raises(ValueError, match="task='causal-lm' does not exist for model_type 'bert'"):
        load_model(good[0], task="causal-lm")
