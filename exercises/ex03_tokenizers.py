"""Chapter 03 exercises: the pieces of WordPiece (BERT) and byte-level BPE (GPT-2, RoBERTa).

Plain Python: strings, lists, dicts, ``unicodedata``. No ``tokenizers`` library here — the
point is to see there is no magic in it.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/03_tokenizers.ipynb``: ``check("ex03.wordpiece_word")`` (each
  exercise has its cell, in the section that explains it) — grading runs in a fresh
  process, so save this file and run the cell again; each further failure shows the next
  hint, ``check("ex03.wordpiece_word", hint=2)`` asks for hint 2 now;
* in a terminal: ``python -m course_lib.grade ex03`` (all) or
  ``python -m course_lib.grade ex03.merge_pair`` (one).

The checks use random inputs and real vocabularies (all-MiniLM-L6-v2's WordPiece vocab)
and compare with ``course_lib.tokenization``, which is itself tested line for line against
the ``tokenizers`` library. The last two functions, ``learn_merges`` and
``byte_level_decode``, are stretch exercises: they go past what the chapter shows.
"""

from __future__ import annotations

import unicodedata


def bert_split(text: str) -> list[str]:
    """BERT's pre-tokenization split: on whitespace, and around every punctuation character.

    Whitespace separates words and is dropped; each punctuation character becomes a word of
    its own. A character is punctuation when it is ASCII and neither a letter, a digit nor
    whitespace (codes 33–47, 58–64, 91–96, 123–126: so ``$``, ``+``, ``<``, ``^`` count), or
    when its Unicode category starts with ``"P"`` (``unicodedata.category(ch)``).
    Whitespace is what ``str.isspace`` says. No lowercasing here, and no empty words.

    Example: ``bert_split("Hello, world! (x+1)") ==
    ["Hello", ",", "world", "!", "(", "x", "+", "1", ")"]``; ``bert_split("don't")`` is
    ``["don", "'", "t"]``.
    """
    raise NotImplementedError


def wordpiece_word(word: str, vocab: dict[str, int], unk_token: str = "[UNK]",
                   max_input_chars_per_word: int = 100) -> list[str]:
    """Split one word into WordPiece tokens: greedy longest match first.

    Start at the beginning of ``word`` and take the longest prefix that is in ``vocab``; then
    continue from where it ended, but now a piece must be in ``vocab`` *with* ``"##"`` in
    front (it continues a word). If at some point no piece matches, or the word has more
    than ``max_input_chars_per_word`` characters, the result is the one token ``unk_token``
    for the whole word. An empty word gives ``[]``.

    Examples with all-MiniLM-L6-v2's (BERT's) vocabulary: ``"tokenization"`` ->
    ``["token", "##ization"]``; ``"unaffable"`` -> ``["una", "##ffa", "##ble"]``;
    ``"hello"`` -> ``["hello"]``; ``"snowman\u2603"`` -> ``["[UNK]"]``.
    """
    raise NotImplementedError


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    Byte-level BPE works on bytes, but its vocabulary files are text, so every byte gets a
    visible stand-in character. Bytes that are already printable keep their own character:
    ``ord("!")`` (33) to ``ord("~")`` (126), ``ord("¡")`` (161) to ``ord("¬")`` (172) and
    ``ord("®")`` (174) to ``ord("ÿ")`` (255). The remaining 68 bytes (controls, space, ...)
    are given the characters ``chr(256)``, ``chr(257)``, ... in increasing byte order.

    Returns a dict with 256 entries ``{byte: character}``, all characters different.
    Examples: ``table[ord("A")] == "A"``; ``table[0] == chr(256)``; ``table[32] == "Ġ"``
    (space, ``chr(288)``); ``table[10] == "Ċ"`` (newline).
    """
    raise NotImplementedError


def pair_counts(words: dict[tuple[str, ...], int]) -> dict[tuple[str, str], int]:
    """Count adjacent symbol pairs, the statistic BPE training is driven by.

    ``words``: each word as a tuple of its current symbols, mapped to how often the word
    occurs in the training text. Returns ``{(left, right): count}`` where each adjacent pair
    inside a word adds that word's frequency (a pair that occurs twice in a word adds it
    twice). Pairs that never occur are absent. Do not change ``words``.

    Example: ``pair_counts({("l", "o", "w"): 5, ("l", "o", "t"): 2})`` ==
    ``{("l", "o"): 7, ("o", "w"): 5, ("o", "t"): 2}``.
    """
    raise NotImplementedError


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """One BPE merge step on one word: join every occurrence of ``pair`` into one symbol.

    Scan left to right; wherever two neighbouring symbols equal ``pair``, they become one
    symbol (the two strings joined). Occurrences do not overlap: once two symbols merged,
    the scan goes on after them. Symbols may be longer than one character (after earlier
    merges); compare whole symbols. Returns a new tuple.

    Examples: ``merge_pair(("l", "o", "w"), ("l", "o")) == ("lo", "w")``;
    ``merge_pair(("a", "a", "a"), ("a", "a")) == ("aa", "a")``;
    ``merge_pair(("ba", "b"), ("a", "b")) == ("ba", "b")`` (no such neighbours).
    """
    raise NotImplementedError


def bpe_word(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Encode one (pre-tokenized) word with learned BPE merges.

    ``word``: a string, already mapped to byte characters; start from its single characters.
    ``ranks``: ``{(left, right): rank}``, rank 0 = learned first. Repeatedly find, among the
    adjacent pairs of the current symbols, the one with the *lowest* rank, and merge every
    occurrence of it (like ``merge_pair``, which you wrote above: call it); stop when no
    adjacent pair is in ``ranks``. Returns the final list of symbols.

    Example: with ``ranks = {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2}``,
    ``bpe_word("lower", ranks) == ["low", "er"]``; ``bpe_word("abc", {}) == ["a", "b", "c"]``.
    """
    raise NotImplementedError


def pad_batch(sequences: list[list[int]], pad_id: int, max_length: int | None = None,
              padding_side: str = "right") -> tuple[list[list[int]], list[list[int]]]:
    """Make a rectangular batch from token id lists of different lengths, with its mask.

    First, if ``max_length`` is given, cut every sequence to its first ``max_length`` ids.
    Then pad every sequence with ``pad_id`` to the length of the longest one: on the right
    (``padding_side="right"``, BERT) or on the left (``"left"``, for generating with GPT-2,
    so every prompt ends at the last column). The attention mask has a 1 for every real
    token and a 0 for every pad. Returns ``(input_ids, attention_mask)``, two lists of
    lists of ints with the same shape. Do not change ``sequences``.

    Example: ``pad_batch([[5, 6, 7], [8]], pad_id=0)`` ==
    ``([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])``; with ``padding_side="left"``:
    ``([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])``.
    """
    raise NotImplementedError


def learn_merges(word_counts: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """Stretch: learn the first ``num_merges`` BPE merges from word counts.

    ``word_counts``: ``{word: how often it occurs}``; each word starts as its single
    characters. One step of training: count the adjacent pairs of symbols over all words
    (each weighted by its word's count), take the most frequent pair, merge it in every word
    and record it. Repeat, recounting after each merge; stop early when no word has two
    symbols left. Returns the merges in the order learned, as ``(left, right)`` tuples.
    ``pair_counts`` and ``merge_pair`` (above, in this file) do the parts of one step.

    Ties (pairs with equal counts) go, as in the tokenizers library, to the pair whose
    *left* symbol is older, then to the one whose *right* symbol is older. Every single
    character is older than every merged symbol; single characters are ordered by code
    point (``ord``); merged symbols by when they were first made.

    Example: ``learn_merges({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 3)`` is
    ``[("e", "s"), ("es", "t"), ("l", "o")]``: ``("e", "s")`` and ``("s", "t")`` both occur 9
    times and ``"e"`` is older than ``"s"``; later ``("l", "o")`` beats ``("o", "w")`` (7 each).
    """
    raise NotImplementedError


def byte_level_decode(tokens: list[str]) -> str:
    """Stretch: turn byte-level BPE tokens (GPT-2's) back into text.

    Every character of a token stands for one byte (the ``bytes_to_unicode`` table you
    wrote, read backwards). Join the bytes of all the tokens, then decode them as UTF-8.
    A token containing a character that is not in the table (an added token written as
    plain text, such as ``"<new turn>"`` with its space, or ``"<|日本|>"``) stands for its own
    UTF-8 bytes. Bytes that are not valid UTF-8 (e.g. a character cut short at the end)
    become the replacement character U+FFFD, as Python's ``errors="replace"`` does.

    Examples: ``byte_level_decode(["Hello", "Ġworld", "Ċ"]) == "Hello world\\n"``;
    ``byte_level_decode(["Ã", "©"]) == "é"`` (the two bytes of "é" in two tokens);
    ``byte_level_decode(["Ã"]) == "\\ufffd"``; ``byte_level_decode(["a", "<new turn>"]) ==
    "a<new turn>"``; ``byte_level_decode(["<|endoftext|>"]) == "<|endoftext|>"`` (ASCII
    characters are in the table as themselves).
    """
    raise NotImplementedError
