"""Tokenizers from scratch: WordPiece (BERT) and byte-level BPE (GPT-2, RoBERTa).

A tokenizer turns text into the integer ids a model was trained on, in three steps:

1. **normalize** the text (BERT: drop control characters, lowercase, strip accents);
2. **pre-tokenize** it into words (BERT: split on whitespace and punctuation;
   GPT-2: a regular expression, then every UTF-8 byte mapped to a printable character);
3. **model**: cut each word into vocabulary pieces (WordPiece: greedy longest match;
   BPE: apply learned merges in the order they were learned).

This module is the course's reference implementation, written in plain Python to be read
(chapter 03 shows it with ``inspect.getsource``). ``tests/test_tokenization.py`` proves each
piece gives the same tokens and ids as the Rust ``tokenizers`` library on real vocabularies.
"""

from __future__ import annotations

import collections
import heapq
import json
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import regex

# ======================================================================================
# WordPiece (BERT)
# ======================================================================================


def _is_control(ch: str) -> bool:
    """Control, format, private-use and surrogate characters, but not tab, newline, return.

    Unassigned code points (category Cn) are kept, as the tokenizers library does.
    """
    if ch in "\t\n\r":
        return False  # control characters by category, but BERT treats them as whitespace
    return unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs")


def _is_whitespace(ch: str) -> bool:
    """Unicode White_Space (what Rust's ``char::is_whitespace`` tests)."""
    return ch in "\t\n\x0b\x0c\r\x85" or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def clean_text(text: str) -> str:
    """BERT's cleanup: drop NUL, U+FFFD and control characters; every whitespace becomes " ".

    >>> clean_text("a\\tb\\x00c\\u200bd\\ufffd")
    'a bcd'
    """
    kept = []
    for ch in text:
        if ch in ("\x00", "\ufffd") or _is_control(ch):
            continue
        kept.append(" " if _is_whitespace(ch) else ch)
    return "".join(kept)


def strip_accents(text: str) -> str:
    """Split letters from their accents (NFD), then drop the accents (category Mn).

    >>> strip_accents("Crème brûlée, Å")
    'Creme brulee, A'
    """
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


# bert_normalize's keyword arguments are named like the functions above (as in the
# tokenizers library's BertNormalizer), so it reaches the functions through these aliases.
_clean_text, _strip_accents = clean_text, strip_accents


def is_punctuation(ch: str) -> bool:
    """BERT's punctuation: every printable ASCII non-alphanumeric, and Unicode category P*.

    ASCII ``$ + < = > ^ ` |`` are symbols in Unicode, but BERT splits them off too.

    >>> [c for c in "a$b-c'd.é!" if is_punctuation(c)]
    ['$', '-', "'", '.', '!']
    """
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(ch: str) -> bool:
    """Is ``ch`` a CJK ideograph? BERT makes each one a word of its own.

    Written Chinese has no spaces, so without this a whole sentence would be one "word".
    Japanese kana and Korean hangul are not in these blocks.

    >>> [is_cjk(c) for c in "中a日ま"]
    [True, False, True, False]
    """
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF       # CJK Unified Ideographs
        or 0x3400 <= cp <= 0x4DBF    # Extension A
        or 0x20000 <= cp <= 0x2A6DF  # Extension B
        or 0x2A700 <= cp <= 0x2B73F  # Extension C
        or 0x2B740 <= cp <= 0x2B81F  # Extension D
        or 0x2B920 <= cp <= 0x2CEAF  # Extension E (from 0x2B920 in tokenizers, 0x2B820 in Google's BERT)
        or 0xF900 <= cp <= 0xFAFF    # Compatibility Ideographs
        or 0x2F800 <= cp <= 0x2FA1F  # Compatibility Ideographs Supplement
    )


def bert_normalize(text: str, lowercase: bool = True, strip_accents: bool | None = None,
                   handle_chinese_chars: bool = True, clean_text: bool = True) -> str:
    """The tokenizers library's ``BertNormalizer``, step by step.

    ``strip_accents=None`` means "strip accents when lowercasing", as in the library.

    >>> bert_normalize("Héllo\\tWORLD 中文")
    'hello world  中  文 '
    """
    if clean_text:
        text = _clean_text(text)
    if handle_chinese_chars:
        text = "".join(f" {ch} " if is_cjk(ch) else ch for ch in text)
    if strip_accents is None:
        strip_accents = lowercase
    if strip_accents:
        text = _strip_accents(text)
    if lowercase:
        # character by character, like Rust's char::to_lowercase: a final "Σ" gives "σ",
        # where Python's str.lower() would give "ς"
        text = "".join(ch.lower() for ch in text)
    return text


def split_on_whitespace_and_punctuation(text: str) -> list[str]:
    """The tokenizers library's ``BertPreTokenizer``: split on whitespace, isolate punctuation.

    >>> split_on_whitespace_and_punctuation("don't stop!")
    ['don', "'", 't', 'stop', '!']
    """
    words, current = [], []
    for ch in text:
        if _is_whitespace(ch) or is_punctuation(ch):
            if current:
                words.append("".join(current))
                current = []
            if not _is_whitespace(ch):
                words.append(ch)  # a punctuation character is a word of its own
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def bert_pre_tokenize(text: str, lowercase: bool = True, strip_accents: bool | None = None,
                      handle_chinese_chars: bool = True, clean_text: bool = True) -> list[str]:
    """BERT's normalizer and pre-tokenizer: text -> list of words for WordPiece.

    >>> bert_pre_tokenize("Héllo, WORLD!")
    ['hello', ',', 'world', '!']
    """
    text = bert_normalize(text, lowercase=lowercase, strip_accents=strip_accents,
                          handle_chinese_chars=handle_chinese_chars, clean_text=clean_text)
    return split_on_whitespace_and_punctuation(text)


def wordpiece_word(word: str, vocab, unk_token: str = "[UNK]", prefix: str = "##",
                   max_input_chars_per_word: int = 100) -> list[str]:
    """Cut one word into vocabulary pieces, greedy longest-match-first.

    Pieces after the first carry ``prefix`` ("##") so the model knows they continue a word.
    If some part of the word matches no piece, or the word is too long, the *whole* word
    becomes ``unk_token`` (not just the failing part).

    >>> vocab = {"un", "##aff", "##able", "[UNK]"}
    >>> wordpiece_word("unaffable", vocab)
    ['un', '##aff', '##able']
    >>> wordpiece_word("unaffablex", vocab)
    ['[UNK]']
    """
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        # try the longest remaining substring first, then shorten it one character at a time
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
        else:
            return [unk_token]  # not even one character matched
        pieces.append(piece)
        start = end
    return pieces


def _special_splitter(tokens: Iterable[str]) -> regex.Pattern | None:
    """A regex that finds any of ``tokens`` whole; the longest wins where two could match."""
    tokens = sorted(set(tokens), key=len, reverse=True)
    if not tokens:
        return None
    return regex.compile("(" + "|".join(regex.escape(t) for t in tokens) + ")")


def _split_specials(text: str, splitter: regex.Pattern | None) -> list[tuple[str, bool]]:
    """``text`` cut into ``(segment, is_special)`` parts; special tokens are never normalized."""
    if splitter is None:
        return [(text, False)]
    parts = splitter.split(text)  # the capture group keeps the matches: text, special, text, ...
    return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]


def read_vocab_txt(path) -> dict[str, int]:
    """A BERT ``vocab.txt``: one token per line, its id is the line number (from 0).

    As the tokenizers library reads it: trailing whitespace (a Windows "\\r" too) is
    dropped, and a token listed twice keeps its last line number.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the file
    return {token.rstrip(): i for i, token in enumerate(lines)}


class WordPieceTokenizer:
    """BERT's tokenizer: ``bert_pre_tokenize`` then ``wordpiece_word`` on each word.

    Special tokens found in the text ("[MASK]", "[SEP]", ...) are kept whole and not
    lowercased, like the tokenizers library does for them.

    >>> vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", "!"])}
    >>> tok = WordPieceTokenizer(vocab)
    >>> tok.tokenize("Hello worlds!")
    ['hello', 'world', '##s', '!']
    >>> tok.encode("Hello worlds!")
    [2, 4, 5, 6, 7, 3]
    >>> tok.decode([2, 4, 5, 6, 7, 3])
    'hello worlds!'
    """

    def __init__(self, vocab: dict[str, int], unk_token: str = "[UNK]", cls_token: str = "[CLS]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", lowercase: bool = True,
                 strip_accents: bool | None = None, handle_chinese_chars: bool = True,
                 prefix: str = "##", max_input_chars_per_word: int = 100, mask_token: str = "[MASK]"):
        if unk_token not in vocab:
            raise ValueError(f"the unknown token {unk_token!r} is not in the vocabulary")
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.handle_chinese_chars = handle_chinese_chars
        self.prefix, self.max_input_chars_per_word = prefix, max_input_chars_per_word
        self.special_tokens = [t for t in (pad_token, unk_token, cls_token, sep_token, mask_token)
                               if t in self.vocab]
        self._splitter = _special_splitter(self.special_tokens)

    @classmethod
    def from_vocab_file(cls, path, **kwargs) -> "WordPieceTokenizer":
        """Read a BERT ``vocab.txt`` (see ``read_vocab_txt``)."""
        return cls(read_vocab_txt(path), **kwargs)

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece tokens (without [CLS]/[SEP])."""
        tokens = []
        for segment, is_special in _split_specials(text, self._splitter):
            if is_special:
                tokens.append(segment)
                continue
            for word in bert_pre_tokenize(segment, lowercase=self.lowercase, strip_accents=self.strip_accents,
                                          handle_chinese_chars=self.handle_chinese_chars):
                tokens += wordpiece_word(word, self.vocab, self.unk_token, self.prefix,
                                         self.max_input_chars_per_word)
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> ids, wrapped as ``[CLS] ... [SEP]`` (BERT's single-sentence template)."""
        ids = [self.vocab[t] for t in self.tokenize(text)]
        if add_special_tokens:
            ids = [self.vocab[self.cls_token]] + ids + [self.vocab[self.sep_token]]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text: "##" pieces glue to the previous token, other tokens get a space.

        Lowercasing and stripped accents cannot be undone. Like the library's WordPiece
        decoder (``cleanup=True``), the space before ``. , ! ?`` is removed; skipping special
        tokens skips [UNK] and [MASK] too, as the library does.
        """
        special_ids = {self.vocab[t] for t in self.special_tokens}
        tokens = [self.id_to_token[i] for i in ids if not (skip_special_tokens and i in special_ids)]
        text = []
        for i, token in enumerate(tokens):
            if i > 0:
                token = token[len(self.prefix):] if token.startswith(self.prefix) else " " + token
            for dirty, clean in _DECODE_CLEANUP:
                token = token.replace(dirty, clean)
            text.append(token)
        return "".join(text)


# The library's WordPiece decoder cleanup. It runs on each token (with its leading space),
# not on the joined text, so "don ' t" stays as it is: BERT splits "'" off as its own token.
_DECODE_CLEANUP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                   (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


# ======================================================================================
# Byte-level BPE (GPT-2, RoBERTa)
# ======================================================================================

# GPT-2's pre-tokenizer: English contractions, words with their leading space, numbers,
# runs of other symbols, and whitespace (a run of spaces leaves its last space for the
# next word, so " hello" stays one piece).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)


@lru_cache(maxsize=None)
def _byte_table() -> tuple[dict[int, str], dict[str, int]]:
    """(byte -> char, char -> byte), built once."""
    byte_to_char = bytes_to_unicode()
    return byte_to_char, {c: b for b, c in byte_to_char.items()}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    BPE works on strings, and every byte must be a visible, non-space character so that
    vocab.json and merges.txt stay readable and splittable on spaces. Printable bytes
    map to themselves; the others (space, control bytes, ...) are shifted to 256 and up:
    the space 32 becomes "Ġ" (U+0120), the newline 10 becomes "Ċ".

    >>> table = bytes_to_unicode()
    >>> table[ord("A")], table[32], table[10]
    ('A', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def byte_level_pre_tokenize(text: str, add_prefix_space: bool = False) -> list[str]:
    """Split ``text`` with the GPT-2 regex, then spell each piece's UTF-8 bytes as table chars.

    ``add_prefix_space`` puts a space in front (RoBERTa-style), so the first word looks like
    every other word ("Ġhello" rather than "hello").

    >>> byte_level_pre_tokenize("Hello world, it's 2024!")
    ['Hello', 'Ġworld', ',', 'Ġit', "'s", 'Ġ2024', '!']
    >>> byte_level_pre_tokenize("café")  # é is two bytes, spelled as two characters
    ['cafÃ©']
    """
    if add_prefix_space and text and not text.startswith(" "):
        text = " " + text  # (an empty text stays empty, as in the tokenizers library)
    byte_to_char, _ = _byte_table()
    return ["".join(byte_to_char[b] for b in piece.encode("utf-8")) for piece in _GPT2_SPLIT.findall(text)]


def byte_level_decode(tokens: Iterable[str]) -> str:
    """Byte-level BPE tokens back to text: every character back to its byte, then UTF-8.

    The inverse of ``byte_level_pre_tokenize`` + BPE. The bytes of *all* the tokens are
    joined before decoding, because one character may be cut across two tokens (the two
    bytes of "é" can be two tokens). A token with a character that is not in the byte table
    (an added token written as plain text, e.g. with a space: "<new turn>") stands for its
    own UTF-8 text; "<|endoftext|>" is printable ASCII, which the table maps to itself, so
    it comes out as itself either way. Bytes that are not valid UTF-8 (a sequence cut
    short) decode to U+FFFD, as in the tokenizers library's ``ByteLevel`` decoder.

    >>> byte_level_decode(["Hello", "Ġw", "or", "ld", "ĠcafÃ", "©", "<new turn>", "Ã"])
    'Hello world café<new turn>\ufffd'
    """
    _, char_to_byte = _byte_table()
    data = bytearray()
    for token in tokens:
        if all(ch in char_to_byte for ch in token):
            data.extend(char_to_byte[ch] for ch in token)
        else:
            data.extend(token.encode("utf-8"))  # not spelled in byte characters: its own text
    return data.decode("utf-8", errors="replace")


def get_pair_counts(words: dict[tuple[str, ...], int]) -> collections.Counter:
    """How often each pair of adjacent symbols occurs, each word weighted by its count.

    >>> get_pair_counts({("l", "o", "w"): 5, ("l", "o", "t"): 2})
    Counter({('l', 'o'): 7, ('o', 'w'): 5, ('o', 't'): 2})
    """
    counts = collections.Counter()
    for word, n in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += n
    return counts


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``word`` by one symbol, scanning left to right.

    Occurrences do not overlap: in "a a a" only the first two merge.

    >>> merge_pair(("a", "a", "a"), ("a", "a"))
    ('aa', 'a')
    """
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = ("<|endoftext|>",),
              min_frequency: int = 2, show_progress: bool = False) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn a byte-level BPE vocabulary: repeatedly merge the most frequent adjacent pair.

    Returns ``(vocab, merges)``. The vocab holds the special tokens, then the 256 byte
    characters, then one token per merge, in the order learned; training stops at
    ``vocab_size`` tokens or when no pair occurs ``min_frequency`` times.

    Same result as the tokenizers library's ``BpeTrainer`` with the ``ByteLevel``
    pre-tokenizer, including its tie-break: among pairs with equal counts the one whose
    token *ids* are smallest wins (older tokens first, byte characters in code point order).

    Counting all pairs again after every merge would be slow, so we count once and then
    update only the words that contain the merged pair.

    >>> vocab, merges = train_bpe(["low lower lowest"] * 3, vocab_size=262, special_tokens=())
    >>> merges  # ("s", "t") ties with ("Ġlowe", "r") at 3 and wins: "s" has the smaller id
    [('l', 'o'), ('lo', 'w'), ('Ġ', 'low'), ('Ġlow', 'e'), ('s', 't'), ('Ġlowe', 'r')]
    """
    from tqdm.auto import tqdm

    # 1. Count the pre-tokenized words; BPE never merges across two words.
    word_counts = collections.Counter()
    for text in texts:
        word_counts.update(byte_level_pre_tokenize(text))

    # 2. Start the vocab: special tokens, then every byte character in code point order.
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *sorted(bytes_to_unicode().values())]:
        vocab.setdefault(token, len(vocab))

    # 3. Each word is a list of symbols; count every adjacent pair once and remember
    #    which words hold it.
    words = [list(word) for word in word_counts]
    counts = list(word_counts.values())
    pair_counts: collections.Counter = collections.Counter()
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[i]
            where[pair].add(i)

    # 4. A heap pops the most frequent pair, ties broken by the smallest ids. Entries
    #    are not removed when a count drops; a stale one is fixed when it is popped.
    def entry(pair):
        return (-pair_counts[pair], vocab[pair[0]], vocab[pair[1]], pair)

    heap = [entry(pair) for pair in pair_counts]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    progress = tqdm(total=max(vocab_size - len(vocab), 0), desc="BPE merges", disable=not show_progress)
    while len(vocab) < vocab_size and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if -neg_count != pair_counts[pair]:  # stale: the count changed since it was pushed
            if pair_counts[pair] > 0:
                heapq.heappush(heap, entry(pair))
            continue
        if -neg_count < max(min_frequency, 1):
            break  # every remaining pair is rarer still
        merges.append(pair)
        new_token = pair[0] + pair[1]
        vocab.setdefault(new_token, len(vocab))  # (a token made twice, by two merges, keeps one id)
        progress.update(1)

        # 5. Rewrite only the words that contain the pair, moving their pair counts.
        new_pairs = set()
        for i in where.pop(pair):
            old = words[i]
            new = list(merge_pair(tuple(old), pair))
            if len(new) == len(old):
                continue  # the pair left this word in an earlier merge
            for p in zip(old, old[1:]):
                pair_counts[p] -= counts[i]
            for p in zip(new, new[1:]):
                pair_counts[p] += counts[i]
                where[p].add(i)
            new_pairs.update(p for p in zip(new, new[1:]) if new_token in p)
            words[i] = new
        for p in new_pairs:  # pairs with the new token are new: give them heap entries
            if pair_counts[p] > 0:
                heapq.heappush(heap, entry(p))
    progress.close()
    return vocab, merges


def learn_merges(word_counts: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """The first ``num_merges`` BPE merges learned from word counts, the plain way.

    ``word_counts`` maps each (pre-tokenized) word to how often it occurs; each word starts
    as its single characters. Each step counts every adjacent pair (``get_pair_counts``),
    merges the most frequent one in every word (``merge_pair``) and records it; training
    stops early when no word has two symbols left.

    Ties between equally frequent pairs go to the pair whose left symbol is *older*, then
    whose right symbol is older -- the tokenizers library's rule (``train_bpe`` gives the
    same merges): single characters are older than every merged symbol and ordered by code
    point among themselves; merged symbols are ordered by when they were first made.

    ``train_bpe`` is the fast version of the same algorithm (it updates the counts instead
    of recounting every pair after each merge).

    >>> learn_merges({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 3)
    [('e', 's'), ('es', 't'), ('l', 'o')]
    """
    words = {tuple(word): n for word, n in word_counts.items()}
    made: dict[str, int] = {}  # merged symbol -> when it was first made

    def age(symbol: str) -> tuple[int, int]:
        return (1, made[symbol]) if symbol in made else (0, ord(symbol))

    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        counts = get_pair_counts(words)
        if not counts:
            break  # every word is a single symbol: nothing left to merge
        best = min(counts, key=lambda pair: (-counts[pair], age(pair[0]), age(pair[1])))
        merges.append(best)
        made.setdefault(best[0] + best[1], len(made))
        words = {merge_pair(word, best): n for word, n in words.items()}
    return merges


def bpe_word(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one pre-tokenized word: always the lowest-ranked pair first.

    ``ranks[pair]`` is the merge's position in merges.txt (0 = learned first). Where the
    best pair occurs twice, the leftmost merges first, as in the tokenizers library.

    >>> bpe_word("lower", {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2})
    ['low', 'er']
    >>> bpe_word("abc", {})
    ['a', 'b', 'c']
    """
    symbols = list(word)
    while len(symbols) > 1:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not candidates:
            break
        _, i = min(candidates)  # lowest rank, then leftmost
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def read_merges_txt(path) -> list[tuple[str, str]]:
    """GPT-2/RoBERTa's ``merges.txt``: one merge "left right" per line, in the order learned.

    An optional first line ``#version: ...`` and blank lines are skipped. Byte characters
    are never spaces, so each line splits into exactly two tokens; anything else is a
    damaged file, reported with its line number.
    """
    merges = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}, line {n}: a merge must be two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class ByteLevelBPETokenizer:
    """GPT-2 / RoBERTa's tokenizer: ``byte_level_pre_tokenize`` then ``bpe_word`` on each piece.

    Special tokens found in the text (e.g. "<|endoftext|>") are kept whole instead of
    being spelled out with merges.

    >>> vocab, merges = train_bpe(["low lower lowest"] * 3, vocab_size=262)
    >>> tok = ByteLevelBPETokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    >>> tok.tokenize("lowest<|endoftext|>")
    ['low', 'e', 'st', '<|endoftext|>']
    >>> tok.decode(tok.encode("lowest<|endoftext|>"))
    'lowest<|endoftext|>'
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], add_prefix_space: bool = False,
                 special_tokens: Iterable[str] = ()):
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}  # a repeated merge keeps its last rank
        self.add_prefix_space = add_prefix_space
        self.special_tokens = list(special_tokens)
        self._splitter = _special_splitter(self.special_tokens)
        self._cache: dict[str, list[str]] = {}  # words repeat a lot: merge each one only once

    @classmethod
    def from_files(cls, vocab_json, merges_txt, **kwargs) -> "ByteLevelBPETokenizer":
        """Read GPT-2/RoBERTa's ``vocab.json`` and ``merges.txt`` (one "a b" pair per line).

        Unless ``special_tokens`` is given, the usual GPT-2/RoBERTa ones found in the vocab
        ("<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>") are special.
        """
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        merges = read_merges_txt(merges_txt)
        if "special_tokens" not in kwargs:
            known = ("<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>")
            kwargs["special_tokens"] = [t for t in known if t in vocab]
        return cls(vocab, merges, **kwargs)

    def _bpe(self, word: str) -> list[str]:
        if word not in self._cache:
            self._cache[word] = bpe_word(word, self.ranks)
        return self._cache[word]

    def tokenize(self, text: str) -> list[str]:
        """Text -> BPE tokens, spelled with the byte characters (a space shows as "Ġ")."""
        tokens = []
        for segment, is_special in _split_specials(text, self._splitter):
            if is_special:
                tokens.append(segment)
                continue
            for word in byte_level_pre_tokenize(segment, self.add_prefix_space):
                tokens += self._bpe(word)
        return tokens

    def encode(self, text: str) -> list[int]:
        """Text -> ids. No [CLS]-like tokens are added (GPT-2 has none)."""
        return [self.vocab[t] for t in self.tokenize(text)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text: map the characters back to bytes, then decode the bytes as UTF-8.

        A token cut in the middle of a character (one byte of "é") decodes to "\\ufffd".
        Tokens that are not spelled in byte characters (special tokens) keep their own text.
        """
        tokens = [self.id_to_token[i] for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens]
        return byte_level_decode(tokens)


# ======================================================================================
# Batching: truncation, padding and the attention mask
# ======================================================================================


def pad_batch(sequences: list[list[int]], pad_id: int, max_length: int | None = None,
              padding_side: str = "right") -> tuple[list[list[int]], list[list[int]]]:
    """Make a rectangular batch of token ids, and the mask that says which ids are real.

    Sequences longer than ``max_length`` are cut to their first ``max_length`` ids; then
    every one is padded with ``pad_id`` to the longest. BERT pads on the right; for
    generation GPT-2 pads on the left, so that every prompt ends in the last column.
    The attention mask is 1 for a real token and 0 for a pad, so attention ignores pads.
    Returns ``(input_ids, attention_mask)``; the input lists are not changed.

    >>> pad_batch([[5, 6, 7], [8]], pad_id=0)
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    >>> pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    cut = [list(seq if max_length is None else seq[:max_length]) for seq in sequences]
    longest = max((len(seq) for seq in cut), default=0)
    input_ids, attention_mask = [], []
    for seq in cut:
        pads = [pad_id] * (longest - len(seq))
        ones, zeros = [1] * len(seq), [0] * len(pads)
        if padding_side == "right":
            input_ids.append(seq + pads)
            attention_mask.append(ones + zeros)
        else:
            input_ids.append(pads + seq)
            attention_mask.append(zeros + ones)
    return input_ids, attention_mask
