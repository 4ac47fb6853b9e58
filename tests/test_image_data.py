"""course_lib.image_data (chapter 10): the shipped digits, their pinned split, pictures and batches."""

from __future__ import annotations

import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib import image_data as D
from course_lib.image_processing import ImageProcessorConfig


def test_the_shipped_file_is_the_pinned_one_and_reads_as_1797_digits():
    data = D.data_path().read_bytes()
    assert len(data) == 57_523 and hashlib.sha256(data).hexdigest() == D.DIGITS_SHA256
    images, labels = D.read_digits()
    assert images.shape == (D.NUM_DIGITS, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (D.NUM_DIGITS,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    # the class counts the README's table lists
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # the first line of the file, by hand: a 0
    first = gzip.decompress(data).decode().splitlines()[0].split(",")
    assert images[0].reshape(-1).tolist() == [int(v) for v in first[:64]] and labels[0] == int(first[64]) == 0


def test_the_split_is_pinned_stratified_disjoint_and_complete():
    splits = D.digits_splits()
    assert list(splits) == ["train", "validation", "test"]
    assert {name: len(s) for name, s in splits.items()} == D.SPLIT_SIZES == {"train": 1259, "validation": 179,
                                                                             "test": 359}
    assert {name: s.sha256() for name, s in splits.items()} == D.SPLIT_SHA256
    every = np.concatenate([s.indices for s in splits.values()])
    assert sorted(every.tolist()) == list(range(D.NUM_DIGITS))  # each digit in exactly one split
    images, labels = D.read_digits()
    per_class = np.bincount(labels)
    for name, split in splits.items():
        assert np.all(np.diff(split.indices) > 0)  # file order
        assert np.array_equal(split.images, images[split.indices])
        assert np.array_equal(split.labels, labels[split.indices])
        if name != "train":
            wanted = [int(D.SPLIT_FRACTIONS[name] * n + 0.5) for n in per_class]
            assert [split.label_counts()[str(c)] for c in range(10)] == wanted


def test_the_split_depends_on_the_seed_only():
    images, labels = D.read_digits()
    again = D.stratified_split(images, labels)
    assert {n: s.sha256() for n, s in again.items()} == D.SPLIT_SHA256
    other = D.stratified_split(images, labels, seed=11)
    assert other["test"].sha256() != D.SPLIT_SHA256["test"] and len(other["test"]) == 359
    with pytest.raises(ValueError, match="sum to 1"):
        D.stratified_split(images, labels, {"train": 0.5, "test": 0.2})


def test_a_changed_split_rule_is_caught(monkeypatch):
    D._course_splits.cache_clear()
    monkeypatch.setitem(D.SPLIT_SHA256, "test", "0" * 64)
    try:
        with pytest.raises(D.DataIntegrityError, match="split computed from .* SPLIT_SHA256"):
            D.digits_splits()
    finally:
        D._course_splits.cache_clear()


def test_missing_changed_and_malformed_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="git checkout"):
        D.read_digits(tmp_path / "nothing.csv.gz")
    changed = tmp_path / "digits.csv.gz"
    shutil.copy(D.data_path(), changed)
    raw = bytearray(changed.read_bytes())
    raw[-20] ^= 1
    changed.write_bytes(bytes(raw))
    with pytest.raises(D.DataIntegrityError, match="SHA-256 .* expected"):
        D.read_digits(changed)
    plain = tmp_path / "plain.csv.gz"
    plain.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a gzip'd text file"):
        D.read_digits(plain, sha256=None)
    line = ",".join(["0"] * 64)
    for body, message in ((line + "\n", "line 1: 64 comma-separated values"),
                          (",".join(["17"] + ["0"] * 63) + ",3\n", "line 1: pixel values must be 0..16"),
                          (line + ",12\n", "class 12 is not a digit"),
                          (line + ",x\n", "not a number")):
        bad = tmp_path / "bad.csv.gz"
        bad.write_bytes(gzip.compress(body.encode()))
        with pytest.raises(ValueError, match=message):
            D.read_digits(bad, sha256=None)


def test_digit_image_scales_ink_to_0_255_in_rgb():
    grid = np.zeros((8, 8), dtype=np.uint8)
    grid[0, :3] = [16, 8, 1]
    picture = D.digit_image(grid)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (8, 8)
    pixels = np.asarray(picture)
    assert pixels[0, :3].tolist() == [[255] * 3, [128] * 3, [16] * 3]  # round(v * 255 / 16), half up
    assert pixels[1:].max() == 0
    with pytest.raises(ValueError, match="8 x 8 grid"):
        D.digit_image(np.zeros((8, 7)))
    with pytest.raises(ValueError, match="ink counts 0..16"):
        D.digit_image(np.full((8, 8), 20))


def test_shift_grid_moves_and_blanks():
    grid = np.arange(64, dtype=np.uint8).reshape(8, 8)
    down_right = D.shift_grid(grid, 1, 1)
    assert np.array_equal(down_right[1:, 1:], grid[:-1, :-1]) and down_right[0].max() == 0 == down_right[:, 0].max()
    up_left = D.shift_grid(grid, -1, -1)
    assert np.array_equal(up_left[:-1, :-1], grid[1:, 1:]) and up_left[-1].max() == 0 == up_left[:, -1].max()
    assert np.array_equal(D.shift_grid(grid, 0, 0), grid)


def test_batches_are_the_hub_pipeline_on_the_pictures():
    split = D.load_split("validation")
    batches = D.eval_batches(split, batch_size=100)
    assert [len(b["labels"]) for b in batches] == [100, 79]
    x = batches[0]["pixel_values"]
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(batches[1]["labels"], torch.as_tensor(split.labels[100:]))
    # by hand: Pillow bilinear 8 -> 32 on the 0..255 picture, /255, (x - 0.5) / 0.5
    picture = D.digit_image(split.images[3]).resize((32, 32), Image.Resampling.BILINEAR)
    by_hand = (torch.as_tensor(np.array(picture), dtype=torch.float64).permute(2, 0, 1) / 255 - 0.5) / 0.5
    assert (x[3].double() - by_hand).abs().max() < 1e-6
    config = D.processor_config()
    assert isinstance(config, ImageProcessorConfig) and config.size == {"height": 32, "width": 32}


def test_train_batches_shuffle_shift_and_replay_with_the_seed():
    split = D.load_split("validation")
    batches = D.TrainBatches(split, batch_size=64, shift=1)
    assert len(batches) == 3
    torch.manual_seed(0)
    first = list(batches)
    torch.manual_seed(0)
    again = list(batches)
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
               for a, b in zip(first, again))
    assert sorted(torch.cat([b["labels"] for b in first]).tolist()) == sorted(split.labels.tolist())
    second_epoch = list(batches)  # the generator moved on: another order
    assert not torch.equal(first[0]["labels"], second_epoch[0]["labels"])
    # without shifts, a training batch holds exactly the evaluation pictures of its digits
    torch.manual_seed(1)
    order = torch.randperm(len(split)).tolist()
    torch.manual_seed(1)
    plain = next(iter(D.TrainBatches(split, batch_size=16, shift=0)))
    assert torch.equal(plain["pixel_values"], D.pixel_values(split, None, order[:16]))
    with pytest.raises(ValueError, match="shift must be 0..3"):
        D.TrainBatches(split, shift=4)
    with pytest.raises(ValueError, match="batch_size"):
        D.eval_batches(split, batch_size=0)


def test_unknown_split_name():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        D.load_split("dev")
