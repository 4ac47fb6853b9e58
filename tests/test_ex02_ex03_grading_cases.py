"""The ex02 and ex03 checks have teeth: solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, or a ready-made shortcut the
chapter asks them not to use (the ex02 checks switch those off). Every one must be caught
with a GradeError, for several seeds.
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import registry
from course_lib.grading.registry import GradeError
from course_lib.tokenization import merge_pair
from helpers import assert_wrong_answer_fails, chapter_checks, have_solutions, load_exercise_module

SEEDS = range(3)
FILES = {"ex02": "ex02_layers.py", "ex03": "ex03_tokenizers.py"}
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


# ----------------------------------------------------------------------------- ex02

def _softmax_naive(s):
    e = s.exp()
    return e / e.sum(-1, keepdim=True)


def _softmax_max_only(s):  # stable for large values, but NaN on fully masked rows
    e = (s - s.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _attention(scale=True, invert=False, softmax=None):
    def attention(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1)
        if scale:
            scores = scores / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
        return (softmax or _safe_softmax)(scores) @ v
    return attention


def _safe_softmax(s):
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = (s - m).exp()
    t = e.sum(-1, keepdim=True)
    return e / torch.where(t > 0, t, torch.ones_like(t))


EX02_WRONG = {
    "linear": {
        "ignores the bias": lambda x, w, b: x @ w.T,
        "F.linear shortcut": lambda x, w, b: F.linear(x, w, b),
    },
    "layer_norm": {
        "unbiased variance": lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b,
        "eps outside the root": lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=False, keepdim=True) + eps) * w + b,
        "forgets weight and bias": lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps),
        "F.layer_norm shortcut": lambda x, w, b, eps=1e-5: F.layer_norm(x, (x.shape[-1],), w, b, eps),
        "normalises over the first dimension": lambda x, w, b, eps=1e-5: (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps) * w + b,
    },
    "gelu_tanh": {
        "exact GELU": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "wrong constant": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.04 * x ** 3))),
        "F.gelu shortcut": lambda x: F.gelu(x, approximate="tanh"),
    },
    "stable_softmax": {
        "naive exp overflows": _softmax_naive,
        "NaN on fully masked rows": _softmax_max_only,
        "torch.softmax shortcut": lambda s: torch.softmax(s, -1),
        "softmax over the first dimension": lambda s: _safe_softmax(s.transpose(0, -1)).transpose(0, -1) if s.ndim > 1 else _safe_softmax(s),
    },
    "causal_mask": {
        "tril ignores the cache offset": lambda tq, tk: torch.tril(torch.ones(tq, tk, dtype=torch.bool)),
        "diagonal excluded": lambda tq, tk: torch.tril(torch.ones(tq, tk, dtype=torch.bool), diagonal=tk - tq - 1),
        "int instead of bool": lambda tq, tk: torch.tril(torch.ones(tq, tk, dtype=torch.long), diagonal=tk - tq),
        "upper triangle": lambda tq, tk: torch.triu(torch.ones(tq, tk, dtype=torch.bool), diagonal=tk - tq),
    },
    "attention": {
        "no 1/sqrt(D) scale": _attention(scale=False),
        "mask inverted": _attention(invert=True),
        "NaN for fully masked queries": _attention(softmax=_softmax_max_only),
        "F.scaled_dot_product_attention shortcut": lambda q, k, v, mask=None: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    },
    "split_heads": {
        "heads taken from the wrong axis": lambda x, n: x.view(x.shape[0], n, x.shape[1], x.shape[2] // n),
        "no transpose": lambda x, n: x.view(x.shape[0], x.shape[1], n, x.shape[2] // n),
    },
    "merge_heads": {
        "reshape without transpose": lambda x: x.reshape(x.shape[0], x.shape[2], -1),
        "heads and features swapped": lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1),
    },
}


# ----------------------------------------------------------------------------- ex03

def _bytes_identity():
    return {b: chr(b) for b in range(256)}


def _bytes_offset_every_unprintable():
    table = {}
    for b in range(256):
        printable = 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
        table[b] = chr(b) if printable else chr(256 + b)
    return table


def _split_whitespace_only(text):
    return text.split()


def _split_category_p_only(text):
    words, cur = [], ""
    for ch in text:
        if ch.isspace() or unicodedata.category(ch).startswith("P"):
            if cur:
                words.append(cur)
            cur = ""
            if not ch.isspace():
                words.append(ch)
        else:
            cur += ch
    return words + ([cur] if cur else [])


def _wordpiece(shortest=False, prefix="##", unk_piece_only=False):
    def wordpiece_word(word, vocab, unk_token="[UNK]", max_input_chars_per_word=100):
        if len(word) > max_input_chars_per_word:
            return [unk_token]
        pieces, start = [], 0
        while start < len(word):
            ends = range(start + 1, len(word) + 1) if shortest else range(len(word), start, -1)
            for end in ends:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                if piece in vocab:
                    break
            else:
                if unk_piece_only:
                    pieces.append(unk_token)
                    start += 1
                    continue
                return [unk_token]
            pieces.append(piece)
            start = end
        return pieces
    return wordpiece_word


def _pairs_ignoring_frequency(words):
    counts = {}
    for word in words:
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def _pairs_once_per_word(words):
    counts = {}
    for word, n in words.items():
        for pair in set(zip(word, word[1:])):
            counts[pair] = counts.get(pair, 0) + n
    return counts


def _merge_by_string_replace(word, pair):  # loses the boundaries between multi-character symbols
    return tuple(" ".join(word).replace(" ".join(pair), "".join(pair)).split(" ")) if word else ()


def _merge_first_only(word, pair):
    for i in range(len(word) - 1):
        if (word[i], word[i + 1]) == pair:
            return word[:i] + (word[i] + word[i + 1],) + word[i + 2:]
    return word


def _bpe(highest=False, once=False):
    def bpe_word(word, ranks):
        symbols = list(word)
        while len(symbols) > 1:
            pairs = [p for p in zip(symbols, symbols[1:]) if p in ranks]
            if not pairs:
                break
            best = (max if highest else min)(pairs, key=ranks.get)
            symbols = list(merge_pair(tuple(symbols), best))
            if once:
                break
        return symbols
    return bpe_word


def _pad(side_fixed=None, inverted=False, cut_left=False):
    def pad_batch(sequences, pad_id, max_length=None, padding_side="right"):
        side = side_fixed or padding_side
        if max_length is not None:
            sequences = [s[-max_length:] if cut_left else s[:max_length] for s in sequences]
        longest = max(len(s) for s in sequences)
        ids, mask = [], []
        for s in sequences:
            n = longest - len(s)
            one, zero = (0, 1) if inverted else (1, 0)
            if side == "left":
                ids.append([pad_id] * n + list(s))
                mask.append([zero] * n + [one] * len(s))
            else:
                ids.append(list(s) + [pad_id] * n)
                mask.append([one] * len(s) + [zero] * n)
        return ids, mask
    return pad_batch


EX03_WRONG = {
    "bytes_to_unicode": {
        "identity table": _bytes_identity,
        "chr(256 + byte) for unprintable bytes": _bytes_offset_every_unprintable,
    },
    "bert_split": {
        "whitespace only": _split_whitespace_only,
        "Unicode category P only (misses $ + < ^ ...)": _split_category_p_only,
    },
    "wordpiece_word": {
        "shortest match first": _wordpiece(shortest=True),
        "no ## prefix": _wordpiece(prefix=""),
        "[UNK] for one piece only": _wordpiece(unk_piece_only=True),
    },
    "pair_counts": {
        "ignores word frequency": _pairs_ignoring_frequency,
        "each pair once per word": _pairs_once_per_word,
    },
    "merge_pair": {
        "string replace across symbol boundaries": _merge_by_string_replace,
        "first occurrence only": _merge_first_only,
    },
    "bpe_word": {
        "highest rank first": _bpe(highest=True),
        "one merge only": _bpe(once=True),
    },
    "pad_batch": {
        "always right padding": _pad(side_fixed="right"),
        "mask inverted": _pad(inverted=True),
        "truncates from the left": _pad(cut_left=True),
    },
}

WRONG = [("ex02", name, label, fn) for name, cases in EX02_WRONG.items() for label, fn in cases.items()] + \
        [("ex03", name, label, fn) for name, cases in EX03_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("chapter,name,label,fn", WRONG, ids=[f"{c}.{n}: {l}" for c, n, l, _ in WRONG])
def test_wrong_answer_fails(chapter, name, label, fn, seed):
    assert_wrong_answer_fails(chapter, name, label, fn, seed)


def test_every_exercise_has_wrong_answers():
    assert set(EX02_WRONG) == set(checks("ex02")) and set(EX03_WRONG) == set(checks("ex03"))


def test_forbid_restores_the_shortcuts():
    before = (F.layer_norm, torch.softmax, torch.Tensor.softmax)
    with pytest.raises(GradeError):
        checks("ex02")["layer_norm"].grade(EX02_WRONG["layer_norm"]["F.layer_norm shortcut"], np.random.default_rng(0))
    assert (F.layer_norm, torch.softmax, torch.Tensor.softmax) == before
    assert torch.allclose(torch.tensor([0.0, 0.0]).softmax(-1), torch.tensor([0.5, 0.5]))


def test_expect_raises_names_the_reason_and_what_came_back():
    registry.expect_raises(ValueError, lambda: int("x"), "int('x')", "not a number")  # raised: fine
    with pytest.raises(GradeError, match=r"split_heads\(\.\.\.\): 10 is not divisible by 4, so a ValueError "
                                         r"was expected; your function returned a value of type Tensor"):
        registry.expect_raises(ValueError, lambda: torch.zeros(2), "split_heads(...)", "10 is not divisible by 4")
    with pytest.raises(GradeError, match=r"returned \(2, 3\)$"):
        registry.expect_raises(ValueError, lambda: (2, 3), "broadcast_shapes((2,), (3,))", "sizes 2 and 3 clash")
