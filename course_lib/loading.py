"""``load_model``: from a model name or folder to our own model with its published weights.

The steps, each in the module that owns it:

1. ``hub.resolve_source``: a Hub id, a course asset or a folder -> a local folder;
2. ``config.json`` -> the config dataclass of its ``model_type`` (``course_lib.models``);
3. build the model class for the task on the ``meta`` device: no memory, no random init;
4. ``checkpoint.match_keys``: checkpoint keys -> our names (prefixes, gamma/beta, ties);
   strict: every problem reported at once, nothing half-loaded;
5. ``checkpoint.load_state``: tensor by tensor from the memory-mapped file, converted to
   ``dtype`` and moved to ``device`` on the way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from course_lib import hub
from course_lib.checkpoint import (BIN_FILES, CheckpointError, CheckpointReader, StateDictMismatchError,
                                   check_fully_loaded, load_state, match_keys, weight_files)
from course_lib.models import TASKS, CourseModel, PretrainedConfig, config_from_dict, model_class

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16}


def read_config(folder: str | os.PathLike) -> PretrainedConfig:
    """``folder/config.json`` -> the config dataclass of its ``model_type``."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{Path(folder)} has no config.json, so the model's architecture and sizes are "
                              f"unknown. Download it with the weights (`hf download MODEL config.json`) or copy "
                              f"it from the model's Hub page into the folder")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); download it again") from err
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(values).__name__}")
    return config_from_dict(values, where=str(path))


def resolve_dtype(dtype, config: PretrainedConfig | None) -> torch.dtype:
    """``None`` -> float32 (as ``transformers``); ``"auto"`` -> the dtype config.json records; names or torch dtypes.

    ``config`` is only read for ``"auto"``; any other value is checked without it.
    """
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        recorded = config.extra.get("dtype") or config.extra.get("torch_dtype") or "float32"
        return DTYPES.get(recorded, torch.float32)
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not a floating-point type; for integer weights use quantize=")
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype={dtype!r} is not supported: use None, 'auto', 'float32', 'float16', 'bfloat16' "
                     f"or a torch dtype; for integer weights use quantize='int8' or 'int4'")


def model_folder(src: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder with ``src``'s config and weights (fetching ``.bin`` only when there is no safetensors)."""
    folder = hub.resolve_source(src, revision, filenames=hub.CONFIG_FILES + hub.WEIGHT_FILES)
    try:
        weight_files(folder)
    except CheckpointError:
        if isinstance(src, str) and not Path(src).expanduser().exists() and src not in _asset_names():
            # a Hub repository that publishes only pytorch_model.bin (older models)
            folder = hub.resolve_source(src, revision, filenames=hub.CONFIG_FILES + BIN_FILES)
    return folder


def _asset_names() -> set[str]:
    from course_lib.assets import ASSETS

    return set(ASSETS)


def load_model(src: str | os.PathLike, task: str = "auto", dtype=None, device=None, quantize: str | None = None,
               *, revision: str | None = None, strict: bool = True) -> CourseModel:
    """Our model for ``src`` with its published weights, in eval mode.

    ``src``: a Hub id (``"roberta-base"``, ``"sentence-transformers/all-MiniLM-L6-v2"``), a
    course asset name, or a folder with ``config.json`` and weights.
    ``task``: ``"auto"`` (the architecture's default: ``"base"`` for BERT/RoBERTa,
    ``"causal-lm"`` for GPT-2),
    ``"base"`` (hidden states), ``"masked-lm"`` or ``"causal-lm"`` (logits).
    ``dtype``: ``None`` (float32), ``"auto"`` (as saved), or a float dtype / its name.
    ``strict``: refuse any missing, unexpected or wrongly shaped key (default). With
    ``strict=False`` missing parameters keep a random init and the problems are only
    reported in ``model.load_report``.
    The report of what was loaded, renamed and skipped is ``model.load_report``.
    """
    if quantize is not None:
        raise NotImplementedError(f"quantize={quantize!r}: quantization while loading arrives with chapter 07; "
                                  f"load with quantize=None for now")
    if task not in TASKS:  # checked before anything is downloaded
        raise ValueError(f"task={task!r} is not one of {', '.join(map(repr, TASKS))}")
    if dtype != "auto":
        resolve_dtype(dtype, None)  # raises for a bad dtype before anything is downloaded
    folder = model_folder(src, revision)
    config = read_config(folder)
    dtype = resolve_dtype(dtype, config)
    cls = model_class(config, task)
    source = f"{src}" if str(src) == str(folder) else f"{src} ({folder})"
    with CheckpointReader.from_folder(folder) as reader:
        shapes = reader.shapes()
        if strict:
            with torch.device("meta"):  # only shapes: every tensor will come from the file
                model = cls.for_checkpoint(config, shapes)
        else:
            model = cls.for_checkpoint(config, shapes).to(dtype)
        report = match_keys(model, shapes)
        if strict and not report.ok:
            raise StateDictMismatchError(
                f"the weights in {source} do not fit {cls.__name__} (task={task!r}):\n{report.problems()}\n"
                f"Check that the model id and task are right (a bare encoder has no masked-LM head: use "
                f"task='base'), and that config.json belongs to these weights; strict=False loads anyway "
                f"and leaves the problems in model.load_report", report)
        load_state(model, reader, report, dtype=dtype, device=device, source=source)
    if not strict and device is not None:
        model.to(device)
    check_fully_loaded(model, source)
    model.load_report = report
    return model.eval()
