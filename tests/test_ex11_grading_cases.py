"""The ex11 checks have teeth: the solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, a call of the ``gguf`` package's
ready-made version (switched off while the learner's code runs) or of the answer key
(``course_lib``). Every one must be caught for several seeds: with a GradeError, or, for the
few marked "(raises)", by an exception from the wrong answer itself (the grader reports those
as "raised an error", 0 points). Right answers written differently from the solution must
pass. The wrong answers are written here, as a learner would, not taken from the checks'
own list of mistakes.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from course_lib.grading.registry import GradeError
from helpers import (assert_checks_leave_the_global_rng_alone, assert_wrong_answer_fails, chapter_checks,
                     have_solutions, load_exercise_module, unresolved_switched_off_names)

pytest.importorskip("gguf", reason="chapter 11's checks need the gguf package (pip install gguf, or make setup)")
pytest.importorskip("onnxruntime", reason="chapter 11's checks need onnxruntime (pip install onnxruntime)")

SEEDS = range(3)
FILE = "ex11_export.py"
HAS_SOLUTIONS = have_solutions(FILE)

checks = chapter_checks


def key():
    """The answer key's modules."""
    from course_lib.export import gguf_blocks, gguf_export, onnx_export

    return gguf_blocks, gguf_export, onnx_export


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(checks("ex11")))
def test_solution_passes(name, seed):
    checks("ex11")[name].grade(getattr(load_exercise_module("solutions", FILE), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- Q8_0


def _q8(rounding="away", divisor=127, ints_from_f16=False, divide=False, float64=False, scale_format="<e",
        check_length=True):
    def q8_0_block(values):
        x = values.numpy().astype(np.float64 if float64 else np.float32)
        if check_length and x.size != 32:
            raise ValueError("32 weights")
        d = np.abs(x).max() / x.dtype.type(divisor)
        if ints_from_f16:
            d = x.dtype.type(np.float16(d))
        inv = x.dtype.type(1) / d if d else x.dtype.type(0)
        v = (x / d if d else x * 0) if divide else x * inv
        if rounding == "away":
            q = [math.copysign(math.floor(abs(float(t)) + 0.5), float(t)) for t in v]
        elif rounding == "even":
            q = [round(float(t)) for t in v]  # Python's round: half to even
        else:
            q = [math.trunc(float(t)) for t in v]
        ints = np.array(q, dtype=np.int64).astype(np.int8)  # numpy wraps 128 to -128, as a learner's would
        return struct.pack(scale_format, float(d)) + ints.tobytes()
    return q8_0_block


def _q8_torch(values):
    """Right, in torch: sign * floor(|v| + 0.5) with the + 0.5 in float64."""
    if values.numel() != 32:
        raise ValueError("a block is 32 weights")
    d = values.abs().max() / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    v = values * inv  # float32
    q = torch.sign(v) * torch.floor(v.abs().double() + 0.5)
    return d.reshape(1).to(torch.float16).view(torch.uint8).numpy().tobytes() + q.to(torch.int8).numpy().tobytes()


WRONG_Q8 = {
    "round half to even": _q8(rounding="even"),
    "truncation": _q8(rounding="trunc"),
    "integers from the float16 scale": _q8(ints_from_f16=True),
    "divides by d": _q8(divide=True),
    "float64 arithmetic": _q8(float64=True),
    "scale over 128": _q8(divisor=128),
    "float32 scale": _q8(scale_format="<f"),
    "big-endian scale": _q8(scale_format=">e"),
    "no length check": _q8(check_length=False),
    "a numpy array, not bytes": lambda values: np.frombuffer(_q8()(values), dtype=np.uint8),
    "gguf.quants.quantize (a shortcut)": lambda values: __import__("gguf").quants.quantize(
        values.numpy().reshape(1, 32), __import__("gguf").GGMLQuantizationType.Q8_0).tobytes(),
    "gguf's Q8_0 class (a shortcut)": lambda values: __import__("gguf").quants.Q8_0.quantize_blocks(
        values.numpy().reshape(1, 32)).tobytes(),
    "answer key": lambda values: key()[0].quantize_q8_0(values).tobytes(),
}


# ----------------------------------------------------------------------------- Q4_0


def _q4(pairs="halves", scale="signed/-8", rounding="trunc", clip=True, last=False, offset=True):
    def q4_0_block(values):
        x = values.numpy().astype(np.float32)
        if x.size != 32:
            raise ValueError("32 weights")
        mags = np.abs(x)
        i = int(31 - np.argmax(mags[::-1])) if last else int(np.argmax(mags))
        d = {"signed/-8": x[i] / np.float32(-8), "abs/8": mags[i] / np.float32(8),
             "abs/7": mags[i] / np.float32(7)}[scale]
        inv = np.float32(1) / d if d else np.float32(0)
        v = x * inv
        if scale == "abs/7":
            codes = np.clip(np.round(v), -7, 7) + 8
        elif rounding == "trunc":
            codes = np.trunc(v + np.float32(8.5))
        else:  # round half away from zero, then + 8
            codes = np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5) + 8
        if clip:
            codes = np.minimum(codes, 15)
        codes = codes.astype(np.int64)
        if not offset:
            codes = (codes - 8) & 0xF
        codes = codes.astype(np.uint8)
        if pairs == "halves":
            packed = codes[:16] | (codes[16:] << 4)
        elif pairs == "neighbours":
            packed = codes[0::2] | (codes[1::2] << 4)
        else:
            packed = (codes[:16] << 4) | codes[16:]
        return struct.pack("<e", float(d)) + packed.astype(np.uint8).tobytes()
    return q4_0_block


def _q4_loops(values):
    """Right, in plain Python: one weight at a time."""
    x = [float(v) for v in values.to(torch.float32)]
    if len(x) != 32:
        raise ValueError("32 weights")
    extreme = max(x, key=abs)  # max returns the first of equal keys
    d = np.float32(extreme) / np.float32(-8)
    inv = np.float32(1) / d if d != 0 else np.float32(0)
    codes = [min(15, math.trunc(float(np.float32(np.float32(v) * inv) + np.float32(8.5)))) for v in x]
    body = bytes(codes[j] | (codes[j + 16] << 4) for j in range(16))
    return struct.pack("<e", float(d)) + body


WRONG_Q4 = {
    "neighbours share a byte (chapter 07's pack_int4)": _q4(pairs="neighbours"),
    "halves swapped": _q4(pairs="swapped"),
    "scale without the sign": _q4(scale="abs/8"),
    "chapter 07's symmetric int4": _q4(scale="abs/7"),
    "round half away from zero": _q4(rounding="away"),
    "no clip to 15": _q4(clip=False),
    "last of equal extremes": _q4(last=True),
    "signed nibbles, no + 8": _q4(offset=False),
    "gguf's Q4_0 class (a shortcut)": lambda values: __import__("gguf").quants.Q4_0.quantize_blocks(
        values.numpy().reshape(1, 32)).tobytes(),
    "answer key": lambda values: key()[0].quantize_q4_0(values).tobytes(),
}


# ----------------------------------------------------------------------------- Q4_0 back


def _dq4(pairs="halves", minus=8, signed=False, endian="<", dtype=np.float32, scale=True, check_length=True):
    def dequantize_q4_0_block(data):
        if check_length and len(data) != 18:
            raise ValueError("18 bytes")
        d = np.float32(struct.unpack(endian + "e", data[:2])[0])
        b = np.frombuffer(data[2:18], dtype=np.uint8)
        low, high = b & 0xF, b >> 4
        codes = {"halves": np.concatenate([low, high]), "neighbours": np.stack([low, high], 1).reshape(-1),
                 "swapped": np.concatenate([high, low])}[pairs].astype(np.float32)
        q = np.where(codes >= 8, codes - 16, codes) if signed else codes - minus
        return torch.from_numpy((q * d if scale else q).astype(dtype))
    return dequantize_q4_0_block


def _dq4_torch(data):
    """Right, in torch: bit operations on a uint8 tensor."""
    if len(data) != 18:
        raise ValueError("a block is 18 bytes")
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    d = raw[:2].view(torch.float16).float()
    codes = torch.cat([raw[2:] & 15, raw[2:] >> 4]).float()
    return (codes - 8) * d


WRONG_DQ4 = {
    "neighbours": _dq4(pairs="neighbours"),
    "halves swapped": _dq4(pairs="swapped"),
    "no - 8": _dq4(minus=0),
    "signed nibbles": _dq4(signed=True),
    "big-endian scale": _dq4(endian=">"),
    "no scale": _dq4(scale=False),
    "float64 result": _dq4(dtype=np.float64),
    "no length check": _dq4(check_length=False),
    "gguf.quants.dequantize (a shortcut)": lambda data: torch.from_numpy(__import__("gguf").quants.dequantize(
        np.frombuffer(data, np.uint8).reshape(1, 18), __import__("gguf").GGMLQuantizationType.Q4_0).reshape(32)),
    "answer key": lambda data: key()[0].dequantize_q4_0(np.frombuffer(data, np.uint8)),
}


# ----------------------------------------------------------------------------- metadata entry


IDS = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5, "FLOAT32": 6, "BOOL": 7,
       "STRING": 8, "ARRAY": 9, "UINT64": 10, "INT64": 11, "FLOAT64": 12}
FMT = {"UINT8": "B", "INT8": "b", "UINT16": "H", "INT16": "h", "UINT32": "I", "INT32": "i", "FLOAT32": "f",
       "BOOL": "?", "UINT64": "Q", "INT64": "q", "FLOAT64": "d"}


def _kv(length="Q", chars=False, zero=False, tid="I", count="Q", item_ids=False, bool_fmt="?", f32="f",
        check=True):
    def gguf_kv(key, value, value_type, item_type=None):
        if check and (value_type not in IDS or (value_type == "ARRAY" and item_type not in set(IDS) - {"ARRAY"})):
            raise ValueError("bad type")

        def s(text):
            raw = text.encode("utf-8")
            return struct.pack("<" + length, len(text) if chars else len(raw)) + raw + (b"\0" if zero else b"")

        def one(v, kind):
            if kind == "STRING":
                return s(v)
            return struct.pack("<" + {"BOOL": bool_fmt, "FLOAT32": f32}.get(kind, FMT[kind]), v)

        out = s(key) + struct.pack("<" + tid, IDS[value_type])
        if value_type == "ARRAY":
            out += struct.pack("<" + tid, IDS[item_type]) + struct.pack("<" + count, len(value))
            for v in value:
                out += (struct.pack("<" + tid, IDS[item_type]) if item_ids else b"") + one(v, item_type)
            return out
        return out + one(value, value_type)
    return gguf_kv


def _kv_bytearray(key, value, value_type, item_type=None):
    """Right, written differently: a bytearray grown piece by piece, a recursive item writer."""
    widths = {"UINT8": "B", "INT8": "b", "UINT16": "H", "INT16": "h", "UINT32": "I", "INT32": "i", "FLOAT32": "f",
              "BOOL": "B", "UINT64": "Q", "INT64": "q", "FLOAT64": "d"}
    order = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64",
             "INT64", "FLOAT64"]
    if value_type not in order or value_type == "ARRAY" and (item_type is None or item_type == "ARRAY"
                                                             or item_type not in order):
        raise ValueError(value_type)
    out = bytearray()

    def put(v, kind):
        if kind == "STRING":
            raw = bytes(v, "utf-8")
            out.extend(len(raw).to_bytes(8, "little"))
            out.extend(raw)
        elif kind == "ARRAY":
            out.extend(order.index(item_type).to_bytes(4, "little"))
            out.extend(len(v).to_bytes(8, "little"))
            for item in v:
                put(item, item_type)
        else:
            out.extend(struct.pack("<" + widths[kind], int(v) if kind == "BOOL" else v))

    put(key, "STRING")
    out.extend(order.index(value_type).to_bytes(4, "little"))
    put(value, value_type)
    return bytes(out)


def _kv_writer(key, value, value_type, item_type=None):
    """The gguf package's writer, reached for as a shortcut."""
    import gguf

    writer = gguf.GGUFWriter(None, arch="gpt2")
    sub = gguf.GGUFValueType[item_type] if item_type else None
    return (writer._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False)
            + writer._pack_val(value, gguf.GGUFValueType[value_type], add_vtype=True, sub_type=sub))


WRONG_KV = {
    "uint32 string lengths (GGUF v1)": _kv(length="I"),
    "length in characters": _kv(chars=True),
    "strings end with a 0 byte": _kv(zero=True),
    "one-byte type ids": _kv(tid="B"),
    "uint32 array count": _kv(count="I"),
    "a type id per array item": _kv(item_ids=True),
    "BOOL as 4 bytes": _kv(bool_fmt="I"),
    "FLOAT32 as a double": _kv(f32="d"),
    "no ValueError for an unknown type (raises)": _kv(check=False),
    "gguf.GGUFWriter (a shortcut)": _kv_writer,
}


# ----------------------------------------------------------------------------- data offset


WRONG_OFFSET = {
    "not aligned": lambda end, alignment, offset: end + offset,
    "rounded down": lambda end, alignment, offset: end // alignment * alignment + offset,
    "a whole alignment added when aligned": lambda end, alignment, offset: (end // alignment + 1) * alignment + offset,
    "alignment fixed at 32": lambda end, alignment, offset: -(-end // 32) * 32 + offset,
    "offset ignored": lambda end, alignment, offset: -(-end // alignment) * alignment,
    "a float": lambda end, alignment, offset: math.ceil(end / alignment) * alignment + offset + 0.0,
    "answer key's layout reader (raises)": lambda end, alignment, offset: key()[1].read_gguf_layout("x.gguf"),
}


# ----------------------------------------------------------------------------- dynamic axes


def _axes(present_total=True, mask_total=True, fixed_heads=True, batch=True, first_layer=0, int_keys=True,
          vocab_fixed=True):
    def dynamic_axes(num_layers):
        b = {0: "batch_size"} if batch else {}
        axes = {"input_ids": {**b, 1: "sequence_length"},
                "attention_mask": {**b, 1: "total_sequence_length" if mask_total else "sequence_length"},
                "position_ids": {**b, 1: "sequence_length"},
                "logits": {**b, 1: "sequence_length", **({} if vocab_fixed else {2: "vocab_size"})}}
        for i in range(first_layer, num_layers + first_layer):
            for k in ("key", "value"):
                heads = {} if fixed_heads else {1: "num_heads"}
                axes[f"past_key_values.{i}.{k}"] = {**b, **heads, 2: "past_sequence_length"}
                axes[f"present.{i}.{k}"] = {**b, **heads, 2: "total_sequence_length" if present_total
                                            else "past_sequence_length"}
        if not int_keys:
            axes = {n: {str(a): v for a, v in d.items()} for n, d in axes.items()}
        return axes
    return dynamic_axes


WRONG_AXES = {
    "present's axis 2 is the past length": _axes(present_total=False),
    "the mask's axis 1 is this step's length": _axes(mask_total=False),
    "heads made dynamic": _axes(fixed_heads=False),
    "no batch axes": _axes(batch=False),
    "layers counted from 1": _axes(first_layer=1),
    "axes as strings": _axes(int_keys=False),
    "vocabulary made dynamic": _axes(vocab_fixed=False),
    "answer key": lambda n: key()[2]._dynamic_axes({"inputs": [], "outputs": []}),
}


# ----------------------------------------------------------------------------- stretch: Q8_0 dot


def _dot(quantize_x=True, f16_scale=True, widen=np.int32, scales="both"):
    def q8_0_dot(weights, x):
        if len(weights) % 34:
            raise ValueError("whole blocks")
        n = len(weights) // 34
        xs = x.numpy().astype(np.float32)
        if xs.size != 32 * n:
            raise ValueError("x does not fit")
        total = 0.0
        for b in range(n):
            wb = weights[34 * b:34 * b + 34]
            dw = np.float32(struct.unpack("<e", wb[:2])[0])
            qw = np.frombuffer(wb[2:], np.int8)
            xb = xs[32 * b:32 * b + 32]
            if not quantize_x:
                total += float(np.dot(qw.astype(np.float32) * dw, xb))
                continue
            dx = np.abs(xb).max() / np.float32(127)
            inv = np.float32(1) / dx if dx else np.float32(0)
            v = xb * inv
            qx = (np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)).astype(np.int8)
            if f16_scale:
                dx = np.float32(np.float16(dx))
            products = qw.astype(widen) * qx.astype(widen)  # int8 * int8 wraps around in int8
            isum = int(products.sum(dtype=np.int16 if widen == np.int16 else None))  # numpy sums int8 in int64
            factor = {"both": dw * dx, "weights": dw}[scales]
            total += isum * float(factor)
        return total
    return q8_0_dot


def _dot_dequantized_both(weights, x):
    """Right, written differently: dequantize both sides (the products are the same numbers) in float64."""
    n = len(weights) // 34
    if len(weights) % 34 or x.numel() != 32 * n:
        raise ValueError("sizes")
    total = 0.0
    for b in range(n):
        xb = x[32 * b:32 * b + 32]
        d = xb.abs().max() / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        v = xb * inv
        qx = torch.sign(v) * torch.floor(v.abs().double() + 0.5)
        x_hat = qx * float(d.to(torch.float16))
        w = np.frombuffer(weights[34 * b + 2:34 * b + 34], np.int8).astype(np.float64)
        w_hat = w * struct.unpack("<e", weights[34 * b:34 * b + 2])[0]
        total += float((torch.from_numpy(w_hat) * x_hat).sum())
    return total


WRONG_DOT = {
    "x not quantized (float dot)": _dot(quantize_x=False),
    "x's scale unrounded": _dot(f16_scale=False),
    "int8 products overflow": _dot(widen=np.int8),
    "int16 sums overflow": _dot(widen=np.int16),
    "only the weights' scale": _dot(scales="weights"),
}


# ----------------------------------------------------------------------------- stretch: greedy with the cache


def _greedy(positions="mask", stop="all", force_eos=True, use_cache=True, eos_on=True, logits_at=-1):
    def greedy_with_cache(run, sidecar, input_ids, attention_mask, max_new_tokens):
        c = sidecar["config"]
        eos = sidecar["eos_token_id"] if eos_on else None
        ids, mask = input_ids.numpy(), attention_mask.numpy()
        B = ids.shape[0]
        empty = np.zeros((B, c["num_heads"], 0, c["head_dim"]), np.float32)
        names = [(i, k) for i in range(c["num_layers"]) for k in ("key", "value")]
        past = {f"past_key_values.{i}.{k}": empty for i, k in names}
        done = np.zeros(B, bool)
        step = ids
        for _ in range(max_new_tokens):
            t = step.shape[1]
            if positions == "mask":
                pos = np.maximum(np.cumsum(mask, 1) - 1, 0)[:, -t:]
            else:  # 0, 1, 2 ... over all columns, padding included
                pos = np.tile(np.arange(mask.shape[1] - t, mask.shape[1]), (B, 1))
            out = run({"input_ids": step, "attention_mask": mask, "position_ids": pos.astype(np.int64), **past})
            new = out["logits"][:, logits_at].argmax(-1).astype(np.int64)
            if eos is not None:
                if force_eos:
                    new = np.where(done, eos, new)
                done |= new == eos
            ids = np.concatenate([ids, new[:, None]], 1)
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], 1)
            if eos is not None and (done.any() if stop == "any" else done.all()):
                break
            if use_cache:
                past = {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i, k in names}
                step = new[:, None]
            else:  # the whole sequence again, with an empty cache
                step = ids
        return torch.from_numpy(ids)
    return greedy_with_cache


def _greedy_torch(run, sidecar, input_ids, attention_mask, max_new_tokens):
    """Right, written differently: torch tensors, a list of finished flags, names from the sidecar's outputs."""
    c, eos = sidecar["config"], sidecar["eos_token_id"]
    ids, mask = input_ids.clone(), attention_mask.clone()
    B = ids.shape[0]
    cache = {}
    finished = [False] * B
    for step in range(max_new_tokens):
        fresh = ids if step == 0 else ids[:, -1:]
        feeds = {"input_ids": fresh.numpy(), "attention_mask": mask.numpy(),
                 "position_ids": (mask.cumsum(1) - 1).clamp(min=0)[:, -fresh.shape[1]:].numpy()}
        for layer in range(c["num_layers"]):
            for kind in ("key", "value"):
                name = sidecar["past"]["input"].format(layer=layer, kind=kind)
                out_name = sidecar["past"]["output"].format(layer=layer, kind=kind)
                feeds[name] = cache.get(out_name, np.zeros((B, c["num_heads"], 0, c["head_dim"]), np.float32))
        cache = run(feeds)
        nxt = torch.from_numpy(cache["logits"][:, -1]).argmax(-1)
        for b in range(B):
            if eos is not None and finished[b]:
                nxt[b] = eos
            finished[b] = finished[b] or (eos is not None and int(nxt[b]) == eos)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        if eos is not None and all(finished):
            break
    return ids


WRONG_GREEDY = {
    "positions ignore the padding": _greedy(positions="arange"),
    "stops when one row finishes": _greedy(stop="any"),
    "finished rows keep choosing": _greedy(force_eos=False),
    "end token ignored": _greedy(eos_on=False),
    "no cache: the whole sequence every step": _greedy(use_cache=False),
    "logits of the first position": _greedy(logits_at=0),
    "answer key (raises)": lambda run, sidecar, ids, mask, n: key()[2].ort_generate_ids("x.onnx", ids, n),
}


EX11_WRONG = {"q8_0_block": WRONG_Q8, "q4_0_block": WRONG_Q4, "dequantize_q4_0_block": WRONG_DQ4,
              "gguf_kv": WRONG_KV, "tensor_data_offset": WRONG_OFFSET, "dynamic_axes": WRONG_AXES,
              "q8_0_dot": WRONG_DOT, "greedy_with_cache": WRONG_GREEDY}
WRONG = [(name, label, fn) for name, cases in EX11_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", WRONG, ids=[f"ex11.{n}: {l}" for n, l, _ in WRONG])
def test_wrong_answer_fails(name, label, fn, seed):
    assert_wrong_answer_fails("ex11", name, label, fn, seed)


def test_messages_name_the_likely_mistake():
    cases = {
        ("q8_0_block", "round half to even"): "half to even",
        ("q8_0_block", "truncation"): "truncated",
        ("q8_0_block", "integers from the float16 scale"): "float16-rounded scale",
        ("q8_0_block", "divides by d"): "you divided by d",
        ("q8_0_block", "scale over 128"): "max|x| / 128",
        ("q8_0_block", "float32 scale"): "as float32 (4 bytes)",
        ("q8_0_block", "big-endian scale"): "big-endian",
        ("q8_0_block", "no length check"): "ValueError was expected",
        ("q8_0_block", "a numpy array, not bytes"): "tobytes",
        ("q8_0_block", "gguf.quants.quantize (a shortcut)"): "ready-made shortcut",
        ("q4_0_block", "neighbours share a byte (chapter 07's pack_int4)"): "pack_int4",
        ("q4_0_block", "halves swapped"): "swapped",
        ("q4_0_block", "scale without the sign"): "lost the extreme weight's sign",
        ("q4_0_block", "chapter 07's symmetric int4"): "symmetric int4",
        ("q4_0_block", "round half away from zero"): "rounds halves UP",
        ("q4_0_block", "no clip to 15"): "not clipped to 15",
        ("q4_0_block", "last of equal extremes"): "takes the first",
        ("q4_0_block", "signed nibbles, no + 8"): "q + 8",
        ("dequantize_q4_0_block", "neighbours"): "weight j + 16",
        ("dequantize_q4_0_block", "no - 8"): "8 was not subtracted",
        ("dequantize_q4_0_block", "signed nibbles"): "signed 4-bit",
        ("dequantize_q4_0_block", "no scale"): "scale is missing",
        ("dequantize_q4_0_block", "float64 result"): "torch.float32",
        ("gguf_kv", "uint32 string lengths (GGUF v1)"): "GGUF v1",
        ("gguf_kv", "length in characters"): "counts characters",
        ("gguf_kv", "strings end with a 0 byte"): "0 byte",
        ("gguf_kv", "one-byte type ids"): "one byte",
        ("gguf_kv", "uint32 array count"): "item count was written as uint32",
        ("gguf_kv", "a type id per array item"): "its own type id",
        ("gguf_kv", "BOOL as 4 bytes"): "BOOL was written as 4 bytes",
        ("gguf_kv", "FLOAT32 as a double"): "float64",
        ("gguf_kv", "gguf.GGUFWriter (a shortcut)"): "ready-made shortcut",
        ("tensor_data_offset", "not aligned"): "not aligned",
        ("tensor_data_offset", "rounded down"): "rounded down",
        ("tensor_data_offset", "a whole alignment added when aligned"): "the padding is 0",
        ("tensor_data_offset", "alignment fixed at 32"): "taken as 32",
        ("tensor_data_offset", "offset ignored"): "own offset is missing",
        ("tensor_data_offset", "a float"): "expected an int",
        ("dynamic_axes", "present's axis 2 is the past length"): "total_sequence_length (P + T)",
        ("dynamic_axes", "the mask's axis 1 is this step's length"): "the mask covers the cached tokens",
        ("dynamic_axes", "heads made dynamic"): "not dynamic",
        ("dynamic_axes", "no batch axes"): "batch (axis 0) is dynamic",
        ("dynamic_axes", "layers counted from 1"): "layers count from 0",
        ("dynamic_axes", "axes as strings"): "the axes are ints",
        ("dynamic_axes", "vocabulary made dynamic"): "not dynamic",
        ("q8_0_dot", "x not quantized (float dot)"): "x was not quantized",
        ("q8_0_dot", "x's scale unrounded"): "unrounded",
        ("q8_0_dot", "int8 products overflow"): "int8 products overflowed",
        ("q8_0_dot", "int16 sums overflow"): "overflowed int16",
        ("q8_0_dot", "only the weights' scale"): "BOTH scales",
        ("greedy_with_cache", "positions ignore the padding"): "ignore the left padding",
        ("greedy_with_cache", "stops when one row finishes"): "first row finished",
        ("greedy_with_cache", "finished rows keep choosing"): "keeps producing it",
        ("greedy_with_cache", "end token ignored"): "end token was ignored",
        ("greedy_with_cache", "no cache: the whole sequence every step"): "only each new token",
    }
    for (name, label), text in cases.items():
        messages = []
        for seed in SEEDS:  # some mistakes only show on some inputs; the message must name it where it shows
            with pytest.raises(GradeError) as info:
                checks("ex11")[name].grade(EX11_WRONG[name][label], np.random.default_rng(seed))
            messages.append(str(info.value))
            if text in messages[-1]:
                break
        assert text in messages[-1], f"{name}, {label!r}: {messages[0]}"


# ----------------------------------------------------------------------------- right answers, written differently


def _offset_add_then_divide(header_end, alignment, offset):
    return (header_end + alignment - 1) // alignment * alignment + offset


def _axes_comprehension(num_layers):
    step, total, past = "sequence_length", "total_sequence_length", "past_sequence_length"
    cache = lambda prefix, length: {f"{prefix}.{i}.{k}": {0: "batch_size", 2: length}  # noqa: E731
                                    for i in range(num_layers) for k in ("key", "value")}
    return {"input_ids": {0: "batch_size", 1: step}, "position_ids": {0: "batch_size", 1: step},
            "attention_mask": {0: "batch_size", 1: total}, "logits": {0: "batch_size", 1: step},
            **cache("past_key_values", past), **cache("present", total)}


# Each wrong-answer builder above with every knob at its right setting must pass: then each wrong
# answer differs from a right one by exactly the mistake its label names.
RIGHT = {
    "q8_0_block": {"torch, + 0.5 in float64": _q8_torch, "the builder, no mistake": _q8()},
    "q4_0_block": {"plain Python loops": _q4_loops, "the builder, no mistake": _q4()},
    "dequantize_q4_0_block": {"torch bit operations": _dq4_torch, "the builder, no mistake": _dq4()},
    "gguf_kv": {"a bytearray and int.to_bytes": _kv_bytearray, "the builder, no mistake": _kv()},
    "tensor_data_offset": {"add alignment - 1, divide down": _offset_add_then_divide,
                           "math.ceil, as an int": lambda e, a, o: int(math.ceil(e / a)) * a + o},
    "dynamic_axes": {"dict comprehensions": _axes_comprehension, "the builder, no mistake": _axes()},
    "q8_0_dot": {"dequantize both sides, float64": _dot_dequantized_both, "the builder, no mistake": _dot()},
    "greedy_with_cache": {"torch tensors, names from the sidecar": _greedy_torch, "the builder, no mistake": _greedy()},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", [(n, l, f) for n, c in RIGHT.items() for l, f in c.items()],
                         ids=[f"ex11.{n}: {l}" for n, c in RIGHT.items() for l in c])
def test_right_answer_written_differently_passes(name, label, fn, seed):
    checks("ex11")[name].grade(fn, np.random.default_rng(seed))


def test_every_exercise_has_wrong_and_right_answers():
    assert set(EX11_WRONG) == set(RIGHT) == set(checks("ex11"))
    assert all(len(cases) >= 4 for cases in EX11_WRONG.values())


def test_every_switched_off_name_exists():
    """A misspelt shortcut would silently stay switched on."""
    from course_lib.grading import ex11

    assert unresolved_switched_off_names(ex11) == []


def test_the_checks_own_entry_writer_agrees_with_gguf():
    """kv_variant (no mistake) is the fallback should gguf's private _pack_val go: it must write gguf's bytes."""
    from course_lib.grading import ex11

    for seed in SEEDS:
        for key_, value, value_type, item_type in ex11.kv_cases(np.random.default_rng(seed)):
            assert ex11.kv_variant(key_, value, value_type, item_type) == \
                ex11.kv_reference(key_, value, value_type, item_type), (key_, value_type)


def test_points_add_up():
    exercises = checks("ex11").values()
    assert sum(ex.points for ex in exercises if not ex.stretch) == 12
    assert sum(ex.points for ex in exercises if ex.stretch) == 9
    assert {ex.function for ex in exercises if ex.stretch} == {"q8_0_dot", "greedy_with_cache"}


def test_a_check_leaves_the_global_random_generator_alone():
    assert_checks_leave_the_global_rng_alone("ex11", FILE, {n: next(iter(c.values())) for n, c in RIGHT.items()})
