"""Chapter 11: the course's models outside PyTorch.

``to_onnx(model, path)`` writes an ONNX graph (``course_lib.export.onnx_export``);
``to_gguf(model, path, qtype)`` writes llama.cpp's GGUF file and ``read_gguf`` / ``load_gguf_model``
read one back (``course_lib.export.gguf_export``; the Q8_0/Q4_0 blocks: ``course_lib.export.gguf_blocks``).
``OnnxEncoder`` / ``OnnxCausalLM`` / ``ort_generate_ids`` run an exported file in ONNX Runtime.
Importing this package is cheap: each exporter (and ``onnx`` / ``gguf``) loads when first used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "to_onnx": "course_lib.export.onnx_export",
    "OnnxEncoder": "course_lib.export.onnx_export",
    "OnnxCausalLM": "course_lib.export.onnx_export",
    "load_onnx": "course_lib.export.onnx_export",
    "ort_generate_ids": "course_lib.export.onnx_export",
    "to_gguf": "course_lib.export.gguf_export",
    "read_gguf": "course_lib.export.gguf_export",
    "load_gguf_model": "course_lib.export.gguf_export",
    "gguf_tokenizer": "course_lib.export.gguf_export",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'course_lib.export' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
