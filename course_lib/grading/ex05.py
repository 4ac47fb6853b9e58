"""Checks for chapter 05's exercises (``exercises/ex05_loading.py``).

Inputs are random: key names built from the parts real checkpoints use (``bert.``,
``gamma``, ``position_ids``, GPT-2's ``attn.bias`` beside ``c_attn.bias`` ...), shapes,
dtypes, safetensors files written by the ``safetensors`` library (and all-MiniLM-L6-v2's
real ``model.safetensors``), state dicts with shared and merely equal tensors. Expected
answers come from ``course_lib.checkpoint`` (``rename_legacy_key``, ``is_ignored_buffer``,
``match_keys`` on a model built from the shapes), from ``safetensors``/``torch`` themselves,
or, for tied tensors, from how the inputs were built. ``course_lib.checkpoint`` is switched
off while the learner's code runs, and so are the readers of ``safetensors`` and
``huggingface_hub``'s shard planner (ready-made versions of what the exercises ask for).

Two stretch exercises go past the chapter: planning the shards and the index file of a
sharded checkpoint (``save_pretrained(max_shard_size=...)``), and decoding one tensor's values
straight from a safetensors file's bytes.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from torch import nn

from course_lib import checkpoint
from course_lib.grading.registry import GradeError, chapter_rules, exercise, expect_equal, forbid

ANSWER_KEY = tuple(f"course_lib.checkpoint.{name}" for name in (
    "rename_legacy_key", "is_ignored_buffer", "match_keys", "convert_checkpoint", "save_checkpoint",
    "read_safetensors_header", "tensor_nbytes", "tied_groups", "tensor_identity", "shard_index",
    "read_safetensors_tensor", "CheckpointReader"))
C = "course_lib.checkpoint."

# Ready-made readers of the format and the Hub's shard planner: switched off in the learner's process.
SHORTCUTS = (
    "safetensors.safe_open", "safetensors.deserialize", "safetensors._safetensors_rust.safe_open",
    "safetensors._safetensors_rust.deserialize", "safetensors.torch.load", "safetensors.torch.load_file",
    "safetensors.torch.safe_open", "safetensors.torch.deserialize", "safetensors.numpy.load",
    "safetensors.numpy.load_file", "safetensors.numpy.safe_open", "safetensors.numpy.deserialize",
    "huggingface_hub.split_torch_state_dict_into_shards", "huggingface_hub.split_state_dict_into_shards_factory",
    "huggingface_hub.serialization.split_torch_state_dict_into_shards",
    "huggingface_hub.serialization.split_state_dict_into_shards_factory",
    "huggingface_hub.serialization._torch.split_torch_state_dict_into_shards",
    "huggingface_hub.serialization._torch.split_state_dict_into_shards_factory",
    "huggingface_hub.serialization._base.split_state_dict_into_shards_factory",
)

chapter_rules("ex05", shortcuts=SHORTCUTS)

# safetensors' dtype names; the table is the format's (see safetensors' documentation).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def call(fn, *args, what: str):
    with forbid(*ANSWER_KEY, *SHORTCUTS, instead="; course_lib.checkpoint (and the safetensors library's readers) "
                "are the answer key"):
        return fn(*args)


def pick(rng: np.random.Generator, items):
    return items[int(rng.integers(0, len(items)))]


def _diff_text(got: dict, expected: dict, limit: int = 3) -> str:
    """What differs between two dicts, in a few words."""
    parts = []
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    if missing:
        parts.append(f"missing keys {missing[:limit]}" + (" ..." if len(missing) > limit else ""))
    if extra:
        parts.append(f"keys that should not be there {extra[:limit]}" + (" ..." if len(extra) > limit else ""))
    for k in wrong[:limit]:
        parts.append(f"[{k!r}] should be {expected[k]!r}, got {got[k]!r}")
    return "; ".join(parts)


# ------------------------------------------------------------------------- safetensors

def _random_tensor(rng: np.random.Generator, dtype: torch.dtype) -> torch.Tensor:
    ndim = int(rng.integers(0, 4))
    shape = tuple(int(n) for n in rng.integers(0 if rng.random() < 0.1 else 1, 6, size=ndim))
    if dtype == torch.bool:
        return torch.from_numpy(np.asarray(rng.random(shape) < 0.5))
    if dtype.is_floating_point:
        return torch.from_numpy(np.asarray(rng.standard_normal(shape))).to(dtype)
    info = torch.iinfo(dtype)
    values = rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, size=shape)
    return torch.from_numpy(np.asarray(values)).to(dtype)


def _raw_bytes(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _nbytes(dtype: str, shape: list[int]) -> int:
    return torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype], device="meta").nbytes


def _check_header(got, data: bytes, expected: dict[str, tuple[str, list[int]]], tensor_bytes, what: str,
                  verify=None) -> None:
    """``expected``: name -> (dtype, shape); ``tensor_bytes(name)``: the raw bytes the offsets of ``name`` must
    point at, checked for the names in ``verify`` (default: all)."""
    if not isinstance(got, dict):
        raise GradeError(f"{what}: expected a dict {{name: (dtype, shape, (start, end))}}, got {type(got).__name__}")
    if set(got) != set(expected):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise GradeError(f"{what}: expected the tensors {sorted(expected)[:12]}"
                         + (" ..." if len(expected) > 12 else "") + "; "
                         + (f"yours has {extra[:5]} too" if extra else "") + (", " if extra and missing else "")
                         + (f"yours lacks {missing[:5]}" if missing else "")
                         + (" ('__metadata__' is not a tensor)" if "__metadata__" in extra else ""))
    total = sum(_nbytes(dtype, shape) for dtype, shape in expected.values())
    data_start = len(data) - total  # the data section is the file's last `total` bytes
    ranges = []
    for name, (dtype, shape) in expected.items():
        try:
            got_dtype, got_shape, (start, end) = got[name]
            got_shape = [int(n) for n in got_shape]
        except (TypeError, ValueError):
            raise GradeError(f"{what}[{name!r}]: expected (dtype, shape, (start, end)), got {got[name]!r}") from None
        expect_equal(got_dtype, dtype, f"{what}[{name!r}] dtype")
        expect_equal(got_shape, list(shape), f"{what}[{name!r}] shape")
        size = _nbytes(dtype, shape)
        if not (isinstance(start, (int, np.integer)) and isinstance(end, (int, np.integer))):
            raise GradeError(f"{what}[{name!r}]: offsets must be ints, got {(start, end)!r}")
        if end - start != size or not 0 <= start <= end <= total:
            raise GradeError(f"{what}[{name!r}]: offsets {(start, end)} do not fit: this tensor has {size} "
                             f"bytes, and the data section (after the header) has {total}; data_offsets count "
                             f"from the end of the header")
        if (verify is None or name in verify) and data[data_start + start:data_start + end] != tensor_bytes(name):
            raise GradeError(f"{what}[{name!r}]: the bytes at offsets {(start, end)} (counted from the end of the "
                             f"header) are not this tensor's")
        ranges.append((start, end, name))
    ranges.sort()
    for (_, end_a, a), (start_b, _, b) in zip(ranges, ranges[1:]):
        if start_b < end_a:
            raise GradeError(f"{what}: the byte ranges of {a!r} and {b!r} overlap")


@functools.lru_cache(maxsize=1)
def _minilm_file() -> tuple[bytes, dict[str, tuple[str, list[int]]]]:
    """all-MiniLM-L6-v2's model.safetensors: its bytes, and {name: (dtype, shape)} as safetensors reads them."""
    from safetensors import safe_open

    from course_lib.assets import asset_path

    path = asset_path("all-MiniLM-L6-v2") / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}
    return path.read_bytes(), meta


def _minilm_tensor_bytes(name: str) -> bytes:
    from safetensors import safe_open

    from course_lib.assets import asset_path

    with safe_open(str(asset_path("all-MiniLM-L6-v2") / "model.safetensors"), framework="pt") as f:
        return _raw_bytes(f.get_tensor(name))


@exercise("ex05.read_safetensors_header", points=3, reference=C + "read_safetensors_header", hints=(
    "The file starts with a fixed-size number saying how long the JSON header is: read that number, then decode "
    "exactly that many bytes after it as JSON.",
    "The length takes 8 bytes, unsigned and little-endian (int.from_bytes with the right byte order, or struct's "
    "'<Q'); the JSON starts at byte 8, and json.loads accepts bytes.",
    "Leave out the '__metadata__' entry; keep data_offsets as the file gives them (they count from the end of the "
    "header) and return them as a (start, end) tuple, the shape as a list."))
def _(fn, rng):
    import safetensors.torch

    names = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight", "pooler.dense.bias",
             "lm_head.bias", "h.0.attn.c_attn.weight", "wte.weight", "ln_f.bias", "step", "mask", "scale"]
    dtype_name = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    for case in range(10):
        chosen = [names[i] for i in rng.permutation(len(names))[:int(rng.integers(1, 7))]]
        tensors = {n: _random_tensor(rng, SAFETENSORS_DTYPES[pick(rng, list(SAFETENSORS_DTYPES))]) for n in chosen}
        metadata = [{"format": "pt"}, None, {"format": "pt", "source": "course"}][case % 3]
        data = safetensors.torch.save(tensors, metadata=metadata)
        expected = {n: (dtype_name[t.dtype], list(t.shape)) for n, t in tensors.items()}
        shown = ", ".join(f"{n}: {d} {s}" for n, (d, s) in expected.items())
        what = f"read_safetensors_header(a file with {{{shown}}}, metadata {metadata})"
        _check_header(call(fn, data, what=what), data, expected, lambda n: _raw_bytes(tensors[n]), what)
    data, meta = _minilm_file()
    names = sorted(meta)
    verify = {names[i] for i in rng.permutation(len(names))[:8]}
    what = "read_safetensors_header(all-MiniLM-L6-v2's model.safetensors)"
    _check_header(call(fn, data, what=what), data, meta, _minilm_tensor_bytes, what, verify)


@exercise("ex05.tensor_nbytes", points=1, reference=C + "tensor_nbytes", hints=(
    "The number of elements times the bytes of one element. The dtype's name gives the bits per element (F32: 32 "
    "bits), except BOOL, which takes a whole byte.",
    "math.prod(shape) counts the elements: 1 for a scalar ([]), 0 when any dimension is 0. A small dict from "
    "dtype name to bytes per element does the rest.",
    "Bits are not bytes: 32 bits are 4 bytes, BF16 and F16 take 2, I8, U8 and BOOL 1. Keep the result an int "
    "(// if you divide)."))
def _(fn, rng):
    cases = [([30522, 384], "F32"), ([30522, 384], "BF16"), ([], "I64"), ([3, 0, 2], "F16"), ([7], "BOOL")]
    for _ in range(40):
        shape = [int(n) for n in rng.integers(0 if rng.random() < 0.1 else 1, 50, size=int(rng.integers(0, 4)))]
        cases.append((shape, pick(rng, list(SAFETENSORS_DTYPES))))
    for shape, dtype in cases:
        what = f"tensor_nbytes({shape}, {dtype!r})"
        got = call(fn, list(shape), dtype, what=what)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            raise GradeError(f"{what}: a number of bytes is an int, got {got!r} ({type(got).__name__}); "
                             f"use // for integer division")
        expect_equal(int(got), torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype], device="meta").nbytes, what)


# ------------------------------------------------------------------------- key names

LEGACY_MODULES = ["bert", "roberta", "encoder", "layer", "0", "3", "11", "attention", "output", "LayerNorm",
                  "embeddings", "gamma", "beta", "ln_f", "gamma_proj", "betas", "omega", "alpha_beta"]
LEGACY_LAST = ["gamma", "beta", "gamma", "beta", "weight", "bias", "gamma_scale", "betas", "my_gamma", "beta1",
               "gammabeta", "Gamma", "xbeta"]


@exercise("ex05.rename_legacy_key", points=1, reference=C + "rename_legacy_key", hints=(
    "Only the last dot-separated part of a key can be a legacy name, and only when it is exactly 'gamma' (today "
    "'weight') or 'beta' (today 'bias'); everything else comes back unchanged.",
    "str.rpartition('.') splits a key into everything before the last dot, the dot, and the last part; rebuild "
    "the key from those pieces.",
    "Never str.replace on the whole key: 'layer.gamma.weight' and 'head.gamma_scale' stay as they are, and so "
    "does a key without any dot."))
def _(fn, rng):
    cases = ["bert.embeddings.LayerNorm.gamma", "encoder.layer.0.output.LayerNorm.beta", "layer.gamma.weight",
             "head.gamma_scale", "LayerNorm.weight", "a.beta.gamma", "ln.Gamma"]
    for _ in range(40):
        path = [pick(rng, LEGACY_MODULES) for _ in range(int(rng.integers(1, 5)))]
        cases.append(".".join(path + [pick(rng, LEGACY_LAST)]))
    for key in cases:
        what = f"rename_legacy_key({key!r})"
        got = call(fn, key, what=what)
        if not isinstance(got, str):
            raise GradeError(f"{what}: expected a str, got {type(got).__name__}")
        expect_equal(got, checkpoint.rename_legacy_key(key), what)


def _body_keys(prefix: str, layer: int) -> list[str]:
    """Keys of a bare model (no prefix) as published files have them, legacy names and buffers included."""
    if prefix == "transformer":  # GPT-2
        return ["wte.weight", "wpe.weight", f"h.{layer}.ln_1.weight", f"h.{layer}.ln_1.bias",
                f"h.{layer}.attn.bias", f"h.{layer}.attn.masked_bias", f"h.{layer}.attn.c_attn.weight",
                f"h.{layer}.attn.c_attn.bias", f"h.{layer}.attn.c_proj.bias", f"h.{layer}.mlp.c_fc.bias",
                "ln_f.weight", "ln_f.bias"]
    return ["embeddings.word_embeddings.weight", "embeddings.position_ids", "embeddings.token_type_ids",
            "embeddings.LayerNorm.gamma", "embeddings.LayerNorm.beta",
            f"encoder.layer.{layer}.attention.self.query.weight", f"encoder.layer.{layer}.attention.self.query.bias",
            f"encoder.layer.{layer}.attention.self.value.bias",
            f"encoder.layer.{layer}.attention.output.LayerNorm.gamma",
            f"encoder.layer.{layer}.attention.output.LayerNorm.beta",
            f"encoder.layer.{layer}.output.dense.weight", f"encoder.layer.{layer}.output.LayerNorm.weight",
            "pooler.dense.bias"]


def _head_keys(prefix: str) -> list[str]:
    """Keys outside the bare model, some of which merely look prefixed."""
    return ["cls.predictions.bias", "cls.predictions.transform.LayerNorm.gamma", "lm_head.bias",
            "lm_head.layer_norm.beta", f"{prefix}ology.weight", f"{prefix}_head.dense.weight",
            f"cls.{prefix}.weight", "position_ids", "qa_outputs.bias"]


@exercise("ex05.normalize_keys", points=2, reference=(C + "is_ignored_buffer", C + "match_keys"), hints=(
    "Three steps per key, in this order: rename a legacy gamma/beta, drop the key if it is a buffer, then remove "
    "the model's prefix from its start.",
    "A buffer matches when the renamed key equals one of the four names or ends with '.' plus it (so 'c_attn.bias' "
    "is not 'attn.bias'). The prefix counts only with its dot, and only at the very start.",
    "Check startswith(prefix + '.') and slice off that many characters; lstrip removes a set of characters, not a "
    "prefix, and replace also hits the middle of a key. The dict maps checkpoint key to model key."))
def _(fn, rng):
    cases = [(["bert.embeddings.LayerNorm.gamma", "bert.embeddings.position_ids", "cls.predictions.bias",
               "bertology.weight"], "bert"),
             (["transformer.h.0.attn.bias", "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.masked_bias",
               "h.1.attn.c_proj.bias", "lm_head.weight"], "transformer"),
             (["roberta.roberta.pooler.dense.weight", "roberta.encoder.layer.0.attention.self.query.bias",
               "embeddings.token_type_ids", "roberta.embeddings.LayerNorm.beta"], "roberta")]
    for _ in range(20):
        prefix = pick(rng, ["bert", "roberta", "transformer"])
        in_file = pick(rng, [prefix, prefix, prefix, "", pick(rng, ["bert", "roberta", "transformer"])])
        body = _body_keys(prefix, int(rng.integers(0, 12)))
        chosen = [body[i] for i in rng.permutation(len(body))[:int(rng.integers(4, len(body) + 1))]]
        keys = [f"{in_file}.{k}" if in_file else k for k in chosen]
        heads = _head_keys(prefix)
        keys += [heads[i] for i in rng.permutation(len(heads))[:int(rng.integers(0, 4))]]
        cases.append(([keys[i] for i in rng.permutation(len(keys))], prefix))
    for keys, prefix in cases:
        what = f"normalize_keys({keys}, prefix={prefix!r})"
        got = call(fn, list(keys), prefix, what=what)
        if not isinstance(got, dict):
            raise GradeError(f"{what}: expected a dict {{checkpoint key: model key}}, got {type(got).__name__}")
        expected = {}
        for key in keys:
            new = checkpoint.rename_legacy_key(key)
            if not checkpoint.is_ignored_buffer(new):
                expected[key] = new[len(prefix) + 1:] if new.startswith(prefix + ".") else new
        if got != expected:
            raise GradeError(f"{what}: {_diff_text(got, expected)}")


# ------------------------------------------------------------------------- tied weights

TIED_NAMES = ["embeddings.word_embeddings.weight", "lm_head.decoder.weight", "cls.predictions.decoder.weight",
              "encoder.layer.0.attention.self.query.weight", "wte.weight", "lm_head.weight", "pooler.dense.weight",
              "a.weight", "b.weight", "z.weight", "head.bias", "shared.weight", "encoder.embed_tokens.weight",
              "decoder.embed_tokens.weight", "output.weight", "norm.weight"]


RECIPE_TEXT = {"same": "{w}", "detach": "{w}.detach()", "view": "{w}.view({w}.shape)", "slice": "{w}[1:]",
               "row": "{w}[0]", "t": "{w}.t()", "clone": "{w}.clone()", "zeros": "torch.zeros_like({w})",
               "new": "torch.randn(3)", "empty": "torch.empty(0, {w}.shape[1])"}


def _tied_case(rng: np.random.Generator, recipes: list[tuple[int, str]] | None = None):
    """A state dict, and the true groups: entries built from the same (base, view) are the same tensor."""
    n_bases, fixed = int(rng.integers(1, 4)), recipes is not None  # a fixed case's w0 is square (w0.t() has its shape)
    bases = []
    for number in range(n_bases):
        r = int(rng.integers(2, 5))
        c = r if rng.random() < 0.4 or (number == 0 and fixed) else int(rng.integers(2, 5))
        bases.append(torch.from_numpy(rng.standard_normal((r, c)).astype(np.float32)))
    if recipes is None:
        recipes = [(int(rng.integers(0, n_bases)), pick(rng, ["same", "detach", "view", "slice", "row", "t",
                                                              "clone", "zeros", "new"]))
                   for _ in range(int(rng.integers(2, 9)))]
    names = [TIED_NAMES[i] for i in rng.permutation(len(TIED_NAMES))[:len(recipes)]]
    state, truth, parts = {}, {}, []
    for number, (name, (b, recipe)) in enumerate(zip(names, recipes)):
        base = bases[b % n_bases]
        tensor, group = {
            "same": lambda: (base, (b, "full")), "detach": lambda: (base.detach(), (b, "full")),
            "view": lambda: (base.view(base.shape), (b, "full")),
            "slice": lambda: (base[1:], (b, "slice")), "row": lambda: (base[0], (b, "row")),
            "t": lambda: (base.t(), (b, "t")),
            "clone": lambda: (base.clone(), ("alone", number)),
            "zeros": lambda: (torch.zeros(base.shape), ("alone", number)),
            "new": lambda: (torch.from_numpy(rng.standard_normal(3).astype(np.float32)), ("alone", number)),
            "empty": lambda: (torch.empty(0, base.shape[1]), ("alone", number)),
        }[recipe]()
        state[name] = tensor
        truth.setdefault(group, []).append(name)
        parts.append(f"{name!r}: " + RECIPE_TEXT[recipe].format(w=f"w{b % n_bases}"))
    expected = sorted(sorted(g) for g in truth.values() if len(g) > 1)
    shapes = ", ".join(f"w{i} = torch.randn{tuple(w.shape)}" for i, w in enumerate(bases))
    what = f"tied_groups({{{', '.join(parts)}}}) with {shapes}"
    return state, expected, what


@exercise("ex05.tied_groups", points=2, reference=(C + "tensor_identity", C + "tied_groups"), hints=(
    "Two entries are the same tensor when they view the same memory in the same way; equal values are not enough, "
    "and the same Python object is not needed (state_dict() makes new ones).",
    "Describe each tensor by its storage's data_ptr(), its storage_offset(), its shape and its stride(), and group "
    "the keys by that description in a dict.",
    "Skip tensors with no elements, keep only the groups of two or more keys, sort the keys of each group and then "
    "the list of groups."))
def _(fn, rng):
    fixed = [[(0, "same"), (0, "detach"), (0, "clone"), (0, "zeros")],  # equal values are not shared memory
             [(0, "same"), (0, "row"), (0, "slice"), (0, "detach")],  # same memory, other views
             [(0, "same"), (0, "t"), (0, "view"), (0, "empty"), (0, "empty")]]  # a transpose; empty tensors
    cases = [_tied_case(rng, recipes) for recipes in fixed + [None] * 14]
    from course_lib.models import encoder

    for cls in (encoder.RobertaForMaskedLM, encoder.BertForMaskedLM):
        config = encoder.EncoderConfig(vocab_size=int(rng.integers(10, 40)), hidden_size=8, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=16, max_position_embeddings=20)
        model = cls(config)
        expected = sorted(sorted(pair) for pair in model.tied_weights.items())
        cases.append((model.state_dict(), expected, f"tied_groups({cls.__name__}(tiny config).state_dict())"))
    for state, expected, what in cases:
        got = call(fn, dict(state), what=what)
        try:
            got = [list(group) for group in got]
            if not all(isinstance(k, str) for group in got for k in group):
                raise TypeError
        except TypeError:
            raise GradeError(f"{what}: expected a list of lists of keys, got {got!r}") from None
        expect_equal(got, expected, what)
# ------------------------------------------------------------------------- strict report

DIFF_MODULES = ["embeddings", "encoder", "layer", "0", "1", "2", "attention", "output", "dense", "pooler", "head",
                "LayerNorm", "query", "value"]


def _random_shape(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(n) for n in rng.integers(1, 7, size=int(rng.integers(1, 4))))


def _other_shape(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A different shape, often with the same number of elements (a transpose, an extra 1)."""
    options = [shape + (1,), tuple(n + 1 for n in shape)]
    if len(shape) > 1 and shape[::-1] != shape:
        options += [shape[::-1]] * 2
    if len(shape) > 1:
        options.append((int(np.prod(shape)),))
    return pick(rng, options)


def _meta_model(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A module whose parameters have exactly these names and shapes (on the meta device: no memory)."""
    root = nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, nn.Parameter(torch.empty(shape, device="meta")))
    return root


def _diff_case(rng: np.random.Generator):
    universe, size = {}, int(rng.integers(3, 12))  # a dict, not a set: the order must not depend on hashing
    while len(universe) < size:
        depth = int(rng.integers(1, 4))
        universe[".".join([pick(rng, DIFF_MODULES) for _ in range(depth)] + [pick(rng, ["weight", "bias"])])] = None
    model, ckpt = {}, {}
    for key in universe:
        where = float(rng.random())
        shape = _random_shape(rng)
        if where < 0.6:  # in both
            model[key] = shape
            ckpt[key] = _other_shape(rng, shape) if rng.random() < 0.35 else shape
        elif where < 0.8:
            model[key] = shape
        else:
            ckpt[key] = shape
    return model, ckpt


def _valid_tree(keys) -> bool:
    """No key is another key's module path (``a.weight`` beside ``a.weight.bias``): a model can have them all."""
    modules = {".".join(k.split(".")[:i]) for k in keys for i in range(1, len(k.split(".")))}
    return not (set(keys) & modules)


def _shuffled(rng: np.random.Generator, d: dict) -> dict:
    keys = list(d)
    return {keys[i]: d[keys[i]] for i in rng.permutation(len(keys))}


def _as_report(got, what: str) -> dict[str, list]:
    if not isinstance(got, dict) or set(got) != {"missing", "unexpected", "mismatched"}:
        shown = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradeError(f"{what}: expected a dict with the keys 'missing', 'unexpected' and 'mismatched', got {shown}")
    try:
        report = {"missing": list(got["missing"]), "unexpected": list(got["unexpected"]), "mismatched": []}
        for entry in got["mismatched"]:
            key, model_shape, checkpoint_shape = entry
            report["mismatched"].append((key, tuple(model_shape), tuple(checkpoint_shape)))
    except (TypeError, ValueError):
        raise GradeError(f"{what}: 'mismatched' must be a list of (key, model_shape, checkpoint_shape) triples, "
                         f"got {got['mismatched']!r}") from None
    return report


@exercise("ex05.state_dict_diff", points=2, reference=C + "match_keys", hints=(
    "Compare the two sets of keys: what only the model has is missing, what only the checkpoint has is unexpected, "
    "and the keys both have must also agree on their shapes.",
    "Set difference and intersection of the two dicts' keys; compare shapes as tuples: (768, 3072) is not "
    "(3072, 768), even with the same number of elements.",
    "Each list sorted by key; a mismatched entry is (key, model shape, checkpoint shape) in that order, and a "
    "mismatched key is neither missing nor unexpected."))
def _(fn, rng):
    cases = [({"a.weight": (4, 2), "b.weight": (3,), "c.bias": (2,)},  # the docstring's example
              {"a.weight": (2, 4), "c.bias": (2,), "d.bias": (5,)}),
             ({}, {}), ({"x.weight": (2, 3)}, {"x.weight": (2, 3)})]
    while len(cases) < 25:
        model, ckpt = _diff_case(rng)
        if _valid_tree(set(model) | set(ckpt)):
            cases.append((_shuffled(rng, model), _shuffled(rng, ckpt)))
    for model, ckpt in cases:
        what = f"state_dict_diff(model_shapes={model}, checkpoint_shapes={ckpt})"
        got = _as_report(call(fn, dict(model), dict(ckpt), what=what), what)
        report = checkpoint.match_keys(_meta_model(model), ckpt)
        expected = {"missing": sorted(report.missing), "unexpected": sorted(report.unexpected),
                    "mismatched": sorted((ours, tuple(a), tuple(b)) for ours, _, a, b in report.mismatched)}
        for field in ("missing", "unexpected", "mismatched"):
            expect_equal(got[field], expected[field], f"{what}[{field!r}]")




# ------------------------------------------------------------------------- stretch: shards and their index

SHARD_NAMES = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
               "embeddings.LayerNorm.weight",
               "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.query.bias",
               "encoder.layer.0.output.dense.weight", "encoder.layer.1.attention.self.key.weight",
               "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.output.LayerNorm.bias",
               "pooler.dense.weight", "lm_head.bias", "wte.weight", "h.0.attn.c_attn.weight", "ln_f.bias"]


def _plan(state: dict, limit: int, *, strict: bool = True, oversized_closes: bool = False, first: int = 1,
          single_numbered: bool = False) -> dict:
    """A shard plan with one typical mistake switched on (the defaults are save_pretrained's rules)."""
    shards, current, size_now, total = [], [], 0, 0
    for key, tensor in state.items():
        size = tensor.nbytes
        total += size
        if size > limit:
            if oversized_closes and current:
                shards.append(current)
                current, size_now = [], 0
            shards.append([key])
            continue
        if (size_now + size > limit) if strict else (size_now + size >= limit and current):
            shards.append(current)
            current, size_now = [], 0
        current.append(key)
        size_now += size
    if current:
        shards.append(current)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 and not single_numbered else \
        [f"model-{i + first:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def _shard_case(rng: np.random.Generator, case: int):
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8]
    names = [SHARD_NAMES[i] for i in rng.permutation(len(SHARD_NAMES))[:int(rng.integers(2, 10))]]
    state = {}
    for name in names:
        shape = tuple(int(n) for n in rng.integers(1, 12, size=int(rng.integers(1, 3))))
        state[name] = torch.zeros(shape, dtype=pick(rng, dtypes))
    sizes = [t.nbytes for t in state.values()]
    if case == 0:  # the limit is exactly what the first tensors fill: "over the limit" is strictly greater
        limit = sizes[0] + sizes[1] if len(sizes) > 2 else sum(sizes)
    elif case == 1:  # one tensor bigger than the limit, in the middle
        limit = max(8, int(np.median(sizes)))
        big = names[len(names) // 2]
        state[big] = torch.zeros(limit // 4 + 3, dtype=torch.float32)
    elif case == 2:  # everything fits: one file
        limit = sum(sizes) + int(rng.integers(0, 50))
    else:
        limit = int(rng.integers(max(sizes) // 2 + 1, max(sum(sizes) // 2, max(sizes) + 2)))
    spelled: int | str = limit
    if case in (3, 4, 5):  # as save_pretrained's max_shard_size is usually written: decimal units
        number = pick(rng, [0.25, 0.5, 1]) if case == 5 else pick(rng, [0.5, 1, 1.5, 2])
        unit = ["KB", "kb", "MB"][case - 3]
        limit, spelled = int(number * (10**6 if case == 5 else 1000)), f"{number:g}{unit}"
        # the first two tensors take limit + 8 bytes: two shards with 1000, one with 1024
        first, second = limit // 8, (limit - 4 * (limit // 8)) // 4 + 2  # float32 elements
        keys = list(state)
        state = {keys[0]: torch.zeros(first), keys[1]: torch.zeros(second),
                 **{k: torch.zeros(int(rng.integers(1, limit // 16 + 2))) for k in keys[2:]}}
    return state, spelled, limit


@exercise("ex05.shard_index", points=3, stretch=True, reference=C + "shard_index", hints=(
    "Walk the tensors in the state dict's order, filling one shard until the next tensor would take it over the "
    "limit; then start a new shard. total_size counts the bytes of every tensor.",
    "A tensor bigger than the limit becomes a finished shard of its own at once, so it can come before the shard "
    "still being filled, which stays open. Sizes written like '2KB' use powers of 1000 (KB, MB, GB, TB).",
    "Name the shards only when you know how many there are: model-00001-of-00003.safetensors (counting from 1, "
    "5 digits), or model.safetensors when there is just one. 'Over the limit' means strictly greater."))
def _(fn, rng):
    for case in range(12):
        state, spelled, limit = _shard_case(rng, case % 6 if case < 6 else int(rng.integers(0, 6)))
        shown = ", ".join(f"{k!r}: {t.dtype} {tuple(t.shape)} ({t.nbytes} B)" for k, t in state.items())
        what = f"shard_index({{{shown}}}, max_shard_size={spelled!r})"
        got = call(fn, dict(state), spelled, what=what)
        expected = checkpoint.shard_index(state, spelled)
        if not isinstance(got, dict) or set(got) != {"metadata", "weight_map"}:
            shown_keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise GradeError(f"{what}: expected the index file's content, a dict with the keys 'metadata' and "
                             f"'weight_map'; got {shown_keys}")
        if got == expected:
            continue
        if not isinstance(got["weight_map"], dict):
            raise GradeError(f"{what}: 'weight_map' must be a dict {{tensor name: file name}}, got "
                             f"{type(got['weight_map']).__name__}")
        if got["metadata"] != expected["metadata"]:
            raise GradeError(f"{what}: 'metadata' should be {expected['metadata']!r} (the bytes of all the tensors), "
                             f"got {got['metadata']!r}")
        mistakes = {
            "a shard that the next tensor fills exactly is not over the limit: start a new shard only when the "
            "size would become strictly greater": _plan(state, limit, strict=False),
            "a tensor bigger than the limit gets a shard of its own, but the shard being filled stays open: the "
            "tensors after it still go into that one": _plan(state, limit, oversized_closes=True),
            "shard numbers count from 1: model-00001-of-0000N.safetensors": _plan(state, limit, first=0),
            "with a single shard the file is just model.safetensors": _plan(state, limit, single_numbered=True),
        }
        if isinstance(spelled, str):
            binary = int(float(spelled[:-2]) * {"KB": 2**10, "MB": 2**20}[spelled[-2:].upper()])
            mistakes[f"{spelled!r} is {limit} bytes: save_pretrained's units are powers of 1000 (disk sizes), "
                     f"not of 1024"] = _plan(state, binary)
        for message, wrong in mistakes.items():
            if got == wrong and wrong != expected:
                raise GradeError(f"{what}: {message}")
        if isinstance(got["weight_map"], dict) and got["weight_map"] and \
                set(got["weight_map"]) <= set(expected["weight_map"].values()):
            raise GradeError(f"{what}: 'weight_map' maps each tensor name to its file name, not the other way round")
        raise GradeError(f"{what}: 'weight_map': {_diff_text(got['weight_map'], expected['weight_map'])}")


# ------------------------------------------------------------------------- stretch: one tensor's values

def _decode(data: bytes, name: str, *, absolute=False, big_endian=False) -> torch.Tensor | None:
    """One tensor decoded with a typical mistake, or None if that mistake cannot decode it at all."""
    n = int.from_bytes(data[:8], "little")
    entry = json.loads(data[8:8 + n])[name]
    start, end = entry["data_offsets"]
    if not absolute:
        start, end = start + 8 + n, end + 8 + n
    dtype = SAFETENSORS_DTYPES[entry["dtype"]]
    raw = bytearray(data[start:end])
    if not raw or len(raw) != _nbytes(entry["dtype"], entry["shape"]):
        return None
    flat = torch.frombuffer(raw, dtype=dtype)
    if big_endian and flat.element_size() > 1:
        same_size = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
        flat = torch.from_numpy(flat.view(same_size).numpy().byteswap()).view(dtype)
    return flat.reshape(entry["shape"])


@exercise("ex05.read_safetensors_tensor", points=3, stretch=True, reference=C + "read_safetensors_tensor", hints=(
    "The header gives the tensor's dtype, shape and byte range; the range counts from the end of the header, so "
    "its bytes start 8 + N bytes into the file, N being the header's length.",
    "torch.frombuffer turns bytes into a 1-D tensor of a torch dtype you choose (give it a writable copy, a "
    "bytearray of the slice); then reshape to the header's shape. numpy has no bfloat16, torch does.",
    "Map every safetensors dtype name to torch's (BF16 is torch.bfloat16, BOOL torch.bool). A tensor with no "
    "elements has no bytes to read, and a scalar has the shape []."))
def _(fn, rng):
    import safetensors.torch

    dtype_name = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    cases = []
    for case in range(10):
        chosen = [TIED_NAMES[i] for i in rng.permutation(len(TIED_NAMES))[:int(rng.integers(2, 6))]]
        dtypes = [pick(rng, list(SAFETENSORS_DTYPES.values())) for _ in chosen]
        if case < 4:  # the dtypes people get wrong: bfloat16, float16, bool, int64
            dtypes[0] = [torch.bfloat16, torch.float16, torch.bool, torch.int64][case]
        tensors = {n: _random_tensor(rng, d) for n, d in zip(chosen, dtypes)}
        if case == 4:
            tensors[chosen[0]] = torch.tensor(2.5, dtype=torch.bfloat16)  # a scalar: shape []
        if case == 5:
            tensors[chosen[0]] = torch.empty(0, 3)  # no elements
        data = safetensors.torch.save(tensors, metadata=[{"format": "pt"}, None][case % 2])
        name = chosen[0] if case < 6 else pick(rng, chosen)
        shown = ", ".join(f"{n}: {dtype_name[t.dtype]} {list(t.shape)}" for n, t in tensors.items())
        cases.append((data, name, tensors[name], f"a file with {{{shown}}}"))
    data, meta = _minilm_file()
    name = pick(rng, [k for k, (dt, shape) in meta.items() if int(np.prod(shape)) <= 1536])
    cases.append((data, name, checkpoint.read_safetensors_tensor(data, name), "all-MiniLM-L6-v2's model.safetensors"))
    for data, name, expected, source in cases:
        what = f"read_safetensors_tensor({source}, {name!r})"
        got = call(fn, data, name, what=what)
        if not isinstance(got, torch.Tensor):
            raise GradeError(f"{what}: expected a torch.Tensor, got {type(got).__name__}")
        if got.dtype != expected.dtype:
            note = " (BF16 is bfloat16: 8 exponent bits like float32, not float16's 5)" \
                if expected.dtype == torch.bfloat16 else ""
            raise GradeError(f"{what}: the file stores {dtype_name[expected.dtype]}, so the tensor's dtype must be "
                             f"{expected.dtype}{note}; got {got.dtype}")
        if tuple(got.shape) != tuple(expected.shape):
            raise GradeError(f"{what}: expected shape {tuple(expected.shape)} (the header's 'shape'), got "
                             f"{tuple(got.shape)}")
        if torch.equal(got, expected):
            continue
        for message, kwargs in [("your bytes are counted from the file's start; data_offsets count from the end "
                                 "of the header (byte 8 + N)", {"absolute": True}),
                                ("the values are read big-endian; safetensors stores them little-endian",
                                 {"big_endian": True})]:
            wrong = _decode(data, name, **kwargs)
            if wrong is not None and wrong.shape == got.shape and torch.equal(got, wrong):
                raise GradeError(f"{what}: {message}")
        raise GradeError(f"{what}: {int((got != expected).sum())} of {expected.numel()} values differ from the "
                         f"tensor stored in the file")
