"""The ex09 checks have teeth: the solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, a call of PyTorch's ready-made
version (switched off while the learner's code runs) or of the answer key (``course_lib``).
Every one must be caught for several seeds: with a GradeError, or, for the few marked
"(raises)", by an exception from the wrong answer itself (the grader reports those as
"raised an error", 0 points). Right answers written differently from the solution must pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.grading.registry import GradeError
from helpers import (assert_checks_leave_the_global_rng_alone, assert_wrong_answer_fails, chapter_checks,
                     have_solutions, load_exercise_module, unresolved_switched_off_names)

SEEDS = range(3)
FILE = "ex09_modern_decoders.py"
HAS_SOLUTIONS = have_solutions(FILE)

checks = chapter_checks


def key():
    """The answer key's modules."""
    from course_lib import layers, rope
    from course_lib.models import llama

    return rope, layers, llama


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(checks("ex09")))
def test_solution_passes(name, seed):
    checks("ex09")[name].grade(getattr(load_exercise_module("solutions", FILE), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- rotate_half


def _rotate(order="swap", negate="second", layout="half", check=True, dim=-1):
    def rotate_half(x):
        if check and x.size(-1) % 2:
            raise ValueError("odd")
        n = x.size(dim)
        if layout == "interleaved":
            return torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
        first, second = x.narrow(dim, 0, n // 2), x.narrow(dim, n // 2, n - n // 2)
        if negate == "second":
            second = -second
        elif negate == "first":
            first = -first
        return torch.cat((second, first) if order == "swap" else (first, second), dim=dim)
    return rotate_half


WRONG_ROTATE = {
    "signs the other way: [x2, -x1]": _rotate(negate="first"),
    "no minus sign: [x2, x1]": _rotate(negate="none"),
    "halves kept their places: [-x1, x2]": _rotate(order="keep", negate="first"),
    "halves kept their places: [x1, -x2]": _rotate(order="keep"),
    "interleaved pairs": _rotate(layout="interleaved"),
    "halves along the first dimension": _rotate(dim=0),
    "no error for an odd dimension": _rotate(check=False),
    "answer key": lambda x: key()[0].rotate_half(x),
}


# ----------------------------------------------------------------------------- rope_cos_sin


def _cos_sin(repeat="cat", use_positions=True, swap=False, divide=False, precision="float32", check=True):
    def rope_cos_sin(position_ids, inv_freq):
        if check and (position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool):
            raise TypeError("positions are integers")
        dtype = torch.float64 if precision == "float64" else torch.float32
        pos = position_ids.to(dtype)
        if not use_positions:
            pos = torch.arange(position_ids.shape[-1], dtype=dtype).expand(position_ids.shape)
        freq = inv_freq.to(dtype)
        angles = pos[..., None] / freq if divide else pos[..., None] * freq
        if repeat == "cat":
            angles = torch.cat((angles, angles), -1)
        elif repeat == "interleave":
            angles = angles.repeat_interleave(2, -1)
        cos, sin = angles.cos(), angles.sin()
        return (sin, cos) if swap else (cos, sin)
    return rope_cos_sin


WRONG_COS_SIN = {
    "angles repeated twice in a row (repeat_interleave)": _cos_sin(repeat="interleave"),
    "angles not repeated: (..., T, D/2)": _cos_sin(repeat="none"),
    "positions taken as 0..T-1": _cos_sin(use_positions=False),
    "cos and sin swapped": _cos_sin(swap=True),
    "positions divided by the frequencies": _cos_sin(divide=True),
    "float64 result": _cos_sin(precision="float64"),
    "no TypeError for float positions": _cos_sin(check=False),
    "answer key": lambda p, f: key()[0].rope_cos_sin(p, f),
    "answer key's RotaryEmbedding": lambda p, f: key()[0].RotaryEmbedding(2 * len(f))(p),
}


# ----------------------------------------------------------------------------- apply_rope


def _apply(direction=1, layout="half", swap=False, rotate=True, heads_axis=True, cast=True, check=True):
    def apply_rope(x, cos, sin):
        if check:
            if x.dim() != 4:
                raise ValueError("x must be 4-D")
            if cos.shape != sin.shape or cos.dim() != 3 or tuple(cos.shape[1:]) != tuple(x.shape[2:]):
                raise ValueError("cos and sin must be (B, T, D)")
        if swap:
            cos, sin = sin, cos
        if cast:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if heads_axis:
            cos, sin = cos[:, None], sin[:, None]
        if layout == "interleaved":
            half = x.size(-1) // 2
            c, s = cos[..., :half], sin[..., :half]
            even, odd = x[..., 0::2], x[..., 1::2]
            return torch.stack((even * c - odd * s, even * s + odd * c), -1).flatten(-2)
        turned = _rotate()(x) if rotate else x
        return x * cos + direction * turned * sin
    return apply_rope


WRONG_APPLY = {
    "rotation the wrong way": _apply(direction=-1),
    "interleaved pairs": _apply(layout="interleaved"),
    "cos and sin swapped": _apply(swap=True),
    "rotate_half missing": _apply(rotate=False),
    "no heads axis for cos and sin (raises)": _apply(heads_axis=False),
    "cos and sin not cast to x's dtype": _apply(cast=False),
    "no ValueError for bad shapes": _apply(check=False),
    "answer key": lambda x, c, s: key()[0].apply_rope(x, c, s),
    "answer key's interleaved rotation": lambda x, c, s: key()[0].apply_rope_interleaved(x, c, s),
}


# ----------------------------------------------------------------------------- repeat_kv


def _repeat(how="interleave", dim=1, check=True, use_view=False):
    def repeat_kv(x, n_rep):
        if check and (n_rep < 1 or x.dim() != 4):
            raise ValueError("bad input")
        if use_view:
            B, KV, T, D = x.shape
            return x[:, :, None].expand(B, KV, n_rep, T, D).view(B, KV * n_rep, T, D)
        if how == "tile":
            return x.repeat(1, n_rep, 1, 1)
        if how == "cat":
            return torch.cat([x] * max(n_rep, 1), dim=1)
        return x.repeat_interleave(max(n_rep, 1), dim=dim)
    return repeat_kv


WRONG_REPEAT = {
    "heads tiled with repeat": _repeat(how="tile"),
    "heads tiled with cat": _repeat(how="cat"),
    "copies along the tokens": _repeat(dim=2),
    "copies along the batch": _repeat(dim=0),
    "copies along head_dim": _repeat(dim=3),
    "no ValueError for n_rep < 1": _repeat(check=False),
    "view of the expanded copies (raises)": _repeat(use_view=True),
    "answer key": lambda x, n: key()[1].repeat_kv(x, n),
    "answer key through the llama module": lambda x, n: key()[2].repeat_kv(x, n),
}


# ----------------------------------------------------------------------------- swiglu


def _swiglu(act="silu", swap=False, where="gate", transpose=True, check=True):
    acts = {
        "silu": lambda z: z * torch.sigmoid(z),
        "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2))),
        "sigmoid": torch.sigmoid,
        "relu": lambda z: z.clamp(min=0),
        "none": lambda z: z,
        "wrong sign": lambda z: z / (1 + torch.exp(z)),
    }

    def swiglu(x, gate_weight, up_weight, down_weight):
        if check and (gate_weight.shape[1] != x.shape[-1] or up_weight.shape != gate_weight.shape
                      or tuple(down_weight.shape) != tuple(gate_weight.shape[::-1])):
            raise ValueError("shapes")
        lin = (lambda v, w: v @ w.T) if transpose else (lambda v, w: v @ w)
        gate, up = lin(x, gate_weight), lin(x, up_weight)
        if swap:
            gate, up = up, gate
        hidden = acts[act](gate * up) if where == "product" else acts[act](gate) * up
        return lin(hidden, down_weight)
    return swiglu


WRONG_SWIGLU = {
    "GELU": _swiglu(act="gelu"),
    "gate and up swapped": _swiglu(swap=True),
    "sigmoid gate (plain GLU)": _swiglu(act="sigmoid"),
    "ReLU": _swiglu(act="relu"),
    "SiLU of the product": _swiglu(where="product"),
    "no SiLU": _swiglu(act="none"),
    "SiLU with the wrong sign": _swiglu(act="wrong sign"),
    "weights not transposed (raises)": _swiglu(transpose=False, check=False),
    "no ValueError for bad shapes": _swiglu(check=False),
    "F.silu (a shortcut)": lambda x, g, u, d: (F.silu(x @ g.T) * (x @ u.T)) @ d.T,
    "nn.SiLU (a shortcut)": lambda x, g, u, d: (torch.nn.SiLU()(x @ g.T) * (x @ u.T)) @ d.T,
    "F.glu (a shortcut)": lambda x, g, u, d: F.glu(torch.cat(((x @ g.T) * (x @ u.T), x @ g.T), -1), -1) @ d.T,
    "answer key": lambda x, g, u, d: key()[1].swiglu(x, g, u, d),
    "answer key's silu": lambda x, g, u, d: (key()[1].silu(x @ g.T) * (x @ u.T)) @ d.T,
}


# ----------------------------------------------------------------------------- sliding_window_mask


def _window(low=0, aligned=True, causal=True, use_window=True, dtype=None, invert=False, transpose=False,
            check=True):
    def sliding_window_mask(t_query, t_key=None, window=None):
        t_key = t_query if t_key is None else t_key
        if check and (t_key < t_query or (window is not None and window < 1)):
            raise ValueError("bad input")
        p = torch.arange(t_query)[:, None] + (t_key - t_query if aligned else 0)
        j = torch.arange(t_key)[None, :]
        mask = j <= p if causal else torch.ones(t_query, t_key, dtype=torch.bool)
        if window is not None and use_window:
            mask = mask & (j > p - window - low)
        if invert:
            mask = ~mask
        if transpose:
            mask = mask.T
        return mask if dtype is None else mask.to(dtype)
    return sliding_window_mask


WRONG_WINDOW = {
    "window + 1 keys (>= instead of >)": _window(low=1),
    "window - 1 keys": _window(low=-1),
    "queries at the start of the keys": _window(aligned=False),
    "not causal": _window(causal=False),
    "window ignored": _window(use_window=False),
    "True and False swapped": _window(invert=True),
    "transposed": _window(transpose=True),
    "a float mask": _window(dtype=torch.float32),
    "no ValueError for window < 1": _window(check=False),
    "answer key": lambda tq, tk=None, w=None: key()[1].sliding_window_mask(tq, tk, w),
}


# ----------------------------------------------------------------------------- stretch: llama3 frequencies


def _llama3(swap_bands=False, swap_edges=False, invert=False, blend=True, two_pi=True, step=2, scale="llama3",
            out_dtype=torch.float32, check=True):
    def llama3_frequencies(head_dim, theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192):
        if check and (head_dim < 2 or head_dim % 2 or high_freq_factor <= low_freq_factor):
            raise ValueError("bad input")
        low, high, L_old = low_freq_factor, high_freq_factor, original_max_position_embeddings
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim * (step / 2))
        if scale == "plain":
            return inv_freq.to(out_dtype)
        if scale == "linear":
            return (inv_freq / factor).to(out_dtype)
        wavelen = (2 * math.pi if two_pi else 1.0) / inv_freq
        fast_edge, slow_edge = (L_old / low, L_old / high) if swap_edges else (L_old / high, L_old / low)
        fast, slow = wavelen < fast_edge, wavelen > slow_edge
        if swap_bands:
            fast, slow = slow, fast
        smooth = (L_old / wavelen - low) / (high - low) if high != low else torch.zeros_like(wavelen)
        if invert:
            smooth = 1 - smooth
        middle = (1 - smooth) * inv_freq / factor + smooth * inv_freq if blend else inv_freq
        return torch.where(fast, inv_freq, torch.where(slow, inv_freq / factor, middle)).to(out_dtype)
    return llama3_frequencies


WRONG_LLAMA3 = {
    "bands swapped": _llama3(swap_bands=True),
    "band edges swapped": _llama3(swap_edges=True),
    "blend the wrong way": _llama3(invert=True),
    "no blend between the edges": _llama3(blend=False),
    "wavelength without 2 pi": _llama3(two_pi=False),
    "linear scaling": _llama3(scale="linear"),
    "no scaling": _llama3(scale="plain"),
    "exponents i / head_dim": _llama3(step=1),
    "float64 result": _llama3(out_dtype=torch.float64),
    "no ValueError for bad input": _llama3(check=False),
    "answer key": lambda d, t, f, lo, hi, L_old: key()[0].rope_frequencies(d, t, {
        "rope_type": "llama3", "factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
        "original_max_position_embeddings": L_old}),
}


# ----------------------------------------------------------------------------- stretch: interleaved -> half-split


def _permute(inverse=False, per_head=True, axis=0, check=True):
    def interleaved_to_half(weight, n_heads):
        rows = weight.size(axis)
        heads = n_heads if per_head else 1
        if check and (rows % n_heads or (rows // n_heads) % 2):
            raise ValueError("bad shape")
        D = rows // heads
        grid = (heads, 2, D // 2) if inverse else (heads, D // 2, 2)
        order = torch.arange(rows).reshape(grid).transpose(1, 2).reshape(-1)
        return weight.index_select(axis, order)
    return interleaved_to_half


WRONG_PERMUTE = {
    "the inverse permutation": _permute(inverse=True),
    "one big head": _permute(per_head=False),
    "columns permuted (raises)": _permute(axis=1, check=False),
    "unchanged": lambda w, n: w.clone(),
    "no ValueError for an odd head size": _permute(check=False),
    "answer key": lambda w, n: key()[0].interleaved_to_half(w, n),
    "answer key's half_to_interleaved": lambda w, n: key()[0].half_to_interleaved(w, n),
}

EX09_WRONG = {"rotate_half": WRONG_ROTATE, "rope_cos_sin": WRONG_COS_SIN, "apply_rope": WRONG_APPLY,
              "repeat_kv": WRONG_REPEAT, "swiglu": WRONG_SWIGLU, "sliding_window_mask": WRONG_WINDOW,
              "llama3_frequencies": WRONG_LLAMA3, "interleaved_to_half": WRONG_PERMUTE}
WRONG = [(name, label, fn) for name, cases in EX09_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", WRONG, ids=[f"ex09.{n}: {l}" for n, l, _ in WRONG])
def test_wrong_answer_fails(name, label, fn, seed):
    assert_wrong_answer_fails("ex09", name, label, fn, seed)


def test_messages_name_the_likely_mistake():
    cases = {
        ("rotate_half", "signs the other way: [x2, -x1]"): "signs are the other way round",
        ("rotate_half", "no minus sign: [x2, x1]"): "minus sign is missing",
        ("rotate_half", "halves kept their places: [x1, -x2]"): "kept their places",
        ("rotate_half", "interleaved pairs"): "interleaved layout",
        ("rotate_half", "no error for an odd dimension"): "ValueError was expected",
        ("rotate_half", "halves along the first dimension"): "along the first dimension",
        ("swiglu", "no ValueError for bad shapes"): "raised RuntimeError",
        ("rope_cos_sin", "angles repeated twice in a row (repeat_interleave)"): "twice in a row",
        ("rope_cos_sin", "angles not repeated: (..., T, D/2)"): "not repeated over both halves",
        ("rope_cos_sin", "positions taken as 0..T-1"): "use position_ids",
        ("rope_cos_sin", "cos and sin swapped"): "cos and sin are swapped",
        ("rope_cos_sin", "positions divided by the frequencies"): "divided by the frequencies",
        ("rope_cos_sin", "float64 result"): "float32",
        ("rope_cos_sin", "no TypeError for float positions"): "TypeError was expected",
        ("rope_cos_sin", "answer key's RotaryEmbedding"): "course_lib is the answer key",
        ("apply_rope", "rotation the wrong way"): "wrong way",
        ("apply_rope", "interleaved pairs"): "interleaved layout",
        ("apply_rope", "cos and sin swapped"): "cos and sin are swapped",
        ("apply_rope", "rotate_half missing"): "rotate_half is missing",
        ("apply_rope", "cos and sin not cast to x's dtype"): "cast cos and sin to x.dtype",
        ("repeat_kv", "heads tiled with repeat"): "tiled",
        ("repeat_kv", "heads tiled with cat"): "tiled",
        ("repeat_kv", "copies along the tokens"): "along the tokens",
        ("repeat_kv", "answer key through the llama module"): "course_lib is the answer key",
        ("swiglu", "GELU"): "GELU",
        ("swiglu", "gate and up swapped"): "swapped",
        ("swiglu", "sigmoid gate (plain GLU)"): "plain GLU",
        ("swiglu", "SiLU of the product"): "applied to the product",
        ("swiglu", "SiLU with the wrong sign"): "wrong sign",
        ("swiglu", "F.silu (a shortcut)"): "ready-made shortcut",
        ("swiglu", "nn.SiLU (a shortcut)"): "ready-made shortcut",
        ("swiglu", "F.glu (a shortcut)"): "ready-made shortcut",
        ("sliding_window_mask", "window + 1 keys (>= instead of >)"): "one key too many",
        ("sliding_window_mask", "window - 1 keys"): "one key too few",
        ("sliding_window_mask", "queries at the start of the keys"): "LAST t_query positions",
        ("sliding_window_mask", "not causal"): "causal part is missing",
        ("sliding_window_mask", "window ignored"): "window is ignored",
        ("sliding_window_mask", "True and False swapped"): "True and False are swapped",
        ("sliding_window_mask", "a float mask"): "boolean mask",
        ("llama3_frequencies", "bands swapped"): "bands are swapped",
        ("llama3_frequencies", "band edges swapped"): "edges are swapped",
        ("llama3_frequencies", "blend the wrong way"): "blend runs the wrong way",
        ("llama3_frequencies", "no blend between the edges"): "left unchanged",
        ("llama3_frequencies", "wavelength without 2 pi"): "2 pi is missing",
        ("llama3_frequencies", "linear scaling"): "'linear' scaling",
        ("llama3_frequencies", "exponents i / head_dim"): "2i / head_dim",
        ("interleaved_to_half", "the inverse permutation"): "inverse permutation",
        ("interleaved_to_half", "one big head"): "one big head",
        ("interleaved_to_half", "unchanged"): "rows are unchanged",
        ("interleaved_to_half", "answer key"): "course_lib is the answer key",
    }
    for (name, label), text in cases.items():
        messages = []
        for seed in SEEDS:  # some mistakes only show on some inputs; the message must name it where it shows
            with pytest.raises(GradeError) as info:
                checks("ex09")[name].grade(EX09_WRONG[name][label], np.random.default_rng(seed))
            messages.append(str(info.value))
            if text in messages[-1]:
                break
        assert text in messages[-1], f"{name}, {label!r}: {messages[0]}"


# ----------------------------------------------------------------------------- right answers, written differently


def _rotate_roll(x):
    """roll by half a head brings the second half to the front; then negate that half."""
    if x.size(-1) % 2:
        raise ValueError("odd")
    half = x.size(-1) // 2
    sign = torch.cat((-torch.ones(half, dtype=x.dtype), torch.ones(half, dtype=x.dtype)))
    return x.roll(half, dims=-1) * sign


def _rotate_chunk(x):
    if x.shape[-1] % 2:
        raise ValueError("odd")
    a, b = x.chunk(2, dim=-1)
    return torch.cat([b.neg(), a], dim=-1)


def _cos_sin_float64(position_ids, inv_freq):
    """Angles in float64, rounded to float32 once at the end."""
    if not (position_ids.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError("integers only")
    angles = torch.einsum("...t,f->...tf", position_ids.double(), inv_freq.double())
    angles = angles.repeat(*([1] * (angles.dim() - 1)), 2)
    return angles.cos().float(), angles.sin().float()


def _apply_halves(x, cos, sin):
    """The pair formula on the two halves; bfloat16 computed in float32 and rounded once at the end."""
    if x.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape or cos.shape[1:] != x.shape[2:]:
        raise ValueError("shapes")
    half = x.size(-1) // 2
    work = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    c, s = cos[:, None, :, :half].to(work), sin[:, None, :, :half].to(work)
    a, b = x[..., :half].to(work), x[..., half:].to(work)
    return torch.cat((a * c - b * s, b * c + a * s), -1).to(x.dtype)


def _repeat_index(x, n_rep):
    """index_select with head h -> KV head h // n_rep."""
    if n_rep < 1 or x.dim() != 4:
        raise ValueError("bad input")
    return x.index_select(1, torch.arange(x.size(1) * n_rep) // n_rep)


def _swiglu_linear(x, gate_weight, up_weight, down_weight):
    """F.linear (allowed) and SiLU from exp."""
    if gate_weight.shape[1] != x.shape[-1] or up_weight.shape != gate_weight.shape or \
            down_weight.shape != gate_weight.T.shape:
        raise ValueError("shapes")
    gate = F.linear(x, gate_weight)
    return F.linear(gate / (1 + torch.exp(-gate)) * F.linear(x, up_weight), down_weight)


def _swiglu_einsum(x, gate_weight, up_weight, down_weight):
    if gate_weight.shape[1] != x.shape[-1] or up_weight.shape != gate_weight.shape or \
            down_weight.shape != gate_weight.T.shape:
        raise ValueError("shapes")
    g = torch.einsum("...c,fc->...f", x, gate_weight)
    u = torch.einsum("...c,fc->...f", x, up_weight)
    return torch.einsum("...f,cf->...c", g * torch.sigmoid(g) * u, down_weight)


def _window_tril(t_query, t_key=None, window=None):
    """Two triangles of ones: below the causal diagonal, minus below the window's lower edge."""
    t_key = t_query if t_key is None else t_key
    if t_key < t_query or (window is not None and window < 1):
        raise ValueError("bad input")
    ones = torch.ones(t_query, t_key, dtype=torch.bool)
    mask = ones.tril(t_key - t_query)
    if window is not None:
        mask = mask & ~ones.tril(t_key - t_query - window)
    return mask


def _window_loops(t_query, t_key=None, window=None):
    t_key = t_query if t_key is None else t_key
    if t_key < t_query or (window is not None and window < 1):
        raise ValueError("bad input")
    rows = []
    for i in range(t_query):
        p = i + t_key - t_query
        rows.append([j <= p and (window is None or p - j < window) for j in range(t_key)])
    return torch.tensor(rows, dtype=torch.bool).reshape(t_query, t_key)


def _llama3_float64(head_dim, theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192):
    """transformers' loop, in float64, rounded to float32 at the end."""
    if head_dim < 2 or head_dim % 2 or high_freq_factor <= low_freq_factor:
        raise ValueError("bad input")
    L_old = original_max_position_embeddings
    out = []
    for i in range(head_dim // 2):
        f = theta ** (-2 * i / head_dim)
        wavelen = 2 * math.pi / f
        if wavelen < L_old / high_freq_factor:
            out.append(f)
        elif wavelen > L_old / low_freq_factor:
            out.append(f / factor)
        else:
            smooth = (L_old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64).float()


def _permute_reshape(weight, n_heads):
    """Move the rows themselves: (heads, pairs, 2, *rest) -> (heads, 2, pairs, *rest)."""
    rows = weight.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError("bad shape")
    D = rows // n_heads
    return weight.reshape(n_heads, D // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _permute_lists(weight, n_heads):
    rows = weight.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError("bad shape")
    D = rows // n_heads
    order = [h * D + 2 * i + j for h in range(n_heads) for j in range(2) for i in range(D // 2)]
    return weight[order]


# Each wrong-answer builder above with every knob at its right setting must pass: then each wrong
# answer differs from a right one by exactly the mistake its label names.
RIGHT = {
    "rotate_half": {"roll and a sign vector": _rotate_roll, "chunk and cat": _rotate_chunk,
                    "the builder, no mistake": _rotate()},
    "rope_cos_sin": {"float64 angles, rounded once": _cos_sin_float64, "the builder, no mistake": _cos_sin()},
    "apply_rope": {"the pair formula on the halves, bfloat16 in float32": _apply_halves, "the builder, no mistake": _apply()},
    "repeat_kv": {"index_select of h // n_rep": _repeat_index, "repeat_interleave (the builder, no mistake)":
                  _repeat()},
    "swiglu": {"F.linear and exp": _swiglu_linear, "einsum": _swiglu_einsum, "the builder, no mistake": _swiglu()},
    "sliding_window_mask": {"two triangles": _window_tril, "loops": _window_loops,
                            "the builder, no mistake": _window()},
    "llama3_frequencies": {"transformers' loop in float64": _llama3_float64, "the builder, no mistake": _llama3()},
    "interleaved_to_half": {"rows moved with reshape and transpose": _permute_reshape,
                            "a list of row numbers": _permute_lists, "the builder, no mistake": _permute()},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", [(n, l, f) for n, c in RIGHT.items() for l, f in c.items()],
                         ids=[f"ex09.{n}: {l}" for n, c in RIGHT.items() for l in c])
def test_right_answer_written_differently_passes(name, label, fn, seed):
    checks("ex09")[name].grade(fn, np.random.default_rng(seed))


def test_every_exercise_has_wrong_and_right_answers():
    assert set(EX09_WRONG) == set(RIGHT) == set(checks("ex09"))
    assert all(len(cases) >= 4 for cases in EX09_WRONG.values())


def test_every_switched_off_name_exists_in_this_torch():
    """A misspelt shortcut would silently stay switched on."""
    from course_lib.grading import ex09

    assert unresolved_switched_off_names(ex09) == []


def test_points_add_up():
    exercises = checks("ex09").values()
    assert sum(ex.points for ex in exercises if not ex.stretch) == 12
    assert sum(ex.points for ex in exercises if ex.stretch) == 7
    assert {ex.function for ex in exercises if ex.stretch} == {"llama3_frequencies", "interleaved_to_half"}


def test_a_check_leaves_the_global_random_generator_alone():
    assert_checks_leave_the_global_rng_alone("ex09", FILE, {n: next(iter(c.values())) for n, c in RIGHT.items()})
