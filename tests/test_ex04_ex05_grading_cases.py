"""The ex04 and ex05 checks have teeth: solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, or a call of the answer key
(``course_lib.models.encoder``, ``course_lib.checkpoint``) that the checks switch off. Every
one must be caught for several seeds: with a GradeError, or, for the few marked "(raises)",
by an exception from the wrong answer itself (the grader reports those as "raised an error",
0 points).
"""

from __future__ import annotations

import json
import math
import operator
from functools import reduce

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.grading.registry import GradeError
from helpers import assert_wrong_answer_fails, chapter_checks, have_solutions, load_exercise_module

SEEDS = range(3)
FILES = {"ex04": "ex04_roberta.py", "ex05": "ex05_loading.py"}
HAS_SOLUTIONS = have_solutions(*FILES.values())


def load(folder: str, chapter: str):
    return load_exercise_module(folder, FILES[chapter])


checks = chapter_checks


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("key", [f"{c}.{f}" for c in FILES for f in checks(c)])
def test_solution_passes(key, seed):
    chapter, name = key.split(".")
    checks(chapter)[name].grade(getattr(load("solutions", chapter), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- ex04

def _split(x, h, transpose=True):
    B, T, C = x.shape
    return x.view(B, T, h, C // h).transpose(1, 2) if transpose else x.reshape(B, h, T, C // h)


def _merge(x, transpose=True):
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D) if transpose else x.reshape(B, T, H * D)


def _additive(mask, dtype=torch.float32):
    return torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype).masked_fill(
        (mask == 0)[:, None, None, :], torch.finfo(dtype).min)


def _probs(q, k, h, mask=None, transpose=True, scale="D", dim=-1, use_mask=True):
    qh, kh = _split(q, h, transpose), _split(k, h, transpose)
    scores = qh @ kh.transpose(-2, -1)
    if scale == "D":
        scores = scores / math.sqrt(q.shape[-1] // h)
    elif scale == "C":
        scores = scores / math.sqrt(q.shape[-1])
    if mask is not None and use_mask:
        scores = scores + mask
    return torch.softmax(scores, dim=dim)


def _self_attention(transpose_w=True, bias=True, scale="D", swap_qk=False, merge_transpose=True,
                    use_mask=True, mask_queries=False):
    def self_attention(x, w, h, attention_mask=None):
        def proj(name):
            weight = w[f"{name}.weight"]
            y = x @ (weight.T if transpose_w else weight)
            return y + w[f"{name}.bias"] if bias else y
        q, k, v = proj("query"), proj("key"), proj("value")
        if swap_qk:
            q, k = k, q
        mask = None
        if attention_mask is not None and use_mask:
            mask = _additive(attention_mask)
            if mask_queries:
                mask = mask.transpose(-1, -2)
        probs = _probs(q, k, h, mask, scale=scale)
        return _merge(probs @ _split(v, h), merge_transpose)
    return self_attention


def _ln(y, w, b, eps):
    return F.layer_norm(y, (y.shape[-1],), w, b, eps)


def _feed_forward(act=F.gelu, residual="before", fixed_eps=None):
    def feed_forward(x, w, eps):
        eps = fixed_eps if fixed_eps is not None else eps
        lw, lb = w["output.LayerNorm.weight"], w["output.LayerNorm.bias"]

        def f(z):
            return act(z @ w["intermediate.dense.weight"].T + w["intermediate.dense.bias"]) @ \
                w["output.dense.weight"].T + w["output.dense.bias"]
        if residual == "before":
            return _ln(x + f(x), lw, lb, eps)
        if residual == "none":
            return _ln(f(x), lw, lb, eps)
        if residual == "after":
            return x + _ln(f(x), lw, lb, eps)
        return x + f(_ln(x, lw, lb, eps))  # "pre-LN"
    return feed_forward


def _encoder_layer(out_proj=True, ffn_residual="a", attn_norm=True, swap_norms=False, use_mask=True):
    def encoder_layer(x, w, h, eps, attention_mask=None):
        attn = {k.removeprefix("attention.self."): v for k, v in w.items() if k.startswith("attention.self.")}
        a = _self_attention()(x, attn, h, attention_mask if use_mask else None)
        if out_proj:
            a = a @ w["attention.output.dense.weight"].T + w["attention.output.dense.bias"]
        n1, n2 = "attention.output.LayerNorm", "output.LayerNorm"
        if swap_norms:
            n1, n2 = n2, n1
        a = _ln(x + a, w[f"{n1}.weight"], w[f"{n1}.bias"], eps) if attn_norm else x + a
        h_out = a @ w["intermediate.dense.weight"].T + w["intermediate.dense.bias"]
        h_out = F.gelu(h_out) @ w["output.dense.weight"].T + w["output.dense.bias"]
        residual = a if ffn_residual == "a" else x
        return _ln(residual + h_out, w[f"{n2}.weight"], w[f"{n2}.bias"], eps)
    return encoder_layer


def _answer_key_self_attention(x, w, h, attention_mask=None):
    from course_lib import layers
    from course_lib.models import encoder

    module = encoder.SelfAttention(encoder.EncoderConfig(hidden_size=x.shape[-1], num_attention_heads=h))
    module.load_state_dict(w)
    return module.eval()(x, None if attention_mask is None else layers.padding_mask(attention_mask))


def _answer_key_layer(x, w, h, eps, attention_mask=None):
    from course_lib import layers
    from course_lib.models import encoder

    config = encoder.EncoderConfig(hidden_size=x.shape[-1], num_attention_heads=h, layer_norm_eps=eps,
                                   intermediate_size=w["intermediate.dense.weight"].shape[0])
    module = encoder.Layer(config)
    module.load_state_dict(w)
    return module.eval()(x, None if attention_mask is None else layers.padding_mask(attention_mask))


def _answer_key_mean_pooling(h, m):
    from course_lib.models import encoder

    return encoder.mean_pooling(h, m)


def _positions_arange(ids, p):
    return (torch.arange(ids.shape[1]) + p + 1).expand_as(ids)


def _positions_right_padding_only(ids, p):
    return torch.where(ids != p, torch.arange(ids.shape[1]) + p + 1, torch.full_like(ids, p))


def _mean(hidden, mask, exclude=True, divide="tokens", clamp=True):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * m).sum(1) if exclude else hidden.sum(1)
    if divide == "T":
        return summed / hidden.shape[1]
    if divide == "none":
        return summed
    count = m.sum(1)
    return summed / (count.clamp(min=1e-9) if clamp else count)


def _prelayernorm(order="pre", residual_from_norm=False, swap_norms=False, final_norm=False, use_mask=True,
                  act=F.gelu):
    """pre_ln_encoder_layer with one typical mistake (roberta-prelayernorm's key names)."""
    def pre_ln_encoder_layer(x, w, h, eps, attention_mask=None):
        n1, n2 = "attention.LayerNorm", "intermediate.LayerNorm"
        if swap_norms:
            n1, n2 = n2, n1
        attn = {k.removeprefix("attention.self."): v for k, v in w.items() if k.startswith("attention.self.")}
        mask = attention_mask if use_mask else None

        def attention(z):
            return _self_attention()(z, attn, h, mask) @ w["attention.output.dense.weight"].T + \
                w["attention.output.dense.bias"]

        def ffn(z):
            return act(z @ w["intermediate.dense.weight"].T + w["intermediate.dense.bias"]) @ \
                w["output.dense.weight"].T + w["output.dense.bias"]
        if order == "post":
            a = _ln(x + attention(x), w[f"{n1}.weight"], w[f"{n1}.bias"], eps)
            return _ln(a + ffn(a), w[f"{n2}.weight"], w[f"{n2}.bias"], eps)
        normed = _ln(x, w[f"{n1}.weight"], w[f"{n1}.bias"], eps)
        a = (normed if residual_from_norm else x) + attention(normed)
        normed = _ln(a, w[f"{n2}.weight"], w[f"{n2}.bias"], eps)
        out = (normed if residual_from_norm else a) + ffn(normed)
        return _ln(out, w[f"{n2}.weight"], w[f"{n2}.bias"], eps) if final_norm else out
    return pre_ln_encoder_layer


def _answer_key_pre_ln(x, w, h, eps, attention_mask=None):
    from course_lib import layers
    from course_lib.models import encoder

    renamed = {k.replace("attention.LayerNorm.", "attention.output.LayerNorm.").replace(
        "intermediate.LayerNorm.", "output.LayerNorm."): v for k, v in w.items()}
    config = encoder.EncoderConfig(hidden_size=x.shape[-1], num_attention_heads=h, layer_norm_eps=eps,
                                   intermediate_size=w["intermediate.dense.weight"].shape[0])
    layer = encoder.Layer(config)
    layer.load_state_dict(renamed)
    return encoder.pre_ln_layer_forward(layer.eval(), x,
                                        None if attention_mask is None else layers.padding_mask(attention_mask))


def _fill_mask(bias=True, act=F.gelu, norm="after", probabilities=True, descending=True, order="rows",
               softmax_dim=-1, all_positions=False, decoder="embeddings"):
    """fill_mask_top_k with one typical mistake."""
    def fill_mask_top_k(hidden, ids, w, mask_id, eps, k):
        where = ids == mask_id
        if all_positions:
            masked = hidden.reshape(-1, hidden.shape[-1])
        elif order == "columns":
            masked = hidden.transpose(0, 1)[where.transpose(0, 1)]
        else:
            masked = hidden[where]
        z = masked @ w["lm_head.dense.weight"].T + w["lm_head.dense.bias"]
        ln = (w["lm_head.layer_norm.weight"], w["lm_head.layer_norm.bias"])
        if norm == "before":
            z = act(_ln(z, *ln, eps))
        elif norm == "none":
            z = act(z)
        else:
            z = _ln(act(z), *ln, eps)
        matrix = w["lm_head.dense.weight"] if decoder == "dense" else w["roberta.embeddings.word_embeddings.weight"]
        logits = z @ matrix.T + (w["lm_head.bias"] if bias else 0)
        scores = torch.softmax(logits, dim=softmax_dim) if probabilities else logits
        values, top = scores.topk(k, dim=-1)
        return (values.flip(-1), top.flip(-1)) if not descending else (values, top)
    return fill_mask_top_k


def _answer_key_fill_mask(hidden, ids, w, mask_id, eps, k):
    from course_lib.models import encoder

    v, c = w["roberta.embeddings.word_embeddings.weight"].shape
    head = encoder.RobertaLMHead(encoder.EncoderConfig(hidden_size=c, vocab_size=v, layer_norm_eps=eps))
    state = {k2.removeprefix("lm_head."): t for k2, t in w.items() if k2.startswith("lm_head.")}
    head.load_state_dict({**state, "decoder.weight": w["roberta.embeddings.word_embeddings.weight"]})
    return encoder.fill_mask_top_k(head.eval(), hidden, ids, mask_id, k)


EX04_WRONG = {
    "roberta_position_ids": {
        "tokens count from 0": lambda ids, p: ((ids != p).long().cumsum(1) - 1) * (ids != p).long() + p * (ids == p).long(),
        "tokens count from padding_idx, not padding_idx + 1": lambda ids, p: ((ids != p).long().cumsum(1) + p - 1) * (ids != p).long() + p * (ids == p).long(),
        "arange + padding_idx + 1 for pads too": _positions_arange,
        "pads get 0": lambda ids, p: ((ids != p).long().cumsum(1) + p) * (ids != p).long(),
        "arange: right padding only": _positions_right_padding_only,
        "padding_idx hard-coded to 1": lambda ids, p: (ids != 1).long().cumsum(1) * (ids != 1).long() + 1,
        "float result": lambda ids, p: ((ids != p).long().cumsum(1) * (ids != p).long() + p).float(),
        "answer key": lambda ids, p: __import__("course_lib.models.encoder", fromlist=["x"]).roberta_position_ids(ids, p),
    },
    "extended_attention_mask": {
        "1/0 mask": lambda m, dt: m[:, None, None, :].to(dt),
        "shape (B, T)": lambda m, dt: torch.zeros(m.shape, dtype=dt).masked_fill(m == 0, torch.finfo(dt).min),
        "-inf": lambda m, dt: torch.zeros(m.shape[0], 1, 1, m.shape[1], dtype=dt).masked_fill((m == 0)[:, None, None, :], float("-inf")),
        "-10000 (old transformers)": lambda m, dt: (1.0 - m[:, None, None, :].to(dt)) * -10000.0,
        "float32's min for every dtype": lambda m, dt: _additive(m, torch.float32).to(dt),
        "inverted": lambda m, dt: torch.zeros(m.shape[0], 1, 1, m.shape[1], dtype=dt).masked_fill((m != 0)[:, None, None, :], torch.finfo(dt).min),
        "bool mask": lambda m, dt: (m != 0)[:, None, None, :],
    },
    "attention_probs": {
        "heads split without transpose": lambda q, k, h, m=None: _probs(q, k, h, m, transpose=False),
        "no 1/sqrt(D) scale": lambda q, k, h, m=None: _probs(q, k, h, m, scale=None),
        "scaled by sqrt(C), not sqrt(D)": lambda q, k, h, m=None: _probs(q, k, h, m, scale="C"),
        "softmax over the queries": lambda q, k, h, m=None: _probs(q, k, h, m, dim=-2),
        "mask ignored": lambda q, k, h, m=None: _probs(q, k, h, m, use_mask=False),
    },
    "self_attention": {
        "x @ W instead of x @ W.T": _self_attention(transpose_w=False),
        "biases forgotten": _self_attention(bias=False),
        "no 1/sqrt(D) scale": _self_attention(scale=None),
        "query and key swapped": _self_attention(swap_qk=True),
        "heads merged without transpose": _self_attention(merge_transpose=False),
        "mask ignored": _self_attention(use_mask=False),
        "mask on the queries, not the keys": _self_attention(mask_queries=True),
        "answer key": _answer_key_self_attention,
    },
    "feed_forward": {
        "tanh GELU": _feed_forward(act=lambda z: F.gelu(z, approximate="tanh")),
        "ReLU": _feed_forward(act=F.relu),
        "no residual": _feed_forward(residual="none"),
        "residual after the norm": _feed_forward(residual="after"),
        "pre-LN": _feed_forward(residual="pre"),
        "eps ignored (always 1e-12)": _feed_forward(fixed_eps=1e-12),
    },
    "encoder_layer": {
        "no attention output projection": _encoder_layer(out_proj=False),
        "feed-forward residual from the layer input": _encoder_layer(ffn_residual="x"),
        "attention LayerNorm skipped": _encoder_layer(attn_norm=False),
        "the two LayerNorms swapped": _encoder_layer(swap_norms=True),
        "mask ignored": _encoder_layer(use_mask=False),
        "answer key": _answer_key_layer,
    },
    "mean_pooling": {
        "pads included": lambda h, m: h.mean(1),
        "divides by T": lambda h, m: _mean(h, m, divide="T"),
        "sum, not mean": lambda h, m: _mean(h, m, divide="none"),
        "NaN for a row of padding": lambda h, m: _mean(h, m, clamp=False),
        "answer key": _answer_key_mean_pooling,
    },
    "pre_ln_encoder_layer": {
        "post-LN order": _prelayernorm(order="post"),
        "residual from the normalised input": _prelayernorm(residual_from_norm=True),
        "the two LayerNorms swapped": _prelayernorm(swap_norms=True),
        "a final LayerNorm": _prelayernorm(final_norm=True),
        "mask ignored": _prelayernorm(use_mask=False),
        "tanh GELU": _prelayernorm(act=lambda z: F.gelu(z, approximate="tanh")),
        "answer key": _answer_key_pre_ln,
    },
    "fill_mask_top_k": {
        "lm_head.bias forgotten": _fill_mask(bias=False),
        "tanh GELU": _fill_mask(act=lambda z: F.gelu(z, approximate="tanh")),
        "layer_norm before GELU": _fill_mask(norm="before"),
        "no layer_norm": _fill_mask(norm="none"),
        "logits, not probabilities": _fill_mask(probabilities=False),
        "lowest first": _fill_mask(descending=False),
        "masked positions column by column": _fill_mask(order="columns"),
        "softmax over the positions": _fill_mask(softmax_dim=0),
        "every position, not only the masks": _fill_mask(all_positions=True),
        "decoder = the dense weight, not the tied embeddings (raises)": _fill_mask(decoder="dense"),
        "answer key": _answer_key_fill_mask,
    },
}


# ----------------------------------------------------------------------------- ex05

def _rename(key, names=("gamma", "beta"), case_insensitive=False):
    module, dot, name = key.rpartition(".")
    look = name.lower() if case_insensitive else name
    new = {"gamma": "weight", "beta": "bias"}
    if look in names and dot:
        return f"{module}.{new[look]}"
    return key


def _rename_endswith(key):
    if key.endswith("gamma"):
        return key[:-5] + "weight"
    if key.endswith("beta"):
        return key[:-4] + "bias"
    return key


BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids", "attn.bias", "attn.masked_bias")


def _normalize(strip="start", buffers="suffix", rename=True, inverted=False):
    def normalize_keys(keys, prefix):
        out = {}
        for key in keys:
            new = _rename(key) if rename else key
            if buffers == "suffix" and any(new == b or new.endswith("." + b) for b in BUFFERS):
                continue
            if buffers == "substring" and any(b in new for b in BUFFERS):
                continue
            if buffers == "endswith" and any(new.endswith(b) for b in BUFFERS):
                continue
            if strip == "start":
                new = new[len(prefix) + 1:] if new.startswith(prefix + ".") else new
            elif strip == "lstrip":
                new = new.lstrip(prefix + ".")
            elif strip == "replace":
                new = new.replace(prefix + ".", "")
            elif strip == "no dot":
                new = new[len(prefix) + 1:] if new.startswith(prefix) else new
            out[key] = new
        return {v: k for k, v in out.items()} if inverted else out
    return normalize_keys


def _diff(sort=True, swap=False, mismatched=True, numel=False, mismatched_missing=False, shape_order="model"):
    def state_dict_diff(model, ckpt):
        order = sorted if sort else list
        missing = order([k for k in model if k not in ckpt])
        unexpected = order([k for k in ckpt if k not in model])
        bad = []
        for k in order([k for k in model if k in ckpt]):
            a, b = tuple(model[k]), tuple(ckpt[k])
            differ = math.prod(a) != math.prod(b) if numel else a != b
            if differ:
                bad.append((k, a, b) if shape_order == "model" else (k, b, a))
        if mismatched_missing:
            missing = order(missing + [k for k, _, _ in bad])
        if swap:
            missing, unexpected = unexpected, missing
        return {"missing": missing, "unexpected": unexpected, "mismatched": bad if mismatched else []}
    return state_dict_diff


def _header(length="little8", metadata=False, absolute=False, dtype_names=None, end_as_length=False):
    def read_safetensors_header(data):
        if length == "little8":
            n = int.from_bytes(data[:8], "little")
        elif length == "big8":
            n = int.from_bytes(data[:8], "big")
        else:  # "little4"
            n = int.from_bytes(data[:4], "little")
        start_of_header = 4 if length == "little4" else 8
        header = json.loads(data[start_of_header:start_of_header + n])
        out = {}
        for name, entry in header.items():
            if name == "__metadata__" and not metadata:
                continue
            if name == "__metadata__":
                out[name] = entry
                continue
            start, end = entry["data_offsets"]
            if absolute:
                start, end = start + 8 + n, end + 8 + n
            if end_as_length:
                end = end - start
            dtype = dtype_names.get(entry["dtype"], entry["dtype"]) if dtype_names else entry["dtype"]
            out[name] = (dtype, list(entry["shape"]), (start, end))
        return out
    return read_safetensors_header


SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _groups(where, skip_empty=True, singletons=False, sort=True):
    def tied_groups(state):
        groups = {}
        for key, t in state.items():
            if skip_empty and t.numel() == 0:
                continue
            groups.setdefault(where(t), []).append(key)
        found = [sorted(g) if sort else g for g in groups.values() if singletons or len(g) > 1]
        return sorted(found) if sort else found
    return tied_groups


def _same_values(state):
    keys, groups = list(state), []
    seen = set()
    for i, a in enumerate(keys):
        if a in seen or state[a].numel() == 0:
            continue
        group = [a] + [b for b in keys[i + 1:] if state[b].shape == state[a].shape and torch.equal(state[a], state[b])]
        seen.update(group)
        if len(group) > 1:
            groups.append(sorted(group))
    return sorted(groups)


def _full_key(t):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def _shards(greater_or_equal=False, oversized_closes=False, first=1, single_numbered=False, base=1000,
            inverted=False, no_total=False):
    """shard_index with one typical mistake."""
    def shard_index(state, max_shard_size):
        if isinstance(max_shard_size, str):
            units = {"KB": base, "MB": base ** 2, "GB": base ** 3, "TB": base ** 4}
            max_shard_size = int(float(max_shard_size[:-2]) * units[max_shard_size[-2:].upper()])
        shards, current, size_now, total = [], [], 0, 0
        for key, t in state.items():
            total += t.nbytes
            if t.nbytes > max_shard_size:
                if oversized_closes and current:
                    shards.append(current)
                    current, size_now = [], 0
                shards.append([key])
                continue
            full = size_now + t.nbytes >= max_shard_size if greater_or_equal else size_now + t.nbytes > max_shard_size
            if full and current:
                shards.append(current)
                current, size_now = [], 0
            current.append(key)
            size_now += t.nbytes
        if current:
            shards.append(current)
        n = len(shards)
        names = ["model.safetensors"] if n == 1 and not single_numbered else \
            [f"model-{i + first:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
        if inverted:
            weight_map = {name: keys for name, keys in zip(names, shards)}
        return {"metadata": {} if no_total else {"total_size": total}, "weight_map": weight_map}
    return shard_index


def _tensor_bytes(absolute=False, endian="little", bf16_as_f16=False, reshape=True, as_float32=False):
    """read_safetensors_tensor with one typical mistake."""
    import struct

    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.float16 if bf16_as_f16 else torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
             "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}

    def read_safetensors_tensor(data, name):
        (n,) = struct.unpack("<Q", data[:8])
        entry = json.loads(data[8:8 + n])[name]
        start, end = entry["data_offsets"]
        if not absolute:
            start, end = start + 8 + n, end + 8 + n
        dtype = names[entry["dtype"]]
        raw = bytearray(data[start:end])
        if not raw:
            flat = torch.empty(0, dtype=dtype)
        else:
            flat = torch.frombuffer(raw, dtype=dtype)
            if endian == "big" and flat.element_size() > 1:
                same = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
                flat = torch.from_numpy(flat.view(same).numpy().byteswap()).view(dtype)
        out = flat.reshape(entry["shape"]) if reshape else flat
        return out.float() if as_float32 else out
    return read_safetensors_tensor


EX05_WRONG = {
    "rename_legacy_key": {
        "str.replace on the whole key": lambda k: k.replace("gamma", "weight").replace("beta", "bias"),
        "replace '.gamma' anywhere": lambda k: k.replace(".gamma", ".weight").replace(".beta", ".bias"),
        "endswith without the dot": _rename_endswith,
        "gamma only": lambda k: _rename(k, names=("gamma",)),
        "case-insensitive": lambda k: _rename(k, case_insensitive=True),
        "answer key": lambda k: __import__("course_lib.checkpoint", fromlist=["x"]).rename_legacy_key(k),
    },
    "normalize_keys": {
        "lstrip strips characters": _normalize(strip="lstrip"),
        "str.replace strips the prefix everywhere": _normalize(strip="replace"),
        "prefix matched without its dot": _normalize(strip="no dot"),
        "buffers found by substring": _normalize(buffers="substring"),
        "buffers found by endswith without the dot": _normalize(buffers="endswith"),
        "buffers kept": _normalize(buffers="keep"),
        "no legacy rename": _normalize(rename=False),
        "prefix never stripped": _normalize(strip="never"),
        "inverted (model key -> checkpoint key)": _normalize(inverted=True),
    },
    "state_dict_diff": {
        "not sorted": _diff(sort=False),
        "missing and unexpected swapped": _diff(swap=True),
        "mismatched left out": _diff(mismatched=False),
        "compares numel, not shapes": _diff(numel=True),
        "mismatched also listed as missing": _diff(mismatched_missing=True),
        "shapes as (checkpoint, model)": _diff(shape_order="checkpoint"),
    },
    "read_safetensors_header": {
        "big-endian length (raises)": _header(length="big8"),
        "4-byte length (raises)": _header(length="little4"),
        "keeps __metadata__": _header(metadata=True),
        "offsets from the file's start": _header(absolute=True),
        "torch dtype names": _header(dtype_names=TORCH_NAMES),
        "(start, length) instead of (start, end)": _header(end_as_length=True),
    },
    "tensor_nbytes": {
        "4 bytes for everything": lambda shape, dt: math.prod(shape) * 4,
        "bits, not bytes": lambda shape, dt: math.prod(shape) * SIZES[dt] * 8,
        "BF16 as 4 bytes": lambda shape, dt: math.prod(shape) * (4 if dt == "BF16" else SIZES[dt]),
        "a scalar has 0 elements": lambda shape, dt: reduce(operator.mul, shape, 1 if shape else 0) * SIZES[dt],
        "float result (bits / 8)": lambda shape, dt: math.prod(shape) * SIZES[dt] * 8 / 8,
        "BOOL as one bit": lambda shape, dt: math.prod(shape) * SIZES[dt] if dt != "BOOL" else math.prod(shape) // 8,
    },
    "tied_groups": {
        "by id()": _groups(id),
        "by data_ptr() only": _groups(lambda t: t.data_ptr()),
        "by storage only": _groups(lambda t: t.untyped_storage().data_ptr()),
        "by equal values": _same_values,
        "stride ignored": _groups(lambda t: _full_key(t)[:3]),
        "empty tensors grouped": _groups(_full_key, skip_empty=False),
        "singletons listed": _groups(_full_key, singletons=True),
        "groups not sorted": _groups(_full_key, sort=False),
    },
    "shard_index": {
        "starts a new shard at exactly the limit": _shards(greater_or_equal=True),
        "an oversized tensor closes the shard being filled": _shards(oversized_closes=True),
        "shards numbered from 0": _shards(first=0),
        "a single shard numbered": _shards(single_numbered=True),
        "KB = 1024 bytes": _shards(base=1024),
        "weight_map inverted (file -> names)": _shards(inverted=True),
        "no total_size": _shards(no_total=True),
        "huggingface_hub's planner (switched off)": lambda state, size: {
            "metadata": (split := __import__("huggingface_hub").split_torch_state_dict_into_shards(
                state, filename_pattern="model{suffix}.safetensors", max_shard_size=size)).metadata,
            "weight_map": split.tensor_to_filename},
        "answer key": lambda state, size: __import__("course_lib.checkpoint", fromlist=["x"]).shard_index(state, size),
    },
    "read_safetensors_tensor": {
        "offsets from the file's start": _tensor_bytes(absolute=True),
        "big-endian": _tensor_bytes(endian="big"),
        "BF16 read as float16": _tensor_bytes(bf16_as_f16=True),
        "not reshaped": _tensor_bytes(reshape=False),
        "always float32": _tensor_bytes(as_float32=True),
        "safetensors.torch.load (switched off)": lambda data, name: __import__("safetensors.torch", fromlist=["x"])
        .load(data)[name],
        "answer key": lambda data, name: __import__("course_lib.checkpoint", fromlist=["x"]).read_safetensors_tensor(
            data, name),
    },
}

WRONG = [("ex04", name, label, fn) for name, cases in EX04_WRONG.items() for label, fn in cases.items()] + \
        [("ex05", name, label, fn) for name, cases in EX05_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("chapter,name,label,fn", WRONG, ids=[f"{c}.{n}: {l}" for c, n, l, _ in WRONG])
def test_wrong_answer_fails(chapter, name, label, fn, seed):
    assert_wrong_answer_fails(chapter, name, label, fn, seed)


def test_every_exercise_has_wrong_answers():
    assert set(EX04_WRONG) == set(checks("ex04")) and set(EX05_WRONG) == set(checks("ex05"))


def test_answer_key_is_named_and_restored():
    from course_lib.models import encoder

    before = (encoder.SelfAttention, encoder.mean_pooling)
    with pytest.raises(GradeError, match=r"course_lib\.models\.encoder\.mean_pooling\(\).*answer key"):
        checks("ex04")["mean_pooling"].grade(_answer_key_mean_pooling, np.random.default_rng(0))
    assert (encoder.SelfAttention, encoder.mean_pooling) == before


def test_points_add_up():
    for chapter, core, stretch in (("ex04", 12, 6), ("ex05", 11, 6)):
        exercises = checks(chapter).values()
        assert sum(ex.points for ex in exercises if not ex.stretch) == core
        assert sum(ex.points for ex in exercises if ex.stretch) == stretch


def test_stretch_messages_name_the_mistake():
    """A few typical mistakes get a message that says what is wrong, not just "values differ"."""
    cases = [("ex04", "pre_ln_encoder_layer", _prelayernorm(order="post"), "post-LN"),
             ("ex04", "pre_ln_encoder_layer", _prelayernorm(residual_from_norm=True), "un-normalised"),
             ("ex04", "pre_ln_encoder_layer", _prelayernorm(final_norm=True), "ends with a LayerNorm"),
             ("ex04", "fill_mask_top_k", _fill_mask(bias=False), "lm_head.bias"),
             ("ex04", "fill_mask_top_k", _fill_mask(probabilities=False), "logits"),
             ("ex04", "fill_mask_top_k", _fill_mask(order="columns"), "reading order"),
             ("ex05", "shard_index", _shards(greater_or_equal=True), "strictly greater"),
             ("ex05", "shard_index", _shards(base=1024), "powers of 1000"),
             ("ex05", "read_safetensors_tensor", _tensor_bytes(absolute=True), "end of the header"),
             ("ex05", "read_safetensors_tensor", _tensor_bytes(bf16_as_f16=True), "bfloat16"),
             ("ex05", "read_safetensors_tensor", lambda data, name: __import__("safetensors.torch", fromlist=["x"])
              .load(data)[name], "shortcut")]
    for chapter, name, fn, words in cases:
        with pytest.raises(GradeError, match=words):
            checks(chapter)[name].grade(fn, np.random.default_rng(0))
