"""The course's model architectures, and which class serves which ``model_type`` and task.

``config.json``'s ``model_type`` picks the architecture; the task picks the head:

- ``"base"``: the bare model, hidden states (B, T, C);
- ``"masked-lm"``: encoder + masked-LM head, logits (B, T, V);
- ``"causal-lm"``: decoder + LM head, logits (B, T, V) (GPT-2, chapter 06; Llama, Mistral,
  Qwen2 and Qwen3, chapter 09: one model file, ``course_lib.models.llama``);
- ``"sequence-classification"``: encoder + classifier on the first token, logits (B, num_labels);
- ``"token-classification"``: encoder + classifier on every token, logits (B, T, num_labels)
  (chapter 08; ``num_labels`` and ``id2label`` come from config.json);
- ``"image-classification"``: an image model + classifier, logits (B, num_labels) from
  ``pixel_values`` (B, 3, H, W) (chapter 10: ResNet, ViT).
"""

from __future__ import annotations

from course_lib.models.base import CourseModel, PretrainedConfig
from course_lib.models.encoder import (BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification,
                                       BertModel, EncoderConfig, RobertaForMaskedLM,
                                       RobertaForSequenceClassification, RobertaForTokenClassification,
                                       RobertaModel)
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from course_lib.models.llama import LLAMA_FAMILY, LlamaConfig, LlamaForCausalLM, LlamaModel
from course_lib.models.resnet import ResNetConfig, ResNetForImageClassification, ResNetModel
from course_lib.models.vit import ViTConfig, ViTForImageClassification, ViTModel

TASKS = ("auto", "base", "masked-lm", "causal-lm", "sequence-classification", "token-classification",
         "image-classification")
CLASSIFICATION_TASKS = ("sequence-classification", "token-classification", "image-classification")

_BERT = {"base": BertModel, "masked-lm": BertForMaskedLM, "sequence-classification": BertForSequenceClassification,
         "token-classification": BertForTokenClassification}
_ROBERTA = {"base": RobertaModel, "masked-lm": RobertaForMaskedLM,
            "sequence-classification": RobertaForSequenceClassification,
            "token-classification": RobertaForTokenClassification}

# model_type -> (config class, {task: model class}, task that "auto" means)
ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], dict[str, type[CourseModel]], str]] = {
    "bert": (EncoderConfig, _BERT, "base"),
    "roberta": (EncoderConfig, _ROBERTA, "base"),
    # XLM-RoBERTa is RoBERTa with a larger (SentencePiece) vocabulary: the same code path
    "xlm-roberta": (EncoderConfig, _ROBERTA, "base"),
    "gpt2": (GPT2Config, {"base": GPT2Model, "causal-lm": GPT2LMHeadModel}, "causal-lm"),
    # chapter 09: one model file for the four layouts; config.json's fields say what differs
    **{model_type: (LlamaConfig, {"base": LlamaModel, "causal-lm": LlamaForCausalLM}, "causal-lm")
       for model_type in LLAMA_FAMILY},
    "vit": (ViTConfig, {"base": ViTModel, "image-classification": ViTForImageClassification}, "image-classification"),
    "resnet": (ResNetConfig, {"base": ResNetModel, "image-classification": ResNetForImageClassification},
               "image-classification"),
}

# How transformers' class names end, for each task (config.json's "architectures" says which head a file holds)
_ARCHITECTURE_SUFFIXES = (("ForImageClassification", "image-classification"),
                          ("ForSequenceClassification", "sequence-classification"),
                          ("ForTokenClassification", "token-classification"), ("ForMaskedLM", "masked-lm"),
                          ("ForPreTraining", "masked-lm"), ("LMHeadModel", "causal-lm"), ("ForCausalLM", "causal-lm"),
                          ("Model", "base"))


def task_of_architecture(name: str | None) -> str | None:
    """The task of a ``transformers`` class name: "BertForSequenceClassification" -> "sequence-classification".

    None for a name that says no task we know (``BertForQuestionAnswering``) or no name.
    """
    for suffix, task in _ARCHITECTURE_SUFFIXES:
        if isinstance(name, str) and name.endswith(suffix):
            return task
    return None


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


__all__ = ["ARCHITECTURES", "TASKS", "CLASSIFICATION_TASKS", "CourseModel", "PretrainedConfig", "EncoderConfig",
           "architecture", "config_from_dict", "model_class", "task_of_architecture", "BertModel", "BertForMaskedLM",
           "BertForSequenceClassification", "BertForTokenClassification", "RobertaModel", "RobertaForMaskedLM",
           "RobertaForSequenceClassification", "RobertaForTokenClassification", "GPT2Config", "GPT2Model",
           "GPT2LMHeadModel", "LlamaConfig", "LlamaModel", "LlamaForCausalLM", "ViTConfig", "ViTModel",
           "ViTForImageClassification",
           "ResNetConfig", "ResNetModel", "ResNetForImageClassification"]
