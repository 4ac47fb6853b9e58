"""Transformers from scratch — build, load, quantize, run: the course's reference library.

Importing ``course_lib`` is cheap: submodules (and torch) load when first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "check": "course_lib.grading.runner",
    "classify_image": "course_lib.image_classification",
    "reveal": "course_lib.grading.runner",
    "load_model": "course_lib.loading",
    "encode_batch": "course_lib.tokenizer_loading",
    "generate": "course_lib.generation",
    "load_tokenizer": "course_lib.tokenizer_loading",
    "quantize_model": "course_lib.quantization",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
