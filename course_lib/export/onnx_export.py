"""Chapter 11: the course's models as ONNX graphs, and running them in ONNX Runtime.

``to_onnx(model, path)`` traces a model once and writes the graph of operators it ran,
with the weights, into one ``.onnx`` file that any ONNX runtime executes: onnxruntime in
Python (``OnnxEncoder``, ``OnnxCausalLM`` here), ``onnxruntime-node`` in Node.js,
``onnxruntime-web`` (WebAssembly) in a browser. Two kinds of model:

- an **encoder** (``BertModel`` / ``RobertaModel``, e.g. all-MiniLM-L6-v2):
  ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64 ->
  ``last_hidden_state`` (B, T, C) float32 and ``sentence_embedding`` (B, C) float32, the
  mean of the real tokens' vectors, L2-normalised (sentence-transformers' recipe);
- **GPT-2** (``GPT2LMHeadModel``) with the KV cache as explicit inputs and outputs:
  ``input_ids`` (B, T), ``attention_mask`` (B, P + T), ``position_ids`` (B, T), and for
  every layer N ``past_key_values.N.key`` / ``.value`` (B, H, P, D) float32 ->
  ``logits`` (B, T, V) and ``present.N.key`` / ``.value`` (B, H, P + T, D). The prompt
  goes in with an *empty* cache (P = 0) and every later step feeds one token with the
  previous step's ``present`` as its ``past``: one graph for both. (The names are those
  of Hugging Face Optimum's GPT-2 export, so tools written for it read this file.)

What a trace captures and what it loses. Tracing runs the model once on example inputs
and records the tensor operations; Python ``if``s and loops are *not* recorded, only the
path they took. So the export feeds the model through a wrapper whose computation is
the same for every shape: the cache is a concatenation (the course's ``KVCache`` writes
into a pre-allocated buffer and keeps a Python ``length``, which a graph cannot), the
causal mask is built from the inputs' shapes, and the checks of ``check_inputs`` are left
to the runner (``OnnxCausalLM``) because a traced check would be frozen to the example.

Operators. The graph is traced through PyTorch's fused operators (``course_lib.fused``:
``F.linear``, ``F.layer_norm`` -> ONNX ``LayerNormalization``, ``F.gelu``), so it holds
one node per layer operation instead of chapter 02's primitives; the attention is
written here (``export_attention``): a masked score gets ``finfo.min``, not ``-inf``, so
a query with nothing to attend to (a left pad) gets finite weights instead of NaN, which
would otherwise reach real tokens through ``0 * NaN`` in the next matrix product. Only the
outputs at padding positions differ from PyTorch's; they are never used.

Exporter. ``torch.onnx.export(..., dynamo=False)``: the TorchScript tracer, which ships
with torch. torch's newer ``dynamo=True`` exporter needs the ``onnxscript`` package
(not a course dependency) and gives the same operators for these models.

Opset ``DEFAULT_OPSET`` = 17: the first with ``LayerNormalization`` as one operator,
supported by onnxruntime since 1.13 (Python, Node and Web alike). It is written into the
file twice: its ``opset_import`` and the metadata entry ``course_lib.opset``.

Large models. A protobuf message (an ``.onnx`` file) cannot exceed 2 GiB, so a model whose
weights exceed ``EXTERNAL_DATA_THRESHOLD`` keeps them in one side file, ``<name>.onnx.data``,
next to the graph (ONNX's *external data*); ``external_data=True`` forces that layout.

The sidecar ``<name>.onnx.json`` (``SIDECAR_FORMAT``, written by ``to_onnx``) is what the
Node.js and browser programs read to drive the file without Python::

    {
      "format": "course_lib.onnx/1",      # this layout; bumped when it changes
      "task": "causal-lm" | "feature-extraction",
      "model_type": "gpt2" | "bert" | "roberta",
      "opset": 17,
      "file": "tiny-gpt2.onnx",           # the graph, relative to the sidecar
      "external_data": null | "tiny-gpt2.onnx.data",
      "tokenizer": null | "tiny-gpt2.onnx.tokenizer.json",
      "inputs":  [{"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}, ...],
      "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch_size", "sequence_length", 4096]}, ...],
      "config": {"num_layers", "num_heads", "head_dim", "hidden_size", "vocab_size", "max_positions"},
      "bos_token_id", "eos_token_id", "pad_token_id": int or null,
      # causal-lm only: how to drive the cache
      "past": {"input": "past_key_values.{layer}.{kind}", "output": "present.{layer}.{kind}",
               "kinds": ["key", "value"], "shape": ["batch_size", num_heads, "past_sequence_length", head_dim],
               "dtype": "float32", "empty": "past_sequence_length = 0 for the prompt"},
      "position_ids": "cumsum(attention_mask, axis=1) - 1, clipped at 0, last sequence_length columns",
      # feature-extraction only
      "pooling": {"mode": "mean", "normalize": true, "output": "sentence_embedding"}
    }

A string in a shape is a dynamic axis (its name); a number is fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "EXTERNAL_DATA_THRESHOLD", "SIDECAR_FORMAT", "to_onnx",
           "sidecar_path", "read_sidecar", "operator_counts", "export_attention", "OnnxEncoder", "OnnxCausalLM",
           "load_onnx", "ort_generate_ids"]

DEFAULT_OPSET = 17  # LayerNormalization is one operator from 17 on; every onnxruntime since 1.13 runs it
MIN_OPSET = 14  # the oldest the course tests against (the same graph, LayerNormalization spelt out in primitives)
MAX_OPSET = 20  # the newest torch's TorchScript exporter writes
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # weights above this go to <name>.onnx.data (protobuf: < 2 GiB)
SIDECAR_FORMAT = "course_lib.onnx/1"
INSTALL_HINT = "pip install onnx onnxruntime gguf  (or `make setup`)"


def _require(module: str):
    """Import ``onnx`` or ``onnxruntime`` on first use; a clear error naming the fix when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"chapter 11's ONNX export needs the {module!r} package, which is not installed: "
                          f"{INSTALL_HINT}") from None


# --------------------------------------------------------------------------------------
# What the graph computes: wrappers whose operations are the same for every input shape

def export_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     dropout_p: float = 0.0, training: bool = False, scale: float | None = None,
                     return_weights: bool = False) -> torch.Tensor:
    """Attention as the exported graph computes it: q (B, H, Tq, D), k, v (B, H, Tk, D) -> (B, H, Tq, D).

    ``mask`` bool, broadcastable to (B, H, Tq, Tk), True = may attend (chapter 02's
    convention). A masked score becomes ``finfo(dtype).min`` instead of ``-inf``: the
    softmax still gives it weight exactly 0 (``exp`` underflows) wherever the row has one
    allowed key, and a row with none gets uniform weights instead of NaN (chapter 02's
    softmax returns 0 there, at the price of two more masked fills per attention). No
    dropout: an export is for inference.
    """
    if return_weights:
        raise ValueError("export_attention does not return attention weights: an exported graph has no use for them")
    scale = q.size(-1) ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, Tq, D)


class _ConcatLayerCache:
    """One layer's cache as a graph sees it: ``append`` concatenates and keeps the results (``present``).

    The course's ``LayerKVCache`` interface (``append(k, v)`` -> every token's k, v), so
    ``GPT2Block.forward`` runs unchanged.
    """

    def __init__(self, past_key: torch.Tensor, past_value: torch.Tensor):
        self.past_key, self.past_value = past_key, past_value  # (B, H, P, D)
        self.key = self.value = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.key = torch.cat([self.past_key, k], dim=2)  # (B, H, P + T, D)
        self.value = torch.cat([self.past_value, v], dim=2)
        return self.key, self.value


class _GPT2WithPast(nn.Module):
    """``GPT2LMHeadModel`` with the cache as tensors: the module that ``to_onnx`` traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        """input_ids (B, T), attention_mask (B, P + T), position_ids (B, T) int64; past: 2 x n_layer (B, H, P, D).

        Returns logits (B, T, V) and the 2 x n_layer present tensors (B, H, P + T, D).
        """
        from course_lib.layers import causal_mask, padding_mask

        gpt = self.model.transformer
        B, T = input_ids.shape  # traced as the inputs' sizes, so the graph follows them
        total = attention_mask.shape[1]
        mask = causal_mask(T, total, device=input_ids.device) & padding_mask(attention_mask)  # (B, 1, T, P + T)
        x = gpt.drop(gpt.wte(input_ids) + gpt.wpe(position_ids))  # (B, T, C)
        caches = [_ConcatLayerCache(past[2 * i], past[2 * i + 1]) for i in range(len(gpt.h))]
        for block, cache in zip(gpt.h, caches):
            x = block(x, mask, cache)  # (B, T, C)
        hidden = gpt.ln_f(x)  # (B, T, C)
        # the tied head as one Gemm(transB=1) reading the *same* initializer as the token embedding, so
        # the (V, C) matrix is stored once: a 2-D input and a (zero) bias make F.linear export as Gemm;
        # a 3-D input, or none, exports as MatMul with a transposed second copy of the matrix
        weight = self.model.lm_head.weight  # (V, C), tied to wte
        zero_bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)  # (V,)
        logits = F.linear(hidden.reshape(B * T, hidden.shape[-1]), weight, zero_bias)  # (B*T, V)
        return (logits.reshape(B, T, logits.shape[-1]),
                *[t for cache in caches for t in (cache.key, cache.value)])


class _EncoderWithPooling(nn.Module):
    """``BertModel`` / ``RobertaModel`` -> (hidden states, mean-pooled L2-normalised embedding)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        """input_ids, attention_mask (B, T) int64 -> last_hidden_state (B, T, C), sentence_embedding (B, C)."""
        from course_lib.layers import padding_mask
        from course_lib.models.encoder import mean_pooling

        hidden = self.model.encoder(self.model.embeddings(input_ids), padding_mask(attention_mask))  # (B, T, C)
        pooled = mean_pooling(hidden, attention_mask)  # (B, C)
        return hidden, pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # F.normalize's eps


@contextlib.contextmanager
def _export_view(model: nn.Module):
    """The model in eval mode on PyTorch's fused operators and ``export_attention``; restored exactly afterwards.

    ``course_lib.fused`` swaps classes and function attributes in place; every module's
    class, function attributes and training flag are recorded first and put back in
    ``finally``, so the caller's model (fused or not) is left as it was. oneDNN's linear
    kernel (a PyTorch-only operator) is switched off while tracing: ``F.linear`` exports.
    """
    from course_lib import fused

    saved = [(m, m.__class__, m.training,
              {k: v for k, v in vars(m).items() if callable(v) and not isinstance(v, nn.Module)})
             for m in model.modules()]
    onednn = fused._ONEDNN_LINEAR
    try:
        fused.fuse(model)
        for m in model.modules():
            if "attention_fn" in vars(m):
                m.attention_fn = export_attention
        fused._ONEDNN_LINEAR = False
        model.eval()
        yield model
    finally:
        fused._ONEDNN_LINEAR = onednn
        for m, cls, training, attrs in saved:
            m.__class__, m.training = cls, training
            for name, value in attrs.items():
                setattr(m, name, value)


# --------------------------------------------------------------------------------------
# What each kind of model exports: names, dynamic axes, example inputs, the sidecar's facts

def _model_kind(model) -> str:
    """"causal-lm" or "feature-extraction"; a clear error for anything else."""
    from course_lib.models.encoder import BertModel
    from course_lib.models.gpt2 import GPT2LMHeadModel

    if isinstance(model, GPT2LMHeadModel):
        return "causal-lm"
    if isinstance(model, BertModel):  # RobertaModel too
        return "feature-extraction"
    name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise TypeError(f"to_onnx exports the course's GPT2LMHeadModel (load_model('tiny-gpt2')) and its encoders "
                    f"BertModel/RobertaModel (load_model('all-MiniLM-L6-v2')); got {name}"
                    f"{f' (model_type {model_type!r})' if model_type else ''}. For an encoder with a task head, "
                    f"export its base model (load_model(src, task='base')); for GPT-2 load it with task='causal-lm'")


def _check_exportable(model) -> None:
    """Float32 weights, no chapter 07 quantized layers: what the graph stores is float32."""
    from course_lib.quantization import QuantizedWeight

    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantizedWeight)]
    if quantized:
        raise ValueError(f"the model holds weights quantized by chapter 07 ({quantized[0]} and {len(quantized) - 1} "
                         f"more): their int8/int4 kernels are PyTorch's own and have no ONNX operator. Export the "
                         f"float32 model (load_model(src) without quantize=); GGUF (to_gguf) stores quantized blocks")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"to_onnx exports float32 models; this one holds {sorted(map(str, dtypes))}: "
                         f"call model.float() first (or load_model(src) without dtype=)")


def _gpt2_spec(model) -> dict:
    c = model.config
    n_layer, H, D = c.n_layer, c.n_head, c.head_dim
    past_names = [f"past_key_values.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    inputs = [("input_ids", "int64", ["batch_size", "sequence_length"]),
              ("attention_mask", "int64", ["batch_size", "total_sequence_length"]),
              ("position_ids", "int64", ["batch_size", "sequence_length"])]
    inputs += [(n, "float32", ["batch_size", H, "past_sequence_length", D]) for n in past_names]
    outputs = [("logits", "float32", ["batch_size", "sequence_length", c.vocab_size])]
    outputs += [(n, "float32", ["batch_size", H, "total_sequence_length", D]) for n in present_names]
    extra = {
        "past": {"input": "past_key_values.{layer}.{kind}", "output": "present.{layer}.{kind}",
                 "kinds": ["key", "value"], "shape": ["batch_size", H, "past_sequence_length", D],
                 "dtype": "float32", "empty": "past_sequence_length = 0 for the prompt"},
        "position_ids": "cumsum(attention_mask, axis=1) - 1, clipped at 0, last sequence_length columns",
        "total_sequence_length": "past_sequence_length + sequence_length",
    }
    config = {"num_layers": n_layer, "num_heads": H, "head_dim": D, "hidden_size": c.n_embd,
              "vocab_size": c.vocab_size, "max_positions": c.n_positions}
    ids = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
           "pad_token_id": c.extra.get("pad_token_id") if hasattr(c, "extra") else None}
    # the example the tracer runs: B=2, T=3 new tokens after P=2 cached (distinct sizes, a real cache)
    B, T, P = 2, 3, 2
    if P + T > c.n_positions:
        raise ValueError(f"n_positions={c.n_positions} is too small to trace an example of {P + T} tokens")
    generator = torch.Generator().manual_seed(0)
    example = [torch.randint(0, c.vocab_size, (B, T), generator=generator), torch.ones(B, P + T, dtype=torch.long),
               torch.arange(P, P + T).repeat(B, 1)]
    example += [torch.randn(B, H, P, D, generator=generator) for _ in past_names]
    return {"wrapper": _GPT2WithPast(model), "inputs": inputs, "outputs": outputs, "config": config,
            "ids": ids, "extra": extra, "example": example}


def _encoder_spec(model) -> dict:
    c = model.config
    inputs = [("input_ids", "int64", ["batch_size", "sequence_length"]),
              ("attention_mask", "int64", ["batch_size", "sequence_length"])]
    outputs = [("last_hidden_state", "float32", ["batch_size", "sequence_length", c.hidden_size]),
               ("sentence_embedding", "float32", ["batch_size", c.hidden_size])]
    config = {"num_layers": c.num_hidden_layers, "num_heads": c.num_attention_heads, "head_dim": c.head_dim,
              "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
              "max_positions": model.embeddings.max_tokens}
    ids = {"bos_token_id": c.extra.get("bos_token_id") if hasattr(c, "extra") else None,
           "eos_token_id": c.extra.get("eos_token_id") if hasattr(c, "extra") else None,
           "pad_token_id": c.pad_token_id}
    extra = {"pooling": {"mode": "mean", "normalize": True, "output": "sentence_embedding"}}
    generator = torch.Generator().manual_seed(0)
    low = c.pad_token_id + 1 if c.pad_token_id + 1 < c.vocab_size else 0  # no pad ids: RoBERTa counts positions
    example = [torch.randint(low, c.vocab_size, (2, 5), generator=generator),
               torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])]
    return {"wrapper": _EncoderWithPooling(model), "inputs": inputs, "outputs": outputs, "config": config,
            "ids": ids, "extra": extra, "example": example}


def _dynamic_axes(spec: dict) -> dict:
    return {name: {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}
            for name, _, shape in spec["inputs"] + spec["outputs"]}


# --------------------------------------------------------------------------------------
# Writing the files

def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the JSON that describes the graph's inputs and outputs."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path).expanduser()
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: an ONNX file's name ends in .onnx (the runners find the sidecar "
                         f"<name>.onnx.json by it): pass e.g. {path.with_suffix('.onnx')}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass the path of the file to write, e.g. {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist: create it first "
                                f"(Path({str(path.parent)!r}).mkdir(parents=True)) or write somewhere else")
    return path


def _check_opset(opset) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {opset!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset={opset} is outside what the course exports, {MIN_OPSET}..{MAX_OPSET} "
                         f"(torch's TorchScript exporter writes up to {MAX_OPSET}); the default is {DEFAULT_OPSET}")
    return opset


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _weight_bytes(proto) -> int:
    """Bytes of the graph's stored tensors (its initializers: the weights)."""
    from onnx import numpy_helper

    total = 0
    for tensor in proto.graph.initializer:
        total += numpy_helper.to_array(tensor).nbytes if not tensor.raw_data else len(tensor.raw_data)
    return total


def to_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int | None = None,
            external_data: bool | None = None, tokenizer=None, check: bool = True) -> Path:
    """Export ``model`` to the ONNX file ``path`` (``*.onnx``) and its sidecar ``path + ".json"``; returns ``path``.

    ``model``: the course's ``GPT2LMHeadModel`` (graph with the KV cache as inputs and
    outputs) or ``BertModel`` / ``RobertaModel`` (hidden states and the sentence embedding),
    float32; see the module docstring for the inputs, outputs and their shapes. The
    model is left as it was (mode, fused kernels).
    ``opset``: the ONNX operator set, ``DEFAULT_OPSET`` (17) unless given
    (``MIN_OPSET``..``MAX_OPSET``).
    ``external_data``: ``None`` = the weights go to ``<name>.onnx.data`` only when they
    exceed ``EXTERNAL_DATA_THRESHOLD`` (protobuf's 2 GiB limit); ``True``/``False`` force it.
    ``tokenizer``: optional, a ``tokenizers.Tokenizer`` or a ``tokenizer.json`` path, copied
    next to the file as ``<name>.onnx.tokenizer.json`` (named in the sidecar) for the
    programs that run it without Python.
    ``check``: run ``onnx.checker`` on the written file.

    Every file is written to a temporary name in the same folder and renamed into place,
    so a failed export leaves no half-written file.
    """
    onnx = _require("onnx")
    path = _check_path(path)
    opset = _check_opset(opset)
    kind = _model_kind(model)
    _check_exportable(model)
    tokenizer_text = _tokenizer_text(tokenizer)
    spec = _gpt2_spec(model) if kind == "causal-lm" else _encoder_spec(model)
    device = next(model.parameters()).device
    example = tuple(t.to(device) for t in spec["example"])

    with tempfile.TemporaryDirectory(prefix="course_onnx_") as work:
        traced = Path(work) / "model.onnx"
        with _export_view(model), torch.no_grad(), warnings.catch_warnings():
            # expected, and not the learner's concern: the tracer freezes the model's shape checks (on sizes
            # that are constants of the model: C, H), and torch calls this exporter legacy (see the module doc)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            torch.onnx.export(spec["wrapper"], example, str(traced), dynamo=False, opset_version=opset,
                              input_names=[n for n, _, _ in spec["inputs"]],
                              output_names=[n for n, _, _ in spec["outputs"]],
                              dynamic_axes=_dynamic_axes(spec), do_constant_folding=True)
        proto = onnx.load(str(traced))  # with any external data the tracer wrote for a > 2 GiB model
    weight_bytes = _weight_bytes(proto)
    use_external = weight_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else bool(external_data)
    if not use_external and weight_bytes >= 2 * 1024**3:
        raise ValueError(f"the weights take {weight_bytes / 1024**3:.2f} GiB, more than one ONNX file (a protobuf "
                         f"message) can hold, 2 GiB: pass external_data=True or None (weights in {path.name}.data)")
    model_type = model.config.model_type
    proto.doc_string = (f"course_lib.export.to_onnx: {type(model).__name__} ({model_type}), {kind}, opset {opset}; "
                        f"inputs and outputs in {sidecar_path(path).name}")
    proto.producer_name, proto.producer_version = "course_lib", torch.__version__
    for key, value in {"course_lib.opset": str(opset), "course_lib.task": kind, "course_lib.model_type": model_type,
                       "course_lib.format": SIDECAR_FORMAT}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value

    data_name = path.name + ".data"
    tokenizer_name = path.name + ".tokenizer.json" if tokenizer_text is not None else None
    sidecar = {"format": SIDECAR_FORMAT, "task": kind, "model_type": model_type, "opset": opset, "file": path.name,
               "external_data": data_name if use_external else None, "tokenizer": tokenizer_name,
               "inputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in spec["inputs"]],
               "outputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in spec["outputs"]],
               "config": spec["config"], **spec["ids"], **spec["extra"]}

    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))  # same filesystem: renames are atomic
    try:
        staged = staging / path.name
        if use_external:
            onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(proto, str(staged))
        if check:
            onnx.checker.check_model(str(staged), full_check=True)  # by path: works past 2 GiB too
        if use_external:
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged, path)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    if not use_external:
        (path.parent / data_name).unlink(missing_ok=True)  # a stale one from an earlier, larger export
    if tokenizer_text is not None:
        _atomic_write_text(path.parent / tokenizer_name, tokenizer_text)
    _atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2) + "\n")
    return path


def _tokenizer_text(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        file = Path(tokenizer)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer: {file} is not a file; pass a tokenizer.json path, its folder, "
                                    f"or a tokenizers.Tokenizer (load_tokenizer(src))")
        return file.read_text(encoding="utf-8")
    if hasattr(tokenizer, "to_str"):
        return tokenizer.to_str()
    raise TypeError(f"tokenizer must be a tokenizers.Tokenizer or a tokenizer.json path, "
                    f"got {type(tokenizer).__name__}")


def read_sidecar(path: str | os.PathLike) -> dict:
    """The sidecar of ONNX file ``path`` (``path + ".json"``), checked for the format this module writes."""
    file = sidecar_path(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file; write one with course_lib.export.to_onnx(model, path)")
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: the course's ONNX runners read the inputs and outputs from the "
                                f"sidecar that to_onnx writes next to the graph; export again with to_onnx")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}): export again with to_onnx") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{file} has format {found!r}, this course_lib reads {SIDECAR_FORMAT!r}: export again "
                         f"with to_onnx")
    return meta


def operator_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many nodes of each operator type the graph in ``path`` holds, most frequent first.

    ``Constant``, ``Shape``, ``Gather``, ``Unsqueeze`` and ``Concat`` are mostly the graph
    computing shapes at run time (what the dynamic axes cost); the rest is the model.
    """
    from collections import Counter

    onnx = _require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(node.op_type for node in graph.node).most_common())


# --------------------------------------------------------------------------------------
# Running the file: onnxruntime on the CPU

def _as_int64(name: str, value, ndim: int = 2) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers (int64 token ids / 0-1 mask), got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be (batch, tokens), got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


class _OnnxModel:
    """An exported file in an ``onnxruntime.InferenceSession`` on the CPU, with its sidecar."""

    task = ""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        ort = _require("onnxruntime")
        self.path = Path(path)
        self.meta = read_sidecar(self.path)
        if self.meta["task"] != self.task:
            other = {"causal-lm": "OnnxCausalLM", "feature-extraction": "OnnxEncoder"}.get(self.meta["task"], "?")
            raise ValueError(f"{self.path} holds a {self.meta['task']} graph ({self.meta['model_type']}): open it "
                             f"with {other} (or load_onnx(path), which picks the class)")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an int >= 1 (or None: onnxruntime's default), got {threads!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime picks (one per physical core)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.config = self.meta["config"]
        self.output_names = [o["name"] for o in self.meta["outputs"]]

    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` exported beside the file (``to_onnx(..., tokenizer=...)``)."""
        from tokenizers import Tokenizer

        name = self.meta.get("tokenizer")
        if not name:
            raise FileNotFoundError(f"{self.path} was exported without a tokenizer: pass tokenizer= to to_onnx "
                                    f"(a tokenizer.json path or load_tokenizer(src)), or load it with load_tokenizer")
        return Tokenizer.from_file(str(self.path.parent / name))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, model_type={self.meta['model_type']!r}, "
                f"opset={self.meta['opset']}, threads={self.threads})")


class OnnxEncoder(_OnnxModel):
    """An exported encoder in onnxruntime: (input_ids, attention_mask) -> (last_hidden_state, sentence_embedding)."""

    task = "feature-extraction"

    def __call__(self, input_ids, attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
        """input_ids (B, T) ints, attention_mask (B, T) 0/1 (default all 1) -> (B, T, C), (B, C) float32 arrays."""
        ids = _as_int64("input_ids", input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _as_int64("attention_mask", attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}: they must match")
        if ids.shape[1] > self.config["max_positions"]:
            raise ValueError(f"{ids.shape[1]} tokens is more than the model's {self.config['max_positions']} "
                             f"positions: truncate (encode_batch(..., max_length=...))")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config["vocab_size"]):
            raise ValueError(f"token ids must be in [0, {self.config['vocab_size']}), got {ids.min()}..{ids.max()}")
        hidden, embedding = self.session.run(self.output_names, {"input_ids": ids, "attention_mask": mask})
        return hidden, embedding

    def embed(self, tokenizer, sentences: Sequence[str], max_length: int | None = 256,
              batch_size: int = 32) -> np.ndarray:
        """Sentences -> (N, C) float32 L2-normalised embeddings, as ``sentence_embeddings`` computes them."""
        from course_lib.tokenizer_loading import encode_batch

        chunks = []
        for start in range(0, len(sentences), batch_size):
            batch = encode_batch(tokenizer, list(sentences[start:start + batch_size]), max_length=max_length)
            chunks.append(self(batch["input_ids"], batch["attention_mask"])[1])
        return np.concatenate(chunks)


class OnnxCausalLM(_OnnxModel):
    """An exported GPT-2 with its KV cache as inputs/outputs, in onnxruntime.

    ``model(input_ids, attention_mask, past=past)`` -> (logits (B, T, V) float32, present):
    ``past``/``present`` are dicts ``{"key.N" | "value.N": (B, H, P, D) float32}`` by layer;
    ``None`` = an empty cache (the prompt). ``position_ids`` default to the mask's count of
    real tokens, as the course's GPT-2 computes them (``gpt2_position_ids``).
    """

    task = "causal-lm"

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """A cache holding nothing: (batch, H, 0, D) float32 per layer and kind."""
        c = self.config
        return {f"{kind}.{i}": np.zeros((batch, c["num_heads"], 0, c["head_dim"]), dtype=np.float32)
                for i in range(c["num_layers"]) for kind in ("key", "value")}

    def __call__(self, input_ids, attention_mask=None, position_ids=None,
                 past: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ids = _as_int64("input_ids", input_ids)
        B, T = ids.shape
        past = self.empty_past(B) if past is None else past
        P = past["key.0"].shape[2]
        mask = np.ones((B, P + T), dtype=np.int64) if attention_mask is None else _as_int64("attention_mask",
                                                                                            attention_mask)
        if mask.shape != (B, P + T):
            raise ValueError(f"attention_mask has shape {mask.shape}; with {P} cached and {T} new tokens it must be "
                             f"({B}, {P + T}): the mask of every token so far")
        if P + T > self.config["max_positions"]:
            raise ValueError(f"{P} cached + {T} new tokens is more than the model's {self.config['max_positions']} "
                             f"positions: shorten the prompt or generate fewer tokens")
        if T == 0:
            raise ValueError("input_ids holds no tokens: pass at least one")
        if position_ids is None:
            position_ids = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -T:]
        feeds = {"input_ids": ids, "attention_mask": mask,
                 "position_ids": _as_int64("position_ids", position_ids)}
        for i in range(self.config["num_layers"]):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = past[f"{kind}.{i}"]
        out = self.session.run(self.output_names, feeds)
        present = {f"{kind}.{i}": out[1 + 2 * i + j] for i in range(self.config["num_layers"])
                   for j, kind in enumerate(("key", "value"))}
        return out[0], present

    def generate_ids(self, input_ids, max_new_tokens: int = 20, **kwargs) -> torch.Tensor:
        """``ort_generate_ids(self, ...)``."""
        return ort_generate_ids(self, input_ids, max_new_tokens, **kwargs)


def load_onnx(path: str | os.PathLike, *, threads: int | None = None) -> OnnxEncoder | OnnxCausalLM:
    """An exported file in the runner its sidecar names: ``OnnxCausalLM`` (GPT-2) or ``OnnxEncoder``."""
    task = read_sidecar(path)["task"]
    classes = {"causal-lm": OnnxCausalLM, "feature-extraction": OnnxEncoder}
    if task not in classes:
        raise ValueError(f"{sidecar_path(path)} names task {task!r}; the course runs {sorted(classes)}")
    return classes[task](path, threads=threads)


def ort_generate_ids(model: OnnxCausalLM | str | os.PathLike, input_ids, max_new_tokens: int = 20, *,
                     attention_mask=None, eos_token_id: int | Sequence[int] | None = None,
                     stream: Callable[[torch.Tensor], None] | None = None, threads: int | None = None,
                     temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, min_p: float | None = None) -> torch.Tensor:
    """Decoding through onnxruntime with the cache: (B, T) prompt ids -> (B, T + new) int64 tensor.

    The same loop as the course's ``generate_ids``: the prompt with an empty cache, then
    one token per step with the previous ``present`` as its ``past``. Greedy (the highest
    logit; the first on a tie, as ``torch.argmax``) unless a sampling parameter is given
    (``temperature`` other than 1, ``top_k``, ``top_p``, ``min_p``, ``seed``): then the
    course's ``next_token`` chooses, with a ``torch.Generator`` seeded like
    ``generate_ids``'s, so a seed gives the same tokens as PyTorch (up to logits that
    differ by float32 rounding). ``attention_mask`` (B, T): 1 = token, 0 = padding; pad on
    the left. ``eos_token_id``: id(s) that end a sequence (default: the sidecar's
    ``eos_token_id``; ``[]`` never stops early); a finished row keeps emitting the end
    token until every row has finished. ``stream``: called with the new tokens (B,) int64
    after each step. ``model``: an ``OnnxCausalLM`` or a path (``threads`` then sets its
    thread count).
    """
    from course_lib.generation import check_generation_args, is_sampling, next_token

    if not isinstance(model, OnnxCausalLM):
        model = OnnxCausalLM(model, threads=threads)
    check_generation_args(max_new_tokens, temperature, top_k, top_p, seed, min_p, eos_token_id=eos_token_id)
    sample = is_sampling(temperature, top_k, top_p, seed, min_p)
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    ids = _as_int64("input_ids", input_ids)
    B, T = ids.shape
    if T == 0:
        raise ValueError(f"input_ids must be (batch, tokens) with at least one token, got shape {ids.shape}; to "
                         f"start from nothing, pass the BOS token ({model.meta.get('bos_token_id')})")
    if ids.min() < 0 or ids.max() >= model.config["vocab_size"]:
        raise ValueError(f"token ids must be in [0, {model.config['vocab_size']}), got {ids.min()}..{ids.max()}")
    mask = np.ones_like(ids) if attention_mask is None else _as_int64("attention_mask", attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}: they must match")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if (mask[:, -1] == 0).any():
        raise ValueError("a prompt ends with padding: pad batches for generation on the left "
                         "(encode_batch(..., padding_side='left')), so every prompt's last token is real")
    if T + max_new_tokens - 1 > model.config["max_positions"]:
        raise ValueError(f"a prompt of {T} tokens + {max_new_tokens} new tokens needs {T + max_new_tokens - 1} "
                         f"positions; the model has {model.config['max_positions']}: shorten the prompt or ask "
                         f"for fewer tokens")
    if eos_token_id is None:
        eos_token_id = model.meta.get("eos_token_id")
    eos = [] if eos_token_id is None else [int(eos_token_id)] if not isinstance(eos_token_id, (list, tuple)) else \
        [int(i) for i in eos_token_id]
    finished = np.zeros(B, dtype=bool)
    past, step = None, ids
    for _ in range(int(max_new_tokens)):
        logits, past = model(step, mask, past=past)  # (B, t, V), the cache with this step's tokens
        if sample:
            new = next_token(torch.from_numpy(logits[:, -1]), temperature, top_k, top_p, generator, True,
                             min_p).numpy()
        else:
            new = logits[:, -1].argmax(axis=-1)  # (B,)
        new = new.astype(np.int64)
        if eos:
            new = np.where(finished, eos[0], new)  # finished rows keep emitting the end token
            finished |= np.isin(new, eos)
        ids = np.concatenate([ids, new[:, None]], axis=1)  # (B, T + 1)
        mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        if stream is not None:
            stream(torch.from_numpy(new))
        if eos and finished.all():
            break
        step = new[:, None]  # with a cache only the new token goes in
    return torch.from_numpy(ids)
