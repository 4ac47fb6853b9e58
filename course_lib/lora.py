"""Chapter 08: LoRA (low-rank adaptation) from scratch, with adapters in PEFT's file layout.

Full fine-tuning updates every weight ``W`` (out, in) of a model. LoRA (Hu et al., 2021)
freezes ``W`` and learns a low-rank *change* instead::

    y = x W^T + b  +  (alpha / r) * x A^T B^T          A: (r, in),  B: (out, r),  r << min(in, out)

so the layer behaves as if its weight were ``W + (alpha / r) B A``. Only A and B train:
``r * (in + out)`` numbers instead of ``in * out`` (for a 384 x 384 query projection and
r = 8: 6,144 instead of 147,456). B starts at zero, so a fresh adapter changes nothing and
training starts from the pretrained model exactly; A starts random (kaiming-uniform, as
``nn.Linear`` and PEFT draw it), so B's gradient is not zero. ``alpha / r`` keeps the size
of the update roughly independent of the rank you pick.

After training, ``B A`` can be *merged* into ``W``: the model is then a plain model again,
no slower than before, and can be saved, reloaded and quantized like any other
(``merge_lora``). ``unmerge`` subtracts it back out.

What this module offers:

- ``LoRALinear``: wraps chapter 02's ``Linear`` (GPT-2's Conv1D weights are such Linears
  in this course, stored (out, in)); ``merge()`` / ``unmerge()``;
- ``apply_lora(model, target_modules, r, alpha, dropout)``: wrap every Linear whose name
  matches, with PEFT's matching rules, and freeze everything else;
  ``mark_only_lora_trainable``, ``count_parameters``, ``merge_lora``;
- ``save_adapter`` / ``load_adapter``: ``adapter_model.safetensors`` + ``adapter_config.json``
  exactly as Hugging Face's PEFT library writes them, so PEFT loads our adapters and we
  load PEFT's (``tests/test_lora.py`` checks both ways, and merging, against ``peft``).

The names mirror PEFT's (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``,
``scaling``), so a learner can hold ``peft/tuners/lora/layer.py`` beside this file.
PEFT files keep one adapter per folder; this module keeps one adapter per model (PEFT's
named multi-adapter machinery is left out on purpose).

Shapes: ``in`` / ``out`` the wrapped layer's features, ``r`` the rank, ``...`` any leading
dimensions (batch, tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from course_lib.checkpoint import CheckpointReader, stored_transposed, write_atomic
from course_lib.layers import Dropout, Linear

__all__ = [
    "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "PEFT_KEY_PREFIX", "DEFAULT_TARGET_MODULES",
    "LoRAError", "LoRAConfig", "lora_delta", "LoRALinear",
    "find_lora_targets", "apply_lora", "lora_modules", "mark_only_lora_trainable",
    "ParameterCount", "count_parameters", "merge_lora",
    "peft_task_type", "adapter_state_dict", "save_adapter", "load_adapter",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"  # older PEFT versions: a pickle, read with weights_only=True
# PEFT saves from a PeftModel whose `base_model` (the LoraModel) holds the transformers model as `model`
PEFT_KEY_PREFIX = "base_model.model."

# What PEFT targets when a LoraConfig names no modules (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
DEFAULT_TARGET_MODULES = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "gpt2": ("c_attn",),
    # PEFT's defaults for the Llama family (chapter 09): the query and value projections
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
}

# PEFT trains (and saves) these heads with the adapter of a classification model (task_type
# SEQ_CLS / TOKEN_CLS): they are new, randomly initialised, so they must be learned in full
CLASSIFIER_MODULES = ("classifier", "score")


class LoRAError(ValueError):
    """LoRA cannot be applied, merged, saved or loaded as asked; the message says why and what to do."""


# --------------------------------------------------------------------------------------
# The configuration, as adapter_config.json spells it

@dataclasses.dataclass
class LoRAConfig:
    """The settings of one adapter; field names are ``adapter_config.json``'s (PEFT's ``LoraConfig``).

    ``target_modules``: module-name suffixes (a list) or one regular expression that must
    match a whole module name (a string); see ``find_lora_targets``.
    ``modules_to_save``: modules trained in full and saved with the adapter (a new
    classification head). ``fan_in_fan_out``: the targets are stored (in, out) in the
    checkpoint layout (GPT-2's Conv1D); it changes how PEFT *merges*, not the A/B tensors.
    """

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("query", "value")
    modules_to_save: tuple[str, ...] | None = None
    fan_in_fan_out: bool = False
    task_type: str | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self):
        check_lora_hyperparameters(self.r, self.lora_alpha, self.lora_dropout)
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = tuple(self.modules_to_save)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def to_peft_dict(self) -> dict:
        """The JSON object PEFT reads as a ``LoraConfig``: our fields plus PEFT's for the features left
        at their defaults (so a reader never has to guess)."""
        targets = self.target_modules if isinstance(self.target_modules, str) else sorted(self.target_modules)
        return {
            "peft_type": "LORA",
            "task_type": self.task_type,
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": targets,
            "modules_to_save": None if self.modules_to_save is None else list(self.modules_to_save),
            "fan_in_fan_out": self.fan_in_fan_out,
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": None,
            "layers_pattern": None,
            "revision": None,
        }

    @classmethod
    def from_peft_dict(cls, values: dict, where: str = ADAPTER_CONFIG_NAME) -> "LoRAConfig":
        """Read an ``adapter_config.json`` object; refuse (naming the field) what this module does not implement."""
        if not isinstance(values, dict):
            raise LoRAError(f"{where} must hold a JSON object, found {type(values).__name__}")
        if values.get("peft_type") != "LORA":
            raise LoRAError(f"{where}: peft_type is {values.get('peft_type')!r}; this module loads LoRA adapters "
                            f"only (peft_type \"LORA\"). Load other PEFT methods with the peft library")
        used = [f"{name}={values[name]!r} ({what})" for name, what in UNSUPPORTED_FIELDS.items()
                if values.get(name) not in (None, False, {}, [], "none")]
        if used:
            raise LoRAError(f"{where} uses LoRA variants this course does not implement: {'; '.join(used)}. "
                            f"Train the adapter without them, or merge it with peft's merge_and_unload() and "
                            f"load the merged model instead")
        if values.get("target_modules") is None:
            raise LoRAError(f"{where} has no target_modules: it does not say which layers the adapter changes")
        try:
            return cls(r=values["r"], lora_alpha=values.get("lora_alpha", 8),
                       lora_dropout=values.get("lora_dropout", 0.0), target_modules=values["target_modules"],
                       modules_to_save=values.get("modules_to_save"),
                       fan_in_fan_out=bool(values.get("fan_in_fan_out", False)), task_type=values.get("task_type"),
                       base_model_name_or_path=values.get("base_model_name_or_path"))
        except KeyError as err:
            raise LoRAError(f"{where} lacks the field {err.args[0]!r}") from None
        except LoRAError as err:
            raise LoRAError(f"{where}: {err}") from None


# adapter_config.json fields that change what an adapter computes, and that this module refuses
# when set (their neutral values are null / false / {} / [] / "none")
UNSUPPORTED_FIELDS = {
    "use_dora": "weight-decomposed LoRA",
    "use_rslora": "rank-stabilised scaling alpha/sqrt(r)",
    "bias": "trained biases",
    "lora_bias": "a bias in lora_B",
    "rank_pattern": "a different rank per module",
    "alpha_pattern": "a different alpha per module",
    "layers_to_transform": "only some layers",
    "exclude_modules": "modules excluded from target_modules",
    "target_parameters": "LoRA on bare parameters",
    "trainable_token_indices": "trained embedding rows",
    "layer_replication": "duplicated layers",
    "alora_invocation_tokens": "activated LoRA",
    "use_qalora": "quantization-aware LoRA",
    "use_bdlora": "block-diagonal LoRA",
}


def check_lora_hyperparameters(r, alpha, dropout) -> None:
    """Raise ``LoRAError`` unless r is a positive int, alpha a positive number and 0 <= dropout < 1."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise LoRAError(f"r (the rank) must be a positive integer, got {r!r}; typical values are 4, 8 or 16")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise LoRAError(f"alpha must be a positive number (the update is scaled by alpha / r), got {alpha!r}; "
                        f"a common choice is alpha = 2 * r")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise LoRAError(f"dropout must be in [0, 1), got {dropout!r} (1 would zero the whole LoRA branch)")


# --------------------------------------------------------------------------------------
# The layer

def lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The change LoRA makes to a weight: ``scaling * B @ A``; A (r, in), B (out, r) -> (out, in).

    Its rank is at most r. Adding it to a Linear's (out, in) weight is merging; for a weight
    stored (in, out) (a Conv1D in the checkpoint layout) the same change is its transpose.
    """
    return (lora_B @ lora_A) * scaling  # (out, in); PEFT's order of operations, so merges agree bit for bit


class LoRALinear(nn.Module):
    """A frozen ``Linear`` plus a trainable low-rank branch: ``base(x) + scaling * B(A(dropout(x)))``.

    ``base_layer``: the wrapped ``Linear`` (weight (out, in), bias (out,) or None), frozen.
    ``lora_A``: ``Linear(in, r)`` without bias, weight (r, in), kaiming-uniform (a = sqrt 5)
    like every ``Linear`` and like PEFT's A. ``lora_B``: ``Linear(r, out)`` without bias,
    weight (out, r), zeros. ``scaling = alpha / r``. ``lora_dropout`` acts on the branch's
    input only, in training mode. x (..., in) -> (..., out), in the layer's dtype.

    ``merge()`` adds ``scaling * B @ A`` into the base weight so the forward pass is a single
    matrix product; ``unmerge()`` subtracts it again. While merged, ``forward`` is just the
    base layer: the branch is never added twice.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if isinstance(base_layer, LoRALinear):
            raise LoRAError("this layer already has a LoRA branch: wrap its base_layer, or merge it first")
        if not isinstance(base_layer, (Linear, nn.Linear)):
            raise LoRAError(f"LoRALinear wraps a Linear layer (weight (out, in)), got {type(base_layer).__name__}. "
                            f"Quantized layers cannot take LoRA here: apply LoRA to the float model, merge, then "
                            f"quantize")
        check_lora_hyperparameters(r, alpha, dropout)
        weight = base_layer.weight
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.lora_alpha = r, alpha
        self.scaling = alpha / r
        self.base_layer = base_layer
        base_layer.requires_grad_(False)  # W and b stay as pretrained
        self.lora_dropout = Dropout(dropout)
        self.lora_A = Linear(self.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)  # (r, in)
        self.lora_B = Linear(r, self.out_features, bias=False, device=weight.device, dtype=weight.dtype)  # (out, r)
        if not self.lora_B.weight.is_meta:
            nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapter starts as "no change"
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``: (out, in), what merging adds to the base weight."""
        return lora_delta(self.lora_A.weight, self.lora_B.weight, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        if self.merged:
            if self.training and torch.is_grad_enabled() and self.lora_B.weight.requires_grad:
                raise LoRAError("this LoRA layer is merged: a training step would not reach lora_A/lora_B. "
                                "Call unmerge() (or merge only after training) before training")
            return self.base_layer(x)  # W already holds W + scaling * B A
        result = self.base_layer(x)  # (..., out), the frozen pretrained path
        update = self.lora_B(self.lora_A(self.lora_dropout(x)))  # (..., in) -> (..., r) -> (..., out)
        return result + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scaling * B @ A, in place. Afterwards forward costs one matrix product."""
        if self.merged:
            raise LoRAError("this LoRA layer is already merged; merging again would add B A twice")
        self.base_layer.weight.add_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scaling * B @ A: back to the base weight, up to float rounding.

        Rounding: ``fl(fl(W + D) - D)`` differs from ``W`` by at most ``2^-24 (|W| + |W + D|)``
        per element in float32, up to second-order terms (one rounding per operation, each at
        most half a unit in the last place; D = scaling * B @ A is recomputed bit for bit from
        the same A and B). So W comes back bit for bit for most elements and within about one
        unit in the last place for the rest. ``tests/test_lora.py`` checks this bound.
        """
        if not self.merged:
            raise LoRAError("this LoRA layer is not merged: there is nothing to unmerge")
        self.base_layer.weight.sub_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.lora_alpha}, scaling={self.scaling:g}, merged={self.merged}")


# --------------------------------------------------------------------------------------
# Which modules: PEFT's matching rules

def _matches(name: str, patterns: tuple[str, ...] | str) -> bool:
    """PEFT's rule for ``target_modules``: a string is a regular expression the *whole* name must
    match; a list matches a name equal to an entry or ending in ``"." + entry``."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return name in patterns or any(name.endswith("." + p) for p in patterns)


def _saved_module_names(model: nn.Module, modules_to_save) -> list[str]:
    """The modules ``modules_to_save`` names, PEFT's rule: a module name *ending in* an entry (plain
    string suffix). A module inside one already found is part of it."""
    found = []
    for name, _ in model.named_modules():
        if name and any(name.endswith(m) for m in modules_to_save or ()):
            if not any(name.startswith(f + ".") for f in found):
                found.append(name)
    return found


def _resolve_modules_to_save(model: nn.Module, modules_to_save,
                             task_type: str | None) -> tuple[tuple[str, ...] | None, list[str]]:
    """(the entries, the full names of the modules they select). ``None`` with a classification
    ``task_type`` means PEFT's ``("classifier", "score")``; those two may match nothing (a model
    has one or the other), any other entry must match a module."""
    if modules_to_save is None and task_type in ("SEQ_CLS", "TOKEN_CLS"):
        modules_to_save = CLASSIFIER_MODULES
    entries = None if modules_to_save is None else tuple(modules_to_save)
    names = _saved_module_names(model, entries)
    for entry in entries or ():
        if entry not in CLASSIFIER_MODULES and not any(name.endswith(entry) for name in names):
            raise LoRAError(f"modules_to_save entry {entry!r} matches no module of this {type(model).__name__} "
                            f"(an entry matches a module whose name ends in it)")
    return entries, names


def _inside(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _tied_parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has, for parameters that have more than one (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {k: v for k, v in names.items() if len(v) > 1}


def _show(patterns) -> str:
    """target_modules as adapter_config.json writes it: a list, or one regular expression."""
    return repr(patterns if isinstance(patterns, str) else list(patterns))


def _linear_suffixes(model: nn.Module) -> str:
    """The last name part of every Linear in ``model``, for error messages: 'query, key, value, dense'."""
    parts = dict.fromkeys(name.rpartition(".")[2] for name, m in model.named_modules()
                          if isinstance(m, (Linear, nn.Linear)))
    return ", ".join(parts) or "(none)"


def find_lora_targets(model: nn.Module, target_modules: tuple[str, ...] | str,
                      modules_to_save=None, *, where: str = "target_modules") -> list[str]:
    """Names of the Linear modules of ``model`` that ``target_modules`` selects, in model order.

    PEFT's rules, so an adapter selects the same layers here and in ``peft``:

    - a list (or tuple) of names: a module matches when its full name equals an entry or
      ends in ``"." + entry``: ``"query"`` selects ``encoder.layer.0.attention.self.query``,
      ``"attn.c_proj"`` selects GPT-2's attention projection but not ``mlp.c_proj``;
    - one string: a regular expression that must match the whole name
      (``r".*\\.h\\.[01]\\.attn\\.c_attn"``: the first two blocks only);
    - modules inside ``modules_to_save`` are never targets (they are trained in full).

    Raises ``LoRAError`` when nothing matches (listing the names there are), when a match is
    not a Linear layer, or when its weight is tied to another tensor.
    """
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise LoRAError(f"{where}={_show(target_modules)} is not a valid regular expression ({err}); "
                            f"to match names by suffix pass a list, e.g. [{target_modules!r}]") from None
    elif not target_modules or not all(isinstance(t, str) and t for t in target_modules):
        raise LoRAError(f"{where} must be a non-empty list of module names (or one regular expression), "
                        f"got {target_modules!r}")
    saved = _saved_module_names(model, modules_to_save)
    tied = _tied_parameter_names(model).values()
    targets = []
    for name, module in model.named_modules():
        if not name or _inside(name, saved) or not _matches(name, target_modules):
            continue
        if not isinstance(module, (Linear, nn.Linear)):
            kind = type(module).__name__.removeprefix("Fused")  # a fused LayerNorm is a LayerNorm
            raise LoRAError(f"{where}={_show(target_modules)} selects {name!r}, a {kind}, but "
                            f"LoRA here wraps Linear layers only. Name Linear layers instead (this model's Linear "
                            f"layers end in: {_linear_suffixes(model)})")
        shared = next((names for names in tied if f"{name}.weight" in names), None)
        if shared is not None:
            others = sorted(n for n in shared if n != f"{name}.weight")
            raise LoRAError(f"{where}={_show(target_modules)} selects {name!r}, whose weight is tied to "
                            f"{', '.join(others)}: merging would change every tied copy (the embeddings too). "
                            f"Leave it out")
        targets.append(name)
    if not targets:
        raise LoRAError(f"{where}={_show(target_modules)} matches no module of this {type(model).__name__}. An entry "
                        f"matches a module whose name ends in '.<entry>'; this model's Linear layers end in: "
                        f"{_linear_suffixes(model)}")
    return targets


# --------------------------------------------------------------------------------------
# Applying LoRA to a model

def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} of every LoRA layer in ``model``, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def peft_task_type(model: nn.Module) -> str | None:
    """The ``task_type`` PEFT records for a model of this class ("CAUSAL_LM", "SEQ_CLS", ...)."""
    name = type(model).__name__
    for ending, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
                         ("ForQuestionAnswering", "QUESTION_ANS"), ("LMHeadModel", "CAUSAL_LM"),
                         ("ForCausalLM", "CAUSAL_LM"), ("ForMaskedLM", None)):
        if name.endswith(ending):
            return task
    return "FEATURE_EXTRACTION" if name.endswith("Model") else None  # a bare encoder/decoder: hidden states


def mark_only_lora_trainable(model: nn.Module, modules_to_save: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """Freeze every parameter except LoRA's A and B (and those of the modules named in
    ``modules_to_save``, full module names). Returns ``model``."""
    model.requires_grad_(False)
    for module in lora_modules(model).values():
        module.lora_A.requires_grad_(True)
        module.lora_B.requires_grad_(True)
    for name in modules_to_save:
        model.get_submodule(name).requires_grad_(True)
    return model


def apply_lora(model: nn.Module, target_modules: tuple[str, ...] | list[str] | str | None = None, r: int = 8,
               alpha: float = 16, dropout: float = 0.0, modules_to_save: list[str] | tuple[str, ...] | None = None
               ) -> nn.Module:
    """Wrap the Linear layers ``target_modules`` selects in ``LoRALinear``, freeze the rest; in place.

    ``target_modules``: see ``find_lora_targets``; ``None`` picks PEFT's default for the
    model's ``model_type`` (``("query", "value")`` for BERT/RoBERTa, ``("c_attn",)`` for GPT-2).
    ``r``, ``alpha``, ``dropout``: as in ``LoRALinear`` (scaling alpha / r).
    ``modules_to_save``: modules trained in full and saved with the adapter (PEFT's rule: a
    module name ending in an entry). ``None`` on a classification model means PEFT's
    ``("classifier", "score")``: the new head has to learn.
    The settings are kept as ``model.lora_config`` (a ``LoRAConfig``) for ``save_adapter``.
    Returns ``model``; only the adapters (and ``modules_to_save``) require gradients.
    """
    _refuse_second_adapter(model)
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise LoRAError(f"no default target_modules for model_type {model_type!r}: pass them, e.g. "
                            f"target_modules=('query', 'value'); this model's Linear layers end in: "
                            f"{_linear_suffixes(model)}")
        target_modules = DEFAULT_TARGET_MODULES[model_type]
    config = LoRAConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=modules_to_save, task_type=peft_task_type(model))
    return _apply_config(model, config)


def _refuse_second_adapter(model: nn.Module) -> None:
    if lora_modules(model) or hasattr(model, "lora_config"):
        raise LoRAError(f"this model already has a LoRA adapter ({len(lora_modules(model))} layers, e.g. "
                        f"{next(iter(lora_modules(model)), '?')!r}): applying LoRA twice would stack two "
                        f"adapters. Call merge_lora(model) first, or start again from a freshly loaded model")


def _apply_config(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """apply_lora's work for a validated ``config``; nothing changes in ``model`` unless all checks pass."""
    modules_to_save, saved = _resolve_modules_to_save(model, config.modules_to_save, config.task_type)
    targets = find_lora_targets(model, config.target_modules, modules_to_save)
    for name in targets:
        base = model.get_submodule(name)
        layer = LoRALinear(base, r=config.r, alpha=config.lora_alpha, dropout=config.lora_dropout)
        model.set_submodule(name, layer.train(base.training))  # an eval-mode model stays in eval mode (no dropout)
    mark_only_lora_trainable(model, saved)
    model.lora_config = dataclasses.replace(
        config, modules_to_save=modules_to_save,
        # PEFT's flag for layers that transformers keeps as Conv1D (in, out): GPT-2's
        fan_in_fan_out=any(stored_transposed(model, f"{name}.weight") for name in targets))
    return model


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """How many parameters train: ``trainable`` of ``total`` (tied tensors counted once)."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:  # the line PEFT's print_trainable_parameters() prints
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameter counts of ``model`` (each distinct tensor once)."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    return ParameterCount(trainable=sum(p.numel() for p in params if p.requires_grad),
                          total=sum(p.numel() for p in params))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain ``Linear`` back; in place.

    Afterwards the model has exactly the parameter names of the model LoRA was applied to
    (``save_pretrained`` writes an ordinary checkpoint, ``quantize_model`` sees ordinary
    Linears) and computes what the adapted model computed (up to float32 rounding).
    ``requires_grad`` flags are left as they are (the base weights frozen).
    """
    layers = lora_modules(model)
    if not layers:
        raise LoRAError("this model has no LoRA layers to merge (apply_lora or load_adapter first)")
    for name, layer in layers.items():
        if not layer.merged:
            layer.merge()
        model.set_submodule(name, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


# --------------------------------------------------------------------------------------
# Saving and loading adapters in PEFT's layout

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``adapter_model.safetensors`` holds, under PEFT's names, on the CPU.

    ``base_model.model.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r) for
    every LoRA layer (the same for GPT-2's layers: PEFT keeps A and B in the Linear layout
    even where the base weight is a Conv1D), then ``base_model.model.<module>.<param>`` for
    each module in ``modules_to_save``.
    """
    config = getattr(model, "lora_config", None)
    layers = lora_modules(model)
    if config is None or not layers:
        raise LoRAError("this model has no LoRA adapter to save: apply_lora(model, ...) (or load_adapter) first")
    state = {}
    for name, layer in layers.items():
        state[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        state[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    for name in _resolve_modules_to_save(model, config.modules_to_save, config.task_type)[1]:
        for key, tensor in model.get_submodule(name).state_dict().items():
            state[f"{PEFT_KEY_PREFIX}{name}.{key}"] = tensor
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_adapter(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` as PEFT's ``save_pretrained`` does.

    ``peft.PeftModel.from_pretrained(transformers_model, folder)`` loads them, and so does
    ``load_adapter``. ``base_model_name_or_path``: the model the adapter belongs to (a Hub id
    or a folder), recorded for whoever loads it. Each file is written to a temporary name and
    renamed, so an interrupted save never leaves half a file. Returns the folder.
    """
    from safetensors.torch import save_file

    state = adapter_state_dict(model)
    config = dataclasses.replace(model.lora_config, base_model_name_or_path=base_model_name_or_path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / ADAPTER_WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    text = json.dumps(config.to_peft_dict(), indent=2, sort_keys=True) + "\n"
    write_atomic(folder / ADAPTER_CONFIG_NAME, lambda path: path.write_text(text, encoding="utf-8"))
    return folder


def read_adapter_config(folder: str | os.PathLike) -> LoRAConfig:
    """``folder/adapter_config.json`` -> ``LoRAConfig``, with errors that name the file."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG_NAME
    if not path.is_file():
        hint = " (it holds a full model: load it with load_model)" if (folder / "config.json").is_file() else ""
        raise LoRAError(f"{folder} has no {ADAPTER_CONFIG_NAME}, so it is not a LoRA adapter folder{hint}. "
                        f"An adapter folder holds {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}, as "
                        f"save_adapter or peft's save_pretrained write them")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoRAError(f"{path} is not valid JSON ({err}); save the adapter again") from None
    return LoRAConfig.from_peft_dict(values, where=str(path))


def _adapter_weights_file(folder: Path) -> Path:
    for name in (ADAPTER_WEIGHTS_NAME, ADAPTER_WEIGHTS_BIN):
        if (folder / name).is_file():
            return folder / name
    raise LoRAError(f"{folder} has {ADAPTER_CONFIG_NAME} but no {ADAPTER_WEIGHTS_NAME} (or {ADAPTER_WEIGHTS_BIN}): "
                    f"the adapter's weights are missing; copy or save the adapter again")


def _expected_adapter_shapes(model: nn.Module, config: LoRAConfig, targets: list[str],
                             saved: list[str]) -> dict[str, tuple[int, ...]]:
    """{our name: shape} of every tensor an adapter with ``config`` must provide for ``model``."""
    shapes = {}
    for name in targets:
        base = model.get_submodule(name)
        shapes[f"{name}.lora_A.weight"] = (config.r, base.in_features)
        shapes[f"{name}.lora_B.weight"] = (base.out_features, config.r)
    for name in saved:
        for key, tensor in model.get_submodule(name).state_dict().items():
            shapes[f"{name}.{key}"] = tuple(tensor.shape)
    return shapes


def _match_adapter_keys(model: nn.Module, file_shapes: dict[str, tuple], expected: dict[str, tuple],
                        source: str) -> dict[str, str]:
    """{our name: file key}, or a ``LoRAError`` listing every missing, unexpected and misshaped tensor.

    File keys are ``base_model.model.<module path>`` in the transformers model the adapter was
    trained on; our module paths are the same names. An adapter trained on a bare encoder
    (``encoder.layer...``) also fits the encoder inside a task model (``bert.encoder.layer...``)
    and the other way round: one prefix rule for the whole file, as ``checkpoint.match_keys``.
    """
    stripped = {(k[len(PEFT_KEY_PREFIX):] if k.startswith(PEFT_KEY_PREFIX) else k): k for k in file_shapes}
    prefix = getattr(model, "base_model_prefix", "")
    rules = [lambda k: k]
    if prefix:
        rules += [lambda k: k[len(prefix) + 1:] if k.startswith(prefix + ".") else k, lambda k: f"{prefix}.{k}"]
    rule = max(rules, key=lambda f: sum(f(k) in expected for k in stripped))
    found = {rule(k): key for k, key in stripped.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [key for ours, key in found.items() if ours not in expected]
    misshaped = [f"{found[k]}: the adapter has {tuple(file_shapes[found[k]])}, this model needs {shape}"
                 for k, shape in expected.items() if k in found and tuple(file_shapes[found[k]]) != shape]
    if missing or unexpected or misshaped:
        lines = []
        for title, items in (("missing from the adapter", missing),
                             ("in the adapter but not in this model", unexpected), ("with the wrong shape", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {item}" for item in items[:10]] + ([f"    ... and {len(items) - 10} more"]
                                                                   if len(items) > 10 else [])
        raise LoRAError(f"the adapter in {source} does not fit this {type(model).__name__}:\n" + "\n".join(lines) +
                        "\nCheck that it was trained on this model (same architecture, sizes and task); nothing "
                        "was changed in the model")
    return {ours: found[ours] for ours in expected}


def load_adapter(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in ``folder`` (by ``save_adapter`` or peft) to ``model``; in place.

    Reads ``adapter_config.json`` (r, lora_alpha, lora_dropout, target_modules,
    modules_to_save), checks that every tensor of ``adapter_model.safetensors`` (or an older
    ``adapter_model.bin``, read without running any pickled code) has a place and the right
    shape in ``model`` and that nothing is missing, and only then wraps the target layers
    and copies the tensors in (cast to the model's dtype and device). On any error the model
    is left untouched. Returns ``model`` with only the adapter trainable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LoRAError(f"{folder} is not a folder; pass the folder save_adapter (or peft's save_pretrained) wrote")
    _refuse_second_adapter(model)
    config = read_adapter_config(folder)
    weights_file = _adapter_weights_file(folder)
    origin = f" (made for {config.base_model_name_or_path})" if config.base_model_name_or_path else ""
    try:
        modules_to_save, saved = _resolve_modules_to_save(model, config.modules_to_save, config.task_type)
        targets = find_lora_targets(model, config.target_modules, modules_to_save,
                                    where=f"{folder / ADAPTER_CONFIG_NAME}'s target_modules")
    except LoRAError as err:
        raise LoRAError(f"{err}. The adapter{origin} was probably trained on another architecture") from None
    expected = _expected_adapter_shapes(model, config, targets, saved)
    with CheckpointReader([weights_file]) as reader:
        names = _match_adapter_keys(model, reader.shapes(), expected, f"{folder}{origin}")
        tensors = {ours: reader.get(key) for ours, key in names.items()}
    _apply_config(model, config)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for ours, tensor in tensors.items():
            state[ours].copy_(tensor)  # copy_ casts to the parameter's dtype and device
    return model
