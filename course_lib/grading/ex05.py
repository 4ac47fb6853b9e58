"""Checks for chapter 05's exercises (``exercises/ex05_loading.py``).

Inputs are random: key names built from the parts real checkpoints use (``bert.``,
``gamma``, ``position_ids``, GPT-2's ``attn.bias`` beside ``c_attn.bias`` ...), shapes,
dtypes, safetensors files written by the ``safetensors`` library (and all-MiniLM-L6-v2's
real ``model.safetensors``), state dicts with shared and merely equal tensors. Expected
answers come from ``course_lib.checkpoint`` (``rename_legacy_key``, ``is_ignored_buffer``,
``match_keys`` on a model built from the shapes), from ``safetensors``/``torch`` themselves,
or, for tied tensors, from how the inputs were built. ``course_lib.checkpoint`` is switched
off while the learner's code runs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from course_lib import checkpoint
from course_lib.grading.registry import GradeError, exercise, expect_equal, forbid

ANSWER_KEY = tuple(f"course_lib.checkpoint.{name}" for name in (
    "rename_legacy_key", "is_ignored_buffer", "match_keys", "convert_checkpoint", "save_checkpoint"))

# safetensors' dtype names; the table is the format's (see safetensors' documentation).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def call(fn, *args, what: str):
    with forbid(*ANSWER_KEY, instead="; course_lib.checkpoint is the answer key"):
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


# ------------------------------------------------------------------------- key names

LEGACY_MODULES = ["bert", "roberta", "encoder", "layer", "0", "3", "11", "attention", "output", "LayerNorm",
                  "embeddings", "gamma", "beta", "ln_f", "gamma_proj", "betas", "omega", "alpha_beta"]
LEGACY_LAST = ["gamma", "beta", "gamma", "beta", "weight", "bias", "gamma_scale", "betas", "my_gamma", "beta1",
               "gammabeta", "Gamma", "xbeta"]


@exercise("ex05.rename_legacy_key", points=1,
          hint="module, dot, name = key.rpartition('.'); rename only when name is exactly 'gamma' "
               "(-> 'weight') or 'beta' (-> 'bias'); never str.replace on the whole key.")
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


@exercise("ex05.normalize_keys", points=2,
          hint="For each key: new = rename_legacy_key(key); skip it when new == b or new.endswith('.' + b) for a "
               "buffer b; then strip prefix + '.' only from the start (key[len(prefix) + 1:]), never lstrip/replace.")
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


@exercise("ex05.state_dict_diff", points=2,
          hint="missing = sorted(model - checkpoint keys); unexpected = sorted(checkpoint - model keys); mismatched = "
               "[(k, model shape, checkpoint shape) for k in sorted(common keys) if tuple(shapes) differ].")
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


@exercise("ex05.read_safetensors_header", points=3,
          hint="n = int.from_bytes(data[:8], 'little') (8 bytes, little-endian); header = json.loads(data[8:8 + n]); "
               "skip '__metadata__'; data_offsets count from byte 8 + n, so keep them as they are.")
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


@exercise("ex05.tensor_nbytes", points=1,
          hint="math.prod(shape) elements (1 for [], 0 when a dimension is 0) times the bytes per element: the "
               "number in the name is bits (F32: 32 bits = 4 bytes, BF16: 2 bytes); BOOL takes 1 byte.")
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


@exercise("ex05.tied_groups", points=2,
          hint="Key each tensor by (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()), "
               "skip tensors with numel() == 0, keep groups of 2 or more, sort each group and the list of groups.")
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
