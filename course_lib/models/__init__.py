"""The course's model architectures, and which class serves which ``model_type`` and task.

``config.json``'s ``model_type`` picks the architecture; the task picks the head:

- ``"base"``: the bare model, hidden states (B, T, C);
- ``"masked-lm"``: encoder + masked-LM head, logits (B, T, V);
- ``"causal-lm"``: decoder + LM head, logits (B, T, V) (GPT-2, chapter 06).
"""

from __future__ import annotations

from course_lib.models.base import CourseModel, PretrainedConfig
from course_lib.models.encoder import (BertForMaskedLM, BertModel, EncoderConfig, RobertaForMaskedLM,
                                       RobertaModel)
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model

TASKS = ("auto", "base", "masked-lm", "causal-lm")

# model_type -> (config class, {task: model class}, task that "auto" means)
ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], dict[str, type[CourseModel]], str]] = {
    "bert": (EncoderConfig, {"base": BertModel, "masked-lm": BertForMaskedLM}, "base"),
    "roberta": (EncoderConfig, {"base": RobertaModel, "masked-lm": RobertaForMaskedLM}, "base"),
    # XLM-RoBERTa is RoBERTa with a larger (SentencePiece) vocabulary: the same code path
    "xlm-roberta": (EncoderConfig, {"base": RobertaModel, "masked-lm": RobertaForMaskedLM}, "base"),
    "gpt2": (GPT2Config, {"base": GPT2Model, "causal-lm": GPT2LMHeadModel}, "causal-lm"),
}


def architecture(model_type: str | None, where: str = "config.json"):
    """(config class, {task: class}, auto task) for ``model_type``; a clear error when unknown."""
    if not model_type:
        raise ValueError(f"{where} has no 'model_type': cannot tell which architecture this is. Add e.g. "
                         f"\"model_type\": \"bert\"; supported: {', '.join(ARCHITECTURES)}")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{where}: model_type {model_type!r} is not an architecture the course implements; "
                         f"supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def config_from_dict(values: dict, where: str = "config.json") -> PretrainedConfig:
    """The config dataclass for ``values['model_type']`` filled from ``values``."""
    config_class, _, _ = architecture(values.get("model_type"), where)
    try:
        return config_class.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def model_class(config: PretrainedConfig, task: str = "auto") -> type[CourseModel]:
    """The model class for ``config``'s architecture and ``task`` ("auto" = the architecture's default)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {', '.join(map(repr, TASKS))}")
    _, classes, auto = architecture(config.model_type)
    task = auto if task == "auto" else task
    if task not in classes:
        raise ValueError(f"task={task!r} does not exist for model_type {config.model_type!r}; "
                         f"it has: {', '.join(classes)}")
    return classes[task]


__all__ = ["ARCHITECTURES", "TASKS", "CourseModel", "PretrainedConfig", "EncoderConfig", "architecture",
           "config_from_dict", "model_class", "BertModel", "BertForMaskedLM", "RobertaModel", "RobertaForMaskedLM",
           "GPT2Config", "GPT2Model", "GPT2LMHeadModel"]
