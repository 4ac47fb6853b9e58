"""Chapter 08's measured experiments: fine-tune, adapt, deploy and prune real models on a CPU.

``python -m course_lib.fine_tuning`` runs them all (about 20 minutes on 2 cores) and writes
``course_lib/assets/fine-tuning/results.json``, which the chapter reads; its README documents
every key. The experiments, one function each:

1. ``fine_tune_classifier(FULL)``: all-MiniLM-L6-v2 with a new ham/spam head, every weight
   trained (``course_lib.training.train``: AdamW, warmup + cosine, clipping, the weights with
   the best validation macro-F1 kept), then scored on validation and test;
2. ``fine_tune_classifier(LORA)``: the same model frozen, LoRA adapters on ``query`` and
   ``value`` plus the new classifier trained, as PEFT does for sequence classification;
3. ``baseline_rows``: the majority class and the linear probe on frozen mean-pooled
   embeddings (``course_lib.classification_data``), measured in the same run, so that
   ``fine_tuning_table`` shows four rows on one split;
4. ``deploy``: the fine-tuned model -> ``save_pretrained`` -> ``load_model`` -> ``quantize=``
   int8 and int4: test scores, file size and parameter bytes of each;
5. ``pruning_cost``: each head's importance = how much the validation loss rises when it
   alone is masked (``surgery.head_importance``); then the k least important heads pruned
   for several k, each pruned model scored on test (and, for comparison, k heads chosen at
   random);
6. ``gpt2_lora``: the course's tiny GPT-2 adapted with LoRA to a question/answer format made
   from the corpus (``instruction_examples``); held-out perplexity before and after, and
   after saving the adapter in PEFT's layout and loading it into a fresh model.

Choices are made on the validation split only: ``search_settings`` (``--search``) trains
every candidate of ``FULL_CANDIDATES`` and ``LORA_CANDIDATES`` and records their validation
scores; ``FULL`` and ``LORA`` are the winners. ``notebook_run`` is a smaller run (one epoch,
about 2 minutes on 2 cores) that the notebook can run live; its numbers are not the table's.

Every run is seeded and uses a fixed number of threads; the same command on the same kind
of machine gives the same numbers. Shapes: N messages, B batch, T tokens, K = 2 classes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from course_lib.classification_data import (DEFAULT_MAX_LENGTH, ID2LABEL, SPLIT_SHA256, TextSplit,
                                            classification_batches, linear_probe_baseline, majority_baseline,
                                            sms_spam_splits, token_lengths)
from course_lib.results_file import ResultsError, ResultsLayout
from course_lib.training import (AdamW, LossSum, WarmupCosineSchedule, causal_lm_loss, classification_loss,
                                 cross_entropy, evaluate, seed_everything, train, weight_decay_groups)

__all__ = [
    "RESULTS_PATH", "SCHEMA_VERSION", "ClassifierSettings", "FULL", "LORA", "NOTEBOOK", "FULL_CANDIDATES",
    "LORA_CANDIDATES", "PRUNE_KS", "GPT2LoRASettings", "GPT2_LORA", "QUESTION", "MIN_ANSWER_CHARS",
    "LengthBucketedBatches", "model_inputs", "spam_loss", "mean_spam_loss", "eval_batches", "predict_logits",
    "scores_of", "build_classifier", "ClassifierRun", "fine_tune_classifier", "first_step_loss", "baseline_rows",
    "table_row", "deploy", "pruning_cost", "instruction_examples", "gpt2_lora",
    "notebook_run", "search_settings", "run_all", "SECTIONS", "TABLE_METHODS", "ResultsError", "read_results",
    "write_results", "check_results", "fine_tuning_table", "deploy_table", "pruning_table", "main",
]

RESULTS_PATH = Path(__file__).resolve().parent / "assets" / "fine-tuning" / "results.json"
SCHEMA_VERSION = 1
COMMAND = "python -m course_lib.fine_tuning"
LABELS = tuple(ID2LABEL[i] for i in sorted(ID2LABEL))  # ("ham", "spam")
MODEL = "all-MiniLM-L6-v2"


# --------------------------------------------------------------------------------------
# 1. Settings

@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """Every choice of one fine-tuning run of the ham/spam classifier; all of it goes into results.json.

    ``method``: "full" (every weight trains) or "lora" (adapters + the new classifier).
    ``epochs`` passes over the training split in batches of ``batch_size`` messages, cut at
    ``max_length`` tokens; or ``max_steps`` optimizer steps if given (a shorter run).
    ``learning_rate``: the peak of a linear warmup over ``warmup_fraction`` of the steps and a
    cosine down to 0. ``eval_every``: steps between validation evaluations (the best
    macro-F1 is kept). ``bucket_batches``: batches of similar length come from windows of
    that many batches (see ``LengthBucketedBatches``). ``train_limit``: use only the first
    that many training messages (tests, quick looks). ``seed``: the head's initial weights,
    dropout and the data order.
    """

    method: str = "full"
    model: str = MODEL
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = 32
    epochs: int = 3
    max_steps: int | None = None
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 25
    bucket_batches: int = 20
    train_limit: int | None = None
    seed: int = 0
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self):
        if self.method not in ("full", "lora"):
            raise ValueError(f"method={self.method!r}: use 'full' (every weight trains) or 'lora' (adapters)")
        for name in ("batch_size", "epochs", "eval_every", "bucket_batches", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an int >= 1")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps={self.max_steps!r} must be None (use epochs) or an int >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction!r} must be in [0, 1)")
        if self.train_limit is not None and self.train_limit < 2:
            raise ValueError(f"train_limit={self.train_limit!r} must be None (all) or >= 2 messages")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["lora_targets"] = list(self.lora_targets)
        if self.method == "full":  # LoRA's fields mean nothing for a full fine-tuning run
            for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets"):
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ClassifierSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown classifier settings {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "lora_targets" else v for k, v in values.items()})


# The settings of the table's two runs: the best validation macro-F1 among the candidates
# below (``python -m course_lib.fine_tuning --only search`` measures them; README.md has the numbers).
FULL = ClassifierSettings(method="full", learning_rate=1e-4, epochs=3)
LORA = ClassifierSettings(method="lora", learning_rate=2e-3, epochs=3)
# What was tried on validation: the learning rate (each candidate trained in full, scored on validation only).
# The order is the order they were measured in (results.json's validation_search lists them so).
FULL_CANDIDATES = tuple(dataclasses.replace(FULL, learning_rate=lr) for lr in (5e-5, 2e-5, 1e-4))
LORA_CANDIDATES = tuple(dataclasses.replace(LORA, learning_rate=lr) for lr in (1e-3, 5e-4, 2e-3))
# The notebook's live run: full fine-tuning for one epoch (about 2 minutes on 2 cores).
NOTEBOOK = dataclasses.replace(FULL, epochs=1, eval_every=40)
# How many of the 72 heads are pruned (each layer keeps one, so 66 at most)
PRUNE_KS = (0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66)


# --------------------------------------------------------------------------------------
# 2. Batches, predictions, scores

def model_inputs(batch: dict) -> dict:
    """The batch without ``index`` (the messages' positions, for putting predictions back in order):
    ``input_ids``, ``attention_mask`` and ``labels`` for ``classification_loss``."""
    return {k: v for k, v in batch.items() if k != "index"}


def spam_loss(model: nn.Module, batch: dict) -> LossSum:
    """``training.classification_loss`` of a batch from ``classification_batches`` (its ``index`` left out)."""
    return classification_loss(model, model_inputs(batch))


def mean_spam_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The mean cross-entropy of a batch, a scalar tensor (what ``surgery.head_importance`` averages)."""
    total, count = spam_loss(model, batch)
    return total / count


class LengthBucketedBatches:
    """Training batches of messages of similar length, in a new random order each epoch.

    Padding to the longest message of a random batch wastes most of the work: a batch of
    32 random messages pads to ~70 tokens while the mean message has 25. Each epoch
    (``iter``): shuffle the messages; cut the order into windows of ``bucket_batches *
    batch_size`` messages; sort each window by length and cut it into batches; shuffle the
    batches. Batches stay random (which messages meet, and in which order the batches come)
    but pad little. The epoch's order is drawn from PyTorch's global generator, so a seeded
    run repeats it and ``train(resume=True)`` replays it.

    Each batch: ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64, ``labels`` (B,)
    int64 (T = the batch's longest message, at most ``max_length``).
    """

    def __init__(self, tokenizer, split: TextSplit, batch_size: int = 32, max_length: int = DEFAULT_MAX_LENGTH,
                 bucket_batches: int = 20):
        if len(split) == 0:
            raise ValueError(f"split {split.name!r} is empty: nothing to train on")
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"batch_size={batch_size} and bucket_batches={bucket_batches} must be >= 1")
        self.tokenizer, self.split = tokenizer, split
        self.batch_size, self.max_length, self.bucket_batches = batch_size, max_length, bucket_batches
        self.lengths = [min(n, max_length) for n in token_lengths(tokenizer, split.texts)]

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)  # windows hold whole batches: only the last is short

    def epoch_order(self, seed: int) -> list[list[int]]:
        """The batches of one epoch as lists of message positions, for a given seed."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.split), generator=g).tolist()
        window = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window], key=lambda i: (self.lengths[i], i))
            batches += [part[j:j + self.batch_size] for j in range(0, len(part), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def batch(self, index: list[int]) -> dict:
        """The padded batch of messages ``index`` (positions in the split)."""
        part = TextSplit(self.split.name, tuple(self.split.texts[i] for i in index),
                         tuple(self.split.labels[i] for i in index))
        return model_inputs(classification_batches(self.tokenizer, part, batch_size=len(index),
                                                   max_length=self.max_length)[0])

    def __iter__(self) -> Iterator[dict]:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # from the global generator: seeded runs repeat
        for index in self.epoch_order(seed):
            yield self.batch(index)


def eval_batches(tokenizer, split: TextSplit, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 64) -> list:
    """A split as batches sorted by length (little padding), each with its ``index``."""
    return classification_batches(tokenizer, split, batch_size=batch_size, max_length=max_length, sort_by_length=True)


@torch.no_grad()
def predict_logits(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """Logits (N, K) float32 of a split, in the split's order, from ``eval_batches``; eval mode, mode restored."""
    was_training = model.training
    model.eval()
    try:
        n = sum(len(b["index"]) for b in batches)
        out = None
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()  # (B, K)
            if out is None:
                out = torch.empty(n, logits.shape[-1])
            out[batch["index"]] = logits
    finally:
        model.train(was_training)
    return out


def scores_of(labels, logits: torch.Tensor) -> dict[str, Any]:
    """``{"accuracy", "macro_f1", "loss", "confusion_matrix"}`` of logits (N, K) against labels (N,).

    ``loss``: mean cross-entropy; ``confusion_matrix``: K x K nested lists, rows = true
    class, columns = predicted (ham, spam).
    """
    from course_lib.metrics import accuracy, confusion_matrix, macro_f1

    labels = torch.as_tensor(labels, dtype=torch.long)
    predicted = logits.argmax(dim=-1)
    return {"accuracy": accuracy(labels, predicted), "macro_f1": macro_f1(labels, predicted, num_classes=len(LABELS)),
            "loss": float(cross_entropy(logits.float(), labels)),
            "confusion_matrix": confusion_matrix(labels, predicted, num_classes=len(LABELS)).tolist()}


def _split_scores(model: nn.Module, batches: list, split: TextSplit) -> dict[str, Any]:
    return scores_of(split.labels, predict_logits(model, batches))


# --------------------------------------------------------------------------------------
# 3. Fine-tuning: full and LoRA

def build_classifier(settings: ClassifierSettings):
    """all-MiniLM-L6-v2 with a new ham/spam head (fused kernels), LoRA applied for ``method="lora"``.

    Seeds PyTorch with ``settings.seed`` first: the new head (and LoRA's A matrices) are drawn
    from its global generator. Returns the model, in train mode.
    """
    from course_lib.fused import fuse
    from course_lib.loading import load_model
    from course_lib.lora import apply_lora

    seed_everything(settings.seed)
    model = load_model(settings.model, task="sequence-classification", id2label=ID2LABEL)
    fuse(model)  # PyTorch's fused kernels: same values, faster (course_lib.fused)
    if settings.method == "lora":
        apply_lora(model, target_modules=settings.lora_targets, r=settings.lora_r, alpha=settings.lora_alpha,
                   dropout=settings.lora_dropout)  # modules_to_save: PEFT's ("classifier", "score") for SEQ_CLS
    return model.train()


@dataclasses.dataclass
class ClassifierRun:
    """One fine-tuning run, measured.

    ``model``: the trained model (best validation weights, eval mode); ``history``: what
    ``training.train`` returned; ``scores``: ``{"validation", "test"}`` -> ``scores_of``;
    ``trainable``/``total``: parameter counts; ``train_s``: the training loop's wall time
    (periodic validation included), ``score_s``: the final scoring.
    """

    settings: ClassifierSettings
    model: nn.Module
    history: dict
    scores: dict[str, dict[str, Any]]
    trainable: int
    total: int
    train_s: float
    score_s: float
    steps: int

    def summary(self) -> dict[str, Any]:
        """The run as results.json stores it (no model)."""
        return {"settings": self.settings.as_dict(), "trainable_parameters": self.trainable,
                "total_parameters": self.total, "steps": self.steps, "train_s": round(self.train_s, 1),
                "score_s": round(self.score_s, 1), "scores": self.scores, "history": _history_summary(self.history)}


def _history_summary(history: dict) -> dict[str, Any]:
    keep = ("step", "epoch", "loss", "lr", "grad_norm", "eval_step", "eval", "best_metric", "best_step", "best_value",
            "wall_seconds")
    out = {k: history[k] for k in keep}
    out["loss"] = [round(v, 5) for v in out["loss"]]
    out["grad_norm"] = [round(v, 4) for v in out["grad_norm"]]
    out["lr"] = [float(f"{v:.6g}") for v in out["lr"]]
    out["eval"] = {k: [round(v, 6) for v in vs] for k, vs in out["eval"].items()}
    return out


def fine_tune_classifier(settings: ClassifierSettings = FULL, splits: dict[str, TextSplit] | None = None,
                         evaluate_on: tuple[str, ...] = ("validation", "test"), progress: bool = True,
                         tokenizer=None) -> ClassifierRun:
    """Fine-tune the ham/spam classifier as ``settings`` say; returns the measured ``ClassifierRun``.

    Trains on ``splits["train"]`` (the course's fixed split by default), evaluates on
    ``splits["validation"]`` every ``eval_every`` steps (loss, accuracy, macro-F1), keeps the
    weights with the best validation macro-F1, then scores them on ``evaluate_on``
    (pass ``("validation",)`` to choose settings without looking at test).
    """
    from course_lib.lora import count_parameters
    from course_lib.tokenizer_loading import load_tokenizer

    splits = sms_spam_splits() if splits is None else splits
    tokenizer = load_tokenizer(settings.model) if tokenizer is None else tokenizer
    train_split = splits["train"] if settings.train_limit is None else splits["train"][:settings.train_limit]
    model = build_classifier(settings)
    counts = count_parameters(model)
    train_batches = LengthBucketedBatches(tokenizer, train_split, settings.batch_size, settings.max_length,
                                          settings.bucket_batches)
    steps = settings.max_steps or settings.epochs * len(train_batches)
    optimizer = AdamW(weight_decay_groups(model, settings.weight_decay), lr=settings.learning_rate)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=int(settings.warmup_fraction * steps), total_steps=steps)
    val_batches = eval_batches(tokenizer, splits["validation"], settings.max_length)

    def eval_fn(m):
        s = _split_scores(m, val_batches, splits["validation"])
        return {"loss": s["loss"], "accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}

    start = time.perf_counter()
    history = train(model, optimizer, train_batches, spam_loss, schedule=schedule, max_steps=steps,
                    max_grad_norm=settings.max_grad_norm, eval_fn=eval_fn, eval_every=settings.eval_every,
                    best_metric="macro_f1", higher_is_better=True, seed=settings.seed, progress=progress,
                    desc=f"{settings.method} fine-tuning")
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = {name: _split_scores(model, eval_batches(tokenizer, splits[name], settings.max_length), splits[name])
              for name in evaluate_on}
    return ClassifierRun(settings, model, history, scores, counts.trainable, counts.total, train_s,
                         time.perf_counter() - start, steps)


def first_step_loss(settings: ClassifierSettings, splits: dict[str, TextSplit] | None = None) -> float:
    """The training loss of the first batch of a run with ``settings`` (history["loss"][0]), recomputed.

    Builds the model and the first batch exactly as ``fine_tune_classifier`` does, and runs
    one forward pass in train mode (dropout on, from the same seeded generator): a cheap
    check that recorded settings reproduce a recorded run.
    """
    from course_lib.tokenizer_loading import load_tokenizer

    splits = sms_spam_splits() if splits is None else splits
    tokenizer = load_tokenizer(settings.model)
    train_split = splits["train"] if settings.train_limit is None else splits["train"][:settings.train_limit]
    model = build_classifier(settings)
    batches = LengthBucketedBatches(tokenizer, train_split, settings.batch_size, settings.max_length,
                                    settings.bucket_batches)
    seed_everything(settings.seed)  # as train(seed=...) does before its first batch
    batch = next(iter(batches))
    with torch.no_grad():
        total, count = spam_loss(model, batch)
    return float(total) / int(count)


# --------------------------------------------------------------------------------------
# 4. The table: baselines and fine-tuning on one split

def table_row(method: str, scores: dict[str, dict], trainable: int, total: int, wall_s: float,
              note: str = "") -> dict[str, Any]:
    """One row of the fine-tuning table as results.json stores it."""
    return {"method": method,
            "validation": {k: scores["validation"][k] for k in ("accuracy", "macro_f1")},
            "test": {k: scores["test"][k] for k in ("accuracy", "macro_f1")},
            "trainable_parameters": int(trainable), "total_parameters": int(total), "wall_s": round(wall_s, 1),
            "note": note}


def baseline_rows(splits: dict[str, TextSplit] | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """The majority-class and linear-probe rows, measured now; and the probe's details."""
    from course_lib.loading import load_model
    from course_lib.lora import count_parameters

    splits = sms_spam_splits() if splits is None else splits
    majority = majority_baseline(splits)
    encoder = load_model(MODEL)  # the frozen encoder the probe reads (task "base": no head)
    probe = linear_probe_baseline(splits, model=encoder, progress=progress)
    probe_parameters = probe.details["n_features"] * len(LABELS) + len(LABELS)  # W (K, C) and b (K,)
    rows = [table_row("majority", majority.scores, 0, 0, majority.wall_s,
                      f"always '{majority.details['predicted_label']}'"),
            table_row("linear_probe", probe.scores, probe_parameters,
                      count_parameters(encoder).total + probe_parameters, probe.wall_s, f"logistic regression on frozen mean-pooled embeddings, weight decay "
                                    f"{probe.details['weight_decay']:g}; wall = embedding + fitting")]
    details = {k: v for k, v in probe.details.items() if k != "validation_by_weight_decay"}
    details["validation_by_weight_decay"] = {str(k): v for k, v in probe.details["validation_by_weight_decay"].items()}
    from course_lib.metrics import confusion_matrix
    for name in ("validation", "test"):
        details[f"{name}_confusion_matrix"] = confusion_matrix(splits[name].labels, probe.predictions[name],
                                                               num_classes=len(LABELS)).tolist()
    return rows, details


# --------------------------------------------------------------------------------------
# 5. Deploy: save, reload, quantize

def _file_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.name.endswith(".safetensors"))


def deploy(model: nn.Module, splits: dict[str, TextSplit] | None = None, tokenizer=None,
           schemes: tuple[str, ...] = ("int8", "int4"), max_length: int = DEFAULT_MAX_LENGTH,
           folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The fine-tuned classifier -> ``save_pretrained`` -> ``load_model`` (float32, then each of ``schemes``).

    For each variant: test accuracy and macro-F1, the bytes of its weight file
    (``model.safetensors`` as ``save_pretrained`` writes it; a quantized model saves its
    integers and scales), the bytes of its parameters and buffers in memory
    (``quantization.model_nbytes``), the largest logit difference from the model in memory
    and the share of test messages on which both predict the same class. ``folder``: where to
    save (default: a temporary folder, deleted afterwards).
    """
    from course_lib.loading import load_model
    from course_lib.quantization import model_nbytes
    from course_lib.tokenizer_loading import load_tokenizer

    splits = sms_spam_splits() if splits is None else splits
    tokenizer = load_tokenizer(MODEL) if tokenizer is None else tokenizer
    test = splits["test"]
    batches = eval_batches(tokenizer, test, max_length)
    reference = predict_logits(model, batches)  # (N, K): the model as trained, in memory
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder) if folder is not None else Path(tmp)
        saved = model.save_pretrained(root / "float32")
        for scheme in (None, *schemes):
            start = time.perf_counter()
            reloaded = load_model(saved, task="sequence-classification", quantize=scheme)
            load_s = time.perf_counter() - start
            logits = predict_logits(reloaded, batches)
            scores = scores_of(test.labels, logits)
            if scheme is None:
                file_bytes = _file_bytes(saved)
            else:
                file_bytes = _file_bytes(reloaded.save_pretrained(root / scheme))
            rows.append({"variant": scheme or "float32",
                         "test": {k: scores[k] for k in ("accuracy", "macro_f1")},
                         "test_confusion_matrix": scores["confusion_matrix"],
                         "file_bytes": file_bytes, "parameter_bytes": model_nbytes(reloaded),
                         "max_abs_logit_diff": float((logits - reference).abs().max()),
                         "prediction_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
                         "load_s": round(load_s, 2)})
    return {"model": "the full fine-tuning run's best weights", "split": "test", "rows": rows}


# --------------------------------------------------------------------------------------
# 6. Pruning: what removing the least important heads costs

def pruning_cost(model: nn.Module, splits: dict[str, TextSplit] | None = None, tokenizer=None,
                 ks: tuple[int, ...] = PRUNE_KS, max_length: int = DEFAULT_MAX_LENGTH, random_seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Prune the k least important heads of ``model`` for each k in ``ks``; score each pruned copy.

    Importance: ``surgery.head_importance`` on the **validation** split (mean cross-entropy
    with each head masked minus without), so the heads are chosen without looking at test.
    Each pruned copy (``copy.deepcopy`` + ``surgery.prune_heads``; ``model`` is unchanged) is
    scored on validation and **test**. For comparison the same k are pruned in a random order
    (uniform importances from a generator seeded with ``random_seed``): the gap between the two
    curves is what measuring importance buys. Returns the importance (L, H) and one row per
    (order, k): heads left, parameters, the pruned heads, scores.
    """
    from course_lib.lora import count_parameters
    from course_lib.surgery import attention_blocks, head_importance, least_important_heads, prune_heads
    from course_lib.tokenizer_loading import load_tokenizer
    from tqdm.auto import tqdm

    splits = sms_spam_splits() if splits is None else splits
    tokenizer = load_tokenizer(MODEL) if tokenizer is None else tokenizer
    batches = {name: eval_batches(tokenizer, splits[name], max_length) for name in ("validation", "test")}
    start = time.perf_counter()
    importance = head_importance(model, batches["validation"], mean_spam_loss, progress=progress)  # (L, H)
    importance_s = time.perf_counter() - start
    num_layers, num_heads = importance.shape
    total_heads = num_layers * num_heads
    orders = {"importance": importance,
              "random": torch.rand(num_layers, num_heads, generator=torch.Generator().manual_seed(random_seed),
                                   dtype=torch.float64)}
    rows = []
    start = time.perf_counter()
    todo = [(order, k) for order in orders for k in ks]
    for order, k in tqdm(todo, desc="pruning", disable=not progress):
        if k == 0 and rows and rows[0]["k"] == 0:  # nothing pruned: the same model whatever the order
            rows.append({**copy.deepcopy(rows[0]), "order": order})
            continue
        heads = least_important_heads(orders[order], k)
        pruned = prune_heads(copy.deepcopy(model), heads)
        left = sum(blk.self.num_attention_heads if hasattr(blk, "self") else blk.n_head
                   for blk in attention_blocks(pruned))
        row = {"order": order, "k": k, "heads_left": left, "parameters": count_parameters(pruned).total,
               "pruned_heads": {str(layer): hs for layer, hs in heads.items()}}
        for name in ("validation", "test"):
            s = _split_scores(pruned, batches[name], splits[name])
            row[name] = {key: s[key] for key in ("accuracy", "macro_f1", "loss")}
        rows.append(row)
    return {"model": "the full fine-tuning run's best weights (not the base model)",
            "importance_split": "validation", "scored_splits": ["validation", "test"],
            "importance": [[round(float(v), 6) for v in row] for row in importance],
            "total_heads": total_heads, "importance_s": round(importance_s, 1),
            "prune_s": round(time.perf_counter() - start, 1), "random_seed": random_seed, "rows": rows}


# --------------------------------------------------------------------------------------
# 7. LoRA on the tiny GPT-2: a question/answer format made from the corpus

QUESTION = "Question: What does the Python documentation say about {title}?\nAnswer:"
_UNDERLINE = set("*=-~^")


def _is_underline(line: str, title: str) -> bool:
    return bool(line) and set(line) <= _UNDERLINE and len(line) == len(title) and bool(title.strip())


MIN_ANSWER_CHARS = 40  # shorter paragraphs are mostly "See also:", "Note:", "The following code:"


def _section_paragraphs(split: str) -> list[tuple[str, str, int]]:
    from course_lib.corpus import corpus_documents

    examples = []
    for number, document in enumerate(corpus_documents(split)):
        lines = document.split("\n")
        title, paragraph = None, []

        def flush():
            text = " ".join(p.strip() for p in paragraph)
            if title is not None and paragraph and not paragraph[0].startswith(" ") and len(text) >= MIN_ANSWER_CHARS:
                examples.append((QUESTION.format(title=title), " " + text, number))

        i = 0
        while i < len(lines):
            line = lines[i]
            if i + 1 < len(lines) and _is_underline(lines[i + 1], line):
                flush()
                title, paragraph = line.strip(), []
                i += 2
                continue
            if line.strip():
                paragraph.append(line)
            else:
                flush()
                paragraph = []
            i += 1
        flush()
    return examples


def instruction_examples(split: str = "train") -> list[tuple[str, str, int]]:
    """(prompt, answer, document number) for every prose paragraph of every titled section of the corpus.

    The corpus (``course_lib.corpus``) is the Python documentation's topics; a section is
    a title line underlined with ``*``, ``=``, ``-``, ``~`` or ``^``. Each paragraph of
    running text in it of at least ``MIN_ANSWER_CHARS`` characters (code and grammar blocks
    are indented and skipped) becomes one example: prompt ``QUESTION`` with the section's
    title, answer " " + the paragraph on one line. The documents of ``"heldout"`` give the
    held-out examples, minus the paragraphs that a training document also holds (some
    topics repeat a section of another: ``with`` is also in "compound statements").
    """
    examples = _section_paragraphs(split)
    if split == "heldout":
        seen = {answer for _, answer, _ in _section_paragraphs("train")}
        examples = [e for e in examples if e[1] not in seen]
    return examples


@dataclasses.dataclass(frozen=True)
class GPT2LoRASettings:
    """LoRA fine-tuning of the tiny GPT-2 on ``instruction_examples``; all of it goes into results.json.

    The examples of every ``validation_every``-th training document are kept out of training
    to choose the settings and the best step (by the training objective's loss on them); the
    corpus's held-out split is the test. ``answer_only``: the loss counts the answer's tokens
    only (the prompt's labels are -100), as instruction tuning often does; by default every
    token counts, the prompt's too, so that the held-out stream's perplexity measures what
    was trained. Sequences are cut at ``max_length`` tokens.
    """

    model: str = "tiny-gpt2"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    learning_rate: float = 5e-3
    steps: int = 300
    batch_size: int = 8
    warmup_steps: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256
    eval_every: int = 25
    validation_every: int = 5
    answer_only: bool = False
    block_size: int = 256
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPT2LoRASettings":
        return cls(**{k: tuple(v) if k == "targets" else v for k, v in values.items()})


GPT2_LORA = GPT2LoRASettings()


class _ExampleBatches:
    """Padded causal-LM batches of (prompt, answer) examples, reshuffled each epoch from the global generator.

    Each batch: ``input_ids`` (B, T) int64 (padded with end-of-text), ``attention_mask`` (B, T),
    ``labels`` (B, T): the ids, -100 on padding (and on the prompt when ``answer_only``).
    """

    def __init__(self, tokenizer, examples, batch_size: int, max_length: int, answer_only: bool,
                 shuffle: bool = True):
        eos = tokenizer.token_to_id("<|endoftext|>")
        self.items = []
        for prompt, answer, _ in examples:
            prompt_ids = tokenizer.encode(prompt).ids
            ids = (prompt_ids + tokenizer.encode(answer).ids)[:max_length - 1] + [eos]
            labels = list(ids)
            if answer_only:
                labels[:len(prompt_ids)] = [-100] * min(len(prompt_ids), len(ids))
            self.items.append((ids, labels))
        self.batch_size, self.shuffle, self.eos = batch_size, shuffle, eos

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __iter__(self):
        n = len(self.items)
        order = torch.randperm(n).tolist() if self.shuffle else list(range(n))
        for start in range(0, n, self.batch_size):
            part = [self.items[i] for i in order[start:start + self.batch_size]]
            width = max(len(ids) for ids, _ in part)
            ids = torch.full((len(part), width), self.eos, dtype=torch.long)
            labels = torch.full((len(part), width), -100, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for row, (x, y) in enumerate(part):
                ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _stream(tokenizer, examples) -> torch.Tensor:
    """The examples as one token stream (N,) int64: prompt + answer + end-of-text, one after the other."""
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids = []
    for prompt, answer, _ in examples:
        ids += tokenizer.encode(prompt + answer).ids + [eos]
    return torch.tensor(ids, dtype=torch.long)


def _gpt2_quality(model, tokenizer, settings: GPT2LoRASettings, heldout, heldout_corpus) -> dict[str, float]:
    from course_lib.metrics import perplexity

    answers = _ExampleBatches(tokenizer, heldout, 16, settings.max_length, answer_only=True, shuffle=False)
    return {"heldout_qa": perplexity(model, _stream(tokenizer, heldout), block_size=settings.block_size),
            "heldout_qa_answers": math.exp(evaluate(model, answers, causal_lm_loss)),
            "heldout_corpus": perplexity(model, heldout_corpus, block_size=settings.block_size)}


def gpt2_lora(settings: GPT2LoRASettings = GPT2_LORA, progress: bool = True,
              adapter_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """LoRA on the tiny GPT-2: held-out perplexity before, after, and after a save/load round trip.

    Perplexities (``metrics.perplexity``, blocks of ``block_size``): ``heldout_qa`` on the
    held-out examples as one stream (prompts, answers, separators); ``heldout_qa_answers``
    over the answers' tokens only (exp of the mean answer cross-entropy); ``heldout_corpus``
    on the plain held-out corpus (what the model was trained for: does adapting cost
    anything there?). The adapter is saved in PEFT's layout (``lora.save_adapter``) to
    ``adapter_folder`` (default: a temporary folder), loaded into a freshly loaded model
    (``lora.load_adapter``) and measured again.
    """
    from course_lib.corpus import corpus_text
    from course_lib.loading import load_model
    from course_lib.lora import apply_lora, count_parameters, load_adapter, save_adapter
    from course_lib.tokenizer_loading import load_tokenizer

    start_all = time.perf_counter()
    tokenizer = load_tokenizer(settings.model)
    examples = instruction_examples("train")
    heldout = instruction_examples("heldout")
    train_examples = [e for e in examples if e[2] % settings.validation_every != settings.validation_every - 1]
    val_examples = [e for e in examples if e[2] % settings.validation_every == settings.validation_every - 1]
    heldout_corpus = torch.tensor(tokenizer.encode(corpus_text("heldout")).ids, dtype=torch.long)

    seed_everything(settings.seed)
    model = load_model(settings.model)
    before = _gpt2_quality(model, tokenizer, settings, heldout, heldout_corpus)
    apply_lora(model, target_modules=settings.targets, r=settings.r, alpha=settings.alpha, dropout=settings.dropout)
    counts = count_parameters(model)
    train_batches = _ExampleBatches(tokenizer, train_examples, settings.batch_size, settings.max_length,
                                    settings.answer_only)
    val_batches = list(_ExampleBatches(tokenizer, val_examples, 16, settings.max_length, settings.answer_only,
                                       shuffle=False))  # the training objective, on examples it never sees
    optimizer = AdamW(weight_decay_groups(model, settings.weight_decay), lr=settings.learning_rate)
    schedule = WarmupCosineSchedule(optimizer, settings.warmup_steps, settings.steps)
    history = train(model, optimizer, train_batches, causal_lm_loss, schedule=schedule, max_steps=settings.steps,
                    max_grad_norm=settings.max_grad_norm, eval_data=val_batches, eval_every=settings.eval_every,
                    best_metric="loss", seed=settings.seed, progress=progress, desc="LoRA on tiny GPT-2")
    after = _gpt2_quality(model, tokenizer, settings, heldout, heldout_corpus)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(adapter_folder) if adapter_folder is not None else Path(tmp) / "adapter"
        save_adapter(model, folder, base_model_name_or_path=settings.model)
        files = {f.name: f.stat().st_size for f in sorted(folder.iterdir())}
        fresh = load_adapter(load_model(settings.model), folder)
        reloaded = _gpt2_quality(fresh, tokenizer, settings, heldout, heldout_corpus)
    return {"settings": settings.as_dict(), "format": QUESTION + " <paragraph>",
            "examples": {"train": len(train_examples), "validation": len(val_examples), "heldout": len(heldout)},
            "tokens": {"heldout_qa": int(_stream(tokenizer, heldout).numel()),
                       "heldout_corpus": int(heldout_corpus.numel())},
            "trainable_parameters": counts.trainable, "total_parameters": counts.total,
            "perplexity": {"before": before, "after": after, "reloaded": reloaded},
            "max_abs_reload_diff": max(abs(after[k] - reloaded[k]) for k in after),
            "adapter_files": files, "history": _history_summary(history),
            "train_s": round(history["wall_seconds"], 1), "wall_s": round(time.perf_counter() - start_all, 1)}


# --------------------------------------------------------------------------------------
# 8. The notebook's run, the settings search, everything

def notebook_run(settings: ClassifierSettings = NOTEBOOK, progress: bool = True) -> ClassifierRun:
    """**Notebook-sized** full fine-tuning: one epoch instead of three (about 2 minutes on 2 cores).

    The same model, data, optimizer and schedule as the table's ``FULL`` run, shorter; its
    scores are this run's, not the table's (``results.json`` holds the full run and this
    one's measured time and scores under ``notebook_run``).
    """
    return fine_tune_classifier(settings, progress=progress)


def search_settings(full: tuple[ClassifierSettings, ...] = FULL_CANDIDATES,
                    lora: tuple[ClassifierSettings, ...] = LORA_CANDIDATES, progress: bool = True) -> dict[str, Any]:
    """Train every candidate; score each on **validation only**; name the best of each method.

    Best = the highest validation macro-F1 of the kept weights, then the lowest validation
    loss. Test is never looked at here. Returns ``{"full": {...}, "lora": {...}}``, each
    with the candidates (settings, validation scores, best step, wall time) and ``chosen``.
    """
    out = {}
    for method, candidates in (("full", full), ("lora", lora)):
        tried = []
        for settings in candidates:
            run = fine_tune_classifier(settings, evaluate_on=("validation",), progress=progress)
            val = run.scores["validation"]
            tried.append({"settings": settings.as_dict(),
                          "validation": {k: val[k] for k in ("accuracy", "macro_f1", "loss")},
                          "validation_confusion_matrix": val["confusion_matrix"],
                          "best_step": run.history["best_step"], "steps": run.steps, "train_s": round(run.train_s, 1)})
        best = max(range(len(tried)), key=lambda i: (tried[i]["validation"]["macro_f1"], -tried[i]["validation"]["loss"]))
        out[method] = {"candidates": tried, "chosen": best}
    return out


def _environment() -> dict[str, Any]:
    from course_lib.timing import cpu_name

    cpu = cpu_name()
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


SECTIONS = ("classifiers", "gpt2", "notebook", "search")
DEFAULT_SECTIONS = ("classifiers", "gpt2", "notebook")


def run_all(sections: tuple[str, ...] = DEFAULT_SECTIONS, progress: bool = True) -> dict[str, Any]:
    """Run the experiments of ``sections`` and return their part of results.json.

    - ``"classifiers"``: baselines, full fine-tuning, LoRA (the 4-row table, curves,
      confusion matrices), then deploy and pruning on the full run's model;
    - ``"gpt2"``: LoRA on the tiny GPT-2; ``"notebook"``: the notebook-sized run, timed;
    - ``"search"``: the validation search over the candidate settings (not in the default).
    """
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    splits = sms_spam_splits()
    results: dict[str, Any] = {"schema_version": SCHEMA_VERSION,
                               "data": {"dataset": "sms-spam", "split_sha256": dict(SPLIT_SHA256),
                                        "sizes": {n: s.label_counts() for n, s in splits.items()},
                                        "labels": list(LABELS)},
                               "sections": {}}
    for section in sections:
        environment = _environment()
        start = time.perf_counter()
        if section == "classifiers":
            baseline, probe = baseline_rows(splits, progress=progress)
            full = fine_tune_classifier(FULL, splits, progress=progress)
            lora = fine_tune_classifier(LORA, splits, progress=progress)
            results["table"] = baseline + [
                table_row("full_fine_tuning", full.scores, full.trainable, full.total, full.train_s,
                          f"{full.steps} steps; wall = training with periodic validation"),
                table_row("lora", lora.scores, lora.trainable, lora.total, lora.train_s,
                          f"{lora.steps} steps; r={LORA.lora_r} on {'/'.join(LORA.lora_targets)} + classifier")]
            results["probe"] = probe
            results["runs"] = {"full": full.summary(), "lora": lora.summary()}
            results["deploy"] = deploy(full.model, splits, max_length=FULL.max_length)
            results["pruning"] = pruning_cost(full.model, splits, max_length=FULL.max_length, progress=progress)
        elif section == "gpt2":
            results["gpt2_lora"] = gpt2_lora(GPT2_LORA, progress=progress)
        elif section == "notebook":
            run = notebook_run(NOTEBOOK, progress=progress)
            results["notebook_run"] = {**run.summary(), "wall_s": round(time.perf_counter() - start, 1),
                                       "label": "notebook-sized run (1 epoch): not the table's numbers"}
        elif section == "search":
            results["validation_search"] = search_settings(progress=progress)
        results["sections"][section] = {"command": f"{COMMAND} --only {section}", "environment": environment,
                                        "wall_s": round(time.perf_counter() - start, 1),
                                        "date": time.strftime("%Y-%m-%d")}
    return results


# --------------------------------------------------------------------------------------
# 9. results.json: read, check, write, print

# What each top-level key holds (README.md describes every field); check_results enforces it.
SECTION_KEYS = {"classifiers": ("table", "probe", "runs", "deploy", "pruning"), "gpt2": ("gpt2_lora",),
                "notebook": ("notebook_run",), "search": ("validation_search",)}
TABLE_METHODS = ("majority", "linear_probe", "full_fine_tuning", "lora")


_LAYOUT = ResultsLayout(COMMAND)
_need, _key = _LAYOUT.value, _LAYOUT.key  # (value, path, kind) and (obj, key, path, kind)


def _check_scores(obj: dict, path: str, keys=("accuracy", "macro_f1")) -> None:
    for k in keys:
        if k == "loss":
            _key(obj, k, path, float)
        else:
            _LAYOUT.fraction(obj, k, path)


def _check_matrix(m, path: str, total: int | None = None) -> None:
    _need(m, path, list, "a 2 x 2 list of counts")
    if len(m) != len(LABELS) or any(not isinstance(r, list) or len(r) != len(LABELS) for r in m) or \
            any(not isinstance(c, int) or c < 0 for r in m for c in r):
        raise ResultsError(f"results.json: {path} should be a {len(LABELS)} x {len(LABELS)} list of counts, got {m!r}")
    if total is not None and sum(map(sum, m)) != total:
        raise ResultsError(f"results.json: {path} counts {sum(map(sum, m))} messages, the split has {total}")


def _check_history(h: dict, path: str) -> None:
    n = len(_key(h, "step", path, list))
    for k in ("loss", "lr", "grad_norm", "epoch"):
        if len(_key(h, k, path, list)) != n:
            raise ResultsError(f"results.json: {path}.{k} has {len(h[k])} entries, {path}.step has {n}")
    m = len(_key(h, "eval_step", path, list))
    for k, vs in _key(h, "eval", path, dict).items():
        if len(vs) != m:
            raise ResultsError(f"results.json: {path}.eval.{k} has {len(vs)} entries, {path}.eval_step has {m}")
    _key(h, "best_step", path, int)
    _key(h, "best_value", path, float)


def check_results(results: dict) -> dict:
    """Check that ``results`` has the layout README.md documents; returns it, or raises ``ResultsError``.

    Checks every section present in ``results["sections"]`` (their keys, types, ranges, list
    lengths and that confusion matrices count the split). Does not re-run anything.
    """
    _need(results, "(top level)", dict, "a JSON object")
    if _key(results, "schema_version", "(top level)", int) != SCHEMA_VERSION:
        raise ResultsError(f"results.json has schema_version {results['schema_version']}, this code reads "
                           f"{SCHEMA_VERSION}: rerun `{COMMAND}`")
    data = _key(results, "data", "(top level)")
    if _key(data, "split_sha256", "data") != SPLIT_SHA256:
        raise ResultsError("results.json was measured on another split (data.split_sha256 differs from "
                           f"classification_data.SPLIT_SHA256): rerun `{COMMAND}`")
    sizes = {name: sum(counts.values()) for name, counts in _key(data, "sizes", "data").items()}
    sections = _key(results, "sections", "(top level)")
    for name, info in sections.items():
        if name not in SECTION_KEYS:
            raise ResultsError(f"results.json: unknown section {name!r}; known: {', '.join(SECTION_KEYS)}")
        _key(info, "command", f"sections.{name}", str)
        _key(info, "wall_s", f"sections.{name}", float)
        _key(_key(info, "environment", f"sections.{name}"), "threads", f"sections.{name}.environment", int)
        for key in SECTION_KEYS[name]:
            _key(results, key, "(top level)", (dict, list))
    if "classifiers" in sections:
        table = results["table"]
        if [r.get("method") for r in table] != list(TABLE_METHODS):
            raise ResultsError(f"results.json: table rows should be {list(TABLE_METHODS)}, got "
                               f"{[r.get('method') for r in table]}")
        for i, row in enumerate(table):
            for split in ("validation", "test"):
                _check_scores(_key(row, split, f"table[{i}]"), f"table[{i}].{split}")
            _key(row, "trainable_parameters", f"table[{i}]", int)
            _key(row, "total_parameters", f"table[{i}]", int)
            _key(row, "wall_s", f"table[{i}]", float)
        for method in ("full", "lora"):
            run = _key(results["runs"], method, "runs")
            path = f"runs.{method}"
            ClassifierSettings.from_dict(_key(run, "settings", path))
            _check_history(_key(run, "history", path), f"{path}.history")
            for split in ("validation", "test"):
                s = _key(_key(run, "scores", path), split, f"{path}.scores")
                _check_scores(s, f"{path}.scores.{split}", ("accuracy", "macro_f1", "loss"))
                _check_matrix(_key(s, "confusion_matrix", f"{path}.scores.{split}", list),
                              f"{path}.scores.{split}.confusion_matrix", sizes.get(split))
            for k in ("trainable_parameters", "total_parameters", "steps"):
                _key(run, k, path, int)
        for i, row in enumerate(_key(results["deploy"], "rows", "deploy", list)):
            _key(row, "variant", f"deploy.rows[{i}]", str)
            _check_scores(_key(row, "test", f"deploy.rows[{i}]"), f"deploy.rows[{i}].test")
            for k in ("file_bytes", "parameter_bytes"):
                _key(row, k, f"deploy.rows[{i}]", int)
            for k in ("max_abs_logit_diff", "prediction_agreement"):
                _key(row, k, f"deploy.rows[{i}]", float)
        pruning = results["pruning"]
        importance = _key(pruning, "importance", "pruning", list)
        if not importance or any(not isinstance(r, list) or len(r) != len(importance[0]) for r in importance):
            raise ResultsError("results.json: pruning.importance should be an L x H list of numbers")
        for i, row in enumerate(_key(pruning, "rows", "pruning", list)):
            path = f"pruning.rows[{i}]"
            if _key(row, "order", path, str) not in ("importance", "random"):
                raise ResultsError(f"results.json: {path}.order should be 'importance' or 'random'")
            k, left = _key(row, "k", path, int), _key(row, "heads_left", path, int)
            if k + left != _key(pruning, "total_heads", "pruning", int):
                raise ResultsError(f"results.json: {path}: k={k} + heads_left={left} != total_heads")
            for split in ("validation", "test"):
                _check_scores(_key(row, split, path), f"{path}.{split}", ("accuracy", "macro_f1", "loss"))
    if "gpt2" in sections:
        g = results["gpt2_lora"]
        GPT2LoRASettings.from_dict(_key(g, "settings", "gpt2_lora"))
        for k in ("trainable_parameters", "total_parameters"):
            _key(g, k, "gpt2_lora", int)
        for when in ("before", "after", "reloaded"):
            p = _key(_key(g, "perplexity", "gpt2_lora"), when, "gpt2_lora.perplexity")
            for k in ("heldout_qa", "heldout_qa_answers", "heldout_corpus"):
                _key(p, k, f"gpt2_lora.perplexity.{when}", float)
        _check_history(_key(g, "history", "gpt2_lora"), "gpt2_lora.history")
    if "notebook" in sections:
        nb = results["notebook_run"]
        ClassifierSettings.from_dict(_key(nb, "settings", "notebook_run"))
        _key(nb, "wall_s", "notebook_run", float)
        for split in ("validation", "test"):
            _check_scores(_key(_key(nb, "scores", "notebook_run"), split, "notebook_run.scores"),
                          f"notebook_run.scores.{split}")
        _check_history(_key(nb, "history", "notebook_run"), "notebook_run.history")
    if "search" in sections:
        for method in ("full", "lora"):
            s = _key(results["validation_search"], method, "validation_search")
            candidates = _key(s, "candidates", f"validation_search.{method}", list)
            chosen = _key(s, "chosen", f"validation_search.{method}", int)
            if not 0 <= chosen < len(candidates):
                raise ResultsError(f"results.json: validation_search.{method}.chosen = {chosen} is not a candidate")
            for i, c in enumerate(candidates):
                ClassifierSettings.from_dict(_key(c, "settings", f"validation_search.{method}.candidates[{i}]"))
                if "test" in c:
                    raise ResultsError("results.json: the validation search must not hold test scores")
                _check_scores(_key(c, "validation", f"validation_search.{method}.candidates[{i}]"),
                              f"validation_search.{method}.candidates[{i}].validation", ("accuracy", "macro_f1", "loss"))
    return results


def read_results(path: str | os.PathLike = RESULTS_PATH) -> dict:
    """The shipped results.json (or ``path``), checked with ``check_results``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run `{COMMAND}` to measure the experiments and write it "
                                f"(about 20 minutes on 2 cores)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is not valid JSON ({err}): restore it (git checkout) or rerun `{COMMAND}`") from None
    return check_results(results)


def write_results(new: dict, path: str | os.PathLike = RESULTS_PATH) -> dict:
    """Write ``new``'s sections into ``path``, keeping the other sections already there; atomic.

    A file measured on another split or schema is replaced, not merged. Returns what was written.
    """
    from course_lib.checkpoint import write_atomic

    path = Path(path)
    merged = dict(new)
    if path.is_file():
        try:
            old = check_results(json.loads(path.read_text(encoding="utf-8")))
        except (ResultsError, json.JSONDecodeError):
            old = None
        if old is not None:
            keep = [s for s in old["sections"] if s not in new["sections"]]
            merged = {**{k: v for k, v in old.items()}, **new,
                      "sections": {**{s: old["sections"][s] for s in keep}, **new["sections"]}}
            for s in keep:
                for key in SECTION_KEYS[s]:
                    merged[key] = old[key]
    merged = {k: merged[k] for k in sorted(merged, key=lambda k: (k not in ("schema_version", "sections", "data"), k))}
    check_results(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(merged, indent=1) + "\n"
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))
    return merged


_TABLE_NAMES = {"majority": "majority class", "linear_probe": "linear probe (frozen)",
                "full_fine_tuning": "full fine-tuning", "lora": "LoRA (r=8, q/v)"}


def fine_tuning_table(results: dict) -> str:
    """The 4-row table: accuracy and macro-F1 on validation and test, trainable parameters, wall time."""
    lines = [f"{'method':<22}  {'val acc':>7}  {'val F1':>6}  {'test acc':>8}  {'test F1':>7}  "
             f"{'trainable':>12}  {'wall s':>6}"]
    for r in results["table"]:
        lines.append(f"{_TABLE_NAMES.get(r['method'], r['method']):<22}  {r['validation']['accuracy']:>7.3f}  "
                     f"{r['validation']['macro_f1']:>6.3f}  {r['test']['accuracy']:>8.3f}  {r['test']['macro_f1']:>7.3f}"
                     f"  {r['trainable_parameters']:>12,}  {r['wall_s']:>6.0f}")
    return "\n".join(lines)


def deploy_table(results: dict) -> str:
    """Float32 vs int8 vs int4 after save/reload: test scores, file and parameter sizes."""
    rows = results["deploy"]["rows"]
    base = rows[0]
    lines = [f"{'variant':<8}  {'test acc':>8}  {'test F1':>7}  {'file MB':>7}  {'params MB':>9}  {'of fp32':>7}  "
             f"{'same pred':>9}  {'max |Δlogit|':>12}"]
    for r in rows:
        lines.append(f"{r['variant']:<8}  {r['test']['accuracy']:>8.3f}  {r['test']['macro_f1']:>7.3f}  "
                     f"{r['file_bytes'] / 1e6:>7.1f}  {r['parameter_bytes'] / 1e6:>9.1f}  "
                     f"{100 * r['parameter_bytes'] / base['parameter_bytes']:>6.0f}%  "
                     f"{100 * r['prediction_agreement']:>8.1f}%  {r['max_abs_logit_diff']:>12.2e}")
    return "\n".join(lines)


def pruning_table(results: dict, order: str = "importance", split: str = "test") -> str:
    """Heads pruned (least important first, or at random) against accuracy and macro-F1 on ``split``."""
    rows = [r for r in results["pruning"]["rows"] if r["order"] == order or r["k"] == 0]
    lines = [f"{'pruned':>6}  {'left':>4}  {'parameters':>11}  {split[:4] + ' acc':>8}  {split[:4] + ' F1':>7}"]
    for r in rows:
        lines.append(f"{r['k']:>6}  {r['heads_left']:>4}  {r['parameters']:>11,}  {r[split]['accuracy']:>8.3f}  "
                     f"{r[split]['macro_f1']:>7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.fine_tuning [--only SECTION ...] [--search] [--threads N] [--out PATH]``."""
    import argparse

    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help=f"run these sections only (default: "
                        f"{' '.join(DEFAULT_SECTIONS)}); the others already in the file are kept")
    parser.add_argument("--search", action="store_true", help="also run the validation search over the candidate "
                                                              "settings (about 30 more minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the course's machine)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help=f"results file (default: {RESULTS_PATH})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    sections = tuple(args.only or DEFAULT_SECTIONS) + (("search",) if args.search and "search" not in
                                                                   (args.only or ()) else ())
    torch.set_num_threads(args.threads)
    results = write_results(run_all(sections, progress=not args.quiet), args.out)
    print(f"wrote {args.out}")
    if "table" in results:
        print(fine_tuning_table(results))
    if "deploy" in results:
        print(deploy_table(results))
    if "pruning" in results:
        print(pruning_table(results))
    if "gpt2_lora" in results:
        p = results["gpt2_lora"]["perplexity"]
        print("tiny GPT-2 + LoRA, held-out perplexity: " + ", ".join(
            f"{k} {p['before'][k]:.2f} -> {p['after'][k]:.2f} (reloaded {p['reloaded'][k]:.2f})" for k in p["before"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
