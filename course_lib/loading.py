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
import warnings
from pathlib import Path

import torch

from course_lib import hub, quantization
from course_lib.checkpoint import (BIN_FILES, CheckpointError, CheckpointReader, IncompleteLoadWarning, LoadReport,
                                   StateDictMismatchError, assign_tensor, check_fully_loaded, load_state, match_keys,
                                   recover_folder, weight_files)
from course_lib.models import (CLASSIFICATION_TASKS, TASKS, CourseModel, PretrainedConfig, config_from_dict,
                               model_class, task_of_architecture)

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


def available_devices() -> list[str]:
    """The devices this PyTorch can use now: "cpu", then "cuda:0" ..., "mps", "xpu:0" ... where present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def check_device(device) -> torch.device | None:
    """``device=`` -> a ``torch.device`` this machine has (None stays None); a clear error naming what it has.

    Checked before anything is downloaded or read: otherwise a CPU-only PyTorch fails deep inside
    its CUDA initialisation ("Torch not compiled with CUDA enabled") halfway through loading.
    """
    if device is None:
        return None
    have = available_devices()
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a device name; this machine has: {', '.join(have)} "
                         f"(e.g. device='cpu' or device='cuda')") from None
    if wanted.type == "cpu":
        return wanted
    if wanted.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only PyTorch (no CUDA in this build)" if torch.version.cuda is None \
            else "a PyTorch built for CUDA, but no GPU (or driver) is visible"
        raise ValueError(f"device={device!r}: this machine has {build}; it has: {', '.join(have)}. Use "
                         f"device='cpu' (or None), or install the CUDA build of PyTorch on a machine with an "
                         f"NVIDIA GPU")
    label = str(wanted)  # "cuda", "cuda:1", "mps"
    if not any(d == label or d.split(":")[0] == label or (d == wanted.type and wanted.index in (None, 0))
               for d in have):
        raise ValueError(f"device={device!r} is not available on this machine; it has: {', '.join(have)}")
    return wanted


def model_folder(src: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder with ``src``'s config and weights (fetching ``.bin`` only when there is no safetensors)."""
    # an image model's preprocessor_config.json too (classify_image reads it from the same folder)
    folder = hub.resolve_source(src, revision, filenames=hub.CONFIG_FILES + hub.PREPROCESSOR_FILES + hub.WEIGHT_FILES)
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


def _head_keys(model: CourseModel) -> dict[str, list[str]]:
    """{head module: its parameter names} for the task head's modules (``model.head_modules``)."""
    names = [k for k in model.state_dict(keep_vars=True) if k not in getattr(model, "tied_weights", {})]
    return {m: [k for k in names if k.startswith(m + ".")] for m in getattr(model, "head_modules", ())}


def _new_head_keys(model: CourseModel, report: LoadReport, replace_mismatched: bool) -> list[str]:
    """The head modules a new head initialises: those the file has none of (every key missing) and, with
    ``replace_mismatched``, those whose file tensors have other shapes (a head for other classes)."""
    unusable = set(report.missing) | ({ours for ours, *_ in report.mismatched} if replace_mismatched else set())
    return [k for keys in _head_keys(model).values() if keys and set(keys) <= unusable for k in keys]


def init_new_head(model: CourseModel, keys: list[str], dtype: torch.dtype, device=None) -> None:
    """Fill ``keys`` (a new task head's parameters) as ``transformers``' ``_init_weights`` does for a Linear:
    weights N(0, ``initializer_range``), biases 0. Draws from torch's global RNG: seed it first."""
    std = getattr(model.config, "initializer_range", 0.02)
    for key in keys:
        shape = tuple(model.get_parameter(key).shape)
        tensor = torch.zeros(shape, dtype=dtype, device=device)
        if key.endswith(".weight"):
            tensor.normal_(mean=0.0, std=std)
        assign_tensor(model, key, tensor)


def _check_head_task(config: PretrainedConfig, task: str, checkpoint_keys, folder: Path) -> None:
    """Refuse to read a file's classification head as another task's head (same key, another meaning).

    BERT's sequence and token heads are both ``classifier.weight`` (num_labels, C): only
    config.json's ``architectures`` tells which one a file holds.
    """
    if task not in CLASSIFICATION_TASKS:
        return
    names = config.extra.get("architectures") or []
    saved = task_of_architecture(names[0]) if names else None
    has_head = any(k.startswith("classifier.") for k in checkpoint_keys)
    if saved in CLASSIFICATION_TASKS and saved != task and has_head:
        raise CheckpointError(
            f"{folder}/config.json says these weights are a {names[0]}: its 'classifier' is a {saved} head, and "
            f"task={task!r} would read it as a {task} head, a different layer with the same key. Load it with "
            f"task={saved!r}; for its encoder alone use task='base'")


def _head_hint(model: CourseModel, report: LoadReport, config: PretrainedConfig, task: str) -> str:
    """One more paragraph for the strict-loading error when the trouble is the task head."""
    if task not in CLASSIFICATION_TASKS:
        return ""
    head = [k for keys in _head_keys(model).values() for k in keys]
    absent = [k for k in head if k in report.missing]
    if absent and set(report.missing) <= set(head):
        return (f"\nThe file has no {task} head ({', '.join(absent)} missing): it holds a model without one, "
                f"such as a pretrained encoder. To fine-tune it, name the classes and a new head is initialised: "
                f"load_model(src, task={task!r}, id2label={{0: 'negative', 1: 'positive'}}) or num_labels=2 "
                f"(call torch.manual_seed first for the same head every run).")
    wrong = [(ours, a, b) for ours, _, a, b in report.mismatched if ours in head]
    if wrong:
        ours, a, b = wrong[0]
        return (f"\nThe head in the file predicts {b[0]} classes ({ours} {tuple(b)}), but the config says "
                f"num_labels={config.num_labels} ({tuple(a)}). Leave num_labels/id2label out to use the file's head "
                f"as it is; to train a head for your classes instead, add strict=False: the file's head is then "
                f"replaced by a new one (listed in model.load_report.initialised).")
    return ""


def load_model(src: str | os.PathLike, task: str = "auto", dtype=None, device=None, quantize: str | None = None,
               *, revision: str | None = None, strict: bool = True, num_labels: int | None = None,
               id2label: dict[int, str] | list[str] | None = None, fast: bool = True) -> CourseModel:
    """Our model for ``src`` with its published weights, in eval mode.

    ``src``: a Hub id (``"roberta-base"``, ``"sentence-transformers/all-MiniLM-L6-v2"``), a
    course asset name, a folder with ``config.json`` and weights, or a ``.gguf`` file
    (llama.cpp's format, GPT-2 architecture: read and dequantized by ``course_lib.export``).
    ``task``: ``"auto"`` (the architecture's default: ``"base"`` for BERT/RoBERTa,
    ``"causal-lm"`` for GPT-2, ``"image-classification"`` for ResNet and ViT),
    ``"base"`` (hidden states), ``"masked-lm"`` or ``"causal-lm"`` (logits),
    ``"sequence-classification"`` (logits (B, num_labels)), ``"token-classification"``
    (logits (B, T, num_labels)) or ``"image-classification"`` (logits (B, num_labels) from
    pixel_values (B, 3, H, W)); the classes are config.json's ``id2label``.
    ``num_labels`` / ``id2label`` (classification only): the classes of the head, as
    ``from_pretrained`` takes them. When the file has no head (a pretrained encoder to
    fine-tune), a new one is initialised: weights N(0, initializer_range) from torch's
    global RNG, biases 0; ``model.load_report.initialised`` lists its keys.
    ``dtype``: ``None`` (float32), ``"auto"`` (as saved), or a float dtype / its name.
    ``quantize``: ``None``, ``"int8"`` (per-channel) or ``"int4"`` (groups of 32 with a zero
    point; also ``"int4-g64"``, ``"int4-g128"``, ``"-sym"`` variants, ``"int8-tensor"``): weight-only,
    applied while reading the file, so a float32 copy of the model never exists
    (``course_lib.quantization``). A folder written by a quantized model's
    ``save_pretrained`` loads quantized as it was saved.
    ``strict``: refuse any missing, unexpected or wrongly shaped key (default). With
    ``strict=False`` missing parameters keep a random init and the problems are only
    reported in ``model.load_report``.
    ``fast``: ``True`` (default) runs the fastest path the course has for the device
    (``course_lib.fused.speed_up``: PyTorch's fused kernels, weights stored as this CPU reads
    them fastest); ``False`` keeps chapter 02's layers as written, step by step: the teaching
    path, which the notebooks show. Both give the same results to float32 rounding.
    The report of what was loaded, renamed and skipped is ``model.load_report``; the folder the
    files were read from is ``model.source_folder`` (``classify_image`` finds the image model's
    ``preprocessor_config.json`` there).
    """
    if task not in TASKS:  # checked before anything is downloaded
        raise ValueError(f"task={task!r} is not one of {', '.join(map(repr, TASKS))}")
    labels_given = num_labels is not None or id2label is not None
    if labels_given and task not in CLASSIFICATION_TASKS:
        raise ValueError(f"num_labels= and id2label= name the classes of a classification head; task={task!r} has "
                         f"none: use task='sequence-classification' or 'token-classification'")
    if dtype != "auto":
        resolve_dtype(dtype, None)  # raises for a bad dtype before anything is downloaded
    check_device(device)
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be True (the fastest path) or False (chapter 02's layers), got {fast!r}")
    scheme = _quantize_scheme(quantize)
    if str(src).endswith(".gguf") and Path(src).is_file():  # llama.cpp's single file (chapter 11)
        if task not in ("auto", "causal-lm"):
            raise ValueError(f"{src} is a GGUF file: it holds a causal language model; use task='auto' or 'causal-lm'")
        from course_lib.export.gguf_export import load_gguf_model

        return _fast_or_not(load_gguf_model(src, dtype=dtype, device=device, quantize=quantize), fast)
    folder = model_folder(src, revision)
    recover_folder(folder)  # a save killed halfway: finish it or remove its temporary files
    config = read_config(folder)
    if labels_given:
        config.set_labels(num_labels, id2label)
    dtype = resolve_dtype(dtype, config)
    saved = _saved_scheme(config, folder)
    if saved is not None and scheme not in (None, saved):
        raise ValueError(f"{folder} holds a model already quantized as {saved}; load it with quantize=None "
                         f"(or {str(saved)!r}), or quantize the original float checkpoint as {scheme}")
    cls = model_class(config, task)
    source = f"{src}" if str(src) == str(folder) else f"{src} ({folder})"
    with CheckpointReader.from_folder(folder) as reader:
        shapes = reader.shapes()
        _check_head_task(config, task, shapes, folder)
        if strict:
            with torch.device("meta"):  # only shapes: every tensor will come from the file
                model = cls.for_checkpoint(config, shapes)
        else:
            model = cls.for_checkpoint(config, shapes).to(dtype)
        if saved is not None:  # the file holds integers and scales: match against the quantized layers
            quantization.quantize_model(model, saved)
        report = match_keys(model, shapes)
        new_head = _new_head_keys(model, report, replace_mismatched=not strict) if labels_given else []
        if new_head:
            if scheme is not None or saved is not None:
                raise ValueError(f"{source} has no {task} head for these classes, so a new one would start "
                                 f"untrained: fine-tune it in float first, save_pretrained, then load that folder "
                                 f"with quantize=")
            for ours, key, _, _ in [m for m in report.mismatched if m[0] in new_head]:
                del report.loaded[ours]
                report.skipped[key] = "a head for other classes: replaced by a new one"
            report.mismatched = [m for m in report.mismatched if m[0] not in new_head]
            report.missing = [k for k in report.missing if k not in new_head]
            report.initialised = new_head
        if strict and not report.ok:
            raise StateDictMismatchError(
                f"the weights in {source} do not fit {cls.__name__} (task={task!r}):\n{report.problems()}\n"
                f"Check that the model id and task are right (a bare encoder has no masked-LM head: use "
                f"task='base'), and that config.json belongs to these weights; strict=False loads anyway "
                f"and leaves the problems in model.load_report{_head_hint(model, report, config, task)}", report)
        if scheme is not None and saved is None:
            # quantize while loading: the layers are swapped now (still without data) and each
            # one quantizes its weight block by block as it is read; float32 is never whole
            quantization.quantize_model(model, scheme)
        columns = frozenset()
        if fast and (device is None or torch.device(device).type == "cpu"):  # speed_up's layout, written as read
            from course_lib.fused import column_keys

            columns = column_keys(model, dtype)
        load_state(model, reader, report, dtype=dtype, device=None if scheme or saved else device, source=source,
                   columns=columns)
        if new_head:
            init_new_head(model, new_head, dtype, device if strict else None)
    if scheme is not None or saved is not None:
        quantization.use_kernel_layouts(model)  # a no-op for layers quantized while reading
        model.to(device=device, dtype=dtype)  # quantized layers keep their integers and scales, note the dtype
    elif not strict and device is not None:
        model.to(device)
    check_fully_loaded(model, source)
    model.load_report = report
    model.source_folder = Path(folder)  # where config.json (and an image model's preprocessor_config.json) are
    if not report.ok:  # strict=False: this model is not the checkpoint, and the user must hear it
        warnings.warn(IncompleteLoadWarning(
            f"load_model(strict=False): {source} did not fill {cls.__name__} (task={task!r}) completely: "
            f"{report.counts()}; model.load_report.summary() lists every key. The random parts compute "
            f"nonsense until trained"), stacklevel=2)
    return _fast_or_not(model.eval(), fast)


def _fast_or_not(model, fast: bool):
    if fast:
        from course_lib.fused import speed_up

        speed_up(model)
    return model
