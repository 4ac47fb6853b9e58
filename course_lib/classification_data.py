"""Chapter 08's labelled data: the SMS Spam Collection, its fixed split, batches, baselines.

The set: 5,574 English text messages written by people, each labelled ``ham`` (a normal
message) or ``spam`` by people (Almeida, Gómez Hidalgo and Yamakami, 2011; CC BY 4.0; see
``course_lib/assets/sms-spam/README.md``). One line per message: the label, a TAB, the text.

The split is computed, not stored, and pinned like the corpus (``course_lib/corpus.py``):

1. **Read** the shipped file, after checking its SHA-256 (``SMS_SPAM_SHA256``).
2. **Deduplicate.** The collection repeats many messages (spam campaigns send one text to
   many people). A copy in train and another in test would let a model score by memory, so
   each text is kept once, at its first occurrence. Two texts that differ only in whitespace
   are the same text (the tokenizer sees the same tokens), so the key is the text with runs
   of whitespace collapsed. A text whose copies disagree on the label would be dropped
   entirely (its label is unknown); the shipped file has none.
3. **Split, stratified.** Within each class, messages are ordered by SHA-256 of
   ``"<seed>\\n<text>"`` — a shuffle that depends on nothing but the seed and the text, so
   it is the same on every machine and every Python/NumPy version — and cut 20 % test,
   10 % validation, the rest train. Each split keeps the file's order.
4. **Check** each split's SHA-256 (``SPLIT_SHA256``): the same bytes for every learner, and
   a loud error, never a silently different split, if the data or this code changes.

Labels are ints: ``ID2LABEL = {0: "ham", 1: "spam"}``.

Then, for the chapter: ``classification_batches`` (padded batches of ids, mask and labels
through the course's tokenizer), ``token_length_report`` (how many messages a max length
cuts), and two baselines any fine-tuned model must beat: ``majority_baseline`` and
``linear_probe_baseline`` (logistic regression on frozen mean-pooled all-MiniLM-L6-v2
embeddings). ``python -m course_lib.classification_data --baselines`` measures both.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

ASSET = "sms-spam"
DATA_FILE = "SMSSpamCollection"
# The file as shipped (the UCI distribution, no newline after the last line): 477,906 bytes.
SMS_SPAM_SHA256 = "edc1f2ca36319ca36c6f80fede2f6ae5f81335289352485f3924df077ec20266"
ID2LABEL = {0: "ham", 1: "spam"}
LABEL2ID = {label: i for i, label in ID2LABEL.items()}
SPLITS = ("train", "validation", "test")
# Per class: 20 % test (~128 spam, so one spam message is < 1 point of spam recall),
# 10 % validation (to choose hyperparameters and keep the best checkpoint; small enough that
# periodic evaluation stays cheap), 70 % train. README.md says why.
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
SPLIT_SEED = 8
# SHA-256 of each split written as the source file is ("label\ttext\n" per message, in file
# order). Tests check them; change them only together with every number measured on the split.
SPLIT_SHA256 = {
    "train": "85adcdc144d5692159dfebe4c5b54ec7b0a86fa1fca940d79227d140a7674383",  # 3,162 ham + 450 spam
    "validation": "ee05058ba383c2f3cc11cbb04d3c740cd16ca1962dd88917f21582093c9ec6b6",  # 452 + 64
    "test": "af6db92cc09864e73e6b093b65e60dea38bf3fcfc08688a1573b5e57eb4e942c",  # 904 + 128
}
DEFAULT_MAX_LENGTH = 128  # tokens, [CLS] and [SEP] included: cuts 7 of the 5,160 messages (64 would cut 79)


class DataIntegrityError(ValueError):
    """The data file, or the split computed from it, is not the one the course pins."""


class Message(NamedTuple):
    text: str
    label: int  # 0 = ham, 1 = spam


# ---------------------------------------------------------------------------- reading

def data_path() -> Path:
    """The shipped ``SMSSpamCollection`` file."""
    from course_lib.assets import asset_path

    return asset_path(ASSET) / DATA_FILE


def _restore_hint(path: Path) -> str:
    return (f"Fix: restore the shipped file (`git checkout -- course_lib/assets/{ASSET}/{DATA_FILE}`, or reinstall "
            f"the course: pip install -e .). A git checkout with core.autocrlf=true (Windows) changes the line "
            f"endings: clone again with `git -c core.autocrlf=false clone ...`. To read a different copy on purpose, "
            f"pass sha256=None")


def read_sms_spam(path: str | Path | None = None, sha256: str | None = SMS_SPAM_SHA256) -> list[Message]:
    """Every line of the SMS Spam Collection as ``Message(text, label)``, in file order.

    ``path``: the file (default: the shipped one). ``sha256``: the digest its bytes must have
    (default: the shipped file's); ``None`` skips the check. A changed file raises
    ``DataIntegrityError`` naming the file and how to restore it; a malformed line (no TAB,
    a label other than ham/spam, an empty text) raises ``ValueError`` naming the line.
    """
    path = Path(path) if path is not None else data_path()
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}. {_restore_hint(path)}")
    data = path.read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DataIntegrityError(
                f"{path}: SHA-256 {digest} ({len(data):,} bytes), expected {sha256} (the SMS Spam Collection v.1 "
                f"as shipped, 477,906 bytes). The file was changed or damaged, so the course's fixed split and every "
                f"number measured on it would differ. {_restore_hint(path)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}). {_restore_hint(path)}") from None
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":  # a newline after the last line (the shipped file has none)
        lines.pop()
    messages = []
    for number, line in enumerate(lines, start=1):
        label, tab, body = line.partition("\t")
        if not tab:
            raise ValueError(f"{path}, line {number}: no TAB between label and text ({line[:60]!r}); each line must "
                             f"be 'ham<TAB>text' or 'spam<TAB>text'")
        if label not in LABEL2ID:
            raise ValueError(f"{path}, line {number}: label {label!r} is not one of {', '.join(LABEL2ID)}")
        if not body.strip():
            raise ValueError(f"{path}, line {number}: the message text is empty")
        messages.append(Message(body, LABEL2ID[label]))
    return messages


# ---------------------------------------------------------------------------- deduplicating

@dataclasses.dataclass(frozen=True)
class Deduplication:
    """What ``deduplicate`` removed. ``n_read == n_kept + exact_duplicates + whitespace_variants
    + conflicting_messages``."""

    n_read: int
    n_kept: int
    exact_duplicates: int  # later copies with the very same text
    whitespace_variants: int  # later copies differing only in whitespace
    conflicting_messages: int  # every copy of a text whose copies disagree on the label
    conflicting_texts: tuple[str, ...]

    def summary(self) -> str:
        conflicts = (f"{len(self.conflicting_texts)} texts had conflicting labels ({self.conflicting_messages} "
                     f"messages dropped)" if self.conflicting_texts else "no duplicate had a conflicting label")
        return (f"{self.n_read:,} messages read; {self.exact_duplicates} exact duplicates and "
                f"{self.whitespace_variants} whitespace-only variants dropped; {conflicts}; {self.n_kept:,} kept")


def dedup_key(text: str) -> str:
    """Two texts are duplicates when they have the same words in the same order: runs of
    whitespace collapse to one space, ends stripped (a tokenizer sees no difference)."""
    return " ".join(text.split())


def deduplicate(messages: list[Message]) -> tuple[list[Message], Deduplication]:
    """Keep each text once (its first occurrence, in order); drop texts whose copies disagree."""
    groups: dict[str, list[Message]] = {}
    for message in messages:
        groups.setdefault(dedup_key(message.text), []).append(message)
    kept, conflicting_texts = [], []
    exact = variants = conflicting = 0
    for group in groups.values():
        if len({m.label for m in group}) > 1:
            conflicting_texts.append(group[0].text)
            conflicting += len(group)
            continue
        kept.append(group[0])
        distinct = len({m.text for m in group})
        variants += distinct - 1
        exact += len(group) - distinct
    report = Deduplication(n_read=len(messages), n_kept=len(kept), exact_duplicates=exact,
                           whitespace_variants=variants, conflicting_messages=conflicting,
                           conflicting_texts=tuple(conflicting_texts))
    return kept, report


# ---------------------------------------------------------------------------- splitting

@dataclasses.dataclass(frozen=True)
class TextSplit:
    """One split: ``texts`` (N,) str and ``labels`` (N,) int (0 = ham, 1 = spam), in file order.

    ``split[:100]`` is a smaller ``TextSplit`` (a quick experiment); ``split[i]`` a ``Message``.
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(f"split {self.name!r}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TextSplit(self.name, self.texts[index], self.labels[index])
        return Message(self.texts[index], self.labels[index])

    def label_counts(self) -> dict[str, int]:
        """Messages per class, by name: ``{"ham": ..., "spam": ...}``."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in ID2LABEL.items()}

    def sha256(self) -> str:
        """SHA-256 of the split written in the source file's format (``label\\ttext\\n`` per message)."""
        body = "".join(f"{ID2LABEL[label]}\t{text}\n" for text, label in zip(self.texts, self.labels))
        return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _shuffle_key(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\n{text}".encode("utf-8")).digest()


def stratified_split(messages: list[Message], fractions: dict[str, float] | None = None,
                     seed: int = SPLIT_SEED) -> dict[str, TextSplit]:
    """Cut ``messages`` into splits with the same class proportions.

    Within each class the messages are ordered by SHA-256 of ``"<seed>\\n<text>"`` (a
    shuffle reproducible everywhere); ``round(fraction * n_class)`` go to each split other
    than ``"train"``, the rest to ``"train"``. Each split keeps the input order. Texts must
    be distinct (``deduplicate`` first), else a text could land in two splits.
    """
    fractions = dict(SPLIT_FRACTIONS if fractions is None else fractions)
    if "train" not in fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"fractions {fractions} must include 'train', be >= 0 and sum to 1")
    if len({m.text for m in messages}) != len(messages):
        raise ValueError("the messages repeat a text: deduplicate() them first, or copies land in several splits")
    position = {m.text: i for i, m in enumerate(messages)}
    chosen: dict[str, list[Message]] = {name: [] for name in fractions}
    for label in sorted({m.label for m in messages}):
        members = sorted((m for m in messages if m.label == label), key=lambda m: _shuffle_key(seed, m.text))
        start = 0
        for name in (n for n in fractions if n != "train"):
            size = int(fractions[name] * len(members) + 0.5)  # round half up (Python's round() goes to even)
            chosen[name] += members[start:start + size]
            start += size
        chosen["train"] += members[start:]
    splits = {}
    for name in fractions:
        ordered = sorted(chosen[name], key=lambda m: position[m.text])
        splits[name] = TextSplit(name, tuple(m.text for m in ordered), tuple(m.label for m in ordered))
    return {name: splits[name] for name in sorted(splits, key=lambda n: SPLITS.index(n) if n in SPLITS else 99)}


@functools.lru_cache(maxsize=1)
def _course_splits() -> tuple[tuple[TextSplit, ...], Deduplication]:
    messages, report = deduplicate(read_sms_spam())
    splits = stratified_split(messages, SPLIT_FRACTIONS, SPLIT_SEED)
    for name, split in splits.items():
        digest = split.sha256()
        if digest != SPLIT_SHA256[name]:
            raise DataIntegrityError(
                f"the {name!r} split computed from {data_path()} has SHA-256 {digest}, but the course pins "
                f"{SPLIT_SHA256[name] or '(nothing yet)'} (course_lib/classification_data.py SPLIT_SHA256). The data "
                f"file is the shipped one, so the splitting code changed. Fix: undo the change; if it is intended, "
                f"update SPLIT_SHA256 and re-measure every number reported on this split (baselines, fine-tuning)")
    return tuple(splits.values()), report


def sms_spam_splits() -> dict[str, TextSplit]:
    """The course's fixed split: ``{"train", "validation", "test"}`` -> ``TextSplit``.

    Checked against ``SMS_SPAM_SHA256`` (the file) and ``SPLIT_SHA256`` (each split); either
    mismatch raises ``DataIntegrityError`` with the fix. Computed once per process (~20 ms).
    """
    splits, _ = _course_splits()
    return {split.name: split for split in splits}


def load_split(name: str) -> TextSplit:
    """One split of the course's fixed split: ``"train"``, ``"validation"`` or ``"test"``."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
    return sms_spam_splits()[name]


def deduplication_report() -> Deduplication:
    """What deduplicating the shipped file removed (``.summary()`` says it in one line)."""
    return _course_splits()[1]


def split_summary(splits: dict[str, TextSplit] | None = None) -> str:
    """A printable table: messages per class and split, and the spam share."""
    splits = sms_spam_splits() if splits is None else splits
    lines = [f"{'split':<10}  {'ham':>5}  {'spam':>5}  {'total':>5}  {'spam %':>6}"]
    for name, split in splits.items():
        counts = split.label_counts()
        lines.append(f"{name:<10}  {counts['ham']:>5}  {counts['spam']:>5}  {len(split):>5}  "
                     f"{100 * counts['spam'] / max(len(split), 1):>6.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tokens and batches

def token_lengths(tokenizer, texts: list[str] | tuple[str, ...]) -> list[int]:
    """Tokens per text, special tokens included, nothing cut (``tokenizers.Tokenizer``)."""
    from course_lib.tokenizer_loading import encode_batch

    if not texts:
        return []
    encoded = encode_batch(tokenizer, list(texts), padding=False, truncation=False, return_tensors=None)
    return [len(ids) for ids in encoded["input_ids"]]


def token_length_report(tokenizer, texts: list[str] | tuple[str, ...],
                        cutoffs: tuple[int, ...] = (64, 128)) -> dict[str, Any]:
    """How long the texts are in tokens ([CLS] and [SEP] included), and how many each max length cuts.

    Returns ``{"n", "mean", "median", "p90", "p95", "p99", "max", "cut_at": {cutoff: count}}``
    (percentiles by the nearest-rank method, so they are token counts that occur).
    """
    lengths = sorted(token_lengths(tokenizer, texts))
    if not lengths:
        raise ValueError("no texts to measure")

    def rank(p: float) -> int:  # nearest rank: the smallest length with at least p % of texts at or below it
        return lengths[max(0, -(-len(lengths) * p // 100) - 1)]

    return {"n": len(lengths), "mean": sum(lengths) / len(lengths), "median": rank(50), "p90": rank(90),
            "p95": rank(95), "p99": rank(99), "max": lengths[-1],
            "cut_at": {c: sum(length > c for length in lengths) for c in cutoffs}}


def classification_batches(tokenizer, split: TextSplit, batch_size: int = 32, max_length: int = DEFAULT_MAX_LENGTH,
                           shuffle: bool = False, seed: int = 0, sort_by_length: bool = False) -> list[dict]:
    """A split as padded batches for a sequence classifier.

    Each batch: ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64 (1 = token,
    0 = pad), ``labels`` (B,) int64, and ``index`` (B,) int64, the messages' positions in
    ``split`` (to put predictions back in order). T is the batch's longest message, at most
    ``max_length`` tokens with [CLS] and [SEP] (longer messages are cut, [SEP] kept); the
    last batch may be smaller.

    ``shuffle``: a new order from ``seed`` (pass the epoch number for a new order each
    epoch); ``sort_by_length``: shortest first, so each batch pads little (faster evaluation;
    the predictions do not depend on the order). Tokenizes with ``course_lib.tokenizer_loading.encode_batch``.
    """
    import torch

    from course_lib.tokenizer_loading import encode_batch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle and sort_by_length:
        raise ValueError("shuffle and sort_by_length pull in opposite directions: shuffle for training, "
                         "sort_by_length for evaluation")
    if len(split) == 0:
        raise ValueError(f"split {split.name!r} is empty")
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    elif sort_by_length:
        lengths = token_lengths(tokenizer, split.texts)
        order = sorted(range(n), key=lambda i: (lengths[i], i))
    else:
        order = list(range(n))
    batches = []
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        encoded = encode_batch(tokenizer, [split.texts[i] for i in index], max_length=max_length)
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                        "labels": torch.tensor([split.labels[i] for i in index], dtype=torch.long),
                        "index": torch.tensor(index, dtype=torch.long)})
    return batches


# ---------------------------------------------------------------------------- baselines

@dataclasses.dataclass
class BaselineResult:
    """One baseline, measured: scores per evaluated split (``{"accuracy", "macro_f1"}``), the
    predicted label ids per split (in split order), the wall time in seconds, and details."""

    name: str
    scores: dict[str, dict[str, float]]
    predictions: dict[str, list[int]]
    wall_s: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scores(split: TextSplit, predicted: list[int]) -> dict[str, float]:
    from course_lib.metrics import accuracy, macro_f1

    return {"accuracy": accuracy(split.labels, predicted),
            "macro_f1": macro_f1(split.labels, predicted, num_classes=len(ID2LABEL))}


def _evaluated(splits: dict[str, TextSplit], evaluate: tuple[str, ...]) -> dict[str, TextSplit]:
    missing = [name for name in ("train", *evaluate) if name not in splits]
    if missing:
        raise KeyError(f"the splits lack {', '.join(missing)} (they have {', '.join(splits)})")
    return {name: splits[name] for name in evaluate}


def majority_baseline(splits: dict[str, TextSplit] | None = None,
                      evaluate: tuple[str, ...] = ("validation", "test")) -> BaselineResult:
    """Always answer the most frequent class of ``splits["train"]`` (ties: the smaller id).

    The floor: on an imbalanced set its accuracy looks good (the majority's share) while its
    macro-F1 is about 0.47, the minority class never being found.
    """
    start = time.perf_counter()
    splits = sms_spam_splits() if splits is None else splits
    targets = _evaluated(splits, evaluate)
    counts = Counter(splits["train"].labels)
    majority = min(counts, key=lambda label: (-counts[label], label))
    predictions = {name: [majority] * len(split) for name, split in targets.items()}
    scores = {name: _scores(split, predictions[name]) for name, split in targets.items()}
    return BaselineResult("majority class", scores, predictions, time.perf_counter() - start,
                          {"predicted_label": ID2LABEL[majority], "train_counts": splits["train"].label_counts()})


def embed_texts(model, tokenizer, texts: list[str] | tuple[str, ...], max_length: int = DEFAULT_MAX_LENGTH,
                batch_size: int = 64, progress: bool = True):
    """(N, C) float32 CPU tensor: the L2-normalised mean-pooled embedding of each text.

    ``course_lib.models.encoder.sentence_embeddings`` on batches of similar length (texts
    sorted by token count, so a batch pads little and the encoder wastes little work on pads:
    faster than file order, same numbers), put back in the input order. The model runs in
    eval mode (no dropout); its mode is restored.
    """
    import torch
    from tqdm.auto import tqdm

    from course_lib.models.encoder import sentence_embeddings

    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    lengths = token_lengths(tokenizer, texts)
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="embedding", unit="batch", disable=not progress):
            batch = [texts[i] for i in order[start:start + batch_size]]
            chunks.append(sentence_embeddings(model, tokenizer, batch, max_length=max_length,
                                              batch_size=batch_size).float().cpu())
    finally:
        model.train(was_training)
    embeddings = torch.cat(chunks)  # (N, C), sorted by length
    out = torch.empty_like(embeddings)
    out[torch.tensor(order)] = embeddings
    return out


class LinearProbe:
    """Logistic regression on frozen features: standardise with the training mean and std,
    then ``logits = x @ W.T + b`` (chapter 02's ``Linear``). (N, C) float32 -> (N, K) logits."""

    def __init__(self, mean, std, classifier):
        self.mean, self.std, self.classifier = mean, std, classifier

    def logits(self, features):
        import torch

        with torch.no_grad():
            return self.classifier((features.float() - self.mean) / self.std)

    def predict(self, features) -> list[int]:
        """(N, C) features -> N predicted class ids."""
        return self.logits(features).argmax(dim=-1).tolist()


def fit_logistic_regression(features, labels, weight_decay: float, num_classes: int = len(ID2LABEL),
                            max_iter: int = 500) -> LinearProbe:
    """Fit a ``LinearProbe`` on ``features`` (N, C) float32 and ``labels`` (N,) int class ids.

    Minimises the mean cross-entropy + ``weight_decay / 2 · ||W||²`` (the bias is not
    penalised) with full-batch L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search) from
    W = 0, b = 0. The loss is convex, so the start does not matter and there is no randomness:
    the same data gives the same probe. ``weight_decay`` must be > 0 (separable data has no
    unpenalised optimum: the weights would grow without end).
    """
    import torch

    from course_lib.layers import Linear

    if weight_decay <= 0:
        raise ValueError(f"weight_decay must be > 0, got {weight_decay}")
    x = torch.as_tensor(features).float()
    y = torch.as_tensor(list(labels) if not hasattr(labels, "shape") else labels, dtype=torch.long)
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (N, C) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)  # (C,): from the training features only
    x = (x - mean) / std
    classifier = Linear(x.shape[1], num_classes)
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(classifier(x), y) + 0.5 * weight_decay * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, std, classifier)


WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def linear_probe_baseline(splits: dict[str, TextSplit] | None = None, model=None, tokenizer=None,
                          weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
                          evaluate: tuple[str, ...] = ("validation", "test"),
                          max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 64,
                          progress: bool = True) -> BaselineResult:
    """Logistic regression on frozen mean-pooled all-MiniLM-L6-v2 embeddings.

    Embeds every message of ``train`` and the evaluated splits once (``embed_texts``), fits
    one probe per weight decay on ``train``, keeps the one with the best validation macro-F1
    (ties: higher validation accuracy, then the larger weight decay), and scores it on
    ``evaluate``. ``model``/``tokenizer`` default to the shipped all-MiniLM-L6-v2. Nothing is
    cached on disk. ``wall_s`` covers embedding + fitting (not loading the model);
    ``details`` has ``embed_s``, ``fit_s``, the chosen ``weight_decay`` and the validation
    scores of every candidate.
    """
    if "validation" not in (splits or SPLITS):
        raise KeyError("the linear probe chooses its weight decay on a 'validation' split")
    if model is None or tokenizer is None:
        from course_lib.loading import load_model
        from course_lib.tokenizer_loading import load_tokenizer

        model = load_model("all-MiniLM-L6-v2") if model is None else model
        tokenizer = load_tokenizer("all-MiniLM-L6-v2") if tokenizer is None else tokenizer
    if not weight_decays:
        raise ValueError("weight_decays is empty: give at least one candidate")
    splits = sms_spam_splits() if splits is None else splits
    targets = _evaluated(splits, tuple(dict.fromkeys(("validation", *evaluate))))

    start = time.perf_counter()
    features = {name: embed_texts(model, tokenizer, split.texts, max_length=max_length, batch_size=batch_size,
                                  progress=progress)
                for name, split in {"train": splits["train"], **targets}.items()}
    embed_s = time.perf_counter() - start

    fit_start = time.perf_counter()
    candidates = []
    for decay in weight_decays:
        probe = fit_logistic_regression(features["train"], splits["train"].labels, decay)
        val = _scores(splits["validation"], probe.predict(features["validation"]))
        candidates.append((val["macro_f1"], val["accuracy"], decay, probe))
    best = max(candidates, key=lambda c: c[:3])
    probe, decay = best[3], best[2]
    fit_s = time.perf_counter() - fit_start

    predictions = {name: probe.predict(features[name]) for name in evaluate}
    scores = {name: _scores(split, predictions[name]) for name, split in targets.items() if name in evaluate}
    details = {"weight_decay": decay, "embed_s": embed_s, "fit_s": fit_s, "max_length": max_length,
               "n_features": int(features["train"].shape[1]),
               "validation_by_weight_decay": {d: {"macro_f1": f1, "accuracy": acc} for f1, acc, d, _ in candidates}}
    return BaselineResult("linear probe (frozen MiniLM, mean-pooled)", scores, predictions,
                          time.perf_counter() - start, details)


def results_table(results: list[BaselineResult], splits: tuple[str, ...] = ("validation", "test")) -> str:
    """A printable table: accuracy and macro-F1 per split for each result, and its wall time."""
    head = "".join(f"  {s[:4] + ' acc':>9}  {s[:4] + ' F1':>8}" for s in splits)
    width = max(len("baseline"), *(len(r.name) for r in results))
    lines = [f"{'baseline':<{width}}{head}  {'wall s':>7}"]
    for r in results:
        cells = "".join(f"  {r.scores[s]['accuracy']:>9.3f}  {r.scores[s]['macro_f1']:>8.3f}" for s in splits)
        lines.append(f"{r.name:<{width}}{cells}  {r.wall_s:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.classification_data [--baselines] [--json PATH]``: the split, the
    token lengths, and (with ``--baselines``) both baselines measured."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", action="store_true", help="measure the majority and linear-probe baselines")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)

    from course_lib.tokenizer_loading import load_tokenizer

    splits = sms_spam_splits()
    print(deduplication_report().summary())
    print(split_summary(splits))
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    lengths = token_length_report(tokenizer, [t for s in splits.values() for t in s.texts])
    print(f"tokens per message (all-MiniLM-L6-v2, [CLS]/[SEP] included): mean {lengths['mean']:.1f}, median "
          f"{lengths['median']}, p90 {lengths['p90']}, p95 {lengths['p95']}, p99 {lengths['p99']}, "
          f"max {lengths['max']}; "
          + ", ".join(f"{n} of {lengths['n']} cut at {c}" for c, n in lengths["cut_at"].items()))
    out: dict[str, Any] = {"deduplication": dataclasses.asdict(deduplication_report()),
                           "splits": {name: split.label_counts() for name, split in splits.items()},
                           "token_lengths": lengths}
    if args.baselines:
        import torch

        results = [majority_baseline(splits), linear_probe_baseline(splits, max_length=args.max_length)]
        print(results_table(results))
        probe = results[1].details
        print(f"linear probe: weight decay {probe['weight_decay']:g} (chosen on validation macro-F1), embedding "
              f"{probe['embed_s']:.1f} s, fitting {len(probe['validation_by_weight_decay'])} probes "
              f"{probe['fit_s']:.1f} s, "
              f"torch threads {torch.get_num_threads()}")
        out["baselines"] = [{k: v for k, v in r.as_dict().items() if k != "predictions"} for r in results]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
