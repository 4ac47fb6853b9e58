"""Chapter 11 exercises: the bytes and names a model has outside PyTorch (GGUF blocks and headers, ONNX axes).

A GGUF file (llama.cpp's format) is bytes you can write by hand: a header of typed
metadata entries, tensor descriptions, then each tensor's data at an aligned offset, the
weight matrices cut into **blocks** of 32 weights that carry their own float16 scale. An
ONNX graph is the model's operators with named inputs and outputs, some of whose axes are
**dynamic** (the batch, the tokens, the cache) so that one file serves every length.

The exercises follow ``notebooks/11_export.ipynb``: 1 the dynamic axes of GPT-2's graph with
its KV cache, 2-3 the GGUF header (one metadata entry; where a tensor's data starts), 4-6 the
Q8_0 and Q4_0 blocks (write, and read back). The last two are stretch exercises that
go past what the chapter shows: a Q8_0 dot product computed on the integers as llama.cpp's
CPU backend does, and the greedy decoding loop that drives the exported graph's cache from
outside Python (what the chapter's Node.js program does).

Byte layouts, little-endian everywhere (``struct`` formats in brackets):

* Q8_0 block, 34 bytes for 32 weights: the scale d as float16 (``<e``), then 32 int8.
* Q4_0 block, 18 bytes for 32 weights: the scale d as float16, then 16 bytes of 4-bit codes.
* A GGUF string: its length in UTF-8 bytes as uint64 (``<Q``), then the bytes (no 0 at the end).

You may use ``struct``, ``numpy``, ``torch`` and ``math``; not the ready-made versions of what
the exercises ask for: the ``gguf`` package's quantizers (``gguf.quants``), writer and reader
(``gguf.GGUFWriter``, ``gguf.GGUFReader``). The grader switches them off while your code runs
and tells you if you called one. ``course_lib`` is the answer key: importing it scores 0.
Functions later in this file may call earlier ones (``q8_0_dot`` may call your ``q8_0_block``).
Every function returns new objects and leaves its inputs as they were.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex11.q8_0_block")`` (one cell per exercise; each failure shows
  the next hint, ``check(key, hint=2)`` asks for one) — grading runs in a fresh process, so
  save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex11`` (all) or ``python -m course_lib.grade
  ex11.q4_0_block`` (one).

The checks call your functions on random inputs (blocks of every scale, ties that show the
rounding rule, all-zero blocks, keys and strings in several scripts, every GGUF value type,
real GGUF files with several alignments, GPT-2 graphs of 1 to 12 layers, one exported by the course)
and compare with ``course_lib``'s versions, themselves tested byte for byte against the
``gguf`` package and against onnxruntime: bytes exactly, values exactly where they are
copies or exact products, a dot product to 1e-5 of its size.
"""

from __future__ import annotations

import struct

import numpy as np
import torch


def q8_0_block(values: torch.Tensor) -> bytes:
    """Quantize 32 weights to one Q8_0 block: 34 bytes, exactly as llama.cpp (ggml) writes them.

    ``values``: a float32 tensor of shape (32,). Returns ``bytes`` of length 34:

    * bytes 0-1: the scale d = max(|values|) / 127 as float16, little-endian;
    * bytes 2-33: q_i = round(values[i] / d) as int8 (two's complement), in [-127, 127].

    The arithmetic is ggml's, all in float32: d = max|x| / 127; its reciprocal id = 1 / d is
    computed once (0 when d is 0, an all-zero block); then each q_i is x_i * id rounded to
    the nearest integer with halves rounded **away from zero** (C's ``roundf``: 2.5 -> 3,
    -2.5 -> -3). The integers are computed with the float32 d; only the stored copy of d is
    rounded to float16. Raise ``ValueError`` when ``values`` does not hold exactly 32 numbers.

    Example: values = [127, 2.5, -2.5, 0, 0, ...] gives d = 1.0 (bytes ``00 3c``) and the
    int8s 127, 3, -3, 0, ...: ``b'\\x00<\\x7f\\x03\\xfd\\x00...'``.

    Hint: chapter 07's absmax quantization, one block at a time; mind which rounding your
    library's ``round`` does.
    """
    raise NotImplementedError


def q4_0_block(values: torch.Tensor) -> bytes:
    """Quantize 32 weights to one Q4_0 block: 18 bytes, exactly as llama.cpp (ggml) writes them.

    ``values``: a float32 tensor of shape (32,). Returns ``bytes`` of length 18:

    * bytes 0-1: the scale d as float16, little-endian. d = m / -8, where m is the weight of
      largest magnitude **with its sign** (the first one when several tie);
    * bytes 2-17: 32 codes of 4 bits, code_i = q_i + 8 in [0, 15]. Byte 2 + j holds code j in
      its low 4 bits and code j + 16 in its high 4 bits (j = 0..15): the first half of the
      block in the low nibbles, the second half in the high nibbles.

    q_i + 8 is computed as ggml does, in float32: with id = 1 / d (0 when d is 0), the code is
    x_i * id + 8.5 truncated towards zero, then clipped to at most 15. Dividing by -8 maps m
    itself to code 0 (q = -8) and lets the other weights use the other 15 levels. Raise
    ``ValueError`` when ``values`` does not hold exactly 32 numbers.

    Example: values = [-8, 1, 1, ..., 1] (x_0 = -8, the 31 others 1) gives d = 1.0, code_0 = 0 and
    code_i = 9 for the others: the bytes ``00 3c 90 99 99 ... 99`` (byte 2 = 0x90: code 16 = 9
    in the high nibble, code 0 = 0 in the low one).

    Hint: the sign of the extreme weight matters; draw the 16 bytes as two rows of nibbles.
    """
    raise NotImplementedError


def dequantize_q4_0_block(data: bytes) -> torch.Tensor:
    """Read one Q4_0 block back: 18 bytes -> the 32 weights it stands for, a float32 tensor (32,).

    ``data``: ``bytes`` of length 18, laid out as ``q4_0_block`` describes (float16 scale d,
    then 16 bytes whose low nibbles are codes 0..15 and high nibbles codes 16..31). Weight i
    is (code_i - 8) * d, computed in float32. Raise ``ValueError`` for any other length.

    Example: ``dequantize_q4_0_block(b'\\x00\\x3c' + bytes([0x90] + [0x99] * 15))`` is
    ``tensor([-8., 1., 1., ..., 1.])``.

    Hint: split each byte into its two nibbles with a mask and a shift.
    """
    raise NotImplementedError


def gguf_kv(key: str, value, value_type: str, item_type: str | None = None) -> bytes:
    """One GGUF metadata entry as bytes: the key, the value's type id, the value.

    Layout (GGUF v2/v3, little-endian):

    * the key as a GGUF string: its length in UTF-8 bytes as uint64, then those bytes;
    * the value type's id as uint32;
    * the value: a number in its type's width; BOOL as one byte (0 or 1); STRING as a GGUF
      string; ARRAY as the items' type id (uint32), the number of items (uint64), then the
      items one after the other, each without a type id of its own.

    ``value_type`` (and ``item_type`` for an ARRAY) is one of the spec's type names; their
    ids and widths: UINT8 0 (1 byte), INT8 1 (1), UINT16 2 (2), INT16 3 (2), UINT32 4 (4),
    INT32 5 (4), FLOAT32 6 (4), BOOL 7 (1), STRING 8, ARRAY 9, UINT64 10 (8), INT64 11 (8),
    FLOAT64 12 (8). Raise ``ValueError`` for a name that is not in this list, an ARRAY without
    ``item_type``, or an ``item_type`` of ARRAY (nested arrays are not asked here).

    Example: ``gguf_kv("gpt2.block_count", 2, "UINT32")`` is ``struct.pack("<Q", 16) +
    b"gpt2.block_count" + struct.pack("<I", 4) + struct.pack("<I", 2)``: 32 bytes.

    Hint: Python's ``struct`` packs each fixed-width piece; a string's length counts bytes,
    not characters.
    """
    raise NotImplementedError


def tensor_data_offset(header_end: int, alignment: int, offset: int) -> int:
    """Where a tensor's data starts in a GGUF file, as a byte position from the file's start.

    ``header_end``: the byte position just after the header (magic, counts, metadata and the
    last tensor description). The data section starts at the first multiple of
    ``alignment`` (the metadata key ``general.alignment``, 32 when absent) that is at or after
    ``header_end``; the writer fills the gap with zeros. ``offset``: the tensor's offset as
    its description states it, counted from the start of the data section. Returns an int.

    Examples: ``tensor_data_offset(1000, 32, 0) == 1024``; ``tensor_data_offset(1024, 32,
    64) == 1088`` (already aligned: no gap); ``tensor_data_offset(70, 64, 128) == 256``.

    Hint: round up to a multiple, then add.
    """
    raise NotImplementedError


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    """The ``dynamic_axes`` of GPT-2's ONNX export with its KV cache, for a model of ``num_layers`` blocks.

    ``torch.onnx.export(..., dynamic_axes=...)`` takes, for each input and output name, a dict
    {axis number: axis name} of the axes whose size may change from run to run; every axis
    not named is fixed to its size in the traced example. The graph (the names of Hugging Face
    Optimum's GPT-2 export) has the inputs ``input_ids`` (B, T), ``attention_mask`` (B, P + T),
    ``position_ids`` (B, T) and for each layer N (0-based) ``past_key_values.N.key`` and
    ``past_key_values.N.value`` (B, H, P, D), and the outputs ``logits`` (B, T, V) and
    ``present.N.key``, ``present.N.value`` (B, H, P + T, D). B is the batch, T the new tokens
    of this step, P the tokens already in the cache, H heads, D the head size, V the
    vocabulary.

    Name the axes ``"batch_size"`` (B), ``"sequence_length"`` (T), ``"past_sequence_length"``
    (P) and ``"total_sequence_length"`` (P + T). Sizes that are properties of the model (H, D,
    V) are not dynamic. Return {name: {axis: axis name}} for every input and output, axes as
    ints.

    Example: with ``num_layers=1`` the dict has 8 entries; ``input_ids`` maps to
    ``{0: "batch_size", 1: "sequence_length"}``.

    Hint: go through the shapes above one axis at a time and ask which of B, T, P, P + T it is.
    """
    raise NotImplementedError


def q8_0_dot(weights: bytes, x: torch.Tensor) -> float:
    """Stretch: one row of a Q8_0 weight matrix times an activation vector, as llama.cpp's CPU backend computes it.

    ``weights``: n Q8_0 blocks, 34 * n bytes (one row of K = 32 * n weights); ``x``: a
    float32 tensor (K,). llama.cpp does not turn the weights back into floats: it quantizes
    ``x`` to Q8_0 blocks too (the same rule as ``q8_0_block``, float16 scale included), and
    for each block b multiplies the 32 int8 pairs, adds them up **as integers** (sum_i), and
    scales that integer by the two blocks' scales: sum_b sum_i(b) * d_w(b) * d_x(b), with the
    float16 scales turned into float32. Return that sum as a Python float (to 1e-5 of the sum
    of the terms' sizes: float32 or float64 accumulation both pass).

    Raise ``ValueError`` when ``len(weights)`` is not a multiple of 34 or ``x`` does not hold
    32 numbers per block.

    The result differs from the float dot product of the dequantized weights with ``x``: by
    the rounding of ``x`` to 8 bits, which is what llama.cpp trades for integer arithmetic.

    Hint: your ``q8_0_block`` quantizes each 32 activations; a product of two int8 does not
    fit an int8.
    """
    raise NotImplementedError


def greedy_with_cache(run, sidecar: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      max_new_tokens: int) -> torch.Tensor:
    """Stretch: greedy decoding through an exported GPT-2 graph, its KV cache driven by hand.

    This is the loop a program outside Python (the chapter's Node.js ``generate.mjs``) runs.
    ``run(feeds)`` runs the graph once: ``feeds`` is a dict {input name: numpy array} and it
    returns a dict {output name: numpy array}. ``sidecar`` is the JSON that ``to_onnx`` writes
    beside the graph, as a dict: ``sidecar["config"]`` has ``num_layers``, ``num_heads``,
    ``head_dim``; ``sidecar["past"]["input"]`` / ``["output"]`` are the name patterns of the
    cache (``"past_key_values.{layer}.{kind}"``, ``"present.{layer}.{kind}"``, kind ``key`` or
    ``value``); ``sidecar["eos_token_id"]`` is the end token (or None: never stop early).

    ``input_ids``, ``attention_mask``: (B, T) int64 tensors, prompts padded on the LEFT (mask
    0 = padding). Returns (B, T + new) int64: the prompts and the generated tokens.

    The graph's inputs, all int64 except the cache (float32):

    * ``input_ids`` (B, t): the tokens of this step: the whole prompt at the first step, then
      only the token each row chose last;
    * ``attention_mask`` (B, P + t): 1 for every real token so far (cache and this step);
    * ``position_ids`` (B, t): each token's position counts only the real tokens before it
      (a left pad does not move the positions); a padding position is given 0;
    * the cache, (B, H, P, D) per layer and kind: empty (P = 0) at the first step, then the
      previous step's ``present`` outputs.

    Each step picks, per row, the token with the highest logit at the last position (the
    first one on a tie). With an end token: a row that has produced it keeps producing it,
    and decoding stops early once every row has. At most ``max_new_tokens`` new tokens.

    Hint: keep the ids and the mask growing by one column per step; the positions follow
    from the mask.
    """
    raise NotImplementedError
