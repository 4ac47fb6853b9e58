"""Chapter 03 exercises: the pieces of WordPiece (BERT) and byte-level BPE (GPT-2, RoBERTa).

Plain Python: strings, lists, dicts, ``unicodedata``. No ``tokenizers`` library here — the
point is to see there is no magic in it.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/03_tokenizers.ipynb``: ``check("ex03.wordpiece_word")`` (one
  cell per exercise) — grading runs in a fresh process, so save this file and run the cell
  again;
* in a terminal: ``python -m course_lib.grade ex03`` (all) or
  ``python -m course_lib.grade ex03.merge_pair`` (one).

The checks use random inputs and real vocabularies (all-MiniLM-L6-v2's WordPiece vocab, a
BPE trained on the course corpus) and compare with ``course_lib.tokenization``, which is
itself tested line for line against the ``tokenizers`` library.
"""

from __future__ import annotations

import unicodedata


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    Byte-level BPE works on bytes, but its vocabulary files are text, so every byte gets a
    visible stand-in character. Bytes that are already printable keep their own character:
    ``ord("!")`` (33) to ``ord("~")`` (126), ``ord("¡")`` (161) to ``ord("¬")`` (172) and
    ``ord("®")`` (174) to ``ord("ÿ")`` (255). The remaining 68 bytes (controls, space, ...)
    are given the characters ``chr(256)``, ``chr(257)``, ... in increasing byte order.

    Returns a dict with 256 entries ``{byte: character}``.
    Examples: ``table[ord("A")] == "A"``; ``table[32] == "Ġ"`` (space, ``chr(288)``);
    ``table[10] == "Ċ"`` (newline).

    Hint: collect the printable bytes in a list; then loop over ``range(256)`` and give each
    byte that is not in it the next unused ``chr(256 + n)``.
    """
    raise NotImplementedError


def bert_split(text: str) -> list[str]:
    """BERT's pre-tokenization split: on whitespace, and around every punctuation character.

    Whitespace separates words and is dropped; each punctuation character becomes a word of
    its own. A character is punctuation when it is ASCII and neither a letter, a digit nor
    whitespace (codes 33–47, 58–64, 91–96, 123–126: so ``$``, ``+``, ``<``, ``^`` count), or
    when its Unicode category starts with ``"P"`` (``unicodedata.category(ch)``).
    No lowercasing here.

    Example: ``bert_split("Hello, world! (x+1)") ==
    ["Hello", ",", "world", "!", "(", "x", "+", "1", ")"]``.

    Hint: walk the characters, building the current word; ``ch.isspace()`` ends it,
    punctuation ends it and is appended on its own.
    """
    raise NotImplementedError


def wordpiece_word(word: str, vocab: dict[str, int], unk_token: str = "[UNK]",
                   max_input_chars_per_word: int = 100) -> list[str]:
    """Split one word into WordPiece tokens: greedy longest match first.

    Start at the beginning of ``word`` and take the longest prefix that is in ``vocab``; then
    continue from where it ended, but now a piece must be in ``vocab`` *with* ``"##"`` in
    front (it continues a word). If at some point no piece matches, or the word has more
    than ``max_input_chars_per_word`` characters, the whole word becomes ``[unk_token]``.

    Examples with all-MiniLM-L6-v2's (BERT's) vocabulary: ``"tokenization"`` ->
    ``["token", "##ization"]``; ``"unaffable"`` -> ``["una", "##ffa", "##ble"]``;
    ``"hello"`` -> ``["hello"]``; ``"snowman\u2603"`` -> ``["[UNK]"]``.

    Hint: two loops — the outer moves ``start``; the inner tries ``end`` from ``len(word)``
    down to ``start + 1``.
    """
    raise NotImplementedError


def pair_counts(words: dict[tuple[str, ...], int]) -> dict[tuple[str, str], int]:
    """Count adjacent symbol pairs, the statistic BPE training is driven by.

    ``words``: each word as a tuple of its current symbols, mapped to how often the word
    occurs in the training text. Returns ``{(left, right): count}`` where each adjacent pair
    inside a word adds that word's frequency (a pair that occurs twice in a word adds it
    twice). Pairs that never occur are absent.

    Example: ``pair_counts({("l", "o", "w"): 5, ("l", "o", "t"): 2})`` ==
    ``{("l", "o"): 7, ("o", "w"): 5, ("o", "t"): 2}``.

    Hint: ``zip(word, word[1:])`` gives the adjacent pairs of one word.
    """
    raise NotImplementedError


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """One BPE merge step on one word: join every occurrence of ``pair`` into one symbol.

    Scan left to right; where ``word[i], word[i + 1] == pair``, emit ``word[i] + word[i + 1]``
    and skip both; otherwise emit ``word[i]``. Occurrences do not overlap.

    Examples: ``merge_pair(("l", "o", "w"), ("l", "o")) == ("lo", "w")``;
    ``merge_pair(("a", "a", "a"), ("a", "a")) == ("aa", "a")``.

    Hint: a ``while`` loop with an index you advance by 1 or 2.
    """
    raise NotImplementedError


def bpe_word(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Encode one (pre-tokenized) word with learned BPE merges.

    ``word``: a string, already mapped to byte characters; start from its single characters.
    ``ranks``: ``{(left, right): rank}``, rank 0 = learned first. Repeatedly find, among the
    adjacent pairs of the current symbols, the one with the *lowest* rank, and merge every
    occurrence of it (like ``merge_pair``); stop when no adjacent pair is in ``ranks``.
    Returns the final list of symbols.

    Example: with ``ranks = {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2}``,
    ``bpe_word("lower", ranks) == ["low", "er"]``.

    Hint: ``min(pairs, key=lambda p: ranks.get(p, float("inf")))``; then your ``merge_pair``
    (above, in this file) does the merging.
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

    Hint: ``[pad_id] * n`` is a list of n pads; ``a + b`` joins lists.
    """
    raise NotImplementedError
