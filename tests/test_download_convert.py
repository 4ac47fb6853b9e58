"""The two command-line tools of chapter 05, called through ``main(argv)``.

- ``python -m course_lib.convert SRC DST``: ``pytorch_model.bin`` -> ``model.safetensors``;
- ``python -m course_lib.download MODEL... --to DIR``: the workshop pre-fetch. No test
  touches the network: ``huggingface_hub.snapshot_download`` is replaced by a fake that
  writes a tiny model's files into the Hub cache layout, as the real one does.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

import pytest
import torch

from course_lib import convert, download, hub
from course_lib.checkpoint import BIN_FILES, CheckpointReader
from course_lib.loading import load_model
from course_lib.models.encoder import BertForMaskedLM, BertModel, EncoderConfig
from helpers import COMMIT, fake_hub_snapshot



def tiny_config() -> EncoderConfig:
    return EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=100, max_position_embeddings=64)


def legacy_name(key: str) -> str:
    """Today's LayerNorm names -> the TensorFlow-era ones some published .bin files still use."""
    if "LayerNorm" in key:
        return key.replace(".weight", ".gamma").replace(".bias", ".beta")
    return key


def same_outputs(a, b) -> bool:
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(ids), b(ids))


# ===================================================================== convert

@pytest.fixture(scope="module")
def legacy_bin(tmp_path_factory):
    """An old-style folder: pytorch_model.bin with gamma/beta, position_ids, a tied copy; config, tokenizer."""
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config()).eval()
    folder = tmp_path_factory.mktemp("legacy")
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state = {legacy_name(k): v for k, v in model.state_dict().items()}  # decoder.weight: same storage as the embedding
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder, model


def test_convert_writes_safetensors_with_todays_names(legacy_bin, tmp_path, capsys):
    src, model = legacy_bin
    dst = tmp_path / "converted"
    assert convert.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {dst / 'model.safetensors'}" in out and "read back and compared" in out
    assert "renamed" in out and "dropped bert.embeddings.position_ids (buffer)" in out
    assert "dropped cls.predictions.decoder.weight (same tensor as bert.embeddings.word_embeddings.weight)" in out
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json",
                                                     "vocab.txt"]
    assert (dst / "config.json").read_bytes() == (src / "config.json").read_bytes()
    expected = {k: v for k, v in model.state_dict().items() if k != "cls.predictions.decoder.weight"}
    with CheckpointReader.from_folder(dst) as reader:
        keys = reader.keys()
        assert not [k for k in keys if k.endswith((".gamma", ".beta")) or "position_ids" in k]
        assert sorted(keys) == sorted(expected)
        for key, value in expected.items():
            assert torch.equal(reader.get(key), value), key
    loaded = load_model(dst, task="masked-lm", fast=False)
    assert loaded.load_report.ok and not loaded.load_report.renamed and not loaded.load_report.skipped
    assert same_outputs(loaded, model)


def test_convert_a_single_bin_file(legacy_bin, tmp_path):
    src, _ = legacy_bin
    assert convert.main([str(src / "pytorch_model.bin"), str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.safetensors"]  # nothing copied from a file


def test_convert_refuses_to_write_into_its_source(legacy_bin, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(legacy_bin[0], src)
    before = sorted(p.name for p in src.iterdir())
    for dst in (src, src / ".", src / ".." / src.name):
        assert convert.main([str(src), str(dst)]) == 1
        assert "write the converted model to a new folder" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == before


def test_convert_a_missing_source(tmp_path, capsys):
    assert convert.main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{tmp_path / 'nope'} does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_convert_a_folder_without_weights(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    assert convert.main([str(tmp_path / "src"), str(tmp_path / "out")]) == 1
    assert "no weights in" in capsys.readouterr().err


class TouchMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_convert_refuses_an_unsafe_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.zeros(2), "x": TouchMarker(marker)}, src / "pytorch_model.bin")
    assert convert.main([str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "refused to load" in err and "Nothing from it was executed" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def another_checkpoint(tmp_path) -> Path:
    """A DST that already holds another model: config, weights, a sharded leftover, a tokenizer, the user's notes."""
    torch.manual_seed(1)
    dst = tmp_path / "dst"
    BertModel(EncoderConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                            vocab_size=100, max_position_embeddings=64)).save_pretrained(dst)
    (dst / "model-00001-of-00002.safetensors").write_bytes(b"a stale shard")
    (dst / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (dst / "tokenizer.json").write_text("{}")
    (dst / "notes.md").write_text("mine")
    return dst


def test_convert_refuses_a_destination_holding_another_checkpoint(legacy_bin, another_checkpoint, capsys):
    before = folder_bytes(another_checkpoint)
    assert convert.main([str(legacy_bin[0]), str(another_checkpoint)]) == 1
    err = capsys.readouterr().err
    for needle in ("error: convert:", "already holds another checkpoint", "hidden_size: 64 there, 32 here",
                   "--overwrite", "tokenizer.json", "Nothing was written"):
        assert needle in err, (needle, err)
    assert folder_bytes(another_checkpoint) == before  # nothing replaced, nothing added


def test_convert_overwrite_replaces_it_and_removes_its_stale_files(legacy_bin, another_checkpoint, capsys):
    src, model = legacy_bin
    assert convert.main([str(src), str(another_checkpoint), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "removed the old checkpoint's model-00001-of-00002.safetensors, model.safetensors.index.json, " \
           "tokenizer.json (--overwrite)" in out
    assert sorted(p.name for p in another_checkpoint.iterdir()) == ["config.json", "model.safetensors", "notes.md",
                                                                    "tokenizer_config.json", "vocab.txt"]
    assert (another_checkpoint / "notes.md").read_text() == "mine"
    assert same_outputs(load_model(another_checkpoint, task="masked-lm", fast=False), model)


def test_convert_again_into_its_own_earlier_output_needs_no_flag(legacy_bin, tmp_path):
    dst = tmp_path / "out"
    assert convert.main([str(legacy_bin[0]), str(dst)]) == 0
    first = folder_bytes(dst)
    assert convert.main([str(legacy_bin[0]), str(dst)]) == 0  # the same model: a re-run, not another checkpoint
    assert folder_bytes(dst) == first


def test_convert_into_a_file_or_an_unrelated_folder(legacy_bin, tmp_path, capsys):
    (tmp_path / "out.safetensors").write_bytes(b"precious")
    assert convert.main([str(legacy_bin[0]), str(tmp_path / "out.safetensors")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "out.safetensors").read_bytes() == b"precious"
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.md").write_text("mine")
    assert convert.main([str(legacy_bin[0]), str(unrelated)]) == 0  # only the user's files: written beside them
    assert (unrelated / "notes.md").read_text() == "mine" and (unrelated / "model.safetensors").is_file()


def test_convert_writes_ordinary_permissions_and_leaves_no_temporary_files(legacy_bin, tmp_path):
    old = os.umask(0o022)
    try:
        assert convert.main([str(legacy_bin[0]), str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert not [n for n in names if n.startswith(".")]
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_convert_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        convert.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and "--overwrite" in out and "pytorch_model.bin" in out


def test_convert_without_arguments_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        convert.main([])
    assert exit_.value.code == 2
    assert "usage: python -m course_lib.convert" in capsys.readouterr().err


# ===================================================================== download

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[dict[str, bytes], BertModel]:
    """A tiny BERT's files as a Hub repository holds them (safetensors, config, tokenizer)."""
    torch.manual_seed(1)
    model = BertModel(tiny_config()).eval()
    folder = tmp_path_factory.mktemp("repo")
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["README.md"] = b"# a model card: not needed, never fetched\n"
    files["tf_model.h5"] = b"TensorFlow weights: not needed, never fetched"
    return files, model


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Online, with snapshot_download replaced: it writes a repo's files that match allow_patterns
    into cache_dir in the Hub cache layout, and records each call."""
    import huggingface_hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "default-hf-home"))
    repos: dict[str, dict[str, bytes]] = {}
    calls: list[dict] = []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, cache_dir=None, local_files_only=False,
                          **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": list(allow_patterns),
                      "cache_dir": cache_dir, "local_files_only": local_files_only})
        if repo_id not in repos:
            raise ConnectionError("connection reset by peer")
        wanted = {name: data for name, data in repos[repo_id].items()
                  if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns)}
        snapshot = fake_hub_snapshot(Path(cache_dir), repo_id, wanted, refs=(revision or "main",))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repos, calls


def offline_home(monkeypatch, home: Path) -> None:
    """What the README tells a laptop to do: HF_HOME=DIR, HF_HUB_OFFLINE=1 (and the real snapshot_download)."""
    monkeypatch.undo()  # the real snapshot_download again
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)


def test_download_then_load_offline_from_that_folder(fake_hub, tiny_files, tmp_path, monkeypatch, capsys):
    repos, calls = fake_hub
    files, model = tiny_files
    repos["org/m"] = files
    usb = tmp_path / "usb-stick"
    assert download.main(["org/m", "--to", str(usb)]) == 0
    out = capsys.readouterr().out
    assert "==> org/m" in out and "1 of 1 models" in out
    assert f"export HF_HOME=/path/to/{usb.name}" in out and "export HF_HUB_OFFLINE=1" in out
    assert calls == [{"repo_id": "org/m", "revision": None, "allow_patterns": hub.DEFAULT_FILES,
                      "cache_dir": str(usb / "hub"), "local_files_only": False}]
    snapshot = usb / "hub" / "models--org--m" / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]

    offline_home(monkeypatch, usb)
    loaded = load_model("org/m", fast=False)
    assert loaded.load_report.ok and same_outputs(loaded, model)
    from course_lib import load_tokenizer

    assert load_tokenizer("org/m").token_to_id("[CLS]") == 2


def test_a_repo_without_safetensors_fetches_the_bin_files(fake_hub, tiny_files, tmp_path, monkeypatch, capsys):
    repos, calls = fake_hub
    files, model = tiny_files
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save({f"bert.{k}": v for k, v in model.state_dict().items()}, bin_path)
    repos["org/old"] = {**{k: v for k, v in files.items() if k != "model.safetensors"},
                        "pytorch_model.bin": bin_path.read_bytes()}
    usb = tmp_path / "usb"
    assert download.main(["org/old", "--to", str(usb)]) == 0
    assert [c["allow_patterns"] for c in calls] == [hub.DEFAULT_FILES, hub.CONFIG_FILES + BIN_FILES]
    assert "pytorch_model.bin" in capsys.readouterr().out

    offline_home(monkeypatch, usb)
    loaded = load_model("org/old", fast=False)
    assert same_outputs(loaded, model)


def test_download_refuses_when_offline_is_set(fake_hub, tiny_files, tmp_path, monkeypatch, capsys):
    repos, calls = fake_hub
    repos["org/m"] = tiny_files[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download.main(["org/m", "--to", str(tmp_path / "usb")]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "downloading needs the network" in err and "unset HF_HUB_OFFLINE" in err
    assert calls == []


def test_a_failing_model_does_not_stop_the_others(fake_hub, tiny_files, tmp_path, capsys):
    repos, calls = fake_hub
    repos["org/m"] = tiny_files[0]
    repos["org/no-weights"] = {"config.json": tiny_files[0]["config.json"], "README.md": b"card"}
    usb = tmp_path / "usb"
    assert download.main(["org/broken", "org/no-weights", "org/m", "--to", str(usb)]) == 1
    captured = capsys.readouterr()
    assert "could not fetch model 'org/broken'" in captured.err and "connection reset by peer" in captured.err
    assert "no weights in" in captured.err and "Traceback" not in captured.err
    assert "failed: org/broken org/no-weights" in captured.err
    assert "1 of 3 models" in captured.out
    assert (usb / "hub" / "models--org--m" / "snapshots" / COMMIT / "model.safetensors").is_file()


def test_all_revision_and_the_default_cache(fake_hub, tiny_files, tmp_path, capsys):
    repos, calls = fake_hub
    for name in download.COURSE_MODELS + ["org/extra"]:
        repos[name] = tiny_files[0]
    assert download.main(["org/extra", "gpt2", "--all", "--revision", "v1"]) == 0
    assert [c["repo_id"] for c in calls] == ["org/extra"] + download.COURSE_MODELS  # gpt2 once
    assert {c["revision"] for c in calls} == {"v1"}
    default_cache = tmp_path / "default-hf-home" / "hub"  # no --to: this machine's cache, from HF_HOME now
    assert {c["cache_dir"] for c in calls} == {str(default_cache)}
    out = capsys.readouterr().out
    assert f"{len(calls)} of {len(calls)} models in {default_cache}" in out
    assert "export HF_HOME" not in out  # already this machine's cache: nothing to copy


def test_download_without_models_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        download.main([])
    assert exit_.value.code == 2
    assert "name at least one model" in capsys.readouterr().err


def test_chapter_09_models_and_their_optional_chat_template(fake_hub, tiny_files, tmp_path, monkeypatch, capsys):
    """The SmolLM2 / Qwen2.5 pairs are course models; an -Instruct repository's chat_template.jinja and
    generation_config.json come with it, and a base repository without them downloads just as well."""
    from course_lib.chat_template import ChatTemplateError, apply_chat_template, read_chat_template

    for name in ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B",
                 "Qwen/Qwen2.5-0.5B-Instruct"):
        assert name in download.COURSE_MODELS
    assert {"chat_template.jinja", "chat_template.json", "generation_config.json"} <= set(hub.DEFAULT_FILES)
    repos, calls = fake_hub
    files, model = tiny_files
    repos["org/base"] = dict(files)
    repos["org/chat"] = {**files, "chat_template.jinja": b"{{ bos_token }}[{{ messages[0].content }}]",
                         "generation_config.json": b'{"eos_token_id": [2, 3]}',
                         "tokenizer_config.json": b'{"bos_token": "[CLS]", "eos_token": "[SEP]"}'}
    usb = tmp_path / "usb"
    assert download.main(["org/base", "org/chat", "--to", str(usb)]) == 0
    snapshots = usb / "hub" / "models--org--{}" / "snapshots" / COMMIT
    assert sorted(p.name for p in Path(str(snapshots).format("chat")).iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json",
        "vocab.txt"]
    assert not (Path(str(snapshots).format("base")) / "chat_template.jinja").exists()

    offline_home(monkeypatch, usb)
    assert hub.cached_snapshot("org/chat") == Path(str(snapshots).format("chat"))
    assert hub.cached_snapshot("org/chat", required=("config.json", ("model.safetensors", "x.index.json")))
    assert hub.cached_snapshot("org/chat", required=("tokenizer.json",)) is None  # a file it does not hold
    assert hub.cached_snapshot("org/never-downloaded") is None  # offline, and no network was asked
    assert apply_chat_template([{"role": "user", "content": "hi"}], tokenizer_folder="org/chat") == "[CLS][hi]"
    with pytest.raises(ChatTemplateError, match="base model"):
        read_chat_template("org/base")
