"""The course corpus: English prose and code from the Python documentation.

CPython ships the text of its documentation's "topics" (the pages ``help("assert")``
shows) in the module ``pydoc_data.topics``. The course freezes one copy of it (Python
3.11.7, PSF License — see ``course_lib/assets/python-docs/LICENSE.txt``) so every machine
sees the same bytes, whatever Python it runs.

The split is fixed: of the distinct topics in sorted order, every 7th is held out (a topic
that appears under two names is kept once, so no text is in both splits). Chapter 03 trains a BPE on ``train`` and measures it on
``heldout``; chapter 06's tiny GPT-2 is trained on ``train`` and its perplexity is measured
on ``heldout``.

Documents are separated by a line holding only ``<|endoftext|>``, GPT-2's separator.
"""

from __future__ import annotations

from pathlib import Path

DOCUMENT_SEPARATOR = "<|endoftext|>"
SPLITS = ("train", "heldout")
HELDOUT_EVERY = 7  # topics i with i % 7 == 6 (sorted by name) are held out
# The committed files' SHA-256: models and tokenizers trained on the corpus are only
# reproducible from these exact bytes (tests check them; update after `build_corpus`).
SHA256 = {
    "train": "7cd0b79a3c1f360da54403a867b9c88a399d88ab4e1d79bbed89a6f04f4bdd0f",
    "heldout": "d9731ade0e1c047bf577523a77d4d29a58a543ad006f27ec495854fad0807592",
}


def corpus_dir() -> Path:
    from course_lib.assets import asset_path

    return asset_path("python-docs")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; use one of {', '.join(SPLITS)}")


def corpus_text(split: str = "train") -> str:
    """The whole split as one string (documents separated by ``<|endoftext|>`` lines)."""
    _check_split(split)
    return (corpus_dir() / f"{split}.txt").read_text(encoding="utf-8")


def corpus_documents(split: str = "train") -> list[str]:
    """The split's documents (one Python documentation topic each), without separators."""
    text = corpus_text(split)
    docs = text.split(f"\n{DOCUMENT_SEPARATOR}\n")
    return [d.strip("\n") for d in docs if d.strip()]


def corpus_lines(split: str = "train") -> list[str]:
    """The split's non-blank lines, trailing whitespace removed, separators dropped."""
    return [line.rstrip() for line in corpus_text(split).splitlines()
            if line.strip() and line.strip() != DOCUMENT_SEPARATOR]


def build_corpus(dest: Path | None = None) -> dict[str, int]:
    """Maintainers: write ``train.txt`` and ``heldout.txt`` from this Python's ``pydoc_data``.

    The committed copy was made with Python 3.11.7; another Python gives other text, so
    re-running this changes the corpus (and everything trained on it). Returns the number
    of characters written per split.
    """
    import pydoc_data.topics

    dest = Path(dest) if dest is not None else Path(__file__).resolve().parent / "assets" / "python-docs"
    dest.mkdir(parents=True, exist_ok=True)
    topics = pydoc_data.topics.topics
    texts = []
    for name in sorted(topics):
        text = "\n".join(line.rstrip() for line in topics[name].strip("\n").splitlines())
        if text not in texts:  # a few topics appear under two names: keep one, or it leaks into both splits
            texts.append(text)
    splits: dict[str, list[str]] = {"train": [], "heldout": []}
    for i, text in enumerate(texts):
        splits["heldout" if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"].append(text)
    sizes = {}
    for split, docs in splits.items():
        body = f"\n{DOCUMENT_SEPARATOR}\n".join(docs) + "\n"
        (dest / f"{split}.txt").write_text(body, encoding="utf-8")
        sizes[split] = len(body)
    return sizes


if __name__ == "__main__":
    print(build_corpus())
