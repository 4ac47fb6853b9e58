"""The ex02 and ex03 checks have teeth: solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, or a ready-made shortcut the
chapter asks them not to use (the ex02 checks switch those off). Every one must be caught
with a GradeError, for several seeds.
"""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import registry
from course_lib.grading.registry import GradeError
from course_lib import tokenization
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
    "rms_norm": {
        "subtracts the mean (LayerNorm)": lambda x, w, eps=1e-6: (x - x.mean(-1, keepdim=True)) / torch.sqrt(
            x.var(-1, unbiased=False, keepdim=True) + eps) * w,
        "eps outside the root": lambda x, w, eps=1e-6: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w,
        "forgets the weight": lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps),
        "sum of squares instead of their mean": lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w,
        "over the first dimension": lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps) * w,
        "F.rms_norm shortcut": lambda x, w, eps=1e-6: F.rms_norm(x, (x.shape[-1],), w, eps),
        "torch.rms_norm alias": lambda x, w, eps=1e-6: torch.rms_norm(x, [x.shape[-1]], w, eps),
    },
    "alibi_bias": {
        "sign flipped": lambda n, tq, tk: -_alibi(n, tq, tk),
        "queries at 0 .. t_query-1 (no cache offset)": lambda n, tq, tk: _alibi(n, tq, tk, offset=False),
        "absolute key positions (BLOOM's row shift)": lambda n, tq, tk: _alibi(n, tq, tk, absolute=True),
        "slopes start at 2 ** 0": lambda n, tq, tk: _alibi(n, tq, tk, slopes=_slopes(n, start=0)),
        "slopes spread over n heads, not n0": lambda n, tq, tk: _alibi(
            n, tq, tk, slopes=[2.0 ** (-8 * (h + 1) / n) for h in range(n)]),
        "extra heads at even steps": lambda n, tq, tk: _alibi(n, tq, tk, slopes=_slopes(n, odd=False)),
        "slope 1 for every head": lambda n, tq, tk: _alibi(n, tq, tk, slopes=[1.0] * n),
    },
}


def _slopes(n, start=1, odd=True):
    n0 = 2 ** int(math.log2(n))
    first = [2.0 ** (-8 * (h + start) / n0) for h in range(n0)]
    return first + [2.0 ** (-8 * ((2 * h + 1) if odd else (2 * h + 2)) / (2 * n0)) for h in range(n - n0)]


def _alibi(n, tq, tk, slopes=None, offset=True, absolute=False):
    query_pos = torch.arange(tq)[:, None] + ((tk - tq) if offset else 0)
    key_pos = torch.arange(tk)[None, :]
    distance = key_pos if absolute else key_pos - query_pos
    return torch.tensor(slopes or _slopes(n))[:, None, None] * distance


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


def _learn(tie="age", weighted=True, recount=True, stop=True):
    """learn_merges with one mistake: ``tie`` "first" (max keeps the first pair seen), "text" (tuple order
    of the strings), "newest" (the newest symbols win); counts unweighted; counted once; never stops."""
    def learn_merges(word_counts, num_merges):
        words = {tuple(w): (n if weighted else 1) for w, n in word_counts.items()}
        made, merges = {}, []
        counts = tokenization.get_pair_counts(words)
        for _ in range(num_merges):
            if recount:
                counts = tokenization.get_pair_counts(words)
            if not counts and stop:
                break
            age = lambda s: (1, made[s]) if s in made else (0, ord(s))  # noqa: E731
            if tie == "first":
                best = max(counts, key=counts.get)
            elif tie == "text":
                best = min(counts, key=lambda p: (-counts[p], p))
            elif tie == "newest":
                best = min(counts, key=lambda p: (-counts[p], [-x for x in age(p[0])], [-x for x in age(p[1])]))
            else:
                best = min(counts, key=lambda p: (-counts[p], age(p[0]), age(p[1])))
            if not recount:
                del counts[best]
            merges.append(best)
            made.setdefault(best[0] + best[1], len(made))
            words = {merge_pair(w, best): n for w, n in words.items()}
        return merges
    return learn_merges


_CHAR_TO_BYTE = {c: b for b, c in tokenization.bytes_to_unicode().items()}


def _decode(per_token=False, errors="replace", specials="own", encoding="utf-8"):
    def byte_level_decode(tokens):
        chunks = []
        for token in tokens:
            if all(c in _CHAR_TO_BYTE for c in token):
                chunks.append(bytes(_CHAR_TO_BYTE[c] for c in token))
            elif specials == "own":
                chunks.append(token.encode("utf-8"))
            elif specials == "lookup":
                chunks.append(bytes(_CHAR_TO_BYTE[c] for c in token))  # KeyError
        if per_token:
            return "".join(c.decode(encoding, errors=errors) for c in chunks)
        return b"".join(chunks).decode(encoding, errors=errors)
    return byte_level_decode


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
    "learn_merges": {
        "max() keeps the first of equal pairs": _learn(tie="first"),
        "ties by the pairs' text": _learn(tie="text"),
        "ties to the newest symbols": _learn(tie="newest"),
        "ignores the word counts": _learn(weighted=False),
        "counts the pairs once, never again": _learn(recount=False),
        "does not stop when nothing is left (raises)": _learn(stop=False),
    },
    "byte_level_decode": {
        "decodes token by token": _decode(per_token=True),
        "drops invalid bytes": _decode(errors="ignore"),
        "raises on invalid UTF-8": _decode(errors="strict"),
        "drops special tokens": _decode(specials="drop"),
        "looks special tokens up in the byte table": _decode(specials="lookup"),
        "latin-1 instead of UTF-8": _decode(encoding="latin-1"),
        "joins the tokens' text": lambda tokens: "".join(tokens),
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


MESSAGES = [
    ("ex02", "layer_norm", EX02_WRONG["layer_norm"]["unbiased variance"], "the unbiased variance (divided by d - 1)"),
    ("ex02", "layer_norm", EX02_WRONG["layer_norm"]["eps outside the root"], "eps is added outside the square root"),
    ("ex02", "stable_softmax", EX02_WRONG["stable_softmax"]["NaN on fully masked rows"], "contains NaN"),
    ("ex02", "rms_norm", EX02_WRONG["rms_norm"]["subtracts the mean (LayerNorm)"], "LayerNorm: you subtracted the mean"),
    ("ex02", "rms_norm", EX02_WRONG["rms_norm"]["eps outside the root"], "eps is added outside the square root"),
    ("ex02", "rms_norm", EX02_WRONG["rms_norm"]["forgets the weight"], "the weight is missing"),
    ("ex02", "alibi_bias", EX02_WRONG["alibi_bias"]["sign flipped"], "the sign is flipped"),
    ("ex02", "alibi_bias", EX02_WRONG["alibi_bias"]["queries at 0 .. t_query-1 (no cache offset)"],
     "the last t_query of the t_key"),
    ("ex02", "alibi_bias", EX02_WRONG["alibi_bias"]["slopes spread over n heads, not n0"], "not a power of two"),
    ("ex03", "learn_merges", EX03_WRONG["learn_merges"]["ties by the pairs' text"], "A tie goes to the pair"),
    ("ex03", "learn_merges", EX03_WRONG["learn_merges"]["ignores the word counts"], "weighted by its count"),
    ("ex03", "byte_level_decode", EX03_WRONG["byte_level_decode"]["decodes token by token"], "each token on its own"),
    ("ex03", "byte_level_decode", EX03_WRONG["byte_level_decode"]["raises on invalid UTF-8"], "must decode to U+FFFD"),
    ("ex03", "byte_level_decode", EX03_WRONG["byte_level_decode"]["looks special tokens up in the byte table"],
     "stands for its own text"),
]


@pytest.mark.parametrize("chapter,name,fn,message", MESSAGES, ids=[m for *_, m in MESSAGES])
def test_checks_name_the_mistake(chapter, name, fn, message):
    for seed in SEEDS:
        with pytest.raises(GradeError, match=re.escape(message)):
            checks(chapter)[name].grade(fn, np.random.default_rng(seed))
