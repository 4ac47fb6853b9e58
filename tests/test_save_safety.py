"""Saving never loses a file or leaves one behind: ``save_pretrained``, ``convert`` and ``write_atomic``.

- all or nothing: a save killed (``kill -9``) while writing leaves the folder as it was, and
  the next save or load of the folder removes the debris; one killed after it was complete
  (among its renames) is finished by the next load, never new weights beside an old config;
- another model's checkpoint is never replaced without ``overwrite=True``, and with it that
  checkpoint's stale files (shards, index, tokenizer) go, the user's other files stay;
- saved files get ordinary permissions (0644 under the usual umask), not ``mkstemp``'s 0600.

Tiny models made by the course's own classes; the killed saves run in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course_lib import checkpoint as ckpt
from course_lib.checkpoint import CheckpointExistsError, NotAFolderError, recover_folder, write_atomic
from course_lib.loading import load_model
from course_lib.models.encoder import BertModel, EncoderConfig


def tiny(hidden: int = 32, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(EncoderConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=64)).eval()


def files(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (hidden ones too) -> its bytes (b"<dir>" for a folder)."""
    return {p.name: (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.iterdir())}


def child_env() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's course_lib, wherever pytest runs from."""
    root = str(Path(ckpt.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}


def same_weights(a, b) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and \
        all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------ kill -9 in the middle of a save

CHILD = r"""
import os, sys, time
import torch
import safetensors.torch
from course_lib.models.encoder import BertModel, EncoderConfig

folder, when, ready = sys.argv[1], sys.argv[2], sys.argv[3]
real_save, real_replace, calls = safetensors.torch.save_file, os.replace, []

def stop_here():
    open(ready, "w").close()  # tell the parent where we are, then wait to be killed
    time.sleep(120)

def save_file(state, path, metadata=None):
    if when == "mid-write":  # half a weight file on disk
        with open(path, "wb") as f:
            f.write(b"\0" * 4_000_000)
            f.flush()
        stop_here()
    real_save(state, path, metadata=metadata)

def replace(a, b):
    calls.append(b)
    if when == "mid-commit" and len(calls) == 3:  # the journal and model.safetensors are in place, not config.json
        stop_here()
    real_replace(a, b)

safetensors.torch.save_file = save_file
os.replace = replace
torch.manual_seed(1)
model = BertModel(EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                vocab_size=100, max_position_embeddings=64))
model.save_pretrained(folder, overwrite=True)
"""


def killed_save(folder: Path, when: str, tmp_path: Path) -> None:
    """Run a save of ``tiny(seed=1)`` into ``folder`` in a child process and ``kill -9`` it at ``when``."""
    ready = tmp_path / f"ready-{when}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), when, str(ready)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env())
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                pytest.fail(f"the child save never reached the point where it is killed: "
                            f"{child.communicate()[0].decode()}")
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()  # reaped: its pid no longer runs
    assert child.returncode == -signal.SIGKILL


def debris(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()
            if p.name.startswith(ckpt.SAVE_DIR_PREFIX) or ckpt.TEMP_FILE_MARK in p.name]


@pytest.mark.skipif(os.name != "posix", reason="kill -9 and signal 0 are POSIX")
@pytest.mark.parametrize("then", ["load", "save"])
def test_a_save_killed_mid_write_leaves_the_old_checkpoint_and_no_debris(tmp_path, then):
    folder = tmp_path / "model"
    old = tiny(seed=0)
    old.save_pretrained(folder)
    before = files(folder)
    killed_save(folder, "mid-write", tmp_path)
    left = debris(folder)
    assert len(left) == 1 and (folder / left[0] / "model.safetensors").stat().st_size == 4_000_000  # the test has teeth
    assert {k: v for k, v in files(folder).items() if k not in left} == before  # the old checkpoint untouched
    if then == "load":
        assert same_weights(load_model(folder), old)
        assert files(folder) == before
    else:
        new = tiny(seed=2)
        new.save_pretrained(folder)
        assert debris(folder) == [] and sorted(files(folder)) == ["config.json", "model.safetensors"]
        assert same_weights(load_model(folder), new)


@pytest.mark.skipif(os.name != "posix", reason="kill -9 and signal 0 are POSIX")
def test_a_save_killed_among_its_renames_is_finished_by_the_next_load(tmp_path):
    folder = tmp_path / "model"
    tiny(hidden=64).save_pretrained(folder)  # another model: the child saves with overwrite=True
    (folder / "tokenizer.json").write_text("{}")  # the old model's: the save removes it
    old_config = (folder / "config.json").read_bytes()
    killed_save(folder, "mid-commit", tmp_path)
    # the state a kill between two renames leaves: new weights beside the old config, which loads nothing
    assert (folder / "config.json").read_bytes() == old_config and len(debris(folder)) == 1
    with pytest.raises(ckpt.StateDictMismatchError):  # without recovery: hidden_size 64 config, 32 weights
        _load_without_recovery(folder)
    loaded = load_model(folder)  # recovers first: the journal says the save was complete
    assert debris(folder) == [] and sorted(files(folder)) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 32
    assert same_weights(loaded, tiny(seed=1))


def _load_without_recovery(folder: Path):
    """What a loader that does not recover would see: the old config with the new weights."""
    from unittest import mock

    with mock.patch("course_lib.loading.recover_folder", lambda f: []):
        return load_model(folder)


def test_recovery_leaves_a_running_saves_temporary_folder_alone(tmp_path):
    folder = tmp_path / "model"
    tiny().save_pretrained(folder)
    mine = folder / f"{ckpt.SAVE_DIR_PREFIX}{os.getpid()}-abcd"  # this process: still running
    mine.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = folder / f"{ckpt.SAVE_DIR_PREFIX}{sleeper.pid}-abcd"
        theirs.mkdir()
        assert recover_folder(folder) == [] and mine.is_dir() and theirs.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert recover_folder(folder) == [theirs.name] and not theirs.exists()  # its process is gone now
    mine.rmdir()


@pytest.mark.skipif(os.name != "posix", reason="kill -9 and signal 0 are POSIX")
def test_write_atomic_killed_mid_write_is_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint.safetensors"
    ready = tmp_path / "ready"
    code = (f"import time, pathlib\nfrom course_lib.checkpoint import write_atomic\n"
            f"def write(p):\n    p.write_bytes(b'x' * 1000)\n    pathlib.Path({str(ready)!r}).touch()\n"
            f"    time.sleep(120)\nwrite_atomic(pathlib.Path({str(target)!r}), write)\n")
    child = subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                pytest.fail(f"the child never reached its write: {child.communicate()[0].decode()}")
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = [p.name for p in tmp_path.iterdir() if ckpt.TEMP_FILE_MARK in p.name]
    assert len(left) == 1 and left[0].startswith(".checkpoint.safetensors.")  # the kill left its temporary file
    write_atomic(target, lambda p: p.write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "ready"]
    assert target.read_text() == "new"


def test_write_atomic_keeps_a_running_writers_file_and_recover_folder_removes_dead_ones(tmp_path):
    target = tmp_path / "x.json"
    live = tmp_path / f".x.json{ckpt.TEMP_FILE_MARK}{os.getpid()}-0000"
    dead = tmp_path / f".y.json{ckpt.TEMP_FILE_MARK}999999999-0000"  # no such process
    live.write_text("in progress")
    dead.write_text("debris")
    write_atomic(target, lambda p: p.write_text("{}"))
    assert live.exists() and dead.exists()  # another target's debris is recover_folder's job
    assert recover_folder(tmp_path) == [dead.name] and live.exists()


# ------------------------------------------------------------------ exceptions

def test_a_failing_save_into_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(state, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tiny().save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_an_unserialisable_config_fails_before_anything_is_written(tmp_path):
    model = tiny()
    model.config.extra["note"] = object()
    with pytest.raises(TypeError):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ another checkpoint in the folder

@pytest.fixture
def hub_style_folder(tmp_path) -> Path:
    """Another model's folder as transformers writes it: sharded weights, index, tokenizer files, a model card."""
    folder = tmp_path / "other"
    tiny(hidden=64).save_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).write_text(name)
    (folder / "README.md").write_text("the model card")
    (folder / "my-notes.txt").write_text("mine")
    return folder


def test_another_checkpoint_is_refused_and_left_byte_for_byte(hub_style_folder):
    before = files(hub_style_folder)
    with pytest.raises(CheckpointExistsError) as err:
        tiny().save_pretrained(hub_style_folder)
    message = str(err.value)
    for needle in ("already holds another checkpoint", "hidden_size: 64 there, 32 here", "overwrite=True",
                   "model.safetensors.index.json", "tokenizer.json", "Nothing was written"):
        assert needle in message, (needle, message)
    assert files(hub_style_folder) == before
    assert isinstance(err.value, FileExistsError)


def test_overwrite_removes_the_stale_checkpoint_and_keeps_the_users_files(hub_style_folder):
    model = tiny()
    model.save_pretrained(hub_style_folder, overwrite=True)
    assert sorted(files(hub_style_folder)) == ["README.md", "config.json", "model.safetensors", "my-notes.txt"]
    assert (hub_style_folder / "my-notes.txt").read_text() == "mine"
    assert same_weights(load_model(hub_style_folder), model)
    from course_lib.tokenizer_loading import load_tokenizer

    with pytest.raises(Exception):  # the other model's tokenizer is gone, not silently reused
        load_tokenizer(hub_style_folder)


def test_re_saving_the_same_model_needs_no_flag_and_keeps_its_tokenizer(tmp_path):
    folder = tmp_path / "m"
    tiny(seed=0).save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")
    retrained = tiny(seed=5)  # the same config, other weights (a model trained further)
    retrained.save_pretrained(folder)
    retrained.half().save_pretrained(folder)  # another storage dtype is still the same model
    assert sorted(files(folder)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert same_weights(load_model(folder, dtype="auto"), retrained)


def test_a_folder_with_only_unrelated_files_or_a_tokenizer_is_written_into(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "tokenizer.json").write_text("{}")  # a tokenizer saved first, the model after
    tiny().save_pretrained(folder)
    assert sorted(files(folder)) == ["config.json", "model.safetensors", "notes.txt", "tokenizer.json"]


def test_a_quantized_save_over_the_float_save_of_the_same_model_is_another_checkpoint(tmp_path):
    from course_lib.quantization import quantize_model

    folder = tmp_path / "m"
    model = tiny()
    model.save_pretrained(folder)
    with pytest.raises(CheckpointExistsError, match="quantization_config"):
        quantize_model(tiny(), "int8").save_pretrained(folder)


def test_a_symlinked_folder_is_written_through(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    tiny().save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in real.iterdir()) == ["config.json",
                                                                                             "model.safetensors"]


@pytest.mark.parametrize("where", ["a file", "inside a file", "a broken link"])
def test_a_destination_that_is_not_a_folder(tmp_path, where):
    (tmp_path / "f").write_text("precious")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    path = {"a file": tmp_path / "f", "inside a file": tmp_path / "f" / "m",
            "a broken link": tmp_path / "dangling"}[where]
    with pytest.raises(NotAFolderError, match="nothing was written"):
        tiny().save_pretrained(path)
    assert (tmp_path / "f").read_text() == "precious"


# ------------------------------------------------------------------ permissions

@pytest.fixture
def umask():
    def set_to(value: int) -> None:
        os.umask(value)

    old = os.umask(0o022)
    yield set_to
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_ordinary_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    folder = tiny().save_pretrained(tmp_path / "m")
    write_atomic(tmp_path / "state.json", lambda p: p.write_text("{}"))
    got = {p.name: p.stat().st_mode & 0o777 for p in [*folder.iterdir(), tmp_path / "state.json"]}
    assert got == {"config.json": mode, "model.safetensors": mode, "state.json": mode}
    assert ckpt.default_file_mode() == mode
