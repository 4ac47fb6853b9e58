"""Checks for chapter 03's exercises (``exercises/ex03_tokenizers.py``).

Inputs are random (random text, random words built from a real vocabulary, random merge
tables); expected answers come from ``course_lib.tokenization``, which is tested line for
line against the ``tokenizers`` library.
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from course_lib import tokenization
from course_lib.grading.registry import GradeError, exercise, expect_equal

# Characters for random text: letters (some accented), digits, ASCII and Unicode punctuation,
# symbols BERT counts as punctuation, and several kinds of whitespace.
TEXT_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüñÅß0123456789") \
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("«»¿¡—–…“”‘’·") + [" "] * 12 + ["\t", "\n", "\u3000"]


@functools.lru_cache(maxsize=1)
def minilm_vocab() -> dict[str, int]:
    """all-MiniLM-L6-v2's real WordPiece vocabulary (30,522 entries)."""
    from course_lib.assets import asset_path

    return tokenization.read_vocab_txt(asset_path("all-MiniLM-L6-v2") / "vocab.txt")


def random_text(rng: np.random.Generator, length: int) -> str:
    return "".join(TEXT_CHARS[i] for i in rng.integers(0, len(TEXT_CHARS), size=length))


def as_list_of_str(value, what: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise GradeError(f"{what}: expected a list of strings, got {value!r}")
    return list(value)


@exercise("ex03.bytes_to_unicode", points=2,
          hint="Printable bytes 33..126, 161..172 and 174..255 map to chr(byte); the other 68 bytes, in "
               "increasing order, get chr(256), chr(257), ...")
def _(fn, rng):
    got = fn()
    if not isinstance(got, dict):
        raise GradeError(f"bytes_to_unicode(): expected a dict {{byte: character}}, got {type(got).__name__}")
    expected = tokenization.bytes_to_unicode()
    if sorted(got) != list(range(256)):
        raise GradeError(f"bytes_to_unicode(): expected one entry for each byte 0..255, got {len(got)} keys")
    if len(set(got.values())) != 256:
        raise GradeError("bytes_to_unicode(): two bytes map to the same character; the table must be one-to-one "
                         "so that decoding can find the byte again")
    for byte in rng.permutation(256).tolist():
        expect_equal(got[byte], expected[byte], f"bytes_to_unicode()[{byte}]")


@exercise("ex03.bert_split", points=2,
          hint="Walk the characters: whitespace ends the current word; a punctuation character ends it "
               "AND is appended on its own. ASCII 33-47, 58-64, 91-96, 123-126 or category P* is punctuation.")
def _(fn, rng):
    cases = ["Hello, world! (x+1)", "", "   ", "don't", "a\tb\nc", "«quoted» — text…", "$5.00 < 10^3"]
    cases += [random_text(rng, int(rng.integers(1, 60))) for _ in range(60)]
    for text in cases:
        what = f"bert_split({text!r})"
        expected = tokenization.bert_pre_tokenize(text, lowercase=False, strip_accents=False,
                                                  handle_chinese_chars=False, clean_text=False)
        expect_equal(as_list_of_str(fn(text), what), expected, what)


@exercise("ex03.wordpiece_word", points=2,
          hint="Greedy longest match: for each start, try end = len(word) down to start+1; pieces after the "
               "first need the '##' prefix; no match at some start -> the whole word is [unk_token].")
def _(fn, rng):
    vocab = minilm_vocab()
    whole = [t for t in vocab if t.isalpha() and not t.startswith("[")]
    cases = [("unaffable", 100), ("hello", 100), ("", 100), ("x" * 101, 100), ("hello", 3)]
    for _ in range(60):
        parts = [whole[i] for i in rng.integers(0, len(whole), size=int(rng.integers(1, 4)))]
        word = "".join(parts)
        if rng.random() < 0.2:  # a character the vocabulary lacks somewhere inside
            pos = int(rng.integers(0, len(word) + 1))
            word = word[:pos] + "\u2603" + word[pos:]
        cases.append((word, int(rng.choice([100, 100, 100, 12]))))
    for word, max_chars in cases:
        what = f"wordpiece_word({word!r}, vocab=all-MiniLM-L6-v2's, max_input_chars_per_word={max_chars})"
        expected = tokenization.wordpiece_word(word, vocab, unk_token="[UNK]", max_input_chars_per_word=max_chars)
        expect_equal(as_list_of_str(fn(word, vocab, "[UNK]", max_chars), what), expected, what)
    what = "wordpiece_word('\u2603', vocab, unk_token='<unk>'), a character missing from the vocabulary"
    expect_equal(as_list_of_str(fn("\u2603", vocab, "<unk>", 100), what), ["<unk>"], what)


def random_words(rng: np.random.Generator, alphabet: str, n: int, max_len: int = 7) -> dict[tuple[str, ...], int]:
    words = {}
    for _ in range(n):
        size = int(rng.integers(1, max_len + 1))
        words[tuple(alphabet[i] for i in rng.integers(0, len(alphabet), size=size))] = int(rng.integers(1, 20))
    return words


@exercise("ex03.pair_counts", points=1,
          hint="For each word and its frequency, add the frequency to every pair in zip(word, word[1:]).")
def _(fn, rng):
    cases = [{("l", "o", "w"): 5, ("l", "o", "t"): 2}, {("a", "a", "a"): 3}, {}]
    cases += [random_words(rng, "abcd", int(rng.integers(1, 12))) for _ in range(20)]
    for words in cases:
        what = f"pair_counts({words})"
        given = copy.deepcopy(words)
        got = fn(given)
        if given != words:
            raise GradeError(f"{what}: your function changed its input; only read it")
        try:
            got = {tuple(k): int(v) for k, v in dict(got).items()}
        except (TypeError, ValueError):
            raise GradeError(f"{what}: expected a dict {{(left, right): count}}, got {got!r}") from None
        expected = dict(tokenization.get_pair_counts(words))
        expect_equal({k: v for k, v in got.items() if v}, expected, what)


@exercise("ex03.merge_pair", points=1,
          hint="Index loop: if (word[i], word[i+1]) == pair, append the joined symbol and advance by 2, "
               "else append word[i] and advance by 1.")
def _(fn, rng):
    cases = [(("l", "o", "w"), ("l", "o")), (("a", "a", "a"), ("a", "a")), (("a", "a", "a", "a"), ("a", "a")), ((), ("a", "b"))]
    symbols = ["a", "b", "ab", "ba"]  # multi-character symbols, as after earlier merges
    for _ in range(40):
        word = tuple(rng.choice(symbols, size=int(rng.integers(1, 9))).tolist())
        pair = tuple(rng.choice(symbols, size=2).tolist()) if rng.random() < 0.5 else \
            (word + word)[int(rng.integers(0, len(word))):][:2]  # often a pair that occurs
        cases.append((word, tuple(pair) if len(pair) == 2 else ("a", "b")))
    for word, pair in cases:
        what = f"merge_pair({word}, {pair})"
        got = fn(word, pair)
        expect_equal(tuple(as_list_of_str(got, what)), tokenization.merge_pair(word, pair), what)


def random_ranks(rng: np.random.Generator, alphabet: str, n_merges: int) -> dict[tuple[str, str], int]:
    """A merge table a BPE trainer could have learned: each merge joins two existing symbols."""
    symbols, ranks = list(alphabet), {}
    while len(ranks) < n_merges:
        left, right = (symbols[i] for i in rng.integers(0, len(symbols), size=2))
        if (left, right) not in ranks and len(left + right) <= 6:
            ranks[(left, right)] = len(ranks)
            symbols.append(left + right)
    return ranks


@exercise("ex03.bpe_word", points=2,
          hint="Loop: among the adjacent pairs, pick the one with the lowest rank (missing = infinity); if "
               "it is not in ranks, stop; otherwise merge all its occurrences and repeat.")
def _(fn, rng):
    cases = [("lower", {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2}), ("x", {}), ("abc", {})]
    for _ in range(30):
        ranks = random_ranks(rng, "abc", int(rng.integers(1, 15)))
        word = "".join(rng.choice(list("abc"), size=int(rng.integers(1, 12))).tolist())
        cases.append((word, ranks))
    for word, ranks in cases:
        what = f"bpe_word({word!r}, ranks={ranks})"
        expect_equal(as_list_of_str(fn(word, dict(ranks)), what), tokenization.bpe_word(word, ranks), what)


@exercise("ex03.pad_batch", points=2,
          hint="Cut to max_length first (seq[:max_length]); find the longest; add [pad_id] * missing on the "
               "right or the left, and a mask of 1s for tokens and 0s for pads on the same side.")
def _(fn, rng):
    cases = [([[5, 6, 7], [8]], 0, None, "right"), ([[5, 6, 7], [8]], 0, None, "left"), ([[1]], 9, None, "right")]
    for _ in range(25):
        batch = [rng.integers(3, 1000, size=int(rng.integers(1, 9))).tolist() for _ in range(int(rng.integers(1, 6)))]
        max_length = None if rng.random() < 0.5 else int(rng.integers(1, 8))
        cases.append((batch, int(rng.integers(0, 3)), max_length, str(rng.choice(["right", "left"]))))
    for batch, pad_id, max_length, side in cases:
        what = f"pad_batch({batch}, pad_id={pad_id}, max_length={max_length}, padding_side={side!r})"
        given = copy.deepcopy(batch)
        got = fn(given, pad_id, max_length, side)
        if given != batch:
            raise GradeError(f"{what}: your function changed the input lists; build new ones instead")
        try:
            ids, mask = got
            ids, mask = [list(map(int, row)) for row in ids], [list(map(int, row)) for row in mask]
        except (TypeError, ValueError):
            raise GradeError(f"{what}: expected a pair (input_ids, attention_mask) of lists of lists, got {got!r}") from None
        expected_ids, expected_mask = tokenization.pad_batch(batch, pad_id, max_length, side)
        expect_equal(ids, expected_ids, what + " -> input_ids")
        expect_equal(mask, expected_mask, what + " -> attention_mask")
