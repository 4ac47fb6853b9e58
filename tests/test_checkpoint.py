"""Chapter 05's machinery on tiny models: key matching, lazy readers, load_model's happy paths, saving.

Checkpoints are made with the course's own classes (``save_pretrained``, ``torch.save``),
a few KB each, so every test runs in milliseconds. The parity of the encoder with
``transformers`` is tested in test_encoder_parity.py; the error messages in test_load_errors.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from course_lib import checkpoint as ckpt
from course_lib.checkpoint import (CheckpointReader, LoadReport, is_ignored_buffer, match_keys, rename_legacy_key,
                                   save_checkpoint, weight_files)
from course_lib.loading import load_model
from course_lib.models.encoder import BertForMaskedLM, BertModel, EncoderConfig, RobertaForMaskedLM, RobertaModel
from helpers import COMMIT, fake_hub_snapshot



def tiny_config(model_type: str = "bert") -> EncoderConfig:
    config = EncoderConfig(model_type=model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    if model_type == "roberta":
        config.pad_token_id = 1
    return config


def tiny(cls=BertModel, model_type: str = "bert", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return cls(tiny_config(model_type), **kwargs).eval()


def meta(cls, model_type: str = "bert", **kwargs):
    """A model with shapes only: enough for match_keys."""
    with torch.device("meta"):
        return cls(tiny_config(model_type), **kwargs)


def shapes_of(model, drop_tied: bool = True) -> dict[str, tuple]:
    tied = getattr(model, "tied_weights", {}) if drop_tied else {}
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}


def tokens(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


# ------------------------------------------------------------------- key names

def test_rename_legacy_key():
    assert rename_legacy_key("bert.embeddings.LayerNorm.gamma") == "bert.embeddings.LayerNorm.weight"
    assert rename_legacy_key("encoder.layer.3.output.LayerNorm.beta") == "encoder.layer.3.output.LayerNorm.bias"
    for unchanged in ("gamma", "beta", "encoder.layer.0.output.dense.weight", "a.gamma_x", "a.gamma.b"):
        assert rename_legacy_key(unchanged) == unchanged


@pytest.mark.parametrize("key", ["embeddings.position_ids", "bert.embeddings.position_ids",
                                 "roberta.embeddings.token_type_ids", "h.0.attn.bias", "h.11.attn.masked_bias",
                                 "transformer.h.0.attn.bias", "attn.bias"])
def test_buffers_that_are_not_parameters_are_ignored(key):
    assert is_ignored_buffer(key)


@pytest.mark.parametrize("key", ["h.0.attn.c_attn.bias", "h.0.attn.c_proj.bias", "lm_head.bias", "cls.predictions.bias",
                                 "embeddings.position_embeddings.weight", "encoder.layer.0.attention.self.query.bias"])
def test_parameters_are_not_mistaken_for_buffers(key):
    assert not is_ignored_buffer(key)


@pytest.mark.parametrize("prefix", ["bert", "roberta", "model"])
def test_a_task_models_prefix_is_stripped(prefix):
    model = meta(BertModel)
    file = {f"{prefix}.{k}": s for k, s in shapes_of(model).items()}
    report = match_keys(model, file)
    assert report.ok, report.problems()
    assert report.loaded == {k: f"{prefix}.{k}" for k in shapes_of(model)}
    assert len(report.renamed) == len(file)


@pytest.mark.parametrize("cls, model_type, prefix", [(BertForMaskedLM, "bert", "bert"),
                                                     (RobertaForMaskedLM, "roberta", "roberta")])
def test_bare_keys_get_the_prefix_added_in_a_task_model(cls, model_type, prefix):
    model = meta(cls, model_type)
    bare = shapes_of(meta(RobertaModel if model_type == "roberta" else BertModel, model_type))
    report = match_keys(model, bare)
    assert not report.unexpected and not report.mismatched
    assert report.loaded[f"{prefix}.embeddings.word_embeddings.weight"] == "embeddings.word_embeddings.weight"
    assert set(report.loaded) == {f"{prefix}.{k}" for k in bare}
    head = {k for k in shapes_of(model) if not k.startswith(prefix + ".")}
    assert head and set(report.missing) == head  # the head is what a bare encoder's file lacks


def test_gamma_and_beta_load_as_weight_and_bias():
    model = meta(BertModel)
    file = {"bert." + rename_back(k): s for k, s in shapes_of(model).items()}
    assert "bert.embeddings.LayerNorm.gamma" in file
    report = match_keys(model, file)
    assert report.ok, report.problems()
    assert report.loaded["embeddings.LayerNorm.weight"] == "bert.embeddings.LayerNorm.gamma"
    assert report.loaded["encoder.layer.1.output.LayerNorm.bias"] == "bert.encoder.layer.1.output.LayerNorm.beta"


def rename_back(key: str) -> str:
    """Today's LayerNorm names -> the legacy TensorFlow-era ones."""
    if "LayerNorm" in key:
        return key.replace(".weight", ".gamma").replace(".bias", ".beta")
    return key


def test_gpt2_style_and_position_id_buffers_are_skipped_not_unexpected():
    model = meta(BertModel)
    buffers = {"h.0.attn.bias": (1, 1, 64, 64), "h.0.attn.masked_bias": (), "embeddings.position_ids": (1, 64),
               "embeddings.token_type_ids": (1, 64)}
    report = match_keys(model, {**shapes_of(model), **buffers})
    assert report.ok, report.problems()
    assert set(report.skipped) == set(buffers)
    assert all("buffer" in why for why in report.skipped.values())


def test_a_tied_key_present_in_the_file_is_skipped():
    model = meta(BertForMaskedLM)
    file = shapes_of(model, drop_tied=False)
    assert "cls.predictions.decoder.weight" in file
    report = match_keys(model, file)
    assert report.ok, report.problems()
    assert "cls.predictions.decoder.weight" not in report.loaded
    assert "bert.embeddings.word_embeddings.weight" in report.skipped["cls.predictions.decoder.weight"]


@pytest.mark.parametrize("cls, model_type, bias, alias", [
    (BertForMaskedLM, "bert", "cls.predictions.bias", "cls.predictions.decoder.bias"),
    (RobertaForMaskedLM, "roberta", "lm_head.bias", "lm_head.decoder.bias"),
])
def test_the_decoder_bias_alias(cls, model_type, bias, alias):
    model = meta(cls, model_type)
    file = shapes_of(model)
    # only the alias in the file: it provides the bias
    only_alias = {(alias if k == bias else k): s for k, s in file.items()}
    report = match_keys(model, only_alias)
    assert report.ok, report.problems()
    assert report.loaded[bias] == alias
    # both in the file, in either order: the real name wins, the alias is skipped
    for both in ({**file, alias: file[bias]}, {alias: file[bias], **file}):
        report = match_keys(model, both)
        assert report.ok, report.problems()
        assert report.loaded[bias] == bias
        assert "another name for" in report.skipped[alias]


def test_heads_the_task_does_not_use_are_skipped_with_the_reason():
    # bert-base-uncased's file: encoder, pooler, masked-LM head and next-sentence head
    mlm = shapes_of(meta(BertForMaskedLM))
    extra = {"bert.pooler.dense.weight": (32, 32), "bert.pooler.dense.bias": (32,),
             "cls.seq_relationship.weight": (2, 32), "cls.seq_relationship.bias": (2,)}
    report = match_keys(meta(BertForMaskedLM), {**mlm, **extra})
    assert report.ok, report.problems()
    assert {k: report.skipped[k] for k in extra} == {k: "a head this task does not use" for k in extra}

    base = meta(BertModel)  # the bare encoder skips every head
    heads = {**{k: s for k, s in mlm.items() if k.startswith("cls.")}, "cls.seq_relationship.weight": (2, 32),
             "classifier.weight": (3, 32), "qa_outputs.bias": (2,)}
    report = match_keys(base, {**{f"bert.{k}": s for k, s in shapes_of(base).items()}, **heads})
    assert report.ok, report.problems()
    assert set(report.skipped) == set(heads)
    assert "a head this task does not use" in report.summary()


def test_everything_else_is_unexpected_and_reported_with_missing_and_shapes():
    model = meta(BertModel)
    file = shapes_of(model)
    del file["encoder.layer.1.output.dense.bias"]
    file["encoder.layer.0.extra.weight"] = (3,)
    file["pooler_typo.dense.weight"] = (32, 32)
    file["embeddings.position_embeddings.weight"] = (70, 32)
    report = match_keys(model, file)
    assert not report.ok
    assert report.missing == ["encoder.layer.1.output.dense.bias"]
    assert sorted(report.unexpected) == ["encoder.layer.0.extra.weight", "pooler_typo.dense.weight"]
    assert report.mismatched == [("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight",
                                  (64, 32), (70, 32))]
    problems = report.problems()
    for needle in ("encoder.layer.1.output.dense.bias", "encoder.layer.0.extra.weight", "(64, 32)", "(70, 32)"):
        assert needle in problems


def test_one_prefix_rule_for_the_whole_file():
    """A stray key that only matches with another prefix rule is unexpected, not silently loaded."""
    model = meta(BertModel)
    file = {f"bert.{k}": s for k, s in shapes_of(model).items()}
    file["roberta.embeddings.word_embeddings.weight"] = (100, 32)
    report = match_keys(model, file)
    assert report.unexpected == ["roberta.embeddings.word_embeddings.weight"]
    assert report.loaded["embeddings.word_embeddings.weight"] == "bert.embeddings.word_embeddings.weight"


def test_report_summary_and_problem_limit():
    report = LoadReport(loaded={"a.weight": "bert.a.weight"}, skipped={"x.attn.bias": "a buffer"},
                        missing=[f"m{i}" for i in range(25)])
    summary = report.summary()
    assert summary.startswith("loaded 1 tensors (1 renamed), skipped 1")
    assert "skipped (a buffer): x.attn.bias" in summary
    assert "25 missing" in summary and "... and 5 more" in summary and "m19" in summary and "m20" not in summary


# ------------------------------------------------------------------- readers

@pytest.fixture
def read_spy(monkeypatch):
    """safetensors.safe_open wrapped: records every key whose data is read."""
    import safetensors

    real = safetensors.safe_open
    reads: list[str] = []

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, key):
            return self.inner.get_slice(key)

        def get_tensor(self, key):
            reads.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    return reads


def test_safetensors_shapes_come_from_the_header_and_get_reads_one_tensor(tmp_path, read_spy):
    model = tiny()
    model.save_pretrained(tmp_path)
    with CheckpointReader.from_folder(tmp_path) as reader:
        assert reader.shapes() == shapes_of(model)
        assert len(reader) == len(shapes_of(model)) and "embeddings.word_embeddings.weight" in reader
        assert read_spy == []  # no tensor data touched
        tensor = reader.get("encoder.layer.0.attention.self.query.weight")
        assert read_spy == ["encoder.layer.0.attention.self.query.weight"]
        assert torch.equal(tensor, model.encoder.layer[0].attention.self.query.weight)


@pytest.mark.parametrize("fast", [False, True])
def test_load_model_reads_each_tensor_once(tmp_path, read_spy, monkeypatch, fast):
    model = tiny()
    model.save_pretrained(tmp_path)
    real = CheckpointReader.read_rows

    def read_rows(self, key, start, stop):  # plain file reads (weights the default path stores as columns)
        read_spy.append(key)
        return real(self, key, start, stop)

    monkeypatch.setattr(CheckpointReader, "read_rows", read_rows)
    load_model(tmp_path, fast=fast)
    assert sorted(read_spy) == sorted(shapes_of(model))


def test_bin_reader_returns_equal_tensors(tmp_path):
    state = tiny().state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with CheckpointReader.from_folder(tmp_path) as reader:
        assert reader.shapes() == {k: tuple(v.shape) for k, v in state.items()}
        for key, value in state.items():
            assert torch.equal(reader.get(key), value)


def split(state: dict, parts: int) -> list[dict]:
    keys = list(state)
    return [{k: state[k] for k in keys[i::parts]} for i in range(parts)]


def write_sharded(folder: Path, state: dict, fmt: str, parts: int = 3) -> None:
    from safetensors.torch import save_file

    weight_map = {}
    for i, shard in enumerate(split(state, parts), start=1):
        name = (f"model-{i:05d}-of-{parts:05d}.safetensors" if fmt == "safetensors"
                else f"pytorch_model-{i:05d}-of-{parts:05d}.bin")
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in shard.items()}, str(folder / name))
        else:
            torch.save(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = ckpt.SAFETENSORS_INDEX if fmt == "safetensors" else ckpt.BIN_INDEX
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints(tmp_path, fmt):
    model = tiny(BertForMaskedLM, seed=3)
    model.save_pretrained(tmp_path / "single")  # for config.json
    folder = tmp_path / fmt
    folder.mkdir()
    (folder / "config.json").write_bytes((tmp_path / "single" / "config.json").read_bytes())
    state = {k: v for k, v in model.state_dict().items() if k not in model.tied_weights}
    write_sharded(folder, state, fmt)
    assert len(weight_files(folder)) == 3
    with CheckpointReader.from_folder(folder) as reader:
        assert sorted(reader.keys()) == sorted(state)
        assert all(torch.equal(reader.get(k), v) for k, v in state.items())
    loaded = load_model(folder, task="masked-lm", fast=False)
    ids, mask = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_safetensors_is_preferred_over_bin(tmp_path):
    tiny().save_pretrained(tmp_path)
    torch.save({}, tmp_path / "pytorch_model.bin")
    assert weight_files(tmp_path) == [tmp_path / "model.safetensors"]


def test_old_torch_save_format_falls_back_to_loading_without_mmap(tmp_path, monkeypatch):
    model = tiny(seed=4)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    real_load, calls = torch.load, []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        assert kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(tmp_path)
    assert calls == [True, False]  # the mmap attempt fails on a pre-zip file, then a plain load
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


# ------------------------------------------------------------------- load_model

@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16")
    model = tiny(seed=5).half()
    model.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    return folder, model.state_dict()


@pytest.mark.parametrize("dtype, expected", [(None, torch.float32), ("auto", torch.float16),
                                             ("bfloat16", torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                                             ("float32", torch.float32)])
def test_dtype_at_load(fp16_folder, dtype, expected):
    folder, state = fp16_folder
    model = load_model(folder, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(expected)), key


def test_loaded_model_is_complete_in_eval_mode_and_computes_the_same(tmp_path):
    model = tiny(RobertaForMaskedLM, "roberta", seed=6)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, task="masked-lm", fast=False)
    assert type(loaded) is RobertaForMaskedLM and not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    assert loaded.lm_head.decoder.weight is loaded.roberta.embeddings.word_embeddings.weight  # tied again
    ids, mask = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert loaded.load_report.ok and len(loaded.load_report.loaded) == len(shapes_of(model))


@pytest.mark.parametrize("with_pooler", [True, False])
def test_the_pooler_is_kept_when_the_file_has_one(tmp_path, with_pooler):
    model = tiny(add_pooling_layer=with_pooler)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert (loaded.pooler is not None) == with_pooler
    if with_pooler:
        assert torch.equal(loaded.pooler.dense.weight, model.pooler.dense.weight)


def test_summary_names_the_skipped_keys(tmp_path):
    mlm = tiny(BertForMaskedLM)
    state = {f"bert.{k}" if not k.startswith(("bert.", "cls.")) else k: v for k, v in mlm.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    mlm.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items() if k != "cls.predictions.decoder.weight"},
              str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path)  # task auto = base: the masked-LM head is skipped
    assert type(loaded) is BertModel
    summary = loaded.load_report.summary()
    assert "skipped (a head this task does not use): cls.predictions.bias" in summary
    assert "skipped (a buffer, not a parameter: recomputed): bert.embeddings.position_ids" in summary
    assert torch.equal(loaded.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)


def test_a_folder_as_path_or_str(tmp_path):
    tiny().save_pretrained(tmp_path)
    a, b = load_model(tmp_path), load_model(str(tmp_path))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_load_from_a_fake_hub_cache_with_hf_home_set_at_call_time(hf_home):
    model = tiny(seed=7)
    model.save_pretrained(fake_hub_snapshot(hf_home / "hub", "org/tiny-bert", refs=("main", "v1")))
    ids, mask = tokens()
    for revision in (None, "v1", COMMIT):
        loaded = load_model("org/tiny-bert", revision=revision, fast=False)
        with torch.no_grad():
            assert torch.equal(loaded(ids, mask), model(ids, mask)), revision


def test_load_a_bin_only_repo_from_the_hub_cache(hf_home):
    model = tiny(seed=8)
    snapshot = fake_hub_snapshot(hf_home / "hub", "org/old-bert")
    model.save_pretrained(snapshot)
    (snapshot / "model.safetensors").unlink()
    torch.save({f"bert.{k}": v for k, v in model.state_dict().items()}, snapshot / "pytorch_model.bin")
    loaded = load_model("org/old-bert")
    assert len(loaded.load_report.renamed) == len(shapes_of(model))
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


# ------------------------------------------------------------------- saving

def test_save_stores_tied_weights_once_and_reloads_equal(tmp_path):
    model = tiny(BertForMaskedLM, seed=9)
    folder = save_checkpoint(model, tmp_path / "out")
    with CheckpointReader.from_folder(folder) as reader:
        keys = set(reader.keys())
    assert "cls.predictions.decoder.weight" not in keys
    assert keys == set(shapes_of(model))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["dtype"] == "float32"
    assert config["model_type"] == "bert" and config["hidden_size"] == 32
    loaded = load_model(folder, task="masked-lm")
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_an_interrupted_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    import safetensors.torch

    tiny(seed=10).save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(OSError, match="No space left"):
        tiny(seed=11).save_pretrained(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files (no temporary left behind), same bytes
    monkeypatch.undo()
    assert load_model(tmp_path).load_report.ok


def test_a_failure_after_the_weights_leaves_no_new_weights_beside_the_old_config(tmp_path, monkeypatch):
    """The config is written after the weights: failing there must not leave the new weights in place."""
    tiny(seed=10).save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_write_text(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="No space left"):
        tiny(seed=11).save_pretrained(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ------------------------------------------------------------------- chapter 05's exercise references:
# the safetensors format by hand, tied groups, shard plans (safetensors, huggingface_hub and
# transformers are the oracles)

ALL_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def every_dtype(seed: int = 0) -> dict[str, torch.Tensor]:
    """One tensor per safetensors dtype, plus a scalar and an empty tensor."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (name, dtype) in enumerate(ALL_DTYPES.items()):
        shape = (3, i % 4 + 1)
        if dtype == torch.bool:
            tensors[name] = torch.rand(shape, generator=g) < 0.5
        elif dtype.is_floating_point:
            tensors[name] = (torch.randn(shape, generator=g) * 100).to(dtype)
        else:
            tensors[name] = torch.randint(0 if dtype == torch.uint8 else -100, 100, shape, generator=g).to(dtype)
    tensors["scalar"] = torch.tensor(-2.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.empty(0, 4)
    return tensors


@pytest.mark.parametrize("metadata", [None, {"format": "pt", "note": "x"}])
def test_read_safetensors_header_matches_safetensors(tmp_path, metadata):
    from safetensors import safe_open
    from safetensors.torch import save, save_file

    tensors = every_dtype()
    data = save(tensors, metadata=metadata)
    toc = ckpt.read_safetensors_header(data)
    assert "__metadata__" not in toc and set(toc) == set(tensors)
    save_file(tensors, tmp_path / "t.safetensors", metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    with safe_open(tmp_path / "t.safetensors", framework="pt") as f:
        for name, (dtype, shape, (start, end)) in toc.items():
            assert (dtype, shape) == (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape()))
            assert isinstance(start, int) and end - start == tensors[name].nbytes
            raw = tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensors[name].numel() \
                else b""
            assert data[8 + n + start:8 + n + end] == raw  # offsets count from the end of the header
    assert toc == ckpt.read_safetensors_header(data[:8 + n])  # the header alone is enough


def test_tensor_nbytes_is_torchs_nbytes():
    for name, dtype in ALL_DTYPES.items():
        for shape in ([], [0], [3, 0, 2], [7], [30522, 384], [2, 3, 4]):
            assert ckpt.tensor_nbytes(shape, name) == torch.empty(shape, dtype=dtype, device="meta").nbytes
    assert ckpt.tensor_nbytes([30522, 384], "BF16") == 23_440_896
    with pytest.raises(ValueError, match="F8"):
        ckpt.tensor_nbytes([2], "F8")


def test_read_safetensors_tensor_matches_safetensors():
    from safetensors.torch import load, save

    tensors = every_dtype(seed=3)
    data = save(tensors)
    loaded = load(data)
    for name, expected in loaded.items():
        got = ckpt.read_safetensors_tensor(data, name)
        assert got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected), name
    assert ckpt.read_safetensors_tensor(data, "scalar").shape == ()
    with pytest.raises(KeyError, match="nothing"):
        ckpt.read_safetensors_tensor(data, "nothing")
    with pytest.raises(ckpt.CorruptCheckpointError, match="F32"):  # a truncated file
        ckpt.read_safetensors_tensor(save({"w": torch.ones(4)})[:-1], "w")


def test_read_safetensors_tensor_of_a_real_file():
    from course_lib.assets import asset_path

    path = asset_path("all-MiniLM-L6-v2") / "model.safetensors"
    data = path.read_bytes()
    with CheckpointReader([path]) as reader:
        for name in ("embeddings.position_ids", "encoder.layer.5.output.LayerNorm.bias", "pooler.dense.weight"):
            got = ckpt.read_safetensors_tensor(data, name)
            assert got.dtype == reader.dtype(name) and torch.equal(got, reader.get(name))


def test_read_safetensors_tensor_swaps_bytes_on_a_big_endian_machine(monkeypatch):
    from safetensors.torch import save

    data = save({"w": torch.tensor([1.0, -2.0], dtype=torch.bfloat16), "i": torch.tensor([1, 256], dtype=torch.int16),
                 "b": torch.tensor([True, False])})
    monkeypatch.setattr(ckpt.sys, "byteorder", "big")  # on this (little-endian) machine: the bytes come out swapped
    assert ckpt.read_safetensors_tensor(data, "i").tolist() == [256, 1]
    swapped = torch.from_numpy(torch.tensor([1.0, -2.0], dtype=torch.bfloat16).view(torch.int16).numpy().byteswap())
    assert torch.equal(ckpt.read_safetensors_tensor(data, "w").view(torch.int16), swapped)
    assert ckpt.read_safetensors_tensor(data, "b").tolist() == [True, False]  # one byte: nothing to swap


def test_tied_groups_finds_one_tensor_under_two_names():
    for cls, model_type in ((BertForMaskedLM, "bert"), (RobertaForMaskedLM, "roberta")):
        model = tiny(cls, model_type)
        assert ckpt.tied_groups(model.state_dict()) == [sorted(next(iter(model.tied_weights.items())))]
    w = torch.randn(4, 4)
    state = {"w": w, "detached": w.detach(), "view": w.view(4, 4), "row": w[0], "slice": w[1:], "t": w.t(),
             "copy": w.clone(), "equal": torch.zeros(3), "zeros": torch.zeros(3), "e1": torch.empty(0, 4),
             "e2": torch.empty(0, 4)}
    assert ckpt.tied_groups(state) == [["detached", "view", "w"]]
    assert ckpt.tensor_identity(w) == ckpt.tensor_identity(w.detach()) != ckpt.tensor_identity(w.t())


def _hub_index(state, max_shard_size):
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    return {"metadata": split.metadata, "weight_map": split.tensor_to_filename}


@pytest.mark.parametrize("seed", range(4))
def test_shard_index_is_huggingface_hubs_plan(seed):
    g = torch.Generator().manual_seed(seed)
    dtypes = [torch.float32, torch.float16, torch.int8, torch.int64]
    for case in range(40):
        n = int(torch.randint(1, 12, (), generator=g))
        state = {f"layer.{i}.weight": torch.zeros(int(torch.randint(1, 300, (), generator=g)),
                                                  dtype=dtypes[int(torch.randint(0, 4, (), generator=g))])
                 for i in range(n)}
        limit = [int(torch.randint(1, 1500, (), generator=g)), "1KB", "0.5kb", "1.5KB", "2KB"][case % 5]
        assert ckpt.shard_index(state, limit) == _hub_index(state, limit), (state, limit)


def test_shard_index_example_and_edge_cases():
    state = {"a": torch.zeros(100), "b": torch.zeros(50), "c": torch.zeros(300), "d": torch.zeros(100)}
    index = ckpt.shard_index(state, "0.6KB")
    assert index == {"metadata": {"total_size": 2200},
                     "weight_map": {"c": "model-00001-of-00003.safetensors", "a": "model-00002-of-00003.safetensors",
                                    "b": "model-00002-of-00003.safetensors", "d": "model-00003-of-00003.safetensors"}}
    assert index == _hub_index(state, "0.6KB")
    assert set(ckpt.shard_index(state, 10**6)["weight_map"].values()) == {"model.safetensors"}
    assert ckpt.shard_index(state, 600) == index  # an exact fit is not over the limit
    with pytest.raises(ValueError, match="GiB"):
        ckpt.shard_index(state, "1GiB")


def test_shard_index_is_what_transformers_save_pretrained_writes(tmp_path):
    tf = pytest.importorskip("transformers")
    config = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = tf.BertModel(config)
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    written = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(written["weight_map"].values())) > 2  # really sharded
    ours = ckpt.shard_index(model.state_dict(), "30KB")
    assert ours["weight_map"] == written["weight_map"]
    assert ours["metadata"]["total_size"] == written["metadata"]["total_size"]
    with CheckpointReader.from_folder(tmp_path) as reader:  # and the course's loader reads the shards
        assert sorted(reader.keys()) == sorted(ours["weight_map"])
