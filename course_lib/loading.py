"""``load_model``: from a model name or folder to our own model with its published weights.

The steps, each in the module that owns it:

1. ``hub.resolve_source``: a Hub id, a course asset or a folder -> a local folder;
2. ``config.json`` -> the config dataclass of its ``model_type`` (``course_lib.models``);
3. build the model class for the task on the ``meta`` device: no memory, no random init;
4. ``checkpoint.match_keys``: checkpoint keys -> our names (prefixes, gamma/beta, ties);
   strict: every problem reported at once, nothing half-loaded;
5. ``checkpoint.load_state``: tensor by tensor from the memory-mapped file, converted to
   ``dtype`` and moved to ``device`` on the way (or, with ``quantize=``, quantized block by
   block as it is read: ``course_lib.quantization``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from course_lib import hub, quantization
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


def _quantize_scheme(quantize):
    """``quantize=`` -> a ``quantization.Scheme`` (or None), with an error that names the choices."""
    if quantize is None:
        return None
    if str(quantize).lower() in DTYPES:
        raise ValueError(f"quantize={quantize!r} is a float type: load with dtype={quantize!r} instead; quantize= "
                         f"takes 'int8' or 'int4' (also 'int4-g64', 'int4-g128', '-sym' variants, 'int8-tensor')")
    return quantization.parse_scheme(quantize)


def _saved_scheme(config: PretrainedConfig, folder: Path):
    """The scheme of a checkpoint ``save_pretrained`` wrote from a quantized model, else None."""
    saved = config.extra.get("quantization_config")
    if saved is None:
        return None
    if not isinstance(saved, dict) or saved.get("quant_method") != "course_lib":
        method = saved.get("quant_method") if isinstance(saved, dict) else saved
        raise CheckpointError(f"{folder}/config.json says the weights are quantized with {method!r}, a format "
                              f"this course cannot read; load the original float checkpoint (and quantize= it)")
    return quantization.parse_scheme(saved.get("scheme", ""))


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
    ``quantize``: ``None``, ``"int8"`` (per-channel) or ``"int4"`` (groups of 32 with a zero
    point; also ``"int4-g64"``, ``"int4-g128"``, ``"-sym"`` variants, ``"int8-tensor"``): weight-only,
    applied while reading the file, so a float32 copy of the model never exists
    (``course_lib.quantization``). A folder written by a quantized model's
    ``save_pretrained`` loads quantized as it was saved.
    ``strict``: refuse any missing, unexpected or wrongly shaped key (default). With
    ``strict=False`` missing parameters keep a random init and the problems are only
    reported in ``model.load_report``.
    The report of what was loaded, renamed and skipped is ``model.load_report``.
    """
    if task not in TASKS:  # checked before anything is downloaded
        raise ValueError(f"task={task!r} is not one of {', '.join(map(repr, TASKS))}")
    if dtype != "auto":
        resolve_dtype(dtype, None)  # raises for a bad dtype before anything is downloaded
    scheme = _quantize_scheme(quantize)
    folder = model_folder(src, revision)
    config = read_config(folder)
    dtype = resolve_dtype(dtype, config)
    saved = _saved_scheme(config, folder)
    if saved is not None and scheme not in (None, saved):
        raise ValueError(f"{folder} holds a model already quantized as {saved}; load it with quantize=None "
                         f"(or {str(saved)!r}), or quantize the original float checkpoint as {scheme}")
    cls = model_class(config, task)
    source = f"{src}" if str(src) == str(folder) else f"{src} ({folder})"
    with CheckpointReader.from_folder(folder) as reader:
        shapes = reader.shapes()
        if strict:
            with torch.device("meta"):  # only shapes: every tensor will come from the file
                model = cls.for_checkpoint(config, shapes)
        else:
            model = cls.for_checkpoint(config, shapes).to(dtype)
        if saved is not None:  # the file holds integers and scales: match against the quantized layers
            quantization.quantize_model(model, saved)
        report = match_keys(model, shapes)
        if strict and not report.ok:
            raise StateDictMismatchError(
                f"the weights in {source} do not fit {cls.__name__} (task={task!r}):\n{report.problems()}\n"
                f"Check that the model id and task are right (a bare encoder has no masked-LM head: use "
                f"task='base'), and that config.json belongs to these weights; strict=False loads anyway "
                f"and leaves the problems in model.load_report", report)
        if scheme is not None and saved is None:
            # quantize while loading: the layers are swapped now (still without data) and each
            # one quantizes its weight block by block as it is read; float32 is never whole
            quantization.quantize_model(model, scheme)
        load_state(model, reader, report, dtype=dtype, device=None if scheme or saved else device, source=source)
    if scheme is not None or saved is not None:
        quantization.use_kernel_layouts(model)  # a no-op for layers quantized while reading
        model.to(device=device, dtype=dtype)  # quantized layers keep their integers and scales, note the dtype
    elif not strict and device is not None:
        model.to(device)
    check_fully_loaded(model, source)
    model.load_report = report
    return model.eval()
