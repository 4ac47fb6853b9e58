"""Chapter 05: checkpoint files on disk <-> the parameters of our models.

A Hugging Face model folder holds its weights in one of these layouts:

- ``model.safetensors``: a JSON header (name, dtype, shape, byte range of every tensor)
  followed by the raw bytes. Reading it executes nothing and can be memory-mapped: a
  tensor is read from disk only when asked for.
- ``model.safetensors.index.json`` + ``model-00001-of-00003.safetensors`` ...: the same,
  split into shards; the index's ``weight_map`` says which shard holds which tensor.
- ``pytorch_model.bin`` (+ ``pytorch_model.bin.index.json`` for shards): a pickle made by
  ``torch.save``. Unpickling can run arbitrary code, so it is only ever read with
  ``torch.load(..., weights_only=True)``, which accepts tensors and plain containers and
  refuses everything else before running it.

Published files do not always use today's names. ``match_keys`` maps a checkpoint's keys
to a model's parameter names: strip or add the ``bert.``/``roberta.``/``transformer.``
prefix, rename the legacy LayerNorm ``gamma``/``beta`` to ``weight``/``bias``, transpose
the weights a model stores the other way round (GPT-2's ``Conv1D``), skip buffers
that are not parameters (``position_ids``, GPT-2's ``attn.bias`` mask), skip heads the
task does not use, and treat tied copies (the MLM decoder *is* the word embedding) as one
tensor. Whatever is left over is an error: strict loading reports every missing,
unexpected and wrongly shaped key at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import json
import math
import os
import pickle
import re
import secrets
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# patterns the Hub loader asks for when a repository has no safetensors weights
BIN_FILES = [BIN_NAME, BIN_INDEX, "pytorch_model-*-of-*.bin"]

# Prefixes a bare model's keys carry inside a task model's checkpoint.
KNOWN_PREFIXES = ("bert", "roberta", "transformer", "model")
# Buffers some files contain that are not parameters of the model: recomputed, never loaded.
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids", "attn.bias", "attn.masked_bias",
                   "rotary_emb.inv_freq")  # older Llama files (Llama-2 .bin) save RoPE's frequencies, which we compute

_REDOWNLOAD = ("download it again (Hub: `hf download MODEL --force-download`, or delete the model's folder "
               "under $HF_HOME/hub) or copy it again")


class CheckpointError(ValueError):
    """A model folder or weight file cannot be loaded; the message names the file and the fix."""


class CorruptCheckpointError(CheckpointError):
    """A weight file is truncated or is not what its name says."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asks to run code or build objects other than tensors: refused before anything ran."""


class IncompleteLoadWarning(UserWarning):
    """``load_model(strict=False)`` left parameters at their random init or ignored tensors of the file."""


class CheckpointDtypeError(CheckpointError):
    """A tensor's dtype cannot fill the parameter it is for (integers, booleans or 8-bit floats into a float weight)."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A save would replace another checkpoint's files: refused unless ``overwrite=True``; nothing was written."""


class NotAFolderError(CheckpointError, NotADirectoryError):
    """The destination of a save or a conversion is a file, not a folder; nothing was written."""


class StateDictMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model (missing, unexpected, or wrongly shaped keys)."""

    def __init__(self, message: str, report: "LoadReport"):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------
# Finding and reading weight files

def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a model folder, safetensors first: one file, or every shard of an index."""
    folder = Path(folder)
    for single, index in ((SAFETENSORS_NAME, SAFETENSORS_INDEX), (BIN_NAME, BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return _shards(folder / index)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise CheckpointError(
        f"no weights in {folder}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX} (+ shards), {BIN_NAME} or "
        f"{BIN_INDEX}; the folder holds: {', '.join(present) or 'nothing'}. Download the weight file too "
        f"(`hf download MODEL {SAFETENSORS_NAME}`) or pass the folder that has it")


def _shards(index_file: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, each checked to lie inside the index's folder."""
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"{index_file} is not a valid shard index (a JSON object with a "
                                     f"'weight_map'): {err}; {_REDOWNLOAD}") from err
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(
            f"{index_file}: 'weight_map' must be a non-empty JSON object {{tensor name: shard file name}}, found "
            f"{_describe_json(weight_map)}; {_REDOWNLOAD}")
    wrong = [(k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if wrong:
        key, value = wrong[0]
        raise CorruptCheckpointError(
            f"{index_file}: 'weight_map' must map each tensor name to a shard file name (a string), but "
            f"{key!r} maps to {_describe_json(value)} ({len(wrong)} such entries); {_REDOWNLOAD}")
    folder = index_file.parent
    files = [_shard_path(folder, name, index_file) for name in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index_file.name} lists shards that are not in {index_file.parent}: "
                              f"{', '.join(missing)}; download every shard (`hf download MODEL`)")
    return files


def _describe_json(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    shown = repr(value)
    return f"{names.get(type(value), type(value).__name__)} ({shown[:60]}{'...' if len(shown) > 60 else ''})"


def _shard_path(folder: Path, name: str, index_file: Path) -> Path:
    """``folder / name`` for a shard an index names, refused unless it stays inside ``folder``.

    An index is data from the internet: ``"../other/model.safetensors"``, an absolute path or a
    link out of the folder would make the loader read (or unpickle) a file the model folder does
    not hold. The Hub cache is the one layout whose files are links out of their folder: a
    snapshot's files point into the repository's ``blobs/``, and those are followed.
    """
    bad = ("an absolute path" if Path(name).is_absolute() or os.path.isabs(name) or name[1:3] == ":\\"
           else "a path with '..'" if ".." in Path(name.replace("\\", "/")).parts else None)
    path = folder / name
    if bad is None:
        try:
            real, inside = path.resolve(), [folder.resolve()]
        except (OSError, RuntimeError) as err:  # a link loop
            raise CheckpointError(f"{index_file}: shard {name!r} cannot be resolved ({err}); {_REDOWNLOAD}") from err
        if folder.resolve().parent.name == "snapshots":  # Hub cache: snapshots/<commit>/x -> ../../blobs/<hash>
            inside.append(folder.resolve().parent.parent / "blobs")
        if not path.exists() or any(real.is_relative_to(place) for place in inside):
            return path
        bad = f"a link to {real}, outside the folder"
    raise CheckpointError(f"{index_file} names the shard {name!r}, {bad}: an index may only name files in its own "
                          f"folder {folder}. The index is damaged or was made to read other files; put the "
                          f"shards beside the index and name them by file name (model-00001-of-00002.safetensors)")


class CheckpointReader:
    """Every tensor of a checkpoint by key, read lazily, one at a time.

    safetensors files are memory-mapped: ``get(key)`` returns a tensor whose storage *is*
    the file's bytes for that tensor, and the operating system reads a page from disk only
    when something first touches it. So a model can be filled (and converted or quantized)
    tensor by tensor without a second full copy in memory; converting a tensor's dtype or
    device is what makes a copy. ``.bin`` files are loaded with ``weights_only=True``
    (memory-mapped too when the file is a zip-format ``torch.save``).
    """

    def __init__(self, files: list[str | os.PathLike]):
        self.files = [Path(f) for f in files]
        self._sources: dict[str, tuple[Path, object]] = {}
        self._byte_ranges: dict[str, tuple[int, torch.dtype]] = {}  # safetensors: key -> (first byte, dtype)
        for path in self.files:
            if path.suffix == ".safetensors":
                ranges = _readable_byte_ranges(path)  # names a dtype the course cannot read, before safe_open
                handle = _open_safetensors(path)
                if ranges is None:  # safe_open read a header our parser did not: trust safe_open's view
                    ranges = _safetensors_byte_ranges(path)
                self._byte_ranges.update(ranges)
                keys = handle.keys()
            else:
                handle = _open_bin(path)
                keys = list(handle)
            for key in keys:
                self._sources[key] = (path, handle)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "CheckpointReader":
        return cls(weight_files(folder))

    def keys(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, key: str) -> bool:
        return key in self._sources

    def __len__(self) -> int:
        return len(self._sources)

    def shape(self, key: str) -> tuple[int, ...]:
        path, handle = self._sources[key]
        if path.suffix == ".safetensors":
            return tuple(handle.get_slice(key).get_shape())
        return tuple(handle[key].shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: self.shape(key) for key in self._sources}

    def dtype(self, key: str) -> torch.dtype:
        if key in self._byte_ranges:
            return self._byte_ranges[key][1]
        return self._sources[key][1][key].dtype

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (along the first dimension) of tensor ``key``, as a new tensor.

        From a safetensors file the bytes are read with ordinary file reads, not through the
        memory map: pages a map has touched count in the process's memory until the map is
        closed, so reading a whole float32 model that way costs its full size even when each
        block is quantized and dropped at once (``load_model(quantize=...)``).
        """
        if key not in self._byte_ranges:  # .bin: already memory-mapped (or loaded) by torch.load
            return self.get(key)[start:stop]
        path, _ = self._sources[key]
        first, dtype = self._byte_ranges[key]
        shape = self.shape(key)
        if not shape or not 0 <= start <= stop <= shape[0]:
            raise IndexError(f"rows {start}:{stop} of {key!r}, a tensor of shape {tuple(shape)}")
        out = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        row_bytes = out[:1].nbytes if len(shape) > 1 else out.element_size()
        with open(path, "rb", buffering=0) as f:
            f.seek(first + start * row_bytes)
            got = f.readinto(out.view(-1).view(torch.uint8).numpy()) if out.numel() else 0
        if got != out.nbytes:
            raise CorruptCheckpointError(f"{path}: tensor {key!r} ends early (read {got} of {out.nbytes} bytes); "
                                         f"{_REDOWNLOAD}")
        return out

    def get(self, key: str) -> torch.Tensor:
        path, handle = self._sources[key]
        if path.suffix == ".safetensors":
            try:
                return handle.get_tensor(key)
            except Exception as err:  # noqa: BLE001 - the Rust error type is not importable by name everywhere
                raise CorruptCheckpointError(f"{path}: cannot read tensor {key!r} ({err}); {_REDOWNLOAD}") from err
        return handle[key]

    def close(self) -> None:
        self._sources.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError
        raise CorruptCheckpointError(
            f"{path} is not a readable safetensors file ({err}). It is probably truncated (an interrupted "
            f"download or copy) or not a safetensors file at all{_lfs_hint(path)}; {_REDOWNLOAD}") from err


def _dtype_table() -> dict[str, torch.dtype]:
    """safetensors dtype names -> torch dtypes, for every one this PyTorch has."""
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
             "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
             "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
             "C64": "complex64"}
    return {name: getattr(torch, attr) for name, attr in names.items() if hasattr(torch, attr)}


# Every safetensors dtype this PyTorch can hold, by its name in the file's header; any other
# name (the sub-byte F4/F6 floats, a typo) is refused by name, never read as bytes of another type.
_SAFETENSORS_DTYPES = _dtype_table()
_SUB_BYTE_DTYPES = {"F4": "4-bit floats (MXFP4/NVFP4 blocks)", "F6_E2M3": "6-bit floats (MXFP6)",
                    "F6_E3M2": "6-bit floats (MXFP6)"}
# The dtypes a float parameter may be filled from (converted to the parameter's dtype on the way).
PLAIN_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def safetensors_dtype(name: str, key: str | None = None, path=None) -> torch.dtype:
    """The torch dtype of safetensors dtype ``name`` ("F32", "BF16", "F8_E4M3" ...); a clear error if there is none."""
    if name in _SAFETENSORS_DTYPES:
        return _SAFETENSORS_DTYPES[name]
    what = (f"{path}: tensor {key!r} is stored as " if key is not None else "safetensors dtype ") + repr(name)
    if name in _SUB_BYTE_DTYPES:
        raise CheckpointError(f"{what}, {_SUB_BYTE_DTYPES[name]}: a quantized format this course does not read. "
                              f"Load the model's original float checkpoint (F32/F16/BF16) instead")
    raise CheckpointError(f"{what}, a dtype this course does not know (known: {', '.join(_SAFETENSORS_DTYPES)}); "
                          f"the file is damaged or written by a newer format: {_REDOWNLOAD}")


def _dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> 'float32 (F32)': both names, as a user may know either."""
    file_name = next((k for k, v in _SAFETENSORS_DTYPES.items() if v == dtype), None)
    return str(dtype).removeprefix("torch.") + (f" ({file_name})" if file_name else "")


def read_safetensors_header(data: bytes) -> dict[str, tuple[str, list[int], tuple[int, int]]]:
    """A safetensors file's table of contents: ``{name: (dtype, shape, (start, end))}``.

    ``data``: the file's bytes (or just its first ``8 + N``). The format: 8 bytes holding N,
    the header's length, as an unsigned little-endian integer; N bytes of UTF-8 JSON (padded
    with spaces); then the tensors' raw bytes. Each tensor's ``data_offsets`` [start, end)
    count from the end of the header, byte ``8 + N`` of the file. ``"__metadata__"`` holds
    free-form strings, not a tensor, and is left out. Reading this runs no code.
    """
    length = int.from_bytes(data[:8], "little")  # u64, little-endian
    header = json.loads(data[8:8 + length])
    return {name: (entry["dtype"], list(entry["shape"]), tuple(entry["data_offsets"]))
            for name, entry in header.items() if name != "__metadata__"}


def tensor_nbytes(shape, dtype: str) -> int:
    """Bytes a tensor of ``shape`` takes in safetensors dtype ``dtype`` ("F32", "BF16", "I64", "BOOL" ...).

    The number of elements (``math.prod``: 1 for a scalar, 0 when any dimension is 0) times
    the bytes of one element. ``end - start`` of a tensor's ``data_offsets`` is exactly this.
    """
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"unknown safetensors dtype {dtype!r}; known: {', '.join(_SAFETENSORS_DTYPES)}")
    return math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize


def read_safetensors_tensor(data: bytes, name: str) -> torch.Tensor:
    """Tensor ``name`` of a safetensors file, decoded from the file's bytes, in the dtype it is stored in.

    The header gives its dtype, shape and byte range; the range counts from the end of the
    header; the bytes are the elements in row-major (C) order, little-endian, as the format
    requires, and bfloat16 is the top half of a float32's bits. ``safe_open`` does the same
    through a memory map instead of a copy.
    """
    header = read_safetensors_header(data)
    if name not in header:
        raise KeyError(f"no tensor {name!r} in this file; it holds {', '.join(sorted(header)[:10])}")
    dtype, shape, (start, end) = header[name]
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{name!r} has dtype {dtype!r}, which this reader does not know")
    first = 8 + int.from_bytes(data[:8], "little") + start  # offsets count from the end of the header
    if end - start != tensor_nbytes(shape, dtype) or first + (end - start) > len(data):
        raise CorruptCheckpointError(f"tensor {name!r}: bytes {start}..{end} after the header do not hold a "
                                     f"{dtype} tensor of shape {shape} in a file of {len(data)} bytes")
    torch_dtype = _SAFETENSORS_DTYPES[dtype]
    raw = bytearray(data[first:first + (end - start)])  # a writable copy: torch.frombuffer shares its memory
    values = torch.frombuffer(raw, dtype=torch_dtype) if raw else torch.empty(0, dtype=torch_dtype)  # (numel,)
    if sys.byteorder == "big" and values.element_size() > 1:  # the file is little-endian: swap each element's bytes
        same_size_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[values.element_size()]
        values = torch.from_numpy(values.view(same_size_int).numpy().byteswap()).view(torch_dtype)
    return values.reshape(shape)


def _safetensors_byte_ranges(path: Path) -> dict[str, tuple[int, torch.dtype]]:
    """{key: (offset of its first byte in the file, dtype)} from a safetensors header (8-byte length, JSON)."""
    with open(path, "rb") as f:
        start = f.read(8)
        length = int.from_bytes(start, "little")
        header = read_safetensors_header(start + f.read(length))
    return {key: (8 + length + offsets[0], safetensors_dtype(dtype, key, path))
            for key, (dtype, _, offsets) in header.items()}


def _readable_byte_ranges(path: Path) -> dict[str, tuple[int, torch.dtype]] | None:
    """``_safetensors_byte_ranges``, or None when the header does not parse (``safe_open`` then says why)."""
    try:
        with open(path, "rb") as f:
            if int.from_bytes(f.read(8), "little") > os.fstat(f.fileno()).st_size - 8:
                return None  # not a header (a text file, a truncated download): never read that many bytes
        return _safetensors_byte_ranges(path)
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - truncated, not JSON, not a header: safe_open's error names the file
        return None


def _lfs_hint(path: Path) -> str:
    """A note when ``path`` is a Git LFS pointer (a repository cloned without git-lfs), else ''."""
    try:
        with open(path, "rb") as f:
            start = f.read(64)
    except OSError:
        return ""
    if start.startswith(b"version https://git-lfs"):
        return (": it is a Git LFS pointer (a few lines of text), not the weights: the repository was cloned "
                "without git-lfs (`git lfs install && git lfs pull` fetches them)")
    return ""


def _open_bin(path: Path) -> dict:
    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            state = load(mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = load(mmap=False)  # an old (pre-zip) torch.save file: cannot be memory-mapped
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not a request for a Python object: bytes the safe loader cannot parse
            raise CorruptCheckpointError(
                f"{path} is not a readable PyTorch checkpoint: the safe loader cannot parse it "
                f"({_refusal_reason(err)}; nothing was executed). It is damaged or not a checkpoint at all"
                f"{_lfs_hint(path)}; {_REDOWNLOAD}") from err
        raise UnsafeCheckpointError(
            f"refused to load {path}: it is a pickle that asks to import or call Python objects, not just "
            f"tensors, and loading it could run code ({_refusal_reason(err)}). Nothing from it was executed. "
            f"Use the model's {SAFETENSORS_NAME} instead; if you made this file yourself and trust it, load it "
            f"with torch.load(weights_only=False) and save model.state_dict() again") from err
    except Exception as err:  # noqa: BLE001 - a damaged file makes torch.load fail in many ways
        # (RuntimeError, OSError, EOFError, KeyError, ... depending on where the bytes stop making sense)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "the file ends too early"
        raise CorruptCheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {detail}). "
            f"It is probably truncated or damaged{_lfs_hint(path)}; {_REDOWNLOAD}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a {{name: tensor}} state dict as the "
                              f"Hub layout has; save model.state_dict() instead")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        nested = [k for k in others if isinstance(state[k], dict)
                  and state[k] and all(isinstance(v, torch.Tensor) for v in state[k].values())]
        hint = (f"it looks like a training checkpoint: the weights are probably under {nested[0]!r}; save "
                f"torch.load(...)[{nested[0]!r}] on its own" if nested else "save model.state_dict() instead")
        raise CheckpointError(f"{path} is not a flat {{name: tensor}} state dict as the Hub layout has: its "
                              f"entries {', '.join(map(repr, others[:5]))} are not tensors; {hint}")
    return state


def _refusal_reason(err: pickle.UnpicklingError) -> str:
    """The part of torch's weights_only refusal that says what the pickle asked for."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours part of its message
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks for {found.group(1)}"
    found = re.search(r"Unsupported[^\n]*", text)  # e.g. "Unsupported operand 149"
    return found.group(0).strip() if found else "torch's weights_only loader refused it"


# --------------------------------------------------------------------------------------
# Matching checkpoint keys to parameter names

def rename_legacy_key(key: str) -> str:
    """Old TensorFlow-era names: LayerNorm ``gamma`` -> ``weight``, ``beta`` -> ``bias``."""
    module, _, name = key.rpartition(".")
    new = {"gamma": "weight", "beta": "bias"}.get(name)
    return f"{module}.{new}" if new and module else key


def is_ignored_buffer(key: str) -> bool:
    """True for buffers that files may hold but that are not parameters (recomputed by the model)."""
    return any(key == b or key.endswith("." + b) for b in IGNORED_BUFFERS)


@dataclasses.dataclass
class LoadReport:
    """How a checkpoint's keys map onto a model: what loads, what is skipped and why, what is wrong."""

    loaded: dict[str, str] = dataclasses.field(default_factory=dict)  # our key -> checkpoint key
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # checkpoint key -> reason
    missing: list[str] = dataclasses.field(default_factory=list)  # our keys nothing provides
    unexpected: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys nothing takes
    mismatched: list[tuple[str, str, tuple, tuple]] = dataclasses.field(default_factory=list)
    # (our key, checkpoint key, our shape, checkpoint shape)
    transposed: set[str] = dataclasses.field(default_factory=set)  # our keys the file stores as (in, out)
    initialised: list[str] = dataclasses.field(default_factory=list)  # a new task head's keys (not in the file)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def renamed(self) -> dict[str, str]:
        """checkpoint key -> our key, where they differ."""
        return {ckpt: ours for ours, ckpt in self.loaded.items() if ours != ckpt}

    def problems(self, limit: int = 20) -> str:
        """Every problem, one per line (the first ``limit`` of each kind)."""
        lines = []
        for title, items in (("missing from the checkpoint", self.missing),
                             ("unexpected (in the checkpoint, not in the model)", self.unexpected)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {k}" for k in items[:limit]] + ([f"    ... and {len(items) - limit} more"]
                                                                 if len(items) > limit else [])
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} with the wrong shape:")
            lines += [f"    {ours}: model {tuple(a)} vs checkpoint {tuple(b)}"
                      + (f" (checkpoint key {ckpt})" if ckpt != ours else "")
                      for ours, ckpt, a, b in self.mismatched[:limit]]
        return "\n".join(lines)

    def counts(self) -> str:
        """The problems counted in one phrase: "1 missing, 1 unexpected, 1 with the wrong shape" ('' when ok)."""
        parts = [f"{len(self.missing)} missing (random init)" if self.missing else "",
                 f"{len(self.unexpected)} unexpected (ignored)" if self.unexpected else "",
                 f"{len(self.mismatched)} with the wrong shape (random init)" if self.mismatched else ""]
        return ", ".join(p for p in parts if p)

    def summary(self) -> str:
        """A few lines for humans: counts, then the skipped keys grouped by reason."""
        lines = [f"loaded {len(self.loaded)} tensors ({len(self.renamed)} renamed), skipped {len(self.skipped)}"]
        if not self.ok:  # strict=False: say on the first line that this model is not the checkpoint
            lines[0] += f"; INCOMPLETE (strict=False): {self.counts()}"
        by_reason: dict[str, list[str]] = {}
        for key, why in self.skipped.items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} keys)" if len(keys) > 3 else "")
            lines.append(f"  skipped ({why}): {shown}")
        if self.initialised:
            lines.append(f"  initialised (a new head, not in the file: train it): {', '.join(self.initialised)}")
        if not self.ok:
            lines.append(self.problems())
        return "\n".join(lines)


def _prefix_transforms(prefix: str):
    """Candidate ways to turn checkpoint keys into model keys, the identity first."""
    yield "as is", lambda k: k
    for p in dict.fromkeys(([prefix] if prefix else []) + list(KNOWN_PREFIXES)):
        yield f"strip '{p}.'", (lambda k, p=p: k[len(p) + 1:] if k.startswith(p + ".") else k)
    if prefix:
        yield f"add '{prefix}.'", (lambda k, p=prefix: f"{p}.{k}")


def stored_transposed(model: nn.Module, key: str) -> bool:
    """True when checkpoints hold ``key`` transposed: (in, out) for our (out, in) (GPT-2's Conv1D weights)."""
    return key.endswith(tuple(getattr(model, "checkpoint_transposed", ())))


def match_keys(model: nn.Module, checkpoint_shapes: dict[str, tuple]) -> LoadReport:
    """Map checkpoint keys (with their shapes) onto ``model``'s parameter names.

    Uses the model's ``base_model_prefix``, ``tied_weights``, ``key_aliases``,
    ``unused_checkpoint_prefixes`` and ``checkpoint_transposed`` (see
    ``course_lib.models.base.CourseModel``). Shapes are compared as the file stores them.
    """
    prefix = getattr(model, "base_model_prefix", "")
    tied = getattr(model, "tied_weights", {})
    aliases = getattr(model, "key_aliases", {})
    unused = getattr(model, "unused_checkpoint_prefixes", ())
    model_shapes = {k: tuple(v.shape)[::-1] if stored_transposed(model, k) else tuple(v.shape)
                    for k, v in model.state_dict(keep_vars=True).items() if k not in tied}

    renamed = {key: rename_legacy_key(key) for key in checkpoint_shapes}
    # One prefix rule for the whole file (the one that matches most keys): files are consistent.
    best = max(_prefix_transforms(prefix), key=lambda t: sum(t[1](k) in model_shapes for k in renamed.values()))
    transform = best[1]

    report = LoadReport()
    for key, new in renamed.items():
        ours = transform(new)
        if is_ignored_buffer(new):
            report.skipped[key] = "a buffer, not a parameter: recomputed"
        elif ours in model_shapes and ours not in report.loaded:
            report.loaded[ours] = key
        elif ours in tied:
            report.skipped[key] = f"tied: the same tensor as {tied[ours]}"
        elif ours in aliases:
            target = aliases[ours]
            if target in model_shapes and target not in report.loaded and not _provides(target, renamed, transform):
                report.loaded[target] = key
            else:
                report.skipped[key] = f"another name for {target}"
        elif any(ours.startswith(u) or new.startswith(u) for u in unused):
            report.skipped[key] = "a head this task does not use"
        else:
            report.unexpected.append(key)
    report.missing = [k for k in model_shapes if k not in report.loaded]
    report.transposed = {k for k in report.loaded if stored_transposed(model, k)}
    for ours, key in report.loaded.items():
        if model_shapes[ours] != tuple(checkpoint_shapes[key]):
            report.mismatched.append((ours, key, model_shapes[ours], tuple(checkpoint_shapes[key])))
    return report


def _provides(target: str, renamed: dict[str, str], transform) -> bool:
    return any(transform(new) == target for new in renamed.values())


# --------------------------------------------------------------------------------------
# Filling a model

def load_state(model: nn.Module, reader: CheckpointReader, report: LoadReport, dtype: torch.dtype | None = None,
               device=None, source: str = "the checkpoint", columns: frozenset[str] = frozenset()) -> nn.Module:
    """Copy every tensor ``report.loaded`` names from ``reader`` into ``model``, one at a time.

    Each tensor is shape-checked, transposed if the file stores it the other way round
    (GPT-2's Conv1D), converted to ``dtype`` (floating-point tensors only) and
    moved to ``device`` as it is read, then *replaces* the model's parameter: the model
    may have been built on the ``meta`` device (no memory, no random init), so loading
    allocates each parameter at most once — not at all when the file already holds the
    wanted dtype on the CPU: the parameter then stays memory-mapped from the file. A
    quantized layer (``course_lib.quantization``) instead quantizes its float weight while
    reading it (``fill_from_checkpoint``). Keys in ``report.mismatched`` are left as they
    are (strict loading refuses them before this; ``strict=False`` keeps their random init).
    ``columns``: our keys of (out, in) weights to store column by column (a view of a
    contiguous (in, out) tensor, ``course_lib.fused.speed_up``'s layout): a Conv1D weight,
    stored that way in the file, then needs no transposed copy at all.
    """
    mismatched = {ours for ours, *_ in report.mismatched}
    check_dtypes(model, reader, report, dtype, source)
    for ours, key in report.loaded.items():
        if ours in mismatched:
            continue
        module_path, _, name = ours.rpartition(".")
        module = model.get_submodule(module_path)
        transposed = ours in report.transposed
        if _quantizes_on_read(module, name, reader.dtype(key)):
            # a quantized layer (chapter 07) reads and quantizes its float weight block by block
            module.fill_from_checkpoint(reader, key, transposed)
            continue
        as_columns = ours in columns
        copied = transposed != as_columns  # the file's rows become the tensor's columns: a transposed copy
        shape = tuple(reader.shape(key))
        is_param = name in module._parameters
        expected = tuple(getattr(module, name).shape)
        if shape[::-1 if transposed else 1] != expected:  # match_keys checked the header
            raise StateDictMismatchError(f"{source}: tensor {key!r} has shape {shape}, the model's "
                                         f"{ours!r} needs {expected[::-1 if transposed else 1]}", report)
        # parameters take the wanted dtype; buffers keep the one the model declares (quantized scales stay
        # bfloat16); an integer buffer (a quantized weight) has exactly its dtype in the file (check_dtypes)
        declared = getattr(module, name).dtype
        target = dtype if is_param and dtype is not None and declared.is_floating_point else declared
        if copied:  # transposed into a contiguous tensor, converted on the way, a block of the file's rows at a time
            tensor = _read_transposed(reader, key, target)
        elif as_columns:  # stored (in, out) in the file, as wanted: plain reads, so its pages are not kept mapped
            tensor = reader.read_rows(key, 0, shape[0]).to(target)
        else:
            tensor = reader.get(key).to(target)  # memory-mapped: no copy when the dtype is already right
        if as_columns:  # (in, out) contiguous, seen as the (out, in) weight
            tensor = tensor.T
        assign_tensor(model, ours, tensor.to(device) if device is not None else tensor)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    release_freed_memory()
    return model


TRANSPOSE_BLOCK_BYTES = 8 * 2**20


def _read_transposed(reader: CheckpointReader, key: str, dtype: torch.dtype) -> torch.Tensor:
    """Tensor ``key`` (R, C) of the file as a new contiguous (C, R) tensor of ``dtype``.

    Read ``TRANSPOSE_BLOCK_BYTES`` of rows at a time with plain file reads: the copy is all the
    memory it takes (a whole read first, then the copy, would hold the weight twice).
    """
    rows, cols = reader.shape(key)
    out = torch.empty((cols, rows), dtype=dtype)
    step = max(1, TRANSPOSE_BLOCK_BYTES // max(1, cols * reader.dtype(key).itemsize))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        out[:, start:stop] = reader.read_rows(key, start, stop).T
    return out


def _quantizes_on_read(module: nn.Module, name: str, file_dtype: torch.dtype) -> bool:
    """True when a quantized layer (chapter 07) reads this float weight and quantizes it itself."""
    return hasattr(module, "fill_from_checkpoint") and name == "weight" and file_dtype in PLAIN_FLOATS


def check_dtypes(model: nn.Module, reader: CheckpointReader, report: LoadReport, dtype: torch.dtype | None = None,
                 source: str = "the checkpoint") -> None:
    """Refuse, before reading any data, every tensor whose dtype cannot fill its parameter or buffer.

    A floating-point parameter is filled from a float tensor only (float64/32/16, bfloat16),
    converted to the wanted dtype; integers, booleans and 8-bit floats (which need scales to
    mean anything) are refused: silently converting them would give a model that computes
    nonsense. An integer buffer (a quantized layer's weight) takes exactly its own dtype.
    Raises ``CheckpointDtypeError`` naming every such key and both dtypes.
    """
    wrong = []
    mismatched = {ours for ours, *_ in report.mismatched}
    modules = dict(model.named_modules())  # one walk of the tree, not one per key
    for ours, key in report.loaded.items():
        if ours in mismatched:
            continue
        module_path, _, name = ours.rpartition(".")
        module = modules[module_path]
        declared, stored = getattr(module, name).dtype, reader.dtype(key)
        if _quantizes_on_read(module, name, stored):
            continue
        if hasattr(module, "fill_from_checkpoint") and name == "weight" and not declared.is_floating_point \
                and stored.is_floating_point:  # 8-bit floats where a float weight is quantized while loading
            needs = f"float32, float16 or bfloat16 (quantized to {str(declared).removeprefix('torch.')} on the way)"
        elif declared in PLAIN_FLOATS:
            if stored in PLAIN_FLOATS:
                continue
            wanted = dtype if dtype is not None and name in module._parameters else declared
            needs = f"a float (loading as {str(wanted).removeprefix('torch.')})"
        elif stored == declared:
            continue
        else:
            needs = _dtype_name(declared)
        wrong.append((ours, key, stored, needs))
    if not wrong:
        return
    lines = [f"  {key}: stored as {_dtype_name(stored)}, but {ours if ours != key else 'the model'} needs {needs}"
             for ours, key, stored, needs in wrong[:20]]
    if len(wrong) > 20:
        lines.append(f"  ... and {len(wrong) - 20} more")
    why = []
    if any(str(stored).startswith("torch.float8") for _, _, stored, _ in wrong):
        why.append("8-bit floats (FP8) only mean something with the scales of the format that wrote them, which "
                   "this course does not read: load the model's original float checkpoint (F32/F16/BF16), and "
                   "quantize= it if you want it smaller")
    if any(not str(stored).startswith("torch.float8") and needs.startswith("a float") for _, _, stored, needs in wrong):
        why.append("a weight is a float: integers or booleans in its place mean the file is damaged, was saved from "
                   "the wrong tensors, or is a quantized format this course does not read; load the model's float "
                   "checkpoint (F32/F16/BF16) and use quantize='int8'/'int4' for a smaller model")
    if any(not needs.startswith(("a float", "float32")) for *_, needs in wrong):
        why.append("a quantized layer's integers are stored in exactly its dtype by save_pretrained: this file was "
                   "written some other way or changed since; quantize the float checkpoint again (quantize=)")
    raise CheckpointDtypeError(f"{source}: {len(wrong)} tensor(s) have a dtype the model cannot take "
                               f"(nothing was loaded):\n" + "\n".join(lines) + "\n" + "\n".join(why))


@functools.cache
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc (Linux)
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Ask the C allocator to return freed memory to the system (glibc only; elsewhere a no-op).

    glibc keeps freed blocks for reuse, so temporaries made while loading (the transposed
    copies of GPT-2's Conv1D weights, the float32 blocks a quantized layer reads) can stay
    resident after they are freed; ``load_state`` (and each quantized layer) calls this.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _is_param(model: nn.Module, key: str) -> bool:
    module_path, _, name = key.rpartition(".")
    return name in model.get_submodule(module_path)._parameters


def assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Make ``tensor`` the model's parameter (or buffer) ``key``, e.g. ``encoder.layer.0.output.dense.weight``."""
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path)
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    elif name in module._buffers:
        module._buffers[name] = tensor
    else:
        raise KeyError(f"{type(model).__name__} has no parameter or buffer {key!r}")


def check_fully_loaded(model: nn.Module, source: str) -> None:
    """Raise if any tensor is still on the meta device (a loader bug, never a half-loaded model)."""
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: {len(left)} tensors were never loaded: {', '.join(left[:10])}")


# --------------------------------------------------------------------------------------
# Writing a model folder: all or nothing, never over another model's files

# The files of a Hugging Face model folder. A folder that holds config.json or weights holds a
# checkpoint; beside it, its tokenizer's files are part of it too. Any other file (a README,
# the learner's notes, a training run's checkpoint.safetensors) is not ours: never removed.
MODEL_FILE_PATTERNS = ("config.json", "generation_config.json", SAFETENSORS_NAME, SAFETENSORS_INDEX,
                       "model-*-of-*.safetensors", BIN_NAME, BIN_INDEX, "pytorch_model-*-of-*.bin", "tf_model.h5",
                       "tf_model.h5.index.json", "tf_model-*-of-*.h5", "flax_model.msgpack",
                       "flax_model.msgpack.index.json", "flax_model-*-of-*.msgpack", "adapter_model.safetensors",
                       "adapter_model.bin", "adapter_config.json")
TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                        "tokenizer.model")
# config.json keys that say how a model was stored, not which model it is
_STORAGE_KEYS = ("dtype", "torch_dtype", "transformers_version", "_name_or_path")
SAVE_DIR_PREFIX = ".course_lib-save-"  # a save in progress: <folder>/.course_lib-save-<pid>-<random>/
TEMP_FILE_MARK = ".course_lib-tmp-"  # write_atomic's file in progress: .<name>.course_lib-tmp-<pid>-<random>
_JOURNAL = "COMMIT.json"  # written last into a save's temporary folder: the save is complete


def is_model_file(name: str) -> bool:
    """True for the names of a model folder's config and weights (``config.json``, shards, ``.bin`` ...)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def is_checkpoint_file(name: str) -> bool:
    """A model file or a tokenizer file: what a save may replace or, with ``overwrite=True``, remove."""
    return is_model_file(name) or name in TOKENIZER_FILE_NAMES


def write_model_folder(folder: str | os.PathLike, writers: dict, *, overwrite: bool = False,
                       config: dict | None = None, what: str = "save_pretrained",
                       overwrite_flag: str = "overwrite=True") -> list[str]:
    """Write the files ``writers`` names into ``folder`` all at once; returns the stale files removed.

    ``writers``: {file name: ``write(path)``}. Each writes its file into a hidden temporary
    folder inside ``folder``; when every one has succeeded, a journal listing the renames is
    written last, then the files are renamed into place (and, with ``overwrite``, the old
    checkpoint's other files removed). An exception before the journal removes the temporary
    folder and leaves ``folder`` as it was; a killed process leaves it behind, and the next save
    or ``load_model`` of the folder (``recover_folder``) removes it, or finishes the renames if
    the journal was written. Files get the permissions any new file gets (0644 under the usual
    umask).

    ``folder`` may be new, empty, hold unrelated files (kept), or hold the checkpoint of the
    same model: its ``config.json`` equal to ``config`` apart from the storage dtype (a re-save;
    its tokenizer files are kept). Any other checkpoint there is refused with
    ``CheckpointExistsError`` unless ``overwrite``: then its config, weights, shards, index and
    tokenizer files that this save does not write are removed.
    """
    created = not Path(folder).expanduser().exists()
    folder = _destination_folder(folder, what)
    recover_folder(folder)
    remove = _files_to_replace(folder, set(writers), config, overwrite, what, overwrite_flag)
    tmp = folder / f"{SAVE_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
    except PermissionError as err:
        raise PermissionError(err.errno, f"{what}: cannot write into {folder} (permission denied); nothing was "
                                         f"written. Choose a folder you can write to") from err
    committed = False
    try:
        mode = default_file_mode()
        for name, write in writers.items():
            write(tmp / name)
            os.chmod(tmp / name, mode)  # writers may create 0600 files (safetensors does): make them ordinary
        journal = tmp / f".{_JOURNAL}.part"
        journal.write_text(json.dumps({"write": list(writers), "remove": remove}), encoding="utf-8")
        os.replace(journal, tmp / _JOURNAL)  # the commit point: from here on the save completes
        committed = True
        _finish_save(folder, tmp)
    except BaseException:
        if committed:  # e.g. Ctrl-C among the renames: finish them (quick) rather than leave a mixed folder
            with contextlib.suppress(Exception):
                _finish_save(folder, tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if created:  # a folder this save made: gone again, as if the save never started
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        raise
    return remove


def _destination_folder(folder: str | os.PathLike, what: str) -> Path:
    """``folder`` as an existing folder (created if new); ``NotAFolderError`` when it is a file."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotAFolderError(f"{what}: {folder} is a file, not a folder; nothing was written. Pass the path of a "
                              f"folder to write the model into (a new one is created)")
    if os.path.lexists(folder) and not folder.exists():
        raise NotAFolderError(f"{what}: {folder} is a symbolic link to nothing (a broken link or a link loop); "
                              f"nothing was written. Remove the link (rm {folder}) or pass another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        parent = next((p for p in folder.parents if p.exists() and not p.is_dir()), folder.parent)
        raise NotAFolderError(f"{what}: cannot make the folder {folder}: {parent} is a file, not a folder; "
                              f"nothing was written") from err
    return folder


def _files_to_replace(folder: Path, writes: set[str], config: dict | None, overwrite: bool, what: str,
                      overwrite_flag: str) -> list[str]:
    """The old checkpoint files to remove, or ``CheckpointExistsError`` when the folder holds another model."""
    names = sorted(entry.name for entry in os.scandir(folder)
                   if entry.is_file() or entry.is_symlink())
    model_files = [n for n in names if is_model_file(n)]
    collisions = [n for n in names if n in writes]
    if not model_files and not collisions:  # new, empty, or only unrelated files (or a lone tokenizer): kept
        return []
    others = [n for n in names if is_checkpoint_file(n) and n not in writes]
    same, why = _same_model(folder, config)
    stale = [n for n in others if is_model_file(n) and n not in ("config.json", "generation_config.json")]
    if same and not stale:
        return []  # a re-save of the same model: its tokenizer and generation config stay
    if overwrite:
        return others
    if same:
        why = (f"it holds the same model, but also {', '.join(stale[:6])}, which this save does not write and "
               f"would leave stale beside the new weights")
    removed = (f": its files this save does not write ({', '.join(others[:8])}{', ...' if len(others) > 8 else ''}) "
               f"are removed, other files are kept" if others else " (other files are kept)")
    shown = ", ".join(model_files[:8] or collisions[:8]) + (", ..." if len(model_files) > 8 else "")
    raise CheckpointExistsError(
        f"{what}: {folder} already holds {'a' if same else 'another'} checkpoint ({shown}): {why}. Nothing was "
        f"written. Write to a new folder, or pass {overwrite_flag} to replace that checkpoint{removed}")


def _same_model(folder: Path, config: dict | None) -> tuple[bool, str]:
    """(True, '') when ``folder/config.json`` describes the model ``config`` does; else (False, why not)."""
    path = folder / "config.json"
    if config is None:
        return False, "this save has no config.json to compare with it"
    if not path.is_file():
        return False, "it has no config.json to tell whether it is the same model"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False, "its config.json cannot be read"
    if not isinstance(old, dict):
        return False, "its config.json is not a JSON object"
    new = json.loads(json.dumps(config))  # as it will read back (tuples -> lists, int keys -> strings)
    differ = sorted(k for k in set(old) | set(new) if k not in _STORAGE_KEYS and old.get(k) != new.get(k))
    if not differ:
        return True, ""
    shown = "; ".join(f"{k}: {_short(old, k)} there, {_short(new, k)} here" for k in differ[:4])
    return False, f"its config.json describes another model ({shown}{'; ...' if len(differ) > 4 else ''})"


def _short(values: dict, key: str) -> str:
    """``values[key]`` as JSON, cut to 40 characters; "absent" when there is no such key."""
    text = json.dumps(values[key]) if key in values else "absent"
    return text if len(text) <= 40 else text[:37] + "..."


def _finish_save(folder: Path, tmp: Path) -> None:
    """Apply a complete save's journal: rename its files into ``folder``, remove the stale ones, drop ``tmp``."""
    journal = json.loads((tmp / _JOURNAL).read_text(encoding="utf-8"))
    for name in journal["write"]:
        if (tmp / name).exists():  # already moved when an earlier attempt was interrupted
            os.replace(tmp / name, folder / name)
    for name in journal["remove"]:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(tmp)


def _pid_of(text: str) -> int | None:
    head = text.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _process_alive(pid: int, path: Path) -> bool:
    """Whether process ``pid`` may still be writing ``path`` (a dead one's temporary files are debris)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no cheap, harmless liveness probe: trust age (an hour) instead
        try:
            return time.time() - path.stat().st_mtime < 3600
        except OSError:
            return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def recover_folder(folder: str | os.PathLike) -> list[str]:
    """Clean up after saves into ``folder`` that a killed process left unfinished; returns what was cleaned.

    A save's temporary folder without its journal is removed (the save never completed: the
    folder still holds the previous files); one with its journal is finished (its renames
    done), so the folder holds the whole new checkpoint. ``write_atomic``'s temporary files
    from dead processes are removed. Saves of running processes are left alone. Called by
    every save and by ``load_model``; cheap (one directory listing) when there is nothing to do.
    """
    folder = Path(folder)
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and
                   (e.name.startswith(SAVE_DIR_PREFIX) or TEMP_FILE_MARK in e.name)]
    except OSError:
        return []
    cleaned = []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(SAVE_DIR_PREFIX) and entry.is_dir(follow_symlinks=False):
            pid = _pid_of(entry.name[len(SAVE_DIR_PREFIX):])
            if pid is None or _process_alive(pid, path):
                continue
            if (path / _JOURNAL).is_file():
                try:
                    _finish_save(folder, path)
                except OSError as err:
                    raise CheckpointError(
                        f"{folder}: a save that was complete but interrupted before all its files were in "
                        f"place could not be finished ({err}); make the folder writable and try again, or "
                        f"save the model again") from err
            else:
                shutil.rmtree(path, ignore_errors=True)
            cleaned.append(entry.name)
        elif TEMP_FILE_MARK in entry.name and entry.is_file(follow_symlinks=False):
            pid = _pid_of(entry.name.rsplit(TEMP_FILE_MARK, 1)[1])
            if pid is not None and not _process_alive(pid, path):
                with contextlib.suppress(OSError):
                    path.unlink()
                    cleaned.append(entry.name)
    return cleaned


def save_checkpoint(model: nn.Module, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """``config.json`` + ``model.safetensors`` in the Hugging Face layout (tied copies saved once); returns ``folder``.

    All or nothing (``write_model_folder``): an interrupted or killed save leaves the folder
    as it was (its debris removed by the next save or load), never new weights beside an old
    config. A folder holding another model's checkpoint is refused unless ``overwrite=True``,
    which also removes that checkpoint's shards, index and tokenizer files; re-saving the same
    model (an equal config.json) over its own folder needs no flag and keeps its tokenizer.
    """
    from safetensors.torch import save_file

    state = checkpoint_state_dict(model)
    config = {**model.config.to_dict(), "architectures": [model.architecture]}
    if getattr(model, "quantization", None) is not None:  # our own format: load_model recognises it
        config["quantization_config"] = {"quant_method": "course_lib", "scheme": str(model.quantization)}
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # fails (unserialisable) before anything is written
    write_model_folder(folder, {SAFETENSORS_NAME: lambda path: save_file(state, str(path), metadata={"format": "pt"}),
                                "config.json": lambda path: path.write_text(text, encoding="utf-8")},
                       overwrite=overwrite, config=config, what="save_pretrained")
    return Path(folder)


def tensor_identity(tensor: torch.Tensor) -> tuple:
    """What makes two entries of a state dict the *same* tensor, not just equal values: the same
    memory (storage), the same first element in it, the same shape and the same strides.

    ``state_dict()`` returns a new Python object for each entry (``id()`` differs even for a
    tied weight), and a slice, a row or a transpose shares memory without being the same tensor.
    """
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def tied_groups(state_dict: dict[str, torch.Tensor]) -> list[list[str]]:
    """The keys of ``state_dict`` that are one tensor under several names (tied weights), in groups.

    Each group (two keys or more) sorted, the groups sorted; tensors with no elements are
    never tied (they hold no memory to share). A saver keeps one key per group: safetensors
    refuses to store shared memory twice.
    """
    groups: dict[tuple, list[str]] = {}
    for key, tensor in state_dict.items():
        if tensor.numel():
            groups.setdefault(tensor_identity(tensor), []).append(key)
    return sorted(sorted(keys) for keys in groups.values() if len(keys) > 1)


# save_pretrained's max_shard_size units: powers of 1000, as disk sizes (huggingface_hub's parse_size_to_int)
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def _size_in_bytes(size: int | str) -> int:
    if isinstance(size, int):
        return size
    text = size.strip()
    unit = text[-2:].upper()
    if unit not in SIZE_UNITS:
        raise ValueError(f"max_shard_size={size!r}: give a number of bytes or a size ending in "
                         f"{', '.join(SIZE_UNITS)} (e.g. '5GB')")
    return int(float(text[:-2]) * SIZE_UNITS[unit])


def shard_index(state_dict: dict[str, torch.Tensor], max_shard_size: int | str = "5GB") -> dict:
    """The ``model.safetensors.index.json`` that ``save_pretrained(max_shard_size=...)`` writes.

    Tensors are taken in the state dict's order and packed greedily: a tensor that would take
    the current shard over ``max_shard_size`` (bytes, or "200MB", "5GB": powers of 1000)
    starts a new shard; a tensor bigger than the limit gets a shard of its own at once, so it
    comes before the shard still being filled. Shards are numbered in the order they are
    finished and named ``model-00001-of-00003.safetensors`` ...; a single shard is just
    ``model.safetensors`` (and then no index file is written). Every tensor is assumed to own
    its memory (tied copies are dropped before saving). Returns ``{"metadata": {"total_size":
    bytes of all tensors}, "weight_map": {key: file name}}``, the plan of huggingface_hub's
    ``split_torch_state_dict_into_shards`` (``transformers`` adds ``total_parameters`` to the
    metadata it writes).
    """
    limit = _size_in_bytes(max_shard_size)
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = total = 0
    for key, tensor in state_dict.items():
        size = tensor.nbytes
        total += size
        if size > limit:  # too big for any shard: alone, and the shard being filled stays open
            shards.append([key])
            continue
        if current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
    if current:
        shards.append(current)
    names = [SAFETENSORS_NAME] if len(shards) == 1 else \
        [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
    return {"metadata": {"total_size": total},
            "weight_map": {key: name for name, keys in zip(names, shards) for key in keys}}


def checkpoint_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds, on the CPU, in the file's layout: tied copies
    left out (saved once, under their source's key) and Conv1D weights transposed back to (in, out)."""
    tied = getattr(model, "tied_weights", {})
    return {k: (v.detach().T if stored_transposed(model, k) else v.detach()).to("cpu").contiguous()
            for k, v in model.state_dict().items() if k not in tied}


def write_atomic(target: Path, write) -> None:
    """Call ``write(temporary_path)`` in ``target``'s folder, then rename it to ``target``: readers
    see the old file or the whole new one, never half of it (an interrupted save leaves no debris).

    The temporary file is created with the permissions any new file gets (0644 under the usual
    umask, not ``mkstemp``'s 0600) and named ``.<name>.course_lib-tmp-<pid>-<random>``: one a
    killed process left behind is removed by the next ``write_atomic`` of the same file (and by
    ``recover_folder``).
    """
    target = Path(target)
    _remove_dead_temp_files(target)
    tmp = _new_temp_file(target)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())  # the writer may have recreated it 0600 (safetensors does)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """The permissions ``open()`` gives a new file: 0o666 minus the process's umask (0o644 under the usual 022)."""
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)  # elsewhere: the only way to read it is to set it, then put it back
        os.umask(umask)
    return 0o666 & ~umask


def _new_temp_file(target: Path) -> Path:
    """An empty new file beside ``target``, created as ``open()`` creates files (mode 0666 minus the umask)."""
    while True:
        tmp = target.parent / f".{target.name}{TEMP_FILE_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _remove_dead_temp_files(target: Path) -> None:
    prefix = f".{target.name}{TEMP_FILE_MARK}"
    try:
        names = [e.name for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = _pid_of(name[len(prefix):])
        path = target.parent / name
        if pid is not None and not _process_alive(pid, path):
            with contextlib.suppress(OSError):
                path.unlink()


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> dict:
    """A ``.bin`` checkpoint (a file or a model folder) -> ``dst/model.safetensors`` with today's names.

    Renames legacy ``gamma``/``beta``, drops non-parameter buffers and second copies of tied
    tensors (safetensors stores each tensor once), and, for a folder, copies every other
    file (config, tokenizer) beside it. Every written tensor is read back and compared before
    anything in ``dst`` is replaced; the folder is written all at once (``write_model_folder``).
    A ``dst`` holding another checkpoint is refused unless ``overwrite=True`` (which removes
    that checkpoint's other files); a ``dst`` that is a file is refused.
    Returns a summary dict (counts, renames, dropped keys, bytes, stale files removed).
    """
    from safetensors.torch import save_file

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist: pass a model folder (with {BIN_NAME} or {BIN_INDEX}) "
                                f"or a .bin file")
    if dst.exists() and not dst.is_dir():
        raise NotAFolderError(f"the destination {dst} is a file, not a folder; nothing was written. Pass a new "
                              f"folder to write model.safetensors (and copies of config and tokenizer) into")
    if src.is_file():
        folder, files = src.parent, [src]
    else:
        folder, files = src, weight_files(src)
    if dst.resolve() == folder.resolve():
        raise CheckpointError(f"write the converted model to a new folder, not into {folder} itself")
    state, renamed, dropped, seen = {}, {}, [], {}
    with CheckpointReader(files) as reader:
        for key in reader.keys():
            tensor = reader.get(key)
            new = rename_legacy_key(key)
            if is_ignored_buffer(new):
                dropped.append(f"{key} (buffer)")
                continue
            storage = tensor_identity(tensor)
            if storage in seen and tensor.numel():
                dropped.append(f"{key} (same tensor as {seen[storage]})")
                continue
            seen[storage] = new
            if new != key:
                renamed[key] = new
            if new in state:
                raise CheckpointError(f"{key} and another key both become {new!r}; this file mixes naming schemes")
            state[new] = tensor.contiguous()

    def write_weights(path: Path) -> None:
        save_file(state, str(path), metadata={"format": "pt"})
        with CheckpointReader([path]) as check:
            for key, tensor in state.items():
                if not torch.equal(check.get(key), tensor):
                    raise CheckpointError(f"{dst / SAFETENSORS_NAME}: tensor {key!r} did not read back equal; "
                                          f"the disk may be full")

    writers = {SAFETENSORS_NAME: write_weights}
    copies = sorted(item for item in folder.iterdir() if item.is_file() and not _is_weight_file(item.name)) \
        if src.is_dir() else []
    for item in copies:
        writers[item.name] = lambda path, item=item: shutil.copy2(item, path)
    config = None
    if (folder / "config.json").is_file() and src.is_dir():
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    removed = write_model_folder(dst, writers, overwrite=overwrite, config=config if isinstance(config, dict) else None,
                                 what="convert", overwrite_flag="--overwrite (overwrite=True)")
    out = dst / SAFETENSORS_NAME
    return {"tensors": len(state), "renamed": renamed, "dropped": dropped, "copied": [i.name for i in copies],
            "removed": removed, "bytes": out.stat().st_size, "path": out}


def _is_weight_file(name: str) -> bool:
    """Weights in any format (not copied beside a converted checkpoint)."""
    return (name.startswith(("pytorch_model", "model.safetensors", "model-", "tf_model", "flax_model"))
            or name.endswith((".bin", ".h5", ".msgpack", ".onnx", ".ot", ".safetensors", ".pt", ".pth")))
