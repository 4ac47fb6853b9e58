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

import dataclasses
import functools
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
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
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids", "attn.bias", "attn.masked_bias")

_REDOWNLOAD = ("download it again (Hub: `hf download MODEL --force-download`, or delete the model's folder "
               "under $HF_HOME/hub) or copy it again")


class CheckpointError(ValueError):
    """A model folder or weight file cannot be loaded; the message names the file and the fix."""


class CorruptCheckpointError(CheckpointError):
    """A weight file is truncated or is not what its name says."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asks to run code or build objects other than tensors: refused before anything ran."""


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
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"{index_file} is not a valid shard index (a JSON object with a "
                                     f"'weight_map'): {err}; {_REDOWNLOAD}") from err
    files = [index_file.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index_file.name} lists shards that are not in {index_file.parent}: "
                              f"{', '.join(missing)}; download every shard (`hf download MODEL`)")
    return files


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
            handle = _open_safetensors(path) if path.suffix == ".safetensors" else _open_bin(path)
            keys = handle.keys() if path.suffix == ".safetensors" else list(handle)
            for key in keys:
                self._sources[key] = (path, handle)
            if path.suffix == ".safetensors":
                self._byte_ranges.update(_safetensors_byte_ranges(path))

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


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


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
    return {key: (8 + length + offsets[0], _SAFETENSORS_DTYPES.get(dtype, torch.uint8))
            for key, (dtype, _, offsets) in header.items()}


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

    def summary(self) -> str:
        """A few lines for humans: counts, then the skipped keys grouped by reason."""
        lines = [f"loaded {len(self.loaded)} tensors ({len(self.renamed)} renamed), skipped {len(self.skipped)}"]
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
               device=None, source: str = "the checkpoint") -> nn.Module:
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
    """
    mismatched = {ours for ours, *_ in report.mismatched}
    for ours, key in report.loaded.items():
        if ours in mismatched:
            continue
        module_path, _, name = ours.rpartition(".")
        module = model.get_submodule(module_path)
        transposed = ours in report.transposed
        if hasattr(module, "fill_from_checkpoint") and name == "weight" and reader.dtype(key).is_floating_point:
            # a quantized layer (chapter 07) reads and quantizes its float weight block by block
            module.fill_from_checkpoint(reader, key, transposed)
            continue
        # a transposed weight is copied anyway: read it with plain reads, so its file pages are not kept mapped
        tensor = reader.read_rows(key, 0, reader.shape(key)[0]) if transposed else reader.get(key)
        is_param = name in module._parameters
        expected = tuple(getattr(module, name).shape)
        if tuple(tensor.shape)[::-1 if transposed else 1] != expected:  # match_keys checked the header
            raise StateDictMismatchError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the model's "
                                         f"{ours!r} needs {expected[::-1 if transposed else 1]}", report)
        # parameters take the wanted dtype; buffers keep the one the model declares (quantized scales stay bfloat16)
        target = (dtype if is_param and dtype is not None else getattr(module, name).dtype) \
            if tensor.is_floating_point() else tensor.dtype
        if transposed:  # (in, out) -> (out, in), converted and made contiguous in one copy: fast kernels want rows
            tensor = torch.empty(tuple(tensor.shape)[::-1], dtype=target).copy_(tensor.T)
        else:
            tensor = tensor.to(target)  # no copy when the dtype is already right
        assign_tensor(model, ours, tensor.to(device) if device is not None else tensor)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    release_freed_memory()
    return model


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
# Writing

def save_checkpoint(model: nn.Module, folder: str | os.PathLike) -> Path:
    """``config.json`` + ``model.safetensors`` in the Hugging Face layout (tied copies saved once).

    Files are written to temporary names and renamed at the end, so an interrupted save
    never leaves a half-written ``model.safetensors`` behind.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state_dict(model)
    config = {**model.config.to_dict(), "architectures": [model.architecture]}
    if getattr(model, "quantization", None) is not None:  # our own format: load_model recognises it
        config["quantization_config"] = {"quant_method": "course_lib", "scheme": str(model.quantization)}
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    write_atomic(folder / SAFETENSORS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    write_atomic(folder / "config.json",
                  lambda path: path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
    return folder


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
    see the old file or the whole new one, never half of it (an interrupted save leaves no debris)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """A ``.bin`` checkpoint (a file or a model folder) -> ``dst/model.safetensors`` with today's names.

    Renames legacy ``gamma``/``beta``, drops non-parameter buffers and second copies of tied
    tensors (safetensors stores each tensor once), and, for a folder, copies every other
    file (config, tokenizer) beside it. Every written tensor is read back and compared.
    Returns a summary dict (counts, renames, dropped keys, bytes).
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist: pass a model folder (with {BIN_NAME} or {BIN_INDEX}) "
                                f"or a .bin file")
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
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / SAFETENSORS_NAME
    write_atomic(out, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    with CheckpointReader([out]) as check:
        for key, tensor in state.items():
            if not torch.equal(check.get(key), tensor):
                raise CheckpointError(f"{out}: tensor {key!r} did not read back equal; the disk may be full")
    copied = []
    if src.is_dir():
        for item in sorted(folder.iterdir()):
            if item.is_file() and not _is_weight_file(item.name):
                shutil.copy2(item, dst / item.name)
                copied.append(item.name)
    return {"tensors": len(state), "renamed": renamed, "dropped": dropped, "copied": copied,
            "bytes": out.stat().st_size, "path": out}


def _is_weight_file(name: str) -> bool:
    """Weights in any format (not copied beside a converted checkpoint)."""
    return (name.startswith(("pytorch_model", "model.safetensors", "model-", "tf_model", "flax_model"))
            or name.endswith((".bin", ".h5", ".msgpack", ".onnx", ".ot", ".safetensors", ".pt", ".pth")))
