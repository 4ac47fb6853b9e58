"""What every course model shares: its config, how its weights are named, saving.

A course model is a plain ``nn.Module`` whose parameter names are exactly the Hugging Face
keys of the same architecture, so loading a published checkpoint is a name-to-name copy
(``course_lib.checkpoint``) and ``save_pretrained`` writes files ``transformers`` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import types
import typing
from pathlib import Path

from torch import nn

# Ranges of the fields every architecture names the Hugging Face way, by name: (pattern, test, "must be ...").
# Sizes and counts must be >= 1 (``vocab_size: 0`` or ``-5`` would only fail later, deep inside torch).
FIELD_RANGES: tuple[tuple[str, typing.Callable[[float], bool], str], ...] = (
    (r"^(num_|n_)|_size$|^max_position_embeddings$", lambda v: v >= 1, "at least 1"),
    (r"(_prob|pdrop|dropout)$", lambda v: 0 <= v <= 1, "between 0 and 1"),
    (r"(^|_)(eps|epsilon)$", lambda v: v > 0, "greater than 0"),
    (r"_token_id$", lambda v: v >= 0, "0 or more"),
    (r"^initializer_range$", lambda v: v >= 0, "0 or more"),
)

# transformers' PretrainedConfig.problem_type values (None: decided from the labels' dtype and count)
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass
class PretrainedConfig:
    """Base of the config dataclasses: read from and written to ``config.json``.

    Subclasses declare the fields the model uses, with the defaults ``transformers`` uses
    when ``config.json`` leaves a field out. Keys the model does not use are kept in
    ``extra`` so that saving writes them back unchanged.

    Keys every architecture may carry (``transformers`` keeps them in its base config too)
    are read from ``extra`` through properties, so a file that has none of them is saved
    back byte for byte: the task-head keys ``id2label``, ``label2id``, ``num_labels``,
    ``problem_type``, ``classifier_dropout`` (chapter 08's classification heads), and
    ``pruned_heads`` (``course_lib.surgery.prune_heads``).
    """

    model_type: str = ""
    extra: dict = dataclasses.field(default_factory=dict, repr=False)

    # model_type -> {field: default} overriding the dataclass defaults (e.g. RoBERTa's pad id)
    TYPE_DEFAULTS = {}

    # (pattern, test, "must be ...") rules for the values of fields, by name; a subclass may add its own
    FIELD_RANGES = FIELD_RANGES

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainedConfig":
        """The config from ``config.json``'s values: each field's type checked against the dataclass's
        annotation, then the architecture's own rules (``validate``), then value ranges; a
        ``ValueError`` that names the field, the value and what it must be."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        model_type = values.get("model_type", "")
        known = dict(cls.TYPE_DEFAULTS.get(model_type, {}))
        known.update({k: v for k, v in values.items() if k in names})
        extra = {k: v for k, v in values.items() if k not in names}
        cls.check_types(known)
        config = cls(**known, extra=extra)
        config.validate()
        config.check_ranges()
        config.validate_common()
        return config

    @classmethod
    def check_types(cls, values: dict) -> None:
        """``ValueError`` for the first value whose JSON type does not fit its field's annotation
        (``"n_head": "2"``, ``"vocab_size": 3.5``, ``"hidden_dropout_prob": NaN``)."""
        hints = _field_types(cls)
        for name, value in values.items():
            expected = hints.get(name)
            if expected is not None and not _fits(value, expected):
                raise ValueError(f"{name} must be {_type_words(expected)}, got {_describe(value)}"
                                 f"{_quote_hint(name, value, expected)}")

    def check_ranges(self) -> None:
        """``ValueError`` for a field whose value is outside its range (``FIELD_RANGES``: sizes >= 1,
        probabilities in [0, 1], eps > 0, token ids >= 0); a pad token id must index the vocabulary."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            for pattern, test, words in self.FIELD_RANGES:
                if re.search(pattern, field.name) and not test(value):
                    raise ValueError(f"{field.name} must be {words}, got {value!r}")
        pad, vocab = getattr(self, "pad_token_id", None), getattr(self, "vocab_size", None)
        if isinstance(pad, int) and isinstance(vocab, int) and not isinstance(pad, bool) and pad >= vocab:
            raise ValueError(f"pad_token_id={pad} must be smaller than vocab_size={vocab}: it is a row of the "
                             f"embedding table")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "PretrainedConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the values cannot describe a model."""

    def validate_common(self) -> None:
        """Check the keys every architecture may carry (labels, problem type, pruned heads); ``ValueError`` if wrong."""
        saved = self.extra.get("id2label")
        if saved is not None:
            if not isinstance(saved, dict) or not saved:
                raise ValueError(f"id2label must be a non-empty {{index: name}} object, got {saved!r}")
            try:
                indices = sorted(int(k) for k in saved)
            except (TypeError, ValueError):
                raise ValueError(f"id2label's keys must be class indices (\"0\", \"1\", ...), got "
                                 f"{list(saved)[:5]}") from None
            if indices != list(range(len(saved))):
                raise ValueError(f"id2label's keys must be 0 .. {len(saved) - 1} (one per class), got {indices[:10]}")
            stated = self.extra.get("num_labels")
            if stated is not None and stated != len(saved):
                raise ValueError(f"num_labels={stated} disagrees with id2label, which names {len(saved)} classes; "
                                 f"remove one of the two keys (transformers versions disagree on which one wins: "
                                 f"5.x renames the classes LABEL_0 ..., 4.x keeps id2label)")
        stated = self.extra.get("num_labels", 1)
        if isinstance(stated, bool) or not isinstance(stated, int) or stated < 1:
            raise ValueError(f"num_labels must be a positive integer, got {stated!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type={self.problem_type!r} is not one of "
                             f"{', '.join(map(repr, PROBLEM_TYPES))}")
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError("problem_type='single_label_classification' needs at least 2 labels; for one score "
                             "per input (a cross-encoder) use problem_type='regression'")
        self.pruned_heads  # noqa: B018 - reading it checks it

    # ---- the task-head keys (transformers' PretrainedConfig: id2label, label2id, num_labels, problem_type)

    @property
    def num_labels(self) -> int:
        """Number of classes: ``len(id2label)``, else config.json's ``num_labels``, else 2 (as ``transformers``)."""
        saved = self.extra.get("id2label")
        return len(saved) if saved else int(self.extra.get("num_labels", 2))

    @property
    def id2label(self) -> dict[int, str]:
        """{class index: name}, e.g. {0: "ham", 1: "spam"}; LABEL_0, LABEL_1 ... when config.json names none."""
        saved = self.extra.get("id2label")
        if saved:
            return {int(k): v for k, v in sorted(saved.items(), key=lambda item: int(item[0]))}
        return {i: f"LABEL_{i}" for i in range(self.num_labels)}

    @property
    def label2id(self) -> dict[str, int]:
        """{name: class index}: config.json's, or the inverse of ``id2label``."""
        saved = self.extra.get("label2id")
        return {k: int(v) for k, v in saved.items()} if saved else {v: k for k, v in self.id2label.items()}

    @property
    def problem_type(self) -> str | None:
        """"regression", "single_label_classification", "multi_label_classification" or None (the loss decides)."""
        return self.extra.get("problem_type")

    @property
    def classifier_dropout(self) -> float | None:
        """Dropout before a classification head; None: the model's ``hidden_dropout_prob``."""
        return self.extra.get("classifier_dropout")

    def set_labels(self, num_labels: int | None = None, id2label=None) -> None:
        """Name the classes of a (new) classification head, as ``from_pretrained(num_labels=, id2label=)`` does.

        ``id2label``: {index: name} or a list of names; ``num_labels`` alone gives LABEL_0 ...
        Both are written to ``extra`` as config.json holds them (string keys), with ``label2id``.
        """
        if id2label is not None:
            names = dict(enumerate(id2label)) if isinstance(id2label, (list, tuple)) else dict(id2label)
            if num_labels is not None and num_labels != len(names):
                raise ValueError(f"num_labels={num_labels} but id2label names {len(names)} classes: pass one of them")
        elif num_labels is not None:
            if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
                raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
            names = {i: f"LABEL_{i}" for i in range(num_labels)}
        else:
            return
        self.extra.pop("num_labels", None)
        self.extra["id2label"] = {str(int(k)): str(v) for k, v in names.items()}
        self.extra["label2id"] = {str(v): int(k) for k, v in names.items()}
        self.validate_common()

    # ---- pruned attention heads (course_lib.surgery.prune_heads)

    def _layers_and_heads(self) -> tuple[int, int]:
        """(number of layers, heads per layer before pruning), whatever the architecture calls them."""
        for layers, heads in (("num_hidden_layers", "num_attention_heads"), ("n_layer", "n_head")):
            if hasattr(self, layers):
                return getattr(self, layers), getattr(self, heads)
        raise ValueError(f"{type(self).__name__} has no attention heads to prune")

    @property
    def pruned_heads(self) -> dict[int, list[int]]:
        """{layer: [heads removed]}, heads numbered as in the unpruned model; {} when nothing was pruned."""
        saved = self.extra.get("pruned_heads") or {}
        if not saved:
            return {}
        num_layers, num_heads = self._layers_and_heads()
        out = {}
        for layer, heads in saved.items():
            try:
                layer, heads = int(layer), sorted({int(h) for h in heads})
            except (TypeError, ValueError):
                raise ValueError(f"pruned_heads must map layer numbers to lists of head numbers, got "
                                 f"{layer!r}: {heads!r}") from None
            if not 0 <= layer < num_layers:
                raise ValueError(f"pruned_heads names layer {layer}, but the model has layers 0 .. {num_layers - 1}")
            wrong = [h for h in heads if not 0 <= h < num_heads]
            if wrong:
                raise ValueError(f"pruned_heads[{layer}] names heads {wrong}, but a layer has heads 0 .. "
                                 f"{num_heads - 1}")
            if len(heads) == num_heads:
                raise ValueError(f"pruned_heads[{layer}] removes all {num_heads} heads of layer {layer}; the "
                                 f"course's attention keeps at least one head per layer")
            if heads:
                out[layer] = heads
        return dict(sorted(out.items()))

    def heads_in_layer(self, layer: int) -> int:
        """Attention heads layer ``layer`` has after pruning."""
        return self._layers_and_heads()[1] - len(self.pruned_heads.get(layer, ()))

    def add_pruned_heads(self, layer: int, heads) -> None:
        """Record that ``heads`` of ``layer`` were removed (a union with those removed before)."""
        merged = self.pruned_heads
        merged[int(layer)] = sorted(set(merged.get(int(layer), [])) | {int(h) for h in heads})
        self.extra["pruned_heads"] = {str(k): v for k, v in sorted(merged.items())}  # JSON keys are strings
        self.pruned_heads  # noqa: B018 - reading it checks it

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **values}


@functools.cache
def _field_types(cls: type) -> dict[str, object]:
    """{field: its annotation as a type} (``int``, ``int | None`` ...), the string annotations resolved."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: check none rather than fail
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "extra" and f.name in hints}


def _fits(value, expected) -> bool:
    """Whether a JSON value fits an annotation; annotations other than int/float/str/bool/None (and unions
    of them) are not checked."""
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return any(_fits(value, member) for member in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if expected is str:
        return isinstance(value, str)
    return True


def _type_words(expected) -> str:
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return " or ".join(_type_words(member) for member in typing.get_args(expected))
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
            type(None): "null"}.get(expected, getattr(expected, "__name__", str(expected)))


def _describe(value) -> str:
    kind = {str: "the string", bool: "the boolean", float: "the number", int: "the number", list: "the list",
            dict: "the object", type(None): ""}.get(type(value), type(value).__name__)
    shown = json.dumps(value) if isinstance(value, (str, bool, list, dict, type(None))) else repr(value)
    return f"{kind} {shown[:60]}".strip()


def _quote_hint(name: str, value, expected) -> str:
    """``"n_head": "2"`` -> a hint to drop the quotes."""
    if isinstance(value, str):
        try:
            number = json.loads(value)
        except ValueError:
            return ""
        if not isinstance(number, bool) and isinstance(number, (int, float)) and _fits(number, expected):
            return f' (a number in quotes: write "{name}": {value} without the quotes)'
    return ""


class CourseModel(nn.Module):
    """Base class of the course's models (the role of ``transformers.PreTrainedModel``).

    Class attributes a model sets:

    - ``base_model_prefix``: the attribute holding the bare model in task models
      (``"roberta"`` in ``RobertaForMaskedLM``), also the key prefix in checkpoints;
    - ``tied_weights``: {key: key it is the same tensor as}; saved once, loaded once;
    - ``key_aliases``: {checkpoint key: our key} for alternative names of one tensor that
      published files use (``cls.predictions.decoder.bias`` is ``cls.predictions.bias``);
    - ``unused_checkpoint_prefixes``: heads other tasks use that may sit in a file
      (``cls.seq_relationship.`` in bert-base-uncased); loading skips them, and says so;
    - ``checkpoint_transposed``: key endings that files store transposed, (in, out) for our
      (out, in): GPT-2's ``Conv1D`` weights. Transposed on load and back on save;
    - ``head_modules``: the modules of a task head (``"classifier"``) that ``load_model(...,
      num_labels=)`` may initialise anew when a file has none (a pretrained encoder to fine-tune);
    - ``vocab_biases``: output-head biases with one entry per vocabulary token (the masked-LM
      head's ``cls.predictions.bias``), resized with the embeddings (``course_lib.surgery``).
    """

    base_model_prefix = ""
    tied_weights: dict[str, str] = {}
    key_aliases: dict[str, str] = {}
    unused_checkpoint_prefixes: tuple[str, ...] = ()
    checkpoint_transposed: tuple[str, ...] = ()
    head_modules: tuple[str, ...] = ()
    vocab_biases: tuple[str, ...] = ()

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.config = config

    @classmethod
    def for_checkpoint(cls, config: PretrainedConfig, checkpoint_keys) -> "CourseModel":
        """The model to fill from a checkpoint with these keys (a model with optional parts
        overrides this to build the parts the file has)."""
        return cls(config)

    @property
    def base_model(self) -> nn.Module:
        """The bare model inside a task model (``model.bert``), or the model itself when it is bare."""
        inner = getattr(self, self.base_model_prefix, None) if self.base_model_prefix else None
        return inner if isinstance(inner, nn.Module) else self

    @property
    def architecture(self) -> str:
        """The class name ``transformers`` knows this model by (written to config.json)."""
        return type(self).__name__

    def tie_weights(self) -> None:
        """Make every tied key the same Parameter object as its source."""
        for key, source in self.tied_weights.items():
            module_path, _, name = key.rpartition(".")
            source_path, _, source_name = source.rpartition(".")
            tensor = self.get_submodule(source_path)._parameters.get(source_name)
            if tensor is not None:  # a quantized table has none: its head reads it (quantization.TiedQuantHead)
                setattr(self.get_submodule(module_path), name, tensor)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameter values (tied tensors count once)."""
        seen = {}
        for name, p in self.named_parameters():  # named_parameters already skips repeats
            if exclude_embeddings and "embeddings" in name:
                continue
            seen[name] = p.numel()
        return sum(seen.values())

    def save_pretrained(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in the Hugging Face layout; returns the folder.

        All or nothing: a failed or killed save leaves the folder as it was. A folder holding
        another model's checkpoint is refused unless ``overwrite=True`` (which removes that
        checkpoint's other weights, index and tokenizer files); saving the same model again (an
        equal config) over its own folder is allowed (``course_lib.checkpoint.save_checkpoint``).
        """
        from course_lib.checkpoint import save_checkpoint

        return save_checkpoint(self, folder, overwrite=overwrite)

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Module:
        """``course_lib.surgery.resize_token_embeddings(self, new_num_tokens)``: returns the input embeddings."""
        from course_lib.surgery import resize_token_embeddings

        return resize_token_embeddings(self, new_num_tokens)

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """``course_lib.surgery.prune_heads(self, heads_to_prune)``: {layer: [heads]} removed in place."""
        from course_lib.surgery import prune_heads

        prune_heads(self, heads_to_prune)


class CausalLMGeneration:
    """``model.generate(...)`` for the course's causal language models (GPT-2, the Llama family).

    One decoding loop serves them all: ``course_lib.generation.generate_ids`` (greedy or sampled,
    KV cache, left-padded batches, stop tokens, streaming). A model class that mixes this in needs
    ``forward(input_ids, attention_mask, position_ids, kv_cache, last_only)`` and a ``config``.
    """

    def generate(self, input_ids, max_new_tokens: int = 20, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id: int | None = None, attention_mask=None,
                 use_cache: bool = True, stream=None, *, min_p: float | None = None,
                 repetition_penalty: float | None = None):
        """(B, T) prompt ids -> (B, T + new) ids; see ``course_lib.generation.generate_ids``."""
        from course_lib.generation import generate_ids

        return generate_ids(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, eos_token_id=eos_token_id, attention_mask=attention_mask,
                            use_cache=use_cache, stream=stream, min_p=min_p, repetition_penalty=repetition_penalty)
