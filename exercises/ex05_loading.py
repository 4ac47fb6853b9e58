"""Chapter 05 exercises: from a checkpoint file on disk to the names and shapes of a model.

Loading a published model is bookkeeping done exactly: read the file's table of contents
(a safetensors header), know how many bytes each tensor takes, map the file's key names to
the model's (old ``gamma``/``beta`` names, a ``bert.``/``roberta.`` prefix, buffers that are
not parameters), report every missing, unexpected and wrongly shaped key at once, and
notice tensors that are stored twice under two names (tied weights).

Plain Python plus ``json``, ``math``, ``struct`` and ``torch``. Not ``course_lib.checkpoint``
(or any other ``course_lib`` module): it is the answer key, and a file that imports it
scores 0. The readers of the ``safetensors`` library (``safe_open``, ``load``, ...) and
``huggingface_hub``'s shard planner are switched off while your code runs: here you write
them. Functions later in this file may call the ones you wrote earlier (``normalize_keys``
can use ``rename_legacy_key``, ``read_safetensors_tensor`` your header reader).

The last two functions are **stretch exercises**: they go past what the notebook shows
(planning a sharded checkpoint's files and index, and decoding a tensor from raw bytes).

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/05_loading.ipynb``: ``check("ex05.read_safetensors_header")``
  (one cell per exercise) — grading runs in a fresh process, so save this file and run the cell
  again;
* in a terminal: ``python -m course_lib.grade ex05`` (all) or ``python -m course_lib.grade
  ex05.read_safetensors_header`` (one).

The checks use random key names, random shapes and dtypes, files written by the
``safetensors`` library (and all-MiniLM-L6-v2's real ``model.safetensors``), and compare
with ``course_lib.checkpoint``, ``torch`` and ``safetensors`` themselves. When a check
fails, the notebook's ``check()`` shows a hint; run it again for the next one.
"""

from __future__ import annotations

import json
import math
import struct  # noqa: F401 - one way to read the header's length

import torch


def read_safetensors_header(data: bytes) -> dict[str, tuple[str, list[int], tuple[int, int]]]:
    """Parse the table of contents of a ``.safetensors`` file.

    ``data``: the whole file's bytes. The format::

        bytes 0 .. 7       N, the header's length: an unsigned 64-bit LITTLE-endian integer
        bytes 8 .. 8+N     the header: UTF-8 JSON (maybe padded with spaces at its end), e.g.
                           {"__metadata__": {"format": "pt"},
                            "b": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
                            "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [16, 40]}}
        bytes 8+N ..       the tensors' raw bytes; data_offsets [start, end) count from
                           here (from byte 8 + N of the file), not from the file's start

    ``"__metadata__"`` (optional) holds free-form strings, not a tensor: leave it out.
    Returns ``{name: (dtype, shape, (start, end))}`` with the dtype string as in the file
    (``"F32"``, ``"BF16"``, ``"I64"`` ...), the shape as a list of ints and the offsets as a
    pair of ints. For the example: ``{"b": ("I64", [2], (0, 16)), "w": ("F32", [2, 3], (16, 40))}``.

    This is all a loader needs to find one tensor without reading the others (which is how
    ``safe_open`` memory-maps a file), and reading it runs no code, unlike a pickle.

    Hint: ``int.from_bytes`` (or ``struct.unpack``) reads an integer from bytes in the byte
    order you name; ``json.loads`` accepts bytes.
    """
    raise NotImplementedError


def tensor_nbytes(shape: list[int], dtype: str) -> int:
    """How many bytes a tensor of ``shape`` and safetensors ``dtype`` takes on disk (and in memory).

    ``dtype`` is one of ``"F64"``, ``"F32"``, ``"F16"``, ``"BF16"``, ``"I64"``, ``"I32"``,
    ``"I16"``, ``"I8"``, ``"U8"``, ``"BOOL"``: the letter says float / signed int / unsigned
    int, the number the bits per element; ``BOOL`` takes one byte per element.
    ``shape`` is a list of ints; ``[]`` is a scalar (one element); a 0 anywhere means no
    elements at all.

    Examples: ``tensor_nbytes([30522, 384], "F32") == 46_881_792`` (all-MiniLM-L6-v2's word
    embeddings: 44.7 MiB); ``tensor_nbytes([30522, 384], "BF16") == 23_440_896``;
    ``tensor_nbytes([], "I64") == 8``.
    In a file, ``end - start`` of every tensor's ``data_offsets`` is exactly this.

    Hint: ``math.prod`` multiplies the numbers of a list (and gives 1 for an empty one).
    """
    raise NotImplementedError


def rename_legacy_key(key: str) -> str:
    """Today's name for a key from an old (TensorFlow-era) checkpoint.

    Early BERT checkpoints called a LayerNorm's parameters ``gamma`` and ``beta``; PyTorch
    calls them ``weight`` and ``bias``. Rename the *last* dot-separated component only, and
    only when it is exactly ``gamma`` or ``beta``; everything else is returned unchanged.

    Examples::

        "bert.embeddings.LayerNorm.gamma"   -> "bert.embeddings.LayerNorm.weight"
        "encoder.layer.0.output.LayerNorm.beta" -> "encoder.layer.0.output.LayerNorm.bias"
        "layer.gamma.weight"                -> unchanged (gamma is not the last component)
        "head.gamma_scale"                  -> unchanged (not exactly gamma)

    Hint: ``key.rpartition(".")`` splits off the last component:
    ``"a.b.gamma".rpartition(".") == ("a.b", ".", "gamma")``.
    """
    raise NotImplementedError


def normalize_keys(keys: list[str], prefix: str) -> dict[str, str]:
    """Map a checkpoint's keys to the names of a bare model's parameters.

    ``keys``: the tensor names in a checkpoint file; ``prefix``: the model's base name
    (``"bert"``, ``"roberta"``, ``"transformer"`` for GPT-2). For each key, in this order:

    1. rename a legacy ``gamma``/``beta`` (your ``rename_legacy_key``);
    2. drop it if it is a buffer, not a parameter: the renamed key *equals* or *ends with
       "." +* one of ``embeddings.position_ids``, ``embeddings.token_type_ids``,
       ``attn.bias``, ``attn.masked_bias`` (GPT-2's causal mask; careful: ``c_attn.bias``
       is a real parameter, and so is ``attention.self.query.bias``);
    3. remove ``prefix + "."`` from the start, when the key starts with it (once).

    Returns ``{checkpoint key: model key}`` for every key that is kept.

    Example with ``prefix="bert"``::

        ["bert.embeddings.LayerNorm.gamma", "bert.embeddings.position_ids",
         "cls.predictions.bias", "bertology.weight"]
        -> {"bert.embeddings.LayerNorm.gamma": "embeddings.LayerNorm.weight",
            "cls.predictions.bias": "cls.predictions.bias",
            "bertology.weight": "bertology.weight"}

    Hint: look for the prefix *with its dot*, at the start only, and slice it off. Beware
    ``str.lstrip("bert.")``: it strips *characters* from a set, not a prefix; and
    ``str.replace`` also hits the middle of a key.
    """
    raise NotImplementedError


def tied_groups(state_dict: dict[str, torch.Tensor]) -> list[list[str]]:
    """Which keys of a state dict are the *same* tensor (tied weights), not just equal values.

    A masked-LM's decoder weight *is* its word embedding matrix (``lm_head.decoder.weight``
    and ``roberta.embeddings.word_embeddings.weight``): ``model.state_dict()`` lists it under
    both names. safetensors refuses to save such shared memory twice, so a saver keeps one
    name per group. Two entries are the same tensor when they view the same memory in the
    same way: the same storage (``t.untyped_storage().data_ptr()``), the same
    ``t.storage_offset()``, the same ``t.shape`` and the same ``t.stride()``. A slice
    (``w[1:]``), a row (``w[0]``) or a transpose (``w.t()``) of a tensor shares its memory
    but is not the same tensor; two tensors with equal values in different memory are not
    either; and tensors with no elements are never tied to anything.

    Returns the groups of two or more keys that are the same tensor: each group sorted,
    the list of groups sorted (by first key). Keys that are tied to nothing are not listed.

    Example: for ``w = torch.randn(4, 3)`` and
    ``{"emb": w, "dec": w.detach(), "row": w[0], "copy": w.clone(), "b": torch.zeros(3)}``
    the result is ``[["dec", "emb"]]`` (``w.detach()`` is a new Python object over the same
    memory, exactly what ``state_dict()`` returns).

    Hint: one pass over the state dict, collecting keys in a dict indexed by *how the tensor
    sits in memory*; ``id(t)`` does not work (see the example).
    """
    raise NotImplementedError


def state_dict_diff(model_shapes: dict[str, tuple[int, ...]],
                    checkpoint_shapes: dict[str, tuple[int, ...]]) -> dict[str, list]:
    """The report strict loading makes: every problem at once, not just the first one.

    ``model_shapes``: ``{parameter name: shape}`` of the model; ``checkpoint_shapes``:
    ``{key: shape}`` of the checkpoint, keys already normalized (``normalize_keys``).
    Returns a dict with three lists, each sorted by key:

    - ``"missing"``: keys the model has and the checkpoint lacks (they would stay random);
    - ``"unexpected"``: keys the checkpoint has and the model lacks;
    - ``"mismatched"``: ``(key, model_shape, checkpoint_shape)`` for keys in both whose
      shapes differ (shapes as tuples). Same number of elements is not enough:
      (768, 3072) and (3072, 768) differ.

    Example::

        state_dict_diff({"a.weight": (4, 2), "b.weight": (3,), "c.bias": (2,)},
                        {"a.weight": (2, 4), "c.bias": (2,), "d.bias": (5,)})
        == {"missing": ["b.weight"], "unexpected": ["d.bias"],
            "mismatched": [("a.weight", (4, 2), (2, 4))]}

    Hint: Python's sets do differences and intersections; a shape may come as a list or a
    ``torch.Size``, so compare tuples.
    """
    raise NotImplementedError



def shard_index(state_dict: dict[str, torch.Tensor], max_shard_size: int | str) -> dict:
    """Stretch: plan a sharded checkpoint the way ``save_pretrained(max_shard_size=...)`` does.

    Big models are saved in several files (shards) of at most ``max_shard_size`` bytes each,
    plus ``model.safetensors.index.json``, whose ``weight_map`` tells a loader which file
    holds which tensor. Return that index's content::

        {"metadata": {"total_size": <bytes of all the tensors>},
         "weight_map": {tensor name: file name, ...}}

    (``transformers`` also writes ``"total_parameters"`` into the metadata; leave it out.)

    ``state_dict``: ``{name: tensor}``; every tensor owns its memory (tied copies were
    dropped first) and takes ``tensor.nbytes`` bytes. ``max_shard_size``: an int (bytes) or a
    string like ``"5GB"``, ``"200MB"``, ``"1.5KB"``: a number and one of the units KB, MB, GB,
    TB (upper or lower case), which are powers of **1000**, as for disks (``"2KB"`` is 2000).

    The rules (``huggingface_hub.split_torch_state_dict_into_shards``, which ``transformers``
    calls), in the state dict's order, with no reordering to fill shards better:

    1. a tensor bigger than the limit becomes a finished shard of its own, right away; the
       shard being filled stays open, and the next tensors go on into it;
    2. otherwise, when adding the tensor would make the current shard *bigger* than the limit
       (exactly the limit is fine), the current shard is finished and a new one started;
    3. the tensor joins the current shard; at the end, the current shard (if not empty) is
       the last one.

    With N shards, the i-th one finished (counting from 1) is named
    ``f"model-{i:05d}-of-{N:05d}.safetensors"``; a single shard is named
    ``"model.safetensors"`` (and then ``save_pretrained`` writes no index at all).

    Example with float32 tensors ``a`` (100 elements: 400 bytes), ``b`` (50: 200 bytes),
    ``c`` (300: 1200 bytes), ``d`` (100: 400 bytes) and ``max_shard_size="0.6KB"`` (600 bytes):
    ``a`` and ``b`` fill the current shard to exactly 600; ``c`` is too big for any shard and
    is finished first, on its own, so it is number 1; ``d`` does not fit beside ``a`` and
    ``b``, which finishes their shard (number 2); ``d`` is in the last one::

        {"metadata": {"total_size": 2200},
         "weight_map": {"c": "model-00001-of-00003.safetensors", "a": "model-00002-of-00003.safetensors",
                        "b": "model-00002-of-00003.safetensors", "d": "model-00003-of-00003.safetensors"}}

    Hint: keep a list of finished shards (each a list of names) and the one being filled
    with its size so far; name the files at the end, once you know how many there are.
    """
    raise NotImplementedError


def read_safetensors_tensor(data: bytes, name: str) -> torch.Tensor:
    """Stretch: decode tensor ``name`` from a safetensors file's bytes, in the dtype it is stored in.

    ``data``: the whole file (the format is in ``read_safetensors_header``'s docstring).
    The tensor's bytes are its elements one after the other in row-major (C) order, each
    **little-endian**, from byte ``8 + N + start`` to ``8 + N + end`` of the file (N the
    header's length). The dtype names map to torch's:

    ``F64`` float64, ``F32`` float32, ``F16`` float16, ``BF16`` bfloat16, ``I64`` int64,
    ``I32`` int32, ``I16`` int16, ``I8`` int8, ``U8`` uint8, ``BOOL`` bool (one byte each).

    bfloat16 is the top 16 bits of a float32 (8 exponent bits, 7 mantissa bits), *not*
    float16 (5 and 10): the same two bytes mean different numbers. numpy has no bfloat16;
    torch has. Returns a tensor of the stored dtype and shape: a scalar for shape ``[]``,
    an empty tensor when a dimension is 0. It may be a copy (``safe_open`` maps the file
    instead, which is what makes loading a 500 MB model take milliseconds).

    Example: a file saved from ``{"w": torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)}``
    stores ``w``'s 4 bytes ``80 3f 00 40`` (1.0 is 0x3f80, little-endian), and
    ``read_safetensors_tensor(data, "w")`` returns ``tensor([[1., 2.]], dtype=torch.bfloat16)``.

    Hint: your header reader gives the dtype, shape and offsets; ``torch.frombuffer`` makes a
    1-D tensor of any torch dtype from a buffer of bytes.
    """
    raise NotImplementedError
