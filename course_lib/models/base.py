"""What every course model shares: its config, how its weights are named, saving.

A course model is a plain ``nn.Module`` whose parameter names are exactly the Hugging Face
keys of the same architecture, so loading a published checkpoint is a name-to-name copy
(``course_lib.checkpoint``) and ``save_pretrained`` writes files ``transformers`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from torch import nn


@dataclasses.dataclass
class PretrainedConfig:
    """Base of the config dataclasses: read from and written to ``config.json``.

    Subclasses declare the fields the model uses, with the defaults ``transformers`` uses
    when ``config.json`` leaves a field out. Keys the model does not use are kept in
    ``extra`` so that saving writes them back unchanged.
    """

    model_type: str = ""
    extra: dict = dataclasses.field(default_factory=dict, repr=False)

    # model_type -> {field: default} overriding the dataclass defaults (e.g. RoBERTa's pad id)
    TYPE_DEFAULTS = {}

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainedConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        model_type = values.get("model_type", "")
        known = dict(cls.TYPE_DEFAULTS.get(model_type, {}))
        known.update({k: v for k, v in values.items() if k in names})
        extra = {k: v for k, v in values.items() if k not in names}
        config = cls(**known, extra=extra)
        config.validate()
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "PretrainedConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the values cannot describe a model."""

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **values}


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
      (out, in): GPT-2's ``Conv1D`` weights. Transposed on load and back on save.
    """

    base_model_prefix = ""
    tied_weights: dict[str, str] = {}
    key_aliases: dict[str, str] = {}
    unused_checkpoint_prefixes: tuple[str, ...] = ()
    checkpoint_transposed: tuple[str, ...] = ()

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.config = config

    @classmethod
    def for_checkpoint(cls, config: PretrainedConfig, checkpoint_keys) -> "CourseModel":
        """The model to fill from a checkpoint with these keys (a model with optional parts
        overrides this to build the parts the file has)."""
        return cls(config)

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

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in the Hugging Face layout; returns the folder."""
        from course_lib.checkpoint import save_checkpoint

        return save_checkpoint(self, folder)
