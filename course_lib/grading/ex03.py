"""Checks for chapter 03's exercises (``exercises/ex03_tokenizers.py``).

Inputs are random (random text, random words built from a real vocabulary, random merge
tables); expected answers come from ``course_lib.tokenization``, which is tested line for
line against the ``tokenizers`` library. Hints go from the idea to a pointer, never the
line; the two stretch exercises (learning BPE merges, byte-level decoding) compare with
references the notebook never shows.
"""

from __future__ import annotations

import collections
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


@exercise("ex03.bert_split", points=2, reference=(
    "course_lib.tokenization.split_on_whitespace_and_punctuation", "course_lib.tokenization.is_punctuation"),
    hints=(
    "Walk the text one character at a time, building the current word: whitespace ends the word and is "
    "dropped; punctuation ends the word and becomes a word of its own.",
    "BERT's punctuation is wider than Unicode's: any ASCII character that is not a letter, digit or "
    "whitespace (codes 33-47, 58-64, 91-96, 123-126), or any character whose `unicodedata.category` "
    "starts with 'P'.",
    "Don't forget the word still being built when the text ends, and never emit an empty word (two "
    "spaces in a row, or punctuation next to a space)."))
def _(fn, rng):
    cases = ["Hello, world! (x+1)", "", "   ", "don't", "a\tb\nc", "«quoted» — text…", "$5.00 < 10^3"]
    cases += [random_text(rng, int(rng.integers(1, 60))) for _ in range(60)]
    for text in cases:
        what = f"bert_split({text!r})"
        expected = tokenization.bert_pre_tokenize(text, lowercase=False, strip_accents=False,
                                                  handle_chinese_chars=False, clean_text=False)
        expect_equal(as_list_of_str(fn(text), what), expected, what)


@exercise("ex03.wordpiece_word", points=2, reference="course_lib.tokenization.wordpiece_word", hints=(
    "Greedy longest match first: from the current position take the longest piece that is in the "
    "vocabulary, then go on from where it ended.",
    "Two loops: the outer one moves the start, the inner one tries ends from the end of the word down to "
    "one character past the start. Every piece after the first is looked up with '##' in front.",
    "If nothing matches at some start, the *whole* word becomes the one token unk_token, not just that "
    "part; and a word longer than max_input_chars_per_word is unk_token straight away."))
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


@exercise("ex03.bytes_to_unicode", points=2, reference="course_lib.tokenization.bytes_to_unicode", hints=(
    "Bytes that already show as a visible character keep it: 33..126, 161..172 and 174..255. The 68 others "
    "need stand-in characters, all different, so that decoding can find the byte again.",
    "The stand-ins are handed out in increasing byte order, counting up from chr(256): byte 0 gets "
    "chr(256), byte 1 chr(257), ..., and the space (32) gets chr(288), 'Ġ'.",
    "Keep a counter that moves only when a byte needs a stand-in; chr(256 + byte) would skip characters "
    "and give a different table from GPT-2's."))
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


def random_words(rng: np.random.Generator, alphabet: str, n: int, max_len: int = 7) -> dict[tuple[str, ...], int]:
    words = {}
    for _ in range(n):
        size = int(rng.integers(1, max_len + 1))
        words[tuple(alphabet[i] for i in rng.integers(0, len(alphabet), size=size))] = int(rng.integers(1, 20))
    return words


@exercise("ex03.pair_counts", points=1, reference="course_lib.tokenization.get_pair_counts", hints=(
    "Each word adds its frequency to every pair of neighbouring symbols in it; a pair that occurs twice "
    "in one word counts twice.",
    "Pair each symbol with the next one (`zip` of the word with itself shifted by one) and add into a "
    "dict with `.get(pair, 0)`, or into a `collections.Counter`."))
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


@exercise("ex03.merge_pair", points=1, reference="course_lib.tokenization.merge_pair", hints=(
    "Scan the word left to right: where the current symbol and the next one form the pair, emit them "
    "joined as one symbol and skip both; otherwise emit the current symbol and move on.",
    "A `while` loop over an index that moves by 2 after a merge and by 1 otherwise, so occurrences never "
    "overlap: ('a', 'a', 'a') with ('a', 'a') gives ('aa', 'a').",
    "Compare whole symbols, not text: joining the word into one string and calling `replace` can merge "
    "across symbol boundaries. In ('ba', 'b') the pair ('a', 'b') does not occur, yet the joined text "
    "'ba b' contains 'a b'."))
def _(fn, rng):
    cases = [(("l", "o", "w"), ("l", "o")), (("a", "a", "a"), ("a", "a")), (("a", "a", "a", "a"), ("a", "a")), ((), ("a", "b")),
             (("ab", "c"), ("a", "bc")), (("ba", "b"), ("a", "b"))]
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


@exercise("ex03.bpe_word", points=2, reference="course_lib.tokenization.bpe_word", hints=(
    "Start from single characters and repeat: of the neighbouring pairs present, merge the one learned "
    "earliest (the lowest rank), until no neighbouring pair is in ranks.",
    "`min` over the current pairs with a key that gives each pair its rank, a pair missing from ranks "
    "counting as infinitely late; your merge_pair (same file) then does one merge.",
    "Stop when the best pair has no rank at all. What counts is the rank from training, not how often "
    "a pair occurs in this word."))
def _(fn, rng):
    cases = [("lower", {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2}), ("x", {}), ("abc", {})]
    for _ in range(30):
        ranks = random_ranks(rng, "abc", int(rng.integers(1, 15)))
        word = "".join(rng.choice(list("abc"), size=int(rng.integers(1, 12))).tolist())
        cases.append((word, ranks))
    for word, ranks in cases:
        what = f"bpe_word({word!r}, ranks={ranks})"
        expect_equal(as_list_of_str(fn(word, dict(ranks)), what), tokenization.bpe_word(word, ranks), what)


@exercise("ex03.pad_batch", points=2, reference="course_lib.tokenization.pad_batch", hints=(
    "First cut each sequence to max_length (when given), keeping its first ids; then pad each one to the "
    "length of the longest, and write a mask with 1 for each real id and 0 for each pad.",
    "A list times n repeats it and `+` joins lists; padding_side says whether the pads, and the mask's "
    "zeros, go before or after the ids.",
    "Build new lists: appending pads to the caller's lists would change `sequences`."))
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


# ----------------------------------------------------------------------------- stretch exercises

def random_word_counts(rng: np.random.Generator, alphabet: str, n: int, max_len: int = 7) -> dict[str, int]:
    words = {}
    for _ in range(n):
        size = int(rng.integers(1, max_len + 1))
        words["".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=size))] = int(rng.integers(1, 6))
    return words


def as_list_of_pairs(value, what: str) -> list[tuple[str, str]]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value):
        raise GradeError(f"{what}: expected a list of (left, right) pairs of strings, got {value!r}")
    return [tuple(p) for p in value]


def why_merges_differ(word_counts: dict[str, int], got: list, expected: list) -> str:
    """What went wrong at the first merge where ``got`` leaves ``expected``."""
    if len(got) > len(expected) and got[:len(expected)] == expected:
        return (f"after {len(expected)} merges no word has two symbols left, so training stops there; you returned "
                f"{len(got)} merges")
    k = next(i for i in range(len(expected) + 1) if i == len(expected) or i == len(got) or got[i] != expected[i])
    words = {tuple(w): n for w, n in word_counts.items()}
    for pair in expected[:k]:
        words = {tokenization.merge_pair(w, pair): n for w, n in words.items()}
    counts = tokenization.get_pair_counts(words)
    state = f"after the first {k} merges" if k else "before any merge"
    if k == len(got):
        return (f"you stopped after {k} merges, but {state} the pair {expected[k]} still occurs {counts[expected[k]]} "
                f"times; stop only when no word has two symbols left")
    mine, right = got[k], expected[k]
    if mine not in counts:
        return (f"merge {k + 1} is wrong: {state} no word has the neighbours {mine}; recount the pairs after every "
                f"merge, on the merged words")
    if counts[mine] != counts[right]:
        return (f"merge {k + 1} is wrong: {state} {mine} occurs {counts[mine]} times but {right} occurs "
                f"{counts[right]} times; take the most frequent pair, each word weighted by its count")
    return (f"merge {k + 1} is wrong: {state} {mine} and {right} both occur {counts[right]} times. A tie goes to the "
            f"pair whose left symbol is older, then whose right symbol is older: single characters by code point, "
            f"all before any merged symbol; merged symbols in the order they were made")


@exercise("ex03.learn_merges", points=3, stretch=True, reference="course_lib.tokenization.learn_merges", hints=(
    "BPE training: spell each word as single characters; count the neighbouring pairs (each word weighted by "
    "its count), merge the most frequent pair in every word, record it, and repeat -- recounting after every "
    "merge, since merging changes the pairs.",
    "Your pair_counts and merge_pair (same file) do the two halves of a step. Stop early when there is no "
    "pair left to count. Ties: compare the left symbols' ages, then the right symbols'.",
    "Give every symbol an age you can compare, e.g. a tuple: single characters first, by code point; merged "
    "symbols after all of them, in the order they were made. `max` on the counts alone keeps the first of "
    "equal pairs it meets, which is not this order."))
def _(fn, rng):
    cases = [({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 10), ({"aaaa": 1}, 5), ({"a": 3, "b": 1}, 2),
             ({}, 3), ({"ab": 2, "ba": 2}, 3)]
    for i in range(14):
        alphabet = ["abc", "abcd", "ébĠa", "ba"][i % 4]  # the last ones list characters out of code point order
        cases.append((random_word_counts(rng, alphabet, int(rng.integers(1, 10))), int(rng.integers(1, 13))))
    for word_counts, num_merges in cases:
        what = f"learn_merges({word_counts}, num_merges={num_merges})"
        given = copy.deepcopy(word_counts)
        got = fn(given, num_merges)
        if given != word_counts:
            raise GradeError(f"{what}: your function changed its input; only read it")
        got = as_list_of_pairs(got, what)
        expected = tokenization.learn_merges(word_counts, num_merges)
        if got != expected:
            raise GradeError(f"{what}: expected {expected}, got {got}.\n  {why_merges_differ(word_counts, got, expected)}")


# Added tokens written as plain text: "<|endoftext|>" is printable ASCII (in the byte table as itself), the
# others have characters outside the table (a space, CJK), so they must be kept as their own text.
SPECIAL_TOKENS = ["<|endoftext|>", "<new turn>", "<|日本|>"]


def random_byte_tokens(rng: np.random.Generator) -> list[str]:
    """Random text as byte-level tokens cut at random places (often inside a character), with special
    tokens between them and, sometimes, a byte missing (invalid UTF-8)."""
    table = tokenization.bytes_to_unicode()
    text = random_text(rng, int(rng.integers(1, 25))) + "".join(
        rng.choice(list("é日本語😀ßπ—"), size=int(rng.integers(1, 4))).tolist())
    data = bytearray(text.encode("utf-8"))
    if rng.random() < 0.3:
        del data[int(rng.integers(0, len(data)))]
    chars = [table[b] for b in data]
    tokens, start = [], 0
    while start < len(chars):
        end = start + int(rng.integers(1, 5))
        tokens.append("".join(chars[start:end]))
        if rng.random() < 0.15:
            tokens.append(str(rng.choice(SPECIAL_TOKENS)))
        start = end
    return tokens


@exercise("ex03.byte_level_decode", points=3, stretch=True,
          reference="course_lib.tokenization.byte_level_decode", hints=(
    "Decoding undoes the byte table: each character of a token stands for one byte. Collect the bytes of all "
    "the tokens, then decode them as UTF-8.",
    "Invert bytes_to_unicode (yours, same file) into {character: byte}. A token with any character that is "
    "not in the table (an added token written as plain text, such as '<new turn>' with its space) stands "
    "for its own UTF-8 bytes (`str.encode`).",
    "Decode the joined bytes once, not token by token: one character can be split across two tokens. Bytes "
    "that are not valid UTF-8 must become U+FFFD rather than raise: `bytes.decode` has an `errors` argument."))
def _(fn, rng):
    cases = [["Hello", "Ġworld", "Ċ"], ["Ã", "©"], ["Ã"], ["a", "<|endoftext|>"], ["a", "<new turn>"], [],
             ["ĠcafÃ", "©", "<|日本|>", "ĠĠ"], ["ð", "Ł", "ĺ", "Ģ"]]
    cases += [random_byte_tokens(rng) for _ in range(40)]
    for tokens in cases:
        what = f"byte_level_decode({tokens!r})"
        try:
            got = fn(list(tokens))
        except KeyError as err:
            raise GradeError(f"{what}: your function raised KeyError {err}: a token with characters outside the "
                             f"byte table (an added token written as plain text) stands for its own text") from None
        except ValueError as err:  # UnicodeDecodeError is a ValueError
            raise GradeError(f"{what}: your function raised {type(err).__name__}: bytes that are not valid UTF-8 "
                             f"(a character cut short) must decode to U+FFFD, not raise") from None
        if not isinstance(got, str):
            raise GradeError(f"{what}: expected a str, got {type(got).__name__}")
        expected = tokenization.byte_level_decode(tokens)
        if got == expected:
            continue
        per_token = "".join(tokenization.byte_level_decode([t]) for t in tokens)
        data = bytearray()
        char_to_byte = {c: b for b, c in tokenization.bytes_to_unicode().items()}
        for t in tokens:
            data += t.encode("utf-8") if any(c not in char_to_byte for c in t) else bytes(char_to_byte[c] for c in t)
        without_specials = tokenization.byte_level_decode([t for t in tokens if t not in SPECIAL_TOKENS])
        why = ""
        if got == per_token:
            why = ("\n  It looks like you decoded each token on its own: a character's bytes can be split across "
                   "tokens, so join the bytes of all the tokens first, then decode once.")
        elif got == data.decode("utf-8", errors="ignore"):
            why = "\n  Invalid bytes were dropped; each one must become U+FFFD ('\ufffd')."
        elif got == without_specials:
            why = ("\n  The added tokens are missing: a token with characters outside the byte table stands for "
                   "its own text.")
        raise GradeError(f"{what}: expected {expected!r}, got {got!r}{why}")
