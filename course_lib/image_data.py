"""Chapter 10's image set: handwritten digits, their fixed split, and batches of ``pixel_values``.

The set: the test set of the UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin and
C. Kaynak, 1998; CC BY 4.0; ``course_lib/assets/digits/README.md``), as scikit-learn ships it:
1,797 digits written by 13 people, each an 8 x 8 grid of ink counts 0..16 (every number counts
the ink pixels of a 4 x 4 block of the 32 x 32 scan), and its class 0..9. One CSV line per
digit: 64 numbers row by row, then the class. scikit-learn is not needed: the file ships here.

The pipeline is the one every Hub image model uses, so the course's models are ordinary ones:

1. **Read** the shipped ``digits.csv.gz`` after checking its SHA-256 (``DIGITS_SHA256``).
2. **Pictures.** ``digit_image`` turns an 8 x 8 grid into a Pillow image: ink 0..16 scaled to
   0..255 (``round(v * 255 / 16)``: 16 is white ink on a black page), grayscale made RGB, so
   the Hub's image processors apply unchanged.
3. **Split, stratified.** Within each class the digits are ordered by SHA-256 of
   ``"<seed>\\n<line number>"`` — a shuffle that depends only on the seed — and cut 20 % test,
   10 % validation, the rest train; each split keeps the file's order. Each split's SHA-256
   (``SPLIT_SHA256``) is checked: the same split for every learner, or a loud error.
4. **Batches.** ``preprocess`` of ``course_lib.image_processing`` with the model's
   ``preprocessor_config.json`` (``DIGITS_PREPROCESSOR``: resize 8 -> 32 bilinear, rescale
   1/255, normalise with mean = std = 0.5, the ``ViTImageProcessor`` defaults), stacked into
   ``{"pixel_values": (B, 3, 32, 32) float32, "labels": (B,) int64}``. Training batches may be
   shifted by up to one grid cell (``shift``, light augmentation) before preprocessing.

Labels are ints 0..9; their names (``ID2LABEL``) are the digits as strings.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from course_lib.image_processing import ImageProcessorConfig, preprocess

ASSET = "digits"
DATA_FILE = "digits.csv.gz"
# The file as scikit-learn 1.9.1 ships it (sklearn/datasets/data/digits.csv.gz): 57,523 bytes, gzip.
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
NUM_DIGITS = 1797
GRID = 8  # pixels per side of the stored digits
MAX_INK = 16  # the largest stored value: all 16 pixels of a 4 x 4 block inked
ID2LABEL = {i: str(i) for i in range(10)}
LABEL2ID = {name: i for i, name in ID2LABEL.items()}
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
SPLIT_SEED = 10
# SHA-256 of each split written as the source lines (64 values and the class, comma-separated, "\n" after
# each), in file order. Tests check them; change them only together with every number measured on the split.
SPLIT_SHA256 = {
    "train": "75205d98db7f78c615c3c753b32cc6164e0ae10e287ce8dcd0dafaff0ae6a7f2",  # 122..128 per class
    "validation": "639eabaf8e827b090a01b9ad360b6a2eb4c173acdef5a8b269ed1431a2f7d3ec",  # 17..18 per class
    "test": "2c9ded4684659998426f1da0a2ada47bad31e4a65fea0f89b95759e2705f82d5",  # 35..37 per class
}
SPLIT_SIZES = {"train": 1259, "validation": 179, "test": 359}
# The preprocessor_config.json of the course's digit models: a ViTImageProcessor that upsamples the
# 8 x 8 digit to 32 x 32 (bilinear), rescales to [0, 1] and normalises to [-1, 1].
IMAGE_SIZE = 32
DIGITS_PREPROCESSOR = {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True,
    "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


class DataIntegrityError(ValueError):
    """The data file, or the split computed from it, is not the one the course pins."""


# ---------------------------------------------------------------------------- reading

def data_path() -> Path:
    """The shipped ``digits.csv.gz``."""
    from course_lib.assets import asset_path

    return asset_path(ASSET) / DATA_FILE


def _restore_hint() -> str:
    return (f"Fix: restore the shipped file (`git checkout -- course_lib/assets/{ASSET}/{DATA_FILE}`, or reinstall "
            f"the course: pip install -e .). To read a different copy on purpose, pass sha256=None")


def read_digits(path: str | Path | None = None, sha256: str | None = DIGITS_SHA256
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every digit of the file, in file order: ``(images, labels)``.

    ``images``: uint8 (N, 8, 8), ink 0..16, row by row; ``labels``: int64 (N,), 0..9.
    ``path``: the gzip'd CSV (default: the shipped one); ``sha256``: the digest its bytes must
    have (default: the shipped file's), ``None`` skips the check. A missing file raises
    ``FileNotFoundError``, a changed one ``DataIntegrityError``, a malformed line ``ValueError``
    naming the line — each with the fix.
    """
    path = Path(path) if path is not None else data_path()
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}. {_restore_hint()}")
    data = path.read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DataIntegrityError(
                f"{path}: SHA-256 {digest} ({len(data):,} bytes), expected {sha256} (the UCI digits as scikit-learn "
                f"ships them, 57,523 bytes). The file was changed or damaged, so the course's fixed split and every "
                f"number measured on it would differ. {_restore_hint()}")
    try:
        text = gzip.decompress(data).decode("ascii")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a gzip'd text file ({type(err).__name__}: {err}). {_restore_hint()}") from None
    lines = text.splitlines()
    images = np.zeros((len(lines), GRID, GRID), dtype=np.uint8)
    labels = np.zeros(len(lines), dtype=np.int64)
    for number, line in enumerate(lines, start=1):
        fields = line.split(",")
        if len(fields) != GRID * GRID + 1:
            raise ValueError(f"{path}, line {number}: {len(fields)} comma-separated values, expected "
                             f"{GRID * GRID + 1} (64 pixels and the class)")
        try:
            values = [int(float(v)) for v in fields]
        except ValueError:
            raise ValueError(f"{path}, line {number}: a value is not a number ({line[:60]!r})") from None
        pixels, label = values[:-1], values[-1]
        if min(pixels) < 0 or max(pixels) > MAX_INK:
            raise ValueError(f"{path}, line {number}: pixel values must be 0..{MAX_INK}, got "
                             f"{min(pixels)}..{max(pixels)}")
        if label not in ID2LABEL:
            raise ValueError(f"{path}, line {number}: class {label} is not a digit 0..9")
        images[number - 1] = np.asarray(pixels, dtype=np.uint8).reshape(GRID, GRID)
        labels[number - 1] = label
    return images, labels


def digit_image(grid: np.ndarray) -> Image.Image:
    """One 8 x 8 grid of ink 0..16 (any integer dtype) -> an 8 x 8 RGB Pillow image, 0..255.

    Each value becomes ``round(v * 255 / 16)`` (16 -> 255, white ink on black), the same in
    the three channels (what a grayscale photo becomes after ``convert("RGB")``).
    """
    grid = np.asarray(grid)
    if grid.shape != (GRID, GRID):
        raise ValueError(f"a digit is an {GRID} x {GRID} grid, got shape {grid.shape}")
    if grid.min() < 0 or grid.max() > MAX_INK:
        raise ValueError(f"a digit's values are ink counts 0..{MAX_INK}, got {grid.min()}..{grid.max()}")
    gray = (grid.astype(np.int64) * 255 * 2 + MAX_INK) // (2 * MAX_INK)  # round(v * 255 / 16), half up
    return Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")


def shift_grid(grid: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move a (8, 8) digit ``dy`` cells down and ``dx`` right; cells moved in from outside are blank (0)."""
    out = np.zeros_like(grid)
    h, w = grid.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = grid[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


# ---------------------------------------------------------------------------- the split

@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """One split: ``images`` uint8 (N, 8, 8) ink 0..16, ``labels`` int64 (N,), ``indices`` (N,) line numbers
    (0-based) in the data file, in file order. ``split[i]`` is a Pillow image and its label."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return digit_image(self.images[i]), int(self.labels[i])

    def pictures(self) -> list[Image.Image]:
        """Every digit as an 8 x 8 RGB Pillow image."""
        return [digit_image(g) for g in self.images]

    def label_counts(self) -> dict[str, int]:
        """Digits per class, by name: ``{"0": ..., ..., "9": ...}``."""
        counts = Counter(self.labels.tolist())
        return {name: counts.get(i, 0) for i, name in ID2LABEL.items()}

    def sha256(self) -> str:
        """SHA-256 of the split written as the source lines (``v0,...,v63,label\\n`` per digit)."""
        body = "".join(",".join(map(str, g.reshape(-1).tolist())) + f",{y}\n"
                       for g, y in zip(self.images, self.labels.tolist()))
        return hashlib.sha256(body.encode("ascii")).hexdigest()


def _shuffle_key(seed: int, index: int) -> bytes:
    return hashlib.sha256(f"{seed}\n{index}".encode("ascii")).digest()


def stratified_split(images: np.ndarray, labels: np.ndarray, fractions: dict[str, float] | None = None,
                     seed: int = SPLIT_SEED) -> dict[str, ImageSplit]:
    """Cut the digits into splits with the same class proportions.

    Within each class the digits are ordered by SHA-256 of ``"<seed>\\n<line number>"`` (a
    shuffle reproducible everywhere); ``round(fraction * n_class)`` (half up) go to each split
    other than ``"train"``, the rest to ``"train"``. Each split keeps the file order.
    """
    fractions = dict(SPLIT_FRACTIONS if fractions is None else fractions)
    if "train" not in fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"fractions {fractions} must include 'train', be >= 0 and sum to 1")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    chosen: dict[str, list[int]] = {name: [] for name in fractions}
    for label in sorted(set(labels.tolist())):
        members = sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: _shuffle_key(seed, i))
        start = 0
        for name in (n for n in fractions if n != "train"):
            size = int(fractions[name] * len(members) + 0.5)
            chosen[name] += members[start:start + size]
            start += size
        chosen["train"] += members[start:]
    order = sorted(fractions, key=lambda n: SPLITS.index(n) if n in SPLITS else 99)
    splits = {}
    for name in order:
        idx = np.array(sorted(chosen[name]), dtype=np.int64)
        splits[name] = ImageSplit(name, images[idx], labels[idx], idx)
    return splits


@functools.lru_cache(maxsize=1)
def _course_splits() -> tuple[ImageSplit, ...]:
    images, labels = read_digits()
    splits = stratified_split(images, labels, SPLIT_FRACTIONS, SPLIT_SEED)
    for name, split in splits.items():
        digest = split.sha256()
        if digest != SPLIT_SHA256[name]:
            raise DataIntegrityError(
                f"the {name!r} split computed from {data_path()} has SHA-256 {digest}, but the course pins "
                f"{SPLIT_SHA256[name] or '(nothing yet)'} (course_lib/image_data.py SPLIT_SHA256). The data file is "
                f"the shipped one, so the splitting code changed. Fix: undo the change; if it is intended, update "
                f"SPLIT_SHA256 and retrain the digit models (python -m course_lib.vision_training)")
    return tuple(splits.values())


def digits_splits() -> dict[str, ImageSplit]:
    """The course's fixed split, ``{"train", "validation", "test"}`` -> ``ImageSplit``, checked against
    ``DIGITS_SHA256`` and ``SPLIT_SHA256`` (``DataIntegrityError`` with the fix). Computed once per process."""
    return {split.name: split for split in _course_splits()}


def load_split(name: str) -> ImageSplit:
    """One split of the course's fixed split: ``"train"``, ``"validation"`` or ``"test"``."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
    return digits_splits()[name]


# ---------------------------------------------------------------------------- batches

def processor_config(processor=None) -> ImageProcessorConfig:
    """``processor``: None (``DIGITS_PREPROCESSOR``), a dict as in ``preprocessor_config.json``, a path to such a
    file or a model folder holding one, or an ``ImageProcessorConfig`` -> an ``ImageProcessorConfig``."""
    if processor is None:
        return ImageProcessorConfig.from_dict(DIGITS_PREPROCESSOR, where="image_data.DIGITS_PREPROCESSOR")
    if isinstance(processor, ImageProcessorConfig):
        return processor
    if isinstance(processor, dict):
        return ImageProcessorConfig.from_dict(processor)
    return ImageProcessorConfig.from_file(processor)


def pixel_values(split: ImageSplit, processor=None, rows=None) -> torch.Tensor:
    """The preprocessed digits ``rows`` (default all) of ``split``: (N, 3, H, W) float32, H = W = 32 by default."""
    config = processor_config(processor)
    rows = range(len(split)) if rows is None else rows
    return preprocess([digit_image(split.images[i]) for i in rows], config)


def eval_batches(split: ImageSplit, processor=None, batch_size: int = 256) -> list[dict]:
    """Fixed batches in file order: ``[{"pixel_values": (B, 3, H, W) float32, "labels": (B,) int64}, ...]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = processor_config(processor)
    out = []
    for start in range(0, len(split), batch_size):
        rows = range(start, min(start + batch_size, len(split)))
        out.append({"pixel_values": pixel_values(split, config, rows),
                    "labels": torch.as_tensor(split.labels[start:start + batch_size])})
    return out


class TrainBatches:
    """Shuffled training batches, a new order (and new shifts) every epoch.

    Each ``iter()`` draws a permutation, and for each digit a shift of ``-shift..shift`` grid
    cells in each direction, from torch's global generator (so ``training.train(seed=...)``
    and its resume replay them exactly), then preprocesses the shifted pictures.
    ``len()`` is the number of batches per epoch (the last, smaller batch is kept).
    """

    def __init__(self, split: ImageSplit, processor=None, batch_size: int = 64, shift: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shift < GRID // 2:
            raise ValueError(f"shift must be 0..{GRID // 2 - 1} grid cells, got {shift}")
        self.split, self.config = split, processor_config(processor)
        self.batch_size, self.shift = batch_size, shift

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        n = len(self.split)
        order = torch.randperm(n).tolist()
        moves = torch.randint(-self.shift, self.shift + 1, (n, 2)).tolist()
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            pictures = [digit_image(shift_grid(self.split.images[i], *moves[k]))
                        for k, i in zip(range(start, start + len(rows)), rows)]
            yield {"pixel_values": preprocess(pictures, self.config),
                   "labels": torch.as_tensor(self.split.labels[rows])}
