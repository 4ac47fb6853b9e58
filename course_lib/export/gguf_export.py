"""Chapter 11: the course's GPT-2 as a GGUF file (llama.cpp's format), and back.

A GGUF file is one self-describing binary file (little-endian)::

    "GGUF"  version (uint32)  tensor count (uint64)  metadata count (uint64)
    metadata: key (string) -> typed value: numbers, strings, arrays (the whole tokenizer is here)
    tensor infos: name, dimensions (innermost first), ggml type (F32, F16, Q8_0, Q4_0, ...), offset
    padding to ``general.alignment`` (32 bytes), then every tensor's bytes, each aligned

llama.cpp finds everything by name: the architecture (``general.architecture = "gpt2"``)
says which keys hold the sizes (``gpt2.embedding_length``, ``gpt2.block_count``, ...) and
which tensors the graph needs (``token_embd.weight``, ``blk.N.attn_qkv.weight``, ...).

``to_gguf(model, path, qtype)`` writes the course's ``GPT2LMHeadModel`` the way llama.cpp's
``convert_hf_to_gguf.py`` (class ``GPT2Model``) writes a Hub GPT-2:

- names from ``gguf``'s tensor map for ``MODEL_ARCH.GPT2`` (``GGUF_NAMES`` below);
- the weights as PyTorch's ``nn.Linear`` holds them, (out, in): the converter transposes
  GPT-2's Conv1D (in, out) weights; the course's model already stores (out, in) (chapter 06);
- no ``output.weight``: GPT-2's head is tied to ``token_embd.weight`` and llama.cpp uses
  that tensor for both when ``output.weight`` is absent (as the converter leaves it);
- 1-D tensors (biases, norms) and ``position_embd.weight`` stay F32, as the converter keeps
  them; the other matrices take ``qtype``. For Q4_0 the token embedding (which is also the
  output head) is stored as Q8_0, as ``llama-quantize`` keeps the output head at 6 bits or
  more (it uses Q6_K or Q8_0; the course writes only Q8_0). ``embedding_qtype=`` overrides;
- a row length that is not a multiple of 32 cannot be cut into blocks: that matrix is stored
  F16 instead, as the converter does;
- the quantized bytes are the course's own (``course_lib.export.gguf_blocks``), handed to
  ``gguf.GGUFWriter`` with ``raw_dtype`` set, so the writer only lays them out;
- the tokenizer (llama.cpp's "gpt2" BPE): tokens, token types, merges, bos/eos ids.

``read_gguf(path)`` reads such a file back with ``gguf.GGUFReader``: a config dict for
``GPT2Config``, a float32 state dict in the Hub's GPT-2 key layout (Conv1D weights (in,
out) again), the tokenizer pieces and all metadata. ``load_gguf_model(path)`` builds the
course's ``GPT2LMHeadModel`` from it (what ``load_model("x.gguf")`` calls), and
``gguf_tokenizer(path)`` a ``tokenizers.Tokenizer`` from the vocabulary in the file.
``read_gguf_layout(path)`` parses the header with ``struct`` alone (no ``gguf`` package):
each metadata entry and tensor with its byte offset, for reading the format by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from course_lib.export.gguf_blocks import QK, QTYPES, dequantize_blocks, quantize_blocks

__all__ = ["to_gguf", "read_gguf", "load_gguf_model", "gguf_tokenizer", "gguf_plan", "read_gguf_layout", "GGUFContents",
           "GGUFFormatError", "GGUF_ARCH", "GGUF_NAMES", "FILE_TYPES", "tensor_qtype", "hub_to_gguf_name"]

GGUF_ARCH = "gpt2"
# general.file_type: llama.cpp's llama_ftype ("mostly": the matrices; norms and biases stay F32)
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7}
# Hub GPT-2 key (without "transformer.") -> GGUF name; {i} is the block number.
GGUF_NAMES = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "h.{i}.ln_1.weight": "blk.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "blk.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "blk.{i}.attn_qkv.weight",
    "h.{i}.attn.c_attn.bias": "blk.{i}.attn_qkv.bias",
    "h.{i}.attn.c_proj.weight": "blk.{i}.attn_output.weight",
    "h.{i}.attn.c_proj.bias": "blk.{i}.attn_output.bias",
    "h.{i}.ln_2.weight": "blk.{i}.ffn_norm.weight",
    "h.{i}.ln_2.bias": "blk.{i}.ffn_norm.bias",
    "h.{i}.mlp.c_fc.weight": "blk.{i}.ffn_up.weight",
    "h.{i}.mlp.c_fc.bias": "blk.{i}.ffn_up.bias",
    "h.{i}.mlp.c_proj.weight": "blk.{i}.ffn_down.weight",
    "h.{i}.mlp.c_proj.bias": "blk.{i}.ffn_down.bias",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
}
# the four weights GPT-2's Conv1D stores (in, out) in Hub files; GGUF, like the course's model, holds (out, in)
CONV1D_ENDINGS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# tokenizer.ggml.token_type values (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# activations llama.cpp's gpt2 graph computes: ggml_gelu is the tanh approximation
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
INSTALL = "pip install onnx onnxruntime gguf  (or `make setup`)"


class GGUFFormatError(ValueError):
    """A file that is not a GGUF file, or one the course cannot read (architecture, tensor type, names)."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(f"writing and reading GGUF files needs the `gguf` package: {INSTALL}") from None
    return gguf


# --------------------------------------------------------------------------------------
# Names and types

def hub_to_gguf_name(key: str) -> str:
    """A Hub GPT-2 key (``h.3.mlp.c_fc.weight``, with or without ``transformer.``) -> its GGUF name
    (``blk.3.ffn_up.weight``)."""
    key = key.removeprefix("transformer.")
    match = re.fullmatch(r"h\.(\d+)\.(.+)", key)
    pattern, block = (f"h.{{i}}.{match.group(2)}", match.group(1)) if match else (key, None)
    if pattern not in GGUF_NAMES:
        raise KeyError(f"{key!r} is not a tensor of llama.cpp's gpt2 layout (known: {', '.join(GGUF_NAMES)})")
    return GGUF_NAMES[pattern].format(i=block)


def _gguf_to_hub_names(n_layer: int) -> dict[str, str]:
    names = {}
    for hub, name in GGUF_NAMES.items():
        for i in (range(n_layer) if "{i}" in hub else [None]):
            names[name.format(i=i)] = hub.format(i=i)
    return names


def tensor_qtype(name: str, shape: tuple[int, ...], qtype: str, embedding_qtype: str | None = None) -> str:
    """The type one tensor gets in a ``qtype`` file (llama.cpp's conventions, see the module docstring).

    ``name`` is the GGUF name, ``shape`` as PyTorch holds it ((out, in) for a matrix).
    """
    if qtype not in QTYPES:
        raise ValueError(f"qtype={qtype!r} is not one the course writes: use one of {', '.join(QTYPES)}")
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") \
            or name == "position_embd.weight":
        return "F32"
    if name == "token_embd.weight":
        wanted = embedding_qtype or ("Q8_0" if qtype == "Q4_0" else qtype)
    else:
        wanted = qtype
    if wanted in ("Q8_0", "Q4_0") and shape[-1] % QK:
        return "F16"  # rows that are not whole blocks: the converter's fallback
    return wanted


def _check_model(model) -> None:
    from course_lib.models.gpt2 import GPT2LMHeadModel

    if not isinstance(model, GPT2LMHeadModel):
        hint = " (export encoders with course_lib.export.to_onnx)" if "Bert" in type(model).__name__ \
            or "Roberta" in type(model).__name__ else ""
        raise TypeError(f"to_gguf writes the course's GPT-2 (GPT2LMHeadModel, llama.cpp's 'gpt2' architecture); "
                        f"got {type(model).__name__}{hint}")
    config = model.config
    problems = []
    if config.activation_function not in TANH_GELUS:
        problems.append(f"activation_function={config.activation_function!r} (llama.cpp's gpt2 graph computes the "
                        f"tanh GELU, 'gelu_new')")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        problems.append("an attention scale other than 1/sqrt(head_dim) (scale_attn_weights / "
                        "scale_attn_by_inverse_layer_idx)")
    if config.pruned_heads:
        problems.append(f"pruned attention heads {config.pruned_heads} (llama.cpp's gpt2 needs n_head equal heads "
                        f"in every block)")
    not_float = sorted({k for k, v in model.state_dict().items() if not v.is_floating_point()})
    if not_float:
        problems.append(f"quantized layers ({', '.join(not_float[:3])}{', ...' if len(not_float) > 3 else ''} are "
                        f"integers): export the float model and choose qtype='Q8_0' or 'Q4_0' instead")
    if problems:
        raise ValueError("this GPT-2 cannot be written as llama.cpp's gpt2: " + "; ".join(problems))


def _hub_tensors(model) -> dict[str, torch.Tensor]:
    """The model's tensors by Hub key (no prefix), float32 on the CPU, in the course's (out, in) layout."""
    tensors = {}
    for key, value in model.state_dict().items():
        if key.startswith("lm_head."):
            continue  # tied to transformer.wte.weight: llama.cpp reads token_embd.weight for both
        tensors[key.removeprefix("transformer.")] = value.detach().to("cpu", torch.float32).contiguous()  # rows
    return tensors


def gguf_plan(model, qtype: str = "F32", embedding_qtype: str | None = None) -> list[dict]:
    """What ``to_gguf`` writes, tensor by tensor: [{"name", "hub_key", "shape" (PyTorch order), "qtype"}].

    ``shape`` is (out, in) for a matrix; GGUF lists dimensions innermost first, so the file
    says (in, out), e.g. ``blk.0.attn_qkv.weight`` of a 768-wide GPT-2 is [768, 2304].
    """
    _check_model(model)
    for what, value in (("qtype", qtype), ("embedding_qtype", embedding_qtype)):
        if value is not None and value not in QTYPES:
            raise ValueError(f"{what}={value!r} is not one the course writes: use one of {', '.join(QTYPES)}")
    plan = []
    for key, tensor in _hub_tensors(model).items():
        name = hub_to_gguf_name(key)
        plan.append({"name": name, "hub_key": key, "shape": tuple(tensor.shape),
                     "qtype": tensor_qtype(name, tuple(tensor.shape), qtype, embedding_qtype)})
    return plan


# --------------------------------------------------------------------------------------
# The tokenizer: llama.cpp's "gpt2" BPE vocabulary

def _tokenizer_json(tokenizer) -> dict:
    """A ``tokenizers.Tokenizer``, a tokenizer.json path, or a folder holding one -> the parsed JSON."""
    if hasattr(tokenizer, "to_str"):
        return json.loads(tokenizer.to_str())
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer={str(tokenizer)!r}: no tokenizer.json there; pass the model's folder, "
                                f"its tokenizer.json, or course_lib.load_tokenizer(...)")
    return json.loads(path.read_text(encoding="utf-8"))


def gguf_vocab(tokenizer, vocab_size: int) -> dict:
    """tokenizer.json of a byte-level BPE -> llama.cpp's "gpt2" vocabulary pieces.

    Returns {"tokens": [str] * vocab_size, "token_types": [int], "merges": ["a b", ...]}.
    As llama.cpp's converter: ids the tokenizer does not use are "[PAD<id>]" of type UNUSED
    (the model's table may be larger than the vocabulary), special added tokens CONTROL,
    other added tokens USER_DEFINED, the rest NORMAL.
    """
    spec = _tokenizer_json(tokenizer)
    model = spec.get("model", {})
    pre = spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") != "BPE" or not any(p.get("type") == "ByteLevel" for p in pres):
        raise ValueError(f"llama.cpp's 'gpt2' tokenizer is a byte-level BPE; this tokenizer is "
                         f"{model.get('type')!r} with pre-tokenizer {pre.get('type')!r}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, token in added.items():
        vocab[content] = token["id"]
    if vocab and max(vocab.values()) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(vocab.values())}, but the model's embedding has only "
                         f"{vocab_size} rows: this tokenizer belongs to another model")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(CONTROL if added[token].get("special") else USER_DEFINED)
        else:
            tokens.append(token)
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "token_types": types, "merges": merges}


# --------------------------------------------------------------------------------------
# Writing

def to_gguf(model, path: str | os.PathLike, qtype: str = "F32", *, tokenizer=None, name: str | None = None,
            embedding_qtype: str | None = None) -> Path:
    """Write the course's ``GPT2LMHeadModel`` as a llama.cpp GGUF file; returns the path.

    ``qtype``: ``"F32"``, ``"F16"``, ``"Q8_0"`` (8.5 bits per weight) or ``"Q4_0"`` (4.5)
    for the weight matrices (see the module docstring for which tensors stay F32).
    ``tokenizer``: the model's tokenizer (a ``tokenizers.Tokenizer``, its tokenizer.json,
    or the model's folder), written into the file as llama.cpp needs it; ``False`` writes
    a file without one (the course reads it, llama.cpp refuses it). ``name``:
    ``general.name``. The file appears whole or not at all (written to a temporary file in
    the same folder, then renamed).
    """
    from course_lib.checkpoint import write_atomic

    plan = gguf_plan(model, qtype, embedding_qtype)  # checks the model and the types first
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the file to write, e.g. {path / 'model.gguf'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist (create it first)")
    if tokenizer is None:
        raise ValueError("to_gguf needs the model's tokenizer (llama.cpp reads the vocabulary from the file): pass "
                         "tokenizer=<the model's folder, its tokenizer.json, or load_tokenizer(...)>, or "
                         "tokenizer=False for a file without one")
    config = model.config
    vocab = gguf_vocab(tokenizer, config.vocab_size) if tokenizer is not False else None
    gguf = _gguf()
    tensors = _hub_tensors(model)
    # quantize everything before touching the disk: a bad tensor fails here, and no file appears
    data = {p["name"]: (quantize_blocks(tensors[p["hub_key"]], p["qtype"], what=f"{p['hub_key']} ({p['name']})"),
                        p["qtype"]) for p in plan}

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch=GGUF_ARCH)
        try:
            writer.add_type("model")
            writer.add_name(name or "course GPT-2")
            writer.add_file_type(FILE_TYPES[qtype])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_context_length(config.n_positions)
            writer.add_embedding_length(config.n_embd)
            writer.add_feed_forward_length(config.inner_dim)
            writer.add_block_count(config.n_layer)
            writer.add_head_count(config.n_head)
            writer.add_layer_norm_eps(config.layer_norm_epsilon)
            if vocab is not None:
                writer.add_tokenizer_model("gpt2")
                writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's pre-tokenizer regex (llama-vocab.cpp)
                writer.add_token_list(vocab["tokens"])
                writer.add_token_types(vocab["token_types"])
                writer.add_token_merges(vocab["merges"])
                if config.bos_token_id is not None:
                    writer.add_bos_token_id(config.bos_token_id)
                if config.eos_token_id is not None:
                    writer.add_eos_token_id(config.eos_token_id)
                writer.add_add_bos_token(False)  # GPT-2 puts nothing in front of a prompt
            for tensor_name, (array, ttype) in data.items():
                writer.add_tensor(tensor_name, array, raw_dtype=gguf.GGMLQuantizationType[ttype])
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    write_atomic(path, write)
    return path


# --------------------------------------------------------------------------------------
# Reading

@dataclasses.dataclass
class GGUFContents:
    """What ``read_gguf`` finds in a GPT-2 GGUF file.

    ``config``: config.json-like dict for ``GPT2Config.from_dict``. ``state_dict``: Hub GPT-2
    keys (``wte.weight``, ``h.0.attn.c_attn.weight`` (in, out), ...) -> float32 tensors,
    dequantized. ``tokenizer``: {"model", "tokens", "token_types", "merges", "bos_token_id",
    "eos_token_id"} or None. ``metadata``: every key -> value. ``tensor_types``: GGUF
    tensor name -> "F32" / "F16" / "Q8_0" / "Q4_0". ``file_type``: the qtype that
    ``general.file_type`` names (None when absent or unknown).
    """

    config: dict
    state_dict: dict[str, torch.Tensor]
    tokenizer: dict | None
    metadata: dict
    tensor_types: dict[str, str]
    file_type: str | None


def _open_reader(path: Path):
    gguf = _gguf()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_file():
        raise GGUFFormatError(f"{path} is not a file (a GGUF model is one .gguf file)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFFormatError(f"{path} is not a GGUF file: it starts with {magic!r}, a GGUF file with b'GGUF'. "
                              f"Write one with course_lib.export.to_gguf, or load a Hub folder with load_model")
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - the reader raises bare ValueError/IndexError for broken files
        raise GGUFFormatError(f"{path} starts like a GGUF file but cannot be read ({type(err).__name__}: {err}): "
                              f"it is truncated or damaged; write it again") from err


def _metadata(reader) -> dict:
    values = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # the header (version, counts), not metadata
        try:
            values[key] = field.contents()
        except Exception as err:  # noqa: BLE001
            raise GGUFFormatError(f"metadata key {key!r} cannot be decoded ({err}): the file is damaged") from err
    return values


def _float32_repr(value: float) -> float:
    """A float32 from the file as the short decimal it was written from (1e-05, not 9.99999974738e-06)."""
    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Read a gpt2 GGUF file: config, float32 state dict in the Hub's layout, tokenizer, metadata.

    Refused with ``GGUFFormatError``: a file that is not GGUF, an architecture other than
    "gpt2", a tensor type the course does not dequantize (it reads F32, F16, Q8_0, Q4_0),
    missing or unknown tensors, an ``output.weight`` that differs from ``token_embd.weight``
    (the course's GPT-2 ties them).
    """
    gguf = _gguf()
    path = Path(path)
    reader = _open_reader(path)
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch != GGUF_ARCH:
        raise GGUFFormatError(f"{path} holds a {arch!r} model; the course reads llama.cpp's 'gpt2' architecture "
                              f"only (its GPT2LMHeadModel)")

    def need(key: str):
        if key not in meta:
            raise GGUFFormatError(f"{path} lacks the metadata key {key!r} that llama.cpp's gpt2 needs")
        return meta[key]

    n_layer, n_embd = int(need("gpt2.block_count")), int(need("gpt2.embedding_length"))
    n_head, n_ctx = int(need("gpt2.attention.head_count")), int(need("gpt2.context_length"))
    eps = _float32_repr(need("gpt2.attention.layer_norm_epsilon"))
    n_ff = int(meta.get("gpt2.feed_forward_length", 4 * n_embd))

    hub_names = _gguf_to_hub_names(n_layer)
    types, state, output = {}, {}, None
    unknown = []
    for t in reader.tensors:
        ttype = gguf.GGMLQuantizationType(t.tensor_type).name
        types[t.name] = ttype
        if ttype not in QTYPES:
            raise GGUFFormatError(f"{path}: tensor {t.name!r} is {ttype}; the course dequantizes {', '.join(QTYPES)} "
                                  f"only. Write the model with to_gguf(qtype='Q8_0' or 'Q4_0'), or requantize it "
                                  f"with llama-quantize to Q8_0/Q4_0")
        if t.name != "output.weight" and t.name not in hub_names:
            unknown.append(t.name)
            continue
        values = dequantize_blocks(t.data, ttype)  # numpy order: (out, in) for a matrix
        if t.name == "output.weight":
            output = values
            continue
        hub = hub_names[t.name]
        state[hub] = values.T.contiguous() if hub.endswith(CONV1D_ENDINGS) else values
    if unknown:
        raise GGUFFormatError(f"{path}: tensors that llama.cpp's gpt2 layout does not have: {', '.join(unknown[:10])}")
    missing = [name for name, hub in hub_names.items() if hub not in state]
    if missing:
        raise GGUFFormatError(f"{path}: {len(missing)} tensors of the gpt2 layout are missing: "
                              f"{', '.join(missing[:10])}")
    if output is not None:
        wte = state["wte.weight"]
        if output.shape != wte.shape or not torch.allclose(output, wte, rtol=0.02, atol=1e-3 * float(wte.abs().max())):
            raise GGUFFormatError(f"{path}: output.weight differs from token_embd.weight, but the course's GPT-2 ties "
                                  f"its output head to the token embedding")
    vocab_size = state["wte.weight"].shape[0]

    tokenizer = None
    if "tokenizer.ggml.tokens" in meta:
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise GGUFFormatError(f"{path}: tokenizer.ggml.model is {model!r}; GPT-2 uses llama.cpp's 'gpt2' BPE")
        tokenizer = {"model": model, "tokens": meta["tokenizer.ggml.tokens"],
                     "token_types": meta.get("tokenizer.ggml.token_type", [NORMAL] * vocab_size),
                     "merges": meta.get("tokenizer.ggml.merges", []),
                     "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
                     "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size,
              "n_positions": n_ctx, "n_ctx": n_ctx, "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head,
              "n_inner": None if n_ff == 4 * n_embd else n_ff, "activation_function": "gelu_new",
              "layer_norm_epsilon": eps, "tie_word_embeddings": True,
              "bos_token_id": tokenizer["bos_token_id"] if tokenizer else None,
              "eos_token_id": tokenizer["eos_token_id"] if tokenizer else None}
    file_type = {v: k for k, v in FILE_TYPES.items()}.get(meta.get("general.file_type"))
    del reader  # releases the memory map
    return GGUFContents(config=config, state_dict=state, tokenizer=tokenizer, metadata=meta, tensor_types=types,
                        file_type=file_type)


# --------------------------------------------------------------------------------------
# The layout, byte by byte (no gguf package: what the chapter reads by hand)

# GGUF value types: id -> (name, struct format or None for string / array)
VALUE_TYPES = {0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"), 4: ("UINT32", "<I"),
               5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"), 8: ("STRING", None), 9: ("ARRAY", None),
               10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d")}
# ggml tensor types the course names: id -> (name, weights per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 8: ("Q8_0", 32, 34)}


def read_gguf_layout(path: str | os.PathLike) -> dict:
    """Parse a GGUF file's header with ``struct`` alone: where everything is, as the bytes say.

    Returns {"version", "alignment", "tensor_infos_offset" (where the metadata ends and the tensor
    descriptions begin), "header_end" (where they end), "data_offset" (where tensor data starts: header_end
    rounded up to the alignment), "metadata":
    [{"key", "type", "value", "offset"}], "tensors": [{"name", "ne" (dimensions, innermost
    first), "type", "offset" (from data_offset), "data_offset" (from the file's start),
    "nbytes"}]}. Every number is little-endian; a string is a uint64 length then UTF-8
    bytes; an array is an element type (uint32), a count (uint64), then the elements.
    Tensor types outside F32/F16/Q8_0/Q4_0 are named "ggml type <id>", with nbytes None.
    """
    import struct

    path = Path(path)
    with open(path, "rb") as f:
        def take(fmt: str):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise GGUFFormatError(f"{path} ends inside its header (at byte {f.tell()}): truncated")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            n = take("<Q")
            data = f.read(n)
            if len(data) != n:
                raise GGUFFormatError(f"{path} ends inside a string of its header (at byte {f.tell()}): truncated")
            return data.decode("utf-8")

        def value(vtype: int):
            if vtype not in VALUE_TYPES:
                raise GGUFFormatError(f"{path}: unknown metadata value type {vtype} at byte {f.tell() - 4}")
            name, fmt = VALUE_TYPES[vtype]
            if name == "STRING":
                return string()
            if name == "ARRAY":
                item_type, count = take("<I"), take("<Q")
                return [value(item_type) for _ in range(count)]
            return take(fmt)

        if f.read(4) != b"GGUF":
            raise GGUFFormatError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
        metadata = []
        for _ in range(n_kv):
            offset = f.tell()
            key, vtype = string(), take("<I")
            metadata.append({"key": key, "type": VALUE_TYPES.get(vtype, ("?",))[0], "value": value(vtype),
                             "offset": offset})
        tensor_infos_offset = f.tell()  # the metadata's end: the tensor descriptions follow
        tensors = []
        for _ in range(n_tensors):
            name = string()
            ne = [take("<Q") for _ in range(take("<I"))]
            ttype, offset = take("<I"), take("<Q")
            tname, per_block, block_bytes = GGML_TYPES.get(ttype, (f"ggml type {ttype}", None, None))
            count = math.prod(ne)
            tensors.append({"name": name, "ne": ne, "type": tname, "offset": offset,
                            "nbytes": count // per_block * block_bytes if per_block else None})
        alignment = next((m["value"] for m in metadata if m["key"] == "general.alignment"), 32)
        header_end = f.tell()
        data_offset = -(-header_end // alignment) * alignment  # the tensor infos' end, rounded up to the alignment
    for t in tensors:
        t["data_offset"] = data_offset + t["offset"]
    return {"version": version, "alignment": alignment, "tensor_infos_offset": tensor_infos_offset,
            "header_end": header_end, "data_offset": data_offset, "metadata": metadata, "tensors": tensors}


class _StateDictReader:
    """A state dict behind the interface ``course_lib.checkpoint.load_state`` reads checkpoints through."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def keys(self):
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self.tensors[key][start:stop]


def load_gguf_model(path: str | os.PathLike, dtype=None, device=None, quantize: str | None = None):
    """A gpt2 GGUF file -> the course's ``GPT2LMHeadModel`` in eval mode, weights dequantized.

    ``dtype`` (default float32; ``"auto"`` is float32 too: dequantized values are float32),
    ``device`` and ``quantize`` (``"int8"``, ``"int4"``, ...: chapter 07's weight-only
    layers, applied to the dequantized weights) as in ``load_model``. The model's
    ``load_report`` says what was loaded; ``model.gguf_types`` holds each tensor's type in
    the file. The weights are exactly the file's values (Q8_0/Q4_0 rounding included), so
    logits differ from the original float model by the format's error.
    """
    from course_lib.checkpoint import StateDictMismatchError, check_fully_loaded, load_state, match_keys
    from course_lib.loading import _quantize_scheme, check_device, resolve_dtype
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    dtype = resolve_dtype(None if dtype == "auto" else dtype, None)
    check_device(device)
    scheme = _quantize_scheme(quantize)  # a bad value fails before the file is read
    contents = read_gguf(path)
    config = GPT2Config.from_dict(contents.config)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    report = match_keys(model, {k: tuple(v.shape) for k, v in contents.state_dict.items()})
    if not report.ok:
        raise StateDictMismatchError(f"{path}: the tensors do not fit a GPT-2 of the sizes its metadata states:\n"
                                     f"{report.problems()}", report)
    load_state(model, _StateDictReader(contents.state_dict), report, dtype=dtype,
               device=None if scheme is not None else device, source=str(path))
    check_fully_loaded(model, str(path))
    if scheme is not None:
        from course_lib import quantization

        quantization.quantize_model(model, scheme)
        model.to(device=device, dtype=dtype)
    model.load_report = report
    model.gguf_types = contents.tensor_types
    return model.eval()


def gguf_tokenizer(source):
    """The ``tokenizers.Tokenizer`` a gpt2 GGUF file holds (``source``: its path or ``read_gguf``'s result).

    GPT-2's pipeline (course_lib.tokenizer_loading.gpt2_tokenizer) around the file's tokens
    and merges; CONTROL tokens become special tokens, "[PAD<id>]" fillers are left out.
    """
    from tokenizers import AddedToken

    from course_lib.tokenizer_loading import gpt2_tokenizer

    contents = source if isinstance(source, GGUFContents) else read_gguf(source)
    if contents.tokenizer is None:
        raise GGUFFormatError("this GGUF file holds no tokenizer (written with tokenizer=False)")
    pieces = contents.tokenizer
    tokens, types = pieces["tokens"], pieces["token_types"]
    special = [(i, t) for i, (t, k) in enumerate(zip(tokens, types)) if k == CONTROL]
    user = [(i, t) for i, (t, k) in enumerate(zip(tokens, types)) if k == USER_DEFINED]
    vocab = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == NORMAL}
    merges = [tuple(m.split(" ", 1)) for m in pieces["merges"]]
    eos = pieces.get("eos_token_id")
    eos_token = tokens[eos] if eos is not None else "<|endoftext|>"
    for i, t in special + user:  # added tokens keep their ids: put them in the vocabulary as the Hub file does
        vocab[t] = i
    tok = gpt2_tokenizer(vocab, merges, eos_token=eos_token)
    tok.add_special_tokens([AddedToken(t, special=True) for _, t in special if t != eos_token])
    if user:
        tok.add_tokens([AddedToken(t, special=False) for _, t in user])
    return tok


# --------------------------------------------------------------------------------------
# llama.cpp itself, when it is installed (an optional extra: it compiles from source)

LLAMA_CPP_INSTALL = ("pip install llama-cpp-python  (optional: it compiles llama.cpp from source, about 15 minutes on "
                     "2 cores; `pip install -e '.[llama]'` pins the version the course tested)")


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` (the llama-cpp-python package) imports here."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


@contextlib.contextmanager
def _llama_model_params(**fields):
    """While it is open, llama-cpp-python's ``Llama`` starts from default model parameters with ``fields`` set
    (its constructor takes no argument for them)."""
    import llama_cpp.llama_cpp as low_level

    default = low_level.llama_model_default_params

    def patched():
        params = default()
        for name, value in fields.items():
            if hasattr(params, name):  # a field an older llama.cpp lacks is left alone
                setattr(params, name, value)
        return params

    low_level.llama_model_default_params = patched
    try:
        yield
    finally:
        low_level.llama_model_default_params = default


class LlamaCpp:
    """A GGUF file in llama.cpp (through llama-cpp-python): greedy decoding and logits, for comparing with the course.

    ``LlamaCpp(path, threads=1, n_ctx=256)`` loads the file once (so timing leaves loading out).
    ``generate_ids(prompt_ids, max_new_tokens)`` -> prompt + new ids (a list of ints): greedy
    (temperature 0: llama.cpp's argmax sampler), no repetition penalty, never stopping at the
    end token (as ``generate_ids(..., eos_token_id=[])``). ``logits(ids)`` -> (T, vocab) float32
    numpy: llama.cpp's logits at every position of one sequence. ``stream(token)`` is called
    per new token. A ``ModuleNotFoundError`` naming the install when llama-cpp-python is absent.

    ``repack``: let llama.cpp copy Q8_0/Q4_0 weights into its repacked CPU layouts ("extra buffer
    types", faster matrix products). Off by default: with llama-cpp-python 0.3.36 built on an
    AVX-512 Intel Xeon, evaluating any Q8_0 file with them on crashed the process (a segmentation
    fault, also for a file llama.cpp quantized itself); without them the same files run and agree
    with the course. F32 files are not repacked either way. Pass ``repack=True`` to measure
    llama.cpp at its fastest where it works.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, n_ctx: int = 256, repack: bool = False):
        try:
            from llama_cpp import Llama
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"llama.cpp's Python binding is not installed: {LLAMA_CPP_INSTALL}") from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file {path}: write one with course_lib.export.to_gguf(model, path, qtype)")
        if not any(m["key"] == "tokenizer.ggml.model" for m in read_gguf_layout(path)["metadata"]):
            raise ValueError(f"{path} holds no tokenizer, and llama.cpp refuses a model without a vocabulary: write it "
                             f"with to_gguf(..., tokenizer=<the model's folder or tokenizer.json>)")
        self.path, self.n_ctx, self.repack = path, n_ctx, repack
        with _llama_model_params(use_extra_bufts=repack):
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                             logits_all=True, verbose=False, seed=0)

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise ValueError(f"{n} tokens do not fit llama.cpp's context of {self.n_ctx}: pass n_ctx= to LlamaCpp")

    def generate_ids(self, prompt_ids, max_new_tokens: int, stream=None) -> list[int]:
        prompt = [int(t) for t in (prompt_ids.reshape(-1).tolist() if hasattr(prompt_ids, "reshape") else prompt_ids)]
        self._check_length(len(prompt) + max_new_tokens)
        out = []
        if max_new_tokens < 1:
            return prompt
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            out.append(int(token))
            if stream is not None:
                stream(token)
            if len(out) == max_new_tokens:
                break
        return prompt + out

    def logits(self, ids) -> np.ndarray:
        ids = [int(t) for t in (ids.reshape(-1).tolist() if hasattr(ids, "reshape") else ids)]
        self._check_length(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)
